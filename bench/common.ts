/**
 * Helpers shared by the benchmarks.
 *
 * @module
 */
import { type BackendInfo, describeBackend } from "../lib/runtime/backend.ts";
import { startBackend } from "../lib/runtime/cli.ts";

/**
 * Starts backend `name` for a benchmark row: its info and a one-line device label (the adapter
 * for webgpu, the BLAS and threads for native), or null, saying why on stderr, when it does not
 * start or another backend answered.
 */
export async function startBenchBackend(
  name: string,
): Promise<{ info: BackendInfo; device: string } | null> {
  let info: BackendInfo;
  try {
    info = await startBackend(name);
  } catch (e) {
    console.error(`skipping backend ${name}: ${(e as Error).message}`);
    return null;
  }
  if (info.name !== name) {
    console.error(`skipping backend ${name}: got ${info.name}`);
    return null;
  }
  const device = info.name === "webgpu"
    ? `${info.adapter}${info.isFallbackAdapter ? " (software)" : ""}`
    : info.name === "cpu"
    ? "tfjs-cpu (JS)"
    : describeBackend(info).replace(/^backend: /, "");
  return { info, device };
}
