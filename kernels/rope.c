#include "kernels/rope.h"

#include <math.h>
#include <stddef.h>

float ap_rope_angle(int pos, int i, int head_dim, float base) {
    return ap_rope_angle_scaled(pos, i, head_dim, base, 1.0f, NULL);
}

float ap_rope_angle_scaled(int pos, int i, int head_dim, float base, float freq_scale,
                           const float *factors) {
    /* Each step rounds to float exactly where torch's float32 tensors do. */
    float expo = (float)(2 * i) / (float)head_dim;
    float inv_freq = 1.0f / powf(base, expo);
    if (factors) inv_freq = inv_freq / factors[i];
    if (freq_scale != 1.0f) inv_freq = inv_freq * freq_scale;
    return (float)pos * inv_freq;
}

void ap_rope_table(float *cs, int pos0, int n_pos, int head_dim, float base) {
    ap_rope_table_scaled(cs, pos0, n_pos, head_dim, base, 1.0f, NULL);
}

void ap_rope_table_scaled(float *cs, int pos0, int n_pos, int head_dim, float base,
                          float freq_scale, const float *factors) {
    int half = head_dim / 2;
    for (int p = 0; p < n_pos; p++) {
        float *row = cs + (size_t)p * head_dim;
        for (int i = 0; i < half; i++) {
            /* cos/sin evaluated in double then rounded: the correctly rounded
             * float value, which torch's float32 cos/sin match to ~1 ulp. */
            double a = ap_rope_angle_scaled(pos0 + p, i, head_dim, base, freq_scale, factors);
            row[2 * i] = (float)cos(a);
            row[2 * i + 1] = (float)sin(a);
        }
    }
}

/* Correction dimension of `rot` rotations over ctx tokens: the pair index
 * whose wavelength fits ctx / rot, in double like the reference's math.log. */
static double yarn_corr_dim(double rot, int head_dim, double base, int ctx) {
    const double two_pi = 6.283185307179586;
    return (head_dim * log(ctx / (rot * two_pi))) / (2.0 * log(base));
}

float ap_rope_yarn_inv_freq(int i, int head_dim, float base, const ap_rope_yarn *y) {
    double lo = floor(yarn_corr_dim(y->beta_fast, head_dim, base, y->orig_ctx));
    double hi = ceil(yarn_corr_dim(y->beta_slow, head_dim, base, y->orig_ctx));
    if (lo < 0.0) lo = 0.0;
    if (hi > head_dim - 1) hi = head_dim - 1;
    if (lo == hi) hi += 0.001; /* the reference's guard against a zero-width ramp */
    float pos_freq = powf(base, (float)(2 * i) / (float)head_dim);
    float extra = 1.0f / pos_freq;
    float inter = 1.0f / (y->factor * pos_freq);
    float ramp = ((float)i - (float)lo) / (float)(hi - lo);
    ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
    float keep = 1.0f - ramp; /* share of the extrapolated (unscaled) frequency */
    float a = inter * (1.0f - keep), b = extra * keep;
    return a + b;
}

void ap_rope_table_yarn(float *cs, int pos0, int n_pos, int head_dim, float base,
                        const ap_rope_yarn *y) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float inv_freq = ap_rope_yarn_inv_freq(i, head_dim, base, y);
        for (int p = 0; p < n_pos; p++) {
            float *row = cs + (size_t)p * head_dim;
            double a = (float)(pos0 + p) * inv_freq;
            row[2 * i] = (float)cos(a) * y->attn_factor;
            row[2 * i + 1] = (float)sin(a) * y->attn_factor;
        }
    }
}

void ap_rope(float *x, size_t ldx, int rows, int n_heads, int head_dim, const float *cs) {
    ap_rope_styled(x, ldx, rows, n_heads, head_dim, cs, AP_ROPE_NORM);
}

void ap_rope_ref(float *x, size_t ldx, int rows, int n_heads, int head_dim, const float *cs) {
    ap_rope_styled_ref(x, ldx, rows, n_heads, head_dim, cs, AP_ROPE_NORM);
}

void ap_rope_styled(float *x, size_t ldx, int rows, int n_heads, int head_dim, const float *cs,
                    ap_rope_style style) {
    const int half = head_dim / 2;
    /* Pair i is (v[i*step], v[i*step + off]). */
    const int step = style == AP_ROPE_NEOX ? 1 : 2, off = style == AP_ROPE_NEOX ? half : 1;
    for (int r = 0; r < rows; r++) {
        const float *t = cs + (size_t)r * head_dim;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)r * ldx + (size_t)h * head_dim;
            for (int i = 0; i < half; i++) {
                float c = t[2 * i], s = t[2 * i + 1];
                float x0 = v[i * step], x1 = v[i * step + off];
                v[i * step] = x0 * c - x1 * s;
                v[i * step + off] = x1 * c + x0 * s;
            }
        }
    }
}

void ap_rope_styled_ref(float *x, size_t ldx, int rows, int n_heads, int head_dim,
                        const float *cs, ap_rope_style style) {
    const int half = head_dim / 2;
    for (int r = 0; r < rows; r++) {
        const float *t = cs + (size_t)r * head_dim;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)r * ldx + (size_t)h * head_dim;
            for (int i = 0; i < half; i++) {
                int i0 = style == AP_ROPE_NEOX ? i : 2 * i;
                int i1 = style == AP_ROPE_NEOX ? i + half : 2 * i + 1;
                double c = t[2 * i], s = t[2 * i + 1];
                double x0 = v[i0], x1 = v[i1];
                v[i0] = (float)(x0 * c - x1 * s);
                v[i1] = (float)(x1 * c + x0 * s);
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
