/* Adam/AdamW against a float64 transcription of the update rule (PyTorch's
 * formulation), clipping, and the learning-rate schedule. */
#include <criterion/criterion.h>
#include <math.h>

#include "train/optim.h"

Test(optim, adam_matches_float64_rule) {
    enum { N = 7, STEPS = 50 };
    ap_adam_config c;
    ap_adam_config_default(&c);
    c.lr = 0.01f;
    c.weight_decay = 0.01f;
    ap_adam a;
    cr_assert_eq(ap_adam_init(&a, &c, N, NULL), AP_OK);
    float p[N], g[N];
    double pr[N], m[N] = {0}, v[N] = {0};
    for (int i = 0; i < N; i++) p[i] = (float)(pr[i] = 0.3 * i - 1.0);
    for (int s = 1; s <= STEPS; s++) {
        for (int i = 0; i < N; i++) g[i] = (float)(sin(0.7 * s + i) + 0.1 * p[i]);
        double gd[N];
        for (int i = 0; i < N; i++) gd[i] = g[i];
        ap_adam_step(&a, p, g, c.lr);
        for (int i = 0; i < N; i++) {
            m[i] = 0.9 * m[i] + 0.1 * gd[i];
            v[i] = 0.999 * v[i] + 0.001 * gd[i] * gd[i];
            double mh = m[i] / (1 - pow(0.9, s)), vh = v[i] / (1 - pow(0.999, s));
            pr[i] -= 0.01 * 0.01 * pr[i];
            pr[i] -= 0.01 * mh / (sqrt(vh) + 1e-8);
        }
    }
    for (int i = 0; i < N; i++)
        cr_assert_float_eq(p[i], pr[i], 1e-4, "param %d: %f vs %f", i, p[i], pr[i]);
    cr_assert_eq(a.step, STEPS);
    ap_adam_release(&a);
}

Test(optim, clipping_scales_to_the_norm) {
    ap_adam_config c;
    ap_adam_config_default(&c);
    c.clip_norm = 1.0f;
    ap_adam a;
    cr_assert_eq(ap_adam_init(&a, &c, 2, NULL), AP_OK);
    float p[2] = {0, 0}, g[2] = {3, 4};
    double norm = ap_adam_step(&a, p, g, 0.1f);
    cr_assert_float_eq(norm, 5.0, 1e-9);
    cr_assert_float_eq(g[0], 0.6f, 1e-6);
    cr_assert_float_eq(g[1], 0.8f, 1e-6);
    /* first Adam step moves each coordinate by ~lr in the sign of its gradient */
    cr_assert_float_eq(p[0], -0.1f, 1e-5);
    cr_assert_float_eq(p[1], -0.1f, 1e-5);
    ap_adam_release(&a);
}

Test(optim, schedule) {
    cr_assert_float_eq(ap_lr_at(AP_LR_COSINE, 1.0f, 0, 10, 110, 0.0f), 0.1f, 1e-6);
    cr_assert_float_eq(ap_lr_at(AP_LR_COSINE, 1.0f, 9, 10, 110, 0.0f), 1.0f, 1e-6);
    cr_assert_float_eq(ap_lr_at(AP_LR_COSINE, 1.0f, 10, 10, 110, 0.0f), 1.0f, 1e-6);
    cr_assert_float_eq(ap_lr_at(AP_LR_COSINE, 1.0f, 60, 10, 110, 0.0f), 0.5f, 1e-6);
    cr_assert_float_eq(ap_lr_at(AP_LR_COSINE, 1.0f, 110, 10, 110, 0.1f), 0.1f, 1e-6);
    cr_assert_float_eq(ap_lr_at(AP_LR_CONSTANT, 0.5f, 500, 10, 110, 0.0f), 0.5f, 1e-9);
}
