/**
 * The `native` backend's attention kernels: softmax over the last axis and its gradient, by
 * `csrc/sida_attention.c` (bound with {@linkcode bindCKernels}); with the C kernels disabled
 * (`setCKernelsEnabled(false)` of `ckernels.ts`) the same kernels run TypeScript loops that give
 * the same values (to float rounding). `fused.ts` registers them, with the gradient, as
 * `SidaSoftmax` and `SidaSoftmaxGrad`.
 *
 * @module
 */
import { bufferPool } from "./buffer_pool.ts";
import { bindCKernels } from "./ckernels.ts";
import { f32, type NativeKernelFunc } from "./gemm_kernels.ts";

/** The symbols of `csrc/sida_attention.c`. */
const ATTENTION_SYMBOLS = {
  sida_softmax: { parameters: ["buffer", "buffer", "i64", "i64"], result: "void" },
  sida_softmax_grad: { parameters: ["buffer", "buffer", "buffer", "i64", "i64"], result: "void" },
} as const;

/** Kernel names. */
export const ATTENTION = {
  softmax: "SidaSoftmax",
  softmaxGrad: "SidaSoftmaxGrad",
} as const;

/** `y = softmax(x)` over rows of `n` (tfjs' arithmetic: exp(x − max) / Σ, sums in double). */
export function softmaxRows(y: Float32Array, x: Float32Array, n: number): void {
  if (y.length !== x.length || n < 1 || x.length % n !== 0) {
    throw new RangeError(`softmax: ${x.length} values are not rows of ${n}`);
  }
  if (x.length === 0) return;
  const c = bindCKernels(ATTENTION_SYMBOLS);
  if (c) {
    c.sida_softmax(y, x, BigInt(x.length / n), BigInt(n));
    return;
  }
  for (let i = 0; i < x.length; i += n) {
    let m = x[i];
    for (let j = i; j < i + n; j++) if (x[j] > m) m = x[j];
    let s = 0;
    for (let j = i; j < i + n; j++) {
      const e = Math.fround(Math.exp(Math.fround(x[j] - m)));
      y[j] = e;
      s += e;
    }
    const sf = Math.fround(s);
    for (let j = i; j < i + n; j++) y[j] = y[j] / sf;
  }
}

/**
 * `dx = y·(dy − Σ_j dy·y)` over rows of `n` (the gradient of softmax at its output `y`; the sum
 * and `dy − Σ` in double).
 */
export function softmaxGradRows(
  dx: Float32Array,
  dy: Float32Array,
  y: Float32Array,
  n: number,
): void {
  if (dx.length !== y.length || dy.length !== y.length || n < 1 || y.length % n !== 0) {
    throw new RangeError(`softmax grad: ${y.length} values are not rows of ${n}`);
  }
  if (y.length === 0) return;
  const c = bindCKernels(ATTENTION_SYMBOLS);
  if (c) {
    c.sida_softmax_grad(dx, dy, y, BigInt(y.length / n), BigInt(n));
    return;
  }
  for (let i = 0; i < y.length; i += n) {
    let s = 0;
    for (let j = i; j < i + n; j++) s += dy[j] * y[j];
    for (let j = i; j < i + n; j++) dx[j] = y[j] * Math.fround(dy[j] - s);
  }
}

/** The attention kernels, by name, for the `native` backend (float32 inputs). */
export function attentionKernels(): Record<string, NativeKernelFunc> {
  const need = (v: Float32Array | undefined, what: string): Float32Array => {
    if (!v) throw new TypeError(`${what}: float32 inputs expected`);
    return v;
  };
  const last = (shape: number[], what: string): number => {
    if (shape.length === 0) throw new RangeError(`${what}: a tensor of rank ≥ 1 expected`);
    return Math.max(1, shape[shape.length - 1]);
  };
  return {
    [ATTENTION.softmax]: ({ inputs, backend }) => {
      const x = need(f32(backend, inputs.x), "softmax");
      const y = bufferPool.alloc(x.length);
      softmaxRows(y, x, last(inputs.x!.shape, "softmax"));
      return backend.makeTensorInfo(inputs.x!.shape, "float32", y);
    },
    [ATTENTION.softmaxGrad]: ({ inputs, backend }) => {
      const y = need(f32(backend, inputs.y), "softmax grad");
      const dy = need(f32(backend, inputs.dy), "softmax grad");
      const dx = bufferPool.alloc(y.length);
      softmaxGradRows(dx, dy, y, last(inputs.y!.shape, "softmax grad"));
      return backend.makeTensorInfo(inputs.y!.shape, "float32", dx);
    },
  };
}
