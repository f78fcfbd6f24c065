/* GPU capture and GPU compressed decoding against the CPU engine (issue 6):
 *   - observer: the CUDA engine's block views, whole rows (raw layers),
 *     queries, keys and prefill column sums equal the CPU engine's (views
 *     pooled from its rows by ap_block_pool) within the CPU/GPU tolerance,
 *     over a multi-micro-batch prefill and decode steps;
 *   - capture: ap_capture_sequence_cuda writes the trace ap_capture_sequence
 *     writes (same tokens, views/queries/keys/colsums/raw rows within the
 *     tolerance), on a synthetic model and on the default model when present
 *     (the CPU's quantized kernels against the GPU's float32 products);
 *   - KV policy: a fixed-list policy gives the same kept counts, logits
 *     within tolerance and matching sparse views on the CPU, on the GPU with
 *     the cache in device memory, and on the GPU with the cache offloaded
 *     behind the device pool, with the cross-token prefetch right, wrong
 *     (peek names other blocks: fetched on demand) or off; the pool's
 *     counters add up (every page fetched once, prefetch hits counted);
 *   - live selection (eval/live.h, last-step history) drives both engines
 *     to the same greedy tokens;
 *   - the task runner on the GPU (device KV, offloaded KV) gives the CPU's
 *     outputs, and the device pool measures what the CPU hot pool does.
 * Synthetic models; every test skips visibly without a GPU. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capture/capture.h"
#include "capture/gguf.h"
#include "capture/model.h"
#include "capture/model_cuda.h"
#include "capture/tokenizer.h"
#include "capture/trace.h"
#include "common/tolerance.h"
#include "common/util.h"
#include "eval/live.h"
#include "eval/selectors.h"
#include "eval/tasks.h"
#include "helpers/synth_ctx.h"
#include "helpers/synth_model.h"
#include "kernels/block_pool.h"

#define MODEL_PATH AP_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"

#define SKIP_WITHOUT_GPU()                                                                         \
    do {                                                                                           \
        if (ap_cuda_device_count() == 0)                                                           \
            cr_skip_test("GPU test skipped: no CUDA device (or no CUDA build)");                   \
    } while (0)

typedef struct {
    char path[512];
    ap_gguf *g;
    ap_model *m;
    const ap_hparams *hp;
} synth;

static void synth_open(synth *s, int n_ctx) {
    ap_err err = {0};
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    /* SmolLM2's GQA shape: 3 query heads per KV head, head_dim 64. */
    o.n_head = 6;
    o.n_head_kv = 2;
    o.head_dim = 64;
    o.n_embd = 96;
    o.n_ctx = n_ctx;
    memset(s, 0, sizeof *s);
    ap_synth_tmp_path(s->path, sizeof s->path, "capcuda", ".gguf");
    cr_assert_eq(ap_synth_model_write(s->path, &o, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_gguf_open(s->path, &s->g, &err), AP_OK, "%s", err.msg);
    ap_model_opts mo;
    ap_model_opts_default(&mo);
    mo.f32_weights = 1;
    cr_assert_eq(ap_model_load_opts(s->g, &mo, &s->m, &err), AP_OK, "%s", err.msg);
    s->hp = ap_model_hparams(s->m);
}

static void synth_close(synth *s) {
    ap_model_free(s->m);
    ap_gguf_free(s->g);
    unlink(s->path);
}

static void check_rel(const float *gpu, const float *cpu, size_t n, const char *what) {
    double e = ap_rel_l2_f32(gpu, cpu, n);
    cr_assert(isfinite(e) && e <= AP_TOL_CPU_GPU_REL, "%s: GPU vs CPU rel L2 %.3g (tolerance %.0e)",
              what, e, AP_TOL_CPU_GPU_REL);
}

/* ------------------------------------------------------------ observer */

#define VB 16

/* Everything an observer reports, for one engine. */
typedef struct {
    int L, H, KV, hd, n_keys, rows_from, raw_layer;
    float *vmax, *vsum; /* [L][H][n_keys][nvb] by position */
    float *raw;         /* [H][n_keys][n_keys] rows of raw_layer */
    float *q;           /* [L][H][n_keys][hd] */
    float *k;           /* [L][KV][n_keys][hd] */
    float *cs;          /* [L][H][n_keys] last column sums */
    int *seen;          /* [L][H][n_keys] views reported */
    int nvb;
} rec;

static void rec_init(rec *r, const ap_hparams *hp, int n_keys, int rows_from, int raw_layer) {
    memset(r, 0, sizeof *r);
    r->L = hp->n_layer;
    r->H = hp->n_head;
    r->KV = hp->n_head_kv;
    r->hd = hp->head_dim;
    r->n_keys = n_keys;
    r->rows_from = rows_from;
    r->raw_layer = raw_layer;
    r->nvb = (n_keys + VB - 1) / VB;
    const size_t LH = (size_t)r->L * r->H, N = (size_t)n_keys;
    r->vmax = calloc(LH * N * r->nvb, sizeof(float));
    r->vsum = calloc(LH * N * r->nvb, sizeof(float));
    r->raw = calloc((size_t)r->H * N * N, sizeof(float));
    r->q = calloc(LH * N * r->hd, sizeof(float));
    r->k = calloc((size_t)r->L * r->KV * N * r->hd, sizeof(float));
    r->cs = calloc(LH * N, sizeof(float));
    r->seen = calloc(LH * N, sizeof(int));
    cr_assert(r->vmax && r->vsum && r->raw && r->q && r->k && r->cs && r->seen);
}

static void rec_free(rec *r) {
    free(r->vmax);
    free(r->vsum);
    free(r->raw);
    free(r->q);
    free(r->k);
    free(r->cs);
    free(r->seen);
}

static size_t at_lhp(const rec *r, int l, int h, int pos) {
    return ((size_t)l * r->H + h) * r->n_keys + pos;
}

static void put_views(rec *r, int l, int h, int pos, const float *mx, const float *sm, int nb) {
    const size_t o = at_lhp(r, l, h, pos) * r->nvb;
    int n = nb < r->nvb ? nb : r->nvb;
    memcpy(r->vmax + o, mx, (size_t)n * sizeof(float));
    memcpy(r->vsum + o, sm, (size_t)n * sizeof(float));
    r->seen[at_lhp(r, l, h, pos)]++;
}

static void on_row_cpu(void *u, int l, int h, int pos, const float *p, int len) {
    rec *r = u;
    float mx[1024], sm[1024];
    cr_assert(r->nvb <= 1024);
    ap_block_pool(p, len, VB, r->nvb, mx, sm);
    put_views(r, l, h, pos, mx, sm, r->nvb);
    if (l == r->raw_layer)
        memcpy(r->raw + ((size_t)h * r->n_keys + pos) * r->n_keys, p, (size_t)len * sizeof(float));
}

static void on_row_gpu(void *u, int l, int h, int pos, const float *p, int len) {
    rec *r = u;
    cr_assert_eq(l, r->raw_layer, "rows of layer %d, not asked for", l);
    memcpy(r->raw + ((size_t)h * r->n_keys + pos) * r->n_keys, p, (size_t)len * sizeof(float));
}

static void on_views(void *u, int l, int h, int pos, const float *mx, const float *sm, int nb) {
    rec *r = u;
    cr_assert_eq(nb, (pos + VB) / VB, "views of a row at %d: %d blocks", pos, nb);
    put_views(r, l, h, pos, mx, sm, nb);
}

static int want_rows(void *u, int l) { return l == ((rec *)u)->raw_layer; }

static void on_query(void *u, int l, int h, int pos, const float *q, int hd) {
    rec *r = u;
    memcpy(r->q + at_lhp(r, l, h, pos) * hd, q, (size_t)hd * sizeof(float));
}

static void on_key(void *u, int l, int g, int pos, const float *k, int hd) {
    rec *r = u;
    memcpy(r->k + (((size_t)l * r->KV + g) * r->n_keys + pos) * hd, k, (size_t)hd * sizeof(float));
}

static void on_colsum(void *u, int l, int h, const float *cs, int len) {
    rec *r = u;
    memcpy(r->cs + ((size_t)l * r->H + h) * r->n_keys, cs, (size_t)len * sizeof(float));
}

Test(capture_cuda, observer_matches_cpu) {
    SKIP_WITHOUT_GPU();
    synth s;
    synth_open(&s, 1024);
    ap_err err = {0};
    const int n_prompt = 700, n_dec = 6, N = n_prompt + n_dec, rows_from = 640;
    int32_t tok[706];
    ap_synth_tokens(tok, N, s.hp->n_vocab, 5);
    rec rc, rg;
    rec_init(&rc, s.hp, N, rows_from, 1);
    rec_init(&rg, s.hp, N, rows_from, 1);
    ap_attn_observer oc = {.user = &rc, .rows_from = rows_from, .on_row = on_row_cpu,
                           .on_query = on_query, .on_key = on_key, .on_colsum = on_colsum};
    ap_attn_observer og = {.user = &rg, .rows_from = rows_from, .on_row = on_row_gpu,
                           .on_query = on_query, .on_key = on_key, .on_colsum = on_colsum,
                           .view_block = VB, .on_views = on_views, .want_rows = want_rows};
    ap_ctx *c = NULL;
    ap_cuda_model *cm = NULL;
    cr_assert_eq(ap_ctx_create(s.m, 1024, 1, &c, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_create(s.g, s.m, 1024, &cm, &err), AP_OK, "%s", err.msg);
    const int V = s.hp->n_vocab;
    float *lc = calloc((size_t)V, sizeof(float)), *lg = calloc((size_t)V, sizeof(float));
    cr_assert(lc && lg);
    /* Prefill in two micro-batches (the GPU's are 512 tokens), colsums of
     * the prefill compared, then decode rows one by one. */
    cr_assert_eq(ap_ctx_eval(c, tok, n_prompt, lc, 0, &oc, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_eval_obs(cm, tok, n_prompt, lg, &og, &err), AP_OK, "%s", err.msg);
    check_rel(lg, lc, (size_t)V, "prefill logits");
    for (int l = 0; l < rc.L; l++)
        for (int h = 0; h < rc.H; h++) {
            char what[64];
            snprintf(what, sizeof what, "prefill colsum l%d h%d", l, h);
            check_rel(rg.cs + ((size_t)l * rc.H + h) * N, rc.cs + ((size_t)l * rc.H + h) * N,
                      (size_t)n_prompt, what);
        }
    ap_attn_observer oc_dec = oc, og_dec = og;
    oc_dec.on_colsum = og_dec.on_colsum = NULL;
    for (int t = 0; t < n_dec; t++) {
        cr_assert_eq(ap_ctx_eval(c, tok + n_prompt + t, 1, lc, 0, &oc_dec, &err), AP_OK, "%s",
                     err.msg);
        cr_assert_eq(ap_cuda_model_eval_obs(cm, tok + n_prompt + t, 1, lg, &og_dec, &err), AP_OK,
                     "%s", err.msg);
        check_rel(lg, lc, (size_t)V, "decode logits");
    }
    for (int l = 0; l < rc.L; l++)
        for (int h = 0; h < rc.H; h++)
            for (int pos = 0; pos < N; pos++) {
                const size_t i = at_lhp(&rc, l, h, pos);
                const int want = pos >= rows_from;
                cr_assert_eq(rc.seen[i], want, "CPU row l%d h%d at %d reported %d times", l, h,
                             pos, rc.seen[i]);
                cr_assert_eq(rg.seen[i], want, "GPU row l%d h%d at %d reported %d times", l, h,
                             pos, rg.seen[i]);
                if (!want) continue;
                char what[80];
                snprintf(what, sizeof what, "views l%d h%d at %d", l, h, pos);
                check_rel(rg.vmax + i * rc.nvb, rc.vmax + i * rc.nvb, (size_t)rc.nvb, what);
                check_rel(rg.vsum + i * rc.nvb, rc.vsum + i * rc.nvb, (size_t)rc.nvb, what);
                snprintf(what, sizeof what, "query l%d h%d at %d", l, h, pos);
                check_rel(rg.q + i * rc.hd, rc.q + i * rc.hd, (size_t)rc.hd, what);
                if (l == 1) {
                    snprintf(what, sizeof what, "raw row h%d at %d", h, pos);
                    const size_t o = ((size_t)h * N + pos) * N;
                    check_rel(rg.raw + o, rc.raw + o, (size_t)pos + 1, what);
                }
            }
    check_rel(rg.k, rc.k, (size_t)rc.L * rc.KV * N * rc.hd, "keys");
    /* An observer that wants rows but cannot take views is refused. */
    ap_attn_observer bad = {.user = &rg, .rows_from = 0, .on_row = on_row_gpu};
    cr_assert_eq(ap_cuda_model_eval_obs(cm, tok, 1, lg, &bad, &err), AP_ERR_ARG);
    cr_assert_eq(ap_cuda_model_n_past(cm), N, "a refused eval changed the cache");
    free(lc);
    free(lg);
    rec_free(&rc);
    rec_free(&rg);
    ap_cuda_model_free(cm);
    ap_ctx_free(c);
    synth_close(&s);
}

/* ------------------------------------------------------------- capture */

/* One dataset of one layer from both traces (n floats), compared on its
 * first n_cmp. */
static void cmp_layer(const ap_trace *tc, const ap_trace *tg, int layer, const char *name,
                      size_t n, size_t n_cmp) {
    ap_err err = {0};
    float *a = calloc(n, sizeof(float)), *b = calloc(n, sizeof(float));
    cr_assert(a && b);
    cr_assert_eq(ap_trace_read_layer(tc, 0, layer, name, a, n, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_trace_read_layer(tg, 0, layer, name, b, n, &err), AP_OK, "%s", err.msg);
    char what[96];
    snprintf(what, sizeof what, "trace %s of layer %d", name, layer);
    check_rel(b, a, n_cmp, what);
    free(a);
    free(b);
}

/* Capture one prompt with both engines (c: the CPU engine capture uses,
 * cm: the GPU) into two traces and compare them. strict: the greedy tokens
 * must be the same; otherwise (a real model, where the CPU's quantized
 * kernels and the GPU's float32 products may break a near-tie differently)
 * the rows are compared up to the first differing token, which must not
 * come before min_same generated tokens. */
static void capture_both(ap_ctx *c, ap_cuda_model *cm, const ap_hparams *hp, const int32_t *tok,
                         int n_prompt, int n_gen, int history, int raw_layer, int strict,
                         int min_same) {
    ap_err err = {0};
    ap_capture_opts o;
    ap_capture_opts_default(&o);
    o.n_gen = n_gen;
    o.history = history;
    o.stop_at_eos = 0;
    const int raw[1] = {raw_layer};
    char pc[512], pg[512];
    ap_synth_tmp_path(pc, sizeof pc, "capcpu", ".h5");
    ap_synth_tmp_path(pg, sizeof pg, "capgpu", ".h5");
    ap_trace_meta meta;
    cr_assert_eq(ap_capture_trace_meta(hp, o.block_size, o.history, &meta, &err), AP_OK, "%s",
                 err.msg);
    snprintf(meta.model_name, sizeof meta.model_name, "test");
    snprintf(meta.attnpred_version, sizeof meta.attnpred_version, "test");
    for (int e = 0; e < 2; e++) {
        ap_trace_writer *w = NULL;
        cr_assert_eq(ap_trace_writer_open(e ? pg : pc, &meta, AP_TRACE_FORCE, &w, &err), AP_OK,
                     "%s", err.msg);
        ap_capture_seq_stats ss;
        ap_status st = e ? ap_capture_sequence_cuda(cm, hp, &o, raw, 1, "p0", "t", "s", 0, tok,
                                                    n_prompt, -1, w, &ss, &err)
                         : ap_capture_sequence(c, hp, &o, raw, 1, "p0", "t", "s", 0, tok, n_prompt,
                                               -1, w, &ss, &err);
        cr_assert_eq(st, AP_OK, "%s", err.msg);
        cr_assert_eq(ss.n_gen, n_gen);
        cr_assert_eq(ap_trace_writer_close(w, 1, &err), AP_OK, "%s", err.msg);
        ap_trace_writer_free(w);
    }
    ap_trace *tc = NULL, *tg = NULL;
    cr_assert_eq(ap_trace_open(pc, &tc, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_trace_open(pg, &tg, &err), AP_OK, "%s", err.msg);
    ap_trace_seq_info a, b;
    cr_assert_eq(ap_trace_seq_get_info(tc, 0, &a, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_trace_seq_get_info(tg, 0, &b, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(a.n_gen, b.n_gen);
    cr_assert_eq(a.n_steps, b.n_steps);
    cr_assert_eq(a.n_blocks, b.n_blocks);
    cr_assert_eq(b.n_raw_layers, 1);
    const int T = a.n_prompt + a.n_gen;
    int32_t *ta = malloc(sizeof(int32_t) * (size_t)T), *tb = malloc(sizeof(int32_t) * (size_t)T);
    cr_assert(ta && tb);
    cr_assert_eq(ap_trace_read_i32(tc, 0, "tokens", ta, (size_t)T, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_trace_read_i32(tg, 0, "tokens", tb, (size_t)T, &err), AP_OK, "%s", err.msg);
    int same = 0;
    while (same < a.n_gen && ta[a.n_prompt + same] == tb[a.n_prompt + same]) same++;
    if (strict)
        cr_assert_eq(same, a.n_gen, "GPU capture decoded other tokens than the CPU's from %d",
                     same);
    else
        cr_assert_geq(same, min_same, "GPU capture's greedy tokens differ from the CPU's at %d",
                      same);
    /* A step's row depends on the tokens up to its own position: the rows
     * before the first differing token (and that token's own row, whose
     * input is the token before it) match. */
    const size_t S = (size_t)a.n_steps, H = (size_t)hp->n_head, NB = (size_t)a.n_blocks;
    const size_t hd = (size_t)hp->head_dim, KV = (size_t)hp->n_head_kv;
    const size_t S_cmp = S - (size_t)(a.n_gen - same);
    for (int l = 0; l < hp->n_layer; l++) {
        cmp_layer(tc, tg, l, "block_max", S * H * NB, S_cmp * H * NB);
        cmp_layer(tc, tg, l, "block_sum", S * H * NB, S_cmp * H * NB);
        cmp_layer(tc, tg, l, "query", S * H * hd, S_cmp * H * hd);
        if (same == a.n_gen) {
            cmp_layer(tc, tg, l, "key_min", KV * NB * hd, KV * NB * hd);
            cmp_layer(tc, tg, l, "key_max", KV * NB * hd, KV * NB * hd);
        }
        cmp_layer(tc, tg, l, "prefill_colsum", H * (size_t)a.n_prompt, H * (size_t)a.n_prompt);
    }
    cmp_layer(tc, tg, raw_layer, "raw", S * H * (size_t)T, S_cmp * H * (size_t)T);
    cr_log_info("capture CPU vs GPU: %d prompt tokens, %d of %d generated tokens the same", n_prompt,
                same, a.n_gen);
    free(ta);
    free(tb);
    ap_trace_close(tc);
    ap_trace_close(tg);
    unlink(pc);
    unlink(pg);
}

Test(capture_cuda, trace_matches_cpu) {
    SKIP_WITHOUT_GPU();
    synth s;
    synth_open(&s, 1024);
    ap_err err = {0};
    const int n_prompt = 530; /* two of the GPU's micro-batches */
    int32_t tok[530];
    ap_synth_tokens(tok, n_prompt, s.hp->n_vocab, 9);
    ap_ctx *c = NULL;
    ap_cuda_model *cm = NULL;
    cr_assert_eq(ap_ctx_create(s.m, 1024, 1, &c, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_create(s.g, s.m, 1024, &cm, &err), AP_OK, "%s", err.msg);
    capture_both(c, cm, s.hp, tok, n_prompt, 8, 24, 0, 1, 8);
    ap_cuda_model_free(cm);
    ap_ctx_free(c);
    synth_close(&s);
}

/* The default model as `attnpred capture` runs it: the CPU engine with its
 * quantized kernels against the GPU's float32 products. */
Test(capture_cuda, real_model_trace_matches_cpu) {
    SKIP_WITHOUT_GPU();
    if (getenv("AP_SKIP_REAL_MODEL")) cr_skip_test("AP_SKIP_REAL_MODEL is set");
    if (!ap_file_exists(MODEL_PATH)) cr_skip_test("%s not found", MODEL_PATH);
    ap_err err = {0};
    ap_gguf *g = NULL;
    ap_model *m = NULL;
    ap_tokenizer *tk = NULL;
    cr_assert_eq(ap_gguf_open(MODEL_PATH, &g, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_model_load(g, &m, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_from_gguf(g, &tk, &err), AP_OK, "%s", err.msg);
    /* Over one GPU micro-batch (512 tokens) of ordinary text. */
    char text[8192] = "";
    for (int i = 0; i < 22; i++)
        strcat(text, "The committee met on Tuesday to review the budget, the schedule and the "
                     "safety report; each member read a short statement before the vote. ");
    strcat(text, "Question: what did the committee review? Answer:");
    int32_t *ids = NULL;
    size_t n_ids = 0;
    cr_assert_eq(ap_tokenizer_encode(tk, text, strlen(text), 0, &ids, &n_ids, &err), AP_OK, "%s",
                 err.msg);
    cr_assert(n_ids > 512 && n_ids < 900, "%zu prompt tokens", n_ids);
    const ap_hparams *hp = ap_model_hparams(m);
    ap_ctx *c = NULL;
    ap_cuda_model *cm = NULL;
    cr_assert_eq(ap_ctx_create(m, 1024, 2, &c, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_create(g, m, 1024, &cm, &err), AP_OK, "%s", err.msg);
    capture_both(c, cm, hp, ids, (int)n_ids, 16, 64, 15, 0, 4);
    free(ids);
    ap_cuda_model_free(cm);
    ap_ctx_free(c);
    ap_tokenizer_free(tk);
    ap_model_free(m);
    ap_gguf_free(g);
}

/* ----------------------------------------------------------- KV policy */

/* A fixed pseudo-random choice per (layer, step, set): every 3rd block on
 * a shifting phase, so sets differ by layer, head and step and blocks come
 * and go. peek_mode: 0 none, 1 the lists select will give, 2 other lists. */
typedef struct {
    ap_kv_policy pol;
    int L, H, G, sets, max_nb, per_q;
    int *blocks, *off;     /* select's */
    int *pblocks, *poff;   /* peek's */
    int peek_mode;
    int *n_kept;           /* [steps][L][H] */
    float *bsum;           /* [steps][L][H][max_nb] sparse views */
    float *mass;           /* [steps][L][H] with measure */
    int pos0, steps, measure_every;
} fixed_pol;

static int fill_lists(const fixed_pol *f, int layer, int pos, int shift, int *blocks, int *off) {
    const int nb = (pos + 16) / 16;
    int n = 0;
    for (int u = 0; u < f->sets; u++) {
        off[u] = n;
        /* Past the sink (4 blocks): a third of the blocks, the same third
         * for a KV head's query heads, moving every 5 steps (so pages come
         * and go), plus one block of the head's own. */
        const int g = f->per_q ? u / f->G : u;
        for (int b = 4; b < nb; b++)
            if ((b + layer + g + pos / 5 + shift) % 3 == 0 || b == 4 + u % 3) blocks[n++] = b;
    }
    off[f->sets] = n;
    return n;
}

static unsigned fp_want(void *user, int layer, int pos) {
    fixed_pol *f = user;
    (void)layer;
    return f->measure_every && (pos - f->pos0) % f->measure_every == 0 ? AP_KV_MEASURE : 0;
}

static ap_status fp_select(void *user, const ap_kv_step *s, const int **blocks, const int **off,
                           ap_err *err) {
    fixed_pol *f = user;
    (void)err;
    fill_lists(f, s->layer, s->pos, 0, f->blocks, f->off);
    *blocks = f->blocks;
    *off = f->off;
    return AP_OK;
}

static ap_status fp_attended(void *user, const ap_kv_step *s, const ap_kv_attended *r,
                             ap_err *err) {
    fixed_pol *f = user;
    (void)err;
    const int t = s->pos - f->pos0;
    cr_assert(t >= 0 && t < f->steps);
    for (int h = 0; h < f->H; h++) {
        const size_t i = ((size_t)t * f->L + s->layer) * f->H + h;
        f->n_kept[i] = r->n_kept[h];
        memcpy(f->bsum + i * f->max_nb, r->bsum + (size_t)h * s->ldb,
               (size_t)s->n_blocks * sizeof(float));
        if (r->kept_mass) f->mass[i] = r->kept_mass[h];
    }
    return AP_OK;
}

static ap_status fp_peek(void *user, int layer, int pos, int wait, const int **blocks,
                         const int **off, ap_err *err) {
    fixed_pol *f = user;
    (void)wait;
    (void)err;
    *blocks = NULL;
    *off = NULL;
    if (f->peek_mode == 0) return AP_OK;
    fill_lists(f, layer, pos, f->peek_mode == 2 ? 1 : 0, f->pblocks, f->poff);
    *blocks = f->pblocks;
    *off = f->poff;
    return AP_OK;
}

static void fp_init(fixed_pol *f, const ap_hparams *hp, int per_q, int pos0, int steps,
                    int max_nb, int peek_mode) {
    memset(f, 0, sizeof *f);
    f->L = hp->n_layer;
    f->H = hp->n_head;
    f->sets = per_q ? hp->n_head : hp->n_head_kv;
    f->G = hp->n_head / hp->n_head_kv;
    f->per_q = per_q;
    f->max_nb = max_nb;
    f->pos0 = pos0;
    f->steps = steps;
    f->peek_mode = peek_mode;
    f->measure_every = 4;
    f->blocks = calloc((size_t)f->sets * max_nb, sizeof(int));
    f->pblocks = calloc((size_t)f->sets * max_nb, sizeof(int));
    f->off = calloc((size_t)f->sets + 1, sizeof(int));
    f->poff = calloc((size_t)f->sets + 1, sizeof(int));
    const size_t n = (size_t)steps * f->L * f->H;
    f->n_kept = calloc(n, sizeof(int));
    f->bsum = calloc(n * max_nb, sizeof(float));
    f->mass = calloc(n, sizeof(float));
    cr_assert(f->blocks && f->pblocks && f->off && f->poff && f->n_kept && f->bsum && f->mass);
    /* Sink 64 tokens, local 32; at most every block. */
    f->pol = (ap_kv_policy){.user = f, .block = 16, .sink = 64, .local = 32,
                            .per_q_head = per_q, .want = fp_want, .select = fp_select,
                            .attended = fp_attended, .peek = peek_mode ? fp_peek : NULL};
    /* Sink 4 + local at most 3 + a third of the rest + 3 own blocks: the
     * pool is smaller than the sequence, so pages must be recycled. */
    f->pol.max_blocks = 4 + 3 + (max_nb + 2) / 3 + 1 + 3;
}

static void fp_free(fixed_pol *f) {
    free(f->blocks);
    free(f->pblocks);
    free(f->off);
    free(f->poff);
    free(f->n_kept);
    free(f->bsum);
    free(f->mass);
}

/* The same policy on the CPU and on the GPU (device KV, or offloaded with
 * the given prefetch behaviour): same kept counts, logits and sparse views
 * within the tolerance. */
static void run_policy(int per_q, int offload, int prefetch, int peek_mode) {
    synth s;
    synth_open(&s, 1024);
    ap_err err = {0};
    const int n_prompt = 600, steps = 24, N = n_prompt + steps, max_nb = (N + 15) / 16;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)N);
    cr_assert(tok);
    ap_synth_tokens(tok, N, s.hp->n_vocab, 21);
    fixed_pol fc, fg;
    fp_init(&fc, s.hp, per_q, n_prompt, steps, max_nb, 0);
    fp_init(&fg, s.hp, per_q, n_prompt, steps, max_nb, peek_mode);
    ap_ctx *c = NULL;
    ap_cuda_model *cm = NULL;
    ap_cuda_model_opts co;
    ap_cuda_model_opts_default(&co);
    co.kv_offload = offload;
    co.prefetch = prefetch;
    cr_assert_eq(ap_ctx_create(s.m, 1024, 1, &c, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_create_opts(s.g, s.m, 1024, &co, &cm, &err), AP_OK, "%s", err.msg);
    const int V = s.hp->n_vocab;
    float *lc = calloc((size_t)V, sizeof(float)), *lg = calloc((size_t)V, sizeof(float));
    cr_assert(lc && lg);
    cr_assert_eq(ap_ctx_eval(c, tok, n_prompt, lc, 0, NULL, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_eval(cm, tok, n_prompt, lg, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_ctx_set_kv_policy(c, &fc.pol, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_set_kv_policy(cm, &fg.pol, &err), AP_OK, "%s", err.msg);
    for (int t = 0; t < steps; t++) {
        cr_assert_eq(ap_ctx_eval(c, tok + n_prompt + t, 1, lc, 0, NULL, &err), AP_OK, "%s",
                     err.msg);
        cr_assert_eq(ap_cuda_model_eval(cm, tok + n_prompt + t, 1, lg, &err), AP_OK, "%s",
                     err.msg);
        check_rel(lg, lc, (size_t)V, "compressed decode logits");
    }
    const size_t n = (size_t)steps * fc.L * fc.H;
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(fg.n_kept[i], fc.n_kept[i], "kept keys %zu: GPU %d, CPU %d", i, fg.n_kept[i],
                     fc.n_kept[i]);
        cr_assert(fc.n_kept[i] < n_prompt, "the policy kept everything: the test tests nothing");
        if (((i / ((size_t)fc.L * fc.H)) % 4) == 0)
            cr_assert(fabsf(fg.mass[i] - fc.mass[i]) <= 1e-4f, "kept mass %zu: %g vs %g", i,
                      fg.mass[i], fc.mass[i]);
    }
    check_rel(fg.bsum, fc.bsum, n * max_nb, "sparse block sums");
    ap_cuda_kv_stats ks;
    ap_cuda_model_kv_stats(cm, &ks);
    cr_assert_eq(ks.steps, steps);
    if (offload) {
        cr_assert(ks.pool_capacity_bytes > 0);
        cr_assert(ks.h2d_bytes > 0 && ks.kept_tokens > 0);
        const long long fetched = ks.demand_blocks + ks.prefetched_blocks;
        cr_assert(fetched > 0);
        if (prefetch && peek_mode == 1) {
            /* After the first step (which fills the pool), the right peek
             * leaves nothing to fetch on demand. */
            cr_assert(ks.prefetched_blocks > 0 && ks.prefetch_hits > 0);
            /* Every page copied ahead was kept: the peek was right. */
            cr_assert_eq(ks.prefetch_hits, ks.prefetched_blocks);
            cr_assert(ks.prefetch_layers >= (long long)(steps - 1) * fc.L);
        }
        if (!prefetch || peek_mode == 0) cr_assert_eq(ks.prefetched_blocks, 0);
        if (peek_mode == 2 && prefetch) cr_assert(ks.demand_blocks > 0);
        cr_assert_leq(ks.prefetch_hits, ks.prefetched_blocks);
    } else {
        cr_assert_eq(ks.h2d_bytes, 0.0);
    }
    /* Truncate forgets the pool; dense decode comes back without a policy. */
    cr_assert_eq(ap_cuda_model_truncate(cm, n_prompt, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_ctx_truncate(c, n_prompt, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_set_kv_policy(cm, NULL, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_ctx_set_kv_policy(c, NULL, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_ctx_eval(c, tok + n_prompt, 1, lc, 0, NULL, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_eval(cm, tok + n_prompt, 1, lg, &err), AP_OK, "%s", err.msg);
    check_rel(lg, lc, (size_t)V, "dense decode after the policy");
    free(lc);
    free(lg);
    free(tok);
    fp_free(&fc);
    fp_free(&fg);
    ap_cuda_model_free(cm);
    ap_ctx_free(c);
    synth_close(&s);
}

Test(capture_cuda, policy_device_kv_matches_cpu) {
    SKIP_WITHOUT_GPU();
    run_policy(1, 0, 0, 0);
}

Test(capture_cuda, policy_per_kv_head_device_kv_matches_cpu) {
    SKIP_WITHOUT_GPU();
    run_policy(0, 0, 0, 0);
}

Test(capture_cuda, policy_offload_prefetch_matches_cpu) {
    SKIP_WITHOUT_GPU();
    run_policy(1, 1, 1, 1);
}

Test(capture_cuda, policy_offload_wrong_peek_matches_cpu) {
    SKIP_WITHOUT_GPU();
    run_policy(1, 1, 1, 2);
}

Test(capture_cuda, policy_offload_on_demand_matches_cpu) {
    SKIP_WITHOUT_GPU();
    run_policy(0, 1, 0, 1);
}

Test(capture_cuda, bad_policy_is_refused) {
    SKIP_WITHOUT_GPU();
    synth s;
    synth_open(&s, 256);
    ap_err err = {0};
    ap_cuda_model *cm = NULL;
    cr_assert_eq(ap_cuda_model_create(s.g, s.m, 256, &cm, &err), AP_OK, "%s", err.msg);
    fixed_pol f;
    fp_init(&f, s.hp, 1, 0, 1, 16, 0);
    f.pol.block = 32;
    cr_assert_eq(ap_cuda_model_set_kv_policy(cm, &f.pol, &err), AP_ERR_ARG);
    f.pol.block = 16;
    f.pol.sink = 8;
    cr_assert_eq(ap_cuda_model_set_kv_policy(cm, &f.pol, &err), AP_ERR_ARG);
    fp_free(&f);
    ap_cuda_model_free(cm);
    synth_close(&s);
}

/* ------------------------------------------------------- live selection */

/* Last-step selection (eval/live.h) drives both engines: same greedy
 * tokens, from the same prefill views (the GPU's on_views, the CPU's rows). */
static void run_live(int offload) {
    synth s;
    synth_open(&s, 1024);
    ap_err err = {0};
    const int n_prompt = 640, steps = 16;
    int32_t tok[640 + 16];
    ap_synth_tokens(tok, n_prompt, s.hp->n_vocab, 33);
    const ap_selector *sel = ap_selector_find("last_step");
    cr_assert(sel);
    ap_live_prefill *pc = NULL, *pg = NULL;
    cr_assert_eq(ap_live_prefill_create(s.hp, 16, 64, n_prompt, steps, &pc, &err), AP_OK, "%s",
                 err.msg);
    cr_assert_eq(ap_live_prefill_create(s.hp, 16, 64, n_prompt, steps, &pg, &err), AP_OK, "%s",
                 err.msg);
    ap_ctx *c = NULL;
    ap_cuda_model *cm = NULL;
    ap_cuda_model_opts co;
    ap_cuda_model_opts_default(&co);
    co.kv_offload = offload;
    cr_assert_eq(ap_ctx_create(s.m, 1024, 1, &c, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_create_opts(s.g, s.m, 1024, &co, &cm, &err), AP_OK, "%s", err.msg);
    const int V = s.hp->n_vocab;
    float *lc = calloc((size_t)V, sizeof(float)), *lg = calloc((size_t)V, sizeof(float));
    cr_assert(lc && lg);
    cr_assert_eq(ap_ctx_eval(c, tok, n_prompt, lc, 0, ap_live_prefill_observer(pc), &err), AP_OK,
                 "%s", err.msg);
    cr_assert_eq(ap_cuda_model_eval_obs(cm, tok, n_prompt, lg, ap_live_prefill_observer(pg), &err),
                 AP_OK, "%s", err.msg);
    ap_sel_params prm;
    memset(&prm, 0, sizeof prm);
    prm.calib = 0;
    prm.kv_mode = AP_KV_PER_QHEAD;
    ap_live_opts lo = {.budget = 192, .sink = 64, .local = 32, .min_candidates = 3};
    ap_live *vc = NULL, *vg = NULL;
    cr_assert_eq(ap_live_create(pc, sel, &prm, &lo, &vc, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_live_create(pg, sel, &prm, &lo, &vg, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_ctx_set_kv_policy(c, ap_live_policy(vc), &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_set_kv_policy(cm, ap_live_policy(vg), &err), AP_OK, "%s", err.msg);
    int agree = 0;
    for (int t = 0; t < steps; t++) {
        /* Teacher-forced on the CPU's tokens, so one early flip does not
         * make every later step differ. */
        const int32_t next = ap_sample(lc, V, 0.0f, 0, NULL);
        agree += next == ap_sample(lg, V, 0.0f, 0, NULL);
        tok[n_prompt + t] = next;
        cr_assert_eq(ap_ctx_eval(c, &tok[n_prompt + t], 1, lc, 0, ap_live_observer(vc), &err),
                     AP_OK, "%s", err.msg);
        cr_assert_eq(ap_cuda_model_eval_obs(cm, &tok[n_prompt + t], 1, lg, ap_live_observer(vg),
                                            &err),
                     AP_OK, "%s", err.msg);
    }
    cr_assert(agree >= steps - 1, "greedy tokens agree on %d of %d steps", agree, steps);
    ap_live_stats a, b;
    ap_live_get_stats(vc, &a);
    ap_live_get_stats(vg, &b);
    cr_assert_eq(a.steps, steps);
    cr_assert_eq(b.steps, steps);
    cr_assert(fabs(a.resident_tokens - b.resident_tokens) <= 0.02 * a.resident_tokens,
              "resident tokens CPU %.0f, GPU %.0f", a.resident_tokens, b.resident_tokens);
    cr_assert_eq(ap_cuda_model_set_kv_policy(cm, NULL, &err), AP_OK, "%s", err.msg);
    ap_live_free(vc);
    ap_live_free(vg);
    ap_live_prefill_free(pc);
    ap_live_prefill_free(pg);
    free(lc);
    free(lg);
    ap_cuda_model_free(cm);
    ap_ctx_free(c);
    synth_close(&s);
}

Test(capture_cuda, live_last_step_device_kv_matches_cpu) {
    SKIP_WITHOUT_GPU();
    run_live(0);
}

Test(capture_cuda, live_last_step_offload_matches_cpu) {
    SKIP_WITHOUT_GPU();
    run_live(1);
}

/* ------------------------------------------------------------ tasks */

/* The task runner on the GPU: the same outputs as on the CPU, and with the
 * cache offloaded, resident and fetched KV measured on the device pool
 * equal to what the CPU's hot pool measures (same kept sets, same pages). */
Test(capture_cuda, tasks_on_the_gpu_match_the_cpu) {
    SKIP_WITHOUT_GPU();
    char model[256], tasks[256];
    ap_err err = {0};
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    ap_synth_tmp_path(model, sizeof model, "gputasks", ".gguf");
    ap_synth_tmp_path(tasks, sizeof tasks, "gputasks", ".jsonl");
    cr_assert_eq(ap_synth_model_write(model, &o, &err), AP_OK, "%s", err.msg);
    ap_synth_task_file(tasks, 1, 8, 0);
    ap_tasks_config c;
    ap_tasks_config_default(&c);
    c.model = model;
    c.tasks_file = tasks;
    c.methods[0] = "streaming";
    c.methods[1] = "quest";
    c.methods[2] = "last_step";
    c.n_methods = 3;
    c.budgets[0] = 160;
    c.n_budgets = 1;
    ap_tasks_result *r[3] = {NULL, NULL, NULL};
    for (int e = 0; e < 3; e++) {
        c.device = e > 0;
        c.kv_offload = e == 2;
        cr_assert_eq(ap_tasks_run(&c, &r[e], &err), AP_OK, "engine %d: %s", e, err.msg);
    }
    for (int m = 0; m < 4; m++) {
        const ap_task_run *cpu = ap_tasks_run_at(r[0], 0, m, 0);
        for (int e = 1; e < 3; e++) {
            const ap_task_run *gpu = ap_tasks_run_at(r[e], 0, m, 0);
            cr_expect_str_eq(gpu->output, cpu->output, "%s on engine %d", r[0]->methods[m].name, e);
            cr_expect_eq(gpu->full_kv_bytes, cpu->full_kv_bytes);
        }
        const ap_task_run *off = ap_tasks_run_at(r[2], 0, m, 0);
        if (m == 0) {
            cr_expect_eq(off->kv_measured, 0, "full KV is accounted");
            continue;
        }
        cr_expect_eq(cpu->kv_measured, 1);
        cr_expect_eq(off->kv_measured, 1);
        cr_expect_eq(ap_tasks_run_at(r[1], 0, m, 0)->kv_measured, 0, "device KV: accounted");
        /* Whole pages of the same kept blocks, the same keys copied. */
        cr_expect(fabs(off->resident_kv_bytes - cpu->resident_kv_bytes) <=
                      1e-9 * cpu->resident_kv_bytes,
                  "%s: resident GPU %.0f vs CPU pool %.0f", r[0]->methods[m].name,
                  off->resident_kv_bytes, cpu->resident_kv_bytes);
        cr_expect(fabs(off->fetch_kv_bytes - cpu->fetch_kv_bytes) <= 1e-9 * cpu->full_kv_bytes,
                  "%s: fetched GPU %.0f vs CPU pool %.0f", r[0]->methods[m].name,
                  off->fetch_kv_bytes, cpu->fetch_kv_bytes);
        cr_expect_leq(off->resident_kv_bytes, off->hot_capacity_bytes);
    }
    for (int e = 0; e < 3; e++) ap_tasks_result_free(r[e]);
    unlink(model);
    unlink(tasks);
}
