/* libFuzzer target for the GGUF reader.
 *
 * Parses the input with ap_gguf_open_memory; on success walks every key,
 * value, array element (strings and integers, the first 4096 of each array)
 * and tensor, and dequantizes the first row of each supported tensor with
 * both the fast and the reference path. Aborts (a finding) if an error
 * message does not start with the file name or the two dequantizers
 * disagree on a non-NaN value.
 *
 * Build (see CMakeLists.txt, ATTNPRED_FUZZ=ON) and run:
 *   CC=clang cmake -S . -B build-fuzz -DATTNPRED_FUZZ=ON \
 *       -DCMAKE_C_FLAGS='-fsanitize=fuzzer-no-link,address,undefined -g'
 *   cmake --build build-fuzz --target fuzz_gguf
 *   mkdir -p /tmp/gguf-corpus
 *   build-fuzz/fuzz_gguf -max_total_time=60 -max_len=65536 /tmp/gguf-corpus tests/fuzz/corpus/gguf
 * Seeds in tests/fuzz/corpus/gguf come from tests/fuzz/make_gguf_seeds.c. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "capture/gguf.h"
#include "kernels/quant.h"

#define FUZZ_NAME "fuzz.gguf"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_msg(const ap_err *err) {
    size_t n = strlen(FUZZ_NAME);
    if (strncmp(err->msg, FUZZ_NAME, n) != 0 || err->msg[n] != ':') abort();
}

static void walk_kv(const ap_gguf *g, int64_t i) {
    size_t kl;
    const char *k = ap_gguf_key(g, i, &kl);
    if (!k) abort();
    int64_t iv;
    double dv;
    const char *s;
    size_t sl;
    ap_gguf_type et;
    uint64_t n;
    volatile unsigned char sink = 0;
    (void)ap_gguf_kv_int(g, i, &iv);
    (void)ap_gguf_kv_float(g, i, &dv);
    if (ap_gguf_kv_str(g, i, &s, &sl) == AP_OK && sl) sink ^= (unsigned char)s[sl - 1];
    if (kl >= 1024 || memchr(k, 0, kl)) return;
    char key[1024];
    memcpy(key, k, kl);
    key[kl] = '\0';
    if (ap_gguf_find_key(g, key) != i) abort(); /* keys are unique */
    ap_err err;
    int bv;
    if (ap_gguf_get_int(g, key, &iv, &err) != AP_OK) check_msg(&err);
    if (ap_gguf_get_float(g, key, &dv, &err) != AP_OK) check_msg(&err);
    if (ap_gguf_get_bool(g, key, &bv, &err) != AP_OK) check_msg(&err);
    if (ap_gguf_get_str(g, key, &s, &sl, &err) != AP_OK) check_msg(&err);
    else if (sl) sink ^= (unsigned char)s[sl - 1];
    if (ap_gguf_get_arr(g, key, &et, &n, &err) != AP_OK) {
        check_msg(&err);
        return;
    }
    uint64_t lim = n < 4096 ? n : 4096;
    for (uint64_t j = 0; j < lim; j++) {
        if (et == AP_GGUF_STRING) {
            if (ap_gguf_arr_str(g, key, j, &s, &sl, &err) != AP_OK) abort();
            if (sl) sink ^= (unsigned char)s[sl - 1];
        } else if (ap_gguf_arr_int(g, key, j, &iv, &err) != AP_OK) {
            check_msg(&err);
        }
    }
    if (ap_gguf_arr_str(g, key, n, &s, &sl, &err) == AP_OK) abort(); /* one past the end */
    (void)sink;
}

static void walk_tensor(const ap_gguf *g, int64_t i) {
    const ap_gguf_tensor *t = ap_gguf_tensor_at(g, i);
    if (!t) abort();
    if (t->name_len && !memchr(t->name, 0, t->name_len) && t->name_len < 128) {
        char name[128];
        memcpy(name, t->name, t->name_len);
        name[t->name_len] = '\0';
        if (ap_gguf_find_tensor(g, name) != t) abort();
    }
    if (t->nbytes) {
        volatile uint8_t b = ((const uint8_t *)t->data)[t->nbytes - 1];
        (void)b;
    }
    const ap_ggml_traits *tr = ap_ggml_type_traits(t->type);
    if (!tr) abort(); /* the reader admits only known types */
    if (!tr->dequant_ok || t->ne[0] <= 0 || t->ne[0] > (1 << 20)) return;
    size_t row = ap_ggml_row_size(t->type, t->ne[0]);
    /* A tensor with a zero dimension has no rows even if ne[0] > 0. */
    if (row == 0 || row > t->nbytes) return;
    float *a = malloc((size_t)t->ne[0] * sizeof(float));
    float *r = malloc((size_t)t->ne[0] * sizeof(float));
    if (a && r) {
        ap_err err;
        if (ap_dequant_row(t->type, t->data, a, t->ne[0], &err) != AP_OK) abort();
        if (ap_dequant_row_ref(t->type, t->data, r, t->ne[0], &err) != AP_OK) abort();
        for (int64_t k = 0; k < t->ne[0]; k++) {
            if (isnan(a[k]) && isnan(r[k])) continue;
            if (memcmp(&a[k], &r[k], sizeof(float)) != 0) abort();
        }
    }
    free(a);
    free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ap_gguf *g = NULL;
    ap_err err;
    err.msg[0] = '\0';
    if (ap_gguf_open_memory(data, size, FUZZ_NAME, &g, &err) != AP_OK) {
        check_msg(&err);
        if (g) abort();
        return 0;
    }
    for (int64_t i = 0; i < ap_gguf_n_kv(g); i++) walk_kv(g, i);
    for (int64_t i = 0; i < ap_gguf_n_tensors(g); i++) walk_tensor(g, i);
    if (ap_gguf_alignment(g) == 0 || (ap_gguf_alignment(g) & (ap_gguf_alignment(g) - 1))) abort();
    ap_gguf_free(g);
    return 0;
}
