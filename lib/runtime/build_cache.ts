/**
 * Where C code compiled on first use is cached, and the hash that names a build: shared by the
 * native kernels (`native/ckernels.ts`) and the MPI shim (`mpi.ts`).
 *
 * @module
 */

/** 64-bit FNV-1a of `text`, as 16 hex digits (names a build by its source and compiler). */
export function fnv1a(text: string): string {
  let h = 0xcbf29ce484222325n;
  for (let i = 0; i < text.length; i++) {
    h ^= BigInt(text.charCodeAt(i));
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, "0");
}

/** The build cache folder: `SIDA_CACHE_DIR`, else `$XDG_CACHE_HOME/sida`, else `~/.cache/sida`. */
export function cacheDir(): string {
  const env = (k: string) => Deno.env.get(k);
  if (env("SIDA_CACHE_DIR")) return env("SIDA_CACHE_DIR")!;
  if (env("XDG_CACHE_HOME")) return `${env("XDG_CACHE_HOME")}/sida`;
  return `${env("HOME") ?? "/tmp"}/.cache/sida`;
}
