/**
 * `deno task eval`: generates images with a one-step generator (or a teacher with the EDM
 * sampler), runs a feature detector, and reports FID / IS / precision-recall
 * (docs/distillation.md §7.1). Prints a table, writes `metrics.json` and `samples.png` into
 * `--out`.
 *
 * Detectors: `mnist` (our MNIST feature network, `data/mnist-features.safetensors`; default for
 * 32×32 grey generators, with the shipped `data/mnist-ref-stats.npz` and the MNIST digits as the
 * real set for PR) or `inception` (the Inception-v3 FID detector, `lib/metrics/inception.ts`:
 * `--detector` names `inception-2015-12-05.pt` or its safetensors conversion; without the flag
 * the `SIDA_INCEPTION` environment variable is used).
 *
 * A latent generator (EDM2 `img512`, 4-channel samples) needs `--vae`: the Stable Diffusion VAE
 * (`stabilityai/sd-vae-ft-mse` as a diffusers folder, or its `.safetensors` file) that decodes its
 * samples to RGB before the detector sees them (NVlabs/edm2 `training/encoders.py:125-132`).
 *
 * `--out` is created and locked (`lib/io/lock.ts`) before any work, so an unwritable folder or
 * one in use by another task fails at once.
 *
 * @module
 */
import { type ImageDataset, loadImageZip, mnistDataset } from "../lib/data/dataset.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import { lockRunFolder } from "../lib/io/lock.ts";
import { loadDenoisingNetwork } from "../lib/nets/load.ts";
import type { Detector } from "../lib/metrics/detector.ts";
import { datasetFeatures } from "../lib/metrics/evaluate.ts";
import { imageShapeOrUsage, SIGMA_INIT, writeImageGrid } from "../lib/metrics/generate.ts";
import { loadVaeDecoder } from "../lib/nets/vae.ts";
import { DEFAULT_MNIST_FEATURES, DEFAULT_MNIST_REF_STATS } from "../lib/metrics/mnist_features.ts";
import { evaluateNetwork, loadDetector } from "../lib/pipeline/evaluate.ts";
import { loadRefStats } from "../lib/metrics/ref_stats.ts";
import type { Stats } from "../lib/metrics/stats.ts";
import { numberFlag, parseFlags, runMain, startBackend, UsageError } from "../lib/runtime/cli.ts";

const USAGE =
  "usage: deno task eval --generator G.safetensors [--ref stats.npz|stats.pkl|dataset.zip] " +
  "[--num 50000] [--metrics fid,is,pr] [--features mnist|inception] [--detector FILE] " +
  "[--sampler onestep|heun] [--steps 18] [--sigma-init 2.5] [--batch 64] [--seed 0] " +
  "[--real dataset.zip] [--vae DIR|FILE] [--out DIR] [--backend B]";

function progress(label: string, done: number, total: number, t0: number): void {
  const sec = (performance.now() - t0) / 1000;
  const rate = done / Math.max(sec, 1e-9);
  Deno.stderr.writeSync(new TextEncoder().encode(
    `\r${label}: ${done}/${total} (${rate.toFixed(1)} img/s, ${sec.toFixed(0)} s)   ` +
      (done === total ? "\n" : ""),
  ));
}

await runMain(async () => {
  const flags = parseFlags(Deno.args, {
    string: [
      "generator",
      "ref",
      "num",
      "metrics",
      "features",
      "detector",
      "sampler",
      "steps",
      "sigma-init",
      "batch",
      "seed",
      "real",
      "out",
      "grid",
      "vae",
    ],
    boolean: ["help"],
  }, USAGE);
  if (flags.help) return console.log(USAGE);
  if (flags.positionals.length) {
    throw new UsageError(`unexpected argument '${flags.positionals[0]}' (${USAGE})`);
  }
  const genPath = flags.generator as string | undefined;
  if (!genPath) throw new UsageError(`--generator is required (${USAGE})`);
  const num = numberFlag("num", flags.num, 50000, { integer: true, min: 2 });
  const batch = numberFlag("batch", flags.batch, 64, { integer: true, min: 1 });
  const seed = numberFlag("seed", flags.seed, 0, { integer: true, min: 0 });
  const steps = numberFlag("steps", flags.steps, 18, { integer: true, min: 1 });
  const sigmaInit = numberFlag("sigma-init", flags["sigma-init"], SIGMA_INIT, { min: 0 });
  const gridCount = numberFlag("grid", flags.grid, 64, { integer: true, min: 0 });
  const sampler = (flags.sampler as string | undefined) ?? "onestep";
  if (sampler !== "onestep" && sampler !== "heun") {
    throw new UsageError(`--sampler must be onestep or heun, got '${sampler}'`);
  }
  const metrics = new Set(
    ((flags.metrics as string | undefined) ?? "fid,is,pr").split(",").map((s) => s.trim()).filter(
      Boolean,
    ),
  );
  for (const m of metrics) {
    if (!["fid", "is", "pr"].includes(m)) {
      throw new UsageError(`unknown metric '${m}' (fid, is, pr)`);
    }
  }
  const out = (flags.out as string | undefined) ??
    `runs/eval-${new Date().toISOString().replace(/[:.]/g, "-")}`;
  // The output folder is checked (created, written) and locked before any work: an unwritable
  // --out fails now, not after 50,000 images.
  await using _lock = await lockRunFolder(out, { task: "eval", partialDepth: 0 });
  const backend = await startBackend(flags.backend as string | undefined);

  const net = await loadDenoisingNetwork(genPath);
  const vae = flags.vae ? await loadVaeDecoder(flags.vae as string) : undefined;
  const { resolution: res, channels: ch } = imageShapeOrUsage(net, vae);
  const features = (flags.features as string | undefined) ??
    (res === 32 && ch === 1 ? "mnist" : "inception");
  let detector: Detector;
  if (features === "mnist") {
    if (res !== 32) {
      throw new UsageError(
        `the mnist detector needs 32×32 images, the generator makes ${res}×${res}`,
      );
    }
    detector = await loadDetector("mnist", (flags.detector as string) ?? DEFAULT_MNIST_FEATURES);
  } else if (features === "inception") {
    const path = (flags.detector as string | undefined) ?? Deno.env.get("SIDA_INCEPTION");
    if (!path) {
      throw new UsageError(
        "--features inception needs --detector inception-2015-12-05.pt (or SIDA_INCEPTION)",
      );
    }
    detector = await loadDetector("inception", path);
  } else {
    throw new UsageError(`--features must be mnist or inception, got '${features}'`);
  }

  // Reference statistics and real images.
  let refStats: Stats | undefined;
  let realSet: ImageDataset | undefined;
  const refPath = flags.ref as string | undefined;
  if (refPath && refPath.toLowerCase().endsWith(".zip")) realSet = await loadImageZip(refPath);
  else if (refPath) refStats = await loadRefStats(refPath);
  else if (features === "mnist") refStats = await loadRefStats(DEFAULT_MNIST_REF_STATS);
  if (flags.real) realSet = await loadImageZip(flags.real as string);
  if (!realSet && features === "mnist" && (metrics.has("pr") || !refStats)) {
    realSet = await mnistDataset();
  }
  if (metrics.has("fid") && !refStats && !realSet) {
    throw new UsageError("FID needs --ref (statistics or a dataset zip)");
  }
  if (metrics.has("pr") && !realSet) {
    throw new UsageError("precision/recall needs real images: --ref or --real dataset.zip");
  }
  let realFeatures: Float32Array | undefined;
  if (realSet && (metrics.has("pr") || !refStats)) {
    const t0 = performance.now();
    const acc = await datasetFeatures(detector, realSet, {
      captureFeatures: metrics.has("pr"),
      batch,
      onProgress: (d, t) => progress("real images", d, t, t0),
    });
    if (!refStats) refStats = { mu: acc.stats.mean(), sigma: acc.stats.cov(), dim: acc.stats.dim };
    if (metrics.has("pr")) realFeatures = acc.stats.all();
  }
  if (refStats && refStats.dim !== detector.featureDim) {
    throw new UsageError(
      `reference statistics are ${refStats.dim}-d, the ${features} detector gives ${detector.featureDim}-d features`,
    );
  }

  // Generate, detect, compute (the evaluation the chain's eval stage uses too).
  const t0 = performance.now();
  const evaluation = (await evaluateNetwork(net, detector, {
    num,
    seed,
    batch,
    sampler,
    steps,
    sigmaInit,
    metrics,
    ref: { stats: refStats, realFeatures },
    gridCount,
    onProgress: (done, total) => progress("generated", done, total, t0),
    vae,
  }))!;
  const { results, grid: gridPixels } = evaluation;
  const genSeconds = evaluation.generateSeconds;

  // Report.
  const rows: [string, string][] = [];
  if (results.fid !== undefined) rows.push(["FID", results.fid.toFixed(4)]);
  if (results.is) rows.push(["IS", `${results.is.mean.toFixed(4)} ± ${results.is.std.toFixed(4)}`]);
  if (results.precision !== undefined) rows.push(["precision", results.precision.toFixed(4)]);
  if (results.recall !== undefined) rows.push(["recall", results.recall.toFixed(4)]);
  const w = Math.max(...rows.map((r) => r[0].length));
  console.log(`metrics of ${genPath} (${num} images, ${features} features, ${sampler}):`);
  for (const [k, v] of rows) console.log(`  ${k.padEnd(w)}  ${v}`);
  const report = {
    generator: genPath,
    num,
    seed,
    sampler,
    ...(sampler === "heun" ? { steps } : { sigmaInit }),
    features,
    ...(flags.vae ? { vae: flags.vae } : {}),
    ref: refPath ?? (features === "mnist" ? DEFAULT_MNIST_REF_STATS : null),
    backend: backend.name,
    generateSeconds: Math.round(genSeconds * 10) / 10,
    ...results,
  };
  await writeFileAtomic(
    `${out}/metrics.json`,
    new TextEncoder().encode(JSON.stringify(report, null, 2) + "\n"),
  );
  const count = Math.min(gridCount, num);
  if (count > 0) await writeImageGrid(`${out}/samples.png`, gridPixels, count, res, ch, 8);
  console.log(`wrote ${out}/metrics.json${count > 0 ? ` and ${out}/samples.png` : ""}`);
  detector.dispose();
  net.dispose();
  vae?.dispose();
});
