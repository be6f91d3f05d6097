/**
 * Distillation: the Distiller's iteration (gates, which networks change, frozen teacher, flat
 * memory), resuming a killed run (bit-identical state, identical continuation), one-line errors
 * that leave the run folder untouched, and Ctrl-C on `deno task sida`.
 *
 * Everything runs on a tiny conditional DDPM++ (8×8×3, 3 classes, augment_dim 9, 8 channels) and a
 * 32-image synthetic data set; the resumed run uses dropout 0.1 (masks seeded by iteration).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../lib/deps.ts";
import {
  type ImageDataset,
  isLatentDataset,
  LATENT_RAW_MEAN,
  LATENT_RAW_STD,
  LatentDataset,
  loadImageZip,
  writeImageZip,
  writeLatentZip,
} from "../lib/data/dataset.ts";
import type { HostTensor } from "../lib/io/host_tensor.ts";
import { writeSafetensors } from "../lib/io/safetensors.ts";
import { createNetwork, networkMetadata, saveNetwork } from "../lib/nets/network.ts";
import { NonFiniteTrainingError } from "../lib/train/guard.ts";
import type { EDMPrecond } from "../lib/nets/precond.ts";
import { createEdm2Network, EDM2Precond } from "../lib/nets/edm2.ts";
import { saveEdm2Network } from "../lib/nets/import_edm2.ts";
import { loadDenoisingNetwork } from "../lib/nets/load.ts";
import { isLabelsOnly, loadLabelsJson } from "../lib/data/labels.ts";
import { distillPreset, guessPreset } from "../lib/distill/presets.ts";
import { distillFlagNames, distillOverrides } from "../lib/distill/settings.ts";
import { parseFlags } from "../lib/runtime/cli.ts";
import { type DistillConfig, Distiller, resolveDistillConfig } from "../lib/distill/distiller.ts";
import { EMA_RAMPUP_RATIO, emaBeta } from "../lib/train/ema.ts";
import { seededRandom } from "../lib/runtime/random.ts";
import { generate } from "../lib/distill/generator.ts";
import { generateBatches } from "../lib/metrics/generate.ts";
import { readTrainingState } from "../lib/distill/run.ts";
import { findLatestState } from "../lib/train/run_folder.ts";
import { type DistillationOptions, runDistillation } from "../lib/distill/train.ts";
import { setupBackend, TEST_BACKEND, tinyImageDataset, withTempDir } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;

function assertEquals(actual: unknown, expected: unknown, message?: string): void {
  if (message === undefined) assert.deepEqual(actual, expected);
  else assert.deepEqual(actual, expected, message);
}
const TINY = {
  imgResolution: 8,
  imgChannels: 3,
  labelDim: 3,
  augmentDim: 9,
  unet: {
    arch: "SongUNet" as const,
    modelChannels: 8,
    channelMult: [1, 2],
    numBlocks: 1,
    attnResolutions: [],
    dropout: 0,
  },
};

interface Fixture {
  dir: string;
  teacherPath: string;
  dataPath: string;
  dataset: ImageDataset;
}

let fixture: Promise<Fixture> | undefined;

function setup(): Promise<Fixture> {
  fixture ??= (async () => {
    await setupBackend();
    const dir = await Deno.makeTempDir({ prefix: "sida-distill-test-" });
    const teacher = createNetwork(TINY, { seed: 1 });
    const teacherPath = join(dir, "teacher.safetensors");
    await saveNetwork(teacher, teacherPath);
    teacher.dispose();
    const dataset = tinyImageDataset(32, 8);
    const dataPath = join(dir, "data.zip");
    await writeImageZip(dataPath, dataset);
    return { dir, teacherPath, dataPath, dataset };
  })();
  return fixture;
}

async function params(net: EDMPrecond | EDM2Precond): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const [, v] of net.namedParameters()) out.push(Float32Array.from(await v.data()));
  return out;
}

function sameArrays(a: Float32Array[], b: Float32Array[]): boolean {
  return a.length === b.length && a.every((x, i) => bitEqual(x, b[i]));
}

function bitEqual(a: ArrayBufferView, b: ArrayBufferView): boolean {
  const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

function assertSameTensors(a: Map<string, HostTensor>, b: Map<string, HostTensor>, what: string) {
  assertEquals([...a.keys()].sort(), [...b.keys()].sort(), `${what}: tensor names`);
  for (const [k, t] of a) {
    const u = b.get(k)!;
    assertEquals(t.shape, u.shape, `${what}: shape of ${k}`);
    assertEquals(t.dtype, u.dtype, `${what}: dtype of ${k}`);
    assert(bitEqual(t.data, u.data), `${what}: values of ${k}`);
  }
}

const TEST_CONFIG = {
  method: "sida" as const,
  batch: 4,
  microBatch: 2,
  gWarmupNimg: 4,
  ganWarmupNimg: 8,
  augment: 0.5,
  lr: 1e-3,
  glr: 1e-3,
  seed: 3,
};

Deno.test("Distiller.setLearningRates: a zero rate freezes its network from the next step on", async () => {
  const { dataset } = await setup();
  const teacher = createNetwork(TINY, { seed: 1 });
  const d = new Distiller({
    teacher,
    dataset,
    config: { ...TEST_CONFIG, gWarmupNimg: 0, ganWarmupNimg: 0 },
  });
  assertEquals(d.learningRates, { lr: 1e-3, glr: 1e-3 });
  await d.step(); // both networks step: Adam state exists for both
  for (const [rates, frozen] of [[{ glr: 0 }, "G"], [{ lr: 0, glr: 1e-3 }, "fake"]] as const) {
    d.setLearningRates(rates);
    const G0 = await params(d.G), fake0 = await params(d.fake);
    await d.step();
    assertEquals(sameArrays(await params(d.G), G0), frozen === "G", `G frozen iff glr = 0`);
    assertEquals(sameArrays(await params(d.fake), fake0), frozen === "fake", `fake iff lr = 0`);
  }
  assertEquals(d.learningRates, { lr: 0, glr: 1e-3 });
  assertEquals(d.config.lr, 1e-3, "the configuration (and so the saved state) keeps its rates");
  assert.throws(() => d.setLearningRates({ lr: -1 }), /lr must be a finite number ≥ 0/);
  assert.throws(() => d.setLearningRates({ glr: NaN }), /glr must be a finite number ≥ 0/);
  d.dispose();
  teacher.dispose();
});

/** A tiny EDM2 network (8×8×3 or ×`channels`, 3 classes, like TINY) with every gain non-zero. */
function tinyEdm2(seed: number, channels = 3): EDM2Precond {
  const net = createEdm2Network({
    imgResolution: 8,
    imgChannels: channels,
    labelDim: 3,
    logvarChannels: 8,
    unet: { modelChannels: 8, channelMult: [1, 2], numBlocks: 1, attnResolutions: [4] },
  }, { seed });
  // out_gain and the logvar gain start at 0 (D = c_skip·x, u = 0): give them values.
  for (const [name, v] of net.namedParameters()) {
    if (v.size === 1) v.assign(tf.fill(v.shape, 0.7));
    else if (/gain/.test(name)) v.assign(tf.fill(v.shape, 0.7));
  }
  return net;
}

/** The largest |rms − 1| over the output rows of every MPConv weight of `net`. */
async function rowNormError(net: EDM2Precond): Promise<number> {
  let worst = 0;
  for (const m of net.mpConvs()) {
    const rms = tf.tidy(() => tf.sqrt(tf.mean(tf.square(m.weight), m.rowAxes)));
    for (const v of await rms.data()) worst = Math.max(worst, Math.abs(v - 1));
    rms.dispose();
  }
  return worst;
}

Deno.test("Distiller on an EDM2 teacher: SiDA with and without logvar, renormalised weights, flat memory", async () => {
  const { dataset } = await setup();
  const teacher = tinyEdm2(5);
  const teacher0 = await params(teacher);
  // SiDA with both gates open from the start and no augmentation (EDM2 has no embedding for it).
  const edm2Distiller = (config: Partial<DistillConfig>) =>
    new Distiller({
      teacher,
      dataset,
      config: { ...TEST_CONFIG, gWarmupNimg: 0, ganWarmupNimg: 0, augment: 0, ...config },
    });
  const logvarWeight = (net: EDM2Precond) =>
    net.namedParameters().find(([n]) => n.startsWith("logvar_linear"))![1].data();
  for (const returnLogvar of [false, true]) {
    const d = edm2Distiller({ lsd: 100, returnLogvar, seed: 4 });
    const what = `returnLogvar ${returnLogvar}`;
    const G0 = await params(d.G), fake0 = await params(d.fake);
    const lv0 = await logvarWeight(d.fake as EDM2Precond);
    const counts: number[] = [];
    for (let i = 0; i < 3; i++) {
      const s = await d.step();
      for (const v of [s.lossFake, s.lossD!, s.lossG, s.lossGGan!]) {
        assert.ok(Number.isFinite(v), `${what}: finite losses at iteration ${i}`);
      }
      if (i > 0) counts.push(tf.memory().numTensors);
    }
    assertEquals(new Set(counts).size, 1, `${what}: numTensors flat: ${counts}`);
    assert.ok(!sameArrays(await params(d.G), G0), `${what}: G changes`);
    assert.ok(!sameArrays(await params(d.fake), fake0), `${what}: the fake net changes`);
    // The logvar head trains only through the logvar-weighted fake-score loss.
    const lv = await logvarWeight(d.fake as EDM2Precond);
    // (Renormalising an already normalised row may change its last bit: compare with a margin.)
    const moved = Math.max(...Array.from(lv as Float32Array, (v, i) => Math.abs(v - lv0[i])));
    assertEquals(
      moved > 1e-4,
      returnLogvar,
      `${what}: the logvar head changes iff used (${moved})`,
    );
    for (const net of [d.G, d.fake] as EDM2Precond[]) {
      const e = await rowNormError(net);
      // normalize() divides by ε + rms with ε = 1e-4 (networks_edm2.py:28-32): rms 1 − 1e-4.
      assert.ok(e < 2e-4, `${what}: every weight row at unit rms after the steps (off by ${e})`);
    }
    d.dispose();
  }
  // With frozen weights (lr 0) the same draws give the same losses but for logvar's weighting:
  // the fake-score, SiD and adversarial terms change with it, the discriminator's BCE does not.
  const first = async (returnLogvar: boolean) => {
    const d = edm2Distiller({ lr: 0, glr: 0, returnLogvar });
    const s = await d.step();
    d.dispose();
    return s;
  };
  const [plain, weighted] = [await first(false), await first(true)];
  for (const k of ["lossFake", "lossG", "lossGGan"] as const) {
    const [a, b] = [plain[k]!, weighted[k]!];
    assert.ok(Math.abs(a - b) > 1e-3 * Math.abs(a), `${k} uses logvar: ${a} vs ${b}`);
  }
  assert.equal(weighted.lossD, plain.lossD, "the discriminator's loss does not use logvar");
  assert.ok(sameArrays(await params(teacher), teacher0), "the teacher never changes");
  // Without forced normalisation the optimizer moves the rows off unit magnitude.
  const free = edm2Distiller({ forceNormalization: false });
  await free.step();
  const drift = await rowNormError(free.fake as EDM2Precond);
  assert.ok(drift > 5e-4, `rows drift without it (${drift})`);
  free.dispose();
  // Plain SiD on EDM2 (no data needed beyond the labels) runs too.
  const sid = new Distiller({
    teacher,
    dataset,
    config: { method: "sid", batch: 4, microBatch: 2, lr: 1e-3, glr: 1e-3, returnLogvar: true },
  });
  const s = await sid.step();
  assert.ok(Number.isFinite(s.lossG) && Number.isFinite(s.lossFake), "SiD on EDM2: finite losses");
  sid.dispose();
  // Bad combinations fail before training, with one line.
  const edm = createNetwork(TINY, { seed: 1 });
  assert.throws(
    () => new Distiller({ teacher: edm, dataset, config: { ...TEST_CONFIG, returnLogvar: true } }),
    /returnLogvar needs an EDM2 teacher/,
  );
  assert.throws(
    () =>
      new Distiller({
        teacher,
        dataset,
        config: { ...TEST_CONFIG, augment: 0 },
        initGenerator: edm,
      }),
    /architecture differs/,
  );
  assert.throws(
    () => new Distiller({ teacher, dataset, config: { ...TEST_CONFIG, augment: 0.5 } }),
    /augment/,
  );
  edm.dispose();
  teacher.dispose();
});

Deno.test("Distiller: warm-up gates, what changes, frozen teacher, flat memory", async () => {
  const { dataset } = await setup();
  const teacher = createNetwork(TINY, { seed: 1 });
  const d = new Distiller({ teacher, dataset, config: TEST_CONFIG });
  const teacher0 = await params(teacher);
  let G = await params(d.G);
  let fake = await params(d.fake);
  assert(sameArrays(G, teacher0), "G starts from the teacher");
  assert(sameArrays(fake, teacher0), "the fake net starts from the teacher");
  let counts: number[] = [];
  for (let i = 0; i < 6; i++) {
    const s = await d.step();
    assertEquals(s.curNimg, 4 * i);
    assertEquals(s.nimg, 4 * (i + 1));
    // Gates (docs/distillation.md §3.6, strict ">" on the count before the iteration): G steps once
    // curNimg > 4, the GAN term enters once curNimg > 8.
    assertEquals(s.gStep, s.curNimg > 4, `gStep at ${s.curNimg}`);
    assertEquals(s.ganActive, s.curNimg > 8, `ganActive at ${s.curNimg}`);
    assert(s.lossD !== null && s.lossGGan !== null && Number.isFinite(s.lossGGan));
    assertEquals(s.keptFake, 4);
    assertEquals(s.keptG, 4);
    assert(s.weightFactor.min > 0 && s.weightFactor.max >= s.weightFactor.mean);
    const G1 = await params(d.G);
    const fake1 = await params(d.fake);
    assert(!sameArrays(fake1, fake), `the fake net changes at iteration ${i}`);
    assertEquals(!sameArrays(G1, G), s.gStep, `G changes iff the gate is open (iteration ${i})`);
    G = G1;
    fake = fake1;
    if (i >= 3) counts.push(tf.memory().numTensors); // all gates open, all Adam states exist
  }
  assert(sameArrays(await params(teacher), teacher0), "the teacher never changes");
  assertEquals(new Set(counts).size, 1, `numTensors flat over iterations: ${counts}`);
  assertEquals(d.curNimg, 24);

  // Plain SiD: G steps from iteration 0, no discriminator.
  const sid = new Distiller({
    teacher,
    dataset,
    config: { method: "sid", batch: 4, microBatch: 4, lr: 1e-3, glr: 1e-3 },
  });
  const G0 = await params(sid.G);
  counts = [];
  for (let i = 0; i < 2; i++) {
    const s = await sid.step();
    assert(s.gStep && !s.ganActive && s.lossD === null && s.lossGGan === null);
    counts.push(tf.memory().numTensors);
  }
  assert(!sameArrays(await params(sid.G), G0));
  assertEquals(counts[0], counts[1]);
  sid.dispose();

  // SiD²A: G and G_ema from the SiD generator, the fake net from the teacher (docs/distillation.md
  // §1.3).
  const sidG = createNetwork(TINY, { seed: 9 });
  const d2 = new Distiller({ teacher, dataset, config: TEST_CONFIG, initGenerator: sidG });
  assert(sameArrays(await params(d2.G), await params(sidG)));
  assert(sameArrays(await params(d2.Gema), await params(sidG)));
  assert(sameArrays(await params(d2.fake), teacher0));
  assertEquals(d2.curNimg, 0);
  const x = generate(d2.Gema, { n: 2, seed: 0 });
  assertEquals(x.shape, [2, 8, 8, 3]);
  x.dispose();
  d2.dispose();
  // initFake: the fake net from another network (a SiD run's fake score), G still from sidG.
  const sidFake = createNetwork(TINY, { seed: 11 });
  const d3 = new Distiller({
    teacher,
    dataset,
    config: TEST_CONFIG,
    initGenerator: sidG,
    initFake: sidFake,
  });
  assert(sameArrays(await params(d3.fake), await params(sidFake)));
  assert(sameArrays(await params(d3.G), await params(sidG)));
  d3.dispose();
  sidFake.dispose();
  sidG.dispose();
  d.dispose();
  teacher.dispose();
});

Deno.test("Distiller: the augmentation pipe feeds the fake net's fakes and reals, independently", async () => {
  const { dataset } = await setup();
  const teacher = createNetwork(TINY, { seed: 1 });
  // Every call of the fake net in the fake-score phase: its inputs and augmentation labels.
  const record = (d: Distiller) => {
    const calls: { flag: string; x: Float32Array; aug: Float32Array | null }[] = [];
    const fake = d.fake as EDMPrecond & { denoise: EDMPrecond["denoise"] };
    const denoise = fake.denoise.bind(fake);
    fake.denoise = ((x: tf.Tensor4D, sigma: unknown, o?: Record<string, unknown>) => {
      const a = o?.augmentLabels as tf.Tensor | undefined;
      calls.push({
        flag: String(o?.returnFlag ?? "denoised"),
        x: x.dataSync() as Float32Array,
        aug: a ? a.dataSync() as Float32Array : null,
      });
      return denoise(x, sigma as number, o);
    }) as EDMPrecond["denoise"];
    return calls;
  };
  const config = { ...TEST_CONFIG, microBatch: 4, gWarmupNimg: 0, ganWarmupNimg: 0 };
  const run = async (augment: number) => {
    const d = new Distiller({ teacher, dataset, config: { ...config, augment } });
    const calls = record(d);
    await d.fakeScorePhase(seededRandom(5)); // the first phase creates the Adam moments
    const before = tf.memory().numTensors;
    await d.fakeScorePhase(seededRandom(6));
    assertEquals(tf.memory().numTensors, before, "numTensors flat over a phase");
    d.dispose();
    return calls.slice(0, 2);
  };
  const off = await run(0);
  const on = await run(1);
  // SiDA: one encoder_decoder call on the noisy fakes, one encoder call on the noisy reals.
  assertEquals(on.map((c) => c.flag), ["encoder_decoder", "encoder"]);
  for (const c of off) assert(c.aug!.every((v) => v === 0), `p = 0: zero labels (${c.flag})`);
  const rows = (a: Float32Array) => Array.from({ length: 4 }, (_, i) => a.slice(9 * i, 9 * i + 9));
  for (const c of on) {
    // p = 1: scaling, rotation, anisotropy and translation fire on every image, so the
    // labels' entries 2..8 are not all zero in any row; entries 0 and 1 are 0/1 flip flags.
    for (const r of rows(c.aug!)) {
      assert(r[0] === 0 || r[0] === 1, `x-flip flag ${r[0]}`);
      assert(r[1] === 0 || r[1] === 1, `y-flip flag ${r[1]}`);
      assert(r.slice(2).some((v) => v !== 0), `p = 1: transform labels in ${c.flag}`);
    }
  }
  assert(!on[0].aug!.every((v, i) => v === on[1].aug![i]), "fakes and reals: independent draws");
  // The fake net sees other inputs under augmentation (same seed, so same G output and noise).
  assert(!on[0].x.every((v, i) => v === off[0].x[i]), "the noisy fakes are augmented");
  assert(!on[1].x.every((v, i) => v === off[1].x[i]), "the noisy reals are augmented");
  teacher.dispose();
});

function runOptions(f: Fixture, out: string, durationKimg: number): DistillationOptions {
  return {
    method: "sida",
    teacher: f.teacherPath,
    data: f.dataPath,
    out,
    preset: "cifar10-cond",
    overrides: { ...TEST_CONFIG, microBatch: 4, gWarmupNimg: 4, ganWarmupNimg: 8, dropout: 0.1 },
    durationKimg,
    tickKimg: 0.008,
    snapKimg: 0.016,
    dumpKimg: 0.008,
    backend: TEST_BACKEND,
    quiet: true,
  };
}

/** The CLI flags equivalent to {@linkcode runOptions}. */
function runFlags(f: Fixture, out: string, durationKimg: number): string[] {
  return [
    ...["--teacher", f.teacherPath, "--data", f.dataPath, "--out", out],
    ...["--preset", "cifar10-cond", "--batch", "4", "--micro-batch", "4", "--lr", "1e-3"],
    ...["--glr", "1e-3", "--seed", "3", "--g-warmup-kimg", "0.004", "--gan-warmup-kimg", "0.008"],
    ...["--dropout", "0.1", "--augment", "0.5", "--duration", String(durationKimg)],
    ...["--tick", "0.008", "--snap", "0.016", "--dump", "0.008", "--backend", TEST_BACKEND],
  ];
}

async function fileBytes(path: string): Promise<Uint8Array> {
  return await Deno.readFile(path);
}

async function listing(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

Deno.test("runs: a killed run resumes bit-identically and continues like an uninterrupted one", async () => {
  const f = await setup();
  const total = 0.024; // 6 iterations of 4 images
  // Uninterrupted reference run.
  const dirA = join(f.dir, "run-a");
  const a = await runDistillation(runOptions(f, dirA, total));
  assertEquals(a.curNimg, 24);
  assertEquals(a.resumed, false);
  const files = await listing(dirA);
  assertEquals(files.filter((n) => n.startsWith("training-state-")), [
    "training-state-000000.024.safetensors",
  ]);
  assert(files.includes("network-snapshot-000000.016.safetensors"));
  assert(files.includes("network-snapshot-000000.024.safetensors"));
  const log = (await Deno.readTextFile(join(dirA, "log.jsonl"))).trim().split("\n");
  assert(log.length >= 3, `log.jsonl has ${log.length} lines`);
  for (const line of log) assert(Number.isFinite(JSON.parse(line).lossFake));

  // Run B in a subprocess, killed (SIGKILL) as soon as its first training state exists. Its
  // duration (20 images) keeps every state it can write (8, 16, 20) short of the total.
  const dirB = join(f.dir, "run-b");
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "tasks/sida.ts"), ...runFlags(f, dirB, 0.02)],
    stdout: "null",
    stderr: "null",
  }).spawn();
  let saved: string | null = null;
  for (let i = 0; i < 1200 && !saved; i++) {
    await new Promise((r) => setTimeout(r, 100));
    saved = await findLatestState(dirB);
  }
  try {
    child.kill("SIGKILL");
  } catch {
    // already finished
  }
  await child.status;
  assert(saved, "the subprocess wrote a training state");
  saved = (await findLatestState(dirB))!; // the latest complete one after the kill
  const onDisk = await readTrainingState(saved);
  assert(onDisk.state.curNimg < 24, `killed at ${onDisk.state.curNimg} images`);

  // The state loads bit-identically (networks, both Adam states, counters, sampler).
  const teacher = createNetwork(TINY, { seed: 1 });
  const probe = new Distiller({
    teacher,
    dataset: f.dataset,
    config: runOptions(f, dirB, total).overrides!,
  });
  probe.load(onDisk.state);
  const again = await probe.state();
  assertSameTensors(again.tensors, onDisk.state.tensors, "reloaded state");
  assertEquals(again.curNimg, onDisk.state.curNimg);
  assertEquals(again.iteration, onDisk.state.iteration);
  assertEquals(again.sampler, onDisk.state.sampler);
  probe.dispose();
  teacher.dispose();

  // Resume to the same total: identical to the uninterrupted run.
  const b = await runDistillation(runOptions(f, dirB, total));
  assert(b.resumed);
  assertEquals(b.curNimg, 24);
  assertEquals(b.iterations, (24 - onDisk.state.curNimg) / 4);
  const finalA = await readTrainingState(join(dirA, "training-state-000000.024.safetensors"));
  const finalB = await readTrainingState(join(dirB, "training-state-000000.024.safetensors"));
  assertSameTensors(finalB.state.tensors, finalA.state.tensors, "resumed vs uninterrupted");
  assertEquals(finalB.state.sampler, finalA.state.sampler);
  assertEquals(finalB.state.iteration, finalA.state.iteration);
  assertEquals(
    (await listing(dirB)).filter((n) => n.startsWith("training-state-")),
    ["training-state-000000.024.safetensors"],
  );
});

async function runTask(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "tasks/sida.ts"), ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("tasks: bad input gives one error line and leaves the run folder untouched", async () => {
  const f = await setup();
  const dir = join(f.dir, "run-errors");
  await runDistillation(runOptions(f, dir, 0.008));
  const before = await listing(dir);
  const statePath = (await findLatestState(dir))!;
  const stateBytes = await fileBytes(statePath);
  const logBytes = await fileBytes(join(dir, "log.jsonl"));

  const corrupt = join(f.dir, "corrupt.zip");
  await Deno.writeFile(corrupt, new TextEncoder().encode("PK\x03\x04 this is not a zip"));
  const wrongRes = join(f.dir, "data16.zip");
  await writeImageZip(wrongRes, tinyImageDataset(8, 16));
  const unlabelled = join(f.dir, "unlabelled.zip");
  await writeImageZip(unlabelled, tinyImageDataset(8, 8, false));
  const base = runFlags(f, dir, 0.016);
  const replace = (flag: string, value: string) => {
    const a = [...base];
    a[a.indexOf(flag) + 1] = value;
    return a;
  };
  const cases: [string, string[], RegExp][] = [
    ["not a number", replace("--batch", "abc"), /--batch must be a number/],
    ["unknown flag", [...base, "--bogus", "1"], /bogus/],
    ["missing teacher", replace("--teacher", join(f.dir, "nope.safetensors")), /not found/],
    ["corrupt zip", replace("--data", corrupt), /corrupt\.zip/],
    ["wrong resolution", replace("--data", wrongRes), /16x16x3/],
    ["unlabelled data", replace("--data", unlabelled), /no labels/],
    ["unknown preset", replace("--preset", "cifar11"), /unknown preset/],
    ["batch/micro-batch", replace("--micro-batch", "3"), /multiple/],
    ["incompatible run", replace("--batch", "8"), /cannot be continued.*batch/],
  ];
  const results = await Promise.all(cases.map(([, args]) => runTask(args)));
  results.forEach(({ code, stderr }, i) => {
    const [name, , pattern] = cases[i];
    const lines = stderr.trimEnd().split("\n");
    assert.notEqual(code, 0, `${name}: exit code`);
    assertEquals(lines.length, 1, `${name}: one stderr line, got ${JSON.stringify(stderr)}`);
    assert(lines[0].startsWith("error: "), `${name}: ${lines[0]}`);
    assert(pattern.test(lines[0]), `${name}: ${lines[0]} should match ${pattern}`);
  });
  assertEquals(await listing(dir), before);
  assertEquals(await fileBytes(statePath), stateBytes);
  assertEquals(await fileBytes(join(dir, "log.jsonl")), logBytes);
});

Deno.test("tasks: Ctrl-C on `deno task sida` writes a loadable state and exits 130", async () => {
  const f = await setup();
  const dir = join(f.dir, "run-sigint");
  const child = new Deno.Command(Deno.execPath(), {
    args: ["task", "sida", ...runFlags(f, dir, 10)],
    cwd: ROOT,
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let text = "";
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  while (!/tick 0 /.test(text)) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  assert(/tick 0 /.test(text), `training started: ${text}`);
  child.kill("SIGINT");
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  const status = await child.status;
  assertEquals(status.code, 130, text);
  assert(/interrupted: state written/.test(text), text);
  const path = await findLatestState(dir);
  assert(path, "a training state exists");
  const saved = await readTrainingState(path);
  assert(saved.state.curNimg >= 4 && saved.state.curNimg < 10_000);
  const teacher = createNetwork(TINY, { seed: 1 });
  const d = new Distiller({
    teacher,
    dataset: f.dataset,
    config: runOptions(f, dir, 10).overrides!,
  });
  d.load(saved.state);
  assertEquals(d.curNimg, saved.state.curNimg);
  d.dispose();
  teacher.dispose();
});

Deno.test("non-finite losses stop a run after the limit and keep its last good state", async () => {
  const f = await setup();
  const dir = join(f.dir, "run-nonfinite");
  // Iterations 0-2 are real; from iteration 3 on, step() reports a NaN loss (as a teacher gone
  // NaN would). States are due after every 2 iterations (8 images of 4).
  const step = Distiller.prototype.step;
  let calls = 0;
  Distiller.prototype.step = async function (this: Distiller) {
    const stats = await step.call(this);
    return ++calls > 3 ? { ...stats, lossG: NaN } : stats;
  };
  let error: Error | undefined;
  try {
    await runDistillation({ ...runOptions(f, dir, 0.04), nonFiniteLimit: 3 });
  } catch (e) {
    error = e as Error;
  } finally {
    Distiller.prototype.step = step;
  }
  assert(error instanceof NonFiniteTrainingError, `got ${error}`);
  assert.match(error.message, /3 consecutive iterations with non-finite losses since 0\.016 kimg/);
  assert.match(error.message, /last good state: .*training-state-000000\.008\.safetensors/);
  assertEquals(calls, 6);
  // The state of iteration 2 (8 images) is the last: iteration 4's (16 images) was not written.
  const files = await listing(dir);
  assertEquals(files.filter((n) => n.startsWith("training-state-")), [
    "training-state-000000.008.safetensors",
  ]);
  assertEquals(files.filter((n) => n.startsWith("network-snapshot-")), []);
  const saved = await readTrainingState(join(dir, "training-state-000000.008.safetensors"));
  assertEquals(saved.state.curNimg, 8);
});

Deno.test("a NaN teacher is refused; with --allow-nonfinite its run stops with nothing written", async () => {
  const f = await setup();
  const net = createNetwork(TINY, { seed: 1 });
  const nanPath = join(f.dir, "nan-teacher.safetensors");
  try {
    const state = await net.stateDict();
    const name = "model.enc.8x8_conv.weight";
    (state.get(name)!.data as Float32Array).fill(NaN);
    await writeSafetensors(nanPath, state, networkMetadata(net));
  } finally {
    net.dispose();
  }
  const dir = join(f.dir, "run-nan-teacher");
  const flags = runFlags(f, dir, 0.04);
  flags[flags.indexOf("--teacher") + 1] = nanPath;
  const refused = await runTask(flags);
  assert.notEqual(refused.code, 0);
  assert.match(
    refused.stderr,
    /^error: .*nan-teacher\.safetensors: \d+ non-finite weights .* model\.enc\.8x8_conv\.weight .*--allow-nonfinite.*\n$/,
  );
  await assert.rejects(Deno.stat(dir), Deno.errors.NotFound);
  const stopped = await runTask([...flags, "--allow-nonfinite"]);
  assert.notEqual(stopped.code, 0);
  const last = stopped.stderr.trimEnd().split("\n").at(-1)!;
  assert.match(last, /^error: distillation stopped: 5 consecutive iterations with non-finite/);
  assert.match(last, /no state had been written yet/);
  const files = await listing(dir);
  assertEquals(files.filter((n) => /^(training-state|network-snapshot)-/.test(n)), []);
});

Deno.test("runDistillation on an EDM2 teacher file: SiDA with the imagenet512 preset, EDM2 snapshots, resume", async () => {
  const f = await setup();
  await withTempDir("sida-edm2-run-", async (dir) => {
    const teacher = tinyEdm2(5);
    const teacherPath = join(dir, "teacher-edm2.safetensors");
    await saveEdm2Network(teacher, teacherPath);
    teacher.dispose();
    const out = join(dir, "run");
    const opts = (durationKimg: number): DistillationOptions => ({
      method: "sida",
      teacher: teacherPath,
      data: f.dataPath,
      out,
      preset: "imagenet512-xs",
      overrides: { batch: 4, microBatch: 2, gWarmupNimg: 0, ganWarmupNimg: 0, lr: 1e-3, glr: 1e-3 },
      durationKimg,
      tickKimg: 0.008,
      snapKimg: 0.008,
      dumpKimg: 0.008,
      backend: TEST_BACKEND,
      quiet: true,
    });
    const r1 = await runDistillation(opts(0.008));
    assertEquals([r1.curNimg, r1.resumed], [8, false]);
    const snap = await loadDenoisingNetwork(r1.snapshotPath!);
    assert.ok(snap instanceof EDM2Precond, "the snapshot is an EDM2 network");
    assert.ok(await rowNormError(snap) < 2e-4, "the snapshot's rows are normalised");
    // The eval and generate tasks' sampling loop takes the EDM2 generator as it is.
    let images = 0;
    for await (const b of generateBatches(snap, { num: 5, batch: 2, seed: 1 })) {
      assertEquals(b.pixels.length, b.n * 8 * 8 * 3);
      assert.ok(b.labels.every((l) => l >= 0 && l < 3), "conditional: a class per image");
      images += b.n;
    }
    assertEquals(images, 5);
    snap.dispose();
    const saved = await readTrainingState(r1.statePath!);
    const c = saved.state.config;
    // The preset's EDM2 settings reach the run (overrides aside).
    assertEquals([c.pMean, c.pStd, c.lsd, c.returnLogvar, c.forceNormalization], [
      -0.4,
      1.0,
      100,
      true,
      true,
    ]);
    assertEquals(c.fakeGradClip, null);
    const r2 = await runDistillation(opts(0.016));
    assertEquals([r2.curNimg, r2.resumed], [16, true]);
  });
});

Deno.test("data-free SiD from a labels-only dataset.json (EDM2 teacher); SiDA refuses it", async () => {
  await setupBackend();
  await withTempDir("sida-labels-", async (dir) => {
    const teacher = tinyEdm2(6);
    const teacherPath = join(dir, "teacher.safetensors");
    await saveEdm2Network(teacher, teacherPath);
    teacher.dispose();
    const labelsPath = join(dir, "dataset.json");
    // Out of name order on purpose: the loader sorts by file name, as the zip loader does.
    const entries = [["00000/img00000002.png", 2], ["00000/img00000000.png", 0]];
    entries.push(["00000/img00000001.png", 1]);
    await Deno.writeTextFile(labelsPath, JSON.stringify({ labels: entries }));
    const ds = await loadLabelsJson(labelsPath, { resolution: 8, channels: 3 });
    assertEquals([ds.size, ds.labelDim, ds.label(0), ds.label(2)], [3, 3, 0, 2]);
    assert.ok(isLabelsOnly(ds));
    assert.throws(() => ds.image(0), /labels-only data hold no images/);
    const opts = (method: "sid" | "sida"): DistillationOptions => ({
      method,
      teacher: teacherPath,
      data: labelsPath,
      out: join(dir, method),
      preset: "imagenet512-xs",
      overrides: { batch: 4, microBatch: 2, lr: 1e-3, glr: 1e-3 },
      durationKimg: 0.008,
      tickKimg: 0.008,
      snapKimg: 0.008,
      dumpKimg: 0.008,
      backend: TEST_BACKEND,
      quiet: true,
    });
    const r = await runDistillation(opts("sid"));
    assertEquals(r.curNimg, 8);
    const snap = await loadDenoisingNetwork(r.snapshotPath!);
    assert.ok(snap instanceof EDM2Precond && snap.labelDim === 3);
    await assert.rejects(() => runDistillation(opts("sida")), /SiDA needs images/);
    assert.throws(
      () =>
        new Distiller({
          teacher: snap,
          dataset: ds,
          config: { method: "sida", batch: 4, microBatch: 2 },
        }),
      /SiDA needs images/,
    );
    snap.dispose();
    const bad = join(dir, "null.json");
    await Deno.writeTextFile(bad, JSON.stringify({ labels: null }));
    await assert.rejects(() => loadLabelsJson(bad, { resolution: 8, channels: 3 }), /is null/);
  });
});

Deno.test("EDM2 latent data: zip round trip, (μ + σ·ε)·scale + bias, SiDA in latent space", async () => {
  await setupBackend();
  await withTempDir("sida-latents-", async (dir) => {
    // 5 items of [8, 8, 8] (mean and std of 4 channels at 8×8), 3 classes.
    const [n, r, c] = [5, 8, 4];
    const block = 2 * c * r * r;
    const data = new Float32Array(n * block);
    const rng = seededRandom(7);
    data.set(Float32Array.from(rng.normal(data.length), (v, i) => {
      const std = (i % block) >= c * r * r; // the second half of each block holds σ
      return std ? 0.1 + Math.abs(v) * 0.2 : 3 * v;
    }));
    const source = new LatentDataset("toy", r, c, data, Int32Array.from([0, 1, 2, 1, 0]), 3);
    const zip = join(dir, "latents.zip");
    await writeLatentZip(zip, source);
    const ds = await loadImageZip(zip);
    assert.ok(isLatentDataset(ds), "a zip of .npy latents loads as latent data");
    assertEquals([ds.size, ds.resolution, ds.channels, ds.labelDim, ds.label(3)], [5, 8, 4, 3, 1]);
    assert.ok(bitEqual(ds.data, data), "the means and stds round-trip exactly");
    assert.throws(() => ds.image(0), /hold no uint8 images/);
    // ε = 0 gives μ·scale + bias; scale = 0.5 / raw_std, bias = −raw_mean·scale (float32).
    const zero = ds.sample([2], (k) => new Float64Array(k));
    for (let ch = 0; ch < c; ch++) {
      const scale = Math.fround(0.5 / Math.fround(LATENT_RAW_STD[ch]));
      const bias = Math.fround(-Math.fround(Math.fround(LATENT_RAW_MEAN[ch]) * scale));
      for (const p of [0, 37, 63]) {
        const mu = data[2 * block + ch * r * r + p];
        const want = Math.fround(Math.fround(mu * scale) + bias);
        assertEquals(zero[p * c + ch], want, `channel ${ch}, pixel ${p}`);
      }
    }
    // ε = 1 adds σ·scale.
    const one = ds.sample([2], (k) => new Float64Array(k).fill(1));
    const sigma = data[2 * block + c * r * r + 5];
    assert.ok(Math.abs(one[5 * c] - zero[5 * c] - sigma * ds.scale[0]) < 1e-6);
    // SiDA on a 4-channel EDM2 teacher with these latents as its real data.
    const teacher = tinyEdm2(3, 4);
    const d = new Distiller({
      teacher,
      dataset: ds,
      config: { ...TEST_CONFIG, gWarmupNimg: 0, ganWarmupNimg: 0, augment: 0, returnLogvar: true },
    });
    const counts: number[] = [];
    for (let i = 0; i < 3; i++) {
      const st = await d.step();
      assert.ok(Number.isFinite(st.lossD!) && Number.isFinite(st.lossG), `finite losses ${i}`);
      if (i > 0) counts.push(tf.memory().numTensors);
    }
    assertEquals(new Set(counts).size, 1, `numTensors flat: ${counts}`);
    d.dispose();
    teacher.dispose();
    // Latents that are not [2C, R, R], or of another channel count, are refused by name.
    const odd = join(dir, "odd.zip");
    await writeLatentZip(
      odd,
      new LatentDataset("odd", 4, 4, new Float32Array(2 * 4 * 16), null, 0),
    );
    assert.ok(isLatentDataset(await loadImageZip(odd)));
    assert.throws(
      () => new LatentDataset("three", 4, 3, new Float32Array(2 * 3 * 16), null, 0),
      /3 channels; the SD VAE's scaling needs 4/,
    );
  });
});

Deno.test("imagenet512 presets follow the EDM2 scripts; guessPreset sizes an EDM2 teacher by width", () => {
  const xs = distillPreset("imagenet512-xs", "sida");
  assertEquals([xs.config.batch, xs.config.microBatch, xs.config.lr, xs.config.lsd], [
    2048,
    64,
    5e-5,
    100,
  ]);
  assertEquals(xs.durationKimg, 200_000);
  // S: SiDA and SiD²A without forced normalisation and logvar; SiD with both.
  const s = distillPreset("imagenet512-s", "sida", { sid2a: true });
  assertEquals([s.config.returnLogvar, s.config.forceNormalization, s.durationKimg], [
    false,
    false,
    80_000,
  ]);
  assertEquals(distillPreset("imagenet512-s", "sid").config.returnLogvar, true);
  assertEquals(distillPreset("imagenet512-m", "sida", { sid2a: true }).config.lsg, 50);
  assertEquals(distillPreset("imagenet512-xxl", "sid").config.microBatch, 2);
  const edm2 = (modelChannels: number, imgChannels = 4) => ({
    imgResolution: 64,
    imgChannels,
    labelDim: 1000,
    config: { precond: "EDM2Precond", unet: { modelChannels } },
  });
  assertEquals(guessPreset(edm2(128)), "imagenet512-xs");
  assertEquals(guessPreset(edm2(448)), "imagenet512-xxl");
  assertEquals(guessPreset(edm2(100)), undefined);
  assertEquals(guessPreset(edm2(128, 3)), undefined, "pixel-space EDM2 networks have no preset");
  assertEquals(guessPreset({ imgResolution: 64, imgChannels: 3, labelDim: 1000 }), "imagenet64");
});

Deno.test("mnist preset: SiD's G_ema half-life is 5 kimg ramped over half the images seen; SiDA keeps 10 kimg at 5 %; SiD²A 3 kimg fixed at batch 128", () => {
  const sid = resolveDistillConfig(distillPreset("mnist", "sid").config);
  const sida = resolveDistillConfig(distillPreset("mnist", "sida").config);
  const sid2a = distillPreset("mnist", "sida", { sid2a: true });
  const s2 = resolveDistillConfig(sid2a.config);
  assertEquals([sid.emaKimg, sid.emaRampup], [5, 0.5]);
  assertEquals([sida.emaKimg, sida.emaRampup, sida.batch], [10, EMA_RAMPUP_RATIO, 64]);
  assertEquals([sida.gWarmupNimg, sida.ganWarmupNimg], [5000, 10000]);
  assertEquals([s2.emaKimg, s2.emaRampup, s2.batch, s2.microBatch], [3, null, 128, 32]);
  assertEquals([s2.gWarmupNimg, s2.ganWarmupNimg, sid2a.fixedWarmups], [512, 1024, true]);
  assertEquals(distillPreset("mnist", "sida").fixedWarmups, undefined);
  // SiD²A's G_ema: the same β at every step, 0.5 per 3 kimg.
  const b2 = (n: number) =>
    emaBeta({ curNimg: n, batchSize: 128, halflifeKimg: s2.emaKimg, rampupRatio: s2.emaRampup });
  assert.ok(Math.abs(b2(128) - 0.5 ** (128 / 3000)) < 1e-15);
  assertEquals(b2(128), b2(13_824));
  // At the default budget's end (5.12 kimg) the half-life is 2.56 kimg; from 10 kimg on, 5 kimg.
  const beta = (n: number) =>
    emaBeta({ curNimg: n, batchSize: 64, halflifeKimg: sid.emaKimg, rampupRatio: sid.emaRampup });
  assert.ok(Math.abs(beta(5120) - 0.5 ** (64 / 2560)) < 1e-15);
  assert.ok(Math.abs(beta(20_000) - 0.5 ** (64 / 5000)) < 1e-15);
});

Deno.test("--return-logvar and --force-normalization take 0 or 1, as the reference's flags; --ema-rampup R|none", () => {
  const parse = (args: string[]) =>
    distillOverrides(parseFlags(args, { string: distillFlagNames("sida") }, "usage"), "sida");
  assertEquals(parse(["--return-logvar", "1", "--force-normalization", "0"]), {
    returnLogvar: true,
    forceNormalization: false,
  });
  assert.throws(() => parse(["--return-logvar", "yes"]), /--return-logvar must be 0 or 1/);
  // EDM's ema_rampup_ratio: a ratio, or none for a fixed half-life.
  assertEquals(parse(["--ema", "0.5", "--ema-rampup", "none"]), { emaKimg: 0.5, emaRampup: null });
  assertEquals(parse(["--ema-rampup", "0.1"]), { emaRampup: 0.1 });
  assert.throws(() => parse(["--ema-rampup", "off"]), /--ema-rampup/);
});

Deno.test("distill tests: remove the temporary folder", async () => {
  if (!fixture) return;
  await Deno.remove((await fixture).dir, { recursive: true });
});
