/**
 * `deno task teacher --out DIR [--kimg N] [--batch B] [--lr X] [--seed S] [--export FILE]
 * [--resume] [flags]`: trains an EDM teacher (default: the `mnist` preset on the embedded MNIST
 * digits) with the EDM loss, resumable from its run folder. `--help` lists the flags; see
 * `lib/diffusion/teacher_training.ts`.
 *
 * @module
 */
import { teacherTask } from "../lib/diffusion/teacher_training.ts";
import { runMain } from "../lib/runtime/cli.ts";

await runMain(() => teacherTask(Deno.args));
