/* The replay (eval/replay.h) end to end on hand-built tiny traces
 * (tests/helpers/tiny_trace.h) where each selector's kept set is known
 * exactly: oracle, StreamingLLM, H2O (never brings back an evicted block),
 * SnapKV (fixed after prefill), Quest (hand-set query and bounds), last-step
 * (sparse history, calibration at steps 5 and 10), bypass, budgets above the
 * context, KV modes, dense layers, NaN rows, errors; then thread-count
 * independence, incremental == naive selections and the CLI on synthetic
 * traces with an exported predictor. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/tolerance.h"
#include "common/util.h"
#include "eval/replay.h"
#include "helpers/synth_trace.h"
#include "helpers/tiny_trace.h"
#include "train/predictor.h"
#include "train/runtime.h"

static char dir[1024];

static void mkdir_test(void) {
    char base[600];
    snprintf(base, sizeof base, "%s/test_replay_tmp", AP_BINARY_DIR);
    mkdir(base, 0755);
    snprintf(dir, sizeof dir, "%s/XXXXXX", base);
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static void rm_test(void) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) cr_log_warn("could not remove %s", dir);
}

TestSuite(replay, .init = mkdir_test, .fini = rm_test, .timeout = 240);

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", dir, name); }

/* ------------------------------------------------------------- recorder */

#define MAXK 64
typedef struct {
    int seq, layer, head, t, method, budget, bypass, k, c0, c1;
    int chosen[MAXK];
    float sc[MAXK]; /* scores of the candidates (W <= MAXK) */
    double rec, orac, hit;
} row;

typedef struct {
    pthread_mutex_t mu;
    int n, cap;
    row *rows;
} recorder;

static void rec_init(recorder *r) {
    pthread_mutex_init(&r->mu, NULL);
    r->n = 0;
    r->cap = 1 << 16;
    r->rows = malloc((size_t)r->cap * sizeof(row));
    cr_assert_not_null(r->rows);
}

static void rec_free(recorder *r) {
    free(r->rows);
    pthread_mutex_destroy(&r->mu);
}

static void on_step(void *user, const ap_replay_step_info *in) {
    recorder *r = user;
    pthread_mutex_lock(&r->mu);
    if (r->n < r->cap && in->k <= MAXK) {
        row *w = &r->rows[r->n++];
        *w = (row){in->seq, in->layer, in->head, in->t, in->method, in->budget, in->bypass,
                   in->k, in->c0, in->c1, {0}, {0}, in->recovery, in->oracle, in->hit_rate};
        memcpy(w->chosen, in->chosen, (size_t)in->k * sizeof(int));
        int W = in->c1 - in->c0;
        if (in->scores && W <= MAXK) memcpy(w->sc, in->scores, (size_t)W * sizeof(float));
    }
    pthread_mutex_unlock(&r->mu);
}

static const row *find(const recorder *r, int method, int budget, int t, int head) {
    for (int i = 0; i < r->n; i++) {
        const row *w = &r->rows[i];
        if (w->seq == 0 && w->layer == 0 && w->method == method &&
            w->budget == budget && w->t == t && w->head == head)
            return w;
    }
    cr_assert_fail("no record for method %d budget %d t %d head %d", method, budget, t, head);
    return NULL;
}

static int has(const row *w, int b) {
    for (int i = 0; i < w->k; i++)
        if (w->chosen[i] == b) return 1;
    return 0;
}

/* The chosen set equals {a, b} (k = 2). */
static void expect2(const row *w, int a, int b, const char *what) {
    cr_assert(w->k == 2 && has(w, a) && has(w, b), "%s t %d: chose {%d, %d}, expected {%d, %d}",
              what, w->t, w->chosen[0], w->k > 1 ? w->chosen[1] : -1, a, b);
}

/* ------------------------------------------------------------- fixtures */

/* Block 4, sink 4 (1 block), local 8 (2 blocks), history 8, prompt 40,
 * 12 decode steps: step t has q = 40 + t, candidates [1, ceil(q/4) - 2),
 * local blocks from (q - 7) / 4. Budget 20 = 4 + 8 + 2 blocks: k = 2. */
enum { PROMPT = 40, GEN = 12 };

static void tiny_init(ap_tiny_seq *s, int n_layer, int n_head, int n_head_kv, int prompt,
                      int gen, int query, int colsum) {
    ap_tiny_shape sh = {n_layer, n_head, n_head_kv, 4, 4, 8};
    ap_err e;
    cr_assert_eq(ap_tiny_seq_init(s, &sh, "tiny0", prompt, gen, query, colsum, &e), AP_OK, "%s",
                 e.msg);
}

static void tiny_write(ap_tiny_seq *s, int n, const char *name, char *path, size_t np) {
    for (int i = 0; i < n; i++) ap_tiny_finish(&s[i]);
    path_in(path, np, name);
    ap_err e;
    cr_assert_eq(ap_tiny_write(path, s, n, &e), AP_OK, "%s", e.msg);
}

static void tiny_config(ap_replay_config *c, const char *trace, recorder *r) {
    ap_replay_config_default(c);
    c->traces[0] = trace;
    c->n_traces = 1;
    c->sink_tokens = 4;
    c->local_tokens = 8;
    c->budgets[0] = 20;
    c->n_budgets = 1;
    c->threads = 1;
    c->on_step = r ? on_step : NULL;
    c->on_step_user = r;
}

static ap_replay_result *run_ok(const ap_replay_config *c) {
    ap_replay_result *res = NULL;
    ap_err e;
    ap_err_clear(&e);
    cr_assert_eq(ap_replay_run(c, &res, &e), AP_OK, "%s", e.msg);
    return res;
}

static ap_status run_err(const ap_replay_config *c, ap_err *e) {
    ap_replay_result *res = NULL;
    ap_err_clear(e);
    ap_status st = ap_replay_run(c, &res, e);
    cr_assert_null(res, "no result on failure");
    return st;
}

/* Exported random predictor: block and history as given, small channels. */
static void write_predictor(const char *path, int block, int history, int c1, int c2,
                            uint64_t seed) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    c.block = block;
    c.history = history;
    c.c1 = c1;
    c.c2 = c2;
    ap_predictor *p = NULL;
    ap_err e;
    cr_assert_eq(ap_predictor_create(&c, seed, &p, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_pred_export(path, NULL, &c, ap_predictor_params(p, NULL), &e), AP_OK, "%s",
                 e.msg);
    ap_predictor_free(p);
}

/* ---------------------------------------------------------------- tests */

Test(replay, oracle_takes_the_heaviest_streaming_the_most_recent) {
    ap_tiny_seq s;
    tiny_init(&s, 1, 1, 1, PROMPT, GEN, 0, 0);
    for (int t = 0; t < GEN; t++) {
        ap_tiny_add(&s, 0, s.n_pre + t, 0, 3, 10.0);
        ap_tiny_add(&s, 0, s.n_pre + t, 0, 6, 5.0);
        ap_tiny_add(&s, 0, s.n_pre + t, 0, 1, 2.0);
    }
    char path[1200];
    tiny_write(&s, 1, "a.h5", path, sizeof path);
    recorder rc;
    rec_init(&rc);
    ap_replay_config c;
    tiny_config(&c, path, &rc);
    c.methods[0] = "oracle";
    c.methods[1] = "streaming";
    c.n_methods = 2;
    ap_replay_result *r = run_ok(&c);
    cr_assert_eq(r->n_methods, 2);
    cr_assert_eq(r->methods[0].kind, AP_SEL_BOUND);
    cr_assert_eq(r->methods[1].kind, AP_SEL_EVICTION);
    for (int t = 0; t < GEN; t++) {
        const row *o = find(&rc, 0, 0, t, 0), *st = find(&rc, 1, 0, t, 0);
        int q = PROMPT + t, c1 = (q + 3) / 4 - 2, lb0 = (q + 1 - 8) / 4;
        cr_assert_eq(o->c0, 1);
        cr_assert_eq(o->c1, c1);
        expect2(o, 3, 6, "oracle");
        cr_assert_eq(o->hit, 1.0);
        cr_assert_eq(o->rec, o->orac);
        /* The two blocks just before the local window. */
        int last = c1 < lb0 ? c1 : lb0;
        expect2(st, last - 1, last - 2, "streaming");
        /* Recovery by hand: sink + local + chosen blocks of the true row. */
        const float *row_s = ap_tiny_sum_row(&s, 0, s.n_pre + t, 0);
        double want = 0.0;
        for (int j = 0; j <= q / 4; j++)
            if (j < 1 || j >= lb0 || j == last - 1 || j == last - 2) want += row_s[j];
        cr_assert(fabs(st->rec - want) <= AP_TOL_KERNEL_REL, "t %d: %g vs %g", t, st->rec, want);
        double hit = ((last - 1 == 3 || last - 1 == 6) + (last - 2 == 3 || last - 2 == 6)) / 2.0;
        cr_assert_eq(st->hit, hit, "t %d", t);
    }
    ap_replay_cell *co = ap_replay_cell_at(r, 0, 0), *cs = ap_replay_cell_at(r, 1, 0);
    cr_assert_eq(co->n, GEN);
    cr_assert_eq(co->n_bypass, 0);
    cr_assert_gt(co->recovery.mean, cs->recovery.mean);
    cr_assert_lt(cs->ratio.mean, 1.0);
    cr_assert_eq(co->ratio.mean, 1.0);
    cr_assert_eq(r->n_decode_steps, GEN);
    cr_assert_eq(r->max_context, PROMPT + GEN);
    ap_replay_result_free(r);
    rec_free(&rc);
    ap_tiny_seq_free(&s);
}

Test(replay, h2o_keeps_its_heavy_hitters_and_never_brings_back_a_block) {
    ap_tiny_seq s;
    tiny_init(&s, 1, 1, 1, PROMPT, GEN, 0, 1);
    /* Prefill column sums: block 2 = 40, block 4 = 20, block 8 = 80, others 4. */
    for (int k = 8; k < 12; k++) s.colsum[k] = 10.0f;
    for (int k = 16; k < 20; k++) s.colsum[k] = 5.0f;
    for (int k = 32; k < 36; k++) s.colsum[k] = 20.0f;
    /* Block 6 is by far the heaviest at every decode step. */
    for (int t = 0; t < GEN; t++) ap_tiny_add(&s, 0, s.n_pre + t, 0, 6, 100.0);
    char path[1200];
    tiny_write(&s, 1, "h.h5", path, sizeof path);
    recorder rc;
    rec_init(&rc);
    ap_replay_config c;
    tiny_config(&c, path, &rc);
    c.methods[0] = "h2o";
    c.methods[1] = "oracle";
    c.n_methods = 2;
    ap_replay_result *r = run_ok(&c);
    for (int t = 0; t < GEN; t++) {
        const row *h = find(&rc, 0, 0, t, 0), *o = find(&rc, 1, 0, t, 0);
        cr_assert(has(o, 6), "the oracle takes block 6 at t %d", t);
        cr_assert(!has(h, 6), "h2o evicted block 6 at step 0 and never brings it back (t %d)", t);
        /* Block 8 leaves the local window at t = 3 and outranks block 4. */
        if (t < 3)
            expect2(h, 2, 4, "h2o");
        else
            expect2(h, 2, 8, "h2o");
    }
    ap_replay_result_free(r);
    rec_free(&rc);
    ap_tiny_seq_free(&s);
}

Test(replay, snapkv_is_fixed_after_prefill) {
    ap_tiny_seq s;
    tiny_init(&s, 1, 1, 1, PROMPT, GEN, 0, 0);
    for (int r = 0; r < s.n_pre; r++) {
        ap_tiny_add(&s, 0, r, 0, 3, 30.0);
        ap_tiny_add(&s, 0, r, 0, 5, 20.0);
    }
    for (int t = 0; t < GEN; t++) ap_tiny_add(&s, 0, s.n_pre + t, 0, 6, 100.0);
    char path[1200];
    tiny_write(&s, 1, "s.h5", path, sizeof path);
    recorder rc;
    rec_init(&rc);
    ap_replay_config c;
    tiny_config(&c, path, &rc);
    c.methods[0] = "snapkv";
    c.n_methods = 1;
    ap_replay_result *r = run_ok(&c);
    for (int t = 0; t < GEN; t++) {
        const row *w = find(&rc, 0, 0, t, 0);
        cr_assert(!has(w, 6), "block 6 was not voted for at prefill (t %d)", t);
        /* Blocks leaving the local window (8 at t 3, 9 at t 7, 10 at t 11)
         * displace the lowest-voted prompt block. */
        if (t < 3) expect2(w, 3, 5, "snapkv");
        else if (t < 7) expect2(w, 3, 8, "snapkv");
        else if (t < 11) expect2(w, 8, 9, "snapkv");
        else expect2(w, 9, 10, "snapkv");
    }
    ap_replay_result_free(r);
    rec_free(&rc);
    ap_tiny_seq_free(&s);
}

Test(replay, quest_from_hand_set_query_and_bounds) {
    ap_tiny_seq s;
    tiny_init(&s, 1, 1, 1, PROMPT, GEN, 1, 0);
    const int hd = 4, NB = s.NB;
    for (int j = 0; j < NB; j++) {
        s.key_min[(size_t)j * hd] = -(float)(NB - j);
        s.key_max[(size_t)j * hd] = (float)j;
    }
    /* q = +e0 scores block j by its max bound j (newest first); q = -e0 by
     * -key_min = NB - j (oldest first). */
    for (int t = 0; t < GEN; t++) s.query[(size_t)(s.n_pre + t) * hd] = t % 2 ? 1.0f : -1.0f;
    char path[1200];
    tiny_write(&s, 1, "q.h5", path, sizeof path);
    recorder rc;
    rec_init(&rc);
    ap_replay_config c;
    tiny_config(&c, path, &rc);
    c.methods[0] = "quest";
    c.n_methods = 1;
    ap_replay_result *r = run_ok(&c);
    cr_assert_eq(r->methods[0].kind, AP_SEL_RETRIEVAL);
    for (int t = 0; t < GEN; t++) {
        const row *w = find(&rc, 0, 0, t, 0);
        if (t % 2)
            expect2(w, w->c1 - 1, w->c1 - 2, "quest newest");
        else
            expect2(w, 1, 2, "quest oldest (retrieval brings blocks back)");
    }
    ap_replay_result_free(r);
    rec_free(&rc);
    ap_tiny_seq_free(&s);
}

/* A query-fusion predictor whose CNN is constant (conv3 all zero) ranks by
 * its z-scored query bound alone: it chooses exactly Quest's blocks, is
 * labelled "+ query", and a trace without query vectors is refused. */
Test(replay, query_fusion_with_a_flat_cnn_is_quest) {
    ap_tiny_seq s;
    tiny_init(&s, 1, 1, 1, PROMPT, GEN, 1, 0);
    const int hd = 4, NB = s.NB;
    for (int j = 0; j < NB; j++) {
        s.key_min[(size_t)j * hd] = -(float)(NB - j);
        s.key_max[(size_t)j * hd] = (float)((j * 7) % NB);
        s.key_max[(size_t)j * hd + 1] = (float)((j * 3) % 5);
    }
    for (int t = 0; t < GEN; t++) {
        s.query[(size_t)(s.n_pre + t) * hd] = t % 3 ? 1.0f : -1.0f;
        s.query[(size_t)(s.n_pre + t) * hd + 1] = 0.5f * (float)(t % 4);
    }
    char path[1200], pp[1200];
    tiny_write(&s, 1, "fq.h5", path, sizeof path);
    path_in(pp, sizeof pp, "fq.safetensors");
    ap_pred_config pc;
    ap_pred_config_default(&pc);
    pc.block = 4;
    pc.history = 8;
    pc.c1 = pc.c2 = 4;
    pc.query_fusion = 1;
    ap_predictor *p = NULL;
    ap_err e;
    cr_assert_eq(ap_predictor_create(&pc, 5, &p, &e), AP_OK, "%s", e.msg);
    float *w = ap_predictor_params(p, NULL);
    ap_pred_layout L;
    ap_pred_layout_of(&pc, &L);
    for (size_t i = L.w3; i < L.q; i++) w[i] = 0.0f;
    w[L.q] = 1.0f;
    cr_assert_eq(ap_pred_export(pp, NULL, &pc, w, &e), AP_OK, "%s", e.msg);
    ap_predictor_free(p);
    recorder rc;
    rec_init(&rc);
    ap_replay_config c;
    tiny_config(&c, path, &rc);
    c.predictors[0] = pp;
    c.n_predictors = 1;
    c.methods[0] = "quest";
    c.methods[1] = "attnpred";
    c.n_methods = 2;
    ap_replay_result *r = run_ok(&c);
    cr_assert(strstr(r->methods[1].label, "+ query"), "%s", r->methods[1].label);
    for (int b = 0; b < r->n_budgets; b++)
        cr_assert_eq(ap_replay_cell_at(r, 0, b)->recovery.mean,
                     ap_replay_cell_at(r, 1, b)->recovery.mean, "budget %d", r->budgets[b]);
    /* Alone, without quest in the run to ask for them, the predictor still
     * gets the query vectors it fuses. */
    tiny_config(&c, path, NULL);
    c.predictors[0] = pp;
    c.n_predictors = 1;
    c.methods[0] = "attnpred";
    c.n_methods = 1;
    ap_replay_result *alone = run_ok(&c);
    for (int b = 0; b < r->n_budgets; b++)
        cr_assert_eq(ap_replay_cell_at(r, 0, b)->recovery.mean,
                     ap_replay_cell_at(alone, 0, b)->recovery.mean, "alone, budget %d",
                     r->budgets[b]);
    ap_replay_result_free(alone);
    ap_replay_result_free(r);
    rec_free(&rc);
    ap_tiny_seq_free(&s);
    /* without query vectors */
    tiny_init(&s, 1, 1, 1, PROMPT, GEN, 0, 0);
    tiny_write(&s, 1, "fq0.h5", path, sizeof path);
    tiny_config(&c, path, NULL);
    c.predictors[0] = pp;
    c.n_predictors = 1;
    c.methods[0] = "attnpred";
    c.n_methods = 1;
    cr_assert_neq(run_err(&c, &e), AP_OK);
    cr_assert(strstr(e.msg, "query") && strstr(e.msg, "--no-quest"), "%s", e.msg);
    /* The default method list drops it, with the reason, as it drops quest. */
    c.n_methods = 0;
    r = run_ok(&c);
    for (int m = 0; m < r->n_methods; m++)
        cr_assert(!r->methods[m].is_predictor, "%s kept", r->methods[m].name);
    int dropped = 0;
    for (int i = 0; i < r->n_dropped; i++)
        if (strstr(r->dropped_reason[i], "query-fusion")) dropped = 1;
    cr_assert(dropped, "the fused predictor is not listed as dropped");
    ap_replay_result_free(r);
    ap_tiny_seq_free(&s);
}

/* Prefill's last row favours blocks 2 and 4; decode rows put most mass on
 * block 6 (steps 0-6), then on block 3 (steps 7+). The sparse history only
 * sees what was kept, so block 6 shows up only through the calibration row
 * after step 4 and block 3 through the one after step 9. */
static void last_step_trace(ap_tiny_seq *s) {
    tiny_init(s, 1, 1, 1, PROMPT, GEN, 0, 0);
    ap_tiny_add(s, 0, s->n_pre - 1, 0, 2, 20.0);
    ap_tiny_add(s, 0, s->n_pre - 1, 0, 4, 20.0);
    for (int t = 0; t < GEN; t++) {
        int st = s->n_pre + t;
        ap_tiny_add(s, 0, st, 0, 2, 5.0);
        ap_tiny_add(s, 0, st, 0, 4, 3.0);
        ap_tiny_add(s, 0, st, 0, 6, t < 7 ? 40.0 : 2.0);
        if (t >= 7) ap_tiny_add(s, 0, st, 0, 3, 60.0);
    }
}

Test(replay, last_step_sparse_history_calibrated_at_steps_5_and_10) {
    ap_tiny_seq s;
    last_step_trace(&s);
    char path[1200];
    tiny_write(&s, 1, "l.h5", path, sizeof path);
    for (int calib = 0; calib <= 5; calib += 5) {
        recorder rc;
        rec_init(&rc);
        ap_replay_config c;
        tiny_config(&c, path, &rc);
        c.methods[0] = "last_step";
        c.methods[1] = "last_step_dense";
        c.n_methods = 2;
        c.calib = calib;
        ap_replay_result *r = run_ok(&c);
        for (int t = 0; t < GEN; t++) {
            const row *w = find(&rc, 0, 0, t, 0), *d = find(&rc, 1, 0, t, 0);
            if (calib == 0 || t < 5)
                expect2(w, 2, 4, calib ? "last_step before calibration" : "last_step, calib 0");
            else if (t < 10)
                expect2(w, 2, 6, "last_step after the calibration row of step 4");
            else
                expect2(w, 2, 3, "last_step after the calibration row of step 9");
            /* The dense variant sees the previous dense row at once. */
            if (t == 0) expect2(d, 2, 4, "last_step_dense from the last prefill row");
            else if (t <= 7) expect2(d, 2, 6, "last_step_dense");
            else expect2(d, 2, 3, "last_step_dense");
        }
        ap_replay_result_free(r);
        rec_free(&rc);
    }
    ap_tiny_seq_free(&s);
}

Test(replay, bypass_with_fewer_than_three_candidates) {
    ap_tiny_seq s;
    /* Prompt 20: q 20 has candidates [1, 3) (2 < 3: bypass), q 21 [1, 4). */
    tiny_init(&s, 1, 2, 1, 20, 4, 1, 1);
    char path[1200], pp[1200];
    tiny_write(&s, 1, "b.h5", path, sizeof path);
    path_in(pp, sizeof pp, "p.safetensors");
    write_predictor(pp, 4, 8, 4, 4, 3);
    recorder rc;
    rec_init(&rc);
    ap_replay_config c;
    tiny_config(&c, path, &rc);
    c.predictors[0] = pp;
    c.n_predictors = 1;
    ap_replay_result *r = run_ok(&c);
    cr_assert_eq(r->n_methods, 9, "7 builtins + attnpred + attnpred_nocal");
    cr_assert_eq(r->n_dropped, 0);
    for (int m = 0; m < r->n_methods; m++) {
        ap_replay_cell *cell = ap_replay_cell_at(r, m, 0);
        cr_assert_eq(cell->n, 4 * 2, "%s", r->methods[m].name);
        cr_assert_eq(cell->n_bypass, 2, "%s: step 0 of both heads", r->methods[m].name);
        for (int h = 0; h < 2; h++) {
            const row *w = find(&rc, m, 0, 0, h);
            cr_assert(w->bypass && w->k == 2, "%s", r->methods[m].name);
            cr_assert(fabs(w->rec - 1.0) <= AP_TOL_KERNEL_REL, "%s: bypass keeps all: %g",
                      r->methods[m].name, w->rec);
            cr_assert(!find(&rc, m, 0, 1, h)->bypass);
        }
    }
    ap_replay_result_free(r);
    rec_free(&rc);
    ap_tiny_seq_free(&s);
}

/* Random rows (a few heavy blocks per step) over 2 layers x 4 heads, 2 KV heads. */
static void random_trace(ap_tiny_seq *s, int query, int colsum, uint64_t seed) {
    tiny_init(s, 2, 4, 2, PROMPT, GEN, query, colsum);
    uint64_t x = seed;
    for (int l = 0; l < 2; l++)
        for (int st = 0; st < s->S; st++)
            for (int h = 0; h < 4; h++)
                for (int i = 0; i < 3; i++) {
                    x = x * 6364136223846793005ull + 1442695040888963407ull;
                    int b = (int)((x >> 33) % 11);
                    ap_tiny_add(s, l, st, h, b, (double)((x >> 20) % 64));
                }
    if (query) {
        size_t nq = (size_t)2 * s->S * 4 * 4, nk = (size_t)2 * 2 * s->NB * 4;
        for (size_t i = 0; i < nq; i++) s->query[i] = (float)((int)(i * 37 % 11) - 5);
        for (size_t i = 0; i < nk; i++) {
            s->key_min[i] = (float)((int)(i * 13 % 7) - 6);
            s->key_max[i] = s->key_min[i] + (float)(i * 29 % 5);
        }
    }
    if (colsum)
        for (int i = 0; i < 2 * 4 * PROMPT; i++) s->colsum[i] = (float)(1 + i * 17 % 9);
}

typedef struct {
    long long n_calls, done, total;
    double work, work_total;
    int monotone;
} progress_rec;

static void on_progress_rec(void *user, long long done, long long total, double work,
                            double work_total) {
    progress_rec *p = user;
    p->monotone &= done >= p->done && work >= p->work;
    p->n_calls++;
    p->done = done;
    p->total = total;
    p->work = work;
    p->work_total = work_total;
}

/* The progress callback reports steps and their work, each step weighing
 * its context (later steps and longer sequences cost more, and the ETA
 * divides by the rate of work): both reach their totals, and the work total
 * is the cost model's, a step at position p costing p decode units. */
Test(replay, progress_weighs_steps_by_context) {
    ap_tiny_seq s;
    random_trace(&s, 0, 0, 7);
    char path[1200];
    tiny_write(&s, 1, "prog.h5", path, sizeof path);
    ap_replay_config c;
    tiny_config(&c, path, NULL);
    c.on_step = NULL;
    c.threads = 2;
    progress_rec pr = {.monotone = 1};
    c.progress = on_progress_rec;
    c.progress_user = &pr;
    ap_replay_result *r = run_ok(&c);
    cr_assert_gt(pr.n_calls, 0);
    cr_assert(pr.monotone, "progress went backwards");
    cr_assert_eq(pr.total, (long long)r->n_layer * r->n_decode_steps);
    cr_assert_eq(pr.done, pr.total);
    cr_assert_eq(pr.work, pr.work_total);
    /* mean_context counts the query's own key: position + 1. */
    double expect =
        AP_WORK_DECODE_FACTOR * r->n_layer * (double)r->n_decode_steps * (r->mean_context - 1.0);
    cr_assert(fabs(pr.work_total - expect) <= 1e-9 * expect, "work %.17g, expected %.17g",
              pr.work_total, expect);
    ap_replay_result_free(r);
    ap_tiny_seq_free(&s);
}

Test(replay, budget_above_the_context_recovers_everything) {
    ap_tiny_seq s;
    random_trace(&s, 1, 1, 5);
    char path[1200], pp[1200];
    tiny_write(&s, 1, "f.h5", path, sizeof path);
    path_in(pp, sizeof pp, "p.safetensors");
    write_predictor(pp, 4, 8, 4, 4, 9);
    for (int mode = 0; mode < 3; mode++) {
        ap_replay_config c;
        tiny_config(&c, path, NULL);
        c.on_step = NULL;
        c.predictors[0] = pp;
        c.n_predictors = 1;
        c.budgets[0] = 4096;
        c.budgets[1] = 20;
        c.n_budgets = 2;
        c.kv_mode = (ap_kv_mode)mode;
        c.threads = 2;
        ap_replay_result *r = run_ok(&c);
        cr_assert_eq(r->n_methods, 9);
        for (int m = 0; m < r->n_methods; m++) {
            ap_replay_cell *cell = ap_replay_cell_at(r, m, 0);
            cr_assert_eq(cell->n, 2 * 4 * GEN);
            cr_assert(fabs(cell->recovery.mean - 1.0) <= AP_TOL_KERNEL_REL, "%s: %.9f",
                      r->methods[m].name, cell->recovery.mean);
            cr_assert_eq(cell->hit_rate.mean, 1.0, "%s", r->methods[m].name);
            ap_replay_cell *small = ap_replay_cell_at(r, m, 1);
            cr_assert_lt(small->recovery.mean, cell->recovery.mean, "%s", r->methods[m].name);
            cr_assert_leq(small->ratio.mean, 1.0 + AP_TOL_KERNEL_REL, "%s", r->methods[m].name);
            for (int i = 0; i < r->n_layer * r->n_head; i++)
                cr_assert(isfinite(cell->layer_head_recovery[i]));
        }
        ap_replay_result_free(r);
    }
    ap_tiny_seq_free(&s);
}

/* Every eviction method: a block dropped at some step is never chosen again;
 * every method: chosen blocks are distinct candidates; KV modes: one set per
 * KV group. */
Test(replay, eviction_never_returns_and_kv_groups_share_one_set) {
    ap_tiny_seq s;
    random_trace(&s, 1, 1, 77);
    char path[1200];
    tiny_write(&s, 1, "e.h5", path, sizeof path);
    for (int mode = 0; mode < 3; mode++) {
        recorder rc;
        rec_init(&rc);
        ap_replay_config c;
        tiny_config(&c, path, &rc);
        c.budgets[1] = 24;
        c.n_budgets = 2;
        c.kv_mode = (ap_kv_mode)mode;
        ap_replay_result *r = run_ok(&c);
        cr_assert_eq(r->n_methods, 7);
        /* threads = 1: records come in step order per (layer, method, budget). */
        for (int m = 0; m < r->n_methods; m++)
            for (int b = 0; b < 2; b++)
                for (int l = 0; l < 2; l++)
                    for (int h = 0; h < 4; h++) {
                        uint8_t gone[32] = {0};
                        for (int i = 0; i < rc.n; i++) {
                            const row *w = &rc.rows[i];
                            if (w->method != m || w->budget != b || w->layer != l || w->head != h)
                                continue;
                            uint8_t in[32] = {0};
                            for (int j = 0; j < w->k; j++) {
                                int blk = w->chosen[j];
                                cr_assert(blk >= w->c0 && blk < w->c1 && !in[blk], "%s",
                                          r->methods[m].name);
                                in[blk] = 1;
                                if (r->methods[m].kind == AP_SEL_EVICTION)
                                    cr_assert(!gone[blk], "%s brought back block %d at t %d",
                                              r->methods[m].name, blk, w->t);
                            }
                            int lb0 = (PROMPT + w->t + 1 - 8) / 4, lim = w->c1 < lb0 ? w->c1 : lb0;
                            for (int j = w->c0; j < lim; j++)
                                if (!in[j]) gone[j] = 1;
                            cr_assert_leq(w->rec, w->orac + AP_TOL_KERNEL_REL);
                            if (mode != AP_KV_PER_QHEAD && h % 2 == 1) {
                                /* Same set as the group's other head (record i-1). */
                                const row *p = &rc.rows[i - 1];
                                cr_assert(p->head == h - 1 && p->t == w->t && p->k == w->k);
                                for (int j = 0; j < w->k; j++)
                                    cr_assert_eq(p->chosen[j], w->chosen[j], "mode %d %s", mode,
                                                 r->methods[m].name);
                            }
                        }
                    }
        ap_replay_result_free(r);
        rec_free(&rc);
    }
    ap_tiny_seq_free(&s);
}

Test(replay, kv_modes_sum_and_union_by_hand) {
    ap_tiny_seq s;
    tiny_init(&s, 1, 4, 2, PROMPT, 1, 0, 1);
    int st = s.n_pre;
    /* Group 0: head 0 wants {2, 3}, head 1 wants {5, 3}; summed, 3 and 5 lead. */
    ap_tiny_add(&s, 0, st, 0, 2, 10.0);
    ap_tiny_add(&s, 0, st, 0, 3, 8.0);
    ap_tiny_add(&s, 0, st, 1, 5, 12.0);
    ap_tiny_add(&s, 0, st, 1, 3, 6.0);
    /* H2O per KV head: the group's prefill sums add (head 0: block 2 = 40,
     * head 1: block 6 = 48, everything else 4 + 4). */
    for (int k = 8; k < 12; k++) s.colsum[0 * PROMPT + k] = 10.0f;
    for (int k = 24; k < 28; k++) s.colsum[1 * PROMPT + k] = 12.0f;
    char path[1200];
    tiny_write(&s, 1, "k.h5", path, sizeof path);
    const int want[3][2][2] = {{{2, 3}, {5, 3}}, {{3, 5}, {3, 5}}, {{2, 5}, {2, 5}}};
    const double hits[3][2] = {{1, 1}, {0.5, 1}, {0.5, 0.5}};
    for (int mode = 0; mode < 3; mode++) {
        recorder rc;
        rec_init(&rc);
        ap_replay_config c;
        tiny_config(&c, path, &rc);
        c.methods[0] = "oracle";
        c.methods[1] = "h2o";
        c.n_methods = 2;
        c.kv_mode = (ap_kv_mode)mode;
        ap_replay_result *r = run_ok(&c);
        for (int h = 0; h < 2; h++) {
            const row *w = find(&rc, 0, 0, 0, h);
            expect2(w, want[mode][h][0], want[mode][h][1], "oracle in a kv mode");
            cr_assert_eq(w->hit, hits[mode][h], "mode %d head %d: hit vs its own oracle", mode, h);
            const float *rs = ap_tiny_sum_row(&s, 0, st, h);
            double fixed = 0.0;
            for (int j = 0; j <= PROMPT / 4; j++)
                if (j < 1 || j >= 8) fixed += rs[j];
            double rec = fixed + rs[want[mode][h][0]] + rs[want[mode][h][1]];
            cr_assert(fabs(w->rec - rec) <= AP_TOL_KERNEL_REL, "recovery per query head");
        }
        if (mode != AP_KV_PER_QHEAD)
            for (int h = 0; h < 2; h++) expect2(find(&rc, 1, 0, 0, h), 6, 2, "h2o per KV head");
        else
            cr_assert(has(find(&rc, 1, 0, 0, 0), 2) && !has(find(&rc, 1, 0, 0, 0), 6));
        ap_replay_result_free(r);
        rec_free(&rc);
    }
    ap_tiny_seq_free(&s);
}

Test(replay, dense_layers_and_nonfinite_rows_are_left_out) {
    ap_tiny_seq s;
    random_trace(&s, 0, 0, 3);
    char path[1200];
    tiny_write(&s, 1, "n.h5", path, sizeof path);
    /* Break one decode row of layer 1 inside the file (the writer refuses NaN). */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    hid_t d = H5Dopen2(f, "/sequences/tiny0/layers/1/block_sum", H5P_DEFAULT);
    cr_assert_geq(d, 0);
    size_t n = (size_t)s.S * 4 * s.NB;
    float *v = malloc(n * sizeof(float));
    cr_assert_geq(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v), 0);
    v[((size_t)(s.n_pre + 2) * 4 + 1) * s.NB + 3] = NAN; /* decode step 2, head 1 */
    cr_assert_geq(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v), 0);
    free(v);
    H5Dclose(d);
    H5Fclose(f);
    recorder rc;
    rec_init(&rc);
    ap_replay_config c;
    tiny_config(&c, path, &rc);
    ap_replay_result *r = run_ok(&c);
    cr_assert_eq(r->n_skipped_nonfinite, 1);
    cr_assert_eq(r->n_dropped, 3, "quest and h2o lack inputs, no predictor");
    for (int m = 0; m < r->n_methods; m++)
        cr_assert_eq(ap_replay_cell_at(r, m, 0)->n, 2 * 4 * GEN - 1, "%s", r->methods[m].name);
    for (int i = 0; i < rc.n; i++)
        cr_assert(!(rc.rows[i].layer == 1 && rc.rows[i].head == 1 && rc.rows[i].t == 2));
    ap_replay_result_free(r);
    rec_free(&rc);

    c.n_dense_layers = 1;
    c.dense_layers[0] = 0;
    rec_init(&rc);
    c.on_step_user = &rc;
    r = run_ok(&c);
    for (int m = 0; m < r->n_methods; m++) {
        ap_replay_cell *cell = ap_replay_cell_at(r, m, 0);
        cr_assert_eq(cell->n, 4 * GEN - 1, "layer 0 is dense: not counted");
        for (int h = 0; h < 4; h++) {
            cr_assert(isnan(cell->layer_head_recovery[h]), "layer 0 head %d", h);
            cr_assert(isfinite(cell->layer_head_recovery[4 + h]));
        }
    }
    for (int i = 0; i < rc.n; i++) cr_assert_eq(rc.rows[i].layer, 1);
    ap_replay_result_free(r);
    rec_free(&rc);
    ap_tiny_seq_free(&s);
}

Test(replay, errors_name_the_file_and_the_capture_option) {
    ap_tiny_seq s;
    tiny_init(&s, 1, 1, 1, PROMPT, 4, 0, 0);
    char path[1200], pp[1200], p16[1200];
    tiny_write(&s, 1, "x.h5", path, sizeof path);
    path_in(pp, sizeof pp, "p4.safetensors");
    path_in(p16, sizeof p16, "p16.safetensors");
    write_predictor(pp, 4, 8, 4, 4, 1);
    write_predictor(p16, 16, 8, 4, 4, 1);
    ap_replay_config c;
    ap_err e;
    tiny_config(&c, path, NULL);
    c.on_step = NULL;
    c.methods[0] = "quest";
    c.n_methods = 1;
    cr_assert_eq(run_err(&c, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "--no-quest") && strstr(e.msg, path), "%s", e.msg);
    c.methods[0] = "h2o";
    cr_assert_eq(run_err(&c, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "--no-colsum") && strstr(e.msg, path), "%s", e.msg);
    c.methods[0] = "attnpred";
    cr_assert_eq(run_err(&c, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "--predictor") != NULL, "%s", e.msg);
    c.methods[0] = "bogus";
    cr_assert_eq(run_err(&c, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "bogus") && strstr(e.msg, "snapkv"), "%s", e.msg);
    c.n_methods = 0;
    c.predictors[0] = p16;
    c.n_predictors = 1;
    cr_assert_eq(run_err(&c, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, p16) && strstr(e.msg, "block size"), "%s", e.msg);
    c.predictors[0] = pp;
    c.predictor_names[0] = "oracle";
    cr_assert_eq(run_err(&c, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "built-in") && strstr(e.msg, "oracle"), "%s", e.msg);
    /* More rows than the trace recorded (history 8): refused, naming both. */
    char p_h16[1200];
    path_in(p_h16, sizeof p_h16, "p4h16.safetensors");
    write_predictor(p_h16, 4, 16, 4, 4, 1);
    c.predictors[0] = p_h16;
    c.predictor_names[0] = NULL;
    cr_assert_eq(run_err(&c, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, p_h16) && strstr(e.msg, "history 16") && strstr(e.msg, "history 8"),
              "%s", e.msg);
    /* Names: checked before any file is opened. */
    const char *bad_names[][2] = {{"a", "a"}, {"a b", NULL}, {"x_nocal", NULL}, {"", NULL},
                                  {"full", NULL}};
    const char *name_err[] = {"given twice", "letters", "_nocal", "empty", "built-in"};
    for (int i = 0; i < 5; i++) {
        c.predictors[0] = c.predictors[1] = pp;
        c.predictor_names[0] = bad_names[i][0];
        c.predictor_names[1] = bad_names[i][1];
        c.n_predictors = bad_names[i][1] ? 2 : 1;
        cr_assert_eq(run_err(&c, &e), AP_ERR_ARG, "%s", bad_names[i][0]);
        cr_assert(strstr(e.msg, name_err[i]) != NULL, "%s: %s", bad_names[i][0], e.msg);
    }
    /* The second bare path defaults to attnpred2: "attnpred2" given first clashes. */
    c.predictor_names[0] = "attnpred2";
    c.predictor_names[1] = NULL;
    c.n_predictors = 2;
    cr_assert_eq(run_err(&c, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "'attnpred2' given twice") != NULL, "%s", e.msg);
    c.n_predictors = AP_REPLAY_MAX_PREDICTORS + 1;
    cr_assert_eq(run_err(&c, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "at most") != NULL, "%s", e.msg);
    c.n_predictors = 1;
    c.predictor_names[0] = "mine";
    c.methods[0] = "mine_nocal";
    c.n_methods = 1;
    ap_replay_result *r = run_ok(&c);
    cr_assert_eq(r->n_methods, 1);
    cr_assert_str_eq(r->methods[0].name, "mine_nocal");
    cr_assert(r->methods[0].is_predictor);
    cr_assert_str_eq(r->methods[0].source, pp);
    cr_assert(isfinite(r->pred_us_per_step_head[0]) && r->pred_naive_macs[0] > 0);
    ap_replay_result_free(r);
    c.n_methods = 0;
    c.n_predictors = 0;
    c.sink_tokens = 6;
    cr_assert_eq(run_err(&c, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "--sink") != NULL, "%s", e.msg);
    c.sink_tokens = 4;
    /* A budget at sink + local (4 + 8) leaves no block to choose: every
     * method would tie, so it is refused, naming the value and the bound. */
    c.budgets[0] = 12;
    cr_assert_eq(run_err(&c, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "--budget 12 is not above sink + local = 12 tokens") != NULL, "%s",
              e.msg);
    c.budgets[0] = 20;
    c.dense_layers[0] = 3;
    c.n_dense_layers = 1;
    cr_assert_eq(run_err(&c, &e), AP_ERR_ARG);
    c.n_dense_layers = 0;
    char missing[1200];
    path_in(missing, sizeof missing, "missing.h5");
    c.traces[0] = missing;
    cr_assert_neq(run_err(&c, &e), AP_OK);
    cr_assert(strstr(e.msg, missing) != NULL, "%s", e.msg);
    c.traces[0] = path;
    r = run_ok(&c);
    cr_assert_eq(r->n_dropped, 3);
    int seen = 0;
    for (int i = 0; i < r->n_dropped; i++) {
        const char *why = r->dropped_reason[i];
        if (!strcmp(r->dropped[i], "quest")) {
            seen |= 1;
            cr_assert(strstr(why, "--no-quest") && strstr(why, path), "%s", why);
        } else if (!strcmp(r->dropped[i], "h2o")) {
            seen |= 2;
            cr_assert(strstr(why, "--no-colsum") != NULL, "%s", why);
        } else if (!strcmp(r->dropped[i], "attnpred")) {
            seen |= 4;
        }
    }
    cr_assert_eq(seen, 7);
    ap_replay_result_free(r);
    ap_tiny_seq_free(&s);
}

/* The same file under two names: two predictors, each its own pair of
 * methods, with identical numbers; "attnpred" selects both, a name one. */
Test(replay, two_predictors_are_two_methods_with_the_same_numbers) {
    ap_tiny_seq s;
    random_trace(&s, 0, 0, 11);
    char path[1200], pp[1200];
    tiny_write(&s, 1, "two.h5", path, sizeof path);
    path_in(pp, sizeof pp, "two.safetensors");
    write_predictor(pp, 4, 8, 4, 4, 13);
    ap_replay_config c;
    tiny_config(&c, path, NULL);
    c.on_step = NULL;
    c.threads = 2;
    c.predictors[0] = c.predictors[1] = pp;
    c.predictor_names[0] = "a.v1";
    c.predictor_names[1] = NULL; /* attnpred2 */
    c.n_predictors = 2;
    c.methods[0] = "attnpred";
    c.methods[1] = "attnpred_nocal";
    c.n_methods = 2;
    ap_replay_result *r = run_ok(&c);
    cr_assert_eq(r->n_methods, 4);
    const char *want[] = {"a.v1", "attnpred2", "a.v1_nocal", "attnpred2_nocal"};
    for (int m = 0; m < 4; m++) {
        cr_assert_str_eq(r->methods[m].name, want[m]);
        cr_assert(r->methods[m].is_predictor);
    }
    cr_assert_str_eq(r->predictor_names[1], "attnpred2");
    for (int pair = 0; pair < 2; pair++) {
        const ap_replay_cell *x = ap_replay_cell_at(r, 2 * pair, 0);
        const ap_replay_cell *y = ap_replay_cell_at(r, 2 * pair + 1, 0);
        cr_assert_gt(x->n, 0);
        cr_assert_eq(x->n, y->n);
        cr_assert_eq(x->recovery.mean, y->recovery.mean, "%s", want[2 * pair]);
        cr_assert_eq(x->recovery.m2, y->recovery.m2);
        cr_assert_eq(x->hit_rate.mean, y->hit_rate.mean);
        cr_assert_eq(x->ratio.mean, y->ratio.mean);
        for (int i = 0; i < r->n_layer * r->n_head; i++)
            cr_assert(x->layer_head_recovery[i] == y->layer_head_recovery[i] ||
                      (isnan(x->layer_head_recovery[i]) && isnan(y->layer_head_recovery[i])));
    }
    ap_replay_result_free(r);
    c.methods[0] = "attnpred2_nocal";
    c.n_methods = 1;
    r = run_ok(&c);
    cr_assert_eq(r->n_methods, 1);
    cr_assert_str_eq(r->methods[0].name, "attnpred2_nocal");
    ap_replay_result_free(r);
    ap_tiny_seq_free(&s);
}

/* ------------------------------------------------- synthetic traces */

static void synth_files(char *trace, size_t nt, char *pred, size_t np) {
    ap_synth_trace_opts o;
    ap_synth_trace_opts_default(&o);
    o.n_seq = 3;
    o.n_gen = 24;
    o.min_prompt = 200;
    o.max_prompt = 420;
    path_in(trace, nt, "syn.h5");
    ap_err e;
    cr_assert_eq(ap_synth_trace_write(trace, &o, &e), AP_OK, "%s", e.msg);
    path_in(pred, np, "syn.safetensors");
    write_predictor(pred, 16, 16, 8, 8, 21);
}

static void synth_config(ap_replay_config *c, const char *trace, const char *pred) {
    ap_replay_config_default(c);
    c->traces[0] = trace;
    c->n_traces = 1;
    c->predictors[0] = pred;
    c->n_predictors = 1;
    c->budgets[0] = 192;
    c->budgets[1] = 256;
    c->n_budgets = 2;
}

static void same_meanci(const ap_meanci *a, const ap_meanci *b, const char *what) {
    cr_assert(a->n == b->n && a->mean == b->mean && a->m2 == b->m2, "%s differs: %.17g vs %.17g",
              what, a->mean, b->mean);
}

Test(replay, thread_count_does_not_change_the_result) {
    char trace[1200], pred[1200];
    synth_files(trace, sizeof trace, pred, sizeof pred);
    ap_replay_config c;
    synth_config(&c, trace, pred);
    c.threads = 1;
    ap_replay_result *a = run_ok(&c);
    c.threads = 3;
    ap_replay_result *b = run_ok(&c);
    cr_assert_eq(a->n_methods, b->n_methods);
    cr_assert_eq(a->n_methods, 7, "5 builtins (no query, no colsum) + 2 predictor methods");
    for (int m = 0; m < a->n_methods; m++)
        for (int k = 0; k < 2; k++) {
            ap_replay_cell *x = ap_replay_cell_at(a, m, k), *y = ap_replay_cell_at(b, m, k);
            same_meanci(&x->recovery, &y->recovery, "recovery");
            same_meanci(&x->hit_rate, &y->hit_rate, "hit rate");
            same_meanci(&x->ratio, &y->ratio, "ratio");
            cr_assert_eq(x->n, y->n);
            cr_assert_eq(x->n, 3 * 24 * 2 * 3);
            for (int i = 0; i < a->n_layer * a->n_head; i++)
                cr_assert_eq(x->layer_head_recovery[i], y->layer_head_recovery[i]);
        }
    char ja[1200], jb[1200];
    path_in(ja, sizeof ja, "a.json");
    path_in(jb, sizeof jb, "b.json");
    ap_err e;
    if (ap_replay_write_json(a, ja, &e) == AP_OK && ap_replay_write_json(b, jb, &e) == AP_OK) {
        /* Every aggregate is equal; only measured times may differ. */
        char *ta = NULL, *tb = NULL;
        size_t la, lb;
        cr_assert_eq(ap_read_file(ja, &ta, &la, &e), AP_OK);
        cr_assert_eq(ap_read_file(jb, &tb, &lb, &e), AP_OK);
        cJSON *x = cJSON_Parse(ta), *y = cJSON_Parse(tb);
        cr_assert(x && y);
        const char *keys[] = {"results", "summary"};
        for (int i = 0; i < 2; i++)
            cr_assert(cJSON_Compare(cJSON_GetObjectItem(x, keys[i]), cJSON_GetObjectItem(y, keys[i]), 1),
                      "JSON %s differs between 1 and 3 threads", keys[i]);
        cJSON_Delete(x);
        cJSON_Delete(y);
        free(ta);
        free(tb);
    }
    ap_replay_result_free(a);
    ap_replay_result_free(b);
}

Test(replay, incremental_predictor_selects_what_full_recomputation_selects) {
    char trace[1200], pred[1200];
    synth_files(trace, sizeof trace, pred, sizeof pred);
    recorder ra, rb;
    rec_init(&ra);
    rec_init(&rb);
    ap_replay_config c;
    synth_config(&c, trace, pred);
    c.methods[0] = "attnpred";
    c.methods[1] = "attnpred_nocal";
    c.n_methods = 2;
    c.threads = 1;
    c.on_step = on_step;
    c.incremental = 0;
    c.on_step_user = &ra;
    ap_replay_result *a = run_ok(&c);
    c.incremental = 1;
    c.on_step_user = &rb;
    ap_replay_result *b = run_ok(&c);
    cr_assert_eq(b->incremental, 1);
    cr_assert_eq(ra.n, rb.n);
    cr_assert_gt(ra.n, 1000);
    /* Per (sequence, layer, method, budget, head) stream: equal choices until
     * the scores tie within AP_TOL_REPLAY_TIE_REL (float rounding may then
     * break the tie the other way, and the histories part). */
    uint8_t parted[3 * 2 * 2 * 2 * 3] = {0};
    int same = 0, tied = 0;
    for (int i = 0; i < ra.n; i++) {
        const row *x = &ra.rows[i], *y = &rb.rows[i];
        cr_assert(x->t == y->t && x->head == y->head && x->k == y->k && x->c1 == y->c1);
        int key = (((x->seq * 2 + x->layer) * 2 + x->method) * 2 + x->budget) * 3 + x->head;
        if (parted[key]) continue;
        int W = x->c1 - x->c0, differ = 0;
        for (int j = 0; j < x->k; j++) differ |= !has(y, x->chosen[j]);
        if (!differ) {
            float e = (float)ap_rel_err_f32(y->sc, x->sc, W);
            cr_assert(x->bypass || e <= AP_TOL_INCR_REL, "record %d: scores rel err %g", i, e);
            same++;
            continue;
        }
        /* The k-th score separates kept from dropped; every block chosen by
         * one side only must sit at it. */
        double kth = x->sc[x->chosen[x->k - 1] - x->c0], scale = 0.0;
        for (int j = 0; j < W; j++) scale = fmax(scale, fabs(x->sc[j]));
        for (int j = 0; j < x->k; j++) {
            int bx = x->chosen[j], by = y->chosen[j];
            if (!has(y, bx))
                cr_assert(fabs(x->sc[bx - x->c0] - kth) <= AP_TOL_REPLAY_TIE_REL * scale,
                          "record %d (t %d head %d): block %d is no tie", i, x->t, x->head, bx);
            if (!has(x, by))
                cr_assert(fabs(x->sc[by - x->c0] - kth) <= AP_TOL_REPLAY_TIE_REL * scale,
                          "record %d (t %d head %d): block %d is no tie", i, x->t, x->head, by);
        }
        parted[key] = 1;
        tied++;
    }
    cr_log_info("incremental vs naive: %d of %d records equal, %d streams parted at a tie", same, ra.n, tied);
    cr_assert_gt(same, ra.n * 9 / 10, "%d of %d records equal, %d streams parted at a tie", same,
                 ra.n, tied);
    for (int m = 0; m < 2; m++) {
        cr_assert_eq(a->pred_naive_macs[m], b->pred_naive_macs[m]);
        cr_assert_lt(b->pred_run_macs[m], a->pred_run_macs[m], "incremental spends less");
    }
    ap_replay_result_free(a);
    ap_replay_result_free(b);
    rec_free(&ra);
    rec_free(&rb);
}

/* ------------------------------------------------------------------ CLI */

static const char *cli(void) {
    const char *c = getenv("AP_CLI");
    if (!c || !*c || access(c, X_OK) != 0) cr_skip_test("AP_CLI is not set (run through ctest)");
    return c;
}

static int run_cmd(const char *cmd, char *out, size_t n) {
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p, "popen %s", cmd);
    size_t got = fread(out, 1, n - 1, p);
    out[got] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(replay, cli_end_to_end_on_a_synthetic_trace) {
    const char *ap = cli();
    char trace[1200], pred[1200], json[1200], md[1200], cmd[8192];
    static char out[1 << 16];
    synth_files(trace, sizeof trace, pred, sizeof pred);
    path_in(json, sizeof json, "r.json");
    path_in(md, sizeof md, "r.md");
    snprintf(cmd, sizeof cmd,
             "'%s' eval replay --traces '%s' --predictor 'mine=%s' --budget 192,256 --max-seqs 2 "
             "--max-steps 8 --json '%s' --md '%s' 2>&1",
             ap, trace, pred, json, md);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "mine_nocal") && strstr(out, "eviction") && strstr(out, "retrieval"),
              "%s", out);
    cr_assert(strstr(out, "quest not run") != NULL, "the note names dropped methods: %s", out);
    char *text = NULL;
    size_t len = 0;
    ap_err e;
    cr_assert_eq(ap_read_file(json, &text, &len, &e), AP_OK, "%s", e.msg);
    cJSON *j = cJSON_Parse(text);
    cr_assert_not_null(j, "JSON: %s", text);
    cJSON *res = cJSON_GetObjectItem(j, "results");
    cr_assert_eq(cJSON_GetArraySize(res), 7 * 2);
    cJSON *it = NULL;
    cJSON_ArrayForEach(it, res) {
        cr_assert(cJSON_IsString(cJSON_GetObjectItem(it, "method")));
        int budget = cJSON_GetObjectItem(it, "budget")->valueint;
        cr_assert(budget == 192 || budget == 256);
        double rec = cJSON_GetObjectItem(it, "recovery")->valuedouble;
        cr_assert(rec > 0 && rec <= 1.0 + AP_TOL_KERNEL_REL);
        cr_assert_eq((long)cJSON_GetObjectItem(it, "n")->valuedouble, 2 * 8 * 2 * 3);
        cr_assert(cJSON_GetObjectItem(it, "hit_rate") != NULL);
    }
    cJSON_Delete(j);
    free(text);
    cr_assert(ap_file_exists(md));

    /* Errors: one message naming the problem, non-zero exit, nothing written. */
    remove(json);
    snprintf(cmd, sizeof cmd,
             "'%s' eval replay --traces '%s' --methods quest --json '%s' --quiet 2>&1", ap, trace,
             json);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "--no-quest") && strstr(out, trace), "%s", out);
    cr_assert(!ap_file_exists(json));
    snprintf(cmd, sizeof cmd, "'%s' eval replay --traces '%s/none.h5' --json '%s' 2>&1", ap, dir,
             json);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "none.h5") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "'%s' eval replay --traces '%s' --kv-mode bad --json '%s' 2>&1", ap,
             trace, json);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 2, "%s", out);
    cr_assert(strstr(out, "--kv-mode") != NULL, "%s", out);
    cr_assert(!ap_file_exists(json));
}

Test(replay, real_trace_slice) {
    const char *ap = cli();
    char trace[1200], pred[1200], json[1200], cmd[8192];
    static char out[1 << 16];
    snprintf(trace, sizeof trace, "%s/traces/quick.h5", AP_SOURCE_DIR);
    snprintf(pred, sizeof pred, "%s/runs/quick/predictor.safetensors", AP_SOURCE_DIR);
    if (!ap_file_exists(trace) || !ap_file_exists(pred))
        cr_skip_test("needs traces/quick.h5 and runs/quick/predictor.safetensors (scripts/main.sh)");
    path_in(json, sizeof json, "q.json");
    snprintf(cmd, sizeof cmd,
             "'%s' eval replay --traces '%s' --predictor '%s' --max-seqs 1 --max-steps 2 --budget 512 "
             "--dense-layers 0,1 --json '%s' --quiet 2>&1",
             ap, trace, pred, json);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "attnpred_nocal") && strstr(out, "quest") && strstr(out, "h2o"), "%s",
              out);
    cr_assert(ap_file_exists(json));
}

/* ------------------------------------------- mixed attention (issue 13) */

/* Mean recovery over the recorded rows of (method, budget 0) in `layer`. */
static double rec_mean(const recorder *r, int method, int layer, long long *n) {
    double s = 0.0;
    *n = 0;
    for (int i = 0; i < r->n; i++) {
        const row *w = &r->rows[i];
        if (w->method != method || w->budget != 0 || w->layer != layer) continue;
        s += w->rec;
        (*n)++;
    }
    return *n ? s / (double)*n : NAN;
}

Test(replay, sliding_window_layers_are_not_selected_or_counted) {
    ap_tiny_seq s;
    random_trace(&s, 0, 0, 7);
    char full[1200], swa[1200];
    tiny_write(&s, 1, "full.h5", full, sizeof full);
    path_in(swa, sizeof swa, "swa.h5");
    const int win[2] = {8, 0}; /* layer 0 sliding (window 8), layer 1 full */
    ap_err e;
    cr_assert_eq(ap_tiny_write_windows(swa, &s, 1, "gemma3", win, &e), AP_OK, "%s", e.msg);

    recorder ra, rb;
    rec_init(&ra);
    rec_init(&rb);
    ap_replay_config c;
    tiny_config(&c, full, &ra);
    ap_replay_result *a = run_ok(&c);
    tiny_config(&c, swa, &rb);
    ap_replay_result *b = run_ok(&c);
    cr_assert_eq(a->n_full_layers, 2);
    cr_assert_eq(a->swa_window, 0);
    cr_assert_eq(b->n_full_layers, 1);
    cr_assert_eq(b->swa_window, 8);
    cr_assert(b->layer_window[0] == 8 && b->layer_window[1] == 0);
    cr_assert_eq(a->n_methods, b->n_methods);
    for (int i = 0; i < rb.n; i++)
        cr_assert_eq(rb.rows[i].layer, 1, "a method selected in sliding-window layer 0");
    for (int m = 0; m < b->n_methods; m++) {
        ap_replay_cell *ca = ap_replay_cell_at(a, m, 0), *cb = ap_replay_cell_at(b, m, 0);
        cr_assert_eq(ca->n, 2 * 4 * GEN, "%s", a->methods[m].name);
        cr_assert_eq(cb->n, 4 * GEN, "%s: only the full layer counts", b->methods[m].name);
        /* The full layer scores as it did in the all-full trace, and the
         * cell averages over it alone. */
        long long n1 = 0;
        double m1 = rec_mean(&ra, m, 1, &n1);
        cr_assert_eq(n1, 4 * GEN);
        cr_assert_float_eq(cb->recovery.mean, m1, 1e-12, "%s: %.17g vs %.17g",
                           b->methods[m].name, cb->recovery.mean, m1);
        for (int h = 0; h < 4; h++) {
            cr_assert(isnan(cb->layer_head_recovery[h]), "layer 0 head %d is not scored", h);
            cr_assert_eq(cb->layer_head_recovery[4 + h], ca->layer_head_recovery[4 + h]);
        }
    }
    /* The oracle's layer-0 recovery differs from its layer-1 one, so a cell
     * that still counted layer 0 would have shown above. */
    long long n0 = 0, n1 = 0;
    cr_assert_neq(rec_mean(&ra, 0, 0, &n0), rec_mean(&ra, 0, 1, &n1));

    /* The reports say where the methods selected. */
    char json[1200], md[1200];
    path_in(json, sizeof json, "swa.json");
    path_in(md, sizeof md, "swa.md");
    cr_assert_eq(ap_replay_write_json(b, json, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_replay_write_md(b, md, &e), AP_OK, "%s", e.msg);
    const char *note = "selection in 1 of 2 layers (the others are sliding-window layers, window 8)";
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(ap_read_file(md, &text, &len, &e), AP_OK, "%s", e.msg);
    cr_assert(strstr(text, note) != NULL, "%s", text);
    free(text);
    cr_assert_eq(ap_read_file(json, &text, &len, &e), AP_OK, "%s", e.msg);
    cJSON *j = cJSON_Parse(text);
    cr_assert_not_null(j);
    cJSON *sl = cJSON_GetObjectItem(j, "selection_layers");
    cr_assert_not_null(sl, "%s", text);
    cr_assert_eq(cJSON_GetObjectItem(sl, "n_selected")->valueint, 1);
    cr_assert_eq(cJSON_GetObjectItem(sl, "n_layer")->valueint, 2);
    cr_assert_eq(cJSON_GetObjectItem(sl, "n_sliding")->valueint, 1);
    cr_assert_str_eq(cJSON_GetObjectItem(sl, "note")->valuestring, note);
    cJSON *mo = cJSON_GetObjectItem(j, "model");
    cr_assert_eq(cJSON_GetObjectItem(mo, "n_full_layers")->valueint, 1);
    cr_assert_eq(cJSON_GetObjectItem(mo, "sliding_window")->valueint, 8);
    cJSON *lw = cJSON_GetObjectItem(mo, "layer_window");
    cr_assert(cJSON_GetArraySize(lw) == 2 && cJSON_GetArrayItem(lw, 0)->valueint == 8 &&
              cJSON_GetArrayItem(lw, 1)->valueint == 0);
    cJSON_Delete(j);
    free(text);
    /* An all-full trace says so. */
    cr_assert_eq(ap_replay_write_md(a, md, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_read_file(md, &text, &len, &e), AP_OK, "%s", e.msg);
    cr_assert(strstr(text, "selection in all 2 layers") != NULL, "%s", text);
    free(text);

    /* Dense layers on top: the full layer kept dense leaves nothing to select. */
    ap_replay_result_free(b);
    rec_free(&rb);
    rec_init(&rb);
    tiny_config(&c, swa, &rb);
    c.n_dense_layers = 1;
    c.dense_layers[0] = 1;
    b = run_ok(&c);
    cr_assert_eq(rb.n, 0);
    cr_assert_eq(ap_replay_cell_at(b, 0, 0)->n, 0);
    cr_assert_eq(ap_replay_write_md(b, md, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_read_file(md, &text, &len, &e), AP_OK, "%s", e.msg);
    cr_assert(strstr(text, "selection in 0 of 2 layers (the others: 1 sliding-window layers, "
                           "window 8; 1 kept dense)") != NULL,
              "%s", text);
    free(text);

    /* Traces of one shape but other windows are different models. */
    c.n_dense_layers = 0;
    c.traces[1] = full;
    c.n_traces = 2;
    c.on_step = NULL;
    cr_assert_eq(run_err(&c, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, full) && strstr(e.msg, "layer 0's attention window is 0"), "%s",
              e.msg);
    ap_replay_result_free(a);
    ap_replay_result_free(b);
    rec_free(&ra);
    rec_free(&rb);
    ap_tiny_seq_free(&s);
}

/* A predictor runs in the full layers only, through the CLI too. */
Test(replay, predictor_and_cli_on_a_sliding_window_trace) {
    ap_synth_trace_opts o;
    ap_synth_trace_opts_default(&o);
    o.n_seq = 2;
    o.n_gen = 16;
    o.min_prompt = 200;
    o.max_prompt = 300;
    o.n_layer = 3;
    const int win[3] = {64, 64, 0};
    o.layer_window = win;
    o.arch = "gemma3";
    char trace[1200], pred[1200];
    path_in(trace, sizeof trace, "swa-syn.h5");
    ap_err e;
    cr_assert_eq(ap_synth_trace_write(trace, &o, &e), AP_OK, "%s", e.msg);
    path_in(pred, sizeof pred, "swa-syn.safetensors");
    write_predictor(pred, 16, 16, 8, 8, 23);
    recorder rc;
    rec_init(&rc);
    ap_replay_config c;
    synth_config(&c, trace, pred);
    c.threads = 1;
    c.on_step = on_step;
    c.on_step_user = &rc;
    ap_replay_result *r = run_ok(&c);
    cr_assert_eq(r->n_full_layers, 1);
    for (int m = 0; m < r->n_methods; m++)
        cr_assert_eq(ap_replay_cell_at(r, m, 0)->n, 2 * 16 * 1 * 3, "%s", r->methods[m].name);
    int n_pred = 0;
    for (int i = 0; i < rc.n; i++) {
        cr_assert_eq(rc.rows[i].layer, 2);
        n_pred += r->methods[rc.rows[i].method].is_predictor;
    }
    cr_assert_gt(n_pred, 0, "the predictor ran");
    ap_replay_result_free(r);
    rec_free(&rc);

    const char *ap = getenv("AP_CLI");
    if (!ap || !*ap || access(ap, X_OK) != 0) return; /* the CLI half runs through ctest */
    char md[1200], json[1200], cmd[8192];
    static char out[1 << 16];
    path_in(md, sizeof md, "swa-cli.md");
    path_in(json, sizeof json, "swa-cli.json");
    snprintf(cmd, sizeof cmd,
             "'%s' eval replay --traces '%s' --budget 192 --max-steps 4 --json '%s' --md '%s' "
             "--quiet 2>&1",
             ap, trace, json, md);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "%s", out);
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(ap_read_file(md, &text, &len, &e), AP_OK, "%s", e.msg);
    cr_assert(strstr(text, "selection in 1 of 3 layers (the others are sliding-window layers, "
                           "window 64)") != NULL,
              "%s", text);
    free(text);
}
