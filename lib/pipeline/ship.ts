/**
 * Ships the one-step generator of a finished `deno task distill` run: copies the generator the
 * report uses for the last stage (SiD²A: its best or last snapshot) to a file of its own, with a
 * JSON sidecar that says where it came from — the commands, the date, the teacher's SHA-256, the
 * images seen, and the FID/KID/IS the chain measured for it and for the SiD stage before it.
 * `data/mnist-generator.safetensors` is made this way (`deno task ship-generator`).
 *
 * @example
 * ```ts
 * import { shipGenerator } from "./ship.ts";
 * const info = await shipGenerator("runs/distill-mnist", "data/mnist-generator.safetensors");
 * console.log(info.stage, info.scores);
 * ```
 *
 * @module
 */
import { join, resolve } from "node:path";
import { writeFileAtomic } from "../io/atomic.ts";
import { readSafetensorsHeader } from "../io/safetensors.ts";
import { type ChainReport, REPORT_FORMAT, type StageReport } from "./report.ts";

/** The format tag of a shipped generator's sidecar. */
export const SHIPPED_FORMAT = "sida-shipped-generator/1";

/** Scores of one generator as the chain measured them. */
export interface ShippedScores {
  /** Stage name (`sid`, `sida`). */
  stage: string;
  /** Which snapshot the report uses: the best one scored during training, or the last. */
  used: "best" | "last";
  /** Images seen in this stage and in the whole chain (kimg). */
  kimg: number;
  cumulativeKimg: number;
  /** Samples and seed of the evaluation, or null when the stage was not evaluated. */
  num: number | null;
  seed: number | null;
  /** FID and KID per feature space. */
  spaces: Record<string, { fid: number; kid: number; kidStd: number }>;
  /** Inception score (mean and std over splits), or null. */
  is: { mean: number; std: number } | null;
  /** Training wall time (s) and backend. */
  trainSeconds: number | null;
  backend: string | null;
}

/** The sidecar JSON of a shipped generator. */
export interface ShippedGenerator {
  format: typeof SHIPPED_FORMAT;
  /** When the generator was shipped, and when its report was written (ISO 8601). */
  shippedAt: string;
  reportCreatedAt: string;
  /** How to make it again. */
  commands: string[];
  /** The generator file's name, size and SHA-256. */
  file: string;
  bytes: number;
  sha256: string;
  /** The run's preset and data, and the teacher's SHA-256. */
  preset: string;
  data: string;
  teacherSha256: string;
  /** The shipped generator's scores (the last stage), then every stage's. */
  scores: ShippedScores;
  stages: ShippedScores[];
  /** The teacher's FID as the report gives it (shipped or evaluated), when known. */
  teacherFid: { fid: number; nfe: number | null; num: number | null } | null;
}

/** A shipping failure, with a one-line message naming the problem. */
export class ShipError extends Error {
  override name = "ShipError";
}

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function scoresOf(s: StageReport): ShippedScores {
  const picked = s.used === "best" && s.best ? s.best : s.last;
  const m = picked.metrics;
  const spaces: ShippedScores["spaces"] = {};
  for (const [k, v] of Object.entries(m?.spaces ?? {})) {
    spaces[k] = { fid: v.fid, kid: v.kid, kidStd: v.kidStd };
  }
  return {
    stage: s.stage,
    used: s.used,
    kimg: picked.kimg,
    cumulativeKimg: picked.cumulativeKimg,
    num: m?.num ?? null,
    seed: m?.seed ?? null,
    spaces,
    is: m?.is ? { mean: m.is.mean, std: m.is.std } : null,
    trainSeconds: s.trainSeconds,
    backend: s.backend,
  };
}

/**
 * Copies the last stage's generator of the run folder `runDir` to `outPath` and writes the
 * sidecar next to it (`outPath` with `.json` for `.safetensors`). Both are written atomically,
 * after every check: a missing or unfinished run, a report of another format, or a generator file
 * that is not a safetensors network leaves `outPath` untouched.
 */
export async function shipGenerator(
  runDir: string,
  outPath: string,
  opts: { command?: string } = {},
): Promise<ShippedGenerator> {
  const reportPath = join(runDir, "report.json");
  let report: ChainReport;
  try {
    report = JSON.parse(await Deno.readTextFile(reportPath));
  } catch (e) {
    throw new ShipError(
      e instanceof Deno.errors.NotFound
        ? `${reportPath}: no report (run 'deno task distill' to the end first)`
        : `${reportPath}: not a JSON report (${(e as Error).message})`,
    );
  }
  if (report?.format !== REPORT_FORMAT) {
    throw new ShipError(`${reportPath}: format '${report?.format}', expected '${REPORT_FORMAT}'`);
  }
  const stage = report.stages?.at(-1);
  if (!stage) throw new ShipError(`${reportPath}: the report has no stage`);
  const picked = stage.used === "best" && stage.best ? stage.best : stage.last;
  if (!picked.metrics) {
    throw new ShipError(`${reportPath}: stage '${stage.stage}' was not evaluated`);
  }
  const genPath = resolve(runDir, picked.generator);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(genPath);
  } catch (e) {
    throw new ShipError(`${genPath}: cannot read the generator (${(e as Error).message})`);
  }
  try {
    const header = await readSafetensorsHeader(bytes);
    if (header.metadata.format !== "sida-network/1") throw new Error("not a sida network");
  } catch (e) {
    throw new ShipError(`${genPath}: not a generator network (${(e as Error).message})`);
  }
  const outJson = outPath.replace(/\.safetensors$/, "") + ".json";
  const t = report.teacher?.evaluated ?? report.teacher?.shipped ?? null;
  const file = outPath.split("/").at(-1)!;
  const info: ShippedGenerator = {
    format: SHIPPED_FORMAT,
    shippedAt: new Date().toISOString(),
    reportCreatedAt: report.createdAt,
    commands: [
      opts.command ?? "deno task distill",
      `deno task ship-generator --run ${runDir} --out ${outPath}`,
    ],
    file,
    bytes: bytes.length,
    sha256: await sha256Hex(bytes),
    preset: report.preset,
    data: report.data,
    teacherSha256: report.teacher.sha256,
    scores: scoresOf(stage),
    stages: report.stages.map(scoresOf),
    teacherFid: t ? { fid: t.fid, nfe: t.nfe ?? null, num: t.num ?? null } : null,
  };
  await writeFileAtomic(outPath, bytes);
  await writeFileAtomic(outJson, new TextEncoder().encode(JSON.stringify(info, null, 2) + "\n"));
  return info;
}
