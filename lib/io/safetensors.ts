/**
 * Reading and writing [safetensors](https://github.com/huggingface/safetensors) files: an
 * 8-byte little-endian header length N, N bytes of JSON header, then the tensor bytes
 * (little-endian, C order) covering the rest of the file without holes or overlaps.
 *
 * The reader is meant for untrusted files: the header is parsed with a strict JSON parser of our
 * own (duplicate keys, non-integer numbers and deep nesting are rejected), every entry is
 * checked against the file size before anything is allocated, and every violation is an
 * {@linkcode IoError} naming the file and the problem.
 *
 * @example
 * ```ts
 * import { readSafetensors, writeSafetensors } from "./safetensors.ts";
 * import { hostTensor } from "./host_tensor.ts";
 *
 * await writeSafetensors("/tmp/sida-demo/w.safetensors", {
 *   "conv.weight": hostTensor("float32", [2, 3], new Float32Array(6)),
 * }, { format: "pt" });
 * const { tensors, metadata } = await readSafetensors("/tmp/sida-demo/w.safetensors");
 * console.log(tensors.get("conv.weight")?.shape, metadata.format); // [2, 3] "pt"
 * ```
 *
 * @module
 */
import { writeFileAtomic } from "./atomic.ts";
import {
  bytesPerElement,
  type DType,
  type HostTensor,
  IoError,
  tensorBytes,
  typedArrayFor,
  validateHostTensor,
} from "./host_tensor.ts";

/** Largest header accepted, in bytes (the reference implementation's cap). */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;

const TO_DTYPE: Record<string, DType> = {
  F64: "float64",
  F32: "float32",
  F16: "float16",
  BF16: "bfloat16",
  I64: "int64",
  I32: "int32",
  I16: "int16",
  I8: "int8",
  U8: "uint8",
  BOOL: "bool",
};

const FROM_DTYPE: Record<DType, string> = {
  float64: "F64",
  float32: "F32",
  float16: "F16",
  bfloat16: "BF16",
  int64: "I64",
  int32: "I32",
  int16: "I16",
  int8: "I8",
  uint8: "U8",
  bool: "BOOL",
};

/** One tensor's entry in a safetensors header. */
export interface SafetensorsEntry {
  /** Tensor name. */
  name: string;
  /** Element type. */
  dtype: DType;
  /** Dimensions. */
  shape: number[];
  /** Offset of the first byte, relative to the start of the file. */
  byteOffset: number;
  /** Number of data bytes (`numElements(shape) * bytesPerElement(dtype)`). */
  byteLength: number;
}

/** A validated safetensors header, as returned by {@linkcode readSafetensorsHeader}. */
export interface SafetensorsHeader {
  /** The tensors, in the order of their data in the file. */
  entries: SafetensorsEntry[];
  /** The `__metadata__` strings (empty when absent). */
  metadata: Record<string, string>;
}

/** Options of {@linkcode readSafetensors} and {@linkcode decodeSafetensors}. */
export interface ReadSafetensorsOptions {
  /** Load only these tensors (each must exist); default: all. */
  names?: string[];
}

/** What {@linkcode readSafetensors} and {@linkcode decodeSafetensors} return. */
export interface SafetensorsContent {
  /** The tensors, in the order of their data in the file. */
  tensors: Map<string, HostTensor>;
  /** The `__metadata__` strings (empty when absent). */
  metadata: Record<string, string>;
}

/** Tensors to write: a `Map` or a plain record from name to tensor. */
export type TensorDict = Map<string, HostTensor> | Record<string, HostTensor>;

const BYTES_LABEL = "<safetensors bytes>";

function q(name: string): string {
  const s = JSON.stringify(name);
  return s.length > 82 ? `${s.slice(0, 80)}…"` : s;
}

// ---------------------------------------------------------------------------------------------
// Strict JSON parser (objects become Maps; duplicate keys are errors)

/** A JSON number written with a fraction or exponent: never valid where we need integers. */
class JsonNonInteger {
  constructor(readonly text: string) {}
}

type JsonValue =
  | null
  | boolean
  | string
  | number
  | JsonNonInteger
  | JsonValue[]
  | Map<string, JsonValue>;

const MAX_JSON_DEPTH = 64;

class JsonParser {
  pos = 0;
  constructor(readonly s: string, readonly fail: (msg: string) => never) {}

  error(msg: string): never {
    return this.fail(`invalid header JSON at character ${this.pos}: ${msg}`);
  }

  ws(): void {
    const s = this.s;
    while (this.pos < s.length) {
      const c = s.charCodeAt(this.pos);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) this.pos++;
      else break;
    }
  }

  parseDocument(): JsonValue {
    this.ws();
    const v = this.value(0);
    this.ws();
    if (this.pos !== this.s.length) this.error("unexpected text after the JSON value");
    return v;
  }

  value(depth: number): JsonValue {
    if (depth > MAX_JSON_DEPTH) this.error(`nesting deeper than ${MAX_JSON_DEPTH}`);
    const c = this.s[this.pos];
    if (c === "{") return this.object(depth);
    if (c === "[") return this.array(depth);
    if (c === '"') return this.string();
    if (c === "-" || (c >= "0" && c <= "9")) return this.number();
    for (const [word, v] of [["true", true], ["false", false], ["null", null]] as const) {
      if (this.s.startsWith(word, this.pos)) {
        this.pos += word.length;
        return v;
      }
    }
    return this.error(c === undefined ? "unexpected end" : `unexpected ${JSON.stringify(c)}`);
  }

  object(depth: number): Map<string, JsonValue> {
    const m = new Map<string, JsonValue>();
    this.pos++; // {
    this.ws();
    if (this.s[this.pos] === "}") {
      this.pos++;
      return m;
    }
    for (;;) {
      this.ws();
      if (this.s[this.pos] !== '"') this.error("expected a string key");
      const key = this.string();
      if (m.has(key)) this.error(`duplicate key ${q(key)}`);
      this.ws();
      if (this.s[this.pos] !== ":") this.error("expected ':'");
      this.pos++;
      this.ws();
      m.set(key, this.value(depth + 1));
      this.ws();
      const c = this.s[this.pos++];
      if (c === "}") return m;
      if (c !== ",") {
        this.pos--;
        this.error("expected ',' or '}'");
      }
    }
  }

  array(depth: number): JsonValue[] {
    const a: JsonValue[] = [];
    this.pos++; // [
    this.ws();
    if (this.s[this.pos] === "]") {
      this.pos++;
      return a;
    }
    for (;;) {
      this.ws();
      a.push(this.value(depth + 1));
      this.ws();
      const c = this.s[this.pos++];
      if (c === "]") return a;
      if (c !== ",") {
        this.pos--;
        this.error("expected ',' or ']'");
      }
    }
  }

  string(): string {
    const s = this.s;
    const start = ++this.pos; // opening quote
    let out = "";
    let chunkStart = start;
    for (;;) {
      if (this.pos >= s.length) this.error("unterminated string");
      const c = s.charCodeAt(this.pos);
      if (c === 0x22) {
        out += s.slice(chunkStart, this.pos);
        this.pos++;
        return out;
      }
      if (c < 0x20) this.error("control character in string");
      if (c === 0x5c) {
        out += s.slice(chunkStart, this.pos);
        const e = s[this.pos + 1];
        const simple: Record<string, string> = {
          '"': '"',
          "\\": "\\",
          "/": "/",
          b: "\b",
          f: "\f",
          n: "\n",
          r: "\r",
          t: "\t",
        };
        if (e !== undefined && Object.hasOwn(simple, e)) {
          out += simple[e];
          this.pos += 2;
        } else if (e === "u") {
          const hex = s.slice(this.pos + 2, this.pos + 6);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.error("bad \\u escape");
          out += String.fromCharCode(parseInt(hex, 16));
          this.pos += 6;
        } else {
          this.error("bad escape");
        }
        chunkStart = this.pos;
        continue;
      }
      this.pos++;
    }
  }

  number(): number | JsonNonInteger {
    const m = /^-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(
      this.s.slice(this.pos, this.pos + 400),
    );
    if (!m) return this.error("bad number");
    this.pos += m[0].length;
    if (m[1] !== undefined || m[2] !== undefined) return new JsonNonInteger(m[0]);
    return Number(m[0]);
  }
}

// ---------------------------------------------------------------------------------------------
// Header validation

function isUint(v: JsonValue): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0 && !Object.is(v, -0);
}

function describe(v: JsonValue | undefined): string {
  if (v === undefined) return "missing";
  if (v instanceof JsonNonInteger) return v.text;
  if (v instanceof Map) return "an object";
  if (Array.isArray(v)) return "a list";
  const s = JSON.stringify(v);
  return s.length > 40 ? `${s.slice(0, 40)}…` : s;
}

/**
 * Parses and validates a header against a data buffer of `bufferLength` bytes that starts at
 * byte `dataStart` of the file.
 */
function parseHeader(
  headerBytes: Uint8Array,
  dataStart: number,
  bufferLength: number,
  label: string,
): SafetensorsHeader {
  const fail = (msg: string): never => {
    throw new IoError(`${label}: ${msg}`);
  };
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(headerBytes);
  } catch {
    return fail("header is not valid UTF-8");
  }
  if (!text.startsWith("{")) fail("header does not start with '{'");
  const root = new JsonParser(text, fail).parseDocument();
  if (!(root instanceof Map)) return fail("header JSON is not an object");

  const metadata: Record<string, string> = {};
  const entries: SafetensorsEntry[] = [];
  for (const [name, v] of root) {
    if (name === "__metadata__") {
      if (!(v instanceof Map)) fail(`__metadata__ is ${describe(v)}, not an object`);
      for (const [k, s] of v as Map<string, JsonValue>) {
        if (typeof s !== "string") {
          fail(`__metadata__ value for ${q(k)} is ${describe(s)}, not a string`);
        }
        Object.defineProperty(metadata, k, {
          value: s,
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      continue;
    }
    const what = `tensor ${q(name)}`;
    if (!(v instanceof Map)) return fail(`${what}: entry is ${describe(v)}, not an object`);
    const dt = v.get("dtype");
    if (typeof dt !== "string") return fail(`${what}: dtype is ${describe(dt)}, not a string`);
    if (!Object.hasOwn(TO_DTYPE, dt)) {
      return fail(
        `${what}: unsupported dtype ${q(dt)} (known: ${Object.keys(TO_DTYPE).join(", ")})`,
      );
    }
    const dtype = TO_DTYPE[dt];
    const shape = v.get("shape");
    if (!Array.isArray(shape) || !shape.every(isUint)) {
      return fail(
        `${what}: shape must be a list of non-negative integers, got ${
          Array.isArray(shape) ? `[${shape.map(describe).join(", ")}]` : describe(shape)
        }`,
      );
    }
    const offsets = v.get("data_offsets");
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isUint)) {
      return fail(`${what}: data_offsets must be a list of two non-negative integers`);
    }
    const [begin, end] = offsets as number[];
    if (end < begin) fail(`${what}: data_offsets [${begin}, ${end}] end before they begin`);
    if (end > bufferLength) {
      fail(
        `${what}: data_offsets [${begin}, ${end}] reach past the ${bufferLength}-byte data buffer` +
          " (file truncated?)",
      );
    }
    // Byte count as a float product: exact whenever it is at most 2^53, and too large otherwise.
    const bytes = (shape as number[]).reduce((a, d) => a * d, bytesPerElement(dtype));
    if (bytes !== end - begin) {
      fail(
        `${what}: data_offsets [${begin}, ${end}] span ${end - begin} bytes but dtype ${dt} and ` +
          `shape [${shape.join(", ")}] need ${
            bytes <= Number.MAX_SAFE_INTEGER ? bytes : "more than 2^53"
          }`,
      );
    }
    entries.push({
      name,
      dtype,
      shape: shape as number[],
      byteOffset: dataStart + begin,
      byteLength: end - begin,
    });
  }

  // The tensors must tile the buffer exactly: sorted by offset, each begins where the last ended.
  entries.sort((a, b) => a.byteOffset - b.byteOffset || a.byteLength - b.byteLength);
  let expected = dataStart;
  for (const e of entries) {
    if (e.byteOffset < expected) {
      fail(
        `tensor ${q(e.name)}: data overlaps the previous tensor at byte ${
          e.byteOffset - dataStart
        }`,
      );
    }
    if (e.byteOffset > expected) {
      fail(
        `hole in the data buffer: bytes ${expected - dataStart}..${e.byteOffset - dataStart} ` +
          "belong to no tensor",
      );
    }
    expected = e.byteOffset + e.byteLength;
  }
  if (expected !== dataStart + bufferLength) {
    fail(
      `hole in the data buffer: bytes ${expected - dataStart}..${bufferLength} belong to no tensor`,
    );
  }
  return { entries, metadata };
}

function selectEntries(
  header: SafetensorsHeader,
  names: string[] | undefined,
  label: string,
): SafetensorsEntry[] {
  if (names === undefined) return header.entries;
  const wanted = new Set(names);
  const out = header.entries.filter((e) => wanted.has(e.name));
  if (out.length !== wanted.size) {
    const have = new Set(out.map((e) => e.name));
    const missing = [...wanted].filter((n) => !have.has(n));
    throw new IoError(`${label}: no tensor named ${missing.map(q).join(", ")}`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding

function headerLength(bytes8: Uint8Array, fileSize: number, label: string): number {
  const n = new DataView(bytes8.buffer, bytes8.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(SAFETENSORS_MAX_HEADER_BYTES)) {
    throw new IoError(
      `${label}: header length ${n} exceeds the cap of ${SAFETENSORS_MAX_HEADER_BYTES} bytes`,
    );
  }
  const len = Number(n);
  if (8 + len > fileSize) {
    throw new IoError(
      `${label}: header length ${len} exceeds the ${fileSize - 8} bytes after the length field` +
        " (file truncated or not safetensors)",
    );
  }
  if (len < 2) throw new IoError(`${label}: header length ${len} is too small for a JSON object`);
  return len;
}

function decodeHeaderFromBytes(bytes: Uint8Array, label: string): SafetensorsHeader {
  if (!(bytes instanceof Uint8Array)) throw new IoError(`${label}: input is not a Uint8Array`);
  if (bytes.length < 8) {
    throw new IoError(`${label}: ${bytes.length} bytes is too short for the 8-byte header length`);
  }
  const n = headerLength(bytes.subarray(0, 8), bytes.length, label);
  return parseHeader(bytes.subarray(8, 8 + n), 8 + n, bytes.length - 8 - n, label);
}

function makeTensor(e: SafetensorsEntry, data: ArrayBuffer): HostTensor {
  return { dtype: e.dtype, shape: [...e.shape], data: typedArrayFor(e.dtype, data) };
}

/**
 * Decodes safetensors bytes held in memory. Every tensor's data is copied into a fresh (hence
 * aligned) array, so the result shares no memory with `bytes`. `float16`/`bfloat16` data come as
 * a `Uint16Array` of raw bits.
 *
 * @throws {IoError} on any malformed input.
 *
 * @example
 * ```ts
 * import { decodeSafetensors, encodeSafetensors } from "./safetensors.ts";
 * import { hostTensor } from "./host_tensor.ts";
 * const bytes = encodeSafetensors({ x: hostTensor("int32", [2], new Int32Array([7, 8])) });
 * decodeSafetensors(bytes).tensors.get("x")?.data; // Int32Array [7, 8]
 * ```
 */
export function decodeSafetensors(
  bytes: Uint8Array,
  options: ReadSafetensorsOptions = {},
): SafetensorsContent {
  const header = decodeHeaderFromBytes(bytes, BYTES_LABEL);
  const tensors = new Map<string, HostTensor>();
  for (const e of selectEntries(header, options.names, BYTES_LABEL)) {
    const copy = bytes.slice(e.byteOffset, e.byteOffset + e.byteLength);
    tensors.set(e.name, makeTensor(e, copy.buffer));
  }
  return { tensors, metadata: header.metadata };
}

async function readFull(file: Deno.FsFile, buf: Uint8Array): Promise<number> {
  let off = 0;
  while (off < buf.length) {
    const n = await file.read(buf.subarray(off));
    if (n === null) break;
    off += n;
  }
  return off;
}

async function openFile(path: string): Promise<{ file: Deno.FsFile; size: number }> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw new IoError(`${path}: cannot open: ${(e as Error).message}`, { cause: e });
  }
  try {
    const st = await file.stat();
    if (!st.isFile) throw new IoError(`${path}: not a regular file`);
    return { file, size: st.size };
  } catch (e) {
    file.close();
    throw e;
  }
}

async function readExact(file: Deno.FsFile, n: number, path: string, what: string) {
  const buf = new Uint8Array(n);
  if (await readFull(file, buf) !== n) {
    throw new IoError(`${path}: file ended while reading ${what} (changed while reading?)`);
  }
  return buf;
}

async function readHeaderFromFile(
  file: Deno.FsFile,
  size: number,
  path: string,
): Promise<SafetensorsHeader> {
  if (size < 8) {
    throw new IoError(`${path}: ${size} bytes is too short for the 8-byte header length`);
  }
  const n = headerLength(await readExact(file, 8, path, "the header length"), size, path);
  const headerBytes = await readExact(file, n, path, "the header");
  return parseHeader(headerBytes, 8 + n, size - 8 - n, path);
}

/**
 * Reads and validates only the header of a safetensors file (a path, or bytes in memory): the
 * name, dtype, shape and position of every tensor, and the metadata. Reads no tensor data.
 *
 * @throws {IoError} on any malformed input, or when the file cannot be opened.
 *
 * @example
 * ```ts
 * import { readSafetensorsHeader } from "./safetensors.ts";
 * const { entries } = await readSafetensorsHeader("model.safetensors");
 * for (const e of entries) console.log(e.name, e.dtype, e.shape);
 * ```
 */
export async function readSafetensorsHeader(
  pathOrBytes: string | Uint8Array,
): Promise<SafetensorsHeader> {
  if (typeof pathOrBytes !== "string") return decodeHeaderFromBytes(pathOrBytes, BYTES_LABEL);
  const { file, size } = await openFile(pathOrBytes);
  try {
    return await readHeaderFromFile(file, size, pathOrBytes);
  } finally {
    file.close();
  }
}

/**
 * Reads a safetensors file (a path, or bytes in memory). From a path, the header is read and
 * validated first with bounded reads, then each wanted tensor's bytes are read straight into
 * their own array (the file is never held in memory as a whole). `float16`/`bfloat16` data come
 * as a `Uint16Array` of raw bits; `bool` as a `Uint8Array`.
 *
 * @param pathOrBytes a file path, or the file's bytes.
 * @param options `names`: load only these tensors.
 * @returns the tensors in the order of their data in the file, and the `__metadata__` strings.
 * @throws {IoError} on any malformed input (naming the file and the problem), a missing
 *   requested name, or when the file cannot be opened (the OS error is the `cause`).
 *
 * @example
 * ```ts
 * import { readSafetensors } from "./safetensors.ts";
 * const { tensors } = await readSafetensors("model.safetensors", { names: ["fc.weight"] });
 * ```
 */
export async function readSafetensors(
  pathOrBytes: string | Uint8Array,
  options: ReadSafetensorsOptions = {},
): Promise<SafetensorsContent> {
  if (typeof pathOrBytes !== "string") return decodeSafetensors(pathOrBytes, options);
  const path = pathOrBytes;
  const { file, size } = await openFile(path);
  try {
    const header = await readHeaderFromFile(file, size, path);
    const tensors = new Map<string, HostTensor>();
    for (const e of selectEntries(header, options.names, path)) {
      await file.seek(e.byteOffset, Deno.SeekMode.Start);
      const buf = await readExact(file, e.byteLength, path, `tensor ${q(e.name)}`);
      tensors.set(e.name, makeTensor(e, buf.buffer));
    }
    return { tensors, metadata: header.metadata };
  } finally {
    file.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding

function toEntries(tensors: TensorDict, label: string): [string, HostTensor][] {
  if (tensors === null || typeof tensors !== "object") {
    throw new IoError(`${label}: tensors must be a Map or a record`);
  }
  const list = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  for (const [name, t] of list) {
    if (typeof name !== "string") {
      throw new IoError(`${label}: tensor name ${name} is not a string`);
    }
    if (name === "__metadata__") throw new IoError(`${label}: "__metadata__" is not a tensor name`);
    validateHostTensor(t, `${label}: tensor ${q(name)}`);
  }
  return list.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Builds the file's leading bytes (length + padded header) and lists the data chunks. */
function layout(
  tensors: TensorDict,
  metadata: Record<string, string> | undefined,
  label: string,
): Uint8Array[] {
  const entries = toEntries(tensors, label);
  const parts: string[] = [];
  if (metadata !== undefined) {
    if (metadata === null || typeof metadata !== "object") {
      throw new IoError(`${label}: metadata must be a record of strings`);
    }
    const items = Object.entries(metadata);
    for (const [k, v] of items) {
      if (typeof v !== "string") {
        throw new IoError(`${label}: metadata value for ${q(k)} is ${typeof v}, not a string`);
      }
    }
    if (items.length > 0) {
      const body = items.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(",");
      parts.push(`"__metadata__":{${body}}`);
    }
  }
  let offset = 0;
  for (const [name, t] of entries) {
    const n = t.data.byteLength;
    parts.push(
      `${JSON.stringify(name)}:{"dtype":"${FROM_DTYPE[t.dtype]}","shape":[${t.shape.join(",")}],` +
        `"data_offsets":[${offset},${offset + n}]}`,
    );
    offset += n;
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded > SAFETENSORS_MAX_HEADER_BYTES) {
    throw new IoError(`${label}: header would be ${padded} bytes, over the reader cap`);
  }
  const head = new Uint8Array(8 + padded).fill(0x20, 8 + json.length);
  new DataView(head.buffer).setBigUint64(0, BigInt(padded), true);
  head.set(json, 8);
  return [head, ...entries.map(([, t]) => tensorBytes(t))];
}

/**
 * Encodes tensors (and optional string metadata) as safetensors bytes in memory. Tensors are
 * laid out in sorted name order; the header is padded with spaces to a multiple of 8 bytes, so
 * the data starts 8-byte aligned.
 *
 * @throws {IoError} on a malformed tensor (wrong array class or length) or non-string metadata.
 *
 * @example
 * ```ts
 * import { encodeSafetensors } from "./safetensors.ts";
 * import { hostTensor } from "./host_tensor.ts";
 * const bytes = encodeSafetensors({ b: hostTensor("float32", [1]) }, { note: "demo" });
 * ```
 */
export function encodeSafetensors(
  tensors: TensorDict,
  metadata?: Record<string, string>,
): Uint8Array {
  const chunks = layout(tensors, metadata, "encodeSafetensors");
  const out = new Uint8Array(chunks.reduce((s, c) => s + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

/**
 * Writes tensors (and optional string metadata) to a safetensors file, atomically (see
 * {@linkcode writeFileAtomic}): everything is validated before the file is created, and the
 * tensors' bytes are streamed from their arrays without building the file in memory.
 *
 * @throws {IoError} on a malformed tensor or non-string metadata (nothing is written then).
 *
 * @example
 * ```ts
 * import { writeSafetensors } from "./safetensors.ts";
 * import { hostTensor } from "./host_tensor.ts";
 * await writeSafetensors("/tmp/sida-demo/b.safetensors", new Map([["b", hostTensor("bool", [3])]]));
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: TensorDict,
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFileAtomic(path, layout(tensors, metadata, path));
}
