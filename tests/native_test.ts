/**
 * The `native` backend against tfjs-cpu: every replaced kernel on random shapes (strides,
 * padding modes, dilations, batches of one, broadcasting), gradients through `tf.grad`, and
 * flat memory. Skipped (with a message) when no BLAS library can be loaded.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import { NATIVE_KERNEL_NAMES, registerNativeBackend } from "../lib/runtime/native/backend.ts";
import { BACKEND_NAMES, describeBackend, initBackend } from "../lib/runtime/backend.ts";
import { loadCKernels, setCKernelsEnabled } from "../lib/runtime/native/ckernels.ts";
import { FUSED, groupNorm, silu } from "../lib/runtime/native/fused.ts";

let unavailable: string | undefined;
try {
  registerNativeBackend();
} catch (e) {
  unavailable = (e as Error).message;
  console.error(`native backend tests skipped: ${unavailable}`);
}
const ignore = unavailable !== undefined;

const REL_TOL = 1e-4;

/** A deterministic pseudo-random Float32Array (mulberry32), values in [-1, 1). */
function randomArray(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  }
  return out;
}

type Build = (inputs: tf.Tensor[]) => tf.Tensor | tf.Tensor[];

async function runOn(
  backend: string,
  shapes: number[][],
  seed: number,
  build: Build,
): Promise<{ shapes: number[][]; values: Float32Array[] }> {
  await tf.setBackend(backend);
  const inputs = shapes.map((s, i) =>
    tf.tensor(randomArray(s.reduce((a, b) => a * b, 1), seed + i), s, "float32")
  );
  const before = tf.memory().numTensors;
  const out = tf.tidy(build.bind(null, inputs));
  const outs = Array.isArray(out) ? out : [out];
  const values = await Promise.all(outs.map(async (t) => await t.data() as Float32Array));
  const result = { shapes: outs.map((t) => t.shape), values };
  tf.dispose(outs);
  assert.equal(tf.memory().numTensors, before, `${backend}: tensors leaked`);
  tf.dispose(inputs);
  return result;
}

/** Runs `build` on cpu and on native with the same inputs and compares every output. */
async function compare(what: string, shapes: number[][], build: Build, seed = 1): Promise<void> {
  const ref = await runOn("cpu", shapes, seed, build);
  const got = await runOn("native", shapes, seed, build);
  assert.equal(got.values.length, ref.values.length, `${what}: output count`);
  for (let k = 0; k < ref.values.length; k++) {
    assert.deepEqual(got.shapes[k], ref.shapes[k], `${what}: output ${k} shape`);
    const a = ref.values[k], b = got.values[k];
    let err = 0, scale = 0;
    for (let i = 0; i < a.length; i++) {
      if (!Number.isFinite(a[i]) || !Number.isFinite(b[i])) {
        // NaN and ±Infinity must match exactly.
        if (!Object.is(a[i], b[i]) && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) err = Infinity;
        continue;
      }
      err = Math.max(err, Math.abs(a[i] - b[i]));
      scale = Math.max(scale, Math.abs(a[i]));
    }
    assert.ok(
      err <= REL_TOL * Math.max(1, scale),
      `${what}: output ${k} max abs error ${err} (scale ${scale})`,
    );
  }
}

/** Value and gradients of sum(f(inputs)²) w.r.t. every input. */
function withGrads(f: (xs: tf.Tensor[]) => tf.Tensor): Build {
  return (xs) => {
    const g = tf.grads((...args: tf.Tensor[]) => tf.sum(tf.square(f(args))));
    return [f(xs), ...g(xs)];
  };
}

Deno.test({
  name: "native: the replaced kernels are registered",
  ignore,
  fn() {
    for (
      const k of [
        "BatchMatMul",
        "_FusedMatMul",
        "Conv2D",
        "FusedConv2D",
        "Conv2DBackpropInput",
        "Conv2DBackpropFilter",
        "DepthwiseConv2dNative",
        "DepthwiseConv2dNativeBackpropInput",
        "DepthwiseConv2dNativeBackpropFilter",
      ]
    ) {
      assert.ok(NATIVE_KERNEL_NAMES.includes(k), k);
    }
    // Every cpu kernel exists for native too.
    for (const k of tf.getKernelsForBackend("cpu")) {
      assert.ok(tf.getKernel(k.kernelName, "native"), `native lacks ${k.kernelName}`);
    }
    assert.ok((BACKEND_NAMES as readonly string[]).includes("native"));
  },
});

Deno.test({
  name: "native: initBackend('native') and describeBackend",
  ignore,
  async fn() {
    const info = await initBackend("native");
    assert.equal(info.name, "native");
    assert.equal(tf.getBackend(), "native");
    assert.match(describeBackend(info), /^backend: native \(tfjs-cpu \+ .+\)/);
  },
});

Deno.test({
  name: "native: a missing BLAS library is a one-line error",
  async fn() {
    const cmd = new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `import { loadBlas } from "${new URL("../lib/runtime/native/blas.ts", import.meta.url)}";
         try { loadBlas(); console.log("loaded"); } catch (e) { console.log(e.name + ": " + e.message); }`,
      ],
      env: { SIDA_BLAS: "/nonexistent/libblas.so" },
      stdout: "piped",
      stderr: "piped",
    });
    const out = new TextDecoder().decode((await cmd.output()).stdout).trim();
    assert.match(out, /^BlasUnavailableError: SIDA_BLAS=\/nonexistent\/libblas\.so could not be/);
    assert.equal(out.split("\n").length, 1);
  },
});

Deno.test({
  name: "native: matMul and batched matMul (transposes, broadcasting, batch 1) with gradients",
  ignore,
  async fn() {
    const cases: [number[], number[], boolean, boolean][] = [
      [[7, 5], [5, 3], false, false],
      [[5, 7], [5, 3], true, false],
      [[7, 5], [3, 5], false, true],
      [[5, 7], [3, 5], true, true],
      [[1, 4, 6], [1, 6, 2], false, false],
      [[3, 4, 6], [6, 2], false, false],
      [[3, 6, 4], [6, 2], true, false],
      [[4, 6], [3, 6, 2], false, false],
      [[2, 3, 4, 6], [2, 3, 5, 6], false, true],
      [[64, 33, 17], [64, 17, 9], false, false],
      [[1, 1], [1, 1], false, false],
      // N a multiple of 16, batch > 1: the C batched product (csrc/sida_conv.c), every layout.
      [[3, 37, 20], [3, 20, 32], false, false],
      [[3, 20, 37], [3, 20, 16], true, false],
      [[2, 37, 20], [2, 64, 20], false, true],
      [[2, 20, 5], [2, 48, 20], true, true],
      [[4, 13, 9], [9, 32], false, false],
      [[3, 9, 13], [9, 64], true, false],
      [[9, 13], [4, 13, 16], false, false],
      [[37, 20], [20, 32], false, false],
      [[20, 37], [48, 20], true, true],
    ];
    let seed = 10;
    for (const [sa, sb, ta, tb] of cases) {
      const f = ([a, b]: tf.Tensor[]) => tf.matMul(a, b, ta, tb);
      // tfjs' BatchMatMul gradient does not reduce broadcast batch dimensions.
      const broadcast = sa.length !== sb.length;
      await compare(
        `matMul ${sa}x${sb} ${ta} ${tb}`,
        [sa, sb],
        broadcast ? f : withGrads(f),
        seed++,
      );
    }
  },
});

Deno.test({
  name: "native: fused matMul with bias and activations",
  ignore,
  async fn() {
    for (const activation of ["linear", "relu", "elu", "sigmoid", "relu6", "leakyrelu"] as const) {
      await compare(
        `fused matMul ${activation}`,
        [[6, 5], [5, 4], [4]],
        ([a, b, bias]) =>
          tf.fused.matMul({
            a: a as tf.Tensor2D,
            b: b as tf.Tensor2D,
            bias,
            activation,
            leakyreluAlpha: 0.1,
          }),
      );
    }
    // A bias that is not a trailing vector (goes through the Add kernel), with transposes.
    await compare(
      "fused matMul bias [M,1]",
      [[5, 6], [4, 5], [6, 1]],
      ([a, b, bias]) =>
        tf.fused.matMul({
          a: a as tf.Tensor2D,
          b: b as tf.Tensor2D,
          bias,
          transposeA: true,
          transposeB: true,
        }),
    );
    await compare(
      "fused matMul gradients",
      [[6, 5], [5, 4], [4]],
      withGrads(([a, b, bias]) =>
        tf.fused.matMul({ a: a as tf.Tensor2D, b: b as tf.Tensor2D, bias, activation: "relu" })
      ),
    );
  },
});

type Pad = "same" | "valid" | number | [[0, 0], [number, number], [number, number], [0, 0]];

const CONV_CASES: {
  x: [number, number, number, number];
  k: [number, number];
  co: number;
  stride: number | [number, number];
  pad: Pad;
  dil?: number | [number, number];
}[] = [
  { x: [2, 9, 7, 3], k: [3, 3], co: 5, stride: 1, pad: "same" },
  { x: [1, 8, 8, 4], k: [3, 3], co: 6, stride: 2, pad: "valid" },
  { x: [1, 8, 8, 4], k: [3, 3], co: 6, stride: 2, pad: "same" },
  { x: [3, 6, 6, 2], k: [1, 1], co: 3, stride: 1, pad: 0 },
  { x: [2, 6, 5, 4], k: [1, 1], co: 3, stride: 2, pad: "same" },
  { x: [2, 10, 10, 3], k: [5, 5], co: 4, stride: [2, 1], pad: [[0, 0], [1, 2], [2, 0], [0, 0]] },
  { x: [2, 9, 9, 3], k: [3, 2], co: 4, stride: 1, pad: 2 },
  { x: [1, 5, 5, 8], k: [3, 3], co: 16, stride: 1, pad: 1 },
  { x: [2, 11, 9, 3], k: [3, 3], co: 4, stride: 1, pad: "same", dil: 2 },
  { x: [1, 12, 12, 2], k: [3, 2], co: 3, stride: 1, pad: "valid", dil: [2, 3] },
  // Stride 1 with asymmetric or no padding: the input gradient as a flipped-filter convolution.
  { x: [2, 7, 8, 3], k: [3, 4], co: 5, stride: 1, pad: [[0, 0], [0, 2], [1, 2], [0, 0]] },
  { x: [1, 8, 8, 4], k: [3, 3], co: 6, stride: 1, pad: "valid" },
  // Large enough for the threaded C im2col / col2im (several images per chunk).
  { x: [3, 20, 20, 16], k: [3, 3], co: 8, stride: 1, pad: "same" },
  // Output channels a multiple of 16: the direct C kernels (csrc/sida_conv.c), with 1, 2 and 4
  // vectors per tile, pixel and channel tails, strides, dilations and padding of every kind.
  { x: [2, 9, 7, 16], k: [3, 3], co: 32, stride: 1, pad: "same" },
  { x: [1, 8, 8, 5], k: [3, 3], co: 64, stride: 2, pad: "same" },
  { x: [2, 10, 10, 32], k: [5, 5], co: 48, stride: [2, 1], pad: [[0, 0], [1, 2], [2, 0], [0, 0]] },
  { x: [1, 12, 12, 16], k: [3, 2], co: 16, stride: 1, pad: "valid", dil: [2, 3] },
  { x: [3, 5, 6, 7], k: [3, 3], co: 128, stride: 1, pad: 2 },
  { x: [2, 16, 16, 32], k: [3, 3], co: 32, stride: 1, pad: 1 },
  { x: [2, 6, 5, 16], k: [1, 1], co: 32, stride: 1, pad: 0 },
  { x: [2, 6, 5, 8], k: [1, 1], co: 16, stride: 2, pad: "same" },
  // x and dy over 2 MB: the filter gradient walks the pixels in chunks (1536 pixels here, ending
  // mid-row) across the tiles of each thread.
  { x: [17, 31, 31, 16], k: [3, 3], co: 16, stride: 1, pad: 1 },
];

for (const withC of [true, false]) {
  Deno.test({
    name: `native: conv2d forward (strides, padding, dilation) and gradients w.r.t. x and filter (${
      withC ? "C" : "TypeScript"
    } im2col)`,
    ignore: ignore || (withC && !loadCKernels()),
    async fn() {
      const before = setCKernelsEnabled(withC);
      try {
        let seed = 100;
        for (const c of CONV_CASES) {
          const what = `conv2d x${c.x} k${c.k} co${c.co} s${c.stride} p${JSON.stringify(c.pad)} d${
            c.dil ?? 1
          }`;
          const f = ([x, w]: tf.Tensor[]) =>
            tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, c.stride, c.pad, "NHWC", c.dil ?? 1);
          const shapes = [c.x, [...c.k, c.x[3], c.co]];
          // tfjs has no conv2d gradients for dilations > 1.
          await compare(what, shapes, c.dil ? f : withGrads(f), seed++);
        }
      } finally {
        setCKernelsEnabled(before);
      }
    },
  });
}

Deno.test({
  name: "native: fused conv2d with bias and activation, conv2dTranspose",
  ignore,
  async fn() {
    for (
      const [activation, co] of [["linear", 4], ["relu", 4], ["sigmoid", 4], ["relu", 32]] as const
    ) {
      await compare(
        `fused conv2d ${activation} co ${co}`,
        [[2, 7, 7, 3], [3, 3, 3, co], [co]],
        ([x, w, b]) =>
          tf.fused.conv2d({
            x: x as tf.Tensor4D,
            filter: w as tf.Tensor4D,
            strides: 1,
            pad: "same",
            bias: b,
            activation,
          }),
      );
    }
    await compare(
      "fused conv2d gradients",
      [[2, 7, 7, 3], [3, 3, 3, 4], [4]],
      withGrads(([x, w, b]) =>
        tf.fused.conv2d({
          x: x as tf.Tensor4D,
          filter: w as tf.Tensor4D,
          strides: 2,
          pad: "same",
          bias: b,
          activation: "relu",
        })
      ),
    );
    await compare(
      "conv2dTranspose stride 2",
      [[2, 4, 4, 5], [3, 3, 3, 5]],
      ([x, w]) => tf.conv2dTranspose(x as tf.Tensor4D, w as tf.Tensor4D, [2, 8, 8, 3], 2, "same"),
    );
  },
});

Deno.test({
  name: "native: depthwise conv2d forward and gradients (multipliers, strides, padding, dilation)",
  ignore,
  async fn() {
    const cases: {
      x: [number, number, number, number];
      k: number;
      mult: number;
      stride: number;
      pad: Pad;
      dil?: number;
    }[] = [
      { x: [2, 8, 8, 3], k: 3, mult: 1, stride: 1, pad: "same" },
      { x: [1, 9, 9, 4], k: 2, mult: 1, stride: 2, pad: 0 },
      { x: [2, 8, 7, 3], k: 4, mult: 2, stride: 2, pad: "same" },
      { x: [1, 7, 7, 2], k: 3, mult: 3, stride: 1, pad: "valid" },
      { x: [2, 10, 10, 3], k: 3, mult: 1, stride: 1, pad: [[0, 0], [1, 2], [0, 3], [0, 0]] },
      { x: [1, 11, 11, 3], k: 3, mult: 2, stride: 1, pad: "same", dil: 2 },
    ];
    let seed = 200;
    for (const c of cases) {
      const what = `depthwise x${c.x} k${c.k} m${c.mult} s${c.stride} p${JSON.stringify(c.pad)} d${
        c.dil ?? 1
      }`;
      const f = ([x, w]: tf.Tensor[]) =>
        tf.depthwiseConv2d(x as tf.Tensor4D, w as tf.Tensor4D, c.stride, c.pad, "NHWC", c.dil ?? 1);
      await compare(what, [c.x, [c.k, c.k, c.x[3], c.mult]], c.dil ? f : withGrads(f), seed++);
    }
    // The backprop kernels with dilation 2: tfjs' gradients refuse dilations and tfjs-cpu's
    // backprop kernels ignore them, so check the adjoint identities instead:
    // <dy, conv(x, w)> = <backpropInput(dy, w), x> = <backpropFilter(x, dy), w>.
    await tf.setBackend("native");
    const attrs = { strides: 1, pad: "same", dilations: 2 };
    const [x, w, dy] = [[1, 9, 9, 3], [3, 3, 3, 2], [1, 9, 9, 6]].map((s, i) =>
      tf.tensor4d(
        randomArray(s.reduce((a, b) => a * b), 400 + i),
        s as [number, number, number, number],
      )
    ) as tf.Tensor4D[];
    const y = tf.depthwiseConv2d(x, w, 1, "same", "NHWC", 2);
    const dx = tf.engine().runKernel("DepthwiseConv2dNativeBackpropInput", { dy, filter: w }, {
      ...attrs,
      inputShape: x.shape,
    }) as tf.Tensor;
    const dw = tf.engine().runKernel("DepthwiseConv2dNativeBackpropFilter", { x, dy }, {
      ...attrs,
      filterShape: w.shape,
    }) as tf.Tensor;
    const dots = await Promise.all(
      [[y, dy], [dx, x], [dw, w]].map(async ([a, b]) => {
        const s = tf.sum(tf.mul(a, b));
        const v = (await s.data())[0];
        s.dispose();
        return v;
      }),
    );
    assert.ok(Math.abs(dots[0] - dots[1]) < 1e-4 * Math.abs(dots[0]), `dx adjoint ${dots}`);
    assert.ok(Math.abs(dots[0] - dots[2]) < 1e-4 * Math.abs(dots[0]), `dw adjoint ${dots}`);
    tf.dispose([x, w, dy, y, dx, dw]);
  },
});

for (const withC of [true, false]) {
  Deno.test({
    name: `native: broadcasting binary ops, unary ops, reductions (${
      withC ? "C" : "TypeScript"
    } kernels)`,
    ignore: ignore || (withC && !loadCKernels()),
    async fn() {
      const before = setCKernelsEnabled(withC);
      try {
        const pairs: [number[], number[]][] = [
          // Large enough for the threaded C paths: many rows, and few long rows (split in chunks).
          [[64, 40, 41], [41]],
          [[3, 70000], [3, 1]],
          [[2, 50000], [2, 50000]],
          [[4, 5], [4, 5]],
          [[2, 3, 4, 5], [5]],
          [[2, 3, 4, 5], [2, 1, 1, 5]],
          [[2, 6, 3, 2], [2, 1, 3, 1]],
          [[3, 1, 4], [1, 5, 1]],
          [[6], []],
          [[], [3, 2]],
          [[1, 1], [1, 1]],
        ];
        const ops: [string, (a: tf.Tensor, b: tf.Tensor) => tf.Tensor][] = [
          ["add", tf.add],
          ["sub", tf.sub],
          ["mul", tf.mul],
          ["div", tf.div],
          ["squaredDifference", tf.squaredDifference],
          ["maximum", tf.maximum],
          ["minimum", tf.minimum],
        ];
        let seed = 300;
        for (const [sa, sb] of pairs) {
          for (const [name, op] of ops) {
            const f = ([a, b]: tf.Tensor[]) => op(a, name === "div" ? tf.add(tf.abs(b), 0.5) : b);
            // tfjs' SquaredDifference, Maximum and Minimum gradients do not reduce broadcast dims.
            const grads = ["add", "sub", "mul", "div"].includes(name) || sa.join() === sb.join();
            await compare(`${name} [${sa}] [${sb}]`, [sa, sb], grads ? withGrads(f) : f, seed++);
          }
        }
        const unary: [string, (x: tf.Tensor) => tf.Tensor][] = [
          ["sigmoid", tf.sigmoid],
          ["square", tf.square],
          ["neg", tf.neg],
          ["exp", tf.exp],
          ["floor", (x) => tf.floor(tf.mul(x, 3))],
          ["abs", tf.abs],
          ["sqrt", (x) => tf.sqrt(tf.add(tf.abs(x), 0.1))],
          ["rsqrt", (x) => tf.rsqrt(tf.add(tf.abs(x), 0.1))],
          ["log", (x) => tf.log(tf.add(tf.abs(x), 0.1))],
        ];
        for (const [name, f] of unary) {
          await compare(name, [[3, 4, 5]], withGrads(([x]) => f(x)), seed++);
        }
        const shape = [2, 3, 4, 5];
        for (const axes of [0, 1, 3, -1, [1, 3], [0, 2], [0, 1, 2, 3], [2, 3]]) {
          for (const keep of [false, true]) {
            await compare(`reductions axes ${axes} keepDims ${keep}`, [shape], ([x]) => [
              tf.sum(x, axes, keep),
              tf.mean(x, axes, keep),
              tf.max(x, axes, keep),
              tf.min(x, axes, keep),
            ], seed++);
          }
        }
        await compare(
          "moments [1, 3]",
          [[2, 16, 4, 3]],
          withGrads(([x]) => {
            const { mean, variance } = tf.moments(x, [1, 3], true);
            return tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, 1e-5)));
          }),
        );
        await compare(
          "relu / step large",
          [[300000]],
          withGrads(([x]) => tf.mul(tf.relu(x), tf.step(x, 0.3))),
        );
        await compare("sigmoid large", [[2, 100000]], withGrads(([x]) => tf.sigmoid(tf.mul(x, 8))));
      } finally {
        setCKernelsEnabled(before);
      }
    },
  });
}

Deno.test({
  name: "native: fused SiLU and group norm equal the composed ops (values and gradients)",
  ignore: ignore || !loadCKernels(),
  async fn() {
    await tf.setBackend("native");
    assert.ok(tf.getKernel(FUSED.groupNorm, "native"), "fused kernels registered");
    await compare("silu", [[2, 5, 7, 3]], withGrads(([x]) => silu(tf.mul(x, 6))));
    await compare("silu large", [[4, 16, 16, 64]], withGrads(([x]) => silu(tf.mul(x, 6))));
    for (
      const [shape, groups] of [
        [[2, 4, 4, 8], 2],
        [[1, 3, 5, 6], 3],
        [[3, 8, 8, 32], 8],
        [[4, 16, 16, 64], 16],
        [[2, 1, 1, 4], 4],
      ] as [number[], number][]
    ) {
      const c = shape[3];
      await compare(
        `groupNorm ${shape} G${groups}`,
        [shape, [c], [c]],
        withGrads(([x, g, b]) =>
          // Offsets and scales per channel so that the statistics matter.
          groupNorm(
            tf.add(tf.mul(x, tf.add(g, 2)), b) as tf.Tensor4D,
            tf.add(g, 1),
            b,
            groups,
            1e-5,
          )
        ),
      );
    }
  },
});

Deno.test({
  name: "native: softmax, transpose, slice, split, concat, stack, unstack, tile (with gradients)",
  ignore,
  async fn() {
    await compare("softmax", [[3, 7, 9]], withGrads(([x]) => tf.softmax(tf.mul(x, 4))));
    for (const perm of [[0, 2, 1, 3], [3, 2, 1, 0], [1, 0, 2, 3], [0, 1, 3, 2]]) {
      await compare(`transpose ${perm}`, [[2, 3, 4, 5]], withGrads(([x]) => tf.transpose(x, perm)));
    }
    await compare(
      "slice",
      [[3, 5, 4, 6]],
      withGrads(([x]) => tf.slice(x, [1, 0, 1, 2], [2, 5, 2, -1])),
    );
    await compare(
      "slice whole rows",
      [[3, 5, 4]],
      withGrads(([x]) => tf.slice(x, [1, 0, 0], [1, -1, -1])),
    );
    await compare(
      "split",
      [[2, 3, 6, 4]],
      withGrads(([x]) => tf.concat(tf.split(x, [1, 2, 3], 2).reverse(), 2)),
    );
    await compare(
      "split equal",
      [[2, 4, 4, 8]],
      withGrads(([x]) => {
        const [a, b] = tf.split(x, 2, 3);
        return tf.add(tf.mul(a, 2), b);
      }),
    );
    await compare(
      "concat axis 3",
      [[2, 3, 3, 2], [2, 3, 3, 5]],
      withGrads(([a, b]) => tf.concat([a, b], 3)),
    );
    await compare(
      "concat axis 1",
      [[2, 3, 4], [2, 1, 4], [2, 2, 4]],
      withGrads(([a, b, c]) => tf.concat([a, b, c], 1)),
    );
    await compare(
      "stack / unstack",
      [[4, 3], [4, 3]],
      withGrads(([a, b]) => tf.stack([a, tf.stack(tf.unstack(tf.mul(a, b), 1), 1)], 0)),
    );
    await compare(
      "unstack [N, 3]",
      [[50, 3]],
      withGrads(([x]) => tf.add(...tf.unstack(x, 1).slice(0, 2) as [tf.Tensor, tf.Tensor])),
    );
    await compare("tile", [[2, 1, 3, 4]], withGrads(([x]) => tf.tile(x, [1, 2, 2, 1])));
    await compare("tile last axis", [[2, 3]], withGrads(([x]) => tf.tile(x, [3, 2])));
  },
});

Deno.test({
  name: "native: memory stays flat over repeated gradient steps",
  ignore,
  async fn() {
    await tf.setBackend("native");
    const x = tf.randomNormal([2, 8, 8, 4], 0, 1, "float32", 1) as tf.Tensor4D;
    const w = tf.variable(tf.randomNormal([3, 3, 4, 4], 0, 1, "float32", 2));
    const step = () => {
      const { value, grads } = tf.variableGrads(() =>
        tf.tidy(() => {
          const y = tf.conv2d(x, w as tf.Tensor4D, 1, "same");
          const d = tf.depthwiseConv2d(y, tf.ones([2, 2, 4, 1]) as tf.Tensor4D, 2, 0);
          return tf.mean(
            tf.square(tf.matMul(tf.reshape(d, [2, -1]), tf.reshape(d, [2, -1]), false, true)),
          ) as tf.Scalar;
        }), [w]);
      tf.dispose([value, ...Object.values(grads)]);
    };
    step();
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) step();
    assert.equal(tf.memory().numTensors, before);
    tf.dispose([x, w]);
  },
});

Deno.test({
  name: "native: max pooling and ReLU (with gradients, ties and NaN)",
  ignore,
  async fn() {
    for (
      const [shape, filter, stride, pad] of [
        [[2, 8, 8, 3], 2, 2, "valid"],
        [[1, 7, 9, 2], 3, 2, "same"],
        [[2, 6, 5, 4], 3, 1, "same"],
        [[1, 5, 5, 1], [2, 3], [1, 2], "valid"],
        [[3, 4, 4, 5], 2, 2, 1],
      ] as [
        number[],
        number | [number, number],
        number | [number, number],
        "valid" | "same" | number,
      ][]
    ) {
      await compare(
        `maxPool ${shape} f${filter} s${stride} ${pad}`,
        [shape],
        withGrads(([x]) => tf.maxPool(x as tf.Tensor4D, filter, stride, pad)),
      );
      // ReLU first: many windows of tied zeros, where the first maximum takes the gradient.
      await compare(
        `relu + maxPool ${shape}`,
        [shape],
        withGrads(([x]) => tf.maxPool(tf.relu(tf.sub(x, 0.5)) as tf.Tensor4D, filter, stride, pad)),
      );
    }
    // NaN pixels and whole NaN windows.
    await compare(
      "maxPool with NaN",
      [[1, 4, 4, 2]],
      (([x]) => {
        const mask = tf.greater(x, -0.5); // three pixels in four: some windows are all NaN
        const y = tf.where(mask, tf.fill(x.shape, NaN), x);
        return [tf.maxPool(y as tf.Tensor4D, 2, 2, "valid"), tf.relu(y), tf.step(y, 0.1)];
      }) as Build,
    );
    await compare(
      "relu / step",
      [[3, 17]],
      withGrads(([x]) => tf.mul(tf.relu(x), tf.step(x, 0.2))),
    );
  },
});

Deno.test({
  name: "native: buffer pool reuses disposed outputs, never a user's array, and reads are copies",
  ignore,
  async fn() {
    await tf.setBackend("native");
    const { bufferPool, POOL_MIN_LENGTH, BufferPool } = await import(
      "../lib/runtime/native/buffer_pool.ts"
    );
    const n = POOL_MIN_LENGTH * 2;
    const mine = new Float32Array(n).fill(7);
    const a = tf.tensor1d(mine);
    const b = tf.add(a, 1); // a pooled output
    const read = await b.data() as Float32Array;
    assert.equal(read[0], 8);
    const reused0 = bufferPool.stats.reused;
    a.dispose();
    b.dispose();
    const c = tf.mul(tf.fill([n], 3), 2); // reuses b's buffer (same length)
    assert.ok(bufferPool.stats.reused > reused0, "a disposed output was reused");
    assert.equal(read[0], 8, "an array read from a disposed tensor never changes");
    assert.ok(mine.every((v) => v === 7), "a user's array is never reused");
    assert.equal((await c.data())[0], 6);
    c.dispose();

    // The rules on a private pool: views and second registrations pin a buffer.
    const pool = new BufferPool(1 << 26);
    const x = pool.alloc(n);
    pool.register(x);
    pool.release(x);
    assert.equal(pool.alloc(n), x, "released buffer comes back");
    const y = pool.alloc(n);
    pool.register(y);
    pool.register(y.subarray(1)); // a view of it becomes another tensor's storage
    pool.release(y);
    assert.notEqual(pool.alloc(n), y, "pinned buffer is not reused");
    const z = pool.alloc(n);
    pool.register(z);
    pool.register(z); // the same array behind two tensors
    pool.release(z);
    assert.notEqual(pool.alloc(n), z, "shared buffer is not reused");
    const small = pool.alloc(10);
    pool.register(small);
    pool.release(small);
    assert.equal(pool.freeBytes, 0, "small arrays are left to the garbage collector");
  },
});

Deno.test({
  name: "native: malloc tuning is applied on Linux/glibc, and SIDA_MALLOPT=0 turns it off",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const run = async (env: Record<string, string>) => {
      const cmd = new Deno.Command(Deno.execPath(), {
        args: [
          "eval",
          `import { tuneMalloc } from "${new URL(
            "../lib/runtime/native/malloc_tuning.ts",
            import.meta.url,
          )}"; console.log(tuneMalloc(), tuneMalloc());`,
        ],
        env,
        stdout: "piped",
        stderr: "piped",
      });
      return new TextDecoder().decode((await cmd.output()).stdout).trim();
    };
    const glibc = (() => {
      try {
        Deno.dlopen("libc.so.6", {}).close();
        return true;
      } catch {
        return false;
      }
    })();
    assert.equal(await run({}), glibc ? "true true" : "false false");
    assert.equal(await run({ SIDA_MALLOPT: "0" }), "false false");
  },
});

Deno.test({
  name: "native: OpenBLAS, the C kernels and libgomp load once per process, not once per isolate",
  ignore: ignore || Deno.build.os !== "linux",
  async fn() {
    // Each Worker (and each test file of `deno test --parallel`) is an isolate on a thread of one
    // process, and Deno dlcloses its libraries when it ends. Unpinned, OpenBLAS, libgfortran,
    // libgomp and the C kernels were unloaded and initialised again for every isolate.
    // glibc's LD_DEBUG=files logs every constructor run ("calling init: <path>"). Three Workers
    // in a row, each ended before the next starts:
    const dir = await Deno.makeTempDir({ prefix: "sida-pin-test-" });
    try {
      const lib = (f: string) => new URL(`../lib/runtime/native/${f}`, import.meta.url).href;
      await Deno.writeTextFile(
        `${dir}/worker.ts`,
        `import { tf } from "${new URL("../lib/deps.ts", import.meta.url).href}";
         import { registerNativeBackend } from "${lib("backend.ts")}";
         import { loadCKernels } from "${lib("ckernels.ts")}";
         registerNativeBackend();
         await tf.setBackend("native");
         const y = tf.sigmoid(tf.matMul(tf.ones([64, 64]), tf.ones([64, 64])));
         await y.data();
         await tf.sigmoid(tf.ones([300000])).data(); // a parallel region on 2 OpenMP threads
         self.postMessage(loadCKernels() !== null);`,
      );
      await Deno.writeTextFile(
        `${dir}/main.ts`,
        `let withC = false;
         for (let i = 0; i < 3; i++) {
           const w = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
           withC = await new Promise((res, rej) => {
             w.onmessage = (e) => res(e.data);
             w.onerror = (e) => { e.preventDefault(); rej(new Error(e.message)); };
           });
           w.terminate();
           await new Promise((r) => setTimeout(r, 300)); // let the isolate end and dlclose
         }
         console.log(withC ? "with C" : "without C");`,
      );
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", `${dir}/main.ts`],
        // OpenMP's second thread spins in libgomp for a while after each parallel region: unpinned,
        // the isolate's end unmapped libgomp under it and the child died of SIGSEGV.
        env: {
          LD_DEBUG: "files",
          OMP_NUM_THREADS: "2",
          OMP_WAIT_POLICY: "ACTIVE",
          GOMP_SPINCOUNT: "300000000",
          OPENBLAS_NUM_THREADS: "1",
        },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stdout = new TextDecoder().decode(out.stdout);
      const log = new TextDecoder().decode(out.stderr);
      assert.ok(
        out.success,
        `child failed (exit ${out.code}, signal ${out.signal}):\n${stdout}\n${log.slice(-2000)}`,
      );
      const inits = (re: RegExp) =>
        log.split("\n").filter((l) => /calling init: /.test(l) && re.test(l)).length;
      assert.equal(inits(/openblas|\/blas\/libblas/), 1, "BLAS library initialised once");
      if (stdout.includes("with C")) {
        assert.equal(inits(/libsida_kernels/), 1, "C kernels initialised once");
        assert.equal(inits(/libgomp/), 1, "libgomp initialised once");
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
