/* Sparse decode attention: the CPU version against the dense ap_attn (kept
 * set = everything), against its float64 reference on random kept sets, on
 * the token-exact edge cases (sink/local overlapping listed blocks, partial
 * last block, GQA list sharing, paged K/V), its argument checks, and the
 * CUDA version against the CPU (skipped visibly without a GPU). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/tolerance.h"
#include "kernels/attention.h"
#include "kernels/block_pool.h"
#include "kernels/cuda_util.h"
#include "kernels/qmatvec.h"
#include "kernels/sparse_attn.h"

/* ap_rel_err_f32, except that a NaN or Inf where the reference is finite
 * counts as an infinite error (its max loses a NaN unless it comes last). */
static double rel_err(const float *a, const float *b, long n) {
    for (long i = 0; i < n; i++)
        if (isfinite(b[i]) && !isfinite(a[i])) return INFINITY;
    return ap_rel_err_f32(a, b, n);
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double urand(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

static void fill(float *x, size_t n, uint64_t *s, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)urand(s);
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    cr_assert(p, "out of memory");
    return p;
}

/* ------------------------------------------------------------ fixtures */

typedef struct {
    int n_groups, G, hd, n, B, sink, local, per_q, measure, paged;
    double p_keep; /* chance that a block is listed */
} scase;

/* A problem: K/V in the engine's layout (row j holds every group, group g
 * at +g*hd, a padded row stride), the same rows in a "cold store" with the
 * blocks shuffled (for the paged layout), queries and kept lists. */
typedef struct {
    scase c;
    size_t ldkv;
    int nb, units, n_sets;
    float scale;
    float *q, *k, *v, *store_k, *store_v;
    int *perm;              /* block b lives at store block perm[b] */
    const float **kp, **vp; /* [n_groups][nb] pages into the store */
    int *blocks, *set_off;
} sprob;

typedef struct {
    float *out, *bmax, *bsum, *km, *dbmax, *dbsum;
    int *nk;
    size_t ldb;
} souts;

static int listed_in(const sprob *P, int s, int b) {
    for (int i = P->set_off[s]; i < P->set_off[s + 1]; i++)
        if (P->blocks[i] == b) return 1;
    return 0;
}

/* The test's own kept test for key j of set s (independent of the library). */
static int kept_key(const sprob *P, int s, int j) {
    const scase *c = &P->c;
    return j < c->sink || j >= c->n - c->local || listed_in(P, s, j / c->B);
}

static void sprob_lists(sprob *P, uint64_t *seed) {
    const scase *c = &P->c;
    P->set_off = xcalloc((size_t)P->n_sets + 1, sizeof(int));
    P->blocks = xcalloc((size_t)P->n_sets * P->nb + 1, sizeof(int));
    int at = 0;
    for (int s = 0; s < P->n_sets; s++) {
        P->set_off[s] = at;
        for (int b = 0; b < P->nb; b++)
            if (urand(seed) < c->p_keep) P->blocks[at++] = b;
        if (at == P->set_off[s] && c->sink == 0 && c->local == 0)
            P->blocks[at++] = (int)(rng_next(seed) % (uint64_t)P->nb);
    }
    P->set_off[P->n_sets] = at;
}

/* Pages into the shuffled store; a page no set of its group keeps stays
 * NULL unless measure mode reads every key, so a stray read would crash. */
static void sprob_pages(sprob *P) {
    const scase *c = &P->c;
    for (int g = 0; g < c->n_groups; g++)
        for (int b = 0; b < P->nb; b++) {
            int need = c->measure;
            int s0 = c->per_q ? g * c->G : g, s1 = c->per_q ? s0 + c->G : g + 1;
            for (int s = s0; s < s1 && !need; s++)
                for (int j = b * c->B; j < (b + 1) * c->B && j < c->n && !need; j++)
                    need = kept_key(P, s, j);
            size_t at = (size_t)P->perm[b] * c->B * P->ldkv + (size_t)g * c->hd;
            P->kp[(size_t)g * P->nb + b] = need ? P->store_k + at : NULL;
            P->vp[(size_t)g * P->nb + b] = need ? P->store_v + at : NULL;
        }
}

static void sprob_make(sprob *P, const scase *c, uint64_t seed) {
    memset(P, 0, sizeof *P);
    P->c = *c;
    P->ldkv = (size_t)c->n_groups * c->hd + 3;
    P->nb = (c->n + c->B - 1) / c->B;
    P->units = c->n_groups * c->G;
    P->n_sets = c->per_q ? P->units : c->n_groups;
    P->scale = 1.0f / sqrtf((float)c->hd);
    size_t rows = (size_t)P->nb * c->B; /* whole blocks, so the store can hold any block */
    P->q = xcalloc((size_t)P->units * c->hd, sizeof(float));
    P->k = xcalloc(rows * P->ldkv, sizeof(float));
    P->v = xcalloc(rows * P->ldkv, sizeof(float));
    fill(P->q, (size_t)P->units * c->hd, &seed, -2.0f, 2.0f);
    fill(P->k, (size_t)c->n * P->ldkv, &seed, -2.0f, 2.0f);
    fill(P->v, (size_t)c->n * P->ldkv, &seed, -1.0f, 1.0f);
    P->perm = xcalloc((size_t)P->nb, sizeof(int));
    for (int b = 0; b < P->nb; b++) P->perm[b] = b;
    for (int b = P->nb - 1; b > 0; b--) {
        int r = (int)(rng_next(&seed) % (uint64_t)(b + 1)), t = P->perm[b];
        P->perm[b] = P->perm[r];
        P->perm[r] = t;
    }
    P->store_k = xcalloc(rows * P->ldkv, sizeof(float));
    P->store_v = xcalloc(rows * P->ldkv, sizeof(float));
    for (int b = 0; b < P->nb; b++) {
        size_t from = (size_t)b * c->B * P->ldkv, to = (size_t)P->perm[b] * c->B * P->ldkv;
        memcpy(P->store_k + to, P->k + from, (size_t)c->B * P->ldkv * sizeof(float));
        memcpy(P->store_v + to, P->v + from, (size_t)c->B * P->ldkv * sizeof(float));
    }
    P->kp = xcalloc((size_t)c->n_groups * P->nb, sizeof(float *));
    P->vp = xcalloc((size_t)c->n_groups * P->nb, sizeof(float *));
    sprob_lists(P, &seed);
    sprob_pages(P);
}

static void sprob_free(sprob *P) {
    free(P->q);
    free(P->k);
    free(P->v);
    free(P->store_k);
    free(P->store_v);
    free(P->perm);
    free(P->kp);
    free(P->vp);
    free(P->blocks);
    free(P->set_off);
}

static void souts_alloc(souts *o, const sprob *P) {
    memset(o, 0, sizeof *o);
    o->ldb = (size_t)P->nb + 2;
    size_t u = (size_t)P->units;
    o->out = xcalloc(u * P->c.hd, sizeof(float));
    o->bmax = xcalloc(u * o->ldb, sizeof(float));
    o->bsum = xcalloc(u * o->ldb, sizeof(float));
    o->km = xcalloc(u, sizeof(float));
    o->dbmax = xcalloc(u * o->ldb, sizeof(float));
    o->dbsum = xcalloc(u * o->ldb, sizeof(float));
    o->nk = xcalloc(u, sizeof(int));
}

static void souts_free(souts *o) {
    free(o->out);
    free(o->bmax);
    free(o->bsum);
    free(o->km);
    free(o->dbmax);
    free(o->dbsum);
    free(o->nk);
}

static ap_sparse_attn_args sargs(const sprob *P, souts *o) {
    const scase *c = &P->c;
    ap_sparse_attn_args a = {.n_groups = c->n_groups,
                             .n_heads = c->G,
                             .head_dim = c->hd,
                             .n_keys = c->n,
                             .scale = P->scale,
                             .q = P->q,
                             .ldkv = P->ldkv,
                             .group_stride = (size_t)c->hd,
                             .out = o->out,
                             .block = c->B,
                             .sink = c->sink,
                             .local = c->local,
                             .per_q_head = c->per_q,
                             .blocks = P->blocks,
                             .set_off = P->set_off,
                             .n_kept = o->nk,
                             .bmax = o->bmax,
                             .bsum = o->bsum,
                             .ldb = o->ldb};
    if (c->paged) {
        a.k_pages = (const void *const *)P->kp;
        a.v_pages = (const void *const *)P->vp;
    } else {
        a.k = P->k;
        a.v = P->v;
    }
    if (c->measure) {
        a.kept_mass = o->km;
        a.dense_bmax = o->dbmax;
        a.dense_bsum = o->dbsum;
    }
    return a;
}

static ap_status run_cpu(const ap_sparse_attn_args *a, ap_err *err) {
    void *scratch = xcalloc(ap_sparse_attn_scratch_bytes(a), 1);
    ap_status st = ap_sparse_attn(a, scratch, err);
    free(scratch);
    return st;
}

/* Compare two output sets of one problem within tol (n_kept exactly). */
static void expect_outs_close(const sprob *P, const souts *x, const souts *ref, double tol,
                              const char *what) {
    size_t u = (size_t)P->units;
    double e = rel_err(x->out, ref->out, (long)(u * P->c.hd));
    cr_expect(e <= tol, "%s: output rel err %.3g", what, e);
    e = rel_err(x->bmax, ref->bmax, (long)(u * x->ldb));
    cr_expect(e <= tol, "%s: block_max rel err %.3g", what, e);
    e = rel_err(x->bsum, ref->bsum, (long)(u * x->ldb));
    cr_expect(e <= tol, "%s: block_sum rel err %.3g", what, e);
    for (size_t i = 0; i < u; i++)
        cr_expect_eq(x->nk[i], ref->nk[i], "%s: head %zu keeps %d keys, reference %d", what, i,
                     x->nk[i], ref->nk[i]);
    if (!P->c.measure) return;
    e = rel_err(x->km, ref->km, (long)u);
    cr_expect(e <= tol, "%s: kept mass rel err %.3g", what, e);
    e = rel_err(x->dbmax, ref->dbmax, (long)(u * x->ldb));
    cr_expect(e <= tol, "%s: dense block_max rel err %.3g", what, e);
    e = rel_err(x->dbsum, ref->dbsum, (long)(u * x->ldb));
    cr_expect(e <= tol, "%s: dense block_sum rel err %.3g", what, e);
}

/* ------------------------------------------------- dense ap_attn oracle */

typedef struct {
    float *rows; /* [G][n] probabilities of the decode row */
    int n;
} dense_rows;

static void keep_row(void *user, int head, int pos, const float *probs, int len) {
    dense_rows *d = user;
    memcpy(d->rows + (size_t)head * d->n, probs, (size_t)len * sizeof(float));
}

/* ap_attn's decode row for group g: output [G][hd] and the rows. */
static void dense_decode(const sprob *P, int g, float *out, dense_rows *d) {
    const scase *c = &P->c;
    ap_attn_args a = {.n_q = 1,
                      .n_heads = c->G,
                      .pos0 = c->n - 1,
                      .head_dim = c->hd,
                      .scale = P->scale,
                      .q = P->q + (size_t)g * c->G * c->hd,
                      .ldq = (size_t)c->G * c->hd,
                      .k = P->k + (size_t)g * c->hd,
                      .v = P->v + (size_t)g * c->hd,
                      .ldkv = P->ldkv,
                      .out = out,
                      .ldo = (size_t)c->G * c->hd,
                      .on_row = keep_row,
                      .user = d};
    float *scratch = xcalloc(ap_attn_scratch_floats(64, c->G, c->n), sizeof(float));
    ap_attn(&a, scratch, 64);
    free(scratch);
}

/* ---------------------------------------------------------------- tests */

Test(sparse_attn, full_kept_set_matches_dense_attention) {
    static const struct {
        int G, hd, n;
    } cases[] = {{1, 64, 1},   {3, 64, 2},    {3, 64, 17},  {1, 7, 100},
                 {2, 24, 333}, {3, 64, 1000}, {3, 64, 4099}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        /* Everything kept two ways: the sink covering all keys, and every
         * block listed with no sink or local window. */
        for (int how = 0; how < 2; how++) {
            scase c = {.n_groups = 1,
                       .G = cases[ci].G,
                       .hd = cases[ci].hd,
                       .n = cases[ci].n,
                       .B = 16,
                       .sink = how == 0 ? cases[ci].n : 0,
                       .measure = 1,
                       .p_keep = how == 0 ? 0.0 : 1.0};
            sprob P;
            sprob_make(&P, &c, 100 + ci);
            souts o;
            souts_alloc(&o, &P);
            ap_sparse_attn_args a = sargs(&P, &o);
            ap_err err = {0};
            cr_assert_eq(run_cpu(&a, &err), AP_OK, "%s", err.msg);

            float *dout = xcalloc((size_t)c.G * c.hd, sizeof(float));
            dense_rows d = {xcalloc((size_t)c.G * c.n, sizeof(float)), c.n};
            dense_decode(&P, 0, dout, &d);
            double e = rel_err(o.out, dout, (long)c.G * c.hd);
            cr_expect(e <= AP_TOL_KERNEL_REL,
                      "G=%d hd=%d n=%d how=%d: output rel err %.3g vs "
                      "ap_attn",
                      c.G, c.hd, c.n, how, e);
            float *mx = xcalloc(o.ldb, sizeof(float)), *sm = xcalloc(o.ldb, sizeof(float));
            for (int h = 0; h < c.G; h++) {
                ap_block_pool(d.rows + (size_t)h * c.n, c.n, c.B, (int)o.ldb, mx, sm);
                e = rel_err(o.bmax + h * o.ldb, mx, (long)o.ldb);
                cr_expect(e <= AP_TOL_KERNEL_REL, "n=%d head %d: block_max rel err %.3g", c.n, h,
                          e);
                e = rel_err(o.bsum + h * o.ldb, sm, (long)o.ldb);
                cr_expect(e <= AP_TOL_KERNEL_REL, "n=%d head %d: block_sum rel err %.3g", c.n, h,
                          e);
                e = rel_err(o.dbsum + h * o.ldb, sm, (long)o.ldb);
                cr_expect(e <= AP_TOL_KERNEL_REL, "n=%d head %d: dense block_sum rel err %.3g", c.n,
                          h, e);
                cr_expect(fabs(o.km[h] - 1.0) <= AP_TOL_KERNEL_REL, "n=%d head %d: kept mass %.9g",
                          c.n, h, o.km[h]);
                cr_expect_eq(o.nk[h], c.n, "n=%d head %d: %d keys kept", c.n, h, o.nk[h]);
            }
            free(mx);
            free(sm);
            free(dout);
            free(d.rows);
            souts_free(&o);
            sprob_free(&P);
        }
    }
}

Test(sparse_attn, random_kept_sets_match_reference) {
    static const scase cases[] = {
        /* groups, G, hd, n, B, sink, local, per_q, measure, paged, p_keep */
        {1, 1, 64, 1, 16, 0, 1, 0, 1, 0, 0.0},        {2, 3, 64, 1000, 16, 64, 64, 0, 1, 0, 0.1},
        {2, 3, 64, 1000, 16, 64, 64, 1, 1, 0, 0.1},   {3, 3, 64, 8192, 16, 64, 64, 1, 0, 0, 0.05},
        {1, 4, 7, 257, 16, 5, 3, 1, 1, 0, 0.3},       {2, 2, 40, 300, 8, 0, 17, 0, 1, 1, 0.4},
        {1, 3, 64, 95, 16, 20, 40, 1, 1, 1, 0.5},     {1, 2, 16, 50, 1, 2, 2, 1, 1, 0, 0.2},
        {1, 3, 64, 4000, 64, 100, 30, 0, 0, 1, 0.02}, {2, 3, 64, 777, 16, 0, 0, 1, 0, 1, 0.15},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        sprob P;
        sprob_make(&P, &cases[ci], 7 + ci);
        souts o, r;
        souts_alloc(&o, &P);
        souts_alloc(&r, &P);
        ap_sparse_attn_args a = sargs(&P, &o), ar = sargs(&P, &r);
        ap_err err = {0};
        cr_assert_eq(run_cpu(&a, &err), AP_OK, "case %zu: %s", ci, err.msg);
        cr_assert_eq(ap_sparse_attn_ref(&ar, &err), AP_OK, "case %zu: %s", ci, err.msg);
        char what[32];
        snprintf(what, sizeof what, "case %zu", ci);
        expect_outs_close(&P, &o, &r, AP_TOL_KERNEL_REL, what);
        /* The test's own count of kept keys. */
        for (int u = 0; u < P.units; u++) {
            int s = P.c.per_q ? u : u / P.c.G, cnt = 0;
            for (int j = 0; j < P.c.n; j++) cnt += kept_key(&P, s, j);
            cr_expect_eq(o.nk[u], cnt, "case %zu head %d: %d kept, expected %d", ci, u, o.nk[u],
                         cnt);
        }
        souts_free(&o);
        souts_free(&r);
        sprob_free(&P);
    }
}

/* The same problems over a binary16 cache (contiguous and paged): the
 * kernels convert on load, the reference converts each row in its own
 * loop; both then see the same values, so the kernel tolerance holds. */
Test(sparse_attn, f16_cache_matches_reference) {
    static const scase cases[] = {
        {2, 3, 64, 1000, 16, 64, 64, 1, 1, 0, 0.1}, {3, 3, 64, 8192, 16, 64, 64, 1, 0, 0, 0.05},
        {2, 2, 40, 300, 8, 0, 17, 0, 1, 1, 0.4},    {2, 3, 64, 777, 16, 0, 0, 1, 0, 1, 0.15},
        {1, 4, 24, 257, 16, 16, 3, 0, 0, 0, 0.3},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        sprob P;
        sprob_make(&P, &cases[ci], 70 + ci);
        const size_t elts = (size_t)P.nb * P.c.B * P.ldkv, np = (size_t)P.c.n_groups * P.nb;
        uint16_t *kh = xcalloc(elts, 2), *vh = xcalloc(elts, 2);
        uint16_t *skh = xcalloc(elts, 2), *svh = xcalloc(elts, 2);
        ap_kv_store_row(kh, AP_KV_F16, P.k, elts, AP_QISA_AUTO);
        ap_kv_store_row(vh, AP_KV_F16, P.v, elts, AP_QISA_AUTO);
        ap_kv_store_row(skh, AP_KV_F16, P.store_k, elts, AP_QISA_AUTO);
        ap_kv_store_row(svh, AP_KV_F16, P.store_v, elts, AP_QISA_AUTO);
        const void **kp = xcalloc(np, sizeof *kp), **vp = xcalloc(np, sizeof *vp);
        for (size_t i = 0; i < np; i++) {
            kp[i] = P.kp[i] ? (const void *)(skh + (P.kp[i] - P.store_k)) : NULL;
            vp[i] = P.vp[i] ? (const void *)(svh + (P.vp[i] - P.store_v)) : NULL;
        }
        souts o, r;
        souts_alloc(&o, &P);
        souts_alloc(&r, &P);
        ap_sparse_attn_args a = sargs(&P, &o), ar = sargs(&P, &r);
        a.kv_type = ar.kv_type = AP_KV_F16;
        if (P.c.paged) {
            a.k_pages = ar.k_pages = kp;
            a.v_pages = ar.v_pages = vp;
        } else {
            a.k = ar.k = kh;
            a.v = ar.v = vh;
        }
        ap_err err = {0};
        cr_assert_eq(run_cpu(&a, &err), AP_OK, "case %zu: %s", ci, err.msg);
        cr_assert_eq(ap_sparse_attn_ref(&ar, &err), AP_OK, "case %zu: %s", ci, err.msg);
        char what[32];
        snprintf(what, sizeof what, "f16 case %zu", ci);
        expect_outs_close(&P, &o, &r, AP_TOL_KERNEL_REL, what);
        /* And binary16 is really what was read: the float32 result on the
         * original values differs by about the rounding, not by zero. */
        souts f;
        souts_alloc(&f, &P);
        ap_sparse_attn_args af = sargs(&P, &f);
        cr_assert_eq(run_cpu(&af, &err), AP_OK, "case %zu: %s", ci, err.msg);
        double e = rel_err(o.out, f.out, (long)((size_t)P.units * P.c.hd));
        cr_expect(e > 0.0 && e < 1e-2, "f16 case %zu: f16 vs f32 output rel err %.3g", ci, e);
        souts_free(&f);
        souts_free(&o);
        souts_free(&r);
        free(kp);
        free(vp);
        free(kh);
        free(vh);
        free(skh);
        free(svh);
        sprob_free(&P);
    }
}

/* Same problem, kept set written two ways. */
static void run_with(sprob *P, souts *o, int sink, int local, const int *lst, int len) {
    P->c.sink = sink;
    P->c.local = local;
    for (int s = 0; s < P->n_sets; s++) {
        P->set_off[s] = s * len;
        for (int i = 0; i < len; i++) P->blocks[s * len + i] = lst[i];
    }
    P->set_off[P->n_sets] = P->n_sets * len;
    ap_sparse_attn_args a = sargs(P, o);
    ap_err err = {0};
    cr_assert_eq(run_cpu(&a, &err), AP_OK, "%s", err.msg);
}

Test(sparse_attn, sink_and_local_overlapping_blocks_count_once) {
    /* n = 100, blocks of 16: sink 20 overlaps listed blocks 0 and 1, the
     * local window [60, 100) overlaps listed blocks 4..6 and half of block 3.
     * Kept keys: [0, 32) and [60, 100) = 72, the same set as sink 32 +
     * local 40 with nothing listed. */
    scase c = {.n_groups = 2, .G = 3, .hd = 64, .n = 100, .B = 16, .per_q = 0, .measure = 1};
    sprob P;
    sprob_make(&P, &c, 5);
    souts o1, o2;
    souts_alloc(&o1, &P);
    souts_alloc(&o2, &P);
    const int lst[] = {0, 1, 4, 5, 6};
    run_with(&P, &o1, 20, 40, lst, 5);
    run_with(&P, &o2, 32, 40, NULL, 0);
    for (int u = 0; u < P.units; u++) {
        cr_expect_eq(o1.nk[u], 72, "head %d keeps %d keys", u, o1.nk[u]);
        double tot = 0.0;
        for (size_t b = 0; b < o1.ldb; b++) tot += o1.bsum[u * o1.ldb + b];
        cr_expect(fabs(tot - 1.0) <= AP_TOL_KERNEL_REL, "head %d: sparse row sums to %.9g", u, tot);
        /* Block 3 (keys 48..63) holds only keys 60..63; block 2 nothing. */
        cr_expect(o1.bsum[u * o1.ldb + 2] == 0.0f && o1.bsum[u * o1.ldb + 3] > 0.0f);
    }
    expect_outs_close(&P, &o1, &o2, AP_TOL_KERNEL_REL, "overlap vs disjoint");
    /* Sink and local each covering everything: every key once. */
    run_with(&P, &o1, 105, 130, lst, 5);
    for (int u = 0; u < P.units; u++) cr_expect_eq(o1.nk[u], 100, "head %d keeps %d", u, o1.nk[u]);
    souts_free(&o1);
    souts_free(&o2);
    sprob_free(&P);
}

Test(sparse_attn, partial_last_block) {
    /* n = 83: block 5 holds keys 80..82 only. */
    scase c = {.n_groups = 1, .G = 2, .hd = 32, .n = 83, .B = 16, .per_q = 1, .measure = 1};
    sprob P;
    sprob_make(&P, &c, 9);
    souts o, r;
    souts_alloc(&o, &P);
    souts_alloc(&r, &P);
    const int lst[] = {5};
    run_with(&P, &o, 0, 0, lst, 1);
    ap_sparse_attn_args ar = sargs(&P, &r);
    ap_err err = {0};
    cr_assert_eq(ap_sparse_attn_ref(&ar, &err), AP_OK, "%s", err.msg);
    expect_outs_close(&P, &o, &r, AP_TOL_KERNEL_REL, "partial block");
    for (int u = 0; u < P.units; u++) {
        cr_expect_eq(o.nk[u], 3);
        cr_expect(fabs(o.bsum[u * o.ldb + 5] - 1.0) <= AP_TOL_KERNEL_REL);
        for (int b = 0; b < 5; b++) cr_expect_eq(o.bsum[u * o.ldb + b], 0.0f);
        /* The output is a convex mix of the three kept values: inside their
         * range in every dimension. */
        for (int d = 0; d < c.hd; d++) {
            float lo = INFINITY, hi = -INFINITY;
            for (int j = 80; j < 83; j++) {
                float v = P.v[(size_t)j * P.ldkv + d];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
            float y = o.out[(size_t)u * c.hd + d];
            cr_expect(y >= lo - 1e-6f && y <= hi + 1e-6f, "head %d dim %d: %g outside [%g, %g]", u,
                      d, y, lo, hi);
        }
    }
    souts_free(&o);
    souts_free(&r);
    sprob_free(&P);
}

Test(sparse_attn, group_list_equals_per_head_lists) {
    scase cg = {.n_groups = 3,
                .G = 3,
                .hd = 64,
                .n = 2000,
                .B = 16,
                .sink = 64,
                .local = 64,
                .per_q = 0,
                .measure = 1,
                .p_keep = 0.1};
    sprob Pg;
    sprob_make(&Pg, &cg, 21);
    /* The same problem with each group's list repeated for its heads. */
    scase ch = cg;
    ch.per_q = 1;
    sprob Ph;
    sprob_make(&Ph, &ch, 21);
    int at = 0;
    for (int u = 0; u < Ph.units; u++) {
        int g = u / cg.G;
        Ph.set_off[u] = at;
        for (int i = Pg.set_off[g]; i < Pg.set_off[g + 1]; i++) Ph.blocks[at++] = Pg.blocks[i];
    }
    Ph.set_off[Ph.units] = at;
    souts og, oh;
    souts_alloc(&og, &Pg);
    souts_alloc(&oh, &Ph);
    ap_sparse_attn_args a = sargs(&Pg, &og), b = sargs(&Ph, &oh);
    ap_err err = {0};
    cr_assert_eq(run_cpu(&a, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(run_cpu(&b, &err), AP_OK, "%s", err.msg);
    expect_outs_close(&Pg, &og, &oh, AP_TOL_KERNEL_REL, "group vs per-head lists");
    souts_free(&og);
    souts_free(&oh);
    sprob_free(&Pg);
    sprob_free(&Ph);
}

Test(sparse_attn, paged_store_matches_contiguous_cache) {
    scase c = {.n_groups = 2,
               .G = 3,
               .hd = 64,
               .n = 1500,
               .B = 16,
               .sink = 64,
               .local = 64,
               .per_q = 1,
               .measure = 0,
               .paged = 0,
               .p_keep = 0.1};
    sprob P;
    sprob_make(&P, &c, 33);
    souts oc, op;
    souts_alloc(&oc, &P);
    souts_alloc(&op, &P);
    ap_sparse_attn_args a = sargs(&P, &oc);
    ap_err err = {0};
    cr_assert_eq(run_cpu(&a, &err), AP_OK, "%s", err.msg);
    /* Pages were filled for this kept set (NULL where nothing is kept). */
    P.c.paged = 1;
    a = sargs(&P, &op);
    cr_assert_eq(run_cpu(&a, &err), AP_OK, "%s", err.msg);
    expect_outs_close(&P, &op, &oc, AP_TOL_KERNEL_REL, "paged vs contiguous");
    int nulls = 0;
    for (int i = 0; i < c.n_groups * P.nb; i++) nulls += P.kp[i] == NULL;
    cr_expect(nulls > 0, "the fixture should leave unkept pages NULL");
    souts_free(&oc);
    souts_free(&op);
    sprob_free(&P);
}

Test(sparse_attn, kept_mass_is_dense_mass_on_kept_keys) {
    scase c = {.n_groups = 1,
               .G = 3,
               .hd = 64,
               .n = 3000,
               .B = 16,
               .sink = 64,
               .local = 64,
               .per_q = 1,
               .measure = 1,
               .p_keep = 0.05};
    sprob P;
    sprob_make(&P, &c, 44);
    souts o;
    souts_alloc(&o, &P);
    ap_sparse_attn_args a = sargs(&P, &o);
    ap_err err = {0};
    cr_assert_eq(run_cpu(&a, &err), AP_OK, "%s", err.msg);
    float *dout = xcalloc((size_t)c.G * c.hd, sizeof(float));
    dense_rows d = {xcalloc((size_t)c.G * c.n, sizeof(float)), c.n};
    dense_decode(&P, 0, dout, &d);
    float *mx = xcalloc(o.ldb, sizeof(float)), *sm = xcalloc(o.ldb, sizeof(float));
    for (int h = 0; h < c.G; h++) {
        double km = 0.0;
        for (int j = 0; j < c.n; j++)
            if (kept_key(&P, h, j)) km += d.rows[(size_t)h * c.n + j];
        cr_expect(km > 0.05 && km < 0.999, "head %d: the fixture should drop some mass (%.4g)", h,
                  km);
        cr_expect(fabs(o.km[h] - km) <= AP_TOL_KERNEL_REL * km,
                  "head %d: kept mass %.9g, dense %.9g", h, o.km[h], km);
        ap_block_pool(d.rows + (size_t)h * c.n, c.n, c.B, (int)o.ldb, mx, sm);
        double e = rel_err(o.dbmax + h * o.ldb, mx, (long)o.ldb);
        cr_expect(e <= AP_TOL_KERNEL_REL, "head %d: dense block_max rel err %.3g", h, e);
        e = rel_err(o.dbsum + h * o.ldb, sm, (long)o.ldb);
        cr_expect(e <= AP_TOL_KERNEL_REL, "head %d: dense block_sum rel err %.3g", h, e);
        /* Renormalisation: the sparse row is the dense row restricted to the
         * kept keys and divided by their mass. */
        for (int b = 0; b < P.nb; b++) {
            int all_kept = 1, any = 0;
            for (int j = b * c.B; j < (b + 1) * c.B && j < c.n; j++) {
                all_kept &= kept_key(&P, h, j);
                any |= kept_key(&P, h, j);
            }
            if (all_kept)
                cr_expect(fabs(o.bsum[h * o.ldb + b] - sm[b] / km) <= AP_TOL_KERNEL_REL,
                          "head %d block %d: %.9g vs %.9g", h, b, o.bsum[h * o.ldb + b],
                          sm[b] / km);
            if (!any) cr_expect_eq(o.bsum[h * o.ldb + b], 0.0f);
        }
    }
    free(mx);
    free(sm);
    free(dout);
    free(d.rows);
    souts_free(&o);
    sprob_free(&P);
}

/* Dense scores of every query head over all keys, [units][ld], in chunks of
 * 64 keys (as the engine's dscore_run splits them). */
static void fill_dense_scores(const sprob *P, float *D, size_t ld) {
    const scase *c = &P->c;
    for (int g = 0; g < c->n_groups; g++)
        for (int j0 = 0; j0 < c->n; j0 += 64)
            ap_kv_scores(P->q + (size_t)g * c->G * c->hd, c->G, c->hd,
                         P->k + (size_t)j0 * P->ldkv + (size_t)g * c->hd, AP_KV_F32, P->ldkv,
                         c->n - j0 < 64 ? c->n - j0 : 64, P->scale, D + (size_t)g * c->G * ld + j0,
                         ld, AP_QISA_AUTO);
}

/* Dense scores given by the caller (the engine splits that pass over
 * threads by key chunks) give bit for bit what the call computes itself,
 * per group and per single-head unit; without measure mode they are
 * refused. */
Test(sparse_attn, caller_dense_scores_equal_its_own) {
    scase c = {.n_groups = 2, .G = 3, .hd = 64, .n = 1003, .B = 16, .sink = 16, .local = 64,
               .per_q = 1, .measure = 1, .p_keep = 0.1};
    sprob P;
    sprob_make(&P, &c, 71);
    souts ref, got;
    souts_alloc(&ref, &P);
    souts_alloc(&got, &P);
    ap_sparse_attn_args a = sargs(&P, &ref);
    ap_err err = {0};
    cr_assert_eq(run_cpu(&a, &err), AP_OK, "%s", err.msg);
    const size_t ld = (size_t)c.n + 5;
    float *D = xcalloc((size_t)P.units * ld, sizeof(float));
    fill_dense_scores(&P, D, ld);
    ap_sparse_attn_args b = sargs(&P, &got);
    b.dense_scores = D;
    b.ld_dense = ld;
    cr_assert_eq(run_cpu(&b, &err), AP_OK, "%s", err.msg);
    expect_outs_close(&P, &got, &ref, 0.0, "caller's dense scores");
    /* and they are the ones used: raise head 0's score of its newest key */
    fill_dense_scores(&P, D, ld); /* the call overwrote them with probabilities */
    D[c.n - 1] += 3.0f;
    cr_assert_eq(run_cpu(&b, &err), AP_OK, "%s", err.msg);
    cr_expect(got.km[0] != ref.km[0] && got.out[0] != ref.out[0],
              "a changed dense score must change head 0's kept mass and output");
    b.kept_mass = NULL;
    b.dense_bmax = b.dense_bsum = NULL;
    cr_expect_neq(run_cpu(&b, &err), AP_OK);
    cr_expect(strstr(err.msg, "measure mode") != NULL, "message: %s", err.msg);
    free(D);
    souts_free(&ref);
    souts_free(&got);
    sprob_free(&P);
}

Test(sparse_attn, rejects_bad_arguments) {
    scase c = {.n_groups = 1, .G = 2, .hd = 16, .n = 100, .B = 16, .per_q = 1, .p_keep = 0.3};
    sprob P;
    sprob_make(&P, &c, 3);
    souts o;
    souts_alloc(&o, &P);
    ap_err err = {0};
    /* A block past the 7 blocks of 100 keys. */
    int bad_range[] = {2, 7};
    P.blocks[0] = bad_range[0];
    P.blocks[1] = bad_range[1];
    P.set_off[0] = 0;
    P.set_off[1] = 2;
    P.set_off[2] = 2;
    P.c.local = 1; /* set 1 (empty list) keeps the local window */
    ap_sparse_attn_args a = sargs(&P, &o);
    cr_expect_eq(ap_sparse_attn_validate(&a, 1, &err), AP_ERR_RANGE);
    cr_expect(strstr(err.msg, "set 0") && strstr(err.msg, "block 7"), "%s", err.msg);
    /* Not increasing. */
    P.blocks[0] = 3;
    P.blocks[1] = 3;
    cr_expect_eq(ap_sparse_attn_validate(&a, 1, &err), AP_ERR_ARG);
    cr_expect(strstr(err.msg, "increasing"), "%s", err.msg);
    /* On the device the lists are not read by the host: shapes only. */
    cr_expect_eq(ap_sparse_attn_validate(&a, 0, &err), AP_OK, "%s", err.msg);
    /* An empty kept set. */
    P.blocks[1] = 4;
    P.c.local = 0;
    a = sargs(&P, &o);
    cr_expect_eq(ap_sparse_attn_validate(&a, 1, &err), AP_ERR_ARG);
    cr_expect(strstr(err.msg, "set 1 keeps no key"), "%s", err.msg);
    P.c.local = 1;
    a = sargs(&P, &o);
    cr_expect_eq(ap_sparse_attn_validate(&a, 1, &err), AP_OK, "%s", err.msg);
    /* Layout mix, half a view pair, short view stride, negative sink. */
    ap_sparse_attn_args b = a;
    b.k_pages = (const void *const *)P.kp;
    cr_expect_eq(ap_sparse_attn_validate(&b, 1, &err), AP_ERR_ARG);
    b = a;
    b.bsum = NULL;
    cr_expect_eq(ap_sparse_attn_validate(&b, 1, &err), AP_ERR_ARG);
    b = a;
    b.ldb = 6;
    cr_expect_eq(ap_sparse_attn_validate(&b, 1, &err), AP_ERR_ARG);
    b = a;
    b.sink = -1;
    cr_expect_eq(ap_sparse_attn_validate(&b, 0, &err), AP_ERR_ARG);
    /* A NULL page under a kept block. */
    P.c.paged = 1;
    sprob_pages(&P);
    a = sargs(&P, &o);
    cr_expect_eq(ap_sparse_attn_validate(&a, 1, &err), AP_OK, "%s", err.msg);
    P.kp[4] = NULL;
    cr_expect_eq(run_cpu(&a, &err), AP_ERR_ARG);
    cr_expect(strstr(err.msg, "page 4"), "%s", err.msg);
    souts_free(&o);
    sprob_free(&P);
}

/* ----------------------------------------------------------------- CUDA */

/* Device copies of a problem and its outputs. */
typedef struct {
    void *q, *k, *v, *store_k, *store_v, *kp, *vp, *blocks, *set_off;
    void *out, *bmax, *bsum, *km, *dbmax, *dbsum, *nk, *work;
    void *pinned_k, *pinned_v; /* cold store in mapped pinned host memory */
} dprob;

static void dfree(dprob *d) {
    void *dev[] = {d->q,  d->k,      d->v,       d->store_k, d->store_v, d->kp,
                   d->vp, d->blocks, d->set_off, d->out,     d->bmax,    d->bsum,
                   d->km, d->dbmax,  d->dbsum,   d->nk,      d->work};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) ap_cuda_free(dev[i]);
    ap_cuda_host_free(d->pinned_k);
    ap_cuda_host_free(d->pinned_v);
}

#define CU(x)                                                                                      \
    do {                                                                                           \
        ap_err e_ = {0};                                                                           \
        ap_status s_ = (x);                                                                        \
        cr_assert_eq(s_, AP_OK, "%s: %s", #x, e_.msg);                                             \
    } while (0)

static void *dup_or_die(const void *h, size_t bytes) {
    void *d = NULL;
    ap_err e = {0};
    cr_assert_eq(ap_cuda_dup(&d, h, bytes, &e), AP_OK, "%s", e.msg);
    return d;
}

static void *dalloc(size_t bytes) {
    void *d = NULL;
    ap_err e = {0};
    cr_assert_eq(ap_cuda_malloc(&d, bytes, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_cuda_zero(d, bytes, NULL, &e), AP_OK, "%s", e.msg);
    return d;
}

/* Run the CUDA version on P (pinned: the paged store in host memory) and
 * copy the outputs into o. */
static void run_cuda(const sprob *P, souts *o, int pinned, int scramble_lists) {
    const scase *c = &P->c;
    size_t u = (size_t)P->units, rows = (size_t)P->nb * c->B, kvb = rows * P->ldkv * sizeof(float);
    dprob d;
    memset(&d, 0, sizeof d);
    ap_err err = {0};
    d.q = dup_or_die(P->q, u * c->hd * sizeof(float));
    const float *sk = NULL, *sv = NULL;
    if (c->paged && pinned) {
        cr_assert_eq(ap_cuda_host_alloc(&d.pinned_k, kvb, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ap_cuda_host_alloc(&d.pinned_v, kvb, &err), AP_OK, "%s", err.msg);
        memcpy(d.pinned_k, P->store_k, kvb);
        memcpy(d.pinned_v, P->store_v, kvb);
        sk = d.pinned_k;
        sv = d.pinned_v;
    } else if (c->paged) {
        d.store_k = dup_or_die(P->store_k, kvb);
        d.store_v = dup_or_die(P->store_v, kvb);
        sk = d.store_k;
        sv = d.store_v;
    } else {
        d.k = dup_or_die(P->k, kvb);
        d.v = dup_or_die(P->v, kvb);
    }
    size_t np = (size_t)c->n_groups * P->nb;
    if (c->paged) {
        /* The same pages, rebased onto the device (or pinned) store. */
        const float **hk = xcalloc(np, sizeof(float *)), **hv = xcalloc(np, sizeof(float *));
        for (size_t i = 0; i < np; i++) {
            hk[i] = P->kp[i] ? sk + (P->kp[i] - P->store_k) : NULL;
            hv[i] = P->vp[i] ? sv + (P->vp[i] - P->store_v) : NULL;
        }
        d.kp = dup_or_die(hk, np * sizeof(float *));
        d.vp = dup_or_die(hv, np * sizeof(float *));
        free(hk);
        free(hv);
    }
    int nl = P->set_off[P->n_sets];
    /* + 1: the copy below takes one entry past the last, so an empty
     * list set still has a buffer to copy. */
    int *lst = xcalloc((size_t)nl + 2 * P->n_sets + 1, sizeof(int));
    int *off = xcalloc((size_t)P->n_sets + 1, sizeof(int));
    int at = 0;
    for (int s = 0; s < P->n_sets; s++) {
        off[s] = at;
        int lo = P->set_off[s], hi = P->set_off[s + 1];
        /* The device accepts any order, repeats and out-of-range entries:
         * scrambled lists are reversed, with a repeat and a stray entry. */
        for (int i = lo; i < hi; i++) lst[at++] = P->blocks[scramble_lists ? hi - 1 - (i - lo) : i];
        if (scramble_lists && hi > lo) {
            lst[at++] = P->blocks[lo];
            lst[at++] = P->nb + 3;
        }
    }
    off[P->n_sets] = at;
    d.blocks = dup_or_die(lst, ((size_t)at + 1) * sizeof(int));
    d.set_off = dup_or_die(off, ((size_t)P->n_sets + 1) * sizeof(int));
    free(lst);
    free(off);
    d.out = dalloc(u * c->hd * sizeof(float));
    d.bmax = dalloc(u * o->ldb * sizeof(float));
    d.bsum = dalloc(u * o->ldb * sizeof(float));
    d.km = dalloc(u * sizeof(float));
    d.dbmax = dalloc(u * o->ldb * sizeof(float));
    d.dbsum = dalloc(u * o->ldb * sizeof(float));
    d.nk = dalloc(u * sizeof(int));

    ap_sparse_attn_args a = {.n_groups = c->n_groups,
                             .n_heads = c->G,
                             .head_dim = c->hd,
                             .n_keys = c->n,
                             .scale = P->scale,
                             .q = d.q,
                             .ldkv = P->ldkv,
                             .group_stride = (size_t)c->hd,
                             .out = d.out,
                             .block = c->B,
                             .sink = c->sink,
                             .local = c->local,
                             .per_q_head = c->per_q,
                             .blocks = d.blocks,
                             .set_off = d.set_off,
                             .n_kept = d.nk,
                             .bmax = d.bmax,
                             .bsum = d.bsum,
                             .ldb = o->ldb};
    if (c->paged) {
        a.k_pages = d.kp;
        a.v_pages = d.vp;
    } else {
        a.k = d.k;
        a.v = d.v;
    }
    if (c->measure) {
        a.kept_mass = d.km;
        a.dense_bmax = d.dbmax;
        a.dense_bsum = d.dbsum;
    }
    size_t wb = ap_sparse_attn_cuda_work_bytes(&a);
    d.work = dalloc(wb);
    cr_assert_eq(ap_sparse_attn_cuda(&a, d.work, wb, NULL, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_sync(NULL, &err), AP_OK, "%s", err.msg);
    CU(ap_cuda_to_host(o->out, d.out, u * c->hd * sizeof(float), NULL, &e_));
    CU(ap_cuda_to_host(o->bmax, d.bmax, u * o->ldb * sizeof(float), NULL, &e_));
    CU(ap_cuda_to_host(o->bsum, d.bsum, u * o->ldb * sizeof(float), NULL, &e_));
    CU(ap_cuda_to_host(o->km, d.km, u * sizeof(float), NULL, &e_));
    CU(ap_cuda_to_host(o->dbmax, d.dbmax, u * o->ldb * sizeof(float), NULL, &e_));
    CU(ap_cuda_to_host(o->dbsum, d.dbsum, u * o->ldb * sizeof(float), NULL, &e_));
    CU(ap_cuda_to_host(o->nk, d.nk, u * sizeof(int), NULL, &e_));
    CU(ap_cuda_sync(NULL, &e_));
    dfree(&d);
}

Test(sparse_attn, cuda_matches_cpu) {
    if (ap_cuda_device_count() == 0)
        cr_skip_test("GPU test skipped: no CUDA device (or no CUDA build)");
    static const struct {
        scase c;
        int pinned, scramble;
    } cases[] = {
        {{1, 1, 64, 1, 16, 0, 1, 0, 1, 0, 0.0}, 0, 0},
        {{3, 3, 64, 8192, 16, 64, 64, 1, 1, 0, 0.05}, 0, 0},
        {{3, 3, 64, 8192, 16, 64, 64, 0, 0, 0, 0.05}, 0, 1},
        {{3, 3, 64, 8192, 16, 8192, 0, 0, 1, 0, 0.0}, 0, 0}, /* everything kept */
        {{1, 4, 7, 257, 16, 5, 3, 1, 1, 0, 0.3}, 0, 1},
        {{2, 2, 40, 300, 8, 0, 17, 0, 1, 1, 0.4}, 0, 0},
        {{1, 3, 64, 95, 16, 20, 40, 1, 1, 1, 0.5}, 1, 0},
        {{2, 3, 64, 4000, 16, 64, 64, 1, 0, 1, 0.05}, 1, 1},
        {{1, 2, 16, 50, 1, 2, 2, 1, 1, 0, 0.2}, 0, 0},
        {{1, 3, 256, 3000, 64, 100, 30, 0, 1, 0, 0.1}, 0, 0},
        {{1, 2, 130, 1111, 200, 0, 50, 1, 1, 0, 0.3}, 0, 0},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        sprob P;
        sprob_make(&P, &cases[ci].c, 70 + ci);
        souts oc, og, og2;
        souts_alloc(&oc, &P);
        souts_alloc(&og, &P);
        souts_alloc(&og2, &P);
        ap_sparse_attn_args a = sargs(&P, &oc);
        ap_err err = {0};
        cr_assert_eq(run_cpu(&a, &err), AP_OK, "case %zu: %s", ci, err.msg);
        run_cuda(&P, &og, cases[ci].pinned, cases[ci].scramble);
        char what[48];
        snprintf(what, sizeof what, "case %zu GPU vs CPU", ci);
        expect_outs_close(&P, &og, &oc, AP_TOL_CPU_GPU_REL, what);
        /* Fixed reduction orders: a second run repeats bit for bit. */
        run_cuda(&P, &og2, cases[ci].pinned, cases[ci].scramble);
        cr_expect_eq(memcmp(og.out, og2.out, (size_t)P.units * P.c.hd * sizeof(float)), 0,
                     "case %zu: GPU output differs between runs", ci);
        souts_free(&oc);
        souts_free(&og);
        souts_free(&og2);
        sprob_free(&P);
    }
}
