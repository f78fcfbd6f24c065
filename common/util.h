/* Small helpers shared by the modules: files, time, progress. */
#ifndef AP_UTIL_H
#define AP_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/status.h"

#define AP_VERSION_STRING "0.1.0"

int ap_file_exists(const char *path);

/* Read a whole file into a malloc'd buffer (NUL-terminated; *len excludes the
 * NUL). Caller frees. */
ap_status ap_read_file(const char *path, char **data, size_t *len, ap_err *err);

/* "<path>.tmp.<pid>": the name outputs are written under before rename().
 * Writes into buf (size n). */
void ap_tmp_name(char *buf, size_t n, const char *path);

/* rename(tmp, final) with a clear error. */
ap_status ap_commit_file(const char *tmp, const char *final_path, ap_err *err);

/* Check that the directory holding path exists and is writable. */
ap_status ap_check_writable_dir(const char *path, ap_err *err);

/* mkdir -p: create dir and any missing parents (existing dirs are fine). */
ap_status ap_mkdir_p(const char *dir, ap_err *err);

double ap_now_seconds(void); /* monotonic */

/* Peak resident set size of this process in bytes (0 if unknown). */
size_t ap_peak_rss_bytes(void);

/* Progress line with rate and ETA, written to a stream (stderr) at most every
 * `interval` seconds. Plain struct: no allocation. */
typedef struct {
    FILE *out;
    const char *label;
    const char *unit;
    double total;
    double done;
    double t_start;
    double t_last;
    double interval;
    int enabled;
} ap_progress;

void ap_progress_init(ap_progress *p, FILE *out, const char *label, const char *unit,
                      double total, int enabled);
void ap_progress_update(ap_progress *p, double done);
void ap_progress_finish(ap_progress *p);

/* SHA-256 of a file, lowercase hex into hex[65]. */
ap_status ap_sha256_file(const char *path, char hex[65], ap_err *err);

#endif
