/**
 * mulberry32, the small seeded 32-bit generator used wherever the project needs reproducible
 * host-side randomness (data order, splits, generation seeds).
 *
 * @example
 * ```ts
 * import { mulberry32 } from "./random.ts";
 * const u = mulberry32(1); // u() in [0, 1)
 * ```
 *
 * @module
 */

/** A mulberry32 stream of uint32 values. */
export function mulberry32Uint(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** A mulberry32 stream of uniform values in [0, 1). */
export function mulberry32(seed: number): () => number {
  const next = mulberry32Uint(seed);
  return () => next() / 4294967296;
}
