/**
 * The checkpoint importer under hostile input, each file imported in a child process
 * (`import_fuzz_driver.ts`) watched by a per-case timeout and a memory bound:
 *
 * - a seeded fuzz of three official-format checkpoints (bit flips, byte overwrites, insertions,
 *   deletions, splices and truncations of everything but the tensor bytes; storage-type swaps;
 *   NaN written into the tensor bytes): no case hangs, exhausts memory, runs code or throws
 *   anything but an `IoError`; every file that loads gives exactly the clean file's tensors;
 * - hand-made files, one per hole found by an earlier fuzzing pass: shared references that
 *   expand exponentially (in `_init_kwargs` and in the module tree), absurd network configs,
 *   control bytes in names, a FloatStorage declared as another type, NaN weights.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { existsSync } from "node:fs";
import { crc32 as zlibCrc32 } from "node:zlib";
import { bytesPerElement, IoError } from "../lib/io/host_tensor.ts";
import {
  isPersistentRecord,
  memorySource,
  PyDict,
  PyObject,
  PyTuple,
  type PyValue,
  StorageRef,
  TensorRef,
} from "../lib/io/pickle.ts";
import { readTensor, readTorchBytes } from "../lib/io/torch_file.ts";
import { fixturePath } from "./helpers.ts";
import { PickleWriter } from "./pickle_writer.ts";

const P = (name: string) => fixturePath(`pickles/${name}`);
const DRIVER = new URL("./import_fuzz_driver.ts", import.meta.url).pathname;
/** A case that prints nothing for this long hangs (the slowest clean import takes ~1 s). */
const CASE_TIMEOUT_MS = 20_000;
/** The child's resident memory may not exceed this (a clean import peaks near 400 MB). */
const MAX_RSS = 1.5 * 2 ** 30;
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/** What a case must give. */
type Expect =
  | { kind: "same"; base: string } // the clean file's tensors, or an IoError
  | { kind: "reject"; re?: RegExp } // an IoError (matching `re`)
  | { kind: "load" }; // loads

interface Case {
  name: string;
  bytes: Uint8Array;
  ext: string;
  expect: Expect;
}

interface Outcome {
  ok?: string;
  err?: { name: string; message: string };
  ms: number;
  rss: number;
  numTensors: number;
}

/** Runs the cases in one child process; fails on a hang, a crash or too much memory. */
async function runCases(cases: Case[]): Promise<Outcome[]> {
  const dir = Deno.makeTempDirSync({ prefix: "sida-fuzz-" });
  try {
    const list = cases.map((c, i) => ({ file: `case-${i}${c.ext}` }));
    cases.forEach((c, i) => Deno.writeFileSync(`${dir}/${list[i].file}`, c.bytes));
    Deno.writeTextFileSync(`${dir}/cases.json`, JSON.stringify(list));
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--v8-flags=--max-old-space-size=1024", DRIVER, dir],
      stdout: "piped",
      stderr: "piped",
      env: { OMP_NUM_THREADS: "1" },
    }).spawn();
    const stderr = new Response(child.stderr).text();
    const out: Outcome[] = [];
    let current = -1;
    let started = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let hung = false;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        hung = true;
        child.kill("SIGKILL");
      }, CASE_TIMEOUT_MS);
    };
    arm();
    let buf = "";
    let done = false;
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        arm();
        const [tag, idx, ...rest] = line.split(" ");
        const i = Number(idx);
        if (tag === "START") {
          current = i;
          started = performance.now();
          out[i] = { ms: 0, rss: 0, numTensors: 0 };
        } else if (tag === "OK") {
          out[i].ok = rest[0];
          out[i].ms = performance.now() - started;
        } else if (tag === "ERR") {
          out[i].err = { name: rest[0], message: JSON.parse(rest.slice(1).join(" ")) };
          out[i].ms = performance.now() - started;
        } else if (tag === "RSS") {
          out[i].rss = Number(rest[0]);
          out[i].numTensors = Number(rest[1]);
        } else if (tag === "DONE") done = true;
      }
    }
    clearTimeout(timer);
    const status = await child.status;
    const what = current >= 0 ? `case ${current} (${cases[current].name})` : "start-up";
    assert.ok(!hung, `${what} hangs: no answer in ${CASE_TIMEOUT_MS / 1000} s`);
    assert.ok(
      done && status.success,
      `the importer died at ${what} (exit ${status.code}, signal ${status.signal}): ${
        (await stderr).slice(-500)
      }`,
    );
    return out;
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

/** Checks every outcome against its case's expectation and the global invariants. */
function check(cases: Case[], outcomes: Outcome[], clean: Map<string, string>): void {
  let firstTensors = -1;
  for (let i = 0; i < cases.length; i++) {
    const c = cases[i];
    const o = outcomes[i];
    const what = `case ${i} (${c.name})`;
    assert.ok(o, `${what}: no outcome`);
    assert.ok(o.rss < MAX_RSS, `${what}: resident memory ${(o.rss / 2 ** 20).toFixed(0)} MiB`);
    if (firstTensors < 0) firstTensors = o.numTensors;
    assert.equal(o.numTensors, firstTensors, `${what}: tensors leaked`);
    if (o.err) {
      assert.equal(o.err.name, "IoError", `${what}: ${o.err.name}: ${o.err.message}`);
      assert.ok(!CONTROL.test(o.err.message), `${what}: control bytes in the message`);
      assert.ok(
        o.err.message.length < 2000,
        `${what}: a message of ${o.err.message.length}: ${o.err.message.slice(0, 300)}`,
      );
    }
    const e = c.expect;
    if (e.kind === "same") {
      if (o.ok) assert.equal(o.ok, clean.get(e.base), `${what}: loaded other tensors`);
    } else if (e.kind === "reject") {
      assert.ok(o.err, `${what}: accepted`);
      if (e.re) assert.ok(e.re.test(o.err.message), `${what}: ${o.err.message}`);
    } else {
      assert.ok(o.ok, `${what}: ${o.err?.message}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The tensor bytes of a file (never mutated by the structural fuzz: a flipped weight bit is a
// valid file with other weights, which no importer can tell).

function collectTensors(v: PyValue, out: TensorRef[], seen = new Set<unknown>()): void {
  if (v === null || typeof v !== "object" || seen.has(v)) return;
  seen.add(v);
  if (v instanceof TensorRef) out.push(v);
  else if (Array.isArray(v)) v.forEach((x) => collectTensors(x, out, seen));
  else if (v instanceof PyTuple) v.items.forEach((x) => collectTensors(x, out, seen));
  else if (v instanceof PyDict) {
    for (const x of v.values()) collectTensors(x, out, seen);
  } else if (v instanceof PyObject) collectTensors(v.state, out, seen);
  else if (isPersistentRecord(v)) collectTensors(v.state, out, seen);
}

/** `[start, end)` byte ranges of every storage's data in `bytes`, and the float32 ones. */
function dataRegions(bytes: Uint8Array): { all: [number, number][]; f32: [number, number][] } {
  const f = readTorchBytes(bytes, "clean");
  const refs: TensorRef[] = [];
  collectTensors(f.root, refs);
  const all: [number, number][] = [];
  const f32: [number, number][] = [];
  const file = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  for (const st of new Set(refs.map((r) => r.storage))) {
    const len = st.numel * bytesPerElement(st.dtype);
    if (len === 0) continue;
    // Small storages are copied out of the file by the reader: find their bytes in it (every
    // occurrence: storages of equal content, such as resampling filters, are not told apart).
    const content = Buffer.from(st.data!.source.read(st.data!.offset, len));
    let at = file.indexOf(content);
    assert.ok(at >= 0, `the bytes of storage '${st.key}' are not in the file`);
    for (; at >= 0; at = file.indexOf(content, at + 1)) {
      const r: [number, number] = [at, at + len];
      all.push(r);
      if (st.dtype === "float32" && len >= 64) f32.push(r);
    }
  }
  assert.ok(all.length > 10);
  return { all, f32 };
}

/**
 * Rewrites the CRC-32 of every stored entry of a zip (central directory and local header) to
 * match its data, so that a mutation reaches the checks behind the CRC. A no-op on a file whose
 * directory cannot be read.
 */
function fixZipCrcs<T extends Uint8Array>(b: T): T {
  const dv = new DataView(b.buffer, b.byteOffset, b.length);
  const eocd = b.length - 22;
  if (eocd < 0 || dv.getUint32(eocd, true) !== 0x06054b50) return b;
  const count = dv.getUint16(eocd + 10, true);
  let p = dv.getUint32(eocd + 16, true);
  for (let i = 0; i < count && p + 46 <= b.length; i++) {
    const size = dv.getUint32(p + 24, true);
    const local = dv.getUint32(p + 42, true);
    if (local + 30 > b.length) return b;
    const start = local + 30 + dv.getUint16(local + 26, true) + dv.getUint16(local + 28, true);
    if (start + size > b.length) return b;
    const crc = zlibCrc32(b.subarray(start, start + size)) >>> 0;
    dv.setUint32(p + 16, crc, true);
    dv.setUint32(local + 14, crc, true);
    p += 46 + dv.getUint16(p + 28, true) + dv.getUint16(p + 30, true) + dv.getUint16(p + 32, true);
  }
  return b;
}

function rng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return Math.floor((s / 2 ** 32) * n);
  };
}

const BASES = ["edm_songunet.pkl", "sida_songunet.pkl", "edm_training_state.pt"];

function fuzzCases(perBase: number, seed: number): Case[] {
  const ri = rng(seed);
  const cases: Case[] = [];
  for (const base of BASES) {
    const clean = Deno.readFileSync(P(base));
    const ext = base.slice(base.lastIndexOf("."));
    const { all, f32 } = dataRegions(clean);
    const inData = new Uint8Array(clean.length);
    for (const [a, b] of all) inData.fill(1, a, b);
    const structure: number[] = [];
    for (let i = 0; i < clean.length; i++) if (!inData[i]) structure.push(i);
    const pos = () => structure[ri(structure.length)];
    const same: Expect = { kind: "same", base };
    cases.push({ name: `${base} clean`, bytes: clean, ext, expect: { kind: "load" } });
    for (let k = 0; k < perBase; k++) {
      let b = clean.slice();
      const kind = k % 6;
      let name: string;
      if (kind === 0) {
        const n = 1 + ri(4);
        for (let j = 0; j < n; j++) b[pos()] ^= 1 << ri(8);
        name = `${n} bit flips`;
      } else if (kind === 1) {
        const v = [0x00, 0xff, 0x7f, 0x80, 0x01, 0x28, 0x2e, 0x52, 0x68, 0x71][ri(10)];
        b[pos()] = v;
        name = `a byte set to ${v}`;
      } else if (kind === 2) {
        const at = pos();
        const n = 1 + ri(8);
        const ins = Uint8Array.from({ length: n }, () => ri(256));
        b = new Uint8Array([...b.subarray(0, at), ...ins, ...b.subarray(at)]);
        name = `${n} bytes inserted`;
      } else if (kind === 3) {
        const at = pos();
        const n = 1 + ri(8);
        b = new Uint8Array([...b.subarray(0, at), ...b.subarray(at + n)]);
        name = `${n} bytes deleted`;
      } else if (kind === 4) {
        const at = pos();
        const from = pos();
        const n = 1 + ri(64);
        b = new Uint8Array([
          ...b.subarray(0, at),
          ...clean.subarray(from, from + n),
          ...b.subarray(at),
        ]);
        name = `${n} bytes of the file spliced in`;
      } else {
        b = b.slice(0, pos());
        name = "truncated";
      }
      cases.push({ name: `${base}: ${name}`, bytes: b, ext, expect: same });
    }
    // NaN or Inf written into a float32 weight: always refused.
    for (let k = 0; k < 4; k++) {
      const b = clean.slice();
      const [a, e] = f32[ri(f32.length)];
      const at = a + 4 * ri((e - a) / 4);
      new DataView(b.buffer).setFloat32(at, k % 2 ? Infinity : NaN, true);
      // A zip's CRC-32 catches any change of its data first: with the CRC fixed, the value check.
      const crcFixed = ext === ".pt" && k >= 2;
      cases.push({
        name: `${base}: ${k % 2 ? "Inf" : "NaN"} in a weight${crcFixed ? " (CRCs fixed)" : ""}`,
        bytes: crcFixed ? fixZipCrcs(b) : b,
        ext,
        expect: {
          kind: "reject",
          re: ext === ".pt" && !crcFixed ? /CRC-32 mismatch/ : /non-finite weights/,
        },
      });
    }
    // A FloatStorage declared as a ShortStorage (the same length, so the file stays valid).
    const text = new TextDecoder("latin1").decode(clean);
    const hits: number[] = [];
    for (
      let at = text.indexOf("FloatStorage");
      at >= 0;
      at = text.indexOf("FloatStorage", at + 1)
    ) {
      hits.push(at);
    }
    assert.ok(hits.length > 0, `${base}: no FloatStorage`);
    for (let k = 0; k < 2; k++) {
      const b = clean.slice();
      b.set(new TextEncoder().encode("ShortStorage"), hits[ri(hits.length)]);
      cases.push({
        name: `${base}: a FloatStorage declared a ShortStorage`,
        bytes: ext === ".pt" ? fixZipCrcs(b) : b,
        ext,
        expect: { kind: "reject", re: /bytes after the last storage|declares \d+ bytes/ },
      });
    }
  }
  return cases;
}

async function cleanHashes(): Promise<Map<string, string>> {
  const cases = BASES.map((b) => ({
    name: b,
    bytes: Deno.readFileSync(P(b)),
    ext: b.slice(b.lastIndexOf(".")),
    expect: { kind: "load" } as Expect,
  }));
  const out = await runCases(cases);
  check(cases, out, new Map());
  return new Map(BASES.map((b, i) => [b, out[i].ok!]));
}

Deno.test("fuzz: mutated checkpoints never hang, run code, leak or load other tensors", async () => {
  const clean = await cleanHashes();
  // SIDA_FUZZ_SEED explores other draws; the suite runs the fixed one.
  const cases = fuzzCases(120, Number(Deno.env.get("SIDA_FUZZ_SEED") ?? 20261205));
  const t0 = performance.now();
  const outcomes = await runCases(cases);
  check(cases, outcomes, clean);
  const loaded = outcomes.filter((o) => o.ok).length;
  const slowest = Math.max(...outcomes.map((o) => o.ms));
  const maxRss = Math.max(...outcomes.map((o) => o.rss));
  console.log(
    `fuzz: ${cases.length} cases in ${((performance.now() - t0) / 1000).toFixed(1)} s: ` +
      `${loaded} loaded the clean tensors, ${cases.length - loaded} IoError; slowest ` +
      `${slowest.toFixed(0)} ms, peak RSS ${(maxRss / 2 ** 20).toFixed(0)} MiB`,
  );
  assert.ok(cases.length - loaded > cases.length / 4, "most mutations are refused");
});

// ---------------------------------------------------------------------------------------------
// Hand-made hostile files

/** EDMPrecond kwargs of a small SongUNet; `patch` replaces or adds entries. */
function kwargs(w: PickleWriter, patch: Record<string, (w: PickleWriter) => void> = {}): void {
  w.dict({
    img_resolution: (w) => w.int(16),
    img_channels: (w) => w.int(1),
    label_dim: (w) => w.int(0),
    model_type: (w) => w.str("SongUNet"),
    model_channels: (w) => w.int(16),
    channel_mult: (w) => w.mark().int(1).int(2).list(),
    num_blocks: (w) => w.int(1),
    ...patch,
  });
}

/** An EDMPrecond persistent record with these `_init_kwargs` and `_modules`. */
function network(
  kw: (w: PickleWriter) => void,
  modules: (w: PickleWriter) => void = (w) => w.emptyDict(),
  className = "EDMPrecond",
): Uint8Array {
  const w = new PickleWriter();
  w.persistent(className, (w) =>
    w.dict({
      _init_kwargs: kw,
      _init_args: (w) => w.emptyTuple(),
      _parameters: (w) => w.emptyDict(),
      _buffers: (w) => w.emptyDict(),
      _modules: modules,
    }));
  return w.bytes();
}

/** A list that holds the previous list twice, `depth` times: 2^depth leaves in a few bytes. */
function sharedListBomb(w: PickleWriter, depth: number): void {
  w.emptyList().put(0);
  for (let i = 1; i <= depth; i++) w.pop().mark().get(i - 1).get(i - 1).list().put(i);
}

/** A module whose `_modules` holds the previous module twice, `depth` times. */
function sharedModuleBomb(w: PickleWriter, depth: number): void {
  const module = (inner: (w: PickleWriter) => void) =>
    w.global("torch.nn.modules.container", "ModuleDict").emptyTuple().newObj().dict({
      _parameters: (w) => w.emptyDict(),
      _buffers: (w) => w.emptyDict(),
      _modules: inner,
    }).build();
  module((w) => w.emptyDict());
  w.put(1000);
  for (let i = 1; i <= depth; i++) {
    w.pop();
    module((w) => w.dict({ a: (w) => w.get(1000 + i - 1), b: (w) => w.get(1000 + i - 1) }));
    w.put(1000 + i);
  }
}

const marker = `/tmp/sida-fuzz-pwned-${crypto.randomUUID()}`;

/** One hostile file per hole that an earlier fuzzing pass found, or that its fix must not open. */
function handMadeCases(): Case[] {
  const cases: Case[] = [];
  const add = (name: string, bytes: Uint8Array, re: RegExp) =>
    cases.push({ name, bytes, ext: ".pkl", expect: { kind: "reject", re } });
  add(
    `shared references in _init_kwargs (${network((w) => sharedListBomb(w, 30)).length} bytes)`,
    network((w) => kwargs(w, { channel_mult: (w) => sharedListBomb(w, 30) })),
    /_init_kwargs.*more than \d+ values/,
  );
  add(
    "shared modules in the module tree",
    network((w) => kwargs(w), (w) => w.dict({ model: (w) => sharedModuleBomb(w, 48) })),
    /more than \d+ modules/,
  );
  add(
    "num_blocks 1e5",
    network((w) => kwargs(w, { num_blocks: (w) => w.int(100000) })),
    /numBlocks 100000 exceeds/,
  );
  add(
    "num_blocks 1e4",
    network((w) => kwargs(w, { num_blocks: (w) => w.int(10000) })),
    /numBlocks 10000 exceeds/,
  );
  add(
    "65536 channels",
    network((w) => kwargs(w, { model_channels: (w) => w.int(65536) })),
    /modelChannels 65536 exceeds/,
  );
  add(
    "too many parameters",
    network((w) =>
      kwargs(w, {
        model_channels: (w) => w.int(2048),
        channel_mult: (w) => w.mark().int(4).int(4).list(),
        num_blocks: (w) => w.int(8),
      })
    ),
    /parameters, more than the limit/,
  );
  add(
    "resolution 2^30",
    network((w) => kwargs(w, { img_resolution: (w) => w.int(2 ** 30) })),
    /imgResolution/,
  );
  add(
    "terminal escapes in the class name",
    network((w) => kwargs(w), undefined, "\x1b[2J\x1b[Himport ok\r\n\x07"),
    /\\x1b\[2J\\x1b\[Himport ok\\r\\n\\x07/,
  );
  add(
    "terminal escapes in a kwarg name",
    network((w) => kwargs(w, { "\x1b]0;pwned\x07x": (w) => w.int(1) })),
    /unsupported network option '\\x1b\]0;pwned\\x07x'/,
  );
  for (const [mod, fn] of [["os", "system"], ["posix", "system"], ["subprocess", "check_call"]]) {
    const w = new PickleWriter();
    w.persistent(
      "EDMPrecond",
      (w) =>
        w.dict({ _init_kwargs: (w) => w.global(mod, fn).str(`touch ${marker}`).tuple1().reduce() }),
    );
    add(`${mod}.${fn} in the kwargs`, w.bytes(), new RegExp(`refusing global '${mod}\\.${fn}'`));
  }
  return cases;
}

for (const c of handMadeCases()) {
  Deno.test(`hostile checkpoint refused quickly, in one clean line: ${c.name}`, async () => {
    const [o] = await runCases([c]);
    check([c], [o], new Map());
    assert.ok(o.ms < 5000, `took ${o.ms.toFixed(0)} ms`);
    assert.ok(!existsSync(marker), "a payload ran");
  });
}

Deno.test("a zero-stride view cannot make a few stored bytes into a huge array", () => {
  const st = new StorageRef("float32", 1, "0");
  st.data = { source: memorySource(new Uint8Array(4)), offset: 0 };
  const ok = new TensorRef(st, 0, [1, 1], [0, 0], false);
  assert.deepEqual(readTensor(ok).shape, [1, 1]);
  // A transposed view is fine; a stride that revisits elements is not.
  const st6 = new StorageRef("float32", 6, "1");
  st6.data = { source: memorySource(new Uint8Array(24)), offset: 0 };
  assert.deepEqual(readTensor(new TensorRef(st6, 0, [3, 2], [1, 3], false)).shape, [3, 2]);
  assert.throws(() => readTensor(new TensorRef(st6, 0, [2, 3], [1, 1], false)), IoError);
  assert.throws(() => readTensor(new TensorRef(st6, 0, [2, 3], [3, 0], false)), IoError);
  const huge = new TensorRef(st, 0, [100_000, 100_000], [0, 0], false);
  assert.throws(
    () => readTensor(huge),
    (e) => e instanceof IoError && /repeats elements/.test(e.message),
  );
});
