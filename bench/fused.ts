/**
 * Per-call time of the `native` backend's fused kernels at the shapes a SiDA iteration of the
 * `mnist` network uses: SiLU and group norm (with their gradients) on [32,32,32,32] and
 * [32,16,16,64] with 32 groups, and the attention softmax (with its gradient) on [32,256,256],
 * with 1 and with 2 threads (each in a child process, since OpenMP reads its thread count at
 * start). Each number is the median over `--repeats` runs of `--calls` calls, after a warm-up.
 *
 * For comparison the softmax rows also time what `tf.softmax` costs: the `native` backend's
 * `Softmax` kernel and the gradient tfjs composes (Mul, Sum, Mul, Sub).
 *
 *   deno run -A bench/fused.ts                       # 1 and 2 threads
 *   deno run -A bench/fused.ts --threads 1,2,4 --repeats 9 --calls 5
 *
 * Prints a Markdown table (milliseconds per call).
 */
import { tf } from "../lib/deps.ts";
import { numberFlag, parseFlags, runMain, startBackend } from "../lib/runtime/cli.ts";

const USAGE = "usage: bench/fused.ts [--threads 1,2] [--repeats 7] [--calls 5]";

interface Row {
  what: string;
  shape: string;
  ms: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median milliseconds per call of `run` (its outputs are disposed after each call). */
function timeCalls(run: () => tf.Tensor | tf.Tensor[], repeats: number, calls: number): number {
  for (let i = 0; i < 3; i++) tf.dispose(run());
  const per: number[] = [];
  for (let r = 0; r < repeats; r++) {
    const t0 = performance.now();
    for (let i = 0; i < calls; i++) tf.dispose(run());
    per.push((performance.now() - t0) / calls);
  }
  return median(per);
}

function kernel(name: string): boolean {
  return tf.getKernel(name, tf.getBackend()) !== undefined;
}

function measureAll(repeats: number, calls: number): Row[] {
  const rows: Row[] = [];
  const add = (what: string, shape: number[], run: () => tf.Tensor | tf.Tensor[]) => {
    rows.push({ what, shape: `[${shape}]`, ms: timeCalls(run, repeats, calls) });
  };
  const eng = tf.engine();
  for (const shape of [[32, 32, 32, 32], [32, 16, 16, 64]]) {
    const c = shape[3];
    const x = tf.mul(tf.randomNormal(shape), 2);
    const dy = tf.randomNormal(shape);
    const gamma = tf.add(tf.randomNormal([c]), 1), beta = tf.randomNormal([c]);
    const attrs = { groups: 32, eps: 1e-5 } as unknown as tf.NamedAttrMap;
    add("SidaSilu", shape, () => eng.runKernel("SidaSilu", { x }) as tf.Tensor);
    add("SidaSiluGrad", shape, () => eng.runKernel("SidaSiluGrad", { dy, x }) as tf.Tensor);
    add(
      "SidaGroupNorm",
      shape,
      () => eng.runKernel("SidaGroupNorm", { x, gamma, beta }, attrs) as tf.Tensor,
    );
    add(
      "SidaGroupNormGrad",
      shape,
      () => eng.runKernel("SidaGroupNormGrad", { dy, x, gamma }, attrs) as tf.Tensor[],
    );
    tf.dispose([x, dy, gamma, beta]);
  }
  const shape = [32, 256, 256];
  const x = tf.mul(tf.randomNormal(shape), 3);
  const dy = tf.randomNormal(shape);
  const y = tf.softmax(x);
  add("Softmax (tf.softmax)", shape, () => tf.softmax(x));
  add("Softmax grad (tfjs: Mul, Sum, Mul, Sub)", shape, () =>
    tf.tidy(() => {
      const dyy = tf.mul(dy, y);
      return tf.sub(dyy, tf.mul(tf.sum(dyy, -1, true), y));
    }));
  if (kernel("SidaSoftmax")) {
    add("SidaSoftmax", shape, () => eng.runKernel("SidaSoftmax", { x }) as tf.Tensor);
    add("SidaSoftmaxGrad", shape, () => eng.runKernel("SidaSoftmaxGrad", { dy, y }) as tf.Tensor);
  }
  tf.dispose([x, dy, y]);
  return rows;
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    string: ["threads", "repeats", "calls"],
    boolean: ["child"],
  }, USAGE);
  const repeats = numberFlag("repeats", f.repeats, 7, { integer: true, min: 1 });
  const calls = numberFlag("calls", f.calls, 5, { integer: true, min: 1 });
  if (f.child) {
    await startBackend("native");
    console.log(JSON.stringify(measureAll(repeats, calls)));
    return;
  }
  const threads = String(f.threads ?? "1,2").split(",").map((t) =>
    numberFlag("threads", t, 1, { integer: true, min: 1 })
  );
  const results = new Map<number, Row[]>();
  for (const t of threads) {
    const n = String(t);
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL(import.meta.url).pathname,
        "--child",
        "--repeats",
        String(repeats),
        "--calls",
        String(calls),
      ],
      env: { OMP_NUM_THREADS: n, SIDA_NUM_THREADS: n, OPENBLAS_NUM_THREADS: n },
      stdout: "piped",
      stderr: "inherit",
    }).output();
    if (!out.success) throw new Error(`child with ${t} thread(s) failed`);
    const text = new TextDecoder().decode(out.stdout).trim().split("\n").pop()!;
    results.set(t, JSON.parse(text));
  }
  const first = results.get(threads[0])!;
  console.log(
    `| kernel | shape | ${threads.map((t) => `${t} thread${t > 1 ? "s" : ""}, ms`).join(" | ")} |`,
  );
  console.log(`|---|---|${threads.map(() => "---:").join("|")}|`);
  for (let i = 0; i < first.length; i++) {
    const cells = threads.map((t) => results.get(t)![i].ms.toFixed(2));
    console.log(`| ${first[i].what} | ${first[i].shape} | ${cells.join(" | ")} |`);
  }
});
