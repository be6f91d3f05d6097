/**
 * The `native` backend's fused kernels (`lib/runtime/native/fused.ts`: softmax, SiLU, group
 * norm, and their gradients) against the composed tfjs ops on `cpu` (gradients through
 * `tf.grad`), on random shapes (rows of one, batches of one), large and small magnitudes, ±∞ and
 * NaN; the TypeScript softmax path (`setCKernelsEnabled(false)`); float64 references where tfjs'
 * own float32 arithmetic is the less accurate side; flat `tf.memory().numTensors`; and, in child
 * processes, the multi-threaded splits (3 threads) and a backend without the C kernels
 * (`SIDA_NATIVE_C=0`, where the fused functions compose tfjs ops).
 *
 * Tolerances, per element, on top of 1e-37 (subnormal results): |got − ref| ≤ rel·|ref| +
 * abs·scale, with scale = max|ref| over the output tensor unless said otherwise:
 *
 * - softmax and SiLU values: rel 1e-6, abs 0 (measured: 3e-7 against tfjs, 2e-7 against float64);
 * - SiLU gradients: rel 1e-6, abs 1e-6 (dy·silu'(x) cancels near x = −1.28);
 * - softmax gradients: rel 1e-6, abs 1e-6 with scale y_i·(|dy_i| + Σ_j |dy_j·y_j|), the size of
 *   the terms of y_i·(dy_i − Σ_j dy_j·y_j) (it cancels, and the float32 y is only exact to an ulp);
 * - group norm values and gradients: rel 1e-6, abs 1e-6 (measured: 1e-7 against tfjs); against
 *   float64 too, with dx's scale the size of its terms, rstd·(|dy·γ| + |mean(dy·γ)| +
 *   |x̂·mean(dy·γ·x̂)|) (for groups of one value dx = 0 in float64, and the float32 terms cancel).
 *   tfjs' composed group norm is the less accurate side for those and for |mean| ≫ std, so these
 *   cases are checked against float64 only.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import { setupNativeTests } from "./helpers.ts";
import { setCKernelsEnabled } from "../lib/runtime/native/ckernels.ts";
import { FUSED, groupNorm, nanToNum, silu, softmax } from "../lib/runtime/native/fused.ts";

const { ignore, withC: cLoaded } = setupNativeTests("native fused kernel");
const withC = !ignore && cLoaded;

/**
 * Tolerance: |got − ref| ≤ rel·|ref| + abs·scale + TINY, where scale is `scale[i]` when given,
 * else max|ref| over the tensor.
 */
interface Tol {
  rel: number;
  abs: number;
  scale?: ArrayLike<number>;
}

/** A tolerance, or one computed from the inputs and the reference outputs. */
type Check = Tol | ((inputs: Input[], ref: Float32Array[]) => Tol);

/** Slack for subnormal results (their last bits may differ). */
const TINY = 1e-37;

const VALUES: Tol = { rel: 1e-6, abs: 0 };
const GRADS: Tol = { rel: 1e-6, abs: 1e-6 };
const NORM: Tol = { rel: 1e-6, abs: 1e-6 };

/** A deterministic pseudo-random generator (mulberry32), values in [0, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Input {
  shape: number[];
  data: Float32Array;
}

/** Uniform values in [offset − scale, offset + scale). */
function uniform(shape: number[], seed: number, scale = 1, offset = 0): Input {
  const r = rng(seed);
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = offset + scale * (2 * r() - 1);
  return { shape, data };
}

type Build = (xs: tf.Tensor[]) => tf.Tensor[];

/** Runs `build` on `backend`; checks that it leaves no tensor behind. */
async function runOn(backend: string, inputs: Input[], build: Build): Promise<Float32Array[]> {
  await tf.setBackend(backend);
  const xs = inputs.map((i) => tf.tensor(i.data, i.shape, "float32"));
  const before = tf.memory().numTensors;
  const outs = tf.tidy(() => build(xs));
  const values = outs.map((t) => t.dataSync() as Float32Array);
  tf.dispose(outs);
  assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  tf.dispose(xs);
  return values;
}

/** Asserts got ≈ ref within `tol`; NaN and ±∞ must match exactly. */
function assertClose(what: string, got: Float32Array, ref: Float32Array, tol: Tol): void {
  assert.equal(got.length, ref.length, `${what}: length`);
  let scale = 0;
  for (const v of ref) if (Number.isFinite(v)) scale = Math.max(scale, Math.abs(v));
  let worst = 0, at = -1;
  for (let i = 0; i < ref.length; i++) {
    const a = ref[i], b = got[i];
    if (!Number.isFinite(a) || !Number.isFinite(b)) {
      assert.ok(
        Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b)),
        `${what}: element ${i} is ${b}, expected ${a}`,
      );
      continue;
    }
    const d = Math.abs(a - b);
    const r = d / (tol.rel * Math.abs(a) + tol.abs * (tol.scale?.[i] ?? scale) + TINY);
    if (r > worst) [worst, at] = [r, i];
  }
  assert.ok(
    worst <= 1,
    `${what}: element ${at} is ${got[at]}, expected ${ref[at]} ` +
      `(tolerance rel ${tol.rel} + abs ${tol.abs}·${tol.scale?.[at] ?? scale})`,
  );
}

/** Runs `build` on cpu (the composed ops) and on native, and compares every output. */
async function compare(
  what: string,
  inputs: Input[],
  build: Build,
  checks: Check[],
): Promise<Float32Array[]> {
  const ref = await runOn("cpu", inputs, build);
  const got = await runOn("native", inputs, build);
  assert.equal(got.length, ref.length, `${what}: output count`);
  for (let k = 0; k < ref.length; k++) {
    const c = checks[Math.min(k, checks.length - 1)];
    assertClose(
      `${what}: output ${k}`,
      got[k],
      ref[k],
      typeof c === "function" ? c(inputs, ref) : c,
    );
  }
  return got;
}

/**
 * The softmax gradient dx_i = y_i·(dy_i − Σ_j dy_j·y_j) (dy = the second input, y = the first
 * output) to 1e-6 of its terms' size, y_i·(|dy_i| + Σ_j |dy_j|·y_j): its difference cancels when
 * dy_i ≈ Σ_j dy_j·y_j, and the float32 y is only exact to an ulp.
 */
const SOFTMAX_GRAD: Check = (inputs, ref) => {
  const y = ref[0], dy = inputs[1].data, shape = inputs[0].shape;
  const n = shape[shape.length - 1] ?? 1, scale = new Float64Array(y.length);
  for (let i = 0; i < y.length; i += n) {
    let s = 0;
    for (let j = i; j < i + n; j++) s += Math.abs(dy[j] * y[j]);
    for (let j = i; j < i + n; j++) scale[j] = y[j] * (Math.abs(dy[j]) + s);
  }
  return { rel: 1e-6, abs: 1e-6, scale };
};

/** `[f(x), d Σ f(x)·w / dx]`: the value and a gradient with a random upstream `w`. */
function valueAndGrad(f: (x: tf.Tensor) => tf.Tensor): Build {
  return ([x, w]) => [f(x), tf.grad((t: tf.Tensor) => tf.sum(tf.mul(f(t), w)))(x)];
}

function softmaxCase(shape: number[], seed: number, scale: number): Input[] {
  return [uniform(shape, seed, scale), uniform(shape, seed + 1)];
}

const SOFTMAX_SHAPES = [[1], [1, 1], [5, 1], [3, 5], [2, 3, 17], [7, 64], [8, 32, 256]];

/** Random shapes of rank 1 to 4, last axes from 1 to 300. */
function randomShapes(count: number, seed: number): number[][] {
  const r = rng(seed);
  const out: number[][] = [];
  for (let i = 0; i < count; i++) {
    const rank = 1 + Math.floor(r() * 4);
    const shape = Array.from({ length: rank - 1 }, () => 1 + Math.floor(r() * 6));
    shape.push(1 + Math.floor(r() * 300));
    out.push(shape);
  }
  return out;
}

/** Rows with −∞ entries, a row of −∞ only, NaN, +∞, and ±80 (exp(−160) underflows). */
function softmaxSpecials(): Input[] {
  const n = 9;
  const rows = [
    [0.5, -1, 2, 0, 0.25, 3, -2, 1, 0],
    [-Infinity, 1, -Infinity, 2, 0, -Infinity, 3, 0.5, -1],
    Array(n).fill(-Infinity),
    [1, 2, NaN, 0, -1, 3, 0.5, 0, 1],
    [1, Infinity, 0, 0, 1, 2, 3, 4, 5],
    [-Infinity, -Infinity, -Infinity, -Infinity, 7, -Infinity, -Infinity, -Infinity, -Infinity],
    [80, -80, 79.5, -79.5, 0, 80, -80, 40, -40],
    [1e-30, -1e-30, 0, 1e-38, -1e-38, 0, 1e-45, 0, 1e-20],
    [-100, -102, -104, -87, -88, -90, -95, -110, -100],
  ];
  const data = new Float32Array(rows.flat());
  return [{ shape: [rows.length, n], data }, uniform([rows.length, n], 5)];
}

/**
 * float64 softmax over rows of `n`, of the float32 differences x − max (as tfjs and the kernels
 * compute them: the rounding of x − max, up to 2⁻²⁴·|x − max| relative, is the algorithm's).
 */
function softmax64(x: Float32Array, n: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i += n) {
    let m = -Infinity;
    for (let j = i; j < i + n; j++) m = Math.max(m, x[j]);
    let s = 0;
    for (let j = i; j < i + n; j++) s += y[j] = Math.exp(Math.fround(x[j] - m));
    for (let j = i; j < i + n; j++) y[j] /= s;
  }
  return y;
}

function siluCase(shape: number[], seed: number, scale: number): Input[] {
  return [uniform(shape, seed, scale), uniform(shape, seed + 1)];
}

/** SiLU at the edges: ±0, tiny, around exp's overflow and underflow, ±∞, NaN. */
function siluSpecials(): Input[] {
  const v = [
    0,
    -0,
    1e-30,
    -1e-30,
    1e-45,
    -1.2784645,
    1,
    -1,
    15,
    -15,
    16.7,
    -16.7,
    87,
    -87,
    88.7,
    -88.7,
    89,
    -89,
    100,
    -100,
    104,
    -104,
    110,
    -110,
    1e4,
    -1e4,
    3e38,
    -3e38,
    Infinity,
    -Infinity,
    NaN,
    0.5,
  ];
  return [{ shape: [v.length], data: new Float32Array(v) }, uniform([v.length], 9)];
}

function groupNormBuild(groups: number, eps = 1e-5): Build {
  return ([x, gamma, beta, w]) => {
    const f = (a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) =>
      groupNorm(a as tf.Tensor4D, g, b, groups, eps);
    const grads = tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) =>
      tf.sum(tf.mul(f(a, g, b), w))
    )([x, gamma, beta]);
    return [f(x, gamma, beta), ...grads];
  };
}

function groupNormCase(shape: number[], seed: number, scale = 1, offset = 0): Input[] {
  const c = shape[3];
  return [
    uniform(shape, seed, scale, offset),
    uniform([c], seed + 1, 1, 1),
    uniform([c], seed + 2),
    uniform(shape, seed + 3),
  ];
}

const GROUP_NORM_CASES: [number[], number][] = [
  [[2, 4, 4, 8], 2],
  [[1, 3, 5, 6], 3],
  [[3, 8, 8, 32], 8],
  [[2, 1, 1, 4], 4],
  [[1, 1, 1, 32], 32],
  [[4, 16, 16, 64], 16],
  [[2, 8, 8, 128], 32],
  [[32, 16, 16, 64], 32],
  [[32, 32, 32, 32], 32],
];

/**
 * float64 group norm (biased variance) of NHWC `x`, and its gradients w.r.t. x, γ and β for the
 * upstream gradient `dy`: dx = rstd·(d − mean(d) − x̂·mean(d·x̂)) with d = dy·γ, dγ = Σ dy·x̂,
 * dβ = Σ dy; last, the size of dx's terms, rstd·(|d| + |mean(d)| + |x̂·mean(d·x̂)|).
 */
function groupNorm64(
  [x, gamma, beta, dy]: Input[],
  groups: number,
  eps: number,
): Float64Array[] {
  const [n, h, w, c] = x.shape, s = h * w, cg = c / groups, m = s * cg;
  const y = new Float64Array(x.data.length), dx = new Float64Array(x.data.length);
  const terms = new Float64Array(x.data.length);
  const dgamma = new Float64Array(c), dbeta = new Float64Array(c);
  const at = (i: number, p: number, g: number, j: number) => (i * s + p) * c + g * cg + j;
  for (let i = 0; i < n; i++) {
    for (let g = 0; g < groups; g++) {
      let sum = 0;
      for (let p = 0; p < s; p++) for (let j = 0; j < cg; j++) sum += x.data[at(i, p, g, j)];
      const mean = sum / m;
      let v = 0;
      for (let p = 0; p < s; p++) {
        for (let j = 0; j < cg; j++) v += (x.data[at(i, p, g, j)] - mean) ** 2;
      }
      const rstd = 1 / Math.sqrt(v / m + eps);
      let md = 0, mdx = 0;
      for (let p = 0; p < s; p++) {
        for (let j = 0; j < cg; j++) {
          const k = at(i, p, g, j), ch = g * cg + j, xh = (x.data[k] - mean) * rstd;
          y[k] = xh * gamma.data[ch] + beta.data[ch];
          dgamma[ch] += dy.data[k] * xh;
          dbeta[ch] += dy.data[k];
          md += dy.data[k] * gamma.data[ch];
          mdx += dy.data[k] * gamma.data[ch] * xh;
        }
      }
      md /= m;
      mdx /= m;
      for (let p = 0; p < s; p++) {
        for (let j = 0; j < cg; j++) {
          const k = at(i, p, g, j), xh = (x.data[k] - mean) * rstd;
          const d = dy.data[k] * gamma.data[g * cg + j];
          dx[k] = rstd * (d - md - xh * mdx);
          terms[k] = rstd * (Math.abs(d) + Math.abs(md) + Math.abs(xh * mdx));
        }
      }
    }
  }
  return [y, dx, dgamma, dbeta, terms];
}

/**
 * Group norm and its gradients on native against {@linkcode groupNorm64}; dx's absolute
 * tolerance scales with the size of its terms (it cancels: exactly 0 for groups of one value).
 */
async function compare64(
  what: string,
  inputs: Input[],
  groups: number,
  eps: number,
  tol: Tol,
): Promise<void> {
  const got = await runOn("native", inputs, groupNormBuild(groups, eps));
  const ref = groupNorm64(inputs, groups, eps);
  for (let k = 0; k < got.length; k++) {
    const t = k === 1 ? { ...tol, scale: ref[4] } : tol;
    assertClose(`${what} vs float64: output ${k}`, got[k], new Float32Array(ref[k]), t);
  }
}

/** A few cases of every fused op (for the child processes: threads and no C kernels). */
export async function fusedChecks(): Promise<{ threads: string; fused: boolean }> {
  await compare("softmax [2,128,256]", softmaxCase([2, 128, 256], 1, 8), valueAndGrad(softmax), [
    VALUES,
    SOFTMAX_GRAD,
  ]);
  await compare("softmax [3,1]", softmaxCase([3, 1], 2, 8), valueAndGrad(softmax), [
    VALUES,
    SOFTMAX_GRAD,
  ]);
  await compare("silu [3,50,500]", siluCase([3, 50, 500], 3, 8), valueAndGrad(silu), [
    VALUES,
    GRADS,
  ]);
  for (
    const [shape, groups] of [
      [[1, 32, 32, 64], 32],
      [[2, 16, 20, 128], 32],
      [[1, 33, 1, 2048], 32],
      [[5, 16, 16, 32], 8],
    ] as [number[], number][]
  ) {
    await compare(
      `groupNorm ${shape} G${groups}`,
      groupNormCase(shape, 4),
      groupNormBuild(groups),
      [
        NORM,
      ],
    );
  }
  return {
    threads: Deno.env.get("OMP_NUM_THREADS") ?? "",
    fused: tf.getKernel(FUSED.silu, "native") !== undefined,
  };
}

Deno.test({
  name: "native fused: softmax equals tf.softmax on cpu (values and gradients)",
  ignore,
  async fn() {
    let seed = 1;
    for (const shape of [...SOFTMAX_SHAPES, ...randomShapes(6, 42)]) {
      for (const scale of [1, 10, 80, 1e-6]) {
        await compare(
          `softmax [${shape}] ×${scale}`,
          softmaxCase(shape, seed++, scale),
          valueAndGrad(softmax),
          [VALUES, SOFTMAX_GRAD],
        );
      }
    }
    await compare("softmax ±∞, NaN, ±80", softmaxSpecials(), valueAndGrad(softmax), [
      VALUES,
      SOFTMAX_GRAD,
    ]);
    await compare(
      "softmax [32,256,256] (attention)",
      softmaxCase([32, 256, 256], 7, 6),
      valueAndGrad(softmax),
      [VALUES, SOFTMAX_GRAD],
    );
  },
});

Deno.test({
  name: "native fused: softmax within 1e-6 of float64, on C and on the TypeScript path",
  ignore,
  async fn() {
    const cases = [softmaxCase([64, 256], 11, 30)[0], softmaxSpecials()[0]];
    for (const c of [true, false]) {
      const before = setCKernelsEnabled(c);
      try {
        for (const x of cases) {
          const [y] = await runOn("native", [x], ([t]) => [softmax(t)]);
          const ref = softmax64(x.data, x.shape[x.shape.length - 1]);
          assertClose(`softmax vs float64 (${c ? "C" : "TypeScript"})`, y, new Float32Array(ref), {
            rel: 1e-6,
            abs: 0,
          });
        }
      } finally {
        setCKernelsEnabled(before);
      }
    }
  },
});

Deno.test({
  name: "native fused: softmax with the C kernels disabled gives the same values",
  ignore: !withC,
  async fn() {
    const cases: [string, Input[]][] = [
      ["[4,33,256]", softmaxCase([4, 33, 256], 21, 10)],
      ["[6,1]", softmaxCase([6, 1], 22, 10)],
      ["specials", softmaxSpecials()],
    ];
    for (const [what, inputs] of cases) {
      const c = await runOn("native", inputs, valueAndGrad(softmax));
      const old = setCKernelsEnabled(false);
      let ts: Float32Array[];
      try {
        ts = await compare(`softmax ${what} (TypeScript)`, inputs, valueAndGrad(softmax), [
          VALUES,
          SOFTMAX_GRAD,
        ]);
      } finally {
        setCKernelsEnabled(old);
      }
      assertClose(`softmax ${what}: TypeScript vs C`, ts[0], c[0], VALUES);
      const grad = SOFTMAX_GRAD as (inputs: Input[], ref: Float32Array[]) => Tol;
      assertClose(`softmax ${what} gradient: TypeScript vs C`, ts[1], c[1], grad(inputs, c));
    }
  },
});

Deno.test({
  name: "native fused: SiLU equals x·sigmoid(x) on cpu (values and gradients)",
  ignore,
  async fn() {
    let seed = 100;
    for (const shape of [[1], [2, 5, 7, 3], [4, 16, 16, 64], [32, 32, 32, 32]]) {
      for (const scale of [6, 100, 1e-3]) {
        await compare(
          `silu [${shape}] ×${scale}`,
          siluCase(shape, seed++, scale),
          valueAndGrad(silu),
          [VALUES, GRADS],
        );
      }
    }
    await compare("silu at the edges", siluSpecials(), valueAndGrad(silu), [VALUES, GRADS]);
  },
});

Deno.test({
  name: "native fused: group norm equals the composed ops on cpu (values and gradients)",
  ignore,
  async fn() {
    let seed = 200;
    for (const [shape, groups] of GROUP_NORM_CASES) {
      // Groups of one value: (x − μ)·rstd is 0, but the composed form's x·(rstd·γ) − μ·(rstd·γ)
      // cancels (rstd = 1/√eps), so only the float64 test below checks them.
      if (shape[1] * shape[2] * shape[3] === groups) continue;
      await compare(
        `groupNorm [${shape}] G${groups}`,
        groupNormCase(shape, seed++, 2, 0.5),
        groupNormBuild(groups),
        [NORM],
      );
    }
    await compare("groupNorm ×1e4", groupNormCase([2, 4, 4, 16], seed++, 1e4), groupNormBuild(4), [
      NORM,
    ]);
    await compare(
      "groupNorm ×1e-3, eps 1e-8",
      groupNormCase([2, 4, 4, 16], seed++, 1e-3),
      groupNormBuild(4, 1e-8),
      [NORM],
    );
  },
});

Deno.test({
  name:
    "native fused: group norm and its gradients against float64 (|mean| ≫ std, constant groups)",
  ignore,
  async fn() {
    let seed = 300;
    for (const [shape, groups] of GROUP_NORM_CASES) {
      await compare64(
        `groupNorm [${shape}] G${groups}`,
        groupNormCase(shape, seed++, 2, 0.5),
        groups,
        1e-5,
        NORM,
      );
    }
    // |mean| = 1000·std: one-pass sums about the group's first value, and x − mean in float.
    await compare64(
      "groupNorm mean 1000",
      groupNormCase([2, 8, 8, 32], seed++, 1, 1000),
      8,
      1e-5,
      NORM,
    );
    await compare64(
      "groupNorm mean −3e4",
      groupNormCase([1, 16, 16, 64], seed++, 3, -3e4),
      32,
      1e-5,
      NORM,
    );
    // Groups of constant values (variance 0: x̂ = 0).
    const constant = groupNormCase([2, 3, 3, 8], seed++);
    constant[0].data.fill(0.75, 0, 72);
    await compare64("groupNorm constant groups", constant, 2, 1e-5, NORM);
  },
});

Deno.test({
  name: "native fused: NaN propagates in softmax rows, SiLU elements and group-norm groups",
  ignore,
  async fn() {
    const x = uniform([2, 2, 2, 8], 400);
    x.data[3] = NaN; // sample 0, group 0 (channels 0..3)
    const ins = [x, uniform([8], 401, 1, 1), uniform([8], 402), uniform([2, 2, 2, 8], 403)];
    await compare("groupNorm NaN", ins, groupNormBuild(2), [NORM]);
    const [y] = await runOn("native", ins, ([a, g, b]) => [
      groupNorm(a as tf.Tensor4D, g, b, 2, 1e-5),
    ]);
    for (let i = 0; i < y.length; i++) {
      const inGroup = i < 32 && i % 8 < 4;
      assert.equal(Number.isNaN(y[i]), inGroup, `groupNorm NaN: element ${i}`);
    }
    const [s] = await runOn("native", softmaxSpecials(), ([a]) => [softmax(a)]);
    // Rows 2 (−∞ only), 3 (a NaN) and 4 (a +∞) are NaN; the others are not.
    assert.ok(s.slice(18, 45).every(Number.isNaN), "softmax rows with NaN, +∞ or only −∞");
    assert.ok(![...s.slice(0, 18), ...s.slice(45)].some(Number.isNaN), "softmax: other rows");
    assert.deepEqual([...s.slice(45, 54)], [0, 0, 0, 0, 1, 0, 0, 0, 0], "one finite entry");
  },
});

Deno.test({
  name: "native fused: forward and gradient loops leave tf.memory().numTensors flat",
  ignore,
  async fn() {
    await tf.setBackend("native");
    const x4 = tf.randomNormal([2, 8, 8, 16]) as tf.Tensor4D;
    const x3 = tf.randomNormal([4, 16, 16]);
    const gamma = tf.ones([16]), beta = tf.zeros([16]);
    const step = () => {
      const g = tf.grads((a: tf.Tensor, b: tf.Tensor, gm: tf.Tensor, bt: tf.Tensor) =>
        tf.add(
          tf.sum(tf.square(softmax(a))),
          tf.sum(silu(groupNorm(b as tf.Tensor4D, gm, bt, 4, 1e-5))),
        )
      )([x3, x4, gamma, beta]);
      const y = tf.tidy(() => tf.add(tf.sum(softmax(x3)), tf.sum(silu(x4))));
      tf.dispose([...g, y]);
    };
    for (const c of withC ? [true, false] : [false]) {
      const old = setCKernelsEnabled(c);
      try {
        step();
        const before = tf.memory().numTensors;
        for (let i = 0; i < 5; i++) step();
        assert.equal(tf.memory().numTensors, before, `C kernels ${c ? "on" : "off"}`);
      } finally {
        setCKernelsEnabled(old);
      }
    }
    tf.dispose([x4, x3, gamma, beta]);
  },
});

async function child(env: Record<string, string>): Promise<{ threads: string; fused: boolean }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { fusedChecks } from "${import.meta.url}";
       console.log(JSON.stringify(await fusedChecks()));`,
    ],
    env: { OPENBLAS_NUM_THREADS: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  assert.ok(out.success, `child ${JSON.stringify(env)} failed: ${text.decode(out.stderr)}`);
  return JSON.parse(text.decode(out.stdout).trim().split("\n").pop()!);
}

Deno.test({
  name: "native fused: three threads (row blocks of group norm, chunks, rows) give the same values",
  ignore: !withC,
  async fn() {
    const r = await child({ OMP_NUM_THREADS: "3", SIDA_NUM_THREADS: "3" });
    assert.deepEqual(r, { threads: "3", fused: true });
  },
});

Deno.test({
  name:
    "native fused: without the C kernels (SIDA_NATIVE_C=0) the fused functions compose tfjs ops",
  ignore,
  async fn() {
    const r = await child({ SIDA_NATIVE_C: "0", OMP_NUM_THREADS: "1" });
    assert.deepEqual(r, { threads: "1", fused: false });
  },
});

Deno.test({
  name: "native: fused nan_to_num equals the composed ops (NaN, ±∞, large finite values, −0)",
  ignore: !withC,
  async fn() {
    const v = [NaN, Infinity, -Infinity, 2e5, -3e38, -0, 0.5, 1e-40, NaN];
    const run = async (backend: string) => {
      await tf.setBackend(backend);
      const before = tf.memory().numTensors;
      const x = tf.tensor2d(v, [3, 3]);
      const y = nanToNum(x, 0, 1e5, -1e5);
      const out = [...await y.data()];
      tf.dispose([x, y]);
      assert.equal(tf.memory().numTensors, before);
      return out;
    };
    assert.ok(tf.getKernel(FUSED.nanToNum, "native") !== undefined);
    const want = await run("cpu");
    const got = await run("native");
    assert.deepEqual(got, want);
    assert.deepEqual(want.map((a) => Object.is(a, -0) ? "-0" : a), [
      0,
      1e5,
      -1e5,
      2e5,
      Math.fround(-3e38),
      "-0",
      0.5,
      Math.fround(1e-40),
      0,
    ]);
  },
});
