/**
 * One training iteration of SiD / SiDA / SiD²A, exactly in the order of sida-spec §4.1
 * (`sida_training_loop.py:340-437`, Appendix A):
 *
 * - **A** fake-score (+ discriminator, SiDA) update: fake net in train mode, G in eval mode
 *   without gradient, real batch from the data, x-flip augmentation of fakes and reals
 *   independently, R = batch / microBatch accumulation rounds, nan_to_num, ±1 value clip (SiDA),
 *   one Adam step.
 * - **B** generator update: G in train mode, fake net (eval) and teacher (eval) frozen with
 *   gradients flowing through them into x_g, the SiD loss (+ adversarial term after its warm-up),
 *   accumulation, nan_to_num, an Adam step only when the warm-up gate allows.
 * - **C** EMA of G with half-life and ramp-up; `curNimg += batch`.
 *
 * SiD²A is SiDA whose G (and G_ema) start from a pre-distilled SiD generator while the fake net
 * still starts from the teacher (sida-spec §1.3).
 *
 * Randomness: every draw (generator noise, σ, diffusion noise, flips) comes from a host RNG seeded
 * by (seed, iteration), the dropout masks from streams seeded by (seed, iteration, round, step)
 * (`withDropoutSeed`), and the data order from a seeded {@linkcode InfiniteSampler}, so a run
 * resumed from {@linkcode Distiller.state} continues exactly as an uninterrupted one would.
 *
 * @example
 * ```ts
 * import { createNetwork, preset } from "../nets/network.ts";
 * import { mnistDataset } from "../data/dataset.ts";
 * import { Distiller } from "./distiller.ts";
 * const teacher = createNetwork(preset("mnist"), { seed: 0 });
 * const d = new Distiller({
 *   teacher, dataset: await mnistDataset(),
 *   config: { method: "sida", batch: 8, microBatch: 4, gWarmupNimg: 0, ganWarmupNimg: 0 },
 * });
 * const stats = await d.step();
 * console.log(stats.lossFake, stats.lossG, stats.gStep);
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { NamedTensorMap } from "../deps.ts";
import type { ImageDataset } from "../data/dataset.ts";
import { InfiniteSampler, makeBatch, type SamplerState } from "../data/sampler.ts";
import type { HostTensor } from "../io/host_tensor.ts";
import { type EdmKwargs, type NetworkConfig, toEdmKwargs } from "../nets/config.ts";
import { createNetwork } from "../nets/network.ts";
import { withDropoutSeed } from "../nets/layers.ts";
import type { EDMPrecond } from "../nets/precond.ts";
import { Ema, EMA_RAMPUP_RATIO } from "./ema.ts";
import { DEFAULT_INIT_SIGMA, generate, generatorNoise, zeroAugmentLabels } from "./generator.ts";
import {
  fakeScoreDiscriminatorLoss,
  fakeScoreLoss,
  fakeStepObjective,
  G_STEP_WARMUP_NIMG,
  GAN_WARMUP_NIMG,
  generatorObjective,
  sanitizeGradients,
  sidaGeneratorAdversarialLoss,
  sidGeneratorLoss,
} from "./losses.ts";
import { Adam } from "./optim.ts";
import {
  DEFAULT_ALPHA,
  DEFAULT_TMAX,
  EDM_P_MEAN,
  EDM_P_STD,
  type RandomSource,
  sampleFakeSigma,
  sampleGeneratorSigma,
  seededRandom,
  SIDA_SCRIPT_ALPHA,
} from "./sigma.ts";

/** `sid` (plain SiD, no GAN, sida-spec §3.7) or `sida` (SiDA / SiD²A, sida-spec §3.4-3.6). */
export type DistillMethod = "sid" | "sida";

/** Every hyper-parameter of a distillation (the algorithm; run cadence lives in `train.ts`). */
export interface DistillConfig {
  /** `sid` or `sida` (`--use_gan`); SiD²A is `sida` with an initial generator. */
  method: DistillMethod;
  /** α of the SiD loss (sida-spec §2.3): 1.2 for SiD, 1.0 in the SiDA scripts. */
  alpha: number;
  /** Truncation of the generator σ schedule (sida-spec §2.2): 800 in every script. */
  tmax: number;
  /** σ_init (sida-spec §1.2): 2.5. */
  initSigma: number;
  /** Fake-net learning rate `--lr` (sida-spec §4.2). */
  lr: number;
  /** Generator learning rate `--glr` (sida-spec §4.2). */
  glr: number;
  /** Generator Adam β1 `--g_beta1` (sida-spec §4.2; 0 except FFHQ SiD, 0.9). */
  gBeta1: number;
  /** Adam eps (sida-spec §4.2: 1e-8 in fp32; we always compute in fp32). */
  adamEps: number;
  /** B, images per iteration (global batch). */
  batch: number;
  /** b, images per accumulation round; R = batch / microBatch (sida-spec §4.1). */
  microBatch: number;
  /** Fake-score loss scale `--ls` (sida-spec §3.2): 1. */
  ls: number;
  /** SiD generator loss scale `--lsg` (sida-spec §3.1): 100. */
  lsg: number;
  /** Discriminator loss scale `--lsd` (sida-spec §3.4): 1 (EDM). */
  lsd: number;
  /** Adversarial generator loss scale `--lsg_gan` (sida-spec §3.5): 0.01. */
  lsgGan: number;
  /** EMA half-life in kimg (sida-spec §4.1 step C; reference `--ema` is in Mimg). */
  emaKimg: number;
  /** EMA ramp-up ratio (sida-spec §4.1: 0.05), `null` for none. */
  emaRampup: number | null;
  /**
   * No generator step while curNimg ≤ this (SiDA only; sida-spec §3.6: 100 000). 0 disables the
   * gate.
   */
  gWarmupNimg: number;
  /** No adversarial term while curNimg ≤ this (sida-spec §3.6: 200 000). 0 disables the gate. */
  ganWarmupNimg: number;
  /**
   * Step-A augmentation of fakes and reals (sida-spec §4.5): each image is x-flipped with
   * probability ½, independently, and the flip flag goes into the first entry of the 9-dim
   * augmentation label (EDM `AugmentPipe` label order: xflip, yflip, scale, rotate(2),
   * aniso(2), translate(2)). The other geometric augmentations are not implemented. Needs a fake
   * net with `augmentDim > 0`.
   */
  augment: boolean;
  /** Elementwise clip of the fake-net gradient (sida-spec §4.2: 1 on the SiDA path), or null. */
  fakeGradClip: number | null;
  /** Log-normal P_mean of the fake/D σ (sida-spec §2.1: −1.2 on the EDM path). */
  pMean: number;
  /** Log-normal P_std of the fake/D σ (sida-spec §2.1: 1.2). */
  pStd: number;
  /** Dropout of G and the fake net, or null for the teacher's (sida-spec §4.4). */
  dropout: number | null;
  /** Seed of every random draw and of the data order. */
  seed: number;
}

/**
 * A complete {@linkcode DistillConfig} for `method`, with the reference defaults
 * (sida-spec §2-4) and `overrides` on top.
 */
export function resolveDistillConfig(
  overrides: Partial<DistillConfig> & { method?: DistillMethod } = {},
): DistillConfig {
  const method = overrides.method ?? "sida";
  const sida = method === "sida";
  const defined = Object.fromEntries(
    Object.entries(overrides).filter(([, v]) => v !== undefined),
  ) as Partial<DistillConfig>;
  const c: DistillConfig = {
    method,
    alpha: sida ? SIDA_SCRIPT_ALPHA : DEFAULT_ALPHA, // §2.3
    tmax: DEFAULT_TMAX, // §2.2
    initSigma: DEFAULT_INIT_SIGMA, // §1.2
    lr: 1e-5, // §6.1/§6.2 CIFAR scripts
    glr: 1e-5,
    gBeta1: 0, // §4.2
    adamEps: 1e-8, // §4.2 (fp32)
    batch: 256,
    microBatch: 32,
    ls: 1, // §6 (every script)
    lsg: 100,
    lsd: 1, // §6.2
    lsgGan: 0.01,
    emaKimg: 500, // §6: --ema 0.5 (Mimg)
    emaRampup: EMA_RAMPUP_RATIO, // §4.1
    gWarmupNimg: sida ? G_STEP_WARMUP_NIMG : 0, // §3.6, §9 trap 10
    ganWarmupNimg: sida ? GAN_WARMUP_NIMG : 0,
    augment: false,
    fakeGradClip: sida ? 1 : null, // §4.2
    pMean: EDM_P_MEAN, // §2.1
    pStd: EDM_P_STD,
    dropout: null,
    seed: 0,
    ...defined,
  };
  validateDistillConfig(c);
  return c;
}

/** Checks a configuration; throws a `RangeError` naming the first bad value. */
export function validateDistillConfig(c: DistillConfig): void {
  const bad = (what: string): never => {
    throw new RangeError(what);
  };
  if (c.method !== "sid" && c.method !== "sida") bad(`method must be sid or sida, got ${c.method}`);
  const pos = (k: keyof DistillConfig) => {
    const v = c[k] as number;
    if (typeof v !== "number" || !(v > 0) || !Number.isFinite(v)) bad(`${k} must be > 0, got ${v}`);
  };
  const nonneg = (k: keyof DistillConfig) => {
    const v = c[k] as number;
    if (typeof v !== "number" || !(v >= 0) || !Number.isFinite(v)) {
      bad(`${k} must be ≥ 0, got ${v}`);
    }
  };
  for (const k of ["tmax", "initSigma", "adamEps", "emaKimg", "pStd"] as const) pos(k);
  for (const k of ["lr", "glr", "ls", "lsg", "lsd", "lsgGan", "gWarmupNimg", "ganWarmupNimg"]) {
    nonneg(k as keyof DistillConfig);
  }
  if (!Number.isFinite(c.alpha)) bad(`alpha must be a number, got ${c.alpha}`);
  if (!Number.isFinite(c.pMean)) bad(`pMean must be a number, got ${c.pMean}`);
  if (c.tmax > 1000) bad(`tmax must be in (0, 1000], got ${c.tmax}`);
  if (!(c.gBeta1 >= 0 && c.gBeta1 < 1)) bad(`gBeta1 must be in [0, 1), got ${c.gBeta1}`);
  for (const k of ["batch", "microBatch"] as const) {
    if (!Number.isInteger(c[k]) || c[k] < 1) bad(`${k} must be a positive integer, got ${c[k]}`);
  }
  if (c.batch % c.microBatch !== 0) {
    bad(`batch ${c.batch} is not a multiple of the micro-batch ${c.microBatch}`);
  }
  if (c.emaRampup !== null && !(c.emaRampup > 0)) bad(`emaRampup must be > 0 or null`);
  if (c.fakeGradClip !== null && !(c.fakeGradClip > 0)) bad(`fakeGradClip must be > 0 or null`);
  if (c.dropout !== null && !(c.dropout >= 0 && c.dropout < 1)) {
    bad(`dropout must be in [0, 1), got ${c.dropout}`);
  }
  if (!Number.isSafeInteger(c.seed) || c.seed < 0) bad(`seed must be an integer ≥ 0`);
  if (typeof c.augment !== "boolean") bad(`augment must be a boolean`);
}

/**
 * The fields of a {@linkcode DistillConfig} that define the algorithm: a saved state can only be
 * resumed under a configuration that agrees on all of them. Learning rates, the EMA half-life
 * and the micro-batch (memory only) may change between sessions.
 */
export const STATE_DEFINING_FIELDS: readonly (keyof DistillConfig)[] = [
  "method",
  "alpha",
  "tmax",
  "initSigma",
  "batch",
  "ls",
  "lsg",
  "lsd",
  "lsgGan",
  "gWarmupNimg",
  "ganWarmupNimg",
  "augment",
  "fakeGradClip",
  "pMean",
  "pStd",
  "dropout",
  "seed",
  "gBeta1",
];

/** The first algorithm-defining field on which two configurations differ, or null. */
export function configDifference(
  saved: DistillConfig,
  current: DistillConfig,
): { field: keyof DistillConfig; saved: unknown; current: unknown } | null {
  for (const k of STATE_DEFINING_FIELDS) {
    if (JSON.stringify(saved[k]) !== JSON.stringify(current[k])) {
      return { field: k, saved: saved[k], current: current[k] };
    }
  }
  return null;
}

/** What {@linkcode Distiller.step} reports about one iteration. */
export interface IterationStats {
  /** Index of this iteration (0 for the first of the run). */
  iteration: number;
  /** Images seen before this iteration (`cur_nimg` of the gates). */
  curNimg: number;
  /** Images seen after it. */
  nimg: number;
  /** Whether G took an optimizer step. */
  gStep: boolean;
  /** Whether the adversarial term was in G's loss. */
  ganActive: boolean;
  /** EMA β of this iteration. */
  emaBeta: number;
  /** (ls/B)·Σ L_fake over the whole batch (the reference's `loss_fake_score`, all rounds). */
  lossFake: number;
  /** (lsd/B)·Σ L_D (SiDA), else null. */
  lossD: number | null;
  /** Mean BCE of the real / fake logits in step A (SiDA), averaged over the rounds. */
  bceReal: number | null;
  bceFake: number | null;
  /** (lsg/B)·Σ L_SiD, before the ½ mix (the reference's `loss_G`). */
  lossG: number;
  /** (lsg_gan/B)·Σ L_GAN, before the ½ mix (SiDA; computed also during the warm-up), else null. */
  lossGGan: number | null;
  /** Mean generator BCE_G over the rounds (SiDA), else null. */
  bceG: number | null;
  /** Statistics of w_n (sida-spec §2.2) over the batch's kept samples. */
  weightFactor: { mean: number; min: number; max: number };
  /** Samples kept by the NaN filters in step A and step B (B each when nothing is dropped). */
  keptFake: number;
  keptG: number;
  /** Wall-clock seconds of each step and of the iteration. */
  timings: { stepA: number; stepB: number; ema: number; total: number };
}

/** Everything needed to resume a distillation (see {@linkcode Distiller.state}). */
export interface DistillerState {
  /** The configuration the state was made with. */
  config: DistillConfig;
  /** Images seen. */
  curNimg: number;
  /** Iterations done. */
  iteration: number;
  /** The data sampler's position, or null without data. */
  sampler: SamplerState | null;
  /** EDM kwargs of G (= G_ema) and of the fake net. */
  networks: { G: EdmKwargs; fake: EdmKwargs };
  /**
   * Tensors: `G.*`, `G_ema.*`, `fake.*` (state dicts, PyTorch layout) and `optG.*`, `optFake.*`
   * (Adam: `<param>.exp_avg`, `<param>.exp_avg_sq`, `<param>.step`).
   */
  tensors: Map<string, HostTensor>;
}

/** What {@linkcode Distiller} is built from. */
export interface DistillerInit {
  /** The frozen teacher f_φ (never trained; its variables are never in a gradient list). */
  teacher: EDMPrecond;
  /** Hyper-parameters (missing ones get the defaults of {@linkcode resolveDistillConfig}). */
  config?: Partial<DistillConfig> & { method?: DistillMethod };
  /**
   * Training data: real images for SiDA's discriminator and the labels of every network call
   * (sida-spec §4.5). Required for SiDA and for a conditional teacher.
   */
  dataset?: ImageDataset;
  /**
   * SiD²A: a pre-distilled SiD generator that G and G_ema start from (sida-spec §1.3); same
   * architecture as the teacher. The fake net still starts from the teacher.
   */
  initGenerator?: EDMPrecond;
}

/** The teacher's configuration with another dropout (the structure, hence the names, is unchanged). */
function withDropout(config: NetworkConfig, dropout: number | null): NetworkConfig {
  if (dropout === null) return config;
  return { ...config, unet: { ...config.unet, dropout } };
}

/** Configurations equal up to dropout and the fp16 flag (which do not change the weights). */
function sameArchitecture(a: NetworkConfig, b: NetworkConfig): boolean {
  const norm = (c: NetworkConfig) =>
    JSON.stringify(toEdmKwargs({ ...c, useFp16: false, unet: { ...c.unet, dropout: 0 } }));
  return norm(a) === norm(b);
}

/** A uint32 from (seed, iteration, stream): murmur3 finaliser over the words. */
export function mixSeed(...values: number[]): number {
  let h = 0x9e3779b9;
  for (const v of values) {
    for (const word of [v >>> 0, Math.floor(v / 0x100000000) >>> 0]) {
      h ^= word + 0x7f4a7c15;
      h ^= h >>> 16;
      h = Math.imul(h, 0x85ebca6b);
      h ^= h >>> 13;
      h = Math.imul(h, 0xc2b2ae35);
      h ^= h >>> 16;
    }
  }
  return h >>> 0;
}

function hostNormal(rng: RandomSource, shape: number[]): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(Float32Array.from(rng.normal(n)), shape, "float32");
}

/** Flips the images whose flag is set along the width axis (NHWC axis 2). */
function flipImages(x: tf.Tensor4D, flags: boolean[]): tf.Tensor4D {
  return tf.tidy(() => {
    const n = x.shape[0];
    const mask = tf.broadcastTo(tf.tensor4d(flags.map(Number), [n, 1, 1, 1], "float32"), x.shape);
    return tf.where(tf.cast(mask, "bool"), tf.reverse(x, 2), x) as tf.Tensor4D;
  });
}

/** Augmentation labels `[n, dim]` whose first entry is the x-flip flag (EDM AugmentPipe order). */
function flipAugmentLabels(flags: boolean[], dim: number): tf.Tensor2D {
  const v = new Float32Array(flags.length * dim);
  flags.forEach((f, i) => v[i * dim] = f ? 1 : 0);
  return tf.tensor2d(v, [flags.length, dim], "float32");
}

function disposeMap(m: NamedTensorMap): void {
  for (const t of Object.values(m)) t.dispose();
}

function accumulate(acc: NamedTensorMap, grads: NamedTensorMap): void {
  for (const [k, g] of Object.entries(grads)) {
    const prev = acc[k];
    if (prev) {
      acc[k] = tf.add(prev, g);
      prev.dispose();
      g.dispose();
    } else {
      acc[k] = g;
    }
  }
}

async function read(t: tf.Tensor): Promise<Float32Array> {
  const v = await t.data() as Float32Array;
  t.dispose();
  return v;
}

/**
 * The SiD / SiDA / SiD²A trainer: owns G, G_ema, the fake net, both Adam optimizers, the EMA and
 * the data sampler, and runs iterations with {@linkcode Distiller.step}.
 */
export class Distiller {
  /** The resolved configuration. */
  readonly config: DistillConfig;
  /** The frozen teacher (the caller's network; not disposed by {@linkcode dispose}). */
  readonly teacher: EDMPrecond;
  /** The one-step generator G_θ. */
  readonly G: EDMPrecond;
  /** Its EMA copy (what snapshots and evaluation use). */
  readonly Gema: EDMPrecond;
  /** The fake score network f_ψ (its encoder is SiDA's discriminator). */
  readonly fake: EDMPrecond;
  /** The data, if any. */
  readonly dataset?: ImageDataset;
  /** Images seen so far. */
  curNimg = 0;
  /** Iterations done so far. */
  iteration = 0;
  readonly #optG: Adam;
  readonly #optFake: Adam;
  readonly #ema: Ema;
  #sampler: InfiniteSampler | null;

  /**
   * Builds G, G_ema and the fake net from the teacher (or G and G_ema from `initGenerator` for
   * SiD²A; sida-spec §1.3) and fresh optimizers.
   *
   * @throws RangeError on a bad configuration, data that do not fit the teacher, SiDA without
   *   data, or an initial generator of another architecture.
   */
  constructor(init: DistillerInit) {
    const config = resolveDistillConfig(init.config);
    this.config = config;
    const teacher = init.teacher;
    this.teacher = teacher;
    teacher.eval();
    const ds = init.dataset;
    if (ds) {
      if (ds.resolution !== teacher.imgResolution || ds.channels !== teacher.imgChannels) {
        throw new RangeError(
          `data are ${ds.resolution}x${ds.resolution}x${ds.channels} images but the teacher ` +
            `expects ${teacher.imgResolution}x${teacher.imgResolution}x${teacher.imgChannels}`,
        );
      }
      if (teacher.labelDim > 0 && ds.labelDim !== teacher.labelDim) {
        throw new RangeError(
          ds.labelDim === 0
            ? `the teacher is conditional (${teacher.labelDim} classes) but the data have no labels`
            : `the data have ${ds.labelDim} classes but the teacher has ${teacher.labelDim}`,
        );
      }
    } else if (config.method === "sida") {
      throw new RangeError("SiDA needs real training data (dataset)");
    } else if (teacher.labelDim > 0) {
      throw new RangeError(`the teacher is conditional: labelled data are needed for its labels`);
    }
    if (config.augment && teacher.augmentDim === 0) {
      throw new RangeError(
        "augmentation needs a teacher with an augmentation embedding (augment_dim 9)",
      );
    }
    if (init.initGenerator && !sameArchitecture(init.initGenerator.config, teacher.config)) {
      throw new RangeError("the initial generator's architecture differs from the teacher's");
    }
    this.dataset = ds;
    const netConfig = withDropout(teacher.config, config.dropout);
    const clone = (src: EDMPrecond) => {
      const net = createNetwork(netConfig, { init: "zeros" });
      net.copyFrom(src);
      return net.eval();
    };
    // §1.3: the fake net starts from the teacher, also in SiD²A; G and G_ema from the teacher
    // (SiD, SiDA) or from the SiD generator (SiD²A).
    this.fake = clone(teacher);
    this.G = clone(init.initGenerator ?? teacher);
    this.Gema = clone(init.initGenerator ?? teacher);
    // §4.2: Adam, β = (0, 0.999) for the fake net, (g_beta1, 0.999) for G.
    this.#optFake = new Adam(this.fake.namedParameters(), { lr: config.lr, eps: config.adamEps });
    this.#optG = new Adam(this.G.namedParameters(), {
      lr: config.glr,
      beta1: config.gBeta1,
      eps: config.adamEps,
    });
    this.#ema = new Ema(this.Gema, this.G, {
      halflifeKimg: config.emaKimg,
      batchSize: config.batch,
      rampupRatio: config.emaRampup,
    });
    this.#sampler = ds ? new InfiniteSampler(ds.size, config.seed) : null;
  }

  /** Accumulation rounds R = batch / microBatch. */
  get rounds(): number {
    return this.config.batch / this.config.microBatch;
  }

  /**
   * Whether G steps in an iteration that starts at `curNimg` (sida-spec §3.6, §4.1:
   * `not use_gan or cur_nimg > 100 000`, the threshold configurable; 0 disables the gate).
   */
  gStepEnabled(curNimg: number): boolean {
    const c = this.config;
    return c.method === "sid" || c.gWarmupNimg <= 0 || curNimg > c.gWarmupNimg;
  }

  /**
   * Whether the adversarial term is in G's loss (sida-spec §3.6: `use_gan and cur_nimg >
   * 200 000`, configurable; 0 disables the gate).
   */
  ganTermActive(curNimg: number): boolean {
    const c = this.config;
    return c.method === "sida" && (c.ganWarmupNimg <= 0 || curNimg > c.ganWarmupNimg);
  }

  /** One-hot labels of the given dataset indices (host-built), or undefined when not needed. */
  #labels(indices: number[] | null): tf.Tensor2D | undefined {
    const ds = this.dataset;
    const dim = this.teacher.labelDim;
    if (!ds || !indices || dim === 0) return undefined;
    const v = new Float32Array(indices.length * dim);
    indices.forEach((i, k) => v[k * dim + ds.label(i)] = 1);
    return tf.tensor2d(v, [indices.length, dim], "float32");
  }

  /** Runs one iteration (steps A, B, C of sida-spec §4.1) and reports it. */
  async step(): Promise<IterationStats> {
    const c = this.config;
    const sida = c.method === "sida";
    const b = c.microBatch;
    const B = c.batch;
    const R = this.rounds;
    const [res, ch] = [this.teacher.imgResolution, this.teacher.imgChannels];
    const curNimg = this.curNimg;
    const rng = seededRandom(mixSeed(c.seed, this.iteration));
    const t0 = performance.now();

    // ---- (A) fake-score / discriminator update (sida-spec §4.1 A, §3.2, §3.4) ----
    const fakeVars = this.fake.namedParameters().map(([, v]) => v);
    const accFake: NamedTensorMap = {};
    let statsAcc: tf.Tensor = tf.zeros([5]); // lossFake, lossD, bceReal, bceFake, kept
    for (let r = 0; r < R; r++) {
      const indices = this.#sampler ? this.#sampler.next(b) : null;
      const real = sida && this.dataset ? makeBatch(this.dataset, indices!) : null;
      real?.labels?.dispose(); // labels come from #labels (none for an unconditional teacher)
      const labels = this.#labels(indices);
      const eps = generatorNoise(this.G, b, rng);
      // G in eval mode, no gradient (not under variableGrads): sida-spec §4.4.
      const xg = generate(this.G, eps, { labels, initSigma: c.initSigma });
      const sigma = sampleFakeSigma(b, rng, { pMean: c.pMean, pStd: c.pStd });
      const noise = hostNormal(rng, [b, res, res, ch]);
      // §4.5: an independent x-flip draw (p = ½) for the fakes and for the reals.
      const flipF = c.augment ? Array.from(rng.uniform(b), (u) => u < 0.5) : null;
      const flipR = c.augment && sida ? Array.from(rng.uniform(b), (u) => u < 0.5) : null;
      const aDim = this.fake.augmentDim;
      const inputs = tf.tidy(() => {
        const s4 = tf.reshape(sigma, [b, 1, 1, 1]);
        const n = tf.mul(noise, s4);
        const y = flipF ? flipImages(xg, flipF) : tf.clone(xg);
        const aF = aDim > 0 ? (flipF ? flipAugmentLabels(flipF, aDim) : tf.zeros([b, aDim])) : null;
        const out: tf.Tensor[] = [y, tf.add(y, n), ...(aF ? [aF] : [])];
        if (real) {
          const xr = flipR ? flipImages(real.images, flipR) : real.images;
          const aR = aDim > 0
            ? (flipR ? flipAugmentLabels(flipR, aDim) : tf.zeros([b, aDim]))
            : null;
          out.push(tf.add(xr, n), ...(aR ? [aR] : []));
        }
        return out;
      });
      const y = inputs[0] as tf.Tensor4D;
      const yNoisy = inputs[1] as tf.Tensor4D;
      const aF = aDim > 0 ? inputs[2] as tf.Tensor2D : undefined;
      const realNoisy = real ? inputs[aDim > 0 ? 3 : 2] as tf.Tensor4D : undefined;
      const aR = real && aDim > 0 ? inputs[4] as tf.Tensor2D : undefined;
      const held: { extra?: tf.Tensor } = {};
      // Dropout masks seeded by (seed, iteration, round, step A).
      const { value, grads } = withDropoutSeed(
        mixSeed(c.seed, this.iteration, r, 3),
        () =>
          tf.variableGrads(() => {
            let j: tf.Scalar;
            if (sida) {
              // Fake net in train mode (dropout on), fakes with 'encoder_decoder', reals with
              // 'encoder', same σ, noise and label (sida-spec §3.4 steps 2-3).
              const o = this.fake.denoise(yNoisy, sigma, {
                labels,
                augmentLabels: aF,
                returnFlag: "encoder_decoder",
                training: true,
              });
              const logitsReal = this.fake.denoise(realNoisy!, sigma, {
                labels,
                augmentLabels: aR,
                returnFlag: "encoder",
                training: true,
              });
              const l = fakeScoreDiscriminatorLoss({
                x: y,
                denoised: o.denoised,
                logitsFake: o.logits,
                logitsReal,
                sigma,
              });
              j = fakeStepObjective({
                fake: l.fake.loss,
                disc: l.disc.loss,
                ls: c.ls,
                lsd: c.lsd,
                batchTotal: B,
              });
              held.extra = tf.keep(tf.stack([
                tf.mul(l.fake.loss, c.ls / B),
                tf.mul(l.disc.loss, c.lsd / B),
                l.disc.bceReal,
                l.disc.bceFake,
                tf.sum(tf.cast(l.keep, "float32")),
              ]));
            } else {
              const d = this.fake.denoise(yNoisy, sigma, {
                labels,
                augmentLabels: aF,
                training: true,
              });
              const l = fakeScoreLoss({ x: y, denoised: d, sigma });
              j = fakeStepObjective({ fake: l.loss, ls: c.ls, batchTotal: B });
              held.extra = tf.keep(tf.stack([
                tf.mul(l.loss, c.ls / B),
                tf.scalar(0),
                tf.scalar(0),
                tf.scalar(0),
                tf.sum(tf.cast(l.keep, "float32")),
              ]));
            }
            return j;
          }, fakeVars),
      );
      value.dispose();
      accumulate(accFake, grads);
      const next = tf.add(statsAcc, held.extra!);
      statsAcc.dispose();
      held.extra!.dispose();
      statsAcc = next;
      tf.dispose([eps, xg, sigma, noise, ...inputs]);
      if (real) real.images.dispose();
      labels?.dispose();
    }
    // §4.1: nan_to_num, then (SiDA, EDM path) clip every element to [−1, 1]; one Adam step.
    const cleanFake = sanitizeGradients(accFake, {
      clipValue: c.fakeGradClip === null ? undefined : c.fakeGradClip,
    });
    this.#optFake.step(cleanFake);
    disposeMap(cleanFake);
    const a = await read(statsAcc);
    const t1 = performance.now();

    // ---- (B) generator update (sida-spec §4.1 B, §3.1, §3.5, §3.6) ----
    const gStep = this.gStepEnabled(curNimg);
    const ganActive = this.ganTermActive(curNimg);
    const gVars = this.G.namedParameters().map(([, v]) => v);
    const accG: NamedTensorMap = {};
    let statsB: tf.Tensor = tf.zeros([4]); // lossG, lossGGan, bceG, kept
    const wAll: tf.Tensor[] = [];
    const chw = res * res * ch;
    for (let r = 0; r < R; r++) {
      const indices = this.#sampler ? this.#sampler.next(b) : null; // images discarded (§4.1)
      const labels = this.#labels(indices);
      const eps = generatorNoise(this.G, b, rng);
      const sigma = sampleGeneratorSigma(b, rng, { tmax: c.tmax });
      const noise = hostNormal(rng, [b, res, res, ch]);
      const held: { extra?: tf.Tensor; w?: tf.Tensor } = {};
      const objective = (): tf.Scalar => {
        // G in train mode (dropout on); teacher and fake net in eval mode, frozen (§4.4).
        const xg = generate(this.G, eps, { labels, initSigma: c.initSigma, training: true });
        const xt = tf.add(xg, tf.mul(noise, tf.reshape(sigma, [b, 1, 1, 1]))) as tf.Tensor4D;
        const yReal = this.teacher.denoise(xt, sigma, {
          labels,
          augmentLabels: zeroAugmentLabels(this.teacher, b),
        });
        const aFake = zeroAugmentLabels(this.fake, b);
        let yFake: tf.Tensor4D;
        let logits: tf.Tensor4D | undefined;
        if (sida) {
          const o = this.fake.denoise(xt, sigma, {
            labels,
            augmentLabels: aFake,
            returnFlag: "encoder_decoder",
          });
          yFake = o.denoised;
          logits = o.logits;
        } else {
          yFake = this.fake.denoise(xt, sigma, { labels, augmentLabels: aFake });
        }
        const sid = sidGeneratorLoss({ xg, yReal, yFake, alpha: c.alpha });
        const gan = logits
          ? sidaGeneratorAdversarialLoss({
            logits,
            weightFactor: sid.weightFactor,
            chw,
            keep: sid.keep,
          })
          : null;
        const j = generatorObjective({
          sid: sid.loss,
          gan: gan?.loss,
          lsg: c.lsg,
          lsgGan: c.lsgGan,
          batchTotal: B,
          ganActive,
        });
        held.extra = tf.keep(tf.stack([
          tf.mul(sid.loss, c.lsg / B),
          gan ? tf.mul(gan.loss, c.lsgGan / B) : tf.scalar(0),
          gan ? gan.bce : tf.scalar(0),
          tf.sum(tf.cast(sid.keep, "float32")),
        ]));
        // w_n of the kept samples (dropped ones are marked NaN and skipped in the statistics).
        held.w = tf.keep(tf.where(sid.keep, sid.weightFactor, tf.fill([b], NaN)));
        return j;
      };
      // Dropout masks (G in train mode) seeded by (seed, iteration, round, step B).
      const seeded = <T>(fn: () => T) => withDropoutSeed(mixSeed(c.seed, this.iteration, r, 4), fn);
      if (gStep) {
        const { value, grads } = seeded(() => tf.variableGrads(objective, gVars));
        value.dispose();
        accumulate(accG, grads);
      } else {
        // Gate closed: the loss is computed (and reported) but no gradient is needed.
        seeded(() => tf.tidy(objective)).dispose();
      }
      const next = tf.add(statsB, held.extra!);
      statsB.dispose();
      held.extra!.dispose();
      statsB = next;
      wAll.push(held.w!);
      tf.dispose([eps, sigma, noise, ...(labels ? [labels] : [])]);
    }
    if (gStep) {
      // §4.1: nan_to_num on G's gradients (no clipping for G), then the Adam step.
      const cleanG = sanitizeGradients(accG);
      this.#optG.step(cleanG);
      disposeMap(cleanG);
    } else {
      disposeMap(accG);
    }
    const bStats = await read(statsB);
    const wValues = Array.from(await read(tf.concat(wAll))).filter((v) => !Number.isNaN(v));
    tf.dispose(wAll);
    const t2 = performance.now();

    // ---- (C) EMA (sida-spec §4.1 C); cur_nimg += batch ----
    const emaBeta = this.#ema.update(curNimg);
    this.curNimg += B;
    this.iteration += 1;
    const t3 = performance.now();
    const wMean = wValues.length ? wValues.reduce((s, v) => s + v, 0) / wValues.length : NaN;
    return {
      iteration: this.iteration - 1,
      curNimg,
      nimg: this.curNimg,
      gStep,
      ganActive,
      emaBeta,
      lossFake: a[0],
      lossD: sida ? a[1] : null,
      bceReal: sida ? a[2] / R : null,
      bceFake: sida ? a[3] / R : null,
      lossG: bStats[0],
      lossGGan: sida ? bStats[1] : null,
      bceG: sida ? bStats[2] / R : null,
      weightFactor: {
        mean: wMean,
        min: wValues.length ? Math.min(...wValues) : NaN,
        max: wValues.length ? Math.max(...wValues) : NaN,
      },
      keptFake: a[4],
      keptG: bStats[3],
      timings: {
        stepA: (t1 - t0) / 1000,
        stepB: (t2 - t1) / 1000,
        ema: (t3 - t2) / 1000,
        total: (t3 - t0) / 1000,
      },
    };
  }

  /** Everything needed to resume: networks, optimizer states, counters, sampler, config. */
  async state(): Promise<DistillerState> {
    const tensors = new Map<string, HostTensor>();
    const put = (prefix: string, m: Map<string, HostTensor>) => {
      for (const [k, v] of m) tensors.set(prefix + k, v);
    };
    put("G.", await this.G.stateDict());
    put("G_ema.", await this.Gema.stateDict());
    put("fake.", await this.fake.stateDict());
    put("optG.", await this.#optG.state());
    put("optFake.", await this.#optFake.state());
    return {
      config: { ...this.config },
      curNimg: this.curNimg,
      iteration: this.iteration,
      sampler: this.#sampler ? this.#sampler.state() : null,
      networks: { G: toEdmKwargs(this.G.config), fake: toEdmKwargs(this.fake.config) },
      tensors,
    };
  }

  /**
   * Restores a state from {@linkcode state}. The state's algorithm-defining configuration must
   * match this distiller's ({@linkcode configDifference}); every tensor must be present with the
   * right shape. Network tensors are all checked before any is assigned; should an optimizer
   * state still fail to load, discard the distiller.
   */
  load(state: DistillerState): void {
    const diff = configDifference(state.config, this.config);
    if (diff) {
      throw new RangeError(
        `the saved state has ${diff.field} = ${JSON.stringify(diff.saved)}, this run ${
          JSON.stringify(diff.current)
        }`,
      );
    }
    if (!Number.isSafeInteger(state.curNimg) || state.curNimg < 0) {
      throw new RangeError(`bad image count ${state.curNimg} in the saved state`);
    }
    const part = (prefix: string) => {
      const m = new Map<string, HostTensor>();
      for (const [k, v] of state.tensors) {
        if (k.startsWith(prefix)) m.set(k.slice(prefix.length), v);
      }
      return m;
    };
    const known = ["G.", "G_ema.", "fake.", "optG.", "optFake."];
    for (const k of state.tensors.keys()) {
      if (!known.some((p) => k.startsWith(p))) {
        throw new RangeError(`unexpected state tensor '${k}'`);
      }
    }
    const sampler = this.dataset && state.sampler
      ? InfiniteSampler.fromState(this.dataset.size, state.sampler)
      : null;
    if (this.dataset && !state.sampler) throw new RangeError("the saved state has no data sampler");
    // Shapes and names are checked for every network before anything is assigned.
    for (
      const [prefix, net] of [["G.", this.G], ["G_ema.", this.Gema], ["fake.", this.fake]] as const
    ) {
      const p = part(prefix);
      const ours = net.namedTensors();
      for (const [name, e] of ours) {
        const t = p.get(name);
        if (!t) throw new RangeError(`the saved state lacks '${prefix}${name}'`);
        if (t.shape.join() !== e.torchShape.join()) {
          throw new RangeError(
            `'${prefix}${name}' has shape [${t.shape}] in the saved state, expected [${e.torchShape}]`,
          );
        }
      }
      if (p.size !== ours.length) {
        throw new RangeError(
          `the saved state has ${p.size - ours.length} unexpected '${prefix}' tensors`,
        );
      }
    }
    this.G.loadStateDict(part("G."));
    this.Gema.loadStateDict(part("G_ema."));
    this.fake.loadStateDict(part("fake."));
    this.#optG.loadState(part("optG."));
    this.#optFake.loadState(part("optFake."));
    this.curNimg = state.curNimg;
    this.iteration = state.iteration;
    this.#sampler = sampler;
  }

  /** Frees G, G_ema, the fake net and the optimizer states (not the teacher). */
  dispose(): void {
    this.G.dispose();
    this.Gema.dispose();
    this.fake.dispose();
    this.#optG.dispose();
    this.#optFake.dispose();
  }
}
