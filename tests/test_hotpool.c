/* The hot pool (eval/live.h, opts.hot_pool): attention reads page tables
 * (ap_kv_policy.pages) instead of the engine's contiguous cache, and the
 * pool's measured memory and copies agree with the accounting. Same tiny
 * random model as tests/test_live.c. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capture/gguf.h"
#include "capture/model.h"
#include "common/tolerance.h"
#include "eval/live.h"
#include "eval/tasks.h"
#include "helpers/keep_all.h"
#include "helpers/synth_ctx.h"
#include "helpers/synth_model.h"
#include "train/predictor.h"
#include "train/runtime.h"


/* ------------------------------------------------------------- engine */

/* Logits of `steps` forced decode steps under policy p (NULL: dense). */
static void forced(ap_synth_ctx *f, int np, const int32_t *toks, int steps, const ap_kv_policy *p,
                   float *out) {
    ap_err err = {0};
    const int V = ap_model_hparams(f->m)->n_vocab;
    cr_assert_eq(ap_ctx_truncate(f->c, np, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_ctx_set_kv_policy(f->c, p, &err), AP_OK, "%s", err.msg);
    for (int i = 0; i < steps; i++)
        cr_assert_eq(ap_ctx_eval(f->c, &toks[i], 1, out + (size_t)i * V, 0, NULL, &err), AP_OK,
                     "%s", err.msg);
    cr_assert_eq(ap_ctx_set_kv_policy(f->c, NULL, &err), AP_OK);
}

Test(hotpool, engine_attends_from_the_pages) {
    ap_synth_ctx f;
    ap_synth_ctx_open(&f, "hotpool", 2);
    ap_err err = {0};
    const ap_hparams *hp = ap_model_hparams(f.m);
    const int np = 150, steps = 12, V = hp->n_vocab;
    int32_t ids[150], toks[12];
    ap_synth_prompt(ids, np, 5);
    ap_synth_prompt(toks, steps, 9);
    float *lg = malloc(sizeof(float) * V);
    cr_assert_eq(ap_ctx_eval(f.c, ids, np, lg, 0, NULL, &err), AP_OK, "%s", err.msg);
    float *dense = malloc(sizeof(float) * V * steps), *paged = malloc(sizeof(float) * V * steps);
    ap_keep_all *k = ap_keep_all_create(hp->n_head_kv, hp->head_dim);
    ap_kv_policy p = ap_keep_all_policy(k, 1);
    forced(&f, np, toks, steps, NULL, dense);
    /* Exact copy, plain and measuring: the dense logits. */
    for (int measure = 0; measure < 2; measure++) {
        k->scale = 1.0f;
        k->want = measure ? AP_KV_MEASURE : 0;
        k->measured = 0;
        forced(&f, np, toks, steps, &p, paged);
        for (int i = 0; i < steps; i++) {
            double rel = ap_rel_l2_f32(paged + (size_t)i * V, dense + (size_t)i * V, V);
            cr_expect_lt(rel, AP_TOL_LOGITS_REL_L2, "measure %d step %d: rel L2 %g", measure, i,
                         rel);
        }
        cr_expect_eq(k->measured, measure ? steps * hp->n_layer : 0);
        /* Halved values in the pages must show in the output, measuring or
         * not: the output comes from the pages. */
        k->scale = 0.5f;
        forced(&f, np, toks, steps, &p, paged);
        double rel = ap_rel_l2_f32(paged + (size_t)(steps - 1) * V,
                                   dense + (size_t)(steps - 1) * V, V);
        cr_expect_gt(rel, 10 * AP_TOL_LOGITS_REL_L2, "measure %d: pages ignored (rel %g)",
                     measure, rel);
    }
    cr_expect_eq(k->pages_calls, 4 * steps * hp->n_layer);
    ap_keep_all_free(k);
    free(dense);
    free(paged);
    free(lg);
    ap_synth_ctx_close(&f);
}

/* --------------------------------------------------------------- live */

#define NP 300
#define STEPS 20

typedef struct {
    int32_t toks[STEPS];
    float *logits; /* [STEPS][V] */
    ap_live_stats st;
} run_out;

/* Prefill, then STEPS greedy decode steps of `sel` at `budget`. */
static void run_live(ap_synth_ctx *f, const ap_selector *sel, ap_runtime *rt, ap_kv_mode mode, int budget,
                     int hot, int prefetch, run_out *o) {
    ap_err err = {0};
    const ap_hparams *hp = ap_model_hparams(f->m);
    const int V = hp->n_vocab;
    int32_t ids[NP];
    ap_synth_prompt(ids, NP, 11);
    ap_live_prefill *pf = NULL;
    cr_assert_eq(ap_live_prefill_create(hp, 16, 64, NP, STEPS, &pf, &err), AP_OK, "%s", err.msg);
    float *lg = malloc(sizeof(float) * V);
    ap_ctx_reset(f->c);
    cr_assert_eq(ap_ctx_set_kv_policy(f->c, NULL, &err), AP_OK);
    cr_assert_eq(ap_ctx_eval(f->c, ids, NP, lg, 0, ap_live_prefill_observer(pf), &err), AP_OK,
                 "%s", err.msg);
    ap_sel_params prm = {.calib = 5, .kv_mode = mode, .snapkv_window = 32, .snapkv_pool = 1,
                         .incremental = 1, .rt = rt};
    ap_live_opts lo = {.budget = budget, .sink = 64, .local = 64, .min_candidates = 3,
                       .prefetch = prefetch, .hot_pool = hot};
    ap_live *lv = NULL;
    cr_assert_eq(ap_live_create(pf, sel, &prm, &lo, &lv, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_ctx_set_kv_policy(f->c, ap_live_policy(lv), &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_live_policy(lv)->pages != NULL, hot != 0);
    int32_t t = ap_synth_argmax(lg, V);
    o->logits = malloc(sizeof(float) * V * STEPS);
    for (int i = 0; i < STEPS; i++) {
        o->toks[i] = t;
        cr_assert_eq(ap_ctx_eval(f->c, &t, 1, o->logits + (size_t)i * V, 0, ap_live_observer(lv),
                                 &err),
                     AP_OK, "%s step %d: %s", sel->name, i, err.msg);
        t = ap_synth_argmax(o->logits + (size_t)i * V, V);
    }
    ap_live_get_stats(lv, &o->st);
    ap_ctx_set_kv_policy(f->c, NULL, &err);
    ap_live_free(lv);
    ap_live_prefill_free(pf);
    free(lg);
}

/* Pool on vs off for one selector: same tokens, close logits, measured
 * numbers equal to the accounted ones. */
static void check_selector(ap_synth_ctx *f, const ap_selector *sel, ap_runtime *rt, ap_kv_mode mode,
                           int budget, int prefetch) {
    const ap_hparams *hp = ap_model_hparams(f->m);
    const int V = hp->n_vocab;
    run_out a, b;
    run_live(f, sel, rt, mode, budget, 0, prefetch, &a);
    run_live(f, sel, rt, mode, budget, 1, prefetch, &b);
    const char *nm = sel->name;
    for (int i = 0; i < STEPS; i++) {
        cr_expect_eq(b.toks[i], a.toks[i], "%s@%d: token %d differs", nm, budget, i);
        double rel = ap_rel_l2_f32(b.logits + (size_t)i * V, a.logits + (size_t)i * V, V);
        cr_expect_lt(rel, AP_TOL_LOGITS_REL_L2, "%s@%d: step %d logits rel L2 %g", nm, budget, i,
                     rel);
    }
    /* Without the pool nothing is measured. */
    cr_expect_eq(a.st.hot_capacity_bytes, 0.0);
    cr_expect_eq(a.st.hot_slot_bytes, 0.0);
    cr_expect_eq(a.st.pool_fetched_tokens + a.st.pool_fill_tokens, 0.0);
    /* Choices are the pool's business only through attention: the
     * accounting is identical. */
    cr_expect_eq(b.st.resident_tokens, a.st.resident_tokens, "%s", nm);
    cr_expect_eq(b.st.fetched_tokens, a.st.fetched_tokens, "%s", nm);
    /* (b) copies counted where they happen = the accounted fetch. */
    cr_expect_eq(b.st.pool_fetched_tokens, b.st.fetched_tokens, "%s@%d: measured %g accounted %g",
                 nm, budget, b.st.pool_fetched_tokens, b.st.fetched_tokens);
    /* (c) keys held in slots = accounted resident keys; whole slots hold at
     * most one partial block per pool per step more; the mean fits the
     * allocation. */
    const double tok_bytes = 2.0 * hp->head_dim * sizeof(float);
    const double slot_bytes = 16 * tok_bytes, pools = (double)hp->n_layer * hp->n_head_kv;
    cr_expect_eq(b.st.hot_tokens, b.st.resident_tokens, "%s", nm);
    cr_expect_geq(b.st.hot_slot_bytes, b.st.hot_tokens * tok_bytes, "%s", nm);
    cr_expect_lt(b.st.hot_slot_bytes - b.st.hot_tokens * tok_bytes, STEPS * pools * slot_bytes,
                 "%s", nm);
    cr_expect_leq(b.st.hot_slot_bytes / b.st.steps, b.st.hot_capacity_bytes, "%s", nm);
    cr_expect_gt(b.st.hot_capacity_bytes, 0.0);
    /* The first step fills the pool; every step writes its newest key. */
    cr_expect_gt(b.st.pool_fill_tokens, 0.0, "%s", nm);
    cr_expect_eq(b.st.pool_written_tokens, STEPS * pools, "%s", nm);
    /* (d) eviction methods fetch nothing after the first step. */
    if (sel->kind == AP_SEL_EVICTION)
        cr_expect_eq(b.st.pool_fetched_tokens, 0.0, "%s fetched %g", nm, b.st.pool_fetched_tokens);
    printf("hotpool %-10s @%4d: resident %.0f tok, slots %.0f B (cap %.0f B), fetched %.0f, "
           "fill %.0f\n",
           nm, budget, b.st.resident_tokens / STEPS, b.st.hot_slot_bytes / STEPS,
           b.st.hot_capacity_bytes, b.st.pool_fetched_tokens, b.st.pool_fill_tokens);
    free(a.logits);
    free(b.logits);
}

/* Budget 176 = sink 64 + local 64 + 3 blocks of ~19 blocks: compressing. */
Test(hotpool, same_decode_and_measured_equals_accounted) {
    ap_synth_ctx f;
    ap_synth_ctx_open(&f, "hotpool", 2);
    const char *names[] = {"streaming", "h2o", "snapkv", "quest", "oracle", "last_step"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const ap_selector *sel = ap_selector_find(names[i]);
        cr_assert(sel, "%s", names[i]);
        check_selector(&f, sel, NULL, AP_KV_PER_QHEAD, 176, 0);
    }
    /* One set per KV head. */
    check_selector(&f, ap_selector_find("quest"), NULL, AP_KV_SUM, 176, 0);
    check_selector(&f, ap_selector_find("h2o"), NULL, AP_KV_SUM, 176, 0);
    /* A budget over the context keeps everything: nothing to fetch later. */
    run_out o;
    run_live(&f, ap_selector_find("quest"), NULL, AP_KV_PER_QHEAD, 4096, 1, 0, &o);
    cr_expect_eq(o.st.pool_fetched_tokens, 0.0);
    cr_expect_eq(o.st.hot_tokens, o.st.full_tokens);
    free(o.logits);
    ap_synth_ctx_close(&f);
}

/* The predictor with cross-token prefetch and calibration steps. */
Test(hotpool, attnpred_with_prefetch) {
    ap_synth_ctx f;
    ap_synth_ctx_open(&f, "hotpool", 2);
    ap_pred_config c;
    ap_pred_config_default(&c);
    ap_predictor *p = NULL;
    ap_runtime *rt = NULL;
    char path[256];
    ap_synth_runtime(&c, 5, "hotpred", path, &p, &rt);
    check_selector(&f, ap_selector_predictor(), rt, AP_KV_PER_QHEAD, 176, 1);
    ap_runtime_free(rt);
    ap_predictor_free(p);
    unlink(path);
    ap_synth_ctx_close(&f);
}

/* Capacity per (layer, KV head): sink 4 + local ceil(64/16) + 1 + group 2 x
 * k_max 3 = 15 slots of 16 keys x 16 dims x K and V; capped at the blocks of
 * the sequence. */
Test(hotpool, capacity_bound) {
    ap_synth_ctx f;
    ap_synth_ctx_open(&f, "hotpool", 1);
    const ap_hparams *hp = ap_model_hparams(f.m);
    cr_assert_eq(hp->n_head / hp->n_head_kv, 2);
    const double slot = 16.0 * hp->head_dim * 2 * sizeof(float);
    const double pools = (double)hp->n_layer * hp->n_head_kv;
    run_out o;
    run_live(&f, ap_selector_find("streaming"), NULL, AP_KV_PER_QHEAD, 176, 1, 0, &o);
    cr_expect_eq(o.st.hot_capacity_bytes, pools * 15 * slot);
    free(o.logits);
    run_live(&f, ap_selector_find("streaming"), NULL, AP_KV_PER_QHEAD, 4096, 1, 0, &o);
    cr_expect_eq(o.st.hot_capacity_bytes, pools * ((NP + STEPS + 15) / 16) * slot);
    free(o.logits);
    ap_synth_ctx_close(&f);
}

/* The task runner fills the memory fields from the pool when it is on. */
Test(hotpool, tasks_measured_vs_accounted) {
    char model[256], tasks[256];
    ap_err err = {0};
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    ap_synth_tmp_path(model, sizeof model, "hptasks", ".gguf");
    ap_synth_tmp_path(tasks, sizeof tasks, "hptasks", ".jsonl");
    cr_assert_eq(ap_synth_model_write(model, &o, &err), AP_OK, "%s", err.msg);
    ap_synth_task_file(tasks, 1, 8, 0);
    ap_tasks_config c;
    ap_tasks_config_default(&c);
    cr_expect_eq(c.hot_pool, 1);
    c.model = model;
    c.tasks_file = tasks;
    c.methods[0] = "streaming";
    c.methods[1] = "quest";
    c.n_methods = 2;
    c.budgets[0] = 160;
    c.n_budgets = 1;
    ap_tasks_result *r[2] = {NULL, NULL};
    for (int hot = 0; hot < 2; hot++) {
        c.hot_pool = hot;
        cr_assert_eq(ap_tasks_run(&c, &r[hot], &err), AP_OK, "%s", err.msg);
    }
    const double pools = (double)r[1]->n_layer * r[1]->n_head_kv;
    const double slot = 16.0 * r[1]->head_dim * 2 * sizeof(float);
    cr_expect_eq(ap_tasks_run_at(r[1], 0, 0, 0)->kv_measured, 0, "full KV is accounted");
    for (int m = 1; m < 3; m++) {
        ap_task_run *acc = ap_tasks_run_at(r[0], 0, m, 0), *mes = ap_tasks_run_at(r[1], 0, m, 0);
        cr_expect_eq(acc->kv_measured, 0);
        cr_expect_eq(acc->hot_capacity_bytes, 0.0);
        cr_expect_eq(mes->kv_measured, 1);
        cr_expect_str_eq(mes->output, acc->output);
        cr_expect_eq(mes->fetch_kv_bytes, acc->fetch_kv_bytes, "%s", r[1]->methods[m].name);
        cr_expect_geq(mes->resident_kv_bytes, acc->resident_kv_bytes);
        cr_expect_leq(mes->resident_kv_bytes, acc->resident_kv_bytes + pools * slot);
        cr_expect_leq(mes->resident_kv_bytes, mes->hot_capacity_bytes);
        cr_expect_eq(mes->full_kv_bytes, acc->full_kv_bytes);
    }
    ap_tasks_result_free(r[0]);
    ap_tasks_result_free(r[1]);
    unlink(model);
    unlink(tasks);
}
