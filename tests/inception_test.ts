/**
 * The Inception-v3 FID detector (`lib/metrics/inception.ts`): parity with our PyTorch
 * re-implementation on a width/8 fixture read from a TorchScript archive
 * (`tests/fixtures/inception/`), safetensors round trip, the full-size parameter inventory, and
 * (when `SIDA_INCEPTION` names the real `inception-2015-12-05.pt`) a smoke test of the real file.
 */
import { assert, assertEquals, assertRejects } from "./metrics_asserts.ts";
import { tf } from "../lib/deps.ts";
import { IoError } from "../lib/io/host_tensor.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { INCEPTION_FORMAT, InceptionV3, resizeMatrix } from "../lib/metrics/inception.ts";
import { fixturePath, maxAbs, maxAbsDiff, nhwc, setupBackend, TEST_BACKEND } from "./helpers.ts";

const FIX = "inception";

/** max|a − b| / max|b|. */
async function relErr(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  return (await maxAbsDiff(a, b)) / Math.max(await maxAbs(b), 1e-12);
}

Deno.test(`inception: parity with the reference on the width/8 fixture (${TEST_BACKEND})`, async () => {
  await setupBackend();
  const net = await InceptionV3.load(fixturePath(`${FIX}/inception_w8.pt`));
  const { tensors } = await readSafetensors(fixturePath(`${FIX}/expected_w8.safetensors`));
  try {
    assertEquals(net.widthDivisor, 8);
    assertEquals(net.featureDim, 256);
    for (const c of ["a", "b"]) {
      const x = nhwc(tensors.get(`${c}.input`)!) as tf.Tensor4D;
      const want = {
        pool: nhwc(tensors.get(`${c}.pool`)!),
        logits: nhwc(tensors.get(`${c}.logits`)!),
        nobias: nhwc(tensors.get(`${c}.logits_nobias`)!),
      };
      const before = tf.memory().numTensors;
      const got = net.forward(x);
      const gotNoBias = net.forward(x, { noOutputBias: true });
      const det = net.run(x);
      assertEquals(tf.memory().numTensors, before + 6, "forward/run leak tensors");
      const errs = {
        pool: await relErr(got.pool, want.pool),
        logits: await relErr(got.logits, want.logits),
        nobias: await relErr(gotNoBias.logits, want.nobias),
      };
      const wantProbs = tf.softmax(want.nobias);
      const probErr = await maxAbsDiff(det.probs, wantProbs);
      const featErr = await maxAbsDiff(det.features, got.pool);
      console.log(`case ${c} [${x.shape}]: rel err`, errs, "probs", probErr);
      assert(errs.pool < 1e-4, `case ${c}: pool features off by ${errs.pool} (relative)`);
      assert(errs.logits < 1e-4, `case ${c}: logits off by ${errs.logits} (relative)`);
      assert(errs.nobias < 1e-4, `case ${c}: bias-free logits off by ${errs.nobias}`);
      assert(probErr < 1e-4, `case ${c}: probabilities off by ${probErr}`);
      assertEquals(featErr, 0);
      tf.dispose([x, want.pool, want.logits, want.nobias, wantProbs]);
      tf.dispose([...Object.values(got), ...Object.values(gotNoBias), ...Object.values(det)]);
    }
  } finally {
    net.dispose();
  }
});

Deno.test("inception: safetensors round trip and refusal of other files", async () => {
  await setupBackend();
  const dir = await Deno.makeTempDir({ prefix: "sida-inception-" });
  const a = new InceptionV3({ widthDivisor: 16, seed: 3 });
  try {
    const path = `${dir}/w16.safetensors`;
    await a.save(path);
    const { metadata } = await readSafetensors(path);
    assertEquals(metadata.format, INCEPTION_FORMAT);
    const b = await InceptionV3.load(path);
    const x = tf.randomUniform([1, 40, 40, 3], 0, 255, "float32", 5) as tf.Tensor4D;
    const ya = a.forward(x), yb = b.forward(x);
    assertEquals(await maxAbsDiff(ya.pool, yb.pool), 0);
    assertEquals(await maxAbsDiff(ya.logits, yb.logits), 0);
    tf.dispose([x, ...Object.values(ya), ...Object.values(yb)]);
    b.dispose();
    // Grey input is repeated to three channels.
    const g = tf.randomUniform([1, 32, 32, 1], 0, 255, "float32", 6) as tf.Tensor4D;
    const g3 = tf.tile(g, [1, 1, 1, 3]) as tf.Tensor4D;
    const y1 = a.forward(g), y3 = a.forward(g3);
    assertEquals(await maxAbsDiff(y1.pool, y3.pool), 0);
    tf.dispose([g, g3, ...Object.values(y1), ...Object.values(y3)]);
    await assertRejects(
      () => InceptionV3.load(fixturePath(`${FIX}/expected_w8.safetensors`)),
      IoError,
      "not a sida-inception-v3/1 file",
    );
    await assertRejects(() => InceptionV3.load(`${dir}/missing.pt`), IoError, "cannot open");
  } finally {
    a.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("inception: resize matrix is TF1's legacy bilinear resize", () => {
  // 4 → 299: row j samples u = 4j/299.
  const m = resizeMatrix(4);
  for (const j of [0, 1, 74, 75, 150, 298]) {
    const u = Math.min((4 * j) / 299, 3);
    const row = Array.from(m.subarray(j * 4, j * 4 + 4));
    const val = row.reduce((s, w, i) => s + w * i, 0); // interpolating the ramp 0,1,2,3 gives u
    assert(Math.abs(val - u) < 1e-6, `row ${j}: ${val} vs ${u}`);
    assert(Math.abs(row.reduce((s, w) => s + w, 0) - 1) < 1e-6, `row ${j} does not sum to 1`);
  }
  // 299 → 299 is the identity.
  const id = resizeMatrix(299);
  for (let j = 0; j < 299; j++) assertEquals(id[j * 299 + j], 1);
});

Deno.test("inception: the full-size network has the detector file's names and shapes", async () => {
  await setupBackend();
  const inv = JSON.parse(await Deno.readTextFile(fixturePath(`${FIX}/inventory.json`))) as {
    tensors: [string, number[]][];
    num_parameters: number;
    num_elements: number;
  };
  const net = new InceptionV3();
  try {
    const ours = net.namedTensors().map(([n, e]) => [n, e.torchShape]);
    assertEquals(ours, inv.tensors);
    assertEquals(net.numParameters(), inv.num_parameters);
    assertEquals(net.featureDim, 2048);
    assertEquals(net.numClasses, 1008);
  } finally {
    net.dispose();
  }
});

const realPath = Deno.env.get("SIDA_INCEPTION");

Deno.test({
  name: `inception: the real inception-2015-12-05.pt (SIDA_INCEPTION) (${TEST_BACKEND})`,
  ignore: !realPath,
  async fn() {
    await setupBackend();
    const net = await InceptionV3.load(realPath!);
    try {
      assertEquals(net.widthDivisor, 1);
      // Two different smooth images, 64×64 (resized to 299 by the detector).
      const a = tf.tidy(() =>
        tf.mul(
          tf.image.resizeBilinear(
            tf.randomUniform([1, 8, 8, 3], 0, 1, "float32", 1) as tf.Tensor4D,
            [64, 64],
          ),
          255,
        )
      ) as tf.Tensor4D;
      const b = tf.tidy(() => tf.sub(255, a)) as tf.Tensor4D;
      const x = tf.concat([a, b]) as tf.Tensor4D;
      const t0 = performance.now();
      const { features, probs } = net.run(x);
      const feats = await features.array();
      console.log(`real detector, 2 images: ${((performance.now() - t0) / 1000).toFixed(2)} s`);
      assertEquals(features.shape, [2, 2048]);
      assertEquals(probs.shape, [2, 1008]);
      const sums = await tf.tidy(() => tf.sum(probs, 1)).array() as number[];
      for (const s of sums) assert(Math.abs(s - 1) < 1e-4, `probabilities sum to ${s}`);
      const diff = feats[0].reduce((s, v, i) => s + Math.abs(v - feats[1][i]), 0);
      assert(diff > 1e-3, "features of two different images are equal");
      assert(feats.flat().every((v) => Number.isFinite(v) && v >= 0), "pool3 features are ≥ 0");
      tf.dispose([a, b, x, features, probs]);
    } finally {
      net.dispose();
    }
  },
});
