/*
 * sida's direct NHWC convolution kernels for the `native` tfjs backend, compiled into the same
 * library as sida_kernels.c.
 *
 * Both kernels are "implicit GEMM": no im2col matrix is written. The inner loop keeps a tile of
 * accumulators in vector registers (P rows × NV vectors of VL floats) and streams the operands
 * from cache:
 *
 *   forward  y[p, co]       = Σ_{kh,kw,ci} x[pixel(p) + tap(kh,kw), ci] · w[kh, kw, ci, co]
 *            tile = P output pixels × NV·VL output channels; reduction over taps and ci.
 *   filter   dw[kh,kw,ci,co] = Σ_p x[pixel(p) + tap(kh,kw), ci] · dy[p, co]
 *            tile = P input channels × NV·VL output channels of one tap; reduction over pixels.
 *
 * The input gradient of a stride-1 convolution is a forward convolution with the flipped filter
 * (done by the TypeScript side), so it uses the forward kernel too.
 *
 * The vectors are GCC/Clang vector extensions: 16 floats where AVX-512 is available, else 8, and
 * the compiler lowers them to the machine's instructions. Output channel counts must be a
 * multiple of VL (sida_conv_vl()); the TypeScript side uses im2col + BLAS otherwise.
 *
 * Geometry g[14]: N, H, W, C, Ho, Wo, KH, KW, stride h/w, dilation h/w, top and left padding.
 * Sums are float32 in a fixed order that does not depend on the thread count.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* a·b + c as one fused multiply-add (the compiler's ISO C mode would keep them apart). */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

#if defined(__AVX512F__)
#define VL 16
#define TILE_ROWS_4 6
#define TILE_ROWS_2 12
#define TILE_ROWS_1 16
#else
#define VL 8
#define TILE_ROWS_4 3
#define TILE_ROWS_2 6
#define TILE_ROWS_1 12
#endif

typedef float vf __attribute__((vector_size(VL * 4), aligned(4)));

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE vf vload(const float *p) { return *(const vf *)p; }
ALWAYS_INLINE void vstore(float *p, vf v) { *(vf *)p = v; }
ALWAYS_INLINE vf vbroadcast(float s) { return s - (vf){0}; } /* folds to a broadcast */

int sida_conv_vl(void) { return VL; }

/* This thread's share [*lo, *hi) of n items in an OpenMP parallel region (all of them outside). */
static void thread_range(int64_t n, int64_t *lo, int64_t *hi) {
#ifdef _OPENMP
  const int64_t k = omp_get_num_threads(), id = omp_get_thread_num();
  *lo = n * id / k;
  *hi = n * (id + 1) / k;
#else
  *lo = 0;
  *hi = n;
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Forward.                                                                                    */

typedef struct {
  int64_t N, H, W, C, Ho, Wo, KH, KW, sh, sw, dh, dw, top, left, Co;
} Geom;

static Geom geom(const int64_t *g, int64_t Co) {
  Geom q = {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13], Co};
  return q;
}

/*
 * One tile of the forward convolution: output pixels p0 … p0+P−1 (flattened n, oy, ox; pixels
 * past the end repeat the last one and are not stored), output channels co0 … co0+NV·VL−1.
 */
#define DEFINE_FWD_TILE(P, NV)                                                                    \
static void fwd_tile_##P##_##NV(const Geom *q, float *restrict y,                                 \
                            const float *restrict x, const float *restrict w,                     \
                            const float *restrict bias, const float *restrict zeros, int64_t p0,  \
                            int64_t pend, int64_t co0) {                                          \
  vf acc[P][NV];                                                                                  \
  for (int v = 0; v < NV; v++) {                                                                  \
    const vf b = bias ? vload(bias + co0 + v * VL) : vbroadcast(0.0f);                            \
    for (int i = 0; i < P; i++) acc[i][v] = b;                                                    \
  }                                                                                               \
  int64_t iy0[P], ix0[P], base[P];                                                                \
  for (int i = 0; i < P; i++) {                                                                   \
    const int64_t p = p0 + i < pend ? p0 + i : pend - 1;                                          \
    const int64_t ox = p % q->Wo, oy = (p / q->Wo) % q->Ho, n = p / (q->Wo * q->Ho);              \
    iy0[i] = oy * q->sh - q->top;                                                                 \
    ix0[i] = ox * q->sw - q->left;                                                                \
    base[i] = n * q->H;                                                                           \
  }                                                                                               \
  const int64_t C = q->C, Co = q->Co;                                                             \
  for (int64_t kh = 0; kh < q->KH; kh++) {                                                        \
    for (int64_t kw = 0; kw < q->KW; kw++) {                                                      \
      const float *xs[P];                                                                         \
      for (int i = 0; i < P; i++) {                                                               \
        const int64_t iy = iy0[i] + kh * q->dh, ix = ix0[i] + kw * q->dw;                         \
        xs[i] = (iy >= 0 && iy < q->H && ix >= 0 && ix < q->W)                                    \
                    ? x + ((base[i] + iy) * q->W + ix) * C                                        \
                    : zeros;                                                                      \
      }                                                                                           \
      const float *wt = w + (kh * q->KW + kw) * C * Co + co0;                                     \
      for (int64_t ci = 0; ci < C; ci++) {                                                        \
        vf wv[NV];                                                                                \
        for (int v = 0; v < NV; v++) wv[v] = vload(wt + ci * Co + v * VL);                        \
        for (int i = 0; i < P; i++) {                                                             \
          const vf xb = vbroadcast(xs[i][ci]);                                                    \
          for (int v = 0; v < NV; v++) acc[i][v] += xb * wv[v];                                   \
        }                                                                                         \
      }                                                                                           \
    }                                                                                             \
  }                                                                                               \
  for (int i = 0; i < P && p0 + i < pend; i++) {                                                  \
    for (int v = 0; v < NV; v++) vstore(y + (p0 + i) * Co + co0 + v * VL, acc[i][v]);             \
  }                                                                                               \
}
DEFINE_FWD_TILE(TILE_ROWS_4, 4)
DEFINE_FWD_TILE(TILE_ROWS_2, 2)
DEFINE_FWD_TILE(TILE_ROWS_1, 1)

#define FWD_LOOP(P, NV)                                                                         \
  do {                                                                                          \
    const int64_t pb = (M + (P)-1) / (P), cb = Co / ((NV)*VL);                                  \
    _Pragma("omp parallel for collapse(2) schedule(static) if (M * K * Co >= (1 << 18))")        \
    for (int64_t c = 0; c < cb; c++)                                                            \
      for (int64_t b = 0; b < pb; b++)                                                          \
        fwd_tile_##P##_##NV(&q, y, x, w, bias, zeros, b * (P), M, c * (NV)*VL);                  \
  } while (0)

/*
 * y[N·Ho·Wo, Co] = conv(x[N, H, W, C], w[KH, KW, C, Co]) (+ bias[Co] when `has_bias`).
 * Returns 0, or −1 when Co is not a multiple of VL or memory runs out (nothing written).
 */
int sida_conv_fwd(float *y, const float *x, const float *w, const float *bias, int has_bias,
                  int64_t Co, const int64_t *g) {
  if (Co <= 0 || Co % VL) return -1;
  const Geom q = geom(g, Co);
  const int64_t M = q.N * q.Ho * q.Wo, K = q.KH * q.KW * q.C;
  if (M == 0) return 0;
  float *zeros = calloc(q.C > 0 ? q.C : 1, sizeof(float));
  if (!zeros) return -1;
  if (!has_bias) bias = 0;
  if (Co % (4 * VL) == 0) {
    FWD_LOOP(TILE_ROWS_4, 4);
  } else if (Co % (2 * VL) == 0) {
    FWD_LOOP(TILE_ROWS_2, 2);
  } else {
    FWD_LOOP(TILE_ROWS_1, 1);
  }
  free(zeros);
  return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Filter gradient.                                                                            */

/*
 * The filter gradient walks the output pixels in chunks; each thread takes a contiguous range of
 * tiles and, chunk by chunk, runs all of them, so that the chunk's dy and x rows are read from L2
 * once per tile instead of streaming the whole of dy and x from memory for every tile. A tile's
 * running sums live in dw between chunks, so every dw element is still the sum over pixels in
 * pixel order, whatever the chunk size and thread count. Bytes of dy and x rows per chunk:
 */
#define DW_CHUNK_BYTES (192 * 1024)
/* ... unless all of dy and x fit in this many bytes (then each tile runs over all pixels). */
#define DW_WHOLE_BYTES (2 * 1024 * 1024)

/*
 * acc (tile of dw for tap (kh, kw), input channels ci0 … ci0+P−1 — past C they repeat the last
 * one and are not stored —, output channels co0 …) += Σ over pixels [p0, p1).
 */
#define DEFINE_DW_TILE(P, NV)                                                                     \
static void dw_tile_##P##_##NV(const Geom *q, vf (*acc)[NV],                                      \
                           const float *restrict x, const float *restrict dy, int64_t kh,         \
                           int64_t kw, int64_t ci0, int64_t co0, int64_t p0, int64_t p1) {        \
  const int64_t C = q->C, Co = q->Co;                                                             \
  int64_t cis[P];                                                                                 \
  for (int i = 0; i < P; i++) cis[i] = ci0 + i < C ? ci0 + i : C - 1;                             \
  vf a[P][NV];                                                                                    \
  for (int i = 0; i < P; i++)                                                                     \
    for (int v = 0; v < NV; v++) a[i][v] = acc[i][v];                                             \
  int64_t ox = p0 % q->Wo, oy = (p0 / q->Wo) % q->Ho, n = p0 / (q->Wo * q->Ho);                   \
  for (int64_t p = p0; p < p1; p++) {                                                             \
    const int64_t iy = oy * q->sh - q->top + kh * q->dh, ix = ox * q->sw - q->left + kw * q->dw;  \
    if (iy >= 0 && iy < q->H && ix >= 0 && ix < q->W) {                                           \
      const float *xr = x + ((n * q->H + iy) * q->W + ix) * C;                                    \
      const float *dr = dy + p * Co + co0;                                                        \
      vf d[NV];                                                                                   \
      for (int v = 0; v < NV; v++) d[v] = vload(dr + v * VL);                                     \
      for (int i = 0; i < P; i++) {                                                               \
        const vf xb = vbroadcast(xr[cis[i]]);                                                     \
        for (int v = 0; v < NV; v++) a[i][v] += xb * d[v];                                        \
      }                                                                                           \
    }                                                                                             \
    if (++ox == q->Wo) {                                                                          \
      ox = 0;                                                                                     \
      if (++oy == q->Ho) {                                                                        \
        oy = 0;                                                                                   \
        n++;                                                                                      \
      }                                                                                           \
    }                                                                                             \
  }                                                                                               \
  for (int i = 0; i < P; i++)                                                                     \
    for (int v = 0; v < NV; v++) acc[i][v] = a[i][v];                                             \
}
DEFINE_DW_TILE(TILE_ROWS_4, 4)
DEFINE_DW_TILE(TILE_ROWS_2, 2)
DEFINE_DW_TILE(TILE_ROWS_1, 1)

#define DW_LOOP(P, NV)                                                                          \
  do {                                                                                          \
    const int64_t ib = (q.C + (P)-1) / (P), cb = Co / ((NV)*VL), taps = q.KH * q.KW;            \
    const int64_t tiles = taps * ib * cb;                                                       \
    int64_t chunk = DW_CHUNK_BYTES / ((q.C + Co) * (int64_t)sizeof(float));                     \
    if (chunk < 16) chunk = 16;                                                                 \
    if (M * (q.C + Co) * (int64_t)sizeof(float) <= DW_WHOLE_BYTES) chunk = M;                   \
    _Pragma("omp parallel if (M * K * Co >= (1 << 18) && tiles > 1)")                          \
    {                                                                                           \
      int64_t t0 = 0, t1 = tiles;                                                               \
      thread_range(tiles, &t0, &t1);                                                            \
      for (int64_t p0 = 0; p0 < M; p0 += chunk) {                                               \
        const int64_t p1 = p0 + chunk < M ? p0 + chunk : M;                                     \
        for (int64_t t = t0; t < t1; t++) {                                                     \
          const int64_t c = t % cb, i = (t / cb) % ib, tap = t / (cb * ib);                     \
          const int64_t kh = tap / q.KW, kw = tap % q.KW, ci0 = i * (P), co0 = c * (NV)*VL;      \
          float *out = dw + (tap * q.C + ci0) * Co + co0;                                       \
          vf acc[P][NV];                                                                        \
          for (int r = 0; r < (P); r++)                                                         \
            for (int v = 0; v < (NV); v++)                                                      \
              acc[r][v] = p0 > 0 && ci0 + r < q.C ? vload(out + r * Co + v * VL)                \
                                                  : vbroadcast(0.0f);                           \
          dw_tile_##P##_##NV(&q, acc, x, dy, kh, kw, ci0, co0, p0, p1);                         \
          for (int r = 0; r < (P) && ci0 + r < q.C; r++)                                        \
            for (int v = 0; v < (NV); v++) vstore(out + r * Co + v * VL, acc[r][v]);            \
        }                                                                                       \
      }                                                                                         \
    }                                                                                           \
  } while (0)

/*
 * dw[KH, KW, C, Co] = Σ over output pixels of x[pixel + tap, ci] · dy[pixel, co]. Returns 0, or −1
 * when Co is not a multiple of VL (nothing written).
 */
int sida_conv_dw(float *dw, const float *x, const float *dy, int64_t Co, const int64_t *g) {
  if (Co <= 0 || Co % VL) return -1;
  const Geom q = geom(g, Co);
  const int64_t M = q.N * q.Ho * q.Wo, K = q.KH * q.KW * q.C;
  if (M == 0) {
    memset(dw, 0, (size_t)(K * Co) * sizeof(float));
    return 0;
  }
  if (Co % (4 * VL) == 0) {
    DW_LOOP(TILE_ROWS_4, 4);
  } else if (Co % (2 * VL) == 0) {
    DW_LOOP(TILE_ROWS_2, 2);
  } else {
    DW_LOOP(TILE_ROWS_1, 1);
  }
  return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Batched matrix products.                                                                    */

/*
 * One tile of out[i, j] = Σ_k A[i, k] · B[k, j]: rows i0 … i0+P−1 (past M they repeat the last
 * row and are not stored), columns j0 … j0+NV·VL−1. A[i, k] is at a[i·ra + k·ka] (so either
 * layout of A works); B is row-major [K, N].
 */
#define DEFINE_MM_TILE(P, NV)                                                                      \
  static void mm_tile_##P##_##NV(float *restrict out, const float *restrict a,                    \
                                 const float *restrict b, int64_t M, int64_t N, int64_t K,         \
                                 int64_t ra, int64_t ka, int64_t i0, int64_t j0) {                 \
    vf acc[P][NV];                                                                                 \
    for (int i = 0; i < P; i++)                                                                    \
      for (int v = 0; v < NV; v++) acc[i][v] = vbroadcast(0.0f);                                  \
    const float *as[P];                                                                            \
    for (int i = 0; i < P; i++) as[i] = a + (i0 + i < M ? i0 + i : M - 1) * ra;                    \
    for (int64_t k = 0; k < K; k++) {                                                              \
      vf wv[NV];                                                                                   \
      for (int v = 0; v < NV; v++) wv[v] = vload(b + k * N + j0 + v * VL);                        \
      const int64_t ko = k * ka;                                                                   \
      for (int i = 0; i < P; i++) {                                                                \
        const vf xb = vbroadcast(as[i][ko]);                                                       \
        for (int v = 0; v < NV; v++) acc[i][v] += xb * wv[v];                                      \
      }                                                                                            \
    }                                                                                              \
    for (int i = 0; i < P && i0 + i < M; i++)                                                      \
      for (int v = 0; v < NV; v++) vstore(out + (i0 + i) * N + j0 + v * VL, acc[i][v]);           \
  }

DEFINE_MM_TILE(TILE_ROWS_4, 4)
DEFINE_MM_TILE(TILE_ROWS_2, 2)
DEFINE_MM_TILE(TILE_ROWS_1, 1)

#define MM_LOOP(P, NV)                                                                             \
  do {                                                                                             \
    const int64_t rb = (M + (P)-1) / (P), cb = N / ((NV)*VL);                                      \
    _Pragma("omp parallel for collapse(3) schedule(static) if (batch * M * N * K >= (1 << 18))")   \
    for (int64_t t = 0; t < batch; t++)                                                            \
      for (int64_t c = 0; c < cb; c++)                                                             \
        for (int64_t r = 0; r < rb; r++)                                                           \
          mm_tile_##P##_##NV(out + t * M * N, a + (batch_a > 1 ? t : 0) * M * K,                  \
                             bt + (batch_b > 1 ? t : 0) * K * N, M, N, K, ra, ka, r * (P),          \
                             c * (NV)*VL);                                                         \
  } while (0)

/*
 * out[t] = op(A[t]) · op(B[t]) for t < batch, with op(A) [M, K] and op(B) [K, N]; A is [M, K]
 * (or [K, M] when trans_a), B is [K, N] (or [N, K] when trans_b); batch_a and batch_b are 1
 * (broadcast) or `batch`. Returns −1 (nothing written) when N is not a multiple of VL or memory
 * runs out.
 */
int sida_matmul(float *out, const float *a, const float *b, int64_t batch, int64_t batch_a,
                int64_t batch_b, int64_t M, int64_t N, int64_t K, int trans_a, int trans_b) {
  if (N <= 0 || N % VL || M <= 0 || batch <= 0) return -1;
  if (K == 0) {
    memset(out, 0, (size_t)(batch * M * N) * sizeof(float));
    return 0;
  }
  const int64_t ra = trans_a ? 1 : K, ka = trans_a ? M : 1;
  const float *bt = b;
  float *scratch = 0;
  if (trans_b) {
    scratch = malloc((size_t)(batch_b * K * N) * sizeof(float));
    if (!scratch) return -1;
#pragma omp parallel for schedule(static) if (batch_b * K * N >= (1 << 16))
    for (int64_t t = 0; t < batch_b; t++)
      for (int64_t j = 0; j < N; j++)
        for (int64_t k = 0; k < K; k++) scratch[(t * K + k) * N + j] = b[(t * N + j) * K + k];
    bt = scratch;
  }
  if (N % (4 * VL) == 0) {
    MM_LOOP(TILE_ROWS_4, 4);
  } else if (N % (2 * VL) == 0) {
    MM_LOOP(TILE_ROWS_2, 2);
  } else {
    MM_LOOP(TILE_ROWS_1, 1);
  }
  free(scratch);
  return 0;
}
