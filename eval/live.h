/* Live selection: the replay's selectors (eval/selectors.h) driving a real
 * decode through the engine's KV policy hook (capture/model.h), so a method
 * chooses its kept set from what the running model produces and attention
 * reads only that set.
 *
 * The selectors see exactly the data layout the replay gives them
 * (ap_sel_data): prefill rows (block views of the last n_pre prefill
 * queries), per-block key bounds, prefill column sums, and after each decode
 * step the row that step produced. Where the dense row is computed
 * (calibration steps of history methods, the oracle, measuring) that row is
 * the dense one and the kept mass is the true one; otherwise it is the
 * sparse (renormalised) row with kept mass 1, which is the same thing the
 * selectors would derive from the dense row (history_row in selectors.c).
 * So a live run with a given trajectory makes the same choices a replay of
 * a trace of that trajectory would.
 *
 * Kept set of a query head at decode position q (keys 0..q): the sink
 * tokens, every block from the one holding key q + 1 - local to the last
 * (the replay's block-granular local window), and the k chosen candidate
 * blocks, k from the budget exactly as the replay computes it.
 *
 * Ownership: ap_live_prefill is filled by the prefill eval through its
 * observer and then read (borrowed) by every ap_live created from it; it
 * must outlive them. An ap_live borrows its selector, params (and the
 * predictor runtime in them) and prefill. Single-threaded. */
#ifndef AP_LIVE_H
#define AP_LIVE_H

#include <stdint.h>

#include "capture/model.h"
#include "eval/selectors.h"

typedef struct ap_live_prefill ap_live_prefill;
typedef struct ap_live ap_live;

/* For a prompt of n_prompt tokens followed by up to max_steps decode steps,
 * block views of the last min(n_pre, n_prompt) prefill rows. */
ap_status ap_live_prefill_create(const ap_hparams *hp, int block, int n_pre, int n_prompt,
                                 int max_steps, ap_live_prefill **out, ap_err *err);
void ap_live_prefill_free(ap_live_prefill *p);
/* Pass to ap_ctx_eval (or ap_cuda_model_eval_obs: it reports views) of
 * the prompt (the ctx must start empty). */
const ap_attn_observer *ap_live_prefill_observer(ap_live_prefill *p);

typedef struct {
    int budget;          /* tokens */
    int sink, local;     /* tokens; sink a multiple of the block */
    int min_candidates;  /* 3 */
    int measure;         /* 1: dense row and kept mass at every step (recovery) */
    /* 1: cross-token prefetch for the predictor: as soon as a layer has
     * attended, a worker thread runs that layer's history update (observe)
     * and scores its next step while the model computes the remaining
     * layers; the next select of the layer only waits for what is left.
     * Choices are unchanged. */
    int prefetch;
    /* Worker threads of the prefetch (0 or 1: one). Layers are independent
     * jobs, so with several workers the predictor's per-step work spreads
     * over cores while the engine decodes (GPU runs: the CPU is otherwise
     * idle). Choices are unchanged. */
    int prefetch_threads;
    /* 1: the worker also serves the other history methods (last_step,
     * H2O). Their scoring is cheap, so on the CPU it buys nothing; what it
     * buys is peek (ap_kv_policy): their next lists known a step early, for
     * an engine that copies kept blocks ahead (the CUDA engine's device
     * pool). */
    int prefetch_any;
    /* 1: a real hot pool. Per (layer, KV head) a pool of page slots (block
     * keys x head_dim elements of kv_type for K and for V each) holds exactly this step's
     * kept blocks (union over the head's query heads), copied from the
     * engine's cache (the cold store) when a block enters the kept set;
     * attention reads the pool through the policy's page tables
     * (ap_kv_policy.pages). Blocks leaving the kept set free their slots at
     * once (no caching of dropped blocks), so the pool is the working set
     * the accounting below describes, now measured. Capacity per (layer,
     * KV head): min(blocks of the sequence, sink blocks + ceil(local /
     * block) + 1 + max(group size x k_max, min_candidates - 1)), k_max =
     * (budget - sink - local) / block: the most blocks one step can keep
     * (the block-granular local window spans at most ceil(local / block) +
     * 1 blocks; each query head keeps at most k_max candidates, all of a
     * too-short candidate range when bypassing). Eviction methods
     * (AP_SEL_EVICTION) free a dropped block for good: needing it again is
     * an internal error. Choices are unchanged; outputs agree with the
     * contiguous path within the attention tolerance. */
    int hot_pool;
    /* Element type of the ctx's KV cache (ap_model_opts.kv_type): the hot
     * pool holds the same type, and a step of another type is an error. */
    ap_kv_type kv_type;
} ap_live_opts;

/* params: kv_mode, calib, snapkv_*, rt, incremental as for the replay; its
 * sink/local block fields are derived from opts. */
ap_status ap_live_create(const ap_live_prefill *pf, const ap_selector *sel,
                         const ap_sel_params *params, const ap_live_opts *opts, ap_live **out,
                         ap_err *err);
void ap_live_free(ap_live *lv);
/* Install with ap_ctx_set_kv_policy; pass the observer to every decode
 * ap_ctx_eval (it keeps the key bounds current). Decode steps must follow
 * the prompt in order, one token per eval. */
const ap_kv_policy *ap_live_policy(ap_live *lv);
const ap_attn_observer *ap_live_observer(ap_live *lv);

typedef struct {
    int steps;                 /* decode steps done */
    double select_seconds;     /* in score/choose/observe, all layers */
    double resident_tokens;    /* summed over steps: kept tokens per (layer, KV head), union
                                  over its query heads, summed over layers and KV heads */
    double full_tokens;        /* summed over steps: (q + 1) x layers x KV heads */
    /* Summed over steps: kept tokens of each (layer, KV head) union that the
     * previous step did not keep, i.e. what a hot cache backed by a cold
     * store would fetch (the newest token excepted: it is written, not
     * fetched), from the second step on (the first selects from the
     * prefill, which left everything in place). */
    double fetched_tokens;
    double recovery_sum;       /* summed dense kept mass over measured (step, layer, head) */
    long long recovery_n;
    long long bypass;          /* (step, layer) with fewer than min_candidates candidates */
    double score_seconds;      /* selector work (score + observe), prefetched or not, wall
                                  time of whoever ran it */
    double prefetch_wait_seconds; /* select blocked on a prefetched score */
    long long prefetched;      /* (step, layer) scored ahead */
    /* Hot pool (opts.hot_pool), measured on the pool's slots; all 0 without.
     * Sums over layers and KV heads. */
    double hot_capacity_bytes; /* allocated slots x slot bytes (K and V) */
    double hot_slot_bytes;     /* summed over steps: slots in use x slot bytes */
    double hot_tokens;         /* summed over steps: keys held in the slots in use (a partial
                                  last block counts its keys); equals resident_tokens */
    /* Keys copied from the cold store into a slot, the newest key excepted,
     * from the second step on: the same definition as fetched_tokens,
     * counted where the copies happen. */
    double pool_fetched_tokens;
    double pool_fill_tokens;    /* the same on the first step: filling the empty pool */
    double pool_written_tokens; /* newest keys written into their slots (one per layer, KV
                                   head and step when the newest block is kept) */
} ap_live_stats;

void ap_live_get_stats(const ap_live *lv, ap_live_stats *st);

#endif
