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
import { loadImageZip, mnistDataset } from "../data/dataset.ts";
import type { ImageDataset } from "../data/dataset.ts";
import { tf } from "../deps.ts";
import { IoError } from "../io/host_tensor.ts";
import { toEdmKwargs } from "../nets/config.ts";
import { loadNetwork } from "../nets/network.ts";
import type { EDMPrecond } from "../nets/precond.ts";
import { BACKEND_NAMES, describeBackend, initBackend } from "../runtime/backend.ts";
import { numberFlag, parseFlags, UsageError } from "../runtime/cli.ts";
import { lockRunFolder } from "../io/lock.ts";
import {
  type DistillConfig,
  Distiller,
  type DistillMethod,
  type IterationStats,
  resolveDistillConfig,
} from "./distiller.ts";
import { DEFAULT_NON_FINITE_LIMIT, NonFiniteGuard, NonFiniteTrainingError } from "./guard.ts";
import { DISTILL_PRESET_NAMES, distillPreset, guessPreset } from "./presets.ts";
import {
  appendLog,
  findLatestState,
  networkFingerprint,
  Progress,
  readTrainingState,
  removeStaleTemporaries,
  runIncompatibility,
  type RunInfo,
  runName,
  tickRecord,
  writeSnapshot,
  writeTrainingState,
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

async function requireFile(path: string, what: string): Promise<void> {
  try {
    const st = await Deno.stat(path);
    if (!st.isFile) throw new UsageError(`${what} '${path}' is not a file`);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`${what} '${path}' not found`);
  }
}

function positiveKimg(name: string, v: number): number {
  if (!(v > 0) || !Number.isFinite(v)) throw new UsageError(`--${name} must be > 0, got ${v}`);
  return v;
}

/** Loads a network, with the file named in any error. */
async function loadNet(path: string, what: string): Promise<EDMPrecond> {
  try {
    return await loadNetwork(path);
  } catch (e) {
    const msg = (e as Error).message.split("\n")[0];
    throw new IoError(msg.includes(path) ? `${what}: ${msg}` : `${what} ${path}: ${msg}`);
  }
}

async function loadData(source: string): Promise<ImageDataset> {
  if (source === "mnist") return await mnistDataset();
  await requireFile(source, "data file");
  return await loadImageZip(source);
}

/** Runs (or resumes) a SiD / SiDA / SiD²A distillation; see the module doc. */
export async function runDistillation(opts: DistillationOptions): Promise<DistillationResult> {
  // ---- validation: nothing is written before all of it passes ----
  const kind = opts.method === "sid" ? "sid" : opts.init ? "sid2a" : "sida";
  if (opts.method === "sid" && opts.init) {
    throw new UsageError("--init (SiD²A) applies to sida only");
  }
  if (
    opts.preset !== undefined && !(DISTILL_PRESET_NAMES as readonly string[]).includes(opts.preset)
  ) {
    throw new UsageError(
      `unknown preset '${opts.preset}' (expected one of: ${DISTILL_PRESET_NAMES.join(", ")})`,
    );
  }
  if (!opts.out) throw new UsageError("--out (the run folder) is required");
  if (!opts.teacher) throw new UsageError("--teacher is required");
  await requireFile(opts.teacher, "teacher file");
  if (opts.init) await requireFile(opts.init, "initial generator file");
  if (opts.data && opts.data !== "mnist") await requireFile(opts.data, "data file");
  if (opts.method === "sida" && !opts.data) {
    throw new UsageError("SiDA needs real data: give --data (a dataset zip or mnist)");
  }
  const backend = await initBackend(opts.backend);
  const teacher = await loadNet(opts.teacher, "teacher");
  let initNet: EDMPrecond | undefined;
  let distiller: Distiller | undefined;
  try {
    const presetName = opts.preset ?? guessPreset(teacher);
    if (!presetName) {
      throw new UsageError(
        `no preset fits a ${teacher.imgResolution}x${teacher.imgResolution}x${teacher.imgChannels} teacher; give --preset`,
      );
    }
    const preset = distillPreset(presetName, opts.method, { sid2a: kind === "sid2a" });
    let config: DistillConfig;
    try {
      config = resolveDistillConfig({ ...preset.config, ...opts.overrides, method: opts.method });
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    const durationKimg = positiveKimg("duration", opts.durationKimg ?? preset.durationKimg);
    const tickKimg = positiveKimg("tick", opts.tickKimg ?? preset.tickKimg);
    const snapKimg = positiveKimg("snap", opts.snapKimg ?? preset.snapKimg);
    const dumpKimg = positiveKimg("dump", opts.dumpKimg ?? preset.dumpKimg);
    if (teacher.labelDim > 0 && !opts.data) {
      throw new UsageError(
        `the teacher is conditional (${teacher.labelDim} classes): give labelled --data`,
      );
    }
    const dataset = opts.data ? await loadData(opts.data) : undefined;
    if (dataset) {
      if (
        dataset.resolution !== teacher.imgResolution || dataset.channels !== teacher.imgChannels
      ) {
        throw new UsageError(
          `data ${opts.data} hold ${dataset.resolution}x${dataset.resolution}x${dataset.channels} ` +
            `images, the teacher needs ${teacher.imgResolution}x${teacher.imgResolution}x${teacher.imgChannels}`,
        );
      }
      if (teacher.labelDim > 0 && dataset.labelDim !== teacher.labelDim) {
        throw new UsageError(
          dataset.labelDim === 0
            ? `the teacher is conditional (${teacher.labelDim} classes) but ${opts.data} has no labels`
            : `${opts.data} has ${dataset.labelDim} classes, the teacher ${teacher.labelDim}`,
        );
      }
    }
    if (config.augment && teacher.augmentDim === 0) {
      throw new UsageError(
        "augmentation needs a teacher with an augmentation embedding (augment_dim 9); use --augment 0",
      );
    }
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
        config: toEdmKwargs(teacher.config),
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
    // One process at a time in the run folder (lib/io/lock.ts), taken before reading its state.
    await using _lock = await lockRunFolder(opts.out, { task: opts.method });
    const latest = await findLatestState(opts.out);
    let elapsedBefore = 0;
    if (latest) {
      const saved = await readTrainingState(latest);
      const why = runIncompatibility(saved.run, run);
      if (why) {
        throw new UsageError(`${opts.out} holds a run that cannot be continued: ${why}`);
      }
      try {
        distiller.load(saved.state);
      } catch (e) {
        throw new IoError(`${latest}: ${(e as Error).message}`);
      }
      elapsedBefore = saved.elapsedSec;
    }

    // ---- training ----
    const say = (s: string) => {
      if (!opts.quiet) console.error(s);
    };
    say(describeBackend(backend));
    say(
      latest
        ? `resuming ${kind} from ${latest} at kimg ${distiller.curNimg / 1000}`
        : `starting ${kind} in ${opts.out}: preset ${presetName}, batch ${config.batch} ` +
          `(${distiller.rounds} x ${config.microBatch}), ${durationKimg} kimg`,
    );
    await Deno.mkdir(opts.out, { recursive: true });
    await removeStaleTemporaries(opts.out);
    return await trainLoop(distiller, run, {
      out: opts.out,
      resumed: latest !== null,
      elapsedBefore,
      signal: opts.signal,
      quiet: opts.quiet ?? false,
      nonFiniteLimit: opts.nonFiniteLimit,
    });
  } finally {
    initNet?.dispose();
    distiller?.dispose();
    teacher.dispose();
  }
}

async function trainLoop(
  d: Distiller,
  run: RunInfo,
  o: {
    out: string;
    resumed: boolean;
    elapsedBefore: number;
    signal?: AbortSignal;
    quiet: boolean;
    nonFiniteLimit?: number;
  },
): Promise<DistillationResult> {
  const totalNimg = Math.round(run.durationKimg * 1000);
  const name = runName(o.out);
  const progress = new Progress(totalNimg);
  const say = (s: string) => {
    if (!o.quiet) progress.message(s);
  };
  const result: DistillationResult = {
    curNimg: d.curNimg,
    iterations: 0,
    interrupted: false,
    resumed: o.resumed,
    statePath: null,
    snapshotPath: null,
  };
  if (d.curNimg >= totalNimg) {
    say(`nothing to do: ${d.curNimg / 1000} kimg already done (--duration ${run.durationKimg})`);
    return result;
  }
  const start = performance.now();
  const elapsed = () => o.elapsedBefore + (performance.now() - start) / 1000;
  let lastDump = d.curNimg;
  let lastSnap = d.curNimg;
  let tick = 0;
  let tickStartNimg = d.curNimg;
  let tickStartTime = performance.now();
  let tickStats: IterationStats[] = [];
  let speed = NaN;
  const dump = async () => {
    result.statePath = await writeTrainingState(o.out, await d.state(), run, {
      elapsedSec: elapsed(),
    });
    lastDump = d.curNimg;
  };
  const guard = new NonFiniteGuard(o.nonFiniteLimit ?? DEFAULT_NON_FINITE_LIMIT, "distillation");
  while (d.curNimg < totalNimg) {
    const stats = await d.step();
    result.iterations++;
    tickStats.push(stats);
    try {
      guard.observe({
        lossFake: stats.lossFake,
        lossD: stats.lossD,
        lossG: stats.lossG,
        lossGGan: stats.lossGGan,
        keptFake: stats.keptFake,
        keptG: stats.keptG,
      }, d.curNimg);
    } catch (e) {
      if (!(e instanceof NonFiniteTrainingError)) throw e;
      const last = result.statePath ?? await findLatestState(o.out);
      throw new NonFiniteTrainingError(
        `${e.message}; ${last ? `last good state: ${last}` : "no state had been written yet"}`,
      );
    }
    const ips = d.config.batch / stats.timings.total;
    speed = Number.isFinite(speed) ? 0.8 * speed + 0.2 * ips : ips;
    if (!o.quiet) progress.iteration(stats, speed);
    // Let signal handlers run: on the cpu backend an iteration may never leave the microtask
    // queue, and a SIGINT listener is a macrotask.
    await new Promise((resolve) => setTimeout(resolve, 0));
    const done = d.curNimg >= totalNimg;
    const interrupted = o.signal?.aborted ?? false;
    // A tick ends after the first iteration, then every tickKimg (sida-spec §4.6).
    if (
      done || interrupted || tick === 0 || d.curNimg >= tickStartNimg + run.tickKimg * 1000
    ) {
      const now = performance.now();
      const record = tickRecord(tickStats, {
        tick,
        elapsedSec: elapsed(),
        secPerTick: (now - tickStartTime) / 1000,
        batch: d.config.batch,
      });
      await appendLog(o.out, { ...record, memory: { numTensors: tf.memory().numTensors } });
      if (!o.quiet) progress.tick(record);
      tick++;
      tickStartNimg = d.curNimg;
      tickStartTime = now;
      tickStats = [];
    }
    // Nothing is written while non-finite iterations last: the folder keeps its last good state.
    const writes = guard.writes({ done, interrupted });
    if (writes === "interrupt") {
      say(`interrupted during non-finite iterations: the last good state is kept`);
      result.interrupted = true;
      break;
    }
    if (writes === "skip") continue;
    if (done || d.curNimg >= lastSnap + run.snapKimg * 1000) {
      result.snapshotPath = await writeSnapshot(o.out, d.Gema, d.curNimg, {
        alpha: d.config.alpha,
        run: name,
        method: run.kind,
      });
      lastSnap = d.curNimg;
    }
    if (done || interrupted || d.curNimg >= lastDump + run.dumpKimg * 1000) {
      await dump();
      if (interrupted) {
        say(`interrupted: state written to ${result.statePath}`);
        result.interrupted = true;
        break;
      }
    }
  }
  progress.finish();
  result.curNimg = d.curNimg;
  if (!result.interrupted) {
    say(`done: ${d.curNimg / 1000} kimg; state ${result.statePath}`);
  }
  return result;
}

/** Flags of `deno task sid` / `deno task sida` (names follow `sida_train.py`; units in kimg). */
const NUMBER_FLAGS: Record<
  string,
  { key: keyof DistillConfig; integer?: boolean; scale?: number }
> = {
  alpha: { key: "alpha" },
  tmax: { key: "tmax" },
  "init-sigma": { key: "initSigma" },
  lr: { key: "lr" },
  glr: { key: "glr" },
  "g-beta1": { key: "gBeta1" },
  batch: { key: "batch", integer: true },
  "micro-batch": { key: "microBatch", integer: true },
  ls: { key: "ls" },
  lsg: { key: "lsg" },
  lsd: { key: "lsd" },
  "lsg-gan": { key: "lsgGan" },
  ema: { key: "emaKimg" },
  seed: { key: "seed", integer: true },
  dropout: { key: "dropout" },
  "g-warmup-kimg": { key: "gWarmupNimg", scale: 1000 },
  "gan-warmup-kimg": { key: "ganWarmupNimg", scale: 1000 },
};

/** Flags that only SiDA has (a SiD run rejects them as unknown). */
const SIDA_ONLY = ["lsd", "lsg-gan", "g-warmup-kimg", "gan-warmup-kimg", "init"];

/** The usage line of a distillation task. */
export function distillUsage(method: DistillMethod): string {
  const sida = method === "sida";
  return `usage: deno task ${method} --teacher FILE --out DIR [--data ZIP|mnist]` +
    (sida ? " [--init SID_GENERATOR (SiD²A)]" : "") +
    ` [--preset ${DISTILL_PRESET_NAMES.join("|")}] [--duration KIMG] [--tick KIMG] [--snap KIMG]` +
    ` [--dump KIMG] [--batch N] [--micro-batch N] [--alpha A] [--tmax T] [--init-sigma S]` +
    ` [--lr LR] [--glr LR] [--g-beta1 B] [--ls S] [--lsg S]` +
    (sida ? " [--lsd S] [--lsg-gan S] [--g-warmup-kimg K] [--gan-warmup-kimg K]" : "") +
    ` [--ema KIMG] [--dropout P] [--augment 0|1] [--seed N] [--backend ${
      [...BACKEND_NAMES, "auto"].join("|")
    }]`;
}

/**
 * Parses a distillation task's command line into {@linkcode DistillationOptions} (without
 * `signal`). Every number is checked here; a bad one is a one-line {@linkcode UsageError}.
 */
export function parseDistillArgs(method: DistillMethod, args: string[]): DistillationOptions {
  const usage = distillUsage(method);
  const numeric = Object.keys(NUMBER_FLAGS).filter((k) =>
    method === "sida" || !SIDA_ONLY.includes(k)
  );
  const f = parseFlags(args, {
    string: [
      ...numeric,
      "duration",
      "tick",
      "snap",
      "dump",
      "augment",
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
  const overrides: Partial<DistillConfig> = {};
  for (const flag of numeric) {
    if (f[flag] === undefined) continue;
    const spec = NUMBER_FLAGS[flag];
    const v = numberFlag(flag, f[flag], NaN, { integer: spec.integer, min: 0 });
    (overrides as Record<string, number>)[spec.key] = v * (spec.scale ?? 1);
  }
  if (f.augment !== undefined) {
    if (f.augment !== "0" && f.augment !== "1") {
      throw new UsageError(`--augment must be 0 or 1, got '${f.augment}'`);
    }
    overrides.augment = f.augment === "1";
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
    overrides,
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
  const controller = new AbortController();
  let interrupts = 0;
  const onInterrupt = () => {
    if (++interrupts > 1) Deno.exit(130);
    console.error("\nSIGINT: finishing this iteration and writing a training state…");
    controller.abort();
  };
  Deno.addSignalListener("SIGINT", onInterrupt);
  try {
    const result = await runDistillation({ ...opts, signal: controller.signal });
    if (result.interrupted) Deno.exit(130);
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
  }
}
