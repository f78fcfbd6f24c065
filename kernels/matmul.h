/* Y = X·Wᵀ (+ Y): the projection of every linear layer.
 *
 * W is stored like a GGUF 2-D weight of ne = [n_in, n_out]: row-major
 * [n_out][ldw], one output neuron per row (stack-notes 1.5). The float32
 * version is single-threaded BLAS (sgemm, or sgemv for one row); callers
 * split n_out across their own threads by offsetting w and y. */
#ifndef AP_MATMUL_H
#define AP_MATMUL_H

#include <stddef.h>

/* y[t*ldy + o] (+)= sum_i x[t*ldx + i] * w[o*ldw + i], t < T, o < n_out,
 * i < n_in. accumulate: add to y instead of overwriting (fused residual). */
void ap_matmul(float *y, size_t ldy, const float *x, size_t ldx, const float *w, size_t ldw, int T,
               int n_in, int n_out, int accumulate);
/* Naive triple loop with double accumulation. */
void ap_matmul_ref(float *y, size_t ldy, const float *x, size_t ldx, const float *w, size_t ldw,
                   int T, int n_in, int n_out, int accumulate);

#endif
