/**
 * One training iteration of SiD / SiDA / SiD²A, exactly in the order of docs/distillation.md §4.1
 * (mingyuanzhou/SiD `sida_training/sida_training_loop.py:340-440`), as three named phases
 * ({@linkcode Distiller.fakeScorePhase}, {@linkcode Distiller.generatorPhase},
 * {@linkcode Distiller.emaPhase}). Bare section numbers (§) below are those of
 * `docs/distillation.md`:
 *
 * - **A** fake-score (+ discriminator, SiDA) update: fake net in train mode, G in eval mode
 *   without gradient, real batch from the data, EDM's augmentation pipe on fakes and reals
 *   independently (`--augment p`), R = batch / microBatch accumulation rounds, nan_to_num, ±1
 *   value clip (SiDA), one Adam step.
 * - **B** generator update: G in train mode, fake net (eval) and teacher (eval) frozen with
 *   gradients flowing through them into x_g, the SiD loss (+ adversarial term after its warm-up),
 *   accumulation, nan_to_num, an Adam step only when the warm-up gate allows.
 * - **C** EMA of G with half-life and ramp-up; `curNimg += batch`.
 *
 * SiD²A is SiDA whose G (and G_ema) start from a pre-distilled SiD generator while the fake net
 * still starts from the teacher (docs/distillation.md §1.3).
 *
 * Randomness: every draw (generator noise, σ, diffusion noise, augmentations) comes from a host RNG seeded
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
import { type ImageDataset, isLatentDataset } from "../data/dataset.ts";
import { InfiniteSampler, makeBatch, type SamplerState } from "../data/sampler.ts";
import { augmentMismatch, dataMismatch, networkShape } from "../data/fit.ts";
import { isLabelsOnly } from "../data/labels.ts";
import {
  augment,
  type AugmentOptions,
  augmentRandomFrom,
  edmAugmentOptions,
} from "../data/augment.ts";
import type { HostTensor } from "../io/host_tensor.ts";
import { type EdmKwargs, type NetworkConfig, toEdmKwargs } from "../nets/config.ts";
import { createNetwork } from "../nets/network.ts";
import { withDropoutSeed } from "../nets/layers.ts";
import type { EDMPrecond } from "../nets/precond.ts";
import { createEdm2Network, type Edm2Config, EDM2Precond, toEdm2Kwargs } from "../nets/edm2.ts";
import { mixSeed, type RandomSource, seededRandom } from "../runtime/random.ts";
import { Ema, EMA_RAMPUP_RATIO } from "../train/ema.ts";
import { accumulateGradients, disposeGradients, sanitizeGradients } from "../train/gradients.ts";
import { Adam } from "../train/optim.ts";
import {
  allgatherNumbers,
  allreduceGradients,
  allreduceSums,
  dataParallel,
  roundRange,
} from "../train/parallel.ts";
import { DEFAULT_INIT_SIGMA, generate, generatorNoise, zeroAugmentLabels } from "./generator.ts";
import {
  fakeScoreDiscriminatorLoss,
  fakeScoreLoss,
  fakeStepObjective,
  G_STEP_WARMUP_NIMG,
  GAN_WARMUP_NIMG,
  generatorObjective,
  sidaGeneratorAdversarialLoss,
  sidGeneratorLoss,
} from "./losses.ts";
import {
  DEFAULT_ALPHA,
  DEFAULT_TMAX,
  EDM_P_MEAN,
  EDM_P_STD,
  sampleFakeSigma,
  sampleGeneratorSigma,
  SIDA_SCRIPT_ALPHA,
} from "./sigma.ts";

/**
 * `sid` (plain SiD, no GAN, docs/distillation.md §3.7) or `sida` (SiDA / SiD²A,
 * docs/distillation.md §3.4-3.6).
 */
export type DistillMethod = "sid" | "sida";

/** Every hyper-parameter of a distillation (the algorithm; run cadence lives in `train.ts`). */
export interface DistillConfig {
  /** `sid` or `sida` (`--use_gan`); SiD²A is `sida` with an initial generator. */
  method: DistillMethod;
  /** α of the SiD loss (docs/distillation.md §2.3): 1.2 for SiD, 1.0 in the SiDA scripts. */
  alpha: number;
  /** Truncation of the generator σ schedule (docs/distillation.md §2.2): 800 in every script. */
  tmax: number;
  /** σ_init (docs/distillation.md §1.2): 2.5. */
  initSigma: number;
  /** Fake-net learning rate `--lr` (docs/distillation.md §4.2). */
  lr: number;
  /** Generator learning rate `--glr` (docs/distillation.md §4.2). */
  glr: number;
  /** Generator Adam β1 `--g_beta1` (docs/distillation.md §4.2; 0 except FFHQ SiD, 0.9). */
  gBeta1: number;
  /** Adam eps (docs/distillation.md §4.2: 1e-8 in fp32; we always compute in fp32). */
  adamEps: number;
  /** B, images per iteration (global batch). */
  batch: number;
  /** b, images per accumulation round; R = batch / microBatch (docs/distillation.md §4.1). */
  microBatch: number;
  /** Fake-score loss scale `--ls` (docs/distillation.md §3.2): 1. */
  ls: number;
  /** SiD generator loss scale `--lsg` (docs/distillation.md §3.1): 100. */
  lsg: number;
  /** Discriminator loss scale `--lsd` (docs/distillation.md §3.4): 1 (EDM). */
  lsd: number;
  /** Adversarial generator loss scale `--lsg_gan` (docs/distillation.md §3.5): 0.01. */
  lsgGan: number;
  /** EMA half-life in kimg (docs/distillation.md §4.1 step C; reference `--ema` is in Mimg). */
  emaKimg: number;
  /** EMA ramp-up ratio (docs/distillation.md §4.1: 0.05), `null` for none. */
  emaRampup: number | null;
  /**
   * No generator step while curNimg ≤ this (SiDA only; docs/distillation.md §3.6: 100 000). 0
   * disables the
   * gate.
   */
  gWarmupNimg: number;
  /**
   * No adversarial term while curNimg ≤ this (docs/distillation.md §3.6: 200 000). 0 disables the
   * gate.
   */
  ganWarmupNimg: number;
  /**
   * Step-A augmentation probability p (`--augment`, `sida_train.py:110, 252-255`;
   * docs/distillation.md §4.5), 0 for none: EDM's `AugmentPipe` at p ({@linkcode
   * edmAugmentOptions}: an x-flip with probability ½; y-flip, isotropic scaling, rotation,
   * anisotropic scaling and fractional translation each with probability p) on the fakes and,
   * independently, on the reals of the fake-score phase; its 9 labels go to the fake net, which
   * needs `augmentDim` 9. The reference scripts use 0.12 (CIFAR-10) and 0.15 (FFHQ, AFHQ).
   */
  augment: number;
  /**
   * Elementwise clip of the fake-net gradient (docs/distillation.md §4.2: 1 on the SiDA path), or
   * null.
   */
  fakeGradClip: number | null;
  /** Log-normal P_mean of the fake/D σ (docs/distillation.md §2.1: −1.2 on the EDM path). */
  pMean: number;
  /** Log-normal P_std of the fake/D σ (docs/distillation.md §2.1: 1.2). */
  pStd: number;
  /** Dropout of G and the fake net, or null for the teacher's (docs/distillation.md §4.4). */
  dropout: number | null;
  /**
   * EDM2 only (`--return_logvar`, `sid:sida_training_edm2/sida_loss_edm2.py:234-238, 274-283`):
   * weight every per-sample loss by e^{−u}, u the fake net's log-variance head at σ, and add u
   * to the fake-score loss (docs/edm2.md). False: the plain λ-weighted losses.
   */
  returnLogvar: boolean;
  /**
   * EDM2 only: forced weight normalisation of G and the fake net, done once after each of their
   * optimizer steps (`EDM2Precond.renormalize`) instead of in place inside the training forward
   * as the reference does (`--force_normalization`; arXiv 2312.02696 §3; docs/edm2.md).
   */
  forceNormalization: boolean;
  /** Seed of every random draw and of the data order. */
  seed: number;
}

/**
 * A complete {@linkcode DistillConfig} for `method`, with the reference defaults
 * (docs/distillation.md §2-4) and `overrides` on top.
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
    gWarmupNimg: sida ? G_STEP_WARMUP_NIMG : 0, // §3.6, §9 pitfall 10
    ganWarmupNimg: sida ? GAN_WARMUP_NIMG : 0,
    augment: 0,
    fakeGradClip: sida ? 1 : null, // §4.2
    pMean: EDM_P_MEAN, // §2.1
    pStd: EDM_P_STD,
    dropout: null,
    returnLogvar: false,
    forceNormalization: true,
    seed: 0,
    ...defined,
  };
  validateDistillConfig(c);
  return c;
}

/** The fields of a complete {@linkcode DistillConfig}. */
const DISTILL_CONFIG_FIELDS = Object.keys(resolveDistillConfig({ method: "sid" })) as (
  keyof DistillConfig
)[];

/** Whether `c` has every field of a {@linkcode DistillConfig} (as `resolveDistillConfig` gives). */
export function isCompleteDistillConfig(c: unknown): c is DistillConfig {
  return !!c && typeof c === "object" &&
    DISTILL_CONFIG_FIELDS.every((k) => (c as Record<string, unknown>)[k] !== undefined);
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
  for (const k of ["returnLogvar", "forceNormalization"] as const) {
    if (typeof c[k] !== "boolean") bad(`${k} must be true or false, got ${JSON.stringify(c[k])}`);
  }
  if (typeof c.augment !== "number" || !(c.augment >= 0 && c.augment <= 1)) {
    bad(`augment must be a probability in [0, 1], got ${JSON.stringify(c.augment)}`);
  }
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
  "returnLogvar",
  "forceNormalization",
];

/** Values of fields that states written before the field existed hold implicitly. */
const FIELD_DEFAULTS: Partial<Record<keyof DistillConfig, unknown>> = {
  returnLogvar: false,
  forceNormalization: true,
};

/** The first algorithm-defining field on which two configurations differ, or null. */
export function configDifference(
  saved: DistillConfig,
  current: DistillConfig,
): { field: keyof DistillConfig; saved: unknown; current: unknown } | null {
  // States written before `augment` became a probability hold `false` for 0 (and `true` for an
  // x-flip-only augmentation that no probability reproduces).
  const value = (c: DistillConfig, k: keyof DistillConfig) =>
    k === "augment" && (c[k] as unknown) === false ? 0 : c[k] ?? FIELD_DEFAULTS[k];
  for (const k of STATE_DEFINING_FIELDS) {
    if (JSON.stringify(value(saved, k)) !== JSON.stringify(value(current, k))) {
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
  /** Statistics of w_n (docs/distillation.md §2.2) over the batch's kept samples. */
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
  /** EDM (or EDM2) kwargs of G (= G_ema) and of the fake net. */
  networks: { G: EdmKwargs | Record<string, unknown>; fake: EdmKwargs | Record<string, unknown> };
  /**
   * Tensors: `G.*`, `G_ema.*`, `fake.*` (state dicts, PyTorch layout) and `optG.*`, `optFake.*`
   * (Adam: `<param>.exp_avg`, `<param>.exp_avg_sq`, `<param>.step`).
   */
  tensors: Map<string, HostTensor>;
}

/** The networks a {@linkcode Distiller} distils: EDM's or EDM2's preconditioned U-Nets. */
export type DistillNetwork = EDMPrecond | EDM2Precond;

/** What {@linkcode Distiller} is built from. */
export interface DistillerInit {
  /**
   * The frozen teacher f_φ (never trained; its variables are never in a gradient list): an EDM
   * network, or an EDM2 one (then G and the fake net are EDM2 networks too).
   */
  teacher: DistillNetwork;
  /** Hyper-parameters (missing ones get the defaults of {@linkcode resolveDistillConfig}). */
  config?: Partial<DistillConfig> & { method?: DistillMethod };
  /**
   * Training data: real images for SiDA's discriminator and the labels of every network call
   * (docs/distillation.md §4.5). Required for SiDA and for a conditional teacher.
   */
  dataset?: ImageDataset;
  /**
   * SiD²A: a pre-distilled SiD generator that G and G_ema start from (docs/distillation.md §1.3);
   * same architecture as the teacher. The fake net still starts from the teacher.
   */
  initGenerator?: DistillNetwork;
  /**
   * A network the fake net starts from instead of the teacher, e.g. the fake score of the SiD run
   * that made `initGenerator` (its training state's `fake.*` tensors). Not the reference's SiD²A,
   * which starts the fake net from the teacher (docs/distillation.md §1.3); a setting of the
   * small-budget SiD²A sweep (bench/sid2a_sweep.ts). Same architecture as the teacher.
   */
  initFake?: DistillNetwork;
}

/** The teacher's configuration with another dropout (the structure, hence the names, is unchanged). */
function withDropout(config: NetworkConfig, dropout: number | null): NetworkConfig {
  if (dropout === null) return config;
  return { ...config, unet: { ...config.unet, dropout } };
}

/** A network's Python constructor kwargs (EDM's or EDM2's). */
function kwargsOf(n: DistillNetwork): EdmKwargs | Record<string, unknown> {
  return n instanceof EDM2Precond ? toEdm2Kwargs(n.config) : toEdmKwargs(n.config);
}

/** The EDM2 teacher's configuration with another dropout. */
function withEdm2Dropout(config: Edm2Config, dropout: number | null): Edm2Config {
  if (dropout === null) return config;
  return { ...config, unet: { ...config.unet, dropout } };
}

/** Configurations equal up to dropout and the fp16 flag (which do not change the weights). */
function sameArchitecture(a: DistillNetwork, b: DistillNetwork): boolean {
  const norm = (n: DistillNetwork) => {
    const c = n.config;
    const plain = { ...c, useFp16: false, unet: { ...c.unet, dropout: 0 } };
    return JSON.stringify(
      n instanceof EDM2Precond
        ? toEdm2Kwargs(plain as Edm2Config)
        : toEdmKwargs(plain as NetworkConfig),
    );
  };
  return (a instanceof EDM2Precond) === (b instanceof EDM2Precond) && norm(a) === norm(b);
}

function hostNormal(rng: RandomSource, shape: number[]): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(Float32Array.from(rng.normal(n)), shape, "float32");
}

/** Frees a fake-score round's draws. */
function disposeFakeDraws(d: FakeRoundDraws): void {
  tf.dispose([d.eps, d.xg, d.sigma, d.noise]);
  for (const a of [d.augFake, d.augReal]) if (a) tf.dispose([a.images, a.labels]);
  if (d.real) d.real.images.dispose();
  d.labels?.dispose();
}

async function read(t: tf.Tensor): Promise<Float32Array> {
  const v = await t.data() as Float32Array;
  t.dispose();
  return v;
}

/**
 * The warm-up gates of an iteration that starts at `curNimg` images (`sida_training_loop.py:410,
 * 425`; docs/distillation.md §3.6): G takes an optimizer step when `not use_gan or cur_nimg >
 * gWarmupNimg` (reference: 100 000), and the adversarial term enters G's loss when `use_gan and
 * cur_nimg > ganWarmupNimg` (reference: 200 000). A threshold of 0 opens its gate from the start.
 */
export function warmupGates(
  c: Pick<DistillConfig, "method" | "gWarmupNimg" | "ganWarmupNimg">,
  curNimg: number,
): { gStep: boolean; ganActive: boolean } {
  return {
    gStep: c.method === "sid" || c.gWarmupNimg <= 0 || curNimg > c.gWarmupNimg,
    ganActive: c.method === "sida" && (c.ganWarmupNimg <= 0 || curNimg > c.ganWarmupNimg),
  };
}

/**
 * Named scalars summed over accumulation rounds on the device (one read at the end of a phase,
 * not one per round): each round's values are stacked in `keys` order and added.
 */
class DeviceSums<K extends string> {
  #acc: tf.Tensor;
  constructor(readonly keys: readonly K[]) {
    this.#acc = tf.zeros([keys.length]);
  }

  /** A round's values as one kept tensor (call inside the round's tidy / variableGrads). */
  keep(values: Record<K, tf.Tensor>): tf.Tensor {
    return tf.keep(tf.stack(this.keys.map((k) => values[k])));
  }

  /** Adds a tensor from {@linkcode keep} (and disposes it). */
  add(round: tf.Tensor): void {
    const next = tf.add(this.#acc, round);
    this.#acc.dispose();
    round.dispose();
    this.#acc = next;
  }

  /** The sums by name (the device tensor is disposed). */
  async read(): Promise<Record<K, number>> {
    const v = await read(this.#acc);
    return Object.fromEntries(this.keys.map((k, i) => [k, v[i]])) as Record<K, number>;
  }
}

const FAKE_PHASE_SUMS = ["lossFake", "lossD", "bceReal", "bceFake", "kept"] as const;
type FakePhaseSum = typeof FAKE_PHASE_SUMS[number];
const GENERATOR_PHASE_SUMS = ["lossG", "lossGGan", "bceG", "kept"] as const;
type GeneratorPhaseSum = typeof GENERATOR_PHASE_SUMS[number];

/**
 * What the fake-score phase reports, summed over its rounds: `(ls/B)·Σ L_fake`, `(lsd/B)·Σ L_D`
 * (0 in SiD), the discriminator's BCE on reals and fakes (sums of the rounds' means) and the
 * samples kept by the NaN filter.
 */
export type FakeScorePhaseStats = Record<FakePhaseSum, number>;

/**
 * What the generator phase reports: its gates, `(lsg/B)·Σ L_SiD`, `(lsg_gan/B)·Σ L_GAN` and the
 * sum of the rounds' mean BCE_G (0 in SiD), the kept samples, and w_n of every kept sample.
 */
export interface GeneratorPhaseStats extends Record<GeneratorPhaseSum, number> {
  gStep: boolean;
  ganActive: boolean;
  weightFactors: number[];
}

/** One fake-score round's draws: data, labels, generator noise and output, σ, noise, flips. */
interface FakeRoundDraws {
  real: { images: tf.Tensor4D } | null;
  labels: tf.Tensor2D | undefined;
  eps: tf.Tensor4D;
  xg: tf.Tensor4D;
  sigma: tf.Tensor1D;
  noise: tf.Tensor;
  /** The augmented fakes and their labels (`augment` > 0). */
  augFake: { images: tf.Tensor4D; labels: tf.Tensor2D } | null;
  /** The augmented reals and their labels (SiDA, `augment` > 0). */
  augReal: { images: tf.Tensor4D; labels: tf.Tensor2D } | null;
}

/** One fake-score round's network inputs. */
interface FakeRoundInputs {
  /** The (augmented) generated images, the denoising target. */
  y: tf.Tensor4D;
  /** y + σ·n. */
  yNoisy: tf.Tensor4D;
  /** Augmentation labels of the fakes (a fake net with an augmentation embedding). */
  augFake?: tf.Tensor2D;
  /** The (augmented) real images + σ·n (SiDA). */
  realNoisy?: tf.Tensor4D;
  /** Augmentation labels of the reals. */
  augReal?: tf.Tensor2D;
}

/** A round's objective and its statistics (scalars, by name). */
interface RoundResult<K extends string> {
  objective: tf.Scalar;
  stats: Record<K, tf.Tensor>;
}

/** One generator round's draws. */
interface GeneratorRoundDraws {
  labels: tf.Tensor2D | undefined;
  eps: tf.Tensor4D;
  sigma: tf.Tensor1D;
  noise: tf.Tensor;
}

/** A generator round: objective, statistics and w_n (NaN for dropped samples). */
interface GeneratorRound extends RoundResult<GeneratorPhaseSum> {
  weightFactors: tf.Tensor;
}

/**
 * The SiD / SiDA / SiD²A trainer: owns G, G_ema, the fake net, both Adam optimizers, the EMA and
 * the data sampler, and runs iterations with {@linkcode Distiller.step}.
 */
export class Distiller {
  /** The resolved configuration. */
  readonly config: DistillConfig;
  /** The frozen teacher (the caller's network; not disposed by {@linkcode dispose}). */
  readonly teacher: DistillNetwork;
  /** The one-step generator G_θ. */
  readonly G: DistillNetwork;
  /** Its EMA copy (what snapshots and evaluation use). */
  readonly Gema: DistillNetwork;
  /** The fake score network f_ψ (its encoder is SiDA's discriminator). */
  readonly fake: DistillNetwork;
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
  /** The accumulation rounds `[start, end)` this process computes (all of them outside MPI). */
  readonly #myRounds: [number, number];
  /** EDM's augmentation pipe at the configured p, or null (`augment` 0). */
  readonly #augmentPipe: AugmentOptions | null;
  /** EDM2 with forced weight normalisation: renormalise G / the fake net after their steps. */
  readonly #renormalize: boolean;

  /**
   * Builds G, G_ema and the fake net from the teacher (or G and G_ema from `initGenerator` for
   * SiD²A; docs/distillation.md §1.3) and fresh optimizers.
   *
   * @throws RangeError on a bad configuration, data that do not fit the teacher, SiDA without
   *   data, or an initial generator of another architecture.
   */
  constructor(init: DistillerInit) {
    // A complete configuration (runDistillation's, resolved once) is taken as given, only
    // checked; a partial one gets the defaults here.
    let config: DistillConfig;
    if (isCompleteDistillConfig(init.config)) {
      validateDistillConfig(init.config);
      config = { ...init.config };
    } else {
      config = resolveDistillConfig(init.config);
    }
    this.config = config;
    const teacher = init.teacher;
    this.teacher = teacher;
    teacher.eval();
    const ds = init.dataset;
    const problem = ds
      ? dataMismatch(ds, networkShape(teacher))
      : config.method === "sida"
      ? "SiDA needs real training data (dataset)"
      : teacher.labelDim > 0
      ? "the teacher is conditional: labelled data are needed for its labels"
      : null;
    if (problem) throw new RangeError(problem);
    if (ds && config.method === "sida" && isLabelsOnly(ds)) {
      throw new RangeError("SiDA needs images: labels-only data serve SiD only");
    }
    const noAugment = augmentMismatch(config.augment, teacher.augmentDim);
    if (noAugment) throw new RangeError(noAugment);
    if (init.initGenerator && !sameArchitecture(init.initGenerator, teacher)) {
      throw new RangeError("the initial generator's architecture differs from the teacher's");
    }
    if (init.initFake && !sameArchitecture(init.initFake, teacher)) {
      throw new RangeError("the initial fake net's architecture differs from the teacher's");
    }
    const edm2 = teacher instanceof EDM2Precond;
    if (config.returnLogvar && !edm2) {
      throw new RangeError("returnLogvar needs an EDM2 teacher (EDM networks have no logvar head)");
    }
    this.#renormalize = edm2 && config.forceNormalization;
    this.dataset = ds;
    const clone = (src: DistillNetwork): DistillNetwork => {
      const net = teacher instanceof EDM2Precond
        ? createEdm2Network(withEdm2Dropout(teacher.config, config.dropout), { init: "zeros" })
        : createNetwork(withDropout(teacher.config, config.dropout), { init: "zeros" });
      net.copyFrom(src);
      return net.eval();
    };
    // §1.3: the fake net starts from the teacher, also in SiD²A (unless `initFake` is given); G
    // and G_ema from the teacher
    // (SiD, SiDA) or from the SiD generator (SiD²A).
    this.fake = clone(init.initFake ?? teacher);
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
    // Under MPI this rank computes a block of the rounds (lib/train/parallel.ts); checked here.
    const dp = dataParallel();
    this.#myRounds = roundRange(this.rounds, dp?.rank ?? 0, dp?.size ?? 1);
    this.#augmentPipe = config.augment > 0 ? edmAugmentOptions(config.augment) : null;
  }

  /** The learning rates the next iteration uses: the fake net's (`lr`) and G's (`glr`). */
  get learningRates(): { lr: number; glr: number } {
    return { lr: this.#optFake.lr, glr: this.#optG.lr };
  }

  /**
   * Changes the learning rates from the next iteration on: a schedule of the caller's, e.g. a
   * decay after the adversarial warm-up (the reference keeps both constant,
   * `sida_training_loop.py`). The training state records the configuration's rates, so a
   * resumed run starts from those and the caller applies its schedule again.
   *
   * @throws RangeError on a rate that is negative or not finite.
   */
  setLearningRates(rates: { lr?: number; glr?: number }): void {
    for (const [k, v] of Object.entries(rates)) {
      if (v !== undefined && !(Number.isFinite(v) && v >= 0)) {
        throw new RangeError(`${k} must be a finite number ≥ 0, got ${v}`);
      }
    }
    if (rates.lr !== undefined) this.#optFake.lr = rates.lr;
    if (rates.glr !== undefined) this.#optG.lr = rates.glr;
  }

  /** Images per iteration (the global batch B). */
  get batch(): number {
    return this.config.batch;
  }

  /** The network snapshots hold: the EMA generator. */
  snapshotNetwork(): DistillNetwork {
    return this.Gema;
  }

  /** Accumulation rounds R = batch / microBatch. */
  get rounds(): number {
    return this.config.batch / this.config.microBatch;
  }

  /**
   * Whether G steps in an iteration that starts at `curNimg` ({@linkcode warmupGates}:
   * `sida_training_loop.py:425`, `not use_gan or cur_nimg > 100 000`, configurable).
   */
  gStepEnabled(curNimg: number): boolean {
    return warmupGates(this.config, curNimg).gStep;
  }

  /**
   * Whether the adversarial term is in G's loss ({@linkcode warmupGates}:
   * `sida_training_loop.py:410`, `use_gan and cur_nimg > 200 000`, configurable).
   */
  ganTermActive(curNimg: number): boolean {
    return warmupGates(this.config, curNimg).ganActive;
  }

  /**
   * u(σ), the fake net's log-variance head (`[N, 1, 1, 1]`), when the configuration asks for it
   * (`returnLogvar`, EDM2 only); under a gradient tape for the fake net it trains the head.
   */
  #logvar(sigma: tf.Tensor1D): tf.Tensor | undefined {
    return this.config.returnLogvar ? (this.fake as EDM2Precond).logvar(sigma) : undefined;
  }

  /**
   * Real images of the dataset items `indices`: decoded images, or, for EDM2 latent data, a latent
   * drawn from each item's posterior (`LatentDataset.sample`, ε from the iteration's stream).
   */
  #realBatch(indices: number[], rng: RandomSource): { images: tf.Tensor4D; labels?: tf.Tensor2D } {
    const ds = this.dataset!;
    if (!isLatentDataset(ds)) return makeBatch(ds, indices);
    const { resolution: r, channels: c } = ds;
    const latents = ds.sample(indices, (n) => rng.normal(n));
    return { images: tf.tensor4d(latents, [indices.length, r, r, c], "float32") };
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

  /**
   * Runs one iteration and reports it: the three phases of the reference loop
   * (`sida_training_loop.py:340-440`), each a method below.
   *
   * | phase | here | reference |
   * | --- | --- | --- |
   * | fake-score (+ discriminator) update | {@linkcode Distiller.fakeScorePhase} | lines 342-384 |
   * | generator update | {@linkcode Distiller.generatorPhase} | lines 386-427 |
   * | EMA of G, `cur_nimg += batch` | {@linkcode Distiller.emaPhase} | lines 429-440 |
   *
   * Every host draw of the iteration comes from one stream seeded by (seed, iteration), in the
   * order: per fake-score round (ε, σ, noise, flips), then per generator round (ε, σ, noise).
   */
  async step(): Promise<IterationStats> {
    const curNimg = this.curNimg;
    const rng = seededRandom(mixSeed(this.config.seed, this.iteration));
    const t0 = performance.now();
    const fake = await this.fakeScorePhase(rng);
    const t1 = performance.now();
    const gen = await this.generatorPhase(rng, curNimg);
    const t2 = performance.now();
    const emaBeta = this.emaPhase(curNimg);
    const t3 = performance.now();
    const sida = this.config.method === "sida";
    const R = this.rounds;
    const w = gen.weightFactors;
    return {
      iteration: this.iteration - 1,
      curNimg,
      nimg: this.curNimg,
      gStep: gen.gStep,
      ganActive: gen.ganActive,
      emaBeta,
      lossFake: fake.lossFake,
      lossD: sida ? fake.lossD : null,
      bceReal: sida ? fake.bceReal / R : null,
      bceFake: sida ? fake.bceFake / R : null,
      lossG: gen.lossG,
      lossGGan: sida ? gen.lossGGan : null,
      bceG: sida ? gen.bceG / R : null,
      weightFactor: {
        mean: w.length ? w.reduce((acc, v) => acc + v, 0) / w.length : NaN,
        min: w.length ? Math.min(...w) : NaN,
        max: w.length ? Math.max(...w) : NaN,
      },
      keptFake: fake.kept,
      keptG: gen.kept,
      timings: {
        stepA: (t1 - t0) / 1000,
        stepB: (t2 - t1) / 1000,
        ema: (t3 - t2) / 1000,
        total: (t3 - t0) / 1000,
      },
    };
  }

  /**
   * Phase 1, the fake score network f_ψ (and, in SiDA, the discriminator that shares its encoder)
   * takes one Adam step (`sida_training_loop.py:342-384`; docs/distillation.md §3.2 for
   * L_fake, §3.4 for L_D). f_ψ is in train mode, G in eval mode without gradient. Over
   * R = batch / microBatch rounds: real images from the data (SiDA), x_g = G(σ_init·z),
   * EDM's augmentation of fakes and reals, independently (`--augment p`), the round objective
   * `(ls/B)·Σ L_fake (+ (lsd/B)·Σ L_D)`, gradients summed; then nan_to_num, the ±1 value clip
   * (SiDA), one Adam step.
   */
  async fakeScorePhase(rng: RandomSource): Promise<FakeScorePhaseStats> {
    const c = this.config;
    const sida = c.method === "sida";
    const fakeVars = this.fake.namedParameters().map(([, v]) => v);
    const grads: NamedTensorMap = {};
    const sums = new DeviceSums(FAKE_PHASE_SUMS);
    const [r0, r1] = this.#myRounds;
    for (let r = 0; r < this.rounds; r++) {
      // Under MPI, another rank's round: its draws are made (and dropped) all the same, so that
      // every rank's stream and data order stay the one-process ones (lib/train/parallel.ts).
      if (r < r0 || r >= r1) {
        disposeFakeDraws(this.#drawFakeRound(rng, false));
        continue;
      }
      const draws = this.#drawFakeRound(rng);
      const inputs = this.#fakeRoundInputs(draws);
      let kept: tf.Tensor | undefined;
      // Dropout masks seeded by (seed, iteration, round, phase 1).
      const { value, grads: g } = withDropoutSeed(
        mixSeed(c.seed, this.iteration, r, 3),
        () =>
          tf.variableGrads(() => {
            const round = sida
              ? this.#fakeDiscriminatorRound(inputs, draws)
              : this.#fakeScoreRound(inputs, draws);
            kept = sums.keep(round.stats);
            return round.objective;
          }, fakeVars),
      );
      value.dispose();
      accumulateGradients(grads, g);
      sums.add(kept!);
      tf.dispose(Object.values(inputs));
      disposeFakeDraws(draws);
    }
    // Summed over MPI ranks, then nan_to_num, then (SiDA, EDM path) clip every element to
    // [−1, 1]; one Adam step (sida_training_loop.py:376-383).
    const summed = await allreduceGradients(grads, fakeVars);
    const clean = sanitizeGradients(summed, {
      clipValue: c.fakeGradClip === null ? undefined : c.fakeGradClip,
    });
    this.#optFake.step(clean);
    disposeGradients(clean);
    if (this.#renormalize) (this.fake as EDM2Precond).renormalize();
    return allreduceSums(await sums.read());
  }

  /** One fake-score round's host draws, in the reference order (`sida_training_loop.py:348-353`). */
  #drawFakeRound(rng: RandomSource, compute = true): FakeRoundDraws {
    const c = this.config;
    const b = c.microBatch;
    const sida = c.method === "sida";
    const [res, ch] = [this.teacher.imgResolution, this.teacher.imgChannels];
    const indices = this.#sampler ? this.#sampler.next(b) : null;
    const real = sida && this.dataset ? this.#realBatch(indices!, rng) : null;
    real?.labels?.dispose(); // labels come from #labels (none for an unconditional teacher)
    const labels = this.#labels(indices);
    const eps = generatorNoise(this.G, b, rng);
    // G in eval mode, no gradient (not under variableGrads); a round left to another MPI rank
    // (`compute` false) makes the same draws around zeros.
    const xg = compute
      ? generate(this.G, eps, { labels, initSigma: c.initSigma })
      : tf.zeros(eps.shape) as tf.Tensor4D;
    const sigma = sampleFakeSigma(b, rng, { pMean: c.pMean, pStd: c.pStd });
    const noise = hostNormal(rng, [b, res, res, ch]);
    // The augmentation pipe on the fakes, then independently on the reals (sida_loss.py:85, 94).
    const pipe = this.#augmentPipe;
    const augFake = pipe ? augment(xg, pipe, augmentRandomFrom(rng)) : null;
    const augReal = pipe && real ? augment(real.images, pipe, augmentRandomFrom(rng)) : null;
    return { real, labels, eps, xg, sigma, noise, augFake, augReal };
  }

  /**
   * The fake-score round's network inputs: y = x_g (augmented), y + σ·n, and the (augmented) real
   * images + σ·n (SiDA), same σ and n (`sida_loss.py:85-96`), with their augmentation labels
   * (zeros without augmentation) when the fake net has an augmentation embedding.
   */
  #fakeRoundInputs(d: FakeRoundDraws): FakeRoundInputs {
    const b = this.config.microBatch;
    const aDim = this.fake.augmentDim;
    return tf.tidy(() => {
      const s4 = tf.reshape(d.sigma, [b, 1, 1, 1]);
      const n = tf.mul(d.noise, s4);
      const y = tf.clone(d.augFake ? d.augFake.images : d.xg) as tf.Tensor4D;
      const out: FakeRoundInputs = { y, yNoisy: tf.add(y, n) as tf.Tensor4D };
      if (aDim > 0) {
        out.augFake = d.augFake ? tf.clone(d.augFake.labels) : tf.zeros([b, aDim]);
      }
      if (d.real) {
        const xr = d.augReal ? d.augReal.images : d.real.images;
        out.realNoisy = tf.add(xr, n) as tf.Tensor4D;
        if (aDim > 0) {
          out.augReal = d.augReal ? tf.clone(d.augReal.labels) : tf.zeros([b, aDim]);
        }
      }
      return out as unknown as tf.TensorContainerObject;
    }) as unknown as FakeRoundInputs;
  }

  /** Plain SiD's fake-score round: `(ls/B)·Σ L_fake` (docs/distillation.md §3.2, §3.7). */
  #fakeScoreRound(x: FakeRoundInputs, d: FakeRoundDraws): RoundResult<FakePhaseSum> {
    const c = this.config;
    const denoised = this.fake.denoise(x.yNoisy, d.sigma, {
      labels: d.labels,
      augmentLabels: x.augFake,
      training: true,
    });
    const l = fakeScoreLoss({ x: x.y, denoised, sigma: d.sigma, logvar: this.#logvar(d.sigma) });
    return {
      objective: fakeStepObjective({ fake: l.loss, ls: c.ls, batchTotal: c.batch }),
      stats: {
        lossFake: tf.mul(l.loss, c.ls / c.batch),
        lossD: tf.scalar(0),
        bceReal: tf.scalar(0),
        bceFake: tf.scalar(0),
        kept: tf.sum(tf.cast(l.keep, "float32")),
      },
    };
  }

  /**
   * SiDA's fake-score + discriminator round (`sida_loss.py` `fakescore_discriminator_share_encoder
   * _loss`): the fake net in train mode on the noisy fakes with `encoder_decoder` (denoised
   * images and logits) and on the noisy reals with `encoder` (logits), same σ, noise and labels;
   * `(ls/B)·Σ L_fake + (lsd/B)·Σ L_D` (docs/distillation.md §3.4).
   */
  #fakeDiscriminatorRound(x: FakeRoundInputs, d: FakeRoundDraws): RoundResult<FakePhaseSum> {
    const c = this.config;
    const o = this.fake.denoise(x.yNoisy, d.sigma, {
      labels: d.labels,
      augmentLabels: x.augFake,
      returnFlag: "encoder_decoder",
      training: true,
    });
    const logitsReal = this.fake.denoise(x.realNoisy!, d.sigma, {
      labels: d.labels,
      augmentLabels: x.augReal,
      returnFlag: "encoder",
      training: true,
    });
    const l = fakeScoreDiscriminatorLoss({
      x: x.y,
      denoised: o.denoised,
      logitsFake: o.logits,
      logitsReal,
      sigma: d.sigma,
      logvar: this.#logvar(d.sigma),
    });
    return {
      objective: fakeStepObjective({
        fake: l.fake.loss,
        disc: l.disc.loss,
        ls: c.ls,
        lsd: c.lsd,
        batchTotal: c.batch,
      }),
      stats: {
        lossFake: tf.mul(l.fake.loss, c.ls / c.batch),
        lossD: tf.mul(l.disc.loss, c.lsd / c.batch),
        bceReal: l.disc.bceReal,
        bceFake: l.disc.bceFake,
        kept: tf.sum(tf.cast(l.keep, "float32")),
      },
    };
  }

  /**
   * Phase 2, the generator G_θ (`sida_training_loop.py:386-427`; docs/distillation.md §3.1
   * for the SiD loss with α, §3.5 for the adversarial term, §3.6 for their ½/½ mix). G in
   * train mode; the teacher and the fake net in eval mode, frozen, with gradients flowing
   * through them into x_g. Over R rounds: `(lsg/B)·Σ L_SiD`, mixed ½/½ with `(lsg_gan/B)·Σ
   * L_GAN` once the GAN warm-up has passed; gradients summed, nan_to_num, and an Adam step only
   * when the generator warm-up gate is open ({@linkcode warmupGates}).
   */
  async generatorPhase(rng: RandomSource, curNimg: number): Promise<GeneratorPhaseStats> {
    const c = this.config;
    const { gStep, ganActive } = warmupGates(c, curNimg);
    const gVars = this.G.namedParameters().map(([, v]) => v);
    const grads: NamedTensorMap = {};
    const sums = new DeviceSums(GENERATOR_PHASE_SUMS);
    const wAll: tf.Tensor[] = [];
    const [r0, r1] = this.#myRounds;
    for (let r = 0; r < this.rounds; r++) {
      const draws = this.#drawGeneratorRound(rng);
      if (r < r0 || r >= r1) {
        // Another MPI rank's round: drawn all the same (see fakeScorePhase).
        tf.dispose([draws.eps, draws.sigma, draws.noise, ...(draws.labels ? [draws.labels] : [])]);
        continue;
      }
      const held: { stats?: tf.Tensor; w?: tf.Tensor } = {};
      const objective = (): tf.Scalar => {
        const round = this.#generatorRound(draws, ganActive);
        held.stats = sums.keep(round.stats);
        held.w = tf.keep(round.weightFactors);
        return round.objective;
      };
      // Dropout masks (G in train mode) seeded by (seed, iteration, round, phase 2).
      const seeded = <T>(fn: () => T) => withDropoutSeed(mixSeed(c.seed, this.iteration, r, 4), fn);
      if (gStep) {
        const { value, grads: g } = seeded(() => tf.variableGrads(objective, gVars));
        value.dispose();
        accumulateGradients(grads, g);
      } else {
        // Gate closed: the loss is computed (and reported) but no gradient is needed.
        seeded(() => tf.tidy(objective)).dispose();
      }
      sums.add(held.stats!);
      wAll.push(held.w!);
      tf.dispose([draws.eps, draws.sigma, draws.noise, ...(draws.labels ? [draws.labels] : [])]);
    }
    if (gStep) {
      // Summed over MPI ranks, nan_to_num on G's gradients (no clipping for G), then the Adam
      // step (sida_training_loop.py:422-426).
      const clean = sanitizeGradients(await allreduceGradients(grads, gVars));
      this.#optG.step(clean);
      disposeGradients(clean);
      if (this.#renormalize) (this.G as EDM2Precond).renormalize();
    } else {
      disposeGradients(grads);
    }
    const stats = allreduceSums(await sums.read());
    const weightFactors = allgatherNumbers(
      Array.from(await read(tf.concat(wAll))).filter((v) => !Number.isNaN(v)),
    );
    tf.dispose(wAll);
    return { ...stats, gStep, ganActive, weightFactors };
  }

  /**
   * One generator round's host draws (`sida_training_loop.py:391-395`: the data's images are
   * drawn and discarded, only their labels are used).
   */
  #drawGeneratorRound(rng: RandomSource): GeneratorRoundDraws {
    const c = this.config;
    const b = c.microBatch;
    const [res, ch] = [this.teacher.imgResolution, this.teacher.imgChannels];
    const indices = this.#sampler ? this.#sampler.next(b) : null;
    const labels = this.#labels(indices);
    const eps = generatorNoise(this.G, b, rng);
    const sigma = sampleGeneratorSigma(b, rng, { tmax: c.tmax });
    const noise = hostNormal(rng, [b, res, res, ch]);
    return { labels, eps, sigma, noise };
  }

  /**
   * The generator round's objective (`sida_loss.py` `generator_loss` /
   * `generator_share_encoder_loss`): x_g = G(σ_init·z) in train mode, x_t = x_g + σ_t·n, the
   * teacher's and the fake net's denoised images (and, SiDA, the fake net's logits), the SiD
   * loss, the adversarial loss, their combination.
   */
  #generatorRound(d: GeneratorRoundDraws, ganActive: boolean): GeneratorRound {
    const c = this.config;
    const b = c.microBatch;
    const sida = c.method === "sida";
    const [res, ch] = [this.teacher.imgResolution, this.teacher.imgChannels];
    const { labels, sigma } = d;
    const xg = generate(this.G, d.eps, { labels, initSigma: c.initSigma, training: true });
    const xt = tf.add(xg, tf.mul(d.noise, tf.reshape(sigma, [b, 1, 1, 1]))) as tf.Tensor4D;
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
    // EDM2 with logvar: u from the fake net, not the teacher (sida_loss_edm2.py:234-238).
    const logvar = this.#logvar(sigma);
    const sid = sidGeneratorLoss({ xg, yReal, yFake, alpha: c.alpha, logvar });
    const gan = logits
      ? sidaGeneratorAdversarialLoss({
        logits,
        weightFactor: sid.weightFactor,
        chw: res * res * ch,
        keep: sid.keep,
        logvar,
      })
      : null;
    return {
      objective: generatorObjective({
        sid: sid.loss,
        gan: gan?.loss,
        lsg: c.lsg,
        lsgGan: c.lsgGan,
        batchTotal: c.batch,
        ganActive,
      }),
      stats: {
        lossG: tf.mul(sid.loss, c.lsg / c.batch),
        lossGGan: gan ? tf.mul(gan.loss, c.lsgGan / c.batch) : tf.scalar(0),
        bceG: gan ? gan.bce : tf.scalar(0),
        kept: tf.sum(tf.cast(sid.keep, "float32")),
      },
      // w_n of the kept samples (dropped ones are marked NaN and skipped in the statistics).
      weightFactors: tf.where(sid.keep, sid.weightFactor, tf.fill([b], NaN)),
    };
  }

  /**
   * Phase 3, the EMA of G (`sida_training_loop.py:429-437`): β from the half-life and its
   * ramp-up at the images seen before this iteration; then `cur_nimg += batch` (line 440).
   * Returns β.
   */
  emaPhase(curNimg: number): number {
    const beta = this.#ema.update(curNimg);
    this.curNimg += this.config.batch;
    this.iteration += 1;
    return beta;
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
      networks: { G: kwargsOf(this.G), fake: kwargsOf(this.fake) },
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
