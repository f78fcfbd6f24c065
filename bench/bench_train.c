/* bench-train: predictor training speed, samples/s of one optimizer step
 * (forward, MSE loss, backward, Adam) at the published configuration on
 * realistic shapes, on the CPU with 1 and 2 threads (the 1-thread run is the
 * in-process baseline; the 2-thread ratio is the scaling), and on the cuDNN
 * path when this build and machine have one (skipped visibly otherwise).
 *
 *   bench-train [--H 64] [--W 256] [--batch 64] [--steps 20] [--threads 1,2]
 *               [--device cpu|cuda|all] [--json OUT.json]
 *
 * Inputs are synthetic but shaped like trace windows (mostly tiny values, a
 * few hot blocks per row); the work of the CNN does not depend on the values.
 * scripts/bench_train.sh runs this and the same model in PyTorch and prints
 * the attnpred / PyTorch ratio. */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "train/optim.h"
#include "train/predictor.h"
#include "train/predictor_cuda.h"

typedef struct {
    const char *device;
    int threads;
    double samples_per_s;
    double ms_per_step;
    double final_loss;
    int skipped;
    char why[160];
} bench_row;

static double u01(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}

/* Window-like data: exponential background around 1e-3, 3% hot blocks. */
static void fill_batch(float *x, float *y, int N, int H, int W, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = 0; i < (size_t)N * H * W; i++) {
        double v = -1e-3 * log(1.0 - u01(&s));
        if (u01(&s) < 0.03) v += 0.05 * u01(&s);
        x[i] = (float)v;
    }
    for (int n = 0; n < N; n++)
        for (int j = 0; j < W; j++) y[(size_t)n * W + j] = x[((size_t)n * H + H - 1) * W + j];
}

static double mse_grad(const float *pred, const float *y, long n, float *dy) {
    double loss = 0.0;
    for (long i = 0; i < n; i++) {
        double d = (double)pred[i] - y[i];
        loss += d * d;
        dy[i] = (float)(2.0 * d / n);
    }
    return loss / n;
}

/* warm-up steps, then `steps` timed ones; params restart from the same seed */
static ap_status run_cpu(int threads, int N, int H, int W, int steps, const float *x,
                         const float *y, bench_row *row, ap_err *err) {
    ap_status st = AP_OK;
    ap_predictor *p = NULL;
    ap_adam adam;
    memset(&adam, 0, sizeof adam);
    float *grad = NULL, *yhat = NULL, *dy = NULL;
    void *ws = NULL;
    ap_pred_config c;
    ap_pred_config_default(&c);
    c.history = H;
    st = ap_predictor_create(&c, 1, &p, err);
    if (st) goto cleanup;
    ap_predictor_set_threads(p, threads);
    size_t np = 0;
    float *params = ap_predictor_params(p, &np);
    ap_adam_config ac;
    ap_adam_config_default(&ac);
    st = ap_adam_init(&adam, &ac, np, err);
    if (st) goto cleanup;
    size_t wsb = ap_pred_workspace_bytes(&c, N, H, W);
    grad = malloc(np * sizeof *grad);
    yhat = malloc((size_t)N * W * sizeof *yhat);
    dy = malloc((size_t)N * W * sizeof *dy);
    ws = malloc(wsb);
    if (!grad || !yhat || !dy || !ws) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    double t0 = 0.0, loss = 0.0;
    for (int it = -2; it < steps; it++) {
        if (it == 0) t0 = ap_now_seconds();
        st = ap_predictor_forward_train(p, 0, x, N, H, W, yhat, ws, wsb, err);
        if (st) goto cleanup;
        loss = mse_grad(yhat, y, (long)N * W, dy);
        memset(grad, 0, np * sizeof *grad);
        st = ap_predictor_backward(p, 0, x, N, H, W, dy, ws, wsb, grad, err);
        if (st) goto cleanup;
        ap_adam_step(&adam, params, grad, 1e-3f);
    }
    double dt = ap_now_seconds() - t0;
    row->device = "cpu";
    row->threads = threads;
    row->samples_per_s = (double)N * steps / dt;
    row->ms_per_step = 1e3 * dt / steps;
    row->final_loss = loss;
cleanup:
    ap_adam_release(&adam);
    free(grad);
    free(yhat);
    free(dy);
    free(ws);
    ap_predictor_free(p);
    return st;
}

/* The trainer's GPU step: cuDNN forward/backward, Adam on the host, upload. */
static ap_status run_cuda(int N, int H, int W, int steps, const float *x, const float *y,
                         bench_row *row, ap_err *err) {
    ap_status st = AP_OK;
    ap_predictor *p = NULL;
    ap_pred_cuda *g = NULL;
    ap_adam adam;
    memset(&adam, 0, sizeof adam);
    float *grad = NULL, *yhat = NULL, *dy = NULL;
    row->device = "cuda";
    row->threads = 0;
    if (!ap_pred_cuda_available()) {
        row->skipped = 1;
        snprintf(row->why, sizeof row->why,
                 "no usable CUDA device/cuDNN in this build or machine");
        return AP_OK;
    }
    ap_pred_config c;
    ap_pred_config_default(&c);
    c.history = H;
    st = ap_predictor_create(&c, 1, &p, err);
    if (st) goto cleanup;
    size_t np = 0;
    float *params = ap_predictor_params(p, &np);
    ap_adam_config ac;
    ap_adam_config_default(&ac);
    st = ap_adam_init(&adam, &ac, np, err);
    if (!st) st = ap_pred_cuda_create(&c, &g, err);
    if (!st) st = ap_pred_cuda_upload_params(g, params, np, err);
    if (st) goto cleanup;
    grad = malloc(np * sizeof *grad);
    yhat = malloc((size_t)N * W * sizeof *yhat);
    dy = malloc((size_t)N * W * sizeof *dy);
    if (!grad || !yhat || !dy) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    double t0 = 0.0, loss = 0.0;
    for (int it = -2; it < steps; it++) {
        if (it == 0) t0 = ap_now_seconds();
        st = ap_pred_cuda_forward(g, 0, x, N, H, W, yhat, err);
        if (st) goto cleanup;
        loss = mse_grad(yhat, y, (long)N * W, dy);
        memset(grad, 0, np * sizeof *grad);
        st = ap_pred_cuda_backward(g, dy, grad, err);
        if (st) goto cleanup;
        ap_adam_step(&adam, params, grad, 1e-3f);
        st = ap_pred_cuda_upload_params(g, params, np, err);
        if (st) goto cleanup;
    }
    double dt = ap_now_seconds() - t0;
    row->samples_per_s = (double)N * steps / dt;
    row->ms_per_step = 1e3 * dt / steps;
    row->final_loss = loss;
cleanup:
    ap_adam_release(&adam);
    free(grad);
    free(yhat);
    free(dy);
    ap_pred_cuda_free(g);
    ap_predictor_free(p);
    return st;
}

int main(int argc, char **argv) {
    int H = 64, W = 256, N = 64, steps = 20, n_thr = 2, thr[8] = {1, 2};
    const char *json_path = NULL, *device = "all";
    static const struct option lo[] = {{"H", 1, 0, 'H'},      {"W", 1, 0, 'W'},
                                       {"batch", 1, 0, 'b'},  {"steps", 1, 0, 's'},
                                       {"threads", 1, 0, 't'}, {"device", 1, 0, 'd'},
                                       {"json", 1, 0, 'j'},   {"help", 0, 0, 'h'},
                                       {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'H': H = atoi(optarg); break;
        case 'W': W = atoi(optarg); break;
        case 'b': N = atoi(optarg); break;
        case 's': steps = atoi(optarg); break;
        case 't': {
            n_thr = 0;
            char *save = NULL, *copy = strdup(optarg);
            for (char *t = strtok_r(copy, ",", &save); t && n_thr < 8; t = strtok_r(NULL, ",", &save))
                thr[n_thr++] = atoi(t);
            free(copy);
            break;
        }
        case 'd': device = optarg; break;
        case 'j': json_path = optarg; break;
        case 'h':
            printf("usage: bench-train [--H 64] [--W 256] [--batch 64] [--steps 20] "
                   "[--threads 1,2] [--device cpu|cuda|all] [--json OUT]\n");
            return 0;
        default: fprintf(stderr, "bench-train: bad option (see --help)\n"); return 2;
        }
    }
    if (H < 1 || W < 1 || N < 1 || steps < 1 || n_thr < 1) {
        fprintf(stderr, "bench-train: H, W, batch, steps and threads must be >= 1\n");
        return 2;
    }
    int do_cpu = strcmp(device, "cuda") != 0, do_cuda = strcmp(device, "cpu") != 0;
    /* The predictor splits the batch over its own threads, each calling BLAS:
     * a threaded OpenBLAS underneath would oversubscribe the cores. */
    openblas_set_num_threads(1);
    ap_err err;
    ap_err_clear(&err);
    float *x = malloc((size_t)N * H * W * sizeof *x), *y = malloc((size_t)N * W * sizeof *y);
    bench_row rows[9];
    int n_rows = 0, rc = 1;
    memset(rows, 0, sizeof rows);
    if (!x || !y) {
        fprintf(stderr, "bench-train: out of memory\n");
        goto done;
    }
    fill_batch(x, y, N, H, W, 7);
    for (int i = 0; do_cpu && i < n_thr; i++) {
        if (run_cpu(thr[i] < 1 ? 1 : thr[i], N, H, W, steps, x, y, &rows[n_rows], &err)) {
            fprintf(stderr, "bench-train: %s\n", err.msg);
            goto done;
        }
        n_rows++;
    }
    if (do_cuda) {
        if (run_cuda(N, H, W, steps, x, y, &rows[n_rows], &err)) {
            fprintf(stderr, "bench-train: cuda: %s\n", err.msg);
            goto done;
        }
        n_rows++;
    }
    double base = do_cpu ? rows[0].samples_per_s : 0.0;
    ap_pred_config pcfg;
    ap_pred_config_default(&pcfg);
    const int n_params = (int)ap_pred_param_count(&pcfg);
    printf("bench-train: one step = forward + MSE + backward + Adam; N %d, H %d, W %d, "
           "%d parameters, %d timed steps\n",
           N, H, W, n_params, steps);
    printf("%-6s %8s %12s %10s %14s\n", "device", "threads", "samples/s", "ms/step",
           "vs cpu 1 thr");
    for (int i = 0; i < n_rows; i++) {
        if (rows[i].skipped) {
            printf("%-6s %8s %12s  skipped: %s\n", rows[i].device, "-", "-", rows[i].why);
            continue;
        }
        printf("%-6s %8d %12.1f %10.2f %14.2f\n", rows[i].device, rows[i].threads,
               rows[i].samples_per_s, rows[i].ms_per_step,
               base > 0 ? rows[i].samples_per_s / base : 0.0);
    }
    if (json_path) {
        char tmp[4200];
        ap_tmp_name(tmp, sizeof tmp, json_path);
        FILE *f = fopen(tmp, "w");
        int ok = f != NULL;
        if (ok)
            ok = fprintf(f,
                         "{\"bench\": \"train\", \"N\": %d, \"H\": %d, \"W\": %d, \"steps\": %d, "
                         "\"params\": %d, \"runs\": [",
                         N, H, W, steps, n_params) >= 0;
        for (int i = 0; ok && i < n_rows; i++) {
            if (rows[i].skipped)
                ok = fprintf(f, "%s{\"device\": \"%s\", \"skipped\": \"%s\"}", i ? ", " : "",
                             rows[i].device, rows[i].why) >= 0;
            else
                ok = fprintf(f,
                             "%s{\"device\": \"%s\", \"threads\": %d, \"samples_per_s\": %.3f, "
                             "\"ms_per_step\": %.4f, \"vs_cpu_1_thread\": %.4f}",
                             i ? ", " : "", rows[i].device, rows[i].threads,
                             rows[i].samples_per_s, rows[i].ms_per_step,
                             base > 0 ? rows[i].samples_per_s / base : 0.0) >= 0;
        }
        if (ok) ok = fputs("]}\n", f) >= 0;
        if (f && fclose(f) != 0) ok = 0;
        if (!ok || ap_commit_file(tmp, json_path, &err) != AP_OK) {
            if (f) remove(tmp);
            fprintf(stderr, "bench-train: %s: cannot write\n", json_path);
            goto done;
        }
    }
    rc = 0;
done:
    free(x);
    free(y);
    return rc;
}
