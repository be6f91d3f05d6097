/**
 * `deno task import-teacher <in.pkl|in.pt> <out.safetensors> [--key NAME] [--preset NAME |
 * --config kwargs.json]`: converts an official EDM / SiD / SiDA network file, or an EDM2 one
 * (`edm2-img512-*.pkl`, whose pickle records its own architecture), to our safetensors network
 * format and prints what it found. Nothing is written unless the whole input is valid.
 *
 * @module
 */
import { dirname } from "node:path";
import { checkWritableDir } from "../lib/io/atomic.ts";
import { fromEdmKwargs, preset } from "../lib/nets/config.ts";
import { describeImport, importToSafetensors } from "../lib/nets/import.ts";
import { describeEdm2Import, importEdm2ToSafetensors } from "../lib/nets/import_edm2.ts";
import { parseFlags, runMain, startBackend, UsageError } from "../lib/runtime/cli.ts";

const USAGE =
  "usage: deno task import-teacher <in.pkl|in.pt> <out.safetensors> [--key NAME] [--preset NAME | --config kwargs.json]";

await runMain(async () => {
  const flags = parseFlags(
    Deno.args,
    { string: ["key", "preset", "config"], boolean: ["help"] },
    USAGE,
  );
  if (flags.help) {
    console.log(USAGE);
    return;
  }
  const [input, output, ...rest] = flags.positionals;
  if (!input || !output || rest.length) {
    throw new UsageError(`expected an input and an output file (${USAGE})`);
  }
  if (!output.toLowerCase().endsWith(".safetensors")) {
    throw new UsageError(`the output must be a .safetensors file, got '${output}'`);
  }
  if (flags.preset && flags.config) throw new UsageError("give --preset or --config, not both");
  const config = typeof flags.preset === "string"
    ? preset(flags.preset)
    : typeof flags.config === "string"
    ? fromEdmKwargs(JSON.parse(await Deno.readTextFile(flags.config)))
    : undefined;
  // The output's folder must be writable before the (long) conversion starts.
  await checkWritableDir(dirname(output));
  // The import only moves weights: the CPU backend is enough, and the default.
  await startBackend(typeof flags.backend === "string" ? flags.backend : "cpu");
  const t0 = performance.now();
  const key = typeof flags.key === "string" ? flags.key : undefined;
  let description: string;
  try {
    description = describeImport(await importToSafetensors(input, output, { key, config }));
  } catch (e) {
    // The EDM importer stops at an EDM2 class (nothing written); the EDM2 importer takes it.
    if (!/is an EDM2 network/.test((e as Error).message)) throw e;
    if (config) {
      throw new UsageError(
        "--preset and --config apply to EDM networks; an EDM2 pickle records its own",
      );
    }
    description = describeEdm2Import(await importEdm2ToSafetensors(input, output, { key }));
  }
  console.log(description);
  console.log(
    `${"written".padEnd(13)} ${output} (${((performance.now() - t0) / 1000).toFixed(2)} s)`,
  );
});
