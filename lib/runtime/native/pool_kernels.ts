/**
 * The `native` backend's max-pooling and ReLU kernels.
 *
 * tfjs-backend-cpu's `MaxPoolGrad` first builds a buffer of arg-max positions through
 * `TensorBuffer.get` (several index conversions per pixel) and then, for every input pixel, loops
 * over every output window that contains it: most of a small classifier's training step. Here the
 * arg-max of each window is found once on the NHWC array and the output gradient is added at that
 * position. Ties go to the first maximum in row-major window order, and windows whose values are
 * all NaN pass no gradient (and pool to −Infinity), as in tfjs-cpu.
 *
 * @module
 */
import { tf } from "../../deps.ts";
import { type CpuBackend, f32, type NativeKernelFunc } from "./gemm_kernels.ts";
import { bufferPool } from "./buffer_pool.ts";
import { cKernels, UNARY } from "./ckernels.ts";

type PoolInfo = tf.backend_util.Conv2DInfo;

function poolInfo(shape: number[], attrs: Record<string, unknown>): PoolInfo {
  return tf.backend_util.computePool2DInfo(
    shape as [number, number, number, number],
    attrs.filterSize as number | [number, number],
    attrs.strides as number | [number, number],
    1,
    attrs.pad as "valid" | "same" | number,
    attrs.dimRoundingMode as "floor" | "round" | "ceil" | undefined,
  );
}

/**
 * Max-pools `x` (NHWC); with `dy`, instead returns the gradient w.r.t. `x` (each window's output
 * gradient added at its arg-max).
 */
export function maxPool2d(x: Float32Array, info: PoolInfo, dy?: Float32Array): Float32Array {
  const { batchSize, inHeight, inWidth, inChannels: C, outHeight, outWidth } = info;
  const { strideHeight, strideWidth, effectiveFilterHeight: fh, effectiveFilterWidth: fw } = info;
  const top = info.padInfo.top, left = info.padInfo.left;
  const out = dy
    ? bufferPool.zeros(x.length)
    : bufferPool.alloc(batchSize * outHeight * outWidth * C);
  const best = new Float64Array(C);
  const pos = new Int32Array(C);
  for (let b = 0; b < batchSize; b++) {
    const xb = b * inHeight * inWidth * C;
    for (let oy = 0; oy < outHeight; oy++) {
      const y0 = oy * strideHeight - top;
      const yMin = Math.max(0, y0), yMax = Math.min(inHeight, y0 + fh);
      for (let ox = 0; ox < outWidth; ox++) {
        const x0 = ox * strideWidth - left;
        const xMin = Math.max(0, x0), xMax = Math.min(inWidth, x0 + fw);
        best.fill(-Infinity);
        pos.fill(-1);
        for (let yy = yMin; yy < yMax; yy++) {
          for (let xx = xMin; xx < xMax; xx++) {
            const base = xb + (yy * inWidth + xx) * C;
            for (let c = 0; c < C; c++) {
              const v = x[base + c];
              if (v > best[c]) {
                best[c] = v;
                pos[c] = base + c;
              }
            }
          }
        }
        const o = ((b * outHeight + oy) * outWidth + ox) * C;
        if (dy) {
          for (let c = 0; c < C; c++) if (pos[c] >= 0) out[pos[c]] += dy[o + c];
        } else {
          // A window of NaNs (or an empty one) gives −Infinity, as in tfjs-cpu.
          for (let c = 0; c < C; c++) out[o + c] = best[c];
        }
      }
    }
  }
  return out;
}

/** Kernels this module provides, given the cpu kernels to fall back on. */
export function poolKernels(
  fallback: (name: string) => NativeKernelFunc,
): Record<string, NativeKernelFunc> {
  const make = (backend: CpuBackend, shape: number[], values: Float32Array) =>
    backend.makeTensorInfo(shape, "float32", values);
  return {
    MaxPool: (args) => {
      const { x } = args.inputs;
      const xv = f32(args.backend, x);
      if (!xv || x!.shape.length !== 4) return fallback("MaxPool")(args);
      const info = poolInfo(x!.shape, args.attrs ?? {});
      if (
        info.filterWidth === 1 && info.filterHeight === 1 &&
        tf.util.arraysEqual(info.inShape, info.outShape)
      ) {
        return fallback("MaxPool")(args); // identity: tfjs returns the input itself
      }
      return make(args.backend, info.outShape, maxPool2d(xv, info));
    },
    MaxPoolGrad: (args) => {
      const { dy, input } = args.inputs;
      const dv = f32(args.backend, dy), xv = f32(args.backend, input);
      if (!dv || !xv || input!.shape.length !== 4) return fallback("MaxPoolGrad")(args);
      const info = poolInfo(input!.shape, args.attrs ?? {});
      return make(args.backend, input!.shape, maxPool2d(xv, info, dv));
    },
    Relu: (args) => {
      const { x } = args.inputs;
      const xv = f32(args.backend, x);
      if (!xv) return fallback("Relu")(args);
      const y = bufferPool.alloc(xv.length);
      const c = cKernels();
      if (c) c.unary(UNARY.Relu, y, xv);
      else for (let i = 0; i < xv.length; i++) y[i] = xv[i] < 0 ? 0 : xv[i];
      return make(args.backend, x!.shape, y);
    },
    Step: (args) => {
      const { x } = args.inputs;
      const xv = f32(args.backend, x);
      if (!xv) return fallback("Step")(args);
      const alpha = (args.attrs?.alpha as number | undefined) ?? 0;
      const y = bufferPool.alloc(xv.length);
      const c = cKernels();
      if (c) c.unary(UNARY.Step, y, xv, alpha);
      else {
        for (let i = 0; i < xv.length; i++) {
          const v = xv[i];
          y[i] = v > 0 ? 1 : v !== v ? NaN : alpha;
        }
      }
      return make(args.backend, x!.shape, y);
    },
  };
}
