/**
 * EDM2 networks (lib/nets/edm2.ts): parity with NVlabs/edm2 `training.networks_edm2.Precond`
 * (denoised output, `return_logvar`, SiDA encoder logits) at small widths to 1e-4, forced weight
 * normalisation, and no tensor leaks over forward/backward. Fixtures:
 * tests/fixtures/nets/edm2_*.safetensors, made by tests/fixtures/make_edm2_fixtures.py.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import {
  createEdm2Network,
  EDM2Precond,
  edm2Preset,
  estimateEdm2Parameters,
  fromEdm2Kwargs,
  MPConv,
  mpNormalize,
  toEdm2Kwargs,
} from "../lib/nets/edm2.ts";
import { Initializer } from "../lib/nets/init.ts";
import {
  importEdm2Network,
  importEdm2ToSafetensors,
  inspectEdm2Pickle,
  loadEdm2Network,
  saveEdm2Network,
} from "../lib/nets/import_edm2.ts";
import { withShapesOnly } from "../lib/nets/module.ts";
import { readSafetensors as readSt } from "../lib/io/safetensors.ts";
import {
  fakeScoreLoss,
  sidaGeneratorAdversarialLoss,
  sidGeneratorLoss,
} from "../lib/distill/losses.ts";
import { EDM2_P_MEAN, EDM2_P_STD } from "../lib/distill/sigma.ts";
import { fixturePath, maxAbs, maxAbsDiff, nhwc, setupBackend, TEST_BACKEND } from "./helpers.ts";

const TOL = 1e-4;

async function load(name: string) {
  const { tensors, metadata } = await readSafetensors(fixturePath(`nets/edm2_${name}.safetensors`));
  const config = fromEdm2Kwargs(JSON.parse(metadata.config));
  const net = new EDM2Precond(config, { init: "zeros" });
  const isState = (k: string) => !/^c\d+\./.test(k) && !k.startsWith("renorm.");
  net.loadStateDict(new Map([...tensors].filter(([k]) => isState(k))));
  return { net, tensors, cases: JSON.parse(metadata.cases) as { labels: boolean }[] };
}

for (const name of ["cond", "uncond"]) {
  Deno.test(`EDM2 parity with the reference: ${name} (${TEST_BACKEND})`, async () => {
    await setupBackend();
    const fx = await load(name);
    try {
      for (let i = 0; i < fx.cases.length; i++) {
        const get = (k: string) => nhwc(fx.tensors.get(`c${i}.${k}`)!);
        const x = get("x") as tf.Tensor4D;
        const sigma = get("sigma");
        const labels = fx.cases[i].labels ? get("labels") as tf.Tensor2D : undefined;
        const wantD = get("denoised"), wantL = get("logits"), wantV = get("logvar");
        const before = tf.memory().numTensors;
        const d = fx.net.denoise(x, sigma, { labels });
        const l = fx.net.denoise(x, sigma, { labels, returnFlag: "encoder" });
        const both = fx.net.denoise(x, sigma, { labels, returnFlag: "encoder_decoder" });
        const v = fx.net.logvar(sigma);
        assert.equal(tf.memory().numTensors, before + 5, "denoise/logvar leaked tensors");
        assert.ok(await maxAbs(wantD) > 0.01, "reference output is degenerate");
        assert.ok(await maxAbs(wantL) > 0.01, "reference logits are degenerate");
        const errs = {
          denoised: await maxAbsDiff(d, wantD),
          logits: await maxAbsDiff(l, wantL),
          "e_d denoised": await maxAbsDiff(both.denoised, wantD),
          "e_d logits": await maxAbsDiff(both.logits, wantL),
          logvar: await maxAbsDiff(v, wantV),
        };
        console.log(`edm2 ${name} c${i}: ${JSON.stringify(errs)}`);
        for (const [what, err] of Object.entries(errs)) {
          assert.ok(err < TOL, `${name} case ${i} ${what}: max abs error ${err}`);
        }
        tf.dispose([x, sigma, wantD, wantL, wantV, d, l, both.denoised, both.logits, v]);
        if (labels) labels.dispose();
      }
    } finally {
      fx.net.dispose();
    }
  });
}

Deno.test("EDM2 forced weight normalisation: as the reference, each row at unit magnitude", async () => {
  await setupBackend();
  const fx = await load("uncond");
  try {
    // Scale some rows far from unit magnitude first: renormalisation must undo any scale.
    const sd = await fx.net.stateDict();
    fx.net.renormalize();
    const after = await fx.net.stateDict();
    let checked = 0;
    for (const [name, want] of fx.tensors) {
      if (!name.startsWith("renorm.")) continue;
      const key = name.slice("renorm.".length);
      const got = after.get(key)!;
      assert.ok(sd.get(key), key);
      let err = 0;
      for (let j = 0; j < got.data.length; j++) {
        err = Math.max(
          err,
          Math.abs((got.data as Float32Array)[j] - (want.data as Float32Array)[j]),
        );
      }
      assert.ok(err < 1e-5, `${key}: differs from the reference's renormalised weight by ${err}`);
      // Each output row: sum of squares = fan_in (unit magnitude per element), up to eps.
      const rows = got.shape[0], fan = got.data.length / rows;
      for (let r = 0; r < rows; r++) {
        let ss = 0;
        for (let j = 0; j < fan; j++) ss += (got.data as Float32Array)[r * fan + j] ** 2;
        assert.ok(
          Math.abs(Math.sqrt(ss / fan) - 1) < 1e-3,
          `${key} row ${r}: rms ${Math.sqrt(ss / fan)}`,
        );
      }
      checked++;
    }
    assert.equal(checked, fx.net.mpConvs().length);
    // Scale invariance: a weight times 7 renormalises to the same value; outputs do not change.
    const x = tf.randomNormal([2, 8, 8, 3], 0, 1, "float32", 3) as tf.Tensor4D;
    const d0 = fx.net.denoise(x, [0.5, 3]);
    const w = fx.net.unet.outConv.weight;
    w.assign(tf.tidy(() => tf.mul(w, 7)));
    const d1 = fx.net.denoise(x, [0.5, 3]);
    fx.net.renormalize();
    const d2 = fx.net.denoise(x, [0.5, 3]);
    assert.ok(await maxAbsDiff(d0, d1) < 1e-4, "output not invariant to weight scale");
    assert.ok(await maxAbsDiff(d0, d2) < 1e-5);
    tf.dispose([x, d0, d1, d2]);
  } finally {
    fx.net.dispose();
  }
});

Deno.test("EDM2: tf.memory().numTensors flat over repeated forward/backward + renormalize", async () => {
  await setupBackend();
  const fx = await load("cond");
  try {
    const x = tf.randomNormal([2, 16, 16, 4], 0, 1, "float32", 5) as tf.Tensor4D;
    const labels = tf.oneHot([1, 7], 10).toFloat() as tf.Tensor2D;
    const sigma = tf.tensor1d([0.3, 4]);
    const vars = fx.net.namedParameters().map(([, v]) => v);
    const counts: number[] = [];
    for (let it = 0; it < 4; it++) {
      const { value, grads } = tf.variableGrads(() => {
        const { denoised, logits } = fx.net.denoise(x, sigma, {
          labels,
          returnFlag: "encoder_decoder",
          training: true,
        });
        const lv = fx.net.logvar(sigma);
        return tf.addN([
          tf.mean(tf.div(tf.square(tf.sub(denoised, x)), tf.exp(lv))),
          tf.mean(lv),
          tf.mean(logits),
        ]) as tf.Scalar;
      }, vars);
      assert.ok(Number.isFinite((await value.data())[0]));
      assert.ok(Object.keys(grads).length > 0);
      tf.tidy(() => {
        for (const v of vars) if (grads[v.name]) v.assign(tf.sub(v, tf.mul(grads[v.name], 1e-3)));
      });
      tf.dispose([value, ...Object.values(grads)]);
      fx.net.renormalize();
      counts.push(tf.memory().numTensors);
    }
    assert.deepEqual(counts, counts.map(() => counts[0]), `tensor counts: ${counts}`);
    tf.dispose([x, labels, sigma]);
  } finally {
    fx.net.dispose();
  }
});

Deno.test("EDM2 configs: kwargs round trip, presets and parameter counts", () => {
  const c = edm2Preset("edm2-img512-xs");
  assert.deepEqual(fromEdm2Kwargs(toEdm2Kwargs(c)), c);
  assert.equal(c.imgChannels, 4);
  assert.equal(edm2Preset("edm2-img64-s").imgChannels, 3);
  assert.throws(() => edm2Preset("edm2-img64-xxl"));
  assert.throws(() => fromEdm2Kwargs({ img_resolution: 8, img_channels: 3, label_dim: 0, foo: 1 }));
  // Parameter counts of the official presets, counted with the reference classes.
  const counts = JSON.parse(Deno.readTextFileSync(fixturePath("nets/edm2_presets.json")));
  assert.equal(Object.keys(counts).length, 12);
  for (const [name, n] of Object.entries(counts)) {
    assert.equal(estimateEdm2Parameters(edm2Preset(name)), n, name);
  }
});

Deno.test("EDM2: built networks have the parameter count the estimate gives", async () => {
  for (const name of ["cond", "uncond"]) {
    const fx = await load(name);
    assert.equal(fx.net.numParameters(), estimateEdm2Parameters(fx.net.config));
    fx.net.dispose();
  }
});

Deno.test("EDM2 pickle import (fp16 EMA, safe reader): exact weights, parity, save/load round trip", async () => {
  await setupBackend();
  const { net, summary } = await importEdm2Network(fixturePath("pickles/edm2_tiny_fp16.pkl"));
  const fx = await load("cond");
  const tmp = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    assert.equal(summary.key, "ema");
    assert.equal(summary.className, "Precond");
    assert.deepEqual(summary.sourceDtypes, ["float16"]);
    assert.deepEqual(net.config, fx.net.config);
    // Parameters were float16 already: identical. Buffers were rounded to float16 by the save.
    const got = await net.stateDict();
    for (const [name, want] of await fx.net.stateDict()) {
      const g = got.get(name)!.data as Float32Array, w = want.data as Float32Array;
      const isBuffer = name.endsWith("freqs") || name.endsWith("phases");
      for (let j = 0; j < w.length; j++) {
        const tol = isBuffer ? Math.abs(w[j]) * 1e-3 + 1e-3 : 0;
        assert.ok(Math.abs(g[j] - w[j]) <= tol, `${name}[${j}]: ${g[j]} vs ${w[j]}`);
      }
    }
    // The imported network with the fixture's (float32) buffers reproduces the reference.
    net.loadStateDict(
      new Map([...fx.tensors].filter(([k]) => k.endsWith("freqs") || k.endsWith("phases"))),
      { strict: false },
    );
    const x = nhwc(fx.tensors.get("c0.x")!) as tf.Tensor4D;
    const sigma = nhwc(fx.tensors.get("c0.sigma")!);
    const labels = nhwc(fx.tensors.get("c0.labels")!) as tf.Tensor2D;
    const want = nhwc(fx.tensors.get("c0.denoised")!);
    const d = net.denoise(x, sigma, { labels });
    const err = await maxAbsDiff(d, want);
    console.log(`imported pickle, c0 denoised max abs error ${err}`);
    assert.ok(err < TOL);
    await saveEdm2Network(net, tmp);
    const again = await loadEdm2Network(tmp);
    const d2 = again.denoise(x, sigma, { labels });
    assert.equal(await maxAbsDiff(d, d2), 0);
    again.dispose();
    tf.dispose([x, sigma, labels, want, d, d2]);
    await assert.rejects(
      () => importEdm2Network(fixturePath("pickles/edm_songunet.pkl")),
      /not an EDM2 Precond/,
    );
    await assert.rejects(
      () => importEdm2Network(fixturePath("pickles/malicious_os_system.pkl")),
    );
  } finally {
    net.dispose();
    fx.net.dispose();
    await Deno.remove(tmp);
  }
});

Deno.test("EDM2 pickle to safetensors without building the network: fp16 kept, same network loaded, nothing written on error", async () => {
  await setupBackend();
  const pkl = fixturePath("pickles/edm2_tiny_fp16.pkl");
  const dir = await Deno.makeTempDir({ prefix: "sida-edm2-stream-" });
  try {
    const before = tf.memory().numTensors;
    const out = `${dir}/t.safetensors`;
    const summary = await importEdm2ToSafetensors(pkl, out);
    assert.equal(tf.memory().numTensors, before, "the streaming import allocated tensors");
    const { net, summary: s2 } = await importEdm2Network(pkl);
    assert.deepEqual(summary, s2);
    // Inspecting the pickle (the chain's plan does, before anything is written) finds the same,
    // without a tensor.
    const seen = tf.memory().numTensors;
    assert.deepEqual(await inspectEdm2Pickle(pkl), summary);
    assert.equal(tf.memory().numTensors, seen);
    assert.equal(summary.paramCount, net.numParameters());
    // The file holds the pickle's fp16 parameters as they were; it loads as the same network.
    const { tensors, metadata } = await readSt(out);
    assert.equal(metadata.class, "EDM2Precond");
    assert.ok([...tensors.values()].some((t) => t.dtype === "float16"));
    const loaded = await loadEdm2Network(out);
    const a = await net.stateDict(), b = await loaded.stateDict();
    for (const [k, t] of a) {
      const x = t.data as Float32Array, y = b.get(k)!.data as Float32Array;
      assert.ok(x.every((v, i) => v === y[i]), `${k} differs`);
    }
    net.dispose();
    loaded.dispose();
    // Not an EDM2 network, or a hostile pickle: an IoError, and no file.
    for (const bad of ["pickles/edm_songunet.pkl", "pickles/malicious_os_system.pkl"]) {
      await assert.rejects(() => importEdm2ToSafetensors(fixturePath(bad), `${dir}/x.safetensors`));
      await assert.rejects(() => Deno.stat(`${dir}/x.safetensors`), Deno.errors.NotFound);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("shapes-only construction: the names and PyTorch shapes of the real network, one-element placeholders", async () => {
  await setupBackend();
  const config = edm2Preset("edm2-img512-xs");
  const before = tf.memory().numTensors;
  const dry = withShapesOnly(() => new EDM2Precond(config, { init: "zeros" }));
  const entries = dry.namedTensors();
  assert.ok(entries.every(([, e]) => e.variable.size === 1), "a placeholder is not one element");
  // Against a small real network of the same structure and against the reference's count.
  const small = { ...config, unet: { ...config.unet, modelChannels: 8 } };
  const real = new EDM2Precond(small, { init: "zeros" });
  const drySmall = withShapesOnly(() => new EDM2Precond(small, { init: "zeros" }));
  assert.deepEqual(
    drySmall.namedTensors().map(([n, e]) => [n, e.torchShape, e.kind]),
    real.namedTensors().map(([n, e]) => [n, e.torchShape, e.kind]),
  );
  const count = entries.filter(([, e]) => e.kind === "param")
    .reduce((n, [, e]) => n + e.torchShape.reduce((a, b) => a * b, 1), 0);
  assert.equal(count, estimateEdm2Parameters(config));
  // Outside withShapesOnly, modules are real again.
  assert.ok(real.namedTensors().some(([, e]) => e.variable.size > 1));
  dry.dispose();
  drySmall.dispose();
  real.dispose();
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("EDM2 fake-score loss with the logvar head: λ e^{-u} Σ(D̂-x)² + HWC·u per sample", async () => {
  await setupBackend();
  const x = tf.tensor4d([1, 2, 3, 4, 0, 0, 0, 0], [2, 2, 2, 1]);
  const d = tf.tensor4d([1.5, 2, 3, 3, 0, 1, 0, 0], [2, 2, 2, 1]);
  const sigma = tf.tensor1d([0.5, 2]);
  const u = tf.tensor4d([0.3, -1], [2, 1, 1, 1]);
  const plain = fakeScoreLoss({ x, denoised: d, sigma });
  const withU = fakeScoreLoss({ x, denoised: d, sigma, logvar: u });
  const lam = [(0.25 + 0.25) / (0.25 * 0.25), (4 + 0.25) / (1 * 1)];
  const sse = [0.25 + 1, 1];
  const want = [lam[0] * Math.exp(-0.3) * sse[0] + 4 * 0.3, lam[1] * Math.exp(1) * sse[1] + 4 * -1];
  const got = await withU.perSample.data();
  const gotPlain = await plain.perSample.data();
  for (let i = 0; i < 2; i++) {
    assert.ok(Math.abs(got[i] - want[i]) < 1e-4 * Math.abs(want[i]), `${got[i]} vs ${want[i]}`);
    assert.ok(Math.abs(gotPlain[i] - lam[i] * sse[i]) < 1e-4 * lam[i] * sse[i]);
  }
  assert.ok(Math.abs((await withU.loss.data())[0] - (want[0] + want[1])) < 1e-3);
  // EDM2's own noise distribution for the fake-score σ (P_mean −0.4, P_std 1.0).
  assert.equal(EDM2_P_MEAN, -0.4);
  assert.equal(EDM2_P_STD, 1.0);
  tf.dispose([x, d, sigma, u, plain.loss, plain.perSample, plain.keep]);
  tf.dispose([withU.loss, withU.perSample, withU.keep]);
});

Deno.test("EDM2 createEdm2Network: random init at unit magnitude, copyFrom, input checks", async () => {
  await setupBackend();
  const cfg = {
    imgResolution: 8,
    imgChannels: 3,
    labelDim: 4,
    logvarChannels: 8,
    unet: {
      modelChannels: 8,
      channelMult: [1, 2],
      numBlocks: 1,
      attnResolutions: [4],
      channelsPerHead: 8,
      dropout: 0.5,
    },
  };
  const a = createEdm2Network(cfg, { seed: 3 });
  const b = createEdm2Network(cfg, { init: "zeros" });
  try {
    for (const m of a.mpConvs()) {
      const rms = tf.tidy(() => tf.sqrt(tf.mean(tf.square(m.weight))).dataSync()[0]);
      assert.ok(Math.abs(rms - 1) < 1e-3, `rms ${rms}`);
    }
    b.copyFrom(a);
    const x = tf.randomNormal([2, 8, 8, 3], 0, 1, "float32", 9) as tf.Tensor4D;
    const da = a.denoise(x, 1.5), db = b.denoise(x, 1.5);
    assert.equal(await maxAbsDiff(da, db), 0);
    // out_gain starts at zero (so D = c_skip·x); the encoder logits show dropout (p 0.5) at work.
    const le = a.denoise(x, 1.5, { returnFlag: "encoder" });
    const dt = a.denoise(x, 1.5, { returnFlag: "encoder", training: true });
    assert.ok(await maxAbsDiff(le, dt) > 1e-3, "dropout had no effect in training mode");
    const lb = b.denoise(x, 1.5, { returnFlag: "encoder" });
    assert.equal(await maxAbsDiff(le, lb), 0, "copyFrom did not copy every weight");
    assert.equal(a.training, false);
    const logits = a.denoise(x, [1, 2], { returnFlag: "encoder" });
    assert.deepEqual(logits.shape, [2, 4, 4, 1]);
    assert.throws(() => a.denoise(x, [1, 2, 3]), /sigma/);
    assert.throws(() => a.denoise(tf.zeros([1, 8, 8, 4]) as tf.Tensor4D, 1), /expected images/);
    tf.dispose([x, da, db, le, lb, dt, logits]);
  } finally {
    a.dispose();
    b.dispose();
  }
});

Deno.test("EDM2 generator losses with logvar: SiD and adversarial terms divided by e^u per sample", async () => {
  await setupBackend();
  const xg = tf.randomNormal([2, 2, 2, 1], 0, 1, "float32", 1) as tf.Tensor4D;
  const yReal = tf.randomNormal([2, 2, 2, 1], 0, 1, "float32", 2) as tf.Tensor4D;
  const yFake = tf.randomNormal([2, 2, 2, 1], 0, 1, "float32", 3) as tf.Tensor4D;
  const logits = tf.randomNormal([2, 1, 1, 1], 0, 1, "float32", 4) as tf.Tensor4D;
  const u = tf.tensor1d([0.7, -0.2]);
  const scale = [Math.exp(-0.7), Math.exp(0.2)];
  const a = sidGeneratorLoss({ xg, yReal, yFake, alpha: 1.2 });
  const b = sidGeneratorLoss({ xg, yReal, yFake, alpha: 1.2, logvar: u });
  const ga = sidaGeneratorAdversarialLoss({ logits, weightFactor: a.weightFactor, chw: 4 });
  const gb = sidaGeneratorAdversarialLoss({
    logits,
    weightFactor: a.weightFactor,
    chw: 4,
    logvar: u,
  });
  const [pa, pb, qa, qb] = await Promise.all(
    [a.perSample, b.perSample, ga.perSample, gb.perSample].map((t) => t.data()),
  );
  for (let i = 0; i < 2; i++) {
    assert.ok(Math.abs(pb[i] - pa[i] * scale[i]) < 1e-5 * (1 + Math.abs(pa[i])));
    assert.ok(Math.abs(qb[i] - qa[i] * scale[i]) < 1e-5 * (1 + Math.abs(qa[i])));
  }
  tf.dispose([xg, yReal, yFake, logits, u]);
  for (const r of [a, b, ga, gb]) tf.dispose([r.loss, r.perSample, r.keep]);
  tf.dispose([a.weightFactor, b.weightFactor, ga.bce, gb.bce]);
});

Deno.test("EDM2 MPConv: output scaling equals the reference's normalised, scaled weight, with its gradients", async () => {
  await setupBackend();
  for (const kernel of [[3, 3], [1, 1], []]) {
    const layer = new MPConv(new Initializer("random", 3), 6, 5, kernel);
    // Stored rows far from unit norm, as between renormalisations.
    tf.tidy(() => layer.weight.assign(tf.mul(layer.weight, tf.linspace(0.2, 3, 5))));
    const gain = tf.variable(tf.scalar(0.7));
    const x = kernel.length
      ? tf.randomNormal([2, 4, 4, 6], 0, 1, "float32", 1)
      : tf.randomNormal([3, 6], 0, 1, "float32", 1);
    const dy = tf.randomNormal(kernel.length ? [2, 4, 4, 5] : [3, 5], 0, 1, "float32", 2);
    // The reference's MPConv.forward (edm2 training/networks_edm2.py:88-106), literally.
    const reference = () => {
      const w = tf.mul(
        mpNormalize(layer.weight, layer.rowAxes),
        tf.div(gain, Math.sqrt(layer.fanIn)),
      );
      return kernel.length
        ? tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 1, "same")
        : tf.matMul(x as tf.Tensor2D, w as tf.Tensor2D);
    };
    const ours = () => layer.forward(x, gain);
    const run = (f: () => tf.Tensor) =>
      tf.variableGrads(() => tf.sum(tf.mul(f(), dy)) as tf.Scalar, [layer.weight, gain]);
    const a = run(reference), b = run(ours);
    const gw = [a.grads[layer.weight.name], b.grads[layer.weight.name]];
    const scale = await maxAbs(gw[0]);
    assert.ok(Math.abs((await a.value.data())[0] - (await b.value.data())[0]) < 1e-5);
    assert.ok(
      await maxAbsDiff(gw[0], gw[1]) < 1e-5 * scale,
      `kernel [${kernel}]: weight gradients differ`,
    );
    assert.ok(
      Math.abs((await a.grads[gain.name].data())[0] - (await b.grads[gain.name].data())[0]) < 1e-4,
    );
    tf.dispose([
      x,
      dy,
      gain,
      a.value,
      b.value,
      ...Object.values(a.grads),
      ...Object.values(b.grads),
    ]);
    layer.dispose();
  }
});
