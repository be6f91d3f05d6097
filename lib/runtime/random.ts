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

/** A source of random numbers, drawn on the host. */
export interface RandomSource {
  /** `n` draws from U[0, 1). */
  uniform(n: number): Float64Array;
  /** `n` draws from N(0, 1). */
  normal(n: number): Float64Array;
}

/**
 * A seeded {@linkcode RandomSource}: mulberry32 (32-bit state) for uniforms in [0, 1) with 2^-32
 * resolution, Box–Muller for normals. Deterministic for a given seed on every platform.
 *
 * @example
 * ```ts
 * import { seededRandom } from "./random.ts";
 * const a = seededRandom(7).normal(3), b = seededRandom(7).normal(3); // equal
 * ```
 */
export function seededRandom(seed: number): RandomSource {
  let state = (Math.trunc(seed) ^ 0x6d2b79f5) >>> 0;
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    uniform(n: number): Float64Array {
      const out = new Float64Array(n);
      for (let i = 0; i < n; i++) out[i] = next();
      return out;
    },
    normal(n: number): Float64Array {
      const out = new Float64Array(n);
      for (let i = 0; i < n; i += 2) {
        const u1 = 1 - next(); // (0, 1]: log is finite
        const u2 = next();
        const r = Math.sqrt(-2 * Math.log(u1));
        out[i] = r * Math.cos(2 * Math.PI * u2);
        if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
      }
      return out;
    },
  };
}

/** A uint32 from (seed, iteration, stream): murmur3 finaliser over the words. */
export function mixSeed(...values: number[]): number {
  let h = 0x9e3779b9;
  for (const v of values) {
    for (const word of [v >>> 0, Math.floor(v / 0x100000000) >>> 0]) {
      h ^= word + 0x7f4a7c15;
      h ^= h >>> 16;
      h = Math.imul(h, 0x85ebca6b);
      h ^= h >>> 13;
      h = Math.imul(h, 0xc2b2ae35);
      h ^= h >>> 16;
    }
  }
  return h >>> 0;
}
