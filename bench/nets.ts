/**
 * Network speed: forward and forward+backward time of a network at a batch size, on each backend.
 *
 *   deno task bench                                   # CIFAR-10 DDPM++ (56M) and mnist, batch 8, every backend
 *   deno run -A bench/nets.ts --nets cifar10-ddpmpp-cond --backends webgpu --batch 8 --repeats 2
 *
 * The first call of each measurement is a warm-up (WebGPU compiles its shaders then) and is not
 * counted. Prints a Markdown table (paste it into README's performance section) and, with
 * `--json F`, writes the numbers to F.
 */
import { tf } from "../lib/deps.ts";
import { BACKEND_NAMES } from "../lib/runtime/backend.ts";
import { numberFlag, parseFlags, runMain, startBackend, UsageError } from "../lib/runtime/cli.ts";
import { preset, PRESET_NAMES } from "../lib/nets/config.ts";
import { createNetwork } from "../lib/nets/network.ts";

const USAGE =
  "usage: bench/nets.ts [--nets a,b] [--backends webgpu,cpu] [--batch 8] [--repeats 1] [--warmup 1] [--json out.json] [--cpu-max-gflop 5]";

interface Row {
  backend: string;
  adapter: string;
  net: string;
  params: number;
  batch: number;
  forwardS: number;
  forwardBackwardS: number;
  note?: string;
}

/** Forward GFLOP per image of the conv and dense layers, for the skip heuristic. */
const GFLOP_PER_IMAGE: Record<string, number> = {
  "cifar10-ddpmpp-cond": 42,
  "cifar10-ddpmpp-uncond": 42,
  mnist: 0.85,
};

async function timeIt(fn: () => Promise<void>, repeats: number, warmup: number): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn(); // WebGPU compiles its shaders on the first call
  const t0 = performance.now();
  for (let i = 0; i < repeats; i++) await fn();
  return (performance.now() - t0) / 1000 / repeats;
}

async function benchOne(
  name: string,
  batch: number,
  repeats: number,
  warmup: number,
): Promise<Omit<Row, "backend" | "adapter">> {
  const cfg = preset(name);
  const net = createNetwork(cfg, { seed: 0 });
  const r = cfg.imgResolution;
  const x = tf.randomNormal([batch, r, r, cfg.imgChannels], 0, 1, "float32", 1) as tf.Tensor4D;
  const classes = tf.tensor1d(
    Array.from({ length: batch }, (_, i) => i % Math.max(cfg.labelDim, 1)),
    "int32",
  );
  const labels = cfg.labelDim
    ? tf.cast(tf.oneHot(classes, cfg.labelDim), "float32") as tf.Tensor2D
    : undefined;
  classes.dispose();
  const sigma = tf.exp(tf.randomNormal([batch], -1.2, 1.2, "float32", 2));
  const params = net.namedParameters().map(([, v]) => v);
  const start = tf.memory().numTensors;
  const forwardS = await timeIt(
    async () => {
      const y = net.denoise(x, sigma, { labels });
      await y.data();
      y.dispose();
    },
    repeats,
    warmup,
  );
  const forwardBackwardS = await timeIt(
    async () => {
      const { value, grads } = tf.variableGrads(
        () =>
          tf.tidy(() =>
            tf.mean(
              tf.square(tf.sub(net.denoise(x, sigma, { labels, training: true }), x)),
            ) as tf.Scalar
          ),
        params,
      );
      await value.data();
      for (const g of Object.values(grads)) await g.data();
      tf.dispose([value, ...Object.values(grads)]);
    },
    repeats,
    warmup,
  );
  if (tf.memory().numTensors !== start) {
    throw new Error(`bench leaked ${tf.memory().numTensors - start} tensors`);
  }
  const nParams = net.numParameters();
  tf.dispose([x, sigma, ...(labels ? [labels] : [])]);
  net.dispose();
  return { net: name, params: nParams, batch, forwardS, forwardBackwardS };
}

await runMain(async () => {
  const f = parseFlags(Deno.args, {
    string: ["nets", "backends", "batch", "repeats", "warmup", "json", "cpu-max-gflop"],
  }, USAGE);
  const nets = String(f.nets ?? "cifar10-ddpmpp-cond,mnist").split(",");
  for (const n of nets) {
    if (!(PRESET_NAMES as readonly string[]).includes(n)) {
      throw new UsageError(`unknown net '${n}' (${PRESET_NAMES.join(", ")})`);
    }
  }
  const backends = String(f.backends ?? BACKEND_NAMES.join(",")).split(",");
  const batch = numberFlag("batch", f.batch, 8, { integer: true, min: 1 });
  const repeats = numberFlag("repeats", f.repeats, 1, { integer: true, min: 1 });
  const warmup = numberFlag("warmup", f.warmup, 1, { integer: true, min: 0 });
  const cpuMax = numberFlag("cpu-max-gflop", f["cpu-max-gflop"], 5, { min: 0 });
  const rows: Row[] = [];
  for (const b of backends) {
    let info;
    try {
      info = await startBackend(b);
    } catch (e) {
      console.error(`skipping backend ${b}: ${(e as Error).message}`);
      continue;
    }
    const adapter = info.name === "webgpu"
      ? `${info.adapter}${info.isFallbackAdapter ? " (software)" : ""}`
      : info.name === "native"
      ? "OpenBLAS via FFI"
      : "tfjs-cpu (JS)";
    for (const n of nets) {
      const gflop = (GFLOP_PER_IMAGE[n] ?? 0) * batch * 4 * (repeats + warmup);
      if (info.name === "cpu" && gflop > cpuMax) {
        const note = `skipped: ~${
          gflop.toFixed(0)
        } GFLOP at tfjs-cpu's ~0.05 GFLOP/s (raise --cpu-max-gflop to run)`;
        console.error(`${b} ${n}: ${note}`);
        rows.push({
          backend: b,
          adapter,
          net: n,
          params: NaN,
          batch,
          forwardS: NaN,
          forwardBackwardS: NaN,
          note,
        });
        continue;
      }
      console.error(`${b} ${n}: batch ${batch}, ${repeats} timed repeat(s) after a warm-up…`);
      rows.push({ backend: b, adapter, ...(await benchOne(n, batch, repeats, warmup)) });
    }
  }
  const fmt = (s: number) => Number.isFinite(s) ? s.toFixed(2) : "–";
  console.log(
    "| backend | device | network | params | batch | forward (s) | forward+backward (s) |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- |");
  for (const r of rows) {
    console.log(
      `| ${r.backend} | ${r.adapter} | ${r.net} | ${
        Number.isFinite(r.params) ? (r.params / 1e6).toFixed(2) + "M" : "–"
      } | ${r.batch} | ${fmt(r.forwardS)} | ${fmt(r.forwardBackwardS)}${
        r.note ? ` (${r.note})` : ""
      } |`,
    );
  }
  if (f.json) await Deno.writeTextFile(String(f.json), JSON.stringify(rows, null, 2));
});
