/**
 * Evaluation of generators, shared by `deno task eval` ({@linkcode evaluateNetwork}) and the
 * evaluation stage of `deno task distill`: FID and IS of generators (one-step, or a teacher
 * with the EDM Heun sampler) against one set of reference statistics, with one detector, written
 * as `metrics.json` files in the format of `deno task eval` (plus the detector, the evaluation
 * time and the settings) and a PNG grid of the first samples.
 *
 * @module
 */
import { writeFileAtomic } from "../io/atomic.ts";
import { loadNetwork } from "../nets/network.ts";
import type { Detector } from "../metrics/detector.ts";
import { computeMetrics, DetectorAccumulator, type MetricResults } from "../metrics/evaluate.ts";
import type { EDMPrecond } from "../nets/precond.ts";
import { generateBatches, SIGMA_INIT, writeImageGrid } from "../metrics/generate.ts";
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

/** A `metrics.json` of the chain (the `deno task eval` fields plus the chain's). */
export interface GeneratorMetrics {
  generator: string;
  num: number;
  seed: number;
  sampler: "onestep" | "heun";
  steps?: number;
  sigmaInit?: number;
  /** Network evaluations per image. */
  nfe: number;
  features: FeatureKind;
  detector: string;
  ref: string;
  backend: string;
  generateSeconds: number;
  evalSeconds: number;
  fid: number;
  is: MeanStd;
}

/** Loads a detector. */
export async function loadDetector(kind: FeatureKind, path: string): Promise<Detector> {
  return kind === "mnist" ? await MnistFeatureNet.load(path) : await InceptionV3.load(path);
}

/** True when a saved `metrics.json` was made with these settings for this generator and sampler. */
export function sameEvaluation(
  m: Partial<GeneratorMetrics> | null,
  generator: string,
  s: EvalSettings,
  sampler: SamplerSpec,
): boolean {
  return !!m && m.generator === generator && m.num === s.num && m.seed === s.seed &&
    m.features === s.features && m.detector === s.detector && m.ref === s.ref &&
    m.sampler === sampler.sampler &&
    (sampler.sampler === "onestep" || m.steps === (sampler.steps ?? 18)) &&
    Number.isFinite(m.fid);
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
  net: EDMPrecond,
  detector: Detector,
  o: NetworkEvalOptions,
): Promise<NetworkEvaluation | null> {
  const res = net.imgResolution;
  const ch = net.imgChannels;
  const gen = new DetectorAccumulator(detector, {
    captureFeatures: o.metrics.has("pr"),
    captureProbs: o.metrics.has("is"),
  });
  const gridCount = Math.min(o.gridCount ?? 64, o.num);
  const per = res * res * ch;
  const grid = new Uint8Array(gridCount * per);
  let genSeconds = 0;
  let tGen = performance.now();
  for await (
    const b of generateBatches(net, {
      num: o.num,
      seed: o.seed,
      batch: o.batch,
      sampler: o.sampler,
      steps: o.steps,
      sigmaInit: o.sigmaInit,
    })
  ) {
    genSeconds += (performance.now() - tGen) / 1000;
    if (b.start < gridCount) {
      const n = Math.min(b.n, gridCount - b.start);
      grid.set(b.pixels.subarray(0, n * per), b.start * per);
    }
    await gen.addImages(b.pixels, b.n, res, ch);
    o.onProgress?.(b.start + b.n, o.num);
    if (o.signal?.aborted) return null;
    tGen = performance.now();
  }
  const results = await computeMetrics(gen, o.metrics, o.ref, detector.numClasses);
  return { results, grid, gridCount, generateSeconds: genSeconds };
}

/**
 * Generates `settings.num` images with the network in `generatorPath`, runs the detector, and
 * writes FID and IS (10 splits) to `metricsPath` (atomically); with `gridPath`, also a PNG grid of
 * the first `gridCount` samples. Returns the metrics.
 */
export async function evaluateGenerator(
  generatorPath: string,
  detector: Detector,
  refStats: Stats,
  settings: EvalSettings,
  sampler: SamplerSpec,
  paths: { metricsPath: string; gridPath?: string; gridCount?: number },
  opts: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {},
): Promise<GeneratorMetrics | null> {
  const t0 = performance.now();
  const net = await loadNetwork(generatorPath);
  try {
    const steps = sampler.steps ?? 18;
    const e = await evaluateNetwork(net, detector, {
      num: settings.num,
      seed: settings.seed,
      batch: settings.batch,
      sampler: sampler.sampler,
      steps,
      sigmaInit: SIGMA_INIT,
      metrics: new Set(["fid", "is"]),
      ref: { stats: refStats },
      gridCount: paths.gridCount,
      signal: opts.signal,
      onProgress: opts.onProgress,
    });
    if (!e) return null;
    const metrics: GeneratorMetrics = {
      generator: generatorPath,
      num: settings.num,
      seed: settings.seed,
      sampler: sampler.sampler,
      ...(sampler.sampler === "heun" ? { steps } : { sigmaInit: SIGMA_INIT }),
      nfe: sampler.sampler === "heun" ? 2 * steps - 1 : 1,
      features: settings.features,
      detector: settings.detector,
      ref: settings.ref,
      backend: currentBackend()?.name ?? "unknown",
      generateSeconds: Math.round(e.generateSeconds * 10) / 10,
      evalSeconds: Math.round((performance.now() - t0) / 100) / 10,
      fid: e.results.fid!,
      is: e.results.is!,
    };
    await writeFileAtomic(
      paths.metricsPath,
      new TextEncoder().encode(JSON.stringify(metrics, null, 2) + "\n"),
    );
    if (paths.gridPath && e.gridCount > 0) {
      await writeImageGrid(
        paths.gridPath,
        e.grid,
        e.gridCount,
        net.imgResolution,
        net.imgChannels,
        8,
      );
    }
    return metrics;
  } finally {
    net.dispose();
  }
}
