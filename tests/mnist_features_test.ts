/**
 * The shipped MNIST feature networks (`data/mnist-features.safetensors`, architecture `a`, and
 * the independently trained second one, `data/mnist-features-b.safetensors`) and their reference
 * statistics: held-out accuracy on the recorded split (at least 99% for `a`, 98% for `b`), and
 * statistics that equal a recomputation over the 10,000 digits.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import { mnistDataset } from "../lib/data/dataset.ts";
import {
  DEFAULT_MNIST_FEATURES,
  DEFAULT_MNIST_FEATURES_B,
  DEFAULT_MNIST_REF_STATS,
  DEFAULT_MNIST_REF_STATS_B,
  MnistFeatureNet,
  mnistHoldoutSplit,
} from "../lib/metrics/mnist_features.ts";
import { loadRefStats } from "../lib/metrics/ref_stats.ts";
import { FeatureStats, fid } from "../lib/metrics/stats.ts";
import { setupBackend } from "./helpers.ts";

const NETS = [
  {
    arch: "a",
    name: "mnist",
    dim: 128,
    minAccuracy: 0.99, // issue 5
    weights: DEFAULT_MNIST_FEATURES,
    stats: DEFAULT_MNIST_REF_STATS,
    meta: new URL("../data/mnist-features.json", import.meta.url).pathname,
  },
  {
    arch: "b",
    name: "mnist-b",
    dim: 64,
    minAccuracy: 0.98, // issue 15
    weights: DEFAULT_MNIST_FEATURES_B,
    stats: DEFAULT_MNIST_REF_STATS_B,
    meta: new URL("../data/mnist-features-b.json", import.meta.url).pathname,
  },
] as const;

/** uint8-valued float images `[n, 32, 32, 1]` of the given digits. */
function batch(ds: Awaited<ReturnType<typeof mnistDataset>>, idx: number[]): tf.Tensor4D {
  const px = new Float32Array(idx.length * 32 * 32);
  idx.forEach((k, i) => px.set(ds.image(k), i * 1024));
  return tf.tensor4d(px, [idx.length, 32, 32, 1]);
}

for (const N of NETS) {
  Deno.test(`shipped MNIST feature network ${N.arch}: held-out accuracy as recorded, at least ${N.minAccuracy * 100}%`, async () => {
    await setupBackend();
    const meta = JSON.parse(await Deno.readTextFile(N.meta));
    const ds = await mnistDataset();
    const net = await MnistFeatureNet.load(N.weights);
    assert.equal(net.arch, N.arch);
    assert.equal(net.name, N.name);
    assert.equal(net.featureDim, N.dim);
    const { test } = mnistHoldoutSplit(ds.size, meta.seed, meta.heldOutImages);
    let correct = 0;
    const before = tf.memory().numTensors;
    for (let i = 0; i < test.length; i += 250) {
      const idx = test.slice(i, i + 250);
      const x = batch(ds, idx);
      const out = net.run(x);
      const pred = tf.argMax(out.probs, 1);
      const p = await pred.data();
      idx.forEach((k, j) => correct += p[j] === ds.label(k) ? 1 : 0);
      tf.dispose([x, out.features, out.probs, pred]);
    }
    assert.equal(tf.memory().numTensors, before);
    const acc = correct / test.length;
    assert.ok(acc >= N.minAccuracy, `held-out accuracy ${acc}`);
    assert.ok(
      Math.abs(acc - meta.heldOutAccuracy) < 1e-9,
      `recorded ${meta.heldOutAccuracy}, got ${acc}`,
    );
    net.dispose();
  });

  Deno.test(`shipped MNIST reference statistics (${N.arch}) equal a recomputation over the 10,000 digits`, async () => {
    await setupBackend();
    const ds = await mnistDataset();
    const net = await MnistFeatureNet.load(N.weights);
    const stats = new FeatureStats(net.featureDim);
    for (let i = 0; i < ds.size; i += 500) {
      const idx = Array.from({ length: Math.min(500, ds.size - i) }, (_, j) => i + j);
      const x = batch(ds, idx);
      const out = net.run(x);
      await stats.addTensor(out.features);
      tf.dispose([x, out.features, out.probs]);
    }
    const ref = await loadRefStats(N.stats);
    const mu = stats.mean();
    const sigma = stats.cov();
    assert.equal(stats.count, 10000);
    let maxMu = 0, maxSigma = 0, scale = 0;
    for (let i = 0; i < mu.length; i++) maxMu = Math.max(maxMu, Math.abs(mu[i] - ref.mu[i]));
    for (let i = 0; i < sigma.length; i++) {
      maxSigma = Math.max(maxSigma, Math.abs(sigma[i] - ref.sigma[i]));
      scale = Math.max(scale, Math.abs(ref.sigma[i]));
    }
    assert.ok(maxMu < 1e-3, `mean differs by ${maxMu}`);
    assert.ok(maxSigma < 1e-3 * scale, `covariance differs by ${maxSigma} (scale ${scale})`);
    assert.ok(
      fid(mu, sigma, ref.mu, ref.sigma) < 1e-3,
      "FID of the data against its own statistics",
    );
    net.dispose();
  });
}
