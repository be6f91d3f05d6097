/**
 * When may a report say that one generator beats another? The rule of `docs/metrics.md`: in
 * every feature space (at least two, trained independently), the first generator has the lower
 * FID _and_ the lower KID, and its KID lead exceeds `z` times the combined seed-to-seed spread of
 * the two KIDs ({@linkcode kidSpread}: the standard deviation of the per-subset KID estimates of
 * `kid()` in `./kid.ts`, scaled from a subset to the whole sample). Both spaces must agree;
 * otherwise the verdict is "within noise".
 *
 * @module
 */

/** One generator's scores in one feature space. */
export interface SpaceScore {
  fid: number;
  kid: number;
  /** The seed-to-seed spread (standard deviation) of `kid` ({@linkcode kidSpread}). */
  kidStd: number;
}

/**
 * The seed-to-seed spread of a KID averaged over subsets of `subsetSize` out of `num` samples,
 * from the standard deviation `subsetStd` of the per-subset estimates: `subsetStd · √(m / n)`,
 * as if the estimate used n/m independent subsets (docs/metrics.md §3 compares it with measured
 * spreads).
 */
export function kidSpread(subsetStd: number, subsetSize: number, num: number): number {
  if (!(subsetSize > 0 && num > 0)) throw new RangeError(`kidSpread: m ${subsetSize}, n ${num}`);
  return subsetStd * Math.sqrt(Math.min(1, subsetSize / num));
}

/** `a` against `b`: `better` (a is better), `worse`, or `within noise`. */
export type Verdict = "better" | "worse" | "within noise";

/** The comparison in one feature space. */
export interface SpaceComparison {
  space: string;
  verdict: Verdict;
  /** FID(b) − FID(a): positive when a is better. */
  fidGain: number;
  /** KID(b) − KID(a): positive when a is better. */
  kidGain: number;
  /** z · √(std_a² + std_b²): the KID lead needed for a verdict. */
  kidNoise: number;
}

/** The overall comparison of two generators. */
export interface Comparison {
  /** `better` / `worse` only when every space says so; `not compared` with < 2 spaces. */
  verdict: Verdict | "not compared";
  /** Why, in words (which spaces disagree, or which are missing). */
  reason: string;
  spaces: SpaceComparison[];
}

/** Default number of standard deviations a KID lead must exceed. */
export const DEFAULT_NOISE_Z = 2;

/** Spaces a verdict needs. */
export const MIN_SPACES = 2;

function checkScore(s: SpaceScore, what: string): void {
  for (const k of ["fid", "kid", "kidStd"] as const) {
    if (typeof s[k] !== "number" || !Number.isFinite(s[k])) {
      throw new RangeError(`compare: ${what} has ${k} ${s[k]}`);
    }
  }
  if (s.kidStd < 0) throw new RangeError(`compare: ${what} has a negative KID spread`);
}

/** `a` against `b` in one feature space. */
export function compareInSpace(
  space: string,
  a: SpaceScore,
  b: SpaceScore,
  z = DEFAULT_NOISE_Z,
): SpaceComparison {
  checkScore(a, `${space} (first)`);
  checkScore(b, `${space} (second)`);
  if (!(z >= 0)) throw new RangeError(`compare: z must be ≥ 0, got ${z}`);
  const fidGain = b.fid - a.fid;
  const kidGain = b.kid - a.kid;
  const kidNoise = z * Math.hypot(a.kidStd, b.kidStd);
  let verdict: Verdict = "within noise";
  if (fidGain > 0 && kidGain > kidNoise) verdict = "better";
  else if (fidGain < 0 && -kidGain > kidNoise) verdict = "worse";
  return { space, verdict, fidGain, kidGain, kidNoise };
}

/**
 * `a` against `b` over the feature spaces both were scored in (in `spaces` order). A verdict
 * other than `within noise` needs at least {@linkcode MIN_SPACES} spaces that all agree.
 */
export function compareGenerators(
  a: Record<string, SpaceScore | undefined>,
  b: Record<string, SpaceScore | undefined>,
  spaces: readonly string[],
  z = DEFAULT_NOISE_Z,
): Comparison {
  const shared = spaces.filter((s) => a[s] && b[s]);
  const per = shared.map((s) => compareInSpace(s, a[s]!, b[s]!, z));
  if (shared.length < MIN_SPACES) {
    const missing = spaces.filter((s) => !shared.includes(s));
    return {
      verdict: "not compared",
      reason: `needs ${MIN_SPACES} feature spaces, ${shared.length} scored both` +
        (missing.length ? ` (missing: ${missing.join(", ")})` : ""),
      spaces: per,
    };
  }
  const all = (v: Verdict) => per.every((p) => p.verdict === v);
  if (all("better")) {
    return { verdict: "better", reason: `all ${per.length} feature spaces agree`, spaces: per };
  }
  if (all("worse")) {
    return { verdict: "worse", reason: `all ${per.length} feature spaces agree`, spaces: per };
  }
  const said = per.map((p) => `${p.space}: ${p.verdict}`).join(", ");
  return { verdict: "within noise", reason: said, spaces: per };
}
