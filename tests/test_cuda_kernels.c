/* The CUDA kernels of the transformer forward (RMSNorm, RoPE, SwiGLU,
 * softmax, causal attention with block views and column sums), each against
 * its CPU version and float64 reference on a table of odd shapes. The GPU
 * tests skip visibly without a device; the error paths (argument checks, no
 * device, no CUDA in the build) run everywhere. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/tolerance.h"
#include "kernels/attention.h"
#include "kernels/attention_cuda.h"
#include "kernels/block_pool.h"
#include "kernels/cuda_util.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"
#include "kernels/sparse_attn.h"
#include "kernels/swiglu.h"

#define SKIP_WITHOUT_GPU()                                                                         \
    do {                                                                                           \
        if (ap_cuda_device_count() == 0)                                                           \
            cr_skip_test("GPU test skipped: no CUDA device (or no CUDA build)");                   \
    } while (0)

/* ap_rel_err_f32, except that a NaN or Inf where the reference is finite
 * counts as an infinite error (its max loses a NaN unless it comes last). */
static double rel_err(const float *a, const float *b, long n) {
    for (long i = 0; i < n; i++)
        if (isfinite(b[i]) && !isfinite(a[i])) return INFINITY;
    return ap_rel_err_f32(a, b, n);
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fill(float *x, size_t n, uint64_t *s, float lo, float hi) {
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * (float)((double)(rng_next(s) >> 11) * 0x1.0p-53);
}

static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof *p);
    cr_assert(p, "out of memory");
    return p;
}

static void *to_dev(const void *h, size_t bytes) {
    void *d = NULL;
    ap_err e = {0};
    cr_assert_eq(ap_cuda_dup(&d, h, bytes, &e), AP_OK, "%s", e.msg);
    return d;
}

static void from_dev(void *h, const void *d, size_t bytes) {
    ap_err e = {0};
    cr_assert_eq(ap_cuda_to_host(h, d, bytes, NULL, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_cuda_sync(NULL, &e), AP_OK, "%s", e.msg);
}

static void sync_ok(void) {
    ap_err e = {0};
    cr_assert_eq(ap_cuda_sync(NULL, &e), AP_OK, "%s", e.msg);
}

/* ------------------------------------------------------ error paths */

Test(cuda_kernels, entry_points_fail_cleanly_without_a_device) {
    if (ap_cuda_device_count() > 0)
        cr_skip_test("this machine has a GPU: the no-device path is not reachable");
    /* Valid-looking arguments: the launch itself has to fail and say so. The
     * pointers are never dereferenced (no kernel can run). */
    float buf[64] = {0};
    ap_err e = {0};
#ifdef AP_HAVE_CUDA
    const ap_status want = AP_ERR_INTERNAL; /* the runtime's "no device/driver" */
#else
    const ap_status want = AP_ERR_UNSUPPORTED;
#endif
    struct {
        const char *name;
        ap_status st;
    } r[16];
    int n = 0;
    r[n].name = "rmsnorm";
    r[n++].st = ap_rmsnorm_cuda(buf, 8, buf, 8, buf, 2, 8, 1e-5f, NULL, &e);
    r[n].name = "rope";
    r[n++].st = ap_rope_cuda(buf, 8, 2, 1, 8, buf, NULL, &e);
    r[n].name = "swiglu";
    r[n++].st = ap_swiglu_cuda(buf, 8, buf, 8, buf, 8, 2, 8, NULL, &e);
    r[n].name = "softmax";
    r[n++].st = ap_softmax_rows_cuda(buf, 8, 2, 8, NULL, NULL, &e);
    ap_attn_cuda_args aa = {.n_q = 2,
                            .n_heads = 1,
                            .head_dim = 8,
                            .scale = 0.3f,
                            .q = buf,
                            .ldq = 8,
                            .k = buf,
                            .v = buf,
                            .ldkv = 8,
                            .out = buf,
                            .ldo = 8};
    r[n].name = "attention";
    r[n++].st = ap_attn_cuda(&aa, NULL, 0, NULL, &e);
    int off[2] = {0, 0};
    ap_sparse_attn_args sa = {.n_groups = 1,
                              .n_heads = 1,
                              .head_dim = 8,
                              .n_keys = 4,
                              .scale = 0.3f,
                              .q = buf,
                              .k = buf,
                              .v = buf,
                              .ldkv = 8,
                              .out = buf,
                              .block = 16,
                              .sink = 4,
                              .set_off = off};
    r[n].name = "sparse attention";
    r[n++].st = ap_sparse_attn_cuda(&sa, buf, (size_t)1 << 20, NULL, &e);
    void *d = buf;
    r[n].name = "malloc";
    r[n++].st = ap_cuda_malloc(&d, 64, &e);
    cr_expect_null(d, "a failed allocation leaves NULL");
    ap_cuda_stream s = (ap_cuda_stream)(void *)buf;
    r[n].name = "stream";
    r[n++].st = ap_cuda_stream_create(&s, &e);
    cr_expect_null(s, "a failed stream creation leaves NULL");
    for (int i = 0; i < n; i++)
        cr_expect(r[i].st == want, "%s: status %s, expected %s", r[i].name, ap_status_name(r[i].st),
                  ap_status_name(want));
    ap_err_clear(&e);
    cr_expect_neq(ap_rmsnorm_cuda(buf, 8, buf, 8, buf, 2, 8, 1e-5f, NULL, &e), AP_OK);
    cr_expect(strlen(e.msg) > 10, "the error says why: '%s'", e.msg);
    ap_cuda_free(NULL); /* no-ops */
    ap_cuda_host_free(NULL);
    ap_cuda_stream_free(NULL);
}

Test(cuda_kernels, argument_checks_precede_cuda) {
#ifndef AP_HAVE_CUDA
    cr_skip_test("no CUDA in this build: every _cuda call is AP_ERR_UNSUPPORTED (checked above)");
#else
    float buf[64] = {0};
    ap_err e = {0};
    /* Nothing to do is not an error (and touches no device). */
    cr_expect_eq(ap_rmsnorm_cuda(buf, 8, buf, 8, buf, 0, 8, 1e-5f, NULL, &e), AP_OK, "%s", e.msg);
    cr_expect_eq(ap_rope_cuda(buf, 8, 0, 1, 8, buf, NULL, &e), AP_OK, "%s", e.msg);
    cr_expect_eq(ap_swiglu_cuda(buf, 8, buf, 8, buf, 8, 0, 8, NULL, &e), AP_OK, "%s", e.msg);
    cr_expect_eq(ap_softmax_rows_cuda(buf, 8, 0, 8, NULL, NULL, &e), AP_OK, "%s", e.msg);
    /* Bad shapes, strides and pointers. */
    cr_expect_eq(ap_rmsnorm_cuda(buf, 8, buf, 8, buf, 2, 0, 1e-5f, NULL, &e), AP_ERR_ARG);
    cr_expect_eq(ap_rmsnorm_cuda(buf, 4, buf, 8, buf, 2, 8, 1e-5f, NULL, &e), AP_ERR_ARG);
    cr_expect_eq(ap_rmsnorm_cuda(NULL, 8, buf, 8, buf, 2, 8, 1e-5f, NULL, &e), AP_ERR_ARG);
    cr_expect_eq(ap_rope_cuda(buf, 7, 2, 1, 8, buf, NULL, &e), AP_ERR_ARG);
    cr_expect_eq(ap_swiglu_cuda(buf, 8, buf, 7, buf, 8, 2, 8, NULL, &e), AP_ERR_ARG);
    cr_expect_eq(ap_softmax_rows_cuda(buf, 8, -1, 8, NULL, NULL, &e), AP_ERR_ARG);
    ap_attn_cuda_args aa = {.n_q = 2,
                            .n_heads = 1,
                            .head_dim = 8,
                            .scale = 0.3f,
                            .q = buf,
                            .ldq = 8,
                            .k = buf,
                            .v = buf,
                            .ldkv = 8,
                            .out = buf,
                            .ldo = 8};
    ap_attn_cuda_args b = aa;
    b.head_dim = 300;
    cr_expect_eq(ap_attn_cuda(&b, NULL, 0, NULL, &e), AP_ERR_ARG);
    b = aa;
    b.bmax = buf;
    b.bsum = buf;
    b.vblock = 24;
    cr_expect_eq(ap_attn_cuda(&b, NULL, 0, NULL, &e), AP_ERR_UNSUPPORTED);
    cr_expect(strstr(e.msg, "multiple of 16"), "%s", e.msg);
    b = aa;
    b.colsum = (double *)buf;
    cr_expect_eq(ap_attn_cuda_work_bytes(&b), 2 * sizeof(float) * 2);
    cr_expect_eq(ap_attn_cuda(&b, buf, 8, NULL, &e), AP_ERR_ARG);
    cr_expect(strstr(e.msg, "work buffer"), "%s", e.msg);
    int off[2] = {0, 0};
    ap_sparse_attn_args sa = {.n_groups = 1,
                              .n_heads = 1,
                              .head_dim = 300,
                              .n_keys = 4,
                              .scale = 0.3f,
                              .q = buf,
                              .k = buf,
                              .v = buf,
                              .ldkv = 300,
                              .out = buf,
                              .block = 16,
                              .sink = 4,
                              .set_off = off};
    cr_expect_eq(ap_sparse_attn_cuda(&sa, buf, sizeof buf, NULL, &e), AP_ERR_UNSUPPORTED);
    sa.head_dim = 8;
    sa.ldkv = 8;
    cr_expect_eq(ap_sparse_attn_cuda(&sa, buf, 16, NULL, &e), AP_ERR_ARG);
    cr_expect(strstr(e.msg, "work buffer"), "%s", e.msg);
#endif
}

/* ------------------------------------------------------------ rmsnorm */

Test(cuda_kernels, rmsnorm_matches_cpu) {
    SKIP_WITHOUT_GPU();
    static const struct {
        int rows, n;
        size_t pad;
        float scale;
    } cases[] = {{1, 1, 0, 1.0f},     {3, 7, 5, 3.0f},    {5, 64, 0, 0.01f},
                 {2, 577, 3, 100.0f}, {1, 4097, 0, 1.0f}, {300, 576, 1, 2.0f}};
    uint64_t s = 17;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int rows = cases[c].rows, n = cases[c].n;
        size_t ld = (size_t)n + cases[c].pad, nx = (size_t)rows * ld;
        float *x = falloc(nx), *g = falloc(n), *yc = falloc(nx), *yr = falloc(nx), *yg = falloc(nx);
        fill(x, nx, &s, -cases[c].scale, cases[c].scale);
        fill(g, n, &s, 0.5f, 1.5f);
        ap_rmsnorm(yc, ld, x, ld, g, rows, n, 1e-5f);
        ap_rmsnorm_ref(yr, ld, x, ld, g, rows, n, 1e-5f);
        float *dx = to_dev(x, nx * 4), *dg = to_dev(g, (size_t)n * 4), *dy = to_dev(yg, nx * 4);
        ap_err e = {0};
        cr_assert_eq(ap_rmsnorm_cuda(dy, ld, dx, ld, dg, rows, n, 1e-5f, NULL, &e), AP_OK, "%s",
                     e.msg);
        from_dev(yg, dy, nx * 4);
        for (int r = 0; r < rows; r++) {
            double ec = rel_err(yg + r * ld, yc + r * ld, n);
            double er = rel_err(yg + r * ld, yr + r * ld, n);
            cr_expect(ec <= AP_TOL_CPU_GPU_REL, "case %zu row %d: vs CPU %.3g", c, r, ec);
            cr_expect(er <= AP_TOL_KERNEL_REL, "case %zu row %d: vs ref %.3g", c, r, er);
        }
        /* In place (y aliases x) gives the same numbers. */
        cr_assert_eq(ap_rmsnorm_cuda(dx, ld, dx, ld, dg, rows, n, 1e-5f, NULL, &e), AP_OK, "%s",
                     e.msg);
        from_dev(yc, dx, nx * 4);
        for (int r = 0; r < rows; r++)
            cr_expect(memcmp(yc + r * ld, yg + r * ld, (size_t)n * 4) == 0, "case %zu: in place",
                      c);
        ap_cuda_free(dx);
        ap_cuda_free(dg);
        ap_cuda_free(dy);
        free(x);
        free(g);
        free(yc);
        free(yr);
        free(yg);
    }
}

/* --------------------------------------------------------------- rope */

Test(cuda_kernels, rope_matches_cpu_bitwise) {
    SKIP_WITHOUT_GPU();
    static const struct {
        int rows, n_heads, hd, pos0;
        size_t pad;
    } cases[] = {{1, 1, 2, 0, 0},    {3, 9, 64, 0, 7},    {5, 3, 64, 4090, 0},
                 {17, 2, 10, 12, 1}, {8192, 9, 64, 0, 0}, {2, 1, 7, 5, 0}};
    uint64_t s = 23;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int rows = cases[c].rows, H = cases[c].n_heads, hd = cases[c].hd;
        size_t ld = (size_t)H * hd + cases[c].pad, nx = (size_t)rows * ld;
        float *x = falloc(nx), *xc = falloc(nx), *xr = falloc(nx), *xg = falloc(nx);
        float *cs = falloc((size_t)rows * hd);
        fill(x, nx, &s, -3.0f, 3.0f);
        ap_rope_table(cs, cases[c].pos0, rows, hd, 10000.0f);
        memcpy(xc, x, nx * 4);
        memcpy(xr, x, nx * 4);
        ap_rope(xc, ld, rows, H, hd, cs);
        ap_rope_ref(xr, ld, rows, H, hd, cs);
        float *dx = to_dev(x, nx * 4), *dcs = to_dev(cs, (size_t)rows * hd * 4);
        ap_err e = {0};
        cr_assert_eq(ap_rope_cuda(dx, ld, rows, H, hd, dcs, NULL, &e), AP_OK, "%s", e.msg);
        from_dev(xg, dx, nx * 4);
        /* Same float products and sums, no FMA on either side: equal bits,
         * padding and the odd last element untouched. */
        cr_expect(memcmp(xg, xc, nx * 4) == 0, "case %zu: GPU RoPE differs from the CPU's", c);
        double er = rel_err(xg, xr, (long)nx);
        cr_expect(er <= AP_TOL_KERNEL_REL, "case %zu: vs ref %.3g", c, er);
        ap_cuda_free(dx);
        ap_cuda_free(dcs);
        free(x);
        free(xc);
        free(xr);
        free(xg);
        free(cs);
    }
}

/* ------------------------------------------------------------- swiglu */

Test(cuda_kernels, swiglu_matches_cpu) {
    SKIP_WITHOUT_GPU();
    static const struct {
        int rows, n;
        size_t pad;
        float range;
    } cases[] = {{1, 1, 0, 1.0f},
                 {3, 7, 2, 4.0f},
                 {4, 1536, 0, 12.0f},
                 {33, 101, 5, 90.0f},
                 {1024, 1536, 0, 6.0f}};
    uint64_t s = 29;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int rows = cases[c].rows, n = cases[c].n;
        size_t ld = (size_t)n + cases[c].pad, nx = (size_t)rows * ld;
        float *g = falloc(nx), *u = falloc(nx), *oc = falloc(nx), *orf = falloc(nx),
              *og = falloc(nx);
        fill(g, nx, &s, -cases[c].range, cases[c].range);
        fill(u, nx, &s, -2.0f, 2.0f);
        ap_swiglu(oc, ld, g, ld, u, ld, rows, n);
        ap_swiglu_ref(orf, ld, g, ld, u, ld, rows, n);
        float *dg = to_dev(g, nx * 4), *du = to_dev(u, nx * 4), *dout = to_dev(og, nx * 4);
        ap_err e = {0};
        cr_assert_eq(ap_swiglu_cuda(dout, ld, dg, ld, du, ld, rows, n, NULL, &e), AP_OK, "%s",
                     e.msg);
        from_dev(og, dout, nx * 4);
        for (int r = 0; r < rows; r++) {
            double ec = rel_err(og + r * ld, oc + r * ld, n);
            double er = rel_err(og + r * ld, orf + r * ld, n);
            cr_expect(ec <= AP_TOL_CPU_GPU_REL, "case %zu row %d: vs CPU %.3g", c, r, ec);
            cr_expect(er <= AP_TOL_KERNEL_REL, "case %zu row %d: vs ref %.3g", c, r, er);
        }
        /* out aliasing gate. */
        cr_assert_eq(ap_swiglu_cuda(dg, ld, dg, ld, du, ld, rows, n, NULL, &e), AP_OK, "%s", e.msg);
        from_dev(oc, dg, nx * 4);
        for (int r = 0; r < rows; r++)
            cr_expect(memcmp(oc + r * ld, og + r * ld, (size_t)n * 4) == 0, "case %zu: in place",
                      c);
        ap_cuda_free(dg);
        ap_cuda_free(du);
        ap_cuda_free(dout);
        free(g);
        free(u);
        free(oc);
        free(orf);
        free(og);
    }
}

/* ------------------------------------------------------------ softmax */

Test(cuda_kernels, softmax_rows_match_cpu) {
    SKIP_WITHOUT_GPU();
    static const struct {
        int rows, n, with_len;
        size_t pad;
        float range;
    } cases[] = {{1, 1, 0, 0, 1.0f},
                 {3, 7, 0, 3, 10.0f},
                 {5, 300, 1, 0, 30.0f},
                 {2, 8192, 0, 0, 8.0f},
                 {64, 4099, 1, 1, 20.0f}};
    uint64_t s = 31;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int rows = cases[c].rows, n = cases[c].n;
        size_t ld = (size_t)n + cases[c].pad, nx = (size_t)rows * ld;
        float *x = falloc(nx), *xc = falloc(nx), *xr = falloc(nx), *xg = falloc(nx);
        int *len = calloc((size_t)rows, sizeof(int));
        fill(x, nx, &s, -cases[c].range, cases[c].range);
        for (int r = 0; r < rows; r++) len[r] = cases[c].with_len ? 1 + (r * 977) % n : n;
        if (cases[c].with_len && rows > 1) len[rows - 1] = 0; /* an empty row: all zeros */
        memcpy(xc, x, nx * 4);
        memcpy(xr, x, nx * 4);
        for (int r = 0; r < rows; r++) {
            if (len[r] > 0) {
                ap_softmax(xc + r * ld, len[r]);
                ap_softmax_ref(xr + r * ld, len[r]);
            }
            for (int i = len[r]; i < n; i++) xc[r * ld + i] = xr[r * ld + i] = 0.0f;
        }
        float *dx = to_dev(x, nx * 4);
        int *dlen = cases[c].with_len ? to_dev(len, (size_t)rows * sizeof(int)) : NULL;
        ap_err e = {0};
        cr_assert_eq(ap_softmax_rows_cuda(dx, ld, rows, n, dlen, NULL, &e), AP_OK, "%s", e.msg);
        from_dev(xg, dx, nx * 4);
        for (int r = 0; r < rows; r++) {
            double ec = rel_err(xg + r * ld, xc + r * ld, n);
            double er = rel_err(xg + r * ld, xr + r * ld, n);
            cr_expect(ec <= AP_TOL_CPU_GPU_REL, "case %zu row %d: vs CPU %.3g", c, r, ec);
            cr_expect(er <= AP_TOL_KERNEL_REL, "case %zu row %d: vs ref %.3g", c, r, er);
            if (cases[c].pad) /* padding between rows untouched */
                cr_expect_eq(memcmp(xg + r * ld + n, x + r * ld + n, cases[c].pad * 4), 0);
        }
        ap_cuda_free(dx);
        ap_cuda_free(dlen);
        free(x);
        free(xc);
        free(xr);
        free(xg);
        free(len);
    }
}

/* ---------------------------------------------------------- attention */

typedef struct {
    float *bmax, *bsum; /* [G][n_q][nvb] */
    int n_q, nvb, vblock, pos0;
} view_sink;

static void pool_row(void *user, int head, int pos, const float *probs, int len) {
    view_sink *v = user;
    size_t o = ((size_t)head * v->n_q + (pos - v->pos0)) * v->nvb;
    ap_block_pool(probs, len, v->vblock, v->nvb, v->bmax + o, v->bsum + o);
}

static void dbl_to_float(const double *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = (float)x[i];
}

Test(cuda_kernels, attention_with_views_matches_cpu) {
    SKIP_WITHOUT_GPU();
    static const struct {
        int n_q, pos0, G, hd, vblock, extra_blocks, colsum;
    } cases[] = {
        {1, 0, 1, 64, 16, 0, 1},    {1, 999, 3, 64, 16, 2, 1},  {37, 0, 3, 64, 16, 0, 1},
        {100, 50, 2, 7, 16, 1, 1},  {16, 16, 1, 256, 32, 0, 0}, {300, 4000, 3, 64, 16, 0, 1},
        {513, 0, 3, 130, 16, 3, 1}, {2048, 0, 3, 64, 16, 0, 0}, {40, 23, 2, 64, 48, 0, 1},
    };
    uint64_t s = 37;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int nq = cases[c].n_q, pos0 = cases[c].pos0, G = cases[c].G, hd = cases[c].hd;
        const int nk = pos0 + nq, vb = cases[c].vblock;
        const int nvb = (nk + vb - 1) / vb + cases[c].extra_blocks;
        const size_t ldq = (size_t)G * hd + 1, ldkv = (size_t)hd + 2, ldo = (size_t)G * hd + 3;
        float *q = falloc((size_t)nq * ldq), *k = falloc((size_t)nk * ldkv),
              *v = falloc((size_t)nk * ldkv);
        fill(q, (size_t)nq * ldq, &s, -2.0f, 2.0f);
        fill(k, (size_t)nk * ldkv, &s, -2.0f, 2.0f);
        fill(v, (size_t)nk * ldkv, &s, -1.0f, 1.0f);
        const size_t nout = (size_t)nq * ldo, nview = (size_t)G * nq * nvb, ncs = (size_t)G * nk;
        float *oc = falloc(nout), *og = falloc(nout);
        view_sink vs = {falloc(nview), falloc(nview), nq, nvb, vb, pos0};
        double *csc = calloc(ncs, sizeof(double)), *csg = calloc(ncs, sizeof(double));
        ap_attn_args a = {.n_q = nq,
                          .n_heads = G,
                          .pos0 = pos0,
                          .head_dim = hd,
                          .scale = 1.0f / sqrtf((float)hd),
                          .q = q,
                          .ldq = ldq,
                          .k = k,
                          .v = v,
                          .ldkv = ldkv,
                          .out = oc,
                          .ldo = ldo,
                          .colsum = cases[c].colsum ? csc : NULL,
                          .colsum_stride = (size_t)nk,
                          .on_row = pool_row,
                          .user = &vs,
                          .rows_from = 0};
        /* ap_attn's single-row group path reads heads at q + h*hd. */
        float *scratch = falloc(ap_attn_scratch_floats(64, G, nk));
        ap_attn(&a, scratch, 64);
        free(scratch);

        float *dq = to_dev(q, (size_t)nq * ldq * 4), *dk = to_dev(k, (size_t)nk * ldkv * 4),
              *dv = to_dev(v, (size_t)nk * ldkv * 4), *dout = to_dev(og, nout * 4);
        /* Views start as garbage: the kernel must write every entry. */
        float *junk = falloc(nview);
        for (size_t i = 0; i < nview; i++) junk[i] = 7.0f;
        float *dbmax = to_dev(junk, nview * 4), *dbsum = to_dev(junk, nview * 4);
        double *dcs = to_dev(csg, ncs * sizeof(double));
        ap_attn_cuda_args ga = {.n_q = nq,
                                .n_heads = G,
                                .pos0 = pos0,
                                .head_dim = hd,
                                .scale = a.scale,
                                .q = dq,
                                .ldq = ldq,
                                .k = dk,
                                .v = dv,
                                .ldkv = ldkv,
                                .out = dout,
                                .ldo = ldo,
                                .vblock = vb,
                                .n_vblocks = nvb,
                                .bmax = dbmax,
                                .bsum = dbsum,
                                .view_row_stride = (size_t)nvb,
                                .view_head_stride = (size_t)nq * nvb,
                                .colsum = cases[c].colsum ? dcs : NULL,
                                .colsum_stride = (size_t)nk};
        size_t wb = ap_attn_cuda_work_bytes(&ga);
        void *dw = NULL;
        ap_err e = {0};
        if (wb) cr_assert_eq(ap_cuda_malloc(&dw, wb, &e), AP_OK, "%s", e.msg);
        cr_assert_eq(ap_attn_cuda(&ga, dw, wb, NULL, &e), AP_OK, "case %zu: %s", c, e.msg);
        sync_ok();
        float *gmax = falloc(nview), *gsum = falloc(nview);
        from_dev(og, dout, nout * 4);
        from_dev(gmax, dbmax, nview * 4);
        from_dev(gsum, dbsum, nview * 4);
        for (int i = 0; i < nq; i++) {
            double eo = rel_err(og + i * ldo, oc + i * ldo, (long)G * hd);
            cr_expect(eo <= AP_TOL_CPU_GPU_REL, "case %zu row %d: output %.3g", c, i, eo);
        }
        double em = rel_err(gmax, vs.bmax, (long)nview);
        double es = rel_err(gsum, vs.bsum, (long)nview);
        cr_expect(em <= AP_TOL_CPU_GPU_REL, "case %zu: block_max %.3g", c, em);
        cr_expect(es <= AP_TOL_CPU_GPU_REL, "case %zu: block_sum %.3g", c, es);
        if (cases[c].colsum) {
            double *hcs = calloc(ncs, sizeof(double));
            from_dev(hcs, dcs, ncs * sizeof(double));
            float *f1 = falloc(ncs), *f2 = falloc(ncs);
            dbl_to_float(hcs, f1, ncs);
            dbl_to_float(csc, f2, ncs);
            double ec = rel_err(f1, f2, (long)ncs);
            cr_expect(ec <= AP_TOL_CPU_GPU_REL, "case %zu: column sums %.3g", c, ec);
            free(hcs);
            free(f1);
            free(f2);
        }
        /* Deterministic: a second run gives the same bits. */
        float *og2 = falloc(nout);
        cr_assert_eq(ap_attn_cuda(&ga, dw, wb, NULL, &e), AP_OK, "%s", e.msg);
        from_dev(og2, dout, nout * 4);
        cr_expect_eq(memcmp(og, og2, nout * 4), 0, "case %zu: rerun differs", c);
        free(og2);
        ap_cuda_free(dq);
        ap_cuda_free(dk);
        ap_cuda_free(dv);
        ap_cuda_free(dout);
        ap_cuda_free(dbmax);
        ap_cuda_free(dbsum);
        ap_cuda_free(dcs);
        ap_cuda_free(dw);
        free(q);
        free(k);
        free(v);
        free(oc);
        free(og);
        free(vs.bmax);
        free(vs.bsum);
        free(csc);
        free(csg);
        free(junk);
        free(gmax);
        free(gsum);
    }
}

/* ------------------------------------------------------ whole rows */

typedef struct {
    double *rows; /* [G][n_q][n_keys] from the float64 reference */
    int n_q, n_keys, pos0;
} row_sink;

static void keep_row(void *user, int head, int pos, const float *probs, int len) {
    row_sink *r = user;
    double *dst = r->rows + ((size_t)head * r->n_q + (pos - r->pos0)) * r->n_keys;
    for (int j = 0; j < len; j++) dst[j] = probs[j];
}

/* ap_attn_rows_cuda against ap_attn_ref (float64) on odd shapes; entries
 * past a row's last key stay as they were. */
Test(cuda_kernels, attention_rows_match_reference) {
    SKIP_WITHOUT_GPU();
    static const struct {
        int n_q, pos0, G, hd;
    } cases[] = {{1, 0, 1, 64}, {1, 999, 3, 64}, {37, 0, 3, 64}, {20, 50, 2, 7},
                 {5, 4000, 3, 130}, {64, 8000, 3, 64}, {3, 255, 1, 256}};
    uint64_t s = 91;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int nq = cases[c].n_q, pos0 = cases[c].pos0, G = cases[c].G, hd = cases[c].hd;
        const int nk = pos0 + nq;
        const size_t ldq = (size_t)G * hd + 1, ldkv = (size_t)hd + 2;
        float *q = falloc((size_t)nq * ldq), *k = falloc((size_t)nk * ldkv),
              *v = falloc((size_t)nk * ldkv), *o = falloc((size_t)nq * G * hd);
        fill(q, (size_t)nq * ldq, &s, -2.0f, 2.0f);
        fill(k, (size_t)nk * ldkv, &s, -2.0f, 2.0f);
        fill(v, (size_t)nk * ldkv, &s, -1.0f, 1.0f);
        const size_t nrow = (size_t)G * nq * nk;
        row_sink rs = {calloc(nrow, sizeof(double)), nq, nk, pos0};
        cr_assert(rs.rows);
        ap_attn_args a = {.n_q = nq, .n_heads = G, .pos0 = pos0, .head_dim = hd,
                          .scale = 1.0f / sqrtf((float)hd), .q = q, .ldq = ldq, .k = k, .v = v,
                          .ldkv = ldkv, .out = o, .ldo = (size_t)G * hd, .on_row = keep_row,
                          .user = &rs, .rows_from = 0};
        void *scratch = malloc(ap_attn_ref_scratch_bytes(nk));
        cr_assert(scratch);
        ap_attn_ref(&a, scratch);
        free(scratch);
        float *junk = falloc(nrow);
        for (size_t i = 0; i < nrow; i++) junk[i] = 7.0f;
        float *dq = to_dev(q, (size_t)nq * ldq * 4), *dk = to_dev(k, (size_t)nk * ldkv * 4);
        float *dp = to_dev(junk, nrow * 4);
        ap_attn_rows_cuda_args ga = {.n_q = nq, .n_heads = G, .pos0 = pos0, .head_dim = hd,
                                     .scale = a.scale, .q = dq, .ldq = ldq, .k = dk,
                                     .ldkv = ldkv, .probs = dp, .row_stride = (size_t)nk,
                                     .head_stride = (size_t)nq * nk};
        ap_err e = {0};
        cr_assert_eq(ap_attn_rows_cuda(&ga, NULL, &e), AP_OK, "case %zu: %s", c, e.msg);
        sync_ok();
        float *g = falloc(nrow);
        from_dev(g, dp, nrow * 4);
        for (int h = 0; h < G; h++)
            for (int i = 0; i < nq; i++) {
                const size_t at = ((size_t)h * nq + i) * nk;
                const int len = pos0 + i + 1;
                float *ref = falloc((size_t)len);
                for (int j = 0; j < len; j++) ref[j] = (float)rs.rows[at + j];
                double er = rel_err(g + at, ref, len);
                cr_expect(er <= AP_TOL_CPU_GPU_REL, "case %zu head %d row %d: rel %.3g", c, h, i,
                          er);
                for (int j = len; j < nk; j++)
                    cr_expect_eq(g[at + j], 7.0f, "case %zu: wrote past the row's last key", c);
                free(ref);
            }
        ap_cuda_free(dq);
        ap_cuda_free(dk);
        ap_cuda_free(dp);
        free(q);
        free(k);
        free(v);
        free(o);
        free(junk);
        free(g);
        free(rs.rows);
    }
}
