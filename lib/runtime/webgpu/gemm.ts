/**
 * A tiled matrix-product shader generator, the core of our convolutions on WebGPU
 * (implicit GEMM: the im2col matrix is never written, each tile gathers its elements straight
 * from the NHWC tensors).
 *
 *   C[m, n] = Σ_k A(m, k) · B(k, n),   m < M, n < N, k < K
 *
 * Tiling (the classic shared-memory scheme, e.g. Volkov & Demmel 2008, "Benchmarking GPUs to
 * tune dense linear algebra"; tfjs-backend-webgpu's `matmul_packed_webgpu.ts` uses the same
 * idea): a workgroup owns a TM×TN tile of C, with one thread per 4×4 or 8×8 block of it (`microTile`). For each step
 * of TK along k, the workgroup's threads copy a TM×TK tile of A and a TK×TN tile of B into
 * workgroup memory (each element loaded from global memory once per workgroup instead of once
 * per thread), synchronise, and every thread accumulates its 4×4 block from them (RM·RN fused
 * multiply-adds per RM + RN shared-memory reads).
 *
 * Split-K: when `kChunk < K`, the dispatch's z axis splits the k range into chunks; workgroup z
 * sums k in [z·kChunk, (z+1)·kChunk) and writes its partial tile to `result[z·M·N + m·N + n]`; a
 * second program ({@linkcode splitKReduceProgram}) sums the chunks. That turns a product with a
 * small C and a huge K (the filter gradient: C is the filter, K runs over every output pixel of
 * the batch) into enough workgroups to fill a GPU, where one thread per filter element looping
 * over the whole batch (tfjs' `Conv2DDerFilterProgram`) leaves most of it idle.
 *
 * @module
 */
import { flatProgram, type GpuProgram, sizeOf } from "./program.ts";

/** How one operand is gathered, as WGSL. */
export interface Operand {
  /**
   * WGSL body of `fn(m_or_k: i32, k_or_n: i32) -> f32` returning the element, or 0 outside the
   * operand (the generator only asks for indices < M, N and K; padding is the gatherer's job).
   * Parameters are named `r` (row: m for A, k for B) and `c` (column: k for A, n for B).
   */
  load: string;
  /**
   * True when consecutive columns are adjacent in memory (A: k-contiguous; B: n-contiguous);
   * false when consecutive rows are. Decides which index neighbouring threads walk along, so
   * that their loads hit neighbouring addresses.
   */
  columnsContiguous: boolean;
  /**
   * Optional WGSL body of `fn(r: i32, c: i32) -> vec4<f32>` returning four consecutive elements
   * along the contiguous direction, as one 16-byte load: (r, c..c+3) when `columnsContiguous`,
   * else (r..r+3, c). Used by the `register` style only; the caller supplies it only when the
   * operand's bindings are vec4 arrays (see {@linkcode GemmSpec.components}) and the contiguous
   * extent is a multiple of 4 (for A along k, also K and `kChunk`).
   */
  load4?: string;
}

/** A tiled GEMM (see the module comment). */
export interface GemmSpec {
  /** Unique name of this operand/epilogue combination (part of the shader key). */
  name: string;
  M: number;
  N: number;
  K: number;
  /** Input binding names (the backend declares them as `array<f32>`). */
  variableNames: string[];
  a: Operand;
  b: Operand;
  /** WGSL expression of the stored value given `v` (the sum), `m` and `n`; default `v`. */
  epilogue?: string;
  /** k per split (a multiple of the tile's TK); default K (no split). */
  kChunk?: number;
  /**
   * Independent products of the same shape (a batched matrix product), one per workgroup z; the
   * loaders read the batch index as `bz`, and C of batch b is written at b·M·N. Default 1;
   * cannot be combined with a split of K.
   */
  batch?: number;
  /** Shape of the output tensor; default [splits, M, N] when split, else [batch, M, N]. */
  outputShape?: number[];
  /** Module-scope WGSL for the loaders (helper constants). */
  decls?: string;
  /** Elements per word of each input binding (4 where a `load4` reads it); default all 1. */
  components?: number[];
}

/** Rows of C per workgroup: the smallest of 16, 32, 64 that covers M, at most 64. */
export function tileRows(m: number): number {
  return m <= 16 ? 16 : m <= 32 ? 32 : 64;
}

/** Columns of C per workgroup: the smallest of 4, 16, 32, 64 that covers N, at most 64. */
export function tileCols(n: number): number {
  return n <= 4 ? 4 : n <= 16 ? 16 : n <= 32 ? 32 : 64;
}

/**
 * Tuning knobs of {@linkcode gemmProgram} (read when a program is built; part of its shader
 * key): `tk`, the k depth of a shared-memory step; `micro64`, the thread block of a full 64×64
 * tile (4 or 8).
 */
export const gemmTuning: GemmTuning = {
  style: "tiled",
  tk: 16,
  micro64: 8,
  rm: 16,
  rn: 16,
  vec4: true,
};

/**
 * `style`: `tiled`, workgroup tiles in workgroup memory (for GPUs), or `register`, no workgroup
 * memory and an `rm`×`rn` block of C per invocation loaded straight from the operands (for
 * software adapters: Mesa's llvmpipe runs 8 invocations per SIMD vector and loads every
 * workgroup- or storage-memory value lane by lane, so what pays there is the number of
 * multiply-adds per load, rm·rn / (rm + rn), not sharing through workgroup memory).
 */
export interface GemmTuning {
  style: "tiled" | "register";
  tk: number;
  micro64: number;
  rm: number;
  rn: number;
  /** `register` style: read channel-contiguous operands as vec4 where the shapes allow. */
  vec4: boolean;
}

/** k per step (shared-memory tile depth) of programs built now. */
function tkNow(): number {
  return gemmTuning.tk;
}

/** The batch count of a product (checked against its split). */
function batchOf(spec: GemmSpec, splitCount: number): number {
  const b = spec.batch ?? 1;
  if (!Number.isInteger(b) || b < 1) throw new RangeError(`gemm: bad batch ${b}`);
  if (b > 1 && splitCount > 1) throw new RangeError("gemm: a batched product cannot split K");
  return b;
}

/** Number of k chunks of a split-K product. */
export function splits(spec: Pick<GemmSpec, "K" | "kChunk">): number {
  return spec.kChunk === undefined ? 1 : Math.ceil(spec.K / spec.kChunk);
}

/**
 * Chooses the split-K chunk for a product with a small C and a large K: enough workgroups for
 * the device (`targetWorkgroups`), but at least `minSteps` TK-steps per chunk so that the
 * partial sums stay a small fraction of the traffic.
 */
export function chooseKChunk(
  M: number,
  N: number,
  K: number,
  targetWorkgroups = 256,
  minSteps = 8,
): number {
  if (gemmTuning.style === "register") {
    // Enough invocations for every core's SIMD lanes, each chunk at least 64 k long.
    const [rm, rn] = registerBlock(M, N);
    const blocks = Math.ceil(M / rm) * Math.ceil(N / rn);
    const s = Math.max(1, Math.min(Math.ceil(4096 / blocks), Math.floor(K / 64)));
    return Math.ceil(K / s);
  }
  const tiles = Math.ceil(M / tileRows(M)) * Math.ceil(N / tileCols(N));
  const TK = tkNow();
  const steps = Math.ceil(K / TK);
  const s = Math.max(
    1,
    Math.min(Math.ceil(targetWorkgroups / tiles), Math.floor(steps / minSteps)),
  );
  return Math.ceil(steps / s) * TK;
}

/**
 * Rows × columns of C per thread: 8×8 for the full 64×64 tile (64 threads; 16 shared-memory reads
 * per 64 multiply-adds per k), 4×4 for smaller tiles.
 */
export function microTile(tm: number, tn: number): [number, number] {
  const r = gemmTuning.micro64;
  return tm === 64 && tn === 64 ? [r, r] : [4, 4];
}

/** WGSL shared by both styles: the sizes, the batch index `bz`, and the two loaders. */
function preamble(spec: GemmSpec, kChunk: number, S: number): string {
  return `const G_M = ${spec.M};
const G_N = ${spec.N};
const G_K = ${spec.K};
const G_KCHUNK = ${kChunk};
const G_SPLITS = ${S};
// The batch index of a batched product (workgroup z / splits); loaders may read it.
var<private> bz : i32;
${spec.decls ?? ""}
${loader("A", spec.a)}
${loader("B", spec.b)}`;
}

/** An operand's loader: `loadX4` when it has vec4 loads (its binding is then a vec4 array). */
function loader(name: string, op: Operand): string {
  return op.load4
    ? `fn load${name}4(r : i32, c : i32) -> vec4<f32> {\n${op.load4}\n}`
    : `fn load${name}(r : i32, c : i32) -> f32 {\n${op.load}\n}`;
}

/** The GEMM program of the current {@linkcode gemmTuning} style (see the module comment). */
export function gemmProgram(spec: GemmSpec): GpuProgram {
  return gemmTuning.style === "register" ? registerGemmProgram(spec) : tiledGemmProgram(spec);
}

/**
 * The C block per invocation of {@linkcode registerGemmProgram}: `gemmTuning.rm`×`gemmTuning.rn`
 * (16×16 on llvmpipe: 8–10 GFLOP/s on the batch-64 U-Net convolutions, ~1 s to compile each
 * shader; 16×32 is ~10% faster but takes 2–4 s to compile, 8×16 compiles in 0.6 s and runs ~30%
 * slower; measured with Mesa's shader cache off),
 * shrunk to M rows and to N columns rounded up to 4 for thin products (a 3-channel output).
 */
export function registerBlock(M: number, N: number): [number, number] {
  const { rm, rn } = gemmTuning;
  if (rn % 4 !== 0 || rn < 4 || rm < 1) {
    throw new RangeError(`gemm: bad register block ${rm}x${rn}`);
  }
  return [Math.max(1, Math.min(rm, M)), Math.min(rn, Math.max(4, Math.ceil(N / 4) * 4))];
}

/** Invocations per workgroup of {@linkcode registerGemmProgram}. */
const REGISTER_WORKGROUP = 64;

/**
 * The `register` style of {@linkcode gemmProgram}: each invocation owns an RM×RN block of C
 * (RN a multiple of 4) and, for every k of its chunk, loads RM values of A and RN of B and does
 * RM·RN multiply-adds. Rows and columns past M and N are clamped to the last one for loading and
 * not stored, so the inner loop has no branches.
 *
 * Where an operand has a `load4`, its values come four at a time in one 16-byte load: in Mesa
 * 22.3's llvmpipe a storage load is a loop over the SIMD lanes (gallivm `emit_load_mem`), and a
 * vec4 load shares that loop's per-lane work among its four words (the U-Net convolutions: 1.2–1.6×
 * faster, `deno run -A bench/conv_styles.ts --styles register:16x16,register:16x16s`). A loaded along k (the forward convolution's
 * channels) takes four k per step; A loaded along m (the filter gradient's channels) and B along
 * n take four rows or columns per load.
 */
export function registerGemmProgram(spec: GemmSpec): GpuProgram {
  const { M, N, K } = spec;
  const [RM, RN] = registerBlock(M, N);
  const kChunk = spec.kChunk ?? K;
  const S = splits(spec);
  const B = batchOf(spec, S);
  const outputShape = spec.outputShape ?? (S > 1 ? [S, M, N] : B > 1 ? [B, M, N] : [M, N]);
  const aAlongK = !!spec.a.load4 && spec.a.columnsContiguous;
  const aAlongM = !!spec.a.load4 && !spec.a.columnsContiguous;
  const bAlongN = !!spec.b.load4 && spec.b.columnsContiguous;
  if (spec.b.load4 && !bAlongN) throw new RangeError("gemm: B's vec4 loads must run along n");
  if (aAlongK && (K % 4 !== 0 || kChunk % 4 !== 0)) {
    throw new RangeError(`gemm: vec4 loads of A along k need K and kChunk divisible by 4`);
  }
  if (aAlongM && (M % 4 !== 0 || RM % 4 !== 0)) {
    throw new RangeError(`gemm: vec4 loads of A along m need M and the block divisible by 4`);
  }
  if (bAlongN && N % 4 !== 0) throw new RangeError(`gemm: vec4 loads of B need N % 4 == 0`);
  const tilesM = Math.ceil(M / RM), tilesN = Math.ceil(N / RN);
  const groups = Math.ceil((tilesM * tilesN) / REGISTER_WORKGROUP);
  const dx = Math.min(groups, 32768), dy = Math.ceil(groups / dx);
  const rows = [...Array(RM).keys()], vecs = [...Array(RN / 4).keys()];
  const cols = [...Array(RN).keys()];
  const quads = [0, 1, 2, 3];
  const rowIndex = aAlongM
    ? rows.filter((i) => i % 4 === 0).map((i) => `  let r${i} = min(m0 + ${i}, G_M - 4);`)
    : rows.map((i) => `  let r${i} = min(m0 + ${i}, G_M - 1);`);
  const colIndex = bAlongN
    ? vecs.map((j) => `  let q${4 * j} = min(n0 + ${4 * j}, G_N - 4);`)
    : cols.map((j) => `  let q${j} = min(n0 + ${j}, G_N - 1);`);
  // B's RN values at reduction index `k` (a WGSL expression), as vec4s named b{suffix}_{j}.
  const loadBs = (k: string, suffix: string) =>
    vecs.map((j) =>
      bAlongN
        ? `    let b${suffix}_${j} = loadB4(${k}, q${4 * j});`
        : `    let b${suffix}_${j} = vec4<f32>(${
          quads.map((t) => `loadB(${k}, q${4 * j + t})`).join(", ")
        });`
    ).join("\n");
  // Row i's multiply-adds with a scalar `a` (a WGSL expression) and the B vectors b{suffix}_j.
  const fmas = (i: number, a: string, suffix: string) =>
    vecs.map((j) => `    c${i}_${j} = fma(vec4<f32>(${a}), b${suffix}_${j}, c${i}_${j});`)
      .join("\n");
  let loop: string;
  if (aAlongK) {
    loop = `  for (var k = kBegin; k < kEnd; k = k + 4) {
${rows.map((i) => `    let a${i} = loadA4(r${i}, k);`).join("\n")}
${
      quads.map((t) =>
        `${loadBs(`k + ${t}`, `${t}`)}\n${
          rows.map((i) => fmas(i, `a${i}[${t}]`, `${t}`)).join("\n")
        }`
      ).join("\n")
    }
  }`;
  } else {
    const aPart = aAlongM
      ? rows.filter((i) => i % 4 === 0).map((i) =>
        `    let a${i} = loadA4(r${i}, k);\n` +
        quads.map((s) => fmas(i + s, `a${i}[${s}]`, "")).join("\n")
      )
      : rows.map((i) => `    let a${i} = loadA(r${i}, k);\n${fmas(i, `a${i}`, "")}`);
    loop = `  for (var k = kBegin; k < kEnd; k = k + 1) {
${loadBs("k", "")}
${aPart.join("\n")}
  }`;
  }
  const code = `
${preamble(spec, kChunk, S)}

fn main() {
  _ = uniforms.NAN;
  let g = (i32(workgroupId.y) * ${dx} + i32(workgroupId.x)) * ${REGISTER_WORKGROUP} +
    i32(localIndex);
  let tm = g / ${tilesN};
  let tn = g % ${tilesN};
  if (tm >= ${tilesM}) { return; }
  let m0 = tm * ${RM};
  let n0 = tn * ${RN};
  bz = i32(workgroupId.z) / G_SPLITS;
  let kBegin = (i32(workgroupId.z) % G_SPLITS) * G_KCHUNK;
  let kEnd = min(G_K, kBegin + G_KCHUNK);
${rowIndex.join("\n")}
${colIndex.join("\n")}
${rows.flatMap((i) => vecs.map((j) => `  var c${i}_${j} = vec4<f32>(0.0);`)).join("\n")}
${loop}
  let base = i32(workgroupId.z) * G_M * G_N;
${
    rows.map((i) =>
      `  { let m = m0 + ${i};
    if (m < G_M) {\n` +
      vecs.map((j) =>
        quads.map((t) =>
          `      { let n = n0 + ${4 * j + t}; if (n < G_N) { let v = c${i}_${j}[${t}]; ` +
          `result[base + m * G_N + n] = ${spec.epilogue ?? "v"}; } }`
        ).join("\n")
      ).join("\n") + `\n    } }`
    ).join("\n")
  }
}
`;
  const vec = `${aAlongK ? "ak" : aAlongM ? "am" : "a1"}${bAlongN ? "bn" : "b1"}`;
  return {
    variableNames: spec.variableNames,
    variableComponents: spec.components,
    outputShape,
    shaderKey: `sida_rgemm_${spec.name}_${B}_${M}_${N}_${K}_${kChunk}_${RM}x${RN}_${vec}`,
    dispatchLayout: { x: [], y: [], z: [0] },
    dispatch: [dx, dy, S * B],
    workgroupSize: [REGISTER_WORKGROUP, 1, 1],
    getUserCode: () => code,
  };
}

/** The `tiled` style of {@linkcode gemmProgram} (see the module comment). */
export function tiledGemmProgram(spec: GemmSpec): GpuProgram {
  const { M, N, K } = spec;
  if (spec.a.load4 || spec.b.load4 || spec.components?.some((c) => c !== 1)) {
    throw new RangeError("gemm: vec4 operands are for the register style only");
  }
  const TK = tkNow();
  const TM = tileRows(M), TN = tileCols(N);
  const [RM, RN] = microTile(TM, TN);
  const NTX = TN / RN;
  const threads = (TM / RM) * NTX;
  const kChunk = spec.kChunk ?? K;
  const S = splits(spec);
  // Elements of the A (TM×TK) and B (TK×TN) tiles each thread copies per step.
  const loadsA = (TM * TK) / threads, loadsB = (TK * TN) / threads;
  const B = batchOf(spec, S);
  const outputShape = spec.outputShape ?? (S > 1 ? [S, M, N] : B > 1 ? [B, M, N] : [M, N]);
  // Tile element e → (row, column) so that neighbouring threads read neighbouring addresses.
  const aIndex = spec.a.columnsContiguous
    ? `let mm = e / ${TK}; let kk = e % ${TK};`
    : `let mm = e % ${TM}; let kk = e / ${TM};`;
  const bIndex = spec.b.columnsContiguous
    ? `let kk = e / ${TN}; let nn = e % ${TN};`
    : `let kk = e % ${TK}; let nn = e / ${TK};`;
  // The RM×RN accumulators as separate vec4 variables (unrolled here, so that no private array
  // is indexed at run time: on CPU implementations such arrays live in memory).
  const rows = [...Array(RM).keys()], vecs = [...Array(RN / 4).keys()];
  const accDecl = rows.flatMap((i) => vecs.map((j) => `  var c${i}_${j} = vec4<f32>(0.0);`));
  const inner = [
    ...rows.map((i) => `      let a${i} = vec4<f32>(As[ai + ${i}]);`),
    ...vecs.map((j) =>
      `      let b${j} = vec4<f32>(Bs[bi + ${4 * j}], Bs[bi + ${4 * j + 1}], ` +
      `Bs[bi + ${4 * j + 2}], Bs[bi + ${4 * j + 3}]);`
    ),
    ...rows.flatMap((i) => vecs.map((j) => `      c${i}_${j} = fma(a${i}, b${j}, c${i}_${j});`)),
  ];
  const store = rows.flatMap((i) => [
    `  { let m = m0 + ty * ${RM} + ${i};`,
    `    if (m < G_M) {`,
    ...vecs.map((j) =>
      `      for (var q = 0; q < 4; q = q + 1) {
        let n = n0 + tx * ${RN} + ${4 * j} + q;
        if (n < G_N) { let v = c${i}_${j}[q]; result[base + m * G_N + n] = ${
        spec.epilogue ?? "v"
      }; }
      }`
    ),
    `    } }`,
  ]);
  const code = `
${preamble(spec, kChunk, S)}
// A tile stored k-major (As[kk * TM + mm]) and B tile k-major (Bs[kk * TN + nn]), so that the
// inner loop reads each thread's rows / columns as consecutive words.
var<workgroup> As : array<f32, ${TM * TK}>;
var<workgroup> Bs : array<f32, ${TK * TN}>;

fn main() {
  // A static use of the uniforms, which the backend always binds ('auto' layouts drop unused
  // bindings, and the bind group must match the layout).
  _ = uniforms.NAN;
  let tid = i32(localIndex);
  let tx = tid % ${NTX};
  let ty = tid / ${NTX};
  let m0 = i32(workgroupId.y) * ${TM};
  let n0 = i32(workgroupId.x) * ${TN};
  bz = i32(workgroupId.z) / G_SPLITS;
  let kBegin = (i32(workgroupId.z) % G_SPLITS) * G_KCHUNK;
  let kEnd = min(G_K, kBegin + G_KCHUNK);
${accDecl.join("\n")}
  for (var k0 = kBegin; k0 < kEnd; k0 = k0 + ${TK}) {
    for (var i = 0; i < ${loadsA}; i = i + 1) {
      let e = tid + i * ${threads};
      ${aIndex}
      let m = m0 + mm;
      let k = k0 + kk;
      var v = 0.0;
      if (m < G_M && k < kEnd) { v = loadA(m, k); }
      As[kk * ${TM} + mm] = v;
    }
    for (var i = 0; i < ${loadsB}; i = i + 1) {
      let e = tid + i * ${threads};
      ${bIndex}
      let n = n0 + nn;
      let k = k0 + kk;
      var v = 0.0;
      if (n < G_N && k < kEnd) { v = loadB(k, n); }
      Bs[kk * ${TN} + nn] = v;
    }
    workgroupBarrier();
    for (var kk = 0; kk < ${TK}; kk = kk + 1) {
      let ai = kk * ${TM} + ty * ${RM};
      let bi = kk * ${TN} + tx * ${RN};
${inner.join("\n")}
    }
    workgroupBarrier();
  }
  let base = i32(workgroupId.z) * G_M * G_N;
${store.join("\n")}
}
`;
  return {
    variableNames: spec.variableNames,
    outputShape,
    shaderKey: `sida_gemm_${spec.name}_${B}_${M}_${N}_${K}_${kChunk}_${TM}x${TN}x${TK}_${RM}x${RN}`,
    // Not flat: the backend calls main() and our code reads workgroupId/localIndex itself.
    dispatchLayout: { x: [], y: [], z: [0] },
    dispatch: [Math.ceil(N / TN), Math.ceil(M / TM), S * B],
    workgroupSize: [threads, 1, 1],
    getUserCode: () => code,
  };
}

/**
 * Sums the `splits` partial products of a split-K {@linkcode gemmProgram} (input `P`, shape
 * [splits, M·N]) into `outputShape` (M·N elements), plus `epilogue` (WGSL in `v` and `index`).
 */
export function splitKReduceProgram(
  splitCount: number,
  outputShape: number[],
  extraInputs: string[] = [],
  epilogue = "v",
): GpuProgram {
  const size = sizeOf(outputShape);
  return flatProgram(
    `splitk_${splitCount}_${size}_${extraInputs.join("_")}_${epilogue}`,
    ["P", ...extraInputs],
    outputShape,
    `  if (index < uniforms.size) {
    var v = 0.0;
    for (var s = 0; s < ${splitCount}; s = s + 1) { v = v + P[s * ${size} + index]; }
    result[index] = ${epilogue};
  }`,
  );
}
