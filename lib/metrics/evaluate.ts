/**
 * Running a detector over images (a dataset or generated batches) into feature statistics, and
 * the metric set of `deno task eval` (FID, IS, precision/recall).
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { ImageDataset } from "../data/dataset.ts";
import type { Detector } from "./detector.ts";
import {
  FeatureStats,
  fid,
  inceptionScore,
  type MeanStd,
  precisionRecall,
  type Stats,
} from "./stats.ts";

/** Accumulates detector outputs: feature statistics, optionally all features and probabilities. */
export class DetectorAccumulator {
  /** Feature statistics (all features kept when made with `captureFeatures`). */
  readonly stats: FeatureStats;
  #probs: Float32Array[] | null;
  #detector: Detector;

  /** An empty accumulator for `detector`. */
  constructor(
    detector: Detector,
    opts: { captureFeatures?: boolean; captureProbs?: boolean } = {},
  ) {
    this.#detector = detector;
    this.stats = new FeatureStats(detector.featureDim, { captureAll: opts.captureFeatures });
    this.#probs = opts.captureProbs ? [] : null;
  }

  /** Runs the detector on `n` HWC uint8 images and accumulates the results. */
  async addImages(pixels: Uint8Array, n: number, res: number, channels: number): Promise<void> {
    const det = this.#detector;
    const x = tf.tidy(() => {
      let t = tf.tensor4d(Float32Array.from(pixels), [n, res, res, channels]);
      if (channels === 1 && det.channels === 3) t = tf.tile(t, [1, 1, 1, 3]);
      return t;
    });
    const { features, probs } = det.run(x);
    x.dispose();
    try {
      await this.stats.addTensor(features);
      if (this.#probs) this.#probs.push((await probs.data()) as Float32Array);
    } finally {
      tf.dispose([features, probs]);
    }
  }

  /** All class probabilities, row-major (only with `captureProbs`). */
  probs(): Float32Array {
    if (!this.#probs) throw new Error("DetectorAccumulator made without captureProbs");
    const out = new Float32Array(this.#probs.reduce((s, p) => s + p.length, 0));
    let off = 0;
    for (const p of this.#probs) {
      out.set(p, off);
      off += p.length;
    }
    return out;
  }
}

/**
 * Detector statistics of the first `maxImages` images of a dataset (all by default), in
 * batches of `batch`.
 */
export async function datasetFeatures(
  detector: Detector,
  ds: ImageDataset,
  opts: {
    maxImages?: number;
    batch?: number;
    captureFeatures?: boolean;
    onProgress?: (done: number, total: number) => void;
  } = {},
): Promise<DetectorAccumulator> {
  const total = Math.min(ds.size, opts.maxImages ?? ds.size);
  const batch = opts.batch ?? 64;
  const acc = new DetectorAccumulator(detector, { captureFeatures: opts.captureFeatures });
  const per = ds.resolution * ds.resolution * ds.channels;
  for (let i = 0; i < total; i += batch) {
    const n = Math.min(batch, total - i);
    const px = new Uint8Array(n * per);
    for (let k = 0; k < n; k++) px.set(ds.image(i + k), k * per);
    await acc.addImages(px, n, ds.resolution, ds.channels);
    opts.onProgress?.(i + n, total);
  }
  return acc;
}

/** Metrics computed by {@linkcode computeMetrics}. */
export interface MetricResults {
  fid?: number;
  is?: MeanStd;
  precision?: number;
  recall?: number;
}

/**
 * FID (generated vs reference statistics), IS (10 splits) and PR (k = 3) from accumulated
 * generated outputs. `real` features are needed for PR.
 */
export async function computeMetrics(
  gen: DetectorAccumulator,
  metrics: ReadonlySet<string>,
  ref: { stats?: Stats; realFeatures?: Float32Array },
  numClasses: number,
): Promise<MetricResults> {
  const out: MetricResults = {};
  if (metrics.has("fid")) {
    if (!ref.stats) throw new Error("FID needs reference statistics");
    out.fid = fid(gen.stats.mean(), gen.stats.cov(), ref.stats.mu, ref.stats.sigma);
  }
  if (metrics.has("is")) {
    const splits = Math.min(10, gen.stats.count);
    out.is = inceptionScore(gen.probs(), numClasses, splits);
  }
  if (metrics.has("pr")) {
    if (!ref.realFeatures) throw new Error("precision/recall needs real features");
    const pr = await precisionRecall(ref.realFeatures, gen.stats.all(), gen.stats.dim);
    out.precision = pr.precision;
    out.recall = pr.recall;
  }
  return out;
}
