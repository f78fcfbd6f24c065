/* Every architecture the engine is meant to run, against transformers.
 *
 * tests/fixtures/arch holds one tiny random-weight model per architecture
 * (llama, llama3 rope scaling, mistral, qwen2, qwen3, gemma3), converted to
 * F32 GGUF by llama.cpp's converter, with transformers' float32 eager output
 * on a fixed 96-token sequence (scripts/ref/make_arch_fixtures.py; index.json
 * also records, per model, what the engine must know beyond the GGUF keys).
 *
 * Each model runs twice: the whole sequence as one prefill, and a shorter
 * prefill followed by single-token decode steps (the decode attention path).
 * Both runs must reproduce the reference attention rows, the logits at the
 * stored positions and the argmax at every position. An architecture the
 * engine cannot load fails with the engine's load error: the fixtures are
 * the acceptance test for that architecture, not an optional extra. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/gguf.h"
#include "capture/model.h"
#include "common/tolerance.h"
#include "common/util.h"

#define ARCH_DIR AP_SOURCE_DIR "/tests/fixtures/arch"

static void *read_fix(const char *name, size_t want_bytes) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", ARCH_DIR, name);
    char *data = NULL;
    size_t len = 0;
    ap_err err = {0};
    cr_assert_eq(ap_read_file(path, &data, &len, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(len, want_bytes, "%s: %zu bytes, want %zu", path, len, want_bytes);
    return data;
}

static int json_int(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItem(o, key);
    cr_assert(cJSON_IsNumber(v), "index.json: '%s' is not a number", key);
    return (int)cJSON_GetNumberValue(v);
}

static int argmax_f(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* The reference of one model, as index.json and the binary files give it. */
typedef struct {
    const char *name;
    int T, V, n_decode;
    int32_t *tok, *amax;
    float *margin;
    int n_lpos;
    int *lpos;
    float *logits; /* [n_lpos][V] */
    int n_rows;
    int *rl, *rh, *rp;
    size_t *roff;
    float *attn;
} fixture;

static void fixture_load(fixture *fx, const cJSON *m) {
    memset(fx, 0, sizeof *fx);
    fx->name = cJSON_GetStringValue(cJSON_GetObjectItem(m, "name"));
    fx->T = json_int(m, "n_tokens");
    fx->V = json_int(m, "n_vocab");
    fx->n_decode = json_int(m, "n_decode");
    cr_assert(fx->T > fx->n_decode && fx->n_decode >= 1);
    const cJSON *files = cJSON_GetObjectItem(m, "files");
#define FILE_OF(k) cJSON_GetStringValue(cJSON_GetObjectItem(files, k))
    size_t T = (size_t)fx->T;
    fx->tok = read_fix(FILE_OF("tokens"), T * 4);
    fx->amax = read_fix(FILE_OF("argmax"), T * 4);
    fx->margin = read_fix(FILE_OF("margin"), T * 4);
    const cJSON *lpos = cJSON_GetObjectItem(m, "logits_pos");
    fx->n_lpos = cJSON_GetArraySize(lpos);
    fx->lpos = calloc((size_t)fx->n_lpos, sizeof(int));
    cr_assert(fx->lpos);
    for (int k = 0; k < fx->n_lpos; k++) {
        fx->lpos[k] = (int)cJSON_GetNumberValue(cJSON_GetArrayItem(lpos, k));
        cr_assert(fx->lpos[k] >= 0 && fx->lpos[k] < fx->T);
    }
    fx->logits = read_fix(FILE_OF("logits"), (size_t)fx->n_lpos * fx->V * 4);
    const cJSON *rows = cJSON_GetObjectItem(m, "attn_rows");
    fx->n_rows = cJSON_GetArraySize(rows);
    cr_assert(fx->n_rows > 0);
    fx->rl = calloc((size_t)fx->n_rows, sizeof(int));
    fx->rh = calloc((size_t)fx->n_rows, sizeof(int));
    fx->rp = calloc((size_t)fx->n_rows, sizeof(int));
    fx->roff = calloc((size_t)fx->n_rows, sizeof(size_t));
    cr_assert(fx->rl && fx->rh && fx->rp && fx->roff);
    size_t floats = 0;
    for (int i = 0; i < fx->n_rows; i++) {
        const cJSON *e = cJSON_GetArrayItem(rows, i);
        fx->rl[i] = json_int(e, "layer");
        fx->rh[i] = json_int(e, "head");
        fx->rp[i] = json_int(e, "pos");
        fx->roff[i] = (size_t)json_int(e, "offset");
        cr_assert(fx->rp[i] >= 0 && fx->rp[i] < fx->T && fx->roff[i] == floats,
                  "index.json: attention row %d is out of place", i);
        floats += (size_t)fx->rp[i] + 1;
    }
    fx->attn = read_fix(FILE_OF("attn"), floats * 4);
#undef FILE_OF
}

static void fixture_free(fixture *fx) {
    free(fx->tok);
    free(fx->amax);
    free(fx->margin);
    free(fx->lpos);
    free(fx->logits);
    free(fx->rl);
    free(fx->rh);
    free(fx->rp);
    free(fx->roff);
    free(fx->attn);
}

/* Observer state: one slot per wanted row. Rows of different (layer, head)
 * may arrive concurrently, but each wanted row belongs to exactly one
 * (layer, head, pos), so no slot is written by two threads. */
typedef struct {
    const fixture *fx;
    float **got;
    int *seen;
} row_sink;

static void sink_row(void *u, int l, int h, int pos, const float *p, int len) {
    row_sink *s = u;
    const fixture *fx = s->fx;
    for (int i = 0; i < fx->n_rows; i++) {
        if (fx->rl[i] != l || fx->rh[i] != h || fx->rp[i] != pos) continue;
        if (len == pos + 1) memcpy(s->got[i], p, (size_t)len * sizeof *p);
        s->seen[i]++;
    }
}

/* Run the sequence as a prefill of n_prefill tokens, then one token per
 * eval, and compare everything with the reference. */
static void run_and_compare(const ap_model *m, const fixture *fx, int n_prefill) {
    const int T = fx->T, V = fx->V;
    const char *how = n_prefill == T ? "one prefill" : "prefill + decode";
    float *logits = malloc((size_t)T * V * sizeof(float));
    row_sink sink = {fx, calloc((size_t)fx->n_rows, sizeof(float *)),
                     calloc((size_t)fx->n_rows, sizeof(int))};
    cr_assert(logits && sink.got && sink.seen);
    int min_pos = T;
    for (int i = 0; i < fx->n_rows; i++) {
        sink.got[i] = calloc((size_t)fx->rp[i] + 1, sizeof(float));
        cr_assert(sink.got[i]);
        if (fx->rp[i] < min_pos) min_pos = fx->rp[i];
    }
    ap_attn_observer obs = {.user = &sink, .rows_from = min_pos, .on_row = sink_row};
    ap_ctx *c = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_ctx_create(m, T, 2, &c, &err), AP_OK, "%s: %s", fx->name, err.msg);
    for (int at = 0; at < T;) {
        int n = at == 0 ? n_prefill : 1;
        cr_assert_eq(ap_ctx_eval(c, fx->tok + at, n, logits + (size_t)at * V, 1, &obs, &err),
                     AP_OK, "%s (%s) at %d: %s", fx->name, how, at, err.msg);
        at += n;
    }
    cr_expect_eq(ap_ctx_n_past(c), T);

    double worst_l2 = 0.0, worst_attn = 0.0;
    int argmax_bad = 0;
    for (int p = 0; p < T; p++) {
        int am = argmax_f(logits + (size_t)p * V, V);
        if (am != fx->amax[p]) {
            argmax_bad++;
            cr_expect(0, "%s (%s) position %d: argmax %d, want %d (reference top-2 margin %.3g)",
                      fx->name, how, p, am, fx->amax[p], fx->margin[p]);
        }
    }
    for (int k = 0; k < fx->n_lpos; k++) {
        int p = fx->lpos[k];
        double e = ap_rel_l2_f32(logits + (size_t)p * V, fx->logits + (size_t)k * V, V);
        if (e > worst_l2) worst_l2 = e;
        cr_expect(e <= AP_TOL_LOGITS_REL_L2, "%s (%s) position %d%s: logits rel L2 %.3g", fx->name,
                  how, p, p >= n_prefill ? " (decode)" : "", e);
    }
    for (int i = 0; i < fx->n_rows; i++) {
        cr_expect_eq(sink.seen[i], 1, "%s (%s) layer %d head %d pos %d: row reported %d times",
                     fx->name, how, fx->rl[i], fx->rh[i], fx->rp[i], sink.seen[i]);
        double e = ap_max_abs_err_f32(sink.got[i], fx->attn + fx->roff[i], fx->rp[i] + 1);
        if (e > worst_attn) worst_attn = e;
        cr_expect(e <= AP_TOL_ATTN_ABS, "%s (%s) layer %d head %d pos %d%s: attention abs err %.3g",
                  fx->name, how, fx->rl[i], fx->rh[i], fx->rp[i],
                  fx->rp[i] >= n_prefill ? " (decode)" : "", e);
    }
    cr_log_info("%s, %s (%d + %d tokens): max attention abs err %.3g, worst logits rel L2 %.3g, "
                "argmax agrees at %d/%d positions",
                fx->name, how, n_prefill, T - n_prefill, worst_attn, worst_l2, T - argmax_bad, T);
    ap_ctx_free(c);
    for (int i = 0; i < fx->n_rows; i++) free(sink.got[i]);
    free(sink.got);
    free(sink.seen);
    free(logits);
}

/* The f16 KV cache (ap_model_opts.kv_type) on the same sequence, prefill
 * then decode: every layer kind of the architecture (sliding-window ones
 * included) reads binary16 keys and values; logits at the stored positions
 * stay within AP_TOL_KV_F16_LOGITS_REL_L2 of the reference. */
static void f16_cache_close(const ap_gguf *g, const fixture *fx) {
    const int T = fx->T, V = fx->V, n_prefill = T - fx->n_decode;
    ap_err err = {0};
    ap_model_opts o;
    ap_model_opts_default(&o);
    o.kv_type = AP_KV_F16;
    ap_model *m = NULL;
    ap_ctx *c = NULL;
    float *logits = malloc((size_t)T * V * sizeof(float));
    cr_assert(logits);
    cr_assert_eq(ap_model_load_opts(g, &o, &m, &err), AP_OK, "%s: %s", fx->name, err.msg);
    cr_assert_eq(ap_ctx_create(m, T, 2, &c, &err), AP_OK, "%s: %s", fx->name, err.msg);
    for (int at = 0; at < T;) {
        int n = at == 0 ? n_prefill : 1;
        cr_assert_eq(ap_ctx_eval(c, fx->tok + at, n, logits + (size_t)at * V, 1, NULL, &err),
                     AP_OK, "%s (f16 cache) at %d: %s", fx->name, at, err.msg);
        at += n;
    }
    double worst = 0.0;
    for (int k = 0; k < fx->n_lpos; k++) {
        int p = fx->lpos[k];
        double e = ap_rel_l2_f32(logits + (size_t)p * V, fx->logits + (size_t)k * V, V);
        if (e > worst) worst = e;
        cr_expect(e <= AP_TOL_KV_F16_LOGITS_REL_L2, "%s (f16 cache) position %d: logits rel L2 %.3g",
                  fx->name, p, e);
    }
    cr_log_info("%s, f16 KV cache: logits rel L2 %.3g against transformers", fx->name, worst);
    ap_ctx_free(c);
    ap_model_free(m);
    free(logits);
}

static void check_arch(const char *name) {
    ap_err err = {0};
    char *js = NULL;
    size_t jl = 0;
    cr_assert_eq(ap_read_file(ARCH_DIR "/index.json", &js, &jl, &err), AP_OK, "%s", err.msg);
    cJSON *idx = cJSON_Parse(js);
    free(js);
    cr_assert(idx, "tests/fixtures/arch/index.json does not parse");
    const cJSON *m = NULL, *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(idx, "models")) {
        const char *n = cJSON_GetStringValue(cJSON_GetObjectItem(it, "name"));
        if (n && strcmp(n, name) == 0) m = it;
    }
    cr_assert(m, "index.json has no model '%s' (run scripts/ref/make_arch_fixtures.py)", name);

    const char *file = cJSON_GetStringValue(cJSON_GetObjectItem(m, "gguf"));
    const char *sha = cJSON_GetStringValue(cJSON_GetObjectItem(m, "gguf_sha256"));
    const char *arch = cJSON_GetStringValue(cJSON_GetObjectItem(m, "gguf_arch"));
    cr_assert(file && sha && arch);
    char path[1024], hex[65];
    snprintf(path, sizeof path, "%s/%s", ARCH_DIR, file);
    cr_assert_eq(ap_sha256_file(path, hex, &err), AP_OK, "%s", err.msg);
    cr_assert_str_eq(hex, sha, "%s is not the file the fixtures were made from", path);

    ap_gguf *g = NULL;
    ap_model *model = NULL;
    cr_assert_eq(ap_gguf_open(path, &g, &err), AP_OK, "%s: %s", path, err.msg);
    /* The point of this test for an architecture the engine does not run
     * yet: fail here, with the engine's reason. */
    cr_assert_eq(ap_model_load(g, &model, &err), AP_OK, "%s (GGUF arch %s): %s", name, arch,
                 err.msg);

    const ap_hparams *hp = ap_model_hparams(model);
    const cJSON *hc = cJSON_GetObjectItem(m, "hf_config");
    const cJSON *facts = cJSON_GetObjectItem(m, "engine_facts");
    cr_expect_str_eq(hp->arch, arch);
    cr_expect_eq(hp->n_layer, json_int(hc, "num_hidden_layers"));
    cr_expect_eq(hp->n_embd, json_int(hc, "hidden_size"));
    cr_expect_eq(hp->n_head, json_int(hc, "num_attention_heads"));
    cr_expect_eq(hp->n_head_kv, json_int(hc, "num_key_value_heads"));
    cr_expect_eq(hp->head_dim, json_int(facts, "head_dim"));
    cr_expect_eq(hp->n_ff, json_int(hc, "intermediate_size"));
    cr_expect_eq(hp->n_vocab, json_int(m, "n_vocab"));
    cr_expect_eq(hp->tied_output, cJSON_IsTrue(cJSON_GetObjectItem(facts, "tied_output")));

    fixture fx;
    fixture_load(&fx, m);
    run_and_compare(model, &fx, fx.T);
    run_and_compare(model, &fx, fx.T - fx.n_decode);
    f16_cache_close(g, &fx);
    fixture_free(&fx);
    ap_model_free(model);
    ap_gguf_free(g);
    cJSON_Delete(idx);
}

Test(arch, llama) { check_arch("llama"); }
Test(arch, llama3_rope_scaling) { check_arch("llama3"); }
Test(arch, mistral) { check_arch("mistral"); }
Test(arch, qwen2) { check_arch("qwen2"); }
Test(arch, qwen2_yarn) { check_arch("qwen2-yarn"); }
Test(arch, llama_yarn_keys) { check_arch("llama-yarn"); }
Test(arch, qwen3) { check_arch("qwen3"); }
Test(arch, gemma3) { check_arch("gemma3"); }

/* Every model in the index has a test above: a fixture added by the
 * generator without a test here would otherwise go unchecked. */
Test(arch, every_fixture_has_a_test) {
    static const char *const tested[] = {"llama",      "llama3",     "mistral", "qwen2",
                                         "qwen2-yarn", "llama-yarn", "qwen3",   "gemma3"};
    ap_err err = {0};
    char *js = NULL;
    size_t jl = 0;
    cr_assert_eq(ap_read_file(ARCH_DIR "/index.json", &js, &jl, &err), AP_OK, "%s", err.msg);
    cJSON *idx = cJSON_Parse(js);
    free(js);
    cr_assert(idx);
    const cJSON *it;
    int n = 0;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(idx, "models")) {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(it, "name"));
        int found = 0;
        for (size_t k = 0; k < sizeof tested / sizeof *tested; k++)
            found |= name && strcmp(name, tested[k]) == 0;
        cr_expect(found, "fixture model '%s' has no test in tests/test_arch.c", name ? name : "?");
        n++;
    }
    cr_expect_eq(n, (int)(sizeof tested / sizeof *tested));
    cJSON_Delete(idx);
}
