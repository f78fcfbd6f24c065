/* Byte-level BPE tokenizer (tokenizer.ggml.model = "gpt2") as llama.cpp and
 * transformers run it, with the pre-tokenizers "smollm", "llama-bpe" (Llama 3)
 * and "gpt2"/"default", special-token splitting, and the model's chat format.
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
    AP_PRE_LLAMA3      /* Llama 3 pattern */
} ap_pretok;

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
} ap_tokenizer_spec;

ap_status ap_tokenizer_create(const ap_tokenizer_spec *spec, ap_tokenizer **out, ap_err *err);
/* Reads tokenizer.ggml.* from a GGUF; unknown model/pre give AP_ERR_UNSUPPORTED. */
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
 * llama.cpp and HF do. A byte whose one-byte token is missing from the
 * vocabulary is dropped (no unknown token; SmolLM2 lacks 21 such bytes). */
ap_status ap_tokenizer_encode(const ap_tokenizer *t, const char *text, size_t len,
                              int parse_special, int32_t **ids, size_t *n_ids, ap_err *err);
/* The pieces encode runs BPE on: special-token split (as in encode; each
 * special token is a piece of its own) and pre-tokenizer. Piece i is
 * text[ends[i-1], ends[i]) with ends[-1] = 0. *ends malloc'd (caller frees).
 * For tests and debugging. */
ap_status ap_tokenizer_pretokenize(const ap_tokenizer *t, const char *text, size_t len,
                                   int parse_special, size_t **ends, size_t *n, ap_err *err);
/* Decode to UTF-8 bytes (malloc'd, NUL-terminated). Special tokens are emitted
 * as their literal text. */
ap_status ap_tokenizer_decode(const ap_tokenizer *t, const int32_t *ids, size_t n, char **text,
                              size_t *len, ap_err *err);
/* Wrap a single user message in the model's chat format, ending with the
 * assistant generation prompt (malloc'd, caller frees). Without a chat format
 * the text is returned unchanged. */
ap_status ap_tokenizer_chat(const ap_tokenizer *t, const char *user_text, char **out,
                            ap_err *err);

#endif
