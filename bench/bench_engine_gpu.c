/* bench-engine-gpu: decode speed of the CUDA engine (capture/model_cuda.h)
 * against the CPU engine, in the same process, as ratios; the CUDA engine
 * with its KV cache offloaded to pinned host memory against the one keeping
 * it in device memory; and the offload experiment of issue 6: compressed
 * decoding from a device pool of kept blocks with and without the
 * cross-token prefetch.
 *
 *   bench-engine-gpu [--model M.gguf | --synthetic] [--contexts 8192,max] [--gen 32]
 *                    [--reps 2] [--threads N] [--modes LIST] [--no-cpu] [--no-offload]
 *                    [--no-policy] [--predictor P.safetensors] [--budget 512]
 *                    [--sink 64] [--local 64] [--calib 5] [--text FILE | --random-tokens]
 *                    [--json OUT]
 *
 * Modes (each at every context N; docs/gpu.md "The offload experiment"):
 *   gpu              CUDA engine, float32 weights, KV cache in device memory,
 *                    dense decode (the reference every other mode is checked
 *                    against, always run);
 *   cpu              the default CPU engine (quantized weights, exact kernels,
 *                    --threads threads, default all cores up to 16);
 *   gpu_offload      KV cache in pinned host memory, dense decode attention
 *                    reading every key over the bus, no prediction;
 *   offload_prefetch KV cache in pinned host memory, KV policy from ap_live
 *                    (eval/live.h) with the attnpred predictor (--predictor;
 *                    without it the last_step selector, rows labelled
 *                    "(last_step selection)") at --budget tokens: the engine
 *                    keeps a device pool of the kept blocks (the only device
 *                    copy of them) and copies the blocks the policy's peek
 *                    names for the next step on a second stream;
 *   offload_demand   the same with the engine's prefetch off: blocks are
 *                    copied when select names them (what the prefetch buys);
 *   gpu_sparse       KV cache in device memory under the same policy
 *                    (selection cost without any transfer).
 *
 * At each context N every engine is prefilled to N - gen (the CPU in
 * 512-token calls, the GPU in one call: its own micro-batches), then decodes
 * gen tokens, --reps times from that one prefill (truncate), best kept.
 * The policy modes share one ap_live_prefill captured by an extra, untimed
 * prefill of the device engine with the prefill observer; an ap_live is
 * stateful, so each rep creates a fresh one (and installs it, which gives
 * the engine a fresh pool and fresh counters). Teacher forcing: every mode
 * feeds the same tokens, the gpu mode's greedy choices of its first rep, so
 * timings compare like for like; the top-1 agreement of each mode with the
 * gpu mode's greedy choice is the sanity line of the policy modes. The
 * logits of the last step are compared too (relative L2 vs gpu).
 *
 * Times are wall clock per eval call (argmax and bookkeeping excluded),
 * which for the GPU engines includes the copy of the logits to the host,
 * the synchronisation and, under a policy, the policy's host callbacks.
 *
 * Without --model the default SmolLM2 file is used when present (prefilled
 * with real text: data/prompts/default.jsonl tokenized, or --text);
 * otherwise (GPU nodes may get no model file), or with --synthetic, a
 * synthetic model with SmolLM2-135M's shapes (Q4_1 matrices, Q8_0
 * embeddings, random weights, context length 8192) is built in memory and
 * fed a fixed pseudo-random token stream: speed does not depend on the
 * weights' values, but random weights attend meaninglessly, so the policy
 * modes' transfer volume on them is not representative (said in the rows).
 * Without a CUDA device (or a CUDA build) it prints one skip line and exits
 * 0. */
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "capture/gguf.h"
#include "capture/gguf_write.h"
#include "capture/model.h"
#include "capture/model_cuda.h"
#include "capture/tokenizer.h"
#include "common/tolerance.h"
#include "common/util.h"
#include "eval/live.h"
#include "eval/selectors.h"
#include "kernels/block_pool.h"
#include "kernels/cuda_util.h"
#include "train/predictor.h"
#include "train/runtime.h"

#ifndef AP_SOURCE_DIR
#define AP_SOURCE_DIR "."
#endif

#define MAX_CTX 16
#define CPU_CHUNK 512
#define KV_BLOCK 16
#define N_PRE 64 /* prefill rows kept for the selectors (eval/tasks.c) */
#define SYNTH_CTX 8192 /* SmolLM2-135M's llama.context_length */

/* Modes in run order: gpu first, it makes the reference tokens. */
enum { M_GPU, M_CPU, M_OFF, M_PREF, M_DEM, M_SPARSE, N_MODE };
static const char *const MNAME[N_MODE] = {"gpu",           "cpu",           "gpu_offload",
                                          "offload_prefetch", "offload_demand", "gpu_sparse"};
/* Engines (one model instance each); a mode runs on one of them. */
enum { E_DEV, E_CPU, E_OFF, E_DEM, N_ENG };
static const char *const ENAME[N_ENG] = {"gpu", "cpu", "gpu_offload", "offload_demand"};
static const int MODE_ENG[N_MODE] = {E_DEV, E_CPU, E_OFF, E_OFF, E_DEM, E_DEV};
static const int MODE_POLICY[N_MODE] = {0, 0, 0, 1, 1, 1};

typedef struct {
    int on;
    ap_ctx *c;         /* E_CPU */
    ap_cuda_model *cm; /* the others */
    float *logits;     /* [n_vocab] of the last call */
    double pre_time;   /* CPU: cumulative prefill seconds and tokens */
    int pre_tokens;
    size_t dev_bytes, pinned_bytes;
} engine;

typedef struct {
    int ran;
    double best_s;   /* decode seconds of the best rep */
    double agree;    /* top-1 agreement with the gpu mode's greedy choices, best rep */
    double rel_l2;   /* last step's logits vs gpu; -1: not measured */
    int has_kv;      /* policy modes: the engine's counters of the best rep */
    ap_cuda_kv_stats kv;
    ap_live_stats ls;
    int max_blocks, has_peek;
    float *last;     /* [n_vocab] logits of the last step, last rep */
} mode_res;

typedef struct {
    int ctx;
    double prefill_tps[N_ENG];
    double capture_s; /* the policy modes' prefill with the observer (untimed) */
    mode_res m[N_MODE];
} row_t;

/* ------------------------------------------------------ synthetic model */

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform values of standard deviation sd, or all ones (norm weights). */
static ap_status add_random(ap_gguf_builder *b, const char *name, ap_ggml_type type, int64_t ne0,
                            int64_t ne1, double sd, float *buf, uint64_t *rng, ap_err *err) {
    const size_t n = (size_t)ne0 * (size_t)ne1;
    const double half = sd * sqrt(3.0);
    for (size_t i = 0; i < n; i++) {
        double u = (double)(rng_next(rng) >> 11) * 0x1.0p-53;
        buf[i] = sd > 0.0 ? (float)((2.0 * u - 1.0) * half) : 1.0f;
    }
    int64_t ne[2] = {ne0, ne1};
    return ap_gguf_builder_add_tensor_f32(b, name, type, ne1 > 1 ? 2 : 1, ne, buf, err);
}

/* SmolLM2-135M's shapes and file types, random weights; *data malloc'd. */
static ap_status build_synthetic(int n_ctx, uint8_t **data, size_t *size, ap_err *err) {
    enum { L = 30, E = 576, H = 9, HKV = 3, HD = 64, F = 1536, V = 49152 };
    ap_status st = AP_OK;
    ap_gguf_builder *b = NULL;
    float *buf = NULL;
    uint64_t rng = 2024;
    char name[96];
    *data = NULL;
    if (!(buf = malloc(sizeof(float) * (size_t)V * E))) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the synthetic model");
        goto cleanup;
    }
#define CK(call)                                                                               \
    do {                                                                                       \
        if ((st = (call))) goto cleanup;                                                       \
    } while (0)
    CK(ap_gguf_builder_create(&b, err));
    CK(ap_gguf_builder_set_str(b, "general.architecture", "llama", err));
    CK(ap_gguf_builder_set_str(b, "general.name", "synthetic (SmolLM2-135M shapes)", err));
    CK(ap_gguf_builder_set_u32(b, "llama.context_length", (uint32_t)n_ctx, err));
    CK(ap_gguf_builder_set_u32(b, "llama.embedding_length", E, err));
    CK(ap_gguf_builder_set_u32(b, "llama.block_count", L, err));
    CK(ap_gguf_builder_set_u32(b, "llama.feed_forward_length", F, err));
    CK(ap_gguf_builder_set_u32(b, "llama.attention.head_count", H, err));
    CK(ap_gguf_builder_set_u32(b, "llama.attention.head_count_kv", HKV, err));
    CK(ap_gguf_builder_set_u32(b, "llama.rope.dimension_count", HD, err));
    CK(ap_gguf_builder_set_f32(b, "llama.rope.freq_base", 100000.0f, err));
    CK(ap_gguf_builder_set_f32(b, "llama.attention.layer_norm_rms_epsilon", 1e-5f, err));
    CK(ap_gguf_builder_set_u32(b, "llama.vocab_size", V, err));
    CK(add_random(b, "token_embd.weight", AP_GGML_Q8_0, E, V, 1.0, buf, &rng, err));
    CK(add_random(b, "output_norm.weight", AP_GGML_F32, E, 1, 0.0, buf, &rng, err));
    for (int l = 0; l < L; l++) {
#define W(suffix, type, ne0, ne1, sd)                                                          \
    do {                                                                                       \
        snprintf(name, sizeof name, "blk.%d.%s", l, suffix);                                   \
        CK(add_random(b, name, type, ne0, ne1, sd, buf, &rng, err));                           \
    } while (0)
        W("attn_norm.weight", AP_GGML_F32, E, 1, 0.0);
        W("ffn_norm.weight", AP_GGML_F32, E, 1, 0.0);
        W("attn_q.weight", AP_GGML_Q4_1, E, H * HD, 1.0 / sqrt((double)E));
        W("attn_k.weight", AP_GGML_Q4_1, E, HKV * HD, 1.0 / sqrt((double)E));
        W("attn_v.weight", AP_GGML_Q4_1, E, HKV * HD, 1.0 / sqrt((double)E));
        W("attn_output.weight", AP_GGML_Q4_1, H * HD, E, 1.0 / sqrt((double)(H * HD)));
        W("ffn_gate.weight", AP_GGML_Q4_1, E, F, 1.0 / sqrt((double)E));
        W("ffn_up.weight", AP_GGML_Q4_1, E, F, 1.0 / sqrt((double)E));
        W("ffn_down.weight", AP_GGML_Q4_1, F, E, 1.0 / sqrt((double)F));
#undef W
    }
#undef CK
    st = ap_gguf_builder_to_memory(b, data, size, err);
cleanup:
    free(buf);
    ap_gguf_builder_free(b);
    return st;
}

/* ----------------------------------------------------------- token stream */

/* n tokens of real text: the "text" fields of a .jsonl file (the prompt
 * sets' format), or any other file as plain text, tokenized with the
 * model's tokenizer and repeated when short. */
static ap_status text_tokens(const ap_gguf *g, const char *path, int n, int32_t *out, ap_err *err) {
    ap_status st = AP_OK;
    ap_tokenizer *tok = NULL;
    char *data = NULL;
    size_t len = 0;
    int have = 0;
    if ((st = ap_tokenizer_from_gguf(g, &tok, err))) goto cleanup;
    if ((st = ap_read_file(path, &data, &len, err))) goto cleanup;
    const size_t pl = strlen(path);
    const int jsonl = pl > 6 && !strcmp(path + pl - 6, ".jsonl");
    for (char *line = data, *next; line && *line && have < n; line = next) {
        next = strchr(line, '\n');
        if (jsonl && next) *next++ = '\0';
        else if (!jsonl) next = NULL;
        const char *text = line;
        cJSON *j = NULL;
        if (jsonl) {
            j = cJSON_Parse(line);
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
            if (!cJSON_IsString(t)) {
                cJSON_Delete(j);
                continue;
            }
            text = t->valuestring;
        }
        int32_t *ids = NULL;
        size_t n_ids = 0;
        st = ap_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n_ids, err);
        cJSON_Delete(j);
        if (st) goto cleanup;
        for (size_t i = 0; i < n_ids && have < n; i++) out[have++] = ids[i];
        free(ids);
    }
    if (have == 0) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: no text to tokenize", path);
        goto cleanup;
    }
    for (int i = have; i < n; i++) out[i] = out[i - have];
cleanup:
    free(data);
    ap_tokenizer_free(tok);
    return st;
}

/* -------------------------------------------------------------- options */

typedef struct {
    const char *model_path; /* NULL: synthetic */
    const char *json_path;
    const char *predictor;  /* NULL: last_step selection */
    const char *text;       /* NULL: pseudo-random tokens */
    int ctx_spec[MAX_CTX], n_spec; /* -1 = the model's n_ctx_train */
    int default_ctx;        /* ctx_spec is the default list */
    int ctxs[MAX_CTX], n_ctx;
    int gen, reps, threads, predict_threads, want[N_MODE];
    int budget, sink, local, calib;
    int synthetic;
} bench_opts;

/* What the policy modes select with. */
typedef struct {
    const ap_selector *sel;
    ap_sel_params params;
    ap_live_opts lo;
    ap_runtime *rt;
    char what[64];  /* "attnpred" / "last_step" */
    char label[64]; /* "" or " (last_step selection)" */
} policy_setup;

static int any_policy(const bench_opts *o) {
    return o->want[M_PREF] || o->want[M_DEM] || o->want[M_SPARSE];
}

/* ---------------------------------------------------------------- JSON */

static void add_num(cJSON *o, const char *key, double v) {
    if (isfinite(v)) cJSON_AddNumberToObject(o, key, v);
    else cJSON_AddNullToObject(o, key);
}

static double ratio(double a, double b) { return b > 0 ? a / b : NAN; }

static ap_status write_json(const bench_opts *o, const char *device, const char *model,
                            const char *text_src, const ap_hparams *hp, const engine *eng,
                            const policy_setup *ps, const row_t *rows, ap_err *err) {
    ap_status st = AP_OK;
    char tmp[1024];
    char *txt = NULL;
    FILE *f = NULL;
    cJSON *root = cJSON_CreateObject();
    if (!root) return ap_errf(err, AP_ERR_NOMEM, "out of memory for the JSON report");
    cJSON_AddStringToObject(root, "bench", "engine_gpu");
    cJSON_AddStringToObject(root, "device", device);
    cJSON_AddStringToObject(root, "model", model);
    cJSON_AddBoolToObject(root, "synthetic", o->model_path == NULL);
    cJSON_AddNumberToObject(root, "n_ctx_train", hp->n_ctx_train);
    cJSON_AddStringToObject(root, "tokens", text_src);
    cJSON_AddNumberToObject(root, "cpu_threads", o->threads);
    cJSON_AddNumberToObject(root, "gen", o->gen);
    cJSON_AddNumberToObject(root, "reps", o->reps);
    cJSON_AddStringToObject(root, "decode_tokens", "teacher-forced: the gpu mode's greedy tokens");
    cJSON *modes = cJSON_AddArrayToObject(root, "modes");
    for (int m = 0; m < N_MODE; m++)
        if (o->want[m]) cJSON_AddItemToArray(modes, cJSON_CreateString(MNAME[m]));
    for (int e = 0; e < N_ENG; e++) {
        if (!eng[e].on || e == E_CPU) continue;
        char key[64];
        snprintf(key, sizeof key, "device_mb_%s", ENAME[e]);
        cJSON_AddNumberToObject(root, key, (double)eng[e].dev_bytes / 1e6);
        if (e != E_DEV) {
            snprintf(key, sizeof key, "pinned_mb_%s", ENAME[e]);
            cJSON_AddNumberToObject(root, key, (double)eng[e].pinned_bytes / 1e6);
        }
    }
    if (any_policy(o)) {
        cJSON *sel = cJSON_AddObjectToObject(root, "selection");
        cJSON_AddStringToObject(sel, "selector", ps->what);
        if (o->predictor) cJSON_AddStringToObject(sel, "predictor", o->predictor);
        else cJSON_AddNullToObject(sel, "predictor");
        cJSON_AddStringToObject(sel, "label", ps->label[0] ? ps->label + 1 : ps->what);
        cJSON_AddNumberToObject(sel, "budget", o->budget);
        cJSON_AddNumberToObject(sel, "sink", o->sink);
        cJSON_AddNumberToObject(sel, "local", o->local);
        cJSON_AddNumberToObject(sel, "block", KV_BLOCK);
        cJSON_AddNumberToObject(sel, "calib", o->calib);
        cJSON_AddNumberToObject(sel, "min_candidates", ps->lo.min_candidates);
        cJSON_AddStringToObject(sel, "kv_mode", "per_qhead");
        cJSON_AddBoolToObject(sel, "live_prefetch_worker", ps->lo.prefetch);
        cJSON_AddNumberToObject(sel, "prefetch_threads", ps->lo.prefetch_threads);
        if (o->model_path == NULL)
            cJSON_AddStringToObject(sel, "note", "synthetic: transfer volume not representative");
    }
    cJSON *arr = cJSON_AddArrayToObject(root, "contexts");
    const double tok_kv_bytes = 2.0 * hp->n_layer * hp->n_head_kv * hp->head_dim * sizeof(float);
    for (int r = 0; r < o->n_ctx; r++) {
        const row_t *w = &rows[r];
        const mode_res *g = &w->m[M_GPU], *c = &w->m[M_CPU], *of = &w->m[M_OFF];
        const double tps_g = o->gen / g->best_s;
        const double tps_off = of->ran ? o->gen / of->best_s : NAN;
        cJSON *it = cJSON_CreateObject();
        cJSON_AddNumberToObject(it, "ctx", w->ctx);
        cJSON_AddNumberToObject(it, "prefill_tokens", w->ctx - o->gen);
        /* The flat keys of the first version of this report. */
        for (int m = 0; m < N_MODE; m++) {
            if (!w->m[m].ran) continue;
            char key[64];
            snprintf(key, sizeof key, "decode_tps_%s", MNAME[m]);
            add_num(it, key, o->gen / w->m[m].best_s);
        }
        for (int e = 0; e < N_ENG; e++) {
            if (!eng[e].on) continue;
            char key[64];
            snprintf(key, sizeof key, "prefill_tps_%s", ENAME[e]);
            add_num(it, key, w->prefill_tps[e]);
        }
        if (c->ran) add_num(it, "decode_ratio_gpu_cpu", tps_g / (o->gen / c->best_s));
        if (of->ran) add_num(it, "decode_ratio_offload_gpu", tps_off / tps_g);
        if (w->m[M_PREF].ran && of->ran)
            add_num(it, "decode_ratio_prefetch_offload", (o->gen / w->m[M_PREF].best_s) / tps_off);
        if (c->ran && c->rel_l2 >= 0) add_num(it, "logits_rel_l2_gpu_cpu", c->rel_l2);
        if (of->ran && of->rel_l2 >= 0) add_num(it, "logits_rel_l2_offload_gpu", of->rel_l2);
        if (any_policy(o)) add_num(it, "policy_prefill_capture_s", w->capture_s);
        cJSON *ma = cJSON_AddArrayToObject(it, "modes");
        for (int m = 0; m < N_MODE; m++) {
            const mode_res *x = &w->m[m];
            if (!x->ran) continue;
            cJSON *mo = cJSON_CreateObject();
            const double tps = o->gen / x->best_s;
            char label[128];
            snprintf(label, sizeof label, "%s%s", MNAME[m], MODE_POLICY[m] ? ps->label : "");
            cJSON_AddStringToObject(mo, "mode", MNAME[m]);
            cJSON_AddStringToObject(mo, "label", label);
            cJSON_AddBoolToObject(mo, "kv_offloaded", m == M_OFF || m == M_PREF || m == M_DEM);
            cJSON_AddBoolToObject(mo, "policy", MODE_POLICY[m]);
            add_num(mo, "tokens_per_s", tps);
            add_num(mo, "ms_per_token", 1e3 * x->best_s / o->gen);
            add_num(mo, "ratio_vs_gpu_offload", ratio(tps, tps_off));
            add_num(mo, "ratio_vs_gpu", ratio(tps, tps_g));
            add_num(mo, "top1_agreement", x->agree);
            if (x->rel_l2 >= 0) add_num(mo, "logits_rel_l2_vs_gpu", x->rel_l2);
            if (m == M_OFF) {
                /* Dense attention reads every cached key and value over the
                 * bus once per step: the mean over the decode steps. */
                const double keys = (w->ctx - o->gen) + (o->gen + 1) / 2.0;
                add_num(mo, "bus_read_kib_per_token_computed", keys * tok_kv_bytes / 1024.0);
            }
            if (x->has_kv) {
                const ap_cuda_kv_stats *k = &x->kv;
                const double steps = k->steps > 0 ? (double)k->steps : NAN;
                cJSON *kv = cJSON_AddObjectToObject(mo, "kv");
                cJSON_AddNumberToObject(kv, "steps", (double)k->steps);
                cJSON_AddNumberToObject(kv, "max_blocks", x->max_blocks);
                cJSON_AddBoolToObject(kv, "policy_has_peek", x->has_peek);
                add_num(kv, "pool_capacity_mib", k->pool_capacity_bytes / 1048576.0);
                add_num(kv, "pool_used_mib_mean", k->pool_used_bytes / steps / 1048576.0);
                add_num(kv, "kept_tokens_mean", k->kept_tokens / steps / (hp->n_layer * hp->n_head_kv));
                add_num(kv, "h2d_kib_per_token", k->h2d_bytes / steps / 1024.0);
                /* After the first step, which fills the empty pool: what a
                 * long decode moves per token. */
                add_num(kv, "fill_kib", k->fill_bytes / 1024.0);
                add_num(kv, "h2d_kib_per_token_after_fill",
                        k->steps > 1 ? (k->h2d_bytes - k->fill_bytes) / (steps - 1) / 1024.0 : NAN);
                cJSON_AddNumberToObject(kv, "demand_blocks", (double)k->demand_blocks);
                cJSON_AddNumberToObject(kv, "prefetched_blocks", (double)k->prefetched_blocks);
                cJSON_AddNumberToObject(kv, "prefetch_hits", (double)k->prefetch_hits);
                cJSON_AddNumberToObject(kv, "prefetch_layers", (double)k->prefetch_layers);
                add_num(kv, "prefetch_hit_rate",
                        k->prefetched_blocks > 0
                            ? (double)k->prefetch_hits / (double)k->prefetched_blocks
                            : NAN);
                add_num(kv, "policy_ms_per_token", 1e3 * k->policy_seconds / steps);
                const ap_live_stats *l = &x->ls;
                const double ls = l->steps > 0 ? l->steps : NAN;
                cJSON *lv = cJSON_AddObjectToObject(mo, "live");
                cJSON_AddNumberToObject(lv, "steps", l->steps);
                add_num(lv, "select_ms_per_token", 1e3 * l->select_seconds / ls);
                add_num(lv, "score_ms_per_token", 1e3 * l->score_seconds / ls);
                add_num(lv, "prefetch_wait_ms_per_token", 1e3 * l->prefetch_wait_seconds / ls);
                cJSON_AddNumberToObject(lv, "prefetched", (double)l->prefetched);
                add_num(lv, "resident_tokens_mean",
                        l->resident_tokens / ls / (hp->n_layer * hp->n_head_kv));
                add_num(lv, "fetched_tokens_per_step",
                        l->steps > 1 ? l->fetched_tokens / (l->steps - 1) : NAN);
                cJSON_AddNumberToObject(lv, "bypass", (double)l->bypass);
                if (o->model_path == NULL)
                    cJSON_AddStringToObject(mo, "note",
                                            "synthetic: transfer volume not representative");
            }
            cJSON_AddItemToArray(ma, mo);
        }
        cJSON_AddItemToArray(arr, it);
    }
    txt = cJSON_Print(root);
    if (!txt) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the JSON report");
        goto cleanup;
    }
    ap_tmp_name(tmp, sizeof tmp, o->json_path);
    f = fopen(tmp, "w");
    if (!f) {
        st = ap_errf(err, AP_ERR_IO, "%s: cannot create %s", o->json_path, tmp);
        goto cleanup;
    }
    int bad = fputs(txt, f) < 0;
    bad |= fputc('\n', f) == EOF;
    bad |= fclose(f) != 0;
    f = NULL;
    if (bad) {
        st = ap_errf(err, AP_ERR_IO, "%s: write failed", tmp);
        remove(tmp);
        goto cleanup;
    }
    if ((st = ap_commit_file(tmp, o->json_path, err))) remove(tmp);
cleanup:
    free(txt);
    cJSON_Delete(root);
    return st;
}

/* ------------------------------------------------------------------ run */

static ap_status eng_truncate(engine *e, int n, ap_err *err) {
    return e->c ? ap_ctx_truncate(e->c, n, err) : ap_cuda_model_truncate(e->cm, n, err);
}

/* Resolve --contexts against the model: "max" = llama.context_length;
 * ascending, deduplicated; the default list drops what the model cannot
 * hold, an explicit one is an error. */
static ap_status resolve_contexts(bench_opts *o, int n_ctx_train, ap_err *err) {
    o->n_ctx = 0;
    int v[MAX_CTX], n = 0;
    for (int i = 0; i < o->n_spec; i++) {
        int c = o->ctx_spec[i] < 0 ? n_ctx_train : o->ctx_spec[i];
        if (c > n_ctx_train) {
            if (o->default_ctx) continue;
            return ap_errf(err, AP_ERR_RANGE, "context %d exceeds the model's %d", c, n_ctx_train);
        }
        if (c <= o->gen)
            return ap_errf(err, AP_ERR_ARG, "context %d is not above --gen %d", c, o->gen);
        v[n++] = c;
    }
    for (int i = 1; i < n; i++) /* insertion sort */
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            int t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    for (int i = 0; i < n; i++)
        if (o->n_ctx == 0 || o->ctxs[o->n_ctx - 1] != v[i]) o->ctxs[o->n_ctx++] = v[i];
    if (o->n_ctx == 0) return ap_errf(err, AP_ERR_ARG, "no context fits the model's %d", n_ctx_train);
    return AP_OK;
}

typedef struct {
    const bench_opts *o;
    const ap_hparams *hp;
    engine *eng;
    policy_setup *ps;
    const ap_live_prefill *pf;
    const int32_t *feed; /* [gen] tokens fed at target .. target + gen - 1 */
    int32_t *feed_w;     /* the same, writable: the gpu mode's first rep fills it */
    int32_t *ref;        /* [gen] the gpu mode's greedy choice after each step */
    int32_t *top;        /* [gen] scratch */
} decode_ctx;

/* One rep of mode m from position target: *secs = summed eval time. With
 * make_ref (the gpu mode's first rep) the tokens are its own greedy ones. */
static ap_status decode_rep(decode_ctx *d, int m, int target, int make_ref, double *secs,
                            mode_res *res, int *kept_stats, ap_err *err) {
    const bench_opts *o = d->o;
    engine *E = &d->eng[MODE_ENG[m]];
    const int V = d->hp->n_vocab;
    ap_live *lv = NULL;
    ap_kv_policy pol;
    ap_status st = AP_OK;
    int mb = 0;
    memset(&pol, 0, sizeof pol);
    *secs = 0;
    *kept_stats = 0;
    if ((st = eng_truncate(E, target, err))) return st;
    if (E->cm && (st = ap_cuda_model_set_kv_policy(E->cm, NULL, err))) return st;
    if (MODE_POLICY[m]) {
        if ((st = ap_live_create(d->pf, d->ps->sel, &d->ps->params, &d->ps->lo, &lv, err)))
            return st;
        /* ap_live sizes the device pool (max_blocks: the most blocks a
         * step keeps), so offloading really evicts. */
        pol = *ap_live_policy(lv);
        mb = pol.max_blocks;
        if ((st = ap_cuda_model_set_kv_policy(E->cm, &pol, err))) goto done;
    }
    const ap_attn_observer *obs = lv ? ap_live_observer(lv) : NULL;
    for (int i = 0; i < o->gen; i++) {
        const int32_t tok = d->feed[i];
        double t = ap_now_seconds();
        if (E->c) st = ap_ctx_eval(E->c, &tok, 1, E->logits, 0, NULL, err);
        else st = ap_cuda_model_eval_obs(E->cm, &tok, 1, E->logits, obs, err);
        *secs += ap_now_seconds() - t;
        if (st) goto done;
        d->top[i] = ap_sample(E->logits, V, 0.0f, 0, NULL);
        if (make_ref) {
            d->ref[i] = d->top[i];
            if (i + 1 < o->gen) d->feed_w[i + 1] = d->top[i];
        }
    }
    if (res) {
        int agree = 0;
        for (int i = 0; i < o->gen; i++) agree += d->top[i] == d->ref[i];
        res->agree = (double)agree / o->gen;
        memcpy(res->last, E->logits, sizeof(float) * (size_t)V);
        if (lv) {
            ap_cuda_model_kv_stats(E->cm, &res->kv);
            ap_live_get_stats(lv, &res->ls);
            res->max_blocks = mb;
            res->has_peek = pol.peek != NULL;
            res->has_kv = 1;
            *kept_stats = 1;
        }
    }
done:
    if (lv) {
        /* Uninstall before the live goes (the engine borrows it). */
        ap_err e2;
        ap_status s2 = ap_cuda_model_set_kv_policy(E->cm, NULL, &e2);
        if (!st && s2) {
            st = s2;
            *err = e2;
        }
        ap_live_free(lv);
    }
    return st;
}

static ap_status setup_policy(const bench_opts *o, const ap_hparams *hp, policy_setup *ps,
                              ap_err *err) {
    ap_status st = AP_OK;
    memset(ps, 0, sizeof *ps);
    if (o->predictor) {
        if ((st = ap_runtime_load(o->predictor, &ps->rt, err))) return st;
        const ap_pred_config *pc = ap_runtime_config(ps->rt);
        if (pc->block != KV_BLOCK)
            return ap_errf(err, AP_ERR_ARG, "%s: predictor block size %d, the engine's is %d",
                           o->predictor, pc->block, KV_BLOCK);
        for (int l = 0; l < hp->n_layer; l++)
            if (ap_predictor_model_of_layer(ap_runtime_predictor(ps->rt), l) < 0)
                return ap_errf(err, AP_ERR_ARG, "%s: predictor has no model for layer %d",
                               o->predictor, l);
        ap_predictor_set_threads(ap_runtime_predictor(ps->rt), 1);
        ps->sel = ap_selector_predictor();
        snprintf(ps->what, sizeof ps->what, "attnpred");
    } else {
        if (!(ps->sel = ap_selector_find("last_step")))
            return ap_errf(err, AP_ERR_INTERNAL, "no last_step selector");
        snprintf(ps->what, sizeof ps->what, "last_step");
        snprintf(ps->label, sizeof ps->label, " (last_step selection)");
    }
    /* eval/tasks.c's defaults. */
    ps->params.calib = o->calib;
    ps->params.kv_mode = AP_KV_PER_QHEAD;
    ps->params.snapkv_window = 32;
    ps->params.snapkv_pool = 1;
    ps->params.rt = ps->rt;
    ps->params.incremental = 1;
    ps->lo = (ap_live_opts){.budget = o->budget, .sink = o->sink, .local = o->local,
                            .min_candidates = 3, .measure = 0, .prefetch = 1,
                            /* The predictor's work spreads over the CPU's
                             * cores while the GPU decodes. */
                            .prefetch_threads = o->predict_threads,
                            /* last_step too: its next lists are then known a
                             * step early, so the pool copies them ahead. */
                            .prefetch_any = 1,
                            /* The engine holds the pool (its pages callback
                             * is not used by the CUDA engine). */
                            .hot_pool = 0};
    return AP_OK;
}

static void print_row(const bench_opts *o, const engine *eng, const policy_setup *ps,
                      const row_t *w, const ap_hparams *hp) {
    const mode_res *g = &w->m[M_GPU], *c = &w->m[M_CPU], *of = &w->m[M_OFF];
    const double tps_g = o->gen / g->best_s, tps_off = of->ran ? o->gen / of->best_s : NAN;
    /* The first version's line. */
    printf("ctx=%d decode_tps", w->ctx);
    for (int m = 0; m <= M_OFF; m++)
        if (w->m[m].ran) printf(" %s=%.1f", MNAME[m], o->gen / w->m[m].best_s);
    if (c->ran) printf(" (gpu/cpu x%.2f)", tps_g / (o->gen / c->best_s));
    if (of->ran) printf(" (offload/gpu x%.2f)", tps_off / tps_g);
    printf(" prefill_tps");
    for (int e = 0; e < N_ENG; e++)
        if (eng[e].on) printf(" %s=%.0f", ENAME[e], w->prefill_tps[e]);
    if (c->ran && c->rel_l2 >= 0) printf(" logits_rel_l2 gpu-cpu=%.2e", c->rel_l2);
    if (of->ran && of->rel_l2 >= 0) printf(" offload-gpu=%.2e", of->rel_l2);
    printf("\n");
    /* The offload experiment's table. */
    printf("  %-40s %9s %8s %9s %7s %6s %9s %17s %8s %8s %8s %6s %9s %9s\n", "mode", "tok/s",
           "ms/tok", "x_offload", "x_gpu", "top1%", "rel_l2", "pool_MiB cap/used", "H2D_KiB",
           "demand", "prefetch", "hit%", "policy_ms", "select_ms");
    for (int m = 0; m < N_MODE; m++) {
        const mode_res *x = &w->m[m];
        if (!x->ran) continue;
        const double tps = o->gen / x->best_s;
        char label[128], pool[32] = "-", h2d[32] = "-", dem[32] = "-", pre[32] = "-",
                         hit[32] = "-", pms[32] = "-", sms[32] = "-", rel[32] = "-";
        snprintf(label, sizeof label, "%s%s", MNAME[m], MODE_POLICY[m] ? ps->label : "");
        if (x->rel_l2 >= 0) snprintf(rel, sizeof rel, "%.2e", x->rel_l2);
        if (m == M_OFF) {
            const double keys = (w->ctx - o->gen) + (o->gen + 1) / 2.0;
            snprintf(h2d, sizeof h2d, "(%.0f)",
                     keys * 2.0 * hp->n_layer * hp->n_head_kv * hp->head_dim * 4 / 1024.0);
        }
        if (x->has_kv) {
            const ap_cuda_kv_stats *k = &x->kv;
            const double steps = k->steps > 0 ? (double)k->steps : NAN;
            if (m != M_SPARSE) { /* device KV: no pool, no copies */
                snprintf(pool, sizeof pool, "%.1f/%.1f", k->pool_capacity_bytes / 1048576.0,
                         k->pool_used_bytes / steps / 1048576.0);
                snprintf(h2d, sizeof h2d, "%.0f",
                         k->steps > 1 ? (k->h2d_bytes - k->fill_bytes) / (steps - 1) / 1024.0
                                      : NAN);
                snprintf(dem, sizeof dem, "%lld", k->demand_blocks);
                snprintf(pre, sizeof pre, "%lld", k->prefetched_blocks);
            }
            if (k->prefetched_blocks > 0)
                snprintf(hit, sizeof hit, "%.1f",
                         100.0 * (double)k->prefetch_hits / (double)k->prefetched_blocks);
            snprintf(pms, sizeof pms, "%.2f", 1e3 * k->policy_seconds / steps);
            if (x->ls.steps > 0)
                snprintf(sms, sizeof sms, "%.2f", 1e3 * x->ls.select_seconds / x->ls.steps);
        }
        char xoff[32] = "-";
        if (of->ran) snprintf(xoff, sizeof xoff, "%.2f", tps / tps_off);
        printf("  %-40s %9.1f %8.3f %9s %7.2f %6.1f %9s %17s %8s %8s %8s %6s %9s %9s\n", label,
               tps, 1e3 * x->best_s / o->gen, xoff, tps / tps_g, 100.0 * x->agree, rel, pool, h2d,
               dem, pre, hit, pms, sms);
    }
    if (w->m[M_PREF].ran && of->ran)
        printf("  offload + prefetch vs plain offloading: x%.2f%s (the method reports about "
               "5.6x)\n",
               (o->gen / w->m[M_PREF].best_s) / tps_off, ps->label);
    for (int m = 0; m < N_MODE; m++) {
        const mode_res *x = &w->m[m];
        if (!x->has_kv) continue;
        printf("  %s: %s %d blocks per (layer, KV head)%s%s\n", MNAME[m],
               m == M_SPARSE ? "kept set at most" : "device pool of", x->max_blocks,
               (m == M_PREF && !x->has_peek)
                   ? "; the policy has no peek: nothing is prefetched"
                   : "",
               o->model_path == NULL ? "; synthetic: transfer volume not representative" : "");
    }
}

static ap_status run(bench_opts *o, ap_err *err) {
    ap_status st = AP_OK;
    ap_gguf *g = NULL;
    ap_model *m = NULL;
    uint8_t *synth = NULL;
    int32_t *stream = NULL, *feed = NULL, *ref = NULL, *top = NULL;
    engine eng[N_ENG];
    row_t rows[MAX_CTX];
    policy_setup ps;
    ap_live_prefill *pf = NULL;
    char device[256], model[512], text_src[600];
    memset(eng, 0, sizeof eng);
    memset(rows, 0, sizeof rows);
    memset(&ps, 0, sizeof ps);

    if ((st = ap_cuda_device_name(device, sizeof device, err))) goto cleanup;
    if (o->model_path) {
        if ((st = ap_gguf_open(o->model_path, &g, err))) goto cleanup;
        snprintf(model, sizeof model, "%s", o->model_path);
    } else {
        size_t size = 0;
        int n_ctx = SYNTH_CTX;
        for (int i = 0; i < o->n_spec; i++)
            if (o->ctx_spec[i] > n_ctx) n_ctx = o->ctx_spec[i];
        double t0 = ap_now_seconds();
        if ((st = build_synthetic(n_ctx, &synth, &size, err))) goto cleanup;
        if ((st = ap_gguf_open_memory(synth, size, "synthetic", &g, err))) goto cleanup;
        snprintf(model, sizeof model, "synthetic (SmolLM2-135M shapes, Q4_1 + Q8_0, random)");
        fprintf(stderr, "bench-engine-gpu: synthetic model built in %.1f s (%.0f MB)\n",
                ap_now_seconds() - t0, (double)size / 1e6);
    }
    if ((st = ap_model_load(g, &m, err))) goto cleanup;
    const ap_hparams *hp = ap_model_hparams(m);
    const int V = hp->n_vocab;
    if ((st = resolve_contexts(o, hp->n_ctx_train, err))) goto cleanup;
    const int max_ctx = o->ctxs[o->n_ctx - 1];
    stream = malloc(sizeof(int32_t) * (size_t)max_ctx);
    feed = malloc(sizeof(int32_t) * (size_t)o->gen);
    ref = malloc(sizeof(int32_t) * (size_t)o->gen);
    top = malloc(sizeof(int32_t) * (size_t)o->gen);
    if (!stream || !feed || !ref || !top) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the token stream");
        goto cleanup;
    }
    if (o->text && o->model_path) {
        double t0 = ap_now_seconds();
        if ((st = text_tokens(g, o->text, max_ctx, stream, err))) goto cleanup;
        snprintf(text_src, sizeof text_src, "text: %s", o->text);
        fprintf(stderr, "bench-engine-gpu: %d tokens of %s in %.1f s\n", max_ctx, o->text,
                ap_now_seconds() - t0);
    } else {
        uint64_t s = 12345;
        const uint64_t id_range = V < 20000 ? (uint64_t)V : 20000u;
        for (int i = 0; i < max_ctx; i++) stream[i] = (int32_t)(rng_next(&s) % id_range);
        snprintf(text_src, sizeof text_src, "pseudo-random token ids");
    }
    if (any_policy(o)) {
        if ((st = setup_policy(o, hp, &ps, err))) goto cleanup;
        if (o->budget < o->sink + o->local || o->sink % KV_BLOCK) {
            st = ap_errf(err, AP_ERR_ARG, "budget %d below sink + local = %d, or sink not a "
                         "multiple of %d", o->budget, o->sink + o->local, KV_BLOCK);
            goto cleanup;
        }
    }
    for (int r = 0; r < o->n_ctx; r++)
        for (int k = 0; k < N_MODE; k++) {
            if (!o->want[k]) continue;
            if (!(rows[r].m[k].last = malloc(sizeof(float) * (size_t)V))) {
                st = ap_errf(err, AP_ERR_NOMEM, "out of memory for logits");
                goto cleanup;
            }
        }

    for (int k = 0; k < N_MODE; k++)
        if (o->want[k]) eng[MODE_ENG[k]].on = 1;
    for (int e = 0; e < N_ENG; e++) {
        engine *E = &eng[e];
        if (!E->on) continue;
        E->on = 0;
        double t0 = ap_now_seconds();
        if (!(E->logits = malloc(sizeof(float) * (size_t)V))) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory for logits");
            goto cleanup;
        }
        if (e == E_CPU) {
            st = ap_ctx_create(m, max_ctx, o->threads, &E->c, err);
        } else {
            ap_cuda_model_opts co;
            ap_cuda_model_opts_default(&co);
            co.kv_offload = e != E_DEV;
            co.prefetch = e != E_DEM;
            st = ap_cuda_model_create_opts(g, m, max_ctx, &co, &E->cm, err);
            if (st == AP_OK) ap_cuda_model_memory(E->cm, &E->dev_bytes, &E->pinned_bytes);
        }
        if (st) goto cleanup;
        E->on = 1;
        /* Warm-up: loads every kernel and cuBLAS's choices once (CUDA loads
         * modules lazily, at first launch), touches CPU buffers. */
        if (E->c) {
            if ((st = ap_ctx_eval(E->c, stream, 8, E->logits, 0, NULL, err)) ||
                (st = ap_ctx_eval(E->c, stream + 8, 1, E->logits, 0, NULL, err)))
                goto cleanup;
        } else if ((st = ap_cuda_model_eval(E->cm, stream, 8, E->logits, err)) ||
                   (st = ap_cuda_model_eval(E->cm, stream + 8, 1, E->logits, err))) {
            goto cleanup;
        }
        if ((st = eng_truncate(E, 0, err))) goto cleanup;
        fprintf(stderr, "bench-engine-gpu: %s engine ready in %.1f s\n", ENAME[e],
                ap_now_seconds() - t0);
    }

    printf("# bench-engine-gpu on %s; model %s (llama.context_length %d); CPU engine %d "
           "threads; %d decode tokens, best of %d\n",
           device, model, hp->n_ctx_train, o->threads, o->gen, o->reps);
    printf("# prefill tokens: %s; decode teacher-forced: every mode feeds the gpu mode's greedy "
           "tokens\n", text_src);
    printf("# gpu engine: %.0f MB device memory", (double)eng[E_DEV].dev_bytes / 1e6);
    for (int e = E_OFF; e < N_ENG; e++)
        if (eng[e].on)
            printf("; %s engine: %.0f MB device, %.0f MB pinned host (KV)", ENAME[e],
                   (double)eng[e].dev_bytes / 1e6, (double)eng[e].pinned_bytes / 1e6);
    printf("\n");
    if (any_policy(o)) {
        printf("# policy modes: %s%s, budget %d tokens (sink %d, local %d, block %d, calib %d, "
               "per query head)%s\n",
               ps.what, o->predictor ? "" : " selector (no --predictor)", o->budget, o->sink,
               o->local, KV_BLOCK, o->calib, o->predictor ? "" : ": rows labelled (last_step selection)");
        if (o->predictor) printf("# predictor: %s\n", o->predictor);
        if (!o->model_path)
            printf("# synthetic weights: attention is meaningless, so the policy modes' "
                   "transfer volume is not representative (synthetic: transfer volume not "
                   "representative)\n");
    }
    printf("# columns: x_offload, x_gpu = tok/s over gpu_offload's, gpu's; top1%% = greedy "
           "choice equal to gpu's; rel_l2 = last step's logits vs gpu; pool and H2D from "
           "ap_cuda_model_kv_stats (H2D: KiB copied into the pool per token after the first "
           "step, which fills it; gpu_offload's in parentheses: the KV its dense "
           "attention reads over the bus, computed); demand/prefetch = blocks copied in; "
           "policy_ms = host time in the policy per token; select_ms = ap_live's selection\n");

    decode_ctx d = {.o = o, .hp = hp, .eng = eng, .ps = &ps, .feed = feed, .feed_w = feed,
                    .ref = ref, .top = top};
    double t_start = ap_now_seconds();
    int prev_target = 0;
    for (int r = 0; r < o->n_ctx; r++) {
        row_t *w = &rows[r];
        w->ctx = o->ctxs[r];
        const int target = w->ctx - o->gen;
        for (int k = 0; k < N_MODE; k++) w->m[k].rel_l2 = -1.0;
        /* Prefill: the CPU grows its cache from the previous context (its
         * decoded tokens dropped), the GPU engines prefill from empty in
         * one call. */
        for (int e = 0; e < N_ENG; e++) {
            engine *E = &eng[e];
            if (!E->on) continue;
            if (E->c) {
                if ((st = ap_ctx_truncate(E->c, prev_target, err))) goto cleanup;
                for (int at = prev_target; at < target;) {
                    int n = target - at < CPU_CHUNK ? target - at : CPU_CHUNK;
                    double t = ap_now_seconds();
                    if ((st = ap_ctx_eval(E->c, stream + at, n, E->logits, 0, NULL, err)))
                        goto cleanup;
                    E->pre_time += ap_now_seconds() - t;
                    E->pre_tokens += n;
                    at += n;
                }
                w->prefill_tps[e] = E->pre_tokens / E->pre_time;
            } else {
                if ((st = ap_cuda_model_set_kv_policy(E->cm, NULL, err))) goto cleanup;
                ap_cuda_model_reset(E->cm);
                double t = ap_now_seconds();
                if ((st = ap_cuda_model_eval(E->cm, stream, target, E->logits, err))) goto cleanup;
                w->prefill_tps[e] = target / (ap_now_seconds() - t);
            }
        }
        /* The first token fed: the device engine's greedy choice after the
         * prompt. */
        feed[0] = ap_sample(eng[E_DEV].logits, V, 0.0f, 0, NULL);
        if (any_policy(o)) {
            /* The selectors' view of the prompt, captured once (untimed) and
             * borrowed by every ap_live of this context. */
            ap_live_prefill_free(pf);
            pf = NULL;
            if ((st = ap_live_prefill_create(hp, KV_BLOCK, N_PRE, target, o->gen, &pf, err)))
                goto cleanup;
            ap_cuda_model_reset(eng[E_DEV].cm);
            double t = ap_now_seconds();
            if ((st = ap_cuda_model_eval_obs(eng[E_DEV].cm, stream, target, eng[E_DEV].logits,
                                             ap_live_prefill_observer(pf), err)))
                goto cleanup;
            w->capture_s = ap_now_seconds() - t;
            d.pf = pf;
        }
        double best[N_MODE], min_agree[N_MODE];
        for (int k = 0; k < N_MODE; k++) best[k] = min_agree[k] = INFINITY;
        for (int rep = 0; rep < o->reps; rep++) {
            for (int k = 0; k < N_MODE; k++) {
                if (!o->want[k]) continue;
                mode_res *x = &w->m[k];
                /* The stats of the best rep are kept: decode into a scratch
                 * result and copy when it wins. */
                mode_res tmp = *x;
                double secs = 0;
                int kept = 0;
                if ((st = decode_rep(&d, k, target, k == M_GPU && rep == 0, &secs, &tmp, &kept,
                                     err))) {
                    char where[96];
                    snprintf(where, sizeof where, "%s at context %d", MNAME[k], w->ctx);
                    ap_err_prefix(err, where);
                    goto cleanup;
                }
                /* Every rep feeds the same tokens: the agreement reported
                 * is the lowest over the reps (they should not differ). */
                if (tmp.agree < min_agree[k]) min_agree[k] = tmp.agree;
                if (secs < best[k]) {
                    best[k] = secs;
                    *x = tmp; /* the last logits are the same buffer either way */
                }
                x->ran = 1;
            }
        }
        for (int k = 0; k < N_MODE; k++)
            if (w->m[k].ran) {
                w->m[k].best_s = best[k];
                w->m[k].agree = min_agree[k];
            }
        for (int k = 0; k < N_MODE; k++)
            if (k != M_GPU && w->m[k].ran)
                w->m[k].rel_l2 = ap_rel_l2_f32(w->m[k].last, w->m[M_GPU].last, V);
        print_row(o, eng, &ps, w, hp);
        fflush(stdout);
        fprintf(stderr, "bench-engine-gpu: context %d done (%.0f s)\n", w->ctx,
                ap_now_seconds() - t_start);
        prev_target = target;
    }
    printf("# KV cache at %d tokens: %.0f MB (float32 K and V, all layers); logits tolerance "
           "GPU vs CPU in tests: %.0e\n",
           max_ctx, 2.0 * hp->n_layer * max_ctx * hp->n_head_kv * hp->head_dim * 4 / 1e6,
           AP_TOL_CPU_GPU_REL);
    if (o->json_path) st = write_json(o, device, model, text_src, hp, eng, &ps, rows, err);

cleanup:
    for (int e = 0; e < N_ENG; e++) {
        ap_ctx_free(eng[e].c);
        ap_cuda_model_free(eng[e].cm);
        free(eng[e].logits);
    }
    for (int r = 0; r < MAX_CTX; r++)
        for (int k = 0; k < N_MODE; k++) free(rows[r].m[k].last);
    ap_live_prefill_free(pf);
    ap_runtime_free(ps.rt);
    free(stream);
    free(feed);
    free(ref);
    free(top);
    ap_model_free(m);
    ap_gguf_free(g);
    free(synth); /* after the gguf that points into it */
    return st;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: bench-engine-gpu [--model M.gguf | --synthetic] [--contexts 8192,max]\n"
            "                        [--gen 32] [--reps 2] [--threads N] [--modes LIST]\n"
            "                        [--no-cpu] [--no-offload] [--no-policy]\n"
            "                        [--predictor P.safetensors] [--budget 512] [--sink 64]\n"
            "                        [--local 64] [--calib 5] [--text FILE | --random-tokens]\n"
            "                        [--predict-threads N] [--json OUT]\n"
            "Decode tokens/s of the CUDA engine in these modes, at each context (prefill\n"
            "N - gen tokens, then decode gen tokens, best of --reps from one prefill):\n"
            "  gpu              KV cache in device memory, dense decode (always run: the\n"
            "                   reference; every mode feeds its greedy tokens)\n"
            "  cpu              the CPU engine, --threads threads\n"
            "  gpu_offload      KV cache in pinned host memory, dense decode over the bus\n"
            "  offload_prefetch KV offloaded, device pool of the blocks ap_live keeps at\n"
            "                   --budget tokens (attnpred with --predictor, else last_step),\n"
            "                   next step's blocks copied ahead on a second stream\n"
            "  offload_demand   the same, blocks copied when selected (no prefetch)\n"
            "  gpu_sparse       KV in device memory under the same policy\n"
            "--predict-threads: CPU threads scoring the next step while the GPU decodes\n"
            "(default: cores - 1, at most 15).\n"
            "--modes: comma list of the above (default all); --no-cpu, --no-offload (drops\n"
            "the three offload modes), --no-policy (drops the three policy modes).\n"
            "--contexts: ascending list, 'max' = the model's llama.context_length (default\n"
            "8192,max, deduplicated). Reports tok/s, ms/token, ratios vs gpu_offload and gpu,\n"
            "top-1 agreement with gpu, and for the policy modes pool MiB, H2D KiB/token, demand\n"
            "vs prefetched blocks, prefetch hit rate, host policy ms/token.\n"
            "Without --model: models/SmolLM2-135M-Instruct.Q4_1.gguf if present (prefilled\n"
            "with data/prompts/default.jsonl tokenized, or --text FILE; .jsonl = its 'text'\n"
            "fields), else a synthetic model of its shapes (always with --synthetic; random\n"
            "tokens; its policy rows are not representative of transfer volume). Without a\n"
            "CUDA device: prints a skip line and exits 0.\n");
}

static int parse_modes(const char *arg, int *want) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", arg);
    for (int k = 0; k < N_MODE; k++) want[k] = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int k = 0;
        while (k < N_MODE && strcmp(t, MNAME[k])) k++;
        if (k == N_MODE) {
            fprintf(stderr, "bench-engine-gpu: unknown mode '%s' (gpu, cpu, gpu_offload, "
                            "offload_prefetch, offload_demand, gpu_sparse)\n", t);
            return -1;
        }
        want[k] = 1;
    }
    want[M_GPU] = 1;
    return 0;
}

int main(int argc, char **argv) {
    bench_opts o;
    memset(&o, 0, sizeof o);
    o.gen = 32;
    o.reps = 2;
    o.budget = 512;
    o.sink = 64;
    o.local = 64;
    o.calib = 5;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    o.threads = ncpu < 1 ? 1 : ncpu > 16 ? 16 : (int)ncpu;
    o.predict_threads = ncpu <= 2 ? 1 : ncpu > 16 ? 15 : (int)ncpu - 1;
    for (int k = 0; k < N_MODE; k++) o.want[k] = 1;
    char contexts_arg[256] = "8192,max";
    o.default_ctx = 1;
    int no_cpu = 0, no_off = 0, no_pol = 0, random_tokens = 0;
    enum { O_PRED = 256, O_BUDGET, O_SINK, O_LOCAL, O_CALIB, O_TEXT, O_RANDOM, O_MODES, O_NOPOL };
    static const struct option lo[] = {
        {"model", 1, 0, 'm'},       {"contexts", 1, 0, 'c'},   {"gen", 1, 0, 'g'},
        {"reps", 1, 0, 'r'},        {"threads", 1, 0, 't'},    {"json", 1, 0, 'j'},
        {"predict-threads", 1, 0, 'P'},
        {"no-cpu", 0, 0, 'C'},      {"no-offload", 0, 0, 'O'}, {"synthetic", 0, 0, 'S'},
        {"predictor", 1, 0, O_PRED}, {"budget", 1, 0, O_BUDGET}, {"sink", 1, 0, O_SINK},
        {"local", 1, 0, O_LOCAL},   {"calib", 1, 0, O_CALIB},  {"text", 1, 0, O_TEXT},
        {"random-tokens", 0, 0, O_RANDOM}, {"modes", 1, 0, O_MODES},
        {"no-policy", 0, 0, O_NOPOL}, {"help", 0, 0, 'h'},    {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
        switch (c) {
        case 'm': o.model_path = optarg; break;
        case 'c':
            snprintf(contexts_arg, sizeof contexts_arg, "%s", optarg);
            o.default_ctx = 0;
            break;
        case 'g': o.gen = atoi(optarg); break;
        case 'r': o.reps = atoi(optarg); break;
        case 't': o.threads = atoi(optarg); break;
        case 'P': o.predict_threads = atoi(optarg); break;
        case 'j': o.json_path = optarg; break;
        case 'C': no_cpu = 1; break;
        case 'O': no_off = 1; break;
        case 'S': o.synthetic = 1; break;
        case O_PRED: o.predictor = optarg; break;
        case O_BUDGET: o.budget = atoi(optarg); break;
        case O_SINK: o.sink = atoi(optarg); break;
        case O_LOCAL: o.local = atoi(optarg); break;
        case O_CALIB: o.calib = atoi(optarg); break;
        case O_TEXT: o.text = optarg; break;
        case O_RANDOM: random_tokens = 1; break;
        case O_MODES:
            if (parse_modes(optarg, o.want)) return 2;
            break;
        case O_NOPOL: no_pol = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "bench-engine-gpu: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (o.gen < 1 || o.reps < 1 || o.threads < 1 || o.threads > 256 || o.predict_threads < 1 ||
        o.predict_threads > 256) {
        fprintf(stderr, "bench-engine-gpu: --gen, --reps must be >= 1, --threads and "
                        "--predict-threads in [1, 256]\n");
        return 2;
    }
    if (o.budget < 1 || o.sink < 0 || o.local < 0 || o.calib < 0 || o.sink % KV_BLOCK ||
        o.budget < o.sink + o.local) {
        fprintf(stderr, "bench-engine-gpu: need sink a multiple of %d, local >= 0, calib >= 0, "
                        "budget >= sink + local\n", KV_BLOCK);
        return 2;
    }
    if (no_cpu) o.want[M_CPU] = 0;
    if (no_off) o.want[M_OFF] = o.want[M_PREF] = o.want[M_DEM] = 0;
    if (no_pol) o.want[M_PREF] = o.want[M_DEM] = o.want[M_SPARSE] = 0;
    for (char *save = NULL, *t = strtok_r(contexts_arg, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        int v = !strcmp(t, "max") ? -1 : atoi(t);
        if (o.n_spec == MAX_CTX || v == 0 || v < -1) {
            fprintf(stderr, "bench-engine-gpu: bad context '%s' (a number or 'max', at most %d)\n",
                    t, MAX_CTX);
            return 2;
        }
        o.ctx_spec[o.n_spec++] = v;
    }
    if (o.n_spec == 0) {
        fprintf(stderr, "bench-engine-gpu: no contexts\n");
        return 2;
    }
    if (o.predictor && !ap_file_exists(o.predictor)) {
        fprintf(stderr, "bench-engine-gpu: --predictor %s: no such file\n", o.predictor);
        return 2;
    }
    if (o.text && !ap_file_exists(o.text)) {
        fprintf(stderr, "bench-engine-gpu: --text %s: no such file\n", o.text);
        return 2;
    }
    if (ap_cuda_device_count() == 0) {
        printf("bench-engine-gpu: no CUDA device (or no CUDA build): skipped\n");
        return 0;
    }
    static const char default_model[] = AP_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    static const char default_text[] = AP_SOURCE_DIR "/data/prompts/default.jsonl";
    if (o.synthetic) o.model_path = NULL;
    else if (!o.model_path && ap_file_exists(default_model)) o.model_path = default_model;
    if (!o.model_path || random_tokens) o.text = NULL;
    else if (!o.text && ap_file_exists(default_text)) o.text = default_text;
    ap_err err;
    ap_err_clear(&err);
    if (run(&o, &err) != AP_OK) {
        fprintf(stderr, "bench-engine-gpu: %s\n", err.msg);
        return 1;
    }
    return 0;
}
