/* bench-engine-gpu: decode speed of the CUDA engine (capture/model_cuda.h)
 * against the CPU engine, in the same process, as ratios; and the CUDA
 * engine with its KV cache offloaded to pinned host memory against the one
 * keeping it in device memory.
 *
 *   bench-engine-gpu [--model M.gguf] [--contexts 1024,4096,8192] [--gen 32]
 *                    [--reps 2] [--threads N] [--no-cpu] [--no-offload]
 *                    [--synthetic] [--json OUT]
 *
 * Engines: cpu = the default CPU engine (quantized weights, exact kernels,
 * --threads threads, default all cores up to 16); gpu = the CUDA engine,
 * float32 weights and KV cache in device memory; gpu_offload = the same
 * with the KV cache in pinned host memory, read by decode attention over
 * the bus. At each context N every engine is prefilled to N - gen (the CPU
 * in 512-token calls, the GPU in one call: its own micro-batches), then
 * decodes gen tokens, --reps times from the same prefill (truncate), best
 * kept. Times are wall clock per eval call, which for the GPU engines
 * includes the copy of the logits to the host and the synchronisation.
 * The logits of the last decode step are compared across engines (relative
 * L2: same tokens, same weights, so only summation order differs).
 *
 * Without --model the default SmolLM2 file is used when present; otherwise
 * (GPU nodes get no model file), or with --synthetic, a synthetic model
 * with SmolLM2-135M's shapes (Q4_1 matrices, Q8_0 embeddings, random
 * weights) is built in memory: speed does not depend on the weights'
 * values. Token ids are a
 * fixed pseudo-random stream. Without a CUDA device (or a CUDA build) it
 * prints one skip line and exits 0. */
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
#include "common/tolerance.h"
#include "common/util.h"
#include "kernels/block_pool.h"
#include "kernels/cuda_util.h"

#ifndef AP_SOURCE_DIR
#define AP_SOURCE_DIR "."
#endif

#define MAX_CTX 16
#define CPU_CHUNK 512

enum { E_CPU, E_GPU, E_OFF, N_ENG };
static const char *const ENAME[N_ENG] = {"cpu", "gpu", "gpu_offload"};

typedef struct {
    int on;
    ap_ctx *c;         /* E_CPU */
    ap_cuda_model *cm; /* E_GPU, E_OFF */
    float *logits;     /* [n_vocab] of the last call */
    double pre_time;   /* cumulative prefill seconds and tokens */
    int pre_tokens;
} engine;

typedef struct {
    int ctx;
    double decode_tps[N_ENG], prefill_tps[N_ENG];
    double rel_gpu_cpu, rel_off_gpu; /* -1: not measured */
} row_t;

static ap_status eng_eval(engine *e, const int32_t *t, int n, ap_err *err) {
    if (e->c) return ap_ctx_eval(e->c, t, n, e->logits, 0, NULL, err);
    return ap_cuda_model_eval(e->cm, t, n, e->logits, err);
}

static int eng_n_past(const engine *e) {
    return e->c ? ap_ctx_n_past(e->c) : ap_cuda_model_n_past(e->cm);
}

static ap_status eng_truncate(engine *e, int n, ap_err *err) {
    return e->c ? ap_ctx_truncate(e->c, n, err) : ap_cuda_model_truncate(e->cm, n, err);
}

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

/* ------------------------------------------------------------------ run */

typedef struct {
    const char *model_path; /* NULL: synthetic */
    const char *json_path;
    int ctxs[MAX_CTX], n_ctx;
    int gen, reps, threads, want[N_ENG];
} bench_opts;

static ap_status write_json(const bench_opts *o, const char *device, const char *model,
                            const engine *eng, const row_t *rows, const size_t *dev_bytes,
                            double pinned_mb, ap_err *err) {
    ap_status st = AP_OK;
    char tmp[1024];
    char *txt = NULL;
    FILE *f = NULL;
    cJSON *root = cJSON_CreateObject();
    if (!root) return ap_errf(err, AP_ERR_NOMEM, "out of memory for the JSON report");
    cJSON_AddStringToObject(root, "device", device);
    cJSON_AddStringToObject(root, "model", model);
    cJSON_AddNumberToObject(root, "cpu_threads", o->threads);
    cJSON_AddNumberToObject(root, "gen", o->gen);
    cJSON_AddNumberToObject(root, "reps", o->reps);
    for (int e = E_GPU; e < N_ENG; e++) {
        if (!eng[e].on) continue;
        char key[64];
        snprintf(key, sizeof key, "device_mb_%s", ENAME[e]);
        cJSON_AddNumberToObject(root, key, (double)dev_bytes[e] / 1e6);
    }
    if (eng[E_OFF].on) cJSON_AddNumberToObject(root, "pinned_mb_gpu_offload", pinned_mb);
    cJSON *arr = cJSON_AddArrayToObject(root, "contexts");
    for (int r = 0; r < o->n_ctx; r++) {
        const row_t *w = &rows[r];
        cJSON *it = cJSON_CreateObject();
        cJSON_AddNumberToObject(it, "ctx", w->ctx);
        for (int e = 0; e < N_ENG; e++) {
            if (!eng[e].on) continue;
            char key[64];
            snprintf(key, sizeof key, "decode_tps_%s", ENAME[e]);
            cJSON_AddNumberToObject(it, key, w->decode_tps[e]);
            snprintf(key, sizeof key, "prefill_tps_%s", ENAME[e]);
            cJSON_AddNumberToObject(it, key, w->prefill_tps[e]);
        }
        if (eng[E_CPU].on)
            cJSON_AddNumberToObject(it, "decode_ratio_gpu_cpu",
                                    w->decode_tps[E_GPU] / w->decode_tps[E_CPU]);
        if (eng[E_OFF].on)
            cJSON_AddNumberToObject(it, "decode_ratio_offload_gpu",
                                    w->decode_tps[E_OFF] / w->decode_tps[E_GPU]);
        if (w->rel_gpu_cpu >= 0)
            cJSON_AddNumberToObject(it, "logits_rel_l2_gpu_cpu", w->rel_gpu_cpu);
        if (w->rel_off_gpu >= 0)
            cJSON_AddNumberToObject(it, "logits_rel_l2_offload_gpu", w->rel_off_gpu);
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

static ap_status run(const bench_opts *o, ap_err *err) {
    ap_status st = AP_OK;
    ap_gguf *g = NULL;
    ap_model *m = NULL;
    uint8_t *synth = NULL;
    int32_t *stream = NULL;
    engine eng[N_ENG];
    row_t rows[MAX_CTX];
    size_t dev_bytes[N_ENG] = {0};
    size_t pinned = 0;
    char device[256], model[512];
    const int max_ctx = o->ctxs[o->n_ctx - 1];
    memset(eng, 0, sizeof eng);

    if ((st = ap_cuda_device_name(device, sizeof device, err))) goto cleanup;
    if (o->model_path) {
        if ((st = ap_gguf_open(o->model_path, &g, err))) goto cleanup;
        snprintf(model, sizeof model, "%s", o->model_path);
    } else {
        size_t size = 0;
        double t0 = ap_now_seconds();
        if ((st = build_synthetic(max_ctx, &synth, &size, err))) goto cleanup;
        if ((st = ap_gguf_open_memory(synth, size, "synthetic", &g, err))) goto cleanup;
        snprintf(model, sizeof model, "synthetic (SmolLM2-135M shapes, Q4_1 + Q8_0, random)");
        fprintf(stderr, "bench-engine-gpu: synthetic model built in %.1f s (%.0f MB)\n",
                ap_now_seconds() - t0, (double)size / 1e6);
    }
    if ((st = ap_model_load(g, &m, err))) goto cleanup;
    const ap_hparams *hp = ap_model_hparams(m);
    const int V = hp->n_vocab;
    if (max_ctx > hp->n_ctx_train) {
        st = ap_errf(err, AP_ERR_RANGE, "context %d exceeds the model's %d", max_ctx,
                     hp->n_ctx_train);
        goto cleanup;
    }
    if (!(stream = malloc(sizeof(int32_t) * (size_t)max_ctx))) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the token stream");
        goto cleanup;
    }
    uint64_t s = 12345;
    const uint64_t id_range = V < 20000 ? (uint64_t)V : 20000u;
    for (int i = 0; i < max_ctx; i++) stream[i] = (int32_t)(rng_next(&s) % id_range);

    for (int e = 0; e < N_ENG; e++) {
        engine *E = &eng[e];
        if (!o->want[e]) continue;
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
            co.kv_offload = e == E_OFF;
            st = ap_cuda_model_create_opts(g, m, max_ctx, &co, &E->cm, err);
            if (st == AP_OK)
                ap_cuda_model_memory(E->cm, &dev_bytes[e], e == E_OFF ? &pinned : NULL);
        }
        if (st) goto cleanup;
        E->on = 1;
        /* Warm-up: loads every kernel and cuBLAS's choices once (CUDA loads
         * modules lazily, at first launch), touches CPU buffers. */
        if ((st = eng_eval(E, stream, 8, err)) || (st = eng_eval(E, stream + 8, 1, err)))
            goto cleanup;
        if ((st = eng_truncate(E, 0, err))) goto cleanup;
        fprintf(stderr, "bench-engine-gpu: %s engine ready in %.1f s\n", ENAME[e],
                ap_now_seconds() - t0);
    }

    printf("# bench-engine-gpu on %s; model %s; CPU engine %d threads; %d decode tokens, best "
           "of %d\n",
           device, model, o->threads, o->gen, o->reps);
    if (eng[E_GPU].on)
        printf("# gpu engine: %.0f MB device memory", (double)dev_bytes[E_GPU] / 1e6);
    if (eng[E_OFF].on)
        printf("; offload engine: %.0f MB device, %.0f MB pinned host (KV)",
               (double)dev_bytes[E_OFF] / 1e6, (double)pinned / 1e6);
    printf("\n");

    double t_start = ap_now_seconds();
    for (int r = 0; r < o->n_ctx; r++) {
        row_t *w = &rows[r];
        memset(w, 0, sizeof *w);
        w->ctx = o->ctxs[r];
        w->rel_gpu_cpu = w->rel_off_gpu = -1.0;
        const int target = w->ctx - o->gen;
        for (int e = 0; e < N_ENG; e++) {
            engine *E = &eng[e];
            if (!E->on) continue;
            for (int at = eng_n_past(E); at < target; at = eng_n_past(E)) {
                int n = target - at;
                if (E->c && n > CPU_CHUNK) n = CPU_CHUNK;
                double t = ap_now_seconds();
                if ((st = eng_eval(E, stream + at, n, err))) goto cleanup;
                E->pre_time += ap_now_seconds() - t;
                E->pre_tokens += n;
            }
            w->prefill_tps[e] = E->pre_tokens / E->pre_time;
        }
        double best[N_ENG];
        for (int e = 0; e < N_ENG; e++) best[e] = INFINITY;
        for (int rep = 0; rep < o->reps; rep++) {
            for (int e = 0; e < N_ENG; e++) {
                engine *E = &eng[e];
                if (!E->on) continue;
                if ((st = eng_truncate(E, target, err))) goto cleanup;
                double t = ap_now_seconds();
                for (int i = 0; i < o->gen; i++)
                    if ((st = eng_eval(E, stream + target + i, 1, err))) goto cleanup;
                double dt = ap_now_seconds() - t;
                if (dt < best[e]) best[e] = dt;
            }
        }
        for (int e = 0; e < N_ENG; e++)
            if (eng[e].on) w->decode_tps[e] = o->gen / best[e];
        /* Every engine ends on the same token at the same position. */
        if (eng[E_CPU].on && eng[E_GPU].on)
            w->rel_gpu_cpu = ap_rel_l2_f32(eng[E_GPU].logits, eng[E_CPU].logits, V);
        if (eng[E_OFF].on && eng[E_GPU].on)
            w->rel_off_gpu = ap_rel_l2_f32(eng[E_OFF].logits, eng[E_GPU].logits, V);

        printf("ctx=%d decode_tps", w->ctx);
        for (int e = 0; e < N_ENG; e++)
            if (eng[e].on) printf(" %s=%.1f", ENAME[e], w->decode_tps[e]);
        if (eng[E_CPU].on) printf(" (gpu/cpu x%.2f)", w->decode_tps[E_GPU] / w->decode_tps[E_CPU]);
        if (eng[E_OFF].on)
            printf(" (offload/gpu x%.2f)", w->decode_tps[E_OFF] / w->decode_tps[E_GPU]);
        printf(" prefill_tps");
        for (int e = 0; e < N_ENG; e++)
            if (eng[e].on) printf(" %s=%.0f", ENAME[e], w->prefill_tps[e]);
        if (w->rel_gpu_cpu >= 0) printf(" logits_rel_l2 gpu-cpu=%.2e", w->rel_gpu_cpu);
        if (w->rel_off_gpu >= 0) printf(" offload-gpu=%.2e", w->rel_off_gpu);
        printf("\n");
        fflush(stdout);
        fprintf(stderr, "bench-engine-gpu: context %d done (%.0f s)\n", w->ctx,
                ap_now_seconds() - t_start);
    }
    printf("# KV cache at %d tokens: %.0f MB (float32 K and V, all layers); logits tolerance "
           "GPU vs CPU in tests: %.0e\n",
           max_ctx, 2.0 * hp->n_layer * max_ctx * hp->n_head_kv * hp->head_dim * 4 / 1e6,
           AP_TOL_CPU_GPU_REL);
    if (o->json_path)
        st = write_json(o, device, model, eng, rows, dev_bytes, (double)pinned / 1e6, err);

cleanup:
    for (int e = 0; e < N_ENG; e++) {
        ap_ctx_free(eng[e].c);
        ap_cuda_model_free(eng[e].cm);
        free(eng[e].logits);
    }
    free(stream);
    ap_model_free(m);
    ap_gguf_free(g);
    free(synth); /* after the gguf that points into it */
    return st;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: bench-engine-gpu [--model M.gguf] [--contexts 1024,4096,8192] [--gen 32]\n"
            "                        [--reps 2] [--threads N] [--no-cpu] [--no-offload]\n"
            "                        [--synthetic] [--json OUT]\n"
            "Decode tokens/s of the CUDA engine vs the CPU engine (same process, ratios), and\n"
            "with the KV cache offloaded to pinned host memory vs kept on the device. Without\n"
            "--model: models/SmolLM2-135M-Instruct.Q4_1.gguf if present, else a synthetic model\n"
            "of its shapes (always with --synthetic). Without a CUDA device: prints a skip line\n"
            "and exits 0.\n");
}

int main(int argc, char **argv) {
    bench_opts o;
    memset(&o, 0, sizeof o);
    o.gen = 32;
    o.reps = 2;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    o.threads = ncpu < 1 ? 1 : ncpu > 16 ? 16 : (int)ncpu;
    o.want[E_CPU] = o.want[E_GPU] = o.want[E_OFF] = 1;
    char contexts_arg[256] = "1024,4096,8192";
    int synthetic = 0;
    static const struct option lo[] = {
        {"model", 1, 0, 'm'}, {"contexts", 1, 0, 'c'}, {"gen", 1, 0, 'g'},
        {"reps", 1, 0, 'r'},  {"threads", 1, 0, 't'},  {"json", 1, 0, 'j'},
        {"no-cpu", 0, 0, 'C'}, {"no-offload", 0, 0, 'O'}, {"synthetic", 0, 0, 'S'},
        {"help", 0, 0, 'h'},  {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
        switch (c) {
        case 'm': o.model_path = optarg; break;
        case 'c': snprintf(contexts_arg, sizeof contexts_arg, "%s", optarg); break;
        case 'g': o.gen = atoi(optarg); break;
        case 'r': o.reps = atoi(optarg); break;
        case 't': o.threads = atoi(optarg); break;
        case 'j': o.json_path = optarg; break;
        case 'C': o.want[E_CPU] = 0; break;
        case 'O': o.want[E_OFF] = 0; break;
        case 'S': synthetic = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (o.gen < 1 || o.reps < 1 || o.threads < 1 || o.threads > 256) {
        fprintf(stderr, "bench-engine-gpu: --gen, --reps must be >= 1, --threads in [1, 256]\n");
        return 2;
    }
    for (char *save = NULL, *t = strtok_r(contexts_arg, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        int v = atoi(t);
        if (o.n_ctx == MAX_CTX || v <= o.gen || (o.n_ctx > 0 && v <= o.ctxs[o.n_ctx - 1])) {
            fprintf(stderr,
                    "bench-engine-gpu: bad context '%s' (ascending, above --gen, at most %d)\n",
                    t, MAX_CTX);
            return 2;
        }
        o.ctxs[o.n_ctx++] = v;
    }
    if (o.n_ctx == 0) {
        fprintf(stderr, "bench-engine-gpu: no contexts\n");
        return 2;
    }
    if (ap_cuda_device_count() == 0) {
        printf("bench-engine-gpu: no CUDA device (or no CUDA build): skipped\n");
        return 0;
    }
    static const char default_model[] = AP_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (synthetic) o.model_path = NULL;
    else if (!o.model_path && ap_file_exists(default_model)) o.model_path = default_model;
    ap_err err;
    ap_err_clear(&err);
    if (run(&o, &err) != AP_OK) {
        fprintf(stderr, "bench-engine-gpu: %s\n", err.msg);
        return 1;
    }
    return 0;
}
