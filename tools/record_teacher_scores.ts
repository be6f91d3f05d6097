/**
 * Records a teacher's per-space scores, as a chain's `--eval-teacher` wrote them
 * (`<run>/eval/teacher/metrics.json`), in the teacher's sidecar JSON (`<teacher>.json`, its `more`
 * list), so that later chains with the same settings compare their generators with the teacher
 * without sampling it (docs/metrics.md §3). An entry with the same sample count, seed and teacher
 * SHA-256 is replaced; paths inside the repository are stored relative to the current folder.
 *
 *   deno task distill --stages eval --eval-teacher --out runs/teacher-10k
 *   deno run -A tools/record_teacher_scores.ts runs/teacher-10k/eval/teacher/metrics.json \
 *     data/mnist-teacher.json --command "deno task distill --stages eval --eval-teacher ..."
 *
 * @module
 */
import { relative, resolve } from "node:path";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import { fileSha256, SPACES_METRICS_FORMAT, type SpacesMetrics } from "../lib/pipeline/evaluate.ts";
import { parseFlags, runMain, UsageError } from "../lib/runtime/cli.ts";

const USAGE =
  "usage: tools/record_teacher_scores.ts METRICS.json TEACHER.json [--command TEXT] [--date YYYY-MM-DD]";

/** A path relative to the current folder when it lies inside it, else as given. */
function local(path: string): string {
  const r = relative(Deno.cwd(), resolve(path));
  return r.startsWith("..") ? path : r;
}

/**
 * The sidecar record of a chain's teacher metrics: the first space's FID as the record's FID, and
 * every space's scores with the detector and reference statistics they were computed with.
 */
export function teacherRecord(
  m: SpacesMetrics,
  extra: { command?: string; date?: string } = {},
): Record<string, unknown> {
  const names = Object.keys(m.spaces);
  const first = m.spaces[names[0]];
  return {
    fid: first.fid,
    num: m.num,
    nfe: m.nfe,
    seed: m.seed,
    sha256: m.sha256,
    ref: local(first.ref),
    is: m.is,
    sampler: `EDM Heun, ${m.steps} steps (${m.nfe} network evaluations), seed ${m.seed}`,
    spaces: Object.fromEntries(names.map((n) => {
      const s = m.spaces[n];
      return [n, { ...s, detector: local(s.detector), ref: local(s.ref) }];
    })),
    ...(extra.command ? { fid_command: extra.command } : {}),
    backend: m.backend,
    seconds: m.evalSeconds,
    date: extra.date ?? new Date().toISOString().slice(0, 10),
  };
}

if (import.meta.main) {
  await runMain(async () => {
    const f = parseFlags(Deno.args, { string: ["command", "date"] }, USAGE);
    const [metricsPath, sidecarPath] = f.positionals.map(String);
    if (!metricsPath || !sidecarPath || f.positionals.length !== 2) throw new UsageError(USAGE);
    const readJson = async (path: string) => {
      const text = await Deno.readTextFile(path);
      try {
        return JSON.parse(text);
      } catch (e) {
        throw new Error(`${path}: not JSON (${(e as Error).message})`);
      }
    };
    const m = await readJson(metricsPath) as SpacesMetrics;
    if (m.format !== SPACES_METRICS_FORMAT || !m.spaces || !m.sha256) {
      throw new Error(`${metricsPath}: not a chain's per-space metrics file`);
    }
    const teacher = sidecarPath.replace(/\.json$/, ".safetensors");
    const sha = await fileSha256(teacher);
    if (sha !== m.sha256) {
      throw new Error(`${metricsPath} scored another file than ${teacher} (SHA-256 differs)`);
    }
    const sidecar = await readJson(sidecarPath);
    const record = teacherRecord(m, {
      command: f.command as string | undefined,
      date: f.date as string | undefined,
    });
    const more = (Array.isArray(sidecar.more) ? sidecar.more : []).filter((
      r: Record<
        string,
        unknown
      >,
    ) => !(r.num === m.num && r.seed === m.seed && r.sha256 === m.sha256));
    sidecar.more = [...more, record];
    await writeFileAtomic(
      sidecarPath,
      new TextEncoder().encode(JSON.stringify(sidecar, null, 2) + "\n"),
    );
    console.log(`${sidecarPath}: recorded ${names(record)} at ${m.num} samples`);
  });
}

function names(r: Record<string, unknown>): string {
  return Object.keys(r.spaces as object).join(", ");
}
