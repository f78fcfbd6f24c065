/* Tokenizer tests: hand-made vocabularies with known answers, the GPT-2 byte
 * alphabet, round trips over arbitrary bytes, the pre-tokenizer patterns
 * against Oniguruma's splits (tests/fixtures/pretok_patterns.jsonl), and the
 * real SmolLM2 vocabulary against the reference ids in
 * tests/fixtures/tokenizer_smollm2.jsonl (scripts/ref/make_tokenizer_fixture.py
 * says which reference and why). */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/gguf.h"
#include "capture/gguf_write.h"
#include "capture/tokenizer.h"
#include "common/util.h"

#ifndef AP_SOURCE_DIR
#define AP_SOURCE_DIR "."
#endif
#ifndef AP_BINARY_DIR
#define AP_BINARY_DIR "."
#endif

#define MODEL_PATH AP_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define GEMMA_PATH AP_SOURCE_DIR "/models/gemma-3-270m-q4_k_m.gguf"
#define GEMMA_FIXTURE_PATH AP_SOURCE_DIR "/tests/fixtures/tokenizer_gemma3.jsonl"
#define SPM_SCORES_GGUF AP_SOURCE_DIR "/tests/fixtures/tokenizer_spm_scores.gguf"
#define SPM_SCORES_FIXTURE AP_SOURCE_DIR "/tests/fixtures/tokenizer_spm_scores.jsonl"
#define FIXTURE_PATH AP_SOURCE_DIR "/tests/fixtures/tokenizer_smollm2.jsonl"
#define PATTERNS_PATH AP_SOURCE_DIR "/tests/fixtures/pretok_patterns.jsonl"

/* ---------------------------------------------------------------------- */
/* tiny vocabularies                                                        */

#define TINY_MAX 1024

/* ids 0..255 are the 256 one-byte tokens in byte order, so a byte's token id
 * is the byte itself; extra tokens and merges follow. */
typedef struct {
    char *tok[TINY_MAX];
    int32_t type[TINY_MAX];
    int n;
    char *merge[TINY_MAX];
    int nm;
} tiny_vocab;

/* Raw bytes -> vocabulary spelling (GPT-2 alphabet, UTF-8). */
static char *map_bytes(const char *raw, size_t n) {
    char *out = malloc(2 * n + 1);
    cr_assert(out);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = ap_tokenizer_byte_to_unicode((uint8_t)raw[i]);
        if (c < 0x80) {
            out[o++] = (char)c;
        } else {
            out[o++] = (char)(0xC0 | (c >> 6));
            out[o++] = (char)(0x80 | (c & 0x3F));
        }
    }
    out[o] = '\0';
    return out;
}

static void tiny_init(tiny_vocab *v) {
    memset(v, 0, sizeof *v);
    for (int b = 0; b < 256; b++) {
        char raw = (char)b;
        v->tok[b] = map_bytes(&raw, 1);
        v->type[b] = 1;
    }
    v->n = 256;
}

/* Adds a token given as raw bytes; returns its id. */
static int32_t tiny_tok(tiny_vocab *v, const char *raw, int32_t type) {
    cr_assert(v->n < TINY_MAX);
    v->tok[v->n] = type == 1 ? map_bytes(raw, strlen(raw)) : strdup(raw);
    v->type[v->n] = type;
    return v->n++;
}

/* Adds the merge of two raw strings (and the merged token); returns its id. */
static int32_t tiny_merge(tiny_vocab *v, const char *a, const char *b) {
    char *ma = map_bytes(a, strlen(a)), *mb = map_bytes(b, strlen(b));
    size_t la = strlen(ma), lb = strlen(mb);
    char *m = malloc(la + lb + 2);
    cr_assert(m);
    memcpy(m, ma, la);
    m[la] = ' ';
    memcpy(m + la + 1, mb, lb + 1);
    cr_assert(v->nm < TINY_MAX);
    v->merge[v->nm++] = m;
    char *raw = malloc(strlen(a) + strlen(b) + 1);
    strcpy(raw, a);
    strcat(raw, b);
    int32_t id = tiny_tok(v, raw, 1);
    free(raw);
    free(ma);
    free(mb);
    return id;
}

static void tiny_free(tiny_vocab *v) {
    for (int i = 0; i < v->n; i++) free(v->tok[i]);
    for (int i = 0; i < v->nm; i++) free(v->merge[i]);
}

static ap_tokenizer *tiny_create(const tiny_vocab *v, ap_pretok pre) {
    ap_tokenizer_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.tokens = (const char *const *)v->tok;
    spec.token_types = v->type;
    spec.n_vocab = v->n;
    spec.merges = (const char *const *)v->merge;
    spec.n_merges = v->nm;
    spec.pre = pre;
    spec.bos_id = spec.eos_id = -1;
    ap_tokenizer *t = NULL;
    ap_err err = {0};
    ap_status st = ap_tokenizer_create(&spec, &t, &err);
    cr_assert_eq(st, AP_OK, "create: %s", err.msg);
    return t;
}

static size_t encode(const ap_tokenizer *t, const char *s, size_t n, int special, int32_t **ids) {
    size_t n_ids = 0;
    ap_err err = {0};
    ap_status st = ap_tokenizer_encode(t, s, n, special, ids, &n_ids, &err);
    cr_assert_eq(st, AP_OK, "encode: %s", err.msg);
    cr_assert(*ids != NULL);
    return n_ids;
}

static void expect_ids(const ap_tokenizer *t, const char *s, int special, const int32_t *want,
                       size_t n_want) {
    int32_t *ids = NULL;
    size_t n = encode(t, s, strlen(s), special, &ids);
    cr_assert_eq(n, n_want, "\"%s\": %zu tokens, expected %zu", s, n, n_want);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(ids[i], want[i], "\"%s\": token %zu is %d, expected %d", s, i, ids[i],
                     want[i]);
    free(ids);
}

#define EXPECT(t, s, special, ...)                                        \
    do {                                                                  \
        const int32_t want_[] = {__VA_ARGS__};                            \
        expect_ids(t, s, special, want_, sizeof want_ / sizeof want_[0]); \
    } while (0)

/* decode(encode(x)) must give back x byte for byte. */
static void expect_round_trip(const ap_tokenizer *t, const char *s, size_t n, int special) {
    int32_t *ids = NULL;
    size_t n_ids = encode(t, s, n, special, &ids);
    char *back = NULL;
    size_t blen = 0;
    ap_err err = {0};
    cr_assert_eq(ap_tokenizer_decode(t, ids, n_ids, &back, &blen, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(blen, n, "round trip of %zu bytes gave %zu", n, blen);
    cr_assert(memcmp(back, s, n) == 0, "round trip changed the bytes");
    cr_assert_eq(back[blen], '\0');
    free(ids);
    free(back);
}

/* Piece lengths of the pre-tokenizer split. */
static void expect_pieces(const ap_tokenizer *t, const char *s, const char *const *want,
                          size_t n_want) {
    size_t *ends = NULL, n = 0;
    ap_err err = {0};
    cr_assert_eq(ap_tokenizer_pretokenize(t, s, strlen(s), 0, &ends, &n, &err), AP_OK, "%s",
                 err.msg);
    cr_assert_eq(n, n_want, "\"%s\": %zu pieces, expected %zu", s, n, n_want);
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = ends[i] - pos;
        cr_assert(len == strlen(want[i]) && memcmp(s + pos, want[i], len) == 0,
                  "\"%s\": piece %zu is \"%.*s\", expected \"%s\"", s, i, (int)len, s + pos,
                  want[i]);
        pos = ends[i];
    }
    free(ends);
}

#define PIECES(t, s, ...)                                           \
    do {                                                            \
        const char *const want_[] = {__VA_ARGS__};                  \
        expect_pieces(t, s, want_, sizeof want_ / sizeof want_[0]); \
    } while (0)

/* ---------------------------------------------------------------------- */
/* byte alphabet                                                            */

Test(tokenizer, byte_map_round_trip_all_256) {
    int seen[0x144] = {0};
    int moved = 0;
    for (int b = 0; b < 256; b++) {
        uint32_t c = ap_tokenizer_byte_to_unicode((uint8_t)b);
        cr_assert(c < 0x144, "byte %d maps to U+%04X, outside the alphabet", b, c);
        cr_assert_eq(seen[c], 0, "U+%04X used twice", c);
        seen[c] = 1;
        cr_assert_eq(ap_tokenizer_unicode_to_byte(c), b);
        if (c != (uint32_t)b) moved++;
    }
    cr_assert_eq(moved, 68);
    /* The spellings everyone recognises in GPT-2 vocabularies. */
    cr_assert_eq(ap_tokenizer_byte_to_unicode(' '), 0x120); /* Ġ */
    cr_assert_eq(ap_tokenizer_byte_to_unicode('\n'), 0x10A); /* Ċ */
    cr_assert_eq(ap_tokenizer_byte_to_unicode('\t'), 0x109); /* ĉ */
    cr_assert_eq(ap_tokenizer_byte_to_unicode(0x00), 0x100);
    cr_assert_eq(ap_tokenizer_byte_to_unicode(0xAD), 0x143);
    cr_assert_eq(ap_tokenizer_byte_to_unicode('A'), 'A');
    cr_assert_eq(ap_tokenizer_byte_to_unicode(0xE9), 0xE9);
    cr_assert_eq(ap_tokenizer_unicode_to_byte(0x144), -1);
    cr_assert_eq(ap_tokenizer_unicode_to_byte(0x20), -1); /* space is moved, not kept */
    cr_assert_eq(ap_tokenizer_unicode_to_byte(0x4E00), -1);
}

Test(tokenizer, single_bytes_encode_to_their_tokens) {
    tiny_vocab v;
    tiny_init(&v);
    ap_tokenizer *t = tiny_create(&v, AP_PRE_GPT2);
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int32_t *ids = NULL;
        size_t n = encode(t, &c, 1, 1, &ids);
        cr_assert_eq(n, 1);
        cr_assert_eq(ids[0], b);
        char *back = NULL;
        size_t blen = 0;
        cr_assert_eq(ap_tokenizer_decode(t, ids, 1, &back, &blen, NULL), AP_OK);
        cr_assert_eq(blen, 1);
        cr_assert_eq((unsigned char)back[0], b);
        free(back);
        free(ids);
    }
    ap_tokenizer_free(t);
    tiny_free(&v);
}

/* ---------------------------------------------------------------------- */
/* BPE merges                                                               */

Test(tokenizer, merges_apply_lowest_rank_first) {
    tiny_vocab v;
    tiny_init(&v);
    int32_t bc = tiny_merge(&v, "b", "c"); /* rank 0 */
    int32_t ab = tiny_merge(&v, "a", "b"); /* rank 1 */
    ap_tokenizer *t = tiny_create(&v, AP_PRE_GPT2);
    EXPECT(t, "abc", 1, 'a', bc);
    EXPECT(t, "ab", 1, ab);
    ap_tokenizer_free(t);
    tiny_free(&v);

    tiny_init(&v);
    ab = tiny_merge(&v, "a", "b");
    bc = tiny_merge(&v, "b", "c");
    t = tiny_create(&v, AP_PRE_GPT2);
    EXPECT(t, "abc", 1, ab, 'c');
    ap_tokenizer_free(t);
    tiny_free(&v);
}

Test(tokenizer, merges_leftmost_on_ties_and_repeat) {
    tiny_vocab v;
    tiny_init(&v);
    int32_t aa = tiny_merge(&v, "a", "a");
    int32_t aaaa = tiny_merge(&v, "aa", "aa");
    ap_tokenizer *t = tiny_create(&v, AP_PRE_GPT2);
    EXPECT(t, "aaa", 1, aa, 'a');
    EXPECT(t, "aaaa", 1, aaaa);
    EXPECT(t, "aaaaa", 1, aaaa, 'a');
    EXPECT(t, "aaaaaa", 1, aaaa, aa);
    EXPECT(t, "aaaaaaaa", 1, aaaa, aaaa);
    ap_tokenizer_free(t);
    tiny_free(&v);
}

Test(tokenizer, merges_chain_into_words_with_space_prefix) {
    tiny_vocab v;
    tiny_init(&v);
    tiny_merge(&v, "h", "e");
    tiny_merge(&v, "l", "l");
    tiny_merge(&v, "he", "ll");
    int32_t hello = tiny_merge(&v, "hell", "o");
    tiny_merge(&v, " ", "w");
    tiny_merge(&v, "o", "r");
    tiny_merge(&v, " w", "or");
    tiny_merge(&v, "l", "d");
    int32_t world = tiny_merge(&v, " wor", "ld");
    ap_tokenizer *t = tiny_create(&v, AP_PRE_GPT2);
    EXPECT(t, "hello world", 1, hello, world);
    /* "o w" crosses a piece boundary: never merged even if a merge existed. */
    EXPECT(t, "hello", 1, hello);
    EXPECT(t, "hello  world", 1, hello, ' ', world);
    ap_tokenizer_free(t);
    tiny_free(&v);
}

Test(tokenizer, merges_never_cross_pieces) {
    tiny_vocab v;
    tiny_init(&v);
    tiny_merge(&v, "a", "."); /* "a." would need to join a letter and punctuation */
    tiny_merge(&v, "a", " "); /* and a letter with the following space */
    ap_tokenizer *t = tiny_create(&v, AP_PRE_GPT2);
    EXPECT(t, "a.", 1, 'a', '.');
    EXPECT(t, "a b", 1, 'a', ' ', 'b');
    ap_tokenizer_free(t);
    tiny_free(&v);
}

Test(tokenizer, merge_to_unknown_token_is_ignored_and_bad_merge_rejected) {
    tiny_vocab v;
    tiny_init(&v);
    /* A merge whose result is not in the vocabulary cannot fire. */
    v.merge[v.nm++] = strdup("x y");
    ap_tokenizer *t = tiny_create(&v, AP_PRE_GPT2);
    EXPECT(t, "xy", 1, 'x', 'y');
    ap_tokenizer_free(t);
    /* A merge without a separator is a malformed file. */
    v.merge[v.nm++] = strdup("xy");
    ap_tokenizer_spec spec = {0};
    spec.tokens = (const char *const *)v.tok;
    spec.n_vocab = v.n;
    spec.merges = (const char *const *)v.merge;
    spec.n_merges = v.nm;
    spec.bos_id = spec.eos_id = -1;
    ap_err err = {0};
    t = NULL;
    cr_assert_eq(ap_tokenizer_create(&spec, &t, &err), AP_ERR_FORMAT);
    cr_assert_null(t);
    cr_assert(strstr(err.msg, "merge 1") != NULL, "message: %s", err.msg);
    tiny_free(&v);
}

Test(tokenizer, llama3_takes_whole_piece_token) {
    /* ignore_merges: a piece in the vocabulary is one token even when the
     * merge path to it does not exist. */
    tiny_vocab v;
    tiny_init(&v);
    int32_t word = tiny_tok(&v, "word", 1);
    ap_tokenizer *t = tiny_create(&v, AP_PRE_LLAMA3);
    EXPECT(t, "word", 1, word);
    ap_tokenizer_free(t);
    t = tiny_create(&v, AP_PRE_GPT2);
    EXPECT(t, "word", 1, 'w', 'o', 'r', 'd');
    ap_tokenizer_free(t);
    tiny_free(&v);
}

/* ---------------------------------------------------------------------- */
/* digits                                                                   */

Test(tokenizer, smollm_splits_every_digit) {
    tiny_vocab v;
    tiny_init(&v);
    int32_t d12 = tiny_merge(&v, "1", "2");
    int32_t sp1 = tiny_merge(&v, " ", "1");
    int32_t a1 = tiny_merge(&v, "a", "1");
    ap_tokenizer *t = tiny_create(&v, AP_PRE_SMOLLM);
    EXPECT(t, "12", 1, '1', '2');
    EXPECT(t, " 1", 1, ' ', '1');
    EXPECT(t, "a1", 1, 'a', '1');
    EXPECT(t, "2024", 1, '2', '0', '2', '4');
    PIECES(t, "x 12 y", "x", " ", "1", "2", " y");
    PIECES(t, "v1.2", "v", "1", ".", "2");
    /* Other number code points (Arabic-Indic, superscript, Roman) too. */
    PIECES(t, "\xd9\xa1\xd9\xa2", "\xd9\xa1", "\xd9\xa2");
    PIECES(t, "x\xc2\xb2", "x", "\xc2\xb2");
    PIECES(t, "\xe2\x85\xa0\xe2\x85\xa1", "\xe2\x85\xa0", "\xe2\x85\xa1");
    ap_tokenizer_free(t);
    /* The plain GPT-2 pattern keeps numbers together with their space. */
    t = tiny_create(&v, AP_PRE_GPT2);
    EXPECT(t, "12", 1, d12);
    EXPECT(t, " 1", 1, sp1);
    EXPECT(t, "a1", 1, 'a', '1');
    ap_tokenizer_free(t);
    (void)a1;
    tiny_free(&v);
}

/* ---------------------------------------------------------------------- */
/* pre-tokenizer patterns                                                   */

Test(tokenizer, gpt2_pattern_known_splits) {
    tiny_vocab v;
    tiny_init(&v);
    ap_tokenizer *t = tiny_create(&v, AP_PRE_GPT2);
    PIECES(t, "Hello world", "Hello", " world");
    PIECES(t, "it's I'll we've they're I'm he'd don't", "it", "'s", " I", "'ll", " we", "'ve",
           " they", "'re", " I", "'m", " he", "'d", " don", "'t");
    PIECES(t, "IT'S", "IT", "'", "S"); /* case-sensitive contractions */
    PIECES(t, "'sup", "'s", "up");
    PIECES(t, "a   b", "a", "  ", " b");
    PIECES(t, "a\t\tb", "a", "\t", "\t", "b");
    PIECES(t, "x  ", "x", "  ");
    PIECES(t, "a\n\nb", "a", "\n", "\n", "b");
    PIECES(t, "a \n b", "a", " \n", " b");
    PIECES(t, "f(x) = 42;", "f", "(", "x", ")", " =", " 42", ";");
    PIECES(t, " ...!", " ...!");
    PIECES(t, "caf\xc3\xa9 na\xc3\xafve", "caf\xc3\xa9", " na\xc3\xafve");
    PIECES(t, "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x81", "\xe4\xbd\xa0\xe5\xa5\xbd", "\xef\xbc\x81");
    /* NBSP is whitespace (White_Space) but not the optional " " prefix. */
    PIECES(t,
           "a\xc2\xa0"
           "b",
           "a", "\xc2\xa0", "b");
    ap_tokenizer_free(t);
    tiny_free(&v);
}

Test(tokenizer, llama3_pattern_known_splits) {
    tiny_vocab v;
    tiny_init(&v);
    ap_tokenizer *t = tiny_create(&v, AP_PRE_LLAMA3);
    PIECES(t, "IT'S I'LL", "IT", "'S", " I", "'LL");
    PIECES(t, "12345678", "123", "456", "78");
    PIECES(t, "\tfoo", "\tfoo");
    PIECES(t, "!!foo", "!!", "foo");
    PIECES(t, "!foo", "!foo");
    PIECES(t, "x!!\n\ny", "x", "!!\n\n", "y");
    PIECES(t, "a  \n  b", "a", "  \n", " ", " b");
    PIECES(t, "a   b", "a", "  ", " b");
    PIECES(t, "x ?!", "x", " ?!");
    PIECES(t, "x'\xc5\xbfy", "x", "'\xc5\xbf", "y"); /* (?i) folds U+017F to s */
    ap_tokenizer_free(t);
    tiny_free(&v);
}

Test(tokenizer, qwen2_pattern_known_splits) {
    tiny_vocab v;
    tiny_init(&v);
    ap_tokenizer *t = tiny_create(&v, AP_PRE_QWEN2);
    /* As Llama 3, except that every number code point is a piece. */
    PIECES(t, "12345678", "1", "2", "3", "4", "5", "6", "7", "8");
    PIECES(t, "x 42", "x", " ", "4", "2");
    PIECES(t, "IT'S I'LL", "IT", "'S", " I", "'LL");
    PIECES(t, "x!!\n\ny", "x", "!!\n\n", "y");
    PIECES(t, "a   b", "a", "  ", " b");
    PIECES(t, "v1.2", "v", "1", ".", "2");
    PIECES(t, "\xd9\xa1\xd9\xa2", "\xd9\xa1", "\xd9\xa2");
    ap_tokenizer_free(t);
    tiny_free(&v);
}

/* Every split in tests/fixtures/pretok_patterns.jsonl, produced by
 * Oniguruma through HF tokenizers, must be reproduced exactly. */
Test(tokenizer, pretokenizer_matches_regex_engine_fixture) {
    char *data = NULL;
    size_t len = 0;
    ap_err err = {0};
    cr_assert_eq(ap_read_file(PATTERNS_PATH, &data, &len, &err), AP_OK, "%s", err.msg);
    tiny_vocab v;
    tiny_init(&v);
    ap_tokenizer *tg = tiny_create(&v, AP_PRE_GPT2);
    ap_tokenizer *tl = tiny_create(&v, AP_PRE_LLAMA3);
    ap_tokenizer *ts = tiny_create(&v, AP_PRE_SMOLLM);
    ap_tokenizer *tq = tiny_create(&v, AP_PRE_QWEN2);
    size_t compared = 0, failed = 0, per_pre[4] = {0};
    char *line = data;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        cJSON *row = cJSON_Parse(line);
        cr_assert(row, "bad JSON line in %s", PATTERNS_PATH);
        const char *pre = cJSON_GetObjectItem(row, "pre")->valuestring;
        const char *text = cJSON_GetObjectItem(row, "text")->valuestring;
        cJSON *want = cJSON_GetObjectItem(row, "ends");
        int which = strcmp(pre, "gpt2") == 0     ? 0
                    : strcmp(pre, "llama3") == 0 ? 1
                    : strcmp(pre, "qwen2") == 0  ? 2
                    : strcmp(pre, "smollm") == 0 ? 3
                                                 : -1;
        cr_assert_geq(which, 0, "unknown pre-tokenizer \"%s\" in %s", pre, PATTERNS_PATH);
        const ap_tokenizer *pres[4] = {tg, tl, tq, ts};
        const ap_tokenizer *t = pres[which];
        per_pre[which]++;
        size_t *ends = NULL, n = 0;
        cr_assert_eq(ap_tokenizer_pretokenize(t, text, strlen(text), 0, &ends, &n, NULL), AP_OK);
        int ok = n == (size_t)cJSON_GetArraySize(want);
        for (size_t i = 0; ok && i < n; i++)
            ok = ends[i] == (size_t)cJSON_GetArrayItem(want, (int)i)->valuedouble;
        if (!ok && failed++ < 10)
            cr_log_error("%s split differs for \"%s\" (%zu pieces, expected %d)", pre, text, n,
                         cJSON_GetArraySize(want));
        compared++;
        free(ends);
        cJSON_Delete(row);
        line = nl ? nl + 1 : NULL;
    }
    cr_log_info(
        "pre-tokenizer fixture: %zu splits compared (gpt2 %zu, llama3 %zu, qwen2 %zu, "
        "smollm %zu), %zu differ",
        compared, per_pre[0], per_pre[1], per_pre[2], per_pre[3], failed);
    cr_assert_gt(per_pre[0], 300);
    cr_assert_geq(per_pre[1], 1000);
    cr_assert_geq(per_pre[2], 1000);
    cr_assert_gt(per_pre[3], 300);
    cr_assert_eq(failed, 0, "%zu of %zu splits differ", failed, compared);
    ap_tokenizer_free(tq);
    ap_tokenizer_free(tg);
    ap_tokenizer_free(tl);
    ap_tokenizer_free(ts);
    tiny_free(&v);
    free(data);
}

/* ---------------------------------------------------------------------- */
/* special tokens                                                           */

Test(tokenizer, special_tokens_longest_first_when_parsing) {
    tiny_vocab v;
    tiny_init(&v);
    int32_t x = tiny_tok(&v, "<|x|>", 3);
    int32_t xy = tiny_tok(&v, "<|x|>y", 3); /* longer, shares a prefix */
    int32_t u = tiny_tok(&v, "<u>", 4);
    ap_tokenizer *t = tiny_create(&v, AP_PRE_GPT2);
    EXPECT(t, "a<|x|>b", 1, 'a', x, 'b');
    EXPECT(t, "<|x|>y", 1, xy);
    EXPECT(t, "<|x|><|x|>", 1, x, x);
    EXPECT(t, "<u> <|x|>", 1, u, ' ', x);
    EXPECT(t, "<|x|", 1, '<', '|', 'x', '|');
    /* Without parsing, control tokens are ordinary bytes; user-defined ones
     * are still split out (llama.cpp and HF both do). */
    EXPECT(t, "<|x|>", 0, '<', '|', 'x', '|', '>');
    EXPECT(t, "a<u>", 0, 'a', u);
    expect_round_trip(t, "a<|x|>y<u>", 10, 1);
    expect_round_trip(t, "a<|x|>y<u>", 10, 0);
    PIECES(t, "<|x|>", "<|", "x", "|>");
    ap_tokenizer_free(t);
    tiny_free(&v);
}

Test(tokenizer, special_token_decodes_literally) {
    tiny_vocab v;
    tiny_init(&v);
    int32_t s = tiny_tok(&v, "<|im_start|>", 3);
    ap_tokenizer *t = tiny_create(&v, AP_PRE_SMOLLM);
    int32_t ids[] = {s, 'h', 'i'};
    char *out = NULL;
    size_t n = 0;
    cr_assert_eq(ap_tokenizer_decode(t, ids, 3, &out, &n, NULL), AP_OK);
    cr_assert_str_eq(out, "<|im_start|>hi");
    cr_assert_eq(n, 14);
    free(out);
    int32_t bad[] = {'a', (int32_t)v.n};
    ap_err err = {0};
    cr_assert_eq(ap_tokenizer_decode(t, bad, 2, &out, &n, &err), AP_ERR_RANGE);
    cr_assert(strstr(err.msg, "position 1") != NULL, "message: %s", err.msg);
    int32_t neg[] = {-1};
    cr_assert_eq(ap_tokenizer_decode(t, neg, 1, &out, &n, NULL), AP_ERR_RANGE);
    ap_tokenizer_free(t);
    tiny_free(&v);
}

Test(tokenizer, add_bos_follows_spec) {
    tiny_vocab v;
    tiny_init(&v);
    int32_t bos = tiny_tok(&v, "<s>", 3);
    ap_tokenizer_spec spec = {0};
    spec.tokens = (const char *const *)v.tok;
    spec.token_types = v.type;
    spec.n_vocab = v.n;
    spec.pre = AP_PRE_GPT2;
    spec.bos_id = bos;
    spec.eos_id = -1;
    spec.add_bos = 1;
    ap_tokenizer *t = NULL;
    cr_assert_eq(ap_tokenizer_create(&spec, &t, NULL), AP_OK);
    cr_assert_eq(ap_tokenizer_bos(t), bos);
    cr_assert_eq(ap_tokenizer_eos(t), -1);
    cr_assert_eq(ap_tokenizer_n_vocab(t), v.n);
    EXPECT(t, "a", 1, bos, 'a');
    EXPECT(t, "", 1, bos);
    ap_tokenizer_free(t);
    spec.add_bos = 0;
    cr_assert_eq(ap_tokenizer_create(&spec, &t, NULL), AP_OK);
    EXPECT(t, "a", 1, 'a');
    ap_tokenizer_free(t);
    tiny_free(&v);
}

Test(tokenizer, create_rejects_bad_specs) {
    tiny_vocab v;
    tiny_init(&v);
    ap_tokenizer_spec spec = {0};
    spec.tokens = (const char *const *)v.tok;
    spec.n_vocab = v.n;
    spec.bos_id = spec.eos_id = -1;
    ap_tokenizer *t = (ap_tokenizer *)&spec; /* must be reset to NULL on failure */
    ap_err err = {0};
    spec.bos_id = (int32_t)v.n;
    cr_assert_eq(ap_tokenizer_create(&spec, &t, &err), AP_ERR_RANGE);
    cr_assert_null(t);
    spec.bos_id = -1;
    spec.pre = (ap_pretok)7;
    cr_assert_eq(ap_tokenizer_create(&spec, &t, &err), AP_ERR_ARG);
    spec.pre = AP_PRE_GPT2;
    spec.n_vocab = 0;
    cr_assert_eq(ap_tokenizer_create(&spec, &t, &err), AP_ERR_ARG);
    cr_assert_eq(ap_tokenizer_create(NULL, &t, &err), AP_ERR_ARG);
    ap_tokenizer_free(NULL);
    tiny_free(&v);
}

/* ---------------------------------------------------------------------- */
/* chat                                                                     */

Test(tokenizer, chatml_text) {
    tiny_vocab v;
    tiny_init(&v);
    ap_tokenizer_spec spec = {0};
    spec.tokens = (const char *const *)v.tok;
    spec.n_vocab = v.n;
    spec.bos_id = spec.eos_id = -1;
    spec.chat_format = 1;
    ap_tokenizer *t = NULL;
    cr_assert_eq(ap_tokenizer_create(&spec, &t, NULL), AP_OK);
    char *out = NULL;
    cr_assert_eq(ap_tokenizer_chat(t, "What is 2+2?", &out, NULL), AP_OK);
    cr_assert_str_eq(out,
                     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                     "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                     "<|im_start|>assistant\n");
    free(out);
    ap_tokenizer_free(t);
    spec.chat_format = 0;
    cr_assert_eq(ap_tokenizer_create(&spec, &t, NULL), AP_OK);
    cr_assert_eq(ap_tokenizer_chat(t, "plain", &out, NULL), AP_OK);
    cr_assert_str_eq(out, "plain");
    free(out);
    ap_tokenizer_free(t);
    tiny_free(&v);
}

/* ---------------------------------------------------------------------- */
/* round trips and robustness                                               */

static uint64_t rng_next(uint64_t *s) {
    /* xorshift64*: deterministic test data */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

Test(tokenizer, round_trip_random_bytes_all_pretokenizers) {
    tiny_vocab v;
    tiny_init(&v);
    tiny_merge(&v, " ", "t");
    tiny_merge(&v, "h", "e");
    tiny_merge(&v, " t", "he");
    tiny_merge(&v, "\xc3", "\xa9");
    tiny_tok(&v, "<|sp|>", 3);
    ap_pretok pres[4] = {AP_PRE_GPT2, AP_PRE_SMOLLM, AP_PRE_LLAMA3, AP_PRE_QWEN2};
    /* Bytes biased toward the interesting ones: ASCII, UTF-8 leads and
     * continuation bytes, whitespace, digits, apostrophes, '<'. */
    const char *alphabet =
        " \t\n\r'sStT0123<|>abc.\xc3\xa9\xe4\xbd\xa0\xf0\x9f\x98\x80\xff\xc0\x80\xed";
    size_t na = strlen(alphabet);
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    char buf[300];
    for (int p = 0; p < 4; p++) {
        ap_tokenizer *t = tiny_create(&v, pres[p]);
        for (int iter = 0; iter < 2000; iter++) {
            size_t n = rng_next(&seed) % sizeof buf;
            int mode = iter % 2;
            for (size_t i = 0; i < n; i++) {
                uint64_t r = rng_next(&seed);
                buf[i] = mode ? (char)(r >> 24) : alphabet[(r >> 24) % na];
            }
            expect_round_trip(t, buf, n, 0);
            expect_round_trip(t, buf, n, 1);
        }
        ap_tokenizer_free(t);
    }
    tiny_free(&v);
}

Test(tokenizer, invalid_utf8_is_bytewise) {
    tiny_vocab v;
    tiny_init(&v);
    ap_tokenizer *t = tiny_create(&v, AP_PRE_GPT2);
    const char *cases[] = {
        "\xff\xfe",         "\xe4\xbd",     "a\xe4\xbd", "\xc0\xaf", "\xed\xa0\x80",
        "\xf4\x90\x80\x80", "\xf0\x9f\x98", "x \x80y",   "\xc3",     "'\xc3"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_round_trip(t, cases[i], strlen(cases[i]), 1);
        size_t *ends = NULL, n = 0;
        cr_assert_eq(ap_tokenizer_pretokenize(t, cases[i], strlen(cases[i]), 0, &ends, &n, NULL),
                     AP_OK);
        cr_assert(n >= 1);
        cr_assert_eq(ends[n - 1], strlen(cases[i]));
        free(ends);
    }
    /* A truncated sequence at the very end must not be read past. */
    char *heap = malloc(2);
    memcpy(heap, "\xf0\x9f", 2);
    expect_round_trip(t, heap, 2, 1);
    free(heap);
    /* Embedded NUL is an ordinary byte. */
    expect_round_trip(t, "a\0b", 3, 1);
    ap_tokenizer_free(t);
    tiny_free(&v);
}

Test(tokenizer, empty_and_huge_inputs) {
    tiny_vocab v;
    tiny_init(&v);
    tiny_merge(&v, "a", "a");
    tiny_merge(&v, " ", " ");
    tiny_merge(&v, "aa", "aa");
    ap_pretok pres[4] = {AP_PRE_GPT2, AP_PRE_SMOLLM, AP_PRE_LLAMA3, AP_PRE_QWEN2};
    size_t big = 1 << 20;
    char *buf = malloc(big);
    const char fills[] = {'a', ' ', '1', '\n', '\xff', '\'', '.'};
    for (int p = 0; p < 4; p++) {
        ap_tokenizer *t = tiny_create(&v, pres[p]);
        int32_t *ids = NULL;
        size_t n = encode(t, "", 0, 1, &ids);
        cr_assert_eq(n, 0);
        free(ids);
        n = encode(t, NULL, 0, 1, &ids);
        cr_assert_eq(n, 0);
        free(ids);
        for (size_t f = 0; f < sizeof fills; f++) {
            memset(buf, fills[f], big);
            double t0 = ap_now_seconds();
            expect_round_trip(t, buf, big, 1);
            double dt = ap_now_seconds() - t0;
            cr_assert_lt(dt, 20.0, "1 MiB of 0x%02x took %.1f s", (unsigned char)fills[f], dt);
        }
        ap_tokenizer_free(t);
    }
    /* 1 MiB of 'a' merges all the way: 4-byte tokens. */
    ap_tokenizer *t = tiny_create(&v, AP_PRE_GPT2);
    memset(buf, 'a', big);
    int32_t *ids = NULL;
    size_t n = encode(t, buf, big, 1, &ids);
    cr_assert_eq(n, big / 4);
    free(ids);
    ap_tokenizer_free(t);
    free(buf);
    tiny_free(&v);
}

/* ---------------------------------------------------------------------- */
/* GGUF                                                                     */

static ap_status gguf_with(const char *model, const char *pre, ap_gguf **out, uint8_t **mem,
                           ap_err *err) {
    tiny_vocab v;
    tiny_init(&v);
    tiny_merge(&v, "a", "b");
    int32_t ims = tiny_tok(&v, "<|im_start|>", 3);
    tiny_tok(&v, "<|im_end|>", 3);
    ap_gguf_builder *b = NULL;
    size_t size = 0;
    cr_assert_eq(ap_gguf_builder_create(&b, err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_str(b, "general.architecture", "llama", err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_str(b, "tokenizer.ggml.model", model, err), AP_OK);
    if (pre) cr_assert_eq(ap_gguf_builder_set_str(b, "tokenizer.ggml.pre", pre, err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_arr_str(b, "tokenizer.ggml.tokens", (const char *const *)v.tok,
                                             (uint64_t)v.n, err),
                 AP_OK);
    cr_assert_eq(
        ap_gguf_builder_set_arr_i32(b, "tokenizer.ggml.token_type", v.type, (uint64_t)v.n, err),
        AP_OK);
    cr_assert_eq(ap_gguf_builder_set_arr_str(b, "tokenizer.ggml.merges",
                                             (const char *const *)v.merge, (uint64_t)v.nm, err),
                 AP_OK);
    cr_assert_eq(ap_gguf_builder_set_u32(b, "tokenizer.ggml.bos_token_id", (uint32_t)ims, err),
                 AP_OK);
    cr_assert_eq(ap_gguf_builder_set_u32(b, "tokenizer.ggml.eos_token_id", (uint32_t)ims + 1, err),
                 AP_OK);
    cr_assert_eq(ap_gguf_builder_to_memory(b, mem, &size, err), AP_OK);
    ap_gguf_builder_free(b);
    tiny_free(&v);
    return ap_gguf_open_memory(*mem, size, "tiny.gguf", out, err);
}

Test(tokenizer, from_gguf_reads_and_rejects) {
    ap_gguf *g = NULL;
    uint8_t *mem = NULL;
    ap_err err = {0};
    cr_assert_eq(gguf_with("gpt2", "smollm", &g, &mem, &err), AP_OK, "%s", err.msg);
    ap_tokenizer *t = NULL;
    cr_assert_eq(ap_tokenizer_from_gguf(g, &t, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_n_vocab(t), 259);
    cr_assert_eq(ap_tokenizer_bos(t), 257);
    cr_assert_eq(ap_tokenizer_eos(t), 258);
    EXPECT(t, "ab<|im_end|>12", 1, 256, 258, '1', '2');
    char *chat = NULL;
    cr_assert_eq(ap_tokenizer_chat(t, "hi", &chat, NULL), AP_OK);
    cr_assert(strncmp(chat, "<|im_start|>system\n", 19) == 0);
    free(chat);
    ap_tokenizer_free(t);
    ap_gguf_free(g);
    free(mem);

    /* Absent pre means plain GPT-2: the digits stay one piece. */
    cr_assert_eq(gguf_with("gpt2", NULL, &g, &mem, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_from_gguf(g, &t, &err), AP_OK, "%s", err.msg);
    size_t *ends = NULL, n = 0;
    cr_assert_eq(ap_tokenizer_pretokenize(t, "12", 2, 0, &ends, &n, NULL), AP_OK);
    cr_assert_eq(n, 1);
    free(ends);
    ap_tokenizer_free(t);
    ap_gguf_free(g);
    free(mem);

    /* Tokenizer models we do not implement: one message naming the key and
     * the value. */
    const char *unsupported[] = {"bert", "t5", "rwkv", ""};
    for (size_t k = 0; k < sizeof unsupported / sizeof unsupported[0]; k++) {
        cr_assert_eq(gguf_with(unsupported[k], "smollm", &g, &mem, &err), AP_OK, "%s", err.msg);
        t = (ap_tokenizer *)g;
        cr_assert_eq(ap_tokenizer_from_gguf(g, &t, &err), AP_ERR_UNSUPPORTED, "model \"%s\"",
                     unsupported[k]);
        cr_assert_null(t);
        char quoted[16];
        snprintf(quoted, sizeof quoted, "\"%s\"", unsupported[k]);
        cr_assert(strstr(err.msg, "tokenizer.ggml.model") != NULL, "message: %s", err.msg);
        cr_assert(strstr(err.msg, quoted) != NULL, "message: %s", err.msg);
        cr_assert(strstr(err.msg, "tiny.gguf") != NULL, "message: %s", err.msg);
        ap_gguf_free(g);
        free(mem);
    }

    cr_assert_eq(gguf_with("gpt2", "qwen2-unknown", &g, &mem, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_from_gguf(g, &t, &err), AP_ERR_UNSUPPORTED);
    cr_assert(strstr(err.msg, "qwen2-unknown") != NULL, "message: %s", err.msg);
    ap_gguf_free(g);
    free(mem);

    /* Qwen 2: one piece per digit. */
    cr_assert_eq(gguf_with("gpt2", "qwen2", &g, &mem, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_from_gguf(g, &t, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_pretokenize(t, "12345", 5, 0, &ends, &n, NULL), AP_OK);
    cr_assert_eq(n, 5);
    free(ends);
    ap_tokenizer_free(t);
    ap_gguf_free(g);
    free(mem);

    cr_assert_eq(gguf_with("gpt2", "llama-bpe", &g, &mem, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_from_gguf(g, &t, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_pretokenize(t, "12345", 5, 0, &ends, &n, NULL), AP_OK);
    cr_assert_eq(n, 2); /* \p{N}{1,3} */
    free(ends);
    ap_tokenizer_free(t);
    ap_gguf_free(g);
    free(mem);
}

/* ---------------------------------------------------------------------- */
/* the real vocabulary                                                      */

static ap_tokenizer *load_model_tokenizer(ap_gguf **g) {
    if (!ap_file_exists(MODEL_PATH)) return NULL;
    ap_err err = {0};
    cr_assert_eq(ap_gguf_open(MODEL_PATH, g, &err), AP_OK, "%s", err.msg);
    ap_tokenizer *t = NULL;
    double t0 = ap_now_seconds();
    cr_assert_eq(ap_tokenizer_from_gguf(*g, &t, &err), AP_OK, "%s", err.msg);
    cr_log_info("tokenizer loaded in %.1f ms", 1e3 * (ap_now_seconds() - t0));
    return t;
}

static int ids_equal(const int32_t *a, size_t na, const cJSON *arr) {
    if (na != (size_t)cJSON_GetArraySize(arr)) return 0;
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        if (a[i++] != (int32_t)it->valuedouble) return 0;
    }
    return 1;
}

/* Each line of a JSONL fixture in turn: the first, a {"meta": ...} header,
 * to on_meta (the meta object; may be NULL), every other row to on_row. */
typedef void (*jsonl_fn)(const cJSON *obj, void *user);
static void each_fixture_row(const char *path, jsonl_fn on_meta, jsonl_fn on_row, void *user) {
    char *data = NULL;
    size_t len = 0;
    ap_err err = {0};
    cr_assert_eq(ap_read_file(path, &data, &len, &err), AP_OK, "%s", err.msg);
    char *line = data;
    int first = 1;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        cJSON *row = cJSON_Parse(line);
        cr_assert(row, "bad JSON line in %s", path);
        if (first) {
            const cJSON *meta = cJSON_GetObjectItem(row, "meta");
            cr_assert(meta, "%s has no header line", path);
            if (on_meta) on_meta(meta, user);
            first = 0;
        } else {
            on_row(row, user);
        }
        cJSON_Delete(row);
        line = nl ? nl + 1 : NULL;
    }
    free(data);
}

typedef struct {
    const ap_tokenizer *t;
    size_t compared, failed, raw_compared;
} smollm_cmp;

static void smollm_row(const cJSON *row, void *user) {
    smollm_cmp *c = user;
    const char *text = cJSON_GetObjectItem(row, "text")->valuestring;
    size_t n = strlen(text);
    const cJSON *want = cJSON_GetObjectItem(row, "ids");
    const cJSON *want_raw = cJSON_GetObjectItem(row, "ids_raw");
    int32_t *ids = NULL;
    size_t n_ids = encode(c->t, text, n, 1, &ids);
    if (!ids_equal(ids, n_ids, want) && c->failed++ < 10)
        cr_log_error("ids differ for \"%s\"", text);
    free(ids);
    /* Without special parsing: ids_raw, or ids when the text has no
     * special token. */
    n_ids = encode(c->t, text, n, 0, &ids);
    if (!ids_equal(ids, n_ids, want_raw ? want_raw : want) && c->failed++ < 10)
        cr_log_error("ids (no special parsing) differ for \"%s\"", text);
    free(ids);
    c->compared++;
    c->raw_compared += want_raw != NULL;
}

Test(tokenizer, smollm2_matches_reference_fixture, .timeout = 120) {
    ap_gguf *g = NULL;
    ap_tokenizer *t = load_model_tokenizer(&g);
    if (!t) cr_skip_test("model file %s absent: the vocabulary comes from it", MODEL_PATH);
    cr_assert_eq(ap_tokenizer_n_vocab(t), 49152);
    cr_assert_eq(ap_tokenizer_bos(t), 1);
    cr_assert_eq(ap_tokenizer_eos(t), 2);

    smollm_cmp c = {t, 0, 0, 0};
    each_fixture_row(FIXTURE_PATH, NULL, smollm_row, &c);
    cr_log_info("SmolLM2 fixture: %zu strings compared (%zu with special tokens also "
                "unparsed), %zu mismatches",
                c.compared, c.raw_compared, c.failed);
    cr_assert_geq(c.compared, 1000);
    cr_assert_eq(c.failed, 0, "%zu mismatches over %zu strings", c.failed, c.compared);
    ap_tokenizer_free(t);
    ap_gguf_free(g);
}

Test(tokenizer, smollm2_digits_chat_and_speed, .timeout = 120) {
    ap_gguf *g = NULL;
    ap_tokenizer *t = load_model_tokenizer(&g);
    if (!t) cr_skip_test("model file %s absent: the vocabulary comes from it", MODEL_PATH);

    /* Each digit is its own token: "2024" is the four digit tokens. */
    int32_t digit[10];
    for (int d = 0; d < 10; d++) {
        char c = (char)('0' + d);
        digit[d] = ap_tokenizer_find(t, &c, 1);
        cr_assert_geq(digit[d], 0);
    }
    EXPECT(t, "2024", 1, digit[2], digit[0], digit[2], digit[4]);

    /* The chat prompt starts with <|im_start|> (1) and ends with
     * "<|im_start|>assistant\n". */
    char *chat = NULL;
    cr_assert_eq(ap_tokenizer_chat(t, "Hi", &chat, NULL), AP_OK);
    int32_t *ids = NULL;
    size_t n = encode(t, chat, strlen(chat), 1, &ids);
    cr_assert_gt(n, 8);
    cr_assert_eq(ids[0], 1);
    size_t n_im_start = 0, n_im_end = 0;
    for (size_t i = 0; i < n; i++) {
        n_im_start += ids[i] == 1;
        n_im_end += ids[i] == 2;
    }
    cr_assert_eq(n_im_start, 3);
    cr_assert_eq(n_im_end, 2);
    char *back = NULL;
    size_t blen = 0;
    cr_assert_eq(ap_tokenizer_decode(t, ids, n, &back, &blen, NULL), AP_OK);
    cr_assert_str_eq(back, chat);
    free(back);
    free(ids);
    free(chat);

    /* 30 KB of mixed text (this file's source, repeated). */
    char *src = NULL;
    size_t slen = 0;
    cr_assert_eq(ap_read_file(AP_SOURCE_DIR "/tests/test_tokenizer.c", &src, &slen, NULL), AP_OK);
    size_t want = 30 * 1024;
    char *text = malloc(want);
    for (size_t i = 0; i < want; i++) text[i] = src[i % slen];
    double t0 = ap_now_seconds();
    n = encode(t, text, want, 0, &ids);
    double dt = ap_now_seconds() - t0;
    cr_log_info("encoded %zu bytes into %zu tokens in %.2f ms", want, n, 1e3 * dt);
    cr_assert_gt(n, want / 8);
    /* Well under 100 ms in a release build; generous for sanitizer builds. */
    cr_assert_lt(dt, 1.0, "encoding 30 KB took %.1f ms", 1e3 * dt);
    free(ids);
    free(text);
    free(src);
    ap_tokenizer_free(t);
    ap_gguf_free(g);
}

/* ---------------------------------------------------------------------- */
/* the real Gemma 3 vocabulary (SentencePiece BPE)                          */

static ap_tokenizer *load_gemma_tokenizer(ap_gguf **g) {
    if (getenv("AP_SKIP_REAL_MODEL")) cr_skip_test("AP_SKIP_REAL_MODEL is set");
    if (!ap_file_exists(GEMMA_PATH))
        cr_skip_test("model file %s absent: the vocabulary comes from it", GEMMA_PATH);
    ap_err err = {0};
    cr_assert_eq(ap_gguf_open(GEMMA_PATH, g, &err), AP_OK, "%s", err.msg);
    ap_tokenizer *t = NULL;
    double t0 = ap_now_seconds();
    cr_assert_eq(ap_tokenizer_from_gguf(*g, &t, &err), AP_OK, "%s", err.msg);
    cr_log_info("Gemma tokenizer loaded in %.1f ms", 1e3 * (ap_now_seconds() - t0));
    return t;
}

typedef struct {
    const ap_tokenizer *t;
    size_t compared, failed, raw_compared, round_trips, bos_checked;
} gemma_cmp;

static void gemma_row(const cJSON *row, void *user) {
    gemma_cmp *c = user;
    ap_err err = {0};
    const char *text = cJSON_GetObjectItem(row, "text")->valuestring;
    size_t n = strlen(text);
    const cJSON *want = cJSON_GetObjectItem(row, "ids");
    const cJSON *want_raw = cJSON_GetObjectItem(row, "ids_raw");
    const cJSON *rt = cJSON_GetObjectItem(row, "rt");
    int32_t *ids = NULL;
    size_t n_ids = encode(c->t, text, n, 1, &ids);
    /* BOS first, then the reference's ids. */
    int ok = n_ids >= 1 && ids[0] == 2 && ids_equal(ids + 1, n_ids - 1, want);
    c->bos_checked += n_ids >= 1 && ids[0] == 2;
    if (!ok && c->failed++ < 10) cr_log_error("ids differ for \"%s\"", text);
    if (ok && !(rt && cJSON_IsFalse(rt))) {
        char *back = NULL;
        size_t blen = 0;
        cr_assert_eq(ap_tokenizer_decode(c->t, ids + 1, n_ids - 1, &back, &blen, &err), AP_OK,
                     "%s", err.msg);
        if ((blen != n || memcmp(back, text, n) != 0) && c->failed++ < 10)
            cr_log_error("decode does not give back \"%s\" (got \"%s\")", text, back);
        c->round_trips++;
        free(back);
    }
    free(ids);
    n_ids = encode(c->t, text, n, 0, &ids);
    ok = n_ids >= 1 && ids[0] == 2 &&
         ids_equal(ids + 1, n_ids - 1, want_raw ? want_raw : want);
    if (!ok && c->failed++ < 10)
        cr_log_error("ids (no special parsing) differ for \"%s\"", text);
    free(ids);
    c->compared++;
    c->raw_compared += want_raw != NULL;
}

/* Every string of tests/fixtures/tokenizer_gemma3.jsonl (transformers' GGUF
 * tokenizer, scripts/ref/make_tokenizer_fixture_gemma3.py): the same ids with
 * BOS (the file says add_bos_token), with special parsing on and off, and
 * decode(encode(s)) == s wherever the reference round-trips. */
Test(tokenizer, gemma3_matches_transformers_fixture, .timeout = 300) {
    ap_gguf *g = NULL;
    ap_tokenizer *t = load_gemma_tokenizer(&g);
    cr_assert_eq(ap_tokenizer_n_vocab(t), 262144);
    cr_assert_eq(ap_tokenizer_bos(t), 2);
    cr_assert_eq(ap_tokenizer_eos(t), 1);

    gemma_cmp c = {t, 0, 0, 0, 0, 0};
    each_fixture_row(GEMMA_FIXTURE_PATH, NULL, gemma_row, &c);
    cr_log_info(
        "Gemma 3 fixture: %zu strings compared (%zu with special tokens also unparsed, "
        "%zu round trips), %zu mismatches",
        c.compared, c.raw_compared, c.round_trips, c.failed);
    cr_assert_geq(c.compared, 1000);
    cr_assert_eq(c.bos_checked, c.compared);
    cr_assert_gt(c.raw_compared, 10);
    cr_assert_gt(c.round_trips, c.compared * 9 / 10);
    cr_assert_eq(c.failed, 0, "%zu mismatches over %zu strings", c.failed, c.compared);

    /* 30 KB of mixed text (this file's source, repeated). */
    char *src = NULL;
    size_t slen = 0;
    cr_assert_eq(ap_read_file(AP_SOURCE_DIR "/tests/test_tokenizer.c", &src, &slen, NULL), AP_OK);
    size_t want = 30 * 1024;
    char *text = malloc(want);
    cr_assert(text);
    for (size_t i = 0; i < want; i++) text[i] = src[i % slen];
    int32_t *ids = NULL;
    double t0 = ap_now_seconds();
    size_t n = encode(t, text, want, 0, &ids);
    double dt = ap_now_seconds() - t0;
    cr_log_info("Gemma: encoded %zu bytes into %zu tokens in %.2f ms", want, n, 1e3 * dt);
    cr_assert_gt(n, want / 8);
    cr_assert_lt(dt, 1.0, "encoding 30 KB took %.1f ms", 1e3 * dt);
    /* Back to the same bytes, after the BOS. */
    cr_assert_eq(ids[0], 2);
    char *back = NULL;
    size_t blen = 0;
    cr_assert_eq(ap_tokenizer_decode(t, ids + 1, n - 1, &back, &blen, NULL), AP_OK);
    cr_assert(blen == want && memcmp(back, text, want) == 0, "30 KB do not round-trip");
    free(back);
    free(ids);
    free(text);
    free(src);
    ap_tokenizer_free(t);
    ap_gguf_free(g);
}

/* ---------------------------------------------------------------------- */
/* SentencePiece BPE on small vocabularies                                  */

#define SP "\xe2\x96\x81" /* U+2581, SentencePiece's space */
#define SPM_MAX 320

typedef struct {
    const char *tok[SPM_MAX];
    int32_t type[SPM_MAX];
    float score[SPM_MAX];
    char bytes[256][8];
    int n;
} spm_vocab;

static int32_t spm_add(spm_vocab *v, const char *text, int32_t type, float score) {
    cr_assert(v->n < SPM_MAX);
    v->tok[v->n] = text;
    v->type[v->n] = type;
    v->score[v->n] = score;
    return v->n++;
}

/* Byte tokens <0xXX> for the bytes in [lo, hi]; returns the id of lo. */
static int32_t spm_add_bytes(spm_vocab *v, unsigned lo, unsigned hi) {
    int32_t first = v->n;
    for (unsigned b = lo; b <= hi; b++) {
        snprintf(v->bytes[b], sizeof v->bytes[b], "<0x%02X>", b);
        spm_add(v, v->bytes[b], 6, 0.0f);
    }
    return first;
}

static ap_tokenizer *spm_create(const spm_vocab *v, int scores, int add_space_prefix, int32_t unk) {
    ap_tokenizer_spec spec = {0};
    spec.model = AP_TOK_SPM;
    spec.tokens = v->tok;
    spec.token_types = v->type;
    spec.n_vocab = v->n;
    spec.scores = scores ? v->score : NULL;
    spec.add_space_prefix = add_space_prefix;
    spec.unk_id = unk;
    spec.bos_id = spec.eos_id = -1;
    ap_tokenizer *t = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_tokenizer_create(&spec, &t, &err), AP_OK, "create: %s", err.msg);
    return t;
}

static void expect_decode(const ap_tokenizer *t, const int32_t *ids, size_t n, const char *want) {
    char *out = NULL;
    size_t len = 0;
    ap_err err = {0};
    cr_assert_eq(ap_tokenizer_decode(t, ids, n, &out, &len, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(len, strlen(want), "decoded \"%s\", expected \"%s\"", out, want);
    cr_assert_str_eq(out, want);
    free(out);
}

#define DECODE(t, want, ...)                                        \
    do {                                                            \
        const int32_t ids_[] = {__VA_ARGS__};                       \
        expect_decode(t, ids_, sizeof ids_ / sizeof ids_[0], want); \
    } while (0)

Test(tokenizer, spm_merges_highest_score_first) {
    spm_vocab v = {0};
    int32_t a = spm_add(&v, "a", 1, -10), b = spm_add(&v, "b", 1, -10);
    int32_t c = spm_add(&v, "c", 1, -10);
    int32_t ab = spm_add(&v, "ab", 1, -5), bc = spm_add(&v, "bc", 1, -1);
    ap_tokenizer *t = spm_create(&v, 1, 0, -1);
    EXPECT(t, "abc", 1, a, bc);
    EXPECT(t, "abab", 1, ab, ab);
    ap_tokenizer_free(t);
    /* Swap the scores: now "ab" wins. */
    v.score[ab] = -1;
    v.score[bc] = -5;
    t = spm_create(&v, 1, 0, -1);
    EXPECT(t, "abc", 1, ab, c);
    ap_tokenizer_free(t);
    /* Without scores the earlier token ranks higher: "ab" (id 3) before "bc". */
    t = spm_create(&v, 0, 0, -1);
    EXPECT(t, "abc", 1, ab, c);
    ap_tokenizer_free(t);
    /* Merges chain through tokens of any length; equal pairs go leftmost. */
    int32_t abc = spm_add(&v, "abc", 1, -3);
    int32_t aa = spm_add(&v, "aa", 1, -2);
    t = spm_create(&v, 1, 0, -1);
    EXPECT(t, "abc", 1, abc);
    EXPECT(t, "aaa", 1, aa, a);
    /* "ab" (-1) beats "aa" (-2) although "aa" is further left, then "abc". */
    EXPECT(t, "aabc", 1, a, abc);
    ap_tokenizer_free(t);
    (void)b;
}

Test(tokenizer, spm_spaces_prefix_and_decode) {
    spm_vocab v = {0};
    int32_t bos = spm_add(&v, "<s>", 3, 0);
    int32_t sp = spm_add(&v, SP, 1, -1);
    int32_t h = spm_add(&v, "h", 1, -9), i = spm_add(&v, "i", 1, -9);
    spm_add(&v, SP "h", 1, -3);
    int32_t hi = spm_add(&v, SP "hi", 1, -2);
    int32_t hi_plain = spm_add(&v, "hi", 1, -8);
    ap_tokenizer *t = spm_create(&v, 1, 1, -1);
    EXPECT(t, "hi", 1, hi);
    EXPECT(t, " hi", 1, hi); /* already starts with a space: no second one */
    EXPECT(t, "hi hi", 1, hi, hi);
    EXPECT(t, "hi  hi", 1, hi, sp, hi);
    /* Only the text at the start of the input gets the prefix. */
    EXPECT(t, "<s>hi", 1, bos, hi_plain);
    DECODE(t, "hi hi", hi, hi);
    DECODE(t, "<s>hi", bos, hi_plain);
    ap_tokenizer_free(t);
    t = spm_create(&v, 1, 0, -1);
    EXPECT(t, "hi", 1, hi_plain);
    EXPECT(t, " hi", 1, hi);
    EXPECT(t, "h i", 1, h, sp, i);
    DECODE(t, " hi hi", hi, hi);
    ap_tokenizer_free(t);
}

Test(tokenizer, spm_byte_fallback_and_unknown) {
    spm_vocab v = {0};
    int32_t unk = spm_add(&v, "<unk>", 2, 0);
    int32_t a = spm_add(&v, "a", 1, -1);
    int32_t b0 = spm_add_bytes(&v, 0x80, 0xFF); /* no ASCII byte tokens */
#define BYTE(x) (b0 + ((x)-0x80))
    ap_tokenizer *t = spm_create(&v, 1, 0, unk);
    /* A character that is not a token: its UTF-8 bytes. */
    EXPECT(t, "a\xc3\xa9", 1, a, BYTE(0xC3), BYTE(0xA9));
    EXPECT(t, "\xe2\x82\xac", 1, BYTE(0xE2), BYTE(0x82), BYTE(0xAC));
    DECODE(t, "a\xc3\xa9", a, BYTE(0xC3), BYTE(0xA9));
    /* Invalid UTF-8: byte by byte. */
    EXPECT(t,
           "\xc3"
           "a",
           1, BYTE(0xC3), a);
    /* "b" has neither a token nor a byte token: unknown, and a run of such
     * characters is one unknown token. */
    EXPECT(t, "b", 1, unk);
    EXPECT(t, "bcd", 1, unk);
    EXPECT(t, "bab", 1, unk, a, unk);
    ap_tokenizer_free(t);
    /* Without an unknown token such characters are dropped. */
    t = spm_create(&v, 1, 0, -1);
    EXPECT(t, "bab", 1, a);
    ap_tokenizer_free(t);
#undef BYTE
}

Test(tokenizer, spm_special_and_user_tokens) {
    spm_vocab v = {0};
    int32_t ctl = spm_add(&v, "<ctl>", 3, 0);
    int32_t nl2 = spm_add(&v, "\n\n", 4, -1000);
    int32_t nl = spm_add(&v, "\n", 4, -1000);
    int32_t lt = spm_add(&v, "<", 1, -1), gt = spm_add(&v, ">", 1, -1);
    int32_t c = spm_add(&v, "c", 1, -1), tt = spm_add(&v, "t", 1, -1), l = spm_add(&v, "l", 1, -1);
    int32_t x = spm_add(&v, "x", 1, -1);
    ap_tokenizer *t = spm_create(&v, 1, 0, -1);
    EXPECT(t, "x<ctl>x", 1, x, ctl, x);
    EXPECT(t, "x<ctl>x", 0, x, lt, c, tt, l, gt, x);
    /* User-defined tokens are matched whatever parse_special says, longest
     * first. */
    EXPECT(t, "x\n\n\nx", 0, x, nl2, nl, x);
    EXPECT(t, "x\n\n\nx", 1, x, nl2, nl, x);
    DECODE(t, "x<ctl>\n\n", x, ctl, nl2);
    expect_round_trip(t, "x<ctl>x\n\n\nx", 11, 1);
    PIECES(t, "x<ctl>x", "x<ctl>x"); /* no pre-tokenizer: one piece */
    ap_tokenizer_free(t);
}

Test(tokenizer, spm_round_trip_random_bytes) {
    spm_vocab v = {0};
    spm_add(&v, "<unk>", 2, 0);
    spm_add_bytes(&v, 0x00, 0xFF);
    const char *pieces[] = {SP, "a", "b", SP "a", "ab", SP "ab", "\xc3\xa9", "\xe4\xbd\xa0"};
    for (size_t k = 0; k < sizeof pieces / sizeof pieces[0]; k++)
        spm_add(&v, pieces[k], 1, -(float)k);
    spm_add(&v, "<x>", 3, 0);
    spm_add(&v, "\n", 4, 0);
    ap_tokenizer *t = spm_create(&v, 1, 0, 0);
    const char *alphabet = " \n\tab<x>\xc3\xa9\xe4\xbd\xa0\xe2\x96\x81\xff\x80";
    size_t na = strlen(alphabet);
    uint64_t seed = 0x2545F4914F6CDD1Dull;
    char buf[200];
    for (int iter = 0; iter < 2000; iter++) {
        size_t n = rng_next(&seed) % sizeof buf;
        for (size_t i = 0; i < n; i++) {
            uint64_t r = rng_next(&seed);
            buf[i] = iter % 2 ? (char)(r >> 24) : alphabet[(r >> 24) % na];
        }
        /* A literal U+2581 decodes to a space (as in transformers): skip. */
        int has_sp = 0;
        for (size_t i = 0; i + 2 < n; i++) has_sp |= memcmp(buf + i, SP, 3) == 0;
        if (has_sp) continue;
        expect_round_trip(t, buf, n, 0);
        expect_round_trip(t, buf, n, 1);
    }
    ap_tokenizer_free(t);
}

Test(tokenizer, spm_create_rejects_bad_specs) {
    spm_vocab v = {0};
    spm_add(&v, "a", 1, 0);
    ap_tokenizer_spec spec = {0};
    spec.model = AP_TOK_SPM;
    spec.tokens = v.tok;
    spec.n_vocab = v.n;
    spec.bos_id = spec.eos_id = -1;
    spec.unk_id = 5;
    ap_tokenizer *t = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_tokenizer_create(&spec, &t, &err), AP_ERR_RANGE);
    cr_assert(strstr(err.msg, "unknown-token id 5") != NULL, "message: %s", err.msg);
    spec.unk_id = -1;
    spec.model = (ap_tok_model)9;
    cr_assert_eq(ap_tokenizer_create(&spec, &t, &err), AP_ERR_ARG);
    cr_assert_null(t);
}

/* A GGUF with tokenizer.ggml.model "llama": general.architecture decides
 * whether the space tokens take part in merges (Gemma, as transformers does)
 * or are matched literally, and whether text gets a space prefix. */
static ap_status spm_gguf(const char *arch, ap_gguf **out, uint8_t **mem, ap_err *err) {
    const char *tok[] = {"<pad>", "<eos>", "<bos>", "<unk>", "  ", "   ", SP, "a", SP "a", "\n"};
    int32_t type[] = {3, 3, 3, 3, 4, 4, 1, 1, 1, 4};
    float score[] = {0, 0, 0, 0, -1000, -1000, -1, -2, -3, -1000};
    uint64_t n = sizeof tok / sizeof tok[0];
    ap_gguf_builder *b = NULL;
    size_t size = 0;
    cr_assert_eq(ap_gguf_builder_create(&b, err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_str(b, "general.architecture", arch, err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_str(b, "tokenizer.ggml.model", "llama", err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_str(b, "tokenizer.ggml.pre", "default", err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_arr_str(b, "tokenizer.ggml.tokens", tok, n, err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_arr_i32(b, "tokenizer.ggml.token_type", type, n, err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_arr_f32(b, "tokenizer.ggml.scores", score, n, err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_u32(b, "tokenizer.ggml.bos_token_id", 2, err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_u32(b, "tokenizer.ggml.eos_token_id", 1, err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_u32(b, "tokenizer.ggml.unknown_token_id", 3, err), AP_OK);
    cr_assert_eq(ap_gguf_builder_to_memory(b, mem, &size, err), AP_OK);
    ap_gguf_builder_free(b);
    return ap_gguf_open_memory(*mem, size, "spm.gguf", out, err);
}

Test(tokenizer, spm_from_gguf_gemma_and_llama) {
    ap_gguf *g = NULL;
    uint8_t *mem = NULL;
    ap_err err = {0};
    ap_tokenizer *t = NULL;

    /* Gemma: BOS added (no add_bos_token key: SentencePiece default), no
     * space prefix, the space tokens respelled "\u2581\u2581"... and merged by
     * file order: four spaces are two "  ", where literal longest-first
     * matching gives "   " + " ". */
    cr_assert_eq(spm_gguf("gemma3", &g, &mem, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_from_gguf(g, &t, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_bos(t), 2);
    EXPECT(t, "a", 1, 2, 7);
    EXPECT(t, " a", 1, 2, 8);
    EXPECT(t, "a    a", 1, 2, 7, 4, 4, 7);
    EXPECT(t, "a\n\n", 1, 2, 7, 9, 9);
    DECODE(t, "<bos>a    a", 2, 7, 4, 4, 7);
    ap_tokenizer_free(t);
    ap_gguf_free(g);
    free(mem);

    /* Another architecture: the space prefix (absent key means on), and
     * the user-defined space tokens matched literally. */
    cr_assert_eq(spm_gguf("llama", &g, &mem, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_from_gguf(g, &t, &err), AP_OK, "%s", err.msg);
    EXPECT(t, "a", 1, 2, 8);
    EXPECT(t, "a    a", 1, 2, 8, 5, 8);
    DECODE(t, "a", 8);
    ap_tokenizer_free(t);
    ap_gguf_free(g);
    free(mem);
}

typedef struct {
    const ap_tokenizer *t;
    size_t compared, failed;
    long long differs;
} spm_cmp;

static void spm_meta(const cJSON *meta, void *user) {
    const cJSON *d = cJSON_GetObjectItem(meta, "count_differs_by_file_order");
    if (cJSON_IsNumber(d)) ((spm_cmp *)user)->differs = (long long)d->valuedouble;
}

static void spm_row(const cJSON *row, void *user) {
    spm_cmp *c = user;
    const char *text = cJSON_GetObjectItem(row, "text")->valuestring;
    int32_t *ids = NULL;
    size_t n_ids = encode(c->t, text, strlen(text), 1, &ids);
    if (!ids_equal(ids, n_ids, cJSON_GetObjectItem(row, "ids")) && c->failed++ < 10)
        cr_log_error("ids differ for \"%s\"", text);
    free(ids);
    c->compared++;
}

/* A Llama 2 / Mistral-style SentencePiece file whose scores disagree with
 * its file order (scripts/ref/make_tokenizer_fixture_spm.py): merges rank by
 * tokenizer.ggml.scores, as transformers builds the tokenizer from the GGUF;
 * ranked by file order, ~40% of the strings would tokenize differently. */
Test(tokenizer, spm_scores_match_transformers_fixture, .timeout = 120) {
    ap_gguf *g = NULL;
    ap_tokenizer *t = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_gguf_open(SPM_SCORES_GGUF, &g, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_from_gguf(g, &t, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_tokenizer_bos(t), 1);
    spm_cmp c = {t, 0, 0, -1};
    each_fixture_row(SPM_SCORES_FIXTURE, spm_meta, spm_row, &c);
    cr_log_info("SentencePiece scores fixture: %zu strings compared, %zu mismatches (%lld would "
                "differ ranked by file order)",
                c.compared, c.failed, c.differs);
    cr_assert_geq(c.compared, 1000);
    cr_assert_gt(c.differs, (long long)(c.compared / 4),
                 "the fixture must tell scores from file order");
    cr_assert_eq(c.failed, 0u, "%zu of %zu strings differ from transformers", c.failed,
                 c.compared);
    ap_tokenizer_free(t);
    ap_gguf_free(g);
}

Test(tokenizer, spm_huge_inputs) {
    spm_vocab v = {0};
    int32_t unk = spm_add(&v, "<unk>", 2, 0);
    spm_add_bytes(&v, 0x80, 0xFF);
    spm_add(&v, "a", 1, -1);
    spm_add(&v, "aa", 1, -2);
    spm_add(&v, "aaaa", 1, -3);
    spm_add(&v, SP, 1, -4);
    spm_add(&v, SP SP, 1, -5);
    spm_add(&v, "\n", 4, 0);
    ap_tokenizer *t = spm_create(&v, 1, 0, unk);
    size_t big = 1 << 20;
    char *buf = malloc(big);
    cr_assert(buf);
    const char fills[] = {'a', ' ', '\n', '\xff', 'z'};
    for (size_t f = 0; f < sizeof fills; f++) {
        memset(buf, fills[f], big);
        int32_t *ids = NULL;
        double t0 = ap_now_seconds();
        size_t n = encode(t, buf, big, 1, &ids);
        double dt = ap_now_seconds() - t0;
        cr_assert_lt(dt, 20.0, "1 MiB of 0x%02x took %.1f s", (unsigned char)fills[f], dt);
        /* 'a' merges to 4-byte tokens, spaces to pairs, 'z' is one fused
         * unknown token. */
        if (fills[f] == 'a') cr_assert_eq(n, big / 4);
        if (fills[f] == ' ') cr_assert_eq(n, big / 2);
        if (fills[f] == 'z') cr_assert_eq(n, 1);
        if (fills[f] != 'z') expect_round_trip(t, buf, big, 1);
        free(ids);
    }
    free(buf);
    ap_tokenizer_free(t);
}
