/**
 * The pure helpers of `bench/snapshot_probe.ts` (pixel statistics, class histograms) on inputs
 * whose answers are known by hand.
 */
import { assertAlmostEquals, assertEquals, assertThrows } from "./metrics_asserts.ts";
import { argmaxRows, classHistogram, pixelStats, totalVariation } from "../bench/snapshot_probe.ts";

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
