/**
 * Prints the loss curves of three short deterministic runs as JSON, for the bit-identity check
 * of `tests/golden_test.ts` (issue 16: refactors keep every number of a seeded run):
 *
 * - a teacher run (`trainTeacher`, tiny SongUNet on 8×8 bars, batch 8 in 2 rounds, 4 iterations),
 * - SiD and SiDA (augmentation on, both warm-up gates crossed during the run) distillation runs
 *   (`runDistillation`, the same tiny teacher architecture with 3 classes and augment_dim 9,
 *   batch 4 in 2 rounds, 4 iterations each), the SiDA run interrupted after 2 iterations and
 *   resumed.
 *
 * Every number of every `log.jsonl` record that is a loss, a statistic of w_n, a gate or an EMA
 * β is printed with its float64 bit pattern (hex), plus a fingerprint of each final snapshot.
 *
 * Usage: `deno run -A tests/golden_driver.ts [--backend cpu|native]`
 */
import { join } from "node:path";
import { createImageDataset, type ImageDataset, writeImageZip } from "../lib/data/dataset.ts";
import { createNetwork, loadNetwork, saveNetwork } from "../lib/nets/network.ts";
import { trainTeacher } from "../lib/diffusion/teacher_training.ts";
import { runDistillation } from "../lib/distill/train.ts";
import { networkFingerprint } from "../lib/train/run_folder.ts";
import { initBackend } from "../lib/runtime/backend.ts";
import { tinySongUNet } from "./helpers.ts";

const backend = Deno.args[Deno.args.indexOf("--backend") + 1] ?? "cpu";
await initBackend(Deno.args.includes("--backend") ? backend : "cpu");

function images(n: number, channels: number, classes: number): ImageDataset {
  const r = 8;
  const pixels = new Uint8Array(n * r * r * channels);
  for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 37 + (i >> 5) * 11) % 256;
  return createImageDataset({
    name: "golden",
    resolution: r,
    channels,
    pixels,
    labels: Array.from({ length: n }, (_, i) => i % classes),
  });
}

const hex = (v: unknown) => {
  if (typeof v !== "number") return v;
  const b = new DataView(new ArrayBuffer(8));
  b.setFloat64(0, v);
  return [...new Uint8Array(b.buffer)].map((x) => x.toString(16).padStart(2, "0")).join("");
};

const KEYS = [
  "nimg",
  "loss",
  "lr",
  "emaBeta",
  "lossFake",
  "lossD",
  "lossG",
  "lossGGan",
  "bceReal",
  "bceFake",
  "bceG",
  "wMean",
  "wMin",
  "wMax",
  "gStep",
  "ganActive",
];

async function curve(dir: string): Promise<unknown[]> {
  const text = await Deno.readTextFile(join(dir, "log.jsonl"));
  return text.trim().split("\n").map((l) => {
    const r = JSON.parse(l);
    return Object.fromEntries(KEYS.filter((k) => k in r).map((k) => [k, hex(r[k])]));
  });
}

async function fingerprint(path: string): Promise<string> {
  const net = await loadNetwork(path);
  const f = await networkFingerprint(net);
  net.dispose();
  return f;
}

const dir = await Deno.makeTempDir({ prefix: "sida-golden-" });
try {
  const out: Record<string, unknown> = {};
  // ---- teacher ----
  const t = await trainTeacher({
    out: join(dir, "teacher"),
    network: { ...tinySongUNet({ imgResolution: 8, imgChannels: 1, labelDim: 3 }) },
    dropout: 0.1,
    data: images(24, 1, 3),
    config: { batch: 8, microBatch: 4, lr: 1e-3, lrRampupKimg: 0.016, seed: 5 },
    kimg: 0.032,
    tickKimg: 0.001,
    snapKimg: 0.016,
    dumpKimg: 0.016,
    backend: Deno.args.includes("--backend") ? backend : "cpu",
    quiet: true,
  });
  out.teacher = {
    curve: await curve(join(dir, "teacher")),
    snapshot: await fingerprint(t.snapshotPath!),
  };

  // ---- distillation ----
  const teacherPath = join(dir, "teacher.safetensors");
  const teacher = createNetwork(
    tinySongUNet({ imgResolution: 8, imgChannels: 3, labelDim: 3, augmentDim: 9 }),
    { seed: 1 },
  );
  await saveNetwork(teacher, teacherPath);
  teacher.dispose();
  const dataPath = join(dir, "data.zip");
  await writeImageZip(dataPath, images(32, 3, 3));
  const common = {
    teacher: teacherPath,
    data: dataPath,
    preset: "mnist",
    durationKimg: 0.016,
    tickKimg: 0.001,
    snapKimg: 0.008,
    dumpKimg: 0.008,
    backend: Deno.args.includes("--backend") ? backend : "cpu",
    quiet: true,
  };
  const sid = await runDistillation({
    ...common,
    method: "sid",
    out: join(dir, "sid"),
    // G_ema as the mnist preset's SiD stage had it when the curves were recorded (10 kimg, 5 %
    // ramp-up; the preset now has 5 kimg with a ramp-up of 0.5).
    overrides: {
      batch: 4,
      microBatch: 2,
      lr: 1e-3,
      glr: 1e-3,
      seed: 3,
      dropout: 0.1,
      emaKimg: 10,
      emaRampup: 0.05,
    },
  });
  out.sid = {
    curve: await curve(join(dir, "sid")),
    snapshot: await fingerprint(sid.snapshotPath!),
  };
  // G_ema as the mnist preset's SiD²A stage had it when the curves were recorded (10 kimg, 5 %
  // ramp-up; the preset now has 3 kimg without ramp-up).
  const sidaOverrides = {
    emaKimg: 10,
    emaRampup: 0.05,
    batch: 4,
    microBatch: 2,
    lr: 1e-3,
    glr: 1e-3,
    seed: 3,
    augment: 0.5,
    gWarmupNimg: 4,
    ganWarmupNimg: 8,
    dropout: 0.1,
  };
  // Interrupted after 2 iterations (0.008 kimg), then resumed.
  await runDistillation({
    ...common,
    method: "sida",
    init: sid.snapshotPath!,
    out: join(dir, "sida"),
    overrides: sidaOverrides,
    durationKimg: 0.008,
  });
  const sida = await runDistillation({
    ...common,
    method: "sida",
    init: sid.snapshotPath!,
    out: join(dir, "sida"),
    overrides: sidaOverrides,
  });
  out.sida = {
    resumed: sida.resumed,
    curve: await curve(join(dir, "sida")),
    snapshot: await fingerprint(sida.snapshotPath!),
  };
  console.log(JSON.stringify(out, null, 1));
} finally {
  await Deno.remove(dir, { recursive: true });
}
