/**
 * A pool of float32 output buffers for the `native` backend.
 *
 * A fresh `new Float32Array(n)` of a few megabytes costs more than the arithmetic that fills it:
 * the allocator maps new pages, the kernel zeroes them, and the first write faults each one in
 * (measured here: 2.3 ms to allocate 4 MB, against about 1 ms for a multiply over it). A training
 * step allocates the same shapes every iteration, so the backend hands a disposed tensor's buffer
 * to the next kernel that needs one of the same length.
 *
 * Safety rules, enforced by the backend's `write`, `move`, `readSync` and `disposeData`:
 *
 * - only buffers this pool allocated are ever reused (never an array a user passed to
 *   `tf.tensor`);
 * - a buffer registered to a second tensor, or registered through a view (a kernel that
 *   returns `values.subarray(...)` of its input), is pinned and never reused;
 * - reading a pooled tensor (`data()`, `dataSync()`) returns a copy, so an array a user holds
 *   never changes after the tensor is disposed.
 *
 * @module
 */

/** Buffers shorter than this come from `new Float32Array` (cheap at that size). */
export const POOL_MIN_LENGTH = 4096;

const FRESH = 0, REGISTERED = 1, PINNED = 2;

/** The pool (one per process, used by the `native` backend's kernels). */
export class BufferPool {
  #free = new Map<number, Float32Array[]>();
  #state = new WeakMap<ArrayBuffer, number>();
  #bytes = 0;
  /** Bytes held in free lists at most; beyond it released buffers go to the garbage collector. */
  maxBytes: number;
  /** Counters for benchmarks and tests. */
  readonly stats = { allocated: 0, reused: 0, pinned: 0 };

  constructor(maxBytes = defaultMaxBytes()) {
    this.maxBytes = maxBytes;
  }

  /** A buffer of `n` floats whose contents are unspecified: the caller writes every element. */
  alloc(n: number): Float32Array {
    if (n < POOL_MIN_LENGTH) return new Float32Array(n);
    const list = this.#free.get(n);
    const reused = list?.pop();
    if (reused) {
      this.#bytes -= reused.byteLength;
      this.stats.reused++;
      return reused;
    }
    const a = new Float32Array(n);
    this.#state.set(a.buffer, FRESH);
    this.stats.allocated++;
    return a;
  }

  /** A buffer of `n` zeros. */
  zeros(n: number): Float32Array {
    const a = this.alloc(n);
    if (a.length >= POOL_MIN_LENGTH) a.fill(0);
    return a;
  }

  /** Whether `values` lives in a buffer this pool allocated. */
  owns(values: unknown): boolean {
    return values instanceof Float32Array && this.#state.has(values.buffer as ArrayBuffer);
  }

  /** Called when `values` becomes a tensor's storage. */
  register(values: unknown): void {
    if (!(values instanceof Float32Array)) return;
    const buf = values.buffer as ArrayBuffer;
    const s = this.#state.get(buf);
    if (s === undefined || s === PINNED) return;
    const whole = values.byteOffset === 0 && values.byteLength === buf.byteLength;
    if (s === FRESH && whole) this.#state.set(buf, REGISTERED);
    else {
      this.#state.set(buf, PINNED);
      this.stats.pinned++;
    }
  }

  /** Called when the tensor whose storage is `values` is gone; reuses the buffer if it may. */
  release(values: unknown): void {
    if (!(values instanceof Float32Array)) return;
    const buf = values.buffer as ArrayBuffer;
    if (this.#state.get(buf) !== REGISTERED) return;
    if (values.byteOffset !== 0 || values.byteLength !== buf.byteLength) return;
    this.#state.set(buf, FRESH);
    if (this.#bytes + buf.byteLength > this.maxBytes) return;
    let list = this.#free.get(values.length);
    if (!list) this.#free.set(values.length, list = []);
    list.push(values);
    this.#bytes += buf.byteLength;
  }

  /** Bytes held in free lists. */
  get freeBytes(): number {
    return this.#bytes;
  }

  /** Drops every free buffer. */
  clear(): void {
    this.#free.clear();
    this.#bytes = 0;
  }
}

/** An eighth of the machine's memory, at most 2 GiB (1 GiB when the size is unknown). */
function defaultMaxBytes(): number {
  try {
    return Math.min(2 * 2 ** 30, Deno.systemMemoryInfo().total / 8);
  } catch {
    return 2 ** 30;
  }
}

/** The `native` backend's pool. */
export const bufferPool: BufferPool = new BufferPool();
