/**
 * Loads a denoising network of either family from a file: EDM (`EDMPrecond`, `network.ts`) or EDM2
 * (`EDM2Precond`, `import_edm2.ts`), from our safetensors (by the `class` in its metadata) or a
 * reference pickle (by its pickled class; the pickle reader never executes code).
 *
 * @example
 * ```ts
 * import { loadDenoisingNetwork } from "./load.ts";
 * const teacher = await loadDenoisingNetwork("edm2-img512-xs-2147483-0.135.pkl");
 * ```
 *
 * @module
 */
import { readSafetensorsHeader } from "../io/safetensors.ts";
import type { EDM2Precond } from "./edm2.ts";
import { loadEdm2Network } from "./import_edm2.ts";
import { loadNetwork } from "./network.ts";
import type { EDMPrecond } from "./precond.ts";

/** Whether a path names a pickle (`.pkl`, `.pt`, `.pth`) rather than a safetensors file. */
function isPickle(path: string): boolean {
  return /\.(pkl|pt|pth)$/i.test(path);
}

/**
 * The network in `path`: an `EDMPrecond` or an `EDM2Precond`, whichever the file holds.
 *
 * @throws IoError (from the loaders) for a missing, malformed or unsupported file.
 */
export async function loadDenoisingNetwork(path: string): Promise<EDMPrecond | EDM2Precond> {
  if (!isPickle(path)) {
    const { metadata } = await readSafetensorsHeader(path);
    return metadata.class === "EDM2Precond" ? await loadEdm2Network(path) : await loadNetwork(path);
  }
  try {
    return await loadNetwork(path);
  } catch (e) {
    // The EDM importer names an EDM2 class and stops; the EDM2 importer takes it.
    if (/is an EDM2 network/.test((e as Error).message)) return await loadEdm2Network(path);
    throw e;
  }
}
