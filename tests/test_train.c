/* The training loop on synthetic traces: it learns (beats the last-step
 * predictor on structured data), a resumed run equals an uninterrupted one
 * bit for bit, per-layer models, and the refusals (existing run, missing
 * checkpoint, corrupt checkpoint, too little data). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "helpers/synth_model.h"
#include "helpers/synth_trace.h"
#include "train/checkpoint.h"
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
