/* Helpers shared by the replay and task reports (eval/report.c,
 * eval/task_report.c): an allocation-checked cJSON builder, atomic text
 * output, Markdown cells and output path checks. Internal to eval/. */
#ifndef AP_REPORT_UTIL_H
#define AP_REPORT_UTIL_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>

#include "common/status.h"
#include "eval/replay.h"

/* Room for a user path plus ".tmp.<pid>" or a plot file name. */
#define AP_REPORT_PATH_BUF 4352

/* cJSON calls that can fail (allocation) all go through ap_jadd, which
 * records the failure and frees the orphan, so building a tree needs one
 * test of `failed` at the end rather than one per call. */
typedef struct {
    int failed;
} ap_jbuild;

/* Adds item to parent under key (NULL: append to an array); returns item,
 * or NULL (and marks the build failed) when item or parent is NULL or the
 * add fails. */
cJSON *ap_jadd(ap_jbuild *j, cJSON *parent, const char *key, cJSON *item);
/* JSON has no NaN or Inf: they become null. */
cJSON *ap_jnum(double v);
void ap_jadd_num(ap_jbuild *j, cJSON *o, const char *key, double v);
/* NULL becomes null. */
void ap_jadd_str(ap_jbuild *j, cJSON *o, const char *key, const char *s);
void ap_jadd_bool(ap_jbuild *j, cJSON *o, const char *key, int v);

/* "per_qhead", "sum", "union". */
const char *ap_kv_mode_name(ap_kv_mode k);

/* tmp (AP_REPORT_PATH_BUF bytes) = the temporary name for path, or
 * AP_ERR_ARG when the path is too long for it. */
ap_status ap_report_tmp_name(char *tmp, const char *path, ap_err *err);
/* out (AP_REPORT_PATH_BUF bytes) = dir/name, or AP_ERR_ARG when too long. */
ap_status ap_report_plot_path(char *out, const char *dir, const char *name, ap_err *err);
/* Streamed output under the temporary name: open fills tmp
 * (AP_REPORT_PATH_BUF bytes) and *f; close (always call it once f is
 * open) checks every write and the flush, renames tmp to path, and
 * removes tmp on any failure. Errors name path. */
ap_status ap_report_open(const char *path, char *tmp, FILE **f, ap_err *err);
ap_status ap_report_close(FILE *f, const char *tmp, const char *path, ap_err *err);
/* text + '\n' the same way. */
ap_status ap_report_write_text(const char *path, const char *text, ap_err *err);

/* Markdown: a table-safe cell text ('|' escaped, line breaks as spaces), and
 * " | <v>" with `decimals` decimals or " | n/a" for a non-finite value. */
void ap_md_text(FILE *f, const char *s);
void ap_md_num(FILE *f, double v, int decimals);
/* " | 4.6x" (one decimal), or " | n/a": compression and budget ratio cells. */
void ap_md_ratio(FILE *f, double v);
/* A method as "label (`name`)", or "`name`" when it has no other label. */
void ap_md_method(FILE *f, const char *name, const char *label);

/* Which layers a replay selected in (issue 13): full-attention layers not
 * kept dense. Counted from r->layer_window (a result built by hand with it
 * zeroed is all full attention). */
typedef struct {
    int n_layer;     /* M */
    int n_selected;  /* N: full-attention layers not in config.dense_layers */
    int n_sliding;   /* sliding-window layers (never selected in) */
    int n_dense;     /* full-attention layers kept dense */
    int window;      /* the sliding layers' window; 0 none, -1 they differ */
} ap_replay_layers;

void ap_replay_layers_of(const ap_replay_result *r, ap_replay_layers *out);
/* "selection in N of M layers (the others are sliding-window layers, window
 * W)", "selection in all M layers", or with dense layers named too. */
void ap_replay_layers_note(const ap_replay_layers *l, char *buf, size_t n);

/* Resamples of every bootstrap in the reports: enough for the 2.5% and
 * 97.5% percentiles to move by well under their own sampling error. */
#define AP_BOOT_RESAMPLES 2000

/* Ratio-of-sums estimate *est = sum(num) / sum(den) over n units (den NULL:
 * every unit weighs 1, so *est is the mean of num) and its 95% percentile
 * bootstrap interval [*lo, *hi]: AP_BOOT_RESAMPLES resamples of n units
 * with replacement, the unit indices drawn from a splitmix64 stream started
 * at seed, so the same inputs and seed give the same interval. A paired
 * bootstrap passes per-unit differences, which keeps each unit's pair
 * together. n = 1: *lo = *hi = *est; n <= 0: all three NaN. Fails only for
 * memory (AP_ERR_NOMEM; all three NaN). */
ap_status ap_boot_ci95(const double *num, const double *den, int n, uint64_t seed, double *est,
                       double *lo, double *hi, ap_err *err);

#endif
