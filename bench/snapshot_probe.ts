/**
 * A closer look at generator snapshots on the embedded MNIST default (issue 15): what do the two
 * feature spaces (`mnist`, `mnist-b`) see in them? For each generator (and, as the first row, for
 * real MNIST images) it generates `--num` images from the same latents and reports, per space:
 *
 * - FID, split into its two terms (`fidTerms`): the means' distance (the samples moved as a
 *   whole) and the covariances' part (they lost or gained variety); and FID again with the
 *   samples reweighted to the real images' class mix (classes by the space's own classifier),
 *   which takes out what the generator's mix of digits contributes;
 * - precision and recall (k = 3) against as many real images (improved precision/recall,
 *   arXiv 1904.06991);
 * - the classifier's class histogram's total-variation distance from the real images' histogram
 *   under the same classifier, and its mean confidence (largest class probability);
 *
 * and, once per generator: how often the two classifiers agree on the digit, and pixel
 * statistics (mean ink, share of mid-grey pixels, mean absolute neighbour difference: sharpness).
 * The first row scores real images other than the reference ones (what real images get at this
 * sample size; left out when `--num` is over half the set, which leaves no other ones); then, as
 * a calibration, what shifting the real images' class mix alone (by reweighting) costs in each
 * space. With `--grids DIR` it writes each generator's first 64 samples as a PNG.
 *
 *   deno run -A bench/snapshot_probe.ts --out docs/data/snapshot-probe.jsonl \
 *     [--num 1000] [--seed 1000003] [--grids DIR] [--steps N] G1.safetensors G2.safetensors ...
 *
 * Rows are appended to `--out` (JSONL), one per generator, after the real row and the
 * calibration lines; the table is printed at the end.
 *
 * A distillation run's `training-state-<kimg>.safetensors` may stand for a generator: its row is
 * then the raw generator G at that point ({@linkcode loadProbeGenerator}), where a snapshot holds
 * the EMA generator: how much of a snapshot's FID the averaging makes.
 *
 * Generators are sampled in one step from σ = 2.5; with `--steps N`, with EDM's Heun sampler in N
 * steps (2N − 1 evaluations: a teacher, as the chain's eval stage samples it with 18).
 *
 * @module
 */
import { mnistDataset } from "../lib/data/dataset.ts";
import { DetectorAccumulator } from "../lib/metrics/evaluate.ts";
import { generateBatches, writeImageGrid } from "../lib/metrics/generate.ts";
import {
  DEFAULT_MNIST_FEATURES,
  DEFAULT_MNIST_FEATURES_B,
  DEFAULT_MNIST_REF_STATS,
  DEFAULT_MNIST_REF_STATS_B,
  MnistFeatureNet,
} from "../lib/metrics/mnist_features.ts";
import { loadRefStats } from "../lib/metrics/ref_stats.ts";
import { featureStats, fid, fidTerms, precisionRecall, type Stats } from "../lib/metrics/stats.ts";
import { loadNetwork } from "../lib/nets/network.ts";
import { fromEdmKwargs } from "../lib/nets/config.ts";
import type { EDMPrecond } from "../lib/nets/precond.ts";
import { readSafetensorsHeader } from "../lib/io/safetensors.ts";
import { loadStateNetwork } from "./common.ts";
import { numberFlag, parseFlags, runMain, startBackend, UsageError } from "../lib/runtime/cli.ts";

const USAGE = "usage: bench/snapshot_probe.ts --out probe.jsonl [--num 1000] [--seed 1000003] " +
  "[--grids DIR] [--steps N] G1.safetensors [G2.safetensors ...]";

/** A distillation training state's file name (`lib/distill/run.ts`). */
const TRAINING_STATE = /(^|\/)training-state-[^/]*\.safetensors$/;

/**
 * Loads a generator to probe: a network file ({@linkcode loadNetwork}), or, from a distillation
 * run's `training-state-<kimg>.safetensors`, the raw generator G that the optimizer steps (its
 * `G.*` tensors; snapshots hold the EMA generator G_ema instead), with the network config the state
 * records. A state that does not hold all of G's tensors is refused with a {@linkcode UsageError}.
 */
export async function loadProbeGenerator(file: string): Promise<EDMPrecond> {
  if (!TRAINING_STATE.test(file)) return await loadNetwork(file);
  const { metadata } = await readSafetensorsHeader(file);
  let kwargs: unknown;
  try {
    kwargs = JSON.parse(metadata.networks ?? "").G;
  } catch {
    kwargs = undefined;
  }
  if (!kwargs || typeof kwargs !== "object") {
    throw new UsageError(
      `${file}: no generator config (metadata 'networks') in the training state`,
    );
  }
  return await loadStateNetwork(
    file,
    "G.",
    fromEdmKwargs(kwargs as Parameters<typeof fromEdmKwargs>[0]),
  );
}

/**
 * Each generator file's name in the rows and grids: its base name without `.safetensors`, or,
 * when two files share a base name (the same snapshot of two runs), the path as given without it.
 */
export function generatorNames(files: readonly string[]): Map<string, string> {
  const strip = (f: string) => f.replace(/\.safetensors$/, "");
  const base = (f: string) => strip(f.replace(/^.*\//, ""));
  const counts = new Map<string, number>();
  for (const f of files) counts.set(base(f), (counts.get(base(f)) ?? 0) + 1);
  return new Map(files.map((f) => [f, counts.get(base(f))! > 1 ? strip(f) : base(f)]));
}

/** Pixel statistics of `n` grey uint8 images of `res`×`res`. */
export interface PixelStats {
  /** Mean intensity, 0 (black) to 1 (white). */
  ink: number;
  /** Share of pixels strictly between 32 and 224 (neither background nor stroke). */
  midtone: number;
  /** Mean absolute difference of horizontal and vertical neighbours, over 255. */
  sharpness: number;
}

/** {@linkcode PixelStats} of `n` grey HWC uint8 images. */
export function pixelStats(pixels: Uint8Array, n: number, res: number): PixelStats {
  if (pixels.length !== n * res * res) {
    throw new RangeError(`pixelStats: ${pixels.length} bytes are not ${n} images of ${res}²`);
  }
  let sum = 0;
  let mid = 0;
  let grad = 0;
  for (let k = 0; k < n; k++) {
    const o = k * res * res;
    for (let y = 0; y < res; y++) {
      for (let x = 0; x < res; x++) {
        const v = pixels[o + y * res + x];
        sum += v;
        if (v > 32 && v < 224) mid++;
        if (x + 1 < res) grad += Math.abs(pixels[o + y * res + x + 1] - v);
        if (y + 1 < res) grad += Math.abs(pixels[o + (y + 1) * res + x] - v);
      }
    }
  }
  const count = n * res * res;
  return {
    ink: sum / count / 255,
    midtone: mid / count,
    sharpness: grad / (n * 2 * res * (res - 1)) / 255,
  };
}

/** Arg-max class of each row of `probs` (`[n, k]`, row-major). */
export function argmaxRows(probs: Float32Array, k: number): Int32Array {
  const n = probs.length / k;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let j = 1; j < k; j++) if (probs[i * k + j] > probs[i * k + best]) best = j;
    out[i] = best;
  }
  return out;
}

/** Class frequencies (summing to 1) of a list of class indices in `0..k-1`. */
export function classHistogram(classes: Int32Array, k: number): number[] {
  const h = new Array<number>(k).fill(0);
  for (const c of classes) h[c] += 1 / classes.length;
  return h;
}

/** Total-variation distance ½·Σ|p − q| of two distributions. */
export function totalVariation(p: readonly number[], q: readonly number[]): number {
  if (p.length !== q.length) throw new RangeError("totalVariation: lengths differ");
  return p.reduce((s, v, i) => s + Math.abs(v - q[i]), 0) / 2;
}

/**
 * Mean and covariance of `n` feature rows with frequency weights `w`: the statistics of the
 * rows repeated `w` times, covariance divided by Σw − 1 as `featureStats`' unbiased default.
 * ({@linkcode classMixWeights} sum to the number of rows, so the divisor stays n − 1.)
 */
export function weightedStats(
  features: Float32Array,
  n: number,
  dim: number,
  w: ArrayLike<number>,
): Stats {
  let total = 0;
  for (let i = 0; i < n; i++) total += w[i];
  const mu = new Float64Array(dim);
  for (let i = 0; i < n; i++) {
    for (let a = 0; a < dim; a++) mu[a] += (w[i] / total) * features[i * dim + a];
  }
  const sigma = new Float64Array(dim * dim);
  const d = new Float64Array(dim);
  for (let i = 0; i < n; i++) {
    const wi = w[i] / (total - 1);
    for (let a = 0; a < dim; a++) d[a] = features[i * dim + a] - mu[a];
    for (let a = 0; a < dim; a++) {
      const da = wi * d[a];
      for (let b = a; b < dim; b++) sigma[a * dim + b] += da * d[b];
    }
  }
  for (let a = 0; a < dim; a++) {
    for (let b = 0; b < a; b++) sigma[a * dim + b] = sigma[b * dim + a];
  }
  return { mu, sigma, dim };
}

/**
 * Per-sample weights that give `classes` the class mix `target` (importance weights
 * target(c)/own(c)); a class absent from `classes` cannot be given weight and is left out.
 */
export function classMixWeights(classes: Int32Array, target: readonly number[]): Float64Array {
  const own = classHistogram(classes, target.length);
  return Float64Array.from(classes, (c) => target[c] / own[c]);
}

/** Mean of each row's largest value (the classifier's mean confidence). */
function meanMax(probs: Float32Array, k: number): number {
  const n = probs.length / k;
  let s = 0;
  for (let i = 0; i < n; i++) s += Math.max(...probs.subarray(i * k, (i + 1) * k));
  return s / n;
}

interface Space {
  name: string;
  det: MnistFeatureNet;
  ref: Stats;
  real?: { features: Float32Array; hist: number[] };
}

interface SpaceRow {
  fid: number;
  fidMean: number;
  fidCov: number;
  /** FID with the samples reweighted to the real images' class mix ({@linkcode classMixWeights}). */
  fidClassMix: number;
  precision: number;
  recall: number;
  classTv: number;
  confidence: number;
  hist: number[];
}

/** One line of the probe's JSONL file. */
interface ProbeRow {
  generator: string;
  num: number;
  seed: number;
  spaces: Record<string, SpaceRow>;
  /** Share of images on whose digit the two classifiers agree. */
  agreement: number;
  pixels: PixelStats;
}

/**
 * Scores `n` images (`pixels`) in every space; with `real`, they become each space's real
 * reference first.
 */
async function probe(
  pixels: Uint8Array,
  n: number,
  res: number,
  spaces: Space[],
  real: boolean,
): Promise<
  {
    result: Omit<ProbeRow, "generator" | "num" | "seed">;
    classes: Int32Array[];
    features: Float32Array[];
  }
> {
  const out: Record<string, SpaceRow> = {};
  const classes: Int32Array[] = [];
  const feats: Float32Array[] = [];
  for (const sp of spaces) {
    const acc = new DetectorAccumulator(sp.det, { captureFeatures: true, captureProbs: true });
    const per = res * res;
    for (let i = 0; i < n; i += 100) {
      const m = Math.min(100, n - i);
      await acc.addImages(pixels.subarray(i * per, (i + m) * per), m, res, 1);
    }
    const features = acc.stats.all();
    const probs = acc.probs();
    const cls = argmaxRows(probs, sp.det.numClasses);
    classes.push(cls);
    feats.push(features);
    const hist = classHistogram(cls, sp.det.numClasses);
    if (real) sp.real = { features, hist };
    const st = featureStats(features, n, sp.det.featureDim);
    const t = fidTerms(st.mu, st.sigma, sp.ref.mu, sp.ref.sigma);
    const pr = await precisionRecall(sp.real!.features, features, sp.det.featureDim);
    const ws = weightedStats(features, n, sp.det.featureDim, classMixWeights(cls, sp.real!.hist));
    out[sp.name] = {
      fid: t.mean + t.cov,
      fidMean: t.mean,
      fidCov: t.cov,
      fidClassMix: fid(ws.mu, ws.sigma, sp.ref.mu, sp.ref.sigma),
      precision: pr.precision,
      recall: pr.recall,
      classTv: totalVariation(hist, sp.real!.hist),
      confidence: meanMax(probs, sp.det.numClasses),
      hist,
    };
  }
  let agree = 0;
  for (let i = 0; i < n; i++) if (classes[0][i] === classes[1][i]) agree++;
  return {
    result: { spaces: out, agreement: agree / n, pixels: pixelStats(pixels, n, res) },
    classes,
    features: feats,
  };
}

function table(rows: ProbeRow[]): string {
  const f = (v: number, d = 2) => v.toFixed(d);
  const lines = [
    "| generator | space | FID | mean term | cov term | FID, real class mix | precision | recall | class TV | confidence | agreement | ink | midtone | sharpness |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const r of rows) {
    for (const [name, s] of Object.entries(r.spaces)) {
      lines.push(
        `| ${r.generator} | ${name} | ${f(s.fid)} | ${f(s.fidMean)} | ${f(s.fidCov)} | ${
          f(s.fidClassMix)
        } | ${f(s.precision, 3)} | ${f(s.recall, 3)} | ${f(s.classTv, 3)} | ${
          f(s.confidence, 3)
        } | ${f(r.agreement, 3)} | ${f(r.pixels.ink, 3)} | ${f(r.pixels.midtone, 3)} | ${
          f(r.pixels.sharpness, 3)
        } |`,
      );
    }
  }
  return lines.join("\n");
}

async function main() {
  const f = parseFlags(Deno.args, { string: ["out", "num", "seed", "grids", "steps"] }, USAGE);
  const files = f.positionals;
  if (!f.out || files.length === 0) throw new UsageError(USAGE);
  const num = numberFlag("num", f.num, 1000, { integer: true, min: 10 });
  const seed = numberFlag("seed", f.seed, 1_000_003, { integer: true, min: 0 });
  const grids = f.grids as string | undefined;
  // A teacher is sampled as the chain's eval stage samples it: EDM's Heun sampler.
  const steps = f.steps === undefined
    ? undefined
    : numberFlag("steps", f.steps, 18, { integer: true, min: 2 });
  for (const file of files) {
    await Deno.stat(file).catch(() => {
      throw new UsageError(`${file}: no such generator file`);
    });
  }
  const backend = await startBackend(f.backend as string | undefined);
  console.log(`backend: ${backend.name}`);
  const spaces: Space[] = [
    {
      name: "mnist",
      det: await MnistFeatureNet.load(DEFAULT_MNIST_FEATURES),
      ref: await loadRefStats(DEFAULT_MNIST_REF_STATS),
    },
    {
      name: "mnist-b",
      det: await MnistFeatureNet.load(DEFAULT_MNIST_FEATURES_B),
      ref: await loadRefStats(DEFAULT_MNIST_REF_STATS_B),
    },
  ];
  if (grids) await Deno.mkdir(grids, { recursive: true });
  const ds = await mnistDataset();
  const res = ds.resolution;
  const per = res * res;
  // Real images, evenly spaced over the set: the real side of precision/recall and of the class
  // histograms; then as many others, between them, scored as the "real" row (what real images
  // get at this sample size).
  const realAt = (offset: number) => {
    const px = new Uint8Array(num * per);
    for (let i = 0; i < num; i++) {
      px.set(ds.image(Math.floor(((i + offset) * ds.size) / num)), i * per);
    }
    return px;
  };
  const rows: ProbeRow[] = [];
  const emit = async (generator: string, r: Omit<ProbeRow, "generator" | "num" | "seed">) => {
    const row = { generator, num, seed, ...r };
    rows.push(row);
    await Deno.writeTextFile(f.out as string, JSON.stringify(row) + "\n", { append: true });
  };
  await probe(realAt(0), num, res, spaces, true);
  // The real row needs `num` other real images; with more than half the set there are none (the
  // offset picks the same ones), so the row and its calibration are left out.
  if (2 * num > ds.size) {
    console.log(
      `real row and calibration left out: --num ${num} leaves no ${num} other real images ` +
        `(the set has ${ds.size})`,
    );
  } else {
    const realRow = await probe(realAt(0.5), num, res, spaces, false);
    await emit("real", realRow.result);
    // Calibration: what a given class-mix shift alone costs in each space. The real images are
    // reweighted to a mix with every even digit's share raised by δ·share and every odd one's
    // lowered (then renormalised).
    for (const delta of [0.1, 0.2]) {
      const fids: Record<string, { tv: number; fid: number }> = {};
      for (const [k, sp] of spaces.entries()) {
        const own = realRow.result.spaces[sp.name].hist;
        const t = own.map((h, c) => h * (1 + (c % 2 === 0 ? delta : -delta)));
        const z = t.reduce((a, b) => a + b, 0);
        const target = t.map((v) => v / z);
        const ws = weightedStats(
          realRow.features[k],
          num,
          sp.det.featureDim,
          classMixWeights(realRow.classes[k], target),
        );
        fids[sp.name] = {
          tv: totalVariation(own, target),
          fid: fid(ws.mu, ws.sigma, sp.ref.mu, sp.ref.sigma),
        };
      }
      const line = { kind: "calibration", delta, num, spaces: fids };
      await Deno.writeTextFile(f.out as string, JSON.stringify(line) + "\n", { append: true });
      console.log(
        `calibration: real images, class mix shifted by δ ${delta}: ${
          Object.entries(fids).map(([n, v]) => `${n} TV ${v.tv.toFixed(3)} FID ${v.fid.toFixed(2)}`)
            .join(", ")
        }`,
      );
    }
  }
  const names = generatorNames(files);
  for (const file of files) {
    const net = await loadProbeGenerator(file);
    if (net.imgChannels !== 1 || net.imgResolution !== res) {
      throw new UsageError(`${file}: not an MNIST generator (${net.imgChannels} channels)`);
    }
    const px = new Uint8Array(num * per);
    const sampler = steps ? { sampler: "heun" as const, steps } : { sigmaInit: 2.5 };
    for await (const b of generateBatches(net, { num, seed, batch: 100, ...sampler })) {
      px.set(b.pixels, b.start * per);
    }
    net.dispose();
    const name = names.get(file)!;
    if (grids) await writeImageGrid(`${grids}/${name.replaceAll("/", "_")}.png`, px, 64, res, 1);
    await emit(name, (await probe(px, num, res, spaces, false)).result);
    console.log(`${name}: done`);
  }
  console.log(table(rows));
}

if (import.meta.main) await runMain(main);
