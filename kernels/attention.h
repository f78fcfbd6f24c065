/* Causal softmax attention of the query heads that share one K/V head (a
 * GQA group, or a single head) over the K/V cache.
 *
 * Query row i sits at absolute position pos0 + i and attends keys
 * 0..pos0+i. Rows go in chunks: one chunk's [chunk x keys] score block is the
 * only quadratic buffer, so 8K-token prefills stay at chunk*8K floats per
 * thread. Q·Kᵀ and P·V are single-threaded BLAS calls; the caller
 * parallelizes across heads or groups.
 *
 * A single query row (decode) with several heads runs the group as one
 * [n_heads x keys] product, so the cached keys and values stream through
 * memory once per group instead of once per head: decode at long context is
 * bound by exactly that traffic. */
#ifndef AP_ATTENTION_H
#define AP_ATTENTION_H

#include <stddef.h>

/* Receives the post-softmax probabilities of query head `head` (index within
 * the group) at position pos over keys 0..pos (len = pos + 1). probs is
 * scratch: valid only during the call. */
typedef void (*ap_attn_row_fn)(void *user, int head, int pos, const float *probs, int len);

typedef struct {
    int n_q;           /* query rows (positions) */
    int n_heads;       /* query heads sharing k/v (>= 1) */
    int pos0;          /* absolute position of query row 0 */
    int head_dim;
    float scale;       /* multiplies q·k; usually 1/sqrt(head_dim) */
    const float *q;    /* head h, row i at q + i*ldq + h*head_dim */
    size_t ldq;
    const float *k;    /* key of position j at k + j*ldkv, j < pos0 + n_q */
    const float *v;    /* value of position j at v + j*ldkv */
    size_t ldkv;
    float *out;        /* head h, row i at out + i*ldo + h*head_dim */
    size_t ldo;
    double *colsum;    /* optional: head h's [pos0 + n_q] sums at
                          colsum + h*colsum_stride; += probability each key
                          gets, over all n_q rows (reported or not) */
    size_t colsum_stride;
    ap_attn_row_fn on_row; /* optional; rows with pos >= rows_from, in
                              increasing pos order for each head */
    void *user;
    int rows_from;
    int window;        /* > 0: sliding window, row pos attends keys
                          pos-window+1..pos only (the rest get exact zeros
                          in the reported row); 0: every key 0..pos */
} ap_attn_args;

/* Floats of scratch ap_attn needs for `chunk` rows of n_heads heads against
 * at most n_keys keys. */
size_t ap_attn_scratch_floats(int chunk, int n_heads, int n_keys);
void ap_attn(const ap_attn_args *a, float *scratch, int chunk);

/* Plain loops in double, one full row at a time (no chunking, no grouping). */
size_t ap_attn_ref_scratch_bytes(int n_keys);
void ap_attn_ref(const ap_attn_args *a, void *scratch);

#endif
