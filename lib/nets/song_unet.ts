/**
 * SongUNet: the DDPM++ and NCSN++ backbones (`edm:training/networks.py:228-363`), with SiDA's
 * `returnFlag` (`sid:sida_training/sida_networks.py:120-174`).
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { SongUNetConfig } from "./config.ts";
import type { Initializer, InitSpec } from "./init.ts";
import {
  Conv2d,
  dropoutSeed,
  FourierEmbedding,
  GroupNorm,
  Linear,
  PositionalEmbedding,
  silu,
  UNetBlock,
  type UNetBlockOptions,
} from "./layers.ts";
import { Module } from "./module.ts";
import type { ReturnFlag } from "./types.ts";

/** Inputs of a backbone's forward pass (all NHWC / `[N, D]`). */
export interface UNetInputs {
  /** Preconditioned input `c_in·x`, `[N, H, W, C]`. */
  x: tf.Tensor4D;
  /** Noise labels `c_noise`, `[N]` or `[1]`. */
  noiseLabels: tf.Tensor1D;
  /** Class labels `[N or 1, labelDim]`, or undefined for unconditional nets. */
  classLabels?: tf.Tensor2D;
  /** Augmentation labels `[N, augmentDim]`, or undefined to skip the augment embedding. */
  augmentLabels?: tf.Tensor2D;
  returnFlag: ReturnFlag;
}

/** What a backbone returns: the raw output F(x) and/or the encoder logits (NHWC, 1 channel). */
export interface UNetOutputs {
  out?: tf.Tensor4D;
  logits?: tf.Tensor4D;
}

/** A module with a child dictionary whose insertion order is the execution order. */
export class ModuleDict extends Module {
  /** Adds `m` under `name`. */
  set<M extends Module>(name: string, m: M): M {
    return this.addChild(name, m);
  }
}

/** Channel mean of the last encoder output, keepdim: the SiDA discriminator logit map. */
export function encoderLogits(x: tf.Tensor4D): tf.Tensor4D {
  return tf.mean(x, 3, true) as tf.Tensor4D;
}

/**
 * Applies label dropout in training mode: zeroes each sample's label with probability `p` (seeded
 * inside `withDropoutSeed`).
 */
export function labelDropout(
  labels: tf.Tensor2D,
  p: number,
  training: boolean,
  n: number,
): tf.Tensor2D {
  if (!training || !p) return labels;
  const keep = tf.cast(
    tf.greaterEqual(tf.randomUniform([n, 1], 0, 1, "float32", dropoutSeed()), p),
    "float32",
  );
  return tf.mul(labels, keep) as tf.Tensor2D;
}

/** The DDPM++ / NCSN++ U-Net. */
export class SongUNet extends Module {
  readonly config: SongUNetConfig;
  readonly imgResolution: number;
  readonly inChannels: number;
  readonly outChannels: number;
  readonly labelDim: number;
  readonly mapNoise: PositionalEmbedding | FourierEmbedding;
  readonly mapLabel?: Linear;
  readonly mapAugment?: Linear;
  readonly mapLayer0: Linear;
  readonly mapLayer1: Linear;
  readonly enc: ModuleDict;
  readonly dec: ModuleDict;

  constructor(
    init: Initializer,
    o: {
      imgResolution: number;
      inChannels: number;
      outChannels: number;
      labelDim: number;
      augmentDim: number;
      unet: SongUNetConfig;
    },
  ) {
    super();
    const c = o.unet;
    this.config = c;
    this.imgResolution = o.imgResolution;
    this.inChannels = o.inChannels;
    this.outChannels = o.outChannels;
    this.labelDim = o.labelDim;
    const embChannels = c.modelChannels * c.channelMultEmb;
    const noiseChannels = c.modelChannels * c.channelMultNoise;
    const initX: InitSpec = { mode: "xavier_uniform", weight: 1, bias: 0 };
    const initZero: InitSpec = { mode: "xavier_uniform", weight: 1e-5, bias: 0 };
    const initAttn: InitSpec = { mode: "xavier_uniform", weight: Math.sqrt(0.2), bias: 0 };
    const block: UNetBlockOptions = {
      embChannels,
      numHeads: 1,
      dropout: c.dropout,
      skipScale: Math.sqrt(0.5),
      eps: 1e-6,
      resampleFilter: c.resampleFilter,
      resampleProj: true,
      adaptiveScale: false,
      init: initX,
      initZero,
      initAttn,
    };

    // Mapping.
    this.mapNoise = this.addChild(
      "map_noise",
      c.embeddingType === "positional"
        ? new PositionalEmbedding(noiseChannels, { endpoint: true })
        : new FourierEmbedding(init, noiseChannels),
    );
    if (o.labelDim) {
      this.mapLabel = this.addChild(
        "map_label",
        new Linear(init, o.labelDim, noiseChannels, { init: initX }),
      );
    }
    if (o.augmentDim) {
      this.mapAugment = this.addChild(
        "map_augment",
        new Linear(init, o.augmentDim, noiseChannels, { bias: false, init: initX }),
      );
    }
    this.mapLayer0 = this.addChild(
      "map_layer0",
      new Linear(init, noiseChannels, embChannels, { init: initX }),
    );
    this.mapLayer1 = this.addChild(
      "map_layer1",
      new Linear(init, embChannels, embChannels, { init: initX }),
    );

    // Encoder.
    const enc = this.enc = this.addChild("enc", new ModuleDict());
    let cout = o.inChannels;
    let caux = o.inChannels;
    const skips: number[] = [];
    c.channelMult.forEach((mult, level) => {
      const res = o.imgResolution >> level;
      if (level === 0) {
        const cin = cout;
        cout = c.modelChannels;
        enc.set(`${res}x${res}_conv`, new Conv2d(init, cin, cout, 3, { init: initX }));
        skips.push(cout);
      } else {
        enc.set(`${res}x${res}_down`, new UNetBlock(init, cout, cout, { ...block, down: true }));
        skips.push(cout);
        if (c.encoderType === "skip") {
          enc.set(
            `${res}x${res}_aux_down`,
            new Conv2d(init, caux, caux, 0, { down: true, resampleFilter: c.resampleFilter }),
          );
          enc.set(`${res}x${res}_aux_skip`, new Conv2d(init, caux, cout, 1, { init: initX }));
        }
        if (c.encoderType === "residual") {
          enc.set(
            `${res}x${res}_aux_residual`,
            new Conv2d(init, caux, cout, 3, {
              down: true,
              resampleFilter: c.resampleFilter,
              fusedResample: true,
              init: initX,
            }),
          );
          caux = cout;
        }
      }
      for (let idx = 0; idx < c.numBlocks; idx++) {
        const cin = cout;
        cout = c.modelChannels * mult;
        const attention = c.attnResolutions.includes(res);
        enc.set(
          `${res}x${res}_block${idx}`,
          new UNetBlock(init, cin, cout, { ...block, attention }),
        );
        skips.push(cout);
      }
    });

    // Decoder.
    const dec = this.dec = this.addChild("dec", new ModuleDict());
    const levels = c.channelMult.length;
    for (let level = levels - 1; level >= 0; level--) {
      const mult = c.channelMult[level];
      const res = o.imgResolution >> level;
      if (level === levels - 1) {
        dec.set(
          `${res}x${res}_in0`,
          new UNetBlock(init, cout, cout, { ...block, attention: true }),
        );
        dec.set(`${res}x${res}_in1`, new UNetBlock(init, cout, cout, block));
      } else {
        dec.set(`${res}x${res}_up`, new UNetBlock(init, cout, cout, { ...block, up: true }));
      }
      for (let idx = 0; idx <= c.numBlocks; idx++) {
        const cin = cout + skips.pop()!;
        cout = c.modelChannels * mult;
        const attention = idx === c.numBlocks && c.attnResolutions.includes(res);
        dec.set(
          `${res}x${res}_block${idx}`,
          new UNetBlock(init, cin, cout, { ...block, attention }),
        );
      }
      if (c.decoderType === "skip" || level === 0) {
        if (c.decoderType === "skip" && level < levels - 1) {
          dec.set(
            `${res}x${res}_aux_up`,
            new Conv2d(init, o.outChannels, o.outChannels, 0, {
              up: true,
              resampleFilter: c.resampleFilter,
            }),
          );
        }
        dec.set(`${res}x${res}_aux_norm`, new GroupNorm(cout, { eps: 1e-6 }));
        dec.set(
          `${res}x${res}_aux_conv`,
          new Conv2d(init, cout, o.outChannels, 3, { init: initZero }),
        );
      }
    }
  }

  /** The mapping network: noise, label and augment embeddings → `[N or 1, embChannels]`. */
  embed(i: UNetInputs): tf.Tensor2D {
    let emb = this.mapNoise.forward(i.noiseLabels);
    const half = emb.shape[1] / 2;
    // Swap the halves: [cos, sin] becomes [sin, cos] (edm:training/networks.py:323).
    emb = tf.concat([tf.slice(emb, [0, half], [-1, half]), tf.slice(emb, [0, 0], [-1, half])], 1);
    if (this.mapLabel && i.classLabels) {
      const n = i.x.shape[0];
      const labels = labelDropout(i.classLabels, this.config.labelDropout, this.training, n);
      emb = tf.add(
        emb,
        this.mapLabel.forward(tf.mul(labels, Math.sqrt(this.labelDim)) as tf.Tensor2D),
      );
    }
    if (this.mapAugment && i.augmentLabels) {
      emb = tf.add(emb, this.mapAugment.forward(i.augmentLabels));
    }
    emb = silu(this.mapLayer0.forward(emb)) as tf.Tensor2D;
    return silu(this.mapLayer1.forward(emb)) as tf.Tensor2D;
  }

  /** The forward pass; with `returnFlag: "encoder"` the decoder does not run. */
  forward(i: UNetInputs): UNetOutputs {
    const emb = this.embed(i);
    const encoderOnly = i.returnFlag === "encoder";
    let x = i.x;
    let aux = i.x;
    const skips: tf.Tensor4D[] = [];
    for (const [name, block] of this.enc.children()) {
      if (name.includes("aux_down")) {
        aux = (block as Conv2d).forward(aux);
      } else if (name.includes("aux_skip")) {
        x = tf.add(x, (block as Conv2d).forward(aux));
        if (!encoderOnly) skips[skips.length - 1] = x;
      } else if (name.includes("aux_residual")) {
        x = aux = tf.mul(tf.add(x, (block as Conv2d).forward(aux)), Math.SQRT1_2);
        if (!encoderOnly) skips[skips.length - 1] = x;
      } else {
        x = block instanceof UNetBlock ? block.forward(x, emb) : (block as Conv2d).forward(x);
        if (!encoderOnly) skips.push(x);
      }
    }
    const logits = i.returnFlag === "decoder" ? undefined : encoderLogits(x);
    if (encoderOnly) return { logits };

    let out: tf.Tensor4D | undefined;
    let tmp: tf.Tensor4D | undefined;
    for (const [name, block] of this.dec.children()) {
      if (name.includes("aux_up")) {
        out = (block as Conv2d).forward(out!);
      } else if (name.includes("aux_norm")) {
        tmp = (block as GroupNorm).forwardSilu(x); // silu before aux_conv
      } else if (name.includes("aux_conv")) {
        tmp = (block as Conv2d).forward(tmp!);
        out = out ? tf.add(tmp, out) : tmp;
      } else {
        const b = block as UNetBlock;
        if (x.shape[3] !== b.inChannels) x = tf.concat([x, skips.pop()!], 3);
        x = b.forward(x, emb);
      }
    }
    return { out, logits };
  }
}
