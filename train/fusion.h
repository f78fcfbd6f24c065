/* Query fusion: the AttentionPredictor variant that adds what the current
 * query says to what the history says (docs/predictor.md, "Query fusion").
 *
 * The paper's CNN sees only past attention rows, so it can run a step ahead
 * but cannot know where the new query looks. Quest's page bound
 * (sum_d max(q_d * kmin_d, q_d * kmax_d) over a block's key bounds) can, and
 * the selection step has it anyway. The fused score of a candidate block is
 *     z(cnn) + w * z(bound)
 * with z the z-score over the step's candidate blocks (so the two scales
 * never need matching) and w one learned weight per model. Everything here
 * works per (step, head) on the W candidates. */
#ifndef AP_FUSION_H
#define AP_FUSION_H

/* The bound itself, ap_query_bound, is a kernel (kernels/query_bound.h). */
#include "kernels/query_bound.h"

/* out = (x - mean) / std over the W values (population std, float64); all
 * zeros when the values are equal (no ranking information). out may be x. */
void ap_zscore(const float *x, int W, float *out);

/* out = z(cnn) + w * zq, zq already z-scored. out may alias cnn. */
void ap_fuse_scores(const float *cnn, const float *zq, int W, float w, float *out);

/* Gradient of the fused scores: given dL/dout, writes dL/dcnn into dcnn (W
 * values; may alias dout) and returns dL/dw. cnn are the unfused scores. */
double ap_fuse_scores_backward(const float *cnn, const float *zq, int W, float w,
                               const float *dout, float *dcnn);

#endif
