/* The spike probe (docs/predictor.md, "Newest-row weighting"; from section
 * 2.4 of the project's method notes, shared/reference/method.md beside the
 * repository, which the later method.md references here mean): how strongly
 * a trained predictor weights each history row. The history is all zeros
 * except one value `spike` at column `col` in a single row r; the probe reads the output at `col`. A
 * predictor that mostly copies the last step answers far more to a spike in
 * the newest row (r = H - 1) than in an interior one (the authors' released
 * weights: 75x and 500x).
 *
 * Interior rows (2 .. H-3) all give the same answer: the 3x3 convolutions
 * are zero-padded and the time mean weights every row alike, so only rows
 * within two of either edge can differ; rows[] samples both edges and the
 * middle. Pure computation on the caller's predictor: no allocation beyond
 * scratch, no state. */
#ifndef AP_PROBE_H
#define AP_PROBE_H

#include "common/status.h"
#include "train/predictor.h"

#define AP_PROBE_MAX_ROWS 16

typedef struct {
    int H, W;     /* history rows and candidate columns (64, 24) */
    int col;      /* spike column (12) */
    float spike;  /* spike value (0.5) */
    int n_rows;   /* rows probed, each in [0, H) */
    int rows[AP_PROBE_MAX_ROWS];
} ap_probe_config;

/* method.md 2.4 for history H: W 24, col 12, spike 0.5, rows 0, 1, H/2,
 * H-3, H-2, H-1 (0, 1, 32, 61, 62, 63 for H = 64). */
void ap_probe_config_default(ap_probe_config *c, int H);

typedef struct {
    double background;                 /* output at col for the all-zero history */
    double out[AP_PROBE_MAX_ROWS];     /* output at col with the spike in rows[i] */
    double newest_out, interior_out;   /* out for r = H-1 and r = H/2 */
    /* newest / interior response above the background, and the raw-output
     * ratio method.md 2.4 quotes (its background is ~1e-4, so the two agree
     * there); +-inf or NaN when the interior response is 0 */
    double ratio, raw_ratio;
} ap_probe_result;

/* Runs the probe on model m of p (the history length need not be the one
 * p was trained with). */
ap_status ap_probe_spike(const ap_predictor *p, int m, const ap_probe_config *c,
                         ap_probe_result *r, ap_err *err);

#endif
