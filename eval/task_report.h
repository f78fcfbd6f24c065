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
    double recovery;            /* mean over the samples where it was measured */
    int n_recovery;             /* how many those were */
    double fetch_kv_bytes;      /* mean per decode step: what a cold store would ship */
    double score_ms_per_token;  /* total scoring work (predictor CNN...) / generated tokens */
    /* Share of the scoring work hidden by cross-token prefetch: 1 - total
     * wait / total scoring time over runs that prefetched; NaN when none did. */
    double prefetch_hidden;
} ap_tasks_cell;

/* Aggregate method m at budget index b over the samples of task and bucket
 * (NULL: any). Full KV (m = 0) is the same run at every budget; b is then
 * ignored. m and b must be in range. */
void ap_tasks_cell_of(const ap_tasks_result *r, const char *task, const char *bucket, int m, int b,
                      ap_tasks_cell *out);

/* "full" for full KV, else ap_sel_kind_name of the method's kind. */
const char *ap_tasks_kind_name(const ap_task_method *m);

#endif
