/**
 * The notebooks of `notebooks/` on the Deno kernel.
 *
 * Every notebook: its code cells import only `../mod.ts` (the public API, imported by path as a
 * user imports it by URL) and never reach into `lib/`; stored outputs are at most a few KB (none,
 * as committed).
 *
 * The quickstart, `notebooks/quickstart.ipynb`:
 *
 * - as committed: a Deno-kernel notebook with no stored outputs, importing `../mod.ts`, pointing
 *   to `deno task distill`;
 * - its code cells, joined in order, type-check against the current `mod.ts` (no Jupyter needed);
 * - executed top to bottom by the Deno kernel through Jupyter (nbclient), into a temporary file
 *   (the committed notebook is never written): no error, every code cell ran, a known backend,
 *   the teacher loaded (or clearly flagged as untrained when `data/mnist-teacher.safetensors` is
 *   absent), finite losses on every iteration line, and at least two inline PNG grids of the
 *   expected size.
 *
 * `cifar10.ipynb` and `imagenet64.ipynb`: parameters in the first cell, a markdown explanation
 * per stage, type-checked code; executed (a copy whose run folder is in a temporary directory)
 * in their smoke configuration: no cell error, the first output line says SMOKE, no control
 * characters in any saved output, one progress display holding its final state, a FID table,
 * two plots and three grids of one row per class (teacher, this run's generator, the released-
 * format generator fixture), no tensor left. The CIFAR-10 run also presses the kernel's stop
 * button (SIGINT to the kernel's process group, as Jupyter does) during the distillation: the
 * cell ends with the SiD stage interrupted, the kernel lives, and executing the cell again
 * resumes it.
 *
 * The execution test is skipped, saying why, only when no Python with nbclient, nbformat and
 * jupyter_client is found, or when the `deno` kernelspec is missing and `deno jupyter --install`
 * cannot add it. The Python is `SIDA_JUPYTER_PYTHON` if set, else the first of `/usr/bin/python3`,
 * `python3`, `python` that imports those modules (a pyenv `python3` on PATH usually does not;
 * Debian's `python3-nbclient` lives in `/usr/bin/python3`).
 */
import assert from "node:assert/strict";
import { fastPng } from "../lib/deps.ts";
import { BACKEND_NAMES } from "../mod.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const NOTEBOOK_DIR = `${ROOT}notebooks`;
const NOTEBOOK = `${NOTEBOOK_DIR}/quickstart.ipynb`;
const TEACHER = `${ROOT}data/mnist-teacher.safetensors`;
const SHIPPED = `${ROOT}data/mnist-generator.safetensors`;

/** The notebook's grids: one row of 8 images, 32×32 upscaled 3×, 2-pixel gaps (`imageGridPng`). */
const GRID_IMAGES = 8;
const GRID_TILE = 32 * 3;
const GRID_WIDTH = GRID_IMAGES * GRID_TILE + (GRID_IMAGES - 1) * 2; // 782
const GRID_HEIGHT = GRID_TILE; // 96

/** Per-cell limit of nbclient, and the limit of the whole execution (generous: shared 2 cores). */
const CELL_TIMEOUT_S = 900;
const TOTAL_TIMEOUT_MS = 30 * 60 * 1000;

interface Output {
  output_type: string;
  name?: string;
  text?: string | string[];
  data?: Record<string, unknown>;
  ename?: string;
  evalue?: string;
  traceback?: string[];
}

interface Cell {
  cell_type: string;
  id?: string;
  source: string | string[];
  execution_count?: number | null;
  outputs?: Output[];
}

interface Notebook {
  nbformat: number;
  metadata: {
    kernelspec?: { name?: string; language?: string };
    language_info?: { name?: string };
  };
  cells: Cell[];
}

const joined = (s: string | string[] | undefined) => Array.isArray(s) ? s.join("") : s ?? "";
// deno-lint-ignore no-control-regex
const stripAnsi = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, "");

async function run(
  cmd: string,
  args: string[],
  options: { cwd?: string; signal?: AbortSignal } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd: options.cwd,
    signal: options.signal,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function tryRun(cmd: string, args: string[]) {
  try {
    return await run(cmd, args);
  } catch (e) {
    return { code: -1, stdout: "", stderr: (e as Error).message };
  }
}

/** A Python that imports nbclient, nbformat and jupyter_client, or why there is none. */
async function findPython(): Promise<{ python?: string; why: string }> {
  const fromEnv = Deno.env.get("SIDA_JUPYTER_PYTHON");
  const candidates = fromEnv ? [fromEnv] : ["/usr/bin/python3", "python3", "python"];
  const tried: string[] = [];
  for (const py of candidates) {
    const r = await tryRun(py, [
      "-c",
      "import nbclient, nbformat, jupyter_client; print(nbclient.__version__)",
    ]);
    if (r.code === 0) return { python: py, why: `${py} (nbclient ${r.stdout.trim()})` };
    const last = stripAnsi(r.stderr).trim().split("\n").at(-1) || `exit ${r.code}`;
    tried.push(`${py}: ${last}`);
  }
  return { why: `no Python with nbclient, nbformat and jupyter_client (${tried.join("; ")})` };
}

const KERNELSPEC_PY = `
import json
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
try:
    s = KernelSpecManager().get_kernel_spec("deno")
    print(json.dumps({"argv": s.argv, "language": s.language}))
except NoSuchKernel:
    print("null")
`;

/** The `deno` kernelspec's argv, or null when there is none. */
async function denoKernelspec(python: string): Promise<string[] | null> {
  const r = await run(python, ["-c", KERNELSPEC_PY]);
  if (r.code !== 0) throw new Error(`kernelspec query failed: ${r.stderr.trim()}`);
  const spec = JSON.parse(r.stdout.trim()) as { argv: string[] } | null;
  return spec?.argv ?? null;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/**
 * Whether the notebook can be executed here: Jupyter's Python modules and a `deno` kernelspec
 * whose program exists (installed with `deno jupyter --install` when missing).
 */
async function jupyterSetup(): Promise<{ python?: string; skip?: string }> {
  const { python, why } = await findPython();
  if (!python) return { skip: why };
  let argv: string[] | null;
  try {
    argv = await denoKernelspec(python);
  } catch (e) {
    return { skip: `${why}: ${(e as Error).message}` };
  }
  const usable = argv !== null && argv.length > 0 &&
    (!argv[0].includes("/") || await exists(argv[0]));
  if (!usable) {
    // Missing, or pointing at a deno that is gone: (re)install it for this deno.
    const args = argv === null ? ["jupyter", "--install"] : ["jupyter", "--install", "--force"];
    const r = await tryRun(Deno.execPath(), args);
    argv = await denoKernelspec(python).catch(() => null);
    if (argv === null) {
      return {
        skip: `no deno kernelspec, and 'deno ${args.join(" ")}' did not add one ` +
          `(exit ${r.code}: ${stripAnsi(r.stderr).trim()})`,
      };
    }
    console.log(`notebook_test: installed the deno kernelspec (${argv.join(" ")})`);
  }
  return { python };
}

const setup = await jupyterSetup();
if (setup.skip) {
  console.warn(`notebook_test: skipping the notebook execution: ${setup.skip}`);
}

async function readNotebook(path: string): Promise<Notebook> {
  return JSON.parse(await Deno.readTextFile(path)) as Notebook;
}

/** PNG width and height from the IHDR chunk, after checking the signature. */
function pngHeader(bytes: Uint8Array): { width: number; height: number } {
  const signature = [137, 80, 78, 71, 13, 10, 26, 10];
  assert.ok(bytes.length > 33, `PNG of ${bytes.length} bytes is too short`);
  assert.deepEqual([...bytes.subarray(0, 8)], signature, "not a PNG signature");
  assert.equal(new TextDecoder().decode(bytes.subarray(12, 16)), "IHDR", "first chunk not IHDR");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

function decodeBase64(s: string): Uint8Array {
  const bin = atob(s.replace(/\s+/g, ""));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

Deno.test("quickstart notebook is committed without outputs, for the Deno kernel", async () => {
  const nb = await readNotebook(NOTEBOOK);
  assert.equal(nb.nbformat, 4);
  assert.equal(nb.metadata.kernelspec?.name, "deno");
  assert.equal(nb.metadata.kernelspec?.language, "typescript");
  assert.equal(nb.metadata.language_info?.name, "typescript");
  const code = nb.cells.filter((c) => c.cell_type === "code");
  assert.ok(code.length >= 4, `only ${code.length} code cells`);
  for (const [i, c] of code.entries()) {
    assert.deepEqual(c.outputs, [], `code cell ${i} (${c.id}) has stored outputs`);
    assert.equal(c.execution_count, null, `code cell ${i} (${c.id}) has an execution count`);
  }
  assert.match(joined(code[0].source), /from "\.\.\/mod\.ts"/);
  const markdown = nb.cells.filter((c) => c.cell_type === "markdown").map((c) => joined(c.source));
  assert.ok(markdown.length >= code.length, "every step should have a markdown explanation");
  assert.ok(
    markdown.some((m) => m.includes("deno task distill")),
    "no pointer to deno task distill",
  );
});

Deno.test("quickstart notebook's code type-checks against mod.ts", async () => {
  const nb = await readNotebook(NOTEBOOK);
  const modUrl = new URL("../mod.ts", import.meta.url).href;
  const source = nb.cells.filter((c) => c.cell_type === "code")
    .map((c) => joined(c.source).replaceAll('"../mod.ts"', JSON.stringify(modUrl)))
    .join("\n\n");
  const dir = await Deno.makeTempDir({ prefix: "sida-notebook-check-" });
  try {
    const file = `${dir}/quickstart.ts`;
    await Deno.writeTextFile(file, source);
    const r = await run(Deno.execPath(), ["check", "--no-config", file]);
    assert.equal(r.code, 0, `deno check of the notebook's code failed:\n${stripAnsi(r.stderr)}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * nbclient driver: executes every code cell; with a watch file and a cell id, it presses the
 * kernel's stop button during that cell (SIGINT to the kernel's process group, as Jupyter's
 * LocalProvisioner does) once the watch file exists, keeps that run's outputs in the cell's
 * metadata (`sida_interrupted_outputs`), and executes the cell again.
 */
const DRIVER = `
import os, signal, sys, threading, time, nbformat
from nbclient import NotebookClient
src, dst, cwd, timeout = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
watch, stop_cell = (sys.argv[5], sys.argv[6]) if len(sys.argv) > 6 else (None, None)
nb = nbformat.read(src, as_version=4)
client = NotebookClient(nb, timeout=timeout, startup_timeout=180, kernel_name="deno",
                        allow_errors=False, resources={"metadata": {"path": cwd}})

def press_stop():
    t0 = time.time()
    while not os.path.exists(watch) and time.time() - t0 < timeout:
        time.sleep(0.05)
    pid = client.km.provisioner.process.pid
    os.killpg(os.getpgid(pid), signal.SIGINT)
    print(f"stop button pressed after {time.time() - t0:.1f} s", file=sys.stderr)

status = 0
try:
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if stop_cell is not None and cell.get("id") == stop_cell:
                th = threading.Thread(target=press_stop, daemon=True)
                th.start()
                client.execute_cell(cell, i)
                th.join()
                cell.metadata["sida_interrupted_outputs"] = cell.outputs
            client.execute_cell(cell, i)
except Exception as e:
    print(f"nbclient: {type(e).__name__}: {e}", file=sys.stderr)
    status = 1
finally:
    nbformat.write(nb, dst)
sys.exit(status)
`;

/**
 * Executes the notebook `src` top to bottom on the Deno kernel (nbclient) into `dst`, with the
 * kernel's working directory in `notebooks/` (as Jupyter does for a notebook there; `src` may be
 * a patched copy elsewhere). The committed notebook is never written.
 */
async function executeNotebook(
  src: string,
  dst: string,
  stop?: { watch: string; cell: string },
): Promise<{ r: { code: number; stdout: string; stderr: string }; seconds: number }> {
  const t0 = performance.now();
  const r = await run(setup.python!, [
    "-c",
    DRIVER,
    src,
    dst,
    NOTEBOOK_DIR, // the kernel's working directory: the notebooks' folder, as in Jupyter
    String(CELL_TIMEOUT_S),
    ...(stop ? [stop.watch, stop.cell] : []),
  ], { cwd: NOTEBOOK_DIR, signal: AbortSignal.timeout(TOTAL_TIMEOUT_MS) });
  return { r, seconds: (performance.now() - t0) / 1000 };
}

Deno.test({
  name: "quickstart notebook runs top to bottom on the Deno kernel",
  ignore: setup.skip !== undefined,
  fn: async () => {
    const out = await Deno.makeTempDir({ prefix: "sida-notebook-" });
    const executed = `${out}/quickstart.executed.ipynb`;
    const { r, seconds } = await executeNotebook(NOTEBOOK, executed);
    let ok = false;
    try {
      assert.ok(
        await exists(executed),
        `nbclient wrote no notebook (exit ${r.code}):\n${stripAnsi(r.stderr)}`,
      );
      const nb = await readNotebook(executed);
      const code = nb.cells.filter((c) => c.cell_type === "code");
      const outputs = code.flatMap((c) => c.outputs ?? []);

      const errors = code.flatMap((c, i) =>
        (c.outputs ?? []).filter((o) => o.output_type === "error").map((e) =>
          stripAnsi(
            `code cell ${i} (${c.id}): ${e.ename}: ${e.evalue}\n${(e.traceback ?? []).join("\n")}`,
          )
        )
      );
      assert.equal(errors.length, 0, `error outputs:\n${errors.join("\n---\n")}`);
      assert.equal(r.code, 0, `nbclient failed (exit ${r.code}):\n${stripAnsi(r.stderr)}`);
      for (const [i, c] of code.entries()) {
        assert.equal(c.execution_count, i + 1, `code cell ${i} (${c.id}) was not executed`);
      }

      const text = outputs.filter((o) => o.output_type === "stream").map((o) => joined(o.text))
        .join("");
      const shown = stripAnsi(text);

      // The kernel ran in the notebook's folder and named a known backend.
      const cwd = shown.match(/^working directory: (.*)$/m);
      assert.ok(cwd, `no working directory line in:\n${shown}`);
      assert.equal(await Deno.realPath(cwd[1]), await Deno.realPath(NOTEBOOK_DIR));
      const backend = shown.match(/^backend: (\w+)/m);
      assert.ok(backend, `no backend line in:\n${shown}`);
      assert.ok(
        (BACKEND_NAMES as readonly string[]).includes(backend[1]),
        `unknown backend '${backend[1]}'`,
      );

      // The shipped teacher, or a clear "untrained" notice.
      if (await exists(TEACHER)) {
        assert.match(shown, /^teacher: loaded \.\.\/data\/mnist-teacher\.safetensors/m);
      } else {
        assert.match(shown, /^teacher: .*not found -> UNTRAINED/m);
      }

      // One line per iteration, numbered 1..N, with four finite losses (SiDA).
      const iters = [...shown.matchAll(/^iter (\d+)\/(\d+)\s.*$/gm)];
      assert.ok(iters.length >= 1, `no iteration lines in:\n${shown}`);
      const total = Number(iters[0][2]);
      assert.equal(iters.length, total, "not every iteration printed its losses");
      for (const [i, m] of iters.entries()) {
        assert.equal(Number(m[1]), i + 1);
        const losses = [...m[0].matchAll(/\b(loss_\w+) (\S+)/g)];
        assert.deepEqual(
          losses.map((l) => l[1]),
          ["loss_fake", "loss_D", "loss_G", "loss_G_gan"],
          `unexpected loss fields in: ${m[0]}`,
        );
        for (const [, name, value] of losses) {
          assert.ok(Number.isFinite(Number(value)), `${name} = ${value} in: ${m[0]}`);
        }
      }
      // The last line of each cell made it out (Deno's kernel can drop a cell's final outputs;
      // the notebook's `flush()` guards against that).
      assert.match(shown, /^distilled \d+ iterations in /m);
      assert.match(shown, /^generator: \d+ images in one step/m);
      assert.match(shown, /^tensors still allocated: \d+$/m);
      // The shipped generator beside the teacher, with the time per image of each.
      if (await exists(SHIPPED)) {
        assert.match(shown, /^teacher \(NFE 35\): [\d.]+ ms per image$/m);
        assert.match(shown, /^shipped generator \(NFE 1\): [\d.]+ ms per image; sida after /m);
      } else {
        assert.match(shown, /^shipped generator: .* not found/m);
      }

      // At least two inline PNG grids (teacher, generator) of the expected size.
      const pngs = outputs
        .filter((o) => o.output_type === "display_data" || o.output_type === "execute_result")
        .map((o) => o.data?.["image/png"])
        .filter((d): d is string | string[] => d !== undefined)
        .map((d) => decodeBase64(joined(d)));
      assert.ok(pngs.length >= 2, `${pngs.length} image/png outputs, expected at least 2`);
      for (const [i, png] of pngs.entries()) {
        const header = pngHeader(png);
        assert.deepEqual(
          header,
          { width: GRID_WIDTH, height: GRID_HEIGHT },
          `PNG ${i} header is ${header.width}x${header.height}`,
        );
        const image = fastPng.decode(png);
        assert.equal(image.width, GRID_WIDTH);
        assert.equal(image.height, GRID_HEIGHT);
        assert.equal(image.data.length, GRID_WIDTH * GRID_HEIGHT * image.channels);
      }
      console.log(
        `notebook_test: executed in ${seconds.toFixed(1)} s; ${backend[0]}; ` +
          `${iters.length} iterations; last: ${iters.at(-1)![0].replace(/\s+/g, " ")}`,
      );
      ok = true;
    } finally {
      if (ok) await Deno.remove(out, { recursive: true });
      else console.error(`notebook_test: executed notebook kept in ${out}`);
    }
  },
});

// ---------------------------------------------------------------------------------------------
// All notebooks: public API only, no stored outputs; the CIFAR-10 and ImageNet 64 notebooks run
// their smoke configuration.

/** Every notebook of `notebooks/`. */
const ALL_NOTEBOOKS = ["quickstart", "cifar10", "imagenet64", "imagenet512"];

/** Largest stored output of a committed notebook (JSON characters). */
const MAX_STORED_OUTPUT = 4096;

/** The module specifiers a code cell imports (static, dynamic, re-exports). */
function cellImports(source: string): string[] {
  const out: string[] = [];
  const code = source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
  for (const m of code.matchAll(/\b(?:import|export)\b[^;"'`]*?\bfrom\s*["']([^"']+)["']/g)) {
    out.push(m[1]);
  }
  for (const m of code.matchAll(/^\s*import\s*["']([^"']+)["']/gm)) out.push(m[1]);
  for (const m of code.matchAll(/\bimport\s*\(\s*([^)]*)\)/g)) out.push(m[1].trim());
  return out;
}

Deno.test("notebooks: code cells import only ../mod.ts; no stored outputs over a few KB", async () => {
  const found = [...Deno.readDirSync(NOTEBOOK_DIR)].filter((e) => e.name.endsWith(".ipynb"))
    .map((e) => e.name.replace(/\.ipynb$/, "")).sort();
  assert.deepEqual(found, [...ALL_NOTEBOOKS].sort(), "a notebook is not covered by these tests");
  for (const name of ALL_NOTEBOOKS) {
    const nb = await readNotebook(`${NOTEBOOK_DIR}/${name}.ipynb`);
    assert.equal(nb.metadata.kernelspec?.name, "deno", `${name}: not a Deno-kernel notebook`);
    let importsMod = false;
    for (const [i, c] of nb.cells.entries()) {
      const size = JSON.stringify(c.outputs ?? []).length;
      assert.ok(size <= MAX_STORED_OUTPUT, `${name} cell ${i}: ${size} characters of outputs`);
      if (c.cell_type !== "code") continue;
      const src = joined(c.source);
      for (const spec of cellImports(src)) {
        assert.equal(spec, "../mod.ts", `${name} cell ${i} (${c.id}) imports ${spec}`);
        importsMod = true;
      }
      assert.doesNotMatch(src, /\.\.\/lib\//, `${name} cell ${i} (${c.id}) reaches into lib/`);
    }
    assert.ok(importsMod, `${name} never imports ../mod.ts`);
  }
});

/** A smoke notebook and what its outputs must show. */
interface SmokeNotebook {
  name: string;
  /** Image side of the teacher's and the run's grids (after VAE decoding for latents). */
  res: number;
  /** Rows (classes) of those grids. */
  classes: number;
  perClass: number;
  /** The released-generator stand-in, relative to the notebook folder. */
  fixture: string;
  /** Press the stop button during the distillation, then resume. */
  stop: boolean;
  /** Extra first-cell parameters. */
  params?: string[];
  /** The released grid's image side and rows, where they differ from the others. */
  released?: { res: number; rows: number };
}

/** The smoke notebooks and what their outputs must show. */
const SMOKE_NOTEBOOKS: SmokeNotebook[] = [
  {
    name: "cifar10",
    res: 32,
    classes: 10,
    perClass: 4,
    fixture: "../tests/fixtures/generators/sid_cifar10_tiny.pkl",
    stop: true,
  },
  {
    name: "imagenet64",
    res: 64,
    classes: 8,
    perClass: 2,
    fixture: "../tests/fixtures/generators/sida_imagenet64_tiny.pkl",
    stop: false,
  },
  {
    // EDM2 in latent space: 8×8 latents decoded to 32×32 by the smoke VAE; the released
    // stand-in (EDM2 pickle fixture) makes 16×16 latents, 64×64 images, 10 classes: one row.
    name: "imagenet512",
    res: 32,
    classes: 8,
    perClass: 2,
    fixture: "../tests/fixtures/pickles/edm2_tiny_fp16.pkl",
    stop: false,
    params: ["VAE"],
    released: { res: 64, rows: 1 },
  },
];

for (const nbCase of SMOKE_NOTEBOOKS) {
  Deno.test(`${nbCase.name} notebook is committed without outputs, parameters first`, async () => {
    const nb = await readNotebook(`${NOTEBOOK_DIR}/${nbCase.name}.ipynb`);
    assert.equal(nb.nbformat, 4);
    assert.equal(nb.metadata.kernelspec?.language, "typescript");
    const code = nb.cells.filter((c) => c.cell_type === "code");
    for (const [i, c] of code.entries()) {
      assert.deepEqual(c.outputs, [], `code cell ${i} (${c.id}) has stored outputs`);
      assert.equal(c.execution_count, null, `code cell ${i} (${c.id}) has an execution count`);
    }
    const params = joined(code[0].source);
    const names = ["TEACHER", "DATA", "FID_REF", "DETECTOR", "RELEASED", "BUDGET", "BACKEND"];
    for (const p of [...names, ...(nbCase.params ?? [])]) {
      assert.match(params, new RegExp(`^const ${p} = `, "m"), `no ${p} in the first cell`);
    }
    assert.match(params, /^const OUT = "\.\.\/runs\/notebook-[\w-]+";/m);
    const markdown = nb.cells.filter((c) => c.cell_type === "markdown").map((c) =>
      joined(c.source)
    );
    assert.ok(markdown.length >= code.length - 1, "every stage should have a markdown explanation");
    const text = markdown.join("\n");
    for (const word of ["35", "SiD²A", "smoke", "stop button", "released"]) {
      assert.ok(text.includes(word), `the markdown never mentions '${word}'`);
    }
  });

  Deno.test(`${nbCase.name} notebook's code type-checks against mod.ts`, async () => {
    const nb = await readNotebook(`${NOTEBOOK_DIR}/${nbCase.name}.ipynb`);
    const modUrl = new URL("../mod.ts", import.meta.url).href;
    const source = nb.cells.filter((c) => c.cell_type === "code")
      .map((c) => joined(c.source).replaceAll('"../mod.ts"', JSON.stringify(modUrl)))
      .join("\n\n");
    const dir = await Deno.makeTempDir({ prefix: "sida-notebook-check-" });
    try {
      await Deno.writeTextFile(`${dir}/${nbCase.name}.ts`, source);
      const r = await run(Deno.execPath(), ["check", "--no-config", `${dir}/${nbCase.name}.ts`]);
      assert.equal(r.code, 0, `deno check of the notebook's code failed:\n${stripAnsi(r.stderr)}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });

  Deno.test({
    name: `${nbCase.name} notebook runs its smoke configuration on the Deno kernel` +
      (nbCase.stop ? ", survives the stop button and resumes" : ""),
    ignore: setup.skip !== undefined,
    fn: async () => {
      const tmp = await Deno.makeTempDir({ prefix: `sida-notebook-${nbCase.name}-` });
      let ok = false;
      try {
        // Like papermill: a copy with the run folder in the temporary directory.
        const nb = await readNotebook(`${NOTEBOOK_DIR}/${nbCase.name}.ipynb`);
        const params = nb.cells.find((c) => c.cell_type === "code")!;
        const out = `${tmp}/run`;
        const patched = joined(params.source).replace(
          /^const OUT = .*$/m,
          `const OUT = ${JSON.stringify(out)};`,
        );
        assert.notEqual(patched, joined(params.source));
        params.source = patched;
        const src = `${tmp}/${nbCase.name}.ipynb`;
        const executed = `${tmp}/${nbCase.name}.executed.ipynb`;
        await Deno.writeTextFile(src, JSON.stringify(nb));
        const stop = nbCase.stop
          ? { watch: `${out}-smoke/sid/log.jsonl`, cell: "distill" }
          : undefined;
        const { r, seconds } = await executeNotebook(src, executed, stop);
        assert.ok(
          await exists(executed),
          `nbclient wrote no notebook (exit ${r.code}):\n${stripAnsi(r.stderr)}`,
        );
        const done = await readNotebook(executed);
        const code = done.cells.filter((c) => c.cell_type === "code");
        const outputs = code.flatMap((c) => c.outputs ?? []);
        const errors = code.flatMap((c, i) =>
          (c.outputs ?? []).filter((o) => o.output_type === "error").map((e) =>
            stripAnsi(
              `code cell ${i} (${c.id}): ${e.ename}: ${e.evalue}\n` +
                (e.traceback ?? []).join("\n"),
            )
          )
        );
        assert.equal(errors.length, 0, `error outputs:\n${errors.join("\n---\n")}`);
        assert.equal(r.code, 0, `nbclient failed (exit ${r.code}):\n${stripAnsi(r.stderr)}`);
        for (const [i, c] of code.entries()) {
          assert.ok(c.execution_count, `code cell ${i} (${c.id}) was not executed`);
        }

        // No terminal control characters anywhere in the saved outputs (\n and \t allowed).
        const strings: string[] = [];
        JSON.stringify(outputs, (_k, v) => {
          if (typeof v === "string") strings.push(v);
          return v;
        });
        // deno-lint-ignore no-control-regex
        const control = strings.find((t) => /[\x00-\x08\x0b-\x1f\x7f]/.test(t));
        assert.equal(control, undefined, `control characters in a saved output: ${control}`);

        // The first line of output says smoke.
        const streams = outputs.filter((o) => o.output_type === "stream").map((o) =>
          joined(o.text)
        );
        assert.match(streams[0] ?? "", /^mode: SMOKE configuration \(/);
        const shown = stripAnsi(streams.join(""));
        const backend = shown.match(/^backend: (\w+)/m);
        assert.ok(backend && (BACKEND_NAMES as readonly string[]).includes(backend[1]), shown);

        // The distillation cell: one progress display, updated in place (its last state).
        const distill = code.find((c) => c.id === "distill")!;
        const progress = (distill.outputs ?? []).filter((o) =>
          joined(o.data?.["text/html"] as string | string[] | undefined).includes("<progress")
        );
        assert.equal(progress.length, 1, "not exactly one progress display");
        assert.match(
          joined(progress[0].data!["text/plain"] as string),
          /^distillation: 100% sida /,
        );
        const chainLine = (c: Cell | Output[]) =>
          (Array.isArray(c) ? c : c.outputs ?? []).map((o) => joined(o.text)).join("")
            .match(/^chain: (.*) in [\d.]+ s$/m)?.[1];
        if (nbCase.stop) {
          const first = (distill as unknown as { metadata: Record<string, Output[]> }).metadata
            .sida_interrupted_outputs;
          assert.ok(first, "the interrupted run's outputs were not kept");
          assert.equal(
            chainLine(first),
            "import ran, sid interrupted, sida not selected, eval not selected",
          );
          assert.equal(chainLine(distill), "import skipped, sid resumed, sida ran, eval ran");
        } else {
          assert.equal(chainLine(distill), "import ran, sid ran, sida ran, eval ran");
        }

        // The metric table, the curves and the grids.
        const html = outputs.map((o) => joined(o.data?.["text/html"] as string | undefined));
        assert.ok(html.some((h) => h.includes("<table>") && h.includes("FID")), "no FID table");
        const pngs = outputs.map((o) => o.data?.["image/png"])
          .filter((d): d is string | string[] => d !== undefined)
          .map((d) => pngHeader(decodeBase64(joined(d))));
        const tile = nbCase.res * 2;
        const grid = {
          width: nbCase.perClass * tile + (nbCase.perClass - 1) * 2,
          height: nbCase.classes * tile + (nbCase.classes - 1) * 2,
        };
        const grids = pngs.filter((p) => p.width === grid.width && p.height === grid.height);
        // Teacher, this run's generator, the released generator: one row per class.
        const rel = nbCase.released;
        assert.equal(
          grids.length,
          rel ? 2 : 3,
          `grids ${JSON.stringify(pngs)}, want ${rel ? 2 : 3} of ${JSON.stringify(grid)}`,
        );
        if (rel) {
          const t = rel.res * 2;
          const want = {
            width: nbCase.perClass * t + (nbCase.perClass - 1) * 2,
            height: rel.rows * t + (rel.rows - 1) * 2,
          };
          assert.ok(
            pngs.some((p) => p.width === want.width && p.height === want.height),
            `no released grid of ${JSON.stringify(want)} in ${JSON.stringify(pngs)}`,
          );
        }
        assert.equal(pngs.length, 5, `images ${JSON.stringify(pngs)}: want 3 grids and 2 plots`);
        assert.match(
          shown,
          new RegExp(
            `^released generator: ${nbCase.fixture.replaceAll(".", "\\.")}: `,
            "m",
          ),
        );
        assert.match(shown, /^released generator: \d+ images in one step/m);
        assert.match(shown, /^tensors still allocated: 0$/m);
        console.log(
          `notebook_test: ${nbCase.name} executed in ${seconds.toFixed(1)} s; ${backend[0]}`,
        );
        ok = true;
      } finally {
        if (ok) await Deno.remove(tmp, { recursive: true });
        else console.error(`notebook_test: ${nbCase.name}: kept ${tmp}`);
      }
    },
  });
}
