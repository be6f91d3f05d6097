/*
 * sida_expf: a vectorisable float exp shared by the C kernels (included by sida_kernels.c and
 * sida_attention.c; ckernels.ts hashes this header with the sources).
 */
#ifndef SIDA_EXPF_H
#define SIDA_EXPF_H
#include <math.h>
#include <stdint.h>
#include <string.h>

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

#endif
