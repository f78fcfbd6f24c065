/* RMSNorm over the rows of a matrix: y = x / sqrt(mean(x^2) + eps) * g.
 *
 * The sum of squares is accumulated in double in both versions: it costs
 * nothing next to the matrix products and removes the one reduction whose
 * float32 rounding grows with n_embd. */
#ifndef AP_RMSNORM_H
#define AP_RMSNORM_H

#include <stddef.h>

#include "common/status.h"
#include "kernels/cuda_util.h"

/* rows x n, row r of x at x + r*ldx, of y at y + r*ldy; y may alias x (same
 * ld). g has n entries. */
void ap_rmsnorm(float *y, size_t ldy, const float *x, size_t ldx, const float *g, int rows, int n,
                float eps);
void ap_rmsnorm_ref(float *y, size_t ldy, const float *x, size_t ldx, const float *g, int rows,
                    int n, float eps);

/* CUDA, device pointers, queued on stream s: one thread block per row, the
 * sum of squares in double reduced in a fixed tree (deterministic), then the
 * same float32 rounding steps as ap_rmsnorm without fused multiply-adds.
 * AP_ERR_UNSUPPORTED without CUDA. */
ap_status ap_rmsnorm_cuda(float *d_y, size_t ldy, const float *d_x, size_t ldx, const float *d_g,
                          int rows, int n, float eps, ap_cuda_stream s, ap_err *err);

#endif
