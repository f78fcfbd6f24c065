/* Llama forward pass on the CPU.
 *
 * Threading: ap_ctx_create sets OpenBLAS to one thread for the whole process
 * (openblas_set_num_threads(1)) and the ctx runs its own pool of n_threads - 1
 * workers plus the calling thread. Every parallel step is a set of tiles the
 * threads take from an atomic counter: projections by output neurons,
 * prefill attention by query head, decode attention by (GQA group, key
 * chunk). Tile boundaries depend only on the shapes and n_threads, so
 * results do not depend on timing. Mixing BLAS's own pool with ours would
 * oversubscribe two cores and serialize concurrent threaded sgemms
 * (stack-notes 9).
 *
 * Weights (docs/engine.md): by default every 2-D weight stays in its GGUF
 * block format. Decode (and micro-batches of at most QV_MAX_T tokens)
 * multiplies the blocks directly (kernels/qmatvec.h: exact weights, float32
 * activations); longer prefills dequantize a strip of rows at a time into a
 * per-thread buffer and run sgemm on it, the exact float32 weights the
 * reference uses. ap_model_opts.f32_weights restores the old engine:
 * everything dequantized to float32 at load, sgemv/sgemm only.
 *
 * Decode attention streams each K/V head once: a tile scores a chunk of
 * keys for every query head of its group, exponentiates against the chunk's
 * own maximum and mixes the chunk's values; a cheap combine step rescales
 * the chunks (flash-decoding), and normalises the probability rows only when
 * an observer wants them.
 *
 * Memory: the weights (quantized: ~1/5 of float32), per ctx the KV cache
 * [n_layer][n_ctx][n_head_kv*head_dim] for K and for V, activations for one
 * micro-batch of UBATCH tokens, per thread one [ATTN_CHUNK x n_ctx] score
 * block and one dequantization strip. Long prompts run as successive
 * micro-batches, so nothing grows quadratically with the prompt. */
#include "capture/model.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/attention.h"
#include "kernels/matmul.h"
#include "kernels/qmatvec.h"
#include "kernels/quant.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"
#include "kernels/sparse_attn.h"
#include "kernels/swiglu.h"

/* Tokens per micro-batch: large enough that sgemm runs near peak, small
 * enough that activations stay a few MB. */
#define UBATCH 512
/* Query rows per attention score block. */
#define ATTN_CHUNK 128
/* Pause iterations a worker spins before sleeping: covers the few serial
 * microseconds between two parallel steps of a decode token. */
#define POOL_SPIN 4000
/* Up to this many tokens a projection runs as that many quantized
 * matrix-vector products; beyond, dequantizing strips for sgemm is cheaper
 * (around 4 tokens both cost about the same on AVX2: docs/engine.md). */
#define QV_MAX_T 4
/* Floats of one thread's dequantization strip (2 MiB): a whole projection
 * tile of the default model, so prefill makes as many sgemm calls (each
 * packing the activations again) as the float32 engine does. */
#define DEQ_STRIP_FLOATS (1 << 19)
/* Keys per decode-attention tile: bounds of the adaptive chunk. */
#define KV_CHUNK_MIN 64
#define KV_CHUNK_MAX 512

/* Sanity limits on hyperparameters, so size arithmetic cannot overflow. */
#define MAX_DIM (1 << 20)
#define MAX_LAYERS 4096

/* One weight matrix: a view plus what the model owns behind it (NULL when
 * it borrows the gguf mapping or shares another matrix). */
typedef struct {
    ap_qmat q;
    void *owned;
} wmat;

typedef struct {
    float *attn_norm; /* [n_embd] */
    wmat wq, wk, wv;  /* [n_head hd | n_head_kv hd][n_embd] */
    float *bqkv;      /* qkv_bias: [n_head hd + 2 n_head_kv hd], q | k | v; else NULL */
    float *q_norm, *k_norm; /* qk_norm: [head_dim]; else NULL */
    wmat wo;          /* [n_embd][n_head hd] */
    float *post_attn_norm; /* post_norms: [n_embd]; else NULL */
    float *ffn_norm;  /* [n_embd] */
    wmat wg, wu;      /* [n_ff][n_embd] */
    wmat wd;          /* [n_embd][n_ff] */
    float *post_ffw_norm; /* post_norms: [n_embd]; else NULL */
} layer_w;

struct ap_model {
    ap_hparams hp;
    ap_model_opts opts;
    wmat tok_embd;   /* [n_vocab][n_embd] */
    float *out_norm; /* [n_embd] */
    wmat output;     /* [n_vocab][n_embd]; a view of tok_embd when tied */
    float *rope_freqs; /* hp.rope_freqs: [head_dim / 2] frequency divisors; else NULL */
    layer_w *layers;
    size_t weight_bytes; /* bytes of the matrices one decode step reads */
};

/* ------------------------------------------------------------------ load */

static ap_status get_int_opt(const ap_gguf *g, const char *key, int64_t def, int64_t *out,
                             ap_err *err) {
    if (ap_gguf_find_key(g, key) < 0) {
        *out = def;
        return AP_OK;
    }
    return ap_gguf_get_int(g, key, out, err);
}

static ap_status get_float_opt(const ap_gguf *g, const char *key, double def, double *out,
                               ap_err *err) {
    if (ap_gguf_find_key(g, key) < 0) {
        *out = def;
        return AP_OK;
    }
    return ap_gguf_get_float(g, key, out, err);
}

static ap_status check_range(const char *key, int64_t v, int64_t lo, int64_t hi, int *out,
                             ap_err *err) {
    if (v < lo || v > hi)
        return ap_errf(err, AP_ERR_FORMAT, "metadata %s = %lld is outside [%lld, %lld]", key,
                       (long long)v, (long long)lo, (long long)hi);
    *out = (int)v;
    return AP_OK;
}

int ap_hparams_layer_swa(const ap_hparams *hp, int layer) {
    if (hp->swa_window <= 0) return 0;
    return hp->swa_pattern <= 0 || (layer + 1) % hp->swa_pattern != 0;
}

int ap_hparams_n_full_layers(const ap_hparams *hp) {
    int n = 0;
    for (int l = 0; l < hp->n_layer; l++) n += !ap_hparams_layer_swa(hp, l);
    return n;
}

/* What each general.architecture switches on (ap_hparams). */
typedef struct {
    const char *name;
    ap_arch id;
    int rope_neox, qkv_bias, qk_norm, post_norms, ffn_gelu, embd_scale_sqrt, swa;
} arch_desc;

static const arch_desc ARCHES[] = {
    {"llama", AP_ARCH_LLAMA, 0, 0, 0, 0, 0, 0, 0},
    {"qwen2", AP_ARCH_QWEN2, 1, 1, 0, 0, 0, 0, 0},
    {"qwen3", AP_ARCH_QWEN3, 1, 0, 1, 0, 0, 0, 0},
    {"gemma3", AP_ARCH_GEMMA3, 1, 0, 1, 1, 1, 1, 1},
};

ap_status ap_hparams_read(const ap_gguf *g, ap_hparams *hp, ap_err *err) {
    ap_status st;
    const char *s;
    size_t len;
    int64_t v;
    double d;
    char key[128];
    const arch_desc *ad = NULL;

    memset(hp, 0, sizeof *hp);
    if ((st = ap_gguf_get_str(g, "general.architecture", &s, &len, err))) return st;
    for (size_t i = 0; i < sizeof ARCHES / sizeof ARCHES[0]; i++)
        if (strlen(ARCHES[i].name) == len && memcmp(s, ARCHES[i].name, len) == 0) ad = &ARCHES[i];
    if (!ad)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "general.architecture '%.*s' is not supported (supported: llama, which "
                       "covers Llama 1-3.x and Mistral files, qwen2, qwen3, gemma3)",
                       (int)(len > 64 ? 64 : len), s);
    const char *arch = ad->name;
    snprintf(hp->arch, sizeof hp->arch, "%s", arch);
    hp->arch_id = ad->id;
    hp->rope_neox = ad->rope_neox;
    hp->qkv_bias = ad->qkv_bias;
    hp->qk_norm = ad->qk_norm;
    hp->post_norms = ad->post_norms;
    hp->ffn_gelu = ad->ffn_gelu;
    if (ap_gguf_find_key(g, "general.name") >= 0 &&
        ap_gguf_get_str(g, "general.name", &s, &len, NULL) == AP_OK) {
        if (len >= sizeof hp->name) len = sizeof hp->name - 1;
        memcpy(hp->name, s, len);
        hp->name[len] = '\0';
    }

#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
#define REQ_INT(suffix, lo, hi, field)                                                         \
    do {                                                                                       \
        if ((st = ap_gguf_get_int(g, KEY(suffix), &v, err))) return st;                        \
        if ((st = check_range(key, v, lo, hi, &hp->field, err))) return st;                    \
    } while (0)

    REQ_INT("context_length", 1, 1 << 24, n_ctx_train);
    REQ_INT("embedding_length", 1, MAX_DIM, n_embd);
    REQ_INT("block_count", 1, MAX_LAYERS, n_layer);
    REQ_INT("feed_forward_length", 1, MAX_DIM, n_ff);
    REQ_INT("attention.head_count", 1, 4096, n_head);
    if ((st = get_int_opt(g, KEY("attention.head_count_kv"), hp->n_head, &v, err))) return st;
    if ((st = check_range(key, v, 1, hp->n_head, &hp->n_head_kv, err))) return st;
    if (hp->n_head % hp->n_head_kv != 0)
        return ap_errf(err, AP_ERR_FORMAT,
                       "%s.attention.head_count %d is not a multiple of head_count_kv %d", arch,
                       hp->n_head, hp->n_head_kv);
#undef REQ_INT

    /* head_dim: n_embd / n_head unless the file says otherwise. */
    int64_t hd = hp->n_embd % hp->n_head == 0 ? hp->n_embd / hp->n_head : 0;
    int64_t rot = -1, klen = -1, vlen = -1;
    if ((st = get_int_opt(g, KEY("attention.key_length"), -1, &klen, err))) return st;
    if ((st = get_int_opt(g, KEY("attention.value_length"), -1, &vlen, err))) return st;
    if ((st = get_int_opt(g, KEY("rope.dimension_count"), -1, &rot, err))) return st;
    if (klen > 0) hd = klen;
    else if (rot > 0) hd = rot;
    if (hd <= 0)
        return ap_errf(err, AP_ERR_FORMAT,
                       "head_dim unknown: %s.embedding_length %d is not a multiple of head_count "
                       "%d and neither rope.dimension_count nor attention.key_length is set",
                       arch, hp->n_embd, hp->n_head);
    if (rot > 0 && rot != hd)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "partial rotary embedding (%s.rope.dimension_count %lld, head_dim %lld) is "
                       "not supported",
                       arch, (long long)rot, (long long)hd);
    if (vlen > 0 && vlen != hd)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "%s.attention.value_length %lld differs from key_length %lld", arch,
                       (long long)vlen, (long long)hd);
    if ((st = check_range("head_dim", hd, 2, 4096, &hp->head_dim, err))) return st;
    if (hp->head_dim % 2)
        return ap_errf(err, AP_ERR_FORMAT, "head_dim %d is odd: RoPE needs pairs", hp->head_dim);
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);

    if ((st = get_float_opt(g, KEY("rope.freq_base"), 10000.0, &d, err))) return st;
    if (!(d > 0.0 && isfinite(d)))
        return ap_errf(err, AP_ERR_FORMAT, "metadata %s = %g is not a positive number", key, d);
    hp->rope_base = (float)d;
    if ((st = ap_gguf_get_float(g, KEY("attention.layer_norm_rms_epsilon"), &d, err))) return st;
    if (!(d > 0.0 && isfinite(d)))
        return ap_errf(err, AP_ERR_FORMAT, "metadata %s = %g is not a positive number", key, d);
    hp->rms_eps = (float)d;

    /* RoPE scaling: none, linear (positions / factor), YaRN, or Llama 3.x's
     * per-frequency factors (the rope_freqs.weight tensor, checked at load). */
    int linear = 0, yarn = 0;
    if (ap_gguf_find_key(g, KEY("rope.scaling.type")) >= 0) {
        if ((st = ap_gguf_get_str(g, key, &s, &len, err))) return st;
        if (len == 6 && memcmp(s, "linear", 6) == 0) linear = 1;
        else if (len == 4 && memcmp(s, "yarn", 4) == 0) yarn = 1;
        else if (!(len == 0 || (len == 4 && memcmp(s, "none", 4) == 0)))
            return ap_errf(err, AP_ERR_UNSUPPORTED,
                           "metadata %s = '%.*s': RoPE scaling of this type is not supported "
                           "(supported: none, linear, yarn, and Llama 3.x rope_freqs)",
                           key, (int)(len > 64 ? 64 : len), s);
    }
    if ((st = get_float_opt(g, KEY("rope.scaling.factor"), 1.0, &d, err))) return st;
    if (!(d >= 0.0 && isfinite(d)))
        return ap_errf(err, AP_ERR_FORMAT, "metadata %s = %g is not a non-negative number", key, d);
    hp->rope_freq_scale = 1.0f;
    if (yarn) {
        /* transformers reads the same keys (the converter writes them from
         * rope_parameters); a factor of 1 still applies the ramp's
         * attention factor of 1, i.e. nothing. */
        if (!(d > 0.0))
            return ap_errf(err, AP_ERR_FORMAT,
                           "metadata %s = %g: yarn scaling needs a positive factor", key, d);
        hp->rope_yarn = 1;
        hp->yarn_factor = (float)d;
        hp->rope_freq_scale = (float)(1.0 / d);
        if (ap_gguf_find_key(g, KEY("rope.scaling.original_context_length")) < 0)
            return ap_errf(err, AP_ERR_FORMAT,
                           "metadata %s is missing: yarn scaling needs the original context "
                           "length", key);
        if ((st = ap_gguf_get_int(g, key, &v, err))) return st;
        if ((st = check_range(key, v, 1, 1 << 24, &hp->yarn_orig_ctx, err))) return st;
        static const char *const betas[] = {"rope.scaling.yarn_beta_fast",
                                            "rope.scaling.yarn_beta_slow"};
        const double beta_def[] = {32.0, 1.0};
        float *beta_out[] = {&hp->yarn_beta_fast, &hp->yarn_beta_slow};
        for (int i = 0; i < 2; i++) {
            if ((st = get_float_opt(g, KEY(betas[i]), beta_def[i], &d, err))) return st;
            if (!(d > 0.0 && isfinite(d)))
                return ap_errf(err, AP_ERR_FORMAT, "metadata %s = %g is not a positive number",
                               key, d);
            *beta_out[i] = (float)d;
        }
        /* The attention factor of transformers: given, or 0.1 ln(factor) + 1. */
        double mscale = hp->yarn_factor <= 1.0f ? 1.0 : 0.1 * log((double)hp->yarn_factor) + 1.0;
        if ((st = get_float_opt(g, KEY("rope.scaling.yarn_attn_factor"), mscale, &d, err)))
            return st;
        if (!(d > 0.0 && isfinite(d)))
            return ap_errf(err, AP_ERR_FORMAT, "metadata %s = %g is not a positive number", key,
                           d);
        hp->yarn_attn_factor = (float)d;
        /* llama.cpp-only refinements transformers has no counterpart for. */
        if ((st = get_float_opt(g, KEY("rope.scaling.yarn_ext_factor"), 1.0, &d, err))) return st;
        if (d != 1.0 && d >= 0.0)
            return ap_errf(err, AP_ERR_UNSUPPORTED,
                           "metadata %s = %g is not supported (only 1, the full YaRN ramp)", key,
                           d);
        if ((st = get_float_opt(g, KEY("rope.scaling.yarn_log_multiplier"), 0.0, &d, err)))
            return st;
        if (d != 0.0)
            return ap_errf(err, AP_ERR_UNSUPPORTED,
                           "metadata %s = %g is not supported (DeepSeek-style mscale)", key, d);
        if (ap_gguf_find_tensor(g, "rope_freqs.weight") != NULL)
            return ap_errf(err, AP_ERR_UNSUPPORTED,
                           "tensor 'rope_freqs.weight' together with yarn scaling is not "
                           "supported");
    } else if (d != 0.0 && d != 1.0) {
        if (!linear)
            return ap_errf(err, AP_ERR_UNSUPPORTED,
                           "metadata %s = %g without %s.rope.scaling.type = linear or yarn is not "
                           "supported",
                           key, d, arch);
        hp->rope_freq_scale = (float)(1.0 / d);
    }
    hp->rope_freqs = ap_gguf_find_tensor(g, "rope_freqs.weight") != NULL;
    if (hp->rope_freqs && ad->id != AP_ARCH_LLAMA)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "tensor 'rope_freqs.weight' in a %s file is not supported (only llama)",
                       arch);

    /* Gemma 3: embeddings times sqrt(n_embd); sliding-window layers with
     * their own RoPE base. llama.cpp writes the window but not the layer
     * pattern or the local base (it fixes them to 6 and 1e4); a file that
     * carries them wins. */
    hp->embd_scale = ad->embd_scale_sqrt ? sqrtf((float)hp->n_embd) : 1.0f;
    /* Gemma 3 27B scales queries by query_pre_attn_scalar = n_embd / n_head
     * (168), not head_dim (128); the GGUF has no key for it, and llama.cpp
     * recognises the 27B by its 62 layers. The other sizes have
     * query_pre_attn_scalar = head_dim. */
    if (ad->id == AP_ARCH_GEMMA3 && hp->n_layer == 62)
        hp->attn_scale = 1.0f / sqrtf((float)(hp->n_embd / hp->n_head));
    hp->rope_base_swa = hp->rope_base;
    if (ad->swa) {
        if ((st = get_int_opt(g, KEY("attention.sliding_window"), 0, &v, err))) return st;
        if ((st = check_range(key, v, 0, 1 << 24, &hp->swa_window, err))) return st;
        if ((st = get_int_opt(g, KEY("attention.sliding_window_pattern"), 6, &v, err))) return st;
        if ((st = check_range(key, v, 1, MAX_LAYERS, &hp->swa_pattern, err))) return st;
        if ((st = get_float_opt(g, KEY("rope.freq_base_swa"), 10000.0, &d, err))) return st;
        if (!(d > 0.0 && isfinite(d)))
            return ap_errf(err, AP_ERR_FORMAT, "metadata %s = %g is not a positive number", key,
                           d);
        hp->rope_base_swa = (float)d;
    }
    static const char *const softcaps[] = {"attn_logit_softcapping", "final_logit_softcapping"};
    for (int i = 0; i < 2; i++) {
        if ((st = get_float_opt(g, KEY(softcaps[i]), 0.0, &d, err))) return st;
        if (d != 0.0)
            return ap_errf(err, AP_ERR_UNSUPPORTED,
                           "metadata %s = %g: logit soft-capping is not supported", key, d);
    }

    /* Vocabulary size: the embedding matrix decides; ARCH.vocab_size, when
     * present, must agree. */
    const ap_gguf_tensor *te = ap_gguf_find_tensor(g, "token_embd.weight");
    if (!te) return ap_errf(err, AP_ERR_FORMAT, "missing tensor 'token_embd.weight'");
    if ((st = check_range("token_embd.weight ne[1] (n_vocab)", te->ne[1], 1, 1 << 24,
                          &hp->n_vocab, err)))
        return st;
    if ((st = get_int_opt(g, KEY("vocab_size"), hp->n_vocab, &v, err))) return st;
    if (v != hp->n_vocab)
        return ap_errf(err, AP_ERR_FORMAT,
                       "%s.vocab_size %lld differs from token_embd.weight rows %d", arch,
                       (long long)v, hp->n_vocab);
#undef KEY
    hp->tied_output = ap_gguf_find_tensor(g, "output.weight") == NULL;
    /* Some llama-architecture files carry QKV biases too. */
    if (ap_gguf_find_tensor(g, "blk.0.attn_q.bias")) hp->qkv_bias = 1;
    return AP_OK;
}
/* Find tensor `name`, check it has shape [ne0, ne1] (ne1 = 1 for a vector),
 * a supported type and enough bytes. */
static ap_status find_tensor(const ap_gguf *g, const char *name, int n_dims, int64_t ne0,
                             int64_t ne1, const ap_gguf_tensor **out, ap_err *err) {
    const ap_gguf_tensor *t = ap_gguf_find_tensor(g, name);
    if (!t) return ap_errf(err, AP_ERR_FORMAT, "missing tensor '%s'", name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
        if (n_dims == 1)
            return ap_errf(err, AP_ERR_FORMAT,
                           "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld]", name,
                           (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                           (long long)t->ne[3], (long long)ne0);
        return ap_errf(err, AP_ERR_FORMAT,
                       "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]",
                       name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                       (long long)t->ne[3], (long long)ne0, (long long)ne1);
    }
    const ap_ggml_traits *tr = ap_ggml_type_traits((uint32_t)t->type);
    if (!tr || !tr->dequant_ok)
        return ap_errf(err, AP_ERR_UNSUPPORTED, "tensor '%s' has type %s (%d), which is not supported",
                       name, tr && tr->name ? tr->name : "unknown", (int)t->type);
    size_t row = ap_ggml_row_size((uint32_t)t->type, ne0);
    if (row == 0 || t->nbytes / row < (size_t)ne1)
        return ap_errf(err, AP_ERR_FORMAT, "tensor '%s': %zu bytes cannot hold %lld rows of %lld %s",
                       name, t->nbytes, (long long)ne1, (long long)ne0, tr->name);
    *out = t;
    return AP_OK;
}

/* Dequantize row r of t into dst and check it: one NaN weight silently
 * poisons every logit, so name it here instead. */
static ap_status decode_row(const ap_gguf_tensor *t, const char *name, int64_t ne0, int64_t r,
                            float *dst, ap_err *err) {
    size_t row = ap_ggml_row_size((uint32_t)t->type, ne0);
    const uint8_t *src = (const uint8_t *)t->data + (size_t)r * row;
    ap_status st = ap_dequant_row(t->type, src, dst, ne0, err);
    if (st) {
        char pre[160];
        snprintf(pre, sizeof pre, "tensor '%s'", name);
        return ap_err_prefix(err, pre);
    }
    for (int64_t i = 0; i < ne0; i++)
        if (!isfinite(dst[i]))
            return ap_errf(err, AP_ERR_NUMERIC,
                           "tensor '%s' has a non-finite value at row %lld, column %lld", name,
                           (long long)r, (long long)i);
    return AP_OK;
}

static float *alloc_floats(size_t n) { return malloc((n ? n : 1) * sizeof(float)); }

/* Cache-line aligned: a K/V head row (head_dim floats, 256 bytes in the
 * default model) then spans whole lines. Large mallocs start 16 bytes into a
 * page, which makes every such row touch one line more than it reads. */
static void *alloc_aligned(size_t n, size_t elt) {
    size_t bytes = ((n ? n : 1) * elt + 63) / 64 * 64;
    return aligned_alloc(64, bytes);
}

/* A vector (norms, biases), always float32, into dst (ne0 floats). */
static ap_status load_vec_at(const ap_gguf *g, const char *name, int64_t ne0, float *dst,
                             ap_err *err) {
    const ap_gguf_tensor *t = NULL;
    ap_status st = find_tensor(g, name, 1, ne0, 1, &t, err);
    if (st) return st;
    return decode_row(t, name, ne0, 0, dst, err);
}

/* The same into a new allocation (*dst, owned by the caller). */
static ap_status load_vec(const ap_gguf *g, const char *name, int64_t ne0, float **dst,
                          ap_err *err) {
    if (!(*dst = alloc_floats((size_t)ne0)))
        return ap_errf(err, AP_ERR_NOMEM, "out of memory for tensor '%s'", name);
    return load_vec_at(g, name, ne0, *dst, err);
}

/* A matrix of ne1 rows of ne0: float32 (dequantized) in f32_weights mode
 * or when the file stores it as F32, else its blocks as they are (copied,
 * or borrowed from the mapping). Every row is decoded once either way to
 * check it. scratch holds ne0 floats. */
static ap_status load_mat(const ap_gguf *g, const ap_model_opts *o, const char *name,
                          int64_t ne0, int64_t ne1, float *scratch, wmat *w, ap_err *err) {
    const ap_gguf_tensor *t = NULL;
    ap_status st = find_tensor(g, name, 2, ne0, ne1, &t, err);
    if (st) return st;
    size_t row = ap_ggml_row_size((uint32_t)t->type, ne0);
    if (o->f32_weights || t->type == AP_GGML_F32) {
        float *f = alloc_floats((size_t)ne0 * (size_t)ne1);
        if (!f) return ap_errf(err, AP_ERR_NOMEM, "out of memory for tensor '%s'", name);
        w->owned = f;
        for (int64_t r = 0; r < ne1; r++)
            if ((st = decode_row(t, name, ne0, r, f + (size_t)r * (size_t)ne0, err))) return st;
        w->q = (ap_qmat){AP_GGML_F32, f, (size_t)ne0 * sizeof(float), (int)ne0, (int)ne1};
    } else {
        for (int64_t r = 0; r < ne1; r++)
            if ((st = decode_row(t, name, ne0, r, scratch, err))) return st;
        const void *data = t->data;
        if (!o->borrow_weights) {
            if (!(w->owned = malloc(row * (size_t)ne1)))
                return ap_errf(err, AP_ERR_NOMEM, "out of memory for tensor '%s'", name);
            memcpy(w->owned, t->data, row * (size_t)ne1);
            data = w->owned;
        }
        w->q = (ap_qmat){t->type, data, row, (int)ne0, (int)ne1};
    }
    return ap_qmat_check(&w->q, name, err);
}

static size_t wmat_bytes(const wmat *w) { return w->q.row_bytes * (size_t)w->q.n_out; }

void ap_model_opts_default(ap_model_opts *o) {
    memset(o, 0, sizeof *o);
    o->isa = AP_QISA_AUTO;
}

void ap_model_free(ap_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int l = 0; l < m->hp.n_layer; l++) {
            layer_w *w = &m->layers[l];
            free(w->attn_norm);
            free(w->ffn_norm);
            free(w->bqkv);
            free(w->q_norm);
            free(w->k_norm);
            free(w->post_attn_norm);
            free(w->post_ffw_norm);
            free(w->wq.owned);
            free(w->wk.owned);
            free(w->wv.owned);
            free(w->wo.owned);
            free(w->wg.owned);
            free(w->wu.owned);
            free(w->wd.owned);
        }
        free(m->layers);
    }
    free(m->output.owned);
    free(m->tok_embd.owned);
    free(m->out_norm);
    free(m->rope_freqs);
    free(m);
}

ap_status ap_model_load(const ap_gguf *g, ap_model **out, ap_err *err) {
    return ap_model_load_opts(g, NULL, out, err);
}

ap_status ap_model_load_opts(const ap_gguf *g, const ap_model_opts *opts, ap_model **out,
                             ap_err *err) {
    ap_status st = AP_OK;
    ap_model *m = NULL;
    float *scratch = NULL;
    char name[96];
    *out = NULL;

    m = calloc(1, sizeof *m);
    if (!m) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the model");
        goto cleanup;
    }
    if (opts) m->opts = *opts;
    else ap_model_opts_default(&m->opts);
    const ap_model_opts *o = &m->opts;
    if (o->kv_type != AP_KV_F32 && o->kv_type != AP_KV_F16) {
        st = ap_errf(err, AP_ERR_ARG, "model options: unknown KV cache type %d", (int)o->kv_type);
        goto cleanup;
    }
    if ((st = ap_hparams_read(g, &m->hp, err))) goto cleanup;
    const ap_hparams *hp = &m->hp;
    const size_t E = (size_t)hp->n_embd, hd = (size_t)hp->head_dim;
    const size_t qd = (size_t)hp->n_head * hd, kvd = (size_t)hp->n_head_kv * hd;
    const size_t F = (size_t)hp->n_ff, V = (size_t)hp->n_vocab;
    size_t widest = E > qd ? E : qd;
    if (F > widest) widest = F;

    scratch = alloc_floats(widest);
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!scratch || !m->layers) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for %d layers", hp->n_layer);
        goto cleanup;
    }
    if ((st = load_mat(g, o, "token_embd.weight", (int64_t)E, (int64_t)V, scratch, &m->tok_embd,
                       err)))
        goto cleanup;
    if ((st = load_vec(g, "output_norm.weight", (int64_t)E, &m->out_norm, err))) goto cleanup;
    if (hp->rope_freqs) {
        if ((st = load_vec(g, "rope_freqs.weight", (int64_t)hd / 2, &m->rope_freqs, err)))
            goto cleanup;
        for (size_t i = 0; i < hd / 2; i++)
            if (!(m->rope_freqs[i] > 0.0f)) {
                st = ap_errf(err, AP_ERR_FORMAT,
                             "tensor 'rope_freqs.weight' has a non-positive factor %g at %zu",
                             (double)m->rope_freqs[i], i);
                goto cleanup;
            }
    }
    if (hp->tied_output) {
        m->output.q = m->tok_embd.q;
    } else if ((st = load_mat(g, o, "output.weight", (int64_t)E, (int64_t)V, scratch, &m->output,
                              err))) {
        goto cleanup;
    }
    m->weight_bytes = wmat_bytes(&m->output);

    for (int l = 0; l < hp->n_layer; l++) {
        layer_w *w = &m->layers[l];
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d.%s", l, suffix), name)
#define MAT(suffix, ne0, ne1, dst)                                                             \
    do {                                                                                       \
        if ((st = load_mat(g, o, NAME(suffix), (int64_t)(ne0), (int64_t)(ne1), scratch, dst,   \
                           err)))                                                              \
            goto cleanup;                                                                      \
        m->weight_bytes += wmat_bytes(dst);                                                    \
    } while (0)
#define VEC(suffix, n, dst)                                                                    \
    do {                                                                                       \
        if ((st = load_vec(g, NAME(suffix), (int64_t)(n), dst, err))) goto cleanup;            \
    } while (0)
        VEC("attn_norm.weight", E, &w->attn_norm);
        MAT("attn_q.weight", E, qd, &w->wq);
        MAT("attn_k.weight", E, kvd, &w->wk);
        MAT("attn_v.weight", E, kvd, &w->wv);
        if (hp->qkv_bias) {
            if (!(w->bqkv = alloc_floats(qd + 2 * kvd))) {
                st = ap_errf(err, AP_ERR_NOMEM, "out of memory for QKV biases");
                goto cleanup;
            }
            if ((st = load_vec_at(g, NAME("attn_q.bias"), (int64_t)qd, w->bqkv, err)) ||
                (st = load_vec_at(g, NAME("attn_k.bias"), (int64_t)kvd, w->bqkv + qd, err)) ||
                (st = load_vec_at(g, NAME("attn_v.bias"), (int64_t)kvd, w->bqkv + qd + kvd, err)))
                goto cleanup;
        }
        if (hp->qk_norm) {
            VEC("attn_q_norm.weight", hd, &w->q_norm);
            VEC("attn_k_norm.weight", hd, &w->k_norm);
        }
        MAT("attn_output.weight", qd, E, &w->wo);
        if (hp->post_norms) VEC("post_attention_norm.weight", E, &w->post_attn_norm);
        VEC("ffn_norm.weight", E, &w->ffn_norm);
        MAT("ffn_gate.weight", E, F, &w->wg);
        MAT("ffn_up.weight", E, F, &w->wu);
        MAT("ffn_down.weight", F, E, &w->wd);
        if (hp->post_norms) VEC("post_ffw_norm.weight", E, &w->post_ffw_norm);
#undef VEC
#undef MAT
#undef NAME
    }
    *out = m;
    m = NULL;

cleanup:
    if (st != AP_OK) ap_err_prefix(err, ap_gguf_path(g));
    free(scratch);
    ap_model_free(m);
    return st;
}

const ap_hparams *ap_model_hparams(const ap_model *m) { return &m->hp; }

const ap_model_opts *ap_model_get_opts(const ap_model *m) { return &m->opts; }

size_t ap_model_decode_weight_bytes(const ap_model *m) { return m->weight_bytes; }

/* ------------------------------------------------------------ thread pool */

/* A job is a set of tiles that any subset of the threads can finish: each
 * job function takes tiles from an atomic counter until none are left. The
 * caller works on the job too and does not wait for a worker that has not
 * entered it yet, so a worker the OS has not scheduled (another process, or
 * the capture's HDF5 writer, holding the second core) costs nothing instead
 * of stalling every step. ith identifies the thread (its scratch). */
typedef void (*job_fn)(void *arg, int ith);

typedef struct ap_ctx_pool {
    int n_workers; /* threads besides the caller */
    int n_started;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv_job, cv_done;
    atomic_uint gen;    /* bumped once per job; idle workers wait for a change */
    atomic_int closed;  /* the current job admits no more workers */
    atomic_int entered; /* workers inside the current job */
    atomic_int quit;
    job_fn fn;
    void *arg;
} pool_t;

typedef struct {
    pool_t *p;
    int ith;
} worker_arg;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *worker_main(void *varg) {
    worker_arg *wa = varg;
    pool_t *p = wa->p;
    const int ith = wa->ith;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load(&p->gen);
        for (int i = 0; g == seen && i < POOL_SPIN; i++) {
            cpu_relax();
            g = atomic_load(&p->gen);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->quit))
                pthread_cond_wait(&p->cv_job, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit)) break;
        seen = g;
        /* Enter, then check the job is still open (both seq_cst): either
         * the caller sees us and waits, or we see it closed and never touch
         * fn/arg, which may already belong to the next job. */
        atomic_fetch_add(&p->entered, 1);
        if (!atomic_load(&p->closed)) p->fn(p->arg, ith);
        if (atomic_fetch_sub(&p->entered, 1) == 1 && atomic_load(&p->closed)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

static void pool_run(pool_t *p, job_fn fn, void *arg) {
    if (p->n_workers == 0) {
        fn(arg, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->closed, 0);
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->cv_job);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0);
    /* No tiles left: close the job, then wait only for workers inside it. */
    atomic_store(&p->closed, 1);
    for (int i = 0; atomic_load(&p->entered) > 0 && i < POOL_SPIN; i++) cpu_relax();
    if (atomic_load(&p->entered) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->entered) > 0) pthread_cond_wait(&p->cv_done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

typedef struct {
    ap_par_fn fn;
    void *arg;
    int n;
    atomic_int next;
} par_job;

static void par_job_run(void *arg, int ith) {
    par_job *j = arg;
    (void)ith;
    for (int i; (i = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->n;)
        j->fn(j->arg, i);
}

/* ap_par.run over the ctx's pool: units taken in turn by whichever thread
 * is free. */
static void ctx_par_run(void *ctx, ap_par_fn fn, void *arg, int n) {
    pool_t *p = ctx;
    par_job j = {.fn = fn, .arg = arg, .n = n};
    atomic_init(&j.next, 0);
    pool_run(p, par_job_run, &j);
}

static void pool_destroy(pool_t *p) {
    if (!p) return;
    if (p->n_started > 0) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->quit, 1);
        atomic_fetch_add(&p->gen, 1);
        pthread_cond_broadcast(&p->cv_job);
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
    }
    pthread_cond_destroy(&p->cv_job);
    pthread_cond_destroy(&p->cv_done);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}

/* ------------------------------------------------------------------- ctx */

struct ap_ctx {
    const ap_model *m;
    int n_ctx, n_past, n_threads, ubatch;
    size_t qkv_dim, kv_dim;
    ap_qisa isa;
    ap_kv_type kv_type;     /* element type of the cache (m->opts.kv_type) */
    size_t kv_esz;          /* its bytes per element */
    void *kcache, *vcache;  /* [n_layer][n_ctx][kv_dim] elements of kv_type */
    /* With an f16 cache, prefill (and decode_attn_blas) attention reads one
     * layer's keys and values converted to float32 here, [n_ctx][kv_dim]
     * each: its BLAS products take float32 only. NULL with an f32 cache. */
    float *kstage, *vstage;
    float *rope_cs;         /* [n_ctx][head_dim] */
    float *rope_cs_swa;     /* the sliding-window layers' table, or NULL (no such layers) */
    float *x, *xn, *qkv, *att, *gu; /* micro-batch activations */
    float *attn_scratch;    /* [n_threads][ATTN_CHUNK * n_ctx] */
    size_t attn_scratch_per_thread;
    ap_qvec *qv[QV_MAX_T];  /* prepared activation rows of the current product */
    ap_qvec *qv_exact[QV_MAX_T], *qv_q8[QV_MAX_T]; /* what qv points to, by mode */
    int q8_activations, decode_attn_blas; /* from the model, or ap_ctx_set_exec */
    float *deq;             /* [n_threads][deq_per_thread] dequantization strips */
    size_t deq_per_thread;
    /* Decode attention: probability rows, and per (head, chunk) the chunk's
     * max, exp-sum and rescale factor, and its unnormalised output. */
    float *dscore;          /* [n_head][n_ctx] */
    float *dmax, *dsum, *dfac; /* [n_head][max_chunks] */
    float *dout;            /* [max_chunks][n_head][head_dim] */
    int max_chunks;
    double *colsum;         /* [n_layer][n_head][n_ctx], allocated on first use */
    float *colsum_f;        /* [n_ctx] */
    pool_t *pool;
    worker_arg *wargs;
    ap_par par;              /* the pool, lent to a KV policy's select (ap_kv_step.par) */
    /* Compressed decoding (ap_ctx_set_kv_policy); all NULL when dense. */
    const ap_kv_policy *kvp;
    void *kv_scratch;        /* [n_threads][kv_scratch_per_thread] */
    size_t kv_scratch_per_thread;
    size_t kv_ldb;           /* blocks of an n_ctx row */
    int *kv_nkept;           /* [n_head] */
    float *kv_bmax, *kv_bsum, *kv_dmax, *kv_dsum, *kv_pre_max, *kv_pre_sum; /* [n_head][kv_ldb] */
    float *kv_mass;          /* [n_head] */
    int *kv_empty;           /* set_off of empty lists: [n_head + 1] zeros */
};

/* Element off of a cache array (kcache or vcache), whatever its type. */
static inline const void *kv_at(const ap_ctx *c, const void *base, size_t off) {
    return (const char *)base + off * c->kv_esz;
}

static ap_status pool_create(ap_ctx *c, int n_workers, ap_err *err) {
    pool_t *p = calloc(1, sizeof *p);
    if (!p) return ap_errf(err, AP_ERR_NOMEM, "out of memory for the thread pool");
    c->pool = p;
    c->par.run = ctx_par_run;
    c->par.ctx = p;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_job, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->closed, 1);
    atomic_init(&p->entered, 0);
    atomic_init(&p->quit, 0);
    p->n_workers = n_workers;
    if (n_workers == 0) return AP_OK;
    p->threads = calloc((size_t)n_workers, sizeof *p->threads);
    c->wargs = calloc((size_t)n_workers, sizeof *c->wargs);
    if (!p->threads || !c->wargs) return ap_errf(err, AP_ERR_NOMEM, "out of memory for threads");
    for (int i = 0; i < n_workers; i++) {
        c->wargs[i].p = p;
        c->wargs[i].ith = i + 1;
        int rc = pthread_create(&p->threads[i], NULL, worker_main, &c->wargs[i]);
        if (rc != 0) {
            /* The workers already running are told to quit by
             * pool_destroy; n_started says how many. */
            return ap_errf(err, AP_ERR_INTERNAL, "pthread_create failed for worker %d of %d", i + 1,
                           n_workers);
        }
        p->n_started = i + 1;
    }
    return AP_OK;
}

void ap_ctx_free(ap_ctx *c) {
    if (!c) return;
    pool_destroy(c->pool);
    free(c->wargs);
    free(c->kcache);
    free(c->vcache);
    free(c->kstage);
    free(c->vstage);
    free(c->rope_cs);
    free(c->rope_cs_swa);
    free(c->x);
    free(c->xn);
    free(c->qkv);
    free(c->att);
    free(c->gu);
    free(c->attn_scratch);
    for (int t = 0; t < QV_MAX_T; t++) {
        ap_qvec_free(c->qv_exact[t]);
        ap_qvec_free(c->qv_q8[t]);
    }
    free(c->deq);
    free(c->dscore);
    free(c->dmax);
    free(c->dsum);
    free(c->dfac);
    free(c->dout);
    free(c->colsum);
    free(c->colsum_f);
    free(c->kv_scratch);
    free(c->kv_nkept);
    free(c->kv_bmax);
    free(c->kv_bsum);
    free(c->kv_dmax);
    free(c->kv_dsum);
    free(c->kv_pre_max);
    free(c->kv_pre_sum);
    free(c->kv_mass);
    free(c->kv_empty);
    free(c);
}

ap_status ap_ctx_create(const ap_model *m, int n_ctx, int n_threads, ap_ctx **out, ap_err *err) {
    ap_status st = AP_OK;
    ap_ctx *c = NULL;
    *out = NULL;
    const ap_hparams *hp = &m->hp;
    if (n_ctx < 1 || n_ctx > hp->n_ctx_train) {
        st = ap_errf(err, AP_ERR_RANGE, "context length %d is outside [1, %d] (%s.context_length)",
                     n_ctx, hp->n_ctx_train, hp->arch);
        goto cleanup;
    }
    if (n_threads < 1 || n_threads > 256) {
        st = ap_errf(err, AP_ERR_ARG, "thread count %d is outside [1, 256]", n_threads);
        goto cleanup;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the context");
        goto cleanup;
    }
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_threads = n_threads;
    c->ubatch = n_ctx < UBATCH ? n_ctx : UBATCH;
    c->isa = ap_qisa_resolve(m->opts.isa);
    const size_t E = (size_t)hp->n_embd, hd = (size_t)hp->head_dim, U = (size_t)c->ubatch;
    const size_t H = (size_t)hp->n_head;
    c->kv_dim = (size_t)hp->n_head_kv * hd;
    c->qkv_dim = H * hd + 2 * c->kv_dim;
    const size_t cache = (size_t)hp->n_layer * (size_t)n_ctx * c->kv_dim;
    int chunk = c->ubatch < ATTN_CHUNK ? c->ubatch : ATTN_CHUNK;
    c->attn_scratch_per_thread =
        ap_attn_scratch_floats(chunk, hp->n_head / hp->n_head_kv, n_ctx);
    size_t widest = E > H * hd ? E : H * hd;
    if ((size_t)hp->n_ff > widest) widest = (size_t)hp->n_ff;
    /* Every chunk holds >= max(KV_CHUNK_MIN, n/8) keys (kv_chunk). */
    c->max_chunks = n_ctx / KV_CHUNK_MAX + 9;

    c->kv_type = m->opts.kv_type;
    c->kv_esz = ap_kv_type_size(c->kv_type);
    c->kcache = alloc_aligned(cache, c->kv_esz);
    c->vcache = alloc_aligned(cache, c->kv_esz);
    if (c->kv_type != AP_KV_F32 &&
        (!(c->kstage = alloc_aligned((size_t)n_ctx * c->kv_dim, sizeof(float))) ||
         !(c->vstage = alloc_aligned((size_t)n_ctx * c->kv_dim, sizeof(float))))) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for %d tokens of float32 staging K/V",
                     n_ctx);
        goto cleanup;
    }
    c->rope_cs = alloc_floats((size_t)n_ctx * hd);
    if (hp->swa_window > 0 && !(c->rope_cs_swa = alloc_floats((size_t)n_ctx * hd))) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for a %d-token RoPE table", n_ctx);
        goto cleanup;
    }
    c->x = alloc_floats(U * E);
    c->xn = alloc_floats(U * E);
    c->qkv = alloc_floats(U * c->qkv_dim);
    c->att = alloc_floats(U * H * hd);
    c->gu = alloc_floats(U * 2 * (size_t)hp->n_ff);
    c->attn_scratch = alloc_floats((size_t)n_threads * c->attn_scratch_per_thread);
    c->dscore = alloc_floats(H * (size_t)n_ctx);
    c->dmax = alloc_floats(H * (size_t)c->max_chunks);
    c->dsum = alloc_floats(H * (size_t)c->max_chunks);
    c->dfac = alloc_floats(H * (size_t)c->max_chunks);
    c->dout = alloc_floats((size_t)c->max_chunks * H * hd);
    c->colsum_f = alloc_floats((size_t)n_ctx);
    if (!c->kcache || !c->vcache || !c->rope_cs || !c->x || !c->xn || !c->qkv || !c->att ||
        !c->gu || !c->attn_scratch || !c->dscore || !c->dmax || !c->dsum || !c->dfac ||
        !c->dout || !c->colsum_f) {
        st = ap_errf(err, AP_ERR_NOMEM,
                     "out of memory for a %d-token context (%s KV cache %zu MiB)", n_ctx,
                     ap_kv_type_name(c->kv_type), 2 * cache * c->kv_esz >> 20);
        goto cleanup;
    }
    if (!m->opts.f32_weights) {
        for (int t = 0; t < QV_MAX_T; t++)
            if ((st = ap_qvec_create((int)widest, AP_QACT_F32, c->isa, &c->qv_exact[t], err)))
                goto cleanup;
        if ((st = ap_ctx_set_exec(c, m->opts.q8_activations, m->opts.decode_attn_blas, err)))
            goto cleanup;
        c->deq_per_thread = widest > DEQ_STRIP_FLOATS ? widest : DEQ_STRIP_FLOATS;
        c->deq = alloc_floats((size_t)n_threads * c->deq_per_thread);
        if (!c->deq) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory for dequantization buffers");
            goto cleanup;
        }
    }
    c->decode_attn_blas = m->opts.decode_attn_blas;
    if (hp->rope_yarn) {
        const ap_rope_yarn y = {hp->yarn_factor, hp->yarn_orig_ctx, hp->yarn_beta_fast,
                                hp->yarn_beta_slow, hp->yarn_attn_factor};
        ap_rope_table_yarn(c->rope_cs, 0, n_ctx, hp->head_dim, hp->rope_base, &y);
    } else {
        ap_rope_table_scaled(c->rope_cs, 0, n_ctx, hp->head_dim, hp->rope_base,
                             hp->rope_freq_scale, m->rope_freqs);
    }
    /* Local layers rotate without scaling (transformers' rope_local_base_freq). */
    if (c->rope_cs_swa) ap_rope_table(c->rope_cs_swa, 0, n_ctx, hp->head_dim, hp->rope_base_swa);
    /* Process-wide, hence here and only here: see the note at the top. */
    openblas_set_num_threads(1);
    if ((st = pool_create(c, n_threads - 1, err))) goto cleanup;
    *out = c;
    c = NULL;

cleanup:
    ap_ctx_free(c);
    return st;
}

ap_status ap_ctx_set_exec(ap_ctx *c, int q8_activations, int decode_attn_blas, ap_err *err) {
    c->decode_attn_blas = decode_attn_blas != 0;
    if (c->m->opts.f32_weights) return AP_OK; /* no quantized products to change */
    const ap_hparams *hp = &c->m->hp;
    int widest = hp->n_embd > hp->n_head * hp->head_dim ? hp->n_embd : hp->n_head * hp->head_dim;
    if (hp->n_ff > widest) widest = hp->n_ff;
    for (int t = 0; q8_activations && t < QV_MAX_T; t++) {
        if (c->qv_q8[t]) continue;
        ap_status st = ap_qvec_create(widest, AP_QACT_Q8, c->isa, &c->qv_q8[t], err);
        if (st) return st;
    }
    c->q8_activations = q8_activations != 0;
    for (int t = 0; t < QV_MAX_T; t++) c->qv[t] = c->q8_activations ? c->qv_q8[t] : c->qv_exact[t];
    return AP_OK;
}

void ap_ctx_reset(ap_ctx *c) { c->n_past = 0; }

ap_status ap_ctx_truncate(ap_ctx *c, int n_past, ap_err *err) {
    if (n_past < 0 || n_past > c->n_past)
        return ap_errf(err, AP_ERR_RANGE, "cannot truncate a %d-token cache to %d tokens",
                       c->n_past, n_past);
    c->n_past = n_past;
    return AP_OK;
}

ap_status ap_ctx_set_kv_policy(ap_ctx *c, const ap_kv_policy *p, ap_err *err) {
    const ap_hparams *hp = &c->m->hp;
    if (!p) {
        c->kvp = NULL;
        return AP_OK;
    }
    if (p->block < 1 || p->sink < 0 || p->local < 0 || p->sink % p->block != 0 || !p->select)
        return ap_errf(err, AP_ERR_ARG,
                       "KV policy: block %d, sink %d, local %d (sink a multiple of block) and a "
                       "select callback are required",
                       p->block, p->sink, p->local);
    const size_t H = (size_t)hp->n_head;
    const size_t ldb = ((size_t)c->n_ctx + (size_t)p->block - 1) / (size_t)p->block;
    /* The largest call: one KV group, every key, measuring (any non-NULL
     * kept_mass marks it). */
    float mark = 0.0f;
    ap_sparse_attn_args a = {.n_groups = 1, .n_heads = hp->n_head / hp->n_head_kv,
                             .head_dim = hp->head_dim, .n_keys = c->n_ctx, .block = p->block,
                             .sink = p->sink, .local = p->local, .per_q_head = p->per_q_head,
                             .kept_mass = &mark, .ldb = ldb};
    size_t per = (ap_sparse_attn_scratch_bytes(&a) + 63) / 64 * 64;
    if (!c->kv_scratch || c->kv_ldb != ldb || c->kv_scratch_per_thread < per) {
        free(c->kv_scratch);
        free(c->kv_nkept);
        free(c->kv_bmax);
        free(c->kv_bsum);
        free(c->kv_dmax);
        free(c->kv_dsum);
        free(c->kv_pre_max);
        free(c->kv_pre_sum);
        free(c->kv_mass);
        free(c->kv_empty);
        c->kv_scratch = malloc(per * (size_t)c->n_threads);
        c->kv_nkept = calloc(H, sizeof(int));
        c->kv_bmax = alloc_floats(H * ldb);
        c->kv_bsum = alloc_floats(H * ldb);
        c->kv_dmax = alloc_floats(H * ldb);
        c->kv_dsum = alloc_floats(H * ldb);
        c->kv_pre_max = alloc_floats(H * ldb);
        c->kv_pre_sum = alloc_floats(H * ldb);
        c->kv_mass = alloc_floats(H);
        c->kv_empty = calloc(H + 1, sizeof(int));
        c->kv_scratch_per_thread = per;
        c->kv_ldb = ldb;
        if (!c->kv_scratch || !c->kv_nkept || !c->kv_bmax || !c->kv_bsum || !c->kv_dmax ||
            !c->kv_dsum || !c->kv_pre_max || !c->kv_pre_sum || !c->kv_mass || !c->kv_empty) {
            c->kvp = NULL;
            c->kv_scratch_per_thread = 0;
            free(c->kv_scratch);
            c->kv_scratch = NULL;
            return ap_errf(err, AP_ERR_NOMEM, "out of memory for compressed decoding buffers");
        }
    }
    c->kvp = p;
    return AP_OK;
}
int ap_ctx_n_past(const ap_ctx *c) { return c->n_past; }
int ap_ctx_n_ctx(const ap_ctx *c) { return c->n_ctx; }

/* ------------------------------------------------------- parallel steps */

/* Output neurons per tile: about three tiles per thread, so a late or
 * absent thread's share is picked up by the others, in multiples of 16
 * (whole cache lines of results). */
static int tile_width(int n, int n_threads) {
    int w = (n + 3 * n_threads - 1) / (3 * n_threads);
    w = (w + 15) / 16 * 16;
    return w < 32 ? 32 : w;
}

/* y[t*ldy + r] (+)= W[r] · x[t*ldx ..] for t < T, r in [a, b), from
 * whatever W holds: float32 through BLAS; blocks through qmatvec for short
 * inputs (c->qv prepared by the caller), else a strip of rows at a time
 * dequantized into this thread's buffer and then BLAS. */
static void wmat_rows(ap_ctx *c, int ith, const ap_qmat *w, float *y, size_t ldy, const float *x,
                      size_t ldx, int T, int a, int b, int accumulate) {
    if (a >= b) return;
    const size_t n_in = (size_t)w->n_in;
    if (w->type == AP_GGML_F32) {
        ap_matmul(y + a, ldy, x, ldx, (const float *)w->data + (size_t)a * n_in, n_in, T,
                  w->n_in, b - a, accumulate);
        return;
    }
    if (T <= QV_MAX_T) {
        for (int t = 0; t < T; t++) ap_qmatvec(w, c->qv[t], y + (size_t)t * ldy, a, b, accumulate);
        return;
    }
    float *buf = c->deq + (size_t)ith * c->deq_per_thread;
    const int strip = (int)(c->deq_per_thread / n_in);
    for (int s0 = a; s0 < b; s0 += strip) {
        int s1 = b - s0 < strip ? b : s0 + strip;
        ap_qmat_dequant_rows(w, s0, s1, buf, c->isa);
        ap_matmul(y + s0, ldy, x, ldx, buf, n_in, T, w->n_in, s1 - s0, accumulate);
    }
}

/* Point c->qv at the T input rows when some product will need them. */
static void prep_rows(ap_ctx *c, const float *x, size_t ldx, int T, int n_in,
                      const ap_qmat *const *w, int n_w) {
    if (T > QV_MAX_T || !c->qv[0]) return;
    int need = 0;
    for (int s = 0; s < n_w; s++) need |= w[s]->type != AP_GGML_F32;
    if (!need) return;
    for (int t = 0; t < T; t++) ap_qvec_set(c->qv[t], x + (size_t)t * ldx, n_in);
}

/* Up to three matrices with the same input, their outputs side by side
 * (q | k | v): tiles never straddle two matrices. */
typedef struct {
    ap_ctx *c;
    const ap_qmat *w[3];
    size_t col[3];
    int tile[3], tiles[3], n_w;
    float *y;
    size_t ldy;
    const float *x;
    size_t ldx;
    int T, accumulate;
    atomic_int next;
} mm_job;

static void mm_run(void *arg, int ith) {
    mm_job *j = arg;
    for (;;) {
        int u = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed), s = 0;
        while (s < j->n_w && u >= j->tiles[s]) u -= j->tiles[s++];
        if (s == j->n_w) break;
        int a = u * j->tile[s];
        int b = a + j->tile[s] < j->w[s]->n_out ? a + j->tile[s] : j->w[s]->n_out;
        wmat_rows(j->c, ith, j->w[s], j->y + j->col[s], j->ldy, j->x, j->ldx, j->T, a, b,
                  j->accumulate);
    }
}

static void par_matmul(ap_ctx *c, float *y, size_t ldy, const float *x, size_t ldx,
                       const ap_qmat *const *w, int n_w, int T, int accumulate) {
    mm_job j = {.c = c, .n_w = n_w, .y = y, .ldy = ldy, .x = x, .ldx = ldx, .T = T,
                .accumulate = accumulate};
    size_t col = 0;
    for (int s = 0; s < n_w; s++) {
        j.w[s] = w[s];
        j.col[s] = col;
        col += (size_t)w[s]->n_out;
        j.tile[s] = tile_width(w[s]->n_out, c->n_threads);
        j.tiles[s] = (w[s]->n_out + j.tile[s] - 1) / j.tile[s];
    }
    prep_rows(c, x, ldx, T, w[0]->n_in, w, n_w);
    atomic_init(&j.next, 0);
    pool_run(c->pool, mm_run, &j);
}

/* Gate and up products of the same neurons in the same tile, so SwiGLU runs
 * on the tile right away without another synchronization. */
typedef struct {
    ap_ctx *c;
    float *gu; /* [T][2 n_ff]: gate | up; gate becomes silu(gate) * up */
    const float *x;
    const ap_qmat *wg, *wu;
    int T, n_embd, n_ff, tile;
    int gelu; /* GeGLU (tanh) instead of SwiGLU */
    atomic_int next;
} gu_job;

static void gu_run(void *arg, int ith) {
    gu_job *j = arg;
    const size_t ld = 2 * (size_t)j->n_ff;
    const size_t E = (size_t)j->n_embd;
    for (;;) {
        int a = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed) * j->tile;
        if (a >= j->n_ff) break;
        int b = a + j->tile < j->n_ff ? a + j->tile : j->n_ff;
        wmat_rows(j->c, ith, j->wg, j->gu, ld, j->x, E, j->T, a, b, 0);
        wmat_rows(j->c, ith, j->wu, j->gu + j->n_ff, ld, j->x, E, j->T, a, b, 0);
        if (j->gelu)
            ap_geglu_tanh(j->gu + a, ld, j->gu + a, ld, j->gu + j->n_ff + a, ld, j->T, b - a);
        else
            ap_swiglu(j->gu + a, ld, j->gu + a, ld, j->gu + j->n_ff + a, ld, j->T, b - a);
    }
}

/* Prefill attention (T > 1, or T = 1 with decode_attn_blas): ap_attn per
 * query head (per GQA group for a single row). */
typedef struct {
    ap_ctx *c;
    int layer, pos0, T;
    const ap_attn_observer *obs;
    double *colsum; /* this layer's [n_head][n_ctx] block, or NULL */
    atomic_int next;
} attn_job;

typedef struct {
    const ap_attn_observer *obs;
    int layer, head0;
} row_thunk;

static void row_cb(void *user, int head, int pos, const float *probs, int len) {
    const row_thunk *t = user;
    t->obs->on_row(t->obs->user, t->layer, t->head0 + head, pos, probs, len);
}

static void attn_run(void *arg, int ith) {
    attn_job *j = arg;
    ap_ctx *c = j->c;
    const ap_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    const ap_attn_observer *obs = j->obs;
    float *scratch = c->attn_scratch + (size_t)ith * c->attn_scratch_per_thread;
    /* This layer's K/V as float32: the cache itself, or the staging copy
     * forward_ubatch made of an f16 cache. */
    const size_t layer_off = (size_t)j->layer * (size_t)c->n_ctx * c->kv_dim;
    const float *kl = c->kstage ? c->kstage : (const float *)c->kcache + layer_off;
    const float *vl = c->vstage ? c->vstage : (const float *)c->vcache + layer_off;
    int chunk = c->ubatch < ATTN_CHUNK ? c->ubatch : ATTN_CHUNK;
    /* Work units: single heads for prefill (nine units balance two threads
     * far better than three groups, and prefill is compute-bound); whole
     * GQA groups for one decode row, which then reads the cache once per
     * group. */
    const int per_unit = j->T == 1 ? group : 1;
    const int n_units = hp->n_head / per_unit;
    for (;;) {
        /* Units taken one at a time: a head's rows stay on one thread, in
         * order, which the observer contract relies on. */
        int u = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (u >= n_units) break;
        int h0 = u * per_unit, g = h0 / group;
        const float *q = c->qkv + (size_t)h0 * hd;
        if (obs && obs->on_query) {
            int first = obs->rows_from > j->pos0 ? obs->rows_from - j->pos0 : 0;
            for (int h = h0; h < h0 + per_unit; h++)
                for (int i = first; i < j->T; i++)
                    obs->on_query(obs->user, j->layer, h, j->pos0 + i,
                                  c->qkv + (size_t)i * c->qkv_dim + (size_t)h * hd, hd);
        }
        row_thunk th = {obs, j->layer, h0};
        ap_attn_args a = {
            .n_q = j->T,
            .n_heads = per_unit,
            .pos0 = j->pos0,
            .head_dim = hd,
            .scale = hp->attn_scale,
            .q = q,
            .ldq = c->qkv_dim,
            .k = kl + (size_t)g * hd,
            .v = vl + (size_t)g * hd,
            .ldkv = c->kv_dim,
            .out = c->att + (size_t)h0 * hd,
            .ldo = (size_t)hp->n_head * hd,
            .colsum = j->colsum ? j->colsum + (size_t)h0 * c->n_ctx : NULL,
            .colsum_stride = (size_t)c->n_ctx,
            .on_row = obs && obs->on_row ? row_cb : NULL,
            .user = &th,
            .rows_from = obs ? obs->rows_from : 0,
            .window = ap_hparams_layer_swa(hp, j->layer) ? hp->swa_window : 0,
        };
        ap_attn(&a, scratch, chunk);
    }
}

/* ------------------------------------------------------ decode attention */

/* Keys per tile for nk keys: about eight chunks per GQA group, so tiles
 * balance over the threads, within [KV_CHUNK_MIN, KV_CHUNK_MAX]. Depends
 * on nk alone, so results do not depend on the thread count. */
static int kv_chunk(int nk) {
    int ch = (nk / 8 + 15) / 16 * 16;
    return ch < KV_CHUNK_MIN ? KV_CHUNK_MIN : ch > KV_CHUNK_MAX ? KV_CHUNK_MAX : ch;
}

typedef struct {
    ap_ctx *c;
    int layer, pos, chunk, n_chunks;
    int lo; /* first key attended (> 0 in a sliding-window layer) */
    const ap_attn_observer *obs;
    double *colsum; /* this layer's [n_head][n_ctx] block, or NULL */
    atomic_int next;
} dattn_job;

/* Tile (group g, chunk ch): scores of the group's heads over the chunk's
 * keys, exp against the chunk max, and the chunk's share of P·V. */
static void dattn_run(void *arg, int ith) {
    dattn_job *j = arg;
    ap_ctx *c = j->c;
    const ap_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, G = hp->n_head / hp->n_head_kv, nk = j->pos + 1;
    const size_t kvd = c->kv_dim, lds = (size_t)c->n_ctx, mc = (size_t)c->max_chunks;
    const size_t layer_off = (size_t)j->layer * (size_t)c->n_ctx * kvd;
    const float scale = hp->attn_scale;
    /* Chunks tile keys lo..pos; dscore keeps absolute key positions. */
    (void)ith;
    for (;;) {
        int u = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (u >= hp->n_head_kv * j->n_chunks) break;
        int g = u / j->n_chunks, ch = u % j->n_chunks, h0 = g * G;
        int j0 = j->lo + ch * j->chunk, nj = nk - j0 < j->chunk ? nk - j0 : j->chunk;
        float *s = c->dscore + (size_t)h0 * lds + j0;
        const size_t at = layer_off + (size_t)j0 * kvd + (size_t)g * hd;
        ap_kv_scores(c->qkv + (size_t)h0 * hd, G, hd, kv_at(c, c->kcache, at), c->kv_type, kvd, nj,
                     scale, s, lds, c->isa);
        for (int h = 0; h < G; h++) {
            float *row = s + (size_t)h * lds;
            float mx = ap_row_max(row, nj);
            c->dmax[(size_t)(h0 + h) * mc + ch] = mx;
            c->dsum[(size_t)(h0 + h) * mc + ch] = ap_exp_shift_sum(row, nj, mx);
        }
        ap_kv_mix(s, lds, G, kv_at(c, c->vcache, at), c->kv_type, kvd, nj, hd,
                  c->dout + ((size_t)ch * hp->n_head + h0) * hd, 0, c->isa);
    }
}

/* Head h: rescale the chunks to the row max, write the output, and (when
 * an observer wants them) the normalised row, its column sums and the
 * query. */
static void dattn_combine(dattn_job *j, int h) {
    ap_ctx *c = j->c;
    const ap_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, nk = j->pos + 1;
    const size_t mc = (size_t)c->max_chunks;
    const float *mx = c->dmax + (size_t)h * mc, *sm = c->dsum + (size_t)h * mc;
    float *fac = c->dfac + (size_t)h * mc;
    float M = mx[0];
    for (int ch = 1; ch < j->n_chunks; ch++) M = mx[ch] > M ? mx[ch] : M;
    float L = 0.0f;
    for (int ch = 0; ch < j->n_chunks; ch++) {
        fac[ch] = expf(mx[ch] - M);
        L += sm[ch] * fac[ch];
    }
    const float inv = 1.0f / L;
    float *o = c->att + (size_t)h * hd;
    for (int d = 0; d < hd; d++) {
        float acc = 0.0f;
        for (int ch = 0; ch < j->n_chunks; ch++)
            acc += c->dout[((size_t)ch * hp->n_head + h) * hd + d] * fac[ch];
        o[d] = acc * inv;
    }
    const ap_attn_observer *obs = j->obs;
    if (obs && obs->on_query && j->pos >= obs->rows_from)
        obs->on_query(obs->user, j->layer, h, j->pos, c->qkv + (size_t)h * hd, hd);
    const int want_row = obs && obs->on_row && j->pos >= obs->rows_from;
    if (!want_row && !j->colsum) return;
    float *row = c->dscore + (size_t)h * c->n_ctx;
    double *cs = j->colsum ? j->colsum + (size_t)h * c->n_ctx : NULL;
    if (j->lo) memset(row, 0, (size_t)j->lo * sizeof *row);
    for (int ch = 0; ch < j->n_chunks; ch++) {
        const float f = fac[ch] * inv;
        const int j0 = j->lo + ch * j->chunk, j1 = nk - j0 < j->chunk ? nk : j0 + j->chunk;
        for (int k = j0; k < j1; k++) row[k] *= f;
        if (cs)
            for (int k = j0; k < j1; k++) cs[k] += row[k];
    }
    if (want_row) obs->on_row(obs->user, j->layer, h, j->pos, row, nk);
}

static void dcombine_run(void *arg, int ith) {
    dattn_job *j = arg;
    (void)ith;
    for (;;) {
        int h = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (h >= j->c->m->hp.n_head) break;
        dattn_combine(j, h);
    }
}

static void decode_attention(ap_ctx *c, int layer, int pos, const ap_attn_observer *obs,
                             double *colsum) {
    const ap_hparams *hp = &c->m->hp;
    dattn_job j = {.c = c, .layer = layer, .pos = pos, .obs = obs, .colsum = colsum};
    if (ap_hparams_layer_swa(hp, layer) && pos + 1 > hp->swa_window) j.lo = pos + 1 - hp->swa_window;
    const int nk = pos + 1 - j.lo;
    j.chunk = kv_chunk(nk);
    j.n_chunks = (nk + j.chunk - 1) / j.chunk;
    atomic_init(&j.next, 0);
    pool_run(c->pool, dattn_run, &j);
    if (obs || colsum) {
        /* Observer callbacks may be slow: spread the heads. */
        atomic_init(&j.next, 0);
        pool_run(c->pool, dcombine_run, &j);
    } else {
        for (int h = 0; h < c->m->hp.n_head; h++) dattn_combine(&j, h);
    }
}

/* ---------------------------------------------------- compressed decoding */

typedef struct {
    ap_ctx *c;
    int layer, pos, measure;
    const int *blocks, *set_off;
    float *dense_bmax, *dense_bsum; /* where measure mode writes the dense views */
    /* The policy's page tables ([n_head_kv][n_blocks]); NULL: the
     * contiguous cache. Never set together with measure. */
    const void *const *k_pages, *const *v_pages;
    atomic_int next;
    atomic_int failed;
    ap_err err; /* the first failure */
    pthread_mutex_t mu;
} sattn_job;

/* One work unit per kept set (a query head's, with per-query-head lists):
 * a layer has only n_head_kv groups (3 in the default model), too few to
 * balance over the threads, while the sets are independent. A measuring
 * pass gets its dense scores from dscore_run first (split by key chunks,
 * so that pass balances too). ap_sparse_attn runs on pointers offset to
 * the unit. */
static void sattn_run(void *arg, int ith) {
    sattn_job *j = arg;
    ap_ctx *c = j->c;
    const ap_hparams *hp = &c->m->hp;
    const ap_kv_policy *p = c->kvp;
    const int hd = hp->head_dim, G = hp->n_head / hp->n_head_kv;
    const int per_head = p->per_q_head, nh = per_head ? 1 : G;
    const size_t ldb = c->kv_ldb;
    const size_t layer_off = (size_t)j->layer * (size_t)c->n_ctx * c->kv_dim;
    void *scratch = (char *)c->kv_scratch + (size_t)ith * c->kv_scratch_per_thread;
    for (;;) {
        int unit = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (unit >= hp->n_head_kv * (G / nh)) break;
        const int g = unit / (G / nh);
        const size_t u0 = (size_t)unit * nh;
        ap_sparse_attn_args a = {
            .n_groups = 1, .n_heads = nh, .head_dim = hd, .n_keys = j->pos + 1,
            .scale = hp->attn_scale, .q = c->qkv + u0 * hd,
            .k = kv_at(c, c->kcache, layer_off + (size_t)g * hd),
            .v = kv_at(c, c->vcache, layer_off + (size_t)g * hd), .kv_type = c->kv_type,
            .ldkv = c->kv_dim, .group_stride = (size_t)hd, .out = c->att + u0 * hd,
            .block = p->block, .sink = p->sink, .local = p->local, .per_q_head = p->per_q_head,
            .blocks = j->blocks, .set_off = j->set_off + (p->per_q_head ? u0 : (size_t)g),
            .n_kept = c->kv_nkept + u0, .bmax = c->kv_bmax + u0 * ldb,
            .bsum = c->kv_bsum + u0 * ldb, .ldb = ldb};
        if (j->k_pages) {
            /* A page holds `block` keys of one KV head back to back. */
            const size_t nb = (size_t)(j->pos + p->block) / (size_t)p->block;
            a.k = a.v = NULL;
            a.k_pages = j->k_pages + (size_t)g * nb;
            a.v_pages = j->v_pages + (size_t)g * nb;
            a.ldkv = (size_t)hd;
            a.group_stride = 0;
        }
        if (j->measure) {
            a.kept_mass = c->kv_mass + u0;
            a.dense_bmax = j->dense_bmax + u0 * ldb;
            a.dense_bsum = j->dense_bsum + u0 * ldb;
            a.dense_scores = c->dscore + u0 * (size_t)c->n_ctx;
            a.ld_dense = (size_t)c->n_ctx;
        }
        ap_err e = {0};
        if (ap_sparse_attn(&a, scratch, &e) != AP_OK) {
            pthread_mutex_lock(&j->mu);
            if (!atomic_load(&j->failed)) j->err = e;
            atomic_store(&j->failed, 1);
            pthread_mutex_unlock(&j->mu);
        }
    }
}

typedef struct {
    ap_ctx *c;
    int layer, pos, chunk, n_chunks;
    atomic_int next;
} dscore_job;

/* Keys per piece of a dscore unit: the piece's rows (768 B each in the
 * default model) stay in L2 while every KV head reads its slice of them. */
#define DSCORE_PIECE 256

/* A measuring pass's dense scores, scale*q.k of every query head over keys
 * 0..pos into dscore, one key chunk of every KV group per unit: each key
 * row is read once for the group's heads. Chunks and pieces start at
 * multiples of 16, so the kernel groups keys exactly as one call over all
 * keys would. */
static void dscore_run(void *arg, int ith) {
    dscore_job *j = arg;
    ap_ctx *c = j->c;
    const ap_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, G = hp->n_head / hp->n_head_kv, nk = j->pos + 1;
    const size_t kvd = c->kv_dim, lds = (size_t)c->n_ctx;
    const size_t layer_off = (size_t)j->layer * (size_t)c->n_ctx * kvd;
    (void)ith;
    /* A unit is a key chunk of every KV head: one KV head's keys are a
     * strided slice of each cache row, which streams from memory at about
     * two thirds of the rate of whole rows read in turn. */
    for (;;) {
        int u = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (u >= j->n_chunks) break;
        const int j0 = u * j->chunk, j1 = nk - j0 < j->chunk ? nk : j0 + j->chunk;
        for (int p0 = j0; p0 < j1; p0 += DSCORE_PIECE) {
            const int np = j1 - p0 < DSCORE_PIECE ? j1 - p0 : DSCORE_PIECE;
            for (int g = 0; g < hp->n_head_kv; g++)
                ap_kv_scores(c->qkv + (size_t)g * G * hd, G, hd,
                             kv_at(c, c->kcache, layer_off + (size_t)p0 * kvd + (size_t)g * hd),
                             c->kv_type, kvd, np, hp->attn_scale, c->dscore + (size_t)g * G * lds + p0,
                             lds, AP_QISA_AUTO);
        }
    }
}

static ap_status sparse_pass(ap_ctx *c, int layer, int pos, const int *blocks, const int *set_off,
                             int measure, float *dmax, float *dsum, const void *const *kp,
                             const void *const *vp, ap_err *err) {
    if (measure) {
        const int ch = kv_chunk(pos + 1);
        dscore_job dj = {.c = c, .layer = layer, .pos = pos, .chunk = ch,
                         .n_chunks = (pos + ch) / ch};
        atomic_init(&dj.next, 0);
        pool_run(c->pool, dscore_run, &dj);
    }
    sattn_job j = {.c = c, .layer = layer, .pos = pos, .measure = measure, .blocks = blocks,
                   .set_off = set_off, .dense_bmax = dmax, .dense_bsum = dsum, .k_pages = kp,
                   .v_pages = vp};
    atomic_init(&j.next, 0);
    atomic_init(&j.failed, 0);
    pthread_mutex_init(&j.mu, NULL);
    pool_run(c->pool, sattn_run, &j);
    pthread_mutex_destroy(&j.mu);
    if (atomic_load(&j.failed)) {
        if (err) *err = j.err;
        return j.err.status ? j.err.status : AP_ERR_INTERNAL;
    }
    return AP_OK;
}

/* Decode attention of one layer under the ctx's KV policy. */
static ap_status policy_attention(ap_ctx *c, int layer, int pos, ap_err *err) {
    const ap_kv_policy *p = c->kvp;
    const ap_hparams *hp = &c->m->hp;
    ap_status st = AP_OK;
    const unsigned want = p->want ? p->want(p->user, layer, pos) : 0;
    ap_kv_step s = {.layer = layer, .pos = pos, .n_head = hp->n_head, .n_head_kv = hp->n_head_kv,
                    .head_dim = hp->head_dim, .n_blocks = (pos + p->block) / p->block,
                    .ldb = c->kv_ldb, .q = c->qkv,
                    .k = kv_at(c, c->kcache, (size_t)layer * (size_t)c->n_ctx * c->kv_dim),
                    .v = kv_at(c, c->vcache, (size_t)layer * (size_t)c->n_ctx * c->kv_dim),
                    .kv_type = c->kv_type, .kv_stride = c->kv_dim, .par = &c->par};
    if (want & AP_KV_DENSE_BEFORE) {
        /* The dense views come from a measuring pass over the smallest kept
         * set (sink + local); its output is overwritten below. */
        if ((st = sparse_pass(c, layer, pos, NULL, c->kv_empty, 1, c->kv_pre_max, c->kv_pre_sum,
                              NULL, NULL, err)))
            return st;
        s.dense_bmax = c->kv_pre_max;
        s.dense_bsum = c->kv_pre_sum;
    }
    const int *blocks = NULL, *set_off = NULL;
    if ((st = p->select(p->user, &s, &blocks, &set_off, err))) return st;
    if (!set_off) return ap_errf(err, AP_ERR_ARG, "KV policy: select gave no set offsets");
    const int measure = (want & AP_KV_MEASURE) != 0;
    const void *const *kp = NULL, *const *vp = NULL;
    if (p->pages) {
        if ((st = p->pages(p->user, &s, &kp, &vp, err))) return st;
        if (kp && !vp) return ap_errf(err, AP_ERR_ARG, "KV policy: key pages without value pages");
    }
    if (!kp || measure) {
        /* The dense row needs every key: a measuring pass reads them from
         * the contiguous cache (the cold store). With pages its output is
         * then replaced by the paged pass below. */
        if ((st = sparse_pass(c, layer, pos, blocks, set_off, measure, c->kv_dmax, c->kv_dsum,
                              NULL, NULL, err)))
            return st;
    }
    if (kp && (st = sparse_pass(c, layer, pos, blocks, set_off, 0, NULL, NULL, kp, vp, err)))
        return st;
    if (p->attended) {
        ap_kv_attended r = {.n_kept = c->kv_nkept, .bmax = c->kv_bmax, .bsum = c->kv_bsum};
        if (measure) {
            r.kept_mass = c->kv_mass;
            r.dense_bmax = c->kv_dmax;
            r.dense_bsum = c->kv_dsum;
        }
        st = p->attended(p->user, &s, &r, err);
    }
    return st;
}

/* ---------------------------------------------------------------- forward */

/* x += rmsnorm(y) * g over T rows of n (y is overwritten). */
static void add_normed(float *x, float *y, const float *g, int T, int n, float eps) {
    ap_rmsnorm(y, (size_t)n, y, (size_t)n, g, T, n, eps);
    for (size_t i = 0; i < (size_t)T * (size_t)n; i++) x[i] += y[i];
}

/* T tokens at positions pos0..pos0+T-1 through every layer; leaves the
 * final hidden states (before output_norm) in c->x. */
static ap_status forward_ubatch(ap_ctx *c, const int32_t *tokens, int T, int pos0,
                                const ap_attn_observer *obs, ap_err *err) {
    const ap_model *m = c->m;
    const ap_hparams *hp = &m->hp;
    const size_t E = (size_t)hp->n_embd, hd = (size_t)hp->head_dim;
    const size_t qd = (size_t)hp->n_head * hd, kvd = c->kv_dim;
    const ap_qmat *emb = &m->tok_embd.q;

    for (int t = 0; t < T; t++) {
        float *xt = c->x + (size_t)t * E;
        ap_dequant_row(emb->type, (const uint8_t *)emb->data + (size_t)tokens[t] * emb->row_bytes,
                       xt, (int64_t)E, NULL);
        if (hp->embd_scale != 1.0f)
            for (size_t i = 0; i < E; i++) xt[i] *= hp->embd_scale;
    }

    for (int l = 0; l < hp->n_layer; l++) {
        const layer_w *w = &m->layers[l];
        const int swa = ap_hparams_layer_swa(hp, l);
        ap_rmsnorm(c->xn, E, c->x, E, w->attn_norm, T, (int)E, hp->rms_eps);
        const ap_qmat *qkv[3] = {&w->wq.q, &w->wk.q, &w->wv.q};
        par_matmul(c, c->qkv, c->qkv_dim, c->xn, E, qkv, 3, T, 0);
        for (int t = 0; w->bqkv && t < T; t++) {
            float *row = c->qkv + (size_t)t * c->qkv_dim;
            for (size_t i = 0; i < c->qkv_dim; i++) row[i] += w->bqkv[i];
        }
        if (w->q_norm) {
            /* Each head is a row of head_dim: q heads, then k heads. */
            for (int t = 0; t < T; t++) {
                float *row = c->qkv + (size_t)t * c->qkv_dim;
                ap_rmsnorm(row, hd, row, hd, w->q_norm, hp->n_head, (int)hd, hp->rms_eps);
                ap_rmsnorm(row + qd, hd, row + qd, hd, w->k_norm, hp->n_head_kv, (int)hd,
                           hp->rms_eps);
            }
        }
        /* q heads and k heads are adjacent in a qkv row: one pass ropes both. */
        const float *cs = swa ? c->rope_cs_swa : c->rope_cs;
        ap_rope_styled(c->qkv, c->qkv_dim, T, hp->n_head + hp->n_head_kv, (int)hd,
                       cs + (size_t)pos0 * hd, hp->rope_neox ? AP_ROPE_NEOX : AP_ROPE_NORM);
        const size_t layer_off = (size_t)l * (size_t)c->n_ctx * kvd;
        for (int t = 0; t < T; t++) {
            float *row = c->qkv + (size_t)t * c->qkv_dim;
            size_t at = layer_off + (size_t)(pos0 + t) * kvd;
            char *kd = (char *)c->kcache + at * c->kv_esz, *vd = (char *)c->vcache + at * c->kv_esz;
            ap_kv_store_row(kd, c->kv_type, row + qd, kvd, c->isa);
            ap_kv_store_row(vd, c->kv_type, row + qd + kvd, kvd, c->isa);
            /* The row takes the rounded values back, so that what the
             * observer sees below is what attention will read. */
            if (c->kv_type != AP_KV_F32) {
                ap_kv_load_row(row + qd, kd, c->kv_type, kvd, c->isa);
                ap_kv_load_row(row + qd + kvd, vd, c->kv_type, kvd, c->isa);
            }
        }
        if (obs && obs->on_key)
            for (int g = 0; g < hp->n_head_kv; g++)
                for (int t = 0; t < T; t++)
                    obs->on_key(obs->user, l, g, pos0 + t,
                                c->qkv + (size_t)t * c->qkv_dim + qd + (size_t)g * hd, (int)hd);

        double *colsum = (obs && obs->on_colsum)
                             ? c->colsum + (size_t)l * (size_t)hp->n_head * (size_t)c->n_ctx
                             : NULL;
        /* Sliding-window layers keep a bounded KV already: the policy
         * selects in the full-attention layers only. */
        if (T == 1 && c->kvp && !swa) {
            ap_status st = policy_attention(c, l, pos0, err);
            if (st) return st;
        } else if (T == 1 && !c->decode_attn_blas) {
            decode_attention(c, l, pos0, obs, colsum);
        } else {
            if (c->kstage) {
                /* Every key up to the micro-batch's last, converted once per
                 * layer and micro-batch (each query chunk then reads
                 * float32). */
                const size_t n = (size_t)(pos0 + T) * kvd;
                ap_kv_load_row(c->kstage, kv_at(c, c->kcache, layer_off), c->kv_type, n, c->isa);
                ap_kv_load_row(c->vstage, kv_at(c, c->vcache, layer_off), c->kv_type, n, c->isa);
            }
            attn_job aj = {.c = c, .layer = l, .pos0 = pos0, .T = T, .obs = obs, .colsum = colsum};
            atomic_init(&aj.next, 0);
            pool_run(c->pool, attn_run, &aj);
        }

        /* Gemma's post-norms normalise each block's output before the
         * residual add, so the product cannot accumulate into x directly. */
        const ap_qmat *wo[1] = {&w->wo.q};
        if (w->post_attn_norm) {
            par_matmul(c, c->xn, E, c->att, qd, wo, 1, T, 0);
            add_normed(c->x, c->xn, w->post_attn_norm, T, (int)E, hp->rms_eps);
        } else {
            par_matmul(c, c->x, E, c->att, qd, wo, 1, T, 1);
        }
        ap_rmsnorm(c->xn, E, c->x, E, w->ffn_norm, T, (int)E, hp->rms_eps);
        const ap_qmat *wgu[2] = {&w->wg.q, &w->wu.q};
        prep_rows(c, c->xn, E, T, (int)E, wgu, 2);
        gu_job gj = {.c = c, .gu = c->gu, .x = c->xn, .wg = &w->wg.q, .wu = &w->wu.q, .T = T,
                     .n_embd = (int)E, .n_ff = hp->n_ff, .gelu = hp->ffn_gelu,
                     .tile = tile_width(hp->n_ff, c->n_threads)};
        atomic_init(&gj.next, 0);
        pool_run(c->pool, gu_run, &gj);
        const ap_qmat *wd[1] = {&w->wd.q};
        if (w->post_ffw_norm) {
            par_matmul(c, c->xn, E, c->gu, 2 * (size_t)hp->n_ff, wd, 1, T, 0);
            add_normed(c->x, c->xn, w->post_ffw_norm, T, (int)E, hp->rms_eps);
        } else {
            par_matmul(c, c->x, E, c->gu, 2 * (size_t)hp->n_ff, wd, 1, T, 1);
        }
    }
    return AP_OK;
}

ap_status ap_eval_check_tokens(const ap_hparams *hp, const int32_t *tokens, int n, int n_past,
                               int n_ctx, ap_err *err) {
    if (n < 1 || !tokens) return ap_errf(err, AP_ERR_ARG, "eval needs at least one token (got %d)", n);
    if (n > n_ctx - n_past)
        return ap_errf(err, AP_ERR_RANGE,
                       "%d tokens after %d cached ones overflow the %d-token KV cache", n, n_past,
                       n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab)
            return ap_errf(err, AP_ERR_ARG,
                           "token %d at index %d is outside the vocabulary [0, %d)", tokens[i], i,
                           hp->n_vocab);
    return AP_OK;
}

ap_status ap_ctx_eval(ap_ctx *c, const int32_t *tokens, int n, float *logits, int all_logits,
                      const ap_attn_observer *obs, ap_err *err) {
    ap_status st = AP_OK;
    const ap_model *m = c->m;
    const ap_hparams *hp = &m->hp;
    const size_t E = (size_t)hp->n_embd, V = (size_t)hp->n_vocab;
    const int n_past0 = c->n_past;

    if ((st = ap_eval_check_tokens(hp, tokens, n, c->n_past, c->n_ctx, err))) goto cleanup;
    const int want_colsum = obs && obs->on_colsum;
    const size_t cs_stride = (size_t)c->n_ctx;
    if (want_colsum) {
        if (!c->colsum) {
            c->colsum = malloc((size_t)hp->n_layer * hp->n_head * cs_stride * sizeof(double));
            if (!c->colsum) {
                st = ap_errf(err, AP_ERR_NOMEM, "out of memory for attention column sums");
                goto cleanup;
            }
        }
        /* The keys this call can touch: everything up to n_past + n. */
        for (size_t lh = 0; lh < (size_t)hp->n_layer * hp->n_head; lh++)
            memset(c->colsum + lh * cs_stride, 0, (size_t)(n_past0 + n) * sizeof(double));
    }

    for (int b0 = 0; b0 < n; b0 += c->ubatch) {
        int T = n - b0 < c->ubatch ? n - b0 : c->ubatch;
        if ((st = forward_ubatch(c, tokens + b0, T, c->n_past, obs, err))) {
            c->n_past = n_past0;
            goto cleanup;
        }
        c->n_past += T;
        if (!logits) continue;
        if (all_logits) {
            ap_rmsnorm(c->xn, E, c->x, E, m->out_norm, T, (int)E, hp->rms_eps);
            const ap_qmat *out[1] = {&m->output.q};
            par_matmul(c, logits + (size_t)b0 * V, V, c->xn, E, out, 1, T, 0);
        } else if (b0 + T == n) {
            ap_rmsnorm(c->xn, E, c->x + (size_t)(T - 1) * E, E, m->out_norm, 1, (int)E,
                       hp->rms_eps);
            const ap_qmat *out[1] = {&m->output.q};
            par_matmul(c, logits, V, c->xn, E, out, 1, 1, 0);
        }
    }

    if (logits) {
        size_t nl = all_logits ? (size_t)n * V : V;
        for (size_t i = 0; i < nl; i++) {
            if (!isfinite(logits[i])) {
                st = ap_errf(err, AP_ERR_NUMERIC, "non-finite logit at token %zu, vocab id %zu",
                             i / V, i % V);
                c->n_past = n_past0;
                goto cleanup;
            }
        }
    }
    if (want_colsum) {
        int len = c->n_past;
        for (int l = 0; l < hp->n_layer; l++) {
            for (int h = 0; h < hp->n_head; h++) {
                const double *src = c->colsum + ((size_t)l * hp->n_head + h) * cs_stride;
                for (int j = 0; j < len; j++) c->colsum_f[j] = (float)src[j];
                obs->on_colsum(obs->user, l, h, c->colsum_f, len);
            }
        }
    }

cleanup:
    return st;
}

/* --------------------------------------------------------------- sampling */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Order-preserving map from float to uint32 (NaN sorts above +inf and is
 * excluded separately). */
static uint32_t fkey(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

int32_t ap_sample(const float *logits, int n_vocab, float temperature, int top_k, uint64_t *rng) {
    int best = -1;
    for (int i = 0; i < n_vocab; i++)
        if (!isnan(logits[i]) && (best < 0 || logits[i] > logits[best])) best = i;
    if (best < 0) return 0;
    if (!(temperature > 0.0f) || !rng) return best;

    int n_valid = 0;
    for (int i = 0; i < n_vocab; i++) n_valid += !isnan(logits[i]);
    int k = (top_k <= 0 || top_k > n_valid) ? n_valid : top_k;

    /* The k-th largest logit, found bit by bit on the ordered keys: no copy,
     * no sort, 32 passes over the row (cheap next to one forward pass). */
    uint32_t thr = 0;
    for (int bit = 31; bit >= 0; bit--) {
        uint32_t cand = thr | (1u << bit);
        int cnt = 0;
        for (int i = 0; i < n_vocab; i++) cnt += !isnan(logits[i]) && fkey(logits[i]) >= cand;
        if (cnt >= k) thr = cand;
    }
    /* Keep everything above the threshold and, among ties at it, the lowest
     * indices until k are kept. */
    int above = 0;
    for (int i = 0; i < n_vocab; i++) above += !isnan(logits[i]) && fkey(logits[i]) > thr;
    int ties_left = k - above;

    const double mx = logits[best], inv_t = 1.0 / temperature;
    double sum = 0.0;
    int ties = ties_left;
    for (int i = 0; i < n_vocab; i++) {
        if (isnan(logits[i])) continue;
        uint32_t key = fkey(logits[i]);
        if (key < thr || (key == thr && ties-- <= 0)) continue;
        sum += exp(((double)logits[i] - mx) * inv_t);
    }
    double u = (double)(splitmix64(rng) >> 11) * 0x1.0p-53 * sum;
    double acc = 0.0;
    int last = best;
    ties = ties_left;
    for (int i = 0; i < n_vocab; i++) {
        if (isnan(logits[i])) continue;
        uint32_t key = fkey(logits[i]);
        if (key < thr || (key == thr && ties-- <= 0)) continue;
        acc += exp(((double)logits[i] - mx) * inv_t);
        last = i;
        if (u < acc) return i;
    }
    return last; /* u rounding up to the full sum */
}
