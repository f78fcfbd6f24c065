/* Stand-ins for builds without cuDNN, so callers link and fail cleanly. */
#include "train/predictor_cuda.h"

#ifndef AP_HAVE_CUDNN

int ap_pred_cuda_available(void) { return 0; }

ap_status ap_pred_cuda_create(const ap_pred_config *c, ap_pred_cuda **out, ap_err *err) {
    *out = NULL;
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build has no cuDNN");
}

void ap_pred_cuda_free(ap_pred_cuda *g) { (void)g; }

ap_status ap_pred_cuda_upload_params(ap_pred_cuda *g, const float *params, size_t n,
                                     ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build has no cuDNN");
}

ap_status ap_pred_cuda_forward(ap_pred_cuda *g, int m, const float *x, int N, int H, int W,
                               float *y, ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build has no cuDNN");
}

ap_status ap_pred_cuda_backward(ap_pred_cuda *g, const float *dy, float *grad, ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build has no cuDNN");
}

#else
/* ISO C forbids an empty translation unit. */
typedef int ap_predictor_cuda_stub_unused;
#endif
