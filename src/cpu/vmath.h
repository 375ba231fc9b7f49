/* vmath.h - exp, erf and exact GELU for the CPU's transformer loops,
 * written without branches or library calls so that the compiler
 * vectorises the loops that call them (glibc's expf and erff are calls
 * it cannot vectorise without -ffast-math).
 *
 * Accuracy (tests/unit/test_tx_ops.c, "vmath_bounds", checks it against
 * double-precision exp, erf and erfc on a dense grid of [-100, 100]):
 *   ert_v_exp   within 2 ulp on [-87.33, ln FLT_MAX]; 0 below (where the
 *               result would be within 0.5% of FLT_MIN or subnormal);
 *   ert_v_erf   within 3 ulp, or 2^-26 absolute near 0 (measured: 1.2);
 *   ert_v_gelu  within 8 ulp, or 2^-30 absolute, of the exact GELU
 *               x * (1 + erf(x / sqrt 2)) / 2 (measured: 6.3, near
 *               x = -1.35); for x <= -sqrt 2 it computes erfc directly, so
 *               it keeps its relative accuracy where 1 + erff(x / sqrt 2)
 *               cancels (that float formula is off by 2^24 ulp at x = -6).
 * NaN gives NaN; +-inf give the limits.
 */
#ifndef ERT_CPU_VMATH_H
#define ERT_CPU_VMATH_H

#include <stdint.h>
#include <string.h>

static inline uint32_t ert_v_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float ert_v_float(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* e^x: x = n ln2 + r (|r| <= ln2 / 2, ln2 in two parts, Cody and Waite),
 * e^r by Cephes' expf polynomial, 2^n added to the exponent field.
 * x < -87.3 (a subnormal result) gives 0. */
static inline float ert_v_exp(float x)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float c = x > 88.7228f ? 88.7228f : x;
    c = c < -87.33f ? -87.33f : c;
    float t = c * 1.44269504088896341f + magic;
    float n = t - magic;
    float r = c - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t e = ert_v_bits(t) - ert_v_bits(magic); /* n, modulo 2^32 */
    float y = ert_v_float(ert_v_bits(p) + (e << 23));
    y = x < -87.33f ? 0.0f : y;
    y = x > 88.7228f ? ert_v_float(0x7f800000u) : y; /* above ln FLT_MAX */
    return x != x ? x : y;
}

/* erf(a) / a - 1 for a <= 1, in s = a * a (least squares, relative). */
static inline float ert_v_erf_small(float s)
{
    float q = 8.136431185037178e-05f;
    q = q * s + -0.0008095428007763842f;
    q = q * s + 0.005197975604003115f;
    q = q * s + -0.02685884807959653f;
    q = q * s + 0.11283703938958302f;
    q = q * s + -0.3761263602825133f;
    q = q * s + 0.1283791670955124f;
    return q;
}

/* erfc(a) * exp(a * a) for a >= 1, in z = (1 / a - 0.55) / 0.45 (least
 * squares, relative, 1 / a in [0.1, 1]; below 0.1 the factor exp(-a * a)
 * is 0 in float). */
static inline float ert_v_erfcx_big(float t)
{
    float z = (t - 0.55f) * (1.0f / 0.45f);
    float q = 4.544091935397922e-06f;
    q = q * z + 1.6509813089153615e-06f;
    q = q * z + -3.074121977191485e-05f;
    q = q * z + 4.280790914205106e-05f;
    q = q * z + -1.6060618296274767e-05f;
    q = q * z + -9.08347927017797e-05f;
    q = q * z + 0.00046428064805925987f;
    q = q * z + -0.0012812562148161236f;
    q = q * z + 0.0018460879588868453f;
    q = q * z + 0.0030735647695097393f;
    q = q * z + -0.036700209664469935f;
    q = q * z + 0.18397535986736377f;
    q = q * z + 0.2762943837904466f;
    return q;
}

/* exp(-k * b * b) for |b| <= 16 and k = 1 or 1/2, with b * b exact: b is
 * split (b = hi + lo, hi with 12 significant bits, so hi * hi is exact);
 * exp(-k hi^2) goes through exp and exp(-k lo (hi + b)), whose argument is
 * under 0.07 in magnitude, through its Taylor polynomial (error under
 * 2e-9). Rounding b * b instead would cost about b^2 ulp. */
static inline float ert_v_exp_neg_sq(float b, float k)
{
    float hi = ert_v_float(ert_v_bits(b) & 0xfffff000u), lo = b - hi;
    float t = -k * (lo * (hi + b));
    float p = 1.0f + t * (1.0f + t * (0.5f + t * (1.0f / 6.0f + t * (1.0f / 24.0f))));
    return ert_v_exp(-k * (hi * hi)) * p;
}

/* erfc(a) for a >= 1 (a >= 10: 0). */
static inline float ert_v_erfc_big(float a)
{
    float b = a < 10.0f ? a : 10.0f;
    float y = ert_v_exp_neg_sq(b, 1.0f) * ert_v_erfcx_big(1.0f / b);
    return a < 10.0f ? y : 0.0f;
}

/* erf(x). */
static inline float ert_v_erf(float x)
{
    float a = x < 0.0f ? -x : x;
    float small = x + x * ert_v_erf_small(a * a);
    float big = 1.0f - ert_v_erfc_big(a < 1.0f ? 1.0f : a);
    big = x < 0.0f ? -big : big;
    float y = a < 1.0f ? small : big;
    return x != x ? x : y;
}

/* The exact GELU x * (1 + erf(x / sqrt 2)) / 2; for x / sqrt 2 <= -1,
 * 1 + erf is erfc(-x / sqrt 2), computed as exp(-x * x / 2) times erfcx,
 * with x * x / 2 from x itself (the rounding of x / sqrt 2 would cost
 * x^2 ulp there). */
static inline float ert_v_gelu(float x)
{
    float u = x * 0.70710678118654752440f, a = u < 0.0f ? -u : u;
    float small = 1.0f + (u + u * ert_v_erf_small(a * a));
    float b = a < 1.0f ? 1.0f : a < 10.0f ? a : 10.0f;
    float xb = b * 1.41421356237309504880f; /* |x| where it counts */
    xb = a < 1.0f || a >= 10.0f ? xb : (x < 0.0f ? -x : x);
    float ec = ert_v_exp_neg_sq(xb, 0.5f) * ert_v_erfcx_big(1.0f / b);
    ec = a < 10.0f ? ec : 0.0f;
    float big = u < 0.0f ? ec : 2.0f - ec;
    float y = 0.5f * x * (a < 1.0f ? small : big);
    y = x < -20.0f ? 0.0f : y; /* -0 * inf */
    return x != x ? x : y;
}

#endif /* ERT_CPU_VMATH_H */
