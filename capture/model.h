/* Llama-family transformer forward pass on the CPU (OpenBLAS + the
 * quantized kernels of kernels/qmatvec.h; design in docs/engine.md).
 *
 * Weights keep their GGUF block format by default. Every product still uses
 * the exact float32 weight values the transformers reference dequantizes
 * to: decode multiplies the blocks directly (float32 activations, only the
 * summation order differs from dequantize + SGEMV), and prefill dequantizes
 * strips of rows for sgemm. Prefill runs as batched matrix products; decode
 * runs one token at a time against the KV cache. RoPE follows the GGUF
 * convention (adjacent pairs x[2i], x[2i+1]), since GGUF stores q/k permuted.
 *
 * Ownership: by default ap_model borrows nothing from the ap_gguf after
 * load (weights are copied), so the gguf may be freed; with
 * ap_model_opts.borrow_weights it points into the gguf's mapping, which
 * must then outlive the model. ap_ctx borrows the model: free every ctx
 * before its model. */
#ifndef AP_MODEL_H
#define AP_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "capture/gguf.h"
#include "common/par.h"
#include "common/status.h"
#include "kernels/qmatvec.h"

/* The architectures the engine runs: one forward pass, these switches
 * (read_hparams in model.c sets them per general.architecture). Mistral
 * files are "llama". */
typedef enum { AP_ARCH_LLAMA = 0, AP_ARCH_QWEN2, AP_ARCH_QWEN3, AP_ARCH_GEMMA3 } ap_arch;

typedef struct {
    char arch[32];         /* general.architecture: llama, qwen2, qwen3, gemma3 */
    char name[128];        /* general.name, may be empty */
    int n_layer;
    int n_embd;
    int n_head;
    int n_head_kv;
    int head_dim;
    int n_ff;
    int n_vocab;
    int n_ctx_train;       /* llama.context_length */
    float rope_base;
    float rms_eps;
    int tied_output;       /* no output.weight: logits use token_embd */
    ap_arch arch_id;
    int rope_neox;         /* 1: pairs (i, i + head_dim/2) (AP_ROPE_NEOX); 0: adjacent */
    float rope_freq_scale; /* linear or yarn RoPE scaling: 1 / rope.scaling.factor; 1 = none */
    int rope_yarn;         /* 1: YaRN scaling of the full-attention layers' RoPE (kernels/rope.h
                              ap_rope_yarn, from the yarn_* fields below) */
    float yarn_factor;     /* rope.scaling.factor */
    int yarn_orig_ctx;     /* rope.scaling.original_context_length */
    float yarn_beta_fast, yarn_beta_slow; /* 32 and 1 unless the file says otherwise */
    float yarn_attn_factor;               /* multiplies cos and sin */
    int rope_freqs;        /* 1: rope_freqs.weight divides each pair's frequency (Llama 3.x) */
    int qkv_bias;          /* 1: attn_{q,k,v}.bias added after the projections (qwen2) */
    int qk_norm;           /* 1: RMSNorm of each q and k head before RoPE (qwen3, gemma3) */
    int post_norms;        /* 1: RMSNorm of the attention and FFN outputs before the residual
                              add (gemma3: post_attention_norm, post_ffw_norm) */
    int ffn_gelu;          /* 1: GeGLU with tanh GELU (gemma3); 0: SwiGLU */
    float embd_scale;      /* token embeddings are multiplied by this (gemma3: sqrt(n_embd)) */
    float attn_scale;      /* q·k scale, 1/sqrt(head_dim) unless the architecture says otherwise */
    int swa_window;        /* > 0: sliding-window layers attend the last swa_window keys */
    int swa_pattern;       /* with swa_window: layer l is full attention iff (l + 1) % swa_pattern
                              == 0 (gemma3: 6), else sliding (ap_hparams_layer_swa) */
    float rope_base_swa;   /* RoPE base of the sliding-window layers */
} ap_hparams;

/* The hyperparameters of a GGUF from its metadata and tensor directory,
 * without loading weights: what ap_model_load checks first, with the same
 * refusals (unsupported architecture, RoPE scaling, soft-capping...). */
ap_status ap_hparams_read(const ap_gguf *g, ap_hparams *hp, ap_err *err);
/* 1 when layer l attends through a sliding window (bounded KV), else 0. */
int ap_hparams_layer_swa(const ap_hparams *hp, int layer);
/* Number of layers that attend to every earlier key (what KV selection can
 * cut); n_layer when the model has no sliding-window layers. */
int ap_hparams_n_full_layers(const ap_hparams *hp);

typedef struct ap_model ap_model;
typedef struct ap_ctx ap_ctx;

/* Engine choices; ap_model_opts_default gives the exact quantized engine. */
typedef struct {
    /* 1: dequantize every weight to float32 at load and multiply with
     * sgemv/sgemm only (the pre-qmatvec engine: ~5x the weight memory and
     * decode traffic of a Q4_1 file). */
    int f32_weights;
    /* 1 (opt-in, inexact): quantized products round their float32 input to
     * int8 per block of 32 (AP_QACT_Q8); faster, error in docs/engine.md.
     * Applies to decode and micro-batches of a few tokens, not to sgemm
     * prefill. Ignored with f32_weights. */
    int q8_activations;
    /* 1: keep pointers into the gguf's mapping instead of copying the
     * quantized weights (float32 ones are always copied); the gguf must
     * outlive the model. */
    int borrow_weights;
    /* 1: decode attention through ap_attn (BLAS, one work unit per GQA
     * group), as before the streaming decode kernel; for comparisons. */
    int decode_attn_blas;
    /* Kernel ISA for quantized products and decode attention (AUTO: the
     * best this CPU runs; SCALAR forces the portable kernels). */
    ap_qisa isa;
    /* Element type of the KV cache of every ctx made from this model
     * (AP_KV_F32, the exact default; AP_KV_F16 halves the cache and the
     * bytes decode attention reads: each cached key and value is rounded
     * to binary16 once, when written; error in docs/engine.md). The CPU
     * engine only: the CUDA engine refuses AP_KV_F16. */
    ap_kv_type kv_type;
} ap_model_opts;

void ap_model_opts_default(ap_model_opts *o);

/* ap_model_load = ap_model_load_opts with the defaults (opts NULL). */
ap_status ap_model_load(const ap_gguf *g, ap_model **out, ap_err *err);
ap_status ap_model_load_opts(const ap_gguf *g, const ap_model_opts *opts, ap_model **out,
                             ap_err *err);
void ap_model_free(ap_model *m);
const ap_hparams *ap_model_hparams(const ap_model *m);
const ap_model_opts *ap_model_get_opts(const ap_model *m);
/* Bytes of weight matrices one decode step reads (every layer's matrices
 * and the output matrix, in the form the model holds them). */
size_t ap_model_decode_weight_bytes(const ap_model *m);

/* Observer of attention, called synchronously from ap_ctx_eval for each
 * (layer, query head, query position) with pos >= rows_from, with the
 * post-softmax probabilities over keys 0..pos (len = pos + 1).
 * on_query/on_keys (optional) give the post-RoPE query of each reported row
 * and every newly cached post-RoPE key, so traces can hold what Quest needs.
 * on_colsum (optional) gives, per (layer, head), the sum over all query rows
 * of this eval call of the attention each key received (H2O's prefill score),
 * length = number of keys in the cache after the call.
 * Callbacks may run on worker threads, concurrently for different heads: an
 * observer must only touch state owned by the (layer, head) it is given.
 * (on_row and on_query run on workers; on_key and on_colsum run on the thread
 * that called ap_ctx_eval. For each (layer, head), rows arrive in increasing
 * pos order. Pointers passed to callbacks are valid only during the call.) */
/* Engines that pool on the device (the CUDA engine, capture/model_cuda.h)
 * report block views instead of whole rows: on_views gets, for each
 * reported row, the max and the sum of its probabilities over each block of
 * view_block keys (n_blocks = ceil(len / view_block) entries; view_block a
 * positive multiple of 16), exactly what ap_block_pool makes of the row. They
 * call on_row only for the layers want_rows (NULL: none) says 1 of, and
 * report every callback on the calling thread after the device work of each
 * micro-batch. The CPU engine never calls on_views or want_rows: an observer
 * that serves both engines sets on_row and on_views. */
typedef void (*ap_attn_views_fn)(void *user, int layer, int head, int pos, const float *bmax,
                                 const float *bsum, int n_blocks);

typedef struct {
    void *user;
    int rows_from;
    void (*on_row)(void *user, int layer, int head, int pos, const float *probs, int len);
    void (*on_query)(void *user, int layer, int head, int pos, const float *q, int head_dim);
    void (*on_key)(void *user, int layer, int kv_head, int pos, const float *k, int head_dim);
    void (*on_colsum)(void *user, int layer, int head, const float *colsum, int len);
    /* Device-pooling engines only (see above). */
    int view_block;
    ap_attn_views_fn on_views;
    int (*want_rows)(void *user, int layer);
} ap_attn_observer;

/* n_ctx <= hparams.n_ctx_train; n_threads >= 1.
 * Threading: the ctx owns a pool of n_threads - 1 worker threads (plus the
 * caller's) that split every matrix product by output neurons and attention
 * by head (decode: by GQA group and key chunk). Each BLAS call then runs
 * inside one of those threads, so creating a ctx sets OpenBLAS to one
 * thread for the whole process (openblas_set_num_threads(1), stack-notes
 * 9); code that wants threaded BLAS elsewhere in the same process must set
 * it back itself. */
ap_status ap_ctx_create(const ap_model *m, int n_ctx, int n_threads, ap_ctx **out, ap_err *err);
void ap_ctx_free(ap_ctx *c);
/* Override the model's q8_activations and decode_attn_blas for this ctx
 * (benchmarks compare them on one KV cache). q8_activations has no effect
 * on a model loaded with f32_weights. AP_ERR_NOMEM leaves the ctx as it was
 * except for decode_attn_blas. */
ap_status ap_ctx_set_exec(ap_ctx *c, int q8_activations, int decode_attn_blas, ap_err *err);
void ap_ctx_reset(ap_ctx *c);     /* empty the KV cache */
int ap_ctx_n_past(const ap_ctx *c);
int ap_ctx_n_ctx(const ap_ctx *c);

/* Append n tokens at positions n_past..n_past+n-1 (n > 1 = prefill, batched).
 * logits: if non-NULL receives n_vocab floats for the last token, or n*n_vocab
 * if all_logits. obs may be NULL. AP_ERR_RANGE if the cache would overflow,
 * AP_ERR_ARG for n < 1 or a token outside the vocabulary (the cache is then
 * unchanged); AP_ERR_NUMERIC for a non-finite logit (n_past is rolled back).
 * Long inputs run as micro-batches of 512 tokens, so memory does not grow
 * with n beyond the KV cache. */
ap_status ap_ctx_eval(ap_ctx *c, const int32_t *tokens, int n, float *logits, int all_logits,
                      const ap_attn_observer *obs, ap_err *err);

/* The checks every engine's eval makes before any work: n >= 1 tokens, all
 * inside the vocabulary (AP_ERR_ARG), and room for them after n_past cached
 * ones in an n_ctx-token cache (AP_ERR_RANGE). */
ap_status ap_eval_check_tokens(const ap_hparams *hp, const int32_t *tokens, int n, int n_past,
                               int n_ctx, ap_err *err);

/* Drop the cached keys/values at positions >= n_past (0 <= n_past <=
 * ap_ctx_n_past): decoding then continues from n_past. Used to run several
 * decodes from one shared prefill. AP_ERR_RANGE when n_past is out of
 * range (the cache is then unchanged). */
ap_status ap_ctx_truncate(ap_ctx *c, int n_past, ap_err *err);

/* ------------------------------------------------ compressed decoding
 *
 * A KV policy makes every single-token eval (decode) attend, per layer and
 * query head, only to a kept set of keys: the sink tokens, the local window
 * and the key blocks the policy lists (exact semantics in
 * kernels/sparse_attn.h), with the softmax renormalised over the kept keys.
 * Multi-token evals (prefill) stay dense, as the method prescribes. The
 * cache itself keeps every key: this is selection ("masked" in the sense of
 * the paper's evaluation, but computed sparsely: attention reads only the
 * kept keys). With a pages callback, attention reads the kept keys from
 * wherever the policy's page tables point (a hot pool it fills from the
 * cache) instead. Callbacks run on the thread that called ap_ctx_eval, layer by
 * layer in order; a non-OK status aborts the eval (n_past rolled back).
 * Under a policy a decode eval's observer gets on_key only (no rows,
 * queries or column sums: the dense row is not computed). */
enum {
    AP_KV_DENSE_BEFORE = 1, /* dense block views of this step's row before select (oracle) */
    AP_KV_MEASURE = 2       /* dense views and kept mass after attention (calibration, metrics) */
};

typedef struct {
    int layer, pos;          /* query position; keys 0..pos */
    int n_head, n_head_kv, head_dim;
    int n_blocks;            /* ceil((pos + 1) / block) */
    size_t ldb;              /* row stride of every block view below */
    const float *q;          /* [n_head][head_dim] post-RoPE queries */
    /* This layer's keys: key j of KV head g at element j*kv_stride +
     * g*head_dim of k, elements of kv_type (the ctx's cache type). */
    const void *k;
    const void *v;           /* this layer's values, same layout (a hot pool copies from both) */
    ap_kv_type kv_type;
    size_t kv_stride;
    /* With AP_KV_DENSE_BEFORE: the dense (true) row's block views
     * [n_head][ldb], before select; otherwise NULL. */
    const float *dense_bmax, *dense_bsum;
    /* The engine's decode threads, lent to select and attended for the
     * duration of the call (common/par.h; NULL: none), on the thread the
     * engine called them on; not to be kept or used from other threads. */
    const ap_par *par;
} ap_kv_step;

typedef struct {
    const int *n_kept;         /* [n_head] keys attended */
    const float *bmax, *bsum;  /* [n_head][ldb] views of the renormalised sparse row */
    /* With AP_KV_MEASURE: [n_head] dense mass on the kept keys and the dense
     * row's views; otherwise NULL. */
    const float *kept_mass;
    const float *dense_bmax, *dense_bsum;
} ap_kv_attended;

typedef struct {
    void *user;
    int block, sink, local;  /* kept-set geometry: tokens (sink a multiple of block) */
    int per_q_head;          /* 1: one list per query head; 0: one per KV head */
    /* AP_KV_* flags wanted for (layer, pos); NULL = none. */
    unsigned (*want)(void *user, int layer, int pos);
    /* Fill *blocks / *set_off (policy-owned, valid until attended returns;
     * layout of ap_sparse_attn_args: set s lists blocks[set_off[s] ..
     * set_off[s+1]), strictly increasing absolute block indices). */
    ap_status (*select)(void *user, const ap_kv_step *s, const int **blocks, const int **set_off,
                        ap_err *err);
    /* After attention; may be NULL. */
    ap_status (*attended)(void *user, const ap_kv_step *s, const ap_kv_attended *r, ap_err *err);
    /* Optional (NULL: attention reads the engine's contiguous cache, as
     * before). Called right after select of the same step: *k_pages and
     * *v_pages get this layer's page tables, [n_head_kv][n_blocks] pointers
     * (policy-owned, valid until attended returns); page b of KV head g
     * holds that head's keys (values) b*block .. b*block + block - 1, one
     * after another with a stride of head_dim elements of the step's
     * kv_type (the last page may be
     * partial). Pages of blocks no kept key of the head's sets touches may
     * be NULL. *k_pages = NULL: this step reads the contiguous cache.
     * Passes that read every key (AP_KV_DENSE_BEFORE, and the dense part of
     * AP_KV_MEASURE) read the contiguous cache, the cold store every key
     * lives in; under AP_KV_MEASURE the attention output (and n_kept and the
     * sparse views) then comes from a second, paged pass, so what the model
     * computes always comes from the pages. */
    ap_status (*pages)(void *user, const ap_kv_step *s, const void *const **k_pages,
                       const void *const **v_pages, ap_err *err);
    /* For engines that keep the KV cache away from the compute (the CUDA
     * engine with its cache offloaded to host memory, which then holds a
     * device pool of the kept blocks; the CPU engine ignores both fields):
     * max_blocks: the most distinct blocks one KV head's sets, plus its sink
     *   and local blocks, touch in one step (0: unknown; the pool then has
     *   room for every block);
     * peek (optional): the lists select will return for (layer, pos), if the
     *   policy knows them before the step (the method's cross-token
     *   prefetch: the predictor scores step t+1 while step t runs). Same
     *   layout and lifetime rules as select (valid until the next callback
     *   of this policy). *blocks = NULL: not known (yet). With wait = 0 it
     *   must not block; with wait = 1 it may wait for work in flight. A
     *   peek that turns out different from select is not an error: the
     *   engine fetches what is missing when the step comes. */
    int max_blocks;
    ap_status (*peek)(void *user, int layer, int pos, int wait, const int **blocks,
                      const int **set_off, ap_err *err);
} ap_kv_policy;

/* Install a policy (borrowed: it must outlive its use; NULL = dense decode,
 * the default). AP_ERR_ARG for a bad geometry; AP_ERR_NOMEM leaves the ctx
 * dense. The policy acts in the full-attention layers only: sliding-window
 * layers (ap_hparams_layer_swa) decode densely over their window and never
 * call it (their KV is bounded already). */
ap_status ap_ctx_set_kv_policy(ap_ctx *c, const ap_kv_policy *p, ap_err *err);

/* Greedy (temperature <= 0, or rng NULL): the arg max, lowest index on ties.
 * Otherwise softmax(logits / temperature) over the top_k largest logits
 * (top_k <= 0 or >= n_vocab: all; ties at the cut keep the lowest indices),
 * drawing from *rng, a splitmix64 state advanced once per call. NaN logits
 * are never chosen. */
int32_t ap_sample(const float *logits, int n_vocab, float temperature, int top_k, uint64_t *rng);

#endif
