#include "train/fusion.h"

#include <math.h>

/* Mean and population standard deviation in float64. */
static void moments(const float *x, int W, double *mean, double *sd) {
    double m = 0.0, v = 0.0;
    for (int j = 0; j < W; j++) m += x[j];
    m = W > 0 ? m / W : 0.0;
    for (int j = 0; j < W; j++) v += ((double)x[j] - m) * ((double)x[j] - m);
    *mean = m;
    *sd = W > 0 ? sqrt(v / W) : 0.0;
}

/* Below this relative spread the values are taken as equal: float rounding
 * noise must not become a ranking. */
static int flat(double mean, double sd) { return !(sd > 1e-12 * (1.0 + fabs(mean))); }

void ap_zscore(const float *x, int W, float *out) {
    double m, s;
    moments(x, W, &m, &s);
    for (int j = 0; j < W; j++) out[j] = flat(m, s) ? 0.0f : (float)(((double)x[j] - m) / s);
}

void ap_fuse_scores(const float *cnn, const float *zq, int W, float w, float *out) {
    double m, s;
    moments(cnn, W, &m, &s);
    for (int j = 0; j < W; j++) {
        double z = flat(m, s) ? 0.0 : ((double)cnn[j] - m) / s;
        out[j] = (float)(z + (double)w * zq[j]);
    }
}

double ap_fuse_scores_backward(const float *cnn, const float *zq, int W, float w,
                               const float *dout, float *dcnn) {
    double m, s, dw = 0.0, gm = 0.0, gz = 0.0;
    moments(cnn, W, &m, &s);
    for (int j = 0; j < W; j++) dw += (double)dout[j] * zq[j];
    if (flat(m, s) || W == 0) {
        for (int j = 0; j < W; j++) dcnn[j] = 0.0f;
        return dw;
    }
    /* z = (x - m) / s: dL/dx = (g - mean(g) - z * mean(g * z)) / s */
    for (int j = 0; j < W; j++) {
        double z = ((double)cnn[j] - m) / s;
        gm += dout[j];
        gz += (double)dout[j] * z;
    }
    gm /= W;
    gz /= W;
    for (int j = 0; j < W; j++) {
        double z = ((double)cnn[j] - m) / s;
        dcnn[j] = (float)(((double)dout[j] - gm - z * gz) / s);
    }
    return dw;
}
