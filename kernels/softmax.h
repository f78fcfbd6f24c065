/* Numerically stable softmax of one row, in place.
 *
 * The float32 version uses a polynomial exp that gcc vectorizes (attention
 * prefill at 8K context evaluates ~10^10 exponentials, where libm's scalar
 * expf would cost as much as the matrix products); its relative error is a
 * few float ulps, far inside AP_TOL_KERNEL_REL. */
#ifndef AP_SOFTMAX_H
#define AP_SOFTMAX_H

#include <stddef.h>

#include "common/status.h"
#include "kernels/cuda_util.h"

/* x[i] <- exp(x[i] - max) / sum; n >= 1. Returns nothing: a row of -inf or
 * NaN comes out as NaN, which the model's finite checks catch. */
void ap_softmax(float *x, int n);
void ap_softmax_ref(float *x, int n);

/* The pieces, for kernels that fuse other work into the passes:
 * x[i] <- exp(x[i] - shift) for x[i] <= shift (above counts as equal; more
 * than 86 below gives exactly 0, never a subnormal); returns the float sum. */
float ap_exp_shift_sum(float *x, int n, float shift);
/* max(x[0..n-1]), -FLT_MAX for n = 0; NaN entries are skipped. */
float ap_row_max(const float *x, int n);

/* CUDA, in place on device memory, on stream s: rows x n, row r at
 * d_x + r*ldx. With d_len (device, optional) row r is a softmax over its
 * first clamp(d_len[r], 0, n) entries and the rest of the row is set to 0
 * (causal rows); NULL means every row has n entries. One thread block per
 * row; max and sum (in double) reduced in a fixed tree, so runs repeat bit
 * for bit. NaN propagates to the whole row. AP_ERR_UNSUPPORTED without CUDA. */
ap_status ap_softmax_rows_cuda(float *d_x, size_t ldx, int rows, int n, const int *d_len,
                               ap_cuda_stream s, ap_err *err);

#endif
