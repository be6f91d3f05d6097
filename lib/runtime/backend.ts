/**
 * Backend selection: WebGPU on a hardware GPU adapter; `native` (tfjs-cpu with BLAS kernels
 * through FFI, see `native/backend.ts`) when there is no adapter or only a software fallback one
 * (for example Mesa's llvmpipe); tfjs' pure-JS `cpu` backend as the last fallback.
 *
 * @example
 * ```ts
 * import { initBackend } from "./backend.ts";
 * const info = await initBackend();      // or initBackend("native"), initBackend("cpu")
 * console.log(info.name, info.adapter);
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import { registerNativeBackend } from "./native/backend.ts";
import { cKernelsUnavailableReason, loadCKernels } from "./native/ckernels.ts";
import { registerWebGpuKernels, webGpuKernelsDisabledByEnv } from "./webgpu/backend.ts";
import { hostCacheDisabledByEnv, installHostCaches } from "./webgpu/host_cache.ts";
import { type GemmTuning, gemmTuning } from "./webgpu/gemm.ts";

function cKernelsSummary(): string {
  const c = loadCKernels();
  return c
    ? `C kernels on ${c.threads} thread${c.threads === 1 ? "" : "s"}`
    : `no C kernels: ${cKernelsUnavailableReason()}`;
}

/** Backend names accepted by {@linkcode initBackend} and by every task's `--backend` flag. */
export const BACKEND_NAMES = ["webgpu", "native", "cpu"] as const;

/** A backend name accepted by {@linkcode initBackend}. */
export type BackendName = typeof BACKEND_NAMES[number];

/**
 * The GEMM style for an adapter: `setting` (by default the environment's `SIDA_WEBGPU_GEMM`,
 * `tiled` or `register`) when set, else `register` on a software adapter and `tiled` on a GPU.
 */
export function gemmStyleFor(
  isFallbackAdapter: boolean,
  setting: string | undefined = envGemmStyle(),
): GemmTuning["style"] {
  const v = setting?.trim();
  if (v) {
    if (v !== "tiled" && v !== "register") {
      throw new BackendError(`SIDA_WEBGPU_GEMM must be 'tiled' or 'register', not '${v}'`);
    }
    return v;
  }
  return isFallbackAdapter ? "register" : "tiled";
}

function envGemmStyle(): string | undefined {
  try {
    return Deno.env.get("SIDA_WEBGPU_GEMM");
  } catch {
    return undefined;
  }
}

/** What {@linkcode initBackend} chose. */
export interface BackendInfo {
  /** The tfjs backend now active. */
  name: BackendName;
  /** A description of the GPU adapter (vendor, architecture, device), when `name` is `webgpu`. */
  adapter?: string;
  /** True when the WebGPU adapter is a software fallback (for example Mesa's llvmpipe). */
  isFallbackAdapter?: boolean;
  /**
   * On `webgpu`: `"sida"` when our WGSL kernels (`webgpu/`) replace tfjs' convolutions and
   * provide the fused kernels, `"tfjs"` when `SIDA_WEBGPU_KERNELS=0` keeps tfjs' stock ones.
   */
  gpuKernels?: "sida" | "tfjs";
  /**
   * On `webgpu` with our kernels: the matrix-product style of the convolutions and matrix
   * products (`webgpu/gemm.ts`): `tiled` (workgroup memory) on a GPU, `register` on a software
   * adapter; `SIDA_WEBGPU_GEMM=tiled|register` overrides.
   */
  gemmStyle?: GemmTuning["style"];
  /** The BLAS library behind the `native` backend (path and configuration). */
  blas?: string;
  /**
   * The `native` backend's C kernels: their thread count, or why they are not in use (the
   * backend then runs its TypeScript loops).
   */
  cKernels?: string;
  /** Why the first choice was not taken, when a fallback happened. */
  note?: string;
}

/** Error for a bad backend request (unknown name, or a backend that cannot start). */
export class BackendError extends Error {
  override name = "BackendError";
}

let current: BackendInfo | undefined;

/** The backend chosen by the last {@linkcode initBackend} call, if any. */
export function currentBackend(): BackendInfo | undefined {
  return current;
}

/**
 * Makes sure `XDG_RUNTIME_DIR` is set: Deno's WebGPU (wgpu on Vulkan) prints an error and may
 * fail to start without it. Uses a private folder under the system temp directory.
 */
export function ensureXdgRuntimeDir(): void {
  try {
    if (Deno.env.get("XDG_RUNTIME_DIR")) return;
    const dir = `${Deno.env.get("TMPDIR") ?? "/tmp"}/sida-xdg-${Deno.uid?.() ?? "user"}`;
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    Deno.env.set("XDG_RUNTIME_DIR", dir);
  } catch {
    // No env or write permission: WebGPU may still work; nothing else to do.
  }
}

/**
 * On Linux, makes Deno's WebGPU use only its Vulkan backend unless the user chose backends with
 * `DENO_WEBGPU_BACKEND`; returns the value in effect.
 *
 * With all backends (Deno's default), `requestAdapter` also starts wgpu's OpenGL backend, which
 * loads Mesa's EGL and its DRI driver (with LLVM). When an isolate that asked for an adapter ends
 * (a Worker, or a test file of `deno test --parallel`), EGL is terminated and Mesa `dlclose`s the
 * driver on that isolate's thread. If the process exits meanwhile, the main thread runs the exit
 * handlers and destructors of the libraries being unmapped: a core dump showed the main thread
 * jumping to an unmapped exit handler while the other thread was in `libEGL_mesa` → `dlclose` →
 * `munmap(libelf)`; other runs aborted with "corrupted size vs. prev_size in fastbins" or
 * "malloc_consolidate(): invalid chunk size" (the same libraries destroyed twice). A process whose
 * Workers only called `requestAdapter` crashed at exit in 5 of 60 runs with all backends and in 0
 * of 80 with `vulkan` (`docs/reliability.md`). The compute shaders we run need Vulkan (or Metal,
 * D3D12) anyway; WebGPU over OpenGL is not a backend we use.
 */
export function preferVulkanWebGpu(): string | undefined {
  try {
    const chosen = Deno.env.get("DENO_WEBGPU_BACKEND");
    if (chosen !== undefined || Deno.build.os !== "linux") return chosen;
    Deno.env.set("DENO_WEBGPU_BACKEND", "vulkan");
    return "vulkan";
  } catch {
    return undefined; // no env permission: Deno's default backends
  }
}

interface AdapterProbe {
  adapter?: string;
  isFallbackAdapter?: boolean;
  error?: string;
}

async function probeWebGpu(): Promise<AdapterProbe> {
  ensureXdgRuntimeDir();
  preferVulkanWebGpu();
  const gpu = (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
  if (!gpu) return { error: "this runtime has no WebGPU (navigator.gpu is undefined)" };
  let adapter: GPUAdapter | null = null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    return { error: `requestAdapter failed: ${(e as Error).message}` };
  }
  if (!adapter) return { error: "no WebGPU adapter found" };
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  const parts = [info.vendor, info.architecture, info.device, info.description]
    .filter((s) => s && s.length > 0);
  const fallback = info.isFallbackAdapter ??
    (adapter as GPUAdapter & { isFallbackAdapter?: boolean }).isFallbackAdapter ?? false;
  return { adapter: parts.join(" ") || "unknown adapter", isFallbackAdapter: fallback };
}

/** Registers and starts the `native` backend; the error message when it cannot start. */
async function startNative(): Promise<{ blas?: string; error?: string }> {
  let description: string;
  try {
    const blas = registerNativeBackend();
    description = `${blas.description} from ${blas.path}`;
  } catch (e) {
    return { error: (e as Error).message.split("\n")[0] };
  }
  const ok = await tf.setBackend("native").catch(() => false);
  if (!ok) return { error: "tfjs could not start the native backend" };
  await tf.ready();
  return { blas: description };
}

/**
 * Chooses and starts a tfjs backend.
 *
 * With no name (or `"auto"`): `webgpu` on a hardware WebGPU adapter; `native` when there is no
 * adapter or only a software fallback one (`isFallbackAdapter`, e.g. llvmpipe), or when WebGPU
 * fails to start; `cpu` when the native backend cannot start either (no BLAS library). The
 * environment variable `SIDA_BACKEND` overrides the automatic choice. Asking for `webgpu` or
 * `native` explicitly when it cannot start is an error that says why.
 *
 * @param name `"webgpu"`, `"native"`, `"cpu"`, `"auto"` or undefined.
 * @returns the chosen backend, the adapter's description, whether it is a software fallback, the
 *   BLAS library (for `native`), and why an earlier choice was skipped.
 */
export async function initBackend(name?: string): Promise<BackendInfo> {
  let wanted = name ?? "auto";
  if (wanted === "auto") {
    const fromEnv = Deno.env.get("SIDA_BACKEND");
    if (fromEnv) wanted = fromEnv;
  }
  if (wanted !== "auto" && !(BACKEND_NAMES as readonly string[]).includes(wanted)) {
    throw new BackendError(
      `unknown backend '${wanted}' (expected one of: ${BACKEND_NAMES.join(", ")}, auto)`,
    );
  }
  const notes: string[] = [];
  let probe: AdapterProbe | undefined;
  if (wanted === "webgpu" || wanted === "auto") {
    probe = await probeWebGpu();
    const software = !probe.error && probe.isFallbackAdapter;
    if (!probe.error && (wanted === "webgpu" || !software)) {
      const ok = await tf.setBackend("webgpu").catch(() => false);
      if (ok) {
        await tf.ready();
        // Reused uniforms and bind groups (webgpu/host_cache.ts), for tfjs' kernels and ours.
        if (!hostCacheDisabledByEnv()) installHostCaches(tf.backend());
        const stock = webGpuKernelsDisabledByEnv();
        if (!stock) {
          gemmTuning.style = gemmStyleFor(probe.isFallbackAdapter ?? false);
          registerWebGpuKernels();
        }
        current = {
          name: "webgpu",
          adapter: probe.adapter,
          isFallbackAdapter: probe.isFallbackAdapter,
          gpuKernels: stock ? "tfjs" : "sida",
          ...(stock ? {} : { gemmStyle: gemmTuning.style }),
        };
        return current;
      }
      probe.error = "tfjs could not start its webgpu backend";
    }
    if (wanted === "webgpu") throw new BackendError(`backend 'webgpu' unavailable: ${probe.error}`);
    notes.push(
      probe.error
        ? `webgpu unavailable (${probe.error})`
        : `webgpu adapter ${probe.adapter} is a software fallback`,
    );
  }
  if (wanted === "native" || wanted === "auto") {
    const native = await startNative();
    if (!native.error) {
      current = {
        name: "native",
        blas: native.blas,
        cKernels: cKernelsSummary(),
        ...(probe?.adapter ? { adapter: probe.adapter } : {}),
        ...(probe?.isFallbackAdapter !== undefined
          ? { isFallbackAdapter: probe.isFallbackAdapter }
          : {}),
        ...(notes.length ? { note: notes.join("; ") } : {}),
      };
      return current;
    }
    if (wanted === "native") {
      throw new BackendError(`backend 'native' unavailable: ${native.error}`);
    }
    notes.push(`native unavailable (${native.error})`);
  }
  if (!(await tf.setBackend("cpu"))) throw new BackendError("tfjs could not start its cpu backend");
  await tf.ready();
  current = { name: "cpu", ...(notes.length ? { note: notes.join("; ") } : {}) };
  return current;
}

/** One line describing a backend choice, for a task to print once at start-up. */
export function describeBackend(info: BackendInfo): string {
  if (info.name === "webgpu") {
    const kind = info.isFallbackAdapter ? "software fallback adapter" : "hardware adapter";
    const k = info.gpuKernels === "tfjs"
      ? ", tfjs kernels"
      : info.gemmStyle
      ? `, ${info.gemmStyle} GEMMs`
      : "";
    return `backend: webgpu on ${info.adapter} (${kind}${k})`;
  }
  if (info.name === "native") {
    const c = info.cKernels ? `, ${info.cKernels}` : "";
    return `backend: native (tfjs-cpu + ${info.blas ?? "BLAS"}${c})${
      info.note ? ` (${info.note})` : ""
    }`;
  }
  return `backend: cpu${info.note ? ` (${info.note})` : ""}`;
}
