/**
 * `Sum` over leading axes on WebGPU: the bias gradients of every convolution and dense layer
 * (dy summed over N·H·W) and whole-tensor sums; and over a run of middle or innermost axes
 * (the 2×2 means of down-sampling, per-sample sums), one invocation per output. tfjs-backend-webgpu reduces only along the
 * innermost axis, so it transposes first (an extra pass over dy); here the input is read as a
 * [R, C] matrix and summed down its columns in two dispatches: S partial sums of R/S rows each
 * ([S, C], enough invocations to fill the device), then their sum. Reductions over other axes
 * (the innermost ones, which tfjs does in one pass) and non-float32 inputs go to tfjs.
 *
 * @module
 */
import { splitKReduceProgram } from "./gemm.ts";
import {
  flatProgram,
  type GpuKernelArgs,
  type GpuKernelFunc,
  type GpuProgram,
  quadProgram,
  sizeOf,
  type TensorInfo,
} from "./program.ts";

/** The [R, C] view of a sum over leading axes, or null when the axes are not leading. */
export function leadingSum(
  shape: number[],
  axis: number | number[],
): { R: number; C: number; outShape: number[]; keptShape: number[] } | null {
  const rank = shape.length;
  const axes = [...new Set((Array.isArray(axis) ? axis : [axis]).map((a) => a < 0 ? a + rank : a))]
    .sort((a, b) => a - b);
  if (axes.length === 0 || axes.some((a, i) => a !== i || a >= rank)) return null;
  const r = axes.length;
  const R = sizeOf(shape.slice(0, r)), C = sizeOf(shape.slice(r));
  if (R === 0 || C === 0) return null;
  return {
    R,
    C,
    outShape: shape.slice(r),
    keptShape: [...Array(r).fill(1), ...shape.slice(r)],
  };
}

/** Row chunks of a column sum: enough (chunk, column) invocations, chunks of ≥ 64 rows. */
export function columnSplits(R: number, C: number): number {
  return Math.max(1, Math.min(Math.ceil(4096 / C), Math.ceil(R / 64)));
}

/**
 * Partial column sums: invocation (s, c) sums x[r, c] over the rows of chunk s. When C is a
 * multiple of 4 (`quad`), each invocation sums four adjacent columns with vec4 loads (x bound as
 * a vec4 array): on llvmpipe a storage load is a loop over the SIMD lanes, and a vec4 load shares
 * it among four words.
 */
function partialColumnSumProgram(
  R: number,
  C: number,
  S: number,
  outShape: number[],
  quad: boolean,
): GpuProgram {
  const rows = Math.ceil(R / S);
  const outputShape = S > 1 ? [S, C] : outShape;
  if (!quad) {
    return flatProgram(
      `colsum_${R}_${C}_${S}_${outShape.join("x")}`,
      ["x"],
      outputShape,
      `  if (index < uniforms.size) {
    let s = index / ${C};
    let c = index % ${C};
    let r1 = min(${R}, (s + 1) * ${rows});
    var v = 0.0;
    for (var r = s * ${rows}; r < r1; r = r + 1) { v = v + f32(x[r * ${C} + c]); }
    result[index] = v;
  }`,
    );
  }
  const C4 = C / 4;
  return {
    ...flatProgram(
      `colsum4_${R}_${C}_${S}_${outShape.join("x")}`,
      ["x"],
      outputShape,
      `  _ = uniforms.NAN; // (every binding must be used: see program.ts)
  if (index < ${S * C4}) {
    let s = index / ${C4};
    let c = index % ${C4};
    let r1 = min(${R}, (s + 1) * ${rows});
    var v = vec4<f32>(0.0);
    for (var r = s * ${rows}; r < r1; r = r + 1) { v = v + vec4<f32>(x[r * ${C4} + c]); }
    let o = s * ${C} + 4 * c;
    result[o] = v.x;
    result[o + 1] = v.y;
    result[o + 2] = v.z;
    result[o + 3] = v.w;
  }`,
      "",
      S * C4,
    ),
    variableComponents: [4],
  };
}

/**
 * The [A, R, B] view of a sum over a run of consecutive axes that does not start at axis 0 (R
 * the reduced extent, A and B what comes before and after), or null otherwise.
 */
export function middleSum(
  shape: number[],
  axis: number | number[],
): { A: number; R: number; B: number; outShape: number[]; keptShape: number[] } | null {
  const rank = shape.length;
  const axes = [...new Set((Array.isArray(axis) ? axis : [axis]).map((a) => a < 0 ? a + rank : a))]
    .sort((a, b) => a - b);
  if (axes.length === 0 || axes[0] === 0 || axes.at(-1)! >= rank) return null;
  if (axes.some((a, i) => a !== axes[0] + i)) return null;
  const a0 = axes[0], a1 = axes.at(-1)! + 1;
  const A = sizeOf(shape.slice(0, a0)), R = sizeOf(shape.slice(a0, a1));
  const B = sizeOf(shape.slice(a1));
  if (A === 0 || R === 0 || B === 0) return null;
  return {
    A,
    R,
    B,
    outShape: [...shape.slice(0, a0), ...shape.slice(a1)],
    keptShape: [...shape.slice(0, a0), ...Array(a1 - a0).fill(1), ...shape.slice(a1)],
  };
}

/**
 * out[a, b] = Σ_r x[a, r, b], one invocation per output element (per four when B is a multiple
 * of 4, with vec4 loads). tfjs transposes such a sum so that the reduced axes come last and then
 * runs one workgroup per output element with a tree reduction in workgroup memory: for the 2×2
 * means of our down-sampling (half a million sums of 2 values) that is half a million workgroups
 * with barriers, 20% of a SiDA iteration on llvmpipe.
 */
function middleSumProgram(A: number, R: number, B: number, outShape: number[]): GpuProgram {
  if (B % 4 === 0) {
    const B4 = B / 4;
    return quadProgram(
      `midsum_${A}_${R}_${B}`,
      ["x"],
      [4],
      outShape,
      `    let a = index / ${B4};
    let b = index % ${B4};
    var v = vec4<f32>(0.0);
    for (var r = 0; r < ${R}; r = r + 1) { v = v + vec4<f32>(x[(a * ${R} + r) * ${B4} + b]); }
    result[index] = v;`,
    );
  }
  return flatProgram(
    `midsum_${A}_${R}_${B}`,
    ["x"],
    outShape,
    `  if (index < uniforms.size) {
    let a = index / ${B};
    let b = index % ${B};
    var v = 0.0;
    for (var r = 0; r < ${R}; r = r + 1) { v = v + f32(x[(a * ${R} + r) * ${B} + b]); }
    result[index] = v;
  }`,
  );
}

/** Our `Sum` kernel; `stock` gives tfjs-backend-webgpu's for the cases ours does not cover. */
export function reduceKernels(
  stock: (name: string) => GpuKernelFunc,
): Record<string, GpuKernelFunc> {
  return {
    Sum: (args: GpuKernelArgs) => {
      const x = args.inputs.x as TensorInfo;
      const attrs = args.attrs ?? {};
      const axis = attrs.axis as number | number[];
      const v = x.dtype === "float32" ? leadingSum(x.shape, axis) : null;
      if (!v) {
        // A run of middle or innermost axes, with enough outputs to keep the device busy (one
        // invocation sums its R values alone).
        const m = x.dtype === "float32" ? middleSum(x.shape, axis) : null;
        if (!m || m.A * m.B < 64 || m.R > 4096) return stock("Sum")(args);
        const program = middleSumProgram(m.A, m.R, m.B, attrs.keepDims ? m.keptShape : m.outShape);
        return args.backend.runWebGPUProgram(program, [x], "float32");
      }
      const shape = attrs.keepDims ? v.keptShape : v.outShape;
      const S = columnSplits(v.R, v.C);
      const b = args.backend;
      const partial = b.runWebGPUProgram(
        partialColumnSumProgram(v.R, v.C, S, shape, v.C % 4 === 0),
        [x],
        "float32",
      );
      if (S === 1) return partial;
      const out = b.runWebGPUProgram(splitKReduceProgram(S, shape), [partial], "float32");
      b.disposeData(partial.dataId);
      return out;
    },
  };
}
