/**
 * `runDistillation`: the training driver shared by `deno task sid` and `deno task sida`.
 *
 * Everything is validated before the run folder is touched: the preset and numbers, the teacher
 * (and SiD²A's initial generator) files, the data and whether they fit the teacher (resolution,
 * channels, classes), and — when the folder already holds a training state — whether that run
 * can be continued with these settings (same teacher, kind, data and algorithm). Then it resumes
 * from the folder's latest state or starts fresh, and loops: one {@linkcode Distiller.step} per
 * iteration; at the end of every tick a `log.jsonl` line and a progress line; a training state
 * every `dumpKimg`, an EMA-generator snapshot every `snapKimg`, both at the end. An aborted
 * `signal` (the tasks' Ctrl-C) finishes the current iteration, writes a state and returns with
 * `interrupted: true`.
 *
 * @module
 */
import { IoError } from "../io/host_tensor.ts";
import { toEdmKwargs } from "../nets/config.ts";
import { EDM2Precond, toEdm2Kwargs } from "../nets/edm2.ts";
import { loadDenoisingNetwork } from "../nets/load.ts";
import { loadLabelsJson } from "../data/labels.ts";
import { BACKEND_NAMES, describeBackend } from "../runtime/backend.ts";
import {
  ensureBackend,
  numberFlag,
  parseFlags,
  positiveOption,
  requireFile,
  UsageError,
} from "../runtime/cli.ts";
import { loadTrainingData } from "../train/data.ts";
import { runTraining, type TrainingKind, withInterrupt } from "../train/driver.ts";
import { networkFingerprint } from "../train/run_folder.ts";
import {
  type DistillConfig,
  Distiller,
  type DistillMethod,
  type IterationStats,
  resolveDistillConfig,
} from "./distiller.ts";
import type { DistillerState, DistillNetwork } from "./distiller.ts";
import { DISTILL_PRESET_NAMES, distillPreset, guessPreset } from "./presets.ts";
import {
  checkPresetName,
  distillFlagNames,
  distillFlagUsage,
  distillOverrides,
} from "./settings.ts";
import { augmentMismatch, dataMismatch, networkShape } from "../data/fit.ts";
import {
  decodeDistillState,
  distillStateMetadata,
  runIncompatibility,
  type RunInfo,
  type TickRecord,
  tickRecord,
  TRAINING_STATE_FORMAT,
} from "./run.ts";

/** Options of {@linkcode runDistillation}. */
export interface DistillationOptions {
  /** `sid` or `sida` (with `init`: SiD²A). */
  method: DistillMethod;
  /** Teacher network file (`.safetensors`, `.pkl`, `.pt`). */
  teacher: string;
  /** Data: an EDM dataset zip, or `mnist`. Required for SiDA and conditional teachers. */
  data?: string;
  /** SiD²A: the SiD generator that G and G_ema start from. */
  init?: string;
  /** The run folder. */
  out: string;
  /** Preset name; default guessed from the teacher ({@linkcode guessPreset}). */
  preset?: string;
  /** Hyper-parameters over the preset's. */
  overrides?: Partial<DistillConfig>;
  /**
   * A resolved configuration, taken as given instead of the preset's with `overrides` (the chain
   * resolves its stages' once, in its plan).
   */
  config?: DistillConfig;
  /** Cadence over the preset's (kimg). */
  durationKimg?: number;
  tickKimg?: number;
  snapKimg?: number;
  dumpKimg?: number;
  /** Backend (`cpu`, `webgpu`, `auto`); default automatic. */
  backend?: string;
  /** When aborted: finish the iteration, write a state, return `interrupted`. */
  signal?: AbortSignal;
  /** No progress or status lines on stderr. */
  quiet?: boolean;
  /**
   * Consecutive iterations with non-finite losses (or every sample dropped as NaN) that stop the
   * run with a {@linkcode NonFiniteTrainingError}, keeping the last good state. Default 5.
   */
  nonFiniteLimit?: number;
  /** Called after every EMA snapshot is written (see `TrainingRun.onSnapshot`). */
  onSnapshot?: (path: string, nimg: number) => Promise<void>;
  /** Called after every iteration (see `TrainingRun.onIteration`). */
  onIteration?: (stats: IterationStats) => void;
}

/** What {@linkcode runDistillation} returns. */
export interface DistillationResult {
  /** Images seen at the end. */
  curNimg: number;
  /** Iterations run in this call. */
  iterations: number;
  /** True when stopped by the signal. */
  interrupted: boolean;
  /** True when the folder's run was continued. */
  resumed: boolean;
  /** The last training state written (null when nothing ran). */
  statePath: string | null;
  /** The last snapshot written, if any. */
  snapshotPath: string | null;
}

/** Loads a network, with the file named in any error. */
async function loadNet(path: string, what: string): Promise<DistillNetwork> {
  try {
    return await loadDenoisingNetwork(path);
  } catch (e) {
    const msg = (e as Error).message.split("\n")[0];
    throw new IoError(msg.includes(path) ? `${what}: ${msg}` : `${what} ${path}: ${msg}`);
  }
}

/** Runs (or resumes) a SiD / SiDA / SiD²A distillation; see the module doc. */
export async function runDistillation(opts: DistillationOptions): Promise<DistillationResult> {
  // ---- validation: nothing is written before all of it passes ----
  const kind = opts.method === "sid" ? "sid" : opts.init ? "sid2a" : "sida";
  if (opts.method === "sid" && opts.init) {
    throw new UsageError("--init (SiD²A) applies to sida only");
  }
  checkPresetName(opts.preset);
  if (!opts.out) throw new UsageError("--out (the run folder) is required");
  if (!opts.teacher) throw new UsageError("--teacher is required");
  await requireFile(opts.teacher, "teacher file");
  if (opts.init) await requireFile(opts.init, "initial generator file");
  if (opts.data && opts.data !== "mnist") await requireFile(opts.data, "data file");
  if (opts.method === "sida" && !opts.data) {
    throw new UsageError("SiDA needs real data: give --data (a dataset zip or mnist)");
  }
  const labelsOnly = !!opts.data && /\.json$/i.test(opts.data);
  if (opts.method === "sida" && labelsOnly) {
    throw new UsageError(`SiDA needs images: a labels-only ${opts.data} serves SiD only`);
  }
  const backend = await ensureBackend(opts.backend);
  const teacher = await loadNet(opts.teacher, "teacher");
  let initNet: DistillNetwork | undefined;
  let distiller: Distiller | undefined;
  try {
    const presetName = opts.preset ?? guessPreset(teacher);
    if (!presetName) {
      throw new UsageError(
        `no preset fits a ${teacher.imgResolution}x${teacher.imgResolution}x${teacher.imgChannels} teacher; give --preset`,
      );
    }
    const preset = distillPreset(presetName, opts.method, { sid2a: kind === "sid2a" });
    // The one place a task's hyper-parameters are resolved and validated (the chain resolves its
    // stages' in its plan and passes them as `config`, taken as given).
    let config: DistillConfig;
    try {
      config = opts.config ??
        resolveDistillConfig({ ...preset.config, ...opts.overrides, method: opts.method });
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    if (config.method !== opts.method) {
      throw new UsageError(`a ${config.method} configuration given to a ${opts.method} run`);
    }
    const durationKimg = positiveOption("duration", opts.durationKimg ?? preset.durationKimg);
    const tickKimg = positiveOption("tick", opts.tickKimg ?? preset.tickKimg);
    const snapKimg = positiveOption("snap", opts.snapKimg ?? preset.snapKimg);
    const dumpKimg = positiveOption("dump", opts.dumpKimg ?? preset.dumpKimg);
    if (teacher.labelDim > 0 && !opts.data) {
      throw new UsageError(
        `the teacher is conditional (${teacher.labelDim} classes): give labelled --data`,
      );
    }
    // A dataset.json alone: labels for data-free SiD (json_labels_dataset.py), teacher-shaped.
    const dataset = !opts.data ? undefined : labelsOnly
      ? await loadLabelsJson(opts.data, {
        resolution: teacher.imgResolution,
        channels: teacher.imgChannels,
      })
      : await loadTrainingData(opts.data);
    const problem = (dataset &&
      dataMismatch(dataset, networkShape(teacher), { what: `data ${opts.data}` })) ||
      augmentMismatch(config.augment, teacher.augmentDim);
    if (problem) throw new UsageError(problem);
    if (opts.init) initNet = await loadNet(opts.init, "initial generator");
    try {
      distiller = new Distiller({ teacher, config, dataset, initGenerator: initNet });
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    initNet?.dispose();
    initNet = undefined;
    const run: RunInfo = {
      kind,
      distill: config,
      preset: presetName,
      teacher: {
        path: opts.teacher,
        fingerprint: await networkFingerprint(teacher),
        config: teacher instanceof EDM2Precond
          ? toEdm2Kwargs(teacher.config)
          : toEdmKwargs(teacher.config),
      },
      init: opts.init
        ? { path: opts.init, fingerprint: await networkFingerprint(distiller.G) }
        : null,
      data: dataset
        ? {
          source: opts.data!,
          name: dataset.name,
          size: dataset.size,
          resolution: dataset.resolution,
          channels: dataset.channels,
          labelDim: dataset.labelDim,
        }
        : null,
      durationKimg,
      tickKimg,
      snapKimg,
      dumpKimg,
    };
    const d = distiller;
    const r = await runTraining({
      intro: describeBackend(backend),
      trainer: d,
      kind: distillKind(d, run, opts.out, presetName),
      run,
      out: opts.out,
      durationKimg,
      tickKimg,
      snapKimg,
      dumpKimg,
      signal: opts.signal,
      quiet: opts.quiet,
      nonFiniteLimit: opts.nonFiniteLimit,
      onSnapshot: opts.onSnapshot,
      onIteration: opts.onIteration,
    });
    return {
      curNimg: r.curNimg,
      iterations: r.iterations,
      interrupted: r.interrupted,
      resumed: r.resumed,
      statePath: r.statePath,
      snapshotPath: r.snapshotPath,
    };
  } finally {
    initNet?.dispose();
    distiller?.dispose();
    teacher.dispose();
  }
}

/** How a distillation is written, read and reported by the shared driver. */
function distillKind(
  d: Distiller,
  run: RunInfo,
  out: string,
  presetName: string,
): TrainingKind<IterationStats, DistillerState, RunInfo, TickRecord> {
  const c = d.config;
  return {
    task: c.method,
    what: "distillation",
    format: TRAINING_STATE_FORMAT,
    stateMetadata: distillStateMetadata,
    decodeState: decodeDistillState,
    incompatibility: runIncompatibility,
    health: (s) => ({
      lossFake: s.lossFake,
      lossD: s.lossD,
      lossG: s.lossG,
      lossGGan: s.lossGGan,
      keptFake: s.keptFake,
      keptG: s.keptG,
    }),
    seconds: (s) => s.timings.total,
    tickRecord,
    detail: (s) => {
      const gan = s.lossGGan === null ? "" : ` G_gan ${s.lossGGan.toFixed(3)}`;
      const disc = s.lossD === null ? "" : ` D ${s.lossD.toFixed(3)}`;
      return `fake ${s.lossFake.toFixed(3)}${disc} G ${s.lossG.toFixed(3)}${gan}`;
    },
    snapshotMetadata: () => ({ alpha: String(c.alpha), method: run.kind }),
    startMessage: (latest, curNimg) =>
      latest
        ? `resuming ${run.kind} from ${latest} at kimg ${curNimg / 1000}`
        : `starting ${run.kind} in ${out}: preset ${presetName}, batch ${c.batch} ` +
          `(${d.rounds} x ${c.microBatch}), ${run.durationKimg} kimg`,
    lengthFlag: "--duration",
  };
}

/** The usage line of a distillation task. */
export function distillUsage(method: DistillMethod): string {
  const sida = method === "sida";
  return `usage: deno task ${method} --teacher FILE --out DIR [--data ZIP|mnist${
    sida ? "" : "|dataset.json"
  }]` +
    (sida ? " [--init SID_GENERATOR (SiD²A)]" : "") +
    ` [--preset ${DISTILL_PRESET_NAMES.join("|")}] [--duration KIMG] [--tick KIMG] [--snap KIMG]` +
    ` [--dump KIMG] ${distillFlagUsage(method)} [--backend ${
      [...BACKEND_NAMES, "auto"].join("|")
    }]`;
}

/**
 * Parses a distillation task's command line into {@linkcode DistillationOptions} (without
 * `signal`): the hyper-parameter flags of the shared table (`lib/distill/settings.ts`), the
 * files, the cadence. Every number is read here; a bad one is a one-line {@linkcode UsageError}.
 */
export function parseDistillArgs(method: DistillMethod, args: string[]): DistillationOptions {
  const usage = distillUsage(method);
  const f = parseFlags(args, {
    string: [
      ...distillFlagNames(method),
      "duration",
      "tick",
      "snap",
      "dump",
      "data",
      "teacher",
      "out",
      "preset",
      ...(method === "sida" ? ["init"] : []),
    ],
    boolean: ["help", "quiet"],
  }, usage);
  if (f.positionals.length) {
    throw new UsageError(`unexpected argument '${f.positionals[0]}' (${usage})`);
  }
  const kimg = (name: string) =>
    f[name] === undefined ? undefined : numberFlag(name, f[name], NaN, { min: 0 });
  const str = (name: string) => typeof f[name] === "string" ? f[name] as string : undefined;
  return {
    method,
    teacher: str("teacher") ?? "",
    data: str("data"),
    init: str("init"),
    out: str("out") ?? "",
    preset: str("preset"),
    overrides: distillOverrides(f, method),
    durationKimg: kimg("duration"),
    tickKimg: kimg("tick"),
    snapKimg: kimg("snap"),
    dumpKimg: kimg("dump"),
    backend: str("backend"),
    quiet: f.quiet === true,
  };
}

/**
 * The body of `tasks/sid.ts` and `tasks/sida.ts`: parse flags, run, and handle Ctrl-C (the first
 * SIGINT finishes the iteration, writes a state and exits with status 130; a second one exits at
 * once — states are written atomically, so none is ever half-written).
 */
export async function distillationTask(method: DistillMethod, args: string[]): Promise<void> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(distillUsage(method));
    return;
  }
  const opts = parseDistillArgs(method, args);
  await withInterrupt((signal) => runDistillation({ ...opts, signal }));
}
