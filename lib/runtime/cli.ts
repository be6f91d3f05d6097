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
import { BACKEND_NAMES, type BackendInfo, describeBackend, initBackend } from "./backend.ts";

/** An error that a task reports as one line, without a stack trace (bad flags, bad input). */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Which flags a task takes: names of string flags and of boolean flags. `backend` is always added. */
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

/**
 * Parses `args` strictly: an unknown flag, a missing value or a string flag given twice is a
 * {@linkcode UsageError} whose message ends with the usage line.
 */
export function parseFlags(args: string[], spec: FlagSpec, usage: string): ParsedFlags {
  const options: Record<string, { type: "string" | "boolean" }> = { backend: { type: "string" } };
  for (const s of spec.string ?? []) options[s] = { type: "string" };
  for (const b of spec.boolean ?? []) options[b] = { type: "boolean" };
  try {
    const { values, positionals } = parseArgs({
      args,
      options,
      allowPositionals: true,
      strict: true,
    });
    return { ...(values as Record<string, string | boolean>), positionals };
  } catch (e) {
    // node's messages can span lines ("argument is ambiguous … did you forget to specify the
    // option argument for …"): keep one line.
    const msg = (e as Error).message.replace(/\.?\s*To specify a positional.*$/s, "")
      .replace(/\s*\n\s*/g, " ").trim();
    throw new UsageError(`${msg} (${usage})`);
  }
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

/** Starts the backend named by `--backend` (or the automatic choice) and prints the choice once. */
export async function startBackend(name?: string): Promise<BackendInfo> {
  if (
    name !== undefined && name !== "auto" && !(BACKEND_NAMES as readonly string[]).includes(name)
  ) {
    throw new UsageError(
      `--backend must be one of ${BACKEND_NAMES.join(", ")}, auto; got '${name}'`,
    );
  }
  const info = await initBackend(name);
  console.error(describeBackend(info));
  return info;
}

/**
 * Runs a task's main function: any error is printed as one line (`error: …`) and the process
 * exits with status 1 (2 for a {@linkcode UsageError}).
 */
export async function runMain(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
    const err = e as Error;
    const line = `${err?.message ?? String(e)}`.split("\n")[0];
    console.error(`error: ${line}`);
    if (Deno.env.get("SIDA_DEBUG")) console.error(err?.stack);
    Deno.exit(err instanceof UsageError ? 2 : 1);
  }
}
