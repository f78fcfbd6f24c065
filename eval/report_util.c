/* Helpers shared by the report writers (see eval/report_util.h). */
#include "eval/report_util.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

cJSON *ap_jadd(ap_jbuild *j, cJSON *parent, const char *key, cJSON *item) {
    if (!item || !parent) {
        cJSON_Delete(item);
        j->failed = 1;
        return NULL;
    }
    cJSON_bool ok = key ? cJSON_AddItemToObject(parent, key, item) : cJSON_AddItemToArray(parent, item);
    if (!ok) {
        cJSON_Delete(item);
        j->failed = 1;
        return NULL;
    }
    return item;
}

cJSON *ap_jnum(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

void ap_jadd_num(ap_jbuild *j, cJSON *o, const char *key, double v) { ap_jadd(j, o, key, ap_jnum(v)); }

void ap_jadd_str(ap_jbuild *j, cJSON *o, const char *key, const char *s) {
    ap_jadd(j, o, key, s ? cJSON_CreateString(s) : cJSON_CreateNull());
}

void ap_jadd_bool(ap_jbuild *j, cJSON *o, const char *key, int v) {
    ap_jadd(j, o, key, cJSON_CreateBool(v != 0));
}

const char *ap_kv_mode_name(ap_kv_mode k) {
    switch (k) {
    case AP_KV_PER_QHEAD: return "per_qhead";
    case AP_KV_SUM: return "sum";
    case AP_KV_UNION: return "union";
    }
    return "unknown";
}

ap_status ap_report_tmp_name(char *tmp, const char *path, ap_err *err) {
    if (strlen(path) + 32 > AP_REPORT_PATH_BUF)
        return ap_errf(err, AP_ERR_ARG, "%.200s...: output path is too long", path);
    ap_tmp_name(tmp, AP_REPORT_PATH_BUF, path);
    return AP_OK;
}

ap_status ap_report_plot_path(char *out, const char *dir, const char *name, ap_err *err) {
    int n = snprintf(out, AP_REPORT_PATH_BUF, "%s/%s", dir, name);
    if (n < 0 || n + 32 >= AP_REPORT_PATH_BUF)
        return ap_errf(err, AP_ERR_ARG, "%.200s...: output directory name is too long", dir);
    return AP_OK;
}

ap_status ap_report_open(const char *path, char *tmp, FILE **f, ap_err *err) {
    *f = NULL;
    ap_status st = ap_report_tmp_name(tmp, path, err);
    if (st) return st;
    if (!(*f = fopen(tmp, "wb")))
        return ap_errf(err, AP_ERR_IO, "%s: cannot create temporary file %s: %s", path, tmp,
                       strerror(errno));
    return AP_OK;
}

ap_status ap_report_close(FILE *f, const char *tmp, const char *path, ap_err *err) {
    ap_status st = AP_OK;
    int bad = ferror(f);
    int saved = errno;
    /* A full disk often shows up only when the buffer is flushed. */
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        saved = errno;
    }
    if (bad) {
        st = ap_errf(err, AP_ERR_IO, "%s: cannot write %s: %s", path, tmp, strerror(saved));
        goto cleanup;
    }
    st = ap_commit_file(tmp, path, err);
cleanup:
    if (st != AP_OK) remove(tmp);
    return st;
}

ap_status ap_report_write_text(const char *path, const char *text, ap_err *err) {
    char tmp[AP_REPORT_PATH_BUF];
    FILE *f = NULL;
    ap_status st = ap_report_open(path, tmp, &f, err);
    if (st) return st;
    fputs(text, f);
    fputc('\n', f);
    return ap_report_close(f, tmp, path, err);
}

void ap_md_method(FILE *f, const char *name, const char *label) {
    if (label && label[0] && strcmp(label, name) != 0) {
        ap_md_text(f, label);
        fputs(" (`", f);
        ap_md_text(f, name);
        fputs("`)", f);
    } else {
        fputc('`', f);
        ap_md_text(f, name);
        fputc('`', f);
    }
}

void ap_md_text(FILE *f, const char *s) {
    for (; s && *s; s++) {
        if (*s == '|')
            fputs("\\|", f);
        else if (*s == '\n' || *s == '\r')
            fputc(' ', f);
        else
            fputc(*s, f);
    }
}

void ap_md_num(FILE *f, double v, int decimals) {
    fputs(" | ", f);
    if (isfinite(v))
        fprintf(f, "%.*f", decimals, v);
    else
        fputs("n/a", f);
}

void ap_md_ratio(FILE *f, double v) {
    fputs(" | ", f);
    if (isfinite(v))
        fprintf(f, "%.1fx", v);
    else
        fputs("n/a", f);
}

/* ---- bootstrap ------------------------------------------------------------ */

static uint64_t boot_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

ap_status ap_boot_ci95(const double *num, const double *den, int n, uint64_t seed, double *est,
                       double *lo, double *hi, ap_err *err) {
    ap_status st = AP_OK;
    const int R = AP_BOOT_RESAMPLES;
    double *boot = NULL;
    *est = *lo = *hi = NAN;
    if (n <= 0) return AP_OK;
    double sn = 0.0, sd = 0.0;
    for (int i = 0; i < n; i++) {
        sn += num[i];
        sd += den ? den[i] : 1.0;
    }
    *est = sn / sd;
    if (n == 1) {
        *lo = *hi = *est;
        return AP_OK;
    }
    if (!(boot = malloc((size_t)R * sizeof *boot))) {
        *est = NAN;
        st = ap_errf(err, AP_ERR_NOMEM, "bootstrap: out of memory");
        goto cleanup;
    }
    for (int it = 0; it < R; it++) {
        double a = 0.0, c = 0.0;
        for (int i = 0; i < n; i++) {
            int j = (int)(boot_next(&seed) % (uint64_t)n);
            a += num[j];
            c += den ? den[j] : 1.0;
        }
        boot[it] = a / c;
    }
    qsort(boot, (size_t)R, sizeof *boot, cmp_double);
    *lo = boot[(int)(0.025 * R)];
    *hi = boot[(int)(0.975 * R) - 1];
cleanup:
    free(boot);
    return st;
}

void ap_replay_layers_of(const ap_replay_result *r, ap_replay_layers *out) {
    memset(out, 0, sizeof *out);
    const ap_replay_config *c = &r->config;
    int L = r->n_layer < AP_REPLAY_MAX_LAYERS ? r->n_layer : AP_REPLAY_MAX_LAYERS;
    out->n_layer = r->n_layer;
    for (int l = 0; l < L; l++) {
        int w = r->layer_window[l];
        if (w > 0) {
            out->n_sliding++;
            out->window = out->window == 0 || out->window == w ? w : -1;
            continue;
        }
        int dense = 0;
        for (int i = 0; i < c->n_dense_layers && i < AP_REPLAY_MAX_LAYERS; i++)
            dense |= c->dense_layers[i] == l;
        if (dense)
            out->n_dense++;
        else
            out->n_selected++;
    }
    /* Layers past the result's window table (never in practice) count as full. */
    if (r->n_layer > L) out->n_selected += r->n_layer - L;
}

void ap_replay_layers_note(const ap_replay_layers *l, char *buf, size_t n) {
    char win[48];
    if (l->window > 0)
        snprintf(win, sizeof win, "window %d", l->window);
    else
        snprintf(win, sizeof win, "windows differ");
    if (l->n_sliding == 0 && l->n_dense == 0)
        snprintf(buf, n, "selection in all %d layers", l->n_layer);
    else if (l->n_dense == 0)
        snprintf(buf, n, "selection in %d of %d layers (the others are sliding-window layers, %s)",
                 l->n_selected, l->n_layer, win);
    else if (l->n_sliding == 0)
        snprintf(buf, n, "selection in %d of %d layers (the others are kept dense)", l->n_selected,
                 l->n_layer);
    else
        snprintf(buf, n,
                 "selection in %d of %d layers (the others: %d sliding-window layers, %s; %d "
                 "kept dense)",
                 l->n_selected, l->n_layer, l->n_sliding, win, l->n_dense);
}
