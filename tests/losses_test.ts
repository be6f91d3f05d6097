/**
 * SiD / SiDA losses, noise-level samplers, gradient post-processing, Adam and EMA, against
 * reference values from tests/fixtures/losses (made by make_loss_fixtures.py from the reference
 * loss code, numpy and torch.optim.Adam; see the README there). Section numbers (§) in test
 * names are those of docs/distillation.md.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import { readNpy } from "../lib/io/npy.ts";
import { toFloat32 } from "../lib/io/host_tensor.ts";
import {
  dropSamples,
  fakeScoreDiscriminatorLoss,
  fakeScoreLoss,
  fakeStepObjective,
  generatorObjective,
  sampleKeepMask,
  sidaDiscriminatorLoss,
  sidaGeneratorAdversarialLoss,
  sidGeneratorLoss,
  stopGradient,
} from "../lib/distill/losses.ts";
import {
  DEFAULT_ALPHA,
  edmLossWeight,
  generatorSigmaFromU,
  sampleFakeSigma,
  sampleGeneratorSigma,
} from "../lib/distill/sigma.ts";
import { seededRandom } from "../lib/runtime/random.ts";
import { clipValues, nanToNum, sanitizeGradients } from "../lib/train/gradients.ts";
import { Adam } from "../lib/train/optim.ts";
import { Ema, emaBeta, updateEma } from "../lib/train/ema.ts";
import { resolveDistillConfig, warmupGates } from "../lib/distill/distiller.ts";
import { fixturePath, maxAbs, nhwc, setupBackend } from "./helpers.ts";

const manifest = JSON.parse(await Deno.readTextFile(fixturePath("losses/manifest.json")));

/** A fixture array as a float32 tensor (4-D NCHW arrays become NHWC). */
async function fx(name: string): Promise<tf.Tensor> {
  return nhwc(await readNpy(fixturePath(`losses/${name}.npy`)));
}

/** A one-element fixture array (np.ascontiguousarray makes 0-d arrays 1-d) as a scalar. */
async function fxScalar(name: string): Promise<tf.Tensor> {
  return tf.reshape(await fx(name), []);
}

/** A fixture array as plain numbers. */
async function fxValues(name: string): Promise<number[]> {
  return [...toFloat32(await readNpy(fixturePath(`losses/${name}.npy`)))];
}

/** A fixture uint8 mask as a bool tensor. */
async function fxMask(name: string): Promise<tf.Tensor1D> {
  const h = await readNpy(fixturePath(`losses/${name}.npy`));
  return tf.tensor1d(toFloat32(h), "bool");
}

/** Asserts |a − b| ≤ atol + rtol·|b| elementwise. */
async function assertClose(
  a: tf.Tensor,
  b: tf.Tensor,
  what: string,
  rtol = 2e-5,
  atol = 1e-6,
): Promise<void> {
  assert.deepEqual(a.shape, b.shape, `${what}: shape`);
  const [av, bv] = [await a.data(), await b.data()];
  for (let i = 0; i < av.length; i++) {
    const tol = atol + rtol * Math.abs(bv[i]);
    assert.ok(Math.abs(av[i] - bv[i]) <= tol, `${what}[${i}]: ${av[i]} vs ${bv[i]}`);
  }
}

async function scalar(t: tf.Tensor): Promise<number> {
  return (await t.data())[0];
}

async function keptValues(t: tf.Tensor, keep: boolean[]): Promise<number[]> {
  return [...await t.data()].filter((_, i) => keep[i]);
}

Deno.test("generator σ follows the truncated ρ-schedule (§2.2)", async () => {
  await setupBackend();
  const u = await fxValues("gen_sigma.u");
  const want = await fxValues("gen_sigma.sigma");
  u.forEach((ui, i) => assert.ok(Math.abs(generatorSigmaFromU(ui) / want[i] - 1) < 1e-6));
  assert.ok(Math.abs(generatorSigmaFromU(0) - 0.002) < 1e-12);
  assert.ok(Math.abs(generatorSigmaFromU(1) - 80) < 1e-9);
  const s = sampleGeneratorSigma(4000, seededRandom(3), { tmax: 800 });
  const v = await s.data();
  const hi = generatorSigmaFromU(0.8);
  assert.ok(Math.abs(hi - 24.41) < 0.01, `σ(0.8) = ${hi}`);
  assert.ok(v.every((x) => x >= 0.002 * (1 - 1e-6) && x <= hi * (1 + 1e-6)));
  assert.ok(Math.max(...v) > 20 && Math.min(...v) < 0.005); // covers the range
  const again = sampleGeneratorSigma(4000, seededRandom(3));
  assert.equal(await maxAbs(tf.sub(s, again)), 0); // seeded → reproducible
  tf.dispose([s, again]);
  assert.throws(() => sampleGeneratorSigma(2, seededRandom(1), { tmax: 1200 }), RangeError);
});

Deno.test("fake-score σ is log-normal(P_mean, P_std) (§2.1); λ(σ) = 1/σd² + 1/σ²", async () => {
  await setupBackend();
  for (const [pMean, pStd] of [[-1.2, 1.2], [-0.4, 1.0]]) {
    const s = sampleFakeSigma(20000, seededRandom(5), { pMean, pStd });
    const logs = [...await s.data()].map(Math.log);
    const mean = logs.reduce((a, b) => a + b) / logs.length;
    const sd = Math.sqrt(logs.reduce((a, b) => a + (b - mean) ** 2, 0) / logs.length);
    assert.ok(Math.abs(mean - pMean) < 0.03, `mean ${mean}`);
    assert.ok(Math.abs(sd - pStd) < 0.03, `std ${sd}`);
    s.dispose();
  }
  const sig = tf.tensor1d([0.1, 0.5, 2]);
  await assertClose(edmLossWeight(sig), tf.tensor1d([4 + 100, 4 + 4, 4 + 0.25]), "λ");
  assert.equal(DEFAULT_ALPHA, 1.2);
});

for (const name of ["gen_a12", "gen_a1", "gen_nan"]) {
  Deno.test(`SiD generator loss and adversarial term match the reference (${name})`, async () => {
    await setupBackend();
    const { alpha, chw } = manifest[name];
    const [xg, yReal, yFake, logits] = await Promise.all(
      ["xg", "y_real", "y_fake", "logits"].map((k) => fx(`${name}.${k}`)),
    ) as tf.Tensor4D[];
    const keepWant = [...await (await fxMask(`${name}.keep`)).data()].map(Boolean);
    const sid = sidGeneratorLoss({ xg, yReal, yFake, alpha });
    assert.deepEqual([...await sid.keep.data()].map(Boolean), keepWant);
    await assertClose(sid.perSample, await fx(`${name}.sid_per_sample`), "per-sample SiD");
    const wWant = await keptValues(await fx(`${name}.weight_factor`), keepWant);
    const wGot = await keptValues(sid.weightFactor, keepWant);
    wGot.forEach((w, i) => assert.ok(Math.abs(w / wWant[i] - 1) < 2e-5));
    const sumWant = (await fxValues(`${name}.sid_per_sample`)).reduce((a, b) => a + b);
    assert.ok(Math.abs((await scalar(sid.loss)) - sumWant) <= 2e-5 * Math.abs(sumWant) + 1e-4);

    const gan = sidaGeneratorAdversarialLoss({
      logits,
      weightFactor: sid.weightFactor,
      chw,
      keep: sid.keep,
    });
    await assertClose(gan.perSample, await fx(`${name}.gan_per_sample`), "per-sample GAN");
    await assertClose(gan.bce, await fxScalar(`${name}.gan_bce`), "BCE_G");

    // Gradients of Σ L_SiD w.r.t. x_g, f^φ, f^ψ (torch autograd on the reference).
    const grads = tf.grads((x: tf.Tensor, r: tf.Tensor, f: tf.Tensor) =>
      sidGeneratorLoss({
        xg: x as tf.Tensor4D,
        yReal: r as tf.Tensor4D,
        yFake: f as tf.Tensor4D,
        alpha,
      }).loss
    )([xg, yReal, yFake]);
    await assertClose(grads[0], await fx(`${name}.grad_xg`), "∂/∂x_g", 1e-4, 1e-5);
    await assertClose(grads[1], await fx(`${name}.grad_y_real`), "∂/∂f^φ", 1e-4, 1e-5);
    await assertClose(grads[2], await fx(`${name}.grad_y_fake`), "∂/∂f^ψ", 1e-4, 1e-5);
    // Gradient of Σ L_GAN w.r.t. the logits: zero outside [−10, 10].
    const gl = tf.grad((l: tf.Tensor) =>
      sidaGeneratorAdversarialLoss({
        logits: l as tf.Tensor4D,
        weightFactor: sid.weightFactor,
        chw,
        keep: sid.keep,
      }).loss
    )(logits);
    await assertClose(gl, await fx(`${name}.grad_logits`), "∂/∂ℓ", 1e-4, 1e-6);
    const glv = await gl.data();
    const lv = await logits.data();
    for (let i = 0; i < lv.length; i++) if (Math.abs(lv[i]) > 10) assert.equal(glv[i], 0);
    assert.ok(lv.some((v) => Math.abs(v) > 10));
  });
}

Deno.test("∂L_SiD/∂x_g has its closed form; w_n is detached (§3.1)", async () => {
  await setupBackend();
  const alpha = 1.2;
  const xg = tf.randomNormal([2, 4, 4, 3], 0, 1, "float32", 11) as tf.Tensor4D;
  const f = tf.randomNormal([2, 4, 4, 3], 0, 1, "float32", 12) as tf.Tensor4D;
  const a = 0.7, b = 0.3;
  // A linear "teacher" R(x) = a·x + b, a fixed fake F: x_g reaches the loss directly and via R.
  const g = tf.grad((x: tf.Tensor) =>
    sidGeneratorLoss({
      xg: x as tf.Tensor4D,
      yReal: tf.add(tf.mul(x, a), b) as tf.Tensor4D,
      yFake: f,
      alpha,
    }).loss
  )(xg);
  // L = (R−F)·((R−x) − α(R−F))/w with R = a·x + b, F and w constant:
  // ∂L/∂x = [a·(R−x) + (a−1)·(R−F) − 2α·a·(R−F)]/w. A non-detached w would add a term.
  const want = tf.tidy(() => {
    const r = tf.add(tf.mul(xg, a), b);
    const d = tf.sub(r, f);
    const w = tf.maximum(tf.mean(tf.abs(tf.sub(xg, r)), [1, 2, 3], true), 1e-5);
    const num = tf.sub(
      tf.add(tf.mul(tf.sub(r, xg), a), tf.mul(d, a - 1)),
      tf.mul(d, 2 * alpha * a),
    );
    return tf.div(num, w);
  });
  await assertClose(g, want, "closed form", 1e-4, 1e-5);
  // F and R fixed: ∂/∂x_g = −(R − F)/w.
  const r0 = tf.randomNormal([2, 4, 4, 3], 0, 1, "float32", 13) as tf.Tensor4D;
  const g0 = tf.grad((x: tf.Tensor) =>
    sidGeneratorLoss({ xg: x as tf.Tensor4D, yReal: r0, yFake: f, alpha }).loss
  )(xg);
  const want0 = tf.tidy(() =>
    tf.div(
      tf.neg(tf.sub(r0, f)),
      tf.maximum(tf.mean(tf.abs(tf.sub(xg, r0)), [1, 2, 3], true), 1e-5),
    )
  );
  await assertClose(g0, want0, "closed form (fixed nets)", 1e-4, 1e-5);
});

Deno.test("stopGradient passes values and blocks gradients", async () => {
  await setupBackend();
  const x = tf.tensor1d([1, -2, 3]);
  await assertClose(stopGradient(x), x, "value");
  const g = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(t, stopGradient(t))))(x);
  await assertClose(g, x, "d/dx x·sg(x) = sg(x)");
  const g2 = tf.grad((t: tf.Tensor) => tf.sum(tf.square(stopGradient(t))))(x);
  assert.equal(await maxAbs(g2), 0);
});

for (const name of ["disc", "disc_nan"]) {
  Deno.test(`fake-score + discriminator losses match the reference (${name})`, async () => {
    await setupBackend();
    const [x, denoised, logitsFake, logitsReal] = await Promise.all(
      ["x", "denoised", "logits_fake", "logits_real"].map((k) => fx(`${name}.${k}`)),
    ) as tf.Tensor4D[];
    const sigma = await fx(`${name}.sigma`) as tf.Tensor1D;
    const { fake, disc, keep } = fakeScoreDiscriminatorLoss({
      x,
      denoised,
      logitsFake,
      logitsReal,
      sigma,
    });
    assert.deepEqual(
      [...await keep.data()].map(Boolean),
      [...await (await fxMask(`${name}.keep`)).data()].map(Boolean),
    );
    await assertClose(fake.perSample, await fx(`${name}.fake_per_sample`), "L_fake");
    await assertClose(disc.perSample, await fx(`${name}.disc_per_sample`), "L_D");
    await assertClose(disc.bceReal, await fxScalar(`${name}.bce_real`), "BCE_real");
    await assertClose(disc.bceFake, await fxScalar(`${name}.bce_fake`), "BCE_fake");
    const grads = tf.grads((d: tf.Tensor, lf: tf.Tensor, lr: tf.Tensor) => {
      const r = fakeScoreDiscriminatorLoss({
        x,
        denoised: d as tf.Tensor4D,
        logitsFake: lf as tf.Tensor4D,
        logitsReal: lr as tf.Tensor4D,
        sigma,
      });
      return tf.add(r.fake.loss, r.disc.loss);
    })([denoised, logitsFake, logitsReal]);
    await assertClose(grads[0], await fx(`${name}.grad_denoised`), "∂/∂D̂", 1e-4, 1e-5);
    await assertClose(grads[1], await fx(`${name}.grad_logits_fake`), "∂/∂ℓf", 1e-4, 1e-7);
    await assertClose(grads[2], await fx(`${name}.grad_logits_real`), "∂/∂ℓr", 1e-4, 1e-7);
    // No clamp on the discriminator side: the logit 14 (and −13) still gets a gradient.
    const lf0 = (await logitsFake.data())[0];
    assert.equal(lf0, 14);
    assert.ok(Math.abs((await grads[1].data())[0]) > 1e-7);
    for (const g of grads) assert.ok(Number.isFinite(await maxAbs(g)));
  });
}

Deno.test("plain SiD fake-score loss matches the reference", async () => {
  await setupBackend();
  const r = fakeScoreLoss({
    x: await fx("fake_plain.x") as tf.Tensor4D,
    denoised: await fx("fake_plain.denoised") as tf.Tensor4D,
    sigma: await fx("fake_plain.sigma") as tf.Tensor1D,
  });
  await assertClose(r.perSample, await fx("fake_plain.per_sample"), "L_fake");
});

Deno.test("discriminator BCE pools over the kept micro-batch and positions", async () => {
  await setupBackend();
  const lf = tf.tensor4d([0, 0, 0, 0, 2, 2, 2, 2], [2, 2, 2, 1]);
  const lr = tf.tensor4d([1, 1, 1, 1, -1, -1, -1, -1], [2, 2, 2, 1]);
  const sigma = tf.tensor1d([1, 0.5]);
  const r = sidaDiscriminatorLoss({ logitsFake: lf, logitsReal: lr, sigma });
  const sp = (x: number) => Math.log1p(Math.exp(x));
  const bceF = (sp(0) + sp(2)) / 2, bceR = (sp(-1) + sp(1)) / 2;
  const want = [(4 + 1) * (bceR + bceF) / 2, (4 + 4) * (bceR + bceF) / 2];
  await assertClose(r.perSample, tf.tensor1d(want), "per-sample");
  // Dropping sample 1 changes sample 0's value (batch-level BCE), as boolean filtering does.
  const r2 = sidaDiscriminatorLoss({
    logitsFake: lf,
    logitsReal: lr,
    sigma,
    keep: tf.tensor1d([1, 0], "bool"),
  });
  await assertClose(r2.perSample, tf.tensor1d([5 * (sp(-1) + sp(0)) / 2, 0]), "filtered");
});

Deno.test("NaN filtering drops bad samples and equals the filtered batch", async () => {
  await setupBackend();
  const name = "gen_nan";
  const [xg, yReal, yFake] = await Promise.all(
    ["xg", "y_real", "y_fake"].map((k) => fx(`${name}.${k}`)),
  ) as tf.Tensor4D[];
  const keep = sampleKeepMask([xg, yReal, yFake]);
  assert.deepEqual([...await keep.data()].map(Boolean), [true, true, false, true]);
  const full = sidGeneratorLoss({ xg, yReal, yFake, alpha: 1.2 });
  const [x2, r2, f2] = await dropSamples([xg, yReal, yFake], keep) as tf.Tensor4D[];
  assert.equal(x2.shape[0], 3);
  const filtered = sidGeneratorLoss({ xg: x2, yReal: r2, yFake: f2, alpha: 1.2 });
  assert.ok(Number.isFinite(await scalar(full.loss)));
  assert.ok(Math.abs((await scalar(full.loss)) - (await scalar(filtered.loss))) < 1e-3);
  const g = tf.grad((x: tf.Tensor) =>
    sidGeneratorLoss({ xg: x as tf.Tensor4D, yReal, yFake, alpha: 1.2 }).loss
  )(xg);
  assert.ok(Number.isFinite(await maxAbs(g)));
  assert.equal(await maxAbs(tf.slice(g, [2, 0, 0, 0], [1, -1, -1, -1])), 0);
  // An extra keep mask is ANDed in.
  const k2 = sampleKeepMask([xg], tf.tensor1d([1, 0, 1, 1], "bool"));
  assert.deepEqual([...await k2.data()].map(Boolean), [true, false, true, true]);
  // EDM: ℓ is not filtered; with filterLogits (EDM2) a NaN logit drops the sample.
  const logits = tf.tensor4d([1, NaN, 2, 3], [4, 1, 1, 1]);
  const w = tf.ones([4]) as tf.Tensor1D;
  const edm = sidaGeneratorAdversarialLoss({ logits, weightFactor: w, chw: 1 });
  assert.ok(Number.isNaN(await scalar(edm.loss)));
  const edm2 = sidaGeneratorAdversarialLoss({
    logits,
    weightFactor: w,
    chw: 1,
    filterLogits: true,
  });
  const sp = (x: number) => Math.log1p(Math.exp(-x));
  const bce = (sp(1) + sp(2) + sp(3)) / 3;
  await assertClose(edm2.perSample, tf.tensor1d([bce, 0, bce, bce]), "EDM2 filtered");
});

Deno.test("nanToNum, clipValues, sanitizeGradients (§4.1)", async () => {
  await setupBackend();
  const g = tf.tensor1d([NaN, Infinity, -Infinity, 0.5, -3, 2]);
  assert.deepEqual([...await nanToNum(g).data()], [0, 1e5, -1e5, 0.5, -3, 2]);
  assert.deepEqual([...await clipValues(nanToNum(g), 1).data()], [0, 1, -1, 0.5, -1, 1]);
  const out = sanitizeGradients({ a: g.clone(), b: tf.tensor1d([NaN, 7]) }, { clipValue: 1 });
  assert.deepEqual([...await out.a.data()], [0, 1, -1, 0.5, -1, 1]);
  assert.deepEqual([...await out.b.data()], [0, 1]);
  const noClip = sanitizeGradients({ a: g }, { dispose: false });
  assert.deepEqual([...await noClip.a.data()], [0, 1e5, -1e5, 0.5, -3, 2]);
  assert.ok(!g.isDisposed);
});

Deno.test("objectives and warm-up gates (§3.6)", async () => {
  await setupBackend();
  const sid = tf.scalar(10), gan = tf.scalar(4), fake = tf.scalar(6), disc = tf.scalar(2);
  const b = 4;
  assert.equal(
    await scalar(
      generatorObjective({ sid, gan, lsg: 100, lsgGan: 0.01, batchTotal: b, ganActive: false }),
    ),
    (100 / 4) * 10,
  );
  const both = await scalar(
    generatorObjective({ sid, gan, lsg: 100, lsgGan: 0.01, batchTotal: b, ganActive: true }),
  );
  assert.ok(Math.abs(both - (0.5 * 25 * 10 + 0.5 * (0.01 / 4) * 4)) < 1e-4);
  assert.equal(await scalar(fakeStepObjective({ fake, ls: 1, batchTotal: b })), 1.5);
  assert.equal(
    await scalar(fakeStepObjective({ fake, disc, ls: 1, lsd: 100, batchTotal: b })),
    51.5,
  );
  // The warm-up gates at the reference's thresholds (the Distiller's, one implementation).
  const sida = resolveDistillConfig({ method: "sida" });
  const plain = resolveDistillConfig({ method: "sid" });
  assert.deepEqual(warmupGates(sida, 100_000), { gStep: false, ganActive: false });
  assert.deepEqual(warmupGates(sida, 100_001), { gStep: true, ganActive: false });
  assert.deepEqual(warmupGates(plain, 0), { gStep: true, ganActive: false });
  assert.deepEqual(warmupGates(sida, 200_000), { gStep: true, ganActive: false });
  assert.deepEqual(warmupGates(sida, 200_256), { gStep: true, ganActive: true });
  assert.deepEqual(warmupGates(plain, 300_000), { gStep: true, ganActive: false });
  assert.deepEqual(warmupGates({ ...sida, gWarmupNimg: 0, ganWarmupNimg: 0 }, 0), {
    gStep: true,
    ganActive: true,
  });
});

for (const name of ["adam_b0", "adam_b09"]) {
  Deno.test(`Adam matches torch.optim.Adam (${name})`, async () => {
    await setupBackend();
    const { lr, beta1, beta2, eps, steps, params: np } = manifest[name];
    const vars = await Promise.all(
      [...Array(np).keys()].map(async (i) => tf.variable(await fx(`${name}.p${i}.init`))),
    );
    const grads = await Promise.all([...Array(np).keys()].map((i) => fx(`${name}.p${i}.grads`)));
    const after = await Promise.all([...Array(np).keys()].map((i) => fx(`${name}.p${i}.after`)));
    const opt = new Adam(vars.map((v, i) => [`p${i}`, v] as [string, tf.Variable]), {
      lr,
      beta1,
      beta2,
      eps,
    });
    let restored: Adam | undefined;
    for (let t = 0; t < steps; t++) {
      const gt = grads.map((g) => tf.squeeze(tf.slice(g, t, 1), [0]));
      (restored ?? opt).step(gt);
      for (let i = 0; i < np; i++) {
        const want = tf.squeeze(tf.slice(after[i], t, 1), [0]);
        await assertClose(vars[i], want, `step ${t + 1} p${i}`, 1e-5, 1e-6);
      }
      if (t === 1) {
        // Checkpoint round trip mid-run: a fresh optimizer continues identically.
        const state = await opt.state();
        assert.deepEqual(state.get("p0.step")!.data[0], 2);
        restored = new Adam(vars.map((v, i) => [`p${i}`, v] as [string, tf.Variable]), {
          lr,
          beta1,
          beta2,
          eps,
        });
        restored.loadState(state);
        opt.dispose();
      }
      tf.dispose(gt);
    }
    const st = await restored!.state();
    for (let i = 0; i < np; i++) {
      const m = tf.tensor(st.get(`p${i}.exp_avg`)!.data as Float32Array, vars[i].shape);
      const v = tf.tensor(st.get(`p${i}.exp_avg_sq`)!.data as Float32Array, vars[i].shape);
      await assertClose(m, await fx(`${name}.p${i}.exp_avg`), "exp_avg", 1e-5, 1e-7);
      await assertClose(v, await fx(`${name}.p${i}.exp_avg_sq`), "exp_avg_sq", 1e-5, 1e-10);
    }
    restored!.dispose();
  });
}

Deno.test("Adam skips parameters without a gradient; rejects bad state", async () => {
  await setupBackend();
  const a = tf.variable(tf.ones([2])), b = tf.variable(tf.ones([2]));
  const opt = new Adam([a, b], { lr: 0.1 });
  opt.step([tf.ones([2]), null]);
  assert.deepEqual([...await b.data()], [1, 1]);
  const da = await a.data();
  assert.ok(Math.abs(da[0] - 0.9) < 1e-6); // β1 = 0, t = 1: step = lr·g/(|g| + eps)
  const st = await opt.state();
  assert.ok(st.has("0.exp_avg") && !st.has("1.exp_avg"));
  assert.throws(() => opt.loadState(new Map([["zz.step", st.get("0.step")!]])), RangeError);
  // Keyed by tfjs variable name (what tf.variableGrads returns).
  const { grads } = tf.variableGrads(() => tf.sum(tf.square(b)) as tf.Scalar, [b]);
  opt.step(grads);
  assert.ok((await b.data())[0] < 1);
  opt.dispose();
});

Deno.test("EMA β schedule and in-place update (§4.1 step C)", async () => {
  await setupBackend();
  const cases = await fxValues("ema.cases");
  const betas = await fxValues("ema.beta");
  for (let i = 0; i < betas.length; i++) {
    const [curNimg, batchSize, halflifeKimg] = cases.slice(3 * i, 3 * i + 3);
    const got = emaBeta({ curNimg, batchSize, halflifeKimg });
    assert.ok(Math.abs(got - betas[i]) < 1e-7, `case ${i}: ${got} vs ${betas[i]}`);
  }
  assert.equal(emaBeta({ curNimg: 0, batchSize: 256, halflifeKimg: 500 }), 0);
  assert.equal(
    emaBeta({ curNimg: 0, batchSize: 256, halflifeKimg: 500, rampupRatio: null }),
    0.5 ** (256 / 500_000),
  );
  const mk = (v: number[]) => {
    const p = tf.variable(tf.tensor1d(v));
    return { p, net: { namedParameters: (): [string, tf.Variable][] => [["w", p]] } };
  };
  const src = mk([1, 2]), ema = mk([0, 0]);
  updateEma(ema.net, src.net, 0.75);
  await assertClose(ema.p, tf.tensor1d([0.25, 0.5]), "θ_ema");
  const e = new Ema(ema.net, src.net, { halflifeKimg: 500, batchSize: 256 });
  assert.equal(e.update(0), 0); // β = 0 at the start: copies G
  await assertClose(ema.p, tf.tensor1d([1, 2]), "copy");
  // Repeated updates (the chain's G_ema, the sweep's extra copies) keep the tensor count flat.
  const before = tf.memory().numTensors;
  for (let n = 256; n <= 256 * 20; n += 256) e.update(n);
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("memory stays flat over loss + grad + Adam steps", async () => {
  await setupBackend();
  const w = tf.variable(tf.randomNormal([2, 4, 4, 3], 0, 1, "float32", 1));
  const fake = tf.variable(tf.randomNormal([2, 4, 4, 3], 0, 1, "float32", 2));
  const lw = tf.variable(tf.randomNormal([2, 2, 2, 1], 0, 1, "float32", 3));
  const r = tf.randomNormal([2, 4, 4, 3], 0, 1, "float32", 4) as tf.Tensor4D;
  const gOpt = new Adam([w], { lr: 1e-3 });
  const fOpt = new Adam([fake, lw], { lr: 1e-3 });
  const sigma = tf.tensor1d([0.5, 2]);
  let before = 0;
  for (let it = 0; it < 6; it++) {
    if (it === 1) before = tf.memory().numTensors;
    const a = tf.variableGrads(() => {
      const { fake: lf, disc } = fakeScoreDiscriminatorLoss({
        x: r,
        denoised: fake as unknown as tf.Tensor4D,
        logitsFake: lw as unknown as tf.Tensor4D,
        logitsReal: tf.neg(lw) as tf.Tensor4D,
        sigma,
      });
      return fakeStepObjective({ fake: lf.loss, disc: disc.loss, ls: 1, lsd: 1, batchTotal: 2 });
    }, [fake, lw]);
    const ga = sanitizeGradients(a.grads, { clipValue: 1 });
    fOpt.step(ga);
    tf.dispose([a.value, ga]);
    const b = tf.variableGrads(() => {
      const sid = sidGeneratorLoss({
        xg: w as unknown as tf.Tensor4D,
        yReal: r,
        yFake: fake as unknown as tf.Tensor4D,
        alpha: 1.2,
      });
      const gan = sidaGeneratorAdversarialLoss({
        logits: lw as unknown as tf.Tensor4D,
        weightFactor: sid.weightFactor,
        chw: 48,
        keep: sid.keep,
      });
      return generatorObjective({
        sid: sid.loss,
        gan: gan.loss,
        lsg: 100,
        lsgGan: 0.01,
        batchTotal: 2,
        ganActive: true,
      });
    }, [w]);
    const gb = sanitizeGradients(b.grads);
    gOpt.step(gb);
    tf.dispose([b.value, gb]);
  }
  assert.equal(tf.memory().numTensors, before);
  gOpt.dispose();
  fOpt.dispose();
  tf.dispose([w, fake, lw, r, sigma]);
});
