/* Synthetic traces with learnable temporal structure for trainer/eval tests:
 * every row puts mass on the sink, on the local window, on a "re-accessed"
 * block fixed per head, and on a hot block that moves one block every few
 * steps (the method's sequential pattern), plus noise. Written with the real
 * trace writer, so the files are valid attnpred traces. */
#ifndef AP_SYNTH_TRACE_H
#define AP_SYNTH_TRACE_H

#include <stdint.h>

#include "common/status.h"

typedef struct {
    int n_seq, n_layer, n_head, history, block, n_gen;
    int min_prompt, max_prompt; /* prompt lengths, spread over sequences */
    uint64_t seed;
    const char *source; /* every sequence's `source` attribute (NULL: none) */
    /* 1: also write query vectors and key bounds (head_dim 8) whose Quest
     * bound peaks on the block of the moving hot token the step attends:
     * information the history only has a step late. */
    int with_query;
    /* [n_layer] each layer's attention window for the trace meta (0 = full,
     * > 0 sliding); NULL = every layer full. Only the meta changes: rows look
     * alike in every layer, so a consumer that selects in a sliding-window
     * layer shows up in counts, not in the attention. arch NULL = "synthetic". */
    const int *layer_window;
    const char *arch;
} ap_synth_trace_opts;

/* 6 sequences, 2 layers, 3 heads, history 16, block 16, 40 generated,
 * prompts 300..600 tokens, seed 1. */
void ap_synth_trace_opts_default(ap_synth_trace_opts *o);
ap_status ap_synth_trace_write(const char *path, const ap_synth_trace_opts *o, ap_err *err);

#endif
