/**
 * Whether training data fit a network: the one check used by teacher training, the Distiller,
 * `deno task sid` / `sida` and the distillation chain's plan (which reads only a zip's first
 * image), and the augmentation check of a distillation.
 *
 * @example
 * ```ts
 * import { dataMismatch } from "./fit.ts";
 * dataMismatch(
 *   { resolution: 16, channels: 3, labelDim: 0 },
 *   { resolution: 32, channels: 3, labelDim: 10 },
 * ); // "the data hold 16x16x3 images, the teacher needs 32x32x3"
 * ```
 *
 * @module
 */

/** Image shape and classes (of a network, or of a data set). */
export interface ImageShape {
  resolution: number;
  channels: number;
  labelDim: number;
}

/** The image shape and classes of a network (`EDMPrecond`, a `NetworkConfig`). */
export function networkShape(
  n: { imgResolution: number; imgChannels: number; labelDim: number },
): ImageShape {
  return { resolution: n.imgResolution, channels: n.imgChannels, labelDim: n.labelDim };
}

/**
 * Why data of shape `data` cannot train with a network of shape `net` (one line), or null:
 * resolution and channels must match, and a conditional network needs data with its number of
 * classes. `what` names the data (`data bars.zip`), `whose` the network (`the teacher`).
 */
export function dataMismatch(
  data: ImageShape,
  net: ImageShape,
  names: { what?: string; whose?: string } = {},
): string | null {
  const what = names.what ?? "the data";
  const whose = names.whose ?? "the teacher";
  if (data.resolution !== net.resolution || data.channels !== net.channels) {
    return `${what} hold ${data.resolution}x${data.resolution}x${data.channels} images, ` +
      `${whose} needs ${net.resolution}x${net.resolution}x${net.channels}`;
  }
  if (net.labelDim > 0 && data.labelDim !== net.labelDim) {
    return data.labelDim === 0
      ? `${whose} is conditional (${net.labelDim} classes) but ${what} have no labels`
      : `${what} have ${data.labelDim} classes, ${whose} ${net.labelDim}`;
  }
  return null;
}

/**
 * Why a distillation with augmentation probability `augment` (> 0: EDM's `AugmentPipe`, whose 9
 * labels go to the fake network) cannot run on a teacher with `augmentDim` augmentation-label
 * entries (one line), or null.
 */
export function augmentMismatch(augment: number, augmentDim: number): string | null {
  if (!(augment > 0) || augmentDim === 9) return null;
  return augmentDim === 0
    ? "augmentation needs a teacher with an augmentation embedding (augment_dim 9); use --augment 0"
    : `augmentation gives 9 labels but the teacher's augment_dim is ${augmentDim}; use --augment 0`;
}
