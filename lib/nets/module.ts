/**
 * A minimal module system over tfjs variables, with PyTorch-compatible state dicts.
 *
 * Each {@linkcode Module} owns named parameters and buffers and named child modules, so that the
 * dotted names of its tensors are exactly the PyTorch `state_dict()` names of the original
 * network (`model.enc.32x32_conv.weight`). Tensors are held in the layout tfjs wants (conv kernels
 * HWIO, dense kernels `[in, out]`); {@linkcode Module.stateDict} and
 * {@linkcode Module.loadStateDict} convert to and from the PyTorch layout (OIHW, `[out, in]`) at
 * that boundary only.
 *
 * @module
 */
import { tf } from "../deps.ts";
import { type HostTensor, toFloat32 } from "../io/host_tensor.ts";

/**
 * How a tensor's PyTorch layout maps to ours: `conv` is OIHW ↔ HWIO, `linear` is `[out, in]` ↔
 * `[in, out]`, `plain` is unchanged.
 */
export type Layout = "conv" | "linear" | "plain";

/** One tensor a module owns. */
export interface TensorEntry {
  /** The tensor, in our layout. Parameters are trainable; buffers are not. */
  variable: tf.Variable;
  /** `param` (trained) or `buffer` (constant, e.g. a resampling filter). */
  kind: "param" | "buffer";
  /** Layout conversion at the state-dict boundary. */
  layout: Layout;
  /** The shape under PyTorch's layout. */
  torchShape: number[];
}

/** Error for a state dict that does not match a network (missing, unexpected, or wrong-shape tensors). */
export class StateDictError extends Error {
  override name = "StateDictError";
}

/** Converts a PyTorch-layout shape to ours. */
export function toTfShape(torchShape: number[], layout: Layout): number[] {
  if (layout === "conv") {
    const [o, i, kh, kw] = torchShape;
    return [kh, kw, i, o];
  }
  if (layout === "linear") return [torchShape[1], torchShape[0]];
  return [...torchShape];
}

/** Converts a tensor in PyTorch layout to ours (HWIO / `[in, out]`). */
export function fromTorchLayout(t: tf.Tensor, layout: Layout): tf.Tensor {
  if (layout === "conv") return tf.transpose(t, [2, 3, 1, 0]);
  if (layout === "linear") return tf.transpose(t);
  return tf.clone(t);
}

/** Converts a tensor in our layout to PyTorch's (OIHW / `[out, in]`). */
export function toTorchLayout(t: tf.Tensor, layout: Layout): tf.Tensor {
  if (layout === "conv") return tf.transpose(t, [3, 2, 0, 1]);
  if (layout === "linear") return tf.transpose(t);
  return tf.clone(t);
}

let shapesOnly = 0;

/**
 * Runs `build` with every module it constructs registering only the names, kinds and PyTorch
 * shapes of its tensors: each tensor is a one-element placeholder, and no initial value is
 * computed. It checks a checkpoint against an architecture without allocating the architecture
 * (1.5 B parameters for EDM2-XXL). The modules built may only be inspected
 * ({@linkcode Module.namedTensors}: the `torchShape`s) and disposed.
 *
 * @example
 * ```ts
 * import { Module, withShapesOnly } from "./module.ts";
 * const net: Module = withShapesOnly(() => new Module());
 * net.dispose();
 * ```
 */
export function withShapesOnly<T>(build: () => T): T {
  shapesOnly++;
  try {
    return build();
  } finally {
    shapesOnly--;
  }
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** Base class of every network building block. */
export class Module {
  readonly #tensors = new Map<string, TensorEntry>();
  readonly #children = new Map<string, Module>();
  /** Whether the module is in training mode (dropout active). Set for a whole tree with {@linkcode train}. */
  training = false;

  /**
   * Registers a trainable parameter.
   *
   * @param name local name (`weight`, `bias`)
   * @param torchShape its shape in PyTorch's layout
   * @param layout how it converts to our layout
   * @param init makes the initial value, already in our layout
   */
  protected addParam(
    name: string,
    torchShape: number[],
    layout: Layout,
    init: () => tf.Tensor,
  ): tf.Variable {
    return this.#add(name, torchShape, layout, init, "param");
  }

  /** Registers a non-trainable buffer (saved in the state dict, never trained). */
  protected addBuffer(
    name: string,
    torchShape: number[],
    layout: Layout,
    init: () => tf.Tensor,
  ): tf.Variable {
    return this.#add(name, torchShape, layout, init, "buffer");
  }

  #add(
    name: string,
    torchShape: number[],
    layout: Layout,
    init: () => tf.Tensor,
    kind: "param" | "buffer",
  ): tf.Variable {
    if (this.#tensors.has(name) || this.#children.has(name)) {
      throw new Error(`duplicate module entry '${name}'`);
    }
    if (shapesOnly > 0) {
      const zero = tf.zeros([1]);
      const placeholder = tf.variable(zero, false);
      zero.dispose();
      this.#tensors.set(name, { variable: placeholder, kind, layout, torchShape: [...torchShape] });
      return placeholder;
    }
    const value = tf.tidy(init);
    const want = toTfShape(torchShape, layout);
    if (!sameShape(value.shape, want)) {
      value.dispose();
      throw new Error(`init of '${name}' gave shape [${value.shape}], expected [${want}]`);
    }
    const variable = tf.variable(value, kind === "param");
    value.dispose();
    this.#tensors.set(name, { variable, kind, layout, torchShape: [...torchShape] });
    return variable;
  }

  /** Registers a child module under `name` and returns it. */
  protected addChild<M extends Module>(name: string, child: M): M {
    if (this.#tensors.has(name) || this.#children.has(name)) {
      throw new Error(`duplicate module entry '${name}'`);
    }
    this.#children.set(name, child);
    return child;
  }

  /** The child modules, in registration order (which is execution order for U-Net dicts). */
  children(): [string, Module][] {
    return [...this.#children.entries()];
  }

  /** Every tensor of this module and its descendants, with its dotted PyTorch name. */
  namedTensors(prefix = ""): [string, TensorEntry][] {
    const out: [string, TensorEntry][] = [];
    for (const [n, e] of this.#tensors) out.push([prefix + n, e]);
    for (const [n, c] of this.#children) out.push(...c.namedTensors(`${prefix}${n}.`));
    return out;
  }

  /** Trainable parameters with their dotted names. */
  namedParameters(): [string, tf.Variable][] {
    return this.namedTensors().filter(([, e]) => e.kind === "param").map((
      [n, e],
    ) => [n, e.variable]);
  }

  /** The number of trainable parameter elements (what PyTorch's `numel` sum over `parameters()` gives). */
  numParameters(): number {
    let n = 0;
    for (const [, e] of this.namedTensors()) if (e.kind === "param") n += e.variable.size;
    return n;
  }

  /** Sets training mode (dropout on) or evaluation mode for this module and all descendants. */
  train(on = true): this {
    this.training = on;
    for (const [, c] of this.#children) c.train(on);
    return this;
  }

  /** Evaluation mode: same as `train(false)`. */
  eval(): this {
    return this.train(false);
  }

  /**
   * The state dict in PyTorch layout: name → float32 host tensor (OIHW conv kernels, `[out, in]`
   * dense kernels), parameters and buffers, in registration order.
   */
  async stateDict(): Promise<Map<string, HostTensor>> {
    const out = new Map<string, HostTensor>();
    for (const [name, e] of this.namedTensors()) {
      const t = tf.tidy(() => toTorchLayout(e.variable, e.layout));
      const data = await t.data() as Float32Array;
      t.dispose();
      out.set(name, { dtype: "float32", shape: [...e.torchShape], data });
    }
    return out;
  }

  /**
   * Loads a state dict in PyTorch layout. Float16/bfloat16/float64 values are converted to
   * float32. With `strict` (the default) every tensor must be present, with exactly the expected
   * shape, and no extra names are allowed; otherwise extra names are ignored and missing ones
   * keep their values. Nothing is changed if the check fails.
   *
   * @param prefix prepended to our names when looking them up (e.g. `"ema."`)
   */
  loadStateDict(
    state: Map<string, HostTensor> | Record<string, HostTensor>,
    options: { strict?: boolean; prefix?: string } = {},
  ): void {
    const strict = options.strict ?? true;
    const prefix = options.prefix ?? "";
    const map = state instanceof Map ? state : new Map(Object.entries(state));
    const ours = this.namedTensors();
    const missing: string[] = [];
    const wrong: string[] = [];
    for (const [name, e] of ours) {
      const t = map.get(prefix + name);
      if (!t) {
        missing.push(name);
        continue;
      }
      if (!sameShape(t.shape, e.torchShape)) {
        wrong.push(`${name} [${t.shape}] (expected [${e.torchShape}])`);
      }
    }
    const known = new Set(ours.map(([n]) => prefix + n));
    const unexpected = strict
      ? [...map.keys()].filter((k) => k.startsWith(prefix) && !known.has(k))
      : [];
    const problems: string[] = [];
    const list = (xs: string[]) =>
      xs.slice(0, 5).join(", ") + (xs.length > 5 ? `, … (${xs.length} in all)` : "");
    if (strict && missing.length) problems.push(`missing ${list(missing)}`);
    if (wrong.length) problems.push(`wrong shape ${list(wrong)}`);
    if (unexpected.length) problems.push(`unexpected ${list(unexpected)}`);
    if (problems.length) {
      throw new StateDictError(`state dict does not match the network: ${problems.join("; ")}`);
    }
    for (const [name, e] of ours) {
      const t = map.get(prefix + name);
      if (!t) continue;
      const values = toFloat32(t);
      tf.tidy(() => {
        const src = tf.tensor(values, t.shape, "float32");
        e.variable.assign(fromTorchLayout(src, e.layout));
      });
    }
  }

  /** Copies every tensor value from a module of the same structure (names and shapes must match). */
  copyFrom(other: Module): void {
    const theirs = new Map(other.namedTensors());
    const ours = this.namedTensors();
    for (const [name, e] of ours) {
      const t = theirs.get(name);
      if (!t || !sameShape(t.variable.shape, e.variable.shape)) {
        throw new StateDictError(
          `cannot copy: '${name}' missing or of another shape in the source`,
        );
      }
    }
    for (const [name, e] of ours) e.variable.assign(theirs.get(name)!.variable);
  }

  /** Frees every tensor this module owns. The module must not be used afterwards. */
  dispose(): void {
    for (const [, e] of this.#tensors) e.variable.dispose();
    for (const [, c] of this.#children) c.dispose();
  }
}
