/* Causal softmax attention of one GQA group on the GPU, writing the block
 * views capture records, without a [rows x keys] probability matrix.
 *
 * Same semantics as ap_attn (kernels/attention.h, its CPU reference): query
 * row i of head h sits at position pos0 + i and attends keys 0..pos0+i.
 * Device pointers throughout:
 *   q    head h, row i at q + i*ldq + h*head_dim
 *   k, v key/value j at k + j*ldkv (j < pos0 + n_q)
 *   out  head h, row i at out + i*ldo + h*head_dim
 * Optional outputs:
 *   bmax, bsum  (both or neither) the block views of each probability row:
 *               head h, row i at bmax + h*view_head_stride +
 *               i*view_row_stride, n_vblocks entries: block b holds the max
 *               and the sum of the row's probabilities over keys
 *               [b*vblock, (b+1)*vblock) ∩ [0, pos]; 0 past the row's last
 *               block (as ap_block_pool with n_blocks = n_vblocks);
 *   colsum      head h's sums at colsum + h*colsum_stride (double, on the
 *               device): += the probability each key gets, over all n_q
 *               rows (as ap_attn's colsum: H2O's accumulated score).
 *
 * Kernel: a thread block per (16 query rows, head) walks the keys in tiles
 * of 16 through shared memory with an online softmax (flash-attention
 * style). A tile's per-row max logit and sum of exponentials relative to it
 * are the raw block view; they are stored in place and rescaled by the row's
 * final max and sum at the end. colsum needs the final row statistics, so a
 * second kernel (a thread block per 64 keys, looping over the rows in order)
 * recomputes the scores. Reductions run in fixed orders: deterministic.
 *
 * Rows arrive in tiles of 16, so a single decode row uses one thread block
 * per head and walks every key alone; for decode, ap_sparse_attn_cuda with
 * the whole sequence kept (sink = n_keys) gives the same output and block
 * views split over the keys. */
#ifndef AP_ATTENTION_CUDA_H
#define AP_ATTENTION_CUDA_H

#include <stddef.h>

#include "common/status.h"
#include "kernels/cuda_util.h"

typedef struct {
    int n_q, n_heads, pos0, head_dim; /* head_dim <= 256 */
    float scale;
    const float *q;
    size_t ldq;
    const float *k, *v;
    size_t ldkv;
    float *out;
    size_t ldo;
    int vblock;    /* view block size, a multiple of 16 */
    int n_vblocks; /* view entries per row */
    float *bmax, *bsum;
    size_t view_row_stride, view_head_stride;
    double *colsum;
    size_t colsum_stride;
} ap_attn_cuda_args;

/* Device work bytes a call needs (row statistics for colsum; 0 without). */
size_t ap_attn_cuda_work_bytes(const ap_attn_cuda_args *a);

/* Queue the attention on stream s. d_work: ap_attn_cuda_work_bytes(a) bytes
 * of device memory (may be NULL when that is 0). AP_ERR_UNSUPPORTED without
 * CUDA. */
ap_status ap_attn_cuda(const ap_attn_cuda_args *a, void *d_work, size_t work_bytes,
                       ap_cuda_stream s, ap_err *err);

/* Shape and pointer checks shared by the CUDA path and its callers. */
ap_status ap_attn_cuda_validate(const ap_attn_cuda_args *a, ap_err *err);

/* Whole probability rows, for captures that record raw attention (a few
 * layers): row i of head h (position pos0 + i) gets softmax(scale q.k_j)
 * over keys j = 0..pos0+i at probs + h*head_stride + i*row_stride, entries
 * past pos0+i untouched. A thread block per (row, head) scores every key
 * into the row itself, then normalises it: O(keys x head_dim) per row, for
 * the handful of rows capture asks for, not a kernel for prefill at large.
 * The scores are the same fused chain ap_attn_cuda uses. */
typedef struct {
    int n_q, n_heads, pos0, head_dim;
    float scale;
    const float *q; /* head h, row i at q + i*ldq + h*head_dim */
    size_t ldq;
    const float *k; /* key j at k + j*ldkv */
    size_t ldkv;
    float *probs;
    size_t row_stride, head_stride;
} ap_attn_rows_cuda_args;

ap_status ap_attn_rows_cuda_validate(const ap_attn_rows_cuda_args *a, ap_err *err);
ap_status ap_attn_rows_cuda(const ap_attn_rows_cuda_args *a, ap_cuda_stream s, ap_err *err);

#endif
