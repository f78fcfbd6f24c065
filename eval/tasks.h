/* Live compressed-KV decoding on the task suite (issue 5; docs/eval-tasks.md).
 *
 * For each sample of a task file (data/tasks/{quick,full}.jsonl, docs/tasks.md): the
 * model input (chat template + answer prefix) is prefilled once with full
 * attention; then, from that shared prefill, every (method, budget) decodes
 * greedily with the method's kept set applied inside attention (eval/live.h:
 * the replay's selectors driven by the live model), and full KV decodes as
 * the reference. Each run is scored with the task's LongBench metric and
 * compared with the full-KV run:
 *   agreement  fraction of the full-KV output tokens that a teacher-forced
 *              compressed decode (fed the full-KV tokens) predicts as its
 *              greedy choice;
 *   kl         mean KL(full || method) of the next-token distributions along
 *              that teacher-forced trajectory, nats per token;
 *   same       1 when the free-running output equals the full-KV output.
 * The teacher-forced pass is skipped when the free-running output equals the
 * full-KV one (the trajectories then coincide and its numbers come from the
 * free run).
 *
 * KV memory. The engine keeps the whole cache in one array, the cold store
 * of every method. With config.hot_pool (default) each method's decode
 * attends from a hot pool of page slots that holds exactly each step's kept
 * blocks (eval/live.h), and resident_kv_bytes / fetch_kv_bytes are measured
 * on it (kv_measured = 1): mean over decode steps of the slots in use x
 * block x head_dim x 2 (K and V) x the cache type's bytes (config.kv_type;
 * 4 for f32, 2 for f16; whole slots, so a partial last
 * block counts in full), and mean per step (from the second) of the keys
 * copied from the cold store into slots. Without it they are accounted from
 * the kept sets: for each layer and KV head, the union of its query heads'
 * kept tokens x head_dim x 2 x the same bytes. Eviction methods never need the rest
 * again; retrieval methods (attnpred, Quest, oracle) keep it in a cold store
 * (cold_kv_bytes) and fetch the selected blocks each step.
 *
 * Ownership: the config borrows its strings; the result is freed with
 * ap_tasks_result_free (NULL is a no-op). */
#ifndef AP_TASKS_H
#define AP_TASKS_H

#include "capture/tokenizer.h"
#include "common/status.h"
#include "eval/replay.h"
#include "kernels/qmatvec.h"

/* Seven builtins and every predictor with its _nocal variant. */
#define AP_TASKS_MAX_METHODS (7 + 2 * AP_REPLAY_MAX_PREDICTORS)
#define AP_TASKS_MAX_FILTER 32

/* done of total runs, their estimated cost (each run's tokens weighted by
 * position: ap_work_run) for an honest ETA, and the run starting now. */
typedef void (*ap_tasks_progress_fn)(void *user, double done, double total, double work_done,
                                     double work_total, const char *what);

typedef struct {
    const char *model;       /* GGUF path */
    const char *tasks_file;  /* JSONL task file (data/tasks/quick.jsonl) */
    /* Exported predictors (optional) and their method names (NULL: the
     * default, "attnpred", "attnpred2", ... by position; the rules are
     * ap_sel_predictor_names'). Each is loaded once and runs as its own
     * method <name> (and <name>_nocal when asked for), with its own live
     * state and prefetch worker. A predictor's block must be config.block. */
    const char *predictors[AP_REPLAY_MAX_PREDICTORS];
    const char *predictor_names[AP_REPLAY_MAX_PREDICTORS];
    int n_predictors;
    /* Methods besides full KV (always run): oracle, streaming, h2o, snapkv,
     * quest, last_step, last_step_dense, a predictor's name or <name>_nocal,
     * and attnpred / attnpred_nocal for every predictor. n_methods = 0: the
     * default set, every predictor (without _nocal) included. */
    const char *methods[AP_TASKS_MAX_METHODS];
    int n_methods;
    int budgets[AP_REPLAY_MAX_BUDGETS]; /* tokens; default 256,512,1024,2048 */
    int n_budgets;
    /* Only these task names / sample ids (n = 0: all). */
    const char *only_tasks[AP_TASKS_MAX_FILTER];
    int n_only_tasks;
    int max_samples;         /* 0 = all; else the first N after filtering */
    int sink_tokens, local_tokens, block; /* 64, 64, 16 */
    int calib;               /* dense row every M decode steps for history methods (5) */
    int min_candidates;      /* 3 */
    ap_kv_mode kv_mode;      /* AP_KV_PER_QHEAD (the method) */
    int snapkv_window, snapkv_pool; /* 32, 1 */
    int teacher_forced;      /* 1: agreement and KL (default); 0: free-running only */
    int threads;             /* engine threads (default 2) */
    int max_new_tokens;      /* 0 = each sample's own */
    /* Cross-token prefetch of predictor scores (eval/live.h): 1 on, 0 off,
     * -1 (default) auto: on for GPU runs and where the machine has more
     * CPUs than `threads` (the worker then has a core of its own), off
     * where the engine's threads fill the machine (the predictor's work
     * then runs on them: ap_kv_step.par). The result's config holds the
     * resolved value. Choices are the same either way. */
    int prefetch;
    int hot_pool;            /* 1 (default): attend from a measured hot pool (eval/live.h) */
    /* Added with the CUDA engine (capture/model_cuda.h). device 1: decode on
     * the GPU; the CPU hot pool does not apply there (hot_pool ignored).
     * kv_offload 1 (GPU only): the cache lives in pinned host memory and each
     * method attends from the engine's device pool of its kept blocks, with
     * cross-token prefetch when config.prefetch: resident and fetched KV are
     * then measured on that pool (kv_measured = 1). */
    int device;              /* 0 CPU (default), 1 CUDA */
    int prefetch_threads;    /* prefetch worker threads (eval/live.h; default 1) */
    int kv_offload;
    ap_tasks_progress_fn progress; /* may be NULL; called from the calling thread */
    void *progress_user;
    /* Added with issue 14: the predictor's cost options (eval/selectors.h). */
    int pred_stride;         /* 1 (default): the CNN every step; s: every s-th step */
    int pred_per_kv;         /* 0 (default): one CNN per query head; 1: per KV head */
    /* The engine's KV cache type (capture/model.h, ap_model_opts.kv_type):
     * AP_KV_F32 (default) or AP_KV_F16 (CPU engine only). KV bytes are
     * reported in this type. */
    ap_kv_type kv_type;
    /* Added for long runs: a per-sample checkpoint (eval/tasks_ckpt.h). NULL:
     * none. With resume, the samples a checkpoint of the same inputs and
     * options already holds are taken from it and not run again; without,
     * a new checkpoint replaces an old one. The caller deletes it once the
     * reports are written. */
    const char *checkpoint;
    int resume;
} ap_tasks_config;

void ap_tasks_config_default(ap_tasks_config *c);

/* One (sample, method, budget) run. */
typedef struct {
    double score;            /* task metric, 0..1 */
    double agreement;        /* see above, 0..1 */
    double kl;               /* nats per token */
    int same;                /* free-running output == full-KV output */
    int n_gen;               /* tokens generated (free-running) */
    double decode_seconds;   /* wall time of the free-running decode */
    double select_seconds;   /* of which: selection (predictor, scoring, ranking) */
    double resident_kv_bytes;/* mean over decode steps, see above */
    double full_kv_bytes;    /* the full cache at the same steps (mean) */
    double cold_kv_bytes;    /* retrieval methods: the cold store (= full); else 0 */
    double recovery;         /* mean dense mass on the kept set over the teacher-forced
                                steps and heads (measured there); NaN when not measured */
    char *output;            /* generated text (owned) */
    /* Added with cross-token prefetch (config.prefetch, predictor methods). */
    double score_seconds;    /* scoring work of the free run (predictor CNN etc.), whoever ran it */
    double prefetch_wait_seconds; /* time the decode blocked on prefetched scores */
    long long prefetched;    /* (step, layer) scored ahead; 0 without prefetch */
    /* Mean per decode step: KV bytes a hot cache backed by a cold store would
     * fetch (blocks kept now but not at the previous step; eval/live.h). */
    double fetch_kv_bytes;
    /* Added with the hot pool (config.hot_pool): 1 when resident_kv_bytes
     * and fetch_kv_bytes are measured on the pool (slots in use x slot
     * bytes, keys copied into slots), 0 when accounted from the kept sets
     * (full KV, --no-hot-pool). */
    int kv_measured;
    double hot_capacity_bytes; /* the pool's allocated slots (K and V); 0 when not measured */
} ap_task_run;

typedef struct {
    char id[96], task[48], category[48], bucket[16], metric[24];
    int n_prompt;            /* tokens of the model input */
    int max_new_tokens;
    double prefill_seconds;
} ap_task_sample;

typedef struct {
    char name[48];           /* "full", "quest", a predictor's name, ... */
    char label[96];
    ap_sel_kind kind;        /* full KV: AP_SEL_BOUND is never used; see is_full */
    int is_full;
} ap_task_method;

typedef struct {
    ap_tasks_config config;  /* copy (strings still borrowed) */
    char model_name[128];
    int n_layer, n_head, n_head_kv, head_dim;
    int n_full_layers, swa_window; /* selection acts in n_full_layers; the rest slide (window) */
    int n_samples;
    ap_task_sample *samples; /* [n_samples], owned */
    int n_methods;           /* methods[0] is full KV */
    ap_task_method methods[AP_TASKS_MAX_METHODS + 1];
    int n_budgets;
    int budgets[AP_REPLAY_MAX_BUDGETS];
    /* runs[(s * n_methods + m) * n_budgets + b]; full KV fills every b with
     * the same run. Owned. */
    ap_task_run *runs;
    int n_dropped;           /* methods not run and why (e.g. attnpred without --predictor) */
    char dropped[AP_TASKS_MAX_METHODS][48];
    char dropped_reason[AP_TASKS_MAX_METHODS][160];
    double seconds;
    /* The method name of each config.predictors[p], defaults resolved. */
    char predictor_names[AP_REPLAY_MAX_PREDICTORS][AP_REPLAY_PRED_NAME_MAX + 1];
} ap_tasks_result;

static inline ap_task_run *ap_tasks_run_at(const ap_tasks_result *r, int s, int m, int b) {
    return &r->runs[((long)s * r->n_methods + m) * r->n_budgets + b];
}

ap_status ap_tasks_run(const ap_tasks_config *c, ap_tasks_result **out, ap_err *err);
void ap_tasks_result_free(ap_tasks_result *r);

/* The task-file reader ap_tasks_run uses, on text in memory (len bytes, need
 * not be NUL-terminated; label names it in errors, "<label>: line N: ..."):
 * one JSON object per non-blank line (docs/tasks.md), nothing after it on
 * the line, no NUL byte; each sample's fields checked and its model input
 * tokenized with tok (n_prompt). Only samples passing c->only_tasks are kept,
 * at most c->max_samples (later lines are not read). On success *out holds
 * *n_out >= 1 records (malloc'd, the caller frees); none is an error. */
ap_status ap_tasks_parse(const ap_tasks_config *c, const ap_tokenizer *tok, const char *data,
                         size_t len, const char *label, ap_task_sample **out, int *n_out,
                         ap_err *err);

/* Reports (eval/task_report.c), written under a temporary name and renamed.
 * JSON: config, model, samples (with every run), and `summary`: per (task,
 * bucket, method, budget) and per (method, budget) over all samples the mean
 * score, score relative to full KV, agreement, KL, tokens/s, selection ms per
 * token, resident KV bytes and compression. Markdown: the summary table
 * (rows method, columns budget) per task and overall. PNGs in dir:
 * score_vs_compression.png (one line per method), agreement_vs_budget.png. */
ap_status ap_tasks_write_json(const ap_tasks_result *r, const char *path, ap_err *err);
ap_status ap_tasks_write_md(const ap_tasks_result *r, const char *path, ap_err *err);
ap_status ap_tasks_write_png(const ap_tasks_result *r, const char *dir, ap_err *err);

#endif
