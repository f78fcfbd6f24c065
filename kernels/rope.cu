// CUDA RoPE: one thread per (row, head, pair), grid-stride. The rotation is
// written with round-to-nearest intrinsics: nvcc would otherwise fuse
// x0*c - x1*s into an FMA and round once where the CPU rounds twice.
#include <cuda_runtime.h>

extern "C" {
#include "kernels/rope.h"
}

#define ROPE_THREADS 256
#define ROPE_MAX_GRID 65535

__global__ static void rope_kernel(float *x, size_t ldx, int n_heads, int head_dim, int half,
                                   const float *cs, size_t total) {
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(t % (size_t)half);
        size_t rh = t / (size_t)half;
        int h = (int)(rh % (size_t)n_heads);
        size_t r = rh / (size_t)n_heads;
        const float *tab = cs + r * (size_t)head_dim;
        float *v = x + r * ldx + (size_t)h * head_dim;
        float c = tab[2 * i], sn = tab[2 * i + 1];
        float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, sn));
        v[2 * i + 1] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, sn));
    }
}

extern "C" ap_status ap_rope_cuda(float *d_x, size_t ldx, int rows, int n_heads, int head_dim,
                                  const float *d_cs, ap_cuda_stream s, ap_err *err) {
    if (rows < 0 || n_heads < 1 || head_dim < 1)
        return ap_errf(err, AP_ERR_ARG, "rope: bad shape %d rows, %d heads of %d", rows, n_heads,
                       head_dim);
    int half = head_dim / 2;
    if (rows == 0 || half == 0) return AP_OK;
    if (!d_x || !d_cs) return ap_errf(err, AP_ERR_ARG, "rope: NULL device pointer");
    if (rows > 1 && ldx < (size_t)n_heads * head_dim)
        return ap_errf(err, AP_ERR_ARG, "rope: row stride %zu below %d heads x %d", ldx, n_heads,
                       head_dim);
    size_t total = (size_t)rows * n_heads * half;
    size_t blocks = (total + ROPE_THREADS - 1) / ROPE_THREADS;
    if (blocks > ROPE_MAX_GRID) blocks = ROPE_MAX_GRID;
    rope_kernel<<<(unsigned)blocks, ROPE_THREADS, 0, s>>>(d_x, ldx, n_heads, head_dim, half, d_cs,
                                                          total);
    return AP_CUDA_LAUNCHED("rope kernel launch", err);
}
