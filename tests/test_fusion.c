/* Query fusion (train/fusion.h): the Quest bound against a plain double
 * loop, z-scores, the fused score's gradient against central differences,
 * and a fused predictor through export, load and the runtime. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/tolerance.h"
#include "helpers/synth_trace.h"
#include "train/fusion.h"
#include "train/predictor.h"
#include "train/runtime.h"

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* The dispatching kernel (AVX2 where the CPU has it: four float64 lanes over
 * d) against the plain sequential reference, at head sizes with and
 * without a tail past the last multiple of 8. */
Test(fusion, query_bound_kernel_matches_its_reference) {
    const int hds[] = {8, 13, 64, 128};
    enum { N = 37 };
    uint64_t s = 9;
    for (size_t t = 0; t < sizeof hds / sizeof hds[0]; t++) {
        const int hd = hds[t];
        float *q = malloc(sizeof(float) * hd), *lo = malloc(sizeof(float) * N * hd),
              *hi = malloc(sizeof(float) * N * hd), out[N], ref[N];
        cr_assert(q && lo && hi);
        for (int e = 0; e < hd; e++) q[e] = 3.0f * frand(&s);
        for (int i = 0; i < N * hd; i++) {
            float a = 2.0f * frand(&s), b = 2.0f * frand(&s);
            lo[i] = a < b ? a : b;
            hi[i] = a < b ? b : a;
        }
        ap_query_bound(q, lo, hi, hd, N, out);
        ap_query_bound_ref(q, lo, hi, hd, N, ref);
        double rel = ap_rel_err_f32(out, ref, N);
        cr_assert(rel <= AP_TOL_KERNEL_REL, "hd %d: relative error %.3g", hd, rel);
        /* three queries in one pass: each equals its own call */
        float q3[3 * 128], out3[3 * N];
        for (int u = 0; u < 3; u++)
            for (int e = 0; e < hd; e++) q3[u * hd + e] = u == 1 ? q[e] : 2.0f * frand(&s);
        ap_query_bound_heads(q3, 3, lo, hi, hd, N, out3);
        for (int u = 0; u < 3; u++) {
            ap_query_bound(q3 + u * hd, lo, hi, hd, N, out);
            for (int j = 0; j < N; j++)
                cr_assert_eq(out3[u * N + j], out[j], "hd %d query %d block %d", hd, u, j);
        }
        /* in chunks of blocks (13, 13, 11) into rows of stride N: the same */
        float outc[3 * N];
        for (int j0 = 0; j0 < N; j0 += 13)
            ap_query_bound_heads_ld(q3, 3, lo + (size_t)j0 * hd, hi + (size_t)j0 * hd, hd,
                                    N - j0 < 13 ? N - j0 : 13, outc + j0, N);
        cr_assert_eq(memcmp(outc, out3, sizeof outc), 0, "hd %d: chunked bounds differ", hd);
        free(q);
        free(lo);
        free(hi);
    }
}

Test(fusion, query_bound_matches_a_plain_loop) {
    enum { HD = 7, N = 11 };
    float q[HD], lo[N * HD], hi[N * HD], out[N];
    uint64_t s = 5;
    for (int e = 0; e < HD; e++) q[e] = frand(&s);
    for (int i = 0; i < N * HD; i++) {
        float a = frand(&s), b = frand(&s);
        lo[i] = a < b ? a : b;
        hi[i] = a < b ? b : a;
    }
    ap_query_bound(q, lo, hi, HD, N, out);
    for (int j = 0; j < N; j++) {
        double want = 0.0;
        for (int e = 0; e < HD; e++) want += fmax((double)q[e] * lo[j * HD + e], (double)q[e] * hi[j * HD + e]);
        cr_assert_float_eq(out[j], want, AP_TOL_KERNEL_REL * (1.0 + fabs(want)), "block %d", j);
        /* an upper bound of q.k for every key inside the box */
        double mid = 0.0;
        for (int e = 0; e < HD; e++) mid += (double)q[e] * 0.5 * (lo[j * HD + e] + hi[j * HD + e]);
        cr_assert_leq(mid, out[j] + 1e-5);
    }
}

Test(fusion, zscore_is_centred_unit_and_flat_gives_zero) {
    float x[9] = {3, 1, 4, 1, 5, 9, 2, 6, 5}, z[9];
    ap_zscore(x, 9, z);
    double m = 0, v = 0;
    for (int j = 0; j < 9; j++) m += z[j];
    for (int j = 0; j < 9; j++) v += z[j] * z[j];
    cr_assert_float_eq(m / 9, 0.0, 1e-6);
    cr_assert_float_eq(v / 9, 1.0, 1e-5);
    for (int j = 1; j < 9; j++) cr_assert_eq(x[j] > x[0], z[j] > z[0], "order kept");
    float c[4] = {2.5f, 2.5f, 2.5f, 2.5f};
    ap_zscore(c, 4, c);
    for (int j = 0; j < 4; j++) cr_assert_eq(c[j], 0.0f);
}

/* L = sum_j g_j * fused_j: dL/dcnn and dL/dw against central differences. */
Test(fusion, backward_matches_differences) {
    enum { W = 13 };
    float cnn[W], zq[W], g[W], d[W], tmp[W], f[W];
    uint64_t s = 11;
    for (int j = 0; j < W; j++) {
        cnn[j] = frand(&s) * 3.0f;
        zq[j] = frand(&s);
        g[j] = frand(&s);
    }
    ap_zscore(zq, W, zq);
    const float w = 0.75f;
    double dw = ap_fuse_scores_backward(cnn, zq, W, w, g, d);
    const double h = 1e-3;
    double gmax = 0.0;
    for (int j = 0; j < W; j++) gmax = fmax(gmax, fabs(d[j]));
    for (int j = 0; j < W; j++) {
        double lp = 0, lm = 0;
        memcpy(tmp, cnn, sizeof cnn);
        tmp[j] = (float)(cnn[j] + h);
        ap_fuse_scores(tmp, zq, W, w, f);
        for (int i = 0; i < W; i++) lp += (double)g[i] * f[i];
        tmp[j] = (float)(cnn[j] - h);
        ap_fuse_scores(tmp, zq, W, w, f);
        for (int i = 0; i < W; i++) lm += (double)g[i] * f[i];
        cr_assert_float_eq(d[j], (lp - lm) / (2 * h), AP_TOL_PRED_GRAD_REL * gmax + 1e-4,
                           "column %d", j);
    }
    double want = 0.0;
    for (int j = 0; j < W; j++) want += (double)g[j] * zq[j];
    cr_assert_float_eq(dw, want, 1e-9);
    /* the fused score is blind to the CNN's scale and offset */
    float a[W], b[W];
    for (int j = 0; j < W; j++) tmp[j] = 7.0f * cnn[j] + 2.0f;
    ap_fuse_scores(cnn, zq, W, w, a);
    ap_fuse_scores(tmp, zq, W, w, b);
    for (int j = 0; j < W; j++) cr_assert_float_eq(a[j], b[j], 1e-5);
}

/* A fused predictor keeps its weight through export and load, and the
 * runtime's fusion equals z(cnn) + w z(bound) computed by hand; the paper's
 * predictor loads as before and fusion is a no-op for it. */
Test(fusion, export_load_and_runtime) {
    char path[512];
    snprintf(path, sizeof path, "/tmp/ap_fusion_%d.safetensors", (int)getpid());
    ap_pred_config c;
    ap_pred_config_default(&c);
    c.query_fusion = 1;
    cr_assert_eq(ap_pred_param_count(&c), 4834);
    ap_predictor *p = NULL;
    ap_err err;
    cr_assert_eq(ap_predictor_create(&c, 3, &p, &err), AP_OK, "%s", err.msg);
    size_t np = 0;
    float *params = ap_predictor_params(p, &np);
    ap_pred_layout L;
    ap_pred_layout_of(&c, &L);
    params[L.q] = 0.625f;
    cr_assert_eq(ap_pred_export(path, NULL, &c, params, &err), AP_OK, "%s", err.msg);
    ap_runtime *rt = NULL;
    cr_assert_eq(ap_runtime_load(path, &rt, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_runtime_config(rt)->query_fusion, 1);
    cr_assert_eq(ap_runtime_query_weight(rt, 0), 0.625f);
    enum { H = 64, W = 10, HD = 4 };
    float x[H * W], sc[W], want[W], q[HD], lo[W * HD], hi[W * HD], qb[W];
    uint64_t s = 9;
    for (int i = 0; i < H * W; i++) x[i] = 0.01f * (frand(&s) + 1.0f);
    for (int e = 0; e < HD; e++) q[e] = frand(&s);
    for (int i = 0; i < W * HD; i++) {
        lo[i] = -fabsf(frand(&s));
        hi[i] = fabsf(frand(&s));
    }
    cr_assert_eq(ap_runtime_predict(rt, 0, x, H, W, sc, &err), AP_OK, "%s", err.msg);
    ap_query_bound(q, lo, hi, HD, W, qb);
    ap_zscore(qb, W, qb);
    ap_fuse_scores(sc, qb, W, 0.625f, want);
    cr_assert_eq(ap_runtime_fuse_query(rt, 0, q, lo, hi, HD, W, sc, &err), AP_OK, "%s", err.msg);
    for (int j = 0; j < W; j++) cr_assert_float_eq(sc[j], want[j], 1e-6);
    ap_runtime_free(rt);
    /* the paper's model: 4,833 parameters, no query_weight, fusion a no-op */
    c.query_fusion = 0;
    cr_assert_eq(ap_pred_export(path, NULL, &c, params, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_runtime_load(path, &rt, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_runtime_query_weight(rt, 0), 0.0f);
    cr_assert_eq(ap_runtime_predict(rt, 0, x, H, W, sc, &err), AP_OK, "%s", err.msg);
    memcpy(want, sc, sizeof sc);
    cr_assert_eq(ap_runtime_fuse_query(rt, 0, q, lo, hi, HD, W, sc, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(memcmp(want, sc, sizeof sc), 0);
    ap_runtime_free(rt);
    ap_predictor_free(p);
    unlink(path);
}
