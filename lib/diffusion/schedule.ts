/**
 * The EDM noise-level discretization (Karras et al. 2022, eq. 5), `edm:generate.py:36-39`.
 *
 * @example
 * ```ts
 * import { edmSigmaSteps } from "./schedule.ts";
 * const t = edmSigmaSteps({ numSteps: 18 });
 * console.log(t.length, t[0], t[17], t[18]); // 19 80 0.002 0
 * ```
 *
 * @module
 */

/** Options of {@linkcode edmSigmaSteps}. */
export interface EdmSigmaStepsOptions {
  /** Number of noise levels N before the final 0 (a positive integer). Default 18. */
  numSteps?: number;
  /** Lowest nonzero noise level t_{N-1} (positive, finite). Default 0.002. */
  sigmaMin?: number;
  /** Highest noise level t_0 (finite, larger than `sigmaMin`). Default 80. */
  sigmaMax?: number;
  /** Exponent ρ of the schedule (positive, finite). Default 7. */
  rho?: number;
  /**
   * The network's `round_sigma`, applied to t_0..t_{N-1} (not to the appended 0). Identity
   * when omitted, which is what EDM's `EDMPrecond.round_sigma` does.
   */
  roundSigma?: (sigma: number) => number;
}

/**
 * Throws a `RangeError` unless `value` is a finite number (and, with `positive`, larger than 0).
 *
 * @example
 * ```ts
 * import { requireFinite } from "./schedule.ts";
 * requireFinite("rho", 7, true); // ok
 * ```
 */
export function requireFinite(name: string, value: number, positive = false): void {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new RangeError(`${name} must be a finite number, got ${value}`);
  }
  if (positive && !(value > 0)) throw new RangeError(`${name} must be positive, got ${value}`);
}

/**
 * Throws a `RangeError` unless `value` is a positive integer.
 *
 * @example
 * ```ts
 * import { requirePositiveInt } from "./schedule.ts";
 * requirePositiveInt("numSteps", 18); // ok
 * ```
 */
export function requirePositiveInt(name: string, value: number): void {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1) {
    throw new RangeError(`${name} must be a positive integer, got ${value}`);
  }
}

/**
 * The EDM time steps t_0..t_{N-1} followed by t_N = 0 (length N + 1), in float64:
 *
 *   t_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ,  i = 0..N−1.
 *
 * With `numSteps` 1 the reference formula divides by zero (0/0 gives NaN); here it returns
 * `[sigmaMax, 0]`, a single step from `sigmaMax` to 0.
 *
 * @throws {RangeError} when `numSteps` is not a positive integer, `sigmaMin`/`sigmaMax`/`rho` are
 *   not positive finite numbers, or `sigmaMin >= sigmaMax`.
 *
 * @example
 * ```ts
 * import { edmSigmaSteps } from "./schedule.ts";
 * const t = edmSigmaSteps({ numSteps: 18, sigmaMin: 0.002, sigmaMax: 80, rho: 7 });
 * // [80, 57.585985…, 40.785574…, …, 0.007528…, 0.002, 0]
 * ```
 */
export function edmSigmaSteps(options: EdmSigmaStepsOptions = {}): number[] {
  const { numSteps = 18, sigmaMin = 0.002, sigmaMax = 80, rho = 7, roundSigma } = options;
  requirePositiveInt("numSteps", numSteps);
  requireFinite("sigmaMin", sigmaMin, true);
  requireFinite("sigmaMax", sigmaMax, true);
  requireFinite("rho", rho, true);
  if (!(sigmaMin < sigmaMax)) {
    throw new RangeError(`sigmaMin (${sigmaMin}) must be smaller than sigmaMax (${sigmaMax})`);
  }
  const round = roundSigma ?? ((s: number) => s);
  const hi = sigmaMax ** (1 / rho);
  const lo = sigmaMin ** (1 / rho);
  const steps: number[] = [];
  if (numSteps === 1) {
    steps.push(round(sigmaMax));
  } else {
    for (let i = 0; i < numSteps; i++) {
      steps.push(round((hi + i / (numSteps - 1) * (lo - hi)) ** rho));
    }
  }
  steps.push(0);
  return steps;
}
