/**
 * The layering of `lib/` (issue 16): the rules of `tools/import_graph.ts` hold for this
 * repository, and the checker finds what it should (a forbidden import, a cycle, imports in doc
 * comments ignored).
 */
import assert from "node:assert/strict";
import { importSpecifiers, layeringViolations, libImportGraph } from "../tools/import_graph.ts";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("import graph: lib/nets, lib/io, lib/runtime, lib/train, lib/diffusion keep their layer; no cycles", async () => {
  const graph = await libImportGraph(ROOT);
  assert.ok(graph.size > 50, `${graph.size} files in lib/`);
  // The edges the rules are about exist at all (the parser sees this repository's imports).
  assert.ok(graph.get("lib/diffusion/teacher_training.ts")!.includes("lib/train/driver.ts"));
  assert.ok(graph.get("lib/distill/train.ts")!.includes("lib/train/driver.ts"));
  assert.deepEqual(layeringViolations(graph), []);
});

Deno.test("import graph: the checker reports forbidden imports and cycles, not doc examples", () => {
  const src = [
    "/**",
    " * @example",
    " * ```ts",
    ' * import { x } from "../distill/x.ts";',
    " * ```",
    " */",
    'import { tf } from "../deps.ts";',
    "import {",
    "  a,",
    "  type B,",
    '} from "./a.ts";',
    'export { c } from "../io/c.ts";',
    'const m = () => import("./lazy.ts");',
    'import "npm:foo";',
  ].join("\n");
  assert.deepEqual(importSpecifiers(src), ["../deps.ts", "./a.ts", "../io/c.ts", "./lazy.ts"]);
  const graph = new Map([
    ["lib/nets/a.ts", ["lib/nets/b.ts", "lib/pipeline/p.ts"]],
    ["lib/nets/b.ts", ["lib/nets/a.ts"]],
    ["lib/diffusion/d.ts", ["lib/distill/s.ts", "lib/train/t.ts"]],
    ["lib/train/t.ts", ["lib/io/c.ts"]],
    ["lib/pipeline/p.ts", ["lib/distill/s.ts"]],
    ["lib/distill/s.ts", []],
    ["lib/io/c.ts", []],
  ]);
  assert.deepEqual(layeringViolations(graph), [
    "lib/nets/a.ts imports lib/pipeline/p.ts (lib/nets must not import lib/pipeline)",
    "lib/diffusion/d.ts imports lib/distill/s.ts (lib/diffusion must not import lib/distill)",
    "import cycle: lib/nets/a.ts -> lib/nets/b.ts -> lib/nets/a.ts",
  ]);
});
