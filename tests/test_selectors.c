/* The selectors of eval/selectors.h one by one, on in-memory tiny sequences
 * with hand-computed scores: oracle, streaming, H2O (prefill init and the
 * renormalised accumulation), SnapKV (window, pooling, decode priority),
 * Quest (the bound formula, GQA mapping), last-step (sparse rows,
 * calibration), last-step-dense, and the CNN predictor against the float64
 * reference on windows built here, naive and incremental. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/tolerance.h"
#include "eval/selectors.h"
#include "kernels/query_bound.h"
#include "helpers/tiny_trace.h"
#include "train/predictor.h"
#include "train/runtime.h"

static char dir[1024];

static void mkdir_test(void) {
    char base[600];
    snprintf(base, sizeof base, "%s/test_selectors_tmp", AP_BINARY_DIR);
    mkdir(base, 0755);
    snprintf(dir, sizeof dir, "%s/XXXXXX", base);
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static void rm_test(void) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) cr_log_warn("could not remove %s", dir);
}

TestSuite(selectors, .init = mkdir_test, .fini = rm_test, .timeout = 120);

/* Block 4, sink 4 (1 block), local 8 (2 blocks), history 8, prompt 40, 12
 * generated: decode step t has q = 40 + t, candidates [1, ceil(q/4) - 2). */
enum { BLK = 4, SINK_B = 1, LOCAL_B = 2, PROMPT = 40, GEN = 12 };

static void make_seq(ap_tiny_seq *s, int n_head, int n_head_kv) {
    ap_tiny_shape sh = {1, n_head, n_head_kv, 4, BLK, 8};
    ap_err e;
    cr_assert_eq(ap_tiny_seq_init(s, &sh, "s", PROMPT, GEN, 1, 1, &e), AP_OK, "%s", e.msg);
}

static ap_sel_data data_of(const ap_tiny_seq *s) {
    return (ap_sel_data){.layer = 0, .n_head = s->shape.n_head, .n_head_kv = s->shape.n_head_kv,
                         .head_dim = s->shape.head_dim, .block = BLK, .n_prompt = s->n_prompt,
                         .n_pre = s->n_pre, .n_steps = s->n_gen, .n_blocks = s->NB,
                         .block_max = s->block_max, .block_sum = s->block_sum,
                         .query = s->query, .key_min = s->key_min, .key_max = s->key_max,
                         .prefill_colsum = s->colsum};
}

static ap_sel_params params_of(ap_kv_mode mode, int calib) {
    return (ap_sel_params){.sink_blocks = SINK_B, .local_blocks = LOCAL_B,
                           .local_tokens = LOCAL_B * BLK, .calib = calib, .kv_mode = mode,
                           .snapkv_window = 32, .snapkv_pool = 1};
}

/* The documented geometry (docs/eval.md), computed independently. */
static ap_sel_step step_of(const ap_tiny_seq *s, int t) {
    ap_sel_step st = {0};
    st.t = t;
    st.s = s->n_pre + t;
    st.q = s->n_prompt + t;
    st.c0 = SINK_B;
    st.c1 = (st.q + BLK - 1) / BLK - LOCAL_B;
    st.W = st.c1 - st.c0;
    st.n_valid = st.q / BLK + 1;
    st.lb0 = (st.q + 1 - LOCAL_B * BLK) / BLK;
    st.k = 2;
    return st;
}

/* Kept mask as the replay builds it: sink, local, chosen (absolute ids). */
static void kept_of(const ap_tiny_seq *s, const ap_sel_step *st, const int *chosen, int k,
                    uint8_t *kept, double *mass, int head) {
    memset(kept, 0, (size_t)s->NB);
    for (int j = 0; j < st->n_valid; j++) kept[j] = j < st->c0 || j >= st->lb0;
    for (int i = 0; i < k; i++) kept[chosen[i]] = 1;
    const float *bs = ap_tiny_sum_row(s, 0, st->s, head);
    double m = 0.0;
    for (int j = 0; j < s->NB; j++)
        if (kept[j]) m += bs[j];
    *mass = m;
}

static void close_rel(double got, double want, const char *what) {
    double scale = fabs(want) > 1e-30 ? fabs(want) : 1.0;
    cr_assert(fabs(got - want) / scale <= AP_TOL_KERNEL_REL, "%s: got %.9g, want %.9g", what,
              got, want);
}

Test(selectors, registry) {
    const char *names[] = {"oracle", "streaming", "h2o", "snapkv", "quest", "last_step",
                           "last_step_dense"};
    const ap_sel_kind kinds[] = {AP_SEL_BOUND, AP_SEL_EVICTION, AP_SEL_EVICTION,
                                 AP_SEL_EVICTION, AP_SEL_RETRIEVAL, AP_SEL_RETRIEVAL,
                                 AP_SEL_RETRIEVAL};
    for (int i = 0; i < 7; i++) {
        const ap_selector *s = ap_selector_builtin(i);
        cr_assert_not_null(s);
        cr_assert_str_eq(s->name, names[i]);
        cr_assert_eq(s->kind, kinds[i], "%s", names[i]);
        cr_assert_eq(ap_selector_find(names[i]), s);
        cr_assert_eq(s->stateful, s->observe != NULL, "%s: stateful <=> observe", names[i]);
    }
    cr_assert_null(ap_selector_builtin(7));
    cr_assert_null(ap_selector_find("nope"));
    cr_assert_eq(ap_selector_find("quest")->needs, (unsigned)AP_SEL_NEEDS_QUERY);
    cr_assert_eq(ap_selector_find("h2o")->needs, (unsigned)AP_SEL_NEEDS_COLSUM);
    cr_assert_eq(ap_selector_predictor()->needs, (unsigned)AP_SEL_NEEDS_PREDICTOR);
    cr_assert(ap_selector_predictor()->stateful);
    ap_pred_config c;
    ap_pred_config_default(&c);
    cr_assert_eq(ap_sel_naive_macs(&c, 64, 100), 4752.0 * 64 * 100 + 32.0 * 100);
}

Test(selectors, oracle_and_streaming) {
    ap_tiny_seq s;
    make_seq(&s, 2, 1);
    ap_tiny_add(&s, 0, s.n_pre + 1, 1, 3, 5.0);
    ap_tiny_finish(&s);
    ap_sel_data d = data_of(&s);
    ap_sel_params p = params_of(AP_KV_PER_QHEAD, 5);
    ap_sel_step st = step_of(&s, 1); /* q 41: candidates 1..8, block 8 inside the local window */
    cr_assert_eq(st.W, 8);
    cr_assert_eq(st.lb0, 8);
    float sc[2 * 8];
    void *o = NULL, *r = NULL;
    cr_assert_eq(ap_selector_find("oracle")->create(&d, &p, &o, NULL), AP_OK);
    cr_assert_eq(ap_selector_find("oracle")->score(o, &st, sc, NULL), AP_OK);
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 8; j++) {
            float want = 1 + j >= 8 ? 0.0f : ap_tiny_sum_row(&s, 0, st.s, h)[1 + j];
            cr_assert_eq(sc[h * 8 + j], want, "oracle h %d j %d", h, j);
        }
    cr_assert_gt(sc[8 + 2], sc[8 + 1], "head 1's heavy block 3");
    cr_assert_eq(ap_selector_find("streaming")->create(&d, &p, &r, NULL), AP_OK);
    cr_assert_eq(ap_selector_find("streaming")->score(r, &st, sc, NULL), AP_OK);
    for (int j = 0; j + 1 < 7; j++) cr_assert_lt(sc[j], sc[j + 1], "recency order");
    cr_assert_lt(sc[7], sc[0], "the block inside the local window ranks last");
    ap_selector_find("oracle")->destroy(o);
    ap_selector_find("streaming")->destroy(r);
    ap_tiny_seq_free(&s);
}

Test(selectors, h2o_prefill_init_and_renormalised_accumulation) {
    ap_tiny_seq s;
    make_seq(&s, 2, 1);
    for (int k = 0; k < PROMPT; k++) s.colsum[k] = (float)k; /* head 0; head 1 stays 1 */
    ap_tiny_add(&s, 0, s.n_pre + 0, 0, 5, 9.0);           /* step 0: block 5 holds half */
    ap_tiny_finish(&s);
    ap_sel_data d = data_of(&s);
    const ap_selector *h2o = ap_selector_find("h2o");
    for (int mode = 0; mode < 2; mode++) {
        ap_sel_params p = params_of(mode ? AP_KV_SUM : AP_KV_PER_QHEAD, 5);
        void *st0 = NULL;
        cr_assert_eq(h2o->create(&d, &p, &st0, NULL), AP_OK);
        ap_sel_step st = step_of(&s, 0);
        cr_assert_eq(st.W, 7);
        float sc[2 * 8];
        cr_assert_eq(h2o->score(st0, &st, sc, NULL), AP_OK);
        for (int j = 0; j < 7; j++) {
            int b = 1 + j;
            double h0 = 16.0 * b + 6, h1 = 4.0; /* sum of k over the block, 4 x 1 */
            close_rel(sc[j], mode ? h0 + h1 : h0, "h2o init head 0");
            close_rel(sc[7 + j], mode ? h0 + h1 : h1, "h2o init head 1");
        }
        /* Keep blocks 7 and 5: each kept block gains its share of the kept mass. */
        int chosen[2] = {7, 5};
        uint8_t kept[2 * 16];
        double mass[2];
        for (int h = 0; h < 2; h++) kept_of(&s, &st, chosen, 2, kept + h * s.NB, &mass[h], h);
        cr_assert_eq(h2o->observe(st0, &st, kept, mass, NULL), AP_OK);
        ap_sel_step st1 = step_of(&s, 1);
        cr_assert_eq(h2o->score(st0, &st1, sc, NULL), AP_OK);
        const float *r0 = ap_tiny_sum_row(&s, 0, st.s, 0), *r1 = ap_tiny_sum_row(&s, 0, st.s, 1);
        double add0_5 = r0[5] / mass[0], add1_5 = r1[5] / mass[1];
        double want5 = mode ? 16.0 * 5 + 6 + 4 + add0_5 + add1_5 : 16.0 * 5 + 6 + add0_5;
        close_rel(sc[st1.W * 0 + 4], want5, "block 5 after step 0");
        close_rel(sc[st1.W * 0 + 2], mode ? 16.0 * 3 + 10 : 16.0 * 3 + 6, "block 3 not kept");
        cr_assert(fabs(add0_5 - 2.0 / 3.0) < 1e-6, "half the row over 0.75 kept: %g", add0_5);
        cr_assert_eq(sc[st1.W - 1], -1e30f, "block 8 is inside the local window");
        h2o->destroy(st0);
    }
    /* Without prefill_colsum: an error naming the capture option. */
    d.prefill_colsum = NULL;
    ap_sel_params p = params_of(AP_KV_PER_QHEAD, 5);
    void *bad = NULL;
    ap_err e;
    cr_assert_neq(h2o->create(&d, &p, &bad, &e), AP_OK);
    cr_assert(strstr(e.msg, "--no-colsum") != NULL, "%s", e.msg);
    ap_tiny_seq_free(&s);
}

Test(selectors, snapkv_window_pool_and_decode_priority) {
    ap_tiny_seq s;
    make_seq(&s, 1, 1);
    for (int r = 0; r < 5; r++) ap_tiny_add(&s, 0, r, 0, 2, 50.0); /* outside a 3-row window */
    for (int r = 5; r < 8; r++) ap_tiny_add(&s, 0, r, 0, 4, 7.0 + r);
    ap_tiny_finish(&s);
    ap_sel_data d = data_of(&s);
    const ap_selector *sk = ap_selector_find("snapkv");
    for (int pool = 1; pool <= 3; pool += 2) {
        ap_sel_params p = params_of(AP_KV_PER_QHEAD, 5);
        p.snapkv_window = 3;
        p.snapkv_pool = pool;
        void *st0 = NULL;
        cr_assert_eq(sk->create(&d, &p, &st0, NULL), AP_OK);
        double vote[16] = {0};
        for (int r = 5; r < 8; r++)
            for (int j = 0; j < s.NB; j++) vote[j] += ap_tiny_sum_row(&s, 0, r, 0)[j];
        ap_sel_step st = step_of(&s, 5); /* q 45: candidates 1..9, 8 new, 9 local */
        cr_assert_eq(st.c1, 10);
        cr_assert_eq(st.lb0, 9);
        float sc[16];
        cr_assert_eq(sk->score(st0, &st, sc, NULL), AP_OK);
        for (int j = 0; j < 7; j++) {
            int b = 1 + j;
            double want = vote[b];
            if (pool == 3) {
                want = fmax(vote[b - 1], fmax(vote[b], vote[b + 1]));
            }
            close_rel(sc[j], want, pool == 3 ? "pooled vote" : "vote");
        }
        cr_assert_gt(sc[3], sc[1], "block 4 outvotes block 2 (outside the window)");
        cr_assert_gt(sc[7], 1e5f, "block 8 left the local window during decode: priority");
        cr_assert_eq(sc[8], -1e30f, "block 9 is still local");
        sk->destroy(st0);
    }
    ap_tiny_seq_free(&s);
}

Test(selectors, quest_bound_formula_and_gqa) {
    ap_tiny_seq s;
    make_seq(&s, 2, 2);
    const int hd = 4, NB = s.NB;
    ap_tiny_finish(&s);
    ap_sel_step st = step_of(&s, 0);
    float qv[2][4] = {{1, -2, 0, 0.5f}, {0, 0, 3, 0}};
    for (int h = 0; h < 2; h++) memcpy(s.query + ((size_t)st.s * 2 + h) * hd, qv[h], sizeof qv[h]);
    for (int kv = 0; kv < 2; kv++)
        for (int j = 0; j < NB; j++) {
            float lo[4] = {-(float)j, 1, 3 + kv, -1}, hi[4] = {(float)j, 2, 4 + kv * j, 1};
            memcpy(s.key_min + ((size_t)kv * NB + j) * hd, lo, sizeof lo);
            memcpy(s.key_max + ((size_t)kv * NB + j) * hd, hi, sizeof hi);
        }
    ap_sel_data d = data_of(&s);
    ap_sel_params p = params_of(AP_KV_PER_QHEAD, 5);
    const ap_selector *qs = ap_selector_find("quest");
    void *st0 = NULL;
    cr_assert_eq(qs->create(&d, &p, &st0, NULL), AP_OK);
    float sc[2 * 16];
    cr_assert_eq(qs->score(st0, &st, sc, NULL), AP_OK);
    for (int j = 0; j < st.W; j++) {
        int b = 1 + j;
        /* head 0, KV 0: max(-b, b) + max(-2, -4) + 0 + max(-0.5, 0.5) */
        close_rel(sc[j], b - 1.5, "quest head 0");
        /* head 1, KV 1: 3 * max(4, 4 + b) */
        close_rel(sc[st.W + j], 3.0 * (4 + b), "quest head 1 uses KV head 1");
    }
    qs->destroy(st0);
    d.query = NULL;
    ap_err e;
    cr_assert_neq(qs->create(&d, &p, &st0, &e), AP_OK);
    cr_assert(strstr(e.msg, "--no-quest") != NULL, "%s", e.msg);
    ap_tiny_seq_free(&s);
}

/* An ap_par that runs the units serially, last first: a unit that wrote
 * outside its own part, or depended on another's order, shows up. */
static void reverse_run(void *ctx, ap_par_fn fn, void *arg, int n) {
    int *calls = ctx;
    (*calls)++;
    for (int i = n - 1; i >= 0; i--) fn(arg, i);
}

/* Quest split over threads (ap_sel_step.par: KV head x block chunks of 64)
 * gives bit for bit the single-thread scores, and those are the plain
 * bound of every head over a window of 300 candidates (5 chunks, the last
 * partial), GQA groups of 3. */
Test(selectors, quest_split_over_threads_is_exact) {
    enum { H = 6, KV = 2, HD = 64, NB = 320, S = 3 };
    float *q = malloc(sizeof(float) * S * H * HD), *lo = malloc(sizeof(float) * KV * NB * HD),
          *hi = malloc(sizeof(float) * KV * NB * HD), *a = malloc(sizeof(float) * H * NB),
          *b = malloc(sizeof(float) * H * NB), *ref = malloc(sizeof(float) * NB);
    cr_assert(q && lo && hi && a && b && ref);
    uint64_t r = 3;
    for (int i = 0; i < S * H * HD; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        q[i] = (float)((double)(r >> 11) / 9007199254740992.0 * 4.0 - 2.0);
    }
    for (int i = 0; i < KV * NB * HD; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        float x = (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
        lo[i] = x;
        hi[i] = x + (float)(r % 7) * 0.25f;
    }
    ap_sel_data d = {.layer = 0, .n_head = H, .n_head_kv = KV, .head_dim = HD, .block = 16,
                     .n_prompt = 4800, .n_pre = 2, .n_steps = 1, .n_blocks = NB, .query = q,
                     .key_min = lo, .key_max = hi};
    ap_sel_step st = {.t = 0, .s = 2, .q = 4800, .c0 = 4, .c1 = 304, .W = 300, .lb0 = 296,
                      .n_valid = 301, .k = 10};
    ap_sel_params p = {.sink_blocks = 4, .local_blocks = 4, .local_tokens = 64};
    const ap_selector *qs = ap_selector_find("quest");
    void *state = NULL;
    cr_assert_eq(qs->create(&d, &p, &state, NULL), AP_OK);
    cr_assert_eq(qs->score(state, &st, a, NULL), AP_OK);
    int calls = 0;
    ap_par rev = {.run = reverse_run, .ctx = &calls};
    st.par = &rev;
    cr_assert_eq(qs->score(state, &st, b, NULL), AP_OK);
    cr_assert_eq(calls, 1, "the split did not run");
    cr_assert_eq(memcmp(a, b, sizeof(float) * H * st.W), 0, "split scores differ");
    for (int h = 0; h < H; h++) {
        const int g = h / (H / KV);
        ap_query_bound_ref(q + ((size_t)st.s * H + h) * HD, lo + ((size_t)g * NB + st.c0) * HD,
                           hi + ((size_t)g * NB + st.c0) * HD, HD, st.W, ref);
        double rel = ap_rel_err_f32(a + (size_t)h * st.W, ref, st.W);
        cr_assert(rel <= AP_TOL_KERNEL_REL, "head %d: relative error %.3g", h, rel);
    }
    qs->destroy(state);
    free(q);
    free(lo);
    free(hi);
    free(a);
    free(b);
    free(ref);
}

Test(selectors, last_step_sparse_rows_and_calibration) {
    ap_tiny_seq s;
    make_seq(&s, 1, 1);
    for (int r = 0; r < s.S; r++) ap_tiny_add(&s, 0, r, 0, 3 + r % 4, 2.0 + r);
    ap_tiny_finish(&s);
    ap_sel_data d = data_of(&s);
    ap_sel_params p = params_of(AP_KV_PER_QHEAD, 2);
    const ap_selector *ls = ap_selector_find("last_step"), *ld = ap_selector_find("last_step_dense");
    void *a = NULL, *b = NULL;
    cr_assert_eq(ls->create(&d, &p, &a, NULL), AP_OK);
    cr_assert_eq(ld->create(&d, &p, &b, NULL), AP_OK);
    float sc[16], sd[16];
    uint8_t kept[16];
    double mass;
    for (int t = 0; t < 5; t++) {
        ap_sel_step st = step_of(&s, t);
        cr_assert_eq(ls->score(a, &st, sc, NULL), AP_OK);
        cr_assert_eq(ld->score(b, &st, sd, NULL), AP_OK);
        const float *prev = s.block_max + ((size_t)(st.s - 1)) * s.NB;
        for (int j = 0; j < st.W; j++) cr_assert_eq(sd[j], prev[st.c0 + j], "dense t %d", t);
        if (t == 0) {
            for (int j = 0; j < st.W; j++) cr_assert_eq(sc[j], prev[st.c0 + j], "prefill row");
        } else if (t % 2 == 0) {
            /* After step t-1 with (t-1+1) % 2 == 0: the dense row. */
            for (int j = 0; j < st.W; j++) cr_assert_eq(sc[j], prev[st.c0 + j], "calib t %d", t);
        } else {
            /* Sparse: kept blocks of step t-1 renormalised by the kept mass. */
            ap_sel_step pv = step_of(&s, t - 1);
            int chosen[2] = {2, 5};
            kept_of(&s, &pv, chosen, 2, kept, &mass, 0);
            for (int j = 0; j < st.W; j++) {
                int bb = st.c0 + j;
                double want = bb < pv.n_valid && kept[bb] ? prev[bb] / mass : 0.0;
                close_rel(sc[j], want, "sparse row");
            }
            cr_assert_eq(sc[0], 0.0f, "block 1 was not kept");
        }
        int chosen[2] = {2, 5};
        kept_of(&s, &st, chosen, 2, kept, &mass, 0);
        cr_assert_eq(ls->observe(a, &st, kept, &mass, NULL), AP_OK);
    }
    ls->destroy(a);
    ld->destroy(b);
    ap_tiny_seq_free(&s);
}

/* Exports a random small predictor (block 4, history H) and loads it. */
static ap_runtime *small_runtime(int H, ap_predictor **keep) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    c.history = H;
    c.block = BLK;
    c.sink_blocks = SINK_B;
    c.local_blocks = LOCAL_B;
    c.c1 = 4;
    c.c2 = 6;
    ap_err e;
    cr_assert_eq(ap_predictor_create(&c, 11, keep, &e), AP_OK, "%s", e.msg);
    char path[1200];
    snprintf(path, sizeof path, "%s/p.safetensors", dir);
    cr_assert_eq(ap_pred_export(path, NULL, &c, ap_predictor_params(*keep, NULL), &e), AP_OK,
                 "%s", e.msg);
    ap_runtime *rt = NULL;
    cr_assert_eq(ap_runtime_load(path, &rt, &e), AP_OK, "%s", e.msg);
    ap_predictor_set_threads(ap_runtime_predictor(rt), 1);
    return rt;
}

/* Float64 CNN on a window built here from this test's own history rows. */
static void ref_scores(ap_predictor *p, double hist[][16], int n_rows, int H, int c0, int c1,
                       double *y) {
    size_t np = 0;
    const float *pf = ap_predictor_params_const(p, &np);
    double *pd = malloc(np * sizeof(double)), *x = calloc((size_t)H * (c1 - c0), sizeof(double));
    cr_assert(pd && x);
    for (size_t i = 0; i < np; i++) pd[i] = pf[i];
    for (int r = 0; r < H; r++) {
        int src = n_rows - H + r;
        if (src < 0) continue;
        for (int j = c0; j < c1; j++) x[(size_t)r * (c1 - c0) + j - c0] = hist[src][j];
    }
    ap_pred_forward_ref(ap_predictor_config(p), pd, x, 1, H, c1 - c0, y);
    free(pd);
    free(x);
}

Test(selectors, predictor_windows_match_float64_reference) {
    ap_tiny_seq s;
    make_seq(&s, 2, 1);
    for (int r = 0; r < s.S; r++)
        for (int h = 0; h < 2; h++) ap_tiny_add(&s, 0, r, h, 2 + (r + 3 * h) % 6, 4.0 + r);
    ap_tiny_finish(&s);
    ap_sel_data d = data_of(&s);
    ap_predictor *keep = NULL;
    const int H = 12; /* longer than the 8 recorded prefill rows: 4 zero rows first */
    ap_runtime *rt = small_runtime(H, &keep);
    const ap_selector *ps = ap_selector_predictor();
    ap_sel_params pn = params_of(AP_KV_PER_QHEAD, 3), pi = pn;
    pn.rt = pi.rt = rt;
    pi.incremental = 1;
    void *naive = NULL, *incr = NULL;
    cr_assert_eq(ps->create(&d, &pn, &naive, NULL), AP_OK);
    cr_assert_eq(ps->create(&d, &pi, &incr, NULL), AP_OK);
    /* This test's own history per head: rows of 16 blocks. */
    double hist[2][64][16];
    memset(hist, 0, sizeof hist);
    int n_rows = 0;
    for (int r = 0; r < s.n_pre; r++, n_rows++)
        for (int h = 0; h < 2; h++)
            for (int j = 0; j < s.NB; j++) hist[h][n_rows][j] = s.block_max[((size_t)r * 2 + h) * s.NB + j];
    for (int t = 0; t < GEN; t++) {
        ap_sel_step st = step_of(&s, t);
        float sn[2 * 16], si[2 * 16];
        cr_assert_eq(ps->score(naive, &st, sn, NULL), AP_OK);
        cr_assert_eq(ps->score(incr, &st, si, NULL), AP_OK);
        for (int h = 0; h < 2; h++) {
            double y[16];
            ref_scores(keep, hist[h], n_rows, H, st.c0, st.c1, y);
            float yf[16];
            for (int j = 0; j < st.W; j++) yf[j] = (float)y[j];
            double e = ap_rel_err_f32(sn + h * st.W, yf, st.W);
            cr_assert(e <= AP_TOL_FORWARD_REL, "t %d head %d: naive vs float64 rel err %g", t, h, e);
            double ei = ap_rel_err_f32(si + h * st.W, sn + h * st.W, st.W);
            cr_assert(ei <= AP_TOL_INCR_REL, "t %d head %d: incremental vs naive rel err %g", t, h, ei);
        }
        /* Keep two blocks that change with t; append the row the method appends. */
        int chosen[2] = {1 + t % st.W, 1 + (t * 3 + 1) % st.W};
        if (chosen[1] == chosen[0]) chosen[1] = 1 + (chosen[0] % st.W);
        uint8_t kept[2 * 16];
        double mass[2];
        for (int h = 0; h < 2; h++) {
            kept_of(&s, &st, chosen, 2, kept + h * s.NB, &mass[h], h);
            const float *bm = s.block_max + ((size_t)st.s * 2 + h) * s.NB;
            for (int j = 0; j < s.NB; j++) {
                int dense = (t + 1) % 3 == 0;
                hist[h][n_rows][j] = dense ? bm[j] : (kept[h * s.NB + j] ? bm[j] / mass[h] : 0.0);
            }
        }
        n_rows++;
        cr_assert_eq(ps->observe(naive, &st, kept, mass, NULL), AP_OK);
        cr_assert_eq(ps->observe(incr, &st, kept, mass, NULL), AP_OK);
    }
    ap_sel_cost cn, ci;
    ps->cost(naive, &cn);
    ps->cost(incr, &ci);
    cr_assert_eq(cn.n, 2 * GEN);
    cr_assert_eq(cn.naive_macs, cn.run_macs, "full recomputation runs the naive CNN");
    cr_assert_eq(ci.naive_macs, cn.naive_macs);
    cr_assert_gt(ci.run_macs, 0.0);
    ps->destroy(naive);
    ps->destroy(incr);
    ap_runtime_free(rt);
    ap_predictor_free(keep);
    ap_tiny_seq_free(&s);
}

/* The cost options (issue 14): a strided predictor gives the base
 * predictor's scores at every stride-th step and repeats them between (new
 * columns get the row's top cached score); a per-KV-head predictor runs the
 * CNN on the mean of the group's history rows and gives the group one set
 * of scores. Both keep the (step, query head) accounting of the base. */
Test(selectors, predictor_stride_and_per_kv_head) {
    ap_tiny_seq s;
    make_seq(&s, 2, 1);
    for (int r = 0; r < s.S; r++)
        for (int h = 0; h < 2; h++) ap_tiny_add(&s, 0, r, h, 2 + (r * 5 + 3 * h) % 7, 3.0 + r);
    ap_tiny_finish(&s);
    ap_sel_data d = data_of(&s);
    ap_predictor *keep = NULL;
    const int H = 12, S = 3;
    ap_runtime *rt = small_runtime(H, &keep);
    const ap_selector *ps = ap_selector_predictor();
    ap_sel_params pb = params_of(AP_KV_PER_QHEAD, 3), pst = pb, pkv = pb;
    pb.rt = pst.rt = pkv.rt = rt;
    pb.incremental = pst.incremental = pkv.incremental = 1;
    pst.pred_stride = S;
    pkv.pred_per_kv = 1;
    void *base = NULL, *str = NULL, *kv = NULL;
    cr_assert_eq(ps->create(&d, &pb, &base, NULL), AP_OK);
    cr_assert_eq(ps->create(&d, &pst, &str, NULL), AP_OK);
    cr_assert_eq(ps->create(&d, &pkv, &kv, NULL), AP_OK);
    double mean[64][16];
    memset(mean, 0, sizeof mean);
    int n_rows = 0;
    for (int r = 0; r < s.n_pre; r++, n_rows++)
        for (int h = 0; h < 2; h++)
            for (int j = 0; j < s.NB; j++)
                mean[n_rows][j] += 0.5 * s.block_max[((size_t)r * 2 + h) * s.NB + j];
    float fresh[2][16];
    int fresh_c1 = 0;
    for (int t = 0; t < GEN; t++) {
        ap_sel_step st = step_of(&s, t);
        float sb[2 * 16], ss[2 * 16], sk[2 * 16];
        cr_assert_eq(ps->score(base, &st, sb, NULL), AP_OK);
        cr_assert_eq(ps->score(str, &st, ss, NULL), AP_OK);
        cr_assert_eq(ps->score(kv, &st, sk, NULL), AP_OK);
        if (t % S == 0) {
            for (int h = 0; h < 2; h++) {
                double e = ap_rel_err_f32(ss + h * st.W, sb + h * st.W, st.W);
                cr_assert(e <= AP_TOL_INCR_REL, "t %d head %d: strided vs base rel err %g", t, h, e);
                for (int j = 0; j < st.W; j++) fresh[h][st.c0 + j] = ss[h * st.W + j];
            }
            fresh_c1 = st.c1;
        } else {
            for (int h = 0; h < 2; h++) {
                float top = -INFINITY;
                for (int b = st.c0; b < fresh_c1; b++) top = fresh[h][b] > top ? fresh[h][b] : top;
                for (int j = 0; j < st.W; j++) {
                    const int b = st.c0 + j;
                    cr_assert_eq(ss[h * st.W + j], b < fresh_c1 ? fresh[h][b] : top,
                                 "t %d head %d block %d: not the cached score", t, h, b);
                }
            }
        }
        double y[16];
        ref_scores(keep, mean, n_rows, H, st.c0, st.c1, y);
        float yf[16];
        for (int j = 0; j < st.W; j++) yf[j] = (float)y[j];
        for (int h = 0; h < 2; h++) {
            double e = ap_rel_err_f32(sk + h * st.W, yf, st.W);
            cr_assert(e <= AP_TOL_FORWARD_REL, "t %d head %d: per-KV vs float64 rel err %g", t, h, e);
        }
        int chosen[2] = {1 + t % st.W, 1 + (t * 3 + 1) % st.W};
        if (chosen[1] == chosen[0]) chosen[1] = 1 + (chosen[0] % st.W);
        uint8_t kept[2 * 16];
        double mass[2];
        for (int j = 0; j < s.NB; j++) mean[n_rows][j] = 0.0;
        for (int h = 0; h < 2; h++) {
            kept_of(&s, &st, chosen, 2, kept + h * s.NB, &mass[h], h);
            const float *bm = s.block_max + ((size_t)st.s * 2 + h) * s.NB;
            const int dense = (t + 1) % 3 == 0;
            for (int j = 0; j < s.NB; j++)
                mean[n_rows][j] +=
                    0.5 * (dense ? bm[j] : (kept[h * s.NB + j] ? bm[j] / mass[h] : 0.0));
        }
        n_rows++;
        cr_assert_eq(ps->observe(base, &st, kept, mass, NULL), AP_OK);
        cr_assert_eq(ps->observe(str, &st, kept, mass, NULL), AP_OK);
        cr_assert_eq(ps->observe(kv, &st, kept, mass, NULL), AP_OK);
    }
    ap_sel_cost cb, cs, ck;
    ps->cost(base, &cb);
    ps->cost(str, &cs);
    ps->cost(kv, &ck);
    cr_assert_eq(cs.n, cb.n);
    cr_assert_eq(ck.n, cb.n);
    cr_assert_eq(cs.naive_macs, cb.naive_macs);
    cr_assert_lt(cs.run_macs, 0.6 * cb.run_macs, "stride %d: %g vs %g MACs", S, cs.run_macs,
                 cb.run_macs);
    cr_assert_lt(ck.run_macs, 0.6 * cb.run_macs, "per KV head: %g vs %g MACs", ck.run_macs,
                 cb.run_macs);
    char v[48];
    ap_sel_predictor_variant(4, 1, v, sizeof v);
    cr_assert_str_eq(v, ", stride 4, per KV head");
    ap_sel_predictor_variant(1, 0, v, sizeof v);
    cr_assert_str_eq(v, "");
    ps->destroy(base);
    ps->destroy(str);
    ps->destroy(kv);
    ap_runtime_free(rt);
    ap_predictor_free(keep);
    ap_tiny_seq_free(&s);
}
