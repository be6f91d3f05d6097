/**
 * `deno task distill`: the whole chain on one teacher — import, SiD pre-distillation, SiD²A
 * fine-tuning, evaluation of both one-step generators — with a report, plots and sample grids
 * (`lib/pipeline/distill.ts`).
 *
 * Without arguments: the shipped MNIST teacher (`data/mnist-teacher.safetensors`, made by
 * `deno task teacher`), the embedded MNIST digits, the `mnist` preset at a budget of about 20
 * minutes on a 2-core CPU machine, the shipped MNIST feature network and reference statistics;
 * the run folder is `runs/distill-mnist`. Rerunning resumes an interrupted stage and skips
 * finished ones.
 *
 *   deno task distill
 *   deno task distill --budget 4 --num 5000 --out runs/mnist-x4
 *   deno task distill --teacher edm-cifar10-32x32-uncond-vp.pkl --data cifar10-32x32.zip \
 *     --ref cifar10-32x32.npz --detector inception-2015-12-05.pt --out runs/cifar
 *   deno task distill --teacher edm2-img512-xs-2147483-0.135.pkl --data img512-sd.zip \
 *     --vae sd-vae-ft-mse --ref img512.zip --detector inception-2015-12-05.pt --out runs/xs
 *   deno task distill --stages eval --eval-teacher
 *
 * @module
 */
import { distillChainTask } from "../lib/pipeline/distill.ts";
import { runMain } from "../lib/runtime/cli.ts";

await runMain(() => distillChainTask(Deno.args));
