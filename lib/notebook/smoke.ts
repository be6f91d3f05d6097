/**
 * Stand-in files for a notebook's smoke configuration, when the real teacher, data set, FID
 * reference and Inception detector are not at hand: a random-weight teacher of the real
 * architecture family at small width, a small synthetic labelled data set at the real shape, and
 * a width-scaled random Inception-v3 detector. They exercise every stage of the real pipeline in
 * seconds; their numbers (FID, images) mean nothing.
 *
 * @example
 * ```ts
 * import { smokeFiles } from "./smoke.ts";
 * const files = await smokeFiles("cifar10", "runs/notebook-cifar10/smoke");
 * // files.teacher, files.data, files.detector
 * ```
 *
 * @module
 */
import { join } from "node:path";
import { tf } from "../deps.ts";
import {
  createImageDataset,
  LATENT_RAW_MEAN,
  LATENT_RAW_STD,
  LatentDataset,
  writeImageZip,
  writeLatentZip,
} from "../data/dataset.ts";
import { mkdirNamed, writeFileAtomic } from "../io/atomic.ts";
import { writeSafetensors } from "../io/safetensors.ts";
import { type NetworkConfig, preset } from "../nets/config.ts";
import { createEdm2Network, type Edm2ConfigInput } from "../nets/edm2.ts";
import { saveEdm2Network } from "../nets/import_edm2.ts";
import { Initializer } from "../nets/init.ts";
import { createNetwork, saveNetwork } from "../nets/network.ts";
import { VaeDecoder, type VaeDecoderConfig } from "../nets/vae.ts";
import { InceptionV3 } from "../metrics/inception.ts";
import { seededRandom } from "../runtime/random.ts";

/** The smoke configurations: which real setting each stands in for. */
export const SMOKE_FAMILIES = ["cifar10", "imagenet64", "imagenet512"] as const;

/** A smoke configuration name. */
export type SmokeFamily = typeof SMOKE_FAMILIES[number];

/**
 * The small EDM2 teacher of the `imagenet512` smoke configuration: EDM2's U-Net on 4-channel
 * latents with 1000 classes, at 8×8 and 16 channels instead of 64×64 and 128 (XS).
 */
export const SMOKE_EDM2_TEACHER: Edm2ConfigInput = {
  imgResolution: 8,
  imgChannels: 4,
  labelDim: 1000,
  logvarChannels: 16,
  unet: { modelChannels: 16, channelMult: [1, 2], numBlocks: 1, attnResolutions: [4] },
};

/**
 * The small VAE decoder of the `imagenet512` smoke configuration: the SD VAE's structure with
 * three levels of 16–32 channels (8×8 latents → 32×32 RGB; the real one: four levels of
 * 128–512 channels, 64×64 → 512×512).
 */
export const SMOKE_VAE: VaeDecoderConfig = {
  latentChannels: 4,
  outChannels: 3,
  blockOutChannels: [16, 32, 32],
  layersPerBlock: 1,
  normNumGroups: 8,
};

/** The small teacher of a family: the real preset's architecture, fewer channels and blocks. */
export function smokeTeacherConfig(family: Exclude<SmokeFamily, "imagenet512">): NetworkConfig {
  if (family === "cifar10") {
    // EDM's CIFAR-10 teacher: SongUNet DDPM++, 32×32×3, 10 classes, augment_dim 9.
    const c = preset("cifar10-ddpmpp-cond");
    return {
      ...c,
      unet: {
        ...c.unet,
        modelChannels: 16,
        channelMult: [1, 2],
        numBlocks: 1,
        attnResolutions: [16],
      },
    } as NetworkConfig;
  }
  // EDM's ImageNet 64 teacher: ADM (DhariwalUNet), 64×64×3, 1000 classes; float32 here.
  const c = preset("imagenet64-adm");
  return {
    ...c,
    useFp16: false,
    unet: {
      ...c.unet,
      modelChannels: 16,
      channelMult: [1, 2, 4], // 64 channels at 16x16, where the decoder's first block attends
      channelMultEmb: 2,
      numBlocks: 1,
      attnResolutions: [], // attention blocks need >= 64 channels (one 64-channel head)
    },
  } as NetworkConfig;
}

/** The files {@linkcode smokeFiles} wrote. */
export interface SmokeFiles {
  /** What stands in for what, in one line. */
  description: string;
  /** Random-weight teacher (`.safetensors`). */
  teacher: string;
  /** Synthetic labelled data set (`.zip`, EDM's dataset_tool layout); also the FID reference. */
  data: string;
  /** Width-scaled (÷16) random Inception-v3 (`.safetensors`, 128-d features). */
  detector: string;
  /** `imagenet512`: the random VAE decoder, a diffusers folder (`config.json` + safetensors). */
  vae?: string;
  /**
   * `imagenet512`: synthetic RGB images at the decoded resolution (`.zip`), the FID reference
   * and KID's real images (`data` holds latents there).
   */
  ref?: string;
}

/**
 * Synthetic images of a family's shape: on a dark noisy background, a bright disc whose hue is
 * the class (`c / labelDim` of the colour wheel) at a random place and size.
 */
function syntheticImages(
  count: number,
  res: number,
  labelDim: number,
  seed: number,
): { pixels: Uint8Array; labels: Int32Array } {
  const rnd = seededRandom(seed);
  const noise = rnd.uniform(count * res * res);
  const u = () => rnd.uniform(1)[0];
  const pixels = new Uint8Array(count * res * res * 3);
  const labels = new Int32Array(count);
  for (let i = 0; i < count; i++) {
    // Every class when there are enough images, else classes spread over 0..labelDim-1 (the
    // largest class must occur: a zip's class count is its largest label + 1).
    const c = count >= labelDim ? i % labelDim : Math.round((i * (labelDim - 1)) / (count - 1));
    labels[i] = c;
    const h = (c / labelDim) * 6;
    const k = (n: number) => (n + h) % 6;
    const f = (n: number) => 1 - Math.max(0, Math.min(k(n), 4 - k(n), 1));
    const rgb = [f(5), f(3), f(1)].map((v) => 60 + 195 * v);
    const cx = res * (0.3 + 0.4 * u());
    const cy = res * (0.3 + 0.4 * u());
    const r = res * (0.15 + 0.15 * u());
    for (let y = 0; y < res; y++) {
      for (let x = 0; x < res; x++) {
        const o = ((i * res + y) * res + x) * 3;
        const inside = (x - cx) ** 2 + (y - cy) ** 2 < r * r;
        for (let ch = 0; ch < 3; ch++) {
          const v = inside ? rgb[ch] : 20 + 30 * noise[(i * res + y) * res + x];
          pixels[o + ch] = Math.round(v);
        }
      }
    }
  }
  return { pixels, labels };
}

/**
 * Writes (or reuses, when present) the smoke stand-ins of `family` into `dir`: teacher, data set
 * (`count` images, default 64) and detector. Deterministic for a given seed.
 */
export async function smokeFiles(
  family: SmokeFamily,
  dir: string,
  options: { count?: number; seed?: number } = {},
): Promise<SmokeFiles> {
  if (!(SMOKE_FAMILIES as readonly string[]).includes(family)) {
    throw new RangeError(`unknown smoke family '${family}' (${SMOKE_FAMILIES.join(", ")})`);
  }
  const seed = options.seed ?? 0;
  const count = options.count ?? 64;
  await mkdirNamed(dir);
  const files = {
    teacher: join(dir, "teacher.safetensors"),
    data: join(dir, "data.zip"),
    detector: join(dir, "inception-w16.safetensors"),
  };
  const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
  if (!await exists(files.detector)) {
    const det = new InceptionV3({ widthDivisor: 16, seed });
    try {
      await det.save(files.detector);
    } finally {
      det.dispose();
    }
  }
  if (family === "imagenet512") return await edm2SmokeFiles(dir, files, count, seed, exists);
  const config = smokeTeacherConfig(family);
  if (!await exists(files.teacher)) {
    const net = createNetwork(config, { seed });
    try {
      await saveNetwork(net, files.teacher);
    } finally {
      net.dispose();
    }
  }
  if (!await exists(files.data)) {
    const res = config.imgResolution;
    const { pixels, labels } = syntheticImages(count, res, config.labelDim, seed + 1);
    const ds = createImageDataset({
      name: `smoke-${family}`,
      resolution: res,
      channels: 3,
      pixels,
      labels,
      labelDim: config.labelDim,
    });
    await writeImageZip(files.data, ds);
  }
  const arch = config.unet.arch;
  return {
    ...files,
    description: `random-weight ${arch} teacher (${config.unet.modelChannels} channels, ` +
      `${config.imgResolution}x${config.imgResolution}x3, ${config.labelDim} classes), ` +
      `${count} synthetic images, random Inception-v3 at 1/16 width`,
  };
}

/** The `imagenet512` stand-ins: EDM2 teacher, latent data, VAE folder and RGB reference images. */
async function edm2SmokeFiles(
  dir: string,
  files: { teacher: string; data: string; detector: string },
  count: number,
  seed: number,
  exists: (p: string) => Promise<boolean>,
): Promise<SmokeFiles> {
  const c = SMOKE_EDM2_TEACHER;
  const r = c.imgResolution!, ch = c.imgChannels!, labelDim = c.labelDim!;
  if (!await exists(files.teacher)) {
    const net = createEdm2Network(c, { seed });
    try {
      // The output gain starts at 0 (D = c_skip·x): a non-zero one makes the teacher a network.
      tf.tidy(() => {
        for (const [name, v] of net.namedParameters()) {
          if (/gain/.test(name)) v.assign(tf.fill(v.shape, 0.5));
        }
      });
      await saveEdm2Network(net, files.teacher);
    } finally {
      net.dispose();
    }
  }
  const vae = join(dir, "vae");
  if (!await exists(join(vae, "diffusion_pytorch_model.safetensors"))) {
    const v = new VaeDecoder(SMOKE_VAE, new Initializer("random", seed + 2));
    try {
      await mkdirNamed(vae);
      const cfg = SMOKE_VAE;
      await writeFileAtomic(
        join(vae, "config.json"),
        new TextEncoder().encode(JSON.stringify({
          _class_name: "AutoencoderKL",
          latent_channels: cfg.latentChannels,
          out_channels: cfg.outChannels,
          block_out_channels: cfg.blockOutChannels,
          layers_per_block: cfg.layersPerBlock,
          norm_num_groups: cfg.normNumGroups,
        })),
      );
      await writeSafetensors(join(vae, "diffusion_pytorch_model.safetensors"), await v.stateDict());
    } finally {
      v.dispose();
    }
  }
  if (!await exists(files.data)) {
    // Per item the VAE posterior mean (around the SD latents' raw statistics) and std.
    const rnd = seededRandom(seed + 1);
    const per = 2 * ch * r * r;
    const noise = rnd.uniform(count * per);
    const data = new Float32Array(count * per);
    for (let i = 0; i < count; i++) {
      for (let k = 0; k < per; k++) {
        const channel = Math.floor(k / (r * r)) % ch;
        const u = 2 * noise[i * per + k] - 1;
        data[i * per + k] = k < ch * r * r
          ? LATENT_RAW_MEAN[channel] + LATENT_RAW_STD[channel] * u
          : 0.05 + 0.05 * Math.abs(u);
      }
    }
    const labels = Int32Array.from(
      { length: count },
      (_, i) => Math.round((i * (labelDim - 1)) / Math.max(count - 1, 1)),
    );
    await writeLatentZip(
      files.data,
      new LatentDataset("smoke-imagenet512", r, ch, data, labels, labelDim),
    );
  }
  const ref = join(dir, "ref-images.zip");
  const res = r * 2 ** (SMOKE_VAE.blockOutChannels.length - 1);
  if (!await exists(ref)) {
    const { pixels } = syntheticImages(count, res, labelDim, seed + 3);
    await writeImageZip(
      ref,
      createImageDataset({ name: "smoke-imagenet512-ref", resolution: res, channels: 3, pixels }),
    );
  }
  return {
    ...files,
    vae,
    ref,
    description: `random-weight EDM2 teacher (${c.unet!.modelChannels} channels, ` +
      `${r}x${r}x${ch} latents, ${labelDim} classes), ${count} synthetic latents, a random VAE ` +
      `decoder (${r}x${r} → ${res}x${res} RGB) with ${count} synthetic reference images, random ` +
      "Inception-v3 at 1/16 width",
  };
}
