#include "kernels/block_pool.h"

void ap_block_pool(const float *p, int len, int block, int n_blocks, float *out_max,
                   float *out_sum) {
    int full = len / block;
    if (full > n_blocks) full = n_blocks;
    for (int j = 0; j < full; j++) {
        const float *q = p + (long)j * block;
        float m = q[0];
        double s = 0.0;
        for (int k = 0; k < block; k++) {
            m = q[k] > m ? q[k] : m;
            s += q[k];
        }
        out_max[j] = m;
        out_sum[j] = (float)s;
    }
    for (int j = full; j < n_blocks; j++) {
        int a = j * block, b = a + block < len ? a + block : len;
        float m = 0.0f;
        double s = 0.0;
        for (int k = a; k < b; k++) {
            m = p[k] > m ? p[k] : m;
            s += p[k];
        }
        out_max[j] = m;
        out_sum[j] = (float)s;
    }
}

void ap_block_pool_ref(const float *p, int len, int block, int n_blocks, float *out_max,
                       float *out_sum) {
    for (int j = 0; j < n_blocks; j++) {
        double m = 0.0, s = 0.0;
        int seen = 0;
        for (int k = j * block; k < (j + 1) * block && k < len; k++) {
            if (!seen || p[k] > m) m = p[k];
            seen = 1;
            s += p[k];
        }
        out_max[j] = (float)m;
        out_sum[j] = (float)s;
    }
}

#ifndef AP_HAVE_CUDA
ap_status ap_block_pool_cuda(const float *d_p, const int *d_len, int n_rows, int stride,
                             int block, int n_blocks, float *d_max, float *d_sum, ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}

int ap_cuda_device_count(void) { return 0; }
#endif
