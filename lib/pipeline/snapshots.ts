/**
 * Best and last snapshots of a distillation stage, as the reference's `save_best_and_last`
 * (mingyuanzhou/SiD branch `sida`, `sida_training/sida_training_loop.py:333-337, 486-515`): every
 * EMA snapshot is scored (FID) when it is written, and the stage folder keeps
 *
 * - `network-snapshot-best.safetensors` + `network-snapshot-best.json`: the snapshot with the
 *   lowest FID so far (`snapshot`, `nimg`, `kimg`, `fid`, the settings it was scored with and the
 *   SHA-256 of the copy);
 * - `network-snapshot-last.safetensors` + `network-snapshot-last.json`: the latest snapshot;
 * - `snapshot-fids.jsonl`: one line per scored snapshot (the FID curve).
 *
 * The reference forgets its best FID when a run restarts; here the best survives resume, being
 * read back from its sidecar. A snapshot written again after a resume (same `nimg`) is scored
 * again; the best copy keeps the best generator seen, even when its numbered snapshot has since
 * been overwritten. The copy is written before its sidecar, both atomically; a copy whose hash
 * differs from its sidecar's (a kill between the two writes) is scored again and its sidecar
 * rewritten. Settings that differ from the sidecar's (another sample count, seed, detector or
 * reference) restart the selection. Scoring happens in the caller (`scorer`), so this module
 * holds no tensor.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { basename, join } from "node:path";
import { appendTextNamed, writeFileAtomic } from "../io/atomic.ts";
import { IoError } from "../io/host_tensor.ts";
import { readSafetensorsHeader } from "../io/safetensors.ts";

/** Format tag of the best / last sidecars. */
export const PICKED_SNAPSHOT_FORMAT = "sida-picked-snapshot/1";

/** File names in a stage folder. */
export const BEST_SNAPSHOT = "network-snapshot-best.safetensors";
export const LAST_SNAPSHOT = "network-snapshot-last.safetensors";
export const SNAPSHOT_FIDS = "snapshot-fids.jsonl";

/** What the snapshots are scored with (stored with every score; a change restarts selection). */
export interface SnapshotScoreSettings {
  /** Generated images per snapshot. */
  num: number;
  /** Seed of the latents and labels. */
  seed: number;
  /** The feature space's name (`mnist`, `inception`, …). */
  space: string;
  /** Detector and reference statistics files. */
  detector: string;
  ref: string;
}

/** A scorer's result: FID, and IS when computed. */
export interface SnapshotScore {
  fid: number;
  is?: { mean: number; std: number };
}

/** Scores a snapshot file (FID at `settings.num` samples). */
export type SnapshotScorer = (path: string) => Promise<SnapshotScore>;

/** One scored snapshot (a line of `snapshot-fids.jsonl`; the body of the sidecars). */
export interface SnapshotRecord extends SnapshotScore {
  /** The numbered snapshot file's name. */
  snapshot: string;
  nimg: number;
  kimg: number;
  settings: SnapshotScoreSettings;
  /** SHA-256 of the snapshot's bytes. */
  sha256: string;
  scoredAt: string;
}

/** `network-snapshot-best.json` / `network-snapshot-last.json`. */
export interface PickedSnapshot extends SnapshotRecord {
  format: typeof PICKED_SNAPSHOT_FORMAT;
  which: "best" | "last";
  /** The copy, relative to the stage folder. */
  file: string;
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function sidecarPath(file: string): string {
  return file.replace(/\.safetensors$/, ".json");
}

function sameSettings(a: SnapshotScoreSettings, b: SnapshotScoreSettings): boolean {
  return a.num === b.num && a.seed === b.seed && a.space === b.space &&
    a.detector === b.detector && a.ref === b.ref;
}

async function readJson<T>(path: string): Promise<T | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as T;
  } catch {
    return null;
  }
}

async function readBytes(path: string): Promise<Uint8Array | null> {
  try {
    return await Deno.readFile(path);
  } catch {
    return null;
  }
}

/** Images seen recorded in a snapshot's metadata (`kimg`), or null. */
async function snapshotNimg(path: string): Promise<number | null> {
  try {
    const { metadata } = await readSafetensorsHeader(path);
    const k = Number(metadata.kimg);
    return Number.isFinite(k) ? Math.round(k * 1000) : null;
  } catch {
    return null;
  }
}

/** Reads a stage folder's best or last sidecar (null when missing or unreadable). */
export async function readPickedSnapshot(
  dir: string,
  which: "best" | "last",
): Promise<PickedSnapshot | null> {
  const p = await readJson<PickedSnapshot>(
    sidecarPath(join(dir, which === "best" ? BEST_SNAPSHOT : LAST_SNAPSHOT)),
  );
  return p && p.format === PICKED_SNAPSHOT_FORMAT && Number.isFinite(p.fid) ? p : null;
}

/**
 * Every scored snapshot of a stage folder with these settings, by images seen; a snapshot
 * scored twice (written again after a resume) keeps its latest score.
 */
export async function readSnapshotScores(
  dir: string,
  settings?: SnapshotScoreSettings,
): Promise<SnapshotRecord[]> {
  let text = "";
  try {
    text = await Deno.readTextFile(join(dir, SNAPSHOT_FIDS));
  } catch {
    return [];
  }
  const byNimg = new Map<number, SnapshotRecord>();
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    let r: SnapshotRecord;
    try {
      r = JSON.parse(line);
    } catch {
      continue; // a line cut by a kill
    }
    if (!Number.isFinite(r.fid) || !Number.isFinite(r.nimg) || !r.settings) continue;
    if (settings && !sameSettings(r.settings, settings)) continue;
    byNimg.set(r.nimg, r);
  }
  return [...byNimg.values()].sort((a, b) => a.nimg - b.nimg);
}

/** Keeps a stage folder's best and last snapshots; see the module doc. */
export class BestLastTracker {
  readonly dir: string;
  readonly settings: SnapshotScoreSettings;
  #scorer: SnapshotScorer;
  #best: PickedSnapshot | null;
  #last: PickedSnapshot | null;
  /**
   * Snapshots at or before this many images are best only when no later one exists: in SiD²A,
   * those taken before G's first step (its warm-up) are the initial generator itself.
   */
  readonly bestAfterNimg: number;

  private constructor(
    dir: string,
    settings: SnapshotScoreSettings,
    scorer: SnapshotScorer,
    best: PickedSnapshot | null,
    last: PickedSnapshot | null,
    bestAfterNimg: number,
  ) {
    this.bestAfterNimg = bestAfterNimg;
    this.dir = dir;
    this.settings = settings;
    this.#scorer = scorer;
    this.#best = best;
    this.#last = last;
  }

  /**
   * Opens a stage folder: reads its best and last sidecars, checks each copy against its
   * sidecar's hash (a copy without a matching sidecar is scored again), and drops both when they
   * were scored with other settings. With `bestAfterNimg`, snapshots at or before that many images
   * are best only while no later one has been scored; a best kept before that rule (an older run)
   * is picked again from the scored snapshots whose files are still there.
   */
  static async open(
    dir: string,
    settings: SnapshotScoreSettings,
    scorer: SnapshotScorer,
    options: { bestAfterNimg?: number } = {},
  ): Promise<BestLastTracker> {
    const t = new BestLastTracker(dir, settings, scorer, null, null, options.bestAfterNimg ?? 0);
    t.#best = await t.#recover("best");
    t.#last = await t.#recover("last");
    if (t.#best && !t.#eligible(t.#best.nimg)) await t.#repickBest();
    return t;
  }

  #eligible(nimg: number): boolean {
    return nimg > this.bestAfterNimg;
  }

  /** Whether a snapshot scored `fid` at `nimg` images replaces the best so far. */
  #beatsBest(nimg: number, fid: number): boolean {
    const b = this.#best;
    if (!b) return true;
    const ok = this.#eligible(nimg);
    if (ok !== this.#eligible(b.nimg)) return ok;
    return fid < b.fid;
  }

  /** The best among the scored snapshots past `bestAfterNimg` whose files are unchanged. */
  async #repickBest(): Promise<void> {
    const records = (await readSnapshotScores(this.dir, this.settings))
      .filter((r) => this.#eligible(r.nimg))
      .sort((a, b) => a.fid - b.fid);
    for (const r of records) {
      const bytes = await readBytes(join(this.dir, r.snapshot));
      if (bytes && sha256(bytes) === r.sha256) {
        this.#best = await this.#keep("best", r, bytes);
        return;
      }
    }
  }

  /** The best snapshot so far (null before the first). */
  get best(): PickedSnapshot | null {
    return this.#best;
  }

  /** The latest snapshot (null before the first). */
  get last(): PickedSnapshot | null {
    return this.#last;
  }

  async #recover(which: "best" | "last"): Promise<PickedSnapshot | null> {
    const file = join(this.dir, which === "best" ? BEST_SNAPSHOT : LAST_SNAPSHOT);
    const bytes = await readBytes(file);
    if (!bytes) return null;
    const side = await readPickedSnapshot(this.dir, which);
    const hash = sha256(bytes);
    if (side && side.sha256 === hash) {
      return sameSettings(side.settings, this.settings) ? side : null;
    }
    // A copy without its sidecar: score it again.
    const nimg = await snapshotNimg(file);
    if (nimg === null) return null;
    const score = await this.#score(file);
    const picked: PickedSnapshot = {
      format: PICKED_SNAPSHOT_FORMAT,
      which,
      file: basename(file),
      snapshot: side?.nimg === nimg ? side.snapshot : basename(file),
      nimg,
      kimg: nimg / 1000,
      ...score,
      settings: this.settings,
      sha256: hash,
      scoredAt: new Date().toISOString(),
    };
    await writeFileAtomic(sidecarPath(file), json(picked));
    return picked;
  }

  async #score(path: string): Promise<SnapshotScore> {
    const s = await this.#scorer(path);
    if (!Number.isFinite(s.fid)) throw new IoError(`${path}: its FID is ${s.fid}`);
    return s.is ? { fid: s.fid, is: s.is } : { fid: s.fid };
  }

  /**
   * Scores the snapshot just written at `path` (`nimg` images seen), records it, makes it the
   * last, and the best when its FID is lower than the best so far. Returns its record.
   */
  async onSnapshot(path: string, nimg: number): Promise<SnapshotRecord> {
    const bytes = await readBytes(path);
    if (!bytes) throw new IoError(`${path}: snapshot not found`);
    const score = await this.#score(path);
    const record: SnapshotRecord = {
      snapshot: basename(path),
      nimg,
      kimg: nimg / 1000,
      ...score,
      settings: this.settings,
      sha256: sha256(bytes),
      scoredAt: new Date().toISOString(),
    };
    await appendTextNamed(join(this.dir, SNAPSHOT_FIDS), JSON.stringify(record) + "\n");
    if (this.#beatsBest(nimg, record.fid)) {
      this.#best = await this.#keep("best", record, bytes);
    }
    if (!this.#last || nimg >= this.#last.nimg) {
      this.#last = await this.#keep("last", record, bytes);
    }
    return record;
  }

  /**
   * Scores, in order, the numbered snapshots (`snapshots`: file names with their images seen)
   * that have no record with these settings and these bytes, so that a stage interrupted between
   * a snapshot and its score, or scored with other settings before, ends with a complete record.
   * When `final` names the stage's final snapshot and it is not the last kept, it is made the
   * last.
   */
  async catchUp(
    snapshots: readonly { name: string; nimg: number }[],
    final?: { name: string; nimg: number },
  ): Promise<void> {
    const scored = new Map(
      (await readSnapshotScores(this.dir, this.settings)).map((r) => [r.nimg, r]),
    );
    for (const s of snapshots) {
      const had = scored.get(s.nimg);
      const bytes = had?.snapshot === s.name ? await readBytes(join(this.dir, s.name)) : null;
      if (had && bytes && sha256(bytes) === had.sha256) continue;
      await this.onSnapshot(join(this.dir, s.name), s.nimg);
    }
    if (final && (this.#last?.nimg !== final.nimg || this.#last.snapshot !== final.name)) {
      const bytes = await readBytes(join(this.dir, final.name));
      if (!bytes) throw new IoError(`${join(this.dir, final.name)}: snapshot not found`);
      const rec = (await readSnapshotScores(this.dir, this.settings)).find((r) =>
        r.nimg === final.nimg
      );
      if (rec) this.#last = await this.#keep("last", rec, bytes);
      else await this.onSnapshot(join(this.dir, final.name), final.nimg);
    }
  }

  async #keep(
    which: "best" | "last",
    r: SnapshotRecord,
    bytes: Uint8Array,
  ): Promise<PickedSnapshot> {
    const file = join(this.dir, which === "best" ? BEST_SNAPSHOT : LAST_SNAPSHOT);
    const picked: PickedSnapshot = {
      format: PICKED_SNAPSHOT_FORMAT,
      which,
      file: basename(file),
      ...r,
    };
    // The copy first, then its sidecar: a kill between them leaves a copy whose hash no sidecar
    // names, which `open` scores again.
    await writeFileAtomic(file, bytes);
    await writeFileAtomic(sidecarPath(file), json(picked));
    return picked;
  }
}

function json(v: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(v, null, 2) + "\n");
}
