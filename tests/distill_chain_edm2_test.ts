/**
 * `deno task distill` with an EDM2 teacher in latent space: a tiny conditional EDM2 network on
 * 4×8×8 latents, a zip of latents (posterior mean and std per item, as EDM2's `img512-sd.zip`),
 * the small VAE decoder fixture of tests/vae_test.ts (8×8 latents → 32×32 RGB), the width/8
 * Inception fixture as detector, and a 32×32 RGB image zip as reference (FID statistics and KID's
 * real images).
 *
 * - the whole chain (import, SiD, SiD²A, eval) runs and reports finite FID and KID for both
 *   generators, with decoded 32×32 RGB sample grids;
 * - bad combinations fail before anything is written, with one `error:` line: no VAE, a VAE for
 *   other latents, pixel data for a latent teacher, `--vae` for a pixel teacher, a `.npz`
 *   reference with latent data (KID has no real images).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../lib/deps.ts";
import {
  createImageDataset,
  LatentDataset,
  writeImageZip,
  writeLatentZip,
} from "../lib/data/dataset.ts";
import { readSafetensors, writeSafetensors } from "../lib/io/safetensors.ts";
import { toFloat32 } from "../lib/io/host_tensor.ts";
import { saveRefStats } from "../lib/metrics/ref_stats.ts";
import { createEdm2Network } from "../lib/nets/edm2.ts";
import { saveEdm2Network } from "../lib/nets/import_edm2.ts";
import { createNetwork, saveNetwork } from "../lib/nets/network.ts";
import { runDistillChain } from "../lib/pipeline/distill.ts";
import { loadDenoisingNetwork } from "../lib/nets/load.ts";
import type { ChainReport } from "../lib/pipeline/report.ts";
import { fixturePath, setupBackend, TEST_BACKEND, tinySongUNet } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;

interface Fixture {
  dir: string;
  teacher: string;
  latents: string;
  images: string;
  vae: string;
  detector: string;
}

let fixture: Promise<Fixture> | undefined;

function setup(): Promise<Fixture> {
  fixture ??= (async () => {
    await setupBackend();
    const dir = await Deno.makeTempDir({ prefix: "sida-chain-edm2-test-" });
    const net = createEdm2Network({
      imgResolution: 8,
      imgChannels: 4,
      labelDim: 3,
      logvarChannels: 8,
      unet: { modelChannels: 8, channelMult: [1, 2], numBlocks: 1, attnResolutions: [4] },
    }, { seed: 2 });
    // out_gain starts at 0 (D = c_skip·x): give it a value so that the teacher is not trivial.
    tf.tidy(() => {
      for (const [name, v] of net.namedParameters()) {
        if (/gain/.test(name)) v.assign(tf.fill(v.shape, 0.7));
      }
    });
    const teacher = join(dir, "edm2-tiny.safetensors");
    await saveEdm2Network(net, teacher);
    net.dispose();
    // 12 latents: means around the SD latent statistics, small stds.
    const n = 12, r = 8, c = 4;
    const data = new Float32Array(n * 2 * c * r * r);
    for (let i = 0; i < data.length; i++) {
      const inStd = Math.floor(i / (c * r * r)) % 2 === 1;
      data[i] = inStd ? 0.1 + 0.05 * Math.sin(i) : 3 * Math.sin(i * 0.37);
    }
    const latents = join(dir, "latents.zip");
    await writeLatentZip(
      latents,
      new LatentDataset("toy", r, c, data, Int32Array.from({ length: n }, (_, i) => i % 3), 3),
    );
    // Reference images: 32×32 RGB.
    const px = new Uint8Array(n * 32 * 32 * 3);
    for (let i = 0; i < px.length; i++) px[i] = (i * 37 + Math.floor(i / 97) * 11) % 256;
    const images = join(dir, "images.zip");
    await writeImageZip(
      images,
      createImageDataset({ name: "rgb", resolution: 32, channels: 3, pixels: px, labels: null }),
    );
    // The VAE: the small diffusers fixture as a diffusers folder.
    const { tensors, metadata } = await readSafetensors(fixturePath("nets/vae_small.safetensors"));
    const vae = join(dir, "vae");
    await Deno.mkdir(vae);
    await writeSafetensors(
      join(vae, "diffusion_pytorch_model.safetensors"),
      new Map(
        [...tensors].filter(([k]) => k.startsWith("state.")).map(([k, t]) => [k.slice(6), t]),
      ),
    );
    await Deno.writeTextFile(join(vae, "config.json"), metadata.config);
    return {
      dir,
      teacher,
      latents,
      images,
      vae,
      detector: fixturePath("inception/inception_w8.pt"),
    };
  })();
  return fixture;
}

function flags(f: Fixture, out: string): string[] {
  return [
    ...["--teacher", f.teacher, "--data", f.latents, "--vae", f.vae, "--ref", f.images],
    ...["--detector", f.detector, "--out", out, "--preset", "imagenet512-xs"],
    ...["--batch", "4", "--micro-batch", "2", "--seed", "1", "--lr", "1e-3", "--glr", "1e-3"],
    ...["--sid-kimg", "0.012", "--sida-kimg", "0.008", "--tick", "0.004", "--dump", "0.004"],
    ...["--num", "12", "--eval-batch", "6", "--snapshot-num", "6", "--backend", TEST_BACKEND],
    "--quiet",
  ];
}

async function runTask(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "tasks/distill.ts"), ...args],
    cwd: ROOT,
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** Replaces the value after `flag` (or drops flag and value with `value` null). */
function withFlag(args: string[], flag: string, value: string | null): string[] {
  const i = args.indexOf(flag);
  const out = [...args];
  if (value === null) out.splice(i, 2);
  else out[i + 1] = value;
  return out;
}

Deno.test("distill chain, EDM2 latent teacher: bad combinations fail before anything is written", async () => {
  const f = await setup();
  const out = join(f.dir, "bad");
  const base = flags(f, out);
  // An 8-channel VAE (for other latents).
  const wrongVae = join(f.dir, "vae8");
  await Deno.mkdir(wrongVae);
  await Deno.copyFile(
    join(f.vae, "diffusion_pytorch_model.safetensors"),
    join(wrongVae, "diffusion_pytorch_model.safetensors"),
  );
  const cfg = JSON.parse(await Deno.readTextFile(join(f.vae, "config.json")));
  await Deno.writeTextFile(
    join(wrongVae, "config.json"),
    JSON.stringify({ ...cfg, latent_channels: 8 }),
  );
  // A pixel teacher (SongUNet, 32×32×3).
  const pixelTeacher = join(f.dir, "pixel.safetensors");
  const pnet = createNetwork(
    tinySongUNet({ imgResolution: 32, imgChannels: 3, labelDim: 0 }),
    { seed: 1 },
  );
  await saveNetwork(pnet, pixelTeacher);
  pnet.dispose();
  const npz = join(f.dir, "ref.npz");
  await saveRefStats(npz, {
    mu: new Float64Array(256),
    sigma: Float64Array.from({ length: 256 * 256 }, (_, i) => i % 257 === 0 ? 1 : 0),
    dim: 256,
  });
  const cases: [string, string[], RegExp][] = [
    [
      "no VAE",
      withFlag(base, "--vae", null),
      /4-channel latents: scoring and evaluation need the VAE/,
    ],
    ["VAE for other latents", withFlag(base, "--vae", wrongVae), /--vae: .*conv_in\.weight/],
    [
      "pixel data",
      withFlag(base, "--data", f.images),
      /data .* hold 32x32x3 images, the teacher needs 8x8x4/,
    ],
    [
      "--vae with a pixel teacher",
      withFlag(
        withFlag(withFlag(base, "--teacher", pixelTeacher), "--preset", "cifar10-uncond"),
        "--data",
        f.images,
      ).concat(["--augment", "0"]),
      /--vae applies to a latent teacher/,
    ],
    [
      "npz reference",
      withFlag(base, "--ref", npz),
      /KID needs real images: give --ref as an image zip/,
    ],
  ];
  for (const [name, args, re] of cases) {
    const r = await runTask(args);
    const lines = r.stderr.trimEnd().split("\n");
    assert.notEqual(r.code, 0, `${name}: exit code`);
    assert.equal(lines.length, 1, `${name}: one stderr line, got ${JSON.stringify(r.stderr)}`);
    assert.ok(lines[0].startsWith("error: ") && re.test(lines[0]), `${name}: ${lines[0]}`);
    assert.ok(!(await exists(out)), `${name}: ${out} was created`);
  }
});

Deno.test("distill chain, EDM2 latent teacher: import, SiD, SiD²A and eval in latent space, decoded by the VAE", async () => {
  const f = await setup();
  const out = join(f.dir, "run");
  const r = await runDistillChain({
    teacher: f.teacher,
    data: f.latents,
    vae: f.vae,
    ref: f.images,
    detector: f.detector,
    out,
    preset: "imagenet512-xs",
    overrides: { batch: 4, microBatch: 2, seed: 1, lr: 1e-3, glr: 1e-3 },
    sidKimg: 0.012,
    sidaKimg: 0.008,
    tickKimg: 0.004,
    dumpKimg: 0.004,
    num: 12,
    evalBatch: 6,
    snapshotNum: 6,
    backend: TEST_BACKEND,
    quiet: true,
  });
  assert.ok(!r.interrupted);
  const report = JSON.parse(await Deno.readTextFile(join(out, "report.json"))) as ChainReport;
  assert.equal(report.evaluation.features, "inception");
  for (const stage of ["sid", "sida"]) {
    const m = JSON.parse(await Deno.readTextFile(join(out, "eval", stage, "best.json")));
    const s = m.spaces.inception;
    assert.ok(Number.isFinite(s.fid) && s.fid >= 0, `${stage} FID ${s.fid}`);
    assert.ok(Number.isFinite(s.kid), `${stage} KID ${s.kid}`);
    assert.equal(s.kidReal, 12, "KID's real images are the reference zip's");
  }
  // The grids are decoded RGB: 8 columns of 32-pixel images with 2-pixel gaps.
  const png = await Deno.readFile(join(out, "eval", "sid", "samples-best.png"));
  const view = new DataView(png.buffer, png.byteOffset);
  assert.equal(view.getUint32(16), 8 * 32 + 7 * 2, "grid width");
  assert.equal(png[25], 2, "RGB colour type");
  // The imported teacher is an EDM2 network.
  const { metadata } = await readSafetensors(join(out, "import", "teacher.safetensors"));
  assert.equal(metadata.class, "EDM2Precond");
  // The snapshots' FIDs were scored through the VAE during training (one line each).
  const fids = (await Deno.readTextFile(join(out, "sid", "snapshot-fids.jsonl"))).trim().split(
    "\n",
  );
  assert.ok(fids.length >= 2, `${fids.length} scored snapshots`);
  for (const l of fids) assert.ok(Number.isFinite(JSON.parse(l).fid), l);
});

Deno.test("distill chain, EDM2 pickle teacher: the import stage converts it with its weights", async () => {
  const f = await setup();
  const pkl = fixturePath("pickles/edm2_tiny_fp16.pkl"); // 4×16×16 latents, 10 classes
  const data = join(f.dir, "latents16.zip");
  const n = 10, r = 16, c = 4;
  const values = Float32Array.from({ length: n * 2 * c * r * r }, (_, i) => Math.sin(i) * 0.5 + 1);
  await writeLatentZip(
    data,
    new LatentDataset("toy16", r, c, values, Int32Array.from({ length: n }, (_, i) => i), 10),
  );
  const out = join(f.dir, "import-only");
  const res = await runDistillChain({
    teacher: pkl,
    data,
    out,
    preset: "imagenet512-xs",
    stages: ["import"],
    snapshotNum: 0,
    backend: TEST_BACKEND,
    quiet: true,
  });
  assert.equal(res.stages.import, "ran");
  const imported = await readSafetensors(join(out, "import", "teacher.safetensors"));
  assert.equal(imported.metadata.class, "EDM2Precond");
  const ref = await loadDenoisingNetwork(pkl);
  try {
    const want = await ref.stateDict();
    assert.deepEqual([...imported.tensors.keys()].sort(), [...want.keys()].sort());
    for (const [k, t] of want) {
      const got = toFloat32(imported.tensors.get(k)!);
      assert.ok(got.every((v, i) => v === (t.data as Float32Array)[i]), `${k} differs`);
    }
  } finally {
    ref.dispose();
  }
});

Deno.test("distill chain EDM2 tests: remove the temporary folder", async () => {
  if (fixture) await Deno.remove((await fixture).dir, { recursive: true });
});
