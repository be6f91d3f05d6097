/**
 * The building blocks shared by EDM's U-Nets (`edm:training/networks.py:29-220`), in NHWC.
 *
 * One small class per idea, named as in the original: {@linkcode Linear}, {@linkcode Conv2d}
 * (with FIR up/down-sampling), {@linkcode GroupNorm}, {@linkcode UNetBlock} (residual block with
 * optional self-attention), {@linkcode PositionalEmbedding}, {@linkcode FourierEmbedding}.
 *
 * @module
 */
import { tf } from "../deps.ts";
import { DEFAULT_INIT, type Initializer, type InitSpec } from "./init.ts";
import { Module } from "./module.ts";
import { groupNorm, groupNormSilu, silu as fusedSilu, softmax } from "../runtime/native/fused.ts";
import { webGpuKernelsActive } from "../runtime/webgpu/backend.ts";
import { mulberry32Uint } from "../runtime/random.ts";

/** silu(x) = x · sigmoid(x) (one fused kernel on the `native` backend). */
export function silu(x: tf.Tensor): tf.Tensor {
  return fusedSilu(x);
}

let nextDropoutSeed: (() => number) | undefined;

/**
 * Runs the synchronous `fn` with every dropout mask and label-dropout draw seeded from a
 * mulberry32 stream started at `seed` (one seed per mask, in the order the forward pass draws
 * them), so the masks of a forward pass are a function of `seed`. Outside it, masks are drawn
 * from tfjs' unseeded generator. Nests; `fn` must not be async (the seeds would leak past an
 * `await`).
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { dropout, withDropoutSeed } from "./layers.ts";
 * const x = tf.ones([4, 4]);
 * const a = withDropoutSeed(7, () => dropout(x, 0.5, true));
 * const b = withDropoutSeed(7, () => dropout(x, 0.5, true)); // the same mask as `a`
 * ```
 */
export function withDropoutSeed<T>(seed: number, fn: () => T): T {
  const outer = nextDropoutSeed;
  nextDropoutSeed = mulberry32Uint(seed >>> 0);
  try {
    const out = fn();
    if (out instanceof Promise) throw new TypeError("withDropoutSeed: fn must be synchronous");
    return out;
  } finally {
    nextDropoutSeed = outer;
  }
}

/** The seed of the next dropout draw inside {@linkcode withDropoutSeed}; undefined outside. */
export function dropoutSeed(): number | undefined {
  return nextDropoutSeed?.();
}

/**
 * Inverted dropout (scale by 1/(1-p)), active only when `training`; the identity otherwise.
 * Seeded inside {@linkcode withDropoutSeed}.
 */
export function dropout(x: tf.Tensor, p: number, training: boolean): tf.Tensor {
  return training && p > 0 ? tf.dropout(x, p, undefined, dropoutSeed()) : x;
}

// ---------------------------------------------------------------------------------------------
// Fully-connected layer.

/** `y = x·Wᵀ + b`; weight `[out, in]` in PyTorch, `[in, out]` here. */
export class Linear extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weight: tf.Variable;
  readonly bias?: tf.Variable;

  constructor(
    init: Initializer,
    inFeatures: number,
    outFeatures: number,
    opts: { bias?: boolean; init?: InitSpec } = {},
  ) {
    super();
    const spec = opts.init ?? DEFAULT_INIT;
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    this.weight = this.addParam(
      "weight",
      [outFeatures, inFeatures],
      "linear",
      () => init.weight([inFeatures, outFeatures], spec.mode, inFeatures, outFeatures, spec.weight),
    );
    if (opts.bias ?? true) {
      this.bias = this.addParam(
        "bias",
        [outFeatures],
        "plain",
        () => init.weight([outFeatures], spec.mode, inFeatures, outFeatures, spec.bias),
      );
    }
  }

  /** Applies the layer to `[N, in]`. */
  forward(x: tf.Tensor2D): tf.Tensor2D {
    return tf.fused.matMul({ a: x, b: this.weight as tf.Tensor2D, bias: this.bias }) as tf.Tensor2D;
  }
}

// ---------------------------------------------------------------------------------------------
// Resampling with a separable FIR filter (NHWC).

/** The 2-D resampling filter outer(f, f) / (Σf)², as EDM registers it (`[1, 1, L, L]`). */
export function resampleFilter2d(f: number[]): tf.Tensor {
  const s = f.reduce((a, b) => a + b, 0);
  const L = f.length;
  const vals = new Float32Array(L * L);
  for (let i = 0; i < L; i++) {
    for (let j = 0; j < L; j++) vals[i * L + j] = Math.fround(f[i] * f[j]) / Math.fround(s * s);
  }
  return tf.tensor(vals, [1, 1, L, L]);
}

/** Whether a resampling filter is the box filter [1,1] (average pool / nearest neighbour). */
function isBox(f: tf.Tensor): boolean {
  return f.shape[3] === 2;
}

/** Depthwise filter `[L, L, C, 1]` from the `[1, 1, L, L]` buffer, times `gain`. */
function depthwiseFilter(f: tf.Tensor, channels: number, gain: number): tf.Tensor4D {
  const L = f.shape[3]!;
  const k = tf.reshape(gain === 1 ? f : tf.mul(f, gain), [L, L, 1, 1]);
  return tf.tile(k, [1, 1, channels, 1]) as tf.Tensor4D;
}

/**
 * Depthwise filtering with stride 2 (PyTorch `conv2d(x, f, groups=C, stride=2, padding=pad)`).
 * The box filter [1,1] with no padding is computed as an exact 2×2 mean.
 */
export function downsample(x: tf.Tensor4D, f: tf.Tensor, pad: number): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  if (isBox(f) && pad === 0 && h % 2 === 0 && w % 2 === 0) {
    // The buffer holds 0.25 everywhere; a 2x2 mean equals it up to summation order. Ranks stay
    // <= 4 (tfjs-webgpu runs some rank-5+ kernels on the CPU, with a synchronous read).
    const rows = tf.sum(tf.reshape(x, [n * (h / 2), 2, w / 2, 2 * c]), 1); // [n·h/2, w/2, 2c]
    const both = tf.sum(tf.reshape(rows, [n * (h / 2), w / 2, 2, c]), 2); // [n·h/2, w/2, c]
    return tf.reshape(tf.mul(both, 0.25), [n, h / 2, w / 2, c]) as tf.Tensor4D;
  }
  return tf.depthwiseConv2d(x, depthwiseFilter(f, c, 1), 2, pad);
}

/**
 * Depthwise transposed filtering with stride 2 and the filter times 4 (PyTorch
 * `conv_transpose2d(x, 4f, groups=C, stride=2, padding=pad)`). The box filter with no padding is
 * exact nearest-neighbour upsampling; other filters use zero insertion, padding, and a depthwise
 * correlation with the flipped filter (borders see zeros, as in PyTorch).
 */
export function upsample(x: tf.Tensor4D, f: tf.Tensor, pad: number): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  if (isBox(f) && pad === 0) {
    const cols = tf.reshape(tf.tile(tf.reshape(x, [n * h, w, 1, c]), [1, 1, 2, 1]), [
      n * h,
      1,
      2 * w,
      c,
    ]);
    return tf.reshape(tf.tile(cols, [1, 2, 1, 1]), [n, 2 * h, 2 * w, c]) as tf.Tensor4D;
  }
  const L = f.shape[3]!;
  const p = L - 1 - pad;
  if (p < 0) throw new Error(`upsample: padding ${pad} too large for a filter of length ${L}`);
  // Zero insertion, one axis at a time (ranks <= 4): a zero after every pixel, so the result is
  // [n, 2h, 2w, c] with a trailing zero row and column.
  const zc = tf.pad(tf.reshape(x, [n * h, w, 1, c]), [[0, 0], [0, 0], [0, 1], [0, 0]]);
  const zr = tf.pad(tf.reshape(zc, [n * h, 1, 2 * w, c]), [[0, 0], [0, 1], [0, 0], [0, 0]]);
  const dil = tf.reshape(zr, [n, 2 * h, 2 * w, c]);
  // The dilated image has 2h-1 rows plus that trailing zero row: pad p before and p-1 after.
  const padded = p >= 1
    ? tf.pad(dil, [[0, 0], [p, p - 1], [p, p - 1], [0, 0]])
    : tf.slice(dil, [0, 0, 0, 0], [n, 2 * h - 1, 2 * w - 1, c]);
  const k = tf.reverse(depthwiseFilter(f, c, 4), [0, 1]) as tf.Tensor4D;
  return tf.depthwiseConv2d(padded as tf.Tensor4D, k, 1, "valid");
}

/**
 * Stride-1 convolution whose filter gradient is an im2col matrix product instead of tfjs'
 * `Conv2DBackpropFilter` kernel, which is the bottleneck of training on tfjs-webgpu (about 9× the
 * time of the forward convolution there). Values and gradients equal `tf.conv2d`'s up to
 * float32 summation order.
 *
 *   dW[i, j, c, o] = Σ_{n,h,w} x_pad[n, h+i, w+j, c] · dy[n, h, w, o]
 */
export function conv2dIm2colGrad(x: tf.Tensor4D, w: tf.Tensor4D, pad: number): tf.Tensor4D {
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [x4, w4, save] = args as [tf.Tensor4D, tf.Tensor4D, tf.GradSaveFunc];
    save([x4, w4]);
    return {
      value: tf.conv2d(x4, w4, 1, pad),
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
        const [xv, wv] = saved as [tf.Tensor4D, tf.Tensor4D];
        const d = dy as tf.Tensor4D;
        const [kh, kw, ci, co] = wv.shape;
        const [n, ho, wo] = d.shape;
        const dx = tf.conv2dTranspose(d, wv, xv.shape, 1, pad);
        const xp = pad ? tf.pad(xv, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) : xv;
        const cols: tf.Tensor4D[] = [];
        for (let i = 0; i < kh; i++) {
          for (let j = 0; j < kw; j++) cols.push(tf.slice(xp, [0, i, j, 0], [n, ho, wo, ci]));
        }
        const patches = tf.reshape(cols.length === 1 ? cols[0] : tf.concat(cols, 3), [
          n * ho * wo,
          kh * kw * ci,
        ]);
        const dw = tf.matMul(patches, tf.reshape(d, [n * ho * wo, co]), true, false);
        return [dx, tf.reshape(dw, [kh, kw, ci, co])];
      },
    };
  });
  return f(x, w) as tf.Tensor4D;
}

/**
 * True on webgpu with tfjs' stock kernels (`SIDA_WEBGPU_KERNELS=0`), whose filter gradient is
 * slow enough that the im2col product above pays; our kernels (`runtime/webgpu/conv.ts`) take
 * the plain `Conv2D`/`FusedConv2D` path like every other backend.
 */
function stockWebGpu(): boolean {
  return tf.getBackend() === "webgpu" && !webGpuKernelsActive();
}

// ---------------------------------------------------------------------------------------------
// Convolution with optional up/down-sampling.

/** Options of {@linkcode Conv2d}. */
export interface Conv2dOptions {
  bias?: boolean;
  up?: boolean;
  down?: boolean;
  resampleFilter?: number[];
  fusedResample?: boolean;
  init?: InitSpec;
}

/**
 * EDM's `Conv2d` (`edm:training/networks.py:48-90`): same-padded k×k convolution (absent when
 * `kernel` is 0), optionally preceded by 2× FIR up- or down-sampling, or fused with it.
 */
export class Conv2d extends Module {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly kernel: number;
  readonly up: boolean;
  readonly down: boolean;
  readonly fusedResample: boolean;
  readonly weight?: tf.Variable;
  readonly bias?: tf.Variable;
  readonly resampleFilter?: tf.Variable;

  constructor(
    init: Initializer,
    inChannels: number,
    outChannels: number,
    kernel: number,
    opts: Conv2dOptions = {},
  ) {
    super();
    if (opts.up && opts.down) throw new Error("Conv2d: up and down are exclusive");
    const spec = opts.init ?? DEFAULT_INIT;
    this.inChannels = inChannels;
    this.outChannels = outChannels;
    this.kernel = kernel;
    this.up = opts.up ?? false;
    this.down = opts.down ?? false;
    this.fusedResample = opts.fusedResample ?? false;
    const fanIn = inChannels * kernel * kernel;
    const fanOut = outChannels * kernel * kernel;
    if (kernel) {
      this.weight = this.addParam(
        "weight",
        [outChannels, inChannels, kernel, kernel],
        "conv",
        () =>
          init.weight(
            [kernel, kernel, inChannels, outChannels],
            spec.mode,
            fanIn,
            fanOut,
            spec.weight,
          ),
      );
      if (opts.bias ?? true) {
        this.bias = this.addParam(
          "bias",
          [outChannels],
          "plain",
          () => init.weight([outChannels], spec.mode, fanIn, fanOut, spec.bias),
        );
      }
    }
    if (this.up || this.down) {
      const f = opts.resampleFilter ?? [1, 1];
      this.resampleFilter = this.addBuffer(
        "resample_filter",
        [1, 1, f.length, f.length],
        "plain",
        () => resampleFilter2d(f),
      );
    }
  }

  #conv(x: tf.Tensor4D, pad: number): tf.Tensor4D {
    const w = this.weight as tf.Tensor4D;
    return stockWebGpu() ? conv2dIm2colGrad(x, w, pad) : tf.conv2d(x, w, 1, pad);
  }

  /** The convolution with its bias added by the same kernel (tfjs' `FusedConv2D`). */
  #convWithBias(x: tf.Tensor4D, pad: number): tf.Tensor4D {
    if (stockWebGpu()) return tf.add(this.#conv(x, pad), this.bias!);
    return tf.fused.conv2d({
      x,
      filter: this.weight as tf.Tensor4D,
      strides: 1,
      pad,
      bias: this.bias!,
    });
  }

  /** Applies the layer to NHWC `x`. */
  forward(x: tf.Tensor4D): tf.Tensor4D {
    const w = this.weight;
    const f = this.resampleFilter;
    const wPad = w ? Math.floor(this.kernel / 2) : 0;
    const fPad = f ? Math.floor((f.shape[3]! - 1) / 2) : 0;
    if (this.fusedResample && this.up && w) {
      x = upsample(x, f!, Math.max(fPad - wPad, 0));
      x = this.#conv(x, Math.max(wPad - fPad, 0));
    } else if (this.fusedResample && this.down && w) {
      x = this.#conv(x, wPad + fPad);
      x = downsample(x, f!, 0);
    } else {
      if (this.up) x = upsample(x, f!, fPad);
      if (this.down) x = downsample(x, f!, fPad);
      if (w && this.bias) return this.#convWithBias(x, wPad);
      if (w) x = this.#conv(x, wPad);
    }
    return this.bias ? tf.add(x, this.bias) : x;
  }
}

// ---------------------------------------------------------------------------------------------
// Group normalisation.

/** EDM's `GroupNorm`: `min(32, C // 4)` groups, biased variance, affine weight and bias. */
export class GroupNorm extends Module {
  readonly numChannels: number;
  readonly numGroups: number;
  readonly eps: number;
  readonly weight: tf.Variable;
  readonly bias: tf.Variable;

  constructor(
    numChannels: number,
    opts: { numGroups?: number; minChannelsPerGroup?: number; eps?: number } = {},
  ) {
    super();
    this.numChannels = numChannels;
    this.numGroups = Math.min(
      opts.numGroups ?? 32,
      Math.floor(numChannels / (opts.minChannelsPerGroup ?? 4)),
    );
    if (this.numGroups < 1 || numChannels % this.numGroups !== 0) {
      throw new Error(`GroupNorm: ${numChannels} channels cannot form ${this.numGroups} groups`);
    }
    this.eps = opts.eps ?? 1e-5;
    this.weight = this.addParam("weight", [numChannels], "plain", () => tf.ones([numChannels]));
    this.bias = this.addParam("bias", [numChannels], "plain", () => tf.zeros([numChannels]));
  }

  /** Normalises NHWC `x` over (H, W, C/G) per group (one fused kernel on `native`). */
  forward(x: tf.Tensor4D): tf.Tensor4D {
    return groupNorm(x, this.weight, this.bias, this.numGroups, this.eps);
  }

  /**
   * `silu(this.forward(x))`, as one kernel where the backend has it (webgpu), which neither
   * writes nor keeps the normalised tensor for the gradient.
   */
  forwardSilu(x: tf.Tensor4D): tf.Tensor4D {
    return groupNormSilu(x, this.weight, this.bias, this.numGroups, this.eps);
  }
}

// ---------------------------------------------------------------------------------------------
// Noise-level embeddings.

/**
 * Sinusoidal embedding (DDPM++ and ADM): `[cos(x·f_k), sin(x·f_k)]` with
 * `f_k = (1/maxPositions)^(k / (C/2 − endpoint))`.
 */
export class PositionalEmbedding extends Module {
  readonly numChannels: number;
  readonly maxPositions: number;
  readonly endpoint: boolean;
  readonly #freqs: Float32Array;

  constructor(numChannels: number, opts: { maxPositions?: number; endpoint?: boolean } = {}) {
    super();
    this.numChannels = numChannels;
    this.maxPositions = opts.maxPositions ?? 10000;
    this.endpoint = opts.endpoint ?? false;
    const half = Math.floor(numChannels / 2);
    const denom = half - (this.endpoint ? 1 : 0);
    // Float32 arithmetic, as torch does it: arange / denom, then (1/maxPositions) ** that.
    this.#freqs = new Float32Array(half);
    const base = Math.fround(1 / this.maxPositions);
    for (let k = 0; k < half; k++) this.#freqs[k] = Math.fround(base ** Math.fround(k / denom));
  }

  /** Embeds `[N]` noise labels into `[N, C]`. */
  forward(x: tf.Tensor1D): tf.Tensor2D {
    const arg = tf.mul(tf.reshape(x, [-1, 1]), tf.tensor2d(this.#freqs, [1, this.#freqs.length]));
    return tf.concat([tf.cos(arg), tf.sin(arg)], 1) as tf.Tensor2D;
  }
}

/** Random Fourier features (NCSN++): `[cos(2π·x·f), sin(2π·x·f)]`, `f` a stored buffer of N(0, 16²). */
export class FourierEmbedding extends Module {
  readonly freqs: tf.Variable;

  constructor(init: Initializer, numChannels: number, scale = 16) {
    super();
    const half = Math.floor(numChannels / 2);
    this.freqs = this.addBuffer("freqs", [half], "plain", () => init.normal([half], scale));
  }

  /** Embeds `[N]` noise labels into `[N, C]`. */
  forward(x: tf.Tensor1D): tf.Tensor2D {
    const f = tf.reshape(tf.mul(this.freqs, 2 * Math.PI), [1, -1]);
    const arg = tf.mul(tf.reshape(x, [-1, 1]), f);
    return tf.concat([tf.cos(arg), tf.sin(arg)], 1) as tf.Tensor2D;
  }
}

// ---------------------------------------------------------------------------------------------
// U-Net block.

/** Options of {@linkcode UNetBlock} (`edm:training/networks.py:133-163`). */
export interface UNetBlockOptions {
  embChannels: number;
  up?: boolean;
  down?: boolean;
  attention?: boolean;
  /** Attention heads; default `outChannels / channelsPerHead`. */
  numHeads?: number;
  channelsPerHead?: number;
  dropout?: number;
  skipScale?: number;
  eps?: number;
  resampleFilter?: number[];
  resampleProj?: boolean;
  adaptiveScale?: boolean;
  init?: InitSpec;
  initZero?: InitSpec;
  initAttn?: InitSpec;
}

/**
 * The residual block of DDPM++, NCSN++ and ADM: GN → SiLU → conv (with resampling), the noise
 * embedding as a shift (or scale and shift), GN → SiLU → dropout → conv, a skip connection, and
 * optional multi-head self-attention.
 */
export class UNetBlock extends Module {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly numHeads: number;
  readonly dropout: number;
  readonly skipScale: number;
  readonly adaptiveScale: boolean;
  readonly norm0: GroupNorm;
  readonly conv0: Conv2d;
  readonly affine: Linear;
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly skip?: Conv2d;
  readonly norm2?: GroupNorm;
  readonly qkv?: Conv2d;
  readonly proj?: Conv2d;

  constructor(init: Initializer, inChannels: number, outChannels: number, o: UNetBlockOptions) {
    super();
    this.inChannels = inChannels;
    this.outChannels = outChannels;
    this.numHeads = !o.attention
      ? 0
      : o.numHeads ?? Math.floor(outChannels / (o.channelsPerHead ?? 64));
    if (o.attention && this.numHeads < 1) {
      throw new Error(`UNetBlock: attention with ${outChannels} channels gives no heads`);
    }
    this.dropout = o.dropout ?? 0;
    this.skipScale = o.skipScale ?? 1;
    this.adaptiveScale = o.adaptiveScale ?? true;
    const eps = o.eps ?? 1e-5;
    const rs = { up: o.up, down: o.down, resampleFilter: o.resampleFilter ?? [1, 1] };
    const initSpec = o.init ?? DEFAULT_INIT;
    const initZero = o.initZero ?? { ...DEFAULT_INIT, weight: 0 };
    this.norm0 = this.addChild("norm0", new GroupNorm(inChannels, { eps }));
    this.conv0 = this.addChild(
      "conv0",
      new Conv2d(init, inChannels, outChannels, 3, { ...rs, init: initSpec }),
    );
    this.affine = this.addChild(
      "affine",
      new Linear(init, o.embChannels, outChannels * (this.adaptiveScale ? 2 : 1), {
        init: initSpec,
      }),
    );
    this.norm1 = this.addChild("norm1", new GroupNorm(outChannels, { eps }));
    this.conv1 = this.addChild(
      "conv1",
      new Conv2d(init, outChannels, outChannels, 3, { init: initZero }),
    );
    if (outChannels !== inChannels || o.up || o.down) {
      const kernel = o.resampleProj || outChannels !== inChannels ? 1 : 0;
      this.skip = this.addChild(
        "skip",
        new Conv2d(init, inChannels, outChannels, kernel, { ...rs, init: initSpec }),
      );
    }
    if (this.numHeads) {
      this.norm2 = this.addChild("norm2", new GroupNorm(outChannels, { eps }));
      this.qkv = this.addChild(
        "qkv",
        new Conv2d(init, outChannels, outChannels * 3, 1, { init: o.initAttn ?? initSpec }),
      );
      this.proj = this.addChild(
        "proj",
        new Conv2d(init, outChannels, outChannels, 1, { init: initZero }),
      );
    }
  }

  /** Applies the block to NHWC `x` with the embedding `emb` (`[N or 1, embChannels]`). */
  forward(x: tf.Tensor4D, emb: tf.Tensor2D): tf.Tensor4D {
    const orig = x;
    x = this.conv0.forward(this.norm0.forwardSilu(x));
    const params = tf.reshape(this.affine.forward(emb), [emb.shape[0], 1, 1, -1]);
    if (this.adaptiveScale) {
      const [scale, shift] = tf.split(params, 2, 3);
      x = silu(tf.add(shift, tf.mul(this.norm1.forward(x), tf.add(scale, 1)))) as tf.Tensor4D;
    } else {
      x = this.norm1.forwardSilu(tf.add(x, params) as tf.Tensor4D);
    }
    x = this.conv1.forward(dropout(x, this.dropout, this.training) as tf.Tensor4D);
    x = tf.add(x, this.skip ? this.skip.forward(orig) : orig);
    if (this.skipScale !== 1) x = tf.mul(x, this.skipScale);
    if (this.numHeads) x = this.#attention(x);
    return x;
  }

  /**
   * Multi-head self-attention. The qkv convolution's output channel `(head·Ch + c)·3 + j` holds
   * q (j = 0), k (j = 1) or v (j = 2) of channel c of a head: interleaved, as EDM reshapes it.
   * q, k and v are computed as three matrix products with the matching columns of the 1×1
   * weight (the same sums as the one convolution), which spares de-interleaving the
   * activations and re-interleaving their gradients.
   */
  #attention(x: tf.Tensor4D): tf.Tensor4D {
    const [n, h, w, c] = x.shape;
    const heads = this.numHeads;
    const ch = c / heads;
    const hw = h * w;
    const xn = tf.reshape(this.norm2!.forward(x), [n * hw, c]) as tf.Tensor2D;
    // Column (head·Ch + c)·3 + j of the weight is [i, head·Ch + c, j] of this [C, C, 3] view.
    const weights = tf.unstack(tf.reshape(this.qkv!.weight!, [c, c, 3]), 2) as tf.Tensor2D[];
    const biases = this.qkv!.bias
      ? tf.unstack(tf.reshape(this.qkv!.bias, [c, 3]), 1) as tf.Tensor1D[]
      : undefined;
    const toHeads = (t: tf.Tensor): tf.Tensor3D =>
      (heads === 1
        ? tf.reshape(t, [n, hw, ch])
        : tf.reshape(tf.transpose(tf.reshape(t, [n, hw, heads, ch]), [0, 2, 1, 3]), [
          n * heads,
          hw,
          ch,
        ])) as tf.Tensor3D;
    const [q, k, v] = [0, 1, 2].map((j) =>
      toHeads(tf.fused.matMul({ a: xn, b: weights[j], bias: biases?.[j] }))
    );
    // w[i, j] = softmax_j(Σ_c q[c, i]·k[c, j] / sqrt(Ch)); EDM scales k before the product.
    const wts = softmax(tf.matMul(q, tf.div(k, Math.sqrt(ch)), false, true));
    const a = tf.matMul(wts, v); // [n·heads, hw, ch]
    const merged = heads === 1
      ? tf.reshape(a, [n, h, w, c])
      : tf.reshape(tf.transpose(tf.reshape(a, [n, heads, hw, ch]), [0, 2, 1, 3]), [n, h, w, c]);
    const y = tf.add(this.proj!.forward(merged as tf.Tensor4D), x);
    return (this.skipScale !== 1 ? tf.mul(y, this.skipScale) : y) as tf.Tensor4D;
  }
}
