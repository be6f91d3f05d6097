/**
 * The training data of a run, named as on the command line: `mnist` (the embedded MNIST digits,
 * `lib/data/dataset.ts`) or the path of an image-dataset zip. Shared by teacher training and
 * distillation.
 *
 * @example
 * ```ts
 * import { loadTrainingData } from "./data.ts";
 * const ds = await loadTrainingData("mnist"); // 10,000 digits, 32×32×1
 * ```
 *
 * @module
 */
import { type ImageDataset, loadImageZip, mnistDataset } from "../data/dataset.ts";
import { requireFile } from "../runtime/cli.ts";

/**
 * The data set `source` names: `mnist`, or an image zip that must exist (a one-line
 * `UsageError` naming the file otherwise).
 */
export async function loadTrainingData(source: string): Promise<ImageDataset> {
  if (source === "mnist") return await mnistDataset();
  await requireFile(source, "data file");
  return await loadImageZip(source);
}
