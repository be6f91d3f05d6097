/**
 * The Inception-v3 feature detector of FID / IS / precision-recall: the network of
 * `inception-2015-12-05.pt` (the TorchScript translation of TensorFlow's 2015 Inception graph used
 * by StyleGAN2-ADA, EDM and SiD metrics), re-implemented in NHWC with tfjs.
 *
 * Input contract (as the TorchScript `forward`): images of any size with uint8 values 0–255
 * (here NHWC, float32 or int32; 1 channel is repeated to 3). They are resized to 299×299 with
 * TF1's legacy bilinear resize (output pixel j samples input coordinate j·S/299, edge-clamped,
 * no anti-aliasing — what the file's `affine_grid` + `grid_sample(align_corners=False,
 * padding_mode="border")` with its shifted θ computes), then scaled as `(x − 128) / 128`.
 * Outputs: the 2048-d `pool3` features (after the 8×8 average pool; FID and precision-recall) and
 * the 1008 logits of the `output` layer (IS uses their softmax without the output bias, as
 * `no_output_bias=True` does in SiD/StyleGAN's `inception_score`).
 *
 * Architecture (the TF `inception-2015-12-05` graph, as transcribed with TF-compatible pooling by
 * mseitzer/pytorch-fid `src/pytorch_fid/inception.py`, `FIDInceptionA`…`FIDInceptionE_2`): every convolution is a `Conv2dLayer` = conv without bias →
 * batch norm without γ (eps 0.001, running statistics) → ReLU. Stem `conv` 3→32 3×3/2,
 * `conv_1` 32→32 3×3, `conv_2` 32→64 3×3 same, max-pool 3/2, `conv_3` 64→80 1×1, `conv_4`
 * 80→192 3×3, max-pool 3/2; `mixed`, `mixed_1`, `mixed_2` (InceptionA, pool projection 32/64/64),
 * `mixed_3` (InceptionB), `mixed_4`…`mixed_7` (InceptionC, 7×7 width 128/160/160/192), `mixed_8`
 * (InceptionD), `mixed_9` (InceptionE, average-pool tower), `mixed_10` (InceptionE, max-pool
 * tower), global average pool → 2048, `output` Linear 2048→1008. Tower average pools are 3×3
 * stride 1 with the padding excluded from the average (TF SAME). Parameter names follow the TF
 * graph as the TorchScript file does: `layers.mixed_9.tower_1.mixed.conv_1.conv.weight`,
 * `layers.conv_4.bn.running_var`, `output.weight`, …
 *
 * A width divisor (every channel count divided by d, 1008 classes kept) gives the small variant
 * of the same topology that the parity test fixture uses.
 *
 * @example
 * ```ts
 * import { InceptionV3 } from "./inception.ts";
 * const det = await InceptionV3.load("inception-2015-12-05.pt"); // or our .safetensors
 * const { features, probs } = det.run(imagesNhwcUint8Values); // [N, 2048], [N, 1008]
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import { type HostTensor, IoError } from "../io/host_tensor.ts";
import { PyDict, PyObject, type PyValue, TensorRef } from "../io/pickle.ts";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import { openTorchFile, readTensor, stateDictOf } from "../io/torch_file.ts";
import { Module, StateDictError } from "../nets/module.ts";
import type { Detector, DetectorOutput } from "./detector.ts";

/** Format tag in the safetensors metadata of {@linkcode InceptionV3.save}. */
export const INCEPTION_FORMAT = "sida-inception-v3/1";

/** Side of the square the detector resizes its input to. */
export const INCEPTION_RESOLUTION = 299;

/** Number of classes of the `output` layer (TF's 1008-class head). */
export const INCEPTION_CLASSES = 1008;

const BN_EPS = 1e-3;

/** Options of the {@linkcode InceptionV3} constructor. */
export interface InceptionOptions {
  /**
   * Divides every channel count (the feature dimension becomes 2048 / d; the 1008 classes stay).
   * 1 (the default) is the real detector; the test fixture uses 8.
   */
  widthDivisor?: number;
  /** Seed of the random initial weights (He-normal convolutions, identity batch norms). */
  seed?: number;
}

/** Shared seed counter of one network's random initialisation. */
interface Seeder {
  next(): number;
}

// ---------------------------------------------------------------------------------------------
// Building blocks.

/** Convolution weight without bias (`conv.weight`, OIHW in PyTorch, HWIO here). */
class ConvWeight extends Module {
  readonly weight: tf.Variable;

  constructor(cin: number, cout: number, kh: number, kw: number, seed: Seeder) {
    super();
    const std = Math.sqrt(2 / (cin * kh * kw));
    this.weight = this.addParam(
      "weight",
      [cout, cin, kh, kw],
      "conv",
      () => tf.randomNormal([kh, kw, cin, cout], 0, std, "float32", seed.next()),
    );
  }
}

/** TF-style batch norm without scale: `bias`, `running_mean`, `running_var`. */
class BatchNormNoScale extends Module {
  readonly bias: tf.Variable;
  readonly runningMean: tf.Variable;
  readonly runningVar: tf.Variable;

  constructor(c: number) {
    super();
    this.bias = this.addParam("bias", [c], "plain", () => tf.zeros([c]));
    this.runningMean = this.addBuffer("running_mean", [c], "plain", () => tf.zeros([c]));
    this.runningVar = this.addBuffer("running_var", [c], "plain", () => tf.ones([c]));
  }
}

/** `Conv2dLayer`: conv (no bias) → batch norm (no γ, eps 0.001) → ReLU, as one fused conv. */
class Conv2dLayer extends Module {
  readonly conv: ConvWeight;
  readonly bn: BatchNormNoScale;
  readonly stride: number;
  readonly pad: "same" | "valid";

  constructor(
    seed: Seeder,
    cin: number,
    cout: number,
    [kh, kw]: [number, number],
    stride = 1,
    pad: "same" | "valid" = "same",
  ) {
    super();
    if (pad === "same" && (stride !== 1 || kh % 2 === 0 || kw % 2 === 0)) {
      throw new Error("Conv2dLayer: 'same' padding is only used with odd kernels and stride 1");
    }
    this.conv = this.addChild("conv", new ConvWeight(cin, cout, kh, kw, seed));
    this.bn = this.addChild("bn", new BatchNormNoScale(cout));
    this.stride = stride;
    this.pad = pad;
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => {
      // relu((conv(x, w) − μ)·s + β) with s = 1/√(σ² + ε) = relu(conv(x, w·s) + (β − μ·s)).
      const s = tf.rsqrt(tf.add(this.bn.runningVar, BN_EPS));
      const filter = tf.mul(this.conv.weight, s) as tf.Tensor4D;
      const bias = tf.sub(this.bn.bias, tf.mul(this.bn.runningMean, s));
      return tf.fused.conv2d({
        x,
        filter,
        strides: this.stride,
        pad: this.pad,
        bias,
        activation: "relu",
      });
    });
  }
}

/** A chain of `Conv2dLayer`s named `conv`, `conv_1`, … with an optional `mixed` split at the end. */
class Tower extends Module {
  readonly convs: Conv2dLayer[];
  readonly mixed?: Split;

  constructor(convs: Conv2dLayer[], mixed?: Split) {
    super();
    this.convs = convs.map((c, i) => this.addChild(i === 0 ? "conv" : `conv_${i}`, c));
    if (mixed) this.mixed = this.addChild("mixed", mixed);
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    let h = x;
    for (const c of this.convs) h = c.forward(h);
    return this.mixed ? this.mixed.forward(h) : h;
  }
}

/** InceptionE's split: `conv` (1×3) and `conv_1` (3×1) on the same input, concatenated. */
class Split extends Module {
  readonly conv: Conv2dLayer;
  readonly conv1: Conv2dLayer;

  constructor(seed: Seeder, cin: number, cout: number) {
    super();
    this.conv = this.addChild("conv", new Conv2dLayer(seed, cin, cout, [1, 3]));
    this.conv1 = this.addChild("conv_1", new Conv2dLayer(seed, cin, cout, [3, 1]));
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return tf.concat([this.conv.forward(x), this.conv1.forward(x)], 3);
  }
}

/**
 * Applies `[H', H]` and `[W', W]` matrices along the height and width of NHWC `x`
 * (`y[n] = Ah · x[n] · Awᵀ` per channel) with two batched matrix products and no transposes.
 */
export function separable2d(
  x: tf.Tensor4D,
  ah: tf.Tensor2D,
  aw: tf.Tensor2D,
): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  const [h2, w2] = [ah.shape[0], aw.shape[0]];
  return tf.tidy(() => {
    const rows = tf.matMul(tf.reshape(ah, [1, h2, h]), tf.reshape(x, [n, h, w * c]));
    const cols = tf.matMul(tf.reshape(aw, [1, w2, w]), tf.reshape(rows, [n * h2, w, c]));
    return tf.reshape(cols, [n, h2, w2, c]) as tf.Tensor4D;
  });
}

const boxCache = new Map<number, Float32Array>();

/**
 * The `[size, size]` matrix of a 3-tap average along one axis that leaves out the padding: row i
 * averages the pixels i−1, i, i+1 that lie inside `[0, size)`.
 */
function boxMatrix(size: number): Float32Array {
  const cached = boxCache.get(size);
  if (cached) return cached;
  const m = new Float32Array(size * size);
  for (let i = 0; i < size; i++) {
    const lo = Math.max(0, i - 1), hi = Math.min(size - 1, i + 1);
    for (let k = lo; k <= hi; k++) m[i * size + k] = 1 / (hi - lo + 1);
  }
  boxCache.set(size, m);
  return m;
}

/**
 * 3×3 stride-1 average pool with TF SAME semantics (padding excluded from the average). The
 * in-image pixel count of a window is (rows inside)·(columns inside), so the pool is separable:
 * a 3-tap average along each axis. Explicit, so it does not depend on a backend's `avgPool`
 * padding rules.
 */
function avgPool3x3Same(x: tf.Tensor4D): tf.Tensor4D {
  const [, h, w] = x.shape;
  return tf.tidy(() =>
    separable2d(x, tf.tensor2d(boxMatrix(h), [h, h]), tf.tensor2d(boxMatrix(w), [w, w]))
  );
}

/** The pool tower: 3×3 stride-1 pool (average without padding, or max), then `conv` 1×1. */
class PoolTower extends Module {
  readonly conv: Conv2dLayer;
  readonly useMax: boolean;

  constructor(seed: Seeder, cin: number, cout: number, useMax: boolean) {
    super();
    this.conv = this.addChild("conv", new Conv2dLayer(seed, cin, cout, [1, 1]));
    this.useMax = useMax;
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    const p = this.useMax ? tf.maxPool(x, 3, 1, "same") : avgPool3x3Same(x);
    return this.conv.forward(p);
  }
}

/** A mixed block: towers whose outputs are concatenated, plus an optional 3×3/2 max pool last. */
class Mixed extends Module {
  readonly branches: { forward(x: tf.Tensor4D): tf.Tensor4D }[] = [];
  readonly maxPoolBranch: boolean;

  constructor(children: [string, Conv2dLayer | Tower | PoolTower][], maxPoolBranch = false) {
    super();
    for (const [name, c] of children) this.branches.push(this.addChild(name, c));
    this.maxPoolBranch = maxPoolBranch;
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => {
      const outs = this.branches.map((b) => b.forward(x));
      if (this.maxPoolBranch) outs.push(tf.maxPool(x, 3, 2, "valid"));
      return tf.concat(outs, 3);
    });
  }
}

function inceptionA(s: Seeder, cin: number, pool: number, d: number): Mixed {
  const L = (a: number, b: number, k: number) => new Conv2dLayer(s, a, b, [k, k]);
  return new Mixed([
    ["conv", L(cin, 64 / d, 1)],
    ["tower", new Tower([L(cin, 48 / d, 1), L(48 / d, 64 / d, 5)])],
    ["tower_1", new Tower([L(cin, 64 / d, 1), L(64 / d, 96 / d, 3), L(96 / d, 96 / d, 3)])],
    ["tower_2", new PoolTower(s, cin, pool / d, false)],
  ]);
}

function inceptionB(s: Seeder, cin: number, d: number): Mixed {
  return new Mixed([
    ["conv", new Conv2dLayer(s, cin, 384 / d, [3, 3], 2, "valid")],
    [
      "tower",
      new Tower([
        new Conv2dLayer(s, cin, 64 / d, [1, 1]),
        new Conv2dLayer(s, 64 / d, 96 / d, [3, 3]),
        new Conv2dLayer(s, 96 / d, 96 / d, [3, 3], 2, "valid"),
      ]),
    ],
  ], true);
}

function inceptionC(s: Seeder, cin: number, c7: number, d: number): Mixed {
  const c = c7 / d, o = 192 / d;
  const L = (a: number, b: number, k: [number, number]) => new Conv2dLayer(s, a, b, k);
  return new Mixed([
    ["conv", L(cin, o, [1, 1])],
    ["tower", new Tower([L(cin, c, [1, 1]), L(c, c, [1, 7]), L(c, o, [7, 1])])],
    [
      "tower_1",
      new Tower([
        L(cin, c, [1, 1]),
        L(c, c, [7, 1]),
        L(c, c, [1, 7]),
        L(c, c, [7, 1]),
        L(c, o, [1, 7]),
      ]),
    ],
    ["tower_2", new PoolTower(s, cin, o, false)],
  ]);
}

function inceptionD(s: Seeder, cin: number, d: number): Mixed {
  const o = 192 / d;
  return new Mixed([
    [
      "tower",
      new Tower([
        new Conv2dLayer(s, cin, o, [1, 1]),
        new Conv2dLayer(s, o, 320 / d, [3, 3], 2, "valid"),
      ]),
    ],
    [
      "tower_1",
      new Tower([
        new Conv2dLayer(s, cin, o, [1, 1]),
        new Conv2dLayer(s, o, o, [1, 7]),
        new Conv2dLayer(s, o, o, [7, 1]),
        new Conv2dLayer(s, o, o, [3, 3], 2, "valid"),
      ]),
    ],
  ], true);
}

function inceptionE(s: Seeder, cin: number, d: number, useMax: boolean): Mixed {
  const c = 384 / d;
  return new Mixed([
    ["conv", new Conv2dLayer(s, cin, 320 / d, [1, 1])],
    ["tower", new Tower([new Conv2dLayer(s, cin, c, [1, 1])], new Split(s, c, c))],
    [
      "tower_1",
      new Tower([
        new Conv2dLayer(s, cin, 448 / d, [1, 1]),
        new Conv2dLayer(s, 448 / d, c, [3, 3]),
      ], new Split(s, c, c)),
    ],
    ["tower_2", new PoolTower(s, cin, 192 / d, useMax)],
  ]);
}

/** The `layers` Sequential: stem, mixed blocks, global average pool. */
class Layers extends Module {
  readonly steps: { forward(x: tf.Tensor4D): tf.Tensor4D }[] = [];

  constructor(s: Seeder, d: number) {
    super();
    const conv = (name: string, c: Conv2dLayer) => this.steps.push(this.addChild(name, c));
    const pool = { forward: (x: tf.Tensor4D) => tf.maxPool(x, 3, 2, "valid") };
    conv("conv", new Conv2dLayer(s, 3, 32 / d, [3, 3], 2, "valid"));
    conv("conv_1", new Conv2dLayer(s, 32 / d, 32 / d, [3, 3], 1, "valid"));
    conv("conv_2", new Conv2dLayer(s, 32 / d, 64 / d, [3, 3]));
    this.steps.push(pool);
    conv("conv_3", new Conv2dLayer(s, 64 / d, 80 / d, [1, 1], 1, "valid"));
    conv("conv_4", new Conv2dLayer(s, 80 / d, 192 / d, [3, 3], 1, "valid"));
    this.steps.push(pool);
    const mixed = (name: string, m: Mixed) => this.steps.push(this.addChild(name, m));
    mixed("mixed", inceptionA(s, 192 / d, 32, d));
    mixed("mixed_1", inceptionA(s, 256 / d, 64, d));
    mixed("mixed_2", inceptionA(s, 288 / d, 64, d));
    mixed("mixed_3", inceptionB(s, 288 / d, d));
    mixed("mixed_4", inceptionC(s, 768 / d, 128, d));
    mixed("mixed_5", inceptionC(s, 768 / d, 160, d));
    mixed("mixed_6", inceptionC(s, 768 / d, 160, d));
    mixed("mixed_7", inceptionC(s, 768 / d, 192, d));
    mixed("mixed_8", inceptionD(s, 768 / d, d));
    mixed("mixed_9", inceptionE(s, 1280 / d, d, false));
    mixed("mixed_10", inceptionE(s, 2048 / d, d, true));
  }

  /** `[N, 299, 299, 3]` scaled images → pool3 features `[N, 2048/d]`. */
  forward(x: tf.Tensor4D): tf.Tensor2D {
    let h = x;
    for (const step of this.steps) {
      const next = step.forward(h);
      if (h !== x) h.dispose();
      h = next;
    }
    const pooled = tf.mean(h, [1, 2]) as tf.Tensor2D;
    if (h !== x) h.dispose();
    return pooled;
  }
}

/** `output`: Linear 2048/d → 1008 (weight `[1008, 2048/d]` in PyTorch, `[in, out]` here). */
class Output extends Module {
  readonly weight: tf.Variable;
  readonly bias: tf.Variable;

  constructor(features: number, seed: Seeder) {
    super();
    const std = Math.sqrt(1 / features);
    this.weight = this.addParam(
      "weight",
      [INCEPTION_CLASSES, features],
      "linear",
      () => tf.randomNormal([features, INCEPTION_CLASSES], 0, std, "float32", seed.next()),
    );
    this.bias = this.addParam(
      "bias",
      [INCEPTION_CLASSES],
      "plain",
      () => tf.zeros([INCEPTION_CLASSES]),
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Resize.

const resizeCache = new Map<number, Float32Array>();

/**
 * The `[299, size]` matrix of TF1's legacy bilinear resize along one axis: row j interpolates
 * input coordinate u = j·size/299 (clamped to the last pixel) between ⌊u⌋ and ⌊u⌋ + 1.
 */
export function resizeMatrix(size: number, out = INCEPTION_RESOLUTION): Float32Array {
  const key = size * 100000 + out;
  const cached = resizeCache.get(key);
  if (cached) return cached;
  const m = new Float32Array(out * size);
  for (let j = 0; j < out; j++) {
    const u = Math.min((j * size) / out, size - 1);
    const i0 = Math.floor(u);
    const f = u - i0;
    const i1 = Math.min(i0 + 1, size - 1);
    m[j * size + i0] += 1 - f;
    m[j * size + i1] += f;
  }
  resizeCache.set(key, m);
  return m;
}

/**
 * Resizes NHWC images to 299×299 as the detector does (identity for 299×299 input): matrix
 * products with {@linkcode resizeMatrix} ({@linkcode separable2d}), so the result does not depend
 * on the backend's resize kernel.
 */
export function resizeTo299(x: tf.Tensor4D): tf.Tensor4D {
  const [, h, w] = x.shape;
  const R = INCEPTION_RESOLUTION;
  if (h === R && w === R) return tf.clone(x);
  return tf.tidy(() =>
    separable2d(
      x,
      tf.tensor2d(resizeMatrix(h), [R, h]),
      tf.tensor2d(resizeMatrix(w), [R, w]),
    )
  );
}

// ---------------------------------------------------------------------------------------------
// TorchScript module trees.

/**
 * The tensors of a TorchScript module tree (`data.pkl` of a `torch.jit.save` archive): records
 * of classes `__torch__.*` whose attribute dicts hold parameters, buffers and sub-modules.
 * Returns dotted names (`layers.conv.conv.weight`) in attribute order.
 *
 * @throws {IoError} when the value is not a TorchScript module or nests too deeply.
 */
export function torchScriptTensors(root: PyValue): Map<string, TensorRef> {
  const out = new Map<string, TensorRef>();
  const walk = (v: PyValue, prefix: string, depth: number) => {
    if (depth > 64) throw new IoError(`TorchScript module tree nested too deeply at '${prefix}'`);
    if (!(v instanceof PyObject) || !(v.state instanceof PyDict)) {
      throw new IoError(`'${prefix || "<root>"}' is not a TorchScript module`);
    }
    for (const [k, x] of v.state) {
      if (typeof k !== "string") continue;
      if (x instanceof TensorRef) out.set(prefix + k, x);
      else if (x instanceof PyObject && x.className.startsWith("__torch__.")) {
        walk(x, `${prefix}${k}.`, depth + 1);
      }
    }
  };
  walk(root, "", 0);
  return out;
}

function isTorchScriptModule(v: PyValue): boolean {
  return v instanceof PyObject && v.className.startsWith("__torch__.") && v.state instanceof PyDict;
}

/** Reads the tensors of a detector file: TorchScript `.pt`, torch.save state dict, or ours. */
async function readDetectorState(path: string): Promise<Map<string, HostTensor>> {
  const head = new Uint8Array(2);
  const f = await Deno.open(path).catch((e: Error) => {
    throw new IoError(`${path}: cannot open: ${e.message.split("\n")[0]}`);
  });
  try {
    await f.read(head);
  } finally {
    f.close();
  }
  const isZipOrPickle = (head[0] === 0x50 && head[1] === 0x4b) || head[0] === 0x80;
  if (!isZipOrPickle) {
    const { tensors, metadata } = await readSafetensors(path);
    if (metadata.format !== undefined && metadata.format !== INCEPTION_FORMAT) {
      throw new IoError(`${path}: not a ${INCEPTION_FORMAT} file (format '${metadata.format}')`);
    }
    return tensors;
  }
  const file = openTorchFile(path);
  try {
    const refs = isTorchScriptModule(file.root)
      ? torchScriptTensors(file.root)
      : stateDictOf(file.root);
    const out = new Map<string, HostTensor>();
    for (const [name, ref] of refs) out.set(name, readTensor(ref));
    return out;
  } finally {
    file.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The detector.

/** What {@linkcode InceptionV3.forward} returns. */
export interface InceptionOutput {
  /** pool3 features `[N, 2048]` (FID, precision-recall). */
  pool: tf.Tensor2D;
  /** Logits `[N, 1008]` (with the output bias unless `noOutputBias`). */
  logits: tf.Tensor2D;
}

/**
 * The Inception-v3 FID detector (a {@linkcode Detector} and a {@linkcode Module} whose state
 * dict has the names and shapes of `inception-2015-12-05.pt`).
 */
export class InceptionV3 extends Module implements Detector {
  readonly name = "inception";
  readonly featureDim: number;
  readonly numClasses = INCEPTION_CLASSES;
  readonly channels = 3;
  /** The width divisor (1 for the real detector). */
  readonly widthDivisor: number;
  readonly layers: Layers;
  readonly output: Output;

  /** A detector with random weights (load real ones with {@linkcode InceptionV3.load}). */
  constructor(opts: InceptionOptions = {}) {
    super();
    const d = opts.widthDivisor ?? 1;
    for (const c of [32, 48, 64, 80, 96, 128, 160, 192, 320, 384, 448]) {
      if (!Number.isInteger(d) || d < 1 || c % d !== 0) {
        throw new RangeError(`Inception-v3: width divisor ${d} does not divide ${c} channels`);
      }
    }
    this.widthDivisor = d;
    this.featureDim = 2048 / d;
    let s = opts.seed ?? 0;
    const seed: Seeder = { next: () => ++s };
    this.layers = this.addChild("layers", new Layers(seed, d));
    this.output = this.addChild("output", new Output(this.featureDim, seed));
  }

  /**
   * Loads a detector: the TorchScript `inception-2015-12-05.pt` (or a torch.save'd state dict
   * with the same names), or a safetensors file written by {@linkcode save}. The width divisor is
   * read from the shape of `layers.conv.conv.weight`; every tensor must be present with its
   * exact shape and no others may be (float16/float64 values are converted to float32).
   *
   * @throws {IoError} for an unreadable file or one that does not hold this network.
   */
  static async load(path: string): Promise<InceptionV3> {
    const state = await readDetectorState(path);
    const first = state.get("layers.conv.conv.weight");
    if (!first || first.shape.length !== 4 || 32 % first.shape[0] !== 0) {
      throw new IoError(
        `${path}: not an Inception-v3 detector (no 3×3 'layers.conv.conv.weight' with 32/d outputs)`,
      );
    }
    const net = new InceptionV3({ widthDivisor: 32 / first.shape[0] });
    try {
      net.loadStateDict(state);
    } catch (e) {
      net.dispose();
      if (e instanceof StateDictError) throw new IoError(`${path}: ${e.message}`);
      throw e;
    }
    return net;
  }

  /** Writes the weights (float32, PyTorch names and layouts) as safetensors, atomically. */
  async save(path: string, extra: Record<string, string> = {}): Promise<void> {
    await writeSafetensors(path, await this.stateDict(), {
      ...extra,
      format: INCEPTION_FORMAT,
      width_divisor: String(this.widthDivisor),
    });
  }

  /**
   * pool3 features and logits of NHWC images holding uint8 values 0–255 (float32 or int32, any
   * size; 1 channel is repeated to 3): resize to 299×299, `(x − 128) / 128`, the network. The
   * input is not disposed.
   */
  forward(images: tf.Tensor4D, opts: { noOutputBias?: boolean } = {}): InceptionOutput {
    const c = images.shape[3];
    if (images.rank !== 4 || (c !== 1 && c !== 3)) {
      throw new RangeError(
        `Inception-v3 expects [N, H, W, 3] (or 1) images, got [${images.shape}]`,
      );
    }
    return tf.tidy(() => {
      const x = tf.tidy(() => {
        let t = tf.cast(images, "float32") as tf.Tensor4D;
        if (c === 1) t = tf.tile(t, [1, 1, 1, 3]);
        return tf.div(tf.sub(resizeTo299(t), 128), 128) as tf.Tensor4D;
      });
      const pool = this.layers.forward(x);
      x.dispose();
      const w = this.output.weight as tf.Tensor2D;
      const logits = opts.noOutputBias
        ? tf.matMul(pool, w)
        : tf.fused.matMul({ a: pool, b: w, bias: this.output.bias });
      return { pool, logits: logits as tf.Tensor2D };
    });
  }

  /**
   * {@linkcode Detector.run}: features = pool3, probs = softmax of the logits without the output
   * bias (the `no_output_bias=True` probabilities of SiD/StyleGAN's Inception Score).
   */
  run(images: tf.Tensor4D): DetectorOutput {
    return tf.tidy(() => {
      const { pool, logits } = this.forward(images, { noOutputBias: true });
      return { features: pool, probs: tf.softmax(logits) as tf.Tensor2D };
    });
  }
}
