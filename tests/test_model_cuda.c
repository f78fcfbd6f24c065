/* The CUDA engine (capture/model_cuda.c) against the CPU engine with
 * float32 weights (ap_model_opts.f32_weights: the same weight values, so
 * only summation order differs): logits within AP_TOL_CPU_GPU_REL relative
 * L2 after prefill and at every step of a greedy decode, on synthetic models
 * of several shapes and weight types, with the KV cache on the device and
 * offloaded to pinned host memory, and on the real SmolLM2 file when
 * present. Also truncate/reset (bit-for-bit repeats), argument errors, a
 * gguf that is not the model's file, and, on every machine, that create
 * fails cleanly without a GPU. GPU tests skip visibly without a device. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capture/gguf.h"
#include "capture/model.h"
#include "capture/model_cuda.h"
#include "capture/tokenizer.h"
#include "common/tolerance.h"
#include "common/util.h"
#include "helpers/synth_model.h"
#include "kernels/block_pool.h"

#define MODEL_PATH AP_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"

#define SKIP_WITHOUT_GPU()                                                                         \
    do {                                                                                           \
        if (ap_cuda_device_count() == 0)                                                           \
            cr_skip_test("GPU test skipped: no CUDA device (or no CUDA build)");                   \
    } while (0)

/* ------------------------------------------------------------- helpers */

typedef struct {
    char path[512];
    ap_gguf *g;
    ap_model *m; /* float32 weights: the reference the GPU engine must match */
} synth;

static void synth_open(synth *s, const ap_synth_opts *o) {
    ap_err err = {0};
    memset(s, 0, sizeof *s);
    ap_synth_tmp_path(s->path, sizeof s->path, "cuda", ".gguf");
    cr_assert_eq(ap_synth_model_write(s->path, o, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_gguf_open(s->path, &s->g, &err), AP_OK, "%s", err.msg);
    ap_model_opts mo;
    ap_model_opts_default(&mo);
    mo.f32_weights = 1;
    cr_assert_eq(ap_model_load_opts(s->g, &mo, &s->m, &err), AP_OK, "%s", err.msg);
}

static void synth_close(synth *s) {
    ap_model_free(s->m);
    ap_gguf_free(s->g);
    unlink(s->path);
}

static void make_tokens(int32_t *t, int n, int n_vocab, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (int32_t)((seed >> 33) % (uint64_t)n_vocab);
    }
}

static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof *p);
    cr_assert(p, "out of memory");
    return p;
}

/* GPU logits against the CPU's; returns the relative L2 error. */
static double check_close(const float *gpu, const float *cpu, int V, const char *what, int step) {
    double e = ap_rel_l2_f32(gpu, cpu, V);
    cr_assert(isfinite(e) && e <= AP_TOL_CPU_GPU_REL,
              "%s, step %d: GPU vs CPU logits rel L2 %.3g (tolerance %.0e)", what, step, e,
              AP_TOL_CPU_GPU_REL);
    return e;
}

static int32_t argmax(const float *x, int n) {
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Feed the same prefill chunks, then n_decode greedy tokens (the CPU's
 * choice), to both engines; every call's logits must agree. With offload,
 * a second GPU engine keeps its cache in pinned host memory and is checked
 * against the CPU too. */
static void run_parity(const char *name, const ap_synth_opts *o, int n_ctx, const int *chunks,
                       int n_chunks, int n_decode, int offload) {
    synth s;
    synth_open(&s, o);
    ap_err err = {0};
    ap_ctx *c = NULL;
    ap_cuda_model *cm = NULL;
    ap_cuda_model_opts co;
    ap_cuda_model_opts_default(&co);
    co.kv_offload = offload;
    cr_assert_eq(ap_ctx_create(s.m, n_ctx, 1, &c, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_create_opts(s.g, s.m, n_ctx, &co, &cm, &err), AP_OK, "%s: %s",
                 name, err.msg);
    const int V = ap_model_hparams(s.m)->n_vocab;
    int total = n_decode;
    for (int i = 0; i < n_chunks; i++) total += chunks[i];
    cr_assert(total <= n_ctx);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)total);
    cr_assert(tok);
    make_tokens(tok, total, V, 77);
    float *lc = falloc((size_t)V), *lg = falloc((size_t)V);
    double worst = 0.0;
    int at = 0, step = 0, agree = 0;

    for (int i = 0; i < n_chunks; i++, step++) {
        cr_assert_eq(ap_ctx_eval(c, tok + at, chunks[i], lc, 0, NULL, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ap_cuda_model_eval(cm, tok + at, chunks[i], lg, &err), AP_OK, "%s: %s", name,
                     err.msg);
        double e = check_close(lg, lc, V, name, step);
        if (e > worst) worst = e;
        at += chunks[i];
    }
    for (int i = 0; i < n_decode; i++, step++) {
        int32_t t = ap_sample(lc, V, 0.0f, 0, NULL);
        agree += argmax(lg, V) == t;
        cr_assert_eq(ap_ctx_eval(c, &t, 1, lc, 0, NULL, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ap_cuda_model_eval(cm, &t, 1, lg, &err), AP_OK, "%s: %s", name, err.msg);
        double e = check_close(lg, lc, V, name, step);
        if (e > worst) worst = e;
        at++;
    }
    cr_assert_eq(ap_cuda_model_n_past(cm), at);
    cr_assert_eq(ap_ctx_n_past(c), at);
    cr_log_info("%s%s: %d calls, worst logits rel L2 %.3g, greedy agreement %d/%d", name,
                offload ? " (KV offloaded)" : "", step, worst, agree, n_decode);
    free(tok);
    free(lc);
    free(lg);
    ap_cuda_model_free(cm);
    ap_ctx_free(c);
    synth_close(&s);
}

/* ------------------------------------------------ runs on every machine */

Test(model_cuda, create_fails_cleanly_without_a_gpu) {
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    synth s;
    synth_open(&s, &o);
    ap_err err = {0};
    ap_cuda_model *cm = (ap_cuda_model *)&err; /* any non-NULL value: create must clear it */

    /* A bad context length fails before any CUDA call (no-CUDA builds say
     * so first). */
    ap_status st = ap_cuda_model_create(s.g, s.m, 0, &cm, &err);
    cr_assert_neq(st, AP_OK);
    cr_assert_null(cm);
#ifdef AP_HAVE_CUDA
    cr_assert_eq(st, AP_ERR_RANGE, "%s", err.msg);
#else
    cr_assert_eq(st, AP_ERR_UNSUPPORTED, "%s", err.msg);
#endif

    if (ap_cuda_device_count() == 0) {
        /* Valid arguments: the missing CUDA (build or device) must be the
         * reason, in words. */
        ap_err_clear(&err);
        cm = (ap_cuda_model *)&err;
        ap_cuda_model_opts co;
        ap_cuda_model_opts_default(&co);
        for (int off = 0; off < 2; off++) {
            co.kv_offload = off;
            st = ap_cuda_model_create_opts(s.g, s.m, 128, &co, &cm, &err);
            cr_assert_neq(st, AP_OK, "create succeeded without a GPU");
            cr_assert_null(cm);
            cr_assert(err.msg[0] != '\0', "no error message");
#ifdef AP_HAVE_CUDA
            cr_log_info("no device (CUDA build): %s: %s", ap_status_name(st), err.msg);
#else
            cr_assert_eq(st, AP_ERR_UNSUPPORTED, "%s", err.msg);
            cr_assert(strstr(err.msg, "CUDA") != NULL, "%s", err.msg);
#endif
        }
    }
    ap_cuda_model_free(NULL);
    synth_close(&s);
}

/* ---------------------------------------------------------- GPU parity */

/* The default synthetic model (F32, tied, 4 heads in 2 GQA groups of
 * head_dim 16): a 600-token prefill runs as micro-batches of 512 + 88, a
 * second prefill starts mid-cache, then 20 decode steps. */
Test(model_cuda, synth_f32_matches_cpu) {
    SKIP_WITHOUT_GPU();
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    o.n_ctx = 1024;
    const int chunks[] = {600, 37};
    run_parity("f32 tied", &o, 1024, chunks, 2, 20, 0);
}

/* SmolLM2's GQA shape (3 query heads per KV head, head_dim 64), n_embd
 * unequal to n_head * head_dim, Q8_0 weights and embeddings, separate
 * output matrix. */
Test(model_cuda, synth_q8_untied_matches_cpu) {
    SKIP_WITHOUT_GPU();
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    o.n_layer = 3;
    o.n_embd = 192;
    o.n_head = 6;
    o.n_head_kv = 2;
    o.head_dim = 64;
    o.n_ff = 256;
    o.wtype = AP_GGML_Q8_0;
    o.embd_type = AP_GGML_Q8_0;
    o.tied = 0;
    o.seed = 5;
    const int chunks[] = {100};
    run_parity("q8_0 untied gqa3", &o, 512, chunks, 1, 20, 0);
}

/* One KV head for four query heads, Q4_1 weights, F16 embeddings; the
 * first call is a single token (decode attention over one key), the
 * second a prefill starting at position 1. */
Test(model_cuda, synth_q4_1_mqa_matches_cpu) {
    SKIP_WITHOUT_GPU();
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    o.n_embd = 128;
    o.n_head = 4;
    o.n_head_kv = 1;
    o.head_dim = 32;
    o.n_ff = 256;
    o.n_vocab = 400;
    o.wtype = AP_GGML_Q4_1;
    o.embd_type = AP_GGML_F16;
    o.seed = 9;
    const int chunks[] = {1, 99};
    run_parity("q4_1 mqa", &o, 512, chunks, 2, 20, 0);
}

/* KV cache in pinned host memory: prefill stages each layer on the
 * device, decode reads the host pages; 40 decode steps cross three
 * 16-key page boundaries. */
Test(model_cuda, offloaded_kv_matches_cpu) {
    SKIP_WITHOUT_GPU();
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    const int chunks[] = {200, 100};
    run_parity("f32 tied", &o, 512, chunks, 2, 40, 1);
}

/* Offloaded and device-resident caches run the same kernels on the same
 * values (only where K/V live differs, and the page table): on the GPU the
 * logits should be identical bit for bit, which is logged; the assertion is
 * the CPU/GPU tolerance, so a kernel that walks pages in another order
 * (as the CPU one does) still passes. */
Test(model_cuda, offloaded_kv_agrees_with_device_kv) {
    SKIP_WITHOUT_GPU();
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    synth s;
    synth_open(&s, &o);
    ap_err err = {0};
    ap_cuda_model *dev = NULL, *off = NULL;
    ap_cuda_model_opts co;
    ap_cuda_model_opts_default(&co);
    cr_assert_eq(ap_cuda_model_create_opts(s.g, s.m, 512, &co, &dev, &err), AP_OK, "%s", err.msg);
    co.kv_offload = 1;
    cr_assert_eq(ap_cuda_model_create_opts(s.g, s.m, 512, &co, &off, &err), AP_OK, "%s", err.msg);
    size_t dev_bytes = 0, pinned = 0, dev_bytes_off = 0, pinned_off = 0;
    ap_cuda_model_memory(dev, &dev_bytes, &pinned);
    ap_cuda_model_memory(off, &dev_bytes_off, &pinned_off);
    cr_expect_eq(pinned, 0);
    cr_expect_gt(pinned_off, 0);
    cr_expect_lt(dev_bytes_off, dev_bytes, "the offloaded engine holds its cache on the device");
    const int V = ap_model_hparams(s.m)->n_vocab;
    int32_t tok[160];
    make_tokens(tok, 160, V, 3);
    float *a = falloc((size_t)V), *b = falloc((size_t)V);
    double worst = 0.0;
    int identical = 0, calls = 0;
    /* A 130-token prefill, then 30 decode steps. */
    for (int i = 0, n = 130; i < 160; i += n, n = 1, calls++) {
        cr_assert_eq(ap_cuda_model_eval(dev, tok + i, n, a, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ap_cuda_model_eval(off, tok + i, n, b, &err), AP_OK, "%s", err.msg);
        double e = ap_rel_l2_f32(b, a, V);
        cr_assert(isfinite(e) && e <= AP_TOL_CPU_GPU_REL, "position %d: rel L2 %.3g", i, e);
        if (e > worst) worst = e;
        identical += memcmp(a, b, sizeof(float) * (size_t)V) == 0;
    }
    cr_log_info("offloaded vs device KV: %d/%d calls bit-identical, worst rel L2 %.3g", identical,
                calls, worst);
    free(a);
    free(b);
    ap_cuda_model_free(off);
    ap_cuda_model_free(dev);
    synth_close(&s);
}

/* ------------------------------------------------- cache and arguments */

Test(model_cuda, truncate_and_reset_repeat_bit_for_bit) {
    SKIP_WITHOUT_GPU();
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    synth s;
    synth_open(&s, &o);
    ap_err err = {0};
    ap_cuda_model *cm = NULL;
    cr_assert_eq(ap_cuda_model_create(s.g, s.m, 256, &cm, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_n_ctx(cm), 256);
    const int V = ap_model_hparams(s.m)->n_vocab;
    enum { P = 100, D = 5 };
    int32_t tok[P + D];
    make_tokens(tok, P + D, V, 11);
    float *first = falloc((size_t)V), *l = falloc((size_t)V), *rec = falloc((size_t)D * V);

    cr_assert_eq(ap_cuda_model_eval(cm, tok, P, first, &err), AP_OK, "%s", err.msg);
    for (int i = 0; i < D; i++)
        cr_assert_eq(ap_cuda_model_eval(cm, tok + P + i, 1, rec + (size_t)i * V, &err), AP_OK,
                     "%s", err.msg);
    cr_assert_eq(ap_cuda_model_n_past(cm), P + D);

    /* Rewind and decode the same tokens: same cache, same kernels. */
    cr_assert_eq(ap_cuda_model_truncate(cm, P, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_n_past(cm), P);
    for (int i = 0; i < D; i++) {
        cr_assert_eq(ap_cuda_model_eval(cm, tok + P + i, 1, l, &err), AP_OK, "%s", err.msg);
        cr_assert(memcmp(l, rec + (size_t)i * V, sizeof(float) * (size_t)V) == 0,
                  "decode step %d after truncate differs: rel L2 %.3g", i,
                  ap_rel_l2_f32(l, rec + (size_t)i * V, V));
    }

    cr_assert_eq(ap_cuda_model_truncate(cm, P + D + 1, &err), AP_ERR_RANGE);
    cr_assert_eq(ap_cuda_model_truncate(cm, -1, &err), AP_ERR_RANGE);
    cr_assert_eq(ap_cuda_model_n_past(cm), P + D);

    /* A different continuation after truncating, then reset and refill. */
    cr_assert_eq(ap_cuda_model_truncate(cm, P - 40, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_eval(cm, tok + 3, 7, NULL, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_n_past(cm), P - 33);
    ap_cuda_model_reset(cm);
    cr_assert_eq(ap_cuda_model_n_past(cm), 0);
    cr_assert_eq(ap_cuda_model_eval(cm, tok, P, l, &err), AP_OK, "%s", err.msg);
    cr_assert(memcmp(l, first, sizeof(float) * (size_t)V) == 0,
              "prefill after reset differs: rel L2 %.3g", ap_rel_l2_f32(l, first, V));
    cr_assert_eq(ap_cuda_model_truncate(cm, 0, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_n_past(cm), 0);

    free(first);
    free(l);
    free(rec);
    ap_cuda_model_free(cm);
    synth_close(&s);
}

Test(model_cuda, bad_tokens_and_overflow) {
    SKIP_WITHOUT_GPU();
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    synth s;
    synth_open(&s, &o);
    ap_err err = {0};
    ap_cuda_model *cm = NULL;
    const ap_hparams *hp = ap_model_hparams(s.m);
    const int V = hp->n_vocab;

    cr_assert_eq(ap_cuda_model_create(s.g, s.m, hp->n_ctx_train + 1, &cm, &err), AP_ERR_RANGE);
    cr_assert_null(cm);
    cr_assert_eq(ap_cuda_model_create(s.g, s.m, 64, &cm, &err), AP_OK, "%s", err.msg);
    int32_t tok[64];
    make_tokens(tok, 64, V, 5);
    float *l = falloc((size_t)V), *ref = falloc((size_t)V);
    cr_assert_eq(ap_cuda_model_eval(cm, tok, 10, ref, &err), AP_OK, "%s", err.msg);

    int32_t bad[3] = {tok[10], -1, tok[11]};
    cr_assert_eq(ap_cuda_model_eval(cm, bad, 3, l, &err), AP_ERR_ARG);
    bad[1] = V;
    cr_assert_eq(ap_cuda_model_eval(cm, bad, 3, l, &err), AP_ERR_ARG);
    cr_assert_eq(ap_cuda_model_eval(cm, tok, 0, l, &err), AP_ERR_ARG);
    cr_assert_eq(ap_cuda_model_eval(cm, NULL, 1, l, &err), AP_ERR_ARG);
    cr_assert_eq(ap_cuda_model_eval(cm, tok, 55, l, &err), AP_ERR_RANGE);
    cr_assert_eq(ap_cuda_model_n_past(cm), 10, "a failed eval moved the cache");

    /* Exactly full is fine; one more token is not. */
    cr_assert_eq(ap_cuda_model_eval(cm, tok + 10, 54, l, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_n_past(cm), 64);
    cr_assert_eq(ap_cuda_model_eval(cm, tok, 1, l, &err), AP_ERR_RANGE);
    cr_assert_eq(ap_cuda_model_n_past(cm), 64);

    /* The failures left nothing behind: the first prefill repeats. */
    ap_cuda_model_reset(cm);
    cr_assert_eq(ap_cuda_model_eval(cm, tok, 10, l, &err), AP_OK, "%s", err.msg);
    cr_assert(memcmp(l, ref, sizeof(float) * (size_t)V) == 0);

    free(l);
    free(ref);
    ap_cuda_model_free(cm);
    synth_close(&s);
}

/* Weights are read from the gguf by name and checked against the model's
 * shapes: a gguf that is not the model's file fails cleanly, naming the
 * tensor (and frees what create had already put on the device). */
Test(model_cuda, mismatched_gguf_is_rejected) {
    SKIP_WITHOUT_GPU();
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    synth s;
    synth_open(&s, &o);
    const char *bad[2] = {"blk.1.ffn_up.weight", "blk.0.attn_k.weight"};
    for (int i = 0; i < 2; i++) {
        ap_synth_opts ob = o;
        if (i == 0) ob.omit_tensor = bad[i];
        else ob.bad_shape_tensor = bad[i];
        char path[512];
        ap_synth_tmp_path(path, sizeof path, "cuda_bad", ".gguf");
        ap_err err = {0};
        ap_gguf *g = NULL;
        cr_assert_eq(ap_synth_model_write(path, &ob, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ap_gguf_open(path, &g, &err), AP_OK, "%s", err.msg);
        ap_cuda_model *cm = (ap_cuda_model *)&err;
        cr_assert_eq(ap_cuda_model_create(g, s.m, 128, &cm, &err), AP_ERR_FORMAT, "%s", err.msg);
        cr_assert_null(cm);
        cr_assert(strstr(err.msg, bad[i]) != NULL, "%s", err.msg);
        ap_gguf_free(g);
        unlink(path);
    }
    synth_close(&s);
}

/* ------------------------------------------------------- the real model */

Test(model_cuda, real_model_matches_cpu) {
    SKIP_WITHOUT_GPU();
    if (getenv("AP_SKIP_REAL_MODEL")) cr_skip_test("AP_SKIP_REAL_MODEL is set");
    if (!ap_file_exists(MODEL_PATH)) cr_skip_test("%s not found", MODEL_PATH);
    ap_err err = {0};
    ap_gguf *g = NULL;
    ap_model *m = NULL;
    ap_ctx *c = NULL;
    ap_tokenizer *tk = NULL;
    ap_cuda_model *cm = NULL;
    cr_assert_eq(ap_gguf_open(MODEL_PATH, &g, &err), AP_OK, "%s", err.msg);
    ap_model_opts mo;
    ap_model_opts_default(&mo);
    mo.f32_weights = 1;
    cr_assert_eq(ap_model_load_opts(g, &mo, &m, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_from_gguf(g, &tk, &err), AP_OK, "%s", err.msg);
    char *chat = NULL;
    cr_assert_eq(ap_tokenizer_chat(tk,
                                   "Explain in two sentences why the sky is blue, then name "
                                   "the physicist the effect is named after.",
                                   &chat, &err),
                 AP_OK, "%s", err.msg);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    cr_assert_eq(ap_tokenizer_encode(tk, chat, strlen(chat), 1, &ids, &n_ids, &err), AP_OK, "%s",
                 err.msg);
    enum { N_CTX = 256, GEN = 20 };
    cr_assert(n_ids > 8 && n_ids + GEN <= N_CTX, "%zu prompt tokens", n_ids);
    cr_assert_eq(ap_ctx_create(m, N_CTX, 2, &c, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_create(g, m, N_CTX, &cm, &err), AP_OK, "%s", err.msg);

    const int V = ap_model_hparams(m)->n_vocab;
    float *lc = falloc((size_t)V), *lg = falloc((size_t)V);
    cr_assert_eq(ap_ctx_eval(c, ids, (int)n_ids, lc, 0, NULL, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_cuda_model_eval(cm, ids, (int)n_ids, lg, &err), AP_OK, "%s", err.msg);
    double worst = check_close(lg, lc, V, "SmolLM2 prefill", 0);
    int agree = 0;
    for (int i = 0; i < GEN; i++) {
        int32_t t = ap_sample(lc, V, 0.0f, 0, NULL);
        agree += argmax(lg, V) == t;
        cr_assert_eq(ap_ctx_eval(c, &t, 1, lc, 0, NULL, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ap_cuda_model_eval(cm, &t, 1, lg, &err), AP_OK, "%s", err.msg);
        double e = check_close(lg, lc, V, "SmolLM2 decode", i + 1);
        if (e > worst) worst = e;
    }
    cr_log_info("SmolLM2, %zu prompt tokens + %d decode steps: worst logits rel L2 %.3g, greedy "
                "agreement %d/%d",
                n_ids, GEN, worst, agree, GEN);
    free(lc);
    free(lg);
    free(ids);
    free(chat);
    ap_cuda_model_free(cm);
    ap_ctx_free(c);
    ap_tokenizer_free(tk);
    ap_model_free(m);
    ap_gguf_free(g);
}
