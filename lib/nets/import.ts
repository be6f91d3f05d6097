/**
 * Importing networks from the official PyTorch files: EDM / SiD / SiDA pickles (`*.pkl`) and
 * `torch.save` checkpoints (`*.pt`, `*.pth`), read with the safe reader of `io/torch_file.ts`.
 *
 * The architecture comes from the file: the class name and `_init_kwargs` of the pickled network
 * (`EDMPrecond` with a `SongUNet` or `DhariwalUNet`, or SiDA's `EDMPrecond_EncoderDecoder`),
 * and the weights from its module state under their PyTorch names (`model.…`).
 *
 * @example
 * ```ts
 * import { describeImport, importNetwork } from "./import.ts";
 * const { net, summary } = await importNetwork("edm-cifar10-32x32-cond-vp.pkl");
 * console.log(describeImport(summary));
 * ```
 *
 * @module
 */
import {
  checkFiniteWeights,
  type DType,
  type HostTensor,
  IoError,
  nonFiniteAllowedByDefault,
  printable,
  toFloat32,
} from "../io/host_tensor.ts";
import {
  isPersistentRecord,
  PyDict,
  PyObject,
  PyTuple,
  type PyValue,
  TensorRef,
} from "../io/pickle.ts";
import { writeSafetensors } from "../io/safetensors.ts";
import {
  moduleState,
  openTorchFile,
  readTensor,
  stateDictOf,
  toPlain,
  type TorchFile,
  type TorchFileFormat,
} from "../io/torch_file.ts";
import { ConfigError, EDM_PRECOND_ARGS, fromEdmKwargs, type NetworkConfig } from "./config.ts";
import { networkMetadata } from "./metadata.ts";
import { EDMPrecond } from "./precond.ts";

/** Options of {@linkcode importNetwork}. */
export interface ImportOptions {
  /**
   * Which object of the file is the network: a key of the top-level dict (dots descend into
   * nested dicts), e.g. `fake_score`. Default: the first of `ema`, `G_ema`, `net`,
   * `G_ema_state`, `model` present, or the top-level object itself.
   */
  key?: string;
  /**
   * The configuration, for files that hold a bare state dict (SiDA `training-state-*.pt`);
   * ignored when the file records the architecture.
   */
  config?: NetworkConfig;
  /**
   * Accept weights that hold NaN or infinite values (default: refuse them with an
   * {@linkcode IoError}, unless `SIDA_ALLOW_NONFINITE=1`).
   */
  allowNonFinite?: boolean;
}

/** What an import found; printed by the `import-teacher` task. */
export interface ImportSummary {
  /** The input file. */
  path: string;
  /** Its container format. */
  format: TorchFileFormat;
  /** The key the network was taken from (`""` for the top-level object). */
  key: string;
  /** The Python class of the pickled network (`state_dict` for a bare state dict). */
  className: string;
  /** The backbone. */
  architecture: "SongUNet" | "DhariwalUNet";
  /** Image resolution. */
  resolution: number;
  /** Image channels. */
  channels: number;
  /** Number of classes (0 = unconditional). */
  labelDim: number;
  /** Trainable parameter elements. */
  paramCount: number;
  /** Tensors in the state dict (parameters and buffers). */
  tensorCount: number;
  /** Distinct dtypes of the source tensors, e.g. `["float32"]`. */
  sourceDtypes: DType[];
  /** SHA-256 of the embedded module source, when the network is a persistent record. */
  moduleSrcHash?: string;
  /** The resolved configuration. */
  config: NetworkConfig;
}

const DEFAULT_KEYS = ["ema", "G_ema", "net", "G_ema_state", "model"];
const PRECOND_CLASSES = new Set(["EDMPrecond", "EDMPrecond_EncoderDecoder"]);
const POSITIONAL = EDM_PRECOND_ARGS;

interface Plan {
  file: TorchFile;
  config: NetworkConfig;
  tensors: Map<string, TensorRef>;
  summary: Omit<ImportSummary, "paramCount">;
}

function dictGet(d: PyValue, key: string): PyValue | undefined {
  if (d instanceof PyDict) return d.has(key) ? d.get(key) : undefined;
  if (d instanceof PyObject && d.dictItems?.has(key)) return d.dictItems.get(key);
  return undefined;
}

function keysOf(d: PyValue): string[] {
  const m = d instanceof PyDict ? d : d instanceof PyObject ? d.dictItems : undefined;
  return m ? [...m.keys()].filter((k): k is string => typeof k === "string") : [];
}

function selectObject(root: PyValue, path: string, key?: string): { obj: PyValue; key: string } {
  if (key !== undefined && key !== "") {
    let cur: PyValue = root;
    for (const part of key.split(".")) {
      const next = dictGet(cur, part);
      if (next === undefined) {
        const avail = keysOf(cur);
        throw new IoError(
          `${path}: no object '${key}' in the file (keys: ${
            avail.length ? avail.join(", ") : "none"
          })`,
        );
      }
      cur = next;
    }
    return { obj: cur, key };
  }
  if (isPersistentRecord(root)) return { obj: root, key: "" };
  for (const k of DEFAULT_KEYS) {
    const v = dictGet(root, k);
    if (v !== undefined && v !== null) return { obj: v, key: k };
  }
  const avail = keysOf(root);
  throw new IoError(
    `${path}: no network found (looked for ${DEFAULT_KEYS.join(", ")}; keys: ${
      avail.length ? avail.join(", ") : "none"
    }); choose one with --key`,
  );
}

function kwargsOf(rec: PyValue, path: string): Record<string, unknown> {
  const state = moduleState(rec)!;
  const kw = toPlain(state.get("_init_kwargs") ?? new PyDict(), `${path}: _init_kwargs`);
  if (kw === null || typeof kw !== "object" || Array.isArray(kw)) {
    throw new IoError(`${path}: _init_kwargs is not a dict`);
  }
  const out: Record<string, unknown> = { ...kw };
  const args = state.get("_init_args");
  if (args instanceof PyTuple) {
    if (args.items.length > POSITIONAL.length) throw new IoError(`${path}: too many _init_args`);
    args.items.forEach((a, i) => out[POSITIONAL[i]] = toPlain(a, `${path}: _init_args`));
  }
  return out;
}

function plan(path: string, options: ImportOptions): Plan {
  const file = openTorchFile(path);
  try {
    const { obj, key } = selectObject(file.root, path, options.key);
    const where = key ? `'${key}'` : "the top-level object";
    let config: NetworkConfig;
    let className: string;
    let moduleSrcHash: string | undefined;
    if (isPersistentRecord(obj)) {
      className = obj.className;
      moduleSrcHash = obj.moduleSrcHash;
      if (className === "Precond" || className.startsWith("EDM_2_Precond")) {
        throw new IoError(
          `${path}: ${where} is an EDM2 network (${className}); load it with importEdm2Network / loadEdm2Network (lib/nets/import_edm2.ts)`,
        );
      }
      if (!PRECOND_CLASSES.has(className)) {
        throw new IoError(
          `${path}: ${where} is a '${className}', not a supported network class (EDMPrecond, EDMPrecond_EncoderDecoder)`,
        );
      }
      const kw = kwargsOf(obj, path);
      const mt = kw.model_type ??
        (className === "EDMPrecond" ? "DhariwalUNet" : "SongUNet_EncoderDecoder");
      if (typeof mt !== "string") throw new IoError(`${path}: model_type is not a string`);
      kw.model_type = mt.replace(/_EncoderDecoder$/, "");
      try {
        config = fromEdmKwargs(kw);
      } catch (e) {
        if (e instanceof ConfigError) {
          throw new IoError(`${path}: ${where} (${className}): ${e.message}`);
        }
        throw e;
      }
      const model = dictGet(moduleState(obj)!.get("_modules") ?? null, "model");
      if (
        isPersistentRecord(model) &&
        model.className.replace(/_EncoderDecoder$/, "") !== config.unet.arch
      ) {
        throw new IoError(
          `${path}: the backbone is a '${model.className}' but model_type says ${config.unet.arch}`,
        );
      }
    } else if (obj instanceof PyDict && [...obj.values()].some((v) => v instanceof TensorRef)) {
      className = "state_dict";
      if (!options.config) {
        throw new IoError(
          `${path}: ${where} is a bare state dict without an architecture; give the configuration (--preset or --config)`,
        );
      }
      config = options.config;
    } else if (obj instanceof PyObject) {
      throw new IoError(`${path}: ${where} is a '${obj.className}', not a supported network class`);
    } else {
      throw new IoError(`${path}: ${where} is not a network`);
    }
    const tensors = stateDictOf(obj);
    const dtypes = [...new Set([...tensors.values()].map((t) => t.dtype))];
    return {
      file,
      config,
      tensors,
      summary: {
        path,
        format: file.format,
        key,
        className,
        architecture: config.unet.arch,
        resolution: config.imgResolution,
        channels: config.imgChannels,
        labelDim: config.labelDim,
        tensorCount: tensors.size,
        sourceDtypes: dtypes,
        moduleSrcHash,
        config,
      },
    };
  } catch (e) {
    file.close();
    throw e;
  }
}

/** Checks names and shapes of `tensors` against `net` (exactly the same set). */
function checkAgainst(net: EDMPrecond, tensors: Map<string, TensorRef>, path: string): void {
  const ours = net.namedTensors();
  const problems: string[] = [];
  const missing = ours.filter(([n]) => !tensors.has(n)).map(([n]) => n);
  const known = new Set(ours.map(([n]) => n));
  const unexpected = [...tensors.keys()].filter((n) => !known.has(n));
  const wrong = ours.filter(([n, e]) => {
    const t = tensors.get(n);
    return t && t.shape.join(",") !== e.torchShape.join(",");
  }).map(([n, e]) => `${n} [${tensors.get(n)!.shape}] (expected [${e.torchShape}])`);
  const list = (xs: string[]) =>
    xs.slice(0, 5).join(", ") + (xs.length > 5 ? `, … (${xs.length} in all)` : "");
  if (missing.length) problems.push(`missing ${list(missing)}`);
  if (wrong.length) problems.push(`wrong shape ${list(wrong)}`);
  if (unexpected.length) problems.push(`unexpected ${list(unexpected)}`);
  if (problems.length) {
    throw new IoError(
      `${path}: the weights do not match the recorded architecture: ${problems.join("; ")}`,
    );
  }
}

function float32Tensor(
  name: string,
  ref: TensorRef,
  path: string,
  options: ImportOptions,
): HostTensor {
  const t = readTensor(ref);
  const f = t.dtype === "float32"
    ? t
    : { dtype: "float32" as const, shape: t.shape, data: toFloat32(t) };
  checkFiniteWeights([[name, f]], path, options.allowNonFinite ?? nonFiniteAllowedByDefault());
  return f;
}

/**
 * Reads a network from a PyTorch file (`.pkl`, `.pt`, `.pth`): chooses the object (see
 * {@linkcode ImportOptions.key}), builds the architecture its class and `_init_kwargs` record,
 * checks that the weights match it exactly (names and shapes), and loads them (float16 and
 * bfloat16 converted to float32, strided views materialised). Tensors are read from the file
 * one at a time.
 *
 * @throws {IoError} for a malformed, truncated or unsafe file, an unsupported class (naming
 *   it), or weights that do not match the architecture.
 */
export async function importNetwork(
  path: string,
  options: ImportOptions = {},
): Promise<{ net: EDMPrecond; summary: ImportSummary }> {
  await Promise.resolve(); // errors of the (synchronous) reading below become rejections
  const p = plan(path, options);
  let net: EDMPrecond | undefined;
  try {
    net = new EDMPrecond(p.config, { init: "zeros" });
    checkAgainst(net, p.tensors, path);
    for (const [name, ref] of p.tensors) {
      net.loadStateDict(new Map([[name, float32Tensor(name, ref, path, options)]]), {
        strict: false,
      });
    }
    return { net, summary: { ...p.summary, paramCount: net.numParameters() } };
  } catch (e) {
    net?.dispose();
    throw e;
  } finally {
    p.file.close();
  }
}

/**
 * Converts a PyTorch file to a network safetensors file, with the same content
 * {@linkcode saveNetwork} writes for the imported network (float32 tensors under their PyTorch
 * names, the config in the metadata). Everything is validated before the output is created, and
 * the output is written atomically. Uses about one copy of the float32 weights in memory.
 *
 * @throws {IoError} as {@linkcode importNetwork}; nothing is written then.
 */
export async function importToSafetensors(
  input: string,
  output: string,
  options: ImportOptions = {},
): Promise<ImportSummary> {
  const p = plan(input, options);
  try {
    const net = new EDMPrecond(p.config, { init: "zeros" });
    let metadata: Record<string, string>;
    let paramCount: number;
    try {
      checkAgainst(net, p.tensors, input);
      metadata = networkMetadata(net);
      paramCount = net.numParameters();
    } finally {
      net.dispose();
    }
    const host = new Map<string, HostTensor>();
    for (const [name, ref] of p.tensors) host.set(name, float32Tensor(name, ref, input, options));
    await writeSafetensors(output, host, metadata);
    return { ...p.summary, paramCount };
  } finally {
    p.file.close();
  }
}

/**
 * A short multi-line description of an import: class, architecture, resolution, channels, label
 * dimension, parameter count and source dtype.
 */
export function describeImport(s: ImportSummary): string {
  const lines = [
    ["source", `${s.path} (${s.format}${s.key ? `, key '${s.key}'` : ""})`],
    ["class", s.className],
    ["architecture", s.architecture],
    ["resolution", `${s.resolution}x${s.resolution}`],
    ["channels", String(s.channels)],
    ["label dim", String(s.labelDim)],
    ["parameters", s.paramCount.toLocaleString("en-US")],
    ["tensors", String(s.tensorCount)],
    ["source dtype", s.sourceDtypes.join(", ") || "-"],
  ];
  // Class names and keys come from the file: escaped, so that they cannot drive the terminal.
  return lines.map(([k, v]) => `${k.padEnd(13)} ${printable(v)}`).join("\n");
}
