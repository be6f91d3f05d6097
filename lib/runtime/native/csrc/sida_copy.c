/*
 * sida's data-movement and reduction kernels for the `native` tfjs backend, compiled into the
 * same library as sida_kernels.c and bound by lib/runtime/native/copy_kernels.ts, which checks
 * every array length before a call.
 *
 * The copies move 4-byte elements (float32 or int32) and are exact. The sum over the middle axis
 * of an [A, R, B] view accumulates each output in double, over r = 0, 1, …, R − 1 from 0.0, and
 * rounds once to float: the same operations in the same order as tfjs-backend-cpu's Sum, so the
 * results are bit-identical.
 *
 * Threads: work of COPY_PAR_MIN elements or more is split into equal ranges of independent units
 * (rows, tiles, output blocks), one per OpenMP thread. Smaller work runs on the calling thread
 * without entering a parallel region at all: libgomp's `#pragma omp parallel if (0)` still costs
 * about 1.6 µs a call here, a hundred times a small copy.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define COPY_PAR_MIN 65536 /* elements below which one thread does the work */
#define COPY_MAX_DIMS 16   /* most dimensions sida_gather takes */
#define COPY_BLOCK 16      /* tile edge of the blocked transpose */
#define COPY_CHUNK 32768   /* elements per piece of a long row */
#define SUM_CHUNK 512      /* output columns accumulated at once */

typedef uint32_t elem_t; /* any 4-byte element */

/* Runs f(ctx, r0, r1) over [0, units): split among the threads when `work` is large. */
typedef void (*range_fn)(const void *ctx, int64_t r0, int64_t r1);

static void run_units(range_fn f, const void *ctx, int64_t units, int64_t work) {
  if (units <= 0) return;
#ifdef _OPENMP
  if (work >= COPY_PAR_MIN && units > 1 && omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t r0 = units * t / nt, r1 = units * (t + 1) / nt;
      if (r0 < r1) f(ctx, r0, r1);
    }
    return;
  }
#else
  (void)work;
#endif
  f(ctx, 0, units);
}

/* dst[i] = src[i·s] for i < n. */
static inline void copy_run(elem_t *restrict dst, const elem_t *restrict src, int64_t n, int64_t s) {
  if (s == 1) {
    if (n >= 16) memcpy(dst, src, (size_t)n * sizeof(elem_t));
    else for (int64_t i = 0; i < n; i++) dst[i] = src[i];
  } else if (s == 0) {
    const elem_t v = src[0];
    for (int64_t i = 0; i < n; i++) dst[i] = v;
  } else {
    for (int64_t i = 0; i < n; i++) dst[i] = src[i * s];
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Strided gather: slice, transpose, tile.                                                     */

struct gather_ctx {
  elem_t *dst;
  const elem_t *src;
  int k;                      /* simplified dimensions */
  int64_t sz[COPY_MAX_DIMS];  /* their sizes */
  int64_t st[COPY_MAX_DIMS];  /* their source strides */
  int64_t ds[COPY_MAX_DIMS];  /* their destination strides */
  int64_t n, s;               /* innermost size and source stride */
  int J;                      /* blocked transpose: the unit-stride dimension */
  int64_t nb;                 /* blocked transpose: blocks along J */
  int64_t nch;                /* long rows: chunks per row */
};

/* Source and destination offsets of outer index q over dimensions [0, k−1) except `skip`. */
static inline void outer_offsets(const struct gather_ctx *g, int64_t q, int skip, int64_t *so,
                                 int64_t *dof) {
  int64_t a = 0, b = 0;
  for (int d = g->k - 2; d >= 0; d--) {
    if (d == skip) continue;
    const int64_t i = q % g->sz[d];
    q /= g->sz[d];
    a += i * g->st[d];
    b += i * g->ds[d];
  }
  *so = a;
  *dof = b;
}

/* Units: (outer index, block of COPY_BLOCK along J); tiles of COPY_BLOCK × COPY_BLOCK. */
static void gather_blocked(const void *ctx, int64_t r0, int64_t r1) {
  const struct gather_ctx *g = ctx;
  const int64_t nJ = g->sz[g->J], dJ = g->ds[g->J], n = g->n, s = g->s;
  for (int64_t u = r0; u < r1; u++) {
    const int64_t j0 = (u % g->nb) * COPY_BLOCK;
    const int64_t j1 = j0 + COPY_BLOCK < nJ ? j0 + COPY_BLOCK : nJ;
    int64_t so, dof;
    outer_offsets(g, u / g->nb, g->J, &so, &dof);
    for (int64_t l0 = 0; l0 < n; l0 += COPY_BLOCK) {
      const int64_t l1 = l0 + COPY_BLOCK < n ? l0 + COPY_BLOCK : n;
      for (int64_t j = j0; j < j1; j++) {
        elem_t *restrict dr = g->dst + dof + j * dJ;
        const elem_t *restrict sr = g->src + so + j;
        for (int64_t l = l0; l < l1; l++) dr[l] = sr[l * s];
      }
    }
  }
}

/* Units: (row, chunk of COPY_CHUNK). */
static void gather_chunks(const void *ctx, int64_t r0, int64_t r1) {
  const struct gather_ctx *g = ctx;
  for (int64_t u = r0; u < r1; u++) {
    const int64_t row = u / g->nch, j0 = (u % g->nch) * COPY_CHUNK;
    const int64_t m = g->n - j0 < COPY_CHUNK ? g->n - j0 : COPY_CHUNK;
    int64_t so, dof;
    outer_offsets(g, row, -1, &so, &dof);
    copy_run(g->dst + row * g->n + j0, g->src + so + j0 * g->s, m, g->s);
  }
}

/* Units: rows, walked with an odometer from the range's first row. */
static void gather_rows(const void *ctx, int64_t r0, int64_t r1) {
  const struct gather_ctx *g = ctx;
  const int k = g->k;
  const int64_t n = g->n, s = g->s;
  int64_t idx[COPY_MAX_DIMS];
  int64_t off = 0, q = r0;
  for (int d = k - 2; d >= 0; d--) {
    idx[d] = q % g->sz[d];
    q /= g->sz[d];
    off += idx[d] * g->st[d];
  }
  for (int64_t r = r0; r < r1; r++) {
    copy_run(g->dst + r * n, g->src + off, n, s);
    for (int d = k - 2; d >= 0; d--) {
      off += g->st[d];
      if (++idx[d] < g->sz[d]) break;
      off -= g->st[d] * g->sz[d];
      idx[d] = 0;
    }
  }
}

/*
 * dst (contiguous, row-major over `sizes`) = src[offset + Σ_d i_d · strides[d]]: a slice (input
 * strides), a transpose (permuted input strides), a tile (dimensions doubled into repeat and
 * extent, repeats with stride 0) or any other strided view. `rank` ≤ COPY_MAX_DIMS; strides ≥ 0.
 */
void sida_gather(elem_t *dst, const elem_t *src, int rank, const int64_t *sizes,
                 const int64_t *strides, int64_t offset) {
  if (rank < 0 || rank > COPY_MAX_DIMS) return;
  int64_t total = 1;
  for (int d = 0; d < rank; d++) total *= sizes[d];
  if (total <= 0) return;
  struct gather_ctx g;
  g.dst = dst;
  g.src = src + offset;
  /* Drop dimensions of size 1; merge a dimension into the one before it when the pair is one
     run in the source too (outer stride = inner stride · inner size; stride-0 pairs merge). */
  int k = 0;
  for (int d = 0; d < rank; d++) {
    if (sizes[d] == 1) continue;
    if (k > 0 && g.st[k - 1] == strides[d] * sizes[d]) {
      g.sz[k - 1] *= sizes[d];
      g.st[k - 1] = strides[d];
    } else {
      g.sz[k] = sizes[d];
      g.st[k] = strides[d];
      k++;
    }
  }
  g.k = k;
  if (k == 0) {
    dst[0] = g.src[0];
    return;
  }
  int64_t acc = 1;
  for (int d = k - 1; d >= 0; d--) {
    g.ds[d] = acc;
    acc *= g.sz[d];
  }
  g.n = g.sz[k - 1];
  g.s = g.st[k - 1];
  const int64_t rows = total / g.n;

  /* A strided innermost run with a unit-stride dimension further out: blocked transpose. */
  g.J = -1;
  if (g.s > 1 && g.n >= 4) {
    for (int d = k - 2; d >= 0; d--) {
      if (g.st[d] == 1) {
        if (g.sz[d] >= 4) g.J = d;
        break;
      }
    }
  }
  if (g.J >= 0) {
    g.nb = (g.sz[g.J] + COPY_BLOCK - 1) / COPY_BLOCK;
    run_units(gather_blocked, &g, rows / g.sz[g.J] * g.nb, total);
  } else if (g.n >= 2 * COPY_CHUNK && g.s != 1) {
    /* (Long contiguous rows stay whole: one memcpy of an array in cache beats two threads.) */
    g.nch = (g.n + COPY_CHUNK - 1) / COPY_CHUNK;
    run_units(gather_chunks, &g, rows * g.nch, total);
  } else {
    run_units(gather_rows, &g, rows, total);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Concatenation and splitting along the second axis of [outer, inner_p] parts.                */

#define PART(ptrs, p) ((elem_t *)(uintptr_t)(ptrs)[p])

struct parts_ctx {
  elem_t *whole;
  int n;
  const int64_t *inner;
  const uint64_t *parts;
  int64_t row;
  int ones; /* every inner_p is 1 */
};

static void concat_range(const void *ctx, int64_t r0, int64_t r1) {
  const struct parts_ctx *c = ctx;
  const int n = c->n;
  if (c->ones) { /* interleave (Pack along the last axis) */
    for (int64_t o = r0; o < r1; o++) {
      elem_t *restrict d = c->whole + o * n;
      for (int p = 0; p < n; p++) d[p] = PART(c->parts, p)[o];
    }
    return;
  }
  for (int64_t o = r0; o < r1; o++) {
    elem_t *restrict d = c->whole + o * c->row;
    for (int p = 0; p < n; p++) {
      const int64_t m = c->inner[p];
      copy_run(d, PART(c->parts, p) + o * m, m, 1);
      d += m;
    }
  }
}

static void split_range(const void *ctx, int64_t r0, int64_t r1) {
  const struct parts_ctx *c = ctx;
  const int n = c->n;
  if (c->ones) { /* de-interleave (Unpack along the last axis) */
    for (int64_t o = r0; o < r1; o++) {
      const elem_t *restrict s = c->whole + o * n;
      for (int p = 0; p < n; p++) PART(c->parts, p)[o] = s[p];
    }
    return;
  }
  for (int64_t o = r0; o < r1; o++) {
    const elem_t *restrict s = c->whole + o * c->row;
    for (int p = 0; p < n; p++) {
      const int64_t m = c->inner[p];
      copy_run(PART(c->parts, p) + o * m, s, m, 1);
      s += m;
    }
  }
}

static void parts_run(range_fn f, elem_t *whole, int64_t outer, int n, const int64_t *inner,
                      const uint64_t *parts) {
  struct parts_ctx c = {whole, n, inner, parts, 0, 1};
  for (int p = 0; p < n; p++) {
    c.row += inner[p];
    c.ones &= inner[p] == 1;
  }
  if (outer <= 0 || c.row <= 0) return;
  run_units(f, &c, outer, outer * c.row);
}

/*
 * dst (as [outer, Σ inner_p]) row o = part 0's row o, part 1's row o, … of the parts
 * [outer, inner_p] at the addresses `srcs`: Concat on any axis, and Pack.
 */
void sida_concat(elem_t *dst, int64_t outer, int n, const int64_t *inner, const uint64_t *srcs) {
  parts_run(concat_range, dst, outer, n, inner, srcs);
}

/* The inverse of sida_concat, src (as [outer, Σ inner_p]) into the parts at `dsts`: SplitV and
   Unpack. */
void sida_split(const elem_t *src, int64_t outer, int n, const int64_t *inner,
                const uint64_t *dsts) {
  parts_run(split_range, (elem_t *)src, outer, n, inner, dsts);
}

/* ------------------------------------------------------------------------------------------ */
/* Sum over the middle axis of [A, R, B].                                                      */

struct sum_ctx {
  float *y;
  const float *x;
  int64_t A, R, B, nc;
};

/* B = 1. Units: blocks of 8 rows of R, summed together for independent dependency chains. */
static void sum_rows(const void *ctx, int64_t r0, int64_t r1) {
  const struct sum_ctx *c = ctx;
  const int64_t A = c->A, R = c->R;
  for (int64_t blk = r0; blk < r1; blk++) {
    const int64_t a0 = blk * 8;
    const float *restrict p = c->x + a0 * R;
    if (a0 + 8 <= A) {
      double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t r = 0; r < R; r++) {
        for (int i = 0; i < 8; i++) s[i] += p[i * R + r];
      }
      for (int i = 0; i < 8; i++) c->y[a0 + i] = (float)s[i];
    } else {
      for (int64_t a = a0; a < A; a++, p += R) {
        double s = 0;
        for (int64_t r = 0; r < R; r++) s += p[r];
        c->y[a] = (float)s;
      }
    }
  }
}

/* B > 1. Units: (a, block of SUM_CHUNK columns), each accumulated over r in a double row. */
static void sum_columns(const void *ctx, int64_t r0, int64_t r1) {
  const struct sum_ctx *c = ctx;
  const int64_t R = c->R, B = c->B;
  double acc[SUM_CHUNK];
  for (int64_t u = r0; u < r1; u++) {
    const int64_t a = u / c->nc, b0 = (u % c->nc) * SUM_CHUNK;
    const int64_t m = B - b0 < SUM_CHUNK ? B - b0 : SUM_CHUNK;
    for (int64_t b = 0; b < m; b++) acc[b] = 0;
    const float *restrict p = c->x + a * R * B + b0;
    for (int64_t r = 0; r < R; r++, p += B) {
      for (int64_t b = 0; b < m; b++) acc[b] += p[b];
    }
    float *restrict yo = c->y + a * B + b0;
    for (int64_t b = 0; b < m; b++) yo[b] = (float)acc[b];
  }
}

/*
 * y[a, b] = Σ_r x[a, r, b] of x viewed as [A, R, B]: each sum in double from 0.0 over r in
 * order, rounded once to float (tfjs-backend-cpu's arithmetic and order).
 */
void sida_sum_arb(float *y, const float *x, int64_t A, int64_t R, int64_t B) {
  if (A <= 0 || B <= 0) return;
  struct sum_ctx c = {y, x, A, R, B, (B + SUM_CHUNK - 1) / SUM_CHUNK};
  const int64_t work = A * (R > 0 ? R : 1) * B;
  if (B == 1) run_units(sum_rows, &c, (A + 7) / 8, work);
  else run_units(sum_columns, &c, A * c.nc, work);
}
