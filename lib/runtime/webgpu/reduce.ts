/**
 * `Sum` over leading axes on WebGPU: the bias gradients of every convolution and dense layer
 * (dy summed over N·H·W) and whole-tensor sums. tfjs-backend-webgpu reduces only along the
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

/** Our `Sum` kernel; `stock` gives tfjs-backend-webgpu's for the cases ours does not cover. */
export function reduceKernels(
  stock: (name: string) => GpuKernelFunc,
): Record<string, GpuKernelFunc> {
  return {
    Sum: (args: GpuKernelArgs) => {
      const x = args.inputs.x as TensorInfo;
      const attrs = args.attrs ?? {};
      const v = x.dtype === "float32" ? leadingSum(x.shape, attrs.axis as number | number[]) : null;
      if (!v) return stock("Sum")(args);
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
