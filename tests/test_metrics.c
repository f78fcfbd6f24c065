/* Selection metrics on tiny hand-computed cases: the kept set, recovery,
 * oracle and hit rate, ties, budgets below sink + local, k above W, and the
 * aggregation. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/tolerance.h"
#include "train/metrics.h"

#define TOL AP_TOL_KERNEL_REL

/* W = 5; mass_fixed + sum(ysum) = 1.
 * predictor order (ties to the lower index): 1, 3, 2, 0, 4
 * oracle order: 2 (0.20), 4 (0.13), 1 (0.10), 0 (0.05), 3 (0.02) */
static const float SC[5] = {0.1f, 0.5f, 0.3f, 0.5f, 0.0f};
static const float YS[5] = {0.05f, 0.10f, 0.20f, 0.02f, 0.13f};
static const float FIXED = 0.5f;

Test(metrics, k_blocks_budget_accounting) {
    /* method.md 4.3 */
    cr_assert_eq(ap_metrics_k_blocks(512, 64, 64, 16, 1000), 24);
    cr_assert_eq(ap_metrics_k_blocks(1024, 64, 64, 16, 1000), 56);
    cr_assert_eq(ap_metrics_k_blocks(2048, 64, 64, 16, 1000), 120);
    cr_assert_eq(ap_metrics_k_blocks(4096, 256, 256, 16, 1000), 224);
    cr_assert_eq(ap_metrics_k_blocks(1024, 128, 128, 16, 1000), 48);
    /* partial block rounds down; k capped at the candidates; below sink+local = 0 */
    cr_assert_eq(ap_metrics_k_blocks(175, 64, 64, 16, 1000), 2);
    cr_assert_eq(ap_metrics_k_blocks(2048, 64, 64, 16, 7), 7);
    cr_assert_eq(ap_metrics_k_blocks(100, 64, 64, 16, 10), 0);
    cr_assert_eq(ap_metrics_k_blocks(128, 64, 64, 16, 10), 0);
    cr_assert_eq(ap_metrics_k_blocks(512, 64, 64, 16, 0), 0);
}

Test(metrics, rank_ties_and_nan) {
    int o[5];
    ap_metrics_rank(SC, 5, o);
    int want[5] = {1, 3, 2, 0, 4};
    for (int i = 0; i < 5; i++) cr_assert_eq(o[i], want[i], "pos %d: %d", i, o[i]);
    float eq[4] = {1, 1, 1, 1};
    ap_metrics_rank(eq, 4, o);
    for (int i = 0; i < 4; i++) cr_assert_eq(o[i], i);
    float nan_s[4] = {NAN, -1.0f, NAN, 2.0f};
    ap_metrics_rank(nan_s, 4, o);
    cr_assert_eq(o[0], 3);
    cr_assert_eq(o[1], 1);
    cr_assert_eq(o[2], 0);
    cr_assert_eq(o[3], 2);
    /* wide enough for the qsort path: descending by construction */
    float wide[40];
    for (int i = 0; i < 40; i++) wide[i] = (float)((i * 7) % 40);
    int ow[40];
    ap_metrics_rank(wide, 40, ow);
    for (int i = 1; i < 40; i++) cr_assert_gt(wide[ow[i - 1]], wide[ow[i]]);
}

/* The top-k prefix must be the full ranking's first k entries for every k,
 * with ties, NaN and -inf (the selection's "not available"), on the
 * bounded-list path (k small against W) and the sorting one. */
Test(metrics, topk_is_the_ranking_prefix) {
    enum { W = 603 }; /* not a multiple of 8: the skip-ahead's tail */
    float *sc = malloc(sizeof(float) * W);
    int *full = malloc(sizeof(int) * W), *top = malloc(sizeof(int) * W);
    cr_assert(sc && full && top);
    uint64_t s = 11;
    for (int trial = 0; trial < 9; trial++) {
        for (int j = 0; j < W; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            int r = (int)(s >> 40) % 97;
            /* few distinct values: many ties */
            sc[j] = trial % 2 ? (float)(r % 13) : (float)r / 7.0f;
            if (r == 3) sc[j] = NAN;
            if (r == 5) sc[j] = -INFINITY;
            if (trial == 4) sc[j] = (float)j; /* ascending: every candidate enters */
            if (trial == 6) sc[j] = (float)(W - j); /* descending: whole runs skipped */
            if (trial == 7 && j < 40) sc[j] = NAN;  /* the list starts full of NaN */
            if (trial == 8) sc[j] = j % 50 == 49 ? 1.0f : 0.5f; /* late ties of the threshold */
        }
        ap_metrics_rank(sc, W, full);
        const int ks[] = {1, 2, 24, 100, 149, 150, 256, 300, W};
        for (size_t t = 0; t < sizeof ks / sizeof ks[0]; t++) {
            for (int j = 0; j < W; j++) top[j] = -7;
            ap_metrics_topk(sc, W, ks[t], top);
            for (int r = 0; r < ks[t]; r++)
                cr_assert_eq(top[r], full[r], "trial %d k %d rank %d: %d vs %d", trial, ks[t], r,
                             top[r], full[r]);
        }
    }
    free(sc);
    free(full);
    free(top);
}

Test(metrics, recovery_and_hit_rate_by_hand) {
    int scratch[15];
    ap_sample_metrics m;
    ap_metrics_sample(SC, YS, FIXED, 5, 2, scratch, &m);
    cr_assert_eq(m.k, 2);
    cr_assert_float_eq(m.recovery, 0.5 + 0.10 + 0.02, TOL); /* blocks 1, 3 */
    cr_assert_float_eq(m.oracle, 0.5 + 0.20 + 0.13, TOL);   /* blocks 2, 4 */
    cr_assert_float_eq(m.hit_rate, 0.0, TOL);
    ap_metrics_sample(SC, YS, FIXED, 5, 3, scratch, &m);
    cr_assert_float_eq(m.recovery, 0.5 + 0.10 + 0.02 + 0.20, TOL); /* 1, 3, 2 */
    cr_assert_float_eq(m.oracle, 0.5 + 0.20 + 0.13 + 0.10, TOL);   /* 2, 4, 1 */
    cr_assert_float_eq(m.hit_rate, 2.0 / 3.0, TOL);                /* {1, 2} */
    /* the oracle is the best any selector can do */
    cr_assert_leq(m.recovery, m.oracle + 1e-12);
}

Test(metrics, budget_below_fixed_and_k_above_width) {
    int scratch[15];
    ap_sample_metrics m;
    ap_metrics_sample(SC, YS, FIXED, 5, 0, scratch, &m);
    cr_assert_eq(m.k, 0);
    cr_assert_float_eq(m.recovery, 0.5, TOL);
    cr_assert_float_eq(m.oracle, 0.5, TOL);
    cr_assert_float_eq(m.hit_rate, 1.0, TOL);
    ap_metrics_sample(SC, YS, FIXED, 5, 9, scratch, &m);
    cr_assert_eq(m.k, 5);
    cr_assert_float_eq(m.recovery, 1.0, TOL);
    cr_assert_float_eq(m.oracle, 1.0, TOL);
    cr_assert_float_eq(m.hit_rate, 1.0, TOL);
}

Test(metrics, oracle_ties_to_lower_index) {
    float ys[4] = {0.1f, 0.2f, 0.2f, 0.0f};
    float sc[4] = {0.0f, 0.0f, 1.0f, 2.0f}; /* picks 3 then 2 */
    int scratch[12];
    ap_sample_metrics m;
    ap_metrics_sample(sc, ys, 0.5f, 4, 1, scratch, &m);
    cr_assert_float_eq(m.recovery, 0.5, TOL);
    cr_assert_float_eq(m.oracle, 0.7, TOL);
    cr_assert_float_eq(m.hit_rate, 0.0, TOL); /* oracle took block 1, not 2 */
    ap_metrics_sample(sc, ys, 0.5f, 4, 2, scratch, &m);
    cr_assert_float_eq(m.recovery, 0.7, TOL);
    cr_assert_float_eq(m.oracle, 0.9, TOL);
    cr_assert_float_eq(m.hit_rate, 0.5, TOL);
}

Test(metrics, meanci) {
    ap_meanci a, b, c;
    ap_meanci_init(&a);
    ap_meanci_init(&b);
    ap_meanci_init(&c);
    cr_assert_float_eq(ap_meanci_half95(&a), 0.0, TOL);
    double v[4] = {1, 2, 3, 4};
    for (int i = 0; i < 4; i++) ap_meanci_add(&a, v[i]);
    cr_assert_float_eq(a.mean, 2.5, TOL);
    /* sample sd sqrt(5/3); 1.96 * sd / 2 */
    cr_assert_float_eq(ap_meanci_half95(&a), 1.96 * sqrt(5.0 / 3.0) / 2.0, TOL);
    ap_meanci_add(&b, 1);
    ap_meanci_add(&b, 2);
    ap_meanci_add(&c, 3);
    ap_meanci_add(&c, 4);
    ap_meanci_merge(&b, &c);
    cr_assert_eq(b.n, 4);
    cr_assert_float_eq(b.mean, a.mean, TOL);
    cr_assert_float_eq(b.m2, a.m2, TOL);
}

Test(metrics, accumulator_over_windows) {
    /* two samples, windows [2][2][5]: the newest row (row 1) is the score */
    float x[2 * 2 * 5] = {9, 9, 9, 9, 9, 0.1f, 0.5f, 0.3f, 0.5f, 0.0f,
                          9, 9, 9, 9, 9, 0.0f, 0.0f, 0.0f, 0.0f, 1.0f};
    float ys[10], fixed[2] = {FIXED, FIXED};
    for (int j = 0; j < 5; j++) ys[j] = ys[5 + j] = YS[j];
    int budgets[3] = {100, 160, 176};
    ap_metrics_acc acc;
    ap_err err;
    cr_assert_eq(ap_metrics_acc_init(&acc, budgets, 3, 64, 64, 16, &err), AP_OK);
    cr_assert_eq(ap_metrics_acc_add(&acc, x + 5, 10, ys, fixed, 2, 5, &err), AP_OK);
    /* sample 2 order: 4, 0, 1, 2, 3 -> k=2: {4, 0} = 0.5 + 0.18 */
    cr_assert_eq(acc.recovery[0].n, 2);
    cr_assert_float_eq(acc.recovery[0].mean, 0.5, TOL);
    cr_assert_float_eq(acc.hit_rate[0].mean, 1.0, TOL);
    cr_assert_float_eq(acc.recovery[1].mean, (0.62 + 0.68) / 2, TOL);
    cr_assert_float_eq(acc.oracle[1].mean, 0.83, TOL);
    cr_assert_float_eq(acc.hit_rate[1].mean, (0.0 + 0.5) / 2, TOL);
    /* k=3: sample 2 {4, 0, 1} = 0.5 + 0.28; oracle {2, 4, 1}; hit {4, 1} */
    cr_assert_float_eq(acc.recovery[2].mean, (0.82 + 0.78) / 2, TOL);
    cr_assert_float_eq(acc.hit_rate[2].mean, (2.0 / 3 + 2.0 / 3) / 2, TOL);
    cr_assert_float_eq(acc.ratio[2].mean, (0.82 / 0.93 + 0.78 / 0.93) / 2, TOL);
    int bad[1] = {0};
    cr_assert_eq(ap_metrics_acc_init(&acc, bad, 1, 64, 64, 16, &err), AP_ERR_ARG);
    cr_assert_eq(ap_metrics_acc_init(&acc, budgets, 0, 64, 64, 16, &err), AP_ERR_ARG);
}
