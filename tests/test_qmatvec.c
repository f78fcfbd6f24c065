/* Quantized matrix-vector products and decode-attention kernels
 * (kernels/qmatvec.c), and the model's decode through them (capture/model.c).
 *
 * Kernels: every type and shape in the tables against the float64 reference
 * (ap_qmatvec_ref) and against dequantize + SGEMV, on both ISAs, both
 * activation modes, with rows split as 1..5 threads would split them (the
 * result must not depend on the split: bitwise). Random blocks use random
 * bytes for the quants (every bit pattern, int8 -128 included) and random
 * finite binary16 scales.
 *
 * Real tensors: SmolLM2 (Q4_1, Q8_0) and Gemma 3 270M Q4_K_M (Q5_0, Q8_0,
 * Q4_K, Q6_K) rows against the float64 reference.
 *
 * Model: decode through qmatvec vs the float32 engine (f32_weights) on
 * synthetic GGUFs with quantized tensors and on the real SmolLM2 file;
 * streaming decode attention vs the BLAS path at a long context. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capture/gguf.h"
#include "capture/model.h"
#include "common/tolerance.h"
#include "common/util.h"
#include "helpers/synth_model.h"
#include "kernels/matmul.h"
#include "kernels/qmatvec.h"
#include "kernels/quant.h"

#define MODEL_PATH AP_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define GEMMA3_PATH AP_SOURCE_DIR "/models/gemma-3-270m-q4_k_m.gguf"
#define FIX_DIR AP_SOURCE_DIR "/tests/fixtures/forward"

/* ------------------------------------------------------------- helpers */

static uint64_t mix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double unif(uint64_t *s) { return (double)(mix(s) >> 11) * 0x1.0p-53; }

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* A random finite half of magnitude in [lo, hi), either sign. */
static uint16_t rand_half(uint64_t *s, double lo, double hi) {
    double v = lo + (hi - lo) * unif(s);
    if (mix(s) & 1) v = -v;
    return ap_fp32_to_fp16((float)v);
}

/* n_out rows of n_in elements of `type`, random. */
static uint8_t *rand_matrix(ap_ggml_type type, int n_out, int n_in, uint64_t seed, size_t *row) {
    const ap_ggml_traits *tr = ap_ggml_type_traits((uint32_t)type);
    *row = ap_ggml_row_size((uint32_t)type, n_in);
    cr_assert(*row > 0, "type %s, n_in %d", tr->name, n_in);
    size_t bytes = *row * (size_t)n_out;
    uint8_t *w = malloc(bytes);
    cr_assert(w);
    uint64_t s = seed;
    for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)mix(&s);
    const int nb = n_in / tr->block_size;
    for (int r = 0; r < n_out; r++) {
        uint8_t *rw = w + (size_t)r * *row;
        if (type == AP_GGML_F32) {
            for (int i = 0; i < n_in; i++) {
                float v = (float)(2.0 * unif(&s) - 1.0);
                memcpy(rw + 4 * i, &v, 4);
            }
            continue;
        }
        if (type == AP_GGML_F16) {
            for (int i = 0; i < n_in; i++) put16(rw + 2 * i, rand_half(&s, 0.0, 1.0));
            continue;
        }
        if (type == AP_GGML_BF16) {
            for (int i = 0; i < n_in; i++) {
                float v = (float)(2.0 * unif(&s) - 1.0);
                uint32_t u;
                memcpy(&u, &v, 4);
                put16(rw + 2 * i, (uint16_t)(u >> 16));
            }
            continue;
        }
        for (int b = 0; b < nb; b++) {
            uint8_t *blk = rw + (size_t)b * tr->type_size;
            switch (type) {
            case AP_GGML_Q4_1:
            case AP_GGML_Q5_1:
            case AP_GGML_Q4_K:
            case AP_GGML_Q5_K:
                put16(blk, rand_half(&s, 0.001, 0.05));
                put16(blk + 2, rand_half(&s, 0.001, 0.4));
                break;
            case AP_GGML_Q6_K: put16(blk + 208, rand_half(&s, 0.0005, 0.01)); break;
            default: put16(blk, rand_half(&s, 0.001, 0.05)); break;
            }
        }
    }
    return w;
}

/* Activations with a nonzero mean (so the factored Σx terms matter) and a
 * few outliers (so int8 rounding has something to lose). */
static void rand_vec(float *x, int n, uint64_t seed, double mean) {
    uint64_t s = seed;
    for (int i = 0; i < n; i++) {
        double v = mean + (2.0 * unif(&s) - 1.0);
        if (mix(&s) % 97 == 0) v *= 20.0;
        x[i] = (float)v;
    }
}

typedef struct {
    ap_ggml_type type;
    int n_out, n_in;
} shape;

/* Odd shapes: rows not a multiple of any thread count, n_in not a multiple
 * of 256 where the block size allows it, odd and even block counts (the
 * AVX2 kernels take blocks in pairs). The n_in of Gemma 3 270M's matrices
 * are here too: 640 (Q5_0, Q8_0: 640 is not whole 256-blocks, so its
 * quantizer falls back from K-quants there), 1024 (Q4_K attn_output) and
 * 2048 (Q4_K/Q6_K ffn_down). */
static const shape SHAPES[] = {
    {AP_GGML_F32, 37, 100},   {AP_GGML_F32, 5, 7},      {AP_GGML_F16, 33, 72},
    {AP_GGML_F16, 3, 13},     {AP_GGML_BF16, 11, 96},   {AP_GGML_Q4_0, 37, 32},
    {AP_GGML_Q4_0, 101, 608}, {AP_GGML_Q4_1, 1, 32},    {AP_GGML_Q4_1, 37, 96},
    {AP_GGML_Q4_1, 101, 576}, {AP_GGML_Q4_1, 7, 1536},  {AP_GGML_Q5_0, 1, 32},
    {AP_GGML_Q5_0, 19, 160},  {AP_GGML_Q5_0, 37, 640},  {AP_GGML_Q5_0, 5, 2048},
    {AP_GGML_Q5_1, 1, 32},    {AP_GGML_Q5_1, 23, 224},  {AP_GGML_Q5_1, 13, 640},
    {AP_GGML_Q8_0, 1, 32},    {AP_GGML_Q8_0, 45, 608},  {AP_GGML_Q8_0, 17, 640},
    {AP_GGML_Q8_0, 13, 1568}, {AP_GGML_Q4_K, 13, 256},  {AP_GGML_Q4_K, 29, 768},
    {AP_GGML_Q4_K, 11, 1024}, {AP_GGML_Q4_K, 5, 2048},  {AP_GGML_Q5_K, 9, 512},
    {AP_GGML_Q6_K, 1, 256},   {AP_GGML_Q6_K, 31, 768},  {AP_GGML_Q6_K, 6, 1536},
    {AP_GGML_Q6_K, 9, 2048},
};
#define N_SHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

/* y over all rows, computed as `parts` contiguous uneven ranges (what
 * that many threads would do with tiles). */
static void split_matvec(const ap_qmat *w, const ap_qvec *v, float *y, int parts, int acc) {
    int r = 0;
    for (int p = 0; p < parts; p++) {
        int len = (w->n_out - r) / (parts - p) + (p & 1);
        int r1 = p == parts - 1 ? w->n_out : (r + len < w->n_out ? r + len : w->n_out);
        ap_qmatvec(w, v, y, r, r1, acc);
        r = r1;
    }
}

static int have_avx2(void) { return ap_qisa_best() == AP_QISA_AVX2; }

/* One shape, one ISA, one mode: ref, dequant+SGEMV, splits, accumulate. */
static void check_shape(const shape *sh, ap_qisa isa, ap_qact_mode mode, uint64_t seed,
                        double *worst) {
    const ap_ggml_traits *tr = ap_ggml_type_traits((uint32_t)sh->type);
    size_t row = 0;
    uint8_t *wb = rand_matrix(sh->type, sh->n_out, sh->n_in, seed, &row);
    ap_qmat w = {sh->type, wb, row, sh->n_in, sh->n_out};
    ap_err err = {0};
    cr_assert_eq(ap_qmat_check(&w, "test", &err), AP_OK, "%s", err.msg);
    float *x = malloc((size_t)sh->n_in * sizeof *x);
    float *y = malloc((size_t)sh->n_out * sizeof *y), *y2 = malloc((size_t)sh->n_out * sizeof *y);
    float *ref = malloc((size_t)sh->n_out * sizeof *y);
    float *wf = malloc((size_t)sh->n_out * sh->n_in * sizeof *wf);
    cr_assert(x && y && y2 && ref && wf);
    rand_vec(x, sh->n_in, seed ^ 77, 0.7);
    ap_qvec *v = NULL;
    cr_assert_eq(ap_qvec_create(sh->n_in + 5, mode, isa, &v, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_qvec_isa(v), isa);
    ap_qvec_set(v, x, sh->n_in);

    ap_qmatvec(&w, v, y, 0, sh->n_out, 0);
    ap_qmatvec_ref(&w, v, ref, 0, sh->n_out, 0);
    double e = ap_rel_err_f32(y, ref, sh->n_out);
    if (e > *worst) *worst = e;
    cr_expect(e <= AP_TOL_QDOT_REL, "%s %dx%d isa %d mode %d: rel err %.3g vs float64", tr->name,
              sh->n_out, sh->n_in, (int)isa, (int)mode, e);

    /* The exact mode is dequantize + SGEMV up to summation order. */
    if (mode == AP_QACT_F32 || !ap_qmatvec_q8_supported(sh->type)) {
        for (int r = 0; r < sh->n_out; r++)
            cr_assert_eq(ap_dequant_row(sh->type, wb + (size_t)r * row, wf + (size_t)r * sh->n_in,
                                        sh->n_in, &err),
                         AP_OK, "%s", err.msg);
        ap_matmul(y2, (size_t)sh->n_out, x, (size_t)sh->n_in, wf, (size_t)sh->n_in, 1, sh->n_in,
                  sh->n_out, 0);
        e = ap_rel_err_f32(y, y2, sh->n_out);
        cr_expect(e <= AP_TOL_QDOT_REL, "%s %dx%d isa %d: rel err %.3g vs dequant+sgemv", tr->name,
                  sh->n_out, sh->n_in, (int)isa, e);
    }
    /* Rows are independent: any split gives the same bits. */
    for (int parts = 2; parts <= 5; parts++) {
        for (int r = 0; r < sh->n_out; r++) y2[r] = NAN;
        split_matvec(&w, v, y2, parts, 0);
        cr_expect(memcmp(y, y2, (size_t)sh->n_out * sizeof *y) == 0,
                  "%s %dx%d: %d-way split differs", tr->name, sh->n_out, sh->n_in, parts);
    }
    /* accumulate adds to what is there. */
    for (int r = 0; r < sh->n_out; r++) y2[r] = ref[r] = (float)r - 3.5f;
    split_matvec(&w, v, y2, 3, 1);
    ap_qmatvec_ref(&w, v, ref, 0, sh->n_out, 1);
    e = ap_rel_err_f32(y2, ref, sh->n_out);
    cr_expect(e <= AP_TOL_QDOT_REL, "%s accumulate: rel err %.3g", tr->name, e);

    ap_qvec_free(v);
    free(wb);
    free(x);
    free(y);
    free(y2);
    free(ref);
    free(wf);
}

static void check_all(ap_qisa isa, ap_qact_mode mode) {
    double worst = 0.0;
    for (int i = 0; i < N_SHAPES; i++)
        check_shape(&SHAPES[i], isa, mode, 1000 + (uint64_t)i, &worst);
    cr_log_info("isa %d mode %d: worst rel err vs float64 %.3g over %d shapes", (int)isa, (int)mode,
                worst, N_SHAPES);
}

/* -------------------------------------------------------------- kernels */

Test(qmatvec, scalar_exact) { check_all(AP_QISA_SCALAR, AP_QACT_F32); }
Test(qmatvec, scalar_q8) { check_all(AP_QISA_SCALAR, AP_QACT_Q8); }

Test(qmatvec, avx2_exact) {
    if (!have_avx2()) cr_skip_test("this CPU lacks AVX2/FMA/F16C: only the scalar path runs");
    check_all(AP_QISA_AVX2, AP_QACT_F32);
}

Test(qmatvec, avx2_q8) {
    if (!have_avx2()) cr_skip_test("this CPU lacks AVX2/FMA/F16C: only the scalar path runs");
    check_all(AP_QISA_AVX2, AP_QACT_Q8);
}

/* Strip dequantization must give ap_dequant_row's bits (prefill's sgemm
 * then sees exactly the reference weights). */
Test(qmatvec, dequant_rows_bitwise) {
    ap_err err = {0};
    for (int ii = 0; ii < (have_avx2() ? 2 : 1); ii++) {
        ap_qisa isa = ii ? AP_QISA_AVX2 : AP_QISA_SCALAR;
        for (int i = 0; i < N_SHAPES; i++) {
            const shape *sh = &SHAPES[i];
            size_t row = 0;
            uint8_t *wb = rand_matrix(sh->type, sh->n_out, sh->n_in, 500 + (uint64_t)i, &row);
            ap_qmat w = {sh->type, wb, row, sh->n_in, sh->n_out};
            const int r0 = sh->n_out / 3, r1 = sh->n_out;
            float *got = malloc((size_t)(r1 - r0) * sh->n_in * sizeof(float));
            float *want = malloc((size_t)sh->n_in * sizeof(float));
            cr_assert(got && want);
            ap_qmat_dequant_rows(&w, r0, r1, got, isa);
            for (int r = r0; r < r1; r++) {
                cr_assert_eq(ap_dequant_row(sh->type, wb + (size_t)r * row, want, sh->n_in, &err),
                             AP_OK, "%s", err.msg);
                cr_expect(memcmp(got + (size_t)(r - r0) * sh->n_in, want,
                                 (size_t)sh->n_in * sizeof(float)) == 0,
                          "%s row %d isa %d: not bit-identical to ap_dequant_row",
                          ap_ggml_type_traits((uint32_t)sh->type)->name, r, (int)isa);
            }
            free(got);
            free(want);
            free(wb);
        }
    }
}

Test(qmatvec, isa_resolution) {
    cr_expect_eq(ap_qisa_resolve(AP_QISA_SCALAR), AP_QISA_SCALAR);
    cr_expect_eq(ap_qisa_resolve(AP_QISA_AUTO), ap_qisa_best());
    cr_expect_eq(ap_qisa_resolve(AP_QISA_AVX2), have_avx2() ? AP_QISA_AVX2 : AP_QISA_SCALAR);
}

Test(qmatvec, q8_rounding) {
    enum { N = 96 };
    float x[N];
    rand_vec(x, N, 5, 0.2);
    x[40] = 0.0f; /* an all-zero block gets scale 0, values 0 */
    for (int i = 64; i < 96; i++) x[i] = 0.0f;
    ap_qvec *v = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_qvec_create(N, AP_QACT_Q8, AP_QISA_AUTO, &v, &err), AP_OK, "%s", err.msg);
    ap_qvec_set(v, x, N);
    for (int b = 0; b < N / 32; b++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[32 * b + j]));
        const double d = amax / 127.0;
        for (int j = 0; j < 32; j++) {
            double got = ap_qvec_value(v, 32 * b + j);
            /* Half a step plus the float rounding of the scale. */
            cr_expect(fabs(got - x[32 * b + j]) <= 0.5 * d * (1.0 + 1e-6) + 1e-30,
                      "element %d: %.9g rounds to %.9g (step %.3g)", 32 * b + j, x[32 * b + j], got,
                      d);
            cr_expect(fabs(got) <= amax * (1.0 + 1e-6));
        }
    }
    cr_expect_eq(ap_qvec_value(v, 70), 0.0f);
    ap_qvec_free(v);
    /* F32 mode hands back x itself. */
    cr_assert_eq(ap_qvec_create(N, AP_QACT_F32, AP_QISA_AUTO, &v, &err), AP_OK, "%s", err.msg);
    ap_qvec_set(v, x, N);
    for (int i = 0; i < N; i++) cr_expect_eq(ap_qvec_value(v, i), x[i]);
    ap_qvec_free(v);
}

Test(qmatvec, check_rejects_bad_matrices) {
    uint8_t buf[64] = {0};
    ap_err err = {0};
    ap_qmat w = {AP_GGML_Q4_1, buf, 20, 33, 1};
    cr_expect_eq(ap_qmat_check(&w, "blk.0.x", &err), AP_ERR_ARG, "n_in 33 is not whole blocks");
    cr_expect(strstr(err.msg, "blk.0.x") != NULL, "message: %s", err.msg);
    w = (ap_qmat){AP_GGML_Q4_1, buf, 24, 32, 1};
    cr_expect_eq(ap_qmat_check(&w, "m", &err), AP_ERR_ARG, "row bytes 24 for one Q4_1 block");
    w = (ap_qmat){AP_GGML_Q8_1, buf, 36, 32, 1};
    cr_expect_eq(ap_qmat_check(&w, "m", &err), AP_ERR_UNSUPPORTED);
    cr_expect(strstr(err.msg, "Q8_1") != NULL, "message: %s", err.msg);
    w = (ap_qmat){AP_GGML_Q4_K, buf, 144, 128, 1};
    cr_expect_eq(ap_qmat_check(&w, "m", &err), AP_ERR_ARG, "Q4_K needs 256-element blocks");
    w = (ap_qmat){AP_GGML_Q8_0, NULL, 34, 32, 2};
    cr_expect_eq(ap_qmat_check(&w, "m", &err), AP_ERR_ARG, "NULL data");
    w = (ap_qmat){AP_GGML_Q8_0, buf, 34, 32, 1};
    cr_expect_eq(ap_qmat_check(&w, "m", &err), AP_OK, "%s", err.msg);
    cr_expect(ap_qmatvec_supported(AP_GGML_Q5_K) && !ap_qmatvec_supported(AP_GGML_Q2_K));
    cr_expect(ap_qmatvec_q8_supported(AP_GGML_Q4_1) && !ap_qmatvec_q8_supported(AP_GGML_F16));
    cr_expect(ap_qmatvec_q8_supported(AP_GGML_Q5_0) && ap_qmatvec_q8_supported(AP_GGML_Q5_1));
    cr_expect(!ap_qmatvec_q8_supported(AP_GGML_Q5_K) && !ap_qmatvec_q8_supported(AP_GGML_BF16));
}

/* A K-quant row must be whole 256-element blocks. Gemma 3 270M's
 * n_embd = 640 is not, which is why its quantizer stores those matrices as
 * Q5_0; a K-quant matrix of that width must be refused with a message that
 * says why, by the mat-vec check and by the dequantizer. */
Test(qmatvec, k_quant_width_not_whole_blocks) {
    static const ap_ggml_type kt[] = {AP_GGML_Q4_K, AP_GGML_Q5_K, AP_GGML_Q6_K};
    uint8_t buf[4 * 210] = {0};
    float out[640];
    for (size_t i = 0; i < sizeof kt / sizeof kt[0]; i++) {
        const char *tn = ap_ggml_type_traits((uint32_t)kt[i])->name;
        ap_err err = {0};
        cr_expect_eq(ap_ggml_row_size((uint32_t)kt[i], 640), 0u, "%s: 640 has no row size", tn);
        /* Any row size: the width is refused first. */
        ap_qmat w = {kt[i], buf, 3 * (size_t)ap_ggml_type_traits((uint32_t)kt[i])->type_size, 640,
                     4};
        cr_expect_eq(ap_qmat_check(&w, "blk.0.attn_q.weight", &err), AP_ERR_ARG, "%s", tn);
        cr_expect(strstr(err.msg, "blk.0.attn_q.weight") && strstr(err.msg, "640") &&
                      strstr(err.msg, tn) && strstr(err.msg, "256"),
                  "message should name the tensor, width, type and block size: %s", err.msg);
        err = (ap_err){0};
        cr_expect_eq(ap_dequant_row(kt[i], buf, out, 640, &err), AP_ERR_ARG, "%s", tn);
        cr_expect(strstr(err.msg, "640") && strstr(err.msg, tn) && strstr(err.msg, "256"),
                  "dequantize message: %s", err.msg);
    }
}

/* Cache rows in binary16: every one of the 65,536 halves loads exactly
 * (AVX2 = scalar, and storing it again gives its bits back unless it is a
 * NaN), and the AVX2 store rounds like ap_fp32_to_fp16 on finite values of
 * every scale (normal, subnormal, overflowing, exact ties). */
Test(qmatvec, kv_f16_rows) {
    enum { NH = 65536, NF = 200003 };
    uint16_t *h = malloc(NH * sizeof *h), *h2 = malloc(NH * sizeof *h2);
    float *fs = malloc(NH * sizeof *fs), *fv = malloc(NH * sizeof *fv);
    float *x = malloc(NF * sizeof *x);
    uint16_t *ys = malloc(NF * sizeof *ys), *yv = malloc(NF * sizeof *yv);
    cr_assert(h && h2 && fs && fv && x && ys && yv);
    for (int i = 0; i < NH; i++) h[i] = (uint16_t)i;
    const int n_isa = have_avx2() ? 2 : 1;
    const ap_qisa isas[2] = {AP_QISA_SCALAR, AP_QISA_AVX2};
    ap_kv_load_row(fs, h, AP_KV_F16, NH, AP_QISA_SCALAR);
    for (int ii = 0; ii < n_isa; ii++) {
        ap_kv_load_row(fv, h, AP_KV_F16, NH, isas[ii]);
        for (int i = 0; i < NH; i++) {
            cr_assert(memcmp(&fs[i], &fv[i], 4) == 0 || (isnan(fs[i]) && isnan(fv[i])),
                      "isa %d: half 0x%04x loads as %a, scalar %a", (int)isas[ii], i, fv[i],
                      fs[i]);
        }
        ap_kv_store_row(h2, AP_KV_F16, fs, NH, isas[ii]);
        for (int i = 0; i < NH; i++)
            if (!isnan(fs[i])) cr_assert_eq(h2[i], h[i], "isa %d: 0x%04x round trip", ii, i);
    }
    uint64_t s = 7;
    for (int i = 0; i < NF; i++) {
        const double e = ldexp(1.0, (int)(mix(&s) % 50) - 30); /* 2^-30 .. 2^19 */
        x[i] = (float)((2.0 * unif(&s) - 1.0) * e);
        if (i % 7 == 0) /* an exact tie between two halves */
            x[i] = (float)(ap_fp16_to_fp32((uint16_t)(mix(&s) & 0x7bff)) *
                           (1.0 + ldexp(1.0, -11)));
    }
    x[0] = INFINITY;
    x[1] = -INFINITY;
    x[2] = 65520.0f; /* rounds to infinity */
    x[3] = -0.0f;
    ap_kv_store_row(ys, AP_KV_F16, x, NF, AP_QISA_SCALAR);
    for (int i = 0; i < NF; i++) cr_assert_eq(ys[i], ap_fp32_to_fp16(x[i]));
    ap_kv_store_row(yv, AP_KV_F16, x, NF, isas[n_isa - 1]);
    for (int i = 0; i < NF; i++)
        cr_assert_eq(yv[i], ys[i], "%a: 0x%04x vs scalar 0x%04x", x[i], yv[i], ys[i]);
    free(h);
    free(h2);
    free(fs);
    free(fv);
    free(x);
    free(ys);
    free(yv);
}

/* Decode-attention products: odd key counts, strided rows, group sizes
 * 1..4, head_dim in whole 64-wide passes, with an 8-wide tail, or 12 (scalar
 * only); float32 and binary16 caches (the latter's values rounded first, so
 * the kernel and the reference see the same numbers). */
Test(qmatvec, kv_products) {
    static const int keys[] = {1, 3, 4, 5, 130, 1001};
    static const int heads[] = {1, 3, 4};
    static const int dims[] = {8, 24, 64, 72, 128, 12};
    ap_qisa isas[2] = {AP_QISA_SCALAR, AP_QISA_AVX2};
    uint64_t s = 99;
    double worst = 0.0;
    for (int kti = 0; kti < 2; kti++)
    for (int ii = 0; ii < (have_avx2() ? 2 : 1); ii++) {
        const ap_kv_type kt = kti ? AP_KV_F16 : AP_KV_F32;
        for (size_t a = 0; a < sizeof keys / sizeof *keys; a++) {
            for (size_t b = 0; b < sizeof heads / sizeof *heads; b++) {
                for (size_t c = 0; c < sizeof dims / sizeof *dims; c++) {
                    const int nk = keys[a], G = heads[b], hd = dims[c];
                    const size_t ldk = (size_t)hd * 3 + 5, lds = (size_t)nk + 7;
                    float *q = malloc((size_t)G * hd * sizeof(float));
                    float *k = malloc((size_t)nk * ldk * sizeof(float));
                    float *sc = malloc((size_t)G * lds * sizeof(float));
                    float *sr = malloc((size_t)G * lds * sizeof(float));
                    float *o = malloc((size_t)G * hd * sizeof(float));
                    float *orf = malloc((size_t)G * hd * sizeof(float));
                    cr_assert(q && k && sc && sr && o && orf);
                    for (int i = 0; i < G * hd; i++) q[i] = (float)(2.0 * unif(&s) - 1.0);
                    for (size_t i = 0; i < (size_t)nk * ldk; i++) k[i] = (float)(2 * unif(&s) - 1);
                    uint16_t *kh = malloc((size_t)nk * ldk * sizeof *kh);
                    cr_assert(kh);
                    if (kt == AP_KV_F16) {
                        ap_kv_store_row(kh, kt, k, (size_t)nk * ldk, AP_QISA_SCALAR);
                        ap_kv_load_row(k, kh, kt, (size_t)nk * ldk, AP_QISA_SCALAR);
                    }
                    const void *kc = kt == AP_KV_F16 ? (const void *)kh : (const void *)k;
                    ap_kv_scores(q, G, hd, kc, kt, ldk, nk, 0.125f, sc, lds, isas[ii]);
                    ap_kv_scores_ref(q, G, hd, kc, kt, ldk, nk, 0.125f, sr, lds);
                    /* Relative to the size of the summed terms, sum |q k|: a
                     * single dot product of random signs may cancel to ~0. */
                    double e = 0.0, mag = 1e-30;
                    for (int h = 0; h < G; h++) {
                        for (int j = 0; j < nk; j++) {
                            double m = 0.0;
                            for (int d = 0; d < hd; d++)
                                m += fabs((double)q[h * hd + d] * k[(size_t)j * ldk + d]);
                            if (0.125 * m > mag) mag = 0.125 * m;
                            double diff = fabs((double)sc[h * lds + j] - sr[h * lds + j]);
                            if (diff > e) e = diff;
                        }
                    }
                    e /= mag;
                    if (e > worst) worst = e;
                    cr_expect(e <= AP_TOL_KERNEL_REL, "scores nk %d G %d hd %d isa %d %s: %.3g",
                              nk, G, hd, (int)isas[ii], ap_kv_type_name(kt), e);
                    /* Mix with probability-like weights; V is the same strided
                     * buffer. Accumulate onto a nonzero start half the time. */
                    for (int h = 0; h < G; h++)
                        for (int j = 0; j < nk; j++) sc[h * lds + j] = (float)unif(&s);
                    int acc = (int)(mix(&s) & 1);
                    for (int i = 0; i < G * hd; i++) o[i] = orf[i] = acc ? (float)i * 0.01f : NAN;
                    mag = 1e-30;
                    for (int h = 0; h < G; h++) {
                        for (int d = 0; d < hd; d++) {
                            double m = acc ? fabs((double)o[h * hd + d]) : 0.0;
                            for (int j = 0; j < nk; j++)
                                m += fabs((double)sc[h * lds + j] * k[(size_t)j * ldk + d]);
                            if (m > mag) mag = m;
                        }
                    }
                    ap_kv_mix(sc, lds, G, kc, kt, ldk, nk, hd, o, acc, isas[ii]);
                    ap_kv_mix_ref(sc, lds, G, kc, kt, ldk, nk, hd, orf, acc);
                    e = ap_max_abs_err_f32(o, orf, G * hd) / mag;
                    if (e > worst) worst = e;
                    cr_expect(e <= AP_TOL_KERNEL_REL, "mix nk %d G %d hd %d isa %d acc %d %s: %.3g",
                              nk, G, hd, (int)isas[ii], acc, ap_kv_type_name(kt), e);
                    free(kh);
                    free(q);
                    free(k);
                    free(sc);
                    free(sr);
                    free(o);
                    free(orf);
                }
            }
        }
    }
    cr_log_info("kv products: worst rel err %.3g", worst);
}

/* Leading rows (at most 3000) of real tensors with activations of a
 * realistic scale, every ISA, against the float64 reference. `types`
 * (optional, same length as names) pins the type each tensor must have, so
 * the test cannot silently stop covering a kernel. */
static void check_real_tensors(const char *path, const char *const *names,
                               const ap_ggml_type *types, int n_names) {
    ap_gguf *g = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_gguf_open(path, &g, &err), AP_OK, "%s", err.msg);
    for (int i = 0; i < n_names; i++) {
        const ap_gguf_tensor *t = ap_gguf_find_tensor(g, names[i]);
        cr_assert(t, "%s missing", names[i]);
        if (types)
            cr_assert_eq(t->type, types[i], "%s: type %s, expected %s", names[i],
                         ap_ggml_type_traits((uint32_t)t->type)->name,
                         ap_ggml_type_traits((uint32_t)types[i])->name);
        int n_in = (int)t->ne[0], n_out = (int)(t->ne[1] < 3000 ? t->ne[1] : 3000);
        ap_qmat w = {t->type, t->data, ap_ggml_row_size((uint32_t)t->type, n_in), n_in, n_out};
        cr_assert_eq(ap_qmat_check(&w, names[i], &err), AP_OK, "%s", err.msg);
        float *x = malloc((size_t)n_in * sizeof *x);
        float *y = malloc((size_t)n_out * sizeof *y), *ref = malloc((size_t)n_out * sizeof *y);
        cr_assert(x && y && ref);
        rand_vec(x, n_in, 31 + (uint64_t)i, 0.1);
        for (int isa = AP_QISA_SCALAR; isa <= (have_avx2() ? AP_QISA_AVX2 : AP_QISA_SCALAR);
             isa++) {
            ap_qvec *v = NULL;
            cr_assert_eq(ap_qvec_create(n_in, AP_QACT_F32, (ap_qisa)isa, &v, &err), AP_OK);
            ap_qvec_set(v, x, n_in);
            ap_qmatvec(&w, v, y, 0, n_out, 0);
            ap_qmatvec_ref(&w, v, ref, 0, n_out, 0);
            double e = ap_rel_err_f32(y, ref, n_out);
            cr_expect(e <= AP_TOL_QDOT_REL, "%s isa %d: rel err %.3g", names[i], isa, e);
            cr_log_info("%s (%s, %d x %d) isa %d: rel err %.3g", names[i],
                        ap_ggml_type_traits((uint32_t)t->type)->name, n_out, n_in, isa, e);
            ap_qvec_free(v);
        }
        free(x);
        free(y);
        free(ref);
    }
    ap_gguf_free(g);
}

/* Real tensors of the default model. */
Test(qmatvec, real_model_tensors, .timeout = 600) {
    if (getenv("AP_SKIP_REAL_MODEL")) cr_skip_test("AP_SKIP_REAL_MODEL is set");
    if (!ap_file_exists(MODEL_PATH)) cr_skip_test("%s not found", MODEL_PATH);
    static const char *const names[] = {"blk.0.attn_q.weight", "blk.29.ffn_down.weight",
                                        "blk.13.ffn_gate.weight", "token_embd.weight"};
    check_real_tensors(MODEL_PATH, names, NULL, 4);
}

/* Gemma 3 270M Q4_K_M: one tensor of each quantized type it holds, at its
 * real widths (640, 1024, 2048). */
Test(qmatvec, gemma3_tensors, .timeout = 600) {
    if (getenv("AP_SKIP_REAL_MODEL")) cr_skip_test("AP_SKIP_REAL_MODEL is set");
    if (!ap_file_exists(GEMMA3_PATH)) cr_skip_test("%s not found", GEMMA3_PATH);
    static const char *const names[] = {"blk.0.attn_q.weight",      "blk.2.attn_v.weight",
                                        "blk.0.ffn_up.weight",      "blk.0.attn_v.weight",
                                        "blk.0.attn_output.weight", "blk.2.ffn_down.weight",
                                        "blk.0.ffn_down.weight",    "token_embd.weight"};
    static const ap_ggml_type types[] = {AP_GGML_Q5_0, AP_GGML_Q5_0, AP_GGML_Q5_0, AP_GGML_Q8_0,
                                         AP_GGML_Q4_K, AP_GGML_Q4_K, AP_GGML_Q6_K, AP_GGML_Q8_0};
    check_real_tensors(GEMMA3_PATH, names, types, 8);
}

/* ------------------------------------------------------------- the model */

static int argmax_f(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static void make_tokens(int32_t *t, int n, int n_vocab, uint64_t seed) {
    for (int i = 0; i < n; i++) t[i] = (int32_t)(mix(&seed) % (uint64_t)n_vocab);
}

/* Prefill n_pre tokens (in calls of `call`), then decode the rest one at a
 * time; logits of the last prefill token and of every decode step go to
 * out [(n - n_pre + 1)][V]. */
static void run_model(const ap_model *m, const int32_t *tok, int n, int n_pre, int call, int n_ctx,
                      int threads, const ap_attn_observer *obs, float *out) {
    const int V = ap_model_hparams(m)->n_vocab;
    ap_ctx *c = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_ctx_create(m, n_ctx, threads, &c, &err), AP_OK, "%s", err.msg);
    for (int at = 0; at < n_pre; at += call) {
        int k = n_pre - at < call ? n_pre - at : call;
        cr_assert_eq(ap_ctx_eval(c, tok + at, k, at + k == n_pre ? out : NULL, 0, obs, &err), AP_OK,
                     "%s", err.msg);
    }
    for (int t = n_pre; t < n; t++)
        cr_assert_eq(ap_ctx_eval(c, tok + t, 1, out + (size_t)(t - n_pre + 1) * V, 0, obs, &err),
                     AP_OK, "%s", err.msg);
    ap_ctx_free(c);
}

static ap_model *load_with(const ap_gguf *g, const ap_model_opts *o) {
    ap_model *m = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_model_load_opts(g, o, &m, &err), AP_OK, "%s", err.msg);
    return m;
}

/* Quantized decode vs the float32 engine, on one synthetic file. */
static void synth_quant_vs_f32(ap_ggml_type wtype, ap_ggml_type etype, int tied, int threads) {
    ap_synth_opts so;
    ap_synth_opts_default(&so);
    so.wtype = wtype;
    so.embd_type = etype;
    so.tied = tied;
    so.n_embd = 96; /* n_in 96 and n_ff 160: not multiples of 64 */
    so.n_head = 6;
    so.n_head_kv = 2;
    so.n_ff = 160;
    so.seed = (uint64_t)wtype * 7 + (uint64_t)etype;
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "qmv", ".gguf");
    ap_err err = {0};
    cr_assert_eq(ap_synth_model_write(path, &so, &err), AP_OK, "%s", err.msg);
    ap_gguf *g = NULL;
    cr_assert_eq(ap_gguf_open(path, &g, &err), AP_OK, "%s", err.msg);
    ap_model_opts oq, of, os, ob;
    ap_model_opts_default(&oq);
    of = oq;
    of.f32_weights = 1;
    os = oq;
    os.isa = AP_QISA_SCALAR;
    ob = oq;
    ob.borrow_weights = 1;
    ap_model *mq = load_with(g, &oq), *mf = load_with(g, &of), *ms = load_with(g, &os);
    ap_model *mb = load_with(g, &ob);
    cr_expect(ap_model_decode_weight_bytes(mf) > ap_model_decode_weight_bytes(mq));

    enum { N = 140, PRE = 100, STEPS = N - PRE + 1 };
    int32_t tok[N];
    make_tokens(tok, N, so.n_vocab, 3);
    const int V = so.n_vocab;
    float *lq = malloc((size_t)STEPS * V * sizeof(float)), *lf = malloc((size_t)STEPS * V * 4);
    float *ls = malloc((size_t)STEPS * V * sizeof(float)), *lb = malloc((size_t)STEPS * V * 4);
    cr_assert(lq && lf && ls && lb);
    /* Prefill in calls of 3 (quantized matvecs) and 30 (dequantized strips
     * + sgemm), then decode. */
    run_model(mq, tok, N, PRE, 3, 256, threads, NULL, lq);
    run_model(mf, tok, N, PRE, 30, 256, threads, NULL, lf);
    run_model(ms, tok, N, PRE, 30, 256, threads, NULL, ls);
    run_model(mb, tok, N, PRE, 3, 256, threads, NULL, lb);
    double worst = 0.0, worst_s = 0.0;
    for (int i = 0; i < STEPS; i++) {
        const float *a = lq + (size_t)i * V, *b = lf + (size_t)i * V, *s = ls + (size_t)i * V;
        double e = ap_rel_err_f32(a, b, V), es = ap_rel_err_f32(s, b, V);
        if (e > worst) worst = e;
        if (es > worst_s) worst_s = es;
        cr_expect(e <= AP_TOL_FORWARD_REL, "%s step %d: quantized vs float32 rel err %.3g",
                  ap_ggml_type_traits((uint32_t)wtype)->name, i, e);
        cr_expect(es <= AP_TOL_FORWARD_REL, "step %d: scalar kernels vs float32 rel err %.3g", i,
                  es);
        cr_expect_eq(argmax_f(a, V), argmax_f(b, V), "step %d: argmax differs", i);
    }
    cr_expect(memcmp(lq, lb, (size_t)STEPS * V * sizeof(float)) == 0,
              "borrowed weights must give the same bits as copied ones");
    cr_log_info("synthetic %s/%s tied %d: quantized vs float32 logits rel err %.3g (scalar %.3g)",
                ap_ggml_type_traits((uint32_t)wtype)->name,
                ap_ggml_type_traits((uint32_t)etype)->name, tied, worst, worst_s);
    free(lq);
    free(lf);
    free(ls);
    free(lb);
    ap_model_free(mb);
    ap_model_free(mq);
    ap_model_free(mf);
    ap_model_free(ms);
    ap_gguf_free(g);
    unlink(path);
}

Test(engine, synth_q4_1_tied) { synth_quant_vs_f32(AP_GGML_Q4_1, AP_GGML_Q8_0, 1, 2); }
Test(engine, synth_q8_0_untied) { synth_quant_vs_f32(AP_GGML_Q8_0, AP_GGML_Q8_0, 0, 1); }
Test(engine, synth_q4_0_f16_embd) { synth_quant_vs_f32(AP_GGML_Q4_0, AP_GGML_F16, 1, 3); }
Test(engine, synth_q5_1_untied) { synth_quant_vs_f32(AP_GGML_Q5_1, AP_GGML_Q4_1, 0, 2); }
Test(engine, synth_q5_0_tied) { synth_quant_vs_f32(AP_GGML_Q5_0, AP_GGML_Q8_0, 1, 2); }

/* Keeps the decode rows (positions >= from) of every (layer, head). */
typedef struct {
    int L, H, from, n;
    float *rows;   /* [L][H][n - from][n] */
    float *colsum; /* [L][H][n] of the last call */
    int *calls;
} keep_rows;

static void kr_row(void *u, int l, int h, int pos, const float *p, int len) {
    keep_rows *k = u;
    size_t s = (size_t)l * k->H + h;
    k->calls[s]++;
    if (pos >= k->from && pos < k->n && len == pos + 1)
        memcpy(k->rows + (s * (size_t)(k->n - k->from) + (size_t)(pos - k->from)) * k->n, p,
               (size_t)len * sizeof *p);
}

static void kr_colsum(void *u, int l, int h, const float *cs, int len) {
    keep_rows *k = u;
    if (len <= k->n) memcpy(k->colsum + ((size_t)l * k->H + h) * k->n, cs, (size_t)len * 4);
}

static void kr_init(keep_rows *k, int L, int H, int from, int n) {
    k->L = L;
    k->H = H;
    k->from = from;
    k->n = n;
    k->rows = calloc((size_t)L * H * (n - from) * n, sizeof(float));
    k->colsum = calloc((size_t)L * H * n, sizeof(float));
    k->calls = calloc((size_t)L * H, sizeof(int));
    cr_assert(k->rows && k->colsum && k->calls);
}

static void kr_free(keep_rows *k) {
    free(k->rows);
    free(k->colsum);
    free(k->calls);
}

/* Streaming decode attention (several 512-key chunks) vs ap_attn's BLAS
 * path at ~3K keys: logits, every decode row the observer sees, and the
 * column sums of the last step. */
Test(engine, decode_attention_long_context, .timeout = 600) {
    ap_synth_opts so;
    ap_synth_opts_default(&so);
    so.n_ctx = 4096;
    so.seed = 17;
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "qmvlong", ".gguf");
    ap_err err = {0};
    cr_assert_eq(ap_synth_model_write(path, &so, &err), AP_OK, "%s", err.msg);
    ap_gguf *g = NULL;
    cr_assert_eq(ap_gguf_open(path, &g, &err), AP_OK, "%s", err.msg);
    ap_model_opts on, ob;
    ap_model_opts_default(&on);
    ob = on;
    ob.decode_attn_blas = 1;
    ap_model *mn = load_with(g, &on), *mb = load_with(g, &ob);
    enum { N = 3003, PRE = 2995, STEPS = N - PRE + 1 };
    int32_t *tok = malloc(N * sizeof *tok);
    cr_assert(tok);
    make_tokens(tok, N, so.n_vocab, 11);
    const int V = so.n_vocab, L = so.n_layer, H = so.n_head;
    float *ln = malloc((size_t)STEPS * V * 4), *lb = malloc((size_t)STEPS * V * 4);
    cr_assert(ln && lb);
    keep_rows kn, kb;
    kr_init(&kn, L, H, PRE, N);
    kr_init(&kb, L, H, PRE, N);
    ap_attn_observer obn = {
        .user = &kn, .rows_from = PRE, .on_row = kr_row, .on_colsum = kr_colsum};
    ap_attn_observer obb = {
        .user = &kb, .rows_from = PRE, .on_row = kr_row, .on_colsum = kr_colsum};
    run_model(mn, tok, N, PRE, 512, N, 2, &obn, ln);
    run_model(mb, tok, N, PRE, 512, N, 2, &obb, lb);
    double worst_l = 0.0, worst_a = 0.0, worst_c = 0.0;
    for (int i = 0; i < STEPS; i++) {
        double e = ap_rel_err_f32(ln + (size_t)i * V, lb + (size_t)i * V, V);
        if (e > worst_l) worst_l = e;
        cr_expect(e <= AP_TOL_FORWARD_REL, "step %d: logits rel err %.3g", i, e);
    }
    for (size_t s = 0; s < (size_t)L * H; s++) {
        cr_expect_eq(kn.calls[s], N - PRE, "slot %zu: %d rows", s, kn.calls[s]);
        for (int p = PRE; p < N; p++) {
            size_t off = (s * (size_t)(N - PRE) + (size_t)(p - PRE)) * N;
            double e = ap_max_abs_err_f32(kn.rows + off, kb.rows + off, p + 1);
            if (e > worst_a) worst_a = e;
            cr_expect(e <= AP_TOL_FORWARD_REL, "slot %zu pos %d: attention abs err %.3g", s, p, e);
        }
        double e = ap_rel_err_f32(kn.colsum + s * N, kb.colsum + s * N, N);
        if (e > worst_c) worst_c = e;
        cr_expect(e <= AP_TOL_FORWARD_REL, "slot %zu: colsum rel err %.3g", s, e);
    }
    cr_log_info("streaming vs BLAS decode attention at %d keys: logits %.3g, rows %.3g, colsum "
                "%.3g",
                N, worst_l, worst_a, worst_c);
    kr_free(&kn);
    kr_free(&kb);
    free(ln);
    free(lb);
    free(tok);
    ap_model_free(mn);
    ap_model_free(mb);
    ap_gguf_free(g);
    unlink(path);
}

/* The default model on real text (the code prompt of the transformers
 * fixtures): 568-token prefill, then 32 decode steps through the quantized
 * engine, the float32 engine, (measured, not bounded) Q8 activations, and
 * the f16 KV cache (bounded by AP_TOL_KV_F16_LOGITS_REL_L2). */
Test(engine, real_model_quant_vs_f32, .timeout = 1800) {
    if (getenv("AP_SKIP_REAL_MODEL")) cr_skip_test("AP_SKIP_REAL_MODEL is set");
    if (!ap_file_exists(MODEL_PATH)) cr_skip_test("%s not found", MODEL_PATH);
    enum { N = 600, PRE = 568, STEPS = N - PRE + 1 };
    const int V = 49152, L = 30, H = 9;
    char *tb = NULL, *ab = NULL;
    size_t tl = 0, al = 0;
    ap_err err = {0};
    cr_assert_eq(ap_read_file(FIX_DIR "/code.tokens.i32", &tb, &tl, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_read_file(FIX_DIR "/code.argmax.i32", &ab, &al, &err), AP_OK, "%s", err.msg);
    cr_assert(tl == N * 4 && al == N * 4, "fixture sizes %zu, %zu", tl, al);
    int32_t tok[N], ref_am[N];
    memcpy(tok, tb, sizeof tok);
    memcpy(ref_am, ab, sizeof ref_am);
    free(tb);
    free(ab);

    ap_gguf *g = NULL;
    cr_assert_eq(ap_gguf_open(MODEL_PATH, &g, &err), AP_OK, "%s", err.msg);
    enum { NE = 4 };
    ap_model_opts opt[NE];
    for (int e = 0; e < NE; e++) ap_model_opts_default(&opt[e]);
    opt[1].f32_weights = 1;
    opt[2].q8_activations = 1;
    opt[2].borrow_weights = 1;
    opt[3].kv_type = AP_KV_F16;
    float *lg[NE];
    keep_rows kr[NE];
    for (int e = 0; e < NE; e++) {
        lg[e] = malloc((size_t)STEPS * V * sizeof(float));
        cr_assert(lg[e]);
        kr_init(&kr[e], L, H, PRE, N);
        ap_attn_observer ob = {.user = &kr[e], .rows_from = PRE, .on_row = kr_row};
        ap_model *m = load_with(g, &opt[e]);
        run_model(m, tok, N, PRE, 512, N, 2, &ob, lg[e]);
        ap_model_free(m);
    }
    double worst = 0.0, worst_l2 = 0.0, q8_l2 = 0.0, q8_attn = 0.0, attn = 0.0;
    double f16_l2 = 0.0, f16_attn = 0.0;
    int agree[NE] = {0};
    for (int i = 0; i < STEPS; i++) {
        const float *a = lg[0] + (size_t)i * V, *b = lg[1] + (size_t)i * V;
        double e = ap_rel_err_f32(a, b, V), e2 = ap_rel_l2_f32(a, b, V);
        if (e > worst) worst = e;
        if (e2 > worst_l2) worst_l2 = e2;
        cr_expect(e <= AP_TOL_FORWARD_REL, "step %d: quantized vs float32 rel err %.3g", i, e);
        cr_expect_eq(argmax_f(a, V), argmax_f(b, V), "step %d: argmax differs", i);
        /* Row i holds the logits of position PRE - 1 + i. */
        for (int k = 0; k < NE; k++)
            agree[k] += argmax_f(lg[k] + (size_t)i * V, V) == ref_am[PRE - 1 + i];
        double e8 = ap_rel_l2_f32(lg[2] + (size_t)i * V, a, V);
        if (e8 > q8_l2) q8_l2 = e8;
        double e16 = ap_rel_l2_f32(lg[3] + (size_t)i * V, a, V);
        if (e16 > f16_l2) f16_l2 = e16;
        cr_expect(e16 <= AP_TOL_KV_F16_LOGITS_REL_L2, "step %d: f16 vs f32 KV logits rel L2 %.3g",
                  i, e16);
    }
    cr_expect_eq(agree[0], STEPS, "quantized engine vs transformers argmax: %d/%d", agree[0],
                 STEPS);
    for (size_t sl = 0; sl < (size_t)L * H; sl++) {
        for (int p = PRE; p < N; p++) {
            size_t off = (sl * (size_t)(N - PRE) + (size_t)(p - PRE)) * N;
            double e = ap_max_abs_err_f32(kr[0].rows + off, kr[1].rows + off, p + 1);
            if (e > attn) attn = e;
            cr_expect(e <= AP_TOL_FORWARD_REL, "layer %zu head %zu pos %d: attention abs err %.3g",
                      sl / H, sl % H, p, e);
            e = ap_max_abs_err_f32(kr[2].rows + off, kr[0].rows + off, p + 1);
            if (e > q8_attn) q8_attn = e;
            e = ap_max_abs_err_f32(kr[3].rows + off, kr[0].rows + off, p + 1);
            if (e > f16_attn) f16_attn = e;
        }
    }
    cr_log_info("real model (code prompt, %d decode steps after %d): quantized vs float32 logits "
                "max rel %.3g, rel L2 %.3g, attention abs %.3g; argmax = transformers at %d/%d "
                "(float32 engine %d/%d)",
                STEPS - 1, PRE, worst, worst_l2, attn, agree[0], STEPS, agree[1], STEPS);
    cr_log_info("Q8 activations vs exact: logits rel L2 %.3g, attention abs %.3g; argmax = "
                "transformers at %d/%d",
                q8_l2, q8_attn, agree[2], STEPS);
    cr_log_info("f16 KV cache vs f32: logits rel L2 %.3g, attention abs %.3g; argmax = "
                "transformers at %d/%d",
                f16_l2, f16_attn, agree[3], STEPS);
    cr_expect_geq(agree[3], STEPS - 1, "f16 KV cache argmax vs transformers: %d/%d", agree[3],
                  STEPS);
    for (int e = 0; e < NE; e++) {
        free(lg[e]);
        kr_free(&kr[e]);
    }
    ap_gguf_free(g);
}
