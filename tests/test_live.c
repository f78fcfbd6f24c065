/* Compressed decoding: the engine's KV policy hook, live selection
 * (eval/live.c) and the task runner (eval/tasks.c) on a tiny random model. */
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
#include "eval/live.h"
#include "eval/tasks.h"
#include "helpers/synth_ctx.h"
#include "helpers/synth_model.h"
#include "kernels/block_pool.h"
#include "train/metrics.h"
#include "train/predictor.h"
#include "train/runtime.h"


/* A policy that keeps every block: must give the dense decode's tokens, and
 * logits within the attention tolerance (only the summation order differs). */
typedef struct {
    int blocks[4096], set_off[64];
    int calls;
} keep_all;

static ap_status keep_all_select(void *user, const ap_kv_step *s, const int **blocks,
                                 const int **set_off, ap_err *err) {
    keep_all *k = user;
    (void)err;
    int n = 0, sets = s->n_head;
    for (int u = 0; u < sets; u++) {
        k->set_off[u] = n;
        for (int j = 0; j < s->n_blocks; j++) k->blocks[n++] = j;
    }
    k->set_off[sets] = n;
    *blocks = k->blocks;
    *set_off = k->set_off;
    k->calls++;
    return AP_OK;
}

Test(live, keep_all_policy_matches_dense_decode) {
    ap_synth_ctx f;
    ap_synth_ctx_open(&f, "live", 2);
    ap_err err = {0};
    const int np = 150, steps = 24, V = ap_model_hparams(f.m)->n_vocab;
    int32_t ids[150];
    ap_synth_prompt(ids, np, 7);
    float *l0 = malloc(sizeof(float) * V), *la = malloc(sizeof(float) * V),
          *lb = malloc(sizeof(float) * V);
    int32_t dense[64], sparse[64];
    cr_assert_eq(ap_ctx_eval(f.c, ids, np, l0, 0, NULL, &err), AP_OK, "%s", err.msg);
    int32_t t = ap_synth_argmax(l0, V);
    for (int i = 0; i < steps; i++) {
        dense[i] = t;
        cr_assert_eq(ap_ctx_eval(f.c, &t, 1, la, 0, NULL, &err), AP_OK, "%s", err.msg);
        t = ap_synth_argmax(la, V);
    }
    keep_all k = {0};
    ap_kv_policy p = {.user = &k, .block = 16, .sink = 0, .local = 0, .per_q_head = 1,
                      .select = keep_all_select};
    cr_assert_eq(ap_ctx_truncate(f.c, np, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_ctx_set_kv_policy(f.c, &p, &err), AP_OK, "%s", err.msg);
    t = ap_synth_argmax(l0, V);
    double worst = 0;
    for (int i = 0; i < steps; i++) {
        sparse[i] = t;
        cr_assert_eq(ap_ctx_eval(f.c, &t, 1, lb, 0, NULL, &err), AP_OK, "%s", err.msg);
        t = ap_synth_argmax(lb, V);
    }
    /* Same trajectory, so the last logits compare too: rerun dense. */
    cr_assert_eq(ap_ctx_set_kv_policy(f.c, NULL, &err), AP_OK);
    cr_assert_eq(ap_ctx_truncate(f.c, np + steps - 1, &err), AP_OK);
    int32_t last = sparse[steps - 1];
    cr_assert_eq(ap_ctx_eval(f.c, &last, 1, la, 0, NULL, &err), AP_OK, "%s", err.msg);
    worst = ap_rel_l2_f32(lb, la, V);
    for (int i = 0; i < steps; i++) cr_expect_eq(sparse[i], dense[i], "token %d differs", i);
    cr_expect_lt(worst, AP_TOL_LOGITS_REL_L2, "logits rel L2 %g", worst);
    cr_expect_eq(k.calls, steps * ap_model_hparams(f.m)->n_layer);
    free(l0);
    free(la);
    free(lb);
    ap_synth_ctx_close(&f);
}

Test(live, truncate_checks_range) {
    ap_synth_ctx f;
    ap_synth_ctx_open(&f, "live", 1);
    ap_err err = {0};
    int32_t ids[8];
    ap_synth_prompt(ids, 8, 3);
    cr_assert_eq(ap_ctx_eval(f.c, ids, 8, NULL, 0, NULL, &err), AP_OK);
    cr_expect_eq(ap_ctx_truncate(f.c, 9, &err), AP_ERR_RANGE);
    cr_expect_eq(ap_ctx_n_past(f.c), 8);
    cr_expect_eq(ap_ctx_truncate(f.c, 3, &err), AP_OK);
    cr_expect_eq(ap_ctx_n_past(f.c), 3);
    ap_synth_ctx_close(&f);
}

/* Wraps a live policy and records the lists of layer 1 at each step. */
typedef struct {
    const ap_kv_policy *inner;
    ap_kv_policy outer;
    int steps;
    int n_sets;
    int lists[32][8][64]; /* [step][set][i], -1 terminated */
    float dense_bsum[32][4][64];
    int n_valid[32];
    int peeked, peek_same; /* (step, layer) whose peek answered, and matched select */
    int no_par;            /* 1: hide the engine's lent threads (ap_kv_step.par) */
    int per_kv;            /* run_live_rt: the predictor per KV head (pred_per_kv) */
    int saw_par;           /* steps whose ks carried them */
} spy;

static unsigned spy_want(void *user, int layer, int pos) {
    spy *s = user;
    unsigned f = s->inner->want ? s->inner->want(s->inner->user, layer, pos) : 0;
    return f | AP_KV_DENSE_BEFORE; /* to check choices against the true row */
}

static ap_status spy_select(void *user, const ap_kv_step *ks0, const int **blocks,
                            const int **set_off, ap_err *err) {
    spy *s = user;
    ap_kv_step own = *ks0;
    s->saw_par += ks0->par != NULL;
    if (s->no_par) own.par = NULL;
    const ap_kv_step *ks = &own;
    /* What the policy says select will give, asked first (the CUDA engine's
     * prefetch does this a step ahead), copied before select runs. */
    int pk[8 * 64 + 9], n_pk = -1;
    const int *pb = NULL, *po = NULL;
    const int sets = s->inner->per_q_head ? ks->n_head : ks->n_head_kv;
    if (s->inner->peek) {
        ap_status ps = s->inner->peek(s->inner->user, ks->layer, ks->pos, 1, &pb, &po, err);
        if (ps) return ps;
        if (pb && po[sets] <= 8 * 64) {
            memcpy(pk, po, sizeof(int) * (size_t)(sets + 1));
            memcpy(pk + sets + 1, pb, sizeof(int) * (size_t)po[sets]);
            n_pk = po[sets];
        }
    }
    ap_status st = s->inner->select(s->inner->user, ks, blocks, set_off, err);
    if (st) return st;
    if (n_pk >= 0) {
        s->peeked++;
        s->peek_same += memcmp(pk, *set_off, sizeof(int) * (size_t)(sets + 1)) == 0 &&
                        memcmp(pk + sets + 1, *blocks, sizeof(int) * (size_t)n_pk) == 0;
    }
    if (ks->layer != 1 || s->steps >= 32) return st;
    int n_sets = s->inner->per_q_head ? ks->n_head : ks->n_head_kv;
    s->n_sets = n_sets;
    for (int u = 0; u < n_sets; u++) {
        int n = 0;
        for (int i = (*set_off)[u]; i < (*set_off)[u + 1] && n < 63; i++)
            s->lists[s->steps][u][n++] = (*blocks)[i];
        s->lists[s->steps][u][n] = -1;
    }
    for (int h = 0; h < ks->n_head; h++)
        for (int j = 0; j < ks->n_blocks && j < 64; j++)
            s->dense_bsum[s->steps][h][j] = ks->dense_bsum[(size_t)h * ks->ldb + j];
    s->n_valid[s->steps] = ks->n_blocks;
    return AP_OK;
}

static ap_status spy_attended(void *user, const ap_kv_step *ks0, const ap_kv_attended *r,
                              ap_err *err) {
    spy *s = user;
    ap_kv_step own = *ks0;
    if (s->no_par) own.par = NULL;
    const ap_kv_step *ks = &own;
    ap_status st = s->inner->attended ? s->inner->attended(s->inner->user, ks, r, err) : AP_OK;
    if (ks->layer == 1) s->steps++;
    return st;
}

/* Prefill + `steps` greedy decode steps of selector `name` at `budget`. */
static void run_live_rt(ap_synth_ctx *f, const char *name, ap_runtime *rt, int prefetch, int budget,
                        int steps, spy *sp, ap_live_stats *stats) {
    const int no_par = sp->no_par, per_kv = sp->per_kv;
    ap_err err = {0};
    const ap_hparams *hp = ap_model_hparams(f->m);
    const int np = 300, V = hp->n_vocab;
    int32_t ids[300];
    ap_synth_prompt(ids, np, 11);
    ap_live_prefill *pf = NULL;
    cr_assert_eq(ap_live_prefill_create(hp, 16, 64, np, steps, &pf, &err), AP_OK, "%s", err.msg);
    float *lg = malloc(sizeof(float) * V);
    ap_ctx_reset(f->c);
    cr_assert_eq(ap_ctx_set_kv_policy(f->c, NULL, &err), AP_OK);
    cr_assert_eq(ap_ctx_eval(f->c, ids, np, lg, 0, ap_live_prefill_observer(pf), &err), AP_OK,
                 "%s", err.msg);
    const ap_selector *sel = rt ? ap_selector_predictor() : ap_selector_find(name);
    cr_assert(sel, "%s", name);
    ap_sel_params prm = {.calib = 5, .kv_mode = AP_KV_PER_QHEAD, .snapkv_window = 32,
                         .snapkv_pool = 1, .incremental = 1, .rt = rt, .pred_per_kv = per_kv};
    /* prefetch > 1: that many worker threads. */
    ap_live_opts lo = {.budget = budget, .sink = 64, .local = 64, .min_candidates = 3,
                       .prefetch = prefetch > 0, .prefetch_threads = prefetch};
    ap_live *lv = NULL;
    cr_assert_eq(ap_live_create(pf, sel, &prm, &lo, &lv, &err), AP_OK, "%s", err.msg);
    memset(sp, 0, sizeof *sp);
    sp->no_par = no_par;
    sp->inner = ap_live_policy(lv);
    sp->outer = *sp->inner;
    sp->outer.user = sp;
    sp->outer.want = spy_want;
    sp->outer.select = spy_select;
    sp->outer.attended = spy_attended;
    cr_assert_eq(ap_ctx_set_kv_policy(f->c, &sp->outer, &err), AP_OK, "%s", err.msg);
    int32_t t = ap_synth_argmax(lg, V);
    for (int i = 0; i < steps; i++) {
        cr_assert_eq(ap_ctx_eval(f->c, &t, 1, lg, 0, ap_live_observer(lv), &err), AP_OK, "%s",
                     err.msg);
        t = ap_synth_argmax(lg, V);
    }
    ap_live_get_stats(lv, stats);
    ap_ctx_set_kv_policy(f->c, NULL, &err);
    ap_live_free(lv);
    ap_live_prefill_free(pf);
    free(lg);
}

static void run_live(ap_synth_ctx *f, const char *name, int budget, int steps, spy *sp,
                     ap_live_stats *stats) {
    run_live_rt(f, name, NULL, 0, budget, steps, sp, stats);
}

static int in_list(const int *l, int b) {
    for (; *l >= 0; l++)
        if (*l == b) return 1;
    return 0;
}

/* Budget 160 = sink 64 + local 64 + 2 blocks. Position q = 300 + t. */
Test(live, streaming_keeps_sink_local_and_most_recent) {
    ap_synth_ctx f;
    ap_synth_ctx_open(&f, "live", 2);
    spy *sp = calloc(1, sizeof *sp);
    ap_live_stats stats;
    run_live(&f, "streaming", 160, 10, sp, &stats);
    cr_assert_eq(sp->steps, 10);
    for (int t = 0; t < 10; t++) {
        int q = 300 + t, c1 = (q + 15) / 16 - 4, lb0 = (q + 1 - 64) / 16, nv = q / 16 + 1;
        int k = ap_metrics_k_blocks(160, 64, 64, 16, c1 - 4);
        cr_assert_eq(k, 2);
        for (int u = 0; u < sp->n_sets; u++) {
            const int *l = sp->lists[t][u];
            /* Every listed block is either in the block-granular local
             * window or among the k most recent candidates outside it. */
            for (int j = 4; j < nv; j++) {
                int expect = j >= lb0 || (j >= lb0 - k && j < lb0);
                cr_expect_eq(in_list(l, j), expect, "t %d set %d block %d", t, u, j);
            }
        }
    }
    cr_expect_eq(stats.steps, 10);
    cr_expect_gt(stats.full_tokens, stats.resident_tokens);
    /* A sliding window never needs a block it dropped: nothing to fetch. */
    cr_expect_eq(stats.fetched_tokens, 0.0);
    free(sp);
    ap_synth_ctx_close(&f);
}

/* The oracle keeps the k candidates with the most true attention. */
Test(live, oracle_keeps_top_k_of_the_true_row) {
    ap_synth_ctx f;
    ap_synth_ctx_open(&f, "live", 2);
    spy *sp = calloc(1, sizeof *sp);
    ap_live_stats stats;
    run_live(&f, "oracle", 192, 8, sp, &stats);
    for (int t = 0; t < 8; t++) {
        int q = 300 + t, c0 = 4, c1 = (q + 15) / 16 - 4, lb0 = (q + 1 - 64) / 16;
        int k = ap_metrics_k_blocks(192, 64, 64, 16, c1 - c0);
        for (int h = 0; h < 4; h++) {
            const int *l = sp->lists[t][h];
            const float *bs = sp->dense_bsum[t][h];
            /* min over kept candidates >= max over dropped ones (outside the local window). */
            float kept_min = INFINITY, drop_max = -INFINITY;
            int n_kept = 0;
            for (int j = c0; j < lb0; j++) {
                if (in_list(l, j)) {
                    kept_min = fminf(kept_min, bs[j]);
                    n_kept++;
                } else {
                    drop_max = fmaxf(drop_max, bs[j]);
                }
            }
            cr_expect_eq(n_kept, k, "t %d head %d", t, h);
            cr_expect_geq(kept_min, drop_max, "t %d head %d", t, h);
        }
    }
    /* Measured every step: recovery in (0, 1]. */
    cr_expect_gt(stats.recovery_n, 0);
    double rec = stats.recovery_sum / stats.recovery_n;
    cr_expect(rec > 0.0 && rec <= 1.0 + 1e-6, "recovery %g", rec);
    free(sp);
    ap_synth_ctx_close(&f);
}

/* An eviction method (H2O) never lists a candidate it dropped earlier. */
Test(live, eviction_never_brings_a_block_back) {
    ap_synth_ctx f;
    ap_synth_ctx_open(&f, "live", 2);
    spy *sp = calloc(1, sizeof *sp);
    ap_live_stats stats;
    run_live(&f, "h2o", 176, 20, sp, &stats);
    for (int u = 0; u < sp->n_sets; u++)
        for (int t = 1; t < 20; t++) {
            int lb0 = (300 + t + 1 - 64) / 16;
            for (int j = 4; j < lb0; j++)
                if (in_list(sp->lists[t][u], j))
                    cr_expect(in_list(sp->lists[t - 1][u], j), "set %d block %d back at step %d",
                              u, j, t);
        }
    free(sp);
    ap_synth_ctx_close(&f);
}

/* Cross-token prefetch changes when the predictor runs, never what it
 * chooses: same lists at every step, and the steps were scored ahead. */
Test(live, prefetch_gives_the_same_choices) {
    ap_synth_ctx f;
    ap_synth_ctx_open(&f, "live", 2);
    ap_pred_config c;
    ap_pred_config_default(&c);
    ap_predictor *p = NULL;
    ap_runtime *rt = NULL;
    char path[256];
    ap_synth_runtime(&c, 5, "pred", path, &p, &rt);
    spy *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b), *c3 = calloc(1, sizeof *c3);
    ap_live_stats sa, sb, sc;
    run_live_rt(&f, "attnpred", rt, 0, 176, 16, a, &sa);
    run_live_rt(&f, "attnpred", rt, 1, 176, 16, b, &sb);
    run_live_rt(&f, "attnpred", rt, 3, 176, 16, c3, &sc);
    cr_assert_eq(a->steps, 16);
    cr_assert_eq(b->steps, 16);
    cr_assert_eq(c3->steps, 16);
    cr_expect_eq(memcmp(a->lists, b->lists, sizeof a->lists), 0, "prefetch changed the choices");
    cr_expect_eq(memcmp(a->lists, c3->lists, sizeof a->lists), 0,
                 "three prefetch workers changed the choices");
    cr_expect_eq(sa.prefetched, 0);
    /* Every (step, layer) after the first step is scored ahead. */
    const long long ahead = 15LL * ap_model_hparams(f.m)->n_layer;
    cr_expect_eq(sb.prefetched, ahead);
    cr_expect_eq(sc.prefetched, ahead);
    cr_expect_gt(sb.score_seconds, 0.0);
    /* peek: nothing without the worker; with it, every prefetched (step,
     * layer) answers, and with select's own lists. */
    cr_expect_eq(a->peeked, 0);
    cr_expect_eq(b->peeked, ahead, "peek answered %d times", b->peeked);
    cr_expect_eq(b->peek_same, b->peeked, "peek differed from select %d times",
                 b->peeked - b->peek_same);
    cr_expect_eq(c3->peek_same, c3->peeked);
    free(a);
    free(b);
    free(c3);
    ap_runtime_free(rt);
    ap_predictor_free(p);
    unlink(path);
    ap_synth_ctx_close(&f);
}

/* Select and attended split their work over the engine's threads
 * (ap_kv_step.par: the query bound by block chunks, the fusion by head, the
 * top-k by KV head, the CNN and its history by history): the same lists as
 * on one thread, for a query-fused predictor by query head and by KV head,
 * and for Quest. */
Test(live, engine_threads_give_the_same_choices) {
    ap_synth_ctx f;
    ap_synth_ctx_open(&f, "live", 2);
    ap_pred_config c;
    ap_pred_config_default(&c);
    c.query_fusion = 1;
    ap_predictor *p = NULL;
    ap_runtime *rt = NULL;
    char path[256];
    ap_synth_runtime(&c, 7, "predf", path, &p, &rt);
    spy *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    ap_live_stats sa, sb;
    for (int v = 0; v < 3; v++) {
        memset(a, 0, sizeof *a);
        memset(b, 0, sizeof *b);
        a->no_par = 1;
        a->per_kv = b->per_kv = v == 1;
        if (v < 2) {
            run_live_rt(&f, "attnpred", rt, 0, 176, 16, a, &sa);
            run_live_rt(&f, "attnpred", rt, 0, 176, 16, b, &sb);
        } else {
            run_live(&f, "quest", 176, 16, a, &sa);
            run_live(&f, "quest", 176, 16, b, &sb);
        }
        cr_assert_eq(a->steps, 16);
        cr_assert_eq(b->steps, 16);
        cr_expect_gt(b->saw_par, 0, "the engine lent no threads");
        cr_expect_eq(memcmp(a->lists, b->lists, sizeof a->lists), 0,
                     "variant %d: the engine's threads changed the choices", v);
    }
    free(a);
    free(b);
    ap_runtime_free(rt);
    ap_predictor_free(p);
    unlink(path);
    ap_synth_ctx_close(&f);
}

typedef struct {
    int n_calls, monotone;
    double done, total, work, work_total;
} tasks_progress_rec;

static void on_tasks_progress_rec(void *user, double done, double total, double work,
                                  double work_total, const char *what) {
    tasks_progress_rec *p = user;
    (void)what;
    p->monotone &= done >= p->done && work >= p->work;
    p->n_calls++;
    p->done = done;
    p->total = total;
    p->work = work;
    p->work_total = work_total;
}

/* End to end on a two-sample task file: full KV scores itself, a budget
 * above the context reproduces full KV exactly. Progress counts runs and
 * weighs each by its sample's tokens (ap_work_run: the full-KV run with its
 * prefill), so the ETA follows the cost rather than the run count. */
Test(live, tasks_run_end_to_end) {
    char model[256], tasks[256];
    ap_err err = {0};
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    ap_synth_tmp_path(model, sizeof model, "tasks", ".gguf");
    ap_synth_tmp_path(tasks, sizeof tasks, "tasks", ".jsonl");
    cr_assert_eq(ap_synth_model_write(model, &o, &err), AP_OK, "%s", err.msg);
    ap_synth_task_file(tasks, 2, 6, 1);
    ap_tasks_config c;
    ap_tasks_config_default(&c);
    c.model = model;
    c.tasks_file = tasks;
    c.methods[0] = "streaming";
    c.methods[1] = "quest";
    c.methods[2] = "oracle";
    c.n_methods = 3;
    c.budgets[0] = 160;
    c.budgets[1] = 2048;
    c.n_budgets = 2;
    tasks_progress_rec pr = {.monotone = 1};
    c.progress = on_tasks_progress_rec;
    c.progress_user = &pr;
    ap_tasks_result *r = NULL;
    cr_assert_eq(ap_tasks_run(&c, &r, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(r->n_samples, 2);
    cr_assert_eq(r->n_methods, 4);
    /* prefetch auto: a worker only where the engine's threads leave a CPU */
    cr_expect_eq(r->config.prefetch, ap_cpu_count() > c.threads, "prefetch resolved to %d",
                 r->config.prefetch);
    const double fixed = ap_work_fixed(o.n_layer, o.n_embd, o.n_head, o.n_head_kv, o.head_dim,
                                       o.n_ff, o.n_vocab);
    double work_total = 0;
    for (int s = 0; s < 2; s++) {
        const ap_task_sample *x = &r->samples[s];
        work_total += ap_work_run(x->n_prompt, x->max_new_tokens, 1, fixed) +
                      3 * 2 * ap_work_run(x->n_prompt, x->max_new_tokens, 0, fixed);
    }
    cr_assert_gt(pr.n_calls, 2);
    cr_assert(pr.monotone, "progress went backwards");
    cr_assert_eq(pr.total, 2 * (1 + 3 * 2));
    cr_assert_eq(pr.done, pr.total);
    cr_assert_eq(pr.work, pr.work_total);
    cr_assert(fabs(pr.work_total - work_total) <= 1e-9 * work_total, "work %.17g, expected %.17g",
              pr.work_total, work_total);
    for (int s = 0; s < 2; s++) {
        ap_task_run *full = ap_tasks_run_at(r, s, 0, 0);
        cr_expect_eq(full->agreement, 1.0);
        cr_expect(full->output != NULL);
        for (int m = 1; m < 4; m++) {
            ap_task_run *big = ap_tasks_run_at(r, s, m, 1);
            cr_expect_eq(big->same, 1, "sample %d %s at 2048", s, r->methods[m].name);
            cr_expect_str_eq(big->output, full->output);
            cr_expect_eq(big->agreement, 1.0);
            cr_expect_lt(big->kl, 1e-6);
            cr_expect_eq(big->score, full->score);
            ap_task_run *small = ap_tasks_run_at(r, s, m, 0);
            cr_expect_lt(small->resident_kv_bytes, small->full_kv_bytes);
            cr_expect(small->agreement >= 0 && small->agreement <= 1);
            cr_expect(small->kl >= 0);
        }
    }
    ap_tasks_result_free(r);
    /* A bad method is refused with a message. */
    c.methods[0] = "nonsense";
    cr_expect_eq(ap_tasks_run(&c, &r, &err), AP_ERR_ARG);
    cr_expect(strstr(err.msg, "nonsense"));
    unlink(model);
    unlink(tasks);
}

/* A run with a per-sample checkpoint, stopped after two of three samples
 * (and a half-written record after them, as a kill leaves), resumes: the
 * two come from the checkpoint (same numbers, timings included), the third
 * is decoded, and every run equals an uninterrupted run's. A checkpoint of
 * other options is refused. */
Test(live, tasks_checkpoint_resume) {
    char model[256], tasks[256], ckpt[256];
    ap_err err = {0};
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    ap_synth_tmp_path(model, sizeof model, "ckpt", ".gguf");
    ap_synth_tmp_path(tasks, sizeof tasks, "ckpt", ".jsonl");
    ap_synth_tmp_path(ckpt, sizeof ckpt, "ckpt", ".ckpt");
    cr_assert_eq(ap_synth_model_write(model, &o, &err), AP_OK, "%s", err.msg);
    ap_synth_task_file(tasks, 3, 6, 1);
    ap_tasks_config c;
    ap_tasks_config_default(&c);
    c.model = model;
    c.tasks_file = tasks;
    c.methods[0] = "streaming";
    c.methods[1] = "quest";
    c.methods[2] = "last_step";
    c.n_methods = 3;
    c.budgets[0] = 160;
    c.budgets[1] = 256;
    c.n_budgets = 2;
    ap_tasks_result *ref = NULL, *part = NULL, *res = NULL;
    cr_assert_eq(ap_tasks_run(&c, &ref, &err), AP_OK, "%s", err.msg);

    c.checkpoint = ckpt;
    c.max_samples = 2;
    cr_assert_eq(ap_tasks_run(&c, &part, &err), AP_OK, "%s", err.msg);
    FILE *f = fopen(ckpt, "ab");
    cr_assert(f);
    fwrite("\x05\0\0\0half", 1, 8, f);
    fclose(f);

    c.max_samples = 0;
    c.resume = 1;
    tasks_progress_rec pr = {.monotone = 1};
    c.progress = on_tasks_progress_rec;
    c.progress_user = &pr;
    cr_assert_eq(ap_tasks_run(&c, &res, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(res->n_samples, 3);
    cr_assert(pr.monotone && pr.done == pr.total, "progress %g of %g", pr.done, pr.total);
    for (int s = 0; s < 3; s++) {
        for (int m = 0; m < res->n_methods; m++) {
            for (int b = 0; b < 2; b++) {
                const ap_task_run *x = ap_tasks_run_at(res, s, m, b), *y = ap_tasks_run_at(ref, s, m, b);
                cr_expect_str_eq(x->output, y->output, "sample %d method %d budget %d", s, m, b);
                cr_expect(x->score == y->score && x->agreement == y->agreement && x->kl == y->kl &&
                              x->same == y->same && x->n_gen == y->n_gen &&
                              x->resident_kv_bytes == y->resident_kv_bytes &&
                              x->fetch_kv_bytes == y->fetch_kv_bytes,
                          "sample %d method %d budget %d differs from the uninterrupted run", s, m, b);
                if (s < 2) {
                    /* Read back, not decoded again: the first run's timings. */
                    const ap_task_run *z = ap_tasks_run_at(part, s, m, b);
                    cr_expect(x->decode_seconds == z->decode_seconds,
                              "sample %d was decoded again", s);
                }
            }
        }
    }
    cr_expect(res->samples[0].prefill_seconds == part->samples[0].prefill_seconds);
    ap_tasks_result_free(res);
    res = NULL;

    /* Other budgets: the checkpoint is not this run's. */
    c.budgets[1] = 512;
    c.progress = NULL;
    cr_expect_eq(ap_tasks_run(&c, &res, &err), AP_ERR_FORMAT);
    cr_expect(strstr(err.msg, ckpt) && strstr(err.msg, "other inputs or options"), "%s", err.msg);
    /* Without --resume a new checkpoint replaces it. */
    c.resume = 0;
    c.max_samples = 1;
    cr_assert_eq(ap_tasks_run(&c, &res, &err), AP_OK, "%s", err.msg);
    ap_tasks_result_free(res);
    ap_tasks_result_free(part);
    ap_tasks_result_free(ref);
    unlink(model);
    unlink(tasks);
    unlink(ckpt);
}

/* Exports a random default-shaped predictor (history 64) of the given block. */
static void export_predictor(const char *path, int block, uint64_t seed) {
    ap_err e = {0};
    ap_pred_config c;
    ap_pred_config_default(&c);
    c.block = block;
    ap_predictor *p = NULL;
    cr_assert_eq(ap_predictor_create(&c, seed, &p, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_pred_export(path, NULL, &c, ap_predictor_params(p, NULL), &e), AP_OK, "%s",
                 e.msg);
    ap_predictor_free(p);
}

/* Several predictors in one run: the same file under two names gives two
 * methods (each with its own live state and prefetch worker) whose runs are
 * identical; "attnpred" stands for both. A predictor made for another block
 * size is refused before the model is read. */
Test(live, tasks_two_predictors_are_two_identical_methods) {
    char model[256], tasks[256], pred[256], pred4[256];
    ap_err err = {0};
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    ap_synth_tmp_path(model, sizeof model, "tasks2", ".gguf");
    ap_synth_tmp_path(tasks, sizeof tasks, "tasks2", ".jsonl");
    ap_synth_tmp_path(pred, sizeof pred, "tasks2", ".safetensors");
    ap_synth_tmp_path(pred4, sizeof pred4, "tasks2b4", ".safetensors");
    cr_assert_eq(ap_synth_model_write(model, &o, &err), AP_OK, "%s", err.msg);
    ap_synth_task_file(tasks, 2, 6, 1);
    export_predictor(pred, 16, 7);
    export_predictor(pred4, 4, 7);
    ap_tasks_config c;
    ap_tasks_config_default(&c);
    c.model = model;
    c.tasks_file = tasks;
    c.predictors[0] = c.predictors[1] = pred;
    c.predictor_names[0] = "first";
    c.predictor_names[1] = "second";
    c.n_predictors = 2;
    c.methods[0] = "attnpred";
    c.methods[1] = "second_nocal";
    c.n_methods = 2;
    c.prefetch = 1; /* the default (auto) is off where the engine fills the machine */
    c.budgets[0] = 160;
    c.n_budgets = 1;
    ap_tasks_result *r = NULL;
    cr_assert_eq(ap_tasks_run(&c, &r, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(r->n_methods, 4);
    const char *want[] = {"full", "first", "second", "second_nocal"};
    for (int m = 0; m < 4; m++) cr_assert_str_eq(r->methods[m].name, want[m]);
    cr_expect(strstr(r->methods[2].label, "second") != NULL, "%s", r->methods[2].label);
    for (int s = 0; s < 2; s++) {
        const ap_task_run *a = ap_tasks_run_at(r, s, 1, 0), *b = ap_tasks_run_at(r, s, 2, 0);
        cr_expect_str_eq(a->output, b->output, "sample %d", s);
        cr_expect_eq(a->n_gen, b->n_gen);
        cr_expect_eq(a->score, b->score);
        cr_expect_eq(a->agreement, b->agreement);
        cr_expect_eq(a->kl, b->kl);
        cr_expect_eq(a->same, b->same);
        cr_expect_eq(a->resident_kv_bytes, b->resident_kv_bytes);
        cr_expect_eq(a->fetch_kv_bytes, b->fetch_kv_bytes);
        cr_expect(a->recovery == b->recovery || (isnan(a->recovery) && isnan(b->recovery)));
        cr_expect_lt(a->resident_kv_bytes, a->full_kv_bytes);
        cr_expect_gt(a->prefetched, 0, "each predictor prefetches on its own worker");
        cr_expect_gt(b->prefetched, 0);
    }
    ap_tasks_result_free(r);
    r = NULL;
    /* Refused before the model is loaded: the model path is not read. */
    c.model = "/nonexistent/model.gguf";
    c.predictors[1] = pred4;
    cr_expect_eq(ap_tasks_run(&c, &r, &err), AP_ERR_ARG);
    cr_expect(strstr(err.msg, pred4) && strstr(err.msg, "block size 4") &&
                  strstr(err.msg, "block size 16"),
              "%s", err.msg);
    c.predictors[1] = pred;
    c.predictor_names[1] = "first";
    cr_expect_eq(ap_tasks_run(&c, &r, &err), AP_ERR_ARG);
    cr_expect(strstr(err.msg, "'first' given twice") != NULL, "%s", err.msg);
    cr_expect_null(r);
    unlink(model);
    unlink(tasks);
    unlink(pred);
    unlink(pred4);
}

/* The task-file reader on text in memory (ap_tasks_parse, what the runner
 * uses). Found while adding tests/fuzz/fuzz_tasks: text after a line's
 * object (a second object, say) was silently dropped, and a NUL byte ended
 * the file early, silently dropping every later sample. Both are errors now. */
Test(live, tasks_parse_reads_the_file_format) {
    char model[256], tasks[256];
    ap_err err = {0};
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    ap_synth_tmp_path(model, sizeof model, "tparse", ".gguf");
    ap_synth_tmp_path(tasks, sizeof tasks, "tparse", ".jsonl");
    cr_assert_eq(ap_synth_model_write(model, &o, &err), AP_OK, "%s", err.msg);
    ap_synth_task_file(tasks, 3, 5, 1);
    ap_gguf *g = NULL;
    ap_tokenizer *tok = NULL;
    cr_assert_eq(ap_gguf_open(model, &g, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_from_gguf(g, &tok, &err), AP_OK, "%s", err.msg);
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(ap_read_file(tasks, &text, &len, &err), AP_OK);
    ap_tasks_config c;
    ap_tasks_config_default(&c);
    ap_task_sample *s = NULL;
    int n = 0;
    /* Not NUL-terminated: the length is what counts. */
    char *exact = malloc(len);
    memcpy(exact, text, len);
    cr_assert_eq(ap_tasks_parse(&c, tok, exact, len, "t.jsonl", &s, &n, &err), AP_OK, "%s",
                 err.msg);
    cr_assert_eq(n, 3);
    cr_expect_str_eq(s[1].id, "t-1");
    cr_expect_str_eq(s[1].metric, "substring");
    cr_expect_eq(s[1].max_new_tokens, 5);
    cr_expect_gt(s[1].n_prompt, s[0].n_prompt); /* the chat wrapper */
    free(s);
    /* Filter and limit. */
    c.only_tasks[0] = "t-2";
    c.n_only_tasks = 1;
    c.max_new_tokens = 2;
    cr_assert_eq(ap_tasks_parse(&c, tok, exact, len, "t.jsonl", &s, &n, &err), AP_OK, "%s",
                 err.msg);
    cr_assert_eq(n, 1);
    cr_expect_str_eq(s[0].id, "t-2");
    cr_expect_eq(s[0].max_new_tokens, 2);
    free(s);
    c.only_tasks[0] = "nothing";
    cr_expect_eq(ap_tasks_parse(&c, tok, exact, len, "t.jsonl", &s, &n, &err), AP_ERR_ARG);
    cr_expect_null(s);
    ap_tasks_config_default(&c);
    /* Two objects on line 1: the first newline becomes a space. */
    char *two = strdup(text);
    *strchr(two, '\n') = ' ';
    cr_expect_eq(ap_tasks_parse(&c, tok, two, strlen(two), "t.jsonl", &s, &n, &err),
                 AP_ERR_FORMAT);
    cr_expect(strstr(err.msg, "t.jsonl: line 1 is not a JSON object"), "%s", err.msg);
    cr_expect_null(s);
    cr_expect_eq(n, 0);
    free(two);
    /* A NUL byte on line 2: an error, not the end of the file. */
    char *nul = malloc(len);
    memcpy(nul, text, len);
    nul[strchr(text, '\n') - text + 5] = '\0';
    cr_expect_eq(ap_tasks_parse(&c, tok, nul, len, "t.jsonl", &s, &n, &err), AP_ERR_FORMAT);
    cr_expect(strstr(err.msg, "t.jsonl: line 2 contains a NUL byte"), "%s", err.msg);
    free(nul);
    /* Trailing blanks and CRLF are fine; a bad line names its number. */
    char buf[4096];
    int k = snprintf(buf, sizeof buf, "\r\n%.*s\r\n \t\n", (int)(strchr(text, '\n') - text), text);
    cr_assert_eq(ap_tasks_parse(&c, tok, buf, (size_t)k, "t.jsonl", &s, &n, &err), AP_OK, "%s",
                 err.msg);
    cr_expect_eq(n, 1);
    free(s);
    snprintf(buf, sizeof buf, "%.*s\n{\"id\": 3}\n", (int)(strchr(text, '\n') - text), text);
    cr_expect_eq(ap_tasks_parse(&c, tok, buf, strlen(buf), "t.jsonl", &s, &n, &err), AP_ERR_FORMAT);
    cr_expect(strstr(err.msg, "t.jsonl: line 2: missing or non-string \"id\""), "%s", err.msg);
    free(exact);
    free(text);
    ap_tokenizer_free(tok);
    ap_gguf_free(g);
    unlink(model);
    unlink(tasks);
}
