/**
 * Plots of a distillation chain: loss curves from each stage's `log.jsonl`, and FID against
 * images seen. Charts are drawn by Observable Plot into a linkedom document (SVG), then rendered
 * to PNG with resvg. resvg is a native addon: when it cannot load, the SVG is written instead and
 * the reason is returned once (the caller prints it).
 *
 * The plotting packages are imported lazily (`lib/deps.ts`), so only the users of this module
 * pay for them.
 *
 * @example
 * ```ts
 * import { writeChainPlots } from "./plots.ts";
 * const { files, note } = await writeChainPlots("runs/distill/plots", {
 *   losses: [{ stage: "sid", offsetKimg: 0, records: [{ kimg: 0.064, lossFake: 0.5, lossG: 1 }] }],
 *   fid: [{ stage: "sid", kimg: 0.064, fid: 120 }],
 * });
 * ```
 *
 * @module
 */
import { join } from "node:path";
import { importLinkedom, importPlot, importResvg } from "../deps.ts";
import { writeFileAtomic } from "../io/atomic.ts";

/** The loss series drawn, in panel order (those without a finite value are left out). */
export const LOSS_KEYS = ["lossFake", "lossG", "lossD", "lossGGan"] as const;

/** Panel titles of {@linkcode LOSS_KEYS}. */
const LOSS_TITLES: Record<string, string> = {
  lossFake: "fake-score loss",
  lossG: "SiD generator loss",
  lossD: "discriminator loss (SiDA)",
  lossGGan: "adversarial generator loss (SiDA)",
};

/** One stage's tick log: `log.jsonl` records (at least `kimg` and the losses). */
export interface StageLossLog {
  /** The stage's name (`sid`, `sida`). */
  stage: string;
  /** Images seen before the stage (kimg), added to every record's `kimg`. */
  offsetKimg: number;
  /** The `log.jsonl` records. */
  records: Record<string, unknown>[];
}

/** One FID measurement. */
export interface FidPoint {
  /** The stage that made the generator. */
  stage: string;
  /** Images seen by the generator, counted over the whole chain (kimg). */
  kimg: number;
  /** The FID. */
  fid: number;
  /**
   * A line's starting point borrowed from the previous stage (SiD²A starts from the SiD
   * generator): drawn as part of the line only, without its own dot and label.
   */
  link?: boolean;
}

/** What {@linkcode writeChainPlots} draws. */
export interface ChainPlotInput {
  /** Loss logs of the distillation stages. */
  losses: StageLossLog[];
  /** FID of each evaluated generator. */
  fid: FidPoint[];
  /** A reference FID drawn as a horizontal line (the teacher's), with its label. */
  reference?: { fid: number; label: string };
}

/** What {@linkcode writeChainPlots} wrote. */
export interface ChainPlotFiles {
  /** Paths of the files written (PNG, or SVG when resvg cannot load). */
  files: string[];
  /** Why the plots are SVG only (resvg could not load), or undefined. */
  note?: string;
}

const WIDTH = 720;
const PANEL_HEIGHT = 200;
const COLORS = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#a463f2"];

let plotLibs:
  | Promise<
    {
      Plot: PlotModule;
      parseHTML: (html: string) => unknown;
    }
  >
  | undefined;

type PlotModule = Awaited<ReturnType<typeof importPlot>>;
/** The `document` option of `Plot.plot` (a DOM document; linkedom's here). */
type PlotDocument = NonNullable<Parameters<PlotModule["plot"]>[0]>["document"];

/** A fresh linkedom document for Observable Plot to draw into. */
function newDocument(parseHTML: (html: string) => unknown): PlotDocument {
  const win = parseHTML("<!DOCTYPE html><html><body></body></html>") as { document: unknown };
  return win.document as PlotDocument;
}

function libs() {
  plotLibs ??= Promise.all([importPlot(), importLinkedom()]).then(([Plot, linkedom]) => ({
    Plot,
    parseHTML: linkedom.parseHTML as (html: string) => unknown,
  }));
  return plotLibs;
}

function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

/** A minimal element interface (linkedom's elements). */
interface SvgElement {
  setAttribute(name: string, value: string): void;
  getAttribute(name: string): string | null;
  outerHTML: string;
  tagName: string;
}

/**
 * Stacks SVG panels (each a complete `<svg>` from Observable Plot) vertically under a title into
 * one standalone SVG document (with `xmlns`).
 */
function stackPanels(title: string, panels: { svg: SvgElement; height: number }[]): string {
  const titleHeight = 28;
  const height = titleHeight + panels.reduce((s, p) => s + p.height, 0);
  let y = titleHeight;
  const parts = panels.map((p) => {
    p.svg.setAttribute("x", "0");
    p.svg.setAttribute("y", String(y));
    y += p.height;
    return p.svg.outerHTML;
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" ` +
    `viewBox="0 0 ${WIDTH} ${height}" font-family="DejaVu Sans, sans-serif">` +
    `<rect width="100%" height="100%" fill="white"/>` +
    `<text x="${WIDTH / 2}" y="19" text-anchor="middle" font-size="15" font-weight="bold">${
      escapeXml(title)
    }</text>` +
    parts.join("") + `</svg>`;
}

function colorDomain(stages: string[]): { domain: string[]; range: string[] } {
  const domain = [...new Set(stages)];
  return { domain, range: domain.map((_, i) => COLORS[i % COLORS.length]) };
}

/**
 * The loss curves as one SVG: a panel per loss ({@linkcode LOSS_KEYS}) that has finite values,
 * x = images seen over the whole chain (kimg), one line per stage, labelled at its end.
 * Returns null when no record has a finite loss.
 */
export async function lossPlotSvg(logs: StageLossLog[]): Promise<string | null> {
  const { Plot, parseHTML } = await libs();
  const document = newDocument(parseHTML);
  const color = colorDomain(logs.map((l) => l.stage));
  const xs = logs.flatMap((l) =>
    l.records.map((r) => l.offsetKimg + (r.kimg as number)).filter(Number.isFinite)
  );
  const xDomain = xs.length ? [Math.min(...xs), Math.max(...xs)] : undefined;
  const panels: { svg: SvgElement; height: number }[] = [];
  for (const key of LOSS_KEYS) {
    const rows: { stage: string; kimg: number; value: number }[] = [];
    for (const log of logs) {
      for (const r of log.records) {
        const v = r[key];
        const k = r.kimg;
        if (typeof v === "number" && Number.isFinite(v) && typeof k === "number") {
          rows.push({ stage: log.stage, kimg: log.offsetKimg + k, value: v });
        }
      }
    }
    if (!rows.length) continue;
    const svg = Plot.plot({
      document,
      width: WIDTH,
      height: PANEL_HEIGHT,
      marginLeft: 60,
      marginRight: 50,
      style: { background: "white", fontSize: "11px" },
      x: { label: "images seen (kimg)", grid: true, domain: xDomain },
      y: { label: LOSS_TITLES[key] ?? key, grid: true },
      color: { ...color },
      marks: [
        Plot.frame({ stroke: "#ccc" }),
        Plot.line(rows, { x: "kimg", y: "value", stroke: "stage", z: "stage" }),
        Plot.dot(rows, { x: "kimg", y: "value", fill: "stage", r: rows.length > 60 ? 0 : 2 }),
        Plot.text(
          rows,
          Plot.selectLast({
            x: "kimg",
            y: "value",
            z: "stage",
            text: "stage",
            fill: "stage",
            dx: 5,
            textAnchor: "start",
          }),
        ),
      ],
    }) as unknown as SvgElement;
    panels.push({ svg, height: PANEL_HEIGHT });
  }
  if (!panels.length) return null;
  return stackPanels("Losses per tick (log.jsonl)", panels);
}

/**
 * FID against images seen as one SVG: a dot per evaluated generator, a line per stage, and the
 * optional reference FID as a dashed horizontal line. The y axis is logarithmic when the values
 * span more than a factor 20. Returns null when there is no finite FID.
 */
export async function fidPlotSvg(
  points: FidPoint[],
  reference?: { fid: number; label: string },
): Promise<string | null> {
  const rows = points.filter((p) => Number.isFinite(p.fid) && Number.isFinite(p.kimg));
  if (!rows.length) return null;
  const { Plot, parseHTML } = await libs();
  const document = newDocument(parseHTML);
  const values = rows.map((r) => r.fid);
  const ref = reference && Number.isFinite(reference.fid) ? reference : undefined;
  if (ref) values.push(ref.fid);
  const positive = values.every((v) => v > 0);
  const log = positive && Math.max(...values) / Math.min(...values) > 20;
  const height = 320;
  const own = rows.filter((r) => !r.link);
  const marks = [
    Plot.frame({ stroke: "#ccc" }),
    Plot.line(rows, { x: "kimg", y: "fid", stroke: "stage", z: "stage" }),
    Plot.dot(own, { x: "kimg", y: "fid", fill: "stage", r: 3.5 }),
    Plot.text(own, {
      x: "kimg",
      y: "fid",
      text: (d: FidPoint) => d.fid.toFixed(2),
      dy: -9,
      fill: "#333",
    }),
    Plot.text(
      rows,
      Plot.selectLast({
        x: "kimg",
        y: "fid",
        z: "stage",
        text: "stage",
        fill: "stage",
        dx: 7,
        textAnchor: "start",
      }),
    ),
  ];
  if (ref) {
    marks.push(
      Plot.ruleY([ref.fid], { stroke: "#888", strokeDasharray: "4,3" }),
      Plot.text([ref], {
        x: () => Math.min(...rows.map((r) => r.kimg)),
        y: "fid",
        text: "label",
        dy: -7,
        textAnchor: "start",
        fill: "#555",
      }),
    );
  }
  const svg = Plot.plot({
    document,
    width: WIDTH,
    height,
    marginLeft: 60,
    marginRight: 50,
    marginTop: 30,
    style: { background: "white", fontSize: "11px" },
    x: { label: "images seen (kimg)", grid: true, insetLeft: 20, insetRight: 20 },
    y: { label: "FID", grid: true, type: log ? "log" : "linear", nice: true },
    color: colorDomain(rows.map((r) => r.stage)),
    marks,
  }) as unknown as SvgElement;
  return stackPanels("FID vs images seen (one-step generators)", [{ svg, height }]);
}

type ResvgModule = Awaited<ReturnType<typeof importResvg>>;
let resvg: Promise<ResvgModule | string> | undefined;

/** resvg, or the reason it cannot load (cached). */
function loadResvg(): Promise<ResvgModule | string> {
  resvg ??= importResvg().then(
    (m) => m,
    (e) => `resvg could not load (${String((e as Error)?.message ?? e).split("\n")[0]})`,
  );
  return resvg;
}

/**
 * Renders an SVG document to PNG (scaled by `zoom`, white background, system fonts), or returns
 * the reason when resvg cannot load or fails.
 */
export async function svgToPng(
  svg: string,
  zoom = 2,
): Promise<{ png: Uint8Array } | { error: string }> {
  const mod = await loadResvg();
  if (typeof mod === "string") return { error: mod };
  try {
    const r = new mod.Resvg(svg, {
      background: "white",
      fitTo: { mode: "zoom", value: zoom },
      font: { loadSystemFonts: true, defaultFontFamily: "DejaVu Sans" },
    });
    return { png: new Uint8Array(r.render().asPng()) };
  } catch (e) {
    return { error: `resvg failed (${String((e as Error)?.message ?? e).split("\n")[0]})` };
  }
}

/**
 * Writes `losses.png` and `fid.png` into `dir` (atomically), or `losses.svg` and `fid.svg` when
 * resvg cannot render; the SVG sources are written next to the PNGs too. Plots without data are
 * skipped. Returns the files written (PNG or SVG, one per plot) and, for SVG-only output, why.
 */
export async function writeChainPlots(dir: string, input: ChainPlotInput): Promise<ChainPlotFiles> {
  const out: ChainPlotFiles = { files: [] };
  const svgs: [string, string | null][] = [
    ["losses", await lossPlotSvg(input.losses)],
    ["fid", await fidPlotSvg(input.fid, input.reference)],
  ];
  const enc = new TextEncoder();
  for (const [name, svg] of svgs) {
    if (svg === null) continue;
    const svgPath = join(dir, `${name}.svg`);
    await writeFileAtomic(svgPath, enc.encode(svg));
    const r = await svgToPng(svg);
    if ("png" in r) {
      const pngPath = join(dir, `${name}.png`);
      await writeFileAtomic(pngPath, r.png);
      out.files.push(pngPath);
    } else {
      out.note ??= `${r.error}: plots written as SVG only`;
      out.files.push(svgPath);
    }
  }
  return out;
}
