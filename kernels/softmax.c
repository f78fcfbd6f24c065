#include "kernels/softmax.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/vexp.h"

float ap_exp_shift_sum(float *x, int n, float shift) {
    ap_vf acc = {0};
    int i = 0;
    for (; i + AP_VLANES <= n; i += AP_VLANES) {
        ap_vf v;
        memcpy(&v, x + i, sizeof v);
        v = ap_vexp_nonpos(v - shift);
        memcpy(x + i, &v, sizeof v);
        acc += v;
    }
    if (i < n) {
        /* The tail through the same lanes; -inf pads come out as 0. */
        float buf[AP_VLANES];
        int r = n - i;
        for (int j = 0; j < AP_VLANES; j++) buf[j] = j < r ? x[i + j] : -INFINITY;
        ap_vf v;
        memcpy(&v, buf, sizeof v);
        v = ap_vexp_nonpos(v - shift);
        memcpy(buf, &v, sizeof v);
        memcpy(x + i, buf, (size_t)r * sizeof *x);
        acc += v;
    }
    float s = 0.0f;
    for (int j = 0; j < AP_VLANES; j++) s += acc[j];
    return s;
}

float ap_row_max(const float *x, int n) {
    ap_vf m = (ap_vf){0} - FLT_MAX;
    int i = 0;
    for (; i + AP_VLANES <= n; i += AP_VLANES) {
        ap_vf v;
        memcpy(&v, x + i, sizeof v);
        m = ap_vsel(v > m, v, m);
    }
    float mx = -FLT_MAX;
    for (int j = 0; j < AP_VLANES; j++) mx = m[j] > mx ? m[j] : mx;
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

void ap_softmax(float *x, int n) {
    float s = ap_exp_shift_sum(x, n, ap_row_max(x, n));
    float inv = 1.0f / s;
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void ap_softmax_ref(float *x, int n) {
    double mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    double s = 0.0;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - mx);
    for (int i = 0; i < n; i++) x[i] = (float)(exp((double)x[i] - mx) / s);
}

#ifndef AP_HAVE_CUDA
ap_status ap_softmax_rows_cuda(float *d_x, size_t ldx, int rows, int n, const int *d_len,
                               ap_cuda_stream s, ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}
#endif
