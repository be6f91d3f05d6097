/**
 * Distillation presets: the per-script hyper-parameters of docs/distillation.md §6 for `sid` (plain
 * SiD,
 * `run_sid.sh` / `run_sid_v1.sh`, §6.1), `sida` (`run_sida.sh`, §6.2) and SiD²A
 * (`run_sid_sida.sh`, §6.2: `sida` with `--init`), plus a small `mnist` configuration of our own.
 *
 * Units differ from the reference CLI on purpose: every duration, cadence and half-life here is in
 * **kimg** (thousands of images). The reference's `--duration` and `--ema` are in Mimg, and its
 * `--snap`/`--dump` count ticks; the presets convert (e.g. CIFAR `--tick 10 --snap 50 --dump 200`
 * → snap every 500 kimg, dump every 2000 kimg).
 *
 * Precision: the reference runs ImageNet/FFHQ/AFHQ in fp16 with Adam eps 1e-6 (docs/distillation.md
 * §4.2,
 * §4.3); we always compute in fp32 and keep eps 1e-8.
 *
 * Micro-batch: the reference's per-GPU `--batch-gpu` b; on one device R = batch / b rounds.
 *
 * Section numbers (§) are those of `docs/distillation.md`; `file:line` citations are of
 * mingyuanzhou/SiD, branch `sida`.
 *
 * @module
 */
import type { DistillConfig, DistillMethod } from "./distiller.ts";
import { EDM2_P_MEAN, EDM2_P_STD } from "./sigma.ts";
import { EMA_RAMPUP_RATIO } from "../train/ema.ts";

/**
 * G_ema's ramp-up ratio in the `mnist` preset's SiD stage: the half-life is at most half the images
 * seen (the reference's ratio is 0.05, {@linkcode EMA_RAMPUP_RATIO}).
 */
export const MNIST_SID_EMA_RAMPUP = 0.5;

/**
 * G_ema's half-life (kimg, no ramp-up) in the `mnist` preset's SiD²A stage: longer than the
 * default budget's 2.304-kimg stage.
 */
export const MNIST_SID2A_EMA_KIMG = 3;

/** Names accepted by {@linkcode distillPreset}. */
export const DISTILL_PRESET_NAMES = [
  "cifar10-uncond",
  "cifar10-cond",
  "imagenet64",
  "ffhq64",
  "afhq64",
  "imagenet512-xs",
  "imagenet512-s",
  "imagenet512-m",
  "imagenet512-l",
  "imagenet512-xl",
  "imagenet512-xxl",
  "mnist",
] as const;

/** A preset name. */
export type DistillPresetName = typeof DISTILL_PRESET_NAMES[number];

/** A preset: algorithm hyper-parameters plus the run cadence (all in kimg). */
export interface DistillPreset {
  /** Hyper-parameters of {@linkcode DistillConfig} set by the preset. */
  config: Partial<DistillConfig>;
  /** Training length in kimg. */
  durationKimg: number;
  /** kimg per tick (log line, progress). */
  tickKimg: number;
  /** kimg between EMA-generator snapshots. */
  snapKimg: number;
  /** kimg between training-state dumps. */
  dumpKimg: number;
  /** The EDM network preset the teacher usually has (for messages and the bench). */
  network: string;
  /** Free-text notes on choices not taken from the reference. */
  notes?: string;
  /**
   * The warm-ups are image counts for a stage of any length: `deno task distill` does not scale
   * them down to a shorter stage (it scales the reference presets' 100/200-kimg warm-ups).
   */
  fixedWarmups?: boolean;
}

/** Error for an unknown preset name. */
export class PresetError extends Error {
  override name = "PresetError";
}

interface Row {
  network: string;
  batch: number;
  microBatch: number;
  lr: number;
  /** SiD α (main:run_sid.sh; docs/distillation.md §6.1). */
  sidAlpha: number;
  gBeta1Sid: number;
  dropout: number;
  /** `--augment`: EDM's augmentation pipe probability p, 0 for none. */
  augment: number;
  emaKimg: number;
  tickKimg: number;
  /** Durations in Mimg: SiD (main:run_sid.sh), SiDA, SiD²A (docs/distillation.md §6.1, §6.2). */
  mimg: { sid: number; sida: number; sid2a: number };
}

/**
 * docs/distillation.md §6.1 (SiD: `run_sid_v1.sh` batch/b/lr, `main:run_sid.sh` α, g_beta1 and
 * durations)
 * and §6.2 (SiDA / SiD²A: α = 1, lsd = 1, lsg_gan = 0.01). b is `run_sid_v1.sh`/`run_sida.sh`'s
 * `--batch-gpu`. AFHQ uses its own data in our runs (the scripts' FFHQ zip is a defect, §9 pitfall
 * 21).
 */
/**
 * EDM2 ImageNet 512 (latent 4×64×64; `run_sid_edm2.sh`, `run_sida_edm2.sh`, `run_sid_sida_edm2.sh`
 * through `sida_edm2_train.py`): per size the per-GPU micro-batch b, the SiD²A duration, the
 * SiD²A `--lsg`, and `--force_normalization` / `--return_logvar` of SiDA and SiD²A (SiD: 1/1 for
 * every size). Common: batch 2048, lr = glr = 5e-5, α 1, tmax 800, σ_init 2.5, `--ema 2`, no
 * augmentation, P_mean −0.4, P_std 1.0, lsd 100 and lsg_gan 0.01 with the GAN, tick 10 kimg,
 * `--snap 50 --dump 200`.
 */
const EDM2_TABLE: Record<string, {
  network: string;
  microBatch: number;
  mimg: { sid: number; sida: number; sid2a: number };
  sid2aLsg: number;
  ganFnRl: boolean;
}> = {
  "imagenet512-xs": {
    network: "edm2-img512-xs",
    microBatch: 64,
    mimg: { sid: 200, sida: 200, sid2a: 30 },
    sid2aLsg: 100,
    ganFnRl: true,
  },
  "imagenet512-s": {
    network: "edm2-img512-s",
    microBatch: 64,
    mimg: { sid: 200, sida: 200, sid2a: 80 },
    sid2aLsg: 100,
    ganFnRl: false, // the S SiDA/SiD²A scripts: --force_normalization 0 --return_logvar 0
  },
  "imagenet512-m": {
    network: "edm2-img512-m",
    microBatch: 32,
    mimg: { sid: 200, sida: 200, sid2a: 200 },
    sid2aLsg: 50,
    ganFnRl: true,
  },
  "imagenet512-l": {
    network: "edm2-img512-l",
    microBatch: 32,
    mimg: { sid: 200, sida: 200, sid2a: 55 },
    sid2aLsg: 100,
    ganFnRl: true,
  },
  "imagenet512-xl": {
    network: "edm2-img512-xl",
    microBatch: 16,
    mimg: { sid: 200, sida: 200, sid2a: 50 },
    sid2aLsg: 100,
    ganFnRl: true,
  },
  "imagenet512-xxl": {
    network: "edm2-img512-xxl",
    microBatch: 2,
    mimg: { sid: 100, sida: 100, sid2a: 30 },
    sid2aLsg: 100,
    ganFnRl: true,
  },
};

/** An `imagenet512-*` preset (see {@linkcode EDM2_TABLE}). */
function edm2Preset(name: string, method: DistillMethod, sid2a: boolean): DistillPreset {
  const row = EDM2_TABLE[name];
  const sida = method === "sida";
  const flags = !sida || row.ganFnRl;
  const mimg = !sida ? row.mimg.sid : sid2a ? row.mimg.sid2a : row.mimg.sida;
  return {
    config: {
      method,
      alpha: 1, // --alpha 1 in every EDM2 script, SiD included
      tmax: 800,
      initSigma: 2.5,
      batch: 2048,
      microBatch: row.microBatch,
      lr: 5e-5,
      glr: 5e-5,
      gBeta1: 0,
      ls: 1,
      lsg: sida && sid2a ? row.sid2aLsg : 100,
      lsd: 100,
      lsgGan: 0.01,
      emaKimg: 2000, // --ema 2 (Mimg)
      augment: 0,
      fakeGradClip: null, // no gradient clipping on the EDM2 path
      pMean: EDM2_P_MEAN,
      pStd: EDM2_P_STD,
      dropout: null,
      returnLogvar: flags,
      forceNormalization: flags,
      gWarmupNimg: sida ? 100_000 : 0,
      ganWarmupNimg: sida ? 200_000 : 0,
    },
    durationKimg: mimg * 1000,
    tickKimg: 10,
    snapKimg: 500,
    dumpKimg: 2000,
    network: row.network,
  };
}

const TABLE: Record<string, Row> = {
  "cifar10-uncond": {
    network: "cifar10-ddpmpp-uncond",
    batch: 256,
    microBatch: 32,
    lr: 1e-5,
    sidAlpha: 1.2,
    gBeta1Sid: 0,
    dropout: 0.13,
    augment: 0.12, // --augment 0.12
    emaKimg: 500,
    tickKimg: 10,
    mimg: { sid: 500, sida: 300, sid2a: 100 },
  },
  "cifar10-cond": {
    network: "cifar10-ddpmpp-cond",
    batch: 256,
    microBatch: 32,
    lr: 1e-5,
    sidAlpha: 1.2,
    gBeta1Sid: 0,
    dropout: 0.13,
    augment: 0.12, // --augment 0.12
    emaKimg: 500,
    tickKimg: 10,
    mimg: { sid: 800, sida: 300, sid2a: 100 },
  },
  imagenet64: {
    network: "imagenet64-adm",
    batch: 8192,
    microBatch: 32,
    lr: 4e-6,
    sidAlpha: 1.2,
    gBeta1Sid: 0,
    dropout: 0.1,
    augment: 0, // --augment 0
    emaKimg: 2000, // --ema 2
    tickKimg: 20,
    mimg: { sid: 1000, sida: 300, sid2a: 100 },
  },
  ffhq64: {
    network: "ffhq64-ddpmpp",
    batch: 512,
    microBatch: 64,
    lr: 1e-5,
    sidAlpha: 1.2,
    gBeta1Sid: 0.9, // --g_beta1 0.9 (SiD only)
    dropout: 0.05,
    augment: 0.15, // --augment 0.15
    emaKimg: 500,
    tickKimg: 10,
    mimg: { sid: 500, sida: 200, sid2a: 100 },
  },
  afhq64: {
    network: "afhq64-ddpmpp",
    batch: 512,
    microBatch: 64,
    lr: 5e-6,
    sidAlpha: 1.0,
    gBeta1Sid: 0,
    dropout: 0.05, // --dropout .05 overrides the teacher's 0.25
    augment: 0.15, // --augment 0.15
    emaKimg: 500,
    tickKimg: 10,
    mimg: { sid: 500, sida: 200, sid2a: 100 },
  },
};

/**
 * The preset `name` for a method. `sid2a` selects SiD²A's duration (SiDA with `--init`).
 *
 * `mnist` (ours, not from the reference): batch 64, micro-batch 32 (R = 2, as the CIFAR scripts'
 * per-GPU rounds); lr = glr = 1e-4 — the CIFAR 1e-5 barely moves a 2M-parameter network in a
 * 200-kimg run (≈3 k Adam steps of at most lr each); duration 200 kimg; warm-ups scaled from the
 * reference's 100/200 kimg at 300 Mimg to 5/10 kimg (~80/160 iterations, about what CIFAR's 391/782
 * iterations give the fake net to catch up); G_ema's half-life: for SiD 5 kimg ramped up over half
 * the images seen (h = min(5 kimg, 0.5 · cur_nimg); at lr 1e-4 G swings from snapshot to snapshot,
 * and the reference's 5 % ramp-up, a half-life of 0.26 kimg at 5.12 kimg, passes the swings on to
 * G_ema: docs/sweeps.md "A longer G_ema half-life for the SiD stage"), for SiDA 10 kimg with the
 * 5 % ramp-up; teacher dropout (0.10), no augmentation (the mnist network has no
 * augmentation embedding, and flipped digits are not digits); tick 1, snap 50, dump 20 kimg.
 *
 * SiD²A (`sid2a`, SiDA from a SiD generator: the chain's second stage) differs: batch 128
 * (micro-batch 32), warm-ups of 512 and 1024 images whatever the stage's length
 * (`fixedWarmups`), and G_ema's half-life fixed at {@linkcode MNIST_SID2A_EMA_KIMG} kimg without
 * ramp-up. From a good SiD generator the stage at batch 64 swings by a factor of two to three in
 * FID from snapshot to snapshot, and a G_ema that follows G (the 5 % ramp-up) passes the swings on;
 * a half-life longer than the default stage keeps the generator level there and lets it gain at
 * the 2-hour budget (docs/sweeps.md "The whole chain over three seeds").
 */
export function distillPreset(
  name: string,
  method: DistillMethod,
  options: { sid2a?: boolean } = {},
): DistillPreset {
  const sida = method === "sida";
  const common = {
    method,
    tmax: 800, // §6: every script
    initSigma: 2.5,
    ls: 1,
    lsg: 100,
    lsd: 1, // §6.2
    lsgGan: 0.01,
  } satisfies Partial<DistillConfig>;
  if (name === "mnist") {
    const sid2a = sida && (options.sid2a ?? false);
    return {
      config: {
        ...common,
        alpha: sida ? 1.0 : 1.2,
        batch: sid2a ? 128 : 64,
        microBatch: 32,
        lr: 1e-4,
        glr: 1e-4,
        gBeta1: 0,
        emaKimg: sid2a ? MNIST_SID2A_EMA_KIMG : sida ? 10 : 5,
        emaRampup: sid2a ? null : sida ? EMA_RAMPUP_RATIO : MNIST_SID_EMA_RAMPUP,
        augment: 0,
        dropout: null,
        gWarmupNimg: sid2a ? 512 : sida ? 5_000 : 0,
        ganWarmupNimg: sid2a ? 1024 : sida ? 10_000 : 0,
      },
      durationKimg: 200,
      tickKimg: 1,
      snapKimg: 50,
      dumpKimg: 20,
      network: "mnist",
      notes: sid2a
        ? "ours: lr 1e-4, batch 128, warm-ups 512/1024 images, G_ema 3 kimg fixed, 200 kimg"
        : "ours: lr 1e-4, warm-ups 5/10 kimg, SiD G_ema 5 kimg / ramp-up 0.5, 200 kimg",
      ...(sid2a ? { fixedWarmups: true } : {}),
    };
  }
  if (name in EDM2_TABLE) return edm2Preset(name, method, options.sid2a ?? false);
  const row = TABLE[name as keyof typeof TABLE];
  if (!row) {
    throw new PresetError(
      `unknown preset '${name}' (expected one of: ${DISTILL_PRESET_NAMES.join(", ")})`,
    );
  }
  const mimg = !sida ? row.mimg.sid : options.sid2a ? row.mimg.sid2a : row.mimg.sida;
  return {
    config: {
      ...common,
      alpha: sida ? 1.0 : row.sidAlpha, // §6.2: α = 1 in every SiDA/SiD²A script
      batch: row.batch,
      microBatch: row.microBatch,
      lr: row.lr,
      glr: row.lr, // lr = glr in every script
      gBeta1: sida ? 0 : row.gBeta1Sid,
      emaKimg: row.emaKimg,
      augment: row.augment,
      dropout: row.dropout,
      gWarmupNimg: sida ? 100_000 : 0, // §3.6
      ganWarmupNimg: sida ? 200_000 : 0,
    },
    durationKimg: mimg * 1000,
    tickKimg: row.tickKimg,
    snapKimg: row.tickKimg * 50, // --snap 50 ticks
    dumpKimg: row.tickKimg * 200, // --dump 200 ticks
    network: row.network,
  };
}

/**
 * Guesses the preset of a teacher from its image shape and classes: 1-channel → `mnist`;
 * 32×32×3 → `cifar10-cond` / `cifar10-uncond`; 64×64×3 with 1000 classes → `imagenet64`;
 * other 64×64×3 → `ffhq64`; an EDM2 network on 4×64×64 latents with 1000 classes → the
 * `imagenet512-*` size of its width. Returns undefined when nothing fits.
 */
export function guessPreset(
  net: {
    imgResolution: number;
    imgChannels: number;
    labelDim: number;
    config?: { precond?: string; unet?: { modelChannels?: number } };
  },
): DistillPresetName | undefined {
  const { imgResolution: r, imgChannels: c, labelDim: l } = net;
  if (net.config?.precond === "EDM2Precond") {
    // EDM2 512 latents (4×64×64, 1000 classes): the size from the width (sida_edm2_train.py).
    const sizes: Record<number, DistillPresetName> = {
      128: "imagenet512-xs",
      192: "imagenet512-s",
      256: "imagenet512-m",
      320: "imagenet512-l",
      384: "imagenet512-xl",
      448: "imagenet512-xxl",
    };
    const width = net.config.unet?.modelChannels ?? 0;
    return r === 64 && c === 4 && l === 1000 ? sizes[width] : undefined;
  }
  if (c === 1) return "mnist";
  if (r === 32 && c === 3) return l > 0 ? "cifar10-cond" : "cifar10-uncond";
  if (r === 64 && c === 3) return l === 1000 ? "imagenet64" : "ffhq64";
  return undefined;
}
