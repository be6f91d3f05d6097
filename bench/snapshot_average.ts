/**
 * The uniform average of several generator snapshots of one run (issue 15): every float32 tensor
 * is the mean of the snapshots' tensors, everything else (and the metadata) is the first file's.
 * Late in a long SiD stage at a constant learning rate the generator swings around a level rather
 * than improving (docs/sweeps.md, "The 2-hour budget"); averaging the last snapshots, as a G_ema
 * with a half-life of several snapshot intervals would, asks whether the mean of those swings is a
 * better generator than any one of them. Score the result with `bench/snapshot_probe.ts`.
 *
 *   deno run -A bench/snapshot_average.ts OUT.safetensors A.safetensors B.safetensors [...]
 *
 * Snapshots must hold the same tensor names, dtypes and shapes; anything else is a one-line error
 * and nothing is written.
 *
 * @module
 */
import { readSafetensors, writeSafetensors } from "../lib/io/safetensors.ts";
import type { HostTensor } from "../lib/io/host_tensor.ts";
import { runMain, UsageError } from "../lib/runtime/cli.ts";

const USAGE = "usage: bench/snapshot_average.ts OUT.safetensors A.safetensors B.safetensors [...]";

/**
 * The element-wise mean of the float32 tensors of `dicts` (the others from the first). Throws a
 * RangeError naming the first tensor whose name, dtype or shape differs between them.
 */
export function averageTensors(
  dicts: readonly Map<string, HostTensor>[],
  names: readonly string[] = dicts.map((_, i) => `#${i}`),
): Map<string, HostTensor> {
  if (dicts.length === 0) throw new RangeError("no snapshot to average");
  const [first] = dicts;
  for (const [i, d] of dicts.entries()) {
    const extra = [...d.keys()].find((k) => !first.has(k));
    if (extra !== undefined) {
      throw new RangeError(`${names[i]}: tensor '${extra}' not in ${names[0]}`);
    }
  }
  const out = new Map<string, HostTensor>();
  for (const [name, t] of first) {
    const parts = dicts.map((d, i) => {
      const u = d.get(name);
      if (!u) throw new RangeError(`${names[i]}: tensor '${name}' missing`);
      if (u.dtype !== t.dtype || u.shape.join() !== t.shape.join()) {
        throw new RangeError(
          `${names[i]}: tensor '${name}' is ${u.dtype}[${u.shape}], ${
            names[0]
          } has ${t.dtype}[${t.shape}]`,
        );
      }
      return u.data;
    });
    if (t.dtype !== "float32") {
      out.set(name, t);
      continue;
    }
    // Summed in float64, then rounded once.
    const acc = new Float64Array(t.data.length);
    for (const p of parts as Float32Array[]) for (let i = 0; i < p.length; i++) acc[i] += p[i];
    out.set(name, {
      dtype: "float32",
      shape: [...t.shape],
      data: Float32Array.from(acc, (v) => v / parts.length),
    });
  }
  return out;
}

async function main() {
  const [out, ...inputs] = Deno.args;
  if (!out || inputs.length < 2 || !out.endsWith(".safetensors")) throw new UsageError(USAGE);
  if (inputs.includes(out)) throw new UsageError(`the output ${out} is also an input`);
  const files = [];
  for (const p of inputs) {
    try {
      files.push(await readSafetensors(p));
    } catch (e) {
      // The reader's messages name the file.
      throw new UsageError((e as Error).message);
    }
  }
  let avg: Map<string, HostTensor>;
  try {
    avg = averageTensors(files.map((f) => f.tensors), inputs);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  await writeSafetensors(out, avg, {
    ...files[0].metadata,
    averaged_from: JSON.stringify(inputs),
  });
  console.log(`${out}: the mean of ${inputs.length} snapshots`);
}

if (import.meta.main) await runMain(main);
