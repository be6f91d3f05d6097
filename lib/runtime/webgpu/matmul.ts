/**
 * Matrix products on WebGPU through our GEMM ({@linkcode gemmProgram}): tfjs' `BatchMatMul`
 * (attention's q·kᵀ and weights·v, and every `tf.matMul`) and `_FusedMatMul` with a bias and a
 * linear activation (the U-Nets' dense layers), float32, with either operand transposed and a
 * batch of one broadcast against the other's. Other cases (non-float32, an activation, batch
 * shapes that broadcast otherwise) go to tfjs' stock kernels, and so does every product in the
 * `tiled` GEMM style: on a GPU tfjs' own vec4 matrix product is the tuned one, and ours has not
 * been measured against it there (on llvmpipe the `register` style is 3-5× faster than tfjs').
 *
 *   C[b, m, n] = Σ_k A[b, m, k] · B[b, k, n]   (+ bias[n])
 *
 * where A is `a` or its transpose (`transposeA`), likewise B. Loads convert with `f32(…)`: tfjs'
 * int32 → float32 cast on webgpu keeps the int32 buffer and only relabels the tensor (the
 * one-hot labels of the conditional networks reach the first dense layer that way).
 *
 * @module
 */
import { gemmProgram, type GemmSpec, gemmTuning, registerBlock } from "./gemm.ts";
import type { GpuKernelArgs, GpuKernelFunc, GpuProgram, TensorInfo } from "./program.ts";

/** Sizes of a batched product, or null when ours does not cover the shapes. */
export interface MatMulDims {
  /** Batch count of the output (the larger of the two; the other is 1 or equal). */
  batch: number;
  batchA: number;
  batchB: number;
  M: number;
  N: number;
  K: number;
  outShape: number[];
}

function prod(s: readonly number[]): number {
  return s.reduce((a, b) => a * b, 1);
}

/** The product's sizes (tfjs' `BatchMatMul` shape rules, restricted as the module says). */
export function matMulDims(
  aShape: number[],
  bShape: number[],
  transposeA: boolean,
  transposeB: boolean,
): MatMulDims | null {
  if (aShape.length < 2 || bShape.length < 2) return null;
  const [ar, ac] = aShape.slice(-2), [br, bc] = bShape.slice(-2);
  const M = transposeA ? ac : ar, K = transposeA ? ar : ac;
  const Kb = transposeB ? bc : br, N = transposeB ? br : bc;
  if (K !== Kb) return null;
  const outerA = aShape.slice(0, -2), outerB = bShape.slice(0, -2);
  const batchA = prod(outerA), batchB = prod(outerB);
  let outer: number[];
  if (batchA === batchB && outerA.length === outerB.length) {
    if (outerA.some((d, i) => d !== outerB[i])) return null;
    outer = outerA;
  } else if (batchB === 1) outer = outerA;
  else if (batchA === 1) outer = outerB;
  else return null;
  const batch = Math.max(batchA, batchB);
  if (M === 0 || N === 0 || batch === 0) return null;
  return { batch, batchA, batchB, M, N, K, outShape: [...outer, M, N] };
}

/** The GEMM program of a (batched) product, plus `bias[n]` when `withBias`. */
export function matMulProgram(
  d: MatMulDims,
  transposeA: boolean,
  transposeB: boolean,
  withBias: boolean,
): GpuProgram {
  const { M, N, K } = d;
  // Offsets of batch bz in each operand (0 for a broadcast batch of one).
  const offA = d.batchA > 1 ? `bz * ${M * K}` : "0";
  const offB = d.batchB > 1 ? `bz * ${K * N}` : "0";
  // vec4 loads (register style, gemm.ts) where the contiguous extent allows: A along k, or
  // along m when transposed (four whole rows per load, so the block must hold quads); B along n.
  const vec4 = gemmTuning.style === "register" && gemmTuning.vec4;
  const aQuad = vec4 &&
    (transposeA ? M % 4 === 0 && registerBlock(M, N)[0] % 4 === 0 : K % 4 === 0);
  const bQuad = vec4 && !transposeB && N % 4 === 0;
  const spec: GemmSpec = {
    name: `matmul_${transposeA ? "t" : "n"}${transposeB ? "t" : "n"}_${d.batchA}_${d.batchB}_${
      withBias ? "bias" : "nobias"
    }`,
    M,
    N,
    K,
    batch: d.batch,
    variableNames: withBias ? ["a", "b", "bias"] : ["a", "b"],
    // A(r = m, c = k): a[m, k] or, transposed, a[k, m].
    a: transposeA
      ? {
        columnsContiguous: false,
        load: `  return f32(a[${offA} + c * ${M} + r]);`,
        load4: aQuad ? `  return vec4<f32>(a[(${offA} + c * ${M} + r) / 4]);` : undefined,
      }
      : {
        columnsContiguous: true,
        load: `  return f32(a[${offA} + r * ${K} + c]);`,
        load4: aQuad ? `  return vec4<f32>(a[(${offA} + r * ${K} + c) / 4]);` : undefined,
      },
    // B(r = k, c = n): b[k, n] or, transposed, b[n, k].
    b: transposeB
      ? { columnsContiguous: false, load: `  return f32(b[${offB} + c * ${K} + r]);` }
      : {
        columnsContiguous: true,
        load: `  return f32(b[${offB} + r * ${N} + c]);`,
        load4: bQuad ? `  return vec4<f32>(b[(${offB} + r * ${N} + c) / 4]);` : undefined,
      },
    components: [aQuad ? 4 : 1, bQuad ? 4 : 1, 1].slice(0, withBias ? 3 : 2),
    epilogue: withBias ? "v + f32(bias[n])" : "v",
    outputShape: d.outShape,
  };
  return gemmProgram(spec);
}

/** Whether our products run (the `register` style; see the module comment). */
const ours = () => gemmTuning.style === "register";

const f32 = (...ts: (TensorInfo | undefined)[]) => ts.every((t) => !t || t.dtype === "float32");

/**
 * Our `BatchMatMul` and `_FusedMatMul` kernels; `stock` gives tfjs-backend-webgpu's kernel of a
 * name, for the cases ours do not cover.
 */
export function matMulKernels(
  stock: (name: string) => GpuKernelFunc,
): Record<string, GpuKernelFunc> {
  return {
    BatchMatMul: (args: GpuKernelArgs) => {
      const { a, b } = args.inputs as Record<string, TensorInfo>;
      const tA = !!args.attrs?.transposeA, tB = !!args.attrs?.transposeB;
      const d = ours() && f32(a, b) ? matMulDims(a.shape, b.shape, tA, tB) : null;
      if (!d) return stock("BatchMatMul")(args);
      return args.backend.runWebGPUProgram(matMulProgram(d, tA, tB, false), [a, b], "float32");
    },
    _FusedMatMul: (args: GpuKernelArgs) => {
      const { a, b, bias, preluActivationWeights } = args.inputs;
      const attrs = args.attrs ?? {};
      const tA = !!attrs.transposeA, tB = !!attrs.transposeB;
      const linear = (attrs.activation ?? "linear") === "linear" && !preluActivationWeights;
      const d = ours() && linear && f32(a, b, bias) ? matMulDims(a!.shape, b!.shape, tA, tB) : null;
      // A bias of N values (shape [N] or [1, …, 1, N]); other broadcasts go to tfjs.
      const biasOk = !bias || (bias.shape.at(-1) === d?.N && prod(bias.shape) === d?.N);
      if (!d || !biasOk) {
        return stock("_FusedMatMul")(args);
      }
      const inputs = bias ? [a!, b!, bias] : [a!, b!];
      return args.backend.runWebGPUProgram(
        matMulProgram(d, tA, tB, !!bias),
        inputs,
        "float32",
      );
    },
  };
}
