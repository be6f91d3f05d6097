/**
 * The "within noise" rule of `lib/metrics/compare.ts` (docs/metrics.md) on constructed numbers:
 * a claim needs lower FID and a KID lead beyond z·√(std_a² + std_b²) in every feature space.
 */
import assert from "node:assert/strict";
import {
  compareGenerators,
  compareInSpace,
  DEFAULT_NOISE_Z,
  kidSpread,
  type SpaceScore,
} from "../lib/metrics/compare.ts";

const s = (fid: number, kid: number, kidStd: number): SpaceScore => ({ fid, kid, kidStd });
const SPACES = ["mnist", "mnist-b"];

Deno.test("compare: one space — better, worse, and within noise at the 2σ boundary", () => {
  assert.equal(DEFAULT_NOISE_Z, 2);
  // KID lead 0.010, noise 2·√(0.003² + 0.004²) = 0.010: exactly at the boundary is not enough.
  const a = s(30, 0.020, 0.003), b = s(40, 0.030, 0.004);
  const at = compareInSpace("x", a, b);
  assert.ok(Math.abs(at.kidNoise - 0.010) < 1e-12, String(at.kidNoise));
  assert.ok(Math.abs(at.kidGain - 0.010) < 1e-12);
  assert.equal(at.fidGain, 10);
  // Just above the boundary (the noise is a hair smaller): better; the mirror image: worse.
  assert.equal(compareInSpace("x", a, b, 1.99).verdict, "better");
  assert.equal(compareInSpace("x", b, a, 1.99).verdict, "worse");
  assert.equal(compareInSpace("x", a, b, 2.01).verdict, "within noise");
  // A large KID lead with the FID the other way: no claim.
  assert.equal(compareInSpace("x", s(41, 0.001, 0), s(40, 0.5, 0)).verdict, "within noise");
  // Equal generators: within noise even with zero spread.
  assert.equal(compareInSpace("x", s(40, 0.02, 0), s(40, 0.02, 0)).verdict, "within noise");
  // Bad numbers are refused with one line.
  assert.throws(() => compareInSpace("x", s(NaN, 0, 0), b), /x \(first\) has fid NaN/);
  assert.throws(() => compareInSpace("x", a, s(1, 0, -1)), /negative KID spread/);
  assert.throws(() => compareInSpace("x", a, b, -1), /z must be/);
});

Deno.test("compare: a claim needs every feature space to agree; two spaces at least", () => {
  const clearA = { mnist: s(20, 0.01, 0.001), "mnist-b": s(15, 0.02, 0.002) };
  const clearB = { mnist: s(40, 0.05, 0.001), "mnist-b": s(35, 0.06, 0.002) };
  const both = compareGenerators(clearA, clearB, SPACES);
  assert.equal(both.verdict, "better");
  assert.deepEqual(both.spaces.map((x) => x.verdict), ["better", "better"]);
  assert.equal(compareGenerators(clearB, clearA, SPACES).verdict, "worse");

  // The issue-15 situation: the first space says better, the second says worse.
  const split = compareGenerators(
    { mnist: s(28, 0.01, 0.001), "mnist-b": s(92, 0.09, 0.002) },
    { mnist: s(54, 0.04, 0.001), "mnist-b": s(34, 0.02, 0.002) },
    SPACES,
  );
  assert.equal(split.verdict, "within noise");
  assert.match(split.reason, /mnist: better, mnist-b: worse/);

  // Better in one space, inside the noise in the other: within noise.
  const noisy = compareGenerators(
    clearA,
    { mnist: clearB.mnist, "mnist-b": s(16, 0.021, 0.01) },
    SPACES,
  );
  assert.equal(noisy.verdict, "within noise");
  assert.deepEqual(noisy.spaces.map((x) => x.verdict), ["better", "within noise"]);

  // One space only (a teacher scored as shipped, or a single detector): no claim at all.
  const one = compareGenerators(clearA, { mnist: clearB.mnist }, SPACES);
  assert.equal(one.verdict, "not compared");
  assert.match(one.reason, /needs 2 feature spaces, 1 scored both \(missing: mnist-b\)/);
  assert.equal(compareGenerators(clearA, clearB, ["mnist"]).verdict, "not compared");
});

Deno.test("compare: KID's spread scales its subsets' standard deviation to the whole sample", () => {
  // 100 subsets of 1000 out of 10,000 samples: σ·√(1000/10000).
  assert.ok(Math.abs(kidSpread(6, 1000, 10000) - 6 * Math.sqrt(0.1)) < 1e-12);
  // Subsets as large as the sample: the subsets' spread itself.
  assert.equal(kidSpread(6, 20, 20), 6);
  assert.throws(() => kidSpread(1, 0, 10), /kidSpread/);
});
