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
  type GpuKernelFunc,
  type GpuProgram,
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
  `const GN_CG = ${d.c / d.g}; const GN_L = ${d.hw * (d.c / d.g)};`;

/** Element e of group (n, g) of x: pixel e / (C/G), channel g·C/G + e % (C/G). */
const GROUP_INDEX = `
fn gIndex(n : i32, g : i32, e : i32) -> i32 {
  return (n * GN_HW + e / GN_CG) * GN_C + g * GN_CG + e % GN_CG;
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
  const body = `
  let grp = i32(workgroupId.x);
  let n = grp / GN_G;
  let g = grp % GN_G;
  let t = i32(localIndex);
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
  }
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
    key,
    backward ? ["x", "dy", "gamma"] : ["x"],
    [d.n * d.g, w],
    d.n * d.g,
    body,
  );
  const code = p.getUserCode();
  p.getUserCode = () => `${gnConsts(d)}\n${GROUP_INDEX}\n${code}`;
  return p;
}

/** Channel c and stats row of flat NHWC index `index`. */
const CHANNEL = `
    let c = index % GN_C;
    let row = (index / (GN_HW * GN_C)) * GN_G + c / GN_CG;`;

function gnApplyProgram(d: GnDims, shape: number[]): GpuProgram {
  return flatProgram(
    `gnapply_${d.n}_${d.hw}_${d.c}_${d.g}`,
    ["x", "stats", "gamma", "beta"],
    shape,
    `  if (index < uniforms.size) {${CHANNEL}
    result[index] = (x[index] - stats[row * 2]) * stats[row * 2 + 1] * gamma[c] + beta[c];
  }`,
    gnConsts(d),
  );
}

function gnDxProgram(d: GnDims, shape: number[]): GpuProgram {
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

const unary = (key: string, names: string[], shape: number[], expr: string) =>
  flatProgram(
    `${key}`,
    names,
    shape,
    `  if (index < uniforms.size) {\n    ${expr}\n  }`,
  );

/** The fused kernels for the webgpu backend (and their gradients, registered once). */
export function fusedWebGpuKernels(): Record<string, GpuKernelFunc> {
  registerFusedGradients();
  const f32Only = (...ts: (TensorInfo | undefined)[]) => {
    for (const t of ts) {
      if (t && t.dtype !== "float32") throw new TypeError("fused kernels: float32 inputs expected");
    }
  };
  return {
    [FUSED.silu]: ({ inputs, backend }) => {
      const x = inputs.x!;
      f32Only(x);
      return backend.runWebGPUProgram(
        unary("silu", ["x"], x.shape, `let v = x[index]; result[index] = v / (1.0 + exp(-v));`),
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
          `let v = x[index]; let s = 1.0 / (1.0 + exp(-v));
    result[index] = dy[index] * s * (1.0 + v * (1.0 - s));`,
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
    [FUSED.groupNorm]: ({ inputs, backend, attrs }) => {
      const { x, gamma, beta } = inputs;
      f32Only(x, gamma, beta);
      const d = gnDims(x!.shape, attrs!.groups as number);
      const stats = backend.runWebGPUProgram(
        gnStatsProgram(d, attrs!.eps as number, false),
        [x!],
        "float32",
      );
      const y = backend.runWebGPUProgram(
        gnApplyProgram(d, x!.shape),
        [x!, stats, gamma!, beta!],
        "float32",
      );
      backend.disposeData(stats.dataId);
      return y;
    },
    [FUSED.groupNormGrad]: ({ inputs, backend, attrs }) => {
      const { dy, x, gamma } = inputs;
      f32Only(dy, x, gamma);
      const d = gnDims(x!.shape, attrs!.groups as number);
      const stats = backend.runWebGPUProgram(
        gnStatsProgram(d, attrs!.eps as number, true),
        [x!, dy!, gamma!],
        "float32",
      );
      const dx = backend.runWebGPUProgram(
        gnDxProgram(d, x!.shape),
        [dy!, x!, stats, gamma!],
        "float32",
      );
      const dgamma = backend.runWebGPUProgram(
        gnParamGradProgram(d, true),
        [dy!, x!, stats],
        "float32",
      );
      const dbeta = backend.runWebGPUProgram(gnParamGradProgram(d, false), [dy!], "float32");
      backend.disposeData(stats.dataId);
      return [dx, dgamma, dbeta];
    },
  };
}
