/**
 * The Stable Diffusion VAE decoder (lib/nets/vae.ts): parity with diffusers' `AutoencoderKL.decode`
 * at small configurations to 1e-4, loading from a diffusers folder and from a bare safetensors
 * file (old and new attention names), EDM2's latent scaling and uint8 decoding, bad files, and no
 * tensor leaks. Fixtures: tests/fixtures/nets/vae_*.safetensors, made by
 * tests/fixtures/make_vae_fixtures.py (diffusers v0.21.4).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../lib/deps.ts";
import type { HostTensor } from "../lib/io/host_tensor.ts";
import { IoError } from "../lib/io/host_tensor.ts";
import { readSafetensors, writeSafetensors } from "../lib/io/safetensors.ts";
import { readNpz } from "../lib/metrics/npz.ts";
import { createEdm2Network } from "../lib/nets/edm2.ts";
import { saveEdm2Network } from "../lib/nets/import_edm2.ts";
import {
  canonicalVaeName,
  decodeLatents,
  decodeLatentsToUint8,
  EDM2_LATENT_SCALING,
  loadVaeDecoder,
  SD_VAE_CONFIG,
  vaeConfigFromJson,
  VaeDecoder,
} from "../lib/nets/vae.ts";
import {
  fixturePath,
  maxAbs,
  maxAbsDiff,
  nhwc,
  runCpuTask,
  setupBackend,
  TEST_BACKEND,
  withTempDir,
} from "./helpers.ts";

const TOL = 1e-4;

async function fixture(name: string) {
  const { tensors, metadata } = await readSafetensors(fixturePath(`nets/vae_${name}.safetensors`));
  const state = new Map<string, HostTensor>();
  for (const [k, t] of tensors) if (k.startsWith("state.")) state.set(k.slice(6), t);
  return {
    state,
    config: JSON.parse(metadata.config),
    z: tensors.get("z")!,
    sample: tensors.get("sample")!,
  };
}

/** The fixture's state with the attention tensors under their pre-0.14 diffusers names. */
function legacyNames(state: Map<string, HostTensor>): Map<string, HostTensor> {
  const old: Record<string, string> = {
    to_q: "query",
    to_k: "key",
    to_v: "value",
    "to_out.0": "proj_attn",
  };
  return new Map([...state].map(([k, t]) => {
    const m = /^(.*\.attentions\.0\.)(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$/.exec(k);
    return [m ? `${m[1]}${old[m[2]]}.${m[3]}` : k, t];
  }));
}

for (const name of ["small", "wide"]) {
  Deno.test(`VAE decoder parity with diffusers AutoencoderKL.decode: ${name} (${TEST_BACKEND})`, async () => {
    await setupBackend();
    const fx = await fixture(name);
    const vae = new VaeDecoder(vaeConfigFromJson(fx.config));
    try {
      vae.loadStateDict(fx.state);
      const z = nhwc(fx.z) as tf.Tensor4D;
      const want = nhwc(fx.sample);
      const before = tf.memory().numTensors;
      const got = vae.decode(z);
      assert.equal(tf.memory().numTensors, before + 1, "decode leaked tensors");
      assert.deepEqual(got.shape, want.shape);
      assert.ok(await maxAbs(want) > 0.5, "reference output is degenerate");
      const err = await maxAbsDiff(got, want);
      console.log(`vae ${name}: max abs error ${err}`);
      assert.ok(err < TOL, `max abs error ${err}`);
      tf.dispose([z, want, got]);
    } finally {
      vae.dispose();
    }
  });
}

Deno.test("VAE decoder: loads a diffusers folder and a bare safetensors file alike", async () => {
  await setupBackend();
  const fx = await fixture("small");
  await withTempDir("sida-vae-", async (dir) => {
    // A diffusers folder: config.json + diffusion_pytorch_model.safetensors holding the whole
    // VAE (encoder tensors too, which are skipped), with old attention names.
    const full = legacyNames(fx.state);
    full.set("encoder.conv_in.weight", {
      dtype: "float32",
      shape: [16, 3, 3, 3],
      data: new Float32Array(432),
    });
    full.set("quant_conv.weight", {
      dtype: "float32",
      shape: [8, 8, 1, 1],
      data: new Float32Array(64),
    });
    await Deno.mkdir(join(dir, "vae"));
    await writeSafetensors(join(dir, "vae", "diffusion_pytorch_model.safetensors"), full);
    await Deno.writeTextFile(join(dir, "vae", "config.json"), JSON.stringify(fx.config));
    // A bare file with new names: the configuration comes from the tensor shapes; the group
    // count is the SD default (32), which 16 channels cannot form, so a config.json is needed
    // for this one, and the error says so.
    const bare = join(dir, "bare.safetensors");
    await writeSafetensors(bare, fx.state);
    const z = nhwc(fx.z) as tf.Tensor4D;
    const want = nhwc(fx.sample);
    const a = await loadVaeDecoder(dir); // finds vae/ inside the folder
    const got = a.decode(z);
    assert.ok((await maxAbsDiff(got, want)) < TOL);
    assert.deepEqual(a.config.blockOutChannels, [16, 32, 32]);
    await assert.rejects(
      () => loadVaeDecoder(bare),
      (e: Error) => e instanceof IoError && /unsupported VAE shapes/.test(e.message),
    );
    // With a config.json beside the bare file, it loads.
    await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(fx.config));
    const b = await loadVaeDecoder(bare);
    const got2 = b.decode(z);
    assert.ok((await maxAbsDiff(got2, want)) < TOL);
    tf.dispose([z, want, got, got2]);
    a.dispose();
    b.dispose();
  });
});

Deno.test("VAE decoder: the configuration is read off the shapes of an SD-shaped file", async () => {
  await setupBackend();
  // The SD VAE's decoder shapes (all zeros; 50 M values): no config.json needed.
  const ref = new VaeDecoder(SD_VAE_CONFIG);
  const names = ref.namedTensors().map(([n, e]) => [n, e.torchShape] as const);
  ref.dispose();
  await withTempDir("sida-vae-sd-", async (dir) => {
    const path = join(dir, "sd.safetensors");
    const state = new Map<string, HostTensor>(
      names.map((
        [n, shape],
      ) => [n, {
        dtype: "float16",
        shape,
        data: new Uint16Array(shape.reduce((a, b) => a * b, 1)),
      }]),
    );
    await writeSafetensors(path, state);
    const vae = await loadVaeDecoder(path);
    assert.deepEqual(vae.config, SD_VAE_CONFIG);
    vae.dispose();
  });
});

Deno.test("VAE decoder: bad files fail with one line naming the problem", async () => {
  await setupBackend();
  const fx = await fixture("small");
  await withTempDir("sida-vae-bad-", async (dir) => {
    await assert.rejects(
      () => loadVaeDecoder(join(dir, "missing")),
      (e: Error) => e instanceof IoError && /cannot open the VAE/.test(e.message),
    );
    await assert.rejects(() => loadVaeDecoder(dir), /no diffusion_pytorch_model\.safetensors/);
    await Deno.writeTextFile(join(dir, "vae.bin"), "x");
    await assert.rejects(
      () => loadVaeDecoder(join(dir, "vae.bin")),
      /must be a \.safetensors file/,
    );
    // A wrong-shaped tensor is named.
    const bad = new Map(fx.state);
    const t = bad.get("decoder.conv_out.weight")!;
    bad.set("decoder.conv_out.weight", { ...t, shape: [3, 16, 1, 9] });
    const path = join(dir, "diffusion_pytorch_model.safetensors");
    await writeSafetensors(path, bad);
    await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(fx.config));
    await assert.rejects(
      () => loadVaeDecoder(dir),
      (e: Error) =>
        e instanceof IoError && /conv_out\.weight/.test(e.message) && !e.message.includes("\n"),
    );
    // Another model's config.
    await Deno.writeTextFile(
      join(dir, "config.json"),
      JSON.stringify({ _class_name: "UNet2DModel" }),
    );
    await assert.rejects(() => loadVaeDecoder(dir), /not an AutoencoderKL/);
    await Deno.writeTextFile(join(dir, "config.json"), "{");
    await assert.rejects(() => loadVaeDecoder(dir), /not valid JSON/);
    // A truncated weights file.
    await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(fx.config));
    const bytes = await Deno.readFile(path);
    await Deno.writeFile(path, bytes.subarray(0, bytes.length - 100));
    await assert.rejects(() => loadVaeDecoder(dir), IoError);
  });
  const vae = new VaeDecoder(vaeConfigFromJson(fx.config));
  assert.throws(
    () => vae.decode(tf.zeros([1, 8, 8, 3]) as tf.Tensor4D),
    /latents must be \[N, h, w, 4\]/,
  );
  vae.dispose();
});

Deno.test("VAE names: old attention names map to today's; others are unchanged", () => {
  assert.equal(
    canonicalVaeName("decoder.mid_block.attentions.0.query.weight"),
    "decoder.mid_block.attentions.0.to_q.weight",
  );
  assert.equal(
    canonicalVaeName("decoder.mid_block.attentions.0.proj_attn.bias"),
    "decoder.mid_block.attentions.0.to_out.0.bias",
  );
  assert.equal(
    canonicalVaeName("decoder.mid_block.attentions.0.to_k.weight"),
    "decoder.mid_block.attentions.0.to_k.weight",
  );
  assert.equal(
    canonicalVaeName("decoder.up_blocks.0.resnets.0.conv1.weight"),
    "decoder.up_blocks.0.resnets.0.conv1.weight",
  );
});

Deno.test("EDM2 latent decoding: scaling constants, (x − bias)/scale, clamp, ×255, truncation; no leaks", async () => {
  await setupBackend();
  // NVlabs/edm2 training/encoders.py:79-100, float32: 0.5/raw_std and −raw_mean·scale.
  const wantScale = [0.11990407, 0.10822511, 0.13477089, 0.15243903];
  const wantBias = [-0.69664264, -0.3517316, -0.01617251, 0.32774392];
  EDM2_LATENT_SCALING.scale.forEach((s, i) => assert.ok(Math.abs(s - wantScale[i]) < 1e-8));
  EDM2_LATENT_SCALING.bias.forEach((b, i) => assert.ok(Math.abs(b - wantBias[i]) < 1e-7));
  const fx = await fixture("small");
  const vae = new VaeDecoder(vaeConfigFromJson(fx.config));
  vae.loadStateDict(fx.state);
  // Normalised latents whose raw values are the fixture's z: x = z·scale + bias.
  const z = nhwc(fx.z) as tf.Tensor4D;
  const x = tf.add(tf.mul(z, tf.tensor1d(wantScale)), tf.tensor1d(wantBias)) as tf.Tensor4D;
  const want = nhwc(fx.sample);
  const got = decodeLatents(vae, x);
  const ref = tf.floor(tf.mul(tf.clipByValue(want, 0, 1), 255));
  const g = await got.data(), r = await ref.data();
  let off = 0, exact = 0, clipped = 0;
  for (let i = 0; i < g.length; i++) {
    off = Math.max(off, Math.abs(g[i] - r[i]));
    if (g[i] === r[i]) exact++;
    if (r[i] === 0 || r[i] === 255) clipped++;
  }
  // Truncation of values within 1e-4 of an integer may differ by one level.
  assert.ok(off <= 1, `uint8 off by ${off}`);
  assert.ok(exact >= 0.99 * g.length, `${exact} of ${g.length} exact`);
  assert.ok(
    clipped > 0 && clipped < g.length,
    "the fixture exercises the clamp on some values only",
  );
  // Batched uint8 decoding gives the same values, and the loop keeps numTensors flat.
  const before = tf.memory().numTensors;
  const u = await decodeLatentsToUint8(vae, x, { batch: 1 });
  assert.equal(tf.memory().numTensors, before);
  assert.deepEqual(u.shape, got.shape);
  assert.deepEqual(Array.from(u.data), Array.from(g));
  tf.dispose([z, x, want, got, ref]);
  vae.dispose();
});

// ---------------------------------------------------------------------------------------------
// `deno task generate` / `deno task eval` with a latent generator.

const runTask = runCpuTask;

/** Lines of stderr other than the backend banner (an error is one line). */
const errorLines = (stderr: string) =>
  stderr.trim().split("\n").filter((l) => !l.startsWith("backend:")).length;

Deno.test("generate/eval: a latent EDM2 generator is decoded by --vae, and refused without it", async () => {
  await setupBackend();
  const fx = await fixture("small");
  await withTempDir("sida-vae-task-", async (dir) => {
    const gen = join(dir, "g.safetensors");
    const net = createEdm2Network({
      imgResolution: 8,
      imgChannels: 4,
      labelDim: 0,
      logvarChannels: 8,
      unet: { modelChannels: 8, channelMult: [1, 2], numBlocks: 1, attnResolutions: [] },
    }, { seed: 3 });
    await saveEdm2Network(net, gen);
    net.dispose();
    const vaeDir = join(dir, "vae");
    await Deno.mkdir(vaeDir);
    await writeSafetensors(join(vaeDir, "diffusion_pytorch_model.safetensors"), fx.state);
    await Deno.writeTextFile(join(vaeDir, "config.json"), JSON.stringify(fx.config));
    const npz = join(dir, "samples.npz");
    const ok = await runTask([
      "tasks/generate.ts",
      "--generator",
      gen,
      "--vae",
      vaeDir,
      "--num",
      "3",
      "--batch",
      "2",
      "--out",
      npz,
    ]);
    assert.equal(ok.code, 0, ok.stderr);
    const images = (await readNpz(npz)).get("images")!;
    // 8×8 latents through a 3-level VAE (two 2× upsamplers): 32×32 RGB.
    assert.deepEqual(images.shape, [3, 32, 32, 3]);
    const px = images.data as Uint8Array;
    assert.ok(new Set(px).size > 20, "decoded images are not flat");
    // Without the VAE: one line naming the problem, nothing written.
    const npz2 = join(dir, "none.npz");
    const no = await runTask([
      "tasks/generate.ts",
      "--generator",
      gen,
      "--num",
      "2",
      "--out",
      npz2,
    ]);
    assert.notEqual(no.code, 0);
    assert.match(no.stderr, /4-channel latents: give the VAE/);
    assert.equal(errorLines(no.stderr), 1, no.stderr);
    await assert.rejects(() => Deno.stat(npz2), Deno.errors.NotFound);
    // A VAE for other latents (8 channels): refused before sampling, by eval too.
    const wrong = join(dir, "wrong");
    await Deno.mkdir(wrong);
    await writeSafetensors(join(wrong, "diffusion_pytorch_model.safetensors"), fx.state);
    await Deno.writeTextFile(
      join(wrong, "config.json"),
      JSON.stringify({ ...fx.config, latent_channels: 8 }),
    );
    const bad = await runTask([
      "tasks/eval.ts",
      "--generator",
      gen,
      "--vae",
      wrong,
      "--num",
      "2",
      "--out",
      join(dir, "ev"),
    ]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /conv_in\.weight|8-channel latents/);
    assert.equal(errorLines(bad.stderr), 1, bad.stderr);
  });
});
