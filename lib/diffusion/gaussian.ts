/**
 * The exact denoiser of a Gaussian data set with independent pixels: a ground truth for testing
 * samplers, distillation losses and anything else that takes a {@linkcode Denoiser}.
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { GaussianDenoiser } from "./gaussian.ts";
 * const net = new GaussianDenoiser({ imgResolution: 8, imgChannels: 3, mean: 0.1, std: 0.5 });
 * const x = tf.randomNormal([4, 8, 8, 3]) as tf.Tensor4D;
 * const d = net.denoise(x, 1.0); // 0.1 + 0.2 * (x - 0.1)
 * d.dispose();
 * x.dispose();
 * net.dispose();
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { DenoiseOptions, Denoiser, DenoiseResult, ReturnFlag } from "../nets/types.ts";

/** Options of the {@linkcode GaussianDenoiser} constructor. */
export interface GaussianDenoiserOptions {
  /** Image height and width. */
  imgResolution: number;
  /** Image channels. */
  imgChannels: number;
  /** The data mean: one number, or a mean image `[H, W, C]` (copied). */
  mean: number | tf.Tensor3D;
  /** The per-pixel data standard deviation: one number, or an image `[H, W, C]` (copied). */
  std: number | tf.Tensor3D;
  /** Number of classes: always 0 (the data set is unconditional). */
  labelDim?: 0;
}

function checkImage(name: string, v: number | tf.Tensor3D, r: number, c: number): void {
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new RangeError(`${name} must be finite, got ${v}`);
    return;
  }
  const [h, w, ch] = v.shape;
  if (v.rank !== 3 || h !== r || w !== r || ch !== c) {
    throw new RangeError(`${name} must have shape [${r}, ${r}, ${c}], got [${v.shape}]`);
  }
}

/**
 * The exact denoiser D(x; σ) = E[x₀ | x₀ + σ·n = x] of data x₀ ~ N(μ, diag(s²)) (per-pixel
 * mean image μ and standard deviation s, independent pixels):
 *
 *   D(x; σ) = μ + s² / (s² + σ²) · (x − μ).
 *
 * `sigmaMin` is 0 and `sigmaMax` is Infinity, like EDMPrecond. There is no encoder:
 * `returnFlag` other than `"decoder"` throws. Labels are ignored (`labelDim` is 0). At σ = 0 a
 * pixel with s = 0 gives NaN (0/0).
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { GaussianDenoiser } from "./gaussian.ts";
 * const mean = tf.zeros([8, 8, 1]) as tf.Tensor3D;
 * const net = new GaussianDenoiser({ imgResolution: 8, imgChannels: 1, mean, std: 0.5 });
 * const x = tf.ones([2, 8, 8, 1]) as tf.Tensor4D;
 * const d = net.denoise(x, [0.5, 1.0]); // per-sample sigmas: 0.5 and 0.2 everywhere
 * ```
 */
export class GaussianDenoiser implements Denoiser {
  /** Image height and width. */
  readonly imgResolution: number;
  /** Image channels. */
  readonly imgChannels: number;
  /** Always 0. */
  readonly labelDim = 0;
  /** Always 0. */
  readonly sigmaMin = 0;
  /** Always Infinity. */
  readonly sigmaMax = Infinity;
  /** The mean image `[H, W, C]` or scalar (owned). */
  readonly mean: tf.Tensor;
  /** The per-pixel variance s² `[H, W, C]` or scalar (owned). */
  readonly variance: tf.Tensor;
  #disposed = false;

  /** Builds the denoiser; tensors in `options` are copied (the caller keeps ownership). */
  constructor(options: GaussianDenoiserOptions) {
    const { imgResolution, imgChannels, mean, std } = options;
    for (const [name, v] of [["imgResolution", imgResolution], ["imgChannels", imgChannels]]) {
      if (!Number.isInteger(v) || (v as number) < 1) {
        throw new RangeError(`${name} must be a positive integer, got ${v}`);
      }
    }
    if ((options.labelDim ?? 0) !== 0) {
      throw new RangeError(`GaussianDenoiser is unconditional: labelDim must be 0`);
    }
    checkImage("mean", mean, imgResolution, imgChannels);
    checkImage("std", std, imgResolution, imgChannels);
    this.imgResolution = imgResolution;
    this.imgChannels = imgChannels;
    this.mean = tf.keep(typeof mean === "number" ? tf.scalar(mean) : tf.clone(mean));
    this.variance = tf.keep(
      tf.tidy(() => typeof std === "number" ? tf.scalar(std * std) : tf.square(std)),
    );
  }

  /**
   * D(x; σ) for NHWC images `x` `[N, H, W, C]` and one σ for the batch or one per sample
   * (`number[]` or a tensor of N values). Only `returnFlag: "decoder"` (the default) is supported.
   */
  denoise<F extends ReturnFlag = "decoder">(
    x: tf.Tensor4D,
    sigma: number | number[] | tf.Tensor,
    options: DenoiseOptions<F> = {},
  ): DenoiseResult<F> {
    if (this.#disposed) throw new Error("GaussianDenoiser: used after dispose()");
    const flag = options.returnFlag ?? "decoder";
    if (flag !== "decoder") {
      throw new Error(`GaussianDenoiser has no encoder: returnFlag '${flag}' is not supported`);
    }
    const [n, h, w, c] = x.shape;
    if (x.rank !== 4 || h !== this.imgResolution || w !== this.imgResolution) {
      throw new RangeError(
        `x must have shape [N, ${this.imgResolution}, ${this.imgResolution}, ${this.imgChannels}]` +
          `, got [${x.shape}]`,
      );
    }
    if (c !== this.imgChannels) {
      throw new RangeError(`x has ${c} channels, expected ${this.imgChannels}`);
    }
    return tf.tidy(() => {
      let sig: tf.Tensor;
      if (typeof sigma === "number") {
        sig = tf.scalar(sigma);
      } else {
        const s = Array.isArray(sigma) ? tf.tensor1d(sigma) : tf.cast(sigma, "float32");
        if (s.size === 1) sig = tf.reshape(s, []);
        else if (s.size === n) sig = tf.reshape(s, [n, 1, 1, 1]);
        else throw new RangeError(`sigma has ${s.size} values, expected 1 or ${n}`);
      }
      // D = μ + k·(x − μ) = k·x + (1 − k)·μ with k = s² / (s² + σ²): the coefficients are
      // image- or batch-sized, so only two full-size operations touch x.
      const k = tf.div(this.variance, tf.add(this.variance, tf.square(sig)));
      return tf.add(tf.mul(x, k), tf.mul(tf.sub(1, k), this.mean));
    }) as DenoiseResult<F>;
  }

  /** Frees the mean and variance tensors. Further `denoise` calls throw. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.mean.dispose();
    this.variance.dispose();
  }
}
