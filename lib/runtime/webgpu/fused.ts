/**
 * The fused kernels of `../native/fused.ts` on WebGPU: SiLU and its gradient (one element-wise
 * dispatch each), group normalisation (2 dispatches: statistics, then normalise-and-affine) and
 * its gradient (4: statistics with the two gradient means, dx, dγ, dβ), and `nan_to_num`. The
 * composed forms they replace cost about 10 dispatches forward and 25 backward per group norm
 * (tfjs' `moments`, `rsqrt`, broadcasting products and their gradients).
 *
 * Group norm over NHWC x with G groups of C/G channels, per (n, g), L = H·W·C/G values:
 *
 *   μ = mean(x), σ⁻¹ = 1/√(var(x) + ε) (biased variance, two passes over the group),
 *   x̂ = (x − μ)·σ⁻¹,  y = x̂·γ[c] + β[c]
 *   backward (g = dy·γ[c]):  dx = σ⁻¹·(g − mean(g) − x̂·mean(g·x̂)),
 *                            dγ[c] = Σ_{n,h,w} dy·x̂,  dβ[c] = Σ_{n,h,w} dy
 *
 * (Wu & He 2018, "Group Normalization", and the batch-norm backward pass of Ioffe & Szegedy 2015
 * restricted to a group). Statistics use one 256-thread workgroup per (n, g) and a tree
 * reduction in workgroup memory.
 *
 * @module
 */
import { FUSED, registerFusedGradients } from "../native/fused.ts";
import {
  f32Lit,
  flatProgram,
  type GpuKernelArgs,
  type GpuKernelFunc,
  type GpuProgram,
  quadProgram,
  type TensorInfo,
} from "./program.ts";

const RED = 256;

/** Workgroup tree reduction of one f32 per thread (call in uniform control flow). */
const REDUCE = `
var<workgroup> red : array<f32, ${RED}>;
var<workgroup> red4 : array<vec4<f32>, ${RED}>;
fn wgSum4(v : vec4<f32>) -> vec4<f32> {
  let t = i32(localIndex);
  red4[t] = v;
  workgroupBarrier();
  for (var s = ${RED / 2}; s > 0; s = s >> 1u) {
    if (t < s) { red4[t] = red4[t] + red4[t + s]; }
    workgroupBarrier();
  }
  let r = red4[0];
  workgroupBarrier();
  return r;
}
fn wgSum(v : f32) -> f32 {
  let t = i32(localIndex);
  red[t] = v;
  workgroupBarrier();
  for (var s = ${RED / 2}; s > 0; s = s >> 1u) {
    if (t < s) { red[t] = red[t] + red[t + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}`;

/** A program with one 256-thread workgroup per `groups` item (`main()` reads `workgroupId.x`). */
function perGroupProgram(
  key: string,
  variableNames: string[],
  outputShape: number[],
  groups: number,
  body: string,
): GpuProgram {
  return {
    variableNames,
    outputShape,
    shaderKey: `sida_${key}`,
    dispatchLayout: { x: [], y: [], z: [0] },
    dispatch: [groups, 1, 1],
    workgroupSize: [RED, 1, 1],
    getUserCode: () => `${REDUCE}\nfn main() {\n  _ = uniforms.NAN;\n${body}\n}\n`,
  };
}

interface GnDims {
  n: number;
  hw: number;
  c: number;
  g: number;
}

function gnDims(shape: number[], groups: number): GnDims {
  if (shape.length !== 4) throw new RangeError(`group norm: rank-4 NHWC input expected`);
  const [n, h, w, c] = shape;
  if (!Number.isInteger(groups) || groups < 1 || c % groups !== 0) {
    throw new RangeError(`group norm: ${c} channels cannot form ${groups} groups`);
  }
  return { n, hw: h * w, c, g: groups };
}

const gnConsts = (d: GnDims) =>
  `const GN_HW = ${d.hw}; const GN_C = ${d.c}; const GN_G = ${d.g}; ` +
  `const GN_CG = ${d.c / d.g}; const GN_L = ${d.hw * (d.c / d.g)};` +
  (gnQuads(d)
    ? ` const GN_C4 = ${d.c / 4}; const GN_CG4 = ${d.c / d.g / 4}; ` +
      `const GN_L4 = ${(d.hw * (d.c / d.g)) / 4};`
    : "");

/**
 * Whether every pass reads four channels at a time (vec4 loads and stores; see
 * {@linkcode quadProgram}): when each group's channels come in whole quads (C/G divisible by 4,
 * as in the EDM U-Nets, whose groups are min(32, C/4)).
 */
export function gnQuads(d: GnDims): boolean {
  return (d.c / d.g) % 4 === 0;
}

/** Element e of group (n, g) of x: pixel e / (C/G), channel g·C/G + e % (C/G). */
const GROUP_INDEX = `
fn gIndex(n : i32, g : i32, e : i32) -> i32 {
  return (n * GN_HW + e / GN_CG) * GN_C + g * GN_CG + e % GN_CG;
}`;

/** Quad e (elements 4e..4e+3) of group (n, g) of x bound as vec4s (C/G divisible by 4). */
const GROUP_INDEX4 = `
fn gIndex4(n : i32, g : i32, e : i32) -> i32 {
  return (n * GN_HW + e / GN_CG4) * GN_C4 + g * GN_CG4 + e % GN_CG4;
}`;

/**
 * Statistics of each (n, g): [mean, 1/σ] (forward), or, with `dy` and `gamma`,
 * [mean, 1/σ, mean(g), mean(g·x̂)] (backward), into a [N·G, 2 or 4] tensor.
 */
function gnStatsProgram(d: GnDims, eps: number, backward: boolean): GpuProgram {
  const w = backward ? 4 : 2;
  const key = `gnstats_${backward ? "b" : "f"}_${d.n}_${d.hw}_${d.c}_${d.g}_${eps}`;
  // One pass over the group: sums of x' = x − x₀ and x'² (shifted by the group's first value, so
  // that var = E[x'²] − E[x']² does not cancel when |mean| ≫ σ), and for the gradient Σ g and
  // Σ g·x' (g = dy·γ), from which mean(g·x̂) = σ⁻¹·(E[g·x'] − E[x']·E[g]).
  const quads = gnQuads(d);
  const loop = quads
    ? `
  let x0 = x[gIndex4(n, g, 0)].x;
  var acc = vec4<f32>(0.0);
  for (var e = t; e < GN_L4; e = e + ${RED}) {
    let i = gIndex4(n, g, e);
    let v = x[i] - x0;${
      backward
        ? `
    let gv = dy[i] * gamma[g * GN_CG4 + e % GN_CG4];
    acc = acc + vec4<f32>(dot(v, vec4<f32>(1.0)), dot(v, v), dot(gv, vec4<f32>(1.0)), dot(gv, v));`
        : `
    acc = acc + vec4<f32>(dot(v, vec4<f32>(1.0)), dot(v, v), 0.0, 0.0);`
    }
  }`
    : `
  let x0 = x[gIndex(n, g, 0)];
  var acc = vec4<f32>(0.0);
  for (var e = t; e < GN_L; e = e + ${RED}) {
    let i = gIndex(n, g, e);
    let v = x[i] - x0;${
      backward
        ? `
    let gv = dy[i] * gamma[g * GN_CG + e % GN_CG];
    acc = acc + vec4<f32>(v, v * v, gv, gv * v);`
        : `
    acc = acc + vec4<f32>(v, v * v, 0.0, 0.0);`
    }
  }`;
  const body = `
  let grp = i32(workgroupId.x);
  let n = grp / GN_G;
  let g = grp % GN_G;
  let t = i32(localIndex);${loop}
  let tot = wgSum4(acc) / f32(GN_L);
  let shifted = tot.x;
  let mean = x0 + shifted;
  let rstd = inverseSqrt(max(tot.y - shifted * shifted, 0.0) + ${f32Lit(eps)});
  if (t == 0) {
    result[grp * ${w}] = mean;
    result[grp * ${w} + 1] = rstd;${
    backward
      ? `
    result[grp * 4 + 2] = tot.z;
    result[grp * 4 + 3] = rstd * (tot.w - shifted * tot.z);`
      : ""
  }
  }`;
  const p = perGroupProgram(
    `${key}${quads ? "_q4" : ""}`,
    backward ? ["x", "dy", "gamma"] : ["x"],
    [d.n * d.g, w],
    d.n * d.g,
    body,
  );
  if (quads) p.variableComponents = backward ? [4, 4, 4] : [4];
  const code = p.getUserCode();
  p.getUserCode = () => `${gnConsts(d)}\n${quads ? GROUP_INDEX4 : GROUP_INDEX}\n${code}`;
  return p;
}

/** Channel c and stats row of flat NHWC index `index`. */
const CHANNEL = `
    let c = index % GN_C;
    let row = (index / (GN_HW * GN_C)) * GN_G + c / GN_CG;`;

/** Channel quad c4 and stats row of quad `index` (C/G divisible by 4). */
const CHANNEL4 = `
    let c4 = index % GN_C4;
    let row = (index / (GN_HW * GN_C4)) * GN_G + c4 / GN_CG4;`;

/** y = x̂·γ + β, or silu of it (`silu`). */
function gnApplyProgram(d: GnDims, shape: number[], silu: boolean): GpuProgram {
  const out = silu ? "z / (1.0 + exp(-z))" : "z";
  const key = `gnapply${silu ? "silu" : ""}_${d.n}_${d.hw}_${d.c}_${d.g}`;
  if (gnQuads(d)) {
    return quadProgram(
      key,
      ["x", "stats", "gamma", "beta"],
      [4, 1, 4, 4],
      shape,
      `${CHANNEL4}
    let z = (x[index] - stats[row * 2]) * stats[row * 2 + 1] * gamma[c4] + beta[c4];
    result[index] = ${out};`,
      gnConsts(d),
    );
  }
  return flatProgram(
    key,
    ["x", "stats", "gamma", "beta"],
    shape,
    `  if (index < uniforms.size) {${CHANNEL}
    let z = (x[index] - stats[row * 2]) * stats[row * 2 + 1] * gamma[c] + beta[c];
    result[index] = ${out};
  }`,
    gnConsts(d),
  );
}

/**
 * dz = dy·σ(z)·(1 + z·(1 − σ(z))), the gradient at z = x̂·γ + β of y = silu(z), from dy at y and
 * the forward pass's [mean, 1/σ] statistics (z itself is neither written nor kept).
 */
function gnSiluDzProgram(d: GnDims, shape: number[]): GpuProgram {
  const dz = (c: string) =>
    `let z = (x[index] - stats[row * 2]) * stats[row * 2 + 1] * gamma[${c}] + beta[${c}];
    let s = 1.0 / (1.0 + exp(-z));
    result[index] = dy[index] * s * (1.0 + z * (1.0 - s));`;
  const key = `gnsilu_dz_${d.n}_${d.hw}_${d.c}_${d.g}`;
  if (gnQuads(d)) {
    return quadProgram(
      key,
      ["dy", "x", "stats", "gamma", "beta"],
      [4, 4, 1, 4, 4],
      shape,
      `${CHANNEL4}
    ${dz("c4")}`,
      gnConsts(d),
    );
  }
  return flatProgram(
    key,
    ["dy", "x", "stats", "gamma", "beta"],
    shape,
    `  if (index < uniforms.size) {${CHANNEL}
    ${dz("c")}
  }`,
    gnConsts(d),
  );
}

function gnDxProgram(d: GnDims, shape: number[]): GpuProgram {
  if (gnQuads(d)) {
    return quadProgram(
      `gndx_${d.n}_${d.hw}_${d.c}_${d.g}`,
      ["dy", "x", "stats", "gamma"],
      [4, 4, 4, 4],
      shape,
      `${CHANNEL4}
    let st = stats[row];
    let xh = (x[index] - st.x) * st.y;
    result[index] = st.y * (dy[index] * gamma[c4] - st.z - xh * st.w);`,
      gnConsts(d),
    );
  }
  return flatProgram(
    `gndx_${d.n}_${d.hw}_${d.c}_${d.g}`,
    ["dy", "x", "stats", "gamma"],
    shape,
    `  if (index < uniforms.size) {${CHANNEL}
    let rstd = stats[row * 4 + 1];
    let xh = (x[index] - stats[row * 4]) * rstd;
    result[index] = rstd * (dy[index] * gamma[c] - stats[row * 4 + 2] - xh * stats[row * 4 + 3]);
  }`,
    gnConsts(d),
  );
}

/** dγ (`withXhat`) or dβ: one workgroup per channel, summing over N·H·W. */
function gnParamGradProgram(d: GnDims, withXhat: boolean): GpuProgram {
  const term = withXhat ? `dy[i] * (x[i] - stats[row * 4]) * stats[row * 4 + 1]` : `dy[i]`;
  const p = perGroupProgram(
    `gn${withXhat ? "dgamma" : "dbeta"}_${d.n}_${d.hw}_${d.c}_${d.g}`,
    withXhat ? ["dy", "x", "stats"] : ["dy"],
    [d.c],
    d.c,
    `
  let c = i32(workgroupId.x);
  let t = i32(localIndex);
  var s = 0.0;
  for (var q = t; q < ${d.n * d.hw}; q = q + ${RED}) {
    let i = q * GN_C + c;
    let row = (q / GN_HW) * GN_G + c / GN_CG;
    _ = row;
    s = s + ${term};
  }
  let total = wgSum(s);
  if (t == 0) { result[c] = total; }`,
  );
  const code = p.getUserCode();
  p.getUserCode = () => `${gnConsts(d)}\n${code}`;
  return p;
}

/**
 * dγ and dβ with vec4 loads (C/G divisible by 4): partial sums of dy·x̂ and dy over chunks of
 * each image's pixels, one invocation per (chunk, channel quad), into [S, 2, C]; then
 * {@linkcode gnParamSumProgram} sums the S chunks of each half. (Each chunk lies in one image, so
 * its four channels' statistics are one vec4 load before the loop.)
 */
function gnParamPartialProgram(d: GnDims): { program: GpuProgram; S: number } {
  const c4 = d.c / 4;
  const k = Math.max(1, Math.min(d.hw, Math.ceil(4096 / (d.n * c4))));
  const per = Math.ceil(d.hw / k);
  const S = d.n * k;
  const program = quadProgram(
    `gnparam_${d.n}_${d.hw}_${d.c}_${d.g}_${k}`,
    ["dy", "x", "stats"],
    [4, 4, 4],
    [S, 2, d.c],
    `    let s = index / GN_C4;
    let c4 = index % GN_C4;
    let n = s / ${k};
    let p0 = (s % ${k}) * ${per};
    let p1 = min(GN_HW, p0 + ${per});
    let st = stats[n * GN_G + c4 / GN_CG4];
    var sg = vec4<f32>(0.0);
    var sb = vec4<f32>(0.0);
    for (var p = p0; p < p1; p = p + 1) {
      let i = (n * GN_HW + p) * GN_C4 + c4;
      let v = dy[i];
      sb = sb + v;
      sg = sg + v * (x[i] - st.x) * st.y;
    }
    result[s * 2 * GN_C4 + c4] = sg;
    result[s * 2 * GN_C4 + GN_C4 + c4] = sb;`,
    gnConsts(d),
    S * c4,
  );
  return { program, S };
}

/** Half `half` (0: dγ, 1: dβ) of {@linkcode gnParamPartialProgram}'s partials, summed over S. */
function gnParamSumProgram(d: GnDims, S: number, half: number): GpuProgram {
  return flatProgram(
    `gnparamsum_${S}_${d.c}_${half}`,
    ["P"],
    [d.c],
    `  if (index < uniforms.size) {
    var v = 0.0;
    for (var s = 0; s < ${S}; s = s + 1) { v = v + P[(s * 2 + ${half}) * ${d.c} + index]; }
    result[index] = v;
  }`,
  );
}

/**
 * Softmax over the last axis, one invocation per row of n (three passes over the row: max,
 * Σ exp(x − max), then the quotient; tfjs' `softmax` arithmetic), or its gradient at the output
 * y, dx = y·(dy − Σ dy·y). Replaces the 5 forward and 4–6 backward dispatches of the composed
 * form in every attention layer.
 */
function softmaxProgram(shape: number[], grad: boolean): GpuProgram {
  const n = shape.at(-1) ?? 1;
  const size = shape.reduce((a, b) => a * b, 1);
  const rows = n > 0 ? size / n : 0;
  const body = grad
    ? `
    var s = 0.0;
    for (var j = 0; j < ${n}; j = j + 1) { s = s + dy[o + j] * y[o + j]; }
    for (var j = 0; j < ${n}; j = j + 1) { result[o + j] = y[o + j] * (dy[o + j] - s); }`
    : `
    var m = x[o];
    for (var j = 1; j < ${n}; j = j + 1) { m = max(m, x[o + j]); }
    var s = 0.0;
    for (var j = 0; j < ${n}; j = j + 1) { let e = exp(x[o + j] - m); result[o + j] = e; s = s + e; }
    for (var j = 0; j < ${n}; j = j + 1) { result[o + j] = result[o + j] / s; }`;
  return flatProgram(
    `softmax${grad ? "grad" : ""}_${rows}_${n}`,
    grad ? ["dy", "y"] : ["x"],
    shape,
    `  _ = uniforms.NAN;
  if (index < ${rows}) {
    let o = index * ${n};${body}
  }`,
    "",
    rows,
  );
}

/** SiLU, x·σ(x), of `x[index]` (an f32 or a vec4: the arithmetic is the same). */
const SILU = `let v = x[index]; result[index] = v / (1.0 + exp(-v));`;
/** d/dx x·σ(x) = σ(x)·(1 + x·(1 − σ(x))), times `dy[index]`. */
const SILU_GRAD = `let v = x[index]; let s = 1.0 / (1.0 + exp(-v));
    result[index] = dy[index] * s * (1.0 + v * (1.0 - s));`;

/**
 * An element-wise program: `expr` (WGSL storing `result[index]` from the inputs at `index`), or,
 * when the size is a multiple of 4 and `expr4` is given, `expr4` on vec4s ({@linkcode quadProgram}).
 */
function unary(key: string, names: string[], shape: number[], expr: string, expr4?: string) {
  if (expr4 && shape.reduce((a, b) => a * b, 1) % 4 === 0) {
    return quadProgram(key, names, names.map(() => 4), shape, `    ${expr4}`);
  }
  return flatProgram(
    `${key}`,
    names,
    shape,
    `  if (index < uniforms.size) {\n    ${expr}\n  }`,
  );
}

/** The fused kernels for the webgpu backend (and their gradients, registered once). */
export function fusedWebGpuKernels(): Record<string, GpuKernelFunc> {
  registerFusedGradients();
  return {
    [FUSED.silu]: ({ inputs, backend }) => {
      const x = inputs.x!;
      f32Only(x);
      return backend.runWebGPUProgram(
        unary("silu", ["x"], x.shape, SILU, SILU),
        [x],
        "float32",
      );
    },
    [FUSED.siluGrad]: ({ inputs, backend }) => {
      const { x, dy } = inputs;
      f32Only(x, dy);
      // d/dx x·σ(x) = σ(x)·(1 + x·(1 − σ(x)))
      return backend.runWebGPUProgram(
        unary(
          "silugrad",
          ["dy", "x"],
          x!.shape,
          SILU_GRAD,
          SILU_GRAD,
        ),
        [dy!, x!],
        "float32",
      );
    },
    [FUSED.nanToNum]: ({ inputs, backend, attrs }) => {
      const x = inputs.x!;
      f32Only(x);
      const a = attrs as { nan: number; posinf: number; neginf: number };
      const lit = (v: number) =>
        Number.isFinite(Math.fround(v))
          ? f32Lit(v)
          : (v > 0 ? "bitcast<f32>(0x7f800000u)" : "bitcast<f32>(0xff800000u)");
      // NaN and ±∞ by their bits (a compiler may assume finite floats in comparisons).
      return backend.runWebGPUProgram(
        unary(
          `nantonum_${a.nan}_${a.posinf}_${a.neginf}`,
          ["x"],
          x.shape,
          `let v = x[index]; let b = bitcast<u32>(v) & 0x7fffffffu;
    var r = v;
    if (b > 0x7f800000u) { r = ${lit(a.nan)}; }
    else if (b == 0x7f800000u) { r = select(${lit(a.neginf)}, ${lit(a.posinf)}, v > 0.0); }
    result[index] = r;`,
          `let v = x[index]; let b = bitcast<vec4<u32>>(v) & vec4<u32>(0x7fffffffu);
    let inf = select(vec4<f32>(${lit(a.neginf)}), vec4<f32>(${lit(a.posinf)}), v > vec4<f32>(0.0));
    let r = select(v, inf, b == vec4<u32>(0x7f800000u));
    result[index] = select(r, vec4<f32>(${lit(a.nan)}), b > vec4<u32>(0x7f800000u));`,
        ),
        [x],
        "float32",
      );
    },
    [FUSED.softmax]: ({ inputs, backend }) => {
      const x = inputs.x!;
      f32Only(x);
      return backend.runWebGPUProgram(softmaxProgram(x.shape, false), [x], "float32");
    },
    [FUSED.softmaxGrad]: ({ inputs, backend }) => {
      const { dy, y } = inputs;
      f32Only(dy, y);
      return backend.runWebGPUProgram(softmaxProgram(y!.shape, true), [dy!, y!], "float32");
    },
    [FUSED.groupNorm]: (args) => groupNormKernel(args, false)[0],
    [FUSED.groupNormSilu]: (args) => groupNormKernel(args, true),
    [FUSED.groupNormGrad]: (args) => {
      const { dy, x, gamma } = args.inputs;
      return groupNormGrad(args.backend, dy!, x!, gamma!, args.attrs!);
    },
    [FUSED.groupNormSiluGrad]: ({ inputs, backend, attrs }) => {
      // dz from dy and the forward statistics, then group norm's gradient at dz.
      const { dy, x, gamma, beta, stats } = inputs;
      f32Only(dy, x, gamma, beta, stats);
      const d = gnDims(x!.shape, attrs!.groups as number);
      const dz = backend.runWebGPUProgram(
        gnSiluDzProgram(d, x!.shape),
        [dy!, x!, stats!, gamma!, beta!],
        "float32",
      );
      const grads = groupNormGrad(backend, dz, x!, gamma!, attrs!);
      backend.disposeData(dz.dataId);
      return grads;
    },
  };
}

function f32Only(...ts: (TensorInfo | undefined)[]) {
  for (const t of ts) {
    if (t && t.dtype !== "float32") throw new TypeError("fused kernels: float32 inputs expected");
  }
}

/**
 * Group norm, or silu of it (`silu`), in 2 dispatches (statistics, then normalise): [y, stats],
 * the [N·G, 2] statistics [mean, 1/σ] (kept by the SiLU variant's gradient; freed here otherwise).
 */
function groupNormKernel({ inputs, backend, attrs }: GpuKernelArgs, silu: boolean): TensorInfo[] {
  const { x, gamma, beta } = inputs;
  f32Only(x, gamma, beta);
  const d = gnDims(x!.shape, attrs!.groups as number);
  const stats = backend.runWebGPUProgram(
    gnStatsProgram(d, attrs!.eps as number, false),
    [x!],
    "float32",
  );
  const y = backend.runWebGPUProgram(
    gnApplyProgram(d, x!.shape, silu),
    [x!, stats, gamma!, beta!],
    "float32",
  );
  if (silu) return [y, stats];
  backend.disposeData(stats.dataId);
  return [y];
}

/** [dx, dγ, dβ] of group norm: statistics, dx, then dγ and dβ. */
function groupNormGrad(
  backend: GpuKernelArgs["backend"],
  dy: TensorInfo,
  x: TensorInfo,
  gamma: TensorInfo,
  attrs: Record<string, unknown>,
): TensorInfo[] {
  f32Only(dy, x, gamma);
  const d = gnDims(x.shape, attrs.groups as number);
  const stats = backend.runWebGPUProgram(
    gnStatsProgram(d, attrs.eps as number, true),
    [x, dy, gamma],
    "float32",
  );
  const dx = backend.runWebGPUProgram(gnDxProgram(d, x.shape), [dy, x, stats, gamma], "float32");
  if (gnQuads(d)) {
    const { program, S } = gnParamPartialProgram(d);
    const partial = backend.runWebGPUProgram(program, [dy, x, stats], "float32");
    const dgamma = backend.runWebGPUProgram(gnParamSumProgram(d, S, 0), [partial], "float32");
    const dbeta = backend.runWebGPUProgram(gnParamSumProgram(d, S, 1), [partial], "float32");
    backend.disposeData(partial.dataId);
    backend.disposeData(stats.dataId);
    return [dx, dgamma, dbeta];
  }
  const dgamma = backend.runWebGPUProgram(gnParamGradProgram(d, true), [dy, x, stats], "float32");
  const dbeta = backend.runWebGPUProgram(gnParamGradProgram(d, false), [dy], "float32");
  backend.disposeData(stats.dataId);
  return [dx, dgamma, dbeta];
}
