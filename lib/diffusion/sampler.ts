/**
 * The EDM sampler (Karras et al. 2022, Algorithm 2): Heun's 2nd-order method on the
 * probability-flow ODE with optional stochastic "churn", `edm:generate.py:25-60`.
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { GaussianDenoiser } from "./gaussian.ts";
 * import { edmSampler, toUint8Images } from "./sampler.ts";
 * const net = new GaussianDenoiser({ imgResolution: 8, imgChannels: 3, mean: 0, std: 0.5 });
 * const x = await edmSampler(net, { batch: 4, seed: 1, numSteps: 18 });
 * const pixels = await toUint8Images(x); // NHWC uint8, 4*8*8*3 values
 * x.dispose();
 * net.dispose();
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { Denoiser } from "../nets/types.ts";
import { edmSigmaSteps, requireFinite, requirePositiveInt } from "./schedule.ts";

/** Options of {@linkcode edmSampler}. */
export interface EdmSamplerOptions {
  /**
   * Standard normal latents z, NHWC `[N, H, W, C]` matching the net. Not disposed by the
   * sampler. When omitted, `batch` latents are drawn with `tf.randomNormal` (seeded by `seed`).
   */
  latents?: tf.Tensor4D;
  /** Number of images to draw when `latents` is omitted (must equal N when both are given). */
  batch?: number;
  /**
   * Seed of the default random streams (latents and churn noise; each gets its own derived
   * seed). Unseeded when omitted. Only deterministic on a given tfjs version.
   */
  seed?: number;
  /** Class labels `[N, labelDim]` passed to the net (conditional nets only). */
  labels?: tf.Tensor2D;
  /** Number of noise levels N (NFE = 2N − 1). Default 18. */
  numSteps?: number;
  /** Lowest noise level; raised to `net.sigmaMin` if lower. Default 0.002. */
  sigmaMin?: number;
  /** Highest noise level; lowered to `net.sigmaMax` if higher. Default 80. */
  sigmaMax?: number;
  /** Schedule exponent ρ. Default 7. */
  rho?: number;
  /** Total churn S_churn (0: deterministic). Default 0. */
  sChurn?: number;
  /** Churn only where t ≥ S_min. Default 0. */
  sMin?: number;
  /** Churn only where t ≤ S_max. Default Infinity. */
  sMax?: number;
  /** Churn noise scale S_noise. Default 1. */
  sNoise?: number;
  /**
   * The net's `round_sigma` (applied to the schedule and to t_hat). Identity when omitted, as
   * for EDMPrecond.
   */
  roundSigma?: (sigma: number) => number;
  /**
   * Source of the churn noise ε: must return a fresh standard normal float32 tensor of the given
   * shape, which the sampler disposes. Default: `tf.randomNormal`, seeded from `seed`.
   */
  randn?: (shape: number[]) => tf.Tensor;
  /** Called after each step with the step index i (0..numSteps−1) and numSteps. */
  onStep?: (i: number, numSteps: number) => void;
}

/**
 * A nonzero 31-bit seed for stream `stream` of base seed `seed` (tfjs treats seed 0 as
 * "unseeded"). A small integer hash (splitmix-like), stable across platforms.
 */
function deriveSeed(seed: number, stream: number): number {
  let h = (Math.trunc(seed) ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = (h + Math.imul(stream + 1, 0xc2b2ae35)) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0x27d4eb2f) >>> 0;
  h = (h ^ (h >>> 16)) & 0x7fffffff;
  return h === 0 ? 1 : h;
}

/**
 * Samples images with the EDM sampler, exactly as `edm_sampler` in `edm:generate.py`:
 *
 * 1. σ_min ← max(σ_min, net.sigmaMin), σ_max ← min(σ_max, net.sigmaMax); time steps
 *    t_0..t_N from {@linkcode edmSigmaSteps} (float64), t_N = 0.
 * 2. x_0 = z · t_0.
 * 3. For each step i: γ = min(S_churn/N, √2 − 1) if S_min ≤ t_i ≤ S_max else 0;
 *    t̂ = t_i(1 + γ); x̂ = x_i + √(t̂² − t_i²)·S_noise·ε; Euler step
 *    x_{i+1} = x̂ + (t_{i+1} − t̂)·d with d = (x̂ − D(x̂; t̂))/t̂; and, when i < N − 1, the Heun
 *    correction with d' = (x_{i+1} − D(x_{i+1}; t_{i+1}))/t_{i+1}:
 *    x_{i+1} = x̂ + (t_{i+1} − t̂)·(d/2 + d'/2).
 *
 * NFE = 2N − 1. Deviations from the reference: the image arithmetic is float32 in tfjs (the
 * reference converts to float64; the schedule and scalar coefficients here are float64 JS
 * numbers), and ε is not drawn when γ = 0 (the reference draws it and multiplies by 0, which
 * changes only the position in its random stream, not the result).
 *
 * Memory: only the returned tensor survives; intermediates are disposed step by step.
 *
 * @throws {RangeError} on bad options: non-integer or non-positive `numSteps`, `sigmaMin` not
 *   below `sigmaMax` (after clamping), latents or labels whose shape does not fit the net, and
 *   so on.
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { GaussianDenoiser } from "./gaussian.ts";
 * import { edmSampler } from "./sampler.ts";
 * const net = new GaussianDenoiser({ imgResolution: 8, imgChannels: 1, mean: 0, std: 0.5 });
 * const z = tf.randomNormal([16, 8, 8, 1], 0, 1, "float32", 7) as tf.Tensor4D;
 * const x = await edmSampler(net, { latents: z, numSteps: 40 }); // NFE 79
 * // Stochastic, ImageNet-64 ADM settings:
 * const y = await edmSampler(net, {
 *   latents: z, numSteps: 18, sChurn: 40, sMin: 0.05, sMax: 50, sNoise: 1.003, seed: 3,
 * });
 * tf.dispose([x, y, z]);
 * ```
 */
export async function edmSampler(
  net: Denoiser,
  options: EdmSamplerOptions = {},
): Promise<tf.Tensor4D> {
  const {
    latents,
    batch,
    seed,
    labels,
    numSteps = 18,
    rho = 7,
    sChurn = 0,
    sMin = 0,
    sMax = Infinity,
    sNoise = 1,
    roundSigma,
    onStep,
  } = options;
  const round = roundSigma ?? ((s: number) => s);

  // Validate everything before allocating anything.
  requirePositiveInt("numSteps", numSteps);
  requireFinite("sChurn", sChurn);
  if (sChurn < 0) throw new RangeError(`sChurn must be >= 0, got ${sChurn}`);
  requireFinite("sNoise", sNoise);
  if (sNoise < 0) throw new RangeError(`sNoise must be >= 0, got ${sNoise}`);
  if (typeof sMin !== "number" || Number.isNaN(sMin)) throw new RangeError(`bad sMin ${sMin}`);
  if (typeof sMax !== "number" || Number.isNaN(sMax)) throw new RangeError(`bad sMax ${sMax}`);
  if (seed !== undefined) requireFinite("seed", seed);
  const sigmaMin = Math.max(options.sigmaMin ?? 0.002, net.sigmaMin);
  const sigmaMax = Math.min(options.sigmaMax ?? 80, net.sigmaMax);
  // Validates sigmaMin/sigmaMax/rho (positive, finite, sigmaMin < sigmaMax).
  const t = edmSigmaSteps({ numSteps, sigmaMin, sigmaMax, rho, roundSigma: round });

  const r = net.imgResolution;
  const c = net.imgChannels;
  let n: number;
  if (latents) {
    const [ln, lh, lw, lc] = latents.shape;
    if (latents.rank !== 4 || lh !== r || lw !== r || lc !== c) {
      throw new RangeError(`latents must have shape [N, ${r}, ${r}, ${c}], got [${latents.shape}]`);
    }
    if (batch !== undefined && batch !== ln) {
      throw new RangeError(`batch (${batch}) does not match the latents' batch size (${ln})`);
    }
    if (ln < 1) throw new RangeError("latents must hold at least one sample");
    n = ln;
  } else {
    if (batch === undefined) throw new RangeError("give either latents or batch");
    requirePositiveInt("batch", batch);
    n = batch;
  }
  if (labels) {
    if (net.labelDim === 0) throw new RangeError("labels given for an unconditional net");
    if (labels.rank !== 2 || labels.shape[0] !== n || labels.shape[1] !== net.labelDim) {
      throw new RangeError(
        `labels must have shape [${n}, ${net.labelDim}], got [${labels.shape}]`,
      );
    }
  }

  const shape = [n, r, r, c];
  let noiseStream = 1;
  const randn = options.randn ??
    ((s: number[]) =>
      tf.randomNormal(
        s,
        0,
        1,
        "float32",
        seed === undefined ? undefined : deriveSeed(seed, noiseStream++),
      ));
  const denoise = (x: tf.Tensor4D, sigma: number): tf.Tensor4D => net.denoise(x, sigma, { labels });

  // x_0 = z * t_0
  let xNext: tf.Tensor4D = tf.tidy(() => {
    if (latents) return tf.mul(latents, t[0]);
    const z = tf.randomNormal(
      shape,
      0,
      1,
      "float32",
      seed === undefined ? undefined : deriveSeed(seed, 0),
    );
    return tf.mul(z, t[0]);
  });

  const gammaMax = Math.min(sChurn / numSteps, Math.SQRT2 - 1);
  try {
    for (let i = 0; i < numSteps; i++) {
      const tCur = t[i];
      const tNext = t[i + 1];
      const xCur = xNext;
      const gamma = sMin <= tCur && tCur <= sMax ? gammaMax : 0;
      const tHat = round(tCur + gamma * tCur);
      const heun = i < numSteps - 1;
      const noiseScale = Math.sqrt(tHat * tHat - tCur * tCur) * sNoise;
      xNext = tf.tidy(() => {
        // Increase noise temporarily (skipped when gamma is 0, see above).
        let xHat: tf.Tensor4D = xCur;
        if (gamma !== 0) {
          const eps = randn(shape);
          if (eps.size !== xCur.size) {
            throw new RangeError(`randn returned shape [${eps.shape}], expected [${shape}]`);
          }
          xHat = tf.add(xCur, tf.mul(tf.reshape(eps, shape), noiseScale));
        }
        // Euler step.
        const h = tNext - tHat;
        const dCur = tf.div(tf.sub(xHat, denoise(xHat, tHat)), tHat);
        const euler: tf.Tensor4D = tf.add(xHat, tf.mul(dCur, h));
        if (!heun) return euler;
        // 2nd-order correction.
        const dPrime = tf.div(tf.sub(euler, denoise(euler, tNext)), tNext);
        return tf.add(xHat, tf.mul(tf.add(tf.mul(dCur, 0.5), tf.mul(dPrime, 0.5)), h));
      });
      xCur.dispose();
      onStep?.(i, numSteps);
      // Let the event loop (and GPU queues) breathe between steps.
      if (i % 4 === 3) await new Promise((resolve) => setTimeout(resolve, 0));
    }
  } catch (e) {
    xNext.dispose();
    throw e;
  }
  return xNext;
}

/**
 * Converts images in [−1, 1] to bytes as EDM saves them: uint8(clip(x·127.5 + 128, 0, 255)),
 * where the cast truncates (so the +128 rounds). Computed in float64 on the host from the
 * float32 tensor values. The layout is the tensor's (NHWC). NaN maps to 0, or with
 * `nonFinite: "error"` is a `RangeError` (a generator that outputs NaN is broken: evaluating it
 * as black pixels would report a meaningless FID).
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { toUint8Images } from "./sampler.ts";
 * const x = tf.tensor4d([-1, 0, 0.5, 1], [1, 2, 2, 1]);
 * console.log(await toUint8Images(x)); // Uint8Array [0, 128, 191, 255]
 * ```
 */
export async function toUint8Images(
  x: tf.Tensor4D,
  options: { nonFinite?: "zero" | "error" } = {},
): Promise<Uint8Array> {
  if (x.rank !== 4) throw new RangeError(`expected NHWC images (rank 4), got [${x.shape}]`);
  const data = await x.data();
  const out = new Uint8Array(data.length);
  let bad = 0;
  for (let i = 0; i < data.length; i++) {
    const v = Math.min(255, Math.max(0, data[i] * 127.5 + 128));
    if (Number.isNaN(v)) bad++;
    out[i] = Number.isNaN(v) ? 0 : Math.trunc(v);
  }
  if (bad > 0 && options.nonFinite === "error") {
    throw new RangeError(
      `the network produced ${bad} NaN values in ${data.length} (its weights or inputs are broken)`,
    );
  }
  return out;
}
