/* The spike probe (docs/predictor.md, "Newest-row weighting") on hand-built
 * one-channel predictors whose answers follow from the convolution
 * arithmetic, and on a random predictor against the float64 reference
 * forward. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/tolerance.h"
#include "common/util.h"
#include "helpers/synth_model.h"
#include "train/predictor.h"
#include "train/probe.h"
#include "train/runtime.h"

/* c1 = c2 = 1, every weight 0 except the ones set by the caller. */
static ap_predictor *tiny(int H) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    c.c1 = 1;
    c.c2 = 1;
    c.history = H;
    ap_predictor *p = NULL;
    ap_err err;
    cr_assert_eq(ap_predictor_create(&c, 1, &p, &err), AP_OK, "%s", err.msg);
    size_t n = 0;
    float *w = ap_predictor_params(p, &n);
    memset(w, 0, n * sizeof *w);
    return p;
}

Test(probe, default_rows) {
    ap_probe_config c;
    ap_probe_config_default(&c, 64);
    int want[] = {0, 1, 32, 61, 62, 63};
    cr_assert_eq(c.n_rows, 6);
    for (int i = 0; i < 6; i++) cr_assert_eq(c.rows[i], want[i]);
    cr_assert_eq(c.W, 24);
    cr_assert_eq(c.col, 12);
    cr_assert_float_eq(c.spike, 0.5f, 0.0);
}

/* conv1 = conv2 = identity (centre tap 1), conv3 weight 1, biases 0: the
 * output is the time mean of the history, so every row answers spike / H
 * and the newest/interior ratio is 1. */
Test(probe, mean_model_weights_rows_alike) {
    const int H = 16;
    ap_predictor *p = tiny(H);
    ap_pred_layout L;
    ap_pred_layout_of(ap_predictor_config(p), &L);
    size_t n = 0;
    float *w = ap_predictor_params(p, &n);
    w[L.w1 + 4] = 1.0f;
    w[L.w2 + 4] = 1.0f;
    w[L.w3] = 1.0f;
    ap_probe_config c;
    ap_probe_config_default(&c, H);
    ap_probe_result r;
    ap_err err;
    cr_assert_eq(ap_probe_spike(p, 0, &c, &r, &err), AP_OK, "%s", err.msg);
    cr_assert_float_eq(r.background, 0.0, 0.0);
    for (int i = 0; i < c.n_rows; i++)
        cr_assert_float_eq(r.out[i], 0.5 / H, AP_TOL_KERNEL_REL * 0.5 / H, "row %d", c.rows[i]);
    cr_assert_float_eq(r.ratio, 1.0, AP_TOL_KERNEL_REL);
    cr_assert_float_eq(r.raw_ratio, 1.0, AP_TOL_KERNEL_REL);
    ap_predictor_free(p);
}

/* conv2 = centre tap + the tap reading the row before (kh = 0), conv3 bias
 * 0.25: a spike in row r reaches rows r and r + 1 of conv2's output, except
 * in the newest row, whose r + 1 is padding. Interior answer 0.25 + 2 *
 * 0.5 / H, newest 0.25 + 0.5 / H: response ratio 1/2, raw ratio below 1. */
Test(probe, edge_row_loses_its_successor) {
    const int H = 8;
    ap_predictor *p = tiny(H);
    ap_pred_layout L;
    ap_pred_layout_of(ap_predictor_config(p), &L);
    size_t n = 0;
    float *w = ap_predictor_params(p, &n);
    w[L.w1 + 4] = 1.0f;
    w[L.w2 + 4] = 1.0f;
    w[L.w2 + 1] = 1.0f; /* kh 0, kw 1: output row h reads input row h - 1 */
    w[L.w3] = 1.0f;
    w[L.b3] = 0.25f;
    ap_probe_config c;
    ap_probe_config_default(&c, H); /* rows 0, 1, 4, 5, 6, 7 */
    ap_probe_result r;
    ap_err err;
    cr_assert_eq(ap_probe_spike(p, 0, &c, &r, &err), AP_OK, "%s", err.msg);
    double tol = AP_TOL_KERNEL_REL;
    cr_assert_float_eq(r.background, 0.25, tol);
    cr_assert_float_eq(r.interior_out, 0.25 + 1.0 / H, tol);
    cr_assert_float_eq(r.newest_out, 0.25 + 0.5 / H, tol);
    cr_assert_float_eq(r.out[0], 0.25 + 1.0 / H, tol, "oldest row: both taps inside");
    cr_assert_float_eq(r.out[c.n_rows - 1], r.newest_out, 0.0);
    cr_assert_float_eq(r.ratio, 0.5, tol);
    cr_assert_float_eq(r.raw_ratio, (0.25 + 0.5 / H) / (0.25 + 1.0 / H), tol);
    ap_predictor_free(p);
}

/* Random published-size predictor: every probe output equals the float64
 * reference forward of the same spike history. */
Test(probe, matches_reference_forward) {
    ap_pred_config cfg;
    ap_pred_config_default(&cfg);
    ap_predictor *p = NULL;
    ap_err err;
    cr_assert_eq(ap_predictor_create(&cfg, 42, &p, &err), AP_OK, "%s", err.msg);
    size_t n = 0;
    const float *w = ap_predictor_params_const(p, &n);
    double *wd = malloc(n * sizeof *wd);
    for (size_t i = 0; i < n; i++) wd[i] = w[i];
    ap_probe_config c;
    ap_probe_config_default(&c, 64);
    ap_probe_result r;
    cr_assert_eq(ap_probe_spike(p, 0, &c, &r, &err), AP_OK, "%s", err.msg);
    const size_t HW = (size_t)c.H * c.W;
    double *x = calloc(HW, sizeof *x), *y = malloc((size_t)c.W * sizeof *y);
    ap_pred_forward_ref(&cfg, wd, x, 1, c.H, c.W, y);
    double scale = fabs(y[c.col]) + 1e-3;
    cr_assert_float_eq(r.background, y[c.col], AP_TOL_KERNEL_REL * scale);
    for (int i = 0; i < c.n_rows; i++) {
        memset(x, 0, HW * sizeof *x);
        x[(size_t)c.rows[i] * c.W + c.col] = c.spike;
        ap_pred_forward_ref(&cfg, wd, x, 1, c.H, c.W, y);
        cr_assert_float_eq(r.out[i], y[c.col], AP_TOL_KERNEL_REL * scale, "row %d", c.rows[i]);
    }
    cr_assert_float_eq(r.newest_out, r.out[c.n_rows - 1], 0.0);
    cr_assert_float_eq(r.interior_out, r.out[2], 0.0);
    free(x);
    free(y);
    free(wd);
    ap_predictor_free(p);
}

Test(probe, refuses_bad_config) {
    ap_pred_config cfg;
    ap_pred_config_default(&cfg);
    ap_predictor *p = NULL;
    ap_err err;
    cr_assert_eq(ap_predictor_create(&cfg, 1, &p, &err), AP_OK);
    ap_probe_config c;
    ap_probe_result r;
    ap_probe_config_default(&c, 64);
    c.rows[0] = 64;
    cr_assert_eq(ap_probe_spike(p, 0, &c, &r, &err), AP_ERR_ARG);
    cr_assert_not_null(strstr(err.msg, "row 64"), "%s", err.msg);
    ap_probe_config_default(&c, 64);
    c.col = 24;
    cr_assert_eq(ap_probe_spike(p, 0, &c, &r, &err), AP_ERR_ARG);
    ap_probe_config_default(&c, 64);
    cr_assert_eq(ap_probe_spike(p, 1, &c, &r, &err), AP_ERR_ARG, "model 1 of a unified predictor");
    ap_predictor_free(p);
}

/* `attnpred inspect --predictor P --json` on an exported mean model (ratio
 * 1) and on a file that is no predictor (refused, named). */
Test(probe, cli_inspect_predictor) {
    const char *cli = getenv("AP_CLI");
    if (!cli || !*cli || access(cli, X_OK) != 0) cr_skip_test("AP_CLI not set (run through ctest)");
    const int H = 16;
    ap_predictor *p = tiny(H);
    ap_pred_layout L;
    ap_pred_layout_of(ap_predictor_config(p), &L);
    size_t n = 0;
    float *w = ap_predictor_params(p, &n);
    w[L.w1 + 4] = 1.0f;
    w[L.w2 + 4] = 1.0f;
    w[L.w3] = 1.0f;
    char st_path[512], out_path[512], cmd[2048];
    ap_synth_tmp_path(st_path, sizeof st_path, "probe", ".safetensors");
    ap_synth_tmp_path(out_path, sizeof out_path, "probe", ".json");
    ap_err err;
    cr_assert_eq(ap_pred_export(st_path, NULL, ap_predictor_config(p), w, &err), AP_OK, "%s",
                 err.msg);
    snprintf(cmd, sizeof cmd, "'%s' inspect --predictor '%s' --json > '%s'", cli, st_path,
             out_path);
    int rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "%s", cmd);
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(ap_read_file(out_path, &text, &len, &err), AP_OK, "%s", err.msg);
    cJSON *j = cJSON_Parse(text);
    cr_assert_not_null(j, "not JSON: %s", text);
    cr_assert_eq(cJSON_GetObjectItem(j, "history")->valueint, H);
    cJSON *m0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "models"), 0);
    cr_assert_not_null(m0);
    cr_assert_float_eq(cJSON_GetObjectItem(m0, "newest_over_interior")->valuedouble, 1.0,
                       AP_TOL_KERNEL_REL);
    cJSON *outs = cJSON_GetObjectItem(m0, "out");
    cr_assert_eq(cJSON_GetArraySize(outs), 6);
    cr_assert_float_eq(cJSON_GetArrayItem(outs, 0)->valuedouble, 0.5 / H,
                       AP_TOL_KERNEL_REL * 0.5 / H);
    cJSON_Delete(j);
    free(text);
    /* The text form cites the probe's section in a document of the
     * repository, which a user can open (not the notes outside it). */
    snprintf(cmd, sizeof cmd, "'%s' inspect --predictor '%s' > '%s'", cli, st_path, out_path);
    rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "%s", cmd);
    cr_assert_eq(ap_read_file(out_path, &text, &len, &err), AP_OK, "%s", err.msg);
    cr_assert_not_null(strstr(text, "spike probe (docs/predictor.md, \"Newest-row weighting\")"),
                       "%s", text);
    cr_assert_null(strstr(text, "method.md"), "%s", text);
    free(text);
    cr_assert_eq(ap_read_file(AP_SOURCE_DIR "/docs/predictor.md", &text, &len, &err), AP_OK, "%s",
                 err.msg);
    cr_assert_not_null(strstr(text, "### Newest-row weighting"), "the cited section is gone");
    free(text);
    /* not a predictor: exit 1, the file named */
    /* the JSON written above is no predictor */
    char err_path[512];
    ap_synth_tmp_path(err_path, sizeof err_path, "probe", ".err");
    snprintf(cmd, sizeof cmd, "'%s' inspect --predictor '%s' 2> '%s'", cli, out_path, err_path);
    rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "%s", cmd);
    cr_assert_eq(ap_read_file(err_path, &text, &len, &err), AP_OK, "%s", err.msg);
    cr_assert_not_null(strstr(text, out_path), "%s", text);
    free(text);
    unlink(err_path);
    unlink(st_path);
    unlink(out_path);
    ap_predictor_free(p);
}
