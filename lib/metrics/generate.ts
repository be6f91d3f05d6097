/**
 * Drawing images from a one-step generator (or a teacher with the EDM sampler) for evaluation,
 * as SiD's metric code does (`docs/distillation.md` §1.2, §7.1): z = σ_init·ε, labels uniform over
 * the
 * classes for a conditional net, x = G(z; σ_init, c) with zero augment labels, pixels
 * clamp(127.5·x + 128, 0, 255) → uint8. Also PNG grids of samples.
 *
 * @module
 */
import { fastPng, tf } from "../deps.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { edmSampler, toUint8Images } from "../diffusion/sampler.ts";
import type { EDMPrecond } from "../nets/precond.ts";
import type { EDM2Precond } from "../nets/edm2.ts";
import { mulberry32 as rng } from "../runtime/random.ts";
import { decodeLatentsToUint8, type VaeDecoder } from "../nets/vae.ts";
import { UsageError } from "../runtime/cli.ts";

/** σ_init of the SiD generators (`docs/distillation.md` §1.2). */
export const SIGMA_INIT = 2.5;

/** Options of {@linkcode generateBatches}. */
export interface GenerateOptions {
  /** Number of images. */
  num: number;
  /** Base seed of the latents and labels (default 0). */
  seed?: number;
  /** Images per generator call (default 16). */
  batch?: number;
  /** Class of every image (conditional nets); default: uniform random classes. */
  classLabel?: number;
  /** `onestep` (default): x = G(σ_init·z; σ_init). `heun`: EDM sampler with `steps` steps. */
  sampler?: "onestep" | "heun";
  /** Steps of the EDM sampler (default 18). */
  steps?: number;
  /** σ_init of the one-step generator (default 2.5). */
  sigmaInit?: number;
  /**
   * The VAE decoder of a latent generator (EDM2 `img512`): its samples are EDM2-normalised
   * latents, decoded to RGB images here (NVlabs/edm2 `training/encoders.py:125-132`).
   */
  vae?: VaeDecoder;
}

/**
 * Whether a network makes latents rather than pixels: 4 channels (the SD VAE's latent; no
 * pixel data set has 4).
 */
export function isLatentNetwork(net: { imgChannels: number }): boolean {
  return net.imgChannels === 4;
}

/**
 * The images `net` yields through {@linkcode generateBatches}: its own resolution and channels,
 * or, decoded by `vae`, the VAE's (×2 per upsampling level, RGB).
 *
 * @throws {RangeError} when the VAE does not fit the network (latent channels), or a latent
 *   network has no VAE.
 */
export function outputImageShape(
  net: { imgResolution: number; imgChannels: number },
  vae?: VaeDecoder,
): { resolution: number; channels: number } {
  if (!vae) {
    if (isLatentNetwork(net)) {
      throw new RangeError(
        "the network makes 4-channel latents: give the VAE that decodes them (--vae <sd-vae-ft-mse folder>)",
      );
    }
    return { resolution: net.imgResolution, channels: net.imgChannels };
  }
  if (vae.config.latentChannels !== net.imgChannels) {
    throw new RangeError(
      `the VAE decodes ${vae.config.latentChannels}-channel latents, the network makes ${net.imgChannels} channels`,
    );
  }
  const levels = vae.config.blockOutChannels.length;
  return { resolution: net.imgResolution * 2 ** (levels - 1), channels: vae.config.outChannels };
}

/** A batch of generated images: HWC uint8 pixels one image after the other, and labels. */
export interface GeneratedBatch {
  /** Index of the first image of the batch. */
  start: number;
  /** Number of images. */
  n: number;
  /** `[n, H, W, C]` uint8 (decoded RGB for a latent generator with a VAE). */
  pixels: Uint8Array;
  /** H = W of the images. */
  resolution: number;
  /** C of the images. */
  channels: number;
  /** Class of each image (-1 for an unconditional net). */
  labels: Int32Array;
}

/**
 * Generates `num` images in batches (deterministic for a seed on a given backend). Tensors
 * created per batch are freed before the batch is yielded.
 *
 * @throws {RangeError} on a bad count, batch or class.
 */
export async function* generateBatches(
  net: EDMPrecond | EDM2Precond,
  options: GenerateOptions,
): AsyncGenerator<GeneratedBatch> {
  const { num, seed = 0, batch = 16, sampler = "onestep", steps = 18 } = options;
  const sigmaInit = options.sigmaInit ?? SIGMA_INIT;
  if (!Number.isInteger(num) || num < 1) throw new RangeError(`num must be ≥ 1, got ${num}`);
  if (!Number.isInteger(batch) || batch < 1) throw new RangeError(`batch must be ≥ 1`);
  const labelDim = net.labelDim;
  if (options.classLabel !== undefined) {
    if (!labelDim) throw new RangeError("--class given for an unconditional network");
    if (
      !Number.isInteger(options.classLabel) || options.classLabel < 0 ||
      options.classLabel >= labelDim
    ) {
      throw new RangeError(`class must be in 0..${labelDim - 1}, got ${options.classLabel}`);
    }
  }
  const res = net.imgResolution;
  const ch = net.imgChannels;
  const shape = outputImageShape(net, options.vae);
  const rand = rng(seed ^ 0x9e3779b9);
  for (let start = 0; start < num; start += batch) {
    const n = Math.min(batch, num - start);
    const labels = new Int32Array(n).fill(-1);
    if (labelDim) {
      for (let i = 0; i < n; i++) {
        labels[i] = options.classLabel ?? Math.min(labelDim - 1, Math.floor(rand() * labelDim));
      }
    }
    const z = tf.randomNormal(
      [n, res, res, ch],
      0,
      1,
      "float32",
      (seed * 1000003 + start + 1) | 0,
    ) as tf.Tensor4D;
    const oneHot = labelDim
      ? tf.tidy(() => tf.oneHot(tf.tensor1d(labels, "int32"), labelDim)) as tf.Tensor2D
      : undefined;
    const aug = net.augmentDim ? tf.zeros([n, net.augmentDim]) as tf.Tensor2D : undefined;
    let x: tf.Tensor4D;
    try {
      if (sampler === "heun") {
        x = await edmSampler(net, { latents: z, labels: oneHot, numSteps: steps });
      } else {
        x = tf.tidy(() =>
          net.denoise(tf.mul(z, sigmaInit) as tf.Tensor4D, sigmaInit, {
            labels: oneHot,
            augmentLabels: aug,
          })
        );
      }
    } finally {
      tf.dispose([z, oneHot, aug].filter((t) => t !== undefined) as tf.Tensor[]);
    }
    // A generator that outputs NaN is broken: refuse it rather than evaluate black pixels.
    let pixels: Uint8Array;
    try {
      pixels = options.vae
        ? await decodeFinite(options.vae, x)
        : await toUint8Images(x, { nonFinite: "error" });
    } finally {
      x.dispose();
    }
    yield { start, n, pixels, labels, ...shape };
  }
}

/**
 * {@linkcode outputImageShape} for a command line: a mismatch is a {@linkcode UsageError} (one
 * line, exit code 2).
 */
export function imageShapeOrUsage(
  net: { imgResolution: number; imgChannels: number },
  vae?: VaeDecoder,
): { resolution: number; channels: number } {
  try {
    return outputImageShape(net, vae);
  } catch (e) {
    if (e instanceof RangeError) throw new UsageError(e.message);
    throw e;
  }
}

/** Decodes latents to uint8 RGB, refusing non-finite latents as {@linkcode toUint8Images} does. */
async function decodeFinite(vae: VaeDecoder, x: tf.Tensor4D): Promise<Uint8Array> {
  const count = tf.tidy(() => tf.sum(tf.cast(tf.logicalNot(tf.isFinite(x)), "int32")));
  const bad = (await count.data())[0];
  count.dispose();
  if (bad > 0) {
    throw new RangeError(
      `the network produced ${bad} non-finite values in ${x.size} (its weights or inputs are broken)`,
    );
  }
  return (await decodeLatentsToUint8(vae, x)).data;
}

/**
 * Encodes up to `cols × rows` HWC uint8 images as one PNG grid (grey or RGB), 2-pixel gaps.
 */
export function imageGridPng(
  pixels: Uint8Array,
  count: number,
  res: number,
  channels: number,
  cols = 8,
): Uint8Array {
  const c = channels === 1 ? 1 : 3;
  const cols_ = Math.max(1, Math.min(cols, count));
  const rows = Math.ceil(count / cols_);
  const gap = 2;
  const w = cols_ * res + (cols_ - 1) * gap;
  const h = rows * res + (rows - 1) * gap;
  const out = new Uint8Array(w * h * c);
  for (let k = 0; k < count; k++) {
    const ox = (k % cols_) * (res + gap);
    const oy = Math.floor(k / cols_) * (res + gap);
    for (let y = 0; y < res; y++) {
      for (let x = 0; x < res; x++) {
        const src = ((k * res + y) * res + x) * channels;
        const dst = ((oy + y) * w + ox + x) * c;
        for (let j = 0; j < c; j++) out[dst + j] = pixels[src + Math.min(j, channels - 1)];
      }
    }
  }
  return fastPng.encode({ width: w, height: h, data: out, channels: c, depth: 8 });
}

/** Writes {@linkcode imageGridPng} to `path` atomically. */
export async function writeImageGrid(
  path: string,
  pixels: Uint8Array,
  count: number,
  res: number,
  channels: number,
  cols = 8,
): Promise<void> {
  await writeFileAtomic(path, imageGridPng(pixels, count, res, channels, cols));
}
