/* CPU mock of capture/model_cuda_kernels.h (the real one is
 * capture/model_cuda.cu): the products as plain float loops, the gather,
 * the strided copies and the page tables as host loops, all synchronous,
 * with the pointer checks of mock_cuda.h. Tests the host logic of
 * capture/model_cuda.c, not cuBLAS or the device code. */
#include <cblas.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "capture/model_cuda_kernels.h"
#include "tests/mock_cuda/mock_cuda.h"

#define MEM AP_MOCK_MEM

struct ap_cmc_blas {
    ap_cuda_stream stream; /* the stream the real handle is bound to */
};

ap_status ap_cmc_blas_create(ap_cuda_stream s, ap_cmc_blas **out, ap_err *err) {
    *out = NULL;
    ap_status st = ap_mock_cuda_stream_ok(s, "cuBLAS handle creation", err);
    if (st != AP_OK) return st;
    ap_cmc_blas *b = calloc(1, sizeof *b);
    if (!b) return ap_errf(err, AP_ERR_NOMEM, "out of memory for the cuBLAS handle");
    b->stream = s;
    *out = b;
    return AP_OK;
}

void ap_cmc_blas_free(ap_cmc_blas *b) { free(b); }

/* Do [p, p + n) and [q, q + m) (bytes) overlap? */
static int overlap(const void *p, size_t n, const void *q, size_t m) {
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)q;
    return a < b + m && b < a + n;
}

ap_status ap_cmc_gemm(ap_cmc_blas *b, float *y, size_t ldy, const float *x, size_t ldx,
                      const float *w, int n_out, int n_in, int T, int accumulate, ap_err *err) {
    if (n_out < 1 || n_in < 1 || T < 1 || ldx < (size_t)n_in || ldy < (size_t)n_out ||
        ldx > INT_MAX || ldy > INT_MAX)
        return ap_errf(err, AP_ERR_ARG, "gemm: bad shape %d x %d, %d rows, strides %zu/%zu", n_out,
                       n_in, T, ldx, ldy);
    const char *op = "gemm";
    if (!b) return ap_errf(err, AP_ERR_INTERNAL, "CUDA mock: gemm: no cuBLAS handle");
    const size_t ey = ap_mock_cuda_extent(T, ldy, (size_t)n_out, sizeof(float));
    const size_t ex = ap_mock_cuda_extent(T, ldx, (size_t)n_in, sizeof(float));
    const size_t ew = (size_t)n_out * (size_t)n_in * sizeof(float);
    ap_status st;
    if ((st = ap_mock_cuda_stream_ok(b->stream, op, err)) ||
        (st = ap_mock_cuda_need(y, ey, MEM, op, "y", err)) ||
        (st = ap_mock_cuda_need(x, ex, MEM, op, "x", err)) ||
        (st = ap_mock_cuda_need(w, ew, MEM, op, "w", err)))
        return st;
    /* cuBLAS gives no result for an output that overlaps an input. */
    if (overlap(y, ey, x, ex) || overlap(y, ey, w, ew))
        return ap_errf(err, AP_ERR_INTERNAL, "CUDA mock: gemm: the output overlaps an input");
    /* OpenBLAS, so benchmarks can drive real models through the mock (its
     * times mean nothing; its transfer counters do). */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n_out, n_in, 1.0f, x, (int)ldx, w,
                n_in, accumulate ? 1.0f : 0.0f, y, (int)ldy);
    return AP_OK;
}

ap_status ap_cmc_embed(float *x, size_t ldx, const float *emb, int n_embd, const int32_t *tok,
                       int T, ap_cuda_stream s, ap_err *err) {
    if (T < 1 || n_embd < 1) return ap_errf(err, AP_ERR_ARG, "embed: bad shape");
    const char *op = "embedding gather";
    const size_t row = (size_t)n_embd * sizeof(float);
    ap_status st;
    if ((st = ap_mock_cuda_stream_ok(s, op, err)) ||
        (st = ap_mock_cuda_need(tok, (size_t)T * sizeof(int32_t), MEM, op, "tokens", err)) ||
        (st = ap_mock_cuda_need(x, ap_mock_cuda_extent(T, ldx, (size_t)n_embd, sizeof(float)),
                                MEM, op, "x", err)))
        return st;
    for (int t = 0; t < T; t++) {
        /* The kernel trusts the ids: one outside the table reads past it. */
        if (tok[t] < 0)
            return ap_errf(err, AP_ERR_INTERNAL, "CUDA mock: %s: token %d at index %d", op, tok[t],
                           t);
        const float *src = emb + (size_t)tok[t] * (size_t)n_embd;
        if ((st = ap_mock_cuda_need(src, row, MEM, op, "embedding row", err))) return st;
        memcpy(x + (size_t)t * ldx, src, row);
    }
    return AP_OK;
}

ap_status ap_cmc_copy_rows(void *dst, size_t dst_pitch, const void *src, size_t src_pitch,
                           size_t width_bytes, int rows, ap_cuda_stream s, ap_err *err) {
    if (rows < 1 || width_bytes == 0) return AP_OK;
    const char *op = "strided row copy";
    ap_status st;
    if ((st = ap_mock_cuda_stream_ok(s, op, err))) return st;
    /* cudaMemcpy2D refuses a pitch below the width. */
    if (dst_pitch < width_bytes || src_pitch < width_bytes)
        return ap_errf(err, AP_ERR_INTERNAL,
                       "CUDA %s failed: pitch %zu/%zu below the width %zu (CUDA mock)", op,
                       dst_pitch, src_pitch, width_bytes);
    if ((st = ap_mock_cuda_need(dst, ap_mock_cuda_extent(rows, dst_pitch, width_bytes, 1), MEM,
                                op, "destination", err)) ||
        (st = ap_mock_cuda_need(src, ap_mock_cuda_extent(rows, src_pitch, width_bytes, 1), MEM,
                                op, "source", err)))
        return st;
    for (int r = 0; r < rows; r++)
        memmove((char *)dst + (size_t)r * dst_pitch, (const char *)src + (size_t)r * src_pitch,
                width_bytes);
    return AP_OK;
}

ap_status ap_cmc_fill_pages(const float **kp, const float **vp, const float *kbase,
                            const float *vbase, int n_layer, size_t layer_stride,
                            size_t table_stride, int n_groups, int n_pages, int page_keys,
                            size_t kv_dim, int head_dim, ap_cuda_stream s, ap_err *err) {
    if (n_layer < 1 || n_groups < 1 || n_pages < 1 || page_keys < 1 ||
        (size_t)n_groups * (size_t)n_pages > table_stride)
        return ap_errf(err, AP_ERR_ARG, "page tables: bad shape");
    const char *op = "page tables";
    const size_t ext = ap_mock_cuda_extent(n_layer, table_stride,
                                           (size_t)n_groups * (size_t)n_pages, sizeof(float *));
    ap_status st;
    if ((st = ap_mock_cuda_stream_ok(s, op, err)) ||
        (st = ap_mock_cuda_need(kp, ext, MEM, op, "key table", err)) ||
        (st = ap_mock_cuda_need(vp, ext, MEM, op, "value table", err)))
        return st;
    /* The bases are only offset, never read: what the pages point at is
     * checked by the attention that reads them. */
    const size_t page_stride = (size_t)page_keys * kv_dim;
    for (int l = 0; l < n_layer; l++)
        for (int g = 0; g < n_groups; g++)
            for (int b = 0; b < n_pages; b++) {
                size_t off = (size_t)l * layer_stride + (size_t)b * page_stride +
                             (size_t)g * (size_t)head_dim;
                size_t at = (size_t)l * table_stride + (size_t)g * (size_t)n_pages + (size_t)b;
                kp[at] = kbase + off;
                vp[at] = vbase + off;
            }
    return AP_OK;
}

ap_status ap_cmc_mapped(void *host, void **dev, ap_err *err) {
    *dev = NULL;
    /* cudaHostGetDevicePointer takes pinned, mapped memory only. */
    if (!host || ap_mock_cuda_kind_of(host) != AP_MOCK_PINNED)
        return ap_errf(err, AP_ERR_INTERNAL,
                       "CUDA device address of pinned host memory failed: %p is not pinned host "
                       "memory (CUDA mock)",
                       host);
    *dev = host; /* unified addressing: the same address on both sides */
    return AP_OK;
}
