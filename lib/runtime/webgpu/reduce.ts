/**
 * `Sum` over one run of consecutive axes on WebGPU, the input read as [A, R, B] (R summed):
 *
 * - leading axes (A = 1): the bias gradients of every convolution and dense layer (dy summed
 *   over N·H·W) and whole-tensor sums, as column sums of an [R, B] matrix in two dispatches: S
 *   partial sums of R/S rows each ([S, B], enough invocations to fill the device), then their sum;
 * - middle or innermost axes (the 2×2 means of down-sampling, per-sample sums): one invocation per
 *   output, when there are enough outputs and R is not huge.
 *
 * tfjs-backend-webgpu reduces only along the innermost axis: it transposes first (an extra pass)
 * and runs one workgroup per output. Other cases (axes that are not one run, few outputs with long
 * sums, non-float32 inputs) go to tfjs.
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
  return quadProgram(
    `colsum_${R}_${C}_${S}_${outShape.join("x")}`,
    ["x"],
    [4],
    outputShape,
    `    let s = index / ${C4};
    let c = index % ${C4};
    let r1 = min(${R}, (s + 1) * ${rows});
    var v = vec4<f32>(0.0);
    for (var r = s * ${rows}; r < r1; r = r + 1) { v = v + vec4<f32>(x[r * ${C4} + c]); }
    result[index] = v;`,
  );
}

/**
 * The [A, R, B] view of a sum over a run of consecutive axes (R the reduced extent, A and B what
 * comes before and after; A is 1 for leading axes), or null when the axes are not one run.
 */
export function sumView(
  shape: number[],
  axis: number | number[],
): { A: number; R: number; B: number; outShape: number[]; keptShape: number[] } | null {
  const rank = shape.length;
  const axes = [...new Set((Array.isArray(axis) ? axis : [axis]).map((a) => a < 0 ? a + rank : a))]
    .sort((a, b) => a - b);
  if (axes.length === 0 || axes[0] < 0 || axes.at(-1)! >= rank) return null;
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
function middleSumProgram(
  { A, R, B }: { A: number; R: number; B: number },
  outShape: number[],
): GpuProgram {
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
      const v = x.dtype === "float32" ? sumView(x.shape, attrs.axis as number | number[]) : null;
      if (!v) return stock("Sum")(args);
      const shape = attrs.keepDims ? v.keptShape : v.outShape;
      if (v.A > 1) {
        // A run of middle or innermost axes, with enough outputs to keep the device busy (one
        // invocation sums its R values alone).
        if (v.A * v.B < 64 || v.R > 4096) return stock("Sum")(args);
        return args.backend.runWebGPUProgram(middleSumProgram(v, shape), [x], "float32");
      }
      const S = columnSplits(v.R, v.B);
      const b = args.backend;
      const partial = b.runWebGPUProgram(
        partialColumnSumProgram(v.R, v.B, S, shape, v.B % 4 === 0),
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
