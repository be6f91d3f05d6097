/**
 * Mean ± standard deviation over several finished `deno task distill` runs (one per seed) of the
 * scores their reports give: the teacher, and each stage's best and last generator, in every
 * feature space the reports share (FID and KID), with IS. README's Results tables are made with it
 * (issue 15: "mean ± std over ≥ 3 seeds").
 *
 * The standard deviation is the sample one (n − 1); with one run it is left out. The teacher is
 * one network, so its recorded scores (`teacher.shipped`), shared by the reports, count once. A row whose
 * generator a report lacks (a run without that stage, or not evaluated) counts the runs that have
 * it, and says so in the `runs` column.
 *
 *   deno run -A tools/seed_summary.ts runs/preset2-s0 runs/preset2-s1 runs/preset2-s2
 *   deno run -A tools/seed_summary.ts --json runs/a runs/b
 *
 * @module
 */
import { join } from "node:path";
import { parseFlags, runMain, UsageError } from "../lib/runtime/cli.ts";

const USAGE = "usage: tools/seed_summary.ts RUN [RUN ...] [--json]";

/** One generator's scores as a chain report (`report.json`) records them. */
export interface ScoredMetrics {
  spaces: Record<string, { fid: number; kid?: number }>;
  is?: { mean: number };
}

/** The parts of a chain report (`sida-distill-report/2`) this summary reads. */
export interface ChainReportLike {
  out?: string;
  teacher?: { shipped?: ScoredMetrics | null } & Record<string, unknown>;
  stages: {
    stage: string;
    title: string;
    best?: { kimg: number; metrics?: ScoredMetrics } | null;
    last?: { kimg: number; metrics?: ScoredMetrics } | null;
  }[];
}

/** Mean, sample standard deviation (null for one value) and count. */
export interface MeanStd {
  mean: number;
  std: number | null;
  n: number;
}

/** One row of the summary: a generator (the teacher, or a stage's best or last). */
export interface SummaryRow {
  name: string;
  runs: number;
  /** `<space> FID`, `<space> KID` and `IS` → mean ± std over the runs that have it. */
  columns: Record<string, MeanStd>;
  /** The snapshots' kimg within their stage (best rows), one per run. */
  kimg: number[];
}

/** Mean and sample standard deviation (n − 1) of `xs`; null standard deviation for one value. */
export function meanStd(xs: number[]): MeanStd {
  if (xs.length === 0) throw new Error("meanStd of no values");
  const n = xs.length;
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  if (n === 1) return { mean, std: null, n };
  const v = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1);
  return { mean, std: Math.sqrt(v), n };
}

/** The column values of one generator's scores, in the order of `spaces`. */
function columnsOf(m: ScoredMetrics, spaces: string[]): Record<string, number> {
  const c: Record<string, number> = {};
  for (const s of spaces) {
    const v = m.spaces[s];
    if (!v) continue;
    c[`${s} FID`] = v.fid;
    if (v.kid !== undefined) c[`${s} KID`] = v.kid;
  }
  if (m.is) c.IS = m.is.mean;
  return c;
}

/**
 * The summary rows of several reports: the teacher's recorded scores (when every report has them)
 * and each stage's best and last generator, with mean ± std per column over the runs that have it.
 * Throws when the reports share no feature space.
 */
export function summarizeReports(reports: ChainReportLike[]): {
  spaces: string[];
  rows: SummaryRow[];
} {
  if (reports.length === 0) throw new UsageError("no reports to summarize");
  const spacesOf = (r: ChainReportLike) => {
    const s = new Set<string>();
    for (const st of r.stages) {
      for (const g of [st.best, st.last]) {
        for (const k of Object.keys(g?.metrics?.spaces ?? {})) s.add(k);
      }
    }
    return s;
  };
  const first = [...spacesOf(reports[0])];
  const spaces = first.filter((s) => reports.every((r) => spacesOf(r).has(s)));
  if (spaces.length === 0) throw new UsageError("the reports share no scored feature space");
  const rows: SummaryRow[] = [];
  const addRow = (name: string, items: { m: ScoredMetrics; kimg: number }[]) => {
    if (items.length === 0) return;
    const values: Record<string, number[]> = {};
    for (const { m } of items) {
      for (const [k, v] of Object.entries(columnsOf(m, spaces))) (values[k] ??= []).push(v);
    }
    const columns: Record<string, MeanStd> = {};
    for (const [k, v] of Object.entries(values)) columns[k] = meanStd(v);
    rows.push({ name, runs: items.length, columns, kimg: items.map((i) => i.kimg) });
  };
  // The teacher is one network: a record shared by every report counts once.
  const teachers = new Map<string, ScoredMetrics>();
  for (const r of reports) {
    const t = r.teacher?.shipped;
    if (t?.spaces) teachers.set(JSON.stringify(t), t);
  }
  addRow("teacher", [...teachers.values()].map((m) => ({ m, kimg: 0 })));
  const stageNames: { stage: string; title: string }[] = [];
  for (const r of reports) {
    for (const st of r.stages) {
      if (!stageNames.some((s) => s.stage === st.stage)) stageNames.push(st);
    }
  }
  for (const { stage, title } of stageNames) {
    for (const which of ["best", "last"] as const) {
      const items: { m: ScoredMetrics; kimg: number }[] = [];
      for (const r of reports) {
        const g = r.stages.find((s) => s.stage === stage)?.[which];
        if (g?.metrics?.spaces) items.push({ m: g.metrics, kimg: g.kimg });
      }
      addRow(`${title} ${which}`, items);
    }
  }
  return { spaces, rows };
}

/** `mean ± std` with `digits` decimals (only the mean for one run). */
function fmt(v: MeanStd | undefined, digits: number): string {
  if (!v) return "–";
  return v.std === null
    ? v.mean.toFixed(digits)
    : `${v.mean.toFixed(digits)} ± ${v.std.toFixed(digits)}`;
}

/** The summary as a Markdown table; FIDs and KIDs of a space whose FIDs are below 10 get 3 digits. */
export function summaryMarkdown(s: { spaces: string[]; rows: SummaryRow[] }): string {
  const cols = s.rows.length ? Object.keys(s.rows[0].columns) : [];
  for (const r of s.rows) {
    for (const k of Object.keys(r.columns)) if (!cols.includes(k)) cols.push(k);
  }
  const digits = (col: string) => {
    const space = s.spaces.find((sp) => col.startsWith(`${sp} `));
    if (!space) return 2;
    const fids = s.rows.map((r) => r.columns[`${space} FID`]?.mean ?? Infinity);
    return Math.min(...fids) < 10 ? 3 : 2;
  };
  const lines = [
    `| generator | runs | ${cols.join(" | ")} |`,
    `| --- | --- | ${cols.map(() => "---").join(" | ")} |`,
  ];
  for (const r of s.rows) {
    lines.push(
      `| ${r.name} | ${r.runs} | ${cols.map((c) => fmt(r.columns[c], digits(c))).join(" | ")} |`,
    );
  }
  return lines.join("\n");
}

if (import.meta.main) {
  await runMain(async () => {
    const f = parseFlags(Deno.args, { boolean: ["json"] }, USAGE);
    const dirs = f.positionals;
    if (dirs.length === 0) throw new UsageError(USAGE);
    const reports: ChainReportLike[] = [];
    for (const d of dirs) {
      const path = join(d, "report.json");
      let text: string;
      try {
        text = await Deno.readTextFile(path);
      } catch (e) {
        throw new UsageError(`${path}: ${e instanceof Error ? e.message : e}`);
      }
      let r: ChainReportLike;
      try {
        r = JSON.parse(text);
      } catch {
        throw new UsageError(`${path}: not JSON`);
      }
      if (!Array.isArray(r?.stages)) throw new UsageError(`${path}: not a chain report`);
      reports.push(r);
    }
    const s = summarizeReports(reports);
    console.log(f.json ? JSON.stringify(s, null, 1) : summaryMarkdown(s));
  });
}
