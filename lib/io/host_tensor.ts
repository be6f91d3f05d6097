/**
 * A plain host-side tensor ({@linkcode HostTensor}): a dtype, a shape and a typed array in C
 * order, shared by every reader and writer in `lib/io`. Also the exact number conversions between
 * float32 and the 16-bit float formats (IEEE half, bfloat16), and the bridge to and from tfjs.
 *
 * All multi-byte data is in the host's byte order, which is little-endian on every platform
 * Deno runs on.
 *
 * @example
 * ```ts
 * import { hostTensor, toFloat32, float32ToFloat16Bits } from "./host_tensor.ts";
 *
 * const h = hostTensor("float16", [2], new Uint16Array([0x3c00, float32ToFloat16Bits(0.5)]));
 * console.log(toFloat32(h)); // Float32Array [1, 0.5]
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import type { Tensor } from "../deps.ts";

/** Every element type a {@linkcode HostTensor} can hold. */
export type DType =
  | "float32"
  | "float64"
  | "float16"
  | "bfloat16"
  | "int8"
  | "uint8"
  | "int16"
  | "int32"
  | "int64"
  | "bool";

/** All values of {@linkcode DType}, in a fixed order. */
export const DTYPES: readonly DType[] = [
  "float32",
  "float64",
  "float16",
  "bfloat16",
  "int8",
  "uint8",
  "int16",
  "int32",
  "int64",
  "bool",
];

/**
 * The typed arrays a {@linkcode HostTensor} can hold. `Uint16Array` holds the raw bits of
 * `float16` or `bfloat16` values (the tensor's dtype says which); `Uint8Array` holds `uint8` or
 * `bool` (0 or 1) values.
 */
export type HostData =
  | Float32Array
  | Float64Array
  | Uint16Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Int32Array
  | BigInt64Array;

/** A tensor in host memory: dtype, shape, and the elements in C (row-major) order. */
export interface HostTensor {
  /** Element type. */
  dtype: DType;
  /** Dimensions; `[]` for a scalar (one element). */
  shape: number[];
  /** The elements; its length is the product of `shape`. */
  data: HostData;
}

/**
 * Error for every bad input met in `lib/io`: a malformed or truncated file, an unsupported
 * dtype, a tensor whose data does not match its shape. The message names the file (or the
 * function, for in-memory data) and the problem, in one line.
 */
export class IoError extends Error {
  override name = "IoError";
  /**
   * @param message the problem; control characters in it are escaped ({@linkcode printable}),
   *   and a message longer than 1000 characters (a name taken from a hostile file) is cut.
   */
  constructor(message: string, options?: ErrorOptions) {
    const m = printable(message);
    super(m.length > 1000 ? `${m.slice(0, 600)} … ${m.slice(-300)}` : m, options);
  }
}

// C0 and C1 control characters, DEL, and the Unicode bidirectional overrides and isolates.
// deno-lint-ignore no-control-regex
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;

/**
 * `s` with every control character escaped (`\x1b`, `\n`, `\u202e`), so that a name taken from
 * a file can be printed in a message without driving the terminal (clearing the screen, moving
 * the cursor, faking a line of output) or reordering the text.
 *
 * @example
 * ```ts
 * import { printable } from "./host_tensor.ts";
 * console.log(printable("a\x1b[2Jb")); // a\x1b[2Jb (escaped: the screen is not cleared)
 * ```
 */
export function printable(s: string): string {
  return s.replace(UNPRINTABLE, (c) => {
    const code = c.charCodeAt(0);
    if (c === "\n") return "\\n";
    if (c === "\r") return "\\r";
    if (c === "\t") return "\\t";
    return code < 0x100
      ? `\\x${code.toString(16).padStart(2, "0")}`
      : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

const BYTES_PER_ELEMENT: Record<DType, number> = {
  float32: 4,
  float64: 8,
  float16: 2,
  bfloat16: 2,
  int8: 1,
  uint8: 1,
  int16: 2,
  int32: 4,
  int64: 8,
  bool: 1,
};

type HostDataConstructor =
  | Float32ArrayConstructor
  | Float64ArrayConstructor
  | Uint16ArrayConstructor
  | Int8ArrayConstructor
  | Uint8ArrayConstructor
  | Int16ArrayConstructor
  | Int32ArrayConstructor
  | BigInt64ArrayConstructor;

const ARRAY_TYPE: Record<DType, HostDataConstructor> = {
  float32: Float32Array,
  float64: Float64Array,
  float16: Uint16Array,
  bfloat16: Uint16Array,
  int8: Int8Array,
  uint8: Uint8Array,
  int16: Int16Array,
  int32: Int32Array,
  int64: BigInt64Array,
  bool: Uint8Array,
};

/** Whether `s` names a {@linkcode DType}. */
export function isDType(s: unknown): s is DType {
  return typeof s === "string" && Object.hasOwn(BYTES_PER_ELEMENT, s);
}

/**
 * Bytes per element of `dtype`.
 *
 * @example
 * ```ts
 * import { bytesPerElement } from "./host_tensor.ts";
 * console.log(bytesPerElement("bfloat16")); // 2
 * ```
 */
export function bytesPerElement(dtype: DType): number {
  return BYTES_PER_ELEMENT[dtype];
}

/**
 * Number of elements of a tensor of shape `shape` (1 for `[]`). Throws {@linkcode IoError} when
 * a dimension is not a non-negative safe integer or the product is not a safe integer.
 */
export function numElements(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new IoError(
        `shape [${shape.join(", ")}]: dimension ${d} is not a non-negative integer`,
      );
    }
    n *= d;
  }
  if (!Number.isSafeInteger(n)) {
    throw new IoError(`shape [${shape.join(", ")}]: element count is too large`);
  }
  return n;
}

/**
 * Bytes of `t.data` as a `Uint8Array` view (no copy).
 *
 * @example
 * ```ts
 * import { hostTensor, tensorBytes } from "./host_tensor.ts";
 * console.log(tensorBytes(hostTensor("int16", [1], new Int16Array([258])))); // Uint8Array [2, 1]
 * ```
 */
export function tensorBytes(t: HostTensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/**
 * Checks that `t` is a well-formed {@linkcode HostTensor}: known dtype, valid shape, a typed
 * array of the dtype's class whose length is the product of the shape. Throws
 * {@linkcode IoError} naming `what` otherwise.
 *
 * @param t the tensor to check.
 * @param what how to name the tensor in the error message.
 */
export function validateHostTensor(t: HostTensor, what = "tensor"): void {
  if (t === null || typeof t !== "object") throw new IoError(`${what}: not a tensor`);
  if (!isDType(t.dtype)) throw new IoError(`${what}: unknown dtype ${JSON.stringify(t.dtype)}`);
  if (!Array.isArray(t.shape)) throw new IoError(`${what}: shape is not an array`);
  let n: number;
  try {
    n = numElements(t.shape);
  } catch (e) {
    throw new IoError(`${what}: ${(e as Error).message}`);
  }
  const ctor = ARRAY_TYPE[t.dtype];
  if (!(t.data instanceof ctor)) {
    const got = (t.data as { constructor?: { name?: string } } | undefined)?.constructor?.name ??
      typeof t.data;
    throw new IoError(`${what}: dtype ${t.dtype} needs a ${ctor.name}, got ${got}`);
  }
  if (t.data.length !== n) {
    throw new IoError(
      `${what}: shape [${t.shape.join(", ")}] needs ${n} elements, data has ${t.data.length}`,
    );
  }
}

/**
 * Makes a {@linkcode HostTensor}, checking that `data` has the typed-array class of `dtype`
 * (`Uint16Array` for `float16`/`bfloat16` bits, `Uint8Array` for `bool`, `BigInt64Array` for
 * `int64`) and `numElements(shape)` elements. Without `data`, the tensor is filled with zeros.
 * The shape is copied; `data` is not.
 *
 * @throws {IoError} on a bad shape, a wrong array class, or a length mismatch.
 *
 * @example
 * ```ts
 * import { hostTensor } from "./host_tensor.ts";
 * const a = hostTensor("float32", [2, 3], new Float32Array(6));
 * const z = hostTensor("int64", []); // scalar 0n
 * ```
 */
export function hostTensor(dtype: DType, shape: readonly number[], data?: HostData): HostTensor {
  if (!isDType(dtype)) throw new IoError(`hostTensor: unknown dtype ${JSON.stringify(dtype)}`);
  const t: HostTensor = {
    dtype,
    shape: [...shape],
    data: data ?? new ARRAY_TYPE[dtype](numElementsOrThrow(shape)),
  };
  validateHostTensor(t, "hostTensor");
  return t;
}

function numElementsOrThrow(shape: readonly number[]): number {
  try {
    return numElements(shape);
  } catch (e) {
    throw new IoError(`hostTensor: ${(e as Error).message}`);
  }
}

/**
 * A new typed array of the class `dtype` uses, over `buffer` (whole buffer).
 * Internal helper for the readers; `buffer.byteLength` must be a multiple of the element size.
 */
export function typedArrayFor(dtype: DType, buffer: ArrayBuffer): HostData {
  return new ARRAY_TYPE[dtype](buffer);
}

// ---------------------------------------------------------------------------------------------
// 16-bit float conversions

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** float32 bit pattern of the IEEE half with bits `h` (exact; NaN payload kept). */
function halfToFloatBits(h: number): number {
  const sign = (h & 0x8000) << 16;
  let exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0) {
    if (mant === 0) return sign >>> 0;
    // Subnormal: normalise into a float32 normal number.
    exp = 113; // 127 - 15 + 1
    while ((mant & 0x400) === 0) {
      mant <<= 1;
      exp--;
    }
    mant &= 0x3ff;
    return (sign | (exp << 23) | (mant << 13)) >>> 0;
  }
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
}

/** IEEE half bits nearest (ties to even) to the float32 with bit pattern `b`. */
function floatBitsToHalf(b: number): number {
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) {
    // Inf stays inf; NaN stays a (quiet) NaN with the top payload bits.
    return mant === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mant >>> 13);
  }
  const e = exp - 112; // half exponent field for a normal result
  if (e >= 0x1f) return sign | 0x7c00; // overflow
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal: rounds to zero
    const m = mant | 0x800000;
    const shift = 14 - e; // 14..24
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (h & 1) === 1)) h++;
    return sign | h; // h may carry into the smallest normal, which is the right encoding
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++; // may carry into inf: correct
  return sign | h;
}

/** bfloat16 bits nearest (ties to even) to the float32 with bit pattern `b`; NaN stays NaN. */
function floatBitsToBfloat16(b: number): number {
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Bits of the IEEE 754 half-precision number nearest to `x` (after rounding `x` to float32),
 * rounding ties to even. Handles subnormals, overflow to infinity, signed zero and NaN.
 *
 * @example
 * ```ts
 * import { float32ToFloat16Bits } from "./host_tensor.ts";
 * console.log(float32ToFloat16Bits(1).toString(16)); // "3c00"
 * console.log(float32ToFloat16Bits(65520).toString(16)); // "7c00" (inf)
 * ```
 */
export function float32ToFloat16Bits(x: number): number {
  scratchF32[0] = x;
  return floatBitsToHalf(scratchU32[0]);
}

/**
 * The value of the IEEE 754 half-precision number with bits `bits` (exact).
 *
 * @example
 * ```ts
 * import { float16BitsToFloat32 } from "./host_tensor.ts";
 * console.log(float16BitsToFloat32(0x0001)); // 5.960464477539063e-8 (2^-24)
 * ```
 */
export function float16BitsToFloat32(bits: number): number {
  scratchU32[0] = halfToFloatBits(bits & 0xffff);
  return scratchF32[0];
}

/**
 * Bits of the bfloat16 number nearest to `x` (after rounding `x` to float32), rounding ties to
 * even, as PyTorch does. NaN stays NaN.
 *
 * @example
 * ```ts
 * import { float32ToBfloat16Bits } from "./host_tensor.ts";
 * console.log(float32ToBfloat16Bits(1).toString(16)); // "3f80"
 * ```
 */
export function float32ToBfloat16Bits(x: number): number {
  scratchF32[0] = x;
  return floatBitsToBfloat16(scratchU32[0]);
}

/**
 * The value of the bfloat16 number with bits `bits` (exact).
 *
 * @example
 * ```ts
 * import { bfloat16BitsToFloat32 } from "./host_tensor.ts";
 * console.log(bfloat16BitsToFloat32(0x3f80)); // 1
 * ```
 */
export function bfloat16BitsToFloat32(bits: number): number {
  scratchU32[0] = (bits & 0xffff) << 16;
  return scratchF32[0];
}

/**
 * The elements of `t` as a new `Float32Array`. Exact for `float32`, `float16`, `bfloat16`
 * (bit-level, NaN payloads kept), `int8`, `uint8`, `int16` and `bool` (any non-zero byte is 1);
 * `float64`, `int32` and `int64` round to the nearest float32 (`int64` through float64).
 *
 * @example
 * ```ts
 * import { hostTensor, toFloat32 } from "./host_tensor.ts";
 * toFloat32(hostTensor("bfloat16", [1], new Uint16Array([0xc000]))); // Float32Array [-2]
 * ```
 */
export function toFloat32(t: HostTensor): Float32Array {
  validateHostTensor(t, "toFloat32");
  const n = t.data.length;
  const out = new Float32Array(n);
  switch (t.dtype) {
    case "float16": {
      const src = t.data as Uint16Array;
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = halfToFloatBits(src[i]);
      return out;
    }
    case "bfloat16": {
      const src = t.data as Uint16Array;
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
      return out;
    }
    case "int64": {
      const src = t.data as BigInt64Array;
      for (let i = 0; i < n; i++) out[i] = Number(src[i]);
      return out;
    }
    case "bool": {
      const src = t.data as Uint8Array;
      for (let i = 0; i < n; i++) out[i] = src[i] !== 0 ? 1 : 0;
      return out;
    }
    default:
      out.set(t.data as Exclude<HostData, BigInt64Array>);
      return out;
  }
}

/**
 * Rounds float32 values to the bits of `float16` or `bfloat16` (ties to even).
 *
 * @example
 * ```ts
 * import { float32ArrayTo16Bits } from "./host_tensor.ts";
 * float32ArrayTo16Bits(new Float32Array([1, 2]), "float16"); // Uint16Array [0x3c00, 0x4000]
 * ```
 */
export function float32ArrayTo16Bits(
  values: Float32Array,
  dtype: "float16" | "bfloat16",
): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  const f = dtype === "float16" ? floatBitsToHalf : floatBitsToBfloat16;
  for (let i = 0; i < out.length; i++) out[i] = f(bits[i]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// tfjs bridge

/**
 * Copies a tfjs tensor to the host with `await t.data()` (never `dataSync`). `float32` →
 * `float32`, `int32` → `int32`, `bool` → `bool`; other tfjs dtypes (`complex64`, `string`) are
 * an {@linkcode IoError}. The tensor is not disposed.
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { fromTfTensor } from "./host_tensor.ts";
 * const h = await fromTfTensor(tf.ones([2, 2]));
 * console.log(h.dtype, h.shape); // float32 [2, 2]
 * ```
 */
export async function fromTfTensor(t: Tensor): Promise<HostTensor> {
  const shape = [...t.shape];
  switch (t.dtype) {
    case "float32":
      return { dtype: "float32", shape, data: Float32Array.from(await t.data<"float32">()) };
    case "int32":
      return { dtype: "int32", shape, data: Int32Array.from(await t.data<"int32">()) };
    case "bool":
      return { dtype: "bool", shape, data: Uint8Array.from(await t.data<"bool">()) };
    default:
      throw new IoError(`fromTfTensor: tfjs dtype ${t.dtype} has no host tensor equivalent`);
  }
}

/**
 * Makes a tfjs tensor holding a copy of `h`. Float dtypes (`float32`, `float64`, `float16`,
 * `bfloat16`) give a `float32` tensor; `int8`, `uint8`, `int16`, `int32`, `bool` and `int64` give
 * an `int32` tensor (`int64` values outside the int32 range are an {@linkcode IoError}).
 *
 * @example
 * ```ts
 * import { hostTensor, toTfTensor } from "./host_tensor.ts";
 * const t = toTfTensor(hostTensor("float16", [1], new Uint16Array([0x3c00])));
 * console.log(t.dtype, await t.data()); // float32 Float32Array [1]
 * ```
 */
export function toTfTensor(h: HostTensor): Tensor {
  validateHostTensor(h, "toTfTensor");
  const shape = [...h.shape];
  switch (h.dtype) {
    case "float32":
      return tf.tensor((h.data as Float32Array).slice(), shape, "float32");
    case "float64":
    case "float16":
    case "bfloat16":
      return tf.tensor(toFloat32(h), shape, "float32");
    case "int32":
      return tf.tensor((h.data as Int32Array).slice(), shape, "int32");
    case "int64": {
      const src = h.data as BigInt64Array;
      const out = new Int32Array(src.length);
      for (let i = 0; i < src.length; i++) {
        const v = src[i];
        if (v < -2147483648n || v > 2147483647n) {
          throw new IoError(
            `toTfTensor: int64 element ${i} (${v}) is outside the int32 range of tfjs`,
          );
        }
        out[i] = Number(v);
      }
      return tf.tensor(out, shape, "int32");
    }
    case "bool": {
      const src = h.data as Uint8Array;
      const out = new Int32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = src[i] !== 0 ? 1 : 0;
      return tf.tensor(out, shape, "int32");
    }
    default:
      return tf.tensor(
        Int32Array.from(h.data as Int8Array | Uint8Array | Int16Array),
        shape,
        "int32",
      );
  }
}

/**
 * Counts the non-finite elements (NaN, ±Infinity) of a floating-point tensor; 0 for integer and
 * bool tensors. float16 and bfloat16 are checked on their raw bits (all exponent bits set).
 *
 * @example
 * ```ts
 * import { countNonFinite, hostTensor } from "./host_tensor.ts";
 * console.log(countNonFinite(hostTensor("float32", [3], new Float32Array([1, NaN, Infinity])))); // 2
 * ```
 */
export function countNonFinite(t: HostTensor): number {
  let bad = 0;
  if (t.dtype === "float32" || t.dtype === "float64") {
    const d = t.data as Float32Array | Float64Array;
    for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i])) bad++;
  } else if (t.dtype === "float16" || t.dtype === "bfloat16") {
    const mask = t.dtype === "float16" ? 0x7c00 : 0x7f80;
    const d = t.data as Uint16Array;
    for (let i = 0; i < d.length; i++) if ((d[i] & mask) === mask) bad++;
  }
  return bad;
}

/**
 * Whether non-finite weights are accepted when no option says so: `SIDA_ALLOW_NONFINITE=1` in the
 * environment (what the tasks' `--allow-nonfinite` flag sets). Without permission to read the
 * environment, `false`.
 */
export function nonFiniteAllowedByDefault(): boolean {
  try {
    return Deno.env.get("SIDA_ALLOW_NONFINITE") === "1";
  } catch {
    return false;
  }
}

/**
 * Refuses weights that hold NaN or infinite values, naming the file, how many tensors and the
 * first few of them; a checkpoint like that would train or sample to NaN without another word.
 *
 * @param tensors the weights, by name.
 * @param path the file, for the message.
 * @param allow accept them anyway (default: {@linkcode nonFiniteAllowedByDefault}).
 * @throws {IoError} when some tensor holds a non-finite value and `allow` is false.
 */
export function checkFiniteWeights(
  tensors: Iterable<[string, HostTensor]>,
  path: string,
  allow: boolean = nonFiniteAllowedByDefault(),
): void {
  if (allow) return;
  const bad: string[] = [];
  let total = 0;
  for (const [name, t] of tensors) {
    const n = countNonFinite(t);
    if (n > 0) {
      total += n;
      bad.push(`${name} (${n} of ${t.data.length})`);
    }
  }
  if (bad.length === 0) return;
  throw new IoError(
    `${path}: ${total} non-finite weights (NaN or Inf) in ${bad.length} tensor${
      bad.length > 1 ? "s" : ""
    }: ${bad.slice(0, 3).join(", ")}${
      bad.length > 3 ? ", …" : ""
    }; refusing to load them (--allow-nonfinite or SIDA_ALLOW_NONFINITE=1 to load anyway)`,
  );
}
