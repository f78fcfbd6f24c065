/* Selection metrics for one predicted sample and their aggregation
 * (method.md sections 4.3 and 6; exact definitions in docs/predictor-data.md).
 *
 * A sample is described in candidate-block terms, as the dataset fills it:
 *   scores[W]   the selector's score per candidate block (CNN output, or the
 *               newest history row for the "last step" baseline)
 *   ysum[W]     the mass selecting that candidate adds to the kept set:
 *               block_sum of the true row, 0 for a candidate already inside
 *               the always-kept local blocks
 *   mass_fixed  the true row's mass inside the always-kept sink and local
 *               blocks, so mass_fixed + sum(ysum) = 1 up to float rounding.
 * Budget B tokens = sink + local + block * k; the k = min((B - sink - local) /
 * block, W) highest-scoring candidates are kept, ties to the lower index.
 * A budget below sink + local keeps sink and local only (k = 0): the official
 * code would fail there (negative torch.topk), reporting the fixed part is
 * more useful than refusing.
 *
 * No allocation except in ap_metrics_acc_add (scratch per call); no state
 * outside the structs. */
#ifndef AP_METRICS_H
#define AP_METRICS_H

#include "common/status.h"

#define AP_METRICS_MAX_BUDGETS 16

/* Blocks selected at budget B for W candidates (>= 0, <= W). */
int ap_metrics_k_blocks(int budget_tokens, int sink_tokens, int local_tokens, int block_size,
                        int n_cand);

/* Order of the W candidates by descending score, ties (and equal NaNs) to the
 * lower index; NaN ranks below every number. order[W] is caller-owned; the
 * first k entries are the kept set at any k. */
void ap_metrics_rank(const float *scores, int W, int *order);

/* The first min(k, W) entries of ap_metrics_rank's order (the kept set at k
 * and its ranking) in order[0..k), without ordering the rest when k is small
 * against W. order[W] is caller-owned; past k it is scratch. */
void ap_metrics_topk(const float *scores, int W, int k, int *order);

typedef struct {
    int k;             /* blocks selected */
    double recovery;   /* mass_fixed + sum of ysum over the selected blocks */
    double oracle;     /* same for the top-k of ysum (best possible at this k) */
    double hit_rate;   /* |selected & oracle| / k; 1 when k = 0 (both empty) */
} ap_sample_metrics;

/* One sample at one k. scratch: caller-owned, at least 3*W ints. */
void ap_metrics_sample(const float *scores, const float *ysum, float mass_fixed, int W, int k,
                       int *scratch, ap_sample_metrics *out);

/* Running mean with a normal 95% confidence half-width (Welford). */
typedef struct {
    long n;
    double mean;
    double m2;
} ap_meanci;

void ap_meanci_init(ap_meanci *a);
void ap_meanci_add(ap_meanci *a, double x);
/* Half-width 1.96 * sd / sqrt(n) (sample sd); 0 when n < 2. */
double ap_meanci_half95(const ap_meanci *a);
/* Combine b into a (parallel Welford). */
void ap_meanci_merge(ap_meanci *a, const ap_meanci *b);

/* Per-budget aggregates of one selector over many samples. */
typedef struct {
    int n_budgets;
    int budgets[AP_METRICS_MAX_BUDGETS]; /* tokens */
    int sink_tokens, local_tokens, block_size;
    ap_meanci recovery[AP_METRICS_MAX_BUDGETS];
    ap_meanci oracle[AP_METRICS_MAX_BUDGETS];
    ap_meanci hit_rate[AP_METRICS_MAX_BUDGETS];
    /* recovery / oracle per sample: the "prediction accuracy" of v3 Table 3 */
    ap_meanci ratio[AP_METRICS_MAX_BUDGETS];
} ap_metrics_acc;

/* Budgets must be > 0; sink/local >= 0, block >= 1, n_budgets in 1..16. */
ap_status ap_metrics_acc_init(ap_metrics_acc *a, const int *budgets, int n_budgets,
                              int sink_tokens, int local_tokens, int block_size, ap_err *err);
/* n samples of width W, rows contiguous: scores [n][W] (row stride
 * score_stride floats, so the newest row of a dataset window [n][H][W] can be
 * passed as x + (H-1)*W with stride H*W), ysum [n][W], mass_fixed [n]. */
ap_status ap_metrics_acc_add(ap_metrics_acc *a, const float *scores, long score_stride,
                             const float *ysum, const float *mass_fixed, int n, int W,
                             ap_err *err);

#endif
