/* Task-suite reports (eval/task_report.c): a result built by hand (2 samples
 * of different tasks, full KV + Quest + StreamingLLM at 2 budgets), with
 * values that are multiples of 1/16 so means are exact in binary and print
 * without rounding ties, is written as JSON, Markdown and PNG into a fresh
 * temporary directory and read back: the summary math (means, score relative
 * to full KV, compression = full / resident, tokens/s from totals, NaN ->
 * null), the per-sample runs, the Markdown rows, the PNG signatures, and the
 * error path for an unwritable destination. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/plot.h"
#include "common/util.h"
#include "eval/task_report.h"
#include "eval/tasks.h"
#include "helpers/png_probe.h"

#define N_SAMPLE 2
#define N_METHOD 3
#define N_BUDGET 2
#define MIB (1024.0 * 1024.0)

enum { M_FULL, M_QUEST, M_STREAM };

static const int k_budgets[N_BUDGET] = {256, 512};

/* [method][budget][sample]; full KV repeats its run at every budget. Sample
 * 0's full-KV score is 0, so its task's relative scores are undefined. */
static const double k_score[N_METHOD][N_BUDGET][N_SAMPLE] = {
    {{0, 1}, {0, 1}}, {{0.25, 0.75}, {0, 0.5}}, {{0, 0.25}, {0.5, 0.5}}};
static const double k_agree[N_METHOD][N_BUDGET][N_SAMPLE] = {
    {{1, 1}, {1, 1}}, {{0.875, 0.625}, {1, 0.8125}}, {{0.25, 0.4375}, {0.75, 0.75}}};
static const double k_kl[N_METHOD][N_BUDGET][N_SAMPLE] = {
    {{0, 0}, {0, 0}}, {{0.125, 0.375}, {0, 0.25}}, {{1, 2}, {0.5, 0.5}}};
static const int k_same[N_METHOD][N_BUDGET][N_SAMPLE] = {
    {{1, 1}, {1, 1}}, {{0, 1}, {0, 0}}, {{0, 0}, {1, 0}}};
/* resident KV in MiB; full KV is 4 and 12 MiB */
static const double k_res_mib[N_METHOD][N_BUDGET][N_SAMPLE] = {
    {{4, 12}, {4, 12}}, {{1, 3}, {2, 6}}, {{1, 3}, {2, 6}}};
static const double k_full_mib[N_SAMPLE] = {4, 12};
static const double k_recovery[N_METHOD][N_BUDGET][N_SAMPLE] = {
    {{NAN, NAN}, {NAN, NAN}}, {{0.875, NAN}, {0.75, 0.5}}, {{NAN, NAN}, {NAN, NAN}}};
static const int k_n_gen[N_METHOD][N_SAMPLE] = {{8, 16}, {8, 16}, {8, 12}};
static const double k_decode_s[N_METHOD][N_SAMPLE] = {{0.5, 1.5}, {0.5, 2.0}, {0.25, 0.75}};
static const double k_select_s[N_METHOD][N_SAMPLE] = {{0, 0}, {0.004, 0.008}, {0, 0}};

/* An output with characters JSON must escape. */
static const char *k_output = "The pass key is \"12345\"\n|done";

static char g_dir[1024];

static void make_dir(void) {
    const char *t = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/ap_task_report_XXXXXX", t && *t ? t : "/tmp");
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

TestSuite(task_report, .init = make_dir, .fini = clean_dir);

static void set_method(ap_task_method *m, const char *name, const char *label, ap_sel_kind kind,
                       int is_full) {
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->label, sizeof m->label, "%s", label);
    m->kind = kind;
    m->is_full = is_full;
}

static void set_sample(ap_task_sample *s, const char *id, const char *task, const char *bucket,
                       const char *metric, int n_prompt) {
    memset(s, 0, sizeof *s);
    snprintf(s->id, sizeof s->id, "%s", id);
    snprintf(s->task, sizeof s->task, "%s", task);
    snprintf(s->category, sizeof s->category, "%s", "synthetic");
    snprintf(s->bucket, sizeof s->bucket, "%s", bucket);
    snprintf(s->metric, sizeof s->metric, "%s", metric);
    s->n_prompt = n_prompt;
    s->max_new_tokens = 16;
    s->prefill_seconds = 0.25;
}

/* Allocated the way ap_tasks_run does, so ap_tasks_result_free frees it. */
static ap_tasks_result *build_result(void) {
    ap_tasks_result *r = calloc(1, sizeof *r);
    cr_assert_not_null(r);
    ap_tasks_config_default(&r->config);
    r->config.model = "models/tiny.gguf";
    r->config.tasks_file = "data/tasks/quick.jsonl";
    r->config.n_budgets = N_BUDGET;
    memcpy(r->config.budgets, k_budgets, sizeof k_budgets);
    snprintf(r->model_name, sizeof r->model_name, "%s", "Tiny-Test");
    r->n_layer = 2;
    r->n_head = 4;
    r->n_head_kv = 2;
    r->head_dim = 16;
    r->n_samples = N_SAMPLE;
    r->samples = calloc(N_SAMPLE, sizeof *r->samples);
    cr_assert_not_null(r->samples);
    set_sample(&r->samples[0], "passkey-0-2k-0", "passkey", "0-2k", "first_int", 1100);
    set_sample(&r->samples[1], "doc_qa-2-4k-0", "doc_qa", "2-4k", "qa_f1", 2300);
    r->n_methods = N_METHOD;
    set_method(&r->methods[M_FULL], "full", "Full KV cache", AP_SEL_BOUND, 1);
    set_method(&r->methods[M_QUEST], "quest", "Quest", AP_SEL_RETRIEVAL, 0);
    set_method(&r->methods[M_STREAM], "streaming", "StreamingLLM", AP_SEL_EVICTION, 0);
    r->n_budgets = N_BUDGET;
    memcpy(r->budgets, k_budgets, sizeof k_budgets);
    r->runs = calloc(N_SAMPLE * N_METHOD * N_BUDGET, sizeof *r->runs);
    cr_assert_not_null(r->runs);
    for (int s = 0; s < N_SAMPLE; s++)
        for (int m = 0; m < N_METHOD; m++)
            for (int b = 0; b < N_BUDGET; b++) {
                ap_task_run *x = ap_tasks_run_at(r, s, m, b);
                x->score = k_score[m][b][s];
                x->agreement = k_agree[m][b][s];
                x->kl = k_kl[m][b][s];
                x->same = k_same[m][b][s];
                x->n_gen = k_n_gen[m][s];
                x->decode_seconds = k_decode_s[m][s];
                x->select_seconds = k_select_s[m][s];
                x->resident_kv_bytes = k_res_mib[m][b][s] * MIB;
                x->full_kv_bytes = k_full_mib[s] * MIB;
                x->cold_kv_bytes = m == M_QUEST ? x->full_kv_bytes : 0;
                x->recovery = k_recovery[m][b][s];
                if (m == M_QUEST) {
                    /* Scoring twice the select time, half of it waited for
                     * (prefetched): 50% hidden; 1 KiB fetched per step. */
                    x->score_seconds = 2 * x->select_seconds;
                    x->prefetch_wait_seconds = x->select_seconds;
                    x->prefetched = 10;
                    x->fetch_kv_bytes = 1024.0;
                }
                x->output = strdup(k_output);
                cr_assert_not_null(x->output);
            }
    r->n_dropped = 1;
    snprintf(r->dropped[0], sizeof r->dropped[0], "%s", "attnpred");
    snprintf(r->dropped_reason[0], sizeof r->dropped_reason[0], "%s", "no predictor given");
    r->seconds = 12.5;
    return r;
}

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_dir, name); }

static char *read_text(const char *path) {
    char *text = NULL;
    size_t len = 0;
    ap_err err = {0};
    cr_assert_eq(ap_read_file(path, &text, &len, &err), AP_OK, "%s", err.msg);
    return text;
}

static cJSON *load_json(const char *path) {
    char *text = read_text(path);
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

static void is_null(const cJSON *o, const char *key) {
    cr_assert(cJSON_IsNull(get(o, key)), "\"%s\" should be null", key);
}

static const char *str(const cJSON *o, const char *key) {
    const cJSON *v = get(o, key);
    cr_assert(cJSON_IsString(v), "\"%s\" is not a string", key);
    return v->valuestring;
}

#define NEAR(a, b) cr_assert(fabs((a) - (b)) < 1e-9, "%s = %.12g, expected %.12g", #a, (double)(a), (double)(b))

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

Test(task_report, json_header_and_samples) {
    ap_tasks_result *r = build_result();
    char path[1200];
    ap_err err = {0};
    path_in(path, sizeof path, "tasks.json");
    cr_assert_eq(ap_tasks_write_json(r, path, &err), AP_OK, "%s", err.msg);
    cJSON *j = load_json(path);

    cr_assert_str_eq(str(j, "schema"), "attnpred-eval-tasks");
    cr_assert_eq(num(j, "version"), 1);
    NEAR(num(j, "seconds"), 12.5);
    const cJSON *cf = get(j, "config");
    cr_assert_str_eq(str(cf, "tasks_file"), "data/tasks/quick.jsonl");
    is_null(cf, "predictor");
    const cJSON *bu = get(cf, "budgets");
    cr_assert_eq(cJSON_GetArraySize(bu), N_BUDGET);
    cr_assert_eq(cJSON_GetArrayItem(bu, 1)->valueint, 512);
    cr_assert_eq(cJSON_GetArraySize(get(cf, "methods")), N_METHOD);
    cr_assert_str_eq(cJSON_GetArrayItem(get(cf, "methods"), 0)->valuestring, "full");
    cr_assert_str_eq(str(cf, "kv_mode"), "per_qhead");
    cr_assert(cJSON_IsTrue(get(cf, "teacher_forced")));
    cr_assert_eq(num(cf, "sink"), 64);
    cr_assert_eq(num(cf, "local"), 64);
    cr_assert_eq(num(cf, "block"), 16);
    cr_assert_eq(num(cf, "calib"), 5);
    cr_assert_eq(num(cf, "threads"), 2);
    const cJSON *mo = get(j, "model");
    cr_assert_str_eq(str(mo, "name"), "Tiny-Test");
    cr_assert_eq(num(mo, "n_layer"), 2);
    cr_assert_eq(num(mo, "n_head"), 4);
    cr_assert_eq(num(mo, "n_head_kv"), 2);
    cr_assert_eq(num(mo, "head_dim"), 16);

    const cJSON *dr = get(j, "dropped");
    cr_assert_eq(cJSON_GetArraySize(dr), 1);
    cr_assert_str_eq(str(cJSON_GetArrayItem(dr, 0), "method"), "attnpred");
    cr_assert_str_eq(str(cJSON_GetArrayItem(dr, 0), "reason"), "no predictor given");

    const cJSON *sa = get(j, "samples");
    cr_assert_eq(cJSON_GetArraySize(sa), N_SAMPLE);
    const cJSON *s1 = cJSON_GetArrayItem(sa, 1);
    cr_assert_str_eq(str(s1, "id"), "doc_qa-2-4k-0");
    cr_assert_str_eq(str(s1, "task"), "doc_qa");
    cr_assert_str_eq(str(s1, "category"), "synthetic");
    cr_assert_str_eq(str(s1, "bucket"), "2-4k");
    cr_assert_str_eq(str(s1, "metric"), "qa_f1");
    cr_assert_eq(num(s1, "n_prompt"), 2300);
    cr_assert_eq(num(s1, "max_new_tokens"), 16);
    NEAR(num(s1, "prefill_seconds"), 0.25);
    /* full KV once (budget null), then method x budget */
    const cJSON *runs = get(s1, "runs");
    cr_assert_eq(cJSON_GetArraySize(runs), 1 + (N_METHOD - 1) * N_BUDGET);
    const cJSON *f = cJSON_GetArrayItem(runs, 0);
    cr_assert_str_eq(str(f, "method"), "full");
    cr_assert_str_eq(str(f, "kind"), "full");
    is_null(f, "budget");
    NEAR(num(f, "score"), 1);
    NEAR(num(f, "compression"), 1);
    is_null(f, "recovery");
    const cJSON *q = cJSON_GetArrayItem(runs, 1);
    cr_assert_str_eq(str(q, "method"), "quest");
    cr_assert_str_eq(str(q, "kind"), "retrieval");
    cr_assert_eq(num(q, "budget"), 256);
    NEAR(num(q, "score"), 0.75);
    NEAR(num(q, "agreement"), 0.625);
    NEAR(num(q, "kl"), 0.375);
    cr_assert(cJSON_IsTrue(get(q, "same")));
    cr_assert_eq(num(q, "n_gen"), 16);
    NEAR(num(q, "decode_seconds"), 2.0);
    NEAR(num(q, "tokens_per_s"), 8.0);
    NEAR(num(q, "select_ms_per_token"), 0.5);
    NEAR(num(q, "resident_kv_bytes"), 3 * MIB);
    NEAR(num(q, "full_kv_bytes"), 12 * MIB);
    NEAR(num(q, "cold_kv_bytes"), 12 * MIB);
    NEAR(num(q, "compression"), 4.0);
    is_null(q, "recovery"); /* NaN in the result */
    cr_assert_str_eq(str(q, "output"), k_output);
    const cJSON *st = cJSON_GetArrayItem(runs, 4);
    cr_assert_str_eq(str(st, "method"), "streaming");
    cr_assert_str_eq(str(st, "kind"), "eviction");
    cr_assert_eq(num(st, "budget"), 512);
    NEAR(num(st, "cold_kv_bytes"), 0);
    NEAR(num(st, "compression"), 2.0);
    /* sample 0's quest@256 did measure recovery */
    NEAR(num(cJSON_GetArrayItem(get(cJSON_GetArrayItem(sa, 0), "runs"), 1), "recovery"), 0.875);
    cJSON_Delete(j);
    ap_tasks_result_free(r);
}

/* The summary entry for (method, budget) in an array, NULL budget = full KV. */
static const cJSON *find_cell(const cJSON *arr, const char *task, const char *method, int budget) {
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "task");
        if (task && (!cJSON_IsString(t) || strcmp(t->valuestring, task))) continue;
        if (strcmp(str(e, "method"), method)) continue;
        const cJSON *b = get(e, "budget");
        if (budget < 0 ? cJSON_IsNull(b) : (cJSON_IsNumber(b) && b->valueint == budget)) return e;
    }
    cr_assert_fail("no summary entry for %s %s@%d", task ? task : "(all)", method, budget);
    return NULL;
}

Test(task_report, json_summary_math) {
    ap_tasks_result *r = build_result();
    char path[1200];
    ap_err err = {0};
    path_in(path, sizeof path, "summary.json");
    cr_assert_eq(ap_tasks_write_json(r, path, &err), AP_OK, "%s", err.msg);
    cJSON *j = load_json(path);
    const cJSON *su = get(j, "summary");
    const cJSON *ov = get(su, "overall");
    /* full once, then method x budget */
    cr_assert_eq(cJSON_GetArraySize(ov), 1 + (N_METHOD - 1) * N_BUDGET);

    const cJSON *f = cJSON_GetArrayItem(ov, 0);
    cr_assert_str_eq(str(f, "method"), "full");
    cr_assert_str_eq(str(f, "kind"), "full");
    is_null(f, "budget");
    cr_assert_eq(num(f, "n"), 2);
    NEAR(num(f, "score"), 0.5);
    NEAR(num(f, "score_rel_full"), 1.0);
    NEAR(num(f, "agreement"), 1.0);
    NEAR(num(f, "kl"), 0.0);
    NEAR(num(f, "tokens_per_s"), 24.0 / 2.0);
    NEAR(num(f, "resident_kv_bytes"), 8 * MIB);
    NEAR(num(f, "compression"), 1.0);
    is_null(f, "recovery");

    const cJSON *q = find_cell(ov, NULL, "quest", 256);
    cr_assert_str_eq(str(q, "kind"), "retrieval");
    cr_assert_eq(num(q, "n"), 2);
    NEAR(num(q, "score"), 0.5);
    NEAR(num(q, "score_rel_full"), 0.5 / 0.5);
    NEAR(num(q, "agreement"), 0.75);
    NEAR(num(q, "kl"), 0.25);
    NEAR(num(q, "same"), 0.5);
    /* total tokens / total seconds, not the mean of 16 and 8 tokens/s */
    NEAR(num(q, "tokens_per_s"), 24.0 / 2.5);
    NEAR(num(q, "select_ms_per_token"), 12.0 / 24.0);
    NEAR(num(q, "score_ms_per_token"), 2 * 12.0 / 24.0);
    NEAR(num(q, "prefetch_hidden"), 0.5);
    NEAR(num(q, "fetch_kv_bytes"), 1024.0);
    NEAR(num(q, "resident_kv_bytes"), 2 * MIB);
    NEAR(num(q, "full_kv_bytes"), 8 * MIB);
    NEAR(num(q, "cold_kv_bytes"), 8 * MIB);
    NEAR(num(q, "compression"), 8.0 / 2.0);
    NEAR(num(q, "recovery"), 0.875); /* the NaN sample is left out, not counted as 0 */

    const cJSON *q5 = find_cell(ov, NULL, "quest", 512);
    NEAR(num(q5, "score"), 0.25);
    NEAR(num(q5, "score_rel_full"), 0.5);
    NEAR(num(q5, "agreement"), 0.90625);
    NEAR(num(q5, "compression"), 2.0);
    NEAR(num(q5, "recovery"), 0.625);

    const cJSON *s2 = find_cell(ov, NULL, "streaming", 256);
    cr_assert_str_eq(str(s2, "kind"), "eviction");
    NEAR(num(s2, "score"), 0.125);
    NEAR(num(s2, "score_rel_full"), 0.25);
    NEAR(num(s2, "kl"), 1.5);
    NEAR(num(s2, "tokens_per_s"), 20.0 / 1.0);
    NEAR(num(s2, "select_ms_per_token"), 0.0);
    cr_expect(cJSON_IsNull(get(s2, "prefetch_hidden")), "no prefetch: hidden is null");
    NEAR(num(s2, "cold_kv_bytes"), 0.0);
    is_null(s2, "recovery");

    /* per (task, bucket): sample 0 (passkey) has full-KV score 0, so every
     * relative score there is null, its own included */
    const cJSON *bt = get(su, "by_task");
    cr_assert_eq(cJSON_GetArraySize(bt), 2 * (1 + (N_METHOD - 1) * N_BUDGET));
    const cJSON *pf = cJSON_GetArrayItem(bt, 0);
    cr_assert_str_eq(str(pf, "task"), "passkey");
    cr_assert_str_eq(str(pf, "bucket"), "0-2k");
    cr_assert_str_eq(str(pf, "method"), "full");
    NEAR(num(pf, "score"), 0.0);
    is_null(pf, "score_rel_full");
    const cJSON *pq = find_cell(bt, "passkey", "quest", 256);
    cr_assert_eq(num(pq, "n"), 1);
    NEAR(num(pq, "score"), 0.25);
    is_null(pq, "score_rel_full");
    NEAR(num(pq, "compression"), 4.0);
    const cJSON *dq = find_cell(bt, "doc_qa", "quest", 256);
    cr_assert_str_eq(str(dq, "bucket"), "2-4k");
    NEAR(num(dq, "score"), 0.75);
    NEAR(num(dq, "score_rel_full"), 0.75);
    is_null(dq, "recovery");
    NEAR(num(find_cell(bt, "doc_qa", "streaming", 512), "tokens_per_s"), 12.0 / 0.75);
    cJSON_Delete(j);
    ap_tasks_result_free(r);
}

/* The CLI's table reads the same aggregates as the reports. */
Test(task_report, cell_of_filters_by_task_and_bucket) {
    ap_tasks_result *r = build_result();
    ap_tasks_cell c;
    ap_tasks_cell_of(r, "doc_qa", NULL, M_STREAM, 0, &c);
    cr_assert_eq(c.n, 1);
    NEAR(c.score, 0.25);
    NEAR(c.score_rel_full, 0.25);
    ap_tasks_cell_of(r, "doc_qa", "0-2k", M_STREAM, 0, &c);
    cr_assert_eq(c.n, 0);
    cr_assert(isnan(c.score) && isnan(c.compression) && isnan(c.tokens_per_s));
    /* full KV ignores the budget index */
    ap_tasks_cell_of(r, NULL, NULL, M_FULL, 1, &c);
    NEAR(c.score, 0.5);
    cr_assert_str_eq(ap_tasks_kind_name(&r->methods[M_FULL]), "full");
    cr_assert_str_eq(ap_tasks_kind_name(&r->methods[M_QUEST]), "retrieval");
    ap_tasks_result_free(r);
}

#define ASSERT_HAS(text, s) cr_assert_not_null(strstr((text), (s)), "missing in the Markdown: %s", (s))

Test(task_report, markdown_tables) {
    ap_tasks_result *r = build_result();
    char path[1200];
    ap_err err = {0};
    path_in(path, sizeof path, "tasks.md");
    cr_assert_eq(ap_tasks_write_md(r, path, &err), AP_OK, "%s", err.msg);
    char *md = read_text(path);

    ASSERT_HAS(md, "# Live compressed-KV decoding on the task suite");
    ASSERT_HAS(md, "- model: `Tiny-Test`: 2 layers x 4 query heads (2 KV heads), head_dim 16");
    ASSERT_HAS(md, "`data/tasks/quick.jsonl`: 2 samples, 2 tasks (passkey, doc_qa)");
    ASSERT_HAS(md, "- not run: `attnpred` (no predictor given)");
    /* overall: score x100 (rel, agreement, KL) */
    ASSERT_HAS(md, "| method | kind | B=256 | B=512 |");
    ASSERT_HAS(md, "| Full KV cache (`full`) | full | 50.0 | 50.0 |");
    ASSERT_HAS(md, "| Quest (`quest`) | retrieval | 50.0 (100%, 75%, 0.250) | 25.0 (50%, 91%, 0.125) |");
    ASSERT_HAS(md, "| StreamingLLM (`streaming`) | eviction | 12.5 (25%, 34%, 1.500) | "
                   "50.0 (100%, 75%, 0.500) |");
    /* per task */
    ASSERT_HAS(md, "| task | bucket | n | full | quest@256 | quest@512 | streaming@256 | streaming@512 |");
    ASSERT_HAS(md, "| passkey | 0-2k | 1 | 0.0 | 25.0 | 0.0 | 0.0 | 50.0 |");
    ASSERT_HAS(md, "| doc_qa | 2-4k | 1 | 100.0 | 75.0 | 50.0 | 25.0 | 50.0 |");
    ASSERT_HAS(md, "| **all** |  | 2 | 50.0 | 50.0 | 25.0 | 12.5 | 50.0 |");
    /* memory and speed, honestly labelled */
    ASSERT_HAS(md, "accounted from the kept sets, not measured");
    /* budget ratio: full KV of 4 and 12 MiB at 512 bytes a token (2 layers x
     * 2 KV heads x 16 x K and V x 4 bytes) = 16384 tokens on average */
    ASSERT_HAS(md, "| Full KV cache (`full`) | full | - | 8.00 | 1.0x | n/a | 0.00 | 0.0 | 12.0 | 0.00 | "
                   "0.00 | - |");
    ASSERT_HAS(md, "| Quest (`quest`) | retrieval | 256 | 2.00 | 4.0x | 64.0x | 8.00 | 1.0 | 9.6 | 0.50 | "
                   "1.00 | 50% |");
    ASSERT_HAS(md, "| StreamingLLM (`streaming`) | eviction | 512 | 4.00 | 2.0x | 32.0x | 0.00 | 0.0 | 20.0 | "
                   "0.00 | 0.00 | - |");
    /* the sections come in order */
    const char *a = strstr(md, "## Overall"), *b = strstr(md, "## Per task"),
               *c = strstr(md, "## KV memory and speed");
    cr_assert(a && b && c && a < b && b < c);
    free(md);
    /* Runs measured on the hot pool are labelled so, and not as accounted. */
    for (int s = 0; s < N_SAMPLE; s++)
        for (int b2 = 0; b2 < N_BUDGET; b2++) ap_tasks_run_at(r, s, M_QUEST, b2)->kv_measured = 1;
    cr_assert_eq(ap_tasks_write_md(r, path, &err), AP_OK, "%s", err.msg);
    md = read_text(path);
    ASSERT_HAS(md, "measured on the hot pool");
    cr_expect_null(strstr(md, "accounted from the kept sets, not measured"));
    free(md);
    ap_tasks_result_free(r);
}

static void assert_png(const char *path) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s was not written", path);
    unsigned char sig[8] = {0};
    size_t n = fread(sig, 1, sizeof sig, f);
    fclose(f);
    static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    cr_assert_eq(n, 8, "%s is too short", path);
    cr_assert_arr_eq(sig, png_sig, 8, "%s does not start with the PNG signature", path);
}

/* The two ratios by hand, with contexts of 1024 and 3072 tokens (2048 on
 * average; 512 bytes a token): at 256 each method holds 384 tokens, so
 * compression = 2048 / 384 = 5.33x while the budget promises 2048 / 256 =
 * 8x; at 4096, above every context, everything is resident: compression
 * 1.0x, budget ratio 0.5x (0.25x and 0.75x per sample). */
Test(task_report, compression_is_measured_budget_ratio_is_promised) {
    ap_tasks_result *r = build_result();
    const double tok = 512.0, ctx[N_SAMPLE] = {1024, 3072};
    r->budgets[1] = r->config.budgets[1] = 4096;
    for (int s = 0; s < N_SAMPLE; s++)
        for (int m = 0; m < N_METHOD; m++)
            for (int b = 0; b < N_BUDGET; b++) {
                ap_task_run *x = ap_tasks_run_at(r, s, m, b);
                x->full_kv_bytes = ctx[s] * tok;
                x->resident_kv_bytes = m == M_FULL || b == 1 ? x->full_kv_bytes : 384 * tok;
            }
    ap_tasks_cell c;
    ap_tasks_cell_of(r, NULL, NULL, M_QUEST, 0, &c);
    NEAR(c.compression, 2048.0 / 384.0);
    NEAR(c.budget_ratio, 8.0);
    ap_tasks_cell_of(r, NULL, NULL, M_STREAM, 1, &c);
    NEAR(c.compression, 1.0);
    NEAR(c.budget_ratio, 0.5);
    ap_tasks_cell_of(r, NULL, NULL, M_FULL, 0, &c);
    NEAR(c.compression, 1.0);
    cr_assert(isnan(c.budget_ratio), "full KV has no budget");

    char path[1200];
    ap_err err = {0};
    path_in(path, sizeof path, "ratios.json");
    cr_assert_eq(ap_tasks_write_json(r, path, &err), AP_OK, "%s", err.msg);
    cJSON *j = load_json(path);
    const cJSON *ov = get(get(j, "summary"), "overall");
    const cJSON *q = find_cell(ov, NULL, "quest", 256);
    NEAR(num(q, "compression"), 2048.0 / 384.0);
    NEAR(num(q, "budget_ratio"), 8.0);
    const cJSON *q4 = find_cell(ov, NULL, "quest", 4096);
    NEAR(num(q4, "compression"), 1.0);
    NEAR(num(q4, "budget_ratio"), 0.5);
    is_null(find_cell(ov, NULL, "full", -1), "budget_ratio");
    /* per run: sample 0's quest at 4096 (runs: full, then method x budget) */
    const cJSON *run = cJSON_GetArrayItem(get(cJSON_GetArrayItem(get(j, "samples"), 0), "runs"),
                                          1 + (M_QUEST - 1) * N_BUDGET + 1);
    cr_assert_str_eq(str(run, "method"), "quest");
    cr_assert_eq(num(run, "budget"), 4096);
    NEAR(num(run, "compression"), 1.0);
    NEAR(num(run, "budget_ratio"), 0.25);
    cJSON_Delete(j);

    path_in(path, sizeof path, "ratios.md");
    cr_assert_eq(ap_tasks_write_md(r, path, &err), AP_OK, "%s", err.msg);
    char *md = read_text(path);
    ASSERT_HAS(md, "| Quest (`quest`) | retrieval | 256 | 0.19 | 5.3x | 8.0x |");
    ASSERT_HAS(md, "| Quest (`quest`) | retrieval | 4096 | 1.00 | 1.0x | 0.5x |");
    free(md);
    ap_tasks_result_free(r);
}

Test(task_report, png_files) {
    ap_tasks_result *r = build_result();
    char dir[1200], p[1400];
    ap_err err = {0};
    path_in(dir, sizeof dir, "plots/nested"); /* two missing levels: created */
    cr_assert_eq(ap_tasks_write_png(r, dir, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(count_files(dir), 2, "expected exactly the two plots (no temporary file)");
    snprintf(p, sizeof p, "%s/score_vs_compression.png", dir);
    assert_png(p);
    snprintf(p, sizeof p, "%s/agreement_vs_budget.png", dir);
    assert_png(p);
    ap_tasks_result_free(r);
}

/* A method scoring exactly as full KV (the oracle usually does) lies on the
 * full-KV reference line: the reference is drawn first, behind, so the
 * method's line stays visible on top of it, and the reference (dashed, wide)
 * still shows. Pixels are counted near each series' colour: the reference
 * has the colour after the methods', quest the first. Scores are the same
 * for every sample, so no error bar stands out of the line. */
Test(task_report, reference_line_does_not_hide_an_equal_method) {
    ap_tasks_result *r = build_result();
    for (int s = 0; s < N_SAMPLE; s++)
        for (int b = 0; b < N_BUDGET; b++) {
            ap_tasks_run_at(r, s, M_FULL, b)->score = 1.0;
            ap_tasks_run_at(r, s, M_QUEST, b)->score = 1.0;
        }
    char dir[1200], p[1400];
    ap_err err = {0};
    path_in(dir, sizeof dir, "equal");
    cr_assert_eq(ap_tasks_write_png(r, dir, &err), AP_OK, "%s", err.msg);
    snprintf(p, sizeof p, "%s/score_vs_compression.png", dir);
    ap_png_image im;
    char msg[300];
    cr_assert_eq(ap_png_read(p, &im, msg, sizeof msg), 0, "%s", msg);
    unsigned char quest[3], full[3];
    ap_plot_palette_color(0, quest);
    ap_plot_palette_color(N_METHOD - 1, full);
    /* Far more than a legend sample (about 30 x 2 px) of each. */
    long nq = ap_png_count_near(&im, quest, 40, 0, 0, im.w, im.h);
    long nf = ap_png_count_near(&im, full, 40, 0, 0, im.w, im.h);
    cr_assert_gt(nq, 300, "the method under the reference: %ld px", nq);
    cr_assert_gt(nf, 300, "the reference: %ld px", nf);
    ap_png_free(&im);
    ap_tasks_result_free(r);
}

/* No samples (a filter that matched nothing): every report is still
 * written, with n = 0 and nulls rather than zeros. */
Test(task_report, empty_result) {
    ap_tasks_result *r = build_result();
    for (int i = 0; i < N_SAMPLE * N_METHOD * N_BUDGET; i++) free(r->runs[i].output);
    free(r->runs);
    free(r->samples);
    r->runs = NULL;
    r->samples = NULL;
    r->n_samples = 0;
    char path[1200], md[1200], dir[1200];
    ap_err err = {0};
    path_in(path, sizeof path, "empty.json");
    path_in(md, sizeof md, "empty.md");
    path_in(dir, sizeof dir, "empty_png");
    cr_assert_eq(ap_tasks_write_json(r, path, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tasks_write_md(r, md, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tasks_write_png(r, dir, &err), AP_OK, "%s", err.msg);
    cJSON *j = load_json(path);
    cr_assert_eq(cJSON_GetArraySize(get(j, "samples")), 0);
    const cJSON *ov = get(get(j, "summary"), "overall");
    cr_assert_eq(cJSON_GetArraySize(ov), 1 + (N_METHOD - 1) * N_BUDGET);
    const cJSON *q = find_cell(ov, NULL, "quest", 512);
    cr_assert_eq(num(q, "n"), 0);
    is_null(q, "score");
    is_null(q, "score_rel_full");
    is_null(q, "compression");
    cr_assert_eq(cJSON_GetArraySize(get(get(j, "summary"), "by_task")), 0);
    cJSON_Delete(j);
    ap_tasks_result_free(r);
}

/* A path whose parent is a regular file cannot be created, even by root:
 * each writer must fail with a message naming the path and leave nothing
 * behind. */
Test(task_report, unwritable_destination_names_path_and_leaves_nothing) {
    ap_tasks_result *r = build_result();
    char blocker[1200], json[1300], md[1300], pngdir[1300];
    path_in(blocker, sizeof blocker, "blocker");
    FILE *f = fopen(blocker, "w");
    cr_assert_not_null(f);
    fclose(f);
    snprintf(json, sizeof json, "%s/out.json", blocker);
    snprintf(md, sizeof md, "%s/out.md", blocker);
    snprintf(pngdir, sizeof pngdir, "%s/png", blocker);

    ap_err err = {0};
    cr_assert_eq(ap_tasks_write_json(r, json, &err), AP_ERR_IO);
    cr_assert_not_null(strstr(err.msg, json), "message does not name the path: %s", err.msg);
    ap_err_clear(&err);
    cr_assert_eq(ap_tasks_write_md(r, md, &err), AP_ERR_IO);
    cr_assert_not_null(strstr(err.msg, md), "message does not name the path: %s", err.msg);
    ap_err_clear(&err);
    cr_assert_eq(ap_tasks_write_png(r, pngdir, &err), AP_ERR_IO);
    cr_assert_not_null(strstr(err.msg, pngdir), "message does not name the path: %s", err.msg);
    cr_assert_eq(count_files(g_dir), 1, "only the blocker file may exist");

    /* an existing output is replaced whole, and no temporary file remains */
    char ok[1200];
    path_in(ok, sizeof ok, "again.json");
    cr_assert_eq(ap_tasks_write_json(r, ok, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tasks_write_json(r, ok, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(count_files(g_dir), 2, "a temporary file was left behind");
    ap_tasks_result_free(r);
}

Test(task_report, bad_arguments) {
    ap_tasks_result *r = build_result();
    char path[1200];
    ap_err err = {0};
    path_in(path, sizeof path, "x.json");
    cr_assert_eq(ap_tasks_write_json(NULL, path, &err), AP_ERR_ARG);
    cr_assert_not_null(strstr(err.msg, path));
    cr_assert_eq(ap_tasks_write_md(r, NULL, &err), AP_ERR_ARG);
    cr_assert_eq(ap_tasks_write_png(r, "", &err), AP_ERR_ARG);
    r->methods[0].is_full = 0; /* methods[0] must be full KV */
    cr_assert_eq(ap_tasks_write_json(r, path, &err), AP_ERR_ARG);
    cr_assert_not_null(strstr(err.msg, "full KV"), "%s", err.msg);
    r->methods[0].is_full = 1;
    r->n_budgets = 0;
    cr_assert_eq(ap_tasks_write_png(r, g_dir, &err), AP_ERR_ARG);
    cr_assert_not_null(strstr(err.msg, g_dir));
    r->n_budgets = N_BUDGET;
    cr_assert_eq(count_files(g_dir), 0);
    ap_tasks_result_free(r);
}

/* ---- intervals, paired differences and the failed-task rule -------------- */

/* A result of n samples for the methods named (the first is full KV), one
 * budget of 256; every run scores 0 with agreement 1 and KL 0 until set.
 * Sample s belongs to task tasks[s] (bucket "0-2k"). */
static ap_tasks_result *small_result(int n, const char *const *tasks, const char *const *methods,
                                     int n_methods) {
    ap_tasks_result *r = calloc(1, sizeof *r);
    cr_assert_not_null(r);
    ap_tasks_config_default(&r->config);
    r->config.tasks_file = "synthetic.jsonl";
    snprintf(r->model_name, sizeof r->model_name, "%s", "Tiny-Test");
    r->n_samples = n;
    r->samples = calloc((size_t)n, sizeof *r->samples);
    cr_assert_not_null(r->samples);
    for (int s = 0; s < n; s++) {
        char id[32];
        snprintf(id, sizeof id, "%s-%d", tasks[s], s);
        set_sample(&r->samples[s], id, tasks[s], "0-2k", "first_int", 1000);
    }
    r->n_methods = n_methods;
    for (int m = 0; m < n_methods; m++)
        set_method(&r->methods[m], methods[m], methods[m], m ? AP_SEL_RETRIEVAL : AP_SEL_BOUND, m == 0);
    r->n_budgets = 1;
    r->budgets[0] = 256;
    r->runs = calloc((size_t)n * n_methods, sizeof *r->runs);
    cr_assert_not_null(r->runs);
    for (int i = 0; i < n * n_methods; i++) {
        r->runs[i].agreement = 1.0;
        r->runs[i].recovery = NAN;
        r->runs[i].n_gen = 4;
        r->runs[i].decode_seconds = 0.5;
    }
    return r;
}

static void set_run(ap_tasks_result *r, int s, int m, double score, double agree, double kl) {
    ap_task_run *x = ap_tasks_run_at(r, s, m, 0);
    x->score = score;
    x->agreement = agree;
    x->kl = kl;
}

/* The paired record (method, metric) at budget 256 in a report array. */
static const cJSON *find_diff(const cJSON *arr, const char *method, const char *metric) {
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        if (!strcmp(str(e, "method"), method) && !strcmp(str(e, "metric"), metric) &&
            num(e, "budget") == 256)
            return e;
    }
    cr_assert_fail("no paired record for %s %s", method, metric);
    return NULL;
}

/* The Markdown line that starts with prefix (after a given heading). */
static char *md_line(const char *md, const char *heading, const char *prefix) {
    const char *h = strstr(md, heading);
    cr_assert_not_null(h, "no heading %s", heading);
    const char *p = strstr(h, prefix);
    cr_assert_not_null(p, "no line %s under %s", prefix, heading);
    const char *e = strchr(p, '\n');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    char *line = malloc(n + 1);
    cr_assert_not_null(line);
    memcpy(line, p, n);
    line[n] = 0;
    return line;
}

enum { N_SMALL = 8 };
static const char *const k_small_tasks[N_SMALL] = {"a", "a", "b", "b", "c", "c", "d", "d"};
static const char *const k_small_methods[] = {"full", "last_step", "better", "one_off"};
enum { S_FULL, S_LAST, S_BETTER, S_ONE_OFF, N_SMALL_METHODS };

/* last_step: varied scores; "better" beats it on every sample (score +1/8
 * to +1/4, agreement up, KL down); "one_off" equals it but on sample 3. */
static ap_tasks_result *paired_result(void) {
    ap_tasks_result *r = small_result(N_SMALL, k_small_tasks, k_small_methods, N_SMALL_METHODS);
    for (int s = 0; s < N_SMALL; s++) {
        double base = (s % 4) / 8.0, agree = 0.5 + (s % 3) / 8.0, kl = 0.25 + (s % 2) / 4.0;
        set_run(r, s, S_FULL, 1.0, 1.0, 0.0);
        set_run(r, s, S_LAST, base, agree, kl);
        set_run(r, s, S_BETTER, base + (s % 2 ? 0.25 : 0.125), agree + 0.125, kl - 0.125);
        set_run(r, s, S_ONE_OFF, base + (s == 3 ? 0.5 : 0.0), agree, kl);
    }
    return r;
}

Test(task_report, bootstrap_interval_contains_mean_and_is_deterministic) {
    ap_tasks_result *r = paired_result();
    ap_err err = {0};
    for (int m = 0; m < N_SMALL_METHODS; m++)
        for (int k = 0; k < AP_TASKS_N_METRICS; k++) {
            ap_tasks_ci a, b;
            cr_assert_eq(ap_tasks_interval(r, NULL, m, -1, 0, (ap_tasks_metric)k, &a, &err), AP_OK,
                         "%s", err.msg);
            cr_assert_eq(ap_tasks_interval(r, NULL, m, -1, 0, (ap_tasks_metric)k, &b, &err), AP_OK);
            cr_assert_eq(a.n, N_SMALL);
            cr_assert(a.lo <= a.mean && a.mean <= a.hi, "%s of %s: %g not in [%g, %g]",
                      ap_tasks_metric_name((ap_tasks_metric)k), k_small_methods[m], a.mean, a.lo, a.hi);
            /* bit for bit the same interval again */
            cr_assert(a.mean == b.mean && a.lo == b.lo && a.hi == b.hi);
            /* the mean is the cell's mean */
            ap_tasks_cell c;
            ap_tasks_cell_of(r, NULL, NULL, m, 0, &c);
            NEAR(a.mean, k == AP_TASKS_SCORE ? c.score : k == AP_TASKS_AGREEMENT ? c.agreement : c.kl);
        }
    /* varied scores give a real interval, not a point */
    ap_tasks_ci last;
    cr_assert_eq(ap_tasks_interval(r, NULL, S_LAST, -1, 0, AP_TASKS_SCORE, &last, &err), AP_OK);
    cr_assert(last.lo < last.mean && last.mean < last.hi);
    /* the JSON carries the same interval, and writing twice gives the same file */
    char p1[1200], p2[1200];
    path_in(p1, sizeof p1, "a.json");
    path_in(p2, sizeof p2, "b.json");
    cr_assert_eq(ap_tasks_write_json(r, p1, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tasks_write_json(r, p2, &err), AP_OK, "%s", err.msg);
    char *t1 = read_text(p1), *t2 = read_text(p2);
    cr_assert_str_eq(t1, t2);
    free(t1);
    free(t2);
    cJSON *j = load_json(p1);
    const cJSON *e = find_cell(get(get(j, "summary"), "overall"), NULL, "last_step", 256);
    cr_assert_eq(num(e, "score_ci95_lo"), last.lo);
    cr_assert_eq(num(e, "score_ci95_hi"), last.hi);
    cr_assert(num(e, "agreement_ci95_lo") <= num(e, "agreement") &&
              num(e, "agreement") <= num(e, "agreement_ci95_hi"));
    cr_assert(num(e, "kl_ci95_lo") <= num(e, "kl") && num(e, "kl") <= num(e, "kl_ci95_hi"));
    const cJSON *iv = get(j, "intervals");
    cr_assert_eq(num(iv, "resamples"), 2000);
    cr_assert_eq(num(iv, "level"), 0.95);
    cr_assert_eq(num(iv, "seed"), (double)AP_TASKS_BOOT_SEED);
    cr_assert_eq(num(iv, "failed_full_score_below"), 0.5);
    cJSON_Delete(j);
    /* one sample: a zero-width interval at its value; none: NaN */
    const ap_tasks_subset one = {.task = "c", .bucket = "0-2k"};
    set_run(r, 5, S_LAST, NAN, 1, 0); /* a measure not taken is left out */
    cr_assert_eq(ap_tasks_interval(r, &one, S_LAST, -1, 0, AP_TASKS_SCORE, &last, &err), AP_OK);
    cr_assert_eq(last.n, 1);
    cr_assert(last.lo == last.mean && last.hi == last.mean && last.mean == 0.0);
    const ap_tasks_subset none = {.task = "zz"};
    cr_assert_eq(ap_tasks_interval(r, &none, S_LAST, -1, 0, AP_TASKS_SCORE, &last, &err), AP_OK);
    cr_assert(last.n == 0 && isnan(last.mean) && isnan(last.lo) && isnan(last.hi));
    cr_assert_eq(ap_tasks_interval(r, NULL, N_SMALL_METHODS, -1, 0, AP_TASKS_SCORE, &last, &err),
                 AP_ERR_ARG);
    ap_tasks_result_free(r);
}

Test(task_report, paired_difference_with_itself_is_exactly_zero) {
    ap_tasks_result *r = paired_result();
    ap_err err = {0};
    for (int m = 0; m < N_SMALL_METHODS; m++)
        for (int k = 0; k < AP_TASKS_N_METRICS; k++) {
            ap_tasks_ci d;
            cr_assert_eq(ap_tasks_interval(r, NULL, m, m, 0, (ap_tasks_metric)k, &d, &err), AP_OK);
            cr_assert_eq(d.n, N_SMALL);
            cr_assert(d.mean == 0.0 && d.lo == 0.0 && d.hi == 0.0, "%s - itself: %g [%g, %g]",
                      k_small_methods[m], d.mean, d.lo, d.hi);
            cr_assert_null(ap_tasks_diff_verdict((ap_tasks_metric)k, &d));
        }
    ap_tasks_result_free(r);
}

Test(task_report, better_on_every_sample_is_marked_one_sample_is_not) {
    ap_tasks_result *r = paired_result();
    char path[1200], mdp[1200];
    ap_err err = {0};
    path_in(path, sizeof path, "paired.json");
    path_in(mdp, sizeof mdp, "paired.md");
    cr_assert_eq(ap_tasks_write_json(r, path, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tasks_write_md(r, mdp, &err), AP_OK, "%s", err.msg);
    cJSON *j = load_json(path);
    const cJSON *pl = get(j, "paired_vs_last_step");
    cr_assert(cJSON_IsArray(pl));
    /* full KV is the other reference, and last_step is not paired with itself:
     * (better, one_off) x 1 budget x 3 metrics */
    cr_assert_eq(cJSON_GetArraySize(pl), 2 * 3);

    const cJSON *bs = find_diff(pl, "better", "score");
    NEAR(num(bs, "diff"), 1.5 / 8.0);
    cr_assert_eq(num(bs, "n"), N_SMALL);
    cr_assert(num(bs, "ci95_lo") > 0, "lo = %g", num(bs, "ci95_lo"));
    cr_assert(num(bs, "ci95_lo") <= num(bs, "diff") && num(bs, "diff") <= num(bs, "ci95_hi"));
    cr_assert_str_eq(str(bs, "verdict"), "better");
    const cJSON *bk = find_diff(pl, "better", "kl");
    NEAR(num(bk, "diff"), -0.125);
    cr_assert(num(bk, "ci95_hi") < 0);
    cr_assert_str_eq(str(bk, "verdict"), "better"); /* lower KL is better */
    cr_assert_str_eq(str(find_diff(pl, "better", "agreement"), "verdict"), "better");

    const cJSON *os = find_diff(pl, "one_off", "score");
    NEAR(num(os, "diff"), 0.5 / 8.0);
    cr_assert(num(os, "ci95_lo") <= 0 && num(os, "ci95_hi") >= 0, "[%g, %g] excludes 0",
              num(os, "ci95_lo"), num(os, "ci95_hi"));
    is_null(os, "verdict");
    const cJSON *oa = find_diff(pl, "one_off", "agreement");
    cr_assert(num(oa, "diff") == 0 && num(oa, "ci95_lo") == 0 && num(oa, "ci95_hi") == 0);
    is_null(oa, "verdict");

    /* versus full KV: score only, every method but full */
    const cJSON *pf = get(j, "paired_vs_full");
    cr_assert_eq(cJSON_GetArraySize(pf), N_SMALL_METHODS - 1);
    const cJSON *fs = find_diff(pf, "last_step", "score");
    cr_assert(num(fs, "ci95_hi") < 0);
    cr_assert_str_eq(str(fs, "verdict"), "worse");
    cJSON_Delete(j);

    char *md = read_text(mdp);
    ASSERT_HAS(md, "## Difference from last step (paired by sample)");
    ASSERT_HAS(md, "| method | kind | metric | B=256 |");
    char *line = md_line(md, "## Difference from last step", "| `better` | retrieval | score |");
    cr_assert_not_null(strstr(line, "| **+18.8 ["), "%s", line);
    cr_assert_not_null(strstr(line, "]** better |"), "%s", line);
    free(line);
    line = md_line(md, "## Difference from last step", "| `better` | retrieval | kl |");
    cr_assert_not_null(strstr(line, "| **-0.125 ["), "%s", line);
    cr_assert_not_null(strstr(line, " better |"), "%s", line);
    free(line);
    line = md_line(md, "## Difference from last step", "| `one_off` | retrieval | score |");
    cr_assert_not_null(strstr(line, "| +6.2 ["), "%s", line);
    cr_assert_null(strstr(line, "**"), "unmarked, yet bold: %s", line);
    cr_assert_null(strstr(line, "better"), "%s", line);
    free(line);
    line = md_line(md, "## Difference from full KV", "| `last_step` | retrieval | score |");
    cr_assert_not_null(strstr(line, "** worse |"), "%s", line);
    free(line);
    /* bold appears only on marked differences (and the two row labels) */
    int bold = 0;
    for (const char *p = md; (p = strstr(p, "**")); p += 2) bold++;
    int marked = 0;
    for (const char *p = md; (p = strstr(p, "** better")); p += 2) marked++;
    for (const char *p = md; (p = strstr(p, "** worse")); p += 2) marked++;
    /* each marked cell opens and closes; **all**, **headline**, **Bold** in
     * the text and the KV memory note add 2 each */
    cr_assert_eq(bold, 2 * marked + 2 * 4, "%d bold markers for %d marked cells", bold, marked);
    free(md);
    ap_tasks_result_free(r);
}

/* Without last_step there is nothing to pair with: null, and a note. */
Test(task_report, no_last_step_no_pairing) {
    ap_tasks_result *r = build_result();
    char path[1200], mdp[1200];
    ap_err err = {0};
    path_in(path, sizeof path, "nolast.json");
    path_in(mdp, sizeof mdp, "nolast.md");
    cr_assert_eq(ap_tasks_write_json(r, path, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tasks_write_md(r, mdp, &err), AP_OK, "%s", err.msg);
    cJSON *j = load_json(path);
    is_null(j, "paired_vs_last_step");
    cr_assert_eq(cJSON_GetArraySize(get(j, "paired_vs_full")), (N_METHOD - 1) * N_BUDGET);
    cJSON_Delete(j);
    char *md = read_text(mdp);
    ASSERT_HAS(md, "`last_step` was not run");
    ASSERT_HAS(md, "## Difference from full KV (score, paired by sample)");
    free(md);
    ap_tasks_result_free(r);
}

Test(task_report, failed_tasks_leave_the_headline) {
    /* full-KV means per task: a 0.25 (failed), b 0.5 (the rule is "below",
     * so kept), c 0.875, d 0 (failed) */
    static const double full[N_SMALL] = {0.5, 0, 0.5, 0.5, 1, 0.75, 0, 0};
    static const char *const methods[] = {"full", "quest"};
    ap_tasks_result *r = small_result(N_SMALL, k_small_tasks, methods, 2);
    for (int s = 0; s < N_SMALL; s++) {
        set_run(r, s, 0, full[s], 1, 0);
        set_run(r, s, 1, s / 8.0, 1 - s / 16.0, s / 4.0);
    }
    cr_assert(ap_tasks_failed_at_full(r, "a", "0-2k"));
    cr_assert_not(ap_tasks_failed_at_full(r, "b", "0-2k"));
    cr_assert_not(ap_tasks_failed_at_full(r, "c", NULL));
    cr_assert(ap_tasks_failed_at_full(r, "d", NULL));
    cr_assert_not(ap_tasks_failed_at_full(r, "zz", NULL)); /* no samples: nothing failed */

    /* the headline keeps exactly samples 2..5 (tasks b and c) */
    const ap_tasks_subset head = {.exclude_failed = 1};
    ap_tasks_cell c;
    ap_tasks_cell_in(r, &head, 1, 0, &c);
    cr_assert_eq(c.n, 4);
    NEAR(c.score, (2 + 3 + 4 + 5) / 8.0 / 4);
    NEAR(c.full_score, (0.5 + 0.5 + 1 + 0.75) / 4);
    ap_tasks_ci ci;
    ap_err err = {0};
    cr_assert_eq(ap_tasks_interval(r, &head, 1, -1, 0, AP_TASKS_SCORE, &ci, &err), AP_OK);
    cr_assert_eq(ci.n, 4);
    NEAR(ci.mean, c.score);
    cr_assert(ci.lo >= 2 / 8.0 && ci.hi <= 5 / 8.0, "[%g, %g] reaches a left-out sample", ci.lo, ci.hi);
    ap_tasks_cell_of(r, NULL, NULL, 1, 0, &c);
    cr_assert_eq(c.n, N_SMALL);

    char path[1200], mdp[1200];
    path_in(path, sizeof path, "failed.json");
    path_in(mdp, sizeof mdp, "failed.md");
    cr_assert_eq(ap_tasks_write_json(r, path, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tasks_write_md(r, mdp, &err), AP_OK, "%s", err.msg);
    cJSON *j = load_json(path);
    const cJSON *su = get(j, "summary");
    const cJSON *hq = find_cell(get(su, "headline"), NULL, "quest", 256);
    cr_assert_eq(num(hq, "n"), 4);
    NEAR(num(hq, "score"), 14 / 32.0);
    NEAR(num(hq, "score_ci95_lo"), ci.lo);
    NEAR(num(hq, "score_ci95_hi"), ci.hi);
    cr_assert_eq(num(find_cell(get(su, "overall"), NULL, "quest", 256), "n"), N_SMALL);
    const cJSON *fa = get(su, "failed_at_full");
    cr_assert_eq(cJSON_GetArraySize(fa), 2);
    cr_assert_str_eq(str(cJSON_GetArrayItem(fa, 0), "task"), "a");
    NEAR(num(cJSON_GetArrayItem(fa, 0), "full_score"), 0.25);
    cr_assert_str_eq(str(cJSON_GetArrayItem(fa, 1), "task"), "d");
    const cJSON *e;
    int flagged = 0;
    cJSON_ArrayForEach(e, get(su, "by_task")) {
        int want = !strcmp(str(e, "task"), "a") || !strcmp(str(e, "task"), "d");
        cr_assert_eq(cJSON_IsTrue(get(e, "failed_at_full")), want, "task %s", str(e, "task"));
        flagged += want;
    }
    cr_assert_eq(flagged, 2 * 2); /* full + quest@256 for each of a and d */
    cJSON_Delete(j);

    char *md = read_text(mdp);
    ASSERT_HAS(md, "- failed at full KV (a task and bucket whose full-KV mean score is below 50; "
                   "left out of the headline means): a 0-2k, d 0-2k\n");
    ASSERT_HAS(md, "| task | bucket | n | full | quest@256 | failed at full KV |");
    ASSERT_HAS(md, "| a | 0-2k | 2 | 25.0 | 6.2 | failed |");
    ASSERT_HAS(md, "| b | 0-2k | 2 | 50.0 | 31.2 |  |");
    ASSERT_HAS(md, "| c | 0-2k | 2 | 87.5 | 56.2 |  |");
    ASSERT_HAS(md, "| d | 0-2k | 2 | 0.0 | 81.2 | failed |");
    ASSERT_HAS(md, "| **all** |  | 8 | 40.6 | 43.8 |  |");
    ASSERT_HAS(md, "| **headline** | excluding failed | 4 | 68.8 | 43.8 |  |");
    /* both means with their intervals */
    char *line = md_line(md, "## Intervals", "| `quest` | retrieval | 256 | 8 | 43.8 [");
    char want[160];
    snprintf(want, sizeof want, "| 43.8 [%.1f, %.1f] |", 100 * ci.lo, 100 * ci.hi);
    cr_assert_not_null(strstr(line, want), "%s lacks %s", line, want);
    free(line);
    free(md);
    ap_tasks_result_free(r);
}
