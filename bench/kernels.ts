/**
 * Kernel speed per backend: GFLOP/s of a 1024³ matMul and of conv2d forward / backward (input and
 * filter gradients) at shapes typical of the U-Nets, plus the `mnist` network's forward and
 * forward+backward time at batch 64.
 *
 *   deno task bench:kernels                                  # native, webgpu, cpu
 *   deno run -A bench/kernels.ts --backends native --batch 64 --repeats 3
 *
 * The first call of each measurement is a warm-up and is not counted. On `cpu`, measurements
 * estimated to take longer than `--cpu-max-s` seconds (default 120) are skipped, and say so.
 * Prints a Markdown table; `--json F` also writes the rows to F.
 *
 * On `webgpu` two more sections (`--sections kernels,net,tiny,sida` picks what runs):
 *
 * - `tiny`: the host cost of one tiny kernel (64 floats) through tfjs-webgpu's program runner,
 *   for a stock program (`Add`) and one of ours (`SidaSilu`): µs per call spent in JavaScript
 *   (pipeline lookup, uniform upload, bind group, dispatch record), with no read-back;
 * - `sida`: one `mnist` SiDA iteration (`--sida-batch 64 --sida-micro 32`, both warm-up gates
 *   open, after one warm-up iteration) recorded kernel by kernel: dispatches, queue submissions,
 *   bind groups and buffer writes per iteration, then every distinct kernel call replayed alone
 *   (`--replay-repeats`) for calls, ms and GFLOP/s per kernel type.
 *
 *   deno run -A bench/kernels.ts --backends webgpu --sections tiny,sida --sida-batch 4 --sida-micro 2
 *
 * (the dispatch count depends on the number of rounds, batch / micro-batch, not on the batch).
 * `SIDA_WEBGPU_KERNELS=0` measures tfjs' stock kernels.
 */
import { tf } from "../lib/deps.ts";
import { numberFlag, parseFlags, runMain, startBackend } from "../lib/runtime/cli.ts";
import { createNetwork, preset } from "../lib/nets/network.ts";
import { mnistDataset } from "../lib/data/dataset.ts";
import { Distiller } from "../lib/distill/distiller.ts";
import { distillPreset } from "../lib/distill/presets.ts";
import { silu } from "../lib/runtime/native/fused.ts";
import { webGpuKernelsActive } from "../lib/runtime/webgpu/backend.ts";
import { hostCacheStats } from "../lib/runtime/webgpu/host_cache.ts";
import {
  type GpuCounts,
  type KernelTiming,
  type ProgramTotals,
  replayKernels,
  startGpuProfile,
} from "../lib/runtime/webgpu/profile.ts";

const USAGE =
  "usage: bench/kernels.ts [--backends native,webgpu,cpu] [--batch 64] [--repeats 2] [--cpu-max-s 120] [--sections kernels,net,tiny,sida] [--sida-batch 64] [--sida-micro 32] [--replay-repeats 2] [--json out.json]";

interface Row {
  backend: string;
  what: string;
  gflop: number;
  seconds: number;
  note?: string;
}

/** Rough tfjs-cpu (pure JS) throughput, for the skip estimate (GFLOP/s). */
const CPU_GFLOPS = 0.3;

async function timeIt(fn: () => Promise<void>, repeats: number): Promise<number> {
  await fn();
  const t0 = performance.now();
  for (let i = 0; i < repeats; i++) await fn();
  return (performance.now() - t0) / 1000 / repeats;
}

async function sync(ts: tf.Tensor[]): Promise<void> {
  for (const t of ts) await t.data();
  tf.dispose(ts);
}

interface ConvCase {
  n: number;
  hw: number;
  ci: number;
  co: number;
}

const CONV_CASES: ConvCase[] = [
  { n: 8, hw: 32, ci: 32, co: 32 },
  { n: 8, hw: 16, ci: 64, co: 64 },
  { n: 8, hw: 8, ci: 256, co: 256 },
  { n: 64, hw: 32, ci: 32, co: 32 },
  { n: 64, hw: 16, ci: 64, co: 64 },
  { n: 64, hw: 8, ci: 128, co: 128 },
];

async function kernelRows(backend: string, repeats: number, cpuMaxS: number): Promise<Row[]> {
  const rows: Row[] = [];
  const measure = async (
    what: string,
    gflop: number,
    make: () => tf.Tensor[],
    run: (inputs: tf.Tensor[]) => tf.Tensor[],
  ) => {
    const estimate = gflop * (repeats + 1) / CPU_GFLOPS;
    if (backend === "cpu" && estimate > cpuMaxS) {
      rows.push({
        backend,
        what,
        gflop,
        seconds: NaN,
        note: `skipped: ~${estimate.toFixed(0)} s on tfjs-cpu`,
      });
      return;
    }
    const inputs = make();
    const seconds = await timeIt(() => sync(run(inputs)), repeats);
    tf.dispose(inputs);
    rows.push({ backend, what, gflop, seconds });
    // Each row as soon as it is measured, so that a run cut short still reports something.
    console.error(`${backend}: ${what}: ${(seconds * 1e3).toFixed(2)} ms`);
  };
  // Per-kernel overhead: 200 chained element-wise adds on 64 floats (GFLOP ~0), one read at the
  // end. A U-Net training step runs thousands of small kernels, so this bounds its speed from below.
  {
    const chain = 200;
    const x = tf.randomNormal([64]);
    const seconds = await timeIt(async () => {
      let y = x;
      for (let i = 0; i < chain; i++) {
        const next = tf.add(y, 1);
        if (y !== x) y.dispose();
        y = next;
      }
      await sync([y]);
    }, repeats);
    x.dispose();
    rows.push({ backend, what: `small kernel (add of 64 floats) ×${chain}`, gflop: 0, seconds });
    console.error(`${backend}: ${(seconds / chain * 1e6).toFixed(1)} µs per small kernel`);
  }
  await measure(
    "matMul 1024³",
    2 * 1024 ** 3 / 1e9,
    () => [tf.randomNormal([1024, 1024]), tf.randomNormal([1024, 1024])],
    ([a, b]) => [tf.matMul(a, b)],
  );
  for (const c of CONV_CASES) {
    const gflop = 2 * c.n * c.hw * c.hw * 9 * c.ci * c.co / 1e9;
    const tag = `${c.n}x${c.hw}x${c.hw}x${c.ci}→${c.co} 3x3`;
    const make = () => [
      tf.randomNormal([c.n, c.hw, c.hw, c.ci]),
      tf.randomNormal([3, 3, c.ci, c.co], 0, 0.1),
      tf.randomNormal([c.n, c.hw, c.hw, c.co]),
    ];
    await measure(`conv2d fwd ${tag}`, gflop, make, ([x, w]) => [
      tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 1, "same"),
    ]);
    await measure(`conv2d bwd input ${tag}`, gflop, make, ([x, w, dy]) => [
      tf.conv2dTranspose(dy as tf.Tensor4D, w as tf.Tensor4D, x.shape as never, 1, "same"),
    ]);
    await measure(`conv2d bwd filter ${tag}`, gflop, make, ([x, w, dy]) => [
      tf.engine().runKernel("Conv2DBackpropFilter", { x, dy }, {
        strides: 1,
        pad: "same",
        dataFormat: "NHWC",
        filterShape: w.shape,
      }) as tf.Tensor,
    ]);
  }
  return rows;
}

async function netRows(backend: string, batch: number, repeats: number, cpuMaxS: number) {
  const rows: Row[] = [];
  const gflopFwd = 0.85 * batch;
  const skip = backend === "cpu" && gflopFwd * 4 * (repeats + 1) / CPU_GFLOPS > cpuMaxS;
  if (skip) {
    const note = `skipped: ~${
      (gflopFwd * 4 * (repeats + 1) / CPU_GFLOPS).toFixed(0)
    } s on tfjs-cpu`;
    rows.push({
      backend,
      what: `mnist net fwd, batch ${batch}`,
      gflop: gflopFwd,
      seconds: NaN,
      note,
    });
    rows.push({
      backend,
      what: `mnist net fwd+bwd, batch ${batch}`,
      gflop: 3 * gflopFwd,
      seconds: NaN,
      note,
    });
    return rows;
  }
  const cfg = preset("mnist");
  const net = createNetwork(cfg, { seed: 0 });
  const r = cfg.imgResolution;
  const x = tf.randomNormal([batch, r, r, cfg.imgChannels], 0, 1, "float32", 1) as tf.Tensor4D;
  const classes = tf.tensor1d(Array.from({ length: batch }, (_, i) => i % cfg.labelDim), "int32");
  const labels = tf.cast(tf.oneHot(classes, cfg.labelDim), "float32") as tf.Tensor2D;
  const sigma = tf.exp(tf.randomNormal([batch], -1.2, 1.2, "float32", 2));
  const params = net.namedParameters().map(([, v]) => v);
  const start = tf.memory().numTensors;
  const fwd = await timeIt(() => sync([net.denoise(x, sigma, { labels })]), repeats);
  rows.push({ backend, what: `mnist net fwd, batch ${batch}`, gflop: gflopFwd, seconds: fwd });
  const fb = await timeIt(async () => {
    const { value, grads } = tf.variableGrads(
      () =>
        tf.tidy(() =>
          tf.mean(
            tf.square(tf.sub(net.denoise(x, sigma, { labels, training: true }), x)),
          ) as tf.Scalar
        ),
      params,
    );
    await sync([value, ...Object.values(grads)]);
  }, repeats);
  rows.push({
    backend,
    what: `mnist net fwd+bwd, batch ${batch}`,
    gflop: 3 * gflopFwd,
    seconds: fb,
  });
  if (tf.memory().numTensors !== start) {
    throw new Error(`bench leaked ${tf.memory().numTensors - start} tensors`);
  }
  tf.dispose([x, classes, labels, sigma]);
  net.dispose();
  return rows;
}

/** Host cost of tiny kernels on webgpu (see the module comment). */
interface TinyRow {
  what: string;
  hostMicros: number;
  gpuMicros: number;
}

async function tinyRows(): Promise<TinyRow[]> {
  const rows: TinyRow[] = [];
  // tfjs-webgpu runs small kernels whose inputs are still on the host on the CPU
  // (WEBGPU_CPU_FORWARD); off here, so that both rows measure the GPU program path.
  const cpuForward = tf.env().getBool("WEBGPU_CPU_FORWARD");
  tf.env().set("WEBGPU_CPU_FORWARD", false);
  const x = tf.randomNormal([64]);
  const cases: [string, (t: tf.Tensor) => tf.Tensor][] = [
    ["tfjs stock program (Add of 64 floats)", (t) => tf.add(t, 1)],
    [
      webGpuKernelsActive()
        ? "our program (SidaSilu of 64 floats)"
        : "silu composed of tfjs kernels (Sigmoid, Multiply; 64 floats)",
      (t) => silu(t),
    ],
  ];
  const chain = 300;
  for (const [what, f] of cases) {
    let best = Infinity, bestAll = Infinity;
    for (let r = 0; r < 4; r++) {
      let y = x;
      const t0 = performance.now();
      for (let i = 0; i < chain; i++) {
        const next = f(y);
        if (y !== x) y.dispose();
        y = next;
      }
      const t1 = performance.now();
      await y.data();
      const t2 = performance.now();
      y.dispose();
      if (r === 0) continue; // warm-up: pipeline compilation
      best = Math.min(best, (t1 - t0) / chain * 1e3);
      bestAll = Math.min(bestAll, (t2 - t0) / chain * 1e3);
    }
    rows.push({ what, hostMicros: best, gpuMicros: bestAll });
    console.error(`tiny: ${what}: ${best.toFixed(1)} µs host, ${bestAll.toFixed(1)} µs with GPU`);
  }
  x.dispose();
  tf.env().set("WEBGPU_CPU_FORWARD", cpuForward);
  return rows;
}

/** One profiled mnist SiDA iteration on webgpu (see the module comment). */
interface SidaProfile {
  batch: number;
  microBatch: number;
  seconds: number;
  counts: GpuCounts;
  kernels: KernelTiming[];
  programs: ProgramTotals[];
  /** Bind groups and uniform buffers made in the iteration (the rest were reused), when cached. */
  made?: { bindGroups: number; uniforms: number };
}

async function sidaProfile(
  batch: number,
  microBatch: number,
  replayRepeats: number,
): Promise<SidaProfile> {
  const teacher = createNetwork(preset("mnist"), { seed: 0 });
  const base = distillPreset("mnist", "sida").config;
  const d = new Distiller({
    teacher,
    dataset: await mnistDataset(),
    config: { ...base, batch, microBatch, gWarmupNimg: 0, ganWarmupNimg: 0 },
  });
  let t0 = performance.now();
  await d.step();
  console.error(`sida: warm-up iteration ${((performance.now() - t0) / 1e3).toFixed(1)} s`);
  const cache = hostCacheStats(tf.backend());
  const before = cache ? { ...cache } : undefined;
  const prof = startGpuProfile({ record: true });
  t0 = performance.now();
  try {
    await d.step();
  } finally {
    prof.stop();
  }
  const made = cache && before
    ? {
      bindGroups: cache.bindGroupMisses + cache.bindGroupUncached - before.bindGroupMisses -
        before.bindGroupUncached,
      uniforms: cache.uniformMisses - before.uniformMisses,
    }
    : undefined;
  const seconds = (performance.now() - t0) / 1e3;
  const counts = prof.totals();
  const programs = prof.byProgram();
  console.error(
    `sida: profiled iteration ${seconds.toFixed(1)} s, ${counts.dispatches} dispatches, ` +
      `${counts.submits} submits, ${prof.calls.length} kernel calls; replaying…`,
  );
  const kernels = await replayKernels(prof.calls, replayRepeats, (k) => console.error(`  ${k}`));
  d.dispose();
  teacher.dispose();
  return { batch, microBatch, seconds, counts, kernels, programs, made };
}

function printSida(p: SidaProfile): void {
  const c = p.counts;
  console.log(
    `\nOne mnist SiDA iteration on webgpu, batch ${p.batch} in rounds of ${p.microBatch}: ` +
      `${p.seconds.toFixed(2)} s; ${c.dispatches} dispatches, ${c.submits} queue submissions, ` +
      `${c.bindGroups} bind groups asked for, ${c.writeBuffers} buffer writes` +
      (p.made
        ? ` (host caches: ${p.made.bindGroups} bind groups and ${p.made.uniforms} uniform buffers ` +
          `made, the rest reused).\n`
        : `.\n`),
  );
  const total = p.kernels.reduce((a, k) => a + k.ms, 0);
  console.log("| kernel | calls | dispatches | ms (replayed) | share | GFLOP/s |");
  console.log("|---|---:|---:|---:|---:|---:|");
  for (const k of p.kernels) {
    const gf = k.gflop > 0 && k.ms > 0 ? (k.gflop / (k.ms / 1e3)).toFixed(2) : "";
    console.log(
      `| ${k.name}${
        k.failed ? ` (${k.failed} not replayed)` : ""
      } | ${k.calls} | ${k.dispatches} | ${k.ms.toFixed(1)} | ${
        (100 * k.ms / total).toFixed(1)
      }% | ${gf} |`,
    );
  }
  console.log(
    `| total | ${p.kernels.reduce((a, k) => a + k.calls, 0)} | ${
      p.kernels.reduce((a, k) => a + k.dispatches, 0)
    } | ${total.toFixed(1)} | | |`,
  );
  console.log("\nPrograms by workgroups dispatched (the ten largest):\n");
  console.log("| program | dispatches | workgroups | invocations |\n|---|---:|---:|---:|");
  for (const g of p.programs.slice(0, 10)) {
    console.log(`| ${g.program} | ${g.dispatches} | ${g.workgroups} | ${g.invocations} |`);
  }
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    string: [
      "backends",
      "batch",
      "repeats",
      "cpu-max-s",
      "json",
      "sections",
      "sida-batch",
      "sida-micro",
      "replay-repeats",
    ],
  }, USAGE);
  const backends = String(f.backends ?? "native,webgpu,cpu").split(",");
  const batch = numberFlag("batch", f.batch, 64, { integer: true, min: 1 });
  const repeats = numberFlag("repeats", f.repeats, 2, { integer: true, min: 1 });
  const cpuMaxS = numberFlag("cpu-max-s", f["cpu-max-s"], 120, { min: 0 });
  const sections = new Set(String(f.sections ?? "kernels,net,tiny,sida").split(","));
  const sidaBatch = numberFlag("sida-batch", f["sida-batch"], 64, { integer: true, min: 1 });
  const sidaMicro = numberFlag("sida-micro", f["sida-micro"], Math.min(32, sidaBatch), {
    integer: true,
    min: 1,
  });
  const replayRepeats = numberFlag("replay-repeats", f["replay-repeats"], 2, {
    integer: true,
    min: 1,
  });
  const rows: Row[] = [];
  let tiny: TinyRow[] | undefined;
  let sida: SidaProfile | undefined;
  const labels: Record<string, string> = {};
  for (const b of backends) {
    let info;
    try {
      info = await startBackend(b);
    } catch (e) {
      console.error(`skipping backend ${b}: ${(e as Error).message}`);
      continue;
    }
    labels[b] = info.name === "webgpu"
      ? `webgpu (${info.adapter}${info.isFallbackAdapter ? ", software" : ""})`
      : info.name === "native"
      ? `native (${info.blas})`
      : "cpu (tfjs JS)";
    if (sections.has("kernels")) rows.push(...await kernelRows(b, repeats, cpuMaxS));
    if (sections.has("net")) rows.push(...await netRows(b, batch, repeats, cpuMaxS));
    if (info.name === "webgpu" && sections.has("tiny")) tiny = await tinyRows();
    if (info.name === "webgpu" && sections.has("sida")) {
      sida = await sidaProfile(sidaBatch, sidaMicro, replayRepeats);
    }
  }
  const names = [...new Set(rows.map((r) => r.what))];
  const used = backends.filter((b) => labels[b]);
  console.log(`| kernel | GFLOP | ${used.map((b) => `${b} s (GFLOP/s)`).join(" | ")} |`);
  console.log(`|---|---:|${used.map(() => "---:").join("|")}|`);
  for (const what of names) {
    const cells = used.map((b) => {
      const r = rows.find((x) => x.backend === b && x.what === what);
      if (!r) return "–";
      if (!Number.isFinite(r.seconds)) return r.note ?? "–";
      if (r.gflop === 0) return `${r.seconds.toFixed(4)}`;
      return `${r.seconds.toFixed(3)} (${(r.gflop / r.seconds).toFixed(1)})`;
    });
    const g = rows.find((x) => x.what === what)!.gflop;
    console.log(`| ${what} | ${g.toFixed(2)} | ${cells.join(" | ")} |`);
  }
  for (const b of used) console.log(`\n${b}: ${labels[b]}`);
  if (tiny) {
    console.log("\n| tiny kernel on webgpu | µs host per call | µs per call with the GPU |");
    console.log("|---|---:|---:|");
    for (const t of tiny) {
      console.log(`| ${t.what} | ${t.hostMicros.toFixed(1)} | ${t.gpuMicros.toFixed(1)} |`);
    }
  }
  if (sida) printSida(sida);
  if (f.json) {
    await Deno.writeTextFile(
      String(f.json),
      JSON.stringify({ labels, rows, tiny, sida }, null, 2),
    );
  }
});
