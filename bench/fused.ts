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
 * `--backend webgpu` times our WebGPU kernels instead (in this process; each repeat ends with a
 * read-back, so that the queue has finished its work), at the U-Nets' own group counts
 * (min(32, C/4): whole channel quads, the vec4 passes) as well, and the fused group norm + SiLU
 * (`SidaGroupNormSilu` and its gradient) against the two kernels it replaces.
 *
 *   deno run -A bench/fused.ts                       # 1 and 2 threads
 *   deno run -A bench/fused.ts --threads 1,2,4 --repeats 9 --calls 5
 *   deno run -A bench/fused.ts --backend webgpu --repeats 5 --calls 3
 *
 * Prints a Markdown table (milliseconds per call).
 */
import { tf } from "../lib/deps.ts";
import { numberFlag, parseFlags, runMain, startBackend, UsageError } from "../lib/runtime/cli.ts";

const USAGE =
  "usage: bench/fused.ts [--backend native|webgpu] [--threads 1,2] [--repeats 7] [--calls 5]";

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

/**
 * Median milliseconds per call of `run` (its outputs are disposed after each call; the last call
 * of each repeat is read back first, which waits for a GPU queue).
 */
async function timeCalls(
  run: () => tf.Tensor | tf.Tensor[],
  repeats: number,
  calls: number,
): Promise<number> {
  const call = async (wait: boolean) => {
    const out = run();
    const first = Array.isArray(out) ? out[0] : out;
    if (wait) await first.data();
    tf.dispose(out);
  };
  for (let i = 0; i < 3; i++) await call(i === 2);
  const per: number[] = [];
  for (let r = 0; r < repeats; r++) {
    const t0 = performance.now();
    for (let i = 0; i < calls; i++) await call(i === calls - 1);
    per.push((performance.now() - t0) / calls);
  }
  return median(per);
}

function kernel(name: string): boolean {
  return tf.getKernel(name, tf.getBackend()) !== undefined;
}

async function measureAll(repeats: number, calls: number, gpu: boolean): Promise<Row[]> {
  const rows: Row[] = [];
  const add = async (what: string, shape: number[], run: () => tf.Tensor | tf.Tensor[]) => {
    rows.push({ what, shape: `[${shape}]`, ms: await timeCalls(run, repeats, calls) });
  };
  const eng = tf.engine();
  const cases: [number[], number][] = [[[32, 32, 32, 32], 32], [[32, 16, 16, 64], 32]];
  if (gpu) cases.push([[32, 32, 32, 32], 8], [[32, 16, 16, 64], 16]);
  for (const [shape, groups] of cases) {
    const c = shape[3];
    const x = tf.mul(tf.randomNormal(shape), 2);
    const dy = tf.randomNormal(shape);
    const gamma = tf.add(tf.randomNormal([c]), 1), beta = tf.randomNormal([c]);
    const attrs = { groups, eps: 1e-5 } as unknown as tf.NamedAttrMap;
    const at = [...shape, `G=${groups}`] as unknown as number[];
    if (groups === 32) {
      await add("SidaSilu", shape, () => eng.runKernel("SidaSilu", { x }) as tf.Tensor);
      await add("SidaSiluGrad", shape, () => eng.runKernel("SidaSiluGrad", { dy, x }) as tf.Tensor);
    }
    await add(
      "SidaGroupNorm",
      at,
      () => eng.runKernel("SidaGroupNorm", { x, gamma, beta }, attrs) as tf.Tensor,
    );
    await add(
      "SidaGroupNormGrad",
      at,
      () => eng.runKernel("SidaGroupNormGrad", { dy, x, gamma }, attrs) as tf.Tensor[],
    );
    if (kernel("SidaGroupNormSilu")) {
      const z = eng.runKernel("SidaGroupNorm", { x, gamma, beta }, attrs) as tf.Tensor;
      await add("SidaGroupNorm, then SidaSilu", at, () =>
        tf.tidy(() => {
          const zz = eng.runKernel("SidaGroupNorm", { x, gamma, beta }, attrs) as tf.Tensor;
          return eng.runKernel("SidaSilu", { x: zz }) as tf.Tensor;
        }));
      await add(
        "SidaGroupNormSilu",
        at,
        () => eng.runKernel("SidaGroupNormSilu", { x, gamma, beta }, attrs) as tf.Tensor[],
      );
      const [y, stats] = eng.runKernel(
        "SidaGroupNormSilu",
        { x, gamma, beta },
        attrs,
      ) as tf.Tensor[];
      await add("SidaSiluGrad, then SidaGroupNormGrad", at, () =>
        tf.tidy(() => {
          const dz = eng.runKernel("SidaSiluGrad", { dy, x: z }) as tf.Tensor;
          return eng.runKernel("SidaGroupNormGrad", { dy: dz, x, gamma }, attrs) as tf.Tensor[];
        }));
      await add(
        "SidaGroupNormSiluGrad",
        at,
        () =>
          eng.runKernel(
            "SidaGroupNormSiluGrad",
            { dy, x, gamma, beta, stats },
            attrs,
          ) as tf.Tensor[],
      );
      tf.dispose([z, y, stats]);
    }
    tf.dispose([x, dy, gamma, beta]);
  }
  const shape = [32, 256, 256];
  const x = tf.mul(tf.randomNormal(shape), 3);
  const dy = tf.randomNormal(shape);
  const y = tf.softmax(x);
  await add("Softmax (tf.softmax)", shape, () => tf.softmax(x));
  await add("Softmax grad (tfjs: Mul, Sum, Mul, Sub)", shape, () =>
    tf.tidy(() => {
      const dyy = tf.mul(dy, y);
      return tf.sub(dyy, tf.mul(tf.sum(dyy, -1, true), y));
    }));
  if (kernel("SidaSoftmax")) {
    await add("SidaSoftmax", shape, () => eng.runKernel("SidaSoftmax", { x }) as tf.Tensor);
    await add(
      "SidaSoftmaxGrad",
      shape,
      () => eng.runKernel("SidaSoftmaxGrad", { dy, y }) as tf.Tensor,
    );
  }
  tf.dispose([x, dy, y]);
  return rows;
}

function table(columns: string[], results: Row[][]): void {
  const first = results[0];
  console.log(`| kernel | shape | ${columns.join(" | ")} |`);
  console.log(`|---|---|${columns.map(() => "---:").join("|")}|`);
  for (let i = 0; i < first.length; i++) {
    const cells = results.map((r) => r[i].ms.toFixed(2));
    console.log(`| ${first[i].what} | ${first[i].shape} | ${cells.join(" | ")} |`);
  }
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    string: ["threads", "repeats", "calls", "backend"],
    boolean: ["child"],
  }, USAGE);
  const repeats = numberFlag("repeats", f.repeats, 7, { integer: true, min: 1 });
  const calls = numberFlag("calls", f.calls, 5, { integer: true, min: 1 });
  const backend = String(f.backend ?? "native");
  if (backend !== "native" && backend !== "webgpu") {
    throw new UsageError(`--backend must be native or webgpu (${USAGE})`);
  }
  if (backend === "webgpu") {
    await startBackend("webgpu");
    return table(["webgpu, ms"], [await measureAll(repeats, calls, true)]);
  }
  if (f.child) {
    await startBackend("native");
    console.log(JSON.stringify(await measureAll(repeats, calls, false)));
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
  table(
    threads.map((t) => `${t} thread${t > 1 ? "s" : ""}, ms`),
    threads.map((t) => results.get(t)!),
  );
});
