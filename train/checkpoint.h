/* Training checkpoints: one safetensors file holding the flat parameter array
 * of every model ("params" F32 [n]), the Adam moments ("adam.m", "adam.v",
 * optional) and, in the metadata, format "attnpred-checkpoint", version, the
 * predictor config (JSON), epoch, Adam step, the data RNG state, the best
 * metric so far and a free-form JSON string of the trainer's options.
 *
 * Run directory convention: RUN_DIR/best.safetensors (the checkpoint with the
 * best validation metric, what `attnpred export` reads) and
 * RUN_DIR/last.safetensors (the latest, what --resume reads). */
#ifndef AP_CHECKPOINT_H
#define AP_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "train/predictor.h"

#define AP_CKPT_FORMAT "attnpred-checkpoint"
#define AP_CKPT_VERSION 1

typedef struct {
    ap_pred_config cfg;
    int epoch;            /* epochs completed */
    long step;            /* Adam steps taken */
    uint64_t rng_state;   /* the trainer's data-order RNG */
    double best_metric;   /* best validation metric so far */
    char metric_name[64]; /* e.g. "recovery@k" */
} ap_ckpt_info;

#define AP_CKPT_NAME_BEST "best.safetensors"
#define AP_CKPT_NAME_LAST "last.safetensors"

/* Atomic (tmp + fsync + rename): an existing checkpoint survives a failed
 * save. n must equal n_models * ap_pred_param_count(&info->cfg). adam_m and
 * adam_v may both be NULL (not stored). train_json may be NULL. */
ap_status ap_checkpoint_save(const char *path, const ap_ckpt_info *info, const float *params,
                             const float *adam_m, const float *adam_v, size_t n,
                             const char *train_json, ap_err *err);

/* Validated load. On success *params (and *adam_m, *adam_v when stored, else
 * NULL) are malloc'd arrays of *n floats the caller frees; *train_json, when
 * not NULL, receives a malloc'd copy of the trainer options ("" if none). Any
 * of the output pointers other than info and params may be NULL to skip. */
ap_status ap_checkpoint_load(const char *path, ap_ckpt_info *info, float **params,
                             float **adam_m, float **adam_v, size_t *n, char **train_json,
                             ap_err *err);

#endif
