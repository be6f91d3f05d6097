/**
 * Fused kernels on WebGPU (filled in below).
 *
 * @module
 */
import type { GpuKernelFunc } from "./program.ts";

/** The fused kernels for the webgpu backend. */
export function fusedWebGpuKernels(): Record<string, GpuKernelFunc> {
  return {};
}
