/**
 * `deno task distill`: the whole chain — import the teacher, SiD pre-distillation, SiD²A
 * fine-tuning (SiDA started from the SiD generator), evaluation of both one-step generators —
 * in one run folder, with a report (`report.md`, `report.json`), plots and sample grids.
 *
 * Run folder (`--out`):
 *
 * - `chain.json`: the training settings the chain was started with (teacher SHA-256, preset, data,
 *   per stage: kimg, cadence and every hyper-parameter). A later run on the folder must ask for
 *   the same; otherwise it stops before doing anything, saying which setting differs.
 * - `import/teacher.safetensors`: the teacher in our format (a copy of a `.safetensors` teacher,
 *   or the conversion of a `.pkl` / `.pt`); both distillation stages read it.
 * - `sid/`, `sida/`: run folders of `runDistillation` (training states, EMA snapshots,
 *   `log.jsonl`); each resumes from its latest training state.
 * - `eval/sid/`, `eval/sida/` (and `eval/teacher/` with `--eval-teacher`): `metrics.json` and
 *   `samples.png` of the final generator, `snapshot-<kimg>.json` of earlier snapshots.
 * - `plots/losses.png`, `plots/fid.png` (SVG when resvg cannot load), `report.md`, `report.json`,
 *   `chain-log.jsonl` (one line per stage and run: ran, resumed or skipped).
 *
 * A stage ends by writing `<stage>/stage-done.json` atomically; a rerun skips every stage that
 * has one. Everything is validated before the run folder is touched: the stage names, the
 * numbers, the preset, the teacher file, the data (resolution and channels against the teacher's,
 * labels for a conditional teacher), the detector and the reference statistics, and the folder's
 * earlier settings.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { basename, join } from "node:path";
import { loadImageZip } from "../data/dataset.ts";
import { appendTextNamed, mkdirNamed, PARTIAL_FILE_RE, writeFileAtomic } from "../io/atomic.ts";
import { LOCK_FILE, lockRunFolder } from "../io/lock.ts";
import { checkFiniteWeights, IoError } from "../io/host_tensor.ts";
import { readSafetensors, readSafetensorsHeader } from "../io/safetensors.ts";
import { importToSafetensors } from "../nets/import.ts";
import { configFromMetadata, loadNetwork } from "../nets/network.ts";
import type { DistillConfig } from "../distill/distiller.ts";
import { resolveDistillConfig } from "../distill/distiller.ts";
import { DISTILL_PRESET_NAMES, distillPreset, guessPreset } from "../distill/presets.ts";
import {
  checkPresetName,
  distillFlagNames,
  distillFlagUsage,
  distillOverrides,
} from "../distill/settings.ts";
import { augmentMismatch, dataMismatch } from "../data/fit.ts";
import { withInterrupt } from "../train/driver.ts";
import { findLatestState, kimgLabel, snapshotFileName } from "../train/run_folder.ts";
import { runDistillation } from "../distill/train.ts";
import { DEFAULT_MNIST_FEATURES, DEFAULT_MNIST_REF_STATS } from "../metrics/mnist_features.ts";
import { loadRefStats, saveRefStats } from "../metrics/ref_stats.ts";
import { datasetFeatures } from "../metrics/evaluate.ts";
import type { Detector } from "../metrics/detector.ts";
import type { Stats } from "../metrics/stats.ts";
import { BACKEND_NAMES, currentBackend } from "../runtime/backend.ts";
import {
  checkBackendName,
  ensureBackend,
  numberFlag,
  parseFlags,
  UsageError,
} from "../runtime/cli.ts";
import {
  type EvalSettings,
  evaluateGenerator,
  type FeatureKind,
  type GeneratorMetrics,
  loadDetector,
  readJsonOrNull,
  sameEvaluation,
  type SamplerSpec,
} from "./evaluate.ts";
import { type FidPoint, type StageLossLog, writeChainPlots } from "./plots.ts";
import {
  type ChainReport,
  readShippedTeacherFid,
  relativeTo,
  REPORT_FORMAT,
  type SnapshotMetrics,
  type StageReport,
  type TeacherFid,
  writeReport,
} from "./report.ts";

/** The stages, in the order they run. */
export const STAGE_NAMES = ["import", "sid", "sida", "eval"] as const;

/** A stage name. */
export type StageName = typeof STAGE_NAMES[number];

/** The shipped MNIST teacher (`deno task teacher`): the default teacher. */
export const DEFAULT_MNIST_TEACHER: string =
  new URL("../../data/mnist-teacher.safetensors", import.meta.url).pathname;

/** The default run folder of the no-argument run. */
export const DEFAULT_MNIST_OUT = "runs/distill-mnist";

/**
 * Default kimg per stage for the `mnist` preset at `--budget 1`: 80 SiD and 36 SiD²A iterations
 * of 64 images, so that the whole chain (training, then FID/IS of the snapshots at 1000 samples)
 * fits in 20 minutes on a 2-core CPU machine with the `native` backend, where a SiDA iteration
 * takes 8.3 s (`deno task bench:distill --configs mnist`, 2026-11-25, after the direct C
 * convolutions; it took 25–31 s before them, when these defaults were 28 + 12 iterations).
 */
export const MNIST_DEFAULT_KIMG = { sid: 5.12, sida: 2.304 } as const;

/** Default samples per generator for FID and IS. */
export const DEFAULT_EVAL_NUM = 1000;

/** Format tags of the chain's files. */
export const CHAIN_FORMAT = "sida-distill-chain/1";
/** Format tag of `stage-done.json`. */
export const STAGE_DONE_FORMAT = "sida-stage-done/1";

/** Options of {@linkcode runDistillChain}. */
export interface DistillChainOptions {
  /** Teacher file (`.safetensors`, `.pkl`, `.pt`); default {@linkcode DEFAULT_MNIST_TEACHER}. */
  teacher?: string;
  /** Real data: a dataset zip or `mnist`; default `mnist` for the `mnist` preset. */
  data?: string;
  /** Reference statistics (`.npz` / `.pkl`); default the shipped MNIST ones with MNIST features. */
  ref?: string;
  /** Distillation preset; default guessed from the teacher. */
  preset?: string;
  /** The run folder; default {@linkcode DEFAULT_MNIST_OUT} (or `runs/distill-<teacher>`). */
  out?: string;
  /** Stages to run (default all); finished ones are skipped anyway. */
  stages?: readonly string[];
  /** Also sample the teacher (Heun, 18 steps = 35 NFE) and compute its FID and IS. */
  evalTeacher?: boolean;
  /** Samples per generator for FID / IS (default {@linkcode DEFAULT_EVAL_NUM}). */
  num?: number;
  /** Backend (`webgpu`, `native`, `cpu`, `auto`). */
  backend?: string;
  /** Factor on the per-stage kimg (default 1). */
  budget?: number;
  /** kimg of the SiD stage before `budget` (default: the preset's). */
  sidKimg?: number;
  /** kimg of the SiD²A stage before `budget` (default: the preset's). */
  sidaKimg?: number;
  /** Cadence (kimg, both stages); default derived from the stage length and the preset. */
  tickKimg?: number;
  snapKimg?: number;
  dumpKimg?: number;
  /** Hyper-parameters over the preset's, for both stages. */
  overrides?: Partial<DistillConfig>;
  /** Hyper-parameters of one stage, over `overrides` (`--sid-alpha`, `--sida-lsg-gan`, …). */
  stageOverrides?: { sid?: Partial<DistillConfig>; sida?: Partial<DistillConfig> };
  /** SiD²A warm-ups (kimg); default the preset's, scaled down to the stage length. */
  gWarmupKimg?: number;
  ganWarmupKimg?: number;
  /** Detector kind; default `mnist` for 32×32 grey teachers, else `inception`. */
  features?: FeatureKind;
  /** Detector file; default the shipped MNIST feature network / `SIDA_INCEPTION`. */
  detector?: string;
  /** Images per generator call in the evaluation (default 64). */
  evalBatch?: number;
  /** Seed of the evaluation latents (default 0). */
  evalSeed?: number;
  /** Stops a training stage after its iteration (state written) and the evaluation. */
  signal?: AbortSignal;
  /** No progress lines. */
  quiet?: boolean;
}

/** What happened to a stage in one run. */
export type StageStatus = "ran" | "resumed" | "skipped" | "not selected" | "interrupted";

/** What {@linkcode runDistillChain} returns. */
export interface DistillChainResult {
  /** The run folder. */
  out: string;
  /** Per stage: ran, resumed, skipped (already done), not selected, or interrupted. */
  stages: Record<StageName, StageStatus>;
  /** True when stopped by the signal (the report is not rewritten then). */
  interrupted: boolean;
  /** The report written (null when interrupted). */
  report: ChainReport | null;
}

/** One distillation stage's plan (part of `chain.json`). */
interface StagePlan {
  kimg: number;
  tickKimg: number;
  snapKimg: number;
  dumpKimg: number;
  config: DistillConfig;
}

/** `chain.json`. */
interface ChainSettings {
  format: typeof CHAIN_FORMAT;
  teacher: { source: string; sha256: string };
  preset: string;
  data: string;
  sid: StagePlan;
  sida: StagePlan;
}

/** `<stage>/stage-done.json` of a distillation stage. */
interface TrainDone {
  format: typeof STAGE_DONE_FORMAT;
  stage: "sid" | "sida";
  finishedAt: string;
  nimg: number;
  kimg: number;
  snapshot: string;
  trainSeconds: number | null;
  backend: string;
  resumed: boolean;
  iterationsThisSession: number;
}

/** `import/stage-done.json`. */
interface ImportDone {
  format: typeof STAGE_DONE_FORMAT;
  stage: "import";
  finishedAt: string;
  source: string;
  sha256: string;
  teacher: string;
  shippedFid: TeacherFid | null;
}

/** `eval/stage-done.json`. */
interface EvalDone {
  format: typeof STAGE_DONE_FORMAT;
  stage: "eval";
  finishedAt: string;
  settings: EvalSettings;
  generators: string[];
}

// ---------------------------------------------------------------------------------------------
// Small helpers

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** SHA-256 of a file, streamed. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  const file = await Deno.open(path, { read: true });
  try {
    const buf = new Uint8Array(1 << 20);
    for (;;) {
      const n = await file.read(buf);
      if (n === null) break;
      hash.update(buf.subarray(0, n));
    }
  } finally {
    file.close();
  }
  return hash.digest("hex");
}

async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFileAtomic(path, new TextEncoder().encode(JSON.stringify(value, null, 2) + "\n"));
}

function firstDifference(a: unknown, b: unknown, path = ""): string | null {
  if (JSON.stringify(a) === JSON.stringify(b)) return null;
  if (a && b && typeof a === "object" && typeof b === "object" && !Array.isArray(a)) {
    const ra = a as Record<string, unknown>;
    const rb = b as Record<string, unknown>;
    for (const k of new Set([...Object.keys(ra), ...Object.keys(rb)])) {
      const d = firstDifference(ra[k], rb[k], path ? `${path}.${k}` : k);
      if (d) return d;
    }
  }
  return `${path || "settings"} ${JSON.stringify(a)} (now ${JSON.stringify(b)})`;
}

const SNAPSHOT_RE = /^network-snapshot-(\d{6,})(?:\.(\d{3}))?\.safetensors$/;

/** The EMA snapshots of a run folder, by images seen. */
async function listSnapshots(dir: string): Promise<{ name: string; nimg: number }[]> {
  const out: { name: string; nimg: number }[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      const m = e.isFile ? SNAPSHOT_RE.exec(e.name) : null;
      if (m) out.push({ name: e.name, nimg: Number(m[1]) * 1000 + Number(m[2] ?? 0) });
    }
  } catch {
    // no folder
  }
  return out.sort((a, b) => a.nimg - b.nimg);
}

/** Training seconds recorded in a run folder's latest training state, or null. */
async function trainSeconds(dir: string): Promise<number | null> {
  const state = await findLatestState(dir);
  if (!state) return null;
  try {
    const { metadata } = await readSafetensorsHeader(state);
    const c = JSON.parse(metadata.counters ?? "{}");
    return typeof c.elapsedSec === "number" ? c.elapsedSec : null;
  } catch {
    return null;
  }
}

/** Reads `log.jsonl`; a resumed session's records replace those it repeats. */
async function readTickLog(path: string): Promise<Record<string, unknown>[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return [];
  }
  const kept: Record<string, unknown>[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(line);
    } catch {
      continue; // a line cut by a kill
    }
    const k = typeof r.kimg === "number" ? r.kimg : NaN;
    if (!Number.isFinite(k)) continue;
    while (kept.length && (kept[kept.length - 1].kimg as number) >= k) kept.pop();
    kept.push(r);
  }
  return kept;
}

function stageTitle(stage: "sid" | "sida"): string {
  return stage === "sid" ? "SiD" : "SiD²A";
}

// ---------------------------------------------------------------------------------------------
// Planning and validation

interface TeacherInfo {
  resolution: number;
  channels: number;
  labelDim: number;
  augmentDim: number;
  config: { imgResolution: number; imgChannels: number; labelDim: number };
}

/** The teacher's image shape, from the safetensors header or by importing a pickle. */
async function teacherInfo(path: string): Promise<TeacherInfo> {
  const lower = path.toLowerCase();
  try {
    if (lower.endsWith(".pkl") || lower.endsWith(".pt") || lower.endsWith(".pth")) {
      const net = await loadNetwork(path);
      const info = {
        resolution: net.imgResolution,
        channels: net.imgChannels,
        labelDim: net.labelDim,
        augmentDim: net.augmentDim,
      };
      net.dispose();
      return {
        ...info,
        config: {
          imgResolution: info.resolution,
          imgChannels: info.channels,
          labelDim: info.labelDim,
        },
      };
    }
    const { metadata } = await readSafetensorsHeader(path);
    const c = configFromMetadata(metadata, path);
    // Refuse NaN weights before the run folder exists (a pickle is checked by its import above).
    checkFiniteWeights((await readSafetensors(path)).tensors, path);
    return {
      resolution: c.imgResolution,
      channels: c.imgChannels,
      labelDim: c.labelDim,
      augmentDim: c.augmentDim,
      config: { imgResolution: c.imgResolution, imgChannels: c.imgChannels, labelDim: c.labelDim },
    };
  } catch (e) {
    const msg = String((e as Error)?.message ?? e).split("\n")[0];
    throw new IoError(msg.includes(path) ? `teacher: ${msg}` : `teacher ${path}: ${msg}`);
  }
}

function positive(name: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isFinite(v) && v > 0)) {
    throw new UsageError(`--${name} must be a number > 0, got ${v}`);
  }
}

/** The default teacher: `SIDA_MNIST_TEACHER` when set, else the shipped one. */
export function defaultTeacher(): string {
  try {
    return Deno.env.get("SIDA_MNIST_TEACHER") || DEFAULT_MNIST_TEACHER;
  } catch {
    return DEFAULT_MNIST_TEACHER;
  }
}

/** Default per-stage kimg of a preset at budget 1. */
export function defaultStageKimg(preset: string): { sid: number; sida: number } {
  if (preset === "mnist") return { ...MNIST_DEFAULT_KIMG };
  return {
    sid: distillPreset(preset, "sid").durationKimg,
    sida: distillPreset(preset, "sida", { sid2a: true }).durationKimg,
  };
}

/** Rounds kimg to whole images. */
function roundKimg(k: number): number {
  return Math.max(1, Math.round(k * 1000)) / 1000;
}

interface Plan {
  out: string;
  stages: Set<StageName>;
  teacherSource: string;
  settings: ChainSettings;
  evalSettings: EvalSettings;
  refStats: Stats | null;
  evalTeacher: boolean;
  backend?: string;
}

async function plan(o: DistillChainOptions): Promise<Plan> {
  // ---- pure checks ----
  const stages = new Set<StageName>();
  for (const s of o.stages ?? STAGE_NAMES) {
    if (!(STAGE_NAMES as readonly string[]).includes(s)) {
      throw new UsageError(`unknown stage '${s}' (expected some of: ${STAGE_NAMES.join(", ")})`);
    }
    stages.add(s as StageName);
  }
  if (!stages.size) throw new UsageError(`--stages is empty (${STAGE_NAMES.join(", ")})`);
  checkPresetName(o.preset);
  checkBackendName(o.backend);
  positive("budget", o.budget);
  positive("sid-kimg", o.sidKimg);
  positive("sida-kimg", o.sidaKimg);
  positive("tick", o.tickKimg);
  positive("snap", o.snapKimg);
  positive("dump", o.dumpKimg);
  positive("eval-batch", o.evalBatch);
  for (
    const [name, v] of [["g-warmup-kimg", o.gWarmupKimg], ["gan-warmup-kimg", o.ganWarmupKimg]]
  ) {
    if (v !== undefined && !(Number.isFinite(v) && (v as number) >= 0)) {
      throw new UsageError(`--${name} must be a number ≥ 0, got ${v}`);
    }
  }
  const num = o.num ?? DEFAULT_EVAL_NUM;
  if (!Number.isInteger(num) || num < 2) {
    throw new UsageError(`--num must be an integer ≥ 2, got ${o.num}`);
  }
  if (o.features !== undefined && o.features !== "mnist" && o.features !== "inception") {
    throw new UsageError(`--features must be mnist or inception, got '${o.features}'`);
  }

  // ---- the teacher ----
  const teacherSource = o.teacher ?? defaultTeacher();
  if (!(await isFile(teacherSource))) {
    throw new UsageError(
      o.teacher === undefined
        ? `no MNIST teacher at ${teacherSource}: run \`deno task teacher\` first (or give --teacher)`
        : `teacher file '${teacherSource}' not found`,
    );
  }
  // The backend is named and started once for the whole chain (the stages find it running).
  try {
    await ensureBackend(o.backend);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const teacher = await teacherInfo(teacherSource);
  const sha256 = await sha256File(teacherSource);
  const presetName = o.preset ?? guessPreset(teacher.config);
  if (!presetName) {
    throw new UsageError(
      `no preset fits a ${teacher.resolution}x${teacher.resolution}x${teacher.channels} teacher; give --preset`,
    );
  }

  // ---- the data ----
  const data = o.data ?? (presetName === "mnist" ? "mnist" : undefined);
  if (!data) throw new UsageError("SiD²A needs real data: give --data (a dataset zip or mnist)");
  let shape: { resolution: number; channels: number; labelDim: number };
  if (data === "mnist") {
    shape = { resolution: 32, channels: 1, labelDim: 10 };
  } else {
    if (!(await isFile(data))) throw new UsageError(`data file '${data}' not found`);
    const ds = await loadImageZip(data, { maxImages: 1 });
    shape = { resolution: ds.resolution, channels: ds.channels, labelDim: ds.labelDim };
  }
  const mismatch = dataMismatch(shape, teacher, { what: `data ${data}` });
  if (mismatch) throw new UsageError(mismatch);

  // ---- the stages' settings ----
  const budget = o.budget ?? 1;
  const defaults = defaultStageKimg(presetName);
  const stagePlan = (stage: "sid" | "sida"): StagePlan => {
    const p = distillPreset(presetName, stage, { sid2a: stage === "sida" });
    const kimg = roundKimg(
      ((stage === "sid" ? o.sidKimg : o.sidaKimg) ?? defaults[stage]) * budget,
    );
    const overrides: Partial<DistillConfig> = { ...o.overrides, ...o.stageOverrides?.[stage] };
    if (stage === "sida") {
      // The preset's warm-ups are for its full length: shorter stages scale them down.
      const scale = Math.min(1, kimg / p.durationKimg);
      overrides.gWarmupNimg ??= o.gWarmupKimg !== undefined
        ? Math.round(o.gWarmupKimg * 1000)
        : Math.round((p.config.gWarmupNimg ?? 0) * scale);
      overrides.ganWarmupNimg ??= o.ganWarmupKimg !== undefined
        ? Math.round(o.ganWarmupKimg * 1000)
        : Math.round((p.config.ganWarmupNimg ?? 0) * scale);
    }
    let config: DistillConfig;
    try {
      config = resolveDistillConfig({ ...p.config, ...overrides, method: stage });
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    const noAugment = augmentMismatch(config.augment, teacher.augmentDim);
    if (noAugment) throw new UsageError(noAugment);
    return {
      kimg,
      tickKimg: o.tickKimg ?? Math.min(p.tickKimg, kimg / 20),
      snapKimg: o.snapKimg ?? Math.min(p.snapKimg, kimg / 2),
      dumpKimg: o.dumpKimg ?? Math.min(p.dumpKimg, kimg / 8),
      config,
    };
  };
  const settings: ChainSettings = {
    format: CHAIN_FORMAT,
    teacher: { source: teacherSource, sha256 },
    preset: presetName,
    data,
    sid: stagePlan("sid"),
    sida: stagePlan("sida"),
  };

  // ---- evaluation ----
  const features: FeatureKind = o.features ??
    (teacher.resolution === 32 && teacher.channels === 1 ? "mnist" : "inception");
  let detector = o.detector;
  if (!detector) {
    if (features === "mnist") detector = DEFAULT_MNIST_FEATURES;
    else {
      try {
        detector = Deno.env.get("SIDA_INCEPTION") ?? "";
      } catch {
        detector = "";
      }
    }
  }
  const ref = o.ref ?? (features === "mnist" ? DEFAULT_MNIST_REF_STATS : "");
  const evalSettings: EvalSettings = {
    num,
    seed: o.evalSeed ?? 0,
    batch: o.evalBatch ?? 64,
    features,
    detector,
    ref,
  };
  let refStats: Stats | null = null;
  const evaluating = stages.has("eval");
  if (evaluating) {
    if (features === "mnist" && teacher.resolution !== 32) {
      throw new UsageError(
        `the mnist detector needs 32×32 images, the teacher makes ${teacher.resolution}×${teacher.resolution}`,
      );
    }
    if (!detector) {
      throw new UsageError(
        "--features inception needs --detector inception-2015-12-05.pt (or SIDA_INCEPTION)",
      );
    }
    if (!(await isFile(detector))) throw new UsageError(`detector file '${detector}' not found`);
    if (!ref) throw new UsageError("FID needs reference statistics: give --ref stats.npz");
    if (!(await isFile(ref))) throw new UsageError(`reference statistics '${ref}' not found`);
    if (ref.toLowerCase().endsWith(".zip")) {
      // A dataset: its statistics are computed by the eval stage (and kept in the run folder).
      const ds = await loadImageZip(ref, { maxImages: 1 });
      if (ds.resolution !== teacher.resolution || ds.channels !== teacher.channels) {
        throw new UsageError(
          `reference images ${ref} are ${ds.resolution}x${ds.resolution}x${ds.channels}, ` +
            `the teacher makes ${teacher.resolution}x${teacher.resolution}x${teacher.channels}`,
        );
      }
    }
    const det = await loadDetector(features, detector);
    const dim = det.featureDim;
    det.dispose();
    refStats = ref.toLowerCase().endsWith(".zip") ? null : await loadRefStats(ref);
    if (refStats && refStats.dim !== dim) {
      throw new UsageError(
        `reference statistics ${ref} are ${refStats.dim}-d, the ${features} detector gives ${dim}-d features`,
      );
    }
  }

  // ---- the run folder ----
  const out = o.out ??
    (o.teacher === undefined
      ? DEFAULT_MNIST_OUT
      : `runs/distill-${basename(teacherSource).replace(/\.[^.]*$/, "")}`);
  await checkRunFolder(out, settings);
  const done = (s: string) => isFile(join(out, s, "stage-done.json"));
  if (stages.has("sida") && !stages.has("sid") && !(await done("sid")) && !(await done("sida"))) {
    throw new UsageError(
      "the sida stage (SiD²A) starts from the SiD generator: run the sid stage first",
    );
  }
  if (
    stages.has("eval") && !stages.has("sid") && !stages.has("sida") && !(await done("sid")) &&
    !o.evalTeacher
  ) {
    throw new UsageError("nothing to evaluate yet: run the sid (and sida) stages first");
  }
  return {
    out,
    stages,
    teacherSource,
    settings,
    evalSettings,
    refStats,
    evalTeacher: o.evalTeacher ?? false,
    backend: o.backend,
  };
}

/**
 * Refuses a run folder started with other training settings, or a non-empty folder that is no
 * chain's (its lock and stale temporaries aside).
 */
async function checkRunFolder(out: string, settings: ChainSettings): Promise<void> {
  const saved = await readJsonOrNull<ChainSettings>(join(out, "chain.json"));
  if (saved) {
    const savedTraining = { ...saved, teacher: { sha256: saved.teacher?.sha256 } };
    const nowTraining = { ...settings, teacher: { sha256: settings.teacher.sha256 } };
    const d = firstDifference(savedTraining, nowTraining);
    if (d) {
      throw new UsageError(
        `${out} was started with other settings: ${d}; use another --out, or the same settings`,
      );
    }
  } else if (await exists(out)) {
    for await (const e of Deno.readDir(out)) {
      if (e.name === LOCK_FILE || PARTIAL_FILE_RE.test(e.name)) continue;
      throw new UsageError(`${out} exists and is not a distillation run folder (no chain.json)`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The chain

/**
 * Runs (or resumes) the chain `import → sid → sida → eval` in `out`, then writes the report and
 * the plots; see the module doc. Throws a one-line {@linkcode UsageError} / `IoError` for bad
 * input, before anything is written.
 */
export async function runDistillChain(o: DistillChainOptions = {}): Promise<DistillChainResult> {
  const p = await plan(o);
  const say = (s: string) => {
    if (!o.quiet) console.error(s);
  };
  const { out, settings } = p;
  // One process at a time in the folder (a second one stops here, having written nothing); stale
  // temporaries of a killed run (e.g. a half-copied teacher) go once the lock is held.
  await using _lock = await lockRunFolder(out, { task: "distill" });
  // Settings are checked again under the lock: another chain may have started the folder since.
  await checkRunFolder(out, settings);
  if (!(await isFile(join(out, "chain.json")))) await writeJson(join(out, "chain.json"), settings);
  const status: Record<StageName, StageStatus> = {
    import: "not selected",
    sid: "not selected",
    sida: "not selected",
    eval: "not selected",
  };
  const log = async (stage: StageName, action: StageStatus) => {
    status[stage] = action;
    await appendTextNamed(
      join(out, "chain-log.jsonl"),
      JSON.stringify({ time: new Date().toISOString(), stage, action }) + "\n",
    );
  };
  const markerPath = (stage: StageName) => join(out, stage, "stage-done.json");
  const importedTeacher = join(out, "import", "teacher.safetensors");

  // ---- import ----
  if (p.stages.has("import")) {
    if (await isFile(markerPath("import"))) {
      say("stage import: done before, skipped");
      await log("import", "skipped");
    } else {
      say(`stage import: ${p.teacherSource} -> ${importedTeacher}`);
      const lower = p.teacherSource.toLowerCase();
      if (lower.endsWith(".safetensors")) {
        await writeFileAtomic(importedTeacher, await Deno.readFile(p.teacherSource));
      } else {
        await importToSafetensors(p.teacherSource, importedTeacher);
      }
      const marker: ImportDone = {
        format: STAGE_DONE_FORMAT,
        stage: "import",
        finishedAt: new Date().toISOString(),
        source: p.teacherSource,
        sha256: settings.teacher.sha256,
        teacher: relativeTo(out, importedTeacher),
        shippedFid: await readShippedTeacherFid(p.teacherSource, p.evalSettings),
      };
      await writeJson(markerPath("import"), marker);
      await log("import", "ran");
    }
  }
  const teacherPath = (await isFile(markerPath("import"))) ? importedTeacher : p.teacherSource;

  // ---- sid, sida ----
  for (const stage of ["sid", "sida"] as const) {
    if (!p.stages.has(stage)) continue;
    const sp = settings[stage];
    const prev = await readJsonOrNull<TrainDone>(markerPath(stage));
    if (prev && prev.nimg >= Math.round(sp.kimg * 1000)) {
      say(`stage ${stage}: done before (${prev.kimg} kimg), skipped`);
      await log(stage, "skipped");
      continue;
    }
    let init: string | undefined;
    if (stage === "sida") {
      const sid = await readJsonOrNull<TrainDone>(markerPath("sid"));
      if (!sid) {
        throw new UsageError("the sida stage (SiD²A) needs the finished sid stage's generator");
      }
      init = join(out, "sid", sid.snapshot);
    }
    say(`stage ${stage}: ${stageTitle(stage)}, ${sp.kimg} kimg in ${join(out, stage)}`);
    const r = await runDistillation({
      method: stage,
      teacher: teacherPath,
      data: settings.data,
      init,
      out: join(out, stage),
      preset: settings.preset,
      config: sp.config,
      durationKimg: sp.kimg,
      tickKimg: sp.tickKimg,
      snapKimg: sp.snapKimg,
      dumpKimg: sp.dumpKimg,
      backend: p.backend,
      signal: o.signal,
      quiet: o.quiet,
    });
    if (r.interrupted) {
      await log(stage, "interrupted");
      return { out, stages: status, interrupted: true, report: null };
    }
    const snaps = await listSnapshots(join(out, stage));
    const final = snaps[snaps.length - 1];
    if (!final || final.nimg !== r.curNimg) {
      throw new IoError(
        `${join(out, stage)}: no snapshot at ${r.curNimg} images (${snapshotFileName(r.curNimg)})`,
      );
    }
    const marker: TrainDone = {
      format: STAGE_DONE_FORMAT,
      stage,
      finishedAt: new Date().toISOString(),
      nimg: r.curNimg,
      kimg: r.curNimg / 1000,
      snapshot: final.name,
      trainSeconds: await trainSeconds(join(out, stage)),
      backend: currentBackend()?.name ?? "unknown",
      resumed: r.resumed,
      iterationsThisSession: r.iterations,
    };
    await writeJson(markerPath(stage), marker);
    await log(stage, r.resumed ? "resumed" : "ran");
  }

  // ---- eval ----
  if (p.stages.has("eval")) {
    const r = await evalStage(p, teacherPath, o, say);
    if (r === "interrupted") {
      await log("eval", "interrupted");
      return { out, stages: status, interrupted: true, report: null };
    }
    await log("eval", r);
  }

  const report = await buildReport(p, teacherPath);
  say(`report: ${join(out, "report.md")}`);
  for (const n of report.notes.filter((n) => n.startsWith("resvg"))) say(n);
  return { out, stages: status, interrupted: false, report };
}

interface EvalJob {
  stage: "sid" | "sida" | "teacher";
  generator: string;
  metricsPath: string;
  gridPath?: string;
  sampler: SamplerSpec;
}

const TEACHER_SAMPLER: SamplerSpec = { sampler: "heun", steps: 18 };
const ONE_STEP: SamplerSpec = { sampler: "onestep" };

/** The generators of the evaluation: finals first, then earlier snapshots, then the teacher. */
async function evalJobs(p: Plan, teacherPath: string): Promise<EvalJob[]> {
  const finals: EvalJob[] = [];
  const others: EvalJob[] = [];
  for (const stage of ["sid", "sida"] as const) {
    const done = await readJsonOrNull<TrainDone>(join(p.out, stage, "stage-done.json"));
    if (!done) continue;
    for (const s of await listSnapshots(join(p.out, stage))) {
      if (s.nimg > done.nimg) continue;
      const final = s.name === done.snapshot;
      const job: EvalJob = {
        stage,
        generator: join(p.out, stage, s.name),
        metricsPath: final
          ? join(p.out, "eval", stage, "metrics.json")
          : join(p.out, "eval", stage, `snapshot-${kimgLabel(s.nimg)}.json`),
        gridPath: final ? join(p.out, "eval", stage, "samples.png") : undefined,
        sampler: ONE_STEP,
      };
      (final ? finals : others).push(job);
    }
  }
  const jobs = [...finals, ...others];
  if (p.evalTeacher) {
    jobs.push({
      stage: "teacher",
      generator: teacherPath,
      metricsPath: join(p.out, "eval", "teacher", "metrics.json"),
      gridPath: join(p.out, "eval", "teacher", "samples.png"),
      sampler: TEACHER_SAMPLER,
    });
  }
  return jobs;
}

/**
 * Reference statistics of a dataset zip given as `--ref`: computed once with the detector and
 * kept in `eval/ref-stats.npz`, with `eval/ref-stats.json` naming the zip (path, size, mtime)
 * and detector so that a changed zip or detector is recomputed.
 */
async function datasetRefStats(
  p: Plan,
  detector: Detector,
  say: (s: string) => void,
): Promise<Stats> {
  const zip = p.evalSettings.ref;
  const info = await Deno.stat(zip);
  const key = {
    ref: zip,
    size: info.size,
    mtime: info.mtime?.toISOString() ?? null,
    features: p.evalSettings.features,
    detector: p.evalSettings.detector,
  };
  const npz = join(p.out, "eval", "ref-stats.npz");
  const sidecar = join(p.out, "eval", "ref-stats.json");
  const had = await readJsonOrNull<typeof key>(sidecar);
  if (had && JSON.stringify(had) === JSON.stringify(key) && (await isFile(npz))) {
    return await loadRefStats(npz);
  }
  const t0 = performance.now();
  const ds = await loadImageZip(zip);
  const acc = await datasetFeatures(detector, ds, { batch: p.evalSettings.batch });
  const stats: Stats = { mu: acc.stats.mean(), sigma: acc.stats.cov(), dim: acc.stats.dim };
  await mkdirNamed(join(p.out, "eval"));
  await saveRefStats(npz, stats);
  await writeJson(sidecar, key);
  say(
    `stage eval: reference statistics of ${zip} (${ds.size} images, ` +
      `${((performance.now() - t0) / 1000).toFixed(0)} s) kept in ${relativeTo(p.out, npz)}`,
  );
  return stats;
}

async function evalStage(
  p: Plan,
  teacherPath: string,
  o: DistillChainOptions,
  say: (s: string) => void,
): Promise<StageStatus> {
  const jobs = await evalJobs(p, teacherPath);
  const todo: EvalJob[] = [];
  for (const j of jobs) {
    const m = await readJsonOrNull<GeneratorMetrics>(j.metricsPath);
    if (!sameEvaluation(m, j.generator, p.evalSettings, j.sampler)) todo.push(j);
  }
  const marker = join(p.out, "eval", "stage-done.json");
  const generators = jobs.map((j) => relativeTo(p.out, j.generator));
  if (!todo.length && (await isFile(marker))) {
    say("stage eval: done before, skipped");
    return "skipped";
  }
  if (todo.length) {
    const detector = await loadDetector(p.evalSettings.features, p.evalSettings.detector);
    try {
      const refStats = p.refStats ?? await datasetRefStats(p, detector, say);
      for (const j of todo) {
        const what = j.stage === "teacher"
          ? `teacher (Heun, ${TEACHER_SAMPLER.steps} steps)`
          : relativeTo(p.out, j.generator);
        const t0 = performance.now();
        const m = await evaluateGenerator(
          j.generator,
          detector,
          refStats,
          p.evalSettings,
          j.sampler,
          { metricsPath: j.metricsPath, gridPath: j.gridPath },
          { signal: o.signal },
        );
        if (!m) return "interrupted";
        say(
          `stage eval: ${what}: FID ${m.fid.toFixed(3)}, IS ${m.is.mean.toFixed(3)} ` +
            `(${p.evalSettings.num} samples, ${((performance.now() - t0) / 1000).toFixed(0)} s)`,
        );
      }
    } finally {
      detector.dispose();
    }
  }
  const done: EvalDone = {
    format: STAGE_DONE_FORMAT,
    stage: "eval",
    finishedAt: new Date().toISOString(),
    settings: p.evalSettings,
    generators,
  };
  await writeJson(marker, done);
  return "ran";
}

// ---------------------------------------------------------------------------------------------
// Report

async function buildReport(p: Plan, teacherPath: string): Promise<ChainReport> {
  const { out, evalSettings: es } = p;
  const notes: string[] = [];
  const stages: StageReport[] = [];
  const lossLogs: StageLossLog[] = [];
  let offset = 0;
  for (const stage of ["sid", "sida"] as const) {
    const done = await readJsonOrNull<TrainDone>(join(out, stage, "stage-done.json"));
    if (!done) continue;
    const stageOffset = offset;
    lossLogs.push({
      stage: stageTitle(stage),
      offsetKimg: stageOffset,
      records: await readTickLog(join(out, stage, "log.jsonl")),
    });
    const generator = join(out, stage, done.snapshot);
    const final = await readJsonOrNull<GeneratorMetrics>(join(out, "eval", stage, "metrics.json"));
    const ok = sameEvaluation(final, generator, es, ONE_STEP) ? final! : null;
    if (!ok) {
      notes.push(
        `${
          stageTitle(stage)
        } is not evaluated with this report's settings yet: run \`--stages eval\`.`,
      );
    }
    const snapshots: SnapshotMetrics[] = [];
    for (const s of await listSnapshots(join(out, stage))) {
      if (s.nimg > done.nimg) continue;
      const path = s.name === done.snapshot
        ? join(out, "eval", stage, "metrics.json")
        : join(out, "eval", stage, `snapshot-${kimgLabel(s.nimg)}.json`);
      const m = await readJsonOrNull<GeneratorMetrics>(path);
      if (!sameEvaluation(m, join(out, stage, s.name), es, ONE_STEP)) continue;
      snapshots.push({
        generator: relativeTo(out, join(out, stage, s.name)),
        kimg: s.nimg / 1000,
        cumulativeKimg: roundKimg(stageOffset + s.nimg / 1000),
        fid: m!.fid,
        is: m!.is,
      });
    }
    const gridPath = join(out, "eval", stage, "samples.png");
    stages.push({
      stage,
      title: stageTitle(stage),
      kimg: done.kimg,
      cumulativeKimg: roundKimg(stageOffset + done.kimg),
      trainSeconds: done.trainSeconds === null ? null : Math.round(done.trainSeconds * 10) / 10,
      backend: done.backend,
      resumed: done.resumed,
      generator: relativeTo(out, generator),
      fid: ok?.fid ?? null,
      is: ok?.is ?? null,
      num: ok ? ok.num : null,
      ref: ok ? ok.ref : null,
      evalSeconds: ok?.evalSeconds ?? null,
      evalBackend: ok?.backend ?? null,
      metricsFile: ok ? relativeTo(out, join(out, "eval", stage, "metrics.json")) : null,
      grid: ok && (await isFile(gridPath)) ? relativeTo(out, gridPath) : null,
      snapshots,
    });
    offset = roundKimg(stageOffset + done.kimg);
  }

  // The teacher's FID: as shipped, and evaluated here with the report's settings.
  let evaluated: TeacherFid | null = null;
  const tm = await readJsonOrNull<GeneratorMetrics>(join(out, "eval", "teacher", "metrics.json"));
  if (sameEvaluation(tm, teacherPath, es, TEACHER_SAMPLER)) {
    evaluated = {
      fid: tm!.fid,
      num: tm!.num,
      nfe: tm!.nfe,
      ref: tm!.ref,
      is: tm!.is,
      origin: "evaluated",
      source: relativeTo(out, join(out, "eval", "teacher", "metrics.json")),
    };
  }
  const imp = await readJsonOrNull<ImportDone>(join(out, "import", "stage-done.json"));
  // The teacher's own file first (it may record FIDs at several sample counts), else what the
  // import stage recorded (the source may have moved since).
  const shipped = (await readShippedTeacherFid(p.teacherSource, es)) ?? imp?.shippedFid ?? null;
  if (shipped) {
    const same = shipped.num === es.num && shipped.ref !== undefined &&
      basename(shipped.ref) === basename(es.ref);
    if (!same) {
      notes.push(
        `The teacher's shipped FID (${shipped.source}) was computed on ${
          shipped.num ?? "an unrecorded number of"
        } samples against ${shipped.ref ?? "unrecorded reference statistics"}, not with this ` +
          "report's settings" +
          (evaluated
            ? "; the evaluated row is."
            : "; `--eval-teacher` samples the teacher with them."),
      );
    }
  } else if (!evaluated) {
    notes.push(
      "The teacher file records no FID (metadata or sidecar JSON); `--eval-teacher` computes one.",
    );
  }
  const teacherFid = evaluated ?? shipped;

  // Plots.
  // SiD²A starts from the final SiD generator: its curve starts at that point.
  const fidPoints = stages.flatMap((s, i) => {
    const pts: FidPoint[] = s.snapshots.map((x) => ({
      stage: s.title,
      kimg: x.cumulativeKimg,
      fid: x.fid,
    }));
    const prev = i > 0 ? stages[i - 1] : null;
    if (prev?.fid != null && pts.length) {
      pts.unshift({ stage: s.title, kimg: prev.cumulativeKimg, fid: prev.fid, link: true });
    }
    return pts;
  });
  const plots = await writeChainPlots(join(out, "plots"), {
    losses: lossLogs,
    fid: fidPoints,
    reference: teacherFid
      ? {
        fid: teacherFid.fid,
        label: `teacher${teacherFid.nfe ? `, ${teacherFid.nfe} NFE` : ""} (${teacherFid.origin})`,
      }
      : undefined,
  });
  if (plots.note) notes.push(plots.note);

  const report: ChainReport = {
    format: REPORT_FORMAT,
    createdAt: new Date().toISOString(),
    out,
    preset: p.settings.preset,
    data: p.settings.data,
    teacher: { source: p.teacherSource, sha256: p.settings.teacher.sha256, shipped, evaluated },
    evaluation: {
      num: es.num,
      seed: es.seed,
      features: es.features,
      detector: es.detector,
      ref: es.ref,
      sampler: "one step, σ_init 2.5",
    },
    stages,
    plots: plots.files.map((f) => relativeTo(out, f)),
    notes,
  };
  await writeReport(out, report);
  return report;
}

// ---------------------------------------------------------------------------------------------
// Command line

/** The usage line of `deno task distill`. */
export function distillChainUsage(): string {
  return "usage: deno task distill [--teacher FILE.pkl|.pt|.safetensors] [--data ZIP|mnist] " +
    `[--ref STATS.npz|DATASET.zip] [--preset ${DISTILL_PRESET_NAMES.join("|")}] [--out DIR] ` +
    `[--stages ${STAGE_NAMES.join(",")}] [--budget FACTOR] [--num N] [--eval-teacher] ` +
    "[--sid-kimg K] [--sida-kimg K] [--tick K] [--snap K] [--dump K] " +
    `${distillFlagUsage("sida")} ` +
    "(each also per stage: --sid-FLAG, --sida-FLAG; --lsd, --lsg-gan and the warm-ups apply " +
    "to the sida stage) [--features mnist|inception] [--detector FILE] [--eval-batch N] " +
    `[--eval-seed N] [--quiet] [--backend ${[...BACKEND_NAMES, "auto"].join("|")}]`;
}

/**
 * Parses the command line of `deno task distill`; every bad value is a one-line UsageError.
 * The distillation flags are the table of `lib/distill/settings.ts` (the flags of `deno task
 * sid` / `sida`): plain for both stages where they apply, `sid-` / `sida-` prefixed for one.
 */
export function parseDistillChainArgs(args: string[]): DistillChainOptions {
  const usage = distillChainUsage();
  const f = parseFlags(args, {
    string: [
      "teacher",
      "data",
      "ref",
      "preset",
      "out",
      "stages",
      "budget",
      "num",
      "sid-kimg",
      "sida-kimg",
      "tick",
      "snap",
      "dump",
      ...distillFlagNames("sida"),
      ...distillFlagNames("sid", "sid-"),
      ...distillFlagNames("sida", "sida-"),
      "features",
      "detector",
      "eval-batch",
      "eval-seed",
    ],
    boolean: ["eval-teacher", "help", "quiet"],
  }, usage);
  if (f.positionals.length) {
    throw new UsageError(`unexpected argument '${f.positionals[0]}' (${usage})`);
  }
  const str = (k: string) => typeof f[k] === "string" ? f[k] as string : undefined;
  const pos = (k: string) => {
    if (f[k] === undefined) return undefined;
    const v = numberFlag(k, f[k], NaN);
    if (!(v > 0)) throw new UsageError(`--${k} must be > 0, got ${v}`);
    return v;
  };
  const int = (k: string, min: number) =>
    f[k] === undefined ? undefined : numberFlag(k, f[k], NaN, { integer: true, min });
  let stages: string[] | undefined;
  if (f.stages !== undefined) {
    stages = String(f.stages).split(",").map((s) => s.trim()).filter(Boolean);
    for (const s of stages) {
      if (!(STAGE_NAMES as readonly string[]).includes(s)) {
        throw new UsageError(`unknown stage '${s}' (expected some of: ${STAGE_NAMES.join(", ")})`);
      }
    }
    if (!stages.length) throw new UsageError(`--stages is empty (${STAGE_NAMES.join(", ")})`);
  }
  const preset = str("preset");
  checkPresetName(preset);
  const features = str("features");
  if (features !== undefined && features !== "mnist" && features !== "inception") {
    throw new UsageError(`--features must be mnist or inception, got '${features}'`);
  }
  // Plain flags: both stages, except the SiDA-only ones, which are the sida stage's.
  const both = distillOverrides(f, "sid");
  const plainSida = distillOverrides(f, "sida");
  const sidaOnly = Object.fromEntries(
    Object.entries(plainSida).filter(([k]) => !(k in both)),
  ) as Partial<DistillConfig>;
  const num = int("num", 2);
  return {
    teacher: str("teacher"),
    data: str("data"),
    ref: str("ref"),
    preset,
    out: str("out"),
    stages,
    evalTeacher: f["eval-teacher"] === true,
    num,
    backend: checkBackendName(str("backend")),
    budget: pos("budget"),
    sidKimg: pos("sid-kimg"),
    sidaKimg: pos("sida-kimg"),
    tickKimg: pos("tick"),
    snapKimg: pos("snap"),
    dumpKimg: pos("dump"),
    overrides: both,
    stageOverrides: {
      sid: distillOverrides(f, "sid", "sid-"),
      sida: { ...sidaOnly, ...distillOverrides(f, "sida", "sida-") },
    },
    features: features as FeatureKind | undefined,
    detector: str("detector"),
    evalBatch: int("eval-batch", 1),
    evalSeed: int("eval-seed", 0),
    quiet: f.quiet === true,
  };
}

/**
 * The body of `tasks/distill.ts`: parse, run the chain, and handle Ctrl-C (the first SIGINT
 * finishes the training iteration, writes a state and exits with status 130; a second exits at
 * once — every file is written atomically).
 */
export async function distillChainTask(args: string[]): Promise<void> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(distillChainUsage());
    return;
  }
  const opts = parseDistillChainArgs(args);
  await withInterrupt(async (signal) => {
    const t0 = performance.now();
    const r = await runDistillChain({ ...opts, signal });
    if (r.interrupted) return r;
    const summary = STAGE_NAMES.map((s) => `${s} ${r.stages[s]}`).join(", ");
    console.log(`${summary}; ${((performance.now() - t0) / 60000).toFixed(1)} min`);
    for (const s of r.report?.stages ?? []) {
      console.log(
        `${s.title.padEnd(6)} ${String(s.kimg).padStart(8)} kimg  FID ${
          s.fid === null ? "–" : s.fid.toFixed(3)
        }  IS ${s.is ? s.is.mean.toFixed(3) : "–"}`,
      );
    }
    console.log(`report: ${join(r.out, "report.md")}`);
    return r;
  }, "finishing this step and writing a training state");
}
