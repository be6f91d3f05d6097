/**
 * Parity with the reference PyTorch implementation (NVlabs/edm `EDMPrecond` + SongUNet /
 * DhariwalUNet, and SiD's `EDMPrecond_EncoderDecoder` for the encoder logits): every recorded
 * case of every fixture network must match to a max abs error of 1e-4 in float32.
 * Fixtures: tests/fixtures/nets/*.safetensors, made by tests/fixtures/make_net_fixtures.py.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import { loadNetFixture, maxAbs, maxAbsDiff, nhwc, setupBackend, TEST_BACKEND } from "./helpers.ts";

const TOL = 1e-4;
const NETS = ["ddpmpp_cond_aug", "ddpmpp_uncond", "ncsnpp_cond", "songunet_skip", "adm_cond"];

for (const name of NETS) {
  Deno.test(`parity with the reference: ${name} (${TEST_BACKEND})`, async () => {
    await setupBackend();
    const fx = await loadNetFixture(name);
    try {
      for (let i = 0; i < fx.cases.length; i++) {
        const c = fx.cases[i];
        const get = (k: string) => fx.tensors.get(`c${i}.${k}`);
        const x = nhwc(get("x")!) as tf.Tensor4D;
        const sigma = nhwc(get("sigma")!);
        const labels = c.labels ? nhwc(get("labels")!) as tf.Tensor2D : undefined;
        const augmentLabels = c.augment ? nhwc(get("augment_labels")!) as tf.Tensor2D : undefined;
        const wantD = nhwc(get("denoised")!);
        const wantL = nhwc(get("logits")!);
        const before = tf.memory().numTensors;

        const d = fx.net.denoise(x, sigma, { labels, augmentLabels });
        const l = fx.net.denoise(x, sigma, { labels, augmentLabels, returnFlag: "encoder" });
        const both = fx.net.denoise(x, sigma, {
          labels,
          augmentLabels,
          returnFlag: "encoder_decoder",
        });
        assert.equal(tf.memory().numTensors, before + 4, "denoise leaked tensors");

        const errD = await maxAbsDiff(d, wantD);
        const errL = await maxAbsDiff(l, wantL);
        const errBothD = await maxAbsDiff(both.denoised, wantD);
        const errBothL = await maxAbsDiff(both.logits, wantL);
        const scale = await maxAbs(wantD);
        assert.ok(scale > 0.01, "reference output is degenerate");
        for (
          const [what, err] of [["denoised", errD], ["logits", errL], ["e_d denoised", errBothD], [
            "e_d logits",
            errBothL,
          ]] as const
        ) {
          assert.ok(err < TOL, `${name} case ${i} ${what}: max abs error ${err}`);
        }
        tf.dispose(
          [x, sigma, labels, augmentLabels, wantD, wantL, d, l, both.denoised, both.logits].filter((
            t,
          ) => t) as tf.Tensor[],
        );
      }
    } finally {
      fx.net.dispose();
    }
  });
}
