/**
 * Issue 14: a whole SiDA iteration on `webgpu` with our WGSL kernels gives the same losses as on
 * `native` (tfjs-cpu with our C and BLAS kernels) from the same seed, and keeps
 * `tf.memory().numTensors` flat from one iteration to the next.
 *
 * The network is a tiny conditional DDPM++ with attention at 4×4 (so the attention path, the
 * up/down-sampling convolutions and group norm all run), both warm-up gates open from the first
 * iteration, two rounds of micro-batches. Every random draw of the Distiller is made on the host
 * from (seed, iteration), so both backends see the same noise, σ and labels; only float rounding
 * differs. Skipped where Deno finds no WebGPU adapter at all.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/deps.ts";
import { ensureXdgRuntimeDir, initBackend } from "../lib/runtime/backend.ts";
import { tinyImageDataset } from "./helpers.ts";
import { createNetwork } from "../lib/nets/network.ts";
import { Distiller, type IterationStats } from "../lib/distill/distiller.ts";

ensureXdgRuntimeDir();
const adapter = await (navigator as { gpu?: GPU }).gpu?.requestAdapter().catch(() => null);
const ignore = !adapter;

const NET = {
  imgResolution: 8,
  imgChannels: 3,
  labelDim: 3,
  augmentDim: 0,
  unet: {
    arch: "SongUNet" as const,
    modelChannels: 8,
    channelMult: [1, 2],
    numBlocks: 1,
    attnResolutions: [4],
    dropout: 0,
  },
};

const CONFIG = {
  method: "sida" as const,
  batch: 4,
  microBatch: 2,
  gWarmupNimg: 0,
  ganWarmupNimg: 0,
  lr: 1e-4,
  glr: 1e-4,
  seed: 5,
};

const LOSSES = ["lossFake", "lossD", "lossG", "lossGGan", "bceReal", "bceFake", "bceG"] as const;

/** Three iterations on `backend`; the stats and numTensors after each. */
async function run(backend: string): Promise<{ stats: IterationStats[]; counts: number[] }> {
  const info = await initBackend(backend);
  assert.equal(info.name, backend);
  const teacher = createNetwork(NET, { seed: 2 });
  const d = new Distiller({ teacher, dataset: tinyImageDataset(16, 8), config: CONFIG });
  const stats: IterationStats[] = [], counts: number[] = [];
  for (let i = 0; i < 3; i++) {
    stats.push(await d.step());
    counts.push(tf.memory().numTensors);
  }
  d.dispose();
  teacher.dispose();
  return { stats, counts };
}

Deno.test({
  name: "webgpu: a SiDA iteration gives native's losses (1e-3) and keeps numTensors flat",
  ignore,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const want = await run("native");
    const got = await run("webgpu");
    // The first iteration creates the Adam moments; from the second on nothing may accumulate.
    assert.equal(got.counts[1], got.counts[2], `numTensors on webgpu: ${got.counts}`);
    assert.equal(want.counts[1], want.counts[2], `numTensors on native: ${want.counts}`);
    for (let i = 0; i < 3; i++) {
      const a = got.stats[i], b = want.stats[i];
      assert.equal(a.gStep, true);
      assert.equal(a.ganActive, true);
      assert.equal(a.keptFake, b.keptFake);
      assert.equal(a.keptG, b.keptG);
      for (const k of LOSSES) {
        const x = a[k] as number, y = b[k] as number;
        assert.ok(Number.isFinite(x) && Number.isFinite(y), `iteration ${i} ${k}: ${x} vs ${y}`);
        const rel = Math.abs(x - y) / Math.max(Math.abs(y), 1e-6);
        assert.ok(rel <= 1e-3, `iteration ${i} ${k}: webgpu ${x}, native ${y} (relative ${rel})`);
      }
    }
  },
});
