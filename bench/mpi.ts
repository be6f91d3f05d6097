/**
 * The gradient allreduce of one SiDA iteration (issue 19, docs/mpi.md): two networks (the fake net
 * and G) of a preset, each summed over the ranks by `allreduceGradients` (flat float32 buckets,
 * one `MPI_Allreduce` each), timed over `--iters` repetitions after one warm-up.
 *
 * `mpirun -np 2 deno run -A bench/mpi.ts [--configs mnist,cifar10-ddpmpp-cond] [--iters 3]`
 * (rank 0 prints one line per preset: MB per iteration and ms per iteration).
 *
 * @module
 */
import { tf } from "../lib/deps.ts";
import type { NamedTensorMap } from "../lib/deps.ts";
import { createNetwork, preset } from "../lib/nets/network.ts";
import { initBackend } from "../lib/runtime/backend.ts";
import { allreduceGradients, dataParallel } from "../lib/train/parallel.ts";

const arg = (name: string, dflt: string) => {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Deno.args[i + 1] : dflt;
};
const configs = arg("configs", "mnist,cifar10-ddpmpp-cond").split(",");
const iters = Number(arg("iters", "3"));
await initBackend("cpu");
const dp = dataParallel();
if (!dp) {
  console.error("bench/mpi.ts: run under mpirun -np 2 or more");
  Deno.exit(2);
}
for (const name of configs) {
  const net = createNetwork(preset(name), { init: "zeros" });
  const vars = net.namedParameters().map(([, v]) => v);
  const floats = vars.reduce((a, v) => a + v.size, 0);
  const once = async () => {
    for (let k = 0; k < 2; k++) { // fake net and G: the same architecture
      const grads: NamedTensorMap = {};
      for (const v of vars) grads[v.name] = tf.onesLike(v);
      tf.dispose(Object.values(await allreduceGradients(grads, vars, dp)));
    }
  };
  await once();
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) await once();
  const ms = (performance.now() - t0) / iters;
  if (dp.rank === 0) {
    console.log(
      `${name}: ${dp.size} ranks, ${(2 * floats * 4 / 1e6).toFixed(1)} MB per SiDA iteration ` +
        `(2 x ${floats} parameters), ${ms.toFixed(0)} ms per iteration (pack, allreduce, unpack)`,
    );
  }
  net.dispose();
}
