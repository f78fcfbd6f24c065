/* The training loop on synthetic traces: it learns (beats the last-step
 * predictor on structured data), a resumed run equals an uninterrupted one
 * bit for bit, per-layer models, and the refusals (existing run, missing
 * checkpoint, corrupt checkpoint, too little data). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/tolerance.h"
#include "common/util.h"
#include "helpers/png_probe.h"
#include "helpers/synth_model.h"
#include "helpers/synth_trace.h"
#include "train/checkpoint.h"
#include "train/dataset.h"
#include "train/metrics.h"
#include "train/predictor.h"
#include "train/trainer.h"

static char g_trace[512], g_run[512], g_run2[512];

static void rm_run(const char *dir) {
    const char *names[] = {"config.json", "last.safetensors", "best.safetensors", "log.json",
                           "curves.png", "recovery.png"};
    char p[700];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

static void setup(void) {
    ap_synth_tmp_path(g_trace, sizeof g_trace, "train", ".h5");
    ap_synth_tmp_path(g_run, sizeof g_run, "train", ".run");
    ap_synth_tmp_path(g_run2, sizeof g_run2, "train", ".run2");
    ap_synth_trace_opts so;
    ap_synth_trace_opts_default(&so);
    ap_err err;
    cr_assert_eq(ap_synth_trace_write(g_trace, &so, &err), AP_OK, "%s", err.msg);
}

static void teardown(void) {
    unlink(g_trace);
    rm_run(g_run);
    rm_run(g_run2);
}

static const char *g_traces[1];

static ap_train_opts small_opts(const char *run) {
    ap_train_opts o;
    ap_train_opts_default(&o);
    g_traces[0] = g_trace;
    o.traces = g_traces;
    o.n_traces = 1;
    o.run_dir = run;
    o.epochs = 3;
    o.batch_size = 64;
    o.lr = 3e-3f;
    o.warmup_steps = 5;
    o.history = 16;
    o.val_fraction = 0.34;
    o.budgets[0] = 192;
    o.budgets[1] = 256;
    o.n_budgets = 2;
    o.threads = 2;
    o.device = AP_DEV_CPU;
    o.seed = 3;
    return o;
}

TestSuite(train, .init = setup, .fini = teardown, .timeout = 300);

Test(train, learns_and_writes_the_run) {
    ap_train_opts o = small_opts(g_run);
    ap_err err;
    ap_train_result r;
    cr_assert_eq(ap_train_run(&o, &r, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(r.epochs_done, 3);
    cr_assert_eq(r.n_params, 4833);
    cr_assert(r.best_recovery > 0.0 && r.best_recovery <= 1.0 + 1e-6);
    cr_assert_leq(r.best_recovery, r.oracle_recovery + 1e-6, "nothing beats the oracle");
    const char *files[] = {"config.json", "last.safetensors", "best.safetensors", "log.json",
                           "curves.png", "recovery.png"};
    char p[700];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", g_run, files[i]);
        cr_assert(ap_file_exists(p), "missing %s", p);
    }
    snprintf(p, sizeof p, "%s/log.json", g_run);
    char *log = NULL;
    size_t n = 0;
    cr_assert_eq(ap_read_file(p, &log, &n, &err), AP_OK);
    cr_assert_not_null(strstr(log, "last_step_recovery"));
    free(log);
    /* The curves tick whole epochs only: 1, 2, 3 (no 1.5). */
    const char *plots[] = {"curves.png", "recovery.png"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", g_run, plots[i]);
        ap_png_image im;
        char msg[300];
        cr_assert_eq(ap_png_read(p, &im, msg, sizeof msg), 0, "%s", msg);
        cr_assert_eq(ap_png_xticks(&im, 100, NULL, 0), 3, "%s: not one tick per epoch", p);
        ap_png_free(&im);
    }
}

/* Kill-and-resume: 3 epochs straight vs 1 epoch + resume to 3. */
Test(train, resume_equals_uninterrupted) {
    ap_err err;
    ap_train_opts a = small_opts(g_run);
    cr_assert_eq(ap_train_run(&a, NULL, &err), AP_OK, "%s", err.msg);
    ap_train_opts b = small_opts(g_run2);
    b.stop_after = 1; /* the "kill" after epoch 1 */
    cr_assert_eq(ap_train_run(&b, NULL, &err), AP_OK, "%s", err.msg);
    b.stop_after = 0;
    b.resume = 1;
    cr_assert_eq(ap_train_run(&b, NULL, &err), AP_OK, "%s", err.msg);

    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/last.safetensors", g_run);
    snprintf(pb, sizeof pb, "%s/last.safetensors", g_run2);
    ap_ckpt_info ia, ib;
    float *xa = NULL, *ma = NULL, *va = NULL, *xb = NULL, *mb = NULL, *vb = NULL;
    char *ja = NULL, *jb = NULL;
    size_t na = 0, nb = 0;
    cr_assert_eq(ap_checkpoint_load(pa, &ia, &xa, &ma, &va, &na, &ja, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_checkpoint_load(pb, &ib, &xb, &mb, &vb, &nb, &jb, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(na, nb);
    cr_assert_eq(ia.epoch, 3);
    cr_assert_eq(ib.epoch, 3);
    cr_assert_eq(ia.step, ib.step);
    cr_assert_eq(memcmp(xa, xb, na * sizeof(float)), 0, "resumed parameters differ");
    cr_assert_eq(memcmp(ma, mb, na * sizeof(float)), 0, "resumed Adam moments differ");
    free(xa);
    free(ma);
    free(va);
    free(xb);
    free(mb);
    free(vb);
    free(ja);
    free(jb);
}

/* Resuming from a checkpoint someone else wrote: weights without optimizer
 * state is refused with a message (it used to dereference the missing
 * moments), and a stored log whose epochs lack fields still resumes (the
 * curves plot gaps; they used to crash). Found by tests/fuzz/fuzz_safetensors. */
Test(train, resume_from_foreign_checkpoints) {
    ap_err err;
    ap_train_opts b = small_opts(g_run2);
    b.stop_after = 1;
    cr_assert_eq(ap_train_run(&b, NULL, &err), AP_OK, "%s", err.msg);
    char pb[700];
    snprintf(pb, sizeof pb, "%s/last.safetensors", g_run2);
    ap_ckpt_info info;
    float *x = NULL, *m = NULL, *v = NULL;
    size_t n = 0;
    cr_assert_eq(ap_checkpoint_load(pb, &info, &x, &m, &v, &n, NULL, &err), AP_OK, "%s", err.msg);
    cr_assert(m && v);

    cr_assert_eq(ap_checkpoint_save(pb, &info, x, NULL, NULL, n, "{\"epochs\": []}", &err), AP_OK);
    b.stop_after = 0;
    b.resume = 1;
    cr_assert_neq(ap_train_run(&b, NULL, &err), AP_OK);
    cr_assert(strstr(err.msg, "no optimizer state"), "%s", err.msg);

    cr_assert_eq(ap_checkpoint_save(pb, &info, x, m, v, n, "{\"epochs\": [{\"epoch\": 1}]}", &err),
                 AP_OK);
    cr_assert_eq(ap_train_run(&b, NULL, &err), AP_OK, "%s", err.msg);
    free(x);
    free(m);
    free(v);
}

Test(train, per_layer_and_ce_loss) {
    ap_train_opts o = small_opts(g_run);
    o.per_layer = 1;
    o.loss = AP_LOSS_CE;
    o.epochs = 2;
    ap_err err;
    ap_train_result r;
    cr_assert_eq(ap_train_run(&o, &r, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(r.n_params, 2 * 4833, "two layers, two models");
}

Test(train, per_layer_models_only_for_full_layers) {
    /* A trace whose layer 0 of 3 is sliding-window (as 15 of Gemma 3
     * 270M's 18 layers): --per-layer trains one model per full layer, and
     * --layer-groups never more models than full layers. */
    ap_synth_trace_opts so;
    ap_synth_trace_opts_default(&so);
    const int windows[3] = {32, 0, 0};
    so.n_layer = 3;
    so.layer_window = windows;
    ap_err err;
    cr_assert_eq(ap_synth_trace_write(g_trace, &so, &err), AP_OK, "%s", err.msg);
    ap_train_opts o = small_opts(g_run);
    o.per_layer = 1;
    o.epochs = 1;
    ap_train_result r;
    cr_assert_eq(ap_train_run(&o, &r, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(r.n_params, 2 * 4833, "two full layers, two models (got %zu params)",
                 (size_t)r.n_params);
    ap_train_opts g = small_opts(g_run2);
    g.layer_groups = 3;
    g.epochs = 1;
    cr_assert_eq(ap_train_run(&g, &r, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(r.n_params, 2 * 4833, "3 groups over 2 full layers: 2 models");
}

Test(train, refusals) {
    ap_err err;
    ap_train_opts o = small_opts(g_run);
    o.epochs = 1;
    cr_assert_eq(ap_train_run(&o, NULL, &err), AP_OK, "%s", err.msg);
    /* an existing run is not overwritten without --force */
    cr_assert_eq(ap_train_run(&o, NULL, &err), AP_ERR_EXISTS);
    cr_assert_not_null(strstr(err.msg, g_run), "%s", err.msg);
    /* resume without a checkpoint */
    ap_train_opts r2 = small_opts(g_run2);
    r2.resume = 1;
    cr_assert_eq(ap_train_run(&r2, NULL, &err), AP_ERR_ARG);
    /* corrupt checkpoint on resume: refused, named, the file left as it was */
    char p[700];
    snprintf(p, sizeof p, "%s/last.safetensors", g_run);
    FILE *f = fopen(p, "r+b");
    cr_assert_not_null(f);
    fputs("garbage!", f);
    fclose(f);
    o.resume = 1;
    o.epochs = 2;
    ap_status st = ap_train_run(&o, NULL, &err);
    cr_assert_neq(st, AP_OK);
    cr_assert_not_null(strstr(err.msg, "last.safetensors"), "%s", err.msg);
    /* missing trace file */
    ap_train_opts m = small_opts(g_run2);
    const char *bad[1] = {"/nonexistent/trace.h5"};
    m.traces = bad;
    st = ap_train_run(&m, NULL, &err);
    cr_assert_neq(st, AP_OK);
    cr_assert_not_null(strstr(err.msg, "/nonexistent/trace.h5"), "%s", err.msg);
    /* block size mismatch between trace (16) and model (32) */
    ap_train_opts b = small_opts(g_run2);
    b.block = 32;
    b.force = 1;
    st = ap_train_run(&b, NULL, &err);
    cr_assert_neq(st, AP_OK, "a block-size mismatch must be refused");
}

Test(train, too_short_traces) {
    ap_synth_trace_opts so;
    ap_synth_trace_opts_default(&so);
    so.n_seq = 1; /* one sequence cannot be split into train and validation */
    ap_err err;
    cr_assert_eq(ap_synth_trace_write(g_trace, &so, &err), AP_OK, "%s", err.msg);
    ap_train_opts o = small_opts(g_run);
    ap_status st = ap_train_run(&o, NULL, &err);
    cr_assert_eq(st, AP_ERR_ARG, "%s", err.msg);
    cr_assert_not_null(strstr(err.msg, "too little data"), "%s", err.msg);
}

/* Bit-exact comparison of two runs' last checkpoints (params and moments). */
static void assert_same_last(const char *run_a, const char *run_b) {
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/last.safetensors", run_a);
    snprintf(pb, sizeof pb, "%s/last.safetensors", run_b);
    ap_ckpt_info ia, ib;
    float *xa = NULL, *ma = NULL, *va = NULL, *xb = NULL, *mb = NULL, *vb = NULL;
    size_t na = 0, nb = 0;
    ap_err err;
    cr_assert_eq(ap_checkpoint_load(pa, &ia, &xa, &ma, &va, &na, NULL, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_checkpoint_load(pb, &ib, &xb, &mb, &vb, &nb, NULL, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(na, nb);
    cr_assert_eq(ia.step, ib.step);
    cr_assert_eq(memcmp(xa, xb, na * sizeof(float)), 0, "parameters differ");
    cr_assert_eq(memcmp(ma, mb, na * sizeof(float)), 0, "Adam moments differ");
    cr_assert_eq(memcmp(va, vb, na * sizeof(float)), 0, "Adam moments differ");
    free(xa);
    free(ma);
    free(va);
    free(xb);
    free(mb);
    free(vb);
}

/* Scaled training on sparse rows: the saved weights are in raw units -- the
 * best checkpoint, run on unscaled validation windows through the plain
 * predictor, reproduces the recovery the trainer logged for that epoch
 * exactly (power-of-two scales change no ranking) -- and a resumed run still
 * equals an uninterrupted one. */
Test(train, scaled_sparse_run_saves_raw_units) {
    ap_err err;
    ap_train_opts o = small_opts(g_run);
    o.epochs = 2;
    o.rows = AP_ROWS_SPARSE;
    o.sparse_budget = 192;
    o.calib = 4;
    o.input_scale = 64.0f;
    o.target_scale = 16.0f;
    ap_train_result r;
    cr_assert_eq(ap_train_run(&o, &r, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(r.n_budgets, 2);

    char p[700];
    snprintf(p, sizeof p, "%s/best.safetensors", g_run);
    ap_ckpt_info info;
    float *params = NULL;
    size_t n = 0;
    cr_assert_eq(ap_checkpoint_load(p, &info, &params, NULL, NULL, &n, NULL, &err), AP_OK, "%s",
                 err.msg);
    ap_predictor *pred = NULL;
    cr_assert_eq(ap_predictor_create(&info.cfg, 0, &pred, &err), AP_OK, "%s", err.msg);
    size_t np = 0;
    memcpy(ap_predictor_params(pred, &np), params, n * sizeof(float));
    cr_assert_eq(np, n);
    ap_dataset_config dc;
    ap_dataset_config_default(&dc);
    dc.history = o.history;
    dc.val_fraction = o.val_fraction;
    dc.seed = o.seed;
    dc.batch_size = o.batch_size;
    dc.pool_chunks = o.pool_chunks;
    dc.rows = AP_ROWS_SPARSE;
    dc.sparse_budget = o.sparse_budget;
    dc.calib = o.calib;
    ap_dataset *ds = NULL;
    cr_assert_eq(ap_dataset_open(o.traces, 1, &dc, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_iter *it = NULL;
    cr_assert_eq(ap_dataset_iter_create(ds, AP_SPLIT_VAL, 0, 0, &it, &err), AP_OK);
    ap_batch b;
    cr_assert_eq(ap_batch_alloc(ds, &b, &err), AP_OK);
    ap_metrics_acc acc;
    cr_assert_eq(ap_metrics_acc_init(&acc, o.budgets, o.n_budgets, o.sink_tokens, o.local_tokens,
                                     o.block, &err), AP_OK);
    float *y = malloc((size_t)b.cap_n * b.cap_w * sizeof(float));
    for (;;) {
        cr_assert_eq(ap_dataset_iter_next(it, &b, &err), AP_OK, "%s", err.msg);
        if (b.n == 0) break;
        cr_assert_eq(ap_predictor_forward(pred, 0, b.x, b.n, b.H, b.W, y, &err), AP_OK);
        cr_assert_eq(ap_metrics_acc_add(&acc, y, b.W, b.ysum, b.mass_fixed, b.n, b.W, &err), AP_OK);
    }
    for (int i = 0; i < o.n_budgets; i++)
        cr_assert_float_eq(acc.recovery[i].mean, r.budget_recovery[i], 1e-12,
                           "budget %d: raw-unit checkpoint %.9f, logged %.9f", o.budgets[i],
                           acc.recovery[i].mean, r.budget_recovery[i]);
    free(y);
    free(params);
    ap_batch_release(&b);
    ap_dataset_iter_free(it);
    ap_dataset_free(ds);
    ap_predictor_free(pred);

    /* --eval-only on the same windows: the same numbers, nothing written */
    ap_train_opts ev = o;
    ev.eval_only = 1;
    ap_train_result re;
    cr_assert_eq(ap_train_run(&ev, &re, &err), AP_OK, "%s", err.msg);
    for (int i = 0; i < o.n_budgets; i++) {
        cr_assert_float_eq(re.budget_recovery[i], r.budget_recovery[i], 1e-12);
        cr_assert_float_eq(re.budget_last_step[i], r.budget_last_step[i], 1e-12);
    }
    ev.run_dir = g_run2; /* empty: refused, the checkpoint named */
    cr_assert_neq(ap_train_run(&ev, &re, &err), AP_OK);
    cr_assert_not_null(strstr(err.msg, "best.safetensors"), "%s", err.msg);
    cr_assert(!ap_file_exists(g_run2), "--eval-only created %s", g_run2);

    ap_train_opts s1 = o;
    s1.run_dir = g_run2;
    s1.stop_after = 1;
    cr_assert_eq(ap_train_run(&s1, NULL, &err), AP_OK, "%s", err.msg);
    s1.stop_after = 0;
    s1.resume = 1;
    cr_assert_eq(ap_train_run(&s1, NULL, &err), AP_OK, "%s", err.msg);
    assert_same_last(g_run, g_run2);

    /* scales must be powers of two (exact to fold) */
    ap_train_opts bad = o;
    bad.force = 1;
    bad.input_scale = 3.0f;
    cr_assert_eq(ap_train_run(&bad, NULL, &err), AP_ERR_ARG);
    cr_assert_not_null(strstr(err.msg, "power"), "%s", err.msg);
}

/* --max-train / --max-val draw subsets spread over the data: with a tiny
 * cap every epoch still trains (and validates) and the logged validation
 * count is near the cap, not the size of the first chunk. */
Test(train, capped_epochs_draw_subsets) {
    ap_err err;
    ap_train_opts o = small_opts(g_run);
    o.epochs = 2;
    o.max_train_samples = 300;
    o.max_val_samples = 200;
    ap_train_result r;
    cr_assert_eq(ap_train_run(&o, &r, &err), AP_OK, "%s", err.msg);
    char p[700];
    snprintf(p, sizeof p, "%s/log.json", g_run);
    char *log = NULL;
    size_t n = 0;
    cr_assert_eq(ap_read_file(p, &log, &n, &err), AP_OK);
    const char *v = strstr(log, "\"val_samples\"");
    cr_assert_not_null(v);
    long nv = strtol(strchr(v, ':') + 1, NULL, 10);
    cr_assert(nv > 100 && nv < 300, "val windows %ld for a cap of 200", nv);
    free(log);
}

/* Every progress record "train epoch E/N: DONE/TOTAL win (P%)" in a log;
 * checks each against its total and returns how many there were. */
static int check_progress_records(const char *log, double *last_done, double *last_total) {
    int n = 0;
    for (const char *p = strstr(log, "train epoch "); p; p = strstr(p + 1, "train epoch ")) {
        int e = 0, ne = 0;
        double done = 0, total = 0, pct = 0;
        if (sscanf(p, "train epoch %d/%d: %lf/%lf win (%lf%%)", &e, &ne, &done, &total, &pct) != 5)
            continue;
        cr_assert_leq(done, total, "progress past its total: %.80s", p);
        cr_assert_leq(pct, 100.0, "progress past 100%%: %.80s", p);
        *last_done = done;
        *last_total = total;
        n++;
    }
    return n;
}

/* --max-train draws each epoch's subset with probability cap / n per
 * window, so it holds a few more or fewer windows than the cap: the
 * progress total is the subset's exact size, and the line ends at 100%. */
Test(train, capped_epoch_progress_ends_at_its_total) {
    ap_err err;
    ap_train_opts o = small_opts(g_run);
    o.epochs = 2;
    o.max_train_samples = 300;
    o.max_val_samples = 200;
    char *log = NULL;
    size_t log_n = 0;
    o.log = open_memstream(&log, &log_n);
    cr_assert_not_null(o.log);
    o.progress = 1;
    cr_assert_eq(ap_train_run(&o, NULL, &err), AP_OK, "%s", err.msg);
    fclose(o.log);
    double done = -1, total = -1;
    cr_assert_geq(check_progress_records(log, &done, &total), 2, "%s", log);
    cr_assert_eq(done, total, "the last record is not the whole epoch: %s", log);
    cr_assert(total > 200 && total < 400, "epoch of %.0f windows for a cap of 300", total);
    free(log);
}

/* Column crops: the run trains (validation on whole windows stays within
 * the oracle) and a resumed run draws the same crops. */
Test(train, crops_resume_exactly) {
    ap_err err;
    ap_train_opts o = small_opts(g_run);
    o.epochs = 2;
    o.crop = 8;
    ap_train_result r;
    cr_assert_eq(ap_train_run(&o, &r, &err), AP_OK, "%s", err.msg);
    cr_assert(r.best_recovery > 0.0 && r.best_recovery <= r.oracle_recovery + 1e-6);
    ap_train_opts s1 = o;
    s1.run_dir = g_run2;
    s1.stop_after = 1;
    cr_assert_eq(ap_train_run(&s1, NULL, &err), AP_OK, "%s", err.msg);
    s1.stop_after = 0;
    s1.resume = 1;
    cr_assert_eq(ap_train_run(&s1, NULL, &err), AP_OK, "%s", err.msg);
    assert_same_last(g_run, g_run2);
    o.crop = 4; /* too narrow to leave unpadded columns */
    o.force = 1;
    cr_assert_eq(ap_train_run(&o, NULL, &err), AP_ERR_ARG);
}

/* --init last-step starts exactly at the last-step predictor: with a
 * vanishing learning rate the trained model's validation recovery equals
 * the last-step baseline's at every budget (also under scaling). */
Test(train, init_last_step_is_the_baseline) {
    ap_err err;
    ap_train_opts o = small_opts(g_run);
    o.epochs = 1;
    o.lr = 1e-12f;
    o.init_last_step = 1;
    o.input_scale = 32.0f;
    o.target_scale = 4.0f;
    ap_train_result r;
    cr_assert_eq(ap_train_run(&o, &r, &err), AP_OK, "%s", err.msg);
    for (int i = 0; i < r.n_budgets; i++)
        cr_assert_float_eq(r.budget_recovery[i], r.budget_last_step[i], 1e-6,
                           "budget %d: %.6f vs last-step %.6f", o.budgets[i], r.budget_recovery[i],
                           r.budget_last_step[i]);
    /* and it learns from there with a real learning rate */
    o.lr = 3e-3f;
    o.epochs = 3;
    o.force = 1;
    cr_assert_eq(ap_train_run(&o, &r, &err), AP_OK, "%s", err.msg);
    cr_assert_geq(r.best_recovery, r.last_step_recovery - 1e-3);
}

/* --init last-mean:A is exactly "newest row + A x history mean": at a zero
 * learning rate the saved model scores windows that way (raw units, after
 * the scale fold), on windows where that differs from last-step. */
Test(train, init_last_mean_is_newest_plus_mean) {
    ap_err err;
    ap_train_opts o = small_opts(g_run);
    o.epochs = 1;
    o.lr = 1e-12f;
    o.init_last_step = 1;
    o.init_mean_weight = 0.5f;
    o.input_scale = 32.0f;
    o.target_scale = 4.0f;
    cr_assert_eq(ap_train_run(&o, NULL, &err), AP_OK, "%s", err.msg);
    char path[700];
    snprintf(path, sizeof path, "%s/best.safetensors", g_run);
    ap_ckpt_info info;
    float *params = NULL;
    size_t n = 0, np = 0;
    cr_assert_eq(ap_checkpoint_load(path, &info, &params, NULL, NULL, &n, NULL, &err), AP_OK,
                 "%s", err.msg);
    ap_predictor *p = NULL;
    cr_assert_eq(ap_predictor_create(&info.cfg, 0, &p, &err), AP_OK, "%s", err.msg);
    memcpy(ap_predictor_params(p, &np), params, n * sizeof(float));
    enum { H = 16, W = 9 };
    float x[H * W], y[W];
    uint64_t z = 7;
    for (int i = 0; i < H * W; i++) {
        z = z * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((z >> 40) % 1000) * 1e-4f;
    }
    cr_assert_eq(ap_predictor_forward(p, 0, x, 1, H, W, y, &err), AP_OK, "%s", err.msg);
    for (int j = 0; j < W; j++) {
        double mean = 0.0;
        for (int r = 0; r < H; r++) mean += x[r * W + j];
        mean /= H;
        double want = x[(H - 1) * W + j] + 0.5 * mean;
        cr_assert(fabs(y[j] - want) <= 1e-5 * (1.0 + fabs(want)), "block %d: %g vs %g", j, y[j], want);
    }
    ap_predictor_free(p);
    free(params);
}

/* Held out by source: --val-traces validates on exactly its sequences, and a
 * training trace sharing a source (package) with --val-traces or --holdout
 * is refused before anything is written, naming the shared source. */
Test(train, validation_held_out_by_source) {
    ap_err err;
    char tv[512], th[512];
    ap_synth_tmp_path(tv, sizeof tv, "trainval", ".h5");
    ap_synth_tmp_path(th, sizeof th, "trainhold", ".h5");
    ap_synth_trace_opts so;
    ap_synth_trace_opts_default(&so);
    so.source = "pkg-train:/usr/share/a.txt#0-10";
    cr_assert_eq(ap_synth_trace_write(g_trace, &so, &err), AP_OK, "%s", err.msg);
    so.n_seq = 2;
    so.seed = 9;
    so.source = "pkg-val:/usr/share/b.txt#0-10 ; generated: a pass key";
    cr_assert_eq(ap_synth_trace_write(tv, &so, &err), AP_OK, "%s", err.msg);
    so.source = "pkg-other:/x ; pkg-train:/usr/share/c.txt#5-9";
    cr_assert_eq(ap_synth_trace_write(th, &so, &err), AP_OK, "%s", err.msg);

    ap_train_opts o = small_opts(g_run);
    o.epochs = 1;
    const char *vals[1] = {tv}, *holds[1] = {th};
    o.val_traces = vals;
    o.n_val_traces = 1;
    ap_train_result r;
    cr_assert_eq(ap_train_run(&o, &r, &err), AP_OK, "%s", err.msg);
    ap_dataset_config dc;
    ap_dataset_config_default(&dc);
    dc.history = 16;
    dc.first_val_file = 1;
    const char *both[2] = {g_trace, tv};
    ap_dataset *ds = NULL;
    cr_assert_eq(ap_dataset_open(both, 2, &dc, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_stats dst;
    ap_dataset_get_stats(ds, &dst);
    cr_assert_eq(dst.n_seq_train, 6);
    cr_assert_eq(dst.n_seq_val, 2);
    for (int i = 0; i < 2; i++) cr_assert_eq(ap_dataset_seq_split(ds, 1, i), AP_SPLIT_VAL);
    for (int i = 0; i < 6; i++) cr_assert_eq(ap_dataset_seq_split(ds, 0, i), AP_SPLIT_TRAIN);
    ap_dataset_free(ds);

    o.holdout = holds;
    o.n_holdout = 1;
    o.run_dir = g_run2;
    cr_assert_neq(ap_train_run(&o, &r, &err), AP_OK);
    cr_assert(strstr(err.msg, "pkg-train") && strstr(err.msg, "--holdout"), "%s", err.msg);
    cr_assert(!strstr(err.msg, "pkg-other") && !strstr(err.msg, "generated"), "%s", err.msg);
    struct stat sb;
    cr_assert(stat(g_run2, &sb) != 0, "a refused run must not create its directory");
    /* the validation set may not share a source with the training set either */
    o.holdout = NULL;
    o.n_holdout = 0;
    vals[0] = th;
    cr_assert_neq(ap_train_run(&o, &r, &err), AP_OK);
    cr_assert(strstr(err.msg, "--val-traces") && strstr(err.msg, "pkg-train"), "%s", err.msg);
    unlink(tv);
    unlink(th);
}

/* Query fusion on traces whose query knows the moving hot block a step
 * before the history does: the fused model validates above the same run
 * without fusion, its weight moved from the init, and a fused checkpoint
 * refuses to resume as an unfused run. MSE cannot rank z-scores: refused. */
Test(train, query_fusion_uses_the_query) {
    ap_err err;
    ap_synth_trace_opts so;
    ap_synth_trace_opts_default(&so);
    so.with_query = 1;
    cr_assert_eq(ap_synth_trace_write(g_trace, &so, &err), AP_OK, "%s", err.msg);
    ap_train_opts o = small_opts(g_run);
    o.loss = AP_LOSS_RANK;
    o.init_last_step = 1;
    o.input_scale = 32.0f;
    ap_train_result plain, fused;
    cr_assert_eq(ap_train_run(&o, &plain, &err), AP_OK, "%s", err.msg);
    o.query_fusion = 1;
    o.run_dir = g_run2;
    cr_assert_eq(ap_train_run(&o, &fused, &err), AP_OK, "%s", err.msg);
    cr_assert_gt(fused.best_recovery, plain.best_recovery + 0.01, "fused %.4f vs plain %.4f",
                 fused.best_recovery, plain.best_recovery);
    char path[700];
    snprintf(path, sizeof path, "%s/best.safetensors", g_run2);
    ap_ckpt_info info;
    float *params = NULL;
    size_t n = 0;
    cr_assert_eq(ap_checkpoint_load(path, &info, &params, NULL, NULL, &n, NULL, &err), AP_OK,
                 "%s", err.msg);
    cr_assert_eq(info.cfg.query_fusion, 1);
    cr_assert_eq(n, 4834);
    ap_pred_layout L;
    ap_pred_layout_of(&info.cfg, &L);
    cr_assert_neq(params[L.q], 1.0f, "the query weight learns");
    free(params);
    o.query_fusion = 0;
    o.resume = 1;
    o.epochs = 4;
    cr_assert_neq(ap_train_run(&o, NULL, &err), AP_OK);
    cr_assert(strstr(err.msg, "parameters"), "%s", err.msg);
    o.resume = 0;
    o.force = 1;
    o.query_fusion = 1;
    o.loss = AP_LOSS_MSE;
    cr_assert_neq(ap_train_run(&o, NULL, &err), AP_OK);
    cr_assert(strstr(err.msg, "--query-fusion"), "%s", err.msg);
}

/* Every objective's gradient against central differences of its own loss.
 * Scores are multiples of 2^-10 and the step 2^-8, so every perturbed score
 * is exact in float and the difference quotient only carries the O(h^2)
 * truncation error (and the rank loss's kinks are avoided: no two scores
 * are within 2h of each other). */
Test(train, loss_gradients_match_differences) {
    enum { N = 3, W = 12 };
    float pred[N * W], y[N * W], ysum[N * W], dy[N * W], tmp[N * W], junk[N * W];
    int scratch[W];
    for (int s = 0; s < N; s++)
        for (int j = 0; j < W; j++) {
            int i = s * W + j;
            /* a permutation of 0..W-1 per sample, spaced 24/1024 apart */
            int r = (j * 5 + s * 3) % W;
            pred[i] = (float)(r * 24 - 128) / 1024.0f;
            y[i] = (float)((j * 7 + s * 11) % 13 + 1) / 400.0f;
            ysum[i] = j == W - 1 ? 0.0f : y[i] * (float)(1 + (j + s) % 3);
        }
    ysum[5] = ysum[6]; /* a tie in mass: weight 0 for that pair */
    ap_loss_kind kinds[4] = {AP_LOSS_MSE, AP_LOSS_CE, AP_LOSS_RANK, AP_LOSS_MSE_MASS};
    const double h = 1.0 / 256.0;
    for (int k = 0; k < 4; k++) {
        ap_train_opts o;
        ap_train_opts_default(&o);
        o.loss = kinds[k];
        o.target_scale = 4.0f;
        o.budgets[0] = 128 + 16 * 2; /* k = 2 */
        o.budgets[1] = 128 + 16 * 5; /* k = 5 */
        o.n_budgets = 2;
        double l0 = ap_train_batch_loss(&o, pred, y, ysum, N, W, scratch, dy);
        cr_assert(isfinite(l0) && l0 > 0.0, "loss %d: %g", k, l0);
        double gmax = 0.0;
        for (int i = 0; i < N * W; i++) gmax = fmax(gmax, fabs(dy[i]));
        cr_assert_gt(gmax, 0.0);
        for (int i = 0; i < N * W; i++) {
            memcpy(tmp, pred, sizeof pred);
            tmp[i] = (float)(pred[i] + h);
            double lp = ap_train_batch_loss(&o, tmp, y, ysum, N, W, scratch, junk);
            tmp[i] = (float)(pred[i] - h);
            double lm = ap_train_batch_loss(&o, tmp, y, ysum, N, W, scratch, junk);
            double fd = (lp - lm) / (2 * h);
            cr_assert_float_eq(dy[i], fd, AP_TOL_PRED_GRAD_REL * gmax,
                               "loss %d, score %d: analytic %.8g, differences %.8g", k, i, dy[i],
                               fd);
        }
    }
}
