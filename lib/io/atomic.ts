/**
 * Atomic file writes: the target either keeps its old content or gets the complete new content,
 * never a half-written file.
 *
 * @example
 * ```ts
 * import { writeFileAtomic } from "./atomic.ts";
 * await writeFileAtomic("runs/demo/out.bin", new Uint8Array([1, 2, 3]));
 * ```
 *
 * @module
 */
import { basename, dirname, join } from "node:path";

/** What {@linkcode writeFileAtomic} accepts: one buffer, or chunks written in order. */
export type AtomicWriteData =
  | Uint8Array
  | Iterable<Uint8Array>
  | AsyncIterable<Uint8Array>;

/** Options of {@linkcode writeFileAtomic}. */
export interface WriteFileAtomicOptions {
  /** Permission bits of a newly created file (default `0o644`, less the umask). */
  mode?: number;
}

function randomSuffix(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await file.write(bytes.subarray(off));
}

/**
 * Writes `data` to `path` atomically: the bytes go to a temporary file
 * `.<name>.<random>.partial` in the same directory, which is flushed to disk (`fsync`) and then
 * renamed over `path`. Parent directories are created as needed. On any failure (including an
 * exception thrown by a chunk iterator) the temporary file is removed and the error rethrown; an
 * existing `path` is then left untouched.
 *
 * @param path the target file.
 * @param data one `Uint8Array`, or an (async) iterable of chunks written in order; chunks are
 *   consumed lazily, so a large file need not be held in memory at once.
 * @param options file mode of a newly created file.
 *
 * @example
 * ```ts
 * import { writeFileAtomic } from "./atomic.ts";
 * const enc = new TextEncoder();
 * await writeFileAtomic("/tmp/sida-demo/a.txt", [enc.encode("hello "), enc.encode("world\n")]);
 * ```
 */
export async function writeFileAtomic(
  path: string,
  data: AtomicWriteData,
  options: WriteFileAtomicOptions = {},
): Promise<void> {
  const dir = dirname(path);
  await Deno.mkdir(dir, { recursive: true });
  const temp = join(dir, `.${basename(path)}.${randomSuffix()}.partial`);
  let file: Deno.FsFile | undefined;
  try {
    file = await Deno.open(temp, {
      write: true,
      createNew: true,
      mode: options.mode ?? 0o644,
    });
    if (data instanceof Uint8Array) {
      await writeAll(file, data);
    } else {
      for await (const chunk of data) {
        if (!(chunk instanceof Uint8Array)) {
          throw new TypeError(`writeFileAtomic: ${path}: a chunk is not a Uint8Array`);
        }
        await writeAll(file, chunk);
      }
    }
    await file.sync();
    file.close();
    file = undefined;
    await Deno.rename(temp, path);
  } catch (e) {
    try {
      file?.close();
    } catch {
      // already closed
    }
    await Deno.remove(temp).catch(() => {});
    throw e;
  }
  await syncDir(dir);
}

/** Best-effort fsync of a directory so the rename itself is durable (POSIX only). */
async function syncDir(dir: string): Promise<void> {
  if (Deno.build.os === "windows") return;
  let d: Deno.FsFile | undefined;
  try {
    d = await Deno.open(dir, { read: true });
    await d.sync();
  } catch {
    // Not supported on this file system: the data itself is already on disk.
  } finally {
    try {
      d?.close();
    } catch {
      // ignore
    }
  }
}
