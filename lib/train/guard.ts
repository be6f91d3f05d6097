/**
 * Stopping a training run that has gone non-finite.
 *
 * The reference code keeps training through NaN: it drops samples whose loss is NaN and replaces
 * NaN gradients by zeros (`torch.nan_to_num` in `sid:sida_training/sida_training_loop.py`), so a
 * broken teacher (NaN weights, say) trains for the whole budget on nothing, printing losses of 0
 * and writing a NaN generator. A {@linkcode NonFiniteGuard} watches every iteration and stops the
 * run after `limit` consecutive bad ones (a loss that is not finite, or every sample of a step
 * dropped), and tells the loop not to write a state or snapshot while the current streak lasts,
 * so that the run folder keeps its last good state.
 *
 * @example
 * ```ts
 * import { NonFiniteGuard } from "./guard.ts";
 * const guard = new NonFiniteGuard(3);
 * guard.observe({ loss: 0.5 }, 1000); // fine
 * guard.observe({ loss: NaN }, 1064); // bad, streak 1: don't write a state now
 * console.log(guard.healthy); // false
 * ```
 *
 * @module
 */

/** The default number of consecutive non-finite iterations that stops a run. */
export const DEFAULT_NON_FINITE_LIMIT = 5;

/** A run stopped by {@linkcode NonFiniteGuard}: its last good state is kept. */
export class NonFiniteTrainingError extends Error {
  override name = "NonFiniteTrainingError";
}

/** What one iteration reported: losses (`null` where a loss does not apply) and kept samples. */
export interface IterationHealth {
  [name: string]: number | null | undefined;
}

/**
 * Counts consecutive non-finite iterations. A value is bad when it is not finite; a value whose
 * name starts with `kept` is bad when it is 0 (every sample of that step was dropped as NaN).
 */
export class NonFiniteGuard {
  #streak = 0;
  #firstBadNimg = 0;
  #reason = "";

  /**
   * @param limit consecutive bad iterations that stop the run (≥ 1).
   * @param what how to name the run in the error, e.g. `distillation`.
   */
  constructor(readonly limit = DEFAULT_NON_FINITE_LIMIT, readonly what = "training") {
    if (!Number.isInteger(limit) || limit < 1) {
      throw new RangeError(`NonFiniteGuard: limit must be a positive integer, got ${limit}`);
    }
  }

  /** Whether the last iteration was fine (states and snapshots may be written). */
  get healthy(): boolean {
    return this.#streak === 0;
  }

  /** Consecutive bad iterations so far. */
  get streak(): number {
    return this.#streak;
  }

  /**
   * What a training loop does with the writes (state, snapshot) due after this iteration:
   * `write` when the iteration was fine; during a streak `skip` them (the folder keeps its last
   * good state), or `interrupt` without writing when the run was interrupted.
   *
   * @throws {NonFiniteTrainingError} when the run's last iteration ends a streak (no final state).
   */
  writes(opts: { done: boolean; interrupted: boolean }): "write" | "skip" | "interrupt" {
    if (this.healthy) return "write";
    if (opts.interrupted) return "interrupt";
    if (opts.done) {
      throw new NonFiniteTrainingError(
        `${this.what} ended on ${this.#streak} non-finite iterations: no final state written`,
      );
    }
    return "skip";
  }

  /**
   * Records one iteration.
   *
   * @param health the iteration's losses and kept-sample counts.
   * @param nimg images seen after the iteration (for the message).
   * @throws {NonFiniteTrainingError} on the `limit`-th consecutive bad iteration.
   */
  observe(health: IterationHealth, nimg: number): void {
    const bad: string[] = [];
    for (const [k, v] of Object.entries(health)) {
      if (v === null || v === undefined) continue;
      if (!Number.isFinite(v)) bad.push(`${k} ${v}`);
      else if (k.startsWith("kept") && v === 0) bad.push(`${k} 0 (every sample was NaN)`);
    }
    if (bad.length === 0) {
      this.#streak = 0;
      return;
    }
    if (this.#streak === 0) {
      this.#firstBadNimg = nimg;
      this.#reason = bad.join(", ");
    }
    this.#streak++;
    if (this.#streak >= this.limit) {
      throw new NonFiniteTrainingError(
        `${this.what} stopped: ${this.#streak} consecutive iterations with non-finite losses ` +
          `since ${(this.#firstBadNimg / 1000).toFixed(3)} kimg (${this.#reason}); ` +
          `no state was written after the last good iteration`,
      );
    }
  }
}
