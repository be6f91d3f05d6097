/**
 * EDM preconditioning (`edm:training/networks.py:631-671`) with SiDA's return flags
 * (`sid:sida_training/sida_networks.py:296-353`):
 *
 *   D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)),
 *   c_skip = σd²/(σ²+σd²), c_out = σ·σd/√(σ²+σd²), c_in = 1/√(σd²+σ²), c_noise = ln(σ)/4.
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { NetworkConfig } from "./config.ts";
import { DhariwalUNet } from "./dhariwal_unet.ts";
import { Initializer } from "./init.ts";
import { Module } from "./module.ts";
import { SongUNet } from "./song_unet.ts";
import type { DenoiseOptions, Denoiser, DenoiseResult, ReturnFlag } from "./types.ts";

/** Error for inputs of the wrong shape or kind given to a network. */
export class InputError extends Error {
  override name = "InputError";
}

/** An EDM-preconditioned denoiser network (teacher, fake score network, or one-step generator). */
export class EDMPrecond extends Module implements Denoiser {
  /** The full configuration this network was built from. */
  readonly config: NetworkConfig;
  readonly imgResolution: number;
  readonly imgChannels: number;
  readonly labelDim: number;
  readonly augmentDim: number;
  readonly sigmaMin: number;
  readonly sigmaMax: number;
  readonly sigmaData: number;
  /** The backbone (state-dict prefix `model.`). */
  readonly model: SongUNet | DhariwalUNet;

  /**
   * Builds the network. `init: "random"` draws weights as EDM does (seeded); `init: "zeros"`
   * skips the draws, for a network whose weights are loaded next.
   */
  constructor(config: NetworkConfig, opts: { init?: "random" | "zeros"; seed?: number } = {}) {
    super();
    this.config = config;
    this.imgResolution = config.imgResolution;
    this.imgChannels = config.imgChannels;
    this.labelDim = config.labelDim;
    this.augmentDim = config.augmentDim;
    this.sigmaMin = config.sigmaMin;
    this.sigmaMax = config.sigmaMax;
    this.sigmaData = config.sigmaData;
    const init = new Initializer(opts.init ?? "random", opts.seed ?? 0);
    const common = {
      imgResolution: config.imgResolution,
      inChannels: config.imgChannels,
      outChannels: config.imgChannels,
      labelDim: config.labelDim,
      augmentDim: config.augmentDim,
    };
    this.model = this.addChild(
      "model",
      config.unet.arch === "SongUNet"
        ? new SongUNet(init, { ...common, unet: config.unet })
        : new DhariwalUNet(init, { ...common, unet: config.unet }),
    );
  }

  /** Checks shapes and makes σ a `[N or 1, 1, 1, 1]` tensor. */
  #prepare(x: tf.Tensor4D, sigma: number | number[] | tf.Tensor, o: DenoiseOptions): tf.Tensor4D {
    const [n, h, w, c] = x.shape;
    if (
      x.rank !== 4 || h !== this.imgResolution || w !== this.imgResolution || c !== this.imgChannels
    ) {
      throw new InputError(
        `expected images [N, ${this.imgResolution}, ${this.imgResolution}, ${this.imgChannels}] (NHWC), got [${x.shape}]`,
      );
    }
    let s: tf.Tensor;
    if (typeof sigma === "number") s = tf.scalar(sigma);
    else if (Array.isArray(sigma)) s = tf.tensor1d(sigma);
    else s = tf.cast(sigma, "float32");
    if (s.size !== 1 && s.size !== n) {
      throw new InputError(`sigma must hold 1 or ${n} values, got ${s.size}`);
    }
    if (o.labels) {
      if (!this.labelDim) throw new InputError("labels given to an unconditional network");
      if (
        o.labels.rank !== 2 || o.labels.shape[1] !== this.labelDim ||
        (o.labels.shape[0] !== n && o.labels.shape[0] !== 1)
      ) {
        throw new InputError(`labels must be [${n}, ${this.labelDim}], got [${o.labels.shape}]`);
      }
    }
    if (o.augmentLabels) {
      if (!this.augmentDim) {
        throw new InputError("augment labels given to a network without augment_dim");
      }
      const a = o.augmentLabels;
      if (
        a.rank !== 2 || a.shape[1] !== this.augmentDim || (a.shape[0] !== n && a.shape[0] !== 1)
      ) {
        throw new InputError(`augment labels must be [${n}, ${this.augmentDim}], got [${a.shape}]`);
      }
    }
    return tf.reshape(s, [-1, 1, 1, 1]);
  }

  /**
   * The denoiser D(x; σ, labels). `x` is NHWC; σ is one number or one per sample. See
   * {@linkcode DenoiseOptions} for labels, augment labels, training mode and the return flag.
   *
   * @example
   * ```ts
   * const d = net.denoise(x, 2.5);                                   // [N, H, W, C]
   * const logits = net.denoise(x, sigmas, { returnFlag: "encoder" }); // [N, h, w, 1]
   * const { denoised, logits: l } = net.denoise(x, 1.0, { returnFlag: "encoder_decoder" });
   * ```
   */
  denoise<F extends ReturnFlag = "decoder">(
    x: tf.Tensor4D,
    sigma: number | number[] | tf.Tensor,
    options: DenoiseOptions<F> = {},
  ): DenoiseResult<F> {
    const flag: ReturnFlag = options.returnFlag ?? "decoder";
    if (!["decoder", "encoder", "encoder_decoder"].includes(flag)) {
      throw new InputError(
        `invalid returnFlag '${flag}' (expected decoder, encoder or encoder_decoder)`,
      );
    }
    const training = options.training ?? false;
    const wasTraining = this.training;
    if (training !== wasTraining) this.train(training);
    try {
      return tf.tidy(() => {
        const s = this.#prepare(x, sigma, options);
        const sd = this.sigmaData;
        const s2 = tf.square(s);
        const denom = tf.sqrt(tf.add(s2, sd * sd));
        const cSkip = tf.div(sd * sd, tf.add(s2, sd * sd));
        const cOut = tf.div(tf.mul(s, sd), denom);
        const cIn = tf.div(1, denom);
        const cNoise = tf.reshape(tf.div(tf.log(s), 4), [-1]) as tf.Tensor1D;
        const classLabels = this.labelDim
          ? (options.labels
            ? tf.cast(options.labels, "float32") as tf.Tensor2D
            : tf.zeros([1, this.labelDim]) as tf.Tensor2D)
          : undefined;
        const { out, logits } = this.model.forward({
          x: tf.mul(cIn, x) as tf.Tensor4D,
          noiseLabels: cNoise,
          classLabels,
          augmentLabels: options.augmentLabels,
          returnFlag: flag,
        });
        if (flag === "encoder") return logits!;
        const denoised = tf.add(tf.mul(cSkip, x), tf.mul(cOut, out!)) as tf.Tensor4D;
        if (flag === "encoder_decoder") return { denoised, logits: logits! };
        return denoised;
      }) as DenoiseResult<F>;
    } finally {
      if (training !== wasTraining) this.train(wasTraining);
    }
  }

  /** Identity (EDMPrecond supports any σ), kept for parity with the reference API. */
  roundSigma(sigma: number): number {
    return sigma;
  }
}
