/* Training/validation samples for the predictor, streamed from trace files.
 * Exact definitions (window, candidate columns, target, fixed mass, split,
 * iteration order, caching) are in docs/predictor-data.md; in short:
 *
 * A sample is (file, sequence, layer, head, decode step t), query position
 * q = n_prompt + t. Its candidate columns are blocks [sink_blocks,
 * ceil(q / block) - local_blocks) -- the width of the newest history row
 * minus the always-kept blocks, as the replay computes them (method.md 4.2).
 *   x [H][W]      block_max of the H recorded rows before step t, candidate
 *                 columns (rows before the first recorded one are zero)
 *   y [W]         block_max of the step-t row, candidate columns (target)
 *   ysum [W]      block_sum of the step-t row, candidate columns, 0 where the
 *                 block is inside the always-kept local blocks
 *   mass_fixed    block_sum of the step-t row over the sink and local blocks
 * Samples with fewer than min_candidates (3) columns are not produced: the
 * method bypasses the predictor there.
 *
 * Window rows come in two kinds (docs/predictor-data.md, "Sparse rows"):
 * dense = the true rows; sparse = the rows the sparse replay appends to its
 * history (method.md 4.2 step 5): every calib-th decode row dense, the others
 * the true row restricted to the blocks a selector kept and renormalised. The
 * selector is the last-step rule on that same sparse history (top-k of the
 * newest history row), so the data do not depend on the model being trained.
 * Targets, ysum and mass_fixed are always the dense (true) row's.
 *
 * Batches hold samples of one width W (and one layer group), so the CNN sees
 * exactly the input the replay gives it; no padding, no mask.
 *
 * Memory: only metadata is read at open. Per (sequence, layer) the
 * [S][n_head][NB] block_max and block_sum arrays are loaded on demand into an
 * LRU cache of at most cache_mb; the iteration order visits a few such chunks
 * at a time so each is normally read once per epoch.
 *
 * Not thread-safe: one thread uses a dataset and its iterators. Several
 * iterators may be alive at once (train and validation); they share the cache
 * and each stays correct, at the cost of extra reads. */
#ifndef AP_DATASET_H
#define AP_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define AP_DS_MAX_LAYERS 256

typedef enum { AP_ROWS_DENSE = 0, AP_ROWS_SPARSE = 1 } ap_rows_kind;

typedef struct {
    int history;        /* H rows per window; 0 = the traces' history attribute */
    int block_size;     /* required block size (the predictor's); 0 = accept the traces' */
    int sink_blocks;    /* always-kept leading blocks (4 = 64 tokens) */
    int local_blocks;   /* always-kept trailing blocks (4 = 64 tokens) */
    int min_candidates; /* fewer candidate blocks = predictor bypassed (3) */
    double val_fraction;/* share of sequences held out for validation (0.1); unused
                           when first_val_file > 0 */
    int first_val_file; /* > 0: files [first_val_file, n_paths) are the validation
                           split and the others training (held out by source, not
                           by a random share of sequences); 0 = val_fraction */
    uint64_t seed;      /* split and shuffles */
    int batch_size;     /* samples per batch at most (256) */
    int pool_chunks;    /* (sequence, layer) chunks mixed per shuffle pool (8) */
    double cache_mb;    /* cache cap for loaded chunks (512) */
    /* layer -> group: batches never mix groups (one predictor model per
     * group); a negative group drops the layer. Default all 0 (one group,
     * every layer). Layers >= AP_DS_MAX_LAYERS are refused at open. The
     * traces' sliding-window layers are always dropped (issue 13: their KV
     * is bounded by the window, nothing selects in them). */
    int layer_group[AP_DS_MAX_LAYERS];
    /* Window rows iterators serve unless told otherwise (AP_ROWS_DENSE).
     * AP_ROWS_SPARSE builds the sparse rows when a chunk is loaded (the cache
     * then holds one more float per block: chunks are 1.5x larger), and
     * iterators may still ask for dense rows. */
    ap_rows_kind rows;
    int sparse_budget;  /* tokens of the simulated selection, sink + local included (1024) */
    /* n_sparse_budgets > 0: each (sequence, layer) chunk draws its selection
     * budget from sparse_budgets by a hash of (seed, file, sequence, layer),
     * so training windows mix the sparsities of several replay budgets;
     * sparse_budget is then unused. */
    int n_sparse_budgets;
    int sparse_budgets[8];
    int calib;          /* decode step t (0-based) keeps its dense row when
                           (t + 1) % calib == 0 (5, method.md 4.2); 0 = never */
    /* 1: batches also carry zq, the z-scored query bound of every candidate
     * (train/fusion.h) for the query-fusion predictor; chunks then read the
     * traces' query and key bounds (refused when a trace lacks them). */
    int query_fusion;
} ap_dataset_config;

void ap_dataset_config_default(ap_dataset_config *c);

typedef enum { AP_SPLIT_TRAIN = 0, AP_SPLIT_VAL = 1, AP_SPLIT_ALL = 2 } ap_split;

typedef struct ap_dataset ap_dataset;

/* Opens every path with ap_trace_open (which refuses a wrong format or
 * format_version, naming the expected one), checks that all files share
 * n_layer, n_head, block_size, history and which layers are full attention,
 * and that block_size equals cfg->block_size when that is set, reads each
 * sequence's step_pos, and
 * splits the sequences (identified by file + id). A sequence whose step_pos
 * does not follow the recorded layout is left out and counted. The paths are
 * copied; the files stay open until ap_dataset_free. */
ap_status ap_dataset_open(const char *const *paths, int n_paths, const ap_dataset_config *cfg,
                          ap_dataset **out, ap_err *err);
void ap_dataset_free(ap_dataset *ds); /* NULL is a no-op */

/* Replace the layer -> group map (filter) without reopening; counts change.
 * Sliding-window layers stay dropped (group -1) whatever the map says. */
ap_status ap_dataset_set_layer_groups(ap_dataset *ds, const int *layer_group, int n,
                                      ap_err *err);

typedef struct {
    int n_files;
    int n_layer, n_head, block_size, history; /* history = H of the windows */
    int n_seq_train, n_seq_val;
    int n_seq_bad;            /* left out: inconsistent step_pos / n_gen */
    long long n_samples_train, n_samples_val; /* after the layer filter */
    long long n_bypass;       /* (layer, head, t) with < min_candidates, all splits */
    long long n_short_history;/* samples whose window starts before the first row */
    int max_width;            /* largest W of any sample (buffer sizing) */
    size_t max_chunk_bytes;   /* one (sequence, layer) in the cache */
    size_t cache_cap_bytes;
    size_t cache_bytes;       /* now */
    size_t cache_peak_bytes;  /* never above cache_cap_bytes */
    long long cache_hits, cache_misses;
    /* Added with issue 13: full-attention layers, the only ones windows are
     * drawn from (sliding-window layers are dropped whatever the layer map
     * says; all n_layer for a trace without them). */
    int n_full_layers;
} ap_dataset_stats;

void ap_dataset_get_stats(const ap_dataset *ds, ap_dataset_stats *st);
/* 1 when layer l of the traces is full attention (0: sliding window, or l
 * out of range). */
int ap_dataset_layer_is_full(const ap_dataset *ds, int l);

/* The split of sequence (file index, sequence index in that file):
 * AP_SPLIT_TRAIN or AP_SPLIT_VAL, -1 if it was left out or does not exist. */
int ap_dataset_seq_split(const ap_dataset *ds, int file, int seq);

/* Where a sample came from. */
typedef struct {
    int file, seq, layer, head;
    int t;      /* decode step */
    int q;      /* query position n_prompt + t */
    int group;  /* layer group */
} ap_sample_ref;

/* Caller-side batch buffers, sized for batch_size samples of max_width
 * columns by ap_batch_alloc (owned by the batch; ap_batch_release frees).
 * After ap_dataset_iter_next the first n samples are packed densely with the
 * batch's W: x[i*H*W + r*W + j], y[i*W + j], ... */
typedef struct {
    int n;              /* samples in this batch (0 = epoch done) */
    int H, W;
    int group;          /* layer group of every sample */
    int cap_n, cap_w;   /* allocation */
    float *x;           /* [n][H][W] */
    float *y;           /* [n][W] */
    float *ysum;        /* [n][W] */
    float *mass_fixed;  /* [n] */
    ap_sample_ref *ref; /* [n] */
    float *zq;          /* [n][W] with cfg.query_fusion: z over the W candidates of
                           the step's query bound; else NULL */
} ap_batch;

ap_status ap_batch_alloc(const ap_dataset *ds, ap_batch *b, ap_err *err);
void ap_batch_release(ap_batch *b); /* safe on a zeroed struct */

typedef struct ap_dataset_iter ap_dataset_iter;

/* One pass over a split. shuffle = 1: order from (seed, epoch, split) --
 * the same arguments give the same batches; shuffle = 0: file, sequence,
 * layer, t, head order (validation). The iterator borrows ds. */
ap_status ap_dataset_iter_create(ap_dataset *ds, ap_split split, int epoch, int shuffle,
                                 ap_dataset_iter **out, ap_err *err);
void ap_dataset_iter_free(ap_dataset_iter *it); /* NULL is a no-op */

/* Window rows of this iterator (default: the dataset's cfg.rows). Sparse
 * rows need a dataset opened with rows = AP_ROWS_SPARSE (AP_ERR_ARG
 * otherwise). Call before the first ap_dataset_iter_next. */
ap_status ap_dataset_iter_set_rows(ap_dataset_iter *it, ap_rows_kind rows, ap_err *err);

/* Serve only a pseudo-random subset: each sample is kept with probability
 * `fraction` (0 < fraction <= 1), decided by a hash of (seed, salt, file,
 * sequence, layer, head, t) alone, so the subset is spread over every chunk
 * and does not depend on order, batching or cache size. The same salt gives
 * the same subset (a fixed validation subset); a new salt per epoch gives a
 * fresh training subset. Batches stay full: the subset is drawn before they
 * are cut. Call before the first ap_dataset_iter_next. */
ap_status ap_dataset_iter_set_subset(ap_dataset_iter *it, double fraction, uint64_t salt,
                                     ap_err *err);

/* Windows this pass will serve, bad rows aside: every (chunk, step, head) of
 * the split, or the exact size of the subset drawn by the last
 * ap_dataset_iter_set_subset. A whole pass serves this many minus the
 * windows it skips for bad rows (ap_iter_stats), never more. */
long long ap_dataset_iter_n_planned(const ap_dataset_iter *it);

/* Fill the next batch (b->n = 0 at the end). Samples whose window or target
 * row holds NaN/Inf, or a malformed row (negative value, non-zero past the
 * causal length, block_sum row not summing to 1), are skipped and counted.
 * With sparse rows a window row also counts as bad when the selection that
 * built it read a bad row (back to the last dense row). */
ap_status ap_dataset_iter_next(ap_dataset_iter *it, ap_batch *b, ap_err *err);

typedef struct {
    long long n_samples;         /* produced so far */
    long long n_batches;
    long long n_skipped_nonfinite;
    long long n_skipped_malformed;
} ap_iter_stats;

void ap_dataset_iter_get_stats(const ap_dataset_iter *it, ap_iter_stats *st);

/* Held out by source: the source key of a sequence is each Debian-package-like
 * prefix "PKG:/..." of its `source` attribute (several joined by " ; "), or
 * the whole attribute when it names no package. Fails with AP_ERR_ARG, naming
 * up to 8 shared keys and one trace on each side, when a sequence of `a`
 * shares a key with a sequence of `b` (what_a / what_b name the two sides in
 * the message, e.g. "--traces" and "--holdout"). Sequences without a source
 * attribute have no key and never clash. */
ap_status ap_dataset_check_disjoint_sources(const char *const *a, int na, const char *what_a,
                                            const char *const *b, int nb, const char *what_b,
                                            ap_err *err);

#endif
