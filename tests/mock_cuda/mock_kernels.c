/* CPU mock of the ap_*_cuda kernels of kernels/ (rmsnorm, rope, swiglu,
 * softmax, block pooling, dense attention with block views and column
 * sums, attention rows, sparse decode attention). Each one does the real
 * entry point's argument checks, then checks that its pointers are device
 * (or mapped pinned) memory covering what it touches (mock_cuda.h), then
 * runs the CPU implementation of the op with the semantics the header
 * documents for the CUDA version. This tests the host code that calls the
 * kernels, not the kernels' device code. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/attention.h"
#include "kernels/attention_cuda.h"
#include "kernels/block_pool.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"
#include "kernels/sparse_attn.h"
#include "kernels/swiglu.h"
#include "tests/mock_cuda/mock_cuda.h"

#define F sizeof(float)
#define MEM AP_MOCK_MEM

/* ------------------------------------------------------------- rmsnorm */

ap_status ap_rmsnorm_cuda(float *d_y, size_t ldy, const float *d_x, size_t ldx, const float *d_g,
                          int rows, int n, float eps, ap_cuda_stream s, ap_err *err) {
    if (rows < 0 || n < 1) return ap_errf(err, AP_ERR_ARG, "rmsnorm: bad shape %d x %d", rows, n);
    if (rows == 0) return AP_OK;
    if (!d_y || !d_x || !d_g) return ap_errf(err, AP_ERR_ARG, "rmsnorm: NULL device pointer");
    if (rows > 1 && (ldx < (size_t)n || ldy < (size_t)n))
        return ap_errf(err, AP_ERR_ARG, "rmsnorm: row strides %zu/%zu below the row length %d", ldx,
                       ldy, n);
    const char *op = "rmsnorm";
    ap_status st;
    if ((st = ap_mock_cuda_stream_ok(s, op, err)) ||
        (st = ap_mock_cuda_need(d_x, ap_mock_cuda_extent(rows, ldx, (size_t)n, F), MEM, op, "x",
                                err)) ||
        (st = ap_mock_cuda_need(d_y, ap_mock_cuda_extent(rows, ldy, (size_t)n, F), MEM, op, "y",
                                err)) ||
        (st = ap_mock_cuda_need(d_g, (size_t)n * F, MEM, op, "g", err)))
        return st;
    ap_rmsnorm(d_y, ldy, d_x, ldx, d_g, rows, n, eps);
    return AP_OK;
}

/* ---------------------------------------------------------------- rope */

ap_status ap_rope_cuda(float *d_x, size_t ldx, int rows, int n_heads, int head_dim,
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
    const char *op = "rope";
    const size_t width = (size_t)n_heads * (size_t)head_dim;
    ap_status st;
    if ((st = ap_mock_cuda_stream_ok(s, op, err)) ||
        (st = ap_mock_cuda_need(d_x, ap_mock_cuda_extent(rows, ldx, width, F), MEM, op, "x",
                                err)) ||
        (st = ap_mock_cuda_need(d_cs, (size_t)rows * (size_t)head_dim * F, MEM, op,
                                "cos/sin table", err)))
        return st;
    ap_rope(d_x, ldx, rows, n_heads, head_dim, d_cs);
    return AP_OK;
}

/* -------------------------------------------------------------- swiglu */

ap_status ap_swiglu_cuda(float *d_out, size_t ldo, const float *d_gate, size_t ldg,
                         const float *d_up, size_t ldu, int rows, int n, ap_cuda_stream s,
                         ap_err *err) {
    if (rows < 0 || n < 1) return ap_errf(err, AP_ERR_ARG, "swiglu: bad shape %d x %d", rows, n);
    if (rows == 0) return AP_OK;
    if (!d_out || !d_gate || !d_up) return ap_errf(err, AP_ERR_ARG, "swiglu: NULL device pointer");
    if (rows > 1 && (ldo < (size_t)n || ldg < (size_t)n || ldu < (size_t)n))
        return ap_errf(err, AP_ERR_ARG, "swiglu: a row stride is below the row length %d", n);
    const char *op = "swiglu";
    ap_status st;
    if ((st = ap_mock_cuda_stream_ok(s, op, err)) ||
        (st = ap_mock_cuda_need(d_out, ap_mock_cuda_extent(rows, ldo, (size_t)n, F), MEM, op,
                                "out", err)) ||
        (st = ap_mock_cuda_need(d_gate, ap_mock_cuda_extent(rows, ldg, (size_t)n, F), MEM, op,
                                "gate", err)) ||
        (st = ap_mock_cuda_need(d_up, ap_mock_cuda_extent(rows, ldu, (size_t)n, F), MEM, op, "up",
                                err)))
        return st;
    ap_swiglu(d_out, ldo, d_gate, ldg, d_up, ldu, rows, n);
    return AP_OK;
}

/* ------------------------------------------------------------- softmax */

ap_status ap_softmax_rows_cuda(float *d_x, size_t ldx, int rows, int n, const int *d_len,
                               ap_cuda_stream s, ap_err *err) {
    if (rows < 0 || n < 1) return ap_errf(err, AP_ERR_ARG, "softmax: bad shape %d x %d", rows, n);
    if (rows == 0) return AP_OK;
    if (!d_x) return ap_errf(err, AP_ERR_ARG, "softmax: NULL device pointer");
    if (rows > 1 && ldx < (size_t)n)
        return ap_errf(err, AP_ERR_ARG, "softmax: row stride %zu below the row length %d", ldx, n);
    const char *op = "softmax";
    ap_status st;
    if ((st = ap_mock_cuda_stream_ok(s, op, err)) ||
        (st = ap_mock_cuda_need(d_x, ap_mock_cuda_extent(rows, ldx, (size_t)n, F), MEM, op, "x",
                                err)) ||
        (d_len &&
         (st = ap_mock_cuda_need(d_len, (size_t)rows * sizeof(int), MEM, op, "lengths", err))))
        return st;
    for (int r = 0; r < rows; r++) {
        float *row = d_x + (size_t)r * ldx;
        int L = d_len ? d_len[r] : n;
        L = L < 0 ? 0 : (L > n ? n : L);
        /* The CUDA version lets a NaN win the max, so a NaN anywhere in the
         * row makes the whole (first L) row NaN; the CPU's max skips NaN. */
        int nan = 0;
        for (int i = 0; i < L; i++) nan |= row[i] != row[i];
        if (nan)
            for (int i = 0; i < L; i++) row[i] = NAN;
        else if (L > 0)
            ap_softmax(row, L);
        for (int i = L; i < n; i++) row[i] = 0.0f;
    }
    return AP_OK;
}

/* ---------------------------------------------------------- block pool */

ap_status ap_block_pool_cuda(const float *d_p, const int *d_len, int n_rows, int stride,
                             int block, int n_blocks, float *d_max, float *d_sum, ap_err *err) {
    if (n_rows <= 0 || n_blocks <= 0) return AP_OK;
    if (block < 1 || stride < 0)
        return ap_errf(err, AP_ERR_ARG, "block pooling: bad block %d or stride %d", block, stride);
    const char *op = "block pooling";
    const size_t out = (size_t)n_rows * (size_t)n_blocks * F;
    ap_status st;
    if ((st = ap_mock_cuda_need(d_len, (size_t)n_rows * sizeof(int), MEM, op, "lengths", err)) ||
        (st = ap_mock_cuda_need(d_max, out, MEM, op, "max", err)) ||
        (st = ap_mock_cuda_need(d_sum, out, MEM, op, "sum", err)))
        return st;
    const long cover = (long)n_blocks * block;
    for (int r = 0; r < n_rows; r++) {
        /* The kernel reads keys [0, min(len, n_blocks * block)). */
        long L = d_len[r] < 0 ? 0 : d_len[r];
        if (L > cover) L = cover;
        const float *row = d_p + (size_t)r * (size_t)stride;
        if (L > 0 && (st = ap_mock_cuda_need(row, (size_t)L * F, MEM, op, "rows", err))) return st;
        ap_block_pool(row, (int)L, block, n_blocks, d_max + (size_t)r * n_blocks,
                      d_sum + (size_t)r * n_blocks);
    }
    return AP_OK;
}

/* ----------------------------------------------------- dense attention */

/* Rows arrive from ap_attn's observer: block views or whole rows. */
typedef struct {
    int pos0;
    const ap_attn_cuda_args *views; /* ap_attn_cuda */
    const ap_attn_rows_cuda_args *rows; /* ap_attn_rows_cuda */
} attn_sink;

static void attn_on_row(void *user, int head, int pos, const float *probs, int len) {
    const attn_sink *k = user;
    const size_t i = (size_t)(pos - k->pos0), h = (size_t)head;
    if (k->views) {
        const ap_attn_cuda_args *a = k->views;
        size_t o = h * a->view_head_stride + i * a->view_row_stride;
        ap_block_pool(probs, len, a->vblock, a->n_vblocks, a->bmax + o, a->bsum + o);
    } else {
        const ap_attn_rows_cuda_args *a = k->rows;
        memcpy(a->probs + h * a->head_stride + i * a->row_stride, probs, (size_t)len * F);
    }
}

/* Chunk of query rows per ap_attn pass: bounds the score buffer. */
#define ATTN_CHUNK 64

ap_status ap_attn_cuda(const ap_attn_cuda_args *a, void *d_work, size_t work_bytes,
                       ap_cuda_stream s, ap_err *err) {
    ap_status st = ap_attn_cuda_validate(a, err);
    if (st != AP_OK || a->n_q == 0) return st;
    size_t need = ap_attn_cuda_work_bytes(a);
    if (need && (!d_work || work_bytes < need))
        return ap_errf(err, AP_ERR_ARG, "attention (CUDA): work buffer of %zu bytes, %zu needed",
                       work_bytes, need);
    if (a->n_heads > 65535)
        return ap_errf(err, AP_ERR_UNSUPPORTED, "attention (CUDA): %d heads in one group",
                       a->n_heads);
    const char *op = "attention";
    const int n_keys = a->pos0 + a->n_q;
    const size_t qw = (size_t)a->n_heads * (size_t)a->head_dim, hd = (size_t)a->head_dim;
    if ((st = ap_mock_cuda_stream_ok(s, op, err)) ||
        (st = ap_mock_cuda_need(a->q, ap_mock_cuda_extent(a->n_q, a->ldq, qw, F), MEM, op, "q",
                                err)) ||
        (st = ap_mock_cuda_need(a->k, ap_mock_cuda_extent(n_keys, a->ldkv, hd, F), MEM, op, "k",
                                err)) ||
        (st = ap_mock_cuda_need(a->v, ap_mock_cuda_extent(n_keys, a->ldkv, hd, F), MEM, op, "v",
                                err)) ||
        (st = ap_mock_cuda_need(a->out, ap_mock_cuda_extent(a->n_q, a->ldo, qw, F), MEM, op, "out",
                                err)) ||
        (need && (st = ap_mock_cuda_need(d_work, need, MEM, op, "work", err))))
        return st;
    if (a->bmax && a->n_vblocks > 0) {
        size_t ext = ((size_t)(a->n_heads - 1) * a->view_head_stride +
                      (size_t)(a->n_q - 1) * a->view_row_stride + (size_t)a->n_vblocks) *
                     F;
        if ((st = ap_mock_cuda_need(a->bmax, ext, MEM, op, "bmax", err)) ||
            (st = ap_mock_cuda_need(a->bsum, ext, MEM, op, "bsum", err)))
            return st;
    }
    if (a->colsum &&
        (st = ap_mock_cuda_need(a->colsum,
                                ((size_t)(a->n_heads - 1) * a->colsum_stride + (size_t)n_keys) *
                                    sizeof(double),
                                MEM, op, "colsum", err)))
        return st;

    float *scratch = malloc(ap_attn_scratch_floats(ATTN_CHUNK, a->n_heads, n_keys) * F);
    if (!scratch)
        return ap_errf(err, AP_ERR_NOMEM, "CUDA mock: attention: out of memory for %d keys",
                       n_keys);
    attn_sink sink = {.pos0 = a->pos0, .views = a};
    ap_attn_args c = {.n_q = a->n_q, .n_heads = a->n_heads, .pos0 = a->pos0,
                      .head_dim = a->head_dim, .scale = a->scale, .q = a->q, .ldq = a->ldq,
                      .k = a->k, .v = a->v, .ldkv = a->ldkv, .out = a->out, .ldo = a->ldo,
                      .colsum = a->colsum, .colsum_stride = a->colsum_stride,
                      .on_row = a->bmax && a->n_vblocks > 0 ? attn_on_row : NULL, .user = &sink,
                      .rows_from = a->pos0};
    ap_attn(&c, scratch, ATTN_CHUNK);
    free(scratch);
    return AP_OK;
}

ap_status ap_attn_rows_cuda(const ap_attn_rows_cuda_args *a, ap_cuda_stream s, ap_err *err) {
    ap_status st = ap_attn_rows_cuda_validate(a, err);
    if (st != AP_OK || a->n_q == 0) return st;
    if (a->n_heads > 65535)
        return ap_errf(err, AP_ERR_UNSUPPORTED, "attention rows (CUDA): %d heads", a->n_heads);
    const char *op = "attention rows";
    const int n_keys = a->pos0 + a->n_q;
    const size_t qw = (size_t)a->n_heads * (size_t)a->head_dim;
    const size_t pext = ((size_t)(a->n_heads - 1) * a->head_stride +
                         (size_t)(a->n_q - 1) * a->row_stride + (size_t)n_keys) *
                        F;
    if ((st = ap_mock_cuda_stream_ok(s, op, err)) ||
        (st = ap_mock_cuda_need(a->q, ap_mock_cuda_extent(a->n_q, a->ldq, qw, F), MEM, op, "q",
                                err)) ||
        (st = ap_mock_cuda_need(a->k, ap_mock_cuda_extent(n_keys, a->ldkv, (size_t)a->head_dim, F),
                                MEM, op, "k", err)) ||
        (st = ap_mock_cuda_need(a->probs, pext, MEM, op, "probs", err)))
        return st;
    /* ap_attn needs values and an output: the keys stand in for the
     * values, and the output goes to a throwaway buffer. */
    float *scratch = malloc(ap_attn_scratch_floats(ATTN_CHUNK, a->n_heads, n_keys) * F);
    float *out = malloc((size_t)a->n_q * qw * F);
    if (!scratch || !out) {
        free(scratch);
        free(out);
        return ap_errf(err, AP_ERR_NOMEM, "CUDA mock: attention rows: out of memory");
    }
    attn_sink sink = {.pos0 = a->pos0, .rows = a};
    ap_attn_args c = {.n_q = a->n_q, .n_heads = a->n_heads, .pos0 = a->pos0,
                      .head_dim = a->head_dim, .scale = a->scale, .q = a->q, .ldq = a->ldq,
                      .k = a->k, .v = a->k, .ldkv = a->ldkv, .out = out, .ldo = qw,
                      .on_row = attn_on_row, .user = &sink, .rows_from = a->pos0};
    ap_attn(&c, scratch, ATTN_CHUNK);
    free(scratch);
    free(out);
    return AP_OK;
}

/* ---------------------------------------------------- sparse attention */

#define SP_MAX_HD 256
#define SP_MAX_BLOCK 1024
#define SP_COMBINE_SMEM (48 * 1024)

/* The pointers the kernels would read or write, as device memory. */
static ap_status sparse_need(const ap_sparse_attn_args *a, const ap_sparse_cuda_layout *l,
                             void *d_work, ap_err *err) {
    const char *op = "sparse attention";
    const size_t units = (size_t)l->n_units, hd = (size_t)a->head_dim, nb = (size_t)l->n_blocks;
    const size_t sets = (size_t)l->n_sets;
    ap_status st;
    if ((st = ap_mock_cuda_need(d_work, l->total, MEM, op, "work", err)) ||
        (st = ap_mock_cuda_need(a->q, units * hd * F, MEM, op, "q", err)) ||
        (st = ap_mock_cuda_need(a->out, units * hd * F, MEM, op, "out", err)) ||
        (st = ap_mock_cuda_need(a->set_off, (sets + 1) * sizeof(int), MEM, op, "set_off", err)))
        return st;
    int lo = a->set_off[0], hi = lo;
    for (size_t s = 0; s < sets; s++) {
        if (a->set_off[s] < lo) lo = a->set_off[s];
        if (a->set_off[s + 1] > hi) hi = a->set_off[s + 1];
    }
    if (lo < 0)
        return ap_errf(err, AP_ERR_INTERNAL,
                       "CUDA mock: %s: set_off has a negative offset %d (the kernel would read "
                       "before blocks)",
                       op, lo);
    if (hi > 0 &&
        (st = ap_mock_cuda_need(a->blocks, (size_t)hi * sizeof(int), MEM, op, "blocks", err)))
        return st;
    const size_t vext = ((units - 1) * a->ldb + nb) * F;
    if ((a->n_kept &&
         (st = ap_mock_cuda_need(a->n_kept, units * sizeof(int), MEM, op, "n_kept", err))) ||
        (a->kept_mass &&
         (st = ap_mock_cuda_need(a->kept_mass, units * F, MEM, op, "kept_mass", err))) ||
        (a->bmax && ((st = ap_mock_cuda_need(a->bmax, vext, MEM, op, "bmax", err)) ||
                     (st = ap_mock_cuda_need(a->bsum, vext, MEM, op, "bsum", err)))) ||
        (a->dense_bmax &&
         ((st = ap_mock_cuda_need(a->dense_bmax, vext, MEM, op, "dense_bmax", err)) ||
          (st = ap_mock_cuda_need(a->dense_bsum, vext, MEM, op, "dense_bsum", err)))))
        return st;
    if (a->k) {
        size_t ext = ((size_t)(a->n_groups - 1) * a->group_stride +
                      (size_t)(a->n_keys - 1) * a->ldkv + hd) *
                     F;
        if ((st = ap_mock_cuda_need(a->k, ext, MEM, op, "k", err)) ||
            (st = ap_mock_cuda_need(a->v, ext, MEM, op, "v", err)))
            return st;
        return AP_OK;
    }
    const size_t tab = (size_t)a->n_groups * nb * sizeof(float *);
    if ((st = ap_mock_cuda_need(a->k_pages, tab, MEM, op, "k_pages", err)) ||
        (st = ap_mock_cuda_need(a->v_pages, tab, MEM, op, "v_pages", err)))
        return st;
    /* Every page that is set must be device memory (or mapped pinned host
     * memory) holding its keys; the CPU reports a NULL page a kept key
     * needs. */
    for (size_t i = 0; i < (size_t)a->n_groups * nb; i++) {
        size_t b = i % nb;
        int keys = a->n_keys - (int)b * a->block < a->block ? a->n_keys - (int)b * a->block
                                                              : a->block;
        size_t ext = ap_mock_cuda_extent(keys, a->ldkv, hd, F);
        if ((a->k_pages[i] && (st = ap_mock_cuda_need(a->k_pages[i], ext, MEM, op, "a key page",
                                                       err))) ||
            (a->v_pages[i] &&
             (st = ap_mock_cuda_need(a->v_pages[i], ext, MEM, op, "a value page", err))))
            return st;
    }
    return AP_OK;
}

/* One kept set on the CPU: b is the sub-problem (one group, nh query heads,
 * one list), already cleaned. An empty kept set (no list, sink or local)
 * gives what the CUDA version gives: zero output and views, n_kept 0,
 * kept_mass 0, and the dense views of measure mode. */
static ap_status sparse_one(ap_sparse_attn_args *b, int nh, ap_err *err) {
    ap_status st = AP_OK;
    const int nb = ap_sparse_attn_n_blocks(b);
    const int empty = b->set_off[1] == 0 && b->sink == 0 && b->local == 0;
    float *tmp = NULL;
    void *scratch = NULL;
    if (empty) {
        memset(b->out, 0, (size_t)nh * (size_t)b->head_dim * F);
        for (int h = 0; h < nh; h++) {
            if (b->n_kept) b->n_kept[h] = 0;
            if (b->kept_mass) b->kept_mass[h] = 0.0f;
            if (b->bmax) {
                memset(b->bmax + (size_t)h * b->ldb, 0, (size_t)nb * F);
                memset(b->bsum + (size_t)h * b->ldb, 0, (size_t)nb * F);
            }
        }
        if (!b->dense_bmax) return AP_OK;
        /* Dense views only: every key kept, the rest to a throwaway buffer. */
        if (!(tmp = malloc((size_t)nh * (size_t)b->head_dim * F))) goto nomem;
        b->out = tmp;
        b->sink = b->n_keys;
        b->n_kept = NULL;
        b->kept_mass = NULL;
        b->bmax = b->bsum = NULL;
    }
    if (!(scratch = malloc(ap_sparse_attn_scratch_bytes(b)))) goto nomem;
    if ((st = ap_sparse_attn(b, scratch, err)))
        ap_err_prefix(err, "CUDA mock: the CPU sparse attention failed (a device fault on a GPU)");
    free(scratch);
    free(tmp);
    return st;
nomem:
    free(tmp);
    return ap_errf(err, AP_ERR_NOMEM, "CUDA mock: sparse attention: out of memory");
}

ap_status ap_sparse_attn_cuda(const ap_sparse_attn_args *a, void *d_work, size_t work_bytes,
                              ap_cuda_stream s, ap_err *err) {
    ap_status st = ap_sparse_attn_validate(a, 0, err);
    if (st != AP_OK) return st;
    if (a->kv_type != AP_KV_F32)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "sparse attention (CUDA): K/V type %s (the kernels read f32 only)",
                       ap_kv_type_name(a->kv_type));
    if (a->head_dim > SP_MAX_HD || a->block > SP_MAX_BLOCK)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "sparse attention (CUDA): head_dim %d / block %d above the kernel's %d / %d",
                       a->head_dim, a->block, SP_MAX_HD, SP_MAX_BLOCK);
    ap_sparse_cuda_layout l;
    ap_sparse_attn_cuda_layout(a, &l);
    if (!d_work || work_bytes < l.total)
        return ap_errf(err, AP_ERR_ARG,
                       "sparse attention (CUDA): work buffer of %zu bytes, %zu needed", work_bytes,
                       l.total);
    const size_t combine_smem = 2 * F * (size_t)l.n_chunks;
    if (combine_smem > SP_COMBINE_SMEM || l.n_units > 65535)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "sparse attention (CUDA): %d keys x %d query heads is beyond this kernel",
                       a->n_keys, l.n_units);
    if ((st = ap_mock_cuda_stream_ok(s, "sparse attention", err)) ||
        (st = sparse_need(a, &l, d_work, err)))
        return st;

    /* Device lists may be unsorted, hold duplicates and entries outside
     * [0, n_blocks): the CPU takes each list sorted, deduplicated and
     * filtered, one set at a time. */
    const int G = a->n_heads, nb = l.n_blocks, hd = a->head_dim;
    const int nh = a->per_q_head ? 1 : G;
    int *list = malloc(sizeof(int) * (size_t)(nb > 0 ? nb : 1));
    if (!list) return ap_errf(err, AP_ERR_NOMEM, "CUDA mock: sparse attention: out of memory");
    for (int g = 0; g < a->n_groups && st == AP_OK; g++)
        for (int h0 = 0; h0 < G && st == AP_OK; h0 += nh) {
            const int set = a->per_q_head ? g * G + h0 : g;
            const size_t u0 = (size_t)g * G + h0;
            int lo = a->set_off[set], hi = a->set_off[set + 1], len = 0;
            /* A flag per block, then the flagged blocks in order: sorted,
             * deduplicated and filtered in one pass. */
            memset(list, 0, sizeof(int) * (size_t)nb);
            for (int i = lo; i < hi; i++)
                if (a->blocks[i] >= 0 && a->blocks[i] < nb) list[a->blocks[i]] = 1;
            for (int b = 0; b < nb; b++)
                if (list[b]) list[len++] = b;
            int off[2] = {0, len};
            ap_sparse_attn_args b = *a;
            b.n_groups = 1;
            b.n_heads = nh;
            b.per_q_head = 0;
            b.q = a->q + u0 * hd;
            b.out = a->out + u0 * hd;
            if (a->k) {
                /* The CUDA kernels read f32 only (checked above). */
                b.k = (const float *)a->k + (size_t)g * a->group_stride;
                b.v = (const float *)a->v + (size_t)g * a->group_stride;
            } else {
                b.k_pages = a->k_pages + (size_t)g * nb;
                b.v_pages = a->v_pages + (size_t)g * nb;
            }
            b.blocks = len ? list : NULL;
            b.set_off = off;
            if (a->n_kept) b.n_kept = a->n_kept + u0;
            if (a->kept_mass) b.kept_mass = a->kept_mass + u0;
            if (a->bmax) {
                b.bmax = a->bmax + u0 * a->ldb;
                b.bsum = a->bsum + u0 * a->ldb;
            }
            if (a->dense_bmax) {
                b.dense_bmax = a->dense_bmax + u0 * a->ldb;
                b.dense_bsum = a->dense_bsum + u0 * a->ldb;
            }
            st = sparse_one(&b, nh, err);
        }
    free(list);
    return st;
}
