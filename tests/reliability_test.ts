/**
 * Guards against silent garbage (issue 13, item 3): non-finite weights refused at load, the
 * non-finite training guard, reference statistics that are not a mean and a covariance, a
 * generator that outputs NaN, and control characters from files kept out of messages.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../lib/deps.ts";
import { toUint8Images } from "../lib/diffusion/sampler.ts";
import { NonFiniteGuard, NonFiniteTrainingError } from "../lib/train/guard.ts";
import { countNonFinite, hostTensor, IoError, printable } from "../lib/io/host_tensor.ts";
import { writeSafetensors } from "../lib/io/safetensors.ts";
import { checkCovariance, LinalgError } from "../lib/metrics/linalg.ts";
import { writeNpz } from "../lib/metrics/npz.ts";
import { loadRefStats, saveRefStats } from "../lib/metrics/ref_stats.ts";
import { createNetwork, loadNetwork, networkMetadata } from "../lib/nets/network.ts";
import { setupBackend, tinySongUNet } from "./helpers.ts";

const SMALL = tinySongUNet({ imgResolution: 8, imgChannels: 1 });

Deno.test("non-finite weights: counted in every float format, refused at load unless allowed", async () => {
  assert.equal(
    countNonFinite(hostTensor("float32", [4], new Float32Array([1, NaN, -Infinity, 0]))),
    2,
  );
  assert.equal(countNonFinite(hostTensor("float64", [2], new Float64Array([Infinity, 1]))), 1);
  // float16 bits: 0x7c00 +Inf, 0xfe00 NaN, 0x3c00 1.0; bfloat16: 0x7f80 +Inf, 0x3f80 1.0
  assert.equal(
    countNonFinite(hostTensor("float16", [3], new Uint16Array([0x7c00, 0xfe00, 0x3c00]))),
    2,
  );
  assert.equal(countNonFinite(hostTensor("bfloat16", [2], new Uint16Array([0x7f80, 0x3f80]))), 1);
  assert.equal(countNonFinite(hostTensor("int32", [1], new Int32Array([-1]))), 0);

  await setupBackend();
  const dir = await Deno.makeTempDir({ prefix: "sida-reliability-" });
  try {
    const net = createNetwork(SMALL, { seed: 2 });
    const state = await net.stateDict();
    const meta = networkMetadata(net);
    net.dispose();
    const path = join(dir, "bad.safetensors");
    (state.get("model.map_layer0.bias")!.data as Float32Array)[3] = Infinity;
    await writeSafetensors(path, state, meta);
    const before = tf.memory().numTensors;
    await assert.rejects(
      loadNetwork(path),
      (e) =>
        e instanceof IoError &&
        /bad\.safetensors: 1 non-finite weights \(NaN or Inf\) in 1 tensor: model\.map_layer0\.bias \(1 of \d+\)/
          .test(e.message),
    );
    assert.equal(tf.memory().numTensors, before, "nothing allocated for a refused file");
    const loaded = await loadNetwork(path, { allowNonFinite: true });
    loaded.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("NonFiniteGuard: counts consecutive bad iterations, resets on a good one, names the cause", () => {
  const g = new NonFiniteGuard(3, "test run");
  g.observe({ loss: 1, lossD: null, kept: 8 }, 100);
  assert.ok(g.healthy);
  g.observe({ loss: NaN }, 200);
  g.observe({ loss: 1, kept: 0 }, 300);
  assert.equal(g.streak, 2);
  assert.ok(!g.healthy);
  assert.equal(g.writes({ done: false, interrupted: false }), "skip");
  assert.equal(g.writes({ done: false, interrupted: true }), "interrupt");
  assert.throws(
    () => g.writes({ done: true, interrupted: false }),
    (e) =>
      e instanceof NonFiniteTrainingError && /ended on 2 non-finite iterations/.test(e.message),
  );
  g.observe({ loss: 0.5, kept: 1 }, 400);
  assert.ok(g.healthy, "a good iteration resets the streak");
  assert.equal(g.writes({ done: true, interrupted: true }), "write");
  g.observe({ loss: Infinity }, 500);
  g.observe({ loss: NaN }, 600);
  assert.throws(
    () => g.observe({ loss: 0, keptG: 0 }, 700),
    (e) =>
      e instanceof NonFiniteTrainingError &&
      /^test run stopped: 3 consecutive iterations with non-finite losses since 0\.500 kimg \(loss Infinity\)/
        .test(e.message),
  );
  assert.throws(() => new NonFiniteGuard(0), RangeError);
});

Deno.test("reference statistics: a covariance must be finite, symmetric and positive semi-definite", async () => {
  const d = 3;
  // PSD with rank 2 (a real covariance of too few images): accepted.
  const rank2 = new Float64Array([2, 1, 0, 1, 2, 0, 0, 0, 0]);
  checkCovariance(rank2, d);
  const bad: [string, Float64Array, RegExp][] = [
    [
      "indefinite",
      new Float64Array([1, 2, 0, 2, 1, 0, 0, 0, 1]),
      /not positive semi-definite \(eigenvalue -1\.000/,
    ],
    ["negative definite", new Float64Array([0, 0, 0, 0, 0, 0, 0, 0, -1]), /negative variance/],
    [
      "zero diagonal, off-diagonal",
      new Float64Array([0, 1, 0, 1, 0, 0, 0, 0, 0]),
      /not positive semi-definite/,
    ],
    ["asymmetric", new Float64Array([1, 0.5, 0, 0, 1, 0, 0, 0, 1]), /not symmetric/],
    ["NaN", new Float64Array([1, 0, 0, 0, NaN, 0, 0, 0, 1]), /non-finite/],
  ];
  for (const [what, s, re] of bad) {
    assert.throws(
      () => checkCovariance(s, d),
      (e) => e instanceof LinalgError && re.test(e.message),
      what,
    );
    assert.throws(() => checkCovariance(s, d, "sigma", "js"), LinalgError, `${what} (js)`);
  }
  const dir = await Deno.makeTempDir({ prefix: "sida-refstats-" });
  try {
    const good = join(dir, "good.npz");
    await saveRefStats(good, { mu: new Float64Array([0, 1, 2]), sigma: rank2, dim: d });
    assert.deepEqual([...(await loadRefStats(good)).sigma], [...rank2]);
    const nonPd = join(dir, "non-pd.npz");
    await writeNpz(nonPd, {
      mu: hostTensor("float64", [d], new Float64Array(d)),
      sigma: hostTensor("float64", [d, d], bad[0][1]),
    });
    await assert.rejects(
      loadRefStats(nonPd),
      (e) =>
        e instanceof IoError &&
        /non-pd\.npz: invalid reference statistics: sigma is not positive semi-definite/.test(
          e.message,
        ),
    );
    const nanMu = join(dir, "nan-mu.npz");
    await writeNpz(nanMu, {
      mu: hostTensor("float64", [d], new Float64Array([0, NaN, 0])),
      sigma: hostTensor("float64", [d, d], rank2),
    });
    await assert.rejects(
      loadRefStats(nanMu),
      (e) => e instanceof IoError && /mu has a non-finite/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a network that outputs NaN is refused by the image conversion used for evaluation", async () => {
  await setupBackend();
  const x = tf.tensor4d([0, NaN, 1, -1], [1, 2, 2, 1]);
  try {
    assert.deepEqual([...(await toUint8Images(x))], [128, 0, 255, 0], "default: NaN maps to 0");
    await assert.rejects(
      toUint8Images(x, { nonFinite: "error" }),
      (e) => e instanceof RangeError && /produced 1 NaN values in 4/.test(e.message),
    );
  } finally {
    x.dispose();
  }
});

Deno.test("printable: control characters and bidi overrides from files are escaped", () => {
  assert.equal(printable("a\x1b[2Jb\r\n\x07\u202e\x85ok"), "a\\x1b[2Jb\\r\\n\\x07\\u202e\\x85ok");
  assert.equal(printable("plain ünïcode ✓"), "plain ünïcode ✓");
  assert.equal(new IoError("x\x1b[Hy").message, "x\\x1b[Hy");
  assert.ok(new IoError("z".repeat(5000)).message.length < 1000);
});
