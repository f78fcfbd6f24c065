#include "helpers/synth_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capture/gguf_write.h"

void ap_synth_opts_default(ap_synth_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_layer = 2;
    o->n_embd = 64;
    o->n_head = 4;
    o->n_head_kv = 2;
    o->head_dim = 16;
    o->n_ff = 96;
    o->n_vocab = 300;
    o->n_ctx = 512;
    o->rope_base = 10000.0f;
    o->rms_eps = 1e-5f;
    o->wtype = AP_GGML_F32;
    o->embd_type = AP_GGML_F32;
    o->tied = 1;
    o->seed = 1;
}

void ap_synth_tmp_path(char *buf, int n, const char *tag, const char *suffix) {
    static const char *dflt = "/tmp";
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = dflt;
    /* pid + address of a stack variable + a counter-free random part: tests
     * run in parallel processes, each possibly writing several files. */
    int local = 0;
    unsigned long r = (unsigned long)(uintptr_t)&local ^ (unsigned long)rand();
    snprintf(buf, (size_t)n, "%s/ap_%s_%ld_%lx%s", dir, tag ? tag : "tmp", (long)getpid(), r,
             suffix ? suffix : "");
}

/* ---- deterministic random numbers ---- */

static uint64_t mix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform with standard deviation sd (half-width sd*sqrt(3)). */
static void fill(float *x, size_t n, uint64_t *s, double mean, double sd) {
    double a = sd * sqrt(3.0);
    for (size_t i = 0; i < n; i++) {
        double u = (double)(mix(s) >> 11) * 0x1.0p-53;
        x[i] = (float)(mean + (2.0 * u - 1.0) * a);
    }
}

/* ---- tokenizer ---- */

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the rest
 * in order to U+0100... */
static unsigned byte_cp(int b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return (unsigned)b;
    int k = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF)))
            k++;
    return 256u + (unsigned)k;
}

/* Append the byte-level form of raw bytes s to out. */
static void enc(char *out, size_t cap, const char *s) {
    size_t n = strlen(out);
    for (const unsigned char *p = (const unsigned char *)s; *p && n + 3 < cap; p++) {
        unsigned cp = byte_cp(*p);
        if (cp < 0x80) {
            out[n++] = (char)cp;
        } else {
            out[n++] = (char)(0xC0 | (cp >> 6));
            out[n++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[n] = '\0';
}

/* Each merge joins tokens that exist by then (bytes or earlier merges). */
static const char *const MERGES[][2] = {
    {" ", "t"},  {"h", "e"},  {" t", "he"}, {"i", "n"},   {" ", "a"},   {"e", "r"},
    {"o", "n"},  {" ", "s"},  {"r", "e"},   {"a", "t"},   {" ", "w"},   {"e", "n"},
    {" ", "o"},  {"i", "s"},  {" ", "in"},  {"o", "r"},   {"e", "s"},   {" ", "c"},
    {"in", "g"}, {" ", "f"},  {"a", "n"},   {" ", "b"},   {" ", "p"},   {"e", "d"},
    {" a", "n"}, {" an", "d"}, {" o", "f"}, {" ", " "},   {"\n", "\n"}, {" ", "m"},
    {"l", "l"},  {" ", "h"},  {"i", "t"},   {" ", "is"},  {"o", "u"},   {" ", "d"},
    {"a", "l"},  {"t", "o"},  {" t", "o"},  {" ", "l"},   {"a", "r"},
};
#define N_MERGES ((int)(sizeof MERGES / sizeof MERGES[0]))
#define TOK_LEN 48

static ap_status add_tokenizer(ap_gguf_builder *b, int n_vocab, ap_err *err) {
    ap_status st = AP_OK;
    char (*tok)[TOK_LEN] = NULL;
    char (*mer)[2 * TOK_LEN] = NULL;
    const char **tp = NULL, **mp = NULL;
    int32_t *types = NULL;
    int n_merge = n_vocab - 259 < N_MERGES ? n_vocab - 259 : N_MERGES;
    if (n_vocab < 259) return ap_errf(err, AP_ERR_ARG, "synthetic vocab needs >= 259 tokens");

    tok = calloc((size_t)n_vocab, sizeof *tok);
    mer = calloc((size_t)N_MERGES, sizeof *mer);
    tp = calloc((size_t)n_vocab, sizeof *tp);
    mp = calloc((size_t)N_MERGES, sizeof *mp);
    types = calloc((size_t)n_vocab, sizeof *types);
    if (!tok || !mer || !tp || !mp || !types) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    strcpy(tok[0], "<|endoftext|>");
    strcpy(tok[1], "<|im_start|>");
    strcpy(tok[2], "<|im_end|>");
    for (int i = 0; i < 3; i++) types[i] = 3;
    for (int bb = 0; bb < 256; bb++) {
        char s[2] = {(char)bb, 0};
        if (bb == 0) {
            /* enc() stops at NUL; U+0100 is byte 0's code point. */
            strcpy(tok[3], "\xc4\x80");
        } else {
            enc(tok[3 + bb], TOK_LEN, s);
        }
        types[3 + bb] = 1;
    }
    for (int i = 0; i < n_merge; i++) {
        char l[TOK_LEN] = "", r[TOK_LEN] = "";
        enc(l, sizeof l, MERGES[i][0]);
        enc(r, sizeof r, MERGES[i][1]);
        snprintf(mer[i], sizeof mer[i], "%s %s", l, r);
        snprintf(tok[259 + i], TOK_LEN, "%s%s", l, r);
        types[259 + i] = 1;
    }
    for (int i = 259 + n_merge; i < n_vocab; i++) {
        snprintf(tok[i], TOK_LEN, "<|unused_%d|>", i);
        types[i] = 5;
    }
    for (int i = 0; i < n_vocab; i++) tp[i] = tok[i];
    for (int i = 0; i < n_merge; i++) mp[i] = mer[i];

    if ((st = ap_gguf_builder_set_str(b, "tokenizer.ggml.model", "gpt2", err))) goto cleanup;
    if ((st = ap_gguf_builder_set_str(b, "tokenizer.ggml.pre", "smollm", err))) goto cleanup;
    if ((st = ap_gguf_builder_set_arr_str(b, "tokenizer.ggml.tokens", tp, (uint64_t)n_vocab, err)))
        goto cleanup;
    if ((st = ap_gguf_builder_set_arr_i32(b, "tokenizer.ggml.token_type", types,
                                          (uint64_t)n_vocab, err)))
        goto cleanup;
    if ((st = ap_gguf_builder_set_arr_str(b, "tokenizer.ggml.merges", mp, (uint64_t)n_merge, err)))
        goto cleanup;
    if ((st = ap_gguf_builder_set_u32(b, "tokenizer.ggml.bos_token_id", 1, err))) goto cleanup;
    if ((st = ap_gguf_builder_set_u32(b, "tokenizer.ggml.eos_token_id", 2, err))) goto cleanup;
    if ((st = ap_gguf_builder_set_u32(b, "tokenizer.ggml.unknown_token_id", 0, err))) goto cleanup;
    if ((st = ap_gguf_builder_set_u32(b, "tokenizer.ggml.padding_token_id", 2, err))) goto cleanup;
    if ((st = ap_gguf_builder_set_bool(b, "tokenizer.ggml.add_bos_token", 0, err))) goto cleanup;

cleanup:
    free(tok);
    free(mer);
    free(tp);
    free(mp);
    free(types);
    return st;
}

/* ---- weights ---- */

static ap_status add_weight(ap_gguf_builder *b, const ap_synth_opts *o, const char *name,
                            ap_ggml_type type, int64_t ne0, int64_t ne1, double mean, double sd,
                            uint64_t *rng, ap_err *err) {
    ap_status st = AP_OK;
    float *v = NULL;
    void *raw = NULL;
    int n_dims = ne1 > 0 ? 2 : 1;
    int64_t ne[2] = {ne0, ne1 > 0 ? ne1 : 1};
    /* Draw the values even for omitted/altered tensors so every other
     * tensor keeps the same values across fault-injection variants. */
    size_t n = (size_t)ne[0] * (size_t)ne[1];
    if (!(v = malloc((n + (size_t)ne0 + 1) * sizeof *v))) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    fill(v, n, rng, mean, sd);
    if (o->omit_tensor && strcmp(o->omit_tensor, name) == 0) goto cleanup;
    if (o->bad_shape_tensor && strcmp(o->bad_shape_tensor, name) == 0) {
        if (n_dims == 1) ne[0] += 1;
        else ne[1] += 1;
        fill(v + n, (size_t)(n_dims == 1 ? 1 : ne0), rng, mean, sd);
    }
    if (o->raw_type_tensor && strcmp(o->raw_type_tensor, name) == 0) {
        size_t bytes = ap_ggml_row_size(o->raw_type, ne[0]) * (size_t)ne[1];
        if (bytes == 0) {
            st = ap_errf(err, AP_ERR_ARG, "%s: ne0 %lld does not fit raw type %d", name,
                         (long long)ne[0], (int)o->raw_type);
            goto cleanup;
        }
        if (!(raw = calloc(1, bytes))) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        st = ap_gguf_builder_add_tensor(b, name, o->raw_type, (uint32_t)n_dims, ne, raw, bytes,
                                        err);
        goto cleanup;
    }
    st = ap_gguf_builder_add_tensor_f32(b, name, type, (uint32_t)n_dims, ne, v, err);
cleanup:
    free(v);
    free(raw);
    return st;
}

ap_status ap_synth_model_write(const char *path, const ap_synth_opts *o, ap_err *err) {
    ap_status st = AP_OK;
    ap_gguf_builder *b = NULL;
    char name[96];
    uint64_t rng = o->seed * 0x2545F4914F6CDD1Dull + 7;
    const int E = o->n_embd, hd = o->head_dim, F = o->n_ff, V = o->n_vocab;
    const int qd = o->n_head * hd, kvd = o->n_head_kv * hd;

    if ((st = ap_gguf_builder_create(&b, err))) goto cleanup;
#define CK(call)                                                                               \
    do {                                                                                       \
        if ((st = (call))) goto cleanup;                                                       \
    } while (0)
    CK(ap_gguf_builder_set_str(b, "general.architecture", o->arch ? o->arch : "llama", err));
    CK(ap_gguf_builder_set_str(b, "general.name", "synthetic", err));
    CK(ap_gguf_builder_set_u32(b, "general.file_type", (uint32_t)o->wtype, err));
    CK(ap_gguf_builder_set_u32(b, "general.quantization_version", 2, err));
    /* The arch prefix follows general.architecture, as in real files. */
    const char *a = o->arch ? o->arch : "llama";
#define KEY(s) (snprintf(name, sizeof name, "%s.%s", a, s), name)
    CK(ap_gguf_builder_set_u32(b, KEY("context_length"), (uint32_t)o->n_ctx, err));
    CK(ap_gguf_builder_set_u32(b, KEY("embedding_length"), (uint32_t)E, err));
    CK(ap_gguf_builder_set_u32(b, KEY("block_count"), (uint32_t)o->n_layer, err));
    CK(ap_gguf_builder_set_u32(b, KEY("feed_forward_length"), (uint32_t)F, err));
    CK(ap_gguf_builder_set_u32(b, KEY("attention.head_count"), (uint32_t)o->n_head, err));
    if (!o->omit_head_count_kv)
        CK(ap_gguf_builder_set_u32(b, KEY("attention.head_count_kv"), (uint32_t)o->n_head_kv,
                                   err));
    CK(ap_gguf_builder_set_u32(b, KEY("rope.dimension_count"), (uint32_t)hd, err));
    if (hd * o->n_head != E) {
        CK(ap_gguf_builder_set_u32(b, KEY("attention.key_length"), (uint32_t)hd, err));
        CK(ap_gguf_builder_set_u32(b, KEY("attention.value_length"), (uint32_t)hd, err));
    }
    if (!o->omit_rope_base)
        CK(ap_gguf_builder_set_f32(b, KEY("rope.freq_base"), o->rope_base, err));
    CK(ap_gguf_builder_set_f32(b, KEY("attention.layer_norm_rms_epsilon"), o->rms_eps, err));
    if (o->rope_scaling_type)
        CK(ap_gguf_builder_set_str(b, KEY("rope.scaling.type"), o->rope_scaling_type, err));
    if (o->rope_scaling_factor > 0)
        CK(ap_gguf_builder_set_f32(b, KEY("rope.scaling.factor"), o->rope_scaling_factor, err));
    CK(ap_gguf_builder_set_u32(b, KEY("vocab_size"), (uint32_t)V, err));
#undef KEY
    CK(add_tokenizer(b, V, err));

    /* Scales: with unit-RMS normed inputs, q and k entries get variance
     * sd^2 E = 2, so q·k/sqrt(hd) has std ~2: peaked rows, not one-hot.
     * Everything else ~1/sqrt(fan_in) keeps the residual stream O(1). */
    const double sd_qk = sqrt(2.0 / (double)E);
    CK(add_weight(b, o, "token_embd.weight", o->embd_type, E, V, 0.0, 0.5, &rng, err));
    for (int l = 0; l < o->n_layer; l++) {
#define W(suffix, type, ne0, ne1, mean, sd)                                                    \
    do {                                                                                       \
        char nm[96];                                                                           \
        snprintf(nm, sizeof nm, "blk.%d.%s", l, suffix);                                       \
        CK(add_weight(b, o, nm, type, ne0, ne1, mean, sd, &rng, err));                         \
    } while (0)
        W("attn_norm.weight", AP_GGML_F32, E, 0, 1.0, 0.1);
        W("attn_q.weight", o->wtype, E, qd, 0.0, sd_qk);
        W("attn_k.weight", o->wtype, E, kvd, 0.0, sd_qk);
        W("attn_v.weight", o->wtype, E, kvd, 0.0, 1.0 / sqrt((double)E));
        W("attn_output.weight", o->wtype, qd, E, 0.0, 1.0 / sqrt((double)qd));
        W("ffn_norm.weight", AP_GGML_F32, E, 0, 1.0, 0.1);
        W("ffn_gate.weight", o->wtype, E, F, 0.0, 1.0 / sqrt((double)E));
        W("ffn_up.weight", o->wtype, E, F, 0.0, 1.0 / sqrt((double)E));
        W("ffn_down.weight", o->wtype, F, E, 0.0, 1.0 / sqrt((double)F));
#undef W
    }
    CK(add_weight(b, o, "output_norm.weight", AP_GGML_F32, E, 0, 1.0, 0.1, &rng, err));
    if (!o->tied) CK(add_weight(b, o, "output.weight", o->embd_type, E, V, 0.0, 0.5, &rng, err));
#undef CK
    st = ap_gguf_builder_write(b, path, err);

cleanup:
    ap_gguf_builder_free(b);
    return st;
}
