#define _POSIX_C_SOURCE 200809L
#include "train/runtime.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "train/fusion.h"
#include "train/safetensors.h"

struct ap_runtime {
    ap_predictor *pred;
};

/* The six state_dict tensors of one model: name suffix, offset, shape. */
typedef struct {
    const char *suffix;
    size_t off, numel;
    int ndim;
    int64_t shape[4];
} tensor_spec;

/* The state_dict tensors of one model; returns how many (6, or 7 with the
 * query-fusion weight). */
static int model_specs(const ap_pred_config *c, tensor_spec s[7]) {
    ap_pred_layout L;
    ap_pred_layout_of(c, &L);
    int64_t c1 = c->c1, c2 = c->c2;
    s[0] = (tensor_spec){"conv1.weight", L.w1, L.b1 - L.w1, 4, {c1, 1, 3, 3}};
    s[1] = (tensor_spec){"conv1.bias", L.b1, L.w2 - L.b1, 1, {c1}};
    s[2] = (tensor_spec){"conv2.weight", L.w2, L.b2 - L.w2, 4, {c2, c1, 3, 3}};
    s[3] = (tensor_spec){"conv2.bias", L.b2, L.w3 - L.b2, 1, {c2}};
    s[4] = (tensor_spec){"conv3.weight", L.w3, L.b3 - L.w3, 3, {1, c2, 1}};
    s[5] = (tensor_spec){"conv3.bias", L.b3, 1, 1, {1}};
    if (!c->query_fusion) return 6;
    s[6] = (tensor_spec){"query_weight", L.q, 1, 1, {1}};
    return 7;
}

static void tensor_name(char *buf, size_t n, const ap_pred_config *c, int m, const char *suffix) {
    if (c->n_models == 1 && c->n_layers == 0)
        snprintf(buf, n, "%s", suffix);
    else
        snprintf(buf, n, "layers.%d.%s", m, suffix);
}

static ap_status put_int(ap_st_writer *w, cJSON *j, const char *key, long v, ap_err *err) {
    char buf[32];
    snprintf(buf, sizeof buf, "%ld", v);
    if (j && !cJSON_AddNumberToObject(j, key, (double)v))
        return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    return ap_st_writer_meta(w, key, buf, err);
}

static ap_status write_text_atomic(const char *path, const char *text, ap_err *err) {
    ap_status st = AP_OK;
    char tmp[4096];
    ap_tmp_name(tmp, sizeof tmp, path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return ap_errf(err, AP_ERR_IO, "%s: cannot create %s: %s", path, tmp, strerror(errno));
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n && fputc('\n', f) != EOF && fflush(f) == 0 &&
             fsync(fileno(f)) == 0;
    if (fclose(f) != 0) ok = 0;
    if (!ok) {
        st = ap_errf(err, AP_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        return st;
    }
    st = ap_commit_file(tmp, path, err);
    if (st != AP_OK) unlink(tmp);
    return st;
}

ap_status ap_pred_export(const char *st_path, const char *json_path, const ap_pred_config *c,
                         const float *params, ap_err *err) {
    ap_status st = ap_pred_config_validate(c, err);
    ap_st_writer *w = NULL;
    cJSON *j = NULL;
    char *map = NULL, *jtext = NULL;
    if (st != AP_OK) return st;
    size_t P = ap_pred_param_count(c);
    for (size_t i = 0; i < P * (size_t)c->n_models; i++)
        if (!isfinite(params[i]))
            return ap_errf(err, AP_ERR_NUMERIC, "%s: parameter %zu is not finite; not exported",
                           st_path, i);
    st = ap_st_writer_create(&w, err);
    if (st != AP_OK) goto cleanup;
    tensor_spec s[7];
    const int nt = model_specs(c, s);
    for (int m = 0; m < c->n_models && st == AP_OK; m++)
        for (int k = 0; k < nt && st == AP_OK; k++) {
            char name[64];
            tensor_name(name, sizeof name, c, m, s[k].suffix);
            st = ap_st_writer_add(w, name, "F32", s[k].ndim, s[k].shape,
                                  params + (size_t)m * P + s[k].off, err);
        }
    if (st != AP_OK) goto cleanup;
    j = cJSON_CreateObject();
    map = ap_pred_layer_map_to_json(c);
    if (!j || !map) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    cJSON_AddStringToObject(j, "format", AP_EXPORT_FORMAT);
    st = ap_st_writer_meta(w, "format", AP_EXPORT_FORMAT, err);
    if (st == AP_OK) st = put_int(w, j, "version", AP_EXPORT_VERSION, err);
    if (st == AP_OK) st = put_int(w, j, "history", c->history, err);
    if (st == AP_OK) st = put_int(w, j, "block", c->block, err);
    if (st == AP_OK) st = put_int(w, j, "sink_blocks", c->sink_blocks, err);
    if (st == AP_OK) st = put_int(w, j, "local_blocks", c->local_blocks, err);
    if (st == AP_OK) st = put_int(w, j, "c1", c->c1, err);
    if (st == AP_OK) st = put_int(w, j, "c2", c->c2, err);
    if (st == AP_OK) st = put_int(w, j, "n_models", c->n_models, err);
    if (st == AP_OK) st = put_int(w, j, "n_layers", c->n_layers, err);
    if (st == AP_OK) st = put_int(w, j, "param_count", (long)P, err);
    if (st == AP_OK && c->query_fusion) st = put_int(w, j, "query_fusion", 1, err);
    if (st == AP_OK) st = ap_st_writer_meta(w, "layer_map", map, err);
    if (st != AP_OK) goto cleanup;
    cJSON_AddItemToObject(j, "layer_map", cJSON_Parse(map));
    cJSON_AddStringToObject(j, "arch",
                            c->query_fusion
                                ? "Conv2d(1,c1,3,p1)+ReLU, Conv2d(c1,c2,3,p1)+ReLU, mean over "
                                  "time, Conv1d(c2,1,1); score = z(cnn) + query_weight * "
                                  "z(query bound) over the candidates (query fusion)"
                                : "Conv2d(1,c1,3,p1)+ReLU, Conv2d(c1,c2,3,p1)+ReLU, mean over "
                                  "time, Conv1d(c2,1,1)");
    /* JSON first: if the safetensors write fails afterwards the pair may
     * disagree, but the safetensors file (what loaders read) stays whole. */
    if (json_path) {
        jtext = cJSON_Print(j);
        if (!jtext) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        st = write_text_atomic(json_path, jtext, err);
        if (st != AP_OK) goto cleanup;
    }
    st = ap_st_writer_write(w, st_path, err);
cleanup:
    free(jtext);
    free(map);
    cJSON_Delete(j);
    ap_st_writer_free(w);
    return st;
}

static ap_status meta_int(const ap_st_file *f, const char *key, int *out, ap_err *err) {
    const char *s = ap_st_meta(f, key);
    char *end = NULL;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || v < -1000000000L || v > 1000000000L)
        return ap_errf(err, AP_ERR_FORMAT, "%s: metadata \"%s\" missing or not an integer",
                       ap_st_label(f), key);
    *out = (int)v;
    return AP_OK;
}

ap_status ap_runtime_load(const char *path, ap_runtime **out, ap_err *err) {
    ap_status st = AP_OK;
    ap_st_file *f = NULL;
    ap_runtime *rt = NULL;
    cJSON *map = NULL;
    *out = NULL;
    st = ap_st_open(path, &f, err);
    if (st != AP_OK) goto cleanup;
    const char *fmt = ap_st_meta(f, "format");
    if (!fmt || strcmp(fmt, AP_EXPORT_FORMAT)) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: metadata format is %s, expected \"%s\"", path,
                     fmt ? fmt : "missing", AP_EXPORT_FORMAT);
        goto cleanup;
    }
    int version = 0;
    ap_pred_config c;
    ap_pred_config_default(&c);
    st = meta_int(f, "version", &version, err);
    if (st == AP_OK && (version < 1 || version > AP_EXPORT_VERSION))
        st = ap_errf(err, AP_ERR_UNSUPPORTED, "%s: export version %d not supported (max %d)", path,
                     version, AP_EXPORT_VERSION);
    if (st == AP_OK) st = meta_int(f, "history", &c.history, err);
    if (st == AP_OK) st = meta_int(f, "block", &c.block, err);
    if (st == AP_OK) st = meta_int(f, "c1", &c.c1, err);
    if (st == AP_OK) st = meta_int(f, "c2", &c.c2, err);
    if (st == AP_OK) st = meta_int(f, "n_models", &c.n_models, err);
    /* Optional fields keep their defaults: import_pth may not know them. */
    if (st == AP_OK && ap_st_meta(f, "sink_blocks")) st = meta_int(f, "sink_blocks", &c.sink_blocks, err);
    if (st == AP_OK && ap_st_meta(f, "local_blocks"))
        st = meta_int(f, "local_blocks", &c.local_blocks, err);
    if (st == AP_OK && ap_st_meta(f, "query_fusion"))
        st = meta_int(f, "query_fusion", &c.query_fusion, err);
    if (st != AP_OK) goto cleanup;
    const char *ms = ap_st_meta(f, "layer_map");
    map = cJSON_Parse(ms ? ms : "[]");
    if (!cJSON_IsArray(map) || cJSON_GetArraySize(map) > AP_PRED_MAX_LAYERS) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: metadata layer_map is not a JSON array of <= %d ints",
                     path, AP_PRED_MAX_LAYERS);
        goto cleanup;
    }
    c.n_layers = cJSON_GetArraySize(map);
    int l = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, map) {
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
            fabs(v->valuedouble) > 1e6) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: layer_map[%d] is not an integer", path, l);
            goto cleanup;
        }
        c.layer_map[l++] = (int)v->valuedouble;
    }
    if (ap_st_meta(f, "n_layers")) {
        int nl = -1;
        st = meta_int(f, "n_layers", &nl, err);
        if (st == AP_OK && nl != c.n_layers)
            st = ap_errf(err, AP_ERR_FORMAT, "%s: n_layers %d but layer_map has %d entries", path,
                         nl, c.n_layers);
        if (st != AP_OK) goto cleanup;
    }
    st = ap_pred_config_validate(&c, err);
    if (st != AP_OK) {
        ap_err_prefix(err, path);
        st = AP_ERR_FORMAT;
        if (err) err->status = st;
        goto cleanup;
    }
    /* Every tensor is checked against the metadata before the predictor is
     * allocated: that allocation is sized by the metadata alone (c1 = c2 =
     * 4096 with 256 models asks for 155 GB), so a small corrupt file must be
     * refused before it, not after. */
    tensor_spec s[7];
    const int nt = model_specs(&c, s);
    for (int m = 0; m < c.n_models; m++)
        for (int k = 0; k < nt; k++) {
            char name[64];
            tensor_name(name, sizeof name, &c, m, s[k].suffix);
            const ap_st_tensor *t = ap_st_find(f, name);
            int ok = t && !strcmp(t->dtype, "F32") && t->ndim == s[k].ndim;
            for (int d = 0; ok && d < s[k].ndim; d++) ok = t->shape[d] == s[k].shape[d];
            if (!ok) {
                char want[96];
                if (s[k].ndim == 4)
                    snprintf(want, sizeof want, "[%lld,%lld,%lld,%lld]", (long long)s[k].shape[0],
                             (long long)s[k].shape[1], (long long)s[k].shape[2],
                             (long long)s[k].shape[3]);
                else if (s[k].ndim == 3)
                    snprintf(want, sizeof want, "[%lld,%lld,%lld]", (long long)s[k].shape[0],
                             (long long)s[k].shape[1], (long long)s[k].shape[2]);
                else
                    snprintf(want, sizeof want, "[%lld]", (long long)s[k].shape[0]);
                st = ap_errf(err, AP_ERR_FORMAT, "%s: tensor %s %s; expected F32 %s", path, name,
                             t ? "has the wrong dtype or shape" : "is missing", want);
                goto cleanup;
            }
        }
    if (ap_st_count(f) != nt * c.n_models) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: %d tensors, expected %d (unknown tensor names)", path,
                     ap_st_count(f), nt * c.n_models);
        goto cleanup;
    }
    rt = calloc(1, sizeof *rt);
    if (!rt) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    st = ap_predictor_create(&c, 0, &rt->pred, err);
    if (st != AP_OK) goto cleanup;
    float *params = ap_predictor_params(rt->pred, NULL);
    size_t P = ap_pred_param_count(&c);
    for (int m = 0; m < c.n_models; m++)
        for (int k = 0; k < nt; k++) {
            char name[64];
            tensor_name(name, sizeof name, &c, m, s[k].suffix);
            memcpy(params + (size_t)m * P + s[k].off, ap_st_find(f, name)->data,
                   sizeof(float) * s[k].numel);
        }
    for (size_t i = 0; i < P * (size_t)c.n_models; i++)
        if (!isfinite(params[i])) {
            st = ap_errf(err, AP_ERR_NUMERIC, "%s: parameter %zu is not finite", path, i);
            goto cleanup;
        }
    *out = rt;
    rt = NULL;
cleanup:
    cJSON_Delete(map);
    ap_st_free(f);
    ap_runtime_free(rt);
    return st;
}

void ap_runtime_free(ap_runtime *rt) {
    if (!rt) return;
    ap_predictor_free(rt->pred);
    free(rt);
}

const ap_pred_config *ap_runtime_config(const ap_runtime *rt) {
    return ap_predictor_config(rt->pred);
}

ap_predictor *ap_runtime_predictor(ap_runtime *rt) { return rt->pred; }

ap_status ap_runtime_predict_batch(const ap_runtime *rt, int layer, const float *hist, int N,
                                   int H, int W, float *scores, ap_err *err) {
    int m = ap_predictor_model_of_layer(rt->pred, layer);
    if (m < 0)
        return ap_errf(err, AP_ERR_ARG, "runtime: layer %d has no model (predictor covers %d layers)",
                       layer, ap_runtime_config(rt)->n_layers);
    return ap_predictor_forward(rt->pred, m, hist, N, H, W, scores, err);
}

ap_status ap_runtime_predict(const ap_runtime *rt, int layer, const float *hist, int H, int W,
                             float *scores, ap_err *err) {
    return ap_runtime_predict_batch(rt, layer, hist, 1, H, W, scores, err);
}

float ap_runtime_query_weight(const ap_runtime *rt, int layer) {
    const ap_pred_config *c = ap_runtime_config(rt);
    int m = ap_predictor_model_of_layer(rt->pred, layer);
    if (!c->query_fusion || m < 0) return 0.0f;
    ap_pred_layout L;
    ap_pred_layout_of(c, &L);
    return ap_predictor_params_const(rt->pred, NULL)[(size_t)m * L.total + L.q];
}

ap_status ap_runtime_fuse_query(const ap_runtime *rt, int layer, const float *q, const float *kmin,
                                const float *kmax, int hd, int W, float *scores, ap_err *err) {
    if (!ap_runtime_config(rt)->query_fusion) return AP_OK;
    if (ap_predictor_model_of_layer(rt->pred, layer) < 0)
        return ap_errf(err, AP_ERR_ARG, "runtime: layer %d has no model", layer);
    float stack[512], *qb = W <= 512 ? stack : malloc((size_t)W * sizeof(float));
    if (!qb) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    ap_query_bound(q, kmin, kmax, hd, W, qb);
    ap_status st = ap_runtime_fuse_bound(rt, layer, qb, W, scores, err);
    if (qb != stack) free(qb);
    return st;
}

ap_status ap_runtime_fuse_bound(const ap_runtime *rt, int layer, const float *bound, int W,
                                float *scores, ap_err *err) {
    if (!ap_runtime_config(rt)->query_fusion) return AP_OK;
    if (ap_predictor_model_of_layer(rt->pred, layer) < 0)
        return ap_errf(err, AP_ERR_ARG, "runtime: layer %d has no model", layer);
    float stack[512], *zq = W <= 512 ? stack : malloc((size_t)W * sizeof(float));
    if (!zq) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    ap_zscore(bound, W, zq);
    ap_fuse_scores(scores, zq, W, ap_runtime_query_weight(rt, layer), scores);
    if (zq != stack) free(zq);
    return AP_OK;
}
