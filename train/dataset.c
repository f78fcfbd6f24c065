/* Predictor samples streamed from trace files. Definitions: docs/predictor-data.md. */
#include "train/dataset.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/trace.h"
#include "train/fusion.h"
#include "train/metrics.h"

/* Same bound the trace writer enforces on block_sum rows: loose enough for
 * float32 rounding over long rows, tight enough to catch a broken row. */
#define ROW_SUM_TOL 1e-3
/* block_max <= block_sum up to float32 rounding of the sum. */
#define MAX_LE_SUM_REL 1e-6f

enum { ROW_OK = 0, ROW_NONFINITE = 1, ROW_MALFORMED = 2 };

typedef struct {
    int file, seq;   /* file index, sequence index in that file */
    int n_prompt, n_gen;
    int n_pre;       /* recorded prefill rows: step s has position n_prompt - n_pre + s */
    int S, NB;
    int t0;          /* first decode step with >= min_candidates columns (n_gen: none) */
    int split;       /* AP_SPLIT_TRAIN / AP_SPLIT_VAL, -1 = left out */
} ds_seq;

typedef struct {
    int seq, layer;  /* global sequence index; -1 = free slot */
    float *bmax, *bsum;
    unsigned char *bad; /* [S][n_head] ROW_* */
    /* sparse rows (NULL unless cfg.rows is sparse): window rows as the sparse
     * replay builds them, and their flags including the rows their selection
     * read */
    float *xmax;
    unsigned char *xbad;
    /* query bound of every recorded step, head and block (NULL unless
     * cfg.query_fusion): Quest's page bound with the step's query */
    float *qb;
    size_t bytes;
    uint64_t tick;
} ds_entry;

struct ap_dataset {
    ap_dataset_config cfg;
    int n_files;
    ap_trace **files;
    int n_layer, n_head, block, H;
    int n_seqs;
    ds_seq *seqs;
    int *file_first; /* [n_files + 1] global index of each file's first sequence */
    int n_seq_bad, n_seq_split[2];
    long long n_samples[2], n_bypass, n_short;
    int max_width;
    size_t max_chunk_bytes;
    /* Windows come from full-attention layers only (issue 13): a
     * sliding-window layer's KV is bounded already, nothing selects in it. */
    uint8_t layer_full[AP_DS_MAX_LAYERS];
    int n_full_layers;
    /* LRU cache of (sequence, layer) chunks */
    ds_entry **ent; /* entries never move: batch fills hold pointers to them */
    int n_ent;
    size_t cache_cap, cache_bytes, cache_peak;
    uint64_t tick;
    long long hits, misses;
};

/* ------------------------------------------------------------------ random -- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Modulo bias is below n / 2^64: irrelevant for shuffles of < 2^32 items. */
static size_t rand_below(uint64_t *s, size_t n) { return (size_t)(splitmix64(s) % n); }

/* ----------------------------------------------------------------- geometry -- */

/* Candidate columns of decode step t: [c0, c0 + W). The history width is that
 * of the newest history row, position q - 1: ceil(q / block) blocks. */
static int width_at(const ap_dataset *ds, const ds_seq *s, int t) {
    int q = s->n_prompt + t;
    int w_hist = (q + ds->block - 1) / ds->block;
    return w_hist - ds->cfg.sink_blocks - ds->cfg.local_blocks;
}

static size_t chunk_bytes(const ap_dataset *ds, const ds_seq *s) {
    size_t rows = (size_t)s->S * (size_t)ds->n_head;
    size_t arrays = ds->cfg.rows == AP_ROWS_SPARSE ? 3 : 2;
    size_t floats = arrays + (ds->cfg.query_fusion ? 1 : 0);
    return rows * (size_t)s->NB * floats * sizeof(float) + rows * (arrays - 1);
}

void ap_dataset_config_default(ap_dataset_config *c) {
    memset(c, 0, sizeof *c);
    c->history = 0;
    c->block_size = 0;
    c->sink_blocks = 4;
    c->local_blocks = 4;
    c->min_candidates = 3;
    c->val_fraction = 0.1;
    c->seed = 1234;
    c->batch_size = 256;
    c->pool_chunks = 8;
    c->cache_mb = 512.0;
    c->rows = AP_ROWS_DENSE;
    c->sparse_budget = 1024;
    c->calib = 5;
}

static ap_status config_check(const ap_dataset_config *c, ap_err *err) {
    if (c->history < 0 || c->block_size < 0 || c->sink_blocks < 0 || c->local_blocks < 0)
        return ap_errf(err, AP_ERR_ARG,
                       "dataset: history %d, block_size %d, sink_blocks %d, local_blocks %d "
                       "must be >= 0",
                       c->history, c->block_size, c->sink_blocks, c->local_blocks);
    if (c->min_candidates < 1)
        return ap_errf(err, AP_ERR_ARG, "dataset: min_candidates %d must be >= 1",
                       c->min_candidates);
    if (!(c->val_fraction >= 0.0 && c->val_fraction < 1.0))
        return ap_errf(err, AP_ERR_ARG, "dataset: val_fraction %g must be in [0, 1)",
                       c->val_fraction);
    if (c->batch_size < 1 || c->pool_chunks < 1)
        return ap_errf(err, AP_ERR_ARG, "dataset: batch_size %d and pool_chunks %d must be >= 1",
                       c->batch_size, c->pool_chunks);
    if (!(c->cache_mb > 0.0))
        return ap_errf(err, AP_ERR_ARG, "dataset: cache_mb %g must be > 0", c->cache_mb);
    if (c->rows != AP_ROWS_DENSE && c->rows != AP_ROWS_SPARSE)
        return ap_errf(err, AP_ERR_ARG, "dataset: unknown row kind %d", (int)c->rows);
    if (c->first_val_file < 0)
        return ap_errf(err, AP_ERR_ARG, "dataset: first_val_file %d must be >= 0",
                       c->first_val_file);
    if (c->n_sparse_budgets < 0 || c->n_sparse_budgets > 8)
        return ap_errf(err, AP_ERR_ARG, "dataset: %d sparse budgets (at most 8)",
                       c->n_sparse_budgets);
    for (int i = 0; i < c->n_sparse_budgets; i++)
        if (c->sparse_budgets[i] < 1)
            return ap_errf(err, AP_ERR_ARG, "dataset: sparse budget %d must be >= 1",
                           c->sparse_budgets[i]);
    if (c->sparse_budget < 1 || c->calib < 0)
        return ap_errf(err, AP_ERR_ARG, "dataset: sparse_budget %d must be >= 1, calib %d >= 0",
                       c->sparse_budget, c->calib);
    return AP_OK;
}

/* Sample counts under the current layer filter. */
static void recount(ap_dataset *ds) {
    int n_in = 0;
    for (int l = 0; l < ds->n_layer; l++) n_in += ds->cfg.layer_group[l] >= 0;
    ds->n_samples[0] = ds->n_samples[1] = 0;
    ds->n_bypass = ds->n_short = 0;
    ds->n_seq_split[0] = ds->n_seq_split[1] = 0;
    ds->max_width = 0;
    ds->max_chunk_bytes = 0;
    for (int i = 0; i < ds->n_seqs; i++) {
        const ds_seq *s = &ds->seqs[i];
        if (s->split < 0) continue;
        ds->n_seq_split[s->split]++;
        long long per_lh = s->n_gen - s->t0;
        ds->n_samples[s->split] += per_lh * n_in * ds->n_head;
        ds->n_bypass += (long long)s->t0 * n_in * ds->n_head;
        /* steps t >= t0 whose window reaches before recorded row 0: n_pre + t < H */
        int t_full = ds->H - s->n_pre; /* first t with a full window */
        if (t_full > s->n_gen) t_full = s->n_gen;
        if (t_full > s->t0) ds->n_short += (long long)(t_full - s->t0) * n_in * ds->n_head;
        if (s->t0 < s->n_gen) {
            int w = width_at(ds, s, s->n_gen - 1);
            if (w > ds->max_width) ds->max_width = w;
        }
        size_t cb = chunk_bytes(ds, s);
        if (cb > ds->max_chunk_bytes) ds->max_chunk_bytes = cb;
    }
}

/* Checks the recorded layout: n_pre >= 1 prefill rows at the contiguous
 * positions before n_prompt, then one row per decode query. */
static int layout_ok(const int32_t *pos, const ap_trace_seq_info *in) {
    int n_pre = in->n_steps - in->n_gen;
    if (n_pre < 1 || n_pre > in->n_prompt) return 0;
    for (int s = 0; s < in->n_steps; s++)
        if (pos[s] != in->n_prompt - n_pre + s) return 0;
    return 1;
}

static ap_status index_file(ap_dataset *ds, int f, const char *path, ap_err *err) {
    ap_status st = AP_OK;
    int32_t *pos = NULL;
    const ap_trace *t = ds->files[f];
    int n = ap_trace_n_seq(t);
    for (int i = 0; i < n; i++) {
        ap_trace_seq_info in;
        st = ap_trace_seq_get_info(t, i, &in, err);
        if (st) goto cleanup;
        if (ds->cfg.query_fusion && !in.has_query) {
            /* Checked here, before the trainer creates its run directory, not
             * when the first batch of this sequence loads. */
            st = ap_errf(err, AP_ERR_ARG,
                         "%s: sequence '%s' has no query vectors or key bounds, which query "
                         "fusion (on in the default recipe) needs: capture without --no-quest, "
                         "or train with --recipe cnn",
                         path, in.id);
            goto cleanup;
        }
        ds_seq *s = &ds->seqs[ds->n_seqs++];
        memset(s, 0, sizeof *s);
        s->file = f;
        s->seq = i;
        s->n_prompt = in.n_prompt;
        s->n_gen = in.n_gen;
        s->S = in.n_steps;
        s->NB = in.n_blocks;
        s->n_pre = in.n_steps - in.n_gen;
        s->split = -1;
        int32_t *np = realloc(pos, (size_t)(in.n_steps > 0 ? in.n_steps : 1) * sizeof *pos);
        if (!np) {
            st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
            goto cleanup;
        }
        pos = np;
        st = ap_trace_read_i32(t, i, "step_pos", pos, (size_t)in.n_steps, err);
        if (st) goto cleanup;
        long long T = (long long)in.n_prompt + in.n_gen;
        if (!layout_ok(pos, &in) || (long long)in.n_blocks * ds->block < T ||
            (long long)(in.n_blocks - 1) * ds->block >= T) {
            ds->n_seq_bad++;
            continue;
        }
        /* smallest t with ceil(q / b) >= need, i.e. q > (need - 1) * b */
        long need = (long)ds->cfg.min_candidates + ds->cfg.sink_blocks + ds->cfg.local_blocks;
        long t0 = (need - 1) * ds->block + 1 - in.n_prompt;
        if (t0 < 0) t0 = 0;
        if (t0 > in.n_gen) t0 = in.n_gen;
        s->t0 = (int)t0;
        s->split = AP_SPLIT_TRAIN;
    }
cleanup:
    free(pos);
    return st;
}

static ap_status split_sequences(ap_dataset *ds, ap_err *err) {
    int n_good = 0;
    for (int i = 0; i < ds->n_seqs; i++) n_good += ds->seqs[i].split >= 0;
    if (n_good == 0) return AP_OK;
    if (ds->cfg.first_val_file > 0) {
        for (int i = 0; i < ds->n_seqs; i++)
            if (ds->seqs[i].split >= 0)
                ds->seqs[i].split =
                    ds->seqs[i].file >= ds->cfg.first_val_file ? AP_SPLIT_VAL : AP_SPLIT_TRAIN;
        return AP_OK;
    }
    int *perm = malloc((size_t)n_good * sizeof *perm);
    if (!perm) return ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory");
    int k = 0;
    for (int i = 0; i < ds->n_seqs; i++)
        if (ds->seqs[i].split >= 0) perm[k++] = i;
    uint64_t rng = ds->cfg.seed ^ 0x5EED5EED5EED5EEDull;
    for (int i = n_good - 1; i > 0; i--) {
        int j = (int)rand_below(&rng, (size_t)i + 1);
        int tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    int n_val = (int)floor(ds->cfg.val_fraction * n_good + 0.5);
    if (ds->cfg.val_fraction > 0 && n_good >= 2) {
        if (n_val < 1) n_val = 1;
        if (n_val > n_good - 1) n_val = n_good - 1;
    }
    if (n_good < 2) n_val = 0;
    for (int i = 0; i < n_good; i++)
        ds->seqs[perm[i]].split = i < n_val ? AP_SPLIT_VAL : AP_SPLIT_TRAIN;
    free(perm);
    return AP_OK;
}

ap_status ap_dataset_open(const char *const *paths, int n_paths, const ap_dataset_config *cfg,
                          ap_dataset **out, ap_err *err) {
    ap_status st = AP_OK;
    ap_dataset *ds = NULL;
    *out = NULL;
    st = config_check(cfg, err);
    if (st) return st;
    if (n_paths < 1) return ap_errf(err, AP_ERR_ARG, "dataset: no trace files given");
    if (cfg->first_val_file >= n_paths)
        return ap_errf(err, AP_ERR_ARG, "dataset: validation files start at %d of %d files",
                       cfg->first_val_file, n_paths);
    ds = calloc(1, sizeof *ds);
    if (!ds) return ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory");
    ds->cfg = *cfg;
    ds->files = calloc((size_t)n_paths, sizeof *ds->files);
    ds->file_first = calloc((size_t)n_paths + 1, sizeof *ds->file_first);
    if (!ds->files || !ds->file_first) {
        st = ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory");
        goto cleanup;
    }
    int total = 0;
    const ap_trace_meta *m0 = NULL;
    for (int f = 0; f < n_paths; f++) {
        st = ap_trace_open(paths[f], &ds->files[f], err);
        if (st) goto cleanup;
        ds->n_files = f + 1;
        const ap_trace_meta *m = ap_trace_get_meta(ds->files[f]);
        if (cfg->block_size > 0 && m->block_size != cfg->block_size) {
            st = ap_errf(err, AP_ERR_ARG,
                         "%s: trace block_size is %d, but the predictor expects block_size %d",
                         paths[f], m->block_size, cfg->block_size);
            goto cleanup;
        }
        if (!m0) {
            m0 = m;
            if (m->n_layer < 1 || m->n_layer > AP_DS_MAX_LAYERS || m->n_head < 1 ||
                m->block_size < 1 || m->history < 1) {
                st = ap_errf(err, AP_ERR_UNSUPPORTED,
                             "%s: n_layer %d (1..%d), n_head %d, block_size %d, history %d not "
                             "supported",
                             paths[f], m->n_layer, AP_DS_MAX_LAYERS, m->n_head, m->block_size,
                             m->history);
                goto cleanup;
            }
        } else if (m->n_layer != m0->n_layer || m->n_head != m0->n_head ||
                   m->block_size != m0->block_size || m->history != m0->history) {
            st = ap_errf(err, AP_ERR_ARG,
                         "%s: n_layer %d, n_head %d, block_size %d, history %d differ from %s "
                         "(%d, %d, %d, %d); a dataset needs traces of one layout",
                         paths[f], m->n_layer, m->n_head, m->block_size, m->history, paths[0],
                         m0->n_layer, m0->n_head, m0->block_size, m0->history);
            goto cleanup;
        } else {
            for (int l = 0; l < m->n_layer; l++)
                if (ap_trace_layer_is_full(m, l) != ap_trace_layer_is_full(m0, l)) {
                    st = ap_errf(err, AP_ERR_ARG,
                                 "%s: layer %d is %s attention, in %s %s; a dataset needs traces "
                                 "of one layout",
                                 paths[f], l, ap_trace_layer_is_full(m, l) ? "full" : "sliding-window",
                                 paths[0], ap_trace_layer_is_full(m0, l) ? "full" : "sliding-window");
                    goto cleanup;
                }
        }
        total += ap_trace_n_seq(ds->files[f]);
    }
    ds->n_layer = m0->n_layer;
    for (int l = 0; l < ds->n_layer; l++) {
        ds->layer_full[l] = (uint8_t)ap_trace_layer_is_full(m0, l);
        ds->n_full_layers += ds->layer_full[l];
        if (!ds->layer_full[l]) ds->cfg.layer_group[l] = -1;
    }
    ds->n_head = m0->n_head;
    ds->block = m0->block_size;
    ds->H = cfg->history > 0 ? cfg->history : m0->history;
    ds->seqs = calloc((size_t)(total > 0 ? total : 1), sizeof *ds->seqs);
    if (!ds->seqs) {
        st = ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory for %d sequences", total);
        goto cleanup;
    }
    for (int f = 0; f < n_paths; f++) {
        ds->file_first[f] = ds->n_seqs;
        st = index_file(ds, f, paths[f], err);
        if (st) goto cleanup;
    }
    ds->file_first[n_paths] = ds->n_seqs;
    st = split_sequences(ds, err);
    if (st) goto cleanup;
    recount(ds);
    ds->cache_cap = (size_t)(cfg->cache_mb * 1024.0 * 1024.0);
    if (ds->max_chunk_bytes > ds->cache_cap) {
        st = ap_errf(err, AP_ERR_RANGE,
                     "dataset: cache_mb %.3f is below one (sequence, layer) chunk of %.3f MB; "
                     "raise the cache size",
                     cfg->cache_mb, (double)ds->max_chunk_bytes / (1024.0 * 1024.0));
        goto cleanup;
    }
cleanup:
    if (st) {
        ap_dataset_free(ds);
        return st;
    }
    *out = ds;
    return AP_OK;
}

static void entry_release(ds_entry *e) {
    free(e->bmax);
    free(e->bsum);
    free(e->bad);
    free(e->xmax);
    free(e->xbad);
    free(e->qb);
    e->qb = NULL;
    e->bmax = e->bsum = e->xmax = NULL;
    e->bad = e->xbad = NULL;
}

void ap_dataset_free(ap_dataset *ds) {
    if (!ds) return;
    for (int i = 0; i < ds->n_ent; i++) {
        entry_release(ds->ent[i]);
        free(ds->ent[i]);
    }
    free(ds->ent);
    for (int f = 0; f < ds->n_files; f++) ap_trace_close(ds->files[f]);
    free(ds->files);
    free(ds->file_first);
    free(ds->seqs);
    free(ds);
}

ap_status ap_dataset_set_layer_groups(ap_dataset *ds, const int *layer_group, int n,
                                      ap_err *err) {
    if (n < ds->n_layer)
        return ap_errf(err, AP_ERR_ARG, "dataset: layer map has %d entries, the traces have %d "
                       "layers", n, ds->n_layer);
    for (int l = 0; l < ds->n_layer; l++)
        ds->cfg.layer_group[l] = ds->layer_full[l] ? layer_group[l] : -1;
    recount(ds);
    return AP_OK;
}

int ap_dataset_layer_is_full(const ap_dataset *ds, int l) {
    return l >= 0 && l < ds->n_layer && ds->layer_full[l];
}

void ap_dataset_get_stats(const ap_dataset *ds, ap_dataset_stats *st) {
    memset(st, 0, sizeof *st);
    st->n_files = ds->n_files;
    st->n_layer = ds->n_layer;
    st->n_full_layers = ds->n_full_layers;
    st->n_head = ds->n_head;
    st->block_size = ds->block;
    st->history = ds->H;
    st->n_seq_train = ds->n_seq_split[0];
    st->n_seq_val = ds->n_seq_split[1];
    st->n_seq_bad = ds->n_seq_bad;
    st->n_samples_train = ds->n_samples[0];
    st->n_samples_val = ds->n_samples[1];
    st->n_bypass = ds->n_bypass;
    st->n_short_history = ds->n_short;
    st->max_width = ds->max_width;
    st->max_chunk_bytes = ds->max_chunk_bytes;
    st->cache_cap_bytes = ds->cache_cap;
    st->cache_bytes = ds->cache_bytes;
    st->cache_peak_bytes = ds->cache_peak;
    st->cache_hits = ds->hits;
    st->cache_misses = ds->misses;
}

int ap_dataset_seq_split(const ap_dataset *ds, int file, int seq) {
    if (!ds || file < 0 || file >= ds->n_files) return -1;
    int g = ds->file_first[file] + seq;
    if (seq < 0 || g >= ds->file_first[file + 1]) return -1;
    return ds->seqs[g].split;
}

/* ------------------------------------------------------------------- cache -- */

static unsigned char row_check(const float *mx, const float *sm, int NB, int n_valid) {
    double sum = 0.0;
    unsigned char bad = ROW_OK;
    for (int j = 0; j < NB; j++) {
        if (!isfinite(mx[j]) || !isfinite(sm[j])) return ROW_NONFINITE;
        if (mx[j] < 0 || sm[j] < 0 || (j >= n_valid && (mx[j] != 0 || sm[j] != 0)) ||
            mx[j] > sm[j] * (1.0f + MAX_LE_SUM_REL))
            bad = ROW_MALFORMED;
        sum += sm[j];
    }
    if (fabs(sum - 1.0) > ROW_SUM_TOL) bad = ROW_MALFORMED;
    return bad;
}

/* The sparse replay's history rows of one head (method.md 4.2 step 5).
 * Prefill rows are dense. Decode step t appends its dense row when
 * (t + 1) % calib == 0; otherwise the true row restricted to the blocks kept
 * at step t, renormalised by their block_sum mass (what softmax over the
 * kept keys gives, at block granularity: a block touching the local window
 * counts whole, as in the recovery metric). Kept = sink blocks, blocks
 * touching the local window, and the top-k candidates of the newest history
 * row -- itself sparse unless it was a calibration row -- with k from
 * sparse_budget; fewer than min_candidates candidates = the method's all-ones
 * scores, i.e. the first k. order: scratch of at least NB ints. */
static void sparse_head(const ap_dataset *ds, const ds_seq *s, ds_entry *e, int h, int budget,
                        int *order) {
    const int nh = ds->n_head, NB = s->NB, bs = ds->block;
    const int c0 = ds->cfg.sink_blocks, calib = ds->cfg.calib;
    const int local_tokens = ds->cfg.local_blocks * bs;
    for (int r = 0; r < s->S; r++) {
        size_t off = ((size_t)r * nh + h) * NB, fl = (size_t)r * nh + h;
        const float *mx = e->bmax + off, *sm = e->bsum + off;
        float *out = e->xmax + off;
        int t = r - s->n_pre;
        if (t < 0 || (calib > 0 && (t + 1) % calib == 0)) {
            memcpy(out, mx, (size_t)NB * sizeof(float));
            e->xbad[fl] = e->bad[fl];
            continue;
        }
        const int q = s->n_prompt + t;
        const int n_valid = q / bs + 1 < NB ? q / bs + 1 : NB;
        int lb0 = q + 1 - local_tokens;
        lb0 = lb0 > 0 ? lb0 / bs : 0;
        if (local_tokens == 0) lb0 = q / bs + 1;
        /* candidates [c0, c1) from the newest history row, position q - 1 */
        const int c1 = (q + bs - 1) / bs - ds->cfg.local_blocks;
        const int W = c1 - c0;
        memset(out, 0, (size_t)NB * sizeof(float));
        for (int j = 0; j < n_valid; j++) out[j] = j < c0 || j >= lb0 ? 1.0f : 0.0f;
        if (W > 0) {
            int k = ap_metrics_k_blocks(budget, c0 * bs, local_tokens, bs, W);
            if (W < ds->cfg.min_candidates) {
                for (int j = 0; j < W; j++) order[j] = j;
            } else {
                const float *prev = e->xmax + ((size_t)(r - 1) * nh + h) * NB + c0;
                ap_metrics_rank(prev, W, order);
            }
            for (int j = 0; j < k; j++) out[c0 + order[j]] = 1.0f;
        }
        double kept = 0.0;
        for (int j = 0; j < n_valid; j++)
            if (out[j] != 0.0f) kept += sm[j];
        for (int j = 0; j < n_valid; j++)
            out[j] = out[j] != 0.0f && kept > 0.0 ? (float)(mx[j] / kept) : 0.0f;
        unsigned char prev_bad = e->xbad[(size_t)(r - 1) * nh + h];
        e->xbad[fl] = e->bad[fl] > prev_bad ? e->bad[fl] : prev_bad;
    }
}

/* e->qb: the query bound of every recorded step and head over all blocks
 * (the candidates of a step are a subset), from the traces' post-RoPE query
 * and key bounds, exactly as the replay's query-fusion scores. */
static ap_status load_query_bounds(ap_dataset *ds, const ds_seq *s, int layer, ds_entry *e,
                                   ap_err *err) {
    ap_status st = AP_OK;
    const ap_trace_meta *m = ap_trace_get_meta(ds->files[s->file]);
    const int nh = ds->n_head, kv = m->n_head_kv, hd = m->head_dim, NB = s->NB;
    float *q = malloc((size_t)s->S * nh * hd * sizeof(float) + 1);
    float *kmin = malloc((size_t)kv * NB * hd * sizeof(float) + 1);
    float *kmax = malloc((size_t)kv * NB * hd * sizeof(float) + 1);
    e->qb = malloc((size_t)s->S * nh * NB * sizeof(float) + 1);
    if (!q || !kmin || !kmax || !e->qb) {
        st = ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory loading query bounds");
        goto cleanup;
    }
    ap_trace *t = ds->files[s->file];
    st = ap_trace_read_layer(t, s->seq, layer, "query", q, (size_t)s->S * nh * hd, err);
    if (!st) st = ap_trace_read_layer(t, s->seq, layer, "key_min", kmin, (size_t)kv * NB * hd, err);
    if (!st) st = ap_trace_read_layer(t, s->seq, layer, "key_max", kmax, (size_t)kv * NB * hd, err);
    if (st) {
        ap_err_prefix(err, "query fusion (on in the default recipe) needs query vectors and "
                           "key bounds: capture without --no-quest, or train with --recipe cnn");
        goto cleanup;
    }
    const int group = nh / (kv > 0 ? kv : 1);
    for (int r = 0; r < s->S; r++)
        for (int h = 0; h < nh; h++)
            ap_query_bound(q + ((size_t)r * nh + h) * hd, kmin + (size_t)(h / group) * NB * hd,
                           kmax + (size_t)(h / group) * NB * hd, hd, NB,
                           e->qb + ((size_t)r * nh + h) * NB);
cleanup:
    free(q);
    free(kmin);
    free(kmax);
    return st;
}

static ap_status chunk_load(ap_dataset *ds, int g, int layer, ds_entry *e, ap_err *err) {
    ap_status st = AP_OK;
    const ds_seq *s = &ds->seqs[g];
    size_t n = (size_t)s->S * (size_t)ds->n_head * (size_t)s->NB;
    memset(e, 0, sizeof *e);
    e->seq = g;
    e->layer = layer;
    e->bmax = malloc((n ? n : 1) * sizeof(float));
    e->bsum = malloc((n ? n : 1) * sizeof(float));
    e->bad = malloc((size_t)s->S * (size_t)ds->n_head + 1);
    if (!e->bmax || !e->bsum || !e->bad) {
        st = ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory loading a chunk");
        goto cleanup;
    }
    st = ap_trace_read_layer(ds->files[s->file], s->seq, layer, "block_max", e->bmax, n, err);
    if (st) goto cleanup;
    st = ap_trace_read_layer(ds->files[s->file], s->seq, layer, "block_sum", e->bsum, n, err);
    if (st) goto cleanup;
    for (int r = 0; r < s->S; r++) {
        int n_valid = (s->n_prompt - s->n_pre + r) / ds->block + 1;
        for (int h = 0; h < ds->n_head; h++) {
            size_t off = ((size_t)r * ds->n_head + h) * s->NB;
            e->bad[(size_t)r * ds->n_head + h] =
                row_check(e->bmax + off, e->bsum + off, s->NB, n_valid);
        }
    }
    if (ds->cfg.rows == AP_ROWS_SPARSE) {
        e->xmax = malloc((n ? n : 1) * sizeof(float));
        e->xbad = malloc((size_t)s->S * (size_t)ds->n_head + 1);
        int *order = malloc((size_t)(s->NB > 0 ? s->NB : 1) * sizeof *order);
        if (!e->xmax || !e->xbad || !order) {
            free(order);
            st = ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory building sparse rows");
            goto cleanup;
        }
        int budget = ds->cfg.sparse_budget;
        if (ds->cfg.n_sparse_budgets > 0) {
            uint64_t z = ds->cfg.seed ^ 0xB0D6E75EEDull;
            z ^= splitmix64(&z) + (uint64_t)(unsigned)s->file;
            z ^= splitmix64(&z) + (uint64_t)(unsigned)s->seq;
            z ^= splitmix64(&z) + (uint64_t)(unsigned)layer;
            budget = ds->cfg.sparse_budgets[splitmix64(&z) % (uint64_t)ds->cfg.n_sparse_budgets];
        }
        for (int h = 0; h < ds->n_head; h++) sparse_head(ds, s, e, h, budget, order);
        free(order);
    }
    if (ds->cfg.query_fusion) {
        st = load_query_bounds(ds, s, layer, e, err);
        if (st) goto cleanup;
    }
    e->bytes = chunk_bytes(ds, s);
cleanup:
    if (st) entry_release(e);
    return st;
}

/* The cached chunk (seq g, layer), loaded if missing. The returned pointer is
 * valid until that entry is evicted; a miss evicts least recently used
 * entries only, so chunks fetched since the last miss stay valid as long as
 * they and the new one fit the cap together (pool_next guarantees it). */
static ap_status cache_get(ap_dataset *ds, int g, int layer, ds_entry **out, ap_err *err) {
    ap_status st = AP_OK;
    ds->tick++;
    for (int i = 0; i < ds->n_ent; i++) {
        ds_entry *e = ds->ent[i];
        if (e->seq == g && e->layer == layer) {
            e->tick = ds->tick;
            ds->hits++;
            *out = e;
            return AP_OK;
        }
    }
    ds->misses++;
    size_t need = chunk_bytes(ds, &ds->seqs[g]);
    /* Evict before loading so the cap holds at every instant. */
    while (ds->cache_bytes + need > ds->cache_cap && ds->n_ent > 0) {
        int lru = 0;
        for (int i = 1; i < ds->n_ent; i++)
            if (ds->ent[i]->tick < ds->ent[lru]->tick) lru = i;
        ds->cache_bytes -= ds->ent[lru]->bytes;
        entry_release(ds->ent[lru]);
        free(ds->ent[lru]);
        ds->ent[lru] = ds->ent[--ds->n_ent];
    }
    ds_entry **ne = realloc(ds->ent, (size_t)(ds->n_ent + 1) * sizeof *ne);
    if (!ne) return ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory for the cache index");
    ds->ent = ne;
    ds_entry *e = malloc(sizeof *e);
    if (!e) return ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory for a cache entry");
    st = chunk_load(ds, g, layer, e, err);
    if (st) {
        free(e);
        return st;
    }
    e->tick = ds->tick;
    ds->ent[ds->n_ent++] = e;
    ds->cache_bytes += e->bytes;
    if (ds->cache_bytes > ds->cache_peak) ds->cache_peak = ds->cache_bytes;
    *out = e;
    return AP_OK;
}

/* ---------------------------------------------------------------- iterator -- */

typedef struct {
    int seq, layer;
} ds_chunk;

typedef struct {
    int group, W;
    uint64_t r;     /* shuffle key (0 without shuffling) */
    int idx;        /* enumeration order: makes the sort total */
    int slot, head, t;
} ds_item;

typedef struct {
    int start, n;
} ds_span;

struct ap_dataset_iter {
    ap_dataset *ds;
    int shuffle;
    ap_rows_kind rows;
    uint64_t keep_below; /* subset: keep a sample when its hash < this; UINT64_MAX = all */
    uint64_t keep_salt;
    long long n_planned; /* samples the pass enumerates (bad rows are skipped later) */
    uint64_t rng;
    ds_chunk *chunks;
    int n_chunks, next_chunk;
    ds_chunk *pool;      /* [pool_chunks] */
    ds_entry **slot_ent; /* [pool_chunks] memo, valid during one batch fill */
    int n_pool;
    ds_item *items;
    size_t n_items, cap_items;
    ds_span *spans;
    int n_spans, cap_spans, next_span;
    ap_iter_stats st;
};

void ap_dataset_iter_free(ap_dataset_iter *it) {
    if (!it) return;
    free(it->chunks);
    free(it->pool);
    free(it->slot_ent);
    free(it->items);
    free(it->spans);
    free(it);
}

static uint64_t sample_hash(uint64_t salt, const ds_seq *s, int layer, int head, int t) {
    uint64_t z = salt;
    z ^= splitmix64(&z) + (uint64_t)(unsigned)s->file;
    z ^= splitmix64(&z) + (uint64_t)(unsigned)s->seq;
    z ^= splitmix64(&z) + (uint64_t)(unsigned)layer;
    z ^= splitmix64(&z) + (uint64_t)(unsigned)head;
    z ^= splitmix64(&z) + (uint64_t)(unsigned)t;
    return splitmix64(&z);
}

/* Whether the pass serves sample (layer, head, t) of s: the subset test,
 * shared by the enumeration and by the count so the two cannot disagree. */
static int keep_sample(const ap_dataset_iter *it, const ds_seq *s, int layer, int head, int t) {
    return it->keep_below == UINT64_MAX ||
           sample_hash(it->keep_salt, s, layer, head, t) < it->keep_below;
}

/* Samples of every chunk that the pass will enumerate: one hash per sample,
 * cheap next to reading the rows. */
static long long count_planned(const ap_dataset_iter *it) {
    const ap_dataset *ds = it->ds;
    long long n = 0;
    for (int k = 0; k < it->n_chunks; k++) {
        const ds_seq *s = &ds->seqs[it->chunks[k].seq];
        for (int t = s->t0; t < s->n_gen; t++)
            for (int h = 0; h < ds->n_head; h++) n += keep_sample(it, s, it->chunks[k].layer, h, t);
    }
    return n;
}

ap_status ap_dataset_iter_create(ap_dataset *ds, ap_split split, int epoch, int shuffle,
                                 ap_dataset_iter **out, ap_err *err) {
    ap_status st = AP_OK;
    ap_dataset_iter *it = NULL;
    *out = NULL;
    if (split != AP_SPLIT_TRAIN && split != AP_SPLIT_VAL && split != AP_SPLIT_ALL)
        return ap_errf(err, AP_ERR_ARG, "dataset: unknown split %d", (int)split);
    it = calloc(1, sizeof *it);
    if (!it) return ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory");
    it->ds = ds;
    it->shuffle = shuffle;
    it->rows = ds->cfg.rows;
    it->keep_below = UINT64_MAX;
    uint64_t s0 = ds->cfg.seed;
    splitmix64(&s0);
    it->rng = s0 ^ ((uint64_t)(unsigned)epoch * 0xD1B54A32D192ED03ull) ^
              ((uint64_t)split << 56);
    splitmix64(&it->rng);
    int n = 0;
    for (int g = 0; g < ds->n_seqs; g++) {
        const ds_seq *s = &ds->seqs[g];
        if (s->split < 0 || s->t0 >= s->n_gen) continue;
        if (split != AP_SPLIT_ALL && s->split != (int)split) continue;
        for (int l = 0; l < ds->n_layer; l++) n += ds->cfg.layer_group[l] >= 0;
    }
    it->chunks = malloc((size_t)(n > 0 ? n : 1) * sizeof *it->chunks);
    it->pool = malloc((size_t)ds->cfg.pool_chunks * sizeof *it->pool);
    it->slot_ent = calloc((size_t)ds->cfg.pool_chunks, sizeof *it->slot_ent);
    if (!it->chunks || !it->pool || !it->slot_ent) {
        st = ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory for %d chunks", n);
        goto cleanup;
    }
    for (int g = 0; g < ds->n_seqs; g++) {
        const ds_seq *s = &ds->seqs[g];
        if (s->split < 0 || s->t0 >= s->n_gen) continue;
        if (split != AP_SPLIT_ALL && s->split != (int)split) continue;
        for (int l = 0; l < ds->n_layer; l++)
            if (ds->cfg.layer_group[l] >= 0) it->chunks[it->n_chunks++] = (ds_chunk){g, l};
    }
    if (shuffle)
        for (int i = it->n_chunks - 1; i > 0; i--) {
            int j = (int)rand_below(&it->rng, (size_t)i + 1);
            ds_chunk tmp = it->chunks[i];
            it->chunks[i] = it->chunks[j];
            it->chunks[j] = tmp;
        }
    it->n_planned = count_planned(it);
cleanup:
    if (st) {
        ap_dataset_iter_free(it);
        return st;
    }
    *out = it;
    return AP_OK;
}

ap_status ap_dataset_iter_set_rows(ap_dataset_iter *it, ap_rows_kind rows, ap_err *err) {
    if (rows != AP_ROWS_DENSE && rows != AP_ROWS_SPARSE)
        return ap_errf(err, AP_ERR_ARG, "dataset: unknown row kind %d", (int)rows);
    if (rows == AP_ROWS_SPARSE && it->ds->cfg.rows != AP_ROWS_SPARSE)
        return ap_errf(err, AP_ERR_ARG,
                       "dataset: sparse window rows need a dataset opened with sparse rows");
    it->rows = rows;
    return AP_OK;
}

ap_status ap_dataset_iter_set_subset(ap_dataset_iter *it, double fraction, uint64_t salt,
                                     ap_err *err) {
    if (!(fraction > 0.0 && fraction <= 1.0))
        return ap_errf(err, AP_ERR_ARG, "dataset: subset fraction %g must be in (0, 1]", fraction);
    /* 2^64 * fraction, saturated: a double cannot hold UINT64_MAX exactly */
    double lim = fraction * 18446744073709551616.0;
    it->keep_below = lim >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)lim;
    uint64_t z = it->ds->cfg.seed ^ 0xC0FFEE5EEDull;
    it->keep_salt = splitmix64(&z) ^ salt * 0x9E3779B97F4A7C15ull;
    /* Counted once here, so a progress total is the subset's exact size
     * rather than the fraction's expectation. */
    it->n_planned = count_planned(it);
    return AP_OK;
}

long long ap_dataset_iter_n_planned(const ap_dataset_iter *it) { return it->n_planned; }

static int item_cmp(const void *pa, const void *pb) {
    const ds_item *a = pa, *b = pb;
    if (a->group != b->group) return a->group < b->group ? -1 : 1;
    if (a->W != b->W) return a->W < b->W ? -1 : 1;
    if (a->r != b->r) return a->r < b->r ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

/* Takes the next chunks that fit the cache together (so none is evicted while
 * the pool is consumed), enumerates their samples, groups them by (layer
 * group, W) and cuts batches. Returns 0 when no chunk is left. */
static ap_status pool_next(ap_dataset_iter *it, int *got, ap_err *err) {
    ap_dataset *ds = it->ds;
    *got = 0;
    it->n_pool = 0;
    it->n_items = 0;
    it->n_spans = it->next_span = 0;
    size_t bytes = 0, n_items = 0;
    while (it->next_chunk < it->n_chunks && it->n_pool < ds->cfg.pool_chunks) {
        ds_chunk c = it->chunks[it->next_chunk];
        const ds_seq *s = &ds->seqs[c.seq];
        size_t cb = chunk_bytes(ds, s);
        if (it->n_pool > 0 && bytes + cb > ds->cache_cap) break;
        bytes += cb;
        n_items += (size_t)(s->n_gen - s->t0) * ds->n_head;
        it->pool[it->n_pool++] = c;
        it->next_chunk++;
    }
    if (it->n_pool == 0) return AP_OK;
    if (n_items > it->cap_items) {
        ds_item *ni = realloc(it->items, n_items * sizeof *ni);
        if (!ni) return ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory for %zu samples",
                                n_items);
        it->items = ni;
        it->cap_items = n_items;
    }
    for (int k = 0; k < it->n_pool; k++) {
        const ds_seq *s = &ds->seqs[it->pool[k].seq];
        int group = ds->cfg.layer_group[it->pool[k].layer];
        for (int t = s->t0; t < s->n_gen; t++) {
            int W = width_at(ds, s, t);
            for (int h = 0; h < ds->n_head; h++) {
                if (!keep_sample(it, s, it->pool[k].layer, h, t)) continue;
                ds_item *x = &it->items[it->n_items];
                x->group = group;
                x->W = W;
                x->r = it->shuffle ? splitmix64(&it->rng) : 0;
                x->idx = (int)it->n_items;
                x->slot = k;
                x->head = h;
                x->t = t;
                it->n_items++;
            }
        }
    }
    qsort(it->items, it->n_items, sizeof *it->items, item_cmp);
    /* batches: runs of one (group, W), at most batch_size each */
    size_t max_spans = it->n_items; /* generous upper bound */
    if ((int)max_spans > it->cap_spans) {
        ds_span *ns = realloc(it->spans, max_spans * sizeof *ns);
        if (!ns) return ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory");
        it->spans = ns;
        it->cap_spans = (int)max_spans;
    }
    size_t i = 0;
    while (i < it->n_items) {
        size_t j = i;
        while (j < it->n_items && (int)(j - i) < ds->cfg.batch_size &&
               it->items[j].group == it->items[i].group && it->items[j].W == it->items[i].W)
            j++;
        it->spans[it->n_spans++] = (ds_span){(int)i, (int)(j - i)};
        i = j;
    }
    if (it->shuffle)
        for (int a = it->n_spans - 1; a > 0; a--) {
            int b = (int)rand_below(&it->rng, (size_t)a + 1);
            ds_span tmp = it->spans[a];
            it->spans[a] = it->spans[b];
            it->spans[b] = tmp;
        }
    *got = 1;
    return AP_OK;
}

/* Fills sample slot i of b from item x; returns ROW_* of the worst row used. */
static int fill_one(const ap_dataset *ds, const ds_entry *e, const ds_item *x, ap_rows_kind rows,
                    ap_batch *b, int i) {
    const ds_seq *s = &ds->seqs[e->seq];
    const int H = ds->H, W = x->W, nh = ds->n_head, NB = s->NB, bs = ds->block;
    const int c0 = ds->cfg.sink_blocks;
    const int step = s->n_pre + x->t;
    const int sparse = rows == AP_ROWS_SPARSE;
    const float *win = sparse ? e->xmax : e->bmax;
    const unsigned char *wbad = sparse ? e->xbad : e->bad;
    int worst = e->bad[(size_t)step * nh + x->head];
    for (int r = step - H; r < step && worst != ROW_NONFINITE; r++)
        if (r >= 0 && wbad[(size_t)r * nh + x->head] > worst)
            worst = wbad[(size_t)r * nh + x->head];
    if (worst != ROW_OK) return worst;
    float *xs = b->x + (size_t)i * H * W;
    for (int r = 0; r < H; r++) {
        int src = step - H + r;
        if (src < 0) {
            memset(xs + (size_t)r * W, 0, (size_t)W * sizeof(float));
            continue;
        }
        const float *row = win + ((size_t)src * nh + x->head) * NB + c0;
        memcpy(xs + (size_t)r * W, row, (size_t)W * sizeof(float));
    }
    size_t toff = ((size_t)step * nh + x->head) * NB;
    const float *tmax = e->bmax + toff, *tsum = e->bsum + toff;
    const int q = s->n_prompt + x->t;
    const int local_tokens = ds->cfg.local_blocks * bs;
    /* Local window = keys [q + 1 - local, q + 1), counted as every block it
     * touches (docs/predictor-data.md: block-granular recovery). */
    int lb0 = q + 1 - local_tokens;
    lb0 = lb0 > 0 ? lb0 / bs : 0;
    if (local_tokens == 0) lb0 = q / bs + 1;
    const int n_valid = q / bs + 1;
    memcpy(b->y + (size_t)i * W, tmax + c0, (size_t)W * sizeof(float));
    float *ys = b->ysum + (size_t)i * W;
    for (int j = 0; j < W; j++) ys[j] = c0 + j >= lb0 ? 0.0f : tsum[c0 + j];
    double fixed = 0.0;
    for (int j = 0; j < n_valid && j < NB; j++)
        if (j < c0 || j >= lb0) fixed += tsum[j];
    b->mass_fixed[i] = (float)fixed;
    b->ref[i] = (ap_sample_ref){s->file, s->seq, e->layer, x->head, x->t, q, x->group};
    if (b->zq) ap_zscore(e->qb + toff + c0, W, b->zq + (size_t)i * W);
    return ROW_OK;
}

ap_status ap_dataset_iter_next(ap_dataset_iter *it, ap_batch *b, ap_err *err) {
    ap_status st = AP_OK;
    ap_dataset *ds = it->ds;
    b->n = 0;
    if (b->H != ds->H || !b->x)
        return ap_errf(err, AP_ERR_ARG,
                       "dataset: batch allocated for H %d, the dataset has H %d (allocate with "
                       "ap_batch_alloc)",
                       b->H, ds->H);
    for (;;) {
        if (it->next_span >= it->n_spans) {
            int got = 0;
            st = pool_next(it, &got, err);
            if (st) return st;
            if (!got) return AP_OK;
            continue;
        }
        const ds_span sp = it->spans[it->next_span++];
        const ds_item *first = &it->items[sp.start];
        if (sp.n > b->cap_n || first->W > b->cap_w)
            return ap_errf(err, AP_ERR_RANGE,
                           "dataset: batch buffers hold %d x %d, a batch needs %d x %d "
                           "(allocate with ap_batch_alloc)",
                           b->cap_n, b->cap_w, sp.n, first->W);
        for (int k = 0; k < it->n_pool; k++) it->slot_ent[k] = NULL;
        b->W = first->W;
        b->group = first->group;
        for (int m = 0; m < sp.n; m++) {
            const ds_item *x = &it->items[sp.start + m];
            if (!it->slot_ent[x->slot]) {
                ds_chunk c = it->pool[x->slot];
                st = cache_get(ds, c.seq, c.layer, &it->slot_ent[x->slot], err);
                if (st) return st;
            }
            int rc = fill_one(ds, it->slot_ent[x->slot], x, it->rows, b, b->n);
            if (rc == ROW_OK)
                b->n++;
            else if (rc == ROW_NONFINITE)
                it->st.n_skipped_nonfinite++;
            else
                it->st.n_skipped_malformed++;
        }
        if (b->n > 0) {
            it->st.n_samples += b->n;
            it->st.n_batches++;
            return AP_OK;
        }
    }
}

void ap_dataset_iter_get_stats(const ap_dataset_iter *it, ap_iter_stats *st) { *st = it->st; }

ap_status ap_batch_alloc(const ap_dataset *ds, ap_batch *b, ap_err *err) {
    memset(b, 0, sizeof *b);
    b->cap_n = ds->cfg.batch_size;
    b->cap_w = ds->max_width > 0 ? ds->max_width : 1;
    b->H = ds->H;
    size_t n = (size_t)b->cap_n, w = (size_t)b->cap_w;
    b->x = malloc(n * (size_t)b->H * w * sizeof(float));
    b->y = malloc(n * w * sizeof(float));
    b->ysum = malloc(n * w * sizeof(float));
    b->mass_fixed = malloc(n * sizeof(float));
    b->ref = malloc(n * sizeof *b->ref);
    if (ds->cfg.query_fusion) b->zq = malloc(n * w * sizeof(float));
    if (!b->x || !b->y || !b->ysum || !b->mass_fixed || !b->ref ||
        (ds->cfg.query_fusion && !b->zq)) {
        ap_batch_release(b);
        return ap_errf(err, AP_ERR_NOMEM, "dataset: out of memory for a batch of %zu x %d x %zu",
                       n, ds->H, w);
    }
    return AP_OK;
}

void ap_batch_release(ap_batch *b) {
    if (!b) return;
    free(b->x);
    free(b->y);
    free(b->ysum);
    free(b->mass_fixed);
    free(b->ref);
    free(b->zq);
    b->x = b->y = b->ysum = b->mass_fixed = b->zq = NULL;
    b->ref = NULL;
}

/* ------------------------------------------------------ sources held out */

typedef struct {
    char (*key)[128];
    int *file; /* index into the side's path list */
    int n, cap;
} src_keys;

/* Appends the keys of one `source` attribute: "PKG:/path..." pieces give PKG
 * (Debian package names: lowercase, digits, + - .); other text is one key. */
static ap_status add_source_keys(src_keys *k, const char *src, int file, ap_err *err) {
    const char *p = src;
    while (*p) {
        const char *e = strstr(p, " ; ");
        size_t n = e ? (size_t)(e - p) : strlen(p);
        size_t m = 0;
        while (m < n && ((p[m] >= 'a' && p[m] <= 'z') || (p[m] >= '0' && p[m] <= '9') ||
                         p[m] == '+' || p[m] == '-' || p[m] == '.'))
            m++;
        size_t klen = m > 0 && m + 1 < n && p[m] == ':' && p[m + 1] == '/' ? m : n;
        if (klen > 0 && strncmp(p, "...", klen) && strncmp(p, "generated", 9)) {
            if (k->n == k->cap) {
                int cap = k->cap ? 2 * k->cap : 64;
                void *nk = realloc(k->key, (size_t)cap * sizeof *k->key);
                if (!nk) return ap_errf(err, AP_ERR_NOMEM, "out of memory reading sources");
                k->key = nk;
                void *nf = realloc(k->file, (size_t)cap * sizeof *k->file);
                if (!nf) return ap_errf(err, AP_ERR_NOMEM, "out of memory reading sources");
                k->file = nf;
                k->cap = cap;
            }
            if (klen > 127) klen = 127;
            memcpy(k->key[k->n], p, klen);
            k->key[k->n][klen] = 0;
            k->file[k->n++] = file;
        }
        p = e ? e + 3 : p + n;
    }
    return AP_OK;
}

static ap_status collect_sources(const char *const *paths, int n, src_keys *k, ap_err *err) {
    ap_status st = AP_OK;
    for (int f = 0; f < n && !st; f++) {
        ap_trace *t = NULL;
        st = ap_trace_open(paths[f], &t, err);
        for (int i = 0; !st && i < ap_trace_n_seq(t); i++) {
            ap_trace_seq_info in;
            st = ap_trace_seq_get_info(t, i, &in, err);
            if (!st) st = add_source_keys(k, in.source, f, err);
        }
        ap_trace_close(t);
    }
    return st;
}

ap_status ap_dataset_check_disjoint_sources(const char *const *a, int na, const char *what_a,
                                            const char *const *b, int nb, const char *what_b,
                                            ap_err *err) {
    ap_status st = AP_OK;
    src_keys ka = {0}, kb = {0};
    char shared[600] = "";
    int n_shared = 0, fa = -1, fb = -1;
    st = collect_sources(a, na, &ka, err);
    if (!st) st = collect_sources(b, nb, &kb, err);
    if (st) goto cleanup;
    for (int i = 0; i < ka.n; i++) {
        int dup = 0;
        for (int j = 0; j < i && !dup; j++) dup = !strcmp(ka.key[i], ka.key[j]);
        for (int j = 0; j < kb.n && !dup; j++)
            if (!strcmp(ka.key[i], kb.key[j])) {
                if (n_shared < 8) {
                    size_t len = strlen(shared);
                    snprintf(shared + len, sizeof shared - len, "%s%s", n_shared ? ", " : "",
                             ka.key[i]);
                }
                if (fa < 0) {
                    fa = ka.file[i];
                    fb = kb.file[j];
                }
                n_shared++;
                break;
            }
    }
    if (n_shared > 0)
        st = ap_errf(err, AP_ERR_ARG,
                     "%s and %s share %d source%s (%s%s), e.g. %s and %s: held-out data must come "
                     "from other sources",
                     what_a, what_b, n_shared, n_shared > 1 ? "s" : "", shared,
                     n_shared > 8 ? ", ..." : "", a[fa], b[fb]);
cleanup:
    free(ka.key);
    free(ka.file);
    free(kb.key);
    free(kb.file);
    return st;
}
