/**
 * The native kernel tests (`native_test.ts`, `native_fused_test.ts`, `native_copy_test.ts`) with
 * the C kernels built with AddressSanitizer and UndefinedBehaviorSanitizer: any out-of-bounds or
 * freed-memory access, or undefined behaviour, in `lib/runtime/native/csrc/*.c` fails the run.
 *
 * Runs only with `SIDA_TEST_SANITIZE=1` (`deno task test:sanitize`, at the end of `deno task
 * test`), so that `deno test tests/` does not run the kernel tests a second time. The sanitized
 * library gets its own cache entry (the compiler flags are part of its key), next to the normal
 * build. Skipped, with the reason, when the C compiler has no ASan runtime.
 */
import assert from "node:assert/strict";

const ENABLED = Deno.env.get("SIDA_TEST_SANITIZE") === "1";
const FLAGS = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g";
const KERNEL_TESTS = ["native_test.ts", "native_fused_test.ts", "native_copy_test.ts"];
/** What a sanitizer prints when it finds something. */
const REPORT =
  /ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer/;

const decode = (b: Uint8Array) => new TextDecoder().decode(b);

/** The ASan runtime to preload (Deno itself is not instrumented), or why there is none. */
function asanRuntime(): { path?: string; why?: string } {
  if (Deno.build.os !== "linux") return { why: "sanitizer run set up for Linux only" };
  const cc = Deno.env.get("CC") ?? "cc";
  try {
    const r = new Deno.Command(cc, { args: ["-print-file-name=libasan.so"], stderr: "null" })
      .outputSync();
    const path = decode(r.stdout).trim();
    if (r.success && path.startsWith("/")) {
      Deno.statSync(path);
      return { path };
    }
    return { why: `${cc} has no libasan.so` };
  } catch (e) {
    return { why: `${cc}: ${(e as Error).message}` };
  }
}

const runtime = ENABLED ? asanRuntime() : {};
if (ENABLED && !runtime.path) console.error(`sanitizer tests skipped: ${runtime.why}`);

/** The environment of every sanitized child process. */
function sanitizerEnv(): Record<string, string> {
  return {
    SIDA_NATIVE_CFLAGS: FLAGS,
    LD_PRELOAD: runtime.path!,
    // V8 and Deno keep memory until exit: leaks are not what this run looks for.
    ASAN_OPTIONS: "detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86",
    UBSAN_OPTIONS: "halt_on_error=1:print_stacktrace=1",
    NO_COLOR: "1",
  };
}

async function run(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    env: { ...sanitizerEnv(), ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { ok: out.success, code: out.code, text: decode(out.stdout) + decode(out.stderr) };
}

Deno.test({
  name: "sanitize: an out-of-bounds write in a sanitized library is caught (the check works)",
  ignore: !runtime.path,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "sida-sanitize-" });
    try {
      await Deno.writeTextFile(`${dir}/oob.c`, "void oob(float *p, long n) { p[n] = 1.0f; }\n");
      const cc = Deno.env.get("CC") ?? "cc";
      const built = new Deno.Command(cc, {
        args: [...FLAGS.split(" "), "-shared", "-fPIC", "-o", `${dir}/oob.so`, `${dir}/oob.c`],
        stderr: "piped",
      }).outputSync();
      assert.ok(built.success, decode(built.stderr));
      const code = `const { symbols } = Deno.dlopen("${dir}/oob.so", {
        oob: { parameters: ["buffer", "i64"], result: "void" },
      });
      symbols.oob(new Float32Array(8), 8n); // one past the end
      console.log("not caught");`;
      const r = await run(["eval", code]);
      assert.ok(!r.ok, `the out-of-bounds write went unnoticed:\n${r.text.slice(-2000)}`);
      assert.match(r.text, /heap-buffer-overflow/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "sanitize: the native kernel tests pass with ASan and UBSan on the C kernels",
  ignore: !runtime.path,
  async fn() {
    // Build the sanitized library once, and check that it is the one the tests will use.
    const probe = await run([
      "eval",
      `import { cKernelsUnavailableReason, loadCKernels } from "${
        new URL("../lib/runtime/native/ckernels.ts", import.meta.url).href
      }";
      const c = loadCKernels();
      console.log(c ? "path " + c.path : "none " + cKernelsUnavailableReason());`,
    ]);
    assert.ok(probe.ok, probe.text.slice(-2000));
    const path = probe.text.match(/^path (.*)$/m)?.[1];
    assert.ok(path, `the C kernels did not load with ${FLAGS}: ${probe.text.slice(-2000)}`);
    assert.ok(decode(Deno.readFileSync(path)).includes("__asan_"), `${path} is not instrumented`);

    const tests = KERNEL_TESTS.map((f) => new URL(`./${f}`, import.meta.url).pathname);
    const r = await run(["test", "-A", ...tests]);
    const report = r.text.split("\n").findIndex((l) => REPORT.test(l));
    assert.ok(
      report < 0,
      `sanitizer report:\n${
        r.text.split("\n").slice(Math.max(0, report - 5), report + 60).join("\n")
      }`,
    );
    assert.ok(r.ok, `kernel tests failed (exit ${r.code}):\n${r.text.slice(-4000)}`);
    assert.match(r.text, /ok \| \d+ passed/);
  },
});
