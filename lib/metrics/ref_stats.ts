/**
 * Reference statistics files: EDM's `.npz` (`mu`, `sigma`; NVlabs/edm `fid.py`, the `ref` command)
 * and EDM2's pickled dict (NVlabs/edm2 `calculate_metrics.py` `ref`) (`{num_images, fid: {mu, sigma}, fd_dinov2: {…}}`), plus writing our own `.npz`.
 *
 * @example
 * ```ts
 * import { loadRefStats } from "./ref_stats.ts";
 * const ref = await loadRefStats("fid-refs/cifar10-32x32.npz"); // { mu, sigma, dim }
 * ```
 *
 * @module
 */
import { type HostTensor, hostTensor, IoError } from "../io/host_tensor.ts";
import { NumpyArrayBuilder, PyDict, type PyValue } from "../io/pickle.ts";
import { openTorchFile } from "../io/torch_file.ts";
import { checkCovariance } from "./linalg.ts";
import { readNpz, writeNpz } from "./npz.ts";
import type { Stats } from "./stats.ts";

/** Reference statistics (`mu`, `sigma`, `dim`), as `./stats.ts` defines them. */
export type { Stats };

function toF64(t: HostTensor): Float64Array {
  if (t.dtype === "float64") return t.data as Float64Array;
  if (t.dtype === "float32") return Float64Array.from(t.data as Float32Array);
  throw new IoError(`expected a float array, got ${t.dtype}`);
}

/** Checks shapes `[d]` and `[d, d]` and returns the statistics. */
function statsOf(mu: HostTensor, sigma: HostTensor, path: string): Stats {
  const d = mu.shape[0];
  if (
    mu.shape.length !== 1 || sigma.shape.length !== 2 || sigma.shape[0] !== d ||
    sigma.shape[1] !== d
  ) {
    throw new IoError(
      `${path}: mu [${mu.shape}] and sigma [${sigma.shape}] are not [d] and [d, d]`,
    );
  }
  try {
    const stats = { mu: toF64(mu), sigma: toF64(sigma), dim: d };
    if (!stats.mu.every(Number.isFinite)) throw new IoError("mu has a non-finite value");
    checkCovariance(stats.sigma, d, "sigma");
    return stats;
  } catch (e) {
    throw new IoError(`${path}: invalid reference statistics: ${(e as Error).message}`);
  }
}

function pyGet(d: PyValue, key: string): PyValue | undefined {
  return d instanceof PyDict ? d.get(key) : undefined;
}

function pyArray(v: PyValue | undefined, what: string, path: string): HostTensor {
  if (v instanceof NumpyArrayBuilder && v.array) return v.array;
  if (v && typeof v === "object" && "dtype" in v && "shape" in v && "data" in v) {
    return v as HostTensor;
  }
  throw new IoError(`${path}: '${what}' is not a numeric numpy array`);
}

/**
 * Loads reference statistics: an `.npz` with `mu` and `sigma` (EDM `fid-refs`, SiD
 * `--data_stat`, or written by {@linkcode saveRefStats}), or an EDM2 `.pkl` dict whose `key`
 * entry (default `fid`) holds `mu` and `sigma`.
 *
 * The statistics are checked: `mu` finite, `sigma` a finite, symmetric, positive semi-definite
 * matrix (see `checkCovariance` in `linalg.ts`; one eigen-decomposition, about a second at
 * 2048 dimensions with LAPACK).
 *
 * @throws {IoError} naming the file for a missing key, wrong shapes, a malformed file, or
 *   statistics that are not a mean and a covariance.
 */
export async function loadRefStats(path: string, key = "fid"): Promise<Stats> {
  const lower = path.toLowerCase();
  if (lower.endsWith(".pkl") || lower.endsWith(".pickle")) {
    const f = openTorchFile(path);
    try {
      const entry = pyGet(f.root, key) ?? f.root;
      const mu = pyGet(entry, "mu");
      const sigma = pyGet(entry, "sigma");
      if (mu === undefined || sigma === undefined) {
        throw new IoError(`${path}: no '${key}' dict with 'mu' and 'sigma'`);
      }
      return statsOf(pyArray(mu, "mu", path), pyArray(sigma, "sigma", path), path);
    } finally {
      f.close();
    }
  }
  const arrays = await readNpz(path);
  const mu = arrays.get("mu");
  const sigma = arrays.get("sigma");
  if (!mu || !sigma) {
    throw new IoError(
      `${path}: needs arrays 'mu' and 'sigma' (has ${[...arrays.keys()].join(", ") || "none"})`,
    );
  }
  return statsOf(mu, sigma, path);
}

/**
 * Writes statistics as an EDM-style `.npz` (`mu` float64 [d], `sigma` float64 [d, d]), plus any
 * extra arrays (for example `num_images`), atomically.
 */
export async function saveRefStats(
  path: string,
  stats: Stats,
  extra: Record<string, HostTensor> = {},
): Promise<void> {
  await writeNpz(path, {
    mu: hostTensor("float64", [stats.dim], stats.mu),
    sigma: hostTensor("float64", [stats.dim, stats.dim], stats.sigma),
    ...extra,
  });
}
