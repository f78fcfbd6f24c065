#include "eval/tasks_ckpt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CKPT_MAGIC "APTCKPT1"
#define CKPT_END 0x454E4421u /* "!DNE": a record is whole only with it */
#define SIG_LEN 64

struct ap_tasks_ckpt {
    FILE *f;
    char path[1024];
};

void ap_tasks_ckpt_close(ap_tasks_ckpt *k) {
    if (!k) return;
    if (k->f) fclose(k->f);
    free(k);
}

/* Fixed-size fields are written as their bytes (native order: a checkpoint
 * is resumed on the machine that wrote it). */
static int put(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n; }
static int get(FILE *f, void *p, size_t n) { return fread(p, 1, n, f) == n; }

#define FIELDS(X)                                                                              \
    X(score) X(agreement) X(kl) X(same) X(n_gen) X(decode_seconds) X(select_seconds)           \
    X(resident_kv_bytes) X(full_kv_bytes) X(cold_kv_bytes) X(recovery) X(score_seconds)        \
    X(prefetch_wait_seconds) X(prefetched) X(fetch_kv_bytes) X(kv_measured)                    \
    X(hot_capacity_bytes)

static int put_run(FILE *f, const ap_task_run *u) {
#define PUT(x) &&put(f, &u->x, sizeof u->x)
    uint32_t n = u->output ? (uint32_t)strlen(u->output) : 0;
    return 1 FIELDS(PUT) && put(f, &n, sizeof n) && (n == 0 || put(f, u->output, n));
#undef PUT
}

/* Reads one run into u (u->output malloc'd); 0 on a short read. */
static int get_run(FILE *f, ap_task_run *u) {
#define GET(x) &&get(f, &u->x, sizeof u->x)
    uint32_t n = 0;
    if (!(1 FIELDS(GET) && get(f, &n, sizeof n))) return 0;
#undef GET
    if (n > (1u << 26)) return 0;
    char *s = malloc((size_t)n + 1);
    if (!s) return 0;
    if (n && !get(f, s, n)) {
        free(s);
        return 0;
    }
    s[n] = '\0';
    u->output = s;
    return 1;
}

static int sample_index(const ap_tasks_result *r, const char *id) {
    for (int i = 0; i < r->n_samples; i++)
        if (strcmp(r->samples[i].id, id) == 0) return i;
    return -1;
}

/* Reads the whole records of f into r; *good = offset after the last one. */
static void read_records(FILE *f, ap_tasks_result *r, uint8_t *done, int *n_done, long *good) {
    const uint32_t n_runs = (uint32_t)(r->n_methods * r->n_budgets);
    ap_task_run *tmp = calloc(n_runs ? n_runs : 1, sizeof *tmp);
    if (!tmp) return;
    for (;;) {
        uint32_t id_len = 0, runs = 0, end = 0;
        char id[sizeof r->samples[0].id];
        double prefill = 0;
        uint32_t got = 0;
        int ok = get(f, &id_len, sizeof id_len) && id_len < sizeof id && get(f, id, id_len) &&
                 get(f, &prefill, sizeof prefill) && get(f, &runs, sizeof runs) &&
                 runs == n_runs;
        if (ok) id[id_len] = '\0';
        for (; ok && got < n_runs; got++) ok = get_run(f, &tmp[got]);
        ok = ok && get(f, &end, sizeof end) && end == CKPT_END;
        int si = ok ? sample_index(r, id) : -1;
        if (si >= 0 && !done[si]) {
            for (uint32_t j = 0; j < n_runs; j++) {
                ap_task_run *dst = &r->runs[(long)si * n_runs + j];
                free(dst->output);
                *dst = tmp[j];
                tmp[j].output = NULL;
            }
            r->samples[si].prefill_seconds = prefill;
            done[si] = 1;
            (*n_done)++;
        }
        for (uint32_t j = 0; j < got; j++) {
            free(tmp[j].output);
            tmp[j].output = NULL;
        }
        if (!ok) break;
        *good = ftell(f);
    }
    free(tmp);
}

ap_status ap_tasks_ckpt_open(const char *path, const char *signature, int resume,
                             ap_tasks_result *r, uint8_t *done, int *n_done,
                             ap_tasks_ckpt **out, ap_err *err) {
    ap_status st = AP_OK;
    ap_tasks_ckpt *k = NULL;
    *out = NULL;
    *n_done = 0;
    if (strlen(signature) != SIG_LEN)
        return ap_errf(err, AP_ERR_ARG, "checkpoint %s: bad signature", path);
    if (!(k = calloc(1, sizeof *k))) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    snprintf(k->path, sizeof k->path, "%s", path);
    long good = 0;
    FILE *f = resume ? fopen(path, "r+b") : NULL;
    if (f) {
        char magic[8], sig[SIG_LEN];
        if (!get(f, magic, sizeof magic) || memcmp(magic, CKPT_MAGIC, sizeof magic) != 0) {
            fclose(f);
            st = ap_errf(err, AP_ERR_FORMAT, "checkpoint %s: not an attnpred task checkpoint",
                         path);
            goto cleanup;
        }
        if (!get(f, sig, sizeof sig) || memcmp(sig, signature, SIG_LEN) != 0) {
            fclose(f);
            st = ap_errf(err, AP_ERR_FORMAT,
                         "checkpoint %s was made with other inputs or options (model, task "
                         "file, predictors, methods, budgets or settings); run without "
                         "--resume to start over",
                         path);
            goto cleanup;
        }
        good = ftell(f);
        read_records(f, r, done, n_done, &good);
        /* Drop a record cut short by a kill; appends continue after the
         * last whole one. */
        if (fflush(f) != 0 || ftruncate(fileno(f), good) != 0 || fseek(f, good, SEEK_SET) != 0) {
            st = ap_errf(err, AP_ERR_IO, "checkpoint %s: %s", path, strerror(errno));
            fclose(f);
            goto cleanup;
        }
        k->f = f;
    } else {
        if (!(k->f = fopen(path, "wb"))) {
            st = ap_errf(err, AP_ERR_IO, "checkpoint %s: %s", path, strerror(errno));
            goto cleanup;
        }
        if (!put(k->f, CKPT_MAGIC, 8) || !put(k->f, signature, SIG_LEN) || fflush(k->f) != 0) {
            st = ap_errf(err, AP_ERR_IO, "checkpoint %s: write failed", path);
            goto cleanup;
        }
    }
    *out = k;
    k = NULL;
cleanup:
    ap_tasks_ckpt_close(k);
    return st;
}

ap_status ap_tasks_ckpt_add(ap_tasks_ckpt *k, const ap_tasks_result *r, int si, ap_err *err) {
    const ap_task_sample *s = &r->samples[si];
    const uint32_t id_len = (uint32_t)strlen(s->id), n_runs = (uint32_t)(r->n_methods * r->n_budgets);
    const uint32_t end = CKPT_END;
    int ok = put(k->f, &id_len, sizeof id_len) && put(k->f, s->id, id_len) &&
             put(k->f, &s->prefill_seconds, sizeof s->prefill_seconds) &&
             put(k->f, &n_runs, sizeof n_runs);
    for (uint32_t j = 0; ok && j < n_runs; j++) ok = put_run(k->f, &r->runs[(long)si * n_runs + j]);
    ok = ok && put(k->f, &end, sizeof end) && fflush(k->f) == 0 && fsync(fileno(k->f)) == 0;
    if (!ok) return ap_errf(err, AP_ERR_IO, "checkpoint %s: write failed", k->path);
    return AP_OK;
}
