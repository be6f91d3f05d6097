/**
 * The distill report's Markdown (`lib/pipeline/report.ts`) on constructed numbers: both feature
 * spaces and KID in the table, best and last rows, which one is used, and claims printed by the
 * rule of docs/metrics.md — "beats" only when both spaces agree, "within noise" otherwise.
 */
import assert from "node:assert/strict";
import { compareGenerators } from "../lib/metrics/compare.ts";
import {
  type ChainReport,
  kidText,
  type PickedReport,
  renderReportMarkdown,
  type SpaceScores,
  type StageReport,
} from "../lib/pipeline/report.ts";

const SPACES = ["mnist", "mnist-b"];
const sc = (fid: number, kid: number, kidStd: number): SpaceScores => ({ fid, kid, kidStd });

function picked(
  which: "best" | "last",
  kimg: number,
  spaces: Record<string, SpaceScores>,
): PickedReport {
  return {
    which,
    generator: `sida/network-snapshot-${which}.safetensors`,
    snapshot: `sida/network-snapshot-${String(kimg * 1000).padStart(6, "0")}.safetensors`,
    kimg,
    cumulativeKimg: kimg + 5.12,
    selectionFid: spaces.mnist.fid + 3,
    metrics: {
      num: 10000,
      seed: 0,
      spaces,
      is: { mean: 9, std: 0.1 },
      evalSeconds: 60,
      backend: "cpu",
    },
    metricsFile: `eval/sida/${which}.json`,
    grid: null,
  };
}

Deno.test("report: both feature spaces with KID, best and last, claims by the noise rule", () => {
  const teacher = { mnist: sc(47.5, 0.030, 0.002), "mnist-b": sc(33.6, 0.020, 0.002) };
  const best = { mnist: sc(31.25, 0.012, 0.002), "mnist-b": sc(21.75, 0.008, 0.002) };
  const last = { mnist: sc(45.5, 0.029, 0.002), "mnist-b": sc(36.5, 0.021, 0.002) };
  const stage: StageReport = {
    stage: "sida",
    title: "SiD²A",
    kimg: 2.304,
    cumulativeKimg: 7.424,
    trainSeconds: 300,
    backend: "cpu",
    resumed: false,
    used: "best",
    best: picked("best", 1.152, best),
    last: picked("last", 2.304, last),
    generator: "sida/network-snapshot-best.safetensors",
    fid: best.mnist.fid,
    is: { mean: 9, std: 0.1 },
    num: 10000,
    ref: "ref.npz",
    evalSeconds: 60,
    evalBackend: "cpu",
    metricsFile: "eval/sida/best.json",
    grid: null,
    snapshots: [],
  };
  const cmp = (a: string, sa: typeof best, b: string, sb: typeof best) => {
    const c = compareGenerators(sa, sb, SPACES);
    return { a, b, verdict: c.verdict, reason: c.reason, spaces: c.spaces };
  };
  const report: ChainReport = {
    format: "sida-distill-report/2",
    createdAt: "2026-12-05T00:00:00Z",
    out: "runs/x",
    preset: "mnist",
    data: "mnist",
    teacher: {
      source: "teacher.safetensors",
      sha256: "0".repeat(64),
      shipped: null,
      evaluated: {
        fid: teacher.mnist.fid,
        num: 10000,
        nfe: 35,
        is: { mean: 8.9, std: 0.05 },
        origin: "evaluated",
        source: "eval/teacher/metrics.json",
        spaces: teacher,
      },
    },
    evaluation: {
      num: 10000,
      seed: 0,
      features: "mnist",
      detector: "f.safetensors",
      ref: "ref.npz",
      sampler: "one step, σ_init 2.5",
      spaces: [
        { name: "mnist", features: "mnist", detector: "f.safetensors", ref: "ref.npz" },
        { name: "mnist-b", features: "mnist", detector: "fb.safetensors", ref: "ref-b.npz" },
      ],
      kid: { subsets: 100, maxSubsetSize: 1000 },
      snapshotScoring: { num: 1000, seed: 1, space: "mnist" },
      noiseZ: 2,
    },
    stages: [stage],
    comparisons: [
      cmp("SiD²A best (1.152 kimg)", best, "the teacher (35 NFE)", teacher),
      cmp("SiD²A last (2.304 kimg)", last, "the teacher (35 NFE)", teacher),
    ],
    plots: [],
    notes: [],
  };
  const md = renderReportMarkdown(report);
  assert.match(md, /\*\*10000 samples\*\* per generator/);
  assert.ok(md.includes("| FID mnist | KID mnist | FID mnist-b | KID mnist-b |"), md);
  // The teacher row in both spaces, KID with its spread (three significant digits).
  assert.ok(md.includes("| 47.50 | 0.0300 ± 0.00200 | 33.60 | 0.0200 ± 0.00200 |"), md);
  assert.ok(md.includes("| SiD²A best, used |"), md);
  assert.ok(md.includes("| 31.25 | 0.0120 ± 0.00200 | 21.75 | 0.00800 ± 0.00200 |"), md);
  assert.ok(md.includes("| SiD²A last |"), md);
  assert.ok(md.includes("| 45.50 | 0.0290 ± 0.00200 | 36.50 | 0.0210 ± 0.00200 |"), md);
  assert.equal(kidText(25000.53), "2.50e+4");
  assert.equal(kidText(25.00053), "25.0");
  assert.equal(kidText(-0.0004567), "-4.57e-4");
  // Both spaces agree beyond the noise: a claim. The last's KID leads are inside the noise (and
  // its FIDs go opposite ways): within noise.
  assert.ok(md.includes("- **SiD²A best (1.152 kimg) beats the teacher (35 NFE)**"), md);
  assert.match(md, /- SiD²A last \(2\.304 kimg\) vs the teacher \(35 NFE\): \*\*within noise\*\*/);
  assert.ok(!md.includes("SiD²A last (2.304 kimg) beats"), md);
  assert.equal(report.comparisons[1].verdict, "within noise");
});
