#include "kernels/query_bound.h"

#include "kernels/qmatvec.h"

#include <stddef.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QB_X86 1
#define AVX2_FN __attribute__((target("avx2,fma")))
#else
#define QB_X86 0
#endif

void ap_query_bound_ref(const float *q, const float *kmin, const float *kmax, int hd, int n,
                        float *out) {
    for (int j = 0; j < n; j++) {
        const float *lo = kmin + (long)j * hd, *hi = kmax + (long)j * hd;
        double acc = 0.0;
        for (int e = 0; e < hd; e++) {
            double a = (double)q[e] * lo[e], b = (double)q[e] * hi[e];
            acc += a > b ? a : b;
        }
        out[j] = (float)acc;
    }
}

#if QB_X86
/* Two float64 accumulators of four lanes over d: the scalar loop is bound by
 * the latency of one dependent add per dimension (~4 cycles), which made the
 * bound the largest single cost of a live predictor step at 8K keys. */
AVX2_FN static void query_bound_avx2(const float *qs, int nq, const float *kmin,
                                     const float *kmax, int hd, int n, float *outs) {
    const int h8 = hd & ~7;
    for (int j = 0; j < n; j++) {
        const float *lo = kmin + (long)j * hd, *hi = kmax + (long)j * hd;
        for (int u = 0; u < nq; u++) {
            const float *q = qs + (size_t)u * hd;
            __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
            int e = 0;
            for (; e < h8; e += 8) {
                __m256d q0 = _mm256_cvtps_pd(_mm_loadu_ps(q + e));
                __m256d q1 = _mm256_cvtps_pd(_mm_loadu_ps(q + e + 4));
                __m256d l0 = _mm256_mul_pd(q0, _mm256_cvtps_pd(_mm_loadu_ps(lo + e)));
                __m256d l1 = _mm256_mul_pd(q1, _mm256_cvtps_pd(_mm_loadu_ps(lo + e + 4)));
                __m256d u0 = _mm256_mul_pd(q0, _mm256_cvtps_pd(_mm_loadu_ps(hi + e)));
                __m256d u1 = _mm256_mul_pd(q1, _mm256_cvtps_pd(_mm_loadu_ps(hi + e + 4)));
                a0 = _mm256_add_pd(a0, _mm256_max_pd(l0, u0));
                a1 = _mm256_add_pd(a1, _mm256_max_pd(l1, u1));
            }
            __m256d s = _mm256_add_pd(a0, a1);
            __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
            double acc = _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
            for (; e < hd; e++) {
                double a = (double)q[e] * lo[e], b = (double)q[e] * hi[e];
                acc += a > b ? a : b;
            }
            outs[(size_t)u * n + j] = (float)acc;
        }
    }
}
#endif

void ap_query_bound_heads(const float *q, int nq, const float *kmin, const float *kmax, int hd,
                          int n, float *out) {
#if QB_X86
    if (hd >= 8 && ap_qisa_resolve(AP_QISA_AUTO) == AP_QISA_AVX2) {
        query_bound_avx2(q, nq, kmin, kmax, hd, n, out);
        return;
    }
#endif
    for (int u = 0; u < nq; u++)
        ap_query_bound_ref(q + (size_t)u * hd, kmin, kmax, hd, n, out + (size_t)u * n);
}

void ap_query_bound(const float *q, const float *kmin, const float *kmax, int hd, int n,
                    float *out) {
    ap_query_bound_heads(q, 1, kmin, kmax, hd, n, out);
}
