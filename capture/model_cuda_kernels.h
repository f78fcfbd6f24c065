/* Device helpers of the CUDA engine (capture/model_cuda.cu), private to
 * capture/model_cuda.c. They exist only in CUDA builds: model_cuda.c calls
 * them under AP_HAVE_CUDA. Device pointers throughout; everything is queued
 * on the stream given and reports launch errors only (faults surface at
 * ap_cuda_sync). */
#ifndef AP_MODEL_CUDA_KERNELS_H
#define AP_MODEL_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "kernels/cuda_util.h"

/* A cuBLAS handle bound to one stream, default math mode (no TF32). */
typedef struct ap_cmc_blas ap_cmc_blas;
ap_status ap_cmc_blas_create(ap_cuda_stream s, ap_cmc_blas **out, ap_err *err);
void ap_cmc_blas_free(ap_cmc_blas *b); /* NULL: no-op */

/* Row-major y[t][o] (= or +=, accumulate) sum_i w[o][i] x[t][i] for T rows:
 * y = x W^T with W [n_out][n_in] row-major, x [T][ldx], y [T][ldy]. */
ap_status ap_cmc_gemm(ap_cmc_blas *b, float *y, size_t ldy, const float *x, size_t ldx,
                      const float *w, int n_out, int n_in, int T, int accumulate, ap_err *err);

/* x[t] = emb[tok[t]] (n_embd floats each, x rows ldx apart) for T tokens;
 * tok already checked against the vocabulary. */
ap_status ap_cmc_embed(float *x, size_t ldx, const float *emb, int n_embd, const int32_t *tok,
                       int T, ap_cuda_stream s, ap_err *err);

/* rows x width_bytes between any two of device / pinned host memory. */
ap_status ap_cmc_copy_rows(void *dst, size_t dst_pitch, const void *src, size_t src_pitch,
                           size_t width_bytes, int rows, ap_cuda_stream s, ap_err *err);

/* Page tables of a [n_layer][n_ctx][kv_dim] cache for ap_sparse_attn_args:
 * kp[l*table_stride + g*n_pages + b] = kbase + l*layer_stride +
 * b*page_keys*kv_dim + g*head_dim (and vp from vbase), b < n_pages. */
ap_status ap_cmc_fill_pages(const float **kp, const float **vp, const float *kbase,
                            const float *vbase, int n_layer, size_t layer_stride,
                            size_t table_stride, int n_groups, int n_pages, int page_keys,
                            size_t kv_dim, int head_dim, ap_cuda_stream s, ap_err *err);

/* The device address of mapped pinned host memory (ap_cuda_host_alloc). */
ap_status ap_cmc_mapped(void *host, void **dev, ap_err *err);

#endif
