/* Each float32 kernel against its float64 _ref on odd shapes (sizes that are
 * not multiples of any vector width or block, strides larger than rows), plus
 * a few exact semantic checks the _ref could share a mistake with (RoPE
 * pairing, softmax normalization, causal masking). */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/tolerance.h"
#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"
#include "kernels/swiglu.h"

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
    cr_assert(p);
    return p;
}

/* ------------------------------------------------------------- rmsnorm */

Test(kernels, rmsnorm_vs_ref) {
    static const struct {
        int rows, n;
        size_t pad;
        float scale;
    } cases[] = {{1, 1, 0, 1.0f}, {3, 7, 5, 3.0f}, {5, 64, 0, 0.01f}, {2, 577, 3, 100.0f},
                 {1, 4097, 0, 1.0f}};
    uint64_t s = 11;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int rows = cases[c].rows, n = cases[c].n;
        size_t ld = (size_t)n + cases[c].pad;
        float *x = falloc(rows * ld), *g = falloc(n), *y = falloc(rows * ld),
              *yr = falloc(rows * ld);
        fill(x, rows * ld, &s, -cases[c].scale, cases[c].scale);
        fill(g, n, &s, 0.5f, 1.5f);
        ap_rmsnorm(y, ld, x, ld, g, rows, n, 1e-5f);
        ap_rmsnorm_ref(yr, ld, x, ld, g, rows, n, 1e-5f);
        for (int r = 0; r < rows; r++) {
            double e = ap_rel_err_f32(y + r * ld, yr + r * ld, n);
            cr_expect(e <= AP_TOL_KERNEL_REL, "case %zu row %d: rel err %.3g", c, r, e);
            /* Output RMS is mean(g^2)-weighted unit: check it is O(1), i.e.
             * the normalization happened at all. */
            double ss = 0.0;
            for (int i = 0; i < n; i++) ss += (double)yr[r * ld + i] * yr[r * ld + i];
            cr_expect(sqrt(ss / n) > 0.3 && sqrt(ss / n) < 2.0, "case %zu: rms %.3g", c,
                      sqrt(ss / n));
        }
        /* In place gives the same numbers. */
        ap_rmsnorm(x, ld, x, ld, g, rows, n, 1e-5f);
        for (int r = 0; r < rows; r++)
            cr_expect(memcmp(x + r * ld, y + r * ld, (size_t)n * sizeof(float)) == 0,
                      "case %zu: in-place differs", c);
        free(x);
        free(g);
        free(y);
        free(yr);
    }
}

/* ---------------------------------------------------------------- rope */

Test(kernels, rope_vs_ref) {
    static const struct {
        int rows, heads, hd, pos0;
        float base;
        size_t pad;
    } cases[] = {{1, 1, 2, 0, 10000.0f, 0},     {3, 2, 8, 5, 10000.0f, 3},
                 {7, 12, 64, 2000, 100000.0f, 0}, {4, 3, 6, 8187, 500000.0f, 1},
                 {2, 1, 128, 77, 10000.0f, 0}};
    uint64_t s = 12;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int rows = cases[c].rows, hd = cases[c].hd;
        size_t ld = (size_t)cases[c].heads * hd + cases[c].pad;
        float *cs = falloc((size_t)rows * hd), *x = falloc(rows * ld), *xr = falloc(rows * ld);
        ap_rope_table(cs, cases[c].pos0, rows, hd, cases[c].base);
        fill(x, rows * ld, &s, -2.0f, 2.0f);
        memcpy(xr, x, rows * ld * sizeof(float));
        float *x0 = falloc(rows * ld);
        memcpy(x0, x, rows * ld * sizeof(float));
        ap_rope(x, ld, rows, cases[c].heads, hd, cs);
        ap_rope_ref(xr, ld, rows, cases[c].heads, hd, cs);
        double e = ap_rel_err_f32(x, xr, (long)(rows * ld));
        cr_expect(e <= AP_TOL_KERNEL_REL, "case %zu: rel err %.3g", c, e);
        /* Padding columns are untouched; every pair keeps its length. */
        for (int r = 0; r < rows; r++) {
            for (size_t i = (size_t)cases[c].heads * hd; i < ld; i++)
                cr_expect(x[r * ld + i] == x0[r * ld + i], "case %zu: pad clobbered", c);
            for (int p = 0; p < cases[c].heads * hd / 2; p++) {
                double a = hypot(x0[r * ld + 2 * p], x0[r * ld + 2 * p + 1]);
                double b = hypot(xr[r * ld + 2 * p], xr[r * ld + 2 * p + 1]);
                cr_expect(fabs(a - b) <= 1e-5 * (a + 1e-3), "case %zu: pair norm changed", c);
            }
        }
        /* The table angles follow pos * base^(-2i/hd) (checked in double;
         * the float32 angle is off by at most ~2 ulp of the angle). */
        for (int r = 0; r < rows; r++) {
            for (int i = 0; i < hd / 2; i++) {
                double ang = (cases[c].pos0 + r) * pow(cases[c].base, -2.0 * i / hd);
                double tol = 4.0 * ldexp(1.0, ilogb(ang > 1.0 ? ang : 1.0) - 23) + 1e-6;
                cr_expect(fabs(cs[r * hd + 2 * i] - cos(ang)) <= tol, "case %zu cos", c);
                cr_expect(fabs(cs[r * hd + 2 * i + 1] - sin(ang)) <= tol, "case %zu sin", c);
            }
        }
        free(cs);
        free(x);
        free(xr);
        free(x0);
    }
}

Test(kernels, rope_rotates_adjacent_pairs) {
    /* head_dim 4 at position 1, base 10000: pair 0 turns by 1 rad, pair 1 by
     * 10000^(-1/2) = 0.01 rad. A rotate-half implementation would mix x[0]
     * with x[2] instead. */
    float cs[4], x[4] = {1.0f, 0.0f, 0.0f, 2.0f};
    ap_rope_table(cs, 1, 1, 4, 10000.0f);
    ap_rope(x, 4, 1, 1, 4, cs);
    cr_expect(fabs(x[0] - cos(1.0)) < 1e-6 && fabs(x[1] - sin(1.0)) < 1e-6, "pair 0: %g %g", x[0],
              x[1]);
    cr_expect(fabs(x[2] - (-2.0 * sin(0.01))) < 1e-6 && fabs(x[3] - 2.0 * cos(0.01)) < 1e-6,
              "pair 1: %g %g", x[2], x[3]);
    /* Position 0 is the identity. */
    float y[4] = {0.3f, -0.7f, 1.5f, 2.5f}, y0[4];
    memcpy(y0, y, sizeof y);
    ap_rope_table(cs, 0, 1, 4, 10000.0f);
    ap_rope(y, 4, 1, 1, 4, cs);
    cr_expect(memcmp(y, y0, sizeof y) == 0);
}

Test(kernels, rope_neox_vs_ref_and_pairs) {
    /* NEOX pairs (x[i], x[i + hd/2]), from a scaled table (Llama 3 factors
     * and linear scaling share the table path). */
    static const struct {
        int rows, heads, hd, pos0;
        float base, scale;
        int factors;
    } cases[] = {{1, 1, 4, 1, 10000.0f, 1.0f, 0},   {3, 5, 64, 33, 1e6f, 1.0f, 0},
                 {4, 2, 256, 30000, 1e6f, 0.125f, 0}, {2, 3, 16, 500, 5e5f, 1.0f, 1}};
    uint64_t s = 21;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int rows = cases[c].rows, hd = cases[c].hd, H = cases[c].heads;
        size_t ld = (size_t)H * hd;
        float *cs = falloc((size_t)rows * hd), *x = falloc(rows * ld), *xr = falloc(rows * ld);
        float *ff = falloc((size_t)hd / 2);
        for (int i = 0; i < hd / 2; i++) ff[i] = 1.0f + (float)(i % 3);
        ap_rope_table_scaled(cs, cases[c].pos0, rows, hd, cases[c].base, cases[c].scale,
                             cases[c].factors ? ff : NULL);
        fill(x, rows * ld, &s, -2.0f, 2.0f);
        memcpy(xr, x, rows * ld * sizeof(float));
        ap_rope_styled(x, ld, rows, H, hd, cs, AP_ROPE_NEOX);
        ap_rope_styled_ref(xr, ld, rows, H, hd, cs, AP_ROPE_NEOX);
        double e = ap_rel_err_f32(x, xr, (long)(rows * ld));
        cr_expect(e <= AP_TOL_KERNEL_REL, "case %zu: rel err %.3g", c, e);
        /* The table's angle: pos * base^(-2i/hd) / factor * scale. */
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < hd / 2; i++) {
                double ang = (cases[c].pos0 + r) * pow(cases[c].base, -2.0 * i / hd) /
                             (cases[c].factors ? ff[i] : 1.0) * cases[c].scale;
                double tol = 8.0 * ldexp(1.0, ilogb(ang > 1.0 ? ang : 1.0) - 23) + 1e-6;
                cr_expect(fabs(cs[r * hd + 2 * i] - cos(ang)) <= tol, "case %zu cos %d", c, i);
            }
        free(cs);
        free(x);
        free(xr);
        free(ff);
    }
    /* head_dim 4 at position 1: pair 0 is (x[0], x[2]) turned by 1 rad. */
    float cs[4], x[4] = {1.0f, 0.0f, 0.0f, 2.0f};
    ap_rope_table(cs, 1, 1, 4, 10000.0f);
    ap_rope_styled(x, 4, 1, 1, 4, cs, AP_ROPE_NEOX);
    cr_expect(fabs(x[0] - cos(1.0)) < 1e-6 && fabs(x[2] - sin(1.0)) < 1e-6, "pair 0: %g %g", x[0],
              x[2]);
    cr_expect(fabs(x[1] - (-2.0 * sin(0.01))) < 1e-6 && fabs(x[3] - 2.0 * cos(0.01)) < 1e-6,
              "pair 1: %g %g", x[1], x[3]);
}

Test(kernels, rope_yarn_table) {
    /* head_dim 16, base 1e4, 2048 original tokens: the correction dims of 32
     * and 1 rotations are 2.02 and 5.03 pairs, so the ramp runs over pairs
     * [2, 6]: below it frequencies are kept, above it divided by the factor,
     * between them blended monotonically; cos/sin carry the attention factor. */
    const int hd = 16;
    const float base = 10000.0f;
    ap_rope_yarn y = {.factor = 4.0f, .orig_ctx = 2048, .beta_fast = 32.0f, .beta_slow = 1.0f,
                      .attn_factor = 1.25f};
    double prev_ratio = 1.0;
    for (int i = 0; i < hd / 2; i++) {
        double plain = pow(base, -2.0 * i / hd);
        double ratio = ap_rope_yarn_inv_freq(i, hd, base, &y) / plain; /* 1 kept, 1/4 scaled */
        double want = i <= 2 ? 1.0 : i >= 6 ? 0.25 : 1.0 - 0.75 * (i - 2) / 4.0;
        cr_expect(fabs(ratio - want) <= 1e-6, "pair %d: frequency ratio %.8f, want %.8f", i, ratio,
                  want);
        cr_expect(ratio <= prev_ratio + 1e-6, "pair %d: the ramp must not rise", i);
        prev_ratio = ratio;
    }
    float cs[3 * 16];
    ap_rope_table_yarn(cs, 100, 3, hd, base, &y);
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < hd / 2; i++) {
            double c = cs[r * hd + 2 * i], sn = cs[r * hd + 2 * i + 1];
            cr_expect(fabs(sqrt(c * c + sn * sn) - 1.25) <= 1e-6, "row %d pair %d: |cs| %g", r, i,
                      sqrt(c * c + sn * sn));
            double ang = (100 + r) * (double)ap_rope_yarn_inv_freq(i, hd, base, &y);
            cr_expect(fabs(c - 1.25 * cos(ang)) <= 1e-5, "row %d pair %d: cos", r, i);
        }
    /* Factor 1 with attention factor 1 is plain RoPE (up to the rounding of
     * the blend: one ulp of a frequency, ~1e-6 in cos at these angles). */
    ap_rope_yarn one = {.factor = 1.0f, .orig_ctx = 2048, .beta_fast = 32.0f, .beta_slow = 1.0f,
                        .attn_factor = 1.0f};
    float plain_cs[3 * 16];
    ap_rope_table_yarn(cs, 7, 3, hd, base, &one);
    ap_rope_table(plain_cs, 7, 3, hd, base);
    for (int k = 0; k < 3 * 16; k++)
        cr_expect(fabs(cs[k] - plain_cs[k]) <= 2e-6, "factor 1: entry %d %g vs %g", k, cs[k],
                  plain_cs[k]);
}

/* ------------------------------------------------------------- softmax */

Test(kernels, softmax_vs_ref) {
    static const struct {
        int n;
        float lo, hi;
    } cases[] = {{1, -1, 1},    {2, -5, 5},      {7, -30, 30},    {8, 0, 0},
                 {9, -80, 10},  {33, -1e4, 1e4}, {1000, -3, 3},   {8193, -50, 50}};
    uint64_t s = 13;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int n = cases[c].n;
        float *x = falloc(n), *xr = falloc(n);
        fill(x, n, &s, cases[c].lo, cases[c].hi);
        memcpy(xr, x, n * sizeof(float));
        ap_softmax(x, n);
        ap_softmax_ref(xr, n);
        double e = ap_rel_err_f32(x, xr, n);
        cr_expect(e <= AP_TOL_KERNEL_REL, "case %zu (n=%d): rel err %.3g", c, n, e);
        double sum = 0.0;
        for (int i = 0; i < n; i++) {
            cr_expect(x[i] >= 0.0f && x[i] <= 1.0f);
            sum += x[i];
        }
        cr_expect(fabs(sum - 1.0) < 1e-5, "case %zu: sum %.9g", c, sum);
        free(x);
        free(xr);
    }
}

Test(kernels, exp_polynomial_accuracy) {
    /* [-86, 0] at a stride: relative error of a few ulps; below -86 exactly
     * 0 (no subnormals), and a row with such entries still sums right. */
    float buf[1];
    double worst = 0.0;
    for (double v = -86.0; v <= 0.0; v += 0.000731) {
        buf[0] = (float)v;
        ap_exp_shift_sum(buf, 1, 0.0f);
        double want = exp((double)(float)v);
        double e = fabs(buf[0] - want) / want;
        if (e > worst) worst = e;
    }
    cr_expect(worst < 1e-6, "worst relative error %.3g", worst);
    float far[3] = {-86.5f, -1000.0f, -1e30f};
    cr_expect(ap_exp_shift_sum(far, 3, 0.0f) == 0.0f);
    cr_expect(far[0] == 0.0f && far[1] == 0.0f && far[2] == 0.0f);
    float row[5] = {0.0f, -90.0f, -1.0f, -85.0f, NAN};
    float s = ap_exp_shift_sum(row, 4, 0.0f);
    cr_expect(row[1] == 0.0f && row[3] > 0.0f && fabs(s - (1.0 + exp(-1.0) + exp(-85.0))) < 1e-6);
    cr_expect(ap_row_max(row, 5) == 1.0f); /* exp(0) from above; NaN skipped */
    float sh[2] = {10.0f, 9.0f};
    cr_expect(fabs(ap_exp_shift_sum(sh, 2, 10.0f) - (1.0 + exp(-1.0))) < 1e-6);
    cr_expect(sh[0] == 1.0f && fabs(sh[1] - exp(-1.0)) < 1e-7);
    cr_expect(ap_row_max(row, 0) == -FLT_MAX);
}

/* -------------------------------------------------------------- matmul */

Test(kernels, matmul_vs_ref) {
    static const struct {
        int T, n_in, n_out, acc;
        size_t pad;
    } cases[] = {{1, 1, 1, 0, 0},    {1, 577, 33, 1, 0}, {3, 7, 5, 0, 2},
                 {17, 64, 100, 1, 1}, {130, 96, 65, 0, 0}, {2, 1536, 9, 1, 4}};
    uint64_t s = 14;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int T = cases[c].T, ni = cases[c].n_in, no = cases[c].n_out;
        size_t ldx = ni + cases[c].pad, ldw = ni + cases[c].pad, ldy = no + cases[c].pad;
        float *x = falloc(T * ldx), *w = falloc(no * ldw), *y = falloc(T * ldy),
              *yr = falloc(T * ldy);
        fill(x, T * ldx, &s, -1, 1);
        fill(w, no * ldw, &s, -1, 1);
        fill(y, T * ldy, &s, -1, 1);
        memcpy(yr, y, T * ldy * sizeof(float));
        float *y0 = falloc(T * ldy);
        memcpy(y0, y, T * ldy * sizeof(float));
        ap_matmul(y, ldy, x, ldx, w, ldw, T, ni, no, cases[c].acc);
        ap_matmul_ref(yr, ldy, x, ldx, w, ldw, T, ni, no, cases[c].acc);
        for (int t = 0; t < T; t++) {
            double e = ap_rel_err_f32(y + t * ldy, yr + t * ldy, no);
            cr_expect(e <= AP_TOL_KERNEL_REL, "case %zu row %d: rel err %.3g", c, t, e);
            for (size_t o = no; o < ldy; o++)
                cr_expect(y[t * ldy + o] == y0[t * ldy + o], "case %zu: pad clobbered", c);
        }
        /* accumulate really adds: the result must move with the old y. */
        if (cases[c].acc) {
            double d = 0.0;
            for (int t = 0; t < T; t++)
                for (int o = 0; o < no; o++) {
                    double plain = 0.0;
                    for (int i = 0; i < ni; i++) plain += (double)x[t * ldx + i] * w[o * ldw + i];
                    d += fabs(yr[t * ldy + o] - plain - y0[t * ldy + o]);
                }
            cr_expect(d < 1e-3 * T * no, "case %zu: accumulate did not add", c);
        }
        free(x);
        free(w);
        free(y);
        free(yr);
        free(y0);
    }
}

/* -------------------------------------------------------------- swiglu */

Test(kernels, swiglu_vs_ref) {
    static const struct {
        int rows, n;
        float range;
    } cases[] = {{1, 1, 1}, {3, 97, 5}, {2, 1536, 100}, {5, 33, 0.01f}};
    uint64_t s = 15;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int rows = cases[c].rows, n = cases[c].n;
        size_t ld = 2 * (size_t)n + 1; /* gate | up | pad, like the model */
        float *gu = falloc(rows * ld), *o = falloc(rows * n), *orf = falloc(rows * n);
        fill(gu, rows * ld, &s, -cases[c].range, cases[c].range);
        ap_swiglu(o, n, gu, ld, gu + n, ld, rows, n);
        ap_swiglu_ref(orf, n, gu, ld, gu + n, ld, rows, n);
        for (int r = 0; r < rows; r++) {
            double e = ap_rel_err_f32(o + r * n, orf + r * n, n);
            cr_expect(e <= AP_TOL_KERNEL_REL, "case %zu row %d: rel err %.3g", c, r, e);
        }
        /* In place into the gate half, as the model runs it. */
        ap_swiglu(gu, ld, gu, ld, gu + n, ld, rows, n);
        for (int r = 0; r < rows; r++)
            cr_expect(memcmp(gu + r * ld, o + r * n, n * sizeof(float)) == 0);
        free(gu);
        free(o);
        free(orf);
    }
    /* Far tails: silu(-200) is -0 (no overflow to NaN), silu(200) = 200. */
    float g[5] = {-200.0f, 0.0f, 200.0f, -1e30f, 1e30f}, u[5] = {1, 1, 1, 1, 1}, out[5];
    ap_swiglu(out, 5, g, 5, u, 5, 1, 5);
    cr_expect(out[0] == 0.0f && out[1] == 0.0f && out[2] == 200.0f && out[3] == 0.0f &&
                  out[4] == 1e30f,
              "%g %g %g %g %g", out[0], out[1], out[2], out[3], out[4]);
}

Test(kernels, geglu_tanh_vs_ref) {
    static const struct {
        int rows, n;
        float range;
    } cases[] = {{1, 1, 1}, {3, 97, 5}, {2, 2048, 30}, {5, 33, 0.01f}};
    uint64_t s = 19;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int rows = cases[c].rows, n = cases[c].n;
        size_t ld = 2 * (size_t)n + 1;
        float *gu = falloc(rows * ld), *o = falloc(rows * n), *orf = falloc(rows * n);
        fill(gu, rows * ld, &s, -cases[c].range, cases[c].range);
        ap_geglu_tanh(o, n, gu, ld, gu + n, ld, rows, n);
        ap_geglu_tanh_ref(orf, n, gu, ld, gu + n, ld, rows, n);
        for (int r = 0; r < rows; r++) {
            double e = ap_rel_err_f32(o + r * n, orf + r * n, n);
            cr_expect(e <= AP_TOL_KERNEL_REL, "case %zu row %d: rel err %.3g", c, r, e);
        }
        ap_geglu_tanh(gu, ld, gu, ld, gu + n, ld, rows, n);
        for (int r = 0; r < rows; r++)
            cr_expect(memcmp(gu + r * ld, o + r * n, n * sizeof(float)) == 0, "in place");
        free(gu);
        free(o);
        free(orf);
    }
    /* gelu(-inf side) -> -0, gelu(large) = x, gelu(0) = 0, no NaN. */
    float g[4] = {-200.0f, 0.0f, 200.0f, -1e30f}, u[4] = {1, 1, 1, 1}, out[4];
    ap_geglu_tanh(out, 4, g, 4, u, 4, 1, 4);
    cr_expect(out[0] == 0.0f && out[1] == 0.0f && out[2] == 200.0f && out[3] == 0.0f,
              "%g %g %g %g", out[0], out[1], out[2], out[3]);
}

/* ----------------------------------------------------------- attention */

typedef struct {
    int n_q, pos0, n_keys, n_heads;
    float *rows; /* [n_heads][n_q][n_keys] */
    int calls, bad_len, out_of_order;
    int last_pos[8];
} row_sink;

static void sink_init(row_sink *s, int nq, int p0, int nk, int nh) {
    memset(s, 0, sizeof *s);
    s->n_q = nq;
    s->pos0 = p0;
    s->n_keys = nk;
    s->n_heads = nh;
    s->rows = falloc((size_t)nh * nq * nk);
    for (int h = 0; h < 8; h++) s->last_pos[h] = -1;
}

static void sink_row(void *user, int head, int pos, const float *p, int len) {
    row_sink *s = user;
    s->calls++;
    cr_assert(head >= 0 && head < s->n_heads);
    if (pos <= s->last_pos[head]) s->out_of_order++;
    s->last_pos[head] = pos;
    if (len != pos + 1) s->bad_len++;
    int i = pos - s->pos0;
    if (i >= 0 && i < s->n_q && len <= s->n_keys)
        memcpy(s->rows + ((size_t)head * s->n_q + i) * s->n_keys, p, (size_t)len * sizeof *p);
}

Test(kernels, attention_vs_ref) {
    /* n_heads > 1 with n_q = 1 takes the grouped decode path; with n_q > 1
     * the per-head path. */
    static const struct {
        int n_q, n_heads, pos0, hd, chunk, rows_from;
        size_t pad;
    } cases[] = {
        {1, 1, 0, 2, 1, 0, 0},      {1, 1, 37, 16, 4, 0, 3},   {5, 1, 0, 8, 2, 3, 0},
        {70, 1, 30, 64, 16, 0, 1},  {130, 1, 0, 16, 128, 100, 0}, {33, 2, 100, 6, 7, 120, 2},
        {300, 1, 5, 64, 128, 0, 0}, {1, 3, 0, 64, 128, 0, 0},  {1, 3, 700, 64, 128, 0, 0},
        {1, 4, 99, 6, 1, 50, 5},    {1, 2, 10, 8, 4, 11, 0},   {9, 3, 20, 16, 4, 0, 0},
    };
    uint64_t s = 16;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int nq = cases[c].n_q, nh = cases[c].n_heads, p0 = cases[c].pos0, hd = cases[c].hd;
        int nk = p0 + nq;
        /* Heads of one row are adjacent (as in the model's qkv rows); rows
         * are further apart when padded. */
        size_t ldq = (size_t)nh * hd + cases[c].pad, ldkv = 2 * hd + cases[c].pad;
        size_t ldo = (size_t)nh * hd + (nq > 1 ? 1 : 0);
        float *q = falloc(nq * ldq), *k = falloc(nk * ldkv), *v = falloc(nk * ldkv);
        float *o = falloc(nq * ldo), *orf = falloc(nq * ldo);
        size_t css = (size_t)nk + 3;
        double *cs = calloc(nh * css, sizeof *cs), *csr = calloc(nh * css, sizeof *csr);
        fill(q, nq * ldq, &s, -1.5f, 1.5f);
        fill(k, nk * ldkv, &s, -1.5f, 1.5f);
        fill(v, nk * ldkv, &s, -1, 1);
        row_sink a, b;
        sink_init(&a, nq, p0, nk, nh);
        sink_init(&b, nq, p0, nk, nh);
        ap_attn_args args = {.n_q = nq, .n_heads = nh, .pos0 = p0, .head_dim = hd,
                             .scale = 1.0f / sqrtf((float)hd), .q = q, .ldq = ldq,
                             .k = k, .v = v, .ldkv = ldkv, .out = o, .ldo = ldo,
                             .colsum = cs, .colsum_stride = css, .on_row = sink_row,
                             .user = &a, .rows_from = cases[c].rows_from};
        float *scratch = falloc(ap_attn_scratch_floats(cases[c].chunk, nh, nk));
        ap_attn(&args, scratch, cases[c].chunk);
        args.out = orf;
        args.colsum = csr;
        args.user = &b;
        void *rs = malloc(ap_attn_ref_scratch_bytes(nk));
        ap_attn_ref(&args, rs);

        for (int i = 0; i < nq; i++) {
            double e = ap_rel_err_f32(o + i * ldo, orf + i * ldo, (long)nh * hd);
            cr_expect(e <= AP_TOL_KERNEL_REL, "case %zu row %d: out rel err %.3g", c, i, e);
        }
        int want_calls = nq - (cases[c].rows_from > p0 ? cases[c].rows_from - p0 : 0);
        if (want_calls < 0) want_calls = 0;
        want_calls *= nh;
        cr_expect_eq(a.calls, want_calls, "case %zu: %d row calls, want %d", c, a.calls,
                     want_calls);
        cr_expect_eq(b.calls, want_calls);
        cr_expect(a.bad_len == 0 && a.out_of_order == 0, "case %zu: row order/len", c);
        for (int h = 0; h < nh; h++) {
            for (int i = 0; i < nq; i++) {
                if (p0 + i < cases[c].rows_from) continue;
                size_t off = ((size_t)h * nq + i) * nk;
                double e = ap_max_abs_err_f32(a.rows + off, b.rows + off, p0 + i + 1);
                cr_expect(e <= AP_TOL_KERNEL_REL, "case %zu head %d row %d: probs abs err %.3g",
                          c, h, i, e);
            }
            /* Column sums cover every row, reported or not: they total n_q. */
            double tot = 0.0, worst = 0.0;
            for (int j = 0; j < nk; j++) {
                tot += cs[h * css + j];
                double e = fabs(cs[h * css + j] - csr[h * css + j]);
                if (e > worst) worst = e;
            }
            cr_expect(fabs(tot - nq) < 1e-4 * nq, "case %zu: colsum total %.6f, want %d", c, tot,
                      nq);
            cr_expect(worst <= AP_TOL_KERNEL_REL * nq, "case %zu: colsum err %.3g", c, worst);
            cr_expect(cs[h * css + nk] == 0.0, "case %zu: colsum written past the keys", c);
        }
        free(q);
        free(k);
        free(v);
        free(o);
        free(orf);
        free(cs);
        free(csr);
        free(a.rows);
        free(b.rows);
        free(scratch);
        free(rs);
    }
}

Test(kernels, attention_is_causal) {
    /* Changing a key/value after position p must not change rows <= p. */
    enum { NQ = 40, HD = 8 };
    uint64_t s = 17;
    float q[NQ * HD], k[NQ * HD], v[NQ * HD], o1[NQ * HD], o2[NQ * HD];
    fill(q, NQ * HD, &s, -1, 1);
    fill(k, NQ * HD, &s, -1, 1);
    fill(v, NQ * HD, &s, -1, 1);
    float *scratch = falloc(ap_attn_scratch_floats(16, 1, NQ));
    ap_attn_args a = {.n_q = NQ, .n_heads = 1, .pos0 = 0, .head_dim = HD, .scale = 0.35f,
                      .q = q, .ldq = HD, .k = k, .v = v, .ldkv = HD, .out = o1, .ldo = HD};
    ap_attn(&a, scratch, 16);
    for (int d = 0; d < HD; d++) {
        k[25 * HD + d] += 3.0f;
        v[25 * HD + d] -= 5.0f;
    }
    a.out = o2;
    ap_attn(&a, scratch, 16);
    cr_expect(memcmp(o1, o2, 25 * HD * sizeof(float)) == 0, "rows before 25 changed");
    cr_expect(memcmp(o1 + 25 * HD, o2 + 25 * HD, HD * sizeof(float)) != 0, "row 25 unchanged");
    /* Row 0 attends only key 0: its output is v[0]. */
    for (int d = 0; d < HD; d++) cr_expect(fabsf(o1[d] - v[d]) < 1e-6f);
    free(scratch);
}

Test(kernels, attention_sliding_window) {
    /* A window W: row pos attends keys pos-W+1..pos. Checked against the
     * float64 reference with the same window, and against plain attention
     * over only those keys (the rows then start at the window). */
    enum { NQ = 50, P0 = 30, HD = 16, W = 20, NK = P0 + NQ };
    uint64_t s = 23;
    float *q = falloc(NQ * HD), *k = falloc(NK * HD), *v = falloc(NK * HD);
    float *o = falloc(NQ * HD), *orf = falloc(NQ * HD), *o1 = falloc(HD);
    fill(q, NQ * HD, &s, -1.5f, 1.5f);
    fill(k, NK * HD, &s, -1.5f, 1.5f);
    fill(v, NK * HD, &s, -1, 1);
    row_sink a, b;
    sink_init(&a, NQ, P0, NK, 1);
    sink_init(&b, NQ, P0, NK, 1);
    double *cs = calloc(NK, sizeof *cs);
    ap_attn_args args = {.n_q = NQ, .n_heads = 1, .pos0 = P0, .head_dim = HD, .scale = 0.25f,
                         .q = q, .ldq = HD, .k = k, .v = v, .ldkv = HD, .out = o, .ldo = HD,
                         .colsum = cs, .colsum_stride = NK, .on_row = sink_row, .user = &a,
                         .window = W};
    /* Room for the largest chunk used below. */
    float *scratch = falloc(ap_attn_scratch_floats(64, 1, NK));
    ap_attn(&args, scratch, 16);
    args.out = orf;
    args.colsum = NULL;
    args.user = &b;
    void *rs = malloc(ap_attn_ref_scratch_bytes(NK));
    ap_attn_ref(&args, rs);
    double e = ap_rel_err_f32(o, orf, NQ * HD);
    cr_expect(e <= AP_TOL_KERNEL_REL, "out rel err %.3g", e);
    for (int i = 0; i < NQ; i++) {
        int pos = P0 + i, lo = pos + 1 - W;
        const float *row = a.rows + (size_t)i * NK;
        for (int j = 0; j < lo; j++) cr_expect(row[j] == 0.0f, "row %d key %d outside", pos, j);
        double tot = 0.0;
        for (int j = lo; j <= pos; j++) tot += row[j];
        cr_expect(fabs(tot - 1.0) < 1e-5, "row %d sums to %.7f", pos, tot);
        double er = ap_max_abs_err_f32(row, b.rows + (size_t)i * NK, pos + 1);
        cr_expect(er <= AP_TOL_KERNEL_REL, "row %d: probs vs ref %.3g", pos, er);
        /* The same row as plain attention over keys lo..pos only. */
        ap_attn_args one = {.n_q = 1, .n_heads = 1, .pos0 = W - 1, .head_dim = HD,
                            .scale = 0.25f, .q = q + (size_t)i * HD, .ldq = HD,
                            .k = k + (size_t)lo * HD, .v = v + (size_t)lo * HD, .ldkv = HD,
                            .out = o1, .ldo = HD};
        ap_attn(&one, scratch, 16);
        double eo = ap_rel_err_f32(o + (size_t)i * HD, o1, HD);
        cr_expect(eo <= AP_TOL_KERNEL_REL, "row %d: windowed vs truncated %.3g", pos, eo);
    }
    for (int j = 0; j < P0 + 1 - W; j++) cr_expect(cs[j] == 0.0, "colsum of key %d", j);
    /* Without an observer the chunks skip the keys before their window:
     * the same outputs and column sums as the float64 reference. */
    for (int chunk = 1; chunk <= 64; chunk *= 4) {
        double *cs2 = calloc(NK, sizeof *cs2), *csr = calloc(NK, sizeof *csr);
        float *o2 = falloc(NQ * HD);
        ap_attn_args fast = args;
        fast.on_row = NULL;
        fast.user = NULL;
        fast.out = o2;
        fast.colsum = cs2;
        ap_attn(&fast, scratch, chunk);
        fast.out = orf;
        fast.colsum = csr;
        ap_attn_ref(&fast, rs);
        double ef = ap_rel_err_f32(o2, orf, NQ * HD);
        cr_expect(ef <= AP_TOL_KERNEL_REL, "chunk %d: out rel err %.3g", chunk, ef);
        for (int j = 0; j < NK; j++)
            cr_expect(fabs(cs2[j] - csr[j]) <= AP_TOL_KERNEL_REL * NQ, "chunk %d colsum %d: %g vs %g",
                      chunk, j, cs2[j], csr[j]);
        free(cs2);
        free(csr);
        free(o2);
    }
    free(q);
    free(k);
    free(v);
    free(o);
    free(orf);
    free(o1);
    free(cs);
    free(a.rows);
    free(b.rows);
    free(scratch);
    free(rs);
}

/* The tolerance helpers are the gate of every numeric test: a NaN anywhere
 * must come out as NaN (and so fail `< tol`), not only when it is last. */
Test(tolerance, nan_anywhere_is_reported) {
    float a[5] = {1, 2, 3, 4, 5}, b[5] = {1, 2, 3, 4, 5};
    for (int pos = 0; pos < 5; pos++) {
        a[pos] = NAN;
        cr_expect(isnan(ap_max_abs_err_f32(a, b, 5)), "NaN at %d lost", pos);
        cr_expect(!(ap_rel_err_f32(a, b, 5) < 1.0), "NaN at %d passes rel", pos);
        a[pos] = (float)(pos + 1);
    }
    a[2] = 3.5f;
    cr_expect_float_eq(ap_max_abs_err_f32(a, b, 5), 0.5, 1e-12);
}
