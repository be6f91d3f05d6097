/**
 * DhariwalUNet: the ADM backbone (`edm:training/networks.py:371-461`), with SiDA's `returnFlag`
 * (`sid:sida_training/sida_networks.py:249-286`).
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { DhariwalUNetConfig } from "./config.ts";
import type { Initializer, InitSpec } from "./init.ts";
import {
  Conv2d,
  GroupNorm,
  Linear,
  PositionalEmbedding,
  silu,
  UNetBlock,
  type UNetBlockOptions,
} from "./layers.ts";
import { Module } from "./module.ts";
import {
  encoderLogits,
  labelDropout,
  ModuleDict,
  type UNetInputs,
  type UNetOutputs,
} from "./song_unet.ts";

/** The ADM U-Net. */
export class DhariwalUNet extends Module {
  readonly config: DhariwalUNetConfig;
  readonly imgResolution: number;
  readonly inChannels: number;
  readonly outChannels: number;
  readonly labelDim: number;
  readonly mapNoise: PositionalEmbedding;
  readonly mapAugment?: Linear;
  readonly mapLayer0: Linear;
  readonly mapLayer1: Linear;
  readonly mapLabel?: Linear;
  readonly enc: ModuleDict;
  readonly dec: ModuleDict;
  readonly outNorm: GroupNorm;
  readonly outConv: Conv2d;

  constructor(
    init: Initializer,
    o: {
      imgResolution: number;
      inChannels: number;
      outChannels: number;
      labelDim: number;
      augmentDim: number;
      unet: DhariwalUNetConfig;
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
    const initK: InitSpec = {
      mode: "kaiming_uniform",
      weight: Math.sqrt(1 / 3),
      bias: Math.sqrt(1 / 3),
    };
    const initZero: InitSpec = { mode: "kaiming_uniform", weight: 0, bias: 0 };
    const block: UNetBlockOptions = {
      embChannels,
      channelsPerHead: 64,
      dropout: c.dropout,
      init: initK,
      initZero,
    };

    // Mapping (the module order follows the reference, which fixes the state-dict order).
    this.mapNoise = this.addChild("map_noise", new PositionalEmbedding(c.modelChannels));
    if (o.augmentDim) {
      this.mapAugment = this.addChild(
        "map_augment",
        new Linear(init, o.augmentDim, c.modelChannels, { bias: false, init: initZero }),
      );
    }
    this.mapLayer0 = this.addChild(
      "map_layer0",
      new Linear(init, c.modelChannels, embChannels, { init: initK }),
    );
    this.mapLayer1 = this.addChild(
      "map_layer1",
      new Linear(init, embChannels, embChannels, { init: initK }),
    );
    if (o.labelDim) {
      this.mapLabel = this.addChild(
        "map_label",
        new Linear(init, o.labelDim, embChannels, {
          bias: false,
          init: { mode: "kaiming_normal", weight: Math.sqrt(o.labelDim), bias: 0 },
        }),
      );
    }

    // Encoder.
    const enc = this.enc = this.addChild("enc", new ModuleDict());
    let cout = o.inChannels;
    const skips: number[] = [];
    c.channelMult.forEach((mult, level) => {
      const res = o.imgResolution >> level;
      if (level === 0) {
        const cin = cout;
        cout = c.modelChannels * mult;
        enc.set(`${res}x${res}_conv`, new Conv2d(init, cin, cout, 3, { init: initK }));
      } else {
        enc.set(`${res}x${res}_down`, new UNetBlock(init, cout, cout, { ...block, down: true }));
      }
      skips.push(cout);
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
        const attention = c.attnResolutions.includes(res);
        dec.set(
          `${res}x${res}_block${idx}`,
          new UNetBlock(init, cin, cout, { ...block, attention }),
        );
      }
    }
    this.outNorm = this.addChild("out_norm", new GroupNorm(cout));
    this.outConv = this.addChild(
      "out_conv",
      new Conv2d(init, cout, o.outChannels, 3, { init: initZero }),
    );
  }

  /** The mapping network → `[N or 1, embChannels]`. */
  embed(i: UNetInputs): tf.Tensor2D {
    let emb = this.mapNoise.forward(i.noiseLabels);
    if (this.mapAugment && i.augmentLabels) {
      emb = tf.add(emb, this.mapAugment.forward(i.augmentLabels));
    }
    emb = silu(this.mapLayer0.forward(emb)) as tf.Tensor2D;
    emb = this.mapLayer1.forward(emb);
    if (this.mapLabel && i.classLabels) {
      const labels = labelDropout(
        i.classLabels,
        this.config.labelDropout,
        this.training,
        i.x.shape[0],
      );
      emb = tf.add(emb, this.mapLabel.forward(labels));
    }
    return silu(emb) as tf.Tensor2D;
  }

  /** The forward pass; with `returnFlag: "encoder"` the decoder does not run. */
  forward(i: UNetInputs): UNetOutputs {
    const emb = this.embed(i);
    const encoderOnly = i.returnFlag === "encoder";
    let x = i.x;
    const skips: tf.Tensor4D[] = [];
    for (const [, block] of this.enc.children()) {
      x = block instanceof UNetBlock ? block.forward(x, emb) : (block as Conv2d).forward(x);
      if (!encoderOnly) skips.push(x);
    }
    const logits = i.returnFlag === "decoder" ? undefined : encoderLogits(x);
    if (encoderOnly) return { logits };
    for (const [, block] of this.dec.children()) {
      const b = block as UNetBlock;
      if (x.shape[3] !== b.inChannels) x = tf.concat([x, skips.pop()!], 3);
      x = b.forward(x, emb);
    }
    const out = this.outConv.forward(this.outNorm.forwardSilu(x));
    return { out, logits };
  }
}
