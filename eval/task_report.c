/* Task-suite reports: JSON (every run and every aggregate), Markdown (tables
 * for a reader) and PNG plots (docs/eval-tasks.md).
 *
 * All three read only the result, and every aggregate comes from
 * ap_tasks_cell_of, so the reports and the CLI's table agree. Scores,
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

void ap_tasks_cell_of(const ap_tasks_result *r, const char *task, const char *bucket, int m, int b,
                      ap_tasks_cell *out) {
    double score = 0, full = 0, agree = 0, kl = 0, same = 0, res = 0, fkv = 0, cold = 0, rec = 0;
    double tokens = 0, dec_s = 0, sel_s = 0, fetch = 0, sc_s = 0, pf_sc = 0, pf_wait = 0;
    int n = 0, n_rec = 0, n_pf = 0;
    if (m == 0) b = 0;
    for (int s = 0; s < r->n_samples; s++) {
        const ap_task_sample *sa = &r->samples[s];
        if ((task && strcmp(sa->task, task)) || (bucket && strcmp(sa->bucket, bucket))) continue;
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
    out->recovery = n_rec > 0 ? rec / n_rec : NAN;
    out->n_recovery = n_rec;
    out->fetch_kv_bytes = fetch / dn;
    out->score_ms_per_token = tokens > 0 ? 1000.0 * sc_s / tokens : NAN;
    out->prefetch_hidden = n_pf > 0 && pf_sc > 0 ? 1.0 - pf_wait / pf_sc : NAN;
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
    ap_jadd_str(j, cf, "predictor", c->predictor);
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
    ap_jadd_num(j, cf, "threads", c->threads);
    ap_jadd_num(j, cf, "prefetch_threads", c->prefetch_threads);
    ap_jadd_str(j, cf, "device", c->device == 1 ? "cuda" : "cpu");
    ap_jadd_bool(j, cf, "kv_offload", c->kv_offload);

    cJSON *mo = ap_jadd(j, root, "model", cJSON_CreateObject());
    ap_jadd_str(j, mo, "name", r->model_name);
    ap_jadd_str(j, mo, "path", c->model);
    ap_jadd_num(j, mo, "n_layer", r->n_layer);
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

static void json_cell(ap_jbuild *j, cJSON *arr, const ap_tasks_result *r, const char *task,
                      const char *bucket, int m, int b) {
    ap_tasks_cell c;
    ap_tasks_cell_of(r, task, bucket, m, b, &c);
    cJSON *o = ap_jadd(j, arr, NULL, cJSON_CreateObject());
    if (task) ap_jadd_str(j, o, "task", task);
    if (bucket) ap_jadd_str(j, o, "bucket", bucket);
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
    ap_jadd_num(j, o, "same", c.same);
    ap_jadd_num(j, o, "tokens_per_s", c.tokens_per_s);
    ap_jadd_num(j, o, "select_ms_per_token", c.select_ms_per_token);
    ap_jadd_num(j, o, "resident_kv_bytes", c.resident_kv_bytes);
    ap_jadd_num(j, o, "full_kv_bytes", c.full_kv_bytes);
    ap_jadd_num(j, o, "cold_kv_bytes", c.cold_kv_bytes);
    ap_jadd_num(j, o, "compression", c.compression);
    ap_jadd_num(j, o, "recovery", c.recovery);
    ap_jadd_num(j, o, "fetch_kv_bytes", c.fetch_kv_bytes);
    ap_jadd_num(j, o, "score_ms_per_token", c.score_ms_per_token);
    ap_jadd_num(j, o, "prefetch_hidden", c.prefetch_hidden);
}

/* Cells of one group in report order: full KV once, then method x budget. */
static void json_cells(ap_jbuild *j, cJSON *arr, const ap_tasks_result *r, const char *task,
                       const char *bucket) {
    json_cell(j, arr, r, task, bucket, 0, 0);
    for (int m = 1; m < r->n_methods; m++)
        for (int b = 0; b < r->n_budgets; b++) json_cell(j, arr, r, task, bucket, m, b);
}

static void json_summary(ap_jbuild *j, cJSON *root, const ap_tasks_result *r, const groups *g) {
    cJSON *su = ap_jadd(j, root, "summary", cJSON_CreateObject());
    json_cells(j, ap_jadd(j, su, "overall", cJSON_CreateArray()), r, NULL, NULL);
    cJSON *bt = ap_jadd(j, su, "by_task", cJSON_CreateArray());
    for (int i = 0; i < g->n; i++) json_cells(j, bt, r, g->task[i], g->bucket[i]);
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
    if (c->predictor) {
        fputs("- predictor: `", f);
        ap_md_text(f, c->predictor);
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

static void md_by_task(FILE *f, const ap_tasks_result *r, const groups *g) {
    fputs("\n## Per task\n\n", f);
    fputs("Mean score x100 per task and length bucket; n = samples.\n\n", f);
    fputs("| task | bucket | n | full |", f);
    for (int m = 1; m < r->n_methods; m++)
        for (int b = 0; b < r->n_budgets; b++) {
            fputc(' ', f);
            ap_md_text(f, r->methods[m].name);
            fprintf(f, "@%d |", r->budgets[b]);
        }
    fputs("\n|:--|:--|--:|--:|", f);
    for (int i = 0; i < (r->n_methods - 1) * r->n_budgets; i++) fputs("--:|", f);
    fputc('\n', f);
    /* The last row (i == g->n) is every sample together. */
    for (int i = 0; i <= g->n; i++) {
        const char *t = i < g->n ? g->task[i] : NULL, *bk = i < g->n ? g->bucket[i] : NULL;
        ap_tasks_cell c;
        ap_tasks_cell_of(r, t, bk, 0, 0, &c);
        fputs("| ", f);
        if (t) {
            ap_md_text(f, t);
            fputs(" | ", f);
            ap_md_text(f, bk);
        } else {
            fputs("**all** | ", f);
        }
        fprintf(f, " | %d", c.n);
        ap_md_num(f, 100.0 * c.score, 1);
        for (int m = 1; m < r->n_methods; m++)
            for (int b = 0; b < r->n_budgets; b++) {
                ap_tasks_cell_of(r, t, bk, m, b, &c);
                ap_md_num(f, 100.0 * c.score, 1);
            }
        fputs(" |\n", f);
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
              "enter; resident = slots in use x slot bytes (float32 K and V), averaged over the "
              "decode steps; fetch = KV copied into the pool per step (from the second step on; "
              "the newest key is written, not fetched). The process's memory does not shrink: the "
              "cold store still holds every key for every method, and both are host memory. Full "
              "KV is the whole cache. ",
              f);
    else
        fputs("Resident KV is **accounted from the kept sets, not measured**: the engine keeps "
              "the whole cache in one array and applies the selection inside attention. Per "
              "decode step, each layer and KV head counts the union of its query heads' kept "
              "tokens x head_dim x 2 (K and V) x 4 bytes (float32), averaged over the steps; that "
              "is what a paged cache would have to hold in fast memory. Fetch: KV per decode step "
              "that a hot cache backed by the cold store would have to bring in (blocks kept now "
              "and not at the previous step). ",
              f);
    fputs("Retrieval methods need the rest in a cold store (cold KV) to fetch from; eviction "
          "methods drop it. Compression = mean full KV / mean resident KV. Tokens/s: generated "
          "tokens / wall time of the free-running decode (selection included), on this engine "
          "and machine; select ms/token: the part of it spent choosing the kept set on the "
          "decoding thread; score ms/token: the selector's own work (scoring, history updates), "
          "wherever it ran; hidden: the share of it that cross-token prefetch overlapped with "
          "the model's own work.\n\n",
          f);
    fputs("| method | kind | budget | resident KV (MiB) | compression | cold KV (MiB) | fetch "
          "KiB/step | tokens/s | select ms/token | score ms/token | hidden |\n",
          f);
    fputs("|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n", f);
    for (int m = 0; m < r->n_methods; m++)
        for (int b = 0; b < (m == 0 ? 1 : r->n_budgets); b++) {
            ap_tasks_cell c;
            ap_tasks_cell_of(r, NULL, NULL, m, b, &c);
            fputs("| ", f);
            ap_md_method(f, r->methods[m].name, r->methods[m].label);
            fprintf(f, " | %s | ", ap_tasks_kind_name(&r->methods[m]));
            if (m == 0)
                fputs("-", f);
            else
                fprintf(f, "%d", r->budgets[b]);
            ap_md_num(f, c.resident_kv_bytes / MIB, 2);
            fputs(" | ", f);
            if (isfinite(c.compression))
                fprintf(f, "%.1fx", c.compression);
            else
                fputs("n/a", f);
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
    md_by_task(f, r, &g);
    md_memory(f, r);
    st = ap_report_close(f, tmp, path, err);
cleanup:
    groups_free(&g);
    return st;
}

/* ---- PNG ----------------------------------------------------------------------- */


typedef enum { PLOT_SCORE_VS_COMPRESSION, PLOT_AGREEMENT_VS_BUDGET } plot_kind;

/* One line per method over the budgets, plus full KV as a reference line. */
static ap_status png_lines(const ap_tasks_result *r, const char *dir, plot_kind kind, ap_err *err) {
    char path[AP_REPORT_PATH_BUF];
    const int score = kind == PLOT_SCORE_VS_COMPRESSION;
    ap_status st = ap_report_plot_path(path, dir, score ? "score_vs_compression.png" : "agreement_vs_budget.png", err);
    if (st) return st;
    const int nm = r->n_methods, nb = r->n_budgets;
    /* Per method: x and y over the budgets; the reference line takes 2 points. */
    double *xy = malloc(sizeof(double) * (size_t)(2 * nm * nb + 4));
    char(*labels)[128] = malloc(sizeof *labels * (size_t)nm);
    ap_plot_series *s = malloc(sizeof *s * (size_t)nm);
    if (!xy || !labels || !s) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    double xmin = INFINITY, xmax = -INFINITY;
    int ns = 0;
    for (int m = 1; m < nm; m++) {
        double *x = xy + (size_t)2 * ns * nb, *y = x + nb;
        int have = 0;
        for (int b = 0; b < nb; b++) {
            ap_tasks_cell c;
            ap_tasks_cell_of(r, NULL, NULL, m, b, &c);
            x[b] = score ? c.compression : r->budgets[b];
            y[b] = 100.0 * (score ? c.score : c.agreement);
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
        ns++;
    }
    /* Full KV: compression 1 by definition, agreement 100% by definition; a
     * horizontal line across the methods' x range makes the gap readable. */
    ap_tasks_cell fc;
    ap_tasks_cell_of(r, NULL, NULL, 0, 0, &fc);
    double *rx = xy + (size_t)2 * ns * nb, *ry = rx + 2;
    if (score) {
        rx[0] = 1.0;
        rx[1] = isfinite(xmax) && xmax > 1.0 ? xmax : 1.0;
    } else {
        rx[0] = isfinite(xmin) ? xmin : r->budgets[0];
        rx[1] = isfinite(xmax) ? xmax : r->budgets[nb - 1];
    }
    ry[0] = ry[1] = score ? 100.0 * fc.score : 100.0;
    snprintf(labels[ns], sizeof labels[ns], "full KV (reference%s)",
             isfinite(ry[0]) ? "" : ", no data");
    s[ns] = (ap_plot_series){.label = labels[ns], .x = rx, .y = ry, .n = rx[1] > rx[0] ? 2 : 1};
    ns++;
    /* Compressions and budgets are spread over powers of two: a log axis
     * spaces them evenly. */
    ap_plot_opts o = {.title = score ? "Task score vs KV compression" : "Agreement with full KV vs budget",
                      .xlabel = score ? "compression: full KV / resident KV (log scale)"
                                      : "KV budget (tokens, log scale)",
                      .ylabel = score ? "mean task score (x100)" : "agreement with full-KV tokens (%)",
                      .width = 900,
                      .height = 560,
                      .log_x = 1};
    st = ap_plot_lines_png(path, &o, s, ns, err);
cleanup:
    free(xy);
    free(labels);
    free(s);
    return st;
}

ap_status ap_tasks_write_png(const ap_tasks_result *r, const char *dir, ap_err *err) {
    ap_status st = check_result(r, dir, err);
    if (st) return st;
    if ((st = ap_mkdir_p(dir, err))) return st;
    if ((st = png_lines(r, dir, PLOT_SCORE_VS_COMPRESSION, err))) return st;
    return png_lines(r, dir, PLOT_AGREEMENT_VS_BUDGET, err);
}
