/**
 * EDM's augmentation pipeline (NVlabs/edm `training/augment.py`, `AugmentPipe`, after Karras et
 * al., "Training Generative Adversarial Networks with Limited Data"): the geometric
 * augmentations — x-flip, y-flip, 90° rotation, integer translation (pixel blitting), isotropic
 * scaling, rotation, anisotropic scaling and fractional translation (resampling) — and the
 * augmentation labels that tell a network which ones were applied.
 *
 * EDM trains CIFAR-10, FFHQ and AFHQ with `xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
 * translate_frac=1` and `p` 0.12 (CIFAR-10) or 0.15 (NVlabs/edm `train.py:157`, the `--augment`
 * option); SiDA applies the same pipe, independently, to the fake and the real images of the
 * fake-score/discriminator update (mingyuanzhou/SiD `sida_train.py:252-255`,
 * `training/sida_training_loop.py`): {@linkcode edmAugmentOptions}. Its 9 labels go to a network
 * built with `augment_dim=9`. (The colour transformations of `AugmentPipe` are not used by EDM and
 * are not implemented.)
 *
 * The random draws are taken from an {@linkcode AugmentRandom} in exactly the order and shapes of
 * the reference's `torch.rand`/`randn`/`randint` calls, so that a test can replay the reference's
 * draws; {@linkcode seededAugmentRandom} is the seeded source used for training.
 *
 * Images are NHWC in [-1, 1]; the work on the host is per image parameters and index maps, the
 * pixels stay in tfjs.
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { augment, edmAugmentOptions, seededAugmentRandom } from "./augment.ts";
 * const x = tf.randomUniform([4, 32, 32, 3], -1, 1) as tf.Tensor4D;
 * const { images, labels } = augment(x, edmAugmentOptions(0.12), seededAugmentRandom(1));
 * console.log(images.shape, labels.shape); // [4, 32, 32, 3] [4, 9]
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { Tensor2D, Tensor4D } from "../deps.ts";
import { mulberry32, type RandomSource } from "../runtime/random.ts";

/** Probabilities and ranges of the augmentations (`AugmentPipe.__init__`'s arguments). */
export interface AugmentOptions {
  /** Overall multiplier of every probability. */
  p: number;
  /** Probability multiplier of x-flip. */
  xflip: number;
  /** Probability multiplier of y-flip. */
  yflip: number;
  /** Probability multiplier of rotation by a multiple of 90° (square images only). */
  rotateInt: number;
  /** Probability multiplier of integer translation. */
  translateInt: number;
  /** Range of integer translation, relative to the image size. */
  translateIntMax: number;
  /** Probability multiplier of isotropic scaling. */
  scale: number;
  /** Probability multiplier of rotation by an arbitrary angle. */
  rotateFrac: number;
  /** Probability multiplier of anisotropic scaling. */
  aniso: number;
  /** Probability multiplier of fractional translation. */
  translateFrac: number;
  /** Log2 standard deviation of isotropic scaling. */
  scaleStd: number;
  /** Range of arbitrary rotation, 1 = full circle. */
  rotateFracMax: number;
  /** Log2 standard deviation of anisotropic scaling. */
  anisoStd: number;
  /** Probability of anisotropic scaling along a rotated frame. */
  anisoRotateProb: number;
  /** Standard deviation of fractional translation, relative to the image size. */
  translateFracStd: number;
}

/** Every augmentation off, ranges at the reference's defaults (`augment.py:118-121`). */
export const AUGMENT_DEFAULTS: AugmentOptions = {
  p: 1,
  xflip: 0,
  yflip: 0,
  rotateInt: 0,
  translateInt: 0,
  translateIntMax: 0.125,
  scale: 0,
  rotateFrac: 0,
  aniso: 0,
  translateFrac: 0,
  scaleStd: 0.2,
  rotateFracMax: 1,
  anisoStd: 0.2,
  anisoRotateProb: 0.5,
  translateFracStd: 0.125,
};

/**
 * EDM's pipe at probability `p` (NVlabs/edm `train.py:157`): an x-flip of every other image
 * (xflip·p ≫ 1, so each image is flipped with probability ½) and the other five with
 * probability `p` each; 9 labels.
 */
export function edmAugmentOptions(p: number): AugmentOptions {
  if (!(Number.isFinite(p) && p >= 0 && p <= 1)) {
    throw new RangeError(`augmentation probability must be in [0, 1], got ${p}`);
  }
  return {
    ...AUGMENT_DEFAULTS,
    p,
    xflip: 1e8,
    yflip: 1,
    scale: 1,
    rotateFrac: 1,
    aniso: 1,
    translateFrac: 1,
  };
}

/** The number of augmentation labels the options produce (9 for {@linkcode edmAugmentOptions}). */
export function augmentDim(o: AugmentOptions): number {
  return (o.xflip > 0 ? 1 : 0) + (o.yflip > 0 ? 1 : 0) + (o.rotateInt > 0 ? 2 : 0) +
    (o.translateInt > 0 ? 2 : 0) + (o.scale > 0 ? 1 : 0) + (o.rotateFrac > 0 ? 2 : 0) +
    (o.aniso > 0 ? 2 : 0) + (o.translateFrac > 0 ? 2 : 0);
}

/**
 * A source of random draws, called in the reference's order: `rand` uniform in [0, 1), `randn`
 * standard normal, `randint(high)` integers in [0, high); each returns `Π shape` values.
 */
export interface AugmentRandom {
  /** Uniform values in [0, 1). */
  rand(shape: readonly number[]): Float64Array;
  /** Standard normal values. */
  randn(shape: readonly number[]): Float64Array;
  /** Integers in [0, high). */
  randint(high: number, shape: readonly number[]): Int32Array;
}

const count = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** A seeded {@linkcode AugmentRandom} (mulberry32; normals by Box–Muller). */
export function seededAugmentRandom(seed: number): AugmentRandom {
  const u = mulberry32(seed);
  return {
    rand: (shape) => Float64Array.from({ length: count(shape) }, u),
    randn: (shape) =>
      Float64Array.from({ length: count(shape) }, () => {
        const a = 1 - u(); // (0, 1]
        return Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * u());
      }),
    randint: (high, shape) =>
      Int32Array.from({ length: count(shape) }, () => Math.min(high - 1, Math.floor(u() * high))),
  };
}

/**
 * An {@linkcode AugmentRandom} that takes its draws from a training run's {@linkcode RandomSource}
 * (uniforms for `rand` and `randint`, its normals for `randn`), so that the augmentation is part of
 * the run's one seeded stream of draws.
 */
export function augmentRandomFrom(rng: RandomSource): AugmentRandom {
  return {
    rand: (shape) => rng.uniform(count(shape)),
    randn: (shape) => rng.normal(count(shape)),
    randint: (high, shape) =>
      Int32Array.from(rng.uniform(count(shape)), (u) => Math.min(high - 1, Math.floor(u * high))),
  };
}

// ---------------------------------------------------------------------------------------------
// 3x3 homogeneous 2-D transforms, row-major (`augment.py:52-90`).

type Mat3 = number[];

const mul = (a: Mat3, b: Mat3): Mat3 => {
  const c = new Array<number>(9);
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) {
      c[3 * i + j] = a[3 * i] * b[j] + a[3 * i + 1] * b[3 + j] + a[3 * i + 2] * b[6 + j];
    }
  }
  return c;
};
const translate = (tx: number, ty: number): Mat3 => [1, 0, tx, 0, 1, ty, 0, 0, 1];
const scale = (sx: number, sy: number): Mat3 => [sx, 0, 0, 0, sy, 0, 0, 0, 1];
const rotate = (t: number): Mat3 => [
  Math.cos(t),
  -Math.sin(t),
  0,
  Math.sin(t),
  Math.cos(t),
  0,
  0,
  0,
  1,
];
const IDENTITY: Mat3 = [1, 0, 0, 0, 1, 0, 0, 0, 1];

/** The `sym6` wavelet's low-pass filter (`augment.py:31`), the up/down-sampling filter. */
const SYM6 = [
  0.015404109327027373,
  0.0034907120842174702,
  -0.11799011114819057,
  -0.048311742585633,
  0.4910559419267466,
  0.787641141030194,
  0.3379294217276218,
  -0.07263752278646252,
  -0.021060292512300564,
  0.04472490177066578,
  0.0017677118642428036,
  -0.007800708325034148,
];
const HZ_PAD = SYM6.length / 4; // 3

/** `round` as torch's (halves to even). */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Floor modulo (Python's `%`). */
const mod = (a: number, m: number) => ((a % m) + m) % m;

/** `w` where `cond` (a uniform draw below `prob`), else 0, per element. */
function gate(w: ArrayLike<number>, cond: Float64Array, prob: number, stride = 0): number[] {
  return Array.from(w, (v, i) => (cond[stride ? i % stride : i] < prob ? v : 0));
}

/**
 * Applies the augmentations to `images` (NHWC, any channel count) and returns the augmented
 * images and their labels `[N, augmentDim(o)]` (`AugmentPipe.__call__`). Nothing is disposed;
 * the caller owns both results.
 *
 * @throws RangeError for images smaller than 2×2, or 90° rotations of non-square images.
 */
export function augment(
  images: Tensor4D,
  o: AugmentOptions,
  random: AugmentRandom,
): { images: Tensor4D; labels: Tensor2D } {
  const [N, H, W, C] = images.shape;
  if (H < 2 || W < 2) throw new RangeError(`augment: images must be at least 2x2, got ${H}x${W}`);
  if (o.rotateInt > 0 && H !== W) {
    throw new RangeError(`augment: 90° rotations need square images, got ${H}x${W}`);
  }
  const labels: number[][] = []; // columns, each of length N

  // ---- Pixel blitting (`augment.py:153-185`): one index map per image, applied by one gather.
  // src[b][y*W + x] is the pixel of the input that lands at (y, x) of image b.
  let src: Int32Array[] | undefined;
  const remap = (b: number, f: (y: number, x: number) => number) => {
    src ??= Array.from({ length: N }, () => Int32Array.from({ length: H * W }, (_, i) => i));
    const old = src[b];
    const out = new Int32Array(H * W);
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) out[y * W + x] = old[f(y, x)];
    src[b] = out;
  };
  const xflip = (y: number, x: number) => y * W + (W - 1 - x);
  const yflip = (y: number, x: number) => (H - 1 - y) * W + x;
  if (o.xflip > 0) {
    const w = gate(random.randint(2, [N, 1, 1, 1]), random.rand([N, 1, 1, 1]), o.xflip * o.p);
    for (let b = 0; b < N; b++) if (w[b] === 1) remap(b, xflip);
    labels.push(w);
  }
  if (o.yflip > 0) {
    const w = gate(random.randint(2, [N, 1, 1, 1]), random.rand([N, 1, 1, 1]), o.yflip * o.p);
    for (let b = 0; b < N; b++) if (w[b] === 1) remap(b, yflip);
    labels.push(w);
  }
  if (o.rotateInt > 0) {
    const w = gate(random.randint(4, [N, 1, 1, 1]), random.rand([N, 1, 1, 1]), o.rotateInt * o.p);
    for (let b = 0; b < N; b++) {
      if (w[b] === 1 || w[b] === 2) remap(b, xflip);
      if (w[b] === 2 || w[b] === 3) remap(b, yflip);
      if (w[b] === 1 || w[b] === 3) remap(b, (y, x) => x * W + y);
    }
    labels.push(w.map((v) => (v === 1 || v === 2 ? 1 : 0)));
    labels.push(w.map((v) => (v === 2 || v === 3 ? 1 : 0)));
  }
  if (o.translateInt > 0) {
    const w = random.rand([2, N, 1, 1, 1]).map((v) => v * 2 - 1);
    const g = gate(w, random.rand([1, N, 1, 1, 1]), o.translateInt * o.p, N);
    const tx = g.slice(0, N).map((v) => roundHalfEven(Math.fround(v * W * o.translateIntMax)));
    const ty = g.slice(N).map((v) => roundHalfEven(Math.fround(v * H * o.translateIntMax)));
    for (let b = 0; b < N; b++) {
      if (tx[b] === 0 && ty[b] === 0) continue;
      // Reflection without repeating the edge pixel (`augment.py:180-181`).
      remap(b, (y, x) => {
        const sx = W - 1 - Math.abs(W - 1 - mod(x - tx[b], 2 * W - 2));
        const sy = H - 1 - Math.abs(H - 1 - mod(y + ty[b], 2 * H - 2));
        return sy * W + sx;
      });
    }
    labels.push(tx.map((v) => v / (W * o.translateIntMax)));
    labels.push(ty.map((v) => v / (H * o.translateIntMax)));
  }

  // ---- Geometric transformations (`augment.py:191-220`): the inverse transform per image.
  const G: Mat3[] = Array.from({ length: N }, () => IDENTITY);
  const geometric = o.scale > 0 || o.rotateFrac > 0 || o.aniso > 0 || o.translateFrac > 0;
  if (o.scale > 0) {
    const w = gate(random.randn([N]), random.rand([N]), o.scale * o.p);
    for (let b = 0; b < N; b++) {
      const s = 2 ** (w[b] * o.scaleStd);
      G[b] = mul(G[b], scale(1 / s, 1 / s));
    }
    labels.push(w);
  }
  if (o.rotateFrac > 0) {
    const r = random.rand([N]).map((v) => (v * 2 - 1) * (Math.PI * o.rotateFracMax));
    const w = gate(r, random.rand([N]), o.rotateFrac * o.p);
    for (let b = 0; b < N; b++) G[b] = mul(G[b], rotate(w[b])); // rotate2d_inv(-w)
    labels.push(w.map((v) => Math.cos(v) - 1));
    labels.push(w.map(Math.sin));
  }
  if (o.aniso > 0) {
    const w0 = random.randn([N]);
    const r0 = random.rand([N]).map((v) => (v * 2 - 1) * Math.PI);
    const w = gate(w0, random.rand([N]), o.aniso * o.p);
    const r = gate(r0, random.rand([N]), o.anisoRotateProb);
    for (let b = 0; b < N; b++) {
      const s = 2 ** (w[b] * o.anisoStd);
      G[b] = mul(mul(mul(G[b], rotate(-r[b])), scale(1 / s, s)), rotate(r[b]));
    }
    labels.push(w.map((v, b) => v * Math.cos(r[b])));
    labels.push(w.map((v, b) => v * Math.sin(r[b])));
  }
  if (o.translateFrac > 0) {
    const w = gate(random.randn([2, N]), random.rand([1, N]), o.translateFrac * o.p, N);
    for (let b = 0; b < N; b++) {
      G[b] = mul(
        G[b],
        translate(-w[b] * W * o.translateFracStd, -w[N + b] * H * o.translateFracStd),
      );
    }
    labels.push(w.slice(0, N));
    labels.push(w.slice(N));
  }

  const labelValues = new Float32Array(N * labels.length);
  for (let j = 0; j < labels.length; j++) {
    for (let b = 0; b < N; b++) labelValues[b * labels.length + j] = labels[j][b];
  }
  const out = tf.tidy(() => {
    let x: Tensor4D = images;
    if (src) {
      const index = new Int32Array(N * H * W);
      for (let b = 0; b < N; b++) {
        for (let i = 0; i < H * W; i++) index[b * H * W + i] = b * H * W + src[b][i];
      }
      x = tf.gather(tf.reshape(x, [N * H * W, C]), tf.tensor1d(index, "int32")).reshape([
        N,
        H,
        W,
        C,
      ]);
    }
    if (geometric) x = resample(x, G);
    // A pixel-blitting-only or empty pipe returns a new tensor too: the caller owns it.
    return x === images ? tf.clone(x) : x;
  });
  return { images: out, labels: tf.tensor2d(labelValues, [N, labels.length]) };
}

/**
 * `images` resampled through the inverse transforms `G` (`augment.py:226-258`): reflect-padded to
 * cover the transformed image plus the filter's support, upsampled ×2 with the `sym6` filter,
 * sampled bilinearly (zeros outside, `align_corners=False`), filtered and downsampled ×2, cropped.
 */
function resample(images: Tensor4D, G: Mat3[]): Tensor4D {
  const [N, H, W, C] = images.shape;
  const cx = (W - 1) / 2, cy = (H - 1) / 2;
  // Margins: how far the transformed corners reach outside, plus the filter's reach.
  const m = [-Infinity, -Infinity, -Infinity, -Infinity]; // -x, -y, x, y
  for (const g of G) {
    for (const [px, py] of [[-cx, -cy], [cx, -cy], [cx, cy], [-cx, cy]]) {
      const x = g[0] * px + g[1] * py + g[2], y = g[3] * px + g[4] * py + g[5];
      m[0] = Math.max(m[0], -x), m[1] = Math.max(m[1], -y);
      m[2] = Math.max(m[2], x), m[3] = Math.max(m[3], y);
    }
  }
  const limit = [W - 1, H - 1, W - 1, H - 1];
  const add = [HZ_PAD * 2 - cx, HZ_PAD * 2 - cy, HZ_PAD * 2 - cx, HZ_PAD * 2 - cy];
  // In float32 as the reference, so that the ceiling lands on the same integer.
  const [mx0, my0, mx1, my1] = m.map((v, i) =>
    Math.ceil(Math.min(Math.max(Math.fround(Math.fround(v) + Math.fround(add[i])), 0), limit[i]))
  );
  const Hp = H + my0 + my1, Wp = W + mx0 + mx1;
  const Hin = 2 * Hp, Win = 2 * Wp; // after upsampling
  const Ho = (H + HZ_PAD * 2) * 2, Wo = (W + HZ_PAD * 2) * 2; // sampled grid
  const theta = G.map((g) => {
    let t = mul(translate((mx0 - mx1) / 2, (my0 - my1) / 2), g);
    t = mul(mul(scale(2, 2), t), scale(0.5, 0.5));
    t = mul(mul(translate(-0.5, -0.5), t), translate(0.5, 0.5));
    return mul(mul(scale(2 / Win, 2 / Hin), t), scale(Wo / 2, Ho / 2));
  });

  // Bilinear taps on the host: 4 row indices into [N·Hin·Win + 1, C] (the last row is zeros, for
  // taps outside the image) and their weights.
  const P = N * Ho * Wo, zero = N * Hin * Win;
  const idx = Array.from({ length: 4 }, () => new Int32Array(P));
  const wts = Array.from({ length: 4 }, () => new Float32Array(P));
  for (let b = 0; b < N; b++) {
    const t = theta[b];
    for (let i = 0; i < Ho; i++) {
      const yn = (2 * i + 1) / Ho - 1;
      for (let j = 0; j < Wo; j++) {
        const xn = (2 * j + 1) / Wo - 1;
        const gx = t[0] * xn + t[1] * yn + t[2], gy = t[3] * xn + t[4] * yn + t[5];
        const ix = ((gx + 1) * Win - 1) / 2, iy = ((gy + 1) * Hin - 1) / 2;
        const x0 = Math.floor(ix), y0 = Math.floor(iy);
        const fx = ix - x0, fy = iy - y0;
        const p = (b * Ho + i) * Wo + j;
        const taps = [[y0, x0, (1 - fy) * (1 - fx)], [y0, x0 + 1, (1 - fy) * fx], [
          y0 + 1,
          x0,
          fy * (1 - fx),
        ], [y0 + 1, x0 + 1, fy * fx]];
        for (let k = 0; k < 4; k++) {
          const [yy, xx, w] = taps[k];
          const inside = yy >= 0 && yy < Hin && xx >= 0 && xx < Win;
          idx[k][p] = inside ? (b * Hin + yy) * Win + xx : zero;
          wts[k][p] = inside ? w : 0;
        }
      }
    }
  }

  return tf.tidy(() => {
    const up = Float32Array.from(SYM6).reverse();
    const down = Float32Array.from(SYM6);
    const filterW = (f: Float32Array) => tf.tile(tf.tensor4d(f, [1, f.length, 1, 1]), [1, 1, C, 1]);
    const filterH = (f: Float32Array) => tf.tile(tf.tensor4d(f, [f.length, 1, 1, 1]), [1, 1, C, 1]);
    let x: tf.Tensor4D = tf.mirrorPad(images, [[0, 0], [my0, my1], [mx0, mx1], [0, 0]], "reflect");
    // Upsample ×2: zeros between pixels, then the flipped filter (`augment.py:236-240`).
    const cpUp = (SYM6.length + 1) >> 1; // 6
    x = tf.slice(
      tf.reshape(tf.stack([x, tf.zerosLike(x)], 3), [N, Hp, 2 * Wp, C]),
      [0, 0, 0, 0],
      [N, Hp, 2 * Wp - 1, C],
    ) as Tensor4D;
    x = tf.depthwiseConv2d(
      tf.pad(x, [[0, 0], [0, 0], [cpUp, cpUp], [0, 0]]),
      filterW(up),
      1,
      "valid",
    );
    x = tf.slice(
      tf.reshape(tf.stack([x, tf.zerosLike(x)], 2), [N, 2 * Hp, Win, C]),
      [0, 0, 0, 0],
      [N, 2 * Hp - 1, Win, C],
    ) as Tensor4D;
    x = tf.depthwiseConv2d(
      tf.pad(x, [[0, 0], [cpUp, cpUp], [0, 0], [0, 0]]),
      filterH(up),
      1,
      "valid",
    );
    // Bilinear sampling (`grid_sample`, `augment.py:246-247`).
    const flat = tf.concat([tf.reshape(x, [N * Hin * Win, C]), tf.zeros([1, C])]);
    let s: tf.Tensor2D | undefined;
    for (let k = 0; k < 4; k++) {
      const term = tf.mul(
        tf.gather(flat, tf.tensor1d(idx[k], "int32")),
        tf.tensor2d(wts[k], [P, 1]),
      ) as tf.Tensor2D;
      s = s ? tf.add(s, term) : term;
    }
    x = s!.reshape([N, Ho, Wo, C]);
    // Downsample ×2 and crop (`augment.py:250-254`).
    const cpDown = (SYM6.length - 1) >> 1; // 5
    x = tf.depthwiseConv2d(
      tf.pad(x, [[0, 0], [0, 0], [cpDown, cpDown], [0, 0]]),
      filterW(down),
      [1, 2],
      "valid",
    );
    x = x.slice([0, 0, HZ_PAD, 0], [N, Ho, W, C]);
    x = tf.depthwiseConv2d(
      tf.pad(x, [[0, 0], [cpDown, cpDown], [0, 0], [0, 0]]),
      filterH(down),
      [2, 1],
      "valid",
    );
    return x.slice([0, HZ_PAD, 0, 0], [N, H, W, C]);
  });
}
