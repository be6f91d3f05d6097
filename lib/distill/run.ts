/**
 * Run folders of a distillation: training states, EMA-generator snapshots, the tick log and the
 * progress line.
 *
 * A run folder holds
 *
 * - `training-state-<kimg>.safetensors`: every tensor of a {@linkcode DistillerState} (prefixes
 *   `G.`, `G_ema.`, `fake.`, `optG.`, `optFake.`) and in `__metadata__`: `format`
 *   (`sida-training-state/1`), `run` (the full {@linkcode RunInfo} as JSON: method, every
 *   hyper-parameter, teacher and data identity, cadence), `counters` (`{curNimg, iteration,
 *   elapsedSec}`), `sampler` (the data sampler's position), `seed`, `networks` (EDM kwargs of G and
 *   the fake net). Written atomically; only the latest is kept, and an older one is deleted only
 *   once the new one is in place (the reference keeps the latest too, sida-spec §4.6).
 * - `network-snapshot-<kimg>.safetensors`: the EMA generator (`saveNetwork`, loadable with
 *   `loadNetwork`), with `kimg`, `alpha`, `run` and `method` in its metadata.
 * - `log.jsonl`: one JSON object per tick (losses, w_n, timings, images/s).
 *
 * `<kimg>` is the image count in thousands, zero-padded to 6 digits as in the reference
 * (`{cur_nimg//1000:06d}`), with a 3-digit fraction when the count is not a whole kimg
 * (`000000.064`), so small runs never reuse a name.
 *
 * @module
 */
import { basename, join } from "node:path";
import type { SamplerState } from "../data/sampler.ts";
import { appendTextNamed, mkdirNamed, PARTIAL_FILE_RE } from "../io/atomic.ts";
import { IoError } from "../io/host_tensor.ts";
import type { HostTensor } from "../io/host_tensor.ts";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import type { EdmKwargs } from "../nets/config.ts";
import { saveNetwork } from "../nets/network.ts";
import type { EDMPrecond } from "../nets/precond.ts";
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

/** `<kimg>` of file names: `000012`, or `000000.064` for a count that is not a whole kimg. */
export function kimgLabel(nimg: number): string {
  const whole = String(Math.floor(nimg / 1000)).padStart(6, "0");
  const frac = nimg % 1000;
  return frac === 0 ? whole : `${whole}.${String(frac).padStart(3, "0")}`;
}

/** The file name of the training state at `nimg` images. */
export function stateFileName(nimg: number): string {
  return `training-state-${kimgLabel(nimg)}.safetensors`;
}

/** The file name of the EMA-generator snapshot at `nimg` images. */
export function snapshotFileName(nimg: number): string {
  return `network-snapshot-${kimgLabel(nimg)}.safetensors`;
}

const STATE_RE = /^training-state-(\d{6,})(?:\.(\d{3}))?\.safetensors$/;

function nimgOfStateName(name: string): number | null {
  const m = STATE_RE.exec(name);
  return m ? Number(m[1]) * 1000 + Number(m[2] ?? 0) : null;
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) if (e.isFile) names.push(e.name);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw new IoError(`${dir}: cannot list (${(e as Error).message})`);
  }
  return names;
}

/** The path of the folder's training state with the most images, or null if it has none. */
export async function findLatestState(dir: string): Promise<string | null> {
  let best: { name: string; nimg: number } | null = null;
  for (const name of await listDir(dir)) {
    const nimg = nimgOfStateName(name);
    if (nimg !== null && (!best || nimg > best.nimg)) best = { name, nimg };
  }
  return best ? join(dir, best.name) : null;
}

/**
 * Writes a training state into `dir` atomically (temporary file, then rename), then deletes every
 * other `training-state-*.safetensors` of the folder. Returns the new file's path.
 */
export async function writeTrainingState(
  dir: string,
  state: DistillerState,
  run: RunInfo,
  extra: { elapsedSec?: number } = {},
): Promise<string> {
  await mkdirNamed(dir);
  const name = stateFileName(state.curNimg);
  const path = join(dir, name);
  await writeSafetensors(path, state.tensors, {
    format: TRAINING_STATE_FORMAT,
    run: JSON.stringify(run),
    counters: JSON.stringify({
      curNimg: state.curNimg,
      iteration: state.iteration,
      elapsedSec: extra.elapsedSec ?? 0,
    }),
    sampler: JSON.stringify(state.sampler),
    seed: String(state.config.seed),
    networks: JSON.stringify(state.networks),
  });
  for (const other of await listDir(dir)) {
    if (other !== name && STATE_RE.test(other)) {
      await Deno.remove(join(dir, other)).catch(() => {});
    }
  }
  return path;
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
  const { tensors, metadata } = await readSafetensors(path);
  if (metadata.format !== TRAINING_STATE_FORMAT) {
    throw new IoError(`${path}: not a training state (format '${metadata.format ?? "none"}')`);
  }
  const parse = <T>(key: string): T => {
    try {
      return JSON.parse(metadata[key]) as T;
    } catch {
      throw new IoError(`${path}: metadata '${key}' is missing or not valid JSON`);
    }
  };
  const run = parse<RunInfo>("run");
  const counters = parse<{ curNimg: number; iteration: number; elapsedSec?: number }>("counters");
  const sampler = parse<SamplerState | null>("sampler");
  const networks = parse<{ G: EdmKwargs; fake: EdmKwargs }>("networks");
  if (!run?.distill || !Number.isSafeInteger(counters?.curNimg)) {
    throw new IoError(`${path}: incomplete training-state metadata`);
  }
  return {
    state: {
      config: run.distill,
      curNimg: counters.curNimg,
      iteration: counters.iteration,
      sampler,
      networks,
      tensors: tensors as Map<string, HostTensor>,
    },
    run,
    elapsedSec: counters.elapsedSec ?? 0,
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

/**
 * A fingerprint of a network's weights (64-bit, hex): two 32-bit multiplicative hashes over the
 * float32 bits of every tensor in state-dict order, plus the tensor names and shapes. Identical
 * weights give the same fingerprint on every backend.
 */
export async function networkFingerprint(net: EDMPrecond): Promise<string> {
  let h1 = 0x811c9dc5;
  let h2 = 0x01000193;
  const mixString = (s: string) => {
    for (let i = 0; i < s.length; i++) {
      h1 = Math.imul(h1 ^ s.charCodeAt(i), 0x01000193);
      h2 = Math.imul(h2 ^ s.charCodeAt(i), 0x5bd1e995);
    }
  };
  for (const [name, e] of net.namedTensors()) {
    mixString(`${name}[${e.variable.shape}]`);
    const data = await e.variable.data() as Float32Array;
    const words = new Uint32Array(data.buffer, data.byteOffset, data.length);
    for (let i = 0; i < words.length; i++) {
      h1 = Math.imul(h1 ^ words[i], 0x01000193);
      h2 = Math.imul((h2 ^ words[i]) + (h2 >>> 15), 0x5bd1e995);
    }
  }
  const hex = (v: number) => (v >>> 0).toString(16).padStart(8, "0");
  return hex(h1) + hex(h2);
}

/** Writes the EMA generator as `network-snapshot-<kimg>.safetensors` and returns its path. */
export async function writeSnapshot(
  dir: string,
  Gema: EDMPrecond,
  nimg: number,
  meta: { alpha: number; run: string; method: string },
): Promise<string> {
  const path = join(dir, snapshotFileName(nimg));
  await saveNetwork(Gema, path, {
    kimg: String(nimg / 1000),
    alpha: String(meta.alpha),
    run: meta.run,
    method: meta.method,
  });
  return path;
}

/**
 * Removes temporary files left by an interrupted atomic write (`.<name>.<16 hex>.partial`,
 * `writeFileAtomic`) in `dir`. Call only while holding the folder's lock (`lib/io/lock.ts`, which
 * does this itself when it takes the lock).
 */
export async function removeStaleTemporaries(dir: string): Promise<void> {
  for (const name of await listDir(dir)) {
    if (PARTIAL_FILE_RE.test(name)) {
      await Deno.remove(join(dir, name)).catch(() => {});
    }
  }
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

/** Appends one JSON object per line to `log.jsonl` (an error names the file). */
export async function appendLog(dir: string, record: object): Promise<void> {
  await appendTextNamed(join(dir, "log.jsonl"), JSON.stringify(record) + "\n");
}

function formatDuration(sec: number): string {
  if (!Number.isFinite(sec) || sec < 0) return "?";
  const s = Math.round(sec);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(s % 60).padStart(2, "0")}s`;
}

/**
 * The progress line on stderr: kimg done / total, images/s, ETA and the latest losses. On a
 * terminal the line is rewritten in place (`\r`); otherwise one line is printed per tick.
 * (`npm:cli-progress` is not used: it draws nothing useful without a TTY, and this is all we need.)
 */
export class Progress {
  readonly #tty: boolean;
  readonly #totalNimg: number;
  #open = false;

  constructor(totalNimg: number, tty = Deno.stderr.isTerminal()) {
    this.#tty = tty;
    this.#totalNimg = totalNimg;
  }

  #line(nimg: number, imgPerSec: number, s: IterationStats | TickRecord): string {
    const eta = (this.#totalNimg - nimg) / imgPerSec;
    const gan = s.lossGGan === null ? "" : ` G_gan ${s.lossGGan.toFixed(3)}`;
    const d = s.lossD === null ? "" : ` D ${s.lossD.toFixed(3)}`;
    return `kimg ${(nimg / 1000).toFixed(3)}/${(this.#totalNimg / 1000).toFixed(3)} ` +
      `${imgPerSec.toFixed(1)} img/s ETA ${formatDuration(eta)} | fake ${
        s.lossFake.toFixed(3)
      }${d}` +
      ` G ${s.lossG.toFixed(3)}${gan}`;
  }

  /** After every iteration (only drawn on a terminal). */
  iteration(s: IterationStats, imgPerSec: number): void {
    if (!this.#tty) return;
    const text = this.#line(s.nimg, imgPerSec, s);
    Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[2K${text}`));
    this.#open = true;
  }

  /** At the end of every tick (one line when not on a terminal). */
  tick(r: TickRecord): void {
    if (this.#tty) return;
    console.error(`tick ${r.tick} ${this.#line(r.nimg, r.imgPerSec, r)}`);
  }

  /** Prints a message on its own line (ending an in-place line first). */
  message(text: string): void {
    this.finish();
    console.error(text);
  }

  /** Ends an in-place line. */
  finish(): void {
    if (this.#open) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
    this.#open = false;
  }
}

/** The run's name: the folder's base name. */
export function runName(dir: string): string {
  return basename(dir.replace(/\/+$/, "")) || dir;
}
