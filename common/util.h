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

/* CPUs online (at least 1). */
int ap_cpu_count(void);

/* Peak resident set size of this process in bytes (0 if unknown). */
size_t ap_peak_rss_bytes(void);

/* Progress line with rate and ETA, written to a stream (stderr) at most every
 * `interval` seconds. Plain struct: no allocation.
 *
 * The ETA is the work left over the rate of work done so far. Work is what
 * the caller estimates each unit costs (ap_progress_update_work; the
 * ap_work_* cost model below): later sequences are longer and cost more per
 * unit, so counting units alone would put the ETA about 2x low. Without a
 * work estimate (work_total 0) every unit costs the same. Time comes from
 * `clock` (ap_now_seconds unless ap_progress_set_clock replaced it, as tests
 * do to make the arithmetic deterministic). */
typedef double (*ap_clock_fn)(void *user);

typedef struct {
    FILE *out;
    const char *label;
    const char *unit;
    double total;      /* units, as shown */
    double done;
    double work_total; /* estimated cost of all units; 0 = the unit count */
    double work_done;
    double done_base, work_base; /* done before timing began (resumed): not in the rate */
    double t_start;
    double t_last;
    double interval;
    ap_clock_fn clock; /* NULL = ap_now_seconds */
    void *clock_user;
    int enabled;
} ap_progress;

void ap_progress_init(ap_progress *p, FILE *out, const char *label, const char *unit,
                      double total, int enabled);
/* Replaces the clock and restarts the elapsed time from its reading. */
void ap_progress_set_clock(ap_progress *p, ap_clock_fn clock, void *clock_user);
void ap_progress_update(ap_progress *p, double done);
/* done of total units (total <= 0 keeps the current one) and their work
 * (the ap_work_* cost model). */
void ap_progress_update_work(ap_progress *p, double done, double total, double work_done,
                             double work_total);
void ap_progress_finish(ap_progress *p);
/* Units and work already done when this process started (a run resumed
 * from a checkpoint): shown in the counts, left out of the rate and the ETA,
 * which would otherwise credit this process with work it did not do. */
void ap_progress_set_base(ap_progress *p, double done, double work_done);
/* Seconds left at clock reading `now`: elapsed x work left / work done
 * since the base (0 before any work, or when none is left). */
double ap_progress_eta(const ap_progress *p, double now);

/* The cost model of the progress ETAs, in units of one key read by one
 * token's attention. A token at position i costs `fixed` + i: i for the
 * keys it attends to and `fixed` for what does not grow with the context
 * (the weight matrices), from the model's shape by ap_work_fixed. */
double ap_work_fixed(int n_layer, int n_embd, int n_head, int n_head_kv, int head_dim, int n_ff,
                     int n_vocab);
/* Prefilling n_prompt tokens (when `prefill`; else they are cached) and then
 * decoding n_decode tokens after them; a decode token costs
 * AP_WORK_DECODE_FACTOR times a prefill token at the same position. */
double ap_work_run(double n_prompt, double n_decode, int prefill, double fixed);

/* Decode tokens run one at a time, as matrix-vector products, where a
 * prefill batches matrix products (CPU engine, SmolLM2-135M capture: 24 vs
 * 242 tok/s, prefill tokens sitting on average half as far into the
 * context). */
#define AP_WORK_DECODE_FACTOR 8.0

/* SHA-256 of a file, lowercase hex into hex[65]. */
ap_status ap_sha256_file(const char *path, char hex[65], ap_err *err);

#endif
