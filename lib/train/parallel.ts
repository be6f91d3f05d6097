/**
 * Data parallelism for every trainer (docs/mpi.md): under `mpirun -np N`, the accumulation rounds
 * of an iteration (`batch / microBatch` of them, the reference's `batch_gpu` rounds) are split
 * into N contiguous blocks, one per rank ({@linkcode roundRange}); every rank still makes the host
 * draws of *every* round in the one-process order (data indices, noise, σ, flips) and computes
 * only its own, so rank k's data are a disjoint shard of the iteration's and the sum over ranks
 * of the gradients is the one-process sum (up to float32 summation order). Gradients are summed
 * by {@linkcode allreduceGradients} (flat float32 buckets, one `MPI_Allreduce` each) before
 * nan_to_num and the optimizer step, so every rank takes the same step and holds the same
 * weights. The global `--batch` keeps its meaning; the state holds no per-rank data, so a run
 * resumes under any world size.
 *
 * Outside MPI ({@linkcode dataParallel} null) every function here is the identity.
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { NamedTensorMap } from "../deps.ts";
import { type MpiComm, worldComm } from "../runtime/mpi.ts";

/** What a trainer needs of the world (an {@linkcode MpiComm}). */
export type DataParallel = Pick<
  MpiComm,
  | "rank"
  | "size"
  | "allreduceF32Sum"
  | "allreduceF64"
  | "allgatherF64"
  | "any"
  | "broadcastBytes"
  | "broadcastJson"
>;

/** The data-parallel world of this process, or null outside `mpirun` (or with one rank). */
export function dataParallel(): DataParallel | null {
  return worldComm();
}

/** Whether this process writes files (rank 0, or the only process). */
export function isWriter(dp: DataParallel | null = dataParallel()): boolean {
  return !dp || dp.rank === 0;
}

/**
 * The accumulation rounds `[start, end)` of `rank` among `size` ranks: contiguous blocks of
 * `rounds / size`. Throws a one-line `RangeError` unless `size` divides `rounds` (each rank's
 * `batch / N` must be whole micro-batches).
 */
export function roundRange(rounds: number, rank: number, size: number): [number, number] {
  if (size <= 1) return [0, rounds];
  if (rounds % size !== 0) {
    throw new RangeError(
      `${size} MPI ranks cannot share ${rounds} accumulation rounds: batch / micro-batch ` +
        `(${rounds}) must be a multiple of the number of ranks`,
    );
  }
  const per = rounds / size;
  return [rank * per, (rank + 1) * per];
}

/** Default bucket size of {@linkcode allreduceGradients}: 8 Mi floats (32 MiB). */
export const BUCKET_FLOATS = 8 << 20;

/**
 * Sums a network's gradients over every rank: the tensors of `vars` (in that order, keyed by
 * variable name as `tf.variableGrads` returns them; a missing one counts as zeros) are packed
 * into flat float32 buckets of at most `bucketFloats`, each read to the host once, summed with
 * one `MPI_Allreduce` and unpacked. Returns a new map (the input tensors are disposed); outside
 * MPI returns `grads` itself.
 */
export async function allreduceGradients(
  grads: NamedTensorMap,
  vars: readonly tf.Variable[],
  dp: DataParallel | null = dataParallel(),
  bucketFloats = BUCKET_FLOATS,
): Promise<NamedTensorMap> {
  // SIDA_MPI_TEST_NO_ALLREDUCE=1 (tests/mpi_test.ts only): skip the sum, to show that the
  // equivalence test fails without it.
  if (!dp || Deno.env.get("SIDA_MPI_TEST_NO_ALLREDUCE") === "1") return grads;
  const out: NamedTensorMap = {};
  let i = 0;
  while (i < vars.length) {
    const bucket: tf.Variable[] = [];
    let n = 0;
    while (i < vars.length && (bucket.length === 0 || n + vars[i].size <= bucketFloats)) {
      n += vars[i].size;
      bucket.push(vars[i++]);
    }
    const flat = tf.tidy(() =>
      tf.concat(bucket.map((v) => tf.reshape(grads[v.name] ?? tf.zerosLike(v), [-1])))
    );
    const host = Float32Array.from(await flat.data() as Float32Array);
    flat.dispose();
    dp.allreduceF32Sum(host);
    let off = 0;
    for (const v of bucket) {
      out[v.name] = tf.tensor(host.subarray(off, off + v.size), v.shape, "float32");
      off += v.size;
    }
  }
  for (const g of Object.values(grads)) g.dispose();
  return out;
}

/** Sums named numbers over every rank (float64); outside MPI returns `values` itself. */
export function allreduceSums<K extends string>(
  values: Record<K, number>,
  dp: DataParallel | null = dataParallel(),
): Record<K, number> {
  if (!dp) return values;
  const keys = Object.keys(values) as K[];
  const buf = Float64Array.from(keys, (k) => values[k]);
  dp.allreduceF64(buf, "sum");
  return Object.fromEntries(keys.map((k, j) => [k, buf[j]])) as Record<K, number>;
}

/** Every rank's numbers concatenated in rank order; outside MPI returns `values` itself. */
export function allgatherNumbers(
  values: number[],
  dp: DataParallel | null = dataParallel(),
): number[] {
  if (!dp) return values;
  return Array.from(dp.allgatherF64(Float64Array.from(values)));
}

/** Whether `flag` holds on any rank (every rank gets the same answer). */
export function anyRank(flag: boolean, dp: DataParallel | null = dataParallel()): boolean {
  return dp ? dp.any(flag) : flag;
}
