/**
 * Reading and writing NumPy `.npy` files (format versions 1.0, 2.0 and 3.0).
 *
 * Supported dtypes: `<f4 <f8 <f2 |i1 |u1 <i2 <i4 <i8 |b1`, and the big-endian (`>`) forms of the
 * multi-byte ones, which are byte-swapped on reading. Fortran-ordered arrays are transposed to C
 * order on reading. The header (a Python dict literal) is parsed by a small strict parser, never
 * evaluated. Every malformed input is an {@linkcode IoError} naming the file and the problem.
 *
 * @example
 * ```ts
 * import { readNpy, writeNpy } from "./npy.ts";
 * import { hostTensor } from "./host_tensor.ts";
 *
 * await writeNpy("/tmp/sida-demo/a.npy", hostTensor("float64", [3], new Float64Array([1, 2, 3])));
 * const t = await readNpy("/tmp/sida-demo/a.npy"); // { dtype: "float64", shape: [3], data }
 * ```
 *
 * @module
 */
import type { Tensor } from "../deps.ts";
import { writeFileAtomic } from "./atomic.ts";
import {
  bytesPerElement,
  type DType,
  fromTfTensor,
  type HostTensor,
  IoError,
  tensorBytes,
  typedArrayFor,
  validateHostTensor,
} from "./host_tensor.ts";

/** Largest `.npy` header accepted, in bytes (NumPy itself refuses more than 10,000 by default). */
export const NPY_MAX_HEADER_BYTES = 1_000_000;

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
const BYTES_LABEL = "<npy bytes>";

/** Type code (the descr without its byte-order character) → dtype. */
const FROM_CODE: Record<string, DType> = {
  f4: "float32",
  f8: "float64",
  f2: "float16",
  i1: "int8",
  u1: "uint8",
  i2: "int16",
  i4: "int32",
  i8: "int64",
  b1: "bool",
};

const TO_DESCR: Partial<Record<DType, string>> = {
  float32: "<f4",
  float64: "<f8",
  float16: "<f2",
  int8: "|i1",
  uint8: "|u1",
  int16: "<i2",
  int32: "<i4",
  int64: "<i8",
  bool: "|b1",
};

/** The parsed `.npy` preamble. */
interface NpyHeader {
  dtype: DType;
  bigEndian: boolean;
  fortranOrder: boolean;
  shape: number[];
  /** Byte offset of the data. */
  dataStart: number;
  /** Bytes of data. */
  dataLength: number;
}

// ---------------------------------------------------------------------------------------------
// Python literal parser: dicts, tuples, lists, strings, ints, True/False/None

type PyValue = null | boolean | number | string | PyTuple | PyValue[] | Map<string, PyValue>;

class PyTuple {
  constructor(readonly items: PyValue[]) {}
}

const MAX_PY_DEPTH = 16;

class PyLiteralParser {
  pos = 0;
  constructor(readonly s: string, readonly fail: (msg: string) => never) {}

  error(msg: string): never {
    return this.fail(`invalid header at character ${this.pos}: ${msg}`);
  }

  ws(): void {
    while (this.pos < this.s.length && " \t\r\n".includes(this.s[this.pos])) this.pos++;
  }

  parseDocument(): PyValue {
    this.ws();
    const v = this.value(0);
    this.ws();
    if (this.pos !== this.s.length) this.error("unexpected text after the header dict");
    return v;
  }

  value(depth: number): PyValue {
    if (depth > MAX_PY_DEPTH) this.error(`nesting deeper than ${MAX_PY_DEPTH}`);
    const c = this.s[this.pos];
    if (c === "{") return this.dict(depth);
    if (c === "(") {
      const { items, trailingComma } = this.sequence(")", depth);
      if (items.length === 1 && !trailingComma) return items[0]; // parenthesised expression
      return new PyTuple(items);
    }
    if (c === "[") return this.sequence("]", depth).items;
    if (c === "'" || c === '"') return this.string();
    const word = /^(?:True|False|None|[+-]?[0-9]+[lL]?)/.exec(
      this.s.slice(this.pos, this.pos + 40),
    );
    if (word) {
      const w = word[0];
      if (/[0-9A-Za-z_]/.test(this.s[this.pos + w.length] ?? "")) this.error("bad literal");
      this.pos += w.length;
      if (w === "True") return true;
      if (w === "False") return false;
      if (w === "None") return null;
      const n = Number(w.replace(/[lL]$/, ""));
      if (!Number.isSafeInteger(n)) this.error(`integer ${w} is too large`);
      return n;
    }
    return this.error(c === undefined ? "unexpected end" : `unexpected ${JSON.stringify(c)}`);
  }

  sequence(close: string, depth: number): { items: PyValue[]; trailingComma: boolean } {
    this.pos++;
    const items: PyValue[] = [];
    let trailingComma = false;
    for (;;) {
      this.ws();
      if (this.s[this.pos] === close) {
        this.pos++;
        return { items, trailingComma };
      }
      items.push(this.value(depth + 1));
      this.ws();
      trailingComma = false;
      if (this.s[this.pos] === ",") {
        this.pos++;
        trailingComma = true;
      } else if (this.s[this.pos] !== close) {
        this.error(`expected ',' or '${close}'`);
      }
    }
  }

  dict(depth: number): Map<string, PyValue> {
    this.pos++;
    const m = new Map<string, PyValue>();
    for (;;) {
      this.ws();
      if (this.s[this.pos] === "}") {
        this.pos++;
        return m;
      }
      const c = this.s[this.pos];
      if (c !== "'" && c !== '"') this.error("expected a string key");
      const key = this.string();
      if (m.has(key)) this.error(`duplicate key ${JSON.stringify(key)}`);
      this.ws();
      if (this.s[this.pos] !== ":") this.error("expected ':'");
      this.pos++;
      this.ws();
      m.set(key, this.value(depth + 1));
      this.ws();
      if (this.s[this.pos] === ",") this.pos++;
      else if (this.s[this.pos] !== "}") this.error("expected ',' or '}'");
    }
  }

  string(): string {
    const quote = this.s[this.pos++];
    let out = "";
    for (;;) {
      const c = this.s[this.pos];
      if (c === undefined || c === "\n") this.error("unterminated string");
      this.pos++;
      if (c === quote) return out;
      if (c === "\\") {
        const e = this.s[this.pos++];
        if (e === "\\" || e === "'" || e === '"') out += e;
        else if (e === "n") out += "\n";
        else if (e === "t") out += "\t";
        else this.error("unsupported escape in string");
      } else {
        out += c;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Header

function fail(label: string, msg: string): never {
  throw new IoError(`${label}: ${msg}`);
}

/** Reads the fixed preamble: returns the header's length and where the header starts. */
function parsePreamble(
  pre: Uint8Array,
  label: string,
): { version: number; headerStart: number; headerLength: number } {
  if (MAGIC.some((b, i) => i < pre.length && pre[i] !== b)) {
    fail(label, "not a .npy file (bad magic, expected \\x93NUMPY)");
  }
  if (pre.length < 8) fail(label, `${pre.length} bytes is too short for the .npy preamble`);
  const major = pre[6];
  const minor = pre[7];
  if (minor !== 0 || major < 1 || major > 3) {
    fail(label, `unsupported .npy format version ${major}.${minor}`);
  }
  const lenBytes = major === 1 ? 2 : 4;
  if (pre.length < 8 + lenBytes) fail(label, "file ends inside the header length");
  const dv = new DataView(pre.buffer, pre.byteOffset, pre.byteLength);
  const headerLength = major === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  if (headerLength > NPY_MAX_HEADER_BYTES) {
    fail(label, `header length ${headerLength} exceeds the cap of ${NPY_MAX_HEADER_BYTES} bytes`);
  }
  return { version: major, headerStart: 8 + lenBytes, headerLength };
}

function parseHeaderText(
  bytes: Uint8Array,
  version: number,
  dataStart: number,
  fileSize: number,
  label: string,
): NpyHeader {
  let text: string;
  if (version === 3) {
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      return fail(label, "header is not valid UTF-8");
    }
  } else {
    text = new TextDecoder("latin1").decode(bytes);
  }
  const root = new PyLiteralParser(text, (msg) => fail(label, msg)).parseDocument();
  if (!(root instanceof Map)) return fail(label, "header is not a dict");
  const keys = [...root.keys()].sort().join(",");
  if (keys !== "descr,fortran_order,shape") {
    fail(label, `header keys must be descr, fortran_order, shape; got ${keys || "none"}`);
  }
  const descr = root.get("descr");
  if (typeof descr !== "string") {
    return fail(label, "descr is not a string (structured dtypes are not supported)");
  }
  const m = /^([<>|=])([a-z][0-9]+)$/.exec(descr);
  const code = m?.[2];
  if (!m || code === undefined || !Object.hasOwn(FROM_CODE, code)) {
    return fail(
      label,
      `unsupported dtype ${JSON.stringify(descr)} (supported: <f4 <f8 <f2 |i1 |u1 <i2 <i4 <i8 |b1)`,
    );
  }
  const dtype = FROM_CODE[code];
  const item = bytesPerElement(dtype);
  const order = m[1];
  if (item > 1 && (order === "|" || order === "=")) {
    fail(label, `dtype ${JSON.stringify(descr)} does not state its byte order`);
  }
  const fortranOrder = root.get("fortran_order");
  if (typeof fortranOrder !== "boolean") fail(label, "fortran_order is not True or False");
  const shapeV = root.get("shape");
  if (!(shapeV instanceof PyTuple)) fail(label, "shape is not a tuple");
  const shape = (shapeV as PyTuple).items;
  if (!shape.every((d) => typeof d === "number" && Number.isSafeInteger(d) && d >= 0)) {
    fail(label, "shape must be a tuple of non-negative integers");
  }
  // Byte count as a float product: exact whenever it is at most 2^53, and too large otherwise.
  const available = fileSize - dataStart;
  const nbytes = (shape as number[]).reduce((a, d) => a * d, item);
  if (nbytes > available) {
    fail(
      label,
      `data truncated: shape ${formatShape(shape as number[])} of ${descr} needs ${
        nbytes <= Number.MAX_SAFE_INTEGER ? nbytes : "more than 2^53"
      } bytes, file has ${available} after the header`,
    );
  }
  if (nbytes < available) {
    fail(label, `${available - nbytes} unexpected bytes after the array data`);
  }
  return {
    dtype,
    bigEndian: order === ">" && item > 1,
    fortranOrder: fortranOrder as boolean,
    shape: shape as number[],
    dataStart,
    dataLength: nbytes,
  };
}

function decodeHeader(bytes: Uint8Array, label: string): NpyHeader {
  const pre = parsePreamble(bytes.subarray(0, 12), label);
  const end = pre.headerStart + pre.headerLength;
  if (end > bytes.length) {
    fail(label, `header length ${pre.headerLength} reaches past the end of the file`);
  }
  return parseHeaderText(
    bytes.subarray(pre.headerStart, end),
    pre.version,
    end,
    bytes.length,
    label,
  );
}

// ---------------------------------------------------------------------------------------------
// Data

function swapBytes(buf: Uint8Array, item: number): void {
  for (let i = 0; i < buf.length; i += item) {
    for (let a = i, b = i + item - 1; a < b; a++, b--) {
      const t = buf[a];
      buf[a] = buf[b];
      buf[b] = t;
    }
  }
}

/** C-order copy of an array stored in Fortran order (element-wise, any element size). */
function fortranToC(
  src: Uint8Array<ArrayBuffer>,
  shape: number[],
  item: number,
): Uint8Array<ArrayBuffer> {
  const nd = shape.length;
  const n = src.length / item;
  if (nd < 2 || n === 0) return src;
  const fStride: number[] = new Array(nd);
  let s = 1;
  for (let k = 0; k < nd; k++) {
    fStride[k] = s;
    s *= shape[k];
  }
  const out = new Uint8Array(src.length);
  const idx = new Array(nd).fill(0);
  let f = 0; // Fortran linear index of the current C-order position
  for (let c = 0; c < n; c++) {
    out.set(src.subarray(f * item, f * item + item), c * item);
    // Advance the C-order multi-index (last axis fastest).
    for (let k = nd - 1; k >= 0; k--) {
      idx[k]++;
      f += fStride[k];
      if (idx[k] < shape[k]) break;
      f -= fStride[k] * shape[k];
      idx[k] = 0;
    }
  }
  return out;
}

/** Turns the raw data bytes (a fresh buffer we own) into a host tensor. */
function finish(h: NpyHeader, raw: Uint8Array<ArrayBuffer>): HostTensor {
  const item = bytesPerElement(h.dtype);
  if (h.bigEndian) swapBytes(raw, item);
  const c = h.fortranOrder ? fortranToC(raw, h.shape, item) : raw;
  const buffer = c.byteOffset === 0 && c.byteLength === c.buffer.byteLength
    ? c.buffer
    : c.slice().buffer;
  return { dtype: h.dtype, shape: [...h.shape], data: typedArrayFor(h.dtype, buffer) };
}

/**
 * Decodes `.npy` bytes held in memory. The data is copied into a fresh array (C order, host
 * byte order), sharing no memory with `bytes`.
 *
 * @throws {IoError} on bad magic, an unsupported version or dtype, a malformed header, or a data
 *   size that does not match the shape.
 *
 * @example
 * ```ts
 * import { decodeNpy, encodeNpy } from "./npy.ts";
 * import { hostTensor } from "./host_tensor.ts";
 * decodeNpy(encodeNpy(hostTensor("int32", [2], new Int32Array([1, 2])))).data; // Int32Array [1, 2]
 * ```
 */
export function decodeNpy(bytes: Uint8Array): HostTensor {
  if (!(bytes instanceof Uint8Array)) fail(BYTES_LABEL, "input is not a Uint8Array");
  const h = decodeHeader(bytes, BYTES_LABEL);
  return finish(h, bytes.slice(h.dataStart, h.dataStart + h.dataLength));
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

/**
 * Reads a `.npy` file (a path, or bytes in memory). From a path, the preamble and header are
 * read and checked against the file size before the data is read straight into its array.
 *
 * @throws {IoError} on any malformed input, or when the file cannot be opened (the OS error is
 *   the `cause`).
 *
 * @example
 * ```ts
 * import { readNpy } from "./npy.ts";
 * const t = await readNpy("tests/fixtures/io/f32_2x3.npy");
 * console.log(t.dtype, t.shape); // float32 [2, 3]
 * ```
 */
export async function readNpy(pathOrBytes: string | Uint8Array): Promise<HostTensor> {
  if (typeof pathOrBytes !== "string") return decodeNpy(pathOrBytes);
  const path = pathOrBytes;
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw new IoError(`${path}: cannot open: ${(e as Error).message}`, { cause: e });
  }
  try {
    const st = await file.stat();
    if (!st.isFile) fail(path, "not a regular file");
    const size = st.size;
    const preBytes = new Uint8Array(Math.min(12, size));
    const got = await readFull(file, preBytes);
    const pre = parsePreamble(preBytes.subarray(0, got), path);
    const end = pre.headerStart + pre.headerLength;
    if (end > size) {
      fail(path, `header length ${pre.headerLength} reaches past the end of the file`);
    }
    await file.seek(pre.headerStart, Deno.SeekMode.Start);
    const headerBytes = new Uint8Array(pre.headerLength);
    if (await readFull(file, headerBytes) !== headerBytes.length) {
      fail(path, "file ended inside the header (changed while reading?)");
    }
    const h = parseHeaderText(headerBytes, pre.version, end, size, path);
    const raw = new Uint8Array(h.dataLength);
    if (await readFull(file, raw) !== raw.length) {
      fail(path, "file ended inside the data (changed while reading?)");
    }
    return finish(h, raw);
  } finally {
    file.close();
  }
}

function formatShape(shape: number[]): string {
  if (shape.length === 0) return "()";
  if (shape.length === 1) return `(${shape[0]},)`;
  return `(${shape.join(", ")})`;
}

function encodeHeader(t: HostTensor, label: string): Uint8Array {
  validateHostTensor(t, label);
  const descr = TO_DESCR[t.dtype];
  if (descr === undefined) {
    fail(label, `dtype ${t.dtype} has no .npy equivalent (convert it to float32 first)`);
  }
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${formatShape(t.shape)}, }`;
  // Pad with spaces and a final newline so that the data starts at a multiple of 64 bytes.
  let version = 1;
  let total = 10 + dict.length + 1;
  let padded = Math.ceil(total / 64) * 64;
  if (padded - 10 > 0xffff) {
    version = 2;
    total = 12 + dict.length + 1;
    padded = Math.ceil(total / 64) * 64;
  }
  const pre = version === 1 ? 10 : 12;
  const headerLength = padded - pre;
  const out = new Uint8Array(padded);
  out.set(MAGIC, 0);
  out[6] = version;
  out[7] = 0;
  const dv = new DataView(out.buffer);
  if (version === 1) dv.setUint16(8, headerLength, true);
  else dv.setUint32(8, headerLength, true);
  const text = dict + " ".repeat(headerLength - dict.length - 1) + "\n";
  for (let i = 0; i < text.length; i++) out[pre + i] = text.charCodeAt(i);
  return out;
}

/**
 * Encodes a host tensor as `.npy` bytes (format 1.0, or 2.0 for a very long header), C order,
 * little-endian, with the data 64-byte aligned as NumPy writes it. `bfloat16` has no NumPy dtype
 * and is an {@linkcode IoError}.
 *
 * @example
 * ```ts
 * import { encodeNpy } from "./npy.ts";
 * import { hostTensor } from "./host_tensor.ts";
 * const bytes = encodeNpy(hostTensor("uint8", [2, 2], new Uint8Array([1, 2, 3, 4])));
 * ```
 */
export function encodeNpy(t: HostTensor): Uint8Array {
  const head = encodeHeader(t, "encodeNpy");
  const data = tensorBytes(t);
  const out = new Uint8Array(head.length + data.length);
  out.set(head, 0);
  out.set(data, head.length);
  return out;
}

function isTfTensor(t: HostTensor | Tensor): t is Tensor {
  return typeof (t as Tensor).dataId === "object" && typeof (t as Tensor).data === "function";
}

/**
 * Writes a host tensor or a tfjs tensor (copied with `await t.data()`; not disposed) to a `.npy`
 * file, atomically (see {@linkcode writeFileAtomic}).
 *
 * @throws {IoError} on a malformed tensor or a dtype `.npy` cannot hold (nothing is written then).
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { writeNpy } from "./npy.ts";
 * await writeNpy("/tmp/sida-demo/ones.npy", tf.ones([2, 3]));
 * ```
 */
export async function writeNpy(path: string, t: HostTensor | Tensor): Promise<void> {
  const h = isTfTensor(t) ? await fromTfTensor(t) : t;
  const head = encodeHeader(h, path);
  await writeFileAtomic(path, [head, tensorBytes(h)]);
}
