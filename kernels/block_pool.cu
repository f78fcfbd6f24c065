// CUDA block pooling: one thread block per attention row, one thread per
// output block; sums in double to match the CPU path's accumulation.
#include <cuda_runtime.h>

extern "C" {
#include "kernels/block_pool.h"
}

__global__ static void block_pool_kernel(const float *p, const int *len, int stride, int block,
                                         int n_blocks, float *out_max, float *out_sum) {
    int row = blockIdx.x;
    const float *r = p + (size_t)row * stride;
    int L = len[row];
    for (int j = threadIdx.x; j < n_blocks; j += blockDim.x) {
        float m = 0.0f;
        double s = 0.0;
        int a = j * block, b = min(a + block, L);
        for (int k = a; k < b; k++) {
            m = fmaxf(m, r[k]);
            s += r[k];
        }
        out_max[(size_t)row * n_blocks + j] = m;
        out_sum[(size_t)row * n_blocks + j] = (float)s;
    }
}

extern "C" ap_status ap_block_pool_cuda(const float *d_p, const int *d_len, int n_rows,
                                        int stride, int block, int n_blocks, float *d_max,
                                        float *d_sum, ap_err *err) {
    if (n_rows <= 0 || n_blocks <= 0) return AP_OK;
    block_pool_kernel<<<n_rows, 128>>>(d_p, d_len, stride, block, n_blocks, d_max, d_sum);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e != cudaSuccess)
        return ap_errf(err, AP_ERR_INTERNAL, "CUDA block pooling failed: %s",
                       cudaGetErrorString(e));
    return AP_OK;
}

extern "C" int ap_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no driver" error
        return 0;
    }
    return n;
}
