/**
 * Display helpers for Jupyter notebooks on the Deno kernel (`Deno.jupyter`): inline image grids
 * (one row per class for class-conditional generators), plots, Markdown/HTML tables, a progress
 * display that is updated in place (a Jupyter `display_id`, so saved notebooks hold only its
 * last state and no terminal control characters), a watcher that feeds it from a run folder's
 * `log.jsonl`, and the kernel's stop button as an `AbortSignal`.
 *
 * Outside a Jupyter kernel (`deno run`) every helper prints a plain-text line instead, so code
 * written for a notebook also runs as a script.
 *
 * @example
 * ```ts
 * import { classLabels, ProgressDisplay, showImages } from "./display.ts";
 * const progress = new ProgressDisplay("SiD");
 * await progress.update(0.5, "kimg 0.5/1");
 * await showImages(images, { columns: 8, caption: "one row per class" });
 * ```
 *
 * @module
 */
import { join } from "node:path";
import { tf } from "../deps.ts";
import { toUint8Images } from "../diffusion/sampler.ts";
import { imageGridPng } from "../metrics/generate.ts";
import {
  fidPlotSvg,
  type FidPoint,
  lossPlotSvg,
  type StageLossLog,
  svgToPng,
} from "../pipeline/plots.ts";

/** A Jupyter media bundle (MIME type → data). */
export type MediaBundle = Record<string, unknown>;

interface JupyterApi {
  display(
    obj: unknown,
    options?: { raw?: boolean; update?: boolean; display_id?: string },
  ): Promise<void>;
}

function jupyter(): JupyterApi | undefined {
  return (Deno as unknown as { jupyter?: JupyterApi }).jupyter;
}

/** True inside a Jupyter kernel (`Deno.jupyter` present). */
export function inNotebook(): boolean {
  return jupyter() !== undefined;
}

/**
 * Gives Deno's kernel a moment to send a cell's last outputs: it can report a cell finished before
 * publishing what was printed or displayed just before the end. End cells with `await flush()`.
 */
export function flush(ms = 250): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Shows a media bundle (or prints its `text/plain` outside a notebook). */
export async function showBundle(
  bundle: MediaBundle,
  options: { displayId?: string; update?: boolean } = {},
): Promise<void> {
  const j = jupyter();
  if (!j) {
    const text = bundle["text/plain"];
    if (typeof text === "string" && text) console.log(text);
    return;
  }
  await j.display(bundle, {
    raw: true,
    ...(options.displayId ? { display_id: options.displayId } : {}),
    ...(options.update ? { update: true } : {}),
  });
}

function base64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** Escapes text for HTML. */
export function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

/** Shows a PNG inline (`text/plain` is the caption). */
export async function showPng(png: Uint8Array, caption = "image"): Promise<void> {
  await showBundle({ "image/png": base64(png), "text/plain": caption });
}

/** Shows Markdown (also as plain text outside a notebook). */
export async function showMarkdown(markdown: string): Promise<void> {
  await showBundle({ "text/markdown": markdown, "text/plain": markdown });
}

/** Options of {@linkcode showImages}. */
export interface ShowImagesOptions {
  /** Images per row (default: all in one row, at most 16). */
  columns?: number;
  /** Nearest-neighbour upscaling factor (default: 3 below 48 pixels, 2 below 96, else 1). */
  scale?: number;
  /** Text shown under the grid (and as its `text/plain`). */
  caption?: string;
}

/**
 * Shows an NHWC batch in [−1, 1] inline as one PNG grid, row by row (`columns` images per row;
 * with {@linkcode classLabels}' order, one row per class). The input is not disposed.
 */
export async function showImages(
  images: tf.Tensor4D,
  options: ShowImagesOptions = {},
): Promise<void> {
  const [n, res, , channels] = images.shape;
  const columns = options.columns ?? Math.min(n, 16);
  const scale = options.scale ?? (res < 48 ? 3 : res < 96 ? 2 : 1);
  const big = scale === 1
    ? images
    : tf.image.resizeNearestNeighbor(images, [res * scale, res * scale]) as tf.Tensor4D;
  const pixels = await toUint8Images(big);
  if (big !== images) big.dispose();
  const png = imageGridPng(pixels, n, res * scale, channels, columns);
  const caption = options.caption ?? `${n} images`;
  await showPng(png, caption);
  if (options.caption && inNotebook()) await showMarkdown(`*${options.caption}*`);
}

/**
 * One-hot labels `[classes.length · perClass, labelDim]`, class by class (`perClass` rows of
 * `classes[0]`, then of `classes[1]`, …): with `showImages(x, { columns: perClass })`, one row per
 * class. Returns undefined for an unconditional network (`labelDim` 0).
 */
export function classLabels(
  labelDim: number,
  classes: readonly number[],
  perClass: number,
): tf.Tensor2D | undefined {
  if (labelDim === 0) return undefined;
  for (const c of classes) {
    if (!Number.isInteger(c) || c < 0 || c >= labelDim) {
      throw new RangeError(`class ${c} is not in 0..${labelDim - 1}`);
    }
  }
  const ids = classes.flatMap((c) => Array<number>(perClass).fill(c));
  return tf.tidy(() =>
    tf.cast(tf.oneHot(tf.tensor1d(ids, "int32"), labelDim), "float32") as tf.Tensor2D
  );
}

/** A table: a header row and rows of cells (numbers are printed as given). */
export interface Table {
  header: string[];
  rows: (string | number | null)[][];
}

const cell = (v: string | number | null) => v === null ? "–" : String(v);

/** The table as GitHub Markdown. */
export function markdownTable(t: Table): string {
  const esc = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");
  const line = (cells: string[]) => `| ${cells.map(esc).join(" | ")} |`;
  return [
    line(t.header),
    line(t.header.map(() => "---")),
    ...t.rows.map((r) => line(r.map(cell))),
  ].join("\n");
}

/** The table as an HTML `<table>`. */
export function htmlTable(t: Table): string {
  const row = (cells: string[], tag: string) =>
    `<tr>${cells.map((c) => `<${tag}>${escapeHtml(c)}</${tag}>`).join("")}</tr>`;
  return `<table><thead>${row(t.header, "th")}</thead><tbody>${
    t.rows.map((r) => row(r.map(cell), "td")).join("")
  }</tbody></table>`;
}

/** Shows a table inline (HTML, with Markdown and plain text alternatives). */
export async function showTable(t: Table): Promise<void> {
  const md = markdownTable(t);
  await showBundle({ "text/html": htmlTable(t), "text/markdown": md, "text/plain": md });
}

/**
 * Shows an SVG document inline, rendered to PNG when resvg loads (smaller, and viewers that
 * block SVG still show it), else as SVG.
 */
export async function showSvg(svg: string, caption = "plot"): Promise<void> {
  const r = await svgToPng(svg, 1);
  if ("png" in r) await showPng(r.png, caption);
  else await showBundle({ "image/svg+xml": svg, "text/plain": caption });
}

/** Reads a `log.jsonl` (one JSON record per line; a torn last line is skipped). */
export async function readLogRecords(path: string): Promise<Record<string, unknown>[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  const out: Record<string, unknown>[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // a line being written
    }
  }
  return out;
}

/**
 * Loss curves of the distillation stages of a run folder (`<dir>/<stage>/log.jsonl`), one line
 * per stage, the stages laid end to end in images seen. Returns false when there is nothing to
 * plot yet.
 */
export async function showLossCurves(
  dir: string,
  stages: readonly string[] = ["sid", "sida"],
): Promise<boolean> {
  const logs: StageLossLog[] = [];
  let offset = 0;
  for (const stage of stages) {
    const records = await readLogRecords(join(dir, stage, "log.jsonl"));
    if (!records.length) continue;
    logs.push({ stage, offsetKimg: offset, records });
    const last = records.at(-1)!.kimg;
    if (typeof last === "number") offset += last;
  }
  const svg = logs.length ? await lossPlotSvg(logs) : null;
  if (svg === null) return false;
  await showSvg(svg, `loss curves of ${logs.map((l) => l.stage).join(", ")}`);
  return true;
}

/** FID against images seen, with an optional reference line. Returns false without points. */
export async function showFidCurve(
  points: FidPoint[],
  reference?: { fid: number; label: string },
): Promise<boolean> {
  const svg = await fidPlotSvg(points, reference);
  if (svg === null) return false;
  await showSvg(svg, "FID vs images seen");
  return true;
}

let displayCounter = 0;

/**
 * A progress display updated in place: an HTML progress bar with a line of text in a notebook
 * (one Jupyter display, updated through its `display_id`: the saved notebook keeps only the last
 * state), a plain line per update elsewhere.
 */
export class ProgressDisplay {
  readonly #id: string;
  readonly #title: string;
  #shown = false;
  #last = "";

  constructor(title: string) {
    this.#title = title;
    this.#id = `sida-progress-${Date.now().toString(36)}-${++displayCounter}`;
  }

  /** The last text shown. */
  get text(): string {
    return this.#last;
  }

  /** Shows `fraction` (0..1, or null for unknown) and a line of text. */
  async update(fraction: number | null, text: string): Promise<void> {
    const f = fraction === null ? null : Math.min(1, Math.max(0, fraction));
    const pct = f === null ? "" : `${(100 * f).toFixed(0)}% `;
    const plain = `${this.#title}: ${pct}${text}`;
    if (plain === this.#last) return;
    this.#last = plain;
    if (!inNotebook()) {
      console.log(plain);
      return;
    }
    const bar = f === null
      ? `<progress style="width:20em"></progress>`
      : `<progress style="width:20em" value="${f.toFixed(4)}" max="1"></progress>`;
    const html = `<div style="font-family:monospace"><b>${escapeHtml(this.#title)}</b> ${bar} ` +
      `${escapeHtml(pct + text)}</div>`;
    await showBundle({ "text/html": html, "text/plain": plain }, {
      displayId: this.#id,
      update: this.#shown,
    });
    this.#shown = true;
  }
}

/** Options of {@linkcode watchRun}. */
export interface WatchRunOptions {
  /** The run folder. */
  dir: string;
  /** Stage sub-folders with a `log.jsonl`, in order, and their length in kimg. */
  stages: { name: string; kimg: number }[];
  /** Where to show it. */
  progress: ProgressDisplay;
  /** Poll interval (default 500 ms). */
  intervalMs?: number;
}

/** A running {@linkcode watchRun}. */
export interface RunWatcher {
  /** Polls once more, then stops. */
  stop(): Promise<void>;
}

const fmt = (v: unknown) => typeof v === "number" && Number.isFinite(v) ? v.toPrecision(4) : "–";

/**
 * Follows a run folder while it trains: every `intervalMs`, the newest `log.jsonl` record of the
 * latest stage that has one becomes the progress text (stage, kimg of the stage's length, losses,
 * seconds per kimg). Timers run whenever the training loop awaits, which it does every iteration.
 */
export function watchRun(options: WatchRunOptions): RunWatcher {
  const { dir, stages, progress } = options;
  const total = stages.reduce((s, x) => s + x.kimg, 0);
  const t0 = performance.now();
  let busy: Promise<void> = Promise.resolve();
  const poll = async () => {
    let done = 0;
    let text = "";
    for (const stage of stages) {
      const records = await readLogRecords(join(dir, stage.name, "log.jsonl"));
      const r = records.at(-1);
      if (!r) break;
      const kimg = typeof r.kimg === "number" ? Math.min(r.kimg, stage.kimg) : 0;
      text = `${stage.name} kimg ${kimg.toFixed(3)}/${stage.kimg} | fake ${fmt(r.lossFake)} ` +
        `G ${fmt(r.lossG)}` +
        (r.lossD === null || r.lossD === undefined ? "" : ` D ${fmt(r.lossD)}`) +
        (r.lossGGan === null || r.lossGGan === undefined ? "" : ` G_gan ${fmt(r.lossGGan)}`) +
        ` | ${fmt(r.secPerKimg)} s/kimg`;
      done += kimg;
      if (kimg < stage.kimg) break;
    }
    const elapsed = ((performance.now() - t0) / 1000).toFixed(0);
    await progress.update(
      total > 0 ? done / total : null,
      `${text || "starting"} | ${elapsed} s`,
    );
  };
  const timer = setInterval(() => {
    busy = busy.then(poll).catch(() => {});
  }, options.intervalMs ?? 500);
  return {
    async stop() {
      clearInterval(timer);
      await busy;
      await poll().catch(() => {});
    },
  };
}

/** The kernel's stop button (SIGINT) as an `AbortSignal`; see {@linkcode stopButton}. */
export interface StopButton {
  /** Aborted by the first SIGINT. */
  readonly signal: AbortSignal;
  /** Removes the SIGINT listener (call when the work is done). */
  dispose(): void;
}

/**
 * Turns the kernel's stop button into an `AbortSignal` while long work runs: Jupyter interrupts a
 * kernel with SIGINT, which ends Deno's kernel (losing every variable) unless a listener is
 * registered. With this listener the first SIGINT aborts the signal (a training run then finishes
 * its iteration and writes a training state, so executing the cell again resumes) and the
 * kernel stays alive. Dispose it when the work ends: SIGINT between cells still ends the kernel.
 */
export function stopButton(
  message = "stop requested: finishing this iteration, saving a state",
): StopButton {
  const controller = new AbortController();
  const onSigint = () => {
    if (controller.signal.aborted) return;
    console.log(message);
    controller.abort();
  };
  let listening = false;
  try {
    Deno.addSignalListener("SIGINT", onSigint);
    listening = true;
  } catch {
    // no signals on this platform: the signal is never aborted
  }
  return {
    signal: controller.signal,
    dispose() {
      if (listening) Deno.removeSignalListener("SIGINT", onSigint);
      listening = false;
    },
  };
}
