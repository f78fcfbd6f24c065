/* Task-suite reports: JSON (every run and every aggregate), Markdown (tables
 * for a reader) and PNG plots (docs/eval-tasks.md).
 *
 * All three read only the result, and every aggregate comes from
 * ap_tasks_cell_in and every interval from ap_tasks_interval, so the reports
 * and the CLI's table agree and nothing is marked that an interval does not
 * back (ap_tasks_diff_verdict). Scores,
 * agreement and recovery are fractions in the JSON; the Markdown shows
 * scores on LongBench's 0-100 scale and the others as percentages. */
#include "eval/task_report.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/plot.h"
#include "common/util.h"
#include "eval/report_util.h"

#define MIB (1024.0 * 1024.0)

/* ---- aggregates ------------------------------------------------------------ */

const char *ap_tasks_kind_name(const ap_task_method *m) {
    return m->is_full ? "full" : ap_sel_kind_name(m->kind);
}

static double ratio(double num, double den) { return den != 0 ? num / den : NAN; }

/* Mean context / budget, the context being the full KV in tokens (float32 K
 * and V of every layer and KV head, as eval/tasks.c accounts it): what the
 * budget promises, beside the measured compression (docs/eval-tasks.md).
 * NaN for full KV, which has no budget. */
static double budget_ratio(const ap_tasks_result *r, int m, int b, double full_kv_bytes) {
    double token_bytes = (double)r->n_layer * r->n_head_kv * r->head_dim * 2 * sizeof(float);
    if (r->methods[m].is_full || token_bytes <= 0 || r->budgets[b] <= 0) return NAN;
    /* With sliding-window layers the bytes no longer say the context. */
    if (r->n_full_layers > 0 && r->n_full_layers < r->n_layer) return NAN;
    return full_kv_bytes / token_bytes / r->budgets[b];
}

int ap_tasks_failed_at_full(const ap_tasks_result *r, const char *task, const char *bucket) {
    double full = 0;
    int n = 0;
    for (int s = 0; s < r->n_samples; s++) {
        const ap_task_sample *sa = &r->samples[s];
        if ((task && strcmp(sa->task, task)) || (bucket && strcmp(sa->bucket, bucket))) continue;
        full += ap_tasks_run_at(r, s, 0, 0)->score;
        n++;
    }
    return n > 0 && full / n < AP_TASKS_FAILED_FULL_SCORE;
}

static int in_subset(const ap_tasks_result *r, const ap_tasks_subset *sub, int s) {
    const ap_task_sample *sa = &r->samples[s];
    if (!sub) return 1;
    if ((sub->task && strcmp(sa->task, sub->task)) ||
        (sub->bucket && strcmp(sa->bucket, sub->bucket)))
        return 0;
    return !sub->exclude_failed || !ap_tasks_failed_at_full(r, sa->task, sa->bucket);
}

void ap_tasks_cell_of(const ap_tasks_result *r, const char *task, const char *bucket, int m, int b,
                      ap_tasks_cell *out) {
    ap_tasks_subset sub = {.task = task, .bucket = bucket};
    ap_tasks_cell_in(r, &sub, m, b, out);
}

void ap_tasks_cell_in(const ap_tasks_result *r, const ap_tasks_subset *sub, int m, int b,
                      ap_tasks_cell *out) {
    double score = 0, full = 0, agree = 0, kl = 0, same = 0, res = 0, fkv = 0, cold = 0, rec = 0;
    double tokens = 0, dec_s = 0, sel_s = 0, fetch = 0, sc_s = 0, pf_sc = 0, pf_wait = 0;
    int n = 0, n_rec = 0, n_pf = 0;
    if (m == 0) b = 0;
    for (int s = 0; s < r->n_samples; s++) {
        if (!in_subset(r, sub, s)) continue;
        const ap_task_run *x = ap_tasks_run_at(r, s, m, b);
        n++;
        score += x->score;
        full += ap_tasks_run_at(r, s, 0, 0)->score;
        agree += x->agreement;
        kl += x->kl;
        same += x->same != 0;
        res += x->resident_kv_bytes;
        fkv += x->full_kv_bytes;
        cold += x->cold_kv_bytes;
        tokens += x->n_gen;
        dec_s += x->decode_seconds;
        sel_s += x->select_seconds;
        fetch += x->fetch_kv_bytes;
        sc_s += x->score_seconds;
        if (x->prefetched > 0) {
            pf_sc += x->score_seconds;
            pf_wait += x->prefetch_wait_seconds;
            n_pf++;
        }
        if (isfinite(x->recovery)) {
            rec += x->recovery;
            n_rec++;
        }
    }
    /* Dividing by n = 0 gives the NaN that marks "no data". */
    double dn = n > 0 ? n : NAN;
    memset(out, 0, sizeof *out);
    out->n = n;
    out->score = score / dn;
    out->full_score = full / dn;
    out->score_rel_full = n > 0 ? ratio(out->score, out->full_score) : NAN;
    out->agreement = agree / dn;
    out->kl = kl / dn;
    out->same = same / dn;
    /* Totals, not means of per-sample rates: a short output must not weigh
     * as much as a long one in a throughput figure. */
    out->tokens_per_s = dec_s > 0 ? tokens / dec_s : NAN;
    out->select_ms_per_token = tokens > 0 ? 1000.0 * sel_s / tokens : NAN;
    out->resident_kv_bytes = res / dn;
    out->full_kv_bytes = fkv / dn;
    out->cold_kv_bytes = cold / dn;
    out->compression = n > 0 && res > 0 ? fkv / res : NAN;
    out->budget_ratio = budget_ratio(r, m, b, out->full_kv_bytes);
    out->recovery = n_rec > 0 ? rec / n_rec : NAN;
    out->n_recovery = n_rec;
    out->fetch_kv_bytes = fetch / dn;
    out->score_ms_per_token = tokens > 0 ? 1000.0 * sc_s / tokens : NAN;
    out->prefetch_hidden = n_pf > 0 && pf_sc > 0 ? 1.0 - pf_wait / pf_sc : NAN;
}

/* ---- intervals --------------------------------------------------------------- */

const char *ap_tasks_metric_name(ap_tasks_metric k) {
    switch (k) {
    case AP_TASKS_SCORE: return "score";
    case AP_TASKS_AGREEMENT: return "agreement";
    case AP_TASKS_KL: return "kl";
    }
    return "unknown";
}

static double metric_of(const ap_task_run *x, ap_tasks_metric k) {
    switch (k) {
    case AP_TASKS_SCORE: return x->score;
    case AP_TASKS_AGREEMENT: return x->agreement;
    case AP_TASKS_KL: return x->kl;
    }
    return NAN;
}

ap_status ap_tasks_interval(const ap_tasks_result *r, const ap_tasks_subset *sub, int m, int ref,
                            int b, ap_tasks_metric metric, ap_tasks_ci *out, ap_err *err) {
    ap_status st = AP_OK;
    double *v = NULL;
    int k = 0;
    out->n = 0;
    out->mean = out->lo = out->hi = NAN;
    if (!r || m < 0 || m >= r->n_methods || ref >= r->n_methods || b < 0 || b >= r->n_budgets)
        return ap_errf(err, AP_ERR_ARG,
                       "task interval: method %d, reference %d or budget %d out of range", m, ref, b);
    if (!(v = malloc((size_t)(r->n_samples > 0 ? r->n_samples : 1) * sizeof *v))) {
        st = ap_errf(err, AP_ERR_NOMEM, "task interval: out of memory");
        goto cleanup;
    }
    for (int s = 0; s < r->n_samples; s++) {
        if (!in_subset(r, sub, s)) continue;
        double x = metric_of(ap_tasks_run_at(r, s, m, m == 0 ? 0 : b), metric);
        if (ref >= 0) x -= metric_of(ap_tasks_run_at(r, s, ref, ref == 0 ? 0 : b), metric);
        /* A measure that was not taken is no evidence either way. */
        if (isfinite(x)) v[k++] = x;
    }
    if ((st = ap_boot_ci95(v, NULL, k, AP_TASKS_BOOT_SEED, &out->mean, &out->lo, &out->hi, err)))
        goto cleanup;
    out->n = k;
cleanup:
    free(v);
    return st;
}

const char *ap_tasks_diff_verdict(ap_tasks_metric metric, const ap_tasks_ci *d) {
    /* One sample gives a zero-width interval that proves nothing. */
    if (d->n < 2 || !(d->lo > 0 || d->hi < 0)) return NULL;
    /* A rise in score or agreement is a gain; a rise in KL, a loss. */
    int up = d->lo > 0;
    return (metric == AP_TASKS_KL) != up ? "better" : "worse";
}


static ap_status check_result(const ap_tasks_result *r, const char *path, ap_err *err) {
    if (!path || !*path) return ap_errf(err, AP_ERR_ARG, "task report: no output path given");
    if (!r) return ap_errf(err, AP_ERR_ARG, "%s: no task result to report", path);
    if (r->n_methods < 1 || r->n_methods > AP_TASKS_MAX_METHODS + 1 || r->n_budgets < 1 ||
        r->n_budgets > AP_REPLAY_MAX_BUDGETS || r->n_samples < 0)
        return ap_errf(err, AP_ERR_ARG, "%s: task result has %d methods, %d budgets, %d samples",
                       path, r->n_methods, r->n_budgets, r->n_samples);
    if (!r->methods[0].is_full)
        return ap_errf(err, AP_ERR_ARG, "%s: task result's first method is not full KV", path);
    if (r->n_samples > 0 && (!r->samples || !r->runs))
        return ap_errf(err, AP_ERR_ARG, "%s: task result has no samples or runs", path);
    if (r->n_dropped < 0 || r->n_dropped > AP_TASKS_MAX_METHODS)
        return ap_errf(err, AP_ERR_ARG, "%s: task result has %d dropped methods", path, r->n_dropped);
    return AP_OK;
}


/* (task, bucket) groups: tasks in order of first appearance, each task's
 * buckets likewise, so a task's rows stay together whatever the file order. */
typedef struct {
    int n;
    const char **task, **bucket; /* borrowed from r->samples */
} groups;

static int group_index(const groups *g, const char *task, const char *bucket) {
    for (int i = 0; i < g->n; i++)
        if (!strcmp(g->task[i], task) && (!bucket || !strcmp(g->bucket[i], bucket))) return i;
    return -1;
}

static ap_status groups_make(const ap_tasks_result *r, groups *g, const char *path, ap_err *err) {
    size_t cap = (size_t)(r->n_samples > 0 ? r->n_samples : 1);
    g->n = 0;
    g->task = malloc(cap * sizeof *g->task);
    g->bucket = malloc(cap * sizeof *g->bucket);
    if (!g->task || !g->bucket) {
        free(g->task);
        free(g->bucket);
        g->task = g->bucket = NULL;
        return ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
    }
    for (int s = 0; s < r->n_samples; s++) {
        const char *t = r->samples[s].task;
        if (group_index(g, t, NULL) >= 0) continue;
        for (int u = s; u < r->n_samples; u++) {
            if (strcmp(r->samples[u].task, t) || group_index(g, t, r->samples[u].bucket) >= 0)
                continue;
            g->task[g->n] = t;
            g->bucket[g->n] = r->samples[u].bucket;
            g->n++;
        }
    }
    return AP_OK;
}

static void groups_free(groups *g) {
    free(g->task);
    free(g->bucket);
}

/* ---- JSON ------------------------------------------------------------------ */


static void json_header(ap_jbuild *j, cJSON *root, const ap_tasks_result *r) {
    const ap_tasks_config *c = &r->config;
    ap_jadd_str(j, root, "schema", "attnpred-eval-tasks");
    ap_jadd_num(j, root, "version", 1);

    cJSON *cf = ap_jadd(j, root, "config", cJSON_CreateObject());
    ap_jadd_str(j, cf, "tasks_file", c->tasks_file);
    /* "predictor": the first one, for readers of the one-predictor files. */
    ap_jadd_str(j, cf, "predictor", c->n_predictors > 0 ? c->predictors[0] : NULL);
    cJSON *pr = ap_jadd(j, cf, "predictors", cJSON_CreateArray());
    for (int p = 0; p < c->n_predictors && p < AP_REPLAY_MAX_PREDICTORS; p++) {
        cJSON *o = ap_jadd(j, pr, NULL, cJSON_CreateObject());
        ap_jadd_str(j, o, "name", r->predictor_names[p]);
        ap_jadd_str(j, o, "path", c->predictors[p]);
    }
    cJSON *bu = ap_jadd(j, cf, "budgets", cJSON_CreateArray());
    for (int b = 0; b < r->n_budgets; b++) ap_jadd(j, bu, NULL, cJSON_CreateNumber(r->budgets[b]));
    /* The methods that ran, full KV first; what was asked for is "requested"
     * (null: the default set). */
    cJSON *me = ap_jadd(j, cf, "methods", cJSON_CreateArray());
    for (int m = 0; m < r->n_methods; m++) ap_jadd(j, me, NULL, cJSON_CreateString(r->methods[m].name));
    if (c->n_methods > 0 && c->n_methods <= AP_TASKS_MAX_METHODS) {
        cJSON *rq = ap_jadd(j, cf, "requested", cJSON_CreateArray());
        for (int i = 0; i < c->n_methods; i++)
            ap_jadd(j, rq, NULL, cJSON_CreateString(c->methods[i] ? c->methods[i] : ""));
    } else {
        ap_jadd(j, cf, "requested", cJSON_CreateNull());
    }
    if (c->n_only_tasks > 0 && c->n_only_tasks <= AP_TASKS_MAX_FILTER) {
        cJSON *ot = ap_jadd(j, cf, "only_tasks", cJSON_CreateArray());
        for (int i = 0; i < c->n_only_tasks; i++)
            ap_jadd(j, ot, NULL, cJSON_CreateString(c->only_tasks[i] ? c->only_tasks[i] : ""));
    } else {
        ap_jadd(j, cf, "only_tasks", cJSON_CreateNull());
    }
    ap_jadd_num(j, cf, "max_samples", c->max_samples);
    ap_jadd_num(j, cf, "max_new_tokens", c->max_new_tokens);
    ap_jadd_num(j, cf, "sink", c->sink_tokens);
    ap_jadd_num(j, cf, "local", c->local_tokens);
    ap_jadd_num(j, cf, "block", c->block);
    ap_jadd_num(j, cf, "calib", c->calib);
    ap_jadd_num(j, cf, "min_candidates", c->min_candidates);
    ap_jadd_str(j, cf, "kv_mode", ap_kv_mode_name(c->kv_mode));
    ap_jadd_num(j, cf, "snapkv_window", c->snapkv_window);
    ap_jadd_num(j, cf, "snapkv_pool", c->snapkv_pool);
    ap_jadd_bool(j, cf, "teacher_forced", c->teacher_forced);
    ap_jadd_bool(j, cf, "prefetch", c->prefetch);
    ap_jadd_num(j, cf, "pred_stride", c->pred_stride > 1 ? c->pred_stride : 1);
    ap_jadd_bool(j, cf, "pred_per_kv", c->pred_per_kv);
    ap_jadd_str(j, cf, "kv_type", ap_kv_type_name(c->kv_type));
    ap_jadd_num(j, cf, "threads", c->threads);
    ap_jadd_num(j, cf, "prefetch_threads", c->prefetch_threads);
    ap_jadd_str(j, cf, "device", c->device == 1 ? "cuda" : "cpu");
    ap_jadd_bool(j, cf, "kv_offload", c->kv_offload);

    cJSON *mo = ap_jadd(j, root, "model", cJSON_CreateObject());
    ap_jadd_str(j, mo, "name", r->model_name);
    ap_jadd_str(j, mo, "path", c->model);
    ap_jadd_num(j, mo, "n_layer", r->n_layer);
    ap_jadd_num(j, mo, "n_selected_layers", r->n_full_layers ? r->n_full_layers : r->n_layer);
    ap_jadd_num(j, mo, "sliding_window", r->swa_window);
    ap_jadd_num(j, mo, "n_head", r->n_head);
    ap_jadd_num(j, mo, "n_head_kv", r->n_head_kv);
    ap_jadd_num(j, mo, "head_dim", r->head_dim);

    cJSON *ma = ap_jadd(j, root, "methods", cJSON_CreateArray());
    for (int m = 0; m < r->n_methods; m++) {
        cJSON *o = ap_jadd(j, ma, NULL, cJSON_CreateObject());
        ap_jadd_str(j, o, "name", r->methods[m].name);
        ap_jadd_str(j, o, "label", r->methods[m].label);
        ap_jadd_str(j, o, "kind", ap_tasks_kind_name(&r->methods[m]));
    }
}

static void json_run(ap_jbuild *j, cJSON *arr, const ap_tasks_result *r, int s, int m, int b) {
    const ap_task_run *x = ap_tasks_run_at(r, s, m, b);
    cJSON *o = ap_jadd(j, arr, NULL, cJSON_CreateObject());
    ap_jadd_str(j, o, "method", r->methods[m].name);
    ap_jadd_str(j, o, "kind", ap_tasks_kind_name(&r->methods[m]));
    if (r->methods[m].is_full)
        ap_jadd(j, o, "budget", cJSON_CreateNull());
    else
        ap_jadd_num(j, o, "budget", r->budgets[b]);
    ap_jadd_num(j, o, "score", x->score);
    ap_jadd_num(j, o, "agreement", x->agreement);
    ap_jadd_num(j, o, "kl", x->kl);
    ap_jadd_bool(j, o, "same", x->same);
    ap_jadd_num(j, o, "n_gen", x->n_gen);
    ap_jadd_num(j, o, "decode_seconds", x->decode_seconds);
    ap_jadd_num(j, o, "tokens_per_s", x->decode_seconds > 0 ? x->n_gen / x->decode_seconds : NAN);
    ap_jadd_num(j, o, "select_seconds", x->select_seconds);
    ap_jadd_num(j, o, "select_ms_per_token", x->n_gen > 0 ? 1000.0 * x->select_seconds / x->n_gen : NAN);
    ap_jadd_num(j, o, "score_seconds", x->score_seconds);
    ap_jadd_num(j, o, "prefetch_wait_seconds", x->prefetch_wait_seconds);
    ap_jadd_num(j, o, "prefetched", (double)x->prefetched);
    ap_jadd_num(j, o, "fetch_kv_bytes", x->fetch_kv_bytes);
    ap_jadd_bool(j, o, "kv_measured", x->kv_measured);
    ap_jadd_num(j, o, "hot_capacity_bytes", x->hot_capacity_bytes);
    ap_jadd_num(j, o, "resident_kv_bytes", x->resident_kv_bytes);
    ap_jadd_num(j, o, "full_kv_bytes", x->full_kv_bytes);
    ap_jadd_num(j, o, "cold_kv_bytes", x->cold_kv_bytes);
    ap_jadd_num(j, o, "compression", x->resident_kv_bytes > 0 ? x->full_kv_bytes / x->resident_kv_bytes : NAN);
    ap_jadd_num(j, o, "budget_ratio", budget_ratio(r, m, b, x->full_kv_bytes));
    ap_jadd_num(j, o, "recovery", x->recovery);
    ap_jadd_str(j, o, "output", x->output ? x->output : "");
}

static void json_samples(ap_jbuild *j, cJSON *root, const ap_tasks_result *r) {
    cJSON *arr = ap_jadd(j, root, "samples", cJSON_CreateArray());
    for (int s = 0; s < r->n_samples; s++) {
        const ap_task_sample *sa = &r->samples[s];
        cJSON *o = ap_jadd(j, arr, NULL, cJSON_CreateObject());
        ap_jadd_str(j, o, "id", sa->id);
        ap_jadd_str(j, o, "task", sa->task);
        ap_jadd_str(j, o, "category", sa->category);
        ap_jadd_str(j, o, "bucket", sa->bucket);
        ap_jadd_str(j, o, "metric", sa->metric);
        ap_jadd_num(j, o, "n_prompt", sa->n_prompt);
        ap_jadd_num(j, o, "max_new_tokens", sa->max_new_tokens);
        ap_jadd_num(j, o, "prefill_seconds", sa->prefill_seconds);
        cJSON *runs = ap_jadd(j, o, "runs", cJSON_CreateArray());
        /* Full KV fills every budget with one run: written once. */
        json_run(j, runs, r, s, 0, 0);
        for (int m = 1; m < r->n_methods; m++)
            for (int b = 0; b < r->n_budgets; b++) json_run(j, runs, r, s, m, b);
    }
}

/* "<metric>_ci95_lo" and "_hi" of method m at budget b over sub. Only
 * memory can make an interval fail here, which the build reports as such. */
static void json_ci(ap_jbuild *j, cJSON *o, const ap_tasks_result *r, const ap_tasks_subset *sub,
                    int m, int b) {
    for (int k = 0; k < AP_TASKS_N_METRICS; k++) {
        ap_tasks_ci ci;
        ap_err e = {0};
        char key[32];
        if (ap_tasks_interval(r, sub, m, -1, b, (ap_tasks_metric)k, &ci, &e)) j->failed = 1;
        snprintf(key, sizeof key, "%s_ci95_lo", ap_tasks_metric_name((ap_tasks_metric)k));
        ap_jadd_num(j, o, key, ci.lo);
        snprintf(key, sizeof key, "%s_ci95_hi", ap_tasks_metric_name((ap_tasks_metric)k));
        ap_jadd_num(j, o, key, ci.hi);
    }
}

static void json_cell(ap_jbuild *j, cJSON *arr, const ap_tasks_result *r,
                      const ap_tasks_subset *sub, int m, int b) {
    ap_tasks_cell c;
    ap_tasks_cell_in(r, sub, m, b, &c);
    cJSON *o = ap_jadd(j, arr, NULL, cJSON_CreateObject());
    if (sub->task) ap_jadd_str(j, o, "task", sub->task);
    if (sub->bucket) ap_jadd_str(j, o, "bucket", sub->bucket);
    if (sub->task && sub->bucket)
        ap_jadd_bool(j, o, "failed_at_full", ap_tasks_failed_at_full(r, sub->task, sub->bucket));
    ap_jadd_str(j, o, "method", r->methods[m].name);
    ap_jadd_str(j, o, "kind", ap_tasks_kind_name(&r->methods[m]));
    if (r->methods[m].is_full)
        ap_jadd(j, o, "budget", cJSON_CreateNull());
    else
        ap_jadd_num(j, o, "budget", r->budgets[b]);
    ap_jadd_num(j, o, "n", c.n);
    ap_jadd_num(j, o, "score", c.score);
    ap_jadd_num(j, o, "score_rel_full", c.score_rel_full);
    ap_jadd_num(j, o, "agreement", c.agreement);
    ap_jadd_num(j, o, "kl", c.kl);
    json_ci(j, o, r, sub, m, b);
    ap_jadd_num(j, o, "same", c.same);
    ap_jadd_num(j, o, "tokens_per_s", c.tokens_per_s);
    ap_jadd_num(j, o, "select_ms_per_token", c.select_ms_per_token);
    ap_jadd_num(j, o, "resident_kv_bytes", c.resident_kv_bytes);
    ap_jadd_num(j, o, "full_kv_bytes", c.full_kv_bytes);
    ap_jadd_num(j, o, "cold_kv_bytes", c.cold_kv_bytes);
    ap_jadd_num(j, o, "compression", c.compression);
    ap_jadd_num(j, o, "budget_ratio", c.budget_ratio);
    ap_jadd_num(j, o, "recovery", c.recovery);
    ap_jadd_num(j, o, "fetch_kv_bytes", c.fetch_kv_bytes);
    ap_jadd_num(j, o, "score_ms_per_token", c.score_ms_per_token);
    ap_jadd_num(j, o, "prefetch_hidden", c.prefetch_hidden);
}

/* Cells of one subset in report order: full KV once, then method x budget. */
static void json_cells(ap_jbuild *j, cJSON *arr, const ap_tasks_result *r,
                       const ap_tasks_subset *sub) {
    json_cell(j, arr, r, sub, 0, 0);
    for (int m = 1; m < r->n_methods; m++)
        for (int b = 0; b < r->n_budgets; b++) json_cell(j, arr, r, sub, m, b);
}

static void json_summary(ap_jbuild *j, cJSON *root, const ap_tasks_result *r, const groups *g) {
    cJSON *su = ap_jadd(j, root, "summary", cJSON_CreateObject());
    const ap_tasks_subset all = {0}, headline = {.exclude_failed = 1};
    json_cells(j, ap_jadd(j, su, "overall", cJSON_CreateArray()), r, &all);
    json_cells(j, ap_jadd(j, su, "headline", cJSON_CreateArray()), r, &headline);
    cJSON *bt = ap_jadd(j, su, "by_task", cJSON_CreateArray());
    for (int i = 0; i < g->n; i++) {
        const ap_tasks_subset sub = {.task = g->task[i], .bucket = g->bucket[i]};
        json_cells(j, bt, r, &sub);
    }
    cJSON *fa = ap_jadd(j, su, "failed_at_full", cJSON_CreateArray());
    for (int i = 0; i < g->n; i++) {
        if (!ap_tasks_failed_at_full(r, g->task[i], g->bucket[i])) continue;
        ap_tasks_cell c;
        ap_tasks_cell_of(r, g->task[i], g->bucket[i], 0, 0, &c);
        cJSON *o = ap_jadd(j, fa, NULL, cJSON_CreateObject());
        ap_jadd_str(j, o, "task", g->task[i]);
        ap_jadd_str(j, o, "bucket", g->bucket[i]);
        ap_jadd_num(j, o, "n", c.n);
        ap_jadd_num(j, o, "full_score", c.score);
    }
}

/* How every interval of the report was made, so a reader can redo it. */
static void json_intervals(ap_jbuild *j, cJSON *root) {
    cJSON *o = ap_jadd(j, root, "intervals", cJSON_CreateObject());
    ap_jadd_num(j, o, "level", 0.95);
    ap_jadd_str(j, o, "method", "percentile bootstrap over samples; differences paired by sample");
    ap_jadd_num(j, o, "resamples", AP_BOOT_RESAMPLES);
    ap_jadd_num(j, o, "seed", (double)AP_TASKS_BOOT_SEED);
    ap_jadd_num(j, o, "failed_full_score_below", AP_TASKS_FAILED_FULL_SCORE);
}

/* The method differences are taken against: last_step (the cheap baseline
 * every predictor must beat); -1 when it did not run. */
static int paired_ref(const ap_tasks_result *r) {
    for (int m = 1; m < r->n_methods; m++)
        if (!strcmp(r->methods[m].name, "last_step")) return m;
    return -1;
}

static void json_diff(ap_jbuild *j, cJSON *arr, const ap_tasks_result *r, int m, int ref, int b,
                      ap_tasks_metric k) {
    ap_tasks_ci d;
    ap_err e = {0};
    if (ap_tasks_interval(r, NULL, m, ref, b, k, &d, &e)) j->failed = 1;
    const char *verdict = ap_tasks_diff_verdict(k, &d);
    cJSON *o = ap_jadd(j, arr, NULL, cJSON_CreateObject());
    ap_jadd_str(j, o, "method", r->methods[m].name);
    ap_jadd_num(j, o, "budget", r->budgets[b]);
    ap_jadd_str(j, o, "metric", ap_tasks_metric_name(k));
    ap_jadd_num(j, o, "diff", d.mean);
    ap_jadd_num(j, o, "ci95_lo", d.lo);
    ap_jadd_num(j, o, "ci95_hi", d.hi);
    ap_jadd_num(j, o, "n", d.n);
    ap_jadd_str(j, o, "verdict", verdict);
}

/* Every method minus last_step (score, agreement, KL) and minus full KV
 * (score: full KV's agreement is 1 and its KL 0 by definition, so those
 * differences are the cells' own intervals). */
static void json_paired(ap_jbuild *j, cJSON *root, const ap_tasks_result *r) {
    int ref = paired_ref(r);
    if (ref < 0) {
        ap_jadd(j, root, "paired_vs_last_step", cJSON_CreateNull());
    } else {
        cJSON *arr = ap_jadd(j, root, "paired_vs_last_step", cJSON_CreateArray());
        for (int m = 1; m < r->n_methods; m++) {
            if (m == ref) continue;
            for (int b = 0; b < r->n_budgets; b++)
                for (int k = 0; k < AP_TASKS_N_METRICS; k++)
                    json_diff(j, arr, r, m, ref, b, (ap_tasks_metric)k);
        }
    }
    cJSON *arr = ap_jadd(j, root, "paired_vs_full", cJSON_CreateArray());
    for (int m = 1; m < r->n_methods; m++)
        for (int b = 0; b < r->n_budgets; b++) json_diff(j, arr, r, m, 0, b, AP_TASKS_SCORE);
}

static void json_footer(ap_jbuild *j, cJSON *root, const ap_tasks_result *r) {
    cJSON *dr = ap_jadd(j, root, "dropped", cJSON_CreateArray());
    for (int i = 0; i < r->n_dropped; i++) {
        cJSON *o = ap_jadd(j, dr, NULL, cJSON_CreateObject());
        ap_jadd_str(j, o, "method", r->dropped[i]);
        ap_jadd_str(j, o, "reason", r->dropped_reason[i]);
    }
    ap_jadd_num(j, root, "seconds", r->seconds);
}


ap_status ap_tasks_write_json(const ap_tasks_result *r, const char *path, ap_err *err) {
    ap_status st = check_result(r, path, err);
    if (st) return st;
    groups g = {0};
    ap_jbuild j = {0};
    char *text = NULL;
    cJSON *root = NULL;
    if ((st = groups_make(r, &g, path, err))) return st;
    root = cJSON_CreateObject();
    if (!root) j.failed = 1;
    json_header(&j, root, r);
    json_samples(&j, root, r);
    json_summary(&j, root, r, &g);
    json_intervals(&j, root);
    json_paired(&j, root, r);
    json_footer(&j, root, r);
    if (!j.failed) text = cJSON_Print(root);
    if (!text) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory building the JSON report", path);
        goto cleanup;
    }
    st = ap_report_write_text(path, text, err);
cleanup:
    cJSON_free(text);
    cJSON_Delete(root);
    groups_free(&g);
    return st;
}

/* ---- Markdown ------------------------------------------------------------------ */




static void md_header(FILE *f, const ap_tasks_result *r, const groups *g) {
    const ap_tasks_config *c = &r->config;
    fputs("# Live compressed-KV decoding on the task suite\n\n", f);
    fputs("Each sample is prefilled once with full attention; then full KV and every (method, "
          "budget) decode greedily from that prefill, the method's kept set applied inside "
          "attention. Outputs are scored with the task's LongBench metric and compared with the "
          "full-KV output (docs/eval-tasks.md).\n\n",
          f);
    fputs("- model: `", f);
    ap_md_text(f, r->model_name);
    fprintf(f, "`: %d layers x %d query heads (%d KV heads), head_dim %d\n", r->n_layer, r->n_head,
            r->n_head_kv, r->head_dim);
    if (r->n_full_layers > 0 && r->n_full_layers < r->n_layer)
        fprintf(f, "- selection in %d of %d layers: the other %d are sliding-window layers "
                   "(window %d), decoded densely by every method; their KV counts in every "
                   "method's KV bytes (no budget ratio column: the bytes no longer give the "
                   "context)\n",
                r->n_full_layers, r->n_layer, r->n_layer - r->n_full_layers, r->swa_window);
    fputs("- suite: `", f);
    ap_md_text(f, c->tasks_file ? c->tasks_file : "?");
    fprintf(f, "`: %d samples", r->n_samples);
    int nt = 0;
    for (int i = 0; i < g->n; i++) nt += group_index(g, g->task[i], NULL) == i;
    fprintf(f, ", %d tasks (", nt);
    for (int i = 0, k = 0; i < g->n; i++) {
        if (group_index(g, g->task[i], NULL) != i) continue;
        fputs(k++ ? ", " : "", f);
        ap_md_text(f, g->task[i]);
    }
    fputs(")\n", f);
    for (int p = 0; p < c->n_predictors && p < AP_REPLAY_MAX_PREDICTORS; p++) {
        fputs("- predictor `", f);
        ap_md_text(f, r->predictor_names[p]);
        fputs("`: `", f);
        ap_md_text(f, c->predictors[p]);
        fputs("`\n", f);
    }
    fprintf(f, "- budget B = sink %d + local %d tokens + selected %d-token blocks; calibration row "
               "every %d decode steps; selection %s\n",
            c->sink_tokens, c->local_tokens, c->block, c->calib, ap_kv_mode_name(c->kv_mode));
    fprintf(f, "- agreement and KL: %s\n",
            c->teacher_forced ? "teacher-forced along the full-KV output"
                              : "free-running only, along the prefix shared with the full-KV output");
    if (c->device == 1)
        fprintf(f, "- run time %.1f s on the CUDA engine, KV cache %s\n", r->seconds,
                c->kv_offload ? "offloaded to pinned host memory; methods attend from a device "
                                "pool of their kept blocks (real eviction), KV measured on it"
                              : "in device memory (selection inside attention; KV accounted)");
    else
        fprintf(f, "- run time %.1f s on %d engine threads\n", r->seconds, c->threads);
    fprintf(f, "- intervals: 95%% percentile bootstrap over the samples (%d resamples, seed 0x%llX); "
               "differences are paired by sample. A difference is marked (bold, better / worse) "
               "only where its interval excludes zero\n",
            AP_BOOT_RESAMPLES, (unsigned long long)AP_TASKS_BOOT_SEED);
    fprintf(f, "- failed at full KV (a task and bucket whose full-KV mean score is below %.0f; left "
               "out of the headline means): ",
            100.0 * AP_TASKS_FAILED_FULL_SCORE);
    int n_failed = 0;
    for (int i = 0; i < g->n; i++) {
        if (!ap_tasks_failed_at_full(r, g->task[i], g->bucket[i])) continue;
        fputs(n_failed++ ? ", " : "", f);
        ap_md_text(f, g->task[i]);
        fputc(' ', f);
        ap_md_text(f, g->bucket[i]);
    }
    fputs(n_failed ? "\n" : "none\n", f);
    for (int i = 0; i < r->n_dropped; i++) {
        fputs("- not run: `", f);
        ap_md_text(f, r->dropped[i]);
        fputs("` (", f);
        ap_md_text(f, r->dropped_reason[i]);
        fputs(")\n", f);
    }
}

static void md_overall(FILE *f, const ap_tasks_result *r) {
    fputs("\n## Overall\n\n", f);
    fputs("Cells: mean score x100 (score relative to full KV over the same samples, agreement "
          "with the full-KV tokens, KL(full || method) in nats per token). Columns: budget in "
          "tokens.\n\n",
          f);
    fputs("| method | kind |", f);
    for (int b = 0; b < r->n_budgets; b++) fprintf(f, " B=%d |", r->budgets[b]);
    fputs("\n|:--|:--|", f);
    for (int b = 0; b < r->n_budgets; b++) fputs("--:|", f);
    fputc('\n', f);
    ap_tasks_cell c;
    ap_tasks_cell_of(r, NULL, NULL, 0, 0, &c);
    /* The full-KV score repeats in each column so every column reads on its own. */
    fputs("| ", f);
    ap_md_method(f, r->methods[0].name, r->methods[0].label);
    fputs(" | full |", f);
    for (int b = 0; b < r->n_budgets; b++) {
        if (isfinite(c.score))
            fprintf(f, " %.1f |", 100.0 * c.score);
        else
            fputs(" n/a |", f);
    }
    fputc('\n', f);
    for (int m = 1; m < r->n_methods; m++) {
        fputs("| ", f);
        ap_md_method(f, r->methods[m].name, r->methods[m].label);
        fprintf(f, " | %s |", ap_tasks_kind_name(&r->methods[m]));
        for (int b = 0; b < r->n_budgets; b++) {
            ap_tasks_cell_of(r, NULL, NULL, m, b, &c);
            if (!isfinite(c.score)) {
                fputs(" n/a |", f);
                continue;
            }
            fprintf(f, " %.1f (", 100.0 * c.score);
            if (isfinite(c.score_rel_full))
                fprintf(f, "%.0f%%", 100.0 * c.score_rel_full);
            else
                fputs("n/a", f);
            fprintf(f, ", %.0f%%, %.3f) |", 100.0 * c.agreement, c.kl);
        }
        fputc('\n', f);
    }
}

/* "| method | kind | budget" of a table row; full KV (method 0) has no budget. */
static void md_row_head(FILE *f, const ap_tasks_result *r, int m, int b) {
    fputs("| ", f);
    ap_md_method(f, r->methods[m].name, r->methods[m].label);
    fprintf(f, " | %s | ", ap_tasks_kind_name(&r->methods[m]));
    if (m == 0)
        fputs("-", f);
    else
        fprintf(f, "%d", r->budgets[b]);
}

/* " | mean [lo, hi]" scaled, or " | n/a". */
static void md_ci(FILE *f, const ap_tasks_ci *c, double scale, int decimals) {
    if (!isfinite(c->mean)) {
        fputs(" | n/a", f);
        return;
    }
    fprintf(f, " | %.*f [%.*f, %.*f]", decimals, scale * c->mean, decimals, scale * c->lo, decimals,
            scale * c->hi);
}

static ap_status md_intervals(FILE *f, const ap_tasks_result *r, ap_err *err) {
    const ap_tasks_subset headline = {.exclude_failed = 1};
    ap_tasks_cell hc;
    ap_tasks_cell_in(r, &headline, 0, 0, &hc);
    fputs("\n## Intervals (95%, bootstrap over samples)\n\n", f);
    fprintf(f,
            "Mean over the samples with a 95%% interval (percentile bootstrap: %d resamples of the "
            "samples with replacement, seeded, so the same results give the same interval). "
            "Headline: the %d samples outside the task and bucket cells failed at full KV "
            "(\"Per task\"), so it measures what the cache costs where the model can answer at "
            "all. Score x100, agreement in %%, KL in nats per token.\n\n",
            AP_BOOT_RESAMPLES, hc.n);
    fputs("| method | kind | budget | n | score | headline score | agreement | KL |\n", f);
    fputs("|:--|:--|--:|--:|--:|--:|--:|--:|\n", f);
    for (int m = 0; m < r->n_methods; m++)
        for (int b = 0; b < (m == 0 ? 1 : r->n_budgets); b++) {
            ap_tasks_ci sc, hs, ag, kl;
            ap_status st;
            if ((st = ap_tasks_interval(r, NULL, m, -1, b, AP_TASKS_SCORE, &sc, err)) ||
                (st = ap_tasks_interval(r, &headline, m, -1, b, AP_TASKS_SCORE, &hs, err)) ||
                (st = ap_tasks_interval(r, NULL, m, -1, b, AP_TASKS_AGREEMENT, &ag, err)) ||
                (st = ap_tasks_interval(r, NULL, m, -1, b, AP_TASKS_KL, &kl, err)))
                return st;
            md_row_head(f, r, m, b);
            fprintf(f, " | %d", sc.n);
            md_ci(f, &sc, 100.0, 1);
            md_ci(f, &hs, 100.0, 1);
            md_ci(f, &ag, 100.0, 1);
            md_ci(f, &kl, 1.0, 3);
            fputs(" |\n", f);
        }
    return AP_OK;
}

/* One table of differences, method minus ref (full KV or last_step), rows
 * method x metric, columns budget. A cell is bold, with its verdict, only
 * when ap_tasks_diff_verdict says the interval excludes zero. */
static ap_status md_diff_table(FILE *f, const ap_tasks_result *r, int ref, int n_metrics,
                               ap_err *err) {
    fputs("| method | kind | metric |", f);
    for (int b = 0; b < r->n_budgets; b++) fprintf(f, " B=%d |", r->budgets[b]);
    fputs("\n|:--|:--|:--|", f);
    for (int b = 0; b < r->n_budgets; b++) fputs("--:|", f);
    fputc('\n', f);
    for (int m = 1; m < r->n_methods; m++) {
        if (m == ref) continue;
        for (int k = 0; k < n_metrics; k++) {
            const ap_tasks_metric mk = (ap_tasks_metric)k;
            const double scale = mk == AP_TASKS_KL ? 1.0 : 100.0;
            const int dec = mk == AP_TASKS_KL ? 3 : 1;
            fputs("| ", f);
            ap_md_method(f, r->methods[m].name, r->methods[m].label);
            fprintf(f, " | %s | %s", ap_tasks_kind_name(&r->methods[m]), ap_tasks_metric_name(mk));
            for (int b = 0; b < r->n_budgets; b++) {
                ap_tasks_ci d;
                ap_status st = ap_tasks_interval(r, NULL, m, ref, b, mk, &d, err);
                if (st) return st;
                if (!isfinite(d.mean)) {
                    fputs(" | n/a", f);
                    continue;
                }
                const char *verdict = ap_tasks_diff_verdict(mk, &d), *em = verdict ? "**" : "";
                fprintf(f, " | %s%+.*f [%+.*f, %+.*f]%s", em, dec, scale * d.mean, dec, scale * d.lo,
                        dec, scale * d.hi, em);
                if (verdict) fprintf(f, " %s", verdict);
            }
            fputs(" |\n", f);
        }
    }
    return AP_OK;
}

static ap_status md_paired(FILE *f, const ap_tasks_result *r, ap_err *err) {
    ap_status st;
    int ref = paired_ref(r);
    fputs("\n## Difference from last step (paired by sample)\n\n", f);
    if (ref < 0) {
        fputs("`last_step` was not run, so there is nothing to pair with.\n", f);
    } else {
        fprintf(f,
                "Method minus `last_step` on the same samples at the same budget (%d samples), with "
                "a 95%% interval from a paired bootstrap (samples resampled, each keeping its pair). "
                "Score in points x100, agreement in points of %%, KL in nats per token (lower is "
                "better). **Bold** with better / worse: the interval excludes zero (decided on the "
                "unrounded bounds); elsewhere these samples cannot tell the two methods "
                "apart.\n\n",
                r->n_samples);
        if ((st = md_diff_table(f, r, ref, AP_TASKS_N_METRICS, err))) return st;
    }
    fputs("\n## Difference from full KV (score, paired by sample)\n\n", f);
    fputs("Method minus full KV, score x100 on the same samples, interval and marking as above. "
          "(Full KV's own agreement is 100% and its KL 0, so the intervals of those are the "
          "methods' own, in \"Intervals\".)\n\n",
          f);
    return md_diff_table(f, r, 0, 1, err);
}

static void md_by_task(FILE *f, const ap_tasks_result *r, const groups *g) {
    fputs("\n## Per task\n\n", f);
    fprintf(f,
            "Mean score x100 per task and length bucket; n = samples; full = the full-KV score. "
            "`failed`: the model fails the cell with the whole cache (full-KV mean score below "
            "%.0f), so a method's score there says nothing about the cache; those cells are left "
            "out of the headline row and of the headline intervals.\n\n",
            100.0 * AP_TASKS_FAILED_FULL_SCORE);
    fputs("| task | bucket | n | full |", f);
    for (int m = 1; m < r->n_methods; m++)
        for (int b = 0; b < r->n_budgets; b++) {
            fputc(' ', f);
            ap_md_text(f, r->methods[m].name);
            fprintf(f, "@%d |", r->budgets[b]);
        }
    fputs(" failed at full KV |\n|:--|:--|--:|--:|", f);
    for (int i = 0; i < (r->n_methods - 1) * r->n_budgets; i++) fputs("--:|", f);
    fputs(":--|\n", f);
    /* After the cells: every sample together, then the headline set. */
    for (int i = 0; i <= g->n + 1; i++) {
        ap_tasks_subset sub = {0};
        if (i < g->n) {
            sub.task = g->task[i];
            sub.bucket = g->bucket[i];
        }
        sub.exclude_failed = i == g->n + 1;
        ap_tasks_cell c;
        ap_tasks_cell_in(r, &sub, 0, 0, &c);
        fputs("| ", f);
        if (i < g->n) {
            ap_md_text(f, sub.task);
            fputs(" | ", f);
            ap_md_text(f, sub.bucket);
        } else {
            fputs(i == g->n ? "**all** | " : "**headline** | excluding failed", f);
        }
        fprintf(f, " | %d", c.n);
        ap_md_num(f, 100.0 * c.score, 1);
        for (int m = 1; m < r->n_methods; m++)
            for (int b = 0; b < r->n_budgets; b++) {
                ap_tasks_cell_in(r, &sub, m, b, &c);
                ap_md_num(f, 100.0 * c.score, 1);
            }
        int failed = i < g->n && ap_tasks_failed_at_full(r, sub.task, sub.bucket);
        fputs(failed ? " | failed |\n" : " |  |\n", f);
    }
}

static void md_memory(FILE *f, const ap_tasks_result *r) {
    fputs("\n## KV memory and speed\n\n", f);
    int measured = 0;
    for (long i = 0; i < (long)r->n_samples * r->n_methods * r->n_budgets; i++)
        measured |= r->runs[i].kv_measured;
    if (measured)
        fputs("Resident KV is **measured on the hot pool** for the compressed methods: attention "
              "reads only a per-(layer, KV head) pool of 16-key page slots holding the step's kept "
              "blocks, copied in from the cold store (the engine's contiguous cache) when they "
              "enter; resident = slots in use x slot bytes (K and V in the cache's type), averaged over the "
              "decode steps; fetch = KV copied into the pool per step (from the second step on; "
              "the newest key is written, not fetched). The process's memory does not shrink: the "
              "cold store still holds every key for every method, and both are host memory. Full "
              "KV is the whole cache. ",
              f);
    else
        fputs("Resident KV is **accounted from the kept sets, not measured**: the engine keeps "
              "the whole cache in one array and applies the selection inside attention. Per "
              "decode step, each layer and KV head counts the union of its query heads' kept "
              "tokens x head_dim x 2 (K and V) x the cache type's bytes, averaged over the steps; that "
              "is what a paged cache would have to hold in fast memory. Fetch: KV per decode step "
              "that a hot cache backed by the cold store would have to bring in (blocks kept now "
              "and not at the previous step). ",
              f);
    fprintf(f, "The KV cache holds %s (%zu bytes per element). ",
            ap_kv_type_name(r->config.kv_type), ap_kv_type_size(r->config.kv_type));
    fputs("Retrieval methods need the rest in a cold store (cold KV) to fetch from; eviction "
          "methods drop it. Compression = mean full KV / mean resident KV; budget ratio = mean "
          "context / budget, what the budget alone would give (resident KV holds more than the "
          "budget: whole blocks, and the union of a KV head's query heads' sets). Tokens/s: generated "
          "tokens / wall time of the free-running decode (selection included), on this engine "
          "and machine; select ms/token: the part of it spent choosing the kept set on the "
          "decoding thread; score ms/token: the selector's own work (scoring, history updates), "
          "wherever it ran; hidden: the share of it that cross-token prefetch overlapped with "
          "the model's own work.\n\n",
          f);
    fputs("| method | kind | budget | resident KV (MiB) | compression | budget ratio | cold KV (MiB) "
          "| fetch KiB/step | tokens/s | select ms/token | score ms/token | hidden |\n",
          f);
    fputs("|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n", f);
    for (int m = 0; m < r->n_methods; m++)
        for (int b = 0; b < (m == 0 ? 1 : r->n_budgets); b++) {
            ap_tasks_cell c;
            ap_tasks_cell_of(r, NULL, NULL, m, b, &c);
            md_row_head(f, r, m, b);
            ap_md_num(f, c.resident_kv_bytes / MIB, 2);
            ap_md_ratio(f, c.compression);
            ap_md_ratio(f, c.budget_ratio);
            ap_md_num(f, c.cold_kv_bytes / MIB, 2);
            ap_md_num(f, c.fetch_kv_bytes / 1024.0, 1);
            ap_md_num(f, c.tokens_per_s, 1);
            ap_md_num(f, c.select_ms_per_token, 2);
            ap_md_num(f, c.score_ms_per_token, 2);
            fputs(" | ", f);
            if (isfinite(c.prefetch_hidden))
                fprintf(f, "%.0f%%", 100.0 * c.prefetch_hidden);
            else
                fputs("-", f);
            fputs(" |\n", f);
        }
}

ap_status ap_tasks_write_md(const ap_tasks_result *r, const char *path, ap_err *err) {
    char tmp[AP_REPORT_PATH_BUF];
    groups g = {0};
    FILE *f = NULL;
    ap_status st = check_result(r, path, err);
    if (st) return st;
    if ((st = groups_make(r, &g, path, err))) return st;
    if ((st = ap_report_open(path, tmp, &f, err))) goto cleanup;
    md_header(f, r, &g);
    md_overall(f, r);
    if ((st = md_intervals(f, r, err)) || (st = md_paired(f, r, err))) {
        ap_err_prefix(err, path);
        goto cleanup;
    }
    md_by_task(f, r, &g);
    md_memory(f, r);
    st = ap_report_close(f, tmp, path, err);
    f = NULL;
cleanup:
    /* A report cut short is removed, never left half-written. */
    if (f) {
        fclose(f);
        remove(tmp);
    }
    groups_free(&g);
    return st;
}

/* ---- PNG ----------------------------------------------------------------------- */


typedef enum { PLOT_SCORE_VS_COMPRESSION, PLOT_AGREEMENT_VS_BUDGET } plot_kind;

/* One line per method over the budgets, each point with its 95% interval as
 * an error bar, plus full KV as a reference line. */
static ap_status png_lines(const ap_tasks_result *r, const char *dir, plot_kind kind, ap_err *err) {
    char path[AP_REPORT_PATH_BUF];
    const int score = kind == PLOT_SCORE_VS_COMPRESSION;
    const ap_tasks_metric metric = score ? AP_TASKS_SCORE : AP_TASKS_AGREEMENT;
    ap_status st = ap_report_plot_path(path, dir, score ? "score_vs_compression.png" : "agreement_vs_budget.png", err);
    if (st) return st;
    const int nm = r->n_methods, nb = r->n_budgets;
    /* Per method: x, y, interval low and high over the budgets; the
     * reference line takes 2 points of each. */
    double *xy = malloc(sizeof(double) * (size_t)(4 * nm * nb + 8 + nb));
    char(*labels)[128] = malloc(sizeof *labels * (size_t)nm);
    ap_plot_series *s = malloc(sizeof *s * (size_t)nm);
    ap_plot_yerr *bars = malloc(sizeof *bars * (size_t)nm);
    ap_plot_style *sty = malloc(sizeof *sty * (size_t)nm);
    if (!xy || !labels || !s || !bars || !sty) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    double xmin = INFINITY, xmax = -INFINITY, bmin = INFINITY, bmax = -INFINITY;
    for (int b = 0; b < nb; b++) {
        bmin = fmin(bmin, r->budgets[b]);
        bmax = fmax(bmax, r->budgets[b]);
    }
    const double octaves = fmax(1.0, bmin > 0 ? log2(bmax / bmin) : 1.0);
    int ns = 0;
    for (int m = 1; m < nm; m++) {
        double *x = xy + (size_t)4 * ns * nb, *y = x + nb, *lo = y + nb, *hi = lo + nb;
        /* Every method sits at the same budgets: nudging each by 1% of the
         * axis (in octaves, at least one) from the next keeps their bars
         * from hiding one another. Compressions differ by method already. */
        const double dodge = score ? 1.0 : pow(2.0, 0.01 * octaves * (m - 0.5 * nm));
        int have = 0;
        for (int b = 0; b < nb; b++) {
            ap_tasks_cell c;
            ap_tasks_ci ci;
            ap_tasks_cell_of(r, NULL, NULL, m, b, &c);
            if ((st = ap_tasks_interval(r, NULL, m, -1, b, metric, &ci, err))) {
                ap_err_prefix(err, path);
                goto cleanup;
            }
            x[b] = score ? c.compression : r->budgets[b] * dodge;
            y[b] = 100.0 * (score ? c.score : c.agreement);
            lo[b] = 100.0 * ci.lo;
            hi[b] = 100.0 * ci.hi;
            have |= isfinite(x[b]) && isfinite(y[b]);
            if (isfinite(x[b]) && x[b] > 0) {
                xmin = fmin(xmin, x[b]);
                xmax = fmax(xmax, x[b]);
            }
        }
        /* A method without data keeps its legend entry, so its absence is
         * visible rather than silent. */
        snprintf(labels[ns], sizeof labels[ns], "%.48s (%s%s)", r->methods[m].name,
                 ap_tasks_kind_name(&r->methods[m]), have ? "" : ", no data");
        s[ns] = (ap_plot_series){.label = labels[ns], .x = x, .y = y, .n = nb};
        bars[ns] = (ap_plot_yerr){.lo = lo, .hi = hi};
        ns++;
    }
    /* Full KV: compression 1 by definition, agreement 100% by definition; a
     * horizontal line across the methods' x range makes the gap readable.
     * Its score has an interval too (bars at both ends); its agreement has
     * none. */
    ap_tasks_cell fc;
    ap_tasks_ci fci;
    ap_tasks_cell_of(r, NULL, NULL, 0, 0, &fc);
    if ((st = ap_tasks_interval(r, NULL, 0, -1, 0, AP_TASKS_SCORE, &fci, err))) {
        ap_err_prefix(err, path);
        goto cleanup;
    }
    double *rx = xy + (size_t)4 * ns * nb, *ry = rx + 2, *rlo = ry + 2, *rhi = rlo + 2;
    if (score) {
        rx[0] = 1.0;
        rx[1] = isfinite(xmax) && xmax > 1.0 ? xmax : 1.0;
    } else {
        rx[0] = isfinite(xmin) ? xmin : r->budgets[0];
        rx[1] = isfinite(xmax) ? xmax : r->budgets[nb - 1];
    }
    ry[0] = ry[1] = score ? 100.0 * fc.score : 100.0;
    rlo[0] = rlo[1] = 100.0 * fci.lo;
    rhi[0] = rhi[1] = 100.0 * fci.hi;
    snprintf(labels[ns], sizeof labels[ns], "full KV (reference%s)",
             isfinite(ry[0]) ? "" : ", no data");
    s[ns] = (ap_plot_series){.label = labels[ns], .x = rx, .y = ry, .n = rx[1] > rx[0] ? 2 : 1};
    bars[ns] = score ? (ap_plot_yerr){.lo = rlo, .hi = rhi} : (ap_plot_yerr){0};
    ns++;
    /* The reference goes first, so it is drawn behind: the oracle usually
     * scores exactly as full KV, and its line and markers must stay on top
     * of the reference rather than under it; dashed and twice as wide, the
     * reference still shows along the edges of a line on top of it. */
    ap_plot_series ref = s[ns - 1];
    ap_plot_yerr ref_bars = bars[ns - 1];
    memmove(s + 1, s, sizeof *s * (size_t)(ns - 1));
    memmove(bars + 1, bars, sizeof *bars * (size_t)(ns - 1));
    s[0] = ref;
    bars[0] = ref_bars;
    sty[0] = (ap_plot_style){.dash = AP_PLOT_DASHED, .color = ns, .wide = 1};
    for (int i = 1; i < ns; i++) sty[i] = ap_plot_style_distinct(i - 1);
    /* Every budget a labelled tick (the methods sit nudged around it). */
    double *ticks = xy + (size_t)4 * nm * nb + 8;
    for (int b = 0; b < nb; b++) ticks[b] = r->budgets[b];
    /* Compressions and budgets are spread over powers of two: a log axis
     * spaces them evenly. */
    ap_plot_opts o = {.title = score ? "Task score vs KV compression (bars: 95% interval)"
                                     : "Agreement with full KV vs budget (bars: 95% interval)",
                      .xlabel = score ? "compression: full KV / resident KV (log scale)"
                                      : "KV budget (tokens, log scale; methods nudged apart)",
                      .ylabel = score ? "mean task score (x100)" : "agreement with full-KV tokens (%)",
                      .width = 900,
                      .height = 560,
                      .log_x = 1,
                      .styles = sty,
                      .xticks = score ? NULL : ticks,
                      .n_xticks = score ? 0 : nb};
    st = ap_plot_lines_err_png(path, &o, s, bars, ns, err);
cleanup:
    free(xy);
    free(labels);
    free(s);
    free(bars);
    free(sty);
    return st;
}

ap_status ap_tasks_write_png(const ap_tasks_result *r, const char *dir, ap_err *err) {
    ap_status st = check_result(r, dir, err);
    if (st) return st;
    if ((st = ap_mkdir_p(dir, err))) return st;
    if ((st = png_lines(r, dir, PLOT_SCORE_VS_COMPRESSION, err))) return st;
    return png_lines(r, dir, PLOT_AGREEMENT_VS_BUDGET, err);
}
