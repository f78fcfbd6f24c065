#include "train/checkpoint.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/safetensors.h"

ap_status ap_checkpoint_save(const char *path, const ap_ckpt_info *info, const float *params,
                             const float *adam_m, const float *adam_v, size_t n,
                             const char *train_json, ap_err *err) {
    ap_status st = ap_pred_config_validate(&info->cfg, err);
    ap_st_writer *w = NULL;
    char *cfg_json = NULL;
    char buf[64];
    if (st != AP_OK) return ap_err_prefix(err, path);
    size_t expect = ap_pred_param_count(&info->cfg) * (size_t)info->cfg.n_models;
    if (n != expect)
        return ap_errf(err, AP_ERR_ARG, "%s: %zu parameters given, the config has %zu", path, n,
                       expect);
    if ((adam_m == NULL) != (adam_v == NULL))
        return ap_errf(err, AP_ERR_ARG, "%s: give both Adam moments or neither", path);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(params[i]))
            return ap_errf(err, AP_ERR_NUMERIC, "%s: parameter %zu is not finite; not saved", path,
                           i);
    st = ap_st_writer_create(&w, err);
    if (st != AP_OK) goto cleanup;
    int64_t shape[1] = {(int64_t)n};
    st = ap_st_writer_add(w, "params", "F32", 1, shape, params, err);
    if (st == AP_OK && adam_m) st = ap_st_writer_add(w, "adam.m", "F32", 1, shape, adam_m, err);
    if (st == AP_OK && adam_v) st = ap_st_writer_add(w, "adam.v", "F32", 1, shape, adam_v, err);
    if (st != AP_OK) goto cleanup;
    cfg_json = ap_pred_config_to_json(&info->cfg);
    if (!cfg_json) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    st = ap_st_writer_meta(w, "format", AP_CKPT_FORMAT, err);
    snprintf(buf, sizeof buf, "%d", AP_CKPT_VERSION);
    if (st == AP_OK) st = ap_st_writer_meta(w, "version", buf, err);
    if (st == AP_OK) st = ap_st_writer_meta(w, "config", cfg_json, err);
    snprintf(buf, sizeof buf, "%d", info->epoch);
    if (st == AP_OK) st = ap_st_writer_meta(w, "epoch", buf, err);
    snprintf(buf, sizeof buf, "%ld", info->step);
    if (st == AP_OK) st = ap_st_writer_meta(w, "step", buf, err);
    /* u64 as decimal text: a JSON number would lose bits above 2^53. */
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)info->rng_state);
    if (st == AP_OK) st = ap_st_writer_meta(w, "rng_state", buf, err);
    snprintf(buf, sizeof buf, "%.17g", info->best_metric);
    if (st == AP_OK) st = ap_st_writer_meta(w, "best_metric", buf, err);
    if (st == AP_OK) st = ap_st_writer_meta(w, "metric_name", info->metric_name, err);
    if (st == AP_OK) st = ap_st_writer_meta(w, "train_config", train_json ? train_json : "", err);
    if (st != AP_OK) goto cleanup;
    st = ap_st_writer_write(w, path, err);
cleanup:
    free(cfg_json);
    ap_st_writer_free(w);
    return st;
}

static int parse_i64(const char *s, long long lo, long long hi, long long *out) {
    if (!s || !*s) return 0;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

static float *copy_tensor(const ap_st_file *f, const char *name, size_t n, ap_status *st,
                          ap_err *err) {
    const ap_st_tensor *t = ap_st_find(f, name);
    if (!t || strcmp(t->dtype, "F32") || t->ndim != 1 || t->numel != n) {
        *st = ap_errf(err, AP_ERR_FORMAT, "%s: tensor %s must be F32 [%zu]", ap_st_label(f), name,
                      n);
        return NULL;
    }
    float *a = malloc(sizeof(float) * (n ? n : 1));
    if (!a) {
        *st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", ap_st_label(f));
        return NULL;
    }
    memcpy(a, t->data, sizeof(float) * n);
    return a;
}

ap_status ap_checkpoint_load(const char *path, ap_ckpt_info *info, float **params,
                             float **adam_m, float **adam_v, size_t *n, char **train_json,
                             ap_err *err) {
    ap_status st = AP_OK;
    ap_st_file *f = NULL;
    float *p = NULL, *m = NULL, *v = NULL;
    char *tj = NULL;
    ap_ckpt_info tmp;
    memset(&tmp, 0, sizeof tmp);
    *params = NULL;
    if (adam_m) *adam_m = NULL;
    if (adam_v) *adam_v = NULL;
    if (train_json) *train_json = NULL;

    st = ap_st_open(path, &f, err);
    if (st != AP_OK) goto cleanup;
    const char *fmt = ap_st_meta(f, "format");
    if (!fmt || strcmp(fmt, AP_CKPT_FORMAT)) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: not an attnpred checkpoint (metadata format is %s%s%s)",
                     path, fmt ? "\"" : "", fmt ? fmt : "missing", fmt ? "\"" : "");
        goto cleanup;
    }
    long long ver = 0, epoch = 0, step = 0;
    if (!parse_i64(ap_st_meta(f, "version"), 1, 1000, &ver) || ver > AP_CKPT_VERSION) {
        st = ap_errf(err, AP_ERR_UNSUPPORTED, "%s: checkpoint version %s not supported (max %d)",
                     path, ap_st_meta(f, "version") ? ap_st_meta(f, "version") : "missing",
                     AP_CKPT_VERSION);
        goto cleanup;
    }
    st = ap_pred_config_from_json(ap_st_meta(f, "config"), &tmp.cfg, err);
    if (st != AP_OK) {
        ap_err_prefix(err, path);
        goto cleanup;
    }
    if (!parse_i64(ap_st_meta(f, "epoch"), 0, 1000000000LL, &epoch) ||
        !parse_i64(ap_st_meta(f, "step"), 0, (long long)1 << 62, &step)) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: metadata epoch/step missing or invalid", path);
        goto cleanup;
    }
    const char *rs = ap_st_meta(f, "rng_state"), *bm = ap_st_meta(f, "best_metric");
    char *end = NULL;
    errno = 0;
    unsigned long long rng = rs ? strtoull(rs, &end, 10) : 0;
    if (!rs || !*rs || errno || *end) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: metadata rng_state missing or invalid", path);
        goto cleanup;
    }
    end = NULL;
    double best = bm ? strtod(bm, &end) : 0.0;
    if (!bm || !*bm || *end) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: metadata best_metric missing or invalid", path);
        goto cleanup;
    }
    tmp.epoch = (int)epoch;
    tmp.step = (long)step;
    tmp.rng_state = rng;
    tmp.best_metric = best;
    const char *mn = ap_st_meta(f, "metric_name");
    snprintf(tmp.metric_name, sizeof tmp.metric_name, "%s", mn ? mn : "");

    size_t np = ap_pred_param_count(&tmp.cfg) * (size_t)tmp.cfg.n_models;
    p = copy_tensor(f, "params", np, &st, err);
    if (!p) goto cleanup;
    for (size_t i = 0; i < np; i++)
        if (!isfinite(p[i])) {
            st = ap_errf(err, AP_ERR_NUMERIC, "%s: parameter %zu is not finite", path, i);
            goto cleanup;
        }
    int has_m = ap_st_find(f, "adam.m") != NULL, has_v = ap_st_find(f, "adam.v") != NULL;
    if (has_m != has_v) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: only one of adam.m / adam.v is stored", path);
        goto cleanup;
    }
    if (has_m && (adam_m || adam_v)) {
        m = copy_tensor(f, "adam.m", np, &st, err);
        if (!m) goto cleanup;
        v = copy_tensor(f, "adam.v", np, &st, err);
        if (!v) goto cleanup;
    }
    if (ap_st_count(f) != 1 + 2 * has_m) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: unexpected tensors in a checkpoint", path);
        goto cleanup;
    }
    if (train_json) {
        const char *t = ap_st_meta(f, "train_config");
        tj = strdup(t ? t : "");
        if (!tj) {
            st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
            goto cleanup;
        }
    }
    *info = tmp;
    *params = p;
    p = NULL;
    if (n) *n = np;
    if (adam_m) {
        *adam_m = m;
        m = NULL;
    }
    if (adam_v) {
        *adam_v = v;
        v = NULL;
    }
    if (train_json) {
        *train_json = tj;
        tj = NULL;
    }
cleanup:
    free(p);
    free(m);
    free(v);
    free(tj);
    ap_st_free(f);
    return st;
}
