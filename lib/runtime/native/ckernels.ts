/**
 * sida's C kernels (`csrc/*.c`, one library): broadcasting binary operations, unary operations,
 * SiLU and group normalisation with their gradients, multi-threaded with OpenMP.
 *
 * The library is compiled on first use from the repository's C source with the system's C
 * compiler (`$CC`, else `cc`) into a cache folder (`$SIDA_CACHE_DIR`, else
 * `$XDG_CACHE_HOME/sida`, else `~/.cache/sida`), under a name that includes a hash of the source
 * and flags, atomically, so concurrent processes never load a half-written file. Without a
 * compiler, when imported by URL (no local source), or with `SIDA_NATIVE_C=0`, the `native`
 * backend uses its TypeScript loops instead: the same results, slower.
 *
 * `SIDA_NATIVE_CFLAGS` adds compiler flags (for example `-fsanitize=address -g` to check the
 * kernels' memory accesses, with the sanitizer's runtime preloaded).
 *
 * Threads: `SIDA_NUM_THREADS` (else `OMP_NUM_THREADS`, else every core). Idle threads sleep
 * (`OMP_WAIT_POLICY=PASSIVE` unless set) so that they do not compete with OpenBLAS' threads.
 *
 * @module
 */

import { pinLibrary } from "./pin_library.ts";
import { cacheDir, fnv1a } from "../build_cache.ts";

const SYMBOLS = {
  sida_version: { parameters: [], result: "i32" },
  sida_threads: { parameters: [], result: "i32" },
  sida_binary: {
    parameters: ["i32", "buffer", "buffer", "buffer", "i32", "buffer", "buffer", "buffer"],
    result: "void",
  },
  sida_unary: { parameters: ["i32", "buffer", "buffer", "i64", "f32"], result: "void" },
  sida_silu_grad: { parameters: ["buffer", "buffer", "buffer", "i64"], result: "void" },
  sida_group_norm: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "i64", "i64", "i64", "i64", "f64"],
    result: "void",
  },
  sida_group_norm_grad: {
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i64",
      "i64",
      "i64",
      "i64",
      "f64",
    ],
    result: "void",
  },
  sida_im2col: { parameters: ["buffer", "buffer", "buffer", "i64", "i64"], result: "void" },
  sida_col2im: { parameters: ["buffer", "buffer", "buffer", "i64", "i64"], result: "void" },
} as const;

/** The C library's ABI version this file expects. */
const VERSION = 1;

/** Unary operation codes of `sida_unary`. */
export const UNARY = {
  Sigmoid: 0,
  Square: 1,
  Neg: 2,
  Exp: 3,
  Sqrt: 4,
  Floor: 5,
  Log: 6,
  Abs: 7,
  Rsqrt: 8,
  Relu: 9,
  Step: 10,
  Silu: 11,
} as const;

/** The loaded C kernels, with argument checks. */
export interface CKernels {
  /** Path of the loaded library. */
  readonly path: string;
  /** OpenMP threads. */
  readonly threads: number;
  /** `out = a ∘ b` over collapsed runs (sizes, element strides of a and b; 0 = broadcast). */
  binary(
    op: number,
    out: Float32Array,
    a: Float32Array,
    b: Float32Array,
    sizes: number[],
    aStrides: number[],
    bStrides: number[],
  ): void;
  /** `y = f(x)` element-wise (`alpha`: Step's value for x ≤ 0). */
  unary(op: number, y: Float32Array, x: Float32Array, alpha?: number): void;
  /** `dx = dy · silu'(x)`. */
  siluGrad(dx: Float32Array, dy: Float32Array, x: Float32Array): void;
  /** Group norm of `x` `[N, S, C]` (NHWC, S = H·W) with `G` groups. */
  groupNorm(
    y: Float32Array,
    x: Float32Array,
    gamma: Float32Array,
    beta: Float32Array,
    dims: [number, number, number, number],
    eps: number,
  ): void;
  /**
   * im2col of an NHWC convolution for output pixels `[r0, r1)` into `col` (`[(r1−r0), KH·KW·C]`);
   * `geom` = N, H, W, C, Ho, Wo, KH, KW, strides, dilations, top and left padding.
   */
  im2col(col: Float32Array, x: Float32Array, geom: number[], r0: number, r1: number): void;
  /** `x += col2im(col)` for output pixels `[r0, r1)`. */
  col2im(x: Float32Array, col: Float32Array, geom: number[], r0: number, r1: number): void;
  /** Group norm gradients: dx, and `[N, C]` partial sums for dγ (Σ dy·x̂) and dβ (Σ dy). */
  groupNormGrad(
    dx: Float32Array,
    dgammaPart: Float64Array,
    dbetaPart: Float64Array,
    dy: Float32Array,
    x: Float32Array,
    gamma: Float32Array,
    dims: [number, number, number, number],
    eps: number,
  ): void;
}

function compile(srcs: string[], out: string): string | undefined {
  const cc = Deno.env.get("CC") ?? "cc";
  const extraFlags = (Deno.env.get("SIDA_NATIVE_CFLAGS") ?? "").split(/\s+/).filter(Boolean);
  const base = [
    "-O3",
    "-march=native",
    "-fPIC",
    "-shared",
    "-std=c11",
    ...extraFlags,
    "-o",
    out,
    ...srcs,
    "-lm",
  ];
  let lastError = "";
  for (const extra of [["-fopenmp"], []]) {
    try {
      const r = new Deno.Command(cc, { args: [...extra, ...base], stdout: "null", stderr: "piped" })
        .outputSync();
      if (r.success) return undefined;
      lastError = new TextDecoder().decode(r.stderr).split("\n")[0];
    } catch (e) {
      return `${cc}: ${(e as Error).message}`;
    }
  }
  return lastError || "compiler failed";
}

/** The C files compiled into the one library (`csrc/`), in link order. */
const C_SOURCES = ["sida_kernels.c", "sida_conv.c", "sida_attention.c", "sida_copy.c"];
/** Headers the sources include (hashed with them). */
const C_HEADERS = ["sida_expf.h"];

let loaded: CKernels | null | undefined;
let libPath = "";
let whyNot = "";

/** Why the C kernels are not in use (empty when they are). */
export function cKernelsUnavailableReason(): string {
  return whyNot;
}

/**
 * The C kernels, compiled on first use; `null` when they cannot be had (the reason is in
 * {@linkcode cKernelsUnavailableReason}).
 */
export function loadCKernels(): CKernels | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  if (Deno.env.get("SIDA_NATIVE_C") === "0") {
    whyNot = "disabled by SIDA_NATIVE_C=0";
    return null;
  }
  const urls = C_SOURCES.map((f) => new URL(`./csrc/${f}`, import.meta.url));
  if (urls.some((u) => u.protocol !== "file:")) {
    whyNot = "no local C source (imported by URL)";
    return null;
  }
  const srcPaths = urls.map((u) => decodeURIComponent(u.pathname));
  try {
    const headers = C_HEADERS.map((f) => new URL(`./csrc/${f}`, import.meta.url));
    const source = [...srcPaths, ...headers.map((u) => decodeURIComponent(u.pathname))]
      .map((p) => Deno.readTextFileSync(p)).join("\n");
    const ext = Deno.build.os === "darwin" ? "dylib" : Deno.build.os === "windows" ? "dll" : "so";
    const flags = Deno.env.get("SIDA_NATIVE_CFLAGS") ?? "";
    const key = fnv1a(`${VERSION}\n${Deno.build.target}\n${flags}\n${source}`);
    const dir = cacheDir();
    const lib = `${dir}/libsida_kernels-${key}.${ext}`;
    let have = false;
    try {
      have = Deno.statSync(lib).isFile;
    } catch { /* not built yet */ }
    if (!have) {
      Deno.mkdirSync(dir, { recursive: true });
      const tmp = `${lib}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
      const err = compile(srcPaths, tmp);
      if (err) {
        try {
          Deno.removeSync(tmp);
        } catch { /* nothing written */ }
        whyNot = `could not compile ${C_SOURCES.join(", ")}: ${err}`;
        return null;
      }
      Deno.renameSync(tmp, lib);
    }
    const threads = Deno.env.get("SIDA_NUM_THREADS");
    if (threads && !Deno.env.get("OMP_NUM_THREADS")) Deno.env.set("OMP_NUM_THREADS", threads);
    if (!Deno.env.get("OMP_WAIT_POLICY")) Deno.env.set("OMP_WAIT_POLICY", "PASSIVE");
    const { symbols } = Deno.dlopen(lib, SYMBOLS);
    // Keep the library and libgomp loaded until exit, once per process (see pin_library.ts).
    pinLibrary(lib);
    if (symbols.sida_version() !== VERSION) {
      whyNot = `${lib}: unexpected version`;
      return null;
    }
    libPath = lib;
    loaded = makeKernels(lib, symbols);
    return loaded;
  } catch (e) {
    whyNot = (e as Error).message.split("\n")[0];
    return null;
  }
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new RangeError(`sida C kernels: ${what}`);
}

function makeKernels(
  path: string,
  s: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"],
): CKernels {
  return {
    path,
    threads: s.sida_threads(),
    binary(op, out, a, b, sizes, aStrides, bStrides) {
      const k = sizes.length;
      check(aStrides.length === k && bStrides.length === k, "stride count");
      let total = 1, aSpan = 1, bSpan = 1;
      for (let d = 0; d < k; d++) {
        total *= sizes[d];
        aSpan += (sizes[d] - 1) * aStrides[d];
        bSpan += (sizes[d] - 1) * bStrides[d];
      }
      check(total === out.length, "output length");
      check(aSpan <= a.length && bSpan <= b.length && total > 0, "input length");
      s.sida_binary(
        op,
        out,
        a,
        b,
        k,
        BigInt64Array.from(sizes, BigInt),
        BigInt64Array.from(aStrides, BigInt),
        BigInt64Array.from(bStrides, BigInt),
      );
    },
    unary(op, y, x, alpha = 0) {
      check(y.length === x.length, "lengths");
      if (x.length) s.sida_unary(op, y, x, BigInt(x.length), alpha);
    },
    siluGrad(dx, dy, x) {
      check(dx.length === x.length && dy.length === x.length, "lengths");
      if (x.length) s.sida_silu_grad(dx, dy, x, BigInt(x.length));
    },
    groupNorm(y, x, gamma, beta, [N, S, C, G], eps) {
      check(C % G === 0 && x.length === N * S * C && y.length === x.length, "shapes");
      check(gamma.length === C && beta.length === C, "γ/β length");
      if (x.length) {
        s.sida_group_norm(y, x, gamma, beta, BigInt(N), BigInt(S), BigInt(C), BigInt(G), eps);
      }
    },
    im2col(col, x, geom, r0, r1) {
      const [N, H, W, C, Ho, Wo, KH, KW] = geom;
      check(geom.length === 14 && x.length === N * H * W * C, "im2col input");
      check(0 <= r0 && r0 < r1 && r1 <= N * Ho * Wo, "im2col rows");
      check(col.length >= (r1 - r0) * KH * KW * C, "im2col output");
      s.sida_im2col(col, x, BigInt64Array.from(geom, BigInt), BigInt(r0), BigInt(r1));
    },
    col2im(x, col, geom, r0, r1) {
      const [N, H, W, C, Ho, Wo, KH, KW] = geom;
      check(geom.length === 14 && x.length === N * H * W * C, "col2im output");
      check(0 <= r0 && r0 < r1 && r1 <= N * Ho * Wo, "col2im rows");
      check(col.length >= (r1 - r0) * KH * KW * C, "col2im input");
      s.sida_col2im(x, col, BigInt64Array.from(geom, BigInt), BigInt(r0), BigInt(r1));
    },
    groupNormGrad(dx, dgp, dbp, dy, x, gamma, [N, S, C, G], eps) {
      check(C % G === 0 && x.length === N * S * C, "shapes");
      check(dx.length === x.length && dy.length === x.length, "lengths");
      check(gamma.length === C && dgp.length === N * C && dbp.length === N * C, "γ length");
      if (x.length) {
        s.sida_group_norm_grad(
          dx,
          dgp,
          dbp,
          dy,
          x,
          gamma,
          BigInt(N),
          BigInt(S),
          BigInt(C),
          BigInt(G),
          eps,
        );
      }
    },
  };
}

let useC = true;

/** Uses (the default) or bypasses the C kernels, for tests of both paths; returns the old value. */
export function setCKernelsEnabled(on: boolean): boolean {
  const old = useC;
  useC = on;
  return old;
}

/** The C kernels when they are loaded and enabled. */
export function cKernels(): CKernels | null {
  return useC ? loadCKernels() : null;
}

const bound = new Map<object, unknown>();

/**
 * More functions of the compiled library, for kernel modules that keep their own symbol tables:
 * `null` when the C kernels are unavailable or disabled ({@linkcode setCKernelsEnabled}). The
 * library is opened once per symbol table.
 *
 * @example
 * ```ts
 * const SYMBOLS = { sida_softmax: { parameters: ["buffer", "buffer", "i64", "i64"], result: "void" } } as const;
 * const c = bindCKernels(SYMBOLS);
 * if (c) c.sida_softmax(y, x, BigInt(rows), BigInt(cols));
 * ```
 */
export function bindCKernels<S extends Deno.ForeignLibraryInterface>(
  symbols: S,
): Deno.DynamicLibrary<S>["symbols"] | null {
  if (!cKernels()) return null;
  let b = bound.get(symbols) as Deno.DynamicLibrary<S>["symbols"] | undefined;
  if (!b) {
    b = Deno.dlopen(libPath, symbols).symbols;
    bound.set(symbols, b);
  }
  return b;
}
