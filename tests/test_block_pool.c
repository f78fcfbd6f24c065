/* Block pooling: CPU vs its plain reference on odd shapes, and CUDA vs CPU
 * where a GPU is present (skipped visibly otherwise). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common/tolerance.h"
#include "kernels/block_pool.h"

#ifdef AP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

static void random_row(float *p, int len, unsigned seed) {
    double tot = 0.0;
    for (int k = 0; k < len; k++) {
        seed = seed * 1664525u + 1013904223u;
        p[k] = (float)((seed >> 8) & 0xffff) / 65536.0f;
        p[k] = p[k] * p[k] * p[k]; /* peaky, like attention */
        tot += p[k];
    }
    for (int k = 0; k < len; k++) p[k] = (float)(p[k] / tot);
}

Test(block_pool, cpu_matches_ref_on_odd_shapes) {
    const int lens[] = {1, 2, 15, 16, 17, 31, 33, 100, 257, 4095, 8192};
    const int blocks[] = {1, 3, 16, 64};
    for (size_t a = 0; a < sizeof lens / sizeof lens[0]; a++)
        for (size_t b = 0; b < sizeof blocks / sizeof blocks[0]; b++) {
            int len = lens[a], blk = blocks[b];
            int nb = (len + blk - 1) / blk + 2; /* two blocks past len must be 0 */
            float *p = malloc(sizeof(float) * (size_t)len);
            float *m1 = malloc(sizeof(float) * (size_t)nb), *s1 = malloc(sizeof(float) * (size_t)nb);
            float *m2 = malloc(sizeof(float) * (size_t)nb), *s2 = malloc(sizeof(float) * (size_t)nb);
            random_row(p, len, (unsigned)(len * 31 + blk));
            ap_block_pool(p, len, blk, nb, m1, s1);
            ap_block_pool_ref(p, len, blk, nb, m2, s2);
            cr_assert_eq(memcmp(m1, m2, sizeof(float) * (size_t)nb), 0, "max len=%d block=%d", len, blk);
            cr_assert_leq(ap_rel_err_f32(s1, s2, nb), AP_TOL_KERNEL_REL, "sum len=%d block=%d", len, blk);
            double tot = 0.0;
            for (int j = 0; j < nb; j++) tot += s1[j];
            cr_assert_float_eq(tot, 1.0, 1e-5);
            cr_assert_eq(m1[nb - 1], 0.0f);
            cr_assert_eq(s1[nb - 2], 0.0f);
            free(p);
            free(m1);
            free(s1);
            free(m2);
            free(s2);
        }
}

Test(block_pool, cuda_matches_cpu) {
    if (ap_cuda_device_count() == 0) cr_skip_test("GPU test skipped: no CUDA device (or no CUDA build)");
#ifdef AP_HAVE_CUDA
    const int rows = 37, stride = 1000, blk = 16, nb = (stride + blk - 1) / blk;
    float *p = calloc((size_t)rows * stride, sizeof(float));
    int *len = malloc(sizeof(int) * rows);
    for (int r = 0; r < rows; r++) {
        len[r] = 1 + (r * 97) % stride;
        random_row(p + (size_t)r * stride, len[r], (unsigned)r + 5u);
    }
    float *dp, *dmax, *dsum;
    int *dlen;
    cr_assert_eq(cudaMalloc((void **)&dp, sizeof(float) * rows * stride), cudaSuccess);
    cr_assert_eq(cudaMalloc((void **)&dlen, sizeof(int) * rows), cudaSuccess);
    cr_assert_eq(cudaMalloc((void **)&dmax, sizeof(float) * rows * nb), cudaSuccess);
    cr_assert_eq(cudaMalloc((void **)&dsum, sizeof(float) * rows * nb), cudaSuccess);
    cudaMemcpy(dp, p, sizeof(float) * rows * stride, cudaMemcpyHostToDevice);
    cudaMemcpy(dlen, len, sizeof(int) * rows, cudaMemcpyHostToDevice);
    ap_err err;
    cr_assert_eq(ap_block_pool_cuda(dp, dlen, rows, stride, blk, nb, dmax, dsum, &err), AP_OK, "%s", err.msg);
    float *gm = malloc(sizeof(float) * rows * nb), *gs = malloc(sizeof(float) * rows * nb);
    float *cm = malloc(sizeof(float) * nb), *cs = malloc(sizeof(float) * nb);
    cudaMemcpy(gm, dmax, sizeof(float) * rows * nb, cudaMemcpyDeviceToHost);
    cudaMemcpy(gs, dsum, sizeof(float) * rows * nb, cudaMemcpyDeviceToHost);
    for (int r = 0; r < rows; r++) {
        ap_block_pool(p + (size_t)r * stride, len[r], blk, nb, cm, cs);
        cr_assert_leq(ap_rel_err_f32(gm + (size_t)r * nb, cm, nb), AP_TOL_CPU_GPU_REL);
        cr_assert_leq(ap_rel_err_f32(gs + (size_t)r * nb, cs, nb), AP_TOL_CPU_GPU_REL);
    }
    cudaFree(dp);
    cudaFree(dlen);
    cudaFree(dmax);
    cudaFree(dsum);
    free(p);
    free(len);
    free(gm);
    free(gs);
    free(cm);
    free(cs);
#endif
}
