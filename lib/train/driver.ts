/**
 * The run driver shared by every training: EDM teacher training (`lib/diffusion/
 * teacher_training.ts`) and SiD / SiDA / SiD²A distillation (`lib/distill/train.ts`) are two
 * {@linkcode Trainer}s run by {@linkcode runTraining}.
 *
 * A trainer knows one iteration and its own state; the driver owns everything around it, in the
 * order of the reference loops (NVlabs/edm `training/training_loop.py:150-225`, mingyuanzhou/SiD
 * `sida_training/sida_training_loop.py:339-520`):
 *
 * 1. the run folder's lock (`lib/io/lock.ts`), then resume: the folder's latest training state is
 *    read, checked against the current settings (`incompatibility`) and loaded into the trainer;
 * 2. the loop: one `trainer.step()` per iteration; a tick (a `log.jsonl` line and a progress line)
 *    after the first iteration and then every `tickKimg`; an EMA snapshot every `snapKimg`; a
 *    training state every `dumpKimg`; both at the end;
 * 3. a {@linkcode NonFiniteGuard} on every iteration: nothing is written during a streak of
 *    non-finite iterations, and the run stops after `nonFiniteLimit` of them;
 * 4. Ctrl-C: an aborted `signal` finishes the current iteration, writes a state and returns
 *    `interrupted` ({@linkcode withInterrupt} wires SIGINT to such a signal for a task).
 *
 * Under `mpirun -np N` (`./parallel.ts`, docs/mpi.md) rank 0 alone locks the folder, writes the
 * log, snapshots and states and prints progress; it reads the state to resume from and sends it
 * to the other ranks; every rank runs the trainer, whose gradients are summed over ranks; the
 * ranks agree on an interrupt after every iteration (one stops, all stop after the same
 * iteration), and the EMA network's fingerprint is compared across ranks at the start and at
 * every snapshot or state.
 *
 * @module
 */
import { join } from "node:path";
import { tf } from "../deps.ts";
import { IoError } from "../io/host_tensor.ts";
import type { HostTensor } from "../io/host_tensor.ts";
import { lockRunFolder } from "../io/lock.ts";
import { saveNetwork } from "../nets/network.ts";
import type { EDMPrecond } from "../nets/precond.ts";
import { EDM2Precond } from "../nets/edm2.ts";
import { saveEdm2Network } from "../nets/import_edm2.ts";
import { UsageError } from "../runtime/cli.ts";
import { exitTogether, mpiWorld } from "../runtime/mpi.ts";
import { anyRank, type DataParallel, dataParallel, isWriter } from "./parallel.ts";
import {
  DEFAULT_NON_FINITE_LIMIT,
  type IterationHealth,
  NonFiniteGuard,
  NonFiniteTrainingError,
} from "./guard.ts";
import {
  appendLog,
  findLatestState,
  networkFingerprint,
  Progress,
  readStateFile,
  removeStaleTemporaries,
  runName,
  snapshotFileName,
  type StateCounters,
  type StateFile,
  writeStateFile,
} from "./run_folder.ts";

/** What every trainer's state holds (a trainer adds its own fields). */
export interface TrainerState {
  /** Images seen. */
  curNimg: number;
  /** Iterations done. */
  iteration: number;
  /** Networks and optimizer states, PyTorch names and layouts. */
  tensors: Map<string, HostTensor>;
}

/** A trainer: one iteration at a time, with a state to save and restore. */
export interface Trainer<S, St extends TrainerState> {
  /** Images seen so far. */
  readonly curNimg: number;
  /** Images per iteration. */
  readonly batch: number;
  /** Runs one iteration and reports it. */
  step(): Promise<S>;
  /** Everything needed to resume. */
  state(): Promise<St>;
  /** Restores a state from {@linkcode state}; throws (a one-line message) on a mismatch. */
  load(state: St): void;
  /** The network that snapshots hold (the EMA network): EDM's or EDM2's. */
  snapshotNetwork(): EDMPrecond | EDM2Precond;
  /** Frees what the trainer owns. */
  dispose(): void;
}

/** A tick's summary as the driver passes it on: at least the images seen and the speed. */
export interface TickSummary {
  tick: number;
  nimg: number;
  imgPerSec: number;
}

/** What the driver knows of a tick when it asks the trainer's kind for the `log.jsonl` record. */
export interface TickInfo {
  tick: number;
  elapsedSec: number;
  secPerTick: number;
  batch: number;
}

/** How one kind of training (teacher, distillation) is written, read, logged and reported. */
export interface TrainingKind<S, St extends TrainerState, Run, R extends TickSummary> {
  /** The task named in the run folder's lock (`teacher`, `sid`, `sida`). */
  task: string;
  /** The training in messages (`distillation`, `teacher training`). */
  what: string;
  /** The format tag of its training-state files. */
  format: string;
  /** The state-file format in messages (`a teacher training state`). */
  formatWhat?: string;
  /** The trainer's metadata entries of a state file (besides `format`, `run`, `counters`). */
  stateMetadata(state: St): Record<string, string>;
  /** The trainer's state from a state file. */
  decodeState(file: StateFile<Run>, path: string): St;
  /** Extra counters of a state file (the teacher's last tick loss). */
  counters?(): Record<string, unknown>;
  /** Why a saved run cannot be continued with the current settings (one line), or null. */
  incompatibility(saved: Run, current: Run): string | null;
  /** The losses and kept-sample counts the {@linkcode NonFiniteGuard} watches. */
  health(s: S): IterationHealth;
  /** Wall-clock seconds of an iteration. */
  seconds(s: S): number;
  /** The `log.jsonl` record of a tick's iterations (without `memory`, which the driver adds). */
  tickRecord(stats: S[], info: TickInfo): R;
  /** Called with every tick record. */
  onTick?(record: R): void;
  /** The losses shown after the `|` of the progress line. */
  detail(x: S | R): string;
  /** Metadata of a snapshot besides `kimg` and `run` (and the network's own). */
  snapshotMetadata(): Record<string, string>;
  /** The line said when the run starts (`resumedFrom`: the state it resumes from, or null). */
  startMessage(resumedFrom: string | null, curNimg: number): string;
  /** The line said at the end of an uninterrupted run. */
  doneMessage?(curNimg: number, statePath: string | null): string;
  /** The flag that sets the length, for the `nothing to do` message (`--duration`). */
  lengthFlag: string;
}

/** Options of {@linkcode runTraining}. */
export interface TrainingRun<S, St extends TrainerState, Run, R extends TickSummary> {
  /** The trainer (owned by the caller: not disposed here). */
  trainer: Trainer<S, St>;
  /** How this kind of training is written and reported. */
  kind: TrainingKind<S, St, Run, R>;
  /** The run's identity and settings, stored in every training state. */
  run: Run;
  /** The run folder. */
  out: string;
  /** Length and cadence, in kimg. */
  durationKimg: number;
  tickKimg: number;
  snapKimg: number;
  dumpKimg: number;
  /** A line said once the folder's run is accepted, before the start line (the backend). */
  intro?: string;
  /** Insist on continuing: a folder without a training state is a `UsageError`. */
  requireResume?: boolean;
  /** A state that cannot be read is a `UsageError` ("cannot be continued"), not an `IoError`. */
  unreadableIsUsage?: boolean;
  /** When aborted: finish the iteration, write a state, return `interrupted`. */
  signal?: AbortSignal;
  /** No progress or status lines on stderr. */
  quiet?: boolean;
  /** Consecutive non-finite iterations that stop the run (default 5). */
  nonFiniteLimit?: number;
  /** Called after every iteration. */
  onIteration?: (stats: S) => void;
  /**
   * Called after every EMA snapshot is written (`path`, images seen), before the training state
   * of the same iteration; awaited (the chain evaluates the snapshot here).
   */
  onSnapshot?: (path: string, nimg: number) => Promise<void>;
}

/** What {@linkcode runTraining} returns. */
export interface TrainingResult<R> {
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
  /** The last tick record of this call, if any. */
  lastTick: R | null;
  /** The counters of the state the run resumed from, if any. */
  resumedCounters: StateCounters | null;
}

/**
 * Runs (or resumes) a training in its run folder; see the module doc. The trainer is built and
 * every setting validated by the caller before this is called: nothing is written before the
 * folder's lock is held and its saved run (if any) is found compatible and loaded.
 *
 * @throws UsageError (a run that cannot be continued), IoError (unreadable or unwritable files),
 *   NonFiniteTrainingError (a run that went non-finite; its last good state is kept).
 */
export async function runTraining<S, St extends TrainerState, Run, R extends TickSummary>(
  o: TrainingRun<S, St, Run, R>,
): Promise<TrainingResult<R>> {
  const { trainer: t, kind } = o;
  const dp = dataParallel();
  const writer = isWriter(dp);
  // One process at a time in the run folder (lib/io/lock.ts), taken before reading its state;
  // under MPI by rank 0 only, which reads the state and sends it to the others.
  await using _lock = writer ? await lockRunFolder(o.out, { task: kind.task }) : undefined;
  const found = writer ? await findLatestState(o.out) : null;
  const latest = dp ? dp.broadcastJson<string | null>(found) : found;
  if (o.requireResume && !latest) {
    throw new UsageError(`--resume: ${o.out} holds no training state`);
  }
  let resumedCounters: StateCounters | null = null;
  if (latest) {
    let saved: StateFile<Run>;
    try {
      saved = dp
        ? await readSharedStateFile<Run>(dp, latest, kind.format, kind.formatWhat)
        : await readStateFile<Run>(latest, kind.format, kind.formatWhat);
    } catch (e) {
      if (!o.unreadableIsUsage) throw e;
      throw new UsageError(
        `${o.out} holds a run that cannot be continued: ${(e as Error).message.split("\n")[0]}`,
      );
    }
    const why = kind.incompatibility(saved.run, o.run);
    if (why) throw new UsageError(`${o.out} holds a run that cannot be continued: ${why}`);
    try {
      t.load(kind.decodeState(saved, latest));
    } catch (e) {
      if (e instanceof IoError) throw e;
      throw new IoError(`${latest}: ${(e as Error).message}`);
    }
    resumedCounters = saved.counters;
  }
  if (dp) await checkSameWeights(dp, t.snapshotNetwork(), "at the start");
  if (!o.quiet && writer) {
    if (o.intro) console.error(o.intro);
    console.error(kind.startMessage(latest, t.curNimg) + (dp ? ` on ${dp.size} MPI ranks` : ""));
  }
  if (writer) {
    await Deno.mkdir(o.out, { recursive: true });
    await removeStaleTemporaries(o.out);
  }
  return await loop({ ...o, quiet: o.quiet || !writer }, latest !== null, resumedCounters, dp);
}

/**
 * Rank 0 reads the state file and broadcasts its bytes; every rank parses them (from a private
 * temporary copy on the other ranks, so the run folder need not be shared between hosts).
 */
async function readSharedStateFile<Run>(
  dp: DataParallel,
  path: string,
  format: string,
  what?: string,
): Promise<StateFile<Run>> {
  let bytes: Uint8Array | null = null;
  let error = "";
  if (dp.rank === 0) {
    try {
      bytes = await Deno.readFile(path);
    } catch (e) {
      error = (e as Error).message;
    }
  }
  error = dp.broadcastJson<string>(error);
  if (error) throw new IoError(`${path}: ${error}`);
  const shared = dp.broadcastBytes(bytes);
  if (dp.rank === 0) return await readStateFile<Run>(path, format, what);
  const dir = await Deno.makeTempDir({ prefix: "sida-mpi-state-" });
  try {
    const copy = join(dir, path.split("/").pop()!);
    await Deno.writeFile(copy, shared);
    const file = await readStateFile<Run>(copy, format, what);
    return file;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Throws unless every rank holds the same weights in `net` (fingerprints compared). */
async function checkSameWeights(
  dp: DataParallel,
  net: EDMPrecond | EDM2Precond,
  when: string,
): Promise<void> {
  const hex = await networkFingerprint(net);
  const mine = [parseInt(hex.slice(0, 8), 16), parseInt(hex.slice(8), 16)];
  const all = Array.from(dp.allgatherF64(Float64Array.from(mine)));
  for (let r = 1; r < dp.size; r++) {
    if (all[2 * r] !== all[0] || all[2 * r + 1] !== all[1]) {
      throw new Error(`MPI ranks 0 and ${r} hold different weights ${when}`);
    }
  }
}

async function loop<S, St extends TrainerState, Run, R extends TickSummary>(
  o: TrainingRun<S, St, Run, R>,
  resumed: boolean,
  resumedCounters: StateCounters | null,
  dp: DataParallel | null,
): Promise<TrainingResult<R>> {
  const { trainer: t, kind } = o;
  const writer = isWriter(dp);
  const totalNimg = Math.round(o.durationKimg * 1000);
  const name = runName(o.out);
  const progress = new Progress<S, R>(totalNimg, (x) => kind.detail(x));
  const say = (s: string) => {
    if (!o.quiet) progress.message(s);
  };
  const result: TrainingResult<R> = {
    curNimg: t.curNimg,
    iterations: 0,
    interrupted: false,
    resumed,
    statePath: null,
    snapshotPath: null,
    lastTick: null,
    resumedCounters,
  };
  if (t.curNimg >= totalNimg) {
    say(
      `nothing to do: ${t.curNimg / 1000} kimg already done (${kind.lengthFlag} ${o.durationKimg})`,
    );
    return result;
  }
  const start = performance.now();
  const elapsedBefore = resumedCounters?.elapsedSec ?? 0;
  const elapsed = () => elapsedBefore + (performance.now() - start) / 1000;
  let lastDump = t.curNimg;
  let lastSnap = t.curNimg;
  let tick = 0;
  let tickStartNimg = t.curNimg;
  let tickStartTime = performance.now();
  let tickStats: S[] = [];
  let speed = NaN;
  const guard = new NonFiniteGuard(o.nonFiniteLimit ?? DEFAULT_NON_FINITE_LIMIT, kind.what);
  while (t.curNimg < totalNimg) {
    const stats = await t.step();
    result.iterations++;
    tickStats.push(stats);
    o.onIteration?.(stats);
    try {
      guard.observe(kind.health(stats), t.curNimg);
    } catch (e) {
      progress.finish();
      if (!(e instanceof NonFiniteTrainingError)) throw e;
      const last = result.statePath ?? await findLatestState(o.out);
      throw new NonFiniteTrainingError(
        `${e.message}; ${last ? `last good state: ${last}` : "no state had been written yet"}`,
      );
    }
    const ips = t.batch / kind.seconds(stats);
    speed = Number.isFinite(speed) ? 0.8 * speed + 0.2 * ips : ips;
    if (!o.quiet) progress.iteration(t.curNimg, stats, speed);
    // Let signal handlers run: on the cpu backend an iteration may never leave the microtask
    // queue, and a SIGINT listener is a macrotask.
    await new Promise((resolve) => setTimeout(resolve, 0));
    const done = t.curNimg >= totalNimg;
    // Under MPI: an interrupt on any rank stops every rank after this iteration.
    const interrupted = anyRank(o.signal?.aborted ?? false, dp);
    // A tick ends after the first iteration, then every tickKimg (the reference's
    // `cur_nimg >= tick_start_nimg + kimg_per_tick * 1000`).
    if (done || interrupted || tick === 0 || t.curNimg >= tickStartNimg + o.tickKimg * 1000) {
      const now = performance.now();
      const record = kind.tickRecord(tickStats, {
        tick,
        elapsedSec: elapsed(),
        secPerTick: (now - tickStartTime) / 1000,
        batch: t.batch,
      });
      if (writer) {
        await appendLog(o.out, { ...record, memory: { numTensors: tf.memory().numTensors } });
      }
      kind.onTick?.(record);
      result.lastTick = record;
      if (!o.quiet) progress.tick(tick, record.nimg, record.imgPerSec, record);
      tick++;
      tickStartNimg = t.curNimg;
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
    const snapDue = done || t.curNimg >= lastSnap + o.snapKimg * 1000;
    const dumpDue = done || interrupted || t.curNimg >= lastDump + o.dumpKimg * 1000;
    if (dp && (snapDue || dumpDue)) {
      await checkSameWeights(dp, t.snapshotNetwork(), `at kimg ${t.curNimg / 1000}`);
    }
    if (snapDue) {
      if (writer) {
        const path = join(o.out, snapshotFileName(t.curNimg));
        const net = t.snapshotNetwork();
        const meta = { kimg: String(t.curNimg / 1000), run: name, ...kind.snapshotMetadata() };
        if (net instanceof EDM2Precond) await saveEdm2Network(net, path, meta);
        else await saveNetwork(net, path, meta);
        result.snapshotPath = path;
        await o.onSnapshot?.(path, t.curNimg);
      }
      lastSnap = t.curNimg;
    }
    if (dumpDue) {
      if (writer) {
        const state = await t.state();
        result.statePath = await writeStateFile(o.out, kind.format, {
          tensors: state.tensors,
          run: o.run,
          counters: {
            curNimg: state.curNimg,
            iteration: state.iteration,
            elapsedSec: elapsed(),
            ...kind.counters?.(),
          },
          metadata: kind.stateMetadata(state),
        });
      }
      lastDump = t.curNimg;
      if (interrupted) {
        say(`interrupted: state written to ${result.statePath}`);
        result.interrupted = true;
        break;
      }
    }
  }
  progress.finish();
  result.curNimg = t.curNimg;
  if (!result.interrupted) {
    say(
      kind.doneMessage?.(t.curNimg, result.statePath) ??
        `done: ${t.curNimg / 1000} kimg; state ${result.statePath}`,
    );
  }
  return result;
}

/**
 * Runs `body` with SIGINT wired to an abort signal, as every training task does: the first
 * Ctrl-C finishes the current iteration, writes a state and exits with status 130 (when `body`
 * reports `interrupted`); a second one exits at once (states are written atomically, so none is
 * ever half-written). Under MPI, SIGUSR1 does the same (`kill -USR1 <mpirun's pid>`: mpirun
 * forwards it to every rank, while it answers SIGINT by terminating the ranks); the ranks agree
 * to stop after the same iteration (docs/mpi.md).
 */
export async function withInterrupt(
  body: (signal: AbortSignal) => Promise<{ interrupted: boolean }>,
  message = "finishing this iteration and writing a training state",
): Promise<void> {
  const controller = new AbortController();
  let interrupts = 0;
  const signals: Deno.Signal[] = mpiWorld() ? ["SIGINT", "SIGUSR1"] : ["SIGINT"];
  const handlers = signals.map((sig) => {
    const onInterrupt = () => {
      if (++interrupts > 1) Deno.exit(130);
      if (isWriter()) console.error(`\n${sig}: ${message}…`);
      controller.abort();
    };
    Deno.addSignalListener(sig, onInterrupt);
    return [sig, onInterrupt] as const;
  });
  try {
    const r = await body(controller.signal);
    if (r.interrupted) {
      exitTogether(); // every rank stopped after the same iteration (the driver's agreement)
      Deno.exit(130);
    }
  } finally {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  }
}
