/**
 * `deno task sid --teacher FILE --data ZIP|mnist --out DIR [--preset NAME] [flags]`: plain SiD
 * distillation (no GAN, docs/distillation.md §3.7). `--help` lists the flags; see
 * `lib/distill/train.ts`.
 *
 * @module
 */
import { distillationTask } from "../lib/distill/train.ts";
import { runMain } from "../lib/runtime/cli.ts";

await runMain(() => distillationTask("sid", Deno.args));
