/**
 * Import by URL: serve the repository over HTTP on 127.0.0.1, then run, from an empty folder with
 * no deno.json (so no import map), a script that imports mod.ts by that URL and denoises a batch.
 */
import assert from "node:assert/strict";
import { extname, join, normalize } from "node:path";

const ROOT = new URL("..", import.meta.url).pathname;
const TYPES: Record<string, string> = {
  ".ts": "application/typescript",
  ".js": "application/javascript",
  ".json": "application/json",
};

Deno.test("mod.ts works when imported by URL from a folder without deno.json", async () => {
  const ac = new AbortController();
  const served: string[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    async (req) => {
      const path = normalize(decodeURIComponent(new URL(req.url).pathname));
      if (path.includes("..")) return new Response("bad path", { status: 400 });
      try {
        const body = await Deno.readFile(join(ROOT, path));
        served.push(path);
        return new Response(body, {
          headers: { "content-type": TYPES[extname(path)] ?? "application/octet-stream" },
        });
      } catch {
        return new Response("not found", { status: 404 });
      }
    },
  );
  const { port } = server.addr as Deno.NetAddr;
  const dir = await Deno.makeTempDir();
  try {
    const script = `
      import { createNetwork, initBackend, tf } from "http://127.0.0.1:${port}/mod.ts";
      const info = await initBackend("cpu");
      const net = createNetwork({ imgResolution: 8, imgChannels: 3, labelDim: 2,
        unet: { arch: "SongUNet", modelChannels: 8, channelMult: [1, 2], numBlocks: 1, attnResolutions: [4] } }, { seed: 1 });
      const x = tf.randomNormal([2, 8, 8, 3], 0, 1, "float32", 3);
      const labels = tf.cast(tf.oneHot(tf.tensor1d([0, 1], "int32"), 2), "float32");
      const d = net.denoise(x, [0.5, 5], { labels });
      const l = net.denoise(x, 1, { labels, returnFlag: "encoder" });
      const v = await d.data();
      console.log(JSON.stringify({ backend: info.name, shape: d.shape, logits: l.shape,
        finite: v.every(Number.isFinite), params: net.numParameters() }));
    `;
    await Deno.writeTextFile(join(dir, "use.ts"), script);
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--quiet",
        "--no-config",
        "--allow-env",
        "--allow-read",
        "--allow-write",
        "--allow-ffi",
        `--allow-import=127.0.0.1:${port}`,
        `--reload=http://127.0.0.1:${port}`,
        "use.ts",
      ],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout).trim();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, `script failed: ${stderr}`);
    const result = JSON.parse(stdout.split("\n").at(-1)!);
    assert.deepEqual(result.shape, [2, 8, 8, 3]);
    assert.deepEqual(result.logits, [2, 4, 4, 1]);
    assert.equal(result.finite, true);
    assert.equal(result.backend, "cpu");
    assert.ok(result.params > 1000);
    assert.ok(
      served.includes("/mod.ts") && served.some((p) => p.startsWith("/lib/nets/")),
      "modules came over HTTP",
    );
  } finally {
    ac.abort();
    await server.finished;
    await Deno.remove(dir, { recursive: true });
  }
});
