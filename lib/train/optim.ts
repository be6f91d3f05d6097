/**
 * Adam with `torch.optim.Adam` semantics (docs/distillation.md §4.2: β = (0, 0.999) for the fake
 * network,
 * (`--g_beta1` [default 0], 0.999) for G, eps 1e-8 (fp32) or 1e-6 (fp16), no weight decay, no
 * learning-rate schedule, no AMSGrad).
 *
 * Per parameter p with gradient g, at its step t (counted from 1):
 *
 *   m ← β1·m + (1−β1)·g
 *   v ← β2·v + (1−β2)·g²
 *   p ← p − (lr / (1−β1^t)) · m / ( √v / √(1−β2^t) + eps )
 *
 * (eps outside the square root, bias corrections as in PyTorch's single-tensor Adam). A parameter
 * without a gradient in a step is skipped entirely (no moment update, no step count), as PyTorch
 * does for `p.grad is None`.
 *
 * @example
 * ```ts
 * import { tf } from "../deps.ts";
 * import { Adam } from "./optim.ts";
 * const w = tf.variable(tf.ones([3]));
 * const opt = new Adam([["w", w]], { lr: 1e-3 });         // β1 = 0, β2 = 0.999, eps = 1e-8
 * const { grads } = tf.variableGrads(() => tf.sum(tf.square(w)) as tf.Scalar, [w]);
 * opt.step(grads);                                        // keyed by w.name; disposes nothing
 * tf.dispose(grads);
 * ```
 *
 * @module
 */
import { tf } from "../deps.ts";
import { adamApply, adamSecondMoment, lerp } from "../runtime/webgpu/optim.ts";
import type { HostTensor } from "../io/host_tensor.ts";
import { toFloat32 } from "../io/host_tensor.ts";

/** Options of {@linkcode Adam}. */
export interface AdamOptions {
  /** Learning rate (`--lr` for the fake net, `--glr` for G; 1e-5 in the CIFAR scripts). */
  lr: number;
  /** β1. Default 0, the reference's value for both networks (docs/distillation.md §4.2). */
  beta1?: number;
  /** β2. Default 0.999 (docs/distillation.md §4.2). */
  beta2?: number;
  /**
   * eps, added outside the square root. Default 1e-8 (fp32; 1e-6 with fp16, docs/distillation.md
   * §4.2).
   */
  eps?: number;
}

/** A non-trainable variable holding `t`'s value; `t` is disposed. */
function moment(t: tf.Tensor): tf.Variable {
  const v = tf.variable(t, false);
  t.dispose();
  return v;
}

interface ParamState {
  step: number;
  m: tf.Variable;
  v: tf.Variable;
}

/**
 * Adam over a fixed list of tfjs variables, with `torch.optim.Adam` semantics (see the module
 * doc for the update). The moments live in non-trainable variables and are updated in place, so
 * `tf.memory().numTensors` stays flat across steps.
 */
export class Adam {
  /** Learning rate (may be changed between steps; the reference never does). */
  lr: number;
  /** β1 (0 in the reference for the fake net and by default for G, docs/distillation.md §4.2). */
  readonly beta1: number;
  /** β2 (0.999, docs/distillation.md §4.2). */
  readonly beta2: number;
  /** eps, added outside the square root (1e-8 fp32, 1e-6 fp16, docs/distillation.md §4.2). */
  readonly eps: number;
  readonly #params: { name: string; variable: tf.Variable }[];
  readonly #state = new Map<number, ParamState>();

  /**
   * Creates the optimizer; moment state is created lazily at a parameter's first step.
   *
   * @param options lr, β1, β2, eps.
   * @param params the variables, optionally with names (e.g. `net.namedParameters()`); unnamed
   *   ones are named by their index. The names key {@linkcode state} and {@linkcode loadState}.
   */
  constructor(params: (tf.Variable | [string, tf.Variable])[], options: AdamOptions) {
    this.lr = options.lr;
    this.beta1 = options.beta1 ?? 0;
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    for (const [k, v] of [["lr", this.lr], ["eps", this.eps]] as const) {
      if (!(v >= 0) || !Number.isFinite(v)) throw new RangeError(`${k} must be ≥ 0, got ${v}`);
    }
    for (const [k, v] of [["beta1", this.beta1], ["beta2", this.beta2]] as const) {
      if (!(v >= 0 && v < 1)) throw new RangeError(`${k} must be in [0, 1), got ${v}`);
    }
    this.#params = params.map((p, i) =>
      Array.isArray(p) ? { name: p[0], variable: p[1] } : { name: String(i), variable: p }
    );
    const names = new Set(this.#params.map((p) => p.name));
    if (names.size !== this.#params.length) throw new RangeError("duplicate parameter names");
  }

  /** The parameter names, in order. */
  get names(): string[] {
    return this.#params.map((p) => p.name);
  }

  /**
   * One optimizer step. `grads` is either an array aligned with the parameters (`null` or
   * `undefined` = no gradient), or a map keyed by the *tfjs variable name* (`variable.name`, what
   * `tf.variableGrads` returns). Gradients are not disposed.
   */
  step(grads: (tf.Tensor | null | undefined)[] | Record<string, tf.Tensor>): void {
    const list = Array.isArray(grads)
      ? grads
      : this.#params.map((p) => (grads as Record<string, tf.Tensor>)[p.variable.name]);
    if (list.length !== this.#params.length) {
      throw new RangeError(`expected ${this.#params.length} gradients, got ${list.length}`);
    }
    const { beta1, beta2, eps, lr } = this;
    for (let i = 0; i < this.#params.length; i++) {
      const g = list[i];
      if (!g) continue;
      const p = this.#params[i];
      if (g.shape.join() !== p.variable.shape.join()) {
        throw new RangeError(
          `gradient of '${p.name}' has shape [${g.shape}], expected [${p.variable.shape}]`,
        );
      }
      let s = this.#state.get(i);
      if (!s) {
        s = { step: 0, m: moment(tf.zerosLike(p.variable)), v: moment(tf.zerosLike(p.variable)) };
        this.#state.set(i, s);
      }
      s.step += 1;
      const t = s.step;
      const bc1 = 1 - beta1 ** t;
      const bc2Sqrt = Math.sqrt(1 - beta2 ** t);
      const stepSize = lr / bc1;
      const st = s;
      tf.tidy(() => {
        // m.lerp_(g, 1−β1); v.mul_(β2).addcmul_(g, g, 1−β2)  (torch `_single_tensor_adam`)
        // Same arithmetic as the composed tfjs ops; one dispatch each on webgpu (optim.ts there).
        const m = lerp(st.m, g, 1 - beta1);
        const v = adamSecondMoment(st.v, g, beta2);
        st.m.assign(m);
        st.v.assign(v);
        p.variable.assign(adamApply(p.variable, m, v, stepSize, bc2Sqrt, eps));
      });
    }
  }

  /**
   * The optimizer state for a checkpoint: per parameter that has stepped,
   * `<name>.exp_avg`, `<name>.exp_avg_sq` (float32, the variable's shape, our NHWC layout) and
   * `<name>.step` (float64 scalar), the names of `torch.optim.Adam`'s state.
   */
  async state(): Promise<Map<string, HostTensor>> {
    const out = new Map<string, HostTensor>();
    for (const [i, s] of this.#state) {
      const name = this.#params[i].name;
      const shape = [...s.m.shape];
      out.set(`${name}.exp_avg`, {
        dtype: "float32",
        shape,
        data: Float32Array.from(await s.m.data() as Float32Array),
      });
      out.set(`${name}.exp_avg_sq`, {
        dtype: "float32",
        shape,
        data: Float32Array.from(await s.v.data() as Float32Array),
      });
      out.set(`${name}.step`, { dtype: "float64", shape: [], data: new Float64Array([s.step]) });
    }
    return out;
  }

  /**
   * Restores a state written by {@linkcode state}. Parameters absent from the map get fresh
   * (empty) state. Throws on a shape mismatch or a name that is not a parameter.
   */
  loadState(map: Map<string, HostTensor>): void {
    const byName = new Map(this.#params.map((p, i) => [p.name, i]));
    for (const key of map.keys()) {
      const name = key.replace(/\.(exp_avg|exp_avg_sq|step)$/, "");
      if (name === key || !byName.has(name)) {
        throw new RangeError(`unexpected state entry '${key}'`);
      }
    }
    const next = new Map<number, { step: number; m: Float32Array; v: Float32Array }>();
    for (const [name, i] of byName) {
      const m = map.get(`${name}.exp_avg`);
      const v = map.get(`${name}.exp_avg_sq`);
      const st = map.get(`${name}.step`);
      if (!m && !v && !st) continue;
      if (!m || !v || !st) throw new RangeError(`incomplete state for '${name}'`);
      const want = this.#params[i].variable.shape.join();
      if (m.shape.join() !== want || v.shape.join() !== want) {
        throw new RangeError(`state of '${name}' has shape [${m.shape}], expected [${want}]`);
      }
      next.set(i, { step: Number(toFloat32(st)[0]), m: toFloat32(m), v: toFloat32(v) });
    }
    this.#disposeState();
    for (const [i, s] of next) {
      const shape = this.#params[i].variable.shape;
      this.#state.set(i, {
        step: s.step,
        m: moment(tf.tensor(s.m, shape, "float32")),
        v: moment(tf.tensor(s.v, shape, "float32")),
      });
    }
  }

  #disposeState(): void {
    for (const s of this.#state.values()) {
      s.m.dispose();
      s.v.dispose();
    }
    this.#state.clear();
  }

  /** Frees the moment tensors (not the parameters). */
  dispose(): void {
    this.#disposeState();
  }
}
