/**
 * Distillation run folders: what a SiD / SiDA / SiD²A training state holds (the driver of
 * `lib/train/driver.ts` writes and reads it, `lib/train/run_folder.ts` names the files), when a
 * saved run can be continued, and the `log.jsonl` record of a tick.
 *
 * A training state holds every tensor of a {@linkcode DistillerState} (prefixes `G.`, `G_ema.`,
 * `fake.`, `optG.`, `optFake.`) and in `__metadata__`: `format` (`sida-training-state/1`), `run`
 * (the full {@linkcode RunInfo} as JSON: method, every hyper-parameter, teacher and data identity,
 * cadence), `counters` (`{curNimg, iteration, elapsedSec}`), `sampler` (the data sampler's
 * position), `seed`, `networks` (EDM kwargs of G and the fake net). Snapshots hold the EMA
 * generator with `kimg`, `alpha`, `run` and `method` in their metadata.
 *
 * @module
 */
import type { SamplerState } from "../data/sampler.ts";
import { IoError } from "../io/host_tensor.ts";
import type { EdmKwargs } from "../nets/config.ts";
import { readStateFile, type StateFile, stateJson, writeStateFile } from "../train/run_folder.ts";
import {
  configDifference,
  type DistillConfig,
  type DistillerState,
  type IterationStats,
} from "./distiller.ts";

/** The format tag of training-state files. */
export const TRAINING_STATE_FORMAT = "sida-training-state/1";

/** Identity and settings of a run, stored in every training state. */
export interface RunInfo {
  /** `sid`, `sida` or `sid2a` (SiDA started from a SiD generator). */
  kind: "sid" | "sida" | "sid2a";
  /** The algorithm's hyper-parameters. */
  distill: DistillConfig;
  /** Preset the run started from. */
  preset: string;
  /** The teacher: path given, weight fingerprint, EDM kwargs. */
  teacher: { path: string; fingerprint: string; config: EdmKwargs };
  /** SiD²A's initial generator, or null. */
  init: { path: string; fingerprint: string } | null;
  /** The data, or null (plain SiD of an unconditional teacher). */
  data: {
    source: string;
    name: string;
    size: number;
    resolution: number;
    channels: number;
    labelDim: number;
  } | null;
  /** Cadence, in kimg. */
  durationKimg: number;
  tickKimg: number;
  snapKimg: number;
  dumpKimg: number;
}

/** The metadata entries of a distillation state besides `format`, `run` and `counters`. */
export function distillStateMetadata(state: DistillerState): Record<string, string> {
  return {
    sampler: JSON.stringify(state.sampler),
    seed: String(state.config.seed),
    networks: JSON.stringify(state.networks),
  };
}

/** A {@linkcode DistillerState} from a state file's parts. */
export function decodeDistillState(file: StateFile<RunInfo>, path: string): DistillerState {
  if (!file.run?.distill) throw new IoError(`${path}: incomplete training-state metadata`);
  return {
    config: file.run.distill,
    curNimg: file.counters.curNimg,
    iteration: file.counters.iteration,
    sampler: stateJson<SamplerState | null>(path, file.metadata, "sampler"),
    networks: stateJson<DistillerState["networks"]>(path, file.metadata, "networks"),
    tensors: file.tensors,
  };
}

/**
 * Writes a distillation training state into `dir` atomically, then deletes every other
 * `training-state-*.safetensors` of the folder. Returns the new file's path.
 */
export async function writeTrainingState(
  dir: string,
  state: DistillerState,
  run: RunInfo,
  extra: { elapsedSec?: number } = {},
): Promise<string> {
  return await writeStateFile(dir, TRAINING_STATE_FORMAT, {
    tensors: state.tensors,
    run,
    counters: {
      curNimg: state.curNimg,
      iteration: state.iteration,
      elapsedSec: extra.elapsedSec ?? 0,
    },
    metadata: distillStateMetadata(state),
  });
}

/** What {@linkcode readTrainingState} returns. */
export interface SavedTrainingState {
  /** The distiller's part, for `Distiller.load`. */
  state: DistillerState;
  /** The run's identity and settings. */
  run: RunInfo;
  /** Seconds of training before the state was written. */
  elapsedSec: number;
}

/** Reads a training state written by {@linkcode writeTrainingState}; `IoError` on a bad file. */
export async function readTrainingState(path: string): Promise<SavedTrainingState> {
  const file = await readStateFile<RunInfo>(path, TRAINING_STATE_FORMAT);
  return {
    state: decodeDistillState(file, path),
    run: file.run,
    elapsedSec: file.counters.elapsedSec,
  };
}

/**
 * Why a saved run cannot be continued under the current settings (a one-line reason), or null
 * when it can. The teacher (by weight fingerprint), the kind (SiD / SiDA / SiD²A and its initial
 * generator), the data's shape and size, and every algorithm-defining hyper-parameter must agree.
 */
export function runIncompatibility(saved: RunInfo, current: RunInfo): string | null {
  if (saved.kind !== current.kind) return `it is a ${saved.kind} run, not ${current.kind}`;
  if (saved.teacher.fingerprint !== current.teacher.fingerprint) {
    return `it was started with another teacher (${saved.teacher.path})`;
  }
  if ((saved.init?.fingerprint ?? null) !== (current.init?.fingerprint ?? null)) {
    return `it was started from another generator (${saved.init?.path ?? "the teacher"})`;
  }
  const d = (x: RunInfo["data"]) =>
    x
      ? `${x.size} images of ${x.resolution}x${x.resolution}x${x.channels}, ${x.labelDim} classes`
      : "none";
  if (d(saved.data) !== d(current.data)) {
    return `it was started with other data (${d(saved.data)}; now ${d(current.data)})`;
  }
  const diff = configDifference(saved.distill, current.distill);
  if (diff) {
    return `it has ${diff.field} ${JSON.stringify(diff.saved)}, not ${
      JSON.stringify(diff.current)
    }`;
  }
  return null;
}

/** One line of `log.jsonl`: the means of a tick's iterations. */
export interface TickRecord {
  tick: number;
  kimg: number;
  nimg: number;
  iterations: number;
  /** Seconds since the run started (over all sessions). */
  elapsedSec: number;
  secPerTick: number;
  secPerKimg: number;
  /** Generator images per second (batch / iteration time). */
  imgPerSec: number;
  lossFake: number;
  lossD: number | null;
  lossG: number;
  lossGGan: number | null;
  bceReal: number | null;
  bceFake: number | null;
  bceG: number | null;
  wMean: number;
  wMin: number;
  wMax: number;
  gStep: boolean;
  ganActive: boolean;
  emaBeta: number;
  /** Mean seconds per iteration of each step. */
  timings: { stepA: number; stepB: number; ema: number; iteration: number };
}

/** Summarises a tick's iterations. */
export function tickRecord(
  stats: IterationStats[],
  info: { tick: number; elapsedSec: number; secPerTick: number; batch: number },
): TickRecord {
  const n = stats.length;
  const mean = (f: (s: IterationStats) => number) => stats.reduce((a, s) => a + f(s), 0) / n;
  const meanOrNull = (f: (s: IterationStats) => number | null) =>
    f(stats[0]) === null ? null : mean((s) => f(s) ?? NaN);
  const last = stats[n - 1];
  const images = n * info.batch;
  return {
    tick: info.tick,
    kimg: last.nimg / 1000,
    nimg: last.nimg,
    iterations: n,
    elapsedSec: info.elapsedSec,
    secPerTick: info.secPerTick,
    secPerKimg: info.secPerTick / (images / 1000),
    imgPerSec: images / info.secPerTick,
    lossFake: mean((s) => s.lossFake),
    lossD: meanOrNull((s) => s.lossD),
    lossG: mean((s) => s.lossG),
    lossGGan: meanOrNull((s) => s.lossGGan),
    bceReal: meanOrNull((s) => s.bceReal),
    bceFake: meanOrNull((s) => s.bceFake),
    bceG: meanOrNull((s) => s.bceG),
    wMean: mean((s) => s.weightFactor.mean),
    wMin: Math.min(...stats.map((s) => s.weightFactor.min)),
    wMax: Math.max(...stats.map((s) => s.weightFactor.max)),
    gStep: last.gStep,
    ganActive: last.ganActive,
    emaBeta: last.emaBeta,
    timings: {
      stepA: mean((s) => s.timings.stepA),
      stepB: mean((s) => s.timings.stepB),
      ema: mean((s) => s.timings.ema),
      iteration: mean((s) => s.timings.total),
    },
  };
}
