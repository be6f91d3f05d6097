/**
 * The report of a distillation chain (`deno task distill`): `report.json` and `report.md` in the
 * run folder. Per stage: its best snapshot (lowest FID scored during training) and its last one,
 * which of them the report uses, and for each FID and KID in every feature space (one sample
 * count, seed and set of reference statistics per space for every generator of a report) and
 * IS; images seen (kimg), training and evaluation wall time, backend, the generator files, sample
 * grids; the FID scored at every snapshot (FID against images seen); the teacher's scores —
 * evaluated by the chain (`--eval-teacher`), or its FID as shipped with the teacher file
 * ({@linkcode readShippedTeacherFid}); and the claims the numbers allow (`docs/metrics.md`: one
 * generator beats another only when every feature space agrees beyond the noise, otherwise
 * "within noise").
 *
 * @module
 */
import { basename, join } from "node:path";
import { writeFileAtomic } from "../io/atomic.ts";
import { readSafetensorsHeader } from "../io/safetensors.ts";
import type { MeanStd } from "../metrics/stats.ts";
import type { SpaceComparison, Verdict } from "../metrics/compare.ts";

/** The format tag of `report.json`. */
export const REPORT_FORMAT = "sida-distill-report/2";

/** FID, KID and (where computed) precision/recall of one generator in one feature space. */
export interface SpaceScores {
  fid: number;
  kid: number;
  /** Standard deviation of the per-subset KID estimates. */
  kidStd: number;
  kidSubsetSize?: number;
  /** Improved precision (k = 3): the share of samples inside the real manifold. */
  precision?: number;
  /** Improved recall (k = 3): the share of real images inside the samples' manifold. */
  recall?: number;
}

/** A teacher FID and where it comes from. */
export interface TeacherFid {
  /** The FID. */
  fid: number;
  /** Samples it was computed on, when recorded. */
  num?: number;
  /** Network evaluations per sample (35 for EDM's 18-step Heun sampler), when recorded. */
  nfe?: number;
  /** The reference statistics it was computed against, when recorded. */
  ref?: string;
  /** IS, when recorded. */
  is?: MeanStd;
  /** `shipped` (the teacher file's metadata or sidecar JSON) or `evaluated` (by this chain). */
  origin: "shipped" | "evaluated";
  /** The file it was read from. */
  source: string;
  /**
   * Per feature space: evaluated by this chain, or shipped (a record's `spaces`, as the chain's
   * `eval/teacher/metrics.json` writes them, used only where {@linkcode shippedSpacesMatch} holds).
   */
  spaces?: Record<string, ShippedSpaceScores>;
  /** The sampling seed, when recorded. */
  seed?: number;
  /** SHA-256 of the teacher file that was scored, when recorded. */
  sha256?: string;
}

/** A shipped space's scores with the detector and reference statistics they were computed with. */
export interface ShippedSpaceScores extends SpaceScores {
  detector?: string;
  ref?: string;
}

/**
 * Whether a shipped record's per-space scores were computed with this report's settings: the same
 * teacher file (SHA-256), sample count and seed, and for every space of the report the same
 * detector and reference statistics (by file name: the record was made in another checkout).
 */
export function shippedSpacesMatch(
  t: TeacherFid,
  want: { sha256: string; num: number; seed: number },
  spaces: readonly { name: string; detector: string; ref: string }[],
): boolean {
  if (!t.spaces || t.sha256 !== want.sha256 || t.num !== want.num || t.seed !== want.seed) {
    return false;
  }
  return spaces.every((x) => {
    const r = t.spaces![x.name];
    return r !== undefined && r.detector !== undefined && r.ref !== undefined &&
      basename(r.detector) === basename(x.detector) && basename(r.ref) === basename(x.ref);
  });
}

/** FID of one evaluated snapshot. */
export interface SnapshotMetrics {
  /** The snapshot file, relative to the run folder. */
  generator: string;
  /** Images seen in its stage (kimg). */
  kimg: number;
  /** Images seen over the whole chain (kimg). */
  cumulativeKimg: number;
  fid: number;
  is: MeanStd | null;
}

/** A stage's best or last snapshot. */
export interface PickedReport {
  which: "best" | "last";
  /** The copy evaluated (`network-snapshot-best.safetensors`, …), relative to the run folder. */
  generator: string;
  /** The numbered snapshot it was copied from. */
  snapshot: string;
  /** Images seen in its stage (kimg). */
  kimg: number;
  /** Images seen over the whole chain (kimg). */
  cumulativeKimg: number;
  /** The FID it was picked by (scored during training), or null. */
  selectionFid: number | null;
  /** The final comparison's scores (null when not evaluated with the report's settings). */
  metrics: {
    num: number;
    seed: number;
    spaces: Record<string, SpaceScores>;
    is: MeanStd;
    evalSeconds: number;
    backend: string;
  } | null;
  metricsFile: string | null;
  grid: string | null;
}

/** A claim checked by the rule of `docs/metrics.md`. */
export interface ComparisonReport {
  /** The first generator (`SiD²A best (2.304 kimg)`). */
  a: string;
  /** The second. */
  b: string;
  /** `better`: a beats b; `worse`: b beats a; else no claim. */
  verdict: Verdict | "not compared";
  reason: string;
  spaces: SpaceComparison[];
}

/** One distillation stage of the report. */
export interface StageReport {
  /** `sid` or `sida`. */
  stage: string;
  /** `SiD`, `SiD²A` (or `SiDA`). */
  title: string;
  /** Images seen in this stage (kimg). */
  kimg: number;
  /** Images seen over the whole chain at its end (kimg). */
  cumulativeKimg: number;
  /** Training wall time over all sessions (seconds). */
  trainSeconds: number | null;
  /** The training backend (of the session that finished the stage). */
  backend: string | null;
  /** Whether the stage was resumed from a training state. */
  resumed: boolean;
  /** Which snapshot the report uses: the best when snapshots were scored, else the last. */
  used: "best" | "last";
  /** The best snapshot (lowest FID scored during training), or null when none was scored. */
  best: PickedReport | null;
  /** The last snapshot. */
  last: PickedReport;
  /** The generator used, relative to the run folder. */
  generator: string;
  /** FID of the generator used, first feature space (null when not evaluated). */
  fid: number | null;
  /** IS of the generator used. */
  is: MeanStd | null;
  /** Samples behind FID and IS. */
  num: number | null;
  /** Reference statistics behind the FID. */
  ref: string | null;
  /** Evaluation wall time of the final generator (seconds). */
  evalSeconds: number | null;
  /** The evaluation backend. */
  evalBackend: string | null;
  /** Metrics file of the generator used, relative to the run folder. */
  metricsFile: string | null;
  /** Sample grid of the generator used, relative to the run folder. */
  grid: string | null;
  /** Every snapshot scored during training, by images seen. */
  snapshots: SnapshotMetrics[];
}

/** `report.json`. */
export interface ChainReport {
  format: typeof REPORT_FORMAT;
  /** When the report was written (ISO 8601). */
  createdAt: string;
  /** The run folder. */
  out: string;
  /** The distillation preset. */
  preset: string;
  /** The real data (zip path or `mnist`). */
  data: string;
  /**
   * The teacher: the file given, its SHA-256, its FID as shipped (metadata or sidecar JSON) and
   * as evaluated by this chain with the report's settings (`--eval-teacher`), each or null.
   */
  teacher: {
    source: string;
    sha256: string;
    shipped: TeacherFid | null;
    evaluated: TeacherFid | null;
  };
  /** The settings behind every FID and IS of the report (`features` … `ref`: the first space). */
  evaluation: {
    num: number;
    seed: number;
    features: string;
    detector: string;
    ref: string;
    sampler: string;
    /** Every feature space of the final comparison. */
    spaces: { name: string; features: string; detector: string; ref: string }[];
    /** KID: subsets and their largest size. */
    kid: { subsets: number; maxSubsetSize: number };
    /** How snapshots were scored during training (the best is the lowest), or null. */
    snapshotScoring: { num: number; seed: number; space: string } | null;
    /** Standard deviations a KID lead must exceed for a claim. */
    noiseZ: number;
  };
  /** The distillation stages that have finished. */
  stages: StageReport[];
  /** Claims checked by the rule of `docs/metrics.md`. */
  comparisons: ComparisonReport[];
  /** Plot files, relative to the run folder. */
  plots: string[];
  /** Remarks (SVG-only plots, stages not evaluated, a teacher FID on other settings, …). */
  notes: string[];
}

function num(v: unknown): number | undefined {
  if (typeof v === "number" && Number.isFinite(v)) return v;
  if (typeof v === "string" && v.trim() !== "" && Number.isFinite(Number(v))) return Number(v);
  return undefined;
}

function maybeJson(v: unknown): unknown {
  if (typeof v !== "string") return v;
  const t = v.trim();
  if (!t.startsWith("{")) return v;
  try {
    return JSON.parse(t);
  } catch {
    return v;
  }
}

/**
 * Finds a FID in a record: a numeric `fid` (or `fid35`, `fid_heun`) at the top level or in a
 * nested `metrics` / `eval` / `evaluation` / `fid` object (JSON strings are parsed, as safetensors
 * metadata holds strings). Sample count from `num` / `fid_num` / `numImages` / `samples`, NFE
 * from `nfe` / `fid_nfe`, reference from `ref` / `fid_ref` / `refStats`.
 */
function fidIn(obj: unknown): Omit<TeacherFid, "origin" | "source"> | null {
  const o = maybeJson(obj);
  if (!o || typeof o !== "object" || Array.isArray(o)) return null;
  const r = o as Record<string, unknown>;
  const fid = num(r.fid) ?? num(r.fid35) ?? num(r.fid_heun);
  if (fid !== undefined) {
    const out: Omit<TeacherFid, "origin" | "source"> = { fid };
    const n = num(r.num) ?? num(r.fid_num) ?? num(r.numImages) ?? num(r.samples);
    if (n !== undefined) out.num = n;
    const nfe = num(r.nfe) ?? num(r.fid_nfe);
    if (nfe !== undefined) out.nfe = nfe;
    else if (num(r.fid35) !== undefined) out.nfe = 35;
    const ref = r.ref ?? r.fid_ref ?? r.refStats;
    if (typeof ref === "string") out.ref = ref;
    const is = maybeJson(r.is) as Record<string, unknown> | undefined;
    const isMean = num(is?.mean);
    if (isMean !== undefined) out.is = { mean: isMean, std: num(is?.std) ?? 0 };
    const seed = num(r.seed);
    if (seed !== undefined) out.seed = seed;
    if (typeof r.sha256 === "string") out.sha256 = r.sha256;
    const spaces = spacesIn(r.spaces);
    if (spaces) out.spaces = spaces;
    return out;
  }
  for (const k of ["metrics", "eval", "evaluation", "fid"]) {
    const inner = fidIn(r[k]);
    if (inner) return inner;
  }
  return null;
}

/** Per-space scores of a record (`{name: {fid, kid, kidStd, detector, ref}}`), if all are valid. */
function spacesIn(v: unknown): Record<string, ShippedSpaceScores> | undefined {
  if (!v || typeof v !== "object" || Array.isArray(v)) return undefined;
  const out: Record<string, ShippedSpaceScores> = {};
  for (const [name, x] of Object.entries(v as Record<string, unknown>)) {
    if (!x || typeof x !== "object") return undefined;
    const r = x as Record<string, unknown>;
    const fid = num(r.fid), kid = num(r.kid), kidStd = num(r.kidStd);
    if (fid === undefined || kid === undefined || kidStd === undefined) return undefined;
    const s: ShippedSpaceScores = { fid, kid, kidStd };
    const subset = num(r.kidSubsetSize);
    if (subset !== undefined) s.kidSubsetSize = subset;
    const precision = num(r.precision), recall = num(r.recall);
    if (precision !== undefined && recall !== undefined) Object.assign(s, { precision, recall });
    if (typeof r.detector === "string") s.detector = r.detector;
    if (typeof r.ref === "string") s.ref = r.ref;
    out[name] = s;
  }
  return Object.keys(out).length ? out : undefined;
}

/** The sample count and reference statistics a report's FIDs use. */
export interface FidSettings {
  num: number;
  ref: string;
}

/**
 * Every FID record in a sidecar or metadata object: the record `fidIn` finds, then those of its
 * `more` list (FIDs of the same teacher at other sample counts or against other statistics).
 */
function fidRecords(obj: unknown): Omit<TeacherFid, "origin" | "source">[] {
  const first = fidIn(obj);
  const o = maybeJson(obj) as Record<string, unknown> | null;
  const more = o && typeof o === "object" && Array.isArray(o.more) ? o.more : [];
  return [
    ...(first ? [first] : []),
    ...more.map(fidIn).filter((r): r is Omit<TeacherFid, "origin" | "source"> => r !== null),
  ];
}

function matches(r: Omit<TeacherFid, "origin" | "source">, want: FidSettings): boolean {
  return r.num === want.num && r.ref !== undefined && basename(r.ref) === basename(want.ref);
}

/**
 * The teacher's shipped FID: from a sidecar JSON (`<teacher without extension>.json`, then
 * `<teacher>.json`), else from the safetensors metadata of the teacher file (see `fidIn` for the
 * keys read; a `more` list holds FIDs at other sample counts). With `want`, the record computed
 * on that many samples against those statistics (same file name) when there is one (of several,
 * one with per-space scores first), else the first record. Null when neither records one.
 */
export async function readShippedTeacherFid(
  teacherPath: string,
  want?: FidSettings,
): Promise<TeacherFid | null> {
  const pick = (obj: unknown, source: string): TeacherFid | null => {
    const all = fidRecords(obj);
    // Of the records made with the wanted settings, one with per-space scores first.
    const matching = want ? all.filter((x) => matches(x, want)) : [];
    const r = matching.find((x) => x.spaces) ?? matching[0] ?? all[0];
    return r ? { ...r, origin: "shipped", source } : null;
  };
  const stem = teacherPath.replace(/\.(safetensors|pkl|pt|pth)$/i, "");
  for (const sidecar of [`${stem}.json`, `${teacherPath}.json`]) {
    if (sidecar === teacherPath) continue;
    let text: string;
    try {
      text = await Deno.readTextFile(sidecar);
    } catch {
      continue;
    }
    try {
      const found = pick(JSON.parse(text), sidecar);
      if (found) return found;
    } catch {
      // not JSON: ignore
    }
  }
  if (teacherPath.toLowerCase().endsWith(".safetensors")) {
    try {
      const { metadata } = await readSafetensorsHeader(teacherPath);
      const found = pick(metadata, teacherPath);
      if (found) return found;
    } catch {
      // unreadable header: no FID
    }
  }
  return null;
}

function f(v: number | null | undefined, digits = 2): string {
  return v === null || v === undefined || !Number.isFinite(v) ? "–" : v.toFixed(digits);
}

function kimgText(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toFixed(3).replace(/0+$/, "").replace(/\.$/, "");
}

function duration(sec: number | null): string {
  if (sec === null || !Number.isFinite(sec)) return "–";
  const s = Math.round(sec);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (h > 0) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m > 0) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${s} s`;
}

function isText(is: MeanStd | null | undefined): string {
  return is ? `${is.mean.toFixed(3)} ± ${is.std.toFixed(3)}` : "–";
}

/** A path for display: relative to the working directory when inside it. */
function shown(path: string): string {
  let cwd = "";
  try {
    cwd = Deno.cwd();
  } catch {
    return path;
  }
  return path.startsWith(cwd + "/") ? path.slice(cwd.length + 1) : path;
}

function kid3(s: SpaceScores | undefined): string {
  return s ? `${kidText(s.kid)} ± ${kidText(s.kidStd)}` : "–";
}

/** Precision and recall for a log line (` P 0.856 R 0.580`), or "" when not computed. */
export function prText(s: SpaceScores | undefined): string {
  return s?.precision !== undefined && s.recall !== undefined
    ? ` P ${s.precision.toFixed(3)} R ${s.recall.toFixed(3)}`
    : "";
}

/**
 * A KID for display: three significant digits (its scale follows the detector's features: ~1e-3
 * with Inception, tens with our MNIST features).
 */
export function kidText(v: number): string {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a === 0) return "0";
  return a >= 1e4 || a < 1e-3 ? v.toExponential(2) : v.toPrecision(3);
}

/** Whether a stage's best snapshot is its last one. */
function sameSnapshot(s: StageReport): boolean {
  return s.best !== null && s.best.snapshot === s.last.snapshot && s.best.kimg === s.last.kimg &&
    s.best.selectionFid === s.last.selectionFid;
}

/** A claim in words. */
export function claimText(c: ComparisonReport): string {
  const detail = c.spaces.map((s) =>
    `${s.space}: FID ${signed(-s.fidGain)}, KID ${s.kidGain > 0 ? "−" : "+"}${
      kidText(Math.abs(s.kidGain))
    } (noise ${kidText(s.kidNoise)})`
  ).join("; ");
  switch (c.verdict) {
    case "better":
      return `**${c.a} beats ${c.b}** (${detail})`;
    case "worse":
      return `**${c.b} beats ${c.a}** (${detail})`;
    case "within noise":
      return `${c.a} vs ${c.b}: **within noise** (${c.reason}${detail ? `; ${detail}` : ""})`;
    default:
      return `${c.a} vs ${c.b}: not compared (${c.reason})`;
  }
}

function signed(v: number): string {
  return `${v >= 0 ? "+" : "−"}${Math.abs(v).toFixed(2)}`;
}

/** The report as Markdown (links relative to the run folder, other paths to the working folder). */
export function renderReportMarkdown(r: ChainReport): string {
  const e = r.evaluation;
  const names = e.spaces.map((s) => s.name);
  const lines: string[] = [];
  lines.push(`# Distillation report: \`${r.out}\``, "");
  lines.push(
    `Teacher \`${shown(r.teacher.source)}\` (SHA-256 \`${r.teacher.sha256.slice(0, 16)}…\`), ` +
      `preset \`${r.preset}\`, real data \`${r.data}\`. Written ${r.createdAt}.`,
    "",
  );
  lines.push(
    `Final comparison: **${e.num} samples** per generator (${e.sampler}, seed ${e.seed}) in ${
      e.spaces.length === 1 ? "one feature space" : `${e.spaces.length} feature spaces`
    }: ${
      e.spaces.map((s) => `\`${s.name}\` (\`${shown(s.detector)}\`, reference \`${shown(s.ref)}\`)`)
        .join(", ")
    }. KID: the mean over ${e.kid.subsets} subsets of at most ${e.kid.maxSubsetSize} ` +
      "samples ± the standard deviation of the subsets' estimates. IS from the first space's " +
      "classifier.",
    "",
  );
  lines.push(
    e.snapshotScoring
      ? `Each stage's **best** snapshot has the lowest FID scored during training (${e.snapshotScoring.num} samples, seed ${e.snapshotScoring.seed}, \`${e.snapshotScoring.space}\` features); its **last** is its final snapshot. The report uses the best.`
      : "Snapshots were not scored during training: the report uses each stage's last snapshot.",
    "",
  );
  const spaceHead = names.map((n) => `FID ${n} | KID ${n}`).join(" | ");
  lines.push(
    `| generator | file | images seen (kimg) | ${spaceHead} | IS | samples | training time | backend | eval time |`,
    `| --- | --- | --- | ${
      names.map(() => "--- | ---").join(" | ")
    } | --- | --- | --- | --- | --- |`,
  );
  for (const t of [r.teacher.evaluated, r.teacher.shipped]) {
    if (!t) continue;
    const sampler = t.nfe ? `${t.nfe} NFE` : "NFE not recorded";
    const cells = names.map((n, i) => {
      const s = t.spaces?.[n];
      if (s) return `${f(s.fid)} | ${kid3(s)}`;
      return `${i === 0 ? f(t.fid) : "–"} | –`;
    }).join(" | ");
    lines.push(
      `| teacher (${sampler}, ${t.origin}) | \`${basename(r.teacher.source)}\` | – | ${cells} | ${
        isText(t.is)
      } | ${t.num ?? "–"}${
        t.origin === "shipped" && t.ref ? ` (\`${basename(t.ref)}\`)` : ""
      } | – | – | – |`,
    );
  }
  for (const s of r.stages) {
    const same = sameSnapshot(s);
    for (const x of same ? [s.best!] : [s.best, s.last]) {
      if (!x) continue;
      const seen = x.cumulativeKimg !== x.kimg
        ? `${kimgText(x.kimg)} (${kimgText(x.cumulativeKimg)} in all)`
        : kimgText(x.kimg);
      const m = x.metrics;
      const cells = names.map((n) => `${f(m?.spaces[n]?.fid)} | ${kid3(m?.spaces[n])}`).join(
        " | ",
      );
      const tag = same ? "best = last, used" : s.used === x.which ? `${x.which}, used` : x.which;
      const picked = x.selectionFid === null
        ? ""
        : x.which === "best"
        ? `; picked at FID ${f(x.selectionFid)}`
        : `; FID ${f(x.selectionFid)} in training`;
      lines.push(
        `| ${s.title} ${tag} | \`${x.generator}\` (\`${
          basename(x.snapshot)
        }\`${picked}) | ${seen} | ${cells} | ${isText(m?.is)} | ${m?.num ?? "–"} | ${
          duration(s.trainSeconds)
        }${s.resumed ? " (resumed)" : ""} | ${s.backend ?? "–"} | ${
          duration(m?.evalSeconds ?? null)
        } |`,
      );
    }
  }
  lines.push("");
  lines.push(...precisionRecallSection(r));
  if (r.comparisons.length) {
    lines.push(
      "## Claims",
      "",
      `A generator beats another only when, in every feature space, both its FID and its KID ` +
        `are lower and its KID lead exceeds ${e.noiseZ} × √(s₁² + s₂²), s the spread of each ` +
        "KID (its subsets' standard deviation × √(subset size / samples); docs/metrics.md); " +
        "otherwise the pair is within noise. Differences are first minus second.",
      "",
    );
    for (const c of r.comparisons) lines.push(`- ${claimText(c)}`);
    lines.push("");
  }
  const snaps = r.stages.flatMap((s) =>
    s.snapshots.map((p) => ({
      ...p,
      title: s.title,
      best: s.best !== null && basename(s.best.snapshot) === basename(p.generator),
    }))
  );
  if (snaps.length) {
    lines.push(
      "## FID against images seen (scored during training)",
      "",
      "| stage | snapshot | kimg (stage) | kimg (chain) | FID | IS |",
      "| --- | --- | --- | --- | --- | --- |",
    );
    for (const p of snaps) {
      lines.push(
        `| ${p.title} | \`${p.generator}\`${p.best ? " (best)" : ""} | ${kimgText(p.kimg)} | ${
          kimgText(p.cumulativeKimg)
        } | ${f(p.fid)} | ${isText(p.is)} |`,
      );
    }
    lines.push("");
  }
  if (r.plots.length) {
    lines.push("## Plots", "");
    for (const p of r.plots) lines.push(`![${basename(p)}](${p})`, "");
  }
  const grids = r.stages.flatMap((s) =>
    (sameSnapshot(s) ? [s.best] : [s.best, s.last]).filter((x): x is PickedReport => !!x?.grid)
      .map((x) => ({
        title: `${s.title} ${sameSnapshot(s) ? "best = last" : x.which}`,
        grid: x.grid!,
      }))
  );
  if (grids.length) {
    lines.push("## Samples (one step)", "");
    for (const g of grids) lines.push(`${g.title}:`, "", `![${g.title} samples](${g.grid})`, "");
  }
  if (r.notes.length) {
    lines.push("## Notes", "");
    for (const n of r.notes) lines.push(`- ${n}`);
    lines.push("");
  }
  return lines.join("\n");
}

/**
 * The precision/recall table of the final comparison (docs/metrics.md §2): one row per generator
 * that has them, precision and recall per feature space. Empty when no generator has them.
 */
function precisionRecallSection(r: ChainReport): string[] {
  const names = r.evaluation.spaces.map((s) => s.name);
  const rows: { title: string; spaces: Record<string, SpaceScores> | undefined }[] = [];
  for (const t of [r.teacher.evaluated, r.teacher.shipped]) {
    if (t) rows.push({ title: `teacher (${t.nfe ?? "?"} NFE, ${t.origin})`, spaces: t.spaces });
  }
  for (const s of r.stages) {
    const same = sameSnapshot(s);
    for (const x of same ? [s.best!] : [s.best, s.last]) {
      if (x) {
        rows.push({
          title: `${s.title} ${same ? "best = last" : x.which}`,
          spaces: x.metrics?.spaces,
        });
      }
    }
  }
  const has = (sc: SpaceScores | undefined) =>
    sc?.precision !== undefined && sc.recall !== undefined;
  const shown = rows.filter((x) => names.some((n) => has(x.spaces?.[n])));
  if (!shown.length) return [];
  const out = [
    "## Precision and recall",
    "",
    `Improved precision and recall (k = 3) of the same ${r.evaluation.num} samples against as ` +
    "many real images, evenly spaced over the real set: precision is the share of samples " +
    "inside the real images' manifold (fidelity), recall the share of real images inside the " +
    "samples' manifold (coverage). Where two feature spaces disagree on FID, these usually say " +
    "why: one space punishes lost precision more than the other rewards gained recall.",
    "",
    `| generator | ${names.map((n) => `precision ${n} | recall ${n}`).join(" | ")} |`,
    `| --- | ${names.map(() => "--- | ---").join(" | ")} |`,
  ];
  for (const x of shown) {
    const cells = names.map((n) => {
      const sc = x.spaces?.[n];
      return has(sc) ? `${sc!.precision!.toFixed(3)} | ${sc!.recall!.toFixed(3)}` : "– | –";
    });
    out.push(`| ${x.title} | ${cells.join(" | ")} |`);
  }
  out.push("");
  return out;
}

/** Writes `report.json` and `report.md` into `dir`, atomically. */
export async function writeReport(dir: string, report: ChainReport): Promise<string[]> {
  const enc = new TextEncoder();
  const json = join(dir, "report.json");
  const md = join(dir, "report.md");
  await writeFileAtomic(json, enc.encode(JSON.stringify(report, null, 2) + "\n"));
  await writeFileAtomic(md, enc.encode(renderReportMarkdown(report)));
  return [json, md];
}

/** `path` relative to `dir` when it lies inside it, else unchanged. */
export function relativeTo(dir: string, path: string): string {
  const d = dir.replace(/\/+$/, "") + "/";
  return path.startsWith(d) ? path.slice(d.length) : path;
}
