#include "helpers/ref_forward.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/quant.h"

typedef struct {
    int n_layer, E, H, Hkv, hd, F, V;
    double eps, base;
} hp_t;

static ap_status read_hp(const ap_gguf *g, hp_t *h, ap_err *err) {
    int64_t v;
    double d;
    ap_status st;
#define GI(key, field)                                                                         \
    do {                                                                                       \
        if ((st = ap_gguf_get_int(g, key, &v, err))) return st;                                \
        h->field = (int)v;                                                                     \
    } while (0)
    GI("llama.block_count", n_layer);
    GI("llama.embedding_length", E);
    GI("llama.attention.head_count", H);
    GI("llama.feed_forward_length", F);
#undef GI
    h->Hkv = h->H;
    if (ap_gguf_find_key(g, "llama.attention.head_count_kv") >= 0) {
        if ((st = ap_gguf_get_int(g, "llama.attention.head_count_kv", &v, err))) return st;
        h->Hkv = (int)v;
    }
    h->hd = h->E / h->H;
    if (ap_gguf_find_key(g, "llama.attention.key_length") >= 0) {
        if ((st = ap_gguf_get_int(g, "llama.attention.key_length", &v, err))) return st;
        h->hd = (int)v;
    }
    h->base = 10000.0;
    if (ap_gguf_find_key(g, "llama.rope.freq_base") >= 0) {
        if ((st = ap_gguf_get_float(g, "llama.rope.freq_base", &d, err))) return st;
        h->base = d;
    }
    if ((st = ap_gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", &d, err))) return st;
    h->eps = d;
    const ap_gguf_tensor *t = ap_gguf_find_tensor(g, "token_embd.weight");
    if (!t) return ap_errf(err, AP_ERR_FORMAT, "ref: missing token_embd.weight");
    h->V = (int)t->ne[1];
    return AP_OK;
}

/* The whole tensor as doubles, after checking its element count. */
static ap_status tensor_d(const ap_gguf *g, const char *name, int64_t ne0, int64_t ne1,
                          double **out, ap_err *err) {
    const ap_gguf_tensor *t = ap_gguf_find_tensor(g, name);
    *out = NULL;
    if (!t) return ap_errf(err, AP_ERR_FORMAT, "ref: missing tensor %s", name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1)
        return ap_errf(err, AP_ERR_FORMAT, "ref: tensor %s has an unexpected shape", name);
    size_t row = ap_ggml_row_size((uint32_t)t->type, ne0);
    float *f = malloc((size_t)ne0 * sizeof *f);
    double *d = malloc((size_t)(ne0 * ne1) * sizeof *d);
    ap_status st = AP_OK;
    if (!f || !d) {
        st = ap_errf(err, AP_ERR_NOMEM, "ref: out of memory");
        goto cleanup;
    }
    for (int64_t r = 0; r < ne1; r++) {
        st = ap_dequant_row_ref(t->type, (const uint8_t *)t->data + (size_t)r * row, f, ne0, err);
        if (st) goto cleanup;
        for (int64_t i = 0; i < ne0; i++) d[r * ne0 + i] = f[i];
    }
    *out = d;
    d = NULL;
cleanup:
    free(f);
    free(d);
    return st;
}

static void rmsnorm(double *y, const double *x, const double *g, int n, double eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * s * g[i];
}

/* y[o] = sum_i W[o][i] x[i] */
static void matvec(double *y, const double *W, const double *x, int n_in, int n_out) {
    for (int o = 0; o < n_out; o++) {
        double acc = 0.0;
        for (int i = 0; i < n_in; i++) acc += W[(size_t)o * n_in + i] * x[i];
        y[o] = acc;
    }
}

static void rope(double *v, int pos, int hd, double base) {
    for (int i = 0; i < hd / 2; i++) {
        /* The angle as transformers forms it: float32 inv_freq, float32
         * product; only cos/sin and the rotation are in double. */
        float inv = 1.0f / powf((float)base, (float)(2 * i) / (float)hd);
        double a = (double)((float)pos * inv);
        double c = cos(a), s = sin(a);
        double x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * c - x1 * s;
        v[2 * i + 1] = x1 * c + x0 * s;
    }
}

void ap_ref_out_free(ap_ref_out *o) {
    if (!o) return;
    free(o->logits);
    free(o->attn);
    memset(o, 0, sizeof *o);
}

ap_status ap_ref_forward(const ap_gguf *g, const int32_t *tokens, int n, ap_ref_out *out,
                         ap_err *err) {
    ap_status st;
    hp_t h = {0};
    memset(out, 0, sizeof *out);
    if ((st = read_hp(g, &h, err))) return st;
    const int E = h.E, hd = h.hd, qd = h.H * hd, kvd = h.Hkv * hd, F = h.F, V = h.V;
    double *emb = NULL, *outw = NULL, *onorm = NULL, *w[9] = {0};
    double *x = NULL, *xn = NULL, *q = NULL, *k = NULL, *v = NULL, *att = NULL, *tmp = NULL,
           *gate = NULL, *up = NULL, *p = NULL;
    char name[96];

    out->n_tokens = n;
    out->n_vocab = V;
    out->n_layer = h.n_layer;
    out->n_head = h.H;
    out->logits = calloc((size_t)n * V, sizeof(double));
    out->attn = calloc((size_t)h.n_layer * h.H * n * n, sizeof(double));
    x = calloc((size_t)n * E, sizeof *x);
    xn = calloc((size_t)E, sizeof *xn);
    q = calloc((size_t)n * qd, sizeof *q);
    k = calloc((size_t)n * kvd, sizeof *k);
    v = calloc((size_t)n * kvd, sizeof *v);
    att = calloc((size_t)n * qd, sizeof *att);
    tmp = calloc((size_t)(E > F ? E : F), sizeof *tmp);
    gate = calloc((size_t)F, sizeof *gate);
    up = calloc((size_t)F, sizeof *up);
    p = calloc((size_t)n, sizeof *p);
    if (!out->logits || !out->attn || !x || !xn || !q || !k || !v || !att || !tmp || !gate ||
        !up || !p) {
        st = ap_errf(err, AP_ERR_NOMEM, "ref: out of memory");
        goto cleanup;
    }
    if ((st = tensor_d(g, "token_embd.weight", E, V, &emb, err))) goto cleanup;
    if ((st = tensor_d(g, "output_norm.weight", E, 1, &onorm, err))) goto cleanup;
    if (ap_gguf_find_tensor(g, "output.weight")) {
        if ((st = tensor_d(g, "output.weight", E, V, &outw, err))) goto cleanup;
    }
    for (int t = 0; t < n; t++)
        for (int i = 0; i < E; i++) x[(size_t)t * E + i] = emb[(size_t)tokens[t] * E + i];

    for (int l = 0; l < h.n_layer; l++) {
        static const char *const names[9] = {"attn_norm", "attn_q",   "attn_k",
                                             "attn_v",    "attn_output", "ffn_norm",
                                             "ffn_gate",  "ffn_up",   "ffn_down"};
        const int ne0[9] = {E, E, E, E, qd, E, E, E, F};
        const int ne1[9] = {1, qd, kvd, kvd, E, 1, F, F, E};
        for (int i = 0; i < 9; i++) {
            free(w[i]);
            w[i] = NULL;
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, names[i]);
            if ((st = tensor_d(g, name, ne0[i], ne1[i], &w[i], err))) goto cleanup;
        }
        for (int t = 0; t < n; t++) {
            rmsnorm(xn, x + (size_t)t * E, w[0], E, h.eps);
            matvec(q + (size_t)t * qd, w[1], xn, E, qd);
            matvec(k + (size_t)t * kvd, w[2], xn, E, kvd);
            matvec(v + (size_t)t * kvd, w[3], xn, E, kvd);
            for (int hh = 0; hh < h.H; hh++) rope(q + (size_t)t * qd + hh * hd, t, hd, h.base);
            for (int hh = 0; hh < h.Hkv; hh++) rope(k + (size_t)t * kvd + hh * hd, t, hd, h.base);
        }
        for (int hh = 0; hh < h.H; hh++) {
            int kh = hh / (h.H / h.Hkv);
            for (int t = 0; t < n; t++) {
                const double *qv = q + (size_t)t * qd + hh * hd;
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j <= t; j++) {
                    const double *kv = k + (size_t)j * kvd + kh * hd;
                    double s = 0.0;
                    for (int d = 0; d < hd; d++) s += qv[d] * kv[d];
                    p[j] = s / sqrt((double)hd);
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j <= t; j++) {
                    p[j] = exp(p[j] - mx);
                    sum += p[j];
                }
                double *arow = out->attn + (((size_t)l * h.H + hh) * n + t) * n;
                for (int j = 0; j <= t; j++) arow[j] = p[j] / sum;
                double *o = att + (size_t)t * qd + hh * hd;
                for (int d = 0; d < hd; d++) {
                    double acc = 0.0;
                    for (int j = 0; j <= t; j++) acc += arow[j] * v[(size_t)j * kvd + kh * hd + d];
                    o[d] = acc;
                }
            }
        }
        for (int t = 0; t < n; t++) {
            double *xt = x + (size_t)t * E;
            matvec(tmp, w[4], att + (size_t)t * qd, qd, E);
            for (int i = 0; i < E; i++) xt[i] += tmp[i];
            rmsnorm(xn, xt, w[5], E, h.eps);
            matvec(gate, w[6], xn, E, F);
            matvec(up, w[7], xn, E, F);
            for (int i = 0; i < F; i++) gate[i] = gate[i] / (1.0 + exp(-gate[i])) * up[i];
            matvec(tmp, w[8], gate, F, E);
            for (int i = 0; i < E; i++) xt[i] += tmp[i];
        }
    }
    for (int t = 0; t < n; t++) {
        rmsnorm(xn, x + (size_t)t * E, onorm, E, h.eps);
        matvec(out->logits + (size_t)t * V, outw ? outw : emb, xn, E, V);
    }

cleanup:
    if (st) ap_ref_out_free(out);
    for (int i = 0; i < 9; i++) free(w[i]);
    free(emb);
    free(outw);
    free(onorm);
    free(x);
    free(xn);
    free(q);
    free(k);
    free(v);
    free(att);
    free(tmp);
    free(gate);
    free(up);
    free(p);
    return st;
}
