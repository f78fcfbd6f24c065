/* Quest's page bound of one query against per-block key bounds: the score
 * Quest ranks by, and the query half of the fused predictor score
 * (train/fusion.h).
 *
 *   out[j] = sum_d max(q[d] * kmin[j][d], q[d] * kmax[j][d])
 *
 * for the n blocks whose bounds are rows of kmin/kmax [n][hd]. Each product
 * is exact in float64 and the sum is accumulated in float64, so the float
 * result depends on the summation order only through float64 rounding: the
 * AVX2 path (four float64 lanes over d) equals ap_query_bound_ref, the plain
 * sequential loop, to within AP_TOL_KERNEL_REL and in practice bit for bit
 * after the final rounding to float. Key bounds must be finite with
 * kmin <= kmax elementwise (as every block's key bounds are): the AVX2 path
 * uses that to take one product per dimension. Nothing is kept or freed. */
#ifndef AP_QUERY_BOUND_H
#define AP_QUERY_BOUND_H

#include <stddef.h>

void ap_query_bound(const float *q, const float *kmin, const float *kmax, int hd, int n,
                    float *out);
/* The bound of nq queries q[nq][hd] (the query heads of one KV head) against
 * the same key bounds, out[nq][n]: equal to nq calls of ap_query_bound, but
 * each block's bounds are read once for all queries (the bounds of 8K keys
 * are 256 KB per KV head, past L2 when a layer's heads take turns). */
void ap_query_bound_heads(const float *q, int nq, const float *kmin, const float *kmax, int hd,
                          int n, float *out);
/* The same with row stride ldo >= n between the queries' outputs, so a
 * caller can split the blocks of one KV head into chunks (out + j0). */
void ap_query_bound_heads_ld(const float *q, int nq, const float *kmin, const float *kmax,
                             int hd, int n, float *out, size_t ldo);
void ap_query_bound_ref(const float *q, const float *kmin, const float *kmax, int hd, int n,
                        float *out);

#endif
