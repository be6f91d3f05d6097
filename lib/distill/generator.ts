/**
 * The one-step generator of SiD / SiDA / SiD²A (docs/distillation.md §1.2): the denoiser evaluated
 * at the
 * fixed noise level σ_init on pure noise of standard deviation σ_init,
 *
 *   z = σ_init·ε,  ε ~ N(0, I),   x_g = G_θ(z; σ_init, c, a = 0)
 *     = c_skip(σ_init)·z + c_out(σ_init)·F_θ(c_in(σ_init)·z; c_noise(σ_init), c, 0),
 *
 * with σ_init = 2.5 in every released script (docs/distillation.md §1.2, §9 pitfall 1). The
 * augmentation label
 * is a zero vector whenever the network has an augmentation embedding (docs/distillation.md §1.2,
 * §9 pitfall 13).
 * The same function draws samples during training (step A without gradient, step B with) and for
 * evaluation (`G_ema`, eval mode).
 *
 * @example
 * ```ts
 * import { createNetwork, preset } from "../nets/network.ts";
 * import { generate } from "./generator.ts";
 * const G = createNetwork(preset("mnist"), { seed: 0 });
 * const x = generate(G, { n: 4, seed: 1 }); // [4, 32, 32, 1], one network call
 * x.dispose();
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { EDMPrecond } from "../nets/precond.ts";
import type { EDM2Precond } from "../nets/edm2.ts";
import { type RandomSource, seededRandom } from "../runtime/random.ts";

/**
 * σ_init, the generator's fixed input noise level (docs/distillation.md §1.2, `--init_sigma 2.5`).
 */
export const DEFAULT_INIT_SIGMA = 2.5;

/** Options of {@linkcode generate}. */
export interface GenerateOptions {
  /**
   * One-hot class labels `[N, labelDim]` (a real sample's label in training, docs/distillation.md
   * §1.2).
   */
  labels?: tf.Tensor2D;
  /** σ_init. Default 2.5 (docs/distillation.md §1.2). */
  initSigma?: number;
  /**
   * Training mode (dropout on): only for G's own update (docs/distillation.md §4.4). Default false.
   */
  training?: boolean;
}

/**
 * Standard normal noise ε of a generator's output shape, `[n, H, W, C]`, drawn on the host from
 * `rng` (so a seeded draw is the same on every backend).
 */
export function generatorNoise(
  G: EDMPrecond | EDM2Precond,
  n: number,
  rng: RandomSource,
): tf.Tensor4D {
  const r = G.imgResolution;
  const c = G.imgChannels;
  const eps = rng.normal(n * r * r * c);
  return tf.tensor4d(Float32Array.from(eps), [n, r, r, c], "float32");
}

/**
 * Zero augmentation labels `[n, augmentDim]` when the network has an augmentation embedding, else
 * undefined (docs/distillation.md §1.2: G, and every network call of the G step, gets `a = 0`).
 */
export function zeroAugmentLabels(
  net: EDMPrecond | EDM2Precond,
  n: number,
): tf.Tensor2D | undefined {
  return net.augmentDim > 0 ? tf.zeros([n, net.augmentDim]) as tf.Tensor2D : undefined;
}

/**
 * One-step generation (docs/distillation.md §1.2): x_g = G(σ_init·ε; σ_init, labels, a = 0).
 *
 * @param G the generator (or its EMA copy), an EDM-preconditioned network.
 * @param noise ε `[N, H, W, C]` (standard normal; it is multiplied by σ_init here), or
 *   `{n, seed}` to draw ε from {@linkcode seededRandom}`(seed)`.
 * @param options labels, σ_init (default 2.5), training mode (default eval).
 * @returns x_g `[N, H, W, C]`, roughly in [−1, 1]. Differentiable with respect to G's variables
 *   when called under `tf.variableGrads`.
 */
export function generate(
  G: EDMPrecond | EDM2Precond,
  noise: tf.Tensor4D | { n: number; seed: number },
  options: GenerateOptions = {},
): tf.Tensor4D {
  const initSigma = options.initSigma ?? DEFAULT_INIT_SIGMA;
  if (!(initSigma > 0) || !Number.isFinite(initSigma)) {
    throw new RangeError(`initSigma must be a positive number, got ${initSigma}`);
  }
  return tf.tidy(() => {
    const eps = noise instanceof tf.Tensor
      ? noise
      : generatorNoise(G, noise.n, seededRandom(noise.seed));
    const n = eps.shape[0];
    const z = tf.mul(eps, initSigma) as tf.Tensor4D;
    return G.denoise(z, initSigma, {
      labels: options.labels,
      augmentLabels: zeroAugmentLabels(G, n),
      training: options.training ?? false,
    });
  });
}
