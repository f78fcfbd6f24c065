// Device helpers of the CUDA engine (declared in model_cuda_kernels.h): the
// cuBLAS products, the embedding gather, strided row copies and the page
// tables of the offloaded cache. The forward itself is model_cuda.c.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <stdlib.h>

extern "C" {
#include "capture/model_cuda_kernels.h"
}

#define EMBED_THREADS 256
#define PAGES_THREADS 256
#define PAGES_MAX_GRID 4096

struct ap_cmc_blas {
    cublasHandle_t h;
};

static ap_status blas_status(cublasStatus_t s, const char *what, ap_err *err) {
    if (s == CUBLAS_STATUS_SUCCESS) return AP_OK;
    return ap_errf(err, AP_ERR_INTERNAL, "cuBLAS %s failed: %s (%d)", what,
                   cublasGetStatusString(s), (int)s);
}

extern "C" ap_status ap_cmc_blas_create(ap_cuda_stream s, ap_cmc_blas **out, ap_err *err) {
    *out = NULL;
    ap_cmc_blas *b = (ap_cmc_blas *)calloc(1, sizeof *b);
    if (!b) return ap_errf(err, AP_ERR_NOMEM, "out of memory for the cuBLAS handle");
    ap_status st = blas_status(cublasCreate(&b->h), "handle creation", err);
    if (st != AP_OK) {
        free(b);
        return st;
    }
    st = blas_status(cublasSetStream(b->h, s), "set stream", err);
    // Default math: float32 products stay float32 (no TF32 tensor cores),
    // which the CPU parity tolerance relies on.
    if (st == AP_OK)
        st = blas_status(cublasSetMathMode(b->h, CUBLAS_DEFAULT_MATH), "math mode", err);
    // Atomics would make split reductions order-dependent.
    if (st == AP_OK)
        st = blas_status(cublasSetAtomicsMode(b->h, CUBLAS_ATOMICS_NOT_ALLOWED), "atomics mode",
                         err);
    if (st != AP_OK) {
        ap_cmc_blas_free(b);
        return st;
    }
    *out = b;
    return AP_OK;
}

extern "C" void ap_cmc_blas_free(ap_cmc_blas *b) {
    if (!b) return;
    if (b->h) cublasDestroy(b->h);
    free(b);
}

extern "C" ap_status ap_cmc_gemm(ap_cmc_blas *b, float *y, size_t ldy, const float *x, size_t ldx,
                                 const float *w, int n_out, int n_in, int T, int accumulate,
                                 ap_err *err) {
    if (n_out < 1 || n_in < 1 || T < 1 || ldx < (size_t)n_in || ldy < (size_t)n_out ||
        ldx > INT_MAX || ldy > INT_MAX)
        return ap_errf(err, AP_ERR_ARG, "gemm: bad shape %d x %d, %d rows, strides %zu/%zu", n_out,
                       n_in, T, ldx, ldy);
    // cuBLAS is column-major. A row-major [rows][ld] array read column-major
    // is its transpose, so the row-major y = x W^T is, column-major,
    //   Y' (n_out x T) = W' (stored n_in x n_out, transposed: OP_T) * X' (n_in x T).
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasStatus_t s = cublasGemmEx(b->h, CUBLAS_OP_T, CUBLAS_OP_N, n_out, T, n_in, &alpha, w,
                                    CUDA_R_32F, n_in, x, CUDA_R_32F, (int)ldx, &beta, y, CUDA_R_32F,
                                    (int)ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return blas_status(s, "sgemm", err);
}

__global__ static void embed_kernel(float *x, size_t ldx, const float *emb, int n_embd,
                                    const int32_t *tok) {
    const float *src = emb + (size_t)tok[blockIdx.x] * (size_t)n_embd;
    float *dst = x + (size_t)blockIdx.x * ldx;
    for (int i = threadIdx.x; i < n_embd; i += EMBED_THREADS) dst[i] = src[i];
}

extern "C" ap_status ap_cmc_embed(float *x, size_t ldx, const float *emb, int n_embd,
                                  const int32_t *tok, int T, ap_cuda_stream s, ap_err *err) {
    if (T < 1 || n_embd < 1) return ap_errf(err, AP_ERR_ARG, "embed: bad shape");
    embed_kernel<<<T, EMBED_THREADS, 0, s>>>(x, ldx, emb, n_embd, tok);
    return AP_CUDA_LAUNCHED("embedding gather launch", err);
}

extern "C" ap_status ap_cmc_copy_rows(void *dst, size_t dst_pitch, const void *src,
                                      size_t src_pitch, size_t width_bytes, int rows,
                                      ap_cuda_stream s, ap_err *err) {
    if (rows < 1 || width_bytes == 0) return AP_OK;
    // cudaMemcpyDefault: unified addressing tells device from pinned host.
    return ap_cuda_status((int)cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width_bytes,
                                                 (size_t)rows, cudaMemcpyDefault, s),
                          "strided row copy", err);
}

__global__ static void pages_kernel(const float **kp, const float **vp, const float *kb,
                                    const float *vb, size_t layer_stride, size_t table_stride,
                                    int n_groups, int n_pages, size_t page_stride, int head_dim,
                                    size_t total) {
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t b = t % (size_t)n_pages, r = t / (size_t)n_pages;
        size_t g = r % (size_t)n_groups, l = r / (size_t)n_groups;
        size_t off = l * layer_stride + b * page_stride + g * (size_t)head_dim;
        size_t at = l * table_stride + g * (size_t)n_pages + b;
        kp[at] = kb + off;
        vp[at] = vb + off;
    }
}

extern "C" ap_status ap_cmc_fill_pages(const float **kp, const float **vp, const float *kbase,
                                       const float *vbase, int n_layer, size_t layer_stride,
                                       size_t table_stride, int n_groups, int n_pages,
                                       int page_keys, size_t kv_dim, int head_dim,
                                       ap_cuda_stream s, ap_err *err) {
    if (n_layer < 1 || n_groups < 1 || n_pages < 1 || page_keys < 1 ||
        (size_t)n_groups * (size_t)n_pages > table_stride)
        return ap_errf(err, AP_ERR_ARG, "page tables: bad shape");
    size_t total = (size_t)n_layer * (size_t)n_groups * (size_t)n_pages;
    size_t blocks = (total + PAGES_THREADS - 1) / PAGES_THREADS;
    if (blocks > PAGES_MAX_GRID) blocks = PAGES_MAX_GRID;
    pages_kernel<<<(unsigned)blocks, PAGES_THREADS, 0, s>>>(
        kp, vp, kbase, vbase, layer_stride, table_stride, n_groups, n_pages,
        (size_t)page_keys * kv_dim, head_dim, total);
    return AP_CUDA_LAUNCHED("page table launch", err);
}

extern "C" ap_status ap_cmc_mapped(void *host, void **dev, ap_err *err) {
    *dev = NULL;
    void *d = NULL;
    ap_status st = ap_cuda_status((int)cudaHostGetDevicePointer(&d, host, 0),
                                  "device address of pinned host memory", err);
    if (st == AP_OK) *dev = d;
    return st;
}
