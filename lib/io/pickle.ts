/**
 * A safe reader for Python pickles (protocols 2 to 5) that never executes anything.
 *
 * The reader is a small stack machine over the pickle opcodes. Where Python would import and call
 * a global (`GLOBAL`, `STACK_GLOBAL`, then `REDUCE`/`NEWOBJ`/`BUILD`), this reader only accepts
 * the globals of an allow-list ({@linkcode ALLOWED_GLOBALS}) and builds inert records for them:
 * tensors ({@linkcode TensorRef}, which point into storages without reading them), storages
 * ({@linkcode StorageRef}), `torch_utils.persistence` objects ({@linkcode PersistentRecord},
 * whose embedded module source is kept only as a SHA-256 hash), dicts ({@linkcode PyDict}),
 * tuples ({@linkcode PyTuple}), numpy arrays (as {@linkcode HostTensor}s) and generic objects
 * ({@linkcode PyObject}). Any other global (`os.system`, `builtins.eval`, …) is an
 * {@linkcode IoError} naming it.
 *
 * Bounds: every length read from the input is checked against the bytes that remain before
 * anything is allocated, the memo and the nesting of embedded pickles are limited, and the
 * machine itself is iterative (no recursion on the input's structure).
 *
 * @example
 * ```ts
 * import { memorySource, unpickle } from "./pickle.ts";
 * // pickle.dumps({"a": (1, 2.5)}, protocol=4)
 * const bytes = Uint8Array.from(atob("gASVEgAAAAAAAAB9lIwBYZRLAUdABAAAAAAAAIaUcy4="), (c) => c.charCodeAt(0));
 * const { value } = unpickle(memorySource(bytes), { name: "demo" });
 * console.log(value); // PyDict(1) [Map] { "a" => PyTuple { items: [1, 2.5] } }
 * ```
 *
 * @module
 */
import { createHash } from "node:crypto";
import {
  bytesPerElement,
  type DType,
  type HostTensor,
  IoError,
  numElements,
  typedArrayFor,
} from "./host_tensor.ts";

// ---------------------------------------------------------------------------------------------
// Byte sources

/**
 * Random-access bytes: a file, or a buffer in memory. `read` returns exactly `length` bytes
 * starting at `offset` (the caller has checked the range); the result may be a view that shares
 * memory with the source, so callers copy it before modifying it.
 */
export interface ByteSource {
  /** Total number of bytes. */
  readonly size: number;
  /** The bytes `[offset, offset + length)`. */
  read(offset: number, length: number): Uint8Array;
}

/**
 * A {@linkcode ByteSource} over bytes in memory (no copy).
 *
 * @example
 * ```ts
 * import { memorySource } from "./pickle.ts";
 * console.log(memorySource(new Uint8Array([1, 2, 3])).read(1, 2)); // Uint8Array [2, 3]
 * ```
 */
export function memorySource(bytes: Uint8Array): ByteSource {
  return {
    size: bytes.length,
    read: (offset, length) => {
      checkRange(bytes.length, offset, length, "memory");
      return bytes.subarray(offset, offset + length);
    },
  };
}

/**
 * The bytes `[offset, offset + length)` of `source`, as a source of their own (no copy).
 *
 * @throws {IoError} when the window does not lie inside `source`.
 */
export function sliceSource(source: ByteSource, offset: number, length: number): ByteSource {
  checkRange(source.size, offset, length, "slice");
  return {
    size: length,
    read: (o, l) => {
      checkRange(length, o, l, "slice");
      return source.read(offset + o, l);
    },
  };
}

function checkRange(size: number, offset: number, length: number, what: string): void {
  if (
    !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
    offset + length > size
  ) {
    throw new IoError(`${what}: read of ${length} bytes at ${offset} is outside 0..${size}`);
  }
}

/**
 * A `bytes` value of the pickle that was not read into memory because it is large (a tensor
 * storage, typically): where it lies in its source. {@linkcode bytesOf} reads it.
 */
export class LazyBytes {
  /**
   * @param source where the bytes are.
   * @param offset their first byte in `source`.
   * @param length their count.
   */
  constructor(
    readonly source: ByteSource,
    readonly offset: number,
    readonly length: number,
  ) {}
}

/** The content of a `bytes` value, reading a {@linkcode LazyBytes} from its source. */
export function bytesOf(b: Uint8Array | LazyBytes): Uint8Array {
  return b instanceof LazyBytes ? b.source.read(b.offset, b.length) : b;
}

// ---------------------------------------------------------------------------------------------
// Values

/** A Python tuple. */
export class PyTuple {
  /** @param items the elements. */
  constructor(readonly items: PyValue[]) {}
}

/** Keys of a {@linkcode PyDict}: primitives by value, anything else by identity. */
export type PyKey = PyValue;

/**
 * A Python `dict` (or a dict subclass such as `collections.OrderedDict` or
 * `dnnlib.util.EasyDict`, named by `pyClass`). Insertion order is kept.
 */
export class PyDict extends Map<PyKey, PyValue> {
  /** The qualified Python class, e.g. `builtins.dict`. */
  pyClass: string;
  /** State set by a `BUILD` on a dict subclass (usually absent). */
  pyState?: PyValue;
  /** @param pyClass the qualified Python class. */
  constructor(pyClass = "builtins.dict") {
    super();
    this.pyClass = pyClass;
  }
}

/** A Python `set` or `frozenset`. */
export class PySet extends Set<PyValue> {
  /** Whether it is a `frozenset`. */
  frozen = false;
}

/** A reference to an allow-listed Python global (a class or function), e.g. `torch.FloatStorage`. */
export class PyGlobal {
  /**
   * @param module the module, e.g. `torch`.
   * @param name the attribute, e.g. `FloatStorage`.
   */
  constructor(readonly module: string, readonly name: string) {}
  /** `module.name`. */
  get qualname(): string {
    return `${this.module}.${this.name}`;
  }
}

/**
 * An inert instance of an allow-listed class that has no special meaning to this reader (e.g.
 * `torch.nn.modules.container.ModuleDict`, `torch.device`): the constructor arguments, the
 * state given by `BUILD`, and items added by `SETITEMS`/`APPENDS`.
 */
export class PyObject {
  /** Items set with `SETITEM(S)`. */
  dictItems?: PyDict;
  /** Items added with `APPEND(S)`. */
  listItems?: PyValue[];
  /** The state given by `BUILD`, if any. */
  state: PyValue = null;
  /**
   * @param className qualified Python class name.
   * @param args constructor (or reduce) arguments.
   */
  constructor(readonly className: string, readonly args: PyValue[]) {}
}

/**
 * A `torch_utils.persistence` object (`_reconstruct_persistent_obj(meta)`): the class name and
 * state (the object's `__dict__`) of an EDM/EDM2/SiD class. The embedded module source is never
 * run; only its SHA-256 hash is kept.
 */
export interface PersistentRecord {
  /** Discriminator. */
  readonly kind: "persistent";
  /** Class name, e.g. `EDMPrecond`, `SongUNet`, `UNetBlock`. */
  className: string;
  /**
   * The module the class was defined in. The persistence mechanism does not record it (it makes
   * a fresh module from the source), so this is `_imported_module_<first 16 hex digits of the
   * source hash>`.
   */
  moduleName: string;
  /** The object's `__dict__`. */
  state: PyValue;
  /** Hex SHA-256 of the UTF-8 module source embedded in the pickle. */
  moduleSrcHash: string;
  /** The persistence format version (`6` in EDM, EDM2 and SiD). */
  version: PyValue;
}

/** Location of a storage's bytes. */
export interface StorageData {
  /** The source holding the bytes. */
  source: ByteSource;
  /** Offset of the first element. */
  offset: number;
  /**
   * Checks the integrity of the bytes (a zip entry's CRC-32), throwing an `IoError` when they
   * are corrupt; called once, before the first read of the storage.
   */
  verify?: () => void;
}

/**
 * A torch storage: element type and count, and (once known) where its little-endian bytes are.
 * Nothing is read until a tensor is materialised (see `readTensor` in `torch_file.ts`).
 */
export class StorageRef {
  /** Where the bytes are; set when the container provides them. */
  data?: StorageData;
  /**
   * @param dtype element type.
   * @param numel number of elements.
   * @param key the storage key of the container (e.g. `"0"` or a pointer value).
   */
  constructor(readonly dtype: DType, readonly numel: number, readonly key: string) {}
}

/** A torch tensor (or parameter): a strided view of a {@linkcode StorageRef}. */
export class TensorRef {
  /**
   * @param storage the storage viewed.
   * @param storageOffset index of the first element in the storage.
   * @param shape dimensions.
   * @param stride element strides per dimension.
   * @param requiresGrad the (ignored) autograd flag.
   */
  constructor(
    readonly storage: StorageRef,
    readonly storageOffset: number,
    readonly shape: number[],
    readonly stride: number[],
    readonly requiresGrad: boolean,
  ) {}
  /** Element type. */
  get dtype(): DType {
    return this.storage.dtype;
  }
}

/** A numpy dtype (`numpy.dtype('f8')` with its byte order once built). */
export class PyDtype {
  /** Byte order: `<`, `>`, `|` or `=`. */
  byteorder = "|";
  /** @param code the type code, e.g. `f8`, `i4`, `b1`. */
  constructor(readonly code: string) {}
}

/** A bound method `getattr(obj, name)` (recorded, never called). */
export class PyAttribute {
  /**
   * @param obj the object.
   * @param name the attribute.
   */
  constructor(readonly obj: PyValue, readonly name: string) {}
}

/** Every value the reader produces. Python ints are numbers, or bigints beyond 2^53. */
export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | LazyBytes
  | PyValue[]
  | PyTuple
  | PyDict
  | PySet
  | PyGlobal
  | PyObject
  | PersistentRecord
  | StorageRef
  | TensorRef
  | PyDtype
  | PyAttribute
  | HostTensor
  | NumpyArrayBuilder;

/** A numpy array made by `numpy.core.multiarray._reconstruct`, waiting for its `BUILD`. */
export class NumpyArrayBuilder {
  /** The array once built (`null` for dtypes this reader does not convert). */
  array: HostTensor | null = null;
  /** The raw `BUILD` state when the array could not be converted. */
  state: PyValue = null;
}

/** Whether `v` is a {@linkcode PersistentRecord}. */
export function isPersistentRecord(v: unknown): v is PersistentRecord {
  return typeof v === "object" && v !== null && (v as PersistentRecord).kind === "persistent" &&
    !(v instanceof Map);
}

// ---------------------------------------------------------------------------------------------
// Allow-list

const STORAGE_DTYPES: Record<string, DType> = {
  FloatStorage: "float32",
  DoubleStorage: "float64",
  HalfStorage: "float16",
  BFloat16Storage: "bfloat16",
  LongStorage: "int64",
  IntStorage: "int32",
  ShortStorage: "int16",
  CharStorage: "int8",
  ByteStorage: "uint8",
  BoolStorage: "bool",
  UntypedStorage: "uint8",
};

/** Element type of a torch storage class global such as `torch.HalfStorage`, or `undefined`. */
export function storageDtype(g: PyValue): DType | undefined {
  if (!(g instanceof PyGlobal)) return undefined;
  if (g.module !== "torch" && g.module !== "torch.storage") return undefined;
  return Object.hasOwn(STORAGE_DTYPES, g.name) ? STORAGE_DTYPES[g.name] : undefined;
}

const TORCH_DTYPE_NAMES = [
  "float16",
  "float32",
  "float64",
  "bfloat16",
  "half",
  "float",
  "double",
  "int8",
  "int16",
  "int32",
  "int64",
  "uint8",
  "bool",
  "long",
  "int",
];

const NN_CLASSES = [
  "container.ModuleDict",
  "container.ModuleList",
  "container.Sequential",
  "container.ParameterDict",
  "container.ParameterList",
  "linear.Linear",
  "linear.Identity",
  "conv.Conv2d",
  "normalization.GroupNorm",
  "activation.SiLU",
  "dropout.Dropout",
];

/**
 * The Python globals this reader accepts (qualified names). Everything else is refused.
 * `torch.nn.modules.*` classes and the `torch.*Storage` classes are included in this list.
 */
export const ALLOWED_GLOBALS: ReadonlySet<string> = new Set([
  "torch._utils._rebuild_tensor",
  "torch._utils._rebuild_tensor_v2",
  "torch._utils._rebuild_parameter",
  "torch._utils._rebuild_parameter_with_state",
  "torch._tensor._rebuild_from_type_v2",
  "torch.storage._load_from_bytes",
  "torch.device",
  "torch.Size",
  "torch_utils.persistence._reconstruct_persistent_obj",
  "collections.OrderedDict",
  "dnnlib.util.EasyDict",
  "dnnlib.EasyDict",
  "numpy.core.multiarray._reconstruct",
  "numpy._core.multiarray._reconstruct",
  "numpy.core.multiarray.scalar",
  "numpy._core.multiarray.scalar",
  "numpy.ndarray",
  "numpy.dtype",
  "builtins.set",
  "builtins.frozenset",
  "builtins.getattr",
  "__builtin__.set",
  "__builtin__.frozenset",
  "copyreg._reconstructor",
  "copy_reg._reconstructor",
  "builtins.object",
  "__builtin__.object",
  "_codecs.encode",
  ...Object.keys(STORAGE_DTYPES).map((n) => `torch.${n}`),
  ...TORCH_DTYPE_NAMES.map((n) => `torch.${n}`),
  ...NN_CLASSES.map((n) => `torch.nn.modules.${n}`),
]);

/**
 * TorchScript archives (`torch.jit.save`): `data.pkl` rebuilds the module tree from classes
 * named `__torch__.<qualified name>` (inert records here: `NEWOBJ` with no arguments, then
 * `BUILD` with the attribute dict) and lists with `torch.jit._pickle.build_*` (which return their
 * argument) or `restore_type_tag` (which returns its first argument).
 */
const TORCHSCRIPT_LIST_BUILDERS = new Set([
  "torch.jit._pickle.build_intlist",
  "torch.jit._pickle.build_doublelist",
  "torch.jit._pickle.build_boollist",
  "torch.jit._pickle.build_tensorlist",
  "torch.jit._pickle.build_genericlist",
  "torch.jit._pickle.restore_type_tag",
]);

/** Whether `module` is a TorchScript class namespace (`__torch__` or below it). */
function isTorchScriptClass(module: string): boolean {
  return module === "__torch__" || module.startsWith("__torch__.");
}

/** Classes instantiated as generic {@linkcode PyObject}s by `NEWOBJ` / `REDUCE`. */
const GENERIC_CLASSES = new Set([
  "torch.device",
  "builtins.object",
  "__builtin__.object",
  ...NN_CLASSES.map((n) => `torch.nn.modules.${n}`),
]);

// ---------------------------------------------------------------------------------------------
// Options and limits

/** Options of {@linkcode unpickle}. */
export interface UnpickleOptions {
  /** How to name the input in error messages (a file path). */
  name?: string;
  /** Offset of the pickle in the source (default 0). */
  start?: number;
  /** End of the region the pickle may occupy (default: the end of the source). */
  end?: number;
  /** Resolves a persistent id (`BINPERSID`); without it, persistent ids are an error. */
  persistentLoad?: (pid: PyValue) => PyValue;
  /** Handles `torch.storage._load_from_bytes(b)`; without it, that call is an error. */
  loadFromBytes?: (b: Uint8Array | LazyBytes) => PyValue;
  /** `bytes` values at least this long stay in the source as {@linkcode LazyBytes} (default 64 KiB). */
  lazyBytesThreshold?: number;
  /** Largest memo (entries) accepted (default 2^24). */
  maxMemo?: number;
}

/** The result of {@linkcode unpickle}. */
export interface UnpickleResult {
  /** The unpickled object. */
  value: PyValue;
  /** Offset just after the `STOP` opcode. */
  end: number;
}

const WINDOW = 1 << 20;

class Reader {
  pos: number;
  #win: Uint8Array = new Uint8Array(0);
  #winStart = 0;
  #next = 2048;
  constructor(
    readonly src: ByteSource,
    start: number,
    readonly end: number,
    readonly err: (m: string) => never,
  ) {
    this.pos = start;
  }
  remaining(): number {
    return this.end - this.pos;
  }
  need(n: number, what: string): void {
    if (!Number.isSafeInteger(n) || n < 0 || n > this.end - this.pos) {
      this.err(`${what} needs ${n} bytes but only ${this.end - this.pos} remain (truncated?)`);
    }
  }
  take(n: number, what: string): Uint8Array {
    this.need(n, what);
    const p = this.pos;
    this.pos += n;
    const rel = p - this.#winStart;
    if (rel >= 0 && rel + n <= this.#win.length) return this.#win.subarray(rel, rel + n);
    if (n > WINDOW / 2) return this.src.read(p, n);
    // Grow the window while reading sequentially; start small again after a jump (a skipped
    // payload), so that small embedded pickles cost small reads.
    this.#next = p === this.#winStart + this.#win.length ? Math.min(this.#next * 2, WINDOW) : 4096;
    this.#winStart = p;
    this.#win = this.src.read(p, Math.min(Math.max(this.#next, n), this.end - p));
    return this.#win.subarray(0, n);
  }
  u8(what: string): number {
    return this.take(1, what)[0];
  }
  skip(n: number, what: string): void {
    this.need(n, what);
    this.pos += n;
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
const latin1 = new TextDecoder("latin1");

const hashCache = new Map<string, string>();

/** Hex SHA-256 of the UTF-8 encoding of `s` (cached for the few distinct module sources). */
function sha256Hex(s: string): string {
  let h = hashCache.get(s);
  if (h === undefined) {
    h = createHash("sha256").update(s, "utf8").digest("hex");
    if (hashCache.size > 64) hashCache.clear();
    hashCache.set(s, h);
  }
  return h;
}

function leBigInt(b: Uint8Array): bigint {
  if (b.length === 0) return 0n;
  let hex = "";
  for (let i = b.length - 1; i >= 0; i--) hex += b[i].toString(16).padStart(2, "0");
  let v = BigInt("0x" + hex);
  if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
  return v;
}

function normInt(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(v)
    : v;
}

const MAX_LONG_BYTES = 4096;

const OPNAMES: Record<number, string> = {
  0x28: "MARK",
  0x2e: "STOP",
  0x30: "POP",
  0x31: "POP_MARK",
  0x32: "DUP",
  0x46: "FLOAT",
  0x49: "INT",
  0x4a: "BININT",
  0x4b: "BININT1",
  0x4c: "LONG",
  0x4d: "BININT2",
  0x4e: "NONE",
  0x50: "PERSID",
  0x51: "BINPERSID",
  0x52: "REDUCE",
  0x53: "STRING",
  0x54: "BINSTRING",
  0x55: "SHORT_BINSTRING",
  0x56: "UNICODE",
  0x58: "BINUNICODE",
  0x61: "APPEND",
  0x62: "BUILD",
  0x63: "GLOBAL",
  0x64: "DICT",
  0x7d: "EMPTY_DICT",
  0x65: "APPENDS",
  0x67: "GET",
  0x68: "BINGET",
  0x69: "INST",
  0x6a: "LONG_BINGET",
  0x6c: "LIST",
  0x5d: "EMPTY_LIST",
  0x6f: "OBJ",
  0x70: "PUT",
  0x71: "BINPUT",
  0x72: "LONG_BINPUT",
  0x73: "SETITEM",
  0x74: "TUPLE",
  0x29: "EMPTY_TUPLE",
  0x75: "SETITEMS",
  0x47: "BINFLOAT",
  0x80: "PROTO",
  0x81: "NEWOBJ",
  0x82: "EXT1",
  0x83: "EXT2",
  0x84: "EXT4",
  0x85: "TUPLE1",
  0x86: "TUPLE2",
  0x87: "TUPLE3",
  0x88: "NEWTRUE",
  0x89: "NEWFALSE",
  0x8a: "LONG1",
  0x8b: "LONG4",
  0x42: "BINBYTES",
  0x43: "SHORT_BINBYTES",
  0x8c: "SHORT_BINUNICODE",
  0x8d: "BINUNICODE8",
  0x8e: "BINBYTES8",
  0x8f: "EMPTY_SET",
  0x90: "ADDITEMS",
  0x91: "FROZENSET",
  0x92: "NEWOBJ_EX",
  0x93: "STACK_GLOBAL",
  0x94: "MEMOIZE",
  0x95: "FRAME",
  0x96: "BYTEARRAY8",
  0x97: "NEXT_BUFFER",
  0x98: "READONLY_BUFFER",
};

/** Human name of a pickle opcode byte (`0x63` → `GLOBAL`), or its hex value when unknown. */
export function opcodeName(op: number): string {
  return OPNAMES[op] ?? `0x${op.toString(16).padStart(2, "0")}`;
}

// ---------------------------------------------------------------------------------------------
// The machine

const MARK = Symbol("mark");
type Slot = PyValue | typeof MARK;

/**
 * Reads one pickle from `source` (from `options.start` up to its `STOP`) without executing
 * anything. See the module documentation for what the result contains.
 *
 * @throws {IoError} for a truncated or malformed pickle, an unknown opcode (named with its
 *   offset), a global that is not on the allow-list (named), or a length that exceeds the input.
 */
export function unpickle(source: ByteSource, options: UnpickleOptions = {}): UnpickleResult {
  return new Machine(source, options, 0).run();
}

class Machine {
  readonly name: string;
  readonly r: Reader;
  stack: Slot[] = [];
  marks: number[] = [];
  memo = new Map<number, PyValue>();
  readonly lazyThreshold: number;
  readonly maxMemo: number;
  opStart = 0;
  globals = new Map<string, PyGlobal>();

  constructor(source: ByteSource, readonly options: UnpickleOptions, readonly depth: number) {
    this.name = options.name ?? "pickle";
    const start = options.start ?? 0;
    const end = options.end ?? source.size;
    if (!Number.isSafeInteger(start) || start < 0 || start > end || end > source.size) {
      throw new IoError(`${this.name}: pickle region ${start}..${end} lies outside the input`);
    }
    this.r = new Reader(source, start, end, (m) => this.fail(m));
    this.lazyThreshold = options.lazyBytesThreshold ?? 65536;
    this.maxMemo = options.maxMemo ?? (1 << 24);
  }

  fail(msg: string): never {
    throw new IoError(`${this.name}: pickle: ${msg} (at offset ${this.opStart})`);
  }

  run(): UnpickleResult {
    try {
      return this.loop();
    } catch (e) {
      if (e instanceof IoError) throw e;
      const m = e instanceof Error ? e.message : String(e);
      throw new IoError(`${this.name}: pickle: ${m} (at offset ${this.opStart})`);
    }
  }

  pop(): PyValue {
    if (
      this.stack.length === 0 ||
      (this.marks.length && this.stack.length <= this.marks[this.marks.length - 1])
    ) {
      this.fail("stack underflow");
    }
    const v = this.stack.pop()!;
    if (v === MARK) this.fail("stack underflow");
    return v as PyValue;
  }

  top(): PyValue {
    const v = this.stack.length ? this.stack[this.stack.length - 1] : MARK;
    if (v === MARK) this.fail("stack underflow");
    return v as PyValue;
  }

  popMark(): PyValue[] {
    const m = this.marks.pop();
    if (m === undefined) this.fail("no MARK on the stack");
    return this.stack.splice(m).slice(1) as PyValue[];
  }

  push(v: PyValue): void {
    this.stack.push(v);
  }

  memoPut(key: number, v: PyValue): void {
    if (!this.memo.has(key) && this.memo.size >= this.maxMemo) this.fail("memo too large");
    this.memo.set(key, v);
  }

  memoGet(key: number): PyValue {
    if (!this.memo.has(key)) this.fail(`memo key ${key} not found`);
    return this.memo.get(key)!;
  }

  readLen(n: 1 | 2 | 4 | 8, what: string): number {
    const b = this.r.take(n, what);
    if (n === 1) return b[0];
    if (n === 2) return b[0] | (b[1] << 8);
    if (n === 4) return (b[0] | (b[1] << 8) | (b[2] << 16)) + b[3] * 0x1000000;
    const lo = (b[0] | (b[1] << 8) | (b[2] << 16)) + b[3] * 0x1000000;
    const hi = (b[4] | (b[5] << 8) | (b[6] << 16)) + b[7] * 0x1000000;
    if (hi >= 0x200000) this.fail(`${what}: length too large`);
    return hi * 0x100000000 + lo;
  }

  readLine(what: string): string {
    const parts: number[] = [];
    for (;;) {
      const c = this.r.u8(what);
      if (c === 0x0a) break;
      if (parts.length > 65536) this.fail(`${what}: line too long`);
      parts.push(c);
    }
    return latin1.decode(new Uint8Array(parts));
  }

  bytesValue(n: number, what: string): Uint8Array | LazyBytes {
    this.r.need(n, what);
    if (n >= this.lazyThreshold) {
      const lb = new LazyBytes(this.r.src, this.r.pos, n);
      this.r.skip(n, what);
      return lb;
    }
    return this.r.take(n, what).slice();
  }

  loop(): UnpickleResult {
    const r = this.r;
    for (;;) {
      this.opStart = r.pos;
      if (r.remaining() <= 0) this.fail("unexpected end of data (no STOP)");
      const op = r.u8("opcode");
      switch (op) {
        case 0x80: { // PROTO
          const p = r.u8("PROTO");
          if (p > 5) this.fail(`unsupported pickle protocol ${p}`);
          break;
        }
        case 0x95: // FRAME
          this.readLen(8, "FRAME");
          break;
        case 0x2e: { // STOP
          const v = this.pop();
          if (this.stack.length !== 0) this.fail("STOP with more than one value on the stack");
          return { value: v, end: r.pos };
        }
        case 0x28: // MARK
          this.marks.push(this.stack.length);
          this.stack.push(MARK);
          break;
        case 0x7d: // EMPTY_DICT
          this.push(new PyDict());
          break;
        case 0x5d: // EMPTY_LIST
          this.push([]);
          break;
        case 0x29: // EMPTY_TUPLE
          this.push(new PyTuple([]));
          break;
        case 0x8f: // EMPTY_SET
          this.push(new PySet());
          break;
        case 0x85:
        case 0x86:
        case 0x87: { // TUPLE1-3
          const n = op - 0x84;
          const items: PyValue[] = [];
          for (let i = 0; i < n; i++) items.unshift(this.pop());
          this.push(new PyTuple(items));
          break;
        }
        case 0x74: // TUPLE
          this.push(new PyTuple(this.markItems()));
          break;
        case 0x6c: // LIST
          this.push(this.markItems());
          break;
        case 0x64: { // DICT
          const items = this.markItems();
          const d = new PyDict();
          this.setItems(d, items);
          this.push(d);
          break;
        }
        case 0x61: { // APPEND
          const v = this.pop();
          this.appendTo(this.top(), [v]);
          break;
        }
        case 0x65: { // APPENDS
          const items = this.markItems();
          this.appendTo(this.top(), items);
          break;
        }
        case 0x73: { // SETITEM
          const v = this.pop();
          const k = this.pop();
          this.setItems(this.top(), [k, v]);
          break;
        }
        case 0x75: { // SETITEMS
          const items = this.markItems();
          this.setItems(this.top(), items);
          break;
        }
        case 0x90: { // ADDITEMS
          const items = this.markItems();
          const s = this.top();
          if (!(s instanceof PySet)) this.fail("ADDITEMS on a non-set");
          for (const v of items) s.add(v);
          break;
        }
        case 0x91: { // FROZENSET
          const s = new PySet(this.markItems());
          s.frozen = true;
          this.push(s);
          break;
        }
        case 0x4a: { // BININT
          const b = r.take(4, "BININT");
          this.push(b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24));
          break;
        }
        case 0x4b: // BININT1
          this.push(r.u8("BININT1"));
          break;
        case 0x4d: // BININT2
          this.push(this.readLen(2, "BININT2"));
          break;
        case 0x8a: { // LONG1
          const n = this.readLen(1, "LONG1");
          this.push(normInt(leBigInt(r.take(n, "LONG1"))));
          break;
        }
        case 0x8b: { // LONG4
          const b = r.take(4, "LONG4");
          const n = b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24);
          if (n < 0 || n > MAX_LONG_BYTES) this.fail(`LONG4 of ${n} bytes is not supported`);
          this.push(normInt(leBigInt(r.take(n, "LONG4"))));
          break;
        }
        case 0x47: { // BINFLOAT (big-endian)
          const b = r.take(8, "BINFLOAT");
          this.push(new DataView(b.buffer, b.byteOffset, 8).getFloat64(0, false));
          break;
        }
        case 0x49: { // INT (text)
          const s = this.readLine("INT").trim();
          if (s === "01") this.push(true);
          else if (s === "00") this.push(false);
          else this.push(this.parseIntText(s, "INT"));
          break;
        }
        case 0x4c: { // LONG (text)
          const s = this.readLine("LONG").trim().replace(/L$/, "");
          this.push(this.parseIntText(s, "LONG"));
          break;
        }
        case 0x46: { // FLOAT (text)
          const s = this.readLine("FLOAT").trim();
          const v = Number(s);
          if (Number.isNaN(v) && !/^[+-]?nan$/i.test(s)) {
            this.fail(`FLOAT: bad value '${s.slice(0, 40)}'`);
          }
          this.push(v);
          break;
        }
        case 0x88: // NEWTRUE
          this.push(true);
          break;
        case 0x89: // NEWFALSE
          this.push(false);
          break;
        case 0x4e: // NONE
          this.push(null);
          break;
        case 0x8c: // SHORT_BINUNICODE
          this.push(utf8.decode(r.take(this.readLen(1, "SHORT_BINUNICODE"), "SHORT_BINUNICODE")));
          break;
        case 0x58: // BINUNICODE
          this.push(utf8.decode(r.take(this.readLen(4, "BINUNICODE"), "BINUNICODE")));
          break;
        case 0x8d: // BINUNICODE8
          this.push(utf8.decode(r.take(this.readLen(8, "BINUNICODE8"), "BINUNICODE8")));
          break;
        case 0x55: // SHORT_BINSTRING
          this.push(latin1.decode(r.take(this.readLen(1, "SHORT_BINSTRING"), "SHORT_BINSTRING")));
          break;
        case 0x54: { // BINSTRING
          const b = r.take(4, "BINSTRING");
          const n = b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24);
          if (n < 0) this.fail("BINSTRING: negative length");
          this.push(latin1.decode(r.take(n, "BINSTRING")));
          break;
        }
        case 0x43: // SHORT_BINBYTES
          this.push(this.bytesValue(this.readLen(1, "SHORT_BINBYTES"), "SHORT_BINBYTES"));
          break;
        case 0x42: // BINBYTES
          this.push(this.bytesValue(this.readLen(4, "BINBYTES"), "BINBYTES"));
          break;
        case 0x8e: // BINBYTES8
          this.push(this.bytesValue(this.readLen(8, "BINBYTES8"), "BINBYTES8"));
          break;
        case 0x96: // BYTEARRAY8
          this.push(this.bytesValue(this.readLen(8, "BYTEARRAY8"), "BYTEARRAY8"));
          break;
        case 0x94: // MEMOIZE
          this.memoPut(this.memo.size, this.top());
          break;
        case 0x71: // BINPUT
          this.memoPut(r.u8("BINPUT"), this.top());
          break;
        case 0x72: // LONG_BINPUT
          this.memoPut(this.readLen(4, "LONG_BINPUT"), this.top());
          break;
        case 0x70: // PUT
          this.memoPut(Number(this.parseIntText(this.readLine("PUT"), "PUT")), this.top());
          break;
        case 0x68: // BINGET
          this.push(this.memoGet(r.u8("BINGET")));
          break;
        case 0x6a: // LONG_BINGET
          this.push(this.memoGet(this.readLen(4, "LONG_BINGET")));
          break;
        case 0x67: // GET
          this.push(this.memoGet(Number(this.parseIntText(this.readLine("GET"), "GET"))));
          break;
        case 0x63: { // GLOBAL
          const module = this.readLine("GLOBAL");
          const name = this.readLine("GLOBAL");
          this.push(this.global(module, name));
          break;
        }
        case 0x93: { // STACK_GLOBAL
          const name = this.pop();
          const module = this.pop();
          if (typeof module !== "string" || typeof name !== "string") {
            this.fail("STACK_GLOBAL needs two strings");
          }
          this.push(this.global(module, name));
          break;
        }
        case 0x52: { // REDUCE
          const args = this.pop();
          const fn = this.pop();
          if (!(args instanceof PyTuple)) this.fail("REDUCE arguments are not a tuple");
          this.push(this.call(fn, args.items));
          break;
        }
        case 0x81: { // NEWOBJ
          const args = this.pop();
          const cls = this.pop();
          if (!(args instanceof PyTuple)) this.fail("NEWOBJ arguments are not a tuple");
          this.push(this.newObj(cls, args.items));
          break;
        }
        case 0x92: { // NEWOBJ_EX
          this.pop(); // kwargs
          const args = this.pop();
          const cls = this.pop();
          if (!(args instanceof PyTuple)) this.fail("NEWOBJ_EX arguments are not a tuple");
          this.push(this.newObj(cls, args.items));
          break;
        }
        case 0x62: { // BUILD
          const state = this.pop();
          this.build(this.top(), state);
          break;
        }
        case 0x51: { // BINPERSID
          const pid = this.pop();
          this.push(this.persistent(pid));
          break;
        }
        case 0x50: // PERSID
          this.push(this.persistent(this.readLine("PERSID")));
          break;
        case 0x30: // POP
          if (this.stack.length && this.stack[this.stack.length - 1] === MARK) {
            this.stack.pop();
            this.marks.pop();
          } else this.pop();
          break;
        case 0x31: // POP_MARK
          this.popMark();
          break;
        case 0x32: // DUP
          this.push(this.top());
          break;
        default:
          this.fail(`unsupported opcode ${opcodeName(op)}`);
      }
    }
  }

  parseIntText(s: string, what: string): number | bigint {
    if (!/^[+-]?\d{1,4000}$/.test(s.trim())) this.fail(`${what}: bad integer '${s.slice(0, 40)}'`);
    return normInt(BigInt(s.trim()));
  }

  markItems(): PyValue[] {
    return this.popMark();
  }

  appendTo(target: PyValue, items: PyValue[]): void {
    if (Array.isArray(target)) {
      for (const v of items) target.push(v);
    } else if (target instanceof PyObject) {
      (target.listItems ??= []).push(...items);
    } else this.fail("APPEND to a non-list");
  }

  setItems(target: PyValue, items: PyValue[]): void {
    if (items.length % 2 !== 0) this.fail("SETITEMS with an odd number of items");
    let d: PyDict;
    if (target instanceof PyDict) d = target;
    else if (target instanceof PyObject) d = target.dictItems ??= new PyDict();
    else this.fail("SETITEM on a non-dict");
    for (let i = 0; i < items.length; i += 2) d.set(items[i], items[i + 1]);
  }

  global(module: string, name: string): PyGlobal {
    const q = `${module}.${name}`;
    let g = this.globals.get(q);
    if (g) return g;
    if (
      !ALLOWED_GLOBALS.has(q) && !TORCHSCRIPT_LIST_BUILDERS.has(q) && !isTorchScriptClass(module)
    ) {
      this.fail(`refusing global '${q.slice(0, 200)}' (not on the allow-list of safe globals)`);
    }
    g = new PyGlobal(module, name);
    this.globals.set(q, g);
    return g;
  }

  persistent(pid: PyValue): PyValue {
    if (!this.options.persistentLoad) this.fail("persistent id in a pickle that allows none");
    return this.options.persistentLoad(pid);
  }

  newObj(cls: PyValue, args: PyValue[]): PyValue {
    if (!(cls instanceof PyGlobal)) this.fail("NEWOBJ on a non-class");
    const q = cls.qualname;
    if (
      q === "dnnlib.util.EasyDict" || q === "dnnlib.EasyDict" || q === "collections.OrderedDict"
    ) {
      return new PyDict(q);
    }
    if (q === "builtins.set" || q === "__builtin__.set") return new PySet();
    if (q === "torch.Size") return new PyTuple(this.seq(args[0] ?? new PyTuple([]), "torch.Size"));
    if (GENERIC_CLASSES.has(q) || isTorchScriptClass(cls.module)) return new PyObject(q, args);
    this.fail(`'${q}' cannot be instantiated`);
  }

  seq(v: PyValue, what: string): PyValue[] {
    if (v instanceof PyTuple) return v.items;
    if (Array.isArray(v)) return v;
    this.fail(`${what}: expected a tuple or list`);
  }

  intArg(v: PyValue, what: string): number {
    if (typeof v !== "number" || !Number.isSafeInteger(v)) {
      this.fail(`${what}: expected an integer`);
    }
    return v;
  }

  call(fn: PyValue, args: PyValue[]): PyValue {
    if (!(fn instanceof PyGlobal)) this.fail("REDUCE on a non-callable");
    const q = fn.qualname;
    switch (q) {
      case "torch._utils._rebuild_tensor_v2":
      case "torch._utils._rebuild_tensor":
        return this.rebuildTensor(args);
      case "torch._utils._rebuild_parameter":
      case "torch._utils._rebuild_parameter_with_state": {
        const t = args[0];
        if (!(t instanceof TensorRef)) this.fail(`${q}: the first argument is not a tensor`);
        return t;
      }
      case "torch._tensor._rebuild_from_type_v2": {
        // (func, type, args, state): apply the (allow-listed) func to args.
        const inner = args[2];
        return this.call(args[0] ?? null, this.seq(inner ?? new PyTuple([]), q));
      }
      case "torch.storage._load_from_bytes": {
        const b = args[0];
        if (!(b instanceof Uint8Array) && !(b instanceof LazyBytes)) {
          this.fail(`${q}: the argument is not bytes`);
        }
        if (!this.options.loadFromBytes) this.fail(`${q} is not allowed here`);
        return this.options.loadFromBytes(b);
      }
      case "torch_utils.persistence._reconstruct_persistent_obj":
        return this.persistentRecord(args[0] ?? null);
      case "collections.OrderedDict": {
        const d = new PyDict(q);
        if (args.length > 0 && args[0] !== null) {
          for (const pair of this.seq(args[0], q)) {
            const kv = this.seq(pair, q);
            if (kv.length !== 2) this.fail(`${q}: items must be pairs`);
            d.set(kv[0], kv[1]);
          }
        }
        return d;
      }
      case "builtins.set":
      case "builtins.frozenset":
      case "__builtin__.set":
      case "__builtin__.frozenset": {
        const s = new PySet(args.length ? this.seq(args[0], q) : []);
        s.frozen = q.endsWith("frozenset");
        return s;
      }
      case "builtins.getattr": {
        if (typeof args[1] !== "string") this.fail(`${q}: the attribute name is not a string`);
        return new PyAttribute(args[0] ?? null, args[1]);
      }
      case "copyreg._reconstructor":
      case "copy_reg._reconstructor":
        return this.newObj(args[0] ?? null, []);
      case "numpy.core.multiarray._reconstruct":
      case "numpy._core.multiarray._reconstruct":
        return new NumpyArrayBuilder();
      case "numpy.dtype": {
        if (typeof args[0] !== "string") this.fail(`${q}: the type code is not a string`);
        return new PyDtype(args[0]);
      }
      case "numpy.core.multiarray.scalar":
      case "numpy._core.multiarray.scalar": {
        const dt = args[0];
        const raw = args[1];
        if (!(dt instanceof PyDtype)) this.fail(`${q}: no dtype`);
        if (typeof raw === "string") {
          return this.numpyScalar(
            dt,
            Uint8Array.from(raw, (c) => c.charCodeAt(0) & 0xff),
          );
        }
        if (!(raw instanceof Uint8Array)) this.fail(`${q}: the value is not bytes`);
        return this.numpyScalar(dt, raw);
      }
      case "_codecs.encode": {
        if (typeof args[0] !== "string") this.fail(`${q}: not a string`);
        const s = args[0];
        const out = new Uint8Array(s.length);
        for (let i = 0; i < s.length; i++) {
          const c = s.charCodeAt(i);
          if (c > 255) this.fail(`${q}: character outside latin-1`);
          out[i] = c;
        }
        return out;
      }
      case "torch.Size":
        return new PyTuple(args.length ? this.seq(args[0], q) : []);
      default:
        if (TORCHSCRIPT_LIST_BUILDERS.has(q)) return args[0] ?? null;
        if (GENERIC_CLASSES.has(q) || q === "dnnlib.util.EasyDict" || q === "dnnlib.EasyDict") {
          return this.newObj(fn, args);
        }
        this.fail(`'${q}' cannot be called`);
    }
  }

  persistentRecord(meta: PyValue): PersistentRecord {
    if (!(meta instanceof PyDict)) this.fail("_reconstruct_persistent_obj: meta is not a dict");
    const type = meta.get("type");
    if (type !== "class") {
      this.fail(`_reconstruct_persistent_obj: unsupported type ${String(type)}`);
    }
    const className = meta.get("class_name");
    const src = meta.get("module_src");
    if (typeof className !== "string") {
      this.fail("_reconstruct_persistent_obj: class_name is not a string");
    }
    if (typeof src !== "string") {
      this.fail("_reconstruct_persistent_obj: module_src is not a string");
    }
    const hash = sha256Hex(src);
    return {
      kind: "persistent",
      className,
      moduleName: `_imported_module_${hash.slice(0, 16)}`,
      state: meta.get("state") ?? null,
      moduleSrcHash: hash,
      version: meta.get("version") ?? null,
    };
  }

  rebuildTensor(args: PyValue[]): TensorRef {
    const [storage, offset, size, stride, requiresGrad] = args;
    if (!(storage instanceof StorageRef)) {
      this.fail("_rebuild_tensor: the first argument is not a storage");
    }
    const off = this.intArg(offset ?? null, "_rebuild_tensor storage offset");
    const shape = this.seq(size ?? null, "_rebuild_tensor size").map((d) =>
      this.intArg(d, "_rebuild_tensor size")
    );
    const st = this.seq(stride ?? null, "_rebuild_tensor stride").map((d) =>
      this.intArg(d, "_rebuild_tensor stride")
    );
    if (shape.length !== st.length) this.fail("_rebuild_tensor: size and stride differ in length");
    let n: number;
    try {
      n = numElements(shape);
    } catch (e) {
      this.fail(`_rebuild_tensor: ${(e as Error).message}`);
    }
    if (off < 0 || st.some((s) => s < 0)) this.fail("_rebuild_tensor: negative offset or stride");
    if (n > 0) {
      let last = off;
      for (let i = 0; i < shape.length; i++) last += (shape[i] - 1) * st[i];
      if (!Number.isSafeInteger(last) || last >= storage.numel) {
        this.fail(
          `_rebuild_tensor: view [${shape}] stride [${st}] offset ${off} exceeds its storage of ${storage.numel} elements`,
        );
      }
    }
    return new TensorRef(storage, off, shape, st, requiresGrad === true);
  }

  numpyScalar(dt: PyDtype, raw: Uint8Array): PyValue {
    const dtype = numpyDType(dt);
    if (!dtype || dt.byteorder === ">") return new PyObject("numpy.scalar", [dt, raw]);
    const es = bytesPerElement(dtype);
    if (raw.length !== es) this.fail(`numpy scalar of ${dt.code} with ${raw.length} bytes`);
    const arr = typedArrayFor(dtype, raw.slice().buffer);
    const v = arr[0];
    if (dtype === "bool") return v !== 0;
    if (typeof v === "bigint") return normInt(v);
    if (dtype === "float16" || dtype === "bfloat16") return new PyObject("numpy.scalar", [dt, raw]);
    return v as number;
  }

  build(target: PyValue, state: PyValue): void {
    if (target instanceof PyObject) {
      target.state = state;
    } else if (target instanceof PyDict) {
      target.pyState = state;
    } else if (target instanceof PyDtype) {
      if (state instanceof PyTuple && typeof state.items[1] === "string") {
        target.byteorder = state.items[1];
      }
    } else if (target instanceof NumpyArrayBuilder) {
      this.buildArray(target, state);
    } else if (isPersistentRecord(target)) {
      if (target.state === null) target.state = state;
    } else if (target instanceof TensorRef) {
      // Tensor subclasses / parameters with Python attributes: nothing to keep.
    } else {
      this.fail("BUILD on an object that takes no state");
    }
  }

  buildArray(target: NumpyArrayBuilder, state: PyValue): void {
    target.state = state;
    if (!(state instanceof PyTuple) || state.items.length < 5) return;
    const [, shapeV, dtV, fortran, raw] = state.items;
    if (!(dtV instanceof PyDtype)) return;
    const dtype = numpyDType(dtV);
    if (!dtype || dtV.byteorder === ">" || fortran === true) return;
    const shape = this.seq(shapeV, "ndarray shape").map((d) => this.intArg(d, "ndarray shape"));
    let n: number;
    try {
      n = numElements(shape);
    } catch (e) {
      this.fail(`ndarray: ${(e as Error).message}`);
    }
    let bytes: Uint8Array;
    if (raw instanceof Uint8Array || raw instanceof LazyBytes) {
      if (raw.length !== n * bytesPerElement(dtype)) {
        this.fail("ndarray: data length does not match its shape");
      }
      bytes = bytesOf(raw).slice();
    } else if (typeof raw === "string") {
      if (raw.length !== n * bytesPerElement(dtype)) {
        this.fail("ndarray: data length does not match its shape");
      }
      bytes = Uint8Array.from(raw, (c) => c.charCodeAt(0) & 0xff);
    } else return;
    target.array = { dtype, shape, data: typedArrayFor(dtype, bytes.buffer as ArrayBuffer) };
  }
}

const NUMPY_CODES: Record<string, DType> = {
  f2: "float16",
  f4: "float32",
  f8: "float64",
  i1: "int8",
  i2: "int16",
  i4: "int32",
  i8: "int64",
  u1: "uint8",
  b1: "bool",
};

function numpyDType(dt: PyDtype): DType | undefined {
  const code = dt.code.replace(/^[<>|=]/, "");
  return Object.hasOwn(NUMPY_CODES, code) ? NUMPY_CODES[code] : undefined;
}

/**
 * Reads one pickle nested in another's data (a legacy `torch.save` blob, say), with the nesting
 * depth checked. Used by `torch_file.ts`; `depth` counts the enclosing pickles.
 *
 * @throws {IoError} as {@linkcode unpickle}, or when `depth` exceeds 4.
 */
export function unpickleNested(
  source: ByteSource,
  options: UnpickleOptions,
  depth: number,
): UnpickleResult {
  if (depth > 4) {
    throw new IoError(`${options.name ?? "pickle"}: embedded pickles nested too deeply`);
  }
  return new Machine(source, options, depth).run();
}
