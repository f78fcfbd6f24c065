/* Quantized-weight matrix-vector products and the decode-attention K/V
 * products (see qmatvec.h for the contract).
 *
 * Exact mode algebra. A block's weights are w_j = a·q_j + c with integer q_j
 * (c = 0 for the symmetric formats), so sum_j w_j x_j = a·sum_j q_j x_j +
 * c·sum_j x_j. The integer q_j converts exactly to float, sum_j x_j over each
 * 32-element block is computed once per vector (ap_qvec_set), and the float
 * scales a, c are computed with the same float operations as the dequantizer
 * (d·sc for K-quants). So every weight enters with its dequantized value,
 * and only the rounding of the sums differs from dequantize + SGEMV. (For
 * Q4_1 that needs the dequantizer's d·q + m to be exact in float32, true
 * whenever d and m are within 2^9 of each other: all 3.3M blocks of the
 * default model; Q5_1's q has one bit more, so within 2^8. Where it would
 * round, the difference is half an ulp of one weight. Q5_0's d·(q - 16),
 * like Q4_0's, is always exact.)
 *
 * Q8 mode replaces x by x'_j = dx·r_j, r_j = round(x_j/dx) in [-127, 127],
 * dx = max|x|/127 per 32-block, and computes sum_j q_j r_j in integers
 * (AVX2: maddubs on |q| and sign-adjusted r, as ggml does). The m/min terms
 * use sum_j x'_j = dx·sum_j r_j, so the result is exactly the product of the
 * exact weights with x', which is what ap_qmatvec_ref computes in this mode.
 *
 * AVX2 code sits in functions with a target attribute, so the library builds
 * for the x86-64 baseline and picks the kernel per call. */
#include "kernels/qmatvec.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define AP_HAVE_X86 1
#define AVX2_FN __attribute__((target("avx2,fma,f16c")))
#else
#define AP_HAVE_X86 0
#endif

/* Elements per piece in the generic (dequantize-then-dot) path: a multiple
 * of every block size, small enough for the stack. */
#define GEN_CHUNK 256

/* ------------------------------------------------------------------ ISA */

ap_qisa ap_qisa_best(void) {
    /* Probed once: every kernel call resolves its ISA, and CPUID serialises
     * the core (under a hypervisor it traps, microseconds), which dominated
     * the paged decode attention's 16-key calls. Racing first callers store
     * the same value. */
    static atomic_int cached = 0; /* AP_QISA_AUTO: not probed yet */
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v != AP_QISA_AUTO) return (ap_qisa)v;
    ap_qisa best = AP_QISA_SCALAR;
#if AP_HAVE_X86
    /* f16c is read from CPUID leaf 1 (ECX bit 29) because older clang's
     * __builtin_cpu_supports does not know the "f16c" feature string. */
    unsigned a = 0, b = 0, c = 0, d = 0;
    int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)
        best = AP_QISA_AVX2;
#endif
    atomic_store_explicit(&cached, (int)best, memory_order_relaxed);
    return best;
}

ap_qisa ap_qisa_resolve(ap_qisa isa) {
    ap_qisa best = ap_qisa_best();
    if (isa == AP_QISA_AUTO) return best;
    if (isa == AP_QISA_AVX2 && best == AP_QISA_AVX2) return AP_QISA_AVX2;
    return AP_QISA_SCALAR;
}

/* ------------------------------------------------------------- helpers */

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline float h2f(const uint8_t *p) { return ap_fp16_to_fp32(rd16(p)); }

static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Unsigned 5-bit value (0..31) of element k of a Q5_0/Q5_1 block: the Q4
 * nibble (low nibbles hold elements 0..15) with bit k of qh as bit 4. */
static inline int q5_val(const uint8_t *qs, uint32_t qh, int k) {
    int nib = k < 16 ? (qs[k] & 15) : (qs[k - 16] >> 4);
    return nib | (int)(((qh >> k) & 1u) << 4);
}

/* Q4_K (scale, min) pair of sub-block j: same unpacking as kernels/quant.c. */
static inline void k4_scale_min(int j, const uint8_t *s, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* --------------------------------------------------------------- traits */

int ap_qmatvec_supported(ap_ggml_type type) {
    const ap_ggml_traits *tr = ap_ggml_type_traits((uint32_t)type);
    return tr && tr->dequant_ok && tr->block_size <= GEN_CHUNK && GEN_CHUNK % tr->block_size == 0;
}

int ap_qmatvec_q8_supported(ap_ggml_type type) {
    return type == AP_GGML_Q4_0 || type == AP_GGML_Q4_1 || type == AP_GGML_Q5_0 ||
           type == AP_GGML_Q5_1 || type == AP_GGML_Q8_0 || type == AP_GGML_Q4_K ||
           type == AP_GGML_Q6_K;
}

ap_status ap_qmat_check(const ap_qmat *w, const char *name, ap_err *err) {
    const char *nm = name ? name : "matrix";
    const ap_ggml_traits *tr = ap_ggml_type_traits((uint32_t)w->type);
    if (!ap_qmatvec_supported(w->type))
        return ap_errf(err, AP_ERR_UNSUPPORTED, "%s: type %s (%d) has no matrix-vector kernel", nm,
                       tr && tr->name ? tr->name : "unknown", (int)w->type);
    if (w->n_in < 1 || w->n_out < 0 || w->n_in % tr->block_size != 0)
        return ap_errf(err, AP_ERR_ARG, "%s: shape %d x %d does not fit %s blocks of %d", nm,
                       w->n_out, w->n_in, tr->name, tr->block_size);
    if (w->row_bytes != ap_ggml_row_size((uint32_t)w->type, w->n_in))
        return ap_errf(err, AP_ERR_ARG, "%s: row of %zu bytes, %s with %d elements needs %zu", nm,
                       w->row_bytes, tr->name, w->n_in,
                       ap_ggml_row_size((uint32_t)w->type, w->n_in));
    if (w->n_out > 0 && !w->data) return ap_errf(err, AP_ERR_ARG, "%s: NULL data", nm);
    return AP_OK;
}

/* ------------------------------------------------------------ vectors */

struct ap_qvec {
    int n_max, n;
    ap_qact_mode mode;
    ap_qisa isa;
    const float *x;
    float *bsum; /* [n_max/32]: float sum of x over each 32-block (F32 mode) */
    int8_t *q;   /* Q8 mode: [n_max] rounded activations */
    float *qds;  /* Q8 mode: [n_max/32][2]: block scale dx, and dx * sum of
                    the block's q (the sum of its x'), side by side so one
                    64-bit load feeds both terms of a block */
};

ap_status ap_qvec_create(int n_max, ap_qact_mode mode, ap_qisa isa, ap_qvec **out, ap_err *err) {
    ap_status st = AP_OK;
    ap_qvec *v = NULL;
    *out = NULL;
    if (n_max < 1 || (mode != AP_QACT_F32 && mode != AP_QACT_Q8)) {
        st = ap_errf(err, AP_ERR_ARG, "activation vector: bad length %d or mode %d", n_max,
                     (int)mode);
        goto cleanup;
    }
    v = calloc(1, sizeof *v);
    if (!v) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for an activation vector");
        goto cleanup;
    }
    v->n_max = n_max;
    v->mode = mode;
    v->isa = ap_qisa_resolve(isa);
    size_t nb = (size_t)n_max / 32 + 1;
    v->bsum = malloc(nb * sizeof *v->bsum);
    if (mode == AP_QACT_Q8) {
        /* 32 bytes of slack: AVX2 loads whole 32-byte blocks. */
        v->q = calloc((size_t)n_max + 32, 1);
        v->qds = calloc(2 * nb, sizeof *v->qds);
    }
    if (!v->bsum || (mode == AP_QACT_Q8 && (!v->q || !v->qds))) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for a %d-element activation vector", n_max);
        goto cleanup;
    }
    *out = v;
    v = NULL;
cleanup:
    ap_qvec_free(v);
    return st;
}

void ap_qvec_free(ap_qvec *v) {
    if (!v) return;
    free(v->bsum);
    free(v->q);
    free(v->qds);
    free(v);
}

ap_qact_mode ap_qvec_mode(const ap_qvec *v) { return v->mode; }
ap_qisa ap_qvec_isa(const ap_qvec *v) { return v->isa; }

void ap_qvec_set(ap_qvec *v, const float *x, int n) {
    v->x = x;
    v->n = n;
    const int nb = n / 32;
    for (int b = 0; b < nb; b++) {
        float s = 0.0f;
        for (int j = 0; j < 32; j++) s += x[32 * b + j];
        v->bsum[b] = s;
    }
    if (v->mode != AP_QACT_Q8) return;
    for (int b = 0; b < nb; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        float d = amax / 127.0f;
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < 32; j++) {
            /* |x·id| <= 127 up to one rounding of id: clamp keeps int8. */
            float r = roundf(xb[j] * id);
            int q = r > 127.0f ? 127 : r < -127.0f ? -127 : (int)r;
            v->q[32 * b + j] = (int8_t)q;
            sum += q;
        }
        v->qds[2 * b] = d;
        v->qds[2 * b + 1] = d * (float)sum;
    }
}

float ap_qvec_value(const ap_qvec *v, int i) {
    if (v->mode == AP_QACT_Q8 && i < v->n / 32 * 32) return v->qds[2 * (i / 32)] * (float)v->q[i];
    return v->x[i];
}

/* ====================================================== scalar kernels */

static float dot_f32_scalar(const float *w, const float *x, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}

static float row_f16_scalar(const uint8_t *w, const float *x, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += ap_fp16_to_fp32(rd16(w + 2 * i)) * x[i];
    return s;
}

static float row_q4_0_scalar(const uint8_t *w, const float *x, int nb) {
    float acc = 0.0f;
    for (int b = 0; b < nb; b++, w += 18, x += 32) {
        const uint8_t *qs = w + 2;
        float s = 0.0f;
        for (int j = 0; j < 16; j++) s += (float)((qs[j] & 15) - 8) * x[j];
        for (int j = 0; j < 16; j++) s += (float)((qs[j] >> 4) - 8) * x[j + 16];
        acc += h2f(w) * s;
    }
    return acc;
}

static float row_q4_1_scalar(const uint8_t *w, const float *x, const float *bsum, int nb) {
    float acc = 0.0f, accm = 0.0f;
    for (int b = 0; b < nb; b++, w += 20, x += 32) {
        const uint8_t *qs = w + 4;
        float s = 0.0f;
        for (int j = 0; j < 16; j++) s += (float)(qs[j] & 15) * x[j];
        for (int j = 0; j < 16; j++) s += (float)(qs[j] >> 4) * x[j + 16];
        acc += h2f(w) * s;
        accm += h2f(w + 2) * bsum[b];
    }
    return acc + accm;
}

/* Q5_0: w = d·(q - 16), q the 5-bit value. */
static float row_q5_0_scalar(const uint8_t *w, const float *x, int nb) {
    float acc = 0.0f;
    for (int b = 0; b < nb; b++, w += 22, x += 32) {
        const uint32_t qh = rd32(w + 2);
        float s = 0.0f;
        for (int j = 0; j < 16; j++) s += (float)(q5_val(w + 6, qh, j) - 16) * x[j];
        for (int j = 16; j < 32; j++) s += (float)(q5_val(w + 6, qh, j) - 16) * x[j];
        acc += h2f(w) * s;
    }
    return acc;
}

/* Q5_1: w = d·q + m, factored like Q4_1. */
static float row_q5_1_scalar(const uint8_t *w, const float *x, const float *bsum, int nb) {
    float acc = 0.0f, accm = 0.0f;
    for (int b = 0; b < nb; b++, w += 24, x += 32) {
        const uint32_t qh = rd32(w + 4);
        float s = 0.0f;
        for (int j = 0; j < 16; j++) s += (float)q5_val(w + 8, qh, j) * x[j];
        for (int j = 16; j < 32; j++) s += (float)q5_val(w + 8, qh, j) * x[j];
        acc += h2f(w) * s;
        accm += h2f(w + 2) * bsum[b];
    }
    return acc + accm;
}

static float row_q8_0_scalar(const uint8_t *w, const float *x, int nb) {
    float acc = 0.0f;
    for (int b = 0; b < nb; b++, w += 34, x += 32) {
        const int8_t *qs = (const int8_t *)(w + 2);
        float s = 0.0f;
        for (int j = 0; j < 32; j++) s += (float)qs[j] * x[j];
        acc += h2f(w) * s;
    }
    return acc;
}

static float row_q4_k_scalar(const uint8_t *w, const float *x, const float *bsum, int nb) {
    float acc = 0.0f, accm = 0.0f;
    for (int b = 0; b < nb; b++, w += 144, x += 256, bsum += 8) {
        float d = h2f(w), dmin = h2f(w + 2);
        const uint8_t *q = w + 16;
        for (int g = 0; g < 4; g++, q += 32) {
            int s0, m0, s1, m1;
            k4_scale_min(2 * g, w + 4, &s0, &m0);
            k4_scale_min(2 * g + 1, w + 4, &s1, &m1);
            const float *xx = x + 64 * g;
            float lo = 0.0f, hi = 0.0f;
            for (int l = 0; l < 32; l++) {
                lo += (float)(q[l] & 15) * xx[l];
                hi += (float)(q[l] >> 4) * xx[l + 32];
            }
            float d0 = d * (float)s0, d1 = d * (float)s1;
            float c0 = dmin * (float)m0, c1 = dmin * (float)m1;
            acc += d0 * lo + d1 * hi;
            accm += c0 * bsum[2 * g] + c1 * bsum[2 * g + 1];
        }
    }
    return acc - accm;
}

/* Q6_K: half h, quarter r (32 values at 128h + 32r), lane l; the scale
 * changes every 16 values (index 8h + 2r + l/16). */
static float row_q6_k_scalar(const uint8_t *w, const float *x, int nb) {
    float acc = 0.0f;
    for (int b = 0; b < nb; b++, w += 210, x += 256) {
        const float d = h2f(w + 208);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w + 64 * h, *qh = w + 128 + 32 * h;
            const int8_t *sc = (const int8_t *)(w + 192 + 8 * h);
            for (int r = 0; r < 4; r++) {
                for (int half16 = 0; half16 < 2; half16++) {
                    float s = 0.0f;
                    for (int l = 16 * half16; l < 16 * half16 + 16; l++) {
                        uint8_t lo = ql[l + 32 * (r & 1)];
                        int nib = r < 2 ? (lo & 15) : (lo >> 4);
                        int q = (nib | (((qh[l] >> (2 * r)) & 3) << 4)) - 32;
                        s += (float)q * x[128 * h + 32 * r + l];
                    }
                    acc += (d * (float)sc[2 * r + half16]) * s;
                }
            }
        }
    }
    return acc;
}

/* ------------------------------------------------- scalar, Q8 activations */

static float row_q8act_scalar(ap_ggml_type type, const uint8_t *w, const ap_qvec *v, int nb32) {
    const int8_t *r = v->q;
    float acc = 0.0f, accm = 0.0f;
    switch (type) {
    case AP_GGML_Q4_0:
        for (int b = 0; b < nb32; b++, w += 18, r += 32) {
            int32_t s = 0;
            for (int j = 0; j < 16; j++)
                s += ((w[2 + j] & 15) - 8) * r[j] + ((w[2 + j] >> 4) - 8) * r[j + 16];
            acc += (h2f(w) * v->qds[2 * b]) * (float)s;
        }
        return acc;
    case AP_GGML_Q4_1:
        for (int b = 0; b < nb32; b++, w += 20, r += 32) {
            int32_t s = 0;
            for (int j = 0; j < 16; j++) s += (w[4 + j] & 15) * r[j] + (w[4 + j] >> 4) * r[j + 16];
            acc += (h2f(w) * v->qds[2 * b]) * (float)s;
            accm += h2f(w + 2) * (v->qds[2 * b + 1]);
        }
        return acc + accm;
    case AP_GGML_Q5_0:
        for (int b = 0; b < nb32; b++, w += 22, r += 32) {
            const uint32_t qh = rd32(w + 2);
            int32_t s = 0;
            for (int k = 0; k < 32; k++) s += (q5_val(w + 6, qh, k) - 16) * r[k];
            acc += (h2f(w) * v->qds[2 * b]) * (float)s;
        }
        return acc;
    case AP_GGML_Q5_1:
        for (int b = 0; b < nb32; b++, w += 24, r += 32) {
            const uint32_t qh = rd32(w + 4);
            int32_t s = 0;
            for (int k = 0; k < 32; k++) s += q5_val(w + 8, qh, k) * r[k];
            acc += (h2f(w) * v->qds[2 * b]) * (float)s;
            accm += h2f(w + 2) * (v->qds[2 * b + 1]);
        }
        return acc + accm;
    case AP_GGML_Q8_0:
        for (int b = 0; b < nb32; b++, w += 34, r += 32) {
            int32_t s = 0;
            for (int j = 0; j < 32; j++) s += (int8_t)w[2 + j] * r[j];
            acc += (h2f(w) * v->qds[2 * b]) * (float)s;
        }
        return acc;
    case AP_GGML_Q4_K:
        for (int b = 0; b < nb32 / 8; b++, w += 144) {
            float d = h2f(w), dmin = h2f(w + 2);
            for (int sb = 0; sb < 8; sb++, r += 32) {
                int sc, m;
                k4_scale_min(sb, w + 4, &sc, &m);
                const uint8_t *q = w + 16 + 32 * (sb / 2);
                int32_t s = 0;
                for (int l = 0; l < 32; l++) s += ((sb & 1) ? (q[l] >> 4) : (q[l] & 15)) * r[l];
                int xb = 8 * b + sb;
                acc += ((d * (float)sc) * v->qds[2 * xb]) * (float)s;
                accm += (dmin * (float)m) * (v->qds[2 * xb + 1]);
            }
        }
        return acc - accm;
    case AP_GGML_Q6_K:
        for (int b = 0; b < nb32 / 8; b++, w += 210) {
            const float d = h2f(w + 208);
            for (int h = 0; h < 2; h++) {
                const uint8_t *ql = w + 64 * h, *qh = w + 128 + 32 * h;
                const int8_t *sc = (const int8_t *)(w + 192 + 8 * h);
                for (int q4 = 0; q4 < 4; q4++, r += 32) {
                    int32_t s = 0;
                    for (int l = 0; l < 32; l++) {
                        uint8_t lo = ql[l + 32 * (q4 & 1)];
                        int nib = q4 < 2 ? (lo & 15) : (lo >> 4);
                        int q = (nib | (((qh[l] >> (2 * q4)) & 3) << 4)) - 32;
                        s += sc[2 * q4 + l / 16] * q * r[l];
                    }
                    acc += (d * v->qds[2 * (8 * b + 4 * h + q4)]) * (float)s;
                }
            }
        }
        return acc;
    default: return 0.0f;
    }
}

/* ======================================================== AVX2 kernels */

#if AP_HAVE_X86

AVX2_FN static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2_FN static inline float h2f_avx2(const uint8_t *p) { return _cvtsh_ss(rd16(p)); }

/* 8 bytes at p as 8 float lanes, zero- or sign-extended. */
AVX2_FN static inline __m256i u8x8(const uint8_t *p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p));
}
AVX2_FN static inline __m256i i8x8(const uint8_t *p) {
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p));
}
AVX2_FN static inline __m256 ldx(const float *x) { return _mm256_loadu_ps(x); }

AVX2_FN static float dot_f32_avx2(const float *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), ldx(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), ldx(x + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), ldx(x + i), a0);
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

AVX2_FN static float row_f16_avx2(const uint8_t *w, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(w + 2 * i)));
        a0 = _mm256_fmadd_ps(wv, ldx(x + i), a0);
    }
    float s = hsum8(a0);
    for (; i < n; i++) s += _cvtsh_ss(rd16(w + 2 * i)) * x[i];
    return s;
}

/* sum_j q_j x_j of one 32-block given its four 8-lane integer vectors. */
AVX2_FN static inline __m256 block_dot4(__m256i q0, __m256i q1, __m256i q2, __m256i q3,
                                        const float *x) {
    __m256 s0 = _mm256_mul_ps(_mm256_cvtepi32_ps(q0), ldx(x));
    __m256 s1 = _mm256_mul_ps(_mm256_cvtepi32_ps(q1), ldx(x + 8));
    s0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q2), ldx(x + 16), s0);
    s1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q3), ldx(x + 24), s1);
    return _mm256_add_ps(s0, s1);
}

AVX2_FN static float row_q8_0_avx2(const uint8_t *w, const float *x, int nb) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2, w += 68, x += 64) {
        __m256 s0 = block_dot4(i8x8(w + 2), i8x8(w + 10), i8x8(w + 18), i8x8(w + 26), x);
        __m256 s1 = block_dot4(i8x8(w + 36), i8x8(w + 44), i8x8(w + 52), i8x8(w + 60), x + 32);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f_avx2(w)), s0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f_avx2(w + 34)), s1, acc1);
    }
    if (b < nb) {
        __m256 s0 = block_dot4(i8x8(w + 2), i8x8(w + 10), i8x8(w + 18), i8x8(w + 26), x);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f_avx2(w)), s0, acc0);
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
}

/* Nibble blocks (Q4_0/Q4_1): bytes 0..7 and 8..15 give elements 0..15 in
 * their low nibbles and 16..31 in their high ones. */
AVX2_FN static inline __m256 nib_block_dot(const uint8_t *qs, const float *x, __m256i off) {
    const __m256i m4 = _mm256_set1_epi32(15);
    __m256i b0 = u8x8(qs), b1 = u8x8(qs + 8);
    return block_dot4(_mm256_sub_epi32(_mm256_and_si256(b0, m4), off),
                      _mm256_sub_epi32(_mm256_and_si256(b1, m4), off),
                      _mm256_sub_epi32(_mm256_srli_epi32(b0, 4), off),
                      _mm256_sub_epi32(_mm256_srli_epi32(b1, 4), off), x);
}

AVX2_FN static float row_q4_0_avx2(const uint8_t *w, const float *x, int nb) {
    const __m256i off = _mm256_set1_epi32(8);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2, w += 36, x += 64) {
        __m256 s0 = nib_block_dot(w + 2, x, off);
        __m256 s1 = nib_block_dot(w + 20, x + 32, off);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f_avx2(w)), s0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f_avx2(w + 18)), s1, acc1);
    }
    if (b < nb)
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f_avx2(w)), nib_block_dot(w + 2, x, off), acc0);
    return hsum8(_mm256_add_ps(acc0, acc1));
}

/* d and m of a block in lanes 0 and 1, from one 4-byte load. */
AVX2_FN static inline __m128 dm_pair(const uint8_t *blk) {
    uint32_t dm;
    memcpy(&dm, blk, sizeof dm);
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm));
}

/* The m terms ride along in lane 1 of a 128-bit accumulator: (d, m) times
 * (bsum, bsum), so no scalar half conversion or scalar chain per block. */
AVX2_FN static float row_q4_1_avx2(const uint8_t *w, const float *x, const float *bsum, int nb) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m128 am0 = _mm_setzero_ps(), am1 = _mm_setzero_ps();
    const __m256i zero = _mm256_setzero_si256();
    int b = 0;
    for (; b + 2 <= nb; b += 2, w += 40, x += 64) {
        __m128 f0 = dm_pair(w), f1 = dm_pair(w + 20);
        acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(f0), nib_block_dot(w + 4, x, zero), acc0);
        acc1 =
            _mm256_fmadd_ps(_mm256_broadcastss_ps(f1), nib_block_dot(w + 24, x + 32, zero), acc1);
        am0 = _mm_fmadd_ps(f0, _mm_set1_ps(bsum[b]), am0);
        am1 = _mm_fmadd_ps(f1, _mm_set1_ps(bsum[b + 1]), am1);
    }
    if (b < nb) {
        __m128 f0 = dm_pair(w);
        acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(f0), nib_block_dot(w + 4, x, zero), acc0);
        am0 = _mm_fmadd_ps(f0, _mm_set1_ps(bsum[b]), am0);
    }
    am0 = _mm_add_ps(am0, am1);
    return hsum8(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(_mm_movehdup_ps(am0));
}

/* The 32 unsigned 5-bit values of a Q5 block as four 8-lane groups (group
 * g: elements 8g..8g+7): the Q4 nibbles plus bit k of qh as bit 4 of
 * element k. Lane i of group g holds element 8g + i, so a variable shift of
 * qh by (8g + i) brings its bit to bit 0. */
AVX2_FN static inline void q5_lanes(const uint8_t *qs, uint32_t qh, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi32(15), one = _mm256_set1_epi32(1);
    const __m256i sh = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i b0 = u8x8(qs), b1 = u8x8(qs + 8);
    __m256i n[4] = {_mm256_and_si256(b0, m4), _mm256_and_si256(b1, m4), _mm256_srli_epi32(b0, 4),
                    _mm256_srli_epi32(b1, 4)};
    for (int g = 0; g < 4; g++) {
        __m256i bit = _mm256_and_si256(
            _mm256_srlv_epi32(_mm256_set1_epi32((int)(qh >> (8 * g))), sh), one);
        q[g] = _mm256_or_si256(n[g], _mm256_slli_epi32(bit, 4));
    }
}

AVX2_FN static inline __m256 q5_block_dot(const uint8_t *qs, uint32_t qh, const float *x,
                                          __m256i off) {
    __m256i q[4];
    q5_lanes(qs, qh, q);
    return block_dot4(_mm256_sub_epi32(q[0], off), _mm256_sub_epi32(q[1], off),
                      _mm256_sub_epi32(q[2], off), _mm256_sub_epi32(q[3], off), x);
}

AVX2_FN static float row_q5_0_avx2(const uint8_t *w, const float *x, int nb) {
    const __m256i off = _mm256_set1_epi32(16);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2, w += 44, x += 64) {
        __m256 s0 = q5_block_dot(w + 6, rd32(w + 2), x, off);
        __m256 s1 = q5_block_dot(w + 28, rd32(w + 24), x + 32, off);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f_avx2(w)), s0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f_avx2(w + 22)), s1, acc1);
    }
    if (b < nb) {
        __m256 s0 = q5_block_dot(w + 6, rd32(w + 2), x, off);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f_avx2(w)), s0, acc0);
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
}

/* Q5_1 starts with d, m like Q4_1: same lane-1 trick for the m terms. */
AVX2_FN static float row_q5_1_avx2(const uint8_t *w, const float *x, const float *bsum, int nb) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m128 am0 = _mm_setzero_ps(), am1 = _mm_setzero_ps();
    const __m256i zero = _mm256_setzero_si256();
    int b = 0;
    for (; b + 2 <= nb; b += 2, w += 48, x += 64) {
        __m128 f0 = dm_pair(w), f1 = dm_pair(w + 24);
        acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(f0),
                               q5_block_dot(w + 8, rd32(w + 4), x, zero), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_broadcastss_ps(f1),
                               q5_block_dot(w + 32, rd32(w + 28), x + 32, zero), acc1);
        am0 = _mm_fmadd_ps(f0, _mm_set1_ps(bsum[b]), am0);
        am1 = _mm_fmadd_ps(f1, _mm_set1_ps(bsum[b + 1]), am1);
    }
    if (b < nb) {
        __m128 f0 = dm_pair(w);
        acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(f0),
                               q5_block_dot(w + 8, rd32(w + 4), x, zero), acc0);
        am0 = _mm_fmadd_ps(f0, _mm_set1_ps(bsum[b]), am0);
    }
    am0 = _mm_add_ps(am0, am1);
    return hsum8(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(_mm_movehdup_ps(am0));
}

AVX2_FN static float row_q4_k_avx2(const uint8_t *w, const float *x, const float *bsum, int nb) {
    const __m256i m4 = _mm256_set1_epi32(15);
    __m256 acc = _mm256_setzero_ps();
    float accm = 0.0f;
    for (int b = 0; b < nb; b++, w += 144, x += 256, bsum += 8) {
        const float d = h2f_avx2(w), dmin = h2f_avx2(w + 2);
        const uint8_t *q = w + 16;
        for (int g = 0; g < 4; g++, q += 32) {
            int s0, m0, s1, m1;
            k4_scale_min(2 * g, w + 4, &s0, &m0);
            k4_scale_min(2 * g + 1, w + 4, &s1, &m1);
            const float *xx = x + 64 * g;
            __m256i b0 = u8x8(q), b1 = u8x8(q + 8), b2 = u8x8(q + 16), b3 = u8x8(q + 24);
            __m256 lo = block_dot4(_mm256_and_si256(b0, m4), _mm256_and_si256(b1, m4),
                                   _mm256_and_si256(b2, m4), _mm256_and_si256(b3, m4), xx);
            __m256 hi = block_dot4(_mm256_srli_epi32(b0, 4), _mm256_srli_epi32(b1, 4),
                                   _mm256_srli_epi32(b2, 4), _mm256_srli_epi32(b3, 4), xx + 32);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)s0), lo, acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)s1), hi, acc);
            accm += (dmin * (float)m0) * bsum[2 * g] + (dmin * (float)m1) * bsum[2 * g + 1];
        }
    }
    return hsum8(acc) - accm;
}

AVX2_FN static float row_q6_k_avx2(const uint8_t *w, const float *x, int nb) {
    const __m256i m4 = _mm256_set1_epi32(15), m2 = _mm256_set1_epi32(3);
    const __m256i off = _mm256_set1_epi32(32);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, w += 210, x += 256) {
        const float d = h2f_avx2(w + 208);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w + 64 * h, *qh = w + 128 + 32 * h;
            const int8_t *sc = (const int8_t *)(w + 192 + 8 * h);
            const float *xx = x + 128 * h;
            for (int l0 = 0; l0 < 32; l0 += 16) {
                __m256 s[4];
                for (int r = 0; r < 4; r++) s[r] = _mm256_setzero_ps();
                for (int l = l0; l < l0 + 16; l += 8) {
                    __m256i a = u8x8(ql + l), c = u8x8(ql + 32 + l), hb = u8x8(qh + l);
                    __m256i q1 = _mm256_or_si256(_mm256_and_si256(a, m4),
                                                 _mm256_slli_epi32(_mm256_and_si256(hb, m2), 4));
                    __m256i q2 = _mm256_or_si256(
                        _mm256_and_si256(c, m4),
                        _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hb, 2), m2), 4));
                    __m256i q3 = _mm256_or_si256(
                        _mm256_srli_epi32(a, 4),
                        _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(hb, 4), m2), 4));
                    __m256i q4 = _mm256_or_si256(_mm256_srli_epi32(c, 4),
                                                 _mm256_slli_epi32(_mm256_srli_epi32(hb, 6), 4));
                    s[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q1, off)),
                                           ldx(xx + l), s[0]);
                    s[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q2, off)),
                                           ldx(xx + 32 + l), s[1]);
                    s[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q3, off)),
                                           ldx(xx + 64 + l), s[2]);
                    s[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q4, off)),
                                           ldx(xx + 96 + l), s[3]);
                }
                const int is = l0 / 16;
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc[is]), s[0], acc0);
                acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc[is + 2]), s[1], acc1);
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc[is + 4]), s[2], acc0);
                acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc[is + 6]), s[3], acc1);
            }
        }
    }
    return hsum8(_mm256_add_ps(acc0, acc1));
}

/* ------------------------------------------------- AVX2, Q8 activations */

/* The 32 products a_j·b_j of two int8 vectors, summed in fours into 8
 * int32 lanes (lane k: elements 4k..4k+3). maddubs wants an unsigned first
 * operand, so it gets |a| and b carries a's sign. */
AVX2_FN static inline __m256i dot_i8_lanes(__m256i a, __m256i b) {
    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}
/* Same with a already unsigned (nibbles, 0..15). */
AVX2_FN static inline __m256i dot_u8_lanes(__m256i ua, __m256i b) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ua, b), _mm256_set1_epi16(1));
}
/* 16 nibble bytes -> 32 bytes: low nibbles (elements 0..15) then high. */
AVX2_FN static inline __m256i nib32(const uint8_t *qs) {
    __m128i raw = _mm_loadu_si128((const __m128i *)(const void *)qs);
    const __m128i m4 = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
}
AVX2_FN static inline __m256i ld256(const void *p) {
    return _mm256_loadu_si256((const __m256i *)p);
}
/* Two floats into lanes 0 and 1. */
AVX2_FN static inline __m128 ld_pair(const float *p) {
    return _mm_castpd_ps(_mm_load_sd((const double *)(const void *)p));
}
/* The 32 fifth bits of a Q5 block as bytes in element order (the order
 * nib32 gives): 16 where bit k of qh is set, else 0. Byte k picks byte k/8
 * of qh (the shuffle works within 128-bit lanes, and each lane holds all of
 * qh), then tests bit k%8. */
AVX2_FN static inline __m256i q5_hbits(uint32_t qh) {
    const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                         2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), sel);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(16));
}

AVX2_FN static float row_q8act_avx2(ap_ggml_type type, const uint8_t *w, const ap_qvec *v,
                                    int nb32) {
    const int8_t *r = v->q;
    __m256 acc = _mm256_setzero_ps();
    float accm = 0.0f;
    switch (type) {
    case AP_GGML_Q4_0: {
        const __m256i off = _mm256_set1_epi8(8);
        for (int b = 0; b < nb32; b++, w += 18, r += 32) {
            __m256i q = _mm256_sub_epi8(nib32(w + 2), off);
            __m256 dot = _mm256_cvtepi32_ps(dot_i8_lanes(q, ld256(r)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f_avx2(w) * v->qds[2 * b]), dot, acc);
        }
        return hsum8(acc);
    }
    case AP_GGML_Q4_1: {
        /* (d, m) * (dx, dx * sum q) = (scale of the integer dot, m term). */
        __m128 am = _mm_setzero_ps();
        for (int b = 0; b < nb32; b++, w += 20, r += 32) {
            __m128 f = _mm_mul_ps(dm_pair(w), ld_pair(v->qds + 2 * b));
            __m256 dot = _mm256_cvtepi32_ps(dot_u8_lanes(nib32(w + 4), ld256(r)));
            acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(f), dot, acc);
            am = _mm_add_ps(am, f);
        }
        return hsum8(acc) + _mm_cvtss_f32(_mm_movehdup_ps(am));
    }
    case AP_GGML_Q5_0: {
        const __m256i off = _mm256_set1_epi8(16);
        for (int b = 0; b < nb32; b++, w += 22, r += 32) {
            __m256i q = _mm256_sub_epi8(_mm256_or_si256(nib32(w + 6), q5_hbits(rd32(w + 2))), off);
            __m256 dot = _mm256_cvtepi32_ps(dot_i8_lanes(q, ld256(r)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f_avx2(w) * v->qds[2 * b]), dot, acc);
        }
        return hsum8(acc);
    }
    case AP_GGML_Q5_1: {
        __m128 am = _mm_setzero_ps();
        for (int b = 0; b < nb32; b++, w += 24, r += 32) {
            __m128 f = _mm_mul_ps(dm_pair(w), ld_pair(v->qds + 2 * b));
            __m256i q = _mm256_or_si256(nib32(w + 8), q5_hbits(rd32(w + 4)));
            __m256 dot = _mm256_cvtepi32_ps(dot_u8_lanes(q, ld256(r)));
            acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(f), dot, acc);
            am = _mm_add_ps(am, f);
        }
        return hsum8(acc) + _mm_cvtss_f32(_mm_movehdup_ps(am));
    }
    case AP_GGML_Q8_0:
        for (int b = 0; b < nb32; b++, w += 34, r += 32) {
            __m256 dot = _mm256_cvtepi32_ps(dot_i8_lanes(ld256(w + 2), ld256(r)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f_avx2(w) * v->qds[2 * b]), dot, acc);
        }
        return hsum8(acc);
    case AP_GGML_Q4_K: {
        const __m256i m4 = _mm256_set1_epi8(15);
        for (int b = 0; b < nb32 / 8; b++, w += 144) {
            const float d = h2f_avx2(w), dmin = h2f_avx2(w + 2);
            for (int g = 0; g < 4; g++, r += 64) {
                int s0, m0, s1, m1;
                k4_scale_min(2 * g, w + 4, &s0, &m0);
                k4_scale_min(2 * g + 1, w + 4, &s1, &m1);
                __m256i raw = ld256(w + 16 + 32 * g);
                __m256i lo = _mm256_and_si256(raw, m4);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                const int xb = 8 * b + 2 * g;
                __m256 d_lo = _mm256_cvtepi32_ps(dot_u8_lanes(lo, ld256(r)));
                __m256 d_hi = _mm256_cvtepi32_ps(dot_u8_lanes(hi, ld256(r + 32)));
                acc = _mm256_fmadd_ps(_mm256_set1_ps((d * (float)s0) * v->qds[2 * xb]), d_lo, acc);
                acc = _mm256_fmadd_ps(_mm256_set1_ps((d * (float)s1) * v->qds[2 * xb + 2]), d_hi,
                                      acc);
                accm += (dmin * (float)m0) * (v->qds[2 * xb + 1]) +
                        (dmin * (float)m1) * (v->qds[2 * xb + 3]);
            }
        }
        return hsum8(acc) - accm;
    }
    case AP_GGML_Q6_K: {
        const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3);
        const __m256i off = _mm256_set1_epi8(32);
        for (int b = 0; b < nb32 / 8; b++, w += 210) {
            const float d = h2f_avx2(w + 208);
            for (int h = 0; h < 2; h++) {
                const uint8_t *ql = w + 64 * h, *qh = w + 128 + 32 * h;
                const int8_t *sc = (const int8_t *)(w + 192 + 8 * h);
                __m256i l0 = ld256(ql), l1 = ld256(ql + 32), hb = ld256(qh);
                __m256i q[4];
                q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                       _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4));
                q[1] = _mm256_or_si256(
                    _mm256_and_si256(l1, m4),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4));
                q[2] = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4));
                q[3] = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4));
                for (int k = 0; k < 4; k++, r += 32) {
                    __m256i qs = _mm256_sub_epi8(q[k], off);
                    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(qs, qs),
                                                       _mm256_sign_epi8(ld256(r), qs));
                    /* Lower 128-bit lane: elements 0..15 of the quarter,
                     * upper: 16..31, each with its own scale. */
                    __m256i sc16 =
                        _mm256_set_m128i(_mm_set1_epi16(sc[2 * k + 1]), _mm_set1_epi16(sc[2 * k]));
                    __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, sc16));
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * v->qds[2 * (8 * b + 4 * h + k)]), dot,
                                          acc);
                }
            }
        }
        return hsum8(acc);
    }
    default: return 0.0f;
    }
}

/* ----------------------------------------------- AVX2 dequantization */

/* Element order and rounding as in kernels/quant.c: (float)q * d, then + m
 * as a separate add (never an FMA), so the bits match ap_dequant_row. */
AVX2_FN static void deq_rows_avx2(ap_ggml_type type, const uint8_t *src, float *dst, int nb) {
    const __m256i m4 = _mm256_set1_epi32(15), off = _mm256_set1_epi32(8);
    for (int b = 0; b < nb; b++, dst += 32) {
        __m256 q[4];
        __m256 d, m = _mm256_setzero_ps();
        if (type == AP_GGML_Q8_0) {
            const uint8_t *blk = src + (size_t)b * 34;
            d = _mm256_set1_ps(h2f_avx2(blk));
            for (int k = 0; k < 4; k++) q[k] = _mm256_cvtepi32_ps(i8x8(blk + 2 + 8 * k));
        } else if (type == AP_GGML_Q5_0 || type == AP_GGML_Q5_1) {
            const int q51 = type == AP_GGML_Q5_1;
            const uint8_t *blk = src + (size_t)b * (q51 ? 24 : 22);
            __m256i n[4];
            q5_lanes(blk + (q51 ? 8 : 6), rd32(blk + (q51 ? 4 : 2)), n);
            d = _mm256_set1_ps(h2f_avx2(blk));
            if (q51) m = _mm256_set1_ps(h2f_avx2(blk + 2));
            const __m256i off16 = _mm256_set1_epi32(16);
            for (int k = 0; k < 4; k++)
                q[k] = _mm256_cvtepi32_ps(q51 ? n[k] : _mm256_sub_epi32(n[k], off16));
        } else {
            const int q41 = type == AP_GGML_Q4_1;
            const uint8_t *blk = src + (size_t)b * (q41 ? 20 : 18);
            const uint8_t *qs = blk + (q41 ? 4 : 2);
            d = _mm256_set1_ps(h2f_avx2(blk));
            if (q41) m = _mm256_set1_ps(h2f_avx2(blk + 2));
            __m256i b0 = u8x8(qs), b1 = u8x8(qs + 8);
            __m256i n[4] = {_mm256_and_si256(b0, m4), _mm256_and_si256(b1, m4),
                            _mm256_srli_epi32(b0, 4), _mm256_srli_epi32(b1, 4)};
            for (int k = 0; k < 4; k++)
                q[k] = _mm256_cvtepi32_ps(q41 ? n[k] : _mm256_sub_epi32(n[k], off));
        }
        for (int k = 0; k < 4; k++) {
            __m256 v = _mm256_mul_ps(q[k], d);
            if (type == AP_GGML_Q4_1 || type == AP_GGML_Q5_1) v = _mm256_add_ps(v, m);
            _mm256_storeu_ps(dst + 8 * k, v);
        }
    }
}

#endif /* AP_HAVE_X86 */

void ap_qmat_dequant_rows(const ap_qmat *w, int row0, int row1, float *dst, ap_qisa isa) {
    const uint8_t *base = w->data;
#if AP_HAVE_X86
    if (ap_qisa_resolve(isa) == AP_QISA_AVX2 &&
        (w->type == AP_GGML_Q4_0 || w->type == AP_GGML_Q4_1 || w->type == AP_GGML_Q5_0 ||
         w->type == AP_GGML_Q5_1 || w->type == AP_GGML_Q8_0)) {
        for (int r = row0; r < row1; r++)
            deq_rows_avx2(w->type, base + (size_t)r * w->row_bytes,
                          dst + (size_t)(r - row0) * w->n_in, w->n_in / 32);
        return;
    }
#endif
    (void)isa;
    for (int r = row0; r < row1; r++)
        ap_dequant_row(w->type, base + (size_t)r * w->row_bytes, dst + (size_t)(r - row0) * w->n_in,
                       w->n_in, NULL);
}

/* ============================================================ dispatch */

/* Decode GEN_CHUNK elements at a time with the dequantizer (exactly its
 * values), then a float dot. */
static float row_generic(const ap_qmat *w, const uint8_t *row, const float *x, ap_qisa isa) {
    float buf[GEN_CHUNK];
    const ap_ggml_traits *tr = ap_ggml_type_traits((uint32_t)w->type);
    float s = 0.0f;
    for (int i0 = 0; i0 < w->n_in; i0 += GEN_CHUNK) {
        int n = w->n_in - i0 < GEN_CHUNK ? w->n_in - i0 : GEN_CHUNK;
        size_t off = (size_t)(i0 / tr->block_size) * (size_t)tr->type_size;
        ap_dequant_row(w->type, row + off, buf, n, NULL);
#if AP_HAVE_X86
        if (isa == AP_QISA_AVX2) {
            s += dot_f32_avx2(buf, x + i0, n);
            continue;
        }
#endif
        s += dot_f32_scalar(buf, x + i0, n);
    }
    return s;
}

static float row_dot(const ap_qmat *w, const uint8_t *row, const ap_qvec *v) {
    const int n = w->n_in;
    const float *x = v->x;
    const int use_q8 = v->mode == AP_QACT_Q8 && ap_qmatvec_q8_supported(w->type);
#if AP_HAVE_X86
    if (v->isa == AP_QISA_AVX2) {
        if (use_q8) return row_q8act_avx2(w->type, row, v, n / 32);
        switch (w->type) {
        case AP_GGML_F32: return dot_f32_avx2((const float *)(const void *)row, x, n);
        case AP_GGML_F16: return row_f16_avx2(row, x, n);
        case AP_GGML_Q4_0: return row_q4_0_avx2(row, x, n / 32);
        case AP_GGML_Q4_1: return row_q4_1_avx2(row, x, v->bsum, n / 32);
        case AP_GGML_Q5_0: return row_q5_0_avx2(row, x, n / 32);
        case AP_GGML_Q5_1: return row_q5_1_avx2(row, x, v->bsum, n / 32);
        case AP_GGML_Q8_0: return row_q8_0_avx2(row, x, n / 32);
        case AP_GGML_Q4_K: return row_q4_k_avx2(row, x, v->bsum, n / 256);
        case AP_GGML_Q6_K: return row_q6_k_avx2(row, x, n / 256);
        default: return row_generic(w, row, x, v->isa);
        }
    }
#endif
    if (use_q8) return row_q8act_scalar(w->type, row, v, n / 32);
    switch (w->type) {
    case AP_GGML_F32: {
        /* The row may be unaligned for float in principle (it never is in
         * GGUF data): dot through memcpy'd pieces would cost more than the
         * generic path, which already copies. */
        if (((uintptr_t)row & (sizeof(float) - 1)) == 0)
            return dot_f32_scalar((const float *)(const void *)row, x, n);
        return row_generic(w, row, x, v->isa);
    }
    case AP_GGML_F16: return row_f16_scalar(row, x, n);
    case AP_GGML_Q4_0: return row_q4_0_scalar(row, x, n / 32);
    case AP_GGML_Q4_1: return row_q4_1_scalar(row, x, v->bsum, n / 32);
    case AP_GGML_Q5_0: return row_q5_0_scalar(row, x, n / 32);
    case AP_GGML_Q5_1: return row_q5_1_scalar(row, x, v->bsum, n / 32);
    case AP_GGML_Q8_0: return row_q8_0_scalar(row, x, n / 32);
    case AP_GGML_Q4_K: return row_q4_k_scalar(row, x, v->bsum, n / 256);
    case AP_GGML_Q6_K: return row_q6_k_scalar(row, x, n / 256);
    default: return row_generic(w, row, x, v->isa);
    }
}

void ap_qmatvec(const ap_qmat *w, const ap_qvec *x, float *y, int row0, int row1, int accumulate) {
    const uint8_t *base = w->data;
    for (int r = row0; r < row1; r++) {
        float s = row_dot(w, base + (size_t)r * w->row_bytes, x);
        y[r] = accumulate ? y[r] + s : s;
    }
}

void ap_qmatvec_ref(const ap_qmat *w, const ap_qvec *x, float *y, int row0, int row1,
                    int accumulate) {
    const uint8_t *base = w->data;
    const int n = w->n_in;
    const int use_q8 = x->mode == AP_QACT_Q8 && ap_qmatvec_q8_supported(w->type);
    float *wrow = malloc((size_t)n * sizeof *wrow);
    if (!wrow) return; /* tests only; a NULL here shows up as a mismatch */
    for (int r = row0; r < row1; r++) {
        ap_dequant_row_ref(w->type, base + (size_t)r * w->row_bytes, wrow, n, NULL);
        double acc = accumulate ? (double)y[r] : 0.0;
        for (int i = 0; i < n; i++) {
            double xv = use_q8 ? (double)x->qds[2 * (i / 32)] * (double)x->q[i] : (double)x->x[i];
            acc += (double)wrow[i] * xv;
        }
        y[r] = (float)acc;
    }
    free(wrow);
}

/* ============================================================ K/V cache */

size_t ap_kv_type_size(ap_kv_type t) { return t == AP_KV_F16 ? 2 : 4; }

const char *ap_kv_type_name(ap_kv_type t) { return t == AP_KV_F16 ? "f16" : "f32"; }

int ap_kv_type_parse(const char *s, ap_kv_type *t) {
    if (!s) return -1;
    if (!strcmp(s, "f32")) *t = AP_KV_F32;
    else if (!strcmp(s, "f16")) *t = AP_KV_F16;
    else return -1;
    return 0;
}


/* Element i of a cache row as float32 (exact for both types). */
static inline float kv_elt(const void *base, ap_kv_type t, size_t i) {
    return t == AP_KV_F16 ? ap_fp16_to_fp32(((const uint16_t *)base)[i])
                          : ((const float *)base)[i];
}

static void kv_load_row_scalar(float *dst, const void *src, ap_kv_type t, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = kv_elt(src, t, i);
}

static void kv_scores_scalar(const float *q, int n_heads, int hd, const void *k, ap_kv_type kt,
                             size_t ldk, int n_keys, float scale, float *s, size_t lds) {
    for (int j = 0; j < n_keys; j++) {
        const size_t kj = (size_t)j * ldk;
        for (int h = 0; h < n_heads; h++) {
            const float *qh = q + (size_t)h * hd;
            float acc = 0.0f;
            for (int d = 0; d < hd; d++) acc += qh[d] * kv_elt(k, kt, kj + (size_t)d);
            s[(size_t)h * lds + j] = scale * acc;
        }
    }
}

static void kv_mix_scalar(const float *p, size_t ldp, int n_heads, const void *v, ap_kv_type kt,
                          size_t ldv, int n_keys, int hd, float *o, int accumulate) {
    for (int h = 0; h < n_heads; h++) {
        float *oh = o + (size_t)h * hd;
        if (!accumulate) memset(oh, 0, (size_t)hd * sizeof *oh);
        for (int j = 0; j < n_keys; j++) {
            const float pj = p[(size_t)h * ldp + j];
            const size_t vj = (size_t)j * ldv;
            for (int d = 0; d < hd; d++) oh[d] += pj * kv_elt(v, kt, vj + (size_t)d);
        }
    }
}

#if AP_HAVE_X86
/* Rows ahead that the K/V loops prefetch: one head's cache rows are strided
 * (256 of every 768 bytes in the default model), which the hardware
 * prefetcher follows poorly. At 8K keys, 8, 16 and 32 rows all cut the
 * scores' time by about a third; 16 leaves room for a faster machine. */
#define KV_PREFETCH 16
#define AVX2_INLINE AVX2_FN static inline __attribute__((always_inline))

/* Eight cache elements from element i as float32. The kernels below are
 * written once over this load and instantiated per type with a constant
 * f16, so each instance has no per-load branch. */
AVX2_INLINE __m256 kv_ld8(const void *base, size_t i, int f16) {
    if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
    return _mm256_loadu_ps((const float *)base + i);
}

AVX2_INLINE void kv_prefetch(const void *base, size_t i, int f16) {
    _mm_prefetch((const char *)base + i * (f16 ? 2 : 4), _MM_HINT_T0);
}

/* Four keys at a time per head: the four key rows stay in L1 while every
 * head of the group reads them, so the cache streams from memory once. */
AVX2_INLINE void kv_scores_avx2_t(const float *q, int n_heads, int hd, const void *k, size_t ldk,
                                  int n_keys, float scale, float *s, size_t lds, int f16) {
    const __m128 vs = _mm_set1_ps(scale);
    const int pf_step = f16 ? 32 : 16; /* elements per 64-byte line */
    int j = 0;
    for (; j + 4 <= n_keys; j += 4) {
        const size_t k0 = (size_t)j * ldk, k1 = k0 + ldk, k2 = k1 + ldk, k3 = k2 + ldk;
        if (j + KV_PREFETCH + 4 <= n_keys)
            for (int r = 0; r < 4; r++)
                for (int d = 0; d < hd; d += pf_step)
                    kv_prefetch(k, k0 + (size_t)(KV_PREFETCH + r) * ldk + (size_t)d, f16);
        for (int h = 0; h < n_heads; h++) {
            const float *qh = q + (size_t)h * hd;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            for (int d = 0; d < hd; d += 8) {
                __m256 qv = _mm256_loadu_ps(qh + d);
                a0 = _mm256_fmadd_ps(qv, kv_ld8(k, k0 + (size_t)d, f16), a0);
                a1 = _mm256_fmadd_ps(qv, kv_ld8(k, k1 + (size_t)d, f16), a1);
                a2 = _mm256_fmadd_ps(qv, kv_ld8(k, k2 + (size_t)d, f16), a2);
                a3 = _mm256_fmadd_ps(qv, kv_ld8(k, k3 + (size_t)d, f16), a3);
            }
            __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
            __m128 r = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
            _mm_storeu_ps(s + (size_t)h * lds + j, _mm_mul_ps(vs, r));
        }
    }
    for (; j < n_keys; j++) {
        const size_t kj = (size_t)j * ldk;
        for (int h = 0; h < n_heads; h++) {
            const float *qh = q + (size_t)h * hd;
            __m256 a0 = _mm256_setzero_ps();
            for (int d = 0; d < hd; d += 8)
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + d), kv_ld8(k, kj + (size_t)d, f16), a0);
            s[(size_t)h * lds + j] = scale * hsum8(a0);
        }
    }
}

/* One head at a time, up to 64 dimensions in eight accumulators: each key
 * reads its value row front to back (a pass over dimension slices instead
 * would miss on every row every pass). The first head's pass brings the
 * chunk's rows in; the other heads of the group find them in L2. */
AVX2_INLINE void kv_mix_avx2_t(const float *p, size_t ldp, int n_heads, const void *v, size_t ldv,
                               int n_keys, int hd, float *o, int accumulate, int f16) {
    const int pf_step = f16 ? 32 : 16;
    for (int h = 0; h < n_heads; h++) {
        const float *ph = p + (size_t)h * ldp;
        for (int d0 = 0; d0 < hd; d0 += 64) {
            const int nd = hd - d0 < 64 ? (hd - d0) / 8 : 8;
            __m256 a[8];
            for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
            size_t vd = (size_t)d0;
            if (nd == 8) {
                for (int j = 0; j < n_keys; j++, vd += ldv) {
                    if (h == 0 && j + KV_PREFETCH < n_keys)
                        for (int d = 0; d < 64; d += pf_step)
                            kv_prefetch(v, vd + KV_PREFETCH * ldv + (size_t)d, f16);
                    __m256 b = _mm256_broadcast_ss(ph + j);
                    a[0] = _mm256_fmadd_ps(b, kv_ld8(v, vd, f16), a[0]);
                    a[1] = _mm256_fmadd_ps(b, kv_ld8(v, vd + 8, f16), a[1]);
                    a[2] = _mm256_fmadd_ps(b, kv_ld8(v, vd + 16, f16), a[2]);
                    a[3] = _mm256_fmadd_ps(b, kv_ld8(v, vd + 24, f16), a[3]);
                    a[4] = _mm256_fmadd_ps(b, kv_ld8(v, vd + 32, f16), a[4]);
                    a[5] = _mm256_fmadd_ps(b, kv_ld8(v, vd + 40, f16), a[5]);
                    a[6] = _mm256_fmadd_ps(b, kv_ld8(v, vd + 48, f16), a[6]);
                    a[7] = _mm256_fmadd_ps(b, kv_ld8(v, vd + 56, f16), a[7]);
                }
            } else {
                for (int j = 0; j < n_keys; j++, vd += ldv) {
                    __m256 b = _mm256_broadcast_ss(ph + j);
                    for (int i = 0; i < nd; i++)
                        a[i] = _mm256_fmadd_ps(b, kv_ld8(v, vd + 8 * (size_t)i, f16), a[i]);
                }
            }
            float *oh = o + (size_t)h * hd + d0;
            for (int i = 0; i < nd; i++) {
                __m256 r = a[i];
                if (accumulate) r = _mm256_add_ps(r, _mm256_loadu_ps(oh + 8 * i));
                _mm256_storeu_ps(oh + 8 * i, r);
            }
        }
    }
}

AVX2_FN static void kv_scores_avx2_f32(const float *q, int n_heads, int hd, const void *k,
                                       size_t ldk, int n_keys, float scale, float *s, size_t lds) {
    kv_scores_avx2_t(q, n_heads, hd, k, ldk, n_keys, scale, s, lds, 0);
}
AVX2_FN static void kv_scores_avx2_f16(const float *q, int n_heads, int hd, const void *k,
                                       size_t ldk, int n_keys, float scale, float *s, size_t lds) {
    kv_scores_avx2_t(q, n_heads, hd, k, ldk, n_keys, scale, s, lds, 1);
}
AVX2_FN static void kv_mix_avx2_f32(const float *p, size_t ldp, int n_heads, const void *v,
                                    size_t ldv, int n_keys, int hd, float *o, int accumulate) {
    kv_mix_avx2_t(p, ldp, n_heads, v, ldv, n_keys, hd, o, accumulate, 0);
}
AVX2_FN static void kv_mix_avx2_f16(const float *p, size_t ldp, int n_heads, const void *v,
                                    size_t ldv, int n_keys, int hd, float *o, int accumulate) {
    kv_mix_avx2_t(p, ldp, n_heads, v, ldv, n_keys, hd, o, accumulate, 1);
}

AVX2_FN static void kv_load_row_f16_avx2(float *dst, const uint16_t *src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = ap_fp16_to_fp32(src[i]);
}

AVX2_FN static void kv_store_row_f16_avx2(uint16_t *dst, const float *src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) dst[i] = ap_fp32_to_fp16(src[i]);
}
#endif

void ap_kv_store_row(void *dst, ap_kv_type t, const float *src, size_t n, ap_qisa isa) {
    if (t == AP_KV_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
#if AP_HAVE_X86
    if (ap_qisa_resolve(isa) == AP_QISA_AVX2) {
        kv_store_row_f16_avx2(dst, src, n);
        return;
    }
#endif
    (void)isa;
    uint16_t *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = ap_fp32_to_fp16(src[i]);
}

void ap_kv_load_row(float *dst, const void *src, ap_kv_type t, size_t n, ap_qisa isa) {
#if AP_HAVE_X86
    if (t == AP_KV_F16 && ap_qisa_resolve(isa) == AP_QISA_AVX2) {
        kv_load_row_f16_avx2(dst, src, n);
        return;
    }
#endif
    (void)isa;
    kv_load_row_scalar(dst, src, t, n);
}

void ap_kv_scores(const float *q, int n_heads, int hd, const void *k, ap_kv_type kt, size_t ldk,
                  int n_keys, float scale, float *s, size_t lds, ap_qisa isa) {
#if AP_HAVE_X86
    if (ap_qisa_resolve(isa) == AP_QISA_AVX2 && hd % 8 == 0) {
        (kt == AP_KV_F16 ? kv_scores_avx2_f16 : kv_scores_avx2_f32)(q, n_heads, hd, k, ldk, n_keys,
                                                                    scale, s, lds);
        return;
    }
#endif
    (void)isa;
    kv_scores_scalar(q, n_heads, hd, k, kt, ldk, n_keys, scale, s, lds);
}

void ap_kv_mix(const float *p, size_t ldp, int n_heads, const void *v, ap_kv_type kt, size_t ldv,
               int n_keys, int hd, float *o, int accumulate, ap_qisa isa) {
#if AP_HAVE_X86
    if (ap_qisa_resolve(isa) == AP_QISA_AVX2 && hd % 8 == 0) {
        (kt == AP_KV_F16 ? kv_mix_avx2_f16 : kv_mix_avx2_f32)(p, ldp, n_heads, v, ldv, n_keys, hd, o,
                                                              accumulate);
        return;
    }
#endif
    (void)isa;
    kv_mix_scalar(p, ldp, n_heads, v, kt, ldv, n_keys, hd, o, accumulate);
}

void ap_kv_scores_ref(const float *q, int n_heads, int hd, const void *k, ap_kv_type kt,
                      size_t ldk, int n_keys, float scale, float *s, size_t lds) {
    for (int h = 0; h < n_heads; h++) {
        for (int j = 0; j < n_keys; j++) {
            double acc = 0.0;
            for (int d = 0; d < hd; d++)
                acc += (double)q[(size_t)h * hd + d] *
                       (double)kv_elt(k, kt, (size_t)j * ldk + (size_t)d);
            s[(size_t)h * lds + j] = (float)(acc * (double)scale);
        }
    }
}

void ap_kv_mix_ref(const float *p, size_t ldp, int n_heads, const void *v, ap_kv_type kt,
                   size_t ldv, int n_keys, int hd, float *o, int accumulate) {
    for (int h = 0; h < n_heads; h++) {
        for (int d = 0; d < hd; d++) {
            double acc = accumulate ? (double)o[(size_t)h * hd + d] : 0.0;
            for (int j = 0; j < n_keys; j++)
                acc += (double)p[(size_t)h * ldp + j] *
                       (double)kv_elt(v, kt, (size_t)j * ldv + (size_t)d);
            o[(size_t)h * hd + d] = (float)acc;
        }
    }
}
