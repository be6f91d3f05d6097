/**
 * A tiny pickle writer for hand-made test inputs (hostile ones included): each method appends
 * one opcode (Python's `pickletools` names), `bytes()` ends the pickle with STOP.
 *
 * @example
 * ```ts
 * import { PickleWriter } from "./pickle_writer.ts";
 * const w = new PickleWriter();
 * w.emptyDict().mark().str("a").int(1).setItems(); // {"a": 1}
 * const bytes = w.bytes();
 * ```
 */
const enc = new TextEncoder();

/** Appends pickle opcodes; every method returns `this`. */
export class PickleWriter {
  #out: number[] = [];

  /** Starts a protocol-4 pickle (`PROTO 4`). */
  constructor() {
    this.#out.push(0x80, 4);
  }

  /** Raw bytes. */
  raw(...b: number[]): this {
    this.#out.push(...b);
    return this;
  }

  /** `BINUNICODE` of `s`. */
  str(s: string): this {
    const b = enc.encode(s);
    const n = b.length;
    this.#out.push(0x58, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >>> 24) & 0xff, ...b);
    return this;
  }

  /** `BININT` (any 32-bit signed integer). */
  int(v: number): this {
    this.#out.push(0x4a, v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff);
    return this;
  }

  /** `BINFLOAT`. */
  float(v: number): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, false);
    this.#out.push(0x47, ...b);
    return this;
  }

  /** `NONE`, `NEWTRUE`, `NEWFALSE`. */
  none(): this {
    return this.raw(0x4e);
  }
  bool(v: boolean): this {
    return this.raw(v ? 0x88 : 0x89);
  }

  /** `GLOBAL module\nname\n`. */
  global(module: string, name: string): this {
    this.#out.push(0x63, ...enc.encode(`${module}\n${name}\n`));
    return this;
  }

  /** `POP`. */
  pop(): this {
    return this.raw(0x30);
  }
  mark(): this {
    return this.raw(0x28);
  }
  emptyDict(): this {
    return this.raw(0x7d);
  }
  emptyList(): this {
    return this.raw(0x5d);
  }
  emptyTuple(): this {
    return this.raw(0x29);
  }
  /** `LIST` (from the last MARK). */
  list(): this {
    return this.raw(0x6c);
  }
  /** `TUPLE` (from the last MARK). */
  tuple(): this {
    return this.raw(0x74);
  }
  tuple1(): this {
    return this.raw(0x85);
  }
  /** `SETITEMS` (from the last MARK). */
  setItems(): this {
    return this.raw(0x75);
  }
  reduce(): this {
    return this.raw(0x52);
  }
  newObj(): this {
    return this.raw(0x81);
  }
  build(): this {
    return this.raw(0x62);
  }
  /** `LONG_BINPUT i`. */
  put(i: number): this {
    return this.raw(0x72, i & 0xff, (i >> 8) & 0xff, (i >> 16) & 0xff, (i >>> 24) & 0xff);
  }
  /** `LONG_BINGET i`. */
  get(i: number): this {
    return this.raw(0x6a, i & 0xff, (i >> 8) & 0xff, (i >> 16) & 0xff, (i >>> 24) & 0xff);
  }

  /**
   * A `torch_utils.persistence` object of class `className` whose state (`__dict__`) is written
   * by `state` (which must push exactly one dict).
   */
  persistent(className: string, state: (w: this) => void): this {
    this.global("torch_utils.persistence", "_reconstruct_persistent_obj");
    this.emptyDict().mark();
    this.str("type").str("class");
    this.str("version").int(6);
    this.str("module_src").str("# not run\n");
    this.str("class_name").str(className);
    this.str("state");
    state(this);
    this.setItems().tuple1().reduce();
    return this;
  }

  /** A dict of string keys; each value is written by its function. */
  dict(entries: Record<string, (w: this) => void>): this {
    this.emptyDict();
    const keys = Object.keys(entries);
    if (keys.length === 0) return this;
    this.mark();
    for (const k of keys) {
      this.str(k);
      entries[k](this);
    }
    return this.setItems();
  }

  /** The pickle, ended with `STOP`. */
  bytes(): Uint8Array {
    return new Uint8Array([...this.#out, 0x2e]);
  }
}
