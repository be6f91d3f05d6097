/**
 * `bench/snapshot_average.ts`: the mean of float32 tensors over snapshots, other tensors from the
 * first, and one-line errors for snapshots that do not match.
 */
import { assertEquals, assertThrows } from "./metrics_asserts.ts";
import { averageTensors } from "../bench/snapshot_average.ts";
import type { HostTensor } from "../lib/io/host_tensor.ts";

const f32 = (shape: number[], v: number[]): HostTensor => ({
  dtype: "float32",
  shape,
  data: Float32Array.from(v),
});

Deno.test("averageTensors: element-wise means, non-float tensors from the first", () => {
  const step = (k: number) => ({ dtype: "int32" as const, shape: [1], data: Int32Array.of(k) });
  const a = new Map([["w", f32([2, 2], [1, 2, 3, 4])], ["b", f32([1], [0.1])], ["n", step(7)]]);
  const b = new Map([["w", f32([2, 2], [3, 2, 1, 0])], ["b", f32([1], [0.2])], ["n", step(9)]]);
  const c = new Map([["w", f32([2, 2], [2, 5, 8, -1])], ["b", f32([1], [0.6])], ["n", step(1)]]);
  const m = averageTensors([a, b, c]);
  assertEquals([...m.keys()], ["w", "b", "n"]);
  assertEquals([...m.get("w")!.data], [2, 3, 4, 1]);
  assertEquals(m.get("w")!.shape, [2, 2]);
  assertEquals(m.get("b")!.data[0], Math.fround(0.9 / 3));
  assertEquals([...m.get("n")!.data], [7]);
  // One snapshot: itself.
  assertEquals([...averageTensors([b]).get("w")!.data], [3, 2, 1, 0]);
});

Deno.test("averageTensors: snapshots that do not match are errors naming the tensor", () => {
  const a = new Map([["w", f32([2], [1, 2])]]);
  assertThrows(
    () => averageTensors([a, new Map([["w", f32([1, 2], [1, 2])]])], ["A", "B"]),
    RangeError,
    "B: tensor 'w' is float32[1,2], A has float32[2]",
  );
  assertThrows(
    () => averageTensors([a, new Map()], ["A", "B"]),
    RangeError,
    "B: tensor 'w' missing",
  );
  assertThrows(
    () => averageTensors([a, new Map([["w", f32([2], [1, 2])], ["v", f32([1], [0])]])], ["A", "B"]),
    RangeError,
    "B: tensor 'v' not in A",
  );
  assertThrows(() => averageTensors([]), RangeError, "no snapshot");
});
