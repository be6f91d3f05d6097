/**
 * EDM2 networks in and out: importing `edm2-img512-*.pkl` / `edm2-img64-*.pkl` and EDM2
 * `network-snapshot-*.pkl` files (an EasyDict whose `ema` is a float16 `Precond`) with the safe
 * pickle reader of `io/torch_file.ts` (no code is executed), and saving/loading EDM2 networks as
 * safetensors (float32 tensors under their PyTorch names, the Python `Precond` kwargs in the
 * metadata, class `EDM2Precond`).
 *
 * @example
 * ```ts
 * import { importEdm2Network, saveEdm2Network } from "./import_edm2.ts";
 * const { net } = await importEdm2Network("edm2-img512-xs-2147483-0.135.pkl");
 * await saveEdm2Network(net, "edm2-xs.safetensors");
 * ```
 *
 * @module
 */
import {
  checkFiniteWeights,
  type HostTensor,
  IoError,
  nonFiniteAllowedByDefault,
  printable,
  toFloat32,
} from "../io/host_tensor.ts";
import { isPersistentRecord, PyDict, PyObject, PyTuple, type PyValue } from "../io/pickle.ts";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import { moduleState, openTorchFile, readTensor, stateDictOf, toPlain } from "../io/torch_file.ts";
import { ConfigError } from "./config.ts";
import { type Edm2Config, EDM2Precond, fromEdm2Kwargs, toEdm2Kwargs } from "./edm2.ts";
import { NETWORK_FORMAT } from "./metadata.ts";
import { withShapesOnly } from "./module.ts";

/** Class names of EDM2 networks: NVlabs/edm2's `Precond` and SiD's EDM2 variants. */
export const EDM2_CLASSES: ReadonlySet<string> = new Set([
  "Precond",
  "EDM_2_Precond_EncoderDecoder",
  "EDM_2_Precond_Generator",
]);
/** `Precond.__init__`'s positional parameters (`edm2:training/networks_edm2.py:269-276`). */
const POSITIONAL = [
  "img_resolution",
  "img_channels",
  "label_dim",
  "use_fp16",
  "sigma_data",
  "logvar_channels",
];
/** SiD's EDM2 kwargs that do not change the inference network (`sida_networks_edm2.py:123-134`). */
const SID_EXTRA_KWARGS = ["force_normalization", "use_gan"];
const DEFAULT_KEYS = ["ema", "G_ema", "net", "model"];

/** Options of {@linkcode importEdm2Network}. */
export interface Edm2ImportOptions {
  /** The top-level key holding the network (default: the first of `ema`, `G_ema`, `net`, `model`). */
  key?: string;
  /** Accept NaN/infinite weights (default: refuse, unless `SIDA_ALLOW_NONFINITE=1`). */
  allowNonFinite?: boolean;
}

/** What an EDM2 import found. */
export interface Edm2ImportSummary {
  path: string;
  key: string;
  className: string;
  config: Edm2Config;
  paramCount: number;
  tensorCount: number;
  /** Distinct dtypes of the stored tensors (`float16` for the official EMA pickles). */
  sourceDtypes: string[];
}

function dictGet(d: PyValue, key: string): PyValue | undefined {
  if (d instanceof PyDict) return d.has(key) ? d.get(key) : undefined;
  if (d instanceof PyObject && d.dictItems?.has(key)) return d.dictItems.get(key);
  return undefined;
}

/** A parsed EDM2 pickle: the network record's configuration and tensors, checked by name and shape. */
interface ParsedEdm2 {
  file: ReturnType<typeof openTorchFile>;
  key: string;
  className: string;
  config: Edm2Config;
  tensors: ReturnType<typeof stateDictOf>;
  /** Parameter elements of the architecture. */
  paramCount: number;
}

/**
 * Opens an EDM2 pickle and checks it without allocating the network: the class, the
 * configuration its `_init_args`/`_init_kwargs` record, and every stored tensor's name and shape
 * against that architecture (built shapes-only, {@linkcode withShapesOnly}). The caller closes
 * `file`.
 */
function parseEdm2(path: string, options: Edm2ImportOptions): ParsedEdm2 {
  const file = openTorchFile(path);
  try {
    let obj: PyValue | undefined;
    let key = options.key ?? "";
    if (key) obj = dictGet(file.root, key);
    else if (isPersistentRecord(file.root)) obj = file.root;
    else {
      for (const k of DEFAULT_KEYS) {
        const v = dictGet(file.root, k);
        if (v !== undefined && v !== null) {
          obj = v;
          key = k;
          break;
        }
      }
    }
    if (obj === undefined) throw new IoError(`${path}: no network found (key '${key || "ema"}')`);
    if (!isPersistentRecord(obj) || !EDM2_CLASSES.has(obj.className)) {
      const name = isPersistentRecord(obj) ? obj.className : "non-network object";
      throw new IoError(`${path}: '${key}' is a '${name}', not an EDM2 Precond`);
    }
    const state = moduleState(obj)!;
    const kwRaw = toPlain(state.get("_init_kwargs") ?? new PyDict(), `${path}: _init_kwargs`);
    if (kwRaw === null || typeof kwRaw !== "object" || Array.isArray(kwRaw)) {
      throw new IoError(`${path}: _init_kwargs is not a dict`);
    }
    const kw: Record<string, unknown> = { ...kwRaw };
    const args = state.get("_init_args");
    if (args instanceof PyTuple) {
      if (args.items.length > POSITIONAL.length) throw new IoError(`${path}: too many _init_args`);
      args.items.forEach((a, i) => kw[POSITIONAL[i]] = toPlain(a, `${path}: _init_args`));
    }
    for (const k of SID_EXTRA_KWARGS) delete kw[k];
    let config: Edm2Config;
    try {
      config = fromEdm2Kwargs(kw);
    } catch (e) {
      if (e instanceof ConfigError) throw new IoError(`${path}: ${obj.className}: ${e.message}`);
      throw e;
    }
    const tensors = stateDictOf(obj);
    const shapes = withShapesOnly(() => new EDM2Precond(config, { init: "zeros" }));
    const ours = shapes.namedTensors();
    const paramCount = ours.filter(([, e]) => e.kind === "param")
      .reduce((n, [, e]) => n + e.torchShape.reduce((a, b) => a * b, 1), 0);
    shapes.dispose();
    const known = new Set(ours.map(([n]) => n));
    const problems = [
      ...ours.filter(([n]) => !tensors.has(n)).map(([n]) => `missing ${n}`),
      ...ours.filter(([n, e]) =>
        tensors.has(n) && tensors.get(n)!.shape.join() !== e.torchShape.join()
      )
        .map(([n, e]) => `${n} [${tensors.get(n)!.shape}] (expected [${e.torchShape}])`),
      ...[...tensors.keys()].filter((n) => !known.has(n)).map((n) => `unexpected ${n}`),
    ];
    if (problems.length) {
      throw new IoError(
        `${path}: the weights do not match the recorded architecture: ${
          problems.slice(0, 5).join("; ")
        }${problems.length > 5 ? `; … (${problems.length} in all)` : ""}`,
      );
    }
    return { file, key, className: obj.className, config, tensors, paramCount };
  } catch (e) {
    file.close();
    throw e;
  }
}

function summaryOf(path: string, p: ParsedEdm2): Edm2ImportSummary {
  return {
    path,
    key: p.key,
    className: p.className,
    config: p.config,
    paramCount: p.paramCount,
    tensorCount: p.tensors.size,
    sourceDtypes: [...new Set([...p.tensors.values()].map((t) => t.dtype))],
  };
}

/**
 * Reads an EDM2 network from a pickle: checks its class, builds the architecture its
 * `_init_args`/`_init_kwargs` record (defaults as in the reference), checks that the stored
 * tensors match it exactly (names and shapes) and loads them as float32.
 *
 * @throws {IoError} for an unsafe or malformed file, a non-EDM2 class, or mismatched weights.
 */
export async function importEdm2Network(
  path: string,
  options: Edm2ImportOptions = {},
): Promise<{ net: EDM2Precond; summary: Edm2ImportSummary }> {
  await Promise.resolve();
  const p = parseEdm2(path, options);
  let net: EDM2Precond | undefined;
  try {
    net = new EDM2Precond(p.config, { init: "zeros" });
    const allow = options.allowNonFinite ?? nonFiniteAllowedByDefault();
    for (const [name, ref] of p.tensors) {
      const t = readTensor(ref);
      const f: HostTensor = t.dtype === "float32"
        ? t
        : { dtype: "float32", shape: t.shape, data: toFloat32(t) };
      checkFiniteWeights([[name, f]], path, allow);
      net.loadStateDict(new Map([[name, f]]), { strict: false });
    }
    return { net, summary: summaryOf(path, p) };
  } catch (e) {
    net?.dispose();
    throw e;
  } finally {
    p.file.close();
  }
}

/**
 * What an EDM2 pickle holds, checked as {@linkcode importEdm2Network} checks it (class,
 * recorded architecture, every tensor's name and shape) without reading the weights or building
 * the network: cheap even for EDM2-XXL.
 *
 * @throws {IoError} for an unsafe or malformed file, a non-EDM2 class, or mismatched weights.
 */
export async function inspectEdm2Pickle(
  path: string,
  options: Edm2ImportOptions = {},
): Promise<Edm2ImportSummary> {
  await Promise.resolve();
  const p = parseEdm2(path, options);
  p.file.close();
  return summaryOf(path, p);
}

/**
 * Converts an EDM2 pickle to our safetensors network file without building the network: the
 * pickle is checked as {@linkcode importEdm2Network} does, then its tensors are written in their
 * stored dtype (float16 for the official releases; {@linkcode loadEdm2Network} reads them as
 * float32). Memory stays near the size of the weights, once (EDM2-XXL: 3 GB), where building
 * the float32 network and saving it needs about five times that.
 *
 * @throws {IoError} for an unsafe or malformed file, a non-EDM2 class, mismatched or non-finite
 *   weights; nothing is written then.
 *
 * @example
 * ```ts
 * import { importEdm2ToSafetensors } from "./import_edm2.ts";
 * await importEdm2ToSafetensors("edm2-img512-xs-2147483-0.135.pkl", "teacher.safetensors");
 * ```
 */
export async function importEdm2ToSafetensors(
  input: string,
  output: string,
  options: Edm2ImportOptions = {},
): Promise<Edm2ImportSummary> {
  await Promise.resolve();
  const p = parseEdm2(input, options);
  try {
    const allow = options.allowNonFinite ?? nonFiniteAllowedByDefault();
    const host = new Map<string, HostTensor>();
    for (const [name, ref] of p.tensors) {
      const t = readTensor(ref);
      checkFiniteWeights([[name, t]], input, allow);
      host.set(name, t);
    }
    await writeSafetensors(output, host, edm2ConfigMetadata(p.config));
    return summaryOf(input, p);
  } finally {
    p.file.close();
  }
}

/** The safetensors metadata of an EDM2 network of configuration `config`. */
function edm2ConfigMetadata(config: Edm2Config): Record<string, string> {
  return {
    format: NETWORK_FORMAT,
    class: "EDM2Precond",
    config: JSON.stringify(toEdm2Kwargs(config)),
  };
}

/** The safetensors metadata of a saved EDM2 network. */
export function edm2Metadata(net: EDM2Precond): Record<string, string> {
  return edm2ConfigMetadata(net.config);
}

/**
 * A short multi-line description of an EDM2 import (as `describeImport` for EDM): class,
 * architecture, resolution, channels, label dimension, parameter count and source dtype.
 */
export function describeEdm2Import(s: Edm2ImportSummary): string {
  const lines = [
    ["source", `${s.path}${s.key ? ` (key '${s.key}')` : ""}`],
    ["class", s.className],
    ["architecture", `EDM2UNet, ${s.config.unet.modelChannels} channels`],
    ["resolution", `${s.config.imgResolution}x${s.config.imgResolution}`],
    ["channels", String(s.config.imgChannels)],
    ["label dim", String(s.config.labelDim)],
    ["parameters", s.paramCount.toLocaleString("en-US")],
    ["tensors", String(s.tensorCount)],
    ["source dtype", s.sourceDtypes.join(", ") || "-"],
  ];
  // Class names and keys come from the file: escaped, so that they cannot drive the terminal.
  return lines.map(([k, v]) => `${k.padEnd(13)} ${printable(v)}`).join("\n");
}

/** Writes an EDM2 network's weights (float32, PyTorch names/layouts) and config, atomically. */
export async function saveEdm2Network(
  net: EDM2Precond,
  path: string,
  extraMetadata: Record<string, string> = {},
): Promise<void> {
  await writeSafetensors(path, await net.stateDict(), { ...extraMetadata, ...edm2Metadata(net) });
}

/**
 * Loads an EDM2 network saved by {@linkcode saveEdm2Network}, or imports one from a pickle
 * (`.pkl`, see {@linkcode importEdm2Network}).
 */
export async function loadEdm2Network(
  path: string,
  options: Edm2ImportOptions = {},
): Promise<EDM2Precond> {
  if (path.toLowerCase().endsWith(".pkl")) return (await importEdm2Network(path, options)).net;
  const { tensors, metadata } = await readSafetensors(path);
  if (metadata.class !== "EDM2Precond" || !metadata.config) {
    throw new IoError(`${path}: not an EDM2 network (class '${metadata.class ?? ""}')`);
  }
  let config: Edm2Config;
  try {
    config = fromEdm2Kwargs(JSON.parse(metadata.config));
  } catch (e) {
    throw new IoError(`${path}: bad EDM2 config: ${(e as Error).message}`);
  }
  checkFiniteWeights(tensors, path, options.allowNonFinite);
  const net = new EDM2Precond(config, { init: "zeros" });
  try {
    net.loadStateDict(tensors);
  } catch (e) {
    net.dispose();
    throw new IoError(`${path}: ${(e as Error).message}`);
  }
  return net;
}
