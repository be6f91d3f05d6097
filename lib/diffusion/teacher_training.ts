/**
 * Training an EDM teacher: `deno task teacher` and {@linkcode trainTeacher}.
 *
 * The loop follows NVlabs/edm `training/training_loop.py`, one iteration at a time:
 *
 * 1. `batch` images from a seeded {@linkcode InfiniteSampler} (optionally x-flipped with
 *    probability ½ each — off by default: digits are not symmetric), in `batch / microBatch`
 *    accumulation rounds (EDM's `batch_gpu`).
 * 2. The EDM loss ({@linkcode edmLoss}: σ = exp(P_mean + P_std·ξ), P_mean −1.2, P_std 1.2,
 *    λ(σ) = (σ² + σ_d²)/(σ·σ_d)², σ_d = the network's σ_data, 0.5), summed over pixels and
 *    samples and scaled by 1/batch, as EDM's `loss.sum().mul(1 / batch_gpu_total)`.
 * 3. Learning rate `lr · min(cur_nimg / max(lr_rampup_kimg·1000, 1e-8), 1)` — zero in the very
 *    first iteration, as in EDM.
 * 4. `nan_to_num(grad, nan=0, posinf=1e5, neginf=−1e5)` on every gradient, then Adam
 *    (β = (0.9, 0.999), eps 1e-8, `torch.optim.Adam` semantics, {@linkcode Adam}).
 * 5. EMA of the parameters: `h = min(ema_halflife_kimg·1000, cur_nimg·ema_rampup_ratio)`,
 *    `β = 0.5^(batch / max(h, 1e-8))` ({@linkcode emaBeta}); `cur_nimg` counts the images seen
 *    before the iteration, so the first iteration copies the network.
 * 6. `cur_nimg += batch`.
 *
 * Defaults for MNIST on a CPU ({@linkcode TEACHER_DEFAULTS}; ours, EDM's CIFAR values in
 * brackets): batch 64 [512], lr 1e-3 [1e-3], lr ramp-up 10 kimg [10 Mimg], EMA half-life 50 kimg
 * [500 kimg] with ramp-up ratio 0.05 [0.05], the network preset's dropout (0.10 for `mnist`
 * [0.13]), no x-flips [off], 200 kimg [200 Mimg]; tick 1 kimg, a snapshot every 20 kimg, a
 * training state every 5 kimg.
 *
 * Determinism: every random draw — data order, σ, noise, flips and the dropout masks — is seeded
 * by (seed, iteration), so a run resumed from its training state continues bit-identically.
 * (The dropout masks of each forward pass are seeded by `withDropoutSeed` of `lib/nets/layers.ts`.)
 *
 * A run folder holds
 *
 * - `training-state-<kimg>.safetensors`: `net.*`, `ema.*` (state dicts, PyTorch layout) and
 *   `opt.*` (Adam: `<param>.exp_avg`, `<param>.exp_avg_sq`, `<param>.step`); in `__metadata__`
 *   `format` (`sida-teacher-state/1`), `run` ({@linkcode TeacherRunInfo} as JSON), `counters`
 *   (`{curNimg, iteration, elapsedSec, loss}`), `sampler`. Written atomically; only the latest
 *   is kept.
 * - `network-snapshot-<kimg>.safetensors`: the EMA network (`saveNetwork`, loadable with
 *   `loadNetwork`, usable as `--teacher` of `deno task sid`).
 * - `log.jsonl`: one JSON object per tick.
 *
 * @example
 * ```ts
 * import { trainTeacher } from "./teacher_training.ts";
 * const r = await trainTeacher({ out: "runs/teacher", kimg: 1, export: "teacher.safetensors" });
 * console.log(r.curNimg, r.loss, r.exportPath);
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { NamedTensorMap } from "../deps.ts";
import type { ImageDataset } from "../data/dataset.ts";
import { loadTrainingData } from "../train/data.ts";
import { InfiniteSampler, makeBatch, type SamplerState } from "../data/sampler.ts";
import { dataMismatch, networkShape } from "../data/fit.ts";
import { mixSeed, seededRandom } from "../runtime/random.ts";
import { Ema, emaBeta } from "../train/ema.ts";
import { accumulateGradients, sanitizeGradients } from "../train/gradients.ts";
import {
  allreduceGradients,
  allreduceSums,
  dataParallel,
  isWriter,
  roundRange,
} from "../train/parallel.ts";
import { Adam } from "../train/optim.ts";
import { runTraining, type TrainingKind, withInterrupt } from "../train/driver.ts";
import {
  kimgLabel,
  readStateFile,
  type StateFile,
  stateJson,
  writeStateFile,
} from "../train/run_folder.ts";
import { IoError } from "../io/host_tensor.ts";
import type { HostTensor } from "../io/host_tensor.ts";
import {
  type EdmKwargs,
  fromEdmKwargs,
  type NetworkConfig,
  type NetworkConfigInput,
  PRESET_NAMES,
  resolveConfig,
  toEdmKwargs,
} from "../nets/config.ts";
import { createNetwork, preset, saveNetwork } from "../nets/network.ts";
import type { EDMPrecond } from "../nets/precond.ts";
import { BACKEND_NAMES, describeBackend } from "../runtime/backend.ts";
import {
  checkBackendName,
  ensureBackend,
  numberFlag,
  parseFlags,
  positiveOption,
  UsageError,
} from "../runtime/cli.ts";
import { withDropoutSeed } from "../nets/layers.ts";
import { edmLoss } from "./edm_loss.ts";

/** The format tag of teacher training states. */
export const TEACHER_STATE_FORMAT = "sida-teacher-state/1";

/** Hyper-parameters of teacher training (the network's own, e.g. dropout, live in its config). */
export interface TeacherConfig {
  /** Images per iteration (EDM `--batch`). */
  batch: number;
  /** Images per accumulation round (EDM `--batch-gpu`); must divide `batch`. */
  microBatch: number;
  /** Peak learning rate (EDM `--lr`). */
  lr: number;
  /** Learning-rate ramp-up length in kimg (EDM `lr_rampup_kimg`). */
  lrRampupKimg: number;
  /** Adam β1 (EDM: 0.9). */
  beta1: number;
  /** Adam β2 (EDM: 0.999). */
  beta2: number;
  /** Adam eps (EDM: 1e-8). */
  eps: number;
  /** EMA half-life in kimg (EDM `ema_halflife_kimg` = `--ema` × 1000). */
  emaHalflifeKimg: number;
  /** EMA ramp-up ratio (EDM `ema_rampup_ratio`: 0.05), or null for none. */
  emaRampupRatio: number | null;
  /** Log-normal location of the training σ (EDM: −1.2). */
  pMean: number;
  /** Log-normal scale of the training σ (EDM: 1.2). */
  pStd: number;
  /** Mirror each training image left–right with probability ½ (EDM `--xflip`). */
  xflip: boolean;
  /** Seed of the initial weights and of every random draw. */
  seed: number;
}

/** The defaults: small-scale MNIST-on-CPU values (see the module doc for EDM's). */
export const TEACHER_DEFAULTS: Readonly<TeacherConfig> = Object.freeze({
  batch: 64,
  microBatch: 64,
  lr: 1e-3,
  lrRampupKimg: 10,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  emaHalflifeKimg: 50,
  emaRampupRatio: 0.05,
  pMean: -1.2,
  pStd: 1.2,
  xflip: false,
  seed: 0,
});

/** Default run length and cadence, in kimg. */
export const TEACHER_CADENCE: Readonly<
  { kimg: number; tickKimg: number; snapKimg: number; dumpKimg: number }
> = Object.freeze({ kimg: 200, tickKimg: 1, snapKimg: 20, dumpKimg: 5 });

/**
 * A complete {@linkcode TeacherConfig}: {@linkcode TEACHER_DEFAULTS} with the defined entries of
 * `overrides` on top (`microBatch` defaults to the batch).
 *
 * @throws RangeError naming the first bad value.
 */
export function resolveTeacherConfig(overrides: Partial<TeacherConfig> = {}): TeacherConfig {
  const defined = Object.fromEntries(
    Object.entries(overrides).filter(([, v]) => v !== undefined),
  ) as Partial<TeacherConfig>;
  const c: TeacherConfig = {
    ...TEACHER_DEFAULTS,
    ...defined,
    microBatch: defined.microBatch ?? defined.batch ?? TEACHER_DEFAULTS.batch,
  };
  const bad = (what: string): never => {
    throw new RangeError(what);
  };
  for (const k of ["batch", "microBatch"] as const) {
    if (!Number.isInteger(c[k]) || c[k] < 1) bad(`${k} must be a positive integer, got ${c[k]}`);
  }
  if (c.batch % c.microBatch !== 0) {
    bad(`batch ${c.batch} is not a multiple of the micro-batch ${c.microBatch}`);
  }
  const finite = (k: keyof TeacherConfig, min: number, open: boolean) => {
    const v = c[k] as number;
    if (typeof v !== "number" || !Number.isFinite(v) || v < min || (open && v === min)) {
      bad(`${k} must be ${open ? ">" : "≥"} ${min}, got ${v}`);
    }
  };
  finite("lr", 0, true);
  finite("lrRampupKimg", 0, false);
  finite("eps", 0, true);
  finite("emaHalflifeKimg", 0, false);
  finite("pStd", 0, true);
  if (!Number.isFinite(c.pMean)) bad(`pMean must be a number, got ${c.pMean}`);
  for (const k of ["beta1", "beta2"] as const) {
    if (!(c[k] >= 0 && c[k] < 1)) bad(`${k} must be in [0, 1), got ${c[k]}`);
  }
  if (c.emaRampupRatio !== null && !(c.emaRampupRatio > 0 && Number.isFinite(c.emaRampupRatio))) {
    bad(`emaRampupRatio must be > 0 or null, got ${c.emaRampupRatio}`);
  }
  if (typeof c.xflip !== "boolean") bad(`xflip must be a boolean`);
  if (!Number.isSafeInteger(c.seed) || c.seed < 0 || c.seed > 0xffffffff) {
    bad(`seed must be an integer in [0, 2^32), got ${c.seed}`);
  }
  return c;
}

/**
 * The fields a saved run must share with the current settings to be continued. The learning
 * rate, its ramp-up, the EMA settings and the micro-batch (memory only) may change between
 * sessions (the run then no longer matches an uninterrupted one, of course).
 */
export const TEACHER_STATE_DEFINING_FIELDS: readonly (keyof TeacherConfig)[] = [
  "batch",
  "beta1",
  "beta2",
  "eps",
  "pMean",
  "pStd",
  "xflip",
  "seed",
];

/**
 * EDM's learning rate for an iteration that starts at `curNimg` images:
 * `lr · min(cur_nimg / max(lr_rampup_kimg·1000, 1e-8), 1)`.
 *
 * @example
 * ```ts
 * import { teacherLearningRate } from "./teacher_training.ts";
 * teacherLearningRate(5000, { lr: 1e-3, lrRampupKimg: 10 }); // 5e-4
 * ```
 */
export function teacherLearningRate(
  curNimg: number,
  c: Pick<TeacherConfig, "lr" | "lrRampupKimg">,
): number {
  return c.lr * Math.min(curNimg / Math.max(c.lrRampupKimg * 1000, 1e-8), 1);
}

/**
 * EDM's EMA decay for an iteration that starts at `curNimg` images ({@linkcode emaBeta} with the
 * teacher's settings): `h = min(halflife·1000, cur_nimg·ratio)`, `β = 0.5^(batch / max(h, 1e-8))`.
 */
export function teacherEmaBeta(
  curNimg: number,
  c: Pick<TeacherConfig, "batch" | "emaHalflifeKimg" | "emaRampupRatio">,
): number {
  return emaBeta({
    curNimg,
    batchSize: c.batch,
    halflifeKimg: c.emaHalflifeKimg,
    rampupRatio: c.emaRampupRatio,
  });
}

/** What {@linkcode TeacherTrainer.step} reports about one iteration. */
export interface TeacherStepStats {
  /** Index of the iteration (0 for the first of the run). */
  iteration: number;
  /** Images seen before it (EDM `cur_nimg` of the lr and EMA rules). */
  curNimg: number;
  /** Images seen after it. */
  nimg: number;
  /**
   * EDM's `Loss/loss`: the λ(σ)-weighted squared error averaged over the batch's pixels (the
   * optimised objective divided by H·W·C).
   */
  loss: number;
  /** The learning rate of this iteration's Adam step. */
  lr: number;
  /** The EMA β of this iteration. */
  emaBeta: number;
  /** Wall-clock seconds of the iteration. */
  seconds: number;
}

/** Everything needed to resume (see {@linkcode TeacherTrainer.state}). */
export interface TeacherState {
  /** The configuration the state was made with. */
  config: TeacherConfig;
  /** EDM kwargs of the network. */
  network: EdmKwargs;
  /** Images seen. */
  curNimg: number;
  /** Iterations done. */
  iteration: number;
  /** The data sampler's position. */
  sampler: SamplerState;
  /** `net.*`, `ema.*` (PyTorch layout) and `opt.*` (Adam state). */
  tensors: Map<string, HostTensor>;
}

/** What {@linkcode TeacherTrainer} is built from. */
export interface TeacherTrainerInit {
  /** The network to train (with its dropout), e.g. `preset("mnist")`. */
  network: NetworkConfig | NetworkConfigInput;
  /** The training images (labelled when the network is conditional). */
  dataset: ImageDataset;
  /** Hyper-parameters over {@linkcode TEACHER_DEFAULTS}. */
  config?: Partial<TeacherConfig>;
}

async function read(t: tf.Tensor): Promise<Float32Array> {
  const v = await t.data() as Float32Array;
  t.dispose();
  return v;
}

/**
 * The EDM teacher trainer: owns the network, its EMA copy, Adam and the data sampler, and runs
 * iterations with {@linkcode TeacherTrainer.step} (see the module doc for what one does).
 */
export class TeacherTrainer {
  /** The resolved configuration. */
  readonly config: TeacherConfig;
  /** The trained network. */
  readonly net: EDMPrecond;
  /** Its EMA (what snapshots and the export hold). */
  readonly ema: EDMPrecond;
  /** The training data. */
  readonly dataset: ImageDataset;
  /** Images seen so far. */
  curNimg = 0;
  /** Iterations done so far. */
  iteration = 0;
  readonly #opt: Adam;
  readonly #ema: Ema;
  #sampler: InfiniteSampler;

  /**
   * Builds the network (EDM initialisation seeded by `config.seed`), its EMA copy and a fresh
   * optimizer.
   *
   * @throws RangeError on a bad configuration or data that do not fit the network.
   */
  constructor(init: TeacherTrainerInit) {
    const config = resolveTeacherConfig(init.config);
    const netConfig = resolveConfig(init.network as NetworkConfigInput);
    const ds = init.dataset;
    const problem = teacherDataMismatch(ds, netConfig);
    if (problem) throw new RangeError(problem);
    // Under MPI: every rank must get whole micro-batches (lib/train/parallel.ts).
    const dp = dataParallel();
    roundRange(config.batch / config.microBatch, dp?.rank ?? 0, dp?.size ?? 1);
    this.config = config;
    this.dataset = ds;
    this.net = createNetwork(netConfig, { seed: config.seed });
    this.ema = createNetwork(netConfig, { init: "zeros" });
    this.ema.copyFrom(this.net);
    this.ema.eval();
    this.#opt = new Adam(this.net.namedParameters(), {
      lr: config.lr,
      beta1: config.beta1,
      beta2: config.beta2,
      eps: config.eps,
    });
    this.#ema = new Ema(this.ema, this.net, {
      halflifeKimg: config.emaHalflifeKimg,
      batchSize: config.batch,
      rampupRatio: config.emaRampupRatio,
    });
    this.#sampler = new InfiniteSampler(ds.size, config.seed);
  }

  /** Images per iteration. */
  get batch(): number {
    return this.config.batch;
  }

  /** The network snapshots and the export hold: the EMA network. */
  snapshotNetwork(): EDMPrecond {
    return this.ema;
  }

  /** Runs one iteration (see the module doc) and reports it. */
  async step(): Promise<TeacherStepStats> {
    const c = this.config;
    const t0 = performance.now();
    const B = c.batch;
    const b = c.microBatch;
    const net = this.net;
    const [res, ch] = [net.imgResolution, net.imgChannels];
    const pixels = res * res * ch;
    const curNimg = this.curNimg;
    const it = this.iteration;
    const indices = this.#sampler.next(B);
    const rng = seededRandom(mixSeed(c.seed, it));
    const sigmas = Float32Array.from(rng.normal(B), (xi) => Math.exp(c.pMean + c.pStd * xi));
    const noise = Float32Array.from(rng.normal(B * pixels));
    const vars = net.namedParameters().map(([, v]) => v);
    const acc: NamedTensorMap = {};
    let lossAcc: tf.Tensor = tf.scalar(0);
    // Under MPI this rank computes its block of the rounds; every draw above is the whole
    // batch's, so the shards are disjoint and the sum over ranks is one process's
    // (lib/train/parallel.ts).
    const dp = dataParallel();
    const [r0, r1] = roundRange(B / b, dp?.rank ?? 0, dp?.size ?? 1);
    for (let r = r0; r < r1; r++) {
      const batch = makeBatch(this.dataset, indices.slice(r * b, (r + 1) * b), {
        xflip: c.xflip,
        seed: mixSeed(c.seed, it, r, 1),
      });
      let labels = batch.labels;
      if (labels && net.labelDim === 0) {
        labels.dispose();
        labels = undefined;
      }
      const sigma = tf.tensor1d(sigmas.subarray(r * b, (r + 1) * b), "float32");
      const eps = tf.tensor4d(noise.subarray(r * b * pixels, (r + 1) * b * pixels), [
        b,
        res,
        res,
        ch,
      ]);
      const { value, grads } = withDropoutSeed(
        mixSeed(c.seed, it, r, 2),
        () =>
          tf.variableGrads(() => {
            const { loss } = edmLoss(net, batch.images, {
              labels,
              sigma,
              noise: eps,
              pMean: c.pMean,
              pStd: c.pStd,
              sigmaData: net.sigmaData,
              training: true,
            });
            // EDM: loss.sum().mul(1 / batch_gpu_total) over every round.
            return tf.mul(loss, b / B) as tf.Scalar;
          }, vars),
      );
      accumulateGradients(acc, grads);
      const next = tf.add(lossAcc, value);
      lossAcc.dispose();
      value.dispose();
      lossAcc = next;
      tf.dispose([batch.images, sigma, eps, ...(labels ? [labels] : [])]);
    }
    const lr = teacherLearningRate(curNimg, c);
    this.#opt.lr = lr;
    const summed = await allreduceGradients(acc, vars, dp);
    const clean = sanitizeGradients(summed); // nan=0, ±inf=±1e5, as EDM
    this.#opt.step(clean);
    for (const g of Object.values(clean)) g.dispose();
    const beta = this.#ema.update(curNimg);
    this.curNimg += B;
    this.iteration += 1;
    const objective = allreduceSums({ loss: (await read(lossAcc))[0] }, dp).loss;
    return {
      iteration: it,
      curNimg,
      nimg: this.curNimg,
      loss: objective / pixels,
      lr,
      emaBeta: beta,
      seconds: (performance.now() - t0) / 1000,
    };
  }

  /** Everything needed to resume: both networks, Adam, counters, the sampler, the config. */
  async state(): Promise<TeacherState> {
    const tensors = new Map<string, HostTensor>();
    const put = (prefix: string, m: Map<string, HostTensor>) => {
      for (const [k, v] of m) tensors.set(prefix + k, v);
    };
    put("net.", await this.net.stateDict());
    put("ema.", await this.ema.stateDict());
    put("opt.", await this.#opt.state());
    return {
      config: { ...this.config },
      network: toEdmKwargs(this.net.config),
      curNimg: this.curNimg,
      iteration: this.iteration,
      sampler: this.#sampler.state(),
      tensors,
    };
  }

  /**
   * Restores a state from {@linkcode state}. The network must be the same and the
   * state-defining fields ({@linkcode TEACHER_STATE_DEFINING_FIELDS}) equal; every tensor is
   * checked before anything is assigned.
   *
   * @throws RangeError on any mismatch.
   */
  load(state: TeacherState): void {
    const why = teacherConfigDifference(state.config, this.config) ??
      (JSON.stringify(state.network) !== JSON.stringify(toEdmKwargs(this.net.config))
        ? "the saved state is of another network"
        : null);
    if (why) throw new RangeError(why);
    if (!Number.isSafeInteger(state.curNimg) || state.curNimg < 0) {
      throw new RangeError(`bad image count ${state.curNimg} in the saved state`);
    }
    for (const k of state.tensors.keys()) {
      if (!/^(net|ema|opt)\./.test(k)) throw new RangeError(`unexpected state tensor '${k}'`);
    }
    const sampler = InfiniteSampler.fromState(this.dataset.size, state.sampler);
    const part = (prefix: string) => {
      const m = new Map<string, HostTensor>();
      for (const [k, v] of state.tensors) {
        if (k.startsWith(prefix)) m.set(k.slice(prefix.length), v);
      }
      return m;
    };
    const nets = [["net.", this.net], ["ema.", this.ema]] as const;
    for (const [prefix, net] of nets) {
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
    this.#opt.loadState(part("opt."));
    for (const [prefix, net] of nets) net.loadStateDict(part(prefix));
    this.curNimg = state.curNimg;
    this.iteration = state.iteration;
    this.#sampler = sampler;
  }

  /** Frees both networks and the optimizer state. */
  dispose(): void {
    this.net.dispose();
    this.ema.dispose();
    this.#opt.dispose();
  }
}

/** The first state-defining field on which two configurations differ, as a sentence, or null. */
export function teacherConfigDifference(
  saved: TeacherConfig,
  current: TeacherConfig,
): string | null {
  for (const k of TEACHER_STATE_DEFINING_FIELDS) {
    if (JSON.stringify(saved[k]) !== JSON.stringify(current[k])) {
      return `it has ${k} ${JSON.stringify(saved[k])}, not ${JSON.stringify(current[k])}`;
    }
  }
  return null;
}

/** Why `ds` cannot train a network of `config` (one line), or null. */
function teacherDataMismatch(
  ds: ImageDataset,
  config: NetworkConfig,
  what = "the data",
): string | null {
  return dataMismatch(ds, networkShape(config), { what, whose: "the network" });
}

// ---------------------------------------------------------------------------------------------
// Run folders

/** Identity and settings of a teacher run, stored in every training state. */
export interface TeacherRunInfo {
  /** Always `edm-teacher`. */
  kind: "edm-teacher";
  /** Hyper-parameters. */
  config: TeacherConfig;
  /** EDM kwargs of the network (dropout included). */
  network: EdmKwargs;
  /** The network preset the run started from, or null for an explicit configuration. */
  preset: string | null;
  /** The data. */
  data: {
    source: string;
    name: string;
    size: number;
    resolution: number;
    channels: number;
    labelDim: number;
  };
  /** Length and cadence, in kimg. */
  kimg: number;
  tickKimg: number;
  snapKimg: number;
  dumpKimg: number;
}

/** What {@linkcode readTeacherState} returns. */
export interface SavedTeacherState {
  /** The trainer's part, for {@linkcode TeacherTrainer.load}. */
  state: TeacherState;
  /** The run's identity and settings. */
  run: TeacherRunInfo;
  /** Seconds of training before the state was written. */
  elapsedSec: number;
  /** The mean loss of the last tick before the state was written (NaN if unknown). */
  loss: number;
}

/** The metadata entries of a teacher state besides `format`, `run` and `counters`. */
function teacherStateMetadata(state: TeacherState): Record<string, string> {
  return { sampler: JSON.stringify(state.sampler), seed: String(state.config.seed) };
}

/** A {@linkcode TeacherState} from a state file's parts; `IoError` when incomplete. */
function decodeTeacherState(file: StateFile<TeacherRunInfo>, path: string): TeacherState {
  const run = file.run;
  const sampler = stateJson<SamplerState>(path, file.metadata, "sampler");
  if (run?.kind !== "edm-teacher" || !run.config || !run.network || !run.data || !sampler) {
    throw new IoError(`${path}: incomplete teacher training-state metadata`);
  }
  return {
    config: run.config,
    network: run.network,
    curNimg: file.counters.curNimg,
    iteration: file.counters.iteration,
    sampler,
    tensors: file.tensors,
  };
}

/** The loss counter of a state: the last tick's mean loss, null when unknown. */
function lossCounter(loss: number | undefined): number | null {
  return Number.isFinite(loss) ? loss! : null;
}

/**
 * Writes a teacher training state into `dir` atomically, then deletes every other
 * `training-state-*.safetensors` there. Returns the new file's path.
 */
export async function writeTeacherState(
  dir: string,
  state: TeacherState,
  run: TeacherRunInfo,
  extra: { elapsedSec?: number; loss?: number } = {},
): Promise<string> {
  return await writeStateFile(dir, TEACHER_STATE_FORMAT, {
    tensors: state.tensors,
    run,
    counters: {
      curNimg: state.curNimg,
      iteration: state.iteration,
      elapsedSec: extra.elapsedSec ?? 0,
      loss: lossCounter(extra.loss),
    },
    metadata: teacherStateMetadata(state),
  });
}

/** Reads a state written by {@linkcode writeTeacherState}; `IoError` on anything else. */
export async function readTeacherState(path: string): Promise<SavedTeacherState> {
  const file = await readStateFile<TeacherRunInfo>(
    path,
    TEACHER_STATE_FORMAT,
    "a teacher training state",
  );
  return {
    state: decodeTeacherState(file, path),
    run: file.run,
    elapsedSec: file.counters.elapsedSec,
    loss: typeof file.counters.loss === "number" ? file.counters.loss : NaN,
  };
}

/**
 * Why a saved teacher run cannot be continued under the current settings (one line), or null.
 * Network, data and the state-defining hyper-parameters must agree.
 */
export function teacherRunIncompatibility(
  saved: TeacherRunInfo,
  current: TeacherRunInfo,
): string | null {
  if (JSON.stringify(saved.network) !== JSON.stringify(current.network)) {
    const a = saved.network as Record<string, unknown>;
    const b = current.network as Record<string, unknown>;
    const key = [...new Set([...Object.keys(a), ...Object.keys(b)])].find((k) =>
      JSON.stringify(a[k]) !== JSON.stringify(b[k])
    );
    return `it trains another network (${key}: ${JSON.stringify(a[key!])}, not ${
      JSON.stringify(b[key!])
    })`;
  }
  const d = (x: TeacherRunInfo["data"]) =>
    `${x.size} images of ${x.resolution}x${x.resolution}x${x.channels}, ${x.labelDim} classes`;
  if (d(saved.data) !== d(current.data)) {
    return `it was started with other data (${d(saved.data)}; now ${d(current.data)})`;
  }
  return teacherConfigDifference(saved.config, current.config);
}

// ---------------------------------------------------------------------------------------------
// The driver

/** Options of {@linkcode trainTeacher}. */
export interface TeacherOptions {
  /** The run folder. */
  out: string;
  /** Network preset name (default `mnist`); ignored when `network` is given. */
  preset?: string;
  /** An explicit network configuration instead of a preset. */
  network?: NetworkConfig | NetworkConfigInput;
  /** Dropout over the network's. */
  dropout?: number;
  /** Data: `mnist` (default), an EDM dataset zip, or a dataset object. */
  data?: string | ImageDataset;
  /** Hyper-parameters over {@linkcode TEACHER_DEFAULTS}. */
  config?: Partial<TeacherConfig>;
  /** Total length in kimg (default 200); a finished run may be extended with a larger value. */
  kimg?: number;
  /** kimg per tick (log line). Default 1. */
  tickKimg?: number;
  /** kimg between EMA snapshots. Default 20. */
  snapKimg?: number;
  /** kimg between training states. Default 5. */
  dumpKimg?: number;
  /** At the end, copy the EMA network to this `.safetensors` file (atomically). */
  export?: string;
  /** Insist on continuing: fail when the folder holds no training state. */
  resume?: boolean;
  /** Backend (`webgpu`, `native`, `cpu`, `auto`); default automatic. */
  backend?: string;
  /** The command line, recorded in the export's metadata. */
  command?: string;
  /** When aborted: finish the iteration, write a state, return `interrupted`. */
  signal?: AbortSignal;
  /**
   * Consecutive iterations with a non-finite loss that stop the run with a
   * `NonFiniteTrainingError`, keeping the last good state. Default 5.
   */
  nonFiniteLimit?: number;
  /** Called after every iteration (e.g. to plot the loss). */
  onIteration?: (stats: TeacherStepStats) => void;
  /** No progress or status lines on stderr. */
  quiet?: boolean;
}

/** What {@linkcode trainTeacher} returns. */
export interface TeacherResult {
  /** Images seen at the end. */
  curNimg: number;
  /** Iterations run in this call. */
  iterations: number;
  /** True when stopped by the signal. */
  interrupted: boolean;
  /** True when the folder's run was continued. */
  resumed: boolean;
  /** The last training state written in this call (null when nothing ran). */
  statePath: string | null;
  /** The last snapshot written in this call, if any. */
  snapshotPath: string | null;
  /** The exported network, if any. */
  exportPath: string | null;
  /** The mean loss of the last tick (EDM `Loss/loss`), NaN when unknown. */
  loss: number;
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

/** The network configuration of the options (preset or explicit, with the dropout override). */
function networkOf(o: TeacherOptions): { config: NetworkConfig; preset: string | null } {
  let config: NetworkConfig;
  let presetName: string | null = null;
  try {
    if (o.network) {
      config = resolveConfig(o.network as NetworkConfigInput);
    } else {
      presetName = o.preset ?? "mnist";
      if (!(PRESET_NAMES as readonly string[]).includes(presetName)) {
        throw new UsageError(
          `unknown preset '${presetName}' (expected one of: ${PRESET_NAMES.join(", ")})`,
        );
      }
      config = preset(presetName);
    }
    if (o.dropout !== undefined) {
      config = resolveConfig({ ...config, unet: { ...config.unet, dropout: o.dropout } });
    }
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`bad network configuration: ${(e as Error).message}`);
  }
  return { config, preset: presetName };
}

/**
 * Trains (or continues) an EDM teacher in the run folder `out`; see the module doc.
 *
 * Everything is checked before the folder is touched: numbers, the backend name, the export
 * path, the network, the data and whether they fit, and — when the folder holds a training
 * state — whether that run can be continued with these settings. Then it resumes from the latest
 * state (a finished run is reported and skipped) or starts fresh, and loops; an aborted `signal`
 * finishes the current iteration, writes a state and returns `interrupted`. With `export`, the
 * final EMA network is written there (atomically) with `command`, `kimg`, `seed` and `loss` in
 * its metadata.
 *
 * @throws UsageError (bad options, incompatible run), IoError (unreadable files).
 */
export async function trainTeacher(o: TeacherOptions): Promise<TeacherResult> {
  // ---- validation: nothing is written before all of it passes ----
  if (!o.out) throw new UsageError("--out (the run folder) is required");
  let config: TeacherConfig;
  try {
    config = resolveTeacherConfig(o.config);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const kimg = positiveOption("kimg", o.kimg ?? TEACHER_CADENCE.kimg);
  const tickKimg = positiveOption("tick", o.tickKimg ?? TEACHER_CADENCE.tickKimg);
  const snapKimg = positiveOption("snap", o.snapKimg ?? TEACHER_CADENCE.snapKimg);
  const dumpKimg = positiveOption("dump", o.dumpKimg ?? TEACHER_CADENCE.dumpKimg);
  checkBackendName(o.backend);
  if (o.export !== undefined) {
    if (!o.export.toLowerCase().endsWith(".safetensors")) {
      throw new UsageError(`--export must name a .safetensors file, got '${o.export}'`);
    }
    if (await isDirectory(o.export)) throw new UsageError(`--export '${o.export}' is a directory`);
  }
  if (await Deno.stat(o.out).then((s) => !s.isDirectory, () => false)) {
    throw new UsageError(`--out '${o.out}' exists and is not a folder`);
  }
  const net = networkOf(o);
  const dataSource = typeof o.data === "string" ? o.data : o.data ? o.data.name : "mnist";
  const dataset = typeof o.data === "object" ? o.data : await loadTrainingData(o.data ?? "mnist");
  const mismatch = teacherDataMismatch(dataset, net.config, `data ${dataSource}`);
  if (mismatch) throw new UsageError(mismatch);
  const run: TeacherRunInfo = {
    kind: "edm-teacher",
    config,
    network: toEdmKwargs(net.config),
    preset: net.preset,
    data: {
      source: dataSource,
      name: dataset.name,
      size: dataset.size,
      resolution: dataset.resolution,
      channels: dataset.channels,
      labelDim: dataset.labelDim,
    },
    kimg,
    tickKimg,
    snapKimg,
    dumpKimg,
  };
  // ---- set-up; then the shared driver (lib/train/driver.ts) locks, resumes and loops ----
  const backend = await ensureBackend(o.backend);
  const trainer = new TeacherTrainer({ network: net.config, dataset, config });
  try {
    const say = (s: string) => {
      if (!o.quiet) console.error(s);
    };
    const kind = teacherKind(trainer, {
      out: o.out,
      start: `training a teacher in ${o.out}: ${net.preset ?? "custom network"} ` +
        `(${trainer.net.numParameters().toLocaleString("en-US")} parameters) on ` +
        `${dataset.name} (${dataset.size} images), batch ${config.batch}` +
        (config.microBatch < config.batch
          ? ` (${config.batch / config.microBatch} x ${config.microBatch})`
          : "") +
        `, lr ${config.lr}, ${kimg} kimg`,
    });
    const r = await runTraining({
      intro: describeBackend(backend),
      trainer,
      kind,
      run,
      out: o.out,
      durationKimg: kimg,
      tickKimg,
      snapKimg,
      dumpKimg,
      requireResume: o.resume,
      unreadableIsUsage: true,
      signal: o.signal,
      quiet: o.quiet,
      nonFiniteLimit: o.nonFiniteLimit,
      onIteration: o.onIteration,
    });
    const savedLoss = r.resumedCounters?.loss;
    const result: TeacherResult = {
      curNimg: r.curNimg,
      iterations: r.iterations,
      interrupted: r.interrupted,
      resumed: r.resumed,
      statePath: r.statePath,
      snapshotPath: r.snapshotPath,
      exportPath: null,
      loss: r.lastTick?.loss ?? (typeof savedLoss === "number" ? savedLoss : NaN),
    };
    if (o.export && !result.interrupted && isWriter()) {
      await saveNetwork(trainer.ema, o.export, {
        command: o.command ?? "trainTeacher",
        kimg: String(trainer.curNimg / 1000),
        seed: String(config.seed),
        loss: String(result.loss),
        run: o.out,
        data: dataSource,
        method: "edm-teacher",
      });
      result.exportPath = o.export;
      say(`exported the EMA network (kimg ${trainer.curNimg / 1000}) to ${o.export}`);
    }
    return result;
  } finally {
    trainer.dispose();
  }
}

/** A tick of teacher training in `log.jsonl` (EDM's `Loss/loss` and the schedules). */
export interface TeacherTickRecord {
  tick: number;
  kimg: number;
  nimg: number;
  iterations: number;
  elapsedSec: number;
  secPerTick: number;
  secPerKimg: number;
  imgPerSec: number;
  /** Mean, min and max of the iterations' losses. */
  loss: number;
  lossMin: number;
  lossMax: number;
  /** The last iteration's learning rate and EMA β. */
  lr: number;
  emaBeta: number;
}

/** How teacher training is written, read and reported by the shared driver. */
function teacherKind(
  t: TeacherTrainer,
  o: { out: string; start: string },
): TrainingKind<TeacherStepStats, TeacherState, TeacherRunInfo, TeacherTickRecord> {
  // The mean loss of the latest tick: in state counters and snapshot metadata.
  let loss = NaN;
  const detail = (x: { loss: number; lr: number }) =>
    `loss ${x.loss.toFixed(4)} lr ${x.lr.toExponential(2)}`;
  return {
    task: "teacher",
    what: "teacher training",
    format: TEACHER_STATE_FORMAT,
    formatWhat: "a teacher training state",
    stateMetadata: teacherStateMetadata,
    decodeState: decodeTeacherState,
    counters: () => ({ loss: lossCounter(loss) }),
    incompatibility: teacherRunIncompatibility,
    health: (s) => ({ loss: s.loss }),
    seconds: (s) => s.seconds,
    tickRecord: (stats, info) => {
      const n = stats.length;
      const images = n * info.batch;
      const last = stats[n - 1];
      return {
        tick: info.tick,
        kimg: t.curNimg / 1000,
        nimg: t.curNimg,
        iterations: n,
        elapsedSec: info.elapsedSec,
        secPerTick: info.secPerTick,
        secPerKimg: info.secPerTick / (images / 1000),
        imgPerSec: images / info.secPerTick,
        loss: stats.reduce((a, x) => a + x.loss, 0) / n,
        lossMin: Math.min(...stats.map((x) => x.loss)),
        lossMax: Math.max(...stats.map((x) => x.loss)),
        lr: last.lr,
        emaBeta: last.emaBeta,
      };
    },
    onTick: (r) => loss = r.loss,
    detail,
    snapshotMetadata: () => ({
      method: "edm-teacher",
      seed: String(t.config.seed),
      loss: String(loss),
    }),
    startMessage: (latest, curNimg) =>
      latest ? `resuming the teacher from ${latest} at kimg ${curNimg / 1000}` : o.start,
    doneMessage: (curNimg, statePath) =>
      `done: ${curNimg / 1000} kimg (${kimgLabel(curNimg)}), loss ${loss.toFixed(4)}; ` +
      `state ${statePath}`,
    lengthFlag: "--kimg",
  };
}

// ---------------------------------------------------------------------------------------------
// Command line

/** The usage line of `deno task teacher`. */
export const TEACHER_USAGE: string =
  "usage: deno task teacher --out DIR [--kimg 200] [--batch 64] " +
  "[--micro-batch N] [--lr 1e-3] [--lr-rampup 10] [--ema 50] [--ema-rampup 0.05|0] " +
  "[--dropout P] [--xflip 0|1] [--seed 0] [--preset mnist|NAME] [--config EDM_KWARGS.json] " +
  "[--data mnist|ZIP] [--tick 1] [--snap 20] [--dump 5] [--export FILE.safetensors] [--resume] " +
  `[--quiet] [--backend ${[...BACKEND_NAMES, "auto"].join("|")}]`;

/**
 * Parses `deno task teacher`'s command line into {@linkcode TeacherOptions} (without `signal`
 * and `command`). Every number is checked here; a bad one is a one-line {@linkcode UsageError}.
 * `--config` names a JSON file of EDM kwargs (as in a saved network's `config` metadata); it is
 * read by {@linkcode loadTeacherNetworkConfig}, not here.
 */
export function parseTeacherArgs(args: string[]): TeacherOptions & { configFile?: string } {
  const f = parseFlags(args, {
    string: [
      "out",
      "kimg",
      "batch",
      "micro-batch",
      "lr",
      "lr-rampup",
      "ema",
      "ema-rampup",
      "dropout",
      "xflip",
      "seed",
      "preset",
      "config",
      "data",
      "tick",
      "snap",
      "dump",
      "export",
    ],
    boolean: ["resume", "quiet", "help"],
  }, TEACHER_USAGE);
  if (f.positionals.length) {
    throw new UsageError(`unexpected argument '${f.positionals[0]}' (${TEACHER_USAGE})`);
  }
  if (f.preset !== undefined && f.config !== undefined) {
    throw new UsageError("give either --preset or --config, not both");
  }
  const num = (name: string, opts: { integer?: boolean; min?: number } = {}) =>
    f[name] === undefined ? undefined : numberFlag(name, f[name], NaN, { min: 0, ...opts });
  const positiveFlag = (name: string, opts: { integer?: boolean } = {}) => {
    const v = num(name, opts);
    if (v !== undefined && !(v > 0)) throw new UsageError(`--${name} must be > 0, got ${v}`);
    return v;
  };
  let xflip: boolean | undefined;
  if (f.xflip !== undefined) {
    if (f.xflip !== "0" && f.xflip !== "1") {
      throw new UsageError(`--xflip must be 0 or 1, got '${f.xflip}'`);
    }
    xflip = f.xflip === "1";
  }
  const dropout = num("dropout");
  if (dropout !== undefined && !(dropout < 1)) {
    throw new UsageError(`--dropout must be in [0, 1), got ${dropout}`);
  }
  const rampup = num("ema-rampup");
  const str = (name: string) => typeof f[name] === "string" ? f[name] as string : undefined;
  const opts: TeacherOptions & { configFile?: string } = {
    out: str("out") ?? "",
    preset: str("preset"),
    configFile: str("config"),
    dropout,
    data: str("data"),
    config: {
      batch: positiveFlag("batch", { integer: true }),
      microBatch: positiveFlag("micro-batch", { integer: true }),
      lr: positiveFlag("lr"),
      lrRampupKimg: num("lr-rampup"),
      emaHalflifeKimg: num("ema"),
      emaRampupRatio: rampup === undefined ? undefined : rampup === 0 ? null : rampup,
      xflip,
      seed: num("seed", { integer: true }),
    },
    kimg: positiveFlag("kimg"),
    tickKimg: positiveFlag("tick"),
    snapKimg: positiveFlag("snap"),
    dumpKimg: positiveFlag("dump"),
    export: str("export"),
    resume: f.resume === true,
    backend: str("backend"),
    quiet: f.quiet === true,
  };
  if (!opts.out) throw new UsageError(`--out (the run folder) is required (${TEACHER_USAGE})`);
  try {
    resolveTeacherConfig(opts.config);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  return opts;
}

/** Reads a `--config` file: a JSON object of EDM kwargs; `UsageError` when it is not one. */
export async function loadTeacherNetworkConfig(path: string): Promise<NetworkConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    throw new UsageError(`--config file '${path}' not found`);
  }
  try {
    const kw = JSON.parse(text);
    if (!kw || typeof kw !== "object" || Array.isArray(kw)) throw new Error("not a JSON object");
    return fromEdmKwargs(kw);
  } catch (e) {
    throw new UsageError(`--config ${path}: ${(e as Error).message.split("\n")[0]}`);
  }
}

/** Quotes a command-line word for the record when it needs quoting. */
function shellWord(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

/**
 * The body of `tasks/teacher.ts`: parse flags, train, and handle Ctrl-C (the first SIGINT
 * finishes the iteration, writes a state and exits with status 130; a second one exits at once —
 * states are written atomically, so none is ever half-written).
 */
export async function teacherTask(args: string[]): Promise<void> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(TEACHER_USAGE);
    return;
  }
  const { configFile, ...opts } = parseTeacherArgs(args);
  if (configFile) opts.network = await loadTeacherNetworkConfig(configFile);
  const command = ["deno", "task", "teacher", ...args].map(shellWord).join(" ");
  await withInterrupt((signal) => trainTeacher({ ...opts, signal, command }));
}
