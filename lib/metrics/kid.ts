/**
 * Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", 2018): the unbiased
 * estimate of the squared maximum mean discrepancy between generated and real features under
 * the polynomial kernel k(x, y) = (xᵀy / d + 1)³, averaged over random subsets, as NVlabs/stylegan3
 * `metrics/kernel_inception_distance.py:34-44` computes it. Unlike FID it has no bias at small
 * sample counts, so it can compare runs scored with 1,000 samples.
 *
 * @example
 * ```ts
 * import { kid } from "./kid.ts";
 * const d = 4, gen = new Float32Array(200 * d).map(Math.random), real = new Float32Array(300 * d).map(Math.random);
 * const r = await kid(gen, real, d, { numSubsets: 10, seed: 1 });
 * console.log(r.kid, r.std); // ≈ 0 for two samples of one distribution
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import { mulberry32 } from "../runtime/random.ts";
import { MetricError } from "./stats.ts";

/** Options of {@linkcode kid}. */
export interface KidOptions {
  /** Number of random subsets averaged (stylegan3: 100). */
  numSubsets?: number;
  /** Largest subset size m (stylegan3: 1000); m = min(#gen, #real, this). */
  maxSubsetSize?: number;
  /** Seed of the subset draws. Default 0. */
  seed?: number;
  /**
   * The subsets to use instead of random ones: pairs of m generated and m real row indices
   * (for tests against a reference computation).
   */
  subsets?: Array<[Int32Array, Int32Array]>;
}

/** KID and the spread of its per-subset estimates. */
export interface KidResult {
  /** The mean over subsets of the unbiased MMD² estimate. */
  kid: number;
  /** Standard deviation of the per-subset estimates (their spread, not the mean's error). */
  std: number;
  /** Subset size m. */
  subsetSize: number;
  /** Number of subsets. */
  numSubsets: number;
}

/** `m` distinct indices out of `n` (a partial Fisher–Yates shuffle). */
function choose(n: number, m: number, u: () => number): Int32Array {
  const a = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < m; i++) {
    const j = i + Math.floor(u() * (n - i));
    const t = a[i];
    a[i] = a[j], a[j] = t;
  }
  return a.slice(0, m);
}

/**
 * KID between generated features `gen` (`[#gen, d]`, row-major) and real features `real`
 * (`[#real, d]`). Kernel matrices are formed on the current tfjs backend (float32 products);
 * their row sums are added on the host in float64.
 *
 * @throws MetricError when the sizes do not fit, a set has fewer than 2 rows, or a value is not
 *   finite.
 */
export async function kid(
  gen: Float32Array,
  real: Float32Array,
  d: number,
  options: KidOptions = {},
): Promise<KidResult> {
  if (!Number.isInteger(d) || d < 1) throw new MetricError(`KID: feature size ${d}`);
  if (gen.length % d || real.length % d) {
    throw new MetricError(`KID: feature arrays are not multiples of ${d} values`);
  }
  const nGen = gen.length / d, nReal = real.length / d;
  if (nGen < 2 || nReal < 2) {
    throw new MetricError(`KID: needs ≥ 2 vectors per set, got ${nGen} and ${nReal}`);
  }
  for (const [name, a] of [["generated", gen], ["real", real]] as const) {
    if (!a.every(Number.isFinite)) throw new MetricError(`KID: non-finite ${name} features`);
  }
  const u = mulberry32(options.seed ?? 0);
  const m = options.subsets?.[0]?.[0].length ??
    Math.min(nGen, nReal, options.maxSubsetSize ?? 1000);
  const count = options.subsets?.length ?? options.numSubsets ?? 100;
  if (m < 2 || count < 1) throw new MetricError(`KID: subset size ${m}, ${count} subsets`);
  const G = tf.tensor2d(gen, [nGen, d]), R = tf.tensor2d(real, [nReal, d]);
  const estimates: number[] = [];
  try {
    for (let s = 0; s < count; s++) {
      const [gi, ri] = options.subsets?.[s] ?? [choose(nGen, m, u), choose(nReal, m, u)];
      if (gi.length !== m || ri.length !== m) {
        throw new MetricError("KID: subsets of unequal sizes");
      }
      if (gi.some((i) => i < 0 || i >= nGen) || ri.some((i) => i < 0 || i >= nReal)) {
        throw new MetricError("KID: subset index out of range");
      }
      // Row sums of the three kernel matrices and the diagonals of the two within-set ones.
      const parts = tf.tidy(() => {
        const x = tf.gather(G, tf.tensor1d(gi, "int32"));
        const y = tf.gather(R, tf.tensor1d(ri, "int32"));
        const k = (a: tf.Tensor2D, b: tf.Tensor2D) =>
          tf.pow(tf.add(tf.div(tf.matMul(a, b, false, true), d), 1), 3);
        const diag = (a: tf.Tensor2D) => tf.pow(tf.add(tf.div(tf.sum(tf.mul(a, a), 1), d), 1), 3);
        return tf.stack([
          tf.sum(k(x, x), 1),
          tf.sum(k(y, y), 1),
          tf.sum(k(x, y), 1),
          diag(x),
          diag(y),
        ]);
      });
      const v = await parts.data();
      parts.dispose();
      let within = 0, between = 0;
      for (let i = 0; i < m; i++) {
        within += v[i] + v[m + i] - v[3 * m + i] - v[4 * m + i];
        between += v[2 * m + i];
      }
      estimates.push((within / (m - 1) - (between * 2) / m) / m);
    }
  } finally {
    G.dispose();
    R.dispose();
  }
  const mean = estimates.reduce((a, b) => a + b, 0) / count;
  const std = count > 1
    ? Math.sqrt(estimates.reduce((a, b) => a + (b - mean) ** 2, 0) / (count - 1))
    : 0;
  return { kid: mean, std, subsetSize: m, numSubsets: count };
}
