/**
 * Convolutions on WebGPU as tiled implicit GEMMs ({@linkcode gemmProgram}): `Conv2D`,
 * `FusedConv2D` (bias in the epilogue, linear activation), `Conv2DBackpropInput` and
 * `Conv2DBackpropFilter` (split-K over N·H·W), NHWC with HWIO filters, any kernel size, stride,
 * dilation and padding that tfjs' `computeConv2DInfo` describes.
 *
 * The three products, with x [N, H, W, Ci], w [KH, KW, Ci, Co], y / dy [N, Ho, Wo, Co] and
 * hi = ho·s − pad + kh·d (likewise for columns):
 *
 * - forward:       y[(n,ho,wo), co]      = Σ_{(kh,kw,ci)} x[n, hi, wi, ci] · w[(kh,kw,ci), co]
 * - input grad:    dx[(n,hi,wi), ci]     = Σ_{(kh,kw,co)} dy[n, ho, wo, co] · w[kh, kw, ci, co]
 *                  over the (kh, kw) whose ho = (hi + pad − kh·d)/s is a whole number in range;
 * - filter grad:   dw[(kh,kw,ci), co]    = Σ_{(n,ho,wo)} x[n, hi, wi, ci] · dy[(n,ho,wo), co]
 *
 * (the row index of each product is the output's flat index, so results need no reshuffle).
 * These are the formulas of tfjs-backend-cpu's `conv2D`, `conv2DBackpropInput` and
 * `conv2DBackpropFilter` kernels, written as matrix products.
 *
 * @module
 */
import { tf } from "../../deps.ts";
import {
  chooseKChunk,
  gemmProgram,
  gemmTuning,
  registerBlock,
  splitKReduceProgram,
  splits,
} from "./gemm.ts";
import { flatProgram } from "./program.ts";
import type { GpuKernelArgs, GpuKernelFunc, TensorInfo } from "./program.ts";

type ConvInfo = ReturnType<typeof tf.backend_util.computeConv2DInfo>;

/** WGSL constants of a convolution's geometry (prefixed `C_`). */
function geometry(c: ConvInfo): string {
  const v: Record<string, number> = {
    N: c.batchSize,
    H: c.inHeight,
    W: c.inWidth,
    CI: c.inChannels,
    HO: c.outHeight,
    WO: c.outWidth,
    CO: c.outChannels,
    KH: c.filterHeight,
    KW: c.filterWidth,
    SH: c.strideHeight,
    SW: c.strideWidth,
    DH: c.dilationHeight,
    DW: c.dilationWidth,
    PT: c.padInfo.top,
    PL: c.padInfo.left,
  };
  return Object.entries(v).map(([k, x]) => `const C_${k} = ${x};`).join("\n");
}

function geometryKey(c: ConvInfo): string {
  return [
    c.batchSize,
    c.inHeight,
    c.inWidth,
    c.inChannels,
    c.outHeight,
    c.outWidth,
    c.outChannels,
    c.filterHeight,
    c.filterWidth,
    c.strideHeight,
    c.strideWidth,
    c.dilationHeight,
    c.dilationWidth,
    c.padInfo.top,
    c.padInfo.left,
  ].join("_");
}

/** True for a 1×1, stride-1, unpadded convolution: x itself is the [N·H·W, Ci] matrix. */
function pointwise(c: ConvInfo): boolean {
  return c.filterHeight === 1 && c.filterWidth === 1 && c.strideHeight === 1 &&
    c.strideWidth === 1 && c.padInfo.top === 0 && c.padInfo.left === 0;
}

/**
 * x[n, hi, wi, ci] for output pixel (n, ho, wo) and filter tap (kh, kw), 0 in the padding.
 * Branch-free (an in-range index is loaded and masked): a branch per load multiplies the basic
 * blocks of the unrolled GEMM bodies, and with them llvmpipe's compile time.
 */
const GATHER_X = `
  let hi = ho * C_SH - C_PT + kh * C_DH;
  let wi = wo * C_SW - C_PL + kw * C_DW;
  let ok = (hi >= 0) & (hi < C_H) & (wi >= 0) & (wi < C_W);
  return select(0.0, f32(x[select(0, ((n * C_H + hi) * C_W + wi) * C_CI + ci, ok)]), ok);`;

/**
 * Like {@linkcode GATHER_X}, four channels ci..ci+3 in one load from `x` bound as a vec4 array
 * (C_CI divisible by 4, ci a multiple of 4).
 */
const GATHER_X4 = `
  let hi = ho * C_SH - C_PT + kh * C_DH;
  let wi = wo * C_SW - C_PL + kw * C_DW;
  let ok = (hi >= 0) & (hi < C_H) & (wi >= 0) & (wi < C_W);
  return select(vec4<f32>(0.0),
    vec4<f32>(x[select(0, (((n * C_H + hi) * C_W + wi) * C_CI + ci) / 4, ok)]), ok);`;

/**
 * Whether programs built now read channel-contiguous operands four words at a time (the
 * `register` style's vec4 loads; `gemm.ts`), for a channel count `c`.
 */
function quad(c: number): boolean {
  return gemmTuning.style === "register" && gemmTuning.vec4 && c % 4 === 0;
}

/** The forward convolution's program (bias added in the epilogue when `withBias`). */
export function conv2dProgram(c: ConvInfo, withBias: boolean) {
  const M = c.batchSize * c.outHeight * c.outWidth;
  const K = c.filterHeight * c.filterWidth * c.inChannels;
  const pw = pointwise(c);
  // The row (output pixel) and column (tap, input channel) of A.
  const decompose = `
  let n = r / (C_HO * C_WO);
  let p = r % (C_HO * C_WO);
  let ho = p / C_WO;
  let wo = p % C_WO;
  let kh = c / (C_KW * C_CI);
  let q = c % (C_KW * C_CI);
  let kw = q / C_CI;
  let ci = q % C_CI;`;
  const aQuad = quad(c.inChannels), bQuad = quad(c.outChannels);
  return gemmProgram({
    name: `conv2d_${withBias ? "bias" : "nobias"}_${geometryKey(c)}`,
    M,
    N: c.outChannels,
    K,
    variableNames: withBias ? ["x", "w", "bias"] : ["x", "w"],
    components: [aQuad ? 4 : 1, bQuad ? 4 : 1, 1].slice(0, withBias ? 3 : 2),
    decls: geometry(c),
    a: {
      columnsContiguous: true,
      load: pw ? `  return f32(x[r * C_CI + c]);` : `${decompose}${GATHER_X}`,
      load4: !aQuad
        ? undefined
        : pw
        ? `  return vec4<f32>(x[(r * C_CI + c) / 4]);`
        : `${decompose}${GATHER_X4}`,
    },
    b: {
      columnsContiguous: true,
      load: `  return f32(w[r * C_CO + c]);`,
      load4: bQuad ? `  return vec4<f32>(w[(r * C_CO + c) / 4]);` : undefined,
    },
    epilogue: withBias ? "v + f32(bias[n])" : "v",
    outputShape: [c.batchSize, c.outHeight, c.outWidth, c.outChannels],
  });
}

/**
 * The input gradient's program. With vec4 loads of the filter (`register` style, C_CI divisible
 * by 4) it reads `wt`, the filter as [KH, KW, Co, Ci] ({@linkcode filterTransposeProgram}), so
 * that the product's columns (ci) are adjacent; otherwise `w` itself.
 */
export function conv2dBackpropInputProgram(c: ConvInfo) {
  const M = c.batchSize * c.inHeight * c.inWidth;
  const K = c.filterHeight * c.filterWidth * c.outChannels;
  const pw = pointwise(c);
  const decompose = `
  let n = r / (C_H * C_W);
  let p = r % (C_H * C_W);
  let hi = p / C_W;
  let wi = p % C_W;
  let kh = c / (C_KW * C_CO);
  let q = c % (C_KW * C_CO);
  let kw = q / C_CO;
  let co = q % C_CO;
  let th = hi + C_PT - kh * C_DH;
  let tw = wi + C_PL - kw * C_DW;
  let ho = th / C_SH;
  let wo = tw / C_SW;
  let ok = (th >= 0) & (tw >= 0) & (th % C_SH == 0) & (tw % C_SW == 0) & (ho < C_HO) &
    (wo < C_WO);
  let at = select(0, ((n * C_HO + ho) * C_WO + wo) * C_CO + co, ok);`;
  const aQuad = quad(c.outChannels), bQuad = quad(c.inChannels);
  return gemmProgram({
    name: `conv2d_dx_${geometryKey(c)}`,
    M,
    N: c.inChannels,
    K,
    variableNames: ["dy", bQuad ? "wt" : "w"],
    components: [aQuad ? 4 : 1, bQuad ? 4 : 1],
    decls: geometry(c),
    a: {
      columnsContiguous: true,
      load: pw
        ? `  return f32(dy[r * C_CO + c]);`
        : `${decompose}\n  return select(0.0, f32(dy[at]), ok);`,
      load4: !aQuad
        ? undefined
        : pw
        ? `  return vec4<f32>(dy[(r * C_CO + c) / 4]);`
        : `${decompose}\n  return select(vec4<f32>(0.0), vec4<f32>(dy[at / 4]), ok);`,
    },
    // B[(kh,kw,co), ci] = w[kh, kw, ci, co] = wt[kh, kw, co, ci].
    b: bQuad
      ? {
        columnsContiguous: true,
        load: "",
        load4: `  return vec4<f32>(wt[(r * C_CI + c) / 4]);`,
      }
      : {
        columnsContiguous: false,
        load: `
  let t = r / C_CO;
  let co = r % C_CO;
  return f32(w[(t * C_CI + c) * C_CO + co]);`,
      },
    outputShape: [c.batchSize, c.inHeight, c.inWidth, c.inChannels],
  });
}

/** The filter [KH, KW, Ci, Co] as [KH, KW, Co, Ci] (input of the vec4 input-gradient GEMM). */
export function filterTransposeProgram(c: ConvInfo) {
  const { filterHeight: kh, filterWidth: kw, inChannels: ci, outChannels: co } = c;
  return flatProgram(
    `filter_t_${kh}_${kw}_${ci}_${co}`,
    ["w"],
    [kh, kw, co, ci],
    `  if (index < uniforms.size) {
    let t = index / ${co * ci};
    let q = index % ${co * ci};
    let o = q / ${ci};
    let i = q % ${ci};
    result[index] = f32(w[(t * ${ci} + i) * ${co} + o]);
  }`,
  );
}

/**
 * The filter gradient's programs: a split-K product into partial filters, then their sum (one
 * program when the split is 1).
 */
export function conv2dBackpropFilterPrograms(c: ConvInfo, targetWorkgroups = 256) {
  const M = c.filterHeight * c.filterWidth * c.inChannels;
  const N = c.outChannels;
  const K = c.batchSize * c.outHeight * c.outWidth;
  const kChunk = chooseKChunk(M, N, K, targetWorkgroups);
  const filterShape = [c.filterHeight, c.filterWidth, c.inChannels, c.outChannels];
  const S = splits({ K, kChunk });
  const pw = pointwise(c);
  const decompose = `
  let kh = r / (C_KW * C_CI);
  let q = r % (C_KW * C_CI);
  let kw = q / C_CI;
  let ci = q % C_CI;
  let n = c / (C_HO * C_WO);
  let p = c % (C_HO * C_WO);
  let ho = p / C_WO;
  let wo = p % C_WO;`;
  // (A's vec4 loads run along m: four rows per load, so the block must hold whole quads.)
  const aQuad = quad(c.inChannels) && registerBlock(M, N)[0] % 4 === 0;
  const bQuad = quad(c.outChannels);
  const gemm = gemmProgram({
    name: `conv2d_dw_${geometryKey(c)}`,
    M,
    N,
    K,
    kChunk,
    variableNames: ["x", "dy"],
    components: [aQuad ? 4 : 1, bQuad ? 4 : 1],
    decls: geometry(c),
    // A[(kh,kw,ci), (n,ho,wo)]: consecutive rows (ci) are adjacent in x.
    a: {
      columnsContiguous: false,
      load: pw ? `  return f32(x[c * C_CI + r]);` : `${decompose}${GATHER_X}`,
      load4: !aQuad
        ? undefined
        : pw
        ? `  return vec4<f32>(x[(c * C_CI + r) / 4]);`
        : `${decompose}${GATHER_X4}`,
    },
    b: {
      columnsContiguous: true,
      load: `  return f32(dy[r * C_CO + c]);`,
      load4: bQuad ? `  return vec4<f32>(dy[(r * C_CO + c) / 4]);` : undefined,
    },
    outputShape: S > 1 ? [S, M, N] : filterShape,
  });
  return { gemm, reduce: S > 1 ? splitKReduceProgram(S, filterShape) : undefined, splits: S };
}

function convInfoOf(
  xShape: number[],
  filterShape: number[],
  attrs: Record<string, unknown>,
  dilations: unknown = 1,
): ConvInfo {
  return tf.backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    attrs.strides as number | [number, number],
    dilations as number | [number, number],
    attrs.pad as "same",
    attrs.dimRoundingMode as "round" | undefined,
    false,
    tf.backend_util.convertConv2DDataFormat((attrs.dataFormat as "NHWC") ?? "NHWC"),
  );
}

const isF32 = (...ts: (TensorInfo | undefined)[]) => ts.every((t) => !t || t.dtype === "float32");
const channelsLast = (attrs: Record<string, unknown>) =>
  (attrs.dataFormat ?? "NHWC") === "NHWC" || attrs.dataFormat === "channelsLast";

/**
 * Our convolution kernels; `stock` gives tfjs-backend-webgpu's kernel of a name, for the cases
 * ours do not cover (NCHW, non-float32, an activation other than linear, PReLU weights).
 */
export function convKernels(
  stock: (name: string) => GpuKernelFunc,
): Record<string, GpuKernelFunc> {
  return {
    Conv2D: (args: GpuKernelArgs) => {
      const { x, filter } = args.inputs as Record<string, TensorInfo>;
      const attrs = args.attrs ?? {};
      if (!channelsLast(attrs) || !isF32(x, filter)) return stock("Conv2D")(args);
      const c = convInfoOf(x.shape, filter.shape, attrs, attrs.dilations);
      return args.backend.runWebGPUProgram(conv2dProgram(c, false), [x, filter], "float32");
    },
    FusedConv2D: (args: GpuKernelArgs) => {
      const { x, filter, bias, preluActivationWeights } = args.inputs;
      const attrs = args.attrs ?? {};
      const activation = attrs.activation ?? "linear";
      if (
        !channelsLast(attrs) || !isF32(x, filter, bias) || activation !== "linear" ||
        preluActivationWeights || (bias && bias.shape.length > 1 && bias.shape.length !== 4)
      ) return stock("FusedConv2D")(args);
      const c = convInfoOf(x!.shape, filter!.shape, attrs, attrs.dilations);
      if (bias && bias.shape.reduce((a, b) => a * b, 1) !== c.outChannels) {
        return stock("FusedConv2D")(args);
      }
      const inputs = bias ? [x!, filter!, bias] : [x!, filter!];
      return args.backend.runWebGPUProgram(conv2dProgram(c, !!bias), inputs, "float32");
    },
    Conv2DBackpropInput: (args: GpuKernelArgs) => {
      const { dy, filter } = args.inputs as Record<string, TensorInfo>;
      const attrs = args.attrs ?? {};
      if (!channelsLast(attrs) || !isF32(dy, filter)) return stock("Conv2DBackpropInput")(args);
      const c = convInfoOf(attrs.inputShape as number[], filter.shape, attrs);
      const program = conv2dBackpropInputProgram(c);
      const b = args.backend;
      if (program.variableNames[1] === "w") {
        return b.runWebGPUProgram(program, [dy, filter], "float32");
      }
      const wt = b.runWebGPUProgram(filterTransposeProgram(c), [filter], "float32");
      const out = b.runWebGPUProgram(program, [dy, wt], "float32");
      b.disposeData(wt.dataId);
      return out;
    },
    Conv2DBackpropFilter: (args: GpuKernelArgs) => {
      const { x, dy } = args.inputs as Record<string, TensorInfo>;
      const attrs = args.attrs ?? {};
      if (!channelsLast(attrs) || !isF32(x, dy)) return stock("Conv2DBackpropFilter")(args);
      const c = convInfoOf(x.shape, attrs.filterShape as number[], attrs);
      const { gemm, reduce } = conv2dBackpropFilterPrograms(c);
      const b = args.backend;
      const partial = b.runWebGPUProgram(gemm, [x, dy], "float32");
      if (!reduce) return partial;
      const out = b.runWebGPUProgram(reduce, [partial], "float32");
      b.disposeData(partial.dataId);
      return out;
    },
  };
}
