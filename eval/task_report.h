/* Aggregates of a task-suite result (eval/tasks.h), shared by the reports
 * (eval/task_report.c) and the CLI's summary table so they can never
 * disagree about a number. Definitions: docs/eval-tasks.md. */
#ifndef AP_TASK_REPORT_H
#define AP_TASK_REPORT_H

#include "eval/tasks.h"

/* One (method, budget) over a group of samples. Means are over the group's
 * samples; NaN when there is nothing to average (an empty group, a recovery
 * never measured), so reports print null / n/a rather than a fake 0. */
typedef struct {
    int n;                      /* samples in the group */
    double score;               /* mean task score, 0..1 */
    double full_score;          /* mean full-KV score over the same samples */
    double score_rel_full;      /* score / full_score; NaN when full_score is 0 */
    double agreement, kl;       /* means */
    double same;                /* fraction of samples whose output equals full KV's */
    double tokens_per_s;        /* total generated tokens / total decode seconds */
    double select_ms_per_token; /* total selection ms / total generated tokens */
    double resident_kv_bytes, full_kv_bytes, cold_kv_bytes; /* means */
    double compression;         /* mean full / mean resident (a ratio of means) */
    double budget_ratio;        /* mean context (full KV in tokens) / budget; NaN for full KV */
    double recovery;            /* mean over the samples where it was measured */
    int n_recovery;             /* how many those were */
    double fetch_kv_bytes;      /* mean per decode step: what a cold store would ship */
    double score_ms_per_token;  /* total scoring work (predictor CNN...) / generated tokens */
    /* Share of the scoring work hidden by cross-token prefetch: 1 - total
     * wait / total scoring time over runs that prefetched; NaN when none did. */
    double prefetch_hidden;
} ap_tasks_cell;

/* Which samples an aggregate is taken over. */
typedef struct {
    const char *task, *bucket; /* NULL: any */
    /* 1: leave out the samples of every (task, bucket) failed at full KV
     * (ap_tasks_failed_at_full): the "headline" set. */
    int exclude_failed;
} ap_tasks_subset;

/* Aggregate method m at budget index b over the samples of task and bucket
 * (NULL: any). Full KV (m = 0) is the same run at every budget; b is then
 * ignored. m and b must be in range. */
void ap_tasks_cell_of(const ap_tasks_result *r, const char *task, const char *bucket, int m, int b,
                      ap_tasks_cell *out);
/* The same over any subset (NULL: every sample). */
void ap_tasks_cell_in(const ap_tasks_result *r, const ap_tasks_subset *sub, int m, int b,
                      ap_tasks_cell *out);

/* The failed-task rule, defined here only: a (task, bucket) is failed at full
 * KV when its samples' mean full-KV score is below this (scores 0..1). There
 * the model is wrong with the whole cache, so a method's score measures
 * nothing about the cache; the headline means leave such cells out. */
#define AP_TASKS_FAILED_FULL_SCORE 0.5
/* 1 when (task, bucket) has samples and fails the rule above. */
int ap_tasks_failed_at_full(const ap_tasks_result *r, const char *task, const char *bucket);

/* Per-sample measures the intervals are taken of. */
typedef enum { AP_TASKS_SCORE, AP_TASKS_AGREEMENT, AP_TASKS_KL } ap_tasks_metric;
#define AP_TASKS_N_METRICS 3
/* "score", "agreement", "kl": the JSON keys of the metric. */
const char *ap_tasks_metric_name(ap_tasks_metric k);

/* Seed of every task-report bootstrap. One seed for all cells: a cell's
 * interval depends only on its per-sample values, so two methods with the
 * same results get the same interval whatever their names or order. */
#define AP_TASKS_BOOT_SEED 0x7A5C5EEDull

typedef struct {
    int n;         /* samples used: those of the subset with finite values */
    double mean;   /* NaN when n = 0 */
    double lo, hi; /* 95% interval; = mean when n = 1; NaN when n = 0 */
} ap_tasks_ci;

/* Mean over the subset's samples (NULL: all) of `metric` of method m at
 * budget index b, minus that of method ref on the same sample and budget
 * (ref < 0: nothing subtracted), with a 95% percentile bootstrap interval:
 * AP_BOOT_RESAMPLES resamples of the samples with replacement, seeded with
 * AP_TASKS_BOOT_SEED (eval/report_util.h). A difference resamples samples
 * and keeps each sample's pair. Full KV ignores b. Errors: AP_ERR_ARG for m,
 * ref or b out of range, AP_ERR_NOMEM. */
ap_status ap_tasks_interval(const ap_tasks_result *r, const ap_tasks_subset *sub, int m, int ref,
                            int b, ap_tasks_metric metric, ap_tasks_ci *out, ap_err *err);

/* For a difference (method minus reference): "better" or "worse" when its
 * interval excludes zero over at least 2 samples (for KL lower is better),
 * else NULL: these samples cannot tell the two apart. The only rule by
 * which the reports mark a result. */
const char *ap_tasks_diff_verdict(ap_tasks_metric metric, const ap_tasks_ci *d);

/* "full" for full KV, else ap_sel_kind_name of the method's kind. */
const char *ap_tasks_kind_name(const ap_task_method *m);

#endif
