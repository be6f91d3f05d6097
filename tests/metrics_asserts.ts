/** Small assertion helpers for the metrics tests (node:assert underneath; no JSR imports). */
import nodeAssert from "node:assert/strict";

/** Fails with `msg` unless `cond` holds. */
export function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new Error(msg);
}

/** Deep strict equality (typed arrays compared element by element). */
export function assertEquals(actual: unknown, expected: unknown, msg?: string): void {
  if (msg === undefined) nodeAssert.deepStrictEqual(actual, expected);
  else nodeAssert.deepStrictEqual(actual, expected, msg);
}

/** |actual − expected| ≤ tol. */
export function assertAlmostEquals(actual: number, expected: number, tol = 1e-7): void {
  if (!(Math.abs(actual - expected) <= tol)) {
    throw new Error(`expected ${expected} ± ${tol}, got ${actual}`);
  }
}

type ErrorClass = abstract new (...args: never[]) => Error;

function check(e: unknown, cls?: ErrorClass, includes?: string): void {
  if (cls && !(e instanceof cls)) {
    throw new Error(`expected ${cls.name}, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
  }
  if (includes && !String((e as Error)?.message).includes(includes)) {
    throw new Error(`error message '${(e as Error)?.message}' does not include '${includes}'`);
  }
}

/** `fn` throws (an instance of `cls`, with `includes` in its message). */
export function assertThrows(fn: () => unknown, cls?: ErrorClass, includes?: string): void {
  try {
    fn();
  } catch (e) {
    check(e, cls, includes);
    return;
  }
  throw new Error("expected an error");
}

/** `fn` rejects (with an instance of `cls`, with `includes` in its message). */
export async function assertRejects(
  fn: () => Promise<unknown>,
  cls?: ErrorClass,
  includes?: string,
): Promise<void> {
  try {
    await fn();
  } catch (e) {
    check(e, cls, includes);
    return;
  }
  throw new Error("expected a rejection");
}
