/**
 * Child process of `webgpu_exit_test.ts` (issue 13, item 1). As the main module it starts
 * `--workers` Workers (this file again, with `?worker`), each of which starts a backend the way
 * every task and test file does (`initBackend`, which asks WebGPU for an adapter) and reports
 * the graphics libraries mapped into the process; then it terminates them all and exits at once,
 * so their teardown races with the process exit (after `--delay` ms) as in `deno test --parallel`. Prints one JSON
 * line: `{ backend, webgpuBackend, graphicsLibraries }`.
 */
import { parseArgs } from "node:util";

/** Shared libraries of an OpenGL/EGL stack (what wgpu's GL backend loads). */
const GL_LIBRARY = /lib(EGL|GLX|GLdispatch)[^/]*\.so|\/dri\/[^/]*\.so/;

function graphicsLibraries(): string[] {
  const found = new Set<string>();
  for (const line of Deno.readTextFileSync("/proc/self/maps").split("\n")) {
    const path = line.slice(line.indexOf("/"));
    if (line.includes("/") && GL_LIBRARY.test(path)) found.add(path);
  }
  return [...found].sort();
}

if (new URL(import.meta.url).search === "?worker") {
  const scope = self as unknown as Worker;
  scope.onmessage = async () => {
    const { initBackend } = await import("../lib/runtime/backend.ts");
    const info = await initBackend();
    scope.postMessage({
      backend: info.name,
      webgpuBackend: Deno.env.get("DENO_WEBGPU_BACKEND") ?? null,
      graphicsLibraries: graphicsLibraries(),
    });
  };
} else {
  const { values } = parseArgs({
    options: {
      workers: { type: "string", default: "4" },
      delay: { type: "string", default: "0" },
    },
  });
  const workers = Array.from(
    { length: Number(values.workers) },
    () => new Worker(new URL("?worker", import.meta.url), { type: "module" }),
  );
  const reports = await Promise.all(workers.map((w) =>
    new Promise<unknown>((resolve, reject) => {
      w.onmessage = (e) => resolve(e.data);
      w.onerror = (e) => reject(new Error(e.message));
      w.postMessage(null);
    })
  ));
  for (const w of workers) w.terminate();
  // Exit while the Workers' isolates are being torn down: 20 ms after terminate() crashed 2 of 40
  // runs before the fix (0 ms: 0 of 40), so the test spreads its runs over several delays.
  await new Promise((resolve) => setTimeout(resolve, Number(values.delay)));
  console.log(JSON.stringify(reports[0]));
}
