/* Block pooling of attention rows: the max and sum of each block of
 * `block` consecutive keys (the trace's block_max / block_sum views).
 * Keys past `len` count as absent: a partial last block pools only its
 * present keys, and blocks wholly past len are 0 (up to n_blocks). */
#ifndef AP_BLOCK_POOL_H
#define AP_BLOCK_POOL_H

#include "common/status.h"

/* One row: p[0..len) -> out_max[0..n_blocks), out_sum[0..n_blocks). Sums
 * accumulate in double so a row of 8K probabilities keeps its total of 1. */
void ap_block_pool(const float *p, int len, int block, int n_blocks, float *out_max,
                   float *out_sum);
void ap_block_pool_ref(const float *p, int len, int block, int n_blocks, float *out_max,
                       float *out_sum);

/* CUDA: n_rows rows of stride `stride` floats with per-row lengths, device
 * pointers; outputs [n_rows][n_blocks]. AP_ERR_UNSUPPORTED without CUDA. */
ap_status ap_block_pool_cuda(const float *d_p, const int *d_len, int n_rows, int stride,
                             int block, int n_blocks, float *d_max, float *d_sum, ap_err *err);

/* Number of usable CUDA devices (0 without CUDA, a driver or a GPU). */
int ap_cuda_device_count(void);

#endif
