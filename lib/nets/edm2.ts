/**
 * The EDM2 network ("Analyzing and Improving the Training Dynamics of Diffusion Models",
 * Karras et al. 2024): a magnitude-preserving U-Net (`edm2:training/networks_edm2.py:166-262`)
 * inside its preconditioning with the learned uncertainty head (`:267-307`), plus SiDA's encoder
 * logits (`sid:sida_training_edm2/sida_networks_edm2.py:84-116`: the channel mean of the last
 * encoder block's output).
 *
 * State-dict names and PyTorch shapes are those of `training.networks_edm2.Precond`
 * (`unet.enc.64x64_conv.weight`, `unet.emb_fourier.freqs`, `logvar_linear.weight`, …), so the
 * `ema` network of an `edm2-img512-*.pkl` loads as is.
 *
 * Weight normalisation: every `MPConv` normalises its weight in the forward pass (traditional
 * weight normalisation, differentiable). The reference also overwrites the stored weight with its
 * normalised value at every training-mode forward (forced weight normalisation); here that is
 * {@linkcode EDM2Precond.renormalize}, to be called outside the gradient computation after each
 * optimizer step (and once after a fresh initialisation).
 *
 * @module
 */
import { tf } from "../deps.ts";
import { ConfigError } from "./config.ts";
import { downsample, dropout, resampleFilter2d, upsample } from "./layers.ts";
import { Module } from "./module.ts";
import { InputError } from "./precond.ts";
import type { DenoiseOptions, Denoiser, DenoiseResult, ReturnFlag } from "./types.ts";
import { Initializer } from "./init.ts";
import { softmax } from "../runtime/native/fused.ts";

// ---------------------------------------------------------------------------------------------
// Configuration.

/** Options of the EDM2 U-Net (`edm2:training/networks_edm2.py:168-181`, `Block` `:113-126`). */
export interface Edm2UNetConfig {
  arch: "EDM2UNet";
  /** Base channel count (XS 128, S 192, M 256, L 320, XL 384, XXL 448). */
  modelChannels: number;
  /** Per-resolution channel multipliers. Default [1,2,3,4]. */
  channelMult: number[];
  /** Noise embedding width multiplier; null: `channelMult[0]`. */
  channelMultNoise: number | null;
  /** Embedding width multiplier; null: `max(channelMult)`. */
  channelMultEmb: number | null;
  /** Blocks per resolution. Default 3. */
  numBlocks: number;
  /** Resolutions with self-attention. Default [16, 8]. */
  attnResolutions: number[];
  /** Balance between noise embedding (0) and class embedding (1). Default 0.5. */
  labelBalance: number;
  /** Balance between skip connections (0) and main path (1). Default 0.5. */
  concatBalance: number;
  /** Resampling filter. Default [1,1]. */
  resampleFilter: number[];
  /** Channels per attention head. Default 64. */
  channelsPerHead: number;
  /** Dropout probability (training mode only). Default 0. */
  dropout: number;
  /** Balance between main branch (0) and residual branch (1). Default 0.3. */
  resBalance: number;
  /** Balance between main branch (0) and self-attention (1). Default 0.3. */
  attnBalance: number;
  /** Clip output activations of each block to ±clipAct; null: no clipping. Default 256. */
  clipAct: number | null;
}

/** An EDM2 `Precond` (`edm2:training/networks_edm2.py:267-283`). */
export interface Edm2Config {
  precond: "EDM2Precond";
  imgResolution: number;
  imgChannels: number;
  labelDim: number;
  /** Whether the original ran in float16 (kept for round trips; we compute in float32). */
  useFp16: boolean;
  sigmaData: number;
  /** Width of the uncertainty head's Fourier features. Default 128. */
  logvarChannels: number;
  unet: Edm2UNetConfig;
}

/** Partial configuration: everything optional but the sizes. */
export type Edm2ConfigInput =
  & Partial<Omit<Edm2Config, "unet" | "precond">>
  & { precond?: "EDM2Precond"; unet?: Partial<Edm2UNetConfig> };

/** UNet and Block defaults (`edm2:training/networks_edm2.py:113-126,168-181`). */
export const EDM2_UNET_DEFAULTS: Edm2UNetConfig = {
  arch: "EDM2UNet",
  modelChannels: 192,
  channelMult: [1, 2, 3, 4],
  channelMultNoise: null,
  channelMultEmb: null,
  numBlocks: 3,
  attnResolutions: [16, 8],
  labelBalance: 0.5,
  concatBalance: 0.5,
  resampleFilter: [1, 1],
  channelsPerHead: 64,
  dropout: 0,
  resBalance: 0.3,
  attnBalance: 0.3,
  clipAct: 256,
};

/** Fills in the defaults and checks the configuration. */
export function resolveEdm2Config(input: Edm2ConfigInput): Edm2Config {
  const unet: Edm2UNetConfig = { ...EDM2_UNET_DEFAULTS, ...(input.unet ?? {}), arch: "EDM2UNet" };
  const c: Edm2Config = {
    precond: "EDM2Precond",
    imgResolution: input.imgResolution ?? 64,
    imgChannels: input.imgChannels ?? 4,
    labelDim: input.labelDim ?? 0,
    useFp16: input.useFp16 ?? true,
    sigmaData: input.sigmaData ?? 0.5,
    logvarChannels: input.logvarChannels ?? 128,
    unet,
  };
  const posInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0;
  if (!posInt(c.imgResolution) || !posInt(c.imgChannels) || !posInt(c.logvarChannels)) {
    throw new ConfigError("EDM2: imgResolution, imgChannels, logvarChannels must be positive");
  }
  if (!Number.isInteger(c.labelDim) || c.labelDim < 0) throw new ConfigError("EDM2: bad labelDim");
  if (!posInt(unet.modelChannels) || !unet.channelMult.length || !unet.channelMult.every(posInt)) {
    throw new ConfigError("EDM2: modelChannels and channelMult must be positive integers");
  }
  if (c.imgResolution % (1 << (unet.channelMult.length - 1)) !== 0) {
    throw new ConfigError(
      `EDM2: imgResolution ${c.imgResolution} not divisible by 2^${unet.channelMult.length - 1}`,
    );
  }
  if (!posInt(unet.channelsPerHead) || !Number.isInteger(unet.numBlocks) || unet.numBlocks < 0) {
    throw new ConfigError("EDM2: bad channelsPerHead or numBlocks");
  }
  if (!(c.sigmaData > 0)) throw new ConfigError("EDM2: sigmaData must be positive");
  return c;
}

const KW: [keyof Edm2UNetConfig, string][] = [
  ["modelChannels", "model_channels"],
  ["channelMult", "channel_mult"],
  ["channelMultNoise", "channel_mult_noise"],
  ["channelMultEmb", "channel_mult_emb"],
  ["numBlocks", "num_blocks"],
  ["attnResolutions", "attn_resolutions"],
  ["labelBalance", "label_balance"],
  ["concatBalance", "concat_balance"],
  ["resampleFilter", "resample_filter"],
  ["channelsPerHead", "channels_per_head"],
  ["dropout", "dropout"],
  ["resBalance", "res_balance"],
  ["attnBalance", "attn_balance"],
  ["clipAct", "clip_act"],
];

/** The Python `Precond` kwargs (snake_case, as in a pickle's `init_kwargs`) to a configuration. */
export function fromEdm2Kwargs(kw: Record<string, unknown>): Edm2Config {
  const known = new Set([
    "img_resolution",
    "img_channels",
    "label_dim",
    "use_fp16",
    "sigma_data",
    "logvar_channels",
    "class_name",
    ...KW.map(([, s]) => s),
  ]);
  const unknown = Object.keys(kw).filter((k) => !known.has(k));
  if (unknown.length) throw new ConfigError(`EDM2: unsupported kwargs ${unknown.join(", ")}`);
  const unet: Partial<Edm2UNetConfig> = {};
  for (const [ts, py] of KW) {
    if (kw[py] !== undefined) (unet as Record<string, unknown>)[ts] = kw[py];
  }
  return resolveEdm2Config({
    imgResolution: kw.img_resolution as number,
    imgChannels: kw.img_channels as number,
    labelDim: kw.label_dim as number,
    useFp16: kw.use_fp16 as boolean | undefined,
    sigmaData: kw.sigma_data as number | undefined,
    logvarChannels: kw.logvar_channels as number | undefined,
    unet,
  });
}

/** A configuration to the Python `Precond` kwargs (the inverse of {@linkcode fromEdm2Kwargs}). */
export function toEdm2Kwargs(c: Edm2Config): Record<string, unknown> {
  const kw: Record<string, unknown> = {
    img_resolution: c.imgResolution,
    img_channels: c.imgChannels,
    label_dim: c.labelDim,
    use_fp16: c.useFp16,
    sigma_data: c.sigmaData,
    logvar_channels: c.logvarChannels,
  };
  for (const [ts, py] of KW) kw[py] = c.unet[ts];
  return kw;
}

/** EDM2 presets (`edm2:train_edm2.py:25-37`): width and dropout per size. */
export const EDM2_SIZES: Record<string, { channels: number; dropout: number }> = {
  xxs: { channels: 64, dropout: 0 },
  xs: { channels: 128, dropout: 0 },
  s: { channels: 192, dropout: 0 },
  m: { channels: 256, dropout: 0.1 },
  l: { channels: 320, dropout: 0.1 },
  xl: { channels: 384, dropout: 0.1 },
  xxl: { channels: 448, dropout: 0.1 },
};

/**
 * An EDM2 preset: `edm2-img512-{xxs,xs,s,m,l,xl,xxl}` (latent 4×64×64 of the Stability VAE,
 * 1000 classes) or `edm2-img64-{xs,s,m,l,xl}` (RGB 64×64, 1000 classes).
 */
export function edm2Preset(name: string): Edm2Config {
  const m = /^edm2-img(512|64)-(xxs|xs|s|m|l|xl|xxl)$/.exec(name);
  if (!m || (m[1] === "64" && (m[2] === "xxs" || m[2] === "xxl"))) {
    throw new ConfigError(`unknown EDM2 preset '${name}'`);
  }
  const size = EDM2_SIZES[m[2]];
  return resolveEdm2Config({
    imgResolution: 64,
    imgChannels: m[1] === "512" ? 4 : 3,
    labelDim: 1000,
    unet: { modelChannels: size.channels, dropout: size.dropout },
  });
}

/** Whether a kwargs dictionary or class name describes an EDM2 `Precond`. */
export function isEdm2Kwargs(kw: Record<string, unknown>): boolean {
  return "logvar_channels" in kw || "label_balance" in kw || "concat_balance" in kw ||
    "res_balance" in kw || "clip_act" in kw || "channels_per_head" in kw;
}

// ---------------------------------------------------------------------------------------------
// Magnitude-preserving primitives (`edm2:training/networks_edm2.py:20-106`).

/** `normalize(x, dim)`: `x / (eps + ‖x‖·sqrt(|norm|/|x|))` over `axes` (`:20-25`). */
export function mpNormalize(x: tf.Tensor, axes: number[], eps = 1e-4): tf.Tensor {
  const count = axes.reduce((p, a) => p * x.shape[a], 1);
  const norm = tf.sqrt(tf.sum(tf.square(x), axes, true));
  return tf.div(x, tf.add(tf.mul(norm, Math.sqrt(1 / count)), eps));
}

/** Magnitude-preserving SiLU (`:49-50`). */
export function mpSilu(x: tf.Tensor): tf.Tensor {
  return tf.div(tf.mul(x, tf.sigmoid(x)), 0.596);
}

/** Magnitude-preserving sum (`:55-56`): `lerp(a, b, t) / sqrt((1-t)² + t²)`. */
export function mpSum(a: tf.Tensor, b: tf.Tensor, t = 0.5): tf.Tensor {
  return tf.div(tf.add(a, tf.mul(tf.sub(b, a), t)), Math.sqrt((1 - t) ** 2 + t ** 2));
}

/** Magnitude-preserving concatenation along channels (NHWC; `:61-67`). */
export function mpCat(a: tf.Tensor4D, b: tf.Tensor4D, t = 0.5): tf.Tensor4D {
  const na = a.shape[3], nb = b.shape[3];
  const c = Math.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2));
  return tf.concat([tf.mul(a, c / Math.sqrt(na) * (1 - t)), tf.mul(b, c / Math.sqrt(nb) * t)], 3);
}

/** Magnitude-preserving Fourier features (`:72-83`): `cos(x·freqs + phases)·√2`. */
export class MPFourier extends Module {
  readonly freqs: tf.Variable;
  readonly phases: tf.Variable;
  constructor(init: Initializer, channels: number, bandwidth = 1) {
    super();
    this.freqs = this.addBuffer(
      "freqs",
      [channels],
      "plain",
      () => init.normal([channels], 2 * Math.PI * bandwidth),
    );
    this.phases = this.addBuffer(
      "phases",
      [channels],
      "plain",
      () =>
        init.kind === "zeros"
          ? tf.zeros([channels])
          : tf.randomUniform([channels], 0, 2 * Math.PI, "float32", init.nextSeed()),
    );
  }
  /** `[N]` → `[N, channels]`. */
  forward(x: tf.Tensor1D): tf.Tensor2D {
    const y = tf.add(tf.mul(tf.reshape(x, [-1, 1]), tf.reshape(this.freqs, [1, -1])), this.phases);
    return tf.mul(tf.cos(y), Math.SQRT2) as tf.Tensor2D;
  }
}

/**
 * Magnitude-preserving convolution or fully-connected layer with weight normalisation
 * (`:88-106`). Weight `[out, in, kh, kw]` (conv) or `[out, in]` (linear) in PyTorch.
 */
export class MPConv extends Module {
  readonly weight: tf.Variable;
  readonly outChannels: number;
  readonly fanIn: number;
  readonly isConv: boolean;
  constructor(init: Initializer, inChannels: number, outChannels: number, kernel: number[]) {
    super();
    this.outChannels = outChannels;
    this.isConv = kernel.length === 2;
    this.fanIn = inChannels * (this.isConv ? kernel[0] * kernel[1] : 1);
    const shape = this.isConv ? [kernel[0], kernel[1], inChannels, outChannels] : [
      inChannels,
      outChannels,
    ];
    this.weight = this.addParam(
      "weight",
      this.isConv ? [outChannels, inChannels, kernel[0], kernel[1]] : [outChannels, inChannels],
      this.isConv ? "conv" : "linear",
      () => init.normal(shape, 1),
    );
  }
  /** The axes of one output row in our layout (all but the output axis). */
  get rowAxes(): number[] {
    return this.isConv ? [0, 1, 2] : [0];
  }
  /** Forced weight normalisation: the stored weight becomes `normalize(weight)` (no gradient). */
  renormalize(): void {
    tf.tidy(() => this.weight.assign(mpNormalize(this.weight, this.rowAxes)));
  }
  /**
   * The per-output-channel factor `gain / √fan_in / (‖w_o‖·√(1/fan_in) + ε)` that turns the stored
   * weight into the reference's `normalize(w) · gain / √fan_in` (`:88-106`), shape `[out]`.
   */
  outputScale(gain: number | tf.Tensor = 1): tf.Tensor1D {
    return tf.tidy(() => {
      const norm = tf.sqrt(tf.sum(tf.square(this.weight), this.rowAxes));
      const denom = tf.add(tf.mul(norm, Math.sqrt(1 / this.fanIn)), 1e-4);
      const g = typeof gain === "number"
        ? gain / Math.sqrt(this.fanIn)
        : tf.div(gain, Math.sqrt(this.fanIn));
      return tf.div(g, denom) as tf.Tensor1D;
    });
  }
  /**
   * Applies the layer: NHWC for a conv, `[N, in]` for a linear layer.
   *
   * Each output channel is linear in its own weight row, so `conv(x, w·s) = conv(x, w)·s` for a
   * per-channel `s`: the layer convolves with the stored weight and scales the output, the same
   * function (and gradient) as the reference's `conv(x, normalize(w)·gain/√fan_in)` without a
   * weight-sized temporary, or a weight-sized tensor kept for the backward pass, per forward.
   */
  forward(x: tf.Tensor, gain: number | tf.Tensor = 1): tf.Tensor {
    const s = this.outputScale(gain);
    const y = this.isConv
      ? tf.conv2d(x as tf.Tensor4D, this.weight as tf.Tensor4D, 1, "same")
      : tf.matMul(x as tf.Tensor2D, this.weight as tf.Tensor2D);
    return tf.mul(y, s);
  }
}

// ---------------------------------------------------------------------------------------------
// Block (`:111-161`).

interface BlockOptions {
  flavor: "enc" | "dec";
  resampleMode: "keep" | "up" | "down";
  attention: boolean;
}

/** U-Net encoder/decoder block with optional self-attention (`edm2:…networks_edm2.py:111-161`). */
export class Edm2Block extends Module {
  readonly outChannels: number;
  readonly numHeads: number;
  readonly embGain: tf.Variable;
  readonly convRes0: MPConv;
  readonly embLinear: MPConv;
  readonly convRes1: MPConv;
  readonly convSkip?: MPConv;
  readonly attnQkv?: MPConv;
  readonly attnProj?: MPConv;
  constructor(
    init: Initializer,
    inC: number,
    outC: number,
    embC: number,
    readonly o: BlockOptions,
    readonly u: Edm2UNetConfig,
  ) {
    super();
    this.outChannels = outC;
    this.numHeads = o.attention ? Math.floor(outC / u.channelsPerHead) : 0;
    this.embGain = this.addParam("emb_gain", [], "plain", () => tf.scalar(0));
    this.convRes0 = this.addChild(
      "conv_res0",
      new MPConv(init, o.flavor === "enc" ? outC : inC, outC, [3, 3]),
    );
    this.embLinear = this.addChild("emb_linear", new MPConv(init, embC, outC, []));
    this.convRes1 = this.addChild("conv_res1", new MPConv(init, outC, outC, [3, 3]));
    if (inC !== outC) {
      this.convSkip = this.addChild("conv_skip", new MPConv(init, inC, outC, [1, 1]));
    }
    if (this.numHeads) {
      this.attnQkv = this.addChild("attn_qkv", new MPConv(init, outC, outC * 3, [1, 1]));
      this.attnProj = this.addChild("attn_proj", new MPConv(init, outC, outC, [1, 1]));
    }
  }

  forward(xIn: tf.Tensor4D, emb: tf.Tensor2D): tf.Tensor4D {
    const { o, u } = this;
    let x: tf.Tensor4D = xIn;
    if (o.resampleMode !== "keep") {
      const f = resampleFilter2d(u.resampleFilter);
      const pad = Math.floor((u.resampleFilter.length - 1) / 2);
      x = o.resampleMode === "down" ? downsample(x, f, pad) : upsample(x, f, pad);
    }
    if (o.flavor === "enc") {
      if (this.convSkip) x = this.convSkip.forward(x) as tf.Tensor4D;
      x = mpNormalize(x, [3]) as tf.Tensor4D;
    }
    let y = this.convRes0.forward(mpSilu(x));
    const c = tf.add(this.embLinear.forward(emb, this.embGain), 1);
    y = mpSilu(tf.mul(y, tf.reshape(c, [c.shape[0], 1, 1, y.shape[3]!])));
    y = dropout(y, u.dropout, this.training);
    y = this.convRes1.forward(y);
    if (o.flavor === "dec" && this.convSkip) x = this.convSkip.forward(x) as tf.Tensor4D;
    x = mpSum(x, y, u.resBalance) as tf.Tensor4D;
    if (this.numHeads) {
      const [b, h, w, cc] = x.shape;
      const heads = this.numHeads, hc = cc / heads, hw = h * w;
      const qkv = tf.reshape(this.attnQkv!.forward(x), [b * hw, heads, hc, 3]);
      const parts = tf.split(mpNormalize(qkv, [2]), 3, 3);
      const [q, k, v] = parts.map((p) =>
        tf.reshape(tf.transpose(tf.reshape(p, [b, hw, heads, hc]), [0, 2, 1, 3]), [
          b * heads,
          hw,
          hc,
        ]) as tf.Tensor3D
      );
      const att = softmax(tf.div(tf.matMul(q, k, false, true), Math.sqrt(hc)));
      const out = tf.matMul(att as tf.Tensor3D, v); // [b·heads, hw, hc]
      const back = tf.reshape(tf.transpose(tf.reshape(out, [b, heads, hw, hc]), [0, 2, 1, 3]), [
        b,
        h,
        w,
        cc,
      ]);
      x = mpSum(x, this.attnProj!.forward(back), u.attnBalance) as tf.Tensor4D;
    }
    if (u.clipAct !== null) x = tf.clipByValue(x, -u.clipAct, u.clipAct);
    return x;
  }
}

// ---------------------------------------------------------------------------------------------
// UNet (`:166-262`).

/** The EDM2 U-Net (`edm2:training/networks_edm2.py:166-262`); state-dict prefix `unet.`. */
export class Edm2UNet extends Module {
  readonly outGain: tf.Variable;
  readonly embFourier: MPFourier;
  readonly embNoise: MPConv;
  readonly embLabel?: MPConv;
  readonly enc: Module;
  readonly dec: Module;
  readonly outConv: MPConv;
  readonly encList: [string, MPConv | Edm2Block][] = [];
  readonly decList: [string, Edm2Block][] = [];

  constructor(init: Initializer, c: Edm2Config) {
    super();
    const u = c.unet;
    const cblock = u.channelMult.map((m) => u.modelChannels * m);
    const cnoise = u.channelMultNoise !== null ? u.modelChannels * u.channelMultNoise : cblock[0];
    const cemb = u.channelMultEmb !== null
      ? u.modelChannels * u.channelMultEmb
      : Math.max(...cblock);
    this.outGain = this.addParam("out_gain", [], "plain", () => tf.scalar(0));
    this.embFourier = this.addChild("emb_fourier", new MPFourier(init, cnoise));
    this.embNoise = this.addChild("emb_noise", new MPConv(init, cnoise, cemb, []));
    if (c.labelDim) {
      this.embLabel = this.addChild("emb_label", new MPConv(init, c.labelDim, cemb, []));
    }
    // ModuleDicts: plain containers holding their children under the dict keys.
    this.enc = this.addChild("enc", new Module());
    this.dec = this.addChild("dec", new Module());
    const addTo = <M extends Module>(parent: Module, name: string, m: M): M =>
      (parent as unknown as { addChild(n: string, m: M): M }).addChild(name, m);
    const block = (inC: number, outC: number, o: BlockOptions) =>
      new Edm2Block(init, inC, outC, cemb, o, u);
    let cout = c.imgChannels + 1;
    const skips: number[] = [];
    cblock.forEach((channels, level) => {
      const res = c.imgResolution >> level;
      if (level === 0) {
        const cin = cout;
        cout = channels;
        const m = addTo(this.enc, `${res}x${res}_conv`, new MPConv(init, cin, cout, [3, 3]));
        this.encList.push([`${res}x${res}_conv`, m]);
      } else {
        const m = addTo(
          this.enc,
          `${res}x${res}_down`,
          block(cout, cout, { flavor: "enc", resampleMode: "down", attention: false }),
        );
        this.encList.push([`${res}x${res}_down`, m]);
      }
      skips.push(cout);
      for (let idx = 0; idx < u.numBlocks; idx++) {
        const cin = cout;
        cout = channels;
        const m = addTo(
          this.enc,
          `${res}x${res}_block${idx}`,
          block(cin, cout, {
            flavor: "enc",
            resampleMode: "keep",
            attention: u.attnResolutions.includes(res),
          }),
        );
        this.encList.push([`${res}x${res}_block${idx}`, m]);
        skips.push(cout);
      }
    });
    for (let level = cblock.length - 1; level >= 0; level--) {
      const channels = cblock[level];
      const res = c.imgResolution >> level;
      const add = (name: string, b: Edm2Block) => {
        addTo(this.dec, name, b);
        this.decList.push([name, b]);
      };
      if (level === cblock.length - 1) {
        add(
          `${res}x${res}_in0`,
          block(cout, cout, { flavor: "dec", resampleMode: "keep", attention: true }),
        );
        add(
          `${res}x${res}_in1`,
          block(cout, cout, { flavor: "dec", resampleMode: "keep", attention: false }),
        );
      } else {
        add(
          `${res}x${res}_up`,
          block(cout, cout, { flavor: "dec", resampleMode: "up", attention: false }),
        );
      }
      for (let idx = 0; idx < u.numBlocks + 1; idx++) {
        const cin = cout + skips.pop()!;
        cout = channels;
        add(
          `${res}x${res}_block${idx}`,
          block(cin, cout, {
            flavor: "dec",
            resampleMode: "keep",
            attention: u.attnResolutions.includes(res),
          }),
        );
      }
    }
    this.outConv = this.addChild("out_conv", new MPConv(init, cout, c.imgChannels, [3, 3]));
  }

  /** Runs the U-Net; `logits` when the flag asks for them, `out` unless the flag is `encoder`. */
  forward(
    xIn: tf.Tensor4D,
    noiseLabels: tf.Tensor1D,
    classLabels: tf.Tensor2D | undefined,
    flag: ReturnFlag,
    labelBalance: number,
    concatBalance: number,
  ): { out?: tf.Tensor4D; logits?: tf.Tensor4D } {
    let emb = this.embNoise.forward(this.embFourier.forward(noiseLabels)) as tf.Tensor2D;
    if (this.embLabel && classLabels) {
      const l = this.embLabel.forward(tf.mul(classLabels, Math.sqrt(classLabels.shape[1])));
      emb = mpSum(emb, l, labelBalance) as tf.Tensor2D;
    }
    emb = mpSilu(emb) as tf.Tensor2D;
    const [n, h, w] = xIn.shape;
    let x = tf.concat([xIn, tf.ones([n, h, w, 1])], 3) as tf.Tensor4D;
    const skips: tf.Tensor4D[] = [];
    for (const [, m] of this.encList) {
      x = (m instanceof MPConv ? m.forward(x) : m.forward(x, emb)) as tf.Tensor4D;
      skips.push(x);
    }
    const logits = flag === "decoder" ? undefined : tf.mean(x, 3, true) as tf.Tensor4D;
    if (flag === "encoder") return { logits };
    for (const [name, b] of this.decList) {
      if (name.includes("block")) x = mpCat(x, skips.pop()!, concatBalance);
      x = b.forward(x, emb);
    }
    return { out: this.outConv.forward(x, this.outGain) as tf.Tensor4D, logits };
  }
}

// ---------------------------------------------------------------------------------------------
// Precond (`:267-307`).

/**
 * The EDM2 preconditioned denoiser (`edm2:training/networks_edm2.py:267-307`) with SiDA's
 * `returnFlag` (`sid:sida_training_edm2/sida_networks_edm2.py:150-192`) and the uncertainty head
 * {@linkcode EDM2Precond.logvar} (`return_logvar=True`).
 */
export class EDM2Precond extends Module implements Denoiser {
  readonly config: Edm2Config;
  readonly imgResolution: number;
  readonly imgChannels: number;
  readonly labelDim: number;
  readonly augmentDim = 0;
  readonly sigmaMin = 0;
  readonly sigmaMax = Infinity;
  readonly sigmaData: number;
  readonly unet: Edm2UNet;
  readonly logvarFourier: MPFourier;
  readonly logvarLinear: MPConv;

  /**
   * `init: "random"` draws weights as the reference does (standard normal MPConv weights, zero
   * gains, random Fourier buffers) with `seed`; `"zeros"` skips the draws (weights loaded next).
   */
  constructor(config: Edm2Config, opts: { init?: "random" | "zeros"; seed?: number } = {}) {
    super();
    this.config = config;
    this.imgResolution = config.imgResolution;
    this.imgChannels = config.imgChannels;
    this.labelDim = config.labelDim;
    this.sigmaData = config.sigmaData;
    const init = new Initializer(opts.init ?? "random", opts.seed ?? 0);
    this.unet = this.addChild("unet", new Edm2UNet(init, config));
    this.logvarFourier = this.addChild(
      "logvar_fourier",
      new MPFourier(init, config.logvarChannels),
    );
    this.logvarLinear = this.addChild(
      "logvar_linear",
      new MPConv(init, config.logvarChannels, 1, []),
    );
  }

  /** Every weight-normalised layer. */
  mpConvs(): MPConv[] {
    const out: MPConv[] = [];
    const walk = (m: Module) => {
      if (m instanceof MPConv) out.push(m);
      for (const [, c] of m.children()) walk(c);
    };
    walk(this);
    return out;
  }

  /**
   * Forced weight normalisation (`edm2:training/networks_edm2.py:96-98`): every MPConv weight
   * becomes `normalize(weight)`, each output row at unit magnitude (norm √fan_in). Call it after
   * each optimizer step, outside any gradient tape.
   */
  renormalize(): void {
    for (const m of this.mpConvs()) m.renormalize();
  }

  /** σ as `[N or 1, 1, 1, 1]`; `n` > 0 checks it holds 1 or `n` values. */
  #sigma(sigma: number | number[] | tf.Tensor, n: number): tf.Tensor {
    let s: tf.Tensor;
    if (typeof sigma === "number") s = tf.scalar(sigma);
    else if (Array.isArray(sigma)) s = tf.tensor1d(sigma);
    else s = tf.cast(sigma, "float32");
    if (n > 0 && s.size !== 1 && s.size !== n) {
      throw new InputError(`sigma must hold 1 or ${n} values, got ${s.size}`);
    }
    return tf.reshape(s, [-1, 1, 1, 1]);
  }

  /** The uncertainty head u(σ) (`return_logvar`): `[N or 1, 1, 1, 1]`. */
  logvar(sigma: number | number[] | tf.Tensor): tf.Tensor4D {
    return tf.tidy(() => {
      const s = this.#sigma(sigma, 0);
      const cNoise = tf.div(tf.log(tf.reshape(s, [-1])), 4) as tf.Tensor1D;
      return tf.reshape(this.logvarLinear.forward(this.logvarFourier.forward(cNoise)), [
        -1,
        1,
        1,
        1,
      ]) as tf.Tensor4D;
    });
  }

  /**
   * D(x; σ, labels), NHWC. See {@linkcode DenoiseOptions}; `encoder` logits are the channel
   * mean of the last encoder block's output, `[N, h, w, 1]` (h = resolution / 2^(levels-1)).
   */
  denoise<F extends ReturnFlag = "decoder">(
    x: tf.Tensor4D,
    sigma: number | number[] | tf.Tensor,
    options: DenoiseOptions<F> = {},
  ): DenoiseResult<F> {
    const flag: ReturnFlag = options.returnFlag ?? "decoder";
    if (!["decoder", "encoder", "encoder_decoder"].includes(flag)) {
      throw new InputError(`invalid returnFlag '${flag}'`);
    }
    const [n, h, w, c] = x.shape;
    if (
      x.rank !== 4 || h !== this.imgResolution || w !== this.imgResolution || c !== this.imgChannels
    ) {
      throw new InputError(
        `expected images [N, ${this.imgResolution}, ${this.imgResolution}, ${this.imgChannels}] (NHWC), got [${x.shape}]`,
      );
    }
    if (options.augmentLabels) throw new InputError("EDM2 networks take no augment labels");
    if (options.labels) {
      if (!this.labelDim) throw new InputError("labels given to an unconditional network");
      const l = options.labels;
      if (l.rank !== 2 || l.shape[1] !== this.labelDim || (l.shape[0] !== n && l.shape[0] !== 1)) {
        throw new InputError(`labels must be [${n}, ${this.labelDim}], got [${l.shape}]`);
      }
    }
    const training = options.training ?? false;
    const wasTraining = this.training;
    if (training !== wasTraining) this.train(training);
    try {
      return tf.tidy(() => {
        const s = this.#sigma(sigma, n);
        const sd = this.sigmaData;
        const s2 = tf.square(s);
        const denom = tf.sqrt(tf.add(s2, sd * sd));
        const cSkip = tf.div(sd * sd, tf.add(s2, sd * sd));
        const cOut = tf.div(tf.mul(s, sd), denom);
        const cIn = tf.div(1, denom);
        const cNoise = tf.div(tf.log(tf.reshape(s, [-1])), 4) as tf.Tensor1D;
        const labels = this.labelDim
          ? (options.labels
            ? tf.cast(options.labels, "float32") as tf.Tensor2D
            : tf.zeros([1, this.labelDim]) as tf.Tensor2D)
          : undefined;
        const u = this.config.unet;
        const { out, logits } = this.unet.forward(
          tf.mul(cIn, x) as tf.Tensor4D,
          cNoise,
          labels,
          flag,
          u.labelBalance,
          u.concatBalance,
        );
        if (flag === "encoder") return logits!;
        const denoised = tf.add(tf.mul(cSkip, x), tf.mul(cOut, out!)) as tf.Tensor4D;
        if (flag === "encoder_decoder") return { denoised, logits: logits! };
        return denoised;
      }) as DenoiseResult<F>;
    } finally {
      if (training !== wasTraining) this.train(wasTraining);
    }
  }

  /** Identity (any σ is supported). */
  roundSigma(sigma: number): number {
    return sigma;
  }
}

/** Builds an EDM2 network from a (partial) configuration or a preset name. */
export function createEdm2Network(
  config: Edm2Config | Edm2ConfigInput | string,
  options: { init?: "random" | "zeros"; seed?: number } = {},
): EDM2Precond {
  const c = typeof config === "string" ? edm2Preset(config) : resolveEdm2Config(config);
  const net = new EDM2Precond(c, options);
  if ((options.init ?? "random") === "random") net.renormalize();
  return net;
}

/**
 * The number of trainable parameter elements of an EDM2 network, computed from its
 * configuration without building it (`sum(p.numel() for p in net.parameters())`).
 */
export function estimateEdm2Parameters(config: Edm2Config): number {
  const u = config.unet;
  const cblock = u.channelMult.map((m) => u.modelChannels * m);
  const cnoise = u.channelMultNoise !== null ? u.modelChannels * u.channelMultNoise : cblock[0];
  const cemb = u.channelMultEmb !== null ? u.modelChannels * u.channelMultEmb : Math.max(...cblock);
  const block = (inC: number, outC: number, enc: boolean, attention: boolean) => {
    const heads = attention ? Math.floor(outC / u.channelsPerHead) : 0;
    return 1 + (enc ? outC : inC) * outC * 9 + cemb * outC + outC * outC * 9 +
      (inC !== outC ? inC * outC : 0) + (heads ? 4 * outC * outC : 0);
  };
  let n = 1 + cnoise * cemb + config.labelDim * cemb + config.logvarChannels;
  let cout = config.imgChannels + 1;
  const skips: number[] = [];
  cblock.forEach((channels, level) => {
    const res = config.imgResolution >> level;
    if (level === 0) {
      n += cout * channels * 9;
      cout = channels;
    } else n += block(cout, cout, true, false);
    skips.push(cout);
    for (let i = 0; i < u.numBlocks; i++) {
      n += block(cout, channels, true, u.attnResolutions.includes(res));
      cout = channels;
      skips.push(cout);
    }
  });
  for (let level = cblock.length - 1; level >= 0; level--) {
    const res = config.imgResolution >> level;
    if (level === cblock.length - 1) {
      n += block(cout, cout, false, true) + block(cout, cout, false, false);
    } else n += block(cout, cout, false, false);
    for (let i = 0; i < u.numBlocks + 1; i++) {
      n += block(cout + skips.pop()!, cblock[level], false, u.attnResolutions.includes(res));
      cout = cblock[level];
    }
  }
  return n + cout * config.imgChannels * 9;
}
