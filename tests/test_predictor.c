/* The predictor CNN: float32 CPU path vs the float64 reference, gradients
 * vs finite differences, parameter count, model selection, the probe
 * properties of section 2.4 and CPU/GPU parity. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/tolerance.h"
#include "train/predictor.h"
#include "train/predictor_cuda.h"

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

/* Attention-like inputs: non-negative, mostly small, a few spikes. */
static void fill_hist(float *x, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) {
        double u = rng_unit(&seed);
        x[i] = (float)(u < 0.1 ? 0.5 * rng_unit(&seed) : 0.02 * u);
    }
}

static void to_f64(const float *a, double *b, size_t n) {
    for (size_t i = 0; i < n; i++) b[i] = a[i];
}

static double rel_err_d(const double *a, const double *b, size_t n) {
    double m = 0, d = 0;
    for (size_t i = 0; i < n; i++) {
        if (fabs(b[i]) > m) m = fabs(b[i]);
        if (!(fabs(a[i] - b[i]) <= d)) d = fabs(a[i] - b[i]);
    }
    return d / (m > 1e-30 ? m : 1e-30);
}

/* max relative error of a float32 gradient slice vs the float64 one */
static double rel_err_fd(const float *a, const double *b, size_t n) {
    double *t = malloc(sizeof(double) * n);
    to_f64(a, t, n);
    double r = rel_err_d(t, b, n);
    free(t);
    return r;
}

Test(predictor, param_count_and_layout) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    cr_assert_eq(ap_pred_param_count(&c), 4833u);
    ap_pred_layout L;
    ap_pred_layout_of(&c, &L);
    cr_assert_eq(L.b1, 144u);
    cr_assert_eq(L.w2, 160u);
    cr_assert_eq(L.b2, 160u + 4608u);
    cr_assert_eq(L.w3, 4800u);
    cr_assert_eq(L.b3, 4832u);
    c.c1 = 8;
    c.c2 = 4;
    cr_assert_eq(ap_pred_param_count(&c), 8u * 9 + 8 + 4 * 8 * 9 + 4 + 4 + 1);
}

Test(predictor, init_is_pytorch_default_and_seeded) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    ap_predictor *a = NULL, *b = NULL, *d = NULL;
    cr_assert_eq(ap_predictor_create(&c, 7, &a, NULL), AP_OK);
    cr_assert_eq(ap_predictor_create(&c, 7, &b, NULL), AP_OK);
    cr_assert_eq(ap_predictor_create(&c, 8, &d, NULL), AP_OK);
    size_t n;
    const float *pa = ap_predictor_params(a, &n), *pb = ap_predictor_params(b, NULL),
                *pd = ap_predictor_params(d, NULL);
    cr_assert_eq(n, 4833u);
    cr_assert_eq(memcmp(pa, pb, n * sizeof(float)), 0, "same seed, same weights");
    cr_assert_neq(memcmp(pa, pd, n * sizeof(float)), 0, "different seed, different weights");
    ap_pred_layout L;
    ap_pred_layout_of(&c, &L);
    struct {
        size_t a, b;
        double bound;
    } g[] = {{L.w1, L.w2, 1.0 / 3.0}, {L.w2, L.w3, 1.0 / 12.0}, {L.w3, L.total, 1.0 / sqrt(32.0)}};
    for (int k = 0; k < 3; k++) {
        double mx = 0;
        for (size_t i = g[k].a; i < g[k].b; i++) {
            cr_assert(fabs(pa[i]) <= g[k].bound, "param %zu = %g beyond %g", i, pa[i], g[k].bound);
            if (fabs(pa[i]) > mx) mx = fabs(pa[i]);
        }
        /* uniform over the whole range, not a narrower one */
        if (g[k].b - g[k].a > 100) cr_assert(mx > 0.9 * g[k].bound, "group %d max %g", k, mx);
    }
    ap_predictor_free(a);
    ap_predictor_free(b);
    ap_predictor_free(d);
    ap_predictor_free(NULL);
}

static void check_forward(int N, int H, int W) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    ap_predictor *p = NULL;
    cr_assert_eq(ap_predictor_create(&c, 100 + H * 7 + W, &p, NULL), AP_OK);
    size_t np, nx = (size_t)N * H * W;
    const float *w = ap_predictor_params(p, &np);
    float *x = malloc(sizeof(float) * nx), *y = malloc(sizeof(float) * N * W);
    double *xd = malloc(sizeof(double) * nx), *wd = malloc(sizeof(double) * np),
           *yd = malloc(sizeof(double) * N * W);
    fill_hist(x, nx, (uint64_t)(H * 1000 + W));
    to_f64(x, xd, nx);
    to_f64(w, wd, np);
    ap_err err;
    cr_assert_eq(ap_predictor_forward(p, 0, x, N, H, W, y, &err), AP_OK, "%s", err.msg);
    ap_pred_forward_ref(&c, wd, xd, N, H, W, yd);
    double *yf = malloc(sizeof(double) * N * W);
    to_f64(y, yf, (size_t)N * W);
    double e = rel_err_d(yf, yd, (size_t)N * W);
    cr_assert(e <= AP_TOL_FORWARD_REL, "N=%d H=%d W=%d: rel err %g", N, H, W, e);
    free(x), free(y), free(xd), free(wd), free(yd), free(yf);
    ap_predictor_free(p);
}

Test(predictor, forward_matches_float64_ref_on_odd_shapes) {
    static const int Ws[] = {1, 2, 3, 7, 40};
    static const int Hs[] = {1, 2, 3, 5, 17, 64};
    for (size_t i = 0; i < sizeof Hs / sizeof Hs[0]; i++)
        for (size_t j = 0; j < sizeof Ws / sizeof Ws[0]; j++) check_forward(3, Hs[i], Ws[j]);
}

Test(predictor, forward_train_and_threads_agree) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    ap_predictor *p = NULL;
    cr_assert_eq(ap_predictor_create(&c, 3, &p, NULL), AP_OK);
    enum { N = 5, H = 9, W = 11 };
    float x[N * H * W], y1[N * W], y2[N * W], y3[N * W];
    fill_hist(x, N * H * W, 5);
    size_t wsb = ap_pred_workspace_bytes(&c, N, H, W);
    cr_assert_eq(wsb, (size_t)N * 32 * W * 4 + (size_t)N * 32 * H * W);
    void *ws = malloc(wsb);
    cr_assert_eq(ap_predictor_forward(p, 0, x, N, H, W, y1, NULL), AP_OK);
    cr_assert_eq(ap_predictor_forward_train(p, 0, x, N, H, W, y2, ws, wsb, NULL), AP_OK);
    ap_predictor_set_threads(p, 1);
    cr_assert_eq(ap_predictor_forward(p, 0, x, N, H, W, y3, NULL), AP_OK);
    /* each sample is computed by one worker in the same order: exact */
    cr_assert_eq(memcmp(y1, y2, sizeof y1), 0);
    cr_assert_eq(memcmp(y1, y3, sizeof y1), 0);
    ap_err err;
    cr_assert_eq(ap_predictor_forward_train(p, 0, x, N, H, W, y2, ws, wsb - 1, &err), AP_ERR_ARG);
    cr_assert_eq(ap_predictor_forward(p, 1, x, N, H, W, y2, &err), AP_ERR_ARG);
    cr_assert_eq(ap_predictor_forward(p, 0, x, N, 0, W, y2, &err), AP_ERR_ARG);
    free(ws);
    ap_predictor_free(p);
}

/* Loss L = sum(g * y): dL/dy = g. Finite differences of the float64 ref over
 * the parameters listed in idx[] vs the analytic float64 backward, then the
 * float32 backward vs the float64 backward on every parameter. */
static void grad_check(const ap_pred_config *c, int N, int H, int W, const size_t *idx,
                       size_t n_idx, uint64_t seed) {
    ap_predictor *p = NULL;
    cr_assert_eq(ap_predictor_create(c, seed, &p, NULL), AP_OK);
    size_t np, nx = (size_t)N * H * W, ny = (size_t)N * W;
    const float *w = ap_predictor_params(p, &np);
    float *x = malloc(sizeof(float) * nx), *g = malloc(sizeof(float) * ny),
          *y = malloc(sizeof(float) * ny), *grad = calloc(np, sizeof(float));
    double *xd = malloc(sizeof(double) * nx), *wd = malloc(sizeof(double) * np),
           *gd = malloc(sizeof(double) * ny), *yd = malloc(sizeof(double) * ny),
           *gref = calloc(np, sizeof(double));
    fill_hist(x, nx, seed + 1);
    for (size_t i = 0; i < ny; i++) g[i] = (float)(2.0 * rng_unit(&seed) - 1.0);
    to_f64(x, xd, nx);
    to_f64(w, wd, np);
    to_f64(g, gd, ny);
    ap_pred_backward_ref(c, wd, xd, N, H, W, gd, gref);

    const double h = 1e-6;
    double max_err = 0, scale = 0;
    for (size_t i = 0; i < np; i++) scale = fmax(scale, fabs(gref[i]));
    for (size_t k = 0; k < n_idx; k++) {
        size_t i = idx[k];
        double w0 = wd[i], lp = 0, lm = 0;
        wd[i] = w0 + h;
        ap_pred_forward_ref(c, wd, xd, N, H, W, yd);
        for (size_t j = 0; j < ny; j++) lp += gd[j] * yd[j];
        wd[i] = w0 - h;
        ap_pred_forward_ref(c, wd, xd, N, H, W, yd);
        for (size_t j = 0; j < ny; j++) lm += gd[j] * yd[j];
        wd[i] = w0;
        double fd = (lp - lm) / (2 * h);
        max_err = fmax(max_err, fabs(fd - gref[i]));
    }
    cr_assert(max_err / scale <= AP_TOL_PRED_FD_REL, "finite differences: rel err %g",
              max_err / scale);

    size_t wsb = ap_pred_workspace_bytes(c, N, H, W);
    void *ws = malloc(wsb);
    ap_err err;
    cr_assert_eq(ap_predictor_forward_train(p, 0, x, N, H, W, y, ws, wsb, &err), AP_OK, "%s",
                 err.msg);
    cr_assert_eq(ap_predictor_backward(p, 0, x, N, H, W, g, ws, wsb, grad, &err), AP_OK, "%s",
                 err.msg);
    ap_pred_layout L;
    ap_pred_layout_of(c, &L);
    size_t grp[7] = {L.w1, L.b1, L.w2, L.b2, L.w3, L.b3, L.total};
    static const char *names[] = {"conv1.weight", "conv1.bias", "conv2.weight",
                                  "conv2.bias",   "conv3.weight", "conv3.bias"};
    for (int k = 0; k < 6; k++) {
        double e = rel_err_fd(grad + grp[k], gref + grp[k], grp[k + 1] - grp[k]);
        cr_assert(e <= AP_TOL_PRED_GRAD_REL, "%s: float32 backward rel err %g", names[k], e);
    }
    /* backward accumulates: a second call doubles the gradient */
    cr_assert_eq(ap_predictor_backward(p, 0, x, N, H, W, g, ws, wsb, grad, &err), AP_OK);
    for (size_t i = 0; i < np; i++) gref[i] *= 2;
    double e2 = rel_err_fd(grad, gref, np);
    cr_assert(e2 <= AP_TOL_PRED_GRAD_REL, "accumulated gradient rel err %g", e2);
    free(x), free(g), free(y), free(grad), free(xd), free(wd), free(gd), free(yd), free(gref);
    free(ws);
    ap_predictor_free(p);
}

Test(predictor, gradients_small_config_every_parameter) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    c.c1 = 3;
    c.c2 = 4;
    size_t np = ap_pred_param_count(&c);
    size_t *idx = malloc(sizeof(size_t) * np);
    for (size_t i = 0; i < np; i++) idx[i] = i;
    grad_check(&c, 2, 5, 6, idx, np, 11);
    grad_check(&c, 3, 1, 1, idx, np, 12); /* H = W = 1: everything is padding */
    free(idx);
}

Test(predictor, gradients_default_config_every_group) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    ap_pred_layout L;
    ap_pred_layout_of(&c, &L);
    /* all of conv1, conv2.bias, conv3, and 96 conv2 weights spread evenly */
    size_t idx[160 + 65 + 96], n = 0;
    for (size_t i = L.w1; i < L.w2; i++) idx[n++] = i;
    for (size_t i = L.b2; i < L.total; i++) idx[n++] = i;
    for (size_t k = 0; k < 96; k++) idx[n++] = L.w2 + k * 48 + (k % 7);
    grad_check(&c, 2, 6, 7, idx, n, 21);
}

Test(predictor, float32_backward_on_a_full_window) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    grad_check(&c, 3, 64, 24, NULL, 0, 31);
}

Test(predictor, per_layer_and_group_model_selection) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    ap_pred_config_groups(&c, 6, 3);
    ap_predictor *p = NULL;
    ap_err err;
    cr_assert_eq(ap_predictor_create(&c, 9, &p, &err), AP_OK, "%s", err.msg);
    static const int want[6] = {0, 0, 1, 1, 2, 2};
    for (int l = 0; l < 6; l++) cr_assert_eq(ap_predictor_model_of_layer(p, l), want[l]);
    cr_assert_eq(ap_predictor_model_of_layer(p, 6), -1);
    size_t np;
    const float *w = ap_predictor_params(p, &np);
    cr_assert_eq(np, 3u * 4833u);
    enum { N = 2, H = 8, W = 9 };
    float x[N * H * W], y0[N * W], y1[N * W];
    double xd[N * H * W], wd[4833], yd[N * W], yf[N * W];
    fill_hist(x, N * H * W, 77);
    to_f64(x, xd, N * H * W);
    cr_assert_eq(ap_predictor_forward(p, 0, x, N, H, W, y0, NULL), AP_OK);
    cr_assert_eq(ap_predictor_forward(p, 1, x, N, H, W, y1, NULL), AP_OK);
    cr_assert_neq(memcmp(y0, y1, sizeof y0), 0, "models differ");
    to_f64(w + 4833, wd, 4833);
    ap_pred_forward_ref(&c, wd, xd, N, H, W, yd);
    to_f64(y1, yf, N * W);
    cr_assert(rel_err_d(yf, yd, N * W) <= AP_TOL_FORWARD_REL, "model 1 uses its own slice");

    /* gradients of model 1 land in model 1's slice only */
    float *grad = calloc(np, sizeof(float)), dy[N * W];
    for (int i = 0; i < N * W; i++) dy[i] = 1.0f;
    size_t wsb = ap_pred_workspace_bytes(&c, N, H, W);
    void *ws = malloc(wsb);
    cr_assert_eq(ap_predictor_forward_train(p, 1, x, N, H, W, y1, ws, wsb, NULL), AP_OK);
    cr_assert_eq(ap_predictor_backward(p, 1, x, N, H, W, dy, ws, wsb, grad, NULL), AP_OK);
    double s0 = 0, s1 = 0, s2 = 0;
    for (size_t i = 0; i < 4833; i++) {
        s0 += fabs(grad[i]);
        s1 += fabs(grad[4833 + i]);
        s2 += fabs(grad[2 * 4833 + i]);
    }
    cr_assert(s0 == 0 && s2 == 0 && s1 > 0, "slices %g %g %g", s0, s1, s2);
    free(grad);
    free(ws);
    ap_predictor_free(p);

    ap_pred_config_per_layer(&c, 4);
    cr_assert_eq(c.n_models, 4);
    for (int l = 0; l < 4; l++) cr_assert_eq(c.layer_map[l], l);
    ap_pred_config bad = c;
    bad.layer_map[2] = 4;
    cr_assert_eq(ap_pred_config_validate(&bad, &err), AP_ERR_ARG);
    cr_assert(strstr(err.msg, "layer_map[2]"), "%s", err.msg);
    ap_pred_config_default(&bad);
    bad.n_models = 2;
    cr_assert_eq(ap_pred_config_validate(&bad, &err), AP_ERR_ARG);
}

Test(predictor, groups_over_full_layers) {
    /* Gemma 3's pattern: layers 5 and 11 of 12 are full attention. */
    unsigned char full[12] = {0};
    full[5] = full[11] = 1;
    ap_pred_config c;
    ap_err err;
    ap_pred_config_default(&c);
    ap_pred_config_groups_of(&c, 12, 12, full);
    cr_assert_eq(c.n_models, 2, "one model per full layer");
    cr_assert_eq(c.layer_map[5], 0);
    cr_assert_eq(c.layer_map[11], 1);
    for (int l = 0; l < 12; l++) cr_assert(c.layer_map[l] >= 0 && c.layer_map[l] < 2);
    cr_assert_eq(ap_pred_config_validate(&c, &err), AP_OK, "%s", err.msg);
    /* Fewer groups than full layers: contiguous groups of the full ones. */
    unsigned char f4[8] = {1, 0, 1, 0, 1, 0, 1, 0};
    ap_pred_config_groups_of(&c, 8, 2, f4);
    cr_assert_eq(c.n_models, 2);
    static const int want[8] = {0, 0, 0, 0, 1, 1, 1, 1};
    for (int l = 0; l < 8; l++) cr_assert_eq(c.layer_map[l], want[l], "layer %d", l);
    /* NULL = every layer full: the plain grouping. */
    ap_pred_config d;
    ap_pred_config_default(&d);
    ap_pred_config_groups_of(&c, 6, 3, NULL);
    ap_pred_config_groups(&d, 6, 3);
    cr_assert_eq(c.n_models, d.n_models);
    cr_assert_eq(memcmp(c.layer_map, d.layer_map, 6 * sizeof(int)), 0);
}

Test(predictor, config_json_round_trip) {
    ap_pred_config c, d;
    ap_pred_config_default(&c);
    c.history = 32;
    c.c1 = 8;
    ap_pred_config_groups(&c, 5, 2);
    char *s = ap_pred_config_to_json(&c);
    cr_assert_not_null(s);
    ap_err err;
    cr_assert_eq(ap_pred_config_from_json(s, &d, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(d.history, 32);
    cr_assert_eq(d.c1, 8);
    cr_assert_eq(d.n_models, 2);
    cr_assert_eq(d.n_layers, 5);
    cr_assert_eq(memcmp(d.layer_map, c.layer_map, sizeof(int) * 5), 0);
    free(s);
    cr_assert_eq(ap_pred_config_from_json("{\"history\": 1.5}", &d, &err), AP_ERR_FORMAT);
    cr_assert_eq(ap_pred_config_from_json("not json", &d, &err), AP_ERR_FORMAT);
}

/* Section 2.4's probe on random weights: the output is one finite score per
 * block, and away from the borders the CNN is translation-equivariant along
 * the block axis (it is fully convolutional there). */
Test(predictor, probe_shape_and_translation_equivariance) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    ap_predictor *p = NULL;
    cr_assert_eq(ap_predictor_create(&c, 2024, &p, NULL), AP_OK);
    enum { H = 64, W = 40, S = 5 };
    static float x[H * W], xs[H * W], y[W], ys[W];
    memset(x, 0, sizeof x);
    x[63 * 24 + 12] = 0.5f; /* the spike of section 2.4, newest row, W = 24 */
    cr_assert_eq(ap_predictor_forward(p, 0, x, 1, H, 24, y, NULL), AP_OK);
    for (int w = 0; w < 24; w++) cr_assert(isfinite(y[w]));
    /* the spike changes the output near block 12 only (receptive field +-2) */
    float bg[24];
    memset(xs, 0, sizeof xs);
    cr_assert_eq(ap_predictor_forward(p, 0, xs, 1, H, 24, bg, NULL), AP_OK);
    for (int w = 0; w < 24; w++)
        if (abs(w - 12) > 2) cr_assert_float_eq(y[w], bg[w], 1e-7, "block %d", w);
    cr_assert(fabsf(y[12] - bg[12]) > 0, "the spike moves its own block");

    fill_hist(x, H * W, 4);
    for (int h = 0; h < H; h++)
        for (int w = 0; w < W; w++) {
            if (w < 8 || w >= 20) x[h * W + w] = 0.0f; /* content in [8, 20) */
            xs[h * W + w] = (w - S >= 0) ? x[h * W + w - S] : 0.0f;
        }
    cr_assert_eq(ap_predictor_forward(p, 0, x, 1, H, W, y, NULL), AP_OK);
    cr_assert_eq(ap_predictor_forward(p, 0, xs, 1, H, W, ys, NULL), AP_OK);
    float a[W], b[W];
    int n = 0;
    for (int w = 2; w + S < W - 2; w++) {
        a[n] = ys[w + S];
        b[n] = y[w];
        n++;
    }
    double e = ap_rel_err_f32(a, b, n);
    cr_assert(e <= AP_TOL_KERNEL_REL, "shifted input, shifted output: rel err %g", e);
    ap_predictor_free(p);
}

Test(predictor, cuda_matches_cpu) {
    if (!ap_pred_cuda_available()) {
        ap_pred_config c;
        ap_pred_config_default(&c);
        ap_pred_cuda *g = NULL;
        ap_err err;
        cr_assert_neq(ap_pred_cuda_create(&c, &g, &err), AP_OK, "no GPU: create must fail");
        cr_assert_null(g);
        cr_skip_test("no CUDA GPU/cuDNN here: CPU/GPU parity not checked (%s)", err.msg);
    }
    ap_pred_config c;
    ap_pred_config_default(&c);
    ap_pred_config_groups(&c, 2, 2);
    ap_predictor *p = NULL;
    ap_pred_cuda *g = NULL;
    ap_err err;
    cr_assert_eq(ap_predictor_create(&c, 5, &p, NULL), AP_OK);
    cr_assert_eq(ap_pred_cuda_create(&c, &g, &err), AP_OK, "%s", err.msg);
    size_t np;
    const float *w = ap_predictor_params(p, &np);
    cr_assert_eq(ap_pred_cuda_upload_params(g, w, np, &err), AP_OK, "%s", err.msg);
    enum { N = 8, H = 64, W = 40 };
    static float x[N * H * W], yc[N * W], yg[N * W], dy[N * W];
    fill_hist(x, N * H * W, 9);
    for (int i = 0; i < N * W; i++) dy[i] = (float)sin(0.37 * i);
    float *gc = calloc(np, sizeof(float)), *gg = calloc(np, sizeof(float)),
          *gg2 = calloc(np, sizeof(float));
    size_t wsb = ap_pred_workspace_bytes(&c, N, H, W);
    void *ws = malloc(wsb);
    cr_assert_eq(ap_predictor_forward_train(p, 1, x, N, H, W, yc, ws, wsb, NULL), AP_OK);
    cr_assert_eq(ap_predictor_backward(p, 1, x, N, H, W, dy, ws, wsb, gc, NULL), AP_OK);
    cr_assert_eq(ap_pred_cuda_forward(g, 1, x, N, H, W, yg, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_pred_cuda_backward(g, dy, gg, &err), AP_OK, "%s", err.msg);
    double ey = ap_rel_err_f32(yg, yc, N * W);
    cr_assert(ey <= AP_TOL_CPU_GPU_REL, "forward rel err %g", ey);
    ap_pred_layout L;
    ap_pred_layout_of(&c, &L);
    size_t grp[7] = {L.w1, L.b1, L.w2, L.b2, L.w3, L.b3, L.total};
    for (int k = 0; k < 6; k++) {
        double e = ap_rel_err_f32(gg + 4833 + grp[k], gc + 4833 + grp[k], grp[k + 1] - grp[k]);
        cr_assert(e <= AP_TOL_CPU_GPU_REL, "gradient group %d rel err %g", k, e);
    }
    for (size_t i = 0; i < 4833; i++) cr_assert_eq(gg[i], 0.0f, "model 0 untouched");
    /* deterministic algorithms: a second run gives identical gradients */
    cr_assert_eq(ap_pred_cuda_forward(g, 1, x, N, H, W, yg, &err), AP_OK);
    cr_assert_eq(ap_pred_cuda_backward(g, dy, gg2, &err), AP_OK);
    cr_assert_eq(memcmp(gg, gg2, sizeof(float) * np), 0, "GPU gradients are reproducible");
    cr_assert_eq(ap_pred_cuda_backward(g, dy, gg2, &err), AP_ERR_ARG, "one backward per forward");
    free(gc), free(gg), free(gg2), free(ws);
    ap_pred_cuda_free(g);
    ap_predictor_free(p);
}
