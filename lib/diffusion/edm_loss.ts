/**
 * The EDM denoising loss used to train teachers (`edm:training/loss.py`, `EDMLoss`):
 *
 *   σ = exp(P_mean + P_std·ξ),  ξ ~ N(0, 1) per sample
 *   λ(σ) = (σ² + σd²) / (σ·σd)²
 *   L = (1/N) Σ_i Σ_pixels λ(σ_i)·(D(y_i + n_i; σ_i, c_i) − y_i)²,  n_i ~ N(0, σ_i² I)
 *
 * (EDM sums the per-element loss and scales it by 1/batch, which is what `loss` is here.)
 *
 * @example
 * ```ts
 * import { edmLoss } from "./edm_loss.ts";
 * import { seededRandom } from "../runtime/random.ts";
 * const { loss } = edmLoss(net, images, { labels, rng: seededRandom(1) });
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { Denoiser } from "../nets/types.ts";
import type { RandomSource } from "../runtime/random.ts";

/** Options of {@linkcode edmLoss}. */
export interface EdmLossOptions {
  /** One-hot labels `[N, labelDim]` for a conditional network. */
  labels?: tf.Tensor2D;
  /** Augmentation labels `[N, augmentDim]` when the images were augmented. */
  augmentLabels?: tf.Tensor2D;
  /** Host random source for σ and the noise (seeded: same draws on every backend). */
  rng?: RandomSource;
  /** Fixed noise levels `[N]` instead of drawing them (tests, evaluation of the loss). */
  sigma?: tf.Tensor1D;
  /** Fixed standard-normal noise `[N, H, W, C]` instead of drawing it. */
  noise?: tf.Tensor4D;
  /** Log-normal location of σ. Default −1.2 (EDM). */
  pMean?: number;
  /** Log-normal scale of σ. Default 1.2 (EDM). */
  pStd?: number;
  /** σ_data. Default 0.5. */
  sigmaData?: number;
  /** Training mode for the network (dropout). Default true. */
  training?: boolean;
}

/** What {@linkcode edmLoss} returns. */
export interface EdmLossResult {
  /** The scalar loss: per-element weighted squared error summed, divided by N. */
  loss: tf.Scalar;
  /** Per-sample sums `[N]`. */
  perSample: tf.Tensor1D;
  /** The noise levels used `[N]`. */
  sigma: tf.Tensor1D;
}

/** The EDM loss of a denoiser on clean images `y` (NHWC in [-1, 1]); see the module doc. */
export function edmLoss(net: Denoiser, images: tf.Tensor4D, o: EdmLossOptions = {}): EdmLossResult {
  const [n, h, w, c] = images.shape;
  const sd = o.sigmaData ?? 0.5;
  const pMean = o.pMean ?? -1.2;
  const pStd = o.pStd ?? 1.2;
  if (!o.sigma && !o.rng) throw new Error("edmLoss needs either sigma or rng");
  if (!o.noise && !o.rng) throw new Error("edmLoss needs either noise or rng");
  return tf.tidy(() => {
    const sigma = o.sigma ? tf.clone(o.sigma) : tf.tensor1d(
      Array.from(o.rng!.normal(n), (xi) => Math.exp(pMean + pStd * xi)),
      "float32",
    );
    const eps = o.noise ??
      tf.tensor4d(Float32Array.from(o.rng!.normal(n * h * w * c)), [n, h, w, c]);
    const s4 = tf.reshape(sigma, [n, 1, 1, 1]);
    const weight = tf.div(tf.add(tf.square(s4), sd * sd), tf.square(tf.mul(s4, sd)));
    const noisy = tf.add(images, tf.mul(eps, s4)) as tf.Tensor4D;
    const d = net.denoise(noisy, sigma, {
      labels: o.labels,
      augmentLabels: o.augmentLabels,
      training: o.training ?? true,
    });
    const perSample = tf.sum(tf.mul(weight, tf.square(tf.sub(d, images))), [
      1,
      2,
      3,
    ]) as tf.Tensor1D;
    const loss = tf.div(tf.sum(perSample), n) as tf.Scalar;
    return { loss, perSample, sigma };
  });
}
