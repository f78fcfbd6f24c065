// CUDA sparse decode attention (semantics in sparse_attn.h). Three kernels
// on one stream:
//   plan     one thread block per kept set: a flag per listed block, then
//            warp 0 compacts the touched blocks (listed, sink or local) in
//            increasing order with ballots, and counts the kept keys;
//   main     grid (chunk, query head): each thread block walks `ch` blocks
//            of the plan (measure mode: of the whole sequence), scores a
//            block's keys one warp per key, and folds it into an online
//            softmax; it leaves (max, sum, P·V) partials, and raw per-block
//            (max logit, sum of exp relative to it) for the block views;
//   combine  one thread block per query head: rescales the partials to the
//            global maximum, writes the output, the kept mass and the
//            normalised block views.
// Every reduction runs in a fixed order (xor shuffles, sequential loops over
// shared arrays), so results repeat bit for bit. No atomics.
#include <cuda_runtime.h>
#include <math.h>

extern "C" {
#include "kernels/sparse_attn.h"
}

#define SP_THREADS 128
#define SP_WARPS (SP_THREADS / 32)
#define SP_MAX_HD (2 * SP_THREADS) // two output dimensions per thread
#define SP_MAX_BLOCK 1024
#define SP_COMBINE_SMEM (48 * 1024)

struct sp_params {
    int G, hd, n, B, sink, ls, per_q, nb, ch, n_chunks, measure;
    float scale;
    const float *q, *k, *v;
    const float *const *kp;
    const float *const *vp;
    size_t ldkv, gstride;
    float *out;
    const int *blocks, *set_off;
    unsigned char *flags;
    int *plan, *plan_n, *plan_kept;
    float *part;
    float2 *vraw, *draw;
    int *n_kept;
    float *bmax, *bsum, *kept_mass, *dbmax, *dbsum;
    size_t ldb;
};

// Keys of block b that are kept: all of them when listed, else those inside
// the sink [0, sink) or the local window [ls, n).
__device__ static int kept_in_block(const sp_params &p, int b, int listed) {
    int a = b * p.B, e = min(a + p.B, p.n);
    if (listed) return e - a;
    int lo = max(a, p.sink), hi = min(e, p.ls);
    return (e - a) - (hi > lo ? hi - lo : 0);
}

// First key of block b of group g in either layout.
__device__ static const float *block_rows(const sp_params &p, const float *base,
                                          const float *const *pages, int g, int b) {
    if (base) return base + (size_t)g * p.gstride + (size_t)b * p.B * p.ldkv;
    return pages[(size_t)g * p.nb + b];
}

__global__ static void sp_plan_kernel(sp_params p) {
    const int s = blockIdx.x, tid = threadIdx.x;
    unsigned char *F = p.flags + (size_t)s * p.nb;
    for (int b = tid; b < p.nb; b += SP_THREADS) F[b] = 0;
    __syncthreads();
    const int lo = p.set_off[s], hi = p.set_off[s + 1];
    for (int i = lo + tid; i < hi; i += SP_THREADS) {
        int b = p.blocks[i];
        // Same value from every writer, so duplicates are harmless.
        if (b >= 0 && b < p.nb) F[b] = 1;
    }
    __syncthreads();
    if (tid >= 32) return;
    int *plan = p.plan + (size_t)s * p.nb;
    int cnt = 0, kept = 0;
    for (int base = 0; base < p.nb; base += 32) {
        int b = base + tid;
        int kk = b < p.nb ? kept_in_block(p, b, F[b]) : 0;
        unsigned m = __ballot_sync(0xffffffffu, kk > 0);
        if (kk > 0) plan[cnt + __popc(m & ((1u << tid) - 1u))] = b;
        cnt += __popc(m);
        for (int off = 16; off > 0; off >>= 1) kk += __shfl_xor_sync(0xffffffffu, kk, off);
        kept += kk;
    }
    if (tid == 0) {
        p.plan_n[s] = cnt;
        p.plan_kept[s] = kept;
    }
}

__global__ static void sp_main_kernel(sp_params p) {
    extern __shared__ float sh[];
    float *sq = sh;        // [hd] the query
    float *ss = sq + p.hd; // [B] scores of the current block
    float *ek = ss + p.B;  // [B] exp(score - kept block max), 0 for dropped keys
    float *ed = ek + p.B;  // [B] exp(score - block max) (measure mode)
    unsigned char *kf = (unsigned char *)(ed + p.B); // [B] key kept
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int u = blockIdx.y, c = blockIdx.x;
    const int g = u / p.G, s = p.per_q ? u : g;
    const int cnt = p.measure ? p.nb : p.plan_n[s];
    const int t0 = c * p.ch, t1 = min(t0 + p.ch, cnt);
    float *P = p.part + ((size_t)u * p.n_chunks + c) * (size_t)(p.hd + 4);
    if (t0 >= t1) {
        // An empty chunk: the combine skips partials whose sums are 0.
        if (tid == 0) {
            P[0] = -INFINITY;
            P[1] = 0.0f;
            P[2] = -INFINITY;
            P[3] = 0.0f;
        }
        return;
    }
    const float *q = p.q + (size_t)u * p.hd;
    for (int d = tid; d < p.hd; d += SP_THREADS) sq[d] = q[d];
    const unsigned char *F = p.flags + (size_t)s * p.nb;
    const int *plan = p.plan + (size_t)s * p.nb;
    // Running state, identical in every thread (each computes it from the
    // same shared values in the same order).
    float mk = -INFINITY, lk = 0.0f, md = -INFINITY, ld = 0.0f;
    float acc0 = 0.0f, acc1 = 0.0f; // output dimensions tid and tid + SP_THREADS
    for (int t = t0; t < t1; t++) {
        const int b = p.measure ? t : plan[t];
        const int listed = F[b];
        const int a0 = b * p.B, nk = min(p.B, p.n - a0);
        const float *kb = block_rows(p, p.k, p.kp, g, b);
        const float *vb = block_rows(p, p.v, p.vp, g, b);
        __syncthreads(); // the query is loaded; the previous block's shared data is consumed
        for (int jj = warp; jj < nk; jj += SP_WARPS) {
            const float *kr = kb + (size_t)jj * p.ldkv;
            float part = 0.0f;
            for (int d = lane; d < p.hd; d += 32) part = fmaf(sq[d], kr[d], part);
            for (int off = 16; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
            if (lane == 0) {
                int j = a0 + jj;
                ss[jj] = p.scale * part;
                kf[jj] = (unsigned char)(listed || j < p.sink || j >= p.ls);
            }
        }
        __syncthreads();
        float lmk = -INFINITY, lmd = -INFINITY;
        for (int jj = 0; jj < nk; jj++) {
            float x = ss[jj];
            lmd = fmaxf(lmd, x);
            if (kf[jj]) lmk = fmaxf(lmk, x);
        }
        for (int jj = tid; jj < nk; jj += SP_THREADS) {
            ek[jj] = kf[jj] ? expf(ss[jj] - lmk) : 0.0f;
            if (p.measure) ed[jj] = expf(ss[jj] - lmd);
        }
        __syncthreads();
        float psk = 0.0f, psd = 0.0f;
        for (int jj = 0; jj < nk; jj++) {
            psk += ek[jj];
            if (p.measure) psd += ed[jj];
        }
        if (psk > 0.0f) {
            float mn = fmaxf(mk, lmk), al = expf(mk - mn), be = expf(lmk - mn);
            lk = lk * al + psk * be;
            mk = mn;
            if (tid < p.hd) {
                float sum = 0.0f;
                for (int jj = 0; jj < nk; jj++)
                    sum = fmaf(ek[jj], vb[(size_t)jj * p.ldkv + tid], sum);
                acc0 = acc0 * al + be * sum;
            }
            if (tid + SP_THREADS < p.hd) {
                const int d = tid + SP_THREADS;
                float sum = 0.0f;
                for (int jj = 0; jj < nk; jj++)
                    sum = fmaf(ek[jj], vb[(size_t)jj * p.ldkv + d], sum);
                acc1 = acc1 * al + be * sum;
            }
        }
        if (p.measure) {
            float mn = fmaxf(md, lmd);
            ld = ld * expf(md - mn) + psd * expf(lmd - mn);
            md = mn;
        }
        if (tid == 0) {
            size_t vi = (size_t)u * p.nb + b;
            if (p.vraw) p.vraw[vi] = make_float2(lmk, psk);
            if (p.draw) p.draw[vi] = make_float2(lmd, psd);
        }
    }
    if (tid == 0) {
        P[0] = mk;
        P[1] = lk;
        P[2] = md;
        P[3] = ld;
    }
    if (tid < p.hd) P[4 + tid] = acc0;
    if (tid + SP_THREADS < p.hd) P[4 + tid + SP_THREADS] = acc1;
}

__global__ static void sp_combine_kernel(sp_params p) {
    extern __shared__ float wk[]; // [n_chunks] kept weights, then [n_chunks] dense ones
    float *wd = wk + p.n_chunks;
    const int u = blockIdx.x, tid = threadIdx.x;
    const int g = u / p.G, s = p.per_q ? u : g;
    const size_t ps = (size_t)p.hd + 4;
    const float *P0 = p.part + (size_t)u * p.n_chunks * ps;
    float M = -INFINITY, MD = -INFINITY;
    for (int c = 0; c < p.n_chunks; c++) {
        const float *P = P0 + c * ps;
        if (P[1] > 0.0f) M = fmaxf(M, P[0]);
        if (P[3] > 0.0f) MD = fmaxf(MD, P[2]);
    }
    for (int c = tid; c < p.n_chunks; c += SP_THREADS) {
        const float *P = P0 + c * ps;
        wk[c] = P[1] > 0.0f ? expf(P[0] - M) : 0.0f;
        wd[c] = P[3] > 0.0f ? expf(P[2] - MD) : 0.0f;
    }
    __syncthreads();
    // Partials of empty chunks hold no P·V (never written): test the sum,
    // never multiply by a zero weight.
    float L = 0.0f, LD = 0.0f;
    for (int c = 0; c < p.n_chunks; c++) {
        const float *P = P0 + c * ps;
        if (P[1] > 0.0f) L += P[1] * wk[c];
        if (P[3] > 0.0f) LD += P[3] * wd[c];
    }
    for (int d = tid; d < p.hd; d += SP_THREADS) {
        float o = 0.0f;
        for (int c = 0; c < p.n_chunks; c++) {
            const float *P = P0 + c * ps;
            if (P[1] > 0.0f) o += P[4 + d] * wk[c];
        }
        p.out[(size_t)u * p.hd + d] = L > 0.0f ? o / L : 0.0f;
    }
    if (tid == 0) {
        if (p.n_kept) p.n_kept[u] = p.plan_kept[s];
        if (p.kept_mass) {
            float km = 0.0f;
            for (int c = 0; c < p.n_chunks; c++) {
                const float *P = P0 + c * ps;
                if (P[1] > 0.0f) km += P[1] * expf(P[0] - MD);
            }
            p.kept_mass[u] = LD > 0.0f ? km / LD : 0.0f;
        }
    }
    if (!p.bmax && !p.dbmax) return;
    const unsigned char *F = p.flags + (size_t)s * p.nb;
    for (int b = tid; b < p.nb; b += SP_THREADS) {
        const size_t vi = (size_t)u * p.nb + b, oi = (size_t)u * p.ldb + b;
        if (p.bmax) {
            float mx = 0.0f, sm = 0.0f;
            // Blocks the main pass never visited have no raw entry.
            if (L > 0.0f && (p.measure || kept_in_block(p, b, F[b]) > 0)) {
                float2 r = p.vraw[vi];
                if (r.y > 0.0f) {
                    mx = expf(r.x - M) / L;
                    sm = r.y * mx;
                }
            }
            p.bmax[oi] = mx;
            p.bsum[oi] = sm;
        }
        if (p.dbmax) {
            float2 r = p.draw[vi];
            float mx = LD > 0.0f ? expf(r.x - MD) / LD : 0.0f;
            p.dbmax[oi] = mx;
            p.dbsum[oi] = r.y * mx;
        }
    }
}

extern "C" ap_status ap_sparse_attn_cuda(const ap_sparse_attn_args *a, void *d_work,
                                         size_t work_bytes, ap_cuda_stream s, ap_err *err) {
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
    const size_t combine_smem = 2 * sizeof(float) * (size_t)l.n_chunks;
    if (combine_smem > SP_COMBINE_SMEM || l.n_units > 65535)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "sparse attention (CUDA): %d keys x %d query heads is beyond this kernel",
                       a->n_keys, l.n_units);
    sp_params p;
    p.G = a->n_heads;
    p.hd = a->head_dim;
    p.n = a->n_keys;
    p.B = a->block;
    p.sink = a->sink;
    p.ls = a->local <= 0 ? a->n_keys : (a->local >= a->n_keys ? 0 : a->n_keys - a->local);
    p.per_q = a->per_q_head ? 1 : 0;
    p.nb = l.n_blocks;
    p.ch = l.chunk_blocks;
    p.n_chunks = l.n_chunks;
    p.measure = ap_sparse_attn_measuring(a);
    p.scale = a->scale;
    p.q = a->q;
    p.k = (const float *)a->k;
    p.v = (const float *)a->v;
    p.kp = (const float *const *)a->k_pages;
    p.vp = (const float *const *)a->v_pages;
    p.ldkv = a->ldkv;
    p.gstride = a->group_stride;
    p.out = a->out;
    p.blocks = a->blocks;
    p.set_off = a->set_off;
    char *w = (char *)d_work;
    p.flags = (unsigned char *)(w + l.flags);
    p.plan = (int *)(w + l.plan);
    p.plan_n = (int *)(w + l.plan_n);
    p.plan_kept = (int *)(w + l.plan_kept);
    p.part = (float *)(w + l.part);
    p.vraw = a->bmax ? (float2 *)(w + l.vraw) : NULL;
    p.draw = a->dense_bmax ? (float2 *)(w + l.draw) : NULL;
    p.n_kept = a->n_kept;
    p.bmax = a->bmax;
    p.bsum = a->bsum;
    p.kept_mass = a->kept_mass;
    p.dbmax = a->dense_bmax;
    p.dbsum = a->dense_bsum;
    p.ldb = a->ldb;

    sp_plan_kernel<<<l.n_sets, SP_THREADS, 0, s>>>(p);
    st = AP_CUDA_LAUNCHED("sparse attention plan launch", err);
    if (st != AP_OK) return st;
    const size_t main_smem = sizeof(float) * ((size_t)p.hd + 3 * (size_t)p.B) + (size_t)p.B;
    sp_main_kernel<<<dim3((unsigned)l.n_chunks, (unsigned)l.n_units), SP_THREADS, main_smem, s>>>(
        p);
    st = AP_CUDA_LAUNCHED("sparse attention main launch", err);
    if (st != AP_OK) return st;
    sp_combine_kernel<<<l.n_units, SP_THREADS, combine_smem, s>>>(p);
    return AP_CUDA_LAUNCHED("sparse attention combine launch", err);
}
