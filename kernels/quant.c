/* ggml tensor types: traits table, half-precision conversions, dequantization.
 *
 * Two dequantizers live here on purpose. ap_dequant_row works a block at a
 * time with short fixed-trip loops the compiler can vectorise;
 * ap_dequant_row_ref recomputes every element independently from the layout
 * description, so a layout mistake in one is unlikely to be repeated in the
 * other. Both must give bit-identical results, which is why every product and
 * sum below is a separate statement in the same order in both: keeping the
 * float operations in one fixed order (and never letting a compiler fuse
 * a*b+c into one FMA inside a single expression) is what makes exact
 * comparison, and comparison against numpy's gguf-py, meaningful. */
#include "kernels/quant.h"

#include <string.h>

/* ---- traits ---- */

/* Indexed by ggml type id. Ids ggml removed (Q4_2, Q4_3, the repacked
 * Q4_0_x_y / IQ4_NL_x_y layouts) have no name: files using them are rejected
 * like unknown ids, as ggml's reader does. */
static const ap_ggml_traits k_traits[AP_GGML_TYPE_COUNT] = {
    [0] = {"F32", 1, 4, 1},
    [1] = {"F16", 1, 2, 1},
    [2] = {"Q4_0", 32, 18, 1},
    [3] = {"Q4_1", 32, 20, 1},
    [6] = {"Q5_0", 32, 22, 1},
    [7] = {"Q5_1", 32, 24, 1},
    [8] = {"Q8_0", 32, 34, 1},
    [9] = {"Q8_1", 32, 36, 0},
    [10] = {"Q2_K", 256, 84, 0},
    [11] = {"Q3_K", 256, 110, 0},
    [12] = {"Q4_K", 256, 144, 1},
    [13] = {"Q5_K", 256, 176, 1},
    [14] = {"Q6_K", 256, 210, 1},
    [15] = {"Q8_K", 256, 292, 0},
    [16] = {"IQ2_XXS", 256, 66, 0},
    [17] = {"IQ2_XS", 256, 74, 0},
    [18] = {"IQ3_XXS", 256, 98, 0},
    [19] = {"IQ1_S", 256, 50, 0},
    [20] = {"IQ4_NL", 32, 18, 0},
    [21] = {"IQ3_S", 256, 110, 0},
    [22] = {"IQ2_S", 256, 82, 0},
    [23] = {"IQ4_XS", 256, 136, 0},
    [24] = {"I8", 1, 1, 0},
    [25] = {"I16", 1, 2, 0},
    [26] = {"I32", 1, 4, 0},
    [27] = {"I64", 1, 8, 0},
    [28] = {"F64", 1, 8, 0},
    [29] = {"IQ1_M", 256, 56, 0},
    [30] = {"BF16", 1, 2, 1},
    [34] = {"TQ1_0", 256, 54, 0},
    [35] = {"TQ2_0", 256, 66, 0},
    [39] = {"MXFP4", 32, 17, 0},
};

const ap_ggml_traits *ap_ggml_type_traits(uint32_t type) {
    if (type >= AP_GGML_TYPE_COUNT || k_traits[type].name == NULL) return NULL;
    return &k_traits[type];
}

size_t ap_ggml_row_size(uint32_t type, int64_t n) {
    const ap_ggml_traits *tr = ap_ggml_type_traits(type);
    if (!tr || n < 0 || n % tr->block_size != 0) return 0;
    size_t bytes;
    if (__builtin_mul_overflow((uint64_t)(n / tr->block_size), (uint64_t)tr->type_size, &bytes))
        return 0;
    return bytes;
}

/* ---- half precision ---- */

static inline float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float ap_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        /* Keep the NaN payload so fp32 -> fp16 can give the same half back. */
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {
        /* Subnormal half: every one is a normal float; shift the leading one
         * into the implicit-bit position. */
        uint32_t e = 113u;
        while (!(mant & 0x400u)) {
            mant <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
    }
    return f32_from_bits(bits);
}

uint16_t ap_fp32_to_fp16(float f) {
    uint32_t bits = f32_bits(f);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t exp = (bits >> 23) & 0xffu;
    uint32_t mant = bits & 0x7fffffu;
    if (exp == 0xff) {
        if (mant == 0) return (uint16_t)(sign | 0x7c00u);
        uint32_t m = mant >> 13;
        /* A payload living only in the low bits would turn into infinity. */
        if (m == 0) m = 0x200u;
        return (uint16_t)(sign | 0x7c00u | m);
    }
    int e = (int)exp - 127 + 15; /* half exponent field if the value were normal */
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        /* Result is a half subnormal (or zero): count units of 2^-24. Values
         * below 2^-25 round to zero even at the tie. */
        if (e < -10) return sign;
        uint32_t full = mant | 0x800000u;
        int shift = 14 - e; /* 14..24 */
        uint32_t q = full >> shift;
        uint32_t rem = full & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        /* q == 0x400 is the smallest normal: the bit pattern is already right. */
        return (uint16_t)(sign | q);
    }
    uint32_t h = ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    /* A carry out of the mantissa bumps the exponent, up to infinity. */
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

float ap_bf16_to_fp32(uint16_t h) {
    return f32_from_bits((uint32_t)h << 16);
}

/* ---- block helpers ---- */

static inline uint16_t rd16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline float rdh(const uint8_t *p) {
    return ap_fp16_to_fp32(rd16(p));
}

/* The 6-bit (scale, min) pair of sub-block j in the 12 packed bytes of a
 * Q4_K/Q5_K block: the first four pairs sit in the low 6 bits of bytes 0..7,
 * the last four borrow the top 2 bits of those bytes for their high bits. */
static inline void k4_scale_min(int j, const uint8_t *s, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* ---- fast path: block at a time ---- */

static void deq_q4_0(const uint8_t *b, float *y) {
    float d = rdh(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = (float)((qs[j] & 15) - 8) * d;
        y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
    }
}

static void deq_q4_1(const uint8_t *b, float *y) {
    float d = rdh(b);
    float m = rdh(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        float a0 = (float)(qs[j] & 15) * d;
        float a1 = (float)(qs[j] >> 4) * d;
        y[j] = a0 + m;
        y[j + 16] = a1 + m;
    }
}

static void deq_q5_0(const uint8_t *b, float *y) {
    float d = rdh(b);
    uint32_t qh = rd32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        int h0 = (int)((qh >> j) & 1u) << 4;
        int h1 = (int)((qh >> (j + 16)) & 1u) << 4;
        y[j] = (float)(((qs[j] & 15) | h0) - 16) * d;
        y[j + 16] = (float)(((qs[j] >> 4) | h1) - 16) * d;
    }
}

static void deq_q5_1(const uint8_t *b, float *y) {
    float d = rdh(b);
    float m = rdh(b + 2);
    uint32_t qh = rd32(b + 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < 16; j++) {
        int h0 = (int)((qh >> j) & 1u) << 4;
        int h1 = (int)((qh >> (j + 16)) & 1u) << 4;
        float a0 = (float)((qs[j] & 15) | h0) * d;
        float a1 = (float)((qs[j] >> 4) | h1) * d;
        y[j] = a0 + m;
        y[j + 16] = a1 + m;
    }
}

static void deq_q8_0(const uint8_t *b, float *y) {
    float d = rdh(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++) y[j] = (float)qs[j] * d;
}

static void deq_q4_k(const uint8_t *b, float *y) {
    float d = rdh(b);
    float dmin = rdh(b + 2);
    const uint8_t *sc = b + 4;
    const uint8_t *q = b + 16;
    for (int g = 0; g < 4; g++) { /* 64 values per 32 bytes */
        int s0, m0, s1, m1;
        k4_scale_min(2 * g, sc, &s0, &m0);
        k4_scale_min(2 * g + 1, sc, &s1, &m1);
        float d0 = d * (float)s0, c0 = dmin * (float)m0;
        float d1 = d * (float)s1, c1 = dmin * (float)m1;
        for (int l = 0; l < 32; l++) {
            float a0 = d0 * (float)(q[l] & 15);
            float a1 = d1 * (float)(q[l] >> 4);
            y[l] = a0 - c0;
            y[l + 32] = a1 - c1;
        }
        q += 32;
        y += 64;
    }
}

static void deq_q5_k(const uint8_t *b, float *y) {
    float d = rdh(b);
    float dmin = rdh(b + 2);
    const uint8_t *sc = b + 4;
    const uint8_t *qh = b + 16;
    const uint8_t *q = b + 48;
    for (int g = 0; g < 4; g++) {
        int s0, m0, s1, m1;
        k4_scale_min(2 * g, sc, &s0, &m0);
        k4_scale_min(2 * g + 1, sc, &s1, &m1);
        float d0 = d * (float)s0, c0 = dmin * (float)m0;
        float d1 = d * (float)s1, c1 = dmin * (float)m1;
        for (int l = 0; l < 32; l++) {
            int h0 = ((qh[l] >> (2 * g)) & 1) << 4;
            int h1 = ((qh[l] >> (2 * g + 1)) & 1) << 4;
            float a0 = d0 * (float)((q[l] & 15) | h0);
            float a1 = d1 * (float)((q[l] >> 4) | h1);
            y[l] = a0 - c0;
            y[l + 32] = a1 - c1;
        }
        q += 32;
        y += 64;
    }
}

static void deq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b;
    const uint8_t *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = rdh(b + 208);
    for (int half = 0; half < 2; half++) {
        float ds[8];
        for (int k = 0; k < 8; k++) ds[k] = d * (float)sc[k];
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = ds[is] * (float)q1;
            y[l + 32] = ds[is + 2] * (float)q2;
            y[l + 64] = ds[is + 4] * (float)q3;
            y[l + 96] = ds[is + 6] * (float)q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

static ap_status check_args(ap_ggml_type type, const void *src, float *dst, int64_t n,
                            const ap_ggml_traits **tr_out, ap_err *err) {
    const ap_ggml_traits *tr = ap_ggml_type_traits((uint32_t)type);
    if (!tr)
        return ap_errf(err, AP_ERR_UNSUPPORTED, "dequantize: unknown ggml type id %d", (int)type);
    if (!tr->dequant_ok)
        return ap_errf(err, AP_ERR_UNSUPPORTED, "dequantize: tensor type %s is not supported",
                       tr->name);
    if (n < 0 || n % tr->block_size != 0)
        return ap_errf(err, AP_ERR_ARG,
                       "dequantize: %lld elements is not a multiple of the %s block size %d",
                       (long long)n, tr->name, tr->block_size);
    if (n > 0 && (!src || !dst))
        return ap_errf(err, AP_ERR_ARG, "dequantize: NULL buffer");
    *tr_out = tr;
    return AP_OK;
}

ap_status ap_dequant_row(ap_ggml_type type, const void *src, float *dst, int64_t n, ap_err *err) {
    const ap_ggml_traits *tr = NULL;
    ap_status st = check_args(type, src, dst, n, &tr, err);
    if (st != AP_OK) return st;
    const uint8_t *s = src;
    int64_t nb = n / tr->block_size;
    switch (type) {
    case AP_GGML_F32:
        if (n > 0) memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case AP_GGML_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = ap_fp16_to_fp32(rd16(s + 2 * i));
        break;
    case AP_GGML_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = ap_bf16_to_fp32(rd16(s + 2 * i));
        break;
    case AP_GGML_Q4_0:
        for (int64_t i = 0; i < nb; i++) deq_q4_0(s + i * 18, dst + i * 32);
        break;
    case AP_GGML_Q4_1:
        for (int64_t i = 0; i < nb; i++) deq_q4_1(s + i * 20, dst + i * 32);
        break;
    case AP_GGML_Q5_0:
        for (int64_t i = 0; i < nb; i++) deq_q5_0(s + i * 22, dst + i * 32);
        break;
    case AP_GGML_Q5_1:
        for (int64_t i = 0; i < nb; i++) deq_q5_1(s + i * 24, dst + i * 32);
        break;
    case AP_GGML_Q8_0:
        for (int64_t i = 0; i < nb; i++) deq_q8_0(s + i * 34, dst + i * 32);
        break;
    case AP_GGML_Q4_K:
        for (int64_t i = 0; i < nb; i++) deq_q4_k(s + i * 144, dst + i * 256);
        break;
    case AP_GGML_Q5_K:
        for (int64_t i = 0; i < nb; i++) deq_q5_k(s + i * 176, dst + i * 256);
        break;
    case AP_GGML_Q6_K:
        for (int64_t i = 0; i < nb; i++) deq_q6_k(s + i * 210, dst + i * 256);
        break;
    default:
        return ap_errf(err, AP_ERR_INTERNAL, "dequantize: type %s marked supported but not handled",
                       tr->name);
    }
    return AP_OK;
}

/* ---- reference: one element at a time, straight from the layout ---- */

/* Element k (0..31) of a 32-weight block with nibbles in qs[16]: the low
 * nibbles hold elements 0..15, the high nibbles 16..31. */
static int nib32(const uint8_t *qs, int k) {
    return k < 16 ? (qs[k] & 15) : (qs[k - 16] >> 4);
}

static float ref_elem(ap_ggml_type type, const uint8_t *b, int k) {
    switch (type) {
    case AP_GGML_Q4_0: {
        float d = rdh(b);
        int q = nib32(b + 2, k) - 8;
        return (float)q * d;
    }
    case AP_GGML_Q4_1: {
        float d = rdh(b), m = rdh(b + 2);
        float a = (float)nib32(b + 4, k) * d;
        return a + m;
    }
    case AP_GGML_Q5_0: {
        float d = rdh(b);
        uint32_t qh = rd32(b + 2);
        int q = nib32(b + 6, k) + 16 * (int)((qh >> k) & 1u) - 16;
        return (float)q * d;
    }
    case AP_GGML_Q5_1: {
        float d = rdh(b), m = rdh(b + 2);
        uint32_t qh = rd32(b + 4);
        int q = nib32(b + 8, k) + 16 * (int)((qh >> k) & 1u);
        float a = (float)q * d;
        return a + m;
    }
    case AP_GGML_Q8_0: {
        float d = rdh(b);
        int q = (int)(int8_t)b[2 + k];
        return (float)q * d;
    }
    case AP_GGML_Q4_K:
    case AP_GGML_Q5_K: {
        /* Sub-block sb (32 values); pairs of sub-blocks share 32 bytes of
         * nibbles, the even one in the low nibbles. Q5_K's 5th bit for
         * sub-block sb is bit sb of qh[k % 32]. */
        float d = rdh(b), dmin = rdh(b + 2);
        int sb = k / 32, l = k % 32;
        int sc, m;
        k4_scale_min(sb, b + 4, &sc, &m);
        const uint8_t *qs = b + (type == AP_GGML_Q4_K ? 16 : 48);
        uint8_t byte = qs[32 * (sb / 2) + l];
        int q = (sb % 2 == 0) ? (byte & 15) : (byte >> 4);
        if (type == AP_GGML_Q5_K) q += 16 * ((b[16 + l] >> sb) & 1);
        float ds = d * (float)sc;
        float dm = dmin * (float)m;
        float a = ds * (float)q;
        return a - dm;
    }
    case AP_GGML_Q6_K: {
        /* Half h (128 values) = four quarters of 32; quarter r takes the low
         * (r<2) or high nibble of ql[64h + l + 32*(r&1)], qh bits 2r..2r+1 of
         * qh[32h + l], and scale 8h + l/16 + 2r. */
        int h = k / 128, r = (k % 128) / 32, l = k % 32;
        uint8_t lo = b[64 * h + l + 32 * (r & 1)];
        int nib = r < 2 ? (lo & 15) : (lo >> 4);
        int hi = (b[128 + 32 * h + l] >> (2 * r)) & 3;
        int q = (nib | (hi << 4)) - 32;
        int sc = (int)(int8_t)b[192 + 8 * h + l / 16 + 2 * r];
        float d = rdh(b + 208);
        float ds = d * (float)sc;
        return ds * (float)q;
    }
    default:
        return 0.0f;
    }
}

ap_status ap_dequant_row_ref(ap_ggml_type type, const void *src, float *dst, int64_t n,
                             ap_err *err) {
    const ap_ggml_traits *tr = NULL;
    ap_status st = check_args(type, src, dst, n, &tr, err);
    if (st != AP_OK) return st;
    const uint8_t *s = src;
    for (int64_t i = 0; i < n; i++) {
        switch (type) {
        case AP_GGML_F32: {
            float v;
            memcpy(&v, s + 4 * i, sizeof v);
            dst[i] = v;
            break;
        }
        case AP_GGML_F16:
            dst[i] = ap_fp16_to_fp32(rd16(s + 2 * i));
            break;
        case AP_GGML_BF16:
            dst[i] = ap_bf16_to_fp32(rd16(s + 2 * i));
            break;
        default: {
            int64_t blk = i / tr->block_size;
            dst[i] = ref_elem(type, s + blk * tr->type_size, (int)(i % tr->block_size));
            break;
        }
        }
    }
    return AP_OK;
}
