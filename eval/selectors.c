/* The replayed token-selection policies, one small module each behind the
 * vtable of eval/selectors.h. Semantics: docs/eval.md. */
#include "eval/selectors.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "train/fusion.h"
#include "train/incremental.h"

/* ------------------------------------------------------------ shared parts */

static const float *row_at(const float *v, const ap_sel_data *d, int s, int h) {
    return v + ((size_t)s * d->n_head + h) * d->n_blocks;
}

/* Eviction states are per query head in the method's mode, per KV head (the
 * group shares one cache) otherwise. */
static int n_units(const ap_sel_data *d, const ap_sel_params *p) {
    return p->kv_mode == AP_KV_PER_QHEAD ? d->n_head : d->n_head_kv;
}

static int unit_of(const ap_sel_data *d, const ap_sel_params *p, int h) {
    return p->kv_mode == AP_KV_PER_QHEAD ? h : h / (d->n_head / d->n_head_kv);
}

/* The row a history receives after decode step st->t (method.md 4.2 step 5):
 * the dense block_max row on calibration steps, else the attention the step
 * computed over its kept blocks, renormalised by the kept mass, max-pooled. */
static void history_row(const ap_sel_data *d, const ap_sel_step *st, int calib, int h,
                        const uint8_t *kept, double kept_mass, float *out) {
    const float *bm = row_at(d->block_max, d, st->s, h);
    if (calib > 0 && (st->t + 1) % calib == 0) {
        memcpy(out, bm, (size_t)d->n_blocks * sizeof(float));
        return;
    }
    memset(out, 0, (size_t)d->n_blocks * sizeof(float));
    if (!(kept_mass > 0)) return;
    for (int j = 0; j < st->n_valid && j < d->n_blocks; j++)
        if (kept[j]) out[j] = (float)(bm[j] / kept_mass);
}

/* Eviction methods keep the recent window anyway, as their implementations
 * do, so a candidate still inside the local window ranks below every other
 * candidate instead of spending a slot (while inside it is never evicted).
 * Finite, so that summing a KV group's scores cannot make it unavailable. */
#define IN_LOCAL_SCORE (-1e30f)

/* ------------------------------------------------------------------ oracle */

typedef struct {
    const ap_sel_data *d;
} data_only;

static ap_status data_only_create(const ap_sel_data *d, const ap_sel_params *p, void **state,
                                  ap_err *err) {
    data_only *s = malloc(sizeof *s);
    if (!s) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    s->d = d;
    *state = s;
    return AP_OK;
}

static void plain_free(void *state) { free(state); }

/* The mass a candidate adds: its block_sum, 0 inside the local window. */
static ap_status oracle_score(void *state, const ap_sel_step *st, float *scores, ap_err *err) {
    const ap_sel_data *d = ((data_only *)state)->d;
    for (int h = 0; h < d->n_head; h++) {
        const float *bs = row_at(d->block_sum, d, st->s, h);
        for (int j = 0; j < st->W; j++)
            scores[(size_t)h * st->W + j] = st->c0 + j >= st->lb0 ? 0.0f : bs[st->c0 + j];
    }
    return AP_OK;
}

/* --------------------------------------------------------------- streaming */

/* Recency: the candidate nearest the local window first. */
static ap_status streaming_score(void *state, const ap_sel_step *st, float *scores, ap_err *err) {
    const ap_sel_data *d = ((data_only *)state)->d;
    for (int h = 0; h < d->n_head; h++)
        for (int j = 0; j < st->W; j++)
            scores[(size_t)h * st->W + j] =
                st->c0 + j >= st->lb0 ? IN_LOCAL_SCORE : (float)(st->c0 + j);
    return AP_OK;
}

/* --------------------------------------------------------------------- h2o */

typedef struct {
    const ap_sel_data *d;
    const ap_sel_params *p;
    int units;
    double *acc; /* [units][NB] accumulated attention */
} h2o_state;

static void h2o_free(void *state) {
    h2o_state *s = state;
    if (!s) return;
    free(s->acc);
    free(s);
}

static ap_status h2o_create(const ap_sel_data *d, const ap_sel_params *p, void **state,
                            ap_err *err) {
    if (!d->prefill_colsum)
        return ap_errf(err, AP_ERR_ARG,
                       "h2o needs prefill_colsum (capture without --no-colsum)");
    h2o_state *s = calloc(1, sizeof *s);
    if (!s) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    s->d = d;
    s->p = p;
    s->units = n_units(d, p);
    s->acc = calloc((size_t)s->units * d->n_blocks, sizeof(double));
    if (!s->acc) {
        h2o_free(s);
        return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    }
    /* H2O's score after prefill: the column sums over every prompt query. */
    for (int h = 0; h < d->n_head; h++) {
        double *a = s->acc + (size_t)unit_of(d, p, h) * d->n_blocks;
        const float *cs = d->prefill_colsum + (size_t)h * d->n_prompt;
        for (int k = 0; k < d->n_prompt; k++) a[k / d->block] += cs[k];
    }
    *state = s;
    return AP_OK;
}

static ap_status h2o_score(void *state, const ap_sel_step *st, float *scores, ap_err *err) {
    h2o_state *s = state;
    const ap_sel_data *d = s->d;
    for (int h = 0; h < d->n_head; h++) {
        const double *a = s->acc + (size_t)unit_of(d, s->p, h) * d->n_blocks;
        for (int j = 0; j < st->W; j++)
            scores[(size_t)h * st->W + j] =
                st->c0 + j >= st->lb0 ? IN_LOCAL_SCORE : (float)a[st->c0 + j];
    }
    return AP_OK;
}

/* Adds the attention the kept cache received: the true row restricted to the
 * kept blocks and renormalised, as softmax over the kept keys computes it. */
static ap_status h2o_observe(void *state, const ap_sel_step *st, const uint8_t *kept,
                             const double *kept_mass, ap_err *err) {
    h2o_state *s = state;
    const ap_sel_data *d = s->d;
    for (int h = 0; h < d->n_head; h++) {
        if (!(kept_mass[h] > 0)) continue;
        double *a = s->acc + (size_t)unit_of(d, s->p, h) * d->n_blocks;
        const float *bs = row_at(d->block_sum, d, st->s, h);
        const uint8_t *kp = kept + (size_t)h * d->n_blocks;
        for (int j = 0; j < st->n_valid && j < d->n_blocks; j++)
            if (kp[j]) a[j] += bs[j] / kept_mass[h];
    }
    return AP_OK;
}

/* ------------------------------------------------------------------ snapkv */

/* Blocks that leave the local window during decode outrank every prompt
 * block: a vote is at most window rows x pool blocks x group heads (< 1e4),
 * so this offset keeps them apart while the block index stays exact. */
#define SNAPKV_NEW_OFFSET 1e6f

typedef struct {
    const ap_sel_data *d;
    const ap_sel_params *p;
    int prompt_c1; /* candidates at decode step 0 are [c0, prompt_c1) */
    float *vote;   /* [units][NB] */
} snapkv_state;

static void snapkv_free(void *state) {
    snapkv_state *s = state;
    if (!s) return;
    free(s->vote);
    free(s);
}

static ap_status snapkv_create(const ap_sel_data *d, const ap_sel_params *p, void **state,
                               ap_err *err) {
    ap_status st = AP_OK;
    double *raw = NULL;
    snapkv_state *s = calloc(1, sizeof *s);
    if (!s) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    s->d = d;
    s->p = p;
    const int units = n_units(d, p), NB = d->n_blocks;
    s->prompt_c1 = (d->n_prompt + d->block - 1) / d->block - p->local_blocks;
    s->vote = calloc((size_t)units * NB, sizeof(float));
    raw = calloc((size_t)units * NB, sizeof(double));
    if (!s->vote || !raw) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    /* Observation window: the last snapkv_window recorded prefill queries. */
    int first = d->n_pre - p->snapkv_window;
    if (first < 0) first = 0;
    for (int h = 0; h < d->n_head; h++) {
        double *r = raw + (size_t)unit_of(d, p, h) * NB;
        for (int srow = first; srow < d->n_pre; srow++) {
            const float *bs = row_at(d->block_sum, d, srow, h);
            for (int j = 0; j < NB; j++) r[j] += bs[j];
        }
    }
    const int half = p->snapkv_pool > 1 ? p->snapkv_pool / 2 : 0;
    for (int u = 0; u < units; u++)
        for (int j = 0; j < NB; j++) {
            double m = raw[(size_t)u * NB + j];
            for (int o = -half; o <= half; o++)
                if (j + o >= 0 && j + o < NB && raw[(size_t)u * NB + j + o] > m)
                    m = raw[(size_t)u * NB + j + o];
            s->vote[(size_t)u * NB + j] = (float)m;
        }
    *state = s;
    s = NULL;
cleanup:
    free(raw);
    snapkv_free(s);
    return st;
}

static ap_status snapkv_score(void *state, const ap_sel_step *st, float *scores, ap_err *err) {
    snapkv_state *s = state;
    const ap_sel_data *d = s->d;
    for (int h = 0; h < d->n_head; h++) {
        const float *v = s->vote + (size_t)unit_of(d, s->p, h) * d->n_blocks;
        for (int j = 0; j < st->W; j++) {
            int b = st->c0 + j;
            if (b >= st->lb0)
                scores[(size_t)h * st->W + j] = IN_LOCAL_SCORE;
            else
                scores[(size_t)h * st->W + j] = b < s->prompt_c1 ? v[b] : SNAPKV_NEW_OFFSET + (float)b;
        }
    }
    return AP_OK;
}

/* ------------------------------------------------------------------- quest */

typedef struct {
    const ap_sel_data *d;
} quest_state;

static ap_status quest_create(const ap_sel_data *d, const ap_sel_params *p, void **state,
                              ap_err *err) {
    if (!d->query || !d->key_min || !d->key_max)
        return ap_errf(err, AP_ERR_ARG,
                       "quest needs query vectors and key bounds (capture without --no-quest)");
    return data_only_create(d, p, state, err);
}

/* Blocks per unit when a step's bounds are split over threads: 32 KB of one
 * KV head's bounds (hd 64), enough work to outweigh handing it out. */
#define BOUND_CHUNK 64

/* The query bound of every query head of every KV head over the step's
 * candidates, out[n_head][W] (stride W), split into (KV head, block chunk)
 * units over st->par. */
typedef struct {
    const ap_sel_data *d;
    const ap_sel_step *st;
    float *out;
    int n_chunks;
} bound_job;

static void bound_unit(void *arg, int i) {
    const bound_job *b = arg;
    const ap_sel_data *d = b->d;
    const int hd = d->head_dim, group = d->n_head / d->n_head_kv, W = b->st->W;
    const int g = i / b->n_chunks, j0 = (i % b->n_chunks) * BOUND_CHUNK;
    const int nj = W - j0 < BOUND_CHUNK ? W - j0 : BOUND_CHUNK;
    const size_t at = ((size_t)g * d->n_blocks + b->st->c0 + j0) * hd;
    const float *q = d->query + ((size_t)b->st->s * d->n_head + (size_t)g * group) * hd;
    ap_query_bound_heads_ld(q, group, d->key_min + at, d->key_max + at, hd, nj,
                            b->out + (size_t)g * group * W + j0, (size_t)W);
}

static void query_bounds(const ap_sel_data *d, const ap_sel_step *st, float *out) {
    bound_job b = {.d = d, .st = st, .out = out, .n_chunks = (st->W + BOUND_CHUNK - 1) / BOUND_CHUNK};
    ap_par_for(st->par, bound_unit, &b, d->n_head_kv * b.n_chunks);
}

/* Upper bound of q.k over the block's keys, per page (Quest). */
static ap_status quest_score(void *state, const ap_sel_step *st, float *scores, ap_err *err) {
    (void)err;
    query_bounds(((data_only *)state)->d, st, scores);
    return AP_OK;
}

/* ------------------------------------------------------- last_step_dense */

/* The previous recorded row: needs dense attention at every step. */
static ap_status last_dense_score(void *state, const ap_sel_step *st, float *scores,
                                  ap_err *err) {
    const ap_sel_data *d = ((data_only *)state)->d;
    for (int h = 0; h < d->n_head; h++) {
        float *o = scores + (size_t)h * st->W;
        if (st->s < 1) {
            memset(o, 0, (size_t)st->W * sizeof(float));
            continue;
        }
        memcpy(o, row_at(d->block_max, d, st->s - 1, h) + st->c0, (size_t)st->W * sizeof(float));
    }
    return AP_OK;
}

/* --------------------------------------------------------------- last_step */

typedef struct {
    const ap_sel_data *d;
    const ap_sel_params *p;
    float *newest; /* [n_head][NB] newest history row */
} last_state;

static void last_free(void *state) {
    last_state *s = state;
    if (!s) return;
    free(s->newest);
    free(s);
}

static ap_status last_create(const ap_sel_data *d, const ap_sel_params *p, void **state,
                             ap_err *err) {
    last_state *s = calloc(1, sizeof *s);
    if (!s) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    s->d = d;
    s->p = p;
    s->newest = calloc((size_t)d->n_head * d->n_blocks, sizeof(float));
    if (!s->newest) {
        last_free(s);
        return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    }
    if (d->n_pre > 0)
        memcpy(s->newest, row_at(d->block_max, d, d->n_pre - 1, 0),
               (size_t)d->n_head * d->n_blocks * sizeof(float));
    *state = s;
    return AP_OK;
}

static ap_status last_score(void *state, const ap_sel_step *st, float *scores, ap_err *err) {
    last_state *s = state;
    const int NB = s->d->n_blocks;
    for (int h = 0; h < s->d->n_head; h++)
        memcpy(scores + (size_t)h * st->W, s->newest + (size_t)h * NB + st->c0,
               (size_t)st->W * sizeof(float));
    return AP_OK;
}

static ap_status last_observe(void *state, const ap_sel_step *st, const uint8_t *kept,
                              const double *kept_mass, ap_err *err) {
    last_state *s = state;
    const int NB = s->d->n_blocks;
    for (int h = 0; h < s->d->n_head; h++)
        history_row(s->d, st, s->p->calib, h, kept + (size_t)h * NB, kept_mass[h],
                    s->newest + (size_t)h * NB);
    return AP_OK;
}

/* --------------------------------------------------------------- attnpred */

/* The predictor's history of one (layer, head): the last H rows pushed,
 * rows before the first push zero, a row zero past its causal width. This
 * struct, hist_push and layer_predict are the only code that knows how the
 * CNN is evaluated: full recomputation over a ring of rows (batched over the
 * heads of the layer), or train/incremental.h's ap_incr, which keeps the
 * conv features of the rows between steps. */
typedef struct {
    float *rows;   /* [H][NB] ring (full recomputation only) */
    int next;      /* ring slot of the next push = the oldest row */
    ap_incr *incr; /* incremental evaluation only */
} pred_hist;

typedef struct {
    const ap_sel_data *d;
    const ap_sel_params *p;
    const ap_pred_config *cfg;
    int H;
    int n_hist;      /* histories: n_head, or n_head_kv with pred_per_kv */
    int group;       /* query heads per history */
    pred_hist *hist; /* [n_hist] */
    float *x;        /* [n_hist][H][max W] window batch (full recomputation) */
    float *row;      /* [n_hist][NB] scratch, one per history (they run at once) */
    float *acc;      /* [n_hist][NB] scratch: the group's mean row (pred_per_kv) */
    ap_status *unit_rc; /* [n_hist] each history's status, when split over threads */
    ap_err *unit_err;   /* [n_hist] */
    double *unit_cpu;   /* [n_hist] CPU seconds of each history's work */
    /* The last CNN scores, global blocks [cache_c0, cache_c1) of each
     * history, reused between strided evaluations. */
    float *cache;    /* [n_hist][NB] */
    float *bound;    /* [n_head][NB] scratch: query fusion's bounds */
    ap_status *fuse_rc; /* [n_head] each head's fusion, when split over threads */
    ap_err *fuse_err;   /* [n_head] */
    int cache_c0, cache_c1;
    long n_scored;   /* score() calls so far */
    ap_sel_cost cost;
} pred_state;

static ap_status hist_push(pred_hist *ph, int H, int NB, const float *row, int width,
                           ap_err *err) {
    if (ph->incr) return ap_incr_push(ph->incr, row, width < NB ? width : NB, err);
    memcpy(ph->rows + (size_t)ph->next * NB, row, (size_t)NB * sizeof(float));
    ph->next = (ph->next + 1) % H;
    return AP_OK;
}

/* Window x[H][c1 - c0], oldest row first, as train/dataset.c builds it. */
static void hist_window(const pred_hist *ph, int H, int NB, int c0, int c1, float *x) {
    const int W = c1 - c0;
    for (int r = 0; r < H; r++)
        memcpy(x + (size_t)r * W, ph->rows + (size_t)((ph->next + r) % H) * NB + c0,
               (size_t)W * sizeof(float));
}

double ap_sel_naive_macs(const ap_pred_config *c, int H, int W) {
    return (9.0 * c->c1 + 9.0 * c->c1 * c->c2) * H * W + (double)c->c2 * W;
}

static void pred_free(void *state) {
    pred_state *s = state;
    if (!s) return;
    if (s->hist)
        for (int h = 0; h < s->n_hist; h++) {
            free(s->hist[h].rows);
            ap_incr_free(s->hist[h].incr);
        }
    free(s->hist);
    free(s->x);
    free(s->row);
    free(s->acc);
    free(s->unit_rc);
    free(s->unit_err);
    free(s->unit_cpu);
    free(s->cache);
    free(s->bound);
    free(s->fuse_rc);
    free(s->fuse_err);
    free(s);
}

static ap_status pred_create(const ap_sel_data *d, const ap_sel_params *p, void **state,
                             ap_err *err) {
    if (!p->rt) return ap_errf(err, AP_ERR_ARG, "predictor method without a predictor");
    if (ap_runtime_config(p->rt)->query_fusion && (!d->query || !d->key_min || !d->key_max))
        return ap_errf(err, AP_ERR_ARG,
                       "a query-fusion predictor needs query vectors and key bounds (capture "
                       "without --no-quest)");
    ap_status st = AP_OK;
    pred_state *s = calloc(1, sizeof *s);
    if (!s) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    s->d = d;
    s->p = p;
    s->cfg = ap_runtime_config(p->rt);
    s->H = s->cfg->history;
    const int H = s->H, NB = d->n_blocks > 0 ? d->n_blocks : 1;
    const ap_predictor *pred = ap_runtime_predictor(p->rt);
    const int model = ap_predictor_model_of_layer(pred, d->layer);
    if (p->pred_stride < 0) {
        st = ap_errf(err, AP_ERR_ARG, "predictor stride %d: must be at least 1", p->pred_stride);
        goto cleanup;
    }
    s->n_hist = p->pred_per_kv ? d->n_head_kv : d->n_head;
    s->group = d->n_head / s->n_hist;
    s->hist = calloc((size_t)s->n_hist, sizeof *s->hist);
    s->row = malloc((size_t)s->n_hist * NB * sizeof(float));
    s->acc = malloc((size_t)s->n_hist * NB * sizeof(float));
    s->unit_rc = calloc((size_t)s->n_hist, sizeof *s->unit_rc);
    s->unit_err = calloc((size_t)s->n_hist, sizeof *s->unit_err);
    s->unit_cpu = calloc((size_t)s->n_hist, sizeof *s->unit_cpu);
    s->cache = malloc((size_t)s->n_hist * NB * sizeof(float));
    if (!p->incremental) s->x = malloc((size_t)s->n_hist * H * NB * sizeof(float));
    s->bound = malloc((size_t)d->n_head * NB * sizeof(float));
    s->fuse_rc = calloc((size_t)d->n_head, sizeof *s->fuse_rc);
    s->fuse_err = calloc((size_t)d->n_head, sizeof *s->fuse_err);
    if (!s->hist || !s->row || !s->acc || !s->cache || !s->bound || !s->fuse_rc || !s->fuse_err ||
        !s->unit_rc || !s->unit_err || !s->unit_cpu ||
        (!p->incremental && !s->x)) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for predictor histories");
        goto cleanup;
    }
    for (int h = 0; h < s->n_hist; h++) {
        if (p->incremental) {
            if ((st = ap_incr_create(pred, model, &s->hist[h].incr, err))) goto cleanup;
        } else if (!(s->hist[h].rows = calloc((size_t)H * NB, sizeof(float)))) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory for predictor histories");
            goto cleanup;
        }
    }
    /* The history starts from the last H recorded prefill rows (dense). */
    int first = d->n_pre - H;
    if (first < 0) first = 0;
    for (int h = 0; h < s->n_hist; h++)
        for (int srow = first; srow < d->n_pre; srow++) {
            int width = (d->n_prompt - d->n_pre + srow) / d->block + 1;
            const float *r = row_at(d->block_max, d, srow, h * s->group);
            if (s->group > 1) {
                for (int j = 0; j < NB && j < d->n_blocks; j++) s->acc[j] = 0.0f;
                for (int g = 0; g < s->group; g++) {
                    const float *rg = row_at(d->block_max, d, srow, h * s->group + g);
                    for (int j = 0; j < d->n_blocks; j++) s->acc[j] += rg[j] / (float)s->group;
                }
                r = s->acc;
            }
            st = hist_push(&s->hist[h], H, d->n_blocks, r, width, err);
            if (st) goto cleanup;
        }
    *state = s;
    s = NULL;
cleanup:
    pred_free(s);
    return st;
}

/* CNN scores of every history for candidates [c0, c1): out[n_hist][W]. */
/* CPU time of the calling thread: the predictor runs single-threaded inside
 * one worker (or split by history over lent threads, each unit timing
 * itself), and on a shared machine wall time would mostly measure the other
 * processes. */
static double thread_cpu_seconds(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return ap_now_seconds();
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Per-history work split over st->par: histories are independent objects
 * (each ap_incr has its own scratch; the weights are read only). */
typedef struct {
    pred_state *s;
    const ap_sel_step *st;
    int c0, c1;
    float *out;
    const uint8_t *kept;
    const double *kept_mass;
    pthread_t caller; /* units it runs itself are in its own CPU time already */
} hist_job;

static void predict_unit(void *arg, int h) {
    const hist_job *j = arg;
    pred_state *s = j->s;
    const double t0 = thread_cpu_seconds();
    s->unit_rc[h] = ap_incr_predict(s->hist[h].incr, j->c0, j->c1,
                                    j->out + (size_t)h * (j->c1 - j->c0), &s->unit_err[h]);
    s->unit_cpu[h] = pthread_equal(pthread_self(), j->caller) ? 0.0 : thread_cpu_seconds() - t0;
}

/* The first failing history's status (its message into err). */
static ap_status units_status(const pred_state *s, ap_err *err) {
    for (int h = 0; h < s->n_hist; h++)
        if (s->unit_rc[h]) {
            if (err) *err = s->unit_err[h];
            return s->unit_rc[h];
        }
    return AP_OK;
}

/* CPU seconds the units spent on threads other than the caller's (whose own
 * time its caller measures). */
static double units_cpu(const pred_state *s) {
    double t = 0.0;
    for (int h = 0; h < s->n_hist; h++) t += s->unit_cpu[h];
    return t;
}

static ap_status layer_predict(pred_state *s, const ap_sel_step *st, int c0, int c1, float *out,
                               ap_err *err) {
    const ap_sel_data *d = s->d;
    const int H = s->H, NB = d->n_blocks, W = c1 - c0;
    if (s->p->incremental) {
        hist_job j = {.s = s, .st = st, .c0 = c0, .c1 = c1, .out = out, .caller = pthread_self()};
        ap_par_for(st->par, predict_unit, &j, s->n_hist);
        ap_status rc = units_status(s, err);
        if (rc) return rc;
        for (int h = 0; h < s->n_hist; h++) s->cost.run_macs += ap_incr_last_macs(s->hist[h].incr);
        return AP_OK;
    }
    for (int h = 0; h < s->n_hist; h++)
        hist_window(&s->hist[h], H, NB, c0, c1, s->x + (size_t)h * H * W);
    ap_status st2 = ap_runtime_predict_batch(s->p->rt, d->layer, s->x, s->n_hist, H, W, out, err);
    if (st2 == AP_OK) s->cost.run_macs += ap_sel_naive_macs(s->cfg, H, W) * s->n_hist;
    return st2;
}

/* Scores of every query head for the step: a fresh CNN evaluation at every
 * pred_stride-th call (and whenever the sink cut moved), else the cached
 * one; blocks newer than the cache (they are in the local window, always
 * kept) get the history's highest cached score. With pred_per_kv each
 * history's scores go to every query head of its group. */
static ap_status layer_scores(pred_state *s, const ap_sel_step *st, float *scores, ap_err *err) {
    const ap_sel_data *d = s->d;
    const int NB = d->n_blocks, W = st->W;
    const int stride = s->p->pred_stride > 1 ? s->p->pred_stride : 1;
    const int fresh = s->n_scored % stride == 0 || st->c0 != s->cache_c0 ||
                      st->c1 < s->cache_c1 || s->cache_c1 <= s->cache_c0;
    s->n_scored++;
    /* Costs are per (step, query head): naive = the full CNN for each query
     * head at every step (the method as published), run = what was spent. */
    s->cost.n += d->n_head;
    s->cost.naive_macs += ap_sel_naive_macs(s->cfg, s->H, W) * d->n_head;
    if (fresh) {
        /* The first n_hist rows of scores serve as the output buffer;
         * every query head's row is then filled from the cache. */
        ap_status rc = layer_predict(s, st, st->c0, st->c1, scores, err);
        if (rc) return rc;
        for (int h = 0; h < s->n_hist; h++)
            memcpy(s->cache + (size_t)h * NB + st->c0, scores + (size_t)h * W,
                   (size_t)W * sizeof(float));
        s->cache_c0 = st->c0;
        s->cache_c1 = st->c1;
    }
    for (int qh = 0; qh < d->n_head; qh++) {
        const float *c = s->cache + (size_t)(qh / s->group) * NB;
        float top = -INFINITY;
        if (st->c1 > s->cache_c1)
            for (int b = s->cache_c0; b < s->cache_c1; b++) top = c[b] > top ? c[b] : top;
        float *o = scores + (size_t)qh * W;
        for (int j = 0; j < W; j++) {
            const int b = st->c0 + j;
            o[j] = b < s->cache_c1 ? c[b] : top;
        }
    }
    return AP_OK;
}

/* cost.seconds: CPU time of all threads the work ran on. */
static ap_status pred_score(void *state, const ap_sel_step *st, float *scores, ap_err *err) {
    pred_state *s = state;
    memset(s->unit_cpu, 0, (size_t)s->n_hist * sizeof *s->unit_cpu);
    double t0 = thread_cpu_seconds();
    ap_status rc = layer_scores(s, st, scores, err);
    s->cost.seconds += thread_cpu_seconds() - t0;
    s->cost.seconds += units_cpu(s);
    return rc;
}

static void observe_unit(void *arg, int h) {
    const hist_job *j = arg;
    pred_state *s = j->s;
    const ap_sel_step *st = j->st;
    const int NB = s->d->n_blocks;
    float *row = s->row + (size_t)h * NB, *acc = s->acc + (size_t)h * NB;
    float *r = s->group > 1 ? acc : row;
    for (int g = 0; g < s->group; g++) {
        const int qh = h * s->group + g;
        history_row(s->d, st, s->p->calib, qh, j->kept + (size_t)qh * NB, j->kept_mass[qh], row);
        if (s->group == 1) break;
        for (int b = 0; b < NB; b++) acc[b] = (g ? acc[b] : 0.0f) + row[b] / (float)s->group;
    }
    s->unit_rc[h] = hist_push(&s->hist[h], s->H, NB, r, st->n_valid, &s->unit_err[h]);
}

static ap_status pred_observe(void *state, const ap_sel_step *st, const uint8_t *kept,
                              const double *kept_mass, ap_err *err) {
    pred_state *s = state;
    hist_job j = {.s = s, .st = st, .kept = kept, .kept_mass = kept_mass};
    ap_par_for(st->par, observe_unit, &j, s->n_hist);
    return units_status(s, err);
}

static void pred_cost(const void *state, ap_sel_cost *c) { *c = ((const pred_state *)state)->cost; }

/* Query fusion (train/fusion.h): z(cnn) + w * z(query bound), per head:
 * the bounds of all heads first (split by block chunks), then each head's
 * fusion (split by head). */
typedef struct {
    pred_state *s;
    const ap_sel_step *st;
    float *scores;
    ap_status *rc;
    ap_err *errs;
} fuse_job;

static void fuse_unit(void *arg, int h) {
    const fuse_job *f = arg;
    const size_t W = (size_t)f->st->W;
    f->rc[h] = ap_runtime_fuse_bound(f->s->p->rt, f->s->d->layer, f->s->bound + (size_t)h * W,
                                     f->st->W, f->scores + (size_t)h * W, &f->errs[h]);
}

static ap_status pred_finish(void *state, const ap_sel_step *st, float *scores, ap_err *err) {
    pred_state *s = state;
    const ap_sel_data *d = s->d;
    if (!s->cfg->query_fusion) return AP_OK;
    query_bounds(d, st, s->bound);
    fuse_job f = {.s = s, .st = st, .scores = scores, .rc = s->fuse_rc, .errs = s->fuse_err};
    ap_par_for(st->par, fuse_unit, &f, d->n_head);
    for (int h = 0; h < d->n_head; h++)
        if (s->fuse_rc[h]) {
            if (err) *err = s->fuse_err[h];
            return s->fuse_rc[h];
        }
    return AP_OK;
}

void ap_sel_predictor_variant(int pred_stride, int pred_per_kv, char *buf, size_t n) {
    if (!buf || n == 0) return;
    int k = 0;
    buf[0] = 0;
    if (pred_stride > 1) k = snprintf(buf, n, ", stride %d", pred_stride);
    if (pred_per_kv && k >= 0 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, ", per KV head");
}

/* ---------------------------------------------------------------- registry */

static const ap_selector BUILTIN[] = {
    {"oracle", "Oracle top-k (upper bound)", AP_SEL_BOUND, 0, 0, data_only_create, plain_free,
     oracle_score, NULL, NULL, NULL},
    {"streaming", "StreamingLLM (sink + recent)", AP_SEL_EVICTION, 0, 0, data_only_create,
     plain_free, streaming_score, NULL, NULL, NULL},
    {"h2o", "H2O (accumulated attention)", AP_SEL_EVICTION, AP_SEL_NEEDS_COLSUM, 1, h2o_create,
     h2o_free, h2o_score, h2o_observe, NULL, NULL},
    {"snapkv", "SnapKV (prefill vote, fixed)", AP_SEL_EVICTION, 0, 0, snapkv_create, snapkv_free,
     snapkv_score, NULL, NULL, NULL},
    {"quest", "Quest (page key bounds x query)", AP_SEL_RETRIEVAL, AP_SEL_NEEDS_QUERY, 0,
     quest_create, plain_free, quest_score, NULL, NULL, NULL},
    {"last_step", "Last step (sparse/calibrated history)", AP_SEL_RETRIEVAL, 0, 1, last_create,
     last_free, last_score, last_observe, NULL, NULL},
    {"last_step_dense", "Last step, dense (needs dense attention every step)", AP_SEL_RETRIEVAL,
     AP_SEL_DENSE_EVERY_STEP, 0, data_only_create, plain_free, last_dense_score, NULL, NULL, NULL},
};

static const ap_selector PREDICTOR = {
    "attnpred", "AttentionPredictor", AP_SEL_RETRIEVAL, AP_SEL_NEEDS_PREDICTOR, 1, pred_create,
    pred_free, pred_score, pred_observe, pred_cost, pred_finish};

const ap_selector *ap_selector_builtin(int i) {
    if (i < 0 || i >= (int)(sizeof BUILTIN / sizeof BUILTIN[0])) return NULL;
    return &BUILTIN[i];
}

const ap_selector *ap_selector_find(const char *name) {
    for (int i = 0; ap_selector_builtin(i); i++)
        if (!strcmp(BUILTIN[i].name, name)) return &BUILTIN[i];
    return NULL;
}

const ap_selector *ap_selector_predictor(void) { return &PREDICTOR; }

/* ------------------------------------------------------------ geometry */

void ap_sel_step_at(const ap_sel_params *p, int block, int n_prompt, int n_pre, int t,
                    ap_sel_step *sp) {
    const int q = n_prompt + t;
    sp->t = t;
    sp->s = n_pre + t;
    sp->q = q;
    sp->c0 = p->sink_blocks;
    sp->c1 = (q + block - 1) / block - p->local_blocks;
    if (sp->c1 < sp->c0) sp->c1 = sp->c0;
    sp->W = sp->c1 - sp->c0;
    sp->n_valid = q / block + 1;
    if (p->local_tokens == 0)
        sp->lb0 = sp->n_valid;
    else
        sp->lb0 = q + 1 - p->local_tokens > 0 ? (q + 1 - p->local_tokens) / block : 0;
    sp->k = 0;
    sp->par = NULL;
}

/* ------------------------------------------------------------ choosing */

void ap_sel_choose_kv(ap_kv_mode mode, int nh, int n_head_kv, int g, const float *scores, int W,
                      int k, int *order, float *gsum, int *mark, int *chosen) {
    const int group = nh / n_head_kv;
    if (mode == AP_KV_PER_QHEAD) {
        for (int h = g * group; h < (g + 1) * group; h++)
            ap_metrics_topk(scores + (size_t)h * W, W, k, chosen + (size_t)h * W);
        return;
    }
    int *out = chosen + (size_t)g * group * W;
    if (mode == AP_KV_SUM) {
        /* -INFINITY (not available) anywhere stays -INFINITY. */
        for (int j = 0; j < W; j++) {
            float sum = 0.0f;
            for (int h = g * group; h < (g + 1) * group; h++) sum += scores[(size_t)h * W + j];
            gsum[j] = sum;
        }
        ap_metrics_topk(gsum, W, k, out);
    } else {
        for (int h = g * group; h < (g + 1) * group; h++)
            ap_metrics_topk(scores + (size_t)h * W, W, k, order + (size_t)h * W);
        memset(mark, 0, (size_t)W * sizeof(int));
        /* k ranks per head suffice: by rank k every head's first k are
         * marked, and what ranks below a skipped (NaN, -inf) entry is
         * skipped too. */
        int n = 0;
        for (int rk = 0; rk < k && n < k; rk++)
            for (int h = g * group; h < (g + 1) * group && n < k; h++) {
                int j = order[(size_t)h * W + rk];
                float v = scores[(size_t)h * W + j];
                if (mark[j] || isnan(v) || v == -INFINITY) continue;
                mark[j] = 1;
                out[n++] = j;
            }
    }
    for (int h = g * group + 1; h < (g + 1) * group; h++)
        memcpy(chosen + (size_t)h * W, out, (size_t)k * sizeof(int));
}

void ap_sel_choose(ap_kv_mode mode, int nh, int n_head_kv, const float *scores, int W, int k,
                   int *order, float *gsum, int *mark, int *chosen) {
    for (int g = 0; g < n_head_kv; g++)
        ap_sel_choose_kv(mode, nh, n_head_kv, g, scores, W, k, order, gsum, mark, chosen);
}

/* ------------------------------------------------------- predictor methods */

static int name_char_ok(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '.' || ch == '+' || ch == '-';
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

ap_status ap_sel_predictor_names(const char *const *paths, const char *const *names, int n,
                                 char (*out)[AP_REPLAY_PRED_NAME_MAX + 1], ap_err *err) {
    if (n < 0 || n > AP_REPLAY_MAX_PREDICTORS)
        return ap_errf(err, AP_ERR_ARG, "%d predictors given, at most %d", n,
                       AP_REPLAY_MAX_PREDICTORS);
    for (int p = 0; p < n; p++) {
        const char *given = names ? names[p] : NULL;
        char dflt[16];
        if (p == 0)
            snprintf(dflt, sizeof dflt, "attnpred");
        else
            snprintf(dflt, sizeof dflt, "attnpred%d", p + 1);
        const char *name = given ? given : dflt;
        if (!paths[p] || !paths[p][0])
            return ap_errf(err, AP_ERR_ARG, "name '%s' has an empty path", name);
        if (!name[0]) return ap_errf(err, AP_ERR_ARG, "empty name for %s", paths[p]);
        if (strlen(name) > AP_REPLAY_PRED_NAME_MAX)
            return ap_errf(err, AP_ERR_ARG, "name '%s' is longer than %d characters",
                           name, AP_REPLAY_PRED_NAME_MAX);
        for (const char *ch = name; *ch; ch++)
            if (!name_char_ok(*ch))
                return ap_errf(err, AP_ERR_ARG,
                               "name '%s' may use only letters, digits and _ . + -",
                               name);
        if (ap_selector_find(name) || !strcmp(name, "full"))
            return ap_errf(err, AP_ERR_ARG, "name '%s' is a built-in method's name",
                           name);
        if (ends_with(name, "_nocal"))
            return ap_errf(err, AP_ERR_ARG,
                           "name '%s' ends in _nocal, the suffix of the "
                           "no-calibration variants",
                           name);
        for (int q = 0; q < p; q++)
            if (!strcmp(out[q], name))
                return ap_errf(err, AP_ERR_ARG, "name '%s' given twice (%s and %s)",
                               name, paths[q], paths[p]);
        snprintf(out[p], AP_REPLAY_PRED_NAME_MAX + 1, "%s", name);
    }
    return AP_OK;
}

int ap_sel_predictor_selected(const char *name, const char *pred_name, int nocal) {
    if (!strcmp(name, nocal ? "attnpred_nocal" : "attnpred")) return 1;
    size_t n = strlen(pred_name);
    if (strncmp(name, pred_name, n)) return 0;
    return !strcmp(name + n, nocal ? "_nocal" : "");
}

ap_status ap_sel_predictor_check_layers(ap_runtime *rt, const char *path, int n_layer,
                                        const uint8_t *need_layer, ap_err *err) {
    for (int l = 0; l < n_layer; l++)
        if ((!need_layer || need_layer[l]) &&
            ap_predictor_model_of_layer(ap_runtime_predictor(rt), l) < 0)
            return ap_errf(err, AP_ERR_ARG,
                           "%s: predictor has no model for layer %d (it covers %d layers)", path,
                           l, ap_runtime_config(rt)->n_layers);
    return AP_OK;
}

ap_status ap_sel_predictor_load(const char *path, int block, int max_history, int n_layer,
                                const uint8_t *need_layer, const char *run, ap_runtime **out,
                                ap_err *err) {
    ap_runtime *rt = NULL;
    ap_status st = ap_runtime_load(path, &rt, err);
    if (st) goto cleanup;
    const ap_pred_config *pc = ap_runtime_config(rt);
    if (pc->block != block) {
        st = ap_errf(err, AP_ERR_ARG, "%s: predictor block size %d, but %s has block size %d",
                     path, pc->block, run, block);
        goto cleanup;
    }
    /* The history starts from the last `history` prefill rows (method.md
     * 4.2); rows the run does not have would be zeros the predictor's first
     * windows never held in the method, so that mismatch is refused. Fewer
     * rows than the run keeps are the newest of them, as in training with
     * `attnpred train --history`. */
    if (max_history > 0 && pc->history > max_history) {
        st = ap_errf(err, AP_ERR_ARG,
                     "%s: predictor history %d, but %s has history %d (prefill rows recorded)",
                     path, pc->history, run, max_history);
        goto cleanup;
    }
    if ((st = ap_sel_predictor_check_layers(rt, path, n_layer, need_layer, err))) goto cleanup;
    ap_predictor_set_threads(ap_runtime_predictor(rt), 1);
    *out = rt;
    rt = NULL;
cleanup:
    ap_runtime_free(rt);
    return st;
}
