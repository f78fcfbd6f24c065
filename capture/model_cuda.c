/* Llama forward pass on a CUDA device (design in model_cuda.h). Host side:
 * weight upload, buffers, the layer loop, eval semantics. Without CUDA in
 * the build only the stand-ins at the end are compiled. */
#include "capture/model_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/model_cuda_kernels.h"
#include "kernels/attention_cuda.h"
#include "kernels/cuda_util.h"
#include "kernels/quant.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/sparse_attn.h"
#include "kernels/swiglu.h"

void ap_cuda_model_opts_default(ap_cuda_model_opts *o) { memset(o, 0, sizeof *o); }

ap_status ap_cuda_model_create(const ap_gguf *g, const ap_model *m, int n_ctx,
                               ap_cuda_model **out, ap_err *err) {
    return ap_cuda_model_create_opts(g, m, n_ctx, NULL, out, err);
}

#ifdef AP_HAVE_CUDA

/* Tokens per micro-batch, as on the CPU: activations stay a few MB. */
#define UBATCH 512
/* Keys per block of decode attention and per page of the offloaded cache:
 * the kernel's 128-key chunks are 8 of them. */
#define KV_BLOCK 16
/* Floats dequantized per upload: bounds the host buffer, not the tensor. */
#define UPLOAD_FLOATS ((size_t)1 << 22)
/* Device weight offsets are multiples of this many floats (256 bytes). */
#define W_ALIGN 64

typedef struct {
    const float *attn_norm, *ffn_norm; /* [n_embd] */
    const float *wqkv; /* [n_head hd + 2 kv_dim][n_embd]: attn_q | attn_k | attn_v rows */
    const float *wo;   /* [n_embd][n_head hd] */
    const float *wgu;  /* [2 n_ff][n_embd]: ffn_gate | ffn_up rows */
    const float *wd;   /* [n_embd][n_ff] */
} layer_dev;

struct ap_cuda_model {
    ap_hparams hp;
    int n_ctx, n_past, ubatch, offload;
    size_t qd, kvd, qkvd; /* q row, k (or v) row, fused q|k|v row */
    ap_cuda_stream stream;
    ap_cmc_blas *blas;

    float *d_weights; /* one allocation, carved below */
    size_t weight_floats;
    const float *emb, *out_norm, *output; /* output == emb when tied */
    layer_dev *layers;

    /* KV cache [n_layer][n_ctx][kvd]: device memory, or pinned host memory
     * (h_k/h_v) whose device addresses are d_k/d_v. */
    float *d_k, *d_v, *h_k, *h_v;
    size_t cache_floats;

    float *d_rope; /* [n_ctx][head_dim], ap_rope_table */
    int32_t *d_tok; /* [ubatch] */
    float *d_x, *d_xn, *d_qkv, *d_att, *d_gu, *d_logits;
    int *d_setoff;   /* n_head_kv + 1 zeros: no listed blocks */
    void *d_work;    /* ap_sparse_attn_cuda work at n_ctx keys */
    size_t work_bytes;

    /* Offload only: one layer's keys/values for prefill attention, and the
     * decode page tables [n_layer][n_head_kv * max_pages]. */
    float *d_kl, *d_vl;
    const float **d_kp, **d_vp;
    int max_pages, pages_filled;

    size_t device_bytes, pinned_bytes;
};

/* ------------------------------------------------------------------ setup */

static ap_status dev_alloc(ap_cuda_model *cm, void **d, size_t bytes, ap_err *err) {
    ap_status st = ap_cuda_malloc(d, bytes, err);
    if (st == AP_OK) cm->device_bytes += bytes;
    return st;
}

static size_t align_floats(size_t n) { return (n + W_ALIGN - 1) / W_ALIGN * W_ALIGN; }

/* Dequantize tensor `name` (ne1 rows of ne0, as capture/model.c checks it),
 * check every value is finite, and upload it to d_dst through host, a
 * buffer of UPLOAD_FLOATS floats. */
static ap_status upload_tensor(ap_cuda_model *cm, const ap_gguf *g, const char *name, int64_t ne0,
                               int64_t ne1, float *host, float *d_dst, ap_err *err) {
    const ap_gguf_tensor *t = ap_gguf_find_tensor(g, name);
    if (!t) return ap_errf(err, AP_ERR_FORMAT, "missing tensor '%s'", name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return ap_errf(err, AP_ERR_FORMAT,
                       "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld] "
                       "(is this the file the model was loaded from?)",
                       name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                       (long long)t->ne[3], (long long)ne0, (long long)ne1);
    const ap_ggml_traits *tr = ap_ggml_type_traits((uint32_t)t->type);
    size_t row = ap_ggml_row_size((uint32_t)t->type, ne0);
    if (!tr || !tr->dequant_ok || row == 0)
        return ap_errf(err, AP_ERR_UNSUPPORTED, "tensor '%s' has type %d, which is not supported",
                       name, (int)t->type);
    if (t->nbytes / row < (size_t)ne1)
        return ap_errf(err, AP_ERR_FORMAT, "tensor '%s': %zu bytes cannot hold %lld rows", name,
                       t->nbytes, (long long)ne1);
    if ((size_t)ne0 > UPLOAD_FLOATS)
        return ap_errf(err, AP_ERR_UNSUPPORTED, "tensor '%s': rows of %lld are too long", name,
                       (long long)ne0);
    const int64_t rows_per = (int64_t)(UPLOAD_FLOATS / (size_t)ne0);
    for (int64_t r0 = 0; r0 < ne1; r0 += rows_per) {
        int64_t nr = ne1 - r0 < rows_per ? ne1 - r0 : rows_per;
        for (int64_t r = 0; r < nr; r++) {
            float *dst = host + (size_t)r * (size_t)ne0;
            const uint8_t *src = (const uint8_t *)t->data + (size_t)(r0 + r) * row;
            ap_status st = ap_dequant_row(t->type, src, dst, ne0, err);
            if (st) {
                char pre[160];
                snprintf(pre, sizeof pre, "tensor '%s'", name);
                ap_err_prefix(err, pre);
                return st;
            }
            /* One NaN weight poisons every logit: name it here. */
            for (int64_t i = 0; i < ne0; i++)
                if (!isfinite(dst[i]))
                    return ap_errf(err, AP_ERR_NUMERIC,
                                   "tensor '%s' has a non-finite value at row %lld, column %lld",
                                   name, (long long)(r0 + r), (long long)i);
        }
        ap_status st = ap_cuda_to_device(d_dst + (size_t)r0 * (size_t)ne0, host,
                                         (size_t)nr * (size_t)ne0 * sizeof(float), cm->stream, err);
        /* The runtime stages pageable copies before returning, but waiting
         * costs a few ms per model and does not lean on that. */
        if (st == AP_OK) st = ap_cuda_sync(cm->stream, err);
        if (st) return st;
    }
    return AP_OK;
}

static ap_status upload_weights(ap_cuda_model *cm, const ap_gguf *g, ap_err *err) {
    ap_status st = AP_OK;
    const ap_hparams *hp = &cm->hp;
    const size_t E = (size_t)hp->n_embd, V = (size_t)hp->n_vocab, F = (size_t)hp->n_ff;
    const size_t qd = cm->qd, kvd = cm->kvd;
    float *host = NULL;
    char name[96];

    /* Carve: embedding, output norm, output (untied), then per layer. */
    size_t off = 0, o_emb, o_onorm, o_out = 0;
    o_emb = off;
    off += align_floats(V * E);
    o_onorm = off;
    off += align_floats(E);
    if (!hp->tied_output) {
        o_out = off;
        off += align_floats(V * E);
    }
    const size_t per_layer = 2 * align_floats(E) + align_floats(cm->qkvd * E) +
                             align_floats(E * qd) + align_floats(2 * F * E) + align_floats(E * F);
    const size_t o_layers = off;
    off += per_layer * (size_t)hp->n_layer;
    cm->weight_floats = off;

    cm->layers = calloc((size_t)hp->n_layer, sizeof *cm->layers);
    host = malloc(UPLOAD_FLOATS * sizeof(float));
    if (!cm->layers || !host) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the weight upload");
        goto cleanup;
    }
    if ((st = dev_alloc(cm, (void **)&cm->d_weights, off * sizeof(float), err))) goto cleanup;
    float *W = cm->d_weights;
    cm->emb = W + o_emb;
    cm->out_norm = W + o_onorm;
    cm->output = hp->tied_output ? cm->emb : W + o_out;
    if ((st = upload_tensor(cm, g, "token_embd.weight", (int64_t)E, (int64_t)V, host, W + o_emb,
                            err)))
        goto cleanup;
    if ((st = upload_tensor(cm, g, "output_norm.weight", (int64_t)E, 1, host, W + o_onorm, err)))
        goto cleanup;
    if (!hp->tied_output &&
        (st = upload_tensor(cm, g, "output.weight", (int64_t)E, (int64_t)V, host, W + o_out, err)))
        goto cleanup;

    for (int l = 0; l < hp->n_layer; l++) {
        float *p = W + o_layers + per_layer * (size_t)l;
        layer_dev *ld = &cm->layers[l];
#define UP(suffix, ne0, ne1, dst)                                                              \
    do {                                                                                       \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);                                   \
        if ((st = upload_tensor(cm, g, name, (int64_t)(ne0), (int64_t)(ne1), host, (dst),      \
                                err)))                                                         \
            goto cleanup;                                                                      \
    } while (0)
        float *attn_norm = p, *ffn_norm = p + align_floats(E);
        float *wqkv = ffn_norm + align_floats(E);
        float *wo = wqkv + align_floats(cm->qkvd * E);
        float *wgu = wo + align_floats(E * qd);
        float *wd = wgu + align_floats(2 * F * E);
        UP("attn_norm.weight", E, 1, attn_norm);
        UP("ffn_norm.weight", E, 1, ffn_norm);
        /* Row-major [n_out][n_in] matrices stack along n_out by plain
         * concatenation: q rows, then k rows, then v rows. */
        UP("attn_q.weight", E, qd, wqkv);
        UP("attn_k.weight", E, kvd, wqkv + qd * E);
        UP("attn_v.weight", E, kvd, wqkv + (qd + kvd) * E);
        UP("attn_output.weight", qd, E, wo);
        UP("ffn_gate.weight", E, F, wgu);
        UP("ffn_up.weight", E, F, wgu + F * E);
        UP("ffn_down.weight", F, E, wd);
#undef UP
        *ld = (layer_dev){.attn_norm = attn_norm, .ffn_norm = ffn_norm, .wqkv = wqkv, .wo = wo,
                          .wgu = wgu, .wd = wd};
    }
cleanup:
    free(host);
    return st;
}

static ap_status alloc_state(ap_cuda_model *cm, ap_err *err) {
    ap_status st = AP_OK;
    const ap_hparams *hp = &cm->hp;
    const size_t E = (size_t)hp->n_embd, hd = (size_t)hp->head_dim, U = (size_t)cm->ubatch;
    const size_t F = (size_t)hp->n_ff, V = (size_t)hp->n_vocab, n_ctx = (size_t)cm->n_ctx;
    float *rope = NULL;

    cm->cache_floats = (size_t)hp->n_layer * n_ctx * cm->kvd;
    if (cm->offload) {
        const size_t bytes = cm->cache_floats * sizeof(float);
        if ((st = ap_cuda_host_alloc((void **)&cm->h_k, bytes, err))) goto cleanup;
        if ((st = ap_cuda_host_alloc((void **)&cm->h_v, bytes, err))) goto cleanup;
        cm->pinned_bytes = 2 * bytes;
        if ((st = ap_cmc_mapped(cm->h_k, (void **)&cm->d_k, err))) goto cleanup;
        if ((st = ap_cmc_mapped(cm->h_v, (void **)&cm->d_v, err))) goto cleanup;
        cm->max_pages = (int)((n_ctx + KV_BLOCK - 1) / KV_BLOCK);
        const size_t tab = (size_t)hp->n_layer * (size_t)hp->n_head_kv * (size_t)cm->max_pages;
        if ((st = dev_alloc(cm, (void **)&cm->d_kl, n_ctx * cm->kvd * sizeof(float), err)) ||
            (st = dev_alloc(cm, (void **)&cm->d_vl, n_ctx * cm->kvd * sizeof(float), err)) ||
            (st = dev_alloc(cm, (void **)&cm->d_kp, tab * sizeof(float *), err)) ||
            (st = dev_alloc(cm, (void **)&cm->d_vp, tab * sizeof(float *), err)))
            goto cleanup;
    } else {
        if ((st = dev_alloc(cm, (void **)&cm->d_k, cm->cache_floats * sizeof(float), err)) ||
            (st = dev_alloc(cm, (void **)&cm->d_v, cm->cache_floats * sizeof(float), err)))
            goto cleanup;
    }

    if ((st = dev_alloc(cm, (void **)&cm->d_tok, U * sizeof(int32_t), err)) ||
        (st = dev_alloc(cm, (void **)&cm->d_x, U * E * sizeof(float), err)) ||
        (st = dev_alloc(cm, (void **)&cm->d_xn, U * E * sizeof(float), err)) ||
        (st = dev_alloc(cm, (void **)&cm->d_qkv, U * cm->qkvd * sizeof(float), err)) ||
        (st = dev_alloc(cm, (void **)&cm->d_att, U * cm->qd * sizeof(float), err)) ||
        (st = dev_alloc(cm, (void **)&cm->d_gu, U * 2 * F * sizeof(float), err)) ||
        (st = dev_alloc(cm, (void **)&cm->d_logits, V * sizeof(float), err)) ||
        (st = dev_alloc(cm, (void **)&cm->d_setoff, ((size_t)hp->n_head_kv + 1) * sizeof(int),
                        err)))
        goto cleanup;
    if ((st = ap_cuda_zero(cm->d_setoff, ((size_t)hp->n_head_kv + 1) * sizeof(int), cm->stream,
                           err)))
        goto cleanup;

    /* Decode attention's work at the longest sequence (the layout grows
     * with n_keys, nothing else changes between calls). */
    ap_sparse_attn_args a = {.n_groups = hp->n_head_kv, .n_heads = hp->n_head / hp->n_head_kv,
                             .head_dim = hp->head_dim, .n_keys = cm->n_ctx, .block = KV_BLOCK};
    cm->work_bytes = ap_sparse_attn_cuda_work_bytes(&a);
    if ((st = dev_alloc(cm, &cm->d_work, cm->work_bytes, err))) goto cleanup;

    /* The CPU's own table (float32 angles), so RoPE matches bit for bit. */
    if (!(rope = malloc(n_ctx * hd * sizeof(float)))) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the RoPE table");
        goto cleanup;
    }
    ap_rope_table(rope, 0, cm->n_ctx, hp->head_dim, hp->rope_base);
    if ((st = dev_alloc(cm, (void **)&cm->d_rope, n_ctx * hd * sizeof(float), err))) goto cleanup;
    if ((st = ap_cuda_to_device(cm->d_rope, rope, n_ctx * hd * sizeof(float), cm->stream, err)))
        goto cleanup;
    st = ap_cuda_sync(cm->stream, err); /* before rope is freed */
cleanup:
    free(rope);
    return st;
}

void ap_cuda_model_free(ap_cuda_model *cm) {
    if (!cm) return;
    /* Queued work may still read these buffers (a failed create, an eval
     * that stopped at an error): drain the stream first, ignoring errors. */
    if (cm->stream) ap_cuda_sync(cm->stream, NULL);
    ap_cmc_blas_free(cm->blas);
    ap_cuda_free(cm->d_weights);
    if (cm->offload) {
        ap_cuda_host_free(cm->h_k);
        ap_cuda_host_free(cm->h_v);
    } else {
        ap_cuda_free(cm->d_k);
        ap_cuda_free(cm->d_v);
    }
    ap_cuda_free(cm->d_rope);
    ap_cuda_free(cm->d_tok);
    ap_cuda_free(cm->d_x);
    ap_cuda_free(cm->d_xn);
    ap_cuda_free(cm->d_qkv);
    ap_cuda_free(cm->d_att);
    ap_cuda_free(cm->d_gu);
    ap_cuda_free(cm->d_logits);
    ap_cuda_free(cm->d_setoff);
    ap_cuda_free(cm->d_work);
    ap_cuda_free(cm->d_kl);
    ap_cuda_free(cm->d_vl);
    ap_cuda_free((void *)cm->d_kp);
    ap_cuda_free((void *)cm->d_vp);
    ap_cuda_stream_free(cm->stream);
    free(cm->layers);
    free(cm);
}

ap_status ap_cuda_model_create_opts(const ap_gguf *g, const ap_model *m, int n_ctx,
                                    const ap_cuda_model_opts *opts, ap_cuda_model **out,
                                    ap_err *err) {
    ap_status st = AP_OK;
    ap_cuda_model *cm = NULL;
    if (!out) return ap_errf(err, AP_ERR_ARG, "CUDA engine: no output pointer");
    *out = NULL;
    if (!g || !m) return ap_errf(err, AP_ERR_ARG, "CUDA engine: no gguf or no model");
    const ap_hparams *hp = ap_model_hparams(m);
    if (n_ctx < 1 || n_ctx > hp->n_ctx_train)
        return ap_errf(err, AP_ERR_RANGE,
                       "CUDA engine: context length %d is outside [1, %d] (llama.context_length)",
                       n_ctx, hp->n_ctx_train);
    if (hp->head_dim > 256)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "CUDA engine: head_dim %d is above the attention kernels' 256",
                       hp->head_dim);

    if (!(cm = calloc(1, sizeof *cm))) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the CUDA engine");
        goto cleanup;
    }
    cm->hp = *hp;
    cm->n_ctx = n_ctx;
    cm->ubatch = n_ctx < UBATCH ? n_ctx : UBATCH;
    cm->offload = opts && opts->kv_offload;
    cm->qd = (size_t)hp->n_head * (size_t)hp->head_dim;
    cm->kvd = (size_t)hp->n_head_kv * (size_t)hp->head_dim;
    cm->qkvd = cm->qd + 2 * cm->kvd;
    /* The first CUDA call: without a device this is where it fails. */
    if ((st = ap_cuda_stream_create(&cm->stream, err))) goto cleanup;
    if ((st = ap_cmc_blas_create(cm->stream, &cm->blas, err))) goto cleanup;
    if ((st = upload_weights(cm, g, err))) goto cleanup;
    if ((st = alloc_state(cm, err))) goto cleanup;
    if ((st = ap_cuda_sync(cm->stream, err))) goto cleanup;
    *out = cm;
    cm = NULL;

cleanup:
    if (st != AP_OK) {
        char pre[320];
        snprintf(pre, sizeof pre, "%s (CUDA engine)", ap_gguf_path(g));
        ap_err_prefix(err, pre);
    }
    ap_cuda_model_free(cm);
    return st;
}

/* ---------------------------------------------------------------- forward */

/* New keys/values of T tokens at pos0 (in d_qkv after RoPE) into the cache;
 * in offload mode a prefill also stages the layer's keys on the device.
 * Sets *k, *v to the keys/values attention reads for layer l (row 0 at
 * position 0). */
static ap_status store_kv(ap_cuda_model *cm, int l, int pos0, int T, const float **k,
                          const float **v, ap_err *err) {
    ap_status st = AP_OK;
    const size_t kvd = cm->kvd, row = kvd * sizeof(float), pitch = cm->qkvd * sizeof(float);
    const size_t layer_off = (size_t)l * (size_t)cm->n_ctx * kvd, at = (size_t)pos0 * kvd;
    const float *src_k = cm->d_qkv + cm->qd, *src_v = src_k + kvd;
    if (cm->offload) {
        /* Host copy first: decode attention reads it, prefill keeps it. */
        if ((st = ap_cmc_copy_rows(cm->h_k + layer_off + at, row, src_k, pitch, row, T, cm->stream,
                                   err)) ||
            (st = ap_cmc_copy_rows(cm->h_v + layer_off + at, row, src_v, pitch, row, T, cm->stream,
                                   err)))
            return st;
        if (T == 1) {
            *k = cm->d_k + layer_off;
            *v = cm->d_v + layer_off;
            return AP_OK;
        }
        /* Prefill: the earlier keys of this layer come over once, so
         * attention reads device memory (kernels/attention_cuda.h walks every
         * key once per 16 query rows). */
        if ((st = ap_cuda_to_device(cm->d_kl, cm->h_k + layer_off, at * sizeof(float), cm->stream,
                                    err)) ||
            (st = ap_cuda_to_device(cm->d_vl, cm->h_v + layer_off, at * sizeof(float), cm->stream,
                                    err)) ||
            (st = ap_cmc_copy_rows(cm->d_kl + at, row, src_k, pitch, row, T, cm->stream, err)) ||
            (st = ap_cmc_copy_rows(cm->d_vl + at, row, src_v, pitch, row, T, cm->stream, err)))
            return st;
        *k = cm->d_kl;
        *v = cm->d_vl;
        return AP_OK;
    }
    if ((st = ap_cmc_copy_rows(cm->d_k + layer_off + at, row, src_k, pitch, row, T, cm->stream,
                               err)) ||
        (st = ap_cmc_copy_rows(cm->d_v + layer_off + at, row, src_v, pitch, row, T, cm->stream,
                               err)))
        return st;
    *k = cm->d_k + layer_off;
    *v = cm->d_v + layer_off;
    return AP_OK;
}

/* Attention of T queries (d_qkv) at pos0 over keys 0..pos0+T-1 of layer l
 * into d_att. */
static ap_status attention(ap_cuda_model *cm, int l, int pos0, int T, const float *k,
                           const float *v, ap_err *err) {
    ap_status st = AP_OK;
    const ap_hparams *hp = &cm->hp;
    const int hd = hp->head_dim, G = hp->n_head / hp->n_head_kv;
    const float scale = 1.0f / sqrtf((float)hd); /* as the CPU computes it */
    if (T == 1) {
        /* Every key kept: sink = n_keys, no local window, empty lists. */
        ap_sparse_attn_args a = {.n_groups = hp->n_head_kv, .n_heads = G, .head_dim = hd,
                                 .n_keys = pos0 + 1, .scale = scale, .q = cm->d_qkv,
                                 .ldkv = cm->kvd, .group_stride = (size_t)hd, .out = cm->d_att,
                                 .block = KV_BLOCK, .sink = pos0 + 1, .local = 0,
                                 .set_off = cm->d_setoff};
        if (cm->offload) {
            const int n_pages = (pos0 + KV_BLOCK) / KV_BLOCK;
            /* Page addresses depend only on n_pages (the table's row length). */
            if (n_pages != cm->pages_filled) {
                if ((st = ap_cmc_fill_pages(cm->d_kp, cm->d_vp, cm->d_k, cm->d_v, hp->n_layer,
                                            (size_t)cm->n_ctx * cm->kvd,
                                            (size_t)hp->n_head_kv * (size_t)cm->max_pages,
                                            hp->n_head_kv, n_pages, KV_BLOCK, cm->kvd, hd,
                                            cm->stream, err)))
                    return st;
                cm->pages_filled = n_pages;
            }
            const size_t tab = (size_t)l * (size_t)hp->n_head_kv * (size_t)cm->max_pages;
            a.k_pages = cm->d_kp + tab;
            a.v_pages = cm->d_vp + tab;
        } else {
            a.k = k;
            a.v = v;
        }
        return ap_sparse_attn_cuda(&a, cm->d_work, cm->work_bytes, cm->stream, err);
    }
    for (int g = 0; g < hp->n_head_kv && st == AP_OK; g++) {
        const size_t q0 = (size_t)g * (size_t)G * (size_t)hd;
        ap_attn_cuda_args a = {.n_q = T, .n_heads = G, .pos0 = pos0, .head_dim = hd,
                               .scale = scale, .q = cm->d_qkv + q0, .ldq = cm->qkvd,
                               .k = k + (size_t)g * hd, .v = v + (size_t)g * hd, .ldkv = cm->kvd,
                               .out = cm->d_att + q0, .ldo = cm->qd};
        st = ap_attn_cuda(&a, NULL, 0, cm->stream, err);
    }
    return st;
}

/* T tokens at pos0..pos0+T-1 through every layer; the final hidden states
 * (before output_norm) are left in d_x. */
static ap_status forward_ubatch(ap_cuda_model *cm, const int32_t *tokens, int T, int pos0,
                                ap_err *err) {
    ap_status st = AP_OK;
    const ap_hparams *hp = &cm->hp;
    const size_t E = (size_t)hp->n_embd, F = (size_t)hp->n_ff, hd = (size_t)hp->head_dim;
    const int iE = hp->n_embd, iF = hp->n_ff, iqd = (int)cm->qd;
    ap_cuda_stream s = cm->stream;

    /* The caller's tokens outlive the copy: eval ends with a sync. */
    if ((st = ap_cuda_to_device(cm->d_tok, tokens, (size_t)T * sizeof(int32_t), s, err)) ||
        (st = ap_cmc_embed(cm->d_x, E, cm->emb, iE, cm->d_tok, T, s, err)))
        return st;
    for (int l = 0; l < hp->n_layer; l++) {
        const layer_dev *w = &cm->layers[l];
        const float *k = NULL, *v = NULL;
        if ((st = ap_rmsnorm_cuda(cm->d_xn, E, cm->d_x, E, w->attn_norm, T, iE, hp->rms_eps, s,
                                  err)) ||
            (st = ap_cmc_gemm(cm->blas, cm->d_qkv, cm->qkvd, cm->d_xn, E, w->wqkv, (int)cm->qkvd,
                              iE, T, 0, err)) ||
            /* q heads then k heads, adjacent in a row: one pass ropes both. */
            (st = ap_rope_cuda(cm->d_qkv, cm->qkvd, T, hp->n_head + hp->n_head_kv, (int)hd,
                               cm->d_rope + (size_t)pos0 * hd, s, err)) ||
            (st = store_kv(cm, l, pos0, T, &k, &v, err)) ||
            (st = attention(cm, l, pos0, T, k, v, err)) ||
            /* Residual adds are the products' beta = 1. */
            (st = ap_cmc_gemm(cm->blas, cm->d_x, E, cm->d_att, cm->qd, w->wo, iE, iqd, T, 1,
                              err)) ||
            (st = ap_rmsnorm_cuda(cm->d_xn, E, cm->d_x, E, w->ffn_norm, T, iE, hp->rms_eps, s,
                                  err)) ||
            (st = ap_cmc_gemm(cm->blas, cm->d_gu, 2 * F, cm->d_xn, E, w->wgu, 2 * iF, iE, T, 0,
                              err)) ||
            (st = ap_swiglu_cuda(cm->d_gu, 2 * F, cm->d_gu, 2 * F, cm->d_gu + F, 2 * F, T, iF, s,
                                 err)) ||
            (st = ap_cmc_gemm(cm->blas, cm->d_x, E, cm->d_gu, 2 * F, w->wd, iE, iF, T, 1, err)))
            return st;
    }
    return AP_OK;
}

ap_status ap_cuda_model_eval(ap_cuda_model *cm, const int32_t *tokens, int n, float *logits_host,
                             ap_err *err) {
    ap_status st = AP_OK;
    const ap_hparams *hp = &cm->hp;
    const size_t E = (size_t)hp->n_embd, V = (size_t)hp->n_vocab;
    const int n_past0 = cm->n_past;

    if (n < 1 || !tokens) {
        st = ap_errf(err, AP_ERR_ARG, "eval needs at least one token (got %d)", n);
        goto cleanup;
    }
    if (n > cm->n_ctx - cm->n_past) {
        st = ap_errf(err, AP_ERR_RANGE,
                     "%d tokens after %d cached ones overflow the %d-token KV cache", n,
                     cm->n_past, cm->n_ctx);
        goto cleanup;
    }
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab) {
            st = ap_errf(err, AP_ERR_ARG, "token %d at index %d is outside the vocabulary [0, %d)",
                         tokens[i], i, hp->n_vocab);
            goto cleanup;
        }
    }
    for (int b0 = 0; b0 < n; b0 += cm->ubatch) {
        const int T = n - b0 < cm->ubatch ? n - b0 : cm->ubatch;
        if ((st = forward_ubatch(cm, tokens + b0, T, cm->n_past, err))) goto rollback;
        cm->n_past += T;
        if (b0 + T < n || !logits_host) continue;
        if ((st = ap_rmsnorm_cuda(cm->d_xn, E, cm->d_x + (size_t)(T - 1) * E, E, cm->out_norm, 1,
                                  hp->n_embd, hp->rms_eps, cm->stream, err)) ||
            (st = ap_cmc_gemm(cm->blas, cm->d_logits, V, cm->d_xn, E, cm->output, hp->n_vocab,
                              hp->n_embd, 1, 0, err)) ||
            (st = ap_cuda_to_host(logits_host, cm->d_logits, V * sizeof(float), cm->stream, err)))
            goto rollback;
    }
    if ((st = ap_cuda_sync(cm->stream, err))) goto rollback;
    if (logits_host) {
        for (size_t i = 0; i < V; i++) {
            if (!isfinite(logits_host[i])) {
                st = ap_errf(err, AP_ERR_NUMERIC, "non-finite logit at vocab id %zu (CUDA engine)",
                             i);
                goto rollback;
            }
        }
    }
    goto cleanup;

rollback:
    /* Positions past n_past are never read, so the rows already written
     * need no undoing. Drain the stream so a later call starts clean. */
    cm->n_past = n_past0;
    ap_cuda_sync(cm->stream, NULL);
cleanup:
    return st;
}

void ap_cuda_model_reset(ap_cuda_model *cm) { cm->n_past = 0; }

ap_status ap_cuda_model_truncate(ap_cuda_model *cm, int n_past, ap_err *err) {
    if (n_past < 0 || n_past > cm->n_past)
        return ap_errf(err, AP_ERR_RANGE, "cannot truncate the KV cache to %d (it holds %d)",
                       n_past, cm->n_past);
    cm->n_past = n_past;
    return AP_OK;
}

int ap_cuda_model_n_past(const ap_cuda_model *cm) { return cm->n_past; }

int ap_cuda_model_n_ctx(const ap_cuda_model *cm) { return cm->n_ctx; }

void ap_cuda_model_memory(const ap_cuda_model *cm, size_t *device_bytes, size_t *pinned_bytes) {
    if (device_bytes) *device_bytes = cm->device_bytes;
    if (pinned_bytes) *pinned_bytes = cm->pinned_bytes;
}

#else /* no CUDA in this build: stand-ins, so callers link and fail cleanly */

ap_status ap_cuda_model_create_opts(const ap_gguf *g, const ap_model *m, int n_ctx,
                                    const ap_cuda_model_opts *opts, ap_cuda_model **out,
                                    ap_err *err) {
    if (out) *out = NULL;
    return ap_errf(err, AP_ERR_UNSUPPORTED,
                   "the CUDA engine is not available: this build of attnpred has no CUDA support");
}

void ap_cuda_model_free(ap_cuda_model *cm) { (void)cm; }

ap_status ap_cuda_model_eval(ap_cuda_model *cm, const int32_t *tokens, int n, float *logits_host,
                             ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}

void ap_cuda_model_reset(ap_cuda_model *cm) { (void)cm; }

ap_status ap_cuda_model_truncate(ap_cuda_model *cm, int n_past, ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}

int ap_cuda_model_n_past(const ap_cuda_model *cm) { return 0; }

int ap_cuda_model_n_ctx(const ap_cuda_model *cm) { return 0; }

void ap_cuda_model_memory(const ap_cuda_model *cm, size_t *device_bytes, size_t *pinned_bytes) {
    if (device_bytes) *device_bytes = 0;
    if (pinned_bytes) *pinned_bytes = 0;
}

#endif
