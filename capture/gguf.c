/* GGUF v2/v3 reader.
 *
 * The whole file is validated at open, so the getters never meet a bad offset:
 * every length, count and offset read from the file is checked against the
 * bytes that remain before it is used, with overflow-checked arithmetic. A
 * string array's element offsets are recorded while it is validated (the walk
 * is needed anyway), which makes ap_gguf_arr_str O(1) on the 49k-entry
 * tokenizer arrays. Keys and tensor names go into open-addressing hash tables,
 * which also catches duplicates.
 *
 * Status policy for a bad file:
 *   AP_ERR_FORMAT      not a valid GGUF: bad magic, truncation, bad value type,
 *                      misaligned or non-sequential offsets, duplicates, ...
 *   AP_ERR_RANGE       a count or size that cannot possibly be right: a count
 *                      larger than the remaining bytes could encode, or size
 *                      arithmetic that overflows.
 *   AP_ERR_UNSUPPORTED well-formed but not handled: version 1 or > 3,
 *                      big-endian files, unknown or removed tensor type ids. */
#define _POSIX_C_SOURCE 200809L
#include "capture/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    GGUF_DEFAULT_ALIGNMENT = 32,
    GGUF_MAX_KEY = 65535,
    GGUF_MAX_NAME = 64,
    GGUF_MAX_DIMS = 4,
    GGUF_MAX_DEPTH = 8, /* nested arrays; bounds the recursion */
    /* Smallest encodings, used to bound counts before allocating:
     * kv = key length + type + 1-byte value (an empty key gets its own
     * message later); tensor info = name length + n_dims + type + offset. */
    GGUF_MIN_KV = 8 + 4 + 1,
    GGUF_MIN_TENSOR = 8 + 4 + 4 + 8,
};

typedef struct {
    const char *key;
    size_t key_len;
    ap_gguf_type type;
    ap_gguf_type elem_type; /* arrays only */
    uint64_t n;             /* arrays only: element count */
    size_t off;             /* value offset; for arrays, the first element's */
    size_t *str_off;        /* string arrays: offset of each element's length field */
} gguf_kv;

struct ap_gguf {
    char *path;
    const uint8_t *base;
    size_t size;
    void *map; /* set when we own an mmap of base */
    uint32_t version;
    size_t alignment;
    size_t data_off;
    int64_t n_kv;
    gguf_kv *kv;
    int64_t n_tensors;
    ap_gguf_tensor *tensors;
    int64_t *kv_tab; /* hash slots holding kv indices, -1 when empty */
    size_t kv_mask;
    int64_t *t_tab;
    size_t t_mask;
};

/* ---- little-endian access ---- */

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static size_t scalar_size(uint32_t t) {
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

static int is_int_type(ap_gguf_type t) {
    return t == AP_GGUF_U8 || t == AP_GGUF_I8 || t == AP_GGUF_U16 || t == AP_GGUF_I16 ||
           t == AP_GGUF_U32 || t == AP_GGUF_I32 || t == AP_GGUF_U64 || t == AP_GGUF_I64;
}

static const char *type_name(ap_gguf_type t) {
    static const char *const names[AP_GGUF_TYPE_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
        "f64"};
    return (unsigned)t < AP_GGUF_TYPE_COUNT ? names[t] : "invalid";
}

/* Integer of type t at p as int64; AP_ERR_RANGE for u64 values above INT64_MAX. */
static ap_status int_at(const uint8_t *p, ap_gguf_type t, int64_t *out) {
    switch (t) {
    case AP_GGUF_U8: *out = p[0]; return AP_OK;
    case AP_GGUF_I8: *out = (int8_t)p[0]; return AP_OK;
    case AP_GGUF_U16: *out = (int64_t)le(p, 2); return AP_OK;
    case AP_GGUF_I16: *out = (int16_t)(uint16_t)le(p, 2); return AP_OK;
    case AP_GGUF_U32: *out = (int64_t)le(p, 4); return AP_OK;
    case AP_GGUF_I32: *out = (int32_t)(uint32_t)le(p, 4); return AP_OK;
    case AP_GGUF_I64: *out = (int64_t)le(p, 8); return AP_OK;
    case AP_GGUF_U64: {
        uint64_t v = le(p, 8);
        if (v > (uint64_t)INT64_MAX) return AP_ERR_RANGE;
        *out = (int64_t)v;
        return AP_OK;
    }
    default: return AP_ERR_ARG;
    }
}

/* Copy of a file-supplied name that is safe to put in a message. */
static void printable(char *dst, size_t cap, const char *s, size_t len) {
    size_t keep = len < cap - 4 ? len : cap - 4;
    size_t j = 0;
    for (size_t i = 0; i < keep; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (keep < len) {
        memcpy(dst + j, "...", 3);
        j += 3;
    }
    dst[j] = '\0';
}

/* ---- hash index over keys / tensor names ---- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3u;
    }
    return h;
}

typedef void (*name_fn)(const ap_gguf *g, int64_t i, const char **s, size_t *len);

static void kv_name(const ap_gguf *g, int64_t i, const char **s, size_t *len) {
    *s = g->kv[i].key;
    *len = g->kv[i].key_len;
}

static void tensor_name(const ap_gguf *g, int64_t i, const char **s, size_t *len) {
    *s = g->tensors[i].name;
    *len = g->tensors[i].name_len;
}

static int64_t index_find(const ap_gguf *g, const int64_t *tab, size_t mask, name_fn fn,
                          const char *s, size_t len) {
    if (!tab) return -1;
    for (size_t slot = (size_t)hash_bytes(s, len) & mask;; slot = (slot + 1) & mask) {
        int64_t i = tab[slot];
        if (i < 0) return -1;
        const char *t;
        size_t tl;
        fn(g, i, &t, &tl);
        if (tl == len && memcmp(t, s, len) == 0) return i;
    }
}

/* Builds the table; on a duplicate returns its two indices in dup[]. */
static ap_status index_build(const ap_gguf *g, int64_t n, name_fn fn, int64_t **tab_out,
                             size_t *mask_out, int64_t dup[2]) {
    size_t cap = 8;
    while (cap < (size_t)n * 2) cap *= 2; /* n is bounded by the file size */
    int64_t *tab = malloc(cap * sizeof *tab);
    if (!tab) return AP_ERR_NOMEM;
    for (size_t k = 0; k < cap; k++) tab[k] = -1;
    size_t mask = cap - 1;
    for (int64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        fn(g, i, &s, &len);
        size_t slot = (size_t)hash_bytes(s, len) & mask;
        for (;; slot = (slot + 1) & mask) {
            int64_t j = tab[slot];
            if (j < 0) break;
            const char *t;
            size_t tl;
            fn(g, j, &t, &tl);
            if (tl == len && memcmp(t, s, len) == 0) {
                dup[0] = j;
                dup[1] = i;
                free(tab);
                return AP_ERR_FORMAT;
            }
        }
        tab[slot] = i;
    }
    *tab_out = tab;
    *mask_out = mask;
    return AP_OK;
}

/* ---- reader cursor ---- */

typedef struct {
    const uint8_t *p;
    size_t size;
    size_t pos;
    const char *name; /* file name for messages */
    ap_err *err;
    char what[200];   /* the item being read, for truncation messages */
} rd;

static ap_status fail(rd *r, ap_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static ap_status fail(rd *r, ap_status st, const char *fmt, ...) {
    char msg[AP_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ap_errf(r->err, st, "%s: %s", r->name, msg);
}

static ap_status need(rd *r, uint64_t n) {
    if (n > r->size - r->pos)
        return fail(r, AP_ERR_FORMAT,
                    "truncated: %s extends past end of file (offset %zu, needs %llu bytes, file "
                    "size %zu)",
                    r->what, r->pos, (unsigned long long)n, r->size);
    return AP_OK;
}

static ap_status rd_u32(rd *r, uint32_t *v) {
    ap_status st = need(r, 4);
    if (st != AP_OK) return st;
    *v = (uint32_t)le(r->p + r->pos, 4);
    r->pos += 4;
    return AP_OK;
}

static ap_status rd_u64(rd *r, uint64_t *v) {
    ap_status st = need(r, 8);
    if (st != AP_OK) return st;
    *v = le(r->p + r->pos, 8);
    r->pos += 8;
    return AP_OK;
}

static ap_status rd_str(rd *r, const char **s, size_t *len) {
    uint64_t n;
    ap_status st = rd_u64(r, &n);
    if (st != AP_OK) return st;
    if ((st = need(r, n)) != AP_OK) return st;
    *s = (const char *)r->p + r->pos;
    *len = (size_t)n;
    r->pos += (size_t)n;
    return AP_OK;
}

static size_t remaining(const rd *r) {
    return r->size - r->pos;
}

/* Reads an array's element type, count and elements. str_off (top level only)
 * receives a malloc'd table of element offsets for string arrays. */
static ap_status parse_array(rd *r, int depth, ap_gguf_type *elem_out, uint64_t *n_out,
                             size_t *first_out, size_t **str_off) {
    ap_status st;
    uint32_t et;
    uint64_t n;
    if ((st = rd_u32(r, &et)) != AP_OK) return st;
    if ((st = rd_u64(r, &n)) != AP_OK) return st;
    if (et >= AP_GGUF_TYPE_COUNT)
        return fail(r, AP_ERR_FORMAT, "%s is an array of unknown value type %u", r->what, et);
    *elem_out = (ap_gguf_type)et;
    *n_out = n;
    *first_out = r->pos;
    size_t es = scalar_size(et);
    size_t min_elem = es ? es : (et == AP_GGUF_STRING ? 8 : 12);
    if (n > remaining(r) / min_elem)
        return fail(
            r, AP_ERR_RANGE,
            "%s claims %llu array elements but only %zu bytes follow (truncated or corrupt file)",
            r->what, (unsigned long long)n, remaining(r));
    if (es) {
        if (et == AP_GGUF_BOOL) {
            for (uint64_t i = 0; i < n; i++)
                if (r->p[r->pos + i] > 1)
                    return fail(r, AP_ERR_FORMAT, "%s has bool element %llu with value %u", r->what,
                                (unsigned long long)i, r->p[r->pos + i]);
        }
        r->pos += (size_t)n * es;
        return AP_OK;
    }
    if (et == AP_GGUF_STRING) {
        size_t *offs = NULL;
        if (str_off) {
            /* n <= remaining/8, so this is at most the file's size. */
            offs = malloc((n ? (size_t)n : 1) * sizeof *offs);
            if (!offs) return fail(r, AP_ERR_NOMEM, "out of memory indexing %s", r->what);
        }
        for (uint64_t i = 0; i < n; i++) {
            const char *s;
            size_t len;
            if (offs) offs[i] = r->pos;
            if ((st = rd_str(r, &s, &len)) != AP_OK) {
                free(offs);
                return st;
            }
        }
        if (str_off) *str_off = offs;
        return AP_OK;
    }
    /* Nested arrays: validated and skipped; the API exposes only the outer
     * element type and count. */
    if (depth + 1 >= GGUF_MAX_DEPTH)
        return fail(r, AP_ERR_FORMAT, "%s has arrays nested deeper than %d levels", r->what,
                    GGUF_MAX_DEPTH);
    for (uint64_t i = 0; i < n; i++) {
        ap_gguf_type e2;
        uint64_t n2;
        size_t f2;
        if ((st = parse_array(r, depth + 1, &e2, &n2, &f2, NULL)) != AP_OK) return st;
    }
    return AP_OK;
}

static ap_status parse_kvs(rd *r, ap_gguf *g) {
    ap_status st;
    char shown[80];
    for (int64_t i = 0; i < g->n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        snprintf(r->what, sizeof r->what, "metadata pair %lld", (long long)i);
        if ((st = rd_str(r, &kv->key, &kv->key_len)) != AP_OK) return st;
        if (kv->key_len == 0)
            return fail(r, AP_ERR_FORMAT, "metadata pair %lld has an empty key", (long long)i);
        printable(shown, sizeof shown, kv->key, kv->key_len);
        if (kv->key_len > GGUF_MAX_KEY)
            return fail(r, AP_ERR_FORMAT,
                        "metadata key '%s' is %zu bytes long (at most %d allowed)", shown,
                        kv->key_len, GGUF_MAX_KEY);
        snprintf(r->what, sizeof r->what, "metadata pair %lld ('%s')", (long long)i, shown);
        uint32_t t;
        if ((st = rd_u32(r, &t)) != AP_OK) return st;
        if (t >= AP_GGUF_TYPE_COUNT)
            return fail(r, AP_ERR_FORMAT, "metadata key '%s' has unknown value type %u", shown, t);
        kv->type = (ap_gguf_type)t;
        kv->elem_type = AP_GGUF_TYPE_COUNT;
        kv->off = r->pos;
        if (t == AP_GGUF_STRING) {
            const char *s;
            size_t len;
            if ((st = rd_str(r, &s, &len)) != AP_OK) return st;
        } else if (t == AP_GGUF_ARRAY) {
            if ((st = parse_array(r, 0, &kv->elem_type, &kv->n, &kv->off, &kv->str_off)) != AP_OK)
                return st;
        } else {
            size_t es = scalar_size(t);
            if ((st = need(r, es)) != AP_OK) return st;
            if (t == AP_GGUF_BOOL && r->p[r->pos] > 1)
                return fail(r, AP_ERR_FORMAT, "metadata key '%s' is a bool with value %u", shown,
                            r->p[r->pos]);
            r->pos += es;
        }
    }
    return AP_OK;
}

static ap_status parse_alignment(rd *r, ap_gguf *g) {
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t i = ap_gguf_find_key(g, "general.alignment");
    if (i < 0) return AP_OK;
    const gguf_kv *kv = &g->kv[i];
    /* ggml insists on u32 here; a converter writing anything else is broken. */
    if (kv->type != AP_GGUF_U32)
        return fail(r, AP_ERR_FORMAT, "general.alignment has type %s, expected u32",
                    type_name(kv->type));
    uint32_t a = (uint32_t)le(g->base + kv->off, 4);
    if (a == 0 || (a & (a - 1)) != 0)
        return fail(r, AP_ERR_FORMAT, "general.alignment is %u, not a power of two", a);
    g->alignment = a;
    return AP_OK;
}

static ap_status parse_tensor_infos(rd *r, ap_gguf *g) {
    ap_status st;
    char shown[80];
    for (int64_t i = 0; i < g->n_tensors; i++) {
        ap_gguf_tensor *t = &g->tensors[i];
        snprintf(r->what, sizeof r->what, "tensor info %lld", (long long)i);
        if ((st = rd_str(r, &t->name, &t->name_len)) != AP_OK) return st;
        printable(shown, sizeof shown, t->name, t->name_len);
        if (t->name_len > GGUF_MAX_NAME)
            return fail(r, AP_ERR_FORMAT,
                        "tensor info %lld has a name of %zu bytes ('%s'; at most %d allowed)",
                        (long long)i, t->name_len, shown, GGUF_MAX_NAME);
        snprintf(r->what, sizeof r->what, "tensor info %lld ('%s')", (long long)i, shown);
        if ((st = rd_u32(r, &t->n_dims)) != AP_OK) return st;
        if (t->n_dims > GGUF_MAX_DIMS)
            return fail(r, AP_ERR_FORMAT, "tensor '%s' has %u dimensions (at most %d allowed)",
                        shown, t->n_dims, GGUF_MAX_DIMS);
        int64_t n_elem = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t v;
            if ((st = rd_u64(r, &v)) != AP_OK) return st;
            if (v > (uint64_t)INT64_MAX)
                return fail(r, AP_ERR_RANGE,
                            "tensor '%s' dimension %u is %llu, larger than INT64_MAX", shown, d,
                            (unsigned long long)v);
            t->ne[d] = (int64_t)v;
            if (__builtin_mul_overflow(n_elem, t->ne[d], &n_elem))
                return fail(r, AP_ERR_RANGE, "tensor '%s' element count overflows int64", shown);
        }
        uint32_t type;
        if ((st = rd_u32(r, &type)) != AP_OK) return st;
        const ap_ggml_traits *tr = ap_ggml_type_traits(type);
        if (!tr)
            return fail(r, AP_ERR_UNSUPPORTED, "tensor '%s' has unknown ggml type id %u", shown,
                        type);
        t->type = (ap_ggml_type)type;
        if (t->ne[0] % tr->block_size != 0)
            return fail(r, AP_ERR_FORMAT,
                        "tensor '%s' has %lld columns, not a multiple of the %s block size %d",
                        shown, (long long)t->ne[0], tr->name, tr->block_size);
        if ((st = rd_u64(r, &t->offset)) != AP_OK) return st;
        uint64_t nb;
        if (__builtin_mul_overflow((uint64_t)(t->ne[0] / tr->block_size), (uint64_t)tr->type_size,
                                   &nb))
            return fail(r, AP_ERR_RANGE, "tensor '%s' byte size overflows", shown);
        for (int d = 1; d < GGUF_MAX_DIMS; d++)
            if (__builtin_mul_overflow(nb, (uint64_t)t->ne[d], &nb))
                return fail(r, AP_ERR_RANGE, "tensor '%s' byte size overflows", shown);
        if (nb > SIZE_MAX)
            return fail(r, AP_ERR_RANGE, "tensor '%s' byte size %llu does not fit in memory", shown,
                        (unsigned long long)nb);
        t->nbytes = (size_t)nb;
    }
    return AP_OK;
}

static ap_status place_tensors(rd *r, ap_gguf *g) {
    char shown[80];
    size_t a = g->alignment;
    size_t pad = (a - r->pos % a) % a;
    if (g->n_tensors == 0) {
        g->data_off = r->pos + pad <= r->size ? r->pos + pad : r->size;
        return AP_OK;
    }
    if (pad > remaining(r))
        return fail(r, AP_ERR_FORMAT,
                    "truncated: the tensor data section would start at offset %zu, past the end "
                    "of the file (%zu bytes)",
                    r->pos + pad, r->size);
    g->data_off = r->pos + pad;
    size_t avail = r->size - g->data_off;
    uint64_t expect = 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        ap_gguf_tensor *t = &g->tensors[i];
        printable(shown, sizeof shown, t->name, t->name_len);
        if (t->offset % a != 0)
            return fail(r, AP_ERR_FORMAT,
                        "tensor '%s' offset %llu is not a multiple of the alignment %zu", shown,
                        (unsigned long long)t->offset, a);
        if (t->offset != expect)
            return fail(r, AP_ERR_FORMAT,
                        "tensor '%s' has offset %llu, expected %llu (tensor data must be "
                        "sequential, each tensor padded to %zu bytes)",
                        shown, (unsigned long long)t->offset, (unsigned long long)expect, a);
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return fail(r, AP_ERR_FORMAT,
                        "truncated: tensor '%s' data extends past end of file (offset %zu, size "
                        "%zu, file size %zu)",
                        shown, g->data_off + (size_t)t->offset, t->nbytes, r->size);
        t->data = g->base + g->data_off + t->offset;
        uint64_t padded;
        if (__builtin_add_overflow((uint64_t)t->nbytes, (uint64_t)(a - 1), &padded) ||
            __builtin_add_overflow(expect, padded / a * a, &expect))
            return fail(r, AP_ERR_RANGE, "tensor '%s' size overflows the data section", shown);
    }
    return AP_OK;
}

static ap_status parse(const uint8_t *base, size_t size, const char *name, ap_gguf **out,
                       ap_err *err) {
    ap_status st = AP_OK;
    char shown[80];
    rd r = {.p = base, .size = size, .pos = 0, .name = name, .err = err};
    ap_gguf *g = calloc(1, sizeof *g);
    if (!g) return ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", name);
    size_t nl = strlen(name);
    g->path = malloc(nl + 1);
    if (!g->path) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", name);
        goto cleanup;
    }
    memcpy(g->path, name, nl + 1);
    g->base = base;
    g->size = size;

    snprintf(r.what, sizeof r.what, "the header");
    if (size < 4 || memcmp(base, "GGUF", 4) != 0) {
        st = fail(&r, AP_ERR_FORMAT, "not a GGUF file (bad magic)");
        goto cleanup;
    }
    r.pos = 4;
    if ((st = rd_u32(&r, &g->version)) != AP_OK) goto cleanup;
    if (g->version == 1) {
        st =
            fail(&r, AP_ERR_UNSUPPORTED, "GGUF version 1 is not supported (only versions 2 and 3)");
        goto cleanup;
    }
    if (g->version != 2 && g->version != 3) {
        /* A big-endian file shows its small version number byte-swapped. */
        uint32_t sw = __builtin_bswap32(g->version);
        if (sw >= 1 && sw <= 3)
            st = fail(&r, AP_ERR_UNSUPPORTED, "big-endian GGUF files are not supported");
        else
            st = fail(&r, AP_ERR_UNSUPPORTED, "GGUF version %u is not supported (only 2 and 3)",
                      g->version);
        goto cleanup;
    }
    uint64_t nt, nkv;
    if ((st = rd_u64(&r, &nt)) != AP_OK || (st = rd_u64(&r, &nkv)) != AP_OK) goto cleanup;
    if (nkv > remaining(&r) / GGUF_MIN_KV) {
        st = fail(&r, AP_ERR_RANGE,
                  "header claims %llu metadata pairs but only %zu bytes follow (truncated or "
                  "corrupt file)",
                  (unsigned long long)nkv, remaining(&r));
        goto cleanup;
    }
    if (nt > remaining(&r) / GGUF_MIN_TENSOR) {
        st =
            fail(&r, AP_ERR_RANGE,
                 "header claims %llu tensors but only %zu bytes follow (truncated or corrupt file)",
                 (unsigned long long)nt, remaining(&r));
        goto cleanup;
    }
    g->n_kv = (int64_t)nkv;
    g->n_tensors = (int64_t)nt;
    g->kv = calloc(nkv ? (size_t)nkv : 1, sizeof *g->kv);
    g->tensors = calloc(nt ? (size_t)nt : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", name);
        goto cleanup;
    }
    if ((st = parse_kvs(&r, g)) != AP_OK) goto cleanup;

    int64_t dup[2];
    st = index_build(g, g->n_kv, kv_name, &g->kv_tab, &g->kv_mask, dup);
    if (st == AP_ERR_FORMAT) {
        printable(shown, sizeof shown, g->kv[dup[1]].key, g->kv[dup[1]].key_len);
        st = fail(&r, AP_ERR_FORMAT, "duplicate metadata key '%s' (pairs %lld and %lld)", shown,
                  (long long)dup[0], (long long)dup[1]);
        goto cleanup;
    } else if (st != AP_OK) {
        st = ap_errf(err, st, "%s: out of memory", name);
        goto cleanup;
    }
    if ((st = parse_alignment(&r, g)) != AP_OK) goto cleanup;
    if ((st = parse_tensor_infos(&r, g)) != AP_OK) goto cleanup;
    st = index_build(g, g->n_tensors, tensor_name, &g->t_tab, &g->t_mask, dup);
    if (st == AP_ERR_FORMAT) {
        printable(shown, sizeof shown, g->tensors[dup[1]].name, g->tensors[dup[1]].name_len);
        st = fail(&r, AP_ERR_FORMAT, "duplicate tensor name '%s' (tensors %lld and %lld)", shown,
                  (long long)dup[0], (long long)dup[1]);
        goto cleanup;
    } else if (st != AP_OK) {
        st = ap_errf(err, st, "%s: out of memory", name);
        goto cleanup;
    }
    if ((st = place_tensors(&r, g)) != AP_OK) goto cleanup;
    *out = g;
    g = NULL;
cleanup:
    ap_gguf_free(g);
    return st;
}

/* ---- open / free ---- */

ap_status ap_gguf_open_memory(const void *data, size_t size, const char *name, ap_gguf **out,
                              ap_err *err) {
    if (!out) return ap_errf(err, AP_ERR_ARG, "ap_gguf_open_memory: out is NULL");
    *out = NULL;
    if (!name) name = "<memory>";
    if (!data && size > 0) return ap_errf(err, AP_ERR_ARG, "%s: NULL buffer", name);
    static const uint8_t empty[1] = {0};
    return parse(data ? data : empty, data ? size : 0, name, out, err);
}

ap_status ap_gguf_open(const char *path, ap_gguf **out, ap_err *err) {
    ap_status st = AP_OK;
    void *map = MAP_FAILED;
    size_t size = 0;
    if (!out || !path) return ap_errf(err, AP_ERR_ARG, "ap_gguf_open: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ap_errf(err, AP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = ap_errf(err, AP_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        goto cleanup;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = ap_errf(err, AP_ERR_IO, "%s: not a regular file", path);
        goto cleanup;
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        st = ap_errf(err, AP_ERR_RANGE, "%s: file too large to map", path);
        goto cleanup;
    }
    size = (size_t)sb.st_size;
    if (size == 0) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: not a GGUF file (empty)", path);
        goto cleanup;
    }
    map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        st = ap_errf(err, AP_ERR_IO, "%s: cannot map %zu bytes: %s", path, size, strerror(errno));
        goto cleanup;
    }
    if ((st = parse(map, size, path, out, err)) != AP_OK) goto cleanup;
    (*out)->map = map;
    map = MAP_FAILED;
cleanup:
    if (map != MAP_FAILED) munmap(map, size);
    close(fd);
    return st;
}

void ap_gguf_free(ap_gguf *g) {
    if (!g) return;
    if (g->kv)
        for (int64_t i = 0; i < g->n_kv; i++) free(g->kv[i].str_off);
    free(g->kv);
    free(g->tensors);
    free(g->kv_tab);
    free(g->t_tab);
    if (g->map) munmap(g->map, g->size);
    free(g->path);
    free(g);
}

uint32_t ap_gguf_version(const ap_gguf *g) {
    return g->version;
}

size_t ap_gguf_alignment(const ap_gguf *g) {
    return g->alignment;
}

const char *ap_gguf_path(const ap_gguf *g) {
    return g->path;
}

/* ---- metadata ---- */

int64_t ap_gguf_n_kv(const ap_gguf *g) {
    return g->n_kv;
}

int64_t ap_gguf_find_key(const ap_gguf *g, const char *key) {
    if (!key) return -1;
    return index_find(g, g->kv_tab, g->kv_mask, kv_name, key, strlen(key));
}

const char *ap_gguf_key(const ap_gguf *g, int64_t i, size_t *len) {
    if (i < 0 || i >= g->n_kv) return NULL;
    if (len) *len = g->kv[i].key_len;
    return g->kv[i].key;
}

ap_gguf_type ap_gguf_kv_type(const ap_gguf *g, int64_t i) {
    if (i < 0 || i >= g->n_kv) return AP_GGUF_TYPE_COUNT;
    return g->kv[i].type;
}

static const gguf_kv *kv_get(const ap_gguf *g, const char *key, ap_err *err) {
    int64_t i = ap_gguf_find_key(g, key);
    if (i < 0) {
        ap_errf(err, AP_ERR_FORMAT, "%s: missing metadata key '%s'", g->path, key ? key : "(null)");
        return NULL;
    }
    return &g->kv[i];
}

static ap_status wrong_type(const ap_gguf *g, const char *key, const gguf_kv *kv,
                            const char *expected, ap_err *err) {
    if (kv->type == AP_GGUF_ARRAY)
        return ap_errf(err, AP_ERR_FORMAT, "%s: metadata key '%s' is an array of %s, expected %s",
                       g->path, key, type_name(kv->elem_type), expected);
    return ap_errf(err, AP_ERR_FORMAT, "%s: metadata key '%s' has type %s, expected %s", g->path,
                   key, type_name(kv->type), expected);
}

ap_status ap_gguf_get_int(const ap_gguf *g, const char *key, int64_t *out, ap_err *err) {
    const gguf_kv *kv = kv_get(g, key, err);
    if (!kv) return AP_ERR_FORMAT;
    if (!is_int_type(kv->type)) return wrong_type(g, key, kv, "an integer", err);
    if (int_at(g->base + kv->off, kv->type, out) != AP_OK)
        return ap_errf(err, AP_ERR_RANGE, "%s: metadata key '%s' value %llu does not fit in int64",
                       g->path, key, (unsigned long long)le(g->base + kv->off, 8));
    return AP_OK;
}

static ap_status float_at(const ap_gguf *g, const gguf_kv *kv, double *out) {
    if (kv->type == AP_GGUF_F32) {
        uint32_t u = (uint32_t)le(g->base + kv->off, 4);
        float f;
        memcpy(&f, &u, sizeof f);
        *out = f;
        return AP_OK;
    }
    if (kv->type == AP_GGUF_F64) {
        uint64_t u = le(g->base + kv->off, 8);
        memcpy(out, &u, sizeof *out);
        return AP_OK;
    }
    return AP_ERR_ARG;
}

ap_status ap_gguf_get_float(const ap_gguf *g, const char *key, double *out, ap_err *err) {
    const gguf_kv *kv = kv_get(g, key, err);
    if (!kv) return AP_ERR_FORMAT;
    if (float_at(g, kv, out) != AP_OK) return wrong_type(g, key, kv, "f32 or f64", err);
    return AP_OK;
}

ap_status ap_gguf_get_bool(const ap_gguf *g, const char *key, int *out, ap_err *err) {
    const gguf_kv *kv = kv_get(g, key, err);
    if (!kv) return AP_ERR_FORMAT;
    if (kv->type != AP_GGUF_BOOL) return wrong_type(g, key, kv, "bool", err);
    *out = g->base[kv->off] != 0;
    return AP_OK;
}

ap_status ap_gguf_get_str(const ap_gguf *g, const char *key, const char **s, size_t *len,
                          ap_err *err) {
    const gguf_kv *kv = kv_get(g, key, err);
    if (!kv) return AP_ERR_FORMAT;
    if (kv->type != AP_GGUF_STRING) return wrong_type(g, key, kv, "string", err);
    *len = (size_t)le(g->base + kv->off, 8);
    *s = (const char *)g->base + kv->off + 8;
    return AP_OK;
}

ap_status ap_gguf_get_arr(const ap_gguf *g, const char *key, ap_gguf_type *elem_type,
                          uint64_t *n, ap_err *err) {
    const gguf_kv *kv = kv_get(g, key, err);
    if (!kv) return AP_ERR_FORMAT;
    if (kv->type != AP_GGUF_ARRAY) return wrong_type(g, key, kv, "an array", err);
    if (elem_type) *elem_type = kv->elem_type;
    if (n) *n = kv->n;
    return AP_OK;
}

ap_status ap_gguf_arr_str(const ap_gguf *g, const char *key, uint64_t i, const char **s,
                          size_t *len, ap_err *err) {
    const gguf_kv *kv = kv_get(g, key, err);
    if (!kv) return AP_ERR_FORMAT;
    if (kv->type != AP_GGUF_ARRAY || kv->elem_type != AP_GGUF_STRING)
        return wrong_type(g, key, kv, "an array of string", err);
    if (i >= kv->n)
        return ap_errf(err, AP_ERR_RANGE, "%s: index %llu out of range for '%s' (%llu elements)",
                       g->path, (unsigned long long)i, key, (unsigned long long)kv->n);
    size_t o = kv->str_off[i];
    *len = (size_t)le(g->base + o, 8);
    *s = (const char *)g->base + o + 8;
    return AP_OK;
}

ap_status ap_gguf_arr_int(const ap_gguf *g, const char *key, uint64_t i, int64_t *out,
                          ap_err *err) {
    const gguf_kv *kv = kv_get(g, key, err);
    if (!kv) return AP_ERR_FORMAT;
    if (kv->type != AP_GGUF_ARRAY || !is_int_type(kv->elem_type))
        return wrong_type(g, key, kv, "an array of integers", err);
    if (i >= kv->n)
        return ap_errf(err, AP_ERR_RANGE, "%s: index %llu out of range for '%s' (%llu elements)",
                       g->path, (unsigned long long)i, key, (unsigned long long)kv->n);
    const uint8_t *p = g->base + kv->off + (size_t)i * scalar_size(kv->elem_type);
    if (int_at(p, kv->elem_type, out) != AP_OK)
        return ap_errf(err, AP_ERR_RANGE, "%s: element %llu of '%s' does not fit in int64", g->path,
                       (unsigned long long)i, key);
    return AP_OK;
}

ap_status ap_gguf_arr_float(const ap_gguf *g, const char *key, uint64_t i, double *out,
                            ap_err *err) {
    const gguf_kv *kv = kv_get(g, key, err);
    if (!kv) return AP_ERR_FORMAT;
    if (kv->type != AP_GGUF_ARRAY || (kv->elem_type != AP_GGUF_F32 && kv->elem_type != AP_GGUF_F64))
        return wrong_type(g, key, kv, "an array of f32 or f64", err);
    if (i >= kv->n)
        return ap_errf(err, AP_ERR_RANGE, "%s: index %llu out of range for '%s' (%llu elements)",
                       g->path, (unsigned long long)i, key, (unsigned long long)kv->n);
    const uint8_t *p = g->base + kv->off + (size_t)i * scalar_size(kv->elem_type);
    if (kv->elem_type == AP_GGUF_F32) {
        uint32_t u = (uint32_t)le(p, 4);
        float f;
        memcpy(&f, &u, sizeof f);
        *out = f;
    } else {
        uint64_t u = le(p, 8);
        memcpy(out, &u, sizeof *out);
    }
    return AP_OK;
}

ap_status ap_gguf_kv_int(const ap_gguf *g, int64_t i, int64_t *out) {
    if (i < 0 || i >= g->n_kv) return AP_ERR_ARG;
    if (!is_int_type(g->kv[i].type)) return AP_ERR_ARG;
    return int_at(g->base + g->kv[i].off, g->kv[i].type, out);
}

ap_status ap_gguf_kv_float(const ap_gguf *g, int64_t i, double *out) {
    if (i < 0 || i >= g->n_kv) return AP_ERR_ARG;
    return float_at(g, &g->kv[i], out);
}

ap_status ap_gguf_kv_str(const ap_gguf *g, int64_t i, const char **s, size_t *len) {
    if (i < 0 || i >= g->n_kv || g->kv[i].type != AP_GGUF_STRING) return AP_ERR_ARG;
    *len = (size_t)le(g->base + g->kv[i].off, 8);
    *s = (const char *)g->base + g->kv[i].off + 8;
    return AP_OK;
}

ap_status ap_gguf_kv_arr(const ap_gguf *g, int64_t i, ap_gguf_type *elem_type, uint64_t *n) {
    if (i < 0 || i >= g->n_kv || g->kv[i].type != AP_GGUF_ARRAY) return AP_ERR_ARG;
    if (elem_type) *elem_type = g->kv[i].elem_type;
    if (n) *n = g->kv[i].n;
    return AP_OK;
}

/* ---- tensors ---- */

int64_t ap_gguf_n_tensors(const ap_gguf *g) {
    return g->n_tensors;
}

const ap_gguf_tensor *ap_gguf_tensor_at(const ap_gguf *g, int64_t i) {
    if (i < 0 || i >= g->n_tensors) return NULL;
    return &g->tensors[i];
}

const ap_gguf_tensor *ap_gguf_find_tensor(const ap_gguf *g, const char *name) {
    if (!name) return NULL;
    int64_t i = index_find(g, g->t_tab, g->t_mask, tensor_name, name, strlen(name));
    return i < 0 ? NULL : &g->tensors[i];
}
