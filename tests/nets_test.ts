/**
 * Network construction, state dicts, saving and loading, gradients, training mode, memory, and
 * errors. Parity with the reference outputs is in nets_parity_test.ts.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import {
  ConfigError,
  fromEdmKwargs,
  type NetworkConfigInput,
  preset,
  PRESET_NAMES,
  toEdmKwargs,
} from "../lib/nets/config.ts";
import { StateDictError } from "../lib/nets/module.ts";
import { createNetwork, loadNetwork, saveNetwork } from "../lib/nets/network.ts";
import { EDMPrecond, InputError } from "../lib/nets/precond.ts";
import { conv2dIm2colGrad, dropout, withDropoutSeed } from "../lib/nets/layers.ts";
import { IoError, toFloat32 } from "../lib/io/host_tensor.ts";
import { readSafetensors, writeSafetensors } from "../lib/io/safetensors.ts";
import { fixturePath, loadNetFixture, maxAbsDiff, setupBackend, TEST_BACKEND } from "./helpers.ts";

interface PresetRecord {
  kwargs: Record<string, unknown>;
  params: [string, number[]][];
  buffers: [string, number[]][];
  param_count: number;
}

/** A tiny conditional network with attention, for gradient and memory tests. */
function tinyConfig(arch: "SongUNet" | "DhariwalUNet" = "SongUNet"): NetworkConfigInput {
  const common = { imgResolution: 8, imgChannels: 2, labelDim: 3, augmentDim: 9 };
  return arch === "SongUNet"
    ? {
      ...common,
      unet: {
        arch,
        modelChannels: 8,
        channelMult: [1, 2],
        numBlocks: 1,
        attnResolutions: [4],
        dropout: 0.2,
        labelDropout: 0.5,
      },
    }
    : {
      ...common,
      unet: {
        arch,
        modelChannels: 64,
        channelMult: [1, 2],
        numBlocks: 1,
        attnResolutions: [4],
        dropout: 0.2,
      },
    };
}

Deno.test("official presets build with exactly the reference parameter names, shapes and counts", async () => {
  await setupBackend();
  const presets: Record<string, PresetRecord> = JSON.parse(
    await Deno.readTextFile(fixturePath("nets/presets.json")),
  );
  for (const name of PRESET_NAMES) {
    const ref = presets[name];
    assert.ok(ref, `presets.json lacks ${name}`);
    // The preset equals the reference kwargs (after filling defaults on both sides).
    assert.deepEqual(toEdmKwargs(preset(name)), toEdmKwargs(fromEdmKwargs(ref.kwargs)), name);
    // Build on the CPU backend: ADM ImageNet-64 holds 1.2 GB of weights.
    const prev = tf.getBackend();
    await tf.setBackend("cpu");
    const net = new EDMPrecond(preset(name), { init: "zeros" });
    try {
      const ours = net.namedTensors();
      const params = ours.filter(([, e]) => e.kind === "param").map(([n, e]) => [n, e.torchShape]);
      const buffers = ours.filter(([, e]) => e.kind === "buffer").map((
        [n, e],
      ) => [n, e.torchShape]);
      assert.deepEqual(params, ref.params, `${name}: parameter names/shapes/order`);
      assert.deepEqual(
        buffers.map(([n, s]) => `${n}:${s}`).sort(),
        ref.buffers.map(([n, s]) => `${n}:${s}`).sort(),
        `${name}: buffers`,
      );
      assert.equal(net.numParameters(), ref.param_count, `${name}: parameter count`);
    } finally {
      net.dispose();
      await tf.setBackend(prev);
    }
  }
  assert.equal(presets["cifar10-ddpmpp-cond"].param_count, 55_735_299);
  assert.equal(presets["cifar10-ddpmpp-uncond"].param_count, 55_733_891);
  assert.equal(presets["imagenet64-adm"].param_count, 295_899_267);
});

Deno.test("state dict round trip reproduces the fixture tensors exactly", async () => {
  await setupBackend();
  const fx = await loadNetFixture("ncsnpp_cond");
  try {
    const state = await fx.net.stateDict();
    const ref = [...fx.tensors.keys()].filter((k) => k.startsWith("model."));
    assert.deepEqual([...state.keys()].sort(), ref.sort());
    for (const k of ref) {
      const a = state.get(k)!;
      const b = fx.tensors.get(k)!;
      assert.deepEqual(a.shape, b.shape, k);
      // Fixture parameters are F16 (buffers F32); the network returns float32 either way.
      assert.deepEqual(a.data, toFloat32(b), k);
    }
  } finally {
    fx.net.dispose();
  }
});

Deno.test("save then load gives bit-identical outputs, with the config in the metadata", async () => {
  await setupBackend();
  const dir = await Deno.makeTempDir();
  for (const arch of ["SongUNet", "DhariwalUNet"] as const) {
    const net = createNetwork(tinyConfig(arch), { seed: 3 });
    const path = `${dir}/${arch}.safetensors`;
    await saveNetwork(net, path);
    const { metadata } = await readSafetensors(path);
    assert.equal(metadata.format, "sida-network/1");
    assert.deepEqual(fromEdmKwargs(JSON.parse(metadata.config)), net.config);
    const again = await loadNetwork(path);
    const x = tf.randomNormal([3, 8, 8, 2], 0, 1, "float32", 5) as tf.Tensor4D;
    const labels = tf.oneHot([0, 2, 1], 3).toFloat() as tf.Tensor2D;
    const a = net.denoise(x, [0.1, 1, 10], { labels, returnFlag: "encoder_decoder" });
    const b = again.denoise(x, [0.1, 1, 10], { labels, returnFlag: "encoder_decoder" });
    assert.deepEqual(await a.denoised.data(), await b.denoised.data());
    assert.deepEqual(await a.logits.data(), await b.logits.data());
    tf.dispose([x, labels, a.denoised, a.logits, b.denoised, b.logits]);
    net.dispose();
    again.dispose();
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("loadStateDict rejects missing, unexpected and wrong-shape tensors and changes nothing", async () => {
  await setupBackend();
  const net = createNetwork(tinyConfig(), { seed: 1 });
  const state = await net.stateDict();
  const before = await net.stateDict();
  const missing = new Map(state);
  missing.delete("model.map_layer0.weight");
  assert.throws(
    () => net.loadStateDict(missing),
    (e: Error) =>
      e instanceof StateDictError && /missing model\.map_layer0\.weight/.test(e.message),
  );
  const extra = new Map(state);
  extra.set("model.bogus", { dtype: "float32", shape: [1], data: new Float32Array(1) });
  assert.throws(() => net.loadStateDict(extra), /unexpected model\.bogus/);
  const wrong = new Map(state);
  wrong.set("model.map_layer0.bias", { dtype: "float32", shape: [3], data: new Float32Array(3) });
  assert.throws(() => net.loadStateDict(wrong), /wrong shape model\.map_layer0\.bias/);
  // Nothing changed.
  const after = await net.stateDict();
  for (const [k, v] of before) assert.deepEqual(after.get(k)!.data, v.data, k);
  // Non-strict loading ignores extra names and keeps missing ones.
  net.loadStateDict(extra, { strict: false });
  net.dispose();
});

Deno.test("loadNetwork: missing file, non-network safetensors, corrupt file give IoError", async () => {
  await setupBackend();
  const dir = await Deno.makeTempDir();
  await assert.rejects(loadNetwork(`${dir}/nope.safetensors`), IoError);
  await writeSafetensors(`${dir}/plain.safetensors`, {
    a: { dtype: "float32", shape: [1], data: new Float32Array(1) },
  });
  await assert.rejects(loadNetwork(`${dir}/plain.safetensors`), /no network config/);
  await Deno.writeFile(`${dir}/junk.safetensors`, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9]));
  await assert.rejects(loadNetwork(`${dir}/junk.safetensors`), IoError);
  // A network file whose config does not match its tensors.
  const net = createNetwork(tinyConfig(), { seed: 1 });
  const state = await net.stateDict();
  const kw = toEdmKwargs(net.config);
  await writeSafetensors(`${dir}/mismatch.safetensors`, state, {
    format: "sida-network/1",
    class: "EDMPrecond",
    config: JSON.stringify({ ...kw, model_channels: 16 }),
  });
  await assert.rejects(loadNetwork(`${dir}/mismatch.safetensors`), /does not match the network/);
  net.dispose();
  await Deno.remove(dir, { recursive: true });
});

/**
 * Checks a gradient against central finite differences of `f` along the (normalised) gradient
 * direction, where the directional derivative equals the gradient's norm: a wrong gradient
 * (wrong direction or size) cannot pass. Float32 round-off limits the accuracy to about 1%.
 */
async function checkAlongGradient(
  f: () => tf.Scalar,
  vars: tf.Variable[],
  label: string,
): Promise<number> {
  const { grads, value } = tf.variableGrads(f, vars);
  value.dispose();
  const g = vars.map((v) => {
    assert.ok(grads[v.name], `${label}: no gradient for a variable of shape [${v.shape}]`);
    return grads[v.name];
  });
  // Summed on the host: tfjs-webgpu's AddN gives garbage for more inputs than the adapter's
  // storage-buffer limit (seen on llvmpipe with ~280 inputs).
  let sq = 0;
  for (const gi of g) {
    const t = tf.tidy(() => tf.sum(tf.square(gi)));
    sq += (await t.data())[0];
    t.dispose();
  }
  const norm = Math.sqrt(sq);
  assert.ok(norm > 1e-3, `${label}: gradient is degenerate (norm ${norm})`);
  const dirs = g.map((gi) => tf.div(gi, norm));
  tf.dispose(g);
  // The step along the unit direction: big enough that the change of f, 2h·|g|, stands well above
  // f's float32 rounding noise, which is not smooth in the weights and differs between backends
  // (their sums run in different orders): ~1e-5·|f| seen on webgpu; at most 0.1.
  const f0 = f();
  const scale = Math.abs((await f0.data())[0]);
  f0.dispose();
  const h = Math.min(0.1, Math.max(1e-2, (2e-3 * scale) / norm));
  const shift = (k: number) =>
    tf.tidy(() => vars.forEach((v, i) => v.assign(tf.add(v, tf.mul(dirs[i], k)))));
  shift(h);
  const fp = f();
  shift(-2 * h);
  const fm = f();
  shift(h);
  const numeric = ((await fp.data())[0] - (await fm.data())[0]) / (2 * h);
  tf.dispose([fp, fm, ...dirs]);
  const rel = Math.abs(norm - numeric) / norm;
  assert.ok(
    rel < 1e-2,
    `${label}: gradient norm ${norm} vs finite difference ${numeric} (rel ${rel}, step ${h})`,
  );
  return norm;
}

for (const arch of ["SongUNet", "DhariwalUNet"] as const) {
  Deno.test(`gradients through denoise agree with finite differences: ${arch} (${TEST_BACKEND})`, async () => {
    await setupBackend();
    const net = createNetwork(tinyConfig(arch), { seed: 11 });
    // Give every weight a non-trivial value (EDM inits some layers to ~0).
    for (const [, v] of net.namedParameters()) {
      v.assign(tf.tidy(() => tf.add(v, tf.randomNormal(v.shape, 0, 0.2, "float32", v.size))));
    }
    const x = tf.variable(tf.randomNormal([2, 8, 8, 2], 0, 1, "float32", 1), true);
    const r = tf.randomNormal([2, 8, 8, 2], 0, 1, "float32", 2);
    const rl = tf.randomNormal([2, 4, 4, 1], 0, 1, "float32", 3);
    const labels = tf.oneHot([0, 2], 3).toFloat() as tf.Tensor2D;
    const aug = tf.randomNormal([2, 9], 0, 0.5, "float32", 8) as tf.Tensor2D;
    const f = () =>
      tf.tidy(() => {
        const { denoised, logits } = net.denoise(x as tf.Tensor4D, [0.3, 2.0], {
          labels,
          augmentLabels: aug,
          returnFlag: "encoder_decoder",
        });
        return tf.add(tf.sum(tf.mul(denoised, r)), tf.sum(tf.mul(logits, rl))) as tf.Scalar;
      });
    const before = tf.memory().numTensors;
    await checkAlongGradient(f, [x], `${arch} d/dx`);
    const named = net.namedParameters();
    await checkAlongGradient(f, named.map(([, v]) => v), `${arch} d/d(all weights)`);
    // A few individual tensors of different kinds: embedding, attention, norm, output.
    for (const [name, v] of named) {
      if (
        /map_layer0\.weight|map_label\.weight|qkv\.weight|enc\.8x8_conv\.weight|norm1\.weight$/
          .test(name)
      ) {
        await checkAlongGradient(f, [v], `${arch} d/d${name}`);
      }
    }
    assert.equal(tf.memory().numTensors, before, "gradient computation leaked tensors");
    tf.dispose([x, r, rl, labels, aug]);
    net.dispose();
  });
}

Deno.test("training mode: dropout and label dropout act only when training", async () => {
  await setupBackend();
  const net = createNetwork(tinyConfig(), { seed: 2 });
  for (const [, v] of net.namedParameters()) {
    v.assign(tf.tidy(() => tf.add(v, tf.randomNormal(v.shape, 0, 0.2, "float32", 7))));
  }
  const x = tf.randomNormal([4, 8, 8, 2], 0, 1, "float32", 9) as tf.Tensor4D;
  const labels = tf.oneHot([0, 1, 2, 0], 3).toFloat() as tf.Tensor2D;
  const e1 = net.denoise(x, 1.0, { labels });
  const e2 = net.denoise(x, 1.0, { labels });
  assert.equal(await maxAbsDiff(e1, e2), 0, "eval mode must be deterministic");
  const t1 = net.denoise(x, 1.0, { labels, training: true });
  const t2 = net.denoise(x, 1.0, { labels, training: true });
  assert.ok((await maxAbsDiff(t1, t2)) > 1e-4, "training mode must apply dropout");
  assert.equal(net.training, false, "denoise must restore the previous mode");
  tf.dispose([x, labels, e1, e2, t1, t2]);
  net.dispose();
});

Deno.test("the encoder flag skips the decoder and matches encoder_decoder logits", async () => {
  await setupBackend();
  const net = createNetwork(tinyConfig(), { seed: 4 });
  const x = tf.randomNormal([2, 8, 8, 2], 0, 1, "float32", 9) as tf.Tensor4D;
  // Break the decoder: the encoder-only path must not touch it.
  const dec = net.namedTensors().filter(([n]) => n.startsWith("model.dec."));
  const good = await net.stateDict();
  const l1 = net.denoise(x, 0.7, { returnFlag: "encoder" });
  for (const [, e] of dec) e.variable.assign(tf.fill(e.variable.shape, NaN));
  const l2 = net.denoise(x, 0.7, { returnFlag: "encoder" });
  assert.deepEqual(l1.shape, [2, 4, 4, 1]);
  assert.equal(await maxAbsDiff(l1, l2), 0);
  net.loadStateDict(good);
  const both = net.denoise(x, 0.7, { returnFlag: "encoder_decoder" });
  assert.equal(await maxAbsDiff(l1, both.logits), 0);
  tf.dispose([x, l1, l2, both.denoised, both.logits]);
  net.dispose();
});

Deno.test("repeated denoise calls keep tf.memory().numTensors flat", async () => {
  await setupBackend();
  const net = createNetwork(tinyConfig(), { seed: 5 });
  const x = tf.randomNormal([2, 8, 8, 2]) as tf.Tensor4D;
  const labels = tf.oneHot([0, 1], 3).toFloat() as tf.Tensor2D;
  const aug = tf.zeros([2, 9]) as tf.Tensor2D;
  const start = tf.memory().numTensors;
  for (let i = 0; i < 5; i++) {
    for (const flag of ["decoder", "encoder", "encoder_decoder"] as const) {
      const out = net.denoise(x, i % 2 ? 0.5 : [0.2, 3], {
        labels,
        augmentLabels: aug,
        returnFlag: flag,
        training: i % 2 === 0,
      });
      tf.dispose(out as tf.TensorContainer);
    }
  }
  assert.equal(tf.memory().numTensors, start);
  tf.dispose([x, labels, aug]);
  net.dispose();
});

Deno.test("bad inputs and configs give clear errors", async () => {
  await setupBackend();
  const net = createNetwork(tinyConfig(), { seed: 6 });
  const x = tf.zeros([2, 8, 8, 2]) as tf.Tensor4D;
  const nchw = tf.zeros([2, 2, 8, 8]) as tf.Tensor4D;
  assert.throws(
    () => net.denoise(nchw, 1),
    (e: Error) => e instanceof InputError && /NHWC/.test(e.message),
  );
  assert.throws(() => net.denoise(x, [1, 2, 3]), /sigma must hold 1 or 2 values/);
  assert.throws(
    () => net.denoise(x, 1, { labels: tf.zeros([2, 5]) as tf.Tensor2D }),
    /labels must be \[2, 3\]/,
  );
  assert.throws(
    () => net.denoise(x, 1, { returnFlag: "bogus" as "decoder" }),
    /invalid returnFlag/,
  );
  assert.throws(
    () => fromEdmKwargs({ img_resolution: 32, img_channels: 3, model_type: "SongUNet", bogus: 1 }),
    ConfigError,
  );
  assert.throws(
    () => fromEdmKwargs({ img_resolution: 32, img_channels: 3, model_type: "UNet" }),
    /unknown model_type/,
  );
  assert.throws(() => preset("nope"), /unknown preset 'nope'/);
  assert.throws(
    () =>
      createNetwork({ imgResolution: 30, unet: { arch: "SongUNet", channelMult: [1, 2, 2, 2] } }),
    /not divisible/,
  );
  tf.dispose([x, nchw]);
  net.dispose();
});

Deno.test("conv2dIm2colGrad: values and both gradients equal tf.conv2d's", async () => {
  await setupBackend();
  const before = tf.memory().numTensors;
  for (const [k, pad, ci, co] of [[3, 1, 5, 7], [1, 0, 4, 6], [3, 2, 3, 4]]) {
    const x = tf.randomNormal([2, 6, 6, ci], 0, 1, "float32", 1) as tf.Tensor4D;
    const w = tf.randomNormal([k, k, ci, co], 0, 1, "float32", 2) as tf.Tensor4D;
    const yRef = tf.conv2d(x, w, 1, pad);
    const y = conv2dIm2colGrad(x, w, pad);
    const r = tf.randomNormal(yRef.shape, 0, 1, "float32", 3);
    const loss = (conv: typeof conv2dIm2colGrad) => (a: tf.Tensor, b: tf.Tensor) =>
      tf.sum(tf.mul(conv(a as tf.Tensor4D, b as tf.Tensor4D, pad), r));
    const ref = tf.grads(loss((a, b, p) => tf.conv2d(a, b, 1, p)))([x, w]);
    const ours = tf.grads(loss(conv2dIm2colGrad))([x, w]);
    assert.ok((await maxAbsDiff(y, yRef)) < 1e-5, `value k=${k} pad=${pad}`);
    assert.ok((await maxAbsDiff(ours[0], ref[0])) < 1e-4, `dx k=${k} pad=${pad}`);
    assert.ok((await maxAbsDiff(ours[1], ref[1])) < 1e-4, `dw k=${k} pad=${pad}`);
    tf.dispose([x, w, yRef, y, r, ...ref, ...ours]);
  }
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("dropout: masks seeded by withDropoutSeed, one stream per forward pass", async () => {
  await setupBackend();
  const x = tf.ones([64, 16]);
  const masks = async (seed: number) => {
    const [a, b] = withDropoutSeed(seed, () => [dropout(x, 0.5, true), dropout(x, 0.5, true)]);
    const out = [await a.array() as number[][], await b.array() as number[][]];
    tf.dispose([a, b]);
    return out;
  };
  const [a1, b1] = await masks(7), [a2, b2] = await masks(7), [a3] = await masks(8);
  assert.deepEqual(a1, a2, "same seed, same first mask");
  assert.deepEqual(b1, b2, "same seed, same second mask");
  assert.notDeepEqual(a1, b1, "successive masks of one pass differ");
  assert.notDeepEqual(a1, a3, "another seed, another mask");
  // Inverted dropout: kept values are 1/(1-p) = 2, and about half are kept.
  const flat = a1.flat();
  assert(flat.every((v) => v === 0 || v === 2));
  const kept = flat.filter((v) => v === 2).length;
  assert(kept > 400 && kept < 624, `${kept} of 1024 kept`);
  // Eval mode is the identity; async callbacks are refused.
  const same = dropout(x, 0.5, false);
  assert.equal(same, x);
  assert.throws(() => withDropoutSeed(1, () => Promise.resolve(1)), TypeError);
  x.dispose();
});
