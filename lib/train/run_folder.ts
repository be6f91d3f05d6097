/**
 * Run folders of every training (EDM teacher, SiD, SiDA, SiD²A): file names, training-state files,
 * the tick log, stale temporaries, weight fingerprints and the progress line.
 *
 * A run folder holds
 *
 * - `training-state-<kimg>.safetensors`: the trainer's tensors and, in `__metadata__`, `format`
 *   (which trainer wrote it), `run` (the run's identity and settings as JSON), `counters`
 *   (`{curNimg, iteration, elapsedSec, …}`) and the trainer's own entries. Written atomically;
 *   only the latest is kept, and an older one is deleted only once the new one is in place (as the
 *   reference loops keep only the latest, mingyuanzhou/SiD `sida_training/sida_training_loop.py`,
 *   NVlabs/edm `training/training_loop.py`).
 * - `network-snapshot-<kimg>.safetensors`: the EMA network (`saveNetwork`, loadable with
 *   `loadNetwork`).
 * - `log.jsonl`: one JSON object per tick.
 *
 * `<kimg>` is the image count in thousands, zero-padded to 6 digits as in the reference
 * (`{cur_nimg//1000:06d}`), with a 3-digit fraction when the count is not a whole kimg
 * (`000000.064`), so small runs never reuse a name.
 *
 * @module
 */
import { basename, join } from "node:path";
import { appendTextNamed, mkdirNamed, PARTIAL_FILE_RE } from "../io/atomic.ts";
import { IoError } from "../io/host_tensor.ts";
import type { HostTensor } from "../io/host_tensor.ts";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import type { Module } from "../nets/module.ts";

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

/** The file name of the EMA-network snapshot at `nimg` images. */
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

/** The counters every training state records. */
export interface StateCounters {
  /** Images seen. */
  curNimg: number;
  /** Iterations done. */
  iteration: number;
  /** Seconds of training before the state was written (over all sessions). */
  elapsedSec: number;
  /** A trainer's own counters (the teacher: `loss`). */
  [extra: string]: unknown;
}

/** A training-state file's parts. */
export interface StateFile<Run> {
  /** The trainer's tensors. */
  tensors: Map<string, HostTensor>;
  /** The run's identity and settings. */
  run: Run;
  /** Images, iterations, seconds. */
  counters: StateCounters;
  /** The trainer's other metadata entries (strings). */
  metadata: Record<string, string>;
}

/**
 * Writes a training state into `dir` atomically (temporary file, then rename), then deletes every
 * other `training-state-*.safetensors` of the folder. Metadata order: `format`, `run`, `counters`,
 * then the trainer's entries. Returns the new file's path.
 */
export async function writeStateFile<Run>(
  dir: string,
  format: string,
  file: StateFile<Run>,
): Promise<string> {
  await mkdirNamed(dir);
  const name = stateFileName(file.counters.curNimg);
  const path = join(dir, name);
  await writeSafetensors(path, file.tensors, {
    format,
    run: JSON.stringify(file.run),
    counters: JSON.stringify(file.counters),
    ...file.metadata,
  });
  for (const other of await listDir(dir)) {
    if (other !== name && STATE_RE.test(other)) {
      await Deno.remove(join(dir, other)).catch(() => {});
    }
  }
  return path;
}

/**
 * Reads a training state written by {@linkcode writeStateFile} with the given `format`;
 * `IoError` (naming the file) on another format or missing `run` / `counters` metadata.
 * `what` names the kind of state in the message (`a teacher training state`).
 */
export async function readStateFile<Run>(
  path: string,
  format: string,
  what = "a training state",
): Promise<StateFile<Run>> {
  const { tensors, metadata } = await readSafetensors(path);
  if (metadata.format !== format) {
    throw new IoError(`${path}: not ${what} (format '${metadata.format ?? "none"}')`);
  }
  const parse = <T>(key: string): T => {
    try {
      return JSON.parse(metadata[key]) as T;
    } catch {
      throw new IoError(`${path}: metadata '${key}' is missing or not valid JSON`);
    }
  };
  const run = parse<Run>("run");
  const counters = parse<StateCounters>("counters");
  if (!run || typeof run !== "object" || !Number.isSafeInteger(counters?.curNimg)) {
    throw new IoError(`${path}: incomplete training-state metadata`);
  }
  const rest: Record<string, string> = {};
  for (const [k, v] of Object.entries(metadata)) {
    if (k !== "format" && k !== "run" && k !== "counters") rest[k] = v;
  }
  return {
    tensors: tensors as Map<string, HostTensor>,
    run,
    counters: { ...counters, elapsedSec: counters.elapsedSec ?? 0 },
    metadata: rest,
  };
}

/** Parses a JSON metadata entry of a state file; `IoError` naming the file and key. */
export function stateJson<T>(path: string, metadata: Record<string, string>, key: string): T {
  try {
    return JSON.parse(metadata[key]) as T;
  } catch {
    throw new IoError(`${path}: metadata '${key}' is missing or not valid JSON`);
  }
}

/**
 * A fingerprint of a network's weights (64-bit, hex): two 32-bit multiplicative hashes over the
 * float32 bits of every tensor in state-dict order, plus the tensor names and shapes. Identical
 * weights give the same fingerprint on every backend.
 */
export async function networkFingerprint(net: Module): Promise<string> {
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

/** Appends one JSON object per line to `log.jsonl` (an error names the file). */
export async function appendLog(dir: string, record: object): Promise<void> {
  await appendTextNamed(join(dir, "log.jsonl"), JSON.stringify(record) + "\n");
}

/** Seconds as `1h05m` or `4m09s`; `?` when not a finite, non-negative number. */
export function formatDuration(sec: number): string {
  if (!Number.isFinite(sec) || sec < 0) return "?";
  const s = Math.round(sec);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(s % 60).padStart(2, "0")}s`;
}

/**
 * The progress line on stderr: kimg done / total, images/s, ETA and, after a `|`, what the
 * trainer reports (`detail`: the latest losses). On a terminal the line is rewritten in place
 * (`\r`) after every iteration; otherwise one line is printed per tick.
 * (`npm:cli-progress` is not used: it draws nothing useful without a TTY, and this is all we need.)
 */
export class Progress<S, R> {
  readonly #tty: boolean;
  readonly #totalNimg: number;
  readonly #detail: (x: S | R) => string;
  #open = false;

  constructor(totalNimg: number, detail: (x: S | R) => string, tty = Deno.stderr.isTerminal()) {
    this.#tty = tty;
    this.#totalNimg = totalNimg;
    this.#detail = detail;
  }

  #line(nimg: number, imgPerSec: number, x: S | R): string {
    const eta = (this.#totalNimg - nimg) / imgPerSec;
    return `kimg ${(nimg / 1000).toFixed(3)}/${(this.#totalNimg / 1000).toFixed(3)} ` +
      `${imgPerSec.toFixed(1)} img/s ETA ${formatDuration(eta)} | ${this.#detail(x)}`;
  }

  /** After every iteration (only drawn on a terminal). */
  iteration(nimg: number, s: S, imgPerSec: number): void {
    if (!this.#tty) return;
    const text = this.#line(nimg, imgPerSec, s);
    Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[2K${text}`));
    this.#open = true;
  }

  /** At the end of every tick (one line when not on a terminal). */
  tick(tick: number, nimg: number, imgPerSec: number, r: R): void {
    if (this.#tty) return;
    console.error(`tick ${tick} ${this.#line(nimg, imgPerSec, r)}`);
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
