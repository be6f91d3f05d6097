/**
 * Creating, saving and loading networks.
 *
 * Saved networks are safetensors files: tensors under their PyTorch state-dict names and layouts
 * (float32), and in `__metadata__` the EDM constructor kwargs (`config`, JSON), the class name
 * (`class`: `EDMPrecond`) and a format tag (`format`: `sida-network/1`).
 *
 * @example
 * ```ts
 * import { createNetwork, loadNetwork, preset, saveNetwork } from "./network.ts";
 * const net = createNetwork(preset("mnist"), { seed: 1 });
 * await saveNetwork(net, "teacher.safetensors");
 * const again = await loadNetwork("teacher.safetensors");
 * ```
 *
 * @module
 */
import {
  fromEdmKwargs,
  type NetworkConfig,
  type NetworkConfigInput,
  resolveConfig,
} from "./config.ts";
import { EDMPrecond } from "./precond.ts";
import { checkFiniteWeights, IoError } from "../io/host_tensor.ts";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import { importNetwork } from "./import.ts";
import { networkMetadata } from "./metadata.ts";

export { preset } from "./config.ts";
export { NETWORK_FORMAT, networkMetadata } from "./metadata.ts";

/**
 * Builds a network from a configuration (complete, or partial with defaults filled in).
 *
 * @param config e.g. `preset("cifar10-ddpmpp-cond")`, or `{ imgResolution: 32, imgChannels: 3, unet: { arch: "SongUNet", modelChannels: 64 } }`
 * @param options `init: "random"` (default) draws EDM's initialisation with `seed`; `"zeros"` skips it.
 */
export function createNetwork(
  config: NetworkConfig | NetworkConfigInput,
  options: { init?: "random" | "zeros"; seed?: number } = {},
): EDMPrecond {
  return new EDMPrecond(resolveConfig(config as NetworkConfigInput), options);
}

/**
 * Writes a network's weights and configuration to a safetensors file, atomically (a temporary
 * file renamed into place), so that an interrupted save never leaves a half-written file.
 */
export async function saveNetwork(
  net: EDMPrecond,
  path: string,
  extraMetadata: Record<string, string> = {},
): Promise<void> {
  const state = await net.stateDict();
  await writeSafetensors(path, state, { ...extraMetadata, ...networkMetadata(net) });
}

/**
 * Reads the network configuration stored in a safetensors file's metadata.
 *
 * @throws IoError when the file has no (valid) `config` entry
 */
export function configFromMetadata(metadata: Record<string, string>, path = "file"): NetworkConfig {
  const raw = metadata.config;
  if (!raw) throw new IoError(`${path}: no network config in the safetensors metadata`);
  let kwargs: unknown;
  try {
    kwargs = JSON.parse(raw);
  } catch {
    throw new IoError(`${path}: the network config in the metadata is not valid JSON`);
  }
  if (!kwargs || typeof kwargs !== "object" || Array.isArray(kwargs)) {
    throw new IoError(`${path}: the network config in the metadata is not an object`);
  }
  if (metadata.class && metadata.class !== "EDMPrecond") {
    throw new IoError(`${path}: unsupported network class '${metadata.class}'`);
  }
  return fromEdmKwargs(kwargs as Record<string, unknown>);
}

/** Options of {@linkcode loadNetwork}. */
export interface LoadNetworkOptions {
  /**
   * Accept weights that hold NaN or infinite values (default: refuse them with an `IoError`
   * naming the tensors, unless `SIDA_ALLOW_NONFINITE=1`).
   */
  allowNonFinite?: boolean;
}

/**
 * Loads a network saved by {@linkcode saveNetwork} (or any safetensors file holding an EDM
 * state dict with the config in its metadata), or imports one from an official PyTorch file
 * (`.pkl`, `.pt`, `.pth`; see `importNetwork` in `import.ts`). Every tensor must be present with
 * the expected shape; float16/bfloat16 weights are converted to float32. Weights that hold NaN
 * or infinite values are refused unless `options.allowNonFinite`.
 *
 * @throws {IoError} for a malformed file, a missing or misshapen tensor, or non-finite weights.
 */
export async function loadNetwork(
  path: string,
  options: LoadNetworkOptions = {},
): Promise<EDMPrecond> {
  const lower = path.toLowerCase();
  if (lower.endsWith(".pkl") || lower.endsWith(".pt") || lower.endsWith(".pth")) {
    return (await importNetwork(path, options)).net;
  }
  const { tensors, metadata } = await readSafetensors(path);
  const config = configFromMetadata(metadata, path);
  checkFiniteWeights(tensors, path, options.allowNonFinite);
  const net = new EDMPrecond(config, { init: "zeros" });
  try {
    net.loadStateDict(tensors);
  } catch (e) {
    net.dispose();
    throw new IoError(`${path}: ${(e as Error).message}`);
  }
  return net;
}
