/**
 * The `native` backend's GEMM-based kernels: BatchMatMul, _FusedMatMul, Conv2D, FusedConv2D,
 * Conv2DBackpropInput, Conv2DBackpropFilter (im2col / col2im + `cblas_sgemm`), and the depthwise
 * convolutions with their two backprop kernels (cache-friendly loops, channels innermost).
 *
 * Every kernel reads and writes the Float32Arrays of tfjs-backend-cpu's storage directly; inputs
 * it does not handle (another dtype, NCHW data, an unusual broadcast) go to the cpu kernel.
 *
 * @module
 */
import { tf } from "../../deps.ts";
import type { Blas } from "./blas.ts";
import { bufferPool } from "./buffer_pool.ts";
import { bindCKernels, cKernels } from "./ckernels.ts";

/** The direct convolution kernels of `csrc/sida_conv.c`. */
const CONV_SYMBOLS = {
  sida_conv_vl: { parameters: [], result: "i32" },
  sida_conv_fwd: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "i32", "i64", "buffer"],
    result: "i32",
  },
  sida_conv_dw: { parameters: ["buffer", "buffer", "buffer", "i64", "buffer"], result: "i32" },
  sida_matmul: {
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "i64",
      "i32",
      "i32",
    ],
    result: "i32",
  },
} as const;

/** Largest `op(B)` of one batch item (floats) that the C batched product takes (fits in L2). */
const DIRECT_MATMUL_MAX_B = 1 << 18;

let directConvEnabled = true;

/**
 * Uses (the default) or bypasses the direct C convolutions (`csrc/sida_conv.c`), for tests and
 * benchmarks of both paths; returns the old value.
 */
export function setDirectConvEnabled(on: boolean): boolean {
  const old = directConvEnabled;
  directConvEnabled = on;
  return old;
}

/** The direct convolution kernels when they can take `Co` output channels. */
function directConv(Co: number) {
  if (!directConvEnabled) return null;
  const c = bindCKernels(CONV_SYMBOLS);
  return c && Co % c.sida_conv_vl() === 0 ? c : null;
}

/** The storage-owning backend class the `native` backend is an instance of. */
export type CpuBackend = tf.MathBackendCPU;

/** What tfjs passes to a kernel function. */
export interface KernelArgs {
  inputs: Record<string, tf.TensorInfo | undefined>;
  backend: CpuBackend;
  attrs?: Record<string, unknown>;
}

/** A kernel function, as registered with tfjs. */
export type NativeKernelFunc = (args: KernelArgs) => tf.TensorInfo | tf.TensorInfo[];

/** Floats of im2col scratch per chunk (16 MiB): bounds memory, keeps GEMMs large. */
const CHUNK_FLOATS = 1 << 22;

let scratch = new Float32Array(0);

function getScratch(n: number): Float32Array {
  if (scratch.length < n) scratch = new Float32Array(n);
  return scratch;
}

/** The Float32Array behind a tensor, or undefined when it is not float32 in memory. */
export function f32(backend: CpuBackend, t: tf.TensorInfo | undefined): Float32Array | undefined {
  if (!t || t.dtype !== "float32") return undefined;
  const v = backend.data.get(t.dataId)?.values;
  return v instanceof Float32Array ? v : undefined;
}

function sizeOf(shape: readonly number[]): number {
  let s = 1;
  for (const d of shape) s *= d;
  return s;
}

type ConvInfo = tf.backend_util.Conv2DInfo;

// ---------------------------------------------------------------------------------------------
// im2col / col2im over a range of output pixels (rows of the GEMM), NHWC.

/** The convolution's geometry as the C kernels take it. */
function geometry(ci: ConvInfo): number[] {
  return [
    ci.batchSize,
    ci.inHeight,
    ci.inWidth,
    ci.inChannels,
    ci.outHeight,
    ci.outWidth,
    ci.filterHeight,
    ci.filterWidth,
    ci.strideHeight,
    ci.strideWidth,
    ci.dilationHeight,
    ci.dilationWidth,
    ci.padInfo.top,
    ci.padInfo.left,
  ];
}

function geometry64(ci: ConvInfo): BigInt64Array {
  return BigInt64Array.from(geometry(ci), BigInt);
}

/** Checks the array lengths a C convolution kernel will touch (x, w and y of `ci`). */
function checkConvLengths(ci: ConvInfo, xLen: number, wLen: number, yLen: number): void {
  const ok = xLen === ci.batchSize * ci.inHeight * ci.inWidth * ci.inChannels &&
    wLen === ci.filterHeight * ci.filterWidth * ci.inChannels * ci.outChannels &&
    yLen === ci.batchSize * ci.outHeight * ci.outWidth * ci.outChannels;
  if (!ok) throw new RangeError("sida C kernels: convolution array lengths");
}

/**
 * Walks the im2col matrix rows r0 … r1−1 of `ci` (one row per output pixel, KH·KW·C columns) as
 * runs of contiguous columns: `run(o, s, len)` for columns [o, o+len) of the chunk that read
 * x[s, s+len) (`s` = −1 where the patch lies in the zero padding). The TypeScript im2col and col2im
 * (used without a C compiler) are the two directions of this walk.
 */
function patchRuns(
  ci: ConvInfo,
  r0: number,
  r1: number,
  run: (o: number, s: number, len: number) => void,
): void {
  const { inHeight: H, inWidth: W, inChannels: C, outHeight: Ho, outWidth: Wo } = ci;
  const { filterHeight: KH, filterWidth: KW, strideHeight: sh, strideWidth: sw } = ci;
  const { dilationHeight: dh, dilationWidth: dw } = ci;
  const top = ci.padInfo.top, left = ci.padInfo.left;
  const runC = KW * C;
  let ox = r0 % Wo;
  let oy = Math.floor(r0 / Wo) % Ho;
  let n = Math.floor(r0 / (Wo * Ho));
  let o = 0;
  for (let r = r0; r < r1; r++) {
    const iy0 = oy * sh - top;
    const ix0 = ox * sw - left;
    const inside = dw === 1 && ix0 >= 0 && ix0 + KW <= W;
    for (let kh = 0; kh < KH; kh++) {
      const iy = iy0 + kh * dh;
      if (iy < 0 || iy >= H) {
        run(o, -1, runC);
        o += runC;
        continue;
      }
      const rowBase = (n * H + iy) * W;
      if (inside) {
        run(o, (rowBase + ix0) * C, runC);
        o += runC;
        continue;
      }
      for (let kw = 0; kw < KW; kw++) {
        const ix = ix0 + kw * dw;
        run(o, ix < 0 || ix >= W ? -1 : (rowBase + ix) * C, C);
        o += C;
      }
    }
    if (++ox === Wo) {
      ox = 0;
      if (++oy === Ho) {
        oy = 0;
        n++;
      }
    }
  }
}

function im2col(x: Float32Array, ci: ConvInfo, r0: number, r1: number, col: Float32Array): void {
  const c = cKernels();
  if (c) return c.im2col(col, x, geometry(ci), r0, r1);
  patchRuns(ci, r0, r1, (o, s, len) => {
    if (s < 0) col.fill(0, o, o + len);
    else col.set(x.subarray(s, s + len), o);
  });
}

function col2im(col: Float32Array, ci: ConvInfo, r0: number, r1: number, x: Float32Array): void {
  const c = cKernels();
  if (c) return c.col2im(x, col, geometry(ci), r0, r1);
  patchRuns(ci, r0, r1, (o, s, len) => {
    if (s < 0) return;
    for (let i = 0; i < len; i++) x[s + i] += col[o + i];
  });
}

/** Whether the convolution is a plain per-pixel matrix product (1×1, stride 1, no padding). */
function isPointwise(ci: ConvInfo): boolean {
  return ci.filterHeight === 1 && ci.filterWidth === 1 && ci.strideHeight === 1 &&
    ci.strideWidth === 1 && ci.padInfo.top === 0 && ci.padInfo.left === 0 &&
    ci.outHeight === ci.inHeight && ci.outWidth === ci.inWidth;
}

function chunkRows(k: number, m: number): number {
  return Math.max(1, Math.min(m, Math.floor(CHUNK_FLOATS / Math.max(k, 1))));
}

/** NHWC convolution `y = conv(x, w) (+ bias)`, `w` HWIO, bias `[Co]`; returns `[N·Ho·Wo·Co]`. */
export function conv2dForward(
  blas: Blas,
  x: Float32Array,
  w: Float32Array,
  ci: ConvInfo,
  bias?: Float32Array,
): Float32Array {
  const Co = ci.outChannels;
  const K = ci.filterHeight * ci.filterWidth * ci.inChannels;
  const M = ci.batchSize * ci.outHeight * ci.outWidth;
  const y = M * Co && K ? bufferPool.alloc(M * Co) : bufferPool.zeros(M * Co);
  if (M === 0 || Co === 0) return y;
  if (bias && bias.length !== Co) throw new RangeError("conv2d: bias length");
  const direct = K ? directConv(Co) : null;
  if (direct) {
    checkConvLengths(ci, x.length, w.length, y.length);
    const g = geometry64(ci);
    if (direct.sida_conv_fwd(y, x, w, bias ?? y, bias ? 1 : 0, BigInt(Co), g) === 0) return y;
  }
  if (isPointwise(ci)) {
    blas.sgemm(false, false, M, Co, K, 1, x, K, w, Co, 0, y, Co);
  } else {
    const rows = chunkRows(K, M);
    const col = getScratch(rows * K);
    for (let r0 = 0; r0 < M; r0 += rows) {
      const r1 = Math.min(M, r0 + rows);
      im2col(x, ci, r0, r1, col);
      blas.sgemm(false, false, r1 - r0, Co, K, 1, col, K, w, Co, 0, y.subarray(r0 * Co), Co);
    }
  }
  if (bias) {
    for (let i = 0; i < y.length; i += Co) {
      for (let j = 0; j < Co; j++) y[i + j] += bias[j];
    }
  }
  return y;
}

/**
 * For a stride-1, undilated convolution whose padding is smaller than its filter, the forward
 * convolution that computes its input gradient: `dx = conv(dy, flip(w))` with padding
 * `KH−1−top`, `KH−1−bottom`, `KW−1−left`, `KW−1−right`. It runs as one im2col + GEMM with the
 * GEMM's inner dimension KH·KW·Co, instead of a GEMM with inner dimension Co and a col2im that
 * scatters KH·KW times the image.
 */
function transposedConvInfo(ci: ConvInfo): ConvInfo | undefined {
  const { top, bottom, left, right } = ci.padInfo;
  const KH = ci.filterHeight, KW = ci.filterWidth;
  if (ci.strideHeight !== 1 || ci.strideWidth !== 1) return undefined;
  if (ci.dilationHeight !== 1 || ci.dilationWidth !== 1) return undefined;
  const pads = [KH - 1 - top, KH - 1 - bottom, KW - 1 - left, KW - 1 - right];
  if (pads.some((p) => p < 0)) return undefined;
  const t = tf.backend_util.computeConv2DInfo(
    [ci.batchSize, ci.outHeight, ci.outWidth, ci.outChannels],
    [KH, KW, ci.outChannels, ci.inChannels],
    1,
    1,
    [[0, 0], [pads[0], pads[1]], [pads[2], pads[3]], [0, 0]] as unknown as "valid",
  );
  return t.outHeight === ci.inHeight && t.outWidth === ci.inWidth ? t : undefined;
}

/** `w'[kh, kw, co, ci] = w[KH−1−kh, KW−1−kw, ci, co]` (HWIO in, HWIO out). */
function flipFilter(w: Float32Array, ci: ConvInfo): Float32Array {
  const KH = ci.filterHeight, KW = ci.filterWidth, C = ci.inChannels, Co = ci.outChannels;
  const out = new Float32Array(w.length);
  for (let kh = 0; kh < KH; kh++) {
    for (let kw = 0; kw < KW; kw++) {
      const src = ((KH - 1 - kh) * KW + (KW - 1 - kw)) * C * Co, dst = (kh * KW + kw) * Co * C;
      for (let c = 0; c < C; c++) {
        for (let o = 0; o < Co; o++) out[dst + o * C + c] = w[src + c * Co + o];
      }
    }
  }
  return out;
}

/** Gradient of an NHWC convolution with respect to its input; returns `[N·H·W·C]`. */
export function conv2dBackpropInput(
  blas: Blas,
  dy: Float32Array,
  w: Float32Array,
  ci: ConvInfo,
): Float32Array {
  const Co = ci.outChannels;
  const K = ci.filterHeight * ci.filterWidth * ci.inChannels;
  const M = ci.batchSize * ci.outHeight * ci.outWidth;
  // A stride-1 input gradient is the forward convolution of dy with the flipped filter; a 1×1 one
  // takes that path only when the direct kernel can write C channels (2× BLAS' sgemm here on the
  // U-Net's [N·H·W, 64] × [64, 64] products), else one sgemm.
  const flipped = M && K && (!isPointwise(ci) || directConv(ci.inChannels))
    ? transposedConvInfo(ci)
    : undefined;
  if (flipped) return conv2dForward(blas, dy, flipFilter(w, ci), flipped);
  const dx = bufferPool.zeros(ci.batchSize * ci.inHeight * ci.inWidth * ci.inChannels);
  if (M === 0 || K === 0) return dx;
  if (isPointwise(ci)) {
    blas.sgemm(false, true, M, K, Co, 1, dy, Co, w, Co, 0, dx, K);
    return dx;
  }
  const rows = chunkRows(K, M);
  const col = getScratch(rows * K);
  for (let r0 = 0; r0 < M; r0 += rows) {
    const r1 = Math.min(M, r0 + rows);
    blas.sgemm(false, true, r1 - r0, K, Co, 1, dy.subarray(r0 * Co), Co, w, Co, 0, col, K);
    col2im(col, ci, r0, r1, dx);
  }
  return dx;
}

/** Gradient of an NHWC convolution with respect to its HWIO filter; returns `[KH·KW·C·Co]`. */
export function conv2dBackpropFilter(
  blas: Blas,
  x: Float32Array,
  dy: Float32Array,
  ci: ConvInfo,
): Float32Array {
  const Co = ci.outChannels;
  const K = ci.filterHeight * ci.filterWidth * ci.inChannels;
  const M = ci.batchSize * ci.outHeight * ci.outWidth;
  const dw = bufferPool.zeros(K * Co);
  if (M === 0 || K === 0) return dw;
  const direct = directConv(Co);
  if (direct) {
    checkConvLengths(ci, x.length, dw.length, dy.length);
    if (direct.sida_conv_dw(dw, x, dy, BigInt(Co), geometry64(ci)) === 0) return dw;
  }
  if (isPointwise(ci)) {
    blas.sgemm(true, false, K, Co, M, 1, x, K, dy, Co, 0, dw, Co);
    return dw;
  }
  const rows = chunkRows(K, M);
  const col = getScratch(rows * K);
  for (let r0 = 0; r0 < M; r0 += rows) {
    const r1 = Math.min(M, r0 + rows);
    im2col(x, ci, r0, r1, col);
    blas.sgemm(
      true,
      false,
      K,
      Co,
      r1 - r0,
      1,
      col,
      K,
      dy.subarray(r0 * Co),
      Co,
      r0 ? 1 : 0,
      dw,
      Co,
    );
  }
  return dw;
}

// ---------------------------------------------------------------------------------------------
// Depthwise convolutions (filter [KH, KW, C, mult], output channel c·mult + m).

/**
 * Visits every (output pixel, filter tap) pair whose input pixel is inside the image, giving the
 * offsets of the input pixel, the output pixel and the filter tap (each times its channel count).
 */
function forEachTap(
  ci: ConvInfo,
  visit: (xOff: number, yOff: number, wOff: number) => void,
): void {
  const { batchSize: N, inHeight: H, inWidth: W, inChannels: C, outHeight: Ho, outWidth: Wo } = ci;
  const { filterHeight: KH, filterWidth: KW, strideHeight: sh, strideWidth: sw } = ci;
  const { dilationHeight: dh, dilationWidth: dw, outChannels: Co } = ci;
  const top = ci.padInfo.top, left = ci.padInfo.left;
  for (let n = 0; n < N; n++) {
    for (let oy = 0; oy < Ho; oy++) {
      for (let kh = 0; kh < KH; kh++) {
        const iy = oy * sh - top + kh * dh;
        if (iy < 0 || iy >= H) continue;
        const xRow = (n * H + iy) * W;
        const yRow = (n * Ho + oy) * Wo;
        for (let kw = 0; kw < KW; kw++) {
          const wOff = (kh * KW + kw) * Co;
          for (let ox = 0; ox < Wo; ox++) {
            const ix = ox * sw - left + kw * dw;
            if (ix < 0 || ix >= W) continue;
            visit((xRow + ix) * C, (yRow + ox) * Co, wOff);
          }
        }
      }
    }
  }
}

/** Depthwise NHWC convolution; returns `[N·Ho·Wo·C·mult]`. */
export function depthwiseForward(x: Float32Array, w: Float32Array, ci: ConvInfo): Float32Array {
  const y = bufferPool.zeros(ci.batchSize * ci.outHeight * ci.outWidth * ci.outChannels);
  const C = ci.inChannels, mult = ci.outChannels / ci.inChannels;
  if (mult === 1) {
    forEachTap(ci, (xo, yo, wo) => {
      for (let c = 0; c < C; c++) y[yo + c] += x[xo + c] * w[wo + c];
    });
  } else {
    forEachTap(ci, (xo, yo, wo) => {
      for (let c = 0; c < C; c++) {
        const xv = x[xo + c];
        for (let m = 0; m < mult; m++) y[yo + c * mult + m] += xv * w[wo + c * mult + m];
      }
    });
  }
  return y;
}

/** Gradient of a depthwise convolution with respect to its input. */
export function depthwiseBackpropInput(
  dy: Float32Array,
  w: Float32Array,
  ci: ConvInfo,
): Float32Array {
  const dx = bufferPool.zeros(ci.batchSize * ci.inHeight * ci.inWidth * ci.inChannels);
  const C = ci.inChannels, mult = ci.outChannels / ci.inChannels;
  if (mult === 1) {
    forEachTap(ci, (xo, yo, wo) => {
      for (let c = 0; c < C; c++) dx[xo + c] += dy[yo + c] * w[wo + c];
    });
  } else {
    forEachTap(ci, (xo, yo, wo) => {
      for (let c = 0; c < C; c++) {
        let s = 0;
        for (let m = 0; m < mult; m++) s += dy[yo + c * mult + m] * w[wo + c * mult + m];
        dx[xo + c] += s;
      }
    });
  }
  return dx;
}

/** Gradient of a depthwise convolution with respect to its filter `[KH, KW, C, mult]`. */
export function depthwiseBackpropFilter(
  x: Float32Array,
  dy: Float32Array,
  ci: ConvInfo,
): Float32Array {
  const dw = bufferPool.zeros(ci.filterHeight * ci.filterWidth * ci.outChannels);
  const C = ci.inChannels, mult = ci.outChannels / ci.inChannels;
  if (mult === 1) {
    forEachTap(ci, (xo, yo, wo) => {
      for (let c = 0; c < C; c++) dw[wo + c] += x[xo + c] * dy[yo + c];
    });
  } else {
    forEachTap(ci, (xo, yo, wo) => {
      for (let c = 0; c < C; c++) {
        const xv = x[xo + c];
        for (let m = 0; m < mult; m++) dw[wo + c * mult + m] += xv * dy[yo + c * mult + m];
      }
    });
  }
  return dw;
}

// ---------------------------------------------------------------------------------------------
// Kernel functions.

/** Kernels this module provides, given the BLAS library and the cpu kernels to fall back on. */
export function gemmKernels(
  blas: Blas,
  fallback: (name: string) => NativeKernelFunc,
): Record<string, NativeKernelFunc> {
  const make = (backend: CpuBackend, shape: number[], values: Float32Array) =>
    backend.makeTensorInfo(shape, "float32", values);

  /** Matrix product of the batched operands, or undefined to fall back. */
  function matMul(
    backend: CpuBackend,
    a: tf.TensorInfo,
    b: tf.TensorInfo,
    transposeA: boolean,
    transposeB: boolean,
  ): tf.TensorInfo | undefined {
    const av = f32(backend, a), bv = f32(backend, b);
    if (!av || !bv) return undefined;
    const ar = a.shape.length, br = b.shape.length;
    const innerA = transposeA ? a.shape[ar - 2] : a.shape[ar - 1];
    const innerB = transposeB ? b.shape[br - 1] : b.shape[br - 2];
    const M = transposeA ? a.shape[ar - 1] : a.shape[ar - 2];
    const N = transposeB ? b.shape[br - 2] : b.shape[br - 1];
    if (innerA !== innerB) {
      throw new Error(
        `Error in matMul: inner shapes (${innerA}) and (${innerB}) of Tensors with shapes ` +
          `${a.shape} and ${b.shape} and transposeA=${transposeA} and transposeB=${transposeB} ` +
          `must match.`,
      );
    }
    const K = innerA;
    const batchA = sizeOf(a.shape.slice(0, -2)), batchB = sizeOf(b.shape.slice(0, -2));
    if (batchA !== batchB && batchA !== 1 && batchB !== 1) return undefined;
    const outer = tf.broadcast_util.assertAndGetBroadcastShape(
      a.shape.slice(0, -2),
      b.shape.slice(0, -2),
    );
    const batch = Math.max(batchA, batchB);
    const out = K ? bufferPool.alloc(batch * M * N) : bufferPool.zeros(batch * M * N);
    const lda = transposeA ? M : K, ldb = transposeB ? K : N;
    const direct = K * N <= DIRECT_MATMUL_MAX_B ? directConv(N) : null;
    if (direct) {
      if (
        av.length !== batchA * M * K || bv.length !== batchB * K * N || out.length !== batch * M * N
      ) throw new RangeError("sida C kernels: matmul array lengths");
      const r = direct.sida_matmul(
        out,
        av,
        bv,
        BigInt(batch),
        BigInt(batchA),
        BigInt(batchB),
        BigInt(M),
        BigInt(N),
        BigInt(K),
        transposeA ? 1 : 0,
        transposeB ? 1 : 0,
      );
      if (r === 0) return make(backend, [...outer, M, N], out);
    }
    if (batch === 1 || (batchB === 1 && !transposeA)) {
      // One GEMM: a [batch·M, K] against the shared b.
      blas.sgemm(transposeA, transposeB, batch * M, N, K, 1, av, lda, bv, ldb, 0, out, N);
    } else {
      for (let i = 0; i < batch; i++) {
        const ai = batchA === 1 ? av : av.subarray(i * M * K);
        const bi = batchB === 1 ? bv : bv.subarray(i * K * N);
        blas.sgemm(
          transposeA,
          transposeB,
          M,
          N,
          K,
          1,
          ai,
          lda,
          bi,
          ldb,
          0,
          out.subarray(i * M * N),
          N,
        );
      }
    }
    return make(backend, [...outer, M, N], out);
  }

  /** Adds a trailing-axis bias and applies the activation, as tfjs' fused ops do. */
  function biasAndActivation(
    backend: CpuBackend,
    result: tf.TensorInfo,
    bias: tf.TensorInfo | undefined,
    attrs: Record<string, unknown>,
    prelu: tf.TensorInfo | undefined,
  ): tf.TensorInfo {
    let current = result;
    if (bias) {
      const values = f32(backend, current)!;
      const bv = f32(backend, bias);
      const last = current.shape[current.shape.length - 1] ?? 1;
      const n = sizeOf(bias.shape);
      const trailing = bias.shape.length <= current.shape.length &&
        (n === 1 || (n === last && bias.shape[bias.shape.length - 1] === last));
      if (bv && trailing) {
        if (n === 1) {
          const b0 = bv[0];
          for (let i = 0; i < values.length; i++) values[i] += b0;
        } else {
          for (let i = 0; i < values.length; i += last) {
            for (let j = 0; j < last; j++) values[i + j] += bv[j];
          }
        }
      } else {
        const next = fallback("Add")({ inputs: { a: current, b: bias }, backend }) as tf.TensorInfo;
        backend.disposeIntermediateTensorInfo(current);
        current = next;
      }
    }
    const activation = attrs.activation as string | undefined;
    if (!activation || activation === "linear") return current;
    if (activation === "relu") {
      const values = f32(backend, current);
      if (values) {
        for (let i = 0; i < values.length; i++) if (!(values[i] > 0)) values[i] = 0;
        return current;
      }
    }
    const kernels: Record<string, [string, KernelArgs["inputs"], Record<string, unknown>]> = {
      relu: ["Relu", { x: current }, {}],
      elu: ["Elu", { x: current }, {}],
      relu6: ["Relu6", { x: current }, {}],
      sigmoid: ["Sigmoid", { x: current }, {}],
      prelu: ["Prelu", { x: current, alpha: prelu }, {}],
      leakyrelu: ["LeakyRelu", { x: current }, { alpha: attrs.leakyreluAlpha }],
    };
    const k = kernels[activation];
    if (!k) {
      throw new Error(`Activation ${activation} has not been implemented for the CPU backend.`);
    }
    const next = fallback(k[0])({ inputs: k[1], backend, attrs: k[2] }) as tf.TensorInfo;
    backend.disposeIntermediateTensorInfo(current);
    return next;
  }

  function convInfo(
    xShape: number[],
    filterShape: number[],
    attrs: Record<string, unknown>,
    depthwise: boolean,
    dilations: unknown,
  ): ConvInfo | undefined {
    const format = tf.backend_util.convertConv2DDataFormat(
      (attrs.dataFormat as "NHWC" | "NCHW" | undefined) ?? "NHWC",
    );
    if (format !== "channelsLast") return undefined;
    return tf.backend_util.computeConv2DInfo(
      xShape as [number, number, number, number],
      filterShape as [number, number, number, number],
      attrs.strides as number | [number, number],
      (dilations ?? 1) as number | [number, number],
      attrs.pad as "same",
      attrs.dimRoundingMode as "floor" | undefined,
      depthwise,
      "channelsLast",
    );
  }

  const conv2D: NativeKernelFunc = (args) => {
    const { x, filter } = args.inputs;
    const attrs = args.attrs ?? {};
    const xv = f32(args.backend, x), wv = f32(args.backend, filter);
    const ci = xv && wv && convInfo(x!.shape, filter!.shape, attrs, false, attrs.dilations);
    if (!ci) return fallback("Conv2D")(args);
    return make(args.backend, ci.outShape, conv2dForward(blas, xv!, wv!, ci));
  };

  return {
    BatchMatMul: (args) => {
      const { a, b } = args.inputs;
      const { transposeA, transposeB } = (args.attrs ?? {}) as Record<string, boolean>;
      return matMul(args.backend, a!, b!, !!transposeA, !!transposeB) ??
        fallback("BatchMatMul")(args);
    },
    _FusedMatMul: (args) => {
      const { a, b, bias, preluActivationWeights } = args.inputs;
      const attrs = args.attrs ?? {};
      const r = matMul(args.backend, a!, b!, !!attrs.transposeA, !!attrs.transposeB);
      if (!r) return fallback("_FusedMatMul")(args);
      return biasAndActivation(args.backend, r, bias, attrs, preluActivationWeights);
    },
    Conv2D: conv2D,
    FusedConv2D: (args) => {
      const { x, filter, bias, preluActivationWeights } = args.inputs;
      const attrs = args.attrs ?? {};
      const xv = f32(args.backend, x), wv = f32(args.backend, filter);
      const ci = xv && wv && convInfo(x!.shape, filter!.shape, attrs, false, attrs.dilations);
      if (!ci) return fallback("FusedConv2D")(args);
      // A [Co] bias is added by the convolution itself.
      const bv = bias && bias.shape.length === 1 && bias.shape[0] === ci.outChannels
        ? f32(args.backend, bias)
        : undefined;
      const r = make(args.backend, ci.outShape, conv2dForward(blas, xv!, wv!, ci, bv));
      return biasAndActivation(
        args.backend,
        r,
        bv ? undefined : bias,
        attrs,
        preluActivationWeights,
      );
    },
    Conv2DBackpropInput: (args) => {
      const { dy, filter } = args.inputs;
      const attrs = args.attrs ?? {};
      const dyv = f32(args.backend, dy), wv = f32(args.backend, filter);
      const ci = dyv && wv &&
        convInfo(attrs.inputShape as number[], filter!.shape, attrs, false, 1);
      if (!ci) return fallback("Conv2DBackpropInput")(args);
      return make(args.backend, ci.inShape, conv2dBackpropInput(blas, dyv!, wv!, ci));
    },
    Conv2DBackpropFilter: (args) => {
      const { x, dy } = args.inputs;
      const attrs = args.attrs ?? {};
      const xv = f32(args.backend, x), dyv = f32(args.backend, dy);
      const ci = xv && dyv && convInfo(x!.shape, attrs.filterShape as number[], attrs, false, 1);
      if (!ci) return fallback("Conv2DBackpropFilter")(args);
      return make(args.backend, ci.filterShape, conv2dBackpropFilter(blas, xv!, dyv!, ci));
    },
    DepthwiseConv2dNative: (args) => {
      const { x, filter } = args.inputs;
      const attrs = args.attrs ?? {};
      const xv = f32(args.backend, x), wv = f32(args.backend, filter);
      const ci = xv && wv && convInfo(x!.shape, filter!.shape, attrs, true, attrs.dilations);
      if (!ci) return fallback("DepthwiseConv2dNative")(args);
      return make(args.backend, ci.outShape, depthwiseForward(xv!, wv!, ci));
    },
    DepthwiseConv2dNativeBackpropInput: (args) => {
      const { dy, filter } = args.inputs;
      const attrs = args.attrs ?? {};
      const dyv = f32(args.backend, dy), wv = f32(args.backend, filter);
      const ci = dyv && wv &&
        convInfo(attrs.inputShape as number[], filter!.shape, attrs, true, attrs.dilations);
      if (!ci) return fallback("DepthwiseConv2dNativeBackpropInput")(args);
      return make(args.backend, ci.inShape, depthwiseBackpropInput(dyv!, wv!, ci));
    },
    DepthwiseConv2dNativeBackpropFilter: (args) => {
      const { x, dy } = args.inputs;
      const attrs = args.attrs ?? {};
      const xv = f32(args.backend, x), dyv = f32(args.backend, dy);
      const ci = xv && dyv &&
        convInfo(x!.shape, attrs.filterShape as number[], attrs, true, attrs.dilations);
      if (!ci) return fallback("DepthwiseConv2dNativeBackpropFilter")(args);
      return make(args.backend, ci.filterShape, depthwiseBackpropFilter(xv!, dyv!, ci));
    },
  };
}
