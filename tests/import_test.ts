/**
 * Importing official PyTorch files (pickles, zip and legacy torch.save): exact tensors, network
 * outputs, the import-teacher task, refused globals, and bad or mutated input.
 * Fixtures: tests/fixtures/pickles (see the README there).
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { tf } from "../lib/deps.ts";
import { type HostTensor, IoError, tensorBytes, toFloat32 } from "../lib/io/host_tensor.ts";
import {
  isPersistentRecord,
  memorySource,
  type NumpyArrayBuilder,
  PyDict,
  PySet,
  PyTuple,
  type PyValue,
  TensorRef,
  unpickle,
} from "../lib/io/pickle.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import {
  openTorchFile,
  readTensor,
  readTorchBytes,
  stateDictOf,
  type TorchFile,
} from "../lib/io/torch_file.ts";
import { fromEdmKwargs } from "../lib/nets/config.ts";
import { importNetwork, importToSafetensors } from "../lib/nets/import.ts";
import { loadNetwork, saveNetwork } from "../lib/nets/network.ts";
import type { EDMPrecond } from "../lib/nets/precond.ts";
import { EDM2Precond } from "../lib/nets/edm2.ts";
import { loadDenoisingNetwork } from "../lib/nets/load.ts";
import { fixturePath, maxAbsDiff, nhwc, setupBackend } from "./helpers.ts";

const P = (name: string) => fixturePath(`pickles/${name}`);
const expected = await readSafetensors(P("expected.safetensors"));
const E = (name: string): HostTensor => {
  const t = expected.tensors.get(name);
  if (!t) throw new Error(`expected.safetensors lacks ${name}`);
  return t;
};

function tmpDir(): string {
  return Deno.makeTempDirSync({ prefix: "sida-import-test-" });
}

function assertSameTensor(got: HostTensor, want: HostTensor, what: string): void {
  assert.equal(got.dtype, want.dtype, `${what}: dtype`);
  assert.deepEqual(got.shape, want.shape, `${what}: shape`);
  assert.deepEqual(tensorBytes(got), tensorBytes(want), `${what}: bytes`);
  assert.deepEqual(toFloat32(got), toFloat32(want), `${what}: float32 values`);
}

async function assertIoError(p: Promise<unknown> | (() => unknown), re?: RegExp): Promise<void> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    assert.ok(
      e instanceof IoError,
      `expected IoError, got ${(e as Error)?.name}: ${(e as Error)?.message}`,
    );
    assert.ok(!e.message.includes("\n"), "one-line message");
    if (re) assert.match(e.message, re);
    return;
  }
  assert.fail("expected an IoError");
}

function get(d: PyValue, k: string): PyValue {
  assert.ok(d instanceof PyDict, "a dict");
  return d.get(k) ?? null;
}

// ---------------------------------------------------------------------------------------------

for (const file of ["tensors.pkl", "tensors.pt"]) {
  Deno.test(`${file}: tensors are bit-exact (f16, bf16, strided views, offsets, int64, bool)`, () => {
    const f = openTorchFile(P(file));
    try {
      const tensors = file.endsWith(".pkl") ? get(f.root, "tensors") : f.root;
      assert.ok(tensors instanceof PyDict);
      const names = [...expected.tensors.keys()].filter((k) => k.startsWith("tensors/"));
      assert.equal(names.length, 13);
      for (const name of names) {
        const ref = tensors.get(name.slice("tensors/".length));
        assert.ok(ref instanceof TensorRef, name);
        assertSameTensor(readTensor(ref), E(name), `${file} ${name}`);
      }
      const t = tensors.get("transposed") as TensorRef;
      assert.deepEqual(t.stride, [1, 5]);
      assert.equal((tensors.get("offset_view") as TensorRef).storageOffset, 7);
      assert.equal(f.format, file.endsWith(".pkl") ? "pickle" : "zip");
    } finally {
      f.close();
    }
  });
}

Deno.test("tensors.pkl: plain Python values are decoded", () => {
  const f = openTorchFile(P("tensors.pkl"));
  try {
    const r = f.root;
    assert.ok(get(r, "set") instanceof PySet);
    assert.deepEqual([...(get(r, "set") as PySet)], [1, 2]);
    assert.equal((get(r, "frozen") as PySet).frozen, true);
    assert.equal(get(r, "big_int"), 2n ** 70n);
    assert.equal(get(r, "neg"), -5);
    assert.equal(get(r, "float"), 0.1);
    const tup = get(r, "tuple") as PyTuple;
    assert.ok(tup instanceof PyTuple);
    assert.equal(tup.items[2], null);
    assert.equal(tup.items[3], true);
    assert.deepEqual(get(r, "bytes"), new Uint8Array([0, 1]));
    assert.equal(get(r, "np_scalar"), Math.sqrt(0.5));
    const arr = get(r, "np_array") as NumpyArrayBuilder;
    assert.deepEqual(arr.array?.shape, [2, 3]);
    assert.deepEqual([...(arr.array!.data as Float32Array)], [0, 1, 2, 3, 4, 5]);
    assert.equal((get(r, "od") as PyDict).pyClass, "collections.OrderedDict");
    assert.equal((get(r, "easy") as PyDict).pyClass, "dnnlib.util.EasyDict");
    assert.equal((get(r, "easy") as PyDict).get("b"), 2);
  } finally {
    f.close();
  }
});

Deno.test("edm2_fp16.pkl: float16 weights bit-exact; EDM2 networks are refused clearly", async () => {
  const f = openTorchFile(P("edm2_fp16.pkl"));
  try {
    assert.ok(f.root instanceof PyDict && f.root.pyClass === "dnnlib.util.EasyDict");
    assert.deepEqual([...f.root.keys()], ["encoder", "dataset_kwargs", "loss_fn", "ema"]);
    const ema = f.root.get("ema");
    assert.ok(isPersistentRecord(ema) && ema.className === "Precond");
    assert.match(ema.moduleSrcHash, /^[0-9a-f]{64}$/);
    const sd = stateDictOf(ema);
    const names = [...expected.tensors.keys()].filter((k) => k.startsWith("edm2/unet."));
    assert.deepEqual(
      [...sd.keys()],
      names.map((n) => n.slice(5)).sort((a, b) =>
        [...sd.keys()].indexOf(a) - [...sd.keys()].indexOf(b)
      ),
    );
    for (const n of names) {
      const t = readTensor(sd.get(n.slice(5))!);
      assert.equal(t.dtype, "float16");
      assertSameTensor(t, E(n), n);
    }
    const enc = f.root.get("encoder");
    assert.ok(isPersistentRecord(enc));
    const scale = (enc.state as PyDict).get("scale") as NumpyArrayBuilder;
    assertSameTensor(scale.array!, E("edm2/encoder.scale"), "encoder.scale");
  } finally {
    f.close();
  }
  await assertIoError(
    importNetwork(P("edm2_fp16.pkl")),
    /is an EDM2 network \(Precond\); load it with importEdm2Network/,
  );
  await assertIoError(importNetwork(P("edm2_fp16.pkl"), { key: "loss_fn" }), /'EDM2Loss'/);
  await assertIoError(
    importNetwork(P("edm2_fp16.pkl"), { key: "nope" }),
    /no object 'nope'.*encoder/,
  );
});

// ---------------------------------------------------------------------------------------------

async function checkOutputs(net: EDMPrecond, which: "songunet" | "dhariwal"): Promise<number> {
  const x = nhwc(E(`out/${which}.x`)) as tf.Tensor4D;
  const labels = nhwc(E(`out/${which}.labels`)) as tf.Tensor2D;
  const aug = expected.tensors.has(`out/${which}.augment_labels`)
    ? nhwc(E(`out/${which}.augment_labels`)) as tf.Tensor2D
    : undefined;
  const want = nhwc(E(`out/${which}.denoised`));
  const sigma = [...toFloat32(E(`out/${which}.sigma`))];
  const got = net.denoise(x, sigma, { labels, augmentLabels: aug });
  const d = await maxAbsDiff(got, want);
  tf.dispose([x, labels, want, got, ...(aug ? [aug] : [])]);
  return d;
}

const NET_CASES: [string, "songunet" | "dhariwal", string, string][] = [
  ["edm_songunet.pkl", "songunet", "EDMPrecond", "pickle"],
  ["edm_dhariwal.pkl", "dhariwal", "EDMPrecond", "pickle"],
  ["sida_songunet.pkl", "songunet", "EDMPrecond_EncoderDecoder", "pickle"],
  ["edm_training_state.pt", "songunet", "EDMPrecond", "zip"],
];

for (const [file, which, cls, format] of NET_CASES) {
  Deno.test(`${file}: the imported network reproduces EDM's outputs`, async () => {
    await setupBackend();
    const { net, summary } = await importNetwork(P(file));
    try {
      assert.equal(summary.className, cls);
      assert.equal(summary.format, format);
      assert.equal(summary.architecture, which === "songunet" ? "SongUNet" : "DhariwalUNet");
      assert.deepEqual(summary.sourceDtypes, ["float32"]);
      assert.equal(summary.labelDim, 10);
      assert.equal(summary.paramCount, net.numParameters());
      const d = await checkOutputs(net, which);
      assert.ok(d <= 1e-4, `${file}: max |diff| ${d}`);
    } finally {
      net.dispose();
    }
  });
}

Deno.test("training_state.pt: bare state dicts need a config, then match the pickle", async () => {
  await setupBackend();
  await assertIoError(importNetwork(P("training_state.pt")), /bare state dict/);
  const config = fromEdmKwargs(JSON.parse(expected.metadata.songunet_kwargs));
  for (const key of ["G_ema_state", "fake_score_state"]) {
    const { net, summary } = await importNetwork(P("training_state.pt"), { key, config });
    try {
      assert.equal(summary.key, key);
      assert.ok(await checkOutputs(net, "songunet") <= 1e-4);
    } finally {
      net.dispose();
    }
  }
});

Deno.test("loadNetwork reads .pkl and .pt files", async () => {
  await setupBackend();
  for (const file of ["edm_songunet.pkl", "edm_training_state.pt"]) {
    const net = await loadNetwork(P(file));
    try {
      assert.ok(await checkOutputs(net, "songunet") <= 1e-4);
    } finally {
      net.dispose();
    }
  }
});

Deno.test("importToSafetensors writes exactly what saveNetwork writes", async () => {
  await setupBackend();
  const dir = tmpDir();
  try {
    for (const file of ["edm_dhariwal.pkl", "sida_songunet.pkl"]) {
      await importToSafetensors(P(file), `${dir}/a.safetensors`);
      const { net } = await importNetwork(P(file));
      await saveNetwork(net, `${dir}/b.safetensors`);
      net.dispose();
      assert.deepEqual(
        Deno.readFileSync(`${dir}/a.safetensors`),
        Deno.readFileSync(`${dir}/b.safetensors`),
      );
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

async function runTask(
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../tasks/import_teacher.ts", import.meta.url).pathname, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("import-teacher task: end to end, then loadNetwork of the output", async () => {
  await setupBackend();
  const dir = tmpDir();
  try {
    const out = `${dir}/teacher.safetensors`;
    const r = await runTask(P("edm_songunet.pkl"), out);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /architecture\s+SongUNet/);
    assert.match(r.stdout, /parameters\s+12,619/);
    assert.match(r.stdout, /source dtype\s+float32/);
    const net = await loadNetwork(out);
    try {
      assert.ok(await checkOutputs(net, "songunet") <= 1e-4);
    } finally {
      net.dispose();
    }
    // An EDM2 pickle goes through the EDM2 importer: its own architecture, EDM2 safetensors.
    const e2 = await runTask(P("edm2_tiny_fp16.pkl"), `${dir}/e2.safetensors`);
    assert.equal(e2.code, 0, e2.stderr);
    assert.match(e2.stdout, /architecture\s+EDM2UNet/);
    assert.match(e2.stdout, /source dtype\s+float16/);
    const e2net = await loadDenoisingNetwork(`${dir}/e2.safetensors`);
    assert.ok(e2net instanceof EDM2Precond, "loads back as an EDM2 network");
    e2net.dispose();
    const bad = await runTask(P("edm2_tiny_fp16.pkl"), `${dir}/x.safetensors`, "--preset", "mnist");
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /error: --preset and --config apply to EDM networks/);
    assert.ok(!existsSync(`${dir}/x.safetensors`));
    // A pickle that names an EDM2 class but holds other weights: refused, nothing written.
    const odd = await runTask(P("edm2_fp16.pkl"), `${dir}/x.safetensors`);
    assert.notEqual(odd.code, 0);
    assert.match(odd.stderr, /weights do not match the recorded architecture/);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /error: --preset and --config apply to EDM networks/);
    assert.ok(!existsSync(`${dir}/x.safetensors`));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("malicious pickles: the global is refused by name and never run", async () => {
  try {
    Deno.removeSync("/tmp/sida-pwned");
  } catch { /* absent */ }
  await assertIoError(importNetwork(P("malicious_os_system.pkl")), /'(posix|os)\.system'/);
  await assertIoError(() => openTorchFile(P("malicious_os_system_p2.pkl")), /'(posix|os)\.system'/);
  await assertIoError(() => openTorchFile(P("malicious_eval.pkl")), /'builtins\.eval'/);
  // Hand-written protocol-2 text GLOBAL of os.system and subprocess.Popen.
  const enc = new TextEncoder();
  for (const [mod, name] of [["os", "system"], ["subprocess", "Popen"], ["builtins", "exec"]]) {
    const bytes = new Uint8Array([
      0x80,
      0x02,
      ...enc.encode(`c${mod}\n${name}\n`),
      0x58,
      4,
      0,
      0,
      0,
      ...enc.encode("true"),
      0x85,
      0x52,
      0x2e,
    ]);
    await assertIoError(() => unpickle(memorySource(bytes)), new RegExp(`'${mod}\\.${name}'`));
  }
  const dir = tmpDir();
  try {
    const r = await runTask(P("malicious_os_system.pkl"), `${dir}/out.safetensors`);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /error: .*posix\.system/);
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
  assert.ok(!existsSync("/tmp/sida-pwned"));
});

// ---------------------------------------------------------------------------------------------
// Bad input

async function expectRejected(bytes: Uint8Array, what: string, ext = ".pkl"): Promise<void> {
  const dir = tmpDir();
  try {
    const inp = `${dir}/in${ext}`;
    const out = `${dir}/out.safetensors`;
    Deno.writeFileSync(inp, bytes);
    try {
      await importToSafetensors(inp, out);
    } catch (e) {
      assert.ok(e instanceof IoError, `${what}: ${(e as Error)?.name}: ${(e as Error)?.message}`);
      assert.ok(!existsSync(out), `${what}: output left behind`);
      assert.deepEqual(
        [...Deno.readDirSync(dir)].map((d) => d.name),
        [`in${ext}`],
        `${what}: stray files`,
      );
      return;
    }
    assert.fail(`${what}: accepted`);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("truncated files at many cut points are an IoError with no output", async () => {
  await setupBackend();
  for (const file of ["edm_songunet.pkl", "edm_training_state.pt"]) {
    const bytes = Deno.readFileSync(P(file));
    const cuts = new Set<number>([
      0,
      1,
      2,
      3,
      10,
      50,
      100,
      500,
      1000,
      bytes.length - 1,
      bytes.length - 2,
    ]);
    for (let i = 1; i < 60; i++) cuts.add(Math.floor((bytes.length * i) / 60));
    for (const c of cuts) {
      await expectRejected(bytes.subarray(0, c), `${file} cut at ${c}`, file.slice(-4));
    }
  }
});

Deno.test("wrong magic, random bytes and oversized lengths are an IoError with no output", async () => {
  await setupBackend();
  const good = Deno.readFileSync(P("edm_songunet.pkl"));
  const wrong = good.slice();
  wrong[0] = 0x7f;
  await expectRejected(wrong, "wrong magic");
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (let i = 0; i < 5; i++) {
    const rnd = Uint8Array.from({ length: 1000 + i * 997 }, () => Math.floor(rand() * 256));
    await expectRejected(rnd, `random ${i}`);
    rnd[0] = 0x80;
    rnd[1] = 0x04;
    await expectRejected(rnd, `random pickle-looking ${i}`);
  }
  // A BINUNICODE / BINBYTES8 / BINBYTES claiming 4 GB, 2^52 bytes and 2 GB.
  for (const [op, len] of [[0x58, 4], [0x8e, 8], [0x42, 4]] as const) {
    const b = new Uint8Array(2 + 1 + len + 4);
    b.set([0x80, 0x04, op]);
    b.fill(0xff, 3, 3 + len);
    if (len === 8) b[3 + 7] = 0x00;
    await expectRejected(b, `oversized opcode ${op}`);
  }
  // A storage blob whose element count exceeds the data.
  const patched = good.slice();
  const hex = Array.from(patched.subarray(0, 4000), (x) => x.toString(16).padStart(2, "0")).join(
    "",
  );
  const at = hex.indexOf("5803000000637075") / 2; // BINUNICODE 'cpu', BINPUT n, then the numel
  assert.ok(at > 0);
  assert.equal(patched[at + 8], 0x71);
  const numelOp = at + 10;
  assert.ok([0x4b, 0x4d, 0x4a].includes(patched[numelOp]), `numel opcode ${patched[numelOp]}`);
  patched[numelOp] = 0x4a;
  patched.set([0xff, 0xff, 0xff, 0x7f], numelOp + 1);
  await expectRejected(patched, "oversized storage numel");
  // Zip whose central directory claims more bytes than the file has.
  const zip = Deno.readFileSync(P("edm_training_state.pt")).slice();
  const eocd = zip.length - 22;
  assert.deepEqual([...zip.subarray(eocd, eocd + 4)], [0x50, 0x4b, 0x05, 0x06]);
  zip.set([0xff, 0xff, 0xff, 0x7f], eocd + 12);
  await expectRejected(zip, "oversized central directory", ".pt");
});

// ---------------------------------------------------------------------------------------------
// Fuzz

function collectTensors(v: PyValue, out: TensorRef[], depth = 0, seen = new Set<unknown>()): void {
  if (depth > 40 || v === null || typeof v !== "object" || seen.has(v)) return;
  seen.add(v);
  if (v instanceof TensorRef) out.push(v);
  else if (Array.isArray(v)) v.forEach((x) => collectTensors(x, out, depth + 1, seen));
  else if (v instanceof PyTuple) v.items.forEach((x) => collectTensors(x, out, depth + 1, seen));
  else if (v instanceof PyDict) {
    for (const x of v.values()) collectTensors(x, out, depth + 1, seen);
  } else if (isPersistentRecord(v)) collectTensors(v.state, out, depth + 1, seen);
}

Deno.test("fuzz: 1,200 mutated files end in an IoError or a correct load", () => {
  const bases = ["edm_songunet.pkl", "tensors.pkl", "edm_training_state.pt", "edm2_fp16.pkl"].map((
    f,
  ) => Deno.readFileSync(P(f)));
  let seed = 987654321;
  const rand = () => (seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32;
  const ri = (n: number) => Math.floor(rand() * n);
  let ok = 0;
  let rejected = 0;
  let slowest = 0;
  const rss0 = Deno.memoryUsage().rss;
  for (let i = 0; i < 1200; i++) {
    const base = bases[i % bases.length];
    let b = base.slice();
    const kind = i % 4;
    if (kind === 0) {
      for (let k = 1 + ri(8); k > 0; k--) b[ri(b.length)] ^= 1 << ri(8);
    } else if (kind === 1) {
      b = b.slice(0, ri(b.length));
    } else if (kind === 2) {
      const other = bases[ri(bases.length)];
      const at = ri(b.length);
      const from = ri(other.length);
      const len = ri(2000);
      const mid = other.subarray(from, from + len);
      b = new Uint8Array([...b.subarray(0, at), ...mid, ...b.subarray(at + ri(2000))]);
    } else {
      // Overwrite a byte near the start (opcodes / headers) with a random value.
      const at = ri(Math.min(b.length, 4096));
      b[at] = ri(256);
      b[ri(b.length)] = ri(256);
    }
    const t0 = performance.now();
    let f: TorchFile | undefined;
    try {
      f = readTorchBytes(b, `fuzz${i}`);
      const refs: TensorRef[] = [];
      collectTensors(f.root, refs);
      for (const r of refs) readTensor(r);
      if (f.root instanceof PyDict && isPersistentRecord(f.root.get("ema"))) {
        stateDictOf(f.root.get("ema")!);
      }
      ok++;
    } catch (e) {
      if (!(e instanceof IoError)) {
        throw new Error(
          `case ${i} (kind ${kind}): ${(e as Error)?.name}: ${(e as Error)?.message}`,
        );
      }
      rejected++;
    } finally {
      f?.close();
    }
    const dt = performance.now() - t0;
    slowest = Math.max(slowest, dt);
    assert.ok(dt < 2000, `case ${i} took ${dt.toFixed(0)} ms`);
  }
  const grown = Deno.memoryUsage().rss - rss0;
  assert.equal(ok + rejected, 1200);
  assert.ok(rejected > 300, `only ${rejected} rejected`);
  assert.ok(grown < 512 * 2 ** 20, `rss grew by ${grown} bytes`);
  console.log(`fuzz: ${ok} loaded, ${rejected} IoError, slowest case ${slowest.toFixed(1)} ms`);
});
