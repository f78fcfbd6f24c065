/* Writes the seed corpus for fuzz_gguf into a directory (default
 * tests/fuzz/corpus/gguf) using the GGUF builder. Not part of the CMake build;
 * run it when the seeds need regenerating, from the repository root:
 *
 *   gcc -std=c11 -D_GNU_SOURCE -I. tests/fuzz/make_gguf_seeds.c capture/gguf_write.c \
 *       capture/gguf.c kernels/quant.c common/status.c common/util.c -lm -o /tmp/make_gguf_seeds
 *   /tmp/make_gguf_seeds tests/fuzz/corpus/gguf
 *
 * Each seed stays under 20 KB. The seeds cover: a minimal file; a llama-like
 * file (architecture keys, tokenizer arrays, Q8_0/Q4_1/F32 tensors like the
 * real model); every metadata type including nested arrays with every
 * dequantizable tensor type (K-quants from fixed pseudo-random bytes); a
 * custom alignment; and a version-2 header. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/gguf_write.h"

#define CHECK(x)                                                    \
    do {                                                            \
        if ((x) != AP_OK) {                                         \
            fprintf(stderr, "make_gguf_seeds: %s\n", err.msg);      \
            exit(1);                                                \
        }                                                           \
    } while (0)

static ap_err err;

static uint32_t rng = 2463534242u;
static uint8_t rbyte(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return (uint8_t)rng;
}

static void fill_values(float *v, size_t n) {
    for (size_t i = 0; i < n; i++) v[i] = (float)((int)(rbyte() % 200) - 100) / 37.0f;
}

static void write_seed(ap_gguf_builder *b, const char *dir, const char *name, int version) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    uint8_t *buf;
    size_t n;
    CHECK(ap_gguf_builder_to_memory(b, &buf, &n, &err));
    if (version != 3) buf[4] = (uint8_t)version; /* v2 shares v3's layout */
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "make_gguf_seeds: cannot write %s\n", path);
        exit(1);
    }
    if (n > 20000) {
        fprintf(stderr, "make_gguf_seeds: %s is %zu bytes (limit 20000)\n", path, n);
        exit(1);
    }
    printf("%s: %zu bytes\n", path, n);
    free(buf);
    ap_gguf_builder_free(b);
}

static ap_gguf_builder *seed_minimal(void) {
    ap_gguf_builder *b;
    CHECK(ap_gguf_builder_create(&b, &err));
    CHECK(ap_gguf_builder_set_str(b, "general.architecture", "llama", &err));
    float v[8] = {1, -2, 3, -4, 5, -6, 7, -8};
    int64_t ne[1] = {8};
    CHECK(ap_gguf_builder_add_tensor_f32(b, "w", AP_GGML_F32, 1, ne, v, &err));
    return b;
}

static ap_gguf_builder *seed_llama(void) {
    ap_gguf_builder *b;
    CHECK(ap_gguf_builder_create(&b, &err));
    CHECK(ap_gguf_builder_set_str(b, "general.architecture", "llama", &err));
    CHECK(ap_gguf_builder_set_str(b, "general.name", "tiny", &err));
    CHECK(ap_gguf_builder_set_u32(b, "general.file_type", 3, &err));
    CHECK(ap_gguf_builder_set_u32(b, "general.quantization_version", 2, &err));
    CHECK(ap_gguf_builder_set_u32(b, "llama.context_length", 64, &err));
    CHECK(ap_gguf_builder_set_u32(b, "llama.embedding_length", 32, &err));
    CHECK(ap_gguf_builder_set_u32(b, "llama.block_count", 1, &err));
    CHECK(ap_gguf_builder_set_u32(b, "llama.feed_forward_length", 64, &err));
    CHECK(ap_gguf_builder_set_u32(b, "llama.attention.head_count", 2, &err));
    CHECK(ap_gguf_builder_set_u32(b, "llama.attention.head_count_kv", 1, &err));
    CHECK(ap_gguf_builder_set_u32(b, "llama.rope.dimension_count", 16, &err));
    CHECK(ap_gguf_builder_set_f32(b, "llama.rope.freq_base", 100000.0f, &err));
    CHECK(ap_gguf_builder_set_f32(b, "llama.attention.layer_norm_rms_epsilon", 1e-5f, &err));
    CHECK(ap_gguf_builder_set_str(b, "tokenizer.ggml.model", "gpt2", &err));
    CHECK(ap_gguf_builder_set_str(b, "tokenizer.ggml.pre", "smollm", &err));
    const char *toks[8] = {"<|endoftext|>",
                           "<|im_start|>",
                           "<|im_end|>",
                           "a",
                           "b",
                           "ab",
                           "\xc4\xa0",
                           "\xc4\xa0"
                           "a"};
    int32_t types[8] = {3, 3, 3, 1, 1, 1, 1, 1};
    const char *merges[3] = {"a b", "\xc4\xa0 a", "ab ab"};
    CHECK(ap_gguf_builder_set_arr_str(b, "tokenizer.ggml.tokens", toks, 8, &err));
    CHECK(ap_gguf_builder_set_arr_i32(b, "tokenizer.ggml.token_type", types, 8, &err));
    CHECK(ap_gguf_builder_set_arr_str(b, "tokenizer.ggml.merges", merges, 3, &err));
    CHECK(ap_gguf_builder_set_u32(b, "tokenizer.ggml.bos_token_id", 1, &err));
    CHECK(ap_gguf_builder_set_u32(b, "tokenizer.ggml.eos_token_id", 2, &err));
    CHECK(ap_gguf_builder_set_bool(b, "tokenizer.ggml.add_bos_token", 0, &err));
    float v[32 * 64];
    fill_values(v, 32 * 8);
    int64_t ne_emb[2] = {32, 8};
    CHECK(ap_gguf_builder_add_tensor_f32(b, "token_embd.weight", AP_GGML_Q8_0, 2, ne_emb, v, &err));
    int64_t ne_norm[1] = {32};
    fill_values(v, 32);
    CHECK(ap_gguf_builder_add_tensor_f32(b, "blk.0.attn_norm.weight", AP_GGML_F32, 1, ne_norm, v,
                                         &err));
    int64_t ne_q[2] = {32, 32}, ne_kv[2] = {32, 16}, ne_up[2] = {32, 64}, ne_down[2] = {64, 32};
    fill_values(v, 32 * 64);
    CHECK(ap_gguf_builder_add_tensor_f32(b, "blk.0.attn_q.weight", AP_GGML_Q4_1, 2, ne_q, v, &err));
    CHECK(
        ap_gguf_builder_add_tensor_f32(b, "blk.0.attn_k.weight", AP_GGML_Q4_1, 2, ne_kv, v, &err));
    CHECK(
        ap_gguf_builder_add_tensor_f32(b, "blk.0.attn_v.weight", AP_GGML_Q4_1, 2, ne_kv, v, &err));
    CHECK(ap_gguf_builder_add_tensor_f32(b, "blk.0.attn_output.weight", AP_GGML_Q4_1, 2, ne_q, v,
                                         &err));
    CHECK(ap_gguf_builder_add_tensor_f32(b, "blk.0.ffn_norm.weight", AP_GGML_F32, 1, ne_norm, v,
                                         &err));
    CHECK(ap_gguf_builder_add_tensor_f32(b, "blk.0.ffn_gate.weight", AP_GGML_Q4_1, 2, ne_up, v,
                                         &err));
    CHECK(
        ap_gguf_builder_add_tensor_f32(b, "blk.0.ffn_up.weight", AP_GGML_Q4_1, 2, ne_up, v, &err));
    CHECK(ap_gguf_builder_add_tensor_f32(b, "blk.0.ffn_down.weight", AP_GGML_Q4_1, 2, ne_down, v,
                                         &err));
    CHECK(
        ap_gguf_builder_add_tensor_f32(b, "output_norm.weight", AP_GGML_F32, 1, ne_norm, v, &err));
    return b;
}

static ap_gguf_builder *seed_all_types(void) {
    ap_gguf_builder *b;
    CHECK(ap_gguf_builder_create(&b, &err));
    uint8_t u8 = 7;
    int8_t i8 = -7;
    uint16_t u16 = 700;
    int16_t i16 = -700;
    int64_t i64 = -7000000000ll;
    double f64 = 3.25;
    CHECK(ap_gguf_builder_set_scalar(b, "s.u8", AP_GGUF_U8, &u8, &err));
    CHECK(ap_gguf_builder_set_scalar(b, "s.i8", AP_GGUF_I8, &i8, &err));
    CHECK(ap_gguf_builder_set_scalar(b, "s.u16", AP_GGUF_U16, &u16, &err));
    CHECK(ap_gguf_builder_set_scalar(b, "s.i16", AP_GGUF_I16, &i16, &err));
    CHECK(ap_gguf_builder_set_u32(b, "s.u32", 70000, &err));
    CHECK(ap_gguf_builder_set_i32(b, "s.i32", -70000, &err));
    CHECK(ap_gguf_builder_set_f32(b, "s.f32", 0.5f, &err));
    CHECK(ap_gguf_builder_set_bool(b, "s.bool", 1, &err));
    CHECK(ap_gguf_builder_set_str(b, "s.str", "text", &err));
    CHECK(ap_gguf_builder_set_u64(b, "s.u64", 1ull << 40, &err));
    CHECK(ap_gguf_builder_set_scalar(b, "s.i64", AP_GGUF_I64, &i64, &err));
    CHECK(ap_gguf_builder_set_scalar(b, "s.f64", AP_GGUF_F64, &f64, &err));
    uint16_t a16[3] = {1, 2, 3};
    CHECK(ap_gguf_builder_set_arr(b, "a.u16", AP_GGUF_U16, a16, 3, &err));
    double a64[2] = {1.5, -2.5};
    CHECK(ap_gguf_builder_set_arr(b, "a.f64", AP_GGUF_F64, a64, 2, &err));
    uint8_t ab[2] = {1, 0};
    CHECK(ap_gguf_builder_set_arr(b, "a.bool", AP_GGUF_BOOL, ab, 2, &err));
    /* [[1, 2], ["x"]] : an array of arrays with different element types */
    uint8_t nest[] = {9, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,                  /* ARRAY x2 */
                      0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 2,            /* u8 [1,2] */
                      8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,                  /* string x1 */
                      1, 0, 0, 0, 0, 0, 0, 0, 'x'};
    CHECK(ap_gguf_builder_set_raw(b, "a.nested", AP_GGUF_ARRAY, nest, sizeof nest, &err));
    float v[256];
    fill_values(v, 256);
    int64_t ne32[2] = {32, 2};
    CHECK(ap_gguf_builder_add_tensor_f32(b, "t.f16", AP_GGML_F16, 2, ne32, v, &err));
    CHECK(ap_gguf_builder_add_tensor_f32(b, "t.bf16", AP_GGML_BF16, 2, ne32, v, &err));
    CHECK(ap_gguf_builder_add_tensor_f32(b, "t.q4_0", AP_GGML_Q4_0, 2, ne32, v, &err));
    CHECK(ap_gguf_builder_add_tensor_f32(b, "t.q5_0", AP_GGML_Q5_0, 2, ne32, v, &err));
    CHECK(ap_gguf_builder_add_tensor_f32(b, "t.q5_1", AP_GGML_Q5_1, 2, ne32, v, &err));
    static const ap_ggml_type kq[3] = {AP_GGML_Q4_K, AP_GGML_Q5_K, AP_GGML_Q6_K};
    static const char *const kn[3] = {"t.q4_k", "t.q5_k", "t.q6_k"};
    for (int i = 0; i < 3; i++) {
        int64_t ne[1] = {256};
        size_t nb = ap_ggml_row_size(kq[i], 256);
        uint8_t raw[256];
        for (size_t k = 0; k < nb; k++) raw[k] = rbyte();
        /* finite binary16 scales: clear the top exponent bit */
        size_t dpos = kq[i] == AP_GGML_Q6_K ? 208 : 0;
        raw[dpos + 1] &= 0x3f;
        if (kq[i] != AP_GGML_Q6_K) raw[3] &= 0x3f;
        CHECK(ap_gguf_builder_add_tensor(b, kn[i], kq[i], 1, ne, raw, nb, &err));
    }
    return b;
}

static ap_gguf_builder *seed_align64(void) {
    ap_gguf_builder *b = seed_minimal();
    CHECK(ap_gguf_builder_set_u32(b, "general.alignment", 64, &err));
    float v[64];
    fill_values(v, 64);
    int64_t ne[2] = {32, 2};
    CHECK(ap_gguf_builder_add_tensor_f32(b, "q", AP_GGML_Q8_0, 2, ne, v, &err));
    return b;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "tests/fuzz/corpus/gguf";
    write_seed(seed_minimal(), dir, "minimal.gguf", 3);
    write_seed(seed_llama(), dir, "llama_tiny.gguf", 3);
    write_seed(seed_all_types(), dir, "all_types.gguf", 3);
    write_seed(seed_align64(), dir, "align64.gguf", 3);
    write_seed(seed_minimal(), dir, "minimal_v2.gguf", 2);
    return 0;
}
