/**
 * Tests of the EDM schedule, the EDM sampler and the exact Gaussian denoiser.
 *
 * The data set is Gaussian with independent pixels, so the probability-flow ODE is linear and
 * every quantity of the discretized sampler (one sample's trajectory, or the output mean and
 * variance) can be recomputed per pixel in float64 JS numbers.
 */
import { tf } from "../lib/deps.ts";
import { initBackend } from "../lib/runtime/backend.ts";
import { edmSigmaSteps } from "../lib/diffusion/schedule.ts";
import { edmSampler, type EdmSamplerOptions, toUint8Images } from "../lib/diffusion/sampler.ts";
import { GaussianDenoiser } from "../lib/diffusion/gaussian.ts";

// ---------------------------------------------------------------------------------------------
// helpers

function assert(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(msg);
}

/** |actual − expected| ≤ abs + rel·|expected|. */
function assertClose(actual: number, expected: number, abs: number, rel: number, what: string) {
  const err = Math.abs(actual - expected);
  assert(err <= abs + rel * Math.abs(expected), `${what}: got ${actual}, expected ${expected}`);
}

function assertThrows(fn: () => unknown, cls: ErrorConstructor, includes: string): void {
  try {
    fn();
  } catch (e) {
    assert(e instanceof cls, `expected ${cls.name}, got ${e}`);
    assert((e as Error).message.includes(includes), `message '${(e as Error).message}'`);
    return;
  }
  throw new Error(`expected a ${cls.name} mentioning '${includes}'`);
}

async function assertRejects(fn: () => Promise<unknown>, includes: string): Promise<void> {
  try {
    await fn();
  } catch (e) {
    assert(e instanceof RangeError, `expected RangeError, got ${e}`);
    assert((e as Error).message.includes(includes), `message '${(e as Error).message}'`);
    return;
  }
  throw new Error(`expected a RangeError mentioning '${includes}'`);
}

/** erfc(x) (Numerical Recipes `erfcc`: fractional error below 1.2e-7 everywhere). */
function erfc(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r = t * Math.exp(
    -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
                  t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
                                  t * (-0.82215223 + t * 0.17087277)))))))),
  );
  return x >= 0 ? r : 2 - r;
}

/** z with P(|N(0,1)| > z) = p, by bisection. */
function twoSidedZ(p: number): number {
  let lo = 0, hi = 40;
  for (let i = 0; i < 100; i++) {
    const mid = (lo + hi) / 2;
    if (erfc(mid / Math.SQRT2) > p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

// The Gaussian data set: 8x8x1 images, a structured mean image, per-pixel std around 0.5.
const R = 8;
const C = 1;
const P = R * C * R;
const MU = new Float64Array(P);
const STD = new Float64Array(P);
for (let h = 0; h < R; h++) {
  for (let w = 0; w < R; w++) {
    for (let c = 0; c < C; c++) {
      const i = (h * R + w) * C + c;
      MU[i] = 0.6 * Math.sin(h / 2 + c) * Math.cos(w / 3) + 0.2 * (c - 1);
      STD[i] = 0.5 * (0.6 + 0.8 * (((h * 8 + w + c * 7) * 5) % 17) / 16); // 0.30 .. 0.70
    }
  }
}

function makeNet(): GaussianDenoiser {
  const mean = tf.tensor3d(Float32Array.from(MU), [R, R, C]);
  const std = tf.tensor3d(Float32Array.from(STD), [R, R, C]);
  const net = new GaussianDenoiser({ imgResolution: R, imgChannels: C, mean, std });
  tf.dispose([mean, std]);
  return net;
}

interface ChainOptions {
  numSteps: number;
  sChurn?: number;
  sMin?: number;
  sMax?: number;
  sNoise?: number;
}

/** The per-step (t_cur, t_next, t_hat) of the reference algorithm, float64. */
function chainSteps(o: ChainOptions): { tCur: number; tNext: number; tHat: number }[] {
  const { numSteps, sChurn = 0, sMin = 0, sMax = Infinity } = o;
  const t = edmSigmaSteps({ numSteps });
  const out = [];
  for (let i = 0; i < numSteps; i++) {
    const gamma = sMin <= t[i] && t[i] <= sMax ? Math.min(sChurn / numSteps, Math.SQRT2 - 1) : 0;
    out.push({ tCur: t[i], tNext: t[i + 1], tHat: t[i] + gamma * t[i] });
  }
  return out;
}

/**
 * One pixel's trajectory through the reference recursion (edm:generate.py:41-60) in float64,
 * with D(x; σ) = μ + s²/(s²+σ²)(x − μ). `eps[i]` is the churn noise of step i (0 if absent).
 */
function heunPixel(z: number, mu: number, s: number, o: ChainOptions, eps: number[] = []): number {
  const D = (x: number, sigma: number) => mu + s * s / (s * s + sigma * sigma) * (x - mu);
  const steps = chainSteps(o);
  const sNoise = o.sNoise ?? 1;
  let xNext = z * steps[0].tCur;
  steps.forEach(({ tCur, tNext, tHat }, i) => {
    const xCur = xNext;
    const xHat = xCur + Math.sqrt(tHat ** 2 - tCur ** 2) * sNoise * (eps[i] ?? 0);
    const dCur = (xHat - D(xHat, tHat)) / tHat;
    xNext = xHat + (tNext - tHat) * dCur;
    if (i < o.numSteps - 1) {
      const dPrime = (xNext - D(xNext, tNext)) / tNext;
      xNext = xHat + (tNext - tHat) * (0.5 * dCur + 0.5 * dPrime);
    }
  });
  return xNext;
}

/**
 * Exact mean and std of one pixel of the sampler's output for z, ε ~ N(0, 1): every step maps
 * y = x − μ linearly, y_next = c·(y_cur + a·ε), so mean and variance propagate in closed form.
 */
function chainMoments(mu: number, s: number, o: ChainOptions): { mean: number; std: number } {
  const steps = chainSteps(o);
  const sNoise = o.sNoise ?? 1;
  const oneMinusK = (sigma: number) => sigma * sigma / (s * s + sigma * sigma);
  let m = -mu; // y_0 = z·t_0 − μ
  let v = steps[0].tCur ** 2;
  steps.forEach(({ tCur, tNext, tHat }, i) => {
    v += (tHat ** 2 - tCur ** 2) * sNoise ** 2;
    const h = tNext - tHat;
    const cEuler = 1 + h * oneMinusK(tHat) / tHat;
    const c = i < o.numSteps - 1
      ? 1 + h * 0.5 * (oneMinusK(tHat) / tHat + oneMinusK(tNext) / tNext * cEuler)
      : cEuler;
    m *= c;
    v *= c * c;
  });
  return { mean: mu + m, std: Math.sqrt(v) };
}

// ---------------------------------------------------------------------------------------------
// schedule

Deno.test("edmSigmaSteps matches the reference numbers", () => {
  // The spec's numbers are printed with 6 decimals: compare to within their rounding (5e-7)
  // plus 1e-6 relative.
  const close = (a: number, b: number, what: string) => assertClose(a, b, 5e-7, 1e-6, what);
  const t18 = edmSigmaSteps({ numSteps: 18 });
  assert(t18.length === 19 && t18[18] === 0, "N=18: 19 values ending in 0");
  const head18 = [80, 57.585985, 40.785574, 28.374585];
  const tail18 = [0.022935, 0.007528, 0.002];
  head18.forEach((v, i) => close(t18[i], v, `t18[${i}]`));
  tail18.forEach((v, i) => close(t18[15 + i], v, `t18[${15 + i}]`));

  const t40 = edmSigmaSteps({ numSteps: 40, sigmaMin: 0.002, sigmaMax: 80, rho: 7 });
  assert(t40.length === 41 && t40[40] === 0, "N=40: 41 values ending in 0");
  [80, 69.450946, 60.117395].forEach((v, i) => close(t40[i], v, `t40[${i}]`));
  [0.003677, 0.002].forEach((v, i) => close(t40[38 + i], v, `t40[${38 + i}]`));
  for (let i = 1; i < 41; i++) assert(t40[i] < t40[i - 1], "decreasing");

  assert(JSON.stringify(edmSigmaSteps({ numSteps: 1 })) === "[80,0]", "N=1 gives [80, 0]");
  const rounded = edmSigmaSteps({ numSteps: 3, roundSigma: (s) => Math.round(s * 100) / 100 });
  assert(rounded[1] === Math.round(rounded[1] * 100) / 100 && rounded[3] === 0, "roundSigma");

  assertThrows(() => edmSigmaSteps({ numSteps: 0 }), RangeError, "numSteps");
  assertThrows(() => edmSigmaSteps({ numSteps: 2.5 }), RangeError, "numSteps");
  assertThrows(() => edmSigmaSteps({ sigmaMin: 100 }), RangeError, "smaller than sigmaMax");
  assertThrows(() => edmSigmaSteps({ sigmaMin: 0 }), RangeError, "sigmaMin");
  assertThrows(() => edmSigmaSteps({ sigmaMax: Infinity }), RangeError, "sigmaMax");
  assertThrows(() => edmSigmaSteps({ rho: -1 }), RangeError, "rho");
});

// ---------------------------------------------------------------------------------------------
// Gaussian denoiser and image conversion

Deno.test("GaussianDenoiser: formula, per-sample sigma, no encoder", async () => {
  await initBackend("cpu");
  const before = tf.memory().numTensors;
  const net = makeNet();
  const x = tf.randomNormal([2, R, R, C], 0, 1, "float32", 11) as tf.Tensor4D;
  const xs = await x.data();
  const sig = [0.3, 2];
  const sigT = tf.tensor1d(sig);
  const outs = [net.denoise(x, sig), net.denoise(x, sigT)];
  const a = await outs[0].data();
  const b = await outs[1].data();
  for (let i = 0; i < xs.length; i++) {
    const p = i % P, sigma = sig[Math.floor(i / P)];
    const want = MU[p] + STD[p] ** 2 / (STD[p] ** 2 + sigma ** 2) * (xs[i] - MU[p]);
    assert(Math.abs(a[i] - want) < 1e-5 && Math.abs(b[i] - want) < 1e-5, `D at ${i}`);
  }
  const one = net.denoise(x, 0.3);
  const oneData = await one.data();
  for (let i = 0; i < P; i++) assert(Math.abs(oneData[i] - a[i]) < 1e-6, "scalar sigma");
  assertThrows(() => net.denoise(x, 1, { returnFlag: "encoder" }), Error, "no encoder");
  assertThrows(() => net.denoise(x, [1, 2, 3]), RangeError, "sigma");
  tf.dispose([x, sigT, one, ...outs]);
  net.dispose();
  assert(tf.memory().numTensors === before, "denoiser leaks nothing");
});

Deno.test("toUint8Images truncates like uint8(clip(x*127.5+128, 0, 255))", async () => {
  await initBackend("cpu");
  const vals = [-1, -0.5, 0, 0.5, 0.999, 1, 2, -3, 0.0039, -0.0039];
  const x = tf.tensor4d(vals, [1, 1, vals.length, 1]);
  const got = Array.from(await toUint8Images(x));
  x.dispose();
  const want = vals.map((v) =>
    Math.trunc(Math.min(255, Math.max(0, Math.fround(v) * 127.5 + 128)))
  );
  assert(JSON.stringify(got) === JSON.stringify(want), `${got} vs ${want}`);
  assert(JSON.stringify(want.slice(0, 8)) === "[0,64,128,191,255,255,255,0]", `${want}`);
});

// ---------------------------------------------------------------------------------------------
// exactness of the update equations

Deno.test("Heun trajectory of one sample equals a float64 recomputation", async () => {
  await initBackend("cpu");
  const net = makeNet();
  const z = tf.randomNormal([1, R, R, C], 0, 1, "float32", 5) as tf.Tensor4D;
  const zs = await z.data();
  const cases: ChainOptions[] = [
    { numSteps: 18 },
    { numSteps: 40 },
    { numSteps: 1 },
    { numSteps: 18, sChurn: 40, sMin: 0.05, sMax: 50, sNoise: 1.003 },
  ];
  for (const o of cases) {
    // Recorded churn noise: eps[step][pixel].
    const eps: Float32Array[] = [];
    const randn = (shape: number[]) => {
      const e = new Float32Array(shape.reduce((a, b) => a * b));
      for (let i = 0; i < e.length; i++) e[i] = Math.sin(12.9898 * (i + 1) + 78.233 * eps.length);
      eps.push(e);
      return tf.tensor(e, shape);
    };
    const stepsSeen: number[] = [];
    const x = await edmSampler(net, { latents: z, ...o, randn, onStep: (i) => stepsSeen.push(i) });
    const xs = await x.data();
    x.dispose();
    assert(
      stepsSeen.length === o.numSteps && stepsSeen[o.numSteps - 1] === o.numSteps - 1,
      "onStep",
    );
    // With churn, step i draws noise iff sMin <= t_i <= sMax: steps 0 (t=80 > 50) and the last
    // ones (t < 0.05) draw none.
    const drawn = chainSteps(o).map((s) => s.tHat !== s.tCur);
    assert(eps.length === drawn.filter(Boolean).length, `${eps.length} noise draws`);
    // Error relative to max(1, |x|); with one step the output is x̂ − (x̂ − D) with x̂ = 80·z,
    // so the float32 rounding of x̂ (80·|z|·2^-24 ≈ 5e-6·|z|) is not scaled down: allow for it.
    let maxErr = 0;
    for (let p = 0; p < P; p++) {
      let k = 0;
      const e = drawn.map((d) => (d ? eps[k++][p] : 0));
      const want = heunPixel(zs[p], MU[p], STD[p], o, e);
      const cancellation = o.numSteps === 1 ? 2 * 2 ** -24 * 80 * Math.abs(zs[p]) : 0;
      const err = Math.max(0, Math.abs(xs[p] - want) - cancellation);
      maxErr = Math.max(maxErr, err / Math.max(1, Math.abs(want)));
    }
    if (Deno.env.get("SIDA_TEST_VERBOSE")) console.log(JSON.stringify(o), maxErr);
    assert(maxErr < 1e-5, `${JSON.stringify(o)}: max rel err ${maxErr}`);
  }
  z.dispose();
  net.dispose();
});

// ---------------------------------------------------------------------------------------------
// the sampler reproduces the data distribution

const BATCH = 8192;

Deno.test("EDM sampler reproduces the per-pixel mean and std of Gaussian data", async () => {
  await initBackend("cpu");
  const net = makeNet();
  // Family-wise false-alarm rate 1e-3 over the P pixels (Bonferroni), per checked quantity.
  const Z = twoSidedZ(1e-3 / P);
  const churn = { sChurn: 40, sMin: 0.05, sMax: 50, sNoise: 1.003 };
  // maxStdBias: bound on the discretization bias of the output std (exact values, from the
  // moment propagation, for s in 0.3..0.7 are given in the comments).
  const cases: (ChainOptions & { seed: number; maxStdBias: number })[] = [
    { numSteps: 18, seed: 1, maxStdBias: 0.07 }, // +5.0% .. +6.5%
    { numSteps: 40, seed: 2, maxStdBias: 0.012 }, // +0.9% .. +1.1%
    { numSteps: 18, ...churn, seed: 3, maxStdBias: 0.15 }, // +11.9% .. +14.5%
    { numSteps: 64, ...churn, seed: 4, maxStdBias: 0.03 }, // +2.2% .. +2.7%
  ];
  for (const { maxStdBias, ...o } of cases) {
    const t0 = performance.now();
    const x = await edmSampler(net, { batch: BATCH, ...o });
    const { mean, variance } = tf.moments(x, 0);
    const [m, v] = await Promise.all([mean.data(), variance.data()]);
    tf.dispose([x, mean, variance]);
    const n = BATCH;
    const tag = JSON.stringify(o);
    let worstMeanZ = 0, worstStdZ = 0, worstBias = 0;
    for (let p = 0; p < P; p++) {
      const mu = MU[p], s = STD[p];
      const sampleStd = Math.sqrt(v[p] * n / (n - 1));
      // What the discretized sampler yields exactly (float64 moment propagation) vs the data.
      // x_0 = z·t_0 ignores μ, so the mean is off by about μ·s/80; the std bias is the
      // discretization error of Heun's method (2nd order in the step count).
      const exact = chainMoments(mu, s, o);
      const stdBias = exact.std / s - 1;
      assert(Math.abs(exact.mean - mu) < 0.01 * Math.abs(mu) + 1e-9, `${tag}: mean bias ${p}`);
      assert(stdBias >= 0 && stdBias < maxStdBias, `${tag}: std bias ${stdBias} at ${p}`);
      worstBias = Math.max(worstBias, stdBias);
      // Sample vs exact moments: standard errors std/sqrt(n) and (relative) 1/sqrt(2(n-1)).
      const seMean = exact.std / Math.sqrt(n);
      const seStdRel = 1 / Math.sqrt(2 * (n - 1));
      const meanZ = (m[p] - exact.mean) / seMean;
      const stdZ = (sampleStd / exact.std - 1) / seStdRel;
      worstMeanZ = Math.max(worstMeanZ, Math.abs(meanZ));
      worstStdZ = Math.max(worstStdZ, Math.abs(stdZ));
      assert(Math.abs(meanZ) <= Z, `${tag}: pixel ${p} mean ${m[p]} vs ${exact.mean}`);
      assert(Math.abs(stdZ) <= Z, `${tag}: pixel ${p} std ${sampleStd} vs ${exact.std}`);
      // Hence vs the data moments, with the sampler's own bias added to the tolerance.
      assert(
        Math.abs(m[p] - mu) <= Z * s / Math.sqrt(n) + Math.abs(exact.mean - mu),
        `${tag}: pixel ${p} mean ${m[p]} vs data ${mu}`,
      );
      assert(
        Math.abs(sampleStd / s - 1) <= Z * seStdRel + stdBias,
        `${tag}: pixel ${p} std ${sampleStd} vs data ${s}`,
      );
    }
    if (Deno.env.get("SIDA_TEST_VERBOSE")) {
      console.log(
        `${tag}: worst |z| mean ${worstMeanZ.toFixed(2)}, std ${worstStdZ.toFixed(2)} ` +
          `(limit ${Z.toFixed(2)}); max std bias ${(worstBias * 100).toFixed(2)}%; ` +
          `${((performance.now() - t0) / 1000).toFixed(1)} s`,
      );
    }
  }
  net.dispose();
});

// ---------------------------------------------------------------------------------------------
// memory, seeding, errors

Deno.test("edmSampler leaves only its result allocated; seeds are reproducible", async () => {
  await initBackend("cpu");
  const net = makeNet();
  const z = tf.randomNormal([4, R, R, C], 0, 1, "float32", 9) as tf.Tensor4D;
  const before = tf.memory().numTensors;
  const opts: EdmSamplerOptions[] = [
    { latents: z, numSteps: 18 },
    { latents: z, numSteps: 10, sChurn: 40, sMin: 0.05, sMax: 50, sNoise: 1.003, seed: 4 },
    { batch: 4, numSteps: 5, seed: 4, sChurn: 1 },
  ];
  for (const o of opts) {
    const x = await edmSampler(net, o);
    assert(tf.memory().numTensors === before + 1, `one tensor more after ${JSON.stringify(o)}`);
    tf.dispose(x);
  }
  assert(tf.memory().numTensors === before, "nothing leaked");

  const a = await edmSampler(net, { batch: 2, numSteps: 4, seed: 7, sChurn: 2 });
  const b = await edmSampler(net, { batch: 2, numSteps: 4, seed: 7, sChurn: 2 });
  const c = await edmSampler(net, { batch: 2, numSteps: 4, seed: 8, sChurn: 2 });
  const [ad, bd, cd] = await Promise.all([a.data(), b.data(), c.data()]);
  assert(ad.every((v, i) => v === bd[i]), "same seed, same images");
  assert(ad.some((v, i) => v !== cd[i]), "different seeds, different images");
  tf.dispose([a, b, c, z]);
  net.dispose();
  assert(tf.memory().numTensors === before - 1 - 2, "all freed"); // z and the net's 2 tensors
});

Deno.test("edmSampler rejects bad options with clear errors and leaks nothing", async () => {
  await initBackend("cpu");
  const net = makeNet();
  const z = tf.zeros([2, R, R, C]) as tf.Tensor4D;
  const before = tf.memory().numTensors;
  await assertRejects(() => edmSampler(net, { latents: z, numSteps: 0 }), "numSteps");
  await assertRejects(() => edmSampler(net, { latents: z, numSteps: 1.5 }), "numSteps");
  await assertRejects(
    () => edmSampler(net, { latents: z, sigmaMin: 10, sigmaMax: 1 }),
    "smaller than sigmaMax",
  );
  for (const shape of [[2, R, R, C + 1], [2, R + 1, R + 1, C], [2, R, R]]) {
    const wrong = tf.zeros(shape as [number, number, number, number]) as tf.Tensor4D;
    await assertRejects(() => edmSampler(net, { latents: wrong }), "latents must have shape");
    wrong.dispose();
  }
  await assertRejects(() => edmSampler(net, { latents: z, batch: 3 }), "batch");
  await assertRejects(() => edmSampler(net, {}), "latents or batch");
  await assertRejects(() => edmSampler(net, { batch: 0 }), "batch");
  await assertRejects(() => edmSampler(net, { latents: z, sChurn: -1 }), "sChurn");
  const labels = tf.zeros([2, 10]) as tf.Tensor2D;
  await assertRejects(() => edmSampler(net, { latents: z, labels }), "unconditional");
  labels.dispose();
  await assertRejects(
    () => edmSampler(net, { latents: z, sChurn: 1, randn: () => tf.zeros([3]) }),
    "randn returned shape",
  );
  assert(tf.memory().numTensors === before, "no leak on errors");
  z.dispose();
  net.dispose();
});
