/**
 * Shared types of the network API.
 *
 * @module
 */
import type { tf } from "../deps.ts";

/** What a denoiser call returns: the denoised image, the encoder logits, or both. */
export type ReturnFlag = "decoder" | "encoder" | "encoder_decoder";

/** Options of {@linkcode Denoiser.denoise}. */
export interface DenoiseOptions<F extends ReturnFlag = ReturnFlag> {
  /** One-hot (or soft) class labels `[N, labelDim]`; zeros when omitted for a conditional net. */
  labels?: tf.Tensor2D;
  /** Augmentation labels `[N, augmentDim]`; when omitted the augment embedding is skipped. */
  augmentLabels?: tf.Tensor2D;
  /**
   * `decoder` (default): the denoised image. `encoder`: only the SiDA discriminator logits
   * `[N, h, w, 1]`, the channel mean of the last encoder block's output (the decoder does not
   * run). `encoder_decoder`: both, as `{denoised, logits}`.
   */
  returnFlag?: F;
  /** Training mode: dropout and label dropout are active. Default false. */
  training?: boolean;
}

/** The result type of `denoise` for a given return flag. */
export type DenoiseResult<F extends ReturnFlag> = F extends "encoder" ? tf.Tensor4D
  : F extends "encoder_decoder" ? { denoised: tf.Tensor4D; logits: tf.Tensor4D }
  : tf.Tensor4D;

/**
 * Anything that denoises NHWC images at a noise level: an EDM network, or an analytic denoiser
 * such as the exact one of a Gaussian data set. Samplers accept any `Denoiser`.
 */
export interface Denoiser {
  /** Image height and width. */
  readonly imgResolution: number;
  /** Image channels. */
  readonly imgChannels: number;
  /** Number of classes (0 for unconditional). */
  readonly labelDim: number;
  /** Lowest noise level the model supports (0 for EDMPrecond). */
  readonly sigmaMin: number;
  /** Highest noise level the model supports (Infinity for EDMPrecond). */
  readonly sigmaMax: number;
  /**
   * D(x; sigma): the denoised estimate of clean images from noisy ones.
   *
   * @param x noisy images, NHWC `[N, H, W, C]`, float32.
   * @param sigma the noise level: one number for the batch, or one per sample (`number[]` or a
   *   tensor of `N` values).
   */
  denoise<F extends ReturnFlag = "decoder">(
    x: tf.Tensor4D,
    sigma: number | number[] | tf.Tensor,
    options?: DenoiseOptions<F>,
  ): DenoiseResult<F>;
}
