/*
 * sida's native element-wise kernels for the `native` tfjs backend (loaded through Deno FFI by
 * lib/runtime/native/ckernels.ts, which compiles this file on first use when a C compiler is
 * present). Every function takes float32 arrays and plain integers; lengths are checked by the
 * TypeScript side before the call. Work is split over OpenMP threads when the arrays are large.
 *
 * Arithmetic follows tfjs-backend-cpu: + − × ÷ in float32 (equal to the cpu kernels' float64
 * arithmetic rounded to float32), transcendental functions in double, rounded once, and sums in
 * double.
 */
#include <math.h>
#include <stdint.h>
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
    case SILU: UNARY((float)((double)v / (1.0 + exp(-(double)v))))
  }
#undef UNARY
}

/* d silu(x) / dx · dy = dy · s · (1 + x · (1 − s)), s = sigmoid(x). */
void sida_silu_grad(float *restrict dx, const float *restrict dy, const float *restrict x,
                    int64_t n) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
  for (int64_t i = 0; i < n; i++) {
    const double v = x[i], s = 1.0 / (1.0 + exp(-v));
    dx[i] = (float)(dy[i] * s * (1.0 + v * (1.0 - s)));
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Group normalisation of NHWC activations, [N, S, C] with S = H·W and C = G·Cg.               */

static void group_stats(const float *x, int64_t S, int64_t C, int64_t Cg, int64_t g,
                        double eps, double *mean, double *rstd) {
  double s = 0;
  for (int64_t p = 0; p < S; p++) {
    const float *row = x + p * C + g * Cg;
    for (int64_t j = 0; j < Cg; j++) s += row[j];
  }
  const double m = s / (double)(S * Cg);
  double v = 0;
  for (int64_t p = 0; p < S; p++) {
    const float *row = x + p * C + g * Cg;
    for (int64_t j = 0; j < Cg; j++) {
      const double d = row[j] - m;
      v += d * d;
    }
  }
  *mean = m;
  *rstd = 1.0 / sqrt(v / (double)(S * Cg) + eps);
}

/* y = (x − μ)·rstd·γ + β per (sample, group); biased variance, as torch.nn.functional.group_norm. */
void sida_group_norm(float *restrict y, const float *restrict x, const float *restrict gamma,
                     const float *restrict beta, int64_t N, int64_t S, int64_t C, int64_t G,
                     double eps) {
  const int64_t Cg = C / G;
#pragma omp parallel for schedule(static) if (N * S * C >= PAR_MIN)
  for (int64_t ng = 0; ng < N * G; ng++) {
    const int64_t n = ng / G, g = ng % G;
    const float *xn = x + n * S * C;
    float *yn = y + n * S * C;
    double mean, rstd;
    group_stats(xn, S, C, Cg, g, eps, &mean, &rstd);
    float scale[Cg], shift[Cg];
    for (int64_t j = 0; j < Cg; j++) {
      const int64_t c = g * Cg + j;
      scale[j] = (float)(rstd * gamma[c]);
      shift[j] = (float)(beta[c] - mean * rstd * gamma[c]);
    }
    for (int64_t p = 0; p < S; p++) {
      const float *xr = xn + p * C + g * Cg;
      float *yr = yn + p * C + g * Cg;
      for (int64_t j = 0; j < Cg; j++) yr[j] = xr[j] * scale[j] + shift[j];
    }
  }
}

/*
 * Gradients of group_norm: dx, and per-(sample, channel) partial sums of dy·x̂ and dy written to
 * dgamma_part / dbeta_part ([N, C], summed over N by the caller).
 */
void sida_group_norm_grad(float *restrict dx, double *restrict dgamma_part,
                          double *restrict dbeta_part, const float *restrict dy,
                          const float *restrict x, const float *restrict gamma, int64_t N,
                          int64_t S, int64_t C, int64_t G, double eps) {
  const int64_t Cg = C / G;
#pragma omp parallel for schedule(static) if (N * S * C >= PAR_MIN)
  for (int64_t ng = 0; ng < N * G; ng++) {
    const int64_t n = ng / G, g = ng % G;
    const float *xn = x + n * S * C, *dyn = dy + n * S * C;
    float *dxn = dx + n * S * C;
    double mean, rstd;
    group_stats(xn, S, C, Cg, g, eps, &mean, &rstd);
    double sdy[Cg], sdyx[Cg];
    for (int64_t j = 0; j < Cg; j++) sdy[j] = sdyx[j] = 0;
    for (int64_t p = 0; p < S; p++) {
      const float *xr = xn + p * C + g * Cg, *dr = dyn + p * C + g * Cg;
      for (int64_t j = 0; j < Cg; j++) {
        sdy[j] += dr[j];
        sdyx[j] += dr[j] * ((xr[j] - mean) * rstd);
      }
    }
    /* With d = dy·γ: dx = rstd·(d − mean(d) − x̂·mean(d·x̂)). */
    double md = 0, mdx = 0;
    for (int64_t j = 0; j < Cg; j++) {
      const int64_t c = g * Cg + j;
      dgamma_part[n * C + c] = sdyx[j];
      dbeta_part[n * C + c] = sdy[j];
      md += gamma[c] * sdy[j];
      mdx += gamma[c] * sdyx[j];
    }
    const double M = (double)(S * Cg);
    md /= M;
    mdx /= M;
    for (int64_t p = 0; p < S; p++) {
      const float *xr = xn + p * C + g * Cg, *dr = dyn + p * C + g * Cg;
      float *o = dxn + p * C + g * Cg;
      for (int64_t j = 0; j < Cg; j++) {
        const double xh = (xr[j] - mean) * rstd;
        o[j] = (float)(rstd * (dr[j] * gamma[g * Cg + j] - md - xh * mdx));
      }
    }
  }
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
