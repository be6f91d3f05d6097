/**
 * Where the process's memory goes during SiDA iterations: per iteration, tfjs' live tensor bytes
 * (between iterations and at their peak inside the iteration, from `tf.profile`), the `native`
 * backend's pool of free buffers, V8's heap and external (ArrayBuffer) bytes, and the resident set
 * (now, after a full garbage collection, after glibc's `malloc_trim`, and its high-water mark).
 *
 *   deno run -A --v8-flags=--expose-gc bench/memory.ts --config edm2-xs --latent 16 --iters 3
 *   deno run -A --v8-flags=--expose-gc bench/memory.ts --config mnist --backend cpu
 *
 * Each row is printed as it completes (JSON lines with `--json FILE`).
 *
 * @module
 */
import { tf } from "../lib/deps.ts";
import { mnistDataset } from "../lib/data/dataset.ts";
import { createEdm2Network, edm2Preset } from "../lib/nets/edm2.ts";
import { Distiller } from "../lib/distill/distiller.ts";
import { distillPreset } from "../lib/distill/presets.ts";
import { preset } from "../lib/nets/config.ts";
import { createNetwork } from "../lib/nets/network.ts";
import { bufferPool } from "../lib/runtime/native/buffer_pool.ts";
import { residentBytes, startBenchBackend, syntheticLatents } from "./common.ts";
import { numberFlag, parseFlags, runMain, UsageError } from "../lib/runtime/cli.ts";

const USAGE =
  "usage: bench/memory.ts [--config mnist|edm2-xs] [--latent 64] [--batch N] [--iters 3] [--backend native] [--json FILE] [--trace FILE]";

const GB = 1e9;

let trim: (() => void) | undefined;
try {
  const libc = Deno.dlopen("libc.so.6", { malloc_trim: { parameters: ["usize"], result: "i32" } });
  trim = () => void libc.symbols.malloc_trim(0n);
} catch {
  trim = undefined;
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    string: ["config", "latent", "batch", "iters", "backend", "json", "trace"],
  }, USAGE);
  const config = String(f.config ?? "edm2-xs");
  if (config !== "mnist" && config !== "edm2-xs") {
    throw new UsageError(`unknown config '${config}' (mnist, edm2-xs)`);
  }
  const latent = numberFlag("latent", f.latent, 64, { integer: true, min: 8 });
  const iters = numberFlag("iters", f.iters, 3, { integer: true, min: 1 });
  const batch = numberFlag("batch", f.batch, config === "mnist" ? 64 : 2, {
    integer: true,
    min: 1,
  });
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new UsageError("run with --v8-flags=--expose-gc");
  const started = await startBenchBackend(String(f.backend ?? "native"));
  if (!started) throw new Error(`backend '${f.backend ?? "native"}' did not start`);

  const teacher = config === "mnist"
    ? createNetwork(preset("mnist"), { seed: 0 })
    : createEdm2Network({ ...edm2Preset("edm2-img512-xs"), imgResolution: latent }, { seed: 0 });
  const dataset = config === "mnist" ? await mnistDataset() : syntheticLatents(latent);
  const base = distillPreset(config === "mnist" ? "mnist" : "imagenet512-xs", "sida").config;
  const d = new Distiller({
    teacher,
    dataset,
    config: {
      ...base,
      batch,
      microBatch: Math.min(batch, base.microBatch ?? batch),
      gWarmupNimg: 0,
      ganWarmupNimg: 0,
    },
  });
  const out = f.json ? await Deno.open(String(f.json), { create: true, append: true }) : null;
  for (let i = 0; i <= iters; i++) {
    const t0 = performance.now();
    const prof = await tf.profile(async () => {
      await d.step();
      return [];
    });
    const seconds = (performance.now() - t0) / 1000;
    const live = tf.memory().numBytes;
    const before = residentBytes();
    const v8 = Deno.memoryUsage();
    gc();
    const afterGc = residentBytes();
    const v8gc = Deno.memoryUsage();
    trim?.();
    const afterTrim = residentBytes();
    const row = {
      config,
      latent: config === "mnist" ? null : latent,
      batch,
      iteration: i,
      seconds,
      kernels: prof.kernels.length,
      tfjsLiveGb: live / GB,
      tfjsPeakGb: prof.peakBytes / GB,
      poolFreeGb: bufferPool.freeBytes / GB,
      v8HeapGb: v8.heapUsed / GB,
      v8ExternalGb: v8.external / GB,
      v8ExternalAfterGcGb: v8gc.external / GB,
      rssGb: before.rss / GB,
      rssAfterGcGb: afterGc.rss / GB,
      rssAfterTrimGb: trim ? afterTrim.rss / GB : null,
      peakRssGb: afterTrim.hwm / GB,
    };
    console.log(JSON.stringify(row, (_, v) => typeof v === "number" ? Number(v.toFixed(3)) : v));
    if (out) await out.write(new TextEncoder().encode(JSON.stringify(row) + "\n"));
    // --trace FILE: the last iteration's kernels (name, live tfjs bytes after it), one per line.
    if (f.trace && i === iters) {
      await Deno.writeTextFile(
        String(f.trace),
        prof.kernels.map((k) => `${k.name},${k.totalBytesSnapshot}`).join("\n") + "\n",
      );
    }
  }
  out?.close();
  d.dispose();
  teacher.dispose();
});
