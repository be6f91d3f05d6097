/**
 * `deno task sida --teacher FILE --data ZIP|mnist --out DIR [--init SID_GENERATOR] [flags]`:
 * SiDA distillation (docs/distillation.md §3.4-3.6); with `--init` a SiD generator starts G and
 * G_ema, which
 * makes it SiD²A (docs/distillation.md §1.3). `--help` lists the flags; see `lib/distill/train.ts`.
 *
 * @module
 */
import { distillationTask } from "../lib/distill/train.ts";
import { runMain } from "../lib/runtime/cli.ts";

await runMain(() => distillationTask("sida", Deno.args));
