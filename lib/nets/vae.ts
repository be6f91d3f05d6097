/**
 * The decoder half of Stable Diffusion's VAE (diffusers `AutoencoderKL`, as EDM2's latent
 * models use it through `stabilityai/sd-vae-ft-mse`): latents `[N, h, w, 4]` to images
 * `[N, 8h, 8w, 3]`. Only the decoder is built; it turns generated latents into pictures for sample
 * grids and for FID (NVlabs/edm2 `training/encoders.py:125-132`, `StabilityVAEEncoder.decode`).
 *
 * Structure, after diffusers `models/autoencoders/autoencoder_kl.py` (`decode`: `post_quant_conv`
 * then `decoder`) and `models/autoencoders/vae.py` (`Decoder`): `conv_in` 3×3 to the widest
 * channel count; a mid block of ResNet block, single-head self-attention, ResNet block; one up
 * block per level (widest first), each `layersPerBlock + 1` ResNet blocks and, except the last,
 * a nearest-neighbour 2× upsampling followed by a 3×3 convolution; then group norm, SiLU and
 * `conv_out` 3×3. Every group norm has 32 groups and ε 1e-6. A ResNet block is
 * GN → SiLU → conv 3×3 → GN → SiLU → conv 3×3 plus the input (through a 1×1 `conv_shortcut`
 * when the channel count changes).
 *
 * State-dict names are diffusers' (`decoder.up_blocks.0.resnets.1.conv2.weight`,
 * `decoder.mid_block.attentions.0.to_q.weight`, `post_quant_conv.weight`). Files written before
 * diffusers renamed the attention tensors use `query`, `key`, `value`, `proj_attn`; both are
 * accepted ({@linkcode canonicalVaeName}), as diffusers itself does when it loads them.
 *
 * @example
 * ```ts
 * import { decodeLatentsToUint8, loadVaeDecoder } from "./vae.ts";
 * const vae = await loadVaeDecoder("sd-vae-ft-mse"); // a folder with config.json + safetensors
 * const images = decodeLatentsToUint8(vae, latents); // [N, 512, 512, 3] uint8 values, NHWC
 * ```
 *
 * @module
 */
import { dirname, join } from "node:path";
import { tf } from "../deps.ts";
import { type HostTensor, IoError } from "../io/host_tensor.ts";
import { readSafetensors, readSafetensorsHeader } from "../io/safetensors.ts";
import { LATENT_RAW_MEAN, LATENT_RAW_STD } from "../data/dataset.ts";
import { Initializer } from "./init.ts";
import { Conv2d, GroupNorm, Linear } from "./layers.ts";
import { Module, StateDictError } from "./module.ts";
import { ModuleDict } from "./song_unet.ts";
import { softmax } from "../runtime/native/fused.ts";

/** The shape of an `AutoencoderKL` decoder (the fields of diffusers' `config.json` it uses). */
export interface VaeDecoderConfig {
  /** Latent channels (`latent_channels`; 4 for the SD VAE). */
  latentChannels: number;
  /** Image channels (`out_channels`; 3). */
  outChannels: number;
  /** Channels per level, shallowest first (`block_out_channels`; SD: [128, 256, 512, 512]). */
  blockOutChannels: number[];
  /** ResNet blocks per encoder level; the decoder has one more (`layers_per_block`; 2). */
  layersPerBlock: number;
  /** Group-norm groups (`norm_num_groups`; 32). */
  normNumGroups: number;
}

/** `stabilityai/sd-vae-ft-mse`, the VAE of EDM2's `img512` models. */
export const SD_VAE_CONFIG: VaeDecoderConfig = {
  latentChannels: 4,
  outChannels: 3,
  blockOutChannels: [128, 256, 512, 512],
  layersPerBlock: 2,
  normNumGroups: 32,
};

const EPS = 1e-6;

function norm(channels: number, groups: number): GroupNorm {
  return new GroupNorm(channels, { numGroups: groups, minChannelsPerGroup: 1, eps: EPS });
}

/** diffusers `ResnetBlock2D` without a time embedding (`models/resnet.py`). */
export class VaeResnetBlock extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  readonly convShortcut?: Conv2d;

  constructor(init: Initializer, inChannels: number, outChannels: number, groups: number) {
    super();
    this.norm1 = this.addChild("norm1", norm(inChannels, groups));
    this.conv1 = this.addChild("conv1", new Conv2d(init, inChannels, outChannels, 3));
    this.norm2 = this.addChild("norm2", norm(outChannels, groups));
    this.conv2 = this.addChild("conv2", new Conv2d(init, outChannels, outChannels, 3));
    if (inChannels !== outChannels) {
      this.convShortcut = this.addChild(
        "conv_shortcut",
        new Conv2d(init, inChannels, outChannels, 1),
      );
    }
  }

  /** Applies the block to NHWC `x`. */
  forward(x: tf.Tensor4D): tf.Tensor4D {
    const h = this.conv1.forward(this.norm1.forwardSilu(x));
    const y = this.conv2.forward(this.norm2.forwardSilu(h));
    return tf.add(this.convShortcut ? this.convShortcut.forward(x) : x, y);
  }
}

/**
 * The mid block's self-attention (diffusers `Attention` with one head over all channels, its own
 * group norm, a residual connection and output scale 1): softmax(q·kᵀ/√C)·v over the h·w
 * positions, projected and added to the input.
 */
export class VaeAttention extends Module {
  readonly groupNorm: GroupNorm;
  readonly toQ: Linear;
  readonly toK: Linear;
  readonly toV: Linear;
  readonly toOut: Linear;

  constructor(init: Initializer, channels: number, groups: number) {
    super();
    this.groupNorm = this.addChild("group_norm", norm(channels, groups));
    this.toQ = this.addChild("to_q", new Linear(init, channels, channels));
    this.toK = this.addChild("to_k", new Linear(init, channels, channels));
    this.toV = this.addChild("to_v", new Linear(init, channels, channels));
    // diffusers' `to_out` is a `ModuleList` [linear, dropout].
    this.toOut = this.addChild("to_out", new ModuleDict()).set(
      "0",
      new Linear(init, channels, channels),
    );
  }

  /** Applies the attention to NHWC `x`. */
  forward(x: tf.Tensor4D): tf.Tensor4D {
    const [n, h, w, c] = x.shape;
    const xn = tf.reshape(this.groupNorm.forward(x), [n * h * w, c]) as tf.Tensor2D;
    const heads = (l: Linear) => tf.reshape(l.forward(xn), [n, h * w, c]) as tf.Tensor3D;
    const [q, k, v] = [heads(this.toQ), heads(this.toK), heads(this.toV)];
    const a = softmax(tf.matMul(tf.mul(q, 1 / Math.sqrt(c)), k, false, true));
    const o = this.toOut.forward(tf.reshape(tf.matMul(a, v), [n * h * w, c]) as tf.Tensor2D);
    return tf.add(tf.reshape(o, [n, h, w, c]), x);
  }
}

/** diffusers `UNetMidBlock2D` as the VAE uses it: ResNet block, attention, ResNet block. */
export class VaeMidBlock extends Module {
  readonly resnets: VaeResnetBlock[];
  readonly attention: VaeAttention;

  constructor(init: Initializer, channels: number, groups: number) {
    super();
    const resnets = this.addChild("resnets", new ModuleDict());
    const attentions = this.addChild("attentions", new ModuleDict());
    const block = () => new VaeResnetBlock(init, channels, channels, groups);
    this.resnets = [resnets.set("0", block())];
    this.attention = attentions.set("0", new VaeAttention(init, channels, groups));
    this.resnets.push(resnets.set("1", block()));
  }

  /** Applies the block to NHWC `x`. */
  forward(x: tf.Tensor4D): tf.Tensor4D {
    return this.resnets[1].forward(this.attention.forward(this.resnets[0].forward(x)));
  }
}

/** diffusers `UpDecoderBlock2D`: ResNet blocks, then optionally nearest 2× and a 3×3 conv. */
export class VaeUpBlock extends Module {
  readonly resnets: VaeResnetBlock[] = [];
  readonly upsampleConv?: Conv2d;

  constructor(
    init: Initializer,
    inChannels: number,
    outChannels: number,
    numLayers: number,
    groups: number,
    addUpsample: boolean,
  ) {
    super();
    const resnets = this.addChild("resnets", new ModuleDict());
    for (let i = 0; i < numLayers; i++) {
      this.resnets.push(
        resnets.set(
          String(i),
          new VaeResnetBlock(init, i === 0 ? inChannels : outChannels, outChannels, groups),
        ),
      );
    }
    if (addUpsample) {
      const ups = this.addChild("upsamplers", new ModuleDict());
      const up0 = ups.set("0", new ModuleDict());
      this.upsampleConv = up0.set("conv", new Conv2d(init, outChannels, outChannels, 3));
    }
  }

  /** Applies the block to NHWC `x`. */
  forward(x: tf.Tensor4D): tf.Tensor4D {
    for (const r of this.resnets) x = r.forward(x);
    if (!this.upsampleConv) return x;
    const [, h, w] = x.shape;
    return this.upsampleConv.forward(tf.image.resizeNearestNeighbor(x, [2 * h, 2 * w]));
  }
}

/** diffusers `Decoder` (`models/autoencoders/vae.py`) with group normalisation. */
export class VaeDecoderNet extends Module {
  readonly convIn: Conv2d;
  readonly midBlock: VaeMidBlock;
  readonly upBlocks: VaeUpBlock[] = [];
  readonly convNormOut: GroupNorm;
  readonly convOut: Conv2d;

  constructor(init: Initializer, cfg: VaeDecoderConfig) {
    super();
    const rev = [...cfg.blockOutChannels].reverse();
    const g = cfg.normNumGroups;
    this.convIn = this.addChild("conv_in", new Conv2d(init, cfg.latentChannels, rev[0], 3));
    this.midBlock = this.addChild("mid_block", new VaeMidBlock(init, rev[0], g));
    const ups = this.addChild("up_blocks", new ModuleDict());
    for (let i = 0; i < rev.length; i++) {
      const block = new VaeUpBlock(
        init,
        rev[Math.max(i - 1, 0)],
        rev[i],
        cfg.layersPerBlock + 1,
        g,
        i < rev.length - 1,
      );
      this.upBlocks.push(ups.set(String(i), block));
    }
    const c0 = cfg.blockOutChannels[0];
    this.convNormOut = this.addChild("conv_norm_out", norm(c0, g));
    this.convOut = this.addChild("conv_out", new Conv2d(init, c0, cfg.outChannels, 3));
  }

  /** Latents (after `post_quant_conv`) to images, NHWC. */
  forward(z: tf.Tensor4D): tf.Tensor4D {
    let x = this.midBlock.forward(this.convIn.forward(z));
    for (const b of this.upBlocks) x = b.forward(x);
    return this.convOut.forward(this.convNormOut.forwardSilu(x));
  }
}

/**
 * The decoding half of diffusers' `AutoencoderKL`: `post_quant_conv` (1×1) then the
 * {@linkcode VaeDecoderNet}. `decode` maps raw VAE latents (not EDM2-normalised ones) to the
 * decoder's output range.
 */
export class VaeDecoder extends Module {
  /** The decoder's shape. */
  readonly config: VaeDecoderConfig;
  /** `post_quant_conv`, 1×1 over the latent channels. */
  readonly postQuantConv: Conv2d;
  /** `decoder`. */
  readonly decoder: VaeDecoderNet;

  /**
   * @param cfg the shape (default the SD VAE's).
   * @param init initial values (default zeros: weights are loaded next).
   */
  constructor(cfg: VaeDecoderConfig = SD_VAE_CONFIG, init: Initializer = new Initializer("zeros")) {
    super();
    validateConfig(cfg);
    this.config = { ...cfg, blockOutChannels: [...cfg.blockOutChannels] };
    const c = cfg.latentChannels;
    this.postQuantConv = this.addChild("post_quant_conv", new Conv2d(init, c, c, 1));
    this.decoder = this.addChild("decoder", new VaeDecoderNet(init, cfg));
  }

  /** Raw latents `[N, h, w, C]` to images `[N, 8h, 8w, 3]` (for 4 levels), NHWC, unclamped. */
  decode(z: tf.Tensor4D): tf.Tensor4D {
    if (z.rank !== 4 || z.shape[3] !== this.config.latentChannels) {
      throw new IoError(
        `VAE decoder: latents must be [N, h, w, ${this.config.latentChannels}], got [${z.shape}]`,
      );
    }
    return tf.tidy(() => this.decoder.forward(this.postQuantConv.forward(z)));
  }
}

function validateConfig(cfg: VaeDecoderConfig): void {
  const ints = [cfg.latentChannels, cfg.outChannels, cfg.layersPerBlock, cfg.normNumGroups];
  const ok = ints.every((v) => Number.isInteger(v) && v >= 1 && v <= 4096) &&
    Array.isArray(cfg.blockOutChannels) && cfg.blockOutChannels.length >= 1 &&
    cfg.blockOutChannels.length <= 8 &&
    cfg.blockOutChannels.every((v) =>
      Number.isInteger(v) && v >= 1 && v <= 8192 && v % cfg.normNumGroups === 0
    );
  if (!ok) throw new IoError(`VAE decoder: unsupported configuration ${JSON.stringify(cfg)}`);
}

// ---------------------------------------------------------------------------------------------
// Loading.

/** Attention tensor names of older diffusers files, and today's. */
const LEGACY_ATTENTION: [RegExp, string][] = [
  [/\.query\.(weight|bias)$/, ".to_q.$1"],
  [/\.key\.(weight|bias)$/, ".to_k.$1"],
  [/\.value\.(weight|bias)$/, ".to_v.$1"],
  [/\.proj_attn\.(weight|bias)$/, ".to_out.0.$1"],
];

/**
 * Today's diffusers name of a VAE tensor: the mid-block attention's `query`, `key`, `value` and
 * `proj_attn` of older files become `to_q`, `to_k`, `to_v` and `to_out.0` (diffusers
 * `models/modeling_utils.py`, `_convert_deprecated_attention_blocks`).
 */
export function canonicalVaeName(name: string): string {
  if (!name.includes(".attentions.")) return name;
  for (const [re, to] of LEGACY_ATTENTION) if (re.test(name)) return name.replace(re, to);
  return name;
}

/** The decoder's tensors of a full VAE state dict, renamed, with 1×1-conv attention weights squeezed. */
function decoderTensors(state: Map<string, HostTensor>): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const [k, t] of state) {
    if (!k.startsWith("decoder.") && !k.startsWith("post_quant_conv.")) continue;
    const name = canonicalVaeName(k);
    // Checkpoints converted from the original (CompVis) VAE keep attention weights as 1×1
    // convolutions, [C, C, 1, 1].
    const squeeze = name.includes(".attentions.") && t.shape.length === 4 &&
      t.shape[2] === 1 && t.shape[3] === 1;
    out.set(name, squeeze ? { ...t, shape: t.shape.slice(0, 2) } : t);
  }
  return out;
}

/** The configuration from a diffusers `config.json` object (unknown fields are ignored). */
export function vaeConfigFromJson(json: unknown, what = "config.json"): VaeDecoderConfig {
  const o = (json ?? {}) as Record<string, unknown>;
  if (typeof o !== "object" || Array.isArray(o)) throw new IoError(`${what}: not a JSON object`);
  if (o._class_name !== undefined && o._class_name !== "AutoencoderKL") {
    throw new IoError(`${what}: a ${String(o._class_name)}, not an AutoencoderKL`);
  }
  if (o.norm_type !== undefined && o.norm_type !== "group") {
    throw new IoError(`${what}: norm_type ${String(o.norm_type)} is not supported (only group)`);
  }
  const cfg: VaeDecoderConfig = {
    latentChannels: (o.latent_channels ?? SD_VAE_CONFIG.latentChannels) as number,
    outChannels: (o.out_channels ?? SD_VAE_CONFIG.outChannels) as number,
    blockOutChannels: (o.block_out_channels ?? SD_VAE_CONFIG.blockOutChannels) as number[],
    layersPerBlock: (o.layers_per_block ?? SD_VAE_CONFIG.layersPerBlock) as number,
    normNumGroups: (o.norm_num_groups ?? SD_VAE_CONFIG.normNumGroups) as number,
  };
  try {
    validateConfig(cfg);
  } catch {
    throw new IoError(`${what}: unsupported VAE configuration ${JSON.stringify(cfg)}`);
  }
  return cfg;
}

/** The configuration read off the tensor shapes of a VAE file (no `config.json` at hand). */
function configFromShapes(
  shapes: Map<string, number[]>,
  groups: number,
  what: string,
): VaeDecoderConfig {
  const need = (k: string) => {
    const s = shapes.get(k);
    if (!s) throw new IoError(`${what}: no tensor ${k}; not an AutoencoderKL decoder`);
    return s;
  };
  const convIn = need("decoder.conv_in.weight");
  const convOut = need("decoder.conv_out.weight");
  const rev: number[] = [];
  let layers = 0;
  for (let i = 0; shapes.has(`decoder.up_blocks.${i}.resnets.0.conv1.weight`); i++) {
    rev.push(shapes.get(`decoder.up_blocks.${i}.resnets.0.conv1.weight`)![0]);
    if (i === 0) {
      while (shapes.has(`decoder.up_blocks.0.resnets.${layers}.conv1.weight`)) layers++;
    }
  }
  if (!rev.length || layers < 1) {
    throw new IoError(`${what}: no decoder up blocks; not an AutoencoderKL decoder`);
  }
  return {
    latentChannels: convIn[1],
    outChannels: convOut[0],
    blockOutChannels: rev.reverse(),
    layersPerBlock: layers - 1,
    normNumGroups: groups,
  };
}

/**
 * Where the weights and the configuration of a VAE live: a diffusers folder (`config.json` with
 * `diffusion_pytorch_model.safetensors`, or the hub's `vae/` subfolder of a pipeline), or a
 * `.safetensors` file (with a `config.json` beside it, if any).
 */
async function locate(path: string): Promise<{ weights: string; config?: string }> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch (e) {
    throw new IoError(`${path}: cannot open the VAE (${(e as Error).message})`, { cause: e });
  }
  const exists = async (p: string) => {
    try {
      return (await Deno.stat(p)).isFile;
    } catch {
      return false;
    }
  };
  if (stat.isDirectory) {
    for (const dir of [path, join(path, "vae")]) {
      const weights = join(dir, "diffusion_pytorch_model.safetensors");
      if (await exists(weights)) {
        const config = join(dir, "config.json");
        return { weights, config: (await exists(config)) ? config : undefined };
      }
    }
    throw new IoError(
      `${path}: no diffusion_pytorch_model.safetensors in this folder (only safetensors VAE ` +
        `weights are read; a .bin file is a pickle)`,
    );
  }
  if (!/\.safetensors$/i.test(path)) {
    throw new IoError(`${path}: a VAE must be a .safetensors file or a diffusers folder`);
  }
  const config = join(dirname(path), "config.json");
  return { weights: path, config: (await exists(config)) ? config : undefined };
}

/**
 * Loads the decoder of a diffusers `AutoencoderKL` (the Stable Diffusion VAE, e.g.
 * `stabilityai/sd-vae-ft-mse` as downloaded from the Hugging Face hub) from a folder or a
 * `.safetensors` file. The configuration comes from `config.json` when there is one, otherwise
 * from the tensor shapes. Encoder tensors are not read.
 *
 * @throws {IoError} for a missing or malformed file, or weights that do not fit the
 *   configuration (naming the tensor).
 */
export async function loadVaeDecoder(path: string): Promise<VaeDecoder> {
  const where = await locate(path);
  const header = await readSafetensorsHeader(where.weights);
  const shapes = new Map<string, number[]>();
  for (const e of header.entries) shapes.set(canonicalVaeName(e.name), [...e.shape]);
  let cfg: VaeDecoderConfig;
  if (where.config) {
    let json: unknown;
    try {
      json = JSON.parse(await Deno.readTextFile(where.config));
    } catch (e) {
      throw new IoError(`${where.config}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
    cfg = vaeConfigFromJson(json, where.config);
  } else {
    cfg = configFromShapes(shapes, SD_VAE_CONFIG.normNumGroups, where.weights);
    try {
      validateConfig(cfg);
    } catch {
      throw new IoError(`${where.weights}: unsupported VAE shapes ${JSON.stringify(cfg)}`);
    }
  }
  const names = header.entries.map((e) => e.name).filter((n) =>
    n.startsWith("decoder.") || n.startsWith("post_quant_conv.")
  );
  const { tensors } = await readSafetensors(where.weights, { names });
  const vae = new VaeDecoder(cfg);
  try {
    vae.loadStateDict(decoderTensors(tensors));
  } catch (e) {
    vae.dispose();
    if (e instanceof StateDictError) throw new IoError(`${where.weights}: ${e.message}`);
    throw e;
  }
  return vae;
}

// ---------------------------------------------------------------------------------------------
// EDM2's latent decoding.

/** Per-channel scale and bias of EDM2's normalised latents (`StabilityVAEEncoder`). */
export interface LatentScaling {
  scale: readonly number[];
  bias: readonly number[];
}

/**
 * EDM2's defaults: scale = 0.5 / raw_std, bias = −raw_mean · scale (NVlabs/edm2
 * `training/encoders.py:79-100`), computed in float32 as there.
 */
export const EDM2_LATENT_SCALING: LatentScaling = {
  scale: LATENT_RAW_STD.map((s) => Math.fround(0.5 / s)),
  bias: LATENT_RAW_MEAN.map((m, i) => Math.fround(-m * Math.fround(0.5 / LATENT_RAW_STD[i]))),
};

/**
 * EDM2-normalised latents `[N, h, w, 4]` to images in [0, 255] as float values holding integers
 * (NVlabs/edm2 `training/encoders.py:125-132`): undo the scaling, decode, clamp to [0, 1], ×255,
 * truncate (the reference casts to uint8). EDM2 feeds the VAE images in [0, 1] when it encodes,
 * so [0, 1] is the decoder's range here too.
 */
export function decodeLatents(
  vae: VaeDecoder,
  x: tf.Tensor4D,
  scaling: LatentScaling = EDM2_LATENT_SCALING,
): tf.Tensor4D {
  return tf.tidy(() => {
    const raw = tf.div(tf.sub(x, tf.tensor1d([...scaling.bias])), tf.tensor1d([...scaling.scale]));
    const img = vae.decode(raw as tf.Tensor4D);
    return tf.floor(tf.mul(tf.clipByValue(img, 0, 1), 255)) as tf.Tensor4D;
  });
}

/**
 * {@linkcode decodeLatents} as images in [−1, 1] (pixel / 127.5 − 1), the range of pixel-space
 * networks' samples, for display (e.g. the notebooks' `showImages`); converting back with
 * `clamp(127.5·x + 128)` and truncation gives the same uint8 pixels.
 */
export function decodeLatentsToImages(
  vae: VaeDecoder,
  x: tf.Tensor4D,
  scaling: LatentScaling = EDM2_LATENT_SCALING,
): tf.Tensor4D {
  return tf.tidy(() => tf.sub(tf.div(decodeLatents(vae, x, scaling), 127.5), 1) as tf.Tensor4D);
}

/** {@linkcode decodeLatents} in batches of `batch` (EDM2 decodes 8 at a time), as uint8 NHWC. */
export async function decodeLatentsToUint8(
  vae: VaeDecoder,
  x: tf.Tensor4D,
  options: { batch?: number; scaling?: LatentScaling } = {},
): Promise<{ data: Uint8Array; shape: [number, number, number, number] }> {
  const batch = options.batch ?? 8;
  const n = x.shape[0];
  const parts: Uint8Array[] = [];
  let shape: [number, number, number, number] = [0, 0, 0, 0];
  for (let i = 0; i < n; i += batch) {
    const img = tf.tidy(() =>
      decodeLatents(
        vae,
        tf.slice(x, [i, 0, 0, 0], [Math.min(batch, n - i), -1, -1, -1]),
        options.scaling,
      )
    );
    shape = img.shape as typeof shape;
    parts.push(Uint8Array.from(await img.data()));
    img.dispose();
  }
  const data = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let off = 0;
  for (const p of parts) {
    data.set(p, off);
    off += p.length;
  }
  return { data, shape: [n, shape[1], shape[2], shape[3]] };
}
