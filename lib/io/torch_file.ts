/**
 * Reading PyTorch files safely: raw pickles (EDM/EDM2/SiD `*.pkl`, with each storage stored as a
 * nested legacy `torch.save` blob), zip-based `torch.save` files (`*.pt`, `*.pth`) and legacy
 * (pre-1.6) `torch.save` files. The result is an inert object tree ({@linkcode PyValue}, see
 * `pickle.ts`) whose tensors are {@linkcode TensorRef}s pointing into the file; nothing is
 * executed, and tensor bytes are read only by {@linkcode readTensor}, straight from the file at
 * their offset.
 *
 * @example
 * ```ts
 * import { openTorchFile, readTensor, stateDictOf } from "./torch_file.ts";
 * const f = openTorchFile("edm-cifar10-32x32-cond-vp.pkl");
 * try {
 *   const ema = (f.root as Map<unknown, unknown>).get("ema");
 *   for (const [name, ref] of stateDictOf(ema as never)) console.log(name, readTensor(ref).shape);
 * } finally {
 *   f.close();
 * }
 * ```
 *
 * @module
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { crc32 as zlibCrc32 } from "node:zlib";
import {
  bytesPerElement,
  type HostTensor,
  IoError,
  numElements,
  typedArrayFor,
} from "./host_tensor.ts";
import {
  type ByteSource,
  isPersistentRecord,
  LazyBytes,
  memorySource,
  NumpyArrayBuilder,
  PyDict,
  PyObject,
  PySet,
  PyTuple,
  type PyValue,
  sliceSource,
  storageDtype,
  StorageRef,
  TensorRef,
  unpickleNested,
} from "./pickle.ts";

/** Container formats {@linkcode openTorchFile} recognises. */
export type TorchFileFormat = "pickle" | "zip" | "legacy";

/** An opened PyTorch file: its object tree and the open file the tensors are read from. */
export interface TorchFile {
  /** The file name used in messages. */
  path: string;
  /** Which container it is. */
  format: TorchFileFormat;
  /** The unpickled object. */
  root: PyValue;
  /** The bytes (tensors read from here). */
  source: ByteSource;
  /** Closes the file; tensors can no longer be read afterwards. */
  close(): void;
}

/**
 * A read-only {@linkcode ByteSource} over a file, read with positional reads (never loaded as a
 * whole). Call `close` when done.
 *
 * @throws {IoError} when the file cannot be opened.
 */
export function fileSource(path: string): ByteSource & { close(): void } {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw new IoError(`${path}: cannot open: ${(e as Error).message.split("\n")[0]}`);
  }
  const size = fstatSync(fd).size;
  let closed = false;
  return {
    size,
    read(offset: number, length: number): Uint8Array {
      if (closed) throw new IoError(`${path}: read after close`);
      if (
        !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 ||
        length < 0 || offset + length > size
      ) {
        throw new IoError(
          `${path}: read of ${length} bytes at ${offset} is outside the file (${size} bytes)`,
        );
      }
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const n = readSync(fd, out, done, Math.min(length - done, 1 << 30), offset + done);
        if (n <= 0) throw new IoError(`${path}: unexpected end of file at ${offset + done}`);
        done += n;
      }
      return out;
    },
    close() {
      if (!closed) closeSync(fd);
      closed = true;
    },
  };
}

const ZIP_MAGIC = [0x50, 0x4b, 0x03, 0x04];
const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

/**
 * Opens a PyTorch file (`.pkl`, `.pt`, `.pth`) and reads its object tree (not its tensor data).
 *
 * @throws {IoError} naming the file for anything malformed, truncated or unsafe.
 */
export function openTorchFile(path: string): TorchFile {
  const src = fileSource(path);
  try {
    const { format, root } = parseTorch(src, path);
    return { path, format, root, source: src, close: () => src.close() };
  } catch (e) {
    src.close();
    throw e;
  }
}

/**
 * Reads a PyTorch file held in memory (see {@linkcode openTorchFile}).
 *
 * @param bytes the file's bytes.
 * @param name how to name it in messages.
 */
export function readTorchBytes(bytes: Uint8Array, name = "<bytes>"): TorchFile {
  const src = memorySource(bytes);
  const { format, root } = parseTorch(src, name);
  return { path: name, format, root, source: src, close: () => {} };
}

function parseTorch(src: ByteSource, name: string): { format: TorchFileFormat; root: PyValue } {
  if (src.size < 4) {
    throw new IoError(`${name}: file too short (${src.size} bytes) to be a PyTorch file`);
  }
  const head = src.read(0, Math.min(16, src.size));
  if (ZIP_MAGIC.every((b, i) => head[i] === b)) {
    return { format: "zip", root: readZipTorch(src, name) };
  }
  if (head[0] !== 0x80) {
    const hex = Array.from(head.subarray(0, 4), (b) => b.toString(16).padStart(2, "0")).join(" ");
    throw new IoError(`${name}: not a pickle or torch.save file (starts with ${hex})`);
  }
  // Legacy torch.save files start with a pickled LONG1 magic number.
  if (head[2] === 0x8a && head[3] === 0x0a) {
    const first = unpickleNested(src, { name }, 0);
    if (first.value === LEGACY_MAGIC || first.value === Number(LEGACY_MAGIC)) {
      return { format: "legacy", root: readLegacy(src, name, 0) };
    }
  }
  return { format: "pickle", root: readOuterPickle(src, name, 0) };
}

function readOuterPickle(src: ByteSource, name: string, depth: number): PyValue {
  const { value } = unpickleNested(src, {
    name,
    loadFromBytes: (b) => loadFromBytes(b, name, depth + 1),
  }, depth);
  return value;
}

function loadFromBytes(b: Uint8Array | LazyBytes, name: string, depth: number): PyValue {
  const sub = b instanceof LazyBytes ? sliceSource(b.source, b.offset, b.length) : memorySource(b);
  return readLegacy(sub, `${name} (embedded torch.save)`, depth);
}

/**
 * Parses a legacy `torch.save` stream: magic, protocol version, sys info, the object (storages as
 * persistent ids), the list of storage keys, then per key an int64 element count and the data.
 */
function readLegacy(src: ByteSource, name: string, depth: number): PyValue {
  let pos = 0;
  const next = (opts: { persistentLoad?: (pid: PyValue) => PyValue } = {}) => {
    const r = unpickleNested(src, {
      name,
      start: pos,
      loadFromBytes: (b) => loadFromBytes(b, name, depth + 1),
      ...opts,
    }, depth);
    pos = r.end;
    return r.value;
  };
  const magic = next();
  if (magic !== LEGACY_MAGIC) {
    throw new IoError(`${name}: wrong magic number in legacy torch.save data`);
  }
  const version = next();
  if (version !== 1001) {
    throw new IoError(`${name}: unsupported legacy torch.save protocol ${String(version)}`);
  }
  const sys = next();
  if (sys instanceof PyDict && sys.get("little_endian") === false) {
    throw new IoError(`${name}: big-endian torch.save data is not supported`);
  }
  const storages = new Map<string, StorageRef>();
  const obj = next({
    persistentLoad: (pid) => {
      const st = storageFromPid(pid, name);
      const prev = storages.get(st.key);
      if (prev) {
        if (prev.dtype !== st.dtype || prev.numel !== st.numel) {
          throw new IoError(`${name}: storage '${st.key}' is declared twice with different types`);
        }
        return prev;
      }
      storages.set(st.key, st);
      return st;
    },
  });
  const keys = next();
  if (!Array.isArray(keys) || keys.some((k) => typeof k !== "string")) {
    throw new IoError(`${name}: the storage key list is not a list of strings`);
  }
  for (const key of keys as string[]) {
    if (pos + 8 > src.size) throw new IoError(`${name}: truncated storage header for '${key}'`);
    const hdr = src.read(pos, 8);
    const count = new DataView(hdr.buffer, hdr.byteOffset, 8).getBigInt64(0, true);
    pos += 8;
    const st = storages.get(key);
    if (!st) throw new IoError(`${name}: data for unknown storage '${key}'`);
    if (count !== BigInt(st.numel)) {
      throw new IoError(`${name}: storage '${key}' holds ${count} elements, expected ${st.numel}`);
    }
    const nbytes = st.numel * bytesPerElement(st.dtype);
    if (nbytes > src.size - pos) {
      throw new IoError(
        `${name}: storage '${key}' claims ${nbytes} bytes but only ${src.size - pos} remain`,
      );
    }
    st.data = { source: src, offset: pos };
    pos += nbytes;
  }
  for (const [key, st] of storages) {
    if (!st.data) throw new IoError(`${name}: no data for storage '${key}'`);
  }
  // torch.save writes nothing after the last storage: bytes left over mean that a storage's type
  // or count does not describe its data (a FloatStorage declared as a HalfStorage, say).
  if (pos !== src.size) {
    throw new IoError(
      `${name}: ${
        src.size - pos
      } bytes after the last storage: the storage types or counts do not match the data`,
    );
  }
  return obj;
}

function storageFromPid(pid: PyValue, name: string): StorageRef {
  const items = pid instanceof PyTuple ? pid.items : undefined;
  if (!items || items.length < 5 || items[0] !== "storage") {
    throw new IoError(`${name}: unsupported persistent id (expected a 'storage' tuple)`);
  }
  const [, cls, key, , numel] = items;
  const dtype = storageDtype(cls);
  if (!dtype) throw new IoError(`${name}: unsupported storage class in persistent id`);
  if (typeof key !== "string") throw new IoError(`${name}: storage key is not a string`);
  if (typeof numel !== "number" || !Number.isSafeInteger(numel) || numel < 0) {
    throw new IoError(`${name}: storage '${key}' has an invalid element count`);
  }
  if (items.length > 5 && items[5] !== null) {
    throw new IoError(`${name}: storage views (legacy view metadata) are not supported`);
  }
  return new StorageRef(dtype, numel, key);
}

// ---------------------------------------------------------------------------------------------
// ZIP (torch.save since 1.6)

interface ZipEntry {
  name: string;
  crc32: number;
  method: number;
  size: number;
  compressedSize: number;
  localOffset: number;
}

function u16(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8);
}
function u32(b: Uint8Array, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 0x1000000;
}
function u64(b: Uint8Array, o: number, name: string): number {
  const v = u32(b, o) + u32(b, o + 4) * 0x100000000;
  if (!Number.isSafeInteger(v)) throw new IoError(`${name}: zip: 64-bit field too large`);
  return v;
}

/** Reads the central directory of a zip archive. */
function readZipDirectory(src: ByteSource, name: string): Map<string, ZipEntry> {
  const tailLen = Math.min(src.size, 65557);
  const tail = src.read(src.size - tailLen, tailLen);
  let eocd = -1;
  for (let i = tail.length - 22; i >= 0; i--) {
    if (tail[i] === 0x50 && tail[i + 1] === 0x4b && tail[i + 2] === 0x05 && tail[i + 3] === 0x06) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new IoError(`${name}: zip: end of central directory not found (truncated?)`);
  let count = u16(tail, eocd + 10);
  let cdSize = u32(tail, eocd + 12);
  let cdOffset = u32(tail, eocd + 16);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    const loc = eocd - 20;
    if (loc < 0 || u32(tail, loc) !== 0x07064b50) {
      throw new IoError(`${name}: zip: ZIP64 locator missing`);
    }
    const e64 = u64(tail, loc + 8, name);
    if (e64 + 56 > src.size) throw new IoError(`${name}: zip: ZIP64 record outside the file`);
    const rec = src.read(e64, 56);
    if (u32(rec, 0) !== 0x06064b50) throw new IoError(`${name}: zip: bad ZIP64 end record`);
    count = u64(rec, 32, name);
    cdSize = u64(rec, 40, name);
    cdOffset = u64(rec, 48, name);
  }
  if (cdOffset + cdSize > src.size || count * 46 > cdSize) {
    throw new IoError(`${name}: zip: central directory lies outside the file`);
  }
  const cd = src.read(cdOffset, cdSize);
  const entries = new Map<string, ZipEntry>();
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || u32(cd, p) !== 0x02014b50) {
      throw new IoError(`${name}: zip: bad central directory entry ${i}`);
    }
    const method = u16(cd, p + 10);
    const crc = u32(cd, p + 16);
    let compressedSize = u32(cd, p + 20);
    let size = u32(cd, p + 24);
    const nameLen = u16(cd, p + 28);
    const extraLen = u16(cd, p + 30);
    const commentLen = u16(cd, p + 32);
    let localOffset = u32(cd, p + 42);
    if (p + 46 + nameLen + extraLen + commentLen > cd.length) {
      throw new IoError(`${name}: zip: truncated central directory`);
    }
    const entryName = new TextDecoder().decode(cd.subarray(p + 46, p + 46 + nameLen));
    // ZIP64 extra field: replaces the fields that are 0xffffffff, in order.
    let e = p + 46 + nameLen;
    const eEnd = e + extraLen;
    while (e + 4 <= eEnd) {
      const id = u16(cd, e);
      const len = u16(cd, e + 2);
      if (e + 4 + len > eEnd) break;
      if (id === 1) {
        let q = e + 4;
        const take = () => {
          if (q + 8 > e + 4 + len) throw new IoError(`${name}: zip: short ZIP64 extra field`);
          const v = u64(cd, q, name);
          q += 8;
          return v;
        };
        if (size === 0xffffffff) size = take();
        if (compressedSize === 0xffffffff) compressedSize = take();
        if (localOffset === 0xffffffff) localOffset = take();
      }
      e += 4 + len;
    }
    entries.set(entryName, {
      name: entryName,
      crc32: crc,
      method,
      size,
      compressedSize,
      localOffset,
    });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

/** The bytes of a STORED zip entry, as a window of the source (nothing is read). */
function zipEntrySource(src: ByteSource, e: ZipEntry, name: string): ByteSource {
  if (e.method !== 0) {
    throw new IoError(
      `${name}: zip entry '${e.name}' is compressed (method ${e.method}); only stored entries are supported`,
    );
  }
  if (e.localOffset + 30 > src.size) {
    throw new IoError(`${name}: zip entry '${e.name}' lies outside the file`);
  }
  const lh = src.read(e.localOffset, 30);
  if (u32(lh, 0) !== 0x04034b50) {
    throw new IoError(`${name}: zip entry '${e.name}': bad local header`);
  }
  const start = e.localOffset + 30 + u16(lh, 26) + u16(lh, 28);
  if (e.compressedSize !== e.size || start + e.size > src.size) {
    throw new IoError(
      `${name}: zip entry '${e.name}' claims ${e.size} bytes beyond the end of the file`,
    );
  }
  return sliceSource(src, start, e.size);
}

/**
 * Checks a stored entry's bytes against the CRC-32 of the central directory: a flipped bit, or a
 * local header whose changed length shifts the data, would otherwise load other weights.
 */
function checkCrc(data: ByteSource, e: ZipEntry, name: string): void {
  let crc = 0;
  for (let off = 0; off < data.size; off += 1 << 26) {
    crc = zlibCrc32(data.read(off, Math.min(1 << 26, data.size - off)), crc);
  }
  if (crc >>> 0 !== e.crc32) {
    throw new IoError(`${name}: zip entry '${e.name}' is corrupt (CRC-32 mismatch)`);
  }
}

function readZipTorch(src: ByteSource, name: string): PyValue {
  const entries = readZipDirectory(src, name);
  const pkl = [...entries.keys()].find((k) => k === "data.pkl" || k.endsWith("/data.pkl"));
  if (!pkl) throw new IoError(`${name}: zip archive has no data.pkl (not a torch.save file)`);
  const prefix = pkl.slice(0, pkl.length - "data.pkl".length);
  const pklSrc = zipEntrySource(src, entries.get(pkl)!, name);
  checkCrc(pklSrc, entries.get(pkl)!, name);
  const storages = new Map<string, StorageRef>();
  const { value } = unpickleNested(pklSrc, {
    name,
    persistentLoad: (pid) => {
      const st = storageFromPid(pid, name);
      const prev = storages.get(st.key);
      if (prev) {
        if (prev.dtype !== st.dtype || prev.numel !== st.numel) {
          throw new IoError(`${name}: storage '${st.key}' is declared twice with different types`);
        }
        return prev;
      }
      const e = entries.get(`${prefix}data/${st.key}`);
      if (!e) throw new IoError(`${name}: zip archive lacks the data of storage '${st.key}'`);
      const data = zipEntrySource(src, e, name);
      const nbytes = st.numel * bytesPerElement(st.dtype);
      // torch.save stores exactly the storage's bytes: any other size means the declared type or
      // count does not describe the data (a FloatStorage read as half floats, say).
      if (data.size !== nbytes) {
        throw new IoError(
          `${name}: storage '${st.key}' declares ${nbytes} bytes (${st.numel} × ${st.dtype}) but its entry holds ${data.size}`,
        );
      }
      st.data = { source: data, offset: 0, verify: () => checkCrc(data, e, name) };
      storages.set(st.key, st);
      return st;
    },
    loadFromBytes: (b) => loadFromBytes(b, name, 1),
  }, 0);
  return value;
}

// ---------------------------------------------------------------------------------------------
// Tensors

/**
 * Reads a tensor's elements from its file, in its own dtype (float16/bfloat16 as raw bits),
 * in C order. Contiguous tensors are read straight into their array; strided views (transposes,
 * storage offsets) are gathered.
 *
 * @throws {IoError} when the storage has no data or the view exceeds it.
 */
export function readTensor(ref: TensorRef): HostTensor {
  const st = ref.storage;
  const es = bytesPerElement(st.dtype);
  const n = numElements(ref.shape);
  const shape = [...ref.shape];
  if (n === 0) return { dtype: st.dtype, shape, data: typedArrayFor(st.dtype, new ArrayBuffer(0)) };
  if (!st.data) throw new IoError(`storage '${st.key}' has no data`);
  if (st.data.verify) {
    st.data.verify();
    st.data.verify = undefined;
  }
  let span = 1;
  for (let i = 0; i < shape.length; i++) span += (shape[i] - 1) * ref.stride[i];
  if (ref.storageOffset + span > st.numel) {
    throw new IoError(`tensor view exceeds its storage '${st.key}'`);
  }
  // Views whose elements overlap (zero strides of an expanded tensor, or strides that revisit
  // elements) never come from a module's parameters or buffers; they would let a few stored bytes
  // become an array of any size, or a flipped stride silently repeat weights.
  if (overlaps(shape, ref.stride)) {
    throw new IoError(
      `tensor view [${shape}] with strides [${ref.stride}] of storage '${st.key}' repeats elements`,
    );
  }
  const raw = st.data.source.read(st.data.offset + ref.storageOffset * es, span * es);
  const owned = raw.byteOffset === 0 && raw.buffer.byteLength === raw.length ? raw : raw.slice();
  const src = typedArrayFor(st.dtype, owned.buffer as ArrayBuffer);
  if (isContiguous(shape, ref.stride)) return { dtype: st.dtype, shape, data: src };
  const out = typedArrayFor(st.dtype, new ArrayBuffer(n * es));
  gather(
    src as unknown as ArrayLike<number>,
    out as unknown as { [i: number]: number },
    shape,
    ref.stride,
  );
  return { dtype: st.dtype, shape, data: out };
}

/** Whether two indices of the view address the same element (dimensions of size 1 aside). */
function overlaps(shape: number[], stride: number[]): boolean {
  const dims = shape.map((n, i) => ({ n, s: stride[i] })).filter((d) => d.n > 1)
    .sort((a, b) => a.s - b.s);
  let reach = 0; // the largest offset reachable with the smaller-stride dimensions
  for (const d of dims) {
    if (d.s <= reach) return true;
    reach += (d.n - 1) * d.s;
  }
  return false;
}

function isContiguous(shape: number[], stride: number[]): boolean {
  let expect = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expect) return false;
    expect *= shape[i];
  }
  return true;
}

function gather(
  src: ArrayLike<number>,
  out: { [i: number]: number },
  shape: number[],
  stride: number[],
): void {
  const nd = shape.length;
  const idx = new Array(nd).fill(0);
  let o = 0;
  let s = 0;
  const total = shape.reduce((a, b) => a * b, 1);
  for (let k = 0; k < total; k++) {
    out[o++] = src[s];
    for (let d = nd - 1; d >= 0; d--) {
      idx[d]++;
      s += stride[d];
      if (idx[d] < shape[d]) break;
      s -= stride[d] * shape[d];
      idx[d] = 0;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Walking module trees

const MAX_DEPTH = 64;

/** The `__dict__` of a module-like value: a persistent record's state, or a generic object's. */
export function moduleState(v: PyValue): PyDict | undefined {
  const state = isPersistentRecord(v) ? v.state : v instanceof PyObject ? v.state : undefined;
  return state instanceof PyDict ? state : undefined;
}

/**
 * The state dict of a pickled `torch.nn.Module` (a persistent record or a plain module object):
 * `_parameters` and persistent `_buffers` under `prefix + name`, recursing into `_modules` with
 * `prefix + name + "."`, in registration order; `None` entries are skipped. A value that is
 * already a dict of tensors (a saved `state_dict()`) is returned as it is.
 *
 * @throws {IoError} when the value is neither, or nests too deeply.
 */
export function stateDictOf(module: PyValue, prefix = ""): Map<string, TensorRef> {
  const out = new Map<string, TensorRef>();
  if (module instanceof PyDict && !moduleState(module)) {
    let tensors = 0;
    for (const [k, v] of module) {
      if (v instanceof TensorRef && typeof k === "string") {
        out.set(prefix + k, v);
        tensors++;
      }
    }
    if (tensors > 0) return out;
  }
  walk(module, prefix, out, 0, { left: MAX_MODULE_VISITS });
  return out;
}

/**
 * Modules and tensors {@linkcode stateDictOf} visits at most: a module shared by several parents
 * is visited once per path, so a DAG of shared modules could otherwise expand exponentially.
 * (The largest EDM/ADM networks have ~2,000 modules and tensors.)
 */
const MAX_MODULE_VISITS = 1_000_000;

function walk(
  module: PyValue,
  prefix: string,
  out: Map<string, TensorRef>,
  depth: number,
  budget: { left: number },
): void {
  if (depth > MAX_DEPTH) {
    throw new IoError(`module tree nested deeper than ${MAX_DEPTH} levels at '${clip(prefix)}'`);
  }
  if (--budget.left < 0) {
    throw new IoError(
      `module tree has more than ${MAX_MODULE_VISITS} modules and tensors (shared modules expanded?)`,
    );
  }
  const state = moduleState(module);
  if (!state) throw new IoError(`'${prefix || "<root>"}' is not a torch module`);
  const nonPersistent = state.get("_non_persistent_buffers_set");
  const skip = nonPersistent instanceof PySet ? nonPersistent : new Set();
  for (const field of ["_parameters", "_buffers"]) {
    const d = state.get(field);
    if (d === undefined || d === null) continue;
    if (!(d instanceof PyDict)) throw new IoError(`'${prefix}${field}' is not a dict`);
    for (const [k, v] of d) {
      if (v === null) continue;
      if (typeof k !== "string") throw new IoError(`'${prefix}${field}' has a non-string key`);
      if (field === "_buffers" && skip.has(k)) continue;
      if (!(v instanceof TensorRef)) throw new IoError(`'${clip(prefix + k)}' is not a tensor`);
      if (--budget.left < 0) {
        throw new IoError(`module tree has more than ${MAX_MODULE_VISITS} modules and tensors`);
      }
      out.set(prefix + k, v);
    }
  }
  const mods = state.get("_modules");
  if (mods === undefined || mods === null) return;
  if (!(mods instanceof PyDict)) throw new IoError(`'${prefix}_modules' is not a dict`);
  for (const [k, v] of mods) {
    if (v === null) continue;
    if (typeof k !== "string") throw new IoError(`'${prefix}_modules' has a non-string key`);
    walk(v, `${prefix}${k}.`, out, depth + 1, budget);
  }
}

/** A name from a file, shortened for a message. */
function clip(s: string): string {
  return s.length > 200 ? `${s.slice(0, 200)}…` : s;
}

/** JSON-like plain values: what {@linkcode toPlain} returns. */
export type Plain = null | boolean | number | string | Plain[] | { [k: string]: Plain };

/**
 * Converts simple Python values (numbers, strings, bools, None, lists, tuples, dicts with string
 * keys, numpy scalars) to plain JavaScript values. Big integers become numbers; anything else
 * (tensors, objects) is an {@linkcode IoError} naming `what`.
 */
export function toPlain(v: PyValue, what = "value", maxNodes = PLAIN_MAX_NODES): Plain {
  const budget = { left: maxNodes };
  return plainOf(v, what, 0, budget, maxNodes);
}

/** Values {@linkcode toPlain} visits at most by default (`_init_kwargs` of EDM has ~30). */
export const PLAIN_MAX_NODES = 100_000;

/** Depth of plain values (nested lists and dicts) that {@linkcode toPlain} accepts. */
const PLAIN_MAX_DEPTH = 32;

function plainOf(
  v: PyValue,
  what: string,
  depth: number,
  budget: { left: number },
  maxNodes: number,
): Plain {
  // Shared references (memo GETs) make a DAG whose expansion can be exponential in the file's
  // size: every visit counts, so the work is bounded whatever the sharing.
  if (--budget.left < 0) {
    throw new IoError(`${what}: more than ${maxNodes} values (shared references expanded?)`);
  }
  if (depth > PLAIN_MAX_DEPTH) throw new IoError(`${what}: nested too deeply`);
  if (v === null || typeof v === "boolean" || typeof v === "number" || typeof v === "string") {
    return v;
  }
  if (typeof v === "bigint") return Number(v);
  if (Array.isArray(v)) return v.map((x) => plainOf(x, what, depth + 1, budget, maxNodes));
  if (v instanceof PyTuple) {
    return v.items.map((x) => plainOf(x, what, depth + 1, budget, maxNodes));
  }
  if (v instanceof PyDict) {
    const o: { [k: string]: Plain } = {};
    for (const [k, x] of v) {
      if (typeof k !== "string") throw new IoError(`${what}: a dict key is not a string`);
      const key = k.length > 64 ? `${k.slice(0, 64)}…` : k;
      o[k] = plainOf(x, depth < 4 ? `${what}.${key}` : what, depth + 1, budget, maxNodes);
    }
    return o;
  }
  if (v instanceof NumpyArrayBuilder && v.array && v.array.shape.length === 0) {
    const x = v.array.data[0];
    return typeof x === "bigint" ? Number(x) : x;
  }
  throw new IoError(`${what}: not a plain value`);
}
