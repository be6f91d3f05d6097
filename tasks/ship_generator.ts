/**
 * `deno task ship-generator`: copies the one-step generator of a finished `deno task distill` run
 * (the snapshot its report uses for the last stage) to a file of its own, with a JSON sidecar of
 * its provenance and scores (`lib/pipeline/ship.ts`). The shipped MNIST generator was made with
 *
 *   deno task distill --budget 6 --sida-ema 5 --sida-ema-rampup 0.5 --seed 0 --out runs/b6c-s0
 *   deno task ship-generator --run runs/b6c-s0 --out data/mnist-generator.safetensors \
 *     --command 'deno task distill --budget 6 --sida-ema 5 --sida-ema-rampup 0.5 --seed 0 --out runs/b6c-s0'
 *
 * @module
 */
import { shipGenerator } from "../lib/pipeline/ship.ts";
import { parseFlags, runMain, UsageError } from "../lib/runtime/cli.ts";

const USAGE =
  "usage: deno task ship-generator [--run runs/distill-mnist] [--out data/mnist-generator.safetensors] [--command 'deno task distill']";

await runMain(async () => {
  const flags = parseFlags(Deno.args, {
    string: ["run", "out", "command"],
    boolean: ["help"],
  }, USAGE);
  if (flags.help) return console.log(USAGE);
  if (flags.positionals.length) {
    throw new UsageError(`unexpected argument '${flags.positionals[0]}' (${USAGE})`);
  }
  const out = (flags.out as string | undefined) ?? "data/mnist-generator.safetensors";
  if (!out.endsWith(".safetensors")) throw new UsageError(`--out must end in .safetensors: ${out}`);
  const info = await shipGenerator((flags.run as string | undefined) ?? "runs/distill-mnist", out, {
    command: flags.command as string | undefined,
  });
  const fid = Object.entries(info.scores.spaces).map(([k, v]) => `FID ${v.fid.toFixed(2)} (${k})`);
  console.log(
    `shipped ${info.scores.stage} generator (${info.scores.used} snapshot, ` +
      `${info.scores.cumulativeKimg.toFixed(1)} kimg): ${out}, ${fid.join(", ")}`,
  );
});
