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
import { createImageDataset, writeImageZip } from "../data/dataset.ts";
import { mkdirNamed } from "../io/atomic.ts";
import { type NetworkConfig, preset } from "../nets/config.ts";
import { createNetwork, saveNetwork } from "../nets/network.ts";
import { InceptionV3 } from "../metrics/inception.ts";
import { seededRandom } from "../runtime/random.ts";

/** The smoke configurations: which real setting each stands in for. */
export const SMOKE_FAMILIES = ["cifar10", "imagenet64"] as const;

/** A smoke configuration name. */
export type SmokeFamily = typeof SMOKE_FAMILIES[number];

/** The small teacher of a family: the real preset's architecture, fewer channels and blocks. */
export function smokeTeacherConfig(family: SmokeFamily): NetworkConfig {
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
  if (!await exists(files.detector)) {
    const det = new InceptionV3({ widthDivisor: 16, seed });
    try {
      await det.save(files.detector);
    } finally {
      det.dispose();
    }
  }
  const arch = config.unet.arch;
  return {
    ...files,
    description: `random-weight ${arch} teacher (${config.unet.modelChannels} channels, ` +
      `${config.imgResolution}x${config.imgResolution}x3, ${config.labelDim} classes), ` +
      `${count} synthetic images, random Inception-v3 at 1/16 width`,
  };
}
