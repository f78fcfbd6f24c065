/* Live selection over the engine's KV policy hook (see eval/live.h). The
 * per-step logic mirrors eval/replay.c's run_task (geometry, bypass, k,
 * eviction masking, ap_sel_choose, observe) on rows the model produces. */
#include "eval/live.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/block_pool.h"
#include "train/metrics.h"

struct ap_live_prefill {
    ap_hparams hp;
    int block, n_pre, n_prompt, max_steps, NB;
    float *bmax, *bsum;  /* [L][n_pre][H][NB] */
    float *kmin, *kmax;  /* [L][KV][NB][hd] */
    float *colsum;       /* [L][H][n_prompt] */
    ap_attn_observer obs;
};

static size_t pf_row(const ap_live_prefill *p, int l, int r, int h) {
    return (((size_t)l * p->n_pre + r) * p->hp.n_head + h) * p->NB;
}

/* Key bounds of block pos / block, first key of a block sets them. */
static void bounds_add(float *kmin, float *kmax, int pos, int block, const float *k, int hd) {
    if (pos % block == 0) {
        memcpy(kmin, k, (size_t)hd * sizeof(float));
        memcpy(kmax, k, (size_t)hd * sizeof(float));
        return;
    }
    for (int d = 0; d < hd; d++) {
        if (k[d] < kmin[d]) kmin[d] = k[d];
        if (k[d] > kmax[d]) kmax[d] = k[d];
    }
}

static void pf_on_row(void *user, int layer, int head, int pos, const float *probs, int len) {
    ap_live_prefill *p = user;
    int r = pos - (p->n_prompt - p->n_pre);
    if (r < 0 || r >= p->n_pre) return;
    size_t at = pf_row(p, layer, r, head);
    ap_block_pool(probs, len, p->block, p->NB, p->bmax + at, p->bsum + at);
}

/* The same rows from an engine that pools on the device (view_block =
 * block, so its views are exactly ap_block_pool's). */
static void pf_on_views(void *user, int layer, int head, int pos, const float *bmax,
                        const float *bsum, int nb) {
    ap_live_prefill *p = user;
    int r = pos - (p->n_prompt - p->n_pre);
    if (r < 0 || r >= p->n_pre) return;
    size_t at = pf_row(p, layer, r, head);
    int n = nb < p->NB ? nb : p->NB;
    memcpy(p->bmax + at, bmax, (size_t)n * sizeof(float));
    memcpy(p->bsum + at, bsum, (size_t)n * sizeof(float));
    memset(p->bmax + at + n, 0, (size_t)(p->NB - n) * sizeof(float));
    memset(p->bsum + at + n, 0, (size_t)(p->NB - n) * sizeof(float));
}

static void pf_on_key(void *user, int layer, int g, int pos, const float *k, int hd) {
    ap_live_prefill *p = user;
    if (pos >= p->n_prompt) return;
    size_t at = (((size_t)layer * p->hp.n_head_kv + g) * p->NB + pos / p->block) * (size_t)hd;
    bounds_add(p->kmin + at, p->kmax + at, pos, p->block, k, hd);
}

static void pf_on_colsum(void *user, int layer, int head, const float *colsum, int len) {
    ap_live_prefill *p = user;
    int n = len < p->n_prompt ? len : p->n_prompt;
    memcpy(p->colsum + ((size_t)layer * p->hp.n_head + head) * p->n_prompt, colsum,
           (size_t)n * sizeof(float));
}

void ap_live_prefill_free(ap_live_prefill *p) {
    if (!p) return;
    free(p->bmax);
    free(p->bsum);
    free(p->kmin);
    free(p->kmax);
    free(p->colsum);
    free(p);
}

ap_status ap_live_prefill_create(const ap_hparams *hp, int block, int n_pre, int n_prompt,
                                 int max_steps, ap_live_prefill **out, ap_err *err) {
    ap_status st = AP_OK;
    *out = NULL;
    if (block < 1 || n_pre < 1 || n_prompt < 1 || max_steps < 1)
        return ap_errf(err, AP_ERR_ARG, "live prefill: block %d, rows %d, prompt %d, steps %d",
                       block, n_pre, n_prompt, max_steps);
    ap_live_prefill *p = calloc(1, sizeof *p);
    if (!p) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    p->hp = *hp;
    p->block = block;
    p->n_pre = n_pre < n_prompt ? n_pre : n_prompt;
    p->n_prompt = n_prompt;
    p->max_steps = max_steps;
    p->NB = (n_prompt + max_steps + block - 1) / block;
    const size_t L = (size_t)hp->n_layer, H = (size_t)hp->n_head, hd = (size_t)hp->head_dim;
    const size_t rows = L * p->n_pre * H * p->NB, kb = L * hp->n_head_kv * p->NB * hd;
    p->bmax = calloc(rows, sizeof(float));
    p->bsum = calloc(rows, sizeof(float));
    p->kmin = calloc(kb, sizeof(float));
    p->kmax = calloc(kb, sizeof(float));
    p->colsum = calloc(L * H * n_prompt, sizeof(float));
    if (!p->bmax || !p->bsum || !p->kmin || !p->kmax || !p->colsum) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the prefill views of a %d-token prompt",
                     n_prompt);
        goto cleanup;
    }
    p->obs = (ap_attn_observer){.user = p, .rows_from = n_prompt - p->n_pre, .on_row = pf_on_row,
                                .on_key = pf_on_key, .on_colsum = pf_on_colsum,
                                .view_block = block, .on_views = pf_on_views};
    *out = p;
    p = NULL;
cleanup:
    ap_live_prefill_free(p);
    return st;
}

const ap_attn_observer *ap_live_prefill_observer(ap_live_prefill *p) { return &p->obs; }

/* ------------------------------------------------------------------ live */

typedef struct {
    ap_sel_data d;
    float *bmax, *bsum, *query, *kmin, *kmax;
    void *state;
    uint8_t *evicted; /* [H][NB] */
} live_layer;

struct ap_live {
    const ap_live_prefill *pf;
    const ap_selector *sel;
    ap_sel_params params;
    ap_live_opts o;
    int L, H, KV, hd, NB, S, block, G;
    int last_full; /* the last layer the engine calls the policy for (full attention) */
    unsigned flags_every, calib_measure;
    live_layer *layers;
    /* Scratch of the current (layer, step), shared by all layers. */
    float *scores, *work, *gsum;
    int *order, *chosen, *mark, *blocks, *set_off;
    uint8_t *kept, *uni;
    uint8_t *prev;   /* [L][KV][NB] last step's union per (layer, KV head) */
    double *kept_mass;
    ap_sel_step sp;
    int sp_layer, sp_bypass;
    ap_kv_policy pol;
    ap_attn_observer obs;
    ap_live_stats stats;
    /* Cross-token prefetch (opts.prefetch): one worker, a FIFO of layers. */
    int pf_on, pf_started, quit; /* pf_started: worker threads running */
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int *queue, q_head, q_len;   /* ring of L layer indices */
    int *pending;                /* [L] 0 none, 1 queued or running, 2 done */
    ap_sel_step *pf_obs;         /* [L] the step the job observes */
    ap_sel_step *pf_sp;          /* [L] the next step it scores, when has_scores */
    int *has_scores;             /* [L] */
    uint8_t *pf_kept;            /* [L][H][NB] kept blocks of the observed step */
    double *pf_mass;             /* [L][H] */
    float *pf_scores;            /* [L][H][NB] */
    ap_status *pf_st;            /* [L] */
    ap_err *pf_err;              /* [L] */
    double worker_seconds;       /* under mu */
    /* Hot pool (opts.hot_pool); pool p = layer * KV + KV head. */
    int cap;                     /* slots per pool */
    char *hot_k, *hot_v;         /* [L*KV][cap][block][hd] elements of o.kv_type */
    size_t esz;                  /* their bytes per element */
    int *slot_of;                /* [L*KV][NB] slot holding the block, -1 none */
    int *block_of;               /* [L*KV][cap] block in the slot, -1 free */
    int *free_slots, *n_free;    /* [L*KV][cap] stack of free slots, [L*KV] its depth */
    uint8_t *gone;               /* [L*KV][NB] eviction methods: blocks freed for good */
    const void **kp, **vp;       /* [KV][n_blocks] page tables of the current (layer, step) */
    /* peek's own outputs (select's scratch and kept set stay untouched). */
    int *pk_blocks, *pk_set_off, *pk_chosen;
    float *pk_work;
};

static size_t lrow(const ap_live *lv, int s, int h) { return ((size_t)s * lv->H + h) * lv->NB; }

void ap_live_free(ap_live *lv) {
    if (!lv) return;
    if (lv->pf_started) {
        pthread_mutex_lock(&lv->mu);
        lv->quit = 1;
        pthread_cond_broadcast(&lv->cv);
        pthread_mutex_unlock(&lv->mu);
        for (int i = 0; i < lv->pf_started; i++) pthread_join(lv->th[i], NULL);
        pthread_mutex_destroy(&lv->mu);
        pthread_cond_destroy(&lv->cv);
    }
    free(lv->th);
    free(lv->queue);
    free(lv->pending);
    free(lv->pf_sp);
    free(lv->pf_obs);
    free(lv->has_scores);
    free(lv->pf_kept);
    free(lv->pf_mass);
    free(lv->pf_scores);
    free(lv->pf_st);
    free(lv->pf_err);
    free(lv->hot_k);
    free(lv->hot_v);
    free(lv->slot_of);
    free(lv->block_of);
    free(lv->free_slots);
    free(lv->n_free);
    free(lv->gone);
    free(lv->kp);
    free(lv->vp);
    free(lv->pk_blocks);
    free(lv->pk_set_off);
    free(lv->pk_chosen);
    free(lv->pk_work);
    if (lv->layers)
        for (int l = 0; l < lv->L; l++) {
            live_layer *y = &lv->layers[l];
            if (y->state && lv->sel->destroy) lv->sel->destroy(y->state);
            free(y->bmax);
            free(y->bsum);
            free(y->query);
            free(y->kmin);
            free(y->kmax);
            free(y->evicted);
        }
    free(lv->layers);
    free(lv->scores);
    free(lv->work);
    free(lv->gsum);
    free(lv->order);
    free(lv->chosen);
    free(lv->mark);
    free(lv->blocks);
    free(lv->set_off);
    free(lv->kept);
    free(lv->uni);
    free(lv->prev);
    free(lv->kept_mass);
    free(lv);
}

static unsigned live_want(void *user, int layer, int pos) {
    ap_live *lv = user;
    (void)layer;
    int t = pos - lv->pf->n_prompt;
    unsigned f = lv->flags_every;
    if (lv->calib_measure && lv->params.calib > 0 && (t + 1) % lv->params.calib == 0)
        f |= AP_KV_MEASURE;
    return f;
}

/* Copy [H][ldb] block views into rows s of a layer (NB entries each). */
static void put_rows(ap_live *lv, live_layer *y, int s, const float *bm, const float *bs,
                     size_t ldb, int nb) {
    int n = nb < lv->NB ? nb : lv->NB;
    for (int h = 0; h < lv->H; h++) {
        float *dm = y->bmax + lrow(lv, s, h), *ds = y->bsum + lrow(lv, s, h);
        memcpy(dm, bm + (size_t)h * ldb, (size_t)n * sizeof(float));
        memcpy(ds, bs + (size_t)h * ldb, (size_t)n * sizeof(float));
        memset(dm + n, 0, (size_t)(lv->NB - n) * sizeof(float));
        memset(ds + n, 0, (size_t)(lv->NB - n) * sizeof(float));
    }
}

/* Step geometry at query position q (as eval/replay.c's run_task). */
static void geometry(const ap_live *lv, int q, ap_sel_step *sp) {
    ap_sel_step_at(&lv->params, lv->block, lv->pf->n_prompt, lv->pf->n_pre, q - lv->pf->n_prompt,
                   sp);
}

/* The worker: for each queued layer, observe() the step just attended and
 * score() the next one, i.e. the predictor's whole per-step work (its
 * history update is the larger part), while the decoding thread computes
 * the remaining layers. */
static void *prefetch_main(void *arg) {
    ap_live *lv = arg;
    const size_t HN = (size_t)lv->H * lv->NB;
    pthread_mutex_lock(&lv->mu);
    for (;;) {
        while (!lv->quit && lv->q_len == 0) pthread_cond_wait(&lv->cv, &lv->mu);
        if (lv->quit) break;
        int l = lv->queue[lv->q_head];
        lv->q_head = (lv->q_head + 1) % lv->L;
        lv->q_len--;
        const ap_sel_step ob = lv->pf_obs[l], sp = lv->pf_sp[l];
        const int scores = lv->has_scores[l];
        pthread_mutex_unlock(&lv->mu);
        /* Only this thread touches layer l's state until pending[l] is 2. */
        ap_err e = {0};
        double t0 = ap_now_seconds();
        ap_status st = lv->sel->observe(lv->layers[l].state, &ob, lv->pf_kept + (size_t)l * HN,
                                        lv->pf_mass + (size_t)l * lv->H, &e);
        if (st == AP_OK && scores)
            st = lv->sel->score(lv->layers[l].state, &sp, lv->pf_scores + (size_t)l * HN, &e);
        double dt = ap_now_seconds() - t0;
        pthread_mutex_lock(&lv->mu);
        lv->worker_seconds += dt;
        lv->pf_st[l] = st;
        if (st) lv->pf_err[l] = e;
        lv->pending[l] = 2;
        pthread_cond_broadcast(&lv->cv);
    }
    pthread_mutex_unlock(&lv->mu);
    return NULL;
}

/* Wait until layer l's job (if any) is done; its failure becomes ours. */
static ap_status sync_layer(ap_live *lv, int l, ap_err *err) {
    if (!lv->pf_on) return AP_OK;
    double t0 = ap_now_seconds();
    pthread_mutex_lock(&lv->mu);
    while (lv->pending[l] == 1) pthread_cond_wait(&lv->cv, &lv->mu);
    ap_status st = lv->pending[l] == 2 ? lv->pf_st[l] : AP_OK;
    if (st && err) *err = lv->pf_err[l];
    pthread_mutex_unlock(&lv->mu);
    lv->stats.prefetch_wait_seconds += ap_now_seconds() - t0;
    return st;
}

/* Scores of the current step: the prefetched ones when the job scored this
 * step, else computed here (after sync_layer). */
static ap_status step_scores(ap_live *lv, int l, ap_err *err) {
    live_layer *y = &lv->layers[l];
    ap_status st = AP_OK;
    if (lv->pf_on && lv->pending[l] == 2 && lv->has_scores[l]) {
        const ap_sel_step *got = &lv->pf_sp[l];
        if (got->t != lv->sp.t || got->c0 != lv->sp.c0 || got->c1 != lv->sp.c1)
            return ap_errf(err, AP_ERR_INTERNAL, "prefetched step %d does not match step %d",
                           got->t, lv->sp.t);
        lv->stats.prefetched++;
        memcpy(lv->scores, lv->pf_scores + (size_t)l * lv->H * lv->NB,
               (size_t)lv->H * lv->sp.W * sizeof(float));
    } else {
        double t0 = ap_now_seconds();
        st = lv->sel->score(y->state, &lv->sp, lv->scores, err);
        lv->stats.score_seconds += ap_now_seconds() - t0;
    }
    /* The query-time part runs here: the step's query exists only now. */
    if (st == AP_OK && lv->sel->finish) {
        double t0 = ap_now_seconds();
        st = lv->sel->finish(y->state, &lv->sp, lv->scores, err);
        lv->stats.score_seconds += ap_now_seconds() - t0;
    }
    return st;
}

/* Make the pool of (ks->layer, KV head g) hold exactly the blocks in uni
 * (the union of the head's kept sets over n_valid blocks), copying entering
 * blocks and the newest key from the engine's cache, and fill the head's
 * page tables. Counts the copies where they happen. */
static ap_status pool_update(ap_live *lv, const ap_kv_step *ks, int g, const uint8_t *uni,
                             int n_valid, int t, ap_err *err) {
    const int B = lv->block, hd = lv->hd, cap = lv->cap, n_keys = ks->pos + 1;
    const int eviction = lv->sel->kind == AP_SEL_EVICTION;
    const size_t pi = (size_t)ks->layer * lv->KV + g, slot_f = (size_t)B * hd, es = lv->esz;
    if (ks->kv_type != lv->o.kv_type)
        return ap_errf(err, AP_ERR_ARG, "hot pool: the pool holds %s but the KV cache is %s",
                       ap_kv_type_name(lv->o.kv_type), ap_kv_type_name(ks->kv_type));
    int *slot_of = lv->slot_of + pi * lv->NB, *block_of = lv->block_of + pi * cap;
    int *fr = lv->free_slots + pi * cap, *n_free = &lv->n_free[pi];
    uint8_t *gone = lv->gone + pi * lv->NB;
    char *hk = lv->hot_k + pi * cap * slot_f * es, *hv = lv->hot_v + pi * cap * slot_f * es;
    const void **kp = lv->kp + (size_t)g * n_valid, **vp = lv->vp + (size_t)g * n_valid;
    /* Slots of blocks this step does not keep become free first, so the
     * pool never holds more than one step's kept set. */
    for (int sl = 0; sl < cap; sl++) {
        int b = block_of[sl];
        if (b < 0 || (b < n_valid && uni[b])) continue;
        block_of[sl] = -1;
        slot_of[b] = -1;
        fr[(*n_free)++] = sl;
        if (eviction) gone[b] = 1;
    }
    long fetched = 0, written = 0, used = 0, held = 0;
    for (int j = 0; j < n_valid; j++) {
        kp[j] = vp[j] = NULL;
        if (!uni[j]) continue;
        const int rows = n_keys - j * B < B ? n_keys - j * B : B, newest = j == n_valid - 1;
        int sl = slot_of[j], from;
        if (sl < 0) {
            if (gone[j])
                return ap_errf(err, AP_ERR_INTERNAL,
                               "hot pool: eviction method %s needs block %d of layer %d, KV "
                               "head %d again after dropping it",
                               lv->sel->name, j, ks->layer, g);
            if (*n_free == 0)
                return ap_errf(err, AP_ERR_INTERNAL,
                               "hot pool: layer %d, KV head %d keeps more than its %d slots",
                               ks->layer, g, cap);
            sl = fr[--(*n_free)];
            slot_of[j] = sl;
            block_of[sl] = j;
            from = 0;
            fetched += newest ? rows - 1 : rows;
        } else {
            /* Resident since it entered: only the newest key is new. */
            from = newest ? rows - 1 : rows;
        }
        if (newest) written++;
        char *dk = hk + (size_t)sl * slot_f * es, *dv = hv + (size_t)sl * slot_f * es;
        for (int r = from; r < rows; r++) {
            const size_t src = ((size_t)(j * B + r) * ks->kv_stride + (size_t)g * hd) * es;
            memcpy(dk + (size_t)r * hd * es, (const char *)ks->k + src, (size_t)hd * es);
            memcpy(dv + (size_t)r * hd * es, (const char *)ks->v + src, (size_t)hd * es);
        }
        kp[j] = dk;
        vp[j] = dv;
    }
    /* Measured on the slots themselves, not on uni. */
    for (int sl = 0; sl < cap; sl++) {
        int b = block_of[sl];
        if (b < 0) continue;
        used++;
        held += n_keys - b * B < B ? n_keys - b * B : B;
    }
    const double slot_bytes = 2.0 * (double)slot_f * (double)es;
    lv->stats.hot_slot_bytes += (double)used * slot_bytes;
    lv->stats.hot_tokens += (double)held;
    lv->stats.pool_written_tokens += (double)written;
    if (t > 0)
        lv->stats.pool_fetched_tokens += (double)fetched;
    else
        lv->stats.pool_fill_tokens += (double)fetched;
    return AP_OK;
}

/* ap_sel_choose for one KV head, so select can split it over the engine's
 * threads (each head has its own gsum and mark). */
typedef struct {
    ap_live *lv;
    int W, k;
} choose_job;

static void choose_unit(void *arg, int g) {
    const choose_job *c = arg;
    ap_live *lv = c->lv;
    const size_t at = (size_t)g * lv->NB;
    ap_sel_choose_kv(lv->params.kv_mode, lv->H, lv->KV, g, lv->work, c->W, c->k, lv->order,
                     lv->gsum + at, lv->mark + at, lv->chosen);
}

static ap_status live_select(void *user, const ap_kv_step *ks, const int **blocks,
                             const int **set_off, ap_err *err) {
    ap_live *lv = user;
    const double t0 = ap_now_seconds();
    ap_status st = AP_OK;
    const int t = ks->pos - lv->pf->n_prompt, H = lv->H, NB = lv->NB, B = lv->block;
    if (t < 0 || t >= lv->pf->max_steps)
        return ap_errf(err, AP_ERR_RANGE, "live decode: position %d is outside the %d decode steps "
                       "after a %d-token prompt", ks->pos, lv->pf->max_steps, lv->pf->n_prompt);
    live_layer *y = &lv->layers[ks->layer];
    if ((st = sync_layer(lv, ks->layer, err))) goto cleanup;
    ap_sel_step *sp = &lv->sp;
    geometry(lv, ks->pos, sp);
    sp->par = ks->par;
    memcpy(y->query + (size_t)sp->s * H * lv->hd, ks->q, (size_t)H * lv->hd * sizeof(float));
    if (ks->dense_bmax) put_rows(lv, y, sp->s, ks->dense_bmax, ks->dense_bsum, ks->ldb, ks->n_blocks);
    const int W = sp->W, bypass = W < lv->o.min_candidates;
    const int k = bypass ? W : ap_metrics_k_blocks(lv->o.budget, lv->o.sink, lv->o.local, B, W);
    sp->k = k;
    lv->sp_layer = ks->layer;
    lv->sp_bypass = bypass;
    if (bypass) {
        lv->stats.bypass++;
        for (int h = 0; h < H; h++)
            for (int j = 0; j < W; j++) lv->chosen[(size_t)h * W + j] = j;
    } else {
        if ((st = step_scores(lv, ks->layer, err))) goto cleanup;
        memcpy(lv->work, lv->scores, (size_t)H * W * sizeof(float));
        if (lv->sel->kind == AP_SEL_EVICTION)
            for (int h = 0; h < H; h++)
                for (int j = 0; j < W; j++)
                    if (y->evicted[(size_t)h * NB + sp->c0 + j]) lv->work[(size_t)h * W + j] = -INFINITY;
        choose_job cj = {.lv = lv, .W = W, .k = k};
        ap_par_for(ks->par, choose_unit, &cj, lv->KV);
    }
    /* Kept blocks (what observe() and the accounting see) and eviction. */
    for (int h = 0; h < H; h++) {
        uint8_t *keep = lv->kept + (size_t)h * NB;
        const int *ch = lv->chosen + (size_t)h * W;
        memset(keep, 0, (size_t)NB);
        for (int j = 0; j < sp->n_valid && j < NB; j++) keep[j] = j < sp->c0 || j >= sp->lb0;
        for (int i = 0; i < k; i++) keep[sp->c0 + ch[i]] = 1;
        if (lv->sel->kind == AP_SEL_EVICTION && !bypass) {
            int lim = sp->c1 < sp->lb0 ? sp->c1 : sp->lb0;
            for (int j = sp->c0; j < lim; j++)
                if (!keep[j]) y->evicted[(size_t)h * NB + j] = 1;
        }
    }
    /* Lists: the kept blocks past the sink (the sink tokens are implicit). */
    const int per_q = lv->pol.per_q_head, n_sets = per_q ? H : lv->KV;
    int n = 0;
    for (int u = 0; u < n_sets; u++) {
        const uint8_t *keep = lv->kept + (size_t)(per_q ? u : u * lv->G) * NB;
        lv->set_off[u] = n;
        for (int j = sp->c0; j < sp->n_valid && j < NB; j++)
            if (keep[j]) lv->blocks[n++] = j;
    }
    lv->set_off[n_sets] = n;
    /* Resident tokens: per KV head, the union of its query heads' sets. */
    const int n_keys = ks->pos + 1;
    for (int g = 0; g < lv->KV; g++) {
        memset(lv->uni, 0, (size_t)NB);
        for (int h = g * lv->G; h < (g + 1) * lv->G; h++)
            for (int j = 0; j < sp->n_valid && j < NB; j++) lv->uni[j] |= lv->kept[(size_t)h * NB + j];
        long tok = 0, fetched = 0;
        uint8_t *prev = lv->prev + ((size_t)ks->layer * lv->KV + g) * NB;
        for (int j = 0; j < sp->n_valid && j < NB; j++) {
            if (!lv->uni[j]) continue;
            long in_block = n_keys - j * B < B ? n_keys - j * B : B;
            tok += in_block;
            /* A block kept last step needs at most its newest key: written. */
            if (!prev[j]) fetched += j == sp->n_valid - 1 ? in_block - 1 : in_block;
        }
        memcpy(prev, lv->uni, (size_t)NB);
        lv->stats.resident_tokens += (double)tok;
        if (sp->t > 0) lv->stats.fetched_tokens += (double)fetched;
        if (lv->o.hot_pool && (st = pool_update(lv, ks, g, lv->uni, sp->n_valid, sp->t, err)))
            goto cleanup;
    }
    lv->stats.full_tokens += (double)n_keys * lv->KV;
    *blocks = lv->blocks;
    *set_off = lv->set_off;
    if (lv->pf_on) lv->pending[ks->layer] = 0;
cleanup:
    lv->stats.select_seconds += ap_now_seconds() - t0;
    return st;
}

/* The lists select will return for (layer, pos) when the prefetch worker
 * has scored that step: the same choice from the same scores (select
 * recomputes it), for engines that copy kept blocks ahead (the CUDA
 * engine's cross-token prefetch). Bypassed steps and methods without the
 * worker answer "not known". */
static ap_status live_peek(void *user, int layer, int pos, int wait, const int **blocks,
                           const int **set_off, ap_err *err) {
    ap_live *lv = user;
    *blocks = NULL;
    *set_off = NULL;
    const int t = pos - lv->pf->n_prompt;
    if (!lv->pf_on || layer < 0 || layer >= lv->L || t < 0 || t >= lv->pf->max_steps)
        return AP_OK;
    /* A query-fusion predictor's lists depend on the query of that step,
     * which the worker's scores do not include yet. */
    if (lv->params.rt && ap_runtime_config(lv->params.rt)->query_fusion) return AP_OK;
    pthread_mutex_lock(&lv->mu);
    if (wait)
        while (lv->pending[layer] == 1) pthread_cond_wait(&lv->cv, &lv->mu);
    const int ready = lv->pending[layer] == 2 && lv->pf_st[layer] == AP_OK &&
                      lv->has_scores[layer] && lv->pf_sp[layer].q == pos;
    pthread_mutex_unlock(&lv->mu);
    if (!ready) return AP_OK;
    /* Done jobs are not touched by the worker until the next attended. */
    const double t0 = ap_now_seconds();
    const int H = lv->H, NB = lv->NB;
    const ap_sel_step *sp = &lv->pf_sp[layer];
    const live_layer *y = &lv->layers[layer];
    const int W = sp->W;
    const int k = ap_metrics_k_blocks(lv->o.budget, lv->o.sink, lv->o.local, lv->block, W);
    memcpy(lv->pk_work, lv->pf_scores + (size_t)layer * H * NB, (size_t)H * W * sizeof(float));
    if (lv->sel->kind == AP_SEL_EVICTION)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < W; j++)
                if (y->evicted[(size_t)h * NB + sp->c0 + j]) lv->pk_work[(size_t)h * W + j] = -INFINITY;
    ap_sel_choose(lv->params.kv_mode, H, lv->KV, lv->pk_work, W, k, lv->order, lv->gsum, lv->mark,
                  lv->pk_chosen);
    const int per_q = lv->pol.per_q_head, n_sets = per_q ? H : lv->KV;
    int n = 0;
    for (int u = 0; u < n_sets; u++) {
        const int h = per_q ? u : u * lv->G;
        const int *ch = lv->pk_chosen + (size_t)h * W;
        lv->pk_set_off[u] = n;
        /* Candidates are chosen, the local blocks always kept; in order. */
        for (int j = sp->c0; j < sp->n_valid && j < NB; j++) {
            int keep = j >= sp->lb0;
            for (int i = 0; i < k && !keep; i++) keep = sp->c0 + ch[i] == j;
            if (keep) lv->pk_blocks[n++] = j;
        }
    }
    lv->pk_set_off[n_sets] = n;
    *blocks = lv->pk_blocks;
    *set_off = lv->pk_set_off;
    lv->stats.select_seconds += ap_now_seconds() - t0;
    (void)err;
    return AP_OK;
}

/* The tables pool_update filled for this (layer, step). */
static ap_status live_pages(void *user, const ap_kv_step *ks, const void *const **k_pages,
                            const void *const **v_pages, ap_err *err) {
    ap_live *lv = user;
    if (ks->layer != lv->sp_layer || ks->pos != lv->sp.q)
        return ap_errf(err, AP_ERR_INTERNAL,
                       "hot pool: pages of layer %d at %d asked after selecting layer %d at %d",
                       ks->layer, ks->pos, lv->sp_layer, lv->sp.q);
    /* Adds const at both levels: C wants the cast. */
    *k_pages = (const void *const *)lv->kp;
    *v_pages = (const void *const *)lv->vp;
    return AP_OK;
}

static ap_status live_attended(void *user, const ap_kv_step *ks, const ap_kv_attended *r,
                               ap_err *err) {
    ap_live *lv = user;
    const double t0 = ap_now_seconds();
    ap_status st = AP_OK;
    live_layer *y = &lv->layers[ks->layer];
    ap_sel_step *sp = &lv->sp;
    sp->par = ks->par; /* observe below may split its work over them */
    if (r->dense_bmax) {
        put_rows(lv, y, sp->s, r->dense_bmax, r->dense_bsum, ks->ldb, ks->n_blocks);
        for (int h = 0; h < lv->H; h++) {
            lv->kept_mass[h] = r->kept_mass[h];
            lv->stats.recovery_sum += r->kept_mass[h];
            lv->stats.recovery_n++;
        }
    } else {
        /* The sparse row is the dense one restricted to the kept keys and
         * divided by their mass: with mass 1 the selectors rebuild it. */
        put_rows(lv, y, sp->s, r->bmax, r->bsum, ks->ldb, ks->n_blocks);
        for (int h = 0; h < lv->H; h++) lv->kept_mass[h] = 1.0;
    }
    if (ks->layer == lv->last_full) lv->stats.steps++;
    if (lv->pf_on) {
        /* observe() and the next step's score() go to the worker. */
        const int l = ks->layer;
        const size_t HN = (size_t)lv->H * lv->NB;
        ap_sel_step nx;
        geometry(lv, ks->pos + 1, &nx);
        pthread_mutex_lock(&lv->mu);
        memcpy(lv->pf_kept + (size_t)l * HN, lv->kept, HN);
        memcpy(lv->pf_mass + (size_t)l * lv->H, lv->kept_mass, (size_t)lv->H * sizeof(double));
        lv->pf_obs[l] = *sp;
        lv->pf_obs[l].par = NULL; /* the worker must not use the engine's threads */
        lv->pf_sp[l] = nx;
        lv->has_scores[l] = sp->t + 1 < lv->pf->max_steps && nx.W >= lv->o.min_candidates;
        lv->pending[l] = 1;
        lv->queue[(lv->q_head + lv->q_len) % lv->L] = l;
        lv->q_len++;
        pthread_cond_signal(&lv->cv);
        pthread_mutex_unlock(&lv->mu);
    } else if (lv->sel->stateful) {
        double t1 = ap_now_seconds();
        st = lv->sel->observe(y->state, sp, lv->kept, lv->kept_mass, err);
        lv->stats.score_seconds += ap_now_seconds() - t1;
    }
    lv->stats.select_seconds += ap_now_seconds() - t0;
    return st;
}

static void live_on_key(void *user, int layer, int g, int pos, const float *k, int hd) {
    ap_live *lv = user;
    if (pos < lv->pf->n_prompt) return;
    live_layer *y = &lv->layers[layer];
    int blk = pos / lv->block;
    if (blk >= lv->NB) return;
    size_t at = ((size_t)g * lv->NB + blk) * (size_t)hd;
    bounds_add(y->kmin + at, y->kmax + at, pos, lv->block, k, hd);
}

ap_status ap_live_create(const ap_live_prefill *pf, const ap_selector *sel,
                         const ap_sel_params *params, const ap_live_opts *opts, ap_live **out,
                         ap_err *err) {
    ap_status st = AP_OK;
    *out = NULL;
    if (opts->budget < 1 || opts->sink < 0 || opts->local < 0 || opts->sink % pf->block != 0)
        return ap_errf(err, AP_ERR_ARG, "live: budget %d, sink %d, local %d (sink a multiple of %d)",
                       opts->budget, opts->sink, opts->local, pf->block);
    if (opts->kv_type != AP_KV_F32 && opts->kv_type != AP_KV_F16)
        return ap_errf(err, AP_ERR_ARG, "live: unknown KV cache type %d", (int)opts->kv_type);
    ap_live *lv = calloc(1, sizeof *lv);
    if (!lv) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    const ap_hparams *hp = &pf->hp;
    lv->pf = pf;
    lv->sel = sel;
    lv->params = *params;
    lv->params.sink_blocks = opts->sink / pf->block;
    lv->params.local_blocks = opts->local / pf->block;
    lv->params.local_tokens = opts->local;
    lv->o = *opts;
    lv->L = hp->n_layer;
    lv->last_full = hp->n_layer - 1;
    while (lv->last_full > 0 && ap_hparams_layer_swa(hp, lv->last_full)) lv->last_full--;
    lv->H = hp->n_head;
    lv->KV = hp->n_head_kv;
    lv->G = hp->n_head / hp->n_head_kv;
    lv->hd = hp->head_dim;
    lv->NB = pf->NB;
    lv->S = pf->n_pre + pf->max_steps;
    lv->block = pf->block;
    if (!strcmp(sel->name, "oracle")) lv->flags_every = AP_KV_DENSE_BEFORE | AP_KV_MEASURE;
    if (sel->needs & AP_SEL_DENSE_EVERY_STEP) lv->flags_every |= AP_KV_MEASURE;
    if (opts->measure) lv->flags_every |= AP_KV_MEASURE;
    /* History methods read the dense row on their calibration steps. */
    lv->calib_measure = !strcmp(sel->name, "last_step") || (sel->needs & AP_SEL_NEEDS_PREDICTOR);
    const size_t H = (size_t)lv->H, NB = (size_t)lv->NB, hd = (size_t)lv->hd, S = (size_t)lv->S;
    lv->layers = calloc((size_t)lv->L, sizeof *lv->layers);
    lv->scores = calloc(H * NB, sizeof(float));
    lv->work = calloc(H * NB, sizeof(float));
    lv->gsum = calloc((size_t)lv->KV * NB, sizeof(float));
    lv->order = calloc(H * NB, sizeof(int));
    lv->chosen = calloc(H * NB, sizeof(int));
    lv->mark = calloc((size_t)lv->KV * NB, sizeof(int));
    lv->blocks = calloc(H * NB, sizeof(int));
    lv->set_off = calloc(H + 1, sizeof(int));
    lv->kept = calloc(H * NB, 1);
    lv->uni = calloc(NB, 1);
    lv->prev = calloc((size_t)lv->L * lv->KV * NB, 1);
    lv->kept_mass = calloc(H, sizeof(double));
    if (!lv->layers || !lv->scores || !lv->work || !lv->gsum || !lv->order || !lv->chosen ||
        !lv->mark || !lv->blocks || !lv->set_off || !lv->kept || !lv->uni || !lv->kept_mass || !lv->prev) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for live selection");
        goto cleanup;
    }
    for (int l = 0; l < lv->L; l++) {
        live_layer *y = &lv->layers[l];
        const size_t kb = (size_t)lv->KV * NB * hd;
        y->bmax = calloc(S * H * NB, sizeof(float));
        y->bsum = calloc(S * H * NB, sizeof(float));
        y->query = calloc(S * H * hd, sizeof(float));
        y->kmin = malloc(kb * sizeof(float));
        y->kmax = malloc(kb * sizeof(float));
        y->evicted = calloc(H * NB, 1);
        if (!y->bmax || !y->bsum || !y->query || !y->kmin || !y->kmax || !y->evicted) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory for live selection (layer %d)", l);
            goto cleanup;
        }
        const size_t pre = (size_t)pf->n_pre * H * NB;
        memcpy(y->bmax, pf->bmax + pf_row(pf, l, 0, 0), pre * sizeof(float));
        memcpy(y->bsum, pf->bsum + pf_row(pf, l, 0, 0), pre * sizeof(float));
        memcpy(y->kmin, pf->kmin + (size_t)l * kb, kb * sizeof(float));
        memcpy(y->kmax, pf->kmax + (size_t)l * kb, kb * sizeof(float));
        y->d = (ap_sel_data){.layer = l, .n_head = lv->H, .n_head_kv = lv->KV, .head_dim = lv->hd,
                             .block = lv->block, .n_prompt = pf->n_prompt, .n_pre = pf->n_pre,
                             .n_steps = pf->max_steps, .n_blocks = lv->NB, .block_max = y->bmax,
                             .block_sum = y->bsum, .query = y->query, .key_min = y->kmin,
                             .key_max = y->kmax,
                             .prefill_colsum = pf->colsum + (size_t)l * H * pf->n_prompt};
        if ((st = sel->create(&y->d, &lv->params, &y->state, err))) goto cleanup;
    }
    /* Prefetch pays only where scoring is real work and depends on nothing
     * the next step brings (the query): the predictor. */
    if (opts->prefetch && sel->stateful && !(sel->needs & AP_SEL_NEEDS_QUERY) &&
        ((sel->needs & AP_SEL_NEEDS_PREDICTOR) || opts->prefetch_any)) {
        lv->queue = calloc((size_t)lv->L, sizeof(int));
        lv->pending = calloc((size_t)lv->L, sizeof(int));
        lv->pf_sp = calloc((size_t)lv->L, sizeof(ap_sel_step));
        lv->pf_obs = calloc((size_t)lv->L, sizeof(ap_sel_step));
        lv->has_scores = calloc((size_t)lv->L, sizeof(int));
        lv->pf_kept = calloc((size_t)lv->L * H * NB, 1);
        lv->pf_mass = calloc((size_t)lv->L * H, sizeof(double));
        lv->pf_scores = calloc((size_t)lv->L * H * NB, sizeof(float));
        lv->pf_st = calloc((size_t)lv->L, sizeof(ap_status));
        lv->pf_err = calloc((size_t)lv->L, sizeof(ap_err));
        if (!lv->queue || !lv->pending || !lv->pf_sp || !lv->pf_scores || !lv->pf_st ||
            !lv->pf_err || !lv->pf_obs || !lv->has_scores || !lv->pf_kept || !lv->pf_mass) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory for prefetch buffers");
            goto cleanup;
        }
        /* Layers are independent jobs (each touches only its own selector
         * state), so several workers may take them. */
        const int n_th = opts->prefetch_threads > 1 ? opts->prefetch_threads : 1;
        if (!(lv->th = calloc((size_t)n_th, sizeof *lv->th))) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory for prefetch threads");
            goto cleanup;
        }
        pthread_mutex_init(&lv->mu, NULL);
        pthread_cond_init(&lv->cv, NULL);
        for (int i = 0; i < n_th; i++) {
            if (pthread_create(&lv->th[i], NULL, prefetch_main, lv) != 0) {
                if (lv->pf_started == 0) {
                    pthread_mutex_destroy(&lv->mu);
                    pthread_cond_destroy(&lv->cv);
                }
                st = ap_errf(err, AP_ERR_INTERNAL, "cannot start prefetch thread %d of %d", i + 1,
                             n_th);
                goto cleanup;
            }
            lv->pf_started++;
        }
        lv->pf_on = 1;
    }
    /* The most blocks one step keeps per KV head (eval/live.h): the hot
     * pool's size, and the engine's device pool's. */
    {
        const int B = lv->block, free_tok = opts->budget - opts->sink - opts->local;
        const long kmax = free_tok > 0 ? free_tok / B : 0;
        long cand = (long)lv->G * kmax;
        if (cand < opts->min_candidates - 1) cand = opts->min_candidates - 1;
        long cap = opts->sink / B + (opts->local > 0 ? (opts->local + B - 1) / B + 1 : 0) + cand;
        lv->cap = cap < lv->NB ? (int)cap : lv->NB;
    }
    if (lv->pf_on) {
        lv->pk_blocks = calloc(H * NB, sizeof(int));
        lv->pk_set_off = calloc(H + 1, sizeof(int));
        lv->pk_chosen = calloc(H * NB, sizeof(int));
        lv->pk_work = calloc(H * NB, sizeof(float));
        if (!lv->pk_blocks || !lv->pk_set_off || !lv->pk_chosen || !lv->pk_work) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory for prefetch lists");
            goto cleanup;
        }
    }
    if (opts->hot_pool) {
        const size_t P = (size_t)lv->L * lv->KV, C = (size_t)lv->cap;
        const size_t elts = P * C * (size_t)lv->block * hd;
        lv->esz = ap_kv_type_size(opts->kv_type);
        /* malloc, not calloc: a slot is written before attention reads it. */
        lv->hot_k = malloc(elts * lv->esz);
        lv->hot_v = malloc(elts * lv->esz);
        lv->slot_of = malloc(P * NB * sizeof(int));
        lv->block_of = malloc(P * C * sizeof(int));
        lv->free_slots = malloc(P * C * sizeof(int));
        lv->n_free = malloc(P * sizeof(int));
        lv->gone = calloc(P * NB, 1);
        lv->kp = calloc((size_t)lv->KV * NB, sizeof *lv->kp);
        lv->vp = calloc((size_t)lv->KV * NB, sizeof *lv->vp);
        if (!lv->hot_k || !lv->hot_v || !lv->slot_of || !lv->block_of || !lv->free_slots ||
            !lv->n_free || !lv->gone || !lv->kp || !lv->vp) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory for a %d-slot hot pool", lv->cap);
            goto cleanup;
        }
        for (size_t i = 0; i < P * NB; i++) lv->slot_of[i] = -1;
        for (size_t pi = 0; pi < P; pi++) {
            lv->n_free[pi] = lv->cap;
            for (size_t sl = 0; sl < C; sl++) {
                lv->block_of[pi * C + sl] = -1;
                /* Popped from the top: slot 0 first. */
                lv->free_slots[pi * C + sl] = (int)(C - 1 - sl);
            }
        }
        lv->stats.hot_capacity_bytes = (double)elts * 2.0 * (double)lv->esz;
    }
    lv->pol = (ap_kv_policy){.user = lv, .block = lv->block, .sink = opts->sink,
                             .local = opts->local,
                             .per_q_head = lv->params.kv_mode == AP_KV_PER_QHEAD,
                             .want = live_want, .select = live_select,
                             .attended = live_attended,
                             .pages = opts->hot_pool ? live_pages : NULL,
                             .max_blocks = lv->cap,
                             .peek = lv->pf_on ? live_peek : NULL};
    lv->obs = (ap_attn_observer){.user = lv, .rows_from = 1 << 30, .on_key = live_on_key};
    *out = lv;
    lv = NULL;
cleanup:
    ap_live_free(lv);
    return st;
}

const ap_kv_policy *ap_live_policy(ap_live *lv) { return &lv->pol; }
const ap_attn_observer *ap_live_observer(ap_live *lv) { return &lv->obs; }
void ap_live_get_stats(const ap_live *lv, ap_live_stats *st) {
    *st = lv->stats;
    if (lv->pf_started) {
        pthread_mutex_lock((pthread_mutex_t *)&lv->mu);
        st->score_seconds += lv->worker_seconds;
        pthread_mutex_unlock((pthread_mutex_t *)&lv->mu);
    }
}
