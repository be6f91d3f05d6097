/**
 * Evaluation of generators, shared by `deno task eval` ({@linkcode evaluateNetwork}: one
 * detector, FID / IS / precision-recall) and `deno task distill` ({@linkcode evaluateNetwork} for
 * the snapshots scored during training; {@linkcode evaluateInSpaces} for the final comparison:
 * one-step generators or a teacher with the EDM Heun sampler, sampled once and scored in every
 * feature space, FID, KID and precision/recall, written as JSON with a PNG grid of the first
 * samples).
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { ImageDataset } from "../data/dataset.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import type { Detector } from "../metrics/detector.ts";
import { computeMetrics, DetectorAccumulator, type MetricResults } from "../metrics/evaluate.ts";
import type { EDMPrecond } from "../nets/precond.ts";
import type { EDM2Precond } from "../nets/edm2.ts";
import { loadDenoisingNetwork } from "../nets/load.ts";
import {
  generateBatches,
  outputImageShape,
  SIGMA_INIT,
  writeImageGrid,
} from "../metrics/generate.ts";
import type { VaeDecoder } from "../nets/vae.ts";
import { kid } from "../metrics/kid.ts";
import { fid as fidOf, inceptionScore, precisionRecall } from "../metrics/stats.ts";
import { MnistFeatureNet } from "../metrics/mnist_features.ts";
import { InceptionV3 } from "../metrics/inception.ts";
import type { MeanStd, Stats } from "../metrics/stats.ts";
import { currentBackend } from "../runtime/backend.ts";

/** Which detector: our MNIST feature network, or the Inception-v3 FID detector. */
export type FeatureKind = "mnist" | "inception";

/** Feature dimension of each detector (without loading it). */
export const FEATURE_DIMS: Record<FeatureKind, number> = { mnist: 128, inception: 2048 };

/** The evaluation settings shared by every generator of a chain. */
export interface EvalSettings {
  /** Generated images per generator. */
  num: number;
  /** Seed of the latents and labels. */
  seed: number;
  /** Images per generator call. */
  batch: number;
  /** The detector's kind. */
  features: FeatureKind;
  /** The detector's file. */
  detector: string;
  /** The reference statistics' file (`.npz` / `.pkl`). */
  ref: string;
}

/** How one network is sampled. */
export interface SamplerSpec {
  /** `onestep`: x = G(σ_init·z; σ_init). `heun`: the EDM sampler. */
  sampler: "onestep" | "heun";
  /** Heun steps (2·steps − 1 network evaluations). */
  steps?: number;
}

/** Loads a detector. */
export async function loadDetector(kind: FeatureKind, path: string): Promise<Detector> {
  return kind === "mnist" ? await MnistFeatureNet.load(path) : await InceptionV3.load(path);
}

/** Reads a JSON file, or null when it is missing or not valid JSON. */
export async function readJsonOrNull<T>(path: string): Promise<T | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as T;
  } catch {
    return null;
  }
}

/** Options of {@linkcode evaluateNetwork}. */
export interface NetworkEvalOptions {
  /** Images to generate. */
  num: number;
  /** Seed of the latents and labels. */
  seed: number;
  /** Images per generator call. */
  batch: number;
  /** One step, or the EDM Heun sampler with `steps`. */
  sampler: "onestep" | "heun";
  steps: number;
  /** σ_init of one-step generation. */
  sigmaInit: number;
  /** Which of `fid`, `is`, `pr` to compute. */
  metrics: ReadonlySet<string>;
  /** Reference statistics (FID) and real features (precision/recall). */
  ref: { stats?: Stats; realFeatures?: Float32Array };
  /** Samples kept for a grid (default 64). */
  gridCount?: number;
  /** Stops after the current batch (the result is then null). */
  signal?: AbortSignal;
  /** After every batch. */
  onProgress?: (done: number, total: number) => void;
  /** The VAE that decodes a latent generator's samples (EDM2 `img512`). */
  vae?: VaeDecoder;
}

/** What {@linkcode evaluateNetwork} returns. */
export interface NetworkEvaluation {
  /** FID / IS / precision-recall, as asked. */
  results: MetricResults;
  /** The first `gridCount` samples (uint8 HWC, consecutive). */
  grid: Uint8Array;
  gridCount: number;
  /** Seconds spent generating (detector time excluded). */
  generateSeconds: number;
}

/**
 * Generates `num` images with `net`, runs the detector on them and computes the metrics asked
 * for: the evaluation of `deno task eval` and of the chain's eval stage. Null when `signal`
 * stopped it.
 */
export async function evaluateNetwork(
  net: EDMPrecond | EDM2Precond,
  detector: Detector,
  o: NetworkEvalOptions,
): Promise<NetworkEvaluation | null> {
  const gen = new DetectorAccumulator(detector, {
    captureFeatures: o.metrics.has("pr"),
    captureProbs: o.metrics.has("is"),
  });
  const s = await sampleInto(net, [gen], {
    num: o.num,
    seed: o.seed,
    batch: o.batch,
    sampler: o.sampler,
    steps: o.steps,
    sigmaInit: o.sigmaInit,
    vae: o.vae,
  }, { gridCount: o.gridCount, signal: o.signal, onProgress: o.onProgress });
  if (!s) return null;
  const results = await computeMetrics(gen, o.metrics, o.ref, detector.numClasses);
  return { results, grid: s.grid, gridCount: s.gridCount, generateSeconds: s.generateSeconds };
}

/**
 * Generates `g.num` images with `net` in batches and feeds every batch to each accumulator,
 * keeping the first `gridCount` (default 64) samples for a grid: the sampling loop of
 * {@linkcode evaluateNetwork} and {@linkcode evaluateInSpaces}. Null when `signal` stopped it.
 */
async function sampleInto(
  net: EDMPrecond | EDM2Precond,
  accs: readonly DetectorAccumulator[],
  g: Parameters<typeof generateBatches>[1],
  o: {
    gridCount?: number;
    signal?: AbortSignal;
    onProgress?: (done: number, total: number) => void;
  },
): Promise<{ grid: Uint8Array; gridCount: number; generateSeconds: number } | null> {
  const { resolution: res, channels: ch } = outputImageShape(net, g.vae);
  const gridCount = Math.min(o.gridCount ?? 64, g.num);
  const per = res * res * ch;
  const grid = new Uint8Array(gridCount * per);
  let generateSeconds = 0;
  let tGen = performance.now();
  for await (const b of generateBatches(net, g)) {
    generateSeconds += (performance.now() - tGen) / 1000;
    if (b.start < gridCount) {
      const n = Math.min(b.n, gridCount - b.start);
      grid.set(b.pixels.subarray(0, n * per), b.start * per);
    }
    for (const a of accs) await a.addImages(b.pixels, b.n, res, ch);
    o.onProgress?.(b.start + b.n, g.num);
    if (o.signal?.aborted) return null;
    tGen = performance.now();
  }
  return { grid, gridCount, generateSeconds };
}

// ---------------------------------------------------------------------------------------------
// Several feature spaces at once, with KID (the chain's final comparison, docs/metrics.md)

/** A feature space: a detector and its reference statistics, under a short name. */
export interface FeatureSpace {
  /** `mnist`, `mnist-b`, `inception`. */
  name: string;
  features: FeatureKind;
  detector: string;
  ref: string;
}

/** A feature space made ready: detector loaded, reference statistics and real features. */
export interface LoadedSpace extends FeatureSpace {
  det: Detector;
  refStats: Stats;
  /** Detector features of the real images, row-major (for KID). */
  realFeatures: Float32Array;
}

/** KID settings of the chain (stylegan3's `kid50k_full`: 100 subsets of at most 1000). */
export const KID_SUBSETS = 100;
export const KID_MAX_SUBSET = 1000;

/** Neighbourhood size of the chain's precision/recall (stylegan3's `pr50k3`: k = 3). */
export const PR_K = 3;

/**
 * `count` rows of a row-major `[n, dim]` matrix, evenly spaced over all `n` (all of them when
 * `count >= n`): the real side of precision/recall, as many rows as generated samples, so that
 * both sets' k-NN radii come from the same count (stylegan3's `pr50k3_full`,
 * `metrics/metric_main.py`, takes every real image up to 200,000 against 50,000 samples: on
 * CIFAR-10 also 50,000 each).
 */
export function evenRows(features: Float32Array, dim: number, count: number): Float32Array {
  const n = features.length / dim;
  if (!Number.isInteger(n)) throw new Error(`evenRows: ${features.length} is not rows of ${dim}`);
  if (count >= n) return features;
  const out = new Float32Array(count * dim);
  for (let i = 0; i < count; i++) {
    const r = Math.floor((i * n) / count);
    out.set(features.subarray(r * dim, (r + 1) * dim), i * dim);
  }
  return out;
}

/** One generator's scores in one feature space. */
export interface SpaceMetrics {
  features: FeatureKind;
  detector: string;
  ref: string;
  fid: number;
  kid: number;
  /** Standard deviation of the per-subset KID estimates (the spread of one estimate). */
  kidStd: number;
  kidSubsetSize: number;
  kidSubsets: number;
  /** Real images behind KID. */
  kidReal: number;
  /**
   * Improved precision (Kynkäänniemi et al. 2019; k = {@linkcode PR_K}): the share of generated
   * samples inside the real manifold. Absent when there are too few samples (≤ k).
   */
  precision?: number;
  /** Improved recall: the share of real samples inside the generated manifold. */
  recall?: number;
  /** Real images behind precision/recall (evenly spaced, as many as samples when there are). */
  prReal?: number;
}

/** Format tag of {@linkcode SpacesMetrics} files. */
export const SPACES_METRICS_FORMAT = "sida-metrics-spaces/1";

/** The chain's metrics of one generator in every feature space (`eval/<stage>/best.json`, …). */
export interface SpacesMetrics {
  format: typeof SPACES_METRICS_FORMAT;
  generator: string;
  /** SHA-256 of the generator file (best / last copies change as training goes on). */
  sha256: string;
  num: number;
  seed: number;
  sampler: "onestep" | "heun";
  steps?: number;
  sigmaInit?: number;
  nfe: number;
  /** Per feature space, in the order evaluated. */
  spaces: Record<string, SpaceMetrics>;
  /** IS from the first space's classifier. */
  is: MeanStd;
  backend: string;
  generateSeconds: number;
  evalSeconds: number;
}

/** SHA-256 of a file's bytes. */
export async function fileSha256(path: string): Promise<string> {
  return createHash("sha256").update(await Deno.readFile(path)).digest("hex");
}

/** True when `m` holds this generator's (same bytes) metrics under these settings and spaces. */
export function sameSpacesEvaluation(
  m: Partial<SpacesMetrics> | null,
  sha256: string,
  s: { num: number; seed: number },
  spaces: readonly FeatureSpace[],
  sampler: SamplerSpec,
): boolean {
  if (!m || m.format !== SPACES_METRICS_FORMAT || m.sha256 !== sha256) return false;
  if (m.num !== s.num || m.seed !== s.seed || m.sampler !== sampler.sampler) return false;
  if (sampler.sampler === "heun" && m.steps !== (sampler.steps ?? 18)) return false;
  const names = Object.keys(m.spaces ?? {});
  if (names.join() !== spaces.map((x) => x.name).join()) return false;
  return spaces.every((x) => {
    const r = m.spaces![x.name];
    // Precision/recall exist wherever the sample count allows them (files written before they
    // did are evaluated again).
    const pr = s.num <= PR_K || (Number.isFinite(r.precision) && Number.isFinite(r.recall));
    return r.features === x.features && r.detector === x.detector && r.ref === x.ref &&
      Number.isFinite(r.fid) && Number.isFinite(r.kid) && Number.isFinite(r.kidStd) && pr;
  });
}

/**
 * Real features of a dataset under a detector: at most `max` images, evenly spaced over the
 * whole set (a dataset zip may be sorted by class).
 */
export async function realFeatures(
  det: Detector,
  ds: ImageDataset,
  opts: { max?: number; batch?: number } = {},
): Promise<Float32Array> {
  const total = Math.min(ds.size, opts.max ?? 50_000);
  const batch = opts.batch ?? 64;
  const acc = new DetectorAccumulator(det, { captureFeatures: true });
  const per = ds.resolution * ds.resolution * ds.channels;
  for (let i = 0; i < total; i += batch) {
    const n = Math.min(batch, total - i);
    const px = new Uint8Array(n * per);
    for (let k = 0; k < n; k++) {
      px.set(ds.image(Math.floor(((i + k) * ds.size) / total)), k * per);
    }
    await acc.addImages(px, n, ds.resolution, ds.channels);
  }
  return acc.stats.all();
}

/**
 * Generates `settings.num` images with the network in `generatorPath` once and scores them in
 * every feature space: FID, KID (with the spread of its subsets), precision/recall (k =
 * {@linkcode PR_K}, against as many real images, evenly spaced), and IS from the first space's
 * classifier; writes the {@linkcode SpacesMetrics} to `metricsPath` (atomically) and, with
 * `gridPath`, a PNG grid of the first samples. Null when `signal` stopped it.
 */
export async function evaluateInSpaces(
  generatorPath: string,
  spaces: readonly LoadedSpace[],
  settings: { num: number; seed: number; batch: number },
  sampler: SamplerSpec,
  paths: { metricsPath: string; gridPath?: string; gridCount?: number },
  opts: { signal?: AbortSignal; vae?: VaeDecoder } = {},
): Promise<SpacesMetrics | null> {
  if (!spaces.length) throw new Error("evaluateInSpaces: no feature space");
  const t0 = performance.now();
  const sha256 = await fileSha256(generatorPath);
  const net = await loadDenoisingNetwork(generatorPath);
  try {
    const accs = spaces.map((s, i) =>
      new DetectorAccumulator(s.det, { captureFeatures: true, captureProbs: i === 0 })
    );
    const steps = sampler.steps ?? 18;
    const sampled = await sampleInto(net, accs, {
      num: settings.num,
      seed: settings.seed,
      batch: settings.batch,
      sampler: sampler.sampler,
      steps,
      sigmaInit: SIGMA_INIT,
      vae: opts.vae,
    }, { gridCount: paths.gridCount, signal: opts.signal });
    if (!sampled) return null;
    const { grid, gridCount, generateSeconds: genSeconds } = sampled;
    const out: Record<string, SpaceMetrics> = {};
    for (const [i, s] of spaces.entries()) {
      const st = accs[i].stats;
      const fake = st.all();
      const k = await kid(fake, s.realFeatures, st.dim, {
        numSubsets: KID_SUBSETS,
        maxSubsetSize: KID_MAX_SUBSET,
        seed: settings.seed,
      });
      const nFake = fake.length / st.dim;
      const real = evenRows(s.realFeatures, st.dim, nFake);
      const nReal = real.length / st.dim;
      const pr = Math.min(nReal, nFake) > PR_K
        ? await precisionRecall(real, fake, st.dim, { k: PR_K })
        : null;
      out[s.name] = {
        features: s.features,
        detector: s.detector,
        ref: s.ref,
        fid: fidOf(st.mean(), st.cov(), s.refStats.mu, s.refStats.sigma),
        kid: k.kid,
        kidStd: k.std,
        kidSubsetSize: k.subsetSize,
        kidSubsets: k.numSubsets,
        kidReal: s.realFeatures.length / st.dim,
        ...(pr ? { precision: pr.precision, recall: pr.recall, prReal: nReal } : {}),
      };
    }
    const metrics: SpacesMetrics = {
      format: SPACES_METRICS_FORMAT,
      generator: generatorPath,
      sha256,
      num: settings.num,
      seed: settings.seed,
      sampler: sampler.sampler,
      ...(sampler.sampler === "heun" ? { steps } : { sigmaInit: SIGMA_INIT }),
      nfe: sampler.sampler === "heun" ? 2 * steps - 1 : 1,
      spaces: out,
      is: inceptionScore(accs[0].probs(), spaces[0].det.numClasses, Math.min(10, settings.num)),
      backend: currentBackend()?.name ?? "unknown",
      generateSeconds: Math.round(genSeconds * 10) / 10,
      evalSeconds: Math.round((performance.now() - t0) / 100) / 10,
    };
    await writeFileAtomic(
      paths.metricsPath,
      new TextEncoder().encode(JSON.stringify(metrics, null, 2) + "\n"),
    );
    if (paths.gridPath && gridCount > 0) {
      const { resolution, channels } = outputImageShape(net, opts.vae);
      await writeImageGrid(paths.gridPath, grid, gridCount, resolution, channels, 8);
    }
    return metrics;
  } finally {
    net.dispose();
  }
}
