#include "train/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ap_adam_config_default(ap_adam_config *c) {
    c->lr = 1e-3f;
    c->beta1 = 0.9f;
    c->beta2 = 0.999f;
    c->eps = 1e-8f;
    c->weight_decay = 0.0f;
    c->clip_norm = 0.0f;
}

ap_status ap_adam_init(ap_adam *a, const ap_adam_config *c, size_t n, ap_err *err) {
    memset(a, 0, sizeof *a);
    a->cfg = *c;
    a->n = n;
    a->m = calloc(n ? n : 1, sizeof(float));
    a->v = calloc(n ? n : 1, sizeof(float));
    if (!a->m || !a->v) {
        ap_adam_release(a);
        return ap_errf(err, AP_ERR_NOMEM, "out of memory for optimizer state (%zu params)", n);
    }
    return AP_OK;
}

void ap_adam_release(ap_adam *a) {
    if (!a) return;
    free(a->m);
    free(a->v);
    a->m = a->v = NULL;
}

double ap_adam_step(ap_adam *a, float *params, float *grad, float lr) {
    return ap_adam_step_range(a, params, grad, lr, 0, a->n);
}

double ap_adam_step_range(ap_adam *a, float *params, float *grad, float lr, size_t off, size_t n) {
    if (off > a->n) off = a->n;
    if (n > a->n - off) n = a->n - off;
    size_t end = off + n;
    double norm2 = 0.0;
    for (size_t i = off; i < end; i++) norm2 += (double)grad[i] * grad[i];
    double norm = sqrt(norm2);
    if (a->cfg.clip_norm > 0 && norm > a->cfg.clip_norm) {
        float s = (float)(a->cfg.clip_norm / norm);
        for (size_t i = off; i < end; i++) grad[i] *= s;
    }
    a->step++;
    const double b1 = a->cfg.beta1, b2 = a->cfg.beta2;
    /* Bias corrections in double: at step 1 with beta2 = 0.999 the float
     * version loses digits that a resumed run must reproduce exactly. */
    const double c1 = 1.0 - pow(b1, (double)a->step);
    const double c2 = 1.0 - pow(b2, (double)a->step);
    const float step_size = (float)(lr / c1);
    const float inv_sqrt_c2 = (float)(1.0 / sqrt(c2));
    for (size_t i = off; i < end; i++) {
        float g = grad[i];
        a->m[i] = (float)b1 * a->m[i] + (float)(1.0 - b1) * g;
        a->v[i] = (float)b2 * a->v[i] + (float)(1.0 - b2) * g * g;
        float denom = sqrtf(a->v[i]) * inv_sqrt_c2 + a->cfg.eps;
        if (a->cfg.weight_decay > 0) params[i] -= lr * a->cfg.weight_decay * params[i];
        params[i] -= step_size * a->m[i] / denom;
    }
    return norm;
}

float ap_lr_at(ap_lr_kind kind, float peak, long step, long warmup, long total, float final_frac) {
    if (warmup > 0 && step < warmup) return peak * (float)(step + 1) / (float)warmup;
    if (kind == AP_LR_CONSTANT || total <= warmup) return peak;
    double t = (double)(step - warmup) / (double)(total - warmup);
    if (t > 1.0) t = 1.0;
    double lo = peak * final_frac;
    return (float)(lo + 0.5 * (peak - lo) * (1.0 + cos(3.14159265358979323846 * t)));
}
