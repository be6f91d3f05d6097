/**
 * Import benchmark: builds a CIFAR-10 DDPM++-sized EDM pickle (56M float32 parameters, about
 * 223 MB, the real EDM structure with the fixture stand-in classes) in a temporary folder using
 * `/usr/bin/python3` + torch and the EDM reference code (`$EDM_REPO`, default `/work/ref/edm`),
 * then imports it to safetensors in a child process and reports wall time and peak memory
 * (VmHWM). Skips with a message when python/torch/EDM are not available.
 *
 * Usage: `deno run -A bench/import.ts [--keep]`
 *
 * `--edm2 xs|s|m|l|xl|xxl`: an EDM2 `edm2-img512-*` pickle instead (float16 weights as EDM2
 * releases them, the real `training.networks_edm2.Precond` structure built on PyTorch's meta
 * device and filled tensor by tensor, so that Python never holds more than the fp16 weights;
 * NVlabs/edm2 from `$EDM2_REPO`, default `/work/ref/edm2`), imported the way `deno task
 * import-teacher` does (`importEdm2Network`, then `saveEdm2Network` to float32 safetensors), once.
 *
 * @module
 */
import { existsSync } from "node:fs";
import { importToSafetensors } from "../lib/nets/import.ts";
import {
  importEdm2Network,
  importEdm2ToSafetensors,
  saveEdm2Network,
} from "../lib/nets/import_edm2.ts";
import { startBackend } from "../lib/runtime/cli.ts";

const PY = "/usr/bin/python3";
/** EDM2's widths (`edm2:train_edm2.py:25-37`). */
const EDM2_WIDTHS: Record<string, number> = { xs: 128, s: 192, m: 256, l: 320, xl: 384, xxl: 448 };

function vmHwm(): number {
  const m = Deno.readTextFileSync("/proc/self/status").match(/VmHWM:\s+(\d+) kB/);
  return m ? Number(m[1]) * 1024 : NaN;
}

if (Deno.args[0]?.startsWith("--child")) {
  // Child: import and report.
  const [mode, input, output] = Deno.args;
  await startBackend("cpu");
  const t0 = performance.now();
  let params: number;
  let importSeconds: number | undefined;
  if (mode === "--child-edm2") {
    // As `deno task import-teacher` (and the chain's import stage): checked shapes-only, then
    // the pickle's fp16 tensors written as they are.
    params = (await importEdm2ToSafetensors(input, output)).paramCount;
  } else if (mode === "--child-edm2-net") {
    // Building the float32 network, then saving it (what `importEdm2Network` users do).
    const { net, summary } = await importEdm2Network(input);
    importSeconds = (performance.now() - t0) / 1000;
    await saveEdm2Network(net, output);
    params = summary.paramCount;
    net.dispose();
  } else {
    params = (await importToSafetensors(input, output)).paramCount;
  }
  const seconds = (performance.now() - t0) / 1000;
  console.log(JSON.stringify({ seconds, importSeconds, hwm: vmHwm(), params }));
  Deno.exit(0);
}

const sizeIdx = Deno.args.indexOf("--edm2");
if (sizeIdx >= 0) {
  await benchEdm2(Deno.args[sizeIdx + 1]);
  Deno.exit(0);
}

const edm = Deno.env.get("EDM_REPO") ?? "/work/ref/edm";
if (!existsSync(PY) || !existsSync(`${edm}/training/networks.py`)) {
  console.log(`skipped: needs ${PY} with torch and the EDM reference code ($EDM_REPO, now ${edm})`);
  Deno.exit(0);
}
const dir = Deno.makeTempDirSync({ prefix: "sida-bench-import-" });
const fixtures = new URL("../tests/fixtures/pickles/", import.meta.url).pathname;
const script = `
import sys, pickle, os, torch
sys.path.insert(0, ${JSON.stringify(fixtures)})
import make_pickle_fixtures as m
sys.path.insert(0, ${JSON.stringify(edm)})
import training.networks as n
torch.manual_seed(0)
cfg = dict(img_resolution=32, img_channels=3, label_dim=10, use_fp16=False, model_type="SongUNet",
           embedding_type="positional", encoder_type="standard", decoder_type="standard",
           channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
           augment_dim=9, dropout=0.13)
net = n.EDMPrecond(**cfg).eval().requires_grad_(False)
m.take_modules({"training", "torch_utils", "dnnlib"})
sys.path.pop(0)
import tempfile
tmp = tempfile.mkdtemp()
os.makedirs(tmp + "/torch_utils")
open(tmp + "/torch_utils/__init__.py", "w").close()
open(tmp + "/torch_utils/persistence.py", "w").write(f"MODULE_SRC = {m.DUMMY_SRC!r}\\n" + m.PERSISTENCE_SRC)
sys.path.insert(0, tmp)
import torch_utils.persistence as p
with open(sys.argv[1], "wb") as f:
    pickle.dump(dict(ema=m.to_standin(net, p), augment_pipe=None), f, protocol=4)
`;
const pkl = `${dir}/edm-cifar10-like.pkl`;
if (!(await buildPickle(script, pkl, dir))) Deno.exit(0);
const size = Deno.statSync(pkl).size;
const rows: { seconds: number; hwm: number; params: number }[] = [];
for (let i = 0; i < 3; i++) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL(import.meta.url).pathname,
      "--child",
      pkl,
      `${dir}/out.safetensors`,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  rows.push(JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!));
}
const mb = (b: number) => (b / 1e6).toFixed(0);
console.log(`pickle: ${mb(size)} MB, ${rows[0].params.toLocaleString("en-US")} parameters`);
console.log("run | time (s) | peak RSS (MB) | peak / file size");
console.log("--- | -------- | ------------- | ----------------");
rows.forEach((r, i) =>
  console.log(
    `${i + 1}   | ${r.seconds.toFixed(2).padStart(8)} | ${mb(r.hwm).padStart(13)} | ${
      (r.hwm / size).toFixed(2).padStart(16)
    }`,
  )
);
console.log(`target: <= 3 s and <= 2x file size (${mb(2 * size)} MB)`);
if (!Deno.args.includes("--keep")) Deno.removeSync(dir, { recursive: true });
else console.log(`kept ${dir}`);

/** Builds an `edm2-img512-<size>` pickle and imports it once in a child, reporting time and memory. */
async function benchEdm2(size: string | undefined): Promise<void> {
  const width = EDM2_WIDTHS[size ?? ""];
  if (!width) {
    console.log(`usage: --edm2 ${Object.keys(EDM2_WIDTHS).join("|")}`);
    Deno.exit(2);
  }
  const edm2 = Deno.env.get("EDM2_REPO") ?? "/work/ref/edm2";
  if (!existsSync(PY) || !existsSync(`${edm2}/training/networks_edm2.py`)) {
    console.log(`skipped: needs ${PY} with torch and NVlabs/edm2 ($EDM2_REPO, now ${edm2})`);
    return;
  }
  const dir = Deno.makeTempDirSync({ prefix: "sida-bench-import-edm2-" });
  const fixtures = new URL("../tests/fixtures/pickles/", import.meta.url).pathname;
  const script = `
import os, pickle, sys, tempfile, torch
sys.path.insert(0, ${JSON.stringify(fixtures)})
import make_pickle_fixtures as m
sys.path.insert(0, ${JSON.stringify(edm2)})
from training import networks_edm2 as n
randn, rand = torch.randn, torch.rand
torch.randn = lambda *s, **k: randn(*s, device="meta", **k)
torch.rand = lambda *s, **k: rand(*s, device="meta", **k)
net = n.Precond(img_resolution=64, img_channels=4, label_dim=1000, model_channels=${width}, use_fp16=True)
torch.randn, torch.rand = randn, rand
g = torch.Generator().manual_seed(0)
count = 0
for mod in net.modules():
    for k, p in list(mod._parameters.items()):
        if p is not None:
            mod._parameters[k] = torch.nn.Parameter(torch.randn(p.shape, generator=g).half(), requires_grad=False)
            count += p.numel()
    for k, b in list(mod._buffers.items()):
        if b is not None:
            mod._buffers[k] = torch.randn(b.shape, generator=g)
m.take_modules({"training", "torch_utils", "dnnlib"})
sys.path.pop(0)
tmp = tempfile.mkdtemp()
os.makedirs(tmp + "/torch_utils")
os.makedirs(tmp + "/dnnlib")
open(tmp + "/torch_utils/__init__.py", "w").close()
open(tmp + "/torch_utils/persistence.py", "w").write(f"MODULE_SRC = {m.DUMMY_SRC!r}\\n" + m.PERSISTENCE_SRC)
open(tmp + "/dnnlib/__init__.py", "w").write("from .util import EasyDict\\n")
open(tmp + "/dnnlib/util.py", "w").write(m.DNNLIB_UTIL_SRC)
sys.path.insert(0, tmp)
import torch_utils.persistence as p
import dnnlib.util
data = dnnlib.util.EasyDict(
    dataset_kwargs=dnnlib.util.EasyDict(class_name="training.dataset.ImageFolderDataset", path="img512-sd.zip"),
    loss_fn=m.standin_record(p, "EDM2Loss", P_mean=-0.4, P_std=1.0, sigma_data=0.5, _init_args=(), _init_kwargs={}),
    ema=m.to_standin(net, p))
with open(sys.argv[1], "wb") as f:
    pickle.dump(data, f, protocol=4)
print(count)
`;
  const pkl = `${dir}/edm2-img512-${size}-like.pkl`;
  const t0 = performance.now();
  if (!(await buildPickle(script, pkl, dir))) return;
  const fileSize = Deno.statSync(pkl).size;
  console.log(
    `edm2-img512-${size}-like.pkl: ${(fileSize / 1e9).toFixed(2)} GB (fp16), built in ${
      ((performance.now() - t0) / 1000).toFixed(0)
    } s`,
  );
  console.log(
    "| model | parameters | pickle | path | seconds | peak RSS | peak / pickle | safetensors |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
  const modes: [string, string][] = [
    ["--child-edm2", "importEdm2ToSafetensors (fp16 kept)"],
    ["--child-edm2-net", "importEdm2Network + saveEdm2Network (float32)"],
  ];
  for (const [mode, what] of modes) {
    if (mode === "--child-edm2-net" && Deno.args.includes("--streaming-only")) continue;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL(import.meta.url).pathname, mode, pkl, `${dir}/out.safetensors`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim();
      console.log(`| ${what}: failed (exit ${out.code}): ${err} |`);
      continue;
    }
    const r = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
    const outSize = Deno.statSync(`${dir}/out.safetensors`).size;
    const gb = (b: number) => `${(b / 1e9).toFixed(2)} GB`;
    console.log(
      `| edm2-img512-${size} | ${r.params.toLocaleString("en-US")} | ${gb(fileSize)} | ${what} | ` +
        `${r.seconds.toFixed(1)} | ${gb(r.hwm)} | ${(r.hwm / fileSize).toFixed(2)} | ${
          gb(outSize)
        } |`,
    );
  }
  if (!Deno.args.includes("--keep")) Deno.removeSync(dir, { recursive: true });
  else console.log(`kept ${dir}`);
}

/**
 * Runs the Python `script` that writes the pickle `pkl`; on failure says why ("skipped"), removes
 * the temporary folder `dir` and returns false.
 */
async function buildPickle(script: string, pkl: string, dir: string): Promise<boolean> {
  const gen = await new Deno.Command(PY, { args: ["-c", script, pkl], stderr: "piped" }).output();
  if (gen.success) return true;
  console.log(
    `skipped: python could not build the pickle: ${
      new TextDecoder().decode(gen.stderr).trim().split("\n").pop()
    }`,
  );
  Deno.removeSync(dir, { recursive: true });
  return false;
}
