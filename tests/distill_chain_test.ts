/**
 * `deno task distill` on a CI-sized chain: a tiny conditional 32×32 grey teacher (SongUNet, 8
 * channels, one level, one block, dropout 0), a 40-image labelled dataset zip, reference
 * statistics of that dataset under a random MNIST feature network, batch 4, a few iterations
 * per stage and 20 evaluation samples.
 *
 * - bad arguments fail before anything is written, with one `error:` line;
 * - a chain killed (SIGKILL) in its SiD stage resumes from the training state and finishes;
 * - the run folder holds every file (report, plots, grids, per-stage metrics, best and last
 *   snapshots with their sidecars), and the report's numbers are finite and equal the per-stage
 *   `best.json` / `last.json` values, in both feature spaces, with KID;
 * - a rerun skips every stage (stage markers and logs untouched); other settings on the same
 *   folder are refused.
 */
import { tf } from "../lib/deps.ts";
import assert from "node:assert/strict";
import { basename, join } from "node:path";
import { createImageDataset, type ImageDataset, writeImageZip } from "../lib/data/dataset.ts";
import { findLatestState } from "../lib/train/run_folder.ts";
import { datasetFeatures } from "../lib/metrics/evaluate.ts";
import { MnistFeatureNet } from "../lib/metrics/mnist_features.ts";
import { hostTensor } from "../lib/io/host_tensor.ts";
import { readSafetensors, writeSafetensors } from "../lib/io/safetensors.ts";
import { writeNpz } from "../lib/metrics/npz.ts";
import { loadRefStats, saveRefStats } from "../lib/metrics/ref_stats.ts";
import { createNetwork, saveNetwork } from "../lib/nets/network.ts";
import {
  type DistillChainResult,
  parseDistillChainArgs,
  runDistillChain,
  sha256File,
} from "../lib/pipeline/distill.ts";
import { fidPlotSvg, lossPlotSvg } from "../lib/pipeline/plots.ts";
import {
  type ChainReport,
  kidText,
  readShippedTeacherFid,
  shippedSpacesMatch,
} from "../lib/pipeline/report.ts";
import { SPACES_METRICS_FORMAT, type SpacesMetrics } from "../lib/pipeline/evaluate.ts";
import { teacherRecord } from "../tools/record_teacher_scores.ts";
import { setupBackend, TEST_BACKEND, tinySongUNet } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;

function assertEquals(actual: unknown, expected: unknown, message?: string): void {
  if (message === undefined) assert.deepEqual(actual, expected);
  else assert.deepEqual(actual, expected, `${message}: ${JSON.stringify(actual)}`);
}

const TINY = tinySongUNet({ imgResolution: 32, imgChannels: 1, labelDim: 10 });

interface Fixture {
  dir: string;
  teacher: string;
  data: string;
  ref: string;
  detector: string;
  /** A second random feature network (architecture b): the second feature space. */
  detectorB: string;
}

function digits(n: number, res: number, channels: number): ImageDataset {
  const pixels = new Uint8Array(n * res * res * channels);
  for (let i = 0; i < n; i++) {
    // A bright bar whose position depends on the class, on a dark background.
    const c = i % 10;
    for (let y = 0; y < res; y++) {
      for (let x = 0; x < res; x++) {
        const on = Math.abs(x - (4 + c * 2) * res / 32) < res / 10 && y > res / 6 &&
          y < res - res / 6;
        const v = on ? 220 + ((i * 7 + y) % 30) : (x * 3 + y * 5 + i) % 20;
        for (let k = 0; k < channels; k++) pixels[((i * res + y) * res + x) * channels + k] = v;
      }
    }
  }
  return createImageDataset({
    name: "bars",
    resolution: res,
    channels,
    pixels,
    labels: Array.from({ length: n }, (_, i) => i % 10),
  });
}

let fixture: Promise<Fixture> | undefined;

function setup(): Promise<Fixture> {
  fixture ??= (async () => {
    await setupBackend();
    const dir = await Deno.makeTempDir({ prefix: "sida-chain-test-" });
    const net = createNetwork(TINY, { seed: 1 });
    const teacher = join(dir, "teacher.safetensors");
    await saveNetwork(net, teacher);
    net.dispose();
    // The teacher's shipped FID, as a sidecar JSON.
    await Deno.writeTextFile(
      join(dir, "teacher.json"),
      JSON.stringify({ fid: 12.5, num: 10000, nfe: 35, ref: "mnist-ref-stats.npz" }),
    );
    const ds = digits(40, 32, 1);
    const data = join(dir, "bars.zip");
    await writeImageZip(data, ds);
    // A random MNIST feature network (the shipped one is retrained now and then).
    const det = new MnistFeatureNet(undefined, 5);
    const detector = join(dir, "features.safetensors");
    await det.save(detector);
    const acc = await datasetFeatures(det, ds);
    det.dispose();
    const ref = join(dir, "bars-ref.npz");
    await saveRefStats(ref, { mu: acc.stats.mean(), sigma: acc.stats.cov(), dim: acc.stats.dim });
    const detB = new MnistFeatureNet(undefined, 6, "b");
    const detectorB = join(dir, "features-b.safetensors");
    await detB.save(detectorB);
    detB.dispose();
    return { dir, teacher, data, ref, detector, detectorB };
  })();
  return fixture;
}

/** The chain's flags: SiD 10 iterations of 4 images, SiD²A 2, a state after every iteration. */
function chainFlags(f: Fixture, out: string): string[] {
  return [
    ...["--teacher", f.teacher, "--data", f.data, "--ref", f.ref, "--detector", f.detector],
    ...["--detector-b", f.detectorB, "--ref-b", f.data, "--out", out],
    ...["--preset", "mnist", "--batch", "4", "--micro-batch", "2", "--seed", "1"],
    ...["--lr", "1e-3", "--glr", "1e-3", "--dropout", "0"],
    ...["--sid-kimg", "0.04", "--sida-kimg", "0.008", "--tick", "0.004", "--dump", "0.004"],
    // No warm-ups, as the preset's, scaled to 8 images, were before it counted them in images.
    ...["--g-warmup-kimg", "0", "--gan-warmup-kimg", "0"],
    ...["--num", "20", "--eval-batch", "10", "--backend", TEST_BACKEND, "--quiet"],
  ];
}

async function runTask(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "tasks/distill.ts"), ...args],
    cwd: ROOT,
    env,
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function listing(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isDirectory) {
      for (const n of await listing(join(dir, e.name))) out.push(`${e.name}/${n}`);
    } else out.push(e.name);
  }
  return out.sort();
}

function assertOneErrorLine(name: string, r: { code: number; stderr: string }, re: RegExp) {
  const lines = r.stderr.trimEnd().split("\n");
  assert.notEqual(r.code, 0, `${name}: exit code`);
  assertEquals(lines.length, 1, `${name}: one stderr line, got ${JSON.stringify(r.stderr)}`);
  assert(lines[0].startsWith("error: "), `${name}: ${lines[0]}`);
  assert(re.test(lines[0]), `${name}: '${lines[0]}' should match ${re}`);
}

Deno.test("distill chain: bad arguments fail before anything is written", async () => {
  const f = await setup();
  const out = join(f.dir, "never");
  const base = chainFlags(f, out);
  const replace = (flag: string, value: string) => {
    const a = [...base];
    a[a.indexOf(flag) + 1] = value;
    return a;
  };
  const res16 = join(f.dir, "bars16.zip");
  await writeImageZip(res16, digits(10, 16, 1));
  const rgb = join(f.dir, "bars-rgb.zip");
  await writeImageZip(rgb, digits(10, 32, 3));
  // A teacher with NaN weights (issue 13: it used to run the whole chain to a "FID 1471.99"),
  // and reference statistics whose sigma is not a covariance (it used to give a FID).
  const nanTeacher = join(f.dir, "nan-teacher.safetensors");
  const good = await readSafetensors(f.teacher);
  (good.tensors.get("model.dec.32x32_aux_conv.bias")!.data as Float32Array).fill(NaN);
  await writeSafetensors(nanTeacher, good.tensors, good.metadata);
  const nonPdRef = join(f.dir, "non-pd-ref.npz");
  const ref = await loadRefStats(f.ref);
  const sigma = ref.sigma.slice();
  for (let i = 0; i < ref.dim; i++) sigma[i * ref.dim + i] -= 10; // a negative eigenvalue
  await writeNpz(nonPdRef, {
    mu: hostTensor("float64", [ref.dim], ref.mu),
    sigma: hostTensor("float64", [ref.dim, ref.dim], sigma),
  });
  const cases: [string, string[], RegExp, Record<string, string>?][] = [
    ["NaN teacher", replace("--teacher", nanTeacher), /non-finite weights.*32x32_aux_conv\.bias/],
    [
      "non-PD reference sigma",
      replace("--ref", nonPdRef),
      /not positive semi-definite|negative variance/,
    ],
    ["unknown stage", [...base, "--stages", "import,distill"], /unknown stage 'distill'/],
    ["bad budget", [...base, "--budget", "two"], /--budget must be a number/],
    ["zero budget", [...base, "--budget", "0"], /--budget must be > 0/],
    ["bad num", replace("--num", "1"), /--num must be at least 2/],
    ["zero kimg", replace("--sid-kimg", "0"), /--sid-kimg must be > 0/],
    ["not a kimg", replace("--sida-kimg", "1e"), /--sida-kimg must be a number/],
    ["unknown preset", replace("--preset", "cifar11"), /unknown preset 'cifar11'/],
    ["unknown flag", [...base, "--bogus", "1"], /bogus/],
    ["missing teacher", replace("--teacher", join(f.dir, "nope.safetensors")), /not found/],
    ["wrong resolution", replace("--data", res16), /16x16x1 images, the teacher needs 32x32x1/],
    ["wrong channels", replace("--data", rgb), /32x32x3 images, the teacher needs 32x32x1/],
    ["missing ref", replace("--ref", join(f.dir, "nope.npz")), /nope\.npz/],
    ["ref zip of other images", replace("--ref", rgb), /reference images .* are 32x32x3/],
    ["batch/micro-batch", replace("--micro-batch", "3"), /multiple/],
    ["sida before sid", [...base, "--stages", "sida,eval"], /run the sid stage first/],
    [
      "missing second detector",
      replace("--detector-b", join(f.dir, "nope-b.safetensors")),
      /detector file .*nope-b\.safetensors' not found/,
    ],
    [
      "second space half given",
      base.filter((_, i) => base[i] !== "--detector-b" && base[i - 1] !== "--detector-b"),
      /second feature space needs --detector-b as well/,
    ],
    ["one snapshot sample", [...base, "--snapshot-num", "1"], /--snapshot-num must be 0 or ≥ 2/],
    ["augment out of range", [...base, "--augment", "1.5"], /augment must be a probability/],
    [
      "augment without an embedding",
      [...base, "--sida-augment", "0.12"],
      /augmentation needs a teacher with an augmentation embedding/,
    ],
    // A launcher's environment without the launcher (the chain runs under a real mpirun:
    // tests/mpi_test.ts): MPI says it is alone, and the chain stops before writing.
    ["fake mpirun environment", base, /MPI: rank 0 of 1, but the launcher said 1 of 2/, {
      OMPI_COMM_WORLD_SIZE: "2",
      OMPI_COMM_WORLD_RANK: "1",
    }],
    ["no shipped teacher", ["--out", out], /deno task teacher/, {
      SIDA_MNIST_TEACHER: join(f.dir, "missing-teacher.safetensors"),
    }],
  ];
  const results = await Promise.all(cases.map(([, args, , env]) => runTask(args, env)));
  results.forEach((r, i) => assertOneErrorLine(cases[i][0], r, cases[i][2]));
  assert(!(await exists(out)), "the run folder was not created");
});

function metricOf(report: ChainReport, stage: string) {
  const s = report.stages.find((x) => x.stage === stage);
  assert(s, `stage ${stage} in the report`);
  return s;
}

Deno.test("distill chain: killed mid-stage, resumed, complete run folder, rerun skips", async () => {
  const f = await setup();
  const out = join(f.dir, "run");
  const flags = chainFlags(f, out);

  // 1. A chain in a subprocess, killed as soon as the SiD stage has written a training state.
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "tasks/distill.ts"), ...flags],
    cwd: ROOT,
    stdout: "null",
    stderr: "null",
  }).spawn();
  let state: string | null = null;
  for (let i = 0; i < 3000 && !state; i++) {
    await new Promise((r) => setTimeout(r, 30));
    state = await findLatestState(join(out, "sid"));
  }
  try {
    child.kill("SIGKILL");
  } catch {
    // already finished
  }
  await child.status;
  assert(state, "the subprocess wrote a SiD training state");
  assert(!(await exists(join(out, "sid", "stage-done.json"))), "killed before the SiD stage ended");
  assert(await exists(join(out, "import", "stage-done.json")), "the import stage had finished");

  // 2. The same command line again (in this process): import skipped, SiD resumed, the rest run.
  const tensorsBefore = tf.memory().numTensors;
  const first: DistillChainResult = await runDistillChain(parseDistillChainArgs(flags));
  assertEquals(tf.memory().numTensors, tensorsBefore, "the chain leaves no tensors behind");
  assertEquals(first.interrupted, false);
  assertEquals(first.stages, { import: "skipped", sid: "resumed", sida: "ran", eval: "ran" });
  const sidDone = JSON.parse(await Deno.readTextFile(join(out, "sid", "stage-done.json")));
  assertEquals(sidDone.nimg, 40);
  assertEquals(sidDone.resumed, true);
  assert(
    sidDone.iterationsThisSession < 10,
    `resumed, not restarted: ${sidDone.iterationsThisSession}`,
  );

  // 3. Every file of the run folder.
  const files = await listing(out);
  for (
    const name of [
      "chain.json",
      "chain-log.jsonl",
      "report.md",
      "report.json",
      "import/teacher.safetensors",
      "import/stage-done.json",
      "sid/stage-done.json",
      "sid/log.jsonl",
      "sid/network-snapshot-000000.040.safetensors",
      "sida/stage-done.json",
      "sida/log.jsonl",
      "sida/network-snapshot-000000.008.safetensors",
      "eval/stage-done.json",
      "eval/ref-stats-mnist-b.npz",
      ...["sid", "sida"].flatMap((s) => [
        `${s}/network-snapshot-best.safetensors`,
        `${s}/network-snapshot-best.json`,
        `${s}/network-snapshot-last.safetensors`,
        `${s}/network-snapshot-last.json`,
        `${s}/snapshot-fids.jsonl`,
        `eval/${s}/best.json`,
        `eval/${s}/last.json`,
        `eval/${s}/samples-best.png`,
        `eval/${s}/samples-last.png`,
      ]),
    ]
  ) assert(files.includes(name), `${name} in ${files.join(", ")}`);
  // SiD snapshots every 0.005 kimg counted from the session's start (the kill point), and at the
  // end; every one scored during training.
  const numbered = (stage: string) =>
    files.filter((n) =>
      new RegExp(`^${stage}/network-snapshot-\\d+(\\.\\d+)?\\.safetensors$`).test(n)
    );
  const sidSnapshots = numbered("sid");
  assert(sidSnapshots.length >= 2, `SiD snapshots: ${sidSnapshots}`);
  assert(
    files.includes("plots/losses.png") || files.includes("plots/losses.svg"),
    "loss plot",
  );
  assert(files.includes("plots/fid.png") || files.includes("plots/fid.svg"), "FID plot");
  for (const png of ["eval/sid/samples-best.png", "eval/sida/samples-last.png"]) {
    const b = await Deno.readFile(join(out, png));
    assertEquals([...b.subarray(1, 4)], [0x50, 0x4e, 0x47], png);
  }

  // 4. The report's numbers are finite and equal the per-stage best.json / last.json values.
  const report: ChainReport = JSON.parse(await Deno.readTextFile(join(out, "report.json")));
  assertEquals(report, JSON.parse(JSON.stringify(first.report)));
  assertEquals(report.stages.map((s) => s.stage), ["sid", "sida"]);
  assertEquals(report.evaluation.num, 20);
  assertEquals(report.evaluation.ref, f.ref);
  assertEquals(report.evaluation.spaces.map((x) => x.name), ["mnist", "mnist-b"]);
  assertEquals(report.evaluation.snapshotScoring?.num, 20);
  for (const stage of ["sid", "sida"]) {
    const s = metricOf(report, stage);
    assertEquals(s.used, "best");
    const m = JSON.parse(await Deno.readTextFile(join(out, "eval", stage, "best.json")));
    assert(Number.isFinite(s.fid) && s.fid! >= 0, `${stage} FID ${s.fid}`);
    assert(Number.isFinite(s.is?.mean) && s.is!.mean >= 1, `${stage} IS ${s.is?.mean}`);
    assertEquals(s.fid, m.spaces.mnist.fid);
    assertEquals(s.is, m.is);
    assertEquals(s.num, m.num);
    assertEquals(s.ref, report.evaluation.ref, "one reference for every FID");
    assertEquals(s.num, 20);
    assert(s.trainSeconds! > 0 && s.evalSeconds! > 0, `${stage} times`);
    assert(typeof s.backend === "string" && s.backend.length > 0);
    for (const [which, x] of [["best", s.best!], ["last", s.last]] as const) {
      const mx = JSON.parse(await Deno.readTextFile(join(out, "eval", stage, `${which}.json`)));
      for (const space of ["mnist", "mnist-b"]) {
        const v = x.metrics!.spaces[space];
        assert(Number.isFinite(v.fid) && Number.isFinite(v.kid) && v.kidStd >= 0, space);
        assertEquals(v.fid, mx.spaces[space].fid);
        assertEquals(v.kid, mx.spaces[space].kid);
        // Precision/recall (k = 3) of the 20 samples against 20 real images.
        assertEquals(mx.spaces[space].prReal, 20);
        for (const q of [v.precision, v.recall]) assert(q! >= 0 && q! <= 1, `${space} P/R ${q}`);
        assertEquals([v.precision, v.recall], [
          mx.spaces[space].precision,
          mx.spaces[space].recall,
        ]);
      }
      assert(x.metrics!.spaces.mnist.fid !== x.metrics!.spaces["mnist-b"].fid, "two spaces");
    }
    // Every numbered snapshot scored during training; the best is the lowest of those scores,
    // the last is the final snapshot.
    assertEquals(s.snapshots.length, numbered(stage).length, `${stage}: every snapshot scored`);
    for (const p of s.snapshots) assert(Number.isFinite(p.fid));
    const lowest = s.snapshots.reduce((a, b) => (b.fid < a.fid ? b : a));
    assertEquals(s.best!.selectionFid, lowest.fid);
    assertEquals(s.best!.snapshot, lowest.generator);
    assertEquals(s.last.kimg, s.kimg);
    const bestBytes = await Deno.readFile(join(out, stage, "network-snapshot-best.safetensors"));
    assertEquals(bestBytes, await Deno.readFile(join(out, lowest.generator)), "best copy");
  }
  assertEquals(metricOf(report, "sid").kimg, 0.04);
  assertEquals(metricOf(report, "sida").kimg, 0.008);
  assertEquals(metricOf(report, "sida").cumulativeKimg, 0.048);
  assertEquals(report.teacher.shipped?.fid, 12.5);
  assertEquals(report.teacher.shipped?.nfe, 35);
  assertEquals(report.teacher.evaluated, null);
  const md = await Deno.readTextFile(join(out, "report.md"));
  for (const stage of ["sid", "sida"]) {
    const s = metricOf(report, stage);
    assert(md.includes(s.fid!.toFixed(2)), `report.md shows the ${stage} FID`);
    const b = s.best!.metrics!.spaces["mnist-b"];
    assert(md.includes(b.fid.toFixed(2)), `report.md shows the ${stage} mnist-b FID`);
    assert(md.includes(kidText(b.kid)), `report.md shows the ${stage} mnist-b KID`);
  }
  assert(md.includes("SiD²A") && md.includes("12.50"), md);
  assert(md.includes("KID mnist-b") && md.includes("**20 samples**"), md);
  assert(md.includes("## Precision and recall"), "report.md: precision/recall table");
  for (const s of report.stages) {
    const one = s.best!.snapshot === s.last.snapshot;
    const rows = one
      ? [`${s.title} best = last, used`]
      : [`${s.title} best, used`, `${s.title} last`];
    for (const row of rows) assert(md.includes(`| ${row} |`), `${row} in ${md}`);
  }
  // The teacher was not scored in both spaces: no claim against it.
  assert(md.includes("not compared (the teacher's shipped record"), md);

  // 5. A rerun skips every stage and touches neither markers nor logs.
  const watched = [
    "import/stage-done.json",
    "sid/stage-done.json",
    "sida/stage-done.json",
    "eval/stage-done.json",
    "sid/log.jsonl",
    "sida/log.jsonl",
    "eval/sid/best.json",
    "sid/network-snapshot-best.json",
    "sid/snapshot-fids.jsonl",
  ];
  const before = await Promise.all(watched.map((p) => Deno.readFile(join(out, p))));
  const again = await runDistillChain(parseDistillChainArgs(flags));
  assertEquals(again.stages, {
    import: "skipped",
    sid: "skipped",
    sida: "skipped",
    eval: "skipped",
  });
  const after = await Promise.all(watched.map((p) => Deno.readFile(join(out, p))));
  after.forEach((b, i) => assertEquals(b, before[i], `${watched[i]} unchanged`));
  assertEquals(again.report?.stages.map((s) => s.fid), report.stages.map((s) => s.fid));
  const chainLog = (await Deno.readTextFile(join(out, "chain-log.jsonl"))).trim().split("\n")
    .map((l) => JSON.parse(l));
  assertEquals(chainLog.slice(-4).map((l) => l.action), [
    "skipped",
    "skipped",
    "skipped",
    "skipped",
  ]);

  // A subset of the stages.
  const some = await runDistillChain(parseDistillChainArgs([...flags, "--stages", "sid,eval"]));
  assertEquals(some.stages, {
    import: "not selected",
    sid: "skipped",
    sida: "not selected",
    eval: "skipped",
  });

  // 5b. A teacher record with per-space scores made with the report's settings (as a chain's
  // eval/teacher/metrics.json holds them) is compared like an evaluated teacher; one made with
  // another teacher file, seed or detector is not.
  const sidecar = join(f.dir, "teacher.json");
  const original = await Deno.readTextFile(sidecar);
  const teacherSha = await sha256File(f.teacher);
  const record = (over: Record<string, unknown>) => ({
    fid: 12.5,
    num: 10000,
    nfe: 35,
    ref: "mnist-ref-stats.npz",
    more: [{
      fid: 900,
      num: 20,
      nfe: 35,
      seed: 0,
      sha256: teacherSha,
      ref: `/elsewhere/${basename(f.ref)}`,
      spaces: Object.fromEntries(report.evaluation.spaces.map((x) => [x.name, {
        fid: 900,
        kid: 1e4,
        kidStd: 1e-3,
        kidSubsetSize: 20,
        detector: `/elsewhere/${basename(x.detector)}`,
        ref: `/elsewhere/${basename(x.ref)}`,
      }])),
      ...over,
    }],
  });
  const teacherVerdicts = (r: ChainReport) =>
    r.comparisons.filter((c) => c.b.startsWith("the teacher")).map((c) => c.verdict);
  try {
    await Deno.writeTextFile(sidecar, JSON.stringify(record({})));
    const withSpaces = (await runDistillChain(parseDistillChainArgs(flags))).report!;
    assertEquals(withSpaces.teacher.shipped?.fid, 900);
    assertEquals(withSpaces.teacher.shipped?.spaces?.["mnist-b"]?.kid, 1e4);
    assertEquals(teacherVerdicts(withSpaces), ["better", "better"]);
    const md2 = await Deno.readTextFile(join(out, "report.md"));
    assert(md2.includes("| teacher (35 NFE, shipped) |") && md2.includes("900.00"), md2);
    for (const over of [{ sha256: "0".repeat(64) }, { seed: 1 }]) {
      await Deno.writeTextFile(sidecar, JSON.stringify(record(over)));
      const r = (await runDistillChain(parseDistillChainArgs(flags))).report!;
      assertEquals(r.teacher.shipped?.spaces, undefined, JSON.stringify(over));
      assertEquals(teacherVerdicts(r), ["not compared", "not compared"], JSON.stringify(over));
    }
  } finally {
    await Deno.writeTextFile(sidecar, original);
  }

  // 6. Other training settings on the same folder: refused before anything is written.
  const listed = await listing(out);
  const bad = await runTask([...flags, "--budget", "2"]);
  assertOneErrorLine("other budget", bad, /other settings: sid\.kimg 0\.04 \(now 0\.08\)/);
  assertEquals(await listing(out), listed);

  // 7. --ref as a dataset zip: its statistics are computed once, kept in the run folder, and
  // give the FIDs of the precomputed statistics of the same images.
  const zipFlags = flags.map((a) => a === f.ref ? f.data : a);
  const viaZip = await runDistillChain(parseDistillChainArgs([...zipFlags, "--stages", "eval"]));
  assertEquals(viaZip.stages.eval, "ran");
  assert.ok(await exists(join(out, "eval", "ref-stats.npz")));
  const zipReport = viaZip.report!;
  assertEquals(zipReport.evaluation.ref, f.data);
  for (const [i, s] of zipReport.stages.entries()) {
    const want = report.stages[i].fid!;
    assert.ok(
      Math.abs(s.fid! - want) <= 1e-4 * Math.max(1, want),
      `${s.stage}: FID ${s.fid} with the zip, ${want} with its statistics`,
    );
  }
  const mtime = (await Deno.stat(join(out, "eval", "ref-stats.npz"))).mtime;
  await runDistillChain(parseDistillChainArgs([...zipFlags, "--stages", "eval"]));
  assertEquals((await Deno.stat(join(out, "eval", "ref-stats.npz"))).mtime, mtime, "kept");
});

Deno.test("distill chain: the teacher's shipped FID from metadata or a sidecar; plot SVG", async () => {
  const f = await setup();
  const net = createNetwork(TINY, { seed: 2 });
  const withMeta = join(f.dir, "meta-teacher.safetensors");
  await saveNetwork(net, withMeta, {
    fid: "7.25",
    fid_num: "10000",
    fid_nfe: "35",
    fid_ref: "data/mnist-ref-stats.npz",
  });
  const bare = join(f.dir, "bare-teacher.safetensors");
  await saveNetwork(net, bare);
  net.dispose();
  assertEquals(await readShippedTeacherFid(withMeta), {
    fid: 7.25,
    num: 10000,
    nfe: 35,
    ref: "data/mnist-ref-stats.npz",
    origin: "shipped",
    source: withMeta,
  });
  assertEquals(await readShippedTeacherFid(bare), null);
  await Deno.writeTextFile(
    join(f.dir, "bare-teacher.json"),
    JSON.stringify({ format: "x", eval: { fid: 3.5, num: 5000 } }),
  );
  assertEquals((await readShippedTeacherFid(bare))?.fid, 3.5);
  // FIDs at several sample counts: the one matching the report's settings, else the first.
  await Deno.writeTextFile(
    join(f.dir, "bare-teacher.json"),
    JSON.stringify({
      fid: 50,
      num: 1000,
      ref: "data/mnist-ref-stats.npz",
      more: [{ fid: 40, num: 10000, ref: "data/mnist-ref-stats.npz" }, { nothing: 1 }],
    }),
  );
  const ref = "/somewhere/else/mnist-ref-stats.npz";
  assertEquals((await readShippedTeacherFid(bare, { num: 10000, ref }))?.fid, 40);
  assertEquals((await readShippedTeacherFid(bare, { num: 1000, ref }))?.fid, 50);
  assertEquals((await readShippedTeacherFid(bare, { num: 500, ref }))?.fid, 50);
  assertEquals((await readShippedTeacherFid(bare, { num: 10000, ref: "other.npz" }))?.fid, 50);
  assertEquals((await readShippedTeacherFid(bare))?.fid, 50);
  assertEquals((await readShippedTeacherFid(f.teacher))?.fid, 12.5);
  // A chain's teacher metrics recorded by tools/record_teacher_scores.ts read back with their
  // spaces, and match the settings they were made with.
  const metrics: SpacesMetrics = {
    format: SPACES_METRICS_FORMAT,
    generator: bare,
    sha256: await sha256File(bare),
    num: 10000,
    seed: 0,
    sampler: "heun",
    steps: 18,
    nfe: 35,
    spaces: Object.fromEntries(["mnist", "mnist-b"].map((n, i) => [n, {
      features: "mnist" as const,
      detector: `/x/det-${n}.safetensors`,
      ref: `/x/ref-${n}.npz`,
      fid: 40 + i,
      kid: 3 + i,
      kidStd: 0.5,
      kidSubsetSize: 1000,
      kidSubsets: 100,
      kidReal: 10000,
    }])),
    is: { mean: 9, std: 0.1 },
    backend: "native",
    generateSeconds: 1,
    evalSeconds: 2,
  };
  await Deno.writeTextFile(
    join(f.dir, "bare-teacher.json"),
    JSON.stringify({
      fid: 50,
      num: 1000,
      more: [{ fid: 41, num: 10000, ref: "/x/ref-mnist.npz" }, teacherRecord(metrics)],
    }),
  );
  const rec = await readShippedTeacherFid(bare, { num: 10000, ref: "/y/ref-mnist.npz" });
  assertEquals([rec?.fid, rec?.spaces?.["mnist-b"]?.kid, rec?.seed], [40, 4, 0]);
  const spaces = ["mnist", "mnist-b"].map((n) => ({
    name: n,
    detector: `/y/det-${n}.safetensors`,
    ref: `/y/ref-${n}.npz`,
  }));
  const want = { sha256: metrics.sha256, num: 10000, seed: 0 };
  assert(shippedSpacesMatch(rec!, want, spaces));
  assert(!shippedSpacesMatch(rec!, { ...want, num: 1000 }, spaces));
  assert(!shippedSpacesMatch(rec!, want, [{ ...spaces[0], ref: "/y/other.npz" }]));
  assert(!shippedSpacesMatch(rec!, want, [...spaces, { ...spaces[0], name: "inception" }]));

  const svg = await fidPlotSvg([{ stage: "SiD", kimg: 1, fid: 30 }, {
    stage: "SiD",
    kimg: 2,
    fid: 20,
  }], {
    fid: 5,
    label: "teacher",
  });
  assert(svg?.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'), String(svg).slice(0, 80));
  assertEquals(await fidPlotSvg([]), null);
  assertEquals(await lossPlotSvg([{ stage: "SiD", offsetKimg: 0, records: [{ kimg: 1 }] }]), null);
});

Deno.test("distill chain: every distillation flag reaches its stage's saved config (--sida-alpha, --lsg-gan)", async () => {
  const f = await setup();
  const out = join(f.dir, "flags");
  const args = [
    ...["--teacher", f.teacher, "--data", f.data, "--out", out, "--preset", "mnist"],
    ...["--stages", "import,sid,sida", "--sid-kimg", "0.004", "--sida-kimg", "0.004"],
    ...["--batch", "4", "--micro-batch", "2", "--seed", "1", "--dropout", "0"],
    ...["--sida-alpha", "1.2", "--lsg-gan", "0.02", "--sid-lsg", "90", "--tmax", "700"],
    ...["--sida-gan-warmup-kimg", "0", "--g-beta1", "0.5", "--sid-augment", "0"],
    ...["--backend", TEST_BACKEND, "--quiet"],
  ];
  const opts = parseDistillChainArgs(args);
  assertEquals(opts.overrides, {
    tmax: 700,
    gBeta1: 0.5,
    batch: 4,
    microBatch: 2,
    dropout: 0,
    seed: 1,
  }, "both stages");
  assertEquals(opts.stageOverrides?.sid, { lsg: 90, augment: 0 }, "sid stage");
  assertEquals(opts.stageOverrides?.sida, { lsgGan: 0.02, alpha: 1.2, ganWarmupNimg: 0 }, "sida");
  const r = await runDistillChain(opts);
  assertEquals(r.stages, { import: "ran", sid: "ran", sida: "ran", eval: "not selected" });
  // The chain's settings file and each stage's training state (run.distill) hold the flags.
  const chain = JSON.parse(await Deno.readTextFile(join(out, "chain.json")));
  for (const stage of ["sid", "sida"] as const) {
    const state = await readSafetensors((await findLatestState(join(out, stage)))!);
    const saved = JSON.parse(state.metadata.run).distill;
    assertEquals(saved, chain[stage].config, `${stage}: training state = chain.json`);
    assertEquals(saved.tmax, 700, `${stage} tmax`);
    assertEquals(saved.gBeta1, 0.5, `${stage} gBeta1`);
  }
  assertEquals(chain.sida.config.alpha, 1.2);
  assertEquals(chain.sida.config.lsgGan, 0.02);
  assertEquals(chain.sida.config.lsg, 100);
  assertEquals(chain.sida.config.ganWarmupNimg, 0);
  // The mnist preset's SiD²A G warm-up is 512 images for any stage length, not scaled to 4 images.
  assertEquals(chain.sida.config.gWarmupNimg, 512);
  assertEquals(chain.sid.config.alpha, 1.2); // the mnist preset's SiD α, not a flag
  assertEquals(chain.sid.config.lsgGan, 0.01); // SiDA-only flags leave SiD alone
  assertEquals(chain.sid.config.lsg, 90);
  // SiD has no adversarial term: its task refuses the SiDA-only flags, a stage prefix too.
  assert.throws(() => parseDistillChainArgs([...args, "--sid-lsg-gan", "1"]), /sid-lsg-gan/);
  assert.throws(() => parseDistillChainArgs([...args, "--sida-alpha", "x"]), /--sida-alpha/);
});

Deno.test("distill chain: a SiD²A snapshot from before G's first step is never its best while a later one exists, also in a run from before that rule", async () => {
  const f = await setup();
  const out = join(f.dir, "warmup-best");
  // G does not step for the first 4 images: the 0.004-kimg SiD²A snapshot is SiD's generator.
  const base = chainFlags(f, out);
  base[base.indexOf("--g-warmup-kimg") + 1] = "0.004";
  const args = [...base, "--stages", "import,sid,sida", "--snap", "0.004"];
  await runDistillChain(parseDistillChainArgs(args));
  const dir = join(out, "sida");
  const scores = (await Deno.readTextFile(join(dir, "snapshot-fids.jsonl"))).trim().split("\n")
    .map((l) => JSON.parse(l));
  assertEquals(scores.map((r) => r.nimg), [4, 8], "both SiD²A snapshots scored");
  const best = JSON.parse(await Deno.readTextFile(join(dir, "network-snapshot-best.json")));
  assertEquals(best.nimg, 8, "the snapshot after G's first step, whatever the FIDs");
  // A run folder as the chain left it before the rule: its best is the 4-image snapshot.
  const first = scores[0];
  await Deno.writeFile(
    join(dir, "network-snapshot-best.safetensors"),
    await Deno.readFile(join(dir, first.snapshot)),
  );
  await Deno.writeTextFile(
    join(dir, "network-snapshot-best.json"),
    JSON.stringify({ ...best, ...first, which: "best" }, null, 2),
  );
  // The evaluation checks each stage's picks first.
  await runDistillChain(parseDistillChainArgs([...base, "--stages", "eval", "--snap", "0.004"]));
  const again = JSON.parse(await Deno.readTextFile(join(dir, "network-snapshot-best.json")));
  assertEquals(again.nimg, 8, "picked again on the next run");
  const copy = await Deno.readFile(join(dir, "network-snapshot-best.safetensors"));
  const eight = await Deno.readFile(join(dir, scores[1].snapshot));
  assert(copy.length === eight.length && copy.every((v, i) => v === eight[i]), "best copy = 8");
});

Deno.test("distill chain tests: remove the temporary folder", async () => {
  if (!fixture) return;
  await Deno.remove((await fixture).dir, { recursive: true });
});
