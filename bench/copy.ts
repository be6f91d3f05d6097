/**
 * Per-call time of the data-movement and reduction kernels (`lib/runtime/native/copy_kernels.ts`,
 * `csrc/sida_copy.c`) at the shapes a SiDA training iteration of the `mnist` network uses (a
 * small U-Net, micro-batches of 32, NHWC): Sum over leading, middle and trailing axes, SplitV,
 * Concat, Pack, Unpack, Tile, Slice windows and Transpose.
 *
 * Three columns: tfjs-cpu's kernel (the `cpu` backend), the `native` backend with its C kernels
 * disabled (`setCKernelsEnabled(false)`: the TypeScript kernels of `elementwise_kernels.ts`, else
 * tfjs-cpu's) and the `native` backend with them. Each number is the median over `--repeats`
 * samples of enough calls to take about `--ms` milliseconds, after a warm-up. Threads: as the C
 * kernels get them (`SIDA_NUM_THREADS`, else `OMP_NUM_THREADS`, else every core).
 *
 *   deno run -A bench/copy.ts
 *   OMP_NUM_THREADS=1 deno run -A bench/copy.ts --repeats 9 --ms 50
 *
 * Prints a Markdown table (milliseconds per call).
 */
import { tf } from "../lib/deps.ts";
import { numberFlag, parseFlags, runMain, startBackend } from "../lib/runtime/cli.ts";
import { cKernels, setCKernelsEnabled } from "../lib/runtime/native/ckernels.ts";

const USAGE = "usage: bench/copy.ts [--repeats 7] [--ms 30]";

type Run = (xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[];

interface Case {
  kernel: string;
  what: string;
  inputs: number[][];
  run: Run;
}

const CASES: Case[] = [
  {
    kernel: "Sum",
    what: "[32,32,32,32] axes 0,1,2",
    inputs: [[32, 32, 32, 32]],
    run: ([x]) => tf.sum(x, [0, 1, 2]),
  },
  {
    kernel: "Sum",
    what: "[32,16,16,192] axes 0,1,2",
    inputs: [[32, 16, 16, 192]],
    run: ([x]) => tf.sum(x, [0, 1, 2]),
  },
  {
    kernel: "Sum",
    what: "[512,2,16,64] axis 1",
    inputs: [[512, 2, 16, 64]],
    run: ([x]) => tf.sum(x, 1),
  },
  {
    kernel: "Sum",
    what: "[512,16,2,32] axis 2",
    inputs: [[512, 16, 2, 32]],
    run: ([x]) => tf.sum(x, 2),
  },
  {
    kernel: "Sum",
    what: "[32,256,256] axis −1",
    inputs: [[32, 256, 256]],
    run: ([x]) => tf.sum(x, -1),
  },
  {
    kernel: "SplitV",
    what: "[32,32,32,64] in 2 on axis 3",
    inputs: [[32, 32, 32, 64]],
    run: ([x]) => tf.split(x, 2, 3),
  },
  {
    kernel: "Concat",
    what: "[32,32,32,32] + [32,32,32,32] axis 3",
    inputs: [[32, 32, 32, 32], [32, 32, 32, 32]],
    run: (xs) => tf.concat(xs, 3),
  },
  {
    kernel: "Pack",
    what: "3 × [524288] on a new axis 1",
    inputs: [[524288], [524288], [524288]],
    run: (xs) => tf.stack(xs, 1),
  },
  {
    kernel: "Unpack",
    what: "[524288,3] axis 1",
    inputs: [[524288, 3]],
    run: ([x]) => tf.unstack(x, 1),
  },
  {
    kernel: "Tile",
    what: "[512,1,32,64] reps 1,2,1,1",
    inputs: [[512, 1, 32, 64]],
    run: ([x]) => tf.tile(x, [1, 2, 1, 1]),
  },
  {
    kernel: "Tile",
    what: "[32,1,1,1] reps 1,32,32,32",
    inputs: [[32, 1, 1, 1]],
    run: ([x]) => tf.tile(x, [1, 32, 32, 32]),
  },
  {
    kernel: "Tile",
    what: "[512,16,1,64] reps 1,1,2,1",
    inputs: [[512, 16, 1, 64]],
    run: ([x]) => tf.tile(x, [1, 1, 2, 1]),
  },
  {
    kernel: "Slice",
    what: "[512,2,32,64] → [512,1,32,64] at 0,1,0,0",
    inputs: [[512, 2, 32, 64]],
    run: ([x]) => tf.slice(x, [0, 1, 0, 0], [512, 1, 32, 64]),
  },
  {
    kernel: "Slice",
    what: "[512,16,2,64] → [512,16,1,64] at 0,0,1,0",
    inputs: [[512, 16, 2, 64]],
    run: ([x]) => tf.slice(x, [0, 0, 1, 0], [512, 16, 1, 64]),
  },
  {
    kernel: "Transpose",
    what: "[32,1,256,64] perm 0,2,1,3",
    inputs: [[32, 1, 256, 64]],
    run: ([x]) => tf.transpose(x, [0, 2, 1, 3]),
  },
  {
    kernel: "Transpose",
    what: "[32,256,1,64] perm 0,2,1,3",
    inputs: [[32, 256, 1, 64]],
    run: ([x]) => tf.transpose(x, [0, 2, 1, 3]),
  },
  {
    kernel: "Transpose",
    what: "[32,256,64] perm 0,2,1",
    inputs: [[32, 256, 64]],
    run: ([x]) => tf.transpose(x, [0, 2, 1]),
  },
];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median milliseconds per call of `run` on fresh inputs of the current backend. */
function time(c: Case, repeats: number, targetMs: number): number {
  const xs = c.inputs.map((s) => tf.randomNormal(s));
  const once = () => {
    const t0 = performance.now();
    tf.dispose(c.run(xs));
    return performance.now() - t0;
  };
  once();
  const warm = Math.min(once(), once());
  const calls = Math.max(1, Math.ceil(targetMs / Math.max(warm, 1e-3)));
  const per: number[] = [];
  for (let r = 0; r < repeats; r++) {
    const t0 = performance.now();
    for (let i = 0; i < calls; i++) tf.dispose(c.run(xs));
    per.push((performance.now() - t0) / calls);
  }
  tf.dispose(xs);
  return median(per);
}

const fmt = (ms: number) => (ms >= 10 ? ms.toFixed(1) : ms >= 0.1 ? ms.toFixed(2) : ms.toFixed(3));

await runMain(async () => {
  const f = parseFlags(Deno.args, { string: ["repeats", "ms"] }, USAGE);
  const repeats = numberFlag("repeats", f.repeats, 7, { integer: true, min: 1 });
  const targetMs = numberFlag("ms", f.ms, 30, { min: 1 });
  await startBackend("native");
  const c = cKernels();
  if (!c) throw new Error("the C kernels are unavailable: nothing to compare");
  const cols: number[][] = [[], [], []];
  await tf.setBackend("cpu");
  for (const k of CASES) cols[0].push(time(k, repeats, targetMs));
  await tf.setBackend("native");
  const old = setCKernelsEnabled(false);
  for (const k of CASES) cols[1].push(time(k, repeats, targetMs));
  setCKernelsEnabled(true);
  for (const k of CASES) cols[2].push(time(k, repeats, targetMs));
  setCKernelsEnabled(old);
  console.log(`C kernels: ${c.threads} OpenMP thread(s); median ms per call\n`);
  console.log("| kernel | shape | tfjs-cpu | native, C off | native, C | cpu / C |");
  console.log("|---|---|---:|---:|---:|---:|");
  CASES.forEach((k, i) => {
    const [a, b, d] = [cols[0][i], cols[1][i], cols[2][i]];
    console.log(
      `| ${k.kernel} | ${k.what} | ${fmt(a)} | ${fmt(b)} | ${fmt(d)} | ${(a / d).toFixed(1)}× |`,
    );
  });
});
