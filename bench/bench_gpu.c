/* bench-gpu: each CUDA kernel against its CPU version in the same process,
 * at 1K/4K/8K-token shapes of the default model (n_embd 576, 9 query heads
 * in 3 GQA groups, head_dim 64, ffn 1536), then sparse vs dense decode
 * attention for one layer at 8K keys.
 *
 *   bench-gpu [--contexts 1024,4096,8192] [--json OUT.json]
 *
 * Without a CUDA device (or a CUDA build) it prints "no CUDA device:
 * skipped" and exits 0. CPU times are one thread (OpenBLAS pinned to 1, as
 * the engine runs one head group per thread); GPU times are per call,
 * measured over batches of calls queued on the default stream between two
 * synchronisations, after a warm-up call. "speedup" = cpu_ms / gpu_ms, and
 * rel_err is the GPU result against the CPU one (max |diff| / max |cpu|).
 *
 * Decode rows: dense = ap_attn per group (CPU) / ap_attn_cuda per group
 * (GPU, one thread block per head walks all keys) / ap_sparse_attn_cuda
 * with every key kept (GPU, split over the keys); sparse = the method's
 * default budget at this context, 64 sink + 64 local tokens + 56 listed
 * blocks of 16 per query head (1,024 tokens: topk 1024 in method.md 4.3;
 * fewer blocks below 8K keys). */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/tolerance.h"
#include "common/util.h"
#include "kernels/attention.h"
#include "kernels/attention_cuda.h"
#include "kernels/block_pool.h"
#include "kernels/cuda_util.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"
#include "kernels/sparse_attn.h"
#include "kernels/swiglu.h"

#define N_EMBD 576
#define N_HEAD 9
#define N_KV 3
#define GQA (N_HEAD / N_KV)
#define HD 64
#define N_FF 1536
#define BLK 16
#define MAX_ROWS 64
#define MIN_SECONDS 0.2

typedef struct {
    char kernel[32], shape[48];
    int ctx;
    double cpu_ms, gpu_ms, rel_err;
} brow;

typedef struct {
    brow rows[MAX_ROWS];
    int n;
} table;

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fill(float *x, size_t n, uint64_t *s, float lo, float hi) {
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * (float)((double)(rng_next(s) >> 11) * 0x1.0p-53);
}

/* One side of a comparison: run(u) does one call. */
typedef struct {
    void (*cpu)(void *u);
    ap_status (*gpu)(void *u, ap_err *err);
    void *u;
} job;

static double time_cpu(const job *j) {
    double t0 = ap_now_seconds(), t;
    long n = 0;
    do {
        j->cpu(j->u);
        n++;
        t = ap_now_seconds() - t0;
    } while (t < MIN_SECONDS);
    return 1e3 * t / (double)n;
}

/* Batches of calls between synchronisations, doubling until a batch takes
 * MIN_SECONDS: launch overhead is part of the cost, sync latency is not. */
static ap_status time_gpu(const job *j, double *ms, ap_err *err) {
    ap_status st = j->gpu(j->u, err);
    if (st == AP_OK) st = ap_cuda_sync(NULL, err);
    for (long n = 1; st == AP_OK; n *= 2) {
        double t0 = ap_now_seconds();
        for (long i = 0; i < n && st == AP_OK; i++) st = j->gpu(j->u, err);
        if (st == AP_OK) st = ap_cuda_sync(NULL, err);
        double t = ap_now_seconds() - t0;
        if (st == AP_OK && (t >= MIN_SECONDS || n >= 1 << 16)) {
            *ms = 1e3 * t / (double)n;
            break;
        }
    }
    return st;
}

static ap_status add_row(table *tb, const char *kernel, const char *shape, int ctx, const job *j,
                         const float *cpu_out, const float *d_out, long n_out, ap_err *err) {
    if (tb->n == MAX_ROWS) return ap_errf(err, AP_ERR_RANGE, "bench-gpu: too many rows");
    brow *r = &tb->rows[tb->n];
    memset(r, 0, sizeof *r);
    snprintf(r->kernel, sizeof r->kernel, "%s", kernel);
    snprintf(r->shape, sizeof r->shape, "%s", shape);
    r->ctx = ctx;
    r->cpu_ms = j->cpu ? time_cpu(j) : 0.0;
    ap_status st = time_gpu(j, &r->gpu_ms, err);
    if (st != AP_OK) return ap_err_prefix(err, kernel);
    r->rel_err = -1.0;
    if (cpu_out && d_out) {
        /* Both sides hold the result of their last call on the same input. */
        float *h = malloc(sizeof(float) * (size_t)n_out);
        if (!h) return ap_errf(err, AP_ERR_NOMEM, "bench-gpu: out of memory");
        st = ap_cuda_to_host(h, d_out, sizeof(float) * (size_t)n_out, NULL, err);
        if (st == AP_OK) st = ap_cuda_sync(NULL, err);
        if (st == AP_OK) r->rel_err = ap_rel_err_f32(h, cpu_out, n_out);
        free(h);
        if (st != AP_OK) return st;
    }
    printf("%-22s %-30s %10.3f %10.4f %9.1fx %10.2e\n", r->kernel, r->shape, r->cpu_ms, r->gpu_ms,
           r->gpu_ms > 0 ? r->cpu_ms / r->gpu_ms : 0.0, r->rel_err);
    fflush(stdout);
    tb->n++;
    return AP_OK;
}

/* rel_err of an in-place kernel from one fresh call on each side. */
static ap_status fresh_err(brow *r, const void *d_out, const float *cpu_out, long n, ap_err *err) {
    float *h = malloc(sizeof(float) * (size_t)n);
    if (!h) return ap_errf(err, AP_ERR_NOMEM, "bench-gpu: out of memory");
    ap_status st = ap_cuda_to_host(h, d_out, sizeof(float) * (size_t)n, NULL, err);
    if (st == AP_OK) st = ap_cuda_sync(NULL, err);
    if (st == AP_OK) {
        r->rel_err = ap_rel_err_f32(h, cpu_out, n);
        printf("%-22s %-30s (%s rel_err, one fresh call: %.2e)\n", "", "", r->kernel, r->rel_err);
    }
    free(h);
    return st;
}

/* ------------------------------------------------------ device arrays */

typedef struct {
    void *p[32];
    int n;
} dpool;

static ap_status dput(dpool *dp, void **d, const void *h, size_t bytes, ap_err *err) {
    if (dp->n == 32) return ap_errf(err, AP_ERR_RANGE, "bench-gpu: too many device arrays");
    ap_status st = h ? ap_cuda_dup(d, h, bytes, err) : ap_cuda_malloc(d, bytes, err);
    if (st == AP_OK && !h) st = ap_cuda_zero(*d, bytes, NULL, err);
    if (st == AP_OK) dp->p[dp->n++] = *d;
    return st;
}

static void dpool_free(dpool *dp) {
    for (int i = 0; i < dp->n; i++) ap_cuda_free(dp->p[i]);
    dp->n = 0;
}

/* ------------------------------------------------- elementwise kernels */

typedef struct {
    int T;
    float *x, *g, *y, *u, *cs, *q;
    void *dx, *dg, *dy, *du, *dcs, *dq;
    int *len;
    void *dlen;
} ew;

static void rms_cpu(void *p) {
    ew *e = p;
    ap_rmsnorm(e->y, N_EMBD, e->x, N_EMBD, e->g, e->T, N_EMBD, 1e-5f);
}
static ap_status rms_gpu(void *p, ap_err *err) {
    ew *e = p;
    return ap_rmsnorm_cuda(e->dy, N_EMBD, e->dx, N_EMBD, e->dg, e->T, N_EMBD, 1e-5f, NULL, err);
}
/* RoPE rotates in place, so each call rotates the previous result: the same
 * work on both sides, and the comparison below uses a fresh single call. */
static void rope_cpu(void *p) {
    ew *e = p;
    ap_rope(e->q, (N_HEAD + N_KV) * HD, e->T, N_HEAD + N_KV, HD, e->cs);
}
static ap_status rope_gpu(void *p, ap_err *err) {
    ew *e = p;
    return ap_rope_cuda(e->dq, (N_HEAD + N_KV) * HD, e->T, N_HEAD + N_KV, HD, e->dcs, NULL, err);
}
static void swiglu_cpu(void *p) {
    ew *e = p;
    ap_swiglu(e->y, N_FF, e->x, N_FF, e->u, N_FF, e->T, N_FF);
}
static ap_status swiglu_gpu(void *p, ap_err *err) {
    ew *e = p;
    return ap_swiglu_cuda(e->dy, N_FF, e->dx, N_FF, e->du, N_FF, e->T, N_FF, NULL, err);
}
/* Softmax works in place too: rows are re-normalised each call (a fixed
 * point after the first), the same work every time. 64 rows of T keys: the
 * prefill rows the predictor's history starts from. */
static void softmax_cpu(void *p) {
    ew *e = p;
    for (int r = 0; r < 64; r++) ap_softmax(e->y + (size_t)r * e->T, e->T);
}
static ap_status softmax_gpu(void *p, ap_err *err) {
    ew *e = p;
    return ap_softmax_rows_cuda(e->dy, (size_t)e->T, 64, e->T, NULL, NULL, err);
}

static ap_status bench_elementwise(table *tb, int T, ap_err *err) {
    ew e;
    memset(&e, 0, sizeof e);
    e.T = T;
    dpool dp = {{0}, 0};
    uint64_t s = 42 + (uint64_t)T;
    size_t nx = (size_t)T * N_FF, nq = (size_t)T * (N_HEAD + N_KV) * HD;
    e.x = malloc(sizeof(float) * nx);
    e.u = malloc(sizeof(float) * nx);
    e.y = malloc(sizeof(float) * nx);
    e.g = malloc(sizeof(float) * N_EMBD);
    e.q = malloc(sizeof(float) * nq);
    e.cs = malloc(sizeof(float) * (size_t)T * HD);
    ap_status st = AP_OK;
    char shape[48];
    if (!e.x || !e.u || !e.y || !e.g || !e.q || !e.cs) {
        st = ap_errf(err, AP_ERR_NOMEM, "bench-gpu: out of memory at %d tokens", T);
        goto done;
    }
    fill(e.x, nx, &s, -3.0f, 3.0f);
    fill(e.u, nx, &s, -1.0f, 1.0f);
    fill(e.g, N_EMBD, &s, 0.5f, 1.5f);
    fill(e.q, nq, &s, -2.0f, 2.0f);
    ap_rope_table(e.cs, 0, T, HD, 10000.0f);
    if ((st = dput(&dp, &e.dx, e.x, sizeof(float) * nx, err)) ||
        (st = dput(&dp, &e.du, e.u, sizeof(float) * nx, err)) ||
        (st = dput(&dp, &e.dy, NULL, sizeof(float) * nx, err)) ||
        (st = dput(&dp, &e.dg, e.g, sizeof(float) * N_EMBD, err)) ||
        (st = dput(&dp, &e.dq, e.q, sizeof(float) * nq, err)) ||
        (st = dput(&dp, &e.dcs, e.cs, sizeof(float) * (size_t)T * HD, err)))
        goto done;

    job j = {rms_cpu, rms_gpu, &e};
    snprintf(shape, sizeof shape, "%dx%d", T, N_EMBD);
    if ((st = add_row(tb, "rmsnorm", shape, T, &j, e.y, e.dy, (long)T * N_EMBD, err))) goto done;

    j = (job){swiglu_cpu, swiglu_gpu, &e};
    snprintf(shape, sizeof shape, "%dx%d", T, N_FF);
    if ((st = add_row(tb, "swiglu", shape, T, &j, e.y, e.dy, (long)T * N_FF, err))) goto done;

    /* rope: time on the running buffers, compare on one fresh call each. */
    j = (job){rope_cpu, rope_gpu, &e};
    snprintf(shape, sizeof shape, "%dx%dx%d", T, N_HEAD + N_KV, HD);
    if ((st = add_row(tb, "rope", shape, T, &j, NULL, NULL, 0, err))) goto done;
    fill(e.q, nq, &s, -2.0f, 2.0f);
    if ((st = ap_cuda_to_device(e.dq, e.q, sizeof(float) * nq, NULL, err)) ||
        (st = rope_gpu(&e, err)))
        goto done;
    rope_cpu(&e);
    if ((st = fresh_err(&tb->rows[tb->n - 1], e.dq, e.q, (long)nq, err))) goto done;

    /* softmax: 64 rows of T logits, in place like RoPE: timed on the running
     * rows, compared on one fresh call from the same logits. */
    fill(e.y, (size_t)64 * T, &s, -8.0f, 8.0f);
    if ((st = ap_cuda_to_device(e.dy, e.y, sizeof(float) * 64 * (size_t)T, NULL, err))) goto done;
    j = (job){softmax_cpu, softmax_gpu, &e};
    snprintf(shape, sizeof shape, "64x%d", T);
    if ((st = add_row(tb, "softmax", shape, T, &j, NULL, NULL, 0, err))) goto done;
    fill(e.y, (size_t)64 * T, &s, -8.0f, 8.0f);
    if ((st = ap_cuda_to_device(e.dy, e.y, sizeof(float) * 64 * (size_t)T, NULL, err)) ||
        (st = softmax_gpu(&e, err)))
        goto done;
    softmax_cpu(&e);
    if ((st = fresh_err(&tb->rows[tb->n - 1], e.dy, e.y, 64L * T, err))) goto done;
done:
    dpool_free(&dp);
    free(e.x);
    free(e.u);
    free(e.y);
    free(e.g);
    free(e.q);
    free(e.cs);
    return st;
}

/* ------------------------------------------------ prefill attention */

typedef struct {
    int T, nvb;
    float *q, *k, *v, *out, *bmax, *bsum, *scratch;
    void *dq, *dk, *dv, *dout, *dbmax, *dbsum;
} pa;

static void pool_row(void *user, int head, int pos, const float *probs, int len) {
    pa *a = user;
    size_t o = ((size_t)head * a->T + pos) * a->nvb;
    ap_block_pool(probs, len, BLK, a->nvb, a->bmax + o, a->bsum + o);
}

/* One GQA group (3 heads), causal over T tokens, with the block views. */
static void prefill_cpu(void *p) {
    pa *a = p;
    ap_attn_args x = {.n_q = a->T,
                      .n_heads = GQA,
                      .pos0 = 0,
                      .head_dim = HD,
                      .scale = 0.125f,
                      .q = a->q,
                      .ldq = GQA * HD,
                      .k = a->k,
                      .v = a->v,
                      .ldkv = HD,
                      .out = a->out,
                      .ldo = GQA * HD,
                      .on_row = pool_row,
                      .user = a};
    ap_attn(&x, a->scratch, 128);
}

static ap_status prefill_gpu(void *p, ap_err *err) {
    pa *a = p;
    ap_attn_cuda_args x = {.n_q = a->T,
                           .n_heads = GQA,
                           .pos0 = 0,
                           .head_dim = HD,
                           .scale = 0.125f,
                           .q = a->dq,
                           .ldq = GQA * HD,
                           .k = a->dk,
                           .v = a->dv,
                           .ldkv = HD,
                           .out = a->dout,
                           .ldo = GQA * HD,
                           .vblock = BLK,
                           .n_vblocks = a->nvb,
                           .bmax = a->dbmax,
                           .bsum = a->dbsum,
                           .view_row_stride = (size_t)a->nvb,
                           .view_head_stride = (size_t)a->T * a->nvb};
    return ap_attn_cuda(&x, NULL, 0, NULL, err);
}

static ap_status bench_prefill(table *tb, int T, ap_err *err) {
    pa a;
    memset(&a, 0, sizeof a);
    a.T = T;
    a.nvb = (T + BLK - 1) / BLK;
    dpool dp = {{0}, 0};
    uint64_t s = 7 + (uint64_t)T;
    size_t nq = (size_t)T * GQA * HD, nkv = (size_t)T * HD, nv = (size_t)GQA * T * a.nvb;
    a.q = malloc(sizeof(float) * nq);
    a.k = malloc(sizeof(float) * nkv);
    a.v = malloc(sizeof(float) * nkv);
    a.out = malloc(sizeof(float) * nq);
    a.bmax = malloc(sizeof(float) * nv);
    a.bsum = malloc(sizeof(float) * nv);
    a.scratch = malloc(sizeof(float) * ap_attn_scratch_floats(128, GQA, T));
    ap_status st = AP_OK;
    if (!a.q || !a.k || !a.v || !a.out || !a.bmax || !a.bsum || !a.scratch) {
        st = ap_errf(err, AP_ERR_NOMEM, "bench-gpu: out of memory for attention at %d", T);
        goto done;
    }
    fill(a.q, nq, &s, -2.0f, 2.0f);
    fill(a.k, nkv, &s, -2.0f, 2.0f);
    fill(a.v, nkv, &s, -1.0f, 1.0f);
    if ((st = dput(&dp, &a.dq, a.q, sizeof(float) * nq, err)) ||
        (st = dput(&dp, &a.dk, a.k, sizeof(float) * nkv, err)) ||
        (st = dput(&dp, &a.dv, a.v, sizeof(float) * nkv, err)) ||
        (st = dput(&dp, &a.dout, NULL, sizeof(float) * nq, err)) ||
        (st = dput(&dp, &a.dbmax, NULL, sizeof(float) * nv, err)) ||
        (st = dput(&dp, &a.dbsum, NULL, sizeof(float) * nv, err)))
        goto done;
    job j = {prefill_cpu, prefill_gpu, &a};
    char shape[48];
    snprintf(shape, sizeof shape, "T=%d, %d heads, +views", T, GQA);
    if ((st = add_row(tb, "attention prefill", shape, T, &j, a.out, a.dout, (long)nq, err)))
        goto done;
    /* The views too (the row above compared the outputs). */
    {
        float *h = malloc(sizeof(float) * nv);
        if (!h) {
            st = ap_errf(err, AP_ERR_NOMEM, "bench-gpu: out of memory");
            goto done;
        }
        st = ap_cuda_to_host(h, a.dbsum, sizeof(float) * nv, NULL, err);
        if (st == AP_OK) st = ap_cuda_sync(NULL, err);
        if (st == AP_OK)
            printf("%-22s %-30s (block_sum rel_err %.2e)\n", "", "",
                   ap_rel_err_f32(h, a.bsum, (long)nv));
        free(h);
    }
done:
    dpool_free(&dp);
    free(a.q);
    free(a.k);
    free(a.v);
    free(a.out);
    free(a.bmax);
    free(a.bsum);
    free(a.scratch);
    return st;
}

/* -------------------------------------------------- decode attention */

typedef struct {
    int n;
    float *q, *k, *v, *out, *scratch;
    void *sscratch;
    ap_sparse_attn_args sp, all;   /* host args (CPU) */
    ap_sparse_attn_args dsp, dall; /* device args */
    void *dq, *dk, *dv, *dout, *dblocks, *doff, *dwork, *dwork_all, *doff_all;
    size_t work, work_all;
} dec;

static void dense_cpu(void *p) {
    dec *d = p;
    for (int g = 0; g < N_KV; g++) {
        ap_attn_args x = {.n_q = 1,
                          .n_heads = GQA,
                          .pos0 = d->n - 1,
                          .head_dim = HD,
                          .scale = 0.125f,
                          .q = d->q + (size_t)g * GQA * HD,
                          .ldq = GQA * HD,
                          .k = d->k + (size_t)g * HD,
                          .v = d->v + (size_t)g * HD,
                          .ldkv = N_KV * HD,
                          .out = d->out + (size_t)g * GQA * HD,
                          .ldo = GQA * HD};
        ap_attn(&x, d->scratch, 1);
    }
}

static ap_status dense_gpu(void *p, ap_err *err) {
    dec *d = p;
    ap_status st = AP_OK;
    for (int g = 0; g < N_KV && st == AP_OK; g++) {
        ap_attn_cuda_args x = {.n_q = 1,
                               .n_heads = GQA,
                               .pos0 = d->n - 1,
                               .head_dim = HD,
                               .scale = 0.125f,
                               .q = (float *)d->dq + (size_t)g * GQA * HD,
                               .ldq = GQA * HD,
                               .k = (float *)d->dk + (size_t)g * HD,
                               .v = (float *)d->dv + (size_t)g * HD,
                               .ldkv = N_KV * HD,
                               .out = (float *)d->dout + (size_t)g * GQA * HD,
                               .ldo = GQA * HD};
        st = ap_attn_cuda(&x, NULL, 0, NULL, err);
    }
    return st;
}

static ap_status dense_split_gpu(void *p, ap_err *err) {
    dec *d = p;
    return ap_sparse_attn_cuda(&d->dall, d->dwork_all, d->work_all, NULL, err);
}

static void sparse_cpu(void *p) {
    dec *d = p;
    ap_err err;
    /* Validated once in bench_decode; a failure here would be a bug. */
    if (ap_sparse_attn(&d->sp, d->sscratch, &err) != AP_OK) abort();
}

static ap_status sparse_gpu(void *p, ap_err *err) {
    dec *d = p;
    return ap_sparse_attn_cuda(&d->dsp, d->dwork, d->work, NULL, err);
}

static ap_status bench_decode(table *tb, int n, ap_err *err) {
    dec d;
    memset(&d, 0, sizeof d);
    d.n = n;
    dpool dp = {{0}, 0};
    uint64_t s = 99;
    const int nb = (n + BLK - 1) / BLK, sink = 64, local = 64, units = N_HEAD;
    /* 56 blocks (the 1,024-token budget) where the context has room for
     * them between the sink and the local window, fewer below ~8K keys. */
    const int pick = (nb - 16) / 8 < 56 ? (nb - 16) / 8 : 56;
    size_t nq = (size_t)N_HEAD * HD, nkv = (size_t)n * N_KV * HD;
    int *blocks = malloc(sizeof(int) * (size_t)units * (pick > 0 ? pick : 1));
    int off[N_HEAD + 1], off_all[N_KV + 1] = {0};
    d.q = malloc(sizeof(float) * nq);
    d.k = malloc(sizeof(float) * nkv);
    d.v = malloc(sizeof(float) * nkv);
    d.out = malloc(sizeof(float) * nq);
    d.scratch = malloc(sizeof(float) * ap_attn_scratch_floats(1, GQA, n));
    ap_status st = AP_OK;
    if (!blocks || !d.q || !d.k || !d.v || !d.out || !d.scratch) {
        st = ap_errf(err, AP_ERR_NOMEM, "bench-gpu: out of memory for decode at %d", n);
        goto done;
    }
    fill(d.q, nq, &s, -2.0f, 2.0f);
    fill(d.k, nkv, &s, -2.0f, 2.0f);
    fill(d.v, nkv, &s, -1.0f, 1.0f);
    /* 56 distinct blocks per head between the sink and the local window,
     * sorted: every 8th block from a per-head offset. */
    for (int u = 0; u < units; u++) {
        off[u] = u * pick;
        for (int i = 0; i < pick; i++) blocks[u * pick + i] = 4 + (u % 8) + 8 * i;
    }
    off[units] = units * pick;
    d.sp = (ap_sparse_attn_args){.n_groups = N_KV,
                                 .n_heads = GQA,
                                 .head_dim = HD,
                                 .n_keys = n,
                                 .scale = 0.125f,
                                 .q = d.q,
                                 .k = d.k,
                                 .v = d.v,
                                 .ldkv = N_KV * HD,
                                 .group_stride = HD,
                                 .out = d.out,
                                 .block = BLK,
                                 .sink = sink,
                                 .local = local,
                                 .per_q_head = 1,
                                 .blocks = blocks,
                                 .set_off = off};
    d.sscratch = malloc(ap_sparse_attn_scratch_bytes(&d.sp));
    if (!d.sscratch) {
        st = ap_errf(err, AP_ERR_NOMEM, "bench-gpu: out of memory");
        goto done;
    }
    if ((st = ap_sparse_attn_validate(&d.sp, 1, err))) goto done;
    if ((st = dput(&dp, &d.dq, d.q, sizeof(float) * nq, err)) ||
        (st = dput(&dp, &d.dk, d.k, sizeof(float) * nkv, err)) ||
        (st = dput(&dp, &d.dv, d.v, sizeof(float) * nkv, err)) ||
        (st = dput(&dp, &d.dout, NULL, sizeof(float) * nq, err)) ||
        (st = dput(&dp, &d.dblocks, blocks, sizeof(int) * (size_t)units * pick, err)) ||
        (st = dput(&dp, &d.doff, off, sizeof off, err)) ||
        (st = dput(&dp, &d.doff_all, off_all, sizeof off_all, err)))
        goto done;
    d.dsp = d.sp;
    d.dsp.q = d.dq;
    d.dsp.k = d.dk;
    d.dsp.v = d.dv;
    d.dsp.out = d.dout;
    d.dsp.blocks = d.dblocks;
    d.dsp.set_off = d.doff;
    d.work = ap_sparse_attn_cuda_work_bytes(&d.dsp);
    /* Dense through the split kernel: everything in the sink, no lists. */
    d.dall = d.dsp;
    d.dall.sink = n;
    d.dall.local = 0;
    d.dall.per_q_head = 0;
    d.dall.blocks = NULL;
    d.dall.set_off = d.doff_all;
    d.work_all = ap_sparse_attn_cuda_work_bytes(&d.dall);
    if ((st = dput(&dp, &d.dwork, NULL, d.work, err)) ||
        (st = dput(&dp, &d.dwork_all, NULL, d.work_all, err)))
        goto done;

    char shape[48];
    snprintf(shape, sizeof shape, "%d keys, %d heads, all", n, N_HEAD);
    job j = {dense_cpu, dense_gpu, &d};
    if ((st = add_row(tb, "decode dense", shape, n, &j, d.out, d.dout, (long)nq, err))) goto done;
    j = (job){dense_cpu, dense_split_gpu, &d};
    if ((st = add_row(tb, "decode dense (split)", shape, n, &j, d.out, d.dout, (long)nq, err)))
        goto done;
    snprintf(shape, sizeof shape, "%d keys, %d heads, %d kept", n, N_HEAD,
             sink + local + BLK * pick);
    j = (job){sparse_cpu, sparse_gpu, &d};
    if ((st = add_row(tb, "decode sparse", shape, n, &j, d.out, d.dout, (long)nq, err))) goto done;
    {
        const brow *r = &tb->rows[tb->n - 3];
        printf("# decode at %d keys, sparse (%d of %d keys) vs dense: CPU %.2fx faster, GPU %.2fx "
               "vs per-group dense, %.2fx vs split dense\n",
               n, sink + local + BLK * pick, n, r[0].cpu_ms / r[2].cpu_ms,
               r[0].gpu_ms / r[2].gpu_ms, r[1].gpu_ms / r[2].gpu_ms);
    }
done:
    dpool_free(&dp);
    free(blocks);
    free(d.q);
    free(d.k);
    free(d.v);
    free(d.out);
    free(d.scratch);
    free(d.sscratch);
    return st;
}

/* ------------------------------------------------------------- main */

static ap_status write_json(const char *path, const char *device, const table *tb, ap_err *err) {
    char tmp[4096];
    ap_tmp_name(tmp, sizeof tmp, path);
    FILE *f = fopen(tmp, "w");
    if (!f) return ap_errf(err, AP_ERR_IO, "%s: cannot create %s", path, tmp);
    fprintf(f, "{\n  \"device\": \"%s\",\n  \"cpu_threads\": 1,\n  \"rows\": [\n", device);
    for (int i = 0; i < tb->n; i++) {
        const brow *r = &tb->rows[i];
        fprintf(f,
                "    {\"kernel\": \"%s\", \"shape\": \"%s\", \"ctx\": %d, \"cpu_ms\": %.6g, "
                "\"gpu_ms\": %.6g, \"speedup\": %.6g, \"rel_err\": %.3g}%s\n",
                r->kernel, r->shape, r->ctx, r->cpu_ms, r->gpu_ms,
                r->gpu_ms > 0 ? r->cpu_ms / r->gpu_ms : 0.0, r->rel_err, i + 1 < tb->n ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    if (fclose(f) != 0) {
        remove(tmp);
        return ap_errf(err, AP_ERR_IO, "%s: write failed", tmp);
    }
    ap_status st = ap_commit_file(tmp, path, err);
    if (st != AP_OK) remove(tmp);
    return st;
}

static void usage(FILE *out) {
    fprintf(out, "usage: bench-gpu [--contexts 1024,4096,8192] [--json OUT.json]\n"
                 "CUDA kernels vs their CPU versions (one thread), and sparse vs dense decode\n"
                 "attention at the largest context. Without a CUDA device: prints a skip line\n"
                 "and exits 0.\n");
}

int main(int argc, char **argv) {
    const char *json_path = NULL;
    char contexts_arg[256] = "1024,4096,8192";
    static const struct option opts[] = {
        {"contexts", 1, 0, 'c'}, {"json", 1, 0, 'j'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "c:j:h", opts, NULL)) != -1;) {
        switch (c) {
        case 'c': snprintf(contexts_arg, sizeof contexts_arg, "%s", optarg); break;
        case 'j': json_path = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    int ctx[8], n_ctx = 0;
    for (char *save = NULL, *t = strtok_r(contexts_arg, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        int v = atoi(t);
        if (n_ctx == 8 || v < 1024 || v > 1 << 17) {
            fprintf(stderr, "bench-gpu: bad context '%s' (1024..131072, at most 8)\n", t);
            return 2;
        }
        ctx[n_ctx++] = v;
    }
    if (n_ctx == 0) {
        fprintf(stderr, "bench-gpu: no contexts\n");
        return 2;
    }
    if (ap_cuda_device_count() == 0) {
        printf("no CUDA device: skipped\n");
        return 0;
    }
    openblas_set_num_threads(1);
    ap_err err;
    ap_err_clear(&err);
    char device[256];
    if (ap_cuda_device_name(device, sizeof device, &err)) {
        fprintf(stderr, "bench-gpu: %s\n", err.msg);
        return 1;
    }
    printf("# bench-gpu on %s; CPU side one thread; speedup = cpu_ms / gpu_ms\n", device);
    printf("%-22s %-30s %10s %10s %10s %10s\n", "kernel", "shape", "cpu_ms", "gpu_ms", "speedup",
           "rel_err");
    table tb;
    memset(&tb, 0, sizeof tb);
    ap_status st = AP_OK;
    for (int i = 0; i < n_ctx && st == AP_OK; i++) st = bench_elementwise(&tb, ctx[i], &err);
    for (int i = 0; i < n_ctx && st == AP_OK; i++) st = bench_prefill(&tb, ctx[i], &err);
    if (st == AP_OK) st = bench_decode(&tb, ctx[n_ctx - 1], &err);
    if (st == AP_OK && json_path) st = write_json(json_path, device, &tb, &err);
    if (st != AP_OK) {
        fprintf(stderr, "bench-gpu: %s\n", err.msg);
        return 1;
    }
    printf("# rel_err tolerance for GPU vs CPU (tests): %.0e\n", AP_TOL_CPU_GPU_REL);
    return 0;
}
