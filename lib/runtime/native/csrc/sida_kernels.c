/*
 * sida's native element-wise kernels for the `native` tfjs backend (loaded through Deno FFI by
 * lib/runtime/native/ckernels.ts, which compiles this file on first use when a C compiler is
 * present). Every function takes float32 arrays and plain integers; lengths are checked by the
 * TypeScript side before the call. Work is split over OpenMP threads when the arrays are large.
 *
 * Arithmetic follows tfjs-backend-cpu: + − × ÷ in float32 (equal to the cpu kernels' float64
 * arithmetic rounded to float32), transcendental functions in double, rounded once, and sums in
 * double. The exceptions are the hot fused kernels, SiLU and its gradient, which use a vectorised
 * float exp (`sida_expf`, within 1.01 ulp; results within a few ulp of the double forms), and group
 * normalisation, which accumulates its sums in double but applies its per-channel affine maps in
 * float.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define PAR_MIN 65536 /* elements below which one thread does the work */

int sida_version(void) { return 1; }

int sida_threads(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Broadcasting binary operations over collapsed runs.                                         */

enum { ADD = 0, SUB = 1, MUL = 2, DIV = 3, SQDIFF = 4, MAX = 5, MIN = 6 };

#define RUN_LOOP(EXPR)                                                                          \
  if (sa == 1 && sb == 1) {                                                                     \
    for (int64_t i = 0; i < n; i++) { const float x = a[i], y = b[i]; out[i] = (EXPR); }       \
  } else if (sa == 1 && sb == 0) {                                                              \
    const float y = b[0];                                                                       \
    for (int64_t i = 0; i < n; i++) { const float x = a[i]; out[i] = (EXPR); }                 \
  } else if (sa == 0 && sb == 1) {                                                              \
    const float x = a[0];                                                                       \
    for (int64_t i = 0; i < n; i++) { const float y = b[i]; out[i] = (EXPR); }                 \
  } else {                                                                                      \
    for (int64_t i = 0; i < n; i++) { const float x = a[i * sa], y = b[i * sb]; out[i] = (EXPR); } \
  }

static inline float fmaxnan(float x, float y) { return (x != x || y != y) ? NAN : (x > y ? x : y); }
static inline float fminnan(float x, float y) { return (x != x || y != y) ? NAN : (x < y ? x : y); }

static void binary_run(int op, float *restrict out, const float *restrict a, int64_t sa,
                       const float *restrict b, int64_t sb, int64_t n) {
  switch (op) {
    case ADD: RUN_LOOP(x + y) break;
    case SUB: RUN_LOOP(x - y) break;
    case MUL: RUN_LOOP(x * y) break;
    case DIV: RUN_LOOP(x / y) break;
    case SQDIFF: RUN_LOOP((float)(((double)x - y) * ((double)x - y))) break;
    case MAX: RUN_LOOP(fmaxnan(x, y)) break;
    case MIN: RUN_LOOP(fminnan(x, y)) break;
  }
}

/*
 * out = a ∘ b over `ndim` collapsed runs: sizes[d] elements with element strides as[d], bs[d]
 * (0 = broadcast). The last run is contiguous in `out`.
 */
void sida_binary(int op, float *out, const float *a, const float *b, int ndim,
                 const int64_t *sizes, const int64_t *as, const int64_t *bs) {
  if (ndim <= 0) {
    binary_run(op, out, a, 0, b, 0, 1);
    return;
  }
  const int64_t n = sizes[ndim - 1], sa = as[ndim - 1], sb = bs[ndim - 1];
  int64_t rows = 1;
  for (int d = 0; d < ndim - 1; d++) rows *= sizes[d];
  const int64_t total = rows * n;
  /* Work items: rows, or chunks of the single run when there are few rows. */
  const int64_t chunk = rows >= 64 || n < 8192 ? n : 8192;
  const int64_t per_row = (n + chunk - 1) / chunk;
  const int64_t items = rows * per_row;
#pragma omp parallel for schedule(static) if (total >= PAR_MIN)
  for (int64_t it = 0; it < items; it++) {
    const int64_t r = it / per_row, c0 = (it % per_row) * chunk;
    const int64_t len = n - c0 < chunk ? n - c0 : chunk;
    int64_t ai = 0, bi = 0, rem = r;
    for (int d = ndim - 2; d >= 0; d--) {
      const int64_t k = rem % sizes[d];
      rem /= sizes[d];
      ai += k * as[d];
      bi += k * bs[d];
    }
    binary_run(op, out + r * n + c0, a + ai + c0 * sa, sa, b + bi + c0 * sb, sb, len);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Vectorisable float exp.                                                                     */

#include "sida_expf.h"

/* SiLU from e = exp(−|x|) ∈ (0, 1], which never overflows: sigmoid(x) = 1/(1+e) for x ≥ 0, else
 * e/(1+e). NaN → NaN, +∞ → +∞, −∞ → NaN (−∞·0, as x·sigmoid(x) gives). */
static inline float silu1(float v) {
  const float e = sida_expf(-fabsf(v));
  const float s = (v >= 0.0f ? 1.0f : e) / (1.0f + e);
  return v * s;
}

static void silu_run(float *restrict y, const float *restrict x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) y[i] = silu1(x[i]);
}

static void silu_grad_run(float *restrict dx, const float *restrict dy, const float *restrict x,
                          int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    const float v = x[i], e = sida_expf(-fabsf(v)), q = 1.0f / (1.0f + e), eq = e * q;
    /* s = sigmoid(v) and 1 − s, each without cancellation. */
    const float s = v >= 0.0f ? q : eq, oms = v >= 0.0f ? eq : q;
    dx[i] = dy[i] * (s * (1.0f + v * oms));
  }
}

/* SiLU over n elements, in chunks handed out to the threads as they come free. */
#define SILU_CHUNK 16384

static void silu_par(float *restrict y, const float *restrict x, int64_t n) {
  const int64_t chunks = (n + SILU_CHUNK - 1) / SILU_CHUNK;
#pragma omp parallel for schedule(dynamic, 1) if (n >= PAR_MIN)
  for (int64_t k = 0; k < chunks; k++) {
    const int64_t i0 = k * SILU_CHUNK, len = n - i0 < SILU_CHUNK ? n - i0 : SILU_CHUNK;
    silu_run(y + i0, x + i0, len);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Unary operations.                                                                            */

enum { SIGMOID = 0, SQUARE, NEG, EXP, SQRT, FLOOR, LOG, ABS, RSQRT, RELU, STEP, SILU };

void sida_unary(int op, float *restrict y, const float *restrict x, int64_t n, float alpha) {
#define UNARY(EXPR)                                                                             \
  _Pragma("omp parallel for schedule(static) if (n >= PAR_MIN)")                               \
  for (int64_t i = 0; i < n; i++) { const float v = x[i]; y[i] = (EXPR); }                     \
  break;
  switch (op) {
    case SIGMOID: UNARY((float)(1.0 / (1.0 + exp(-(double)v))))
    case SQUARE: UNARY(v * v)
    case NEG: UNARY(-v)
    case EXP: UNARY((float)exp((double)v))
    case SQRT: UNARY((float)sqrt((double)v))
    case FLOOR: UNARY(floorf(v))
    case LOG: UNARY((float)log((double)v))
    case ABS: UNARY(fabsf(v))
    case RSQRT: UNARY((float)(1.0 / sqrt((double)v)))
    case RELU: UNARY(v < 0 ? 0.0f : v)
    case STEP: UNARY(v > 0 ? 1.0f : (v != v ? NAN : alpha))
    case SILU: silu_par(y, x, n); break;
  }
#undef UNARY
}

/* d silu(x) / dx · dy = dy · s · (1 + x · (1 − s)), s = sigmoid(x). */
void sida_silu_grad(float *restrict dx, const float *restrict dy, const float *restrict x,
                    int64_t n) {
  const int64_t chunks = (n + SILU_CHUNK - 1) / SILU_CHUNK;
#pragma omp parallel for schedule(dynamic, 1) if (n >= PAR_MIN)
  for (int64_t k = 0; k < chunks; k++) {
    const int64_t i0 = k * SILU_CHUNK, len = n - i0 < SILU_CHUNK ? n - i0 : SILU_CHUNK;
    silu_grad_run(dx + i0, dy + i0, x + i0, len);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Group normalisation of NHWC activations, [N, S, C] with S = H·W and C = G·Cg.               */
/*
 * One pass over a sample gathers per-channel sums (vectorised across channels, accumulated in
 * double) of x − K and (x − K)², where K is the group's first value, so that the variance
 * E[(x−K)²] − E[x−K]² does not cancel when |mean| ≫ std; the gradient's pass adds Σ dy and
 * Σ dy·(x − K). The channels' sums are then combined per group, and a second pass applies one
 * affine map per channel, in float, to x − m with m the mean rounded to float (x − m is then
 * correctly rounded whatever |mean|/std, and m − mean goes into the map's offset).
 *
 * Threads take whole samples when there are enough of them (the second pass then reads the sample
 * from the cache the first pass filled); with fewer samples than threads they take blocks of rows,
 * and the partial sums are combined between two parallel loops. Work is handed out dynamically,
 * so that a thread slowed by another process on its core does not hold the others up.
 */

typedef struct {
  double mean, rstd;
} gn_stat;

/* Row blocks per sample: 1 (threads take whole samples) or enough blocks to share the work. */
static int64_t gn_blocks(int64_t N, int64_t S, int64_t C) {
  const int64_t th = sida_threads();
  if (th <= 1 || N * S * C < PAR_MIN || N % th == 0 || N >= 4 * th) return 1;
  int64_t b = (4 * th + N - 1) / N;
  const int64_t most = S / 16 > 1 ? S / 16 : 1; /* at least 16 rows a block */
  return b < most ? b : most;
}

/* K[c] = the first value of c's group in the sample. */
static void gn_shift(const float *restrict xn, int64_t C, int64_t Cg, float *restrict K) {
  for (int64_t c = 0; c < C; c++) K[c] = xn[(c / Cg) * Cg];
}

/*
 * Adds over rows [p0, p1) to s: s[c] += Σ (x − K), s[C + c] += Σ (x − K)², and with dy (the
 * gradient) s[2C + c] += Σ dy, s[3C + c] += Σ dy·(x − K).
 */
static void gn_sums(const float *restrict xn, const float *restrict dyn, const float *restrict K,
                    int64_t C, int64_t p0, int64_t p1, double *restrict s) {
  double *restrict s1 = s, *restrict s2 = s + C;
  if (!dyn) {
    for (int64_t p = p0; p < p1; p++) {
      const float *restrict r = xn + p * C;
#pragma omp simd
      for (int64_t c = 0; c < C; c++) {
        const double d = r[c] - K[c];
        s1[c] += d;
        s2[c] += d * d;
      }
    }
    return;
  }
  double *restrict sg = s + 2 * C, *restrict sgd = s + 3 * C;
  for (int64_t p = p0; p < p1; p++) {
    const float *restrict r = xn + p * C, *restrict gr = dyn + p * C;
#pragma omp simd
    for (int64_t c = 0; c < C; c++) {
      const double d = r[c] - K[c], g = gr[c];
      s1[c] += d;
      s2[c] += d * d;
      sg[c] += g;
      sgd[c] += g * d;
    }
  }
}

/* Group means and 1/sqrt(biased variance + eps) from the channels' shifted sums. */
static void gn_stats(const double *restrict s, const float *restrict K, int64_t S, int64_t C,
                     int64_t Cg, double eps, gn_stat *restrict st) {
  const double M = (double)S * (double)Cg;
  for (int64_t g = 0; g < C / Cg; g++) {
    double s1 = 0, s2 = 0;
    for (int64_t j = 0; j < Cg; j++) {
      s1 += s[g * Cg + j];
      s2 += s[C + g * Cg + j];
    }
    const double mk = s1 / M;
    double var = s2 / M - mk * mk;
    var = var < 0 ? 0 : var; /* (NaN stays NaN) */
    st[g].mean = K[g * Cg] + mk;
    st[g].rstd = 1.0 / sqrt(var + eps);
  }
}

/* Forward map per channel: y = (x − mf)·sc + sh. */
static void gn_forward_coefs(const gn_stat *restrict st, const float *restrict gamma,
                             const float *restrict beta, int64_t C, int64_t Cg,
                             float *restrict co) {
  float *restrict mf = co, *restrict sc = co + C, *restrict sh = co + 2 * C;
  for (int64_t c = 0; c < C; c++) {
    const gn_stat t = st[c / Cg];
    const float m = (float)t.mean;
    const double scale = t.rstd * gamma[c];
    mf[c] = m;
    sc[c] = (float)scale;
    sh[c] = (float)(beta[c] - (t.mean - m) * scale);
  }
}

/*
 * Gradient map per channel, dx = dy·A + (x − mf)·B + D, from dx = rstd·(dy·γ − md − x̂·mdx) with
 * md = mean(dy·γ), mdx = mean(dy·γ·x̂) over the group; writes the sample's dγ and dβ partial sums.
 */
static void gn_grad_coefs(const gn_stat *restrict st, const double *restrict s,
                          const float *restrict K, const float *restrict gamma, int64_t S,
                          int64_t C, int64_t Cg, double *restrict dgamma_part,
                          double *restrict dbeta_part, float *restrict co) {
  const double *sg = s + 2 * C, *sgd = s + 3 * C;
  float *restrict mf = co, *restrict ca = co + C, *restrict cb = co + 2 * C;
  float *restrict cd = co + 3 * C;
  const double M = (double)S * (double)Cg;
  for (int64_t g = 0; g < C / Cg; g++) {
    const gn_stat t = st[g];
    double md = 0, mdx = 0;
    for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
      const double sdyx = t.rstd * (sgd[c] - (t.mean - K[c]) * sg[c]); /* Σ dy·x̂ */
      dgamma_part[c] = sdyx;
      dbeta_part[c] = sg[c];
      md += gamma[c] * sg[c];
      mdx += gamma[c] * sdyx;
    }
    md /= M;
    mdx /= M;
    const float m = (float)t.mean;
    const double b = -t.rstd * t.rstd * mdx;
    const double d = -t.rstd * md - b * (t.mean - m);
    for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
      mf[c] = m;
      ca[c] = (float)(t.rstd * gamma[c]);
      cb[c] = (float)b;
      cd[c] = (float)d;
    }
  }
}

/* Applies the forward (dyn == NULL) or gradient map to rows [p0, p1). */
static void gn_apply(float *restrict out, const float *restrict xn, const float *restrict dyn,
                     const float *restrict co, int64_t C, int64_t p0, int64_t p1) {
  const float *restrict mf = co, *restrict c1 = co + C, *restrict c2 = co + 2 * C;
  if (!dyn) {
    for (int64_t p = p0; p < p1; p++) {
      const float *restrict r = xn + p * C;
      float *restrict o = out + p * C;
#pragma omp simd
      for (int64_t c = 0; c < C; c++) o[c] = fmaf(r[c] - mf[c], c1[c], c2[c]);
    }
    return;
  }
  const float *restrict c3 = co + 3 * C;
  for (int64_t p = p0; p < p1; p++) {
    const float *restrict r = xn + p * C, *restrict gr = dyn + p * C;
    float *restrict o = out + p * C;
#pragma omp simd
    for (int64_t c = 0; c < C; c++) o[c] = fmaf(gr[c], c1[c], fmaf(r[c] - mf[c], c2[c], c3[c]));
  }
}

/*
 * The forward pass (dy == NULL: y = group_norm(x)) or the gradient (out = dx, and the [N, C]
 * partial sums of dγ and dβ).
 */
static void gn_run(float *restrict out, double *restrict dgamma_part, double *restrict dbeta_part,
                   const float *restrict dy, const float *restrict x, const float *restrict gamma,
                   const float *restrict beta, int64_t N, int64_t S, int64_t C, int64_t G,
                   double eps) {
  const int64_t Cg = C / G, ns = dy ? 4 : 2, nc = dy ? 4 : 3, SC = S * C;
  const int64_t B = gn_blocks(N, S, C);
  double *part = B > 1 ? malloc(sizeof(double) * (size_t)(N * B * ns * C)) : NULL;
  float *coefs = B > 1 ? malloc(sizeof(float) * (size_t)(N * (nc + 1) * C)) : NULL;
  if (B == 1 || !part || !coefs) {
    free(part);
    free(coefs);
#pragma omp parallel for schedule(dynamic, 1) if (N * SC >= PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
      const float *xn = x + n * SC, *dyn = dy ? dy + n * SC : NULL;
      float K[C], co[nc * C];
      double s[ns * C];
      gn_stat st[G];
      gn_shift(xn, C, Cg, K);
      memset(s, 0, sizeof s);
      gn_sums(xn, dyn, K, C, 0, S, s);
      gn_stats(s, K, S, C, Cg, eps, st);
      if (dy) {
        gn_grad_coefs(st, s, K, gamma, S, C, Cg, dgamma_part + n * C, dbeta_part + n * C, co);
      } else {
        gn_forward_coefs(st, gamma, beta, C, Cg, co);
      }
      gn_apply(out + n * SC, xn, dyn, co, C, 0, S);
    }
    return;
  }
  const int64_t R = (S + B - 1) / B, items = N * B;
#pragma omp parallel
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
      const int64_t n = it / B, p0 = (it % B) * R, p1 = p0 + R < S ? p0 + R : S;
      const float *xn = x + n * SC;
      float K[C];
      double *s = part + it * ns * C;
      gn_shift(xn, C, Cg, K);
      memset(s, 0, sizeof(double) * (size_t)(ns * C));
      if (p0 < p1) gn_sums(xn, dy ? dy + n * SC : NULL, K, C, p0, p1, s);
    }
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) {
      const float *xn = x + n * SC;
      float K[C];
      gn_stat st[G];
      double *s = part + n * B * ns * C;
      for (int64_t b = 1; b < B; b++) {
        const double *sb = s + b * ns * C;
        for (int64_t c = 0; c < ns * C; c++) s[c] += sb[c];
      }
      gn_shift(xn, C, Cg, K);
      gn_stats(s, K, S, C, Cg, eps, st);
      float *co = coefs + n * (nc + 1) * C;
      if (dy) {
        gn_grad_coefs(st, s, K, gamma, S, C, Cg, dgamma_part + n * C, dbeta_part + n * C, co);
      } else {
        gn_forward_coefs(st, gamma, beta, C, Cg, co);
      }
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
      const int64_t n = it / B, p0 = (it % B) * R, p1 = p0 + R < S ? p0 + R : S;
      if (p0 < p1) {
        gn_apply(out + n * SC, x + n * SC, dy ? dy + n * SC : NULL, coefs + n * (nc + 1) * C, C,
                 p0, p1);
      }
    }
  }
  free(part);
  free(coefs);
}

/* y = (x − μ)·rstd·γ + β per (sample, group); biased variance, as torch.nn.functional.group_norm. */
void sida_group_norm(float *restrict y, const float *restrict x, const float *restrict gamma,
                     const float *restrict beta, int64_t N, int64_t S, int64_t C, int64_t G,
                     double eps) {
  gn_run(y, NULL, NULL, NULL, x, gamma, beta, N, S, C, G, eps);
}

/*
 * Gradients of group_norm: dx, and per-(sample, channel) partial sums of dy·x̂ and dy written to
 * dgamma_part / dbeta_part ([N, C], summed over N by the caller).
 */
void sida_group_norm_grad(float *restrict dx, double *restrict dgamma_part,
                          double *restrict dbeta_part, const float *restrict dy,
                          const float *restrict x, const float *restrict gamma, int64_t N,
                          int64_t S, int64_t C, int64_t G, double eps) {
  gn_run(dx, dgamma_part, dbeta_part, dy, x, gamma, NULL, N, S, C, G, eps);
}

/* ------------------------------------------------------------------------------------------ */
/* im2col / col2im of NHWC convolutions over output pixels [r0, r1) (the GEMM's rows).         */
/* g = {N, H, W, C, Ho, Wo, KH, KW, sh, sw, dh, dw, top, left}.                                 */

static void im2col_row(const float *x, const int64_t *g, int64_t r, float *o) {
  const int64_t H = g[1], W = g[2], C = g[3], Ho = g[4], Wo = g[5], KH = g[6], KW = g[7];
  const int64_t ox = r % Wo, oy = (r / Wo) % Ho, n = r / (Wo * Ho);
  const int64_t iy0 = oy * g[8] - g[12], ix0 = ox * g[9] - g[13];
  for (int64_t kh = 0; kh < KH; kh++) {
    const int64_t iy = iy0 + kh * g[10];
    if (iy < 0 || iy >= H) {
      memset(o, 0, sizeof(float) * KW * C);
      o += KW * C;
      continue;
    }
    const float *row = x + (n * H + iy) * W * C;
    if (g[11] == 1 && ix0 >= 0 && ix0 + KW <= W) {
      memcpy(o, row + ix0 * C, sizeof(float) * KW * C);
      o += KW * C;
      continue;
    }
    for (int64_t kw = 0; kw < KW; kw++, o += C) {
      const int64_t ix = ix0 + kw * g[11];
      if (ix < 0 || ix >= W) memset(o, 0, sizeof(float) * C);
      else memcpy(o, row + ix * C, sizeof(float) * C);
    }
  }
}

void sida_im2col(float *col, const float *x, const int64_t *g, int64_t r0, int64_t r1) {
  const int64_t K = g[6] * g[7] * g[3];
#pragma omp parallel for schedule(static) if ((r1 - r0) * K >= PAR_MIN)
  for (int64_t r = r0; r < r1; r++) im2col_row(x, g, r, col + (r - r0) * K);
}

static void col2im_row(const float *o, const int64_t *g, int64_t r, float *x) {
  const int64_t H = g[1], W = g[2], C = g[3], Ho = g[4], Wo = g[5], KH = g[6], KW = g[7];
  const int64_t ox = r % Wo, oy = (r / Wo) % Ho, n = r / (Wo * Ho);
  const int64_t iy0 = oy * g[8] - g[12], ix0 = ox * g[9] - g[13];
  for (int64_t kh = 0; kh < KH; kh++) {
    const int64_t iy = iy0 + kh * g[10];
    if (iy < 0 || iy >= H) {
      o += KW * C;
      continue;
    }
    float *row = x + (n * H + iy) * W * C;
    for (int64_t kw = 0; kw < KW; kw++, o += C) {
      const int64_t ix = ix0 + kw * g[11];
      if (ix < 0 || ix >= W) continue;
      float *d = row + ix * C;
      for (int64_t c = 0; c < C; c++) d[c] += o[c];
    }
  }
}

/* x += col2im(col); threads take whole images, so that no two write the same pixel. */
void sida_col2im(float *x, const float *col, const int64_t *g, int64_t r0, int64_t r1) {
  const int64_t K = g[6] * g[7] * g[3], per = g[4] * g[5];
  const int64_t n0 = r0 / per, n1 = (r1 - 1) / per + 1;
#pragma omp parallel for schedule(static) if ((r1 - r0) * K >= PAR_MIN && n1 - n0 > 1)
  for (int64_t n = n0; n < n1; n++) {
    const int64_t a = n * per > r0 ? n * per : r0, b = (n + 1) * per < r1 ? (n + 1) * per : r1;
    for (int64_t r = a; r < b; r++) col2im_row(col + (r - r0) * K, g, r, x);
  }
}
