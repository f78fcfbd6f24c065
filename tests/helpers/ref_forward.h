/* Plain float64 reference forward pass of a llama GGUF, for tests.
 *
 * Independent of capture/model.c: it reads the hyperparameters and tensors
 * itself through the gguf API, dequantizes with ap_dequant_row_ref, and runs
 * naive loops in double with full causal attention over the whole sequence
 * at once (no KV cache, no chunking). RoPE uses the same angle definition as
 * the model (float32 inv_freq and float32 pos*inv_freq, as transformers
 * does), evaluated in double from there. Slow: tiny models only. */
#ifndef AP_REF_FORWARD_H
#define AP_REF_FORWARD_H

#include <stdint.h>

#include "capture/gguf.h"
#include "common/status.h"

typedef struct {
    int n_tokens, n_vocab, n_layer, n_head;
    double *logits; /* [n_tokens][n_vocab] */
    double *attn;   /* [n_layer][n_head][n_tokens][n_tokens]: row p holds the
                       probabilities over keys 0..p, zeros after */
} ap_ref_out;

/* Fills *out (owned by the caller: ap_ref_out_free). */
ap_status ap_ref_forward(const ap_gguf *g, const int32_t *tokens, int n, ap_ref_out *out,
                         ap_err *err);
void ap_ref_out_free(ap_ref_out *o);

static inline const double *ap_ref_attn_row(const ap_ref_out *o, int layer, int head, int pos) {
    return o->attn + (((size_t)layer * o->n_head + head) * o->n_tokens + pos) * o->n_tokens;
}

#endif
