/**
 * Feature statistics and the sample-based generative metrics of `docs/distillation.md` §7.1:
 * streaming mean/covariance in float64 ({@linkcode FeatureStats}), the Fréchet distance
 * ({@linkcode fid}), the Inception Score ({@linkcode inceptionScore}) and improved
 * precision/recall ({@linkcode precisionRecall}).
 *
 * @example
 * ```ts
 * import { FeatureStats, fid } from "./stats.ts";
 * const a = new FeatureStats(4);
 * a.add(new Float32Array([1, 2, 3, 4, 2, 3, 1, 0, 0, 1, 1, 1]), 3);
 * const mu = a.mean(), sigma = a.cov();
 * console.log(fid(mu, sigma, mu, sigma)); // 0
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import { type LinalgImpl, syrkUpper, traceSqrtProduct } from "./linalg.ts";

/** Error for bad metric inputs (wrong sizes, too few samples, non-finite values). */
export class MetricError extends Error {
  override name = "MetricError";
}

/** Options of {@linkcode FeatureStats}. */
export interface FeatureStatsOptions {
  /** Also keep every feature vector (float32), for precision/recall or IS. Default false. */
  captureAll?: boolean;
  /** Implementation of the XᵀX accumulation (`auto`: BLAS `dsyrk` when available). */
  impl?: LinalgImpl;
}

/**
 * Streaming mean and covariance of feature vectors, accumulated in float64 for any number of
 * vectors. To avoid cancellation, the sums are taken around a shift c (the mean of the first
 * batch): Σ(f−c) and Σ(f−c)(f−c)ᵀ.
 *
 * {@linkcode FeatureStats.cov} is unbiased by default (divides by N−1), as `np.cov(rowvar=False)`
 * and EDM's `fid.py` (`edm:fid.py:60-78`), which made the published reference statistics; SiD's
 * in-training FID divides by N (`{ unbiased: false }`).
 */
export class FeatureStats {
  /** Feature dimension. */
  readonly dim: number;
  #count = 0;
  #shift: Float64Array | null = null;
  #sum: Float64Array;
  #sum2: Float64Array;
  #impl: LinalgImpl;
  #captured: Float32Array[] | null;

  /** An empty accumulator for `dim`-dimensional features. */
  constructor(dim: number, options: FeatureStatsOptions = {}) {
    if (!Number.isInteger(dim) || dim <= 0) {
      throw new MetricError(`feature dim must be a positive integer, got ${dim}`);
    }
    this.dim = dim;
    this.#sum = new Float64Array(dim);
    this.#sum2 = new Float64Array(dim * dim);
    this.#impl = options.impl ?? "auto";
    this.#captured = options.captureAll ? [] : null;
  }

  /** Number of feature vectors added so far. */
  get count(): number {
    return this.#count;
  }

  /**
   * Adds `n` feature vectors (row-major `n × dim`).
   *
   * @param features the vectors; its length must be `n · dim`.
   * @param n number of vectors (default `features.length / dim`).
   * @param dim their dimension; must equal {@linkcode FeatureStats.dim} when given.
   * @throws {MetricError} on a size mismatch or a non-finite value.
   */
  add(features: Float32Array | Float64Array, n?: number, dim?: number): void {
    const d = this.dim;
    if (dim !== undefined && dim !== d) {
      throw new MetricError(`features have dim ${dim}, the statistics have ${d}`);
    }
    const rows = n ?? features.length / d;
    if (!Number.isInteger(rows) || rows < 0 || features.length !== rows * d) {
      throw new MetricError(
        `features: ${features.length} values do not make ${n ?? "whole"} rows of ${d}`,
      );
    }
    if (rows === 0) return;
    for (let i = 0; i < features.length; i++) {
      if (!Number.isFinite(features[i])) {
        throw new MetricError(`features: non-finite value at row ${Math.floor(i / d)}`);
      }
    }
    if (!this.#shift) {
      const c = new Float64Array(d);
      for (let r = 0; r < rows; r++) {
        for (let i = 0; i < d; i++) c[i] += features[r * d + i];
      }
      for (let i = 0; i < d; i++) c[i] /= rows;
      this.#shift = c;
    }
    const c = this.#shift;
    // Chunks of at most 256 rows keep the centred copy small.
    for (let r0 = 0; r0 < rows; r0 += 256) {
      const nr = Math.min(256, rows - r0);
      const x = new Float64Array(nr * d);
      for (let r = 0; r < nr; r++) {
        const src = (r0 + r) * d;
        const dst = r * d;
        for (let i = 0; i < d; i++) {
          const v = features[src + i] - c[i];
          x[dst + i] = v;
          this.#sum[i] += v;
        }
      }
      syrkUpper(this.#sum2, x, nr, d, this.#impl);
    }
    this.#count += rows;
    if (this.#captured) {
      this.#captured.push(
        features instanceof Float32Array ? features.slice() : Float32Array.from(features),
      );
    }
  }

  /** Adds the rows of a `[N, dim]` tfjs tensor (read with `await t.data()`; not disposed). */
  async addTensor(t: tf.Tensor): Promise<void> {
    if (t.rank !== 2 || t.shape[1] !== this.dim) {
      throw new MetricError(`expected features [N, ${this.dim}], got [${t.shape}]`);
    }
    const data = await t.data();
    this.add(data instanceof Float32Array ? data : Float32Array.from(data as Int32Array));
  }

  /** The mean vector (float64). @throws {MetricError} when nothing was added. */
  mean(): Float64Array {
    if (this.#count === 0) throw new MetricError("no features were added");
    const mu = new Float64Array(this.dim);
    for (let i = 0; i < this.dim; i++) mu[i] = this.#shift![i] + this.#sum[i] / this.#count;
    return mu;
  }

  /**
   * The covariance matrix (float64, `dim × dim` row-major, exactly symmetric).
   *
   * @param options `unbiased` (default true): divide by N−1 as `np.cov` and EDM's `fid.py`;
   *   false divides by N as SiD's training-time FID (`E[xxᵀ] − μμᵀ`).
   * @throws {MetricError} with fewer than 2 vectors (unbiased) or none.
   */
  cov(options: { unbiased?: boolean } = {}): Float64Array {
    const unbiased = options.unbiased ?? true;
    const n = this.#count;
    if (n === 0 || (unbiased && n < 2)) {
      throw new MetricError(`a covariance needs at least ${unbiased ? 2 : 1} vectors, got ${n}`);
    }
    const d = this.dim;
    const s = this.#sum;
    const out = new Float64Array(d * d);
    const div = unbiased ? n - 1 : n;
    for (let i = 0; i < d; i++) {
      for (let j = i; j < d; j++) {
        const v = (this.#sum2[i * d + j] - s[i] * s[j] / n) / div;
        out[i * d + j] = v;
        out[j * d + i] = v;
      }
    }
    return out;
  }

  /** Every added vector, row-major (only with `captureAll`). */
  all(): Float32Array {
    if (!this.#captured) throw new MetricError("FeatureStats was made without captureAll");
    const out = new Float32Array(this.#count * this.dim);
    let off = 0;
    for (const part of this.#captured) {
      out.set(part, off);
      off += part.length;
    }
    return out;
  }
}

/** Mean and covariance of a set of features, as stored in reference statistics. */
export interface Stats {
  /** Mean, length `dim`. */
  mu: Float64Array;
  /** Covariance, `dim × dim` row-major. */
  sigma: Float64Array;
  /** Feature dimension. */
  dim: number;
}

/**
 * Mean and (unbiased by default) covariance of `n` feature vectors of dimension `dim`.
 *
 * @example
 * ```ts
 * import { featureStats } from "./stats.ts";
 * const { mu, sigma } = featureStats(new Float32Array([0, 0, 2, 2]), 2, 2);
 * // mu = [1, 1], sigma = [[2, 2], [2, 2]]
 * ```
 */
export function featureStats(
  features: Float32Array | Float64Array,
  n: number,
  dim: number,
  options: { unbiased?: boolean } = {},
): Stats {
  const s = new FeatureStats(dim);
  s.add(features, n, dim);
  return { mu: s.mean(), sigma: s.cov(options), dim };
}

/** Options of {@linkcode fid}. */
export interface FidOptions {
  /** Matrix-square-root implementation (see `linalg.ts`); default `auto`. */
  impl?: LinalgImpl;
}

function asF64(a: Float64Array | Float32Array | number[], what: string, len: number): Float64Array {
  if (a.length !== len) throw new MetricError(`${what} has ${a.length} values, expected ${len}`);
  return a instanceof Float64Array ? a : Float64Array.from(a);
}

/**
 * The Fréchet distance between two Gaussians (FID when the statistics are Inception pool
 * features): ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2·(Σ₁Σ₂)^½), all in float64. The square-root term is
 * Σ√λᵢ over the eigenvalues of Σ₁Σ₂ (see `traceSqrtProduct` in `linalg.ts`), which is what
 * `scipy.linalg.sqrtm` approximates in EDM's and SiD's code, without its complex round-off.
 *
 * @param mu1 mean of the first set (length d).
 * @param sigma1 covariance of the first set (d×d, row-major).
 * @param mu2 mean of the second set.
 * @param sigma2 covariance of the second set.
 * @throws {MetricError} on mismatched sizes; `LinalgError` on non-finite values.
 */
export function fid(
  mu1: Float64Array | Float32Array | number[],
  sigma1: Float64Array | Float32Array | number[],
  mu2: Float64Array | Float32Array | number[],
  sigma2: Float64Array | Float32Array | number[],
  options: FidOptions = {},
): number {
  const t = fidTerms(mu1, sigma1, mu2, sigma2, options);
  return t.mean + t.cov;
}

/**
 * The two terms of {@linkcode fid}: `mean` = ‖μ₁ − μ₂‖² (where the two sets sit) and `cov` =
 * tr(Σ₁ + Σ₂ − 2·(Σ₁Σ₂)^½) (how they spread); FID is their sum. Which term grows tells whether
 * samples moved as a whole or lost or gained variety.
 *
 * @example
 * ```ts
 * import { fidTerms } from "./stats.ts";
 * fidTerms([0], [4], [3], [1]); // { mean: 9, cov: 1 } (4 + 1 − 2·√4)
 * ```
 */
export function fidTerms(
  mu1: Float64Array | Float32Array | number[],
  sigma1: Float64Array | Float32Array | number[],
  mu2: Float64Array | Float32Array | number[],
  sigma2: Float64Array | Float32Array | number[],
  options: FidOptions = {},
): { mean: number; cov: number } {
  const d = mu1.length;
  const m1 = asF64(mu1, "mu1", d);
  const m2 = asF64(mu2, "mu2", d);
  const s1 = asF64(sigma1, "sigma1", d * d);
  const s2 = asF64(sigma2, "sigma2", d * d);
  let dist = 0;
  let tr = 0;
  for (let i = 0; i < d; i++) {
    const diff = m1[i] - m2[i];
    dist += diff * diff;
    tr += s1[i * d + i] + s2[i * d + i];
  }
  const root = traceSqrtProduct(s1, s2, d, options.impl ?? "auto");
  return { mean: dist, cov: tr - 2 * root };
}

/** Mean and standard deviation of a metric over splits. */
export interface MeanStd {
  mean: number;
  std: number;
}

/**
 * Inception Score of `n` class-probability vectors of `numClasses` values (row-major):
 * split into `splits` consecutive parts (part i is rows ⌊i·n/splits⌋ … ⌊(i+1)·n/splits⌋ − 1),
 * IS_i = exp(mean over rows of KL(p(y|x) ‖ p(y))) with p(y) the part's mean, and the mean and
 * population standard deviation over parts, exactly as `sid:metrics/sid_inception_score.py`
 * (float64). Terms with p = 0 count as 0 (numpy would give NaN).
 *
 * @example
 * ```ts
 * import { inceptionScore } from "./stats.ts";
 * // two equally likely, perfectly confident classes: IS = 2
 * inceptionScore(new Float32Array([1, 0, 0, 1]), 2, 1); // { mean: 2, std: 0 }
 * ```
 */
export function inceptionScore(
  probs: Float32Array | Float64Array,
  numClasses: number,
  splits = 10,
): MeanStd {
  const c = numClasses;
  const n = probs.length / c;
  if (!Number.isInteger(n) || n === 0) {
    throw new MetricError(`probs: ${probs.length} values do not make rows of ${c}`);
  }
  if (!Number.isInteger(splits) || splits < 1 || splits > n) {
    throw new MetricError(`splits must be an integer in 1..${n}, got ${splits}`);
  }
  const scores: number[] = [];
  const py = new Float64Array(c);
  for (let s = 0; s < splits; s++) {
    const lo = Math.floor(s * n / splits);
    const hi = Math.floor((s + 1) * n / splits);
    py.fill(0);
    for (let r = lo; r < hi; r++) {
      for (let k = 0; k < c; k++) py[k] += probs[r * c + k];
    }
    for (let k = 0; k < c; k++) py[k] /= hi - lo;
    let kl = 0;
    for (let r = lo; r < hi; r++) {
      let row = 0;
      for (let k = 0; k < c; k++) {
        const p = probs[r * c + k];
        if (p > 0) row += p * (Math.log(p) - Math.log(py[k]));
        else if (!(p === 0)) throw new MetricError(`probs: bad probability ${p} in row ${r}`);
      }
      kl += row;
    }
    scores.push(Math.exp(kl / (hi - lo)));
  }
  const mean = scores.reduce((a, b) => a + b, 0) / splits;
  const variance = scores.reduce((a, b) => a + (b - mean) * (b - mean), 0) / splits;
  return { mean, std: Math.sqrt(variance) };
}

/** Options of {@linkcode precisionRecall}. */
export interface PrecisionRecallOptions {
  /** Neighbourhood size k (default 3: `pr50k3`). */
  k?: number;
  /** Rows per distance batch (default: as many as keep one batch near 16 M distances). */
  rowBatch?: number;
  /**
   * Where the distances' element-wise work runs: `true`, a host loop over each batch's `abᵀ`
   * (the matrix product stays a tfjs op, BLAS on `native`); `false`, tfjs ops throughout.
   * Default: the host loop except on `webgpu`, where tfjs ops keep the batches on the GPU. Both
   * give the same float32 distances, hence the same answer.
   */
  host?: boolean;
}

/**
 * Squared distances (float32) between the rows of `a` [m, d] and `b` [n, d]:
 * |a|² + |b|² − 2abᵀ, clamped at 0.
 */
function sqDist(a: tf.Tensor2D, bT: tf.Tensor2D, bNorm: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => {
    const aNorm = tf.sum(tf.square(a), 1, true);
    const ab = tf.matMul(a, bT);
    return tf.relu(tf.sub(tf.add(aNorm, bNorm), tf.mul(ab, 2))) as tf.Tensor2D;
  });
}

function kthRadii(m: tf.Tensor2D, k: number, rowBatch: number): tf.Tensor1D {
  const n = m.shape[0];
  const mT = tf.transpose(m) as tf.Tensor2D;
  const mNorm = tf.tidy(() => tf.reshape(tf.sum(tf.square(m), 1), [1, n])) as tf.Tensor2D;
  const parts: tf.Tensor1D[] = [];
  try {
    for (let r0 = 0; r0 < n; r0 += rowBatch) {
      const rows = Math.min(rowBatch, n - r0);
      parts.push(tf.tidy(() => {
        const a = tf.slice(m, [r0, 0], [rows, -1]) as tf.Tensor2D;
        const d2 = sqDist(a, mT, mNorm);
        // (k+1)-th smallest (the point itself is the first) = −(k+1)-th largest of −d².
        const { values } = tf.topk(tf.neg(d2), k + 1);
        return tf.neg(tf.reshape(tf.slice(values, [0, k], [rows, 1]), [rows])) as tf.Tensor1D;
      }));
    }
    return tf.concat(parts) as tf.Tensor1D;
  } finally {
    tf.dispose([mT, mNorm, ...parts]);
  }
}

/**
 * Host loops of {@linkcode precisionRecall}: per batch of rows, `abᵀ` is a tfjs matrix product
 * (BLAS on the `native` backend) and the rest (|a|² + |b|² − 2abᵀ in float32, clamped at 0, then
 * the (k+1)-th smallest per row or the first ball hit) is one pass in plain loops: on CPU backends
 * tfjs' element-wise ops and `topk` over the [rows, n] distances cost several times the product.
 */
class HostDistances {
  readonly #mT: tf.Tensor2D;
  readonly #mNorm: Float32Array;
  readonly n: number;

  private constructor(mT: tf.Tensor2D, mNorm: Float32Array) {
    this.n = mNorm.length;
    this.#mT = mT;
    this.#mNorm = mNorm;
  }

  /** The manifold's transpose and squared row norms (read back asynchronously: WebGPU). */
  static async of(manifold: tf.Tensor2D): Promise<HostDistances> {
    const norm = tf.tidy(() => tf.sum(tf.square(manifold), 1));
    let mNorm: Float32Array;
    try {
      mNorm = (await norm.data()) as Float32Array;
    } finally {
      norm.dispose();
    }
    return new HostDistances(tf.transpose(manifold) as tf.Tensor2D, mNorm);
  }

  /** Calls `row(i, d2)` for rows `r0 …` of `a` with their squared distances to the manifold. */
  async rows(
    a: tf.Tensor2D,
    rowBatch: number,
    row: (i: number, d2: (j: number) => number) => void,
  ): Promise<void> {
    const n = this.n, mNorm = this.#mNorm, fr = Math.fround;
    for (let r0 = 0; r0 < a.shape[0]; r0 += rowBatch) {
      const rows = Math.min(rowBatch, a.shape[0] - r0);
      const [ab, aNorm] = tf.tidy(() => {
        const x = tf.slice(a, [r0, 0], [rows, -1]) as tf.Tensor2D;
        return [tf.matMul(x, this.#mT), tf.sum(tf.square(x), 1)];
      });
      let abv: Float32Array, an: Float32Array;
      try {
        abv = (await ab.data()) as Float32Array;
        an = (await aNorm.data()) as Float32Array;
      } finally {
        tf.dispose([ab, aNorm]);
      }
      for (let i = 0; i < rows; i++) {
        const ai = an[i], off = i * n;
        // The tfjs ops' float32 roundings: (|a|² + |b|²) − 2abᵀ, then relu.
        row(r0 + i, (j) => {
          const d = fr(fr(ai + mNorm[j]) - 2 * abv[off + j]);
          return d > 0 ? d : 0;
        });
      }
    }
  }

  dispose(): void {
    this.#mT.dispose();
  }
}

/** {@linkcode kthRadii} with the host loop: the (k+1)-th smallest squared distance per row. */
async function kthRadiiHost(m: tf.Tensor2D, k: number, rowBatch: number): Promise<Float32Array> {
  const h = await HostDistances.of(m);
  const out = new Float32Array(h.n);
  const best = new Float64Array(k + 1);
  try {
    await h.rows(m, rowBatch, (i, d2) => {
      best.fill(Infinity);
      for (let j = 0; j < h.n; j++) {
        const d = d2(j);
        if (d >= best[k]) continue;
        let p = k;
        while (p > 0 && best[p - 1] > d) {
          best[p] = best[p - 1];
          p--;
        }
        best[p] = d;
      }
      out[i] = best[k];
    });
  } finally {
    h.dispose();
  }
  return out;
}

/** {@linkcode coverage} with the host loop. */
async function coverageHost(
  manifold: tf.Tensor2D,
  radii: Float32Array,
  probes: tf.Tensor2D,
  rowBatch: number,
): Promise<number> {
  const h = await HostDistances.of(manifold);
  let hits = 0;
  try {
    await h.rows(probes, rowBatch, (_i, d2) => {
      for (let j = 0; j < h.n; j++) {
        if (d2(j) <= radii[j]) {
          hits++;
          return;
        }
      }
    });
  } finally {
    h.dispose();
  }
  return hits / probes.shape[0];
}

async function coverage(
  manifold: tf.Tensor2D,
  radii: tf.Tensor1D,
  probes: tf.Tensor2D,
  rowBatch: number,
): Promise<number> {
  const n = manifold.shape[0];
  const p = probes.shape[0];
  const mT = tf.transpose(manifold) as tf.Tensor2D;
  const mNorm = tf.tidy(() => tf.reshape(tf.sum(tf.square(manifold), 1), [1, n])) as tf.Tensor2D;
  const r2 = tf.reshape(radii, [1, n]);
  let hits = 0;
  try {
    for (let r0 = 0; r0 < p; r0 += rowBatch) {
      const rows = Math.min(rowBatch, p - r0);
      const inside = tf.tidy(() => {
        const a = tf.slice(probes, [r0, 0], [rows, -1]) as tf.Tensor2D;
        const d2 = sqDist(a, mT, mNorm);
        return tf.sum(tf.cast(tf.any(tf.lessEqual(d2, r2), 1), "int32"));
      });
      hits += (await inside.data())[0];
      inside.dispose();
    }
  } finally {
    tf.dispose([mT, mNorm, r2]);
  }
  return hits / p;
}

/**
 * Improved precision and recall (Kynkäänniemi et al. 2019) as StyleGAN2-ADA / SiD compute it
 * (`sid:metrics/sid_precision_recall.py`): the radius of each point of a manifold is the distance
 * to its k-th nearest neighbour within that set (the point itself excluded); precision is the
 * fraction of generated features inside at least one real ball, recall the fraction of real
 * features inside at least one generated ball. Distances are computed in float32 batches with
 * tfjs, the element-wise part in a host loop on CPU backends (`options.host`); the reference uses
 * float16 features and `torch.cdist`.
 *
 * @param real real features, row-major `[nReal, dim]`.
 * @param fake generated features, row-major `[nFake, dim]`.
 * @param dim feature dimension.
 * @returns `{ precision, recall }` in [0, 1].
 */
export async function precisionRecall(
  real: Float32Array,
  fake: Float32Array,
  dim: number,
  options: PrecisionRecallOptions = {},
): Promise<{ precision: number; recall: number }> {
  const k = options.k ?? 3;
  const nr = real.length / dim;
  const nf = fake.length / dim;
  if (!Number.isInteger(nr) || !Number.isInteger(nf) || nr === 0 || nf === 0) {
    throw new MetricError(`precisionRecall: features do not make non-empty rows of ${dim}`);
  }
  if (!Number.isInteger(k) || k < 1 || k >= Math.min(nr, nf)) {
    throw new MetricError(`precisionRecall: k must be in 1..${Math.min(nr, nf) - 1}, got ${k}`);
  }
  const rowBatch = options.rowBatch ??
    Math.max(1, Math.min(4096, Math.floor((1 << 24) / Math.max(nr, nf))));
  const r = tf.tensor2d(real, [nr, dim]);
  const f = tf.tensor2d(fake, [nf, dim]);
  try {
    if (options.host ?? tf.getBackend() !== "webgpu") {
      const rRadii = await kthRadiiHost(r, k, rowBatch);
      const precision = await coverageHost(r, rRadii, f, rowBatch);
      const fRadii = await kthRadiiHost(f, k, rowBatch);
      const recall = await coverageHost(f, fRadii, r, rowBatch);
      return { precision, recall };
    }
    const rRadii = kthRadii(r, k, rowBatch);
    const precision = await coverage(r, rRadii, f, rowBatch).finally(() => rRadii.dispose());
    const fRadii = kthRadii(f, k, rowBatch);
    const recall = await coverage(f, fRadii, r, rowBatch).finally(() => fRadii.dispose());
    return { precision, recall };
  } finally {
    tf.dispose([r, f]);
  }
}
