#include "train/predictor.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct ap_predictor {
    ap_pred_config cfg;
    ap_pred_layout lay;
    float *params; /* n_models * lay.total */
    int n_threads;
};

/* ---------------------------------------------------------------- config */

void ap_pred_config_default(ap_pred_config *c) {
    memset(c, 0, sizeof *c);
    c->history = 64;
    c->block = 16;
    c->sink_blocks = 4;
    c->local_blocks = 4;
    c->c1 = 16;
    c->c2 = 32;
    c->n_models = 1;
    c->n_layers = 0;
}

void ap_pred_config_per_layer(ap_pred_config *c, int n_layers) {
    ap_pred_config_groups(c, n_layers, n_layers);
}

void ap_pred_config_groups(ap_pred_config *c, int n_layers, int n_groups) {
    ap_pred_config_groups_of(c, n_layers, n_groups, NULL);
}

void ap_pred_config_groups_of(ap_pred_config *c, int n_layers, int n_groups,
                              const unsigned char *full) {
    if (n_layers < 0) n_layers = 0;
    if (n_layers > AP_PRED_MAX_LAYERS) n_layers = AP_PRED_MAX_LAYERS;
    int n_full = 0;
    for (int l = 0; l < n_layers; l++) n_full += !full || full[l];
    if (n_groups > n_full) n_groups = n_full; /* no model without a layer to learn from */
    c->n_layers = n_layers;
    c->n_models = n_groups;
    /* Full layer j of n_full -> group j*G/n_full; a sliding-window layer
     * (never predicted) borrows the group of the full layer before it, or
     * group 0, so the map stays valid. */
    int j = 0, last = 0;
    for (int l = 0; l < n_layers && n_groups > 0; l++) {
        if (!full || full[l]) last = (int)((long)j++ * n_groups / n_full);
        c->layer_map[l] = last;
    }
}

ap_status ap_pred_config_validate(const ap_pred_config *c, ap_err *err) {
    if (c->history < 1 || c->history > 1 << 16)
        return ap_errf(err, AP_ERR_ARG, "predictor history %d out of range [1, 65536]", c->history);
    if (c->block < 1 || c->block > 1 << 16)
        return ap_errf(err, AP_ERR_ARG, "predictor block %d out of range [1, 65536]", c->block);
    if (c->sink_blocks < 0 || c->local_blocks < 0)
        return ap_errf(err, AP_ERR_ARG, "predictor sink/local blocks must be >= 0");
    if (c->c1 < 1 || c->c1 > 4096 || c->c2 < 1 || c->c2 > 4096)
        return ap_errf(err, AP_ERR_ARG, "predictor channels c1=%d c2=%d out of range [1, 4096]",
                       c->c1, c->c2);
    if (c->query_fusion != 0 && c->query_fusion != 1)
        return ap_errf(err, AP_ERR_ARG, "predictor query_fusion %d must be 0 or 1", c->query_fusion);
    if (c->n_layers < 0 || c->n_layers > AP_PRED_MAX_LAYERS)
        return ap_errf(err, AP_ERR_ARG, "predictor n_layers %d out of range [0, %d]", c->n_layers,
                       AP_PRED_MAX_LAYERS);
    if (c->n_layers == 0 && c->n_models != 1)
        return ap_errf(err, AP_ERR_ARG, "a unified predictor (no layer map) has 1 model, not %d",
                       c->n_models);
    if (c->n_models < 1 || (c->n_layers > 0 && c->n_models > c->n_layers))
        return ap_errf(err, AP_ERR_ARG, "predictor n_models %d out of range [1, %d]", c->n_models,
                       c->n_layers > 0 ? c->n_layers : 1);
    for (int l = 0; l < c->n_layers; l++)
        if (c->layer_map[l] < 0 || c->layer_map[l] >= c->n_models)
            return ap_errf(err, AP_ERR_ARG, "predictor layer_map[%d] = %d is not a model in [0, %d)",
                           l, c->layer_map[l], c->n_models);
    return AP_OK;
}

void ap_pred_layout_of(const ap_pred_config *c, ap_pred_layout *lay) {
    size_t c1 = (size_t)c->c1, c2 = (size_t)c->c2;
    lay->w1 = 0;
    lay->b1 = lay->w1 + c1 * 9;
    lay->w2 = lay->b1 + c1;
    lay->b2 = lay->w2 + c2 * c1 * 9;
    lay->w3 = lay->b2 + c2;
    lay->b3 = lay->w3 + c2;
    lay->q = lay->b3 + 1;
    lay->total = lay->q + (c->query_fusion ? 1 : 0);
}

size_t ap_pred_param_count(const ap_pred_config *c) {
    ap_pred_layout lay;
    ap_pred_layout_of(c, &lay);
    return lay.total;
}

char *ap_pred_layer_map_to_json(const ap_pred_config *c) {
    cJSON *arr = cJSON_CreateArray();
    char *s = NULL;
    if (!arr) return NULL;
    for (int l = 0; l < c->n_layers; l++) {
        cJSON *v = cJSON_CreateNumber(c->layer_map[l]);
        if (!v) goto cleanup;
        cJSON_AddItemToArray(arr, v);
    }
    s = cJSON_PrintUnformatted(arr);
cleanup:
    cJSON_Delete(arr);
    return s;
}

char *ap_pred_config_to_json(const ap_pred_config *c) {
    char *s = NULL;
    cJSON *o = cJSON_CreateObject();
    cJSON *map = cJSON_CreateArray();
    if (!o || !map) goto cleanup;
    for (int l = 0; l < c->n_layers; l++) cJSON_AddItemToArray(map, cJSON_CreateNumber(c->layer_map[l]));
    if (!cJSON_AddNumberToObject(o, "history", c->history) ||
        !cJSON_AddNumberToObject(o, "block", c->block) ||
        !cJSON_AddNumberToObject(o, "sink_blocks", c->sink_blocks) ||
        !cJSON_AddNumberToObject(o, "local_blocks", c->local_blocks) ||
        !cJSON_AddNumberToObject(o, "c1", c->c1) || !cJSON_AddNumberToObject(o, "c2", c->c2) ||
        !cJSON_AddNumberToObject(o, "n_models", c->n_models) ||
        !cJSON_AddNumberToObject(o, "n_layers", c->n_layers) ||
        !cJSON_AddNumberToObject(o, "query_fusion", c->query_fusion) ||
        !cJSON_AddNumberToObject(o, "param_count", (double)ap_pred_param_count(c)))
        goto cleanup;
    cJSON_AddItemToObject(o, "layer_map", map);
    map = NULL;
    s = cJSON_PrintUnformatted(o);
cleanup:
    cJSON_Delete(map);
    cJSON_Delete(o);
    return s;
}

/* Integer field: present, integral, within int range. */
static int json_int(const cJSON *o, const char *key, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (d != floor(d) || d < -2147483647.0 || d > 2147483647.0) return 0;
    *out = (int)d;
    return 1;
}

ap_status ap_pred_config_from_json(const char *json, ap_pred_config *c, ap_err *err) {
    ap_status st = AP_OK;
    ap_pred_config tmp;
    ap_pred_config_default(&tmp);
    cJSON *o = json ? cJSON_Parse(json) : NULL;
    if (!cJSON_IsObject(o)) {
        st = ap_errf(err, AP_ERR_FORMAT, "predictor config is not a JSON object");
        goto cleanup;
    }
    static const char *keys[] = {"history", "block", "sink_blocks", "local_blocks",
                                 "c1",      "c2",    "n_models",    "n_layers"};
    int *dst[] = {&tmp.history, &tmp.block, &tmp.sink_blocks, &tmp.local_blocks,
                  &tmp.c1,      &tmp.c2,    &tmp.n_models,    &tmp.n_layers};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!json_int(o, keys[i], dst[i])) {
            st = ap_errf(err, AP_ERR_FORMAT, "predictor config: missing or non-integer \"%s\"",
                         keys[i]);
            goto cleanup;
        }
    if (tmp.n_layers < 0 || tmp.n_layers > AP_PRED_MAX_LAYERS) {
        st = ap_errf(err, AP_ERR_FORMAT, "predictor config: n_layers %d out of range [0, %d]",
                     tmp.n_layers, AP_PRED_MAX_LAYERS);
        goto cleanup;
    }
    if (cJSON_GetObjectItemCaseSensitive(o, "query_fusion") &&
        (!json_int(o, "query_fusion", &tmp.query_fusion) ||
         (tmp.query_fusion != 0 && tmp.query_fusion != 1))) {
        st = ap_errf(err, AP_ERR_FORMAT, "predictor config: \"query_fusion\" must be 0 or 1");
        goto cleanup;
    }
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(o, "layer_map");
    if (!cJSON_IsArray(map) || cJSON_GetArraySize(map) != tmp.n_layers) {
        st = ap_errf(err, AP_ERR_FORMAT, "predictor config: layer_map must be an array of %d ints",
                     tmp.n_layers);
        goto cleanup;
    }
    int l = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, map) {
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
            fabs(v->valuedouble) > 1e9) {
            st = ap_errf(err, AP_ERR_FORMAT, "predictor config: layer_map[%d] is not an integer", l);
            goto cleanup;
        }
        tmp.layer_map[l++] = (int)v->valuedouble;
    }
    st = ap_pred_config_validate(&tmp, err);
    if (st != AP_OK) {
        st = AP_ERR_FORMAT;
        if (err) err->status = st;
        goto cleanup;
    }
    *c = tmp;
cleanup:
    cJSON_Delete(o);
    return st;
}

/* -------------------------------------------------------------- lifecycle */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fill_uniform(float *a, size_t n, double bound, uint64_t *rng) {
    for (size_t i = 0; i < n; i++) {
        double u = (double)(splitmix64(rng) >> 11) * 0x1.0p-53;
        a[i] = (float)((2.0 * u - 1.0) * bound);
    }
}

ap_status ap_predictor_create(const ap_pred_config *c, uint64_t seed, ap_predictor **out,
                              ap_err *err) {
    ap_status st = ap_pred_config_validate(c, err);
    ap_predictor *p = NULL;
    *out = NULL;
    if (st != AP_OK) goto cleanup;
    p = calloc(1, sizeof *p);
    if (!p) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory creating the predictor");
        goto cleanup;
    }
    p->cfg = *c;
    p->n_threads = 2;
    ap_pred_layout_of(c, &p->lay);
    p->params = malloc(sizeof(float) * p->lay.total * (size_t)c->n_models);
    if (!p->params) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for predictor parameters");
        goto cleanup;
    }
    uint64_t rng = seed;
    const ap_pred_layout *L = &p->lay;
    for (int m = 0; m < c->n_models; m++) {
        float *w = p->params + (size_t)m * L->total;
        double b1 = 1.0 / sqrt(9.0), b2 = 1.0 / sqrt(9.0 * c->c1), b3 = 1.0 / sqrt((double)c->c2);
        fill_uniform(w + L->w1, L->b1 - L->w1, b1, &rng);
        fill_uniform(w + L->b1, L->w2 - L->b1, b1, &rng);
        fill_uniform(w + L->w2, L->b2 - L->w2, b2, &rng);
        fill_uniform(w + L->b2, L->w3 - L->b2, b2, &rng);
        fill_uniform(w + L->w3, L->b3 - L->w3, b3, &rng);
        fill_uniform(w + L->b3, 1, b3, &rng);
        /* Equal say for the history and the query at the start (both
         * z-scored); the prototype learned ~1.2 from there. */
        if (c->query_fusion) w[L->q] = 1.0f;
    }
    *out = p;
    p = NULL;
cleanup:
    ap_predictor_free(p);
    return st;
}

void ap_predictor_free(ap_predictor *p) {
    if (!p) return;
    free(p->params);
    free(p);
}

const ap_pred_config *ap_predictor_config(const ap_predictor *p) { return &p->cfg; }

float *ap_predictor_params(ap_predictor *p, size_t *n) {
    if (n) *n = p->lay.total * (size_t)p->cfg.n_models;
    return p->params;
}

const float *ap_predictor_params_const(const ap_predictor *p, size_t *n) {
    if (n) *n = p->lay.total * (size_t)p->cfg.n_models;
    return p->params;
}

int ap_predictor_model_of_layer(const ap_predictor *p, int layer) {
    if (layer < 0) return -1;
    if (p->cfg.n_layers == 0) return 0;
    return layer < p->cfg.n_layers ? p->cfg.layer_map[layer] : -1;
}

void ap_predictor_set_threads(ap_predictor *p, int n_threads) {
    p->n_threads = n_threads < 1 ? 1 : n_threads;
}

size_t ap_pred_workspace_bytes(const ap_pred_config *c, int N, int H, int W) {
    if (N < 1 || H < 1 || W < 1) return 0;
    size_t pool = sizeof(float) * (size_t)N * (size_t)c->c2 * (size_t)W;
    size_t mask = (size_t)N * (size_t)c->c2 * (size_t)H * (size_t)W;
    return pool + mask;
}

/* ------------------------------------------------------------ CPU kernels */

/* 3x3, padding 1: col[(ci*9 + kh*3 + kw)][h*W + w] = in[ci][h+kh-1][w+kw-1],
 * matching PyTorch's weight layout [out][in][kh][kw] flattened. */
static void im2col3(const float *in, int C, int H, int W, float *col) {
    size_t HW = (size_t)H * W;
    for (int ci = 0; ci < C; ci++)
        for (int kh = 0; kh < 3; kh++)
            for (int kw = 0; kw < 3; kw++) {
                float *dst = col + (size_t)(ci * 9 + kh * 3 + kw) * HW;
                for (int h = 0; h < H; h++) {
                    float *d = dst + (size_t)h * W;
                    int hs = h + kh - 1;
                    if (hs < 0 || hs >= H) {
                        memset(d, 0, sizeof(float) * (size_t)W);
                        continue;
                    }
                    const float *s = in + ((size_t)ci * H + hs) * W;
                    if (kw == 1) {
                        memcpy(d, s, sizeof(float) * (size_t)W);
                    } else if (kw == 0) {
                        d[0] = 0.0f;
                        if (W > 1) memcpy(d + 1, s, sizeof(float) * (size_t)(W - 1));
                    } else {
                        if (W > 1) memcpy(d, s + 1, sizeof(float) * (size_t)(W - 1));
                        d[W - 1] = 0.0f;
                    }
                }
            }
}

/* Adjoint of im2col3: out[ci][hs][ws] = sum of the col entries that read it. */
static void col2im3(const float *col, int C, int H, int W, float *out) {
    size_t HW = (size_t)H * W;
    memset(out, 0, sizeof(float) * (size_t)C * HW);
    for (int ci = 0; ci < C; ci++)
        for (int kh = 0; kh < 3; kh++)
            for (int kw = 0; kw < 3; kw++) {
                const float *src = col + (size_t)(ci * 9 + kh * 3 + kw) * HW;
                for (int h = 0; h < H; h++) {
                    int hs = h + kh - 1;
                    if (hs < 0 || hs >= H) continue;
                    const float *s = src + (size_t)h * W;
                    float *d = out + ((size_t)ci * H + hs) * W;
                    int w0 = kw == 0 ? 1 : 0, w1 = kw == 2 ? W - 1 : W;
                    int off = kw - 1;
                    for (int w = w0; w < w1; w++) d[w + off] += s[w];
                }
            }
}

typedef struct {
    const ap_predictor *p;
    const float *w;   /* model parameters */
    const float *x;   /* [n][H][W], already offset to this chunk */
    float *y;         /* [n][W] or NULL */
    const float *dy;  /* backward only */
    float *pool;      /* [n][c2][W] workspace slice or NULL */
    uint8_t *mask;    /* [n][c2][H][W] workspace slice or NULL */
    float *grad;      /* backward: this worker's private gradient (one model) */
    int n, H, W;
    int backward;
    ap_status st;
} pred_job;

/* conv1 + ReLU and the conv2 input columns for one sample. */
static void conv1_fwd(const ap_pred_layout *L, int c1, const float *w, const float *x, int H,
                      int W, float *col1, float *a1, float *col2) {
    int HW = H * W;
    im2col3(x, 1, H, W, col1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c1, HW, 9, 1.0f, w + L->w1, 9, col1,
                HW, 0.0f, a1, HW);
    for (int c = 0; c < c1; c++) {
        float b = w[L->b1 + c], *r = a1 + (size_t)c * HW;
        for (int i = 0; i < HW; i++) {
            float v = r[i] + b;
            r[i] = v > 0.0f ? v : 0.0f;
        }
    }
    im2col3(a1, c1, H, W, col2);
}

static void *pred_worker(void *arg) {
    pred_job *j = arg;
    const ap_pred_config *c = &j->p->cfg;
    const ap_pred_layout *L = &j->p->lay;
    const float *w = j->w;
    int H = j->H, W = j->W, c1 = c->c1, c2 = c->c2, K2 = 9 * c1;
    size_t HW = (size_t)H * W;
    /* One scratch block per worker and call: a few MB, negligible next to the
     * GEMMs, and it keeps the predictor free of mutable state. */
    size_t n_scratch = HW * (9 + (size_t)c1 + (size_t)K2 + (size_t)c2) + (size_t)c2 * W;
    if (j->backward) n_scratch += HW * ((size_t)K2 + (size_t)c1);
    float *scratch = malloc(sizeof(float) * n_scratch);
    if (!scratch) {
        j->st = AP_ERR_NOMEM;
        return NULL;
    }
    float *col1 = scratch, *a1 = col1 + 9 * HW, *col2 = a1 + c1 * HW, *a2 = col2 + K2 * HW;
    float *pl = a2 + c2 * HW;
    float *dcol2 = pl + (size_t)c2 * W, *dr1 = dcol2 + K2 * HW;
    float inv_h = 1.0f / (float)H;

    for (int s = 0; s < j->n; s++) {
        const float *xs = j->x + (size_t)s * HW;
        conv1_fwd(L, c1, w, xs, H, W, col1, a1, col2);
        float *pool = j->pool ? j->pool + (size_t)s * c2 * W : pl;
        uint8_t *mask = j->mask ? j->mask + (size_t)s * c2 * HW : NULL;
        if (!j->backward) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c2, (int)HW, K2, 1.0f,
                        w + L->w2, K2, col2, (int)HW, 0.0f, a2, (int)HW);
            for (int co = 0; co < c2; co++) {
                float b = w[L->b2 + co];
                const float *r = a2 + co * HW;
                uint8_t *mk = mask ? mask + co * HW : NULL;
                float *pc = pool + (size_t)co * W;
                for (int x = 0; x < W; x++) pc[x] = 0.0f;
                for (int h = 0; h < H; h++) {
                    const float *rr = r + (size_t)h * W;
                    for (int x = 0; x < W; x++) {
                        float v = rr[x] + b;
                        int on = v > 0.0f;
                        if (mk) mk[(size_t)h * W + x] = (uint8_t)on;
                        pc[x] += on ? v : 0.0f;
                    }
                }
                for (int x = 0; x < W; x++) pc[x] *= inv_h;
            }
            if (j->y) {
                float *ys = j->y + (size_t)s * W;
                for (int x = 0; x < W; x++) ys[x] = w[L->b3];
                for (int co = 0; co < c2; co++) {
                    float wc = w[L->w3 + co];
                    const float *pc = pool + (size_t)co * W;
                    for (int x = 0; x < W; x++) ys[x] += wc * pc[x];
                }
            }
            continue;
        }
        /* Backward: conv1 was recomputed above (3% of the work) so the
         * workspace stays at one byte per conv2 activation. */
        const float *dys = j->dy + (size_t)s * W;
        float *g = j->grad;
        float *da2 = a2;
        for (int x = 0; x < W; x++) g[L->b3] += dys[x];
        for (int co = 0; co < c2; co++) {
            const float *pc = pool + (size_t)co * W;
            float acc = 0.0f, wc = w[L->w3 + co], gb = 0.0f;
            for (int x = 0; x < W; x++) acc += dys[x] * pc[x];
            g[L->w3 + co] += acc;
            const uint8_t *mk = mask + co * HW;
            float *d = da2 + co * HW;
            for (int h = 0; h < H; h++)
                for (int x = 0; x < W; x++) {
                    float v = mk[(size_t)h * W + x] ? wc * dys[x] * inv_h : 0.0f;
                    d[(size_t)h * W + x] = v;
                    gb += v;
                }
            g[L->b2 + co] += gb;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c2, K2, (int)HW, 1.0f, da2, (int)HW,
                    col2, (int)HW, 1.0f, g + L->w2, K2);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K2, (int)HW, c2, 1.0f, w + L->w2, K2,
                    da2, (int)HW, 0.0f, dcol2, (int)HW);
        col2im3(dcol2, c1, H, W, dr1);
        for (int ci = 0; ci < c1; ci++) {
            float *d = dr1 + ci * HW, gb = 0.0f;
            const float *r = a1 + ci * HW;
            for (size_t i = 0; i < HW; i++) {
                float v = r[i] > 0.0f ? d[i] : 0.0f;
                d[i] = v;
                gb += v;
            }
            g[L->b1 + ci] += gb;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c1, 9, (int)HW, 1.0f, dr1, (int)HW,
                    col1, (int)HW, 1.0f, g + L->w1, 9);
    }
    free(scratch);
    j->st = AP_OK;
    return NULL;
}

/* Split the batch into contiguous chunks, one per worker; the calling thread
 * takes the first chunk. Gradients go to private buffers summed in worker
 * order afterwards, so results do not depend on scheduling. */
static ap_status run_jobs(const ap_predictor *p, int m, const float *x, int N, int H, int W,
                          float *y, const float *dy, void *ws, float *grad, int backward,
                          ap_err *err) {
    ap_status st = AP_OK;
    enum { MAX_T = 64 };
    pred_job jobs[MAX_T];
    pthread_t tid[MAX_T];
    int started[MAX_T] = {0};
    float *gbuf = NULL;
    const ap_pred_config *c = &p->cfg;
    size_t P = p->lay.total;
    int nt = p->n_threads < N ? p->n_threads : N;
    if (nt > MAX_T) nt = MAX_T;
    if (nt < 1) nt = 1;
    if (backward) {
        gbuf = calloc((size_t)nt * P, sizeof(float));
        if (!gbuf) return ap_errf(err, AP_ERR_NOMEM, "out of memory for predictor gradients");
    }
    float *pool = ws ? (float *)ws : NULL;
    uint8_t *mask = ws ? (uint8_t *)ws + sizeof(float) * (size_t)N * c->c2 * W : NULL;
    size_t HW = (size_t)H * W;
    for (int t = 0; t < nt; t++) {
        int n0 = (int)((long)N * t / nt), n1 = (int)((long)N * (t + 1) / nt);
        pred_job *j = &jobs[t];
        memset(j, 0, sizeof *j);
        j->p = p;
        j->w = p->params + (size_t)m * P;
        j->x = x + (size_t)n0 * HW;
        j->y = y ? y + (size_t)n0 * W : NULL;
        j->dy = dy ? dy + (size_t)n0 * W : NULL;
        j->pool = pool ? pool + (size_t)n0 * c->c2 * W : NULL;
        j->mask = mask ? mask + (size_t)n0 * c->c2 * HW : NULL;
        j->grad = gbuf ? gbuf + (size_t)t * P : NULL;
        j->n = n1 - n0;
        j->H = H;
        j->W = W;
        j->backward = backward;
        j->st = AP_ERR_INTERNAL;
    }
    for (int t = 1; t < nt; t++) {
        if (pthread_create(&tid[t], NULL, pred_worker, &jobs[t]) == 0)
            started[t] = 1;
        else
            pred_worker(&jobs[t]); /* no thread available: do the chunk here */
    }
    pred_worker(&jobs[0]);
    for (int t = 1; t < nt; t++)
        if (started[t]) pthread_join(tid[t], NULL);
    for (int t = 0; t < nt; t++)
        if (jobs[t].st != AP_OK) {
            st = ap_errf(err, jobs[t].st, "predictor: out of memory for scratch buffers");
            goto cleanup;
        }
    if (backward) {
        float *g = grad + (size_t)m * P;
        for (int t = 0; t < nt; t++)
            for (size_t i = 0; i < P; i++) g[i] += gbuf[(size_t)t * P + i];
    }
cleanup:
    free(gbuf);
    return st;
}

static ap_status check_call(const ap_predictor *p, int m, const void *x, int N, int H, int W,
                            ap_err *err) {
    if (!p || !x) return ap_errf(err, AP_ERR_ARG, "predictor: NULL argument");
    if (m < 0 || m >= p->cfg.n_models)
        return ap_errf(err, AP_ERR_ARG, "predictor: model %d out of range [0, %d)", m,
                       p->cfg.n_models);
    if (N < 1 || H < 1 || W < 1)
        return ap_errf(err, AP_ERR_ARG, "predictor: batch shape N=%d H=%d W=%d must be positive", N,
                       H, W);
    /* The GEMM dimensions are ints; keep H*W*9*c1 representable. */
    if ((double)H * W * 9.0 * p->cfg.c1 > 2147483647.0)
        return ap_errf(err, AP_ERR_RANGE, "predictor: H*W = %d*%d is too large", H, W);
    return AP_OK;
}

ap_status ap_predictor_forward(const ap_predictor *p, int m, const float *x, int N, int H,
                               int W, float *y, ap_err *err) {
    ap_status st = check_call(p, m, x, N, H, W, err);
    if (st != AP_OK) return st;
    return run_jobs(p, m, x, N, H, W, y, NULL, NULL, NULL, 0, err);
}

ap_status ap_predictor_forward_train(const ap_predictor *p, int m, const float *x, int N,
                                     int H, int W, float *y, void *ws, size_t ws_bytes,
                                     ap_err *err) {
    ap_status st = check_call(p, m, x, N, H, W, err);
    if (st != AP_OK) return st;
    if (!ws || ws_bytes < ap_pred_workspace_bytes(&p->cfg, N, H, W))
        return ap_errf(err, AP_ERR_ARG, "predictor: workspace of %zu bytes, need %zu", ws_bytes,
                       ap_pred_workspace_bytes(&p->cfg, N, H, W));
    return run_jobs(p, m, x, N, H, W, y, NULL, ws, NULL, 0, err);
}

ap_status ap_predictor_backward(const ap_predictor *p, int m, const float *x, int N, int H,
                                int W, const float *dy, const void *ws, size_t ws_bytes,
                                float *grad, ap_err *err) {
    ap_status st = check_call(p, m, x, N, H, W, err);
    if (st != AP_OK) return st;
    if (!dy || !grad) return ap_errf(err, AP_ERR_ARG, "predictor backward: NULL dy or grad");
    if (!ws || ws_bytes < ap_pred_workspace_bytes(&p->cfg, N, H, W))
        return ap_errf(err, AP_ERR_ARG, "predictor: workspace of %zu bytes, need %zu", ws_bytes,
                       ap_pred_workspace_bytes(&p->cfg, N, H, W));
    /* The workers only read the workspace in backward. */
    return run_jobs(p, m, x, N, H, W, NULL, dy, (void *)ws, grad, 1, err);
}

/* ------------------------------------------------------ float64 reference */

/* Direct 3x3 cross-correlation with zero padding, as PyTorch defines it. */
static void conv3x3_ref(const double *in, int Cin, int Cout, int H, int W, const double *wt,
                        const double *bias, double *out) {
    for (int co = 0; co < Cout; co++)
        for (int h = 0; h < H; h++)
            for (int x = 0; x < W; x++) {
                double acc = bias[co];
                for (int ci = 0; ci < Cin; ci++)
                    for (int kh = 0; kh < 3; kh++)
                        for (int kw = 0; kw < 3; kw++) {
                            int hs = h + kh - 1, xs = x + kw - 1;
                            if (hs < 0 || hs >= H || xs < 0 || xs >= W) continue;
                            acc += wt[((co * Cin + ci) * 3 + kh) * 3 + kw] *
                                   in[((size_t)ci * H + hs) * W + xs];
                        }
                out[((size_t)co * H + h) * W + x] = acc;
            }
}

static void relu_ref(double *a, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (a[i] < 0.0) a[i] = 0.0;
}

void ap_pred_forward_ref(const ap_pred_config *c, const double *params, const double *x, int N,
                         int H, int W, double *y) {
    ap_pred_layout L;
    ap_pred_layout_of(c, &L);
    size_t HW = (size_t)H * W;
    double *a1 = malloc(sizeof(double) * HW * c->c1);
    double *a2 = malloc(sizeof(double) * HW * c->c2);
    if (!a1 || !a2) goto cleanup; /* test-only code: callers check y */
    for (int n = 0; n < N; n++) {
        conv3x3_ref(x + n * HW, 1, c->c1, H, W, params + L.w1, params + L.b1, a1);
        relu_ref(a1, HW * c->c1);
        conv3x3_ref(a1, c->c1, c->c2, H, W, params + L.w2, params + L.b2, a2);
        relu_ref(a2, HW * c->c2);
        for (int x0 = 0; x0 < W; x0++) {
            double acc = params[L.b3];
            for (int co = 0; co < c->c2; co++) {
                double m = 0.0;
                for (int h = 0; h < H; h++) m += a2[((size_t)co * H + h) * W + x0];
                acc += params[L.w3 + co] * (m / H);
            }
            y[(size_t)n * W + x0] = acc;
        }
    }
cleanup:
    free(a1);
    free(a2);
}

void ap_pred_backward_ref(const ap_pred_config *c, const double *params, const double *x, int N,
                          int H, int W, const double *dy, double *grad) {
    ap_pred_layout L;
    ap_pred_layout_of(c, &L);
    int c1 = c->c1, c2 = c->c2;
    size_t HW = (size_t)H * W;
    double *a1 = malloc(sizeof(double) * HW * c1);
    double *a2 = malloc(sizeof(double) * HW * c2);
    double *d2 = malloc(sizeof(double) * HW * c2);
    double *d1 = malloc(sizeof(double) * HW * c1);
    if (!a1 || !a2 || !d2 || !d1) goto cleanup;
    for (int n = 0; n < N; n++) {
        const double *xn = x + n * HW, *dyn = dy + (size_t)n * W;
        conv3x3_ref(xn, 1, c1, H, W, params + L.w1, params + L.b1, a1);
        relu_ref(a1, HW * c1);
        conv3x3_ref(a1, c1, c2, H, W, params + L.w2, params + L.b2, a2);
        relu_ref(a2, HW * c2);
        for (int x0 = 0; x0 < W; x0++) grad[L.b3] += dyn[x0];
        for (int co = 0; co < c2; co++)
            for (int x0 = 0; x0 < W; x0++) {
                double m = 0.0;
                for (int h = 0; h < H; h++) m += a2[((size_t)co * H + h) * W + x0];
                grad[L.w3 + co] += dyn[x0] * m / H;
                for (int h = 0; h < H; h++) {
                    size_t i = ((size_t)co * H + h) * W + x0;
                    d2[i] = a2[i] > 0.0 ? params[L.w3 + co] * dyn[x0] / H : 0.0;
                }
            }
        memset(d1, 0, sizeof(double) * HW * c1);
        for (int co = 0; co < c2; co++)
            for (int h = 0; h < H; h++)
                for (int x0 = 0; x0 < W; x0++) {
                    double g = d2[((size_t)co * H + h) * W + x0];
                    if (g == 0.0) continue;
                    grad[L.b2 + co] += g;
                    for (int ci = 0; ci < c1; ci++)
                        for (int kh = 0; kh < 3; kh++)
                            for (int kw = 0; kw < 3; kw++) {
                                int hs = h + kh - 1, xs = x0 + kw - 1;
                                if (hs < 0 || hs >= H || xs < 0 || xs >= W) continue;
                                size_t wi = (size_t)((co * c1 + ci) * 3 + kh) * 3 + kw;
                                size_t ii = ((size_t)ci * H + hs) * W + xs;
                                grad[L.w2 + wi] += g * a1[ii];
                                d1[ii] += g * params[L.w2 + wi];
                            }
                }
        for (int ci = 0; ci < c1; ci++)
            for (int h = 0; h < H; h++)
                for (int x0 = 0; x0 < W; x0++) {
                    size_t i = ((size_t)ci * H + h) * W + x0;
                    double g = a1[i] > 0.0 ? d1[i] : 0.0;
                    if (g == 0.0) continue;
                    grad[L.b1 + ci] += g;
                    for (int kh = 0; kh < 3; kh++)
                        for (int kw = 0; kw < 3; kw++) {
                            int hs = h + kh - 1, xs = x0 + kw - 1;
                            if (hs < 0 || hs >= H || xs < 0 || xs >= W) continue;
                            grad[L.w1 + (size_t)ci * 9 + kh * 3 + kw] +=
                                g * xn[(size_t)hs * W + xs];
                        }
                }
    }
cleanup:
    free(a1);
    free(a2);
    free(d2);
    free(d1);
}
