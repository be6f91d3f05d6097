/**
 * Fused SiLU, group normalisation, softmax and nan_to_num: one tfjs kernel each (and one for each gradient)
 * on the `native` backend when its C kernels are loaded, instead of the five to ten element-wise
 * kernels (and twice as many in the gradient) that the composed forms cost. On every other
 * backend, and without the C kernels, the same functions compose tfjs ops.
 *
 * @example
 * ```ts
 * import { tf } from "../../deps.ts";
 * import { groupNorm, silu, softmax } from "./fused.ts";
 * const x = tf.randomNormal([2, 8, 8, 32]) as tf.Tensor4D;
 * const y = silu(groupNorm(x, tf.ones([32]), tf.zeros([32]), 8, 1e-5));
 * const w = softmax(tf.randomNormal([4, 16, 16]));
 * ```
 *
 * @module
 */
import { tf } from "../../deps.ts";
import { ATTENTION, attentionKernels } from "./attention_kernels.ts";
import { bufferPool } from "./buffer_pool.ts";
import { type CKernels, UNARY } from "./ckernels.ts";
import { f32, type NativeKernelFunc } from "./gemm_kernels.ts";

/** Kernel names. */
export const FUSED = {
  silu: "SidaSilu",
  siluGrad: "SidaSiluGrad",
  groupNorm: "SidaGroupNorm",
  groupNormGrad: "SidaGroupNormGrad",
  groupNormSilu: "SidaGroupNormSilu",
  groupNormSiluGrad: "SidaGroupNormSiluGrad",
  softmax: ATTENTION.softmax,
  softmaxGrad: ATTENTION.softmaxGrad,
  nanToNum: "SidaNanToNum",
} as const;

function fusedHere(name: string): boolean {
  return tf.getKernel(name, tf.getBackend()) !== undefined;
}

/** silu(x) = x · sigmoid(x). */
export function silu<T extends tf.Tensor>(x: T): T {
  if (x.dtype === "float32" && fusedHere(FUSED.silu)) {
    return tf.engine().runKernel(FUSED.silu, { x }) as T;
  }
  return tf.tidy(() => tf.mul(x, tf.sigmoid(x))) as T;
}

/** softmax over the last axis (as `tf.softmax(x)`). */
export function softmax<T extends tf.Tensor>(x: T): T {
  if (x.dtype === "float32" && x.rank >= 1 && fusedHere(FUSED.softmax)) {
    return tf.engine().runKernel(FUSED.softmax, { x }) as T;
  }
  return tf.softmax(x) as T;
}

/**
 * `torch.nan_to_num(x, nan, posinf, neginf)`: NaN → `nan`, +∞ → `posinf`, −∞ → `neginf`, every
 * other value unchanged. One kernel on `native` (it has no gradient: it cleans gradients).
 */
export function nanToNum<T extends tf.Tensor>(
  x: T,
  nan: number,
  posinf: number,
  neginf: number,
): T {
  if (x.dtype === "float32" && fusedHere(FUSED.nanToNum)) {
    return tf.engine().runKernel(
      FUSED.nanToNum,
      { x },
      { nan, posinf, neginf } as unknown as tf.NamedAttrMap,
    ) as T;
  }
  return tf.tidy(() => {
    const fill = (v: number) => tf.fill(x.shape, v, "float32");
    const inf = tf.isInf(x);
    const a = tf.where(tf.isNaN(x), fill(nan), x);
    const b = tf.where(tf.logicalAnd(inf, tf.greater(x, 0)), fill(posinf), a);
    return tf.where(tf.logicalAnd(inf, tf.less(x, 0)), fill(neginf), b);
  }) as T;
}

/**
 * Group normalisation of NHWC `x` over (H, W, C/G) per group, biased variance, then the
 * per-channel affine `γ`, `β` (as `torch.nn.functional.group_norm`).
 */
export function groupNorm(
  x: tf.Tensor4D,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  groups: number,
  eps: number,
): tf.Tensor4D {
  if (x.dtype === "float32" && fusedHere(FUSED.groupNorm)) {
    return tf.engine().runKernel(
      FUSED.groupNorm,
      { x, gamma, beta },
      { groups, eps } as unknown as tf.NamedAttrMap,
    ) as tf.Tensor4D;
  }
  return tf.tidy(() => {
    const [n, h, w, c] = x.shape;
    const g = groups;
    const xr = tf.reshape(x, [n, h * w, g, c / g]);
    const { mean, variance } = tf.moments(xr, [1, 3], true); // [n, 1, g, 1]
    // y = (x − μ)/σ·γ + β folded into one scale and one shift per (sample, channel).
    const scale = tf.mul(tf.rsqrt(tf.add(variance, eps)), tf.reshape(gamma, [1, 1, g, c / g]));
    const shift = tf.sub(tf.reshape(beta, [1, 1, g, c / g]), tf.mul(mean, scale));
    return tf.reshape(tf.add(tf.mul(xr, scale), shift), [n, h, w, c]) as tf.Tensor4D;
  });
}

/**
 * `silu(groupNorm(x, γ, β, groups, eps))` (EDM's `silu(norm(x))` in every U-Net block): one
 * kernel forward on backends that register `SidaGroupNormSilu` (webgpu), which neither writes nor
 * keeps the normalised tensor (its gradient recomputes it from x and the kept per-group
 * statistics); elsewhere the two functions above.
 */
export function groupNormSilu(
  x: tf.Tensor4D,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  groups: number,
  eps: number,
): tf.Tensor4D {
  if (x.dtype === "float32" && fusedHere(FUSED.groupNormSilu)) {
    const [y, stats] = tf.engine().runKernel(
      FUSED.groupNormSilu,
      { x, gamma, beta },
      { groups, eps } as unknown as tf.NamedAttrMap,
    ) as tf.Tensor[];
    stats.dispose(); // (the gradient keeps its own reference)
    return y as tf.Tensor4D;
  }
  return tf.tidy(() => silu(groupNorm(x, gamma, beta, groups, eps)));
}

let gradientsRegistered = false;

/**
 * Registers the fused kernels' gradients (backend-independent: tfjs' gradient registry is
 * global; once per process). Both the native and the webgpu kernel sets call it.
 */
export function registerFusedGradients(): void {
  if (gradientsRegistered) return;
  gradientsRegistered = true;
  tf.registerGradient({
    kernelName: FUSED.silu,
    inputsToSave: ["x"],
    gradFunc: (dy, saved) => {
      const [x] = saved;
      return { x: () => tf.engine().runKernel(FUSED.siluGrad, { dy: dy as tf.Tensor, x }) };
    },
  });
  tf.registerGradient({
    kernelName: FUSED.softmax,
    outputsToSave: [true],
    gradFunc: (dy, saved) => {
      const [y] = saved;
      return { x: () => tf.engine().runKernel(FUSED.softmaxGrad, { dy: dy as tf.Tensor, y }) };
    },
  });
  tf.registerGradient({
    kernelName: FUSED.groupNorm,
    inputsToSave: ["x", "gamma"],
    gradFunc: (dy, saved, attrs) => {
      const [x, gamma] = saved;
      const [dx, dgamma, dbeta] = tf.engine().runKernel(
        FUSED.groupNormGrad,
        { dy: dy as tf.Tensor, x, gamma },
        attrs,
      ) as tf.Tensor[];
      return { x: () => dx, gamma: () => dgamma, beta: () => dbeta };
    },
  });
  tf.registerGradient({
    kernelName: FUSED.groupNormSilu,
    inputsToSave: ["x", "gamma", "beta"],
    outputsToSave: [false, true], // the [N·G, 2] statistics [mean, 1/σ]
    gradFunc: (dys, saved, attrs) => {
      const [x, gamma, beta, stats] = saved;
      const dy = (dys as tf.Tensor[])[0];
      const [dx, dgamma, dbeta] = tf.engine().runKernel(
        FUSED.groupNormSiluGrad,
        { dy, x, gamma, beta, stats },
        attrs,
      ) as tf.Tensor[];
      return { x: () => dx, gamma: () => dgamma, beta: () => dbeta };
    },
  });
}

/** The fused kernels for the `native` backend (registered only with the C kernels). */
export function fusedKernels(c: CKernels): Record<string, NativeKernelFunc> {
  registerFusedGradients();
  const need = (v: Float32Array | undefined, what: string): Float32Array => {
    if (!v) throw new TypeError(`${what}: float32 inputs expected`);
    return v;
  };
  const dims = (shape: number[], groups: number): [number, number, number, number] => {
    if (shape.length !== 4) throw new RangeError(`group norm: rank-4 NHWC input expected`);
    const [n, h, w, ch] = shape;
    if (!Number.isInteger(groups) || groups < 1 || ch % groups !== 0) {
      throw new RangeError(`group norm: ${ch} channels cannot form ${groups} groups`);
    }
    return [n, h * w, ch, groups];
  };
  return {
    ...attentionKernels(),
    [FUSED.nanToNum]: ({ inputs, backend, attrs }) => {
      const x = need(f32(backend, inputs.x), "nan_to_num");
      const nan = Math.fround(attrs!.nan as number);
      const posinf = Math.fround(attrs!.posinf as number);
      const neginf = Math.fround(attrs!.neginf as number);
      const y = bufferPool.alloc(x.length);
      for (let i = 0; i < x.length; i++) {
        const v = x[i];
        y[i] = v !== v ? nan : v === Infinity ? posinf : v === -Infinity ? neginf : v;
      }
      return backend.makeTensorInfo(inputs.x!.shape, "float32", y);
    },
    [FUSED.silu]: ({ inputs, backend }) => {
      const x = need(f32(backend, inputs.x), "silu");
      const y = bufferPool.alloc(x.length);
      c.unary(UNARY.Silu, y, x);
      return backend.makeTensorInfo(inputs.x!.shape, "float32", y);
    },
    [FUSED.siluGrad]: ({ inputs, backend }) => {
      const x = need(f32(backend, inputs.x), "silu grad");
      const dy = need(f32(backend, inputs.dy), "silu grad");
      const dx = bufferPool.alloc(x.length);
      c.siluGrad(dx, dy, x);
      return backend.makeTensorInfo(inputs.x!.shape, "float32", dx);
    },
    [FUSED.groupNorm]: ({ inputs, backend, attrs }) => {
      const x = need(f32(backend, inputs.x), "group norm");
      const gamma = need(f32(backend, inputs.gamma), "group norm");
      const beta = need(f32(backend, inputs.beta), "group norm");
      const d = dims(inputs.x!.shape, attrs!.groups as number);
      const y = bufferPool.alloc(x.length);
      c.groupNorm(y, x, gamma, beta, d, attrs!.eps as number);
      return backend.makeTensorInfo(inputs.x!.shape, "float32", y);
    },
    [FUSED.groupNormGrad]: ({ inputs, backend, attrs }) => {
      const x = need(f32(backend, inputs.x), "group norm grad");
      const dy = need(f32(backend, inputs.dy), "group norm grad");
      const gamma = need(f32(backend, inputs.gamma), "group norm grad");
      const d = dims(inputs.x!.shape, attrs!.groups as number);
      const [n, , ch] = d;
      const dx = bufferPool.alloc(x.length);
      const gp = new Float64Array(n * ch), bp = new Float64Array(n * ch);
      c.groupNormGrad(dx, gp, bp, dy, x, gamma, d, attrs!.eps as number);
      const dgamma = new Float32Array(ch), dbeta = new Float32Array(ch);
      for (let k = 0; k < ch; k++) {
        let sg = 0, sb = 0;
        for (let i = 0; i < n; i++) {
          sg += gp[i * ch + k];
          sb += bp[i * ch + k];
        }
        dgamma[k] = sg;
        dbeta[k] = sb;
      }
      return [
        backend.makeTensorInfo(inputs.x!.shape, "float32", dx),
        backend.makeTensorInfo([ch], "float32", dgamma),
        backend.makeTensorInfo([ch], "float32", dbeta),
      ];
    },
  };
}
