/**
 * EDM teacher training (`lib/diffusion/teacher_training.ts`, `deno task teacher`): the loss goes
 * down, the learning-rate ramp-up and the EMA follow EDM's formulas, memory stays flat, a run
 * interrupted and resumed ends bit-identical to an uninterrupted one (dropout included), a
 * finished run is skipped and exported, and bad input fails before training with one line,
 * leaving the run folder untouched.
 *
 * Everything runs on a tiny conditional SongUNet (8×8×1, 3 classes, 8 channels, one level, one
 * block) and 24 synthetic digits-like images (bars of three orientations).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../lib/deps.ts";
import { createImageDataset, type ImageDataset, writeImageZip } from "../lib/data/dataset.ts";
import type { HostTensor } from "../lib/io/host_tensor.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { resolveConfig, toEdmKwargs } from "../lib/nets/config.ts";
import { loadNetwork } from "../lib/nets/network.ts";
import type { EDMPrecond } from "../lib/nets/precond.ts";
import {
  parseTeacherArgs,
  readTeacherState,
  TEACHER_DEFAULTS,
  teacherEmaBeta,
  teacherLearningRate,
  type TeacherOptions,
  TeacherTrainer,
  trainTeacher,
} from "../lib/diffusion/teacher_training.ts";
import { setupBackend, TEST_BACKEND, tinySongUNet } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;

const TINY = tinySongUNet({ imgResolution: 8, imgChannels: 1, labelDim: 3, augmentDim: 0 });

/** 24 images: class 0 a horizontal bar, 1 a vertical bar, 2 a diagonal, at varying offsets. */
function barsDataset(): ImageDataset {
  const n = 24;
  const r = 8;
  const pixels = new Uint8Array(n * r * r);
  const labels: number[] = [];
  for (let i = 0; i < n; i++) {
    const cls = i % 3;
    const off = 1 + (i >> 2) % 6;
    labels.push(cls);
    for (let y = 0; y < r; y++) {
      for (let x = 0; x < r; x++) {
        const on = cls === 0 ? y === off : cls === 1 ? x === off : (x + y) % r === off;
        pixels[i * r * r + y * r + x] = on ? 255 : 0;
      }
    }
  }
  return createImageDataset({ name: "bars", resolution: r, channels: 1, pixels, labels });
}

async function params(net: EDMPrecond): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const [, v] of net.namedParameters()) out.push(Float32Array.from(await v.data()));
  return out;
}

function bitEqual(a: ArrayBufferView, b: ArrayBufferView): boolean {
  const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

function assertSameTensors(a: Map<string, HostTensor>, b: Map<string, HostTensor>, what: string) {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${what}: tensor names`);
  for (const [k, t] of a) {
    const u = b.get(k)!;
    assert.deepEqual(t.shape, u.shape, `${what}: shape of ${k}`);
    assert(bitEqual(t.data, u.data), `${what}: values of ${k}`);
  }
}

async function listing(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

let tmp: Promise<string> | undefined;
const tempDir = () => tmp ??= Deno.makeTempDir({ prefix: "sida-teacher-test-" });

let files: Promise<{ configPath: string; zip: string }> | undefined;
/** The tiny network as an EDM-kwargs JSON file and the data as a dataset zip, for the CLI. */
function cliFiles(): Promise<{ configPath: string; zip: string }> {
  files ??= (async () => {
    const dir = await tempDir();
    const configPath = join(dir, "tiny.json");
    await Deno.writeTextFile(configPath, JSON.stringify(toEdmKwargs(resolveConfig(TINY))));
    const zip = join(dir, "bars.zip");
    await writeImageZip(zip, barsDataset());
    return { configPath, zip };
  })();
  return files;
}

Deno.test("teacher: lr ramp-up and EMA β follow EDM's formulas", () => {
  const c = { lr: 1e-3, lrRampupKimg: 10 };
  assert.equal(teacherLearningRate(0, c), 0);
  assert.equal(teacherLearningRate(2500, c), 2.5e-4);
  assert.equal(teacherLearningRate(5000, c), 5e-4);
  assert.equal(teacherLearningRate(10_000, c), 1e-3);
  assert.equal(teacherLearningRate(1e6, c), 1e-3);
  // No ramp-up: EDM's max(0, 1e-8) still gives 0 at cur_nimg = 0, the full rate after.
  assert.equal(teacherLearningRate(0, { lr: 2e-3, lrRampupKimg: 0 }), 0);
  assert.equal(teacherLearningRate(64, { lr: 2e-3, lrRampupKimg: 0 }), 2e-3);

  const e = { batch: 10, emaHalflifeKimg: 50, emaRampupRatio: 0.05 };
  assert.equal(teacherEmaBeta(0, e), 0); // the first iteration copies the network
  // cur_nimg 1000: h = min(50 000, 1000·0.05) = 50, β = 0.5^(10/50) = 0.5^0.2.
  assert(Math.abs(teacherEmaBeta(1000, e) - 0.8705505632961241) < 1e-15);
  // Past the ramp-up: h = 50 000, β = 0.5^(10/50 000).
  assert(Math.abs(teacherEmaBeta(2e6, e) - 0.9998613801725043) < 1e-15);
  // No ramp-up ratio: the half-life applies from the start.
  assert.equal(teacherEmaBeta(0, { ...e, emaRampupRatio: null }), 0.5 ** (10 / 50_000));
  // Defaults as documented.
  assert.equal(TEACHER_DEFAULTS.beta1, 0.9);
  assert.equal(TEACHER_DEFAULTS.beta2, 0.999);
  assert.equal(TEACHER_DEFAULTS.eps, 1e-8);
  assert.equal(TEACHER_DEFAULTS.xflip, false);
});

Deno.test("teacher: the loss decreases, EMA and lr per step, flat memory", async () => {
  await setupBackend();
  const dataset = barsDataset();
  const baseline = tf.memory().numTensors;
  const t = new TeacherTrainer({
    network: TINY,
    dataset,
    config: { batch: 24, lr: 1e-2, lrRampupKimg: 0.048, emaHalflifeKimg: 0.2, seed: 1 },
  });
  const losses: number[] = [];
  const counts: number[] = [];
  for (let i = 0; i < 48; i++) {
    const netBefore = i < 3 ? await params(t.net) : null;
    const emaBefore = i < 3 ? await params(t.ema) : null;
    const s = await t.step();
    losses.push(s.loss);
    assert(Number.isFinite(s.loss), `finite loss at step ${i}`);
    assert.equal(s.curNimg, 24 * i);
    assert.equal(s.nimg, 24 * (i + 1));
    assert.equal(s.lr, teacherLearningRate(s.curNimg, t.config));
    assert.equal(s.emaBeta, teacherEmaBeta(s.curNimg, t.config));
    if (i >= 1) counts.push(tf.memory().numTensors); // Adam's moments exist after step 0
    if (netBefore && emaBefore) {
      const net = await params(t.net);
      const ema = await params(t.ema);
      if (i === 0) {
        // lr 0 in the first iteration: the weights stay, and β = 0 copies them into the EMA.
        assert(net.every((p, k) => bitEqual(p, netBefore[k])), "lr 0 at cur_nimg 0");
        assert(ema.every((p, k) => bitEqual(p, net[k])), "EMA = net after the first step");
      } else {
        // θ_ema ← β·θ_ema + (1−β)·θ with the network after the step.
        assert(!net.every((p, k) => bitEqual(p, netBefore[k])), `the net moves at step ${i}`);
        const beta = s.emaBeta;
        assert(beta > 0 && beta < 1);
        let worst = 0;
        for (let k = 0; k < ema.length; k++) {
          for (let j = 0; j < ema[k].length; j++) {
            const want = beta * emaBefore[k][j] + (1 - beta) * net[k][j];
            worst = Math.max(worst, Math.abs(ema[k][j] - want));
          }
        }
        assert(worst < 1e-6, `EMA formula at step ${i}: max error ${worst}`);
      }
    }
  }
  assert.equal(new Set(counts).size, 1, `numTensors flat over steps: ${counts}`);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const first = mean(losses.slice(1, 13)); // step 0 has lr 0
  const last = mean(losses.slice(-12));
  assert(last < 0.75 * first, `loss goes down: first window ${first}, last window ${last}`);
  t.dispose();
  assert.equal(tf.memory().numTensors, baseline, "dispose frees everything");
});

Deno.test("teacher: dropout masks are seeded by (seed, iteration)", async () => {
  await setupBackend();
  const dataset = barsDataset();
  const run = async (dropout: number) => {
    const t = new TeacherTrainer({
      network: { ...TINY, unet: { ...TINY.unet, dropout } },
      dataset,
      config: { batch: 6, lr: 1e-2, lrRampupKimg: 0, seed: 4 },
    });
    for (let i = 0; i < 3; i++) await t.step();
    const p = await params(t.net);
    t.dispose();
    return p;
  };
  const [a, b, none] = [await run(0.5), await run(0.5), await run(0)];
  assert(a.every((x, k) => bitEqual(x, b[k])), "same seed, same masks, same weights");
  assert(!a.every((x, k) => bitEqual(x, none[k])), "dropout is active in training");
});

function runOptions(out: string, kimg: number): TeacherOptions {
  return {
    out,
    network: { ...TINY, unet: { ...TINY.unet, dropout: 0.1 } }, // seeded dropout is exercised
    data: barsDataset(),
    config: { batch: 8, lr: 5e-3, lrRampupKimg: 0.016, emaHalflifeKimg: 0.05, seed: 5 },
    kimg,
    tickKimg: 0.016,
    snapKimg: 0.032,
    dumpKimg: 0.016,
    backend: TEST_BACKEND,
    quiet: true,
  };
}

Deno.test("teacher: an interrupted run resumes bit-identically; a finished one is skipped and exported", async () => {
  const dir = await tempDir();
  const total = 0.048; // 6 iterations of 8 images
  const dirA = join(dir, "run-a");
  const a = await trainTeacher(runOptions(dirA, total));
  assert.equal(a.curNimg, 48);
  assert.equal(a.iterations, 6);
  assert(!a.resumed && !a.interrupted);
  const filesA = await listing(dirA);
  assert.deepEqual(filesA.filter((n) => n.startsWith("training-state-")), [
    "training-state-000000.048.safetensors",
  ]);
  assert(filesA.includes("network-snapshot-000000.032.safetensors"));
  assert(filesA.includes("network-snapshot-000000.048.safetensors"));
  const log = (await Deno.readTextFile(join(dirA, "log.jsonl"))).trim().split("\n");
  assert(log.length >= 3, `log.jsonl has ${log.length} lines`);
  for (const line of log) assert(Number.isFinite(JSON.parse(line).loss));

  // Run B: interrupted (as by Ctrl-C) after its third iteration, then resumed.
  const dirB = join(dir, "run-b");
  const ctrl = new AbortController();
  const b1 = await trainTeacher({
    ...runOptions(dirB, total),
    signal: ctrl.signal,
    onIteration: (s) => {
      if (s.iteration === 2) ctrl.abort();
    },
  });
  assert(b1.interrupted);
  assert.equal(b1.curNimg, 24);
  assert.equal(b1.statePath, join(dirB, "training-state-000000.024.safetensors"));
  const mid = await readTeacherState(b1.statePath!);
  assert.equal(mid.state.iteration, 3);
  assert(Number.isFinite(mid.loss));
  const b2 = await trainTeacher(runOptions(dirB, total));
  assert(b2.resumed && !b2.interrupted);
  assert.equal(b2.iterations, 3);
  assert.equal(b2.curNimg, 48);
  const finalA = await readTeacherState(join(dirA, "training-state-000000.048.safetensors"));
  const finalB = await readTeacherState(join(dirB, "training-state-000000.048.safetensors"));
  assertSameTensors(finalB.state.tensors, finalA.state.tensors, "resumed vs uninterrupted");
  assert.deepEqual(finalB.state.sampler, finalA.state.sampler);
  assert.equal(finalB.state.iteration, finalA.state.iteration);
  assert.deepEqual(
    (await listing(dirB)).filter((n) => n.startsWith("training-state-")),
    ["training-state-000000.048.safetensors"],
  );

  // A finished run: nothing trains, the EMA network is exported (loadable, with metadata).
  const exportPath = join(dir, "out", "teacher.safetensors");
  const c = await trainTeacher({
    ...runOptions(dirA, total),
    export: exportPath,
    command: "deno task teacher --test",
  });
  assert.equal(c.iterations, 0);
  assert(c.resumed);
  assert.equal(c.exportPath, exportPath);
  assert.deepEqual(await listing(dirA), filesA, "a finished run writes nothing");
  const { metadata } = await readSafetensors(exportPath);
  assert.equal(metadata.command, "deno task teacher --test");
  assert.equal(metadata.kimg, "0.048");
  assert.equal(metadata.seed, "5");
  assert(Number.isFinite(Number(metadata.loss)));
  const exported = await loadNetwork(exportPath);
  const ema = await exported.stateDict();
  for (const [k, v] of ema) {
    assert(bitEqual(v.data, finalA.state.tensors.get(`ema.${k}`)!.data), `exported ${k}`);
  }
  exported.dispose();
  const snap = await loadNetwork(join(dirA, "network-snapshot-000000.048.safetensors"));
  assert.deepEqual(
    toEdmKwargs(snap.config),
    toEdmKwargs(resolveConfig(runOptions("", 1).network!)),
  );
  snap.dispose();
});

async function runTask(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "tasks/teacher.ts"), ...args],
    stdout: "piped",
    stderr: "piped",
    env: { OPENBLAS_NUM_THREADS: "1" },
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("teacher: bad input fails before training with one line and leaves the folder untouched", async () => {
  const dir = await tempDir();
  const run = join(dir, "run-errors");
  await trainTeacher({ ...runOptions(run, 0.008), network: TINY });
  const before = await listing(run);
  const bytes = async () => await Promise.all(before.map((n) => Deno.readFile(join(run, n))));
  const contents = await bytes();
  const { configPath, zip } = await cliFiles();

  // Flag parsing (in-process): each is a one-line UsageError.
  const parseCases: [string[], RegExp][] = [
    [["--out", run, "--batch", "abc"], /--batch must be a number/],
    [["--out", run, "--batch", "2.5"], /--batch must be an integer/],
    [["--out", run, "--kimg", "0"], /--kimg must be > 0/],
    [["--out", run, "--lr=-1"], /--lr must be at least 0/],
    [["--out", run, "--lr", "0"], /--lr must be > 0/],
    [["--out", run, "--batch", "8", "--micro-batch", "3"], /multiple of the micro-batch/],
    [["--out", run, "--xflip", "yes"], /--xflip must be 0 or 1/],
    [["--out", run, "--dropout", "1"], /--dropout must be in \[0, 1\)/],
    [["--out", run, "--bogus", "1"], /bogus/],
    [["--kimg", "1"], /--out/],
    [["--out", run, "extra"], /unexpected argument 'extra'/],
    [["--out", run, "--preset", "mnist", "--config", configPath], /either --preset or --config/],
  ];
  for (const [args, pattern] of parseCases) {
    assert.throws(() => parseTeacherArgs(args), (e: Error) => {
      assert.equal(e.name, "UsageError", `${args.join(" ")}: ${e.message}`);
      assert(pattern.test(e.message), `${args.join(" ")}: ${e.message} should match ${pattern}`);
      assert(!e.message.includes("\n"), "one line");
      return true;
    });
  }
  const ok = parseTeacherArgs([
    ...["--out", "r", "--kimg", "3", "--batch", "32", "--lr", "2e-3", "--seed", "7"],
    ...["--ema-rampup", "0", "--xflip", "1", "--export", "t.safetensors", "--resume"],
  ]);
  assert.equal(ok.kimg, 3);
  assert.deepEqual(
    [ok.config!.batch, ok.config!.lr, ok.config!.seed, ok.config!.emaRampupRatio, ok.config!.xflip],
    [32, 2e-3, 7, null, true],
  );
  assert(ok.resume && ok.export === "t.safetensors");

  // The task (subprocesses): exit code ≠ 0, exactly one `error:` line, nothing written.
  const base = ["--out", run, "--config", configPath, "--data", zip, "--batch", "8", "--seed", "5"];
  const cases: [string, string[], RegExp][] = [
    ["not a number", ["--out", run, "--batch", "abc"], /--batch must be a number/],
    ["unknown flag", [...base, "--bogus", "1"], /bogus/],
    ["unknown backend", [...base, "--backend", "tpu"], /--backend must be one of/],
    ["export not safetensors", [...base, "--export", join(dir, "t.pt")], /\.safetensors/],
    ["missing data", [...base.slice(0, 4), "--data", join(dir, "nope.zip")], /not found/],
    [
      "incompatible run",
      [...base.slice(0, 6), "--batch", "16"],
      /cannot be continued: it has batch 8, not 16/,
    ],
    ["other network", [...base, "--dropout", "0.2"], /another network \(dropout: 0, not 0\.2\)/],
    [
      "resume nothing",
      [...base.slice(0, 1), join(dir, "empty"), ...base.slice(2), "--resume"],
      /no training state/,
    ],
  ];
  // One after the other: the cases that pass validation reach the run folder's lock, which
  // refuses a second process while the first holds it.
  const results = [];
  for (const [, args] of cases) results.push(await runTask(args));
  results.forEach(({ code, stderr }, i) => {
    const [name, , pattern] = cases[i];
    const lines = stderr.trimEnd().split("\n");
    assert.notEqual(code, 0, `${name}: exit code`);
    assert.equal(lines.length, 1, `${name}: one stderr line, got ${JSON.stringify(stderr)}`);
    assert(lines[0].startsWith("error: "), `${name}: ${lines[0]}`);
    assert(pattern.test(lines[0]), `${name}: ${lines[0]} should match ${pattern}`);
  });
  assert.deepEqual(await listing(run), before);
  const after = await bytes();
  after.forEach((b, i) => assert(bitEqual(b, contents[i]), `${before[i]} unchanged`));
  await assert.rejects(Deno.stat(join(dir, "empty")), "no folder is created for a failed run");
});

Deno.test("teacher: Ctrl-C on `deno task teacher` writes a loadable state and exits 130", async () => {
  const dir = await tempDir();
  const { configPath, zip } = await cliFiles();
  const run = join(dir, "run-sigint");
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      ...["run", "-A", join(ROOT, "tasks/teacher.ts"), "--out", run, "--config", configPath],
      ...["--data", zip, "--batch", "8", "--kimg", "10", "--tick", "0.008", "--snap", "5"],
      ...["--backend", TEST_BACKEND],
    ],
    stdout: "null",
    stderr: "piped",
    env: { OPENBLAS_NUM_THREADS: "1" },
  }).spawn();
  let text = "";
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  while (!/tick 1 /.test(text)) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  assert(/tick 1 /.test(text), `training started: ${text}`);
  child.kill("SIGINT");
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  const status = await child.status;
  assert.equal(status.code, 130, text);
  assert(/interrupted: state written/.test(text), text);
  const files = await listing(run);
  const states = files.filter((n) => n.startsWith("training-state-"));
  assert.equal(states.length, 1, `one state: ${files}`);
  assert(!files.some((n) => n.endsWith(".partial")), `no temporaries: ${files}`);
  const saved = await readTeacherState(join(run, states[0]));
  assert(saved.state.curNimg >= 16 && saved.state.curNimg < 10_000);
  // It continues: a 1-iteration extension from the saved count.
  const more = await trainTeacher({
    ...runOptions(run, (saved.state.curNimg + 8) / 1000),
    network: TINY,
    config: { batch: 8 },
  });
  assert(more.resumed);
  assert.equal(more.iterations, 1);
});

Deno.test("teacher tests: remove the temporary folder", async () => {
  if (tmp) await Deno.remove(await tmp, { recursive: true });
});
