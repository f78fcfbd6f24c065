#include "kernels/pred_conv.h"

#include "kernels/qmatvec.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PC_X86 1
#define AVX2_FN __attribute__((target("avx2,fma")))
#else
#define PC_X86 0
#endif

static void conv2_cols_ref(const float *a1, int c1, size_t cs, size_t rs, int x0, int x1,
                           const float *w2, const float *b2, const float *w3, int c2, float *g) {
    for (int x = x0; x < x1; x++) {
        float acc = 0.0f;
        for (int co = 0; co < c2; co++) {
            const float *w = w2 + (size_t)co * c1 * 9;
            float v = 0.0f;
            for (int ci = 0; ci < c1; ci++)
                for (int kh = 0; kh < 3; kh++)
                    for (int kw = 0; kw < 3; kw++)
                        v += w[ci * 9 + kh * 3 + kw] * a1[ci * cs + kh * rs + (size_t)x + kw];
            v += b2[co];
            acc += w3[co] * (v > 0.0f ? v : 0.0f);
        }
        g[x] = acc;
    }
}

void ap_pred_conv2_row_ref(const float *a1, int c1, size_t cs, size_t rs, int n, const float *w2,
                           const float *b2, const float *w3, int c2, float *g) {
    conv2_cols_ref(a1, c1, cs, rs, 0, n, w2, b2, w3, c2, g);
}

#if PC_X86
/* Eight positions x eight output channels in registers: each tap loads one
 * input vector and broadcasts eight weights (from L1), so the loop runs near
 * the load ports' limit rather than on packing. */
AVX2_FN static void conv2_row_avx2(const float *a1, int c1, size_t cs, size_t rs, int n,
                                   const float *w2, const float *b2, const float *w3, int c2,
                                   float *g) {
    const int K = c1 * 9;
    for (int x = 0; x + 8 <= n; x += 8) {
        __m256 out = _mm256_setzero_ps();
        for (int c0 = 0; c0 < c2; c0 += 8) {
            __m256 a[8];
            for (int c = 0; c < 8; c++) a[c] = _mm256_setzero_ps();
            const float *w = w2 + (size_t)c0 * K;
            for (int ci = 0; ci < c1; ci++)
                for (int kh = 0; kh < 3; kh++) {
                    const float *src = a1 + ci * cs + kh * rs + (size_t)x;
                    for (int kw = 0; kw < 3; kw++) {
                        const __m256 v = _mm256_loadu_ps(src + kw);
                        const float *wk = w + ci * 9 + kh * 3 + kw;
                        for (int c = 0; c < 8; c++)
                            a[c] = _mm256_fmadd_ps(_mm256_broadcast_ss(wk + (size_t)c * K), v,
                                                   a[c]);
                    }
                }
            for (int c = 0; c < 8; c++) {
                __m256 v = _mm256_max_ps(_mm256_add_ps(a[c], _mm256_broadcast_ss(b2 + c0 + c)),
                                         _mm256_setzero_ps());
                out = _mm256_fmadd_ps(_mm256_broadcast_ss(w3 + c0 + c), v, out);
            }
        }
        _mm256_storeu_ps(g + x, out);
        /* The tail as one more vector ending at n: its overlap with the
         * previous one recomputes equal values. */
        if (x + 8 < n && x + 16 > n) x = n - 16;
    }
    if (n < 8) conv2_cols_ref(a1, c1, cs, rs, 0, n, w2, b2, w3, c2, g);
}
#endif

void ap_pred_conv1_row_ref(const float *x, size_t xs, int n, const float *k, float b, float *d) {
    const float *x0 = x, *x1 = x + xs, *x2 = x1 + xs;
    for (int j = 0; j < n; j++) {
        float v = b + k[0] * x0[j] + k[1] * x0[j + 1] + k[2] * x0[j + 2] + k[3] * x1[j] +
                  k[4] * x1[j + 1] + k[5] * x1[j + 2] + k[6] * x2[j] + k[7] * x2[j + 1] +
                  k[8] * x2[j + 2];
        d[j] = v > 0.0f ? v : 0.0f;
    }
}

#if PC_X86
AVX2_FN static void conv1_row_avx2(const float *x, size_t xs, int n, const float *k, float b,
                                   float *d) {
    __m256 kk[9];
    for (int i = 0; i < 9; i++) kk[i] = _mm256_set1_ps(k[i]);
    const __m256 vb = _mm256_set1_ps(b), z = _mm256_setzero_ps();
    for (int j = 0; j + 8 <= n; j += 8) {
        __m256 v = vb;
        for (int kh = 0; kh < 3; kh++) {
            const float *r = x + kh * xs + (size_t)j;
            v = _mm256_fmadd_ps(kk[kh * 3], _mm256_loadu_ps(r), v);
            v = _mm256_fmadd_ps(kk[kh * 3 + 1], _mm256_loadu_ps(r + 1), v);
            v = _mm256_fmadd_ps(kk[kh * 3 + 2], _mm256_loadu_ps(r + 2), v);
        }
        _mm256_storeu_ps(d + j, _mm256_max_ps(v, z));
        if (j + 8 < n && j + 16 > n) j = n - 16; /* tail: overlap, same values */
    }
}
#endif

void ap_pred_conv1_row(const float *x, size_t xs, int n, const float *k, float b, float *d) {
#if PC_X86
    if (n >= 8 && ap_qisa_resolve(AP_QISA_AUTO) == AP_QISA_AVX2) {
        conv1_row_avx2(x, xs, n, k, b, d);
        return;
    }
#endif
    ap_pred_conv1_row_ref(x, xs, n, k, b, d);
}

void ap_pred_conv2_row(const float *a1, int c1, size_t cs, size_t rs, int n, const float *w2,
                       const float *b2, const float *w3, int c2, float *g) {
#if PC_X86
    if (c2 % 8 == 0 && ap_qisa_resolve(AP_QISA_AUTO) == AP_QISA_AVX2) {
        conv2_row_avx2(a1, c1, cs, rs, n, w2, b2, w3, c2, g);
        return;
    }
#endif
    ap_pred_conv2_row_ref(a1, c1, cs, rs, n, w2, b2, w3, c2, g);
}
