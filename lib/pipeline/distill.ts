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
 *   `log.jsonl`); each resumes from its latest training state. Every snapshot is scored (FID,
 *   `--snapshot-num` samples) as it is written, and the folder keeps its best and last snapshots
 *   (`network-snapshot-best.safetensors` / `-last`, with JSON sidecars) and `snapshot-fids.jsonl`
 *   (`snapshots.ts`; docs/metrics.md §1).
 * - `eval/sid/`, `eval/sida/`: `best.json`, `last.json` (FID and KID in every feature space, IS;
 *   `--num` samples) and `samples-best.png`, `samples-last.png`; `eval/teacher/` with
 *   `--eval-teacher`; the reference statistics computed from a dataset zip.
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
import { type DataParallel, dataParallel, isWriter } from "../train/parallel.ts";
import { checkFiniteWeights, IoError } from "../io/host_tensor.ts";
import { readSafetensors, readSafetensorsHeader } from "../io/safetensors.ts";
import { importToSafetensors } from "../nets/import.ts";
import { configFromMetadata, loadNetwork } from "../nets/network.ts";
import type { EDMPrecond } from "../nets/precond.ts";
import { type Edm2Config, fromEdm2Kwargs } from "../nets/edm2.ts";
import { importEdm2ToSafetensors, inspectEdm2Pickle } from "../nets/import_edm2.ts";
import { loadDenoisingNetwork } from "../nets/load.ts";
import { loadVaeDecoder, type VaeDecoder } from "../nets/vae.ts";
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
import { findLatestState, snapshotFileName } from "../train/run_folder.ts";
import { type DistillationOptions, runDistillation } from "../distill/train.ts";
import {
  DEFAULT_MNIST_FEATURES,
  DEFAULT_MNIST_FEATURES_B,
  DEFAULT_MNIST_REF_STATS,
  DEFAULT_MNIST_REF_STATS_B,
} from "../metrics/mnist_features.ts";
import { mnistDataset } from "../data/dataset.ts";
import type { ImageDataset } from "../data/dataset.ts";
import { isLatentNetwork, outputImageShape, SIGMA_INIT } from "../metrics/generate.ts";
import {
  compareGenerators,
  DEFAULT_NOISE_Z,
  kidSpread,
  type SpaceScore,
} from "../metrics/compare.ts";
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
  evaluateInSpaces,
  evaluateNetwork,
  type FeatureKind,
  type FeatureSpace,
  fileSha256,
  KID_MAX_SUBSET,
  KID_SUBSETS,
  loadDetector,
  type LoadedSpace,
  readJsonOrNull,
  realFeatures,
  sameSpacesEvaluation,
  type SamplerSpec,
  type SpacesMetrics,
} from "./evaluate.ts";
import {
  BEST_SNAPSHOT,
  BestLastTracker,
  LAST_SNAPSHOT,
  type PickedSnapshot,
  readPickedSnapshot,
  readSnapshotScores,
  type SnapshotScoreSettings,
} from "./snapshots.ts";
import { type FidPoint, type StageLossLog, writeChainPlots } from "./plots.ts";
import {
  type ChainReport,
  claimText,
  type ComparisonReport,
  kidText,
  type PickedReport,
  prText,
  readShippedTeacherFid,
  relativeTo,
  REPORT_FORMAT,
  shippedSpacesMatch,
  type SnapshotMetrics,
  type SpaceScores,
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

/** Default samples per generator for the final comparison (Inception features). */
export const DEFAULT_EVAL_NUM = 1000;

/** Default samples per generator for the final comparison with MNIST features. */
export const MNIST_EVAL_NUM = 10_000;

/** Default samples per snapshot for the FID scored during training (the best/last choice). */
export const DEFAULT_SNAPSHOT_NUM = 1000;

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
  /**
   * Samples per generator for the final comparison (default {@linkcode MNIST_EVAL_NUM} with
   * MNIST features, else {@linkcode DEFAULT_EVAL_NUM}).
   */
  num?: number;
  /**
   * Samples per EMA snapshot for the FID scored during training, which picks the best snapshot
   * (default {@linkcode DEFAULT_SNAPSHOT_NUM}, at most `num`); 0: no scoring, the last is used.
   */
  snapshotNum?: number;
  /**
   * The second feature space `mnist-b` (MNIST features only): its detector and reference
   * statistics (`.npz` or a dataset zip). Default: the shipped second network
   * (`DEFAULT_MNIST_FEATURES_B`) when `detector` is not given, with its shipped statistics when
   * `ref` is not given, or with the `ref` zip.
   */
  detectorB?: string;
  refB?: string;
  /** No second feature space (`--one-space`): no claim can then be made (docs/metrics.md §3). */
  noSpaceB?: boolean;
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
  /**
   * SiD²A warm-ups (kimg); default the preset's, scaled down to the stage length (kept as they are
   * for a preset with `fixedWarmups`, as `mnist`).
   */
  gWarmupKimg?: number;
  ganWarmupKimg?: number;
  /** Detector kind; default `mnist` for 32×32 grey teachers, else `inception`. */
  features?: FeatureKind;
  /** Detector file; default the shipped MNIST feature network / `SIDA_INCEPTION`. */
  detector?: string;
  /**
   * The Stable Diffusion VAE (a diffusers folder or its `.safetensors`) that decodes a latent
   * teacher's samples (EDM2 `img512`) for scoring, evaluation and grids.
   */
  vae?: string;
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
  spaces: FeatureSpace[];
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
  config: {
    imgResolution: number;
    imgChannels: number;
    labelDim: number;
    config?: { precond?: string; unet?: { modelChannels?: number } };
  };
}

/** A teacher's info from its EDM2 configuration. */
function edm2Info(c: Edm2Config): TeacherInfo {
  return {
    resolution: c.imgResolution,
    channels: c.imgChannels,
    labelDim: c.labelDim,
    augmentDim: 0,
    config: {
      imgResolution: c.imgResolution,
      imgChannels: c.imgChannels,
      labelDim: c.labelDim,
      config: c,
    },
  };
}

/** The teacher's image shape, from the safetensors header or by importing a pickle. */
async function teacherInfo(path: string): Promise<TeacherInfo> {
  const lower = path.toLowerCase();
  try {
    if (lower.endsWith(".pkl") || lower.endsWith(".pt") || lower.endsWith(".pth")) {
      let net: EDMPrecond;
      try {
        net = await loadNetwork(path);
      } catch (e) {
        // An EDM2 pickle is checked without building it (EDM2-XXL is 1.5 B parameters); its
        // weights are checked for non-finite values by the import stage.
        if (!/is an EDM2 network/.test((e as Error).message)) throw e;
        const c = (await inspectEdm2Pickle(path)).config;
        return edm2Info(c);
      }
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
    if (metadata.class === "EDM2Precond") {
      const c = fromEdm2Kwargs(JSON.parse(metadata.config ?? "null"));
      checkFiniteWeights((await readSafetensors(path)).tensors, path);
      return edm2Info(c);
    }
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
  /** The first feature space's settings (also those of `deno task eval`). */
  evalSettings: EvalSettings;
  /** Every feature space of the final comparison, the first being `evalSettings`'. */
  spaces: FeatureSpace[];
  /** Reference statistics per space (null: computed from a dataset zip by the chain). */
  refStats: Map<string, Stats | null>;
  /** How snapshots are scored during training (null: not scored). */
  snapshotScore: SnapshotScoreSettings | null;
  evalTeacher: boolean;
  backend?: string;
  /** The VAE of a latent teacher (null: pixels). */
  vae: string | null;
  /** The teacher is an EDM2 network (imported with the EDM2 importer). */
  edm2: boolean;
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
  if (o.num !== undefined && !(Number.isInteger(o.num) && o.num >= 2)) {
    throw new UsageError(`--num must be an integer ≥ 2, got ${o.num}`);
  }
  if (o.snapshotNum !== undefined && !(Number.isInteger(o.snapshotNum) && o.snapshotNum >= 0)) {
    throw new UsageError(`--snapshot-num must be an integer ≥ 0, got ${o.snapshotNum}`);
  }
  if (o.snapshotNum === 1) throw new UsageError("--snapshot-num must be 0 or ≥ 2, got 1");
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
      // The preset's warm-ups are for its full length: shorter stages scale them down, unless
      // the preset counts them in images for any length.
      const scale = p.fixedWarmups ? 1 : Math.min(1, kimg / p.durationKimg);
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
      // Eight snapshots per stage: the best one is picked among them (snapshots.ts).
      snapKimg: o.snapKimg ?? Math.min(p.snapKimg, kimg / 8),
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
  // A latent teacher's samples are scored as the RGB images its VAE decodes them to.
  const latent = isLatentNetwork({ imgChannels: teacher.channels });
  const training = stages.has("sid") || stages.has("sida");
  if (o.vae !== undefined && !latent) {
    throw new UsageError(
      `--vae applies to a latent teacher (4 channels); this one makes ${teacher.channels}-channel images`,
    );
  }
  let images = { resolution: teacher.resolution, channels: teacher.channels };
  if (o.vae !== undefined) {
    let vae: VaeDecoder;
    try {
      vae = await loadVaeDecoder(o.vae);
    } catch (e) {
      throw new UsageError(`--vae: ${(e as Error).message}`);
    }
    try {
      images = outputImageShape({
        imgResolution: teacher.resolution,
        imgChannels: teacher.channels,
      }, vae);
    } catch (e) {
      throw new UsageError(`--vae ${o.vae}: ${(e as Error).message}`);
    } finally {
      vae.dispose();
    }
  }
  const features: FeatureKind = o.features ??
    (images.resolution === 32 && images.channels === 1 ? "mnist" : "inception");
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
  const num = o.num ?? (features === "mnist" ? MNIST_EVAL_NUM : DEFAULT_EVAL_NUM);
  const evalSettings: EvalSettings = {
    num,
    seed: o.evalSeed ?? 0,
    batch: o.evalBatch ?? 64,
    features,
    detector,
    ref,
  };
  const isZip = (path: string) => path.toLowerCase().endsWith(".zip");
  const spaces: FeatureSpace[] = [{ name: features, features, detector, ref }];
  if (features === "mnist" && !o.noSpaceB) {
    // The second space by default only where its statistics fit the first's: the shipped
    // network's with the shipped statistics, or with the same dataset zip.
    const detB = o.detectorB ?? (o.detector === undefined ? DEFAULT_MNIST_FEATURES_B : undefined);
    const refB = o.refB ??
      (isZip(ref) ? ref : o.ref === undefined ? DEFAULT_MNIST_REF_STATS_B : undefined);
    if (detB && refB) {
      spaces.push({ name: "mnist-b", features: "mnist", detector: detB, ref: refB });
    } else if (o.detectorB !== undefined || o.refB !== undefined) {
      throw new UsageError(
        `the second feature space needs ${
          o.detectorB === undefined ? "--detector-b" : "--ref-b"
        } as well`,
      );
    }
  } else if (o.detectorB !== undefined || o.refB !== undefined) {
    throw new UsageError("--detector-b / --ref-b apply to --features mnist only");
  }
  const snapshotNum = o.snapshotNum ?? Math.min(DEFAULT_SNAPSHOT_NUM, num);
  // The snapshots are scored with another seed than the final comparison's, so that the best
  // snapshot's final FID is not the one it was picked by.
  // Training without the eval stage and without a detector (Inception not given): no scoring;
  // the eval stage scores the snapshots later.
  const canScore = !!detector && !!ref;
  const snapshotScore: SnapshotScoreSettings | null = snapshotNum > 0 &&
      (canScore || stages.has("eval"))
    ? {
      num: snapshotNum,
      seed: evalSettings.seed + 1,
      space: spaces[0].name,
      detector,
      ref,
    }
    : null;
  const refStats = new Map<string, Stats | null>();
  if (stages.has("eval") || (training && snapshotScore)) {
    if (latent && o.vae === undefined) {
      throw new UsageError(
        "the teacher makes 4-channel latents: scoring and evaluation need the VAE that decodes " +
          "them (--vae <sd-vae-ft-mse folder>), or run without them (--stages import,sid,sida " +
          "--snapshot-num 0)",
      );
    }
    if (latent && stages.has("eval") && !isZip(ref)) {
      throw new UsageError(
        "with latent data, the eval stage's KID needs real images: give --ref as an image zip " +
          "(the images the latents were encoded from)",
      );
    }
    if (features === "mnist" && images.resolution !== 32) {
      throw new UsageError(
        `the mnist detector needs 32×32 images, the teacher makes ${images.resolution}×${images.resolution}`,
      );
    }
    if (!detector) {
      throw new UsageError(
        "--features inception needs --detector inception-2015-12-05.pt (or SIDA_INCEPTION)",
      );
    }
    if (!ref) throw new UsageError("FID needs reference statistics: give --ref stats.npz");
    for (const sp of spaces) {
      if (!(await isFile(sp.detector))) {
        throw new UsageError(`detector file '${sp.detector}' not found`);
      }
      if (!(await isFile(sp.ref))) {
        throw new UsageError(`reference statistics '${sp.ref}' not found`);
      }
      if (isZip(sp.ref)) {
        // A dataset: its statistics are computed by the chain (and kept in the run folder).
        const ds = await loadImageZip(sp.ref, { maxImages: 1 });
        if (ds.resolution !== images.resolution || ds.channels !== images.channels) {
          throw new UsageError(
            `reference images ${sp.ref} are ${ds.resolution}x${ds.resolution}x${ds.channels}, ` +
              `the teacher makes ${images.resolution}x${images.resolution}x${images.channels}` +
              (latent ? " (decoded by the VAE)" : ""),
          );
        }
      }
      const det = await loadDetector(sp.features, sp.detector);
      const dim = det.featureDim;
      det.dispose();
      const st = isZip(sp.ref) ? null : await loadRefStats(sp.ref);
      if (st && st.dim !== dim) {
        throw new UsageError(
          `reference statistics ${sp.ref} are ${st.dim}-d, the ${sp.name} detector gives ${dim}-d features`,
        );
      }
      refStats.set(sp.name, st);
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
    spaces,
    refStats,
    snapshotScore,
    evalTeacher: o.evalTeacher ?? false,
    backend: o.backend,
    vae: o.vae ?? null,
    edm2: teacher.config.config?.precond === "EDM2Precond",
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
  const dp = dataParallel();
  if (dp && dp.rank !== 0) return await followChain(dp, o);
  if (!dp) return await leadChain(o, null);
  // Rank 0 leads and, at the end, releases the other ranks. An error on rank 0 ends the job
  // instead: its non-zero exit calls MPI_Abort (lib/runtime/mpi.ts), which stops the ranks
  // waiting for its next message.
  const r = await leadChain(o, dp);
  dp.broadcastJson<ChainJob>({ done: true });
  return r;
}

/**
 * What rank 0 sends the other ranks under `mpirun`: a training stage to run with it (the files it
 * needs by path and SHA-256), or the end of the chain.
 */
type ChainJob =
  | { done: true }
  | {
    done?: false;
    stage: "sid" | "sida";
    teacher: SharedFile;
    init: SharedFile | null;
    options: Omit<DistillationOptions, "teacher" | "init" | "signal" | "onSnapshot" | "quiet">;
  };

/** A file rank 0 has and the other ranks need: its path there, size and SHA-256. */
interface SharedFile {
  path: string;
  size: number;
  sha256: string;
}

/**
 * Makes `file` available on this rank: the same path when this rank sees the same bytes there
 * (one host, or a shared folder), else a private copy of rank 0's bytes. Collective: every rank
 * calls it with the same `file`; returns the path to use and a cleanup.
 */
async function shareFile(
  dp: DataParallel,
  file: SharedFile,
): Promise<{ path: string; cleanup: () => Promise<void> }> {
  let same = dp.rank === 0;
  if (!same) {
    try {
      same = (await Deno.stat(file.path)).size === file.size &&
        (await fileSha256(file.path)) === file.sha256;
    } catch {
      same = false;
    }
  }
  const missing = dp.any(!same);
  if (!missing) return { path: file.path, cleanup: () => Promise.resolve() };
  const bytes = dp.broadcastBytes(dp.rank === 0 ? await Deno.readFile(file.path) : null);
  if (same) return { path: file.path, cleanup: () => Promise.resolve() };
  const dir = await Deno.makeTempDir({ prefix: "sida-mpi-chain-" });
  const path = join(dir, basename(file.path));
  await Deno.writeFile(path, bytes);
  return { path, cleanup: () => Deno.remove(dir, { recursive: true }).catch(() => {}) };
}

async function describeShared(path: string): Promise<SharedFile> {
  return { path, size: (await Deno.stat(path)).size, sha256: await fileSha256(path) };
}

/**
 * The chain on ranks other than 0: each training stage rank 0 runs, with the same settings (this
 * rank computes its share of every batch, `lib/train/parallel.ts`); nothing is written here.
 */
async function followChain(dp: DataParallel, o: DistillChainOptions): Promise<DistillChainResult> {
  const status: Record<StageName, StageStatus> = {
    import: "not selected",
    sid: "not selected",
    sida: "not selected",
    eval: "not selected",
  };
  let interrupted = false;
  for (;;) {
    const job = dp.broadcastJson<ChainJob>(undefined);
    if (job.done) break;
    const teacher = await shareFile(dp, job.teacher);
    const init = job.init ? await shareFile(dp, job.init) : null;
    try {
      const r = await runDistillation({
        ...job.options,
        teacher: teacher.path,
        init: init?.path,
        signal: o.signal,
        quiet: true,
      });
      status[job.stage] = r.interrupted ? "interrupted" : "ran";
      interrupted ||= r.interrupted;
    } finally {
      await teacher.cleanup();
      await init?.cleanup();
    }
  }
  return { out: o.out ?? "", stages: status, interrupted, report: null };
}

async function leadChain(
  o: DistillChainOptions,
  dp: DataParallel | null,
): Promise<DistillChainResult> {
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
      } else if (p.edm2) {
        await importEdm2ToSafetensors(p.teacherSource, importedTeacher);
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
    const scoring = p.snapshotScore ? await openScoring(p, stage, say) : null;
    let r: Awaited<ReturnType<typeof runDistillation>>;
    let final: { name: string; nimg: number } | undefined;
    try {
      const options = {
        method: stage,
        data: settings.data,
        out: join(out, stage),
        preset: settings.preset,
        config: sp.config,
        durationKimg: sp.kimg,
        tickKimg: sp.tickKimg,
        snapKimg: sp.snapKimg,
        dumpKimg: sp.dumpKimg,
        backend: p.backend,
      };
      if (dp) {
        // Under mpirun every rank trains this stage with rank 0 (`followChain`).
        const job: ChainJob = {
          stage,
          teacher: await describeShared(teacherPath),
          init: init ? await describeShared(init) : null,
          options,
        };
        dp.broadcastJson(job);
        await shareFile(dp, job.teacher);
        if (job.init) await shareFile(dp, job.init);
      }
      r = await runDistillation({
        ...options,
        teacher: teacherPath,
        init,
        signal: o.signal,
        quiet: o.quiet,
        onSnapshot: scoring ? (path, nimg) => scoring.onSnapshot(path, nimg) : undefined,
      });
      if (r.interrupted) {
        await log(stage, "interrupted");
        return { out, stages: status, interrupted: true, report: null };
      }
      const snaps = await listSnapshots(join(out, stage));
      final = snaps[snaps.length - 1];
      if (!final || final.nimg !== r.curNimg) {
        throw new IoError(
          `${join(out, stage)}: no snapshot at ${r.curNimg} images (${
            snapshotFileName(r.curNimg)
          })`,
        );
      }
      // A snapshot written just before a kill may not have been scored: it is scored now.
      await scoring?.catchUp(snaps, final);
    } finally {
      scoring?.dispose();
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

/** A stage's snapshot scoring: the best/last tracker with the first space's detector loaded. */
interface Scoring {
  onSnapshot(path: string, nimg: number): Promise<void>;
  catchUp(
    snaps: readonly { name: string; nimg: number }[],
    final: { name: string; nimg: number },
  ): Promise<void>;
  dispose(): void;
}

/**
 * Opens the best/last tracker of a stage folder (`snapshots.ts`) with a scorer that samples
 * `snapshotScore.num` images one step and computes FID (and IS) in the first feature space.
 */
async function openScoring(
  p: Plan,
  stage: "sid" | "sida",
  say: (s: string) => void,
): Promise<Scoring> {
  const settings = p.snapshotScore!;
  const space = p.spaces[0];
  const det = await loadDetector(space.features, space.detector);
  const vae = p.vae ? await loadVaeDecoder(p.vae) : undefined;
  try {
    const refStats = p.refStats.get(space.name) ?? await datasetRefStats(p, space, det, say);
    const scorer = async (path: string) => {
      const net = await loadDenoisingNetwork(path);
      try {
        const e = await evaluateNetwork(net, det, {
          num: settings.num,
          seed: settings.seed,
          batch: p.evalSettings.batch,
          sampler: "onestep",
          steps: 18,
          sigmaInit: SIGMA_INIT,
          metrics: new Set(["fid", "is"]),
          ref: { stats: refStats },
          gridCount: 0,
          vae,
        });
        return { fid: e!.results.fid!, is: e!.results.is! };
      } finally {
        net.dispose();
      }
    };
    const dir = join(p.out, stage);
    await mkdirNamed(dir);
    const tracker = await BestLastTracker.open(dir, settings, scorer, {
      bestAfterNimg: bestAfterNimg(p, stage),
    });
    const onSnapshot = async (path: string, nimg: number) => {
      const t0 = performance.now();
      const r = await tracker.onSnapshot(path, nimg);
      say(
        `stage ${stage}: ${r.snapshot}: FID ${r.fid.toFixed(2)} (${settings.num} samples, ` +
          `${((performance.now() - t0) / 1000).toFixed(0)} s); best so far ${
            tracker.best!.fid.toFixed(2)
          } at ${tracker.best!.kimg} kimg`,
      );
    };
    return {
      onSnapshot,
      catchUp: (snaps, final) => tracker.catchUp(snaps, final),
      dispose: () => {
        det.dispose();
        vae?.dispose();
      },
    };
  } catch (e) {
    det.dispose();
    vae?.dispose();
    throw e;
  }
}

interface EvalJob {
  stage: "sid" | "sida" | "teacher";
  /** `best`, `last` (a stage's) or `teacher`. */
  which: "best" | "last" | "teacher";
  generator: string;
  metricsPath: string;
  gridPath?: string;
  sampler: SamplerSpec;
}

const TEACHER_SAMPLER: SamplerSpec = { sampler: "heun", steps: 18 };
const ONE_STEP: SamplerSpec = { sampler: "onestep" };

/**
 * Images up to which a stage's snapshots are not its best while a later one exists: SiD²A's
 * snapshots before G's first step (its warm-up) are SiD's generator itself.
 */
function bestAfterNimg(p: Plan, stage: "sid" | "sida"): number {
  return stage === "sida" ? p.settings.sida.config.gWarmupNimg ?? 0 : 0;
}

/** Whether a stage folder's best and last sidecars are complete up to its final snapshot. */
async function picksComplete(
  p: Plan,
  stage: "sid" | "sida",
  done: TrainDone,
): Promise<boolean> {
  const dir = join(p.out, stage);
  const settings = p.snapshotScore!;
  const scored = new Map((await readSnapshotScores(dir, settings)).map((r) => [r.nimg, r]));
  const snaps = (await listSnapshots(dir)).filter((s) => s.nimg <= done.nimg);
  if (!snaps.every((s) => scored.get(s.nimg)?.snapshot === s.name)) return false;
  const best = await readPickedSnapshot(dir, "best");
  const last = await readPickedSnapshot(dir, "last");
  const same = (x: PickedSnapshot | null) =>
    !!x && JSON.stringify(x.settings) === JSON.stringify(settings);
  // A best from before G's first step while later snapshots exist (a run from before that rule).
  const after = bestAfterNimg(p, stage);
  if (best && best.nimg <= after && [...scored.values()].some((r) => r.nimg > after)) return false;
  return same(best) && same(last) && last!.nimg === done.nimg && last!.snapshot === done.snapshot;
}

/**
 * Makes each finished stage's best and last snapshots complete (`snapshots.ts`): snapshots of
 * a run folder from before snapshot scoring, or scored with other settings, are scored now.
 */
async function ensurePicks(p: Plan, say: (s: string) => void): Promise<void> {
  if (!p.snapshotScore) return;
  for (const stage of ["sid", "sida"] as const) {
    const done = await readJsonOrNull<TrainDone>(join(p.out, stage, "stage-done.json"));
    if (!done || (await picksComplete(p, stage, done))) continue;
    say(`stage eval: scoring the ${stageTitle(stage)} snapshots to pick the best one`);
    const scoring = await openScoring(p, stage, say);
    try {
      const snaps = (await listSnapshots(join(p.out, stage))).filter((s) => s.nimg <= done.nimg);
      await scoring.catchUp(snaps, { name: done.snapshot, nimg: done.nimg });
    } finally {
      scoring.dispose();
    }
  }
}

/** The final comparison's generators: each stage's best and last, then the teacher. */
async function evalJobs(p: Plan, teacherPath: string): Promise<EvalJob[]> {
  const jobs: EvalJob[] = [];
  for (const stage of ["sid", "sida"] as const) {
    const done = await readJsonOrNull<TrainDone>(join(p.out, stage, "stage-done.json"));
    if (!done) continue;
    const dir = join(p.out, stage);
    const scored = p.snapshotScore !== null && (await isFile(join(dir, BEST_SNAPSHOT)));
    const job = (which: "best" | "last", generator: string): EvalJob => ({
      stage,
      which,
      generator,
      metricsPath: join(p.out, "eval", stage, `${which}.json`),
      gridPath: join(p.out, "eval", stage, `samples-${which}.png`),
      sampler: ONE_STEP,
    });
    if (scored) jobs.push(job("best", join(dir, BEST_SNAPSHOT)));
    jobs.push(job("last", scored ? join(dir, LAST_SNAPSHOT) : join(dir, done.snapshot)));
  }
  if (p.evalTeacher) {
    jobs.push({
      stage: "teacher",
      which: "teacher",
      generator: teacherPath,
      metricsPath: join(p.out, "eval", "teacher", "metrics.json"),
      gridPath: join(p.out, "eval", "teacher", "samples.png"),
      sampler: TEACHER_SAMPLER,
    });
  }
  return jobs;
}

/**
 * Reference statistics of a dataset zip given as a space's `ref`: computed once with its
 * detector and kept in `eval/ref-stats.npz` (first space; `eval/ref-stats-<space>.npz` for the
 * others), with a sidecar JSON naming the zip (path, size, mtime) and detector so that a changed
 * zip or detector is recomputed.
 */
async function datasetRefStats(
  p: Plan,
  space: FeatureSpace,
  detector: Detector,
  say: (s: string) => void,
): Promise<Stats> {
  const zip = space.ref;
  const info = await Deno.stat(zip);
  const key = {
    ref: zip,
    size: info.size,
    mtime: info.mtime?.toISOString() ?? null,
    features: space.features,
    detector: space.detector,
  };
  const stem = space.name === p.spaces[0].name ? "ref-stats" : `ref-stats-${space.name}`;
  const npz = join(p.out, "eval", `${stem}.npz`);
  const sidecar = join(p.out, "eval", `${stem}.json`);
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
    `stage eval: reference statistics of ${zip} in ${space.name} (${ds.size} images, ` +
      `${((performance.now() - t0) / 1000).toFixed(0)} s) kept in ${relativeTo(p.out, npz)}`,
  );
  return stats;
}

/**
 * Every feature space made ready: detector, reference statistics, and the real features that
 * KID compares with (the reference zip's images, else the training data's).
 */
async function loadSpaces(p: Plan, say: (s: string) => void): Promise<LoadedSpace[]> {
  const loaded: LoadedSpace[] = [];
  const datasets = new Map<string, ImageDataset>();
  try {
    for (const sp of p.spaces) {
      const det = await loadDetector(sp.features, sp.detector);
      loaded.push({ ...sp, det, refStats: null!, realFeatures: null! });
      const refStats = p.refStats.get(sp.name) ?? await datasetRefStats(p, sp, det, say);
      const source = sp.ref.toLowerCase().endsWith(".zip") ? sp.ref : p.settings.data;
      let ds = datasets.get(source);
      if (!ds) {
        ds = source === "mnist" ? await mnistDataset() : await loadImageZip(source);
        datasets.set(source, ds);
      }
      const t0 = performance.now();
      const real = await realFeatures(det, ds, { batch: p.evalSettings.batch });
      say(
        `stage eval: ${sp.name} features of ${real.length / det.featureDim} real images ` +
          `(${source}) for KID, ${((performance.now() - t0) / 1000).toFixed(0)} s`,
      );
      loaded[loaded.length - 1] = { ...sp, det, refStats, realFeatures: real };
    }
    return loaded;
  } catch (e) {
    for (const s of loaded) s.det.dispose();
    throw e;
  }
}

function jobTitle(j: EvalJob, out: string): string {
  return j.which === "teacher"
    ? `teacher (Heun, ${TEACHER_SAMPLER.steps} steps)`
    : `${stageTitle(j.stage as "sid" | "sida")} ${j.which} (${relativeTo(out, j.generator)})`;
}

async function evalStage(
  p: Plan,
  teacherPath: string,
  o: DistillChainOptions,
  say: (s: string) => void,
): Promise<StageStatus> {
  await ensurePicks(p, say);
  const jobs = await evalJobs(p, teacherPath);
  const es = p.evalSettings;
  const todo: (EvalJob & { sha256: string })[] = [];
  // Metrics already computed, by generator bytes and sampler (best and last are often the same).
  const known = new Map<string, SpacesMetrics>();
  const grids = new Map<string, string>();
  for (const j of jobs) {
    const sha256 = await fileSha256(j.generator);
    const m = await readJsonOrNull<SpacesMetrics>(j.metricsPath);
    if (sameSpacesEvaluation(m, sha256, es, p.spaces, j.sampler)) {
      known.set(`${sha256}/${j.sampler.sampler}`, m!);
      if (j.gridPath) grids.set(`${sha256}/${j.sampler.sampler}`, j.gridPath);
    } else todo.push({ ...j, sha256 });
  }
  const marker = join(p.out, "eval", "stage-done.json");
  const generators = jobs.map((j) => relativeTo(p.out, j.generator));
  if (!todo.length && (await isFile(marker))) {
    say("stage eval: done before, skipped");
    return "skipped";
  }
  if (todo.length) {
    const spaces = await loadSpaces(p, say);
    const vae = p.vae ? await loadVaeDecoder(p.vae) : undefined;
    try {
      for (const j of todo) {
        const key = `${j.sha256}/${j.sampler.sampler}`;
        const t0 = performance.now();
        let m = known.get(key);
        if (m) {
          // The same generator under another name: its metrics and grid are copied.
          m = { ...m, generator: j.generator };
          await writeJson(j.metricsPath, m);
          const grid = grids.get(key);
          if (grid && j.gridPath && (await isFile(grid))) {
            await writeFileAtomic(j.gridPath, await Deno.readFile(grid));
          }
        } else {
          const got = await evaluateInSpaces(j.generator, spaces, es, j.sampler, {
            metricsPath: j.metricsPath,
            gridPath: j.gridPath,
          }, { signal: o.signal, vae });
          if (!got) return "interrupted";
          m = got;
          known.set(key, m);
        }
        if (j.gridPath && !grids.has(key)) grids.set(key, j.gridPath);
        const scores = p.spaces.map((s) => {
          const x = m!.spaces[s.name];
          return `${s.name} FID ${x.fid.toFixed(2)} KID ${kidText(x.kid)} ± ${kidText(x.kidStd)}${
            prText(x)
          }`;
        }).join(", ");
        say(
          `stage eval: ${jobTitle(j, p.out)}: ${scores} (${es.num} samples, ` +
            `${((performance.now() - t0) / 1000).toFixed(0)} s)`,
        );
      }
    } finally {
      for (const s of spaces) s.det.dispose();
      vae?.dispose();
    }
  }
  const done: EvalDone = {
    format: STAGE_DONE_FORMAT,
    stage: "eval",
    finishedAt: new Date().toISOString(),
    settings: es,
    spaces: p.spaces,
    generators,
  };
  await writeJson(marker, done);
  return "ran";
}

// ---------------------------------------------------------------------------------------------
// Report

/** The report's view of a {@linkcode SpacesMetrics}. */
function metricsSummary(m: SpacesMetrics): NonNullable<PickedReport["metrics"]> {
  return {
    num: m.num,
    seed: m.seed,
    spaces: Object.fromEntries(
      Object.entries(m.spaces).map(([k, v]) => [k, {
        fid: v.fid,
        kid: v.kid,
        kidStd: v.kidStd,
        kidSubsetSize: v.kidSubsetSize,
        ...(v.precision !== undefined && v.recall !== undefined
          ? { precision: v.precision, recall: v.recall }
          : {}),
      }]),
    ),
    is: m.is,
    evalSeconds: m.evalSeconds,
    backend: m.backend,
  };
}

async function shaOrNull(path: string): Promise<string | null> {
  try {
    return await fileSha256(path);
  } catch {
    return null;
  }
}

async function buildReport(p: Plan, teacherPath: string): Promise<ChainReport> {
  const { out, evalSettings: es } = p;
  const notes: string[] = [];
  const stages: StageReport[] = [];
  const lossLogs: StageLossLog[] = [];
  let offset = 0;
  const first = p.spaces[0].name;
  for (const stage of ["sid", "sida"] as const) {
    const done = await readJsonOrNull<TrainDone>(join(out, stage, "stage-done.json"));
    if (!done) continue;
    const stageOffset = offset;
    const dir = join(out, stage);
    lossLogs.push({
      stage: stageTitle(stage),
      offsetKimg: stageOffset,
      records: await readTickLog(join(dir, "log.jsonl")),
    });
    const scores = p.snapshotScore ? await readSnapshotScores(dir, p.snapshotScore) : [];
    const snapshots: SnapshotMetrics[] = scores.filter((r) => r.nimg <= done.nimg).map((r) => ({
      generator: relativeTo(out, join(dir, r.snapshot)),
      kimg: r.kimg,
      cumulativeKimg: roundKimg(stageOffset + r.kimg),
      fid: r.fid,
      is: r.is ?? null,
    }));
    const sameSettings = (x: PickedSnapshot | null) =>
      x && p.snapshotScore && JSON.stringify(x.settings) === JSON.stringify(p.snapshotScore)
        ? x
        : null;
    const pick = async (which: "best" | "last"): Promise<PickedReport | null> => {
      const side = sameSettings(await readPickedSnapshot(dir, which));
      if (which === "best" && !side) return null;
      const generator = side ? join(dir, side.file) : join(dir, done.snapshot);
      const metricsPath = join(out, "eval", stage, `${which}.json`);
      const m = await readJsonOrNull<SpacesMetrics>(metricsPath);
      const sha = await shaOrNull(generator);
      const ok = sha && sameSpacesEvaluation(m, sha, es, p.spaces, ONE_STEP) ? m! : null;
      const nimg = side?.nimg ?? done.nimg;
      const grid = join(out, "eval", stage, `samples-${which}.png`);
      return {
        which,
        generator: relativeTo(out, generator),
        snapshot: relativeTo(out, join(dir, side?.snapshot ?? done.snapshot)),
        kimg: nimg / 1000,
        cumulativeKimg: roundKimg(stageOffset + nimg / 1000),
        selectionFid: side?.fid ?? null,
        metrics: ok ? metricsSummary(ok) : null,
        metricsFile: ok ? relativeTo(out, metricsPath) : null,
        grid: ok && (await isFile(grid)) ? relativeTo(out, grid) : null,
      };
    };
    const best = await pick("best");
    const last = (await pick("last"))!;
    const used = best ?? last;
    if (!used.metrics || !last.metrics) {
      notes.push(
        `${stageTitle(stage)} is not evaluated with this report's settings yet: run ` +
          "`--stages eval`.",
      );
    }
    const um = used.metrics;
    stages.push({
      stage,
      title: stageTitle(stage),
      kimg: done.kimg,
      cumulativeKimg: roundKimg(stageOffset + done.kimg),
      trainSeconds: done.trainSeconds === null ? null : Math.round(done.trainSeconds * 10) / 10,
      backend: done.backend,
      resumed: done.resumed,
      used: used.which as "best" | "last",
      best,
      last,
      generator: used.generator,
      fid: um?.spaces[first]?.fid ?? null,
      is: um?.is ?? null,
      num: um ? um.num : null,
      ref: um ? es.ref : null,
      evalSeconds: um?.evalSeconds ?? null,
      evalBackend: um?.backend ?? null,
      metricsFile: used.metricsFile,
      grid: used.grid,
      snapshots,
    });
    offset = roundKimg(stageOffset + done.kimg);
  }
  if (!p.snapshotScore) {
    notes.push("Snapshots were not scored during training (`--snapshot-num 0`): no best one.");
  }
  const sida = stages.find((s) => s.stage === "sida");
  if (sida) {
    notes.push(
      "SiD²A starts from SiD's last generator (the final snapshot of the sid stage), not its best.",
    );
  }

  // The teacher's FID: as shipped, and evaluated here with the report's settings.
  let evaluated: TeacherFid | null = null;
  const tm = await readJsonOrNull<SpacesMetrics>(join(out, "eval", "teacher", "metrics.json"));
  const tsha = tm ? await shaOrNull(teacherPath) : null;
  if (tsha && sameSpacesEvaluation(tm, tsha, es, p.spaces, TEACHER_SAMPLER)) {
    const sm = metricsSummary(tm!);
    evaluated = {
      fid: sm.spaces[first].fid,
      num: tm!.num,
      nfe: tm!.nfe,
      ref: es.ref,
      is: tm!.is,
      origin: "evaluated",
      source: relativeTo(out, join(out, "eval", "teacher", "metrics.json")),
      spaces: sm.spaces,
    };
  }
  const imp = await readJsonOrNull<ImportDone>(join(out, "import", "stage-done.json"));
  // The teacher's own file first (it may record FIDs at several sample counts), else what the
  // import stage recorded (the source may have moved since).
  let shipped = (await readShippedTeacherFid(p.teacherSource, es)) ?? imp?.shippedFid ?? null;
  if (shipped?.spaces) {
    // Shipped per-space scores count only when made with this report's settings; else the
    // record's single FID is shown, as for a record without them.
    const sha = tsha ?? await shaOrNull(teacherPath);
    if (
      !sha || !shippedSpacesMatch(shipped, { sha256: sha, num: es.num, seed: es.seed }, p.spaces)
    ) {
      const { spaces: _dropped, ...rest } = shipped;
      shipped = rest;
    }
  }
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

  // Claims: a generator beats another only when every feature space agrees beyond the noise.
  const names = p.spaces.map((s) => s.name);
  const comparisons: ComparisonReport[] = [];
  // Each KID's spread: its subsets' standard deviation scaled to the whole sample (compare.ts).
  type Scored = { num: number; spaces: Record<string, SpaceScores> } | null | undefined;
  const spreads = (m: Scored): Record<string, SpaceScore> =>
    m
      ? Object.fromEntries(
        Object.entries(m.spaces).map(([k, v]) => [k, {
          fid: v.fid,
          kid: v.kid,
          kidStd: kidSpread(v.kidStd, v.kidSubsetSize ?? m.num, m.num),
        }]),
      )
      : {};
  const compare = (a: string, sa: Scored, b: string, sb: Scored, why?: string) => {
    const c = compareGenerators(spreads(sa), spreads(sb), names, DEFAULT_NOISE_Z);
    const reason = (c.verdict === "not compared" && why) ? why : c.reason;
    comparisons.push({ a, b, verdict: c.verdict, reason, spaces: c.spaces });
  };
  const label = (s: StageReport, x: PickedReport) =>
    `${s.title} ${x.which} (${kimgLabelText(x.kimg)} kimg)`;
  for (const s of stages) {
    const used = s.used === "best" ? s.best! : s.last!;
    if (evaluated || shipped) {
      compare(
        label(s, used),
        used.metrics,
        `the teacher (${teacherFid!.nfe ?? "?"} NFE)`,
        evaluated?.spaces
          ? { num: evaluated.num!, spaces: evaluated.spaces }
          : shipped?.spaces
          ? { num: shipped.num!, spaces: shipped.spaces }
          : null,
        evaluated || shipped?.spaces
          ? undefined
          : "the teacher's shipped record holds one FID and no KID with this report's settings: " +
            "`--eval-teacher` scores it",
      );
    }
  }
  if (stages.length === 2) {
    const [a, b] = [stages[1], stages[0]];
    const ua = a.used === "best" ? a.best! : a.last!;
    const ub = b.used === "best" ? b.best! : b.last!;
    compare(label(a, ua), ua.metrics, label(b, ub), ub.metrics);
  }
  for (const s of stages) {
    if (s.best && s.best.kimg !== s.last!.kimg) {
      compare(
        label(s, s.best),
        s.best.metrics,
        label(s, s.last!),
        s.last!.metrics,
      );
    }
  }

  // Plots: the FIDs scored during training; SiD²A starts from SiD's last snapshot.
  const fidPoints = stages.flatMap((s, i) => {
    const pts: FidPoint[] = s.snapshots.map((x) => ({
      stage: s.title,
      kimg: x.cumulativeKimg,
      fid: x.fid,
    }));
    const prev = i > 0 ? stages[i - 1].snapshots.at(-1) : undefined;
    if (prev && pts.length) {
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
        label: `teacher${teacherFid.nfe ? `, ${teacherFid.nfe} NFE` : ""} (${teacherFid.origin}${
          teacherFid.num ? `, ${teacherFid.num} samples` : ""
        })`,
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
      spaces: p.spaces,
      kid: { subsets: KID_SUBSETS, maxSubsetSize: KID_MAX_SUBSET },
      snapshotScoring: p.snapshotScore,
      noiseZ: DEFAULT_NOISE_Z,
    },
    stages,
    comparisons,
    plots: plots.files.map((f) => relativeTo(out, f)),
    notes,
  };
  await writeReport(out, report);
  return report;
}

function kimgLabelText(k: number): string {
  return Number.isInteger(k) ? String(k) : String(Math.round(k * 1000) / 1000);
}

// ---------------------------------------------------------------------------------------------
// Command line

/** The usage line of `deno task distill`. */
export function distillChainUsage(): string {
  return "usage: deno task distill [--teacher FILE.pkl|.pt|.safetensors] [--data ZIP|mnist] " +
    `[--ref STATS.npz|DATASET.zip] [--preset ${DISTILL_PRESET_NAMES.join("|")}] [--out DIR] ` +
    `[--stages ${STAGE_NAMES.join(",")}] [--budget FACTOR] [--num N] [--eval-teacher] ` +
    "[--snapshot-num N] [--detector-b FILE --ref-b STATS.npz|DATASET.zip] [--one-space] " +
    "[--sid-kimg K] [--sida-kimg K] [--tick K] [--snap K] [--dump K] " +
    `${distillFlagUsage("sida")} ` +
    "(each also per stage: --sid-FLAG, --sida-FLAG; --lsd, --lsg-gan and the warm-ups apply " +
    "to the sida stage) [--features mnist|inception] [--detector FILE] [--vae DIR|FILE] " +
    "[--eval-batch N] " +
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
      "snapshot-num",
      "detector-b",
      "ref-b",
      "vae",
    ],
    boolean: ["eval-teacher", "help", "quiet", "one-space"],
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
    vae: str("vae"),
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
    snapshotNum: int("snapshot-num", 0),
    detectorB: str("detector-b"),
    refB: str("ref-b"),
    noSpaceB: f["one-space"] === true,
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
    if (r.interrupted || !isWriter()) return r;
    const summary = STAGE_NAMES.map((s) => `${s} ${r.stages[s]}`).join(", ");
    console.log(`${summary}; ${((performance.now() - t0) / 60000).toFixed(1)} min`);
    const names = r.report?.evaluation.spaces.map((s) => s.name) ?? [];
    for (const s of r.report?.stages ?? []) {
      const one = s.best?.snapshot === s.last.snapshot && s.best?.kimg === s.last.kimg;
      for (const x of one ? [s.best] : [s.best, s.last]) {
        if (!x) continue;
        const scores = names.map((n) => {
          const m = x.metrics?.spaces[n];
          return `${n} FID ${m ? m.fid.toFixed(2) : "–"} KID ${
            m ? `${kidText(m.kid)}±${kidText(m.kidStd)}` : "–"
          }${prText(m)}`;
        }).join("  ");
        console.log(
          `${
            `${s.title} ${one ? "best=last" : x.which}${s.used === x.which ? "*" : ""}`.padEnd(16)
          } ${String(x.kimg).padStart(8)} kimg  ${scores}`,
        );
      }
    }
    for (const c of r.report?.comparisons ?? []) console.log(claimText(c).replaceAll("**", ""));
    console.log(`report: ${join(r.out, "report.md")}`);
    return r;
  }, "finishing this step and writing a training state");
}
