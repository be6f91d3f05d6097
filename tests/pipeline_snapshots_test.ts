/**
 * Best and last snapshots (`lib/pipeline/snapshots.ts`) with a stub detector whose FIDs are
 * known: each fake snapshot carries its FID in its metadata, and the stub scorer reads it back.
 * The right snapshots are kept (bytes compared), a reopened folder (resume) keeps the best so
 * far even when its numbered snapshot is written again, a copy whose sidecar was lost is scored
 * again, and other scoring settings restart the selection. Through the run driver's `onSnapshot`
 * hook, a tiny SiD run scores each snapshot as it is written, and its resume keeps the best.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../lib/deps.ts";
import { runDistillation } from "../lib/distill/train.ts";
import { createNetwork, saveNetwork } from "../lib/nets/network.ts";
import { setupBackend, TEST_BACKEND, tinySongUNet } from "./helpers.ts";
import { hostTensor } from "../lib/io/host_tensor.ts";
import { readSafetensorsHeader, writeSafetensors } from "../lib/io/safetensors.ts";
import { snapshotFileName } from "../lib/train/run_folder.ts";
import {
  BEST_SNAPSHOT,
  BestLastTracker,
  LAST_SNAPSHOT,
  readPickedSnapshot,
  readSnapshotScores,
  type SnapshotScoreSettings,
} from "../lib/pipeline/snapshots.ts";

const SETTINGS: SnapshotScoreSettings = {
  num: 1000,
  seed: 1,
  space: "mnist",
  detector: "features.safetensors",
  ref: "ref.npz",
};

/** Writes a fake snapshot at `nimg` whose stub FID is `fid` (distinct bytes per call). */
async function fakeSnapshot(dir: string, nimg: number, fid: number): Promise<string> {
  const path = join(dir, snapshotFileName(nimg));
  await writeSafetensors(
    path,
    new Map([["w", hostTensor("float32", [2], new Float32Array([nimg, fid]))]]),
    { kimg: String(nimg / 1000), stubFid: String(fid) },
  );
  return path;
}

/** The stub detector: the FID written into the snapshot; counts its calls. */
function stubScorer() {
  const calls: string[] = [];
  const scorer = async (path: string) => {
    calls.push(path);
    const { metadata } = await readSafetensorsHeader(path);
    return { fid: Number(metadata.stubFid), is: { mean: 5, std: 0.1 } };
  };
  return { scorer, calls };
}

async function same(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

Deno.test("best/last: a known FID sequence keeps the right snapshots; resume keeps the best", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sida-best-last-" });
  try {
    const { scorer, calls } = stubScorer();
    const t = await BestLastTracker.open(dir, SETTINGS, scorer);
    assert.equal(t.best === null, true);
    const fids = [50, 40, 45, 42];
    const paths: string[] = [];
    for (const [i, fid] of fids.entries()) {
      const p = await fakeSnapshot(dir, (i + 1) * 100, fid);
      paths.push(p);
      const r = await t.onSnapshot(p, (i + 1) * 100);
      assert.equal(r.fid, fid);
    }
    assert.equal(calls.length, 4);
    assert.equal(t.best?.fid, 40);
    assert.equal(t.best?.nimg, 200);
    assert.equal(t.last?.nimg, 400);
    assert.ok(await same(join(dir, BEST_SNAPSHOT), paths[1]), "best = the 40 snapshot");
    assert.ok(await same(join(dir, LAST_SNAPSHOT), paths[3]), "last = the final snapshot");
    const side = await readPickedSnapshot(dir, "best");
    assert.equal(side?.fid, 40);
    assert.equal(side?.kimg, 0.2);
    assert.equal(side?.snapshot, snapshotFileName(200));
    assert.deepEqual(side?.settings, SETTINGS);
    assert.deepEqual((await readSnapshotScores(dir, SETTINGS)).map((r) => r.fid), fids);

    // Resume from a state at 200 images: 300 and 400 are written again (other bytes and FIDs),
    // and the 200-image snapshot too, worse this time; the best copy keeps the 40 generator.
    const best40 = await Deno.readFile(join(dir, BEST_SNAPSHOT));
    const again = stubScorer();
    const u = await BestLastTracker.open(dir, SETTINGS, again.scorer);
    assert.equal(again.calls.length, 0, "the best so far is read back, not scored again");
    assert.equal(u.best?.fid, 40);
    for (const [nimg, fid] of [[200, 70], [300, 44], [400, 41]]) {
      await u.onSnapshot(await fakeSnapshot(dir, nimg, fid), nimg);
    }
    assert.equal(u.best?.fid, 40, "still the best so far");
    assert.deepEqual(await Deno.readFile(join(dir, BEST_SNAPSHOT)), best40);
    assert.equal(u.last?.fid, 41);
    assert.deepEqual(
      (await readSnapshotScores(dir, SETTINGS)).map((r) => [r.nimg, r.fid]),
      [[100, 50], [200, 70], [300, 44], [400, 41]],
      "a snapshot written again keeps its latest score",
    );
    const p5 = await fakeSnapshot(dir, 500, 30);
    await u.onSnapshot(p5, 500);
    assert.equal(u.best?.fid, 30);
    assert.ok(await same(join(dir, BEST_SNAPSHOT), p5));

    // A kill between the copy and its sidecar: a copy no sidecar names is scored again.
    await Deno.copyFile(await fakeSnapshot(dir, 600, 25), join(dir, BEST_SNAPSHOT));
    const third = stubScorer();
    const v = await BestLastTracker.open(dir, SETTINGS, third.scorer);
    assert.deepEqual(third.calls, [join(dir, BEST_SNAPSHOT)]);
    assert.equal(v.best?.fid, 25);
    assert.equal(v.best?.nimg, 600);
    assert.equal((await readPickedSnapshot(dir, "best"))?.fid, 25);

    // catchUp: the unscored 600 snapshot is scored and, being the stage's final one, the last.
    await v.catchUp([{ name: snapshotFileName(600), nimg: 600 }], {
      name: snapshotFileName(600),
      nimg: 600,
    });
    assert.equal(v.last?.nimg, 600);
    assert.equal(third.calls.length, 2);
    // Nothing left to score: a second catch-up scores nothing.
    await v.catchUp([{ name: snapshotFileName(600), nimg: 600 }], {
      name: snapshotFileName(600),
      nimg: 600,
    });
    assert.equal(third.calls.length, 2);

    // Other settings (another sample count): the selection restarts from the snapshots on disk.
    const other = { ...SETTINGS, num: 2000 };
    const fourth = stubScorer();
    const w = await BestLastTracker.open(dir, other, fourth.scorer);
    assert.equal(w.best === null, true);
    const onDisk = [100, 200, 300, 400, 500, 600].map((n) => ({
      name: snapshotFileName(n),
      nimg: n,
    }));
    await w.catchUp(onDisk, onDisk[5]);
    assert.equal(fourth.calls.length, 6);
    assert.equal(w.best?.fid, 25);
    assert.equal(w.last?.nimg, 600);
    assert.deepEqual(
      (await readSnapshotScores(dir, other)).map((r) => r.fid),
      [50, 70, 44, 41, 30, 25],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("best/last: the driver's onSnapshot hook scores each snapshot as it is written, before its state; resume keeps the best", async () => {
  await setupBackend();
  const dir = await Deno.makeTempDir({ prefix: "sida-best-last-run-" });
  try {
    const teacher = createNetwork(tinySongUNet({ imgResolution: 16, imgChannels: 1 }), { seed: 1 });
    const teacherPath = join(dir, "teacher.safetensors");
    await saveNetwork(teacher, teacherPath);
    teacher.dispose();
    const out = join(dir, "sid");
    // The stub detector's FIDs, in the order the snapshots are written.
    const fids = [30, 20, 25, 22, 40];
    const seen: { path: string; nimg: number; hadState: boolean }[] = [];
    const scorer = (_path: string) => Promise.resolve({ fid: fids[seen.length - 1] });
    const run = async (durationKimg: number) => {
      const tracker = await BestLastTracker.open(out, SETTINGS, scorer);
      return await runDistillation({
        method: "sid",
        teacher: teacherPath,
        out,
        preset: "mnist",
        overrides: { batch: 4, microBatch: 4, lr: 1e-3, glr: 1e-3, seed: 3, dropout: 0 },
        durationKimg,
        tickKimg: 0.008,
        snapKimg: 0.008,
        dumpKimg: 0.008,
        backend: TEST_BACKEND,
        quiet: true,
        onSnapshot: async (path, nimg) => {
          const state = join(out, `training-state-${snapshotFileName(nimg).slice(17)}`);
          const hadState = await Deno.stat(state).then(() => true, () => false);
          seen.push({ path, nimg, hadState });
          await tracker.onSnapshot(path, nimg);
        },
      });
    };
    const before = tf.memory().numTensors;
    await run(0.024); // 6 iterations of 4 images: snapshots at 8, 16, 24 images
    assert.deepEqual(seen.map((s) => s.nimg), [8, 16, 24]);
    assert.deepEqual(
      seen.map((s) => s.path),
      [8, 16, 24].map((n) => join(out, snapshotFileName(n))),
    );
    assert.ok(seen.every((s) => !s.hadState), "scored before the same iteration's state");
    const best16 = await Deno.readFile(join(out, snapshotFileName(16)));
    assert.deepEqual(await Deno.readFile(join(out, BEST_SNAPSHOT)), best16);
    assert.equal((await readPickedSnapshot(out, "last"))?.nimg, 24);

    // Resumed and extended to 40 images: FIDs 22 and 40 do not beat 20.
    const r = await run(0.04);
    assert.ok(r.resumed);
    assert.deepEqual(seen.map((s) => s.nimg), [8, 16, 24, 32, 40]);
    const best = await readPickedSnapshot(out, "best");
    assert.equal(best?.fid, 20);
    assert.equal(best?.nimg, 16);
    assert.deepEqual(await Deno.readFile(join(out, BEST_SNAPSHOT)), best16);
    assert.deepEqual(
      await Deno.readFile(join(out, LAST_SNAPSHOT)),
      await Deno.readFile(join(out, snapshotFileName(40))),
    );
    assert.equal(tf.memory().numTensors, before, "no tensor left behind");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("best/last: snapshots before G's warm-up ends are best only until a later one is scored; an older best is picked again", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sida-best-warmup-" });
  try {
    const { scorer } = stubScorer();
    // G does not step for 512 images: the 384-image snapshot is the initial generator (FID 30).
    const t = await BestLastTracker.open(dir, SETTINGS, scorer, { bestAfterNimg: 512 });
    const p384 = await fakeSnapshot(dir, 384, 30);
    await t.onSnapshot(p384, 384);
    assert.equal(t.best?.nimg, 384, "the only snapshot so far is the best");
    const p768 = await fakeSnapshot(dir, 768, 36);
    await t.onSnapshot(p768, 768);
    assert.equal(t.best?.nimg, 768, "a later snapshot replaces it although its FID is higher");
    const p1152 = await fakeSnapshot(dir, 1152, 33);
    await t.onSnapshot(p1152, 1152);
    assert.equal(t.best?.nimg, 1152);
    const p1536 = await fakeSnapshot(dir, 1536, 35);
    await t.onSnapshot(p1536, 1536);
    assert.equal(t.best?.nimg, 1152);
    assert.ok(await same(join(dir, BEST_SNAPSHOT), p1152));
    assert.equal(t.last?.nimg, 1536);
    // A folder as an older run left it (best = the 384 snapshot, no warm-up rule): reopened
    // with the rule, the best is picked again from the scored snapshots.
    const scratch = await Deno.makeTempDir({ prefix: "sida-best-old-" });
    try {
      const o = await BestLastTracker.open(scratch, SETTINGS, scorer);
      const q: string[] = [];
      for (const [nimg, fid] of [[384, 30], [768, 36], [1152, 33]] as const) {
        q.push(await fakeSnapshot(scratch, nimg, fid));
        await o.onSnapshot(q.at(-1)!, nimg);
      }
      assert.equal(o.best?.nimg, 384, "no rule: the initial generator wins");
      const n = await BestLastTracker.open(scratch, SETTINGS, scorer, { bestAfterNimg: 512 });
      assert.equal(n.best?.nimg, 1152, "reopened with the rule: picked again");
      assert.ok(await same(join(scratch, BEST_SNAPSHOT), q[2]));
      assert.equal((await readPickedSnapshot(scratch, "best"))?.nimg, 1152);
    } finally {
      await Deno.remove(scratch, { recursive: true });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
