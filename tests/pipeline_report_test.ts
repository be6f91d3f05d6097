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

type Scores = Record<string, SpaceScores>;

/** A report of one SiD²A stage (best and last) and an evaluated teacher. */
function makeReport(teacher: Scores, best: Scores, last: Scores): ChainReport {
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
  const cmp = (a: string, sa: Scores, b: string, sb: Scores) => {
    const c = compareGenerators(sa, sb, SPACES);
    return { a, b, verdict: c.verdict, reason: c.reason, spaces: c.spaces };
  };
  return {
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
}

Deno.test("report: both feature spaces with KID, best and last, claims by the noise rule", () => {
  const teacher = { mnist: sc(47.5, 0.030, 0.002), "mnist-b": sc(33.6, 0.020, 0.002) };
  const best = { mnist: sc(31.25, 0.012, 0.002), "mnist-b": sc(21.75, 0.008, 0.002) };
  const last = { mnist: sc(45.5, 0.029, 0.002), "mnist-b": sc(36.5, 0.021, 0.002) };
  const report = makeReport(teacher, best, last);
  const md = renderReportMarkdown(report);
  // No generator has precision/recall: no such section.
  assert.ok(!md.includes("Precision and recall"), md);
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

Deno.test("report: precision and recall per feature space, in their own table", () => {
  const pr = (s: SpaceScores, precision: number, recall: number) => ({ ...s, precision, recall });
  const teacher = { mnist: sc(47.5, 0.030, 0.002), "mnist-b": sc(33.6, 0.020, 0.002) };
  const best = {
    mnist: pr(sc(31.25, 0.012, 0.002), 0.8561, 0.5804),
    "mnist-b": pr(sc(21.75, 0.008, 0.002), 0.91, 0.625),
  };
  // The last generator has precision/recall in one space only (as a file from another checkout).
  const last = {
    mnist: pr(sc(45.5, 0.029, 0.002), 0.772, 0.749),
    "mnist-b": sc(36.5, 0.021, 0.002),
  };
  const md = renderReportMarkdown(makeReport(teacher, best, last));
  const section = md.slice(md.indexOf("## Precision and recall"));
  assert.ok(md.includes("## Precision and recall"), md);
  assert.ok(
    section.includes(
      "| generator | precision mnist | recall mnist | precision mnist-b | recall mnist-b |",
    ),
    section,
  );
  assert.ok(section.includes("| SiD²A best | 0.856 | 0.580 | 0.910 | 0.625 |"), section);
  assert.ok(section.includes("| SiD²A last | 0.772 | 0.749 | – | – |"), section);
  // The teacher has none: no row.
  assert.ok(!section.slice(0, section.indexOf("## Claims")).includes("teacher ("), section);
  // The section comes before the claims, after the main table.
  assert.ok(md.indexOf("## Precision and recall") < md.indexOf("## Claims"));
  assert.ok(md.indexOf("| SiD²A best, used |") < md.indexOf("## Precision and recall"));
});
