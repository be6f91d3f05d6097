/**
 * One-dispatch element-wise updates for the optimizer and the EMA, which otherwise cost 13
 * (Adam) and 3 (EMA) tfjs kernels per parameter tensor per step, each its own dispatch with its
 * own uniform upload and bind group. Per-step numbers (the bias corrections, the EMA weight) are
 * uniforms, so each kernel compiles once per process whatever the step or the tensor size.
 *
 * The functions below use our kernels when the active backend has them (webgpu with
 * `registerWebGpuKernels`) and compose tfjs ops with the same arithmetic everywhere else.
 *
 * Adam as in `torch.optim.Adam` (`_single_tensor_adam`, Kingma & Ba 2015):
 *
 *   m ← m + (g − m)·(1 − β1)          (`lerp`)
 *   v ← v·β2 + g²·(1 − β2)            (`adamSecondMoment`)
 *   p ← p − s·m / (√v / √(1 − β2ᵗ) + ε),  s = lr / (1 − β1ᵗ)   (`adamApply`)
 *
 * @module
 */
import { tf } from "../../deps.ts";
import { flatProgram, type GpuKernelFunc, type GpuProgram } from "./program.ts";

/** Kernel names. */
export const OPTIM = {
  lerp: "SidaLerp",
  adamSecondMoment: "SidaAdamSecondMoment",
  adamApply: "SidaAdamApply",
} as const;

const here = (name: string) => tf.getKernel(name, tf.getBackend()) !== undefined;

/** a + (b − a)·w, element-wise (`torch.lerp`); one kernel on webgpu. */
export function lerp(a: tf.Tensor, b: tf.Tensor, w: number): tf.Tensor {
  if (here(OPTIM.lerp) && a.dtype === "float32" && b.dtype === "float32") {
    return tf.engine().runKernel(OPTIM.lerp, { a, b }, { w });
  }
  return tf.tidy(() => tf.add(a, tf.mul(tf.sub(b, a), w)));
}

/** v·β2 + g²·(1 − β2); one kernel on webgpu. */
export function adamSecondMoment(v: tf.Tensor, g: tf.Tensor, beta2: number): tf.Tensor {
  if (here(OPTIM.adamSecondMoment) && v.dtype === "float32" && g.dtype === "float32") {
    return tf.engine().runKernel(OPTIM.adamSecondMoment, { v, g }, { beta2 });
  }
  return tf.tidy(() => tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2)));
}

/** p − stepSize·m / (√v / bc2Sqrt + ε); one kernel on webgpu. */
export function adamApply(
  p: tf.Tensor,
  m: tf.Tensor,
  v: tf.Tensor,
  stepSize: number,
  bc2Sqrt: number,
  eps: number,
): tf.Tensor {
  if (here(OPTIM.adamApply) && [p, m, v].every((t) => t.dtype === "float32")) {
    return tf.engine().runKernel(OPTIM.adamApply, { p, m, v }, { stepSize, bc2Sqrt, eps });
  }
  return tf.tidy(() => {
    const denom = tf.add(tf.div(tf.sqrt(v), bc2Sqrt), eps);
    return tf.sub(p, tf.mul(tf.div(m, denom), stepSize));
  });
}

function withUniforms(p: GpuProgram, fields: string): GpuProgram {
  p.uniforms = fields;
  return p;
}

const f = (...v: number[]) => v.map((x) => ({ type: "float32", data: [x] }));

/** The optimizer kernels for the webgpu backend. */
export function optimWebGpuKernels(): Record<string, GpuKernelFunc> {
  return {
    [OPTIM.lerp]: ({ inputs, backend, attrs }) => {
      const { a, b } = inputs;
      const p = withUniforms(
        flatProgram(
          "lerp",
          ["a", "b"],
          a!.shape,
          `  if (index < uniforms.size) { let x = a[index]; result[index] = x + (b[index] - x) * uniforms.w; }`,
        ),
        "w : f32,",
      );
      return backend.runWebGPUProgram(p, [a!, b!], "float32", f(attrs!.w as number));
    },
    [OPTIM.adamSecondMoment]: ({ inputs, backend, attrs }) => {
      const { v, g } = inputs;
      const beta2 = attrs!.beta2 as number;
      const p = withUniforms(
        flatProgram(
          "adam_v",
          ["v", "g"],
          v!.shape,
          `  if (index < uniforms.size) {
    let gi = g[index];
    result[index] = v[index] * uniforms.beta2 + gi * gi * uniforms.oneMinusBeta2;
  }`,
        ),
        "beta2 : f32, oneMinusBeta2 : f32,",
      );
      return backend.runWebGPUProgram(p, [v!, g!], "float32", f(beta2, 1 - beta2));
    },
    [OPTIM.adamApply]: ({ inputs, backend, attrs }) => {
      const { p: param, m, v } = inputs;
      const a = attrs as { stepSize: number; bc2Sqrt: number; eps: number };
      const p = withUniforms(
        flatProgram(
          "adam_apply",
          ["p", "m", "v"],
          param!.shape,
          `  if (index < uniforms.size) {
    let denom = sqrt(v[index]) / uniforms.bc2Sqrt + uniforms.eps;
    result[index] = p[index] - m[index] / denom * uniforms.stepSize;
  }`,
        ),
        "stepSize : f32, bc2Sqrt : f32, eps : f32,",
      );
      return backend.runWebGPUProgram(
        p,
        [param!, m!, v!],
        "float32",
        f(a.stepSize, a.bc2Sqrt, a.eps),
      );
    },
  };
}
