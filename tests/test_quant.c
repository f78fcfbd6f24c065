/* Type traits, half-precision conversions and dequantization.
 *
 * The hand-built blocks below use scales that are exact in binary16 and byte
 * patterns whose decoded values are worked out in the comments, so a
 * misplaced nibble, bit or scale shows up as a wrong literal. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/gguf.h"
#include "common/sha256.h"
#include "common/tolerance.h"
#include "common/util.h"
#include "kernels/quant.h"

#define MODEL_PATH AP_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define FIXTURE_PATH AP_SOURCE_DIR "/tests/fixtures/dequant_smollm2.json"
#define GEMMA3_PATH AP_SOURCE_DIR "/models/gemma-3-270m-q4_k_m.gguf"
#define GEMMA3_FIXTURE_PATH AP_SOURCE_DIR "/tests/fixtures/dequant_gemma3.json"

/* binary16 bit patterns used as scales */
#define H_1 0x3c00u    /* 1.0 */
#define H_0_5 0x3800u  /* 0.5 */
#define H_0_25 0x3400u /* 0.25 */
#define H_0_125 0x3000u
#define H_M1 0xbc00u /* -1.0 */
#define H_2 0x4000u  /* 2.0 */

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void expect_eq(const float *got, int64_t i, double want) {
    double diff = fabs((double)got[i] - want);
    cr_assert(diff <= AP_TOL_DEQUANT_ABS, "element %lld: got %.9g, want %.9g", (long long)i,
              (double)got[i], want);
}

static void deq(ap_ggml_type t, const void *src, float *dst, int64_t n) {
    ap_err err = {0};
    cr_assert_eq(ap_dequant_row(t, src, dst, n, &err), AP_OK, "%s", err.msg);
    float ref[1024];
    cr_assert(n <= 1024);
    cr_assert_eq(ap_dequant_row_ref(t, src, ref, n, &err), AP_OK, "%s", err.msg);
    cr_assert(memcmp(dst, ref, (size_t)n * sizeof(float)) == 0, "fast and ref paths differ");
}

/* ---- traits ---- */

Test(quant, traits_table) {
    const ap_ggml_traits *t = ap_ggml_type_traits(AP_GGML_Q4_1);
    cr_assert(t && strcmp(t->name, "Q4_1") == 0 && t->block_size == 32 && t->type_size == 20);
    t = ap_ggml_type_traits(AP_GGML_Q8_0);
    cr_assert(t && t->block_size == 32 && t->type_size == 34 && t->dequant_ok);
    t = ap_ggml_type_traits(AP_GGML_Q5_0);
    cr_assert(t && t->type_size == 22);
    t = ap_ggml_type_traits(AP_GGML_Q5_1);
    cr_assert(t && t->type_size == 24);
    t = ap_ggml_type_traits(AP_GGML_Q4_K);
    cr_assert(t && t->block_size == 256 && t->type_size == 144 && t->dequant_ok);
    t = ap_ggml_type_traits(AP_GGML_Q5_K);
    cr_assert(t && t->block_size == 256 && t->type_size == 176 && t->dequant_ok);
    t = ap_ggml_type_traits(AP_GGML_Q6_K);
    cr_assert(t && t->block_size == 256 && t->type_size == 210 && t->dequant_ok);
    t = ap_ggml_type_traits(AP_GGML_Q2_K);
    cr_assert(t && t->type_size == 84 && !t->dequant_ok);
    t = ap_ggml_type_traits(AP_GGML_BF16);
    cr_assert(t && t->block_size == 1 && t->type_size == 2 && t->dequant_ok);
    t = ap_ggml_type_traits(AP_GGML_F64);
    cr_assert(t && t->type_size == 8 && !t->dequant_ok);
    /* removed ids and out-of-range ids */
    cr_assert_null(ap_ggml_type_traits(4));
    cr_assert_null(ap_ggml_type_traits(5));
    cr_assert_null(ap_ggml_type_traits(31));
    cr_assert_null(ap_ggml_type_traits(AP_GGML_TYPE_COUNT));
    cr_assert_null(ap_ggml_type_traits(0xffffffffu));
    /* every named type has a sane size */
    for (uint32_t i = 0; i < AP_GGML_TYPE_COUNT; i++) {
        t = ap_ggml_type_traits(i);
        if (t) cr_assert(t->block_size >= 1 && t->type_size >= 1, "type %u", i);
    }
}

Test(quant, row_size) {
    cr_assert_eq(ap_ggml_row_size(AP_GGML_Q4_1, 576), 18u * 20u);
    cr_assert_eq(ap_ggml_row_size(AP_GGML_Q8_0, 576), 18u * 34u);
    cr_assert_eq(ap_ggml_row_size(AP_GGML_F32, 5), 20u);
    cr_assert_eq(ap_ggml_row_size(AP_GGML_Q6_K, 512), 420u);
    cr_assert_eq(ap_ggml_row_size(AP_GGML_Q4_0, 33), 0u);
    cr_assert_eq(ap_ggml_row_size(AP_GGML_Q4_K, 576), 0u);
    cr_assert_eq(ap_ggml_row_size(4, 32), 0u);
    cr_assert_eq(ap_ggml_row_size(AP_GGML_F32, -4), 0u);
    cr_assert_eq(ap_ggml_row_size(AP_GGML_F64, INT64_MAX), 0u, "overflow must give 0");
}

/* ---- half precision ---- */

/* Independent decoding of a binary16 value in double arithmetic. */
static double half_value(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

Test(quant, fp16_exhaustive_round_trip_and_values) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ap_fp16_to_fp32((uint16_t)h);
        int e = (h >> 10) & 31, m = h & 1023;
        if (e == 31 && m != 0) {
            cr_assert(isnan(f), "half %04x should be NaN", h);
        } else if (e == 31) {
            cr_assert(isinf(f) && (signbit(f) != 0) == ((h >> 15) != 0), "half %04x", h);
        } else {
            cr_assert((double)f == half_value((uint16_t)h), "half %04x decodes to %.9g", h,
                      (double)f);
            cr_assert((signbit(f) != 0) == ((h >> 15) != 0), "sign of half %04x", h);
        }
        uint16_t back = ap_fp32_to_fp16(f);
        cr_assert_eq(back, h, "round trip of half %04x gave %04x", h, back);
    }
}

Test(quant, fp32_to_fp16_round_to_nearest_even) {
    /* Between each pair of adjacent finite halves: the midpoint goes to the
     * even one, one float ulp either side goes to the nearer. Covers
     * subnormals, the subnormal/normal seam and every exponent. */
    for (uint32_t h = 0; h < 0x7bff; h++) {
        for (int sgn = 0; sgn < 2; sgn++) {
            uint16_t lo = (uint16_t)(h | (sgn << 15)), hi = (uint16_t)((h + 1) | (sgn << 15));
            double a = half_value(lo), b = half_value(hi);
            float mid = (float)((a + b) / 2); /* exact: 12 significant bits */
            cr_assert((double)mid == (a + b) / 2);
            uint16_t even = (h & 1) ? hi : lo;
            cr_assert_eq(ap_fp32_to_fp16(mid), even, "midpoint of %04x/%04x", lo, hi);
            float toward_lo = nextafterf(mid, (float)a), toward_hi = nextafterf(mid, (float)b);
            cr_assert_eq(ap_fp32_to_fp16(toward_lo), lo, "just below midpoint of %04x", lo);
            cr_assert_eq(ap_fp32_to_fp16(toward_hi), hi, "just above midpoint of %04x", lo);
        }
    }
    /* Overflow: 65504 is the largest half; the tie at 65520 goes to infinity. */
    cr_assert_eq(ap_fp32_to_fp16(65504.0f), 0x7bff);
    cr_assert_eq(ap_fp32_to_fp16(nextafterf(65520.0f, 0.0f)), 0x7bff);
    cr_assert_eq(ap_fp32_to_fp16(65520.0f), 0x7c00);
    cr_assert_eq(ap_fp32_to_fp16(-1e10f), 0xfc00);
    cr_assert_eq(ap_fp32_to_fp16(INFINITY), 0x7c00);
    /* Underflow: half of the smallest subnormal ties to zero; above it, up. */
    cr_assert_eq(ap_fp32_to_fp16(ldexpf(1.0f, -25)), 0x0000);
    cr_assert_eq(ap_fp32_to_fp16(nextafterf(ldexpf(1.0f, -25), 1.0f)), 0x0001);
    cr_assert_eq(ap_fp32_to_fp16(-ldexpf(1.0f, -26)), 0x8000);
    cr_assert_eq(ap_fp32_to_fp16(1e-40f), 0x0000, "float subnormal");
    /* NaN stays NaN even when its payload is only in the low bits. */
    uint32_t bits = 0x7f800001u;
    float nan_low;
    memcpy(&nan_low, &bits, 4);
    uint16_t hn = ap_fp32_to_fp16(nan_low);
    cr_assert((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0, "NaN became %04x", hn);
    cr_assert_eq(ap_fp32_to_fp16(1.0f), H_1);
    cr_assert_eq(ap_fp32_to_fp16(-2.5f), 0xc100);
}

#ifdef __FLT16_MAX__
Test(quant, fp16_matches_compiler_float16) {
    /* The compiler's _Float16 conversions are an independent implementation
     * of the same IEEE rounding. */
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 31) == 31 && (h & 1023)) continue; /* NaN payloads may differ */
        _Float16 x;
        uint16_t hh = (uint16_t)h;
        memcpy(&x, &hh, 2);
        cr_assert(ap_fp16_to_fp32(hh) == (float)x, "half %04x", h);
    }
    uint64_t s = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < 2000000; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        uint32_t bits = (uint32_t)s;
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f)) continue;
        _Float16 x = (_Float16)f;
        uint16_t want;
        memcpy(&want, &x, 2);
        cr_assert_eq(ap_fp32_to_fp16(f), want, "float bits %08x", bits);
    }
}
#endif

Test(quant, bf16) {
    cr_assert(ap_bf16_to_fp32(0x3f80) == 1.0f);
    cr_assert(ap_bf16_to_fp32(0xc000) == -2.0f);
    cr_assert(ap_bf16_to_fp32(0x4049) == 3.140625f);
    cr_assert(isinf(ap_bf16_to_fp32(0xff80)) && ap_bf16_to_fp32(0xff80) < 0);
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ap_bf16_to_fp32((uint16_t)h);
        uint32_t bits;
        memcpy(&bits, &f, 4);
        cr_assert_eq(bits, h << 16);
    }
}

/* ---- hand-built blocks ---- */

Test(quant, plain_types) {
    float y[8];
    float f32[4] = {1.5f, -0.0f, 3e38f, -7.25f};
    deq(AP_GGML_F32, f32, y, 4);
    cr_assert(memcmp(y, f32, sizeof f32) == 0);

    uint8_t f16[10];
    put16(f16, 0x3c00);     /* 1.0 */
    put16(f16 + 2, 0xc100); /* -2.5 */
    put16(f16 + 4, 0x7bff); /* 65504 */
    put16(f16 + 6, 0x0001); /* 2^-24 */
    put16(f16 + 8, 0x8000); /* -0 */
    deq(AP_GGML_F16, f16, y, 5);
    expect_eq(y, 0, 1.0);
    expect_eq(y, 1, -2.5);
    expect_eq(y, 2, 65504.0);
    expect_eq(y, 3, ldexp(1.0, -24));
    cr_assert(y[4] == 0.0f && signbit(y[4]));

    uint8_t bf[4];
    put16(bf, 0x4049);     /* 3.140625 */
    put16(bf + 2, 0xbf00); /* -0.5 */
    deq(AP_GGML_BF16, bf, y, 2);
    expect_eq(y, 0, 3.140625);
    expect_eq(y, 1, -0.5);
}

Test(quant, q4_0_block) {
    /* d = 0.5; qs[j] = j | (15-j)<<4: element j = 0.5*(j-8), element 16+j =
     * 0.5*((15-j)-8) = 0.5*(7-j). */
    uint8_t b[18];
    put16(b, H_0_5);
    for (int j = 0; j < 16; j++) b[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    deq(AP_GGML_Q4_0, b, y, 32);
    expect_eq(y, 0, -4.0);
    expect_eq(y, 8, 0.0);
    expect_eq(y, 15, 3.5);
    expect_eq(y, 16, 3.5);
    expect_eq(y, 31, -4.0);
    for (int j = 0; j < 16; j++) {
        expect_eq(y, j, 0.5 * (j - 8));
        expect_eq(y, 16 + j, 0.5 * (7 - j));
    }
}

Test(quant, q4_1_block) {
    /* d = 0.25, m = -1: element j = 0.25*j - 1, element 16+j = 0.25*(15-j) - 1. */
    uint8_t b[20];
    put16(b, H_0_25);
    put16(b + 2, H_M1);
    for (int j = 0; j < 16; j++) b[4 + j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    deq(AP_GGML_Q4_1, b, y, 32);
    expect_eq(y, 0, -1.0);
    expect_eq(y, 4, 0.0);
    expect_eq(y, 15, 2.75);
    expect_eq(y, 16, 2.75);
    expect_eq(y, 31, -1.0);
    for (int j = 0; j < 16; j++) {
        expect_eq(y, j, 0.25 * j - 1);
        expect_eq(y, 16 + j, 0.25 * (15 - j) - 1);
    }
}

/* qh = 0xAAAA5555: bit j set for even j < 16, bit 16+j set for odd j. With
 * qs[j] = j | j<<4, q(j) = j + 16*[j even], q(16+j) = j + 16*[j odd]. */
static void q5_pattern(uint8_t *qh, uint8_t *qs) {
    qh[0] = 0x55;
    qh[1] = 0x55;
    qh[2] = 0xaa;
    qh[3] = 0xaa;
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)(j | (j << 4));
}

Test(quant, q5_0_block) {
    uint8_t b[22];
    put16(b, H_1);
    q5_pattern(b + 2, b + 6);
    float y[32];
    deq(AP_GGML_Q5_0, b, y, 32);
    expect_eq(y, 0, 0.0);   /* 0 + 16 - 16 */
    expect_eq(y, 1, -15.0); /* 1 - 16 */
    expect_eq(y, 2, 2.0);
    expect_eq(y, 15, -1.0);
    expect_eq(y, 16, -16.0); /* j=0 even: no high bit */
    expect_eq(y, 17, 1.0);   /* 1 + 16 - 16 */
    expect_eq(y, 31, 15.0);
    for (int j = 0; j < 16; j++) {
        expect_eq(y, j, j + 16 * (j % 2 == 0) - 16);
        expect_eq(y, 16 + j, j + 16 * (j % 2 == 1) - 16);
    }
}

Test(quant, q5_1_block) {
    uint8_t b[24];
    put16(b, H_0_5);
    put16(b + 2, H_2);
    q5_pattern(b + 4, b + 8);
    float y[32];
    deq(AP_GGML_Q5_1, b, y, 32);
    expect_eq(y, 0, 10.0); /* 0.5*16 + 2 */
    expect_eq(y, 1, 2.5);  /* 0.5*1 + 2 */
    expect_eq(y, 16, 2.0);
    expect_eq(y, 17, 10.5);
    expect_eq(y, 31, 17.5);
    for (int j = 0; j < 16; j++) {
        expect_eq(y, j, 0.5 * (j + 16 * (j % 2 == 0)) + 2);
        expect_eq(y, 16 + j, 0.5 * (j + 16 * (j % 2 == 1)) + 2);
    }
}

Test(quant, q8_0_block) {
    /* d = 0.125, qs[j] = 8j - 128: element j = j - 16. */
    uint8_t b[34];
    put16(b, H_0_125);
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)(8 * j - 128);
    float y[32];
    deq(AP_GGML_Q8_0, b, y, 32);
    expect_eq(y, 0, -16.0);
    expect_eq(y, 16, 0.0);
    expect_eq(y, 31, 15.0);
    for (int j = 0; j < 32; j++) expect_eq(y, j, j - 16);
}

/* Q4_K/Q5_K scales: 8 (scale, min) pairs chosen to exercise every packed
 * field, including the high bits of sub-blocks 4..7:
 *   (1,2) (3,4) (5,6) (63,0) (17,33) (48,1) (2,50) (31,63)
 * Packing by hand (bytes 0..3: scale j | high2(scale j+4)<<6; bytes 4..7:
 * min j | high2(min j+4)<<6; bytes 8..11: low4(scale j+4) | low4(min j+4)<<4):
 *   0x41 0xc3 0x05 0x7f  0x82 0x04 0xc6 0xc0  0x11 0x10 0x22 0xff */
static const uint8_t k_scales[12] = {0x41, 0xc3, 0x05, 0x7f, 0x82, 0x04,
                                     0xc6, 0xc0, 0x11, 0x10, 0x22, 0xff};
static const int k_sc[8] = {1, 3, 5, 63, 17, 48, 2, 31};
static const int k_m[8] = {2, 4, 6, 0, 33, 1, 50, 63};

/* 32 bytes per sub-block pair; byte l = (l&15) | (15-(l&15))<<4, so the even
 * sub-block (low nibbles) sees q = l&15 and the odd one q = 15-(l&15). */
static int k_q(int sb, int l) {
    return sb % 2 == 0 ? (l & 15) : 15 - (l & 15);
}

Test(quant, q4_k_block) {
    uint8_t b[144];
    put16(b, H_1);       /* d */
    put16(b + 2, H_0_5); /* dmin */
    memcpy(b + 4, k_scales, 12);
    for (int i = 0; i < 128; i++) b[16 + i] = (uint8_t)((i & 15) | ((15 - (i & 15)) << 4));
    float y[256];
    deq(AP_GGML_Q4_K, b, y, 256);
    expect_eq(y, 0 * 32 + 3, 2.0);     /* 1*3 - 0.5*2 */
    expect_eq(y, 3 * 32 + 0, 945.0);   /* 63*15 - 0 */
    expect_eq(y, 4 * 32 + 5, 68.5);    /* 17*5 - 0.5*33 */
    expect_eq(y, 5 * 32 + 1, 671.5);   /* 48*14 - 0.5*1 */
    expect_eq(y, 6 * 32 + 15, 5.0);    /* 2*15 - 0.5*50 */
    expect_eq(y, 7 * 32 + 0, 433.5);   /* 31*15 - 0.5*63 */
    for (int sb = 0; sb < 8; sb++)
        for (int l = 0; l < 32; l++)
            expect_eq(y, 32 * sb + l, (double)k_sc[sb] * k_q(sb, l) - 0.5 * k_m[sb]);
}

Test(quant, q5_k_block) {
    /* Layout d, dmin, scales[12], qh[32], qs[128]. qh[l] = 0x0f for even l,
     * 0xf0 for odd l: sub-blocks 0..3 get the 5th bit on even l, 4..7 on odd. */
    uint8_t b[176];
    put16(b, H_1);
    put16(b + 2, H_0_5);
    memcpy(b + 4, k_scales, 12);
    for (int l = 0; l < 32; l++) b[16 + l] = (l % 2 == 0) ? 0x0f : 0xf0;
    for (int i = 0; i < 128; i++) b[48 + i] = (uint8_t)((i & 15) | ((15 - (i & 15)) << 4));
    float y[256];
    deq(AP_GGML_Q5_K, b, y, 256);
    expect_eq(y, 0 * 32 + 2, 17.0);    /* 1*(2+16) - 0.5*2 */
    expect_eq(y, 0 * 32 + 3, 2.0);     /* odd l: no 5th bit */
    expect_eq(y, 4 * 32 + 5, 340.5);   /* 17*(5+16) - 16.5 */
    expect_eq(y, 7 * 32 + 0, 433.5);   /* 31*15 - 31.5, even l: no bit for sb 7 */
    expect_eq(y, 3 * 32 + 0, 1953.0);  /* 63*(15+16) - 0 */
    for (int sb = 0; sb < 8; sb++)
        for (int l = 0; l < 32; l++) {
            int hb = sb < 4 ? (l % 2 == 0) : (l % 2 == 1);
            expect_eq(y, 32 * sb + l, (double)k_sc[sb] * (k_q(sb, l) + 16 * hb) - 0.5 * k_m[sb]);
        }
}

Test(quant, q6_k_block) {
    /* ql[i] = (i&15) | (15-(i&15))<<4; qh[i] = 0xe4 (bit pairs 0,1,2,3 from
     * low to high, so quarter r gets high bits r); scales[i] = 3*(i-8); d = 0.25
     * stored last. Element k: half h, quarter r, lane l: nibble = l&15 (r<2)
     * or 15-(l&15) (r>=2); q = nibble + 16r - 32; scale index 8h + l/16 + 2r. */
    uint8_t b[210];
    for (int i = 0; i < 128; i++) b[i] = (uint8_t)((i & 15) | ((15 - (i & 15)) << 4));
    for (int i = 0; i < 64; i++) b[128 + i] = 0xe4;
    for (int i = 0; i < 16; i++) b[192 + i] = (uint8_t)(int8_t)(3 * (i - 8));
    put16(b + 208, H_0_25);
    float y[256];
    deq(AP_GGML_Q6_K, b, y, 256);
    expect_eq(y, 0, 192.0);   /* 0.25 * -24 * (0 - 32) */
    expect_eq(y, 40, 36.0);   /* r1 l8: q = 8+16-32 = -8, sc[2] = -18 */
    expect_eq(y, 70, -27.0);  /* r2 l6: q = 9, sc[4] = -12 */
    expect_eq(y, 200, 21.0);  /* h1 r2 l8: q = 7, sc[12] = 12 */
    expect_eq(y, 255, 84.0);  /* h1 r3 l31: q = 16, sc[15] = 21 */
    for (int k = 0; k < 256; k++) {
        int h = k / 128, r = (k % 128) / 32, l = k % 32;
        int nib = r < 2 ? (l & 15) : 15 - (l & 15);
        int q = nib + 16 * r - 32;
        int sc = 3 * (8 * h + l / 16 + 2 * r - 8);
        expect_eq(y, k, 0.25 * sc * q);
    }
}

Test(quant, multi_block_rows_use_each_block) {
    /* Two Q8_0 blocks with different scales: catches a stride error. */
    uint8_t b[68];
    put16(b, H_1);
    put16(b + 34, H_2);
    for (int j = 0; j < 32; j++) {
        b[2 + j] = (uint8_t)j;
        b[36 + j] = (uint8_t)(int8_t)(-j);
    }
    float y[64];
    deq(AP_GGML_Q8_0, b, y, 64);
    expect_eq(y, 5, 5.0);
    expect_eq(y, 32 + 5, -10.0);
}

/* ---- fast vs reference on random blocks ---- */

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Random finite half: keeps NaN out so results compare bit for bit. */
static uint16_t rand_half(uint64_t *s) {
    uint16_t h;
    do h = (uint16_t)rng_next(s);
    while (((h >> 10) & 31) == 31);
    return h;
}

Test(quant, fast_equals_ref_on_random_blocks) {
    static const ap_ggml_type types[] = {AP_GGML_F32,  AP_GGML_F16,  AP_GGML_BF16, AP_GGML_Q4_0,
                                         AP_GGML_Q4_1, AP_GGML_Q5_0, AP_GGML_Q5_1, AP_GGML_Q8_0,
                                         AP_GGML_Q4_K, AP_GGML_Q5_K, AP_GGML_Q6_K};
    uint64_t s = 0x1234567887654321u;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        ap_ggml_type t = types[ti];
        const ap_ggml_traits *tr = ap_ggml_type_traits(t);
        cr_assert(tr && tr->dequant_ok);
        int64_t n = 8 * 256; /* whole blocks for every type */
        size_t nbytes = ap_ggml_row_size(t, n);
        uint8_t *src = malloc(nbytes);
        float *a = malloc(n * sizeof(float)), *r = malloc(n * sizeof(float));
        cr_assert(src && a && r);
        for (int rep = 0; rep < 20; rep++) {
            for (size_t i = 0; i < nbytes; i++) src[i] = (uint8_t)rng_next(&s);
            /* Make the binary16 fields finite. */
            int64_t nb = n / tr->block_size;
            for (int64_t blk = 0; blk < nb; blk++) {
                uint8_t *p = src + blk * tr->type_size;
                switch (t) {
                case AP_GGML_F16:
                    put16(p, rand_half(&s));
                    break;
                case AP_GGML_F32: {
                    float v = (float)(int32_t)rng_next(&s) * 1e-6f;
                    memcpy(p, &v, 4);
                    break;
                }
                case AP_GGML_BF16:
                    if (((p[1] & 0x7f) == 0x7f) && (p[0] & 0x80)) p[1] &= 0xbf;
                    break;
                case AP_GGML_Q6_K: put16(p + 208, rand_half(&s)); break;
                case AP_GGML_Q4_1:
                case AP_GGML_Q5_1:
                case AP_GGML_Q4_K:
                case AP_GGML_Q5_K:
                    put16(p, rand_half(&s));
                    put16(p + 2, rand_half(&s));
                    break;
                default: put16(p, rand_half(&s)); break;
                }
            }
            ap_err err = {0};
            cr_assert_eq(ap_dequant_row(t, src, a, n, &err), AP_OK, "%s", err.msg);
            cr_assert_eq(ap_dequant_row_ref(t, src, r, n, &err), AP_OK, "%s", err.msg);
            for (int64_t i = 0; i < n; i++) {
                uint32_t ba, br;
                memcpy(&ba, a + i, 4);
                memcpy(&br, r + i, 4);
                cr_assert_eq(ba, br, "%s element %lld: fast %.9g ref %.9g", tr->name, (long long)i,
                             (double)a[i], (double)r[i]);
            }
        }
        free(src);
        free(a);
        free(r);
    }
}

Test(quant, errors) {
    float y[64];
    uint8_t b[256] = {0};
    ap_err err = {0};
    cr_assert_eq(ap_dequant_row(AP_GGML_Q2_K, b, y, 256, &err), AP_ERR_UNSUPPORTED);
    cr_assert(strstr(err.msg, "Q2_K") != NULL, "%s", err.msg);
    cr_assert_eq(ap_dequant_row_ref(AP_GGML_Q2_K, b, y, 256, &err), AP_ERR_UNSUPPORTED);
    cr_assert_eq(ap_dequant_row((ap_ggml_type)4, b, y, 32, &err), AP_ERR_UNSUPPORTED);
    cr_assert_eq(ap_dequant_row((ap_ggml_type)77, b, y, 32, &err), AP_ERR_UNSUPPORTED);
    cr_assert_eq(ap_dequant_row(AP_GGML_Q4_0, b, y, 33, &err), AP_ERR_ARG);
    cr_assert_eq(ap_dequant_row_ref(AP_GGML_Q4_0, b, y, -32, &err), AP_ERR_ARG);
    cr_assert_eq(ap_dequant_row(AP_GGML_Q4_0, b, y, 0, &err), AP_OK);
}

/* ---- the real model against gguf-py ---- */

static int hexeq_row(const float *row, int64_t n, const char *want_hex) {
    uint8_t *bytes = malloc((size_t)n * 4);
    cr_assert(bytes);
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, row + i, 4);
        for (int k = 0; k < 4; k++) bytes[4 * i + k] = (uint8_t)(u >> (8 * k));
    }
    uint8_t d[32];
    char hex[65];
    ap_sha256(bytes, (size_t)n * 4, d);
    ap_sha256_hex(d, hex);
    free(bytes);
    return strcmp(hex, want_hex) == 0;
}

/* Checks every row the fixture lists against our dequantization of the same
 * bytes in model_path: the stored head values and the whole row's hash
 * exactly, the float64 sums as a diagnostic. Returns the number of rows
 * checked; `covered` (indexed by ggml type id) marks the types seen. */
static int check_dequant_fixture(const char *model_path, const char *fixture_path,
                                 int covered[AP_GGML_TYPE_COUNT]) {
    char *json = NULL;
    size_t len = 0;
    ap_err err = {0};
    cr_assert_eq(ap_read_file(fixture_path, &json, &len, &err), AP_OK, "%s", err.msg);
    cJSON *doc = cJSON_Parse(json);
    cr_assert_not_null(doc, "fixture %s is not valid JSON", fixture_path);
    ap_gguf *g = NULL;
    cr_assert_eq(ap_gguf_open(model_path, &g, &err), AP_OK, "%s", err.msg);

    const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(doc, "tensors");
    cr_assert(cJSON_IsArray(tensors));
    int n_checked = 0;
    const cJSON *te;
    cJSON_ArrayForEach(te, tensors) {
        const char *name = cJSON_GetObjectItemCaseSensitive(te, "name")->valuestring;
        const char *type = cJSON_GetObjectItemCaseSensitive(te, "type")->valuestring;
        int64_t row_len = (int64_t)cJSON_GetObjectItemCaseSensitive(te, "row_len")->valuedouble;
        int rows = (int)cJSON_GetObjectItemCaseSensitive(te, "rows")->valuedouble;
        const ap_gguf_tensor *t = ap_gguf_find_tensor(g, name);
        cr_assert_not_null(t, "%s: tensor %s missing", model_path, name);
        cr_assert_str_eq(ap_ggml_type_traits(t->type)->name, type, "%s type", name);
        cr_assert_eq(t->ne[0], row_len, "%s ne[0]", name);
        if (covered) covered[t->type] = 1;
        size_t row_bytes = ap_ggml_row_size(t->type, row_len);
        float *row = malloc((size_t)row_len * sizeof(float));
        cr_assert(row);
        const cJSON *vals = cJSON_GetObjectItemCaseSensitive(te, "values");
        cr_assert_eq(cJSON_GetArraySize(vals), rows);
        for (int r = 0; r < rows; r++) {
            const cJSON *rv = cJSON_GetArrayItem(vals, r);
            const uint8_t *src = (const uint8_t *)t->data + (size_t)r * row_bytes;
            cr_assert_eq(ap_dequant_row(t->type, src, row, row_len, &err), AP_OK, "%s: %s", name,
                         err.msg);
            const cJSON *head = cJSON_GetObjectItemCaseSensitive(rv, "head");
            int i = 0;
            const cJSON *v;
            cJSON_ArrayForEach(v, head) {
                double diff = fabs((double)row[i] - v->valuedouble);
                cr_assert(diff <= AP_TOL_DEQUANT_ABS, "%s row %d [%d]: ours %.9g gguf-py %.9g",
                          name, r, i, (double)row[i], v->valuedouble);
                i++;
            }
            cr_assert(i > 0);
            double sum = 0, sq = 0;
            for (int64_t k = 0; k < row_len; k++) {
                sum += row[k];
                sq += (double)row[k] * row[k];
            }
            /* float64 sums in a different order: diagnostic, relative bound. */
            double want_sum = cJSON_GetObjectItemCaseSensitive(rv, "sum")->valuedouble;
            double want_sq = cJSON_GetObjectItemCaseSensitive(rv, "sum_sq")->valuedouble;
            cr_assert(fabs(sq - want_sq) <= AP_TOL_KERNEL_REL * want_sq, "%s row %d sum_sq", name,
                      r);
            cr_assert(fabs(sum - want_sum) <= AP_TOL_KERNEL_REL * sqrt(want_sq * row_len),
                      "%s row %d sum %.9g vs %.9g", name, r, sum, want_sum);
            const char *sha = cJSON_GetObjectItemCaseSensitive(rv, "sha256_f32le")->valuestring;
            cr_assert(hexeq_row(row, row_len, sha), "%s row %d: whole row not bit-identical", name,
                      r);
            n_checked++;
        }
        free(row);
    }
    ap_gguf_free(g);
    cJSON_Delete(doc);
    free(json);
    return n_checked;
}

Test(quant, real_model_matches_gguf_py_fixture) {
    if (!ap_file_exists(MODEL_PATH))
        cr_skip_test("real model absent: %s (see stack notes 2; the fixture was made from it)",
                     MODEL_PATH);
    int n_checked = check_dequant_fixture(MODEL_PATH, FIXTURE_PATH, NULL);
    cr_assert_eq(n_checked, 7, "expected 2+2+2+1 rows in the fixture");
}

/* Gemma 3 270M Q4_K_M mixes Q5_0, Q8_0, Q4_K, Q6_K and F32: the fixture
 * must reach every type the file holds, so a new type in a re-quantized
 * file cannot slip past unchecked. */
Test(quant, gemma3_matches_gguf_py_fixture) {
    if (getenv("AP_SKIP_REAL_MODEL")) cr_skip_test("AP_SKIP_REAL_MODEL is set");
    if (!ap_file_exists(GEMMA3_PATH))
        cr_skip_test("Gemma 3 model absent: %s (the fixture %s was made from it)", GEMMA3_PATH,
                     GEMMA3_FIXTURE_PATH);
    int covered[AP_GGML_TYPE_COUNT] = {0};
    int n_checked = check_dequant_fixture(GEMMA3_PATH, GEMMA3_FIXTURE_PATH, covered);
    cr_assert_eq(n_checked, 15, "expected 7 tensors x 2 rows + 1 norm row in the fixture");

    ap_gguf *g = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_gguf_open(GEMMA3_PATH, &g, &err), AP_OK, "%s", err.msg);
    int in_file[AP_GGML_TYPE_COUNT] = {0};
    for (int64_t i = 0; i < ap_gguf_n_tensors(g); i++) {
        const ap_gguf_tensor *t = ap_gguf_tensor_at(g, i);
        cr_assert(t->type < AP_GGML_TYPE_COUNT);
        in_file[t->type] = 1;
    }
    ap_gguf_free(g);
    static const ap_ggml_type expected[] = {AP_GGML_F32, AP_GGML_Q5_0, AP_GGML_Q8_0, AP_GGML_Q4_K,
                                            AP_GGML_Q6_K};
    for (size_t k = 0; k < sizeof expected / sizeof expected[0]; k++)
        cr_expect(in_file[expected[k]], "the file no longer holds %s: re-check the fixture",
                  ap_ggml_type_traits(expected[k])->name);
    for (uint32_t ty = 0; ty < AP_GGML_TYPE_COUNT; ty++)
        cr_expect(!in_file[ty] || covered[ty], "type %s is in %s but not in the fixture",
                  ap_ggml_type_traits(ty)->name, GEMMA3_PATH);
}
