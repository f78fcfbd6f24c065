/* Replay reports (eval/report.c): a result built by hand, with cell means
 * chosen as multiples of 1/16 so they are exact in binary and print without
 * rounding ambiguity, is written as JSON, Markdown and PNG into a fresh
 * temporary directory and read back: JSON keys and values (null for NaN,
 * compression, the summary's best heuristic and gains), the Markdown rows,
 * the PNG headers and the heatmap's orientation and diverging colours, and
 * the error path for an unwritable destination. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <png.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/plot.h"
#include "common/util.h"
#include "eval/replay.h"
#include "helpers/png_probe.h"
#include "helpers/synth_trace.h"

#define N_LAYER 4
#define N_HEAD 3
#define N_BUDGET 2
#define N_METHOD 6

enum { M_ORACLE, M_STREAMING, M_H2O, M_QUEST, M_PRED, M_SNAPKV };

/* Mean recovery per (method, budget); best heuristic is h2o at 256 and
 * quest at 512, so the summary has to compare, not pick a fixed method.
 * snapkv was "not run" (n = 0) and must come out as null / n/a. */
static const double k_rec[N_METHOD][N_BUDGET] = {
    {0.9375, 0.9375}, {0.5625, 0.625}, {0.75, 0.75}, {0.6875, 0.8125}, {0.8125, 0.875}, {0, 0}};
static const double k_hit[N_METHOD][N_BUDGET] = {
    {1.0, 1.0}, {0.375, 0.5}, {0.5, 0.5625}, {0.4375, 0.625}, {0.625, 0.6875}, {0, 0}};
static const int k_budgets[N_BUDGET] = {256, 512};
/* Gain of the predictor over the best heuristic per layer, in the layer x
 * head matrices: layer 0 is dense (NaN everywhere), 1 gains, 3 loses. */
static const double k_layer_gain[N_LAYER] = {NAN, 0.125, 0.0, -0.125};

static char g_dir[1024];

static void make_dir(void) {
    const char *t = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/ap_report_XXXXXX", t && *t ? t : "/tmp");
    cr_assert_not_null(mkdtemp(g_dir), "mkdtemp failed");
}

static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[2048];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            remove_tree(p);
        else
            remove(p);
    }
    closedir(d);
    rmdir(dir);
}

static void clean_dir(void) { remove_tree(g_dir); }

TestSuite(report, .init = make_dir, .fini = clean_dir);

static void set_method(ap_replay_method *m, const char *name, const char *label, ap_sel_kind kind,
                       int is_pred, const char *source) {
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->label, sizeof m->label, "%s", label);
    m->kind = kind;
    m->is_predictor = is_pred;
    snprintf(m->source, sizeof m->source, "%s", source);
}

/* Two samples v -/+ d: Welford's mean is exactly v for dyadic v and d. */
static void add_pair(ap_meanci *a, double v, double d) {
    ap_meanci_init(a);
    ap_meanci_add(a, v - d);
    ap_meanci_add(a, v + d);
}

/* The caller frees it with free_result (not ap_replay_result_free: this
 * test owns what it allocated). */
static ap_replay_result *build_result(void) {
    ap_replay_result *r = calloc(1, sizeof *r);
    cr_assert_not_null(r);
    ap_replay_config_default(&r->config);
    r->config.traces[0] = "traces/a.h5";
    r->config.traces[1] = "traces/b.h5";
    r->config.n_traces = 2;
    r->config.predictors[0] = "pred/p.safetensors";
    r->config.predictor_names[0] = NULL;
    r->config.n_predictors = 1;
    snprintf(r->predictor_names[0], sizeof r->predictor_names[0], "attnpred");
    r->config.sink_tokens = 64;
    r->config.local_tokens = 64;
    r->config.calib = 5;
    r->config.min_candidates = 3;
    r->config.kv_mode = AP_KV_PER_QHEAD;
    r->config.n_dense_layers = 1;
    r->config.dense_layers[0] = 0;
    r->config.max_seqs = 0;
    r->config.max_steps = 7;
    r->n_layer = N_LAYER;
    r->n_head = N_HEAD;
    r->n_head_kv = 1;
    r->head_dim = 64;
    r->block = 16;
    r->n_seq = 3;
    r->n_decode_steps = 21;
    /* compression (context / kept tokens) 3.2x at 256, 2.0x at 512; budget
     * ratio (context / budget) 4.0x and 2.0x */
    r->mean_context = 1024.0;
    r->mean_kept[0] = 320.0;
    r->mean_kept[1] = 512.0;
    r->max_context = 1500.0;
    r->seconds = 2.5;
    r->n_skipped_nonfinite = 0;
    r->n_budgets = N_BUDGET;
    for (int b = 0; b < N_BUDGET; b++) r->config.budgets[b] = r->budgets[b] = k_budgets[b];
    r->config.n_budgets = N_BUDGET;
    r->n_methods = N_METHOD;
    set_method(&r->methods[M_ORACLE], "oracle", "Oracle", AP_SEL_BOUND, 0, "");
    set_method(&r->methods[M_STREAMING], "streaming", "StreamingLLM", AP_SEL_EVICTION, 0, "");
    set_method(&r->methods[M_H2O], "h2o", "H2O", AP_SEL_EVICTION, 0, "");
    set_method(&r->methods[M_QUEST], "quest", "Quest", AP_SEL_RETRIEVAL, 0, "");
    set_method(&r->methods[M_PRED], "attnpred", "AttentionPredictor", AP_SEL_RETRIEVAL, 1,
               "pred/p.safetensors");
    set_method(&r->methods[M_SNAPKV], "snapkv", "SnapKV", AP_SEL_EVICTION, 0, "");
    for (int m = 0; m < N_METHOD; m++) {
        r->pred_naive_macs[m] = r->pred_run_macs[m] = r->pred_us_per_step_head[m] = NAN;
    }
    r->pred_naive_macs[M_PRED] = 20000;
    r->pred_run_macs[M_PRED] = 5000;
    r->pred_us_per_step_head[M_PRED] = 1.5;

    r->cells = calloc((size_t)N_METHOD * N_BUDGET, sizeof *r->cells);
    cr_assert_not_null(r->cells);
    for (int m = 0; m < N_METHOD; m++)
        for (int b = 0; b < N_BUDGET; b++) {
            ap_replay_cell *c = ap_replay_cell_at(r, m, b);
            double *lh = malloc(sizeof(double) * N_LAYER * N_HEAD);
            cr_assert_not_null(lh);
            c->layer_head_recovery = lh;
            if (m == M_SNAPKV) { /* not run */
                ap_meanci_init(&c->recovery);
                ap_meanci_init(&c->hit_rate);
                ap_meanci_init(&c->ratio);
                for (int i = 0; i < N_LAYER * N_HEAD; i++) lh[i] = NAN;
                continue;
            }
            add_pair(&c->recovery, k_rec[m][b], 1.0 / 64);
            add_pair(&c->hit_rate, k_hit[m][b], 1.0 / 128);
            add_pair(&c->ratio, k_rec[m][b] / k_rec[M_ORACLE][b], 1.0 / 256);
            c->n = 120;
            c->n_bypass = 6;
            for (int l = 0; l < N_LAYER; l++)
                for (int h = 0; h < N_HEAD; h++)
                    lh[l * N_HEAD + h] = l == 0 ? NAN : 0.5 + 0.0625 * h;
        }
    /* The predictor's matrices differ from every heuristic's by the layer
     * gain, so whichever heuristic is best the map shows that gain. */
    for (int b = 0; b < N_BUDGET; b++)
        for (int l = 0; l < N_LAYER; l++)
            for (int h = 0; h < N_HEAD; h++)
                ap_replay_cell_at(r, M_PRED, b)->layer_head_recovery[l * N_HEAD + h] =
                    0.5 + 0.0625 * h + k_layer_gain[l];
    return r;
}

static void free_result(ap_replay_result *r) {
    if (!r) return;
    for (int i = 0; i < r->n_methods * r->n_budgets; i++) free(r->cells[i].layer_head_recovery);
    free(r->cells);
    free(r);
}

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_dir, name); }

static cJSON *load_json(const char *path) {
    char *text = NULL;
    size_t len = 0;
    ap_err err = {0};
    cr_assert_eq(ap_read_file(path, &text, &len, &err), AP_OK, "%s", err.msg);
    cJSON *j = cJSON_Parse(text);
    free(text);
    cr_assert_not_null(j, "%s does not parse as JSON", path);
    return j;
}

static const cJSON *get(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    cr_assert_not_null(v, "missing key \"%s\"", key);
    return v;
}

static double num(const cJSON *o, const char *key) {
    const cJSON *v = get(o, key);
    cr_assert(cJSON_IsNumber(v), "\"%s\" is not a number", key);
    return v->valuedouble;
}

static const char *str(const cJSON *o, const char *key) {
    const cJSON *v = get(o, key);
    cr_assert(cJSON_IsString(v), "\"%s\" is not a string", key);
    return v->valuestring;
}

static const cJSON *result_rec(const cJSON *results, const char *method, int budget) {
    const cJSON *e;
    cJSON_ArrayForEach(e, results) {
        if (!strcmp(str(e, "method"), method) && (int)num(e, "budget") == budget) return e;
    }
    cr_assert_fail("no results record for %s at %d", method, budget);
    return NULL;
}

/* cJSON prints doubles so they read back exactly (%.15g, else %.17g), so
 * the values written must equal the result's own, bit for bit. */
Test(report, json_keys_values_and_summary) {
    ap_replay_result *r = build_result();
    char path[1200];
    ap_err err = {0};
    path_in(path, sizeof path, "replay.json");
    cr_assert_eq(ap_replay_write_json(r, path, &err), AP_OK, "%s", err.msg);
    cJSON *j = load_json(path);

    cr_assert_str_eq(str(j, "format"), "attnpred-replay");
    cr_assert_eq(num(j, "version"), 1);
    const cJSON *tr = get(j, "traces");
    cr_assert_eq(cJSON_GetArraySize(tr), 2);
    cr_assert_str_eq(cJSON_GetArrayItem(tr, 1)->valuestring, "traces/b.h5");
    const cJSON *pr = cJSON_GetArrayItem(get(j, "predictors"), 0);
    cr_assert_str_eq(str(pr, "path"), "pred/p.safetensors");
    cr_assert_str_eq(str(pr, "name"), "attnpred");
    cr_assert(cJSON_IsNull(get(pr, "label")));

    const cJSON *cf = get(j, "config");
    cr_assert_eq(cJSON_GetArraySize(get(cf, "budgets")), 2);
    cr_assert_eq(cJSON_GetArrayItem(get(cf, "budgets"), 1)->valuedouble, 512);
    cr_assert_eq(num(cf, "sink"), 64);
    cr_assert_eq(num(cf, "local"), 64);
    cr_assert_eq(num(cf, "calib"), 5);
    cr_assert_str_eq(str(cf, "kv_mode"), "per_qhead");
    cr_assert_eq(cJSON_GetArraySize(get(cf, "dense_layers")), 1);
    cr_assert_eq(num(cf, "min_candidates"), 3);
    cr_assert_eq(num(cf, "max_seqs"), 0);
    cr_assert_eq(num(cf, "max_steps"), 7);
    const cJSON *mo = get(j, "model");
    cr_assert_eq(num(mo, "n_layer"), N_LAYER);
    cr_assert_eq(num(mo, "n_head"), N_HEAD);
    cr_assert_eq(num(mo, "n_head_kv"), 1);
    cr_assert_eq(num(mo, "head_dim"), 64);
    cr_assert_eq(num(mo, "block"), 16);
    cr_assert_eq(num(j, "n_seq"), 3);
    cr_assert_eq(num(j, "n_decode_steps"), 21);
    cr_assert_eq(num(j, "mean_context"), 1024.0);
    cr_assert_eq(num(j, "max_context"), 1500.0);
    cr_assert_eq(num(j, "seconds"), 2.5);
    cr_assert_eq(num(j, "n_skipped_nonfinite"), 0);

    /* methods: kind names, predictor cost only on the predictor */
    const cJSON *ms = get(j, "methods");
    cr_assert_eq(cJSON_GetArraySize(ms), N_METHOD);
    const cJSON *mh = cJSON_GetArrayItem(ms, M_H2O);
    cr_assert_str_eq(str(mh, "name"), "h2o");
    cr_assert_str_eq(str(mh, "kind"), "eviction");
    cr_assert(cJSON_IsFalse(get(mh, "is_predictor")));
    cr_assert_null(cJSON_GetObjectItemCaseSensitive(mh, "naive_macs_per_step_head"));
    cr_assert_str_eq(str(cJSON_GetArrayItem(ms, M_ORACLE), "kind"), "bound");
    const cJSON *mp = cJSON_GetArrayItem(ms, M_PRED);
    cr_assert_str_eq(str(mp, "kind"), "retrieval");
    cr_assert(cJSON_IsTrue(get(mp, "is_predictor")));
    cr_assert_str_eq(str(mp, "source"), "pred/p.safetensors");
    cr_assert_str_eq(str(mp, "label"), "AttentionPredictor");
    cr_assert_eq(num(mp, "naive_macs_per_step_head"), 20000);
    cr_assert_eq(num(mp, "run_macs_per_step_head"), 5000);
    cr_assert_eq(num(mp, "us_per_step_head"), 1.5);

    /* results: one record per (method, budget) */
    const cJSON *res = get(j, "results");
    cr_assert_eq(cJSON_GetArraySize(res), N_METHOD * N_BUDGET);
    for (int m = 0; m < N_METHOD; m++)
        for (int b = 0; b < N_BUDGET; b++) {
            const ap_replay_cell *c = ap_replay_cell_at(r, m, b);
            const cJSON *e = result_rec(res, r->methods[m].name, k_budgets[b]);
            cr_assert_str_eq(str(e, "kind"), m == M_ORACLE ? "bound"
                                             : m == M_QUEST || m == M_PRED ? "retrieval"
                                                                           : "eviction");
            cr_assert_eq(num(e, "compression"), 1024.0 / r->mean_kept[b]);
            cr_assert_eq(num(e, "budget_ratio"), 1024.0 / k_budgets[b]);
            cr_assert_eq(num(e, "n_bypass"), m == M_SNAPKV ? 0 : 6);
            cr_assert_eq(num(e, "n"), m == M_SNAPKV ? 0 : 120);
            if (m == M_SNAPKV) { /* nothing counted: null, never a made-up 0 */
                cr_assert(cJSON_IsNull(get(e, "recovery")));
                cr_assert(cJSON_IsNull(get(e, "recovery_ci95")));
                cr_assert(cJSON_IsNull(get(e, "hit_rate")));
                cr_assert(cJSON_IsNull(get(e, "ratio")));
                continue;
            }
            cr_assert_eq(num(e, "recovery"), k_rec[m][b]);
            cr_assert_eq(num(e, "hit_rate"), k_hit[m][b]);
            cr_assert_eq(num(e, "recovery_ci95"), ap_meanci_half95(&c->recovery));
            cr_assert_eq(num(e, "hit_rate_ci95"), ap_meanci_half95(&c->hit_rate));
            cr_assert_eq(num(e, "ratio"), c->ratio.mean);
            cr_assert(num(e, "recovery_ci95") > 0);
            const cJSON *lh = get(e, "layer_head");
            cr_assert_eq(cJSON_GetArraySize(lh), N_LAYER);
            for (int l = 0; l < N_LAYER; l++) {
                const cJSON *row = cJSON_GetArrayItem(lh, l);
                cr_assert_eq(cJSON_GetArraySize(row), N_HEAD);
                for (int h = 0; h < N_HEAD; h++) {
                    const cJSON *v = cJSON_GetArrayItem(row, h);
                    double want = c->layer_head_recovery[l * N_HEAD + h];
                    if (isnan(want))
                        cr_assert(cJSON_IsNull(v), "layer %d head %d: NaN must be null", l, h);
                    else
                        cr_assert_eq(v->valuedouble, want, "layer %d head %d", l, h);
                }
            }
        }

    /* summary: the best heuristic changes with the budget */
    const cJSON *sm = get(j, "summary");
    cr_assert_eq(cJSON_GetArraySize(sm), N_BUDGET);
    const char *want_heur[N_BUDGET] = {"h2o", "quest"};
    const int heur_idx[N_BUDGET] = {M_H2O, M_QUEST};
    for (int b = 0; b < N_BUDGET; b++) {
        const cJSON *s = cJSON_GetArrayItem(sm, b);
        cr_assert_eq(num(s, "budget"), k_budgets[b]);
        cr_assert_eq(num(s, "compression"), 1024.0 / r->mean_kept[b]);
        cr_assert_eq(num(s, "budget_ratio"), 1024.0 / k_budgets[b]);
        cr_assert_eq(num(s, "kept_tokens"), r->mean_kept[b]);
        const cJSON *bh = get(s, "best_heuristic");
        cr_assert_str_eq(str(bh, "method"), want_heur[b]);
        cr_assert_eq(num(bh, "recovery"), k_rec[heur_idx[b]][b]);
        cr_assert_str_eq(str(get(s, "oracle"), "method"), "oracle");
        cr_assert_eq(num(get(s, "oracle"), "recovery"), k_rec[M_ORACLE][b]);
        cr_assert_str_eq(str(s, "best_predictor"), "attnpred");
        const cJSON *ps = get(s, "predictors");
        cr_assert_eq(cJSON_GetArraySize(ps), 1);
        const cJSON *p = cJSON_GetArrayItem(ps, 0);
        cr_assert_str_eq(str(p, "method"), "attnpred");
        cr_assert_eq(num(p, "recovery"), k_rec[M_PRED][b]);
        cr_assert_eq(num(p, "gain_over_best_heuristic"), k_rec[M_PRED][b] - k_rec[heur_idx[b]][b]);
        cr_assert_eq(num(p, "gap_to_oracle"), k_rec[M_ORACLE][b] - k_rec[M_PRED][b]);
    }
    cJSON_Delete(j);
    free_result(r);
}

/* No NaN or Inf may reach the JSON text as a number (JSON cannot hold them). */
Test(report, json_nonfinite_header_values_are_null) {
    ap_replay_result *r = build_result();
    r->mean_context = NAN;
    r->seconds = INFINITY;
    r->pred_us_per_step_head[M_PRED] = NAN;
    char path[1200];
    ap_err err = {0};
    path_in(path, sizeof path, "nan.json");
    cr_assert_eq(ap_replay_write_json(r, path, &err), AP_OK, "%s", err.msg);
    cJSON *j = load_json(path);
    cr_assert(cJSON_IsNull(get(j, "mean_context")));
    cr_assert(cJSON_IsNull(get(j, "seconds")));
    cr_assert(cJSON_IsNull(get(cJSON_GetArrayItem(get(j, "methods"), M_PRED), "us_per_step_head")));
    cr_assert(cJSON_IsNull(get(cJSON_GetArrayItem(get(j, "results"), 0), "compression")));
    cJSON_Delete(j);
    free_result(r);
}

static char *read_text(const char *path) {
    char *text = NULL;
    size_t len = 0;
    ap_err err = {0};
    cr_assert_eq(ap_read_file(path, &text, &len, &err), AP_OK, "%s", err.msg);
    return text;
}

#define ASSERT_HAS(text, s) cr_assert_not_null(strstr((text), (s)), "missing in the Markdown: %s", (s))

/* Means are multiples of 1/16 (two exact decimals in percent); the CI of
 * two samples v -/+ d is 1.96 * d, so 3.06 (d = 1/64) and 1.53 (d = 1/128). */
Test(report, markdown_tables_summary_and_cost) {
    ap_replay_result *r = build_result();
    char path[1200];
    ap_err err = {0};
    path_in(path, sizeof path, "replay.md");
    cr_assert_eq(ap_replay_write_md(r, path, &err), AP_OK, "%s", err.msg);
    char *md = read_text(path);

    ASSERT_HAS(md, "| method | kind | 256 (3.2x) | 512 (2.0x) |");
    ASSERT_HAS(md, "| 256 | 320.0 | 3.2x | 4.0x |");
    ASSERT_HAS(md, "| 512 | 512.0 | 2.0x | 2.0x |");
    /* recovery table: the best non-oracle method of each column in bold */
    ASSERT_HAS(md, "| Oracle (`oracle`) | bound | 93.75 ± 3.06 | 93.75 ± 3.06 |");
    ASSERT_HAS(md, "| H2O (`h2o`) | eviction | 75.00 ± 3.06 | 75.00 ± 3.06 |");
    ASSERT_HAS(md, "| Quest (`quest`) | retrieval | 68.75 ± 3.06 | 81.25 ± 3.06 |");
    ASSERT_HAS(md, "| AttentionPredictor (`attnpred`) | retrieval | **81.25 ± 3.06** | **87.50 ± 3.06** |");
    ASSERT_HAS(md, "| SnapKV (`snapkv`) | eviction | n/a | n/a |");
    /* hit-rate table */
    ASSERT_HAS(md, "| StreamingLLM (`streaming`) | eviction | 37.50 ± 1.53 | 50.00 ± 1.53 |");
    ASSERT_HAS(md, "| AttentionPredictor (`attnpred`) | retrieval | **62.50 ± 1.53** | **68.75 ± 1.53** |");
    /* the hit-rate table comes after the recovery table */
    const char *rec_h = strstr(md, "## Attention recovery"), *hit_h = strstr(md, "## Hit rate");
    cr_assert(rec_h && hit_h && rec_h < hit_h);
    cr_assert(strstr(md, "37.50 ± 1.53") > hit_h);
    /* summary lines */
    ASSERT_HAS(md, "- **B = 256 (3.2x)**: best heuristic `h2o` 75.00%; oracle 93.75%; `attnpred` 81.25% "
                   "(+6.25 vs best heuristic, 12.50 below the oracle)");
    ASSERT_HAS(md, "- **B = 512 (2.0x)**: best heuristic `quest` 81.25%; oracle 93.75%; `attnpred` 87.50% "
                   "(+6.25 vs best heuristic, 6.25 below the oracle)");
    /* predictor cost */
    ASSERT_HAS(md, "| AttentionPredictor (`attnpred`) | 20000 | 5000 | 0.250 | 1.500 |");
    ASSERT_HAS(md, "`pred/p.safetensors`");
    ASSERT_HAS(md, "- n = 120 (decode step, head) pairs per cell, 5.00% bypassed");
    cr_assert_null(strstr(md, "nan"), "a NaN leaked into the Markdown");
    free(md);
    free_result(r);
}

/* Compression from a real replay, by hand: one sequence of a 300-token
 * prompt and 8 decode steps (contexts 301..308, mean 304.5), block 16, sink
 * and local 64. Candidates W = ceil(q / 16) - 8: 11 for q = 300..304, 12
 * for q = 305..307.
 *   B = 256: k = 8 < W: 256 tokens kept every step; both ratios 304.5 / 256.
 *   B = 304: k = 11: all 11 candidates of the first 5 steps (their whole
 *     context, 301..305), 304 of the last 3: 2427 / 8 tokens kept, so
 *     compression 304.5 / 303.375 while the budget ratio is 304.5 / 304.
 *   B = 4096, above the context: everything kept, compression exactly 1.0x,
 *     budget ratio 304.5 / 4096. */
Test(report, compression_counts_the_kept_set_from_a_replay) {
    char trace[1200], path[1200];
    ap_err err = {0};
    ap_synth_trace_opts o;
    ap_synth_trace_opts_default(&o);
    o.n_seq = 1;
    o.n_gen = 8;
    o.min_prompt = o.max_prompt = 300;
    path_in(trace, sizeof trace, "one.h5");
    cr_assert_eq(ap_synth_trace_write(trace, &o, &err), AP_OK, "%s", err.msg);
    ap_replay_config c;
    ap_replay_config_default(&c);
    c.traces[0] = trace;
    c.n_traces = 1;
    c.methods[0] = "oracle";
    c.n_methods = 1;
    const int budgets[3] = {256, 304, 4096};
    memcpy(c.budgets, budgets, sizeof budgets);
    c.n_budgets = 3;
    ap_replay_result *r = NULL;
    cr_assert_eq(ap_replay_run(&c, &r, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(r->n_decode_steps, 8);
    cr_assert_eq(r->mean_context, 304.5);
    const double kept[3] = {256.0, 2427.0 / 8, 304.5};
    for (int b = 0; b < 3; b++) cr_assert_eq(r->mean_kept[b], kept[b], "budget %d", budgets[b]);

    path_in(path, sizeof path, "one.json");
    cr_assert_eq(ap_replay_write_json(r, path, &err), AP_OK, "%s", err.msg);
    cJSON *j = load_json(path);
    for (int b = 0; b < 3; b++) {
        const cJSON *e = result_rec(get(j, "results"), "oracle", budgets[b]);
        cr_assert_eq(num(e, "compression"), 304.5 / kept[b], "budget %d", budgets[b]);
        cr_assert_eq(num(e, "budget_ratio"), 304.5 / budgets[b], "budget %d", budgets[b]);
        const cJSON *s = cJSON_GetArrayItem(get(j, "summary"), b);
        cr_assert_eq(num(s, "compression"), 304.5 / kept[b]);
        cr_assert_eq(num(s, "kept_tokens"), kept[b]);
    }
    cr_assert_eq(num(result_rec(get(j, "results"), "oracle", 4096), "compression"), 1.0);
    cJSON_Delete(j);

    path_in(path, sizeof path, "one.md");
    cr_assert_eq(ap_replay_write_md(r, path, &err), AP_OK, "%s", err.msg);
    char *md = read_text(path);
    ASSERT_HAS(md, "| method | kind | 256 (1.2x) | 304 (1.0x) | 4096 (1.0x) |");
    ASSERT_HAS(md, "| 304 | 303.4 | 1.0x | 1.0x |");
    ASSERT_HAS(md, "| 4096 | 304.5 | 1.0x | 0.1x |");
    free(md);
    ap_replay_result_free(r);
}

/* ---- PNG ---- */

static void png_size(const char *path, unsigned *w, unsigned *h) {
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    unsigned char hdr[24];
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s was not written", path);
    size_t got = fread(hdr, 1, sizeof hdr, f);
    fclose(f);
    cr_assert_eq(got, sizeof hdr, "%s is too short for a PNG", path);
    cr_assert_eq(memcmp(hdr, sig, 8), 0, "%s has no PNG signature", path);
    cr_assert_eq(memcmp(hdr + 12, "IHDR", 4), 0, "%s: the first chunk is not IHDR", path);
    *w = (unsigned)hdr[16] << 24 | (unsigned)hdr[17] << 16 | (unsigned)hdr[18] << 8 | hdr[19];
    *h = (unsigned)hdr[20] << 24 | (unsigned)hdr[21] << 16 | (unsigned)hdr[22] << 8 | hdr[23];
}

static unsigned char *read_rgb(const char *path, int *w, int *h) {
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    cr_assert(png_image_begin_read_from_file(&pi, path), "%s: %s", path, pi.message);
    pi.format = PNG_FORMAT_RGB;
    unsigned char *px = malloc(PNG_IMAGE_SIZE(pi));
    cr_assert_not_null(px);
    cr_assert(png_image_finish_read(&pi, NULL, px, 0, NULL), "%s: %s", path, pi.message);
    *w = (int)pi.width;
    *h = (int)pi.height;
    return px;
}

static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "cannot open %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

Test(report, png_files_sizes_and_heatmap_colours) {
    ap_replay_result *r = build_result();
    char dir[1200], p[1400];
    ap_err err = {0};
    path_in(dir, sizeof dir, "plots/nested"); /* two missing levels: created */
    cr_assert_eq(ap_replay_write_png(r, dir, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(count_files(dir), 1 + N_BUDGET, "expected the line chart and one heatmap per budget");

    unsigned w, h;
    snprintf(p, sizeof p, "%s/recovery_vs_budget.png", dir);
    png_size(p, &w, &h);
    cr_assert_eq(w, 900);
    cr_assert_eq(h, 560);

    for (int b = 0; b < N_BUDGET; b++) {
        snprintf(p, sizeof p, "%s/gain_heatmap_B%d.png", dir, k_budgets[b]);
        png_size(p, &w, &h);
        /* the map is upscaled to >= 400 px a side, plus title and colour bar */
        cr_assert(w >= 400 + 40 && w <= 2000, "%s: width %u", p, w);
        cr_assert(h >= 400 + 20 && h <= 1000, "%s: height %u", p, h);

        /* Layers are rows from the top: layer 0 (dense, NaN) grey, layer 1
         * (gain) red, layer 2 (no gain) white, layer 3 (loss) blue. Only the
         * left half is scanned: the colour bar sits on the right. */
        int iw, ih;
        unsigned char *px = read_rgb(p, &iw, &ih);
        int grey_y0 = ih, red_y0 = ih, red_y1 = -1, blue_y0 = ih, blue_y1 = -1;
        long n_red = 0, n_blue = 0;
        for (int y = 0; y < ih; y++)
            for (int x = 0; x < iw / 2; x++) {
                const unsigned char *c = px + ((size_t)y * iw + x) * 3;
                if (c[0] == c[1] && c[1] == c[2] && c[0] > 190 && c[0] < 230 && y < grey_y0) grey_y0 = y;
                if (c[0] > 150 && c[1] < 80 && c[2] < 80) {
                    n_red++;
                    if (y < red_y0) red_y0 = y;
                    if (y > red_y1) red_y1 = y;
                }
                if (c[2] > 140 && c[0] < 80) {
                    n_blue++;
                    if (y < blue_y0) blue_y0 = y;
                    if (y > blue_y1) blue_y1 = y;
                }
            }
        free(px);
        cr_assert(n_red > 1000 && n_blue > 1000, "%s: %ld red and %ld blue pixels", p, n_red, n_blue);
        cr_assert(grey_y0 < red_y0, "%s: NaN layer 0 should be the top row", p);
        cr_assert(red_y1 < blue_y0, "%s: gain (layer 1) should be above loss (layer 3)", p);
        /* one layer band each, about a quarter of the map */
        cr_assert(red_y1 - red_y0 < ih / 3 && blue_y1 - blue_y0 < ih / 3, "%s: bands too tall", p);
    }
    free_result(r);
}

/* recovery_vs_budget.png: a labelled tick at every budget (256 has none
 * among the automatic log ticks), and two methods with the same recovery
 * both visible where their lines coincide (colour, marker and dash pattern
 * differ; the later line is dashed): each far beyond its legend sample. */
Test(report, recovery_plot_ticks_every_budget_and_shows_equal_methods) {
    ap_replay_result *r = build_result();
    for (int b = 0; b < N_BUDGET; b++)
        ap_replay_cell_at(r, M_PRED, b)->recovery = ap_replay_cell_at(r, M_QUEST, b)->recovery;
    char dir[1200], p[1400];
    ap_err err = {0};
    path_in(dir, sizeof dir, "equal");
    cr_assert_eq(ap_replay_write_png(r, dir, &err), AP_OK, "%s", err.msg);
    snprintf(p, sizeof p, "%s/recovery_vs_budget.png", dir);
    ap_png_image im;
    char msg[300];
    cr_assert_eq(ap_png_read(p, &im, msg, sizeof msg), 0, "%s", msg);
    cr_assert_eq(ap_png_xticks(&im, 100, NULL, 0), N_BUDGET);
    unsigned char quest[3], pred[3];
    ap_plot_palette_color(M_QUEST, quest);
    ap_plot_palette_color(M_PRED, pred);
    long nq = ap_png_count_near(&im, quest, 40, 0, 0, im.w, im.h);
    long np = ap_png_count_near(&im, pred, 40, 0, 0, im.w, im.h);
    cr_assert_gt(nq, 250, "quest under attnpred: %ld px", nq);
    cr_assert_gt(np, 250, "attnpred: %ld px", np);
    ap_png_free(&im);
    free_result(r);
}

/* Without a predictor there is no gain to map: the line chart only. */
Test(report, png_without_predictor_has_no_heatmap) {
    ap_replay_result *r = build_result();
    r->methods[M_PRED].is_predictor = 0;
    char dir[1200], p[1400];
    ap_err err = {0};
    path_in(dir, sizeof dir, "noplots");
    cr_assert_eq(ap_replay_write_png(r, dir, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(count_files(dir), 1);
    snprintf(p, sizeof p, "%s/recovery_vs_budget.png", dir);
    cr_assert(ap_file_exists(p));
    free_result(r);
}

/* A path whose parent is a regular file cannot be created, even by root
 * (so this works where chmod-based tests would not): each writer must fail
 * with a message naming the path and leave nothing behind. */
Test(report, unwritable_destination_names_path_and_leaves_nothing) {
    ap_replay_result *r = build_result();
    char blocker[1200], json[1300], md[1300], pngdir[1300];
    path_in(blocker, sizeof blocker, "blocker");
    FILE *f = fopen(blocker, "w");
    cr_assert_not_null(f);
    fclose(f);
    snprintf(json, sizeof json, "%s/out.json", blocker);
    snprintf(md, sizeof md, "%s/out.md", blocker);
    snprintf(pngdir, sizeof pngdir, "%s/png", blocker);

    ap_err err = {0};
    cr_assert_eq(ap_replay_write_json(r, json, &err), AP_ERR_IO);
    cr_assert_not_null(strstr(err.msg, json), "message does not name the path: %s", err.msg);
    ap_err_clear(&err);
    cr_assert_eq(ap_replay_write_md(r, md, &err), AP_ERR_IO);
    cr_assert_not_null(strstr(err.msg, md), "message does not name the path: %s", err.msg);
    ap_err_clear(&err);
    cr_assert_eq(ap_replay_write_png(r, pngdir, &err), AP_ERR_IO);
    cr_assert_not_null(strstr(err.msg, pngdir), "message does not name the path: %s", err.msg);
    cr_assert_eq(count_files(g_dir), 1, "only the blocker file may exist");

    /* an existing output is replaced whole, and no temporary file remains */
    char ok[1200];
    path_in(ok, sizeof ok, "again.json");
    cr_assert_eq(ap_replay_write_json(r, ok, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_replay_write_json(r, ok, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(count_files(g_dir), 2);
    free_result(r);
}

Test(report, bad_arguments) {
    ap_replay_result *r = build_result();
    char path[1200];
    ap_err err = {0};
    path_in(path, sizeof path, "x.json");
    cr_assert_eq(ap_replay_write_json(NULL, path, &err), AP_ERR_ARG);
    cr_assert_eq(ap_replay_write_md(r, NULL, &err), AP_ERR_ARG);
    r->n_budgets = 0;
    cr_assert_eq(ap_replay_write_png(r, g_dir, &err), AP_ERR_ARG);
    cr_assert_not_null(strstr(err.msg, g_dir));
    r->n_budgets = N_BUDGET;
    cr_assert_eq(count_files(g_dir), 0);
    free_result(r);
}
