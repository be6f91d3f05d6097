/*
 * sida's attention kernels for the `native` tfjs backend (softmax over the last axis and its
 * gradient), compiled into the same library as sida_kernels.c.
 *
 * Arithmetic as tfjs-backend-cpu's composed softmax (max, x − max, exp, sum, divide), with exp in
 * float by a vectorised function within 1.01 ulp and sums in double. Blocks of rows are handed out
 * to OpenMP threads as they come free.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define ATT_PAR_MIN 65536 /* elements below which one thread does the work */
#define ATT_CHUNK 16384   /* elements of the row blocks handed out to threads */

/* ------------------------------------------------------------------------------------------ */
/* Vectorisable float exp (a copy of sida_kernels.c's: keep the two in step).                  */

static inline float f_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline uint32_t bits_from_f(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

/*
 * exp(x) in float: x = n·ln2 + r with |r| ≤ ln2/2 (Cody–Waite, with FMA), exp(r) by Cephes
 * expf's degree-6 polynomial, then ·2ⁿ in two exact steps so that subnormal results are rounded
 * only once. At most 1.01 ulp from the exact value (checked on every float, subnormal results
 * included); exp(NaN) = NaN, exp(+∞) = +∞, exp(−∞) = 0, overflow gives +∞. Branch-free, so that
 * GCC vectorises the loops that call it.
 */
static inline float sida_expf(float x) {
  x = x > 89.0f ? 89.0f : x; /* (NaN passes both clamps) */
  x = x < -104.0f ? -104.0f : x;
  const float magic = 12582912.0f; /* 1.5·2²³: adding it rounds to an integer in the low bits */
  const float t = fmaf(x, 1.44269504088896341f, magic);
  const float n = t - magic;
  const int32_t k = (int32_t)(bits_from_f(t) - bits_from_f(magic)); /* n as an integer */
  float r = fmaf(n, -0.693359375f, x);
  r = fmaf(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fmaf(p, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  p = fmaf(p, r, 5.0000001201e-1f);
  const float e = fmaf(p, r * r, r) + 1.0f;
  const int32_t k1 = k >> 1, k2 = k - k1; /* both in [−75, 64] for finite x */
  const float s1 = f_from_bits((uint32_t)(k1 + 127) << 23);
  const float s2 = f_from_bits((uint32_t)(k2 + 127) << 23);
  return e * s1 * s2;
}

/*
 * y = softmax(x) over rows of n: exp(x − max) / Σ exp(x − max). A NaN, or a +∞ in a row, or a row
 * of −∞ only, makes the row NaN (as tfjs); −∞ entries otherwise give 0.
 */
void sida_softmax(float *restrict y, const float *restrict x, int64_t rows, int64_t n) {
#pragma omp parallel for schedule(dynamic, ATT_CHUNK / n + 1) if (rows * n >= ATT_PAR_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *restrict xr = x + r * n;
    float *restrict yr = y + r * n;
    float m = xr[0];
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; j++) m = xr[j] > m ? xr[j] : m;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; j++) {
      const float e = sida_expf(xr[j] - m);
      yr[j] = e;
      s += e;
    }
    const float sf = (float)s;
#pragma omp simd
    for (int64_t j = 0; j < n; j++) yr[j] = yr[j] / sf;
  }
}

/*
 * dx = y·(dy − Σ_j dy·y) over rows of n (the gradient of softmax at its output y); the sum and
 * dy − Σ in double.
 */
void sida_softmax_grad(float *restrict dx, const float *restrict dy, const float *restrict y,
                       int64_t rows, int64_t n) {
#pragma omp parallel for schedule(dynamic, ATT_CHUNK / n + 1) if (rows * n >= ATT_PAR_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *restrict dr = dy + r * n, *restrict yr = y + r * n;
    float *restrict o = dx + r * n;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; j++) s += (double)dr[j] * yr[j];
#pragma omp simd
    for (int64_t j = 0; j < n; j++) o[j] = yr[j] * (float)(dr[j] - s);
  }
}
