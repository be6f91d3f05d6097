/**
 * Weight initialisation as EDM does it (`edm:training/networks.py:19-24`), with seeded draws.
 *
 * @module
 */
import { tf } from "../deps.ts";

/** The four initialisation modes of EDM's `weight_init`. */
export type InitMode = "xavier_uniform" | "xavier_normal" | "kaiming_uniform" | "kaiming_normal";

/** Scaling of a layer's initial weight and bias, as EDM's `init_weight` / `init_bias`. */
export interface InitSpec {
  mode: InitMode;
  weight: number;
  bias: number;
}

/** EDM's defaults for `Linear` / `Conv2d`: kaiming_normal, weight ×1, bias ×0. */
export const DEFAULT_INIT: InitSpec = { mode: "kaiming_normal", weight: 1, bias: 0 };

/**
 * Where initial values come from. `random` draws them as EDM does; `zeros` skips the draws (for a
 * network whose weights are loaded next; group-norm scales still start at 1).
 */
export class Initializer {
  #seed: number;
  #counter = 0;
  /** Whether to draw random values (`random`) or fill zeros (`zeros`). */
  readonly kind: "random" | "zeros";

  constructor(kind: "random" | "zeros" = "random", seed = 0) {
    this.kind = kind;
    this.#seed = seed >>> 0;
  }

  /** A fresh seed for the next draw (deterministic given the construction seed). */
  nextSeed(): number {
    this.#counter += 1;
    return (this.#seed * 1000003 + this.#counter * 7919) % 2147483647;
  }

  /**
   * EDM `weight_init(shape, mode, fan_in, fan_out) * gain`, drawn in `shape` (our layout; the
   * draws are i.i.d., so the layout does not change the distribution).
   */
  weight(shape: number[], mode: InitMode, fanIn: number, fanOut: number, gain: number): tf.Tensor {
    if (this.kind === "zeros" || gain === 0) return tf.zeros(shape);
    const seed = this.nextSeed();
    switch (mode) {
      case "xavier_uniform":
        return tf.mul(
          tf.randomUniform(shape, -1, 1, "float32", seed),
          Math.sqrt(6 / (fanIn + fanOut)) * gain,
        );
      case "xavier_normal":
        return tf.randomNormal(shape, 0, Math.sqrt(2 / (fanIn + fanOut)) * gain, "float32", seed);
      case "kaiming_uniform":
        return tf.mul(tf.randomUniform(shape, -1, 1, "float32", seed), Math.sqrt(3 / fanIn) * gain);
      case "kaiming_normal":
        return tf.randomNormal(shape, 0, Math.sqrt(1 / fanIn) * gain, "float32", seed);
    }
  }

  /** Standard normal draws times `scale` (e.g. the Fourier embedding's frequencies). */
  normal(shape: number[], scale: number): tf.Tensor {
    if (this.kind === "zeros") return tf.zeros(shape);
    return tf.randomNormal(shape, 0, scale, "float32", this.nextSeed());
  }
}
