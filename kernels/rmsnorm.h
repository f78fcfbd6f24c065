/* RMSNorm over the rows of a matrix: y = x / sqrt(mean(x^2) + eps) * g.
 *
 * The sum of squares is accumulated in double in both versions: it costs
 * nothing next to the matrix products and removes the one reduction whose
 * float32 rounding grows with n_embd. */
#ifndef AP_RMSNORM_H
#define AP_RMSNORM_H

#include <stddef.h>

/* rows x n, row r of x at x + r*ldx, of y at y + r*ldy; y may alias x (same
 * ld). g has n entries. */
void ap_rmsnorm(float *y, size_t ldy, const float *x, size_t ldx, const float *g, int rows, int n,
                float eps);
void ap_rmsnorm_ref(float *y, size_t ldy, const float *x, size_t ldx, const float *g, int rows,
                    int n, float eps);

#endif
