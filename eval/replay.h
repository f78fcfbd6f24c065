/* Replay decoding from traces (issue 4; semantics in docs/eval.md).
 *
 * For every decode step of every (sequence, layer, head) in the traces, each
 * selector chooses which key blocks the step would attend to at a budget of
 * B tokens = sink + local + k blocks of `block` tokens, and the replay scores
 * the choice against the true (dense) attention row stored in the trace.
 * No model is needed. Everything is block-granular (the trace stores block
 * views), exactly as train/metrics.h defines recovery and hit rate.
 *
 * Selectors (one small module each, eval/selectors.h):
 *   oracle          top-k of the true row (upper bound)              bound
 *   streaming       StreamingLLM: sink + the most recent blocks        eviction
 *   h2o             accumulated attention of its own kept set          eviction
 *   snapkv          prefill observation-window vote, fixed after prefill eviction
 *   quest           per-page key bounds against the current query      retrieval
 *   last_step       newest history row (sparse/calibrated, as attnpred sees it) retrieval
 *   last_step_dense previous step's dense row (needs dense attention every step) retrieval
 *   attnpred        an exported predictor over the sparse/calibrated history retrieval
 *   attnpred_nocal  the same without calibration rows                  retrieval
 *
 * Ownership: the config borrows its strings; ap_replay_run returns a result
 * the caller frees with ap_replay_result_free (NULL is a no-op). */
#ifndef AP_REPLAY_H
#define AP_REPLAY_H

#include <stdint.h>

#include "common/status.h"
#include "train/metrics.h"

#define AP_REPLAY_MAX_TRACES 64
#define AP_REPLAY_MAX_PREDICTORS 4
#define AP_REPLAY_PRED_NAME_MAX 40 /* characters of a predictor's method name */
#define AP_REPLAY_MAX_METHODS 24
#define AP_REPLAY_MAX_BUDGETS AP_METRICS_MAX_BUDGETS
#define AP_REPLAY_MAX_LAYERS 256

typedef enum {
    AP_SEL_BOUND = 0,     /* oracle: not implementable, an upper bound */
    AP_SEL_RETRIEVAL = 1, /* may pick any block each step (full cache kept somewhere) */
    AP_SEL_EVICTION = 2   /* never brings back a block it dropped */
} ap_sel_kind;

const char *ap_sel_kind_name(ap_sel_kind k); /* "bound", "retrieval", "eviction" */

typedef enum {
    AP_KV_PER_QHEAD = 0,  /* the method: each query head selects on its own */
    AP_KV_SUM = 1,        /* per KV head: scores summed over the group, one set of k blocks */
    AP_KV_UNION = 2       /* per KV head: round-robin union of the group's rankings, k blocks */
} ap_kv_mode;

/* done of total (decode step, layer) units, and their estimated cost
 * (each step weighs its context: ap_work_run), for an honest ETA. */
typedef void (*ap_replay_progress_fn)(void *user, long long done, long long total,
                                      double work_done, double work_total);

/* One (method, budget, decode step, query head) as the replay scored it, for
 * tests and diagnostics (ap_replay_config.on_step). Pointers are valid during
 * the call only. */
typedef struct {
    int trace, seq;       /* trace index, sequence index in that trace */
    int layer, head, t;   /* decode step t, query position n_prompt + t */
    int method, budget;   /* indices into the result's methods / budgets */
    int bypass;           /* fewer than min_candidates candidates: everything kept */
    int c0, c1;           /* candidate blocks [c0, c1) */
    int k;                /* blocks chosen (all candidates in a bypass) */
    const int *chosen;    /* [k] absolute block indices, in the selector's order */
    double recovery, oracle, hit_rate;
    /* [c1 - c0] this head's scores of the candidates (after eviction masking,
     * before a KV mode combines the group); NULL in a bypass. */
    const float *scores;
} ap_replay_step_info;

typedef void (*ap_replay_step_fn)(void *user, const ap_replay_step_info *info);

typedef struct {
    const char *traces[AP_REPLAY_MAX_TRACES];
    int n_traces;
    /* Exported predictors (safetensors from `attnpred export` or
     * scripts/import_pth.py) and their method names (NULL: the default,
     * "attnpred" for the first, "attnpred2", ... after it; the rules are
     * ap_sel_predictor_names'). Each gives methods <name> and <name>_nocal.
     * A predictor's block must be the traces' and its history at most
     * theirs. */
    const char *predictors[AP_REPLAY_MAX_PREDICTORS];
    const char *predictor_names[AP_REPLAY_MAX_PREDICTORS];
    int n_predictors;
    /* Method names to run (see above; "attnpred" / "attnpred_nocal" stand
     * for every predictor, a predictor's name for that one); n_methods = 0:
     * all that the inputs allow. */
    const char *methods[AP_REPLAY_MAX_METHODS];
    int n_methods;
    int budgets[AP_REPLAY_MAX_BUDGETS]; /* tokens; default 256,512,1024,2048 */
    int n_budgets;
    int sink_tokens;      /* 64; a multiple of the block size */
    int local_tokens;     /* 64 */
    int calib;            /* M: dense row every M decode steps, first at step M (5); 0 = never */
    int min_candidates;   /* 3: fewer candidate blocks -> predictor bypassed (all-ones scores) */
    ap_kv_mode kv_mode;
    int snapkv_window;    /* observation window, prefill rows (32) */
    int snapkv_pool;      /* vote smoothing, blocks, odd (1 = none; SnapKV's 7 tokens < 1 block) */
    int n_dense_layers;   /* layers kept dense, excluded from the metrics ... */
    int dense_layers[AP_REPLAY_MAX_LAYERS];
    int max_seqs;         /* 0 = all; else the first N sequences of each trace */
    int max_steps;        /* 0 = all decode steps; else the first N of each sequence */
    int threads;          /* worker threads over layers (default 2) */
    int incremental;      /* 1: incremental predictor (default once exact), 0: full recomputation */
    ap_replay_progress_fn progress; /* may be NULL; called from the calling thread */
    void *progress_user;
    /* Added after the first version. */
    /* Called for every counted (method, budget, step, head), rows skipped for
     * NaN/Inf excepted; NULL = none. Runs on the worker threads, concurrently
     * when threads > 1 (use threads = 1 for calls in task order). */
    ap_replay_step_fn on_step;
    void *on_step_user;
    /* Added with issue 14: the predictor's cost options (ap_sel_params). */
    int pred_stride;      /* 1 (default): the CNN every step; s: every s-th step */
    int pred_per_kv;      /* 0 (default): one CNN per query head; 1: per KV head */
} ap_replay_config;

void ap_replay_config_default(ap_replay_config *c);

typedef struct {
    char name[48];        /* e.g. "h2o", "attnpred", "attnpred_nocal", a predictor's name */
    char label[96];       /* human-readable, e.g. "AttentionPredictor (calib 5)" */
    ap_sel_kind kind;
    int is_predictor;     /* 1 for CNN predictor methods */
    char source[512];     /* predictor file for predictor methods, else "" */
    /* 1: computes the dense row every step (last_step_dense): a reference,
     * excluded from "best heuristic". */
    int dense_every_step;
} ap_replay_method;

typedef struct {
    ap_meanci recovery;   /* attention mass inside the kept set */
    ap_meanci hit_rate;   /* |kept candidates & oracle's| / k */
    ap_meanci ratio;      /* recovery / oracle recovery, per (step, head) */
    long long n;          /* (decode step, head) pairs counted */
    long long n_bypass;   /* of which: fewer than min_candidates (all methods keep everything) */
    /* Mean recovery per layer x head, [n_layer][n_head] (NaN where n = 0). Owned by the result. */
    double *layer_head_recovery;
    /* Per replayed sequence (the result's n_seq, plan order): recovery summed
     * over its counted (step, head) pairs and their number. The unit of the
     * paired intervals (ap_replay_paired_diff): steps of one sequence are not
     * independent samples. Owned by the result. */
    double *seq_recovery_sum;
    long long *seq_n;
} ap_replay_cell;

typedef struct {
    ap_replay_config config;           /* copy (pointers still borrowed) */
    int n_layer, n_head, n_head_kv, head_dim, block;
    int n_seq;                         /* sequences replayed */
    long long n_decode_steps;          /* summed over sequences (not x layers/heads) */
    double mean_context, max_context;  /* tokens at the decode steps */
    int n_methods;
    ap_replay_method methods[AP_REPLAY_MAX_METHODS];
    int n_budgets;
    int budgets[AP_REPLAY_MAX_BUDGETS];
    ap_replay_cell *cells;             /* [n_methods][n_budgets], owned */
    /* Predictor cost per (decode step, head), per predictor method index
     * (NaN for non-predictor methods): multiply-adds of the naive CNN and of
     * what was run, and the CPU time of the worker thread that ran it (wall
 * time on a shared machine mostly measures other processes). */
    double pred_naive_macs[AP_REPLAY_MAX_METHODS];
    double pred_run_macs[AP_REPLAY_MAX_METHODS];
    double pred_us_per_step_head[AP_REPLAY_MAX_METHODS];
    long long n_skipped_nonfinite;     /* (step, head) rows skipped for NaN/Inf */
    double seconds;                    /* wall time of the replay */
    /* Added after the first version. */
    /* Methods not run because the inputs lack what they need and they were
     * not asked for by name (e.g. quest on a trace captured with --no-quest,
     * attnpred without a predictor): name and why. */
    int n_dropped;
    char dropped[AP_REPLAY_MAX_METHODS][48];
    char dropped_reason[AP_REPLAY_MAX_METHODS][160];
    int incremental;                   /* 1 if the predictor ran incrementally */
    /* The method name of each config.predictors[p], defaults resolved. */
    char predictor_names[AP_REPLAY_MAX_PREDICTORS][AP_REPLAY_PRED_NAME_MAX + 1];
    /* Per budget: the tokens the budget keeps at a decode step, averaged
     * over the decode steps: sink + local + k blocks, or the whole context
     * when every candidate block is kept (a bypass, or a budget at or above
     * the context). The reports' compression is mean_context / mean_kept
     * (docs/eval-report.md). */
    double mean_kept[AP_REPLAY_MAX_BUDGETS];
    /* Added with issue 13 (mixed attention). Methods select, and the cells
     * count, only full-attention layers (less config.dense_layers): a
     * sliding-window layer's KV is bounded by its window already.
     * layer_window[l] is the trace's (0 = full, w > 0 = window of w keys). */
    int n_full_layers;                 /* of n_layer */
    int swa_window;                    /* the sliding layers' window; 0 none, -1 they differ */
    int layer_window[AP_REPLAY_MAX_LAYERS];
} ap_replay_result;

/* Runs every method at every budget. Errors name the trace or predictor file;
 * a trace missing what a selected method needs (query/key bounds for quest,
 * prefill_colsum for h2o) is an error naming the capture option that writes
 * it, unless the method was not asked for explicitly (then it is not run and
 * is listed with the reason in the result's dropped[]). */
ap_status ap_replay_run(const ap_replay_config *c, ap_replay_result **out, ap_err *err);
void ap_replay_result_free(ap_replay_result *r); /* NULL is a no-op */

/* Cell of (method m, budget b). */
static inline ap_replay_cell *ap_replay_cell_at(const ap_replay_result *r, int m, int b) {
    return &r->cells[(long)m * r->n_budgets + b];
}

/* Difference of recovery, method m minus method ref, at budget b, pooled
 * over (step, head) pairs like the cells' means, with a 95% interval from a
 * paired bootstrap over sequences (2,000 resamples of whole sequences with
 * replacement, seeded: the same result gives the same interval). Sequences
 * where either method counted nothing are left out. *lo = *hi = *diff when
 * only one sequence was replayed. Returns the number of sequences used. */
int ap_replay_paired_diff(const ap_replay_result *r, int m, int ref, int b, double *diff,
                          double *lo, double *hi);

/* Reports (eval/report.c). All write under a temporary name and rename.
 * JSON keys are documented in docs/eval-report.md; `results` holds one record
 * per (method, budget) with method, kind, budget, compression (mean context /
 * mean kept tokens), budget_ratio (mean context / budget), recovery,
 * recovery_ci95, hit_rate, hit_rate_ci95, ratio, n. */
ap_status ap_replay_write_json(const ap_replay_result *r, const char *path, ap_err *err);
/* Markdown: a paper-style table (rows = methods with their kind, columns =
 * budgets, cells = recovery %, hit rate %), then predictor cost. */
ap_status ap_replay_write_md(const ap_replay_result *r, const char *path, ap_err *err);
/* PNGs in dir (created if missing): recovery_vs_budget.png (one line per
 * method) and gain_heatmap_B<budget>.png (layer x head: best predictor's
 * recovery minus the best non-oracle heuristic's at that budget). */
ap_status ap_replay_write_png(const ap_replay_result *r, const char *dir, ap_err *err);

#endif
