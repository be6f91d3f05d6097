/**
 * KID (`lib/metrics/kid.ts`) against float64 numpy values of stylegan3's estimator on fixed
 * subsets (`tests/fixtures/make_kid_fixture.py`), and its properties on random subsets.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import { kid } from "../lib/metrics/kid.ts";
import { readNpz } from "../lib/metrics/npz.ts";
import { MetricError } from "../lib/metrics/stats.ts";
import { fixturePath, setupBackend } from "./helpers.ts";

Deno.test("KID equals the numpy estimate on the same subsets, per subset to 1e-5 relative", async () => {
  await setupBackend();
  const f = await readNpz(fixturePath("metrics/kid.npz"));
  const d = f.get("real")!.shape[1];
  const real = f.get("real")!.data as Float32Array;
  const gi = f.get("gen_idx")!, ri = f.get("real_idx")!;
  const [k, m] = gi.shape;
  const subsets = Array.from({ length: k }, (_, s): [Int32Array, Int32Array] => [
    (gi.data as Int32Array).slice(s * m, (s + 1) * m),
    (ri.data as Int32Array).slice(s * m, (s + 1) * m),
  ]);
  const before = tf.memory().numTensors;
  for (const which of ["far", "near"]) {
    const want = f.get(`kid_${which}`)!.data as Float64Array;
    const gen = f.get(`gen_${which}`)!.data as Float32Array;
    for (let s = 0; s < k; s++) {
      const r = await kid(gen, real, d, { subsets: [subsets[s]] });
      assert.ok(
        Math.abs(r.kid - want[s]) <= 1e-5 * Math.abs(want[s]) + 1e-7,
        `${which} subset ${s}: ${r.kid} vs ${want[s]}`,
      );
    }
    const all = await kid(gen, real, d, { subsets });
    const mean = want.reduce((a, b) => a + b, 0) / k;
    assert.ok(Math.abs(all.kid - mean) <= 1e-5 * Math.abs(mean) + 1e-7);
    assert.equal(all.subsetSize, m);
    assert.equal(all.numSubsets, k);
  }
  assert.equal(tf.memory().numTensors, before, "no tensor leaked");
});

Deno.test("KID: ≈ 0 for one distribution, grows with a mean shift; seeded; bad input refused", async () => {
  await setupBackend();
  const d = 8, n = 400;
  const normal = (seed: number, shift: number) =>
    tf.tidy(() =>
      tf.add(tf.randomNormal([n, d], 0, 1, "float32", seed), shift).dataSync() as Float32Array
    );
  const real = normal(1, 0);
  const same = await kid(normal(2, 0), real, d, { numSubsets: 20, maxSubsetSize: 200, seed: 3 });
  const small = await kid(normal(2, 0.25), real, d, {
    numSubsets: 20,
    maxSubsetSize: 200,
    seed: 3,
  });
  const large = await kid(normal(2, 1), real, d, { numSubsets: 20, maxSubsetSize: 200, seed: 3 });
  // Subsets of 200 out of 400 overlap, so their spread (std) is the noise of one estimate.
  // Measured (3 generator seeds): same 0.016/-0.014/-0.011 ± 0.016; shift 0.25: 0.18-0.26;
  // shift 1: 7.3-8.8.
  assert.ok(Math.abs(same.kid) < 2 * same.std, `same: ${same.kid} ± ${same.std}`);
  assert.ok(small.kid > same.kid + 3 * same.std, `small shift ${small.kid}`);
  assert.ok(large.kid > 10 * small.kid, `large ${large.kid} vs small ${small.kid}`);
  const again = await kid(normal(2, 0.25), real, d, {
    numSubsets: 20,
    maxSubsetSize: 200,
    seed: 3,
  });
  assert.equal(again.kid, small.kid);
  await assert.rejects(kid(new Float32Array(7), real, d), MetricError);
  await assert.rejects(
    kid(new Float32Array([NaN, ...new Float32Array(15)]), real, d),
    /non-finite/,
  );
  await assert.rejects(kid(new Float32Array(8), real, d), /≥ 2 vectors/);
});
