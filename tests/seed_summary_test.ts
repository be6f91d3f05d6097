/**
 * `tools/seed_summary.ts`: mean ± sample standard deviation over runs, the teacher counted once,
 * rows for runs that lack a stage, and one-line errors for folders without a chain report.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  type ChainReportLike,
  meanStd,
  type ScoredMetrics,
  summarizeReports,
  summaryMarkdown,
} from "../tools/seed_summary.ts";

const TOOL = new URL("../tools/seed_summary.ts", import.meta.url).pathname;

function scores(fidA: number, fidB: number, is = 9): ScoredMetrics {
  return {
    spaces: { mnist: { fid: fidA, kid: fidA / 2 }, "mnist-b": { fid: fidB, kid: fidB / 10 } },
    is: { mean: is },
  };
}

function report(sid: [number, number], sida: [number, number] | null): ChainReportLike {
  const teacher = { shipped: scores(47.8, 1.5, 8.9) };
  const stage = (name: string, title: string, fids: [number, number]) => ({
    stage: name,
    title,
    best: { kimg: 1, metrics: scores(fids[0], fids[1]) },
    last: { kimg: 2, metrics: scores(fids[0] + 10, fids[1] + 1) },
  });
  return {
    teacher,
    stages: [
      stage("sid", "SiD", sid),
      ...(sida ? [stage("sida", "SiD²A", sida)] : []),
    ],
  };
}

Deno.test("meanStd: mean and the n − 1 standard deviation; none for one value", () => {
  const a = meanStd([2, 4, 4, 4, 5, 5, 7, 9]);
  assert.equal(a.mean, 5);
  assert.ok(Math.abs((a.std as number) - Math.sqrt(32 / 7)) < 1e-12);
  assert.deepEqual(meanStd([3]), { mean: 3, std: null, n: 1 });
  assert.throws(() => meanStd([]));
});

Deno.test("summarizeReports: per-stage best and last over runs, the teacher once", () => {
  const s = summarizeReports([
    report([30, 1.6], [28, 2.0]),
    report([40, 2.0], null),
    report(
      [35, 1.8],
      [32, 2.4],
    ),
  ]);
  assert.deepEqual(s.spaces, ["mnist", "mnist-b"]);
  assert.deepEqual(s.rows.map((r) => [r.name, r.runs]), [
    ["teacher", 1],
    ["SiD best", 3],
    ["SiD last", 3],
    ["SiD²A best", 2],
    ["SiD²A last", 2],
  ]);
  const sidBest = s.rows[1].columns;
  assert.equal(sidBest["mnist FID"].mean, 35);
  assert.equal(sidBest["mnist FID"].std, 5);
  assert.ok(Math.abs(sidBest["mnist-b FID"].mean - 1.8) < 1e-12);
  assert.ok(Math.abs((sidBest["mnist-b FID"].std as number) - 0.2) < 1e-12);
  assert.equal(sidBest["mnist KID"].mean, 17.5);
  assert.equal(s.rows[2].columns["mnist FID"].mean, 45);
  assert.equal(s.rows[3].columns["mnist FID"].mean, 30);
  assert.equal(s.rows[0].columns["mnist FID"].std, null);
  const md = summaryMarkdown(s);
  assert.match(md, /\| SiD best \| 3 \| 35\.00 ± 5\.00 \| 17\.50 ± 2\.50 \| 1\.800 ± 0\.200 \|/);
  assert.match(md, /\| teacher \| 1 \| 47\.80 \|/);
});

Deno.test("summarizeReports: only the spaces every report scored", () => {
  const a = report([30, 1.6], null);
  const b = report([40, 2.0], null);
  for (const g of [b.stages[0].best, b.stages[0].last]) delete g!.metrics!.spaces["mnist-b"];
  const s = summarizeReports([a, b]);
  assert.deepEqual(s.spaces, ["mnist"]);
  assert.ok(!("mnist-b FID" in s.rows[1].columns));
  const none = report([30, 1.6], null);
  none.stages[0].best = null;
  none.stages[0].last = null;
  assert.throws(() => summarizeReports([a, none]), /share no scored feature space/);
});

Deno.test("seed_summary CLI: a folder without report.json is a one-line error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const good = join(dir, "good");
    await Deno.mkdir(good);
    await Deno.writeTextFile(join(good, "report.json"), JSON.stringify(report([30, 1.6], null)));
    const run = async (...args: string[]) => {
      const o = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", TOOL, ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
      return {
        code: o.code,
        out: new TextDecoder().decode(o.stdout),
        err: new TextDecoder().decode(o.stderr).trim(),
      };
    };
    const ok = await run(good, good);
    assert.equal(ok.code, 0, ok.err);
    assert.match(ok.out, /\| SiD best \| 2 \| 30\.00 ± 0\.00 \|/);
    const bad = await run(good, join(dir, "missing"));
    assert.notEqual(bad.code, 0);
    assert.equal(bad.err.split("\n").length, 1, bad.err);
    assert.match(bad.err, /missing.*report\.json/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
