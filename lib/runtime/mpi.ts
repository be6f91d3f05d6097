/**
 * Open MPI for data-parallel training (`mpirun -np N deno task sid|sida|teacher|distill`; see
 * docs/mpi.md): the rank and world size, and the few collectives the trainers need, through a
 * small C shim (`mpi_shim.c`) compiled on first use with `mpicc` (`$SIDA_MPICC`, else `$MPICC`,
 * else `mpicc`) into the cache folder of the native kernels (`$SIDA_CACHE_DIR`, else
 * `$XDG_CACHE_HOME/sida`, else `~/.cache/sida`), and called through Deno FFI.
 *
 * Nothing is loaded outside MPI: {@linkcode mpiWorld} reads the launcher's environment
 * (`OMPI_COMM_WORLD_SIZE`/`_RANK` of Open MPI's `mpirun`, else `PMI_SIZE`/`PMI_RANK` of
 * MPICH/Slurm), and {@linkcode worldComm} returns null without it or in a world of one process
 * (`mpirun -np 1` runs exactly as a plain process).
 *
 * Importing this module under a launcher of more than one process sets per-rank defaults, before
 * any backend starts (so run it before `initBackend`; the training modules import it):
 *
 * - threads: without `SIDA_NUM_THREADS`, `OMP_NUM_THREADS` and `OPENBLAS_NUM_THREADS`, the
 *   `native` backend gets `SIDA_NUM_THREADS = max(1, ⌊cores / ranks on this host⌋)`;
 * - GPU: with `SIDA_MPI_GPUS` (a comma-separated list, one entry per local rank, e.g.
 *   `pci-0000_01_00_0,pci-0000_41_00_0`), local rank k gets `DRI_PRIME` = entry k, which Mesa's
 *   Vulkan device-select layer honours (`MESA_VK_DEVICE_SELECT` is left to the user);
 * - `OMPI_MCA_mpi_yield_when_idle=1` unless set: a rank waiting in a collective yields its core.
 *
 * When the process exits, the world is finalised (`MPI_Finalize`) after a zero exit status (or an
 * agreed one, {@linkcode exitTogether}), and aborted (`MPI_Abort`, which stops every rank of the
 * job) after any other: a rank that fails alone never leaves the others waiting in a collective.
 *
 * @module
 */
import { cacheDir, fnv1a } from "./build_cache.ts";

/** The launcher's view of this process: rank and size, globally and on this host. */
export interface MpiWorld {
  rank: number;
  size: number;
  localRank: number;
  localSize: number;
}

function intEnv(...names: string[]): number | undefined {
  for (const n of names) {
    const v = Deno.env.get(n);
    if (v !== undefined && /^\d+$/.test(v)) return Number(v);
  }
  return undefined;
}

/**
 * The MPI world this process was started in (from the launcher's environment), or null when it
 * was not started by an MPI launcher.
 */
export function mpiWorld(): MpiWorld | null {
  const size = intEnv("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE");
  const rank = intEnv("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK");
  if (size === undefined || rank === undefined || size < 1 || rank >= size) return null;
  return {
    rank,
    size,
    localRank: intEnv("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID") ?? 0,
    localSize: intEnv("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS") ?? 1,
  };
}

/**
 * Sets the per-rank defaults of the module doc (threads, GPU, yielding) for a world of more than
 * one process; does nothing otherwise. Returns what it set.
 */
export function applyRankDefaults(world = mpiWorld()): Record<string, string> {
  const set: Record<string, string> = {};
  if (!world || world.size < 2) return set;
  const put = (k: string, v: string) => {
    Deno.env.set(k, v);
    set[k] = v;
  };
  const has = (k: string) => Deno.env.get(k) !== undefined;
  if (!has("SIDA_NUM_THREADS") && !has("OMP_NUM_THREADS") && !has("OPENBLAS_NUM_THREADS")) {
    const cores = navigator.hardwareConcurrency || 1;
    put("SIDA_NUM_THREADS", String(Math.max(1, Math.floor(cores / world.localSize))));
  }
  const gpus = Deno.env.get("SIDA_MPI_GPUS");
  if (gpus) {
    const list = gpus.split(",").map((s) => s.trim()).filter(Boolean);
    if (list.length) put("DRI_PRIME", list[world.localRank % list.length]);
  }
  if (!has("OMPI_MCA_mpi_yield_when_idle")) put("OMPI_MCA_mpi_yield_when_idle", "1");
  return set;
}

/** Defaults applied when this module was first imported (empty outside MPI). */
export const RANK_DEFAULTS: Readonly<Record<string, string>> = applyRankDefaults();

/** An MPI call failed (the message names the call and MPI's error string). */
export class MpiError extends Error {
  override name = "MpiError";
}

const SYMBOLS = {
  sida_mpi_version: { parameters: [], result: "i32" },
  sida_mpi_init: { parameters: [], result: "i32" },
  sida_mpi_rank: { parameters: [], result: "i32" },
  sida_mpi_size: { parameters: [], result: "i32" },
  sida_mpi_allreduce_f32_sum: { parameters: ["buffer", "i64"], result: "i32" },
  sida_mpi_allreduce_f64: { parameters: ["buffer", "i64", "i32"], result: "i32" },
  sida_mpi_bcast: { parameters: ["buffer", "i64", "i32"], result: "i32" },
  sida_mpi_allgatherv_f64: { parameters: ["buffer", "i32", "buffer", "buffer"], result: "i32" },
  sida_mpi_allgather_i32: { parameters: ["i32", "buffer"], result: "i32" },
  sida_mpi_barrier: { parameters: [], result: "i32" },
  sida_mpi_abort: { parameters: ["i32"], result: "void" },
  sida_mpi_finalize: { parameters: [], result: "i32" },
  sida_mpi_error_string: { parameters: ["i32", "buffer", "i32"], result: "void" },
} as const;
type Symbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

const VERSION = 1;

/** Compiles the shim (once per source and compiler; atomically) and returns its path. */
function buildShim(): string {
  const url = new URL("./mpi_shim.c", import.meta.url);
  if (url.protocol !== "file:") {
    throw new MpiError("MPI: no local mpi_shim.c to compile (imported by URL)");
  }
  const src = decodeURIComponent(url.pathname);
  const mpicc = Deno.env.get("SIDA_MPICC") ?? Deno.env.get("MPICC") ?? "mpicc";
  const key = fnv1a(`${VERSION}\n${Deno.build.target}\n${mpicc}\n${Deno.readTextFileSync(src)}`);
  const dir = cacheDir();
  const lib = `${dir}/libsida_mpi-${key}.so`;
  try {
    if (Deno.statSync(lib).isFile) return lib;
  } catch { /* not built yet */ }
  Deno.mkdirSync(dir, { recursive: true });
  const tmp = `${lib}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  let r: Deno.CommandOutput;
  try {
    r = new Deno.Command(mpicc, {
      args: ["-O2", "-fPIC", "-shared", "-o", tmp, src, "-ldl"],
      stdout: "null",
      stderr: "piped",
    }).outputSync();
  } catch (e) {
    throw new MpiError(
      `MPI: cannot run ${mpicc} (install libopenmpi-dev, or set SIDA_MPICC): ${
        (e as Error).message
      }`,
    );
  }
  if (!r.success) {
    try {
      Deno.removeSync(tmp);
    } catch { /* nothing written */ }
    const why = new TextDecoder().decode(r.stderr).split("\n").find((l) => l.trim()) ?? "";
    throw new MpiError(`MPI: ${mpicc} could not compile mpi_shim.c: ${why}`);
  }
  Deno.renameSync(tmp, lib);
  return lib;
}

/** Reduction operations of {@linkcode MpiComm.allreduceF64}. */
export type ReduceOp = "sum" | "max" | "min";
const OPS: Record<ReduceOp, number> = { sum: 0, max: 1, min: 2 };

/**
 * `MPI_COMM_WORLD`: rank, size and blocking collectives on the main thread (every rank must call
 * the same collectives in the same order).
 */
export class MpiComm {
  readonly rank: number;
  readonly size: number;
  /** The shim's path. */
  readonly path: string;
  readonly #s: Symbols;
  #closed = false;

  constructor(path: string, symbols: Symbols) {
    this.path = path;
    this.#s = symbols;
    this.rank = symbols.sida_mpi_rank();
    this.size = symbols.sida_mpi_size();
  }

  #check(rc: number, what: string): void {
    if (rc === 0) return;
    const buf = new Uint8Array(512);
    this.#s.sida_mpi_error_string(rc, buf, buf.length);
    const msg = new TextDecoder().decode(buf.subarray(0, buf.indexOf(0)));
    throw new MpiError(`MPI: ${what} failed on rank ${this.rank}: ${msg || `error ${rc}`}`);
  }

  /** Sums `buf` over every rank, in place. */
  allreduceF32Sum(buf: Float32Array): void {
    this.#check(this.#s.sida_mpi_allreduce_f32_sum(buf, BigInt(buf.length)), "MPI_Allreduce");
  }

  /** Reduces `buf` over every rank, in place. */
  allreduceF64(buf: Float64Array, op: ReduceOp = "sum"): void {
    this.#check(
      this.#s.sida_mpi_allreduce_f64(buf, BigInt(buf.length), OPS[op]),
      "MPI_Allreduce",
    );
  }

  /** Whether `flag` is true on any rank. */
  any(flag: boolean): boolean {
    const b = new Float64Array([flag ? 1 : 0]);
    this.allreduceF64(b, "max");
    return b[0] > 0;
  }

  /** Every rank's values concatenated in rank order (ranks may give different counts). */
  allgatherF64(values: Float64Array): Float64Array {
    const counts = new Int32Array(this.size);
    this.#check(this.#s.sida_mpi_allgather_i32(values.length, counts), "MPI_Allgather");
    const out = new Float64Array(counts.reduce((a, b) => a + b, 0));
    // A zero-length typed array may be a null pointer to FFI: give MPI a buffer of one.
    const send = values.length ? values : new Float64Array(1);
    this.#check(
      this.#s.sida_mpi_allgatherv_f64(
        send,
        values.length,
        out.length ? out : new Float64Array(1),
        counts,
      ),
      "MPI_Allgatherv",
    );
    return out;
  }

  /**
   * Broadcasts bytes from `root`: the root passes its bytes, the others anything (ignored);
   * every rank gets the root's bytes.
   */
  broadcastBytes(bytes: Uint8Array | null, root = 0): Uint8Array {
    const len = new Float64Array([this.rank === root ? bytes!.length : 0]);
    this.#check(this.#s.sida_mpi_bcast(new Uint8Array(len.buffer), 8n, root), "MPI_Bcast");
    const n = len[0];
    const buf = this.rank === root ? bytes! : new Uint8Array(n);
    if (n > 0) this.#check(this.#s.sida_mpi_bcast(buf, BigInt(n), root), "MPI_Bcast");
    return buf;
  }

  /** Broadcasts a JSON value from `root`. */
  broadcastJson<T>(value: T | undefined, root = 0): T {
    const bytes = this.rank === root ? new TextEncoder().encode(JSON.stringify(value)) : null;
    return JSON.parse(new TextDecoder().decode(this.broadcastBytes(bytes, root))) as T;
  }

  barrier(): void {
    this.#check(this.#s.sida_mpi_barrier(), "MPI_Barrier");
  }

  /** Stops every rank of the job with `code` (`MPI_Abort`); does not return. */
  abort(code: number): never {
    this.#closed = true;
    this.#s.sida_mpi_abort(code);
    Deno.exit(code);
  }

  /** `MPI_Finalize` (once; later calls do nothing). */
  finalize(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#check(this.#s.sida_mpi_finalize(), "MPI_Finalize");
  }
}

let comm: MpiComm | null | undefined;
let agreedExit = false;

/**
 * Declares that every rank is about to exit with the same status by agreement (an interrupt all
 * ranks stopped for): the exit then finalises MPI instead of aborting the job, whatever the
 * status.
 */
export function exitTogether(): void {
  agreedExit = true;
}

/**
 * `MPI_COMM_WORLD` of a job of two or more processes, initialised on the first call (compiling
 * the shim if needed); null outside MPI or in a world of one.
 *
 * @throws MpiError when the launcher says MPI but the shim cannot be built or MPI not started.
 */
export function worldComm(): MpiComm | null {
  if (comm !== undefined) return comm;
  const world = mpiWorld();
  if (!world || world.size < 2) return comm = null;
  const path = buildShim();
  const { symbols } = Deno.dlopen(path, SYMBOLS);
  if (symbols.sida_mpi_version() !== VERSION) throw new MpiError(`${path}: unexpected version`);
  const provided = symbols.sida_mpi_init();
  if (provided < 0) throw new MpiError(`MPI: MPI_Init failed (error ${-1 - provided})`);
  const c = new MpiComm(path, symbols);
  if (c.size !== world.size || c.rank !== world.rank) {
    throw new MpiError(
      `MPI: rank ${c.rank} of ${c.size}, but the launcher said ${world.rank} of ${world.size}`,
    );
  }
  comm = c;
  globalThis.addEventListener("unload", () => {
    const code = Deno.exitCode;
    if (code !== 0 && !agreedExit) c.abort(code);
    try {
      c.finalize();
    } catch { /* exiting anyway */ }
  });
  return c;
}
