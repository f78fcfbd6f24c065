/* Vector exp for non-positive arguments, shared by softmax and SwiGLU.
 *
 * GCC/clang vector extensions: 8 lanes when the target has AVX (one ymm
 * register, e.g. with ATTNPRED_NATIVE), else 4 (the x86-64 SSE2 baseline).
 * Plain loops with these selects do not auto-vectorize without -ffast-math,
 * and libm's scalar expf costs ~10x more per element. */
#ifndef AP_VEXP_H
#define AP_VEXP_H

#include <stdint.h>

#if defined(__AVX__)
#define AP_VLANES 8
#else
#define AP_VLANES 4
#endif

typedef float ap_vf __attribute__((vector_size(AP_VLANES * 4)));
typedef int32_t ap_vi __attribute__((vector_size(AP_VLANES * 4)));

/* m ? a : b, lane by lane (m lanes all ones or all zeros). */
static inline ap_vf ap_vsel(ap_vi m, ap_vf a, ap_vf b) {
    return (ap_vf)(((ap_vi)a & m) | ((ap_vi)b & ~m));
}

/* exp(x) for x in [-86, 0]: Cody-Waite reduction by ln2, then a degree-6
 * Taylor polynomial on |f| <= ln2/2 (truncation 0.35^7/5040 ~ 1e-7
 * relative), scaled by 2^k built in the exponent bits; a few float ulps in
 * all. Below -86 (and NaN) gives exactly 0, never a subnormal: subnormal
 * arithmetic costs ~100 cycles an operation on x86, and attention rows are
 * full of such far-away keys. Above 0 counts as 0. */
static inline ap_vf ap_vexp_nonpos(ap_vf x) {
    const ap_vi keep = x >= -86.0f;
    x = ap_vsel(keep, x, (ap_vf){0} - 86.0f);
    x = ap_vsel(x > 0.0f, (ap_vf){0}, x);
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    ap_vf k = (x * 1.44269504088896341f + shifter) - shifter;
    ap_vf f = x - k * 0.693145751953125f;
    f = f - k * 1.428606765330187045e-06f;
    ap_vf p = (ap_vf){0} + 1.0f / 720.0f;
    p = p * f + 1.0f / 120.0f;
    p = p * f + 1.0f / 24.0f;
    p = p * f + 1.0f / 6.0f;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    ap_vi ki = __builtin_convertvector(k, ap_vi);
    ap_vf scale = (ap_vf)((ki + 127) << 23);
    return (ap_vf)((ap_vi)(p * scale) & keep);
}

#endif
