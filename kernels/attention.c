#include "kernels/attention.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "kernels/softmax.h"

size_t ap_attn_scratch_floats(int chunk, int n_heads, int n_keys) {
    int rows = chunk > n_heads ? chunk : n_heads;
    return (size_t)(rows > 0 ? rows : 1) * (size_t)(n_keys > 0 ? n_keys : 1);
}

/* Normalize one score row in place: row[j] is key off + j for j < nk
 * (softmax over keys up to pos inside the window, exact zeros elsewhere),
 * accumulate its column sums and hand it to the observer (off is 0 whenever
 * an observer wants the row: it gets keys 0..pos). */
static void finish_row(const ap_attn_args *a, int head, int pos, float *row, int nk, int off) {
    int len = pos + 1 - off;
    /* Keys before lo (relative) are outside the sliding window. */
    int lo = a->window > 0 && pos + 1 - a->window > off ? pos + 1 - a->window - off : 0;
    /* Normalization and column sum share one pass: at long context the row
     * no longer fits in L1. */
    float inv = 1.0f / ap_exp_shift_sum(row + lo, len - lo, ap_row_max(row + lo, len - lo));
    if (lo) memset(row, 0, (size_t)lo * sizeof *row);
    if (a->colsum) {
        double *cs = a->colsum + (size_t)head * a->colsum_stride + off;
        for (int j = lo; j < len; j++) {
            row[j] *= inv;
            cs[j] += row[j];
        }
    } else {
        for (int j = lo; j < len; j++) row[j] *= inv;
    }
    /* Masked keys must be exact zeros: P·V runs over all nk. */
    if (len < nk) memset(row + len, 0, (size_t)(nk - len) * sizeof *row);
    if (a->on_row && pos >= a->rows_from) a->on_row(a->user, head, pos, row, len);
}

static void one_head(const ap_attn_args *a, int head, float *scratch, int chunk) {
    const int hd = a->head_dim;
    for (int c0 = 0; c0 < a->n_q; c0 += chunk) {
        int cn = a->n_q - c0 < chunk ? a->n_q - c0 : chunk;
        /* Keys up to the last row of this chunk; earlier rows mask the tail. */
        int end = a->pos0 + c0 + cn;
        /* In a sliding-window layer no row of the chunk reaches keys before
         * its first row's window: skip them (prefill then costs the window,
         * not the context), unless an observer wants whole rows. */
        int off = 0, first = a->pos0 + c0;
        int rows_wanted = a->on_row && first + cn - 1 >= a->rows_from;
        if (a->window > 0 && !rows_wanted && first + 1 > a->window) off = first + 1 - a->window;
        int nk = end - off;
        const float *k = a->k + (size_t)off * a->ldkv, *v = a->v + (size_t)off * a->ldkv;
        const float *q = a->q + (size_t)c0 * a->ldq + (size_t)head * hd;
        float *s = scratch;
        if (cn == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, nk, hd, a->scale, k, (int)a->ldkv, q, 1,
                        0.0f, s, 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, cn, nk, hd, a->scale, q,
                        (int)a->ldq, k, (int)a->ldkv, 0.0f, s, nk);
        for (int i = 0; i < cn; i++)
            finish_row(a, head, a->pos0 + c0 + i, s + (size_t)i * nk, nk, off);
        float *o = a->out + (size_t)c0 * a->ldo + (size_t)head * hd;
        if (cn == 1)
            cblas_sgemv(CblasRowMajor, CblasTrans, nk, hd, 1.0f, v, (int)a->ldkv, s, 1, 0.0f, o,
                        1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cn, hd, nk, 1.0f, s, nk, v,
                        (int)a->ldkv, 0.0f, o, (int)a->ldo);
    }
}

/* One query position, all heads of the group in one product each way. */
static void group_row(const ap_attn_args *a, float *scratch) {
    const int hd = a->head_dim, G = a->n_heads, nk = a->pos0 + 1;
    float *s = scratch; /* [G][nk] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, G, nk, hd, a->scale, a->q, hd, a->k,
                (int)a->ldkv, 0.0f, s, nk);
    for (int h = 0; h < G; h++) finish_row(a, h, a->pos0, s + (size_t)h * nk, nk, 0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, G, hd, nk, 1.0f, s, nk, a->v,
                (int)a->ldkv, 0.0f, a->out, hd);
}

void ap_attn(const ap_attn_args *a, float *scratch, int chunk) {
    if (chunk < 1) chunk = 1;
    int G = a->n_heads > 0 ? a->n_heads : 1;
    if (a->n_q == 1 && G > 1) {
        group_row(a, scratch);
        return;
    }
    for (int h = 0; h < G; h++) one_head(a, h, scratch, chunk);
}

size_t ap_attn_ref_scratch_bytes(int n_keys) {
    return (size_t)(n_keys > 0 ? n_keys : 1) * (sizeof(double) + sizeof(float));
}

void ap_attn_ref(const ap_attn_args *a, void *scratch) {
    const int hd = a->head_dim;
    int n_keys = a->pos0 + a->n_q, G = a->n_heads > 0 ? a->n_heads : 1;
    double *p = scratch;
    float *pf = (float *)(p + n_keys);
    for (int h = 0; h < G; h++) {
        for (int i = 0; i < a->n_q; i++) {
            int pos = a->pos0 + i;
            int len = pos + 1;
            int lo = a->window > 0 && len > a->window ? len - a->window : 0;
            const float *q = a->q + (size_t)i * a->ldq + (size_t)h * hd;
            double mx = -INFINITY;
            for (int j = 0; j < lo; j++) p[j] = -INFINITY;
            for (int j = lo; j < len; j++) {
                const float *k = a->k + (size_t)j * a->ldkv;
                double d = 0.0;
                for (int t = 0; t < hd; t++) d += (double)q[t] * (double)k[t];
                p[j] = d * (double)a->scale;
                if (p[j] > mx) mx = p[j];
            }
            double sum = 0.0;
            for (int j = 0; j < len; j++) {
                p[j] = exp(p[j] - mx);
                sum += p[j];
            }
            for (int j = 0; j < len; j++) {
                p[j] /= sum;
                pf[j] = (float)p[j];
            }
            float *o = a->out + (size_t)i * a->ldo + (size_t)h * hd;
            for (int t = 0; t < hd; t++) {
                double acc = 0.0;
                for (int j = 0; j < len; j++) acc += p[j] * (double)a->v[(size_t)j * a->ldkv + t];
                o[t] = (float)acc;
            }
            if (a->colsum) {
                double *cs = a->colsum + (size_t)h * a->colsum_stride;
                for (int j = 0; j < len; j++) cs[j] += p[j];
            }
            if (a->on_row && pos >= a->rows_from) a->on_row(a->user, h, pos, pf, len);
        }
    }
}
