// CUDA RMSNorm: one thread block per row. The sum of squares is reduced in
// double through a fixed tree, so a row's result never depends on timing;
// the float32 steps after it are those of the CPU version, with explicit
// round-to-nearest intrinsics so the compiler cannot fuse them.
#include <cuda_runtime.h>

extern "C" {
#include "kernels/rmsnorm.h"
}

#define RMS_THREADS 256

__global__ static void rmsnorm_kernel(float *y, size_t ldy, const float *x, size_t ldx,
                                      const float *g, int n, float eps) {
    __shared__ double part[RMS_THREADS];
    const float *xr = x + (size_t)blockIdx.x * ldx;
    float *yr = y + (size_t)blockIdx.x * ldy;
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += RMS_THREADS) {
        double v = xr[i];
        ss += v * v;
    }
    part[threadIdx.x] = ss;
    __syncthreads();
    for (int w = RMS_THREADS / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    // Every read of x happened before the barriers above, so y may alias x.
    float mean = (float)(part[0] / n);
    float s = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean, eps)));
    for (int i = threadIdx.x; i < n; i += RMS_THREADS) yr[i] = __fmul_rn(g[i], __fmul_rn(xr[i], s));
}

extern "C" ap_status ap_rmsnorm_cuda(float *d_y, size_t ldy, const float *d_x, size_t ldx,
                                     const float *d_g, int rows, int n, float eps, ap_cuda_stream s,
                                     ap_err *err) {
    if (rows < 0 || n < 1) return ap_errf(err, AP_ERR_ARG, "rmsnorm: bad shape %d x %d", rows, n);
    if (rows == 0) return AP_OK;
    if (!d_y || !d_x || !d_g) return ap_errf(err, AP_ERR_ARG, "rmsnorm: NULL device pointer");
    if (rows > 1 && (ldx < (size_t)n || ldy < (size_t)n))
        return ap_errf(err, AP_ERR_ARG, "rmsnorm: row strides %zu/%zu below the row length %d", ldx,
                       ldy, n);
    rmsnorm_kernel<<<rows, RMS_THREADS, 0, s>>>(d_y, ldy, d_x, ldx, d_g, n, eps);
    return AP_CUDA_LAUNCHED("rmsnorm kernel launch", err);
}
