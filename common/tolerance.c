#include "common/tolerance.h"

#include <math.h>

double ap_max_abs_err_f32(const float *a, const float *b, long n) {
    double m = 0.0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        /* A NaN anywhere must fail every tolerance check, so it is returned
         * at once rather than kept as a running max (it would be lost at
         * the next comparison). */
        if (isnan(d)) return d;
        if (d > m) m = d;
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
