/* Exact incremental evaluation of the predictor CNN over a sliding history
 * (issue 7; method.md 9.2).
 *
 * The replay (and an embedding runtime) appends one pooled attention row per
 * decode step and asks for the next step's block scores. A full recomputation
 * costs ~4,752 * H * W multiply-adds per head and step; here only the rows
 * and columns a new row or a new block changes are recomputed: the conv
 * features of interior rows are translation-invariant in time, so the time
 * mean keeps a running column sum of interior conv2+ReLU features, the rows
 * within 2 of either edge are recomputed, and a width increase recomputes the
 * last columns of every row. A periodic full resync bounds float drift.
 *
 * Semantics (must equal ap_predictor_forward on the same window within
 * AP_TOL_INCR_REL): the window is the last H pushed rows, oldest first, rows
 * before the first push are zero, a row narrower than the newest one is zero
 * past its width. ap_incr_predict(c0, c1) returns the CNN output for the
 * columns [c0, c1) of that window, i.e. ap_predictor_forward(x[H][c1-c0]).
 *
 * One ap_incr per (layer, head) history; it borrows the predictor, which must
 * outlive it and not change its parameters meanwhile. Not thread-safe; two
 * objects may be used from two threads. */
#ifndef AP_INCREMENTAL_H
#define AP_INCREMENTAL_H

#include "common/status.h"
#include "train/predictor.h"

typedef struct ap_incr ap_incr;

/* History H from the predictor's config; model = the model index to use. */
ap_status ap_incr_create(const ap_predictor *p, int model, ap_incr **out, ap_err *err);
void ap_incr_free(ap_incr *s); /* NULL is a no-op */

/* Forget every row (start of a new sequence). */
void ap_incr_reset(ap_incr *s);

/* Append the newest row (width blocks, row[0..width)), dropping the oldest
 * once H rows are held. width must not decrease between pushes (a sequence
 * only grows); the row is copied. */
ap_status ap_incr_push(ap_incr *s, const float *row, int width, ap_err *err);

/* Scores for candidate columns [c0, c1) (0 <= c0 < c1 <= newest width). c0
 * normally stays the same between calls (the sink cut is fixed) and c1
 * grows; a changed c0 or a smaller c1 costs one full recomputation and stays
 * exact. */
ap_status ap_incr_predict(ap_incr *s, int c0, int c1, float *scores, ap_err *err);

/* Multiply-adds spent by the last ap_incr_predict (for cost reports). */
double ap_incr_last_macs(const ap_incr *s);

/* Recompute everything from the stored rows every `every` predicts (default
 * 256; 0 = never), to bound the drift of the running sums. */
void ap_incr_set_resync(ap_incr *s, int every);

#endif
