/* bench-engine: prefill and decode speed of the CPU engine, float32 vs
 * quantized weights and float32 vs binary16 KV cache, next to this
 * machine's own limits measured in the same process, so every number comes
 * with a ratio immune to machine noise.
 *
 *   bench-engine [--model M.gguf] [--contexts 1024,4096,8192] [--gen 16]
 *                [--reps 2] [--threads 2] [--engines quant,f32,f16kv]
 *                [--variants quant,...] [--rewind] [--json OUT]
 *
 * The engines live side by side, each with one context filled in ascending
 * steps: at each context N the cache is prefilled up to N minus the decode
 * tokens measured there (512-token chunks alternating between the engines),
 * then every decode variant runs --gen tokens, --reps rounds alternating
 * between engines and variants (best round kept), so a load change on a
 * shared machine hits both alike. Prefill tok/s is cumulative from an empty
 * cache (what a prompt of N tokens costs). Variants:
 *   quant engine (default weights): exact decode; decode with Q8
 *     activations (opt-in mode); decode with the BLAS attention path;
 *   f32 engine (f32_weights): the pre-qmatvec engine (sgemv + BLAS
 *     attention); and float32 sgemv with the streaming attention;
 *   f16kv engine (default weights, kv_type f16): exact decode with the
 *     streaming attention, which reads half the KV bytes of quant. With
 *     quant it also reports the f16 cache's error: the first decoded
 *     token's logits against quant's at the same depth (equal depths need
 *     --rewind or one variant per engine).
 * --engines defaults to quant,f32. --variants keeps only the named decode
 * variants (quant, quant_q8act, quant_blasattn, f32, f32_streamattn,
 * quant_f16kv). --rewind makes each context N a decode depth: the cache is
 * prefilled to exactly N and rewound to N after every decode run, so every
 * variant and rep decodes keys N .. N + gen (what llama-bench -d N -n gen
 * measures; scripts/bench_llamacpp.sh uses it).
 * Limits: streaming read / copy / triad bandwidth over 3 x 512 MiB arrays
 * (beyond any cache) and AVX2 FMA throughput, each on 1 thread and on
 * --threads threads. Decode is reported as bytes read per token (weights +
 * the K/V rows of every layer) over time, as a fraction of the read
 * bandwidth; prefill as model FLOPs over time, as a fraction of peak FMA.
 * Memory: RSS growth from loading each engine (the file's pages are faulted
 * in first) and the process peak; run one engine alone for its own peak.
 * Token ids are a fixed pseudo-random stream: speed does not depend on text. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "capture/gguf.h"
#include "capture/model.h"
#include "common/util.h"
#include "machine_limits.h"

#ifndef AP_SOURCE_DIR
#define AP_SOURCE_DIR "."
#endif

#define MAX_CTX 16

/* ------------------------------------------------------------------ engine */

typedef enum { E_QUANT, E_F32, E_F16KV, N_ENGINES } engine_id;
typedef enum { V_QUANT, V_Q8, V_QUANT_BLAS, V_F32_OLD, V_F32_STREAM, V_F16KV, N_VARIANTS } variant;
static const char *const VNAME[N_VARIANTS] = {"quant", "quant_q8act",    "quant_blasattn",
                                              "f32",   "f32_streamattn", "quant_f16kv"};
static const variant ENGINE_VARS[N_ENGINES][3] = {{V_QUANT, V_Q8, V_QUANT_BLAS},
                                                  {V_F32_OLD, V_F32_STREAM, N_VARIANTS},
                                                  {V_F16KV, N_VARIANTS, N_VARIANTS}};
static const int ENGINE_NVARS[N_ENGINES] = {3, 2, 1};
static const char *const ENAME[N_ENGINES] = {"quant", "f32", "f16kv"};
static const ap_kv_type ENGINE_KV[N_ENGINES] = {AP_KV_F32, AP_KV_F32, AP_KV_F16};

typedef struct {
    int ctx;
    double prefill_tps[N_ENGINES]; /* indexed like ENAME */
    double prefill_gflops[N_ENGINES];
    double decode_tps[N_VARIANTS];
    double decode_bytes[N_VARIANTS]; /* bytes read per decode token */
    /* The f16 cache's error on the first decoded token's logits, against
     * the f32 cache (quant); only when both decoded at the same depth. */
    int have_f16kv_err;
    double f16kv_rel_l2;
    int f16kv_argmax_same;
} row_t;

typedef struct {
    ap_model *m;
    ap_ctx *c;
    double wbytes, layer_params;
    double pre_time, pre_flops;
    int pre_tokens;
    double resident_mb; /* RSS growth from loading it and running a few tokens */
    ap_hparams hp;      /* kept after the model is freed */
} engine_t;

static int fail(const ap_err *e) {
    fprintf(stderr, "bench-engine: %s\n", e->msg);
    return 1;
}

/* Current resident set, bytes (0 if unknown). */
static double rss_now(void) {
    long pages = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0.0;
    if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
    fclose(f);
    return (double)res * 4096.0;
}

/* Prefill FLOPs of tokens [p0, p1): every layer matrix (2 per weight per
 * token) and attention (q·k and p·v: 4·hd per head per visible key). */
static double prefill_flops(const ap_hparams *hp, double layer_params, int p0, int p1) {
    double f = 2.0 * layer_params * (p1 - p0);
    double keys = ((double)p1 * (p1 + 1) - (double)p0 * (p0 + 1)) / 2.0;
    f += 4.0 * hp->n_layer * hp->n_head * hp->head_dim * keys;
    return f + 2.0 * (double)hp->n_vocab * hp->n_embd; /* last-token logits */
}

static ap_status engine_open(const ap_gguf *g, int e, int max_ctx, int threads,
                             const int32_t *stream, float *logits, engine_t *E, ap_err *err) {
    ap_model_opts o;
    ap_model_opts_default(&o);
    o.f32_weights = e == E_F32;
    o.decode_attn_blas = e == E_F32; /* the old engine, whole */
    o.kv_type = ENGINE_KV[e];
    memset(E, 0, sizeof *E);
    double r0 = rss_now(), t0 = ap_now_seconds();
    ap_status st = ap_model_load_opts(g, &o, &E->m, err);
    if (!st) st = ap_ctx_create(E->m, max_ctx, threads, &E->c, err);
    /* A few tokens touch every weight and scratch buffer once. */
    if (!st) st = ap_ctx_eval(E->c, stream, 8, logits, 0, NULL, err);
    if (!st) st = ap_ctx_eval(E->c, stream + 8, 1, logits, 0, NULL, err);
    if (st) return st;
    ap_ctx_reset(E->c);
    E->resident_mb = (rss_now() - r0) / 1e6;
    fprintf(stderr, "bench-engine: %s engine ready in %.1f s, %.0f MB resident\n", ENAME[e],
            ap_now_seconds() - t0, E->resident_mb);
    const ap_hparams *hp = ap_model_hparams(E->m);
    E->hp = *hp;
    E->wbytes = (double)ap_model_decode_weight_bytes(E->m);
    E->layer_params =
        (double)hp->n_layer * hp->n_embd *
        (2.0 * hp->n_head * hp->head_dim + 2.0 * hp->n_head_kv * hp->head_dim + 3.0 * hp->n_ff);
    return AP_OK;
}

static void engine_close(engine_t *E) {
    ap_ctx_free(E->c);
    ap_model_free(E->m);
}

/* ||a - b|| / ||b|| (in double) and whether argmax (lowest index on ties)
 * agrees: b is the reference. */
static void logits_error(const float *a, const float *b, int n, double *rel_l2, int *same) {
    double d2 = 0.0, b2 = 0.0;
    int ia = 0, ib = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        d2 += d * d;
        b2 += (double)b[i] * b[i];
        if (a[i] > a[ia]) ia = i;
        if (b[i] > b[ib]) ib = i;
    }
    *rel_l2 = b2 > 0.0 ? sqrt(d2 / b2) : (d2 > 0.0 ? INFINITY : 0.0);
    *same = ia == ib;
}

/* Engines side by side: prefill chunks and decode reps alternate between
 * them, so a load change on a shared machine hits both alike. */
static int run_engines(const ap_gguf *g, const int *want, const int *vwant, int rewind,
                       const int *ctxs, int n_ctx, int gen, int reps, int threads,
                       const int32_t *stream, row_t *rows, engine_t *eng, ap_err *err) {
    const int max_ctx = ctxs[n_ctx - 1] + (rewind ? gen : 0);
    int nvars[N_ENGINES] = {0}; /* decode variants run per engine */
    for (int e = 0; e < N_ENGINES; e++)
        for (int vi = 0; vi < ENGINE_NVARS[e]; vi++) nvars[e] += vwant[ENGINE_VARS[e][vi]];
    /* First decoded token's logits of quant [0] and quant_f16kv [1], to
     * measure the f16 cache's error without disturbing the timing. */
    const int want_err = want[E_QUANT] && want[E_F16KV] && vwant[V_QUANT] && vwant[V_F16KV];
    float *logits = NULL, *first[2] = {NULL, NULL};
    int rc = 1, noted = 0;
    double t0 = ap_now_seconds();
    for (int e = 0; e < N_ENGINES; e++) eng[e] = (engine_t){0};
    const ap_hparams *hp0 = NULL;
    const size_t cap = (size_t)1 << 20; /* bytes: >= n_vocab floats, checked below */
    if (!(logits = malloc(cap))) goto cleanup;
    if (want_err && (!(first[0] = malloc(cap)) || !(first[1] = malloc(cap)))) {
        ap_errf(err, AP_ERR_NOMEM, "out of memory for logits");
        goto cleanup;
    }
    for (int e = 0; e < N_ENGINES; e++) {
        if (!want[e]) continue;
        if (engine_open(g, e, max_ctx, threads, stream, logits, &eng[e], err)) goto cleanup;
        hp0 = ap_model_hparams(eng[e].m);
        if ((size_t)hp0->n_vocab * sizeof(float) > cap) {
            ap_errf(err, AP_ERR_UNSUPPORTED, "vocabulary %d too large for the bench", hp0->n_vocab);
            goto cleanup;
        }
    }
    for (int r = 0; r < n_ctx; r++) {
        rows[r].ctx = ctxs[r];
        for (int at_least = 1; at_least;) {
            at_least = 0;
            for (int e = 0; e < N_ENGINES; e++) {
                if (!want[e]) continue;
                engine_t *E = &eng[e];
                int target = ctxs[r] - (rewind ? 0 : nvars[e] * reps * gen);
                int at = ap_ctx_n_past(E->c);
                if (target <= at) continue;
                int n = target - at < 512 ? target - at : 512;
                double t = ap_now_seconds();
                if (ap_ctx_eval(E->c, stream + at, n, logits, 0, NULL, err)) goto cleanup;
                E->pre_time += ap_now_seconds() - t;
                E->pre_flops += prefill_flops(ap_model_hparams(E->m), E->layer_params, at, at + n);
                E->pre_tokens += n;
                at_least = 1;
            }
        }
        double best[N_VARIANTS], keys[N_VARIANTS];
        for (int v = 0; v < N_VARIANTS; v++) best[v] = 1e30, keys[v] = 0.0;
        int first_p[2] = {-1, -1}; /* decode depth of first[0], first[1] */
        for (int rep = 0; rep < reps; rep++) {
            for (int e = 0; e < N_ENGINES; e++) {
                if (!want[e]) continue;
                engine_t *E = &eng[e];
                for (int vi = 0; vi < ENGINE_NVARS[e]; vi++) {
                    variant v = ENGINE_VARS[e][vi];
                    if (!vwant[v]) continue;
                    int q8 = v == V_Q8, blas = v == V_QUANT_BLAS || v == V_F32_OLD;
                    if (ap_ctx_set_exec(E->c, q8, blas, err)) goto cleanup;
                    int p = ap_ctx_n_past(E->c);
                    int fi = !want_err || rep ? -1 : v == V_QUANT ? 0 : v == V_F16KV ? 1 : -1;
                    if (fi >= 0) first_p[fi] = p;
                    double t = ap_now_seconds();
                    for (int i = 0; i < gen; i++)
                        if (ap_ctx_eval(E->c, stream + p + i, 1,
                                        i == 0 && fi >= 0 ? first[fi] : logits, 0, NULL, err))
                            goto cleanup;
                    double dt = ap_now_seconds() - t;
                    if (rewind && ap_ctx_truncate(E->c, p, err)) goto cleanup;
                    if (dt < best[v]) {
                        best[v] = dt;
                        keys[v] = p + (gen + 1) / 2.0; /* mean keys per step */
                    }
                }
            }
        }
        if (want_err && first_p[0] == first_p[1]) {
            rows[r].have_f16kv_err = 1;
            logits_error(first[1], first[0], hp0->n_vocab, &rows[r].f16kv_rel_l2,
                         &rows[r].f16kv_argmax_same);
        } else if (want_err && !noted) {
            noted = 1;
            fprintf(stderr, "bench-engine: no f16kv logits error: quant and quant_f16kv decode at "
                            "different depths (use --rewind or one variant per engine)\n");
        }
        for (int e = 0; e < N_ENGINES; e++) {
            if (!want[e]) continue;
            engine_t *E = &eng[e];
            const ap_hparams *hp = ap_model_hparams(E->m);
            rows[r].prefill_tps[e] = E->pre_tokens / E->pre_time;
            rows[r].prefill_gflops[e] = E->pre_flops / E->pre_time / 1e9;
            for (int vi = 0; vi < ENGINE_NVARS[e]; vi++) {
                variant v = ENGINE_VARS[e][vi];
                if (!vwant[v]) continue;
                rows[r].decode_tps[v] = gen / best[v];
                /* Weights, plus the K and V rows of every layer. */
                rows[r].decode_bytes[v] = E->wbytes + 2.0 * hp->n_layer * keys[v] * hp->n_head_kv *
                                                          hp->head_dim *
                                                          (double)ap_kv_type_size(ENGINE_KV[e]);
            }
        }
        fprintf(stderr, "bench-engine: context %d done (%.0f s)\n", ctxs[r], ap_now_seconds() - t0);
    }
    rc = 0;
cleanup:
    if (!logits) ap_errf(err, AP_ERR_NOMEM, "out of memory for logits");
    free(logits);
    free(first[0]);
    free(first[1]);
    return rc;
}

/* ------------------------------------------------------------------- main */

static cJSON *num(double v) { return cJSON_CreateNumber(v); }

int main(int argc, char **argv) {
    const char *model_path = AP_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    const char *json_path = NULL;
    char contexts_arg[256] = "1024,4096,8192", engines_arg[64] = "quant,f32";
    char variants_arg[256] = "";
    int gen = 16, threads = 2, reps = 2, skip_limits = 0, rewind = 0;
    static const struct option lo[] = {{"model", 1, 0, 'm'},   {"contexts", 1, 0, 'c'},
                                       {"gen", 1, 0, 'g'},     {"threads", 1, 0, 't'},
                                       {"json", 1, 0, 'j'},    {"reps", 1, 0, 'r'},
                                       {"engines", 1, 0, 'e'}, {"no-limits", 0, 0, 'n'},
                                       {"variants", 1, 0, 'v'}, {"rewind", 0, 0, 'w'},
                                       {"help", 0, 0, 'h'},    {0, 0, 0, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (opt) {
        case 'm': model_path = optarg; break;
        case 'c': snprintf(contexts_arg, sizeof contexts_arg, "%s", optarg); break;
        case 'g': gen = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'j': json_path = optarg; break;
        case 'r': reps = atoi(optarg); break;
        case 'e': snprintf(engines_arg, sizeof engines_arg, "%s", optarg); break;
        case 'n': skip_limits = 1; break;
        case 'v': snprintf(variants_arg, sizeof variants_arg, "%s", optarg); break;
        case 'w': rewind = 1; break;
        case 'h':
            printf("usage: bench-engine [--model M] [--contexts 1024,4096,8192] [--gen N]\n"
                   "                    [--reps N] [--threads N] [--engines quant,f32,f16kv]\n"
                   "                    [--variants V,...] [--rewind] [--no-limits] [--json OUT]\n"
                   "Prefill and decode tokens/s of the quantized engine (default weights), the\n"
                   "float32 engine (f32_weights + BLAS attention) and the quantized engine with\n"
                   "a binary16 KV cache (f16kv) on one model, with this machine's memory\n"
                   "bandwidth and AVX2 FMA peak measured in the same run. --engines: any of\n"
                   "quant, f32, f16kv (default quant,f32). --gen decode tokens per variant\n"
                   "and rep (default 16), best of --reps (default 2). Run it under nice on a\n"
                   "shared machine; compare ratios.\n"
                   "--variants: decode variants to run (quant, quant_q8act, quant_blasattn,\n"
                   "f32, f32_streamattn, quant_f16kv; default all of the chosen engines).\n"
                   "With quant and quant_f16kv at equal depths, the f16 cache's logits error\n"
                   "is reported too. --rewind: each context is a decode depth: prefill exactly\n"
                   "N tokens, every decode run starts at N (the cache is rewound after each),\n"
                   "as llama-bench -d N.\n");
            return 0;
        default: fprintf(stderr, "bench-engine: bad option (see --help)\n"); return 2;
        }
    }
    if (gen < 1 || threads < 1 || threads > 64 || reps < 1) {
        fprintf(stderr, "bench-engine: --gen, --reps must be >= 1, --threads in [1, 64]\n");
        return 2;
    }
    int ctxs[MAX_CTX], n_ctx = 0;
    for (char *save = NULL, *t = strtok_r(contexts_arg, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        if (n_ctx == MAX_CTX) {
            fprintf(stderr, "bench-engine: at most %d contexts\n", MAX_CTX);
            return 2;
        }
        ctxs[n_ctx] = atoi(t);
        if (ctxs[n_ctx] < 16 || (n_ctx > 0 && ctxs[n_ctx] <= ctxs[n_ctx - 1])) {
            fprintf(stderr, "bench-engine: contexts must be >= 16 and ascending ('%s')\n", t);
            return 2;
        }
        n_ctx++;
    }
    if (n_ctx == 0) {
        fprintf(stderr, "bench-engine: no contexts given\n");
        return 2;
    }
    int want[N_ENGINES] = {0}, n_want = 0;
    for (char *save = NULL, *t = strtok_r(engines_arg, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        int e = 0;
        while (e < N_ENGINES && strcmp(t, ENAME[e]) != 0) e++;
        if (e == N_ENGINES) {
            fprintf(stderr, "bench-engine: unknown engine '%s' (quant, f32, f16kv)\n", t);
            return 2;
        }
        n_want += !want[e];
        want[e] = 1;
    }
    if (n_want == 0) {
        fprintf(stderr, "bench-engine: --engines names no engine (quant, f32, f16kv)\n");
        return 2;
    }
    int vwant[N_VARIANTS];
    for (int v = 0; v < N_VARIANTS; v++) vwant[v] = variants_arg[0] == '\0';
    for (char *save = NULL, *t = strtok_r(variants_arg, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        int v = 0;
        while (v < N_VARIANTS && strcmp(t, VNAME[v]) != 0) v++;
        if (v == N_VARIANTS) {
            fprintf(stderr,
                    "bench-engine: unknown variant '%s' (quant, quant_q8act, quant_blasattn, f32, "
                    "f32_streamattn, quant_f16kv)\n",
                    t);
            return 2;
        }
        vwant[v] = 1;
    }
    for (int e = 0; e < N_ENGINES; e++) {
        int any = 0;
        for (int vi = 0; vi < ENGINE_NVARS[e]; vi++) any |= vwant[ENGINE_VARS[e][vi]];
        if (want[e] && !any) {
            fprintf(stderr, "bench-engine: --variants names no variant of the %s engine\n",
                    ENAME[e]);
            return 2;
        }
        if (!want[e] && any && variants_arg[0]) {
            fprintf(stderr, "bench-engine: --variants names a %s variant, --engines excludes it\n",
                    ENAME[e]);
            return 2;
        }
    }

    ap_err err;
    ap_err_clear(&err);
    ap_gguf *g = NULL;
    if (ap_gguf_open(model_path, &g, &err)) return fail(&err);
    int max_ctx = ctxs[n_ctx - 1] + gen; /* --rewind decodes past the last context */
    int32_t *stream = malloc(sizeof(int32_t) * (size_t)max_ctx);
    row_t rows[MAX_CTX];
    memset(rows, 0, sizeof rows);
    if (!stream) return 1;
    uint64_t s = 12345;
    for (int i = 0; i < max_ctx; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        stream[i] = (int32_t)((s >> 33) % 20000u);
    }
    /* Fault the file's pages in first, so neither engine's resident
     * growth counts the mapping. */
    volatile uint8_t touch = 0;
    for (int64_t i = 0; i < ap_gguf_n_tensors(g); i++) {
        const ap_gguf_tensor *t = ap_gguf_tensor_at(g, i);
        for (size_t o = 0; o < t->nbytes; o += 4096) touch ^= ((const uint8_t *)t->data)[o];
    }
    (void)touch;
    engine_t eng[N_ENGINES];
    int rc = run_engines(g, want, vwant, rewind, ctxs, n_ctx, gen, reps, threads, stream, rows, eng,
                         &err);
    const double peak_mb = (double)ap_peak_rss_bytes() / 1e6;
    for (int e = 0; e < N_ENGINES; e++) engine_close(&eng[e]);
    if (rc) return fail(&err);
    ap_machine_limits L;
    int have_limits = skip_limits ? 0 : ap_machine_limits_measure(threads, &L);

    if (have_limits)
        printf("machine: read %.1f GB/s (1 thread %.1f), copy %.1f, triad %.1f; AVX2 FMA %.1f "
               "GFLOP/s (1 thread %.1f), %d threads\n",
               L.read, L.read1, L.copy, L.triad, L.fma, L.fma1, threads);
    for (int r = 0; r < n_ctx; r++) {
        const row_t *w = &rows[r];
        printf("ctx=%d", w->ctx);
        printf(" prefill_tps");
        for (int e = 0; e < N_ENGINES; e++)
            if (want[e]) printf(" %s=%.1f", ENAME[e], w->prefill_tps[e]);
        if (want[E_QUANT] && want[E_F32])
            printf(" (x%.2f)", w->prefill_tps[E_QUANT] / w->prefill_tps[E_F32]);
        printf(" decode_tps");
        for (int v = 0; v < N_VARIANTS; v++)
            if (w->decode_tps[v] > 0) printf(" %s=%.1f", VNAME[v], w->decode_tps[v]);
        if (w->decode_tps[V_QUANT] > 0 && w->decode_tps[V_F32_OLD] > 0)
            printf(" (quant/f32 x%.2f)", w->decode_tps[V_QUANT] / w->decode_tps[V_F32_OLD]);
        if (w->decode_tps[V_F16KV] > 0 && w->decode_tps[V_QUANT] > 0)
            printf(" (f16kv/quant x%.2f)", w->decode_tps[V_F16KV] / w->decode_tps[V_QUANT]);
        if (w->have_f16kv_err)
            printf(" f16kv_logits_rel_l2=%.2e argmax_same=%d", w->f16kv_rel_l2,
                   w->f16kv_argmax_same);
        printf("\n");
        if (have_limits) {
            printf("  limits:");
            for (int v = 0; v < N_VARIANTS; v++)
                if (w->decode_tps[v] > 0)
                    printf(" %s %.0f MB/token %.2f of read bw;", VNAME[v], w->decode_bytes[v] / 1e6,
                           w->decode_bytes[v] * w->decode_tps[v] / 1e9 / L.read);
            for (int e = 0; e < N_ENGINES; e++)
                if (want[e])
                    printf(" prefill %s %.1f GFLOP/s %.2f of FMA peak;", ENAME[e],
                           w->prefill_gflops[e], w->prefill_gflops[e] / L.fma);
            printf("\n");
        }
    }
    for (int e = 0; e < N_ENGINES; e++)
        if (want[e])
            printf("%s engine: %.0f MB resident after load (weights and buffers)\n", ENAME[e],
                   eng[e].resident_mb);
    const ap_hparams *hp = NULL;
    for (int e = 0; e < N_ENGINES && !hp; e++)
        if (want[e]) hp = &eng[e].hp;
    printf("KV cache of %d tokens:", ctxs[n_ctx - 1]);
    const ap_kv_type kvts[2] = {AP_KV_F32, AP_KV_F16};
    for (int k = 0, sep = 0; k < 2; k++) {
        int used = 0;
        for (int e = 0; e < N_ENGINES; e++) used |= want[e] && ENGINE_KV[e] == kvts[k];
        if (!used) continue;
        printf("%s %.0f MB %s", sep++ ? "," : "",
               2.0 * hp->n_layer * ctxs[n_ctx - 1] * hp->n_head_kv * hp->head_dim *
                   (double)ap_kv_type_size(kvts[k]) / 1e6,
               ap_kv_type_name(kvts[k]));
    }
    printf(" per engine; process peak RSS: %.0f MB (engines side by side)\n", peak_mb);

    if (json_path) {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "model", model_path);
        cJSON_AddNumberToObject(root, "threads", threads);
        cJSON_AddNumberToObject(root, "gen", gen);
        cJSON_AddNumberToObject(root, "reps", reps);
        cJSON_AddBoolToObject(root, "rewind", rewind);
        cJSON_AddNumberToObject(root, "peak_rss_mb", peak_mb);
        for (int e = 0; e < N_ENGINES; e++) {
            if (!want[e]) continue;
            char key[64];
            snprintf(key, sizeof key, "resident_mb_%s", ENAME[e]);
            cJSON_AddItemToObject(root, key, num(eng[e].resident_mb));
        }
        if (have_limits) {
            cJSON *mj = cJSON_AddObjectToObject(root, "machine");
            cJSON_AddItemToObject(mj, "read_gbs", num(L.read));
            cJSON_AddItemToObject(mj, "read_gbs_1thread", num(L.read1));
            cJSON_AddItemToObject(mj, "copy_gbs", num(L.copy));
            cJSON_AddItemToObject(mj, "triad_gbs", num(L.triad));
            cJSON_AddItemToObject(mj, "fma_gflops", num(L.fma));
            cJSON_AddItemToObject(mj, "fma_gflops_1thread", num(L.fma1));
        }
        cJSON *arr = cJSON_AddArrayToObject(root, "contexts");
        for (int r = 0; r < n_ctx; r++) {
            const row_t *w = &rows[r];
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "ctx", w->ctx);
            for (int e = 0; e < N_ENGINES; e++) {
                if (!want[e]) continue;
                char key[64];
                snprintf(key, sizeof key, "prefill_tps_%s", ENAME[e]);
                cJSON_AddItemToObject(o, key, num(w->prefill_tps[e]));
                snprintf(key, sizeof key, "prefill_gflops_%s", ENAME[e]);
                cJSON_AddItemToObject(o, key, num(w->prefill_gflops[e]));
            }
            for (int v = 0; v < N_VARIANTS; v++) {
                if (!(w->decode_tps[v] > 0)) continue;
                char key[64];
                snprintf(key, sizeof key, "decode_tps_%s", VNAME[v]);
                cJSON_AddItemToObject(o, key, num(w->decode_tps[v]));
                snprintf(key, sizeof key, "decode_bytes_%s", VNAME[v]);
                cJSON_AddItemToObject(o, key, num(w->decode_bytes[v]));
            }
            if (w->have_f16kv_err) {
                cJSON_AddItemToObject(o, "f16kv_logits_rel_l2", num(w->f16kv_rel_l2));
                cJSON_AddItemToObject(o, "f16kv_argmax_same", num(w->f16kv_argmax_same));
            }
            cJSON_AddItemToArray(arr, o);
        }
        char *txt = cJSON_Print(root);
        char tmp[1024];
        ap_tmp_name(tmp, sizeof tmp, json_path);
        FILE *f = txt ? fopen(tmp, "w") : NULL;
        int bad = !f;
        if (f) {
            bad = fputs(txt, f) < 0;
            bad |= fclose(f) != 0;
        }
        if (bad) {
            fprintf(stderr, "bench-engine: cannot write %s\n", tmp);
            rc = 1;
        } else if (ap_commit_file(tmp, json_path, &err)) {
            rc = fail(&err);
        }
        if (rc) remove(tmp);
        free(txt);
        cJSON_Delete(root);
    }
    free(stream);
    ap_gguf_free(g);
    return rc;
}
