/* The training loop of `attnpred train`: streams windows from traces
 * (train/dataset.h), fits the predictor (train/predictor.h) with Adam, and
 * validates every epoch against the last-step predictor on the same windows.
 *
 * Run directory (all files written atomically):
 *   config.json        the options of the run (for humans and --resume checks)
 *   last.safetensors   checkpoint after the latest epoch, with optimizer state
 *   best.safetensors   checkpoint with the best validation recovery so far
 *   log.json           per-epoch curves (loss, recovery, hit rate, baseline)
 *   curves.png         the same as a plot
 * --resume continues from last.safetensors; the data order of epoch e depends
 * only on (seed, e), so a resumed CPU run equals an uninterrupted one. */
#ifndef AP_TRAINER_H
#define AP_TRAINER_H

#include <stdint.h>
#include <stdio.h>

#include "common/status.h"
#include "train/metrics.h"

typedef enum { AP_LOSS_MSE = 0, AP_LOSS_CE = 1 } ap_loss_kind;
typedef enum { AP_DEV_CPU = 0, AP_DEV_CUDA = 1, AP_DEV_AUTO = 2 } ap_device_kind;

typedef struct {
    const char *const *traces;
    int n_traces;
    const char *run_dir;
    int epochs;              /* 30, as the paper */
    int batch_size;          /* 256 */
    float lr;                /* 1e-3 */
    float weight_decay;      /* 0 */
    int warmup_steps;        /* 100 */
    ap_loss_kind loss;       /* MSE (the paper's) or CE (softmax distribution loss) */
    ap_device_kind device;
    int per_layer;           /* one model per layer */
    int layer_groups;        /* >1: one model per group of consecutive layers */
    int history;             /* 64 */
    int block;               /* 16 */
    int sink_tokens;         /* 64 */
    int local_tokens;        /* 64 */
    int c1, c2;              /* 16, 32 */
    double val_fraction;     /* 0.1 */
    uint64_t seed;
    long max_train_samples;  /* per epoch; 0 = all */
    long max_val_samples;    /* 0 = all */
    int patience;            /* early stop after this many epochs without gain; 0 = off */
    int stop_after;          /* end this invocation after N epochs (time-sliced jobs:
                                continue with --resume); the schedule still spans
                                `epochs`. 0 = off */
    int n_budgets;
    int budgets[AP_METRICS_MAX_BUDGETS]; /* tokens; validation metrics */
    int threads;
    int resume;
    int force;               /* reuse a non-empty run dir */
    FILE *log;
    int progress;
} ap_train_opts;

void ap_train_opts_default(ap_train_opts *o);

typedef struct {
    int epochs_done;
    int best_epoch;
    double best_recovery;    /* mean over budgets, validation */
    double last_step_recovery;
    double oracle_recovery;
    double samples_per_s;
    long long n_params;
} ap_train_result;

ap_status ap_train_run(const ap_train_opts *o, ap_train_result *res, ap_err *err);

#endif
