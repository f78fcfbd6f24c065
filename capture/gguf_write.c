/* GGUF v3 builder: metadata and tensors are kept as encoded bytes until
 * serialization, which lays them out exactly as ap_gguf_open expects
 * (sequential, aligned tensor data). The quantizers are plain round-to-nearest
 * encoders; they exist to make realistic synthetic files, not to compete with
 * llama.cpp's quantization quality. */
#define _POSIX_C_SOURCE 200809L
#include "capture/gguf_write.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

enum { BUILDER_MAX_NAME = 64, BUILDER_MAX_KEY = 65535 };

typedef struct {
    char *key;
    ap_gguf_type type;
    uint8_t *payload; /* encoded value, after the type field */
    size_t len;
} bkv;

typedef struct {
    char *name;
    uint32_t n_dims;
    int64_t ne[4];
    ap_ggml_type type;
    uint8_t *data;
    size_t nbytes;
} btensor;

struct ap_gguf_builder {
    bkv *kv;
    size_t n_kv, cap_kv;
    btensor *t;
    size_t n_t, cap_t;
};

/* ---- growable byte buffer ---- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int oom;
} bbuf;

static void put(bbuf *b, const void *src, size_t n) {
    if (b->oom || n == 0) return;
    if (n > b->cap - b->n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n) {
            if (cap > SIZE_MAX / 2) {
                b->oom = 1;
                return;
            }
            cap *= 2;
        }
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void put_le(bbuf *b, uint64_t v, int n) {
    uint8_t tmp[8];
    for (int i = 0; i < n; i++) tmp[i] = (uint8_t)(v >> (8 * i));
    put(b, tmp, (size_t)n);
}

static void put_str(bbuf *b, const char *s, size_t len) {
    put_le(b, len, 8);
    put(b, s, len);
}

static void put_zeros(bbuf *b, size_t n) {
    static const uint8_t z[64] = {0};
    while (n > 0) {
        size_t k = n < sizeof z ? n : sizeof z;
        put(b, z, k);
        n -= k;
    }
}

/* ---- builder ---- */

ap_status ap_gguf_builder_create(ap_gguf_builder **out, ap_err *err) {
    if (!out) return ap_errf(err, AP_ERR_ARG, "gguf builder: out is NULL");
    *out = calloc(1, sizeof **out);
    if (!*out) return ap_errf(err, AP_ERR_NOMEM, "gguf builder: out of memory");
    return AP_OK;
}

void ap_gguf_builder_free(ap_gguf_builder *b) {
    if (!b) return;
    for (size_t i = 0; i < b->n_kv; i++) {
        free(b->kv[i].key);
        free(b->kv[i].payload);
    }
    for (size_t i = 0; i < b->n_t; i++) {
        free(b->t[i].name);
        free(b->t[i].data);
    }
    free(b->kv);
    free(b->t);
    free(b);
}

static char *dup_str(const char *s) {
    size_t n = strlen(s);
    char *c = malloc(n + 1);
    if (c) memcpy(c, s, n + 1);
    return c;
}

/* Takes ownership of payload (also on failure). Setting a key again replaces
 * its value, as the reader rejects duplicate keys. */
static ap_status set_kv(ap_gguf_builder *b, const char *key, ap_gguf_type type, uint8_t *payload,
                        size_t len, ap_err *err) {
    ap_status st = AP_OK;
    char *k = NULL;
    if (!b || !key) {
        st = ap_errf(err, AP_ERR_ARG, "gguf builder: NULL builder or key");
        goto cleanup;
    }
    size_t kl = strlen(key);
    if (kl == 0 || kl > BUILDER_MAX_KEY) {
        st = ap_errf(err, AP_ERR_ARG, "gguf builder: key length %zu is not in 1..%d", kl,
                     BUILDER_MAX_KEY);
        goto cleanup;
    }
    for (size_t i = 0; i < b->n_kv; i++) {
        if (strcmp(b->kv[i].key, key) == 0) {
            free(b->kv[i].payload);
            b->kv[i].type = type;
            b->kv[i].payload = payload;
            b->kv[i].len = len;
            return AP_OK;
        }
    }
    if (b->n_kv == b->cap_kv) {
        size_t cap = b->cap_kv ? 2 * b->cap_kv : 16;
        bkv *nk = realloc(b->kv, cap * sizeof *nk);
        if (!nk) {
            st = ap_errf(err, AP_ERR_NOMEM, "gguf builder: out of memory");
            goto cleanup;
        }
        b->kv = nk;
        b->cap_kv = cap;
    }
    if (!(k = dup_str(key))) {
        st = ap_errf(err, AP_ERR_NOMEM, "gguf builder: out of memory");
        goto cleanup;
    }
    b->kv[b->n_kv++] = (bkv){.key = k, .type = type, .payload = payload, .len = len};
    return AP_OK;
cleanup:
    free(payload);
    return st;
}

static ap_status set_buf(ap_gguf_builder *b, const char *key, ap_gguf_type type, bbuf *v,
                         ap_err *err) {
    if (v->oom) {
        free(v->p);
        return ap_errf(err, AP_ERR_NOMEM, "gguf builder: out of memory encoding '%s'",
                       key ? key : "(null)");
    }
    return set_kv(b, key, type, v->p, v->n, err);
}

static size_t fixed_size(ap_gguf_type t) {
    switch (t) {
    case AP_GGUF_U8:
    case AP_GGUF_I8:
    case AP_GGUF_BOOL: return 1;
    case AP_GGUF_U16:
    case AP_GGUF_I16: return 2;
    case AP_GGUF_U32:
    case AP_GGUF_I32:
    case AP_GGUF_F32: return 4;
    case AP_GGUF_U64:
    case AP_GGUF_I64:
    case AP_GGUF_F64: return 8;
    default: return 0;
    }
}

/* Encodes one native C value of a fixed-size type little-endian. */
static void put_native(bbuf *v, ap_gguf_type t, const void *src) {
    size_t n = fixed_size(t);
    uint64_t bits = 0;
    switch (n) {
    case 1: {
        uint8_t x;
        memcpy(&x, src, 1);
        bits = x;
        break;
    }
    case 2: {
        uint16_t x;
        memcpy(&x, src, 2);
        bits = x;
        break;
    }
    case 4: {
        uint32_t x;
        memcpy(&x, src, 4);
        bits = x;
        break;
    }
    default: memcpy(&bits, src, 8); break;
    }
    put_le(v, bits, (int)n);
}

ap_status ap_gguf_builder_set_scalar(ap_gguf_builder *b, const char *key, ap_gguf_type type,
                                     const void *value, ap_err *err) {
    if (!fixed_size(type) || !value)
        return ap_errf(err, AP_ERR_ARG, "gguf builder: '%s': type %d is not a scalar type",
                       key ? key : "(null)", (int)type);
    if (type == AP_GGUF_BOOL && *(const uint8_t *)value > 1)
        return ap_errf(err, AP_ERR_ARG, "gguf builder: '%s': bool must be 0 or 1",
                       key ? key : "(null)");
    bbuf v = {0};
    put_native(&v, type, value);
    return set_buf(b, key, type, &v, err);
}

ap_status ap_gguf_builder_set_u32(ap_gguf_builder *b, const char *key, uint32_t v, ap_err *err) {
    return ap_gguf_builder_set_scalar(b, key, AP_GGUF_U32, &v, err);
}

ap_status ap_gguf_builder_set_i32(ap_gguf_builder *b, const char *key, int32_t v, ap_err *err) {
    return ap_gguf_builder_set_scalar(b, key, AP_GGUF_I32, &v, err);
}

ap_status ap_gguf_builder_set_u64(ap_gguf_builder *b, const char *key, uint64_t v, ap_err *err) {
    return ap_gguf_builder_set_scalar(b, key, AP_GGUF_U64, &v, err);
}

ap_status ap_gguf_builder_set_f32(ap_gguf_builder *b, const char *key, float v, ap_err *err) {
    return ap_gguf_builder_set_scalar(b, key, AP_GGUF_F32, &v, err);
}

ap_status ap_gguf_builder_set_bool(ap_gguf_builder *b, const char *key, int v, ap_err *err) {
    uint8_t x = v ? 1 : 0;
    return ap_gguf_builder_set_scalar(b, key, AP_GGUF_BOOL, &x, err);
}

ap_status ap_gguf_builder_set_str(ap_gguf_builder *b, const char *key, const char *s,
                                  ap_err *err) {
    if (!s)
        return ap_errf(err, AP_ERR_ARG, "gguf builder: '%s': NULL string", key ? key : "(null)");
    bbuf v = {0};
    put_str(&v, s, strlen(s));
    return set_buf(b, key, AP_GGUF_STRING, &v, err);
}

ap_status ap_gguf_builder_set_arr_str(ap_gguf_builder *b, const char *key, const char *const *s,
                                      uint64_t n, ap_err *err) {
    if (n > 0 && !s)
        return ap_errf(err, AP_ERR_ARG, "gguf builder: '%s': NULL array", key ? key : "(null)");
    bbuf v = {0};
    put_le(&v, AP_GGUF_STRING, 4);
    put_le(&v, n, 8);
    for (uint64_t i = 0; i < n; i++) {
        if (!s[i]) {
            free(v.p);
            return ap_errf(err, AP_ERR_ARG, "gguf builder: '%s': NULL string at %llu",
                           key ? key : "(null)", (unsigned long long)i);
        }
        put_str(&v, s[i], strlen(s[i]));
    }
    return set_buf(b, key, AP_GGUF_ARRAY, &v, err);
}

ap_status ap_gguf_builder_set_arr(ap_gguf_builder *b, const char *key, ap_gguf_type elem_type,
                                  const void *vals, uint64_t n, ap_err *err) {
    size_t es = fixed_size(elem_type);
    if (!es)
        return ap_errf(err, AP_ERR_ARG, "gguf builder: '%s': element type %d is not fixed-size",
                       key ? key : "(null)", (int)elem_type);
    if (n > 0 && !vals)
        return ap_errf(err, AP_ERR_ARG, "gguf builder: '%s': NULL array", key ? key : "(null)");
    bbuf v = {0};
    put_le(&v, (uint64_t)elem_type, 4);
    put_le(&v, n, 8);
    const uint8_t *p = vals;
    for (uint64_t i = 0; i < n && !v.oom; i++) put_native(&v, elem_type, p + i * es);
    return set_buf(b, key, AP_GGUF_ARRAY, &v, err);
}

ap_status ap_gguf_builder_set_arr_i32(ap_gguf_builder *b, const char *key, const int32_t *v,
                                      uint64_t n, ap_err *err) {
    return ap_gguf_builder_set_arr(b, key, AP_GGUF_I32, v, n, err);
}

ap_status ap_gguf_builder_set_arr_f32(ap_gguf_builder *b, const char *key, const float *v,
                                      uint64_t n, ap_err *err) {
    return ap_gguf_builder_set_arr(b, key, AP_GGUF_F32, v, n, err);
}

ap_status ap_gguf_builder_set_raw(ap_gguf_builder *b, const char *key, ap_gguf_type type,
                                  const void *payload, size_t nbytes, ap_err *err) {
    if (nbytes > 0 && !payload)
        return ap_errf(err, AP_ERR_ARG, "gguf builder: '%s': NULL payload", key ? key : "(null)");
    bbuf v = {0};
    put(&v, payload, nbytes);
    if (nbytes == 0) {
        /* Keep a non-NULL payload so ownership is uniform. */
        v.p = malloc(1);
        if (!v.p) v.oom = 1;
    }
    return set_buf(b, key, type, &v, err);
}

/* ---- tensors ---- */

static ap_status check_shape(const char *name, ap_ggml_type type, uint32_t n_dims,
                             const int64_t *ne, int64_t ne_out[4], uint64_t *n_elem,
                             size_t *nbytes, ap_err *err) {
    const ap_ggml_traits *tr = ap_ggml_type_traits((uint32_t)type);
    if (!tr)
        return ap_errf(err, AP_ERR_ARG, "gguf builder: tensor '%s': unknown type %d", name,
                       (int)type);
    if (n_dims > 4 || (n_dims > 0 && !ne))
        return ap_errf(err, AP_ERR_ARG, "gguf builder: tensor '%s': bad n_dims %u", name, n_dims);
    uint64_t count = 1;
    for (int d = 0; d < 4; d++) {
        ne_out[d] = (uint32_t)d < n_dims ? ne[d] : 1;
        if (ne_out[d] < 0 || __builtin_mul_overflow(count, (uint64_t)ne_out[d], &count))
            return ap_errf(err, AP_ERR_ARG, "gguf builder: tensor '%s': bad dimension %d", name, d);
    }
    if (ne_out[0] % tr->block_size != 0)
        return ap_errf(err, AP_ERR_ARG,
                       "gguf builder: tensor '%s': %lld columns is not a multiple of the %s block "
                       "size %d",
                       name, (long long)ne_out[0], tr->name, tr->block_size);
    uint64_t bytes = ap_ggml_row_size((uint32_t)type, ne_out[0]);
    if (bytes == 0 && ne_out[0] != 0)
        return ap_errf(err, AP_ERR_ARG, "gguf builder: tensor '%s': row size overflows", name);
    for (int d = 1; d < 4; d++)
        if (__builtin_mul_overflow(bytes, (uint64_t)ne_out[d], &bytes) || bytes > SIZE_MAX)
            return ap_errf(err, AP_ERR_ARG, "gguf builder: tensor '%s': size overflows", name);
    *n_elem = count;
    *nbytes = (size_t)bytes;
    return AP_OK;
}

/* Takes ownership of data (also on failure). */
static ap_status add_owned(ap_gguf_builder *b, const char *name, ap_ggml_type type,
                           uint32_t n_dims, const int64_t ne[4], uint8_t *data, size_t nbytes,
                           ap_err *err) {
    ap_status st = AP_OK;
    char *nm = NULL;
    size_t nl = strlen(name);
    if (nl > BUILDER_MAX_NAME) {
        st = ap_errf(err, AP_ERR_ARG, "gguf builder: tensor name '%s' is longer than %d bytes",
                     name, BUILDER_MAX_NAME);
        goto cleanup;
    }
    for (size_t i = 0; i < b->n_t; i++) {
        if (strcmp(b->t[i].name, name) == 0) {
            st = ap_errf(err, AP_ERR_ARG, "gguf builder: duplicate tensor name '%s'", name);
            goto cleanup;
        }
    }
    if (b->n_t == b->cap_t) {
        size_t cap = b->cap_t ? 2 * b->cap_t : 16;
        btensor *nt = realloc(b->t, cap * sizeof *nt);
        if (!nt) {
            st = ap_errf(err, AP_ERR_NOMEM, "gguf builder: out of memory");
            goto cleanup;
        }
        b->t = nt;
        b->cap_t = cap;
    }
    if (!(nm = dup_str(name))) {
        st = ap_errf(err, AP_ERR_NOMEM, "gguf builder: out of memory");
        goto cleanup;
    }
    btensor *t = &b->t[b->n_t++];
    *t = (btensor){.name = nm, .n_dims = n_dims, .type = type, .data = data, .nbytes = nbytes};
    memcpy(t->ne, ne, sizeof t->ne);
    return AP_OK;
cleanup:
    free(data);
    return st;
}

ap_status ap_gguf_builder_add_tensor(ap_gguf_builder *b, const char *name, ap_ggml_type type,
                                     uint32_t n_dims, const int64_t *ne, const void *data,
                                     size_t nbytes, ap_err *err) {
    if (!b || !name) return ap_errf(err, AP_ERR_ARG, "gguf builder: NULL builder or name");
    int64_t shape[4];
    uint64_t n_elem = 0;
    size_t want = 0;
    ap_status st = check_shape(name, type, n_dims, ne, shape, &n_elem, &want, err);
    if (st != AP_OK) return st;
    if (nbytes != want)
        return ap_errf(err, AP_ERR_ARG,
                       "gguf builder: tensor '%s': %zu bytes given, shape needs %zu", name, nbytes,
                       want);
    if (want > 0 && !data)
        return ap_errf(err, AP_ERR_ARG, "gguf builder: tensor '%s': NULL data", name);
    uint8_t *copy = malloc(want ? want : 1);
    if (!copy) return ap_errf(err, AP_ERR_NOMEM, "gguf builder: out of memory for '%s'", name);
    if (want) memcpy(copy, data, want);
    return add_owned(b, name, type, n_dims, shape, copy, want, err);
}

/* ---- quantizers (round to nearest; one block of 32 at a time) ---- */

static void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static int clampi(int v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

static uint16_t fp32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                          /* nearest even */
    return (uint16_t)(u >> 16);
}

/* The element of largest magnitude, keeping its sign: symmetric formats map
 * it to the most negative code so the full range is used. */
static float signed_absmax(const float *x, int n) {
    float amax = 0.0f, m = 0.0f;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            m = x[i];
        }
    }
    return m;
}

static void minmax(const float *x, int n, float *mn, float *mx) {
    *mn = x[0];
    *mx = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < *mn) *mn = x[i];
        if (x[i] > *mx) *mx = x[i];
    }
}

static void quant_q4_0(const float *x, uint8_t *b) {
    float m = signed_absmax(x, 32);
    float d = m / -8.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    wr16(b, ap_fp32_to_fp16(d));
    for (int j = 0; j < 16; j++) {
        int q0 = clampi((int)floorf(x[j] * id + 8.5f), 0, 15);
        int q1 = clampi((int)floorf(x[j + 16] * id + 8.5f), 0, 15);
        b[2 + j] = (uint8_t)(q0 | (q1 << 4));
    }
}

static void quant_q4_1(const float *x, uint8_t *b) {
    float mn, mx;
    minmax(x, 32, &mn, &mx);
    float d = (mx - mn) / 15.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    wr16(b, ap_fp32_to_fp16(d));
    wr16(b + 2, ap_fp32_to_fp16(mn));
    for (int j = 0; j < 16; j++) {
        int q0 = clampi((int)floorf((x[j] - mn) * id + 0.5f), 0, 15);
        int q1 = clampi((int)floorf((x[j + 16] - mn) * id + 0.5f), 0, 15);
        b[4 + j] = (uint8_t)(q0 | (q1 << 4));
    }
}

static void put_q5(const int q[32], uint8_t *qh_dst, uint8_t *qs) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 15) | ((q[j + 16] & 15) << 4));
        qh |= (uint32_t)((q[j] >> 4) & 1) << j;
        qh |= (uint32_t)((q[j + 16] >> 4) & 1) << (j + 16);
    }
    for (int i = 0; i < 4; i++) qh_dst[i] = (uint8_t)(qh >> (8 * i));
}

static void quant_q5_0(const float *x, uint8_t *b) {
    float m = signed_absmax(x, 32);
    float d = m / -16.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    int q[32];
    for (int j = 0; j < 32; j++) q[j] = clampi((int)floorf(x[j] * id + 16.5f), 0, 31);
    wr16(b, ap_fp32_to_fp16(d));
    put_q5(q, b + 2, b + 6);
}

static void quant_q5_1(const float *x, uint8_t *b) {
    float mn, mx;
    minmax(x, 32, &mn, &mx);
    float d = (mx - mn) / 31.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    int q[32];
    for (int j = 0; j < 32; j++) q[j] = clampi((int)floorf((x[j] - mn) * id + 0.5f), 0, 31);
    wr16(b, ap_fp32_to_fp16(d));
    wr16(b + 2, ap_fp32_to_fp16(mn));
    put_q5(q, b + 4, b + 8);
}

static void quant_q8_0(const float *x, uint8_t *b) {
    float amax = fabsf(signed_absmax(x, 32));
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    wr16(b, ap_fp32_to_fp16(d));
    for (int j = 0; j < 32; j++)
        b[2 + j] = (uint8_t)(int8_t)clampi((int)roundf(x[j] * id), -127, 127);
}

ap_status ap_gguf_builder_add_tensor_f32(ap_gguf_builder *b, const char *name, ap_ggml_type type,
                                         uint32_t n_dims, const int64_t *ne, const float *values,
                                         ap_err *err) {
    if (!b || !name) return ap_errf(err, AP_ERR_ARG, "gguf builder: NULL builder or name");
    void (*qfn)(const float *, uint8_t *) = NULL;
    switch (type) {
    case AP_GGML_F32:
    case AP_GGML_F16:
    case AP_GGML_BF16: break;
    case AP_GGML_Q4_0: qfn = quant_q4_0; break;
    case AP_GGML_Q4_1: qfn = quant_q4_1; break;
    case AP_GGML_Q5_0: qfn = quant_q5_0; break;
    case AP_GGML_Q5_1: qfn = quant_q5_1; break;
    case AP_GGML_Q8_0: qfn = quant_q8_0; break;
    default: {
        const ap_ggml_traits *tr = ap_ggml_type_traits((uint32_t)type);
        return ap_errf(err, AP_ERR_UNSUPPORTED, "gguf builder: tensor '%s': cannot quantize to %s",
                       name, tr ? tr->name : "an unknown type");
    }
    }
    int64_t shape[4];
    uint64_t n = 0;
    size_t nbytes = 0;
    ap_status st = check_shape(name, type, n_dims, ne, shape, &n, &nbytes, err);
    if (st != AP_OK) return st;
    if (n > 0 && !values)
        return ap_errf(err, AP_ERR_ARG, "gguf builder: tensor '%s': NULL values", name);
    uint8_t *q = malloc(nbytes ? nbytes : 1);
    if (!q) return ap_errf(err, AP_ERR_NOMEM, "gguf builder: out of memory for '%s'", name);
    /* ne[0] is a multiple of the block size, so blocks never straddle rows
     * and the tensor can be quantized as one flat run of blocks. */
    if (type == AP_GGML_F32) {
        if (n) memcpy(q, values, (size_t)n * sizeof(float));
    } else if (type == AP_GGML_F16) {
        for (uint64_t i = 0; i < n; i++) wr16(q + 2 * i, ap_fp32_to_fp16(values[i]));
    } else if (type == AP_GGML_BF16) {
        for (uint64_t i = 0; i < n; i++) wr16(q + 2 * i, fp32_to_bf16(values[i]));
    } else {
        const ap_ggml_traits *tr = ap_ggml_type_traits((uint32_t)type);
        for (uint64_t blk = 0; blk < n / 32; blk++) qfn(values + blk * 32, q + blk * tr->type_size);
    }
    return add_owned(b, name, type, n_dims, shape, q, nbytes, err);
}

/* ---- serialization ---- */

static ap_status builder_alignment(const ap_gguf_builder *b, size_t *align, ap_err *err) {
    *align = 32;
    for (size_t i = 0; i < b->n_kv; i++) {
        if (strcmp(b->kv[i].key, "general.alignment") != 0) continue;
        if (b->kv[i].type != AP_GGUF_U32 || b->kv[i].len != 4)
            return ap_errf(err, AP_ERR_ARG, "gguf builder: general.alignment must be a u32");
        const uint8_t *p = b->kv[i].payload;
        uint32_t a = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                     ((uint32_t)p[3] << 24);
        if (a == 0 || (a & (a - 1)) != 0)
            return ap_errf(err, AP_ERR_ARG,
                           "gguf builder: general.alignment %u is not a power of two", a);
        *align = a;
    }
    return AP_OK;
}

ap_status ap_gguf_builder_to_memory(const ap_gguf_builder *b, uint8_t **data, size_t *size,
                                    ap_err *err) {
    if (!b || !data || !size) return ap_errf(err, AP_ERR_ARG, "gguf builder: NULL argument");
    size_t align;
    ap_status st = builder_alignment(b, &align, err);
    if (st != AP_OK) return st;
    bbuf o = {0};
    put(&o, "GGUF", 4);
    put_le(&o, 3, 4);
    put_le(&o, b->n_t, 8);
    put_le(&o, b->n_kv, 8);
    for (size_t i = 0; i < b->n_kv; i++) {
        put_str(&o, b->kv[i].key, strlen(b->kv[i].key));
        put_le(&o, (uint64_t)b->kv[i].type, 4);
        put(&o, b->kv[i].payload, b->kv[i].len);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < b->n_t; i++) {
        const btensor *t = &b->t[i];
        put_str(&o, t->name, strlen(t->name));
        put_le(&o, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) put_le(&o, (uint64_t)t->ne[d], 8);
        put_le(&o, (uint64_t)t->type, 4);
        put_le(&o, off, 8);
        off += (t->nbytes + align - 1) / align * align;
    }
    put_zeros(&o, (align - o.n % align) % align);
    for (size_t i = 0; i < b->n_t; i++) {
        put(&o, b->t[i].data, b->t[i].nbytes);
        put_zeros(&o, (align - b->t[i].nbytes % align) % align);
    }
    if (o.oom) {
        free(o.p);
        return ap_errf(err, AP_ERR_NOMEM, "gguf builder: out of memory serializing");
    }
    *data = o.p;
    *size = o.n;
    return AP_OK;
}

ap_status ap_gguf_builder_write(const ap_gguf_builder *b, const char *path, ap_err *err) {
    ap_status st = AP_OK;
    uint8_t *buf = NULL;
    size_t n = 0;
    FILE *f = NULL;
    char tmp[4096];
    int tmp_made = 0;
    if (!path) return ap_errf(err, AP_ERR_ARG, "gguf builder: NULL path");
    if ((st = ap_gguf_builder_to_memory(b, &buf, &n, err)) != AP_OK) {
        ap_err_prefix(err, path);
        goto cleanup;
    }
    ap_tmp_name(tmp, sizeof tmp, path);
    f = fopen(tmp, "wb");
    if (!f) {
        st = ap_errf(err, AP_ERR_IO, "%s: cannot create %s: %s", path, tmp, strerror(errno));
        goto cleanup;
    }
    tmp_made = 1;
    if (fwrite(buf, 1, n, f) != n || fflush(f) != 0 || fsync(fileno(f)) != 0) {
        st = ap_errf(err, AP_ERR_IO, "%s: write to %s failed: %s", path, tmp, strerror(errno));
        goto cleanup;
    }
    int rc = fclose(f);
    f = NULL;
    if (rc != 0) {
        st = ap_errf(err, AP_ERR_IO, "%s: closing %s failed: %s", path, tmp, strerror(errno));
        goto cleanup;
    }
    if ((st = ap_commit_file(tmp, path, err)) != AP_OK) goto cleanup;
    tmp_made = 0;
cleanup:
    if (f) fclose(f);
    if (tmp_made) remove(tmp);
    free(buf);
    return st;
}
