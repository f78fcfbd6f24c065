/* Live compressed-KV decoding on the task suite (see eval/tasks.h). */
#include "eval/tasks.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/gguf.h"
#include "capture/model.h"
#include "capture/model_cuda.h"
#include "capture/tokenizer.h"
#include "common/sha256.h"
#include "common/util.h"
#include "eval/live.h"
#include "eval/selectors.h"
#include "eval/tasks_ckpt.h"
#include "eval/textmetrics.h"
#include "train/runtime.h"

/* Prefill rows kept for the selectors: the predictor's history (64). */
#define N_PRE 64

void ap_tasks_config_default(ap_tasks_config *c) {
    memset(c, 0, sizeof *c);
    const int b[4] = {256, 512, 1024, 2048};
    memcpy(c->budgets, b, sizeof b);
    c->n_budgets = 4;
    c->sink_tokens = 64;
    c->local_tokens = 64;
    c->block = 16;
    c->calib = 5;
    c->min_candidates = 3;
    c->kv_mode = AP_KV_PER_QHEAD;
    c->snapkv_window = 32;
    c->snapkv_pool = 1;
    c->teacher_forced = 1;
    c->threads = 2;
    c->prefetch = -1;
    c->hot_pool = 1;
    c->prefetch_threads = 1;
    c->pred_stride = 1;
}

void ap_tasks_result_free(ap_tasks_result *r) {
    if (!r) return;
    if (r->runs)
        for (long i = 0; i < (long)r->n_samples * r->n_methods * r->n_budgets; i++)
            free(r->runs[i].output);
    free(r->runs);
    free(r->samples);
    free(r);
}


/* ----------------------------------------------------------- task file */

typedef struct {
    ap_task_sample info;
    ap_tm_metric metric;
    int first_line;
    char **answers;
    int n_answers;
    char **classes;
    int n_classes;
    int32_t *ids;
    int n_ids;
} sample_t;

/* Estimated cost of one run of s, for the progress ETA: the full-KV run
 * prefills and decodes, a method's run decodes from that prefill. Runs of
 * long samples with long answers cost many times those of short ones. */
/* Keys a sliding-window layer keeps, summed over those layers and their KV
 * heads, at a context of `keys`: every method holds them (selection acts in
 * the full-attention layers only), and the full cache too. */
static double swa_kv_keys(const ap_hparams *hp, double keys) {
    double n = 0.0;
    for (int l = 0; l < hp->n_layer; l++)
        if (ap_hparams_layer_swa(hp, l))
            n += (keys < hp->swa_window ? keys : (double)hp->swa_window) * hp->n_head_kv;
    return n;
}

static double run_work(const sample_t *s, int prefill, double fixed) {
    return ap_work_run(s->n_ids, s->info.max_new_tokens, prefill, fixed);
}

static void sample_free(sample_t *s) {
    for (int i = 0; i < s->n_answers; i++) free(s->answers[i]);
    for (int i = 0; i < s->n_classes; i++) free(s->classes[i]);
    free(s->answers);
    free(s->classes);
    free(s->ids);
}

static int wanted(const ap_tasks_config *c, const char *task, const char *id) {
    if (c->n_only_tasks == 0) return 1;
    for (int i = 0; i < c->n_only_tasks; i++)
        if (!strcmp(c->only_tasks[i], task) || !strcmp(c->only_tasks[i], id)) return 1;
    return 0;
}

static ap_status str_list(const cJSON *a, char ***out, int *n, const char *what, ap_err *err) {
    *out = NULL;
    *n = 0;
    if (!a || cJSON_IsNull(a)) return AP_OK;
    if (!cJSON_IsArray(a)) return ap_errf(err, AP_ERR_FORMAT, "'%s' is not a list", what);
    int len = cJSON_GetArraySize(a);
    *out = calloc((size_t)(len > 0 ? len : 1), sizeof(char *));
    if (!*out) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < len; i++) {
        const cJSON *e = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsString(e)) return ap_errf(err, AP_ERR_FORMAT, "'%s' holds a non-string", what);
        if (!((*out)[i] = strdup(e->valuestring))) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
        (*n)++;
    }
    return AP_OK;
}

/* One JSON line -> a sample with its model input tokenized. */
static ap_status parse_sample(const ap_tasks_config *c, const cJSON *o, const ap_tokenizer *tok,
                              sample_t *s, int *skip, ap_err *err) {
    ap_status st = AP_OK;
    char *wrapped = NULL, *input = NULL;
    const char *keys[] = {"id", "task", "category", "bucket", "metric", "prompt"};
    const cJSON *v[6];
    for (int i = 0; i < 6; i++) {
        v[i] = cJSON_GetObjectItemCaseSensitive(o, keys[i]);
        if (!cJSON_IsString(v[i]))
            return ap_errf(err, AP_ERR_FORMAT, "missing or non-string \"%s\"", keys[i]);
    }
    *skip = !wanted(c, v[1]->valuestring, v[0]->valuestring);
    if (*skip) return AP_OK;
    snprintf(s->info.id, sizeof s->info.id, "%s", v[0]->valuestring);
    snprintf(s->info.task, sizeof s->info.task, "%s", v[1]->valuestring);
    snprintf(s->info.category, sizeof s->info.category, "%s", v[2]->valuestring);
    snprintf(s->info.bucket, sizeof s->info.bucket, "%s", v[3]->valuestring);
    snprintf(s->info.metric, sizeof s->info.metric, "%s", v[4]->valuestring);
    if ((st = ap_tm_metric_parse(v[4]->valuestring, &s->metric, err))) return st;
    const cJSON *mn = cJSON_GetObjectItemCaseSensitive(o, "max_new_tokens");
    if (!cJSON_IsNumber(mn) || mn->valueint < 1 || mn->valueint > 4096)
        return ap_errf(err, AP_ERR_FORMAT, "\"max_new_tokens\" must be a number in [1, 4096]");
    s->info.max_new_tokens = c->max_new_tokens > 0 ? c->max_new_tokens : mn->valueint;
    s->first_line = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "first_line"));
    const int chat = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "chat"));
    if ((st = str_list(cJSON_GetObjectItemCaseSensitive(o, "answers"), &s->answers, &s->n_answers,
                       "answers", err)))
        return st;
    if ((st = str_list(cJSON_GetObjectItemCaseSensitive(o, "all_classes"), &s->classes,
                       &s->n_classes, "all_classes", err)))
        return st;
    if (s->n_answers == 0) return ap_errf(err, AP_ERR_FORMAT, "no \"answers\"");
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(o, "answer_prefix");
    const char *prefix = cJSON_IsString(pre) ? pre->valuestring : "";
    const char *body = v[5]->valuestring;
    if (chat) {
        if ((st = ap_tokenizer_chat(tok, body, &wrapped, err))) goto cleanup;
        body = wrapped;
    }
    size_t lb = strlen(body), lp = strlen(prefix);
    input = malloc(lb + lp + 1);
    if (!input) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    memcpy(input, body, lb);
    memcpy(input + lb, prefix, lp + 1);
    /* docs/tasks.md: one string, control tokens of the chat wrapper parsed. */
    size_t n = 0;
    if ((st = ap_tokenizer_encode(tok, input, lb + lp, chat, &s->ids, &n, err))) goto cleanup;
    s->n_ids = (int)n;
    s->info.n_prompt = (int)n;
    if (n < 1) st = ap_errf(err, AP_ERR_FORMAT, "empty model input");
cleanup:
    free(wrapped);
    free(input);
    return st;
}

/* The task file's text -> samples (ap_tasks_parse). Each line is parsed from
 * a NUL-terminated copy, so the text need not be terminated and cJSON never
 * reads past the line. */
static ap_status parse_samples(const ap_tasks_config *c, const ap_tokenizer *tok,
                               const char *data, size_t len, const char *label, sample_t **out,
                               int *n_out, ap_err *err) {
    ap_status st = AP_OK;
    char *buf = NULL;
    sample_t *v = NULL;
    int n = 0, cap = 0, line = 0;
    *out = NULL;
    *n_out = 0;
    for (size_t pos = 0; pos < len;) {
        const char *p = data + pos;
        const char *nl = memchr(p, '\n', len - pos);
        size_t ln = nl ? (size_t)(nl - p) : len - pos;
        pos += ln + (nl ? 1 : 0);
        line++;
        size_t k = 0;
        while (k < ln && (p[k] == ' ' || p[k] == '\t' || p[k] == '\r')) k++;
        if (k == ln) continue;
        if (c->max_samples > 0 && n >= c->max_samples) break;
        if (memchr(p, '\0', ln)) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: line %d contains a NUL byte", label, line);
            goto cleanup;
        }
        char *nb = realloc(buf, ln + 1);
        if (!nb) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        buf = nb;
        memcpy(buf, p, ln);
        buf[ln] = '\0';
        /* require_null_terminated: text after the object (a second object on
         * the line, say) is an error, not silently dropped. */
        cJSON *o = cJSON_ParseWithOpts(buf, NULL, 1);
        if (!o || !cJSON_IsObject(o)) {
            cJSON_Delete(o);
            st = ap_errf(err, AP_ERR_FORMAT, "%s: line %d is not a JSON object", label, line);
            goto cleanup;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            sample_t *nv = realloc(v, (size_t)cap * sizeof *v);
            if (!nv) {
                cJSON_Delete(o);
                st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
                goto cleanup;
            }
            v = nv;
        }
        memset(&v[n], 0, sizeof v[n]);
        int skip = 0;
        st = parse_sample(c, o, tok, &v[n], &skip, err);
        cJSON_Delete(o);
        if (st) {
            char where[600];
            snprintf(where, sizeof where, "%s: line %d", label, line);
            sample_free(&v[n]);
            ap_err_prefix(err, where);
            goto cleanup;
        }
        if (skip)
            sample_free(&v[n]);
        else
            n++;
    }
    if (n == 0) {
        st = ap_errf(err, AP_ERR_ARG, "%s: no sample matches the task filter", label);
        goto cleanup;
    }
    *out = v;
    *n_out = n;
    v = NULL;
cleanup:
    if (v)
        for (int i = 0; i < n; i++) sample_free(&v[i]);
    free(v);
    free(buf);
    return st;
}

static ap_status load_samples(const ap_tasks_config *c, const ap_tokenizer *tok, sample_t **out,
                              int *n_out, ap_err *err) {
    char *data = NULL;
    size_t len = 0;
    *out = NULL;
    *n_out = 0;
    ap_status st = ap_read_file(c->tasks_file, &data, &len, err);
    if (st) return st;
    st = parse_samples(c, tok, data, len, c->tasks_file, out, n_out, err);
    free(data);
    return st;
}

ap_status ap_tasks_parse(const ap_tasks_config *c, const ap_tokenizer *tok, const char *data,
                         size_t len, const char *label, ap_task_sample **out, int *n_out,
                         ap_err *err) {
    sample_t *smp = NULL;
    int n = 0;
    *out = NULL;
    *n_out = 0;
    ap_status st = parse_samples(c, tok, data, len, label ? label : "tasks", &smp, &n, err);
    if (st) return st;
    ap_task_sample *info = malloc((size_t)n * sizeof *info);
    if (!info) st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        if (info) info[i] = smp[i].info;
        sample_free(&smp[i]);
    }
    free(smp);
    if (st) return st;
    *out = info;
    *n_out = n;
    return AP_OK;
}

/* -------------------------------------------------------------- decoding */

typedef struct {
    ap_ctx *ctx;
    ap_cuda_model *cm;  /* instead of ctx with config.device = 1 */
    const ap_tokenizer *tok;
    const ap_hparams *hp;
    int32_t stop[3];
    int n_stop;
    float *logits;      /* [V] */
    float *first;       /* [V] logits after the prompt (shared prefill) */
    float *full_lp;     /* [max_new][V] full-KV log-probabilities along its output */
    int32_t *full_out;  /* full-KV tokens (including a final stop token) */
    int n_full;
    int32_t *out;       /* a run's tokens */
} dec_t;

/* The engine calls, on whichever engine the run uses. */
static ap_status eng_truncate(dec_t *d, int n, ap_err *err) {
    return d->cm ? ap_cuda_model_truncate(d->cm, n, err) : ap_ctx_truncate(d->ctx, n, err);
}

static ap_status eng_eval(dec_t *d, const int32_t *tok, int n, float *logits,
                          const ap_attn_observer *obs, ap_err *err) {
    if (d->cm) return ap_cuda_model_eval_obs(d->cm, tok, n, logits, obs, err);
    return ap_ctx_eval(d->ctx, tok, n, logits, 0, obs, err);
}

static ap_status eng_policy(dec_t *d, const ap_kv_policy *p, ap_err *err) {
    return d->cm ? ap_cuda_model_set_kv_policy(d->cm, p, err)
                 : ap_ctx_set_kv_policy(d->ctx, p, err);
}

static int is_stop(const dec_t *d, int32_t t) {
    for (int i = 0; i < d->n_stop; i++)
        if (d->stop[i] == t) return 1;
    return 0;
}


static void log_softmax(const float *x, int n, float *out) {
    double m = x[0], s = 0.0;
    for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - m);
    double lz = m + log(s);
    for (int i = 0; i < n; i++) out[i] = (float)((double)x[i] - lz);
}

/* KL(p || q) with p from log-probs lp and q from logits x. */
static double kl_div(const float *lp, const float *x, int n) {
    double m = x[0], s = 0.0;
    for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - m);
    double lz = m + log(s), kl = 0.0;
    for (int i = 0; i < n; i++) {
        double lpi = lp[i];
        if (lpi < -60.0) continue;
        kl += exp(lpi) * (lpi - ((double)x[i] - lz));
    }
    return kl > 0 ? kl : 0.0;
}

/* Greedy decode from the prefill state: up to max_new tokens, the first
 * from the prefill logits. forced != NULL: feed forced[i] instead of the
 * greedy choice (teacher forcing over n_forced tokens). Per position i,
 * cb-less bookkeeping: the greedy choice matches full_out[i] -> agree++,
 * and the KL against full_lp[i] while the trajectory equals the full one
 * (always, when forced). */
typedef struct {
    int n_gen;           /* tokens in out, stop token excluded */
    int diverged;        /* first position whose greedy choice differs from full-KV (-1: none) */
    double kl_sum;       /* over positions along the full trajectory */
    int kl_n, agree;
    double seconds;
} dec_res;

/* reference: this is the full-KV run; record its output and log-probs
 * (d->full_out, d->full_lp, d->n_full) for the runs compared with it. */
static ap_status decode_run(dec_t *d, int n_prompt, int max_new, const ap_attn_observer *obs,
                            int compare, const int32_t *forced, int n_forced, int reference,
                            dec_res *r, ap_err *err) {
    ap_status st = AP_OK;
    const int V = d->hp->n_vocab;
    memset(r, 0, sizeof *r);
    r->diverged = -1;
    if ((st = eng_truncate(d, n_prompt, err))) return st;
    const double t0 = ap_now_seconds();
    const float *lg = d->first;
    const int n_pos = forced ? n_forced : max_new;
    int on_full = 1;
    if (reference) d->n_full = 0;
    for (int i = 0; i < n_pos; i++) {
        int32_t g = ap_sample(lg, V, 0.0f, 0, NULL);
        if (reference) {
            log_softmax(lg, V, d->full_lp + (size_t)i * V);
            d->full_out[i] = g;
            d->n_full = i + 1;
        }
        if (compare && i < d->n_full) {
            if (on_full) {
                r->kl_sum += kl_div(d->full_lp + (size_t)i * V, lg, V);
                r->kl_n++;
                r->agree += g == d->full_out[i];
            }
            if (g != d->full_out[i] && r->diverged < 0) r->diverged = i;
        }
        int32_t next = forced ? forced[i] : g;
        if (!forced && compare && (i >= d->n_full || next != d->full_out[i])) on_full = 0;
        d->out[i] = next;
        if (is_stop(d, next)) break;
        r->n_gen = i + 1;
        if (i + 1 == n_pos) break;
        if ((st = eng_eval(d, &next, 1, d->logits, obs, err))) return st;
        lg = d->logits;
    }
    r->seconds = ap_now_seconds() - t0;
    if (reference) r->agree = r->kl_n = d->n_full;
    return AP_OK;
}

static ap_status decode(dec_t *d, int n_prompt, int max_new, const ap_attn_observer *obs,
                        int compare, const int32_t *forced, int n_forced, dec_res *r,
                        ap_err *err) {
    return decode_run(d, n_prompt, max_new, obs, compare, forced, n_forced, 0, r, err);
}

/* Full-KV reference: greedy output and its log-probabilities per position. */
static ap_status full_decode(dec_t *d, int n_prompt, int max_new, dec_res *r, ap_err *err) {
    return decode_run(d, n_prompt, max_new, NULL, 0, NULL, 0, 1, r, err);
}

static ap_status score_output(const sample_t *s, const char *text, double *score, ap_err *err) {
    return ap_tm_score(s->metric, text, (const char *const *)s->answers, (size_t)s->n_answers,
                       (const char *const *)s->classes, (size_t)s->n_classes, s->first_line, score,
                       err);
}

static ap_status detok(const dec_t *d, int n, char **text, ap_err *err) {
    size_t len = 0;
    if (n == 0) {
        *text = strdup("");
        return *text ? AP_OK : ap_errf(err, AP_ERR_NOMEM, "out of memory");
    }
    return ap_tokenizer_decode(d->tok, d->out, (size_t)n, text, &len, err);
}

/* Which selectors run, in report order. */
static const char *const k_default_methods[] = {"attnpred", "quest", "last_step", "snapkv",
                                                "h2o", "streaming", "oracle"};

typedef struct {
    const ap_selector *sel;
    ap_sel_params params;
} run_method;

/* Appends a method: a builtin (pred < 0) or predictor pred's (nocal: its
 * variant without calibration rows). A method already planned is not added
 * again: "attnpred" and a predictor's own name may both ask for it. */
static ap_status add_method(const ap_tasks_config *c, ap_runtime *const *rts, ap_tasks_result *r,
                            run_method *rm, const ap_selector *sel, int pred, int nocal,
                            ap_err *err) {
    char name[48];
    if (pred >= 0)
        snprintf(name, sizeof name, "%s%s", r->predictor_names[pred], nocal ? "_nocal" : "");
    else
        snprintf(name, sizeof name, "%s", sel->name);
    for (int m = 1; m < r->n_methods; m++)
        if (!strcmp(r->methods[m].name, name)) return AP_OK;
    if (r->n_methods > AP_TASKS_MAX_METHODS)
        return ap_errf(err, AP_ERR_ARG, "more than %d methods", AP_TASKS_MAX_METHODS);
    int m = r->n_methods++;
    ap_task_method *tm = &r->methods[m];
    memset(tm, 0, sizeof *tm);
    snprintf(tm->name, sizeof tm->name, "%s", name);
    tm->kind = sel->kind;
    int calib = nocal ? 0 : c->calib;
    if (pred >= 0) {
        /* The lone default predictor keeps its historical label. */
        const char *pn = r->predictor_names[pred];
        int plain = !strcmp(pn, "attnpred");
        const char *fused = rts[pred] && ap_runtime_config(rts[pred])->query_fusion ? " + query"
                                                                                    : "";
        char variant[48];
        ap_sel_predictor_variant(c->pred_stride, c->pred_per_kv, variant, sizeof variant);
        snprintf(tm->label, sizeof tm->label, "AttentionPredictor%s%s%s (calib %d)%s",
                 plain ? "" : " ", plain ? "" : pn, fused, calib, variant);
    } else if (!strcmp(name, "last_step")) {
        snprintf(tm->label, sizeof tm->label, "Last step (calib %d)", calib);
    } else {
        snprintf(tm->label, sizeof tm->label, "%s", sel->label);
    }
    run_method *x = &rm[m];
    x->sel = sel;
    memset(&x->params, 0, sizeof x->params);
    x->params.calib = calib;
    x->params.kv_mode = c->kv_mode;
    x->params.snapkv_window = c->snapkv_window;
    x->params.snapkv_pool = c->snapkv_pool;
    x->params.rt = pred >= 0 ? rts[pred] : NULL;
    x->params.incremental = 1;
    x->params.pred_stride = c->pred_stride;
    x->params.pred_per_kv = c->pred_per_kv;
    return AP_OK;
}

static ap_status plan_methods(const ap_tasks_config *c, ap_runtime *const *rts, ap_tasks_result *r,
                              run_method *rm, ap_err *err) {
    const char *const *names = c->n_methods ? c->methods : k_default_methods;
    int n = c->n_methods ? c->n_methods : (int)(sizeof k_default_methods / sizeof *names);
    ap_status st = AP_OK;
    r->n_methods = 1;
    ap_task_method *full = &r->methods[0];
    memset(full, 0, sizeof *full);
    snprintf(full->name, sizeof full->name, "full");
    snprintf(full->label, sizeof full->label, "Full KV cache");
    full->is_full = 1;
    for (int i = 0; i < n; i++) {
        const char *name = names[i];
        if (!strcmp(name, "full")) continue;
        const ap_selector *sel = ap_selector_find(name);
        if (sel) {
            if ((st = add_method(c, rts, r, rm, sel, -1, 0, err))) return st;
            continue;
        }
        int found = 0;
        for (int p = 0; p < c->n_predictors; p++)
            for (int nocal = 0; nocal < 2; nocal++)
                if (ap_sel_predictor_selected(name, r->predictor_names[p], nocal)) {
                    found = 1;
                    if ((st = add_method(c, rts, r, rm, ap_selector_predictor(), p, nocal, err)))
                        return st;
                }
        if (found) continue;
        if (!strcmp(name, "attnpred") || !strcmp(name, "attnpred_nocal")) {
            if (c->n_methods) return ap_errf(err, AP_ERR_ARG, "method %s needs --predictor", name);
            int k = r->n_dropped++;
            snprintf(r->dropped[k], sizeof r->dropped[k], "%s", name);
            snprintf(r->dropped_reason[k], sizeof r->dropped_reason[k],
                     "no predictor given (--predictor P.safetensors)");
            continue;
        }
        char known[1024];
        int len = snprintf(known, sizeof known, "oracle, streaming, h2o, snapkv, quest, last_step, "
                                                "last_step_dense, attnpred, attnpred_nocal");
        for (int p = 0; p < c->n_predictors && len < (int)sizeof known; p++)
            len += snprintf(known + len, sizeof known - (size_t)len, ", %s, %s_nocal",
                            r->predictor_names[p], r->predictor_names[p]);
        return ap_errf(err, AP_ERR_ARG, "unknown method '%s' (%s)", name, known);
    }
    return AP_OK;
}

static ap_status check_config(const ap_tasks_config *c, ap_err *err) {
    if (!c->model || !c->tasks_file) return ap_errf(err, AP_ERR_ARG, "eval tasks needs a model and a task file");
    if (c->n_budgets < 1 || c->n_budgets > AP_REPLAY_MAX_BUDGETS)
        return ap_errf(err, AP_ERR_ARG, "between 1 and %d budgets", AP_REPLAY_MAX_BUDGETS);
    if (c->block < 1 || c->sink_tokens < 0 || c->local_tokens < 0 || c->sink_tokens % c->block)
        return ap_errf(err, AP_ERR_ARG, "sink %d must be a multiple of the block size %d",
                       c->sink_tokens, c->block);
    for (int b = 0; b < c->n_budgets; b++)
        if (c->budgets[b] < c->sink_tokens + c->local_tokens)
            return ap_errf(err, AP_ERR_ARG, "budget %d is below sink + local = %d tokens",
                           c->budgets[b], c->sink_tokens + c->local_tokens);
    if (c->prefetch < -1 || c->prefetch > 1)
        return ap_errf(err, AP_ERR_ARG, "prefetch %d: -1 (auto), 0 or 1", c->prefetch);
    if (c->prefetch_threads < 1 || c->prefetch_threads > 256)
        return ap_errf(err, AP_ERR_ARG, "prefetch threads %d out of [1, 256]", c->prefetch_threads);
    if (c->device < 0 || c->device > 1 || (c->kv_offload && c->device != 1))
        return ap_errf(err, AP_ERR_ARG, "device %d, kv_offload %d (offload needs the CUDA engine)",
                       c->device, c->kv_offload);
    if (c->calib < 0 || c->min_candidates < 1 || c->threads < 1 || c->threads > 256)
        return ap_errf(err, AP_ERR_ARG, "calib %d, min candidates %d, threads %d out of range",
                       c->calib, c->min_candidates, c->threads);
    return AP_OK;
}

/* What decides a run's results, for its checkpoint: the model, task file
 * and predictors by content, the methods as planned, and every option that
 * changes what is decoded or measured (not threads or progress). */
static ap_status run_signature(const ap_tasks_config *c, const ap_tasks_result *r, char hex[65],
                               ap_err *err) {
    ap_sha256_ctx h;
    ap_sha256_init(&h);
    char d[65], line[512];
    const char *files[2 + AP_REPLAY_MAX_PREDICTORS] = {c->model, c->tasks_file};
    int n_files = 2;
    for (int p = 0; p < c->n_predictors; p++) files[n_files++] = c->predictors[p];
    for (int i = 0; i < n_files; i++) {
        ap_status st = ap_sha256_file(files[i], d, err);
        if (st) return st;
        ap_sha256_update(&h, d, 64);
    }
    for (int m = 0; m < r->n_methods; m++)
        ap_sha256_update(&h, r->methods[m].name, strlen(r->methods[m].name) + 1);
    for (int p = 0; p < c->n_predictors; p++)
        ap_sha256_update(&h, r->predictor_names[p], strlen(r->predictor_names[p]) + 1);
    for (int b = 0; b < r->n_budgets; b++)
        ap_sha256_update(&h, &r->budgets[b], sizeof r->budgets[b]);
    int n = snprintf(line, sizeof line,
                     "sink %d local %d block %d calib %d min %d kv %d snapkv %d %d tf %d new %d "
                     "hot %d dev %d off %d stride %d perkv %d",
                     c->sink_tokens, c->local_tokens, c->block, c->calib, c->min_candidates,
                     (int)c->kv_mode, c->snapkv_window, c->snapkv_pool, c->teacher_forced,
                     c->max_new_tokens, c->hot_pool, c->device, c->kv_offload, c->pred_stride,
                     c->pred_per_kv);
    /* Only a non-default type extends the signature: f32 checkpoints made
     * before the option stay valid. */
    if (c->kv_type != AP_KV_F32 && n < (int)sizeof line - 16)
        n += snprintf(line + n, sizeof line - (size_t)n, " kvt %s", ap_kv_type_name(c->kv_type));
    ap_sha256_update(&h, line, (size_t)n);
    uint8_t dig[32];
    ap_sha256_final(&h, dig);
    ap_sha256_hex(dig, hex);
    return AP_OK;
}

ap_status ap_tasks_run(const ap_tasks_config *c, ap_tasks_result **out, ap_err *err) {
    ap_status st = AP_OK;
    ap_gguf *g = NULL;
    ap_model *model = NULL;
    ap_tokenizer *tok = NULL;
    ap_runtime *rts[AP_REPLAY_MAX_PREDICTORS] = {0};
    ap_tasks_result *r = NULL;
    sample_t *smp = NULL;
    int n_smp = 0;
    ap_live_prefill *pf = NULL;
    ap_live *lv = NULL;
    ap_tasks_ckpt *ckpt = NULL;
    uint8_t *from_ckpt = NULL;
    char *text = NULL;
    dec_t d;
    memset(&d, 0, sizeof d);
    run_method rm[AP_TASKS_MAX_METHODS + 1];
    memset(rm, 0, sizeof rm);
    const double t_start = ap_now_seconds();
    *out = NULL;
    if ((st = check_config(c, err))) return st;
    r = calloc(1, sizeof *r);
    if (!r) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    r->config = *c;
    if (r->config.prefetch < 0) r->config.prefetch = c->device == 1 || ap_cpu_count() > c->threads;
    const int prefetch = r->config.prefetch;
    r->n_budgets = c->n_budgets;
    memcpy(r->budgets, c->budgets, sizeof r->budgets);
    /* Predictors before the model: a bad name or a predictor made for
     * another block size is refused without loading the model. */
    if ((st = ap_sel_predictor_names(c->predictors, c->predictor_names, c->n_predictors,
                                     r->predictor_names, err))) {
        ap_err_prefix(err, "predictors");
        goto cleanup;
    }
    for (int p = 0; p < c->n_predictors; p++)
        if ((st = ap_sel_predictor_load(c->predictors[p], c->block, 0, 0, NULL, "the eval",
                                        &rts[p], err)))
            goto cleanup;

    if ((st = ap_gguf_open(c->model, &g, err))) goto cleanup;
    if (c->kv_type != AP_KV_F32 && c->device == 1) {
        st = ap_errf(err, AP_ERR_UNSUPPORTED,
                     "KV cache type %s: the CUDA engine keeps an f32 cache (use --device cpu)",
                     ap_kv_type_name(c->kv_type));
        goto cleanup;
    }
    {
        ap_model_opts mo;
        ap_model_opts_default(&mo);
        mo.kv_type = c->kv_type;
        if ((st = ap_model_load_opts(g, &mo, &model, err))) goto cleanup;
    }
    if ((st = ap_tokenizer_from_gguf(g, &tok, err))) goto cleanup;
    const ap_hparams *hp = ap_model_hparams(model);
    snprintf(r->model_name, sizeof r->model_name, "%s", hp->name[0] ? hp->name : c->model);
    r->n_layer = hp->n_layer;
    r->n_full_layers = ap_hparams_n_full_layers(hp);
    r->swa_window = hp->swa_window;
    r->n_head = hp->n_head;
    r->n_head_kv = hp->n_head_kv;
    r->head_dim = hp->head_dim;
    /* Every layer decodes with the predictors' selection. */
    for (int p = 0; p < c->n_predictors; p++)
        if ((st = ap_sel_predictor_check_layers(rts[p], c->predictors[p], hp->n_layer, NULL, err)))
            goto cleanup;
    if ((st = plan_methods(c, rts, r, rm, err))) goto cleanup;
    if ((st = load_samples(c, tok, &smp, &n_smp, err))) goto cleanup;
    int max_len = 0, max_new = 0;
    for (int i = 0; i < n_smp; i++) {
        int need = smp[i].n_ids + smp[i].info.max_new_tokens;
        if (need > hp->n_ctx_train) {
            st = ap_errf(err, AP_ERR_RANGE, "%s: sample %s needs %d tokens > the model's %d",
                         c->tasks_file, smp[i].info.id, need, hp->n_ctx_train);
            goto cleanup;
        }
        if (need > max_len) max_len = need;
        if (smp[i].info.max_new_tokens > max_new) max_new = smp[i].info.max_new_tokens;
    }
    r->n_samples = n_smp;
    r->samples = calloc((size_t)n_smp, sizeof *r->samples);
    r->runs = calloc((size_t)n_smp * r->n_methods * r->n_budgets, sizeof *r->runs);
    const int V = hp->n_vocab;
    d.hp = hp;
    d.tok = tok;
    d.logits = malloc((size_t)V * sizeof(float));
    d.first = malloc((size_t)V * sizeof(float));
    d.full_lp = malloc((size_t)max_new * V * sizeof(float));
    d.full_out = calloc((size_t)max_new, sizeof(int32_t));
    d.out = calloc((size_t)max_new, sizeof(int32_t));
    if (!r->samples || !r->runs || !d.logits || !d.first || !d.full_lp || !d.full_out || !d.out) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    for (long i = 0; i < (long)n_smp * r->n_methods * r->n_budgets; i++) r->runs[i].recovery = NAN;
    {
        const char *stops[2] = {"<|im_end|>", "<|endoftext|>"};
        int32_t e = ap_tokenizer_eos(tok);
        if (e >= 0) d.stop[d.n_stop++] = e;
        for (int i = 0; i < 2; i++) {
            int32_t id = ap_tokenizer_find(tok, stops[i], strlen(stops[i]));
            if (id >= 0 && id != e) d.stop[d.n_stop++] = id;
        }
    }
    if (c->device == 1) {
        ap_cuda_model_opts co;
        ap_cuda_model_opts_default(&co);
        co.kv_offload = c->kv_offload;
        co.prefetch = prefetch;
        if ((st = ap_cuda_model_create_opts(g, model, max_len, &co, &d.cm, err))) goto cleanup;
    } else if ((st = ap_ctx_create(model, max_len, c->threads, &d.ctx, err))) {
        goto cleanup;
    }
    /* The CPU hot pool is the CPU engine's; the GPU keeps its own. */
    const int hot_pool = c->hot_pool && !d.cm, gpu_pool = d.cm && c->kv_offload;

    const double total = (double)n_smp * (1 + (r->n_methods - 1) * r->n_budgets);
    const double fixed = ap_work_fixed(hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv,
                                       hp->head_dim, hp->n_ff, hp->n_vocab);
    double done = 0, work = 0, work_total = 0;
    for (int si = 0; si < n_smp; si++)
        work_total += run_work(&smp[si], 1, fixed) +
                      (double)(r->n_methods - 1) * r->n_budgets * run_work(&smp[si], 0, fixed);
    const double kv_tok_bytes = (double)hp->head_dim * 2 * (double)ap_kv_type_size(c->kv_type);
    for (int si = 0; si < n_smp; si++) r->samples[si] = smp[si].info;
    if (c->checkpoint) {
        char sig[65];
        int n_from = 0;
        if (!(from_ckpt = calloc((size_t)n_smp, 1))) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        if ((st = run_signature(c, r, sig, err)) ||
            (st = ap_tasks_ckpt_open(c->checkpoint, sig, c->resume, r, from_ckpt, &n_from, &ckpt,
                                     err)))
            goto cleanup;
    }
    for (int si = 0; si < n_smp; si++) {
        sample_t *s = &smp[si];
        if (from_ckpt && from_ckpt[si]) {
            /* Finished by an earlier, interrupted run (the checkpoint). */
            done += 1 + (double)(r->n_methods - 1) * r->n_budgets;
            work += run_work(s, 1, fixed) +
                    (double)(r->n_methods - 1) * r->n_budgets * run_work(s, 0, fixed);
            continue;
        }
        const int np = s->n_ids, mx = s->info.max_new_tokens;
        char what[200];
        snprintf(what, sizeof what, "%s full KV", s->info.id);
        if (c->progress) c->progress(c->progress_user, done, total, work, work_total, what);
        /* Shared prefill. */
        ap_live_prefill_free(pf);
        pf = NULL;
        if ((st = ap_live_prefill_create(hp, c->block, N_PRE, np, mx, &pf, err))) goto sample_fail;
        if (d.cm)
            ap_cuda_model_reset(d.cm);
        else
            ap_ctx_reset(d.ctx);
        if ((st = eng_policy(&d, NULL, err))) goto sample_fail;
        double t0 = ap_now_seconds();
        if ((st = eng_eval(&d, s->ids, np, d.first, ap_live_prefill_observer(pf), err)))
            goto sample_fail;
        r->samples[si].prefill_seconds = ap_now_seconds() - t0;
        /* Full KV. */
        dec_res fr;
        if ((st = full_decode(&d, np, mx, &fr, err))) goto sample_fail;
        memcpy(d.out, d.full_out, (size_t)d.n_full * sizeof(int32_t));
        if ((st = detok(&d, fr.n_gen, &text, err))) goto sample_fail;
        double full_score = 0;
        if ((st = score_output(s, text, &full_score, err))) goto sample_fail;
        for (int b = 0; b < r->n_budgets; b++) {
            ap_task_run *run = ap_tasks_run_at(r, si, 0, b);
            run->score = full_score;
            run->agreement = 1.0;
            run->kl = 0.0;
            run->same = 1;
            run->n_gen = fr.n_gen;
            run->decode_seconds = fr.seconds;
            /* Mean context over the decode steps run (positions np .. np + steps - 1). */
            int steps = d.n_full > 1 ? d.n_full - 1 : 0;
            double mean_keys = steps ? np + (steps - 1) / 2.0 + 1 : np;
            run->full_kv_bytes = (mean_keys * ap_hparams_n_full_layers(hp) * hp->n_head_kv +
                                  swa_kv_keys(hp, mean_keys)) *
                                 kv_tok_bytes;
            run->resident_kv_bytes = run->full_kv_bytes;
            run->output = strdup(text);
            if (!run->output) {
                st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
                goto sample_fail;
            }
        }
        free(text);
        text = NULL;
        done += 1;
        work += run_work(s, 1, fixed);
        for (int m = 1; m < r->n_methods; m++) {
            for (int b = 0; b < r->n_budgets; b++) {
                ap_task_run *run = ap_tasks_run_at(r, si, m, b);
                snprintf(what, sizeof what, "%s %s@%d", s->info.id, r->methods[m].name,
                         r->budgets[b]);
                if (c->progress) c->progress(c->progress_user, done, total, work, work_total, what);
                ap_live_opts lo = {.budget = r->budgets[b], .sink = c->sink_tokens,
                                   .local = c->local_tokens, .min_candidates = c->min_candidates,
                                   .prefetch = prefetch, .hot_pool = hot_pool,
                                   .prefetch_threads = c->prefetch_threads,
                                   .kv_type = c->kv_type,
                                   /* The device pool copies every history
                                    * method's next blocks ahead. */
                                   .prefetch_any = gpu_pool};
                ap_live_free(lv);
                lv = NULL;
                if ((st = ap_live_create(pf, rm[m].sel, &rm[m].params, &lo, &lv, err)))
                    goto sample_fail;
                if ((st = eng_policy(&d, ap_live_policy(lv), err))) goto sample_fail;
                dec_res rr;
                if ((st = decode(&d, np, mx, ap_live_observer(lv), 1, NULL, 0, &rr, err)))
                    goto sample_fail;
                ap_live_stats ls;
                ap_live_get_stats(lv, &ls);
                run->n_gen = rr.n_gen;
                run->decode_seconds = rr.seconds;
                run->select_seconds = ls.select_seconds;
                run->score_seconds = ls.score_seconds;
                run->prefetch_wait_seconds = ls.prefetch_wait_seconds;
                run->prefetched = ls.prefetched;
                ap_cuda_kv_stats ks;
                memset(&ks, 0, sizeof ks);
                if (d.cm) ap_cuda_model_kv_stats(d.cm, &ks);
                if (ls.steps > 0 && gpu_pool && ks.steps > 0) {
                    /* Measured on the GPU's device pool: pages in use, and
                     * the bytes copied into it for the steps after the first
                     * (prefetched or not; the first fills the empty pool). */
                    run->kv_measured = 1;
                    run->hot_capacity_bytes = ks.pool_capacity_bytes;
                    run->resident_kv_bytes = ks.pool_used_bytes / (double)ks.steps;
                    run->full_kv_bytes = ls.full_tokens / ls.steps * kv_tok_bytes;
                    run->fetch_kv_bytes =
                        ks.steps > 1 ? (ks.h2d_bytes - ks.fill_bytes) / (double)(ks.steps - 1) : 0.0;
                } else if (ls.steps > 0 && hot_pool) {
                    /* Measured on the pool: whole slots, and the keys copied
                     * into them (K and V). */
                    run->kv_measured = 1;
                    run->hot_capacity_bytes = ls.hot_capacity_bytes;
                    run->resident_kv_bytes = ls.hot_slot_bytes / ls.steps;
                    run->full_kv_bytes = ls.full_tokens / ls.steps * kv_tok_bytes;
                    run->fetch_kv_bytes = ls.steps > 1
                                              ? ls.pool_fetched_tokens / (ls.steps - 1) * kv_tok_bytes
                                              : 0.0;
                } else if (ls.steps > 0) {
                    run->resident_kv_bytes = ls.resident_tokens / ls.steps * kv_tok_bytes;
                    run->full_kv_bytes = ls.full_tokens / ls.steps * kv_tok_bytes;
                    run->fetch_kv_bytes =
                        ls.steps > 1 ? ls.fetched_tokens / (ls.steps - 1) * kv_tok_bytes : 0.0;
                } else {
                    run->resident_kv_bytes = run->full_kv_bytes =
                        (double)np * ap_hparams_n_full_layers(hp) * hp->n_head_kv * kv_tok_bytes;
                }
                /* The live stats cover the full-attention layers. */
                if (ap_hparams_n_full_layers(hp) < hp->n_layer) {
                    const double mk = np + (rr.n_gen > 1 ? (rr.n_gen - 2) / 2.0 + 1 : 0);
                    const double sw = swa_kv_keys(hp, mk) * kv_tok_bytes;
                    run->resident_kv_bytes += sw;
                    run->full_kv_bytes += sw;
                }
                run->cold_kv_bytes = r->methods[m].kind == AP_SEL_EVICTION ? 0 : run->full_kv_bytes;
                if ((st = detok(&d, rr.n_gen, &text, err))) goto sample_fail;
                if ((st = score_output(s, text, &run->score, err))) goto sample_fail;
                run->output = text;
                text = NULL;
                int same = rr.n_gen == fr.n_gen && rr.diverged < 0;
                if (same) {
                    for (int i = 0; i < rr.n_gen && same; i++) same = d.out[i] == d.full_out[i];
                }
                run->same = same;
                if (same || !c->teacher_forced) {
                    run->agreement = rr.kl_n ? (double)rr.agree / rr.kl_n : 1.0;
                    run->kl = rr.kl_n ? rr.kl_sum / rr.kl_n : 0.0;
                    if (!same) {
                        /* Free-running only: along the shared prefix. */
                        run->agreement = d.n_full ? (double)rr.agree / d.n_full : 1.0;
                    }
                } else {
                    /* Teacher forcing along the full-KV output, measuring recovery. */
                    ap_live_free(lv);
                    lv = NULL;
                    lo.measure = 1;
                    lo.prefetch = 0;
                    if ((st = ap_live_create(pf, rm[m].sel, &rm[m].params, &lo, &lv, err)))
                        goto sample_fail;
                    if ((st = eng_policy(&d, ap_live_policy(lv), err))) goto sample_fail;
                    dec_res tr;
                    if ((st = decode(&d, np, mx, ap_live_observer(lv), 1, d.full_out, d.n_full,
                                     &tr, err)))
                        goto sample_fail;
                    ap_live_get_stats(lv, &ls);
                    run->agreement = tr.kl_n ? (double)tr.agree / tr.kl_n : 1.0;
                    run->kl = tr.kl_n ? tr.kl_sum / tr.kl_n : 0.0;
                    if (ls.recovery_n) run->recovery = ls.recovery_sum / ls.recovery_n;
                }
                done += 1;
                work += run_work(s, 0, fixed);
            }
        }
        eng_policy(&d, NULL, NULL);
        if (ckpt && (st = ap_tasks_ckpt_add(ckpt, r, si, err))) goto cleanup;
        continue;
    sample_fail : {
        char where[160];
        snprintf(where, sizeof where, "%s: sample %s", c->tasks_file, s->info.id);
        ap_err_prefix(err, where);
        goto cleanup;
    }
    }
    if (c->progress) c->progress(c->progress_user, total, total, work_total, work_total, "done");
    r->seconds = ap_now_seconds() - t_start;
    *out = r;
    r = NULL;
cleanup:
    free(text);
    ap_tasks_ckpt_close(ckpt);
    free(from_ckpt);
    ap_live_free(lv);
    ap_live_prefill_free(pf);
    if (d.ctx) ap_ctx_free(d.ctx);
    ap_cuda_model_free(d.cm);
    free(d.logits);
    free(d.first);
    free(d.full_lp);
    free(d.full_out);
    free(d.out);
    if (smp)
        for (int i = 0; i < n_smp; i++) sample_free(&smp[i]);
    free(smp);
    for (int p = 0; p < AP_REPLAY_MAX_PREDICTORS; p++) ap_runtime_free(rts[p]);
    ap_tokenizer_free(tok);
    ap_model_free(model);
    ap_gguf_free(g);
    ap_tasks_result_free(r);
    return st;
}
