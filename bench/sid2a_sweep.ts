/**
 * The SiD²A settings sweep on the embedded MNIST default (issue 15): from one SiD generator, SiD²A
 * stages under several settings and seeds, with the EMA generator's FID measured every few
 * iterations in two independently trained feature spaces (`mnist`, `mnist-b`), on the same 1000
 * (`--num`) latents each time. It answers "does SiD²A's FID fall and stay down across the stage,
 * for every seed?" for each setting, and measures the sampling noise of one FID (the SiD
 * generator scored with `--noise-seeds` different latent sets) so that a difference can be called
 * real or "within noise". `docs/sweeps.md` records the results.
 *
 * Settings (`--configs`, comma-separated; the base is the chain's SiD²A stage at the default
 * budget: the `mnist` preset with its warm-ups scaled to the stage's length, 58 and 115 images):
 *
 * - `preset`: the base (lr = glr = 1e-4, warm-ups 58 / 115 images, i.e. 1 and 2 iterations);
 * - `lr3e-5`: lr = glr = 3e-5;
 * - `warmup-it`: warm-ups counted in iterations rather than scaled kimg: no G step for 8
 *   iterations, no adversarial term for 16 (the reference's 100 / 200 kimg are 391 / 782
 *   iterations of its batch 256, before G has moved at all);
 * - `lr3e-5-warmup-it`: both;
 * - `lsg-gan0.1`: the adversarial scale 10× (0.1);
 * - `warmup-it-decay`: `warmup-it`, then lr = glr = 3e-5 once the adversarial term is on (from
 *   iteration 17; {@linkcode SWEEP_DECAY}).
 * - `warmup-it-lsg1e-3`: `warmup-it` with the adversarial scale 10× smaller (0.001), meant for a
 *   longer stage (`--iters 72`) so that the fake score and discriminator catch up after the
 *   warm-ups before the adversarial term pushes G.
 * - `warmup-g40`: the fake net trains alone for 40 iterations before G moves (the reference starts
 *   SiD²A's fake net from the teacher, as here, and gives it 100 kimg, 391 iterations, first),
 *   the adversarial term from iteration 49; meant for `--iters 96`.
 * - `warmup-it-lr1e-5`: `warmup-it` with lr = glr = 1e-5, the reference's SiD²A rate on CIFAR-10
 *   (mingyuanzhou/SiD `run_sid_sida.sh:38-39`).
 * - `sid-fake`: the fake net starts from the SiD run's fake score (the `fake.*` tensors of the
 *   training state beside `--sid`, `training-state-<kimg>.safetensors`) instead of the teacher, so
 *   that it already fits G: G steps from the first iteration at the SiD stage's rate (1e-4), the
 *   adversarial term from iteration 17 (the discriminator's logits train alone until then). Not
 *   the reference's SiD²A, whose fake net starts from the teacher.
 * - `warmup-it-ema0.5`: `warmup-it` with G_ema's half-life 0.5 kimg (8 iterations) and no
 *   ramp-up. The preset's 10 kimg with the 5 % ramp-up gives a half-life of 5 % of the images seen
 *   in the stage (154 images, 2.4 iterations, at iteration 48), so G_ema follows G's every swing.
 * - `sid-continue`: the control of `sid-fake`: plain SiD (no discriminator, no adversarial term)
 *   continued from the SiD run's generator and fake score, at the SiD stage's settings, with
 *   fresh optimizers. How much does the FID move when nothing but SiD goes on?
 * - `batch128-ema0.5`: `warmup-it-ema0.5` at batch 128 (half the gradient noise's variance; the
 *   warm-ups and the half-life stay in images, so 4 and 8 iterations, and 4). Meant for half the
 *   iterations (`--iters 36 --every 6`), the same images.
 * - `batch128-ema1`, `batch128-ema2`: `batch128-ema0.5` with the half-life 1 or 2 kimg (8 or 16
 *   iterations of 128). G_ema does not take part in training, so a seed's G is the same in all
 *   three.
 * - `sid-continue-ema0.5`: `sid-continue` with G_ema's half-life fixed as in `warmup-it-ema0.5`:
 *   does plain SiD gain as much as SiD²A when G_ema averages over 8 iterations?
 * - `sid-continue-b128-ema1`: the same at batch 128 with the half-life 1 kimg: the control of
 *   `batch128-ema1`.
 * - `batch128-ema1-a1.2`: `batch128-ema1` with the SiD stage's α = 1.2 instead of the SiD²A
 *   preset's 1 (mingyuanzhou/SiD `run_sid_sida.sh:23`, and every other data set's branch of
 *   that script, passes `--alpha 1`): from the chain's SiD generator, SiD²A at α = 1 trades
 *   precision for recall over the stage; does α, which changes between the stages, do that?
 * - `batch128-ema1-gan0`: `batch128-ema1` with the adversarial weight 0: the discriminator still
 *   trains the fake net's encoder and the SiD term is still halved once the adversarial gate
 *   opens, but G gets no adversarial gradient. Against `batch128-ema1`, what the adversarial term
 *   does to G; against `sid-continue-b128-ema1`, what restarting the fake net from the teacher does.
 * - `batch128-ema1-lsg1e-3`: `batch128-ema1` with the adversarial weight 10× smaller (0.001).
 * - `batch128-ema1-lsg0.1`: `batch128-ema1` with the adversarial weight 10× larger (0.1): the
 *   other way from `batch128-ema1-lsg1e-3`, in case the discriminator holds precision.
 * - `batch128-ema1-lr3e-5`: `batch128-ema1` with lr = glr = 3e-5: from a good SiD generator, a
 *   smaller step that may keep its precision.
 * - `sid-fake-b128-ema1`: `sid-fake` at batch 128 with the 1-kimg half-life: the fake net from the
 *   SiD run's, G steps from the first iteration, the adversarial term after 1024 images. It is
 *   `sid-continue-b128-ema1` plus the discriminator and the adversarial term.
 * - `batch128-ema1-decay48`: `batch128-ema1` with lr = glr = 3e-5 from iteration 49 (6.1 kimg at
 *   batch 128) on, meant for the 2-hour stage (`--iters 108 --every 18`): there the stage's FID
 *   rises before it falls back, for every seed (`docs/sweeps.md`); does a smaller step hold it
 *   down? (Seed 0: no, the stage stays at its risen level.)
 * - `batch128-ema1-lsgdrop48`: `batch128-ema1` with the adversarial weight 10× smaller (0.001) from
 *   iteration 49 on: the same question for the adversarial push instead of the step size (seed 0:
 *   within noise of `batch128-ema1`).
 * - `batch128-ema1-g40`: `batch128-ema1` whose fake net trains alone for 40 iterations (5.1 kimg)
 *   before G moves, the adversarial term from iteration 49: for the 2-hour stage, where G's first
 *   steps make the FID rise while the fake net, restarted from the teacher, has seen 512 images of
 *   G's; `warmup-g40` asked the same at batch 64 from a poorer SiD generator. (Seed 0: the same
 *   rise within 14 iterations of G's first step, a shorter excursion after it.)
 * - `batch128-ema1-rawg`: `batch128-ema1` whose G starts from the SiD run's raw generator (the
 *   `G.*` tensors of the training state beside `--sid`) while G_ema starts from the snapshot and
 *   carries it on. The snapshot is SiD's G_ema, an average that no single iterate of SiD reaches;
 *   started from it, G leaves it within a few steps and the FID rises (2-hour stage, seed 0,
 *   `docs/sweeps.md`). From the raw G there is no average to leave: with `--extra-ema 5:none` (the
 *   SiD stage's half-life) SiD's G_ema simply goes on over SiD²A's iterates. Not the reference's
 *   SiD²A, which starts G and G_ema from the SiD snapshot. (Seeds 0 and 2, 54 iterations: every
 *   G_ema reading level with `batch128-ema1`'s or worse; the same early rise.)
 * - `sid-stage`: not SiD²A but the chain's SiD stage itself as it was before 2026-12-07 (the `mnist`
 *   preset's SiD settings: α = 1.2, batch 64, G_ema's half-life 10 kimg with the 5 % ramp-up, which
 *   the preset now replaces by 5 kimg with a ramp-up of 0.5), meant with the teacher as
 *   `--sid` (G starts from it, as in the chain) and `--extra-ema`: how other half-lives would have
 *   read the same SiD run.
 *
 * With `--extra-ema 5:0.5,2:none`, further EMA copies of the same G (half-life in kimg : ramp-up
 * ratio or `none`) are kept beside the setting's G_ema and scored at the same points, as the setting
 * `<setting>@ema<kimg>r<ratio>`: G_ema takes no part in training, so one G trajectory answers how
 * each half-life would have read it.
 *
 * With `--save DIR`, each evaluated G_ema is also written to
 * `DIR/<setting>-s<seed>-it<iteration>.safetensors`, for a closer look at the snapshots
 * (`bench/snapshot_probe.ts`). With `--log FILE`, each iteration's losses and weight-factor
 * statistics are appended to FILE (JSONL).
 *
 * Every run appends one JSON line per evaluation to `--out` (a `.jsonl` file); rerunning skips
 * the (setting, seed) pairs that are complete there, so a long sweep can be continued.
 *
 *   deno run -A bench/sid2a_sweep.ts --sid <run>/sid/network-snapshot-000005.120.safetensors \
 *     --out docs/data/sid2a-sweep.jsonl [--configs preset,warmup-it] [--seeds 0,1,2] \
 *     [--iters 36] [--every 6] [--num 1000] [--save DIR] [--log FILE]
 *   deno run -A bench/sid2a_sweep.ts --summary docs/data/sid2a-sweep.jsonl
 *
 * @module
 */
import { tf } from "../lib/deps.ts";
import { type ImageDataset, mnistDataset } from "../lib/data/dataset.ts";
import { type DistillConfig, Distiller } from "../lib/distill/distiller.ts";
import { distillPreset } from "../lib/distill/presets.ts";
import { MnistFeatureNet } from "../lib/metrics/mnist_features.ts";
import {
  DEFAULT_MNIST_FEATURES,
  DEFAULT_MNIST_FEATURES_B,
  DEFAULT_MNIST_REF_STATS,
  DEFAULT_MNIST_REF_STATS_B,
} from "../lib/metrics/mnist_features.ts";
import { loadRefStats } from "../lib/metrics/ref_stats.ts";
import type { Stats } from "../lib/metrics/stats.ts";
import { loadNetwork, saveNetwork } from "../lib/nets/network.ts";
import type { EDMPrecond } from "../lib/nets/precond.ts";
import { loadStateNetwork } from "./common.ts";
import { Ema, EMA_RAMPUP_RATIO } from "../lib/train/ema.ts";
import { evaluateNetwork } from "../lib/pipeline/evaluate.ts";
import { numberFlag, parseFlags, runMain, startBackend, UsageError } from "../lib/runtime/cli.ts";
import { meanStd } from "../tools/seed_summary.ts";

const USAGE = "usage: bench/sid2a_sweep.ts --sid G.safetensors --out sweep.jsonl " +
  "[--teacher data/mnist-teacher.safetensors] [--configs preset,...] [--seeds 0,1,2] " +
  "[--iters 36] [--every 6] [--num 1000] [--noise-seeds 3] [--extra-ema KIMG:RATIO,...] " +
  "[--save DIR] [--log FILE] " +
  "| --summary sweep.jsonl";

/** The chain's SiD²A stage at the default budget (2.304 kimg of the preset's 200). */
const STAGE_KIMG = 2.304;

/**
 * The chain's SiD²A stage at the default budget as it was when the sweep began (until
 * 2026-12-07: the `mnist` preset's SiDA settings, batch 64, G_ema 10 kimg with the 5 % ramp-up,
 * the warm-ups of 5 and 10 kimg scaled to the stage's length), which every setting of
 * {@linkcode SWEEP_SETTINGS} overrides. Fixed here so that the sweep's rows keep their meaning now
 * that the preset's SiD²A stage is `batch128-ema1` with a 3-kimg half-life.
 */
export function baseConfig(): DistillConfig {
  const p = distillPreset("mnist", "sida");
  const scale = Math.min(1, STAGE_KIMG / p.durationKimg);
  return {
    ...p.config,
    batch: 64,
    microBatch: 32,
    emaKimg: 10,
    emaRampup: EMA_RAMPUP_RATIO,
    gWarmupNimg: Math.round(5_000 * scale),
    ganWarmupNimg: Math.round(10_000 * scale),
  } as DistillConfig;
}

/**
 * `batch128-ema1`: batch 128, the warm-ups in images (512 and 1024: 4 and 8 iterations), G_ema's
 * half-life fixed at 1 kimg without ramp-up. The base of the other batch-128 settings.
 */
const BATCH128_EMA1: Partial<DistillConfig> = {
  batch: 128,
  gWarmupNimg: 8 * 64,
  ganWarmupNimg: 16 * 64,
  emaKimg: 1,
  emaRampup: null,
};

/** The settings of the sweep, as overrides of {@linkcode baseConfig}. */
export const SWEEP_SETTINGS: Record<string, Partial<DistillConfig>> = {
  preset: {},
  "lr3e-5": { lr: 3e-5, glr: 3e-5 },
  "warmup-it": { gWarmupNimg: 8 * 64, ganWarmupNimg: 16 * 64 },
  "lr3e-5-warmup-it": { lr: 3e-5, glr: 3e-5, gWarmupNimg: 8 * 64, ganWarmupNimg: 16 * 64 },
  "lsg-gan0.1": { lsgGan: 0.1 },
  "warmup-it-decay": { gWarmupNimg: 8 * 64, ganWarmupNimg: 16 * 64 },
  "warmup-it-lsg1e-3": { gWarmupNimg: 8 * 64, ganWarmupNimg: 16 * 64, lsgGan: 0.001 },
  "warmup-g40": { gWarmupNimg: 40 * 64, ganWarmupNimg: 48 * 64 },
  "warmup-it-lr1e-5": { lr: 1e-5, glr: 1e-5, gWarmupNimg: 8 * 64, ganWarmupNimg: 16 * 64 },
  "sid-fake": { gWarmupNimg: 0, ganWarmupNimg: 16 * 64 },
  "sid-continue": { method: "sid", gWarmupNimg: 0, ganWarmupNimg: 0 },
  "warmup-it-ema0.5": {
    gWarmupNimg: 8 * 64,
    ganWarmupNimg: 16 * 64,
    emaKimg: 0.5,
    emaRampup: null,
  },
  "batch128-ema0.5": { ...BATCH128_EMA1, emaKimg: 0.5 },
  "batch128-ema1": BATCH128_EMA1,
  "sid-continue-ema0.5": {
    method: "sid",
    gWarmupNimg: 0,
    ganWarmupNimg: 0,
    emaKimg: 0.5,
    emaRampup: null,
  },
  "sid-continue-b128-ema1": { ...BATCH128_EMA1, method: "sid", gWarmupNimg: 0, ganWarmupNimg: 0 },
  "batch128-ema2": { ...BATCH128_EMA1, emaKimg: 2 },
  "batch128-ema1-a1.2": { ...BATCH128_EMA1, alpha: 1.2 },
  "batch128-ema1-gan0": { ...BATCH128_EMA1, lsgGan: 0 },
  "batch128-ema1-lsg1e-3": { ...BATCH128_EMA1, lsgGan: 0.001 },
  "batch128-ema1-lsg0.1": { ...BATCH128_EMA1, lsgGan: 0.1 },
  "batch128-ema1-lr3e-5": { ...BATCH128_EMA1, lr: 3e-5, glr: 3e-5 },
  "sid-fake-b128-ema1": { ...BATCH128_EMA1, gWarmupNimg: 0, ganWarmupNimg: 8 * 128 },
  "batch128-ema1-decay48": BATCH128_EMA1,
  "batch128-ema1-lsgdrop48": BATCH128_EMA1,
  "batch128-ema1-g40": { ...BATCH128_EMA1, gWarmupNimg: 40 * 128, ganWarmupNimg: 48 * 128 },
  "batch128-ema1-rawg": BATCH128_EMA1,
  "sid-stage": {
    method: "sid",
    alpha: 1.2,
    gWarmupNimg: 0,
    ganWarmupNimg: 0,
    emaKimg: 10,
    emaRampup: EMA_RAMPUP_RATIO,
  },
};

/** Settings whose fake net starts from the SiD run's fake score (see the module doc). */
export const SWEEP_SID_FAKE: ReadonlySet<string> = new Set([
  "sid-fake",
  "sid-continue",
  "sid-continue-ema0.5",
  "sid-continue-b128-ema1",
  "sid-fake-b128-ema1",
]);

/**
 * Settings whose G starts from the SiD run's raw generator (the `G.*` tensors of the training
 * state beside `--sid`) while G_ema, and every `--extra-ema` copy, start from the snapshot (SiD's
 * G_ema) and carry it on (see the module doc).
 */
export const SWEEP_RAW_G: ReadonlySet<string> = new Set(["batch128-ema1-rawg"]);

/**
 * A network of the SiD run's training state beside its snapshot (`prefix` `fake.`: its fake
 * score; `G.`: the generator the optimizer was stepping, which the snapshot's G_ema averages).
 */
async function loadSidState(
  snapshot: string,
  prefix: "fake." | "G.",
  setting: string,
  teacher: EDMPrecond,
): Promise<EDMPrecond> {
  const state = snapshot.replace(
    /network-snapshot-([0-9.]+)\.safetensors$/,
    "training-state-$1.safetensors",
  );
  if (state === snapshot) throw new UsageError(`--sid ${snapshot}: not a network-snapshot file`);
  await Deno.stat(state).catch((e) => {
    throw new UsageError(
      `${setting} needs the SiD training state beside --sid: ${state}: ${(e as Error).message}`,
    );
  });
  return await loadStateNetwork(state, prefix, teacher.config);
}

/**
 * The Distiller of one setting's stage: G and G_ema from the SiD generator `sid` (the snapshot at
 * `sidPath`), the fake net from the teacher, or from the SiD run's fake score for
 * {@linkcode SWEEP_SID_FAKE}; G from the SiD run's raw generator for {@linkcode SWEEP_RAW_G}.
 */
export async function sweepDistiller(
  setting: string,
  config: DistillConfig,
  from: { teacher: EDMPrecond; dataset: ImageDataset; sid: EDMPrecond; sidPath: string },
): Promise<Distiller> {
  const { teacher, dataset, sid, sidPath } = from;
  let initFake: EDMPrecond | undefined, rawG: EDMPrecond | undefined;
  try {
    if (SWEEP_SID_FAKE.has(setting)) {
      initFake = await loadSidState(sidPath, "fake.", setting, teacher);
    }
    if (SWEEP_RAW_G.has(setting)) rawG = await loadSidState(sidPath, "G.", setting, teacher);
    const d = new Distiller({ teacher, dataset, config, initGenerator: sid, initFake });
    // G (whose optimizer is fresh either way) from the raw generator; G_ema stays the snapshot.
    if (rawG) d.G.copyFrom(rawG);
    return d;
  } finally {
    initFake?.dispose();
    rawG?.dispose();
  }
}

/** A change of a setting's rates or adversarial weight after iteration `after`. */
export interface SweepDecay {
  after: number;
  lr?: number;
  glr?: number;
  /** The adversarial weight from then on (the Distiller reads its config at each step). */
  lsgGan?: number;
}

/** The settings whose rates or adversarial weight change during the stage. */
export const SWEEP_DECAY: Record<string, SweepDecay> = {
  "warmup-it-decay": { after: 16, lr: 3e-5, glr: 3e-5 },
  "batch128-ema1-decay48": { after: 48, lr: 3e-5, glr: 3e-5 },
  "batch128-ema1-lsgdrop48": { after: 48, lsgGan: 0.001 },
};

/** One line of the sweep's JSONL file. */
export interface Row {
  setting: string;
  seed: number;
  iteration: number;
  kimg: number;
  fidA: number;
  fidB: number;
  /** Whether this is the run's last evaluation. */
  last: boolean;
  config?: Partial<DistillConfig> & { decay?: SweepDecay };
  /** `noise` rows: FID of the SiD generator with latent seed `seed`. */
  kind?: "noise";
  seconds?: number;
}

interface Space {
  detector: MnistFeatureNet;
  ref: Stats;
}

async function fidOf(net: EDMPrecond, space: Space, num: number, seed: number): Promise<number> {
  const r = await evaluateNetwork(net, space.detector, {
    num,
    seed,
    batch: 100,
    sampler: "onestep",
    steps: 1,
    sigmaInit: 2.5,
    metrics: new Set(["fid"]),
    ref: { stats: space.ref },
    gridCount: 0,
  });
  return r!.results.fid!;
}

async function readRows(path: string): Promise<Row[]> {
  let text = "";
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as Row);
}

const mean = (v: number[]) => v.length ? meanStd(v).mean : NaN;
const std = (v: number[]) => v.length ? meanStd(v).std ?? NaN : NaN;
const fmt = (v: number[]) =>
  v.length === 0
    ? "–"
    : v.length === 1
    ? v[0].toFixed(1)
    : `${mean(v).toFixed(1)} ± ${std(v).toFixed(1)}`;

/** A Markdown summary of the sweep: per setting, FID (mean ± std over seeds) at each point. */
export function summarize(rows: Row[]): string {
  const lines: string[] = [];
  const noise = rows.filter((r) => r.kind === "noise");
  if (noise.length) {
    lines.push(
      `Sampling noise (the SiD generator, ${noise.length} latent sets): FID mnist ${
        fmt(noise.map((r) => r.fidA))
      }, mnist-b ${fmt(noise.map((r) => r.fidB))}.`,
      "",
    );
  }
  const runs = rows.filter((r) => r.kind !== "noise");
  const settings = [...new Set(runs.map((r) => r.setting))];
  const iters = [...new Set(runs.map((r) => r.iteration))].sort((a, b) => a - b);
  lines.push(
    `| setting | seeds | space | ${iters.map((i) => `it ${i}`).join(" | ")} | steady |`,
    `| --- | --- | --- | ${iters.map(() => "---").join(" | ")} | --- |`,
  );
  for (const s of settings) {
    const mine = runs.filter((r) => r.setting === s);
    const seeds = [...new Set(mine.map((r) => r.seed))].sort((a, b) => a - b);
    for (const [space, key] of [["mnist", "fidA"], ["mnist-b", "fidB"]] as const) {
      const cells = iters.map((i) => fmt(mine.filter((r) => r.iteration === i).map((r) => r[key])));
      // Steady: for every seed, the last FID is below the first and within 10% of the run's
      // best (the FID fell and stayed down).
      const steady = seeds.map((sd) => {
        const curve = mine.filter((r) => r.seed === sd).sort((a, b) => a.iteration - b.iteration)
          .map((r) => r[key]);
        const last = curve[curve.length - 1];
        return last < curve[0] && last <= 1.1 * Math.min(...curve);
      });
      lines.push(
        `| ${s} | ${seeds.join(",")} | ${space} | ${cells.join(" | ")} | ${
          steady.filter(Boolean).length
        }/${seeds.length} |`,
      );
    }
  }
  return lines.join("\n");
}

/** `--extra-ema`: `kimg:ratio` pairs, the ratio a number > 0 or `none` (no ramp-up). */
export function parseExtraEmas(
  flag: string | undefined,
): { kimg: number; ratio: number | null }[] {
  if (flag === undefined || flag === "") return [];
  return flag.split(",").map((part) => {
    const [k, r, ...rest] = part.split(":");
    const kimg = Number(k);
    const ratio = r === undefined || r === "none" ? null : Number(r);
    if (rest.length || !(kimg > 0) || (ratio !== null && !(ratio > 0))) {
      throw new UsageError(
        `--extra-ema: '${part}' is not KIMG:RATIO (a half-life > 0, a ramp-up ratio > 0 or none)`,
      );
    }
    return { kimg, ratio };
  });
}

async function main() {
  const f = parseFlags(Deno.args, {
    string: [
      "sid",
      "out",
      "teacher",
      "configs",
      "seeds",
      "iters",
      "every",
      "num",
      "noise-seeds",
      "summary",
      "save",
      "log",
      "extra-ema",
    ],
  }, USAGE);
  if (f.summary) {
    console.log(summarize(await readRows(f.summary as string)));
    return;
  }
  if (!f.sid || !f.out) throw new UsageError(USAGE);
  const out = f.out as string;
  const settings = ((f.configs as string) ?? "preset,warmup-it,lr3e-5-warmup-it").split(",");
  for (const s of settings) {
    if (!SWEEP_SETTINGS[s]) {
      throw new UsageError(
        `unknown setting '${s}' (expected: ${Object.keys(SWEEP_SETTINGS).join(", ")})`,
      );
    }
  }
  const seeds = ((f.seeds as string) ?? "0,1,2").split(",").map((s) =>
    numberFlag("seeds", s, 0, { integer: true, min: 0 })
  );
  const iters = numberFlag("iters", f.iters, 36, { integer: true, min: 1 });
  const every = numberFlag("every", f.every, 6, { integer: true, min: 1 });
  const num = numberFlag("num", f.num, 1000, { integer: true, min: 10 });
  const noiseSeeds = numberFlag("noise-seeds", f["noise-seeds"], 3, { integer: true, min: 0 });
  const save = f.save as string | undefined;
  const extraEmas = parseExtraEmas(f["extra-ema"] as string | undefined);
  const log = f.log as string | undefined;
  if (save) await Deno.mkdir(save, { recursive: true });
  const backend = await startBackend(f.backend as string | undefined);
  console.log(`backend: ${backend.name}`);
  const teacher = await loadNetwork((f.teacher as string) ?? "data/mnist-teacher.safetensors");
  const sid = await loadNetwork(f.sid as string);
  const dataset = await mnistDataset();
  const spaces: Space[] = [
    {
      detector: await MnistFeatureNet.load(DEFAULT_MNIST_FEATURES),
      ref: await loadRefStats(DEFAULT_MNIST_REF_STATS),
    },
    {
      detector: await MnistFeatureNet.load(DEFAULT_MNIST_FEATURES_B),
      ref: await loadRefStats(DEFAULT_MNIST_REF_STATS_B),
    },
  ];
  const EVAL_SEED = 1_000_003;
  const rows = await readRows(out);
  const append = async (r: Row) => {
    await Deno.writeTextFile(out, JSON.stringify(r) + "\n", { append: true });
    rows.push(r);
  };
  // The noise of one FID: the SiD generator on different latent sets.
  for (let k = 0; k < noiseSeeds; k++) {
    const seed = EVAL_SEED + k;
    if (rows.some((r) => r.kind === "noise" && r.seed === seed)) continue;
    const [fidA, fidB] = [
      await fidOf(sid, spaces[0], num, seed),
      await fidOf(sid, spaces[1], num, seed),
    ];
    await append({
      kind: "noise",
      setting: "sid",
      seed,
      iteration: 0,
      kimg: 0,
      fidA,
      fidB,
      last: true,
    });
    console.log(
      `noise: latent seed ${seed}: FID mnist ${fidA.toFixed(2)}, mnist-b ${fidB.toFixed(2)}`,
    );
  }
  for (const seed of seeds) {
    for (const setting of settings) {
      const done = rows.some((r) => r.setting === setting && r.seed === seed && r.last);
      if (done) continue;
      // A partial run of this pair is dropped from the file and redone.
      const keep = rows.filter((r) =>
        !((r.setting === setting || r.setting.startsWith(`${setting}@`)) && r.seed === seed &&
          !r.kind)
      );
      if (keep.length !== rows.length) {
        await Deno.writeTextFile(out, keep.map((r) => JSON.stringify(r) + "\n").join(""));
        rows.splice(0, rows.length, ...keep);
      }
      const overrides = SWEEP_SETTINGS[setting];
      const decay = SWEEP_DECAY[setting];
      const config = { ...baseConfig(), ...overrides, seed };
      const d = await sweepDistiller(setting, config, {
        teacher,
        dataset,
        sid,
        sidPath: f.sid as string,
      });
      // Further EMA copies of G, started (as G_ema) from the SiD generator.
      const shadows: { name: string; net: EDMPrecond; ema: Ema }[] = [];
      for (const e of extraEmas) {
        const net = (await loadNetwork(f.sid as string)) as EDMPrecond;
        shadows.push({
          name: `${setting}@ema${e.kimg}r${e.ratio ?? "none"}`,
          net,
          ema: new Ema(net, d.G as EDMPrecond, {
            halflifeKimg: e.kimg,
            batchSize: config.batch,
            rampupRatio: e.ratio,
          }),
        });
      }
      const t0 = performance.now();
      // At iteration 0 G_ema is the SiD generator: its FIDs on these latents are the first
      // noise row's when there is one.
      const start = rows.find((r) => r.kind === "noise" && r.seed === EVAL_SEED);
      const evalAt = async (iteration: number) => {
        // The extra EMAs first: the setting's own row (last) marks the pair complete.
        const nets = [
          ...shadows.map((s) => ({ name: s.name, net: s.net, extra: true })),
          { name: setting, net: d.Gema as EDMPrecond, extra: false },
        ];
        for (const { name, net, extra } of nets) {
          const [fidA, fidB] = iteration === 0 && start ? [start.fidA, start.fidB] : [
            await fidOf(net, spaces[0], num, EVAL_SEED),
            await fidOf(net, spaces[1], num, EVAL_SEED),
          ];
          if (save) await saveNetwork(net, `${save}/${name}-s${seed}-it${iteration}.safetensors`);
          await append({
            setting: name,
            seed,
            iteration,
            kimg: d.curNimg / 1000,
            fidA,
            fidB,
            last: iteration === iters,
            config: iteration === 0 && !extra
              ? { ...overrides, ...(decay ? { decay } : {}) }
              : undefined,
            seconds: (performance.now() - t0) / 1000,
          });
          console.log(
            `${name} seed ${seed} it ${iteration}: FID mnist ${fidA.toFixed(2)}, mnist-b ${
              fidB.toFixed(2)
            } (${
              ((performance.now() - t0) / 1000).toFixed(0)
            } s, ${tf.memory().numTensors} tensors)`,
          );
        }
      };
      await evalAt(0);
      for (let i = 1; i <= iters; i++) {
        if (decay && i === decay.after + 1) {
          d.setLearningRates(decay);
          if (decay.lsgGan !== undefined) d.config.lsgGan = decay.lsgGan;
        }
        const st = await d.step();
        // The images seen before this iteration, as the Distiller's own EMA phase uses them.
        for (const s of shadows) s.ema.update(d.curNimg - config.batch);
        if (log) {
          const line = {
            setting,
            seed,
            iteration: i,
            lossG: st.lossG,
            lossGGan: st.lossGGan,
            lossFake: st.lossFake,
            lossD: st.lossD,
            weightFactor: st.weightFactor,
            gStep: st.gStep,
            ganActive: st.ganActive,
          };
          await Deno.writeTextFile(log, JSON.stringify(line) + "\n", { append: true });
        }
        if (i % every === 0 || i === iters) await evalAt(i);
      }
      for (const s of shadows) s.net.dispose();
      d.dispose();
    }
  }
  console.log(summarize(rows));
}

if (import.meta.main) await runMain(main);
