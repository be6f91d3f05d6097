/**
 * Less host work per dispatch on tfjs' `webgpu` backend: its program runner
 * (`runWebGPUProgram` → `recordAndSubmit` in tfjs-backend-webgpu 4.22) writes a fresh uniform
 * buffer and creates a fresh bind group for every call, and asks the pipeline for its bind-group
 * layout each time. A training loop repeats the same calls on the same pooled buffers, so all three
 * can be reused:
 *
 * - **uniforms**: the backend's `makeUniforms` is wrapped so that a uniform block with the same
 *   contents (shapes, strides, sizes, program constants) reuses the buffer written the first
 *   time, instead of acquiring one and writing it again;
 * - **bind-group layouts**: each pipeline the backend caches answers `getBindGroupLayout(i)` with
 *   one object per index, so that bind groups can be keyed by it;
 * - **bind groups**: the device's `createBindGroup` returns the bind group made before for the
 *   same layout and the same buffers, offsets and sizes.
 *
 * Both caches are bounded (least recently used out). A buffer stays valid while the backend lives:
 * tfjs returns released tensor buffers to its pool and destroys only staging buffers (never bound
 * here) and, on `dispose`, everything, after which the backend and its device, keys of these
 * caches, are gone too. An evicted uniform buffer goes back through the backend's own
 * after-submit release, so no queued dispatch loses it. `SIDA_WEBGPU_HOST_CACHE=0` leaves tfjs'
 * runner as it is.
 *
 * @example
 * ```ts
 * import { tf } from "../../deps.ts";
 * import { installHostCaches } from "./host_cache.ts";
 * await tf.setBackend("webgpu");
 * const stats = installHostCaches(tf.backend());
 * // … run kernels …
 * console.log(stats.bindGroupHits, stats.bindGroupMisses);
 * ```
 *
 * @module
 */

import { envSaysOff } from "./program.ts";

/** Counters of one backend's caches. */
export interface HostCacheStats {
  /** Uniform blocks found in the cache (no buffer write). */
  uniformHits: number;
  /** Uniform blocks written to a new buffer. */
  uniformMisses: number;
  /** Bind groups found in the cache. */
  bindGroupHits: number;
  /** Bind groups created (and cached). */
  bindGroupMisses: number;
  /** Bind groups not cacheable (a resource other than a buffer binding). */
  bindGroupUncached: number;
}

/** Most uniform blocks and bind groups kept (each). */
export const HOST_CACHE_LIMIT = 4096;

interface UniformField {
  type: string;
  data: number[];
}

interface UniformBinding {
  offset: number;
  size: number;
  buffer: GPUBuffer;
}

/** The parts of tfjs' WebGPUBackend used here. */
interface RunnerBackend {
  device: GPUDevice;
  pipelineCache: Record<string, unknown>;
  uniformPendingDisposal: GPUBuffer[];
  makeUniforms(fields: UniformField[]): UniformBinding;
}

const installed = new WeakMap<object, HostCacheStats>();

/** True when `SIDA_WEBGPU_HOST_CACHE` turns the caches off (`0`, `false`, `off`, `no`). */
export function hostCacheDisabledByEnv(): boolean {
  return envSaysOff("SIDA_WEBGPU_HOST_CACHE");
}

/** The counters of `backend`'s caches, or undefined when they are not installed. */
export function hostCacheStats(backend: object): HostCacheStats | undefined {
  return installed.get(backend);
}

/** A Map used as a least-recently-used cache: `get` refreshes, `put` evicts the oldest. */
class Lru<V> {
  readonly #map = new Map<string, V>();
  constructor(readonly limit: number, readonly onEvict: (v: V) => void = () => {}) {}
  get(key: string): V | undefined {
    const v = this.#map.get(key);
    if (v !== undefined) {
      this.#map.delete(key);
      this.#map.set(key, v);
    }
    return v;
  }
  put(key: string, v: V): void {
    this.#map.set(key, v);
    if (this.#map.size > this.limit) {
      const [oldest, old] = this.#map.entries().next().value as [string, V];
      this.#map.delete(oldest);
      this.onEvict(old);
    }
  }
  get size(): number {
    return this.#map.size;
  }
}

/** Numbers objects by identity (buffers, layouts) for cache keys. */
class Ids {
  readonly #ids = new WeakMap<object, number>();
  #next = 1;
  of(o: object): number {
    let id = this.#ids.get(o);
    if (id === undefined) this.#ids.set(o, id = this.#next++);
    return id;
  }
}

function isRunnerBackend(b: unknown): b is RunnerBackend {
  const r = b as Partial<RunnerBackend> | null;
  return !!r && typeof r.makeUniforms === "function" && !!r.device &&
    typeof r.pipelineCache === "object" && Array.isArray(r.uniformPendingDisposal);
}

/** Gives `pipeline` one bind-group layout object per index. */
function memoizeLayouts(pipeline: unknown): void {
  const p = pipeline as GPUComputePipeline & { [memo]?: true };
  if (!p || typeof p.getBindGroupLayout !== "function" || p[memo]) return;
  const layouts = new Map<number, GPUBindGroupLayout>();
  const original = p.getBindGroupLayout.bind(p);
  Object.defineProperty(p, "getBindGroupLayout", {
    configurable: true,
    writable: true,
    value: (index: number) => {
      let l = layouts.get(index);
      if (!l) layouts.set(index, l = original(index));
      return l;
    },
  });
  p[memo] = true;
}
const memo = Symbol("sida.layoutsMemoized");

/**
 * Installs the caches on tfjs' webgpu backend `backend` (idempotent; a backend that does not look
 * like tfjs-webgpu 4.x's is left alone and gives undefined). Returns its counters.
 *
 * @param limit most entries of each cache.
 */
export function installHostCaches(
  backend: unknown,
  limit = HOST_CACHE_LIMIT,
): HostCacheStats | undefined {
  if (!isRunnerBackend(backend)) return undefined;
  const have = installed.get(backend);
  if (have) return have;
  const stats: HostCacheStats = {
    uniformHits: 0,
    uniformMisses: 0,
    bindGroupHits: 0,
    bindGroupMisses: 0,
    bindGroupUncached: 0,
  };
  const ids = new Ids();

  // Uniforms: one buffer per distinct block.
  const uniforms = new Lru<UniformBinding>(
    limit,
    (u) => backend.uniformPendingDisposal.push(u.buffer),
  );
  const makeUniforms = backend.makeUniforms.bind(backend);
  backend.makeUniforms = (fields: UniformField[]) => {
    let key = "";
    for (const f of fields) key += `${f.type[0]}${f.data.join(",")};`;
    const hit = uniforms.get(key);
    if (hit) {
      stats.uniformHits++;
      return hit;
    }
    stats.uniformMisses++;
    const made = makeUniforms(fields);
    // The runner queued it for release after the next submit; it is ours to keep now.
    const pending = backend.uniformPendingDisposal;
    const at = pending.lastIndexOf(made.buffer);
    if (at >= 0) pending.splice(at, 1);
    uniforms.put(key, made);
    return made;
  };

  // Layouts: existing and future pipelines.
  for (const p of Object.values(backend.pipelineCache)) memoizeLayouts(p);
  backend.pipelineCache = new Proxy(backend.pipelineCache, {
    set(target, key, value) {
      memoizeLayouts(value);
      return Reflect.set(target, key, value);
    },
  });

  // Bind groups: one per (layout, buffers, offsets, sizes).
  const device = backend.device;
  const groups = new Lru<GPUBindGroup>(limit);
  const createBindGroup = device.createBindGroup.bind(device);
  Object.defineProperty(device, "createBindGroup", {
    configurable: true,
    writable: true, // (profilers wrap it in turn)
    value: (desc: GPUBindGroupDescriptor) => {
      let key = `${ids.of(desc.layout)}|`;
      for (const e of desc.entries) {
        const r = e.resource as GPUBufferBinding;
        if (!r || !(r.buffer instanceof GPUBuffer)) {
          stats.bindGroupUncached++;
          return createBindGroup(desc);
        }
        key += `${e.binding}:${ids.of(r.buffer)}:${r.offset ?? 0}:${r.size ?? -1};`;
      }
      const hit = groups.get(key);
      if (hit) {
        stats.bindGroupHits++;
        return hit;
      }
      stats.bindGroupMisses++;
      const made = createBindGroup(desc);
      groups.put(key, made);
      return made;
    },
  });
  installed.set(backend, stats);
  return stats;
}
