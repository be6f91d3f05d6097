/**
 * Tests of lib/io: host tensors and 16-bit float conversions, safetensors and .npy readers and
 * writers (round trips, Python-written fixtures, malformed input), and atomic writes.
 *
 * Run: `deno test -A tests/io_test.ts`. Fixtures: tests/fixtures/io/ (see its README.md).
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { tf } from "../lib/deps.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import {
  bfloat16BitsToFloat32,
  bytesPerElement,
  type DType,
  DTYPES,
  float16BitsToFloat32,
  float32ArrayTo16Bits,
  float32ToBfloat16Bits,
  float32ToFloat16Bits,
  fromTfTensor,
  type HostData,
  type HostTensor,
  hostTensor,
  IoError,
  numElements,
  tensorBytes,
  toFloat32,
  toTfTensor,
} from "../lib/io/host_tensor.ts";
import { decodeNpy, encodeNpy, readNpy, writeNpy } from "../lib/io/npy.ts";
import {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  readSafetensorsHeader,
  writeSafetensors,
} from "../lib/io/safetensors.ts";

await tf.setBackend("cpu");
await tf.ready();

const FIXTURES = fileURLToPath(new URL("./fixtures/io/", import.meta.url));

// ---------------------------------------------------------------------------------------------
// helpers

/** Deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The elements as plain numbers (int64 through `Number`). */
function nums(data: HostData): number[] {
  return Array.from(data as ArrayLike<number | bigint>, Number);
}

function bytesOf(data: HostData): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function assertSameTensor(actual: HostTensor | undefined, expected: HostTensor, what = ""): void {
  assert.ok(actual, `${what}: missing`);
  assert.equal(actual.dtype, expected.dtype, `${what}: dtype`);
  assert.deepEqual(actual.shape, expected.shape, `${what}: shape`);
  assert.equal(actual.data.constructor, expected.data.constructor, `${what}: array class`);
  assert.equal(hex(bytesOf(actual.data)), hex(bytesOf(expected.data)), `${what}: bytes`);
}

/** Asserts that `fn` fails with an IoError whose message contains `fragment`. */
async function assertIoError(
  fn: () => unknown,
  fragment: string | RegExp,
  what = "",
): Promise<IoError> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  if (!(err instanceof IoError)) {
    throw new Error(`${what}: expected an IoError, got ${err === undefined ? "success" : err}`, {
      cause: err,
    });
  }
  assert.equal(err.name, "IoError");
  assert.ok(!err.message.includes("\n"), `${what}: message has a line break: ${err.message}`);
  if (typeof fragment === "string") {
    assert.ok(err.message.includes(fragment), `${what}: '${err.message}' lacks '${fragment}'`);
  } else {
    assert.match(err.message, fragment, what);
  }
  return err;
}

/** A tensor of `dtype` and `shape` filled with random bytes (bool: 0/1). */
function randomTensor(dtype: DType, shape: number[], rand: () => number): HostTensor {
  const t = hostTensor(dtype, shape);
  const b = bytesOf(t.data);
  for (let i = 0; i < b.length; i++) b[i] = Math.floor(rand() * 256);
  if (dtype === "bool") { for (let i = 0; i < b.length; i++) b[i] &= 1; }
  return t;
}

/** safetensors bytes from a raw header string and a data buffer. */
function rawSafetensors(header: string, data: Uint8Array | number = 0): Uint8Array {
  const h = new TextEncoder().encode(header);
  const d = typeof data === "number" ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + h.length + d.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(d, 8 + h.length);
  return out;
}

/** .npy bytes (version 1.0) from a raw header string and data. */
function rawNpy(header: string, data: Uint8Array | number = 0, version = 1): Uint8Array {
  const h = new TextEncoder().encode(header);
  const d = typeof data === "number" ? new Uint8Array(data) : data;
  const pre = version === 1 ? 10 : 12;
  const out = new Uint8Array(pre + h.length + d.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, 0]);
  const dv = new DataView(out.buffer);
  if (version === 1) dv.setUint16(8, h.length, true);
  else dv.setUint32(8, h.length, true);
  out.set(h, pre);
  out.set(d, pre + h.length);
  return out;
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "sida-io-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

const JSON_CHARS = '{}[],:"0123456789-.e ';
const PY_CHARS = "{}()[],:'\"0123456789-LTF ";

/** A random character code of `chars`. */
function pick(chars: string, rand: () => number): number {
  return chars.charCodeAt(Math.floor(rand() * chars.length));
}

const SHAPES: number[][] = [[], [0], [2, 0, 3], [5], [2, 3], [2, 1, 3, 2]];

// ---------------------------------------------------------------------------------------------
// host tensors

Deno.test("hostTensor: validates shape, array class and length", async () => {
  const t = hostTensor("float32", [2, 3], new Float32Array(6));
  assert.deepEqual(t.shape, [2, 3]);
  assert.equal(hostTensor("int64", []).data.length, 1);
  assert.ok(hostTensor("int64", []).data instanceof BigInt64Array);
  assert.ok(hostTensor("bfloat16", [2]).data instanceof Uint16Array);
  assert.equal(hostTensor("bool", [0, 4]).data.length, 0);
  assert.equal(numElements([]), 1);
  assert.equal(numElements([3, 0]), 0);
  for (const d of DTYPES) assert.equal(hostTensor(d, [3]).data.byteLength, 3 * bytesPerElement(d));
  await assertIoError(() => hostTensor("float32", [2, 3], new Float32Array(5)), "needs 6 elements");
  await assertIoError(() => hostTensor("float16", [2], new Float32Array(2)), "Uint16Array");
  await assertIoError(() => hostTensor("int64", [1], new Int32Array(1) as HostData), "BigInt64");
  await assertIoError(() => hostTensor("float32", [-1]), "non-negative");
  await assertIoError(() => hostTensor("float32", [1.5]), "non-negative");
  await assertIoError(() => hostTensor("complex" as DType, [1]), "unknown dtype");
});

Deno.test("float16: known bit patterns both ways", () => {
  const cases: [number, number][] = [
    [1.0, 0x3c00],
    [-2.0, 0xc000],
    [65504, 0x7bff],
    [2 ** -24, 0x0001],
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -14 - 2 ** -24, 0x03ff], // largest subnormal
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [0, 0x0000],
    [-0, 0x8000],
    [0.5, 0x3800],
  ];
  for (const [v, bits] of cases) {
    assert.equal(float32ToFloat16Bits(v), bits, `to f16 ${v}`);
    assert.ok(Object.is(float16BitsToFloat32(bits), v), `from f16 0x${bits.toString(16)}`);
  }
  // Rounding: overflow, ties to even, underflow.
  assert.equal(float32ToFloat16Bits(65519), 0x7bff);
  assert.equal(float32ToFloat16Bits(65520), 0x7c00);
  assert.equal(float32ToFloat16Bits(1e10), 0x7c00);
  assert.equal(float32ToFloat16Bits(2 ** -25), 0x0000); // tie → even (0)
  assert.equal(float32ToFloat16Bits(-(2 ** -25)), 0x8000);
  assert.equal(float32ToFloat16Bits(2 ** -25 * 1.0000001), 0x0001);
  assert.equal(float32ToFloat16Bits(3 * 2 ** -25), 0x0002); // tie 1.5 ulp → 2
  assert.equal(float32ToFloat16Bits(1 + 2 ** -11), 0x3c00); // tie → even
  assert.equal(float32ToFloat16Bits(1 + 3 * 2 ** -11), 0x3c02); // tie → even (up)
  assert.equal(float32ToFloat16Bits(1e-10), 0x0000);
  // NaN stays NaN.
  const nanBits = float32ToFloat16Bits(NaN);
  assert.equal(nanBits & 0x7c00, 0x7c00);
  assert.notEqual(nanBits & 0x03ff, 0);
  assert.ok(Number.isNaN(float16BitsToFloat32(0x7e00)));
  assert.ok(Number.isNaN(float16BitsToFloat32(0xfc01)));
});

Deno.test("bfloat16: known bit patterns both ways", () => {
  const cases: [number, number][] = [
    [1.0, 0x3f80],
    [-2.0, 0xc000],
    [Infinity, 0x7f80],
    [-Infinity, 0xff80],
    [-0, 0x8000],
    [0, 0x0000],
    [2 ** -133, 0x0001], // smallest bfloat16 subnormal
  ];
  for (const [v, bits] of cases) {
    assert.equal(float32ToBfloat16Bits(v), bits, `to bf16 ${v}`);
    assert.ok(Object.is(bfloat16BitsToFloat32(bits), v), `from bf16 0x${bits.toString(16)}`);
  }
  assert.equal(float32ToBfloat16Bits(1 + 2 ** -8), 0x3f80); // tie → even
  assert.equal(float32ToBfloat16Bits(1 + 3 * 2 ** -8), 0x3f82);
  assert.equal(float32ToBfloat16Bits(3.4e38), 0x7f80); // rounds up to inf
  const nanBits = float32ToBfloat16Bits(NaN);
  assert.equal(nanBits & 0x7f80, 0x7f80);
  assert.notEqual(nanBits & 0x7f, 0);
  assert.ok(Number.isNaN(bfloat16BitsToFloat32(0x7fc0)));
});

Deno.test("float16/bfloat16: conversions match numpy and torch (fixtures)", async () => {
  const ref = JSON.parse(await Deno.readTextFile(`${FIXTURES}conversions.json`));
  const f32 = new Float32Array(new Uint32Array(ref.f32_bits).buffer);
  assert.ok(f32.length > 900);
  const half = float32ArrayTo16Bits(f32, "float16");
  const bf = float32ArrayTo16Bits(f32, "bfloat16");
  for (let i = 0; i < f32.length; i++) {
    assert.equal(half[i], ref.f16_bits[i], `f16 of 0x${ref.f32_bits[i].toString(16)}`);
    assert.equal(bf[i], ref.bf16_bits[i], `bf16 of 0x${ref.f32_bits[i].toString(16)}`);
    assert.equal(float32ToFloat16Bits(f32[i]), ref.f16_bits[i]);
    assert.equal(float32ToBfloat16Bits(f32[i]), ref.bf16_bits[i]);
  }
  // Every 16-bit pattern, expanded to float32 bits, hashes as numpy / torch do (NaN payloads too).
  const all = new Uint16Array(65536).map((_, i) => i);
  const sha = async (a: Float32Array) =>
    hex(new Uint8Array(await crypto.subtle.digest("SHA-256", a.slice().buffer)));
  assert.equal(
    await sha(toFloat32(hostTensor("float16", [65536], all))),
    ref.all_f16_to_f32_sha256,
  );
  assert.equal(
    await sha(toFloat32(hostTensor("bfloat16", [65536], all))),
    ref.all_bf16_to_f32_sha256,
  );
  // The scalar expansion agrees with the array one for every pattern.
  const arr = toFloat32(hostTensor("float16", [65536], all));
  for (let i = 0; i < 65536; i++) {
    const v = float16BitsToFloat32(i);
    assert.ok(Object.is(v, arr[i]) || (Number.isNaN(v) && Number.isNaN(arr[i])));
  }
});

Deno.test("toFloat32: every dtype", () => {
  const cases: [HostTensor, number[]][] = [
    [hostTensor("float32", [2], new Float32Array([1.5, -0])), [1.5, -0]],
    [hostTensor("float64", [2], new Float64Array([0.1, 1e300])), [Math.fround(0.1), Infinity]],
    [hostTensor("float16", [2], new Uint16Array([0x3c00, 0x0001])), [1, 2 ** -24]],
    [hostTensor("bfloat16", [2], new Uint16Array([0x3f80, 0xc000])), [1, -2]],
    [hostTensor("int8", [2], new Int8Array([-128, 127])), [-128, 127]],
    [hostTensor("uint8", [2], new Uint8Array([0, 255])), [0, 255]],
    [hostTensor("int16", [2], new Int16Array([-32768, 5])), [-32768, 5]],
    [hostTensor("int32", [2], new Int32Array([-7, 16777217])), [-7, 16777216]],
    [hostTensor("int64", [2], new BigInt64Array([-(2n ** 40n), 3n])), [-(2 ** 40), 3]],
    [hostTensor("bool", [3], new Uint8Array([0, 1, 2])), [0, 1, 1]],
    [hostTensor("float32", []), [0]],
    [hostTensor("int64", [0, 3]), []],
  ];
  for (const [t, want] of cases) {
    const got = toFloat32(t);
    assert.ok(got instanceof Float32Array);
    assert.deepEqual(Array.from(got), want, t.dtype);
    assert.ok(Object.is(got[0], want[0]), `${t.dtype} sign of zero`);
  }
});

Deno.test("toTfTensor / fromTfTensor", async () => {
  const rand = rng(1);
  for (const dtype of DTYPES) {
    const h = randomTensor(dtype, [2, 3], rand);
    if (dtype === "int64") {
      (h.data as BigInt64Array).set([-5n, 0n, 2147483647n, -2147483648n, 7n, -1n]);
    }
    const t = toTfTensor(h);
    const float = ["float32", "float64", "float16", "bfloat16"].includes(dtype);
    assert.equal(t.dtype, float ? "float32" : "int32", dtype);
    assert.deepEqual(t.shape, [2, 3]);
    const got = await t.data();
    const want = float
      ? Array.from(toFloat32(h))
      : Array.from(h.data as ArrayLike<number | bigint>, Number);
    for (let i = 0; i < 6; i++) {
      assert.ok(Object.is(got[i], want[i]) || (Number.isNaN(got[i]) && Number.isNaN(want[i])));
    }
    t.dispose();
  }
  // 0-d and empty tensors.
  const s = toTfTensor(hostTensor("float64", [], new Float64Array([2.5])));
  assert.deepEqual(s.shape, []);
  assert.equal((await s.data())[0], 2.5);
  const e = toTfTensor(hostTensor("int16", [0, 2]));
  assert.deepEqual(e.shape, [0, 2]);
  // The tensor holds a copy.
  const src = hostTensor("float32", [2], new Float32Array([1, 2]));
  const c = toTfTensor(src);
  src.data[0] = 99;
  assert.deepEqual(Array.from(await c.data()), [1, 2]);
  await assertIoError(
    () => toTfTensor(hostTensor("int64", [2], new BigInt64Array([0n, 2n ** 31n]))),
    "outside the int32 range",
  );
  await assertIoError(
    () => toTfTensor({ dtype: "float32", shape: [3], data: new Float32Array(2) }),
    "needs 3 elements",
  );
  // fromTfTensor: float32, int32, bool; the host copy is independent of the tensor.
  const f = tf.tensor([[1, 2], [3, 4]], [2, 2], "float32");
  const hf = await fromTfTensor(f);
  assertSameTensor(hf, hostTensor("float32", [2, 2], new Float32Array([1, 2, 3, 4])));
  hf.data[0] = 7;
  assert.equal((await f.data())[0], 1);
  assertSameTensor(
    await fromTfTensor(tf.tensor([-1, 5], [2], "int32")),
    hostTensor("int32", [2], new Int32Array([-1, 5])),
  );
  assertSameTensor(
    await fromTfTensor(tf.tensor([true, false, true], [3], "bool")),
    hostTensor("bool", [3], new Uint8Array([1, 0, 1])),
  );
  assertSameTensor(
    await fromTfTensor(tf.scalar(3.5)),
    hostTensor("float32", [], new Float32Array([3.5])),
  );
  await assertIoError(() => fromTfTensor(tf.complex([1], [2])), "complex64");
});

// ---------------------------------------------------------------------------------------------
// safetensors

Deno.test("safetensors: round trip of every dtype and shape, bit-exact, in memory and on disk", async () => {
  const rand = rng(2);
  const tensors = new Map<string, HostTensor>();
  for (const dtype of DTYPES) {
    SHAPES.forEach((shape, i) => tensors.set(`${dtype}.${i}`, randomTensor(dtype, shape, rand)));
  }
  const metadata = { format: "pt", "__proto__": "x", "ünï": "cödé ✓", empty: "" };
  const bytes = encodeSafetensors(tensors, metadata);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(n % 8, 0, "header padded to a multiple of 8");
  const headerText = new TextDecoder().decode(bytes.subarray(8, 8 + n));
  assert.ok(headerText.startsWith('{"__metadata__":'));
  const parsed = JSON.parse(headerText);
  const names = Object.keys(parsed).filter((k) => k !== "__metadata__");
  assert.deepEqual(names, [...tensors.keys()].sort(), "names sorted");
  let expectedOffset = 0;
  for (const name of names) {
    assert.equal(parsed[name].data_offsets[0], expectedOffset, "data laid out in name order");
    expectedOffset = parsed[name].data_offsets[1];
  }
  assert.equal(8 + n + expectedOffset, bytes.length);

  const check = (got: { tensors: Map<string, HostTensor>; metadata: Record<string, string> }) => {
    assert.equal(got.tensors.size, tensors.size);
    for (const [name, t] of tensors) assertSameTensor(got.tensors.get(name), t, name);
    assert.deepEqual(Object.entries(got.metadata), Object.entries(metadata));
  };
  check(decodeSafetensors(bytes));
  check(await readSafetensors(bytes));
  await withTempDir(async (dir) => {
    const path = `${dir}/sub/dir/all.safetensors`; // parent directories are created
    await writeSafetensors(path, tensors, metadata);
    assert.equal(hex(await Deno.readFile(path)), hex(bytes), "file == encodeSafetensors output");
    check(await readSafetensors(path));
    // A Record works as input too, and metadata is optional.
    await writeSafetensors(`${dir}/rec.safetensors`, {
      b: tensors.get("float16.4")!,
      a: tensors.get("int64.0")!,
    });
    const rec = await readSafetensors(`${dir}/rec.safetensors`);
    assert.deepEqual([...rec.tensors.keys()], ["a", "b"]);
    assert.deepEqual(rec.metadata, {});
    // names: load a subset.
    const sub = await readSafetensors(path, { names: ["bool.1", "bfloat16.4"] });
    assert.deepEqual([...sub.tensors.keys()].sort(), ["bfloat16.4", "bool.1"]);
    assertSameTensor(sub.tensors.get("bfloat16.4"), tensors.get("bfloat16.4")!);
    await assertIoError(() => readSafetensors(path, { names: ["nope"] }), 'no tensor named "nope"');
    await assertIoError(() => decodeSafetensors(bytes, { names: ["nope"] }), "nope");
    // Header only.
    const header = await readSafetensorsHeader(path);
    assert.equal(header.entries.length, tensors.size);
    assert.equal(header.metadata.format, "pt");
    assert.deepEqual(await readSafetensorsHeader(bytes), header);
  });
  // An empty file (no tensors) is valid too.
  const none = encodeSafetensors(new Map());
  assert.equal(decodeSafetensors(none).tensors.size, 0);
});

Deno.test("safetensors: reads the Python-written fixtures exactly", async () => {
  const expected = JSON.parse(await Deno.readTextFile(`${FIXTURES}expected.json`)).safetensors;
  for (const [file, exp] of Object.entries<Record<string, unknown>>(expected)) {
    const path = `${FIXTURES}${file}`;
    for (const got of [await readSafetensors(path), decodeSafetensors(await Deno.readFile(path))]) {
      assert.deepEqual([...got.tensors.keys()], exp.order, `${file}: data order`);
      assert.deepEqual(got.metadata, exp.metadata, `${file}: metadata`);
      const tensors = exp.tensors as Record<string, Record<string, unknown>>;
      for (const [name, e] of Object.entries(tensors)) {
        const t = got.tensors.get(name)!;
        assert.equal(t.dtype, e.dtype, `${file}:${name}`);
        assert.deepEqual(t.shape, e.shape, `${file}:${name}`);
        assert.equal(hex(bytesOf(t.data)), e.hex, `${file}:${name} bytes`);
        assert.equal(t.data.byteOffset % bytesPerElement(t.dtype), 0, "aligned");
        if (e.f32_hex !== undefined) {
          assert.equal(hex(bytesOf(toFloat32(t))), e.f32_hex, `${file}:${name} as float32`);
        }
      }
    }
  }
});

Deno.test("safetensors: malformed input is an IoError naming the problem", async () => {
  const f32x2 = (a: number, b: number) =>
    `{"dtype":"F32","shape":[${(b - a) / 4}],"data_offsets":[${a},${b}]}`;
  const big = new Uint8Array(16);
  new DataView(big.buffer).setBigUint64(0, 100_000_001n, true);
  const huge = new Uint8Array(16);
  new DataView(huge.buffer).setBigUint64(0, 0xffffffffffffffffn, true);
  const bad: [string, Uint8Array, string][] = [
    ["empty file", new Uint8Array(0), "too short"],
    ["7 bytes", new Uint8Array(7), "too short"],
    ["header length > file", rawSafetensors("{}").subarray(0, 9), "exceeds"],
    ["header length > 100MB", big, "cap of 100000000"],
    ["header length 2^64-1", huge, "cap of 100000000"],
    ["not JSON", rawSafetensors("{nope}"), "invalid header JSON"],
    ["not an object", rawSafetensors("[1, 2]"), "does not start with '{'"],
    ["trailing garbage", rawSafetensors("{} x"), "after the JSON value"],
    ["bad UTF-8", rawSafetensors("{}").map((b, i) => (i === 8 + 1 ? 0xff : b)), "UTF-8"],
    ["overlap", rawSafetensors(`{"a":${f32x2(0, 8)},"b":${f32x2(4, 12)}}`, 12), "overlaps"],
    ["hole", rawSafetensors(`{"a":${f32x2(0, 4)},"b":${f32x2(8, 12)}}`, 12), "hole"],
    ["hole at end", rawSafetensors(`{"a":${f32x2(0, 4)}}`, 8), "hole"],
    ["extra data with no tensors", rawSafetensors("{}", 4), "hole"],
    ["past the buffer", rawSafetensors(`{"a":${f32x2(0, 8)}}`, 4), "past the 4-byte data buffer"],
    [
      "unknown dtype",
      rawSafetensors(`{"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}`, 1),
      "unsupported dtype",
    ],
    [
      "dtype not a string",
      rawSafetensors(`{"a":{"dtype":4,"shape":[1],"data_offsets":[0,1]}}`, 1),
      "dtype is 4",
    ],
    [
      "negative shape",
      rawSafetensors(`{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}`),
      "non-negative integers",
    ],
    [
      "float shape",
      rawSafetensors(`{"a":{"dtype":"U8","shape":[2.5],"data_offsets":[0,2]}}`, 2),
      "non-negative integers",
    ],
    [
      "float shape 2.0",
      rawSafetensors(`{"a":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}}`, 2),
      "non-negative integers",
    ],
    [
      "exponent shape",
      rawSafetensors(`{"a":{"dtype":"U8","shape":[2e0],"data_offsets":[0,2]}}`, 2),
      "non-negative integers",
    ],
    [
      "unsafe shape",
      rawSafetensors(`{"a":{"dtype":"U8","shape":[9007199254740993],"data_offsets":[0,2]}}`, 2),
      "non-negative integers",
    ],
    [
      "shape not a list",
      rawSafetensors(`{"a":{"dtype":"U8","shape":"2","data_offsets":[0,2]}}`, 2),
      "shape must be",
    ],
    [
      "shape missing",
      rawSafetensors(`{"a":{"dtype":"U8","data_offsets":[0,2]}}`, 2),
      "shape must be",
    ],
    [
      "huge shape product",
      rawSafetensors(
        `{"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,2]}}`,
        2,
      ),
      "more than 2^53",
    ],
    [
      "size mismatch",
      rawSafetensors(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, 8),
      "need 12",
    ],
    [
      "offsets reversed",
      rawSafetensors(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}`, 4),
      "end before",
    ],
    [
      "offsets wrong length",
      rawSafetensors(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}}`, 1),
      "data_offsets must be",
    ],
    [
      "negative offsets",
      rawSafetensors(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}`, 1),
      "data_offsets must be",
    ],
    ["entry not an object", rawSafetensors(`{"a":5}`), "not an object"],
    [
      "duplicate names",
      rawSafetensors(`{"a":${f32x2(0, 4)},"a":${f32x2(4, 8)}}`, 8),
      'duplicate key "a"',
    ],
    [
      "duplicate entry field",
      rawSafetensors(`{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, 1),
      'duplicate key "dtype"',
    ],
    ["non-string metadata", rawSafetensors(`{"__metadata__":{"a":1}}`), "not a string"],
    ["null metadata value", rawSafetensors(`{"__metadata__":{"a":null}}`), "not a string"],
    ["metadata not an object", rawSafetensors(`{"__metadata__":"x"}`), "not an object"],
    [
      "duplicate metadata",
      rawSafetensors(`{"__metadata__":{},"__metadata__":{}}`),
      "duplicate key",
    ],
    ["deep nesting", rawSafetensors(`{"__metadata__":${"[".repeat(100000)}}`), "nesting deeper"],
    ["unterminated string", rawSafetensors(`{"a`), "unterminated string"],
    ["control char in key", rawSafetensors(`{"a\nb":5}`), "control character"],
  ];
  for (const [what, bytes, fragment] of bad) {
    const err = await assertIoError(() => decodeSafetensors(bytes), fragment, what);
    assert.ok(err.message.startsWith("<safetensors bytes>: "), err.message);
  }
  await withTempDir(async (dir) => {
    for (const [i, [what, bytes, fragment]] of bad.entries()) {
      const path = `${dir}/bad${i}.safetensors`;
      await Deno.writeFile(path, bytes);
      const err = await assertIoError(() => readSafetensors(path), fragment, `${what} (file)`);
      assert.ok(err.message.startsWith(`${path}: `), err.message);
      await assertIoError(() => readSafetensorsHeader(path), fragment, `${what} (header)`);
    }
    const err = await assertIoError(
      () => readSafetensors(`${dir}/missing.safetensors`),
      "cannot open",
    );
    assert.ok(err.cause instanceof Deno.errors.NotFound);
    await assertIoError(() => readSafetensors(dir), "not a regular file");
  });
  // Valid corner cases: zero-size tensors sharing an offset, unpadded header, whitespace.
  const ok = decodeSafetensors(
    rawSafetensors(
      ` {"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}, "b":{"dtype":"U8","shape":[0,3],"data_offsets":[0,0]}, "s":{"dtype":"I16","shape":[],"data_offsets":[0,2]}} `
        .trimStart(),
      new Uint8Array([1, 2]),
    ),
  );
  assert.deepEqual([...ok.tensors.keys()].sort(), ["a", "b", "s"]);
  assert.deepEqual(nums(ok.tensors.get("s")!.data), [0x0201]);
});

Deno.test("safetensors: every truncation of a valid file is an IoError", async () => {
  for (const file of ["mixed.safetensors", "unaligned.safetensors"]) {
    const bytes = await Deno.readFile(`${FIXTURES}${file}`);
    await withTempDir(async (dir) => {
      const path = `${dir}/cut.safetensors`;
      for (let cut = 0; cut < bytes.length; cut++) {
        const part = bytes.subarray(0, cut);
        await assertIoError(
          () => decodeSafetensors(part),
          /too short|exceeds|past the/,
          `${file}@${cut}`,
        );
        await Deno.writeFile(path, part);
        await assertIoError(
          () => readSafetensors(path),
          /too short|exceeds|past the/,
          `${file}@${cut}`,
        );
      }
    });
  }
});

Deno.test("safetensors: random corruption gives a result or an IoError, nothing else", () => {
  const rand = rng(3);
  const tensors = new Map<string, HostTensor>();
  for (const dtype of DTYPES) tensors.set(dtype, randomTensor(dtype, [2, 2], rand));
  const good = encodeSafetensors(tensors, { k: "v" });
  let failures = 0;
  for (let iter = 0; iter < 3000; iter++) {
    const b = good.slice();
    const flips = 1 + Math.floor(rand() * 3);
    for (let k = 0; k < flips; k++) {
      // Mostly hit the length field and the header, where the structure is.
      const pos = rand() < 0.9 ? Math.floor(rand() * 300) : Math.floor(rand() * b.length);
      b[pos] = rand() < 0.5 ? Math.floor(rand() * 256) : pick(JSON_CHARS, rand);
    }
    try {
      decodeSafetensors(b);
    } catch (e) {
      if (!(e instanceof IoError)) throw new Error(`iteration ${iter}: ${e}`, { cause: e });
      failures++;
    }
  }
  assert.ok(failures > 1000, `only ${failures} corruptions detected`);
});

Deno.test("safetensors: writer rejects bad tensors and metadata", async () => {
  const t = hostTensor("float32", [1]);
  await assertIoError(
    () => encodeSafetensors({ a: { dtype: "float32", shape: [3], data: new Float32Array(2) } }),
    'tensor "a": shape [3] needs 3 elements',
  );
  await assertIoError(() => encodeSafetensors({ __metadata__: t }), "__metadata__");
  await assertIoError(
    () => encodeSafetensors({ a: t }, { n: 1 } as unknown as Record<string, string>),
    "not a string",
  );
  await assertIoError(
    () => encodeSafetensors({ a: { dtype: "float16", shape: [1], data: new Float32Array(1) } }),
    "Uint16Array",
  );
});

// ---------------------------------------------------------------------------------------------
// npy

Deno.test("npy: round trip of every dtype and shape, bit-exact, in memory and on disk", async () => {
  const rand = rng(4);
  await withTempDir(async (dir) => {
    for (const dtype of DTYPES) {
      for (const shape of SHAPES) {
        const t = randomTensor(dtype, shape, rand);
        if (dtype === "bfloat16") {
          await assertIoError(() => encodeNpy(t), "bfloat16 has no .npy equivalent");
          await assertIoError(() => writeNpy(`${dir}/bf.npy`, t), "bfloat16");
          continue;
        }
        const bytes = encodeNpy(t);
        const headerLen = new DataView(bytes.buffer).getUint16(8, true);
        assert.equal((10 + headerLen) % 64, 0, "data 64-byte aligned");
        assert.equal(bytes[10 + headerLen - 1], 0x0a, "header ends with a newline");
        assertSameTensor(decodeNpy(bytes), t, `${dtype} ${shape}`);
        assertSameTensor(await readNpy(bytes), t, `${dtype} ${shape}`);
        const path = `${dir}/${dtype}_${shape.join("x")}.npy`;
        await writeNpy(path, t);
        assertSameTensor(await readNpy(path), t, `${path}`);
      }
    }
    assert.deepEqual((await listDir(dir)).filter((n) => n.includes("bf")), []);
    // tfjs tensors can be written directly.
    const x = tf.tensor([[1, 2, 3], [4, 5, 6]]);
    await writeNpy(`${dir}/tf.npy`, x);
    assertSameTensor(
      await readNpy(`${dir}/tf.npy`),
      hostTensor("float32", [2, 3], new Float32Array([1, 2, 3, 4, 5, 6])),
    );
    await writeNpy(`${dir}/tfb.npy`, tf.tensor([true, false], [2], "bool"));
    assertSameTensor(
      await readNpy(`${dir}/tfb.npy`),
      hostTensor("bool", [2], new Uint8Array([1, 0])),
    );
    x.dispose();
  });
  // The header is byte-for-byte what numpy writes.
  const head = new TextDecoder().decode(encodeNpy(hostTensor("float32", [2, 3])).subarray(10, 128));
  assert.ok(head.startsWith("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }  "));
  const scalarHead = new TextDecoder().decode(encodeNpy(hostTensor("int64", [])).subarray(10, 128));
  assert.ok(scalarHead.startsWith("{'descr': '<i8', 'fortran_order': False, 'shape': (), }"));
  const vecHead = new TextDecoder().decode(encodeNpy(hostTensor("bool", [4])).subarray(10, 128));
  assert.ok(vecHead.startsWith("{'descr': '|b1', 'fortran_order': False, 'shape': (4,), }"));
});

Deno.test("npy: files written by numpy match our encoder where numpy would write the same", async () => {
  const expected = JSON.parse(await Deno.readTextFile(`${FIXTURES}expected.json`)).npy;
  for (const name of ["f32_2x3.npy", "f64_scalar.npy", "u8_4x4x3.npy", "i64.npy", "bool_2x3.npy"]) {
    const file = await Deno.readFile(`${FIXTURES}${name}`);
    assert.equal(hex(encodeNpy(decodeNpy(file))), hex(file), name);
    assert.ok(expected[name]);
  }
});

Deno.test("npy: reads the numpy-written fixtures exactly (v1/v2/v3, big-endian, Fortran order)", async () => {
  const expected = JSON.parse(await Deno.readTextFile(`${FIXTURES}expected.json`)).npy;
  assert.ok(Object.keys(expected).length >= 16);
  for (const [name, e] of Object.entries<Record<string, unknown>>(expected)) {
    const path = `${FIXTURES}${name}`;
    for (const t of [await readNpy(path), decodeNpy(await Deno.readFile(path))]) {
      assert.equal(t.dtype, e.dtype, name);
      assert.deepEqual(t.shape, e.shape, name);
      assert.equal(hex(bytesOf(t.data)), e.hex, `${name} bytes`);
      if (e.f32_hex !== undefined) {
        assert.equal(hex(bytesOf(toFloat32(t))), e.f32_hex, `${name} f32`);
      }
    }
  }
  // Spot checks of values.
  const f16 = await readNpy(`${FIXTURES}f16_values.npy`);
  assert.deepEqual(nums(f16.data.slice(0, 5)), [0x3c00, 0x7bff, 0x0001, 0x7c00, 0xfc00]);
  assert.equal(f16.data[6], 0x8000);
  const i64 = await readNpy(`${FIXTURES}i64.npy`);
  assert.equal((i64.data as BigInt64Array)[5], 2n ** 63n - 1n);
  assert.equal((i64.data as BigInt64Array)[4], 2n ** 53n + 1n);
  const fo = await readNpy(`${FIXTURES}fortran_f32_2x3x4.npy`);
  assert.deepEqual(nums(fo.data), Array.from({ length: 24 }, (_, i) => i));
  const be = await readNpy(`${FIXTURES}be_f8.npy`);
  assert.deepEqual(nums(be.data), [1.5, -2.25, 1e300]);
  const scalar = await readNpy(`${FIXTURES}f64_scalar.npy`);
  assert.deepEqual(scalar.shape, []);
  assert.equal(scalar.data[0], Math.PI);
});

Deno.test("npy: malformed input is an IoError naming the problem", async () => {
  const hdr = (s: string) => `${s}${" ".repeat(Math.max(0, 117 - s.length))}\n`;
  const ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  const bad: [string, Uint8Array, string][] = [
    ["empty", new Uint8Array(0), "too short"],
    ["wrong magic", rawNpy(hdr(ok), 8).map((b, i) => (i === 1 ? 0x4f : b)), "bad magic"],
    ["zip file", new Uint8Array([0x50, 0x4b, 3, 4, 0, 0, 0, 0, 0, 0]), "bad magic"],
    ["version 4", rawNpy(hdr(ok), 8).map((b, i) => (i === 6 ? 4 : b)), "version 4.0"],
    ["version 1.1", rawNpy(hdr(ok), 8).map((b, i) => (i === 7 ? 1 : b)), "version 1.1"],
    ["header past file", rawNpy(hdr(ok), 8).subarray(0, 60), "reaches past the end"],
    ["preamble cut", rawNpy(hdr(ok), 8).subarray(0, 9), "header length"],
    [
      "header length > cap",
      (() => {
        const b = rawNpy(hdr(ok), 8, 2);
        new DataView(b.buffer).setUint32(8, 0xfffffff0, true);
        return b;
      })(),
      "cap of 1000000",
    ],
    ["truncated data", rawNpy(hdr(ok), 7), "data truncated"],
    ["trailing bytes", rawNpy(hdr(ok), 9), "1 unexpected bytes"],
    [
      "absurd shape",
      rawNpy(
        hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }"),
        8,
      ),
      "more than 2^53",
    ],
    ["eval attempt", rawNpy(hdr("__import__('os').system('true')"), 8), "invalid header"],
    ["not a dict", rawNpy(hdr("('descr', '<f4')"), 8), "not a dict"],
    ["missing key", rawNpy(hdr("{'descr': '<f4', 'shape': (2,), }"), 8), "header keys"],
    [
      "extra key",
      rawNpy(hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}"), 8),
      "header keys",
    ],
    [
      "duplicate key",
      rawNpy(hdr("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}"), 8),
      "duplicate key",
    ],
    [
      "unsupported dtype",
      rawNpy(hdr("{'descr': '<u4', 'fortran_order': False, 'shape': (2,), }"), 8),
      "unsupported dtype",
    ],
    [
      "complex dtype",
      rawNpy(hdr("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }"), 8),
      "unsupported dtype",
    ],
    [
      "object dtype",
      rawNpy(hdr("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"), 8),
      "unsupported dtype",
    ],
    [
      "structured dtype",
      rawNpy(hdr("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }"), 8),
      "structured",
    ],
    [
      "no byte order",
      rawNpy(hdr("{'descr': '|f4', 'fortran_order': False, 'shape': (2,), }"), 8),
      "byte order",
    ],
    [
      "fortran_order not bool",
      rawNpy(hdr("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }"), 8),
      "fortran_order",
    ],
    [
      "shape a list",
      rawNpy(hdr("{'descr': '<f4', 'fortran_order': False, 'shape': [2], }"), 8),
      "not a tuple",
    ],
    [
      "shape an int",
      rawNpy(hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2), }"), 8),
      "not a tuple",
    ],
    [
      "negative shape",
      rawNpy(hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }"), 8),
      "non-negative",
    ],
    [
      "float shape",
      rawNpy(hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2.0,), }"), 8),
      "invalid header",
    ],
    [
      "string shape",
      rawNpy(hdr("{'descr': '<f4', 'fortran_order': False, 'shape': ('2',), }"), 8),
      "non-negative",
    ],
    ["unterminated string", rawNpy(hdr("{'descr: '<f4'}"), 8), "invalid header"],
    ["deep nesting", rawNpy(`{'a': ${"(".repeat(5000)}}\n`, 0), "nesting deeper"],
    [
      "bad UTF-8 v3",
      (() => {
        const b = rawNpy(`{'descr': '<f4\xe9', 'fortran_order': False, 'shape': (), }\n`, 4, 3);
        b[b.indexOf(0xc3)] = 0xff; // break the two-byte UTF-8 sequence of é
        return b;
      })(),
      "UTF-8",
    ],
  ];
  for (const [what, bytes, fragment] of bad) {
    const err = await assertIoError(() => decodeNpy(bytes), fragment, what);
    assert.ok(err.message.startsWith("<npy bytes>: "), err.message);
  }
  await withTempDir(async (dir) => {
    for (const [i, [what, bytes, fragment]] of bad.entries()) {
      const path = `${dir}/bad${i}.npy`;
      await Deno.writeFile(path, bytes);
      const err = await assertIoError(() => readNpy(path), fragment, `${what} (file)`);
      assert.ok(err.message.startsWith(`${path}: `), err.message);
    }
    const err = await assertIoError(() => readNpy(`${dir}/missing.npy`), "cannot open");
    assert.ok(err.cause instanceof Deno.errors.NotFound);
  });
  // Accepted variants: double quotes, no trailing comma, Python 2 long ints, any key order.
  const v = decodeNpy(
    rawNpy(
      hdr(`{"shape": (2L, 1), "fortran_order": False, "descr": "<i2"}`),
      new Uint8Array([1, 0, 2, 0]),
    ),
  );
  assert.deepEqual(v.shape, [2, 1]);
  assert.deepEqual(nums(v.data), [1, 2]);
});

Deno.test("npy: every truncation of a valid file is an IoError", async () => {
  for (const name of ["f32_2x3.npy", "fortran_i2_3x5.npy", "v2_f32.npy", "v3_i16.npy", "i64.npy"]) {
    const bytes = await Deno.readFile(`${FIXTURES}${name}`);
    await withTempDir(async (dir) => {
      const path = `${dir}/cut.npy`;
      for (let cut = 0; cut < bytes.length; cut++) {
        const part = bytes.subarray(0, cut);
        await assertIoError(() => decodeNpy(part), /too short|header|truncated/, `${name}@${cut}`);
        await Deno.writeFile(path, part);
        await assertIoError(() => readNpy(path), /too short|header|truncated/, `${name}@${cut}`);
      }
    });
  }
});

Deno.test("npy: random corruption gives a result or an IoError, nothing else", () => {
  const rand = rng(5);
  const good = encodeNpy(randomTensor("float32", [3, 4], rand));
  let failures = 0;
  for (let iter = 0; iter < 3000; iter++) {
    const b = good.slice();
    const flips = 1 + Math.floor(rand() * 3);
    for (let k = 0; k < flips; k++) {
      const pos = Math.floor(rand() * 80);
      b[pos] = rand() < 0.5 ? Math.floor(rand() * 256) : pick(PY_CHARS, rand);
    }
    try {
      decodeNpy(b);
    } catch (e) {
      if (!(e instanceof IoError)) throw new Error(`iteration ${iter}: ${e}`, { cause: e });
      failures++;
    }
  }
  assert.ok(failures > 1000, `only ${failures} corruptions detected`);
});

// ---------------------------------------------------------------------------------------------
// atomic writes

Deno.test("atomic: a failing write leaves no target and no temp file; an old target survives", async () => {
  await withTempDir(async (dir) => {
    const bad: HostTensor = { dtype: "float32", shape: [4], data: new Float32Array(3) };
    const good = hostTensor("int32", [2], new Int32Array([1, 2]));
    // No target yet.
    await assertIoError(() => writeSafetensors(`${dir}/m.safetensors`, { good, bad }), "needs 4");
    await assertIoError(() => writeNpy(`${dir}/m.npy`, bad), "needs 4");
    assert.deepEqual(await listDir(dir), []);
    // An existing target stays untouched.
    await writeSafetensors(`${dir}/m.safetensors`, { good });
    await writeNpy(`${dir}/m.npy`, good);
    const before = [
      await Deno.readFile(`${dir}/m.safetensors`),
      await Deno.readFile(`${dir}/m.npy`),
    ];
    await assertIoError(() => writeSafetensors(`${dir}/m.safetensors`, { bad }), "needs 4");
    await assertIoError(() => writeNpy(`${dir}/m.npy`, hostTensor("bfloat16", [1])), "bfloat16");
    assert.deepEqual(await listDir(dir), ["m.npy", "m.safetensors"]);
    assert.deepEqual(await Deno.readFile(`${dir}/m.safetensors`), before[0]);
    assert.deepEqual(await Deno.readFile(`${dir}/m.npy`), before[1]);
  });
});

Deno.test("atomic: writeFileAtomic cleans up after a failing chunk source", async () => {
  await withTempDir(async (dir) => {
    const target = `${dir}/out.bin`;
    await Deno.writeFile(target, new Uint8Array([9, 9, 9]));
    async function* failing() {
      yield new Uint8Array(1 << 16).fill(1);
      throw new Error("source failed");
    }
    await assert.rejects(() => writeFileAtomic(target, failing()), /source failed/);
    assert.deepEqual(await listDir(dir), ["out.bin"]);
    assert.deepEqual(await Deno.readFile(target), new Uint8Array([9, 9, 9]));
    await assert.rejects(
      () => writeFileAtomic(target, [new Uint8Array(2), 5 as unknown as Uint8Array]),
      /not a Uint8Array/,
    );
    assert.deepEqual(await listDir(dir), ["out.bin"]);
    // Success: chunks concatenated, parents created, sync iterables and async ones alike.
    await writeFileAtomic(target, [new Uint8Array([1, 2]), new Uint8Array([3])]);
    assert.deepEqual(await Deno.readFile(target), new Uint8Array([1, 2, 3]));
    async function* gen() {
      yield new Uint8Array([4]);
      yield new Uint8Array([5, 6]);
    }
    await writeFileAtomic(`${dir}/a/b/c.bin`, gen());
    assert.deepEqual(await Deno.readFile(`${dir}/a/b/c.bin`), new Uint8Array([4, 5, 6]));
    await writeFileAtomic(`${dir}/a/b/c.bin`, new Uint8Array(0));
    assert.equal((await Deno.stat(`${dir}/a/b/c.bin`)).size, 0);
    assert.deepEqual(await listDir(`${dir}/a/b`), ["c.bin"]);
  });
});

Deno.test("tensorBytes: a view of the tensor's own bytes", () => {
  const t = hostTensor("int16", [2], new Int16Array([258, -1]));
  assert.deepEqual(Array.from(tensorBytes(t)), [2, 1, 255, 255]);
});
