/**
 * VAE decode speed: images per second of the Stable Diffusion VAE decoder (`lib/nets/vae.ts`,
 * the `sd-vae-ft-mse` shape: 4 levels of 128–512 channels, 50 M parameters) turning EDM2's
 * 4×64×64 latents into 512×512 RGB images, on every backend that starts. Random weights (the
 * speed does not depend on them); one warm-up batch, then `--batches` timed batches of `--batch`
 * images; `tf.memory().numTensors` must not grow across batches.
 *
 *   deno run -A bench/vae.ts [--backends webgpu,native,cpu] [--batch 1] [--batches 2] \
 *     [--latent 64] [--json out.json]
 *
 * `--latent 32` (256×256 images) measures a slow backend at all.
 *
 * @module
 */
import { tf } from "../lib/deps.ts";
import { Initializer } from "../lib/nets/init.ts";
import { decodeLatents, SD_VAE_CONFIG, VaeDecoder } from "../lib/nets/vae.ts";
import { BACKEND_NAMES } from "../lib/runtime/backend.ts";
import { startBenchBackend } from "./common.ts";
import { numberFlag, parseFlags, runMain } from "../lib/runtime/cli.ts";

const USAGE =
  "usage: bench/vae.ts [--backends webgpu,native,cpu] [--batch 1] [--batches 2] [--latent 64] [--json out.json]";

interface Row {
  backend: string;
  device: string;
  latent: number;
  image: number;
  batch: number;
  secPerImage: number;
  imgPerSec: number;
  warmupSeconds: number;
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    string: ["backends", "batch", "batches", "latent", "json"],
  }, USAGE);
  const backends = String(f.backends ?? BACKEND_NAMES.join(",")).split(",");
  const batch = numberFlag("batch", f.batch, 1, { integer: true, min: 1 });
  const batches = numberFlag("batches", f.batches, 2, { integer: true, min: 1 });
  const latent = numberFlag("latent", f.latent, 64, { integer: true, min: 1 });
  const rows: Row[] = [];
  for (const b of backends) {
    const started = await startBenchBackend(b);
    if (!started) continue;
    const { device } = started;
    const vae = new VaeDecoder(SD_VAE_CONFIG, new Initializer("random", 0));
    const z = tf.randomNormal([batch, latent, latent, 4], 0, 0.5, "float32", 1) as tf.Tensor4D;
    const once = async () => {
      const t = performance.now();
      const img = decodeLatents(vae, z);
      await img.data();
      img.dispose();
      return (performance.now() - t) / 1000;
    };
    const warmupSeconds = await once();
    console.error(`${b}: warm-up batch ${warmupSeconds.toFixed(2)} s`);
    const before = tf.memory().numTensors;
    let total = 0;
    for (let i = 0; i < batches; i++) {
      const s = await once();
      console.error(`${b}: batch ${i + 1}/${batches}: ${s.toFixed(2)} s`);
      total += s;
    }
    if (tf.memory().numTensors !== before) {
      throw new Error(`${b}: numTensors grew from ${before} to ${tf.memory().numTensors}`);
    }
    const secPerImage = total / (batches * batch);
    rows.push({
      backend: b,
      device,
      latent,
      image: latent * 8,
      batch,
      secPerImage,
      imgPerSec: 1 / secPerImage,
      warmupSeconds,
    });
    z.dispose();
    vae.dispose();
  }
  console.log("| backend | device | latents → images | batch | s / image | images / s |");
  console.log("| --- | --- | --- | --- | --- | --- |");
  for (const r of rows) {
    console.log(
      `| ${r.backend} | ${r.device} | 4×${r.latent}² → ${r.image}² | ${r.batch} | ${
        r.secPerImage.toFixed(2)
      } | ${r.imgPerSec.toFixed(3)} |`,
    );
  }
  if (f.json) await Deno.writeTextFile(String(f.json), JSON.stringify(rows, null, 2) + "\n");
});
