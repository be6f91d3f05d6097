/**
 * Gradient post-processing and micro-batch accumulation, shared by every trainer (the EDM teacher
 * and the distiller): the reference loops sum the gradients of `batch / batch_gpu` rounds, then
 * apply `torch.nan_to_num` (and, for SiDA's fake network, `clip_grad_value_`) before one optimizer
 * step (NVlabs/edm `training/training_loop.py:158-163`, mingyuanzhou/SiD
 * `sida_training/sida_training_loop.py:377-381`).
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { accumulateGradients, sanitizeGradients } from "./gradients.ts";
 * const w = tf.variable(tf.ones([2]));
 * const acc = {};
 * for (let r = 0; r < 2; r++) {
 *   accumulateGradients(acc, tf.variableGrads(() => tf.sum(tf.mul(w, w)) as tf.Scalar).grads);
 * }
 * const clean = sanitizeGradients(acc); // the accumulated gradients are disposed
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { NamedTensorMap } from "../deps.ts";
import { nanToNum as fusedNanToNum } from "../runtime/native/fused.ts";

/** Options of {@linkcode nanToNum}; the defaults are the loop's (`sida_training_loop.py:377-378`). */
export interface NanToNumOptions {
  /** Replacement for NaN. Default 0. */
  nan?: number;
  /** Replacement for +∞. Default 1e5. */
  posinf?: number;
  /** Replacement for −∞. Default −1e5. */
  neginf?: number;
}

/**
 * `torch.nan_to_num(g, nan=0, posinf=1e5, neginf=-1e5)` as applied to every gradient after the
 * accumulation rounds (docs/distillation.md §4.1): NaN → 0, +∞ → 1e5, −∞ → −1e5, other values
 * unchanged.
 */
export function nanToNum(x: tf.Tensor, options: NanToNumOptions = {}): tf.Tensor {
  const nan = options.nan ?? 0;
  const posinf = options.posinf ?? 1e5;
  const neginf = options.neginf ?? -1e5;
  return fusedNanToNum(x, nan, posinf, neginf);
}

/**
 * `torch.nn.utils.clip_grad_value_(params, c)`: clips every element to [−c, c]. Applied with
 * c = 1 to the fake-network gradients on the EDM SiDA path only (docs/distillation.md §4.1, §4.2,
 * `sida_training_loop.py:380-381`).
 */
export function clipValues(x: tf.Tensor, clip = 1): tf.Tensor {
  if (!(clip >= 0)) throw new RangeError(`clip must be ≥ 0, got ${clip}`);
  return tf.clipByValue(x, -clip, clip);
}

/**
 * The post-processing of a gradient map before an optimizer step (docs/distillation.md §4.1):
 * g ← nan_to_num(g, 0, 1e5, −1e5), then, if `clipValue` is given, g ← clip(g, −c, c).
 * The input tensors are disposed unless `dispose: false`.
 *
 * Use `clipValue: 1` for the fake network of the EDM SiDA path; none for G, plain SiD or EDM2.
 */
export function sanitizeGradients(
  grads: NamedTensorMap,
  options: { clipValue?: number; dispose?: boolean } = {},
): NamedTensorMap {
  const out: NamedTensorMap = {};
  for (const [name, g] of Object.entries(grads)) {
    out[name] = tf.tidy(() => {
      const clean = nanToNum(g);
      return options.clipValue === undefined ? clean : clipValues(clean, options.clipValue);
    });
    if (options.dispose ?? true) g.dispose();
  }
  return out;
}

/**
 * Adds one accumulation round's gradients into `acc` (keyed by variable name): the first round's
 * tensors are kept as they are, later ones are summed (`acc + g`) and both inputs disposed.
 */
export function accumulateGradients(acc: NamedTensorMap, grads: NamedTensorMap): void {
  for (const [k, g] of Object.entries(grads)) {
    const prev = acc[k];
    if (prev) {
      acc[k] = tf.add(prev, g);
      prev.dispose();
      g.dispose();
    } else {
      acc[k] = g;
    }
  }
}

/** Disposes every tensor of a gradient map. */
export function disposeGradients(m: NamedTensorMap): void {
  for (const t of Object.values(m)) t.dispose();
}
