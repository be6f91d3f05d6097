/**
 * Network configurations: the EDM constructor keyword arguments, in TypeScript form.
 *
 * A {@linkcode NetworkConfig} describes an `EDMPrecond` wrapper around a `SongUNet` (DDPM++ /
 * NCSN++) or `DhariwalUNet` (ADM) backbone, knob for knob as in NVlabs/edm
 * `training/networks.py`. {@linkcode fromEdmKwargs} and {@linkcode toEdmKwargs} convert to and from
 * the Python `_init_kwargs` dictionary stored in EDM pickles (snake_case), which is also the form
 * kept in the `__metadata__` of our safetensors files.
 *
 * @module
 */
import { printable } from "../io/host_tensor.ts";

/** Options of the SongUNet backbone (DDPM++ and NCSN++), `edm:training/networks.py:228-263`. */
export interface SongUNetConfig {
  arch: "SongUNet";
  /** Base channel count. EDM default 128. */
  modelChannels: number;
  /** Per-resolution channel multipliers. EDM class default [1,2,2,2]; CIFAR-10 uses [2,2,2]. */
  channelMult: number[];
  /** Embedding width multiplier (emb = modelChannels * channelMultEmb). Default 4. */
  channelMultEmb: number;
  /** Residual blocks per resolution. Default 4. */
  numBlocks: number;
  /** Resolutions with self-attention. Default [16]. */
  attnResolutions: number[];
  /** Dropout probability inside the residual blocks (training mode only). Default 0.10. */
  dropout: number;
  /** Probability of dropping the class label in training mode. Default 0. */
  labelDropout: number;
  /** `positional` (DDPM++) or `fourier` (NCSN++). */
  embeddingType: "positional" | "fourier";
  /** Noise embedding width multiplier. DDPM++ 1, NCSN++ 2. */
  channelMultNoise: number;
  /** `standard` (DDPM++), `skip`, or `residual` (NCSN++). */
  encoderType: "standard" | "skip" | "residual";
  /** `standard` (DDPM++ and NCSN++) or `skip`. */
  decoderType: "standard" | "skip";
  /** FIR resampling filter: [1,1] (DDPM++) or [1,3,3,1] (NCSN++). */
  resampleFilter: number[];
}

/** Options of the DhariwalUNet (ADM) backbone, `edm:training/networks.py:371-402`. */
export interface DhariwalUNetConfig {
  arch: "DhariwalUNet";
  /** Base channel count. Default 192. */
  modelChannels: number;
  /** Per-resolution channel multipliers. Default [1,2,3,4]. */
  channelMult: number[];
  /** Embedding width multiplier. Default 4. */
  channelMultEmb: number;
  /** Residual blocks per resolution. Default 3. */
  numBlocks: number;
  /** Resolutions with self-attention. Default [32,16,8]. */
  attnResolutions: number[];
  /** Dropout probability (training mode only). Default 0.10. */
  dropout: number;
  /** Probability of dropping the class label in training mode. Default 0. */
  labelDropout: number;
}

/** A backbone configuration. */
export type UNetConfig = SongUNetConfig | DhariwalUNetConfig;

/** An EDM-preconditioned network (`EDMPrecond`, `edm:training/networks.py:631-671`). */
export interface NetworkConfig {
  precond: "EDMPrecond";
  /** Image height and width. */
  imgResolution: number;
  /** Image channels (3 for RGB, 1 for MNIST). */
  imgChannels: number;
  /** Number of classes; 0 for unconditional. */
  labelDim: number;
  /** Dimension of the augmentation labels (9 with EDM's augment pipe), 0 for none. */
  augmentDim: number;
  /** Whether the original ran in float16 on CUDA (kept for round trips; we compute in float32). */
  useFp16: boolean;
  /** Lowest supported noise level. Default 0. */
  sigmaMin: number;
  /** Highest supported noise level. Default Infinity. */
  sigmaMax: number;
  /** Expected standard deviation of the training data. Default 0.5. */
  sigmaData: number;
  /** The backbone. */
  unet: UNetConfig;
}

/** Partial configuration accepted by {@linkcode resolveConfig}: everything but `unet.arch` is optional. */
export type NetworkConfigInput =
  & Partial<Omit<NetworkConfig, "unet">>
  & {
    unet:
      | Partial<SongUNetConfig> & { arch: "SongUNet" }
      | Partial<DhariwalUNetConfig> & { arch: "DhariwalUNet" };
  };

/** Error for an invalid network configuration. */
export class ConfigError extends Error {
  override name = "ConfigError";
  /** @param message the problem; control characters (from a file's values) are escaped. */
  constructor(message: string) {
    super(printable(message));
  }
}

/** SongUNet class defaults (`edm:training/networks.py:230-250`). */
export const SONG_UNET_DEFAULTS: SongUNetConfig = {
  arch: "SongUNet",
  modelChannels: 128,
  channelMult: [1, 2, 2, 2],
  channelMultEmb: 4,
  numBlocks: 4,
  attnResolutions: [16],
  dropout: 0.10,
  labelDropout: 0,
  embeddingType: "positional",
  channelMultNoise: 1,
  encoderType: "standard",
  decoderType: "standard",
  resampleFilter: [1, 1],
};

/** DhariwalUNet class defaults (`edm:training/networks.py:373-387`). */
export const DHARIWAL_UNET_DEFAULTS: DhariwalUNetConfig = {
  arch: "DhariwalUNet",
  modelChannels: 192,
  channelMult: [1, 2, 3, 4],
  channelMultEmb: 4,
  numBlocks: 3,
  attnResolutions: [32, 16, 8],
  dropout: 0.10,
  labelDropout: 0,
};

/** Fills defaults and checks a configuration; throws {@linkcode ConfigError} on a bad value. */
export function resolveConfig(input: NetworkConfigInput): NetworkConfig {
  const u = input.unet;
  if (!u || (u.arch !== "SongUNet" && u.arch !== "DhariwalUNet")) {
    throw new ConfigError(
      `unknown architecture '${
        (u as { arch?: string })?.arch
      }' (expected SongUNet or DhariwalUNet)`,
    );
  }
  const unet: UNetConfig = u.arch === "SongUNet"
    ? { ...SONG_UNET_DEFAULTS, ...stripUndefined(u) } as SongUNetConfig
    : { ...DHARIWAL_UNET_DEFAULTS, ...stripUndefined(u) } as DhariwalUNetConfig;
  const cfg: NetworkConfig = {
    precond: "EDMPrecond",
    imgResolution: input.imgResolution ?? 32,
    imgChannels: input.imgChannels ?? 3,
    labelDim: input.labelDim ?? 0,
    augmentDim: input.augmentDim ?? 0,
    useFp16: input.useFp16 ?? false,
    sigmaMin: input.sigmaMin ?? 0,
    sigmaMax: input.sigmaMax ?? Infinity,
    sigmaData: input.sigmaData ?? 0.5,
    unet,
  };
  validateConfig(cfg);
  return cfg;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function isPosInt(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v > 0;
}

/**
 * Sane limits of a configuration, far above every published EDM/ADM network (the largest, ADM on
 * ImageNet 64, has 192 channels, multipliers [1,2,3,4], 3 blocks, 296M parameters): a file that
 * asks for more is refused before anything is allocated.
 */
export const CONFIG_LIMITS = {
  imgResolution: 4096,
  imgChannels: 64,
  labelDim: 100_000,
  augmentDim: 64,
  modelChannels: 4096,
  channelMultLength: 8,
  channelMult: 64,
  channelMultEmb: 64,
  channelMultNoise: 64,
  numBlocks: 64,
  attnResolutions: 16,
  resampleFilter: 16,
  /** Parameters (float32 elements), estimated from above by {@linkcode estimateParameters}. */
  parameters: 2 ** 31,
} as const;

/**
 * An upper bound on the number of parameters of a configuration, computed without building it:
 * per level, the encoder's and decoder's blocks with at most three times the level's channels
 * in, a 3×3 convolution pair, the embedding projection, a 1×1 skip and attention; plus the
 * noise, label and augmentation embeddings.
 */
export function estimateParameters(c: NetworkConfig): number {
  const u = c.unet;
  const emb = u.modelChannels * u.channelMultEmb;
  const noise = u.arch === "SongUNet" ? u.modelChannels * u.channelMultNoise : u.modelChannels;
  let total = noise * emb + emb * emb + (c.labelDim + c.augmentDim) * Math.max(noise, emb);
  const maxC = u.modelChannels * Math.max(...u.channelMult);
  total += 2 * 9 * (c.imgChannels + 4) * maxC;
  for (const m of u.channelMult) {
    const ch = u.modelChannels * m;
    const perBlock = 3 * ch * ch * 9 + ch * ch * 9 + 2 * emb * ch + 3 * ch * ch + 4 * ch * ch +
      10 * ch;
    total += (2 * u.numBlocks + 3) * perBlock;
  }
  return total;
}

function validateConfig(c: NetworkConfig): void {
  const bad = (what: string) => {
    throw new ConfigError(`invalid network config: ${what}`);
  };
  const L = CONFIG_LIMITS;
  const upTo = (v: number, limit: number, what: string) => {
    if (v > limit) bad(`${what} ${v} exceeds the limit of ${limit}`);
  };
  if (!isPosInt(c.imgResolution)) bad(`imgResolution ${c.imgResolution}`);
  if (!isPosInt(c.imgChannels)) bad(`imgChannels ${c.imgChannels}`);
  if (!Number.isInteger(c.labelDim) || c.labelDim < 0) bad(`labelDim ${c.labelDim}`);
  if (!Number.isInteger(c.augmentDim) || c.augmentDim < 0) bad(`augmentDim ${c.augmentDim}`);
  if (!(c.sigmaData > 0) || !Number.isFinite(c.sigmaData)) bad(`sigmaData ${c.sigmaData}`);
  if (!(c.sigmaMin >= 0) || !(c.sigmaMax > c.sigmaMin)) {
    bad(`sigmaMin ${c.sigmaMin} / sigmaMax ${c.sigmaMax}`);
  }
  upTo(c.imgResolution, L.imgResolution, "imgResolution");
  upTo(c.imgChannels, L.imgChannels, "imgChannels");
  upTo(c.labelDim, L.labelDim, "labelDim");
  upTo(c.augmentDim, L.augmentDim, "augmentDim");
  const u = c.unet;
  if (!isPosInt(u.modelChannels)) bad(`modelChannels ${u.modelChannels}`);
  upTo(u.modelChannels, L.modelChannels, "modelChannels");
  if (
    !Array.isArray(u.channelMult) || u.channelMult.length === 0 || !u.channelMult.every(isPosInt)
  ) {
    bad(`channelMult ${JSON.stringify(u.channelMult).slice(0, 80)}`);
  }
  upTo(u.channelMult.length, L.channelMultLength, "number of levels (channelMult length)");
  upTo(Math.max(...u.channelMult), L.channelMult, "channelMult entry");
  if (!isPosInt(u.channelMultEmb)) bad(`channelMultEmb ${u.channelMultEmb}`);
  upTo(u.channelMultEmb, L.channelMultEmb, "channelMultEmb");
  if (!isPosInt(u.numBlocks)) bad(`numBlocks ${u.numBlocks}`);
  upTo(u.numBlocks, L.numBlocks, "numBlocks");
  if (!Array.isArray(u.attnResolutions) || !u.attnResolutions.every(isPosInt)) {
    bad(`attnResolutions ${JSON.stringify(u.attnResolutions).slice(0, 80)}`);
  }
  upTo(u.attnResolutions.length, L.attnResolutions, "number of attnResolutions");
  if (!(u.dropout >= 0 && u.dropout < 1)) bad(`dropout ${u.dropout}`);
  if (!(u.labelDropout >= 0 && u.labelDropout < 1)) bad(`labelDropout ${u.labelDropout}`);
  const levels = u.channelMult.length;
  if (c.imgResolution % (1 << (levels - 1)) !== 0) {
    bad(`imgResolution ${c.imgResolution} is not divisible by 2^${levels - 1} (${levels} levels)`);
  }
  const minCh = Math.min(u.modelChannels, ...u.channelMult.map((m) => m * u.modelChannels));
  if (minCh % 4 !== 0) bad(`channel counts must be multiples of 4 for GroupNorm (got ${minCh})`);
  if (u.arch === "SongUNet") {
    if (!["positional", "fourier"].includes(u.embeddingType)) {
      bad(`embeddingType ${u.embeddingType}`);
    }
    if (!["standard", "skip", "residual"].includes(u.encoderType)) {
      bad(`encoderType ${u.encoderType}`);
    }
    if (!["standard", "skip"].includes(u.decoderType)) bad(`decoderType ${u.decoderType}`);
    if (!isPosInt(u.channelMultNoise)) bad(`channelMultNoise ${u.channelMultNoise}`);
    upTo(u.channelMultNoise, L.channelMultNoise, "channelMultNoise");
    if ((u.modelChannels * u.channelMultNoise) % 2 !== 0) bad("noise channels must be even");
    const f = u.resampleFilter;
    if (
      !Array.isArray(f) || f.length < 1 || f.length > L.resampleFilter ||
      !f.every((v) => typeof v === "number" && Number.isFinite(v))
    ) {
      bad(`resampleFilter ${JSON.stringify(f).slice(0, 80)}`);
    }
  } else {
    for (const m of u.channelMult) {
      if ((u.modelChannels * m) % 64 !== 0 && u.attnResolutions.length > 0) {
        // ADM uses channels_per_head = 64; other widths still work (heads = floor(C / 64) >= 1).
        if (u.modelChannels * m < 64) bad(`ADM attention needs at least 64 channels per level`);
      }
    }
  }
  const params = estimateParameters(c);
  if (params > L.parameters) {
    bad(
      `about ${params.toExponential(2)} parameters, more than the limit of ${L.parameters} (2^31)`,
    );
  }
}

/** `EDMPrecond.__init__`'s own arguments, in positional order (`edm:training/networks.py:633-642`). */
export const EDM_PRECOND_ARGS: readonly string[] = [
  "img_resolution",
  "img_channels",
  "label_dim",
  "use_fp16",
  "sigma_min",
  "sigma_max",
  "sigma_data",
  "model_type",
];

/** Python `_init_kwargs` of an EDMPrecond object (snake_case), as stored in EDM pickles. */
export type EdmKwargs = Record<string, unknown>;

/**
 * Converts EDM `_init_kwargs` (of `EDMPrecond`, with `model_type` and the backbone kwargs) to a
 * {@linkcode NetworkConfig}. Unknown keys are rejected so that a checkpoint is never silently
 * mis-built.
 */
export function fromEdmKwargs(kw: EdmKwargs): NetworkConfig {
  const known = new Set([
    ...EDM_PRECOND_ARGS,
    "augment_dim",
    "model_channels",
    "channel_mult",
    "channel_mult_emb",
    "num_blocks",
    "attn_resolutions",
    "dropout",
    "label_dropout",
    "embedding_type",
    "channel_mult_noise",
    "encoder_type",
    "decoder_type",
    "resample_filter",
  ]);
  for (const k of Object.keys(kw)) {
    if (!known.has(k)) throw new ConfigError(`unsupported network option '${k}'`);
  }
  const num = (k: string) => kw[k] === undefined || kw[k] === null ? undefined : Number(kw[k]);
  const arr = (k: string) => kw[k] === undefined ? undefined : (kw[k] as unknown[]).map(Number);
  const str = <T extends string>(k: string) => kw[k] === undefined ? undefined : String(kw[k]) as T;
  const arch = str<string>("model_type") ?? "DhariwalUNet";
  if (arch !== "SongUNet" && arch !== "DhariwalUNet") {
    throw new ConfigError(`unknown model_type '${arch}' (expected SongUNet or DhariwalUNet)`);
  }
  const common = {
    modelChannels: num("model_channels"),
    channelMult: arr("channel_mult"),
    channelMultEmb: num("channel_mult_emb"),
    numBlocks: num("num_blocks"),
    attnResolutions: arr("attn_resolutions"),
    dropout: num("dropout"),
    labelDropout: num("label_dropout"),
  };
  const unet = arch === "SongUNet"
    ? {
      arch,
      ...common,
      embeddingType: str<"positional" | "fourier">("embedding_type"),
      channelMultNoise: num("channel_mult_noise"),
      encoderType: str<"standard" | "skip" | "residual">("encoder_type"),
      decoderType: str<"standard" | "skip">("decoder_type"),
      resampleFilter: arr("resample_filter"),
    } as const
    : { arch, ...common } as const;
  for (
    const k of [
      "embedding_type",
      "channel_mult_noise",
      "encoder_type",
      "decoder_type",
      "resample_filter",
    ]
  ) {
    if (arch === "DhariwalUNet" && kw[k] !== undefined) {
      throw new ConfigError(`option '${k}' does not apply to DhariwalUNet`);
    }
  }
  const sigmaMax = kw.sigma_max;
  return resolveConfig({
    imgResolution: num("img_resolution"),
    imgChannels: num("img_channels"),
    labelDim: num("label_dim"),
    augmentDim: num("augment_dim"),
    useFp16: kw.use_fp16 === undefined ? undefined : Boolean(kw.use_fp16),
    sigmaMin: num("sigma_min"),
    sigmaMax: sigmaMax === undefined || sigmaMax === null || sigmaMax === "inf"
      ? undefined
      : Number(sigmaMax),
    sigmaData: num("sigma_data"),
    unet,
  });
}

/** Converts a {@linkcode NetworkConfig} to EDM `_init_kwargs` (snake_case, complete). */
export function toEdmKwargs(c: NetworkConfig): EdmKwargs {
  const u = c.unet;
  const kw: EdmKwargs = {
    img_resolution: c.imgResolution,
    img_channels: c.imgChannels,
    label_dim: c.labelDim,
    use_fp16: c.useFp16,
    sigma_min: c.sigmaMin,
    sigma_max: Number.isFinite(c.sigmaMax) ? c.sigmaMax : "inf",
    sigma_data: c.sigmaData,
    model_type: u.arch,
    augment_dim: c.augmentDim,
    model_channels: u.modelChannels,
    channel_mult: [...u.channelMult],
    channel_mult_emb: u.channelMultEmb,
    num_blocks: u.numBlocks,
    attn_resolutions: [...u.attnResolutions],
    dropout: u.dropout,
    label_dropout: u.labelDropout,
  };
  if (u.arch === "SongUNet") {
    kw.embedding_type = u.embeddingType;
    kw.channel_mult_noise = u.channelMultNoise;
    kw.encoder_type = u.encoderType;
    kw.decoder_type = u.decoderType;
    kw.resample_filter = [...u.resampleFilter];
  }
  return kw;
}

/** Names of the official presets accepted by {@linkcode preset}. */
export const PRESET_NAMES = [
  "cifar10-ddpmpp-cond",
  "cifar10-ddpmpp-uncond",
  "cifar10-ncsnpp-cond",
  "cifar10-ncsnpp-uncond",
  "ffhq64-ddpmpp",
  "afhq64-ddpmpp",
  "imagenet64-adm",
  "mnist",
] as const;

/** A preset name. */
export type PresetName = typeof PRESET_NAMES[number];

/**
 * The configurations of the official EDM checkpoints (`edm:train.py:116-147`, README table), plus
 * `mnist`, the small class-conditional SongUNet of our embedded default (1x32x32, 32 channels,
 * multipliers [1,2,2], 2 blocks).
 */
export function preset(name: PresetName | string): NetworkConfig {
  const ddpmpp = {
    arch: "SongUNet" as const,
    modelChannels: 128,
    embeddingType: "positional" as const,
    channelMultNoise: 1,
    encoderType: "standard" as const,
    decoderType: "standard" as const,
    resampleFilter: [1, 1],
  } satisfies Partial<SongUNetConfig>;
  const ncsnpp = {
    ...ddpmpp,
    embeddingType: "fourier" as const,
    channelMultNoise: 2,
    encoderType: "residual" as const,
    resampleFilter: [1, 3, 3, 1],
  } satisfies Partial<SongUNetConfig>;
  switch (name) {
    case "cifar10-ddpmpp-cond":
    case "cifar10-ddpmpp-uncond":
      return resolveConfig({
        imgResolution: 32,
        imgChannels: 3,
        labelDim: name.endsWith("-cond") ? 10 : 0,
        augmentDim: 9,
        unet: { ...ddpmpp, channelMult: [2, 2, 2], dropout: 0.13 },
      });
    case "cifar10-ncsnpp-cond":
    case "cifar10-ncsnpp-uncond":
      return resolveConfig({
        imgResolution: 32,
        imgChannels: 3,
        labelDim: name.endsWith("-cond") ? 10 : 0,
        augmentDim: 9,
        unet: { ...ncsnpp, channelMult: [2, 2, 2], dropout: 0.13 },
      });
    case "ffhq64-ddpmpp":
    case "afhq64-ddpmpp":
      return resolveConfig({
        imgResolution: 64,
        imgChannels: 3,
        labelDim: 0,
        augmentDim: 9,
        unet: {
          ...ddpmpp,
          channelMult: [1, 2, 2, 2],
          dropout: name.startsWith("ffhq") ? 0.05 : 0.25,
        },
      });
    case "imagenet64-adm":
      return resolveConfig({
        imgResolution: 64,
        imgChannels: 3,
        labelDim: 1000,
        augmentDim: 0,
        useFp16: true,
        unet: { arch: "DhariwalUNet", dropout: 0.10 },
      });
    case "mnist":
      return resolveConfig({
        imgResolution: 32,
        imgChannels: 1,
        labelDim: 10,
        augmentDim: 0,
        unet: {
          ...ddpmpp,
          modelChannels: 32,
          channelMult: [1, 2, 2],
          numBlocks: 2,
          attnResolutions: [16],
          dropout: 0.10,
        },
      });
    default:
      throw new ConfigError(
        `unknown preset '${name}' (expected one of: ${PRESET_NAMES.join(", ")})`,
      );
  }
}
