/* Replay of decoding from traces (issue 4): the core loop shared by every
 * selector, the thread pool over (sequence, layer) tasks and the aggregation.
 * Semantics: docs/eval.md. */
#define _POSIX_C_SOURCE 200809L
#include "eval/replay.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capture/trace.h"
#include "common/util.h"
#include "eval/report_util.h"
#include "eval/selectors.h"
#include "train/runtime.h"

const char *ap_sel_kind_name(ap_sel_kind k) {
    switch (k) {
    case AP_SEL_BOUND: return "bound";
    case AP_SEL_RETRIEVAL: return "retrieval";
    case AP_SEL_EVICTION: return "eviction";
    }
    return "?";
}

void ap_replay_config_default(ap_replay_config *c) {
    memset(c, 0, sizeof *c);
    static const int budgets[] = {256, 512, 1024, 2048};
    c->n_budgets = 4;
    memcpy(c->budgets, budgets, sizeof budgets);
    c->sink_tokens = 64;
    c->local_tokens = 64;
    c->calib = 5;
    c->min_candidates = 3;
    c->kv_mode = AP_KV_PER_QHEAD;
    c->snapkv_window = 32;
    c->snapkv_pool = 1;
    c->threads = 2;
    c->incremental = 1;
    c->pred_stride = 1;
}

void ap_replay_result_free(ap_replay_result *r) {
    if (!r) return;
    if (r->cells)
        for (int i = 0; i < r->n_methods * r->n_budgets; i++) {
            free(r->cells[i].layer_head_recovery);
            free(r->cells[i].seq_recovery_sum);
            free(r->cells[i].seq_n);
        }
    free(r->cells);
    free(r);
}

/* ------------------------------------------------------------------ plan */

typedef struct {
    int trace;       /* index into the config's traces */
    int index;       /* sequence index in that trace */
    int n_prompt, n_pre, n_steps, S, NB;
    int has_query, has_colsum;
} plan_seq;

typedef struct {
    const ap_selector *sel;
    ap_sel_params params;
    int predictor;   /* index of the runtime, -1 for builtins */
} plan_method;

typedef struct {
    int seq, layer;
} plan_task;

/* What one task adds to the result; merged in task order. */
typedef struct {
    ap_meanci *rec, *hit, *ratio;   /* [n_methods][n_budgets] */
    long long *n, *n_bypass;        /* same */
    double *lh_sum;                 /* [n_methods][n_budgets][n_head] */
    long long *lh_n;
    ap_sel_cost *cost;              /* [n_methods] */
    long long n_bad;
} task_acc;

typedef struct {
    const ap_replay_config *cfg;
    ap_trace *traces[AP_REPLAY_MAX_TRACES];
    ap_runtime *rts[AP_REPLAY_MAX_PREDICTORS];
    ap_trace_meta meta;
    int sink_blocks, local_blocks;
    int need_query, need_colsum;
    plan_seq *seqs;
    int n_seqs;
    plan_task *tasks;
    int n_tasks;
    long long total_steps;          /* progress units: decode steps x layers */
    double total_work;              /* their cost: each step's context (ap_work_run) */
    int n_methods;
    plan_method methods[AP_REPLAY_MAX_METHODS];
    ap_replay_result *res;
    task_acc *accs;                 /* [n_tasks] */
    /* pool */
    pthread_mutex_t mu;             /* next_task, done, finished, error, HDF5 reads */
    pthread_cond_t cv;
    int next_task, finished, failed_task;
    long long done_steps;
    double done_work;
    ap_err first_err;
} run_ctx;

static int is_dense_layer(const ap_replay_config *c, int l) {
    for (int i = 0; i < c->n_dense_layers; i++)
        if (c->dense_layers[i] == l) return 1;
    return 0;
}

/* Layers the methods select in: full-attention layers not kept dense. A
 * sliding-window layer's cache is bounded by its window already, so it is
 * not compressed and not scored. */
static int layer_replayed(const run_ctx *x, int l) {
    return ap_trace_layer_is_full(&x->meta, l) && !is_dense_layer(x->cfg, l);
}

static ap_status check_config(const ap_replay_config *c, ap_err *err) {
    if (c->n_traces < 1 || c->n_traces > AP_REPLAY_MAX_TRACES)
        return ap_errf(err, AP_ERR_ARG, "replay: %d traces given (1..%d)", c->n_traces,
                       AP_REPLAY_MAX_TRACES);
    if (c->n_methods < 0 || c->n_methods > AP_REPLAY_MAX_METHODS)
        return ap_errf(err, AP_ERR_ARG, "replay: %d methods given (0..%d)", c->n_methods,
                       AP_REPLAY_MAX_METHODS);
    if (c->n_budgets < 1 || c->n_budgets > AP_REPLAY_MAX_BUDGETS)
        return ap_errf(err, AP_ERR_ARG, "replay: %d budgets given (1..%d)", c->n_budgets,
                       AP_REPLAY_MAX_BUDGETS);
    for (int b = 0; b < c->n_budgets; b++)
        if (c->budgets[b] < 1)
            return ap_errf(err, AP_ERR_ARG, "replay: budget %d is not positive", c->budgets[b]);
    if (c->sink_tokens < 0 || c->local_tokens < 0)
        return ap_errf(err, AP_ERR_ARG, "replay: sink %d and local %d must be >= 0",
                       c->sink_tokens, c->local_tokens);
    /* At or below sink + local no block is left to choose: every method
     * keeps the same tokens and the table would be all ties. */
    for (int b = 0; b < c->n_budgets; b++)
        if (c->budgets[b] <= c->sink_tokens + c->local_tokens)
            return ap_errf(err, AP_ERR_ARG,
                           "replay: --budget %d is not above sink + local = %d tokens "
                           "(budgets must exceed %d)",
                           c->budgets[b], c->sink_tokens + c->local_tokens,
                           c->sink_tokens + c->local_tokens);
    if (c->calib < 0) return ap_errf(err, AP_ERR_ARG, "replay: calib %d < 0", c->calib);
    if (c->min_candidates < 1)
        return ap_errf(err, AP_ERR_ARG, "replay: min_candidates %d < 1", c->min_candidates);
    if (c->kv_mode != AP_KV_PER_QHEAD && c->kv_mode != AP_KV_SUM && c->kv_mode != AP_KV_UNION)
        return ap_errf(err, AP_ERR_ARG, "replay: unknown kv_mode %d", (int)c->kv_mode);
    if (c->snapkv_window < 1)
        return ap_errf(err, AP_ERR_ARG, "replay: snapkv_window %d < 1", c->snapkv_window);
    if (c->snapkv_pool < 1 || c->snapkv_pool % 2 == 0)
        return ap_errf(err, AP_ERR_ARG, "replay: snapkv_pool %d must be odd and >= 1",
                       c->snapkv_pool);
    if (c->n_dense_layers < 0 || c->n_dense_layers > AP_REPLAY_MAX_LAYERS)
        return ap_errf(err, AP_ERR_ARG, "replay: %d dense layers", c->n_dense_layers);
    if (c->max_seqs < 0 || c->max_steps < 0)
        return ap_errf(err, AP_ERR_ARG, "replay: max_seqs %d and max_steps %d must be >= 0",
                       c->max_seqs, c->max_steps);
    if (c->threads < 1 || c->threads > 256)
        return ap_errf(err, AP_ERR_ARG, "replay: threads %d (1..256)", c->threads);
    return AP_OK;
}

static int meta_compatible(const ap_trace_meta *a, const ap_trace_meta *b) {
    return a->n_layer == b->n_layer && a->n_head == b->n_head && a->n_head_kv == b->n_head_kv &&
           a->head_dim == b->head_dim && a->block_size == b->block_size;
}

/* First layer whose attention window differs, or -1. */
static int window_mismatch(const ap_trace_meta *a, const ap_trace_meta *b) {
    for (int l = 0; l < a->n_layer && l < AP_TRACE_MAX_LAYERS; l++)
        if (a->layer_window[l] != b->layer_window[l]) return l;
    return -1;
}

/* Opens the traces and lists the sequences to replay. */
static ap_status plan_traces(run_ctx *x, ap_err *err) {
    const ap_replay_config *c = x->cfg;
    ap_status st = AP_OK;
    int32_t *pos = NULL;
    int cap = 0;
    for (int f = 0; f < c->n_traces; f++) {
        const char *path = c->traces[f];
        if (!path) return ap_errf(err, AP_ERR_ARG, "replay: trace %d has no file name", f);
        st = ap_trace_open(path, &x->traces[f], err);
        if (st) return st;
        const ap_trace_meta *m = ap_trace_get_meta(x->traces[f]);
        if (f == 0) {
            x->meta = *m;
        } else if (!meta_compatible(m, &x->meta)) {
            return ap_errf(err, AP_ERR_FORMAT,
                           "%s: model shape (layers %d, heads %d/%d, head_dim %d, block %d) "
                           "differs from %s (%d, %d/%d, %d, %d)",
                           path, m->n_layer, m->n_head, m->n_head_kv, m->head_dim,
                           m->block_size, c->traces[0], x->meta.n_layer, x->meta.n_head,
                           x->meta.n_head_kv, x->meta.head_dim, x->meta.block_size);
        }
        int wl = f > 0 ? window_mismatch(m, &x->meta) : -1;
        if (wl >= 0)
            return ap_errf(err, AP_ERR_FORMAT,
                           "%s: layer %d's attention window is %d, in %s it is %d (0 = full "
                           "attention): the traces come from different models",
                           path, wl, m->layer_window[wl], c->traces[0], x->meta.layer_window[wl]);
        int n = ap_trace_n_seq(x->traces[f]);
        if (c->max_seqs > 0 && n > c->max_seqs) n = c->max_seqs;
        cap += n;
    }
    const ap_trace_meta *m = &x->meta;
    if (m->n_head_kv < 1 || m->n_head % m->n_head_kv != 0 || m->block_size < 1)
        return ap_errf(err, AP_ERR_FORMAT, "%s: %d query heads over %d KV heads, block %d",
                       c->traces[0], m->n_head, m->n_head_kv, m->block_size);
    if (c->sink_tokens % m->block_size || c->local_tokens % m->block_size)
        return ap_errf(err, AP_ERR_ARG,
                       "replay: --sink %d and --local %d must be multiples of the traces' block "
                       "size %d",
                       c->sink_tokens, c->local_tokens, m->block_size);
    for (int i = 0; i < c->n_dense_layers; i++)
        if (c->dense_layers[i] < 0 || c->dense_layers[i] >= m->n_layer)
            return ap_errf(err, AP_ERR_ARG, "replay: dense layer %d outside the traces' 0..%d",
                           c->dense_layers[i], m->n_layer - 1);
    x->sink_blocks = c->sink_tokens / m->block_size;
    x->local_blocks = c->local_tokens / m->block_size;
    x->seqs = calloc((size_t)(cap > 0 ? cap : 1), sizeof *x->seqs);
    if (!x->seqs) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    for (int f = 0; f < c->n_traces; f++) {
        int n = ap_trace_n_seq(x->traces[f]);
        if (c->max_seqs > 0 && n > c->max_seqs) n = c->max_seqs;
        for (int i = 0; i < n; i++) {
            ap_trace_seq_info info;
            st = ap_trace_seq_get_info(x->traces[f], i, &info, err);
            if (st) goto cleanup;
            free(pos);
            pos = malloc((size_t)(info.n_steps > 0 ? info.n_steps : 1) * sizeof *pos);
            if (!pos) {
                st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
                goto cleanup;
            }
            st = ap_trace_read_i32(x->traces[f], i, "step_pos", pos, (size_t)info.n_steps, err);
            if (st) goto cleanup;
            /* The replay's geometry relies on the capture's layout: the
             * last prefill queries, then every decode query. */
            int n_pre = info.n_steps - info.n_gen;
            int ok = n_pre >= 0 && n_pre <= info.n_prompt;
            for (int s = 0; ok && s < info.n_steps; s++) ok = pos[s] == info.n_prompt - n_pre + s;
            if (!ok) {
                st = ap_errf(err, AP_ERR_FORMAT,
                             "%s: sequence '%s': recorded steps are not the last prefill "
                             "queries followed by every decode query",
                             c->traces[f], info.id);
                goto cleanup;
            }
            plan_seq *p = &x->seqs[x->n_seqs++];
            p->trace = f;
            p->index = i;
            p->n_prompt = info.n_prompt;
            p->n_pre = n_pre;
            p->n_steps = c->max_steps > 0 && info.n_gen > c->max_steps ? c->max_steps : info.n_gen;
            p->S = info.n_steps;
            p->NB = info.n_blocks;
            p->has_query = info.has_query;
            p->has_colsum = info.has_colsum;
        }
    }
cleanup:
    free(pos);
    return st;
}

static ap_status plan_predictors(run_ctx *x, ap_err *err) {
    const ap_replay_config *c = x->cfg;
    ap_status st = AP_OK;
    uint8_t *need = malloc((size_t)(x->meta.n_layer > 0 ? x->meta.n_layer : 1));
    if (!need) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    for (int l = 0; l < x->meta.n_layer; l++) need[l] = (uint8_t)layer_replayed(x, l);
    char run[600];
    snprintf(run, sizeof run, "trace %s", c->traces[0]);
    /* Workers run (sequence, layer) tasks in parallel: the loader gives
     * each predictor one thread. */
    for (int p = 0; p < c->n_predictors && !st; p++)
        st = ap_sel_predictor_load(c->predictors[p], x->meta.block_size, x->meta.history,
                                   x->meta.n_layer, need, run, &x->rts[p], err);
    free(need);
    return st;
}

static const char *missing_need(unsigned needs, int has_query, int has_colsum) {
    if ((needs & AP_SEL_NEEDS_QUERY) && !has_query)
        return "query vectors and key bounds (capture without --no-quest)";
    if ((needs & AP_SEL_NEEDS_COLSUM) && !has_colsum)
        return "prefill_colsum (capture without --no-colsum)";
    return NULL;
}

/* What a method reads from the trace: its selector's needs, plus the query
 * and key bounds for a query-fusion predictor. */
static unsigned method_needs(const run_ctx *x, const ap_selector *sel, int predictor) {
    unsigned needs = sel->needs;
    if (predictor >= 0 && x->rts[predictor] && ap_runtime_config(x->rts[predictor])->query_fusion)
        needs |= AP_SEL_NEEDS_QUERY;
    return needs;
}

static ap_status add_method(run_ctx *x, const ap_selector *sel, int predictor, int nocal,
                            ap_err *err) {
    const ap_replay_config *c = x->cfg;
    ap_replay_result *r = x->res;
    char name[48], label[96];
    if (predictor >= 0) {
        const char *base = r->predictor_names[predictor];
        snprintf(name, sizeof name, "%.40s%s", base, nocal ? "_nocal" : "");
        const char *fused =
            x->rts[predictor] && ap_runtime_config(x->rts[predictor])->query_fusion ? " + query"
                                                                                  : "";
        char variant[48];
        ap_sel_predictor_variant(c->pred_stride, c->pred_per_kv, variant, sizeof variant);
        if (nocal)
            snprintf(label, sizeof label, "%s%s, no calibration%s", base, fused, variant);
        else
            snprintf(label, sizeof label, "%s%s (calib %d)%s", base, fused, c->calib, variant);
    } else {
        snprintf(name, sizeof name, "%s", sel->name);
        if (!strcmp(sel->name, "last_step"))
            snprintf(label, sizeof label, "Last step (calib %d)", c->calib);
        else
            snprintf(label, sizeof label, "%s", sel->label);
    }
    for (int m = 0; m < x->n_methods; m++)
        if (!strcmp(r->methods[m].name, name)) return AP_OK; /* asked twice */
    if (x->n_methods >= AP_REPLAY_MAX_METHODS)
        return ap_errf(err, AP_ERR_ARG, "replay: more than %d methods", AP_REPLAY_MAX_METHODS);
    int m = x->n_methods++;
    plan_method *pm = &x->methods[m];
    pm->sel = sel;
    pm->predictor = predictor;
    ap_sel_params *pp = &pm->params;
    memset(pp, 0, sizeof *pp);
    pp->sink_blocks = x->sink_blocks;
    pp->local_blocks = x->local_blocks;
    pp->local_tokens = c->local_tokens;
    pp->calib = nocal ? 0 : c->calib;
    pp->kv_mode = c->kv_mode;
    pp->snapkv_window = c->snapkv_window;
    pp->snapkv_pool = c->snapkv_pool;
    pp->rt = predictor >= 0 ? x->rts[predictor] : NULL;
    pp->incremental = c->incremental;
    pp->pred_stride = c->pred_stride;
    pp->pred_per_kv = c->pred_per_kv;
    ap_replay_method *rm = &r->methods[m];
    memset(rm, 0, sizeof *rm);
    snprintf(rm->name, sizeof rm->name, "%s", name);
    snprintf(rm->label, sizeof rm->label, "%s", label);
    rm->kind = sel->kind;
    rm->is_predictor = predictor >= 0;
    rm->dense_every_step = (sel->needs & AP_SEL_DENSE_EVERY_STEP) != 0;
    if (predictor >= 0) snprintf(rm->source, sizeof rm->source, "%s", c->predictors[predictor]);
    const unsigned needs = method_needs(x, sel, predictor);
    if (needs & AP_SEL_NEEDS_QUERY) x->need_query = 1;
    if (needs & AP_SEL_NEEDS_COLSUM) x->need_colsum = 1;
    return AP_OK;
}

static void add_dropped(ap_replay_result *r, const char *name, const char *why) {
    if (r->n_dropped >= AP_REPLAY_MAX_METHODS) return;
    snprintf(r->dropped[r->n_dropped], sizeof r->dropped[0], "%s", name);
    snprintf(r->dropped_reason[r->n_dropped], sizeof r->dropped_reason[0], "%s", why);
    r->n_dropped++;
}

/* The first trace (in order) lacking what `needs` asks for, or -1. */
static int trace_missing(const run_ctx *x, unsigned needs, const char **what) {
    for (int i = 0; i < x->n_seqs; i++) {
        const char *w = missing_need(needs, x->seqs[i].has_query, x->seqs[i].has_colsum);
        if (w) {
            *what = w;
            return x->seqs[i].trace;
        }
    }
    return -1;
}

static ap_status plan_methods(run_ctx *x, ap_err *err) {
    const ap_replay_config *c = x->cfg;
    ap_replay_result *r = x->res;
    ap_status st = AP_OK;
    if (c->n_methods == 0) {
        for (int i = 0; ap_selector_builtin(i); i++) {
            const ap_selector *sel = ap_selector_builtin(i);
            const char *what = NULL;
            int f = trace_missing(x, sel->needs, &what);
            if (f >= 0) {
                char why[160];
                snprintf(why, sizeof why, "%s lacks %s", c->traces[f], what);
                add_dropped(r, sel->name, why);
                continue;
            }
            if ((st = add_method(x, sel, -1, 0, err))) return st;
        }
        if (c->n_predictors == 0) add_dropped(r, "attnpred", "no predictor given (--predictor)");
        for (int p = 0; p < c->n_predictors; p++) {
            const char *what = NULL;
            int f = trace_missing(x, method_needs(x, ap_selector_predictor(), p), &what);
            if (f >= 0) {
                char why[160];
                snprintf(why, sizeof why, "%s lacks %s (query-fusion predictor)", c->traces[f],
                         what);
                add_dropped(r, r->predictor_names[p], why);
                continue;
            }
            for (int nocal = 0; nocal < 2; nocal++)
                if ((st = add_method(x, ap_selector_predictor(), p, nocal, err))) return st;
        }
        return AP_OK;
    }
    for (int i = 0; i < c->n_methods; i++) {
        const char *name = c->methods[i];
        if (!name) return ap_errf(err, AP_ERR_ARG, "replay: method %d has no name", i);
        const ap_selector *sel = ap_selector_find(name);
        if (sel) {
            const char *what = NULL;
            int f = trace_missing(x, sel->needs, &what);
            if (f >= 0)
                return ap_errf(err, AP_ERR_ARG, "%s: method %s needs %s", c->traces[f], name,
                               what);
            if ((st = add_method(x, sel, -1, 0, err))) return st;
            continue;
        }
        int found = 0;
        for (int p = 0; p < c->n_predictors; p++)
            for (int nocal = 0; nocal < 2; nocal++)
                if (ap_sel_predictor_selected(name, r->predictor_names[p], nocal)) {
                    found = 1;
                    const char *what = NULL;
                    int f = trace_missing(x, method_needs(x, ap_selector_predictor(), p), &what);
                    if (f >= 0)
                        return ap_errf(err, AP_ERR_ARG,
                                       "%s: method %s (a query-fusion predictor) needs %s",
                                       c->traces[f], name, what);
                    if ((st = add_method(x, ap_selector_predictor(), p, nocal, err))) return st;
                }
        if (found) continue;
        if (!strcmp(name, "attnpred") || !strcmp(name, "attnpred_nocal"))
            return ap_errf(err, AP_ERR_ARG, "replay: method %s needs a predictor (--predictor)",
                           name);
        char known[1024];
        int n = snprintf(known, sizeof known, "attnpred, attnpred_nocal");
        for (int p = 0; p < c->n_predictors && n < (int)sizeof known; p++)
            n += snprintf(known + n, sizeof known - (size_t)n, ", %s, %s_nocal",
                          r->predictor_names[p], r->predictor_names[p]);
        for (int b = 0; ap_selector_builtin(b) && n < (int)sizeof known; b++)
            n += snprintf(known + n, sizeof known - (size_t)n, ", %s", ap_selector_builtin(b)->name);
        return ap_errf(err, AP_ERR_ARG, "replay: unknown method '%s' (known: %s)", name, known);
    }
    return AP_OK;
}

static ap_status plan_tasks(run_ctx *x, ap_err *err) {
    const int L = x->meta.n_layer;
    x->tasks = calloc((size_t)(x->n_seqs > 0 ? x->n_seqs : 1) * (size_t)L, sizeof *x->tasks);
    if (!x->tasks) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < x->n_seqs; i++) {
        if (x->seqs[i].n_steps < 1) continue;
        for (int l = 0; l < L; l++) {
            if (!layer_replayed(x, l)) continue;
            x->tasks[x->n_tasks++] = (plan_task){i, l};
            x->total_steps += x->seqs[i].n_steps;
            /* A step's selectors and predictor read every block of its
             * context: later steps and longer sequences cost more. */
            x->total_work += ap_work_run(x->seqs[i].n_prompt, x->seqs[i].n_steps, 0, 0.0);
        }
    }
    return AP_OK;
}

/* ------------------------------------------------------------ accumulators */

static void acc_free(task_acc *a) {
    free(a->rec);
    free(a->hit);
    free(a->ratio);
    free(a->n);
    free(a->n_bypass);
    free(a->lh_sum);
    free(a->lh_n);
    free(a->cost);
    memset(a, 0, sizeof *a);
}

static ap_status acc_alloc(task_acc *a, int n_methods, int n_budgets, int n_head, ap_err *err) {
    size_t mb = (size_t)n_methods * n_budgets;
    a->rec = calloc(mb, sizeof *a->rec);
    a->hit = calloc(mb, sizeof *a->hit);
    a->ratio = calloc(mb, sizeof *a->ratio);
    a->n = calloc(mb, sizeof *a->n);
    a->n_bypass = calloc(mb, sizeof *a->n_bypass);
    a->lh_sum = calloc(mb * n_head, sizeof *a->lh_sum);
    a->lh_n = calloc(mb * n_head, sizeof *a->lh_n);
    a->cost = calloc((size_t)n_methods, sizeof *a->cost);
    if (!a->rec || !a->hit || !a->ratio || !a->n || !a->n_bypass || !a->lh_sum || !a->lh_n ||
        !a->cost) {
        acc_free(a);
        return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    }
    return AP_OK;
}

/* ---------------------------------------------------------- one task */

/* Everything one (sequence, layer) task allocates. */
typedef struct {
    ap_sel_data d;
    float *bmax, *bsum, *query, *kmin, *kmax, *colsum;
    uint8_t *bad;          /* [S][n_head] */
    void **states;         /* [n_methods][n_budgets] (stateless: slot 0 only) */
    uint8_t *evicted;      /* [n_methods][n_budgets][n_head][NB] */
    uint8_t *kept;         /* [n_head][NB] */
    double *kept_mass;     /* [n_head] */
    float *ysum;           /* [n_head][W max] */
    double *fixed;         /* [n_head] */
    int *orank, *opos;     /* [n_head][W max] */
    double *oprefix;       /* [n_head][W max + 1] */
    float *scores, *work;  /* [n_head][W max] */
    float *gsum;           /* [W max] */
    int *order;            /* [n_head][W max] */
    int *chosen;           /* [n_head][W max] */
    int *mark;             /* [W max] */
} task_mem;

static void task_mem_free(task_mem *t, int n_states, const plan_method *methods) {
    if (t->states)
        for (int i = 0; i < n_states; i++)
            if (t->states[i]) methods[i / AP_REPLAY_MAX_BUDGETS].sel->destroy(t->states[i]);
    free(t->bmax);
    free(t->bsum);
    free(t->query);
    free(t->kmin);
    free(t->kmax);
    free(t->colsum);
    free(t->bad);
    free(t->states);
    free(t->evicted);
    free(t->kept);
    free(t->kept_mass);
    free(t->ysum);
    free(t->fixed);
    free(t->orank);
    free(t->opos);
    free(t->oprefix);
    free(t->scores);
    free(t->work);
    free(t->gsum);
    free(t->order);
    free(t->chosen);
    free(t->mark);
}

static ap_status read_layer(run_ctx *x, const plan_seq *ps, int layer, const char *name,
                            float **buf, size_t n, ap_err *err) {
    *buf = malloc((n > 0 ? n : 1) * sizeof(float));
    if (!*buf) return ap_errf(err, AP_ERR_NOMEM, "out of memory reading %s", name);
    pthread_mutex_lock(&x->mu);
    ap_status st = ap_trace_read_layer(x->traces[ps->trace], ps->index, layer, name, *buf, n, err);
    pthread_mutex_unlock(&x->mu);
    return st;
}

/* The step geometry every method shares. */
static ap_sel_params step_geometry(const run_ctx *x) {
    return (ap_sel_params){.sink_blocks = x->sink_blocks, .local_blocks = x->local_blocks,
                           .local_tokens = x->cfg->local_tokens};
}

/* Blocks kept among W candidates at budget index b: every one in a bypass
 * (too few candidates for any method to choose), else what the budget buys. */
static int step_k(const run_ctx *x, int W, int b) {
    const ap_replay_config *c = x->cfg;
    if (W < c->min_candidates) return W;
    return ap_metrics_k_blocks(c->budgets[b], c->sink_tokens, c->local_tokens,
                               x->meta.block_size, W);
}

/* The k candidates (candidate-relative) each head keeps, per kv_mode. */
static void choose(const run_ctx *x, task_mem *tm, int W, int k) {
    ap_sel_choose(x->cfg->kv_mode, x->meta.n_head, x->meta.n_head_kv, tm->work, W, k, tm->order,
                  tm->gsum, tm->mark, tm->chosen);
}

static ap_status run_task(run_ctx *x, int ti, ap_err *err) {
    const ap_replay_config *c = x->cfg;
    const plan_task *pt = &x->tasks[ti];
    const plan_seq *ps = &x->seqs[pt->seq];
    const int nh = x->meta.n_head, hd = x->meta.head_dim, nkv = x->meta.n_head_kv;
    const int NB = ps->NB, S = ps->S, bsz = x->meta.block_size, nb = c->n_budgets;
    const int nm = x->n_methods;
    task_acc *acc = &x->accs[ti];
    task_mem tm;
    memset(&tm, 0, sizeof tm);
    const int n_states = nm * AP_REPLAY_MAX_BUDGETS;
    ap_status st = acc_alloc(acc, nm, nb, nh, err);
    if (st) return st;
    size_t rows = (size_t)S * nh * NB;
    if ((st = read_layer(x, ps, pt->layer, "block_max", &tm.bmax, rows, err))) goto cleanup;
    if ((st = read_layer(x, ps, pt->layer, "block_sum", &tm.bsum, rows, err))) goto cleanup;
    if (x->need_query && ps->has_query) {
        if ((st = read_layer(x, ps, pt->layer, "query", &tm.query, (size_t)S * nh * hd, err)))
            goto cleanup;
        if ((st = read_layer(x, ps, pt->layer, "key_min", &tm.kmin, (size_t)nkv * NB * hd, err)))
            goto cleanup;
        if ((st = read_layer(x, ps, pt->layer, "key_max", &tm.kmax, (size_t)nkv * NB * hd, err)))
            goto cleanup;
    }
    if (x->need_colsum && ps->has_colsum &&
        (st = read_layer(x, ps, pt->layer, "prefill_colsum", &tm.colsum,
                         (size_t)nh * ps->n_prompt, err)))
        goto cleanup;
    /* Rows with NaN/Inf are zeroed for the selectors and their decode steps
     * are not counted. */
    tm.bad = calloc((size_t)S * nh, 1);
    if (!tm.bad) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    for (size_t r = 0; r < (size_t)S * nh; r++) {
        float *a = tm.bmax + r * NB, *b = tm.bsum + r * NB;
        int ok = 1;
        for (int j = 0; j < NB && ok; j++) ok = isfinite(a[j]) && isfinite(b[j]);
        if (ok) continue;
        tm.bad[r] = 1;
        memset(a, 0, (size_t)NB * sizeof(float));
        memset(b, 0, (size_t)NB * sizeof(float));
    }
    tm.d = (ap_sel_data){.layer = pt->layer, .n_head = nh, .n_head_kv = nkv, .head_dim = hd,
                         .block = bsz, .n_prompt = ps->n_prompt, .n_pre = ps->n_pre,
                         .n_steps = ps->n_steps, .n_blocks = NB, .block_max = tm.bmax,
                         .block_sum = tm.bsum, .query = tm.query, .key_min = tm.kmin,
                         .key_max = tm.kmax, .prefill_colsum = tm.colsum};
    const int WM = NB > 0 ? NB : 1;
    tm.states = calloc((size_t)n_states, sizeof *tm.states);
    tm.evicted = calloc((size_t)nm * nb * nh * NB + 1, 1);
    tm.kept = calloc((size_t)nh * NB + 1, 1);
    tm.kept_mass = calloc((size_t)nh, sizeof(double));
    tm.ysum = calloc((size_t)nh * WM, sizeof(float));
    tm.fixed = calloc((size_t)nh, sizeof(double));
    tm.orank = calloc((size_t)nh * WM, sizeof(int));
    tm.opos = calloc((size_t)nh * WM, sizeof(int));
    tm.oprefix = calloc((size_t)nh * (WM + 1), sizeof(double));
    tm.scores = calloc((size_t)nh * WM, sizeof(float));
    tm.work = calloc((size_t)nh * WM, sizeof(float));
    tm.gsum = calloc((size_t)WM, sizeof(float));
    tm.order = calloc((size_t)nh * WM, sizeof(int));
    tm.chosen = calloc((size_t)nh * WM, sizeof(int));
    tm.mark = calloc((size_t)WM, sizeof(int));
    if (!tm.states || !tm.evicted || !tm.kept || !tm.kept_mass || !tm.ysum || !tm.fixed ||
        !tm.orank || !tm.opos || !tm.oprefix || !tm.scores || !tm.work || !tm.gsum ||
        !tm.order || !tm.chosen || !tm.mark) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    for (int m = 0; m < nm; m++) {
        const plan_method *pm = &x->methods[m];
        for (int b = 0; b < (pm->sel->stateful ? nb : 1); b++) {
            st = pm->sel->create(&tm.d, &pm->params, &tm.states[m * AP_REPLAY_MAX_BUDGETS + b], err);
            if (st) goto cleanup;
        }
    }

    const ap_sel_params geo = step_geometry(x);
    for (int t = 0; t < ps->n_steps; t++) {
        ap_sel_step sp;
        ap_sel_step_at(&geo, bsz, ps->n_prompt, ps->n_pre, t, &sp);
        const int W = sp.W;
        const int bypass = W < c->min_candidates;
        for (int h = 0; h < nh; h++) {
            const float *bs = tm.bsum + ((size_t)sp.s * nh + h) * NB;
            double f = 0.0;
            for (int j = 0; j < sp.n_valid && j < NB; j++)
                if (j < sp.c0 || j >= sp.lb0) f += bs[j];
            tm.fixed[h] = f;
            float *ys = tm.ysum + (size_t)h * WM;
            for (int j = 0; j < W; j++) ys[j] = sp.c0 + j >= sp.lb0 ? 0.0f : bs[sp.c0 + j];
            int *orank = tm.orank + (size_t)h * WM, *opos = tm.opos + (size_t)h * WM;
            double *opre = tm.oprefix + (size_t)h * (WM + 1);
            ap_metrics_rank(ys, W, orank);
            opre[0] = f;
            for (int r = 0; r < W; r++) {
                opos[orank[r]] = r;
                opre[r + 1] = opre[r] + ys[orank[r]];
            }
        }
        for (int m = 0; m < nm; m++) {
            const plan_method *pm = &x->methods[m];
            const int stateful = pm->sel->stateful;
            const int eviction = pm->sel->kind == AP_SEL_EVICTION;
            for (int b0 = 0; b0 < (stateful ? nb : 1); b0++) {
                void *state = tm.states[m * AP_REPLAY_MAX_BUDGETS + b0];
                if (!bypass) {
                    st = pm->sel->score(state, &sp, tm.scores, err);
                    if (!st && pm->sel->finish) st = pm->sel->finish(state, &sp, tm.scores, err);
                    if (st) goto cleanup;
                }
                for (int b = stateful ? b0 : 0; b < (stateful ? b0 + 1 : nb); b++) {
                    int k = step_k(x, W, b);
                    sp.k = k;
                    uint8_t *ev = tm.evicted + (((size_t)m * nb + b) * nh) * NB;
                    if (bypass) {
                        for (int h = 0; h < nh; h++)
                            for (int j = 0; j < W; j++) tm.chosen[(size_t)h * W + j] = j;
                    } else {
                        memcpy(tm.work, tm.scores, (size_t)nh * W * sizeof(float));
                        if (eviction)
                            for (int h = 0; h < nh; h++)
                                for (int j = 0; j < W; j++)
                                    if (ev[(size_t)h * NB + sp.c0 + j])
                                        tm.work[(size_t)h * W + j] = -INFINITY;
                        choose(x, &tm, W, k);
                    }
                    size_t cell = (size_t)m * nb + b;
                    for (int h = 0; h < nh; h++) {
                        const int *ch = tm.chosen + (size_t)h * W;
                        const float *ys = tm.ysum + (size_t)h * WM;
                        const int *opos = tm.opos + (size_t)h * WM;
                        double rec = tm.fixed[h];
                        int hit = 0;
                        for (int i = 0; i < k; i++) {
                            rec += ys[ch[i]];
                            hit += opos[ch[i]] < k;
                        }
                        tm.kept_mass[h] = rec;
                        double orac = tm.oprefix[(size_t)h * (WM + 1) + k];
                        double hr = k > 0 ? (double)hit / k : 1.0;
                        double ratio = orac > 0 ? rec / orac : 1.0;
                        if (tm.bad[(size_t)sp.s * nh + h]) continue;
                        ap_meanci_add(&acc->rec[cell], rec);
                        ap_meanci_add(&acc->hit[cell], hr);
                        ap_meanci_add(&acc->ratio[cell], ratio);
                        acc->n[cell]++;
                        acc->n_bypass[cell] += bypass;
                        acc->lh_sum[cell * nh + h] += rec;
                        acc->lh_n[cell * nh + h]++;
                        if (c->on_step) {
                            int abs_idx[1024], *ids = abs_idx;
                            int *heap = NULL;
                            if (k > 1024) {
                                heap = malloc((size_t)k * sizeof(int));
                                if (!heap) {
                                    st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
                                    goto cleanup;
                                }
                                ids = heap;
                            }
                            for (int i = 0; i < k; i++) ids[i] = sp.c0 + ch[i];
                            ap_replay_step_info info = {
                                ps->trace, ps->index, pt->layer, h, t, m, b, bypass, sp.c0,
                                sp.c1, k, ids, rec, orac, hr,
                                bypass ? NULL : tm.work + (size_t)h * W};
                            c->on_step(c->on_step_user, &info);
                            free(heap);
                        }
                    }
                    if (eviction && !bypass)
                        for (int h = 0; h < nh; h++) {
                            const int *ch = tm.chosen + (size_t)h * W;
                            uint8_t *e = ev + (size_t)h * NB;
                            /* Candidates outside the local window that were
                             * not kept are gone; inside it they are held. */
                            int lim = sp.c1 < sp.lb0 ? sp.c1 : sp.lb0;
                            uint8_t *keep = tm.kept + (size_t)h * NB;
                            for (int j = sp.c0; j < lim; j++) keep[j] = 0;
                            for (int i = 0; i < k; i++) keep[sp.c0 + ch[i]] = 1;
                            for (int j = sp.c0; j < lim; j++)
                                if (!keep[j]) e[j] = 1;
                        }
                    if (stateful) {
                        for (int h = 0; h < nh; h++) {
                            uint8_t *keep = tm.kept + (size_t)h * NB;
                            const int *ch = tm.chosen + (size_t)h * W;
                            memset(keep, 0, (size_t)NB);
                            for (int j = 0; j < sp.n_valid && j < NB; j++)
                                keep[j] = j < sp.c0 || j >= sp.lb0;
                            for (int i = 0; i < k; i++) keep[sp.c0 + ch[i]] = 1;
                        }
                        st = pm->sel->observe(state, &sp, tm.kept, tm.kept_mass, err);
                        if (st) goto cleanup;
                    }
                }
            }
        }
        for (int h = 0; h < nh; h++)
            if (tm.bad[(size_t)sp.s * nh + h]) acc->n_bad++;
        pthread_mutex_lock(&x->mu);
        x->done_steps++;
        x->done_work += ap_work_run(ps->n_prompt + t, 1.0, 0, 0.0);
        pthread_mutex_unlock(&x->mu);
    }
    for (int m = 0; m < nm; m++) {
        const plan_method *pm = &x->methods[m];
        if (!pm->sel->cost) continue;
        for (int b = 0; b < (pm->sel->stateful ? nb : 1); b++) {
            ap_sel_cost one;
            pm->sel->cost(tm.states[m * AP_REPLAY_MAX_BUDGETS + b], &one);
            acc->cost[m].n += one.n;
            acc->cost[m].naive_macs += one.naive_macs;
            acc->cost[m].run_macs += one.run_macs;
            acc->cost[m].seconds += one.seconds;
        }
    }
cleanup:
    task_mem_free(&tm, n_states, x->methods);
    if (st) {
        char where[160];
        snprintf(where, sizeof where, "%s: sequence %d, layer %d", c->traces[ps->trace],
                 ps->index, pt->layer);
        ap_err_prefix(err, where);
    }
    return st;
}

/* ------------------------------------------------------------------ pool */

static void *worker(void *arg) {
    run_ctx *x = arg;
    for (;;) {
        pthread_mutex_lock(&x->mu);
        if (x->next_task >= x->n_tasks || x->failed_task >= 0) {
            pthread_mutex_unlock(&x->mu);
            break;
        }
        int ti = x->next_task++;
        pthread_mutex_unlock(&x->mu);
        ap_err e;
        ap_err_clear(&e);
        ap_status st = run_task(x, ti, &e);
        pthread_mutex_lock(&x->mu);
        if (st && (x->failed_task < 0 || ti < x->failed_task)) {
            x->failed_task = ti;
            x->first_err = e;
        }
        x->finished++;
        pthread_cond_broadcast(&x->cv);
        pthread_mutex_unlock(&x->mu);
    }
    pthread_mutex_lock(&x->mu);
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
    return NULL;
}

static ap_status run_pool(run_ctx *x, ap_err *err) {
    const ap_replay_config *c = x->cfg;
    int nt = c->threads < x->n_tasks ? c->threads : x->n_tasks;
    pthread_t tid[256];
    int started = 0;
    ap_status st = AP_OK;
    for (int i = 0; i < nt; i++) {
        if (pthread_create(&tid[i], NULL, worker, x) != 0) break;
        started++;
    }
    if (started == 0 && x->n_tasks > 0) {
        st = ap_errf(err, AP_ERR_INTERNAL, "replay: cannot start worker threads");
        goto cleanup;
    }
    pthread_mutex_lock(&x->mu);
    while (x->finished < x->n_tasks && !(x->failed_task >= 0 && x->finished >= x->next_task)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 250000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&x->cv, &x->mu, &ts);
        long long done = x->done_steps;
        double work = x->done_work;
        if (c->progress) {
            pthread_mutex_unlock(&x->mu);
            c->progress(c->progress_user, done, x->total_steps, work, x->total_work);
            pthread_mutex_lock(&x->mu);
        }
    }
    pthread_mutex_unlock(&x->mu);
cleanup:
    for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
    if (st == AP_OK && x->failed_task >= 0) {
        *err = x->first_err;
        st = err->status ? err->status : AP_ERR_INTERNAL;
    }
    if (st == AP_OK && c->progress)
        c->progress(c->progress_user, x->done_steps, x->total_steps, x->done_work, x->total_work);
    return st;
}

/* ----------------------------------------------------------------- merge */

static ap_status merge_results(run_ctx *x, ap_err *err) {
    ap_replay_result *r = x->res;
    const int nm = x->n_methods, nb = x->cfg->n_budgets;
    const int L = x->meta.n_layer, nh = x->meta.n_head;
    r->cells = calloc((size_t)(nm > 0 ? nm : 1) * nb, sizeof *r->cells);
    if (!r->cells) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    r->n_methods = nm;
    r->n_budgets = nb;
    double *lsum = calloc((size_t)L * nh, sizeof(double));
    long long *ln = calloc((size_t)L * nh, sizeof(long long));
    if (!lsum || !ln) {
        free(lsum);
        free(ln);
        return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    }
    for (int m = 0; m < nm; m++)
        for (int b = 0; b < nb; b++) {
            ap_replay_cell *cell = ap_replay_cell_at(r, m, b);
            size_t ci = (size_t)m * nb + b;
            ap_meanci_init(&cell->recovery);
            ap_meanci_init(&cell->hit_rate);
            ap_meanci_init(&cell->ratio);
            memset(lsum, 0, (size_t)L * nh * sizeof(double));
            memset(ln, 0, (size_t)L * nh * sizeof(long long));
            cell->seq_recovery_sum = calloc((size_t)(x->n_seqs > 0 ? x->n_seqs : 1), sizeof(double));
            cell->seq_n = calloc((size_t)(x->n_seqs > 0 ? x->n_seqs : 1), sizeof(long long));
            for (int ti = 0; ti < x->n_tasks; ti++) {
                const task_acc *a = &x->accs[ti];
                ap_meanci_merge(&cell->recovery, &a->rec[ci]);
                ap_meanci_merge(&cell->hit_rate, &a->hit[ci]);
                ap_meanci_merge(&cell->ratio, &a->ratio[ci]);
                cell->n += a->n[ci];
                cell->n_bypass += a->n_bypass[ci];
                int l = x->tasks[ti].layer;
                if (cell->seq_recovery_sum) {
                    cell->seq_recovery_sum[x->tasks[ti].seq] += a->rec[ci].mean * (double)a->rec[ci].n;
                    cell->seq_n[x->tasks[ti].seq] += a->rec[ci].n;
                }
                for (int h = 0; h < nh; h++) {
                    lsum[(size_t)l * nh + h] += a->lh_sum[ci * nh + h];
                    ln[(size_t)l * nh + h] += a->lh_n[ci * nh + h];
                }
            }
            cell->layer_head_recovery = malloc((size_t)L * nh * sizeof(double));
            if (!cell->layer_head_recovery || !cell->seq_recovery_sum || !cell->seq_n) {
                free(lsum);
                free(ln);
                return ap_errf(err, AP_ERR_NOMEM, "out of memory");
            }
            for (size_t i = 0; i < (size_t)L * nh; i++)
                cell->layer_head_recovery[i] = ln[i] > 0 ? lsum[i] / (double)ln[i] : NAN;
        }
    free(lsum);
    free(ln);
    for (int m = 0; m < AP_REPLAY_MAX_METHODS; m++) {
        r->pred_naive_macs[m] = r->pred_run_macs[m] = r->pred_us_per_step_head[m] = NAN;
        if (m >= nm || !x->methods[m].sel->cost) continue;
        ap_sel_cost tot = {0, 0, 0, 0};
        for (int ti = 0; ti < x->n_tasks; ti++) {
            const ap_sel_cost *one = &x->accs[ti].cost[m];
            tot.n += one->n;
            tot.naive_macs += one->naive_macs;
            tot.run_macs += one->run_macs;
            tot.seconds += one->seconds;
        }
        if (tot.n > 0) {
            r->pred_naive_macs[m] = tot.naive_macs / (double)tot.n;
            r->pred_run_macs[m] = tot.run_macs / (double)tot.n;
            r->pred_us_per_step_head[m] = 1e6 * tot.seconds / (double)tot.n;
        }
    }
    for (int ti = 0; ti < x->n_tasks; ti++) r->n_skipped_nonfinite += x->accs[ti].n_bad;
    return AP_OK;
}

/* Context and kept tokens over the replayed decode steps. The kept tokens
 * are the budget's accounting (sink + local + k blocks), not the blocks a
 * method touches: every method keeps that many, so compression is one
 * number per budget. When all W candidates are kept, sink, candidates and
 * local blocks cover every key, so the step keeps its whole context: a
 * budget at or above the context compresses 1.0x, not below. */
static void context_stats(const run_ctx *x, ap_replay_result *r) {
    const ap_replay_config *c = x->cfg;
    const ap_sel_params geo = step_geometry(x);
    double ctx_sum = 0.0, kept_sum[AP_REPLAY_MAX_BUDGETS] = {0};
    for (int i = 0; i < x->n_seqs; i++) {
        const plan_seq *p = &x->seqs[i];
        r->n_decode_steps += p->n_steps;
        for (int t = 0; t < p->n_steps; t++) {
            double ctx = p->n_prompt + t + 1;
            ctx_sum += ctx;
            if (ctx > r->max_context) r->max_context = ctx;
            ap_sel_step sp;
            ap_sel_step_at(&geo, x->meta.block_size, p->n_prompt, p->n_pre, t, &sp);
            for (int b = 0; b < c->n_budgets; b++) {
                int k = step_k(x, sp.W, b);
                double kept = c->sink_tokens + c->local_tokens + (double)k * x->meta.block_size;
                kept_sum[b] += k >= sp.W || kept > ctx ? ctx : kept;
            }
        }
    }
    double n = r->n_decode_steps > 0 ? (double)r->n_decode_steps : NAN;
    r->mean_context = r->n_decode_steps > 0 ? ctx_sum / n : 0.0;
    for (int b = 0; b < c->n_budgets; b++) r->mean_kept[b] = kept_sum[b] / n;
}

ap_status ap_replay_run(const ap_replay_config *c, ap_replay_result **out, ap_err *err) {
    ap_status st = check_config(c, err);
    if (st) return st;
    double t0 = ap_now_seconds();
    run_ctx *x = calloc(1, sizeof *x);
    if (!x) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    x->cfg = c;
    x->failed_task = -1;
    int mu_ok = 0;
    x->res = calloc(1, sizeof *x->res);
    if (!x->res) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    if (pthread_mutex_init(&x->mu, NULL) != 0 || pthread_cond_init(&x->cv, NULL) != 0) {
        st = ap_errf(err, AP_ERR_INTERNAL, "replay: cannot create a mutex");
        goto cleanup;
    }
    mu_ok = 1;
    ap_replay_result *r = x->res;
    r->config = *c;
    /* Names first: they need no file, so bad ones cost nothing. */
    if ((st = ap_sel_predictor_names(c->predictors, c->predictor_names, c->n_predictors,
                                     r->predictor_names, err))) {
        ap_err_prefix(err, "replay: predictors");
        goto cleanup;
    }
    if ((st = plan_traces(x, err))) goto cleanup;
    if ((st = plan_predictors(x, err))) goto cleanup;
    if ((st = plan_methods(x, err))) goto cleanup;
    if ((st = plan_tasks(x, err))) goto cleanup;
    r->n_layer = x->meta.n_layer;
    r->n_head = x->meta.n_head;
    r->n_head_kv = x->meta.n_head_kv;
    r->head_dim = x->meta.head_dim;
    r->block = x->meta.block_size;
    r->n_full_layers = ap_trace_n_full_layers(&x->meta);
    r->swa_window = ap_trace_sliding_window(&x->meta);
    for (int l = 0; l < x->meta.n_layer && l < AP_REPLAY_MAX_LAYERS; l++)
        r->layer_window[l] = x->meta.layer_window[l];
    r->n_seq = x->n_seqs;
    r->n_budgets = c->n_budgets;
    memcpy(r->budgets, c->budgets, sizeof r->budgets);
    context_stats(x, r);
    r->incremental = c->incremental && c->n_predictors > 0;
    x->accs = calloc((size_t)(x->n_tasks > 0 ? x->n_tasks : 1), sizeof *x->accs);
    if (!x->accs) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    /* Workers call BLAS themselves (stack-notes 9): one BLAS thread each. */
    if (x->n_tasks > 0) openblas_set_num_threads(1);
    if ((st = run_pool(x, err))) goto cleanup;
    if ((st = merge_results(x, err))) goto cleanup;
    r->seconds = ap_now_seconds() - t0;
    *out = r;
    x->res = NULL;
cleanup:
    if (x->accs)
        for (int i = 0; i < x->n_tasks; i++) acc_free(&x->accs[i]);
    free(x->accs);
    free(x->tasks);
    free(x->seqs);
    for (int f = 0; f < AP_REPLAY_MAX_TRACES; f++)
        if (x->traces[f]) ap_trace_close(x->traces[f]);
    for (int p = 0; p < AP_REPLAY_MAX_PREDICTORS; p++) ap_runtime_free(x->rts[p]);
    if (mu_ok) {
        pthread_mutex_destroy(&x->mu);
        pthread_cond_destroy(&x->cv);
    }
    ap_replay_result_free(x->res);
    free(x);
    return st;
}

/* ------------------------------------------------------- paired intervals */

int ap_replay_paired_diff(const ap_replay_result *r, int m, int ref, int b, double *diff,
                          double *lo, double *hi) {
    *diff = *lo = *hi = NAN;
    if (!r || m < 0 || ref < 0 || m >= r->n_methods || ref >= r->n_methods || b < 0 ||
        b >= r->n_budgets)
        return 0;
    const ap_replay_cell *cm = ap_replay_cell_at(r, m, b), *cr = ap_replay_cell_at(r, ref, b);
    if (!cm->seq_n || !cr->seq_n) return 0;
    const int n = r->n_seq;
    double *d = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    double *w = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    int k = 0;
    if (!d || !w) goto cleanup;
    /* Per sequence: the sum of paired differences and the pairs counted (both
     * methods count the same (step, head) pairs of a sequence). */
    for (int i = 0; i < n; i++) {
        if (cm->seq_n[i] <= 0 || cr->seq_n[i] != cm->seq_n[i]) continue;
        d[k] = cm->seq_recovery_sum[i] - cr->seq_recovery_sum[i];
        w[k] = (double)cm->seq_n[i];
        k++;
    }
    /* Pooled over (step, head) pairs like the cells' means: a ratio of sums,
     * resampled by whole sequences. */
    uint64_t seed = 0xD1FFB007ull ^ ((uint64_t)m << 32) ^ ((uint64_t)ref << 16) ^ (uint64_t)b;
    ap_err e = {0};
    if (ap_boot_ci95(d, w, k, seed, diff, lo, hi, &e)) k = 0;
cleanup:
    free(d);
    free(w);
    return k;
}
