/**
 * The safetensors metadata that describes a saved network: a format tag, the class name and the
 * EDM constructor kwargs. Shared by `network.ts` (saving, loading) and `import.ts` (converting
 * PyTorch checkpoints), which therefore do not import each other for it.
 *
 * @module
 */
import { toEdmKwargs } from "./config.ts";
import type { EDMPrecond } from "./precond.ts";

/** The format tag written into the metadata of saved networks. */
export const NETWORK_FORMAT = "sida-network/1";

/** The safetensors metadata that describes a network's architecture. */
export function networkMetadata(net: EDMPrecond): Record<string, string> {
  return {
    format: NETWORK_FORMAT,
    class: "EDMPrecond",
    config: JSON.stringify(toEdmKwargs(net.config)),
  };
}
