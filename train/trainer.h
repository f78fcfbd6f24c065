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
 * only on (seed, e), so a resumed CPU run equals an uninterrupted one.
 *
 * Scaling (input_scale, target_scale, powers of two): the CNN is trained on
 * input_scale * x against target_scale * y, and every checkpoint holds the
 * weights folded back to raw units (conv1.weight * input_scale, conv3 /
 * target_scale), so exports and the runtime need no extra step. Powers of
 * two make the fold exact, which keeps --resume bit-exact. */
#ifndef AP_TRAINER_H
#define AP_TRAINER_H

#include <stdint.h>
#include <stdio.h>

#include "common/status.h"
#include "train/dataset.h"
#include "train/metrics.h"

/* MSE: the paper's, against the raw next-step block_max. CE: softmax of the
 * scores against the true mass distribution over the candidates. RANK:
 * mass-weighted pairwise logistic loss between the top-k blocks (by true
 * mass, k of each validation budget) and the rest (trainer.c). */
/* MSE_MASS: squared error against the next step's attention mass per block
 * (block_sum, 0 inside the local window): its minimiser is the conditional
 * mean of the mass, whose top-k maximises expected recovery at every budget
 * at once (docs/predictor.md). */
typedef enum { AP_LOSS_MSE = 0, AP_LOSS_CE = 1, AP_LOSS_RANK = 2, AP_LOSS_MSE_MASS = 3 } ap_loss_kind;
typedef enum { AP_DEV_CPU = 0, AP_DEV_CUDA = 1, AP_DEV_AUTO = 2 } ap_device_kind;

typedef struct {
    const char *const *traces;
    int n_traces;
    /* Validation traces held out by source (n_val_traces > 0): every sequence
     * of them validates, every sequence of `traces` trains, val_fraction is
     * unused; their sources must not overlap the training traces'. */
    const char *const *val_traces;
    int n_val_traces;
    /* Test traces never used here: only checked to share no source with the
     * training traces (ap_dataset_check_disjoint_sources). */
    const char *const *holdout;
    int n_holdout;
    const char *run_dir;
    int epochs;              /* 30, as the paper */
    int batch_size;          /* 256 */
    float lr;                /* 1e-3 */
    float weight_decay;      /* 0 */
    int warmup_steps;        /* 100 */
    ap_loss_kind loss;       /* MSE (the paper's), CE or RANK (see ap_loss_kind) */
    ap_device_kind device;
    int per_layer;           /* one model per layer */
    int query_fusion;        /* the query-fusion variant (train/fusion.h): scores
                                z(cnn) + w z(query bound), w learned; needs the
                                traces' query vectors; rank or ce loss */
    int layer_groups;        /* >1: one model per group of consecutive layers */
    int history;             /* 64 */
    int block;               /* 16 */
    int sink_tokens;         /* 64 */
    int local_tokens;        /* 64 */
    int c1, c2;              /* 16, 32 */
    double val_fraction;     /* 0.1 */
    uint64_t seed;
    long max_train_samples;  /* per epoch, a fresh random subset spread over every
                                chunk (ap_dataset_iter_set_subset); 0 = all */
    long max_val_samples;    /* a fixed random subset, the same every epoch; 0 = all */
    ap_rows_kind rows;       /* training window rows: dense (default) or sparse */
    int val_rows;            /* validation window rows (ap_rows_kind); -1 = as rows */
    int sparse_budget;       /* tokens of the selection that builds sparse rows (1024) */
    int n_sparse_budgets;    /* > 0: each (sequence, layer) draws one of these instead */
    int sparse_budgets[8];
    int calib;               /* dense row every calib decode steps in sparse rows (5) */
    float input_scale;       /* x is multiplied by this while training (1; power of 2) */
    float target_scale;      /* MSE targets multiplied by this (1; power of 2); with
                                the CE loss the softmax sees target_scale * scores */
    int pool_chunks;         /* (sequence, layer) chunks mixed per shuffle pool (32) */
    int crop;                /* > 0: train on random crops of this many columns of
                                wider windows (cost ~ W; crop edges get no gradient);
                                validation always sees whole windows. 0 = off */
    int patience;            /* early stop after this many epochs without gain; 0 = off */
    int stop_after;          /* end this invocation after N epochs (time-sliced jobs:
                                continue with --resume); the schedule still spans
                                `epochs`. 0 = off */
    int n_budgets;
    int budgets[AP_METRICS_MAX_BUDGETS]; /* tokens; validation metrics */
    int threads;
    int resume;
    int init_last_step;      /* start as the last-step predictor (trainer.c:
                                init_last_step); 0 = PyTorch's default init */
    float init_mean_weight;  /* with init_last_step: start as newest row + this
                                times the history mean (0 = plain last-step) */
    int eval_only;           /* validate RUN_DIR/best.safetensors once, write nothing */
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
    /* per budget at the best epoch (validation) */
    int n_budgets;
    double budget_recovery[AP_METRICS_MAX_BUDGETS];
    double budget_last_step[AP_METRICS_MAX_BUDGETS];
    double budget_oracle[AP_METRICS_MAX_BUDGETS];
} ap_train_result;

ap_status ap_train_run(const ap_train_opts *o, ap_train_result *res, ap_err *err);

/* The training objective o->loss on one batch of n samples of W candidates
 * (pred = the model's scores, y = targets, ysum = true mass, as in ap_batch):
 * returns the loss and writes dL/dpred into dy [n][W]. MSE compares with
 * o->target_scale * y. scratch: at least W ints. */
double ap_train_batch_loss(const ap_train_opts *o, const float *pred, const float *y,
                           const float *ysum, int n, int W, int *scratch, float *dy);

#endif
