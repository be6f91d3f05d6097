/**
 * NumPy `.npz` archives (`np.savez`): a ZIP with one `<key>.npy` member per array. Reading
 * accepts STORED and DEFLATE members (`np.savez_compressed`) and numpy's ZIP64 local headers
 * (the central directory is authoritative); writing produces STORED members that `np.load`
 * reads.
 *
 * @example
 * ```ts
 * import { readNpz, writeNpz } from "./npz.ts";
 * import { hostTensor } from "../io/host_tensor.ts";
 * await writeNpz("/tmp/sida-demo/s.npz", { mu: hostTensor("float64", [2], new Float64Array([1, 2])) });
 * const arrays = await readNpz("/tmp/sida-demo/s.npz"); // Map { "mu" => HostTensor }
 * ```
 *
 * @module
 */
import { zipjs } from "../deps.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { type HostTensor, IoError } from "../io/host_tensor.ts";
import { decodeNpy, encodeNpy } from "../io/npy.ts";

zipjs.configure({ useWebWorkers: false });

/**
 * Decodes `.npz` bytes into arrays keyed by member name without the `.npy` suffix.
 *
 * @param bytes the archive.
 * @param name how to name it in error messages.
 * @throws {IoError} when it is not a ZIP or a member is not a valid `.npy`.
 */
export async function decodeNpz(bytes: Uint8Array, name = "<npz bytes>"): Promise<
  Map<string, HostTensor>
> {
  let reader: zipjs.ZipReader<unknown> | undefined;
  const out = new Map<string, HostTensor>();
  try {
    reader = new zipjs.ZipReader(new zipjs.Uint8ArrayReader(bytes));
    const entries = await reader.getEntries();
    for (const entry of entries) {
      if (entry.directory) continue;
      const key = entry.filename.endsWith(".npy") ? entry.filename.slice(0, -4) : entry.filename;
      const data = await (entry as zipjs.FileEntry).getData(new zipjs.Uint8ArrayWriter());
      try {
        out.set(key, decodeNpy(data));
      } catch (e) {
        throw new IoError(`${name}: member '${entry.filename}': ${(e as Error).message}`);
      }
    }
  } catch (e) {
    if (e instanceof IoError) throw e;
    throw new IoError(`${name}: not a readable .npz archive: ${(e as Error).message}`);
  } finally {
    await reader?.close().catch(() => {});
  }
  return out;
}

/**
 * Reads a `.npz` file (see {@linkcode decodeNpz}).
 *
 * @throws {IoError} when the file cannot be read or is malformed.
 */
export async function readNpz(path: string): Promise<Map<string, HostTensor>> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new IoError(`${path}: cannot open: ${(e as Error).message.split("\n")[0]}`);
  }
  return await decodeNpz(bytes, path);
}

/** Encodes arrays as `.npz` bytes: one STORED `<key>.npy` member per entry, in order. */
export async function encodeNpz(
  arrays: Map<string, HostTensor> | Record<string, HostTensor>,
): Promise<Uint8Array> {
  const entries = arrays instanceof Map ? [...arrays] : Object.entries(arrays);
  const writer = new zipjs.ZipWriter(new zipjs.Uint8ArrayWriter(), {
    level: 0,
    useWebWorkers: false,
    // numpy's zipfile reader does not need data descriptors; keep plain local headers.
    dataDescriptor: false,
    extendedTimestamp: false,
  });
  for (const [key, t] of entries) {
    if (!key || key.includes("/")) throw new IoError(`encodeNpz: bad array name '${key}'`);
    await writer.add(`${key}.npy`, new zipjs.Uint8ArrayReader(encodeNpy(t)));
  }
  return await writer.close();
}

/** Writes arrays to a `.npz` file atomically (see {@linkcode encodeNpz}). */
export async function writeNpz(
  path: string,
  arrays: Map<string, HostTensor> | Record<string, HostTensor>,
): Promise<void> {
  await writeFileAtomic(path, await encodeNpz(arrays));
}
