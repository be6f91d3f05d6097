/**
 * Batches of training data: {@linkcode InfiniteSampler}, a seeded, resumable stream of dataset
 * indices reshuffled every epoch, and {@linkcode makeBatch}, which turns indices into an NHWC
 * image tensor in [-1, 1] and one-hot labels.
 *
 * @example
 * ```ts
 * import { mnistDataset } from "./dataset.ts";
 * import { InfiniteSampler, makeBatch } from "./sampler.ts";
 * const ds = await mnistDataset();
 * const sampler = new InfiniteSampler(ds.size, 42);
 * const { images, labels } = makeBatch(ds, sampler.next(64), { xflip: true, seed: 0 });
 * console.log(images.shape, labels?.shape); // [64, 32, 32, 1] [64, 10]
 * images.dispose();
 * labels?.dispose();
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { Tensor2D, Tensor4D } from "../deps.ts";
import type { ImageDataset } from "./dataset.ts";
import { mulberry32Uint as mulberry32 } from "../runtime/random.ts";

// ---------------------------------------------------------------------------------------------
// Seeded random numbers (no Math.random): a murmur3-style hash for seeding, mulberry32 streams.

/** murmur3's 32-bit finaliser: a bijective mix of a uint32. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A uint32 hash of a list of non-negative safe integers (each split into two 32-bit words). */
function hashInts(...values: number[]): number {
  let h = 0x9e3779b9;
  for (const v of values) {
    const lo = v >>> 0;
    const hi = Math.floor(v / 0x100000000) >>> 0;
    h = fmix32((h ^ lo) + 0x7f4a7c15);
    h = fmix32((h ^ hi) + 0x7f4a7c15);
  }
  return h;
}

function checkSeed(where: string, seed: unknown): number {
  if (typeof seed !== "number" || !Number.isSafeInteger(seed) || seed < 0) {
    throw new RangeError(`${where}: seed must be a non-negative safe integer, got ${seed}`);
  }
  return seed;
}

/**
 * The order in which an {@linkcode InfiniteSampler} visits `0 … size-1` in epoch `epoch`: a
 * Fisher–Yates shuffle driven by mulberry32, seeded by a hash of `(seed, epoch)`. Deterministic
 * on every platform.
 *
 * @example
 * ```ts
 * import { epochPermutation } from "./sampler.ts";
 * console.log(epochPermutation(5, 0, 0)); // a permutation of 0..4, the same on every run
 * ```
 */
export function epochPermutation(size: number, seed: number, epoch: number): Uint32Array {
  if (!Number.isInteger(size) || size < 1 || size > 0xffffffff) {
    throw new RangeError(`epochPermutation: size must be a positive integer, got ${size}`);
  }
  checkSeed("epochPermutation", seed);
  if (!Number.isSafeInteger(epoch) || epoch < 0) {
    throw new RangeError(`epochPermutation: epoch must be a non-negative integer, got ${epoch}`);
  }
  const next = mulberry32(hashInts(seed, epoch, size));
  const perm = new Uint32Array(size);
  for (let i = 0; i < size; i++) perm[i] = i;
  for (let i = size - 1; i > 0; i--) {
    // floor(u * (i + 1) / 2^32) is exact in float64; its bias is at most (i + 1) / 2^32.
    const j = Math.floor((next() * (i + 1)) / 0x100000000);
    const t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  return perm;
}

/** Where an {@linkcode InfiniteSampler} stands: enough to resume the identical stream. */
export interface SamplerState {
  /** The sampler's seed. */
  seed: number;
  /** Current epoch (0 for the first pass over the data). */
  epoch: number;
  /** How many indices of the current epoch have been handed out, in `[0, size)`. */
  position: number;
}

/**
 * An endless stream of dataset indices: each epoch visits every index in `[0, size)` exactly
 * once, in an order given by {@linkcode epochPermutation}(size, seed, epoch), so each epoch is
 * shuffled differently. Batches may span epochs. `state()` and `fromState()` resume the stream
 * exactly where it stopped.
 *
 * Unlike EDM's `InfiniteSampler` (windowed shuffling of one fixed order), every epoch here is a
 * fresh full permutation.
 *
 * @example
 * ```ts
 * import { InfiniteSampler } from "./sampler.ts";
 * const a = new InfiniteSampler(10, 7);
 * a.next(4);
 * const b = InfiniteSampler.fromState(10, a.state());
 * console.log(a.next(8).join() === b.next(8).join()); // true
 * ```
 */
export class InfiniteSampler {
  /** Number of items sampled from. */
  readonly size: number;
  /** The seed of every epoch's shuffle. */
  readonly seed: number;
  #epoch = 0;
  #position = 0;
  #perm: Uint32Array | undefined;

  /**
   * @param size number of items (a positive integer).
   * @param seed non-negative safe integer (default 0).
   * @throws {RangeError} on a bad size or seed.
   */
  constructor(size: number, seed = 0) {
    if (!Number.isInteger(size) || size < 1 || size > 0xffffffff) {
      throw new RangeError(`InfiniteSampler: size must be a positive integer, got ${size}`);
    }
    this.size = size;
    this.seed = checkSeed("InfiniteSampler", seed);
  }

  /** The next `n` indices (crossing into later epochs as needed). */
  next(n: number): number[] {
    if (!Number.isInteger(n) || n < 0) {
      throw new RangeError(`InfiniteSampler.next: n must be a non-negative integer, got ${n}`);
    }
    const out = new Array<number>(n);
    for (let k = 0; k < n; k++) {
      this.#perm ??= epochPermutation(this.size, this.seed, this.#epoch);
      out[k] = this.#perm[this.#position++];
      if (this.#position === this.size) {
        this.#epoch++;
        this.#position = 0;
        this.#perm = undefined;
      }
    }
    return out;
  }

  /** Where the stream stands now (a plain, JSON-serialisable object). */
  state(): SamplerState {
    return { seed: this.seed, epoch: this.#epoch, position: this.#position };
  }

  /**
   * A sampler over `size` items that continues from `state` (as returned by `state()` of a
   * sampler over the same `size`).
   *
   * @throws {RangeError} when the state's fields are not integers in range.
   */
  static fromState(size: number, state: SamplerState): InfiniteSampler {
    const s = new InfiniteSampler(size, state?.seed);
    const { epoch, position } = state;
    if (!Number.isSafeInteger(epoch) || epoch < 0) {
      throw new RangeError(`InfiniteSampler.fromState: bad epoch ${epoch}`);
    }
    if (!Number.isInteger(position) || position < 0 || position > size) {
      throw new RangeError(
        `InfiniteSampler.fromState: position ${position} is not in [0, ${size}]`,
      );
    }
    s.#epoch = position === size ? epoch + 1 : epoch;
    s.#position = position === size ? 0 : position;
    return s;
  }
}

// ---------------------------------------------------------------------------------------------
// Batches

/** Options of {@linkcode makeBatch}. */
export interface MakeBatchOptions {
  /** Mirror each image left–right with probability ½ (default false). */
  xflip?: boolean;
  /**
   * Seed of the flips (a non-negative safe integer); required with `xflip`. Use a different seed
   * for every batch, e.g. the training step.
   */
  seed?: number;
}

/** A batch made by {@linkcode makeBatch}; the caller disposes its tensors. */
export interface Batch {
  /** `[N, H, W, C]` float32 images in [-1, 1] (`uint8 / 127.5 - 1`). */
  images: Tensor4D;
  /** `[N, labelDim]` float32 one-hot labels; absent for an unlabeled dataset. */
  labels?: Tensor2D;
}

/** uint8 → float32 in [-1, 1], `v / 127.5 - 1` rounded once to float32. */
const TO_UNIT = Float32Array.from({ length: 256 }, (_, v) => v / 127.5 - 1);

/**
 * Gathers the images `indices` of `dataset` into one NHWC float32 tensor in [-1, 1]
 * (`uint8 / 127.5 - 1`), optionally x-flipping each with probability ½ (seeded), and their
 * labels into a one-hot `[N, labelDim]` tensor (absent when `labelDim` is 0). The work is done on
 * the host; exactly one tensor is created per output.
 *
 * @throws {RangeError} on an index outside the dataset, or `xflip` without a valid `seed`.
 *
 * @example
 * ```ts
 * import { mnistDataset } from "./dataset.ts";
 * import { makeBatch } from "./sampler.ts";
 * const { images, labels } = makeBatch(await mnistDataset(), [0, 9999]);
 * console.log(images.shape, labels?.shape); // [2, 32, 32, 1] [2, 10]
 * ```
 */
export function makeBatch(
  dataset: ImageDataset,
  indices: readonly number[],
  opts: MakeBatchOptions = {},
): Batch {
  const n = indices.length;
  const r = dataset.resolution;
  const c = dataset.channels;
  const stride = r * r * c;
  for (const i of indices) {
    if (!Number.isInteger(i) || i < 0 || i >= dataset.size) {
      throw new RangeError(`makeBatch: index ${i} is outside [0, ${dataset.size})`);
    }
  }
  const rand = opts.xflip ? mulberry32(hashInts(checkSeed("makeBatch", opts.seed), 0x5f1)) : null;
  const out = new Float32Array(n * stride);
  const row = r * c;
  for (let k = 0; k < n; k++) {
    const img = dataset.image(indices[k]);
    const base = k * stride;
    if (rand !== null && (rand() & 0x80000000) !== 0) {
      for (let y = 0; y < r; y++) {
        for (let x = 0; x < r; x++) {
          const src = y * row + x * c;
          const dst = base + y * row + (r - 1 - x) * c;
          for (let ch = 0; ch < c; ch++) out[dst + ch] = TO_UNIT[img[src + ch]];
        }
      }
    } else {
      for (let p = 0; p < stride; p++) out[base + p] = TO_UNIT[img[p]];
    }
  }
  const images = tf.tensor4d(out, [n, r, r, c], "float32");
  if (dataset.labelDim === 0) return { images };
  const onehot = new Float32Array(n * dataset.labelDim);
  for (let k = 0; k < n; k++) onehot[k * dataset.labelDim + dataset.label(indices[k])] = 1;
  return { images, labels: tf.tensor2d(onehot, [n, dataset.labelDim], "float32") };
}
