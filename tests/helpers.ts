/**
 * Shared test helpers: backend set-up, fixture loading, and tensor comparisons.
 *
 * The backend under test is `SIDA_TEST_BACKEND` (default `auto`: what `initBackend()` picks, i.e.
 * `native` on a machine without a GPU), so CI can run the same suite on `cpu` and `webgpu` too.
 */
import { tf } from "../lib/deps.ts";
import { initBackend } from "../lib/runtime/backend.ts";
import { registerNativeBackend } from "../lib/runtime/native/backend.ts";
import { loadCKernels } from "../lib/runtime/native/ckernels.ts";
import { type HostTensor, toFloat32 } from "../lib/io/host_tensor.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { fromEdmKwargs, type NetworkConfig } from "../lib/nets/config.ts";
import { EDMPrecond } from "../lib/nets/precond.ts";
import { createImageDataset, type ImageDataset } from "../lib/data/dataset.ts";

/**
 * A one-level SongUNet with 8 channels and one block, no attention or dropout: the smallest
 * network the run-folder, chain, teacher and reliability tests train or load. `image` sets the
 * resolution, channels and labels.
 */
export function tinySongUNet(
  image: { imgResolution: number; imgChannels: number; labelDim?: number; augmentDim?: number },
) {
  return {
    ...image,
    unet: {
      arch: "SongUNet" as const,
      modelChannels: 8,
      channelMult: [1],
      numBlocks: 1,
      attnResolutions: [] as number[],
      dropout: 0,
    },
  };
}

/** The backend the tests run on. */
export const TEST_BACKEND = Deno.env.get("SIDA_TEST_BACKEND") ?? "auto";

let ready: Promise<unknown> | undefined;

/** Starts the test backend once per process. */
export function setupBackend(): Promise<unknown> {
  ready ??= initBackend(TEST_BACKEND);
  return ready;
}

/** Path of a file under tests/fixtures. */
export function fixturePath(rel: string): string {
  return new URL(`./fixtures/${rel}`, import.meta.url).pathname;
}

/** A reference network fixture: its network (weights loaded) and its recorded cases. */
export interface NetFixture {
  config: NetworkConfig;
  net: EDMPrecond;
  tensors: Map<string, HostTensor>;
  cases: { labels: boolean; augment: boolean; scalar_sigma: boolean }[];
}

/** Loads `tests/fixtures/nets/<name>.safetensors` and builds its network. */
export async function loadNetFixture(name: string): Promise<NetFixture> {
  const { tensors, metadata } = await readSafetensors(fixturePath(`nets/${name}.safetensors`));
  const config = fromEdmKwargs(JSON.parse(metadata.config));
  const net = new EDMPrecond(config, { init: "zeros" });
  const state = new Map([...tensors].filter(([k]) => k.startsWith("model.")));
  net.loadStateDict(state);
  return { config, net, tensors, cases: JSON.parse(metadata.cases) };
}

/** A host tensor as a tfjs tensor; NCHW 4-D tensors are transposed to NHWC. */
export function nhwc(t: HostTensor): tf.Tensor {
  const x = tf.tensor(toFloat32(t), t.shape, "float32");
  if (t.shape.length !== 4) return x;
  const y = tf.transpose(x, [0, 2, 3, 1]);
  x.dispose();
  return y;
}

/** Largest absolute difference between two tensors of the same shape. */
export async function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  if (a.shape.join() !== b.shape.join()) {
    throw new Error(`shape mismatch [${a.shape}] vs [${b.shape}]`);
  }
  const d = tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))));
  const v = (await d.data())[0];
  d.dispose();
  return v;
}

/** Largest absolute value of a tensor. */
export async function maxAbs(a: tf.Tensor): Promise<number> {
  const d = tf.tidy(() => tf.max(tf.abs(a)));
  const v = (await d.data())[0];
  d.dispose();
  return v;
}

/**
 * Registers the `native` backend for a native-kernel test file: `ignore` when it cannot be
 * registered (no BLAS; the reason is printed), `withC` when the C kernels are loaded too.
 */
export function setupNativeTests(what: string): { ignore: boolean; withC: boolean } {
  try {
    registerNativeBackend();
  } catch (e) {
    console.error(`${what} tests skipped: ${(e as Error).message}`);
    return { ignore: true, withC: false };
  }
  return { ignore: false, withC: loadCKernels() !== null };
}

/**
 * A deterministic RGB data set of `n` images of `res`×`res` (a fixed byte pattern), labelled
 * `i mod 3` unless `labelled` is false: the distillation tests' training data.
 */
export function tinyImageDataset(n: number, res: number, labelled = true): ImageDataset {
  const pixels = new Uint8Array(n * res * res * 3);
  for (let i = 0; i < pixels.length; i++) pixels[i] = (i * 37 + (i >> 5) * 11) % 256;
  return createImageDataset({
    name: "tiny",
    resolution: res,
    channels: 3,
    pixels,
    labels: labelled ? Array.from({ length: n }, (_, i) => i % 3) : null,
  });
}

/** Runs `fn` in a fresh temporary folder (prefix `prefix`), removed afterwards whatever happens. */
export async function withTempDir(
  prefix: string,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * `deno run -A <args>` from the repository root on the `cpu` backend (`SIDA_BACKEND`), with its
 * exit code and output: how the task tests run a task as a user would.
 */
export async function runCpuTask(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: new URL("../", import.meta.url).pathname,
    env: { SIDA_BACKEND: "cpu" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
