/**
 * Loading a CBLAS library (OpenBLAS, reference BLAS, Apple Accelerate) through Deno's FFI, and a
 * small typed wrapper around `cblas_sgemm`.
 *
 * Where the library comes from, first found wins: the environment variable `SIDA_BLAS` (a path),
 * then `/usr/lib/x86_64-linux-gnu/libopenblas.so.0`, `libopenblas.so.0` / `libopenblas.so` on
 * the loader's path, Debian's reference `/usr/lib/x86_64-linux-gnu/blas/libblas.so.3` (slow but
 * correct), and macOS' Accelerate framework.
 *
 * OpenBLAS' threads: `SIDA_NUM_THREADS`, else `OPENBLAS_NUM_THREADS`, else every core.
 *
 * @example
 * ```ts
 * import { loadBlas } from "./blas.ts";
 * const blas = loadBlas();
 * const c = new Float32Array(4);
 * blas.sgemm(false, false, 2, 2, 2, 1, new Float32Array([1, 2, 3, 4]), 2, new Float32Array([1, 0, 0, 1]), 2, 0, c, 2);
 * ```
 *
 * @module
 */

import { pinLibrary } from "./pin_library.ts";

/** A BLAS library could not be found or loaded. */
export class BlasUnavailableError extends Error {
  override name = "BlasUnavailableError";
}

/** A loaded BLAS library. */
export interface Blas {
  /** Path (or name) of the loaded library. */
  readonly path: string;
  /** A short description: the library's own configuration string when it has one. */
  readonly description: string;
  /** OpenBLAS' thread count, or 1 when the library does not say. */
  readonly threads: number;
  /**
   * Row-major `C = alpha·op(A)·op(B) + beta·C`, `op(A)` `[m, k]`, `op(B)` `[k, n]`, `C` `[m, n]`.
   * The arrays may be subarrays (their byte offset is honoured).
   */
  sgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    lda: number,
    b: Float32Array,
    ldb: number,
    beta: number,
    c: Float32Array,
    ldc: number,
  ): void;
  /** Sets OpenBLAS' thread count (no-op for other libraries). */
  setThreads(n: number): void;
}

const SYMBOLS = {
  cblas_sgemm: {
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "i32",
    ],
    result: "void",
  },
  openblas_set_num_threads: { parameters: ["i32"], result: "void", optional: true },
  openblas_get_num_threads: { parameters: [], result: "i32", optional: true },
  openblas_get_config: { parameters: [], result: "pointer", optional: true },
  openblas_get_corename: { parameters: [], result: "pointer", optional: true },
} as const;

/** The places {@linkcode loadBlas} looks, in order (after `SIDA_BLAS`). */
export const BLAS_CANDIDATES: readonly string[] = [
  "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
  "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
  "libopenblas.so.0",
  "libopenblas.so",
  "/usr/lib/x86_64-linux-gnu/blas/libblas.so.3",
  "/usr/lib/aarch64-linux-gnu/blas/libblas.so.3",
  "/System/Library/Frameworks/Accelerate.framework/Accelerate",
];

let loaded: Blas | undefined;

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

/**
 * A Debian OpenBLAS 0.3.21 build with DYNAMIC_ARCH does not recognise recent AMD cores and picks
 * its Haswell kernels, about half as fast as its AVX-512 (SkylakeX) ones on CPUs that have
 * AVX-512. When the CPU reports the AVX-512 subsets those kernels use and the user has not chosen
 * a core type, ask for SkylakeX. (Read by OpenBLAS when it loads; ignored by other libraries.)
 */
function preferAvx512Kernels(): void {
  if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") return;
  if (env("OPENBLAS_CORETYPE")) return;
  try {
    const info = Deno.readTextFileSync("/proc/cpuinfo");
    const flagsLine = info.split("\n").find((l) => l.startsWith("flags"));
    if (!flagsLine) return;
    const flags = new Set(flagsLine.split(":")[1].trim().split(/\s+/));
    if (["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"].every((f) => flags.has(f))) {
      Deno.env.set("OPENBLAS_CORETYPE", "SKYLAKEX");
    }
  } catch {
    // No /proc or no env permission: keep OpenBLAS' own choice.
  }
}

/**
 * OpenBLAS' worker threads busy-wait (with `sched_yield`) for 2^28 cycles after each call before
 * they sleep. Between BLAS calls a training step runs our OpenMP kernels on the same cores, and
 * the yielding BLAS workers took ~20% of the CPU time (measured here: 3 s of system time per
 * SiDA iteration of the `mnist` preset, 0.5 s with the shortest wait, and ~30% less CPU time in
 * all). So, unless the user has chosen, ask for the shortest wait OpenBLAS allows (2^4 cycles).
 * (Read by OpenBLAS when it loads; ignored by other libraries.)
 */
function preferShortThreadWait(): void {
  if (env("OPENBLAS_THREAD_TIMEOUT")) return;
  try {
    Deno.env.set("OPENBLAS_THREAD_TIMEOUT", "4");
  } catch {
    // No env permission: keep OpenBLAS' default.
  }
}

function cString(p: Deno.PointerValue): string {
  return p ? Deno.UnsafePointerView.getCString(p) : "";
}

/**
 * Loads the BLAS library once per process (later calls return the same object).
 *
 * @throws BlasUnavailableError naming the paths tried, when no library loads.
 */
export function loadBlas(): Blas {
  if (loaded) return loaded;
  if (typeof Deno.dlopen !== "function") {
    throw new BlasUnavailableError("this runtime has no FFI (Deno.dlopen is unavailable)");
  }
  const fromEnv = env("SIDA_BLAS");
  const candidates = fromEnv ? [fromEnv] : BLAS_CANDIDATES;
  preferAvx512Kernels();
  preferShortThreadWait();
  const errors: string[] = [];
  for (const path of candidates) {
    let lib: Deno.DynamicLibrary<typeof SYMBOLS>;
    try {
      lib = Deno.dlopen(path, SYMBOLS);
    } catch (e) {
      const msg = (e as Error).message;
      errors.push(`${path}: ${msg.split("\n")[0]}`);
      if (e instanceof Deno.errors.NotCapable || /permission|--allow-ffi/i.test(msg)) {
        throw new BlasUnavailableError(`FFI permission denied (run with --allow-ffi): ${msg}`);
      }
      continue;
    }
    // Load OpenBLAS once per process, not once per isolate (see pin_library.ts).
    pinLibrary(path);
    loaded = wrap(lib, path);
    return loaded;
  }
  throw new BlasUnavailableError(
    fromEnv
      ? `SIDA_BLAS=${fromEnv} could not be loaded (${errors[0] ?? "unknown error"})`
      : `no BLAS library found (install libopenblas0-pthread, or set SIDA_BLAS); tried ${
        candidates.join(", ")
      }`,
  );
}

function wrap(lib: Deno.DynamicLibrary<typeof SYMBOLS>, path: string): Blas {
  const s = lib.symbols;
  const setThreads = (n: number) => {
    if (s.openblas_set_num_threads) s.openblas_set_num_threads(Math.max(1, Math.floor(n)));
  };
  const wanted = Number(env("SIDA_NUM_THREADS") ?? env("OPENBLAS_NUM_THREADS") ?? NaN);
  if (Number.isFinite(wanted) && wanted >= 1) setThreads(wanted);
  else setThreads(navigator.hardwareConcurrency || 1);
  const config = s.openblas_get_config ? cString(s.openblas_get_config()) : "";
  const core = s.openblas_get_corename ? cString(s.openblas_get_corename()) : "";
  const threads = s.openblas_get_num_threads ? s.openblas_get_num_threads() : 1;
  const name = path.split("/").pop() ?? path;
  const description = config
    ? `${config.split(" ").slice(0, 2).join(" ")}${core ? ` (${core})` : ""}, ${threads} threads`
    : name;
  const sgemm = s.cblas_sgemm;
  return {
    path,
    description,
    threads,
    setThreads,
    sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) {
      if (m === 0 || n === 0) return;
      if (k === 0) {
        // BLAS treats k = 0 as C = beta·C; make sure of it without touching A and B.
        for (let i = 0; i < m; i++) {
          for (let j = 0; j < n; j++) c[i * ldc + j] = beta === 0 ? 0 : beta * c[i * ldc + j];
        }
        return;
      }
      // Never let the library read or write outside the arrays (row-major extents): an
      // out-of-bounds write would corrupt the JS heap silently.
      const need = (rows: number, cols: number, ld: number) => (rows - 1) * ld + cols;
      const [ar, ac] = transA ? [k, m] : [m, k];
      const [br, bc] = transB ? [n, k] : [k, n];
      if (
        lda < ac || ldb < bc || ldc < n || a.length < need(ar, ac, lda) ||
        b.length < need(br, bc, ldb) || c.length < need(m, n, ldc)
      ) {
        throw new RangeError(
          `sgemm: arrays too small for m=${m} n=${n} k=${k} (A ${a.length}/${lda}, B ${b.length}/${ldb}, C ${c.length}/${ldc})`,
        );
      }
      // 101 = CblasRowMajor, 111 = CblasNoTrans, 112 = CblasTrans.
      sgemm(
        101,
        transA ? 112 : 111,
        transB ? 112 : 111,
        m,
        n,
        k,
        alpha,
        a,
        Math.max(1, lda),
        b,
        Math.max(1, ldb),
        beta,
        c,
        Math.max(1, ldc),
      );
    },
  };
}
