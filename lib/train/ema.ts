/**
 * Exponential moving average of the generator's parameters with EDM's half-life and ramp-up rule
 * (docs/distillation.md §4.1 step C, §9 pitfall 18; `sida_training_loop.py:429-437`):
 *
 *   h     = ema_halflife_kimg·1000                                  (images)
 *   h     = min(h, cur_nimg·ema_rampup_ratio)     when a ramp-up ratio is set (default 0.05)
 *   β     = 0.5^( batch / max(h, 1e-8) )
 *   θ_ema ← β·θ_ema + (1−β)·θ = θ_ema + (1−β)(θ − θ_ema)              (parameters only)
 *
 * `cur_nimg` is the count *before* this iteration's increment, so at cur_nimg = 0, β = 0 and the
 * EMA copies G. `ema_halflife_kimg` = `int(--ema · 1000)` (`sida_train.py:260`), so `--ema 0.5`
 * (CIFAR/FFHQ/AFHQ) is 500 kimg and `--ema 2` (ImageNet, EDM2) is 2000 kimg.
 *
 * @example
 * ```ts
 * import { emaBeta } from "./ema.ts";
 * emaBeta({ curNimg: 0, batchSize: 256, halflifeKimg: 500 });         // 0
 * emaBeta({ curNimg: 1e7, batchSize: 256, halflifeKimg: 500 });       // 0.5^(256/500000)
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import { lerp } from "../runtime/webgpu/optim.ts";

/**
 * Default EMA ramp-up ratio, the loop default, never overridden (docs/distillation.md §4.1, §6.4).
 */
export const EMA_RAMPUP_RATIO = 0.05;

/** Options of {@linkcode emaBeta}. */
export interface EmaBetaOptions {
  /** Images seen before this iteration (`cur_nimg`). */
  curNimg: number;
  /** Global batch size (images per iteration). */
  batchSize: number;
  /** `ema_halflife_kimg` (= `--ema` × 1000). */
  halflifeKimg: number;
  /** `ema_rampup_ratio`; `null` disables the ramp-up. Default 0.05. */
  rampupRatio?: number | null;
}

/**
 * The EMA decay of one iteration (docs/distillation.md §4.1 step C,
 * `sida_training_loop.py:430-433`):
 *
 *   h = min(halflife_kimg·1000, cur_nimg·rampup_ratio),  β = 0.5^(batch / max(h, 1e-8)).
 */
export function emaBeta(options: EmaBetaOptions): number {
  const rampup = options.rampupRatio === undefined ? EMA_RAMPUP_RATIO : options.rampupRatio;
  let halflifeNimg = options.halflifeKimg * 1000;
  if (rampup !== null) halflifeNimg = Math.min(halflifeNimg, options.curNimg * rampup);
  return 0.5 ** (options.batchSize / Math.max(halflifeNimg, 1e-8));
}

/** Anything with named trainable parameters (an `EDMPrecond`, any `Module`). */
export interface HasParameters {
  /** Trainable parameters with their names, in a fixed order. */
  namedParameters(): [string, tf.Variable][];
}

/**
 * One EMA update in place (docs/distillation.md §4.1 step C; `p_ema.lerp_(p, 1−β)`):
 *
 *   θ_ema ← θ_ema + (1−β)·(θ − θ_ema)   for every trainable parameter (buffers are not averaged).
 *
 * `ema` and `source` must have the same parameter names and shapes.
 */
export function updateEma(ema: HasParameters, source: HasParameters, beta: number): void {
  if (!(beta >= 0 && beta <= 1)) throw new RangeError(`beta must be in [0, 1], got ${beta}`);
  const src = new Map(source.namedParameters());
  const dst = ema.namedParameters();
  for (const [name, v] of dst) {
    const s = src.get(name);
    if (!s || s.shape.join() !== v.shape.join()) {
      throw new RangeError(`EMA: parameter '${name}' missing or of another shape in the source`);
    }
  }
  if (dst.length !== src.size) {
    throw new RangeError(`EMA: ${dst.length} parameters vs ${src.size} in the source`);
  }
  for (const [name, v] of dst) {
    const s = src.get(name)!;
    tf.tidy(() => v.assign(lerp(v, s, 1 - beta))); // one dispatch on webgpu
  }
}

/** Options of {@linkcode Ema}. */
export interface EmaOptions {
  /** `ema_halflife_kimg` (= `--ema` × 1000; 500 for CIFAR/FFHQ/AFHQ, 2000 for ImageNet/EDM2). */
  halflifeKimg: number;
  /** Global batch size. */
  batchSize: number;
  /** `ema_rampup_ratio`; `null` disables the ramp-up. Default 0.05. */
  rampupRatio?: number | null;
}

/** An EMA copy of a network, updated in place from the live network once per iteration. */
export class Ema {
  /** The EMA network, updated in place. */
  readonly ema: HasParameters;
  /** The trained network the EMA follows. */
  readonly source: HasParameters;
  /** Half-life, batch size and ramp-up. */
  readonly options: EmaOptions;

  /**
   * Ties an EMA network to its source.
   *
   * @param ema the EMA network (initialised by the caller, as a copy of `source`)
   * @param source the trained network
   * @param options half-life, batch size and ramp-up ratio
   */
  constructor(ema: HasParameters, source: HasParameters, options: EmaOptions) {
    this.ema = ema;
    this.source = source;
    this.options = options;
  }

  /**
   * Applies one update for an iteration that started at `curNimg` images and returns its β
   * ({@linkcode emaBeta}, then {@linkcode updateEma}).
   */
  update(curNimg: number): number {
    const beta = emaBeta({ curNimg, ...this.options });
    updateEma(this.ema, this.source, beta);
    return beta;
  }
}
