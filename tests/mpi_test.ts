/**
 * Data-parallel training over Open MPI (issue 19, docs/mpi.md), on a tiny 8×8 SongUNet:
 *
 * - `mpirun -np 2` of a short SiD, SiDA and teacher run ends with the same weights, optimizer
 *   moments and EMA as one process with the same global batch and micro-batch rounds, to 1e-5;
 *   `tf.memory().numTensors` (in rank 0's log) stays flat with the allreduce in the loop;
 * - a rank that fails mid-run stops the whole job, non-zero, within seconds (without the abort the
 *   other rank would wait in its next allreduce for ever), leaving the last good state; a single
 *   process resumes from it and ends where the uninterrupted run ends.
 *
 * Skipped with a message where `mpirun` is absent (`.ci/run` installs Open MPI). Runs as root
 * with `--allow-run-as-root`, and with `--oversubscribe` for machines with fewer cores than ranks.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { createImageDataset, writeImageZip } from "../lib/data/dataset.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import type { HostTensor } from "../lib/io/host_tensor.ts";
import { createNetwork, saveNetwork } from "../lib/nets/network.ts";
import { initBackend } from "../lib/runtime/backend.ts";
import { findLatestState } from "../lib/train/run_folder.ts";
import { roundRange } from "../lib/train/parallel.ts";
import { TEST_BACKEND, tinySongUNet } from "./helpers.ts";
import type { MpiRunSpec } from "./mpi_driver.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const DRIVER = join(ROOT, "tests/mpi_driver.ts");
const BACKEND = TEST_BACKEND === "auto" ? "native" : TEST_BACKEND;
/** One thread per process: comparable runs, and two ranks do not fight over two cores. */
const ENV = { SIDA_NUM_THREADS: "1", OMP_NUM_THREADS: "1", OPENBLAS_NUM_THREADS: "1" };

function hasMpirun(): boolean {
  try {
    return new Deno.Command("mpirun", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}
const MPIRUN = hasMpirun();
if (!MPIRUN) console.warn("mpi_test: mpirun not found (apt-get install openmpi-bin); skipped");

/** A process's exit, output and wall time. */
interface Exit {
  code: number;
  output: string;
  seconds: number;
}

/** Runs the driver: alone (`ranks` 0) or under `mpirun -np ranks`; killed after `limitSec`. */
function run(
  spec: MpiRunSpec,
  ranks: number,
  limitSec = 300,
  extraEnv: Record<string, string> = {},
): Promise<Exit> {
  return runDeno(["run", "-A", DRIVER, JSON.stringify(spec)], ranks, limitSec, extraEnv);
}

/** `deno <denoArgs>` alone (`ranks` 0) or under `mpirun -np ranks`; killed after `limitSec`. */
async function runDeno(
  denoArgs: string[],
  ranks: number,
  limitSec = 300,
  extraEnv: Record<string, string> = {},
): Promise<Exit> {
  const [cmd, args] = ranks > 0
    ? ["mpirun", [
      "--allow-run-as-root",
      "--oversubscribe",
      "-np",
      String(ranks),
      Deno.execPath(),
      ...denoArgs,
    ]]
    : [Deno.execPath(), denoArgs];
  const env: Record<string, string> = { ...Deno.env.toObject(), ...ENV, ...extraEnv };
  // A test itself started by mpirun must not look like a rank to its children.
  for (const k of Object.keys(env)) if (/^(OMPI_|PMI_|PMIX_)/.test(k)) delete env[k];
  const t0 = performance.now();
  const child = new Deno.Command(cmd as string, {
    args: args as string[],
    env,
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), limitSec * 1000);
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return {
    code: out.code,
    output: dec.decode(out.stdout) + dec.decode(out.stderr),
    seconds: (performance.now() - t0) / 1000,
  };
}

let fixtures: Promise<{ dir: string; teacher: string; data: string }> | undefined;
/** A tiny conditional teacher (8×8×1, 3 classes) and 32 labelled images. */
function files() {
  fixtures ??= (async () => {
    await initBackend("cpu"); // to write the teacher; the runs use BACKEND
    const dir = await Deno.makeTempDir({ prefix: "sida-mpi-test-" });
    const teacher = join(dir, "teacher.safetensors");
    const net = createNetwork(
      tinySongUNet({ imgResolution: 8, imgChannels: 1, labelDim: 3, augmentDim: 9 }),
      { seed: 1 },
    );
    await saveNetwork(net, teacher);
    net.dispose();
    const n = 32, r = 8;
    const pixels = new Uint8Array(n * r * r);
    for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 37 + (i >> 5) * 11) % 256;
    const data = join(dir, "data.zip");
    await writeImageZip(
      data,
      createImageDataset({
        name: "mpi",
        resolution: r,
        channels: 1,
        pixels,
        labels: Array.from({ length: n }, (_, i) => i % 3),
      }),
    );
    return { dir, teacher, data };
  })();
  return fixtures;
}

const BATCH = 8, MICRO = 2, ITERATIONS = 4;

async function spec(kind: MpiRunSpec["kind"], name: string): Promise<MpiRunSpec> {
  const f = await files();
  const config = kind === "teacher"
    ? { batch: BATCH, microBatch: MICRO, lr: 1e-3, lrRampupKimg: 0, seed: 5 }
    : {
      batch: BATCH,
      microBatch: MICRO,
      lr: 1e-4,
      glr: 1e-4,
      seed: 3,
      ...(kind === "sida" ? { gWarmupNimg: 0, ganWarmupNimg: 0 } : {}),
    };
  return {
    kind,
    out: join(f.dir, name),
    teacher: f.teacher,
    data: f.data,
    config,
    durationKimg: BATCH * ITERATIONS / 1000,
    dumpKimg: 0.001,
    backend: BACKEND,
  };
}

async function finalTensors(dir: string): Promise<{ nimg: number; t: Map<string, HostTensor> }> {
  const path = await findLatestState(dir);
  assert(path, `no training state in ${dir}`);
  const { tensors, metadata } = await readSafetensors(path);
  return {
    nimg: JSON.parse(metadata.counters).curNimg,
    t: tensors as Map<string, HostTensor>,
  };
}

/** The largest |a − b| over every float32 tensor of two states (names must agree). */
async function maxStateDiff(a: string, b: string): Promise<{ diff: number; where: string }> {
  const x = await finalTensors(a), y = await finalTensors(b);
  assert.deepEqual(x.nimg, y.nimg, "images seen");
  assert.deepEqual([...x.t.keys()].sort(), [...y.t.keys()].sort());
  let diff = 0, where = "";
  for (const [k, u] of x.t) {
    if (u.dtype !== "float32") continue;
    const v = y.t.get(k)!;
    for (let i = 0; i < u.data.length; i++) {
      const d = Math.abs((u.data[i] as number) - (v.data[i] as number));
      if (!(d <= diff)) [diff, where] = [d, k];
    }
  }
  return { diff, where };
}

async function numTensorsPerTick(dir: string): Promise<number[]> {
  const text = await Deno.readTextFile(join(dir, "log.jsonl"));
  return text.trim().split("\n").map((l) => JSON.parse(l).memory.numTensors);
}

const ok = (e: Exit, what: string) =>
  assert.deepEqual(e.code, 0, `${what}:\n${e.output.slice(-3000)}`);

/** One-process reference runs, shared by the tests (each made once). */
const references = new Map<string, Promise<MpiRunSpec>>();
function reference(kind: MpiRunSpec["kind"]): Promise<MpiRunSpec> {
  if (!references.has(kind)) {
    references.set(
      kind,
      (async () => {
        const s = await spec(kind, `${kind}-one`);
        ok(await run(s, 0), `one-process ${kind} run`);
        return s;
      })(),
    );
  }
  return references.get(kind)!;
}

/** `applyRankDefaults(world)` in a child process with exactly `env` (this process's env is untouched). */
function rankDefaults(
  world: { rank: number; size: number; localRank: number; localSize: number } | null,
  env: Record<string, string>,
): { set: Record<string, string>; after: Record<string, string | null> } {
  const mod = new URL("../lib/runtime/mpi.ts", import.meta.url).href;
  const code = `import { applyRankDefaults } from ${JSON.stringify(mod)};
const set = applyRankDefaults(${JSON.stringify(world)});
const after = Object.fromEntries(["SIDA_NUM_THREADS", "DRI_PRIME"].map((k) => [k, Deno.env.get(k) ?? null]));
console.log(JSON.stringify({ set, after }));`;
  const o = new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    env: { PATH: Deno.env.get("PATH") ?? "", HOME: Deno.env.get("HOME") ?? "/tmp", ...env },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  assert(o.success, new TextDecoder().decode(o.stderr));
  return JSON.parse(new TextDecoder().decode(o.stdout));
}

Deno.test("mpi: per-rank defaults: GPU k for local rank k (DRI_PRIME), threads split, explicit settings kept", () => {
  const cores = navigator.hardwareConcurrency || 1;
  const a = rankDefaults({ rank: 3, size: 4, localRank: 1, localSize: 2 }, {
    SIDA_MPI_GPUS: "pci-0000_01_00_0, pci-0000_41_00_0",
  });
  assert.equal(a.set.DRI_PRIME, "pci-0000_41_00_0");
  assert.equal(a.after.DRI_PRIME, "pci-0000_41_00_0");
  assert.equal(a.set.SIDA_NUM_THREADS, String(Math.max(1, Math.floor(cores / 2))));
  assert.equal(a.set.OMPI_MCA_mpi_yield_when_idle, "1");
  // Local rank 0 gets the first GPU; a thread count the user gave is kept.
  const b = rankDefaults({ rank: 0, size: 2, localRank: 0, localSize: 2 }, {
    SIDA_MPI_GPUS: "a,b",
    OMP_NUM_THREADS: "3",
  });
  assert.equal(b.set.DRI_PRIME, "a");
  assert.equal(b.set.SIDA_NUM_THREADS, undefined);
  // A world of one, or no MPI, changes nothing.
  for (const w of [{ rank: 0, size: 1, localRank: 0, localSize: 1 }, null]) {
    const c = rankDefaults(w, { SIDA_MPI_GPUS: "a,b" });
    assert.deepEqual(c.set, {});
    assert.deepEqual(c.after, { SIDA_NUM_THREADS: null, DRI_PRIME: null });
  }
});

Deno.test("mpi: rounds are split into contiguous blocks; uneven splits are refused", () => {
  assert.deepEqual(roundRange(4, 0, 1), [0, 4]);
  assert.deepEqual([0, 1].map((r) => roundRange(4, r, 2)), [[0, 2], [2, 4]]);
  let msg = "";
  try {
    roundRange(3, 0, 2);
  } catch (e) {
    msg = (e as Error).message;
  }
  assert(/must be a multiple of the number of ranks/.test(msg), msg);
});

for (const kind of ["sid", "sida", "teacher"] as const) {
  Deno.test({
    name: `mpi: mpirun -np 2 of a short ${kind} run gives one process's weights (1e-5)`,
    ignore: !MPIRUN,
    sanitizeResources: false,
    async fn() {
      const one = await reference(kind);
      const two = await spec(kind, `${kind}-two`);
      const e = await run(two, 2);
      ok(e, `mpirun -np 2 ${kind}`);
      const { diff, where } = await maxStateDiff(one.out, two.out);
      console.log(`${kind}: max |2 ranks − 1 process| = ${diff.toExponential(2)} (${where})`);
      assert(diff <= 1e-5, `${kind}: 2 ranks differ from one process by ${diff} in ${where}`);
      const counts = await numTensorsPerTick(two.out);
      assert.deepEqual(counts.length, ITERATIONS);
      assert(counts.every((c) => c === counts[0]), `numTensors per tick: ${counts}`);
      // Rank 0 alone wrote: one log line per tick, not two.
      assert.deepEqual(
        (await Deno.readTextFile(join(two.out, "log.jsonl"))).trim().split("\n").length,
        ITERATIONS,
      );
    },
  });
}

Deno.test({
  name: "mpi: without the gradient allreduce, 2 ranks do not give one process's weights",
  ignore: !MPIRUN,
  sanitizeResources: false,
  async fn() {
    // The control of the equivalence tests: each rank steps on its own half of the rounds, the
    // weights drift apart, and the driver's fingerprint check stops the job.
    const two = await spec("teacher", "teacher-no-allreduce");
    const e = await run(two, 2, 300, { SIDA_MPI_TEST_NO_ALLREDUCE: "1" });
    assert(e.code !== 0, `the job exited 0:\n${e.output.slice(-2000)}`);
    assert(/MPI ranks 0 and 1 hold different weights/.test(e.output), e.output.slice(-2000));
  },
});

Deno.test({
  name: "mpi: a failing rank stops the job at once, non-zero; one process resumes its state",
  ignore: !MPIRUN,
  sanitizeResources: false,
  async fn() {
    const one = await reference("sid");
    const s = { ...await spec("sid", "sid-fail"), failAt: { rank: 1, iteration: 2 } };
    const e = await run(s, 2, 120);
    const end = Date.now();
    assert(e.code !== 0, `the job exited 0:\n${e.output.slice(-2000)}`);
    const m = e.output.match(/injected failure on rank 1 after iteration 2 at (\d+)/);
    assert(m, e.output.slice(-2000));
    // Without MPI_Abort rank 0 would wait in its next allreduce for ever (killed at 120 s).
    const after = (end - Number(m[1])) / 1000;
    console.log(`the job ended ${after.toFixed(1)} s after rank 1 failed`);
    assert(after < 15, `the job ended ${after} s after the failure`);
    // Rank 0 stopped in the allreduce after iteration 2, so the last state is iteration 1's.
    const last = await finalTensors(s.out);
    assert.deepEqual(last.nimg, 2 * BATCH);
    // Resume with another world size (one process) to the end.
    ok(await run({ ...s, failAt: undefined }, 0), "resumed run");
    const { diff, where } = await maxStateDiff(one.out, s.out);
    console.log(`sid resumed on 1 process after 2 ranks: max diff ${diff.toExponential(2)}`);
    assert(diff <= 1e-5, `resumed run differs by ${diff} in ${where}`);
  },
});

/** `deno task distill` of a tiny chain, alone (`ranks` 0) or under `mpirun -np ranks`. */
async function runChain(
  out: string,
  ranks: number,
  extra: string[] = [],
): Promise<Exit> {
  const f = await files();
  const task = [
    "run",
    "-A",
    join(ROOT, "tasks/distill.ts"),
    ...["--teacher", f.teacher, "--data", f.data, "--ref", f.data, "--out", out],
    ...[
      "--features",
      "inception",
      "--detector",
      join(ROOT, "tests/fixtures/inception/inception_w8.pt"),
    ],
    ...[
      "--one-space",
      "--preset",
      "mnist",
      "--batch",
      String(BATCH),
      "--micro-batch",
      String(MICRO),
    ],
    ...[
      "--seed",
      "3",
      "--lr",
      "1e-4",
      "--glr",
      "1e-4",
      "--g-warmup-kimg",
      "0",
      "--gan-warmup-kimg",
      "0",
    ],
    ...["--sid-kimg", "0.016", "--sida-kimg", "0.016", "--tick", "0.008", "--snap", "0.008"],
    ...["--dump", "0.008", "--num", "8", "--snapshot-num", "4", "--eval-batch", "4"],
    ...["--backend", BACKEND, "--quiet"],
    ...extra,
  ];
  // A rank left waiting (a follower that missed a stage) would hang the job: killed at 300 s.
  return await runDeno(task, ranks, 300);
}

Deno.test({
  name:
    "mpi: mpirun -np 2 deno task distill gives one process's SiD and SiD²A generators; rank 0 alone scores and reports",
  ignore: !MPIRUN,
  sanitizeResources: false,
  async fn() {
    const f = await files();
    const one = join(f.dir, "chain-one"), two = join(f.dir, "chain-two");
    const a = await runChain(one, 0);
    ok(a, "one-process chain");
    const b = await runChain(two, 2);
    ok(b, "mpirun -np 2 chain");
    console.log(`chain: ${a.seconds.toFixed(0)} s alone, ${b.seconds.toFixed(0)} s on 2 ranks`);
    for (const stage of ["sid", "sida"]) {
      const x = await readSafetensors(join(one, stage, "network-snapshot-000000.016.safetensors"));
      const y = await readSafetensors(join(two, stage, "network-snapshot-000000.016.safetensors"));
      let diff = 0;
      for (const [k, u] of x.tensors) {
        const v = y.tensors.get(k)!;
        for (let i = 0; i < u.data.length; i++) {
          diff = Math.max(diff, Math.abs((u.data[i] as number) - (v.data[i] as number)));
        }
      }
      console.log(`chain ${stage}: max |2 ranks − 1 process| = ${diff.toExponential(2)}`);
      assert(diff <= 1e-5, `${stage}: the 2-rank chain's generator differs by ${diff}`);
    }
    // One chain log line per stage (rank 0 wrote it), the report and the scored snapshots.
    const log = (await Deno.readTextFile(join(two, "chain-log.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l));
    assert.deepEqual(log.map((l) => `${l.stage} ${l.action}`), [
      "import ran",
      "sid ran",
      "sida ran",
      "eval ran",
    ]);
    const report = JSON.parse(await Deno.readTextFile(join(two, "report.json")));
    assert.equal(report.stages.length, 2);
    const fids = (await Deno.readTextFile(join(two, "sid", "snapshot-fids.jsonl"))).trim().split(
      "\n",
    );
    assert.equal(fids.length, 2, "each SiD snapshot scored once");
    // A rerun under mpirun skips every stage.
    const c = await runChain(two, 2);
    ok(c, "rerun");
    assert.match(c.output, /import skipped, sid skipped, sida skipped, eval skipped/);
  },
});

Deno.test({
  name: "mpi: deno task distill under mpirun: an error on rank 0 ends the whole job at once",
  ignore: !MPIRUN,
  sanitizeResources: false,
  async fn() {
    const f = await files();
    const out = join(f.dir, "chain-bad");
    // The reference statistics cannot be read: rank 0 fails in its plan while rank 1 waits for
    // its first stage.
    await Deno.writeTextFile(join(f.dir, "bad.npz"), "not an npz");
    const e = await runChain(out, 2, ["--ref", join(f.dir, "bad.npz")]);
    assert(e.code !== 0, `the job exited 0:\n${e.output.slice(-2000)}`);
    assert(e.seconds < 60, `the job took ${e.seconds} s to end`);
    assert.match(e.output, /bad\.npz/);
    await assert.rejects(() => Deno.stat(join(out, "chain.json")), Deno.errors.NotFound);
  },
});

Deno.test({
  name: "mpi: clean up",
  ignore: !MPIRUN,
  sanitizeResources: false,
  async fn() {
    if (fixtures) await Deno.remove((await fixtures).dir, { recursive: true });
  },
});
