/**
 * Run folders under concurrent use, interruptions and bad file systems:
 *
 * - the lock: a second process on a locked folder stops with one line naming the folder and the
 *   holder's pid and writes nothing; the lock is re-entrant in a process and released;
 * - a dead holder's lock is recovered with a note, and stale `.partial` temporaries of a killed
 *   write are removed (only names of `writeFileAtomic`'s pattern);
 * - eval, generate and import-teacher check an unwritable `--out` before any work;
 * - I/O errors name the path (a full disk: `/dev/full`, and a 64 KiB tmpfs when mountable);
 * - negative numbers are flag values (`--budget -1` gets `--budget`'s own message);
 * - killing `deno task` stops its `deno run` child, which writes its state and drops its lock.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { appendTextNamed, checkWritableDir, writeFileAtomic } from "../lib/io/atomic.ts";
import { LOCK_FILE, lockRunFolder, RunFolderLockedError } from "../lib/io/lock.ts";
import { appendLog, findLatestState } from "../lib/train/run_folder.ts";
import { parseDistillArgs } from "../lib/distill/train.ts";
import { parseTeacherArgs } from "../lib/diffusion/teacher_training.ts";
import { createNetwork, saveNetwork } from "../lib/nets/network.ts";
import { parseDistillChainArgs } from "../lib/pipeline/distill.ts";
import { isDenoTask, parseFlags, UsageError } from "../lib/runtime/cli.ts";
import { fixturePath, setupBackend, TEST_BACKEND, tinySongUNet } from "./helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;

const TINY = tinySongUNet({ imgResolution: 32, imgChannels: 1, labelDim: 0 });

let fixture: Promise<{ dir: string; teacher: string }> | undefined;

/** A temporary folder with a tiny unconditional network (teacher and generator alike). */
function setup(): Promise<{ dir: string; teacher: string }> {
  fixture ??= (async () => {
    await setupBackend();
    const dir = await Deno.makeTempDir({ prefix: "sida-run-folder-test-" });
    const net = createNetwork(TINY, { seed: 2 });
    const teacher = join(dir, "teacher.safetensors");
    await saveNetwork(net, teacher);
    net.dispose();
    return { dir, teacher };
  })();
  return fixture;
}

async function run(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: ROOT,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** The chain on the tiny teacher, import stage only (a copy of the teacher: fast). */
function importChain(teacher: string, out: string): string[] {
  return [
    join(ROOT, "tasks/distill.ts"),
    ...["--teacher", teacher, "--out", out, "--stages", "import", "--preset", "mnist"],
    ...["--backend", TEST_BACKEND],
  ];
}

function assertOneErrorLine(name: string, r: { code: number; stderr: string }, re: RegExp) {
  const lines = r.stderr.trimEnd().split("\n");
  assert.notEqual(r.code, 0, `${name}: exit code`);
  assert.equal(lines.length, 1, `${name}: one stderr line, got ${JSON.stringify(r.stderr)}`);
  assert(lines[0].startsWith("error: "), `${name}: ${lines[0]}`);
  assert(re.test(lines[0]), `${name}: '${lines[0]}' should match ${re}`);
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

/** A pid that is certainly not running: a process that has ended (and been reaped). */
async function deadPid(): Promise<number> {
  const p = new Deno.Command("true").spawn();
  await p.status;
  return p.pid;
}

/** Whether process `pid` runs (Linux: `/proc/<pid>/stat` exists and is not a zombie). */
async function running(pid: number): Promise<boolean> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    return !/^[ZX]/.test(stat.slice(stat.lastIndexOf(")") + 2));
  } catch {
    return false;
  }
}

/** A child process of `pid` (Linux: the first `/proc/<n>/stat` whose parent is `pid`), or 0. */
async function childOf(pid: number): Promise<number> {
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = await Deno.readTextFile(`/proc/${e.name}/stat`);
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) {
        return Number(e.name);
      }
    } catch {
      // ended
    }
  }
  return 0;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

Deno.test("run folder lock: a second process is refused with one line, writing nothing", async () => {
  const f = await setup();
  const out = join(f.dir, "locked");
  // The holder: another process that takes the lock and waits.
  const holder = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { lockRunFolder } from "${join(ROOT, "lib/io/lock.ts")}";` +
      `await lockRunFolder(${JSON.stringify(out)}, { task: "holder" });` +
      `console.log("locked"); await new Promise((r) => setTimeout(r, 60000));`,
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const reader = holder.stdout.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    reader.releaseLock();
    assert.match(first, /locked/);
    const lock = JSON.parse(await Deno.readTextFile(join(out, LOCK_FILE)));
    assert.equal(lock.pid, holder.pid);
    assert.equal(lock.task, "holder");

    const r = await run(importChain(f.teacher, out));
    assertOneErrorLine(
      "second chain",
      r,
      new RegExp(`${escapeRe(out)} is in use by another process \\(pid ${holder.pid} on `),
    );
    assert.deepEqual(await names(out), [LOCK_FILE], "the second process wrote nothing");

    // In this process too, the folder is refused while the holder lives.
    await assert.rejects(() => lockRunFolder(out), RunFolderLockedError);
  } finally {
    holder.kill("SIGKILL");
    await holder.stdout.cancel().catch(() => {});
    await holder.status;
  }

  // Re-entrant within a process, concurrent takes included; the file goes with the last hold.
  const own = join(f.dir, "own");
  const notes: string[] = [];
  const [a, b] = await Promise.all([
    lockRunFolder(own, { task: "a", note: (s) => notes.push(s) }),
    lockRunFolder(own, { task: "b", note: (s) => notes.push(s) }),
  ]);
  assert.deepEqual(notes, [], "no stale-lock note for our own hold");
  await a.release();
  assert(await exists(join(own, LOCK_FILE)), "still held by the second hold");
  await b.release();
  assert(!(await exists(join(own, LOCK_FILE))), "released");
  assert(!(await exists(own)), "the folder the lock created, still empty, is removed again");

  // A lock of another host is never taken over.
  await Deno.mkdir(own);
  await Deno.writeTextFile(
    join(own, LOCK_FILE),
    JSON.stringify({ pid: await deadPid(), hostname: "another-host", started: "x", task: "t" }),
  );
  await assert.rejects(() => lockRunFolder(own), /in use by another process .* on another-host/);
});

Deno.test("run folder lock: a dead holder's lock is recovered; stale partials are removed", async () => {
  const f = await setup();
  const out = join(f.dir, "stale");
  // A chain whose import was killed: the run folder holds chain.json, a stale lock and the
  // temporary copy of the teacher.
  const first = await run(importChain(f.teacher, out));
  assert.equal(first.code, 0, first.stderr);
  await Deno.remove(join(out, "import", "stage-done.json"));
  await Deno.remove(join(out, "import", "teacher.safetensors"));
  const partial = join(out, "import", ".teacher.safetensors.0123456789abcdef.partial");
  await Deno.writeFile(partial, new Uint8Array(4096));
  const topPartial = join(out, ".chain.json.fedcba9876543210.partial");
  await Deno.writeFile(topPartial, new Uint8Array(10));
  const other = join(out, "import", ".notes.partial"); // not a writeFileAtomic name: kept
  await Deno.writeFile(other, new Uint8Array(1));
  const pid = await deadPid();
  await Deno.writeTextFile(
    join(out, LOCK_FILE),
    JSON.stringify({
      pid,
      hostname: Deno.hostname(),
      started: new Date().toISOString(),
      task: "distill",
      token: "0",
    }),
  );

  const r = await run(importChain(f.teacher, out));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`recovered the stale lock of ${escapeRe(out)} \\(pid ${pid} `));
  assert.match(r.stderr, /removed 2 stale temporary files/);
  assert(!(await exists(partial)), "the stale partial in import/ is removed");
  assert(!(await exists(topPartial)), "the stale partial in the folder is removed");
  assert(await exists(other), "a file that is not ours is kept");
  assert(!(await exists(join(out, LOCK_FILE))), "the lock is released at the end");
  assert(await exists(join(out, "import", "stage-done.json")), "the import ran again");
  const log = (await Deno.readTextFile(join(out, "chain-log.jsonl"))).trim().split("\n");
  assert.deepEqual(log.map((l) => JSON.parse(l).action), ["ran", "ran"]);
});

Deno.test("eval, generate, import-teacher: an unwritable --out fails before any work", async () => {
  const f = await setup();
  const file = join(f.dir, "a-file");
  await Deno.writeTextFile(file, "not a folder\n");
  const bad = join(file, "out");
  const cases: [string, string[], string][] = [
    [
      "eval",
      ["tasks/eval.ts", "--generator", f.teacher, "--num", "4", "--batch", "4", "--metrics", "is"],
      bad,
    ],
    ["generate (folder)", ["tasks/generate.ts", "--generator", f.teacher, "--num", "4"], bad],
    [
      "generate (.npz)",
      ["tasks/generate.ts", "--generator", f.teacher, "--num", "4"],
      join(bad, "x.npz"),
    ],
    [
      "import-teacher",
      ["tasks/import_teacher.ts", fixturePath("pickles/edm_songunet.pkl")],
      join(bad, "t.safetensors"),
    ],
  ];
  const results = await Promise.all(cases.map(([name, args, out]) => {
    const full = name === "import-teacher" ? [...args, out] : [...args, "--out", out];
    return run(full, { SIDA_BACKEND: "cpu" });
  }));
  for (let i = 0; i < cases.length; i++) {
    // One line naming the folder: no backend line, no progress, so no work was done.
    assertOneErrorLine(cases[i][0], results[i], new RegExp(escapeRe(bad) + ".*Not a directory"));
  }

  // In-process: the same check, and a folder that can be written passes (leaving nothing).
  await assert.rejects(() => checkWritableDir(bad), (e: Error) => e.message.includes(bad));
  const ok = join(f.dir, "writable", "deep");
  await checkWritableDir(ok);
  assert.deepEqual(await names(ok), []);
});

Deno.test("I/O errors name the path: a full disk", async (t) => {
  const f = await setup();
  await t.step("/dev/full: log.jsonl and appendTextNamed", async () => {
    if (!(await exists("/dev/full"))) return console.error("no /dev/full: skipped");
    const dir = join(f.dir, "full-log");
    await Deno.mkdir(dir);
    await Deno.symlink("/dev/full", join(dir, "log.jsonl"));
    await assert.rejects(
      () => appendLog(dir, { tick: 0 }),
      (e: Error) => {
        assert.equal(
          e.message,
          `cannot write ${join(dir, "log.jsonl")}: No space left on device (os error 28)`,
        );
        return true;
      },
    );
    await assert.rejects(
      () => appendTextNamed(join(dir, "log.jsonl"), "x\n"),
      /cannot write .*log\.jsonl: No space left on device/,
    );
  });

  await t.step(
    "writeFileAtomic: a failing write names the target and leaves no partial",
    async () => {
      const dir = join(f.dir, "fault");
      await Deno.mkdir(dir);
      const target = join(dir, "state.safetensors");
      const proto = Deno.FsFile.prototype;
      const write = proto.write;
      proto.write = () => Promise.reject(new Error("No space left on device (os error 28)"));
      try {
        await assert.rejects(
          () => writeFileAtomic(target, new Uint8Array(100)),
          (e: Error) => {
            assert.equal(
              e.message,
              `cannot write ${target}: No space left on device (os error 28)`,
            );
            return true;
          },
        );
      } finally {
        proto.write = write;
      }
      assert.deepEqual(await names(dir), [], "no temporary file is left");
      // A folder that cannot be made is named; a Deno error keeps its class.
      const plain = join(dir, "plain");
      await Deno.writeTextFile(plain, "");
      await assert.rejects(
        () => writeFileAtomic(join(plain, "x.bin"), new Uint8Array(1)),
        (e: Error) =>
          e instanceof Deno.errors.AlreadyExists &&
          e.message === `cannot create folder ${plain}: File exists (os error 17)`,
      );
      await assert.rejects(
        () => writeFileAtomic(join(plain, "sub", "x.bin"), new Uint8Array(1)),
        (e: Error) => e.message.startsWith(`cannot create folder ${join(plain, "sub")}: `),
      );
    },
  );

  await t.step("a 64 KiB tmpfs (root only): a real ENOSPC of writeFileAtomic", async () => {
    const mnt = join(f.dir, "tmpfs");
    await Deno.mkdir(mnt);
    let mounted = false;
    try {
      const m = await new Deno.Command("mount", {
        args: ["-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt],
        stdout: "null",
        stderr: "null",
      }).output();
      mounted = m.success;
    } catch {
      // no mount(8)
    }
    if (!mounted) return console.error("cannot mount a tmpfs here (not root?): skipped");
    try {
      const target = join(mnt, "big.bin");
      await assert.rejects(
        () => writeFileAtomic(target, new Uint8Array(1 << 20)),
        (e: Error) => {
          assert.equal(e.message, `cannot write ${target}: No space left on device (os error 28)`);
          return true;
        },
      );
      assert.deepEqual(await names(mnt), [], "no temporary file is left");
    } finally {
      await new Deno.Command("umount", { args: [mnt] }).output();
    }
  });
});

Deno.test("negative numbers are flag values, checked by the flag's own rule", async () => {
  const f = parseFlags(
    ["--budget", "-1", "--lr", "-1e-4", "--seed", "-3", "--x=-2", "--y", "-.5", "pos"],
    { string: ["budget", "lr", "seed", "x", "y"] },
    "usage",
  );
  assert.deepEqual(
    { ...f },
    { budget: "-1", lr: "-1e-4", seed: "-3", x: "-2", y: "-.5", positionals: ["pos"] },
  );
  // A flag after a string flag is still a missing value, and a boolean flag takes no number.
  assert.throws(
    () => parseFlags(["--budget", "--lr", "1"], { string: ["budget", "lr"] }, "u"),
    UsageError,
  );
  assert.throws(() => parseFlags(["--quiet", "-1"], { boolean: ["quiet"] }, "u"), UsageError);

  assert.throws(
    () => parseDistillChainArgs(["--budget", "-1"]),
    /^UsageError: --budget must be > 0, got -1$/,
  );
  assert.throws(
    () => parseDistillChainArgs(["--seed", "-3"]),
    /--seed must be at least 0, got -3/,
  );
  assert.throws(() => parseDistillArgs("sid", ["--lr", "-1e-4"]), /--lr .*-0\.0001|--lr .*-1e-4/);
  assert.throws(() => parseTeacherArgs(["--kimg", "-2"]), /--kimg .*-2/);

  const r = await run(["tasks/generate.ts", "--generator", "g", "--out", "o", "--seed", "-3"]);
  assertOneErrorLine("generate --seed -3", r, /--seed must be at least 0, got -3$/);
});

Deno.test({
  name: "killing `deno task` stops its child, which writes a state and drops its lock",
  ignore: Deno.build.os !== "linux",
}, async () => {
  const f = await setup();
  const out = join(f.dir, "orphan");
  const parent = new Deno.Command(Deno.execPath(), {
    args: [
      "task",
      "sid",
      ...["--teacher", f.teacher, "--out", out, "--preset", "mnist", "--batch", "2"],
      ...["--micro-batch", "2", "--duration", "1000", "--tick", "0.002", "--backend", TEST_BACKEND],
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let child = 0;
  try {
    // The `deno run` child of `deno task`, once it trains (its log has a first tick).
    for (let i = 0; i < 1200 && !(child && (await exists(join(out, "log.jsonl")))); i++) {
      await new Promise((r) => setTimeout(r, 50));
      child ||= await childOf(parent.pid);
    }
    assert(child, "`deno task` started a child");
    assert(await isDenoTask(parent.pid), "the parent is `deno task`");
    assert(!(await isDenoTask(Deno.pid)), "`deno test` is not");
    assert(await exists(join(out, "log.jsonl")), "the child trains");
    parent.kill("SIGKILL");
    await parent.status;
    let gone = false;
    for (let i = 0; i < 600 && !gone; i++) {
      await new Promise((r) => setTimeout(r, 50));
      gone = !(await running(child));
    }
    assert(gone, `the child ${child} still runs 30 s after its parent was killed`);
    assert(!(await exists(join(out, LOCK_FILE))), "the child released its lock");
    assert(await findLatestState(out), "the child wrote a training state (as on Ctrl-C)");
  } finally {
    try {
      parent.kill("SIGKILL");
    } catch {
      // ended
    }
    if (child && (await running(child))) Deno.kill(child, "SIGKILL");
  }
});

Deno.test("run folder tests: remove the temporary folder", async () => {
  if (!fixture) return;
  await Deno.remove((await fixture).dir, { recursive: true });
});
