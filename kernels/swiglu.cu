// CUDA SwiGLU: elementwise, grid-stride over rows x n. Each element is read
// and written by one thread, so out may alias gate or up.
#include <cuda_runtime.h>

extern "C" {
#include "kernels/swiglu.h"
}

#define SWIGLU_THREADS 256
#define SWIGLU_MAX_GRID 65535

__global__ static void swiglu_kernel(float *out, size_t ldo, const float *gate, size_t ldg,
                                     const float *up, size_t ldu, int n, size_t total) {
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t r = t / (size_t)n;
        int i = (int)(t % (size_t)n);
        float g = gate[r * ldg + i], u = up[r * ldu + i];
        // exp(-|g|) never overflows; silu(g) = g/(1+e) above 0, g*e/(1+e) below.
        float e = expf(-fabsf(g));
        float num = g < 0.0f ? __fmul_rn(g, e) : g;
        out[r * ldo + i] = __fmul_rn(__fdiv_rn(num, __fadd_rn(1.0f, e)), u);
    }
}

extern "C" ap_status ap_swiglu_cuda(float *d_out, size_t ldo, const float *d_gate, size_t ldg,
                                    const float *d_up, size_t ldu, int rows, int n,
                                    ap_cuda_stream s, ap_err *err) {
    if (rows < 0 || n < 1) return ap_errf(err, AP_ERR_ARG, "swiglu: bad shape %d x %d", rows, n);
    if (rows == 0) return AP_OK;
    if (!d_out || !d_gate || !d_up) return ap_errf(err, AP_ERR_ARG, "swiglu: NULL device pointer");
    if (rows > 1 && (ldo < (size_t)n || ldg < (size_t)n || ldu < (size_t)n))
        return ap_errf(err, AP_ERR_ARG, "swiglu: a row stride is below the row length %d", n);
    size_t total = (size_t)rows * n;
    size_t blocks = (total + SWIGLU_THREADS - 1) / SWIGLU_THREADS;
    if (blocks > SWIGLU_MAX_GRID) blocks = SWIGLU_MAX_GRID;
    swiglu_kernel<<<(unsigned)blocks, SWIGLU_THREADS, 0, s>>>(d_out, ldo, d_gate, ldg, d_up, ldu, n,
                                                              total);
    return AP_CUDA_LAUNCHED("swiglu kernel launch", err);
}
