/**
 * Labels-only data: a `dataset.json` (`{"labels": [["00000/img00000000.png", 6], …]}`) without
 * images, for data-free SiD of a conditional teacher, which needs only class labels. The
 * reference does this for EDM2 SiD (mingyuanzhou/SiD
 * `sida_training_edm2/json_labels_dataset.py:18-62`, with `--use_gan 0`), where the image data
 * are latents that SiD never reads.
 *
 * The result is an {@linkcode ImageDataset} with the teacher's image shape whose `image(i)`
 * throws: SiDA and teacher training, which need images, refuse it ({@linkcode isLabelsOnly}).
 *
 * @example
 * ```ts
 * import { loadLabelsJson } from "./labels.ts";
 * const ds = await loadLabelsJson("img512_labels/dataset.json", { resolution: 64, channels: 4 });
 * console.log(ds.size, ds.labelDim); // 1281167 1000
 * ```
 *
 * @module
 */
import { basename, dirname } from "node:path";
import { IoError } from "../io/host_tensor.ts";
import { compareNames, type ImageDataset, parseLabels } from "./dataset.ts";

const LABELS_ONLY = Symbol("sida.labelsOnly");

/** Whether `ds` holds labels only (no images). */
export function isLabelsOnly(ds: ImageDataset): boolean {
  return (ds as { [LABELS_ONLY]?: true })[LABELS_ONLY] === true;
}

/**
 * Reads a `dataset.json` of labels as a labels-only data set of `shape` (the teacher's images):
 * entries in file-name order, labels one-hot of width largest + 1.
 *
 * @throws IoError for a missing or malformed file, `"labels": null`, or no entries.
 */
export async function loadLabelsJson(
  path: string,
  shape: { resolution: number; channels: number },
): Promise<ImageDataset> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new IoError(`${path}: cannot read (${(e as Error).message})`);
  }
  const map = parseLabels(text, path);
  if (map === null) throw new IoError(`${path}: "labels" is null: no classes to condition on`);
  if (map.size === 0) throw new IoError(`${path}: no labels`);
  const names = [...map.keys()].sort(compareNames);
  const labels = Int32Array.from(names, (n) => map.get(n)!);
  const labelDim = labels.reduce((m, v) => Math.max(m, v), -1) + 1;
  const name = basename(dirname(path)) || basename(path);
  return {
    [LABELS_ONLY]: true,
    name,
    resolution: shape.resolution,
    channels: shape.channels,
    labelDim,
    size: labels.length,
    image(): Uint8Array {
      throw new IoError(`${path}: labels-only data hold no images (SiD only, not SiDA)`);
    },
    label(i: number): number {
      if (!Number.isInteger(i) || i < 0 || i >= labels.length) {
        throw new RangeError(`label index ${i} outside [0, ${labels.length})`);
      }
      return labels[i];
    },
  } as ImageDataset;
}
