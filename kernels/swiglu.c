#include "kernels/swiglu.h"

#include <math.h>
#include <string.h>

#include "kernels/vexp.h"

/* silu(g) * u with e = exp(-|g|) in (0, 1]: g/(1+e) for g >= 0 and
 * g*e/(1+e) below, which never overflows; libm's expf here cost as much as
 * a tenth of a prefill. */
static inline ap_vf swiglu_v(ap_vf g, ap_vf u) {
    ap_vi neg = g < 0.0f;
    ap_vf e = ap_vexp_nonpos(ap_vsel(neg, g, -g));
    ap_vf num = ap_vsel(neg, g * e, g);
    return num / (1.0f + e) * u;
}

void ap_swiglu(float *out, size_t ldo, const float *gate, size_t ldg, const float *up, size_t ldu,
               int rows, int n) {
    for (int r = 0; r < rows; r++) {
        const float *g = gate + (size_t)r * ldg;
        const float *u = up + (size_t)r * ldu;
        float *o = out + (size_t)r * ldo;
        int i = 0;
        for (; i + AP_VLANES <= n; i += AP_VLANES) {
            ap_vf gv, uv;
            memcpy(&gv, g + i, sizeof gv);
            memcpy(&uv, u + i, sizeof uv);
            gv = swiglu_v(gv, uv);
            memcpy(o + i, &gv, sizeof gv);
        }
        if (i < n) {
            /* The tail through the same lanes, zero-padded. */
            float gb[AP_VLANES] = {0}, ub[AP_VLANES] = {0};
            memcpy(gb, g + i, (size_t)(n - i) * sizeof *gb);
            memcpy(ub, u + i, (size_t)(n - i) * sizeof *ub);
            ap_vf gv, uv;
            memcpy(&gv, gb, sizeof gv);
            memcpy(&uv, ub, sizeof uv);
            gv = swiglu_v(gv, uv);
            memcpy(gb, &gv, sizeof gv);
            memcpy(o + i, gb, (size_t)(n - i) * sizeof *o);
        }
    }
}

void ap_swiglu_ref(float *out, size_t ldo, const float *gate, size_t ldg, const float *up,
                   size_t ldu, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        const float *g = gate + (size_t)r * ldg;
        const float *u = up + (size_t)r * ldu;
        float *o = out + (size_t)r * ldo;
        for (int i = 0; i < n; i++) {
            double x = g[i];
            o[i] = (float)(x / (1.0 + exp(-x)) * (double)u[i]);
        }
    }
}

/* x/2 (1 + tanh(y)) = x (1 - 1/(1 + e^{2y})) = x e/(1 + e) with e = e^{2y}:
 * written with e = exp(-2|y|) in (0, 1] as for SiLU, so it never overflows. */
void ap_geglu_tanh(float *out, size_t ldo, const float *gate, size_t ldg, const float *up,
                   size_t ldu, int rows, int n) {
    const float k0 = 0.7978845608028654f, k1 = 0.044715f;
    for (int r = 0; r < rows; r++) {
        const float *g = gate + (size_t)r * ldg;
        const float *u = up + (size_t)r * ldu;
        float *o = out + (size_t)r * ldo;
        for (int i = 0; i < n; i++) {
            float x = g[i];
            float y = k0 * (x + k1 * x * x * x);
            float e = expf(-2.0f * fabsf(y));
            /* y >= 0: x / (1 + e); y < 0: x e / (1 + e). */
            float num = y >= 0.0f ? x : x * e;
            o[i] = num / (1.0f + e) * u[i];
        }
    }
}

void ap_geglu_tanh_ref(float *out, size_t ldo, const float *gate, size_t ldg, const float *up,
                       size_t ldu, int rows, int n) {
    const double k0 = sqrt(2.0 / 3.14159265358979323846);
    for (int r = 0; r < rows; r++) {
        const float *g = gate + (size_t)r * ldg;
        const float *u = up + (size_t)r * ldu;
        float *o = out + (size_t)r * ldo;
        for (int i = 0; i < n; i++) {
            double x = g[i];
            o[i] = (float)(0.5 * x * (1.0 + tanh(k0 * (x + 0.044715 * x * x * x))) * (double)u[i]);
        }
    }
}

#ifndef AP_HAVE_CUDA
ap_status ap_swiglu_cuda(float *d_out, size_t ldo, const float *d_gate, size_t ldg,
                         const float *d_up, size_t ldu, int rows, int n, ap_cuda_stream s,
                         ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}
#endif
