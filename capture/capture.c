#include "capture/capture.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "capture/gguf.h"
#include "capture/model.h"
#include "capture/prompts.h"
#include "capture/tokenizer.h"
#include "capture/trace.h"
#include "common/util.h"
#include "kernels/block_pool.h"

void ap_capture_opts_default(ap_capture_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_gen = 64;
    o->history = 64;
    o->block_size = 16;
    o->n_raw_layers = 0;
    o->shard_index = 0;
    o->shard_count = 1;
    o->threads = 2;
    o->stop_at_eos = 1;
    o->with_quest = 1;
    o->with_colsum = 1;
}

/* Everything one sequence records, sized for the largest possible run
 * (n_gen tokens decoded); compacted to the actual size before writing. */
typedef struct {
    int n_layer, n_head, n_head_kv, head_dim, block;
    int n_prompt, first_pos; /* first recorded query position */
    int s_cap, nb_cap, t_cap;
    float *block_max, *block_sum; /* [L][s_cap][H][nb_cap] */
    float *query;                 /* [L][s_cap][H][hd] */
    float *key_min, *key_max;     /* [L][Hkv][nb_cap][hd] */
    float *colsum;                /* [L][H][n_prompt] */
    int in_prefill;
    int raw_slot[512];            /* layer -> raw index or -1 */
    int n_raw;
    float *raw;                   /* [n_raw][s_cap][H][t_cap] */
} seq_rec;

static size_t idx_view(const seq_rec *r, int l, int s, int h) {
    return (((size_t)l * r->s_cap + s) * r->n_head + h) * r->nb_cap;
}

static void obs_row(void *user, int layer, int head, int pos, const float *p, int len) {
    seq_rec *r = user;
    int s = pos - r->first_pos;
    if (s < 0 || s >= r->s_cap) return;
    float *mx = r->block_max + idx_view(r, layer, s, head);
    float *sm = r->block_sum + idx_view(r, layer, s, head);
    ap_block_pool(p, len, r->block, r->nb_cap, mx, sm);
    int ri = (layer < 512) ? r->raw_slot[layer] : -1;
    if (ri >= 0) {
        float *dst = r->raw + (((size_t)ri * r->s_cap + s) * r->n_head + head) * r->t_cap;
        int n = len < r->t_cap ? len : r->t_cap;
        memcpy(dst, p, (size_t)n * sizeof *dst);
    }
}

/* The CUDA engine's rows: pooled on the device already. */
static void obs_views(void *user, int layer, int head, int pos, const float *bmax,
                      const float *bsum, int nb) {
    seq_rec *r = user;
    int s = pos - r->first_pos;
    if (s < 0 || s >= r->s_cap) return;
    float *mx = r->block_max + idx_view(r, layer, s, head);
    float *sm = r->block_sum + idx_view(r, layer, s, head);
    int n = nb < r->nb_cap ? nb : r->nb_cap;
    memcpy(mx, bmax, (size_t)n * sizeof *mx);
    memcpy(sm, bsum, (size_t)n * sizeof *sm);
    memset(mx + n, 0, (size_t)(r->nb_cap - n) * sizeof *mx);
    memset(sm + n, 0, (size_t)(r->nb_cap - n) * sizeof *sm);
}

/* Whole rows on the CUDA engine: only where the raw view is recorded. */
static int obs_want_rows(void *user, int layer) {
    const seq_rec *r = user;
    return layer >= 0 && layer < 512 && r->raw_slot[layer] >= 0;
}

/* The rows of a raw layer on the CUDA engine: views come separately. */
static void obs_raw_row(void *user, int layer, int head, int pos, const float *p, int len) {
    seq_rec *r = user;
    int s = pos - r->first_pos;
    int ri = (layer >= 0 && layer < 512) ? r->raw_slot[layer] : -1;
    if (s < 0 || s >= r->s_cap || ri < 0) return;
    float *dst = r->raw + (((size_t)ri * r->s_cap + s) * r->n_head + head) * r->t_cap;
    int n = len < r->t_cap ? len : r->t_cap;
    memcpy(dst, p, (size_t)n * sizeof *dst);
}

static void obs_query(void *user, int layer, int head, int pos, const float *q, int hd) {
    seq_rec *r = user;
    int s = pos - r->first_pos;
    if (s < 0 || s >= r->s_cap || !r->query) return;
    memcpy(r->query + (((size_t)layer * r->s_cap + s) * r->n_head + head) * r->head_dim, q,
           (size_t)hd * sizeof *q);
}

static void obs_key(void *user, int layer, int kvh, int pos, const float *k, int hd) {
    seq_rec *r = user;
    if (!r->key_min) return;
    int j = pos / r->block;
    if (j >= r->nb_cap) return;
    size_t o = (((size_t)layer * r->n_head_kv + kvh) * r->nb_cap + j) * r->head_dim;
    float *mn = r->key_min + o, *mx = r->key_max + o;
    for (int d = 0; d < hd; d++) {
        if (k[d] < mn[d]) mn[d] = k[d];
        if (k[d] > mx[d]) mx[d] = k[d];
    }
}

static void obs_colsum(void *user, int layer, int head, const float *cs, int len) {
    seq_rec *r = user;
    if (!r->in_prefill || !r->colsum) return;
    int n = len < r->n_prompt ? len : r->n_prompt;
    memcpy(r->colsum + ((size_t)layer * r->n_head + head) * r->n_prompt, cs,
           (size_t)n * sizeof *cs);
}

static void seq_rec_free(seq_rec *r) {
    if (!r) return;
    free(r->block_max);
    free(r->block_sum);
    free(r->query);
    free(r->key_min);
    free(r->key_max);
    free(r->colsum);
    free(r->raw);
    memset(r, 0, sizeof *r);
}

static ap_status seq_rec_init(seq_rec *r, const ap_hparams *hp, const ap_capture_opts *o,
                              int n_prompt, const int *raw_layers, int n_raw, ap_err *err) {
    memset(r, 0, sizeof *r);
    r->n_layer = hp->n_layer;
    r->n_head = hp->n_head;
    r->n_head_kv = hp->n_head_kv;
    r->head_dim = hp->head_dim;
    r->block = o->block_size;
    r->n_prompt = n_prompt;
    int hist = o->history < n_prompt ? o->history : n_prompt;
    r->first_pos = n_prompt - hist;
    r->s_cap = hist + o->n_gen;
    r->t_cap = n_prompt + o->n_gen;
    r->nb_cap = (r->t_cap + r->block - 1) / r->block;
    size_t nview = (size_t)r->n_layer * r->s_cap * r->n_head * r->nb_cap;
    r->block_max = calloc(nview, sizeof(float));
    r->block_sum = calloc(nview, sizeof(float));
    int ok = r->block_max && r->block_sum;
    if (o->with_quest) {
        r->query = calloc((size_t)r->n_layer * r->s_cap * r->n_head * r->head_dim, sizeof(float));
        size_t nk = (size_t)r->n_layer * r->n_head_kv * r->nb_cap * r->head_dim;
        r->key_min = malloc(nk * sizeof(float));
        r->key_max = malloc(nk * sizeof(float));
        ok = ok && r->query && r->key_min && r->key_max;
        if (ok)
            for (size_t i = 0; i < nk; i++) {
                r->key_min[i] = FLT_MAX;
                r->key_max[i] = -FLT_MAX;
            }
    }
    if (o->with_colsum) {
        r->colsum = calloc((size_t)r->n_layer * r->n_head * n_prompt, sizeof(float));
        ok = ok && r->colsum;
    }
    for (int l = 0; l < 512; l++) r->raw_slot[l] = -1;
    r->n_raw = n_raw;
    for (int i = 0; i < n_raw; i++) r->raw_slot[raw_layers[i]] = i;
    if (n_raw > 0) {
        r->raw = calloc((size_t)n_raw * r->s_cap * r->n_head * r->t_cap, sizeof(float));
        ok = ok && r->raw;
    }
    if (!ok) {
        seq_rec_free(r);
        return ap_errf(err, AP_ERR_NOMEM, "out of memory for a %d-token sequence's trace buffers",
                       r->t_cap);
    }
    return AP_OK;
}

/* Squeeze [outer][s_cap][H][w_cap] into [outer][S][H][w] in place. */
static void compact4(float *a, int outer, int s_cap, int S, int H, int w_cap, int w) {
    size_t dst = 0;
    for (int o = 0; o < outer; o++)
        for (int s = 0; s < S; s++)
            for (int h = 0; h < H; h++) {
                size_t src = (((size_t)o * s_cap + s) * H + h) * w_cap;
                memmove(a + dst, a + src, (size_t)w * sizeof *a);
                dst += (size_t)w;
            }
}

typedef struct {
    int32_t *ids;
    size_t n;
} tok_seq;

static ap_status parse_shard_prompts(const ap_capture_opts *o, const ap_prompt_set *ps,
                                     int **sel, int *n_sel, ap_err *err) {
    int *v = malloc(sizeof(int) * (size_t)(ps->n > 0 ? ps->n : 1));
    if (!v) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    int k = 0;
    for (int i = 0; i < ps->n; i++)
        if (i % o->shard_count == o->shard_index) v[k++] = i;
    *sel = v;
    *n_sel = k;
    return AP_OK;
}

/* One of the two engines. */
typedef struct {
    ap_ctx *ctx;
    ap_cuda_model *cm;
} engine;

static ap_status engine_eval(const engine *e, const int32_t *tok, int n, float *logits,
                             const ap_attn_observer *obs, ap_err *err) {
    if (e->cm) return ap_cuda_model_eval_obs(e->cm, tok, n, logits, obs, err);
    return ap_ctx_eval(e->ctx, tok, n, logits, 0, obs, err);
}

static ap_status capture_seq(const engine *e, const ap_hparams *hp, const ap_capture_opts *o,
                             const int *raw_layers, int n_raw, const char *id, const char *task,
                             const char *source, int chat, const int32_t *prompt, int n_prompt,
                             int32_t eos_id, ap_trace_writer *w, ap_capture_seq_stats *stats,
                             ap_err *err) {
    ap_status st = AP_OK;
    seq_rec rec;
    int32_t *all = NULL;
    int32_t *step_pos = NULL;
    float *logits = NULL;
    memset(stats, 0, sizeof *stats);
    stats->n_prompt = n_prompt;
    st = seq_rec_init(&rec, hp, o, n_prompt, raw_layers, n_raw, err);
    if (st) return st;
    all = malloc(sizeof(int32_t) * (size_t)(n_prompt + o->n_gen));
    logits = malloc(sizeof(float) * (size_t)hp->n_vocab);
    if (!all || !logits) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    memcpy(all, prompt, sizeof(int32_t) * (size_t)n_prompt);
    ap_attn_observer obs = {
        .user = &rec,
        .rows_from = rec.first_pos,
        .on_row = obs_row,
        .on_query = o->with_quest ? obs_query : NULL,
        .on_key = o->with_quest ? obs_key : NULL,
        .on_colsum = o->with_colsum ? obs_colsum : NULL,
    };
    if (e->cm) {
        obs.on_row = n_raw > 0 ? obs_raw_row : NULL;
        obs.want_rows = obs_want_rows;
        obs.view_block = rec.block;
        obs.on_views = obs_views;
        ap_cuda_model_reset(e->cm);
    } else {
        ap_ctx_reset(e->ctx);
    }
    double t0 = ap_now_seconds();
    rec.in_prefill = 1;
    st = engine_eval(e, all, n_prompt, logits, &obs, err);
    rec.in_prefill = 0;
    if (st) goto cleanup;
    double t1 = ap_now_seconds();
    /* Decode column sums are not recorded (H2O's score is the prefill's). */
    ap_attn_observer obs_dec = obs;
    obs_dec.on_colsum = NULL;
    int n_gen = 0;
    while (n_gen < o->n_gen) {
        int32_t next = ap_sample(logits, hp->n_vocab, 0.0f, 0, NULL);
        all[n_prompt + n_gen] = next;
        st = engine_eval(e, &all[n_prompt + n_gen], 1, logits, &obs_dec, err);
        if (st) goto cleanup;
        n_gen++;
        if (o->stop_at_eos && eos_id >= 0 && next == eos_id) break;
    }
    double t2 = ap_now_seconds();

    int T = n_prompt + n_gen;
    int S = (n_prompt - rec.first_pos) + n_gen;
    int NB = (T + rec.block - 1) / rec.block;
    compact4(rec.block_max, rec.n_layer, rec.s_cap, S, rec.n_head, rec.nb_cap, NB);
    compact4(rec.block_sum, rec.n_layer, rec.s_cap, S, rec.n_head, rec.nb_cap, NB);
    if (rec.query)
        compact4(rec.query, rec.n_layer, rec.s_cap, S, rec.n_head, rec.head_dim, rec.head_dim);
    if (rec.key_min) {
        int wk = rec.nb_cap * rec.head_dim;
        compact4(rec.key_min, rec.n_layer, rec.n_head_kv, rec.n_head_kv, 1, wk, NB * rec.head_dim);
        compact4(rec.key_max, rec.n_layer, rec.n_head_kv, rec.n_head_kv, 1, wk, NB * rec.head_dim);
    }
    if (rec.raw) compact4(rec.raw, rec.n_raw, rec.s_cap, S, rec.n_head, rec.t_cap, T);
    step_pos = malloc(sizeof(int32_t) * (size_t)S);
    if (!step_pos) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    for (int s = 0; s < S; s++) step_pos[s] = rec.first_pos + s;
    ap_trace_seq seq = {
        .id = id,
        .task = task,
        .source = source,
        .chat = chat,
        .n_prompt = n_prompt,
        .n_gen = n_gen,
        .tokens = all,
        .n_steps = S,
        .step_pos = step_pos,
        .n_blocks = NB,
        .block_max = rec.block_max,
        .block_sum = rec.block_sum,
        .query = rec.query,
        .key_min = rec.key_min,
        .key_max = rec.key_max,
        .prefill_colsum = rec.colsum,
        .n_raw_layers = n_raw,
        .raw_layers = raw_layers,
        .raw = rec.raw,
    };
    st = ap_trace_writer_add(w, &seq, err);
    if (st) goto cleanup;
    stats->n_gen = n_gen;
    stats->prefill_seconds = t1 - t0;
    stats->decode_seconds = t2 - t1;
    stats->write_seconds = ap_now_seconds() - t2;

cleanup:
    if (st) ap_err_prefix(err, id);
    free(step_pos);
    free(logits);
    free(all);
    seq_rec_free(&rec);
    return st;
}

ap_status ap_capture_sequence(ap_ctx *ctx, const ap_hparams *hp, const ap_capture_opts *o,
                              const int *raw_layers, int n_raw, const char *id, const char *task,
                              const char *source, int chat, const int32_t *prompt, int n_prompt,
                              int32_t eos_id, ap_trace_writer *w, ap_capture_seq_stats *stats,
                              ap_err *err) {
    const engine e = {.ctx = ctx};
    return capture_seq(&e, hp, o, raw_layers, n_raw, id, task, source, chat, prompt, n_prompt,
                       eos_id, w, stats, err);
}

ap_status ap_capture_sequence_cuda(ap_cuda_model *cm, const ap_hparams *hp,
                                   const ap_capture_opts *o, const int *raw_layers, int n_raw,
                                   const char *id, const char *task, const char *source, int chat,
                                   const int32_t *prompt, int n_prompt, int32_t eos_id,
                                   ap_trace_writer *w, ap_capture_seq_stats *stats, ap_err *err) {
    const engine e = {.cm = cm};
    return capture_seq(&e, hp, o, raw_layers, n_raw, id, task, source, chat, prompt, n_prompt,
                       eos_id, w, stats, err);
}

ap_status ap_capture_run(const ap_capture_opts *o, ap_capture_stats *stats, ap_err *err) {
    ap_status st = AP_OK;
    ap_gguf *g = NULL;
    ap_model *model = NULL;
    ap_tokenizer *tok = NULL;
    ap_ctx *ctx = NULL;
    ap_cuda_model *cm = NULL;
    ap_prompt_set *ps = NULL;
    ap_trace_writer *w = NULL;
    tok_seq *toks = NULL;
    int *sel = NULL;
    int n_sel = 0;
    ap_capture_stats local;
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    double t_start = ap_now_seconds();

    if (o->n_gen < 1) return ap_errf(err, AP_ERR_ARG, "--gen must be >= 1 (got %d)", o->n_gen);
    if (o->history < 1) return ap_errf(err, AP_ERR_ARG, "--history must be >= 1 (got %d)", o->history);
    if (o->block_size < 1) return ap_errf(err, AP_ERR_ARG, "--block must be >= 1 (got %d)", o->block_size);
    if (o->shard_count < 1 || o->shard_index < 0 || o->shard_index >= o->shard_count)
        return ap_errf(err, AP_ERR_ARG, "--shard %d/%d: need 0 <= i < n", o->shard_index,
                       o->shard_count);
    if (o->threads < 1) return ap_errf(err, AP_ERR_ARG, "--threads must be >= 1");
    if (o->device == AP_CAPTURE_CUDA && o->block_size % 16 != 0)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "--device cuda pools blocks of a multiple of 16 keys (--block %d)",
                       o->block_size);
    if (!o->force && !o->resume && ap_file_exists(o->out_path))
        return ap_errf(err, AP_ERR_EXISTS, "%s: output exists (use --force to overwrite)",
                       o->out_path);
    st = ap_check_writable_dir(o->out_path, err);
    if (st) return st;

    st = ap_prompts_load(o->prompts_path, &ps, err);
    if (st) goto cleanup;
    st = ap_gguf_open(o->model_path, &g, err);
    if (st) goto cleanup;
    st = ap_tokenizer_from_gguf(g, &tok, err);
    if (st) {
        ap_err_prefix(err, o->model_path);
        goto cleanup;
    }
    st = ap_model_load(g, &model, err);
    if (st) goto cleanup;
    const ap_hparams *hp = ap_model_hparams(model);

    int raw_layers[AP_CAPTURE_MAX_RAW];
    int n_raw = 0;
    if (o->n_raw_layers < 0) {
        if (hp->n_layer > AP_CAPTURE_MAX_RAW) {
            st = ap_errf(err, AP_ERR_ARG, "--raw-layers all: model has %d layers, at most %d",
                         hp->n_layer, AP_CAPTURE_MAX_RAW);
            goto cleanup;
        }
        for (int l = 0; l < hp->n_layer; l++) raw_layers[n_raw++] = l;
    } else {
        for (int i = 0; i < o->n_raw_layers; i++) {
            int l = o->raw_layers[i];
            if (l < 0 || l >= hp->n_layer) {
                st = ap_errf(err, AP_ERR_ARG, "--raw-layers: layer %d out of range (model has %d)",
                             l, hp->n_layer);
                goto cleanup;
            }
            raw_layers[n_raw++] = l;
        }
    }

    /* Tokenize and validate every prompt of the shard before any output. */
    st = parse_shard_prompts(o, ps, &sel, &n_sel, err);
    if (st) goto cleanup;
    if (n_sel == 0) {
        st = ap_errf(err, AP_ERR_ARG, "%s: shard %d/%d selects no prompt (%d prompts)",
                     o->prompts_path, o->shard_index, o->shard_count, ps->n);
        goto cleanup;
    }
    toks = calloc((size_t)n_sel, sizeof *toks);
    if (!toks) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    int max_len = 0;
    long total_work = 0;
    for (int k = 0; k < n_sel; k++) {
        const ap_prompt *p = &ps->items[sel[k]];
        char *wrapped = NULL;
        const char *text = p->text;
        if (p->chat) {
            st = ap_tokenizer_chat(tok, p->text, &wrapped, err);
            if (st) goto cleanup;
            text = wrapped;
        }
        /* Chat wrappers carry their control tokens literally; plain prompts
         * are data, so a literal "<|im_end|>" inside them stays text. */
        st = ap_tokenizer_encode(tok, text, strlen(text), p->chat, &toks[k].ids, &toks[k].n, err);
        free(wrapped);
        if (st) {
            ap_err_prefix(err, p->id);
            ap_err_prefix(err, o->prompts_path);
            goto cleanup;
        }
        if (toks[k].n < 1) {
            st = ap_errf(err, AP_ERR_ARG, "%s: prompt '%s' is empty after tokenization",
                         o->prompts_path, p->id);
            goto cleanup;
        }
        long need = (long)toks[k].n + o->n_gen;
        if (need > hp->n_ctx_train) {
            st = ap_errf(err, AP_ERR_RANGE,
                         "%s: prompt '%s' has %zu tokens + %d to generate = %ld > the model's "
                         "context of %d tokens",
                         o->prompts_path, p->id, toks[k].n, o->n_gen, need, hp->n_ctx_train);
            goto cleanup;
        }
        if ((int)need > max_len) max_len = (int)need;
        total_work += need;
    }

    ap_trace_meta meta;
    st = ap_capture_trace_meta(hp, o->block_size, o->history, &meta, err);
    if (st) goto cleanup;
    snprintf(meta.model_name, sizeof meta.model_name, "%s", hp->name[0] ? hp->name : "unnamed");
    snprintf(meta.attnpred_version, sizeof meta.attnpred_version, "%s", AP_VERSION_STRING);
    st = ap_sha256_file(o->model_path, meta.model_sha256, err);
    if (st) goto cleanup;

    /* The engine first: a missing GPU fails the job before any output. */
    if (o->device == AP_CAPTURE_CUDA)
        st = ap_cuda_model_create(g, model, max_len, &cm, err);
    else
        st = ap_ctx_create(model, max_len, o->threads, &ctx, err);
    if (st) goto cleanup;
    st = ap_trace_writer_open(o->out_path, &meta, (o->force ? AP_TRACE_FORCE : 0) |
                                                       (o->resume ? AP_TRACE_RESUME : 0),
                              &w, err);
    if (st) goto cleanup;
    const engine eng = {.ctx = ctx, .cm = cm};

    ap_progress prog;
    ap_progress_init(&prog, o->log, "capture", "tok", (double)total_work, o->progress);
    /* A token costs more the further it sits into its sequence, so the ETA
     * weighs each sequence by ap_work_run rather than by its tokens; a
     * sequence already complete costs nothing this time and leaves the
     * estimate. */
    const double fixed = ap_work_fixed(hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv,
                                       hp->head_dim, hp->n_ff, hp->n_vocab);
    double cost_total = 0.0, cost_done = 0.0;
    for (int k = 0; k < n_sel; k++)
        cost_total += ap_work_run((double)toks[k].n, o->n_gen, 1, fixed);
    long work_done = 0;
    for (int k = 0; k < n_sel; k++) {
        const ap_prompt *p = &ps->items[sel[k]];
        int n_prompt = (int)toks[k].n;
        const double cost = ap_work_run(n_prompt, o->n_gen, 1, fixed);
        if (ap_trace_writer_has(w, p->id)) {
            stats->n_skipped++;
            work_done += n_prompt + o->n_gen;
            cost_total -= cost;
            if (o->log && !o->progress)
                fprintf(o->log, "capture: %s already complete, skipped\n", p->id);
            continue;
        }
        ap_capture_seq_stats ss;
        st = capture_seq(&eng, hp, o, raw_layers, n_raw, p->id, p->task, p->source, p->chat,
                         toks[k].ids, n_prompt, ap_tokenizer_eos(tok), w, &ss, err);
        if (st) goto cleanup;
        stats->prefill_seconds += ss.prefill_seconds;
        stats->decode_seconds += ss.decode_seconds;
        stats->write_seconds += ss.write_seconds;
        stats->n_sequences++;
        stats->prompt_tokens += n_prompt;
        stats->gen_tokens += ss.n_gen;
        work_done += n_prompt + o->n_gen;
        cost_done += cost;
        ap_progress_update_work(&prog, (double)work_done, 0.0, cost_done, cost_total);
        if (o->log && !o->progress)
            fprintf(o->log, "capture: %s: %d prompt + %d generated tokens, prefill %.1f tok/s, "
                            "decode %.1f tok/s\n",
                    p->id, n_prompt, ss.n_gen, n_prompt / (ss.prefill_seconds + 1e-12),
                    ss.n_gen / (ss.decode_seconds + 1e-12));
    }
    ap_progress_finish(&prog);
    st = ap_trace_writer_close(w, 1, err);
    if (st) goto cleanup;
    struct stat sb;
    if (stat(o->out_path, &sb) == 0) stats->out_bytes = (long long)sb.st_size;
    stats->total_seconds = ap_now_seconds() - t_start;

cleanup:
    ap_trace_writer_free(w); /* without a commit, keeps .partial for --resume */
    ap_ctx_free(ctx);
    ap_cuda_model_free(cm);
    if (toks)
        for (int k = 0; k < n_sel; k++) free(toks[k].ids);
    free(toks);
    free(sel);
    ap_model_free(model);
    ap_tokenizer_free(tok);
    ap_gguf_free(g);
    ap_prompts_free(ps);
    return st;
}

ap_status ap_capture_trace_meta(const ap_hparams *hp, int block_size, int history,
                                ap_trace_meta *meta, ap_err *err) {
    memset(meta, 0, sizeof *meta);
    if (hp->n_layer < 1 || hp->n_layer > AP_TRACE_MAX_LAYERS)
        return ap_errf(err, AP_ERR_UNSUPPORTED, "capture: %d layers (a trace holds 1..%d)",
                       hp->n_layer, AP_TRACE_MAX_LAYERS);
    meta->n_layer = hp->n_layer;
    meta->n_head = hp->n_head;
    meta->n_head_kv = hp->n_head_kv;
    meta->head_dim = hp->head_dim;
    meta->block_size = block_size;
    meta->history = history;
    snprintf(meta->arch, sizeof meta->arch, "%s", hp->arch);
    for (int l = 0; l < hp->n_layer; l++)
        meta->layer_window[l] = ap_hparams_layer_swa(hp, l) ? hp->swa_window : 0;
    return AP_OK;
}
