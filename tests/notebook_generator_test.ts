/**
 * The released-generator path of the notebooks: one-step generator pickles in the formats the
 * reference project releases (`{'ema': G_ema}`; SiD: EDM's `EDMPrecond` + `SongUNet`; SiDA / SiD²A:
 * `EDMPrecond_EncoderDecoder` + `DhariwalUNet_EncoderDecoder`), made with the reference classes at
 * small width with random weights (`tests/fixtures/generators/make_generator_fixtures.py`), load
 * through the public API (`loadNetwork`) and generate in one step the images of the reference
 * forward pass (`generate_onestep.py:148` of mingyuanzhou/SiD, branch `sida`) to 1e-4.
 */
import assert from "node:assert/strict";
import { generate, initBackend, loadNetwork, readSafetensors, tf, toTfTensor } from "../mod.ts";

const DIR = new URL("./fixtures/generators/", import.meta.url).pathname;

await initBackend(Deno.env.get("SIDA_TEST_BACKEND") ?? "cpu");
const expected = await readSafetensors(`${DIR}expected.safetensors`);
const SIGMA_INIT = Number(expected.metadata.sigma_init);

const CASES = [
  { name: "sid_cifar10_tiny", arch: "SongUNet", res: 32, labelDim: 10 },
  { name: "sida_imagenet64_tiny", arch: "DhariwalUNet", res: 64, labelDim: 1000 },
];

for (const c of CASES) {
  Deno.test(`released generator ${c.name}.pkl loads and generates the reference images`, async () => {
    const before = tf.memory().numTensors;
    const G = await loadNetwork(`${DIR}${c.name}.pkl`);
    try {
      assert.equal(G.config.unet.arch, c.arch);
      assert.equal(G.imgResolution, c.res);
      assert.equal(G.labelDim, c.labelDim);
      assert.equal(SIGMA_INIT, 2.5);
      const want = toTfTensor(expected.tensors.get(`${c.name}.images`)!);
      const zNchw = toTfTensor(expected.tensors.get(`${c.name}.z`)!);
      const labels = toTfTensor(expected.tensors.get(`${c.name}.labels`)!) as tf.Tensor2D;
      const z = tf.transpose(zNchw, [0, 2, 3, 1]) as tf.Tensor4D;
      const x = generate(G, z, { labels, initSigma: SIGMA_INIT });
      const got = tf.transpose(x, [0, 3, 1, 2]);
      const diff = tf.tidy(() => tf.max(tf.abs(tf.sub(got, want))).dataSync()[0]);
      const scale = tf.tidy(() => tf.max(tf.abs(want)).dataSync()[0]);
      tf.dispose([want, zNchw, labels, z, x, got]);
      assert.ok(scale > 0.1, `reference images are ~0 (max |x| ${scale})`);
      assert.ok(diff <= 1e-4, `max |ours - reference| = ${diff}`);
    } finally {
      G.dispose();
    }
    assert.equal(tf.memory().numTensors, before, "tensors leaked");
  });
}
