/**
 * The `native` backend's data-movement and reduction kernels (`csrc/sida_copy.c`).
 *
 * @module
 */
import type { NativeKernelFunc } from "./gemm_kernels.ts";

/** Kernels this module provides, given the cpu kernels to fall back on. */
export function copyKernels(
  _fallback: (name: string) => NativeKernelFunc,
): Record<string, NativeKernelFunc> {
  return {};
}
