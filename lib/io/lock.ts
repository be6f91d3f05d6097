/**
 * Run-folder locks: one process at a time writes a run folder.
 *
 * The lock is the file `<dir>/.lock`, holding JSON `{pid, hostname, started, task, token,
 * procStart}`. It is created atomically (written to a temporary file, then hard-linked to
 * `.lock`, which fails when `.lock` exists; `createNew` where hard links are not supported), so a
 * reader never sees a half-written lock. A second process finds the lock and stops with a
 * one-line {@linkcode RunFolderLockedError} naming the folder and the holder. A lock whose holder
 * is gone (same host, and no process with that pid, or a different process under a recycled pid:
 * its start time in `/proc/<pid>/stat` differs) is recovered with a note.
 *
 * The lock is re-entrant within a process (a chain that locks `runs/x` and then runs a stage that
 * locks `runs/x` again only counts), released by {@linkcode RunLock.release} (or `await using`),
 * and removed on `Deno.exit` (the `unload` event) too. A process killed outright leaves its lock,
 * which the next task recovers.
 *
 * Once the lock is held, stale temporary files of `writeFileAtomic`
 * (`.<name>.<16 hex>.partial`, {@linkcode PARTIAL_FILE_RE}) in the folder and its subfolders are
 * removed: no live writer can own them, since writers hold the lock.
 *
 * @example
 * ```ts
 * import { lockRunFolder } from "./lock.ts";
 * await using lock = await lockRunFolder("/tmp/sida-demo-run", { task: "demo" });
 * console.log(`holding ${lock.path}`);
 * ```
 *
 * @module
 */
import { join } from "node:path";
import { mkdirNamed, PARTIAL_FILE_RE, withPath } from "./atomic.ts";

/** The name of the lock file in a run folder. */
export const LOCK_FILE = ".lock";

/** What a lock file holds. */
export interface LockInfo {
  /** Process id of the holder. */
  pid: number;
  /** Host name of the holder (a lock of another host is never taken over). */
  hostname: string;
  /** When the lock was taken (ISO 8601). */
  started: string;
  /** Which task holds it (`distill`, `sid`, `eval`, …). */
  task: string;
  /** A random token: the holder only removes a lock that still holds its token. */
  token: string;
  /** The holder's start time in clock ticks after boot (`/proc/<pid>/stat` field 22), Linux only. */
  procStart?: string;
}

/** The run folder is locked by another live process (or one on another host). */
export class RunFolderLockedError extends Error {
  override name = "RunFolderLockedError";
  /** The holder, as read from the lock file (null when it could not be read). */
  readonly holder: LockInfo | null;
  /** @param message one line. @param holder the lock file's content. */
  constructor(message: string, holder: LockInfo | null) {
    super(message);
    this.holder = holder;
  }
}

/** A held lock. */
export interface RunLock extends AsyncDisposable {
  /** The run folder. */
  readonly dir: string;
  /** The lock file. */
  readonly path: string;
  /** Stale temporary files removed when the lock was taken (paths). */
  readonly removedPartials: string[];
  /** Releases this hold (the file goes when the process's last hold of the folder is released). */
  release(): Promise<void>;
}

/** Options of {@linkcode lockRunFolder}. */
export interface LockOptions {
  /** The task's name, stored in the lock file and shown to a second process. */
  task?: string;
  /** Where notes go (a recovered lock, removed temporaries); default `console.error`. */
  note?: (line: string) => void;
  /** Subfolder depth searched for stale temporaries (default 3; 0: only the folder). */
  partialDepth?: number;
}

interface Held {
  count: number;
  path: string;
  dir: string;
  token: string;
  /** The folder did not exist before the lock: remove it on release if it is still empty. */
  created: boolean;
}

const held = new Map<string, Held>();
let unloadHooked = false;

function randomHex(bytes: number): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(bytes)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

function hostname(): string {
  try {
    return Deno.hostname();
  } catch {
    return "unknown";
  }
}

/** `/proc/<pid>/stat` of a process: its state letter and start time, or null when it is gone. */
function procStat(pid: number): { state: string; start: string } | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return null;
  }
  // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so split after the last ')'.
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return { state: fields[0] ?? "?", start: fields[19] ?? "" };
}

/** Whether process `pid` of this host is alive: true, false, or null when it cannot be told. */
async function processAlive(pid: number, procStart?: string): Promise<boolean | null> {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  if (Deno.build.os === "linux") {
    const st = procStat(pid);
    if (!st || st.state === "Z" || st.state === "X") return false;
    // The same pid, but not the same process: the holder died and the pid was recycled.
    if (procStart && st.start && st.start !== procStart) return false;
    return true;
  }
  if (Deno.build.os === "windows") return null;
  try {
    const r = await new Deno.Command("kill", { args: ["-0", String(pid)], stderr: "null" })
      .output();
    return r.code === 0;
  } catch {
    return null;
  }
}

function parseLock(text: string): LockInfo | null {
  try {
    const v = JSON.parse(text);
    return v && typeof v.pid === "number" && typeof v.hostname === "string" ? v as LockInfo : null;
  } catch {
    return null;
  }
}

function describeHolder(h: LockInfo): string {
  return `pid ${h.pid} on ${h.hostname}${h.task ? `, ${h.task}` : ""}, since ${h.started}`;
}

/** Creates `path` with `text` atomically; false when it exists already. */
async function createLockFile(dir: string, path: string, text: string): Promise<boolean> {
  const temp = join(dir, `${LOCK_FILE}.${randomHex(8)}.partial`);
  try {
    await Deno.writeTextFile(temp, text, { createNew: true });
  } catch (e) {
    throw withPath(e, "cannot write", join(dir, LOCK_FILE));
  }
  try {
    await Deno.link(temp, path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) return false;
    // No hard links on this file system: create the lock directly (a reader may then briefly see
    // an empty lock, which counts as held).
    try {
      const f = await Deno.open(path, { write: true, createNew: true });
      try {
        await f.write(new TextEncoder().encode(text));
      } finally {
        f.close();
      }
      return true;
    } catch (e2) {
      if (e2 instanceof Deno.errors.AlreadyExists) return false;
      throw withPath(e2, "cannot write", path);
    }
  } finally {
    await Deno.remove(temp).catch(() => {});
  }
}

function hookUnload(): void {
  if (unloadHooked) return;
  unloadHooked = true;
  // `Deno.exit` (the tasks' Ctrl-C path) dispatches `unload`; remove the locks still held.
  globalThis.addEventListener("unload", () => {
    for (const h of held.values()) removeIfOurs(h);
    held.clear();
  });
}

function removeIfOurs(h: Held): void {
  try {
    if (parseLock(Deno.readTextFileSync(h.path))?.token === h.token) Deno.removeSync(h.path);
  } catch {
    // gone already
  }
  if (h.created) {
    try {
      Deno.removeSync(h.dir); // only when empty: a non-empty folder makes this fail
    } catch {
      // not empty
    }
  }
}

/**
 * Removes `writeFileAtomic`'s stale temporaries (`.<name>.<16 hex>.partial`) in `dir` and its
 * subfolders down to `depth` levels; a subfolder with a lock of its own is left to that lock's
 * holder. Call only while holding `dir`'s lock. Returns the removed paths.
 */
export async function removeStalePartials(dir: string, depth = 3): Promise<string[]> {
  const removed: string[] = [];
  const entries: Deno.DirEntry[] = [];
  try {
    for await (const e of Deno.readDir(dir)) entries.push(e);
  } catch {
    return removed;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isFile && PARTIAL_FILE_RE.test(e.name)) {
      try {
        await Deno.remove(p);
        removed.push(p);
      } catch {
        // removed by someone else
      }
    } else if (e.isDirectory && depth > 0) {
      const sub = await Deno.stat(join(p, LOCK_FILE)).then(() => true, () => false);
      if (!sub) removed.push(...await removeStalePartials(p, depth - 1));
    }
  }
  return removed;
}

/**
 * Takes the lock of run folder `dir` (created when missing): see the module doc. Throws
 * {@linkcode RunFolderLockedError} when another live process holds it — a one-line message
 * naming the folder and the holder — and an error naming the path when the folder cannot be
 * written. A stale lock (its process is gone) is taken over, with a note.
 */
export function lockRunFolder(dir: string, opts: LockOptions = {}): Promise<RunLock> {
  // One acquisition at a time in this process, so that two concurrent calls on one folder count
  // as one re-entrant hold instead of racing for the file.
  const next = acquiring.then(() => acquire(dir, opts));
  acquiring = next.then(() => {}, () => {});
  return next;
}

let acquiring: Promise<void> = Promise.resolve();

async function acquire(dir: string, opts: LockOptions): Promise<RunLock> {
  const note = opts.note ?? ((s: string) => console.error(s));
  const existed = await Deno.stat(dir).then(() => true, () => false);
  await mkdirNamed(dir);
  let key: string;
  try {
    key = await Deno.realPath(dir);
  } catch (e) {
    throw withPath(e, "cannot open", dir);
  }
  const path = join(dir, LOCK_FILE);
  const handle = (h: Held, removedPartials: string[]): RunLock => {
    let released = false;
    const release = () => {
      if (released) return Promise.resolve();
      released = true;
      if (--h.count === 0) {
        held.delete(key);
        removeIfOurs(h);
      }
      return Promise.resolve();
    };
    return { dir, path, removedPartials, release, [Symbol.asyncDispose]: release };
  };

  const mine = held.get(key);
  if (mine) {
    mine.count++;
    return handle(mine, []);
  }

  const procStart = Deno.build.os === "linux" ? procStat(Deno.pid)?.start : undefined;
  const info: LockInfo = {
    pid: Deno.pid,
    hostname: hostname(),
    started: new Date().toISOString(),
    task: opts.task ?? "",
    token: randomHex(8),
    ...(procStart ? { procStart } : {}),
  };
  const text = JSON.stringify(info) + "\n";
  for (let attempt = 0;; attempt++) {
    if (await createLockFile(dir, path, text)) break;
    let holderText = "";
    let age = 0;
    try {
      holderText = await Deno.readTextFile(path);
      age = Date.now() - ((await Deno.stat(path)).mtime?.getTime() ?? Date.now());
    } catch (e) {
      if (e instanceof Deno.errors.NotFound && attempt < 5) continue; // released meanwhile
      throw withPath(e, "cannot read", path);
    }
    const holder = parseLock(holderText);
    let stale = false;
    let why = "";
    if (!holder) {
      // Unreadable: a lock cut short by a crash (only possible without hard links) once it is
      // old; a fresh one may still be being written.
      stale = age > 10_000;
      why = "unreadable";
    } else if (holder.hostname === info.hostname) {
      if (holder.pid === Deno.pid && holder.procStart === info.procStart) {
        stale = true; // our pid, but not a hold of this process (held would know it)
        why = `pid ${holder.pid} is this process`;
      } else {
        stale = (await processAlive(holder.pid, holder.procStart)) === false;
        why = `pid ${holder.pid} is no longer running`;
      }
    }
    if (!stale || attempt >= 5) {
      const who = holder ? describeHolder(holder) : "a lock that cannot be read";
      throw new RunFolderLockedError(
        `${dir} is in use by another process (${who}); wait for it to end, or remove ${path} ` +
          `if that process is gone`,
        holder,
      );
    }
    note(
      `note: recovered the stale lock of ${dir} (${
        holder ? describeHolder(holder) : "unreadable"
      }; ${why})`,
    );
    await Deno.remove(path).catch(() => {});
  }
  const h: Held = { count: 1, path, dir, token: info.token, created: !existed };
  held.set(key, h);
  hookUnload();
  const removed = await removeStalePartials(dir, opts.partialDepth ?? 3);
  if (removed.length) {
    note(
      `note: removed ${removed.length} stale temporary file${removed.length > 1 ? "s" : ""} ` +
        `of an interrupted write in ${dir}`,
    );
  }
  return handle(h, removed);
}
