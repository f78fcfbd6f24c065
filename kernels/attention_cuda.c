/* Host side of the CUDA attention: argument checks and the work size, in
 * every build; the kernels are in attention.cu. */
#include "kernels/attention_cuda.h"

size_t ap_attn_cuda_work_bytes(const ap_attn_cuda_args *a) {
    if (!a->colsum || a->n_q < 1 || a->n_heads < 1) return 0;
    /* (max, sum) of every row of every head */
    return 2 * sizeof(float) * (size_t)a->n_q * (size_t)a->n_heads;
}

ap_status ap_attn_cuda_validate(const ap_attn_cuda_args *a, ap_err *err) {
    if (!a) return ap_errf(err, AP_ERR_ARG, "attention (CUDA): no arguments");
    if (a->n_q < 0 || a->n_heads < 1 || a->pos0 < 0 || a->head_dim < 1 || a->head_dim > 256)
        return ap_errf(err, AP_ERR_ARG,
                       "attention (CUDA): bad shape (%d rows from position %d, %d heads of %d; "
                       "head_dim must be 1..256)",
                       a->n_q, a->pos0, a->n_heads, a->head_dim);
    if (a->n_q == 0) return AP_OK;
    if (!a->q || !a->k || !a->v || !a->out)
        return ap_errf(err, AP_ERR_ARG, "attention (CUDA): q, k, v and out are required");
    size_t row = (size_t)a->n_heads * a->head_dim;
    if ((a->n_q > 1 && (a->ldq < row || a->ldo < row)) ||
        (a->pos0 + a->n_q > 1 && a->ldkv < (size_t)a->head_dim))
        return ap_errf(err, AP_ERR_ARG, "attention (CUDA): a row stride is below its row length");
    if (!a->bmax != !a->bsum)
        return ap_errf(err, AP_ERR_ARG,
                       "attention (CUDA): block views come in pairs (max and sum, both or "
                       "neither)");
    if (a->bmax && (a->vblock < 16 || a->vblock % 16 != 0 || a->n_vblocks < 0))
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "attention (CUDA): view block %d is not a positive multiple of 16",
                       a->vblock);
    return AP_OK;
}

ap_status ap_attn_rows_cuda_validate(const ap_attn_rows_cuda_args *a, ap_err *err) {
    if (!a) return ap_errf(err, AP_ERR_ARG, "attention rows (CUDA): no arguments");
    if (a->n_q < 0 || a->n_heads < 1 || a->pos0 < 0 || a->head_dim < 1 || a->head_dim > 256)
        return ap_errf(err, AP_ERR_ARG,
                       "attention rows (CUDA): bad shape (%d rows from position %d, %d heads of "
                       "%d; head_dim must be 1..256)",
                       a->n_q, a->pos0, a->n_heads, a->head_dim);
    if (a->n_q == 0) return AP_OK;
    if (!a->q || !a->k || !a->probs)
        return ap_errf(err, AP_ERR_ARG, "attention rows (CUDA): q, k and probs are required");
    const size_t row = (size_t)a->n_heads * a->head_dim, longest = (size_t)a->pos0 + a->n_q;
    if ((a->n_q > 1 && a->ldq < row) || (longest > 1 && a->ldkv < (size_t)a->head_dim) ||
        (a->n_q > 1 && a->row_stride < longest) ||
        (a->n_heads > 1 && a->head_stride < longest))
        return ap_errf(err, AP_ERR_ARG,
                       "attention rows (CUDA): a stride is below the length it steps over");
    return AP_OK;
}

#ifndef AP_HAVE_CUDA
ap_status ap_attn_rows_cuda(const ap_attn_rows_cuda_args *a, ap_cuda_stream s, ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}

ap_status ap_attn_cuda(const ap_attn_cuda_args *a, void *d_work, size_t work_bytes,
                       ap_cuda_stream s, ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}
#endif
