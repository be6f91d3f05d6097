/**
 * Helpers shared by the benchmarks.
 *
 * @module
 */
import { type BackendInfo, describeBackend } from "../lib/runtime/backend.ts";
import { startBackend } from "../lib/runtime/cli.ts";
import { LatentDataset } from "../lib/data/dataset.ts";
import { readSafetensors, readSafetensorsHeader } from "../lib/io/safetensors.ts";
import { checkFiniteWeights } from "../lib/io/host_tensor.ts";
import type { NetworkConfig } from "../lib/nets/config.ts";
import { EDMPrecond } from "../lib/nets/precond.ts";
import { UsageError } from "../lib/runtime/cli.ts";

/**
 * Starts backend `name` for a benchmark row: its info and a one-line device label (the adapter
 * for webgpu, the BLAS and threads for native), or null, saying why on stderr, when it does not
 * start or another backend answered.
 */
export async function startBenchBackend(
  name: string,
): Promise<{ info: BackendInfo; device: string } | null> {
  let info: BackendInfo;
  try {
    info = await startBackend(name);
  } catch (e) {
    console.error(`skipping backend ${name}: ${(e as Error).message}`);
    return null;
  }
  if (info.name !== name) {
    console.error(`skipping backend ${name}: got ${info.name}`);
    return null;
  }
  const device = info.name === "webgpu"
    ? `${info.adapter}${info.isFallbackAdapter ? " (software)" : ""}`
    : info.name === "cpu"
    ? "tfjs-cpu (JS)"
    : describeBackend(info).replace(/^backend: /, "");
  return { info, device };
}

/** The process's resident set now and its high-water mark (bytes, from /proc; NaN off Linux). */
export function residentBytes(): { rss: number; hwm: number } {
  let s = "";
  try {
    s = Deno.readTextFileSync("/proc/self/status");
  } catch {
    // not Linux
  }
  const kb = (k: string) => Number(s.match(new RegExp(`${k}:\\s+(\\d+) kB`))?.[1] ?? NaN) * 1e3;
  return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
}

/**
 * Eight synthetic ImageNet-512-style latent items at resolution `r` (4 channels; per item a
 * posterior mean and std, as `img512-sd.zip`), with 1000-class labels.
 */
export function syntheticLatents(r: number): LatentDataset {
  const n = 8, c = 4;
  const per = 2 * c * r * r;
  const data = new Float32Array(n * per);
  for (let i = 0; i < data.length; i++) {
    data[i] = (i % per) >= c * r * r ? 0.1 : 4 * Math.sin(i * 0.618);
  }
  const labels = Int32Array.from({ length: n }, (_, i) => (i * 97) % 1000);
  return new LatentDataset("synthetic-img512-sd", r, c, data, labels, 1000);
}

/**
 * One network of a distillation training state (`lib/distill/run.ts`): the tensors under `prefix`
 * (`G.`, `G_ema.`, `fake.`) loaded into a network of `config`, reading only those tensors. A state
 * that lacks any of them is refused with a {@linkcode UsageError} naming the first; non-finite
 * weights with an `IoError`, as `loadNetwork` refuses them in a snapshot.
 */
export async function loadStateNetwork(
  file: string,
  prefix: string,
  config: NetworkConfig,
): Promise<EDMPrecond> {
  const { entries } = await readSafetensorsHeader(file);
  const net = new EDMPrecond(config, { init: "zeros" });
  try {
    const names = net.namedTensors().map(([n]) => prefix + n);
    const have = new Set(entries.map((e) => e.name));
    const missing = names.filter((n) => !have.has(n));
    if (missing.length) {
      throw new UsageError(`${file}: no ${missing[0]} (${missing.length} tensors missing)`);
    }
    const { tensors } = await readSafetensors(file, { names });
    checkFiniteWeights(tensors, file); // as loadNetwork refuses a snapshot with NaN weights
    net.loadStateDict(tensors, { prefix });
    return net;
  } catch (e) {
    net.dispose();
    throw e;
  }
}
