/**
 * The `native` tfjs backend: tfjs-backend-cpu's storage and kernels, with the hot kernels
 * (matrix products, convolutions and their gradients, then the element-wise and reduction kernels
 * a U-Net training step spends its time in) replaced by BLAS calls through Deno's FFI and by
 * tighter typed-array loops.
 *
 * @example
 * ```ts
 * import { tf } from "../../deps.ts";
 * import { registerNativeBackend } from "./backend.ts";
 * registerNativeBackend();          // throws BlasUnavailableError without a BLAS library
 * await tf.setBackend("native");
 * ```
 *
 * @module
 */
import { tf } from "../../deps.ts";
import { type Blas, loadBlas } from "./blas.ts";
import { gemmKernels, type KernelArgs, type NativeKernelFunc } from "./gemm_kernels.ts";
import { elementwiseKernels } from "./elementwise_kernels.ts";
import { poolKernels } from "./pool_kernels.ts";
import { bufferPool } from "./buffer_pool.ts";
import { loadCKernels } from "./ckernels.ts";
import { fusedKernels } from "./fused.ts";
import { copyKernels } from "./copy_kernels.ts";
import { tuneMalloc } from "./malloc_tuning.ts";

export { BlasUnavailableError, loadBlas } from "./blas.ts";
export type { Blas } from "./blas.ts";

/** The tfjs backend name. */
export const NATIVE_BACKEND = "native";

let registered: Blas | undefined;

/** The kernels the `native` backend replaces (the rest are tfjs-backend-cpu's). */
export const NATIVE_KERNEL_NAMES: string[] = [];

/**
 * Registers the `native` backend with tfjs (once per process; later calls return the same BLAS).
 * The backend is an instance of tfjs-backend-cpu's `MathBackendCPU`, with every `cpu` kernel
 * registered for it too, and the hot ones replaced.
 *
 * @returns the loaded BLAS library.
 * @throws BlasUnavailableError when no BLAS library can be loaded (nothing is registered then).
 */
export function registerNativeBackend(): Blas {
  if (registered) return registered;
  const blas = loadBlas();
  tuneMalloc();
  const Cpu = tf.MathBackendCPU;
  if (typeof Cpu !== "function") throw new Error("tfjs does not export MathBackendCPU");
  tf.registerBackend(NATIVE_BACKEND, () => {
    const b = new (pooledBackendClass(Cpu))();
    (b as unknown as { firstUse: boolean }).firstUse = false; // no "install tfjs-node" banner
    return b;
  }, 0);
  const cpuKernels = new Map<string, NativeKernelFunc>();
  for (const k of tf.getKernelsForBackend("cpu")) {
    cpuKernels.set(k.kernelName, k.kernelFunc as unknown as NativeKernelFunc);
    if (!tf.getKernel(k.kernelName, NATIVE_BACKEND)) {
      tf.registerKernel({ ...k, backendName: NATIVE_BACKEND });
    }
  }
  const fallback = (name: string): NativeKernelFunc => {
    const f = cpuKernels.get(name);
    if (!f) throw new Error(`native backend: no cpu kernel '${name}' to fall back on`);
    return f;
  };
  const c = loadCKernels();
  const replaced = {
    ...gemmKernels(blas, fallback),
    ...elementwiseKernels(fallback),
    ...poolKernels(fallback),
    ...copyKernels(fallback),
    ...(c ? fusedKernels(c) : {}),
  };
  for (const [name, kernelFunc] of Object.entries(replaced)) {
    if (tf.getKernel(name, NATIVE_BACKEND)) tf.unregisterKernel(name, NATIVE_BACKEND);
    tf.registerKernel({
      kernelName: name,
      backendName: NATIVE_BACKEND,
      kernelFunc: kernelFunc as unknown as tf.KernelFunc,
    });
    NATIVE_KERNEL_NAMES.push(name);
  }
  registered = blas;
  return blas;
}

/** What tfjs passes to a kernel function (re-exported for kernel authors). */
export type { KernelArgs };

type CpuClass = typeof tf.MathBackendCPU;
type Values = tf.backend_util.BackendValues;

/**
 * tfjs-backend-cpu's backend with storage recycling: buffers of disposed tensors go back to
 * {@linkcode bufferPool} (see its rules), and reads of pooled storage return copies.
 */
function pooledBackendClass(Cpu: CpuClass): CpuClass {
  return class PooledBackend extends Cpu {
    override write(values: Values, shape: number[], dtype: tf.DataType): tf.DataId {
      bufferPool.register(values);
      return super.write(values, shape, dtype);
    }
    override move(
      dataId: tf.DataId,
      values: Values,
      shape: number[],
      dtype: tf.DataType,
      refCount: number,
    ): void {
      bufferPool.register(values);
      super.move(dataId, values, shape, dtype, refCount);
    }
    override readSync(dataId: tf.DataId): Values {
      const v = super.readSync(dataId);
      return bufferPool.owns(v) ? (v as Float32Array).slice() : v;
    }
    override read(dataId: tf.DataId): Promise<Values> {
      return Promise.resolve(this.readSync(dataId));
    }
    override disposeData(dataId: tf.DataId, force = false): boolean {
      const entry = this.data.get(dataId);
      const done = super.disposeData(dataId, force);
      if (entry && !this.data.has(dataId)) bufferPool.release(entry.values);
      return done;
    }
  } as unknown as CpuClass;
}
