/**
 * Import benchmark: builds a CIFAR-10 DDPM++-sized EDM pickle (56M float32 parameters, about
 * 223 MB, the real EDM structure with the fixture stand-in classes) in a temporary folder using
 * `/usr/bin/python3` + torch and the EDM reference code (`$EDM_REPO`, default `/work/ref/edm`),
 * then imports it to safetensors in a child process and reports wall time and peak memory
 * (VmHWM). Skips with a message when python/torch/EDM are not available.
 *
 * Usage: `deno run -A bench/import.ts [--keep]`
 *
 * @module
 */
import { existsSync } from "node:fs";
import { importToSafetensors } from "../lib/nets/import.ts";
import { startBackend } from "../lib/runtime/cli.ts";

const PY = "/usr/bin/python3";

function vmHwm(): number {
  const m = Deno.readTextFileSync("/proc/self/status").match(/VmHWM:\s+(\d+) kB/);
  return m ? Number(m[1]) * 1024 : NaN;
}

if (Deno.args[0] === "--child") {
  // Child: import and report.
  const [, input, output] = Deno.args;
  await startBackend("cpu");
  const t0 = performance.now();
  const summary = await importToSafetensors(input, output);
  const seconds = (performance.now() - t0) / 1000;
  console.log(JSON.stringify({ seconds, hwm: vmHwm(), params: summary.paramCount }));
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
const gen = await new Deno.Command(PY, { args: ["-c", script, pkl], stderr: "piped" }).output();
if (!gen.success) {
  console.log(
    `skipped: python could not build the pickle: ${
      new TextDecoder().decode(gen.stderr).trim().split("\n").pop()
    }`,
  );
  Deno.removeSync(dir, { recursive: true });
  Deno.exit(0);
}
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
