/**
 * Keeps freed memory in the process instead of returning it to the operating system after every
 * large free (glibc `mallopt`): on virtual machines that reclaim freed guest memory, touching a
 * fresh page can cost 15–20 µs, so a new 8 MB array took 30–40 ms to fill where a reused one
 * takes 0.5 ms. tfjs-cpu's kernels and every read of a tensor allocate such arrays.
 *
 * Sets `M_MMAP_THRESHOLD` to 32 MiB (allocations below it come from the heap, where freed
 * blocks are reused) and `M_TRIM_THRESHOLD` to 2 GiB (the heap is not shrunk after frees). Linux
 * with glibc only; elsewhere, or with `SIDA_MALLOPT=0`, nothing changes.
 *
 * @module
 */

const M_TRIM_THRESHOLD = -1;
const M_MMAP_THRESHOLD = -3;

let done: boolean | undefined;

/**
 * Applies the malloc settings once per process; returns whether they are in effect.
 *
 * @example
 * ```ts
 * import { tuneMalloc } from "./malloc_tuning.ts";
 * tuneMalloc(); // true on Linux with glibc
 * ```
 */
export function tuneMalloc(): boolean {
  if (done !== undefined) return done;
  done = false;
  if (Deno.build.os !== "linux" || Deno.env.get("SIDA_MALLOPT") === "0") return done;
  try {
    const libc = Deno.dlopen("libc.so.6", {
      mallopt: { parameters: ["i32", "i32"], result: "i32" },
    });
    const a = libc.symbols.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
    const b = libc.symbols.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1);
    done = a === 1 && b === 1;
  } catch {
    // Not glibc (musl has no mallopt settings to change): nothing to do.
  }
  return done;
}
