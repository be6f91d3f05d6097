/**
 * The layering of `lib/`, checked on the import graph (`deno task check` runs this; so does
 * `tests/import_graph_test.ts`):
 *
 * - `lib/nets`, `lib/io` and `lib/runtime` (the foundations) import nothing from `lib/train`,
 *   `lib/distill`, `lib/diffusion` or `lib/pipeline`;
 * - `lib/train` (the run driver shared by teacher training and distillation) imports nothing from
 *   `lib/distill`, `lib/diffusion` or `lib/pipeline`;
 * - `lib/diffusion` (EDM: sampler, loss, teacher training) imports nothing from `lib/distill` or
 *   `lib/pipeline`;
 * - no two files of `lib/` import each other, directly or through others (no cycles).
 *
 * Imports are the `import … from` / `export … from` statements that start a line and dynamic
 * `import("…")` calls with a literal path; examples in doc comments do not count.
 *
 * Usage: `deno run --allow-read tools/import_graph.ts` (exit status 1 and one line per violation
 * when the layering is broken).
 *
 * @module
 */
import { dirname, join, normalize, relative } from "node:path";

/** A rule: files under `from` must not import files under any of `not`. */
export interface LayerRule {
  from: string;
  not: string[];
}

/** The rules of this repository (folders relative to the repository root). */
export const LAYER_RULES: readonly LayerRule[] = [
  { from: "lib/nets", not: ["lib/train", "lib/distill", "lib/diffusion", "lib/pipeline"] },
  { from: "lib/io", not: ["lib/train", "lib/distill", "lib/diffusion", "lib/pipeline"] },
  { from: "lib/runtime", not: ["lib/train", "lib/distill", "lib/diffusion", "lib/pipeline"] },
  { from: "lib/train", not: ["lib/distill", "lib/diffusion", "lib/pipeline"] },
  { from: "lib/diffusion", not: ["lib/distill", "lib/pipeline"] },
];

const STATIC_RE =
  /^(?:import|export)\b[^;]*?\bfrom\s*["']([^"']+)["']|^import\s*["']([^"']+)["']/gm;
const DYNAMIC_RE = /\bimport\(\s*["']([^"']+)["']\s*\)/g;

/** The relative import specifiers of a TypeScript source (see the module doc). */
export function importSpecifiers(source: string): string[] {
  // Drop block comments (doc examples) before looking at dynamic imports.
  const code = source.replace(/\/\*[\s\S]*?\*\//g, "");
  const out: string[] = [];
  for (const m of code.matchAll(STATIC_RE)) out.push(m[1] ?? m[2]);
  for (const m of code.matchAll(DYNAMIC_RE)) out.push(m[1]);
  return out.filter((s) => s.startsWith("."));
}

async function tsFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) out.push(...await tsFiles(p));
    else if (e.isFile && e.name.endsWith(".ts")) out.push(p);
  }
  return out;
}

/** The import graph of `lib/` under `root`: file → the `lib/` files it imports (relative paths). */
export async function libImportGraph(root: string): Promise<Map<string, string[]>> {
  const graph = new Map<string, string[]>();
  for (const abs of (await tsFiles(join(root, "lib"))).sort()) {
    const file = relative(root, abs);
    const deps = importSpecifiers(await Deno.readTextFile(abs))
      .map((s) => normalize(join(dirname(file), s)))
      .filter((d) => d.startsWith("lib/"));
    graph.set(file, [...new Set(deps)]);
  }
  return graph;
}

const under = (file: string, dir: string) => file === dir || file.startsWith(dir + "/");

/** Every violation of the rules and every cycle, one line each (empty when the layering holds). */
export function layeringViolations(
  graph: Map<string, string[]>,
  rules: readonly LayerRule[] = LAYER_RULES,
): string[] {
  const out: string[] = [];
  for (const [file, deps] of graph) {
    for (const rule of rules) {
      if (!under(file, rule.from)) continue;
      for (const d of deps) {
        const bad = rule.not.find((n) => under(d, n));
        if (bad) out.push(`${file} imports ${d} (${rule.from} must not import ${bad})`);
      }
    }
  }
  // Cycles: depth-first search, reporting each cycle once by its smallest file.
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const seen = new Set<string>();
  const visit = (f: string) => {
    state.set(f, "open");
    stack.push(f);
    for (const d of graph.get(f) ?? []) {
      if (!graph.has(d)) continue;
      if (state.get(d) === "open") {
        const cycle = stack.slice(stack.indexOf(d));
        const start = cycle.indexOf([...cycle].sort()[0]);
        const key = [...cycle.slice(start), ...cycle.slice(0, start)].join(" -> ");
        if (!seen.has(key)) {
          seen.add(key);
          out.push(`import cycle: ${key} -> ${cycle[start]}`);
        }
      } else if (!state.has(d)) visit(d);
    }
    stack.pop();
    state.set(f, "done");
  };
  for (const f of graph.keys()) if (!state.has(f)) visit(f);
  return out;
}

if (import.meta.main) {
  const root = new URL("..", import.meta.url).pathname;
  const problems = layeringViolations(await libImportGraph(root));
  for (const p of problems) console.error(`error: ${p}`);
  if (problems.length) Deno.exit(1);
  console.error(`import graph of lib/: layering holds (${LAYER_RULES.length} rules, no cycles)`);
}
