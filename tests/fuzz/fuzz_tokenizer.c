/* libFuzzer target for the tokenizer.
 *
 * Every input is encoded with special-token parsing on and off, by the real
 * SmolLM2 tokenizer when the model file is present, by four small built-in
 * byte-level vocabularies (one per pre-tokenizer) and by two small
 * SentencePiece ones (byte fallback; with and without the space prefix), and
 * decoded back. Checks: no crash or sanitizer report, every id in range, and
 * decode(encode(x)) == x (not with the space prefix, which transformers'
 * rule makes lossy for text that starts with a space).
 * For the real vocabulary the round trip holds up to the bytes that have no
 * one-byte token (SmolLM2 lacks 21; llama.cpp and HF drop them too).
 *
 *   ./fuzz_tokenizer tests/fuzz/corpus/tokenizer
 * The model is taken from $AP_FUZZ_MODEL, else models/SmolLM2-135M-Instruct.Q4_1.gguf
 * under the source tree this file was compiled from. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/gguf.h"
#include "capture/tokenizer.h"

/* Loaded once per process: loading the 49k vocabulary per input would
 * dominate the run. */
static ap_gguf *model_gguf;
static ap_tokenizer *model_tok;
static uint8_t model_has_byte[256];
static ap_tokenizer *tiny_tok[4];
static ap_tokenizer *spm_tok[2];

static void die(const char *what, const ap_err *err) {
    fprintf(stderr, "fuzz_tokenizer: %s: %s\n", what, err ? err->msg : "");
    abort();
}

static size_t put_cp(uint32_t c, char *out) {
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    out[0] = (char)(0xC0 | (c >> 6));
    out[1] = (char)(0x80 | (c & 0x3F));
    return 2;
}

/* 256 byte tokens, a few merges that chain, and special tokens sharing
 * prefixes, so the merge heap and the special matcher both get exercised. */
static ap_tokenizer *make_tiny(ap_pretok pre) {
    static const char *extra_raw[] = {"th", "the", " the", "in",       "ing", "  ",  "    ",
                                      "12", " 1",  "'s",   "\xc3\xa9", "aa",  "aaaa"};
    static const char *merge_raw[][2] = {{"t", "h"},  {"th", "e"}, {" ", "the"},     {"i", "n"},
                                         {"in", "g"}, {" ", " "},  {"  ", "  "},     {"1", "2"},
                                         {" ", "1"},  {"'", "s"},  {"\xc3", "\xa9"}, {"a", "a"},
                                         {"aa", "aa"}};
    static const char *special[] = {"<|im_start|>", "<|im_end|>", "<|im_start|>x", "<u>"};
    enum { N_EXTRA = sizeof extra_raw / sizeof extra_raw[0], N_SPECIAL = 4 };
    char *tokens[256 + N_EXTRA + N_SPECIAL];
    int32_t types[256 + N_EXTRA + N_SPECIAL];
    char *merges[N_EXTRA];
    int n = 0;
    for (int b = 0; b < 256; b++) {
        tokens[n] = calloc(3, 1);
        put_cp(ap_tokenizer_byte_to_unicode((uint8_t)b), tokens[n]);
        types[n++] = 1;
    }
    for (int i = 0; i < N_EXTRA; i++) {
        tokens[n] = calloc(2 * strlen(extra_raw[i]) + 1, 1);
        size_t o = 0;
        for (const char *p = extra_raw[i]; *p; p++)
            o += put_cp(ap_tokenizer_byte_to_unicode((uint8_t)*p), tokens[n] + o);
        types[n++] = 1;
        merges[i] = calloc(2 * strlen(extra_raw[i]) + 2, 1);
        o = 0;
        for (const char *p = merge_raw[i][0]; *p; p++)
            o += put_cp(ap_tokenizer_byte_to_unicode((uint8_t)*p), merges[i] + o);
        merges[i][o++] = ' ';
        for (const char *p = merge_raw[i][1]; *p; p++)
            o += put_cp(ap_tokenizer_byte_to_unicode((uint8_t)*p), merges[i] + o);
    }
    for (int i = 0; i < N_SPECIAL; i++) {
        tokens[n] = strdup(special[i]);
        types[n++] = i == 3 ? 4 : 3;
    }
    ap_tokenizer_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.tokens = (const char *const *)tokens;
    spec.token_types = types;
    spec.n_vocab = n;
    spec.merges = (const char *const *)merges;
    spec.n_merges = N_EXTRA;
    spec.pre = pre;
    spec.bos_id = spec.eos_id = -1;
    ap_tokenizer *t = NULL;
    ap_err err = {0};
    if (ap_tokenizer_create(&spec, &t, &err) != AP_OK) die("tiny vocabulary", &err);
    for (int i = 0; i < n; i++) free(tokens[i]);
    for (int i = 0; i < N_EXTRA; i++) free(merges[i]);
    return t;
}

/* SentencePiece: <unk>, <s>, </s>, the 256 <0xXX> byte tokens, pieces that
 * chain merges (scores favour longer pieces), a control and a user-defined
 * token. */
static ap_tokenizer *make_tiny_spm(int space_prefix) {
    static const char *pieces[] = {"\xe2\x96\x81",     "t",   "h",   "e",  "\xe2\x96\x81t",
                                   "\xe2\x96\x81th",   "\xe2\x96\x81the", "in", "ing", "a",
                                   "aa",              "aaaa", "\xc3\xa9", "1",  "12"};
    enum { N_PIECES = sizeof pieces / sizeof pieces[0], N = 3 + 256 + N_PIECES + 2 };
    char *tokens[N];
    int32_t types[N];
    float scores[N];
    int n = 0;
    static const char *head[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) {
        tokens[n] = strdup(head[i]);
        types[n] = i == 0 ? 2 : 3;
        scores[n++] = 0.0f;
    }
    for (int b = 0; b < 256; b++) {
        tokens[n] = calloc(8, 1);
        snprintf(tokens[n], 8, "<0x%02X>", b);
        types[n] = 6;
        scores[n++] = 0.0f;
    }
    for (int i = 0; i < N_PIECES; i++) {
        tokens[n] = strdup(pieces[i]);
        types[n] = 1;
        scores[n++] = -(float)(N_PIECES - i); /* later (longer) pieces merge first */
    }
    tokens[n] = strdup("<ctrl>");
    types[n] = 3;
    scores[n++] = 0.0f;
    tokens[n] = strdup("<u>");
    types[n] = 4;
    scores[n++] = 0.0f;
    ap_tokenizer_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.model = AP_TOK_SPM;
    spec.tokens = (const char *const *)tokens;
    spec.token_types = types;
    spec.scores = scores;
    spec.n_vocab = n;
    spec.bos_id = 1;
    spec.eos_id = 2;
    spec.unk_id = 0;
    spec.add_space_prefix = space_prefix;
    ap_tokenizer *t = NULL;
    ap_err err = {0};
    if (ap_tokenizer_create(&spec, &t, &err) != AP_OK) die("tiny SentencePiece vocabulary", &err);
    for (int i = 0; i < n; i++) free(tokens[i]);
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    tiny_tok[0] = make_tiny(AP_PRE_GPT2);
    tiny_tok[1] = make_tiny(AP_PRE_SMOLLM);
    tiny_tok[2] = make_tiny(AP_PRE_LLAMA3);
    tiny_tok[3] = make_tiny(AP_PRE_QWEN2);
    spm_tok[0] = make_tiny_spm(0);
    spm_tok[1] = make_tiny_spm(1);

    char path[4096];
    const char *env = getenv("AP_FUZZ_MODEL");
    if (env) {
        snprintf(path, sizeof path, "%s", env);
    } else {
        const char *self = __FILE__;
        const char *tail = strstr(self, "tests/fuzz/fuzz_tokenizer.c");
        int root = tail ? (int)(tail - self) : 0;
        snprintf(path, sizeof path, "%.*smodels/SmolLM2-135M-Instruct.Q4_1.gguf", root, self);
    }
    ap_err err = {0};
    if (ap_gguf_open(path, &model_gguf, &err) != AP_OK) {
        fprintf(stderr, "fuzz_tokenizer: no model (%s); built-in vocabularies only\n", err.msg);
        return 0;
    }
    if (ap_tokenizer_from_gguf(model_gguf, &model_tok, &err) != AP_OK) die("model tokenizer", &err);
    for (int b = 0; b < 256; b++) {
        char s[3];
        size_t k = put_cp(ap_tokenizer_byte_to_unicode((uint8_t)b), s);
        model_has_byte[b] = ap_tokenizer_find(model_tok, s, k) >= 0;
    }
    fprintf(stderr, "fuzz_tokenizer: using %s\n", path);
    return 0;
}

/* Encode, check ids, decode, compare with `want` (want_len bytes). */
static void check(const ap_tokenizer *t, const uint8_t *data, size_t size, int special,
                  const uint8_t *want, size_t want_len) {
    /* want NULL: no round-trip comparison (ids and decode still checked). */
    int32_t *ids = NULL;
    size_t n = 0;
    ap_err err = {0};
    if (ap_tokenizer_encode(t, (const char *)data, size, special, &ids, &n, &err) != AP_OK)
        die("encode", &err);
    int64_t nv = ap_tokenizer_n_vocab(t);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= nv) die("id out of range", NULL);
    char *back = NULL;
    size_t blen = 0;
    if (ap_tokenizer_decode(t, ids, n, &back, &blen, &err) != AP_OK) die("decode", &err);
    if (want && (blen != want_len || memcmp(back, want, want_len) != 0)) {
        fprintf(stderr, "round trip differs: %zu bytes in, %zu out (special %d)\n", size, blen,
                special);
        abort();
    }
    free(ids);
    free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 1 << 16) return 0;
    const ap_tokenizer *tiny = tiny_tok[size ? data[0] % 4 : 0];
    check(tiny, data, size, 0, data, size);
    check(tiny, data, size, 1, data, size);
    /* SentencePiece spells spaces U+2581, so a literal U+2581 in the text
     * comes back as a space (transformers does the same). */
    uint8_t *sp = malloc(size ? size : 1);
    size_t m = 0;
    for (size_t i = 0; i < size; i++) {
        if (i + 2 < size && data[i] == 0xE2 && data[i + 1] == 0x96 && data[i + 2] == 0x81) {
            sp[m++] = ' ';
            i += 2;
        } else {
            sp[m++] = data[i];
        }
    }
    check(spm_tok[0], data, size, 0, sp, m);
    check(spm_tok[0], data, size, 1, sp, m);
    free(sp);
    check(spm_tok[1], data, size, 0, NULL, 0);
    check(spm_tok[1], data, size, 1, NULL, 0);
    if (model_tok) {
        uint8_t *kept = malloc(size ? size : 1);
        size_t k = 0;
        for (size_t i = 0; i < size; i++)
            if (model_has_byte[data[i]]) kept[k++] = data[i];
        check(model_tok, data, size, 0, kept, k);
        /* With special parsing the specials decode to their own text, so the
         * same filtered bytes come back (specials are all printable ASCII). */
        check(model_tok, data, size, 1, kept, k);
        free(kept);
    }
    return 0;
}
