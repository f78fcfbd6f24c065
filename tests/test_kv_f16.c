/* The f16 KV cache (ap_model_opts.kv_type = AP_KV_F16): its logits stay
 * within the f16 tolerance of the float32 cache's, every attention path of
 * the engine (streaming decode, BLAS decode through the float32 staging
 * copy, the policy's sparse pass, pages) reads the same rounded values, and
 * the hot pool holds the cache's type. Same tiny random model as
 * tests/test_hotpool.c. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "capture/gguf.h"
#include "capture/model.h"
#include "common/tolerance.h"
#include "eval/live.h"
#include "eval/selectors.h"
#include "helpers/keep_all.h"
#include "helpers/synth_ctx.h"

#define NP 150
#define STEPS 12

/* The fixture's model twice: float32 cache (f.m, f.c) and f16 (m16, c16). */
typedef struct {
    ap_synth_ctx f;
    ap_model *m16;
    ap_ctx *c16;
    int V;
} pair_t;

static void pair_open(pair_t *p, const char *tag) {
    ap_err err = {0};
    ap_synth_ctx_open(&p->f, tag, 2);
    ap_model_opts o;
    ap_model_opts_default(&o);
    o.kv_type = AP_KV_F16;
    cr_assert_eq(ap_model_load_opts(p->f.g, &o, &p->m16, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_ctx_create(p->m16, 512, 2, &p->c16, &err), AP_OK, "%s", err.msg);
    p->V = ap_model_hparams(p->m16)->n_vocab;
}

static void pair_close(pair_t *p) {
    ap_ctx_free(p->c16);
    ap_model_free(p->m16);
    ap_synth_ctx_close(&p->f);
}

/* Prefill NP tokens (its logits at out), then STEPS forced decode steps
 * under pol (NULL: dense) into out + V .. ; [STEPS + 1][V] in all. */
static void decode(ap_ctx *c, int V, const ap_kv_policy *pol, float *out) {
    ap_err err = {0};
    int32_t ids[NP], toks[STEPS];
    ap_synth_prompt(ids, NP, 5);
    ap_synth_prompt(toks, STEPS, 9);
    ap_ctx_reset(c);
    cr_assert_eq(ap_ctx_set_kv_policy(c, NULL, &err), AP_OK);
    cr_assert_eq(ap_ctx_eval(c, ids, NP, out, 0, NULL, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_ctx_set_kv_policy(c, pol, &err), AP_OK, "%s", err.msg);
    for (int i = 0; i < STEPS; i++)
        cr_assert_eq(ap_ctx_eval(c, &toks[i], 1, out + (size_t)(i + 1) * V, 0, NULL, &err), AP_OK,
                     "step %d: %s", i, err.msg);
    cr_assert_eq(ap_ctx_set_kv_policy(c, NULL, &err), AP_OK);
}

Test(kv_f16, logits_within_the_f16_tolerance_of_the_f32_cache) {
    pair_t p;
    pair_open(&p, "kvf16a");
    const int V = p.V;
    float *a = malloc(sizeof(float) * V * (STEPS + 1)), *b = malloc(sizeof(float) * V * (STEPS + 1));
    cr_assert(a && b);
    decode(p.f.c, V, NULL, a);
    decode(p.c16, V, NULL, b);
    double worst = 0.0;
    for (int i = 0; i <= STEPS; i++) {
        double rel = ap_rel_l2_f32(b + (size_t)i * V, a + (size_t)i * V, V);
        worst = rel > worst ? rel : worst;
        cr_expect_leq(rel, AP_TOL_KV_F16_LOGITS_REL_L2, "row %d: rel L2 %g", i, rel);
    }
    /* Rounding the cache must show: equal logits would mean f32 was read. */
    cr_expect_gt(worst, 0.0, "f16 cache gave the f32 cache's logits exactly");
    cr_log_info("f16 vs f32 KV cache, synthetic model: worst logits rel L2 %.3g", worst);
    free(a);
    free(b);
    pair_close(&p);
}

Test(kv_f16, every_attention_path_reads_the_same_cache) {
    pair_t p;
    pair_open(&p, "kvf16b");
    ap_err err = {0};
    const int V = p.V, R = STEPS + 1;
    const ap_hparams *hp = ap_model_hparams(p.m16);
    float *ref = malloc(sizeof(float) * V * R), *x = malloc(sizeof(float) * V * R);
    ap_keep_all *k = ap_keep_all_create(hp->n_head_kv, hp->head_dim);
    cr_assert(ref && x);
    decode(p.c16, V, NULL, ref); /* streaming decode kernels */
    /* BLAS decode attention: the float32 staging copy of the f16 cache. */
    cr_assert_eq(ap_ctx_set_exec(p.c16, 0, 1, &err), AP_OK, "%s", err.msg);
    decode(p.c16, V, NULL, x);
    cr_assert_eq(ap_ctx_set_exec(p.c16, 0, 0, &err), AP_OK, "%s", err.msg);
    for (int i = 1; i < R; i++)
        cr_expect_leq(ap_rel_l2_f32(x + (size_t)i * V, ref + (size_t)i * V, V),
                      AP_TOL_LOGITS_REL_L2, "BLAS decode step %d", i - 1);
    /* Sparse pass keeping every key: contiguous, measuring, and paged. */
    for (int mode = 0; mode < 3; mode++) {
        ap_kv_policy pol = ap_keep_all_policy(k, mode == 2);
        k->want = mode == 1 ? AP_KV_MEASURE : 0;
        decode(p.c16, V, &pol, x);
        for (int i = 1; i < R; i++)
            cr_expect_leq(ap_rel_l2_f32(x + (size_t)i * V, ref + (size_t)i * V, V),
                          AP_TOL_LOGITS_REL_L2, "policy mode %d step %d", mode, i - 1);
    }
    cr_expect_eq(k->pages_calls, STEPS * hp->n_layer, "the paged mode read the pages");
    cr_expect_eq(k->measured, STEPS * hp->n_layer, "the measuring mode measured");
    ap_keep_all_free(k);
    free(ref);
    free(x);
    pair_close(&p);
}

/* Quest through the live policy with the hot pool: the pool holds binary16
 * slots (half the f32 pool's bytes for the same slots) and decodes what the
 * contiguous f16 cache decodes. */
Test(kv_f16, hot_pool_holds_the_cache_type) {
    pair_t p;
    pair_open(&p, "kvf16c");
    ap_err err = {0};
    const ap_hparams *hp = ap_model_hparams(p.m16);
    const int V = p.V;
    enum { N = 300, S = 16 };
    int32_t ids[N];
    ap_synth_prompt(ids, N, 11);
    float *lg = malloc(sizeof(float) * V);
    int32_t toks[2][3][S];
    ap_live_stats st[2][3];
    cr_assert(lg);
    for (int t16 = 0; t16 < 2; t16++) {
        ap_ctx *c = t16 ? p.c16 : p.f.c;
        for (int hot = 0; hot < 3; hot++) {
            ap_live_prefill *pf = NULL;
            cr_assert_eq(ap_live_prefill_create(hp, 16, 64, N, S, &pf, &err), AP_OK, "%s",
                         err.msg);
            ap_ctx_reset(c);
            cr_assert_eq(ap_ctx_eval(c, ids, N, lg, 0, ap_live_prefill_observer(pf), &err), AP_OK,
                         "%s", err.msg);
            ap_sel_params prm = {.calib = 5, .kv_mode = AP_KV_PER_QHEAD, .snapkv_window = 32,
                                 .snapkv_pool = 1};
            /* hot 2: a pool declared with the other type than the cache. */
            ap_live_opts lo = {.budget = 192, .sink = 64, .local = 64, .min_candidates = 3,
                               .hot_pool = hot != 0,
                               .kv_type = (t16 ^ (hot == 2)) ? AP_KV_F16 : AP_KV_F32};
            ap_live *lv = NULL;
            cr_assert_eq(ap_live_create(pf, ap_selector_find("quest"), &prm, &lo, &lv, &err),
                         AP_OK, "%s", err.msg);
            cr_assert_eq(ap_ctx_set_kv_policy(c, ap_live_policy(lv), &err), AP_OK, "%s",
                         err.msg);
            int32_t t = ap_synth_argmax(lg, V);
            ap_status last = AP_OK;
            for (int i = 0; i < S && last == AP_OK; i++) {
                toks[t16][hot][i] = t;
                last = ap_ctx_eval(c, &t, 1, lg, 0, ap_live_observer(lv), &err);
                t = ap_synth_argmax(lg, V);
            }
            if (hot == 2) {
                cr_expect_eq(last, AP_ERR_ARG, "a pool of the wrong type must be refused");
                cr_expect(strstr(err.msg, "hot pool") != NULL, "%s", err.msg);
            } else {
                cr_expect_eq(last, AP_OK, "%s", err.msg);
                ap_live_get_stats(lv, &st[t16][hot]);
            }
            ap_ctx_set_kv_policy(c, NULL, &err);
            ap_live_free(lv);
            ap_live_prefill_free(pf);
        }
        /* Pool and contiguous cache decode the same tokens. */
        cr_expect_arr_eq(toks[t16][0], toks[t16][1], sizeof toks[t16][0], "type %d", t16);
    }
    /* The same slots in half the bytes; slot use counted in f16 slots. */
    const double slot16 = 2.0 * 16 * hp->head_dim * 2;
    cr_expect_gt(st[0][1].hot_capacity_bytes, 0.0);
    cr_expect_eq(st[1][1].hot_capacity_bytes * 2.0, st[0][1].hot_capacity_bytes);
    cr_expect_gt(st[1][1].hot_slot_bytes, 0.0);
    cr_expect_eq(fmod(st[1][1].hot_slot_bytes, slot16), 0.0, "%g", st[1][1].hot_slot_bytes);
    cr_expect_leq(st[1][1].hot_slot_bytes, st[1][1].hot_capacity_bytes * st[1][1].steps);
    free(lg);
    pair_close(&p);
}

Test(kv_f16, unknown_types_are_refused) {
    ap_synth_ctx f;
    ap_synth_ctx_open(&f, "kvf16d", 1);
    ap_err err = {0};
    ap_model_opts o;
    ap_model_opts_default(&o);
    o.kv_type = (ap_kv_type)7;
    ap_model *m = NULL;
    cr_expect_eq(ap_model_load_opts(f.g, &o, &m, &err), AP_ERR_ARG);
    cr_expect(strstr(err.msg, "KV cache type") != NULL, "%s", err.msg);
    cr_expect_null(m);
    ap_kv_type t = AP_KV_F32;
    cr_expect_eq(ap_kv_type_parse("f16", &t), 0);
    cr_expect_eq(t, AP_KV_F16);
    cr_expect_eq(ap_kv_type_parse("bf16", &t), -1);
    cr_expect_eq(ap_kv_type_parse("F32", &t), -1);
    ap_synth_ctx_close(&f);
}
