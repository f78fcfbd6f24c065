/* cuDNN path of the predictor (same meaning as the CPU path in predictor.h).
 * Device buffers are managed inside: upload the parameter array (all models,
 * layout of ap_predictor_params), run forward on host batches, then backward,
 * which ADDS model m's gradient into a host array of the same layout.
 *
 * Numerics: CUDNN_FMA_MATH (no TF32), IMPLICIT_PRECOMP_GEMM forward and
 * ALGO_1 backward data/filter, the deterministic choices, so repeated runs
 * give identical gradients; the mean over time is a small kernel. Without
 * cuDNN in the build every call returns AP_ERR_UNSUPPORTED. */
#ifndef AP_PREDICTOR_CUDA_H
#define AP_PREDICTOR_CUDA_H

#include <stddef.h>

#include "common/status.h"
#include "train/predictor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ap_pred_cuda ap_pred_cuda;

/* 1 when this build has cuDNN and a GPU with a working driver and cuDNN
 * handle; 0 otherwise (never an error, never prints). */
int ap_pred_cuda_available(void);

ap_status ap_pred_cuda_create(const ap_pred_config *c, ap_pred_cuda **out, ap_err *err);
void ap_pred_cuda_free(ap_pred_cuda *g); /* NULL is a no-op */
/* n must be n_models * ap_pred_param_count(c). */
ap_status ap_pred_cuda_upload_params(ap_pred_cuda *g, const float *params, size_t n,
                                     ap_err *err);
/* x [N][H][W] (host) -> y [N][W] (host). Keeps the activations of this batch
 * on the device for a following backward. */
ap_status ap_pred_cuda_forward(ap_pred_cuda *g, int m, const float *x, int N, int H, int W,
                               float *y, ap_err *err);
/* Backward of the last forward (same m): dy [N][W] host; adds into grad
 * (host, full layout; only model m's slice is touched). */
ap_status ap_pred_cuda_backward(ap_pred_cuda *g, const float *dy, float *grad, ap_err *err);

#ifdef __cplusplus
}
#endif

#endif
