/** The EDM teacher loss: formula on fixed inputs, draws, gradients, and a few training steps. */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import { edmLoss } from "../lib/diffusion/edm_loss.ts";
import { GaussianDenoiser } from "../lib/diffusion/gaussian.ts";
import { seededRandom } from "../lib/runtime/random.ts";
import { Adam } from "../lib/train/optim.ts";
import { createNetwork } from "../lib/nets/network.ts";
import { setupBackend } from "./helpers.ts";

Deno.test("edmLoss equals the EDM formula on fixed σ and noise (float64 recomputation)", async () => {
  await setupBackend();
  const n = 3, h = 4, w = 4, c = 2;
  const mean = 0.1, std = 0.4;
  const net = new GaussianDenoiser({ imgResolution: h, imgChannels: c, mean, std });
  const y = tf.randomUniform([n, h, w, c], -1, 1, "float32", 1) as tf.Tensor4D;
  const eps = tf.randomNormal([n, h, w, c], 0, 1, "float32", 2) as tf.Tensor4D;
  const sigma = tf.tensor1d([0.05, 0.7, 12]);
  const before = tf.memory().numTensors;
  const r = edmLoss(net, y, { sigma, noise: eps });
  const [yv, ev, lossV, per] = await Promise.all([
    y.data(),
    eps.data(),
    r.loss.data(),
    r.perSample.data(),
  ]);
  const sig = [0.05, 0.7, 12];
  let total = 0;
  for (let i = 0; i < n; i++) {
    const s = sig[i];
    const lam = (s * s + 0.25) / (s * 0.5) ** 2;
    const k = (std * std) / (std * std + s * s);
    let sum = 0;
    for (let j = 0; j < h * w * c; j++) {
      const yy = yv[i * h * w * c + j];
      const x = yy + Math.fround(s) * ev[i * h * w * c + j];
      const d = mean + k * (x - mean);
      sum += lam * (d - yy) ** 2;
    }
    assert.ok(Math.abs(per[i] - sum) / sum < 1e-4, `sample ${i}: ${per[i]} vs ${sum}`);
    total += sum;
  }
  assert.ok(Math.abs(lossV[0] - total / n) / (total / n) < 1e-4);
  tf.dispose([r.loss, r.perSample, r.sigma]);
  assert.equal(tf.memory().numTensors, before);
  tf.dispose([y, eps, sigma]);
  net.dispose();
});

Deno.test("edmLoss draws log-normal σ from the seeded source", async () => {
  await setupBackend();
  const net = new GaussianDenoiser({ imgResolution: 2, imgChannels: 1, mean: 0, std: 0.5 });
  const y = tf.zeros([4000, 2, 2, 1]) as tf.Tensor4D;
  const a = edmLoss(net, y, { rng: seededRandom(7) });
  const b = edmLoss(net, y, { rng: seededRandom(7) });
  const ls = Array.from(await a.sigma.data(), Math.log);
  const m = ls.reduce((p, q) => p + q, 0) / ls.length;
  const sd = Math.sqrt(ls.reduce((p, q) => p + (q - m) ** 2, 0) / (ls.length - 1));
  assert.ok(Math.abs(m - -1.2) < 4 * 1.2 / Math.sqrt(ls.length), `mean log σ ${m}`);
  assert.ok(Math.abs(sd - 1.2) < 0.05, `std log σ ${sd}`);
  assert.deepEqual(await a.sigma.data(), await b.sigma.data(), "same seed, same σ");
  tf.dispose([a.loss, a.perSample, a.sigma, b.loss, b.perSample, b.sigma, y]);
  net.dispose();
});

Deno.test("a few Adam steps on the EDM loss reduce it for a tiny network", async () => {
  await setupBackend();
  const net = createNetwork({
    imgResolution: 8,
    imgChannels: 1,
    unet: {
      arch: "SongUNet",
      modelChannels: 8,
      channelMult: [1, 2],
      numBlocks: 1,
      attnResolutions: [],
      dropout: 0,
    },
  }, { seed: 3 });
  // A fixed "data set": 16 smooth images.
  const images = tf.tidy(() => {
    const g = tf.linspace(-1, 1, 8);
    const img = tf.mul(tf.reshape(g, [1, 8, 1, 1]), tf.reshape(g, [1, 1, 8, 1]));
    return tf.tile(img, [16, 1, 1, 1]) as tf.Tensor4D;
  });
  const params = net.namedParameters().map(([, v]) => v);
  const opt = new Adam(params, { lr: 2e-3, beta1: 0.9 });
  const evalLoss = async () => {
    const r = edmLoss(net, images, { rng: seededRandom(99), training: false });
    const v = (await r.loss.data())[0];
    tf.dispose([r.loss, r.perSample, r.sigma]);
    return v;
  };
  const start = await evalLoss();
  const rng = seededRandom(5);
  let before = 0;
  for (let i = 0; i < 30; i++) {
    if (i === 1) before = tf.memory().numTensors; // Adam allocates its moments on the first step.
    const { value, grads } = tf.variableGrads(() => edmLoss(net, images, { rng }).loss, params);
    opt.step(grads);
    tf.dispose([value, ...Object.values(grads)]);
  }
  assert.equal(tf.memory().numTensors, before, "training loop leaked tensors");
  const end = await evalLoss();
  assert.ok(end < 0.7 * start, `loss ${start} → ${end}`);
  images.dispose();
  opt.dispose();
  net.dispose();
});
