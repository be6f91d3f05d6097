/**
 * The convolutions of our WebGPU kernels in each GEMM style (`lib/runtime/webgpu/gemm.ts`), at
 * batch-64 U-Net shapes: the first call of each (shader compile included) and the best of
 * `--repeats` timed calls after it (each with its read-back), with GFLOP/s, for the forward, the
 * input gradient (dx) and the filter gradient (dw). Every style's results are checked against the
 * first style's (relative error ≤ 1e-4). A register block ending in `s` reads its operands with
 * scalar loads instead of vec4 ones.
 *
 *   deno run -A bench/conv_styles.ts                                  # tiled, register 16×16
 *   deno run -A bench/conv_styles.ts --styles register:16x16,register:16x16s --repeats 4
 *   deno run -A bench/conv_styles.ts --styles tiled,register:16x32,register:8x16
 *   MESA_SHADER_CACHE_DISABLE=true deno run -A bench/conv_styles.ts   # true compile times
 */
import { tf } from "../lib/deps.ts";
import { initBackend } from "../lib/runtime/backend.ts";
import { type GemmTuning, gemmTuning } from "../lib/runtime/webgpu/gemm.ts";
import { parseFlags, runMain, UsageError } from "../lib/runtime/cli.ts";

const USAGE = "usage: bench/conv_styles.ts [--styles tiled,register:16x16] [--repeats 3]";
const SHAPES = [[64, 32, 32, 32, 32], [64, 16, 16, 64, 64], [64, 8, 8, 128, 128]];

function parseStyle(s: string): Partial<GemmTuning> {
  const m = s.match(/^(tiled|register)(?::(\d+)x(\d+)(s?))?$/);
  if (!m) throw new UsageError(`bad style '${s}' (${USAGE})`);
  return m[1] === "tiled"
    ? { style: "tiled" }
    : { style: "register", rm: +(m[2] ?? 16), rn: +(m[3] ?? 16), vec4: m[4] !== "s" };
}

await runMain(async () => {
  const flags = parseFlags(Deno.args, { string: ["styles", "repeats"], boolean: ["help"] }, USAGE);
  if (flags.help) return console.log(USAGE);
  const repeats = Number(flags.repeats ?? 3);
  if (!Number.isInteger(repeats) || repeats < 1) {
    throw new UsageError(`--repeats must be a positive integer (${USAGE})`);
  }
  const styles = String(flags.styles ?? "tiled,register:16x16").split(",").map(parseStyle);
  const info = await initBackend("webgpu");
  console.log(`webgpu on ${info.adapter}`);
  console.log(
    "| shape | style | kernel | first call s | s | GFLOP/s |\n|---|---|---|---:|---:|---:|",
  );
  const saved = { ...gemmTuning };
  for (const [b, h, w, ci, co] of SHAPES) {
    const x = tf.randomNormal([b, h, w, ci]) as tf.Tensor4D;
    const f = tf.randomNormal([3, 3, ci, co]) as tf.Tensor4D;
    const dy = tf.randomNormal([b, h, w, co]) as tf.Tensor4D;
    const flop = 2 * b * h * w * ci * co * 9;
    const ops: Record<string, () => tf.Tensor> = {
      fwd: () => tf.conv2d(x, f, 1, "same"),
      dx: () => tf.conv2dTranspose(dy, f, [b, h, w, ci], 1, "same"),
      dw: () =>
        tf.engine().runKernel("Conv2DBackpropFilter", { x, dy }, {
          strides: 1,
          pad: "same",
          dataFormat: "NHWC",
          filterShape: [3, 3, ci, co],
        }) as tf.Tensor,
    };
    const ref: Record<string, Float32Array> = {};
    for (const st of styles) {
      Object.assign(gemmTuning, saved, st);
      const tag = st.style === "tiled"
        ? "tiled"
        : `register ${st.rm}x${st.rn}${st.vec4 ? "" : " scalar"}`;
      for (const [k, op] of Object.entries(ops)) {
        let t0 = performance.now();
        let t = op();
        const v = await t.data() as Float32Array;
        t.dispose();
        const first = (performance.now() - t0) / 1e3;
        if (!ref[k]) ref[k] = v;
        else {
          let e = 0, m = 1e-12;
          for (let i = 0; i < v.length; i++) {
            e = Math.max(e, Math.abs(v[i] - ref[k][i]));
            m = Math.max(m, Math.abs(ref[k][i]));
          }
          if (e / m > 1e-4) {
            throw new Error(`${tag} ${k}: relative error ${e / m} against the first style`);
          }
        }
        let s = Infinity;
        for (let r = 0; r < repeats; r++) {
          t0 = performance.now();
          t = op();
          await t.data();
          t.dispose();
          s = Math.min(s, (performance.now() - t0) / 1e3);
        }
        console.log(
          `| ${b}x${h}x${w}x${ci}->${co} | ${tag} | ${k} | ${first.toFixed(2)} | ${
            s.toFixed(3)
          } | ${(flop / s / 1e9).toFixed(1)} |`,
        );
      }
    }
    Object.assign(gemmTuning, saved);
    tf.dispose([x, f, dy]);
  }
});
