/**
 * The `native` backend's data-movement and reduction kernels (`csrc/sida_copy.c`): Slice,
 * SplitV, Concat, Pack, Unpack, Tile and Transpose on float32 and int32 tensors of rank ≤ 8, and
 * Sum of float32 tensors over axes that form one block once dimensions of size 1 are set aside
 * (a view `[A, R, B]` reduced over R: leading, trailing and middle reductions).
 *
 * Guarantees: the copies move bits unchanged, and every output equals tfjs-backend-cpu's value
 * for value (−0 and ±Infinity included, NaN where it has NaN), Sum included: each sum is
 * accumulated in double from 0 over the reduced elements in the order the cpu kernel adds them,
 * then rounded once to float32, as the cpu kernel does. Attributes are read as the cpu kernels
 * read them (negative axes, `size` −1, `numOrSizeSplits` as a count or sizes with one −1,
 * `keepDims`), and invalid attributes throw the cpu kernels' errors. Two differences in storage,
 * not in values: a contiguous Slice is a copy (the cpu kernel returns a view, which would pin the
 * input's buffer in the buffer pool), and a Concat with one non-empty input, a Pack of one input
 * and an empty Concat are left to the cpu kernels.
 *
 * Other cases (other dtypes, complex values, a Sum over axes in two or more separate blocks or
 * listed out of order, ranks above 8) and every case when the C kernels are unavailable or
 * disabled (`setCKernelsEnabled(false)`) go to the kernel that was there before: the TypeScript
 * kernels of `elementwise_kernels.ts` where it has one, else tfjs-cpu's. Those give the same
 * values, except a TypeScript Sum over separated axes, which adds in another order (within float
 * rounding of tfjs-cpu's, as before these kernels).
 *
 * @module
 */
import { tf } from "../../deps.ts";
import { bufferPool } from "./buffer_pool.ts";
import { bindCKernels } from "./ckernels.ts";
import { elementwiseKernels } from "./elementwise_kernels.ts";
import type { CpuBackend, KernelArgs, NativeKernelFunc } from "./gemm_kernels.ts";

/** The symbols of `csrc/sida_copy.c`. */
const COPY_SYMBOLS = {
  sida_gather: {
    parameters: ["buffer", "buffer", "i32", "buffer", "buffer", "i64"],
    result: "void",
  },
  sida_concat: { parameters: ["buffer", "i64", "i32", "buffer", "buffer"], result: "void" },
  sida_split: { parameters: ["buffer", "i64", "i32", "buffer", "buffer"], result: "void" },
  sida_sum_arb: { parameters: ["buffer", "buffer", "i64", "i64", "i64"], result: "void" },
} as const;

/** The bound functions of `csrc/sida_copy.c`. */
export type CopySymbols = Deno.DynamicLibrary<typeof COPY_SYMBOLS>["symbols"];

/** Most dimensions `sida_gather` takes (a Tile of rank r uses 2r). */
const MAX_GATHER_DIMS = 16;

/** Highest tensor rank these kernels take. */
export const MAX_COPY_RANK = 8;

/** Storage of a tensor these kernels move: 4-byte elements. */
export type Values32 = Float32Array | Int32Array;

function fail(what: string): never {
  throw new RangeError(`sida copy kernels: ${what}`);
}

function isCount(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}

function sizeOf(shape: readonly number[]): number {
  let s = 1;
  for (const d of shape) s *= d;
  return s;
}

function stridesOf(shape: readonly number[]): number[] {
  const st = new Array<number>(shape.length);
  let s = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    st[d] = s;
    s *= shape[d];
  }
  return st;
}

function is32(v: ArrayBufferView): boolean {
  return (v instanceof Float32Array || v instanceof Int32Array) && v.BYTES_PER_ELEMENT === 4;
}

/** `values` as an int64 array for C. */
function i64(values: readonly number[]): BigInt64Array {
  const a = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) a[i] = BigInt(values[i]);
  return a;
}

function address(v: Values32): bigint {
  if (v.length === 0) return 0n;
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(v)));
}

/** The C kernels of `csrc/sida_copy.c`, or null when they are unavailable or disabled. */
export function copySymbols(): CopySymbols | null {
  return bindCKernels(COPY_SYMBOLS);
}

/**
 * `dst` (row-major over `sizes`) = `src[offset + Σ i_d·strides[d]]`; strides ≥ 0. Checks that
 * every element read lies in `src` and that `dst` has `Π sizes` elements.
 */
export function gather(
  c: CopySymbols,
  dst: Values32,
  src: Values32,
  sizes: readonly number[],
  strides: readonly number[],
  offset: number,
): void {
  const k = sizes.length;
  if (k > MAX_GATHER_DIMS || strides.length !== k) fail("gather: dimension count");
  if (!is32(dst) || !is32(src)) fail("gather: 4-byte arrays expected");
  let total = 1, last = offset;
  for (let d = 0; d < k; d++) {
    if (!isCount(sizes[d]) || !isCount(strides[d])) fail("gather: sizes and strides");
    total *= sizes[d];
    if (sizes[d] > 0) last += (sizes[d] - 1) * strides[d];
  }
  if (dst.length !== total) fail("gather: output length");
  if (total === 0) return;
  if (!isCount(offset) || last >= src.length) fail("gather: input length");
  c.sida_gather(dst, src, k, i64(sizes), i64(strides), BigInt(offset));
}

function checkParts(whole: Values32, parts: Values32[], inners: readonly number[], outer: number) {
  if (parts.length !== inners.length || parts.length === 0) fail("part count");
  if (!isCount(outer) || !is32(whole)) fail("outer size");
  let row = 0;
  for (let p = 0; p < parts.length; p++) {
    if (!isCount(inners[p]) || !is32(parts[p])) fail("parts");
    if (parts[p].length !== outer * inners[p]) fail(`part ${p} length`);
    row += inners[p];
  }
  if (whole.length !== outer * row) fail("concatenated length");
}

/** `dst` as `[outer, Σ inner_p]` = the parts (each `[outer, inner_p]`) side by side. */
export function concatRows(
  c: CopySymbols,
  dst: Values32,
  parts: Values32[],
  inners: readonly number[],
  outer: number,
): void {
  checkParts(dst, parts, inners, outer);
  if (dst.length === 0) return;
  const ptrs = BigUint64Array.from(parts, address);
  c.sida_concat(dst, BigInt(outer), parts.length, i64(inners), ptrs);
}

/** The inverse of {@linkcode concatRows}: `src` as `[outer, Σ inner_p]` into the parts. */
export function splitRows(
  c: CopySymbols,
  src: Values32,
  parts: Values32[],
  inners: readonly number[],
  outer: number,
): void {
  checkParts(src, parts, inners, outer);
  if (src.length === 0) return;
  const ptrs = BigUint64Array.from(parts, address);
  c.sida_split(src, BigInt(outer), parts.length, i64(inners), ptrs);
}

/** `y[a, b] = Σ_r x[a, r, b]` (sums in double, in order of r, as tfjs-cpu). */
export function sumMiddle(
  c: CopySymbols,
  y: Float32Array,
  x: Float32Array,
  A: number,
  R: number,
  B: number,
): void {
  if (!isCount(A) || !isCount(R) || !isCount(B)) fail("sum: sizes");
  if (!(x instanceof Float32Array) || !(y instanceof Float32Array)) fail("sum: float32 expected");
  if (x.length !== A * R * B || y.length !== A * B) fail("sum: lengths");
  if (y.length === 0) return;
  c.sida_sum_arb(y, x, BigInt(A), BigInt(R), BigInt(B));
}

/**
 * The `[A, R, B]` view of a reduction of `shape` over `axes` (parsed, non-negative), or
 * undefined when the reduced dimensions (of size > 1) are not one block in ascending order, or
 * when an axis repeats.
 */
export function middleReduction(
  shape: readonly number[],
  axes: readonly number[],
): [number, number, number] | undefined {
  if (new Set(axes).size !== axes.length) return undefined;
  // tfjs-cpu adds the reduced elements in row-major order of the axes as listed.
  let prev = -1;
  for (const ax of axes) {
    if (shape[ax] === 1) continue;
    if (ax < prev) return undefined;
    prev = ax;
  }
  const reduced = new Set(axes);
  let A = 1, R = 1, B = 1, phase = 0; // 0: before the block, 1: in it, 2: after it
  for (let d = 0; d < shape.length; d++) {
    const n = shape[d];
    if (n === 1) continue;
    if (reduced.has(d)) {
      if (phase === 2) return undefined;
      phase = 1;
      R *= n;
    } else if (phase === 0) A *= n;
    else {
      phase = 2;
      B *= n;
    }
  }
  return [A, R, B];
}

/** Kernels this module provides, given the cpu kernels to fall back on. */
export function copyKernels(
  fallback: (name: string) => NativeKernelFunc,
): Record<string, NativeKernelFunc> {
  const ts = elementwiseKernels(fallback);
  /** The kernel these replace: the TypeScript one where there is one, else tfjs-cpu's. */
  const prior = (name: string): NativeKernelFunc => ts[name] ?? fallback(name);

  /** A tensor's storage when its dtype is float32 or int32 and it holds exactly its elements. */
  const values = (backend: CpuBackend, t: tf.TensorInfo | undefined): Values32 | undefined => {
    if (!t || t.shape.length > MAX_COPY_RANK) return undefined;
    const v = backend.data.get(t.dataId)?.values;
    const ok = t.dtype === "float32"
      ? v instanceof Float32Array
      : t.dtype === "int32" && v instanceof Int32Array;
    return ok && (v as Values32).length === sizeOf(t.shape) ? v as Values32 : undefined;
  };
  const alloc = (dtype: tf.DataType, n: number): Values32 =>
    dtype === "float32" ? bufferPool.alloc(n) : new Int32Array(n);
  const make = (backend: CpuBackend, shape: number[], dtype: tf.DataType, v: Values32) =>
    backend.makeTensorInfo(shape, dtype, v);

  /** The inputs of a list kernel with their storage, when all share one dtype these take. */
  const listValues = (args: KernelArgs) => {
    const inputs = args.inputs as unknown as tf.TensorInfo[];
    if (!Array.isArray(inputs) || inputs.length === 0) return undefined;
    const dtype = inputs[0].dtype;
    const vals: Values32[] = [];
    for (const t of inputs) {
      const v = t.dtype === dtype ? values(args.backend, t) : undefined;
      if (!v) return undefined;
      vals.push(v);
    }
    return { inputs, vals, dtype };
  };

  return {
    Slice: (args) => {
      const c = copySymbols();
      const x = args.inputs.x;
      const xv = c && values(args.backend, x);
      if (!c || !xv) return prior("Slice")(args);
      const xt = x as unknown as tf.Tensor;
      const [begin, size] = tf.slice_util.parseSliceParams(
        xt,
        args.attrs!.begin as number | number[],
        args.attrs!.size as number | number[] | undefined,
      );
      tf.slice_util.assertParamsValid(xt, begin, size);
      const st = stridesOf(x!.shape);
      let offset = 0;
      for (let d = 0; d < st.length; d++) offset += begin[d] * st[d];
      const y = alloc(x!.dtype, sizeOf(size));
      gather(c, y, xv, size, st, offset);
      return make(args.backend, size, x!.dtype, y);
    },

    SplitV: (args) => {
      const c = copySymbols();
      const x = args.inputs.x;
      const xv = c && values(args.backend, x);
      if (!c || !xv) return prior("SplitV")(args);
      const shape = x!.shape;
      const axis = tf.util.parseAxisParam(args.attrs!.axis as number, shape)[0];
      const splits = tf.backend_util.prepareSplitSize(
        x as unknown as tf.Tensor,
        args.attrs!.numOrSizeSplits as number[] | number,
        axis,
      );
      if (
        splits.length === 0 || !splits.every(isCount) ||
        splits.reduce((a, b) => a + b, 0) !== shape[axis]
      ) {
        return prior("SplitV")(args);
      }
      const outer = sizeOf(shape.slice(0, axis)), unit = sizeOf(shape.slice(axis + 1));
      const parts = splits.map((n) => alloc(x!.dtype, outer * n * unit));
      splitRows(c, xv, parts, splits.map((n) => n * unit), outer);
      return parts.map((v, i) => {
        const s = shape.slice();
        s[axis] = splits[i];
        return make(args.backend, s, x!.dtype, v);
      });
    },

    Concat: (args) => {
      const c = copySymbols();
      const list = c && listValues(args);
      if (!c || !list) return prior("Concat")(args);
      const { inputs, vals, dtype } = list;
      const axis = tf.util.parseAxisParam(args.attrs!.axis as number, inputs[0].shape)[0];
      const shapes = inputs.map((t) => t.shape);
      tf.backend_util.assertParamsConsistent(shapes, axis);
      const outShape = tf.backend_util.computeOutShape(shapes, axis);
      const keep = inputs.map((t) => sizeOf(t.shape) > 0);
      // An empty result, or one non-empty input (returned as is): the cpu kernel's own ways.
      if (sizeOf(outShape) === 0 || keep.filter(Boolean).length === 1) {
        return fallback("Concat")(args);
      }
      const outer = sizeOf(outShape.slice(0, axis));
      const parts = vals.filter((_, i) => keep[i]);
      const inners = inputs.filter((_, i) => keep[i]).map((t) => sizeOf(t.shape.slice(axis)));
      const y = alloc(dtype, sizeOf(outShape));
      concatRows(c, y, parts, inners, outer);
      return make(args.backend, outShape, dtype, y);
    },

    Pack: (args) => {
      const c = copySymbols();
      const list = c && listValues(args);
      if (!c || !list) return prior("Pack")(args);
      const { inputs, vals, dtype } = list;
      const shape = inputs[0].shape;
      const r = shape.length;
      const a = args.attrs!.axis as number;
      const axis = a < 0 ? a + r + 1 : a;
      if (
        inputs.length === 1 || !Number.isInteger(axis) || axis < 0 || axis > r ||
        !inputs.every((t) => tf.util.arraysEqual(t.shape, shape))
      ) {
        return fallback("Pack")(args); // expandDims of one input, or the cpu kernel's errors
      }
      if (r + 1 > MAX_COPY_RANK) return prior("Pack")(args);
      const outShape = [...shape.slice(0, axis), inputs.length, ...shape.slice(axis)];
      if (sizeOf(outShape) === 0) return fallback("Pack")(args);
      const outer = sizeOf(shape.slice(0, axis)), inner = sizeOf(shape.slice(axis));
      const y = alloc(dtype, sizeOf(outShape));
      concatRows(c, y, vals, vals.map(() => inner), outer);
      return make(args.backend, outShape, dtype, y);
    },

    Unpack: (args) => {
      const c = copySymbols();
      const x = args.inputs.value;
      const xv = c && values(args.backend, x);
      if (!c || !xv) return prior("Unpack")(args);
      const shape = x!.shape;
      const a = args.attrs!.axis as number;
      const axis = a < 0 ? a + shape.length : a;
      if (!Number.isInteger(axis) || axis < 0 || axis >= shape.length) {
        return prior("Unpack")(args);
      }
      const num = shape[axis];
      const outShape = [...shape.slice(0, axis), ...shape.slice(axis + 1)];
      const outer = sizeOf(shape.slice(0, axis)), inner = sizeOf(shape.slice(axis + 1));
      const parts = Array.from({ length: num }, () => alloc(x!.dtype, outer * inner));
      if (num > 0) splitRows(c, xv, parts, parts.map(() => inner), outer);
      return parts.map((v) => make(args.backend, outShape.slice(), x!.dtype, v));
    },

    Tile: (args) => {
      const c = copySymbols();
      const x = args.inputs.x;
      const xv = c && values(args.backend, x);
      const reps = args.attrs?.reps as number[] | undefined;
      const shape = x?.shape ?? [];
      if (
        !c || !xv || !Array.isArray(reps) || reps.length !== shape.length ||
        !reps.every(isCount)
      ) {
        return prior("Tile")(args);
      }
      const st = stridesOf(shape);
      const sizes: number[] = [], strides: number[] = [];
      for (let d = 0; d < shape.length; d++) {
        sizes.push(reps[d], shape[d]);
        strides.push(0, st[d]);
      }
      const outShape = shape.map((n, d) => n * reps[d]);
      const y = alloc(x!.dtype, sizeOf(outShape));
      gather(c, y, xv, sizes, strides, 0);
      return make(args.backend, outShape, x!.dtype, y);
    },

    Transpose: (args) => {
      const c = copySymbols();
      const x = args.inputs.x;
      const xv = c && values(args.backend, x);
      const perm = args.attrs?.perm as number[] | undefined;
      const r = x?.shape.length ?? 0;
      if (
        !c || !xv || !Array.isArray(perm) || perm.length !== r ||
        new Set(perm).size !== r || !perm.every((p) => Number.isInteger(p) && p >= 0 && p < r)
      ) {
        return prior("Transpose")(args);
      }
      const st = stridesOf(x!.shape);
      const outShape = perm.map((p) => x!.shape[p]);
      const y = alloc(x!.dtype, xv.length);
      gather(c, y, xv, outShape, perm.map((p) => st[p]), 0);
      return make(args.backend, outShape, x!.dtype, y);
    },

    Sum: (args) => {
      const c = copySymbols();
      const x = args.inputs.x;
      const xv = c && x?.dtype === "float32" ? values(args.backend, x) : undefined;
      if (!c || !xv) return prior("Sum")(args);
      const shape = x!.shape;
      const axes = tf.util.parseAxisParam(args.attrs!.axis as number | number[], shape);
      const arb = middleReduction(shape, axes);
      if (!arb) return prior("Sum")(args);
      const [A, R, B] = arb;
      const [outShape] = tf.backend_util.computeOutAndReduceShapes(shape, axes);
      const y = bufferPool.alloc(A * B);
      sumMiddle(c, y, xv as Float32Array, A, R, B);
      const s = args.attrs!.keepDims
        ? tf.backend_util.expandShapeToKeepDim(outShape, axes)
        : outShape;
      return make(args.backend, s, "float32", y);
    },
  };
}
