/**
 * Tests of lib/data: the MNIST dataset, EDM dataset zips (round trips, zips made directly with
 * zip.js + fast-png, bad input), the infinite sampler and batch assembly.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fastPng, importMnist, tf, zipjs } from "../lib/deps.ts";
import { IoError } from "../lib/io/host_tensor.ts";
import {
  createImageDataset,
  type ImageDataset,
  imageFileName,
  loadImageZip,
  mnistDataset,
  writeImageZip,
} from "../lib/data/dataset.ts";
import { epochPermutation, InfiniteSampler, makeBatch } from "../lib/data/sampler.ts";
import { setupBackend } from "./helpers.ts";

// ---------------------------------------------------------------------------------------------
// helpers

/** Deterministic pseudo-random bytes (a plain LCG, independent of the code under test). */
function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s >>> 24;
  }
  return out;
}

function syntheticDataset(
  size: number,
  resolution: number,
  channels: number,
  labels: number[] | null,
  seed = 1,
): ImageDataset {
  return createImageDataset({
    name: "synthetic",
    resolution,
    channels,
    pixels: randomBytes(size * resolution * resolution * channels, seed),
    labels,
  });
}

function png(width: number, height: number, channels: number, data?: Uint8Array): Uint8Array {
  return fastPng.encode({
    width,
    height,
    channels,
    depth: 8,
    data: data ?? randomBytes(width * height * channels, width * 31 + channels),
  });
}

type ZipItem = [name: string, data: Uint8Array | string];

/** Writes a zip with zip.js directly (not through the code under test). */
async function writeZip(path: string, items: ZipItem[], level = 0): Promise<void> {
  const w = new zipjs.ZipWriter(new zipjs.Uint8ArrayWriter(), { level, useWebWorkers: false });
  for (const [name, data] of items) {
    if (name.endsWith("/")) await w.add(name, undefined, { directory: true });
    else if (typeof data === "string") await w.add(name, new zipjs.TextReader(data));
    else await w.add(name, new zipjs.Uint8ArrayReader(data));
  }
  await Deno.writeFile(path, await w.close());
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "sida-data-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function assertSameDataset(a: ImageDataset, b: ImageDataset): void {
  assert.equal(b.size, a.size);
  assert.equal(b.resolution, a.resolution);
  assert.equal(b.channels, a.channels);
  assert.equal(b.labelDim, a.labelDim);
  for (let i = 0; i < a.size; i++) {
    assert.deepEqual(b.image(i), a.image(i), `image ${i}`);
    assert.equal(b.label(i), a.label(i), `label ${i}`);
  }
}

async function assertIoError(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof IoError, `expected IoError, got ${(e as Error)?.name}: ${e}`);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes("\n"), "one-line message");
    return true;
  });
}

// ---------------------------------------------------------------------------------------------
// MNIST

Deno.test("mnistDataset: 10,000 padded 32x32 grey digits with labels 0-9", async () => {
  const ds = await mnistDataset();
  assert.equal(ds.name, "mnist");
  assert.equal(ds.size, 10000);
  assert.equal(ds.resolution, 32);
  assert.equal(ds.channels, 1);
  assert.equal(ds.labelDim, 10);
  assert.equal(await mnistDataset(), ds, "built once");

  // Independent reference: the package's raw grey levels in [0, 1], 784 per digit.
  const raw = (await importMnist()).default as Record<string, { raw: number[] }>;
  const expectedCounts = Array.from({ length: 10 }, (_, d) => raw[d].raw.length / 784);
  assert.deepEqual(expectedCounts, [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]);
  let rawSum = 0;
  for (let d = 0; d < 10; d++) for (const v of raw[d].raw) rawSum += Math.round(v * 255);
  const expectedMean = rawSum / (10000 * 32 * 32);

  const counts = new Array(10).fill(0);
  let sum = 0;
  let min = 255;
  let max = 0;
  let prevLabel = 0;
  for (let i = 0; i < ds.size; i++) {
    const img = ds.image(i);
    assert.equal(img.length, 32 * 32);
    const label = ds.label(i);
    assert.ok(label >= prevLabel, "digit-major order");
    prevLabel = label;
    counts[label]++;
    for (let y = 0; y < 32; y++) {
      for (let x = 0; x < 32; x++) {
        const v = img[y * 32 + x];
        if (y < 2 || y >= 30 || x < 2 || x >= 30) assert.equal(v, 0, `border of image ${i}`);
        sum += v;
        if (v < min) min = v;
        if (v > max) max = v;
      }
    }
  }
  assert.deepEqual(counts, expectedCounts);
  assert.equal(min, 0);
  assert.equal(max, 255);
  const mean = sum / (10000 * 32 * 32);
  assert.equal(mean, expectedMean);
  // MNIST's mean intensity is ~0.1307 over 28x28, i.e. ~25.5/255 once padded to 32x32.
  assert.ok(mean > 22 && mean < 29, `mean ${mean}`);

  // Spot-check pixels against the raw JSON: first 0, first 5, last 9.
  const first5 = expectedCounts.slice(0, 5).reduce((a, b) => a + b, 0);
  for (const [i, d, k] of [[0, 0, 0], [first5, 5, 0], [9999, 9, expectedCounts[9] - 1]]) {
    assert.equal(ds.label(i), d);
    const img = ds.image(i);
    for (let y = 0; y < 28; y++) {
      for (let x = 0; x < 28; x++) {
        const v = raw[d].raw[k * 784 + y * 28 + x];
        assert.equal(img[(y + 2) * 32 + x + 2], Math.round(v * 255));
      }
    }
  }
});

Deno.test("mnistDataset: export to an EDM zip and read it back", async () => {
  await withTempDir(async (dir) => {
    const ds = await mnistDataset();
    const path = join(dir, "mnist-32x32.zip");
    await writeImageZip(path, ds);
    const back = await loadImageZip(path);
    assert.equal(back.name, "mnist-32x32");
    assertSameDataset(ds, back);
  });
});

// ---------------------------------------------------------------------------------------------
// EDM dataset zips: round trips

Deno.test("writeImageZip/loadImageZip: labelled grey round trip, EDM layout", async () => {
  await withTempDir(async (dir) => {
    const ds = syntheticDataset(7, 8, 1, [3, 0, 1, 3, 2, 0, 1]);
    const path = join(dir, "grey.zip");
    await writeImageZip(path, ds);
    const back = await loadImageZip(path);
    assert.equal(back.name, "grey");
    assert.equal(back.labelDim, 4);
    assertSameDataset(ds, back);

    // Layout: stored entries 00000/img0000000i.png in order, then dataset.json.
    const bytes = await Deno.readFile(path);
    const reader = new zipjs.ZipReader(new zipjs.Uint8ArrayReader(bytes), { useWebWorkers: false });
    const entries = await reader.getEntries();
    assert.deepEqual(entries.map((e) => e.filename), [
      ...Array.from({ length: 7 }, (_, i) => `00000/img0000000${i}.png`),
      "dataset.json",
    ]);
    assert.ok(entries.every((e) => e.compressionMethod === 0), "stored entries");
    const jsonEntry = entries.at(-1) as zipjs.FileEntry;
    const json = JSON.parse(await jsonEntry.getData(new zipjs.TextWriter()));
    assert.deepEqual(json.labels[0], ["00000/img00000000.png", 3]);
    assert.equal(json.labels.length, 7);
    const first = entries[0] as zipjs.FileEntry;
    const decoded = fastPng.decode(await first.getData(new zipjs.Uint8ArrayWriter()));
    assert.equal(decoded.channels, 1);
    assert.equal(decoded.depth, 8);
    await reader.close();

    // Deterministic output.
    const path2 = join(dir, "grey2.zip");
    await writeImageZip(path2, ds);
    assert.deepEqual(await Deno.readFile(path2), bytes);
    // No temporary files left behind.
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names.sort(), ["grey.zip", "grey2.zip"]);
  });
});

Deno.test("writeImageZip/loadImageZip: RGB and unlabeled datasets", async () => {
  await withTempDir(async (dir) => {
    const rgb = syntheticDataset(5, 16, 3, [1, 1, 0, 1, 0], 9);
    await writeImageZip(join(dir, "rgb.zip"), rgb);
    assertSameDataset(rgb, await loadImageZip(join(dir, "rgb.zip")));

    const plain = syntheticDataset(3, 4, 3, null, 5);
    assert.equal(plain.labelDim, 0);
    await writeImageZip(join(dir, "plain.zip"), plain);
    const back = await loadImageZip(join(dir, "plain.zip"));
    assert.equal(back.labelDim, 0);
    assert.equal(back.label(0), -1);
    assertSameDataset(plain, back);

    const sub = await loadImageZip(join(dir, "rgb.zip"), { maxImages: 2 });
    assert.equal(sub.size, 2);
    assert.equal(sub.labelDim, 2);
    assert.deepEqual(sub.image(1), rgb.image(1));
    assert.equal(sub.label(1), 1);
  });
});

Deno.test("loadImageZip: a dataset_tool-like zip made directly, sorted by name", async () => {
  await withTempDir(async (dir) => {
    const imgs = [0, 1, 2].map((k) => randomBytes(4 * 4 * 3, 100 + k));
    const path = join(dir, "tool.zip");
    // Entries out of order, a directory, a non-image file, deflated entries, Windows-style
    // separators in dataset.json.
    await writeZip(path, [
      ["00000/", ""],
      ["00000/img00000002.png", png(4, 4, 3, imgs[2])],
      ["README.txt", "not an image"],
      ["00000/img00000000.png", png(4, 4, 3, imgs[0])],
      ["00000/img00000001.png", png(4, 4, 3, imgs[1])],
      [
        "dataset.json",
        JSON.stringify({
          labels: [
            ["00000\\img00000002.png", 9],
            ["00000/img00000000.png", 6],
            ["00000/img00000001.png", 0],
          ],
        }),
      ],
    ], 6);
    const ds = await loadImageZip(path);
    assert.equal(ds.size, 3);
    assert.equal(ds.resolution, 4);
    assert.equal(ds.channels, 3);
    assert.equal(ds.labelDim, 10);
    for (let i = 0; i < 3; i++) assert.deepEqual(ds.image(i), imgs[i]);
    assert.deepEqual([0, 1, 2].map((i) => ds.label(i)), [6, 0, 9]);
  });
});

Deno.test("loadImageZip: no dataset.json or null labels give an unlabeled dataset", async () => {
  await withTempDir(async (dir) => {
    await writeZip(join(dir, "a.zip"), [["x.png", png(2, 2, 1)]]);
    const a = await loadImageZip(join(dir, "a.zip"));
    assert.equal(a.labelDim, 0);
    assert.equal(a.label(0), -1);
    await writeZip(join(dir, "b.zip"), [["x.png", png(2, 2, 1)], [
      "dataset.json",
      '{"labels":null}',
    ]]);
    assert.equal((await loadImageZip(join(dir, "b.zip"))).labelDim, 0);
  });
});

// ---------------------------------------------------------------------------------------------
// EDM dataset zips: bad input

Deno.test("loadImageZip: bad input is an IoError naming the file", async () => {
  await withTempDir(async (dir) => {
    const good = join(dir, "good.zip");
    await writeImageZip(good, syntheticDataset(4, 8, 3, [0, 1, 2, 3]));
    const bytes = await Deno.readFile(good);
    const p = (name: string) => join(dir, name);

    await assertIoError(loadImageZip(p("missing.zip")), /missing\.zip: no such file/);

    await Deno.writeFile(p("trunc.zip"), bytes.subarray(0, Math.floor(bytes.length / 2)));
    await assertIoError(loadImageZip(p("trunc.zip")), /trunc\.zip: not a zip archive/);

    const flipped = bytes.slice();
    flipped[30 + 21 + 60] ^= 0x01; // a byte inside the first stored PNG
    await Deno.writeFile(p("flipped.zip"), flipped);
    await assertIoError(
      loadImageZip(p("flipped.zip")),
      /flipped\.zip: 00000\/img00000000\.png: CRC-32 mismatch/,
    );

    await Deno.writeFile(p("text.zip"), new TextEncoder().encode("hello, not a zip\n"));
    await assertIoError(loadImageZip(p("text.zip")), /text\.zip: not a zip archive/);

    await writeZip(p("fake.zip"), [["00000/img00000000.png", "this is not a PNG"]]);
    await assertIoError(
      loadImageZip(p("fake.zip")),
      /fake\.zip: 00000\/img00000000\.png: not a valid PNG/,
    );

    const corrupt = png(8, 8, 3);
    corrupt[corrupt.length - 20] ^= 0xff; // inside the IDAT data: CRC mismatch
    await writeZip(p("corrupt.zip"), [["a.png", corrupt]]);
    await assertIoError(loadImageZip(p("corrupt.zip")), /corrupt\.zip: a\.png: not a valid PNG/);

    await writeZip(p("mixed.zip"), [["a.png", png(8, 8, 3)], ["b.png", png(16, 16, 3)]]);
    await assertIoError(
      loadImageZip(p("mixed.zip")),
      /mixed\.zip: b\.png: image is 16x16x3, but a\.png is 8x8x3/,
    );

    await writeZip(p("mixedc.zip"), [["a.png", png(8, 8, 3)], ["b.png", png(8, 8, 1)]]);
    await assertIoError(loadImageZip(p("mixedc.zip")), /mixedc\.zip: b\.png: image is 8x8x1/);

    await writeZip(p("rect.zip"), [["a.png", png(8, 4, 1)]]);
    await assertIoError(loadImageZip(p("rect.zip")), /rect\.zip: a\.png: image is 8x4, not square/);

    await writeZip(p("npot.zip"), [["a.png", png(12, 12, 1)]]);
    await assertIoError(
      loadImageZip(p("npot.zip")),
      /npot\.zip: a\.png: resolution 12 is not a power of two/,
    );

    await writeZip(p("rgba.zip"), [["a.png", png(4, 4, 4)]]);
    await assertIoError(loadImageZip(p("rgba.zip")), /rgba\.zip: a\.png: PNG has 4 channels/);

    await writeZip(p("none.zip"), [["readme.txt", "hi"]]);
    await assertIoError(loadImageZip(p("none.zip")), /none\.zip: no PNG images/);

    await writeZip(p("jpg.zip"), [["a.png", png(4, 4, 1)], ["b.jpg", "jpeg"]]);
    await assertIoError(loadImageZip(p("jpg.zip")), /jpg\.zip: b\.jpg: only PNG images/);

    const img = png(4, 4, 1);
    const labelled = (labels: unknown): ZipItem[] => [
      ["a.png", img],
      ["b.png", img],
      ["dataset.json", JSON.stringify({ labels })],
    ];
    await writeZip(p("extra.zip"), labelled([["a.png", 0], ["b.png", 1], ["c.png", 2]]));
    await assertIoError(
      loadImageZip(p("extra.zip")),
      /extra\.zip: dataset\.json: labels c\.png, which is not in the zip/,
    );

    await writeZip(p("unlab.zip"), labelled([["a.png", 0]]));
    await assertIoError(
      loadImageZip(p("unlab.zip")),
      /unlab\.zip: dataset\.json: b\.png has no label/,
    );

    await writeZip(p("float.zip"), labelled([["a.png", 0], ["b.png", 2.5]]));
    await assertIoError(
      loadImageZip(p("float.zip")),
      /float\.zip: dataset\.json: label of b\.png is 2\.5/,
    );

    await writeZip(p("str.zip"), labelled([["a.png", 0], ["b.png", "1"]]));
    await assertIoError(
      loadImageZip(p("str.zip")),
      /str\.zip: dataset\.json: label of b\.png is "1"/,
    );

    await writeZip(p("neg.zip"), labelled([["a.png", 0], ["b.png", -1]]));
    await assertIoError(
      loadImageZip(p("neg.zip")),
      /neg\.zip: dataset\.json: label of b\.png is -1/,
    );

    await writeZip(p("vec.zip"), labelled([["a.png", [0, 1]], ["b.png", [1, 0]]]));
    await assertIoError(loadImageZip(p("vec.zip")), /vec\.zip: dataset\.json: label of a\.png/);

    await writeZip(p("dup.zip"), labelled([["a.png", 0], ["b.png", 1], ["a.png", 1]]));
    await assertIoError(
      loadImageZip(p("dup.zip")),
      /dup\.zip: dataset\.json: a\.png is labelled twice/,
    );

    await writeZip(p("badjson.zip"), [["a.png", img], ["dataset.json", "{labels:"]]);
    await assertIoError(
      loadImageZip(p("badjson.zip")),
      /badjson\.zip: dataset\.json: not valid JSON/,
    );

    await writeZip(p("nokey.zip"), [["a.png", img], ["dataset.json", "{}"]]);
    await assertIoError(loadImageZip(p("nokey.zip")), /nokey\.zip: dataset\.json: no "labels" key/);

    // The good zip still loads.
    assert.equal((await loadImageZip(good)).size, 4);
  });
});

Deno.test("createImageDataset/imageFileName: argument checks and names", () => {
  assert.equal(imageFileName(0), "00000/img00000000.png");
  assert.equal(imageFileName(49999), "00049/img00049999.png");
  assert.equal(imageFileName(1281166), "01281/img01281166.png");
  assert.throws(
    () => createImageDataset({ name: "x", resolution: 2, channels: 1, pixels: new Uint8Array(5) }),
    RangeError,
  );
  assert.throws(
    () =>
      createImageDataset({
        name: "x",
        resolution: 2,
        channels: 1,
        pixels: new Uint8Array(8),
        labels: [0, 1.5],
      }),
    RangeError,
  );
  const ds = syntheticDataset(2, 2, 1, [0, 4]);
  assert.equal(ds.labelDim, 5);
  assert.throws(() => ds.image(2), RangeError);
  assert.throws(() => ds.label(-1), RangeError);
});

// ---------------------------------------------------------------------------------------------
// Sampler

function isPermutation(xs: number[], n: number): boolean {
  if (xs.length !== n) return false;
  const seen = new Uint8Array(n);
  for (const x of xs) {
    if (!Number.isInteger(x) || x < 0 || x >= n || seen[x]) return false;
    seen[x] = 1;
  }
  return true;
}

Deno.test("InfiniteSampler: each epoch is a fresh permutation; batches span epochs", () => {
  const n = 97;
  const s = new InfiniteSampler(n, 3);
  const stream: number[] = [];
  for (let k = 0; k < 12; k++) stream.push(...s.next(41)); // 492 = 5 epochs + 7
  const epochs = [0, 1, 2, 3, 4].map((e) => stream.slice(e * n, (e + 1) * n));
  for (const e of epochs) assert.ok(isPermutation(e, n));
  for (let a = 0; a < 5; a++) {
    for (let b = a + 1; b < 5; b++) assert.notDeepEqual(epochs[a], epochs[b]);
  }
  assert.deepEqual(epochs[2], Array.from(epochPermutation(n, 3, 2)));
  assert.deepEqual(s.state(), { seed: 3, epoch: 5, position: 7 });
  // Same seed, same stream; another seed, another stream.
  assert.deepEqual(new InfiniteSampler(n, 3).next(200), stream.slice(0, 200));
  assert.notDeepEqual(new InfiniteSampler(n, 4).next(n), epochs[0]);
  // Not the identity order.
  assert.notDeepEqual(epochs[0], Array.from({ length: n }, (_, i) => i));
  // Size 1 works.
  assert.deepEqual(new InfiniteSampler(1).next(3), [0, 0, 0]);
});

Deno.test("InfiniteSampler: fromState(state()) continues the identical stream", () => {
  const n = 50;
  const a = new InfiniteSampler(n, 2 ** 40 + 17);
  a.next(123);
  const state = JSON.parse(JSON.stringify(a.state()));
  assert.deepEqual(state, { seed: 2 ** 40 + 17, epoch: 2, position: 23 });
  const b = InfiniteSampler.fromState(n, state);
  assert.deepEqual(b.next(300), a.next(300));
  assert.deepEqual(b.state(), a.state());
  // A full epoch written as position == size resumes at the next epoch.
  const c = new InfiniteSampler(n, 9);
  c.next(n);
  const d = InfiniteSampler.fromState(n, { seed: 9, epoch: 0, position: n });
  assert.deepEqual(d.next(10), c.next(10));
  // Bad arguments.
  assert.throws(() => new InfiniteSampler(0), RangeError);
  assert.throws(() => new InfiniteSampler(5, -1), RangeError);
  assert.throws(() => new InfiniteSampler(5, 1.5), RangeError);
  assert.throws(() => new InfiniteSampler(5).next(-1), RangeError);
  assert.throws(() => InfiniteSampler.fromState(5, { seed: 0, epoch: 0, position: 6 }), RangeError);
  assert.throws(
    () => InfiniteSampler.fromState(5, { seed: 0, epoch: -1, position: 0 }),
    RangeError,
  );
});

// ---------------------------------------------------------------------------------------------
// Batches

Deno.test("makeBatch: uint8/127.5-1 images, one-hot labels", async () => {
  await setupBackend();
  const ds = syntheticDataset(6, 4, 3, [2, 0, 1, 2, 0, 1]);
  const idx = [5, 0, 3, 3];
  const { images, labels } = makeBatch(ds, idx);
  assert.deepEqual(images.shape, [4, 4, 4, 3]);
  assert.equal(images.dtype, "float32");
  const got = await images.data();
  for (let k = 0; k < idx.length; k++) {
    const want = Float32Array.from(ds.image(idx[k]), (v) => v / 127.5 - 1);
    assert.deepEqual(got.slice(k * 48, (k + 1) * 48), want);
  }
  assert.ok(labels !== undefined);
  assert.deepEqual(labels.shape, [4, 3]);
  // Labels of images 5, 0, 3, 3 are 1, 2, 2, 2.
  assert.deepEqual(Array.from(await labels.data()), [0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1]);
  images.dispose();
  labels.dispose();

  // Extremes map to exactly -1 and 1.
  const ext = createImageDataset({
    name: "ext",
    resolution: 1,
    channels: 1,
    pixels: new Uint8Array([0, 255]),
  });
  const b = makeBatch(ext, [0, 1]);
  assert.deepEqual(Array.from(await b.images.data()), [-1, 1]);
  assert.equal(b.labels, undefined);
  b.images.dispose();

  assert.throws(() => makeBatch(ds, [6]), RangeError);
  assert.throws(() => makeBatch(ds, [0], { xflip: true }), RangeError);
});

Deno.test("makeBatch: seeded x-flips mirror whole images", async () => {
  await setupBackend();
  const r = 4;
  const c = 3;
  const ds = syntheticDataset(1, r, c, null);
  const idx = new Array(64).fill(0);
  const { images } = makeBatch(ds, idx, { xflip: true, seed: 11 });
  const got = await images.data();
  images.dispose();
  const plain = Float32Array.from(ds.image(0), (v) => v / 127.5 - 1);
  const mirrored = new Float32Array(plain.length);
  for (let y = 0; y < r; y++) {
    for (let x = 0; x < r; x++) {
      for (let ch = 0; ch < c; ch++) {
        mirrored[(y * r + (r - 1 - x)) * c + ch] = plain[(y * r + x) * c + ch];
      }
    }
  }
  const flips: boolean[] = [];
  const stride = r * r * c;
  for (let k = 0; k < idx.length; k++) {
    const img = got.slice(k * stride, (k + 1) * stride);
    const isPlain = img.every((v, i) => v === plain[i]);
    const isMirror = img.every((v, i) => v === mirrored[i]);
    assert.ok(isPlain || isMirror, `image ${k} is neither the original nor its mirror`);
    flips.push(!isPlain);
  }
  const nFlipped = flips.filter((f) => f).length;
  assert.ok(nFlipped > 16 && nFlipped < 48, `${nFlipped} of 64 flipped`);
  // Same seed, same flips.
  const again = makeBatch(ds, idx, { xflip: true, seed: 11 });
  assert.deepEqual(await again.images.data(), got);
  again.images.dispose();
});

Deno.test("makeBatch: no tensor leak over repeated batches", async () => {
  await setupBackend();
  const ds = syntheticDataset(10, 8, 1, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  const sampler = new InfiniteSampler(ds.size, 1);
  const before = tf.memory().numTensors;
  for (let step = 0; step < 20; step++) {
    const { images, labels } = makeBatch(ds, sampler.next(8), { xflip: true, seed: step });
    images.dispose();
    labels?.dispose();
  }
  assert.equal(tf.memory().numTensors, before);
});
