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

#include "sida_expf.h"

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
