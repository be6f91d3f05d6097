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
  await mkdirNamed(dir);
  const temp = join(dir, `.${basename(path)}.${randomSuffix()}.partial`);
  // Errors of the file system name `path` ("cannot write runs/x/a.safetensors: No space left on
  // device (os error 28)"); an error thrown by a chunk iterator is passed on as it is.
  const io = async <T>(op: () => Promise<T>): Promise<T> => {
    try {
      return await op();
    } catch (e) {
      throw withPath(e, "cannot write", path);
    }
  };
  let file: Deno.FsFile | undefined;
  try {
    file = await io(() =>
      Deno.open(temp, {
        write: true,
        createNew: true,
        mode: options.mode ?? 0o644,
      })
    );
    const f = file;
    if (data instanceof Uint8Array) {
      await io(() => writeAll(f, data));
    } else {
      for await (const chunk of data) {
        if (!(chunk instanceof Uint8Array)) {
          throw new TypeError(`writeFileAtomic: ${path}: a chunk is not a Uint8Array`);
        }
        await io(() => writeAll(f, chunk));
      }
    }
    await io(() => f.sync());
    file.close();
    file = undefined;
    await io(() => Deno.rename(temp, path));
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

/**
 * Temporary files of {@linkcode writeFileAtomic}: `.<name>.<16 hex digits>.partial`. A file of
 * this form that outlives its writer (a killed process) is garbage; `lockRunFolder`
 * (`lib/io/lock.ts`) removes them once it holds a folder's lock.
 */
export const PARTIAL_FILE_RE: RegExp = /^\..+\.[0-9a-f]{16}\.partial$/;

/** The Deno error classes (`Deno.errors.NotFound`, …), to keep an error's class when renaming. */
const DENO_ERROR_CLASSES = new Set<unknown>(Object.values(Deno.errors));

/**
 * The error `e` of a file-system operation on `path`, with a message that names the path:
 * `<what> <path>: <the system's message>` (e.g. `cannot write runs/x/a.safetensors: No space left
 * on device (os error 28)`). The system's own trailing `: open '<path>'` is dropped; a Deno error
 * keeps its class (`instanceof Deno.errors.NotFound` still holds) and the original is the
 * `cause`. An error whose message already starts with `<what> <path>` is returned as it is.
 *
 * @example
 * ```ts
 * import { withPath } from "./atomic.ts";
 * try {
 *   await Deno.writeTextFile("/no/such/dir/x", "");
 * } catch (e) {
 *   console.error(withPath(e, "cannot write", "/no/such/dir/x").message);
 * }
 * ```
 */
export function withPath(e: unknown, what: string, path: string): Error {
  const prefix = `${what} ${path}`;
  if (!(e instanceof Error)) return new Error(`${prefix}: ${String(e)}`);
  if (e.message.startsWith(prefix)) return e;
  const msg = `${prefix}: ${e.message.replace(/: [a-z_]+ '[^']*'(?: -> '[^']*')?$/, "")}`;
  const Ctor = e.constructor as new (message: string, options?: ErrorOptions) => Error;
  return DENO_ERROR_CLASSES.has(Ctor) ? new Ctor(msg, { cause: e }) : new Error(msg, { cause: e });
}

/**
 * `Deno.mkdir(dir, { recursive: true })` whose error names the folder (`cannot create folder
 * <dir>: Not a directory (os error 20)`).
 */
export async function mkdirNamed(dir: string): Promise<void> {
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    throw withPath(e, "cannot create folder", dir);
  }
}

/**
 * Appends `text` to `path` (created when missing); an error names the path (`cannot write
 * <path>: …`). For logs (`log.jsonl`), where a record is one short line.
 */
export async function appendTextNamed(path: string, text: string): Promise<void> {
  try {
    await Deno.writeTextFile(path, text, { append: true, create: true });
  } catch (e) {
    throw withPath(e, "cannot write", path);
  }
}

/**
 * Checks that files can be written into the folder `dir` before any long work: creates the folder
 * (with its parents), then writes and removes a small temporary file there. Throws an error
 * naming the folder (`cannot write to <dir>: Permission denied (os error 13)`) otherwise.
 *
 * @example
 * ```ts
 * import { checkWritableDir } from "./atomic.ts";
 * await checkWritableDir("/tmp/sida-demo-out");
 * ```
 */
export async function checkWritableDir(dir: string): Promise<void> {
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    throw withPath(e, "cannot write to", dir);
  }
  const probe = join(dir, `.write-check.${randomSuffix()}.partial`);
  try {
    const f = await Deno.open(probe, { write: true, createNew: true });
    try {
      await writeAll(f, new Uint8Array([0]));
    } finally {
      f.close();
    }
  } catch (e) {
    await Deno.remove(probe).catch(() => {});
    throw withPath(e, "cannot write to", dir);
  }
  await Deno.remove(probe).catch(() => {});
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
