/**
 * End-to-end runs of `tasks/eval.ts` and `tasks/generate.ts` on a tiny random generator and a
 * random MNIST feature network (fast; checks the plumbing, outputs and error handling), and the
 * MNIST feature network's save/load round trip and flat tensor count.
 */
import { assert, assertEquals } from "./metrics_asserts.ts";
import { tf } from "../lib/deps.ts";
import { createNetwork, saveNetwork } from "../lib/nets/network.ts";
import { MnistFeatureNet } from "../lib/metrics/mnist_features.ts";
import { readNpz } from "../lib/metrics/npz.ts";
import { saveRefStats } from "../lib/metrics/ref_stats.ts";
import { FeatureStats } from "../lib/metrics/stats.ts";
import { generateBatches } from "../lib/metrics/generate.ts";
import { runCpuTask, setupBackend } from "./helpers.ts";

const runTask = runCpuTask;

async function fixtures(dir: string): Promise<{ gen: string; det: string; ref: string }> {
  await setupBackend();
  const net = createNetwork({
    imgResolution: 32,
    imgChannels: 1,
    labelDim: 10,
    unet: {
      arch: "SongUNet",
      modelChannels: 8,
      channelMult: [1],
      numBlocks: 1,
      attnResolutions: [],
    },
  }, { seed: 3 });
  const gen = `${dir}/g.safetensors`;
  await saveNetwork(net, gen);
  net.dispose();
  const det = new MnistFeatureNet(undefined, 5);
  const detPath = `${dir}/det.safetensors`;
  await det.save(detPath);
  // Reference statistics: features of random images.
  const st = new FeatureStats(128);
  const x = tf.randomUniform([200, 32, 32, 1], 0, 255, "float32", 9) as tf.Tensor4D;
  const { features, probs } = det.run(x);
  await st.addTensor(features);
  tf.dispose([x, features, probs]);
  det.dispose();
  const ref = `${dir}/ref.npz`;
  await saveRefStats(ref, { mu: st.mean(), sigma: st.cov(), dim: 128 });
  return { gen, det: detPath, ref };
}

Deno.test("eval task: one-step generation, FID and IS, metrics.json and grid PNG", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const f = await fixtures(dir);
    const r = await runTask([
      "tasks/eval.ts",
      "--generator",
      f.gen,
      "--ref",
      f.ref,
      "--detector",
      f.det,
      "--num",
      "40",
      "--batch",
      "16",
      "--metrics",
      "fid,is",
      "--out",
      `${dir}/ev`,
      "--grid",
      "20",
    ]);
    assertEquals(r.code, 0, r.stderr);
    assert(r.stdout.includes("FID"), r.stdout);
    const m = JSON.parse(await Deno.readTextFile(`${dir}/ev/metrics.json`));
    assert(Number.isFinite(m.fid) && m.fid >= 0, JSON.stringify(m));
    assert(m.is.mean >= 1 && m.is.mean <= 10, JSON.stringify(m));
    assertEquals(m.num, 40);
    const png = await Deno.readFile(`${dir}/ev/samples.png`);
    assertEquals([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]);
    // Bad input: one-line error, non-zero exit.
    const bad = await runTask([
      "tasks/eval.ts",
      "--generator",
      f.gen,
      "--ref",
      `${dir}/nope.npz`,
      "--detector",
      f.det,
      "--num",
      "4",
      "--metrics",
      "fid",
    ]);
    assert(bad.code !== 0);
    assertEquals(bad.stderr.trim().split("\n").filter((l) => l.startsWith("error:")).length, 1);
    const badFlag = await runTask(["tasks/eval.ts", "--generator", f.gen, "--metrics", "kid"]);
    assertEquals(badFlag.code, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("generate task: .npz with labels and a PNG folder", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const f = await fixtures(dir);
    const r = await runTask([
      "tasks/generate.ts",
      "--generator",
      f.gen,
      "--num",
      "5",
      "--seed",
      "2",
      "--class",
      "7",
      "--out",
      `${dir}/s.npz`,
    ]);
    assertEquals(r.code, 0, r.stderr);
    const a = await readNpz(`${dir}/s.npz`);
    assertEquals(a.get("images")!.shape, [5, 32, 32, 1]);
    assertEquals(a.get("images")!.dtype, "uint8");
    assertEquals([...a.get("labels")!.data as Int32Array], [7, 7, 7, 7, 7]);
    const r2 = await runTask([
      "tasks/generate.ts",
      "--generator",
      f.gen,
      "--num",
      "3",
      "--out",
      `${dir}/png`,
    ]);
    assertEquals(r2.code, 0, r2.stderr);
    const names = [...Deno.readDirSync(`${dir}/png`)].map((e) => e.name).sort();
    assertEquals(names, ["000000.png", "000001.png", "000002.png"]);
    const r3 = await runTask([
      "tasks/generate.ts",
      "--generator",
      f.gen,
      "--num",
      "3",
      "--class",
      "10",
      "--out",
      `${dir}/x.npz`,
    ]);
    assertEquals(r3.code, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("MNIST feature net: save/load round trip; generation and detection keep tensors flat", async () => {
  await setupBackend();
  const dir = await Deno.makeTempDir();
  try {
    const a = new MnistFeatureNet(undefined, 11);
    await a.save(`${dir}/m.safetensors`);
    const b = await MnistFeatureNet.load(`${dir}/m.safetensors`);
    const x = tf.randomUniform([4, 32, 32, 1], 0, 255, "float32", 1) as tf.Tensor4D;
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) {
      const oa = a.run(x);
      const ob = b.run(x);
      assertEquals(await oa.features.data(), await ob.features.data());
      tf.dispose([oa.features, oa.probs, ob.features, ob.probs]);
    }
    assertEquals(tf.memory().numTensors, before);
    const net = createNetwork({
      imgResolution: 32,
      imgChannels: 1,
      labelDim: 10,
      unet: {
        arch: "SongUNet",
        modelChannels: 8,
        channelMult: [1],
        numBlocks: 1,
        attnResolutions: [],
      },
    }, { seed: 1 });
    // The first call may create lazily cached constants; after it, the count must stay flat.
    let before2 = -1;
    let count = 0;
    for await (const batch of generateBatches(net, { num: 13, batch: 4, seed: 1 })) {
      count += batch.n;
      if (before2 < 0) before2 = tf.memory().numTensors;
      assertEquals(tf.memory().numTensors, before2);
    }
    assertEquals(count, 13);
    tf.dispose([x]);
    a.dispose();
    b.dispose();
    net.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
