/* Token-selection policies replayed from traces (issue 4; semantics in
 * docs/eval.md). One interface, a small vtable, and one module per policy in
 * eval/selectors.c; the replay core (eval/replay.c) owns what is common to
 * all of them: the candidate blocks and k of each step, the per-KV-head
 * combination of scores (kv_mode), the eviction bookkeeping (an eviction
 * method's dropped blocks are masked to -INFINITY before it ranks) and the
 * metrics. A selector only scores candidates and, if it has state that
 * depends on what it kept, learns what it kept.
 *
 * Life of a state: created for one (sequence, layer) with all heads, then
 * for each decode step t = 0, 1, ... that is not a bypass: score(), then
 * observe() with the kept set (stateful selectors only); bypass steps (fewer
 * than min_candidates candidates: everything kept) call observe() only.
 * Stateful selectors get one state per budget, since their history depends on
 * what was kept at that budget; stateless ones one state for all budgets.
 *
 * Ownership: a state borrows the ap_sel_data and ap_sel_params it was created
 * with (and the runtime inside them); both must outlive it. States are used
 * from one thread at a time; different states may run in parallel. */
#ifndef AP_SELECTORS_H
#define AP_SELECTORS_H

#include <stdint.h>

#include "common/par.h"
#include "common/status.h"
#include "eval/replay.h"
#include "train/runtime.h"

/* What a selector needs from the trace or the command line. */
enum {
    AP_SEL_NEEDS_QUERY = 1,     /* query + key_min/key_max (capture without --no-quest) */
    AP_SEL_NEEDS_COLSUM = 2,    /* prefill_colsum (capture without --no-colsum) */
    AP_SEL_NEEDS_PREDICTOR = 4, /* an exported predictor (--predictor) */
    /* Not a data need: the method computes the dense attention row at every
     * decode step, so it saves no attention work and is reported as a
     * reference, never as the best heuristic. */
    AP_SEL_DENSE_EVERY_STEP = 8
};

/* One (sequence, layer) as the replay loaded it. Rows with NaN/Inf were
 * replaced by zeros before any selector sees them. Recorded step s < n_pre is
 * the prefill query at position n_prompt - n_pre + s; decode step t is
 * recorded step n_pre + t, position n_prompt + t. */
typedef struct {
    int layer;
    int n_head, n_head_kv, head_dim, block;
    int n_prompt, n_pre;
    int n_steps;                        /* decode steps replayed */
    int n_blocks;                       /* NB of the sequence */
    const float *block_max, *block_sum; /* [n_pre + n_steps][n_head][NB] */
    const float *query;                 /* [n_pre + n_steps][n_head][head_dim] or NULL */
    const float *key_min, *key_max;     /* [n_head_kv][NB][head_dim] or NULL */
    const float *prefill_colsum;        /* [n_head][n_prompt] or NULL */
} ap_sel_data;

typedef struct {
    int sink_blocks;
    int local_blocks;     /* local window in blocks: the history width cut (method.md 4.2) */
    int local_tokens;     /* the always-kept local window of the current sequence */
    int calib;            /* history: dense row after decode step t when (t+1) % calib == 0; 0 = never */
    ap_kv_mode kv_mode;   /* eviction states are per KV head unless AP_KV_PER_QHEAD */
    int snapkv_window;    /* prefill rows voting */
    int snapkv_pool;      /* odd; max-pooling of the vote over blocks, 1 = none */
    ap_runtime *rt;       /* predictor methods (read only); its predictor runs with 1 thread */
    int incremental;      /* predictor: incremental evaluation instead of full recomputation */
    /* Cheaper predictor evaluation (issue 14; docs/eval.md, "Predictor
     * cost options"); the defaults (1, 0) are the method as published. */
    int pred_stride;      /* the CNN runs at every pred_stride-th scored step (0 or 1: every
                           * step); steps between reuse its last scores (query fusion still
                           * per step) */
    int pred_per_kv;      /* 1: one CNN per KV head on the mean of its query heads' history
                           * rows, its scores shared by the group */
} ap_sel_params;

/* Geometry of one decode step (docs/eval.md, "Blocks of a step"). */
typedef struct {
    int t;        /* decode step, 0-based */
    int s;        /* recorded step of the data: n_pre + t */
    int q;        /* query position n_prompt + t */
    int c0, c1;   /* candidate blocks [c0, c1), from the history width ceil(q / block) */
    int W;        /* c1 - c0 (>= 0) */
    int lb0;      /* first block touching the local window; blocks [lb0, n_valid) always kept */
    int n_valid;  /* q / block + 1: blocks holding keys <= q */
    int k;        /* blocks chosen among the candidates */
    /* Threads score and finish may split this step's work over (live
     * decoding lends the engine's; common/par.h). NULL: one thread. The
     * split never changes a score. */
    const ap_par *par;
} ap_sel_step;

/* Predictor cost accumulated by a state. */
typedef struct {
    long long n;       /* (step, query head) scores given */
    double naive_macs; /* summed multiply-adds of the full CNN on each (step, query head) window */
    double run_macs;   /* summed multiply-adds actually spent */
    double seconds;    /* summed CPU time of the predictor calls (one thread each) */
} ap_sel_cost;

typedef struct {
    const char *name; /* builtin name; predictor methods get their label */
    const char *label;
    ap_sel_kind kind;
    unsigned needs;   /* AP_SEL_NEEDS_* */
    int stateful;     /* 1: one state per budget and observe() is called */
    ap_status (*create)(const ap_sel_data *d, const ap_sel_params *p, void **state, ap_err *err);
    void (*destroy)(void *state); /* NULL is a no-op */
    /* scores [n_head][st->W] for the candidates c0.. c1-1 of every head; a
     * higher score is kept first; -INFINITY = not available. */
    ap_status (*score)(void *state, const ap_sel_step *st, float *scores, ap_err *err);
    /* kept [n_head][NB]: 1 for every block the step attended (sink, local,
     * chosen); kept_mass [n_head]: the true row's block_sum over it (0 for a
     * skipped non-finite row). May be NULL for stateless selectors. */
    ap_status (*observe)(void *state, const ap_sel_step *st, const uint8_t *kept,
                         const double *kept_mass, ap_err *err);
    /* Predictor cost so far; NULL for non-predictor selectors. */
    void (*cost)(const void *state, ap_sel_cost *c);
    /* Query-time part of scoring, after score(): reads the step's query,
     * which a score() run a step ahead (live prefetch) cannot have. Called on
     * the selecting thread for every scored step; NULL = nothing to do. The
     * query-fusion predictor adds its z-scored query bound here. */
    ap_status (*finish)(void *state, const ap_sel_step *st, float *scores, ap_err *err);
} ap_selector;

/* Builtin selectors in report order (oracle, streaming, h2o, snapkv, quest,
 * last_step, last_step_dense); NULL past the end. */
const ap_selector *ap_selector_builtin(int i);
/* By name; NULL when unknown. */
const ap_selector *ap_selector_find(const char *name);
/* The CNN predictor method; the caller sets calib 0 for the _nocal variant. */
const ap_selector *ap_selector_predictor(void);

/* The label suffix of a predictor run with cost options: ", stride S",
 * ", per KV head", both, or "" for the method as published. */
void ap_sel_predictor_variant(int pred_stride, int pred_per_kv, char *buf, size_t n);

/* Predictor methods (docs/eval.md, "Predictors"). Each exported predictor
 * runs as its own method under a name: names[p] when given (not NULL), else
 * "attnpred" for p = 0 and "attnpred<p+1>" after it, so a lone bare path
 * keeps the historical name. A name has 1..AP_REPLAY_PRED_NAME_MAX characters
 * of [A-Za-z0-9_.+-], is no built-in method's name (those of
 * ap_selector_find, and "full", the live evaluation's reference), does not
 * end in "_nocal" (the suffix of each predictor's no-calibration variant)
 * and is given once. Checks n (0..AP_REPLAY_MAX_PREDICTORS), the paths
 * (non-empty) and the names and writes the resolved names to out; an
 * AP_ERR_ARG message names the offending name or path. Reads no file, so
 * callers can refuse bad input before any work. */
ap_status ap_sel_predictor_names(const char *const *paths, const char *const *names, int n,
                                 char (*out)[AP_REPLAY_PRED_NAME_MAX + 1], ap_err *err);
/* 1 when `name` selects predictor `pred_name` (nocal: its _nocal variant):
 * the predictor's own method name, or "attnpred" / "attnpred_nocal", which
 * stand for every predictor. */
int ap_sel_predictor_selected(const char *name, const char *pred_name, int nocal);

/* Loads the exported predictor at path for a run over `block`-token blocks
 * and n_layer layers (need_layer[l] == 0: layer l is not evaluated, may be
 * NULL for all; n_layer 0 checks no layer, for a caller that checks them
 * with ap_sel_predictor_check_layers once it knows the model), whose inputs
 * hold at most max_history rows before the first decode step (0 = not
 * checked). The run is described by `run` ("trace
 * T.h5", "the eval") in the messages, which name the file and both values of
 * a mismatch. The predictor is set to one thread (callers parallelise over
 * tasks or prefetch workers). */
ap_status ap_sel_predictor_load(const char *path, int block, int max_history, int n_layer,
                                const uint8_t *need_layer, const char *run, ap_runtime **out,
                                ap_err *err);

/* AP_ERR_ARG naming path and the layer when a layer l < n_layer with
 * need_layer[l] != 0 (NULL: every layer) has no model in rt. */
ap_status ap_sel_predictor_check_layers(ap_runtime *rt, const char *path, int n_layer,
                                        const uint8_t *need_layer, ap_err *err);

/* The geometry of decode step t (query position n_prompt + t, recorded step
 * n_pre + t) for block size `block` and the params' sink/local cut; k = 0.
 * Shared by the replay and live decoding so both see the same steps. */
void ap_sel_step_at(const ap_sel_params *p, int block, int n_prompt, int n_pre, int t,
                    ap_sel_step *sp);

/* The k candidates (candidate-relative indices) each query head keeps,
 * given scores [nh][W] (higher first; -INFINITY = not available) and the KV
 * mode: chosen[h*W .. h*W + k). Work buffers: order [nh][W], gsum [W], mark
 * [W]. Shared by the replay and live decoding (eval/live.c). */
void ap_sel_choose(ap_kv_mode mode, int nh, int n_head_kv, const float *scores, int W, int k,
                   int *order, float *gsum, int *mark, int *chosen);
/* The same for the query heads of KV head g only (ap_sel_choose is this for
 * every g); gsum and mark are this call's own [W], so calls for different g
 * may run at once. */
void ap_sel_choose_kv(ap_kv_mode mode, int nh, int n_head_kv, int g, const float *scores, int W,
                      int k, int *order, float *gsum, int *mark, int *chosen);

/* Naive multiply-adds of the CNN for one head: (9*c1 + 9*c1*c2)*H*W + c2*W
 * (4,752*H*W + 32*W for the defaults; biases not counted). */
double ap_sel_naive_macs(const ap_pred_config *c, int H, int W);

#endif
