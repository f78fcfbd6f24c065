/* Hand-built tiny traces for the replay tests: every row is set at block
 * level, so the tests know each selector's kept set exactly. Rows start as a
 * background weight of 1 on every causal block; tests add weight where they
 * want attention, then ap_tiny_finish() normalises each row into block_sum
 * (sums to 1) and block_max (= block_sum: one key per block carries the
 * block's mass). The file is written with the real trace writer.
 *
 * Ownership: ap_tiny_seq owns its arrays; ap_tiny_seq_free releases them
 * (a zeroed struct is a no-op). */
#ifndef AP_TINY_TRACE_H
#define AP_TINY_TRACE_H

#include <stdint.h>

#include "capture/trace.h"
#include "common/status.h"

typedef struct {
    int n_layer, n_head, n_head_kv, head_dim, block, history;
} ap_tiny_shape;

typedef struct {
    ap_tiny_shape shape;
    char id[32];
    int n_prompt, n_gen;
    int n_pre, S, NB;   /* recorded prefill rows, steps, blocks */
    double *weight;     /* [n_layer][S][n_head][NB] unnormalised; 0 past causal */
    float *block_max;   /* filled by ap_tiny_finish */
    float *block_sum;
    float *query;       /* [n_layer][S][n_head][head_dim], NULL without query */
    float *key_min;     /* [n_layer][n_head_kv][NB][head_dim] */
    float *key_max;
    float *colsum;      /* [n_layer][n_head][n_prompt], NULL without colsum; starts at 1 */
    int32_t *tokens, *step_pos;
} ap_tiny_seq;

ap_status ap_tiny_seq_init(ap_tiny_seq *s, const ap_tiny_shape *shape, const char *id,
                           int n_prompt, int n_gen, int with_query, int with_colsum,
                           ap_err *err);
void ap_tiny_seq_free(ap_tiny_seq *s);

/* Recorded step of decode step t; the position of recorded step s. */
int ap_tiny_step_of(const ap_tiny_seq *s, int t);
int ap_tiny_pos(const ap_tiny_seq *s, int step);

/* Weight of block j in the row (layer, recorded step, head); adding to a
 * block past the row's causal length is ignored. */
double *ap_tiny_w(ap_tiny_seq *s, int layer, int step, int head, int j);
void ap_tiny_add(ap_tiny_seq *s, int layer, int step, int head, int j, double w);

/* Normalise the weights into block_sum / block_max. */
void ap_tiny_finish(ap_tiny_seq *s);
const float *ap_tiny_sum_row(const ap_tiny_seq *s, int layer, int step, int head);

/* Writes finished sequences as one trace (model name "tiny", every layer
 * full attention). */
ap_status ap_tiny_write(const char *path, const ap_tiny_seq *seqs, int n, ap_err *err);
/* The same with an architecture name and each layer's attention window
 * ([n_layer], 0 = full, > 0 = sliding window; NULL = all full). */
ap_status ap_tiny_write_windows(const char *path, const ap_tiny_seq *seqs, int n, const char *arch,
                                const int *layer_window, ap_err *err);

#endif
