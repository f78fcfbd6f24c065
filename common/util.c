#define _POSIX_C_SOURCE 200809L
#include "common/util.h"

#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int ap_file_exists(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0;
}

ap_status ap_read_file(const char *path, char **data, size_t *len, ap_err *err) {
    ap_status st = AP_OK;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return ap_errf(err, AP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        st = ap_errf(err, AP_ERR_IO, "%s: cannot seek: %s", path, strerror(errno));
        goto cleanup;
    }
    long n = ftell(f);
    if (n < 0) {
        st = ap_errf(err, AP_ERR_IO, "%s: cannot tell size", path);
        goto cleanup;
    }
    rewind(f);
    buf = malloc((size_t)n + 1);
    if (!buf) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory reading %ld bytes", path, n);
        goto cleanup;
    }
    if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        st = ap_errf(err, AP_ERR_IO, "%s: short read", path);
        goto cleanup;
    }
    buf[n] = '\0';
    *data = buf;
    *len = (size_t)n;
    buf = NULL;
cleanup:
    free(buf);
    fclose(f);
    return st;
}

void ap_tmp_name(char *buf, size_t n, const char *path) {
    snprintf(buf, n, "%s.tmp.%ld", path, (long)getpid());
}

ap_status ap_commit_file(const char *tmp, const char *final_path, ap_err *err) {
    if (rename(tmp, final_path) != 0)
        return ap_errf(err, AP_ERR_IO, "%s: cannot rename from %s: %s", final_path, tmp,
                       strerror(errno));
    return AP_OK;
}

ap_status ap_check_writable_dir(const char *path, ap_err *err) {
    char *copy = strdup(path);
    if (!copy) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    const char *dir = dirname(copy);
    ap_status st = AP_OK;
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        st = ap_errf(err, AP_ERR_IO, "%s: directory %s does not exist", path, dir);
    else if (access(dir, W_OK) != 0)
        st = ap_errf(err, AP_ERR_IO, "%s: directory %s is not writable", path, dir);
    free(copy);
    return st;
}

ap_status ap_mkdir_p(const char *dir, ap_err *err) {
    char buf[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof buf) return ap_errf(err, AP_ERR_ARG, "bad directory name '%s'", dir);
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return ap_errf(err, AP_ERR_IO, "%s: cannot create directory %s: %s", dir, buf,
                           strerror(errno));
        buf[i] = c;
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return ap_errf(err, AP_ERR_IO, "%s: exists and is not a directory", dir);
    return AP_OK;
}

int ap_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

double ap_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t ap_peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (size_t)ru.ru_maxrss * 1024u; /* Linux reports KiB */
}

static void fmt_secs(char *buf, size_t n, double s) {
    if (s < 0 || s != s) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
        snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

void ap_progress_init(ap_progress *p, FILE *out, const char *label, const char *unit,
                      double total, int enabled) {
    memset(p, 0, sizeof *p);
    p->out = out;
    p->label = label;
    p->unit = unit;
    p->total = total;
    p->t_start = ap_now_seconds();
    p->t_last = 0.0;
    p->interval = 1.0;
    p->enabled = enabled && out != NULL;
}

static double progress_now(const ap_progress *p) {
    return p->clock ? p->clock(p->clock_user) : ap_now_seconds();
}

void ap_progress_set_clock(ap_progress *p, ap_clock_fn clock, void *clock_user) {
    p->clock = clock;
    p->clock_user = clock_user;
    p->t_start = progress_now(p);
    p->t_last = 0.0;
}

double ap_progress_eta(const ap_progress *p, double now) {
    const int by_work = p->work_total > 0;
    double done = by_work ? p->work_done : p->done, total = by_work ? p->work_total : p->total;
    double base = by_work ? p->work_base : p->done_base;
    double el = now - p->t_start;
    if (!(done > base) || !(total > done) || !(el > 0)) return 0.0;
    return el * (total - done) / (done - base);
}

void ap_progress_set_base(ap_progress *p, double done, double work_done) {
    p->done_base = done;
    p->work_base = work_done;
    p->done = done > p->done ? done : p->done;
    p->work_done = work_done > p->work_done ? work_done : p->work_done;
}

static void progress_print(ap_progress *p, double now, int final) {
    double el = now - p->t_start;
    double rate = el > 0 ? (p->done - p->done_base) / el : 0.0;
    char e1[32], e2[32];
    fmt_secs(e1, sizeof e1, el);
    fmt_secs(e2, sizeof e2, ap_progress_eta(p, now));
    double pct = p->total > 0 ? 100.0 * p->done / p->total : 0.0;
    fprintf(p->out, "\r%s: %.0f/%.0f %s (%.1f%%) %.1f %s/s elapsed %s ETA %s%s", p->label,
            p->done, p->total, p->unit, pct, rate, p->unit, e1, e2, final ? "\n" : "   ");
    fflush(p->out);
}

void ap_progress_update(ap_progress *p, double done) {
    p->done = done;
    if (!p->enabled) return;
    double now = progress_now(p);
    if (now - p->t_last < p->interval) return;
    p->t_last = now;
    progress_print(p, now, 0);
}

void ap_progress_update_work(ap_progress *p, double done, double total, double work_done,
                             double work_total) {
    if (total > 0) p->total = total;
    p->work_done = work_done;
    p->work_total = work_total;
    ap_progress_update(p, done);
}

void ap_progress_finish(ap_progress *p) {
    if (!p->enabled) return;
    progress_print(p, progress_now(p), 1);
}

double ap_work_fixed(int n_layer, int n_embd, int n_head, int n_head_kv, int head_dim, int n_ff,
                     int n_vocab) {
    /* Multiply-adds per token: q, k, v, o and the gated MLP per layer, plus
     * the output head; per key: q.k and the weighted sum of v per head. */
    double d = n_embd, q = (double)n_head * head_dim, kv = (double)n_head_kv * head_dim;
    double weights = (double)n_layer * (2.0 * d * q + 2.0 * d * kv + 3.0 * d * n_ff) +
                     (double)n_vocab * d;
    double per_key = 2.0 * n_layer * q;
    return per_key > 0 ? weights / per_key : 0.0;
}

/* Sum of fixed + i over i = pos0 .. pos0 + n - 1. */
static double token_work(double pos0, double n, double fixed) {
    return n > 0 ? n * (fixed + pos0) + 0.5 * n * (n - 1) : 0.0;
}

double ap_work_run(double n_prompt, double n_decode, int prefill, double fixed) {
    return (prefill ? token_work(0.0, n_prompt, fixed) : 0.0) +
           AP_WORK_DECODE_FACTOR * token_work(n_prompt, n_decode, fixed);
}
