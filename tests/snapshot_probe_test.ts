/**
 * The pure helpers of `bench/snapshot_probe.ts` (pixel statistics, class histograms, weighted
 * feature statistics) on inputs whose answers are known by hand or by another route, and its
 * reading of a training state's raw generator.
 */
import {
  assertAlmostEquals,
  assertEquals,
  assertRejects,
  assertThrows,
} from "./metrics_asserts.ts";
import {
  argmaxRows,
  classHistogram,
  classMixWeights,
  generatorNames,
  loadProbeGenerator,
  pixelStats,
  totalVariation,
  weightedStats,
} from "../bench/snapshot_probe.ts";
import { featureStats } from "../lib/metrics/stats.ts";
import { createNetwork } from "../lib/nets/network.ts";
import { toEdmKwargs } from "../lib/nets/config.ts";
import { writeSafetensors } from "../lib/io/safetensors.ts";
import { type HostTensor, IoError } from "../lib/io/host_tensor.ts";
import { UsageError } from "../lib/runtime/cli.ts";
import { setupBackend, tinySongUNet } from "./helpers.ts";

Deno.test("pixelStats: ink, mid-grey share and neighbour differences of known images", () => {
  // Image 0 (2×2): a white left column on black; image 1: uniform grey 128.
  const px = new Uint8Array([255, 0, 255, 0, 128, 128, 128, 128]);
  const s = pixelStats(px, 2, 2);
  // Ink: (2·255 + 4·128) / 8 / 255.
  assertAlmostEquals(s.ink, (2 * 255 + 4 * 128) / 8 / 255, 1e-12);
  // Only the grey pixels are mid-tones.
  assertAlmostEquals(s.midtone, 4 / 8, 1e-12);
  // Image 0: two horizontal pairs differ by 255, the vertical pairs by 0; image 1: all 0.
  // 8 neighbour pairs in all (2 images × 2 directions × 2 pairs).
  assertAlmostEquals(s.sharpness, (2 * 255) / 8 / 255, 1e-12);
  assertThrows(() => pixelStats(px, 3, 2), RangeError, "not 3 images");
});

Deno.test("argmaxRows, classHistogram and totalVariation", () => {
  const probs = new Float32Array([0.1, 0.7, 0.2, 0.5, 0.3, 0.2, 0.0, 0.4, 0.6, 0.2, 0.5, 0.3]);
  const cls = argmaxRows(probs, 3);
  assertEquals([...cls], [1, 0, 2, 1]);
  const h = classHistogram(cls, 3);
  assertEquals(h.map((v) => +v.toFixed(12)), [0.25, 0.5, 0.25]);
  assertAlmostEquals(
    totalVariation(h, [1 / 3, 1 / 3, 1 / 3]),
    (1 / 12 + 1 / 6 + 1 / 12) / 2,
    1e-12,
  );
  assertEquals(totalVariation(h, h), 0);
  assertThrows(() => totalVariation([1], [0.5, 0.5]), RangeError, "lengths differ");
});

Deno.test("weightedStats with integer weights equals featureStats of the repeated rows", () => {
  const dim = 3;
  const rows = [[1, 2, 0], [0, -1, 4], [2, 2, 2], [-3, 0.5, 1]];
  const w = [1, 3, 2, 1];
  const rep: number[] = [];
  rows.forEach((r, i) => {
    for (let k = 0; k < w[i]; k++) rep.push(...r);
  });
  const want = featureStats(Float32Array.from(rep), rep.length / dim, dim);
  const got = weightedStats(Float32Array.from(rows.flat()), rows.length, dim, w);
  for (let a = 0; a < dim; a++) assertAlmostEquals(got.mu[a], want.mu[a], 1e-9);
  for (let a = 0; a < dim * dim; a++) assertAlmostEquals(got.sigma[a], want.sigma[a], 1e-9);
});

Deno.test("classMixWeights gives the samples the target class mix", () => {
  const cls = new Int32Array([0, 0, 0, 1, 2, 2]);
  const target = [0.2, 0.5, 0.3];
  const w = classMixWeights(cls, target);
  const total = w.reduce((a: number, b: number) => a + b, 0);
  const mix = [0, 0, 0];
  cls.forEach((c, i) => mix[c] += w[i] / total);
  for (let c = 0; c < 3; c++) assertAlmostEquals(mix[c], target[c], 1e-12);
  // Samples of one class share one weight.
  assertEquals(w[0], w[2]);
});

Deno.test("generatorNames: base names, or the paths where two files share one", () => {
  const n = generatorNames([
    "runs/a/sid/network-snapshot-000030.720.safetensors",
    "runs/b/sid/network-snapshot-000030.720.safetensors",
    "runs/avg-s0.safetensors",
    "other/g",
  ]);
  assertEquals([...n.values()], [
    "runs/a/sid/network-snapshot-000030.720",
    "runs/b/sid/network-snapshot-000030.720",
    "avg-s0",
    "g",
  ]);
});

Deno.test("loadProbeGenerator: a training state stands for its raw generator G; a state without G is refused", async () => {
  await setupBackend();
  const dir = await Deno.makeTempDir({ prefix: "sida-probe-test-" });
  const G = createNetwork(tinySongUNet({ imgResolution: 8, imgChannels: 1 }), { seed: 5 });
  const other = createNetwork(tinySongUNet({ imgResolution: 8, imgChannels: 1 }), { seed: 6 });
  try {
    const g = await G.stateDict();
    const tensors = new Map<string, HostTensor>();
    for (const [n, t] of g) tensors.set(`G.${n}`, t);
    // Another network's tensors under other prefixes, as a state holds G_ema and the fake net.
    for (const [n, t] of await other.stateDict()) tensors.set(`G_ema.${n}`, t);
    const networks = JSON.stringify({ G: toEdmKwargs(G.config), fake: toEdmKwargs(G.config) });
    const state = `${dir}/training-state-000001.024.safetensors`;
    await writeSafetensors(state, tensors, { networks });
    const net = await loadProbeGenerator(state);
    try {
      const back = await net.stateDict();
      assertEquals([...back.keys()], [...g.keys()]);
      for (const [n, t] of g) assertEquals(back.get(n)!.data, t.data, n);
    } finally {
      net.dispose();
    }
    // A state missing one of G's tensors, or its config, or with non-finite weights, is one
    // clear error.
    const first = [...g.keys()][0];
    const t0 = tensors.get(`G.${first}`)!;
    const nan = { ...t0, data: Float32Array.from(t0.data as Float32Array, (v, i) => i ? v : NaN) };
    const diverged = `${dir}/training-state-000000.512.safetensors`;
    await writeSafetensors(diverged, new Map([...tensors, [`G.${first}`, nan]]), { networks });
    await assertRejects(() => loadProbeGenerator(diverged), IoError, first);
    tensors.delete(`G.${first}`);
    const broken = `${dir}/training-state-000002.048.safetensors`;
    await writeSafetensors(broken, tensors, { networks });
    await assertRejects(() => loadProbeGenerator(broken), UsageError, `no G.${first}`);
    const noConfig = `${dir}/training-state-000003.072.safetensors`;
    await writeSafetensors(noConfig, tensors, {});
    await assertRejects(() => loadProbeGenerator(noConfig), UsageError, "no generator config");
  } finally {
    G.dispose();
    other.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});
