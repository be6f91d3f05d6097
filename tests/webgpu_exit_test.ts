/**
 * Issue 13, item 1: the process must not crash at exit after Workers (or the test files of
 * `deno test --parallel`) started a backend. The crash came from wgpu's OpenGL backend: its EGL
 * driver was unloaded on a Worker's thread while the main thread ran the exit handlers of the
 * same libraries (see docs/reliability.md). `initBackend` now keeps Deno's WebGPU on Vulkan on
 * Linux. Needs Linux (it reads `/proc/self/maps`) and Deno's WebGPU.
 */
import assert from "node:assert/strict";

const DRIVER = new URL("./webgpu_exit_driver.ts", import.meta.url).pathname;
const LINUX = Deno.build.os === "linux";

interface Report {
  backend: string;
  webgpuBackend: string | null;
  graphicsLibraries: string[];
}

/** Runs the driver; returns its exit code, stderr and report. */
async function runDriver(
  args: string[],
  env: Record<string, string | undefined> = {},
): Promise<{ code: number; stderr: string; report?: Report }> {
  const childEnv = { ...Deno.env.toObject() };
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete childEnv[k];
    else childEnv[k] = v;
  }
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", DRIVER, ...args],
    env: childEnv,
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "";
  return {
    code: out.code,
    stderr: new TextDecoder().decode(out.stderr),
    report: stdout.startsWith("{") ? JSON.parse(stdout) : undefined,
  };
}

Deno.test({
  name: "initBackend keeps Deno's WebGPU off OpenGL/EGL on Linux, unless the user chose backends",
  ignore: !LINUX,
  async fn() {
    const plain = await runDriver(["--workers", "2"], { DENO_WEBGPU_BACKEND: undefined });
    assert.equal(plain.code, 0, plain.stderr);
    assert.ok(plain.report, plain.stderr);
    assert.equal(plain.report.webgpuBackend, "vulkan");
    assert.deepEqual(plain.report.graphicsLibraries, [], "no EGL/DRI library was loaded");

    const chosen = await runDriver(["--workers", "1"], { DENO_WEBGPU_BACKEND: "vk" });
    assert.equal(chosen.code, 0, chosen.stderr);
    assert.equal(chosen.report?.webgpuBackend, "vk", "an explicit choice is kept");
  },
});

Deno.test({
  name: "no crash at exit after Workers started a backend and were terminated (16 runs)",
  ignore: !LINUX,
  async fn() {
    const failures: string[] = [];
    for (let i = 0; i < 16; i++) {
      const delay = [0, 5, 10, 20, 40][i % 5];
      const r = await runDriver(["--workers", "4", "--delay", String(delay)], {
        DENO_WEBGPU_BACKEND: undefined,
      });
      const heap = /corrupted|malloc|free\(\)|double free|Segmentation/.exec(r.stderr);
      if (r.code !== 0 || heap || !r.report) {
        failures.push(`run ${i} (delay ${delay} ms): exit ${r.code} ${heap?.[0] ?? ""}`);
      }
    }
    assert.deepEqual(failures, []);
  },
});
