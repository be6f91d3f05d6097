/**
 * The seam between our WGSL kernels and tfjs-backend-webgpu: a program object that the backend's
 * `runWebGPUProgram` compiles (once per `shaderKey`), binds and dispatches, exactly like its stock
 * programs (`tfjs-backend-webgpu/src/webgpu_program.ts`: `WebGPUProgram`, `makeShader`).
 *
 * What the backend adds around `getUserCode()` (tfjs-backend-webgpu 4.22 `makeShader`):
 *
 * - `@binding(0)`: `result: array<f32>` (the output), `@binding(1 + i)`: one `array<f32>` per
 *   name in `variableNames`, then `uniforms` (shapes and strides of every buffer, then the
 *   program's own `uniforms` fields);
 * - private `localId`, `localIndex`, `globalId`, `workgroupId`, `numWorkgroups`;
 * - an entry point `_start` with the program's `workgroupSize` that calls `main()` or, for a flat
 *   `dispatchLayout` (only `x`), `main(index)` with the global linear index.
 *
 * Our programs bake every size into the WGSL source as constants (the GEMM tiles divide by
 * channel counts; constant divisors compile to multiplications), so their `shaderKey` names the
 * shapes; a U-Net has a few dozen distinct shapes, each compiled once per process.
 *
 * @module
 */
import type { tf } from "../../deps.ts";

/** The fields of tfjs-backend-webgpu's `WebGPUProgram` that our programs set. */
export interface GpuProgram {
  /** Names of the input bindings, in `runWebGPUProgram`'s input order. */
  variableNames: string[];
  /** Output tensor shape. */
  outputShape: number[];
  /** Pipeline cache key: must change whenever the generated source changes. */
  shaderKey: string;
  /** Which output dimensions map to which dispatch axis (only `x`: `main(index)`). */
  dispatchLayout: { x: number[]; y?: number[]; z?: number[] };
  /** Workgroups per axis. */
  dispatch: [number, number, number];
  /** Invocations per workgroup. */
  workgroupSize: [number, number, number];
  /**
   * Elements per word of each input binding (1: `array<f32>`, 4: `array<vec4<f32>>`); default
   * all 1. A vec4 binding's length must be a multiple of 4.
   */
  variableComponents?: number[];
  /** Elements per word of the output binding (4: `result` is an `array<vec4<f32>>`); default 1. */
  outputComponent?: number;
  /** Extra uniform fields (WGSL struct members), filled by `runWebGPUProgram`'s last argument. */
  uniforms?: string;
  /** Adds a `size` uniform (the output's element count). */
  size?: boolean;
  /** The WGSL body: module-scope declarations and `fn main(...)`. */
  getUserCode(): string;
}

/** A tfjs tensor handle as kernels see it. */
export type TensorInfo = tf.TensorInfo;

/** The parts of tfjs-backend-webgpu's `WebGPUBackend` that our kernels use. */
export interface WebGpuBackendLike {
  runWebGPUProgram(
    program: GpuProgram,
    inputs: TensorInfo[],
    outputDtype: tf.DataType,
    uniforms?: { type: string; data: number[] }[],
    output?: TensorInfo,
  ): TensorInfo;
  disposeData(dataId: tf.DataId, force?: boolean): boolean;
  makeTensorInfo(shape: number[], dtype: tf.DataType): TensorInfo;
  device: GPUDevice;
  queue: GPUQueue;
}

/** What tfjs passes to a kernel function registered for the webgpu backend. */
export interface GpuKernelArgs {
  inputs: Record<string, TensorInfo | undefined>;
  backend: WebGpuBackendLike;
  attrs?: Record<string, unknown>;
}

/** A kernel function for the webgpu backend. */
export type GpuKernelFunc = (args: GpuKernelArgs) => TensorInfo | TensorInfo[];

/** Element count of a shape. */
export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Workgroup size of {@linkcode flatProgram}s. */
export const FLAT_WORKGROUP = 64;

/**
 * A program with one invocation per output element (`main(index)`, `index < uniforms.size`):
 * the element-wise and reduction kernels. `body` is WGSL that computes element `index` and
 * stores it with `result[index] = ...`; `decls` is module-scope WGSL placed before `main`.
 */
export function flatProgram(
  key: string,
  variableNames: string[],
  outputShape: number[],
  body: string,
  decls = "",
  threads = sizeOf(outputShape),
): GpuProgram {
  return {
    variableNames,
    outputShape,
    shaderKey: `sida_${key}`,
    dispatchLayout: { x: outputShape.map((_, i) => i) },
    dispatch: [Math.ceil(threads / FLAT_WORKGROUP), 1, 1],
    workgroupSize: [FLAT_WORKGROUP, 1, 1],
    size: true,
    getUserCode: () => `${decls}\nfn main(index : i32) {\n${body}\n}\n`,
  };
}

/**
 * A {@linkcode flatProgram} over quads: invocation `index` computes elements 4·index..4·index+3
 * of the output, bound as an `array<vec4<f32>>` (`result[index] = vec4…`), for an output whose
 * size is a multiple of 4. `components` gives each input's elements per word (4: a vec4 array,
 * indexed by quad); `threads` (default: one per quad) is the number of invocations. On llvmpipe a storage load or store is a loop over the SIMD lanes, and a
 * vec4 access shares that loop among four words.
 */
export function quadProgram(
  key: string,
  variableNames: string[],
  components: number[],
  outputShape: number[],
  body: string,
  decls = "",
  threads = sizeOf(outputShape) / 4,
): GpuProgram {
  const size = sizeOf(outputShape);
  if (size % 4 !== 0) {
    throw new RangeError(`quad program ${key}: size ${size} is not a multiple of 4`);
  }
  return {
    ...flatProgram(
      `q4_${key}_${size}_${threads}`,
      variableNames,
      outputShape,
      `  _ = uniforms.NAN; // (every binding must be used: 'auto' layouts drop unused ones)
  if (index < ${threads}) {\n${body}\n  }`,
      decls,
      threads,
    ),
    variableComponents: components,
    outputComponent: 4,
  };
}

/** Formats a number as a WGSL f32 literal. */
export function f32Lit(v: number): string {
  if (!Number.isFinite(v)) throw new Error(`not a finite f32 literal: ${v}`);
  const s = String(Math.fround(v));
  return /[.e]/.test(s) ? `f32(${s})` : `f32(${s}.0)`;
}

/**
 * True when the environment variable `name` switches something off (`0`, `false`, `off`, `no`,
 * any case); false when it is unset, says anything else, or cannot be read (no `--allow-env`).
 */
export function envSaysOff(name: string): boolean {
  let v: string | undefined;
  try {
    v = Deno.env.get(name);
  } catch {
    return false;
  }
  return v !== undefined && /^(0|false|off|no)$/i.test(v.trim());
}
