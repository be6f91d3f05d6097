/**
 * `deno task bench:eval`: times one 2048-d FID (LAPACK/FFI path and, with `--js`, the pure
 * TypeScript path), the 2048-d covariance accumulation of 10,000 features, the MNIST feature
 * network's throughput (images/s at batch 64), precision/recall (k = 3) of `--pr-num` (default
 * 10,000) 128-d features against as many, with the host loop and with tfjs ops throughout (both
 * give the same answer; the chain's final comparison runs it per space and generator), and the
 * Inception-v3 detector's throughput
 * (32×32 images resized to 299×299, images/s at `--inception-batch`, default 64; the weights of
 * `--detector` / `SIDA_INCEPTION` when given, random ones otherwise; `--skip-inception` skips
 * it). Prints JSON lines.
 *
 * @module
 */
import { tf } from "../lib/deps.ts";
import { lapackLibrary } from "../lib/metrics/linalg.ts";
import { InceptionV3 } from "../lib/metrics/inception.ts";
import { MnistFeatureNet } from "../lib/metrics/mnist_features.ts";
import { FeatureStats, fid, precisionRecall } from "../lib/metrics/stats.ts";
import { numberFlag, parseFlags, runMain, startBackend } from "../lib/runtime/cli.ts";

await runMain(async () => {
  const flags = parseFlags(
    Deno.args,
    { boolean: ["js", "skip-inception"], string: ["detector", "inception-batch", "pr-num"] },
    "usage: deno task bench:eval [--js] [--backend B] [--detector inception.pt] " +
      "[--inception-batch 64] [--skip-inception] [--pr-num 10000]",
  );
  const backend = await startBackend(flags.backend as string | undefined);
  const d = 2048;
  // Random "features" (seeded), 10,000 × 2048, in chunks.
  let s = 1;
  const rnd = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
  const make = () => {
    const st = new FeatureStats(d);
    const chunk = new Float32Array(500 * d);
    const t0 = performance.now();
    for (let c = 0; c < 20; c++) {
      for (let i = 0; i < chunk.length; i++) chunk[i] = Math.max(0, rnd() - 0.3 + (i % d) / d);
      st.add(chunk);
    }
    return { st, ms: performance.now() - t0 };
  };
  const a = make();
  const b = make();
  console.log(
    JSON.stringify({
      bench: "covariance 10k x 2048 (incl. random fill)",
      seconds: a.ms / 1000,
      blas: lapackLibrary()?.name ?? null,
    }),
  );
  const s1 = a.st.cov(), s2 = b.st.cov(), m1 = a.st.mean(), m2 = b.st.mean();
  for (const impl of flags.js ? ["auto", "js"] as const : ["auto"] as const) {
    const t0 = performance.now();
    const v = fid(m1, s1, m2, s2, { impl });
    const impl_ = impl === "auto" ? (lapackLibrary() ? "lapack" : "js") : impl;
    console.log(
      JSON.stringify({
        bench: "fid 2048-d",
        impl: impl_,
        seconds: (performance.now() - t0) / 1000,
        fid: v,
      }),
    );
  }
  // Precision/recall of 128-d features (the `mnist` space's size): two shifted random clouds.
  const prNum = numberFlag("pr-num", flags["pr-num"], 10_000, { integer: true, min: 4 });
  const cloud = (shift: number) => Float32Array.from({ length: prNum * 128 }, () => rnd() + shift);
  const real = cloud(0), fake = cloud(0.01);
  for (const host of [true, false]) {
    const t0 = performance.now();
    const pr = await precisionRecall(real, fake, 128, { host });
    console.log(
      JSON.stringify({
        bench: `precision/recall k=3, ${prNum} x ${prNum} x 128`,
        path: host ? "host loop" : "tfjs ops",
        backend: backend.name,
        seconds: (performance.now() - t0) / 1000,
        ...pr,
      }),
    );
  }
  const net = new MnistFeatureNet(undefined, 1);
  const x = tf.randomUniform([64, 32, 32, 1], 0, 255) as tf.Tensor4D;
  const run = async () => {
    const { features, probs } = net.run(x);
    await probs.data();
    tf.dispose([features, probs]);
  };
  await run();
  const t0 = performance.now();
  for (let i = 0; i < 5; i++) await run();
  const sec = (performance.now() - t0) / 1000;
  console.log(
    JSON.stringify({
      bench: "mnist features, batch 64",
      backend: backend.name,
      imagesPerSecond: 320 / sec,
    }),
  );
  x.dispose();
  net.dispose();

  if (flags["skip-inception"]) return;
  const batch = numberFlag("inception-batch", flags["inception-batch"], 64, {
    integer: true,
    min: 1,
  });
  const detPath = (flags.detector as string | undefined) ?? Deno.env.get("SIDA_INCEPTION");
  const inc = detPath ? await InceptionV3.load(detPath) : new InceptionV3({ seed: 1 });
  const warm = tf.randomUniform([2, 32, 32, 3], 0, 255, "float32", 2) as tf.Tensor4D;
  const imgs = tf.randomUniform([batch, 32, 32, 3], 0, 255, "float32", 3) as tf.Tensor4D;
  const runInc = async (t: tf.Tensor4D) => {
    const { features, probs } = inc.run(t);
    await features.data();
    tf.dispose([features, probs]);
  };
  await runInc(warm);
  const t1 = performance.now();
  await runInc(imgs);
  const incSec = (performance.now() - t1) / 1000;
  console.log(
    JSON.stringify({
      bench: `inception features (32x32 -> 299x299), batch ${batch}`,
      backend: backend.name,
      weights: detPath ?? "random",
      seconds: incSec,
      imagesPerSecond: batch / incSec,
    }),
  );
  tf.dispose([warm, imgs]);
  inc.dispose();
});
