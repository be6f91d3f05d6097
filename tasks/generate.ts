/**
 * `deno task generate`: draws images from a one-step generator (or a teacher with the EDM
 * sampler) and writes them as PNGs into a folder (`000000.png`, …) or as one `.npz`
 * (`images`: uint8 NHWC, `labels`: int32, −1 when unconditional). A latent generator (EDM2
 * `img512`) needs `--vae` (the Stable Diffusion VAE folder or `.safetensors` file) to decode its
 * samples to RGB.
 *
 * @module
 */
import { fastPng } from "../lib/deps.ts";
import { dirname } from "node:path";
import { checkWritableDir, writeFileAtomic } from "../lib/io/atomic.ts";
import { lockRunFolder } from "../lib/io/lock.ts";
import { hostTensor } from "../lib/io/host_tensor.ts";
import { loadDenoisingNetwork } from "../lib/nets/load.ts";
import { generateBatches, imageShapeOrUsage, SIGMA_INIT } from "../lib/metrics/generate.ts";
import { loadVaeDecoder } from "../lib/nets/vae.ts";
import { writeNpz } from "../lib/metrics/npz.ts";
import { numberFlag, parseFlags, runMain, startBackend, UsageError } from "../lib/runtime/cli.ts";

const USAGE = "usage: deno task generate --generator G.safetensors --num N --out DIR|FILE.npz " +
  "[--seed 0] [--class K] [--sampler onestep|heun] [--steps 18] [--sigma-init 2.5] [--batch 64] [--vae DIR|FILE] [--backend B]";

await runMain(async () => {
  const flags = parseFlags(Deno.args, {
    string: [
      "generator",
      "num",
      "seed",
      "class",
      "out",
      "sampler",
      "steps",
      "sigma-init",
      "batch",
      "vae",
    ],
    boolean: ["help"],
  }, USAGE);
  if (flags.help) return console.log(USAGE);
  if (flags.positionals.length) {
    throw new UsageError(`unexpected argument '${flags.positionals[0]}' (${USAGE})`);
  }
  const genPath = flags.generator as string | undefined;
  const out = flags.out as string | undefined;
  if (!genPath || !out) throw new UsageError(`--generator and --out are required (${USAGE})`);
  const num = numberFlag("num", flags.num, 64, { integer: true, min: 1 });
  const seed = numberFlag("seed", flags.seed, 0, { integer: true, min: 0 });
  const batch = numberFlag("batch", flags.batch, 64, { integer: true, min: 1 });
  const steps = numberFlag("steps", flags.steps, 18, { integer: true, min: 1 });
  const sigmaInit = numberFlag("sigma-init", flags["sigma-init"], SIGMA_INIT, { min: 0 });
  const classLabel = flags.class === undefined
    ? undefined
    : numberFlag("class", flags.class, 0, { integer: true, min: 0 });
  const sampler = (flags.sampler as string | undefined) ?? "onestep";
  if (sampler !== "onestep" && sampler !== "heun") {
    throw new UsageError(`--sampler must be onestep or heun, got '${sampler}'`);
  }
  const toNpz = out.toLowerCase().endsWith(".npz");
  // Where the images go is checked before any work: a folder is created and locked
  // (lib/io/lock.ts), an .npz file's folder must be writable.
  await using _lock = toNpz
    ? null
    : await lockRunFolder(out, { task: "generate", partialDepth: 0 });
  if (toNpz) {
    if (await Deno.stat(out).then((s) => s.isDirectory, () => false)) {
      throw new UsageError(`--out '${out}' is a folder, not an .npz file`);
    }
    await checkWritableDir(dirname(out));
  }
  await startBackend(flags.backend as string | undefined);
  const net = await loadDenoisingNetwork(genPath);
  if (classLabel !== undefined && (!net.labelDim || classLabel >= net.labelDim)) {
    throw new UsageError(
      net.labelDim
        ? `--class must be below ${net.labelDim}`
        : "--class given for an unconditional generator",
    );
  }
  const vae = flags.vae ? await loadVaeDecoder(flags.vae as string) : undefined;
  const { resolution: res, channels: ch } = imageShapeOrUsage(net, vae);
  const images = toNpz ? new Uint8Array(num * res * res * ch) : undefined;
  const labels = new Int32Array(num);
  for await (
    const b of generateBatches(net, {
      num,
      seed,
      batch,
      classLabel,
      sampler,
      steps,
      sigmaInit,
      vae,
    })
  ) {
    labels.set(b.labels, b.start);
    if (images) images.set(b.pixels, b.start * res * res * ch);
    else {
      const per = res * res * ch;
      for (let k = 0; k < b.n; k++) {
        const png = fastPng.encode({
          width: res,
          height: res,
          data: b.pixels.slice(k * per, (k + 1) * per),
          channels: ch,
          depth: 8,
        });
        await writeFileAtomic(`${out}/${String(b.start + k).padStart(6, "0")}.png`, png);
      }
    }
    Deno.stderr.writeSync(new TextEncoder().encode(`\rgenerated ${b.start + b.n}/${num}   `));
  }
  Deno.stderr.writeSync(new TextEncoder().encode("\n"));
  if (images) {
    await writeNpz(out, {
      images: hostTensor("uint8", [num, res, res, ch], images),
      labels: hostTensor("int32", [num], labels),
    });
  }
  console.log(`wrote ${num} images to ${out}`);
  net.dispose();
  vae?.dispose();
});
