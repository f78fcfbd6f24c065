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
/* Query heads whose float64 copies one pass keeps (8 x 256 dims: 16 KB). */
#define QB_HEADS 8
#define QB_MAX_HD 256

/* With kmin <= kmax, max(q*lo, q*hi) is q*hi where q >= 0 and q*lo where q
 * < 0, so each dimension needs one product: the bound picked by q's sign
 * bit (a blend), widened to float64 and added to the lane's sum with one
 * FMA. The product of two floats is exact in float64, so the FMA rounds
 * exactly as the product-then-add of the plain loop, and the lanes (two
 * accumulators of four over d) and their final reduction are those of the
 * two-product kernel this replaces: the results are bit for bit its
 * results, at about a third of the instructions (the bound is on the
 * critical path of every query-fused and Quest step). */
/* One block step of one lane pair: the bound picked by q's sign bit. */
#define QB_STEP(lo, hi, a0, a1)                                                                  \
    do {                                                                                         \
        const __m256 sel_ = _mm256_blendv_ps(_mm256_loadu_ps((hi) + e), _mm256_loadu_ps((lo) + e), \
                                             qv);                                                \
        a0 = _mm256_fmadd_pd(q0, _mm256_cvtps_pd(_mm256_castps256_ps128(sel_)), a0);             \
        a1 = _mm256_fmadd_pd(q1, _mm256_cvtps_pd(_mm256_extractf128_ps(sel_, 1)), a1);           \
    } while (0)

AVX2_FN static inline float qb_reduce(__m256d a0, __m256d a1, const float *q, const float *lo,
                                      const float *hi, int e, int hd) {
    __m256d s = _mm256_add_pd(a0, a1);
    __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    double acc = _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
    for (; e < hd; e++) {
        double a = (double)q[e] * lo[e], b = (double)q[e] * hi[e];
        acc += a > b ? a : b;
    }
    return (float)acc;
}

/* Each (block, query) sum is a chain of dependent adds, one per 8
 * dimensions, so one chain at a time runs at the add's latency; four blocks
 * at a time keep eight chains in flight. Interleaving leaves every chain's
 * own order as it was. */
AVX2_FN static void query_bound_avx2(const float *qs, int nq, const float *kmin,
                                     const float *kmax, int hd, int n, float *outs, size_t ldo) {
    const int h8 = hd & ~7;
    double qd[QB_HEADS * QB_MAX_HD];
    for (int u = 0; u < nq; u++)
        for (int e = 0; e < hd; e++) qd[(size_t)u * hd + e] = (double)qs[(size_t)u * hd + e];
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        const float *l0 = kmin + (long)j * hd, *u0 = kmax + (long)j * hd;
        const float *l1 = l0 + hd, *u1 = u0 + hd, *l2 = l1 + hd, *u2 = u1 + hd;
        const float *l3 = l2 + hd, *u3 = u2 + hd;
        for (int u = 0; u < nq; u++) {
            const float *q = qs + (size_t)u * hd;
            const double *qu = qd + (size_t)u * hd;
            __m256d a0 = _mm256_setzero_pd(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0,
                    d0 = a0, d1 = a0;
            int e = 0;
            for (; e < h8; e += 8) {
                const __m256 qv = _mm256_loadu_ps(q + e);
                const __m256d q0 = _mm256_loadu_pd(qu + e), q1 = _mm256_loadu_pd(qu + e + 4);
                QB_STEP(l0, u0, a0, a1);
                QB_STEP(l1, u1, b0, b1);
                QB_STEP(l2, u2, c0, c1);
                QB_STEP(l3, u3, d0, d1);
            }
            float *o = outs + (size_t)u * ldo + j;
            o[0] = qb_reduce(a0, a1, q, l0, u0, e, hd);
            o[1] = qb_reduce(b0, b1, q, l1, u1, e, hd);
            o[2] = qb_reduce(c0, c1, q, l2, u2, e, hd);
            o[3] = qb_reduce(d0, d1, q, l3, u3, e, hd);
        }
    }
    for (; j < n; j++) {
        const float *lo = kmin + (long)j * hd, *hi = kmax + (long)j * hd;
        for (int u = 0; u < nq; u++) {
            const float *q = qs + (size_t)u * hd;
            const double *qu = qd + (size_t)u * hd;
            __m256d a0 = _mm256_setzero_pd(), a1 = a0;
            int e = 0;
            for (; e < h8; e += 8) {
                const __m256 qv = _mm256_loadu_ps(q + e);
                const __m256d q0 = _mm256_loadu_pd(qu + e), q1 = _mm256_loadu_pd(qu + e + 4);
                QB_STEP(lo, hi, a0, a1);
            }
            outs[(size_t)u * ldo + j] = qb_reduce(a0, a1, q, lo, hi, e, hd);
        }
    }
}
#endif

void ap_query_bound_heads_ld(const float *q, int nq, const float *kmin, const float *kmax,
                             int hd, int n, float *out, size_t ldo) {
#if QB_X86
    if (hd >= 8 && hd <= QB_MAX_HD && ap_qisa_resolve(AP_QISA_AUTO) == AP_QISA_AVX2) {
        for (int u0 = 0; u0 < nq; u0 += QB_HEADS)
            query_bound_avx2(q + (size_t)u0 * hd, nq - u0 < QB_HEADS ? nq - u0 : QB_HEADS, kmin,
                             kmax, hd, n, out + (size_t)u0 * ldo, ldo);
        return;
    }
#endif
    for (int u = 0; u < nq; u++)
        ap_query_bound_ref(q + (size_t)u * hd, kmin, kmax, hd, n, out + (size_t)u * ldo);
}

void ap_query_bound_heads(const float *q, int nq, const float *kmin, const float *kmax, int hd,
                          int n, float *out) {
    ap_query_bound_heads_ld(q, nq, kmin, kmax, hd, n, out, (size_t)n);
}

void ap_query_bound(const float *q, const float *kmin, const float *kmax, int hd, int n,
                    float *out) {
    ap_query_bound_heads(q, 1, kmin, kmax, hd, n, out);
}
