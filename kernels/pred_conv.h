/* The predictor CNN's second convolution for one output row, fused with
 * its bias, ReLU and the final 1x1 channel dot product (the part of the
 * incremental predictor, train/incremental.c, that costs the multiply-adds):
 *
 *   g[x] = sum_co w3[co] * max(0, b2[co] + sum_{ci,kh,kw}
 *              w2[(co*c1 + ci)*9 + kh*3 + kw] * a1[ci*cs + kh*rs + x + kw])
 *
 * for x in [0, n): a1 holds conv1's activations with the zero padding in
 * place (channel stride cs, row stride rs), w2 is PyTorch's [c2][c1][3][3].
 * Computed directly, without im2col: for the narrow CNNs (4/8, 8/16
 * channels) a GEMM of 8-16 output rows spends more time packing than
 * multiplying. The AVX2 path (c2 a multiple of 8) accumulates each output
 * channel in the same (ci, kh, kw) order as ap_pred_conv2_row_ref, with
 * fused multiply-adds, so the two agree within AP_TOL_KERNEL_REL.
 * Nothing is kept or freed. */
#ifndef AP_PRED_CONV_H
#define AP_PRED_CONV_H

#include <stddef.h>

void ap_pred_conv2_row(const float *a1, int c1, size_t cs, size_t rs, int n, const float *w2,
                       const float *b2, const float *w3, int c2, float *g);
void ap_pred_conv2_row_ref(const float *a1, int c1, size_t cs, size_t rs, int n, const float *w2,
                           const float *b2, const float *w3, int c2, float *g);

/* The first convolution (one input channel, 3x3) with bias and ReLU for one
 * output row of one channel: d[j] = max(0, b + sum_{kh,kw} k[kh*3 + kw] *
 * x[kh*xs + j + kw]) for j in [0, n), the sum taken left to right from b
 * (fused multiply-adds on the AVX2 path). d must not overlap x. */
void ap_pred_conv1_row(const float *x, size_t xs, int n, const float *k, float b, float *d);
void ap_pred_conv1_row_ref(const float *x, size_t xs, int n, const float *k, float b, float *d);

#endif
