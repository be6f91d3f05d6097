/**
 * A training run for tests/mpi_test.ts, started by it alone or under `mpirun -np N`:
 * `deno run -A tests/mpi_driver.ts '<json spec>'`. The spec names the kind (`teacher`, `sid`,
 * `sida`), the run folder, the files, the settings and, optionally, an injected failure: rank
 * `failAt.rank` throws after iteration `failAt.iteration` (counted from 0 in the run), before
 * that iteration's state is written.
 *
 * @module
 */
import { trainTeacher } from "../lib/diffusion/teacher_training.ts";
import { runDistillation } from "../lib/distill/train.ts";
import type { DistillConfig } from "../lib/distill/distiller.ts";
import type { TeacherConfig } from "../lib/diffusion/teacher_training.ts";
import { runMain } from "../lib/runtime/cli.ts";
import { mpiWorld } from "../lib/runtime/mpi.ts";
import { tinySongUNet } from "./helpers.ts";

/** What tests/mpi_test.ts asks for. */
export interface MpiRunSpec {
  kind: "teacher" | "sid" | "sida";
  out: string;
  /** Distillation: the teacher file; teacher training: unused. */
  teacher?: string;
  /** The data (a dataset zip). */
  data: string;
  /** Distillation overrides or teacher config. */
  config: Partial<DistillConfig> | Partial<TeacherConfig>;
  durationKimg: number;
  dumpKimg: number;
  backend: string;
  failAt?: { rank: number; iteration: number };
}

const spec = JSON.parse(Deno.args[0]) as MpiRunSpec;
const rank = mpiWorld()?.rank ?? 0;
let iterations = 0;
const onIteration = () => {
  const it = iterations++;
  if (spec.failAt && spec.failAt.rank === rank && spec.failAt.iteration === it) {
    throw new Error(`injected failure on rank ${rank} after iteration ${it} at ${Date.now()}`);
  }
};

await runMain(async () => {
  const cadence = {
    tickKimg: spec.dumpKimg,
    snapKimg: spec.durationKimg,
    dumpKimg: spec.dumpKimg,
    backend: spec.backend,
    quiet: true,
    onIteration,
  };
  if (spec.kind === "teacher") {
    await trainTeacher({
      out: spec.out,
      network: tinySongUNet({ imgResolution: 8, imgChannels: 1, labelDim: 3 }),
      data: spec.data,
      config: spec.config as Partial<TeacherConfig>,
      kimg: spec.durationKimg,
      ...cadence,
    });
  } else {
    await runDistillation({
      method: spec.kind,
      teacher: spec.teacher!,
      data: spec.data,
      out: spec.out,
      preset: "mnist",
      overrides: spec.config as Partial<DistillConfig>,
      durationKimg: spec.durationKimg,
      ...cadence,
    });
  }
});
