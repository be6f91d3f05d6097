/**
 * The SiD / SiDA / SiD²A losses as pure functions of tensors (docs/distillation.md §3), the
 * combination
 * rules and warm-up gates of §3.6 / §4.1, per-sample NaN filtering and the gradient
 * post-processing of §4.1-4.2.
 *
 * Conventions: images are NHWC `[N, H, W, C]`, discriminator logits `[N, h, w, 1]`, σ is `[N]`.
 * Every loss returns `loss` (a scalar: the *unscaled* sum over samples), `perSample` (`[N]`)
 * and `keep` (`[N]` bool, the samples that survived the NaN filter). The loss scales
 * `ls, lsd, lsg, lsg_gan` and the 1/B normalisation are applied by {@linkcode fakeStepObjective}
 * and {@linkcode generatorObjective}, exactly as the reference loop does
 * (`sida_training_loop.py:363-366, 402-413`).
 *
 * NaN filtering (docs/distillation.md §4.1 / §9 pitfall 14): the reference drops samples by boolean
 * indexing.
 * Here a dropped sample is replaced by zeros with `tf.where` and excluded from every sum, mean and
 * count, which gives the same values and the same (zero) gradient to the dropped samples while
 * keeping shapes static, so the losses stay synchronous and can run under `tf.variableGrads`.
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { generatorObjective, sidGeneratorLoss, sidaGeneratorAdversarialLoss } from "./losses.ts";
 * const xg = tf.randomNormal([4, 8, 8, 3]) as tf.Tensor4D;
 * const yReal = tf.randomNormal([4, 8, 8, 3]) as tf.Tensor4D;
 * const yFake = tf.randomNormal([4, 8, 8, 3]) as tf.Tensor4D;
 * const logits = tf.randomNormal([4, 2, 2, 1]) as tf.Tensor4D;
 * const sid = sidGeneratorLoss({ xg, yReal, yFake, alpha: 1 });
 * const gan = sidaGeneratorAdversarialLoss({ logits, weightFactor: sid.weightFactor, chw: 192 });
 * const j = generatorObjective({
 *   sid: sid.loss, gan: gan.loss, lsg: 100, lsgGan: 0.01, batchTotal: 4, ganActive: true,
 * });
 * ```
 *
 * Section numbers (§) are those of `docs/distillation.md`; `file:line` citations are of
 * mingyuanzhou/SiD, branch `sida`.
 *
 * @module
 */
import { tf } from "../deps.ts";
import { edmLossWeight, SIGMA_DATA } from "./sigma.ts";

// ---------------------------------------------------------------------------------------------
// Gradient helpers

const stopGradientOp = tf.customGrad((...args) => {
  const x = args[0] as tf.Tensor;
  return {
    value: tf.clone(x),
    gradFunc: (dy: tf.Tensor | tf.Tensor[]) => tf.zerosLike(Array.isArray(dy) ? dy[0] : dy),
  };
});

/**
 * Stop-gradient (PyTorch's `detach` / `torch.no_grad`): forward y = x, backward ∂y/∂x = 0.
 * tfjs has no such op; this is a `tf.customGrad` whose gradient is zeros.
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { stopGradient } from "./losses.ts";
 * const g = tf.grad((x: tf.Tensor) => tf.sum(tf.mul(x, stopGradient(x))))(tf.ones([2]));
 * // g = x (= [1, 1]), not 2x: the second factor is treated as a constant
 * ```
 */
export function stopGradient<T extends tf.Tensor>(x: T): T {
  return stopGradientOp(x) as T;
}

// ---------------------------------------------------------------------------------------------
// Per-sample NaN filtering

/**
 * The per-sample NaN filter of the reference losses (docs/distillation.md §4.1, §9 pitfall 14,
 * `sida_loss.py:48-51, 99-101`): keep_n = ¬ ⋁_t any(isnan(t_n)), over all non-batch axes of every
 * given tensor (same batch size N). Infinities are kept, as `torch.isnan` does. An extra `keep`
 * mask (`[N]` bool) is ANDed in.
 *
 * @returns bool tensor `[N]`.
 */
export function sampleKeepMask(tensors: tf.Tensor[], keep?: tf.Tensor1D): tf.Tensor1D {
  if (tensors.length === 0) throw new RangeError("sampleKeepMask needs at least one tensor");
  const n = tensors[0].shape[0];
  for (const t of tensors) {
    if (t.shape[0] !== n) {
      throw new RangeError(`batch sizes differ: ${n} vs ${t.shape[0]} ([${t.shape}])`);
    }
  }
  const inputs = keep ? [...tensors, keep] : tensors;
  return keepMaskOp(...inputs) as tf.Tensor1D;
}

/**
 * The mask computation as one op with a zero gradient: tfjs registers no gradients for the
 * boolean ops (`IsNan`, `Any`, `LogicalNot`…), and a mask that feeds `tf.where` inside a
 * differentiated function would otherwise make `tf.grad` fail.
 */
const keepMaskOp = tf.customGrad((...args) => {
  const inputs = args.slice(0, -1) as tf.Tensor[];
  const value = tf.tidy(() => {
    const n = inputs[0].shape[0];
    let ok: tf.Tensor = tf.ones([n], "bool");
    for (const t of inputs) {
      if (t.dtype === "bool") {
        ok = tf.logicalAnd(ok, t); // an extra keep mask
        continue;
      }
      const nan = tf.isNaN(t);
      const axes = [...Array(t.rank).keys()].slice(1);
      ok = tf.logicalAnd(ok, tf.logicalNot(axes.length ? tf.any(nan, axes) : nan));
    }
    return ok;
  });
  return { value, gradFunc: () => inputs.map((t) => tf.zeros(t.shape, "float32")) };
});

/** `keep` `[N]` reshaped to broadcast against a tensor of rank `rank`. */
function keepFor(keep: tf.Tensor1D, rank: number): tf.Tensor {
  return tf.reshape(keep, [keep.shape[0], ...Array(rank - 1).fill(1)]);
}

/**
 * x_n for kept samples, zeros for dropped ones (no NaN can leak through a product). The gradient
 * is `dy` masked the same way, and zero for `keep`: one custom op, so that differentiating it
 * does not go through tfjs' `Tile` gradient of the broadcast mask (one slice and one add per
 * pixel of the image).
 */
export function zeroDropped<T extends tf.Tensor>(x: T, keep: tf.Tensor1D): T {
  return zeroDroppedOp(x, keep) as T;
}

function maskRows(x: tf.Tensor, keep: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    // Broadcast as float32 (a block copy on every backend; tfjs-cpu tiles a bool tensor one
    // element at a time, 4 ms per [32, 32, 32, 1] mask), then compare.
    const rows = tf.cast(keepFor(keep as tf.Tensor1D, x.rank), "float32");
    const mask = tf.greater(tf.broadcastTo(rows, x.shape), 0.5);
    return tf.where(mask, x, tf.zerosLike(x));
  });
}

const zeroDroppedOp = tf.customGrad((...args) => {
  const [x, keep, save] = args as [tf.Tensor, tf.Tensor, tf.GradSaveFunc];
  save([keep]);
  return {
    value: maskRows(x, keep),
    gradFunc: (dy, saved) => [
      maskRows(dy as tf.Tensor, saved[0]),
      tf.zeros(saved[0].shape, "float32"),
    ],
  };
});

/**
 * Drops the samples whose `keep` entry is false from each tensor (boolean indexing along axis 0,
 * what the reference does). Asynchronous, with data-dependent shapes: use it for logging or
 * inspection; the losses themselves use the static-shape masking of {@linkcode zeroDropped}.
 */
export async function dropSamples(tensors: tf.Tensor[], keep: tf.Tensor1D): Promise<tf.Tensor[]> {
  return await Promise.all(tensors.map((t) => tf.booleanMaskAsync(t, keep)));
}

// ---------------------------------------------------------------------------------------------
// Losses

/** Result of a per-sample loss. */
export interface LossResult {
  /** Σ_n perSample_n, a scalar (before the ls/B-style scaling). */
  loss: tf.Scalar;
  /** One value per sample `[N]`; 0 for dropped samples. */
  perSample: tf.Tensor1D;
  /** `[N]` bool: samples kept by the NaN filter. */
  keep: tf.Tensor1D;
}

/** Inputs of {@linkcode sidGeneratorLoss}. */
export interface SidGeneratorLossInputs {
  /** x_g = G_θ(z), `[N, H, W, C]` (carries the gradient to θ). */
  xg: tf.Tensor4D;
  /** f^φ = teacher D(x_g + σε; σ, c, a=0), `[N, H, W, C]`. */
  yReal: tf.Tensor4D;
  /** f^ψ = fake-net D(x_g + σε; σ, c, a=0) in eval mode, `[N, H, W, C]`. */
  yFake: tf.Tensor4D;
  /** α (docs/distillation.md §2.3; 1.2 for SiD, 1 in the SiDA scripts). */
  alpha: number;
  /** Extra samples to drop (ANDed with the NaN filter). */
  keep?: tf.Tensor1D;
  /**
   * u_n, the fake net's log-variance at σ_n (`[N]` or `[N, 1, 1, 1]`; EDM2 with logvar): each
   * L_n is divided by e^{u_n} (`sid:sida_training_edm2/sida_loss_edm2.py:274-276`). Detached.
   */
  logvar?: tf.Tensor;
}

/** Result of {@linkcode sidGeneratorLoss}. */
export interface SidGeneratorLossResult extends LossResult {
  /** w_n `[N]`, detached (also divides the adversarial term, docs/distillation.md §3.5). */
  weightFactor: tf.Tensor1D;
}

/**
 * The SiD generator loss (docs/distillation.md §3.1, §2.2; `sida_loss.py:48-67`,
 * `training/sid_loss.py:39-55`):
 *
 *   w_n   = max( mean_{h,w,c} |x_g,n − f^φ_n| , 1e-5 )                       (detached)
 *   L_n   = Σ_{h,w,c} (f^φ − f^ψ) ⊙ [ (f^φ − x_g) − α (f^φ − f^ψ) ] / w_n
 *   loss  = Σ_n L_n
 *
 * The reference loop then scales by lsg/B (see {@linkcode generatorObjective}). Only w_n is
 * detached: gradients flow into x_g directly and through f^φ, f^ψ (docs/distillation.md §3.1, §9
 * pitfall 2).
 * With f^φ, f^ψ held fixed, ∂loss/∂x_g = −(f^φ − f^ψ)/w_n per pixel. The EDM weight λ(σ) is not
 * used here (docs/distillation.md §2.2), so σ is not an input.
 *
 * NaN filter: samples with a NaN in x_g, f^φ or f^ψ are dropped (docs/distillation.md §9 pitfall
 * 14).
 */
export function sidGeneratorLoss(inputs: SidGeneratorLossInputs): SidGeneratorLossResult {
  const { alpha } = inputs;
  return tf.tidy(() => {
    const u = inputs.logvar ? stopGradient(tf.reshape(inputs.logvar, [-1])) : undefined;
    const keep = sampleKeepMask(
      [inputs.xg, inputs.yReal, inputs.yFake, ...(u ? [u] : [])],
      inputs.keep,
    );
    const x = zeroDropped(inputs.xg, keep);
    const r = zeroDropped(inputs.yReal, keep);
    const f = zeroDropped(inputs.yFake, keep);
    // w_n: fp32, under no_grad, clipped at 1e-5 (docs/distillation.md §2.2, `sida_loss.py:64-65`).
    const w = stopGradient(
      tf.maximum(tf.mean(tf.abs(tf.sub(x, r)), [1, 2, 3]), 1e-5),
    ) as tf.Tensor1D;
    const d = tf.sub(r, f);
    const perPixel = tf.mul(d, tf.sub(tf.sub(r, x), tf.mul(alpha, d)));
    let per: tf.Tensor = tf.div(tf.sum(perPixel, [1, 2, 3]), w);
    if (u) per = tf.mul(per, tf.exp(tf.neg(zeroDropped(u, keep))));
    const perSample = tf.mul(per, tf.cast(keep, "float32")) as tf.Tensor1D;
    return { loss: tf.sum(perSample) as tf.Scalar, perSample, keep, weightFactor: w };
  });
}

/** Inputs of {@linkcode fakeScoreLoss}. */
export interface FakeScoreLossInputs {
  /** x̃_g: the (detached, optionally augmented) generator sample, `[N, H, W, C]`. */
  x: tf.Tensor4D;
  /** D̂ = f_ψ(x̃_g + σε; σ, c, a), `[N, H, W, C]` (fake net in train mode). */
  denoised: tf.Tensor4D;
  /** σ_n `[N]` from {@linkcode sampleFakeSigma}. */
  sigma: tf.Tensor1D;
  /** σ_d of λ(σ). Default 0.5. */
  sigmaData?: number;
  /** Extra samples to drop (ANDed with the NaN filter). */
  keep?: tf.Tensor1D;
  /**
   * u_n, the fake net's log-variance head at σ_n (`[N]` or `[N, 1, 1, 1]`, EDM2 networks'
   * `logvar`): when given, the EDM2 uncertainty-weighted form (see below).
   */
  logvar?: tf.Tensor;
}

/**
 * The fake-score (denoising) loss (docs/distillation.md §3.2; `training/sid_loss.py:58-74`,
 * `sida_loss.py:115`):
 *
 *   λ(σ) = (σ² + σ_d²)/(σ σ_d)²
 *   L_n  = λ(σ_n) · Σ_{h,w,c} ( D̂_n − x̃_g,n )²
 *   loss = Σ_n L_n                      (the loop scales by ls/B, {@linkcode fakeStepObjective})
 *
 * With `logvar` (EDM2, `--return_logvar 1`; `sid:sida_training_edm2/sida_loss_edm2.py:326-333`,
 * Eq. 21 of the EDM2 paper) each pixel's term is λ e^{−u_n} (D̂ − x̃_g)² + u_n, so
 *   L_n = λ(σ_n) e^{−u_n} Σ_{h,w,c} (D̂_n − x̃_g,n)² + H·W·C·u_n.
 *
 * NaN filter: samples with a NaN in x̃_g or D̂ (or u) are dropped. Gradient flows into D̂ (and
 * u) only in practice (x̃_g is produced under no-grad by the caller).
 */
export function fakeScoreLoss(inputs: FakeScoreLossInputs): LossResult {
  return tf.tidy(() => {
    const u = inputs.logvar ? tf.reshape(inputs.logvar, [-1]) : undefined;
    const keep = sampleKeepMask([inputs.x, inputs.denoised, ...(u ? [u] : [])], inputs.keep);
    const x = zeroDropped(inputs.x, keep);
    const d = zeroDropped(inputs.denoised, keep);
    const lambda = edmLossWeight(inputs.sigma, inputs.sigmaData ?? SIGMA_DATA);
    let per: tf.Tensor = tf.mul(lambda, tf.sum(tf.square(tf.sub(d, x)), [1, 2, 3]));
    if (u) {
      const uk = zeroDropped(u, keep);
      per = tf.add(tf.mul(per, tf.exp(tf.neg(uk))), tf.mul(uk, x.size / x.shape[0]));
    }
    const perSample = tf.mul(per, tf.cast(keep, "float32")) as tf.Tensor1D;
    return { loss: tf.sum(perSample) as tf.Scalar, perSample, keep };
  });
}

/** Mean of `softplus(sign·ℓ)` over the kept samples' N'·h·w entries (BCE-with-logits). */
function keptBceMean(logits: tf.Tensor, keep: tf.Tensor1D, sign: 1 | -1): tf.Scalar {
  const k = tf.cast(keepFor(keep, logits.rank), "float32");
  const l = zeroDropped(logits, keep);
  const sp = tf.mul(tf.softplus(sign === 1 ? l : tf.neg(l)), k);
  const perSampleEntries = logits.size / logits.shape[0];
  const count = tf.maximum(tf.mul(tf.sum(k), perSampleEntries), 1);
  return tf.div(tf.sum(sp), count) as tf.Scalar;
}

/** Inputs of {@linkcode sidaDiscriminatorLoss}. */
export interface DiscriminatorLossInputs {
  /** ℓ^f: logits of the noisy fake from the `encoder_decoder` pass, `[N, h, w, 1]`. */
  logitsFake: tf.Tensor4D;
  /** ℓ^r: logits of the noisy real (same noise, σ, label) from the `encoder` pass, `[N, h, w, 1]`. */
  logitsReal: tf.Tensor4D;
  /** σ_n `[N]` (the fake-score σ, shared by fake and real). */
  sigma: tf.Tensor1D;
  /** σ_d of λ(σ). Default 0.5. */
  sigmaData?: number;
  /** Extra samples to drop (ANDed with the NaN filter on the logits). */
  keep?: tf.Tensor1D;
}

/** Result of {@linkcode sidaDiscriminatorLoss}. */
export interface DiscriminatorLossResult extends LossResult {
  /** BCE_real = mean softplus(−ℓ^r) over the kept N'·h·w entries. */
  bceReal: tf.Scalar;
  /** BCE_fake = mean softplus(ℓ^f) over the kept N'·h·w entries. */
  bceFake: tf.Scalar;
}

/**
 * The SiDA discriminator loss (docs/distillation.md §3.4 steps 6-7; `sida_loss.py:118-123`):
 *
 *   BCE_real = (1/(N'·h·w)) Σ_{n,i,j} softplus(−ℓ^r_{n,i,j})     (target 1, PyTorch mean)
 *   BCE_fake = (1/(N'·h·w)) Σ_{n,i,j} softplus( ℓ^f_{n,i,j})     (target 0)
 *   L_D,n    = λ(σ_n) · (BCE_real + BCE_fake) / 2
 *   loss     = Σ_n L_D,n = (Σ_n λ_n) · (BCE_real + BCE_fake)/2    (the loop scales by lsd/B)
 *
 * The BCE means pool over the whole micro-batch and every spatial position (N' = kept samples),
 * so each sample's weight multiplies a batch-level scalar (docs/distillation.md §9 pitfall 7). No
 * clamping
 * (docs/distillation.md §9 pitfall 8). NaN filter: samples with a NaN in ℓ^f or ℓ^r are dropped;
 * pass the
 * images' mask through `keep` (or use {@linkcode fakeScoreDiscriminatorLoss}).
 */
export function sidaDiscriminatorLoss(inputs: DiscriminatorLossInputs): DiscriminatorLossResult {
  return tf.tidy(() => {
    const keep = sampleKeepMask([inputs.logitsFake, inputs.logitsReal], inputs.keep);
    const bceReal = keptBceMean(inputs.logitsReal, keep, -1);
    const bceFake = keptBceMean(inputs.logitsFake, keep, 1);
    const lambda = edmLossWeight(inputs.sigma, inputs.sigmaData ?? SIGMA_DATA);
    const lambdaKept = zeroDropped(lambda, keep);
    const perSample = tf.mul(lambdaKept, tf.div(tf.add(bceReal, bceFake), 2)) as tf.Tensor1D;
    return { loss: tf.sum(perSample) as tf.Scalar, perSample, keep, bceReal, bceFake };
  });
}

/** Inputs of {@linkcode fakeScoreDiscriminatorLoss}: the union of both losses' inputs. */
export interface FakeScoreDiscriminatorInputs {
  /** x̃_g `[N, H, W, C]`. */
  x: tf.Tensor4D;
  /** D̂ `[N, H, W, C]` from the `encoder_decoder` pass. */
  denoised: tf.Tensor4D;
  /** ℓ^f `[N, h, w, 1]` from the same pass. */
  logitsFake: tf.Tensor4D;
  /** ℓ^r `[N, h, w, 1]` from the `encoder` pass on the noisy real. */
  logitsReal: tf.Tensor4D;
  /** σ_n `[N]`. */
  sigma: tf.Tensor1D;
  /** σ_d. Default 0.5. */
  sigmaData?: number;
  /** u_n, the fake net's log-variance at σ_n (EDM2 with logvar; see {@linkcode fakeScoreLoss}). */
  logvar?: tf.Tensor;
}

/**
 * The joint fake-score + discriminator loss of one SiDA step-A micro-batch (docs/distillation.md
 * §3.4,
 * `sida_loss.py:77-126`): one NaN filter over x̃_g, D̂, ℓ^f and ℓ^r (step 4) shared by
 * {@linkcode fakeScoreLoss} (step 5) and {@linkcode sidaDiscriminatorLoss} (steps 6-7).
 */
export function fakeScoreDiscriminatorLoss(
  inputs: FakeScoreDiscriminatorInputs,
): { fake: LossResult; disc: DiscriminatorLossResult; keep: tf.Tensor1D } {
  const keep = sampleKeepMask([inputs.x, inputs.denoised, inputs.logitsFake, inputs.logitsReal]);
  const fake = fakeScoreLoss({ ...inputs, keep });
  const disc = sidaDiscriminatorLoss({ ...inputs, keep });
  return { fake, disc, keep };
}

/** Inputs of {@linkcode sidaGeneratorAdversarialLoss}. */
export interface GeneratorAdversarialInputs {
  /**
   * ℓ `[N, h, w, 1]`: logits from the same `encoder_decoder` call that produced f^ψ of
   * {@linkcode sidGeneratorLoss} (fake net in eval mode, a = 0).
   */
  logits: tf.Tensor4D;
  /** w_n `[N]` from {@linkcode sidGeneratorLoss} (detached). */
  weightFactor: tf.Tensor1D;
  /** C·H·W of the generator output (3072 for 3×32×32). */
  chw: number;
  /** Samples kept by the SiD loss's NaN filter (its `keep`). Default: all. */
  keep?: tf.Tensor1D;
  /**
   * Whether the BCE mean also excludes the dropped samples' logits (and NaN logits drop a sample).
   * Default false: the EDM loss does not filter ℓ (docs/distillation.md §3.5,
   * `sida_loss.py:48-62`), so the
   * mean runs over all N·h·w logits; the EDM2 loss does filter (true).
   */
  filterLogits?: boolean;
  /**
   * u_n `[N]` or `[N, 1, 1, 1]` (EDM2 with logvar): each L_GAN,n is divided by e^{u_n}
   * (`sid:sida_training_edm2/sida_loss_edm2.py:281-283`). Detached.
   */
  logvar?: tf.Tensor;
}

/** Result of {@linkcode sidaGeneratorAdversarialLoss}. */
export interface GeneratorAdversarialResult extends LossResult {
  /** BCE_G, the batch-level scalar. */
  bce: tf.Scalar;
}

/**
 * The logit clamp of the generator-side BCE only (docs/distillation.md §3.5, `sida_loss.py:72`).
 */
export const GENERATOR_LOGIT_CLAMP = 10;

/**
 * The SiDA generator adversarial term (docs/distillation.md §3.5; `sida_loss.py:69-73`, loop
 * `sida_training_loop.py:402-405`):
 *
 *   BCE_G    = mean_{n,i,j} softplus( −clip(ℓ_{n,i,j}, −10, 10) )     (target 1, non-saturating)
 *   L_GAN,n  = C·H·W · BCE_G / w_n
 *   loss     = Σ_n L_GAN,n = C·H·W · BCE_G · Σ_n 1/w_n            (the loop scales by lsg_gan/B)
 *
 * The ±10 clamp acts here only (the discriminator loss has none) and zeroes the gradient of any
 * logit outside [−10, 10] (PyTorch `clamp` passes gradient on the closed interval, as
 * `tf.clipByValue` does). w_n is detached. Samples dropped by the SiD loss's NaN filter are left
 * out of Σ_n (their w_n is filtered in the reference); see `filterLogits` for the BCE mean.
 */
export function sidaGeneratorAdversarialLoss(
  inputs: GeneratorAdversarialInputs,
): GeneratorAdversarialResult {
  const { chw } = inputs;
  return tf.tidy(() => {
    const n = inputs.logits.shape[0];
    const given = inputs.keep ?? (tf.ones([n], "bool") as tf.Tensor1D);
    const keep = inputs.filterLogits ? sampleKeepMask([inputs.logits], given) : given;
    const clipped = tf.clipByValue(inputs.logits, -GENERATOR_LOGIT_CLAMP, GENERATOR_LOGIT_CLAMP);
    const bce = inputs.filterLogits
      ? keptBceMean(clipped, keep, -1)
      : tf.mean(tf.softplus(tf.neg(clipped))) as tf.Scalar;
    const w = stopGradient(inputs.weightFactor);
    let per: tf.Tensor = tf.div(tf.mul(bce, chw), w);
    if (inputs.logvar) {
      const u = zeroDropped(stopGradient(tf.reshape(inputs.logvar, [-1])), keep);
      per = tf.mul(per, tf.exp(tf.neg(u)));
    }
    const perSample = tf.mul(per, tf.cast(keep, "float32")) as tf.Tensor1D;
    return { loss: tf.sum(perSample) as tf.Scalar, perSample, keep: tf.clone(keep), bce };
  }) as GeneratorAdversarialResult;
}

// ---------------------------------------------------------------------------------------------
// Combination and warm-up gates

/**
 * No generator optimizer step while cur_nimg ≤ this, in SiDA (docs/distillation.md §3.6, §9 pitfall
 * 10).
 */
export const G_STEP_WARMUP_NIMG = 100_000;
/** No adversarial term in the generator loss while cur_nimg ≤ this (docs/distillation.md §3.6). */
export const GAN_WARMUP_NIMG = 200_000;

/** Inputs of {@linkcode generatorObjective}. */
export interface GeneratorObjectiveInputs {
  /** Σ_n L_SiD,n: `loss` of {@linkcode sidGeneratorLoss}. */
  sid: tf.Scalar;
  /** Σ_n L_GAN,n: `loss` of {@linkcode sidaGeneratorAdversarialLoss} (needed when `ganActive`). */
  gan?: tf.Scalar;
  /** `--lsg` (loss_scaling_G): 100 in every script. */
  lsg: number;
  /** `--lsg_gan` (loss_scaling_G_gan): 0.01 in every SiDA script. */
  lsgGan?: number;
  /** B: per-device samples per iteration (`batch_gpu_total` = micro-batch × rounds). */
  batchTotal: number;
  /** The GAN gate (`warmupGates` of `distiller.ts`). */
  ganActive: boolean;
}

/**
 * The generator objective of one accumulation round (docs/distillation.md §3.6,
 * `sida_training_loop.py:404-413`):
 *
 *   ganActive:   J_B = ½·(lsg/B)·Σ_n L_SiD,n + ½·(lsg_gan/B)·Σ_n L_GAN,n
 *   otherwise:   J_B = (lsg/B)·Σ_n L_SiD,n
 *
 * The ½/½ mix is hard-coded in the reference. Plain SiD uses `ganActive: false`.
 */
export function generatorObjective(inputs: GeneratorObjectiveInputs): tf.Scalar {
  const { lsg, batchTotal } = inputs;
  return tf.tidy(() => {
    const sid = tf.mul(inputs.sid, lsg / batchTotal);
    if (!inputs.ganActive) return sid as tf.Scalar;
    if (!inputs.gan || inputs.lsgGan === undefined) {
      throw new RangeError("generatorObjective: ganActive needs gan and lsgGan");
    }
    const gan = tf.mul(inputs.gan, inputs.lsgGan / batchTotal);
    return tf.add(tf.mul(sid, 0.5), tf.mul(gan, 0.5)) as tf.Scalar;
  });
}

/** Inputs of {@linkcode fakeStepObjective}. */
export interface FakeStepObjectiveInputs {
  /** Σ_n L_fake,n: `loss` of {@linkcode fakeScoreLoss}. */
  fake: tf.Scalar;
  /** Σ_n L_D,n: `loss` of {@linkcode sidaDiscriminatorLoss} (SiDA only). */
  disc?: tf.Scalar;
  /** `--ls` (loss_scaling): 1 in every script. */
  ls: number;
  /** `--lsd` (loss_scaling_D): 1 (EDM) or 100 (EDM2). */
  lsd?: number;
  /** B: per-device samples per iteration. */
  batchTotal: number;
}

/**
 * The fake-network (step A) objective of one accumulation round (docs/distillation.md §3.4 step 8,
 * §3.7,
 * `sida_training_loop.py:357-366`):
 *
 *   SiDA:       J_A = (ls/B)·Σ_n L_fake,n + (lsd/B)·Σ_n L_D,n
 *   plain SiD:  J_A = (ls/B)·Σ_n L_fake,n
 */
export function fakeStepObjective(inputs: FakeStepObjectiveInputs): tf.Scalar {
  const { ls, batchTotal } = inputs;
  return tf.tidy(() => {
    const fake = tf.mul(inputs.fake, ls / batchTotal);
    if (!inputs.disc) return fake as tf.Scalar;
    if (inputs.lsd === undefined) throw new RangeError("fakeStepObjective: disc needs lsd");
    return tf.add(fake, tf.mul(inputs.disc, inputs.lsd / batchTotal)) as tf.Scalar;
  });
}
