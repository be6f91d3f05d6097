/**
 * The one settings path of distillation: the flag table shared by `deno task sid`, `deno task
 * sida` and `deno task distill`, and the preset-name check (the data-against-network checks are
 * `lib/data/fit.ts`).
 *
 * Flags are named after the reference's `sida_train.py` options, with every duration in kimg.
 * The chain (`deno task distill`) takes each flag for both stages where it applies (`--alpha`),
 * or for one stage with a `sid-` / `sida-` prefix (`--sida-alpha 1.2`); SiDA-only flags
 * (`--lsd`, `--lsg-gan`, the warm-ups) apply to its SiD²A stage.
 *
 * @example
 * ```ts
 * import { parseFlags } from "../runtime/cli.ts";
 * import { distillFlagNames, distillOverrides } from "./settings.ts";
 * const f = parseFlags(["--alpha", "1.2", "--lsg-gan", "0.02"], {
 *   string: distillFlagNames("sida"),
 * }, "usage");
 * distillOverrides(f, "sida"); // { alpha: 1.2, lsgGan: 0.02 }
 * ```
 *
 * @module
 */
import type { ParsedFlags } from "../runtime/cli.ts";
import { numberFlag, UsageError } from "../runtime/cli.ts";
import type { DistillConfig, DistillMethod } from "./distiller.ts";
import { DISTILL_PRESET_NAMES } from "./presets.ts";

/** One command-line flag of a distillation hyper-parameter. */
export interface DistillFlag {
  /** The {@linkcode DistillConfig} field it sets. */
  key: keyof DistillConfig;
  /**
   * How its value is read: a number ≥ 0, an integer ≥ 0, 0/1 for a switch (as the reference), or
   * a number or `none` (null).
   */
  type: "number" | "integer" | "switch" | "number-or-none";
  /** Factor from the flag's unit to the field's (kimg → images: 1000). */
  scale?: number;
  /** Only SiDA (and SiD²A) has it. */
  sidaOnly?: boolean;
  /** The flag's value in the usage line. */
  value: string;
}

/**
 * Every distillation hyper-parameter flag (names follow `sida_train.py`; units in kimg). Ranges
 * beyond "a number ≥ 0" are checked once, by `resolveDistillConfig`.
 */
export const DISTILL_FLAGS: Readonly<Record<string, DistillFlag>> = Object.freeze({
  alpha: { key: "alpha", type: "number", value: "A" },
  tmax: { key: "tmax", type: "number", value: "T" },
  "init-sigma": { key: "initSigma", type: "number", value: "S" },
  lr: { key: "lr", type: "number", value: "LR" },
  glr: { key: "glr", type: "number", value: "LR" },
  "g-beta1": { key: "gBeta1", type: "number", value: "B" },
  batch: { key: "batch", type: "integer", value: "N" },
  "micro-batch": { key: "microBatch", type: "integer", value: "N" },
  ls: { key: "ls", type: "number", value: "S" },
  lsg: { key: "lsg", type: "number", value: "S" },
  lsd: { key: "lsd", type: "number", sidaOnly: true, value: "S" },
  "lsg-gan": { key: "lsgGan", type: "number", sidaOnly: true, value: "S" },
  "g-warmup-kimg": {
    key: "gWarmupNimg",
    type: "number",
    scale: 1000,
    sidaOnly: true,
    value: "K",
  },
  "gan-warmup-kimg": {
    key: "ganWarmupNimg",
    type: "number",
    scale: 1000,
    sidaOnly: true,
    value: "K",
  },
  ema: { key: "emaKimg", type: "number", value: "KIMG" },
  // EDM's ema_rampup_ratio (training_loop.py: the half-life is at most this fraction of the
  // images seen; 0.05, or None for a fixed half-life).
  "ema-rampup": { key: "emaRampup", type: "number-or-none", value: "R|none" },
  dropout: { key: "dropout", type: "number", value: "P" },
  augment: { key: "augment", type: "number", value: "P" },
  seed: { key: "seed", type: "integer", value: "N" },
  // EDM2 teachers only (sida_edm2_train.py --return_logvar, --force_normalization).
  "return-logvar": { key: "returnLogvar", type: "switch", value: "0|1" },
  "force-normalization": { key: "forceNormalization", type: "switch", value: "0|1" },
});

/** The flags a method takes (SiD: without the SiDA-only ones), each with `prefix` in front. */
export function distillFlagNames(method: DistillMethod, prefix = ""): string[] {
  return Object.entries(DISTILL_FLAGS)
    .filter(([, f]) => method === "sida" || !f.sidaOnly)
    .map(([name]) => prefix + name);
}

/** The usage text of a method's flags (`[--alpha A] [--tmax T] …`), with `prefix` in front. */
export function distillFlagUsage(method: DistillMethod, prefix = ""): string {
  return distillFlagNames(method)
    .map((name) => `[--${prefix}${name} ${DISTILL_FLAGS[name].value}]`)
    .join(" ");
}

/**
 * The hyper-parameters set on a parsed command line by a method's flags (with `prefix`: the
 * chain's `sid-` / `sida-` flags). Each value is read by its flag's type; a bad one is a
 * one-line {@linkcode UsageError} naming the flag.
 */
export function distillOverrides(
  f: ParsedFlags,
  method: DistillMethod,
  prefix = "",
): Partial<DistillConfig> {
  const out: Record<string, unknown> = {};
  for (const name of distillFlagNames(method)) {
    const flag = prefix + name;
    const raw = f[flag];
    if (raw === undefined) continue;
    const spec = DISTILL_FLAGS[name];
    if (spec.type === "switch") {
      if (raw !== "0" && raw !== "1") {
        throw new UsageError(`--${flag} must be 0 or 1, got '${raw}'`);
      }
      out[spec.key] = raw === "1";
      continue;
    }
    if (spec.type === "number-or-none" && raw === "none") {
      out[spec.key] = null;
      continue;
    }
    const v = numberFlag(flag, raw, NaN, { integer: spec.type === "integer", min: 0 });
    out[spec.key] = spec.scale ? Math.round(v * spec.scale) : v;
  }
  return out as Partial<DistillConfig>;
}

/** Checks a preset name; `UsageError` listing the presets. */
export function checkPresetName(name: string | undefined): void {
  if (name !== undefined && !(DISTILL_PRESET_NAMES as readonly string[]).includes(name)) {
    throw new UsageError(
      `unknown preset '${name}' (expected one of: ${DISTILL_PRESET_NAMES.join(", ")})`,
    );
  }
}
