/**
 * Shared command-line plumbing for `tasks/` and `bench/`: flag parsing with clear one-line errors,
 * the `--backend` flag, and a `main` wrapper that turns any failure into a one-line message and a
 * non-zero exit.
 *
 * @example
 * ```ts
 * import { parseFlags, runMain, startBackend } from "./cli.ts";
 * await runMain(async () => {
 *   const flags = parseFlags(Deno.args, { string: ["out"], boolean: ["help"] }, "usage: demo --out F");
 *   await startBackend(flags.backend);
 * });
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { printable } from "../io/host_tensor.ts";
import {
  BACKEND_NAMES,
  type BackendInfo,
  currentBackend,
  describeBackend,
  initBackend,
} from "./backend.ts";

/** An error that a task reports as one line, without a stack trace (bad flags, bad input). */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * Which flags a task takes: names of string flags and of boolean flags. `backend` and
 * `allow-nonfinite` are always added.
 */
export interface FlagSpec {
  string?: string[];
  boolean?: string[];
}

/** Parsed flags: string flags as strings, boolean flags as booleans, plus the positionals. */
export interface ParsedFlags {
  [name: string]: string | boolean | string[] | undefined;
  positionals: string[];
  backend?: string;
}

/** A negative number as a command-line token: `-1`, `-1e-4`, `-.5`, `-Infinity`. */
const NEGATIVE_NUMBER_RE = /^-(?:\d|\.\d|Infinity$)/;

/**
 * `args` with every string flag followed by a negative number joined into one token
 * (`--budget -1` → `--budget=-1`), since node's `parseArgs` takes `-1` for a flag ("argument is
 * ambiguous"). Tokens after `--` are left alone.
 */
export function joinNegativeValues(args: string[], stringFlags: Iterable<string>): string[] {
  const names = new Set(stringFlags);
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      out.push(...args.slice(i));
      break;
    }
    const next = args[i + 1];
    if (
      a.startsWith("--") && !a.includes("=") && names.has(a.slice(2)) && next !== undefined &&
      NEGATIVE_NUMBER_RE.test(next)
    ) {
      out.push(`${a}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/**
 * Parses `args` strictly: an unknown flag, a missing value or a string flag given twice is a
 * {@linkcode UsageError} whose message ends with the usage line. A negative number after a
 * string flag is its value (`--seed -3`), so that the flag's own check can reject it with a
 * clear message.
 */
export function parseFlags(args: string[], spec: FlagSpec, usage: string): ParsedFlags {
  const options: Record<string, { type: "string" | "boolean" }> = {
    backend: { type: "string" },
    "allow-nonfinite": { type: "boolean" },
  };
  for (const s of spec.string ?? []) options[s] = { type: "string" };
  for (const b of spec.boolean ?? []) options[b] = { type: "boolean" };
  try {
    const { values, positionals } = parseArgs({
      args: joinNegativeValues(args, ["backend", ...(spec.string ?? [])]),
      options,
      allowPositionals: true,
      strict: true,
    });
    if (values["allow-nonfinite"] === true) allowNonFiniteWeights();
    return { ...(values as Record<string, string | boolean>), positionals };
  } catch (e) {
    // node's messages can span lines ("argument is ambiguous … did you forget to specify the
    // option argument for …"): keep one line.
    const msg = (e as Error).message.replace(/\.?\s*To specify a positional.*$/s, "")
      .replace(/\s*\n\s*/g, " ").trim();
    throw new UsageError(`${msg} (${usage})`);
  }
}

/**
 * `--allow-nonfinite` (every task takes it): networks whose weights hold NaN or infinite values
 * load anyway, in this process and the processes it starts (`SIDA_ALLOW_NONFINITE=1`, read by
 * `loadNetwork` and `importNetwork`); by default they are refused with one line naming them.
 */
function allowNonFiniteWeights(): void {
  try {
    Deno.env.set("SIDA_ALLOW_NONFINITE", "1");
  } catch {
    // no permission to write the environment: loads still refuse non-finite weights
  }
}

/**
 * Checks that `path` is an existing file before any work starts: a one-line
 * {@linkcode UsageError} (`<what> '<path>' not found` or `… is not a file`) otherwise.
 */
export async function requireFile(path: string, what: string): Promise<void> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch {
    throw new UsageError(`${what} '${path}' not found`);
  }
  if (!st.isFile) throw new UsageError(`${what} '${path}' is not a file`);
}

/** A duration or cadence option that must be a finite number > 0 (`--<name>` in the error). */
export function positiveOption(name: string, v: number): number {
  if (!(v > 0) || !Number.isFinite(v)) throw new UsageError(`--${name} must be > 0, got ${v}`);
  return v;
}

/** Parses a numeric flag value; `undefined` gives the default. */
export function numberFlag(
  name: string,
  value: unknown,
  fallback: number,
  opts: { integer?: boolean; min?: number } = {},
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (typeof value !== "string" || value.trim() === "" || !Number.isFinite(n)) {
    throw new UsageError(`--${name} must be a number, got '${value}'`);
  }
  if (opts.integer && !Number.isInteger(n)) {
    throw new UsageError(`--${name} must be an integer, got '${value}'`);
  }
  if (opts.min !== undefined && n < opts.min) {
    throw new UsageError(`--${name} must be at least ${opts.min}, got ${n}`);
  }
  return n;
}

/**
 * Checks a `--backend` value (`webgpu`, `native`, `cpu`, `auto` or absent); the one place a
 * backend name is validated. Returns it.
 *
 * @throws UsageError for any other name.
 */
export function checkBackendName(name?: string): string | undefined {
  if (
    name !== undefined && name !== "auto" && !(BACKEND_NAMES as readonly string[]).includes(name)
  ) {
    throw new UsageError(
      `--backend must be one of ${BACKEND_NAMES.join(", ")}, auto; got '${name}'`,
    );
  }
  return name;
}

/**
 * The backend of this process: started on the first call (`initBackend`), and on a later call
 * the one already running, unless a different backend is named explicitly. So a task that runs
 * several stages (the distillation chain) names and starts its backend once.
 */
export async function ensureBackend(name?: string): Promise<BackendInfo> {
  checkBackendName(name);
  const cur = currentBackend();
  if (cur && (name === undefined || name === "auto" || name === cur.name)) return cur;
  return await initBackend(name);
}

/** Starts the backend named by `--backend` (or the automatic choice) and prints the choice once. */
export async function startBackend(name?: string): Promise<BackendInfo> {
  const info = await ensureBackend(name);
  console.error(describeBackend(info));
  return info;
}

/**
 * Whether process `pid` is `deno task` (its command line: a `deno` executable whose first
 * non-flag argument is `task`). Linux reads `/proc/<pid>/cmdline`; elsewhere `ps`; false when it
 * cannot be told.
 */
export async function isDenoTask(pid: number): Promise<boolean> {
  let argv: string[];
  try {
    if (Deno.build.os === "linux") {
      argv = (await Deno.readTextFile(`/proc/${pid}/cmdline`)).split("\0");
    } else if (Deno.build.os === "windows") {
      return false;
    } else {
      const r = await new Deno.Command("ps", {
        args: ["-o", "args=", "-p", String(pid)],
        stderr: "null",
      }).output();
      argv = new TextDecoder().decode(r.stdout).trim().split(/\s+/);
    }
  } catch {
    return false;
  }
  const exe = (argv[0] ?? "").split(/[\\/]/).pop() ?? "";
  return /^deno(\.exe)?$/.test(exe) && argv.slice(1).find((a) => !a.startsWith("-")) === "task";
}

/**
 * Stops this process when the `deno task` that started it ends: killing `deno task` (SIGTERM,
 * SIGKILL) does not stop its `deno run` child. Once a second the parent pid is compared with the
 * one at start; when it changed (the child was re-parented), the process sends itself SIGINT, so
 * a task with a Ctrl-C handler finishes its step, writes its state and releases its run-folder
 * lock, and any other task ends as on Ctrl-C. Only under `deno task` (unless `always`): a task
 * started from a shell that then exits (`nohup deno run … &`) keeps running. A poll rather than
 * Linux's `PR_SET_PDEATHSIG`, which fires when the parent's forking *thread* ends and needs FFI.
 * Nothing is done on Windows or when the parent is pid 1. The timer does not keep the process
 * alive.
 */
export async function stopWithParent(
  opts: { intervalMs?: number; always?: boolean } = {},
): Promise<void> {
  if (Deno.build.os === "windows") return;
  let parent: number;
  try {
    parent = Deno.ppid;
  } catch {
    return;
  }
  if (parent <= 1 || (!opts.always && !(await isDenoTask(parent)))) return;
  const id = setInterval(() => {
    if (Deno.ppid === parent) return;
    clearInterval(id);
    try {
      console.error(`\nthe parent process (deno task, pid ${parent}) has ended: stopping`);
    } catch {
      // stderr went with the parent
    }
    Deno.kill(Deno.pid, "SIGINT");
  }, opts.intervalMs ?? 1000);
  Deno.unrefTimer(id);
}

/**
 * Runs a task's main function: any error is printed as one line (`error: …`) and the process
 * exits with status 1 (2 for a {@linkcode UsageError}). The task also stops when its parent
 * `deno task` ends ({@linkcode stopWithParent}), and SIGTERM exits with status 143 through
 * `Deno.exit`, so that run-folder locks are released (`lib/io/lock.ts`).
 */
export async function runMain(main: () => Promise<void>): Promise<void> {
  await stopWithParent();
  const onTerm = () => Deno.exit(143);
  let termHooked = false;
  if (Deno.build.os !== "windows") {
    try {
      Deno.addSignalListener("SIGTERM", onTerm);
      termHooked = true;
    } catch {
      // signals not available
    }
  }
  try {
    await main();
  } catch (e) {
    const err = e as Error;
    // One line, with any control character of a file's name or content escaped.
    const line = printable(`${err?.message ?? String(e)}`.split("\n")[0]);
    console.error(`error: ${line}`);
    if (Deno.env.get("SIDA_DEBUG")) console.error(err?.stack);
    Deno.exit(err instanceof UsageError ? 2 : 1);
  } finally {
    if (termHooked) Deno.removeSignalListener("SIGTERM", onTerm);
  }
}
