#include "train/probe.h"

#include <stdlib.h>
#include <string.h>

void ap_probe_config_default(ap_probe_config *c, int H) {
    memset(c, 0, sizeof *c);
    c->H = H;
    c->W = 24;
    c->col = 12;
    c->spike = 0.5f;
    int rows[6] = {0, 1, H / 2, H - 3, H - 2, H - 1};
    for (int i = 0; i < 6; i++)
        if (rows[i] >= 0 && (c->n_rows == 0 || rows[i] > c->rows[c->n_rows - 1]))
            c->rows[c->n_rows++] = rows[i];
}

ap_status ap_probe_spike(const ap_predictor *p, int m, const ap_probe_config *c,
                         ap_probe_result *r, ap_err *err) {
    ap_status st = AP_OK;
    float *x = NULL, *y = NULL;
    memset(r, 0, sizeof *r);
    if (c->H < 1 || c->W < 1 || c->col < 0 || c->col >= c->W || c->n_rows < 1 ||
        c->n_rows > AP_PROBE_MAX_ROWS)
        return ap_errf(err, AP_ERR_ARG,
                       "probe: H %d, W %d, column %d, %d rows (H, W >= 1, column < W, 1..%d rows)",
                       c->H, c->W, c->col, c->n_rows, AP_PROBE_MAX_ROWS);
    for (int i = 0; i < c->n_rows; i++)
        if (c->rows[i] < 0 || c->rows[i] >= c->H)
            return ap_errf(err, AP_ERR_ARG, "probe: row %d outside the history [0, %d)",
                           c->rows[i], c->H);
    /* one batch: sample 0 = all zeros, sample 1 + i = spike in rows[i], plus
     * the newest and the middle row (the ratio) */
    const int N = c->n_rows + 3;
    const size_t HW = (size_t)c->H * c->W;
    x = calloc((size_t)N * HW, sizeof *x);
    y = malloc((size_t)N * c->W * sizeof *y);
    if (!x || !y) {
        st = ap_errf(err, AP_ERR_NOMEM, "probe: out of memory");
        goto cleanup;
    }
    for (int i = 0; i < c->n_rows; i++)
        x[(size_t)(1 + i) * HW + (size_t)c->rows[i] * c->W + c->col] = c->spike;
    x[(size_t)(N - 2) * HW + (size_t)(c->H - 1) * c->W + c->col] = c->spike;
    x[(size_t)(N - 1) * HW + (size_t)(c->H / 2) * c->W + c->col] = c->spike;
    st = ap_predictor_forward(p, m, x, N, c->H, c->W, y, err);
    if (st) goto cleanup;
    r->background = y[c->col];
    for (int i = 0; i < c->n_rows; i++) r->out[i] = y[(size_t)(1 + i) * c->W + c->col];
    r->newest_out = y[(size_t)(N - 2) * c->W + c->col];
    r->interior_out = y[(size_t)(N - 1) * c->W + c->col];
    r->ratio = (r->newest_out - r->background) / (r->interior_out - r->background);
    r->raw_ratio = r->newest_out / r->interior_out;
cleanup:
    free(x);
    free(y);
    return st;
}
