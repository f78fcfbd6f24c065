/* Sparse decode attention: one decode query per query head attends only to
 * a kept set of its keys (the method's selection step, method.md 4.2 steps
 * 3-4), with the softmax renormalised over the kept keys.
 *
 * Kept set of a query head over keys 0..n_keys-1 (the query sits at position
 * n_keys-1, its own key already cached):
 *   - the sink tokens [0, sink),
 *   - the last `local` tokens [n_keys - local, n_keys),
 *   - every key of each listed block b: [b*block, min((b+1)*block, n_keys)).
 * Block indices are absolute (block 0 starts at key 0) and the union is
 * token-exact: a key covered twice (sink or local overlapping a listed
 * block) counts once; the last block may be partial.
 *
 * Lists come one per KV head (all query heads of a GQA group share it,
 * per_q_head = 0) or one per query head (per_q_head = 1, as the official
 * code does). Set s's list is blocks[set_off[s] .. set_off[s+1]).
 *
 * Outputs per query head (index u = g*n_heads + h):
 *   out                attention output over the kept keys (required);
 *   n_kept             number of kept keys (optional);
 *   bmax, bsum         block max / block sum of the sparse probability row,
 *                      0 for blocks with no kept key: the non-calibration
 *                      history row of the predictor (optional, both or
 *                      neither; ceil(n_keys/block) entries at u*ldb);
 * and in measure mode (any of the three below non-NULL), which also
 * computes the dense row over all keys (O(n_keys x head_dim)):
 *   kept_mass          dense softmax mass on the kept keys: the attention
 *                      recovery rate of method.md 6;
 *   dense_bmax/_bsum   block views of the dense row: the calibration row
 *                      (both or neither, same layout as bmax).
 *
 * K/V come from one of two layouts:
 *   contiguous  k, v:  group g's key j at k + g*group_stride + j*ldkv (the
 *               engine's cache: group_stride = head_dim, ldkv = kv_dim);
 *   paged       k_pages, v_pages (k, v NULL): one pointer per block of
 *               `block` keys, group g's key j at
 *               k_pages[g*n_pages + j/block] + (j%block)*ldkv with
 *               n_pages = ceil(n_keys/block). This is the "cold store + hot
 *               cache" layout: each page points wherever that block lives
 *               (a hot pool slot, the cold store, pinned host memory the GPU
 *               reads over the bus). Pages no kept key touches may be NULL,
 *               except in measure mode, which reads every key.
 * Every pointer in the struct is borrowed; nothing is freed or kept. */
#ifndef AP_SPARSE_ATTN_H
#define AP_SPARSE_ATTN_H

#include <stddef.h>

#include "common/status.h"
#include "kernels/cuda_util.h"
#include "kernels/qmatvec.h"

typedef struct {
    int n_groups; /* K/V heads handled by this call (>= 1) */
    int n_heads;  /* query heads per K/V head (>= 1) */
    int head_dim;
    int n_keys;         /* cached keys; the query is at position n_keys - 1 */
    float scale;        /* multiplies q·k; usually 1/sqrt(head_dim) */
    const float *q;     /* query head h of group g at q + (g*n_heads + h)*head_dim */
    /* K/V elements are of kv_type (the CPU reads AP_KV_F32 and AP_KV_F16;
     * the CUDA kernels AP_KV_F32 only); strides below count elements. */
    const void *k, *v;                          /* contiguous layout (or NULL for paged) */
    const void *const *k_pages, *const *v_pages; /* paged layout */
    ap_kv_type kv_type;
    size_t ldkv;                                  /* between consecutive keys (both layouts) */
    size_t group_stride;                          /* between K/V heads (contiguous layout) */
    float *out;                                   /* same layout as q */
    int block; /* block size of the lists and of the block views (16) */
    int sink, local;
    int per_q_head;
    const int *blocks;              /* may be NULL when every list is empty */
    const int *set_off;             /* n_groups + 1 entries, or n_groups*n_heads + 1 */
    int *n_kept;                    /* optional [n_groups*n_heads] */
    float *bmax, *bsum;             /* optional, [n_groups*n_heads][ldb] */
    float *kept_mass;               /* optional [n_groups*n_heads] */
    float *dense_bmax, *dense_bsum; /* optional, [n_groups*n_heads][ldb] */
    size_t ldb;
    /* Optional, measure mode only: the dense scores scale*q.k of every query
     * head of the call over all keys, row u (= g*n_heads + h) at
     * dense_scores + u*ld_dense, computed by the caller (the engine splits
     * that pass over threads by key chunks); used instead of computing them
     * and overwritten with the dense probabilities. NULL: computed here. */
    float *dense_scores;
    size_t ld_dense;
} ap_sparse_attn_args;

/* ceil(n_keys / block): blocks of the sequence, entries of a block view. */
int ap_sparse_attn_n_blocks(const ap_sparse_attn_args *a);
int ap_sparse_attn_measuring(const ap_sparse_attn_args *a);

/* Shape, pointer and layout checks. With lists_on_host, also the lists
 * (each strictly increasing, inside [0, n_blocks)), that no kept set is
 * empty, and that every page a kept key (measure: any key) needs is set. The
 * CPU functions call it with lists_on_host = 1, the CUDA one with 0. */
ap_status ap_sparse_attn_validate(const ap_sparse_attn_args *a, int lists_on_host, ap_err *err);

/* CPU. Keys are gathered run by run (sink, merged blocks, local window: a
 * 16-key page at a time in the paged layout) through the AVX2 decode kernels
 * of qmatvec.h, so a call costs O(kept keys x head_dim) per query head (plus
 * O(n_blocks) to clear the block views); a group list is scored for all
 * heads of the group in one pass over its keys. `scratch` holds
 * ap_sparse_attn_scratch_bytes(a) bytes (caller-owned, any alignment of
 * malloc). One call does every group in turn; to split the work over
 * threads, call it per group with pointers offset by the caller. */
size_t ap_sparse_attn_scratch_bytes(const ap_sparse_attn_args *a);
ap_status ap_sparse_attn(const ap_sparse_attn_args *a, void *scratch, ap_err *err);

/* Float64 reference: a keep mask per query head, plain loops, its own
 * allocations. */
ap_status ap_sparse_attn_ref(const ap_sparse_attn_args *a, ap_err *err);

/* CUDA: every pointer in *a a device pointer (page tables are device arrays
 * of device or mapped pinned-host pointers), queued on stream s. Three
 * kernels: a plan (per set: the blocks its keys touch, and the kept-key
 * count), a split-over-keys pass (about 128 keys per thread block, online
 * softmax) and a combine that also finishes the block views, all with fixed
 * reduction orders (deterministic). Lists need not be sorted on the device:
 * duplicates merge and entries outside [0, n_blocks) are ignored (the CPU
 * rejects them: validate host lists before uploading); an empty kept set
 * gives a zero output and n_kept 0. d_work holds
 * ap_sparse_attn_cuda_work_bytes(a) bytes of device memory. head_dim <= 256,
 * block <= 1024. AP_ERR_UNSUPPORTED without CUDA. */
size_t ap_sparse_attn_cuda_work_bytes(const ap_sparse_attn_args *a);
ap_status ap_sparse_attn_cuda(const ap_sparse_attn_args *a, void *d_work, size_t work_bytes,
                              ap_cuda_stream s, ap_err *err);

/* The device work layout (shared by the byte count above and the .cu):
 * byte offsets of each part, 256-byte aligned. */
typedef struct {
    int n_sets, n_units, n_blocks, chunk_blocks, n_chunks;
    size_t flags, plan, plan_n, plan_kept, part, vraw, draw, total;
} ap_sparse_cuda_layout;
void ap_sparse_attn_cuda_layout(const ap_sparse_attn_args *a, ap_sparse_cuda_layout *l);

#endif
