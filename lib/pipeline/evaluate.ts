/**
 * The evaluation stage of `deno task distill`: FID and IS of generators (one-step, or a teacher
 * with the EDM Heun sampler) against one set of reference statistics, with one detector, written
 * as `metrics.json` files in the format of `deno task eval` (plus the detector, the evaluation
 * time and the settings) and a PNG grid of the first samples.
 *
 * @module
 */
import { writeFileAtomic } from "../io/atomic.ts";
import { loadNetwork } from "../nets/network.ts";
import type { Detector } from "../metrics/detector.ts";
import { computeMetrics, DetectorAccumulator } from "../metrics/evaluate.ts";
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
    const res = net.imgResolution;
    const ch = net.imgChannels;
    const steps = sampler.steps ?? 18;
    const gen = new DetectorAccumulator(detector, { captureProbs: true });
    const gridCount = Math.min(paths.gridCount ?? 64, settings.num);
    const per = res * res * ch;
    const grid = new Uint8Array(gridCount * per);
    let genSeconds = 0;
    let tGen = performance.now();
    for await (
      const b of generateBatches(net, {
        num: settings.num,
        seed: settings.seed,
        batch: settings.batch,
        sampler: sampler.sampler,
        steps,
        sigmaInit: SIGMA_INIT,
      })
    ) {
      genSeconds += (performance.now() - tGen) / 1000;
      if (b.start < gridCount) {
        const n = Math.min(b.n, gridCount - b.start);
        grid.set(b.pixels.subarray(0, n * per), b.start * per);
      }
      await gen.addImages(b.pixels, b.n, res, ch);
      opts.onProgress?.(b.start + b.n, settings.num);
      if (opts.signal?.aborted) return null;
      tGen = performance.now();
    }
    const r = await computeMetrics(
      gen,
      new Set(["fid", "is"]),
      { stats: refStats },
      detector.numClasses,
    );
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
      generateSeconds: Math.round(genSeconds * 10) / 10,
      evalSeconds: Math.round((performance.now() - t0) / 100) / 10,
      fid: r.fid!,
      is: r.is!,
    };
    await writeFileAtomic(
      paths.metricsPath,
      new TextEncoder().encode(JSON.stringify(metrics, null, 2) + "\n"),
    );
    if (paths.gridPath && gridCount > 0) {
      await writeImageGrid(paths.gridPath, grid, gridCount, res, ch, 8);
    }
    return metrics;
  } finally {
    net.dispose();
  }
}
