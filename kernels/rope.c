#include "kernels/rope.h"

#include <math.h>

float ap_rope_angle(int pos, int i, int head_dim, float base) {
    /* Each step rounds to float exactly where torch's float32 tensors do. */
    float expo = (float)(2 * i) / (float)head_dim;
    float inv_freq = 1.0f / powf(base, expo);
    return (float)pos * inv_freq;
}

void ap_rope_table(float *cs, int pos0, int n_pos, int head_dim, float base) {
    int half = head_dim / 2;
    for (int p = 0; p < n_pos; p++) {
        float *row = cs + (size_t)p * head_dim;
        for (int i = 0; i < half; i++) {
            /* cos/sin evaluated in double then rounded: the correctly rounded
             * float value, which torch's float32 cos/sin match to ~1 ulp. */
            double a = ap_rope_angle(pos0 + p, i, head_dim, base);
            row[2 * i] = (float)cos(a);
            row[2 * i + 1] = (float)sin(a);
        }
    }
}

void ap_rope(float *x, size_t ldx, int rows, int n_heads, int head_dim, const float *cs) {
    int half = head_dim / 2;
    for (int r = 0; r < rows; r++) {
        const float *t = cs + (size_t)r * head_dim;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)r * ldx + (size_t)h * head_dim;
            for (int i = 0; i < half; i++) {
                float c = t[2 * i], s = t[2 * i + 1];
                float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * c - x1 * s;
                v[2 * i + 1] = x1 * c + x0 * s;
            }
        }
    }
}

void ap_rope_ref(float *x, size_t ldx, int rows, int n_heads, int head_dim, const float *cs) {
    int half = head_dim / 2;
    for (int r = 0; r < rows; r++) {
        const float *t = cs + (size_t)r * head_dim;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)r * ldx + (size_t)h * head_dim;
            for (int i = 0; i < half; i++) {
                double c = t[2 * i], s = t[2 * i + 1];
                double x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = (float)(x0 * c - x1 * s);
                v[2 * i + 1] = (float)(x1 * c + x0 * s);
            }
        }
    }
}

#ifndef AP_HAVE_CUDA
ap_status ap_rope_cuda(float *d_x, size_t ldx, int rows, int n_heads, int head_dim,
                       const float *d_cs, ap_cuda_stream s, ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}
#endif
