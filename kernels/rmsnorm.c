#include "kernels/rmsnorm.h"

#include <math.h>

void ap_rmsnorm(float *y, size_t ldy, const float *x, size_t ldx, const float *g, int rows, int n,
                float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *yr = y + (size_t)r * ldy;
        double ss = 0.0;
        for (int i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
        /* transformers rounds the mean and the scale to float32 before
         * multiplying; doing the same keeps us on its side of each rounding. */
        float mean = (float)(ss / n);
        float s = 1.0f / sqrtf(mean + eps);
        for (int i = 0; i < n; i++) yr[i] = g[i] * (xr[i] * s);
    }
}

void ap_rmsnorm_ref(float *y, size_t ldy, const float *x, size_t ldx, const float *g, int rows,
                    int n, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *yr = y + (size_t)r * ldy;
        double ss = 0.0;
        for (int i = 0; i < n; i++) ss += (double)xr[i] * (double)xr[i];
        double s = 1.0 / sqrt(ss / n + (double)eps);
        for (int i = 0; i < n; i++) yr[i] = (float)((double)g[i] * ((double)xr[i] * s));
    }
}

#ifndef AP_HAVE_CUDA
ap_status ap_rmsnorm_cuda(float *d_y, size_t ldy, const float *d_x, size_t ldx, const float *d_g,
                          int rows, int n, float eps, ap_cuda_stream s, ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}
#endif
