// CUDA row softmax: one thread block per row. Max and sum are reduced
// through fixed trees (the sum in double), so a run repeats bit for bit.
#include <cuda_runtime.h>
#include <math.h>

extern "C" {
#include "kernels/softmax.h"
}

#define SOFTMAX_THREADS 256

__global__ static void softmax_rows_kernel(float *x, size_t ldx, int n, const int *len) {
    __shared__ float smax[SOFTMAX_THREADS];
    __shared__ double ssum[SOFTMAX_THREADS];
    const int tid = threadIdx.x;
    float *row = x + (size_t)blockIdx.x * ldx;
    int L = n;
    if (len) {
        L = len[blockIdx.x];
        L = L < 0 ? 0 : (L > n ? n : L);
    }
    float m = -INFINITY;
    for (int i = tid; i < L; i += SOFTMAX_THREADS) {
        float v = row[i];
        // Unlike fmaxf, a NaN wins, so a NaN row comes out NaN.
        m = (v > m || v != v) ? v : m;
    }
    smax[tid] = m;
    __syncthreads();
    for (int w = SOFTMAX_THREADS / 2; w > 0; w >>= 1) {
        if (tid < w) {
            float o = smax[tid + w];
            if (o > smax[tid] || o != o) smax[tid] = o;
        }
        __syncthreads();
    }
    const float mx = smax[0];
    double s = 0.0;
    for (int i = tid; i < L; i += SOFTMAX_THREADS) {
        float e = expf(row[i] - mx);
        row[i] = e;
        s += e;
    }
    ssum[tid] = s;
    __syncthreads();
    for (int w = SOFTMAX_THREADS / 2; w > 0; w >>= 1) {
        if (tid < w) ssum[tid] += ssum[tid + w];
        __syncthreads();
    }
    const float inv = (float)(1.0 / ssum[0]);
    for (int i = tid; i < L; i += SOFTMAX_THREADS) row[i] = __fmul_rn(row[i], inv);
    for (int i = L + tid; i < n; i += SOFTMAX_THREADS) row[i] = 0.0f;
}

extern "C" ap_status ap_softmax_rows_cuda(float *d_x, size_t ldx, int rows, int n, const int *d_len,
                                          ap_cuda_stream s, ap_err *err) {
    if (rows < 0 || n < 1) return ap_errf(err, AP_ERR_ARG, "softmax: bad shape %d x %d", rows, n);
    if (rows == 0) return AP_OK;
    if (!d_x) return ap_errf(err, AP_ERR_ARG, "softmax: NULL device pointer");
    if (rows > 1 && ldx < (size_t)n)
        return ap_errf(err, AP_ERR_ARG, "softmax: row stride %zu below the row length %d", ldx, n);
    softmax_rows_kernel<<<rows, SOFTMAX_THREADS, 0, s>>>(d_x, ldx, n, d_len);
    return AP_CUDA_LAUNCHED("softmax kernel launch", err);
}
