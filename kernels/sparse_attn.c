#include "kernels/sparse_attn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/block_pool.h"
#include "kernels/qmatvec.h"
#include "kernels/softmax.h"

int ap_sparse_attn_n_blocks(const ap_sparse_attn_args *a) {
    if (a->block < 1 || a->n_keys < 1) return 0;
    return (int)(((long)a->n_keys + a->block - 1) / a->block);
}

int ap_sparse_attn_measuring(const ap_sparse_attn_args *a) {
    return a->kept_mass || a->dense_bmax || a->dense_bsum;
}

static int set_count(const ap_sparse_attn_args *a) {
    return a->per_q_head ? a->n_groups * a->n_heads : a->n_groups;
}

/* Key (or value) j of group g in either layout (elements of a->kv_type);
 * NULL for an unset page. */
static const void *kv_row(const ap_sparse_attn_args *a, const void *base,
                          const void *const *pages, int nb, int g, int j) {
    const size_t es = ap_kv_type_size(a->kv_type);
    if (base)
        return (const char *)base + es * ((size_t)g * a->group_stride + (size_t)j * a->ldkv);
    const char *p = pages[(size_t)g * nb + j / a->block];
    return p ? p + es * (size_t)(j % a->block) * a->ldkv : NULL;
}

/* First key of the local window (n_keys when there is none). */
static int local_start(const ap_sparse_attn_args *a) {
    if (a->local <= 0) return a->n_keys;
    return a->local >= a->n_keys ? 0 : a->n_keys - a->local;
}

/* Does the sink or the local window keep a key of block b? */
static int window_touches(const ap_sparse_attn_args *a, int b) {
    long lo = (long)b * a->block, hi = lo + a->block;
    if (hi > a->n_keys) hi = a->n_keys;
    return lo < a->sink || hi > local_start(a);
}

static ap_status check_pages(const ap_sparse_attn_args *a, int nb, ap_err *err) {
    const int G = a->n_heads, measure = ap_sparse_attn_measuring(a);
    for (int g = 0; g < a->n_groups; g++) {
        const void *const *kp = a->k_pages + (size_t)g * nb;
        const void *const *vp = a->v_pages + (size_t)g * nb;
        for (int b = 0; b < nb; b++) {
            int need = measure || window_touches(a, b);
            if (!need) continue;
            if (!kp[b] || !vp[b])
                return ap_errf(err, AP_ERR_ARG,
                               "sparse attention: group %d: page %d is NULL but %s reads it", g, b,
                               measure ? "measure mode" : "the sink/local window");
        }
        int s0 = a->per_q_head ? g * G : g, s1 = a->per_q_head ? s0 + G : g + 1;
        for (int s = s0; s < s1; s++)
            for (int i = a->set_off[s]; i < a->set_off[s + 1]; i++) {
                int b = a->blocks[i];
                if (!kp[b] || !vp[b])
                    return ap_errf(err, AP_ERR_ARG,
                                   "sparse attention: group %d: page %d is NULL but set %d keeps "
                                   "it",
                                   g, b, s);
            }
    }
    return AP_OK;
}

ap_status ap_sparse_attn_validate(const ap_sparse_attn_args *a, int lists_on_host, ap_err *err) {
    if (!a) return ap_errf(err, AP_ERR_ARG, "sparse attention: no arguments");
    if (a->n_groups < 1 || a->n_heads < 1 || a->head_dim < 1 || a->n_keys < 1 || a->block < 1)
        return ap_errf(err, AP_ERR_ARG,
                       "sparse attention: bad shape (%d groups x %d heads, head_dim %d, %d keys, "
                       "block %d)",
                       a->n_groups, a->n_heads, a->head_dim, a->n_keys, a->block);
    if (a->sink < 0 || a->local < 0)
        return ap_errf(err, AP_ERR_ARG, "sparse attention: negative sink %d or local %d", a->sink,
                       a->local);
    if (!a->q || !a->out || !a->set_off)
        return ap_errf(err, AP_ERR_ARG, "sparse attention: q, out and set_off are required");
    if (a->dense_scores && (!ap_sparse_attn_measuring(a) || a->ld_dense < (size_t)a->n_keys))
        return ap_errf(err, AP_ERR_ARG,
                       "sparse attention: given dense scores need measure mode and a row stride "
                       "of at least %d keys (got %zu)",
                       a->n_keys, a->ld_dense);
    if (a->kv_type != AP_KV_F32 && a->kv_type != AP_KV_F16)
        return ap_errf(err, AP_ERR_ARG, "sparse attention: unknown K/V type %d", (int)a->kv_type);
    int contiguous = a->k && a->v && !a->k_pages && !a->v_pages;
    int paged = a->k_pages && a->v_pages && !a->k && !a->v;
    if (!contiguous && !paged)
        return ap_errf(err, AP_ERR_ARG,
                       "sparse attention: give either k and v (contiguous) or k_pages and "
                       "v_pages (paged), not a mix");
    if (a->n_keys > 1 && a->ldkv < (size_t)a->head_dim)
        return ap_errf(err, AP_ERR_ARG, "sparse attention: key stride %zu below head_dim %d",
                       a->ldkv, a->head_dim);
    if (!a->bmax != !a->bsum || !a->dense_bmax != !a->dense_bsum)
        return ap_errf(err, AP_ERR_ARG,
                       "sparse attention: block views come in pairs (max and sum, both or "
                       "neither)");
    const int nb = ap_sparse_attn_n_blocks(a);
    if ((a->bmax || a->dense_bmax) && a->ldb < (size_t)nb)
        return ap_errf(err, AP_ERR_ARG,
                       "sparse attention: block view stride %zu below the %d blocks of %d keys",
                       a->ldb, nb, a->n_keys);
    if (!lists_on_host) return AP_OK;

    const int sets = set_count(a);
    if (a->set_off[0] < 0)
        return ap_errf(err, AP_ERR_ARG, "sparse attention: set_off[0] = %d is negative",
                       a->set_off[0]);
    for (int s = 0; s < sets; s++) {
        int lo = a->set_off[s], hi = a->set_off[s + 1];
        if (hi < lo)
            return ap_errf(err, AP_ERR_ARG, "sparse attention: set_off decreases at set %d", s);
        if (hi > lo && !a->blocks)
            return ap_errf(err, AP_ERR_ARG,
                           "sparse attention: set %d has blocks but blocks is NULL", s);
        int prev = -1;
        for (int i = lo; i < hi; i++) {
            int b = a->blocks[i];
            if (b < 0 || b >= nb)
                return ap_errf(err, AP_ERR_RANGE,
                               "sparse attention: set %d: block %d (list entry %d) outside the %d "
                               "blocks of %d keys",
                               s, b, i - lo, nb, a->n_keys);
            if (b <= prev)
                return ap_errf(err, AP_ERR_ARG,
                               "sparse attention: set %d: blocks not strictly increasing at list "
                               "entry %d (%d after %d)",
                               s, i - lo, b, prev);
            prev = b;
        }
        if (hi == lo && a->sink == 0 && a->local == 0)
            return ap_errf(err, AP_ERR_ARG,
                           "sparse attention: set %d keeps no key (empty list, no sink, no local "
                           "window)",
                           s);
    }
    return paged ? check_pages(a, nb, err) : AP_OK;
}

/* ------------------------------------------------------------------ CPU */

static void push_run(int *r, int *nr, int x0, int x1) {
    if (x1 <= x0) return;
    int *last_end = *nr > 0 ? &r[2 * *nr - 1] : NULL;
    if (last_end && x0 <= *last_end) {
        if (x1 > *last_end) *last_end = x1;
        return;
    }
    r[2 * *nr] = x0;
    r[2 * *nr + 1] = x1;
    (*nr)++;
}

/* The kept keys of one set as disjoint increasing runs [r[2i], r[2i+1]),
 * touching runs merged, so no key is visited twice. Pushes arrive in
 * nondecreasing start order (sink at 0, the sorted blocks, the local window
 * slotted in before the first block at or after it), which is all the
 * merge needs. r holds 2*(len + 2) ints. Returns the run count. */
static int kept_runs(const ap_sparse_attn_args *a, const int *lst, int len, int *r) {
    const int n = a->n_keys, B = a->block, ls = local_start(a);
    int nr = 0, local_done = ls >= n;
    push_run(r, &nr, 0, a->sink < n ? a->sink : n);
    for (int i = 0; i < len; i++) {
        int x0 = lst[i] * B;
        if (!local_done && ls <= x0) {
            push_run(r, &nr, ls, n);
            local_done = 1;
        }
        push_run(r, &nr, x0, x0 + B < n ? x0 + B : n);
    }
    if (!local_done) push_run(r, &nr, ls, n);
    return nr;
}

/* End of the piece of [x, x1) that one K/V pointer covers: the whole run in
 * the contiguous layout, up to the next page boundary in the paged one. */
static int piece_end(const ap_sparse_attn_args *a, int x, int x1) {
    if (a->k) return x1;
    long pe = ((long)x / a->block + 1) * a->block;
    return pe < x1 ? (int)pe : x1;
}

/* Block views of a sparse row: p holds the kept keys' probabilities in run
 * order; blocks without a kept key stay 0. */
static void sparse_views(const int *runs, int nr, const float *p, int B, int nb, float *mx,
                         float *sm) {
    memset(mx, 0, (size_t)nb * sizeof *mx);
    memset(sm, 0, (size_t)nb * sizeof *sm);
    int cur = -1, off = 0;
    float m = 0.0f;
    double s = 0.0;
    for (int r = 0; r < nr; r++)
        for (int j = runs[2 * r]; j < runs[2 * r + 1]; j++) {
            int blk = j / B;
            if (blk != cur) {
                if (cur >= 0) {
                    mx[cur] = m;
                    sm[cur] = (float)s;
                }
                cur = blk;
                m = 0.0f;
                s = 0.0;
            }
            float v = p[off++];
            m = v > m ? v : m;
            s += v;
        }
    if (cur >= 0) {
        mx[cur] = m;
        sm[cur] = (float)s;
    }
}

static void softmax_row(float *x, int n) {
    float inv = 1.0f / ap_exp_shift_sum(x, n, ap_row_max(x, n));
    for (int i = 0; i < n; i++) x[i] *= inv;
}

/* Dense scores of every query head of group g over all keys, D[G][n_keys]
 * (measure mode). One pass for the whole group even when the heads keep
 * different sets: each key row is read from memory once, not once per
 * query head (at 8K keys that pass is most of a calibration step). */
static ap_status dense_scores(const ap_sparse_attn_args *a, int g, float *D, ap_err *err) {
    const int n = a->n_keys, hd = a->head_dim, nb = ap_sparse_attn_n_blocks(a);
    const float *q = a->q + (size_t)g * a->n_heads * hd;
    for (int x = 0; x < n;) {
        int y = piece_end(a, x, n);
        const void *kp = kv_row(a, a->k, a->k_pages, nb, g, x);
        if (!kp)
            return ap_errf(err, AP_ERR_ARG, "sparse attention: group %d: key %d has no page", g, x);
        ap_kv_scores(q, a->n_heads, hd, kp, a->kv_type, a->ldkv, y - x, a->scale, D + x, (size_t)n,
                     AP_QISA_AUTO);
        x = y;
    }
    return AP_OK;
}

/* One kept set: query heads h0..h0+nh-1 of group g share the runs. C holds
 * [nh][kept] scores then probabilities; D (measure mode) holds the group's
 * dense scores, [G] rows of ldd, and becomes the heads' dense
 * probabilities. */
static ap_status one_set(const ap_sparse_attn_args *a, int g, int h0, int nh, const int *lst,
                         int len, int *runs, float *C, float *D, size_t ldd, ap_err *err) {
    const int n = a->n_keys, hd = a->head_dim, B = a->block, nb = ap_sparse_attn_n_blocks(a);
    const int measure = ap_sparse_attn_measuring(a);
    const size_t u0 = (size_t)g * a->n_heads + h0;
    const float *q = a->q + u0 * hd;
    float *o = a->out + u0 * hd;
    int nr = kept_runs(a, lst, len, runs), M = 0;
    for (int r = 0; r < nr; r++) M += runs[2 * r + 1] - runs[2 * r];

    if (measure) {
        D += (size_t)h0 * ldd;
        for (int h = 0; h < nh; h++)
            for (int r = 0, off = 0; r < nr; r++) {
                int x0 = runs[2 * r], w = runs[2 * r + 1] - x0;
                memcpy(C + (size_t)h * M + off, D + (size_t)h * ldd + x0, (size_t)w * sizeof *C);
                off += w;
            }
    } else {
        for (int r = 0, off = 0; r < nr; r++)
            for (int x = runs[2 * r], x1 = runs[2 * r + 1]; x < x1;) {
                int y = piece_end(a, x, x1);
                const void *kp = kv_row(a, a->k, a->k_pages, nb, g, x);
                if (!kp)
                    return ap_errf(err, AP_ERR_ARG,
                                   "sparse attention: group %d: key %d has no page", g, x);
                ap_kv_scores(q, nh, hd, kp, a->kv_type, a->ldkv, y - x, a->scale, C + off, (size_t)M,
                             AP_QISA_AUTO);
                off += y - x;
                x = y;
            }
    }
    for (int h = 0; h < nh; h++) softmax_row(C + (size_t)h * M, M);

    int first = 1;
    for (int r = 0, off = 0; r < nr; r++)
        for (int x = runs[2 * r], x1 = runs[2 * r + 1]; x < x1;) {
            int y = piece_end(a, x, x1);
            const void *vp = kv_row(a, a->v, a->v_pages, nb, g, x);
            if (!vp)
                return ap_errf(err, AP_ERR_ARG, "sparse attention: group %d: value %d has no page",
                               g, x);
            ap_kv_mix(C + off, (size_t)M, nh, vp, a->kv_type, a->ldkv, y - x, hd, o, !first, AP_QISA_AUTO);
            first = 0;
            off += y - x;
            x = y;
        }

    for (int h = 0; h < nh; h++) {
        size_t u = u0 + h;
        if (a->n_kept) a->n_kept[u] = M;
        if (a->bmax)
            sparse_views(runs, nr, C + (size_t)h * M, B, nb, a->bmax + u * a->ldb,
                         a->bsum + u * a->ldb);
        if (!measure) continue;
        float *row = D + (size_t)h * ldd;
        softmax_row(row, n);
        if (a->kept_mass) {
            double km = 0.0;
            for (int r = 0; r < nr; r++)
                for (int j = runs[2 * r]; j < runs[2 * r + 1]; j++) km += row[j];
            a->kept_mass[u] = (float)km;
        }
        if (a->dense_bmax)
            ap_block_pool(row, n, B, nb, a->dense_bmax + u * a->ldb, a->dense_bsum + u * a->ldb);
    }
    return AP_OK;
}

static size_t runs_bytes(const ap_sparse_attn_args *a) {
    size_t b = sizeof(int) * 2 * ((size_t)ap_sparse_attn_n_blocks(a) + 2);
    return (b + 63) / 64 * 64;
}

size_t ap_sparse_attn_scratch_bytes(const ap_sparse_attn_args *a) {
    size_t nh = a->per_q_head ? 1 : (size_t)(a->n_heads > 0 ? a->n_heads : 1);
    size_t n = (size_t)(a->n_keys > 0 ? a->n_keys : 1);
    size_t G = (size_t)(a->n_heads > 0 ? a->n_heads : 1);
    size_t rows = nh + (ap_sparse_attn_measuring(a) ? G : 0);
    return runs_bytes(a) + sizeof(float) * n * rows;
}

ap_status ap_sparse_attn(const ap_sparse_attn_args *a, void *scratch, ap_err *err) {
    ap_status st = ap_sparse_attn_validate(a, 1, err);
    if (st != AP_OK) return st;
    if (!scratch) return ap_errf(err, AP_ERR_ARG, "sparse attention: no scratch buffer");
    const int G = a->n_heads, nh = a->per_q_head ? 1 : G;
    int *runs = scratch;
    float *C = (float *)((char *)scratch + runs_bytes(a));
    float *D = C + (size_t)nh * a->n_keys;
    const int measure = ap_sparse_attn_measuring(a);
    for (int g = 0; g < a->n_groups && st == AP_OK; g++) {
        float *Dg = D;
        size_t ldd = (size_t)a->n_keys;
        if (measure && a->dense_scores) {
            Dg = a->dense_scores + (size_t)g * G * a->ld_dense;
            ldd = a->ld_dense;
        } else if (measure) {
            st = dense_scores(a, g, D, err);
        }
        for (int h0 = 0; h0 < G && st == AP_OK; h0 += nh) {
            int s = a->per_q_head ? g * G + h0 : g;
            int lo = a->set_off[s], len = a->set_off[s + 1] - lo;
            st = one_set(a, g, h0, nh, len ? a->blocks + lo : NULL, len, runs, C, Dg, ldd, err);
        }
    }
    return st;
}

/* ------------------------------------------------------------ reference */

ap_status ap_sparse_attn_ref(const ap_sparse_attn_args *a, ap_err *err) {
    ap_status st = ap_sparse_attn_validate(a, 1, err);
    if (st != AP_OK) return st;
    const int n = a->n_keys, hd = a->head_dim, B = a->block, G = a->n_heads;
    const int nb = ap_sparse_attn_n_blocks(a), measure = ap_sparse_attn_measuring(a);
    const int ls = local_start(a);
    unsigned char *keep = malloc((size_t)n);
    double *lg = malloc(sizeof(double) * (size_t)n);
    double *acc = malloc(sizeof(double) * (size_t)hd);
    float *row = malloc(sizeof(float) * (size_t)hd); /* one key or value as float32 */
    if (!keep || !lg || !acc || !row) {
        st = ap_errf(err, AP_ERR_NOMEM, "sparse attention reference: out of memory for %d keys", n);
        goto done;
    }
    for (int g = 0; g < a->n_groups; g++)
        for (int h = 0; h < G; h++) {
            const size_t u = (size_t)g * G + h;
            const int s = a->per_q_head ? (int)u : g;
            for (int j = 0; j < n; j++) keep[j] = j < a->sink || j >= ls;
            for (int i = a->set_off[s]; i < a->set_off[s + 1]; i++)
                for (int j = a->blocks[i] * B; j < (a->blocks[i] + 1) * B && j < n; j++)
                    keep[j] = 1;
            const float *q = a->q + u * hd;
            double mk = -INFINITY, md = -INFINITY;
            long cnt = 0;
            for (int j = 0; j < n; j++) {
                if (!keep[j] && !measure) continue;
                const float *k = row;
                ap_kv_load_row(row, kv_row(a, a->k, a->k_pages, nb, g, j), a->kv_type, (size_t)hd,
                               AP_QISA_SCALAR);
                double d = 0.0;
                for (int t = 0; t < hd; t++) d += (double)q[t] * (double)k[t];
                lg[j] = d * (double)a->scale;
                if (lg[j] > md) md = lg[j];
                if (keep[j]) {
                    cnt++;
                    if (lg[j] > mk) mk = lg[j];
                }
            }
            double zk = 0.0, zd = 0.0;
            for (int j = 0; j < n; j++) {
                if (keep[j]) zk += exp(lg[j] - mk);
                if (measure) zd += exp(lg[j] - md);
            }
            for (int t = 0; t < hd; t++) acc[t] = 0.0;
            for (int j = 0; j < n; j++) {
                if (!keep[j]) continue;
                const float *v = row;
                ap_kv_load_row(row, kv_row(a, a->v, a->v_pages, nb, g, j), a->kv_type, (size_t)hd,
                               AP_QISA_SCALAR);
                double p = exp(lg[j] - mk) / zk;
                for (int t = 0; t < hd; t++) acc[t] += p * (double)v[t];
            }
            for (int t = 0; t < hd; t++) a->out[u * hd + t] = (float)acc[t];
            if (a->n_kept) a->n_kept[u] = (int)cnt;
            double km = 0.0;
            for (int b = 0; b < nb; b++) {
                double sm = 0.0, mx = 0.0, dsm = 0.0, dmx = 0.0;
                for (int j = b * B; j < (b + 1) * B && j < n; j++) {
                    if (keep[j]) {
                        double p = exp(lg[j] - mk) / zk;
                        sm += p;
                        mx = p > mx ? p : mx;
                    }
                    if (measure) {
                        double p = exp(lg[j] - md) / zd;
                        dsm += p;
                        dmx = p > dmx ? p : dmx;
                        if (keep[j]) km += p;
                    }
                }
                if (a->bmax) {
                    a->bmax[u * a->ldb + b] = (float)mx;
                    a->bsum[u * a->ldb + b] = (float)sm;
                }
                if (a->dense_bmax) {
                    a->dense_bmax[u * a->ldb + b] = (float)dmx;
                    a->dense_bsum[u * a->ldb + b] = (float)dsm;
                }
            }
            if (a->kept_mass) a->kept_mass[u] = (float)km;
        }
done:
    free(keep);
    free(lg);
    free(acc);
    free(row);
    return st;
}

/* ---------------------------------------------------------- CUDA layout */

static size_t align256(size_t x) { return (x + 255) / 256 * 256; }

void ap_sparse_attn_cuda_layout(const ap_sparse_attn_args *a, ap_sparse_cuda_layout *l) {
    memset(l, 0, sizeof *l);
    l->n_sets = set_count(a);
    l->n_units = a->n_groups * a->n_heads;
    l->n_blocks = ap_sparse_attn_n_blocks(a);
    /* About 128 keys per thread block: enough parallel blocks at 8K keys
     * (64 per head), few enough partials for the combine. */
    l->chunk_blocks = a->block >= 128 ? 1 : 128 / a->block;
    l->n_chunks = (l->n_blocks + l->chunk_blocks - 1) / l->chunk_blocks;
    const size_t sets = (size_t)l->n_sets, units = (size_t)l->n_units, nb = (size_t)l->n_blocks;
    const size_t hd = (size_t)(a->head_dim > 0 ? a->head_dim : 1);
    size_t off = 0;
    l->flags = off;
    off += align256(sets * nb);
    l->plan = off;
    off += align256(sizeof(int) * sets * nb);
    l->plan_n = off;
    off += align256(sizeof(int) * sets);
    l->plan_kept = off;
    off += align256(sizeof(int) * sets);
    l->part = off;
    off += align256(sizeof(float) * units * (size_t)l->n_chunks * (hd + 4));
    l->vraw = off;
    if (a->bmax) off += align256(2 * sizeof(float) * units * nb);
    l->draw = off;
    if (a->dense_bmax) off += align256(2 * sizeof(float) * units * nb);
    l->total = off;
}

size_t ap_sparse_attn_cuda_work_bytes(const ap_sparse_attn_args *a) {
    ap_sparse_cuda_layout l;
    ap_sparse_attn_cuda_layout(a, &l);
    return l.total;
}

#ifndef AP_HAVE_CUDA
ap_status ap_sparse_attn_cuda(const ap_sparse_attn_args *a, void *d_work, size_t work_bytes,
                              ap_cuda_stream s, ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}
#endif
