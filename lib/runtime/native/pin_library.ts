/**
 * Keeps a shared library that `Deno.dlopen` loaded in the process until it exits.
 *
 * Deno closes (`dlclose`) a `Deno.dlopen` handle when the isolate that opened it ends: a Worker,
 * or a test file of `deno test --parallel` (test files run as isolates on threads of one
 * process). When the last handle goes, glibc unloads the library and its dependencies, running
 * their destructors, and the next isolate loads and initialises them again: with `LD_DEBUG=files`,
 * six Workers that each registered the `native` backend ran OpenBLAS', libgfortran's, libgomp's
 * and our kernels' constructors and destructors five times each, on whichever thread dropped the
 * last handle while other threads ran. With 2 OpenMP threads that spin after a parallel region
 * (`OMP_WAIT_POLICY=ACTIVE`), the process died of SIGSEGV every time, the second thread executing
 * libgomp's code after the unload had unmapped it. OpenBLAS' destructor (`blas_shutdown`) frees
 * its buffers and thread-local memory, and crashes of that unload/reload sequence are known
 * (OpenBLAS issues #1692 and #1942). (The heap corruption at the exit of
 * `deno test --parallel tests/` had another cause, wgpu's OpenGL backend: see
 * `docs/reliability.md` and `preferVulkanWebGpu` in `../backend.ts`.)
 *
 * {@linkcode pinLibrary} re-opens the already loaded library with `RTLD_NOLOAD | RTLD_NODELETE`
 * (glibc): the library (and what it depends on) is then loaded and initialised once per process
 * and finalised once, at exit. Linux with glibc only; elsewhere it does nothing.
 *
 * @module
 */

/** glibc's `dlopen` flags (`<dlfcn.h>`). */
const RTLD_LAZY = 0x1, RTLD_NOLOAD = 0x4, RTLD_NODELETE = 0x1000;

let libc:
  | Deno.DynamicLibrary<{ dlopen: { parameters: ["buffer", "i32"]; result: "pointer" } }>
  | null
  | undefined;

/**
 * Marks the loaded library `path` (the name or path it was opened with) as never to be unloaded.
 * Returns whether it is pinned now.
 *
 * @example
 * ```ts
 * import { pinLibrary } from "./pin_library.ts";
 * const lib = Deno.dlopen("libopenblas.so.0", {});
 * pinLibrary("libopenblas.so.0"); // true on Linux/glibc: lib.close() no longer unloads it
 * ```
 */
export function pinLibrary(path: string): boolean {
  if (Deno.build.os !== "linux") return false;
  if (libc === undefined) {
    try {
      libc = Deno.dlopen("libc.so.6", {
        dlopen: { parameters: ["buffer", "i32"], result: "pointer" },
      });
    } catch {
      libc = null; // not glibc (musl's dlclose never unloads anyway), or no FFI permission
    }
  }
  if (!libc) return false;
  const name = new TextEncoder().encode(`${path}\0`);
  // The handle is deliberately never closed: it is the reference that keeps the library.
  return libc.symbols.dlopen(name, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE) !== null;
}
