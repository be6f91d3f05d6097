/**
 * Our WGSL kernels on the webgpu backend (`lib/runtime/webgpu/`) against tfjs' `cpu` backend:
 * values and gradients at odd shapes (batch 1, channel counts that are not multiples of the
 * tiles, 1×1 and 3×3, strides 1 and 2, `same`/`valid`/numeric padding), no leaked tensors, and
 * the automatic choice still taking `native` over a software adapter. Skipped where Deno finds
 * no WebGPU adapter at all.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import { ensureXdgRuntimeDir, gemmStyleFor, initBackend } from "../lib/runtime/backend.ts";
import {
  registerWebGpuKernels,
  unregisterWebGpuKernels,
  webGpuKernelsActive,
} from "../lib/runtime/webgpu/backend.ts";
import { chooseKChunk, type GemmTuning, gemmTuning } from "../lib/runtime/webgpu/gemm.ts";
import { adamApply, adamSecondMoment, lerp } from "../lib/runtime/webgpu/optim.ts";
import { groupNorm, groupNormSilu, nanToNum, silu, softmax } from "../lib/runtime/native/fused.ts";
import { startGpuProfile } from "../lib/runtime/webgpu/profile.ts";
import { hostCacheStats, installHostCaches } from "../lib/runtime/webgpu/host_cache.ts";

ensureXdgRuntimeDir();
const adapter = await (navigator as { gpu?: GPU }).gpu?.requestAdapter().catch(() => null);
const ignore = !adapter;

/** Seeded host values (the same on both backends). */
function values(n: number, seed: number): Float32Array {
  const v = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    v[i] = s / 2 ** 31 - 1;
  }
  return v;
}

type Host = { shape: number[]; data: Float32Array };
const host = (shape: number[], seed: number): Host => ({
  shape,
  data: values(shape.reduce((a, b) => a * b, 1), seed),
});

/** Runs `f` on `backend` with the host inputs; returns every output's values. */
async function runOn(
  backend: string,
  inputs: Host[],
  f: (...t: tf.Tensor[]) => tf.Tensor[],
): Promise<Float32Array[]> {
  await tf.setBackend(backend);
  // A shader that fails validation leaves its output unwritten without throwing: catch it.
  const device = backend === "webgpu"
    ? (tf.backend() as unknown as { device: GPUDevice }).device
    : null;
  device?.pushErrorScope("validation");
  const ts = inputs.map((h) => tf.tensor(h.data, h.shape, "float32"));
  const outs = f(...ts);
  const vals: Float32Array[] = [];
  for (const o of outs) vals.push(await o.data() as Float32Array);
  tf.dispose([...ts, ...outs]);
  const error = await device?.popErrorScope();
  assert.equal(error ?? null, null, `${backend}: ${error?.message}`);
  return vals;
}

/** Largest |a − b| relative to the largest |b|. */
function relErr(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let d = 0, m = 1e-12;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}

async function expectSame(
  what: string,
  inputs: Host[],
  f: (...t: tf.Tensor[]) => tf.Tensor[],
  tol = 1e-4,
) {
  const want = await runOn("cpu", inputs, f);
  const got = await runOn("webgpu", inputs, f);
  assert.equal(got.length, want.length);
  for (let i = 0; i < got.length; i++) {
    const e = relErr(got[i], want[i]);
    assert.ok(e <= tol, `${what}: output ${i} relative error ${e} > ${tol}`);
  }
}

/**
 * The GEMM styles every product test runs under: the GPU one (workgroup tiles), the software
 * adapters' one at its default block, and a small odd block (tails on every side).
 */
const STYLES: Partial<GemmTuning>[] = [
  { style: "tiled" },
  { style: "register", rm: 16, rn: 16 },
  { style: "register", rm: 16, rn: 16, vec4: false },
  { style: "register", rm: 3, rn: 8 },
];

/** Runs `f` under each of {@linkcode STYLES}, restoring the tuning afterwards. */
async function eachStyle(f: (tag: string) => Promise<void>): Promise<void> {
  const saved = { ...gemmTuning };
  try {
    for (const t of STYLES) {
      Object.assign(gemmTuning, saved, t);
      await f(`${t.style}${t.rm ? ` ${t.rm}x${t.rn}` : ""}${t.vec4 === false ? " scalar" : ""}`);
    }
  } finally {
    Object.assign(gemmTuning, saved);
  }
}

// [batch, size, ci, co, kernel, stride, pad]
const CONV_CASES: [number, number, number, number, number, number, number | "same" | "valid"][] = [
  [1, 5, 3, 7, 3, 1, 1], // batch 1, odd channels, 3x3 same
  [2, 6, 5, 6, 1, 1, 0], // 1x1
  [2, 7, 3, 5, 3, 2, 1], // stride 2 (down-sampling)
  [1, 6, 1, 33, 3, 1, "same"], // one input channel, 33 outputs (tile tail)
  [3, 9, 66, 17, 3, 1, "valid"], // channels past a 64-wide tile
  [1, 4, 70, 65, 3, 1, 1], // 8x8 micro-tiles with tails on both sides
  // Channels divisible by 4: the register style's vec4 loads (gemm.ts).
  [2, 6, 8, 12, 3, 1, "same"], // both operands as vec4
  [1, 7, 4, 8, 3, 2, 1], // stride 2 (the input gradient skips odd taps)
  [2, 5, 12, 4, 1, 1, 0], // 1x1
  [1, 5, 8, 6, 3, 1, 1], // vec4 input channels only
  [1, 5, 6, 8, 3, 1, 1], // vec4 output channels only
  [3, 9, 68, 20, 3, 1, "valid"], // tails of M and N past the 16x16 blocks
];

Deno.test({
  name: "webgpu kernels: convolution forward (with and without bias) and gradients equal cpu",
  ignore,
  fn: async () => {
    await initBackend("webgpu");
    assert.ok(webGpuKernelsActive(), "initBackend('webgpu') registers our kernels");
    await eachStyle(async (style) => {
      for (const [n, h, ci, co, k, s, pad] of CONV_CASES) {
        const tag = `${n}x${h}x${h}x${ci}->${co} ${k}x${k} s${s} pad ${pad} (${style})`;
        const inputs = [host([n, h, h, ci], 1), host([k, k, ci, co], 2), host([co], 3)];
        await expectSame(`conv ${tag}`, inputs, (x, w, b) => {
          const plain = (x4: tf.Tensor4D, w4: tf.Tensor4D) => tf.conv2d(x4, w4, s, pad);
          const fused = (x4: tf.Tensor4D, w4: tf.Tensor4D, b1: tf.Tensor) =>
            tf.fused.conv2d({ x: x4, filter: w4, strides: s, pad, bias: b1 });
          // Gradients of a weighted sum, so that every output element matters differently.
          const loss = (...t: tf.Tensor[]) => {
            const [x4, w4, b1] = t as [tf.Tensor4D, tf.Tensor4D, tf.Tensor];
            const y = tf.add(plain(x4, w4), fused(x4, w4, b1));
            return tf.sum(tf.mul(y, tf.sin(tf.reshape(tf.range(0, y.size), y.shape))));
          };
          const grads = tf.grads(loss)([x, w, b]);
          return [
            plain(x as tf.Tensor4D, w as tf.Tensor4D),
            fused(x as tf.Tensor4D, w as tf.Tensor4D, b),
            ...grads,
          ];
        });
      }
    });
  },
});

Deno.test({
  name: "webgpu kernels: matrix products (transposes, batches, broadcast, bias) equal cpu",
  ignore,
  fn: async () => {
    await initBackend("webgpu");
    for (const k of ["BatchMatMul", "_FusedMatMul"]) {
      assert.ok(tf.getKernel(k, "webgpu"), `${k} is registered for webgpu`);
    }
    // [a shape, b shape, transposeA, transposeB]
    const cases: [number[], number[], boolean, boolean][] = [
      [[5, 70], [70, 3], false, false], // thin output
      [[1, 9], [9, 33], false, false], // one row
      [[2, 7, 6], [2, 6, 5], false, false], // batched
      [[3, 6, 7], [3, 5, 6], true, true], // both transposed
      [[4, 17, 8], [1, 17, 9], true, false], // b broadcast
      [[1, 6, 40], [3, 40, 6], false, false], // a broadcast
      [[2, 3, 12, 5], [2, 3, 12, 7], true, false], // two batch axes
      // Sizes divisible by 4: the register style's vec4 loads (gemm.ts).
      [[2, 8, 12], [2, 12, 16], false, false], // A along k, B along n
      [[3, 12, 8], [3, 12, 20], true, false], // A along m (transposed)
      [[2, 5, 16], [2, 8, 16], false, true], // B transposed: scalar B
      [[20, 36], [36, 4], false, false], // tails of M past the 16-row block
    ];
    await eachStyle(async (style) => {
      for (const [as, bs, tA, tB] of cases) {
        const tag = `${as} x ${bs} tA ${tA} tB ${tB} (${style})`;
        await expectSame(`matmul ${tag}`, [host(as, 7), host(bs, 8)], (a, b) => {
          const loss = (x: tf.Tensor, y: tf.Tensor) => {
            const c = tf.matMul(x, y, tA, tB);
            return tf.sum(tf.mul(c, tf.cos(tf.reshape(tf.range(0, c.size), c.shape))));
          };
          // (tfjs' own BatchMatMul gradient does not sum over a broadcast batch.)
          const broadcast = as.length === 3 && as[0] !== bs[0];
          return [tf.matMul(a, b, tA, tB), ...(broadcast ? [] : tf.grads(loss)([a, b]))];
        });
      }
      // One-hot labels (an int32 buffer that tfjs' cast only relabels float32) into a dense layer.
      await expectSame(`int32-backed input (${style})`, [host([3, 7], 12)], (w) => [
        tf.matMul(tf.oneHot(tf.tensor1d([0, 2, 1, 2], "int32"), 3).toFloat(), w),
      ]);
      // A dense layer: bias of N, and its gradients.
      await expectSame(`fused matmul + bias (${style})`, [
        host([6, 10], 9),
        host([10, 7], 10),
        host([7], 11),
      ], (a, b, bias) => {
        const f = (x: tf.Tensor, y: tf.Tensor, z: tf.Tensor) => {
          const c = tf.fused.matMul({ a: x as tf.Tensor2D, b: y as tf.Tensor2D, bias: z });
          return tf.sum(tf.mul(c, tf.sin(tf.reshape(tf.range(0, c.size), c.shape))));
        };
        return [
          tf.fused.matMul({ a: a as tf.Tensor2D, b: b as tf.Tensor2D, bias }),
          ...tf.grads(f)([a, b, bias]),
        ];
      });
    });
  },
});

Deno.test({
  name: "webgpu kernels: Sum over leading axes (bias gradients, whole tensors) equals cpu",
  ignore,
  fn: async () => {
    await initBackend("webgpu");
    assert.ok(tf.getKernel("Sum", "webgpu"), "Sum is registered for webgpu");
    // [shape, axis, keepDims]: one chunk, many chunks (R ≫ 64), everything, a scalar sum of a
    // vector, negative axes, and an innermost axis (tfjs' kernel).
    const cases: [number[], number | number[], boolean][] = [
      [[3, 5], 0, false],
      [[4, 33, 17, 7], [0, 1, 2], false],
      [[4, 33, 17, 7], [0, 1, 2], true],
      [[2, 3, 4], [0, 1, 2], false],
      [[1000], 0, false],
      [[6, 5, 4], [-3, -2], true],
      [[6, 5, 4], 2, false],
      // Columns in whole quads: the vec4 partial sums, many chunks.
      [[4, 33, 17, 12], [0, 1, 2], false],
      [[4, 33, 17, 8], [0, 1, 2], true],
      // Middle and innermost runs of axes (one invocation per output; vec4 when B % 4 == 0).
      [[48, 2, 5, 8], 1, false],
      [[48, 2, 5, 3], 1, true],
      [[70, 5, 2], 2, false],
      [[20, 3, 2, 5], [1, 2], false],
      [[20, 3, 2, 4], [-3, -2], true],
    ];
    for (const [shape, axis, keepDims] of cases) {
      await expectSame(`sum ${shape} over ${axis} keepDims ${keepDims}`, [host(shape, 16)], (x) => {
        const y = tf.sum(x, axis, keepDims);
        const want = keepDims
          ? shape.map((d, i) =>
            [axis].flat().map((a) => a < 0 ? a + shape.length : a).includes(i) ? 1 : d
          )
          : null;
        if (want) assert.deepEqual(y.shape, want);
        return [y];
      });
    }
  },
});

Deno.test({
  name: "webgpu kernels: filter gradient split over N·H·W sums every chunk",
  ignore,
  fn: async () => {
    await initBackend("webgpu");
    // A K (N·H·W) many times the chunk: 2·16·16 = 512 pixels, chunks of 128.
    assert.ok(chooseKChunk(9 * 3, 5, 512, 256, 8) < 512);
    const dy = host([2, 16, 16, 5], 5), x = host([2, 16, 16, 3], 6);
    await eachStyle((style) =>
      expectSame(`split-K filter gradient (${style})`, [x, dy], (xt, dyt) => [
        tf.engine().runKernel("Conv2DBackpropFilter", { x: xt, dy: dyt }, {
          strides: 1,
          pad: "same",
          dataFormat: "NHWC",
          filterShape: [3, 3, 3, 5],
        }) as tf.Tensor,
      ])
    );
  },
});

Deno.test({
  name: "webgpu kernels: repeated calls keep tf.memory().numTensors flat; stock kernels restore",
  ignore,
  fn: async () => {
    await initBackend("webgpu");
    // Channels in quads, so that the step runs the kernels with internal buffers: the input
    // gradient's transposed filter, the group-norm statistics and partial sums (and the fused
    // group norm + SiLU's kept statistics), the split filter gradient, the middle-axis Sum of
    // down-sampling.
    const x = tf.variable(tf.randomNormal([2, 6, 6, 8]));
    const w = tf.variable(tf.randomNormal([3, 3, 8, 8]));
    const g = tf.variable(tf.ones([8]));
    const b = tf.variable(tf.zeros([8]));
    const step = async () => {
      const { value, grads } = tf.variableGrads(() => {
        const c = tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 1, "same");
        // Both group-norm paths: the fused one keeps its statistics for the gradient.
        const y = tf.add(silu(groupNorm(c, g, b, 2, 1e-5)), groupNormSilu(c, g, b, 4, 1e-5));
        const half = tf.sum(tf.reshape(y, [2 * 3, 2, 3, 2 * 8]), 1);
        return tf.sum(tf.square(half)) as tf.Scalar;
      }, [x, w, g, b]);
      const v = (await value.data())[0];
      tf.dispose([value, ...Object.values(grads)]);
      return v;
    };
    const backend = tf.backend() as unknown as { numDataIds(): number };
    const first = await step();
    const start = tf.memory().numTensors, ids = backend.numDataIds();
    for (let i = 0; i < 3; i++) assert.equal(await step(), first);
    assert.equal(tf.memory().numTensors, start);
    // Buffers a kernel makes for itself are not tensors: the backend's own count catches them.
    assert.equal(backend.numDataIds(), ids);
    // Outside a tidy too: the fused group norm's second output (its statistics) is freed.
    for (let i = 0; i < 3; i++) groupNormSilu(x as tf.Tensor4D, g, b, 4, 1e-5).dispose();
    assert.equal(tf.memory().numTensors, start, "group norm + SiLU outside a tidy");
    unregisterWebGpuKernels();
    try {
      assert.ok(!webGpuKernelsActive());
      const stock = await step();
      assert.ok(Math.abs(stock - first) <= 1e-4 * Math.abs(first), `${stock} vs ${first}`);
    } finally {
      registerWebGpuKernels();
    }
    tf.dispose([x, w, g, b]);
  },
});

Deno.test({
  name: "automatic backend choice still prefers native over a software WebGPU adapter",
  ignore: ignore || !(adapter!.info as { isFallbackAdapter?: boolean }).isFallbackAdapter,
  fn: async () => {
    const prev = Deno.env.get("SIDA_BACKEND");
    Deno.env.delete("SIDA_BACKEND");
    try {
      const info = await initBackend();
      assert.notEqual(info.name, "webgpu");
    } finally {
      if (prev !== undefined) Deno.env.set("SIDA_BACKEND", prev);
    }
  },
});

Deno.test({
  name:
    "webgpu kernels: fused SiLU, group norm (+SiLU), softmax and nan_to_num, values and gradients",
  ignore,
  fn: async () => {
    await initBackend("webgpu");
    for (
      const k of [
        "SidaSilu",
        "SidaSiluGrad",
        "SidaGroupNorm",
        "SidaGroupNormGrad",
        "SidaGroupNormSilu",
        "SidaGroupNormSiluGrad",
      ]
    ) {
      assert.ok(tf.getKernel(k, "webgpu"), `${k} is registered for webgpu`);
    }
    // [x shape, groups]: 6 channels in 3 groups (scalar passes), then groups of whole channel
    // quads (the vec4 passes), at odd pixel counts; γ, β not 1 and 0.
    const cases: [number[], number][] = [
      [[2, 5, 3, 6], 3],
      [[2, 5, 3, 16], 2],
      [[3, 4, 4, 8], 2],
      [[1, 7, 5, 12], 3],
    ];
    // Each case through group norm alone and through the fused group norm + SiLU (on cpu: the
    // composed silu(groupNorm)); β shifted so that z = x̂·γ + β reaches both tails of the SiLU.
    for (const [shape, groups] of cases) {
      const c = shape[3];
      const inputs = [host(shape, 11), host([c], 12), host([c], 13)];
      for (const fused of [false, true]) {
        const norm = (x: tf.Tensor4D, g: tf.Tensor, b: tf.Tensor) =>
          fused
            ? groupNormSilu(x, g, tf.mul(b, 4), groups, 1e-5)
            : groupNorm(x, g, b, groups, 1e-5);
        const what = `group norm${fused ? " + silu" : ""} ${shape} / ${groups}`;
        await expectSame(what, inputs, (x, g, b) => {
          const f = (...t: tf.Tensor[]) => {
            const [x4, g1, b1] = t as [tf.Tensor4D, tf.Tensor, tf.Tensor];
            const y = norm(x4, tf.add(g1, 1.5), b1);
            return tf.sum(tf.mul(y, tf.cos(tf.reshape(tf.range(0, y.size), y.shape))));
          };
          return [norm(x as tf.Tensor4D, g, b), f(x, g, b), ...tf.grads(f)([x, g, b])];
        });
      }
    }
    // Statistics in one shifted pass: a mean 100× the spread must not cancel.
    for (const c of [6, 8]) {
      for (const norm of [groupNorm, groupNormSilu]) {
        const what = `${norm.name}, large mean, ${c} channels`;
        await expectSame(what, [host([2, 4, 4, c], 15)], (x) => {
          const g = tf.ones([c]), b = tf.zeros([c]);
          const f = (t: tf.Tensor) => {
            const y = norm(tf.add(tf.mul(t, 0.5), 50) as tf.Tensor4D, g, b, 2, 1e-5);
            return tf.sum(tf.mul(y, tf.sin(tf.reshape(tf.range(0, y.size), y.shape))));
          };
          return [norm(tf.add(tf.mul(x, 0.5), 50) as tf.Tensor4D, g, b, 2, 1e-5), tf.grad(f)(x)];
        });
      }
    }
    // Softmax over rows of 37 (not a multiple of any workgroup), large logits, and its gradient.
    for (const k of ["SidaSoftmax", "SidaSoftmaxGrad"]) {
      assert.ok(tf.getKernel(k, "webgpu"), `${k} is registered for webgpu`);
    }
    await expectSame("softmax", [host([3, 5, 37], 14)], (x) => {
      const f = (t: tf.Tensor) => {
        const y = softmax(tf.mul(t, 20));
        return tf.sum(tf.mul(y, tf.sin(tf.reshape(tf.range(0, y.size), y.shape))));
      };
      return [softmax(tf.mul(x, 20)), f(x), tf.grad(f)(x)];
    });
    // SiLU at a size that is not a multiple of 4 (the scalar pass; the others above are vec4).
    await expectSame("silu, 15 elements", [host([3, 5], 17)], (x) => {
      const f = (t: tf.Tensor) => tf.sum(tf.mul(silu(t), tf.reshape(tf.range(1, 16), [3, 5])));
      return [silu(x), tf.grad(f)(x)];
    });
    // nan_to_num, scalar (5 elements) and vec4 (8) passes.
    const special = tf.tensor1d([NaN, Infinity, -Infinity, 1.5, -0]);
    assert.deepEqual(Array.from(await nanToNum(special, 0, 7, -7).data()), [0, 7, -7, 1.5, -0]);
    const special8 = tf.tensor1d([-2, NaN, Infinity, -Infinity, 1.5, -0, -Infinity, 3e38]);
    assert.deepEqual(
      Array.from(await nanToNum(special8, 0.5, 7, -7).data()),
      [-2, 0.5, 7, -7, 1.5, -0, -7, Math.fround(3e38)],
    );
    tf.dispose([special, special8]);
  },
});

Deno.test({
  name: "webgpu kernels: one-dispatch lerp and Adam updates equal the composed tfjs forms",
  ignore,
  fn: async () => {
    await initBackend("webgpu");
    const shape = [3, 5, 7];
    const inputs = [host(shape, 21), host(shape, 22), host(shape, 23), host(shape, 24)];
    await expectSame("lerp / adam", inputs, (p, m, v0, g) => {
      const v = tf.abs(v0);
      return [
        lerp(m, g, 0.1),
        adamSecondMoment(v, g, 0.999),
        adamApply(p, m, v, 1e-3 / 0.1, Math.sqrt(1 - 0.999 ** 3), 1e-8),
      ];
    }, 1e-6);
  },
});

Deno.test("GEMM style: register on a software adapter, tiled on a GPU, SIDA_WEBGPU_GEMM overrides", () => {
  assert.equal(gemmStyleFor(true, undefined), "register");
  assert.equal(gemmStyleFor(false, ""), "tiled");
  assert.equal(gemmStyleFor(false, "register"), "register");
  assert.equal(gemmStyleFor(true, " tiled "), "tiled");
  assert.throws(() => gemmStyleFor(true, "fast"), /SIDA_WEBGPU_GEMM must be 'tiled' or 'register'/);
});

Deno.test({
  name: "webgpu profile: dispatches, workgroups and invocations per program",
  ignore,
  fn: async () => {
    await initBackend("webgpu");
    const x = tf.ones([64, 2, 8]);
    const p = startGpuProfile();
    // A middle-axis sum: 64·8 outputs in quads, 128 invocations in 2 workgroups of 64.
    const y = tf.sum(x, 1);
    p.stop();
    assert.equal(p.totals().dispatches, 1);
    assert.deepEqual(p.byProgram(), [
      { program: "sida_q4_midsum", dispatches: 1, workgroups: 2, invocations: 128 },
    ]);
    assert.deepEqual(Array.from(await y.data()), Array(64 * 8).fill(2));
    tf.dispose([x, y]);
  },
});

Deno.test("host caches: one uniform buffer per distinct block, evicted ones released after submit", () => {
  // A stand-in for tfjs' backend (no GPU needed): makeUniforms hands out numbered buffers and
  // queues each for release after the next submit, as tfjs' does.
  let made = 0;
  const fake = {
    device: { createBindGroup: () => ({}) },
    pipelineCache: {} as Record<string, unknown>,
    uniformPendingDisposal: [] as unknown[],
    makeUniforms(_fields: { type: string; data: number[] }[]) {
      const buffer = { id: made++ };
      this.uniformPendingDisposal.push(buffer);
      return { offset: 0, size: 16, buffer };
    },
  };
  const stats = installHostCaches(fake, 2)!;
  assert.equal(installHostCaches(fake, 2), stats, "installing twice changes nothing");
  const block = (n: number) => [{ type: "int32", data: [n, 1] }, { type: "float32", data: [NaN] }];
  const u = (n: number) => (fake.makeUniforms(block(n)).buffer as { id: number }).id;
  assert.equal(u(7), 0);
  assert.equal(u(7), 0, "the same contents reuse the buffer");
  assert.deepEqual(fake.uniformPendingDisposal, [], "a cached buffer is not released");
  assert.equal(u(8), 1);
  assert.equal(u(7), 0, "(refreshes 7)");
  assert.equal(u(9), 2, "a third block evicts the least recently used (8)");
  assert.deepEqual(fake.uniformPendingDisposal, [{ id: 1 }], "8's buffer released after submit");
  assert.equal(u(8), 3, "8 is made again");
  assert.deepEqual([stats.uniformHits, stats.uniformMisses], [2, 4]);
  assert.equal(installHostCaches({ makeUniforms: 1 }), undefined, "not a tfjs-webgpu backend");
});

Deno.test({
  name: "host caches on webgpu: bind groups reused, results follow the data in reused buffers",
  ignore,
  fn: async () => {
    await initBackend("webgpu");
    const stats = hostCacheStats(tf.backend());
    assert.ok(stats, "initBackend installs the caches");
    const host = (v: Float32Array) => Array.from(v, (x) => Math.fround(x / (1 + Math.exp(-x))));
    const close = (a: Float32Array, b: number[], what: string) =>
      a.forEach((x, i) => assert.ok(Math.abs(x - b[i]) <= 1e-6 * (1 + Math.abs(b[i])), what));
    const before = { ...stats };
    // Many tensors of one shape, each freed before the next is made: the pool hands the same
    // buffers out again, so the runner's bind groups and uniforms repeat.
    for (let k = 0; k < 40; k++) {
      const v = values(64, 100 + k);
      const x = tf.tensor1d(v);
      const y = silu(x);
      close(await y.data() as Float32Array, host(v), `silu of tensor ${k}`);
      tf.dispose([x, y]);
    }
    // Several live tensors of one shape: one program, different buffers in each call.
    const vs = [0, 1, 2, 3].map((k) => values(64, 200 + k));
    const xs = vs.map((v) => tf.tensor1d(v));
    for (let round = 0; round < 2; round++) {
      const ys = xs.map((x) => silu(x));
      for (let k = 0; k < ys.length; k++) {
        close(await ys[k].data() as Float32Array, host(vs[k]), `round ${round}, tensor ${k}`);
      }
      tf.dispose(ys);
    }
    tf.dispose(xs);
    assert.ok(stats.bindGroupHits - before.bindGroupHits >= 30, "bind groups reused");
    assert.ok(stats.uniformHits - before.uniformHits >= 30, "uniforms reused");
    assert.ok(stats.bindGroupMisses - before.bindGroupMisses <= 10, "few bind groups made");
  },
});
