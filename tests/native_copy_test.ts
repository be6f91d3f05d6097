/**
 * The `native` backend's data-movement and reduction kernels (`copy_kernels.ts`,
 * `csrc/sida_copy.c`) against tfjs-cpu, bit for bit: Slice, SplitV, Concat, Pack, Unpack, Tile,
 * Transpose (float32 and int32, ranks 0–6, negative axes, sizes of 1 and 0) and Sum (leading,
 * trailing and middle reductions, keepDims, special values), through `tf.grad`, with the C
 * kernels disabled, with flat `tf.memory().numTensors`, and the argument checks before C.
 * Skipped (with a message) when no BLAS library can be loaded.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import { setupNativeTests } from "./helpers.ts";
import { NATIVE_KERNEL_NAMES } from "../lib/runtime/native/backend.ts";
import { loadCKernels, setCKernelsEnabled } from "../lib/runtime/native/ckernels.ts";
import {
  concatRows,
  copySymbols,
  gather,
  middleReduction,
  splitRows,
  sumMiddle,
} from "../lib/runtime/native/copy_kernels.ts";

const { ignore, withC: cLoaded } = setupNativeTests("native copy kernel");
const noC = ignore || !cLoaded;
if (!ignore && noC) console.error("native copy kernel tests: no C kernels, C-only tests skipped");

const KERNELS = ["Slice", "SplitV", "Concat", "Pack", "Unpack", "Tile", "Transpose", "Sum"];

/** mulberry32: a deterministic generator of floats in [0, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SPECIALS = [NaN, Infinity, -Infinity, -0, 0, 3.4e38, -3.4e38, 1e-45];

interface Input {
  shape: number[];
  dtype?: "float32" | "int32";
  /** Sprinkle NaN, ±Infinity, −0, huge and subnormal values (float32). */
  specials?: boolean;
}

function inputValues(spec: Input, seed: number): Float32Array | Int32Array {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const r = rng(seed);
  if (spec.dtype === "int32") return Int32Array.from({ length: n }, () => (r() * 2e9 - 1e9) | 0);
  const v = Float32Array.from({ length: n }, () => (r() * 2 - 1) * (r() < 0.1 ? 1e4 : 1));
  if (spec.specials) {
    for (let i = 0; i < n; i++) if (r() < 0.05) v[i] = SPECIALS[(r() * SPECIALS.length) | 0];
  }
  return v;
}

type Build = (inputs: tf.Tensor[]) => tf.Tensor | tf.Tensor[];

interface Result {
  shapes: number[][];
  dtypes: string[];
  values: (Float32Array | Int32Array)[];
}

async function runOn(backend: string, specs: Input[], seed: number, build: Build) {
  await tf.setBackend(backend);
  const inputs = specs.map((s, i) => tf.tensor(inputValues(s, seed + i), s.shape, s.dtype));
  const before = tf.memory().numTensors;
  const out = tf.tidy(() => build(inputs));
  const outs = Array.isArray(out) ? out : [out];
  const result: Result = {
    shapes: outs.map((t) => t.shape),
    dtypes: outs.map((t) => t.dtype),
    values: await Promise.all(outs.map(async (t) => await t.data() as Float32Array | Int32Array)),
  };
  tf.dispose(outs);
  assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  tf.dispose(inputs);
  return result;
}

function sameBits(a: number, b: number): boolean {
  return Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b));
}

/** Runs `build` on cpu and on native with the same inputs; outputs must be identical. */
async function same(what: string, specs: Input[], build: Build, seed = 1): Promise<void> {
  const ref = await runOn("cpu", specs, seed, build);
  const got = await runOn("native", specs, seed, build);
  assert.equal(got.values.length, ref.values.length, `${what}: output count`);
  for (let k = 0; k < ref.values.length; k++) {
    assert.deepEqual(got.shapes[k], ref.shapes[k], `${what}: output ${k} shape`);
    assert.equal(got.dtypes[k], ref.dtypes[k], `${what}: output ${k} dtype`);
    const a = ref.values[k], b = got.values[k];
    assert.equal(b.length, a.length, `${what}: output ${k} length`);
    for (let i = 0; i < a.length; i++) {
      if (!sameBits(a[i], b[i])) {
        assert.fail(`${what}: output ${k}[${i}] is ${b[i]}, cpu gives ${a[i]}`);
      }
    }
  }
}

/** Both paths: with the C kernels (when there are any) and with them disabled. */
async function bothPaths(f: (path: string) => Promise<void>): Promise<void> {
  if (!noC) await f("C");
  const old = setCKernelsEnabled(false);
  try {
    await f("no C");
  } finally {
    setCKernelsEnabled(old);
  }
}

function randShape(r: () => number, rank: number, max = 5, zeros = false): number[] {
  return Array.from({ length: rank }, () => {
    const u = r();
    if (zeros && u < 0.08) return 0;
    if (u < 0.3) return 1;
    return 1 + Math.floor(r() * max);
  });
}

function randInt(r: () => number, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo + 1));
}

const dtypeOf = (r: () => number): "float32" | "int32" => r() < 0.3 ? "int32" : "float32";

Deno.test({
  name: "native copy: the kernels are registered",
  ignore,
  fn() {
    for (const k of KERNELS) assert.ok(NATIVE_KERNEL_NAMES.includes(k), k);
  },
});

Deno.test({
  name: "native copy: Slice on random windows (ranks 0–6, size −1, empty, int32)",
  ignore,
  async fn() {
    await bothPaths(async (path) => {
      const r = rng(11);
      for (let t = 0; t < 40; t++) {
        const rank = 1 + (t % 6); // (tf.slice refuses scalars)
        const shape = randShape(r, rank, 6, true);
        const begin = shape.map((n) => randInt(r, 0, n));
        const size = shape.map((n, d) => {
          const u = r();
          return u < 0.2 ? -1 : randInt(r, 0, n - begin[d]);
        });
        const spec = { shape, dtype: dtypeOf(r), specials: true };
        await same(
          `${path} slice ${shape} ${begin} ${size}`,
          [spec],
          ([x]) => tf.slice(x, begin, size),
          t,
        );
      }
      // Rank 1 with begin as a number, the profiled windows, a contiguous slice.
      await same(`${path} slice 1-D`, [{ shape: [10] }], ([x]) => tf.slice(x, 3), 2);
      await same(
        `${path} slice rows`,
        [{ shape: [20, 30] }],
        ([x]) => tf.slice(x, [5, 0], [7, 30]),
      );
    });
  },
});

Deno.test({
  name: "native copy: invalid Slice arguments throw the cpu kernel's errors",
  ignore,
  async fn() {
    for (const backend of ["cpu", "native"]) {
      await tf.setBackend(backend);
      const x = tf.zeros([3, 4]);
      assert.throws(() => tf.slice(x, [0, 2], [2, 3]), /slice/i, backend);
      assert.throws(() => tf.slice(x, [0, 0, 0], [1, 1, 1]), Error, backend);
      x.dispose();
    }
  },
});

Deno.test({
  name: "native copy: SplitV and Concat (any axis, negative axes, empty parts, int32)",
  ignore,
  async fn() {
    await bothPaths(async (path) => {
      const r = rng(12);
      for (let t = 0; t < 30; t++) {
        const rank = 1 + (t % 6);
        const shape = randShape(r, rank, 6);
        const axis = randInt(r, -rank, rank - 1);
        const ax = axis < 0 ? axis + rank : axis;
        shape[ax] = randInt(r, 2, 9);
        const n = shape[ax];
        const dtype = dtypeOf(r);
        // numOrSizeSplits: a count dividing the axis, or sizes with a −1 and zeros.
        const cut = randInt(r, 0, n);
        const sizes = r() < 0.5 ? [cut, -1] : [0, cut, n - cut];
        await same(
          `${path} split ${shape} axis ${axis} ${sizes}`,
          [{ shape, dtype, specials: true }],
          ([x]) => [...tf.split(x, sizes, axis), ...tf.split(x, n % 2 ? 1 : 2, axis)],
          t,
        );
        // Concat of 1–4 parts with their own sizes along the axis (zeros included).
        const parts = Array.from({ length: randInt(r, 1, 4) }, () => {
          const s = shape.slice();
          s[ax] = randInt(r, 0, 4);
          return { shape: s, dtype, specials: true };
        });
        await same(
          `${path} concat ${parts.map((p) => `[${p.shape}]`)} axis ${axis}`,
          parts,
          (xs) => tf.concat(xs, axis),
          t,
        );
      }
      // The profiled shapes (once), an all-empty concat, a concat with one non-empty input.
      await same(
        `${path} concat empty`,
        [{ shape: [2, 0, 3] }, { shape: [2, 0, 3] }],
        (xs) => tf.concat(xs, 1),
      );
      await same(
        `${path} concat one non-empty`,
        [{ shape: [2, 0, 3] }, { shape: [2, 4, 3] }, { shape: [2, 0, 3] }],
        (xs) => tf.concat(xs, 1),
      );
      await same(
        `${path} concat 1-D`,
        [{ shape: [5] }, { shape: [7] }, { shape: [1] }],
        (xs) => tf.concat(xs),
      );
    });
  },
});

Deno.test({
  name: "native copy: Pack and Unpack (every axis, negative axes, int32, one input)",
  ignore,
  async fn() {
    await bothPaths(async (path) => {
      const r = rng(13);
      for (let t = 0; t < 30; t++) {
        const rank = t % 6;
        const shape = randShape(r, rank, 5, true);
        const dtype = dtypeOf(r);
        const count = randInt(r, 1, 4);
        const axis = randInt(r, -rank - 1, rank);
        const specs = Array.from({ length: count }, () => ({ shape, dtype, specials: true }));
        await same(
          `${path} stack ${count}×[${shape}] axis ${axis}`,
          specs,
          (xs) => tf.stack(xs, axis),
          t,
        );
        if (rank > 0) {
          const uaxis = randInt(r, -rank, rank - 1);
          await same(
            `${path} unstack [${shape}] axis ${uaxis}`,
            [{ shape, dtype, specials: true }],
            ([x]) => tf.unstack(x, uaxis),
            t,
          );
        }
      }
      await same(`${path} unstack [3,4096,2]`, [{ shape: [3, 4096, 2] }], ([x]) => tf.unstack(x));
    });
  },
});

Deno.test({
  name: "native copy: Tile (ranks 0–6, reps of 0 and 1, int32)",
  ignore,
  async fn() {
    await bothPaths(async (path) => {
      const r = rng(14);
      for (let t = 0; t < 30; t++) {
        const rank = t % 7;
        const shape = randShape(r, rank, 4, true);
        const reps = shape.map(() => (r() < 0.1 ? 0 : randInt(r, 1, 3)));
        await same(
          `${path} tile [${shape}] ${reps}`,
          [{ shape, dtype: dtypeOf(r), specials: true }],
          ([x]) => tf.tile(x, reps),
          t,
        );
      }
      for (
        const [shape, reps] of [
          [[7, 3], [30, 20]],
          [[1], [2000]], // a fill
          [[3, 400], [2, 1]],
        ]
      ) {
        await same(`${path} tile [${shape}] ${reps}`, [{ shape }], ([x]) => tf.tile(x, reps));
      }
    });
  },
});

Deno.test({
  name: "native copy: Transpose (every permutation kind, ranks 1–6, blocked tiles, int32)",
  ignore,
  async fn() {
    await bothPaths(async (path) => {
      const r = rng(15);
      for (let t = 0; t < 40; t++) {
        const rank = 1 + (t % 6);
        const shape = randShape(r, rank, t < 20 ? 5 : [40, 40, 12, 7, 5, 4][rank - 1], true);
        const perm = Array.from({ length: rank }, (_, i) => i);
        for (let i = rank - 1; i > 0; i--) {
          const j = randInt(r, 0, i);
          [perm[i], perm[j]] = [perm[j], perm[i]];
        }
        await same(
          `${path} transpose [${shape}] ${perm}`,
          [{ shape, dtype: dtypeOf(r), specials: true }],
          ([x]) => tf.transpose(x, perm),
          t,
        );
      }
      for (
        const [shape, perm] of [
          [[3, 1, 25, 6], [0, 2, 1, 3]],
          [[67, 45], [1, 0]],
          [[3, 50, 61, 7], [0, 3, 2, 1]],
          [[64, 33, 70], [2, 1, 0]],
          [[2, 3, 17, 19, 5], [4, 2, 0, 3, 1]],
        ]
      ) {
        await same(
          `${path} transpose [${shape}] ${perm}`,
          [{ shape }],
          ([x]) => tf.transpose(x, perm),
        );
      }
    });
  },
});

Deno.test({
  name: "native copy: Sum over leading, trailing and middle axes (keepDims, specials, 0 and 1)",
  ignore,
  async fn() {
    await bothPaths(async (path) => {
      const r = rng(16);
      for (let t = 0; t < 60; t++) {
        const rank = 1 + (t % 6);
        const shape = randShape(r, rank, 7, true);
        // A block of consecutive axes, sometimes negative, sometimes none.
        const lo = randInt(r, 0, rank - 1), hi = randInt(r, lo, rank - 1);
        let axes: number | number[] = [];
        for (let d = lo; d <= hi; d++) axes.push(r() < 0.3 ? d - rank : d);
        if (r() < 0.1) axes = [];
        else if (axes.length === 1 && r() < 0.5) axes = axes[0];
        const keepDims = r() < 0.5;
        await same(
          `${path} sum [${shape}] axes ${axes} keepDims ${keepDims}`,
          [{ shape, specials: t % 3 === 0 }],
          ([x]) => tf.sum(x, axes, keepDims),
          t,
        );
      }
      for (
        const [shape, axes] of [
          [[3, 1, 5, 1, 4], [3, 0, 2]], // size-1 axes anywhere in the list
          [[1000, 3], [0]],
          [[5, 1000], [1]],
        ]
      ) {
        await same(`${path} sum [${shape}] ${axes}`, [{ shape }], ([x]) => tf.sum(x, axes));
      }
      // Sums whose rounding is at stake: large cancelling terms.
      await same(`${path} sum cancel`, [{ shape: [64, 100, 3] }], ([x]) => {
        const big = tf.mul(x, tf.scalar(1e7));
        return [tf.sum(tf.concat([big, x, tf.neg(big)], 1), 1), tf.sum(tf.add(big, x), -1)];
      });
    });
  },
});

Deno.test({
  name: "native copy: Sum over separated or unordered axes, int32 and bool go to other kernels",
  ignore,
  async fn() {
    assert.deepEqual(middleReduction([4, 5, 6], [1]), [4, 5, 6]);
    assert.deepEqual(middleReduction([4, 5, 6], [0, 1]), [1, 20, 6]);
    assert.deepEqual(middleReduction([4, 1, 5, 1, 6], [0, 1, 2]), [1, 20, 6]);
    assert.deepEqual(middleReduction([4, 1, 5, 6], [3, 1]), [20, 6, 1]);
    assert.equal(middleReduction([4, 5, 6], [0, 2]), undefined);
    assert.equal(middleReduction([4, 5, 6], [2, 1]), undefined);
    assert.equal(middleReduction([4, 5, 6], [1, 1]), undefined);
    await bothPaths(async (path) => {
      // Integer-valued floats: any order of addition gives the same sums.
      const spec = { shape: [4, 5, 6, 3], dtype: "int32" as const };
      for (const axes of [[0, 2], [2, 1], [0, 1, 3], [3, 0]]) {
        await same(`${path} sum separated ${axes}`, [spec], ([x]) => [
          tf.sum(tf.cast(tf.mod(x, tf.scalar(1000, "int32")), "float32"), axes, true),
          tf.sum(x, axes),
        ]);
      }
      await same(`${path} sum bool`, [spec], ([x]) => tf.sum(tf.greater(x, 0), 1));
    });
  },
});

/**
 * The profiled shapes of a SiDA iteration and other arrays of ≥ 64K elements, which take every
 * multi-threaded path of `csrc/sida_copy.c` (rows, long rows in chunks, blocked transposes,
 * interleaves, column and row sums).
 */
const LARGE: [string, Input[], Build][] = [
  ["slice [512,4,32,64]", [{ shape: [512, 4, 32, 64] }], ([x]) => [
    tf.slice(x, [0, 1, 0, 0], [-1, 2, -1, -1]),
    tf.slice(x, [0, 0, 3, 0], [512, 4, 8, 64]),
  ]],
  [
    "slice [512,2,32,64] window",
    [{ shape: [512, 2, 32, 64] }],
    ([x]) => tf.slice(x, [0, 1, 0, 0], [512, 1, 32, 64]),
  ],
  ["split [32,32,32,64]", [{ shape: [32, 32, 32, 64] }], ([x]) => tf.split(x, 2, 3)],
  [
    "split int32 [300,700]",
    [{ shape: [300, 700], dtype: "int32" }],
    ([x]) => tf.split(x, [100, -1, 1], 1),
  ],
  [
    "concat [32,32,32,32]×2",
    [{ shape: [32, 32, 32, 32] }, { shape: [32, 32, 32, 32] }],
    (xs) => tf.concat(xs, -1),
  ],
  [
    "stack 3×[524288]",
    [{ shape: [524288] }, { shape: [524288] }, { shape: [524288] }],
    (xs) => tf.stack(xs, 1),
  ],
  ["unstack [524288,3]", [{ shape: [524288, 3] }], ([x]) => tf.unstack(x, 1)],
  [
    "stack 3×[70000]",
    [{ shape: [70000] }, { shape: [70000] }, { shape: [70000] }],
    (xs) => tf.stack(xs, -1),
  ],
  ["unstack [70000,3]", [{ shape: [70000, 3], dtype: "int32" }], ([x]) => tf.unstack(x, 1)],
  ["split [16,16,16,64]", [{ shape: [16, 16, 16, 64] }], ([x]) => tf.split(x, 2, 3)],
  [
    "slice [64,4,32,64]",
    [{ shape: [64, 4, 32, 64] }],
    ([x]) => tf.slice(x, [0, 1, 0, 0], [-1, 2, -1, -1]),
  ],
  ["unstack [3,4096,20]", [{ shape: [3, 4096, 20] }], ([x]) => tf.unstack(x)],
  ["tile [512,1,32,64] 1,2,1,1", [{ shape: [512, 1, 32, 64] }], ([x]) => tf.tile(x, [1, 2, 1, 1])],
  ["tile [32,1,1,1] 1,16,16,64", [{ shape: [32, 1, 1, 1] }], ([x]) => tf.tile(x, [1, 16, 16, 64])],
  ["tile [512,16,1,64] 1,1,2,1", [{ shape: [512, 16, 1, 64] }], ([x]) => tf.tile(x, [1, 1, 2, 1])],
  ["tile [1] 200000 (long fill)", [{ shape: [1] }], ([x]) => tf.tile(x, [200000])],
  ["tile [7,3] 300,200", [{ shape: [7, 3], dtype: "int32" }], ([x]) => tf.tile(x, [300, 200])],
  [
    "transpose [32,1,256,64]",
    [{ shape: [32, 1, 256, 64] }],
    ([x]) => tf.transpose(x, [0, 2, 1, 3]),
  ],
  [
    "transpose [32,256,1,64]",
    [{ shape: [32, 256, 1, 64] }],
    ([x]) => tf.transpose(x, [0, 2, 1, 3]),
  ],
  ["transpose [32,256,64]", [{ shape: [32, 256, 64] }], ([x]) => tf.transpose(x, [0, 2, 1])],
  ["transpose [70000,2] (long strided rows)", [{ shape: [70000, 2] }], ([x]) => tf.transpose(x)],
  ["transpose [2,70000]", [{ shape: [2, 70000] }], ([x]) => tf.transpose(x)],
  ["sum [32,32,32,32] 0,1,2", [{ shape: [32, 32, 32, 32] }], ([x]) => tf.sum(x, [0, 1, 2])],
  ["sum [512,2,16,64] 1", [{ shape: [512, 2, 16, 64] }], ([x]) => tf.sum(x, 1)],
  ["sum [512,16,2,32] 2", [{ shape: [512, 16, 2, 32] }], ([x]) => tf.sum(x, 2, true)],
  ["sum [32,16,16,192] 0,1,2", [{ shape: [32, 16, 16, 192] }], ([x]) => tf.sum(x, [0, 1, 2])],
  ["sum [32,256,256] −1", [{ shape: [32, 256, 256], specials: true }], ([x]) => tf.sum(x, -1)],
  ["sum [4,70000] 0", [{ shape: [4, 70000] }], ([x]) => tf.sum(x, 0)],
  ["sum [64,64,40] −1", [{ shape: [64, 64, 40] }], ([x]) => tf.sum(x, -1)],
  ["sum [64,4,8,64] 1", [{ shape: [64, 4, 8, 64] }], ([x]) => tf.sum(x, 1)],
  ["transpose [64,40,60]", [{ shape: [64, 40, 60] }], ([x]) => tf.transpose(x, [0, 2, 1])],
  ["transpose [4,1,256,64]", [{ shape: [4, 1, 256, 64] }], ([x]) => tf.transpose(x, [0, 2, 1, 3])],
];

/** Set in the child process of the multi-threaded test. */
const THREADS_CHILD = Deno.env.get("SIDA_COPY_TEST_THREADS_CHILD") === "1";
const THREADS_TEST = "native copy: the large cases on 2 OpenMP threads (a child process)";

Deno.test({
  name: "native copy: the profiled shapes and other large arrays",
  ignore: noC || THREADS_CHILD,
  async fn() {
    for (const [what, specs, build] of LARGE) await same(what, specs, build, 3);
  },
});

Deno.test({
  name: THREADS_TEST,
  ignore: noC,
  async fn() {
    if (THREADS_CHILD) {
      assert.equal(copySymbols() && loadCKernels()?.threads, 2);
      // (tfjs-cpu takes seconds on the largest inputs: those run in the one-thread test only)
      for (const [what, specs, build] of LARGE) {
        if (specs.every((s) => s.shape.reduce((a, b) => a * b, 1) <= 300_000)) {
          await same(`2 threads: ${what}`, specs, build, 4);
        }
      }
      return;
    }
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["test", "-A", "--filter", THREADS_TEST, new URL(import.meta.url).pathname],
      env: {
        SIDA_COPY_TEST_THREADS_CHILD: "1",
        OMP_NUM_THREADS: "2",
        SIDA_NUM_THREADS: "2",
        OPENBLAS_NUM_THREADS: "1",
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.ok(out.success, `child failed:\n${text.slice(-3000)}`);
    assert.match(text, /1 passed/);
  },
});

/** Value and gradients of sum(f(inputs)·w) w.r.t. every input (w fixed pseudo-random). */
function withGrads(f: (xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[]): Build {
  return (xs) => {
    const loss = (...args: tf.Tensor[]) => {
      const outs = [f(args)].flat();
      return tf.addN(outs.map((o, i) => {
        const w = tf.sin(tf.add(tf.range(0, o.size), i + 1)).reshape(o.shape);
        return tf.sum(tf.mul(tf.square(o), w));
      }));
    };
    return [f(xs), ...tf.grads(loss)(xs)].flat();
  };
}

Deno.test({
  name: "native copy: gradients (concat ↔ split, stack ↔ unstack, tile, slice, transpose, sum)",
  ignore,
  async fn() {
    await bothPaths(async (path) => {
      const a = { shape: [2, 3, 4, 5] }, b = { shape: [2, 3, 4, 2] };
      await same(`${path} grad concat`, [a, b], withGrads(([x, y]) => tf.concat([x, y], -1)));
      await same(
        `${path} grad split`,
        [a],
        withGrads(([x]) => tf.split(x, [1, -1, 2], 2)),
      );
      await same(
        `${path} grad stack`,
        [a, a, a],
        withGrads((xs) => tf.stack(xs, 2)),
      );
      await same(`${path} grad unstack`, [a], withGrads(([x]) => tf.unstack(x, -1)));
      for (const rank of [1, 2, 3, 4]) {
        const shape = [3, 2, 4, 1].slice(0, rank), reps = [2, 1, 3, 2].slice(0, rank);
        await same(`${path} grad tile ${rank}`, [{ shape }], withGrads(([x]) => tf.tile(x, reps)));
      }
      await same(
        `${path} grad slice`,
        [a],
        withGrads(([x]) => tf.slice(x, [1, 0, 1, 2], [1, -1, 2, 3])),
      );
      await same(
        `${path} grad transpose`,
        [a],
        withGrads(([x]) => tf.transpose(x, [2, 0, 3, 1])),
      );
      await same(
        `${path} grad sum`,
        [a],
        withGrads(([x]) => [tf.sum(x, [1, 2]), tf.sum(x, 0, true), tf.sum(x, -1)]),
      );
    });
  },
});

Deno.test({
  name: "native copy: inputs stored as views into larger arrays",
  ignore,
  async fn() {
    await tf.setBackend("native");
    const big = Float32Array.from({ length: 100 }, (_, i) => i);
    const x = tf.tensor(big.subarray(7, 31), [4, 6]);
    const y = tf.tensor(big.subarray(50, 62), [4, 3]);
    const z = tf.tensor(big.subarray(1, 25), [4, 6]);
    await bothPaths(async (path) => {
      const c = tf.concat([x, y], 1);
      const s = tf.stack([x, z], -1);
      const u = tf.unstack(s, 2);
      const t = tf.transpose(y);
      const sum = tf.sum(x, 0);
      assert.deepEqual(Array.from(await c.data()).slice(0, 9), [7, 8, 9, 10, 11, 12, 50, 51, 52]);
      assert.deepEqual(Array.from(await s.data()).slice(0, 4), [7, 1, 8, 2], path);
      assert.deepEqual(Array.from(await u[1].data()), Array.from(big.subarray(1, 25)), path);
      assert.deepEqual(Array.from(await t.data()).slice(0, 4), [50, 53, 56, 59], path);
      assert.deepEqual(Array.from(await sum.data()), [64, 68, 72, 76, 80, 84]);
      tf.dispose([c, s, ...u, t, sum]);
    });
    tf.dispose([x, y, z]);
  },
});

Deno.test({
  name: "native copy: tf.memory().numTensors stays flat over repeated steps",
  ignore,
  async fn() {
    await tf.setBackend("native");
    const x = tf.randomNormal([4, 6, 5, 8]);
    const step = () =>
      tf.tidy(() => {
        const g = tf.grads((a: tf.Tensor) => {
          const [p, q] = tf.split(a, 2, -1);
          const st = tf.stack([p, q], 1);
          const u = tf.unstack(st, 1);
          const c = tf.add(
            tf.concat([u[1], u[0]], -1),
            tf.tile(tf.slice(a, [0, 0, 0, 0], [4, 6, 5, 1]), [1, 1, 1, 8]),
          );
          return tf.sum(tf.mul(tf.transpose(c, [0, 2, 1, 3]), tf.sum(a, [0, 1, 2], true)));
        });
        return g([x])[0];
      });
    await bothPaths(async (path) => {
      tf.dispose(step());
      const before = tf.memory().numTensors;
      for (let i = 0; i < 5; i++) {
        const g = step();
        await g.data();
        g.dispose();
        assert.equal(tf.memory().numTensors, before, `${path}: step ${i}`);
      }
    });
    x.dispose();
  },
});

Deno.test({
  name: "native copy: wrong lengths throw before any C call",
  ignore: noC,
  fn() {
    const c = copySymbols()!;
    assert.ok(c);
    const f = (n: number) => new Float32Array(n);
    // gather: output length, input extent, negative stride, too many dimensions.
    assert.throws(() => gather(c, f(5), f(6), [2, 3], [3, 1], 0), RangeError);
    assert.throws(() => gather(c, f(6), f(6), [2, 3], [3, 1], 1), RangeError);
    assert.throws(() => gather(c, f(6), f(5), [2, 3], [3, 1], 0), RangeError);
    assert.throws(() => gather(c, f(6), f(6), [2, 3], [-3, 1], 3), RangeError);
    assert.throws(() => gather(c, f(6), f(6), [2, 3], [3], 0), RangeError);
    assert.throws(() => gather(c, f(1), f(1), new Array(17).fill(1), new Array(17).fill(0), 0));
    assert.throws(() => gather(c, f(6), new Float64Array(6) as never, [6], [1], 0), RangeError);
    const ok = f(6);
    gather(c, ok, Float32Array.from([0, 1, 2, 3, 4, 5]), [3, 2], [1, 3], 0);
    assert.deepEqual(Array.from(ok), [0, 3, 1, 4, 2, 5]);
    // concat / split: part lengths, whole length, counts.
    assert.throws(() => concatRows(c, f(10), [f(4), f(5)], [2, 3], 2), RangeError);
    assert.throws(() => concatRows(c, f(9), [f(4), f(6)], [2, 3], 2), RangeError);
    assert.throws(() => concatRows(c, f(10), [f(4), f(6)], [2], 2), RangeError);
    assert.throws(() => splitRows(c, f(10), [f(4), f(7)], [2, 3], 2), RangeError);
    assert.throws(() => splitRows(c, f(10), [], [], 2), RangeError);
    const whole = f(10);
    concatRows(
      c,
      whole,
      [Float32Array.from([1, 2, 3, 4]), Float32Array.from([5, 6, 7, 8, 9, 10])],
      [
        2,
        3,
      ],
      2,
    );
    assert.deepEqual(Array.from(whole), [1, 2, 5, 6, 7, 3, 4, 8, 9, 10]);
    const p = [f(4), f(6)];
    splitRows(c, whole, p, [2, 3], 2);
    assert.deepEqual(Array.from(p[1]), [5, 6, 7, 8, 9, 10]);
    // sum.
    assert.throws(() => sumMiddle(c, f(6), f(23), 2, 4, 3), RangeError);
    assert.throws(() => sumMiddle(c, f(5), f(24), 2, 4, 3), RangeError);
    assert.throws(() => sumMiddle(c, f(6), f(24), 2, -4, 3), RangeError);
    const y = f(2);
    sumMiddle(c, y, Float32Array.from([1, 2, 3, 4, 5, 6]), 1, 3, 2);
    assert.deepEqual(Array.from(y), [9, 12]);
  },
});
