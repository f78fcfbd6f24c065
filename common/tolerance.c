#include "common/tolerance.h"

#include <math.h>

double ap_max_abs_err_f32(const float *a, const float *b, long n) {
    double m = 0.0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as the max */
    }
    return m;
}

double ap_rel_err_f32(const float *a, const float *b, long n) {
    double ref = 0.0;
    for (long i = 0; i < n; i++) {
        double v = fabs((double)b[i]);
        if (v > ref) ref = v;
    }
    if (ref < 1e-30) ref = 1e-30;
    return ap_max_abs_err_f32(a, b, n) / ref;
}

double ap_rel_l2_f32(const float *a, const float *b, long n) {
    double num = 0.0, den = 0.0;
    for (long i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    if (den < 1e-60) den = 1e-60;
    return sqrt(num / den);
}
