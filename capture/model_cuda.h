/* Llama forward pass on one CUDA device (issue 6): the same model and the
 * same eval semantics as the CPU engine (capture/model.h), for decoding
 * speed and as the base of GPU capture and compressed decoding.
 *
 * Weights: read from the gguf by the tensor names capture/model.c uses,
 * dequantized on the host with ap_dequant_row and uploaded once as float32.
 * These are exactly the values the CPU engine multiplies (its quantized
 * kernels and its f32_weights mode alike), so CPU and GPU differ only in
 * summation order; parity is checked against AP_TOL_CPU_GPU_REL. q, k and v
 * of a layer sit in one [n_head hd + 2 n_head_kv hd][n_embd] matrix and
 * gate and up in one [2 n_ff][n_embd] matrix, so each is one product.
 *
 * Products: cuBLAS sgemm with CUBLAS_COMPUTE_32F and the default math mode
 * (no TF32). RMSNorm, RoPE (the CPU's own ap_rope_table, uploaded), SwiGLU:
 * the ap_*_cuda kernels. Prefill attention: ap_attn_cuda per GQA group.
 * Decode attention: ap_sparse_attn_cuda with every key kept (sink = n_keys),
 * because it splits the keys over ~128-key thread blocks, where ap_attn_cuda
 * gives a single decode row one thread block per head (9 on the default
 * model) walking every key alone (kernels/attention_cuda.h).
 *
 * Compute runs on one stream; every reduction (cuBLAS on one stream, the
 * kernels) runs in a fixed order, so a run repeats bit for bit on the same
 * device. A second stream only copies pages into the device pool of
 * compressed decoding (the cross-token prefetch), ordered against compute
 * by events.
 *
 * KV cache: [n_layer][n_ctx][n_head_kv*head_dim] for K and for V, in device
 * memory, or with ap_cuda_model_opts.kv_offload in pinned host memory mapped
 * into the device: decode attention then reads it over the bus through the
 * paged layout of ap_sparse_attn_args (one page pointer per 16 keys), and
 * prefill copies the layer's earlier keys into a one-layer device buffer
 * (attention over the bus would read every key once per 16 query rows).
 * This is the "full KV offloaded" baseline of the offload experiments.
 *
 * Ownership: the ap_cuda_model borrows nothing after create: the gguf and
 * the ap_model (only its hyperparameters are read) may be freed. Without a
 * CUDA build create returns AP_ERR_UNSUPPORTED; without a device it returns
 * the runtime's error (AP_ERR_INTERNAL, message from the driver). Either
 * way *out stays NULL. */
#ifndef AP_MODEL_CUDA_H
#define AP_MODEL_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "capture/gguf.h"
#include "capture/model.h"
#include "common/status.h"

typedef struct ap_cuda_model ap_cuda_model;

typedef struct {
    /* 1: KV cache in pinned, mapped host memory (see above). */
    int kv_offload;
    /* With kv_offload and a KV policy: at the end of each decode step ask
     * the policy's peek for every layer's next lists and copy the blocks
     * the device pool lacks on a second stream (the method's cross-token
     * prefetch); the next step's layer l waits only for layer l's copies.
     * 0: blocks are fetched on demand when select names them. Default 1. */
    int prefetch;
} ap_cuda_model_opts;

void ap_cuda_model_opts_default(ap_cuda_model_opts *o); /* device KV, prefetch 1 */

/* n_ctx in [1, hparams.n_ctx_train] (AP_ERR_RANGE otherwise); head_dim at
 * most 256 (the attention kernels' limit; AP_ERR_UNSUPPORTED). g must be
 * the file m was loaded from: tensors are looked up by name and their
 * shapes checked against m's hyperparameters. opts NULL = defaults. */
ap_status ap_cuda_model_create(const ap_gguf *g, const ap_model *m, int n_ctx,
                               ap_cuda_model **out, ap_err *err);
ap_status ap_cuda_model_create_opts(const ap_gguf *g, const ap_model *m, int n_ctx,
                                    const ap_cuda_model_opts *opts, ap_cuda_model **out,
                                    ap_err *err);
void ap_cuda_model_free(ap_cuda_model *cm); /* NULL: no-op */

/* As ap_ctx_eval without observers: append n tokens at positions
 * n_past..n_past+n-1 (n > 1 = prefill, batched in micro-batches of 512),
 * logits_host (may be NULL) receives the n_vocab logits of the last token.
 * AP_ERR_ARG for n < 1 or a token outside the vocabulary, AP_ERR_RANGE when
 * the cache would overflow (both leave everything unchanged); AP_ERR_NUMERIC
 * for a non-finite logit (n_past rolled back). The call returns when the
 * device work is done. A CUDA failure (AP_ERR_INTERNAL) rolls n_past back
 * too, but a device fault poisons the whole CUDA context: free the model. */
ap_status ap_cuda_model_eval(ap_cuda_model *cm, const int32_t *tokens, int n, float *logits_host,
                             ap_err *err);

/* ap_cuda_model_eval with an observer (NULL: none), the CPU's
 * ap_attn_observer read the device-pooling way (capture/model.h): block
 * views of view_block keys (on_views) for rows pos >= rows_from, whole rows
 * (on_row) only for layers want_rows names, post-RoPE queries of those rows
 * (on_query), every new key (on_key), and each (layer, head)'s column sums
 * over this call's rows (on_colsum, after the last micro-batch; float
 * copies of double sums). Everything is reported on the calling thread,
 * per micro-batch after its device work, layer by layer; under a KV policy
 * a decode step reports on_key only, as on the CPU. An observer with
 * on_row but no on_views, or with on_views and a view_block that is not a
 * positive multiple of 16, is rejected (AP_ERR_ARG) before any work. A
 * decode step with on_colsum, or with views of blocks other than 16 keys,
 * takes the one-row path of ap_attn_cuda (slower at long contexts). */
ap_status ap_cuda_model_eval_obs(ap_cuda_model *cm, const int32_t *tokens, int n,
                                 float *logits_host, const ap_attn_observer *obs, ap_err *err);

/* Compressed decoding (capture/model.h's ap_kv_policy, same semantics as
 * ap_ctx_set_kv_policy; borrowed, NULL = dense). The engine calls want,
 * select and attended on the calling thread, layer by layer (each select
 * and attended costs a device synchronisation: the lists come from the
 * host and the views go back to it). ap_kv_step.k and .v are NULL here
 * (the cache is on the device or offloaded) and the pages callback is
 * not used: with the cache in device memory attention reads the kept keys
 * in place; with kv_offload the engine holds a device pool of 16-key pages
 * per (layer, KV head), policy->max_blocks pages each (all blocks when 0),
 * filled from the offloaded cache, the newest key written into it, and
 * attention reads only the pool (real eviction from device memory: a
 * block not kept is not on the device). Passes that read every key
 * (AP_KV_DENSE_BEFORE, AP_KV_MEASURE) read the offloaded cache over the
 * bus. AP_ERR_ARG for a bad geometry (block must be 16). */
ap_status ap_cuda_model_set_kv_policy(ap_cuda_model *cm, const ap_kv_policy *p, ap_err *err);

/* What compressed decoding moved, since the policy was installed (sums over
 * decode steps; zeros without a policy). */
typedef struct {
    long long steps;             /* decode evals under the policy */
    double pool_capacity_bytes;  /* device pool (K and V), offload only */
    double pool_used_bytes;      /* summed over steps: pages in use x page bytes */
    double kept_tokens;          /* summed over steps, layers, KV heads: keys the pool holds */
    long long demand_blocks;     /* pages copied in at select (not prefetched) */
    long long prefetched_blocks; /* pages copied in ahead by the prefetch stream */
    long long prefetch_hits;     /* prefetched pages the step's select then kept */
    long long prefetch_layers;   /* (step, layer) with a peek answer */
    double h2d_bytes;            /* KV bytes copied host -> device into the pool */
    double fill_bytes;           /* of which for the first step (filling the empty pool) */
    double policy_seconds;       /* host time inside the policy's callbacks */
} ap_cuda_kv_stats;
void ap_cuda_model_kv_stats(const ap_cuda_model *cm, ap_cuda_kv_stats *st);

void ap_cuda_model_reset(ap_cuda_model *cm); /* empty the KV cache */
/* Drop cached positions >= n_past (0 <= n_past <= current); AP_ERR_RANGE
 * otherwise, the cache unchanged. */
ap_status ap_cuda_model_truncate(ap_cuda_model *cm, int n_past, ap_err *err);
int ap_cuda_model_n_past(const ap_cuda_model *cm);
int ap_cuda_model_n_ctx(const ap_cuda_model *cm);

/* Bytes this model holds in device memory and in pinned host memory (the
 * offloaded KV cache). */
void ap_cuda_model_memory(const ap_cuda_model *cm, size_t *device_bytes, size_t *pinned_bytes);

#endif
