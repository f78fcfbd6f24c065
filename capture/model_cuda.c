/* Llama forward pass on a CUDA device (design in model_cuda.h). Host side:
 * weight upload, buffers, the layer loop, eval semantics. Without CUDA in
 * the build only the stand-ins at the end are compiled. */
#include "capture/model_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/model_cuda_kernels.h"
#include "common/util.h"
#include "kernels/attention_cuda.h"
#include "kernels/cuda_util.h"
#include "kernels/quant.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/sparse_attn.h"
#include "kernels/swiglu.h"

void ap_cuda_model_opts_default(ap_cuda_model_opts *o) {
    memset(o, 0, sizeof *o);
    o->prefetch = 1;
}

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

/* A device buffer with a pinned host mirror (either may be unused). */
typedef struct {
    void *d, *h;
    size_t cap; /* bytes of each */
} xbuf;

typedef struct {
    const float *attn_norm, *ffn_norm; /* [n_embd] */
    const float *wqkv; /* [n_head hd + 2 kv_dim][n_embd]: attn_q | attn_k | attn_v rows */
    const float *wo;   /* [n_embd][n_head hd] */
    const float *wgu;  /* [2 n_ff][n_embd]: ffn_gate | ffn_up rows */
    const float *wd;   /* [n_embd][n_ff] */
} layer_dev;

struct ap_cuda_model {
    ap_hparams hp;
    int n_ctx, n_past, ubatch, offload, prefetch;
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
    int max_pages, pages_filled; /* max_pages = ceil(n_ctx / KV_BLOCK), in both modes */

    size_t device_bytes, pinned_bytes;

    /* Observer of the current eval (NULL: none) and its buffers, grown on
     * demand: device outputs and their pinned host mirrors. */
    const ap_attn_observer *obs;
    xbuf ov_max, ov_sum; /* views [n_head][rows][n_vblocks] */
    xbuf orow;           /* whole rows [n_head][rows][n_keys] */
    xbuf oq, ok;         /* queries [rows][qd], new keys [T][kvd] (host only) */
    xbuf ocs;            /* column sums [n_layer][n_head][n_ctx] doubles */
    float *h_ocs_f;      /* one head's sums as floats */
    int ocs_keys;        /* keys the column sums cover after this eval */

    /* Compressed decoding (ap_cuda_model_set_kv_policy). */
    const ap_kv_policy *pol;
    int pol_sets;        /* lists per step: n_head (per query head) or n_head_kv */
    xbuf lists;          /* [n_sets * max_pages] block ids then [n_sets + 1] offsets */
    xbuf sv_max, sv_sum; /* sparse views [n_head][max_pages] */
    xbuf dv_max, dv_sum; /* dense views, same layout */
    xbuf nkept;          /* [n_head] ints */
    xbuf kmass;          /* [n_head] floats */
    float *d_scratch;    /* [qd]: output of a dense pass nobody reads */
    /* Device pool (offload + policy): per (layer, KV head) `cap` pages of
     * KV_BLOCK keys x head_dim floats for K and V each. */
    int cap;
    float *d_pool_k, *d_pool_v;
    int *slot_of;        /* [L*KV][max_pages] slot of a block, -1 none */
    int *block_of;       /* [L*KV][cap] block in a slot, -1 free */
    unsigned char *pf_flag; /* [L*KV][cap] 1: filled by the prefetch stream, not used yet */
    int *free_top;       /* [L*KV] free slots on the stack */
    int *free_stack;     /* [L*KV][cap] */
    xbuf ptab;           /* page tables of one layer: K [KV][n_pages] then V, device pointers */
    unsigned char *need; /* [max_pages] scratch */
    ap_cuda_stream copy_stream;
    ap_cuda_event *ev_pf; /* [L] prefetch copies of layer l done */
    ap_cuda_event ev_main; /* work of the main stream so far */
    int *pf_pos;          /* [L] the step layer l's prefetch copies are for, -1 none */
    ap_cuda_kv_stats kvst;
    size_t pol_dev_bytes; /* scratch and pool bytes, in device_bytes */
    int first_pos;        /* the first decode step under the policy (-1: none yet) */
};

static void policy_release(ap_cuda_model *cm);
static void pool_flush(ap_cuda_model *cm);

/* ------------------------------------------------------------------ setup */

static ap_status dev_alloc(ap_cuda_model *cm, void **d, size_t bytes, ap_err *err) {
    ap_status st = ap_cuda_malloc(d, bytes, err);
    if (st == AP_OK) cm->device_bytes += bytes;
    return st;
}

static void xbuf_free(xbuf *b) {
    ap_cuda_free(b->d);
    ap_cuda_host_free(b->h);
    memset(b, 0, sizeof *b);
}

/* Make b hold at least `bytes` (device side if dev, host side if host),
 * growing by half again so a slowly growing need reallocates rarely. The
 * old contents are dropped: callers fill a buffer after sizing it. */
static ap_status xbuf_need(ap_cuda_model *cm, xbuf *b, size_t bytes, int dev, int host,
                           ap_err *err) {
    if (bytes <= b->cap && (!dev || b->d) && (!host || b->h)) return AP_OK;
    size_t cap = bytes > b->cap ? bytes + bytes / 2 : b->cap;
    /* Queued work may still read the old buffers. */
    ap_status st = ap_cuda_sync(cm->stream, err);
    if (st) return st;
    if (b->d) cm->device_bytes -= b->cap;
    if (b->h) cm->pinned_bytes -= b->cap;
    const int had_d = b->d != NULL || dev, had_h = b->h != NULL || host;
    xbuf_free(b);
    if (had_d && (st = dev_alloc(cm, &b->d, cap, err))) return st;
    if (had_h) {
        if ((st = ap_cuda_host_alloc(&b->h, cap, err))) {
            if (b->d) cm->device_bytes -= cap;
            xbuf_free(b);
            return st;
        }
        cm->pinned_bytes += cap;
    }
    b->cap = cap;
    return AP_OK;
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
    cm->max_pages = (int)((n_ctx + KV_BLOCK - 1) / KV_BLOCK);
    if (cm->offload) {
        const size_t bytes = cm->cache_floats * sizeof(float);
        if ((st = ap_cuda_host_alloc((void **)&cm->h_k, bytes, err))) goto cleanup;
        if ((st = ap_cuda_host_alloc((void **)&cm->h_v, bytes, err))) goto cleanup;
        cm->pinned_bytes = 2 * bytes;
        if ((st = ap_cmc_mapped(cm->h_k, (void **)&cm->d_k, err))) goto cleanup;
        if ((st = ap_cmc_mapped(cm->h_v, (void **)&cm->d_v, err))) goto cleanup;
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

    /* Decode attention's work for the largest call: the longest sequence,
     * one list per query head, sparse and dense views (the layout depends
     * on which outputs are set, not on where they point). */
    float size_only = 0.0f;
    ap_sparse_attn_args a = {.n_groups = hp->n_head_kv, .n_heads = hp->n_head / hp->n_head_kv,
                             .head_dim = hp->head_dim, .n_keys = cm->n_ctx, .block = KV_BLOCK,
                             .per_q_head = 1, .bmax = &size_only, .bsum = &size_only,
                             .dense_bmax = &size_only, .dense_bsum = &size_only};
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
    xbuf_free(&cm->ov_max);
    xbuf_free(&cm->ov_sum);
    xbuf_free(&cm->orow);
    xbuf_free(&cm->oq);
    xbuf_free(&cm->ok);
    xbuf_free(&cm->ocs);
    free(cm->h_ocs_f);
    policy_release(cm);
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
    if (ap_model_get_opts(m)->kv_type != AP_KV_F32)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "CUDA engine: KV cache type %s (the device cache is f32; the f16 cache "
                       "is the CPU engine's)",
                       ap_kv_type_name(ap_model_get_opts(m)->kv_type));
    if (n_ctx < 1 || n_ctx > hp->n_ctx_train)
        return ap_errf(err, AP_ERR_RANGE,
                       "CUDA engine: context length %d is outside [1, %d] (%s.context_length)",
                       n_ctx, hp->n_ctx_train, hp->arch);
    if (hp->head_dim > 256)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "CUDA engine: head_dim %d is above the attention kernels' 256",
                       hp->head_dim);
    /* The CUDA forward is the llama one: every other switch of ap_hparams
     * would silently compute another model. */
    if (hp->arch_id != AP_ARCH_LLAMA || hp->rope_neox || hp->qkv_bias || hp->qk_norm ||
        hp->post_norms || hp->ffn_gelu || hp->swa_window > 0 || hp->rope_freqs ||
        hp->rope_freq_scale != 1.0f || hp->rope_yarn || hp->embd_scale != 1.0f)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "CUDA engine: %s files (or llama files with RoPE scaling or QKV biases) "
                       "run on the CPU engine only for now (--device cpu)",
                       hp->arch);

    if (!(cm = calloc(1, sizeof *cm))) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the CUDA engine");
        goto cleanup;
    }
    cm->hp = *hp;
    cm->n_ctx = n_ctx;
    cm->ubatch = n_ctx < UBATCH ? n_ctx : UBATCH;
    cm->offload = opts && opts->kv_offload;
    cm->prefetch = opts ? opts->prefetch : 1;
    cm->first_pos = -1;
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

/* ------------------------------------------------------------- observer */

/* Rows [r0, T) of a micro-batch at pos0 are reported to the observer. */
static int obs_r0(const ap_cuda_model *cm, int pos0, int T) {
    if (!cm->obs || (!cm->obs->on_views && !cm->obs->on_row && !cm->obs->on_query)) return T;
    int r0 = cm->obs->rows_from - pos0;
    return r0 < 0 ? 0 : r0 > T ? T : r0;
}

static int obs_vblocks(const ap_cuda_model *cm, int n_keys) {
    return (n_keys + cm->obs->view_block - 1) / cm->obs->view_block;
}

/* Size the observer's buffers for a micro-batch of T rows at pos0. */
static ap_status obs_buffers(ap_cuda_model *cm, int pos0, int T, ap_err *err) {
    ap_status st = AP_OK;
    const ap_attn_observer *o = cm->obs;
    const size_t H = (size_t)cm->hp.n_head, nr = (size_t)(T - obs_r0(cm, pos0, T));
    const size_t n_keys = (size_t)pos0 + (size_t)T;
    if (nr > 0 && o->on_views) {
        const size_t b = H * nr * (size_t)obs_vblocks(cm, (int)n_keys) * sizeof(float);
        if ((st = xbuf_need(cm, &cm->ov_max, b, 1, 1, err)) ||
            (st = xbuf_need(cm, &cm->ov_sum, b, 1, 1, err)))
            return st;
    }
    if (nr > 0 && o->on_row && o->want_rows &&
        (st = xbuf_need(cm, &cm->orow, H * nr * n_keys * sizeof(float), 1, 1, err)))
        return st;
    if (nr > 0 && o->on_query && (st = xbuf_need(cm, &cm->oq, nr * cm->qd * sizeof(float), 0, 1, err)))
        return st;
    if (o->on_key && (st = xbuf_need(cm, &cm->ok, (size_t)T * cm->kvd * sizeof(float), 0, 1, err)))
        return st;
    return AP_OK;
}

/* After layer l's attention of T rows at pos0 was queued (k: the keys it
 * read): whole rows where wanted, copies to the host, then every callback. */
static ap_status obs_layer(ap_cuda_model *cm, int l, int pos0, int T, const float *k,
                           ap_err *err) {
    ap_status st = AP_OK;
    const ap_attn_observer *o = cm->obs;
    const ap_hparams *hp = &cm->hp;
    const int H = hp->n_head, KV = hp->n_head_kv, G = H / KV, hd = hp->head_dim;
    const int r0 = obs_r0(cm, pos0, T), nr = T - r0, n_keys = pos0 + T;
    const int rows = nr > 0 && o->on_row && o->want_rows && o->want_rows(o->user, l);
    const size_t nvb = o->on_views ? (size_t)obs_vblocks(cm, n_keys) : 0;
    ap_cuda_stream s = cm->stream;
    if (rows) {
        for (int g = 0; g < KV && st == AP_OK; g++) {
            ap_attn_rows_cuda_args a = {
                .n_q = nr, .n_heads = G, .pos0 = pos0 + r0, .head_dim = hd,
                .scale = 1.0f / sqrtf((float)hd),
                .q = cm->d_qkv + (size_t)r0 * cm->qkvd + (size_t)g * G * hd, .ldq = cm->qkvd,
                .k = k + (size_t)g * hd, .ldkv = cm->kvd,
                .probs = (float *)cm->orow.d + (size_t)g * G * nr * n_keys,
                .row_stride = (size_t)n_keys, .head_stride = (size_t)nr * n_keys};
            st = ap_attn_rows_cuda(&a, s, err);
        }
        if (st == AP_OK)
            st = ap_cuda_to_host(cm->orow.h, cm->orow.d,
                                 (size_t)H * nr * n_keys * sizeof(float), s, err);
        if (st) return st;
    }
    if (nr > 0 && o->on_views) {
        const size_t b = (size_t)H * nr * nvb * sizeof(float);
        if ((st = ap_cuda_to_host(cm->ov_max.h, cm->ov_max.d, b, s, err)) ||
            (st = ap_cuda_to_host(cm->ov_sum.h, cm->ov_sum.d, b, s, err)))
            return st;
    }
    if (nr > 0 && o->on_query &&
        (st = ap_cmc_copy_rows(cm->oq.h, cm->qd * sizeof(float),
                               cm->d_qkv + (size_t)r0 * cm->qkvd, cm->qkvd * sizeof(float),
                               cm->qd * sizeof(float), nr, s, err)))
        return st;
    if (o->on_key && (st = ap_cmc_copy_rows(cm->ok.h, cm->kvd * sizeof(float), cm->d_qkv + cm->qd,
                                            cm->qkvd * sizeof(float), cm->kvd * sizeof(float), T,
                                            s, err)))
        return st;
    if ((st = ap_cuda_sync(s, err))) return st;
    for (int h = 0; h < H; h++)
        for (int i = 0; i < nr; i++) {
            const int pos = pos0 + r0 + i;
            if (o->on_views) {
                const size_t at = ((size_t)h * nr + i) * nvb;
                o->on_views(o->user, l, h, pos, (const float *)cm->ov_max.h + at,
                            (const float *)cm->ov_sum.h + at, obs_vblocks(cm, pos + 1));
            }
            if (rows)
                o->on_row(o->user, l, h, pos,
                          (const float *)cm->orow.h + ((size_t)h * nr + i) * n_keys, pos + 1);
            if (o->on_query)
                o->on_query(o->user, l, h, pos,
                            (const float *)cm->oq.h + (size_t)i * cm->qd + (size_t)h * hd, hd);
        }
    if (o->on_key)
        for (int t = 0; t < T; t++)
            for (int g = 0; g < KV; g++)
                o->on_key(o->user, l, g, pos0 + t,
                          (const float *)cm->ok.h + (size_t)t * cm->kvd + (size_t)g * hd, hd);
    return AP_OK;
}

/* ------------------------------------------------------------- attention */

/* Attention of T queries (d_qkv) at pos0 over keys 0..pos0+T-1 of layer l
 * into d_att, with the observer's views and column sums when one is set. */
static ap_status attention(ap_cuda_model *cm, int l, int pos0, int T, const float *k,
                           const float *v, ap_err *err) {
    ap_status st = AP_OK;
    const ap_hparams *hp = &cm->hp;
    const ap_attn_observer *o = cm->obs;
    const int hd = hp->head_dim, G = hp->n_head / hp->n_head_kv, n_keys = pos0 + T;
    const float scale = 1.0f / sqrtf((float)hd); /* as the CPU computes it */
    const int r0 = obs_r0(cm, pos0, T), nr = T - r0;
    const int views = o && o->on_views && nr > 0, colsum = o && o->on_colsum;
    const int nvb = views ? obs_vblocks(cm, n_keys) : 0;
    if (T == 1 && !colsum && (!views || o->view_block == KV_BLOCK)) {
        /* Every key kept: sink = n_keys, no local window, empty lists. */
        ap_sparse_attn_args a = {.n_groups = hp->n_head_kv, .n_heads = G, .head_dim = hd,
                                 .n_keys = n_keys, .scale = scale, .q = cm->d_qkv,
                                 .ldkv = cm->kvd, .group_stride = (size_t)hd, .out = cm->d_att,
                                 .block = KV_BLOCK, .sink = n_keys, .local = 0,
                                 .set_off = cm->d_setoff};
        if (views) {
            a.bmax = cm->ov_max.d;
            a.bsum = cm->ov_sum.d;
            a.ldb = (size_t)nvb;
        }
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
            a.k_pages = (const void *const *)(cm->d_kp + tab);
            a.v_pages = (const void *const *)(cm->d_vp + tab);
        } else {
            a.k = k;
            a.v = v;
        }
        return ap_sparse_attn_cuda(&a, cm->d_work, cm->work_bytes, cm->stream, err);
    }
    /* Rows before rows_from without views, the rest with them: rows are
     * independent, and column sums add over both calls. */
    for (int g = 0; g < hp->n_head_kv && st == AP_OK; g++) {
        const size_t q0 = (size_t)g * (size_t)G * (size_t)hd;
        for (int part = 0; part < 2 && st == AP_OK; part++) {
            const int i0 = part ? r0 : 0, n_q = part ? nr : r0;
            if (n_q == 0) continue;
            ap_attn_cuda_args a = {.n_q = n_q, .n_heads = G, .pos0 = pos0 + i0, .head_dim = hd,
                                   .scale = scale, .q = cm->d_qkv + q0 + (size_t)i0 * cm->qkvd,
                                   .ldq = cm->qkvd, .k = k + (size_t)g * hd,
                                   .v = v + (size_t)g * hd, .ldkv = cm->kvd,
                                   .out = cm->d_att + q0 + (size_t)i0 * cm->qd, .ldo = cm->qd};
            if (part && views) {
                const size_t hs = (size_t)nr * (size_t)nvb;
                a.vblock = o->view_block;
                a.n_vblocks = nvb;
                a.bmax = (float *)cm->ov_max.d + (size_t)g * G * hs;
                a.bsum = (float *)cm->ov_sum.d + (size_t)g * G * hs;
                a.view_row_stride = (size_t)nvb;
                a.view_head_stride = hs;
            }
            if (colsum) {
                a.colsum = (double *)cm->ocs.d +
                           ((size_t)l * hp->n_head + (size_t)g * G) * (size_t)cm->n_ctx;
                a.colsum_stride = (size_t)cm->n_ctx;
            }
            const size_t wb = ap_attn_cuda_work_bytes(&a);
            if (wb > cm->work_bytes) {
                /* Column-sum statistics of a whole micro-batch: rare, grow. */
                ap_cuda_sync(cm->stream, NULL);
                ap_cuda_free(cm->d_work);
                cm->device_bytes -= cm->work_bytes;
                cm->work_bytes = 0;
                if ((st = dev_alloc(cm, &cm->d_work, wb, err))) {
                    cm->d_work = NULL;
                    return st;
                }
                cm->work_bytes = wb;
            }
            st = ap_attn_cuda(&a, cm->d_work, cm->work_bytes, cm->stream, err);
        }
    }
    return st;
}

/* ---------------------------------------------------- compressed decoding */

/* xbuf_free, keeping the engine's memory counters true. */
static void xbuf_drop(ap_cuda_model *cm, xbuf *b) {
    if (b->d) cm->device_bytes -= b->cap;
    if (b->h) cm->pinned_bytes -= b->cap;
    xbuf_free(b);
}

static void policy_release(ap_cuda_model *cm) {
    if (cm->copy_stream) ap_cuda_sync(cm->copy_stream, NULL);
    if (cm->stream) ap_cuda_sync(cm->stream, NULL);
    xbuf_drop(cm, &cm->lists);
    xbuf_drop(cm, &cm->sv_max);
    xbuf_drop(cm, &cm->sv_sum);
    xbuf_drop(cm, &cm->dv_max);
    xbuf_drop(cm, &cm->dv_sum);
    xbuf_drop(cm, &cm->nkept);
    xbuf_drop(cm, &cm->kmass);
    xbuf_drop(cm, &cm->ptab);
    ap_cuda_free(cm->d_scratch);
    ap_cuda_free(cm->d_pool_k);
    ap_cuda_free(cm->d_pool_v);
    cm->device_bytes -= cm->pol_dev_bytes;
    cm->pol_dev_bytes = 0;
    free(cm->slot_of);
    free(cm->block_of);
    free(cm->pf_flag);
    free(cm->free_top);
    free(cm->free_stack);
    free(cm->need);
    free(cm->pf_pos);
    if (cm->ev_pf)
        for (int l = 0; l < cm->hp.n_layer; l++) ap_cuda_event_free(cm->ev_pf[l]);
    free(cm->ev_pf);
    ap_cuda_event_free(cm->ev_main);
    ap_cuda_stream_free(cm->copy_stream);
    cm->d_scratch = NULL;
    cm->d_pool_k = cm->d_pool_v = NULL;
    cm->slot_of = cm->block_of = cm->free_top = cm->free_stack = NULL;
    cm->pf_flag = cm->need = NULL;
    cm->pf_pos = NULL;
    cm->ev_pf = NULL;
    cm->ev_main = NULL;
    cm->copy_stream = NULL;
    cm->pol = NULL;
    cm->cap = 0;
}

/* Mark in cm->need the blocks the kept sets of KV head g touch at n_keys
 * keys: sink, local window, and every listed block of the head's sets. */
static void needed_blocks(const ap_cuda_model *cm, int g, int n_keys, const int *blocks,
                          const int *set_off) {
    const ap_kv_policy *P = cm->pol;
    const int nb = (n_keys + KV_BLOCK - 1) / KV_BLOCK, G = cm->hp.n_head / cm->hp.n_head_kv;
    memset(cm->need, 0, (size_t)nb);
    const int sink = P->sink < n_keys ? P->sink : n_keys;
    for (int b = 0; b * KV_BLOCK < sink; b++) cm->need[b] = 1;
    if (P->local > 0) {
        const int first = n_keys - P->local > 0 ? n_keys - P->local : 0;
        for (int b = first / KV_BLOCK; b < nb; b++) cm->need[b] = 1;
    }
    if (!blocks) return;
    const int s0 = P->per_q_head ? g * G : g, s1 = P->per_q_head ? (g + 1) * G : g + 1;
    for (int s = s0; s < s1; s++)
        for (int i = set_off[s]; i < set_off[s + 1]; i++)
            if (blocks[i] >= 0 && blocks[i] < nb) cm->need[blocks[i]] = 1;
}

/* Make pool (l, g) hold the needed blocks (cm->need over nb blocks): free
 * the slots of the others, copy the missing ones' keys below `upto` from
 * the offloaded cache on stream s. prefetch: s is the copy stream and the
 * copies are counted as prefetched. */
static ap_status pool_fill(ap_cuda_model *cm, int l, int g, int nb, int upto, ap_cuda_stream s,
                           int prefetch, ap_err *err) {
    /* upto is the position of the step the pages are for. */
    const int first = upto == cm->first_pos;
    ap_status st = AP_OK;
    const int hd = cm->hp.head_dim, cap = cm->cap;
    const size_t pi = (size_t)l * cm->hp.n_head_kv + (size_t)g;
    int *slot_of = cm->slot_of + pi * (size_t)cm->max_pages, *block_of = cm->block_of + pi * cap;
    int *stack = cm->free_stack + pi * cap, *top = &cm->free_top[pi];
    unsigned char *pf = cm->pf_flag + pi * cap;
    const size_t page_f = (size_t)KV_BLOCK * hd, row = (size_t)hd * sizeof(float);
    const size_t layer_off = (size_t)l * (size_t)cm->n_ctx * cm->kvd;
    for (int sl = 0; sl < cap; sl++) {
        const int b = block_of[sl];
        if (b < 0 || (b < nb && cm->need[b])) continue;
        block_of[sl] = -1;
        slot_of[b] = -1;
        pf[sl] = 0;
        stack[(*top)++] = sl;
    }
    for (int b = 0; b < nb; b++) {
        if (!cm->need[b]) continue;
        int sl = slot_of[b];
        if (sl >= 0) {
            if (!prefetch && pf[sl]) {
                cm->kvst.prefetch_hits++;
                pf[sl] = 0;
            }
            continue;
        }
        if (*top == 0)
            return ap_errf(err, AP_ERR_INTERNAL,
                           "device KV pool: layer %d, KV head %d needs more than its %d pages "
                           "(the policy's max_blocks)",
                           l, g, cap);
        sl = stack[--(*top)];
        slot_of[b] = sl;
        block_of[sl] = b;
        pf[sl] = 0;
        const int k0 = b * KV_BLOCK, k1 = k0 + KV_BLOCK < upto ? k0 + KV_BLOCK : upto;
        if (k1 <= k0) continue; /* a block that starts with the newest key: nothing to copy */
        /* A hit is a copy made ahead that the step then keeps. */
        pf[sl] = (unsigned char)prefetch;
        const size_t src = layer_off + (size_t)k0 * cm->kvd + (size_t)g * hd;
        float *dk = cm->d_pool_k + (pi * cap + (size_t)sl) * page_f;
        float *dv = cm->d_pool_v + (pi * cap + (size_t)sl) * page_f;
        if ((st = ap_cmc_copy_rows(dk, row, cm->h_k + src, cm->kvd * sizeof(float), row, k1 - k0,
                                   s, err)) ||
            (st = ap_cmc_copy_rows(dv, row, cm->h_v + src, cm->kvd * sizeof(float), row, k1 - k0,
                                   s, err)))
            return st;
        cm->kvst.h2d_bytes += 2.0 * (double)(k1 - k0) * (double)row;
        if (first) cm->kvst.fill_bytes += 2.0 * (double)(k1 - k0) * (double)row;
        if (prefetch)
            cm->kvst.prefetched_blocks++;
        else
            cm->kvst.demand_blocks++;
    }
    return AP_OK;
}

/* Lists as select returns them: offsets non-decreasing from 0, each list
 * strictly increasing inside [0, nb). */
static ap_status check_lists(const ap_cuda_model *cm, int l, int pos, int nb, const int *blocks,
                             const int *set_off, ap_err *err) {
    if (!set_off || set_off[0] != 0)
        return ap_errf(err, AP_ERR_ARG, "KV policy: layer %d at %d: no list offsets", l, pos);
    for (int s = 0; s < cm->pol_sets; s++) {
        if (set_off[s + 1] < set_off[s] || set_off[s + 1] - set_off[s] > nb)
            return ap_errf(err, AP_ERR_ARG, "KV policy: layer %d at %d: bad offsets of list %d",
                           l, pos, s);
        for (int i = set_off[s]; i < set_off[s + 1]; i++)
            if (blocks[i] < 0 || blocks[i] >= nb || (i > set_off[s] && blocks[i] <= blocks[i - 1]))
                return ap_errf(err, AP_ERR_ARG,
                               "KV policy: layer %d at %d: list %d is not strictly increasing "
                               "inside [0, %d)",
                               l, pos, s, nb);
    }
    return AP_OK;
}

/* The cross-token prefetch of layer l for the step at pos (its lists from
 * peek): after this step's work on layer l, copy what the pool lacks on the
 * copy stream and mark the point the next step's layer l waits for. */
static ap_status prefetch_layer(ap_cuda_model *cm, int l, int pos, int wait, ap_err *err) {
    ap_status st = AP_OK;
    const ap_kv_policy *P = cm->pol;
    const int *blocks = NULL, *set_off = NULL;
    const double t0 = ap_now_seconds();
    st = P->peek(P->user, l, pos, wait, &blocks, &set_off, err);
    cm->kvst.policy_seconds += ap_now_seconds() - t0;
    if (st || !blocks) return st;
    const int n_keys = pos + 1, nb = (n_keys + KV_BLOCK - 1) / KV_BLOCK;
    if ((st = check_lists(cm, l, pos, nb, blocks, set_off, err))) return st;
    /* The copy stream must not overwrite a page this step still reads. */
    if ((st = ap_cuda_event_record(cm->ev_main, cm->stream, err)) ||
        (st = ap_cuda_stream_wait_event(cm->copy_stream, cm->ev_main, err)))
        return st;
    for (int g = 0; g < cm->hp.n_head_kv && st == AP_OK; g++) {
        needed_blocks(cm, g, n_keys, blocks, set_off);
        /* Keys below pos exist; pos itself is written by its own step. */
        st = pool_fill(cm, l, g, nb, pos, cm->copy_stream, 1, err);
    }
    if (st == AP_OK) st = ap_cuda_event_record(cm->ev_pf[l], cm->copy_stream, err);
    if (st == AP_OK) {
        cm->pf_pos[l] = pos;
        cm->kvst.prefetch_layers++;
    }
    return st;
}

/* Peek, without waiting, at layers [j0, j1) not yet prefetched for the
 * step at pos, and prefetch those the policy can answer. */
static ap_status prefetch_ready(ap_cuda_model *cm, int j0, int j1, int pos, ap_err *err) {
    ap_status st = AP_OK;
    if (!cm->offload || !cm->prefetch || !cm->pol->peek) return AP_OK;
    for (int j = j0; j < j1 && st == AP_OK; j++)
        if (cm->pf_pos[j] != pos) st = prefetch_layer(cm, j, pos, 0, err);
    return st;
}

/* One decode layer under the policy: the new key stored, select, the pool
 * (offload), sparse attention into d_att, attended, the observer's key. */
static ap_status policy_layer(ap_cuda_model *cm, int l, int pos, ap_err *err) {
    ap_status st = AP_OK;
    const ap_hparams *hp = &cm->hp;
    const ap_kv_policy *P = cm->pol;
    const int H = hp->n_head, KV = hp->n_head_kv, hd = hp->head_dim, G = H / KV;
    const int n_keys = pos + 1, nb = (n_keys + KV_BLOCK - 1) / KV_BLOCK;
    const size_t ldb = (size_t)cm->max_pages, vbytes = (size_t)H * ldb * sizeof(float);
    const float scale = 1.0f / sqrtf((float)hd);
    ap_cuda_stream s = cm->stream;
    const float *k = NULL, *v = NULL;
    double t0;

    if ((st = store_kv(cm, l, pos, 1, &k, &v, err))) return st;
    if (cm->first_pos < 0) cm->first_pos = pos;
    const unsigned want = P->want ? P->want(P->user, l, pos) : 0;
    const int measure = (want & AP_KV_MEASURE) != 0, before = (want & AP_KV_DENSE_BEFORE) != 0;
    /* Dense passes read the whole cache in place (offloaded: over the bus). */
    ap_sparse_attn_args dense = {.n_groups = KV, .n_heads = G, .head_dim = hd, .n_keys = n_keys,
                                 .scale = scale, .q = cm->d_qkv, .k = k, .v = v,
                                 .ldkv = cm->kvd, .group_stride = (size_t)hd,
                                 .out = cm->d_scratch, .block = KV_BLOCK, .sink = n_keys,
                                 .set_off = cm->d_setoff, .bmax = cm->dv_max.d,
                                 .bsum = cm->dv_sum.d, .ldb = ldb};
    if (before && ((st = ap_sparse_attn_cuda(&dense, cm->d_work, cm->work_bytes, s, err)) ||
                   (st = ap_cuda_to_host(cm->dv_max.h, cm->dv_max.d, vbytes, s, err)) ||
                   (st = ap_cuda_to_host(cm->dv_sum.h, cm->dv_sum.d, vbytes, s, err))))
        return st;
    if ((st = ap_cuda_to_host(cm->oq.h, cm->d_qkv, cm->qd * sizeof(float), s, err)) ||
        (st = ap_cuda_to_host(cm->ok.h, cm->d_qkv + cm->qd, cm->kvd * sizeof(float), s, err)) ||
        (st = ap_cuda_sync(s, err)))
        return st;

    ap_kv_step ks = {.layer = l, .pos = pos, .n_head = H, .n_head_kv = KV, .head_dim = hd,
                     .n_blocks = nb, .ldb = ldb, .q = cm->oq.h, .kv_stride = cm->kvd,
                     .dense_bmax = before ? cm->dv_max.h : NULL,
                     .dense_bsum = before ? cm->dv_sum.h : NULL};
    const int *blocks = NULL, *set_off = NULL;
    t0 = ap_now_seconds();
    st = P->select(P->user, &ks, &blocks, &set_off, err);
    cm->kvst.policy_seconds += ap_now_seconds() - t0;
    if (st) return st;
    if ((st = check_lists(cm, l, pos, nb, blocks, set_off, err))) return st;
    const int n_list = set_off[cm->pol_sets];
    int *hl = cm->lists.h;
    memcpy(hl, blocks, (size_t)n_list * sizeof(int));
    memcpy(hl + (size_t)n_list, set_off, ((size_t)cm->pol_sets + 1) * sizeof(int));
    if ((st = ap_cuda_to_device(cm->lists.d, cm->lists.h,
                                ((size_t)n_list + cm->pol_sets + 1) * sizeof(int), s, err)))
        return st;
    const int *d_blocks = cm->lists.d, *d_off = (const int *)cm->lists.d + n_list;

    ap_sparse_attn_args a = {.n_groups = KV, .n_heads = G, .head_dim = hd, .n_keys = n_keys,
                             .scale = scale, .q = cm->d_qkv, .out = cm->d_att, .block = KV_BLOCK,
                             .sink = P->sink, .local = P->local, .per_q_head = P->per_q_head,
                             .blocks = d_blocks, .set_off = d_off, .n_kept = cm->nkept.d,
                             .bmax = cm->sv_max.d, .bsum = cm->sv_sum.d, .ldb = ldb};
    if (cm->offload) {
        if (cm->pf_pos[l] == pos && (st = ap_cuda_stream_wait_event(s, cm->ev_pf[l], err)))
            return st;
        const float **tk = cm->ptab.h, **tv = tk + (size_t)KV * nb;
        const size_t page_f = (size_t)KV_BLOCK * hd;
        const size_t row = (size_t)hd * sizeof(float), newest = (size_t)(pos % KV_BLOCK);
        for (int g = 0; g < KV && st == AP_OK; g++) {
            const size_t pi = (size_t)l * KV + (size_t)g;
            needed_blocks(cm, g, n_keys, blocks, set_off);
            if ((st = pool_fill(cm, l, g, nb, pos, s, 0, err))) return st;
            long pages = 0, held = 0;
            for (int b = 0; b < nb; b++) {
                const int sl = cm->slot_of[pi * (size_t)cm->max_pages + (size_t)b];
                tk[(size_t)g * nb + b] = sl < 0 ? NULL : cm->d_pool_k + (pi * cm->cap + sl) * page_f;
                tv[(size_t)g * nb + b] = sl < 0 ? NULL : cm->d_pool_v + (pi * cm->cap + sl) * page_f;
                if (sl >= 0) {
                    pages++;
                    held += n_keys - b * KV_BLOCK < KV_BLOCK ? n_keys - b * KV_BLOCK : KV_BLOCK;
                }
            }
            /* The newest key goes into its page (its block is kept when the
             * local window is not empty; otherwise only when listed). */
            const float *nk = tk[(size_t)g * nb + nb - 1];
            if (nk) {
                const float *src = cm->d_qkv + cm->qd + (size_t)g * hd;
                if ((st = ap_cuda_device_copy((float *)nk + newest * hd, src, row, s, err)) ||
                    (st = ap_cuda_device_copy((float *)tv[(size_t)g * nb + nb - 1] + newest * hd,
                                              src + cm->kvd, row, s, err)))
                    return st;
            }
            cm->kvst.pool_used_bytes += 2.0 * (double)pages * (double)page_f * sizeof(float);
            cm->kvst.kept_tokens += (double)held;
        }
        if ((st = ap_cuda_to_device(cm->ptab.d, cm->ptab.h, 2 * (size_t)KV * nb * sizeof(float *),
                                    s, err)))
            return st;
        if (measure) {
            a.k = k;
            a.v = v;
            a.group_stride = (size_t)hd;
            a.ldkv = cm->kvd;
        } else {
            a.k_pages = (const void *const *)cm->ptab.d;
            a.v_pages = (const void *const *)((const float *const *)cm->ptab.d + (size_t)KV * nb);
            a.ldkv = (size_t)hd;
        }
    } else {
        a.k = k;
        a.v = v;
        a.group_stride = (size_t)hd;
        a.ldkv = cm->kvd;
    }
    if (measure) {
        a.kept_mass = cm->kmass.d;
        a.dense_bmax = cm->dv_max.d;
        a.dense_bsum = cm->dv_sum.d;
    }
    if ((st = ap_sparse_attn_cuda(&a, cm->d_work, cm->work_bytes, s, err)) ||
        (st = ap_cuda_to_host(cm->nkept.h, cm->nkept.d, (size_t)H * sizeof(int), s, err)) ||
        (st = ap_cuda_to_host(cm->sv_max.h, cm->sv_max.d, vbytes, s, err)) ||
        (st = ap_cuda_to_host(cm->sv_sum.h, cm->sv_sum.d, vbytes, s, err)))
        return st;
    if (measure && ((st = ap_cuda_to_host(cm->kmass.h, cm->kmass.d, (size_t)H * sizeof(float), s,
                                          err)) ||
                    (st = ap_cuda_to_host(cm->dv_max.h, cm->dv_max.d, vbytes, s, err)) ||
                    (st = ap_cuda_to_host(cm->dv_sum.h, cm->dv_sum.d, vbytes, s, err))))
        return st;
    if ((st = ap_cuda_sync(s, err))) return st;
    if (P->attended) {
        ap_kv_attended r = {.n_kept = cm->nkept.h, .bmax = cm->sv_max.h, .bsum = cm->sv_sum.h,
                            .kept_mass = measure ? cm->kmass.h : NULL,
                            .dense_bmax = measure ? cm->dv_max.h : NULL,
                            .dense_bsum = measure ? cm->dv_sum.h : NULL};
        t0 = ap_now_seconds();
        st = P->attended(P->user, &ks, &r, err);
        cm->kvst.policy_seconds += ap_now_seconds() - t0;
        if (st) return st;
    }
    if (cm->obs && cm->obs->on_key)
        for (int g = 0; g < KV; g++)
            cm->obs->on_key(cm->obs->user, l, g, pos, (const float *)cm->ok.h + (size_t)g * hd, hd);
    /* Cross-token prefetch: layers whose next lists are ready by now. */
    if (pos + 1 < cm->n_ctx) st = prefetch_ready(cm, 0, l + 1, pos + 1, err);
    return st;
}

ap_status ap_cuda_model_set_kv_policy(ap_cuda_model *cm, const ap_kv_policy *p, ap_err *err) {
    ap_status st = AP_OK;
    const ap_hparams *hp = &cm->hp;
    const int L = hp->n_layer, H = hp->n_head, KV = hp->n_head_kv;
    policy_release(cm);
    memset(&cm->kvst, 0, sizeof cm->kvst);
    cm->first_pos = -1;
    if (!p) return AP_OK;
    if (p->block != KV_BLOCK || p->sink < 0 || p->local < 0 || p->sink % KV_BLOCK != 0 ||
        !p->select)
        return ap_errf(err, AP_ERR_ARG,
                       "KV policy: block %d, sink %d, local %d (the CUDA engine needs block %d, "
                       "a sink that is a multiple of it, and a select callback)",
                       p->block, p->sink, p->local, KV_BLOCK);
    const size_t mp = (size_t)cm->max_pages, sets = (size_t)(p->per_q_head ? H : KV);
    const size_t vbytes = (size_t)H * mp * sizeof(float);
    cm->pol_sets = (int)sets;
    if ((st = xbuf_need(cm, &cm->lists, (sets * mp + sets + 1) * sizeof(int), 1, 1, err)) ||
        (st = xbuf_need(cm, &cm->sv_max, vbytes, 1, 1, err)) ||
        (st = xbuf_need(cm, &cm->sv_sum, vbytes, 1, 1, err)) ||
        (st = xbuf_need(cm, &cm->dv_max, vbytes, 1, 1, err)) ||
        (st = xbuf_need(cm, &cm->dv_sum, vbytes, 1, 1, err)) ||
        (st = xbuf_need(cm, &cm->nkept, (size_t)H * sizeof(int), 1, 1, err)) ||
        (st = xbuf_need(cm, &cm->kmass, (size_t)H * sizeof(float), 1, 1, err)) ||
        (st = xbuf_need(cm, &cm->oq, cm->qd * sizeof(float), 0, 1, err)) ||
        (st = xbuf_need(cm, &cm->ok, cm->kvd * sizeof(float), 0, 1, err)) ||
        (st = dev_alloc(cm, (void **)&cm->d_scratch, cm->qd * sizeof(float), err)))
        goto cleanup;
    cm->pol_dev_bytes += cm->qd * sizeof(float);
    if (cm->offload) {
        const size_t P = (size_t)L * KV;
        int cap = p->max_blocks > 0 && p->max_blocks < cm->max_pages ? p->max_blocks : cm->max_pages;
        cm->cap = cap;
        const size_t pool = P * (size_t)cap * KV_BLOCK * (size_t)hp->head_dim * sizeof(float);
        if ((st = dev_alloc(cm, (void **)&cm->d_pool_k, pool, err))) goto cleanup;
        cm->pol_dev_bytes += pool;
        if ((st = dev_alloc(cm, (void **)&cm->d_pool_v, pool, err))) goto cleanup;
        cm->pol_dev_bytes += pool;
        if ((st = xbuf_need(cm, &cm->ptab, 2 * (size_t)KV * mp * sizeof(float *), 1, 1, err)))
            goto cleanup;
        cm->kvst.pool_capacity_bytes = 2.0 * (double)pool;
        cm->slot_of = malloc(P * mp * sizeof(int));
        cm->block_of = malloc(P * (size_t)cap * sizeof(int));
        cm->free_stack = malloc(P * (size_t)cap * sizeof(int));
        cm->free_top = malloc(P * sizeof(int));
        cm->pf_flag = calloc(P * (size_t)cap, 1);
        cm->need = calloc(mp, 1);
        cm->pf_pos = malloc((size_t)L * sizeof(int));
        cm->ev_pf = calloc((size_t)L, sizeof *cm->ev_pf);
        if (!cm->slot_of || !cm->block_of || !cm->free_stack || !cm->free_top || !cm->pf_flag ||
            !cm->need || !cm->pf_pos || !cm->ev_pf) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the device KV pool's tables");
            goto cleanup;
        }
        for (size_t i = 0; i < P * mp; i++) cm->slot_of[i] = -1;
        for (size_t pi = 0; pi < P; pi++) {
            cm->free_top[pi] = cap;
            for (int sl = 0; sl < cap; sl++) {
                cm->block_of[pi * cap + sl] = -1;
                cm->free_stack[pi * cap + sl] = cap - 1 - sl; /* slot 0 on top */
            }
        }
        for (int l = 0; l < L; l++) cm->pf_pos[l] = -1;
        if ((st = ap_cuda_stream_create(&cm->copy_stream, err)) ||
            (st = ap_cuda_event_create(&cm->ev_main, err)))
            goto cleanup;
        for (int l = 0; l < L; l++)
            if ((st = ap_cuda_event_create(&cm->ev_pf[l], err))) goto cleanup;
    }
    cm->pol = p;
cleanup:
    if (st) {
        policy_release(cm);
        ap_err_prefix(err, "CUDA engine");
    }
    return st;
}

void ap_cuda_model_kv_stats(const ap_cuda_model *cm, ap_cuda_kv_stats *st) { *st = cm->kvst; }

/* T tokens at pos0..pos0+T-1 through every layer; the final hidden states
 * (before output_norm) are left in d_x. */
static ap_status forward_ubatch(ap_cuda_model *cm, const int32_t *tokens, int T, int pos0,
                                ap_err *err) {
    ap_status st = AP_OK;
    const ap_hparams *hp = &cm->hp;
    const size_t E = (size_t)hp->n_embd, F = (size_t)hp->n_ff, hd = (size_t)hp->head_dim;
    const int iE = hp->n_embd, iF = hp->n_ff, iqd = (int)cm->qd;
    const int policy = T == 1 && cm->pol != NULL;
    ap_cuda_stream s = cm->stream;

    if (cm->obs && !policy && (st = obs_buffers(cm, pos0, T, err))) return st;
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
                               cm->d_rope + (size_t)pos0 * hd, s, err)))
            return st;
        if (policy) {
            /* Later layers' copies for this step go out while this one runs. */
            if ((st = prefetch_ready(cm, l + 1, hp->n_layer, pos0, err)) ||
                (st = policy_layer(cm, l, pos0, err)))
                return st;
        } else if ((st = store_kv(cm, l, pos0, T, &k, &v, err)) ||
                   (st = attention(cm, l, pos0, T, k, v, err)) ||
                   (cm->obs && (st = obs_layer(cm, l, pos0, T, k, err)))) {
            return st;
        }
        /* Residual adds are the products' beta = 1. */
        if ((st = ap_cmc_gemm(cm->blas, cm->d_x, E, cm->d_att, cm->qd, w->wo, iE, iqd, T, 1,
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
    if (policy) cm->kvst.steps++;
    return AP_OK;
}

/* Report the column sums of this eval (doubles on the device) as floats. */
static ap_status obs_colsums(ap_cuda_model *cm, ap_err *err) {
    ap_status st = AP_OK;
    const ap_hparams *hp = &cm->hp;
    const size_t n = (size_t)hp->n_layer * hp->n_head * (size_t)cm->n_ctx;
    if ((st = ap_cuda_to_host(cm->ocs.h, cm->ocs.d, n * sizeof(double), cm->stream, err)) ||
        (st = ap_cuda_sync(cm->stream, err)))
        return st;
    const int len = cm->n_past;
    for (int l = 0; l < hp->n_layer; l++)
        for (int h = 0; h < hp->n_head; h++) {
            const double *src = (const double *)cm->ocs.h + ((size_t)l * hp->n_head + h) * cm->n_ctx;
            for (int j = 0; j < len; j++) cm->h_ocs_f[j] = (float)src[j];
            cm->obs->on_colsum(cm->obs->user, l, h, cm->h_ocs_f, len);
        }
    return AP_OK;
}

ap_status ap_cuda_model_eval(ap_cuda_model *cm, const int32_t *tokens, int n, float *logits_host,
                             ap_err *err) {
    return ap_cuda_model_eval_obs(cm, tokens, n, logits_host, NULL, err);
}

ap_status ap_cuda_model_eval_obs(ap_cuda_model *cm, const int32_t *tokens, int n,
                                 float *logits_host, const ap_attn_observer *obs, ap_err *err) {
    ap_status st = AP_OK;
    const ap_hparams *hp = &cm->hp;
    const size_t E = (size_t)hp->n_embd, V = (size_t)hp->n_vocab;
    const int n_past0 = cm->n_past;

    if ((st = ap_eval_check_tokens(hp, tokens, n, cm->n_past, cm->n_ctx, err))) goto cleanup;
    if (obs && ((obs->on_row && !obs->on_views) ||
                (obs->on_views && (obs->view_block < 16 || obs->view_block % 16 != 0)))) {
        st = ap_errf(err, AP_ERR_ARG,
                     "the CUDA engine reports block views: an observer needs on_views (with a "
                     "view_block that is a positive multiple of 16, got %d) to get rows",
                     obs->view_block);
        goto cleanup;
    }
    cm->obs = obs;
    if (obs && obs->on_colsum && !(n == 1 && cm->pol)) {
        const size_t cs = (size_t)hp->n_layer * hp->n_head * (size_t)cm->n_ctx;
        if ((st = xbuf_need(cm, &cm->ocs, cs * sizeof(double), 1, 1, err)) ||
            (st = ap_cuda_zero(cm->ocs.d, cs * sizeof(double), cm->stream, err)))
            goto rollback;
        if (!cm->h_ocs_f && !(cm->h_ocs_f = malloc((size_t)cm->n_ctx * sizeof(float)))) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory for column sums");
            goto rollback;
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
    if (obs && obs->on_colsum && !(n == 1 && cm->pol) && (st = obs_colsums(cm, err)))
        goto rollback;
    goto cleanup;

rollback:
    /* Positions past n_past are never read, so the rows already written
     * need no undoing. Drain the stream so a later call starts clean. */
    cm->n_past = n_past0;
    ap_cuda_sync(cm->stream, NULL);
    if (cm->copy_stream) ap_cuda_sync(cm->copy_stream, NULL);
    pool_flush(cm);
cleanup:
    cm->obs = NULL;
    return st;
}

/* Forget what the device pool holds (the cache it mirrors changed). */
static void pool_flush(ap_cuda_model *cm) {
    if (!cm->slot_of) return;
    const size_t P = (size_t)cm->hp.n_layer * cm->hp.n_head_kv, cap = (size_t)cm->cap;
    for (size_t i = 0; i < P * (size_t)cm->max_pages; i++) cm->slot_of[i] = -1;
    for (size_t pi = 0; pi < P; pi++) {
        cm->free_top[pi] = (int)cap;
        for (size_t sl = 0; sl < cap; sl++) {
            cm->block_of[pi * cap + sl] = -1;
            cm->pf_flag[pi * cap + sl] = 0;
            cm->free_stack[pi * cap + sl] = (int)(cap - 1 - sl);
        }
    }
    for (int l = 0; l < cm->hp.n_layer; l++) cm->pf_pos[l] = -1;
    cm->first_pos = -1;
}

void ap_cuda_model_reset(ap_cuda_model *cm) {
    if (cm->copy_stream) ap_cuda_sync(cm->copy_stream, NULL);
    pool_flush(cm);
    cm->n_past = 0;
}

ap_status ap_cuda_model_truncate(ap_cuda_model *cm, int n_past, ap_err *err) {
    if (n_past < 0 || n_past > cm->n_past)
        return ap_errf(err, AP_ERR_RANGE, "cannot truncate the KV cache to %d (it holds %d)",
                       n_past, cm->n_past);
    if (cm->copy_stream) ap_cuda_sync(cm->copy_stream, NULL);
    pool_flush(cm);
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

ap_status ap_cuda_model_eval_obs(ap_cuda_model *cm, const int32_t *tokens, int n,
                                 float *logits_host, const ap_attn_observer *obs, ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}

ap_status ap_cuda_model_set_kv_policy(ap_cuda_model *cm, const ap_kv_policy *p, ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}

void ap_cuda_model_kv_stats(const ap_cuda_model *cm, ap_cuda_kv_stats *st) {
    (void)cm;
    memset(st, 0, sizeof *st);
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
