#include "kernels/matmul.h"

#include <cblas.h>

void ap_matmul(float *y, size_t ldy, const float *x, size_t ldx, const float *w, size_t ldw, int T,
               int n_in, int n_out, int accumulate) {
    if (T <= 0 || n_out <= 0) return;
    float beta = accumulate ? 1.0f : 0.0f;
    if (T == 1) {
        /* A one-row sgemm goes through the packing path for nothing; gemv
         * streams W once, which is all decode can do. */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n_out, n_in, 1.0f, w, (int)ldw, x, 1, beta, y, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n_out, n_in, 1.0f, x, (int)ldx, w,
                (int)ldw, beta, y, (int)ldy);
}

void ap_matmul_ref(float *y, size_t ldy, const float *x, size_t ldx, const float *w, size_t ldw,
                   int T, int n_in, int n_out, int accumulate) {
    for (int t = 0; t < T; t++) {
        for (int o = 0; o < n_out; o++) {
            double acc = accumulate ? (double)y[(size_t)t * ldy + o] : 0.0;
            for (int i = 0; i < n_in; i++)
                acc += (double)x[(size_t)t * ldx + i] * (double)w[(size_t)o * ldw + i];
            y[(size_t)t * ldy + o] = (float)acc;
        }
    }
}
