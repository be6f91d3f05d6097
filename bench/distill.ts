/**
 * Distillation speed: seconds per SiDA iteration (the three phases of docs/distillation.md §4.1,
 * both warm-up gates open) and one-step generator images/s, for
 *
 * - `mnist`: the `mnist` network (random weights), batch 64 in 2 rounds of 32 (the mnist preset);
 * - `cifar10`: CIFAR-10 DDPM++ cond (56M, random weights, augment_dim 9, augmentation p 0.12),
 *   batch 8 in one round, on 32×32×3 synthetic labelled data;
 * - `edm2-xs`: EDM2-XS on ImageNet 512 latents (125M, random weights, 4×64×64, 1000 classes),
 *   the `imagenet512-xs` preset (logvar weighting, renormalisation after each step), batch 2 in
 *   one round, on synthetic latents (per item a posterior mean and std, as `img512-sd.zip`);
 *
 * on every backend that starts (`webgpu`, `native`, `cpu`). Before timing, a batch-1
 * forward+backward of the mnist network measures the backend's speed; a configuration whose
 * estimated time (warm-up + timed iterations + generator calls) exceeds `--max-seconds` (default
 * 600) is skipped, saying so.
 *
 *   deno task bench:distill
 *   deno task bench:distill --backends webgpu --configs cifar10 --iters 5 --json out.json
 *
 * @module
 */
import { tf } from "../lib/deps.ts";
import { createImageDataset, type ImageDataset, mnistDataset } from "../lib/data/dataset.ts";
import { createEdm2Network, type EDM2Precond } from "../lib/nets/edm2.ts";
import type { EDMPrecond } from "../lib/nets/precond.ts";
import { Distiller } from "../lib/distill/distiller.ts";
import { generate } from "../lib/distill/generator.ts";
import { distillPreset } from "../lib/distill/presets.ts";
import { preset } from "../lib/nets/config.ts";
import { createNetwork } from "../lib/nets/network.ts";
import { BACKEND_NAMES } from "../lib/runtime/backend.ts";
import { residentBytes, startBenchBackend, syntheticLatents } from "./common.ts";
import { numberFlag, parseFlags, runMain, UsageError } from "../lib/runtime/cli.ts";

const USAGE =
  "usage: bench/distill.ts [--backends webgpu,native,cpu] [--configs mnist,cifar10,edm2-xs] [--iters 3] [--max-seconds 600] [--batch N] [--json out.json]";

interface Config {
  name: string;
  network: string;
  /** The distillation preset whose settings are used. */
  preset: string;
  /** Makes the (random-weight) teacher. */
  teacher: () => EDMPrecond | EDM2Precond;
  batch: number;
  microBatch: number;
  /** Augmentation probability p (the CIFAR-10 scripts' 0.12), 0 for none. */
  augment: number;
  /** Forward GFLOP per image (bench/nets.ts figures). */
  gflopPerImage: number;
  data: () => Promise<ImageDataset>;
}

const CONFIGS: Record<string, Config> = {
  mnist: {
    name: "mnist",
    network: "mnist",
    preset: "mnist",
    teacher: () => createNetwork(preset("mnist"), { seed: 0 }),
    batch: 64,
    microBatch: 32,
    augment: 0,
    gflopPerImage: 0.85,
    data: () => mnistDataset(),
  },
  cifar10: {
    name: "cifar10",
    network: "cifar10-ddpmpp-cond",
    preset: "cifar10-cond",
    teacher: () => createNetwork(preset("cifar10-ddpmpp-cond"), { seed: 0 }),
    batch: 8,
    microBatch: 8,
    augment: 0.12,
    gflopPerImage: 42,
    data: () => {
      const n = 64;
      const pixels = new Uint8Array(n * 32 * 32 * 3);
      for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 2654435761) >>> 24;
      return Promise.resolve(createImageDataset({
        name: "synthetic-cifar",
        resolution: 32,
        channels: 3,
        pixels,
        labels: Array.from({ length: n }, (_, i) => i % 10),
      }));
    },
  },
  "edm2-xs": {
    name: "edm2-xs",
    network: "edm2-img512-xs",
    preset: "imagenet512-xs",
    teacher: () => createEdm2Network("edm2-img512-xs", { seed: 0 }),
    batch: 2,
    microBatch: 2,
    augment: 0,
    // EDM2 paper (Karras et al. 2024), Table 2: XS 46 Gflops per evaluation.
    gflopPerImage: 46,
    data: () => Promise.resolve(syntheticLatents(64)),
  },
};

/**
 * One SiDA iteration per image costs about 5 "forward+backward" units: step A runs G forward
 * (≈⅓ unit), the fake net on fakes with backward (1) and on reals through the encoder with
 * backward (≈⅔); step B runs G, the teacher and the fake net forward and backward (3).
 */
const UNITS_PER_IMAGE = 5;

interface Row {
  backend: string;
  device: string;
  config: string;
  batch: number;
  rounds: number;
  secPerIteration: number;
  trainImgPerSec: number;
  generatorImgPerSec: number;
  /** Peak resident memory of the process so far (VmHWM, GB; Linux only). */
  peakRssGb?: number;
  note?: string;
}

/** The process's peak resident memory in GB (VmHWM), or undefined off Linux. */
function peakRssGb(): number | undefined {
  const { hwm } = residentBytes();
  return Number.isFinite(hwm) ? hwm / 1e9 : undefined;
}

/**
 * Seconds of one forward+backward of the mnist network at batch 1 after a warm-up (the unit of
 * the time estimate; on tfjs-cpu the backward pass dominates).
 */
async function probeUnitSeconds(): Promise<number> {
  const net = createNetwork(preset("mnist"), { seed: 0 });
  const x = tf.randomNormal([1, 32, 32, 1]) as tf.Tensor4D;
  const labels = tf.tidy(() =>
    tf.cast(tf.oneHot(tf.tensor1d([3], "int32"), 10), "float32")
  ) as tf.Tensor2D;
  const vars = net.namedParameters().map(([, v]) => v);
  const once = async () => {
    const { value, grads } = tf.variableGrads(
      () => tf.sum(net.denoise(x, 1, { labels, training: true })) as tf.Scalar,
      vars,
    );
    await value.data();
    tf.dispose([value, ...Object.values(grads)]);
  };
  await once(); // warm-up (WebGPU compiles its shaders)
  const t0 = performance.now();
  await once();
  const s = (performance.now() - t0) / 1000;
  tf.dispose([x, labels]);
  net.dispose();
  return s;
}

async function benchConfig(c: Config, iters: number): Promise<Omit<Row, "backend" | "device">> {
  const teacher = c.teacher();
  const dataset = await c.data();
  const base = distillPreset(c.preset, "sida").config;
  const d = new Distiller({
    teacher,
    dataset,
    config: {
      ...base,
      batch: c.batch,
      microBatch: c.microBatch,
      augment: c.augment,
      gWarmupNimg: 0, // both gates open: full iterations
      ganWarmupNimg: 0,
    },
  });
  // Every iteration's time as it completes, so that a run cut short still reports something.
  const timed = async (what: string) => {
    const t = performance.now();
    await d.step();
    const s = (performance.now() - t) / 1000;
    console.error(
      `  ${c.name} ${what}: ${s.toFixed(3)} s (peak RSS ${peakRssGb()?.toFixed(2) ?? "?"} GB)`,
    );
    return s;
  };
  await timed("warm-up iteration");
  let total = 0;
  for (let i = 0; i < iters; i++) total += await timed(`iteration ${i + 1}/${iters}`);
  const secPerIteration = total / iters;
  const gen = async () => {
    const x = generate(d.Gema, { n: c.batch, seed: 1 });
    await x.data();
    x.dispose();
  };
  await gen();
  const t1 = performance.now();
  for (let i = 0; i < iters; i++) await gen();
  const genSec = (performance.now() - t1) / 1000 / iters;
  const rounds = d.rounds;
  d.dispose();
  teacher.dispose();
  return {
    config: c.name,
    batch: c.batch,
    rounds,
    secPerIteration,
    trainImgPerSec: c.batch / secPerIteration,
    generatorImgPerSec: c.batch / genSec,
    peakRssGb: peakRssGb(),
  };
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    string: ["backends", "configs", "iters", "max-seconds", "batch", "json"],
  }, USAGE);
  const backends = String(f.backends ?? BACKEND_NAMES.join(",")).split(",");
  const configs = String(f.configs ?? "mnist,cifar10").split(",");
  for (const c of configs) {
    if (!CONFIGS[c]) {
      throw new UsageError(`unknown config '${c}' (${Object.keys(CONFIGS).join(", ")})`);
    }
  }
  const iters = numberFlag("iters", f.iters, 3, { integer: true, min: 1 });
  const maxSeconds = numberFlag("max-seconds", f["max-seconds"], 600, { min: 1 });
  // --batch N: every configuration at batch N (micro-batch min(b, N)), e.g. to measure a slow
  // backend at all; the default is each configuration's own batch (64 and 8).
  const batchOverride = f.batch === undefined
    ? undefined
    : numberFlag("batch", f.batch, 0, { integer: true, min: 1 });
  const rows: Row[] = [];
  for (const b of backends) {
    const started = await startBenchBackend(b);
    if (!started) continue;
    const { device } = started;
    const unit = await probeUnitSeconds();
    console.error(`${b}: mnist forward+backward at batch 1 takes ${unit.toFixed(2)} s`);
    for (const name of configs) {
      const c = batchOverride
        ? {
          ...CONFIGS[name],
          batch: batchOverride,
          microBatch: Math.min(CONFIGS[name].microBatch, batchOverride),
        }
        : CONFIGS[name];
      // Scaled from the probe by FLOPs (batch-1 overheads make this a pessimistic estimate).
      const scale = c.gflopPerImage / CONFIGS.mnist.gflopPerImage;
      const perIter = unit * scale * c.batch * UNITS_PER_IMAGE;
      const estimate = (iters + 1) * (perIter + (unit / 3) * scale * c.batch);
      if (estimate > maxSeconds) {
        const note = `skipped: estimated ${Math.round(estimate)} s > ${maxSeconds} s ` +
          `(~${perIter.toFixed(0)} s per iteration)`;
        console.error(`${b} ${name}: ${note}`);
        rows.push({
          backend: b,
          device,
          config: name,
          batch: c.batch,
          rounds: c.batch / c.microBatch,
          secPerIteration: NaN,
          trainImgPerSec: NaN,
          generatorImgPerSec: NaN,
          note,
        });
        continue;
      }
      console.error(`${b} ${name}: batch ${c.batch}, ${iters} timed iteration(s) after a warm-up…`);
      const row: Row = { backend: b, device, ...(await benchConfig(c, iters)) };
      console.error(
        `${b} ${name}: ${row.secPerIteration.toFixed(3)} s/iteration, ` +
          `${row.generatorImgPerSec.toFixed(1)} generator img/s`,
      );
      rows.push(row);
    }
  }
  const fmt = (v: number, d = 2) => Number.isFinite(v) ? v.toFixed(d) : "–";
  console.log(
    "| backend | device | config | batch (rounds) | s / SiDA iteration | train img/s | generator img/s |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- |");
  for (const r of rows) {
    console.log(
      `| ${r.backend} | ${r.device} | ${r.config} | ${r.batch} (${r.rounds}) | ${
        fmt(r.secPerIteration)
      } | ${fmt(r.trainImgPerSec, 1)} | ${fmt(r.generatorImgPerSec, 1)}${
        r.note ? ` (${r.note})` : ""
      } |`,
    );
  }
  if (f.json) await Deno.writeTextFile(String(f.json), JSON.stringify(rows, null, 2));
});
