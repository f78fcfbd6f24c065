// CUDA causal attention of one GQA group with the block views capture needs
// (semantics and layout in attention_cuda.h).
#include <cuda_runtime.h>
#include <math.h>

extern "C" {
#include "kernels/attention_cuda.h"
}

#define AT_QT 16 // query rows per thread block
#define AT_KT 16 // keys per shared-memory tile (the view block divides by it)
#define AT_THREADS 128
#define AT_MAX_HD 256
#define AT_ACC (AT_QT * AT_MAX_HD / AT_THREADS) // output elements per thread
#define CS_KEYS 64                              // keys (and threads) per column-sum thread block

struct at_params {
    int n_q, pos0, hd, vblock, n_vblocks;
    float scale;
    const float *q, *k, *v;
    size_t ldq, ldkv, ldo;
    float *out;
    float *bmax, *bsum;
    size_t vrow, vhead;
    double *colsum;
    size_t cstride;
    float2 *stats; // [head][n_q] final (max, sum) of each row, for the column sums
};

// scale * (a · b) as one sequential fused chain, rounded explicitly: the
// forward and the column-sum kernels share it, so both see the same scores.
__device__ static inline float score(const float *a, const float *b, int hd, float scale) {
    float s = 0.0f;
    for (int d = 0; d < hd; d++) s = fmaf(a[d], b[d], s);
    return __fmul_rn(scale, s);
}

__device__ static inline size_t view_at(const at_params &p, int h, int i, int b) {
    return (size_t)h * p.vhead + (size_t)i * p.vrow + (size_t)b;
}

__global__ static void at_fwd_kernel(at_params p) {
    extern __shared__ float sh[];
    const int ld = p.hd + 1;         // padded rows: a warp reading 16 keys' element d hits 16 banks
    float *sq = sh;                  // [QT][ld] queries
    float *sk = sq + AT_QT * ld;     // [KT][ld] keys of the tile
    float *sv = sk + AT_KT * ld;     // [KT][hd] values of the tile
    float *sp = sv + AT_KT * p.hd;   // [QT][KT] scores, then exp(score - tile row max)
    float *sal = sp + AT_QT * AT_KT; // [QT] rescale of a row's running sums
    float *sbe = sal + AT_QT;        // [QT] weight of this tile for the row
    float *sfm = sbe + AT_QT;        // [QT] final row max
    float *sfl = sfm + AT_QT;        // [QT] final row sum
    const int tid = threadIdx.x, h = blockIdx.y;
    const int i0 = blockIdx.x * AT_QT, nrows = min(AT_QT, p.n_q - i0);
    const int last = p.pos0 + i0 + nrows - 1; // last key any row of this tile sees
    for (int idx = tid; idx < AT_QT * p.hd; idx += AT_THREADS) {
        int r = idx / p.hd, d = idx % p.hd;
        sq[r * ld + d] = r < nrows ? p.q[(size_t)(i0 + r) * p.ldq + (size_t)h * p.hd + d] : 0.0f;
    }
    // Row r's softmax state lives in thread r (< QT): running max m and sum
    // l, and the raw view block being accumulated (max logit vm, sum vs).
    float m = -INFINITY, l = 0.0f, vm = -INFINITY, vs = 0.0f;
    int vcur = -1;
    float acc[AT_ACC];
#pragma unroll
    for (int a = 0; a < AT_ACC; a++) acc[a] = 0.0f;

    const int n_tiles = last / AT_KT + 1;
    for (int kt = 0; kt < n_tiles; kt++) {
        const int j0 = kt * AT_KT, nk = min(AT_KT, last + 1 - j0);
        __syncthreads(); // queries loaded; the previous tile is consumed
        for (int idx = tid; idx < AT_KT * p.hd; idx += AT_THREADS) {
            int jj = idx / p.hd, d = idx % p.hd;
            float kx = 0.0f, vx = 0.0f;
            if (jj < nk) {
                size_t o = (size_t)(j0 + jj) * p.ldkv + d;
                kx = p.k[o];
                vx = p.v[o];
            }
            sk[jj * ld + d] = kx;
            sv[jj * p.hd + d] = vx;
        }
        __syncthreads();
        for (int idx = tid; idx < AT_QT * AT_KT; idx += AT_THREADS) {
            int r = idx / AT_KT, jj = idx % AT_KT;
            bool ok = r < nrows && jj < nk && j0 + jj <= p.pos0 + i0 + r;
            sp[idx] = ok ? score(sq + r * ld, sk + jj * ld, p.hd, p.scale) : -INFINITY;
        }
        __syncthreads();
        if (tid < AT_QT) {
            float *row = sp + tid * AT_KT;
            float lm = -INFINITY;
            for (int jj = 0; jj < AT_KT; jj++) lm = fmaxf(lm, row[jj]);
            float al = 1.0f, be = 0.0f;
            if (lm > -INFINITY) {
                float ps = 0.0f;
                for (int jj = 0; jj < AT_KT; jj++) {
                    float e = row[jj] > -INFINITY ? expf(row[jj] - lm) : 0.0f;
                    row[jj] = e;
                    ps += e;
                }
                float mn = fmaxf(m, lm);
                al = expf(m - mn);
                be = expf(lm - mn);
                l = l * al + ps * be;
                m = mn;
                if (p.bmax) {
                    // A key tile lies inside one view block (vblock % KT == 0).
                    int vb = j0 / p.vblock;
                    if (vb != vcur) {
                        if (vcur >= 0 && vcur < p.n_vblocks) {
                            size_t o = view_at(p, h, i0 + tid, vcur);
                            p.bmax[o] = vm;
                            p.bsum[o] = vs;
                        }
                        vcur = vb;
                        vm = lm;
                        vs = ps;
                    } else {
                        float nm = fmaxf(vm, lm);
                        vs = vs * expf(vm - nm) + ps * expf(lm - nm);
                        vm = nm;
                    }
                }
            } else {
                for (int jj = 0; jj < AT_KT; jj++) row[jj] = 0.0f;
            }
            sal[tid] = al;
            sbe[tid] = be;
        }
        __syncthreads();
#pragma unroll
        for (int a = 0; a < AT_ACC; a++) {
            int idx = tid + a * AT_THREADS;
            if (idx < AT_QT * p.hd) {
                int r = idx / p.hd, d = idx % p.hd;
                const float *pr = sp + r * AT_KT;
                float sum = 0.0f;
                for (int jj = 0; jj < AT_KT; jj++) sum = fmaf(pr[jj], sv[jj * p.hd + d], sum);
                acc[a] = acc[a] * sal[r] + sbe[r] * sum;
            }
        }
    }

    if (tid < AT_QT) {
        if (p.bmax && vcur >= 0 && vcur < p.n_vblocks) {
            size_t o = view_at(p, h, i0 + tid, vcur);
            p.bmax[o] = vm;
            p.bsum[o] = vs;
        }
        sfm[tid] = m;
        sfl[tid] = l;
        if (p.stats && tid < nrows) p.stats[(size_t)h * p.n_q + i0 + tid] = make_float2(m, l);
    }
    // Also publishes the raw views written above to the whole thread block.
    __syncthreads();
#pragma unroll
    for (int a = 0; a < AT_ACC; a++) {
        int idx = tid + a * AT_THREADS;
        if (idx < AT_QT * p.hd) {
            int r = idx / p.hd, d = idx % p.hd;
            if (r < nrows) p.out[(size_t)(i0 + r) * p.ldo + (size_t)h * p.hd + d] = acc[a] / sfl[r];
        }
    }
    if (!p.bmax) return;
    for (int idx = tid; idx < nrows * p.n_vblocks; idx += AT_THREADS) {
        int r = idx / p.n_vblocks, b = idx % p.n_vblocks;
        size_t o = view_at(p, h, i0 + r, b);
        float mx = 0.0f, sm = 0.0f;
        if ((long)b * p.vblock <= (long)p.pos0 + i0 + r) {
            mx = expf(p.bmax[o] - sfm[r]) / sfl[r];
            sm = p.bsum[o] * mx;
        }
        p.bmax[o] = mx;
        p.bsum[o] = sm;
    }
}

__global__ static void at_colsum_kernel(at_params p) {
    extern __shared__ float sh[];
    const int ld = p.hd + 1;
    float *sk = sh;                           // [CS_KEYS][ld]
    float *sq = sk + CS_KEYS * ld;            // [QT][ld]
    float2 *st = (float2 *)(sq + AT_QT * ld); // [QT]; (CS_KEYS + QT) * ld is even: aligned
    const int tid = threadIdx.x, h = blockIdx.y;
    const int j0 = blockIdx.x * CS_KEYS, j = j0 + tid;
    const int n_keys = p.pos0 + p.n_q;
    for (int idx = tid; idx < CS_KEYS * p.hd; idx += CS_KEYS) {
        int jj = idx / p.hd, d = idx % p.hd;
        sk[jj * ld + d] = j0 + jj < n_keys ? p.k[(size_t)(j0 + jj) * p.ldkv + d] : 0.0f;
    }
    // Each thread owns one key and adds the rows in increasing order:
    // a fixed summation order, in double as on the CPU.
    double acc = 0.0;
    const int first = j0 - p.pos0 > 0 ? j0 - p.pos0 : 0; // earlier rows see none of these keys
    for (int ib = first; ib < p.n_q; ib += AT_QT) {
        const int nr = min(AT_QT, p.n_q - ib);
        __syncthreads(); // keys loaded; the previous rows are consumed
        for (int idx = tid; idx < AT_QT * p.hd; idx += CS_KEYS) {
            int r = idx / p.hd, d = idx % p.hd;
            sq[r * ld + d] = r < nr ? p.q[(size_t)(ib + r) * p.ldq + (size_t)h * p.hd + d] : 0.0f;
        }
        if (tid < AT_QT)
            st[tid] = tid < nr ? p.stats[(size_t)h * p.n_q + ib + tid] : make_float2(0.0f, 1.0f);
        __syncthreads();
        if (j >= n_keys) continue;
        for (int r = 0; r < nr; r++) {
            if (j > p.pos0 + ib + r) continue;
            float sc = score(sq + r * ld, sk + tid * ld, p.hd, p.scale);
            acc += (double)(expf(sc - st[r].x) / st[r].y);
        }
    }
    if (j < n_keys) p.colsum[(size_t)h * p.cstride + j] += acc;
}

extern "C" ap_status ap_attn_cuda(const ap_attn_cuda_args *a, void *d_work, size_t work_bytes,
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
    at_params p;
    p.n_q = a->n_q;
    p.pos0 = a->pos0;
    p.hd = a->head_dim;
    p.vblock = a->vblock;
    p.n_vblocks = a->n_vblocks;
    p.scale = a->scale;
    p.q = a->q;
    p.k = a->k;
    p.v = a->v;
    p.ldq = a->ldq;
    p.ldkv = a->ldkv;
    p.ldo = a->ldo;
    p.out = a->out;
    p.bmax = a->bmax;
    p.bsum = a->bsum;
    p.vrow = a->view_row_stride;
    p.vhead = a->view_head_stride;
    p.colsum = a->colsum;
    p.cstride = a->colsum_stride;
    p.stats = a->colsum ? (float2 *)d_work : NULL;

    const size_t ld = (size_t)p.hd + 1;
    const size_t fwd_smem =
        sizeof(float) * ((AT_QT + AT_KT) * ld + AT_KT * (size_t)p.hd + AT_QT * AT_KT + 4 * AT_QT);
    st = ap_cuda_status((int)AP_CUDA_SMEM_OPTIN(at_fwd_kernel, fwd_smem),
                        "attention shared memory opt-in", err);
    if (st != AP_OK) return st;
    dim3 grid((unsigned)((a->n_q + AT_QT - 1) / AT_QT), (unsigned)a->n_heads);
    at_fwd_kernel<<<grid, AT_THREADS, fwd_smem, s>>>(p);
    st = AP_CUDA_LAUNCHED("attention kernel launch", err);
    if (st != AP_OK || !a->colsum) return st;

    const size_t cs_smem = sizeof(float) * (CS_KEYS + AT_QT) * ld + sizeof(float2) * AT_QT;
    st = ap_cuda_status((int)AP_CUDA_SMEM_OPTIN(at_colsum_kernel, cs_smem),
                        "column-sum shared memory opt-in", err);
    if (st != AP_OK) return st;
    const int n_keys = a->pos0 + a->n_q;
    dim3 cgrid((unsigned)((n_keys + CS_KEYS - 1) / CS_KEYS), (unsigned)a->n_heads);
    at_colsum_kernel<<<cgrid, CS_KEYS, cs_smem, s>>>(p);
    return AP_CUDA_LAUNCHED("attention column-sum launch", err);
}

// ---------------------------------------------------------------- rows

#define AR_THREADS 256

struct ar_params {
    int n_q, pos0, hd;
    float scale;
    const float *q, *k;
    size_t ldq, ldkv, rstride, hstride;
    float *probs;
};

// Block-wide reduction of one value per thread in a fixed tree order.
__device__ static float ar_reduce(float v, float *red, int is_max) {
    const int tid = threadIdx.x;
    red[tid] = v;
    __syncthreads();
    for (int w = AR_THREADS / 2; w > 0; w >>= 1) {
        if (tid < w) red[tid] = is_max ? fmaxf(red[tid], red[tid + w]) : red[tid] + red[tid + w];
        __syncthreads();
    }
    float r = red[0];
    __syncthreads();
    return r;
}

__global__ static void ar_kernel(ar_params p) {
    extern __shared__ float sh[];
    float *sq = sh;            // [hd] the query
    float *red = sq + p.hd;    // [AR_THREADS]
    const int i = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    const int n = p.pos0 + i + 1;
    float *row = p.probs + (size_t)h * p.hstride + (size_t)i * p.rstride;
    for (int d = tid; d < p.hd; d += AR_THREADS) sq[d] = p.q[(size_t)i * p.ldq + (size_t)h * p.hd + d];
    __syncthreads();
    float m = -INFINITY;
    for (int j = tid; j < n; j += AR_THREADS) {
        float sc = score(sq, p.k + (size_t)j * p.ldkv, p.hd, p.scale);
        row[j] = sc;
        m = fmaxf(m, sc);
    }
    m = ar_reduce(m, red, 1);
    float l = 0.0f;
    for (int j = tid; j < n; j += AR_THREADS) {
        float e = expf(row[j] - m);
        row[j] = e;
        l += e;
    }
    l = ar_reduce(l, red, 0);
    const float inv = 1.0f / l;
    for (int j = tid; j < n; j += AR_THREADS) row[j] *= inv;
}

extern "C" ap_status ap_attn_rows_cuda(const ap_attn_rows_cuda_args *a, ap_cuda_stream s,
                                       ap_err *err) {
    ap_status st = ap_attn_rows_cuda_validate(a, err);
    if (st != AP_OK || a->n_q == 0) return st;
    if (a->n_heads > 65535)
        return ap_errf(err, AP_ERR_UNSUPPORTED, "attention rows (CUDA): %d heads", a->n_heads);
    ar_params p;
    p.n_q = a->n_q;
    p.pos0 = a->pos0;
    p.hd = a->head_dim;
    p.scale = a->scale;
    p.q = a->q;
    p.k = a->k;
    p.ldq = a->ldq;
    p.ldkv = a->ldkv;
    p.rstride = a->row_stride;
    p.hstride = a->head_stride;
    p.probs = a->probs;
    const size_t smem = sizeof(float) * ((size_t)p.hd + AR_THREADS);
    dim3 grid((unsigned)a->n_q, (unsigned)a->n_heads);
    ar_kernel<<<grid, AR_THREADS, smem, s>>>(p);
    return AP_CUDA_LAUNCHED("attention rows launch", err);
}
