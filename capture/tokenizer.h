/* Tokenizers for GGUF models, as transformers runs them (llama.cpp agrees
 * except where capture/tokenizer.c says otherwise):
 *  - byte-level BPE (tokenizer.ggml.model = "gpt2") with the pre-tokenizers
 *    "smollm", "llama-bpe" (Llama 3), "qwen2" and "gpt2"/"default";
 *  - SentencePiece-style BPE (tokenizer.ggml.model = "llama", e.g. Gemma 3):
 *    merges by token score, spaces spelled U+2581, byte fallback <0xXX>;
 * both with special-token splitting, and the model's chat format.
 *
 * Ownership: the tokenizer copies what it needs from the vocab arrays, so
 * the source (gguf or caller arrays) may be freed after creation. */
#ifndef AP_TOKENIZER_H
#define AP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "capture/gguf.h"
#include "common/status.h"

typedef enum {
    AP_PRE_GPT2 = 0,   /* plain GPT-2 pattern */
    AP_PRE_SMOLLM,     /* \p{N} split, then GPT-2 pattern */
    AP_PRE_LLAMA3,     /* Llama 3 pattern */
    AP_PRE_QWEN2       /* Llama 3 pattern with single \p{N} instead of \p{N}{1,3} */
} ap_pretok;

typedef enum {
    AP_TOK_BPE = 0, /* byte-level BPE: GPT-2 byte alphabet, ranked merges, pre-tokenizer */
    AP_TOK_SPM      /* SentencePiece BPE: merges by score, U+2581 spaces, <0xXX> fallback */
} ap_tok_model;

typedef struct ap_tokenizer ap_tokenizer;

typedef struct {
    const char *const *tokens; /* n_vocab NUL-terminated strings in byte-mapped form */
    const size_t *token_lens;  /* may be NULL: strlen; when given, NUL is not needed */
    const int32_t *token_types;/* n_vocab, may be NULL (all normal); 3 control, 4 user-defined */
    int64_t n_vocab;
    const char *const *merges; /* "A B" */
    const size_t *merge_lens;  /* may be NULL: strlen; when given, NUL is not needed */
    int64_t n_merges;
    ap_pretok pre;
    int32_t bos_id, eos_id;    /* -1 if none */
    int add_bos;
    int chat_format;           /* 0 none, 1 ChatML */
    /* SentencePiece only (model = AP_TOK_SPM); ignored for byte-level BPE, so a
     * zero-initialised spec keeps byte-level BPE. For SPM, tokens are in the
     * SentencePiece spelling (U+2581 for space, "<0xXX>" byte tokens), merges
     * and pre are ignored, and the merges are derived from the vocabulary: a
     * pair merges when its concatenation is a token, highest score first. */
    ap_tok_model model;
    const float *scores;       /* n_vocab; NULL: earlier tokens score higher (file order) */
    int add_space_prefix;      /* prepend U+2581 to text that starts the input */
    int32_t unk_id;            /* for a character lacking a token and <0xXX> tokens; -1 none */
} ap_tokenizer_spec;

ap_status ap_tokenizer_create(const ap_tokenizer_spec *spec, ap_tokenizer **out, ap_err *err);
/* Reads tokenizer.ggml.* from a GGUF; unknown model/pre give AP_ERR_UNSUPPORTED.
 * SentencePiece files rank merges by tokenizer.ggml.scores (file order without it).
 * Gemma files (general.architecture gemma, gemma2, gemma3) get transformers'
 * GGUF treatment: merges ranked by file order instead of the stored scores, and
 * the user-defined tokens made of spaces become ordinary "\u2581..." tokens. */
ap_status ap_tokenizer_from_gguf(const ap_gguf *g, ap_tokenizer **out, ap_err *err);
void ap_tokenizer_free(ap_tokenizer *t);

int64_t ap_tokenizer_n_vocab(const ap_tokenizer *t);
int32_t ap_tokenizer_bos(const ap_tokenizer *t);
int32_t ap_tokenizer_eos(const ap_tokenizer *t);
/* Id of the token whose text (byte-mapped form, as in the vocabulary) is
 * text[0..len), or -1. */
int32_t ap_tokenizer_find(const ap_tokenizer *t, const char *text, size_t len);

/* GPT-2 bytes_to_unicode: the code point byte b is spelled with in the
 * vocabulary, and its inverse (-1 for a code point outside the alphabet). */
uint32_t ap_tokenizer_byte_to_unicode(uint8_t b);
int ap_tokenizer_unicode_to_byte(uint32_t cp);

/* Encode len bytes of UTF-8 text (invalid UTF-8 is tokenized byte-wise, never
 * rejected). parse_special: split out special/control tokens written
 * literally. *ids is malloc'd (caller frees). add_bos follows the spec.
 * User-defined tokens (type 4) are split out whatever parse_special says, as
 * llama.cpp and HF do. Byte-level BPE: a byte whose one-byte token is missing
 * from the vocabulary is dropped (no unknown token; SmolLM2 lacks 21 such
 * bytes). SPM: a character that is not a token becomes its <0xXX> byte
 * tokens, or the unknown token (consecutive ones fused) when one is missing. */
ap_status ap_tokenizer_encode(const ap_tokenizer *t, const char *text, size_t len,
                              int parse_special, int32_t **ids, size_t *n_ids, ap_err *err);
/* The pieces encode runs BPE on: special-token split (as in encode; each
 * special token is a piece of its own) and pre-tokenizer. Piece i is
 * text[ends[i-1], ends[i]) with ends[-1] = 0. *ends malloc'd (caller frees).
 * For tests and debugging. */
ap_status ap_tokenizer_pretokenize(const ap_tokenizer *t, const char *text, size_t len,
                                   int parse_special, size_t **ends, size_t *n, ap_err *err);
/* Decode to UTF-8 bytes (malloc'd, NUL-terminated). Special tokens are emitted
 * as their literal text. SPM: U+2581 becomes a space, <0xXX> its byte, and
 * with add_space_prefix one leading space of the whole text is dropped. */
ap_status ap_tokenizer_decode(const ap_tokenizer *t, const int32_t *ids, size_t n, char **text,
                              size_t *len, ap_err *err);
/* Wrap a single user message in the model's chat format, ending with the
 * assistant generation prompt (malloc'd, caller frees). Without a chat format
 * the text is returned unchanged. */
ap_status ap_tokenizer_chat(const ap_tokenizer *t, const char *user_text, char **out,
                            ap_err *err);

#endif
