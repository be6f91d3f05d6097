/**
 * The `native` backend's element-wise, broadcasting, reduction and data-movement kernels.
 *
 * tfjs-backend-cpu computes a broadcasting binary op by converting every output index to
 * coordinates and back (tens of nanoseconds per element), and reduces over non-trailing axes by
 * transposing first. These kernels collapse the shapes into a few runs and loop over contiguous
 * memory instead; arithmetic is done in float64 and rounded to float32 as the cpu kernels do, and
 * sums accumulate in float64.
 *
 * Inputs these kernels do not handle (dtypes other than float32, complex values) go to the cpu
 * kernel of the same name.
 *
 * @module
 */
import { tf } from "../../deps.ts";
import { type CpuBackend, f32, type NativeKernelFunc } from "./gemm_kernels.ts";
import { bufferPool } from "./buffer_pool.ts";
import { cKernels, UNARY } from "./ckernels.ts";

function sizeOf(shape: readonly number[]): number {
  let s = 1;
  for (const d of shape) s *= d;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Broadcasting binary operations.

const ADD = 0, SUB = 1, MUL = 2, DIV = 3, SQDIFF = 4, MAX = 5, MIN = 6;

/** `out[o..o+n) = a[ai + i·sa] ∘ b[bi + i·sb]`. */
function binaryRun(
  op: number,
  out: Float32Array,
  o: number,
  a: Float32Array,
  ai: number,
  sa: number,
  b: Float32Array,
  bi: number,
  sb: number,
  n: number,
): void {
  const end = o + n;
  switch (op) {
    case ADD:
      for (; o < end; o++, ai += sa, bi += sb) out[o] = a[ai] + b[bi];
      return;
    case SUB:
      for (; o < end; o++, ai += sa, bi += sb) out[o] = a[ai] - b[bi];
      return;
    case MUL:
      for (; o < end; o++, ai += sa, bi += sb) out[o] = a[ai] * b[bi];
      return;
    case DIV:
      for (; o < end; o++, ai += sa, bi += sb) out[o] = a[ai] / b[bi];
      return;
    case SQDIFF:
      for (; o < end; o++, ai += sa, bi += sb) {
        const d = a[ai] - b[bi];
        out[o] = d * d;
      }
      return;
    case MAX:
      for (; o < end; o++, ai += sa, bi += sb) out[o] = Math.max(a[ai], b[bi]);
      return;
    case MIN:
      for (; o < end; o++, ai += sa, bi += sb) out[o] = Math.min(a[ai], b[bi]);
      return;
  }
}

/**
 * Collapses two shapes broadcast against each other into runs of dimensions with the same
 * broadcast pattern; returns run sizes and each input's element stride per run (0 = broadcast).
 */
function collapse(
  aShape: readonly number[],
  bShape: readonly number[],
  outShape: readonly number[],
): { sizes: number[]; aStrides: number[]; bStrides: number[] } {
  const r = outShape.length;
  const sizes: number[] = [], aB: boolean[] = [], bB: boolean[] = [];
  for (let d = 0; d < r; d++) {
    const n = outShape[d];
    if (n === 1) continue;
    const ad = aShape[d - (r - aShape.length)] ?? 1;
    const bd = bShape[d - (r - bShape.length)] ?? 1;
    const ab = ad === 1, bb = bd === 1;
    const k = sizes.length - 1;
    if (k >= 0 && aB[k] === ab && bB[k] === bb) sizes[k] *= n;
    else {
      sizes.push(n);
      aB.push(ab);
      bB.push(bb);
    }
  }
  const aStrides = new Array(sizes.length), bStrides = new Array(sizes.length);
  let as = 1, bs = 1;
  for (let k = sizes.length - 1; k >= 0; k--) {
    aStrides[k] = aB[k] ? 0 : as;
    bStrides[k] = bB[k] ? 0 : bs;
    if (!aB[k]) as *= sizes[k];
    if (!bB[k]) bs *= sizes[k];
  }
  return { sizes, aStrides, bStrides };
}

/** A broadcasting binary operation on float32 arrays. */
export function broadcastBinary(
  op: number,
  a: Float32Array,
  aShape: readonly number[],
  b: Float32Array,
  bShape: readonly number[],
  outShape: readonly number[],
): Float32Array {
  const total = sizeOf(outShape);
  const out = bufferPool.alloc(total);
  if (total === 0) return out;
  const { sizes, aStrides, bStrides } = collapse(aShape, bShape, outShape);
  const c = cKernels();
  if (c) {
    c.binary(op, out, a, b, sizes, aStrides, bStrides);
    return out;
  }
  const k = sizes.length;
  if (k === 0) {
    binaryRun(op, out, 0, a, 0, 0, b, 0, 0, 1);
    return out;
  }
  const n = sizes[k - 1], sa = aStrides[k - 1], sb = bStrides[k - 1];
  if (k === 1) {
    binaryRun(op, out, 0, a, 0, sa, b, 0, sb, n);
    return out;
  }
  // Odometer over the outer runs.
  const idx = new Array(k - 1).fill(0);
  let ai = 0, bi = 0;
  for (let o = 0; o < total; o += n) {
    binaryRun(op, out, o, a, ai, sa, b, bi, sb, n);
    for (let d = k - 2; d >= 0; d--) {
      ai += aStrides[d];
      bi += bStrides[d];
      if (++idx[d] < sizes[d]) break;
      ai -= aStrides[d] * sizes[d];
      bi -= bStrides[d] * sizes[d];
      idx[d] = 0;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reductions over any set of axes.

const R_SUM = 0, R_MAX = 1, R_MIN = 2;

/** Reduces `x` over `axes`; returns the kept-dimension values in order. */
function reduce(
  op: number,
  x: Float32Array,
  shape: readonly number[],
  axes: number[],
): Float32Array {
  const reduced = new Set(axes);
  const outSize = sizeOf(shape.filter((_, d) => !reduced.has(d)));
  // Runs of consecutive dims with the same reduced/kept flag (dims of size 1 dropped).
  const sizes: number[] = [], red: boolean[] = [];
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const r = reduced.has(d), k = sizes.length - 1;
    if (k >= 0 && red[k] === r) sizes[k] *= shape[d];
    else {
      sizes.push(shape[d]);
      red.push(r);
    }
  }
  const acc = new Float64Array(outSize);
  if (op !== R_SUM) acc.fill(op === R_MAX ? -Infinity : Infinity);
  const total = x.length;
  const k = sizes.length;
  if (total === 0 || outSize === 0) return new Float32Array(outSize);
  if (k === 0) {
    acc[0] = x[0];
  } else {
    // Output strides of each run (0 for reduced runs).
    const oStrides = new Array(k);
    let s = 1;
    for (let d = k - 1; d >= 0; d--) {
      oStrides[d] = red[d] ? 0 : s;
      if (!red[d]) s *= sizes[d];
    }
    const n = sizes[k - 1], innerReduced = red[k - 1];
    const idx = new Array(Math.max(k - 1, 0)).fill(0);
    let oi = 0;
    for (let i = 0; i < total; i += n) {
      if (innerReduced) {
        if (op === R_SUM) {
          let t = 0;
          for (let j = i, e = i + n; j < e; j++) t += x[j];
          acc[oi] += t;
        } else if (op === R_MAX) {
          let t = acc[oi];
          for (let j = i, e = i + n; j < e; j++) if (x[j] > t || Number.isNaN(x[j])) t = x[j];
          acc[oi] = t;
        } else {
          let t = acc[oi];
          for (let j = i, e = i + n; j < e; j++) if (x[j] < t || Number.isNaN(x[j])) t = x[j];
          acc[oi] = t;
        }
      } else if (op === R_SUM) {
        for (let j = 0; j < n; j++) acc[oi + j] += x[i + j];
      } else if (op === R_MAX) {
        for (let j = 0; j < n; j++) {
          const v = x[i + j];
          if (v > acc[oi + j] || Number.isNaN(v)) acc[oi + j] = v;
        }
      } else {
        for (let j = 0; j < n; j++) {
          const v = x[i + j];
          if (v < acc[oi + j] || Number.isNaN(v)) acc[oi + j] = v;
        }
      }
      for (let d = k - 2; d >= 0; d--) {
        oi += oStrides[d];
        if (++idx[d] < sizes[d]) break;
        oi -= oStrides[d] * sizes[d];
        idx[d] = 0;
      }
    }
  }
  const out = bufferPool.alloc(outSize);
  for (let i = 0; i < outSize; i++) out[i] = acc[i];
  return out;
}

// ---------------------------------------------------------------------------------------------
// Transpose.

/** Permutes the axes of `x` (`out.shape[i] = shape[perm[i]]`). */
export function transposeValues(
  x: Float32Array,
  shape: readonly number[],
  perm: readonly number[],
): Float32Array {
  const r = shape.length;
  const out = bufferPool.alloc(x.length);
  if (x.length === 0) return out;
  const inStrides = new Array(r);
  let s = 1;
  for (let d = r - 1; d >= 0; d--) {
    inStrides[d] = s;
    s *= shape[d];
  }
  // Output dims with their input strides, merging output-adjacent dims that are adjacent in
  // the input too, and dropping dims of size 1.
  const sizes: number[] = [], strides: number[] = [];
  for (let i = 0; i < r; i++) {
    const n = shape[perm[i]];
    if (n === 1) continue;
    const st = inStrides[perm[i]];
    const k = sizes.length - 1;
    if (k >= 0 && strides[k] === st * n) {
      sizes[k] *= n;
      strides[k] = st;
    } else {
      sizes.push(n);
      strides.push(st);
    }
  }
  const k = sizes.length;
  if (k <= 1) {
    out.set(x);
    return out;
  }
  const n = sizes[k - 1], st = strides[k - 1];
  const idx = new Array(k - 1).fill(0);
  let xi = 0;
  for (let o = 0; o < out.length; o += n) {
    if (st === 1) { for (let j = 0; j < n; j++) out[o + j] = x[xi + j]; }
    else for (let j = 0, t = xi; j < n; j++, t += st) out[o + j] = x[t];
    for (let d = k - 2; d >= 0; d--) {
      xi += strides[d];
      if (++idx[d] < sizes[d]) break;
      xi -= strides[d] * sizes[d];
      idx[d] = 0;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Strided copies (slice, concat).

/** Copies the box `begin`/`size` of `x` (shape `shape`) into a new array. */
function sliceValues(
  x: Float32Array,
  shape: readonly number[],
  begin: readonly number[],
  size: readonly number[],
): Float32Array {
  const r = shape.length;
  const total = sizeOf(size);
  const out = bufferPool.alloc(total);
  if (total === 0) return out;
  const strides = new Array(r);
  let s = 1;
  for (let d = r - 1; d >= 0; d--) {
    strides[d] = s;
    s *= shape[d];
  }
  // Merge trailing dims that are copied whole into the innermost run.
  let inner = 1, k = r;
  while (k > 0 && begin[k - 1] === 0 && size[k - 1] === shape[k - 1]) inner *= size[--k];
  if (k === 0) {
    out.set(x.subarray(0, total));
    return out;
  }
  inner *= size[k - 1];
  let start = 0;
  for (let d = 0; d < r; d++) start += begin[d] * strides[d];
  const outer = k - 1; // dims before the innermost run
  const idx = new Array(outer).fill(0);
  let xi = start;
  for (let o = 0; o < total; o += inner) {
    if (inner >= 256) out.set(x.subarray(xi, xi + inner), o);
    else for (let j = 0; j < inner; j++) out[o + j] = x[xi + j];
    for (let d = outer - 1; d >= 0; d--) {
      xi += strides[d];
      if (++idx[d] < size[d]) break;
      xi -= strides[d] * size[d];
      idx[d] = 0;
    }
  }
  return out;
}

/** Concatenates arrays viewed as `[outer, inner_i]` along their second axis. */
function concatValues(parts: Float32Array[], inners: number[], outer: number): Float32Array {
  const row = inners.reduce((a, b) => a + b, 0);
  const out = bufferPool.alloc(outer * row);
  let col = 0;
  for (let p = 0; p < parts.length; p++) {
    const x = parts[p], n = inners[p];
    if (n === 0) continue;
    for (let o = 0; o < outer; o++) {
      const dst = o * row + col, src = o * n;
      if (n >= 256) out.set(x.subarray(src, src + n), dst);
      else for (let j = 0; j < n; j++) out[dst + j] = x[src + j];
    }
    col += n;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Kernel functions.

/** Kernels this module provides, given the cpu kernels to fall back on. */
export function elementwiseKernels(
  fallback: (name: string) => NativeKernelFunc,
): Record<string, NativeKernelFunc> {
  const make = (backend: CpuBackend, shape: number[], values: Float32Array) =>
    backend.makeTensorInfo(shape, "float32", values);

  const binary = (name: string, op: number): NativeKernelFunc => (args) => {
    const { a, b } = args.inputs;
    const av = f32(args.backend, a), bv = f32(args.backend, b);
    if (!av || !bv) return fallback(name)(args);
    const outShape = tf.broadcast_util.assertAndGetBroadcastShape(a!.shape, b!.shape);
    return make(args.backend, outShape, broadcastBinary(op, av, a!.shape, bv, b!.shape, outShape));
  };

  const unary =
    (name: keyof typeof UNARY, f: (x: Float32Array, y: Float32Array) => void): NativeKernelFunc =>
    (args) => {
      const { x } = args.inputs;
      const xv = f32(args.backend, x);
      if (!xv) return fallback(name)(args);
      const y = bufferPool.alloc(xv.length);
      const c = cKernels();
      if (c) c.unary(UNARY[name], y, xv);
      else f(xv, y);
      return make(args.backend, x!.shape, y);
    };

  const reduction =
    (name: string, op: number, axisAttr: string, mean = false): NativeKernelFunc => (args) => {
      const { x } = args.inputs;
      const xv = f32(args.backend, x);
      if (!xv) return fallback(name)(args);
      const attrs = args.attrs ?? {};
      const axes = tf.util.parseAxisParam(attrs[axisAttr] as number | number[], x!.shape);
      const [outShape, reduceShape] = tf.backend_util.computeOutAndReduceShapes(x!.shape, axes);
      const y = reduce(op, xv, x!.shape, axes);
      if (mean) {
        const n = sizeOf(reduceShape);
        for (let i = 0; i < y.length; i++) y[i] = y[i] / n;
      }
      const shape = attrs.keepDims
        ? tf.backend_util.expandShapeToKeepDim(outShape, axes)
        : outShape;
      return make(args.backend, shape, y);
    };

  return {
    Add: binary("Add", ADD),
    Sub: binary("Sub", SUB),
    Multiply: binary("Multiply", MUL),
    RealDiv: binary("RealDiv", DIV),
    SquaredDifference: binary("SquaredDifference", SQDIFF),
    Maximum: binary("Maximum", MAX),
    Minimum: binary("Minimum", MIN),

    Sigmoid: unary("Sigmoid", (x, y) => {
      for (let i = 0; i < x.length; i++) y[i] = 1 / (1 + Math.exp(-x[i]));
    }),
    Square: unary("Square", (x, y) => {
      for (let i = 0; i < x.length; i++) y[i] = x[i] * x[i];
    }),
    Neg: unary("Neg", (x, y) => {
      for (let i = 0; i < x.length; i++) y[i] = -x[i];
    }),
    Exp: unary("Exp", (x, y) => {
      for (let i = 0; i < x.length; i++) y[i] = Math.exp(x[i]);
    }),
    Sqrt: unary("Sqrt", (x, y) => {
      for (let i = 0; i < x.length; i++) y[i] = Math.sqrt(x[i]);
    }),
    Floor: unary("Floor", (x, y) => {
      for (let i = 0; i < x.length; i++) y[i] = Math.floor(x[i]);
    }),
    Log: unary("Log", (x, y) => {
      for (let i = 0; i < x.length; i++) y[i] = Math.log(x[i]);
    }),
    Abs: unary("Abs", (x, y) => {
      for (let i = 0; i < x.length; i++) y[i] = Math.abs(x[i]);
    }),
    Rsqrt: unary("Rsqrt", (x, y) => {
      for (let i = 0; i < x.length; i++) y[i] = 1 / Math.sqrt(x[i]);
    }),

    Sum: reduction("Sum", R_SUM, "axis"),
    Mean: reduction("Mean", R_SUM, "axis", true),
    Max: reduction("Max", R_MAX, "reductionIndices"),
    Min: reduction("Min", R_MIN, "axis"),

    Softmax: (args) => {
      const { logits } = args.inputs;
      const xv = f32(args.backend, logits);
      const dim = (args.attrs?.dim as number | undefined) ?? -1;
      const r = logits!.shape.length;
      if (!xv || (dim !== -1 && dim !== r - 1)) return fallback("Softmax")(args);
      const n = logits!.shape[r - 1] ?? 1;
      const y = bufferPool.alloc(xv.length);
      for (let i = 0; i < xv.length; i += n) {
        let m = -Infinity;
        for (let j = i; j < i + n; j++) if (xv[j] > m) m = xv[j];
        let s = 0;
        for (let j = i; j < i + n; j++) {
          const e = Math.fround(Math.exp(xv[j] - m));
          y[j] = e;
          s += e;
        }
        const sf = Math.fround(s);
        for (let j = i; j < i + n; j++) y[j] = y[j] / sf;
      }
      return make(args.backend, logits!.shape, y);
    },

    Transpose: (args) => {
      const { x } = args.inputs;
      const xv = f32(args.backend, x);
      if (!xv) return fallback("Transpose")(args);
      const perm = args.attrs!.perm as number[];
      const shape = perm.map((p) => x!.shape[p]);
      return make(args.backend, shape, transposeValues(xv, x!.shape, perm));
    },

    Unpack: (args) => {
      const { value } = args.inputs;
      const xv = f32(args.backend, value);
      if (!xv) return fallback("Unpack")(args);
      const shape = value!.shape;
      const axis = tf.util.parseAxisParam(args.attrs!.axis as number, shape)[0];
      const num = shape[axis];
      const outer = sizeOf(shape.slice(0, axis)), inner = sizeOf(shape.slice(axis + 1));
      const outShape = [...shape.slice(0, axis), ...shape.slice(axis + 1)];
      const outs: tf.TensorInfo[] = [];
      for (let k = 0; k < num; k++) {
        const y = bufferPool.alloc(outer * inner);
        if (inner === 1) {
          for (let o = 0, s = k; o < outer; o++, s += num) y[o] = xv[s];
        } else {
          for (let o = 0; o < outer; o++) {
            const s = (o * num + k) * inner;
            for (let j = 0; j < inner; j++) y[o * inner + j] = xv[s + j];
          }
        }
        outs.push(make(args.backend, outShape, y));
      }
      return outs;
    },

    Slice: (args) => {
      const { x } = args.inputs;
      const xv = f32(args.backend, x);
      if (!xv) return fallback("Slice")(args);
      const [begin, size] = tf.slice_util.parseSliceParams(
        x as unknown as tf.Tensor,
        args.attrs!.begin as number[],
        args.attrs!.size as number[],
      );
      return make(args.backend, size, sliceValues(xv, x!.shape, begin, size));
    },

    SplitV: (args) => {
      const { x } = args.inputs;
      const xv = f32(args.backend, x);
      if (!xv) return fallback("SplitV")(args);
      const shape = x!.shape;
      const axis = tf.util.parseAxisParam(args.attrs!.axis as number, shape)[0];
      const splits = tf.backend_util.prepareSplitSize(
        x as unknown as tf.Tensor,
        args.attrs!.numOrSizeSplits as number[] | number,
        axis,
      );
      const begin = new Array(shape.length).fill(0);
      return splits.map((n) => {
        const size = shape.slice();
        size[axis] = n;
        const y = make(args.backend, size, sliceValues(xv, shape, begin, size));
        begin[axis] += n;
        return y;
      });
    },

    Concat: (args) => {
      const inputs = args.inputs as unknown as tf.TensorInfo[];
      const vals = inputs.map((t) => f32(args.backend, t));
      if (inputs.length === 0 || vals.some((v) => !v)) return fallback("Concat")(args);
      const axis = tf.util.parseAxisParam(args.attrs!.axis as number, inputs[0].shape)[0];
      const outShape = tf.backend_util.computeOutShape(inputs.map((t) => t.shape), axis);
      const outer = sizeOf(outShape.slice(0, axis));
      const inners = inputs.map((t) => sizeOf(t.shape.slice(axis)));
      return make(args.backend, outShape, concatValues(vals as Float32Array[], inners, outer));
    },

    Pack: (args) => {
      const inputs = args.inputs as unknown as tf.TensorInfo[];
      const vals = inputs.map((t) => f32(args.backend, t));
      if (inputs.length === 0 || vals.some((v) => !v)) return fallback("Pack")(args);
      const shape = inputs[0].shape;
      const axis = tf.util.parseAxisParam(args.attrs!.axis as number, [...shape, 1])[0];
      const outShape = [...shape.slice(0, axis), inputs.length, ...shape.slice(axis)];
      const outer = sizeOf(shape.slice(0, axis));
      const inners = inputs.map(() => sizeOf(shape.slice(axis)));
      return make(args.backend, outShape, concatValues(vals as Float32Array[], inners, outer));
    },

    Tile: (args) => {
      const { x } = args.inputs;
      const xv = f32(args.backend, x);
      if (!xv) return fallback("Tile")(args);
      const reps = args.attrs!.reps as number[];
      const shape = x!.shape;
      const r = shape.length;
      if (r === 0) return fallback("Tile")(args);
      const outShape = shape.map((d, i) => d * reps[i]);
      const total = sizeOf(outShape);
      const y = bufferPool.alloc(total);
      if (total === 0) return make(args.backend, outShape, y);
      const inStrides = new Array(r);
      let s = 1;
      for (let d = r - 1; d >= 0; d--) {
        inStrides[d] = s;
        s *= shape[d];
      }
      // Rows along the last output dim: the input row repeated reps[r-1] times.
      const last = shape[r - 1], rowLen = outShape[r - 1];
      const idx = new Array(r - 1).fill(0);
      for (let o = 0; o < total; o += rowLen) {
        let src = 0;
        for (let d = 0; d < r - 1; d++) src += (idx[d] % shape[d]) * inStrides[d];
        for (let t = 0; t < rowLen; t += last) {
          for (let j = 0; j < last; j++) y[o + t + j] = xv[src + j];
        }
        for (let d = r - 2; d >= 0; d--) {
          if (++idx[d] < outShape[d]) break;
          idx[d] = 0;
        }
      }
      return make(args.backend, outShape, y);
    },
  };
}
