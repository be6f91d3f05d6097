/**
 * The run driver of `lib/train/driver.ts`, shared by teacher training and distillation:
 *
 * - on a synthetic trainer: the tick / snapshot / state cadence, Ctrl-C (an aborted signal)
 *   writing a state, resume continuing the counters and the elapsed time, a run that cannot be
 *   continued refused, `requireResume` on an empty folder refused;
 * - a teacher run and a SiD²A-style distillation run, each interrupted by the signal after its
 *   first iteration and resumed through the same driver, end bit-identical to uninterrupted runs.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../lib/deps.ts";
import { createImageDataset, type ImageDataset, writeImageZip } from "../lib/data/dataset.ts";
import type { HostTensor } from "../lib/io/host_tensor.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { createNetwork, saveNetwork } from "../lib/nets/network.ts";
import type { EDMPrecond } from "../lib/nets/precond.ts";
import { UsageError } from "../lib/runtime/cli.ts";
import { readTeacherState, trainTeacher } from "../lib/diffusion/teacher_training.ts";
import { readTrainingState } from "../lib/distill/run.ts";
import { runDistillation } from "../lib/distill/train.ts";
import {
  runTraining,
  type Trainer,
  type TrainerState,
  type TrainingKind,
} from "../lib/train/driver.ts";
import { findLatestState, readStateFile } from "../lib/train/run_folder.ts";
import { setupBackend, tinySongUNet } from "./helpers.ts";

let tmp: Promise<string> | undefined;
const tempDir = () => tmp ??= Deno.makeTempDir({ prefix: "sida-driver-test-" });

async function listing(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

/** A trainer whose "weights" are one number: w ← w + curNimg/1000 per iteration. */
class CounterTrainer implements Trainer<{ loss: number; nimg: number }, TrainerState> {
  curNimg = 0;
  iteration = 0;
  w = 0;
  readonly batch = 4;
  constructor(readonly net: EDMPrecond) {}
  step() {
    this.w += this.curNimg / 1000;
    this.curNimg += this.batch;
    this.iteration++;
    return Promise.resolve({ loss: this.w, nimg: this.curNimg });
  }
  state(): Promise<TrainerState> {
    const tensors = new Map<string, HostTensor>([
      ["w", { dtype: "float64", shape: [], data: new Float64Array([this.w]) }],
    ]);
    return Promise.resolve({ curNimg: this.curNimg, iteration: this.iteration, tensors });
  }
  load(s: TrainerState): void {
    this.curNimg = s.curNimg;
    this.iteration = s.iteration;
    this.w = (s.tensors.get("w")!.data as Float64Array)[0];
  }
  snapshotNetwork(): EDMPrecond {
    return this.net;
  }
  dispose(): void {}
}

type Rec = { tick: number; nimg: number; imgPerSec: number; loss: number; iterations: number };

function counterKind(
  t: CounterTrainer,
): TrainingKind<{ loss: number; nimg: number }, TrainerState, { seed: number }, Rec> {
  return {
    task: "counter",
    what: "counting",
    format: "test-counter-state/1",
    stateMetadata: () => ({ note: "counter" }),
    decodeState: (f) => ({
      curNimg: f.counters.curNimg,
      iteration: f.counters.iteration,
      tensors: f.tensors,
    }),
    incompatibility: (saved, current) =>
      saved.seed === current.seed ? null : `it has seed ${saved.seed}`,
    health: (s) => ({ loss: s.loss }),
    seconds: () => 0.001,
    tickRecord: (stats, info) => ({
      tick: info.tick,
      nimg: t.curNimg,
      imgPerSec: 1,
      loss: stats[stats.length - 1].loss,
      iterations: stats.length,
    }),
    detail: (x) => `loss ${x.loss}`,
    snapshotMetadata: () => ({ method: "counter" }),
    startMessage: () => "start",
    lengthFlag: "--kimg",
  };
}

Deno.test("run driver: cadence, interrupt, resume, refusals (synthetic trainer)", async () => {
  await setupBackend();
  const dir = join(await tempDir(), "counter");
  const net = createNetwork(tinySongUNet({ imgResolution: 8, imgChannels: 1 }), { seed: 0 });
  const cadence = { durationKimg: 0.04, tickKimg: 0.008, snapKimg: 0.02, dumpKimg: 0.012 };
  try {
    // Uninterrupted reference: w after 10 iterations = Σ_{k<10} 4k/1000.
    const ref = new CounterTrainer(net);
    const r0 = await runTraining({
      trainer: ref,
      kind: counterKind(ref),
      run: { seed: 1 },
      out: join(dir, "ref"),
      ...cadence,
      quiet: true,
    });
    assert.equal(r0.iterations, 10);
    assert.ok(Math.abs(ref.w - 0.18) < 1e-12);
    // Ticks after iteration 1, then every 2 iterations (8 images), and at the end.
    const log = (await Deno.readTextFile(join(dir, "ref", "log.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l));
    assert.deepEqual(log.map((r) => r.nimg), [4, 12, 20, 28, 36, 40]);
    assert.deepEqual(log.map((r) => r.tick), [0, 1, 2, 3, 4, 5]);
    assert.ok(log.every((r) => Number.isInteger(r.memory.numTensors)));
    // Snapshots every 20 images and at the end; only the latest state is kept.
    assert.deepEqual(await listing(join(dir, "ref")), [
      "log.jsonl",
      "network-snapshot-000000.020.safetensors",
      "network-snapshot-000000.040.safetensors",
      "training-state-000000.040.safetensors",
    ]);
    const final = await readStateFile<{ seed: number }>(
      r0.statePath!,
      "test-counter-state/1",
    );
    assert.deepEqual(final.run, { seed: 1 });
    assert.equal(final.counters.curNimg, 40);
    assert.equal(final.counters.iteration, 10);
    assert.equal(final.metadata.note, "counter");

    // Interrupted after its third iteration: a state at 12 images, interrupted.
    const out = join(dir, "b");
    const ac = new AbortController();
    const a = new CounterTrainer(net);
    const r1 = await runTraining({
      trainer: a,
      kind: counterKind(a),
      run: { seed: 1 },
      out,
      ...cadence,
      signal: ac.signal,
      onIteration: () => {
        if (a.iteration === 3) ac.abort();
      },
      quiet: true,
    });
    assert.equal(r1.interrupted, true);
    assert.equal(r1.curNimg, 12);
    assert.match(r1.statePath!, /training-state-000000\.012\.safetensors$/);
    const elapsed1 = (await readStateFile(r1.statePath!, "test-counter-state/1")).counters
      .elapsedSec;

    // Another run's settings: refused, nothing written.
    const before = await listing(out);
    const c = new CounterTrainer(net);
    await assert.rejects(
      runTraining({ trainer: c, kind: counterKind(c), run: { seed: 2 }, out, ...cadence }),
      (e: Error) => e instanceof UsageError && /cannot be continued: it has seed 1/.test(e.message),
    );
    assert.deepEqual(await listing(out), before);

    // Resumed: continues from 12 images to the same end as the reference.
    const b = new CounterTrainer(net);
    const r2 = await runTraining({
      trainer: b,
      kind: counterKind(b),
      run: { seed: 1 },
      out,
      ...cadence,
      quiet: true,
    });
    assert.equal(r2.resumed, true);
    assert.equal(r2.iterations, 7);
    assert.equal(r2.resumedCounters?.curNimg, 12);
    assert.equal(b.w, ref.w);
    const resumedState = await readStateFile(r2.statePath!, "test-counter-state/1");
    assert.equal(resumedState.counters.iteration, 10);
    assert.ok(resumedState.counters.elapsedSec >= elapsed1);

    // --resume on a folder without a state.
    const d = new CounterTrainer(net);
    await assert.rejects(
      runTraining({
        trainer: d,
        kind: counterKind(d),
        run: { seed: 1 },
        out: join(dir, "empty"),
        ...cadence,
        requireResume: true,
      }),
      /--resume: .* holds no training state/,
    );
  } finally {
    net.dispose();
  }
});

function images(n: number, channels: number): ImageDataset {
  const r = 8;
  const pixels = new Uint8Array(n * r * r * channels);
  for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 37 + (i >> 5) * 11) % 256;
  return createImageDataset({
    name: "driver",
    resolution: r,
    channels,
    pixels,
    labels: Array.from({ length: n }, (_, i) => i % 3),
  });
}

function assertSameTensors(a: Map<string, HostTensor>, b: Map<string, HostTensor>, what: string) {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${what}: names`);
  for (const [k, t] of a) {
    const u = b.get(k)!;
    const x = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    const y = new Uint8Array(u.data.buffer, u.data.byteOffset, u.data.byteLength);
    assert.ok(x.length === y.length && x.every((v, i) => v === y[i]), `${what}: ${k}`);
  }
}

Deno.test("run driver: a teacher run and a distillation run, interrupted and resumed, end bit-identical", async () => {
  await setupBackend();
  const dir = join(await tempDir(), "real");
  const before = tf.memory().numTensors;

  // ---- teacher ----
  const teacherOpts = {
    network: tinySongUNet({ imgResolution: 8, imgChannels: 1, labelDim: 3 }),
    dropout: 0.1,
    data: images(24, 1),
    config: { batch: 8, microBatch: 4, lr: 1e-3, lrRampupKimg: 0.008, seed: 2 },
    kimg: 0.024,
    tickKimg: 0.008,
    snapKimg: 0.024,
    dumpKimg: 0.024,
    quiet: true,
  };
  const tA = await trainTeacher({ ...teacherOpts, out: join(dir, "teacher-a") });
  const stop = new AbortController();
  stop.abort(); // Ctrl-C before the run: it stops after its first iteration, writing a state
  const tB1 = await trainTeacher({
    ...teacherOpts,
    out: join(dir, "teacher-b"),
    signal: stop.signal,
  });
  assert.equal(tB1.interrupted, true);
  assert.equal(tB1.curNimg, 8);
  const tB2 = await trainTeacher({ ...teacherOpts, out: join(dir, "teacher-b") });
  assert.equal(tB2.resumed, true);
  assert.equal(tB2.iterations, 2);
  const ta = await readTeacherState(tA.statePath!);
  const tb = await readTeacherState(tB2.statePath!);
  assertSameTensors(tb.state.tensors, ta.state.tensors, "teacher resumed vs uninterrupted");
  assert.deepEqual(tb.state.sampler, ta.state.sampler);
  assert.equal(tb.loss, ta.loss);

  // ---- distillation (SiDA with augmentation, gates crossed during the run) ----
  const teacherPath = join(dir, "teacher.safetensors");
  const teacher = createNetwork(
    tinySongUNet({ imgResolution: 8, imgChannels: 3, labelDim: 3, augmentDim: 9 }),
    { seed: 1 },
  );
  await saveNetwork(teacher, teacherPath);
  teacher.dispose();
  const data = join(dir, "data.zip");
  await writeImageZip(data, images(32, 3));
  const distillOpts = {
    method: "sida" as const,
    teacher: teacherPath,
    data,
    preset: "mnist",
    overrides: {
      batch: 4,
      microBatch: 2,
      lr: 1e-3,
      glr: 1e-3,
      seed: 3,
      augment: 0.5,
      gWarmupNimg: 0,
      ganWarmupNimg: 4,
      dropout: 0.1,
    },
    durationKimg: 0.012,
    tickKimg: 0.004,
    snapKimg: 0.012,
    dumpKimg: 0.012,
    quiet: true,
  };
  const dA = await runDistillation({ ...distillOpts, out: join(dir, "sida-a") });
  const dB1 = await runDistillation({
    ...distillOpts,
    out: join(dir, "sida-b"),
    signal: stop.signal,
  });
  assert.equal(dB1.interrupted, true);
  assert.equal(dB1.curNimg, 4);
  const dB2 = await runDistillation({ ...distillOpts, out: join(dir, "sida-b") });
  assert.equal(dB2.resumed, true);
  assert.equal(dB2.iterations, 2);
  const da = await readTrainingState(dA.statePath!);
  const db = await readTrainingState(dB2.statePath!);
  assertSameTensors(db.state.tensors, da.state.tensors, "distillation resumed vs uninterrupted");
  assert.deepEqual(db.state.sampler, da.state.sampler);

  // Both folders were written by the one driver: same file layout and counters.
  for (const out of ["teacher-b", "sida-b"]) {
    const state = (await findLatestState(join(dir, out)))!;
    const { metadata } = await readSafetensors(state);
    assert.deepEqual(Object.keys(JSON.parse(metadata.counters)).slice(0, 3), [
      "curNimg",
      "iteration",
      "elapsedSec",
    ]);
    assert.ok((await listing(join(dir, out))).includes("log.jsonl"));
  }
  assert.equal(tf.memory().numTensors, before, "no tensor left behind");
});

Deno.test("run driver tests: remove the temporary folder", async () => {
  await Deno.remove(await tempDir(), { recursive: true });
});
