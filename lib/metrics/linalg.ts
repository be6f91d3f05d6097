/**
 * Float64 dense linear algebra for the metrics: the trace of the matrix square root of a product
 * of two covariance matrices (the hard term of FID), and the accumulation of XᵀX for streaming
 * covariances.
 *
 * Two implementations:
 * - **LAPACK/BLAS through Deno FFI** (`dsyevd`, `dgemm`, `dsyrk` of OpenBLAS or reference LAPACK,
 *   found as `libopenblas.so.0`, `liblapack.so.3`, … or at the path in `SIDA_BLAS`): about 3 s for
 *   a 2048-d FID on two cores. Used when the library loads (needs `--allow-ffi`).
 * - **Pure TypeScript** (the fallback, or forced with `SIDA_LINALG=js`): a pivoted Cholesky
 *   factor S₁ = L Lᵀ (L is n×r, r = numerical rank), the symmetric PSD matrix M = Lᵀ S₂ L, whose
 *   eigenvalues are those of S₁S₂ (similar matrices, plus zeros), Householder tridiagonalisation
 *   of M and implicit QL for its eigenvalues; tr sqrtm(S₁S₂) = Σ √max(λᵢ, 0).
 *
 * Matrices are flat row-major `Float64Array`s (symmetric ones read the same in either order).
 *
 * @module
 */
import { pinLibrary } from "../runtime/native/pin_library.ts";

/** Which implementation to use: `auto` (LAPACK if it loads, else TypeScript), `js` or `lapack`. */
export type LinalgImpl = "auto" | "js" | "lapack";

/** Error for bad matrix arguments (wrong length, non-finite values) or a failed factorisation. */
export class LinalgError extends Error {
  override name = "LinalgError";
}

// ---------------------------------------------------------------------------------------------
// LAPACK / BLAS through FFI

const LAPACK_SYMBOLS = {
  dsyevd_: {
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "usize",
      "usize",
    ],
    result: "void",
  },
  dgemm_: {
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "usize",
      "usize",
    ],
    result: "void",
  },
  dsyrk_: {
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "usize",
      "usize",
    ],
    result: "void",
  },
} as const;

type LapackLib = Deno.DynamicLibrary<typeof LAPACK_SYMBOLS>;

const LIBRARY_NAMES = [
  "libopenblas.so.0",
  "libopenblas.so",
  "liblapack.so.3",
  "liblapack.so",
  "libopenblas.dylib",
  "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
  "/usr/local/opt/openblas/lib/libopenblas.dylib",
];

let lapack: { lib: LapackLib; name: string } | null | undefined;

/**
 * The LAPACK/BLAS library used by the fast path, loaded on first call: `SIDA_BLAS` (a path or a
 * library name) first, then the usual OpenBLAS / reference-LAPACK names. `null` when none loads,
 * when FFI is not permitted, or when `SIDA_LINALG=js`.
 */
export function lapackLibrary(): { name: string } | null {
  if (lapack !== undefined) return lapack ? { name: lapack.name } : null;
  lapack = null;
  let forced: string | undefined;
  try {
    if (Deno.env.get("SIDA_LINALG") === "js") return null;
    forced = Deno.env.get("SIDA_BLAS") || undefined;
  } catch {
    // no env permission: try the default names
  }
  for (const name of forced ? [forced] : LIBRARY_NAMES) {
    try {
      const lib = Deno.dlopen(name, LAPACK_SYMBOLS);
      // Loaded once per process, not once per Worker (see pin_library.ts): OpenBLAS' destructor
      // must not run while another isolate's thread still uses the library.
      pinLibrary(name);
      lapack = { lib, name };
      break;
    } catch {
      // not there, or no FFI permission
    }
  }
  return lapack ? { name: lapack.name } : null;
}

function useLapack(impl: LinalgImpl): LapackLib | null {
  if (impl === "js") return null;
  const found = lapackLibrary();
  if (!found) {
    if (impl === "lapack") {
      throw new LinalgError("no LAPACK library could be loaded (set SIDA_BLAS, allow FFI)");
    }
    return null;
  }
  return lapack!.lib;
}

const CH = (c: string) => new Uint8Array([c.charCodeAt(0)]);
const I32 = (v: number) => new Int32Array([v]);
const F64 = (v: number) => new Float64Array([v]);

/** Eigenvalues (ascending) and, with `vectors`, eigenvectors of a symmetric matrix via dsyevd. */
function lapackEigh(
  lib: LapackLib,
  a: Float64Array,
  n: number,
  vectors: boolean,
): Float64Array {
  const w = new Float64Array(n);
  const info = new Int32Array(1);
  const wq = new Float64Array(1);
  const iwq = new Int32Array(1);
  const jobz = CH(vectors ? "V" : "N");
  const uplo = CH("L");
  lib.symbols.dsyevd_(jobz, uplo, I32(n), a, I32(n), w, wq, I32(-1), iwq, I32(-1), info, 1n, 1n);
  if (info[0] !== 0) throw new LinalgError(`dsyevd workspace query failed (info ${info[0]})`);
  const lwork = Math.max(1, Math.ceil(wq[0]));
  const liwork = Math.max(1, iwq[0]);
  lib.symbols.dsyevd_(
    jobz,
    uplo,
    I32(n),
    a,
    I32(n),
    w,
    new Float64Array(lwork),
    I32(lwork),
    new Int32Array(liwork),
    I32(liwork),
    info,
    1n,
    1n,
  );
  if (info[0] !== 0) throw new LinalgError(`dsyevd failed (info ${info[0]})`);
  return w;
}

/** C = op(A)·B for square n×n column-major matrices (op = transpose when `transA`). */
function lapackGemm(
  lib: LapackLib,
  transA: boolean,
  a: Float64Array,
  b: Float64Array,
  n: number,
): Float64Array {
  const c = new Float64Array(n * n);
  lib.symbols.dgemm_(
    CH(transA ? "T" : "N"),
    CH("N"),
    I32(n),
    I32(n),
    I32(n),
    F64(1),
    a,
    I32(n),
    b,
    I32(n),
    F64(0),
    c,
    I32(n),
    1n,
    1n,
  );
  return c;
}

function traceSqrtLapack(lib: LapackLib, s1: Float64Array, s2: Float64Array, n: number): number {
  const v = s1.slice();
  const lam = lapackEigh(lib, v, n, true); // v: column-major eigenvectors
  const t = lapackGemm(lib, false, s2, v, n); // S2·V (S2 symmetric: layout-free)
  const m = lapackGemm(lib, true, v, t, n); // Vᵀ·S2·V
  const s = new Float64Array(n);
  const tol = noiseFloor(lam, n);
  for (let i = 0; i < n; i++) s[i] = lam[i] > tol ? Math.sqrt(lam[i]) : 0;
  for (let i = 0; i < n; i++) {
    const si = s[i];
    const row = i * n;
    for (let j = 0; j < n; j++) m[row + j] *= si * s[j];
  }
  return sumSqrt(lapackEigh(lib, m, n, false), n);
}

/**
 * Eigenvalues of a PSD matrix at or below n·ε·max|λ| are rounding noise (the eigenvalues of a
 * rank-deficient matrix scatter around 0 by about that much); they count as 0, so that their
 * square roots (≈ √noise, much larger than the noise) do not bias the trace.
 */
function noiseFloor(lam: Float64Array, n: number): number {
  let max = 0;
  for (let i = 0; i < n; i++) max = Math.max(max, Math.abs(lam[i]));
  return n * 2.220446049250313e-16 * max;
}

/** Σ √λᵢ over the eigenvalues above the noise floor. */
function sumSqrt(lam: Float64Array, n: number): number {
  const tol = noiseFloor(lam, n);
  let tr = 0;
  for (let i = 0; i < n; i++) if (lam[i] > tol) tr += Math.sqrt(lam[i]);
  return tr;
}

// ---------------------------------------------------------------------------------------------
// Pure TypeScript

/**
 * Pivoted (left-looking) Cholesky of a symmetric PSD matrix: S ≈ L Lᵀ with L n×r (row-major,
 * rows in the original order), stopping when the largest remaining pivot is ≤ `tol`.
 */
export function pivotedCholesky(
  s: Float64Array,
  n: number,
  tol?: number,
): { l: Float64Array; rank: number } {
  const d = new Float64Array(n);
  let maxDiag = 0;
  for (let i = 0; i < n; i++) {
    d[i] = s[i * n + i];
    if (d[i] > maxDiag) maxDiag = d[i];
  }
  const threshold = tol ?? n * 2.220446049250313e-16 * maxDiag;
  // Work in a square buffer (stride n); compact to n×r at the end.
  const l = new Float64Array(n * n);
  const done = new Uint8Array(n);
  let rank = 0;
  for (let k = 0; k < n; k++) {
    let p = -1;
    let best = threshold;
    for (let i = 0; i < n; i++) {
      if (!done[i] && d[i] > best) {
        best = d[i];
        p = i;
      }
    }
    if (p < 0) break;
    done[p] = 1;
    const lpp = Math.sqrt(d[p]);
    const rowP = p * n;
    l[rowP + k] = lpp;
    for (let i = 0; i < n; i++) {
      if (done[i]) continue;
      const rowI = i * n;
      let acc = s[rowI + p];
      for (let m = 0; m < k; m++) acc -= l[rowI + m] * l[rowP + m];
      const v = acc / lpp;
      l[rowI + k] = v;
      d[i] -= v * v;
    }
    rank = k + 1;
  }
  if (rank === n) return { l, rank };
  const out = new Float64Array(n * rank);
  for (let i = 0; i < n; i++) out.set(l.subarray(i * n, i * n + rank), i * rank);
  return { l: out, rank };
}

/** M = Lᵀ S L for symmetric S (n×n) and L (n×r), as a full symmetric r×r matrix. */
function congruence(s: Float64Array, l: Float64Array, n: number, r: number): Float64Array {
  // T = S·L (n×r), i-k-j order.
  const t = new Float64Array(n * r);
  for (let i = 0; i < n; i++) {
    const rowS = i * n;
    const rowT = i * r;
    for (let j = 0; j < n; j++) {
      const sij = s[rowS + j];
      if (sij === 0) continue;
      const rowL = j * r;
      for (let c = 0; c < r; c++) t[rowT + c] += sij * l[rowL + c];
    }
  }
  // M = Lᵀ·T: upper triangle M[a][b], b ≥ a, accumulated row by row of L and T.
  const m = new Float64Array(r * r);
  for (let i = 0; i < n; i++) {
    const rowL = i * r;
    const rowT = i * r;
    for (let a = 0; a < r; a++) {
      const la = l[rowL + a];
      if (la === 0) continue;
      const rowM = a * r;
      for (let b = a; b < r; b++) m[rowM + b] += la * t[rowT + b];
    }
  }
  for (let a = 0; a < r; a++) {
    for (let b = a + 1; b < r; b++) m[b * r + a] = m[a * r + b];
  }
  return m;
}

/**
 * Eigenvalues of a symmetric matrix (ascending), in pure TypeScript: Householder reduction to
 * tridiagonal form (EISPACK `tred2` without accumulating the transformations, arranged so that
 * the inner loops run along rows) and the implicit QL method (`tql2` without vectors). The
 * input is overwritten.
 */
export function symmetricEigenvaluesJs(a: Float64Array, n: number): Float64Array {
  const d = new Float64Array(n);
  const e = new Float64Array(n);
  if (n === 0) return d;
  // W[j][k] (k ≥ j, row-major) holds the lower triangle V[k][j] of the JAMA formulation.
  for (let j = 0; j < n; j++) d[j] = a[j * n + (n - 1)];
  for (let i = n - 1; i > 0; i--) {
    let scale = 0;
    let h = 0;
    for (let k = 0; k < i; k++) scale += Math.abs(d[k]);
    if (scale === 0) {
      e[i] = d[i - 1];
      for (let j = 0; j < i; j++) {
        d[j] = a[j * n + (i - 1)];
        a[j * n + i] = 0;
      }
    } else {
      for (let k = 0; k < i; k++) {
        d[k] /= scale;
        h += d[k] * d[k];
      }
      let f = d[i - 1];
      let g = Math.sqrt(h);
      if (f > 0) g = -g;
      e[i] = scale * g;
      h -= f * g;
      d[i - 1] = f - g;
      for (let j = 0; j < i; j++) e[j] = 0;
      for (let j = 0; j < i; j++) {
        f = d[j];
        const row = j * n;
        g = e[j] + a[row + j] * f;
        for (let k = j + 1; k < i; k++) {
          const w = a[row + k];
          g += w * d[k];
          e[k] += w * f;
        }
        e[j] = g;
      }
      f = 0;
      for (let j = 0; j < i; j++) {
        e[j] /= h;
        f += e[j] * d[j];
      }
      const hh = f / (h + h);
      for (let j = 0; j < i; j++) e[j] -= hh * d[j];
      for (let j = 0; j < i; j++) {
        f = d[j];
        g = e[j];
        const row = j * n;
        for (let k = j; k < i; k++) a[row + k] -= f * e[k] + g * d[k];
        d[j] = a[row + (i - 1)];
        a[row + i] = 0;
      }
    }
    d[i] = h;
  }
  for (let j = 0; j < n; j++) d[j] = a[j * n + j];
  e[0] = 0;
  tql1(d, e, n);
  d.sort();
  return d;
}

/** Implicit QL eigenvalues of the tridiagonal (d, e) with e[i] the (i−1, i) entry. */
function tql1(d: Float64Array, e: Float64Array, n: number): void {
  for (let i = 1; i < n; i++) e[i - 1] = e[i];
  e[n - 1] = 0;
  let f = 0;
  let tst1 = 0;
  const eps = 2.220446049250313e-16;
  for (let l = 0; l < n; l++) {
    tst1 = Math.max(tst1, Math.abs(d[l]) + Math.abs(e[l]));
    let m = l;
    while (m < n - 1 && Math.abs(e[m]) > eps * tst1) m++;
    if (m > l) {
      let iter = 0;
      do {
        if (++iter > 100) throw new LinalgError("QL iteration did not converge");
        let g = d[l];
        let p = (d[l + 1] - g) / (2 * e[l]);
        let r = Math.hypot(p, 1);
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const dl1 = d[l + 1];
        let h = g - d[l];
        for (let i = l + 2; i < n; i++) d[i] -= h;
        f += h;
        p = d[m];
        let c = 1;
        let c2 = c;
        let c3 = c;
        const el1 = e[l + 1];
        let s = 0;
        let s2 = 0;
        for (let i = m - 1; i >= l; i--) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = Math.hypot(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
        }
        p = -s * s2 * c3 * el1 * e[l] / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (Math.abs(e[l]) > eps * tst1);
    }
    d[l] += f;
    e[l] = 0;
  }
}

function traceSqrtJs(s1: Float64Array, s2: Float64Array, n: number): number {
  const { l, rank } = pivotedCholesky(s1, n);
  if (rank === 0) return 0;
  const m = congruence(s2, l, n, rank);
  return sumSqrt(symmetricEigenvaluesJs(m, rank), rank);
}

// ---------------------------------------------------------------------------------------------
// Public entry points

function checkSquare(a: Float64Array, n: number, what: string): void {
  if (!(a instanceof Float64Array) || a.length !== n * n) {
    throw new LinalgError(`${what} must be a Float64Array of ${n}×${n} values`);
  }
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) throw new LinalgError(`${what} has a non-finite value`);
  }
}

/**
 * tr sqrtm(S₁S₂) for symmetric positive semi-definite S₁, S₂ (n×n, flat): Σ √λᵢ over the
 * eigenvalues of S₁S₂ (real and ≥ 0 for PSD inputs; tiny negative rounding is clamped to 0).
 * Equals the trace of the real part of `scipy.linalg.sqrtm(S1 @ S2)` when that converges.
 *
 * @param impl `auto` (LAPACK if available), `js`, or `lapack` (error if unavailable).
 * @throws {LinalgError} on wrong sizes or non-finite entries.
 */
export function traceSqrtProduct(
  s1: Float64Array,
  s2: Float64Array,
  n: number,
  impl: LinalgImpl = "auto",
): number {
  checkSquare(s1, n, "sigma1");
  checkSquare(s2, n, "sigma2");
  const lib = useLapack(impl);
  return lib ? traceSqrtLapack(lib, s1, s2, n) : traceSqrtJs(s1, s2, n);
}

/**
 * Eigenvalues (ascending) of a symmetric n×n matrix (row-major or column-major: the same for a
 * symmetric matrix); the input is not modified.
 *
 * @param impl `auto` (LAPACK `dsyevd` if available), `js`, or `lapack`.
 */
export function symmetricEigenvalues(
  a: Float64Array,
  n: number,
  impl: LinalgImpl = "auto",
): Float64Array {
  checkSquare(a, n, "matrix");
  const lib = useLapack(impl);
  return lib ? lapackEigh(lib, a.slice(), n, false) : symmetricEigenvaluesJs(a.slice(), n);
}

/**
 * Checks that `sigma` is a covariance matrix: finite, symmetric, and positive semi-definite up to
 * rounding (its lowest eigenvalue at least −1e-5 times its largest; the eigenvalues of a float32
 * covariance scatter around zero by far less). FID is only defined for such matrices: with a
 * negative eigenvalue the square-root term is meaningless, and the number printed would be too.
 *
 * @param what how to name the matrix in the error.
 * @throws {LinalgError} naming `what` and the offending value.
 */
export function checkCovariance(
  sigma: Float64Array,
  n: number,
  what = "sigma",
  impl: LinalgImpl = "auto",
): void {
  if (sigma.length !== n * n) throw new LinalgError(`${what} must hold ${n}×${n} values`);
  let maxAbs = 0;
  for (let i = 0; i < sigma.length; i++) {
    if (!Number.isFinite(sigma[i])) throw new LinalgError(`${what} has a non-finite value`);
    maxAbs = Math.max(maxAbs, Math.abs(sigma[i]));
  }
  for (let i = 0; i < n; i++) {
    if (sigma[i * n + i] < 0) {
      throw new LinalgError(`${what} has a negative variance (${sigma[i * n + i]} at ${i})`);
    }
    for (let j = i + 1; j < n; j++) {
      const a = sigma[i * n + j];
      const b = sigma[j * n + i];
      if (Math.abs(a - b) > 1e-6 * maxAbs) {
        throw new LinalgError(
          `${what} is not symmetric (${a} at [${i},${j}], ${b} at [${j},${i}])`,
        );
      }
    }
  }
  const lam = symmetricEigenvalues(sigma, n, impl);
  const max = lam[n - 1];
  if (lam[0] < -1e-5 * Math.max(max, 0) || (max <= 0 && maxAbs > 0)) {
    throw new LinalgError(
      `${what} is not positive semi-definite (eigenvalue ${lam[0].toPrecision(4)}, largest ${
        max.toPrecision(4)
      })`,
    );
  }
}

/**
 * C += XᵀX on the upper triangle (row-major; `i ≤ j`) of a d×d accumulator, for X of `n` rows
 * of `d` float64 values (row-major). The lower triangle is left as it is.
 */
export function syrkUpper(
  c: Float64Array,
  x: Float64Array,
  n: number,
  d: number,
  impl: LinalgImpl = "auto",
): void {
  if (n === 0) return;
  const lib = d >= 64 ? useLapack(impl) : null;
  if (lib) {
    // Row-major X (n×d) is column-major Xc (d×n); C_colmajor(lower) += Xc·Xcᵀ.
    lib.symbols.dsyrk_(
      CH("L"),
      CH("N"),
      I32(d),
      I32(n),
      F64(1),
      x,
      I32(d),
      F64(1),
      c,
      I32(d),
      1n,
      1n,
    );
    return;
  }
  // Transpose to d×n so that each C entry is one contiguous dot product.
  const xt = new Float64Array(d * n);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < d; i++) xt[i * n + r] = x[r * d + i];
  }
  for (let i = 0; i < d; i++) {
    const oi = i * n;
    const rowC = i * d;
    for (let j = i; j < d; j++) {
      const oj = j * n;
      let acc = 0;
      for (let r = 0; r < n; r++) acc += xt[oi + r] * xt[oj + r];
      c[rowC + j] += acc;
    }
  }
}
