/* GGUF reader and builder.
 *
 * Valid files come from the builder (round trips) and from a small raw byte
 * writer in this file, which is also how the corrupt inputs are crafted: each
 * validation rule gets a file that breaks exactly that rule, and the test
 * asserts the status and that the message starts with the file's name. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capture/gguf.h"
#include "capture/gguf_write.h"
#include "common/tolerance.h"
#include "common/util.h"
#include "kernels/quant.h"

#define MODEL_PATH AP_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define NAME "crafted.gguf"

/* ---- raw byte writer ---- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} rb;

static void rb_put(rb *b, const void *s, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        b->p = realloc(b->p, cap);
        cr_assert(b->p);
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void rb_le(rb *b, uint64_t v, int n) {
    uint8_t t[8];
    for (int i = 0; i < n; i++) t[i] = (uint8_t)(v >> (8 * i));
    rb_put(b, t, (size_t)n);
}
static void rb_u8(rb *b, uint8_t v) { rb_le(b, v, 1); }
static void rb_u16(rb *b, uint16_t v) { rb_le(b, v, 2); }
static void rb_u32(rb *b, uint32_t v) { rb_le(b, v, 4); }
static void rb_u64(rb *b, uint64_t v) { rb_le(b, v, 8); }
static void rb_strn(rb *b, const char *s, size_t n) {
    rb_u64(b, n);
    rb_put(b, s, n);
}
static void rb_str(rb *b, const char *s) { rb_strn(b, s, strlen(s)); }
static void rb_pad(rb *b, size_t a) {
    while (b->n % a) rb_u8(b, 0);
}
static void rb_hdr(rb *b, uint32_t version, uint64_t nt, uint64_t nkv) {
    rb_put(b, "GGUF", 4);
    rb_u32(b, version);
    rb_u64(b, nt);
    rb_u64(b, nkv);
}
static void rb_kv_u32(rb *b, const char *key, uint32_t v) {
    rb_str(b, key);
    rb_u32(b, AP_GGUF_U32);
    rb_u32(b, v);
}
static void rb_kv_str(rb *b, const char *key, const char *v) {
    rb_str(b, key);
    rb_u32(b, AP_GGUF_STRING);
    rb_str(b, v);
}
static void rb_tinfo(rb *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                     uint64_t off) {
    rb_str(b, name);
    rb_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) rb_u64(b, ne[i]);
    rb_u32(b, type);
    rb_u64(b, off);
}
static void rb_zeros(rb *b, size_t n) {
    for (size_t i = 0; i < n; i++) rb_u8(b, 0);
}

/* Walks everything the reader exposes; under ASan this proves the accessors
 * stay inside the buffer. */
static void walk(const ap_gguf *g) {
    for (int64_t i = 0; i < ap_gguf_n_kv(g); i++) {
        size_t kl;
        const char *k = ap_gguf_key(g, i, &kl);
        cr_assert_not_null(k);
        int64_t iv;
        double dv;
        const char *s;
        size_t sl;
        ap_gguf_type et;
        uint64_t n;
        (void)ap_gguf_kv_int(g, i, &iv);
        (void)ap_gguf_kv_float(g, i, &dv);
        if (ap_gguf_kv_str(g, i, &s, &sl) == AP_OK && sl)
            (void)*(volatile const char *)(s + sl - 1);
        if (ap_gguf_kv_arr(g, i, &et, &n) == AP_OK) {
            char key[256];
            /* Only keys a C string can name (a corrupted key may hold a NUL). */
            if (kl < sizeof key && memchr(k, 0, kl) == NULL) {
                memcpy(key, k, kl);
                key[kl] = '\0';
                cr_assert_eq(ap_gguf_find_key(g, key), i);
                uint64_t lim = n < 64 ? n : 64;
                for (uint64_t j = 0; j < lim; j++) {
                    if (et == AP_GGUF_STRING) {
                        cr_assert_eq(ap_gguf_arr_str(g, key, j, &s, &sl, NULL), AP_OK);
                        if (sl) (void)*(volatile const char *)(s + sl - 1);
                    } else {
                        (void)ap_gguf_arr_int(g, key, j, &iv, NULL);
                    }
                }
            }
        }
    }
    for (int64_t i = 0; i < ap_gguf_n_tensors(g); i++) {
        const ap_gguf_tensor *t = ap_gguf_tensor_at(g, i);
        cr_assert_not_null(t);
        if (t->nbytes) (void)*(volatile const uint8_t *)((const uint8_t *)t->data + t->nbytes - 1);
    }
}

static void expect_fail_named(const void *data, size_t n, const char *name, ap_status want,
                              const char *needle) {
    ap_gguf *g = (ap_gguf *)0x1;
    ap_err err = {0};
    ap_status st = ap_gguf_open_memory(data, n, name, &g, &err);
    cr_assert_eq(st, want, "status %s (%d), want %s; message: %s", ap_status_name(st), st,
                 ap_status_name(want), err.msg);
    cr_assert_null(g, "out must be NULL on failure");
    size_t nl = strlen(name);
    cr_assert(strncmp(err.msg, name, nl) == 0 && err.msg[nl] == ':',
              "message does not start with the file name: %s", err.msg);
    if (needle) cr_assert(strstr(err.msg, needle) != NULL, "'%s' not in: %s", needle, err.msg);
}

static void expect_fail(const rb *b, ap_status want, const char *needle) {
    expect_fail_named(b->p, b->n, NAME, want, needle);
}

static ap_gguf *open_ok(const rb *b) {
    ap_gguf *g = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_gguf_open_memory(b->p, b->n, NAME, &g, &err), AP_OK, "%s", err.msg);
    walk(g);
    return g;
}

/* A valid file: one string kv, F32 tensor "a" [8] and Q8_0 tensor "b" [32].
 * `a_off`/`b_off` let tests break the layout. */
static rb minimal(uint64_t b_off) {
    rb b = {0};
    rb_hdr(&b, 3, 2, 1);
    rb_kv_str(&b, "general.architecture", "llama");
    uint64_t ne_a[1] = {8}, ne_b[1] = {32};
    rb_tinfo(&b, "a", 1, ne_a, AP_GGML_F32, 0);
    rb_tinfo(&b, "b", 1, ne_b, AP_GGML_Q8_0, b_off);
    rb_pad(&b, 32);
    for (int i = 0; i < 8; i++) {
        float v = (float)i;
        rb_put(&b, &v, 4);
    }
    rb_pad(&b, 32);
    rb_zeros(&b, 34);
    return b;
}

/* ---- round trips ---- */

static const char *const k_strs[] = {"alpha", "", "h\xc3\xa9llo w\xc3\xb6rld"};

static ap_gguf_builder *full_builder(void) {
    ap_gguf_builder *b = NULL;
    ap_err err = {0};
#define OK(x) cr_assert_eq((x), AP_OK, "%s", err.msg)
    OK(ap_gguf_builder_create(&b, &err));
    uint8_t u8 = 200;
    int8_t i8 = -5;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int64_t i64 = -((int64_t)1 << 40);
    double f64 = 0.1;
    OK(ap_gguf_builder_set_scalar(b, "t.u8", AP_GGUF_U8, &u8, &err));
    OK(ap_gguf_builder_set_scalar(b, "t.i8", AP_GGUF_I8, &i8, &err));
    OK(ap_gguf_builder_set_scalar(b, "t.u16", AP_GGUF_U16, &u16, &err));
    OK(ap_gguf_builder_set_scalar(b, "t.i16", AP_GGUF_I16, &i16, &err));
    OK(ap_gguf_builder_set_u32(b, "t.u32", 4000000000u, &err));
    OK(ap_gguf_builder_set_i32(b, "t.i32", -2000000000, &err));
    OK(ap_gguf_builder_set_f32(b, "t.f32", 1.5f, &err));
    OK(ap_gguf_builder_set_bool(b, "t.bool", 1, &err));
    OK(ap_gguf_builder_set_str(b, "t.str", "h\xc3\xa9llo", &err));
    OK(ap_gguf_builder_set_u64(b, "t.u64_big", ((uint64_t)1 << 63) + 5, &err));
    OK(ap_gguf_builder_set_u64(b, "t.u64", 123456789012345ull, &err));
    OK(ap_gguf_builder_set_scalar(b, "t.i64", AP_GGUF_I64, &i64, &err));
    OK(ap_gguf_builder_set_scalar(b, "t.f64", AP_GGUF_F64, &f64, &err));
    OK(ap_gguf_builder_set_arr_str(b, "a.str", k_strs, 3, &err));
    int32_t ai[3] = {1, -2, 3};
    OK(ap_gguf_builder_set_arr_i32(b, "a.i32", ai, 3, &err));
    float af[2] = {0.5f, -1.0f};
    OK(ap_gguf_builder_set_arr_f32(b, "a.f32", af, 2, &err));
    uint8_t au8[3] = {1, 2, 255};
    OK(ap_gguf_builder_set_arr(b, "a.u8", AP_GGUF_U8, au8, 3, &err));
    int64_t ai64[2] = {-1, INT64_MAX};
    OK(ap_gguf_builder_set_arr(b, "a.i64", AP_GGUF_I64, ai64, 2, &err));
    uint64_t au64[2] = {7, UINT64_MAX};
    OK(ap_gguf_builder_set_arr(b, "a.u64", AP_GGUF_U64, au64, 2, &err));
    double af64[2] = {2.5, -1e300};
    OK(ap_gguf_builder_set_arr(b, "a.f64", AP_GGUF_F64, af64, 2, &err));
    uint8_t abool[2] = {0, 1};
    OK(ap_gguf_builder_set_arr(b, "a.bool", AP_GGUF_BOOL, abool, 2, &err));
    int16_t ai16[2] = {-7, 300};
    OK(ap_gguf_builder_set_arr(b, "a.i16", AP_GGUF_I16, ai16, 2, &err));
    OK(ap_gguf_builder_set_arr(b, "a.empty", AP_GGUF_U32, NULL, 0, &err));
    /* Nested: [[7, 8], [9]] as u16, and [["x"], []] as strings. */
    rb nest = {0};
    rb_u32(&nest, AP_GGUF_ARRAY);
    rb_u64(&nest, 2);
    rb_u32(&nest, AP_GGUF_U16);
    rb_u64(&nest, 2);
    rb_u16(&nest, 7);
    rb_u16(&nest, 8);
    rb_u32(&nest, AP_GGUF_U16);
    rb_u64(&nest, 1);
    rb_u16(&nest, 9);
    OK(ap_gguf_builder_set_raw(b, "a.nested", AP_GGUF_ARRAY, nest.p, nest.n, &err));
    nest.n = 0;
    rb_u32(&nest, AP_GGUF_ARRAY);
    rb_u64(&nest, 2);
    rb_u32(&nest, AP_GGUF_STRING);
    rb_u64(&nest, 1);
    rb_str(&nest, "x");
    rb_u32(&nest, AP_GGUF_STRING);
    rb_u64(&nest, 0);
    OK(ap_gguf_builder_set_raw(b, "a.nested_str", AP_GGUF_ARRAY, nest.p, nest.n, &err));
    free(nest.p);
    /* Setting a key again replaces it. */
    OK(ap_gguf_builder_set_str(b, "general.architecture", "mamba", &err));
    OK(ap_gguf_builder_set_str(b, "general.architecture", "llama", &err));

    /* Tensors: raw bytes, and quantized from values every format represents
     * exactly (see each comment). */
    float f32[8] = {1, 2, 3, 4, -5, 6.5f, 7, 8};
    int64_t ne_f32[2] = {4, 2};
    OK(ap_gguf_builder_add_tensor(b, "t.f32", AP_GGML_F32, 2, ne_f32, f32, sizeof f32, &err));
    float f16v[3] = {1.0f, -2.0f, 0.5f};
    int64_t ne3[1] = {3};
    OK(ap_gguf_builder_add_tensor_f32(b, "t.f16", AP_GGML_F16, 1, ne3, f16v, &err));
    float bfv[2] = {1.5f, -3.0f};
    int64_t ne2[1] = {2};
    OK(ap_gguf_builder_add_tensor_f32(b, "t.bf16", AP_GGML_BF16, 1, ne2, bfv, &err));
    float scalar = 42.0f;
    OK(ap_gguf_builder_add_tensor_f32(b, "t.scalar", AP_GGML_F32, 0, NULL, &scalar, &err));
#undef OK
    return b;
}

/* Exactly representable inputs for the block quantizers: row 0 has its
 * largest magnitude negative, row 1 positive (the sign of d flips). */
static void exact_values(ap_ggml_type t, float *x /* 64 */) {
    for (int j = 0; j < 32; j++) {
        switch (t) {
        case AP_GGML_Q4_0: x[j] = 0.5f * (float)((j % 16) - 8); break; /* d = 0.5 */
        case AP_GGML_Q4_1: x[j] = -1.0f + 0.25f * (float)(j % 16); break; /* d .25, m -1 */
        case AP_GGML_Q5_0: x[j] = 0.25f * (float)(j - 16); break;        /* d = 0.25 */
        case AP_GGML_Q5_1: x[j] = 3.0f + 0.125f * (float)j; break;       /* d .125, m 3 */
        default: x[j] = 0.0625f * (float)(8 * j - 121); break;           /* Q8_0: q up to 127 */
        }
        x[32 + j] = (t == AP_GGML_Q4_1 || t == AP_GGML_Q5_1) ? 0.0f : -x[j];
    }
}

static void check_full(const ap_gguf *g) {
    ap_err err = {0};
    int64_t v;
    double d;
    int bv;
    const char *s;
    size_t sl;
    ap_gguf_type et;
    uint64_t n;
    cr_assert_eq(ap_gguf_version(g), 3u);
    cr_assert_eq(ap_gguf_alignment(g), 32u);
    cr_assert_eq(ap_gguf_n_kv(g), 26);
    /* keys keep insertion order */
    cr_assert_eq(ap_gguf_find_key(g, "t.u8"), 0);
    cr_assert_eq(ap_gguf_find_key(g, "general.architecture"), 25);
    cr_assert_eq(ap_gguf_find_key(g, "nope"), -1);
    cr_assert_eq(ap_gguf_find_key(g, "t.u"), -1, "prefix must not match");
    cr_assert_eq(ap_gguf_kv_type(g, 0), AP_GGUF_U8);
    cr_assert_eq(ap_gguf_kv_type(g, ap_gguf_find_key(g, "t.f64")), AP_GGUF_F64);
    cr_assert_eq(ap_gguf_kv_type(g, 999), AP_GGUF_TYPE_COUNT);
    cr_assert_null(ap_gguf_key(g, -1, &sl));

    cr_assert_eq(ap_gguf_get_int(g, "t.u8", &v, &err), AP_OK);
    cr_assert_eq(v, 200);
    cr_assert_eq(ap_gguf_get_int(g, "t.i8", &v, &err), AP_OK);
    cr_assert_eq(v, -5);
    cr_assert_eq(ap_gguf_get_int(g, "t.u16", &v, &err), AP_OK);
    cr_assert_eq(v, 60000);
    cr_assert_eq(ap_gguf_get_int(g, "t.i16", &v, &err), AP_OK);
    cr_assert_eq(v, -30000);
    cr_assert_eq(ap_gguf_get_int(g, "t.u32", &v, &err), AP_OK);
    cr_assert_eq(v, 4000000000ll);
    cr_assert_eq(ap_gguf_get_int(g, "t.i32", &v, &err), AP_OK);
    cr_assert_eq(v, -2000000000ll);
    cr_assert_eq(ap_gguf_get_int(g, "t.u64", &v, &err), AP_OK);
    cr_assert_eq(v, 123456789012345ll);
    cr_assert_eq(ap_gguf_get_int(g, "t.i64", &v, &err), AP_OK);
    cr_assert_eq(v, -((int64_t)1 << 40));
    cr_assert_eq(ap_gguf_get_int(g, "t.u64_big", &v, &err), AP_ERR_RANGE);
    cr_assert(strncmp(err.msg, ap_gguf_path(g), strlen(ap_gguf_path(g))) == 0, "%s", err.msg);
    cr_assert_eq(ap_gguf_get_int(g, "t.str", &v, &err), AP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "t.str") && strstr(err.msg, "string"), "%s", err.msg);
    cr_assert_eq(ap_gguf_get_int(g, "missing.key", &v, &err), AP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "missing.key") != NULL, "%s", err.msg);
    cr_assert_eq(ap_gguf_get_int(g, "t.f32", &v, &err), AP_ERR_FORMAT);

    cr_assert_eq(ap_gguf_get_float(g, "t.f32", &d, &err), AP_OK);
    cr_assert(d == 1.5);
    cr_assert_eq(ap_gguf_get_float(g, "t.f64", &d, &err), AP_OK);
    cr_assert(d == 0.1, "f64 must round-trip bit-exactly");
    cr_assert_eq(ap_gguf_get_float(g, "t.u32", &d, &err), AP_ERR_FORMAT);
    cr_assert_eq(ap_gguf_get_bool(g, "t.bool", &bv, &err), AP_OK);
    cr_assert_eq(bv, 1);
    cr_assert_eq(ap_gguf_get_bool(g, "t.u8", &bv, &err), AP_ERR_FORMAT);
    cr_assert_eq(ap_gguf_get_str(g, "t.str", &s, &sl, &err), AP_OK);
    cr_assert(sl == 6 && memcmp(s, "h\xc3\xa9llo", 6) == 0);
    cr_assert_eq(ap_gguf_get_str(g, "general.architecture", &s, &sl, &err), AP_OK);
    cr_assert(sl == 5 && memcmp(s, "llama", 5) == 0);
    cr_assert_eq(ap_gguf_get_str(g, "a.str", &s, &sl, &err), AP_ERR_FORMAT);

    cr_assert_eq(ap_gguf_get_arr(g, "a.str", &et, &n, &err), AP_OK);
    cr_assert(et == AP_GGUF_STRING && n == 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(ap_gguf_arr_str(g, "a.str", (uint64_t)i, &s, &sl, &err), AP_OK);
        cr_assert(sl == strlen(k_strs[i]) && memcmp(s, k_strs[i], sl) == 0, "string %d", i);
    }
    cr_assert_eq(ap_gguf_arr_str(g, "a.str", 3, &s, &sl, &err), AP_ERR_RANGE);
    cr_assert_eq(ap_gguf_arr_str(g, "a.i32", 0, &s, &sl, &err), AP_ERR_FORMAT);
    cr_assert_eq(ap_gguf_arr_int(g, "a.i32", 1, &v, &err), AP_OK);
    cr_assert_eq(v, -2);
    cr_assert_eq(ap_gguf_arr_int(g, "a.i32", 3, &v, &err), AP_ERR_RANGE);
    cr_assert_eq(ap_gguf_arr_int(g, "a.u8", 2, &v, &err), AP_OK);
    cr_assert_eq(v, 255);
    cr_assert_eq(ap_gguf_arr_int(g, "a.i16", 0, &v, &err), AP_OK);
    cr_assert_eq(v, -7);
    cr_assert_eq(ap_gguf_arr_int(g, "a.i64", 1, &v, &err), AP_OK);
    cr_assert_eq(v, INT64_MAX);
    cr_assert_eq(ap_gguf_arr_int(g, "a.u64", 0, &v, &err), AP_OK);
    cr_assert_eq(v, 7);
    cr_assert_eq(ap_gguf_arr_int(g, "a.u64", 1, &v, &err), AP_ERR_RANGE);
    cr_assert_eq(ap_gguf_arr_int(g, "a.f32", 0, &v, &err), AP_ERR_FORMAT);
    double fd = 0.0;
    cr_assert_eq(ap_gguf_arr_float(g, "a.f32", 1, &fd, &err), AP_OK, "%s", err.msg);
    cr_assert(fd == -1.0, "a.f32[1] = %g", fd);
    cr_assert_eq(ap_gguf_arr_float(g, "a.f64", 0, &fd, &err), AP_OK, "%s", err.msg);
    cr_assert(fd == 2.5, "a.f64[0] = %g", fd);
    cr_assert_eq(ap_gguf_arr_float(g, "a.f32", 2, &fd, &err), AP_ERR_RANGE);
    cr_assert_eq(ap_gguf_arr_float(g, "a.i32", 0, &fd, &err), AP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "a.i32") != NULL, "%s", err.msg);
    cr_assert_eq(ap_gguf_arr_float(g, "no.such", 0, &fd, &err), AP_ERR_FORMAT);
    cr_assert_eq(ap_gguf_get_arr(g, "a.f64", &et, &n, &err), AP_OK);
    cr_assert(et == AP_GGUF_F64 && n == 2);
    cr_assert_eq(ap_gguf_get_arr(g, "a.bool", &et, &n, &err), AP_OK);
    cr_assert(et == AP_GGUF_BOOL && n == 2);
    cr_assert_eq(ap_gguf_get_arr(g, "a.empty", &et, &n, &err), AP_OK);
    cr_assert(et == AP_GGUF_U32 && n == 0);
    cr_assert_eq(ap_gguf_get_arr(g, "a.nested", &et, &n, &err), AP_OK);
    cr_assert(et == AP_GGUF_ARRAY && n == 2);
    cr_assert_eq(ap_gguf_get_arr(g, "a.nested_str", &et, &n, &err), AP_OK);
    cr_assert(et == AP_GGUF_ARRAY && n == 2);
    cr_assert_eq(ap_gguf_get_arr(g, "t.u8", &et, &n, &err), AP_ERR_FORMAT);

    /* by-index accessors */
    int64_t i_u16 = ap_gguf_find_key(g, "t.u16");
    cr_assert_eq(ap_gguf_kv_int(g, i_u16, &v), AP_OK);
    cr_assert_eq(v, 60000);
    cr_assert_eq(ap_gguf_kv_int(g, ap_gguf_find_key(g, "t.u64_big"), &v), AP_ERR_RANGE);
    cr_assert_eq(ap_gguf_kv_float(g, i_u16, &d), AP_ERR_ARG);
    cr_assert_eq(ap_gguf_kv_float(g, ap_gguf_find_key(g, "t.f32"), &d), AP_OK);
    cr_assert(d == 1.5);
    cr_assert_eq(ap_gguf_kv_str(g, ap_gguf_find_key(g, "t.str"), &s, &sl), AP_OK);
    cr_assert_eq(sl, 6u);
    cr_assert_eq(ap_gguf_kv_arr(g, ap_gguf_find_key(g, "a.i32"), &et, &n), AP_OK);
    cr_assert(et == AP_GGUF_I32 && n == 3);
    cr_assert_eq(ap_gguf_kv_arr(g, -1, &et, &n), AP_ERR_ARG);
    cr_assert_eq(ap_gguf_kv_int(g, 1000, &v), AP_ERR_ARG);

    /* tensors */
    const ap_gguf_tensor *t = ap_gguf_find_tensor(g, "t.f32");
    cr_assert_not_null(t);
    cr_assert(t->n_dims == 2 && t->ne[0] == 4 && t->ne[1] == 2 && t->ne[2] == 1 && t->ne[3] == 1);
    cr_assert(t->type == AP_GGML_F32 && t->nbytes == 32 && t->offset == 0);
    float row[64];
    cr_assert_eq(ap_dequant_row(t->type, t->data, row, 8, &err), AP_OK);
    cr_assert(row[5] == 6.5f && row[4] == -5.0f);
    t = ap_gguf_find_tensor(g, "t.f16");
    cr_assert(t && t->type == AP_GGML_F16 && t->nbytes == 6 && t->offset == 32);
    cr_assert_eq(ap_dequant_row(t->type, t->data, row, 3, &err), AP_OK);
    cr_assert(row[0] == 1.0f && row[1] == -2.0f && row[2] == 0.5f);
    t = ap_gguf_find_tensor(g, "t.bf16");
    cr_assert(t && t->type == AP_GGML_BF16 && t->offset == 64);
    cr_assert_eq(ap_dequant_row(t->type, t->data, row, 2, &err), AP_OK);
    cr_assert(row[0] == 1.5f && row[1] == -3.0f);
    t = ap_gguf_find_tensor(g, "t.scalar");
    cr_assert(t && t->n_dims == 0 && t->ne[0] == 1 && t->nbytes == 4);
    cr_assert_eq(ap_dequant_row(t->type, t->data, row, 1, &err), AP_OK);
    cr_assert(row[0] == 42.0f);
    cr_assert_null(ap_gguf_find_tensor(g, "t.f3"));
    cr_assert_null(ap_gguf_tensor_at(g, 99));
    for (int64_t i = 0; i < ap_gguf_n_tensors(g); i++) {
        const ap_gguf_tensor *ti = ap_gguf_tensor_at(g, i);
        cr_assert_eq(ti->offset % 32, 0u);
        cr_assert_eq(ap_gguf_find_tensor(g, "t.f32"), ap_gguf_tensor_at(g, 0));
    }
}

Test(gguf, builder_reader_round_trip_memory) {
    ap_gguf_builder *b = full_builder();
    uint8_t *buf = NULL;
    size_t n = 0;
    ap_err err = {0};
    cr_assert_eq(ap_gguf_builder_to_memory(b, &buf, &n, &err), AP_OK, "%s", err.msg);
    ap_gguf *g = NULL;
    cr_assert_eq(ap_gguf_open_memory(buf, n, "mem.gguf", &g, &err), AP_OK, "%s", err.msg);
    cr_assert_str_eq(ap_gguf_path(g), "mem.gguf");
    check_full(g);
    walk(g);
    ap_gguf_free(g);
    ap_gguf_free(NULL);
    ap_gguf_builder_free(b);
    ap_gguf_builder_free(NULL);
    free(buf);
}

Test(gguf, builder_reader_round_trip_file) {
    char dir[] = "/tmp/ap_test_gguf_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[256], tmp[300];
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    ap_gguf_builder *b = full_builder();
    ap_err err = {0};
    cr_assert_eq(ap_gguf_builder_write(b, path, &err), AP_OK, "%s", err.msg);
    ap_tmp_name(tmp, sizeof tmp, path);
    cr_assert(!ap_file_exists(tmp), "temporary file left behind");
    ap_gguf *g = NULL;
    cr_assert_eq(ap_gguf_open(path, &g, &err), AP_OK, "%s", err.msg);
    cr_assert_str_eq(ap_gguf_path(g), path);
    check_full(g);
    ap_gguf_free(g);
    /* Unwritable destination: clear error naming the path, nothing left. */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x.gguf", dir);
    cr_assert_eq(ap_gguf_builder_write(b, bad, &err), AP_ERR_IO);
    cr_assert(strstr(err.msg, bad) != NULL, "%s", err.msg);
    ap_gguf_builder_free(b);
    unlink(path);
    rmdir(dir);
}

Test(gguf, quantizers_round_trip_exact_values) {
    static const ap_ggml_type types[] = {AP_GGML_Q4_0, AP_GGML_Q4_1, AP_GGML_Q5_0, AP_GGML_Q5_1,
                                         AP_GGML_Q8_0};
    ap_gguf_builder *b = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_gguf_builder_create(&b, &err), AP_OK);
    char name[32];
    float x[5][64];
    for (int i = 0; i < 5; i++) {
        exact_values(types[i], x[i]);
        snprintf(name, sizeof name, "q%d", i);
        /* 3-D for one of them: [32, 1, 2] */
        int64_t ne[3] = {32, i == 4 ? 1 : 2, i == 4 ? 2 : 1};
        cr_assert_eq(
            ap_gguf_builder_add_tensor_f32(b, name, types[i], i == 4 ? 3 : 2, ne, x[i], &err),
            AP_OK, "%s", err.msg);
    }
    uint8_t *buf = NULL;
    size_t n = 0;
    cr_assert_eq(ap_gguf_builder_to_memory(b, &buf, &n, &err), AP_OK, "%s", err.msg);
    ap_gguf *g = NULL;
    cr_assert_eq(ap_gguf_open_memory(buf, n, "q.gguf", &g, &err), AP_OK, "%s", err.msg);
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof name, "q%d", i);
        const ap_gguf_tensor *t = ap_gguf_find_tensor(g, name);
        cr_assert(t && t->type == types[i]);
        cr_assert_eq(t->nbytes, (size_t)2 * ap_ggml_type_traits(types[i])->type_size);
        float y[64];
        cr_assert_eq(ap_dequant_row(t->type, t->data, y, 64, &err), AP_OK);
        for (int j = 0; j < 64; j++)
            cr_assert(fabs((double)y[j] - x[i][j]) <= AP_TOL_DEQUANT_ABS, "%s [%d]: %g vs %g",
                      ap_ggml_type_traits(types[i])->name, j, (double)y[j], (double)x[i][j]);
    }
    ap_gguf_free(g);
    ap_gguf_builder_free(b);
    free(buf);
}

Test(gguf, custom_alignment) {
    ap_gguf_builder *b = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_gguf_builder_create(&b, &err), AP_OK);
    cr_assert_eq(ap_gguf_builder_set_u32(b, "general.alignment", 64, &err), AP_OK);
    float v[3] = {1, 2, 3};
    int64_t ne[1] = {3};
    cr_assert_eq(ap_gguf_builder_add_tensor_f32(b, "x", AP_GGML_F32, 1, ne, v, &err), AP_OK);
    cr_assert_eq(ap_gguf_builder_add_tensor_f32(b, "y", AP_GGML_F32, 1, ne, v, &err), AP_OK);
    uint8_t *buf;
    size_t n;
    cr_assert_eq(ap_gguf_builder_to_memory(b, &buf, &n, &err), AP_OK, "%s", err.msg);
    ap_gguf *g = NULL;
    cr_assert_eq(ap_gguf_open_memory(buf, n, "a.gguf", &g, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_gguf_alignment(g), 64u);
    cr_assert_eq(ap_gguf_find_tensor(g, "y")->offset, 64u);
    cr_assert_eq(((const uint8_t *)ap_gguf_find_tensor(g, "x")->data - buf) % 64, 0);
    ap_gguf_free(g);
    free(buf);
    /* The builder refuses a non-power-of-two alignment. */
    cr_assert_eq(ap_gguf_builder_set_u32(b, "general.alignment", 48, &err), AP_OK);
    cr_assert_eq(ap_gguf_builder_to_memory(b, &buf, &n, &err), AP_ERR_ARG);
    ap_gguf_builder_free(b);
}

Test(gguf, builder_rejects_bad_tensors) {
    ap_gguf_builder *b = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_gguf_builder_create(&b, &err), AP_OK);
    float v[64] = {0};
    int64_t ne32[1] = {32}, ne33[1] = {33}, ne5[5] = {1, 1, 1, 1, 1};
    cr_assert_eq(ap_gguf_builder_add_tensor_f32(b, "a", AP_GGML_Q8_0, 1, ne32, v, &err), AP_OK);
    cr_assert_eq(ap_gguf_builder_add_tensor_f32(b, "a", AP_GGML_F32, 1, ne32, v, &err), AP_ERR_ARG);
    cr_assert(strstr(err.msg, "duplicate") != NULL, "%s", err.msg);
    cr_assert_eq(ap_gguf_builder_add_tensor_f32(b, "b", AP_GGML_Q4_0, 1, ne33, v, &err),
                 AP_ERR_ARG);
    cr_assert_eq(ap_gguf_builder_add_tensor_f32(b, "c", AP_GGML_F32, 5, ne5, v, &err), AP_ERR_ARG);
    cr_assert_eq(ap_gguf_builder_add_tensor(b, "d", AP_GGML_F32, 1, ne32, v, 100, &err),
                 AP_ERR_ARG);
    cr_assert_eq(ap_gguf_builder_add_tensor(b, "e", (ap_ggml_type)4, 1, ne32, v, 128, &err),
                 AP_ERR_ARG);
    int64_t ne256[1] = {256};
    float big[256] = {0};
    cr_assert_eq(ap_gguf_builder_add_tensor_f32(b, "f", AP_GGML_Q4_K, 1, ne256, big, &err),
                 AP_ERR_UNSUPPORTED);
    char longname[80];
    memset(longname, 'n', 65);
    longname[65] = '\0';
    cr_assert_eq(ap_gguf_builder_add_tensor_f32(b, longname, AP_GGML_F32, 1, ne32, v, &err),
                 AP_ERR_ARG);
    uint8_t two = 2;
    cr_assert_eq(ap_gguf_builder_set_scalar(b, "k", AP_GGUF_BOOL, &two, &err), AP_ERR_ARG);
    cr_assert_eq(ap_gguf_builder_set_scalar(b, "k", AP_GGUF_STRING, &two, &err), AP_ERR_ARG);
    cr_assert_eq(ap_gguf_builder_set_u32(b, "", 1, &err), AP_ERR_ARG);
    ap_gguf_builder_free(b);
}

Test(gguf, large_string_array_random_access) {
    /* Tokenizer-sized array: 50000 strings, every one read back. */
    enum { N = 50000 };
    char **s = malloc(N * sizeof *s);
    for (int i = 0; i < N; i++) {
        s[i] = malloc(16);
        snprintf(s[i], 16, "tok%d", i);
    }
    ap_gguf_builder *b = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_gguf_builder_create(&b, &err), AP_OK);
    cr_assert_eq(
        ap_gguf_builder_set_arr_str(b, "tokenizer.ggml.tokens", (const char *const *)s, N, &err),
        AP_OK);
    uint8_t *buf;
    size_t n;
    cr_assert_eq(ap_gguf_builder_to_memory(b, &buf, &n, &err), AP_OK);
    ap_gguf *g = NULL;
    cr_assert_eq(ap_gguf_open_memory(buf, n, "tok.gguf", &g, &err), AP_OK, "%s", err.msg);
    for (int k = 0; k < N; k++) {
        int i = (int)(((uint64_t)k * 7919u) % N);
        const char *t;
        size_t tl;
        cr_assert_eq(ap_gguf_arr_str(g, "tokenizer.ggml.tokens", (uint64_t)i, &t, &tl, &err),
                     AP_OK);
        cr_assert(tl == strlen(s[i]) && memcmp(t, s[i], tl) == 0, "token %d", i);
    }
    ap_gguf_free(g);
    ap_gguf_builder_free(b);
    free(buf);
    for (int i = 0; i < N; i++) free(s[i]);
    free(s);
}

/* ---- validation: crafted files ---- */

Test(gguf, crafted_minimal_is_valid) {
    rb b = minimal(32);
    ap_gguf *g = open_ok(&b);
    cr_assert_eq(ap_gguf_n_tensors(g), 2);
    cr_assert_eq(ap_gguf_find_tensor(g, "b")->offset, 32u);
    cr_assert_eq(ap_gguf_version(g), 3u);
    ap_gguf_free(g);
    /* v2 has the same layout */
    b.p[4] = 2;
    g = open_ok(&b);
    cr_assert_eq(ap_gguf_version(g), 2u);
    ap_gguf_free(g);
    free(b.p);
}

Test(gguf, bad_magic) {
    rb b = minimal(32);
    b.p[0] = 'X';
    expect_fail(&b, AP_ERR_FORMAT, "magic");
    expect_fail_named(b.p, 0, "empty.gguf", AP_ERR_FORMAT, NULL);
    expect_fail_named("GGU", 3, "short.gguf", AP_ERR_FORMAT, NULL);
    free(b.p);
}

Test(gguf, version_1_and_unknown_versions_rejected) {
    rb b = minimal(32);
    b.p[4] = 1;
    expect_fail(&b, AP_ERR_UNSUPPORTED, "version 1");
    b.p[4] = 4;
    expect_fail(&b, AP_ERR_UNSUPPORTED, "version 4");
    b.p[4] = 0;
    b.p[7] = 3; /* big-endian version 3 */
    expect_fail(&b, AP_ERR_UNSUPPORTED, "big-endian");
    free(b.p);
}

Test(gguf, every_truncation_fails_cleanly) {
    rb b = minimal(32);
    ap_gguf *g = open_ok(&b);
    const ap_gguf_tensor *last = ap_gguf_tensor_at(g, 1);
    size_t end = (size_t)((const uint8_t *)last->data - b.p) + last->nbytes;
    ap_gguf_free(g);
    for (size_t len = 0; len < end; len++) {
        uint8_t *copy = malloc(len ? len : 1); /* exact size: ASan catches overreads */
        memcpy(copy, b.p, len);
        ap_err err = {0};
        ap_status st = ap_gguf_open_memory(copy, len, NAME, &g, &err);
        cr_assert(st == AP_ERR_FORMAT || st == AP_ERR_RANGE, "prefix %zu: status %d (%s)", len, st,
                  err.msg);
        cr_assert(strncmp(err.msg, NAME ": ", strlen(NAME) + 2) == 0, "prefix %zu: %s", len,
                  err.msg);
        free(copy);
    }
    /* Cut inside the tensor data: the message says which tensor. */
    expect_fail_named(b.p, end - 1, NAME, AP_ERR_FORMAT, "truncated: tensor 'b' data");
    /* Cut inside a tensor info. */
    expect_fail_named(b.p, 80, NAME, AP_ERR_FORMAT, "truncated: tensor info 0");
    free(b.p);
}

Test(gguf, unknown_value_types) {
    rb b = {0};
    rb_hdr(&b, 3, 0, 1);
    rb_str(&b, "x.y");
    rb_u32(&b, 13);
    rb_u32(&b, 0);
    expect_fail(&b, AP_ERR_FORMAT, "unknown value type 13");
    b.n = 0;
    rb_hdr(&b, 3, 0, 1);
    rb_str(&b, "x.y");
    rb_u32(&b, AP_GGUF_ARRAY);
    rb_u32(&b, 0xffffffffu);
    rb_u64(&b, 1);
    rb_u32(&b, 0);
    expect_fail(&b, AP_ERR_FORMAT, "unknown value type");
    free(b.p);
}

Test(gguf, bad_bool) {
    rb b = {0};
    rb_hdr(&b, 3, 0, 1);
    rb_str(&b, "x.flag");
    rb_u32(&b, AP_GGUF_BOOL);
    rb_u8(&b, 2);
    expect_fail(&b, AP_ERR_FORMAT, "bool");
    b.n = 0;
    rb_hdr(&b, 3, 0, 1);
    rb_str(&b, "x.flags");
    rb_u32(&b, AP_GGUF_ARRAY);
    rb_u32(&b, AP_GGUF_BOOL);
    rb_u64(&b, 3);
    rb_u8(&b, 0);
    rb_u8(&b, 1);
    rb_u8(&b, 7);
    expect_fail(&b, AP_ERR_FORMAT, "bool");
    free(b.p);
}

Test(gguf, huge_counts) {
    rb b = {0};
    rb_hdr(&b, 3, 0, (uint64_t)1 << 63);
    rb_kv_u32(&b, "a", 1);
    expect_fail(&b, AP_ERR_RANGE, "metadata pairs");
    b.n = 0;
    rb_hdr(&b, 3, UINT64_MAX, 0);
    rb_zeros(&b, 64);
    expect_fail(&b, AP_ERR_RANGE, "tensors");
    /* Element count whose byte size overflows 64 bits. */
    b.n = 0;
    rb_hdr(&b, 3, 0, 1);
    rb_str(&b, "a.big");
    rb_u32(&b, AP_GGUF_ARRAY);
    rb_u32(&b, AP_GGUF_U64);
    rb_u64(&b, ((uint64_t)1 << 61) + 1);
    rb_zeros(&b, 16);
    expect_fail(&b, AP_ERR_RANGE, "array elements");
    b.n = 0;
    rb_hdr(&b, 3, 0, 1);
    rb_str(&b, "a.strs");
    rb_u32(&b, AP_GGUF_ARRAY);
    rb_u32(&b, AP_GGUF_STRING);
    rb_u64(&b, UINT64_MAX);
    rb_zeros(&b, 16);
    expect_fail(&b, AP_ERR_RANGE, "array elements");
    b.n = 0;
    rb_hdr(&b, 3, 0, 1);
    rb_str(&b, "a.nest");
    rb_u32(&b, AP_GGUF_ARRAY);
    rb_u32(&b, AP_GGUF_ARRAY);
    rb_u64(&b, (uint64_t)1 << 62);
    rb_zeros(&b, 16);
    expect_fail(&b, AP_ERR_RANGE, "array elements");
    /* A string length past the end of the file is a truncation. */
    b.n = 0;
    rb_hdr(&b, 3, 0, 1);
    rb_u64(&b, UINT64_MAX);
    rb_zeros(&b, 16);
    expect_fail(&b, AP_ERR_FORMAT, "truncated: metadata pair 0");
    b.n = 0;
    rb_hdr(&b, 3, 0, 1);
    rb_str(&b, "s");
    rb_u32(&b, AP_GGUF_STRING);
    rb_u64(&b, UINT64_MAX - 3);
    rb_zeros(&b, 16);
    expect_fail(&b, AP_ERR_FORMAT, "truncated");
    free(b.p);
}

Test(gguf, empty_and_overlong_keys) {
    rb b = {0};
    rb_hdr(&b, 3, 0, 1);
    rb_str(&b, "");
    rb_u32(&b, AP_GGUF_U8);
    rb_u8(&b, 1);
    expect_fail(&b, AP_ERR_FORMAT, "empty key");
    b.n = 0;
    rb_hdr(&b, 3, 0, 1);
    char *key = malloc(65536);
    memset(key, 'k', 65536);
    rb_strn(&b, key, 65536);
    rb_u32(&b, AP_GGUF_U8);
    rb_u8(&b, 1);
    expect_fail(&b, AP_ERR_FORMAT, "65535");
    free(key);
    free(b.p);
}

Test(gguf, nesting_too_deep) {
    rb b = {0};
    rb_hdr(&b, 3, 0, 1);
    rb_str(&b, "deep");
    rb_u32(&b, AP_GGUF_ARRAY);
    for (int i = 0; i < 20; i++) {
        rb_u32(&b, AP_GGUF_ARRAY);
        rb_u64(&b, 1);
    }
    rb_zeros(&b, 64);
    expect_fail(&b, AP_ERR_FORMAT, "nested");
    free(b.p);
}

Test(gguf, duplicate_keys_and_tensor_names) {
    rb b = {0};
    rb_hdr(&b, 3, 0, 3);
    rb_kv_u32(&b, "a.b", 1);
    rb_kv_u32(&b, "a.c", 1);
    rb_kv_str(&b, "a.b", "again");
    expect_fail(&b, AP_ERR_FORMAT, "duplicate metadata key 'a.b'");
    b.n = 0;
    rb_hdr(&b, 3, 2, 0);
    uint64_t ne[1] = {8};
    rb_tinfo(&b, "w", 1, ne, AP_GGML_F32, 0);
    rb_tinfo(&b, "w", 1, ne, AP_GGML_F32, 32);
    rb_pad(&b, 32);
    rb_zeros(&b, 64);
    expect_fail(&b, AP_ERR_FORMAT, "duplicate tensor name 'w'");
    free(b.p);
}

Test(gguf, alignment_rules) {
    uint64_t ne[1] = {8};
    rb b = {0};
    rb_hdr(&b, 3, 1, 1);
    rb_kv_u32(&b, "general.alignment", 48);
    rb_tinfo(&b, "w", 1, ne, AP_GGML_F32, 0);
    rb_pad(&b, 16);
    rb_zeros(&b, 64);
    expect_fail(&b, AP_ERR_FORMAT, "power of two");
    b.n = 0;
    rb_hdr(&b, 3, 0, 1);
    rb_kv_u32(&b, "general.alignment", 0);
    expect_fail(&b, AP_ERR_FORMAT, "power of two");
    b.n = 0;
    rb_hdr(&b, 3, 0, 1);
    rb_str(&b, "general.alignment");
    rb_u32(&b, AP_GGUF_U64);
    rb_u64(&b, 32);
    expect_fail(&b, AP_ERR_FORMAT, "u32");
    /* alignment 8 is honoured: the data section starts at the next multiple of 8 */
    b.n = 0;
    rb_hdr(&b, 3, 1, 1);
    rb_kv_u32(&b, "general.alignment", 8);
    rb_tinfo(&b, "w", 1, ne, AP_GGML_F32, 0);
    rb_pad(&b, 8);
    size_t data_at = b.n;
    rb_zeros(&b, 32);
    ap_gguf *g = open_ok(&b);
    cr_assert_eq(ap_gguf_alignment(g), 8u);
    cr_assert_eq((const uint8_t *)ap_gguf_tensor_at(g, 0)->data - b.p, (ptrdiff_t)data_at);
    ap_gguf_free(g);
    free(b.p);
}

Test(gguf, misaligned_and_non_sequential_offsets) {
    rb b = minimal(16);
    expect_fail(&b, AP_ERR_FORMAT, "not a multiple of the alignment 32");
    free(b.p);
    b = minimal(64); /* aligned, but leaves a gap after "a" */
    expect_fail(&b, AP_ERR_FORMAT, "expected 32");
    free(b.p);
    b = minimal(0); /* overlaps "a" */
    expect_fail(&b, AP_ERR_FORMAT, "expected 32");
    free(b.p);
}

Test(gguf, tensor_info_rules) {
    uint64_t ne[5] = {32, 1, 1, 1, 1};
    rb b = {0};
    /* n_dims 5 */
    rb_hdr(&b, 3, 1, 0);
    rb_tinfo(&b, "w", 5, ne, AP_GGML_F32, 0);
    rb_pad(&b, 32);
    rb_zeros(&b, 128);
    expect_fail(&b, AP_ERR_FORMAT, "5 dimensions");
    /* name of 65 bytes rejected, 64 accepted */
    char name[66];
    memset(name, 'n', 65);
    name[65] = '\0';
    b.n = 0;
    rb_hdr(&b, 3, 1, 0);
    rb_tinfo(&b, name, 1, ne, AP_GGML_F32, 0);
    rb_pad(&b, 32);
    rb_zeros(&b, 128);
    expect_fail(&b, AP_ERR_FORMAT, "65 bytes");
    name[64] = '\0';
    b.n = 0;
    rb_hdr(&b, 3, 1, 0);
    rb_tinfo(&b, name, 1, ne, AP_GGML_F32, 0);
    rb_pad(&b, 32);
    rb_zeros(&b, 128);
    ap_gguf *g = open_ok(&b);
    cr_assert_not_null(ap_gguf_find_tensor(g, name));
    ap_gguf_free(g);
    /* ne[0] not a multiple of the block size */
    uint64_t ne33[1] = {33};
    b.n = 0;
    rb_hdr(&b, 3, 1, 0);
    rb_tinfo(&b, "q", 1, ne33, AP_GGML_Q4_0, 0);
    rb_pad(&b, 32);
    rb_zeros(&b, 64);
    expect_fail(&b, AP_ERR_FORMAT, "block size 32");
    /* unknown, removed and out-of-range type ids */
    uint32_t bad_types[] = {4, 5, 31, 36, 40, 99, 0xffffffffu};
    for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++) {
        b.n = 0;
        rb_hdr(&b, 3, 1, 0);
        rb_tinfo(&b, "w", 1, ne, bad_types[i], 0);
        rb_pad(&b, 32);
        rb_zeros(&b, 256);
        expect_fail(&b, AP_ERR_UNSUPPORTED, "unknown ggml type id");
    }
    /* dimension above INT64_MAX */
    uint64_t neg[2] = {32, (uint64_t)1 << 63};
    b.n = 0;
    rb_hdr(&b, 3, 1, 0);
    rb_tinfo(&b, "w", 2, neg, AP_GGML_F32, 0);
    rb_pad(&b, 32);
    expect_fail(&b, AP_ERR_RANGE, "INT64_MAX");
    /* element count overflow */
    uint64_t ovf[3] = {(uint64_t)1 << 32, (uint64_t)1 << 32, 1};
    b.n = 0;
    rb_hdr(&b, 3, 1, 0);
    rb_tinfo(&b, "w", 3, ovf, AP_GGML_F32, 0);
    rb_pad(&b, 32);
    expect_fail(&b, AP_ERR_RANGE, "overflow");
    /* byte size overflow with a fitting element count: 2^61 F64 values */
    uint64_t bovf[1] = {(uint64_t)1 << 61};
    b.n = 0;
    rb_hdr(&b, 3, 1, 0);
    rb_tinfo(&b, "w", 1, bovf, AP_GGML_F64, 0);
    rb_pad(&b, 32);
    expect_fail(&b, AP_ERR_RANGE, "overflow");
    /* huge but non-overflowing: data past end of file */
    uint64_t huge[2] = {1 << 20, 1 << 20};
    b.n = 0;
    rb_hdr(&b, 3, 1, 0);
    rb_tinfo(&b, "w", 2, huge, AP_GGML_F32, 0);
    rb_pad(&b, 32);
    rb_zeros(&b, 64);
    expect_fail(&b, AP_ERR_FORMAT, "truncated: tensor 'w' data");
    /* offset near UINT64_MAX with a small tensor */
    b.n = 0;
    rb_hdr(&b, 3, 1, 0);
    rb_tinfo(&b, "w", 1, ne, AP_GGML_F32, UINT64_MAX - 31);
    rb_pad(&b, 32);
    rb_zeros(&b, 128);
    expect_fail(&b, AP_ERR_FORMAT, NULL);
    free(b.p);
}

Test(gguf, zero_tensors_and_no_metadata) {
    rb b = {0};
    rb_hdr(&b, 3, 0, 0);
    ap_gguf *g = open_ok(&b);
    cr_assert_eq(ap_gguf_n_kv(g), 0);
    cr_assert_eq(ap_gguf_n_tensors(g), 0);
    cr_assert_eq(ap_gguf_find_key(g, "x"), -1);
    cr_assert_null(ap_gguf_find_tensor(g, "x"));
    ap_gguf_free(g);
    free(b.p);
}

Test(gguf, getter_messages_name_the_file) {
    rb b = minimal(32);
    ap_gguf *g = open_ok(&b);
    ap_err err = {0};
    int64_t v;
    cr_assert_eq(ap_gguf_get_int(g, "llama.block_count", &v, &err), AP_ERR_FORMAT);
    cr_assert(strncmp(err.msg, NAME ": ", strlen(NAME) + 2) == 0, "%s", err.msg);
    cr_assert(strstr(err.msg, "llama.block_count") != NULL, "%s", err.msg);
    ap_gguf_free(g);
    free(b.p);
}

Test(gguf, open_errors) {
    ap_gguf *g = NULL;
    ap_err err = {0};
    const char *p = "/nonexistent/model.gguf";
    cr_assert_eq(ap_gguf_open(p, &g, &err), AP_ERR_IO);
    cr_assert_null(g);
    cr_assert(strncmp(err.msg, p, strlen(p)) == 0, "%s", err.msg);
    cr_assert_eq(ap_gguf_open("/tmp", &g, &err), AP_ERR_IO);
    char path[] = "/tmp/ap_test_gguf_empty_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert_eq(ap_gguf_open(path, &g, &err), AP_ERR_FORMAT);
    cr_assert(strncmp(err.msg, path, strlen(path)) == 0, "%s", err.msg);
    unlink(path);
}

Test(gguf, single_byte_corruptions_never_crash) {
    /* Every byte of a small valid file set to a few bad values: the reader
     * must either accept it or fail with a named error (ASan/UBSan builds
     * turn any overread into a failure here). */
    ap_gguf_builder *bld = full_builder();
    uint8_t *buf;
    size_t n;
    ap_err err = {0};
    cr_assert_eq(ap_gguf_builder_to_memory(bld, &buf, &n, &err), AP_OK);
    static const uint8_t vals[] = {0x00, 0xff, 0x80, 0x07, 0x41};
    uint8_t *copy = malloc(n);
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < sizeof vals; k++) {
            memcpy(copy, buf, n);
            copy[i] = vals[k];
            ap_gguf *g = NULL;
            ap_status st = ap_gguf_open_memory(copy, n, NAME, &g, &err);
            if (st == AP_OK) {
                walk(g);
                ap_gguf_free(g);
            } else {
                cr_assert(strncmp(err.msg, NAME ": ", strlen(NAME) + 2) == 0, "byte %zu: %s", i,
                          err.msg);
            }
        }
    }
    free(copy);
    free(buf);
    ap_gguf_builder_free(bld);
}

/* ---- fuzz seeds ---- */

Test(gguf, fuzz_seed_corpus_parses) {
    /* The seeds (tests/fuzz/make_gguf_seeds.c) must stay valid, or the fuzzer
     * would start from rejected inputs and never reach the deeper checks. */
    const char *dir = AP_SOURCE_DIR "/tests/fuzz/corpus/gguf";
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "cannot open %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        ap_gguf *g = NULL;
        ap_err err = {0};
        cr_assert_eq(ap_gguf_open(path, &g, &err), AP_OK, "%s", err.msg);
        walk(g);
        ap_gguf_free(g);
        n++;
    }
    closedir(d);
    cr_assert_geq(n, 5, "expected the 5 generated seeds in %s", dir);
}

/* ---- the real model ---- */

Test(gguf, real_model_parses) {
    if (!ap_file_exists(MODEL_PATH))
        cr_skip_test("real model absent: %s (not in the repository; see stack notes 2)",
                     MODEL_PATH);
    ap_gguf *g = NULL;
    ap_err err = {0};
    cr_assert_eq(ap_gguf_open(MODEL_PATH, &g, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_gguf_n_tensors(g), 272);
    const char *s;
    size_t sl;
    cr_assert_eq(ap_gguf_get_str(g, "general.architecture", &s, &sl, &err), AP_OK);
    cr_assert(sl == 5 && memcmp(s, "llama", 5) == 0);
    int64_t v;
    cr_assert_eq(ap_gguf_get_int(g, "general.file_type", &v, &err), AP_OK);
    cr_assert_eq(v, 3);
    cr_assert_eq(ap_gguf_get_int(g, "llama.block_count", &v, &err), AP_OK);
    cr_assert_eq(v, 30);
    cr_assert_eq(ap_gguf_get_int(g, "llama.embedding_length", &v, &err), AP_OK);
    cr_assert_eq(v, 576);
    double eps;
    cr_assert_eq(ap_gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", &eps, &err), AP_OK);
    cr_assert(eps > 0 && eps < 1e-3);
    ap_gguf_type et;
    uint64_t n;
    cr_assert_eq(ap_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, &err), AP_OK);
    cr_assert(et == AP_GGUF_STRING && n == 49152);
    cr_assert_eq(ap_gguf_arr_str(g, "tokenizer.ggml.tokens", 0, &s, &sl, &err), AP_OK);
    cr_assert(sl == 13 && memcmp(s, "<|endoftext|>", 13) == 0);
    cr_assert_eq(ap_gguf_arr_str(g, "tokenizer.ggml.tokens", 49151, &s, &sl, &err), AP_OK);
    cr_assert_eq(ap_gguf_arr_int(g, "tokenizer.ggml.token_type", 0, &v, &err), AP_OK);
    cr_assert_eq(v, 3, "<|endoftext|> is a control token");

    const ap_gguf_tensor *t = ap_gguf_find_tensor(g, "token_embd.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->type, AP_GGML_Q8_0);
    cr_assert(t->n_dims == 2 && t->ne[0] == 576 && t->ne[1] == 49152);
    cr_assert_null(ap_gguf_find_tensor(g, "output.weight"), "embeddings are tied");
    int n_f32 = 0, n_q41 = 0, n_other = 0;
    for (int64_t i = 0; i < ap_gguf_n_tensors(g); i++) {
        t = ap_gguf_tensor_at(g, i);
        if (t->type == AP_GGML_F32) {
            n_f32++;
            cr_assert_eq(t->n_dims, 1u);
        } else if (t->type == AP_GGML_Q4_1) {
            n_q41++;
            cr_assert_eq(t->n_dims, 2u);
        } else {
            n_other++;
        }
    }
    cr_assert_eq(n_f32, 61);
    cr_assert_eq(n_q41, 210);
    cr_assert_eq(n_other, 1);
    ap_gguf_free(g);
}
