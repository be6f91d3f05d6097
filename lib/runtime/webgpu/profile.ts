/**
 * Where the time goes on the webgpu backend: counts of GPU dispatches, queue submissions, bind
 * groups and uniform uploads (by wrapping the backend's `runWebGPUProgram` and its device and
 * queue methods), per tfjs kernel, and a record of every kernel call (name, input shapes and
 * dtypes, attributes) that {@linkcode replayKernels} times one signature at a time.
 *
 * Timing single kernels from the host needs a read-back per measurement; a whole training step
 * cannot be timed per kernel that way without changing it, so the bench records one step and
 * then replays each distinct call in isolation (`bench/kernels.ts --backends webgpu`).
 *
 * @example
 * ```ts
 * const p = startGpuProfile();      // on the active webgpu backend
 * // ... one training step ...
 * p.stop();
 * console.log(p.totals(), p.byKernel());
 * ```
 *
 * @module
 */
import { tf } from "../../deps.ts";

/** GPU work counted while a profile runs. */
export interface GpuCounts {
  /** Programs run (`runWebGPUProgram` calls: one compute dispatch each). */
  dispatches: number;
  /** `GPUQueue.submit` calls. */
  submits: number;
  /** `GPUDevice.createBindGroup` calls. */
  bindGroups: number;
  /** `GPUQueue.writeBuffer` calls (uniforms and uploads). */
  writeBuffers: number;
}

/**
 * The programs run while a profile ran, by program (its shader key up to the first size, e.g.
 * `reduce_sum`, `sida_rgemm_conv2d_dx`): dispatches, workgroups and invocations. On a software
 * adapter a program with millions of small workgroups (each a coroutine with its barriers) shows
 * here before it shows anywhere else.
 */
export interface ProgramTotals {
  program: string;
  dispatches: number;
  workgroups: number;
  invocations: number;
}

/** One recorded kernel call. */
export interface KernelCall {
  name: string;
  inputs: { shape: number[]; dtype: tf.DataType }[];
  /** Input names in order (tfjs' kernel inputs are a named map). */
  inputNames: string[];
  attrs: Record<string, unknown>;
  /** Dispatches this call issued (its own and those of kernels it called). */
  dispatches: number;
}

/** Per-kernel totals of a profile. */
export interface KernelTotals {
  name: string;
  calls: number;
  dispatches: number;
}

/** A running or stopped profile ({@linkcode startGpuProfile}). */
export interface GpuProfile {
  /** Restores every wrapped method and kernel. */
  stop(): void;
  /** Counts so far. */
  totals(): GpuCounts;
  /** Calls and dispatches per top-level kernel name, most dispatches first. */
  byKernel(): KernelTotals[];
  /** Every top-level kernel call recorded (when `record` was set). */
  calls: KernelCall[];
  /** Programs by workgroups dispatched, most first. */
  byProgram(): ProgramTotals[];
}

/** The size-free part of a program's shader key (tfjs names them `kind_…sizes`). */
export function programName(p: { shaderKey?: string; constructor?: { name?: string } }): string {
  const key = p.shaderKey ?? p.constructor?.name ?? "?";
  return key.split(/_\d/)[0];
}

interface BackendInternals {
  runWebGPUProgram: (...a: unknown[]) => unknown;
  device: GPUDevice;
  queue: GPUQueue;
}

/** Counts GPU work on the active webgpu backend until `stop()` (see the module comment). */
export function startGpuProfile(opts: { record?: boolean } = {}): GpuProfile {
  if (tf.getBackend() !== "webgpu") throw new Error("startGpuProfile: webgpu is not active");
  const backend = tf.backend() as unknown as BackendInternals;
  const counts: GpuCounts = { dispatches: 0, submits: 0, bindGroups: 0, writeBuffers: 0 };
  const restore: (() => void)[] = [];
  const wrap = <T extends object>(
    obj: T,
    key: keyof T & string,
    count: (...a: unknown[]) => void,
  ) => {
    const own = Object.prototype.hasOwnProperty.call(obj, key);
    const orig = (obj as Record<string, unknown>)[key] as (...a: unknown[]) => unknown;
    (obj as Record<string, unknown>)[key] = function (this: unknown, ...a: unknown[]) {
      count(...a);
      return orig.apply(this, a);
    };
    restore.push(() => {
      if (own) (obj as Record<string, unknown>)[key] = orig;
      else delete (obj as Record<string, unknown>)[key];
    });
  };
  const programs = new Map<string, ProgramTotals>();
  wrap(backend, "runWebGPUProgram", (p) => {
    counts.dispatches++;
    const prog = p as {
      shaderKey?: string;
      dispatch?: number[];
      workgroupSize?: number[];
    };
    const name = programName(prog);
    const t = programs.get(name) ??
      { program: name, dispatches: 0, workgroups: 0, invocations: 0 };
    const wg = (prog.dispatch ?? [1, 1, 1]).reduce((a, b) => a * b, 1);
    t.dispatches++;
    t.workgroups += wg;
    t.invocations += wg * (prog.workgroupSize ?? [1, 1, 1]).reduce((a, b) => a * b, 1);
    programs.set(name, t);
  });
  wrap(backend.queue, "submit", () => counts.submits++);
  wrap(backend.queue, "writeBuffer", () => counts.writeBuffers++);
  wrap(backend.device, "createBindGroup", () => counts.bindGroups++);
  // Every kernel registered for webgpu, wrapped to attribute dispatches and record calls.
  const per = new Map<string, KernelTotals>();
  const calls: KernelCall[] = [];
  let depth = 0;
  for (const k of tf.getKernelsForBackend("webgpu")) {
    const orig = k.kernelFunc;
    const name = k.kernelName;
    tf.unregisterKernel(name, "webgpu");
    tf.registerKernel({
      ...k,
      kernelFunc: ((args: { inputs: Record<string, tf.TensorInfo>; attrs?: object }) => {
        const before = counts.dispatches;
        depth++;
        let out;
        try {
          out = (orig as (a: unknown) => unknown)(args);
        } finally {
          depth--;
        }
        if (depth === 0) {
          const d = counts.dispatches - before;
          const t = per.get(name) ?? { name, calls: 0, dispatches: 0 };
          t.calls++;
          t.dispatches += d;
          per.set(name, t);
          if (opts.record) {
            const names = Object.keys(args.inputs).filter((n) => args.inputs[n]);
            calls.push({
              name,
              inputNames: names,
              inputs: names.map((n) => ({
                shape: [...args.inputs[n].shape],
                dtype: args.inputs[n].dtype,
              })),
              attrs: { ...(args.attrs ?? {}) } as Record<string, unknown>,
              dispatches: d,
            });
          }
        }
        return out;
      }) as unknown as tf.KernelFunc,
    });
    restore.push(() => {
      tf.unregisterKernel(name, "webgpu");
      tf.registerKernel(k);
    });
  }
  return {
    stop: () => {
      while (restore.length) restore.pop()!();
    },
    totals: () => ({ ...counts }),
    byKernel: () => [...per.values()].sort((a, b) => b.dispatches - a.dispatches),
    calls,
    byProgram: () => [...programs.values()].sort((a, b) => b.workgroups - a.workgroups),
  };
}

/** A distinct kernel call of a recording and how often it occurred. */
export interface CallSignature {
  call: KernelCall;
  count: number;
}

/** Groups recorded calls by kernel name, shapes, dtypes and attributes. */
export function signatures(calls: KernelCall[]): CallSignature[] {
  const map = new Map<string, CallSignature>();
  for (const c of calls) {
    const key = JSON.stringify([c.name, c.inputNames, c.inputs, c.attrs]);
    const s = map.get(key);
    if (s) s.count++;
    else map.set(key, { call: c, count: 1 });
  }
  return [...map.values()];
}

/** Multiply-adds ×2 of a convolution or matrix-product call (0 for other kernels). */
export function callFlops(c: KernelCall): number {
  const s = c.inputs.map((i) => i.shape);
  const prod = (a: number[]) => a.reduce((x, y) => x * y, 1);
  switch (c.name) {
    case "Conv2D":
    case "FusedConv2D": {
      const [kh, kw, ci, co] = s[1];
      const out = tf.backend_util.computeConv2DInfo(
        s[0] as [number, number, number, number],
        s[1] as [number, number, number, number],
        c.attrs.strides as number,
        (c.attrs.dilations as number) ?? 1,
        c.attrs.pad as "same",
        c.attrs.dimRoundingMode as "round",
      );
      return 2 * out.batchSize * out.outHeight * out.outWidth * kh * kw * ci * co;
    }
    case "Conv2DBackpropInput": {
      const [kh, kw, ci, co] = s[1];
      return 2 * prod(s[0]) / co * kh * kw * ci * co;
    }
    case "Conv2DBackpropFilter": {
      const [kh, kw, ci, co] = c.attrs.filterShape as number[];
      return 2 * prod(s[1]) / co * kh * kw * ci * co;
    }
    case "BatchMatMul":
    case "_FusedMatMul": {
      const a = s[0], b = s[1];
      const ta = !!c.attrs.transposeA, tb = !!c.attrs.transposeB;
      const m = ta ? a[a.length - 1] : a[a.length - 2];
      const k = ta ? a[a.length - 2] : a[a.length - 1];
      const n = tb ? b[b.length - 2] : b[b.length - 1];
      const batch = Math.max(prod(a.slice(0, -2)), prod(b.slice(0, -2)));
      return 2 * batch * m * n * k;
    }
    default:
      return 0;
  }
}

/** Timing of one kernel name over a recording. */
export interface KernelTiming {
  name: string;
  calls: number;
  dispatches: number;
  /** Sum over the recorded calls of each signature's measured time. */
  ms: number;
  gflop: number;
  /** Signatures that could not be replayed. */
  failed: number;
}

/**
 * Replays each distinct call of a recording on the active backend: inputs of its shapes
 * (normal floats, zero integers), one warm-up, then 1 and `repeats + 1` calls issued back to
 * back, each followed by one read-back; the difference over `repeats` (the read-back's latency
 * cancels) times the signature's count goes to its kernel's total.
 * `onProgress` gets each kernel's name as it starts.
 */
export async function replayKernels(
  calls: KernelCall[],
  repeats = 3,
  onProgress?: (name: string) => void,
): Promise<KernelTiming[]> {
  const out = new Map<string, KernelTiming>();
  const sigs = signatures(calls).sort((a, b) => a.call.name.localeCompare(b.call.name));
  let last = "";
  for (const { call, count } of sigs) {
    if (call.name !== last) onProgress?.(call.name);
    last = call.name;
    const t = out.get(call.name) ??
      { name: call.name, calls: 0, dispatches: 0, ms: 0, gflop: 0, failed: 0 };
    out.set(call.name, t);
    t.calls += count;
    t.dispatches += call.dispatches * count;
    t.gflop += callFlops(call) * count / 1e9;
    const inputs: Record<string, tf.Tensor> = {};
    call.inputNames.forEach((n, i) => {
      const { shape, dtype } = call.inputs[i];
      inputs[n] = dtype === "float32"
        ? tf.randomNormal(shape, 0, 1, "float32", 7)
        : tf.zeros(shape, dtype);
    });
    // Kernels of a tensor list (Concat, Pack, AddN) take an array.
    const list = call.inputNames.every((n) => /^\d+$/.test(n));
    const args = (list ? Object.values(inputs) : inputs) as unknown as tf.NamedTensorMap;
    const run = () => {
      const r = tf.engine().runKernel(call.name, args, call.attrs as tf.NamedAttrMap);
      return Array.isArray(r) ? r : [r];
    };
    const timed = async (k: number) => {
      const t0 = performance.now();
      let outs: tf.Tensor[] = [];
      for (let i = 0; i < k; i++) {
        tf.dispose(outs);
        outs = run();
      }
      for (const x of outs) await x.data();
      tf.dispose(outs);
      return performance.now() - t0;
    };
    try {
      await timed(1); // warm-up: pipeline compilation
      // The read-back's latency cancels in the difference of k calls and 1 call.
      const one = await timed(1);
      const many = await timed(repeats + 1);
      t.ms += Math.max(0, (many - one) / repeats) * count;
    } catch {
      t.failed++;
    }
    tf.dispose(Object.values(inputs));
  }
  return [...out.values()].sort((a, b) => b.ms - a.ms);
}
