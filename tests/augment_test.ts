/**
 * EDM's augmentation pipe (`lib/data/augment.ts`) against NVlabs/edm's `AugmentPipe` on the same
 * random draws (fixtures: `tests/fixtures/make_augment_fixtures.py`, see `tests/fixtures/README.md`):
 * images and labels to 1e-5; plus invariants of the seeded pipe.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import {
  augment,
  AUGMENT_DEFAULTS,
  augmentDim,
  type AugmentOptions,
  type AugmentRandom,
  edmAugmentOptions,
  seededAugmentRandom,
} from "../lib/data/augment.ts";
import { readNpz } from "../lib/metrics/npz.ts";
import type { HostTensor } from "../lib/io/host_tensor.ts";
import { fixturePath, maxAbs, maxAbsDiff, nhwc, setupBackend } from "./helpers.ts";

const CASES = [
  "edm_p1_rgb16",
  "edm_p012_gray12",
  "edm_p05_rgb10x14",
  "blit_p1_rgb8",
  "blit_p05_gray9x7",
];

/** The pipe's Python keyword arguments as our options. */
function options(kwargs: Record<string, number>): AugmentOptions {
  const camel = (k: string) => k.replace(/_(\w)/g, (_, c: string) => c.toUpperCase());
  const o: Record<string, number> = { ...AUGMENT_DEFAULTS };
  for (const [k, v] of Object.entries(kwargs)) {
    assert.ok(camel(k) in AUGMENT_DEFAULTS, `unknown option ${k}`);
    o[camel(k)] = v;
  }
  return o as unknown as AugmentOptions;
}

/** Replays the recorded draws, checking that each call asks for the recorded kind and shape. */
function replay(arrays: Map<string, HostTensor>): AugmentRandom & { left(): number } {
  const draws = [...arrays.keys()].filter((k) => k.startsWith("draw_")).sort();
  let i = 0;
  const next = (kind: string, shape: readonly number[]) => {
    assert.ok(i < draws.length, `draw ${i} (${kind}) beyond the recorded ${draws.length}`);
    const key = draws[i++];
    assert.ok(key.endsWith(`_${kind}`), `draw ${i - 1}: asked for ${kind}, recorded ${key}`);
    const t = arrays.get(key)!;
    assert.deepEqual(t.shape, [...shape], `${key}: shape`);
    return t.data;
  };
  return {
    rand: (shape) => Float64Array.from(next("rand", shape) as Float32Array),
    randn: (shape) => Float64Array.from(next("randn", shape) as Float32Array),
    randint: (high, shape) => Int32Array.from(next(`randint${high}`, shape) as Int32Array),
    left: () => draws.length - i,
  };
}

for (const name of CASES) {
  Deno.test(`augment equals NVlabs/edm AugmentPipe on recorded draws: ${name}`, async () => {
    await setupBackend();
    const arrays = await readNpz(fixturePath(`augment/${name}.npz`));
    const kwargs = JSON.parse(await Deno.readTextFile(fixturePath(`augment/${name}.json`)));
    const o = options(kwargs);
    const random = replay(arrays);
    const before = tf.memory().numTensors;
    const x = nhwc(arrays.get("images")!) as tf.Tensor4D;
    const want = nhwc(arrays.get("out_images")!);
    const wantLabels = arrays.get("out_labels")!;
    const { images, labels } = augment(x, o, random);
    assert.equal(random.left(), 0, "every recorded draw used");
    assert.deepEqual(images.shape, x.shape);
    assert.deepEqual(labels.shape, wantLabels.shape);
    assert.equal(labels.shape[1], augmentDim(o));
    const err = await maxAbsDiff(images, want);
    assert.ok(err < 1e-5, `images: max abs error ${err}`);
    const l = labels.dataSync();
    for (let i = 0; i < l.length; i++) {
      const w = (wantLabels.data as Float32Array)[i];
      assert.ok(
        Math.abs(l[i] - w) <= 1e-5 * Math.max(1, Math.abs(w)),
        `label ${i}: ${l[i]} vs ${w}`,
      );
    }
    tf.dispose([x, want, images, labels]);
    assert.equal(tf.memory().numTensors, before, "no tensor leaked");
  });
}

Deno.test("augment: seeded draws are reproducible; p = 0 leaves images and labels alone but for the resampling", async () => {
  await setupBackend();
  const x = tf.randomUniform([8, 12, 12, 3], -1, 1, "float32", 3) as tf.Tensor4D;
  const o = edmAugmentOptions(0.5);
  assert.equal(augmentDim(o), 9);
  const a = augment(x, o, seededAugmentRandom(7));
  const b = augment(x, o, seededAugmentRandom(7));
  assert.equal(await maxAbsDiff(a.images, b.images), 0);
  assert.equal(await maxAbsDiff(a.labels, b.labels), 0);
  // At p = 0 only the x-flip fires (xflip·p = 1e8·0 = 0 too: nothing), labels are all zero, and
  // the images go through the up/down-sampling filters only: close to, not equal to, the input.
  const z = augment(x, edmAugmentOptions(0), seededAugmentRandom(7));
  assert.equal(await maxAbs(z.labels), 0);
  const drift = await maxAbsDiff(z.images, x);
  assert.ok(drift < 0.1, `resampling drift ${drift}`);
  // Pixel blitting only: an x-flip of every image is exact.
  const flip = augment(x, { ...AUGMENT_DEFAULTS, xflip: 1e8 }, {
    ...seededAugmentRandom(1),
    randint: (_high, shape) => new Int32Array(shape.reduce((p, q) => p * q, 1)).fill(1),
  });
  assert.equal(await maxAbsDiff(flip.images, tf.reverse(x, 2)), 0);
  assert.throws(() => edmAugmentOptions(1.5), /in \[0, 1\]/);
  tf.dispose([
    x,
    a.images,
    a.labels,
    b.images,
    b.labels,
    z.images,
    z.labels,
    flip.images,
    flip.labels,
  ]);
});
