/* Tokenizers: see tokenizer.h.
 *
 * Pipeline of ap_tokenizer_encode, the same one llama.cpp and HF tokenizers
 * run for tokenizer.ggml.model = "gpt2":
 *   1. special-token split (leftmost, longest at each position), when asked;
 *   2. pre-tokenizer: hand-written matchers equivalent to the regexes named in
 *      ap_pretok (no regex engine: the patterns are small and fixed, and a
 *      hand-written matcher cannot blow up on adversarial input);
 *   3. per piece: bytes -> GPT-2 byte alphabet symbols, then BPE merges by
 *      rank with a binary heap over adjacent pairs (O(m log m) per piece).
 *
 * The regex alternations are ordered (first alternative that matches wins,
 * not the longest), and the matchers below keep that order.
 *
 * SentencePiece BPE (tokenizer.ggml.model = "llama") shares steps 1 and 3:
 * there is no pre-tokenizer (each text segment between special tokens is one
 * piece, spaces spelled U+2581), the initial symbols are code points (a code
 * point that is not a token becomes its <0xXX> byte tokens), and the merge
 * table is derived from the vocabulary at creation: every split of a token
 * into two tokens is a merge, ranked by the token's score, highest first.
 * That is SentencePiece's "merge the adjacent pair whose concatenation scores
 * highest", with ties broken as transformers' generate_merges sorts them
 * (longer left part, then longer right part, then token id) and then
 * leftmost, as HF's BPE does; llama.cpp breaks every tie leftmost. With
 * distinct scores the two orders can only differ when two different splits
 * of one token are mergeable at the same time, which needs contrived
 * vocabularies. */
#include "capture/tokenizer.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/unicode_tables.h"

/* Token attributes. Both kinds are matched literally (not BPE) and decoded
 * verbatim; control tokens only when the caller asks for special parsing,
 * user-defined ones always (llama.cpp's tokenizer_st_partition and HF's
 * non-special added tokens behave this way). */
#define TOK_CONTROL 1u
#define TOK_USER 2u
#define TOK_SPECIAL (TOK_CONTROL | TOK_USER)

/* An invalid UTF-8 byte becomes its own code point outside Unicode so it can
 * never compare equal to ' ', '\'', '\r' or '\n' and carries no class. */
#define CP_INVALID_BASE 0x110000u

struct ap_tokenizer {
    int64_t n_vocab;
    /* Token text as given (byte-mapped form for normal tokens). */
    char *text;
    size_t *text_off; /* n_vocab + 1 */
    uint8_t *attr;
    /* Bytes each token decodes to. */
    char *dec;
    size_t *dec_off; /* n_vocab + 1 */

    /* text -> id, open addressing, -1 empty. */
    int32_t *vmap;
    size_t vmap_mask;

    /* (left id, right id) -> (rank, merged id), open addressing, rank -1 empty. */
    uint64_t *mkey;
    int32_t *mrank;
    int32_t *mres;
    size_t mmap_mask;

    uint16_t byte_cp[256]; /* byte -> code point of the GPT-2 alphabet */
    int32_t byte_tok[256]; /* byte -> id of its one-symbol token, -1 if none */

    /* Special tokens by decreasing length, for literal matching. */
    int32_t *special;
    size_t n_special;
    size_t n_user; /* how many of them are user-defined */
    uint8_t special_first[256]; /* 1 if some special token starts with this byte */

    ap_pretok pre;
    int32_t bos_id, eos_id;
    int add_bos;
    int chat_format;

    ap_tok_model model;
    int add_space_prefix; /* SPM */
    int32_t unk_id; /* SPM, -1 none */
};

/* U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's spelling of a space. */
#define SPM_SPACE "\xe2\x96\x81"
#define SPM_SPACE_LEN 3

/* ---------------------------------------------------------------------- */
/* GPT-2 byte alphabet                                                      */

/* GPT-2 keeps printable Latin-1 bytes as themselves so the vocabulary stays
 * readable, and moves the other 68 bytes (controls, space, DEL, NBSP, soft
 * hyphen) in order to U+0100.. so that no token contains whitespace or
 * control characters. */
static int byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

uint32_t ap_tokenizer_byte_to_unicode(uint8_t b) {
    if (byte_is_printable(b)) return b;
    uint32_t n = 0;
    for (unsigned x = 0; x < b; x++)
        if (!byte_is_printable(x)) n++;
    return 256 + n;
}

int ap_tokenizer_unicode_to_byte(uint32_t cp) {
    if (cp < 256) return byte_is_printable(cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    uint32_t n = 0;
    for (unsigned x = 0; x < 256; x++) {
        if (byte_is_printable(x)) continue;
        if (256 + n == cp) return (int)x;
        n++;
    }
    return -1;
}

/* ---------------------------------------------------------------------- */
/* UTF-8                                                                    */

/* Decode one code point at s[0..n); returns its length (>= 1). Anything that
 * is not well-formed (overlong, surrogate, > U+10FFFF, truncated) yields one
 * byte as CP_INVALID_BASE + byte, so every byte is covered exactly once. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned b0 = s[0];
    size_t len = 0;
    uint32_t c = 0;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    }
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        len = 2;
        c = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        len = 3;
        c = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0; /* overlong */
        if (b0 == 0xED) hi = 0x9F; /* surrogates */
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        len = 4;
        c = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90; /* overlong */
        if (b0 == 0xF4) hi = 0x8F; /* > U+10FFFF */
    }
    int ok = len != 0 && n >= len && s[1] >= lo && s[1] <= hi;
    for (size_t k = 1; ok && k < len; k++) {
        ok = (s[k] & 0xC0) == 0x80;
        c = (c << 6) | (s[k] & 0x3F);
    }
    if (!ok) {
        *cp = CP_INVALID_BASE + b0;
        return 1;
    }
    *cp = c;
    return len;
}

static size_t utf8_put(uint32_t c, char *out) {
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | (c >> 12));
        out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (c >> 18));
    out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* ---------------------------------------------------------------------- */
/* hash maps                                                                */

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 1;
    size_t nc = *cap ? *cap : 16;
    while (nc < need) {
        if (nc > SIZE_MAX / 2) return 0;
        nc *= 2;
    }
    if (nc > SIZE_MAX / elem) return 0;
    void *q = realloc(*p, nc * elem);
    if (!q) return 0;
    *p = q;
    *cap = nc;
    return 1;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    /* splitmix64 finalizer: pair keys are (small id << 32 | small id), which
     * would cluster badly with the identity hash. */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static size_t table_size_for(int64_t n) {
    size_t size = 16;
    while (size < (size_t)n * 2) size <<= 1;
    return size;
}

static int32_t vocab_find(const ap_tokenizer *t, const char *s, size_t n) {
    size_t i = (size_t)hash_bytes(s, n) & t->vmap_mask;
    for (;;) {
        int32_t id = t->vmap[i];
        if (id < 0) return -1;
        size_t len = t->text_off[id + 1] - t->text_off[id];
        if (len == n && memcmp(t->text + t->text_off[id], s, n) == 0) return id;
        i = (i + 1) & t->vmap_mask;
    }
}

/* Later duplicates replace earlier ones, as in llama.cpp and HF (a dict). */
static void vocab_insert(ap_tokenizer *t, int32_t id) {
    const char *s = t->text + t->text_off[id];
    size_t n = t->text_off[id + 1] - t->text_off[id];
    size_t i = (size_t)hash_bytes(s, n) & t->vmap_mask;
    for (;;) {
        int32_t cur = t->vmap[i];
        if (cur < 0) {
            t->vmap[i] = id;
            return;
        }
        size_t len = t->text_off[cur + 1] - t->text_off[cur];
        if (len == n && memcmp(t->text + t->text_off[cur], s, n) == 0) {
            t->vmap[i] = id;
            return;
        }
        i = (i + 1) & t->vmap_mask;
    }
}

static int merge_find(const ap_tokenizer *t, int32_t a, int32_t b, int32_t *rank, int32_t *res) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)hash_u64(key) & t->mmap_mask;
    for (;;) {
        if (t->mrank[i] < 0) return 0;
        if (t->mkey[i] == key) {
            *rank = t->mrank[i];
            *res = t->mres[i];
            return 1;
        }
        i = (i + 1) & t->mmap_mask;
    }
}

/* The first (lowest-rank) occurrence of a pair wins. */
static void merge_insert(ap_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t res) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)hash_u64(key) & t->mmap_mask;
    for (;;) {
        if (t->mrank[i] < 0) {
            t->mkey[i] = key;
            t->mrank[i] = rank;
            t->mres[i] = res;
            return;
        }
        if (t->mkey[i] == key) return;
        i = (i + 1) & t->mmap_mask;
    }
}

/* ---------------------------------------------------------------------- */
/* creation                                                                 */

void ap_tokenizer_free(ap_tokenizer *t) {
    if (!t) return;
    free(t->text);
    free(t->text_off);
    free(t->attr);
    free(t->dec);
    free(t->dec_off);
    free(t->vmap);
    free(t->mkey);
    free(t->mrank);
    free(t->mres);
    free(t->special);
    free(t);
}

/* Decoded bytes of a normal token: each alphabet code point back to its byte;
 * a code point outside the alphabet (a vocabulary not made by the GPT-2
 * converter) is kept as its UTF-8 so nothing is silently lost. */
static size_t decode_token_text(const int16_t *cp_byte, const char *s, size_t n, char *out) {
    size_t o = 0;
    size_t i = 0;
    while (i < n) {
        uint32_t c;
        size_t k = utf8_next((const unsigned char *)s + i, n - i, &c);
        int b = c < 256 + 68 ? cp_byte[c] : -1;
        if (b >= 0) {
            out[o++] = (char)b;
        } else {
            memcpy(out + o, s + i, k);
            o += k;
        }
        i += k;
    }
    return o;
}

/* Byte of an SPM byte token "<0xXX>" (upper-case hex, as SentencePiece and
 * HF's byte fallback spell it), or -1. */
static int spm_byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Decoded bytes of a normal SPM token: U+2581 is a space, a byte token its
 * byte (HF's Replace + ByteFallback decoders), everything else verbatim. */
static size_t decode_spm_text(const char *s, size_t n, char *out) {
    int b = spm_byte_token(s, n);
    if (b >= 0) {
        out[0] = (char)b;
        return 1;
    }
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (n - i >= SPM_SPACE_LEN && memcmp(s + i, SPM_SPACE, SPM_SPACE_LEN) == 0) {
            out[o++] = ' ';
            i += SPM_SPACE_LEN;
        } else {
            out[o++] = s[i++];
        }
    }
    return o;
}

typedef struct {
    size_t len;
    int32_t id;
} special_key;

/* One derived SPM merge: token `tok` = left + right. */
typedef struct {
    float score;
    int32_t len_l, len_r; /* code points */
    int32_t tok, left, right;
} spm_merge;

/* generate_merges' order: score descending, then longer left part, longer
 * right part; equal keys keep their listing order (token id, then left and
 * right ids), as Python's stable sort does. */
static int cmp_spm_merge(const void *pa, const void *pb) {
    const spm_merge *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    if (a->len_l != b->len_l) return a->len_l > b->len_l ? -1 : 1;
    if (a->len_r != b->len_r) return a->len_r > b->len_r ? -1 : 1;
    if (a->tok != b->tok) return a->tok < b->tok ? -1 : 1;
    if (a->left != b->left) return a->left < b->left ? -1 : 1;
    return a->right < b->right ? -1 : a->right > b->right;
}

static ap_status out_of_memory(ap_err *err, const char *what) {
    return ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", what);
}

static int cmp_special_len(const void *pa, const void *pb) {
    const special_key *a = pa, *b = pb;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* SPM: byte-fallback tokens, and the merge table derived from the
 * vocabulary (see the top of this file). Every token takes part, whatever its
 * type, as in transformers; a later duplicate of a token's text owns it. */
static ap_status spm_build_merges(ap_tokenizer *t, const float *scores, ap_err *err) {
    ap_status st = AP_OK;
    spm_merge *m = NULL;
    size_t nm = 0, cap = 0;
    size_t *cut = NULL; /* byte offset of each code point boundary of one token */
    size_t cut_cap = 0;
    for (unsigned b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_tok[b] = vocab_find(t, name, 6);
        t->byte_cp[b] = 0;
    }
    for (int64_t i = 0; i < t->n_vocab; i++) {
        const char *s = t->text + t->text_off[i];
        size_t len = t->text_off[i + 1] - t->text_off[i];
        if (len < 2 || vocab_find(t, s, len) != (int32_t)i) continue;
        size_t ncut = 0;
        for (size_t k = 0; k < len;) {
            uint32_t c;
            k += utf8_next((const unsigned char *)s + k, len - k, &c);
            if (!grow((void **)&cut, &cut_cap, ncut + 1, sizeof *cut)) goto nomem;
            cut[ncut++] = k;
        }
        /* cut[ncut - 1] == len: splits are at cut[0 .. ncut - 2]. */
        for (size_t k = 0; k + 1 < ncut; k++) {
            int32_t a = vocab_find(t, s, cut[k]);
            if (a < 0) continue;
            int32_t b = vocab_find(t, s + cut[k], len - cut[k]);
            if (b < 0) continue;
            if (!grow((void **)&m, &cap, nm + 1, sizeof *m)) goto nomem;
            m[nm].score = scores ? scores[i] : -(float)i;
            m[nm].len_l = (int32_t)(k + 1);
            m[nm].len_r = (int32_t)(ncut - k - 1);
            m[nm].tok = (int32_t)i;
            m[nm].left = a;
            m[nm].right = b;
            nm++;
        }
    }
    if (nm > INT32_MAX) {
        st = ap_errf(err, AP_ERR_RANGE, "tokenizer: %zu derived merges are too many", nm);
        goto cleanup;
    }
    if (nm) qsort(m, nm, sizeof *m, cmp_spm_merge);
    size_t msize = table_size_for(nm > 0 ? (int64_t)nm : 1);
    t->mkey = malloc(msize * sizeof *t->mkey);
    t->mrank = malloc(msize * sizeof *t->mrank);
    t->mres = malloc(msize * sizeof *t->mres);
    if (!t->mkey || !t->mrank || !t->mres) goto nomem;
    memset(t->mrank, 0xFF, msize * sizeof *t->mrank);
    t->mmap_mask = msize - 1;
    for (size_t r = 0; r < nm; r++) merge_insert(t, m[r].left, m[r].right, (int32_t)r, m[r].tok);
    goto cleanup;
nomem:
    st = out_of_memory(err, "tokenizer");
cleanup:
    free(m);
    free(cut);
    return st;
}

/* Byte-level BPE: each byte's one-symbol token, and the ranked merges of the
 * spec. */
static ap_status bpe_build_merges(ap_tokenizer *t, const ap_tokenizer_spec *spec, ap_err *err) {
    ap_status st = AP_OK;
    char *mapped = NULL;
    /* Each byte's one-symbol token. */
    for (unsigned b = 0; b < 256; b++) {
        char buf[4];
        t->byte_cp[b] = (uint16_t)ap_tokenizer_byte_to_unicode((uint8_t)b);
        size_t k = utf8_put(t->byte_cp[b], buf);
        t->byte_tok[b] = vocab_find(t, buf, k);
    }

    /* Merges "A B" -> (id A, id B) -> (rank, id AB). The split is at the first
     * space after position 0, as llama.cpp does, so a left part can never be
     * empty. Merges naming strings outside the vocabulary can never fire and
     * are dropped. */
    size_t msize = table_size_for(spec->n_merges > 0 ? spec->n_merges : 1);
    t->mkey = malloc(msize * sizeof *t->mkey);
    t->mrank = malloc(msize * sizeof *t->mrank);
    t->mres = malloc(msize * sizeof *t->mres);
    if (!t->mkey || !t->mrank || !t->mres) {
        st = out_of_memory(err, "tokenizer");
        goto done;
    }
    memset(t->mrank, 0xFF, msize * sizeof *t->mrank);
    t->mmap_mask = msize - 1;
    size_t mapped_cap = 0;
    for (int64_t r = 0; r < spec->n_merges; r++) {
        const char *m = spec->merges[r];
        if (!m) {
            st = ap_errf(err, AP_ERR_ARG, "tokenizer: merge %lld is NULL", (long long)r);
            goto done;
        }
        size_t len = spec->merge_lens ? spec->merge_lens[r] : strlen(m);
        const char *sp = len > 1 ? memchr(m + 1, ' ', len - 1) : NULL;
        if (!sp) {
            st = ap_errf(err, AP_ERR_FORMAT,
                         "tokenizer: merge %lld (\"%.*s\") has no space separator", (long long)r,
                         (int)(len > 64 ? 64 : len), m);
            goto done;
        }
        size_t la = (size_t)(sp - m), lb = len - la - 1;
        int32_t a = vocab_find(t, m, la);
        int32_t b = vocab_find(t, sp + 1, lb);
        if (a < 0 || b < 0) continue;
        if (la + lb > mapped_cap) {
            char *nb = realloc(mapped, la + lb);
            if (!nb) {
                st = out_of_memory(err, "tokenizer");
                goto done;
            }
            mapped = nb;
            mapped_cap = la + lb;
        }
        memcpy(mapped, m, la);
        memcpy(mapped + la, sp + 1, lb);
        int32_t ab = vocab_find(t, mapped, la + lb);
        if (ab < 0) continue;
        merge_insert(t, a, b, (int32_t)r, ab);
    }
done:
    free(mapped);
    return st;
}

ap_status ap_tokenizer_create(const ap_tokenizer_spec *spec, ap_tokenizer **out, ap_err *err) {
    ap_status st = AP_OK;
    ap_tokenizer *t = NULL;
    special_key *keys = NULL;
    int16_t cp_byte[256 + 68];
    if (!out) return ap_errf(err, AP_ERR_ARG, "tokenizer: no output pointer");
    *out = NULL;
    if (!spec || !spec->tokens || spec->n_vocab <= 0 || spec->n_vocab > INT32_MAX - 1) {
        st = ap_errf(err, AP_ERR_ARG,
                     "tokenizer: vocabulary missing or its size %lld is out of range",
                     spec ? (long long)spec->n_vocab : 0LL);
        goto cleanup;
    }
    if (spec->n_merges < 0 || spec->n_merges > INT32_MAX || (spec->n_merges > 0 && !spec->merges)) {
        st = ap_errf(err, AP_ERR_ARG,
                     "tokenizer: merge list missing or its size %lld is out of range",
                     (long long)spec->n_merges);
        goto cleanup;
    }
    if (spec->model != AP_TOK_BPE && spec->model != AP_TOK_SPM) {
        st = ap_errf(err, AP_ERR_ARG, "tokenizer: unknown tokenizer model %d", (int)spec->model);
        goto cleanup;
    }
    if (spec->model == AP_TOK_BPE && spec->pre != AP_PRE_GPT2 && spec->pre != AP_PRE_SMOLLM &&
        spec->pre != AP_PRE_LLAMA3 && spec->pre != AP_PRE_QWEN2) {
        st = ap_errf(err, AP_ERR_ARG, "tokenizer: unknown pre-tokenizer %d", (int)spec->pre);
        goto cleanup;
    }
    if (spec->model == AP_TOK_SPM && (spec->unk_id < -1 || spec->unk_id >= spec->n_vocab)) {
        st = ap_errf(err, AP_ERR_RANGE,
                     "tokenizer: unknown-token id %d outside the vocabulary of %lld",
                     (int)spec->unk_id, (long long)spec->n_vocab);
        goto cleanup;
    }
    if (spec->bos_id < -1 || spec->bos_id >= spec->n_vocab || spec->eos_id < -1 ||
        spec->eos_id >= spec->n_vocab) {
        st = ap_errf(err, AP_ERR_RANGE,
                     "tokenizer: bos id %d or eos id %d outside the vocabulary of %lld",
                     (int)spec->bos_id, (int)spec->eos_id, (long long)spec->n_vocab);
        goto cleanup;
    }
    if (spec->chat_format != 0 && spec->chat_format != 1) {
        st = ap_errf(err, AP_ERR_ARG, "tokenizer: unknown chat format %d", spec->chat_format);
        goto cleanup;
    }

    t = calloc(1, sizeof *t);
    if (!t) {
        st = out_of_memory(err, "tokenizer");
        goto cleanup;
    }
    int64_t n = spec->n_vocab;
    t->n_vocab = n;
    t->pre = spec->pre;
    t->bos_id = spec->bos_id;
    t->eos_id = spec->eos_id;
    t->add_bos = spec->add_bos != 0;
    t->chat_format = spec->chat_format;
    t->model = spec->model;
    t->add_space_prefix = spec->model == AP_TOK_SPM && spec->add_space_prefix != 0;
    t->unk_id = spec->model == AP_TOK_SPM ? spec->unk_id : -1;

    /* Token text, copied into one arena. */
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!spec->tokens[i]) {
            st = ap_errf(err, AP_ERR_ARG, "tokenizer: token %lld is NULL", (long long)i);
            goto cleanup;
        }
        size_t len = spec->token_lens ? spec->token_lens[i] : strlen(spec->tokens[i]);
        if (len > SIZE_MAX / 4 - total) {
            st = out_of_memory(err, "tokenizer");
            goto cleanup;
        }
        total += len;
    }
    t->text = malloc(total + 1);
    t->text_off = malloc((size_t)(n + 1) * sizeof *t->text_off);
    t->attr = calloc((size_t)n, 1);
    /* A normal token decodes to at most as many bytes as its text. */
    t->dec = malloc(total + 1);
    t->dec_off = malloc((size_t)(n + 1) * sizeof *t->dec_off);
    if (!t->text || !t->text_off || !t->attr || !t->dec || !t->dec_off) {
        st = out_of_memory(err, "tokenizer");
        goto cleanup;
    }
    for (unsigned c = 0; c < 256 + 68; c++) cp_byte[c] = (int16_t)ap_tokenizer_unicode_to_byte(c);
    size_t pos = 0, dpos = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t len = spec->token_lens ? spec->token_lens[i] : strlen(spec->tokens[i]);
        t->text_off[i] = pos;
        memcpy(t->text + pos, spec->tokens[i], len);
        int32_t type = spec->token_types ? spec->token_types[i] : 1;
        if (type == 3) t->attr[i] |= TOK_CONTROL;
        if (type == 4) t->attr[i] |= TOK_USER;
        t->dec_off[i] = dpos;
        if (t->attr[i] & TOK_SPECIAL) {
            memcpy(t->dec + dpos, spec->tokens[i], len);
            dpos += len;
        } else if (t->model == AP_TOK_SPM) {
            dpos += decode_spm_text(spec->tokens[i], len, t->dec + dpos);
        } else {
            dpos += decode_token_text(cp_byte, spec->tokens[i], len, t->dec + dpos);
        }
        pos += len;
    }
    t->text_off[n] = pos;
    t->dec_off[n] = dpos;

    /* text -> id */
    size_t vsize = table_size_for(n);
    t->vmap = malloc(vsize * sizeof *t->vmap);
    if (!t->vmap) {
        st = out_of_memory(err, "tokenizer");
        goto cleanup;
    }
    memset(t->vmap, 0xFF, vsize * sizeof *t->vmap);
    t->vmap_mask = vsize - 1;
    for (int64_t i = 0; i < n; i++) vocab_insert(t, (int32_t)i);

    st = t->model == AP_TOK_SPM ? spm_build_merges(t, spec->scores, err)
                                : bpe_build_merges(t, spec, err);
    if (st != AP_OK) goto cleanup;

    /* Special tokens, longest first so the first match at a position is the
     * longest (leftmost-longest, as HF's added-token matcher). */
    for (int64_t i = 0; i < n; i++)
        if ((t->attr[i] & TOK_SPECIAL) && t->text_off[i + 1] > t->text_off[i]) t->n_special++;
    if (t->n_special) {
        t->special = malloc(t->n_special * sizeof *t->special);
        keys = malloc(t->n_special * sizeof *keys);
        if (!t->special || !keys) {
            st = out_of_memory(err, "tokenizer");
            goto cleanup;
        }
        size_t k = 0;
        for (int64_t i = 0; i < n; i++) {
            if ((t->attr[i] & TOK_SPECIAL) && t->text_off[i + 1] > t->text_off[i]) {
                keys[k].len = t->text_off[i + 1] - t->text_off[i];
                keys[k].id = (int32_t)i;
                k++;
                t->special_first[(unsigned char)t->text[t->text_off[i]]] = 1;
            }
        }
        qsort(keys, t->n_special, sizeof *keys, cmp_special_len);
        for (k = 0; k < t->n_special; k++) {
            t->special[k] = keys[k].id;
            if (t->attr[keys[k].id] & TOK_USER) t->n_user++;
        }
    }

    *out = t;
    t = NULL;
cleanup:
    free(keys);
    ap_tokenizer_free(t);
    return st;
}

int64_t ap_tokenizer_n_vocab(const ap_tokenizer *t) { return t->n_vocab; }
int32_t ap_tokenizer_bos(const ap_tokenizer *t) { return t->bos_id; }
int32_t ap_tokenizer_eos(const ap_tokenizer *t) { return t->eos_id; }

int32_t ap_tokenizer_find(const ap_tokenizer *t, const char *text, size_t len) {
    return vocab_find(t, text, len);
}

/* ---------------------------------------------------------------------- */
/* from GGUF                                                                */

/* transformers' gemma_tokenizer: a token made only of whitespace that holds a
 * space ("  ", stored with real spaces and typed user-defined) is spelled
 * U+2581 once per code point and becomes an ordinary token. The spec's token
 * and type arrays are the caller's; both are patched in place (types must be
 * writable: from_gguf owns them), and the new spellings live in *arena. */
/* Code points of token s[0..n) when it is made only of whitespace and holds
 * a space (what gemma_respell_spaces respells), else 0. */
static size_t space_token_cps(const char *s, size_t n) {
    size_t ncp = 0;
    int space = 0, ws = n > 0;
    for (size_t k = 0; k < n && ws;) {
        uint32_t c;
        k += utf8_next((const unsigned char *)s + k, n - k, &c);
        space |= c == ' ';
        /* Python's str.strip(): Unicode White_Space, plus the C0
         * separators \x1c-\x1f it also strips. */
        ws = c < CP_INVALID_BASE &&
             ((ap_unicode_class(c) & AP_UCLASS_WS) || (c >= 0x1C && c <= 0x1F));
        ncp++;
    }
    return ws && space ? ncp : 0;
}

static ap_status gemma_respell_spaces(ap_tokenizer_spec *spec, char **arena, ap_err *err) {
    size_t need = 0;
    int32_t *types = (int32_t *)spec->token_types;
    for (int64_t i = 0; i < spec->n_vocab; i++) {
        size_t ncp = space_token_cps(spec->tokens[i], spec->token_lens[i]);
        if (ncp) need += ncp * SPM_SPACE_LEN + 1;
    }
    if (!need) return AP_OK;
    char *p = malloc(need);
    if (!p) return out_of_memory(err, "tokenizer");
    *arena = p;
    const char **tokens = (const char **)spec->tokens;
    size_t *lens = (size_t *)spec->token_lens;
    for (int64_t i = 0; i < spec->n_vocab; i++) {
        size_t ncp = space_token_cps(spec->tokens[i], spec->token_lens[i]);
        if (!ncp) continue;
        tokens[i] = p;
        lens[i] = ncp * SPM_SPACE_LEN;
        for (size_t k = 0; k < ncp; k++, p += SPM_SPACE_LEN) memcpy(p, SPM_SPACE, SPM_SPACE_LEN);
        *p++ = '\0';
        if (types && types[i] == 4) types[i] = 1;
    }
    return AP_OK;
}

ap_status ap_tokenizer_from_gguf(const ap_gguf *g, ap_tokenizer **out, ap_err *err) {
    ap_status st = AP_OK;
    const char **tokens = NULL, **merges = NULL;
    size_t *token_lens = NULL, *merge_lens = NULL;
    int32_t *types = NULL;
    char *respelled = NULL;
    float *scores = NULL;
    ap_tokenizer *t = NULL;
    const char *path = g ? ap_gguf_path(g) : "gguf";
    if (!out || !g) return ap_errf(err, AP_ERR_ARG, "tokenizer: no gguf or output pointer");
    *out = NULL;

    ap_tokenizer_spec spec;
    memset(&spec, 0, sizeof spec);

    const char *s;
    size_t slen;
    st = ap_gguf_get_str(g, "tokenizer.ggml.model", &s, &slen, err);
    if (st != AP_OK) goto cleanup;
#define STR_IS(lit) (slen == sizeof(lit) - 1 && memcmp(s, lit, slen) == 0)
    if (STR_IS("gpt2")) {
        spec.model = AP_TOK_BPE;
    } else if (STR_IS("llama")) {
        spec.model = AP_TOK_SPM;
    } else {
        st = ap_errf(err, AP_ERR_UNSUPPORTED,
                     "%s: tokenizer.ggml.model is \"%.*s\"; supported: \"gpt2\" (byte-level BPE), "
                     "\"llama\" (SentencePiece BPE)",
                     path, (int)(slen > 64 ? 64 : slen), s);
        goto cleanup;
    }

    /* transformers builds Gemma's tokenizer from a GGUF with GemmaTokenizer:
     * merges ranked by file order (Gemma's stored scores put its user-defined
     * tokens at -1000, not where they merge), no space prefix whatever the
     * file says, and the user-defined tokens made only of whitespace with a
     * space respelled with U+2581 so they take part in merges instead of being
     * matched literally. llama.cpp ranks by the stored scores and matches those
     * tokens literally, longest first; the two differ on runs of spaces longer
     * than the longest space token (40 spaces: transformers gives the tokens of
     * 16 + 24 spaces, llama.cpp 31 + 9). We follow transformers. */
    int gemma = 0;
    if (ap_gguf_find_key(g, "general.architecture") >= 0) {
        st = ap_gguf_get_str(g, "general.architecture", &s, &slen, err);
        if (st != AP_OK) goto cleanup;
        gemma = STR_IS("gemma") || STR_IS("gemma2") || STR_IS("gemma3");
    }
#undef STR_IS

    spec.pre = AP_PRE_GPT2;
    if (spec.model == AP_TOK_BPE && ap_gguf_find_key(g, "tokenizer.ggml.pre") >= 0) {
        st = ap_gguf_get_str(g, "tokenizer.ggml.pre", &s, &slen, err);
        if (st != AP_OK) goto cleanup;
#define PRE_IS(lit) (slen == sizeof(lit) - 1 && memcmp(s, lit, slen) == 0)
        if (PRE_IS("smollm"))
            spec.pre = AP_PRE_SMOLLM;
        else if (PRE_IS("llama-bpe") || PRE_IS("llama3"))
            spec.pre = AP_PRE_LLAMA3;
        else if (PRE_IS("qwen2"))
            spec.pre = AP_PRE_QWEN2;
        else if (PRE_IS("gpt2") || PRE_IS("default"))
            spec.pre = AP_PRE_GPT2;
        else {
            st = ap_errf(err, AP_ERR_UNSUPPORTED,
                         "%s: tokenizer.ggml.pre \"%.*s\" is not supported (supported: smollm, "
                         "llama-bpe, llama3, qwen2, gpt2, default)",
                         path, (int)(slen > 64 ? 64 : slen), s);
            goto cleanup;
        }
#undef PRE_IS
    }

    ap_gguf_type et;
    uint64_t n;
    st = ap_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, err);
    if (st != AP_OK) goto cleanup;
    if (et != AP_GGUF_STRING || n == 0 || n > INT32_MAX - 1) {
        st = ap_errf(err, AP_ERR_FORMAT,
                     "%s: tokenizer.ggml.tokens must be a non-empty string array (type %d, %llu "
                     "entries)",
                     path, (int)et, (unsigned long long)n);
        goto cleanup;
    }
    tokens = malloc(n * sizeof *tokens);
    token_lens = malloc(n * sizeof *token_lens);
    if (!tokens || !token_lens) {
        st = out_of_memory(err, path);
        goto cleanup;
    }
    for (uint64_t i = 0; i < n; i++) {
        st = ap_gguf_arr_str(g, "tokenizer.ggml.tokens", i, &tokens[i], &token_lens[i], err);
        if (st != AP_OK) goto cleanup;
    }
    spec.tokens = tokens;
    spec.token_lens = token_lens;
    spec.n_vocab = (int64_t)n;

    if (ap_gguf_find_key(g, "tokenizer.ggml.token_type") >= 0) {
        uint64_t nt;
        st = ap_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &nt, err);
        if (st != AP_OK) goto cleanup;
        if (nt != n) {
            st = ap_errf(err, AP_ERR_FORMAT,
                         "%s: tokenizer.ggml.token_type has %llu entries for %llu tokens", path,
                         (unsigned long long)nt, (unsigned long long)n);
            goto cleanup;
        }
        types = malloc(n * sizeof *types);
        if (!types) {
            st = out_of_memory(err, path);
            goto cleanup;
        }
        for (uint64_t i = 0; i < n; i++) {
            int64_t v;
            st = ap_gguf_arr_int(g, "tokenizer.ggml.token_type", i, &v, err);
            if (st != AP_OK) goto cleanup;
            types[i] = v < INT32_MIN || v > INT32_MAX ? 0 : (int32_t)v;
        }
        spec.token_types = types;
    }

    uint64_t nm = 0;
    /* SentencePiece merges are derived from the vocabulary instead. */
    if (spec.model == AP_TOK_BPE) {
        st = ap_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &nm, err);
        if (st != AP_OK) goto cleanup;
        if (et != AP_GGUF_STRING || nm > INT32_MAX) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: tokenizer.ggml.merges must be a string array",
                         path);
            goto cleanup;
        }
        merges = malloc((nm ? nm : 1) * sizeof *merges);
        merge_lens = malloc((nm ? nm : 1) * sizeof *merge_lens);
        if (!merges || !merge_lens) {
            st = out_of_memory(err, path);
            goto cleanup;
        }
        for (uint64_t i = 0; i < nm; i++) {
            st = ap_gguf_arr_str(g, "tokenizer.ggml.merges", i, &merges[i], &merge_lens[i], err);
            if (st != AP_OK) goto cleanup;
        }
        spec.merges = merges;
        spec.merge_lens = merge_lens;
        spec.n_merges = (int64_t)nm;
    }

    spec.bos_id = spec.eos_id = spec.unk_id = -1;
    const char *id_keys[3] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                              "tokenizer.ggml.unknown_token_id"};
    int32_t *id_dst[3] = {&spec.bos_id, &spec.eos_id, &spec.unk_id};
    for (int k = 0; k < 3; k++) {
        if (ap_gguf_find_key(g, id_keys[k]) < 0) continue;
        int64_t v;
        st = ap_gguf_get_int(g, id_keys[k], &v, err);
        if (st != AP_OK) goto cleanup;
        if (v < 0 || v >= (int64_t)n) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: %s = %lld is outside the vocabulary of %llu",
                         path, id_keys[k], (long long)v, (unsigned long long)n);
            goto cleanup;
        }
        *id_dst[k] = (int32_t)v;
    }
    /* A SentencePiece vocabulary that does not say gets BOS (transformers and
     * llama.cpp agree); byte-level BPE does not. */
    spec.add_bos = spec.model == AP_TOK_SPM;
    if (ap_gguf_find_key(g, "tokenizer.ggml.add_bos_token") >= 0) {
        st = ap_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &spec.add_bos, err);
        if (st != AP_OK) goto cleanup;
    }
    if (spec.model == AP_TOK_SPM) {
        /* Absent means a prefix (SentencePiece's default, transformers' too). */
        spec.add_space_prefix = !gemma;
        if (!gemma && ap_gguf_find_key(g, "tokenizer.ggml.add_space_prefix") >= 0) {
            st =
                ap_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &spec.add_space_prefix, err);
            if (st != AP_OK) goto cleanup;
        }
        /* Scores: Gemma ranks by file order (above); other SentencePiece
         * files by tokenizer.ggml.scores, as transformers and llama.cpp do
         * (file order when the file has none). */
        spec.scores = NULL;
        if (!gemma && ap_gguf_find_key(g, "tokenizer.ggml.scores") >= 0) {
            uint64_t ns = 0;
            st = ap_gguf_get_arr(g, "tokenizer.ggml.scores", NULL, &ns, err);
            if (st != AP_OK) goto cleanup;
            if (ns != (uint64_t)spec.n_vocab) {
                st = ap_errf(err, AP_ERR_FORMAT,
                             "%s: tokenizer.ggml.scores has %llu entries for %lld tokens", path,
                             (unsigned long long)ns, (long long)spec.n_vocab);
                goto cleanup;
            }
            if (!(scores = malloc((size_t)ns * sizeof *scores))) {
                st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory for %llu scores", path,
                             (unsigned long long)ns);
                goto cleanup;
            }
            for (uint64_t i = 0; i < ns; i++) {
                double d;
                st = ap_gguf_arr_float(g, "tokenizer.ggml.scores", i, &d, err);
                if (st != AP_OK) goto cleanup;
                if (!isfinite(d)) {
                    st = ap_errf(err, AP_ERR_FORMAT,
                                 "%s: tokenizer.ggml.scores[%llu] is not a finite number", path,
                                 (unsigned long long)i);
                    goto cleanup;
                }
                scores[i] = (float)d;
            }
            spec.scores = scores;
        }
        if (gemma) {
            st = gemma_respell_spaces(&spec, &respelled, err);
            if (st != AP_OK) goto cleanup;
        }
    }

    st = ap_tokenizer_create(&spec, &t, err);
    if (st != AP_OK) {
        ap_err_prefix(err, path);
        goto cleanup;
    }
    /* ChatML is recognised by its two markers; the Jinja template itself is
     * not interpreted. */
    if (vocab_find(t, "<|im_start|>", 12) >= 0 && vocab_find(t, "<|im_end|>", 10) >= 0)
        t->chat_format = 1;
    *out = t;
    t = NULL;
cleanup:
    free(tokens);
    free(token_lens);
    free(merges);
    free(merge_lens);
    free(types);
    free(respelled);
    free(scores);
    ap_tokenizer_free(t);
    return st;
}

/* ---------------------------------------------------------------------- */
/* encoding                                                                 */

typedef struct {
    int32_t rank;
    int32_t left;
    int32_t lid, rid;
    int32_t res; /* the merged token */
} bpe_cand;

/* Scratch for one encode call, grown as needed and reused across pieces. */
typedef struct {
    const ap_tokenizer *t;
    /* code points of the current segment */
    uint32_t *cp;
    uint8_t *cls;
    size_t *off; /* byte offset of cp[i]; off[n] = segment length */
    size_t cp_cap;
    /* BPE symbols of the current piece */
    int32_t *sym, *prev, *next;
    size_t sym_cap;
    bpe_cand *heap;
    size_t heap_n, heap_cap;
    char *mapped;
    size_t mapped_cap;
    /* output: token ids, or with `record` piece end offsets from `base` */
    int32_t *ids;
    size_t n_ids, ids_cap;
    int record;
    const unsigned char *base;
    size_t *ends;
    size_t n_ends, ends_cap;
} enc_state;

static int push_id(enc_state *e, int32_t id) {
    if (!grow((void **)&e->ids, &e->ids_cap, e->n_ids + 1, sizeof *e->ids)) return 0;
    e->ids[e->n_ids++] = id;
    return 1;
}

static int push_end(enc_state *e, size_t end) {
    if (!grow((void **)&e->ends, &e->ends_cap, e->n_ends + 1, sizeof *e->ends)) return 0;
    e->ends[e->n_ends++] = end;
    return 1;
}

static int cand_less(const bpe_cand *a, const bpe_cand *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int heap_push(enc_state *e, bpe_cand c) {
    if (!grow((void **)&e->heap, &e->heap_cap, e->heap_n + 1, sizeof *e->heap)) return 0;
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &e->heap[p])) break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = c;
    return 1;
}

static bpe_cand heap_pop(enc_state *e) {
    bpe_cand top = e->heap[0];
    bpe_cand last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && cand_less(&e->heap[c + 1], &e->heap[c])) c++;
        if (!cand_less(&e->heap[c], &last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = last;
    return top;
}

static int push_pair(enc_state *e, int32_t left, int32_t right) {
    int32_t rank, res;
    if (left < 0 || right < 0) return 1;
    int32_t a = e->sym[left], b = e->sym[right];
    if (a < 0 || b < 0 || !merge_find(e->t, a, b, &rank, &res)) return 1;
    bpe_cand c = {rank, left, a, b, res};
    return heap_push(e, c);
}

static int grow_symbols(enc_state *e, size_t m);
static int merge_symbols(enc_state *e, size_t m);

/* BPE over one pre-tokenized piece of m bytes. Returns 0 on allocation
 * failure. Bytes whose symbol is missing from the vocabulary are dropped (HF
 * does the same when there is no unknown token). */
static int bpe_piece(enc_state *e, const unsigned char *s, size_t m) {
    const ap_tokenizer *t = e->t;
    if (m == 0) return 1;
    if (e->record) return push_end(e, (size_t)(s - e->base) + m);
    if (m == 1) return t->byte_tok[s[0]] < 0 || push_id(e, t->byte_tok[s[0]]);

    /* Llama 3 (ignore_merges): a piece that is itself a token is taken whole,
     * even where the merges would split it differently. */
    if (t->pre == AP_PRE_LLAMA3) {
        /* (Not for Qwen 2: transformers' GGUF loader builds it without
         * ignore_merges.) */
        if (!grow((void **)&e->mapped, &e->mapped_cap, 2 * m, 1)) return 0;
        size_t k = 0;
        for (size_t i = 0; i < m; i++) k += utf8_put(t->byte_cp[s[i]], e->mapped + k);
        int32_t id = vocab_find(t, e->mapped, k);
        if (id >= 0) return push_id(e, id);
    }

    if (!grow_symbols(e, m)) return 0;
    for (size_t i = 0; i < m; i++) e->sym[i] = t->byte_tok[s[i]];
    return merge_symbols(e, m);
}

/* sym, prev and next share one capacity. */
static int grow_symbols(enc_state *e, size_t m) {
    if (m <= e->sym_cap) return 1;
    size_t cap = e->sym_cap;
    if (!grow((void **)&e->sym, &cap, m, sizeof *e->sym)) return 0;
    int32_t *np = realloc(e->prev, cap * sizeof *np);
    if (!np) return 0;
    e->prev = np;
    int32_t *nn = realloc(e->next, cap * sizeof *nn);
    if (!nn) return 0;
    e->next = nn;
    e->sym_cap = cap;
    return 1;
}

/* Merge sym[0..m) by rank, leftmost first on equal ranks, and emit the
 * result. Symbols < 0 (a byte without a token) never merge and are dropped. */
static int merge_symbols(enc_state *e, size_t m) {
    if (m == 0) return 1;
    e->heap_n = 0;
    for (size_t i = 0; i < m; i++) {
        e->prev[i] = (int32_t)i - 1;
        e->next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < m; i++)
        if (!push_pair(e, (int32_t)i, (int32_t)i + 1)) return 0;

    while (e->heap_n) {
        bpe_cand c = heap_pop(e);
        int32_t l = c.left, r = e->next[l];
        /* Stale: the left symbol was absorbed or changed, or its neighbour
         * is no longer the pair this candidate was made for. */
        if (e->sym[l] != c.lid || r < 0 || e->sym[r] != c.rid) continue;
        e->sym[l] = c.res;
        e->sym[r] = -2;
        e->next[l] = e->next[r];
        if (e->next[r] >= 0) e->prev[e->next[r]] = l;
        if (!push_pair(e, e->prev[l], l)) return 0;
        if (!push_pair(e, l, e->next[l])) return 0;
    }
    for (int32_t i = 0; i >= 0; i = e->next[i])
        if (e->sym[i] >= 0 && !push_id(e, e->sym[i])) return 0;
    return 1;
}

/* ---- pre-tokenizer matchers: length in code points of the match at i,
 * never past lim (the end of the piece being split, which the patterns see
 * as the end of the string). Always >= 1. */

#define CL_L AP_UCLASS_L
#define CL_N AP_UCLASS_N
#define CL_WS AP_UCLASS_WS

static size_t run_of(const uint8_t *cls, size_t j, size_t lim, unsigned bit) {
    while (j < lim && (cls[j] & bit)) j++;
    return j;
}

static size_t run_other(const uint8_t *cls, size_t j, size_t lim) {
    while (j < lim && cls[j] == 0) j++;
    return j;
}

/* \s+(?!\S)|\s+ : a whitespace run leaves its last character to the next
 * piece when a non-space follows, so " word" keeps its space. */
static size_t match_ws_tail(const uint8_t *cls, size_t i, size_t lim) {
    size_t j = run_of(cls, i, lim, CL_WS);
    if (j == lim) return j - i;
    return j - i > 1 ? j - i - 1 : 1;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t match_gpt2(const uint32_t *cp, const uint8_t *cls, size_t i, size_t lim) {
    uint32_t c = cp[i];
    if (c == '\'' && i + 1 < lim) {
        uint32_t c1 = cp[i + 1];
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
        if (i + 2 < lim) {
            uint32_t c2 = cp[i + 2];
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
                return 3;
        }
    }
    if (c == ' ' && i + 1 < lim) {
        unsigned n1 = cls[i + 1];
        if (n1 & CL_L) return run_of(cls, i + 1, lim, CL_L) - i;
        if (n1 & CL_N) return run_of(cls, i + 1, lim, CL_N) - i;
        if (n1 == 0) return run_other(cls, i + 1, lim) - i;
    }
    if (cls[i] & CL_L) return run_of(cls, i, lim, CL_L) - i;
    if (cls[i] & CL_N) return run_of(cls, i, lim, CL_N) - i;
    if (cls[i] == 0) return run_other(cls, i, lim) - i;
    if (cls[i] & CL_WS) return match_ws_tail(cls, i, lim);
    return 1;
}

static uint32_t fold_ascii(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c == 0x17F) return 's'; /* LATIN SMALL LETTER LONG S folds to s (Oniguruma (?i)) */
    return c;
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
 * | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * with max_digits 3; Qwen 2's pattern is the same with \p{N} (max_digits 1). */
static size_t match_llama3(const uint32_t *cp, const uint8_t *cls, size_t i, size_t lim,
                           size_t max_digits) {
    uint32_t c = cp[i];
    if (c == '\'' && i + 1 < lim) {
        uint32_t c1 = fold_ascii(cp[i + 1]);
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
        if (i + 2 < lim) {
            uint32_t c2 = fold_ascii(cp[i + 2]);
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
                return 3;
        }
    }
    int is_nl = c == '\r' || c == '\n';
    if (!is_nl && !(cls[i] & (CL_L | CL_N)) && i + 1 < lim && (cls[i + 1] & CL_L))
        return run_of(cls, i + 1, lim, CL_L) - i;
    if (cls[i] & CL_L) return run_of(cls, i, lim, CL_L) - i;
    if (cls[i] & CL_N) {
        size_t j = i + 1;
        while (j < lim && j < i + max_digits && (cls[j] & CL_N)) j++;
        return j - i;
    }
    size_t st = (c == ' ' && i + 1 < lim && cls[i + 1] == 0) ? i + 1 : i;
    if (cls[st] == 0) {
        size_t j = run_other(cls, st, lim);
        while (j < lim && (cp[j] == '\r' || cp[j] == '\n')) j++;
        return j - i;
    }
    if (cls[i] & CL_WS) {
        /* \s*[\r\n]+ : the greedy \s* backs off to the last newline of the run. */
        size_t j = run_of(cls, i, lim, CL_WS);
        for (size_t k = j; k > i; k--)
            if (cp[k - 1] == '\r' || cp[k - 1] == '\n') return k - i;
        return match_ws_tail(cls, i, lim);
    }
    return 1;
}

/* Pre-tokenize and BPE the bytes s[0..n) (no special tokens inside). */
static int encode_segment(enc_state *e, const unsigned char *s, size_t n) {
    const ap_tokenizer *t = e->t;
    if (n == 0) return 1;
    if (n + 1 > e->cp_cap) {
        /* cp, cls and off share one capacity. */
        size_t cap = e->cp_cap;
        if (!grow((void **)&e->cp, &cap, n + 1, sizeof *e->cp)) return 0;
        uint8_t *ncls = realloc(e->cls, cap * sizeof *ncls);
        if (!ncls) return 0;
        e->cls = ncls;
        size_t *noff = realloc(e->off, cap * sizeof *noff);
        if (!noff) return 0;
        e->off = noff;
        e->cp_cap = cap;
    }

    size_t ncp = 0;
    for (size_t i = 0; i < n;) {
        uint32_t c;
        size_t k = utf8_next(s + i, n - i, &c);
        e->cp[ncp] = c;
        e->cls[ncp] = c < CP_INVALID_BASE ? (uint8_t)ap_unicode_class(c) : 0;
        e->off[ncp] = i;
        ncp++;
        i += k;
    }
    e->off[ncp] = n;

    size_t i = 0;
    while (i < ncp) {
        size_t lim = ncp;
        if (t->pre == AP_PRE_SMOLLM) {
            /* \p{N} first: each number code point is a piece of its own and the
             * GPT-2 pattern then runs on the text between them. */
            if (e->cls[i] & CL_N) {
                if (!bpe_piece(e, s + e->off[i], e->off[i + 1] - e->off[i])) return 0;
                i++;
                continue;
            }
            lim = i;
            while (lim < ncp && !(e->cls[lim] & CL_N)) lim++;
        }
        while (i < lim) {
            size_t k = t->pre == AP_PRE_LLAMA3  ? match_llama3(e->cp, e->cls, i, lim, 3)
                       : t->pre == AP_PRE_QWEN2 ? match_llama3(e->cp, e->cls, i, lim, 1)
                                                : match_gpt2(e->cp, e->cls, i, lim);
            if (!bpe_piece(e, s + e->off[i], e->off[i + k] - e->off[i])) return 0;
            i += k;
        }
    }
    return 1;
}

/* SPM: one segment (text between special tokens) is one piece. Spaces become
 * U+2581; with add_space_prefix a segment at the start of the input gets one
 * in front unless it starts with one (HF Metaspace, prepend_scheme "first";
 * llama.cpp also prefixes segments after a special token, and prefixes even
 * text that starts with a space). Symbols are code points; one that is not a
 * token becomes its byte tokens if all exist, else the unknown token, runs of
 * which are fused (HF BPE byte_fallback + fuse_unk). */
static int encode_spm_segment(enc_state *e, const unsigned char *s, size_t n, int at_start) {
    const ap_tokenizer *t = e->t;
    if (n == 0) return 1;
    if (e->record) return push_end(e, (size_t)(s - e->base) + n);
    int prefix = t->add_space_prefix && at_start && s[0] != ' ' &&
                 !(n >= SPM_SPACE_LEN && memcmp(s, SPM_SPACE, SPM_SPACE_LEN) == 0);
    size_t spaces = 0;
    for (size_t i = 0; i < n; i++) spaces += s[i] == ' ';
    size_t m = n + (spaces + (size_t)prefix) * (SPM_SPACE_LEN - 1) + (size_t)prefix;
    if (!grow((void **)&e->mapped, &e->mapped_cap, m, 1)) return 0;
    char *q = e->mapped;
    size_t k = 0;
    if (prefix) {
        memcpy(q, SPM_SPACE, SPM_SPACE_LEN);
        k = SPM_SPACE_LEN;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(q + k, SPM_SPACE, SPM_SPACE_LEN);
            k += SPM_SPACE_LEN;
        } else {
            q[k++] = (char)s[i];
        }
    }
    /* At most one symbol per byte. */
    if (!grow_symbols(e, k)) return 0;
    size_t ns = 0;
    for (size_t i = 0; i < k;) {
        uint32_t c;
        size_t len = utf8_next((const unsigned char *)q + i, k - i, &c);
        int32_t id = c < CP_INVALID_BASE ? vocab_find(t, q + i, len) : -1;
        if (id >= 0) {
            e->sym[ns++] = id;
        } else {
            int all = 1;
            for (size_t b = 0; b < len; b++) all &= t->byte_tok[(unsigned char)q[i + b]] >= 0;
            if (all) {
                for (size_t b = 0; b < len; b++)
                    e->sym[ns++] = t->byte_tok[(unsigned char)q[i + b]];
            } else if (t->unk_id >= 0 && !(ns > 0 && e->sym[ns - 1] == t->unk_id)) {
                e->sym[ns++] = t->unk_id;
            }
        }
        i += len;
    }
    return merge_symbols(e, ns);
}

/* Length of the special token at s[0..n), 0 if none; *id set on a match. */
static size_t match_special(const ap_tokenizer *t, const char *s, size_t n, int parse_special,
                            int32_t *id) {
    for (size_t k = 0; k < t->n_special; k++) {
        int32_t sid = t->special[k];
        size_t len = t->text_off[sid + 1] - t->text_off[sid];
        if (!parse_special && (t->attr[sid] & TOK_CONTROL)) continue;
        if (len <= n && memcmp(s, t->text + t->text_off[sid], len) == 0) {
            *id = sid;
            return len;
        }
    }
    return 0;
}

static void enc_state_free(enc_state *e) {
    free(e->cp);
    free(e->cls);
    free(e->off);
    free(e->sym);
    free(e->prev);
    free(e->next);
    free(e->heap);
    free(e->mapped);
    free(e->ids);
    free(e->ends);
}

static int encode_any_segment(enc_state *e, const unsigned char *s, size_t n, int at_start) {
    return e->t->model == AP_TOK_SPM ? encode_spm_segment(e, s, n, at_start)
                                     : encode_segment(e, s, n);
}

/* Special-token split, then pre-tokenize and BPE (or record) each segment. */
static int run_encode(enc_state *e, const unsigned char *s, size_t len, int parse_special) {
    const ap_tokenizer *t = e->t;
    size_t seg = 0;
    if (parse_special ? t->n_special > 0 : t->n_user > 0) {
        for (size_t p = 0; p < len;) {
            int32_t sid;
            size_t k = t->special_first[s[p]]
                           ? match_special(t, (const char *)s + p, len - p, parse_special, &sid)
                           : 0;
            if (!k) {
                p++;
                continue;
            }
            if (!encode_any_segment(e, s + seg, p - seg, seg == 0)) return 0;
            if (e->record ? !push_end(e, p + k) : !push_id(e, sid)) return 0;
            p += k;
            seg = p;
        }
    }
    return encode_any_segment(e, s + seg, len - seg, seg == 0);
}

ap_status ap_tokenizer_encode(const ap_tokenizer *t, const char *text, size_t len,
                              int parse_special, int32_t **ids, size_t *n_ids, ap_err *err) {
    ap_status st = AP_OK;
    enc_state e;
    memset(&e, 0, sizeof e);
    e.t = t;
    if (!t || !ids || !n_ids || (!text && len)) {
        st = ap_errf(err, AP_ERR_ARG, "tokenizer: encode needs a tokenizer, text and outputs");
        goto cleanup;
    }
    *ids = NULL;
    *n_ids = 0;
    if (len > (size_t)INT32_MAX - 1) {
        st = ap_errf(err, AP_ERR_RANGE, "tokenizer: text of %zu bytes is too long to encode", len);
        goto cleanup;
    }
    if (!text) text = "";
    e.base = (const unsigned char *)text;
    /* Always hand back a buffer, even for no tokens. */
    if (!grow((void **)&e.ids, &e.ids_cap, len / 3 + 16, sizeof *e.ids)) {
        st = out_of_memory(err, "tokenizer");
        goto cleanup;
    }
    if (t->add_bos && t->bos_id >= 0 && !push_id(&e, t->bos_id)) {
        st = out_of_memory(err, "tokenizer");
        goto cleanup;
    }
    if (!run_encode(&e, e.base, len, parse_special)) {
        st = out_of_memory(err, "tokenizer");
        goto cleanup;
    }
    *ids = e.ids;
    *n_ids = e.n_ids;
    e.ids = NULL;
cleanup:
    enc_state_free(&e);
    return st;
}

ap_status ap_tokenizer_pretokenize(const ap_tokenizer *t, const char *text, size_t len,
                                   int parse_special, size_t **ends, size_t *n, ap_err *err) {
    ap_status st = AP_OK;
    enc_state e;
    memset(&e, 0, sizeof e);
    e.t = t;
    e.record = 1;
    if (!t || !ends || !n || (!text && len)) {
        st = ap_errf(err, AP_ERR_ARG, "tokenizer: pretokenize needs a tokenizer, text and outputs");
        goto cleanup;
    }
    *ends = NULL;
    *n = 0;
    if (!text) text = "";
    e.base = (const unsigned char *)text;
    if (!grow((void **)&e.ends, &e.ends_cap, 16, sizeof *e.ends)) {
        st = out_of_memory(err, "tokenizer");
        goto cleanup;
    }
    if (!run_encode(&e, e.base, len, parse_special)) {
        st = out_of_memory(err, "tokenizer");
        goto cleanup;
    }
    *ends = e.ends;
    *n = e.n_ends;
    e.ends = NULL;
cleanup:
    enc_state_free(&e);
    return st;
}

/* ---------------------------------------------------------------------- */
/* decoding and chat                                                        */

ap_status ap_tokenizer_decode(const ap_tokenizer *t, const int32_t *ids, size_t n, char **text,
                              size_t *len, ap_err *err) {
    ap_status st = AP_OK;
    char *buf = NULL;
    if (!t || !text || (!ids && n)) {
        st = ap_errf(err, AP_ERR_ARG, "tokenizer: decode needs a tokenizer, ids and an output");
        goto cleanup;
    }
    *text = NULL;
    if (len) *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab) {
            st = ap_errf(err, AP_ERR_RANGE,
                         "tokenizer: token id %d at position %zu is outside the "
                         "vocabulary of %lld",
                         (int)ids[i], i, (long long)t->n_vocab);
            goto cleanup;
        }
        total += t->dec_off[ids[i] + 1] - t->dec_off[ids[i]];
    }
    buf = malloc(total + 1);
    if (!buf) {
        st = ap_errf(err, AP_ERR_NOMEM, "tokenizer: out of memory decoding %zu tokens", n);
        goto cleanup;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = t->dec_off[ids[i] + 1] - t->dec_off[ids[i]];
        memcpy(buf + o, t->dec + t->dec_off[ids[i]], k);
        o += k;
    }
    /* HF's decoder for a prefixed SentencePiece vocabulary (Strip left 1)
     * drops one leading space of the whole text. */
    if (t->add_space_prefix && o > 0 && buf[0] == ' ') memmove(buf, buf + 1, o--);
    buf[o] = '\0';
    *text = buf;
    if (len) *len = o;
    buf = NULL;
cleanup:
    free(buf);
    return st;
}

#define CHATML_SYSTEM                                                                      \
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging " \
    "Face<|im_end|>\n"

ap_status ap_tokenizer_chat(const ap_tokenizer *t, const char *user_text, char **out, ap_err *err) {
    ap_status st = AP_OK;
    char *buf = NULL;
    if (!t || !user_text || !out) {
        st = ap_errf(err, AP_ERR_ARG, "tokenizer: chat needs a tokenizer, text and an output");
        goto cleanup;
    }
    *out = NULL;
    size_t n = strlen(user_text);
    const char *pre = "", *post = "";
    if (t->chat_format == 1) {
        pre = CHATML_SYSTEM "<|im_start|>user\n";
        post = "<|im_end|>\n<|im_start|>assistant\n";
    }
    size_t lp = strlen(pre), lq = strlen(post);
    if (n > SIZE_MAX - lp - lq - 1) {
        st = ap_errf(err, AP_ERR_RANGE, "tokenizer: chat message too long");
        goto cleanup;
    }
    buf = malloc(lp + n + lq + 1);
    if (!buf) {
        st = ap_errf(err, AP_ERR_NOMEM, "tokenizer: out of memory formatting a chat message");
        goto cleanup;
    }
    memcpy(buf, pre, lp);
    memcpy(buf + lp, user_text, n);
    memcpy(buf + lp + n, post, lq + 1);
    *out = buf;
    buf = NULL;
cleanup:
    free(buf);
    return st;
}
