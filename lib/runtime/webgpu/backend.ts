/**
 * Registers our WGSL kernels for tfjs' `webgpu` backend, in place of tfjs-backend-webgpu's own
 * (the way `../native/backend.ts` replaces tfjs-cpu's kernels with C and BLAS ones): the
 * convolutions as implicit GEMMs (`conv.ts`), the matrix products (`matmul.ts`), sums over leading axes (`reduce.ts`), and the fused kernels of
 * `../native/fused.ts` (SiLU, group normalisation) so that the networks take their one-kernel
 * path on WebGPU too (`fused.ts`), and one-dispatch optimizer and EMA updates (`optim.ts`).
 *
 * `SIDA_WEBGPU_KERNELS=0` in the environment keeps tfjs' stock kernels (for comparisons).
 *
 * @example
 * ```ts
 * import { registerWebGpuKernels, unregisterWebGpuKernels } from "./backend.ts";
 * registerWebGpuKernels();    // after tf.setBackend("webgpu")
 * unregisterWebGpuKernels();  // tfjs' stock kernels again
 * ```
 *
 * @module
 */
import { tf } from "../../deps.ts";
import { convKernels } from "./conv.ts";
import { fusedWebGpuKernels } from "./fused.ts";
import { matMulKernels } from "./matmul.ts";
import { reduceKernels } from "./reduce.ts";
import { optimWebGpuKernels } from "./optim.ts";
import { envSaysOff, type GpuKernelFunc } from "./program.ts";

const BACKEND = "webgpu";

/** tfjs' own kernels that ours replaced, to fall back on and to restore. */
const stockKernels = new Map<string, tf.KernelConfig | undefined>();

/** Names of the kernels currently replaced by ours (empty when none are registered). */
export const WEBGPU_KERNEL_NAMES: string[] = [];

/** True when `SIDA_WEBGPU_KERNELS` asks for tfjs' stock kernels (`0`, `false`, `off`, `no`). */
export function webGpuKernelsDisabledByEnv(): boolean {
  return envSaysOff("SIDA_WEBGPU_KERNELS");
}

/** True while our kernels are registered for the webgpu backend. */
export function webGpuKernelsActive(): boolean {
  return WEBGPU_KERNEL_NAMES.length > 0;
}

function stock(name: string): GpuKernelFunc {
  const k = stockKernels.get(name);
  if (!k) throw new Error(`webgpu backend: tfjs has no stock kernel '${name}' to fall back on`);
  return k.kernelFunc as unknown as GpuKernelFunc;
}

/**
 * Registers our kernels for the webgpu backend (idempotent). Returns the replaced kernel names.
 */
export function registerWebGpuKernels(): string[] {
  if (webGpuKernelsActive()) return WEBGPU_KERNEL_NAMES;
  const ours: Record<string, GpuKernelFunc> = {
    ...convKernels(stock),
    ...matMulKernels(stock),
    ...reduceKernels(stock),
    ...fusedWebGpuKernels(),
    ...optimWebGpuKernels(),
  };
  for (const [name, kernelFunc] of Object.entries(ours)) {
    const old = tf.getKernel(name, BACKEND);
    if (!stockKernels.has(name)) stockKernels.set(name, old ? { ...old } : undefined);
    if (old) tf.unregisterKernel(name, BACKEND);
    tf.registerKernel({
      kernelName: name,
      backendName: BACKEND,
      kernelFunc: kernelFunc as unknown as tf.KernelFunc,
    });
    WEBGPU_KERNEL_NAMES.push(name);
  }
  return WEBGPU_KERNEL_NAMES;
}

/** Restores tfjs' stock kernels (and removes the fused kernels it has none of). */
export function unregisterWebGpuKernels(): void {
  for (const name of WEBGPU_KERNEL_NAMES) {
    tf.unregisterKernel(name, BACKEND);
    const old = stockKernels.get(name);
    if (old) tf.registerKernel(old);
  }
  WEBGPU_KERNEL_NAMES.length = 0;
}
