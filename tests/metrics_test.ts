/**
 * Metrics: streaming statistics, FID (both linear-algebra paths, against scipy), .npz and
 * reference-statistics files, Inception Score and precision/recall.
 */
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertRejects,
  assertThrows,
} from "./metrics_asserts.ts";
import { tf } from "../lib/deps.ts";
import { hostTensor } from "../lib/io/host_tensor.ts";
import { IoError } from "../lib/io/host_tensor.ts";
import { lapackLibrary, syrkUpper, traceSqrtProduct } from "../lib/metrics/linalg.ts";
import { decodeNpz, encodeNpz, readNpz } from "../lib/metrics/npz.ts";
import { loadRefStats, saveRefStats } from "../lib/metrics/ref_stats.ts";
import {
  FeatureStats,
  featureStats,
  fid,
  fidTerms,
  inceptionScore,
  MetricError,
  precisionRecall,
} from "../lib/metrics/stats.ts";
import {
  evenRows,
  sameSpacesEvaluation,
  SPACES_METRICS_FORMAT,
  type SpacesMetrics,
} from "../lib/pipeline/evaluate.ts";
import { fixturePath, setupBackend } from "./helpers.ts";

const expected = JSON.parse(await Deno.readTextFile(fixturePath("metrics/expected.json")));

/** The fixture script's integer recipe: count integers in [-8, 8] from a 32-bit LCG. */
export function lcgInts(seed: number, count: number): Int32Array {
  let s = seed >>> 0;
  const out = new Int32Array(count);
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = ((s >>> 16) % 17) - 8;
  }
  return out;
}

/** S = A Aᵀ / m + 2^epsLog2 I, exactly as `recipe_cov` in the fixture script. */
function recipeCov(seed: number, n: number, m: number, epsLog2: number | null): Float64Array {
  const v = lcgInts(seed, n * m);
  // X = Aᵀ (m rows of n values), so XᵀX = A Aᵀ.
  const x = new Float64Array(m * n);
  for (let i = 0; i < n; i++) {
    const scale = 2 ** -(3 + (i % 4));
    for (let j = 0; j < m; j++) x[j * n + i] = v[i * m + j] * scale;
  }
  const c = new Float64Array(n * n);
  syrkUpper(c, x, m, n);
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) {
      const val = c[i * n + j] / m;
      c[i * n + j] = val;
      c[j * n + i] = val;
    }
    if (epsLog2 !== null) c[i * n + i] += 2 ** epsLog2;
  }
  return c;
}

function recipeMu(seed: number, n: number): Float64Array {
  return Float64Array.from(lcgInts(seed, n), (v) => v / 16);
}

interface FidCase {
  name: string;
  n: number;
  m: number;
  seeds: number[];
  eps_log2: (number | null)[];
  fid_eigh: number;
  fid_scipy?: number;
}

function buildCase(c: FidCase) {
  const [a, b, m1, m2] = c.seeds;
  return {
    s1: recipeCov(a, c.n, c.m, c.eps_log2[0]),
    s2: recipeCov(b, c.n, c.m, c.eps_log2[1]),
    mu1: recipeMu(m1, c.n),
    mu2: recipeMu(m2, c.n),
  };
}

const haveLapack = lapackLibrary() !== null;
const impls = haveLapack ? (["js", "lapack"] as const) : (["js"] as const);

for (const c of expected.fid as FidCase[]) {
  for (const impl of impls) {
    if (c.n > 512 && impl === "js" && !Deno.env.get("SIDA_SLOW_TESTS")) continue;
    Deno.test(`fid ${c.name} (${impl}) matches numpy/scipy`, () => {
      const { s1, s2, mu1, mu2 } = buildCase(c);
      const v = fid(mu1, s1, mu2, s2, { impl });
      const want = c.fid_scipy ?? c.fid_eigh;
      assert(Math.abs(v - want) <= 1e-4 * Math.abs(want), `${v} vs ${want}`);
      assert(Math.abs(v - c.fid_eigh) <= 1e-6 * Math.abs(c.fid_eigh), `${v} vs eigh ${c.fid_eigh}`);
      const self = fid(mu1, s1, mu1, s1, { impl });
      assert(Math.abs(self) <= 1e-6 * Math.max(1, c.n / 64), `self FID ${self}`);
    });
  }
}

Deno.test("fid of two Gaussians with known covariances equals the closed form", () => {
  // Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ (commuting): FID = |μ1−μ2|² + Σ (√a − √b)².
  const n = 40;
  const q = new Float64Array(n * n); // a Householder reflector: orthogonal, symmetric
  const u = Float64Array.from({ length: n }, (_, i) => Math.cos(i + 1));
  const uu = u.reduce((s, x) => s + x * x, 0);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) q[i * n + j] = (i === j ? 1 : 0) - 2 * u[i] * u[j] / uu;
  }
  const a = Float64Array.from({ length: n }, (_, i) => 0.1 + i * 0.37);
  const b = Float64Array.from({ length: n }, (_, i) => 2.5 / (1 + i));
  const build = (d: Float64Array) => {
    const s = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let k = 0; k < n; k++) acc += q[i * n + k] * d[k] * q[j * n + k];
        s[i * n + j] = acc;
      }
    }
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < i; j++) s[i * n + j] = s[j * n + i] = (s[i * n + j] + s[j * n + i]) / 2;
    }
    return s;
  };
  const mu1 = Float64Array.from({ length: n }, (_, i) => Math.sin(i));
  const mu2 = new Float64Array(n);
  let want = 0;
  for (let i = 0; i < n; i++) want += mu1[i] ** 2 + (Math.sqrt(a[i]) - Math.sqrt(b[i])) ** 2;
  let wantMean = 0;
  for (let i = 0; i < n; i++) wantMean += mu1[i] ** 2;
  for (const impl of impls) {
    const v = fid(mu1, build(a), mu2, build(b), { impl });
    assert(Math.abs(v - want) <= 1e-6 * want, `${impl}: ${v} vs ${want}`);
    // The two terms: the means' squared distance, and the rest (the covariances' part).
    const t = fidTerms(mu1, build(a), mu2, build(b), { impl });
    assertAlmostEquals(t.mean, wantMean, 1e-9 * wantMean);
    assert(Math.abs(t.cov - (want - wantMean)) <= 1e-6 * want, `${impl}: cov ${t.cov}`);
  }
  // Scalar case: N(0, 4) vs N(3, 1) → 9 + (2 − 1)² = 10.
  assertAlmostEquals(fid([0], [4], [3], [1], { impl: "js" }), 10, 1e-12);
});

Deno.test("fid of a feature set against itself is 0; zero covariances are handled", async () => {
  await setupBackend();
  const v = lcgInts(5, 500 * 16);
  const stats = featureStats(Float32Array.from(v, (x) => x / 3), 500, 16);
  for (const impl of impls) {
    assert(Math.abs(fid(stats.mu, stats.sigma, stats.mu, stats.sigma, { impl })) < 1e-6);
  }
  const z = new Float64Array(16 * 16);
  assertAlmostEquals(fid(stats.mu, z, stats.mu, z, { impl: "js" }), 0, 0);
  assertThrows(() => fid([0, 1], [1, 0, 0, 1], [0], [1]), MetricError);
  assertThrows(() => fid([0], [NaN], [0], [1]), Error, "non-finite");
});

Deno.test("traceSqrtProduct: JS and LAPACK paths agree on rank-deficient inputs", () => {
  const s1 = recipeCov(81, 96, 20, null); // rank 20
  const s2 = recipeCov(82, 96, 50, null); // rank 50
  const js = traceSqrtProduct(s1, s2, 96, "js");
  assert(js > 0);
  if (haveLapack) {
    const lp = traceSqrtProduct(s1, s2, 96, "lapack");
    assert(Math.abs(js - lp) <= 1e-8 * lp, `${js} vs ${lp}`);
  }
});

Deno.test("FeatureStats matches np.cov (unbiased and biased), in any batching", async () => {
  await setupBackend();
  const e = expected.stats;
  const v = lcgInts(e.seed, e.n * e.dim);
  const f = Float32Array.from(v, (x) => x * e.scale + e.offset);
  for (const batches of [[100], [1, 99], [7, 13, 80], [50, 50]]) {
    for (const impl of ["js", "auto"] as const) {
      const s = new FeatureStats(e.dim, { impl, captureAll: true });
      let off = 0;
      for (const b of batches) {
        s.add(f.subarray(off * e.dim, (off + b) * e.dim), b, e.dim);
        off += b;
      }
      assertEquals(s.count, 100);
      const mu = s.mean();
      const cov = s.cov();
      const covB = s.cov({ unbiased: false });
      for (let i = 0; i < e.dim; i++) assertAlmostEquals(mu[i], e.mean[i], 1e-12);
      for (let i = 0; i < e.dim * e.dim; i++) {
        assertAlmostEquals(cov[i], e.cov[i], 1e-12);
        assertAlmostEquals(covB[i], e.cov_biased[i], 1e-12);
      }
      assertEquals(s.all(), f);
    }
  }
  // addTensor, and tensors stay flat.
  const s = new FeatureStats(e.dim);
  const before = tf.memory().numTensors;
  for (let i = 0; i < 4; i++) {
    const t = tf.tensor2d(f.subarray(i * 25 * e.dim, (i + 1) * 25 * e.dim), [25, e.dim]);
    await s.addTensor(t);
    t.dispose();
  }
  assertEquals(tf.memory().numTensors, before);
  for (let i = 0; i < e.dim; i++) assertAlmostEquals(s.mean()[i], e.mean[i], 1e-12);
  // Errors.
  assertThrows(() => new FeatureStats(3).add(new Float32Array(4)), MetricError);
  assertThrows(() => new FeatureStats(2).add(new Float32Array([1, NaN])), MetricError);
  assertThrows(() => new FeatureStats(2).mean(), MetricError);
  const one = new FeatureStats(2);
  one.add(new Float32Array([1, 2]));
  assertThrows(() => one.cov(), MetricError);
  assertEquals([...one.cov({ unbiased: false })], [0, 0, 0, 0]);
  await assertRejects(() => new FeatureStats(3).addTensor(tf.zeros([2, 2])), MetricError);
});

Deno.test("FeatureStats keeps precision with a large common offset", () => {
  // Features 1e6 + small noise: a naive E[xxᵀ] − μμᵀ in float64 would lose ~12 digits.
  const n = 1000;
  const f = new Float64Array(n * 2);
  for (let i = 0; i < n; i++) {
    f[2 * i] = 1e6 + (i % 2 ? 1 : -1);
    f[2 * i + 1] = 1e6 + (i % 2 ? -2 : 2);
  }
  const s = new FeatureStats(2);
  s.add(f);
  const c = s.cov({ unbiased: false });
  assertAlmostEquals(c[0], 1, 1e-9);
  assertAlmostEquals(c[1], -2, 1e-9);
  assertAlmostEquals(c[3], 4, 1e-9);
});

Deno.test(".npz: numpy files read, and our files round-trip", async () => {
  const ref = expected.ref16;
  const mu = recipeMu(ref.mu_seed, ref.n);
  const sigma = recipeCov(ref.sigma_seed, ref.n, ref.m, ref.eps_log2);
  for (const name of ["ref16.npz", "ref16_compressed.npz", "ref16_edm2.pkl"]) {
    const s = await loadRefStats(fixturePath(`metrics/${name}`));
    assertEquals(s.dim, 16);
    assertEquals(s.mu, mu);
    assertEquals(s.sigma, sigma);
  }
  const dino = await loadRefStats(fixturePath("metrics/ref16_edm2.pkl"), "fd_dinov2");
  assertEquals(dino.dim, 4);
  const arrays = await readNpz(fixturePath("metrics/ref16.npz"));
  assertEquals([...arrays.keys()], ["mu", "sigma"]);
  // Round trip, several dtypes.
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/r.npz`;
    await saveRefStats(path, { mu, sigma, dim: 16 }, {
      num_images: hostTensor("int64", [], new BigInt64Array([32n])),
    });
    const back = await loadRefStats(path);
    assertEquals(back.mu, mu);
    assertEquals(back.sigma, sigma);
    const all = await readNpz(path);
    assertEquals(all.get("num_images")!.data, new BigInt64Array([32n]));
    const u8 = hostTensor("uint8", [2, 3], new Uint8Array([1, 2, 3, 4, 5, 6]));
    const rt = await decodeNpz(await encodeNpz({ images: u8, f: hostTensor("float32", [0]) }));
    assertEquals(rt.get("images"), u8);
    assertEquals(rt.get("f")!.shape, [0]);
    // Errors are one-line IoErrors naming the file.
    await Deno.writeTextFile(`${dir}/bad.npz`, "not a zip");
    await assertRejects(() => readNpz(`${dir}/bad.npz`), IoError, "bad.npz");
    await assertRejects(() => loadRefStats(`${dir}/missing.npz`), IoError, "missing.npz");
    await Deno.writeFile(`${dir}/nomu.npz`, await encodeNpz({ x: u8 }));
    await assertRejects(() => loadRefStats(`${dir}/nomu.npz`), IoError, "'mu' and 'sigma'");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("inceptionScore: known answers and the reference code's value", () => {
  // K equally frequent one-hot classes → IS = K in every split.
  const k = 5;
  const n = 100;
  const p = new Float32Array(n * k);
  for (let i = 0; i < n; i++) p[i * k + (i % k)] = 1;
  const a = inceptionScore(p, k, 4);
  assertAlmostEquals(a.mean, k, 1e-12);
  assertAlmostEquals(a.std, 0, 1e-12);
  // Identical rows → IS = 1.
  const u = new Float32Array(n * k).fill(1 / k);
  assertAlmostEquals(inceptionScore(u, k, 10).mean, 1, 1e-6);
  const e = expected.is;
  const v = lcgInts(e.seed, e.n * e.classes);
  const probs = new Float64Array(e.n * e.classes);
  for (let r = 0; r < e.n; r++) {
    let sum = 0;
    for (let c = 0; c < e.classes; c++) sum += v[r * e.classes + c] + 9;
    for (let c = 0; c < e.classes; c++) {
      probs[r * e.classes + c] = (v[r * e.classes + c] + 9) / sum;
    }
  }
  const got = inceptionScore(probs, e.classes, e.splits);
  assertAlmostEquals(got.mean, e.mean, 1e-12);
  assertAlmostEquals(got.std, e.std, 1e-12);
  assertThrows(() => inceptionScore(p, k, 0), MetricError);
  assertThrows(() => inceptionScore(new Float32Array(7), 5), MetricError);
});

Deno.test("precisionRecall: known answers, the reference code's value, flat tensors", async () => {
  await setupBackend();
  const e = expected.pr;
  const real = Float32Array.from(lcgInts(e.seeds[0], e.real * e.dim));
  const fake = Float32Array.from(lcgInts(e.seeds[1], e.fake * e.dim));
  for (let i = 0; i < e.fake; i++) {
    for (let j = 0; j < e.shift_dims; j++) fake[i * e.dim + j] += e.shift;
  }
  const before = tf.memory().numTensors;
  // Both distance paths: tfjs ops throughout, and the host loop over each batch's product.
  for (const host of [false, true]) {
    for (const rowBatch of [undefined, 7]) {
      const pr = await precisionRecall(real, fake, e.dim, { k: e.k, rowBatch, host });
      assertEquals(pr, { precision: e.precision, recall: e.recall }, `host ${host}`);
    }
    assertEquals(tf.memory().numTensors, before);
    // Same set → 1, 1; far-apart sets → 0, 0.
    assertEquals(await precisionRecall(real, real, e.dim, { host }), { precision: 1, recall: 1 });
    const far = real.map((x) => x + 1000);
    assertEquals(await precisionRecall(real, far, e.dim, { host }), { precision: 0, recall: 0 });
  }
  // The two paths give the same float32 distances: the same answer on other data and k, with
  // ties (repeated rows and equal distances).
  const a = Float32Array.from({ length: 300 * 16 }, (_, i) => ((i * 7919) % 101) / 17);
  const b = Float32Array.from({ length: 250 * 16 }, (_, i) => ((i * 104729) % 97) / 13);
  b.set(a.subarray(0, 16 * 40), 16 * 60);
  // (The same row batches: BLAS may round a product differently at another size.)
  for (const [k, rowBatch] of [[1, 64], [5, undefined]]) {
    assertEquals(
      await precisionRecall(a, b, 16, { k, host: true, rowBatch }),
      await precisionRecall(a, b, 16, { k, host: false, rowBatch }),
      `k ${k}`,
    );
  }
  assertEquals(tf.memory().numTensors, before);
  await assertRejects(() => precisionRecall(real, fake, e.dim, { k: 500 }), MetricError);
});

Deno.test("evenRows: the real side of the chain's precision/recall, evenly spaced rows", () => {
  // 10 rows of 2: row r is [r, -r].
  const m = Float32Array.from({ length: 20 }, (_, i) => (i % 2 ? -1 : 1) * Math.floor(i / 2));
  assertEquals([...evenRows(m, 2, 5)], [0, -0, 2, -2, 4, -4, 6, -6, 8, -8]);
  assertEquals([...evenRows(m, 2, 3)], [0, -0, 3, -3, 6, -6]);
  assertEquals([...evenRows(m, 2, 1)], [0, -0]);
  // As many or more than there are: every row, in order.
  assertEquals(evenRows(m, 2, 10), m);
  assertEquals(evenRows(m, 2, 50), m);
  assertThrows(() => evenRows(new Float32Array(7), 2, 3), Error);
});

Deno.test("sameSpacesEvaluation: a metrics file without precision/recall is evaluated again", () => {
  const space = { name: "mnist", features: "mnist" as const, detector: "f", ref: "r" };
  const record = (num: number, pr: boolean): SpacesMetrics => ({
    format: SPACES_METRICS_FORMAT,
    generator: "g.safetensors",
    sha256: "ab",
    num,
    seed: 0,
    sampler: "onestep",
    nfe: 1,
    spaces: {
      mnist: {
        features: "mnist",
        detector: "f",
        ref: "r",
        fid: 30,
        kid: 1,
        kidStd: 0.1,
        kidSubsetSize: num,
        kidSubsets: 100,
        kidReal: 10000,
        ...(pr ? { precision: 0.8, recall: 0.6, prReal: num } : {}),
      },
    },
    is: { mean: 9, std: 0.1 },
    backend: "cpu",
    generateSeconds: 1,
    evalSeconds: 1,
  });
  const same = (m: SpacesMetrics) =>
    sameSpacesEvaluation(m, "ab", { num: m.num, seed: 0 }, [space], { sampler: "onestep" });
  assert(same(record(20, true)));
  assert(!same(record(20, false)), "20 samples allow precision/recall: evaluate again");
  // Three samples are too few for k = 3: nothing to compute, the file stands.
  assert(same(record(3, false)));
  const bad = record(20, true);
  bad.spaces.mnist.recall = NaN;
  assert(!same(bad));
});
