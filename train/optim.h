/* Adam / AdamW over one flat float32 parameter array, and the learning-rate
 * schedule. Plain structs: the trainer checkpoints m, v and step so a resumed
 * run continues bit for bit. */
#ifndef AP_OPTIM_H
#define AP_OPTIM_H

#include <stddef.h>

#include "common/status.h"

typedef struct {
    float lr;           /* peak learning rate */
    float beta1, beta2;
    float eps;
    float weight_decay; /* AdamW's decoupled decay; 0 = plain Adam */
    float clip_norm;    /* global gradient-norm clip; 0 = off */
} ap_adam_config;

typedef struct {
    ap_adam_config cfg;
    size_t n;
    float *m;           /* owned */
    float *v;           /* owned */
    long step;
} ap_adam;

void ap_adam_config_default(ap_adam_config *c); /* lr 1e-3, 0.9, 0.999, 1e-8, wd 0, clip 0 */
ap_status ap_adam_init(ap_adam *a, const ap_adam_config *c, size_t n, ap_err *err);
void ap_adam_release(ap_adam *a); /* frees m, v; safe on a zeroed struct */
/* One step with learning rate lr (from the schedule). Returns the gradient
 * norm before clipping. grad is modified when clipping. */
double ap_adam_step(ap_adam *a, float *params, float *grad, float lr);
/* The same over params[off, off+n) only (one model of a per-layer
 * predictor; the others keep their moments untouched). The step counter,
 * and so the bias correction, is shared: one count of optimizer steps. */
double ap_adam_step_range(ap_adam *a, float *params, float *grad, float lr, size_t off, size_t n);

typedef enum { AP_LR_CONSTANT = 0, AP_LR_COSINE = 1 } ap_lr_kind;

/* Linear warm-up over `warmup` steps to peak, then constant or cosine decay
 * to peak*final_frac at `total` steps. */
float ap_lr_at(ap_lr_kind kind, float peak, long step, long warmup, long total, float final_frac);

#endif
