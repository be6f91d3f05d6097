/**
 * Noise-level sampling for SiD / SiDA / SiD²A (docs/distillation.md §2), the EDM loss weight λ(σ),
 * and the
 * default of α (§2.3).
 *
 * Two σ distributions are used, never mixed (docs/distillation.md §9 pitfall 4):
 *
 * - fake-score and discriminator loss: log-normal, σ = exp(P_mean + P_std·ξ), ξ ~ N(0, 1)
 *   (docs/distillation.md §2.1);
 * - generator loss (SiD and adversarial term): the Karras ρ-schedule truncated by `tmax`,
 *   u ~ U(0, tmax/1000), σ = (σ_max^{1/ρ} + (1−u)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ
 *   (docs/distillation.md §2.2).
 *
 * Draws come from a {@linkcode RandomSource}, so a seeded run is reproducible on every backend
 * (the draws are made on the host, not by a backend kernel).
 *
 * @example
 * ```ts
 * import { seededRandom } from "../runtime/random.ts";
 * import { sampleFakeSigma, sampleGeneratorSigma } from "./sigma.ts";
 * const rng = seededRandom(1);
 * const sFake = sampleFakeSigma(8, rng);            // [8], log-normal (P_mean −1.2, P_std 1.2)
 * const sGen = sampleGeneratorSigma(8, rng);        // [8], in [0.002, 24.41] for tmax = 800
 * ```
 *
 * Section numbers (§) are those of `docs/distillation.md`; `file:line` citations are of
 * mingyuanzhou/SiD, branch `sida`.
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { RandomSource } from "../runtime/random.ts";

/**
 * σ_d, the data standard deviation of EDM preconditioning and of λ(σ) (docs/distillation.md
 * notation table).
 */
export const SIGMA_DATA = 0.5;

/**
 * Log-normal P_mean of the fake-score/D σ on the EDM path (docs/distillation.md §2.1,
 * `sida_loss.py:18`).
 */
export const EDM_P_MEAN: number = -1.2;
/**
 * Log-normal P_std of the fake-score/D σ on the EDM path (docs/distillation.md §2.1,
 * `sida_loss.py:18`).
 */
export const EDM_P_STD = 1.2;
/** Log-normal P_mean on the EDM2 path (docs/distillation.md §2.1 table, `sida_edm2_train.py`). */
export const EDM2_P_MEAN: number = -0.4;
/** Log-normal P_std on the EDM2 path (docs/distillation.md §2.1 table, `sida_edm2_train.py`). */
export const EDM2_P_STD = 1.0;

/** σ_min of the generator-loss ρ-schedule (docs/distillation.md §2.2, `sida_loss.py:27`). */
export const GEN_SIGMA_MIN = 0.002;
/** σ_max of the generator-loss ρ-schedule (docs/distillation.md §2.2, `sida_loss.py:28`). */
export const GEN_SIGMA_MAX = 80;
/** ρ of the generator-loss ρ-schedule (docs/distillation.md §2.2, `sida_loss.py:29`). */
export const GEN_RHO = 7;
/** `tmax` used by every released script (docs/distillation.md §2.2 and §6): σ ∈ [0.002, 24.41]. */
export const DEFAULT_TMAX = 800;

/**
 * Default α of the SiD generator loss: 1.2, the CLI default of `sid_train.py`/`sida_train.py`
 * (docs/distillation.md §2.3). The SiDA scripts pass α = 1 and `sida_edm2_train.py` defaults to 1.0
 * (see {@linkcode SIDA_SCRIPT_ALPHA}).
 */
export const DEFAULT_ALPHA = 1.2;
/**
 * α used by every SiDA script and by the EDM2 trainer's default (docs/distillation.md §2.3, §6.2,
 * §6.3).
 */
export const SIDA_SCRIPT_ALPHA = 1.0;

/** Options of {@linkcode sampleFakeSigma}. */
export interface FakeSigmaOptions {
  /** P_mean. Default {@linkcode EDM_P_MEAN} (−1.2); EDM2 uses −0.4. */
  pMean?: number;
  /** P_std. Default {@linkcode EDM_P_STD} (1.2); EDM2 uses 1.0. */
  pStd?: number;
}

function requireCount(n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`n must be an integer ≥ 0, got ${n}`);
}

/**
 * The σ of the fake-score and discriminator losses (docs/distillation.md §2.1,
 * `sida_loss.py:80-81`):
 *
 *   σ_n = exp(P_mean + P_std·ξ_n),  ξ_n ~ N(0, 1),  one σ per sample.
 *
 * The same σ_n (and the same noise tensor) must be used for the fake and the paired real image
 * of the discriminator loss (docs/distillation.md §2.1, §3.4 step 3).
 *
 * @returns float32 tensor `[n]`.
 */
export function sampleFakeSigma(
  n: number,
  rng: RandomSource,
  options: FakeSigmaOptions = {},
): tf.Tensor1D {
  requireCount(n);
  const pMean = options.pMean ?? EDM_P_MEAN;
  const pStd = options.pStd ?? EDM_P_STD;
  const xi = rng.normal(n);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.exp(pMean + pStd * xi[i]);
  return tf.tensor1d(out, "float32");
}

/** Options of {@linkcode sampleGeneratorSigma} and {@linkcode generatorSigmaFromU}. */
export interface GeneratorSigmaOptions {
  /** Truncation: u ~ U(0, tmax/1000). Default {@linkcode DEFAULT_TMAX} (800), at most 1000. */
  tmax?: number;
  /** σ_min. Default 0.002. */
  sigmaMin?: number;
  /** σ_max. Default 80. */
  sigmaMax?: number;
  /** ρ. Default 7. */
  rho?: number;
}

/**
 * The deterministic part of the generator-loss σ (docs/distillation.md §2.2, `sida_loss.py:30-34`):
 *
 *   σ(u) = ( σ_max^{1/ρ} + (1−u)·(σ_min^{1/ρ} − σ_max^{1/ρ}) )^ρ,
 *
 * so u = 0 gives σ_min and u = 1 would give σ_max. Computed in float64.
 */
export function generatorSigmaFromU(u: number, options: GeneratorSigmaOptions = {}): number {
  const sigmaMin = options.sigmaMin ?? GEN_SIGMA_MIN;
  const sigmaMax = options.sigmaMax ?? GEN_SIGMA_MAX;
  const rho = options.rho ?? GEN_RHO;
  const minInvRho = sigmaMin ** (1 / rho);
  const maxInvRho = sigmaMax ** (1 / rho);
  return (maxInvRho + (1 - u) * (minInvRho - maxInvRho)) ** rho;
}

/**
 * The σ of the generator loss, shared by the SiD and adversarial terms (docs/distillation.md §2.2,
 * `sida_loss.py:128-136`, `training/sid_loss.py:27-33`):
 *
 *   u_n ~ U(0, tmax/1000),  σ_n = ( σ_max^{1/ρ} + (1−u_n)(σ_min^{1/ρ} − σ_max^{1/ρ}) )^ρ,
 *   σ_min = 0.002, σ_max = 80, ρ = 7 by default.
 *
 * With tmax = 800, σ ∈ [0.002, 24.41].
 *
 * @returns float32 tensor `[n]`.
 */
export function sampleGeneratorSigma(
  n: number,
  rng: RandomSource,
  options: GeneratorSigmaOptions = {},
): tf.Tensor1D {
  requireCount(n);
  const tmax = options.tmax ?? DEFAULT_TMAX;
  if (!(tmax > 0 && tmax <= 1000)) throw new RangeError(`tmax must be in (0, 1000], got ${tmax}`);
  const u = rng.uniform(n);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = generatorSigmaFromU((u[i] * tmax) / 1000, options);
  return tf.tensor1d(out, "float32");
}

/**
 * The EDM loss weight (docs/distillation.md notation table, §2.1, `sida_loss.py:82`):
 *
 *   λ(σ) = (σ² + σ_d²) / (σ·σ_d)² = 1/σ_d² + 1/σ².
 *
 * Used by the fake-score and discriminator losses only, never by the generator loss
 * (docs/distillation.md §2.2). Elementwise; returns a tensor of σ's shape.
 */
export function edmLossWeight(sigma: tf.Tensor, sigmaData = SIGMA_DATA): tf.Tensor {
  return tf.tidy(() => {
    const s2 = tf.square(sigma);
    return tf.div(tf.add(s2, sigmaData * sigmaData), tf.mul(s2, sigmaData * sigmaData));
  });
}
