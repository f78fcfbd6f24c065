/* A tiny random llama GGUF for tests: the same metadata keys, tensor names
 * and layouts as a real llama file, plus a minimal GPT-2 byte-level
 * tokenizer (256 byte tokens, a few dozen English merges, ChatML control
 * tokens), so model, tokenizer and capture tests can all run on it.
 *
 * Vocabulary: 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|> (control);
 * 3 + b is the token of byte b (GPT-2 byte-to-unicode form); merges follow;
 * ids beyond those (when n_vocab is larger) are "<|unused_N|>" (type 5).
 *
 * Weights are deterministic functions of opts.seed, scaled so attention rows
 * are neither uniform nor one-hot. */
#ifndef AP_SYNTH_MODEL_H
#define AP_SYNTH_MODEL_H

#include <stdint.h>

#include "common/status.h"
#include "kernels/quant.h"

typedef struct {
    int n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx;
    float rope_base, rms_eps;
    ap_ggml_type wtype;     /* every 2-D weight except the embeddings */
    ap_ggml_type embd_type; /* token_embd.weight (and output.weight) */
    int tied;               /* 1: no output.weight */
    uint64_t seed;

    /* Fault injection for error-path tests (all off by default). */
    const char *arch;              /* general.architecture; NULL: "llama" */
    const char *omit_tensor;       /* leave this tensor out */
    const char *bad_shape_tensor;  /* write it with one extra row (a vector:
                                      one extra element) */
    const char *raw_type_tensor;   /* write it as zero bytes of raw_type */
    ap_ggml_type raw_type;
    int omit_head_count_kv;        /* leave llama.attention.head_count_kv out */
    int omit_rope_base;            /* leave llama.rope.freq_base out */
    const char *rope_scaling_type; /* write ARCH.rope.scaling.type (NULL: absent) */
    float rope_scaling_factor;     /* write ARCH.rope.scaling.factor when > 0 */
} ap_synth_opts;

/* 2 layers, n_embd 64, 4 heads, 2 kv heads, head_dim 16, ffn 96, vocab 300,
 * ctx 512, rope base 10000, eps 1e-5, F32, tied, seed 1. */
void ap_synth_opts_default(ap_synth_opts *o);

/* Write the model to path (overwritten). */
ap_status ap_synth_model_write(const char *path, const ap_synth_opts *opts, ap_err *err);

/* A unique temporary file name under $TMPDIR (or /tmp) with the given
 * suffix, e.g. ".gguf"; the caller unlinks it. */
void ap_synth_tmp_path(char *buf, int n, const char *tag, const char *suffix);

#endif
