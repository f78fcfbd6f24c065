/* The incremental predictor against the full recomputation
 * (ap_predictor_forward on the same window) at every step of long replays:
 * widths growing one block every 16 rows, sparse/dense/mixed rows, the first
 * steps before H rows exist, small W, small H, several pushes between
 * predicts, c1 jumps, c0 changes, resync settings, other channel counts, and
 * the float64 reference on a few steps. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/tolerance.h"
#include "train/incremental.h"
#include "train/predictor.h"
#include "train/runtime.h"

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

enum { ROWS_SPARSE, ROWS_DENSE, ROWS_MIXED, ROWS_ZERO_RUNS };

/* Pooled-attention-like rows. Sparse: the blocks a selector kept (~10%),
 * zeros elsewhere; dense: every block positive; mixed: a dense calibration
 * row every 5th step (method.md 4.2) between sparse ones; zero runs: sparse
 * with whole zero rows in between. */
static void make_row(float *row, int width, int kind, long i, uint64_t *rng) {
    int dense = kind == ROWS_DENSE || (kind == ROWS_MIXED && i % 5 == 0);
    int zero = kind == ROWS_ZERO_RUNS && (i / 7) % 3 == 1;
    for (int x = 0; x < width; x++) {
        double u = rng_unit(rng);
        if (zero)
            row[x] = 0.0f;
        else if (dense)
            row[x] = (float)(u < 0.05 ? 0.3 + 0.7 * rng_unit(rng) : 0.05 * u);
        else
            row[x] = (float)(u < 0.1 ? rng_unit(rng) : 0.0);
    }
}

typedef struct {
    int H;           /* 0: the predictor's */
    int w_first;     /* width of the first row */
    int grow_every;  /* rows per new block (16) */
    int n_rows;      /* rows pushed in total */
    int first_pred;  /* first predict after this many rows (64 = after prefill) */
    int pred_every;  /* pushes between predicts */
    int c0;          /* sink cut */
    int local;       /* c1 = newest width - local */
    int kind;        /* ROWS_* */
    int resync;      /* -1: leave the default */
    uint64_t seed;
} replay_opts;

static replay_opts replay_default(void) {
    replay_opts o = {0, 8, 16, 400, 64, 1, 4, 4, ROWS_MIXED, -1, 1};
    return o;
}

/* Push rows, predict, compare each predict with ap_predictor_forward on the
 * explicitly built window. Returns the number of compared steps; *worst gets
 * the largest relative error seen. */
static int run_replay(const ap_predictor *p, int m, const replay_opts *o, double *worst) {
    int H = ap_predictor_config(p)->history;
    int wmax = o->w_first + o->n_rows / o->grow_every + 1;
    float *hist = calloc((size_t)o->n_rows * wmax, sizeof(float)); /* row i, zero past width */
    int *width = calloc((size_t)o->n_rows, sizeof(int));
    float *win = malloc(sizeof(float) * (size_t)H * wmax);
    float *y = malloc(sizeof(float) * wmax), *y_ref = malloc(sizeof(float) * wmax);
    cr_assert(hist && width && win && y && y_ref);
    ap_incr *s = NULL;
    ap_err err;
    cr_assert_eq(ap_incr_create(p, m, &s, &err), AP_OK, "%s", err.msg);
    if (o->resync >= 0) ap_incr_set_resync(s, o->resync);
    uint64_t rng = o->seed;
    int n_checked = 0;
    *worst = 0.0;
    for (int i = 0; i < o->n_rows; i++) {
        int w = o->w_first + i / o->grow_every;
        width[i] = w;
        make_row(hist + (size_t)i * wmax, w, o->kind, i, &rng);
        cr_assert_eq(ap_incr_push(s, hist + (size_t)i * wmax, w, &err), AP_OK, "%s", err.msg);
        int n = i + 1;
        if (n < o->first_pred || (n - o->first_pred) % o->pred_every != 0) continue;
        int c1 = w - o->local;
        if (c1 <= o->c0) continue;
        int Wc = c1 - o->c0;
        /* the window: last H rows, zero rows before the first push */
        for (int h = 0; h < H; h++) {
            int r = n - H + h;
            for (int x = 0; x < Wc; x++)
                win[(size_t)h * Wc + x] = r >= 0 ? hist[(size_t)r * wmax + o->c0 + x] : 0.0f;
        }
        cr_assert_eq(ap_predictor_forward(p, m, win, 1, H, Wc, y_ref, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ap_incr_predict(s, o->c0, c1, y, &err), AP_OK, "%s", err.msg);
        double e = ap_rel_err_f32(y, y_ref, Wc);
        cr_assert(e <= AP_TOL_INCR_REL,
                  "H=%d row %d (c0=%d c1=%d, kind %d): relative error %.3g > %.1g", H, i, o->c0,
                  c1, o->kind, e, AP_TOL_INCR_REL);
        if (e > *worst) *worst = e;
        n_checked++;
    }
    ap_incr_free(s);
    free(hist);
    free(width);
    free(win);
    free(y);
    free(y_ref);
    return n_checked;
}

static ap_predictor *make_pred(int H, int c1, int c2, uint64_t seed) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    c.history = H;
    c.c1 = c1;
    c.c2 = c2;
    ap_predictor *p = NULL;
    ap_err err;
    cr_assert_eq(ap_predictor_create(&c, seed, &p, &err), AP_OK, "%s", err.msg);
    ap_predictor_set_threads(p, 1);
    return p;
}

/* Trained predictors have larger, partly positive-biased weights than the
 * PyTorch init (more ReLUs active, larger scores); scale and shift. */
static void make_trained_like(ap_predictor *p, uint64_t seed) {
    const ap_pred_config *c = ap_predictor_config(p);
    ap_pred_layout L;
    ap_pred_layout_of(c, &L);
    float *w = ap_predictor_params(p, NULL);
    for (size_t i = L.w1; i < L.b1; i++) w[i] *= 4.0f;
    for (size_t i = L.b1; i < L.w2; i++) w[i] = (float)(0.2 * rng_unit(&seed) - 0.05);
    for (size_t i = L.w2; i < L.b2; i++) w[i] = 2.0f * w[i] + 0.02f;
    for (size_t i = L.w3; i < L.b3; i++) w[i] *= 3.0f;
}

Test(incremental, default_config_long_replays) {
    ap_predictor *p = make_pred(64, 16, 32, 11);
    static const int kinds[] = {ROWS_MIXED, ROWS_SPARSE, ROWS_DENSE, ROWS_ZERO_RUNS};
    int total = 0;
    for (int k = 0; k < 4; k++) {
        replay_opts o = replay_default();
        o.kind = kinds[k];
        o.seed = 100 + k;
        o.n_rows = k == 0 ? 700 : 300;
        double worst;
        total += run_replay(p, 0, &o, &worst);
        cr_log_info("default config, kind %d: worst relative error %.3g", kinds[k], worst);
    }
    cr_assert_geq(total, 1300);
    ap_predictor_free(p);
}

/* Predict from the first push on: the window is mostly zero rows, the
 * interior holds zero rows that were never pushed. */
Test(incremental, first_steps_before_h_rows) {
    ap_predictor *p = make_pred(64, 16, 32, 12);
    replay_opts o = replay_default();
    o.first_pred = 1;
    o.n_rows = 150;
    o.c0 = 0;
    o.local = 0;
    o.w_first = 3;
    double worst;
    cr_assert_eq(run_replay(p, 0, &o, &worst), 150);
    o.c0 = 2;
    o.local = 1;
    o.w_first = 4;
    o.seed = 9;
    cr_assert_eq(run_replay(p, 0, &o, &worst), 150);
    ap_predictor_free(p);
}

/* W from 1 to 4 (and a sink cut that leaves 1 column): the column zero
 * padding touches every column. */
Test(incremental, small_widths) {
    ap_predictor *p = make_pred(64, 16, 32, 13);
    replay_opts o = replay_default();
    o.first_pred = 1;
    o.c0 = 0;
    o.local = 0;
    o.w_first = 1;
    o.n_rows = 64; /* widths 1..4 */
    double worst;
    cr_assert_eq(run_replay(p, 0, &o, &worst), 64);
    o.c0 = 3;
    o.w_first = 4;
    o.grow_every = 40;
    o.n_rows = 120; /* Wc 1..3 */
    o.kind = ROWS_DENSE;
    cr_assert_eq(run_replay(p, 0, &o, &worst), 120);
    ap_predictor_free(p);
}

/* H below 5 has no interior row; H = 5 and 6 have one and two. */
Test(incremental, small_histories) {
    int total = 0;
    for (int H = 1; H <= 8; H++) {
        ap_predictor *p = make_pred(H, 16, 32, 20 + H);
        replay_opts o = replay_default();
        o.first_pred = 1;
        o.n_rows = 160;
        o.c0 = 1;
        o.local = 1;
        o.w_first = 4;
        o.seed = 7 * H;
        double worst;
        total += run_replay(p, 0, &o, &worst);
        o.pred_every = 3;
        o.kind = ROWS_SPARSE;
        total += run_replay(p, 0, &o, &worst);
        ap_predictor_free(p);
    }
    cr_assert_geq(total, 8 * 200);
}

/* Other channel counts and histories, with weights far from the init. */
Test(incremental, trained_like_configs) {
    static const int cfg[][3] = {{32, 8, 24}, {48, 4, 8}, {64, 24, 16}, {17, 12, 40}};
    for (int i = 0; i < 4; i++) {
        ap_predictor *p = make_pred(cfg[i][0], cfg[i][1], cfg[i][2], 30 + i);
        make_trained_like(p, 40 + i);
        replay_opts o = replay_default();
        o.first_pred = cfg[i][0];
        o.n_rows = 300;
        o.seed = 50 + i;
        o.kind = i % 2 ? ROWS_DENSE : ROWS_MIXED;
        double worst;
        cr_assert_geq(run_replay(p, 0, &o, &worst), 300 - cfg[i][0] - 16);
        cr_log_info("H=%d c1=%d c2=%d: worst %.3g", cfg[i][0], cfg[i][1], cfg[i][2], worst);
        ap_predictor_free(p);
    }
}

/* A per-layer predictor: the incremental object uses the model it was made
 * for, not model 0. */
Test(incremental, model_index) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    ap_pred_config_per_layer(&c, 3);
    c.history = 16;
    ap_predictor *p = NULL;
    cr_assert_eq(ap_predictor_create(&c, 5, &p, NULL), AP_OK);
    ap_predictor_set_threads(p, 1);
    replay_opts o = replay_default();
    o.first_pred = 16;
    o.n_rows = 120;
    double worst;
    for (int m = 0; m < 3; m++) cr_assert_geq(run_replay(p, m, &o, &worst), 100);
    ap_predictor_free(p);
}

/* Rows wider than one GEMM chunk (one output row per chunk) and a width
 * increase across that size; 4/8 channels take the direct path
 * (kernels/pred_conv.h) over the same column tiles. */
Test(incremental, wide_rows) {
    static const int ch[][2] = {{16, 32}, {4, 8}};
    for (int i = 0; i < 2; i++) {
        ap_predictor *p = make_pred(8, ch[i][0], ch[i][1], 21 + i);
        replay_opts o = replay_default();
        o.first_pred = 8;
        o.w_first = 2040;
        o.grow_every = 2;
        o.n_rows = 40;
        o.kind = ROWS_SPARSE;
        double worst;
        cr_assert_eq(run_replay(p, 0, &o, &worst), 33, "channels %d/%d", ch[i][0], ch[i][1]);
        ap_predictor_free(p);
    }
}

/* Several rows between predicts (up to and beyond the interior size, which
 * forces a full recomputation), so c1 also jumps by more than one block. */
Test(incremental, gaps_between_predicts) {
    ap_predictor *p = make_pred(16, 16, 32, 14);
    static const int gaps[] = {2, 5, 11, 12, 13, 40};
    for (int i = 0; i < 6; i++) {
        replay_opts o = replay_default();
        o.first_pred = 16;
        o.pred_every = gaps[i];
        o.grow_every = 3;
        o.w_first = 6;
        o.n_rows = 16 + 30 * gaps[i];
        o.seed = 60 + i;
        double worst;
        cr_assert_geq(run_replay(p, 0, &o, &worst), 30);
    }
    ap_predictor_free(p);
}

/* Resync never, always, and often: all exact; with never, the float64
 * running sums carry thousands of steps. */
Test(incremental, resync_settings) {
    ap_predictor *p = make_pred(24, 16, 32, 15);
    static const int every[] = {0, 1, 7};
    for (int i = 0; i < 3; i++) {
        replay_opts o = replay_default();
        o.first_pred = 24;
        o.resync = every[i];
        o.n_rows = every[i] == 0 ? 1500 : 200;
        o.grow_every = 64; /* keep the reference cheap over the long run */
        o.w_first = 10;
        o.seed = 70 + i;
        double worst;
        cr_assert_geq(run_replay(p, 0, &o, &worst), 150);
        cr_log_info("resync %d: worst %.3g", every[i], worst);
    }
    ap_predictor_free(p);
}

/* The cost claim: after the first (full) predict a step spends a few rows'
 * worth of MACs; a width increase adds only a few columns for all rows. */
Test(incremental, macs_per_step) {
    ap_predictor *p = make_pred(64, 16, 32, 16);
    ap_incr *s = NULL;
    cr_assert_eq(ap_incr_create(p, 0, &s, NULL), AP_OK);
    int W = 300;
    float *row = malloc(sizeof(float) * (W + 8)), *y = malloc(sizeof(float) * (W + 8));
    uint64_t rng = 3;
    double naive = 0.0, steady = 0.0, grow = 0.0;
    for (int i = 0; i < 96; i++) {
        int w = i < 90 ? W : W + 1; /* one new block at row 90 */
        make_row(row, w, ROWS_MIXED, i, &rng);
        cr_assert_eq(ap_incr_push(s, row, w, NULL), AP_OK);
        if (i < 63) continue;
        cr_assert_eq(ap_incr_predict(s, 4, w - 4, y, NULL), AP_OK);
        double macs = ap_incr_last_macs(s);
        int Wc = w - 8;
        double full = (9.0 * 16 + 9.0 * 16 * 32 + 32) * 64 * Wc;
        if (i == 63) naive = macs;
        if (i == 70) steady = macs / full;
        if (i == 90) grow = macs / full;
    }
    double full0 = (9.0 * 16 + 9.0 * 16 * 32 + 32) * 64 * (W - 8);
    /* the first predict computes every row: about the naive count */
    cr_assert(naive > 0.95 * full0 && naive < 1.1 * full0, "first predict %.3g vs %.3g", naive,
              full0);
    /* 5 of 64 rows, plus halos */
    cr_assert(steady > 0.05 && steady < 0.1, "steady step costs %.3f of the full", steady);
    /* + 60 interior rows x 3 columns */
    cr_assert(grow > steady && grow < steady + 0.02, "width step costs %.3f of the full", grow);
    free(row);
    free(y);
    ap_incr_free(s);
    ap_predictor_free(p);
}

/* The resync period, seen through the cost: a full recomputation spends
 * about H rows' MACs, an incremental step a few rows'. */
Test(incremental, resync_period) {
    ap_predictor *p = make_pred(32, 16, 32, 22);
    static const int every[] = {0, 1, 4, 7};
    static const int expect[] = {1, 40, 10, 6};
    float row[64], y[64];
    uint64_t rng = 6;
    for (int e = 0; e < 4; e++) {
        ap_incr *s = NULL;
        cr_assert_eq(ap_incr_create(p, 0, &s, NULL), AP_OK);
        ap_incr_set_resync(s, every[e]);
        int n_full = 0;
        for (int i = 0; i < 72; i++) {
            make_row(row, 40 + i / 16, ROWS_MIXED, i, &rng);
            cr_assert_eq(ap_incr_push(s, row, 40 + i / 16, NULL), AP_OK);
            if (i < 32) continue;
            cr_assert_eq(ap_incr_predict(s, 4, 36 + i / 16, y, NULL), AP_OK);
            double full = (9.0 * 16 + 9.0 * 16 * 32 + 32) * 32 * (32 + i / 16);
            n_full += ap_incr_last_macs(s) > 0.5 * full;
        }
        cr_assert_eq(n_full, expect[e], "resync every %d: %d full predicts of 40", every[e],
                     n_full);
        ap_incr_free(s);
    }
    ap_predictor_free(p);
}

/* c0 changes and c1 shrinks are outside the replay contract; they fall
 * back to a full recomputation and stay exact. Reset starts a sequence. */
Test(incremental, column_changes_and_reset) {
    ap_predictor *p = make_pred(20, 16, 32, 17);
    ap_incr *s = NULL, *fresh = NULL;
    cr_assert_eq(ap_incr_create(p, 0, &s, NULL), AP_OK);
    int H = 20, W = 40;
    float *rows = malloc(sizeof(float) * 60 * W), *win = malloc(sizeof(float) * H * W);
    float *y = malloc(sizeof(float) * W), *y_ref = malloc(sizeof(float) * W);
    uint64_t rng = 4;
    for (int i = 0; i < 60; i++) make_row(rows + (size_t)i * W, W, ROWS_MIXED, i, &rng);
    static const int cut[][2] = {{4, 30}, {4, 31}, {2, 31}, {2, 25}, {0, 40}, {5, 6}, {5, 40}};
    int n = 0;
    for (int step = 0; step < 7; step++) {
        for (int j = 0; j < 3; j++, n++)
            cr_assert_eq(ap_incr_push(s, rows + (size_t)n * W, W, NULL), AP_OK);
        int c0 = cut[step][0], c1 = cut[step][1], Wc = c1 - c0;
        for (int h = 0; h < H; h++)
            for (int x = 0; x < Wc; x++) {
                int r = n - H + h;
                win[h * Wc + x] = r >= 0 ? rows[(size_t)r * W + c0 + x] : 0.0f;
            }
        cr_assert_eq(ap_predictor_forward(p, 0, win, 1, H, Wc, y_ref, NULL), AP_OK);
        cr_assert_eq(ap_incr_predict(s, c0, c1, y, NULL), AP_OK);
        cr_assert_leq(ap_rel_err_f32(y, y_ref, Wc), AP_TOL_INCR_REL, "cut %d..%d", c0, c1);
    }
    /* a reset object equals a fresh one on a new, narrower sequence */
    ap_incr_reset(s);
    cr_assert_eq(ap_incr_create(p, 0, &fresh, NULL), AP_OK);
    for (int i = 0; i < 30; i++) {
        cr_assert_eq(ap_incr_push(s, rows + (size_t)i * W, 10 + i / 4, NULL), AP_OK);
        cr_assert_eq(ap_incr_push(fresh, rows + (size_t)i * W, 10 + i / 4, NULL), AP_OK);
        cr_assert_eq(ap_incr_predict(s, 1, 8 + i / 4, y, NULL), AP_OK);
        cr_assert_eq(ap_incr_predict(fresh, 1, 8 + i / 4, y_ref, NULL), AP_OK);
        cr_assert_eq(memcmp(y, y_ref, sizeof(float) * (size_t)(7 + i / 4)), 0, "row %d", i);
    }
    free(rows);
    free(win);
    free(y);
    free(y_ref);
    ap_incr_free(s);
    ap_incr_free(fresh);
    ap_predictor_free(p);
}

/* The float32 incremental scores vs the float64 reference forward. */
Test(incremental, float64_reference) {
    ap_predictor *p = make_pred(64, 16, 32, 18);
    const ap_pred_config *c = ap_predictor_config(p);
    size_t np;
    const float *pf = ap_predictor_params_const(p, &np);
    double *pd = malloc(sizeof(double) * np);
    for (size_t i = 0; i < np; i++) pd[i] = pf[i];
    int H = 64, W = 48;
    ap_incr *s = NULL;
    cr_assert_eq(ap_incr_create(p, 0, &s, NULL), AP_OK);
    float *rows = calloc((size_t)120 * W, sizeof(float)), *y = malloc(sizeof(float) * W);
    double *win = malloc(sizeof(double) * H * W), *yd = malloc(sizeof(double) * W);
    float *yr = malloc(sizeof(float) * W);
    uint64_t rng = 5;
    for (int i = 0; i < 120; i++) {
        int w = 30 + i / 16;
        make_row(rows + (size_t)i * W, w, ROWS_MIXED, i, &rng);
        cr_assert_eq(ap_incr_push(s, rows + (size_t)i * W, w, NULL), AP_OK);
        if (i < 63) continue;
        int c0 = 4, c1 = w - 4, Wc = c1 - c0;
        cr_assert_eq(ap_incr_predict(s, c0, c1, y, NULL), AP_OK);
        if (i % 14 != 0) continue; /* the float64 reference is slow */
        for (int h = 0; h < H; h++)
            for (int x = 0; x < Wc; x++) {
                int r = i + 1 - H + h;
                int in_row = r >= 0 && c0 + x < 30 + r / 16;
                win[h * Wc + x] = in_row ? rows[(size_t)r * W + c0 + x] : 0.0;
            }
        ap_pred_forward_ref(c, pd, win, 1, H, Wc, yd);
        for (int x = 0; x < Wc; x++) yr[x] = (float)yd[x];
        cr_assert_leq(ap_rel_err_f32(y, yr, Wc), AP_TOL_KERNEL_REL, "row %d", i);
    }
    free(pd);
    free(rows);
    free(y);
    free(win);
    free(yd);
    free(yr);
    ap_incr_free(s);
    ap_predictor_free(p);
}

/* A trained export, when one is present (runs/ is not in the repository;
 * the main job, scripts/main.sh, writes runs/<preset>/predictor.safetensors
 * and its default preset is quick). */
Test(incremental, trained_export) {
    const char *path = AP_SOURCE_DIR "/runs/quick/predictor.safetensors";
    if (access(path, R_OK) != 0)
        cr_skip_test("no trained predictor at %s (`bash scripts/main.sh` writes it)", path);
    ap_runtime *rt = NULL;
    ap_err err;
    cr_assert_eq(ap_runtime_load(path, &rt, &err), AP_OK, "%s", err.msg);
    ap_predictor *p = ap_runtime_predictor(rt);
    ap_predictor_set_threads(p, 1);
    const ap_pred_config *c = ap_predictor_config(p);
    replay_opts o = replay_default();
    o.first_pred = c->history;
    o.c0 = c->sink_blocks;
    o.local = c->local_blocks;
    o.n_rows = 300;
    double worst;
    for (int m = 0; m < c->n_models && m < 3; m++) cr_assert_geq(run_replay(p, m, &o, &worst), 200);
    ap_runtime_free(rt);
}

Test(incremental, errors) {
    ap_predictor *p = make_pred(8, 4, 4, 19);
    ap_incr *s = NULL;
    ap_err err;
    ap_incr_free(NULL);
    cr_assert_eq(ap_incr_create(p, 1, &s, &err), AP_ERR_ARG);
    cr_assert_null(s);
    cr_assert_eq(ap_incr_create(p, 0, &s, &err), AP_OK);
    float row[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8];
    cr_assert_eq(ap_incr_predict(s, 0, 1, y, &err), AP_ERR_ARG, "predict before any push");
    cr_assert_eq(ap_incr_push(s, row, 6, &err), AP_OK);
    cr_assert_eq(ap_incr_push(s, row, 5, &err), AP_ERR_ARG, "width must not decrease");
    cr_assert(strstr(err.msg, "narrower") != NULL, "%s", err.msg);
    cr_assert_eq(ap_incr_push(s, NULL, 6, &err), AP_ERR_ARG);
    cr_assert_eq(ap_incr_predict(s, 0, 7, y, &err), AP_ERR_ARG, "c1 past the newest width");
    cr_assert_eq(ap_incr_predict(s, 3, 3, y, &err), AP_ERR_ARG, "empty range");
    cr_assert_eq(ap_incr_predict(s, -1, 3, y, &err), AP_ERR_ARG);
    cr_assert_eq(ap_incr_predict(s, 0, 6, y, &err), AP_OK);
    ap_incr_free(s);
    ap_predictor_free(p);
}
