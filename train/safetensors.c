#define _POSIX_C_SOURCE 200809L
#include "train/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

typedef struct {
    const char *name;
    size_t size;
} st_dtype;

/* Byte-sized dtypes of the spec. Sub-byte ones (F4, F6_*) cannot be described
 * by numel * size and are left out on purpose. */
static const st_dtype k_dtypes[] = {
    {"BOOL", 1},    {"U8", 1},      {"I8", 1},      {"F8_E5M2", 1}, {"F8_E4M3", 1},
    {"F8_E8M0", 1}, {"I16", 2},     {"U16", 2},     {"F16", 2},     {"BF16", 2},
    {"I32", 4},     {"U32", 4},     {"F32", 4},     {"F64", 8},     {"I64", 8},
    {"U64", 8},     {"C64", 8},
};

static const st_dtype *dtype_find(const char *name) {
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof k_dtypes / sizeof k_dtypes[0]; i++)
        if (!strcmp(k_dtypes[i].name, name)) return &k_dtypes[i];
    return NULL;
}

size_t ap_st_dtype_size(const char *dtype) {
    const st_dtype *d = dtype_find(dtype);
    return d ? d->size : 0;
}

/* ------------------------------------------------------------------ writer */

typedef struct {
    char *name;
    const st_dtype *dt;
    int ndim;
    int64_t shape[AP_ST_MAX_DIMS];
    void *data;
    size_t nbytes;
} st_entry;

struct ap_st_writer {
    st_entry *t;
    int n, cap;
    char **keys, **vals;
    int n_meta, cap_meta;
};

ap_status ap_st_writer_create(ap_st_writer **out, ap_err *err) {
    *out = calloc(1, sizeof **out);
    return *out ? AP_OK : ap_errf(err, AP_ERR_NOMEM, "out of memory");
}

void ap_st_writer_free(ap_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    for (int i = 0; i < w->n_meta; i++) {
        free(w->keys[i]);
        free(w->vals[i]);
    }
    free(w->t);
    free(w->keys);
    free(w->vals);
    free(w);
}

ap_status ap_st_writer_add(ap_st_writer *w, const char *name, const char *dtype, int ndim,
                           const int64_t *shape, const void *data, ap_err *err) {
    const st_dtype *dt = dtype_find(dtype);
    if (!dt) return ap_errf(err, AP_ERR_ARG, "safetensors: unknown dtype '%s'", dtype ? dtype : "");
    if (!name || !name[0] || !strcmp(name, "__metadata__"))
        return ap_errf(err, AP_ERR_ARG, "safetensors: invalid tensor name");
    if (ndim < 0 || ndim > AP_ST_MAX_DIMS)
        return ap_errf(err, AP_ERR_ARG, "safetensors: %s has %d dims (max %d)", name, ndim,
                       AP_ST_MAX_DIMS);
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name))
            return ap_errf(err, AP_ERR_ARG, "safetensors: duplicate tensor %s", name);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return ap_errf(err, AP_ERR_ARG, "safetensors: %s negative dim", name);
        numel *= (size_t)shape[d];
    }
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        st_entry *t = realloc(w->t, sizeof *t * (size_t)cap);
        if (!t) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
        w->t = t;
        w->cap = cap;
    }
    st_entry *e = &w->t[w->n];
    memset(e, 0, sizeof *e);
    e->nbytes = numel * dt->size;
    e->name = strdup(name);
    e->data = malloc(e->nbytes ? e->nbytes : 1);
    if (!e->name || !e->data) {
        free(e->name);
        free(e->data);
        return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    }
    if (e->nbytes) memcpy(e->data, data, e->nbytes);
    e->dt = dt;
    e->ndim = ndim;
    for (int d = 0; d < ndim; d++) e->shape[d] = shape[d];
    w->n++;
    return AP_OK;
}

ap_status ap_st_writer_meta(ap_st_writer *w, const char *key, const char *value, ap_err *err) {
    char *v = strdup(value ? value : "");
    if (!v) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < w->n_meta; i++)
        if (!strcmp(w->keys[i], key)) {
            free(w->vals[i]);
            w->vals[i] = v;
            return AP_OK;
        }
    if (w->n_meta == w->cap_meta) {
        int cap = w->cap_meta ? 2 * w->cap_meta : 16;
        char **k = realloc(w->keys, sizeof *k * (size_t)cap);
        if (k) w->keys = k;
        char **vv = k ? realloc(w->vals, sizeof *vv * (size_t)cap) : NULL;
        if (vv) w->vals = vv;
        if (!k || !vv) {
            free(v);
            return ap_errf(err, AP_ERR_NOMEM, "out of memory");
        }
        w->cap_meta = cap;
    }
    w->keys[w->n_meta] = strdup(key);
    if (!w->keys[w->n_meta]) {
        free(v);
        return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    }
    w->vals[w->n_meta++] = v;
    return AP_OK;
}

static int entry_order(const void *a, const void *b) {
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    if (x->dt->size != y->dt->size) return x->dt->size > y->dt->size ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return 0;
        }
        p += k;
        n -= (size_t)k;
    }
    return 1;
}

ap_status ap_st_writer_write(const ap_st_writer *w, const char *path, ap_err *err) {
    ap_status st = AP_OK;
    const st_entry **order = NULL;
    cJSON *root = NULL;
    char *json = NULL, *header = NULL;
    int fd = -1, tmp_made = 0;
    char tmp[4096];
    ap_tmp_name(tmp, sizeof tmp, path);

    order = malloc(sizeof *order * (size_t)(w->n ? w->n : 1));
    root = cJSON_CreateObject();
    if (!order || !root) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    for (int i = 0; i < w->n; i++) order[i] = &w->t[i];
    qsort(order, (size_t)w->n, sizeof *order, entry_order);
    if (w->n_meta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        if (!meta) goto nomem;
        for (int i = 0; i < w->n_meta; i++)
            if (!cJSON_AddStringToObject(meta, w->keys[i], w->vals[i])) goto nomem;
    }
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const st_entry *e = order[i];
        cJSON *o = cJSON_AddObjectToObject(root, e->name);
        cJSON *shape = cJSON_CreateArray(), *offs = cJSON_CreateArray();
        if (!o || !shape || !offs) {
            cJSON_Delete(shape);
            cJSON_Delete(offs);
            goto nomem;
        }
        cJSON_AddStringToObject(o, "dtype", e->dt->name);
        for (int d = 0; d < e->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[d]));
        cJSON_AddItemToObject(o, "shape", shape);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + e->nbytes)));
        cJSON_AddItemToObject(o, "data_offsets", offs);
        off += e->nbytes;
    }
    json = cJSON_PrintUnformatted(root);
    if (!json) goto nomem;
    size_t jlen = strlen(json), hlen = (jlen + 7) / 8 * 8;
    header = malloc(8 + hlen);
    if (!header) goto nomem;
    for (int b = 0; b < 8; b++) header[b] = (char)(((uint64_t)hlen >> (8 * b)) & 0xff);
    memcpy(header + 8, json, jlen);
    memset(header + 8 + jlen, ' ', hlen - jlen);

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        st = ap_errf(err, AP_ERR_IO, "%s: cannot create %s: %s", path, tmp, strerror(errno));
        goto cleanup;
    }
    tmp_made = 1;
    int ok = write_all(fd, header, 8 + hlen);
    for (int i = 0; ok && i < w->n; i++) ok = write_all(fd, order[i]->data, order[i]->nbytes);
    /* fsync before rename: otherwise a crash can leave the new name pointing
     * at an empty file, losing the old good one too. */
    if (!ok || fsync(fd) != 0) {
        st = ap_errf(err, AP_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        goto cleanup;
    }
    int rc = close(fd);
    fd = -1;
    if (rc != 0) {
        st = ap_errf(err, AP_ERR_IO, "%s: close failed: %s", path, strerror(errno));
        goto cleanup;
    }
    st = ap_commit_file(tmp, path, err);
    if (st != AP_OK) goto cleanup;
    tmp_made = 0;
    /* Persist the rename itself; failure here is harmless for correctness. */
    char *dcopy = strdup(path);
    if (dcopy) {
        int dfd = open(dirname(dcopy), O_RDONLY);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dcopy);
    }
    goto cleanup;
nomem:
    st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory building the header", path);
cleanup:
    if (fd >= 0) close(fd);
    if (tmp_made) unlink(tmp);
    free(header);
    free(json);
    cJSON_Delete(root);
    free(order);
    return st;
}

/* ------------------------------------------------------------------ reader */

struct ap_st_file {
    char *label;
    unsigned char *buf; /* the whole file */
    size_t len;
    ap_st_tensor *t;
    int n;
    char **keys, **vals;
    int n_meta;
};

void ap_st_free(ap_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free((char *)f->t[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->keys[i]);
        free(f->vals[i]);
    }
    free(f->t);
    free(f->keys);
    free(f->vals);
    free(f->buf);
    free(f->label);
    free(f);
}

/* A JSON number that is an exact non-negative integer (<= 2^53). */
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d > 9007199254740992.0 || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

typedef struct {
    uint64_t begin, end;
    int idx;
} st_span;

static int span_order(const void *a, const void *b) {
    const st_span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int name_order(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static ap_status parse_header(ap_st_file *f, ap_err *err) {
    ap_status st = AP_OK;
    const char *L = f->label;
    cJSON *root = NULL;
    st_span *spans = NULL;
    const char **names = NULL;
    if (f->len < 8) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: %zu bytes, too short for a safetensors file", L,
                     f->len);
        goto cleanup;
    }
    uint64_t hlen = 0;
    for (int b = 0; b < 8; b++) hlen |= (uint64_t)f->buf[b] << (8 * b);
    if (hlen > AP_ST_MAX_HEADER) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: safetensors header length %llu exceeds the %u limit",
                     L, (unsigned long long)hlen, AP_ST_MAX_HEADER);
        goto cleanup;
    }
    if (hlen > f->len - 8) {
        st = ap_errf(err, AP_ERR_FORMAT,
                     "%s: safetensors header length %llu exceeds the file size %zu (truncated?)", L,
                     (unsigned long long)hlen, f->len);
        goto cleanup;
    }
    if (hlen < 2 || f->buf[8] != '{') {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: safetensors header is not a JSON object", L);
        goto cleanup;
    }
    const char *hdr = (const char *)f->buf + 8, *end = NULL;
    root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!cJSON_IsObject(root)) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: safetensors header is not well-formed JSON", L);
        goto cleanup;
    }
    for (const char *p = end; p && p < hdr + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: trailing bytes after the JSON header", L);
            goto cleanup;
        }
    size_t buf_len = f->len - 8 - (size_t)hlen;
    const unsigned char *data0 = f->buf + 8 + hlen;

    int n_items = cJSON_GetArraySize(root);
    names = malloc(sizeof *names * (size_t)(n_items + 1));
    f->t = calloc((size_t)n_items + 1, sizeof *f->t);
    spans = malloc(sizeof *spans * (size_t)(n_items + 1));
    if (!names || !f->t || !spans) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", L);
        goto cleanup;
    }
    int k = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, root) names[k++] = it->string ? it->string : "";
    qsort(names, (size_t)k, sizeof *names, name_order);
    for (int i = 1; i < k; i++)
        if (!strcmp(names[i - 1], names[i])) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: duplicate key \"%s\" in the header", L, names[i]);
            goto cleanup;
        }

    cJSON_ArrayForEach(it, root) {
        const char *name = it->string ? it->string : "";
        if (!strcmp(name, "__metadata__")) {
            if (!cJSON_IsObject(it)) {
                st = ap_errf(err, AP_ERR_FORMAT, "%s: __metadata__ is not an object", L);
                goto cleanup;
            }
            int nm = cJSON_GetArraySize(it);
            f->keys = calloc((size_t)nm + 1, sizeof *f->keys);
            f->vals = calloc((size_t)nm + 1, sizeof *f->vals);
            if (!f->keys || !f->vals) {
                st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", L);
                goto cleanup;
            }
            const cJSON *m;
            cJSON_ArrayForEach(m, it) {
                if (!cJSON_IsString(m)) {
                    st = ap_errf(err, AP_ERR_FORMAT, "%s: __metadata__ value \"%s\" is not a string",
                                 L, m->string ? m->string : "");
                    goto cleanup;
                }
                f->keys[f->n_meta] = strdup(m->string ? m->string : "");
                f->vals[f->n_meta] = strdup(m->valuestring);
                if (!f->keys[f->n_meta] || !f->vals[f->n_meta]) {
                    free(f->keys[f->n_meta]);
                    free(f->vals[f->n_meta]);
                    st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", L);
                    goto cleanup;
                }
                f->n_meta++;
            }
            continue;
        }
        if (!cJSON_IsObject(it)) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: tensor %s: entry is not an object", L, name);
            goto cleanup;
        }
        const cJSON *jd = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(it, "shape");
        const cJSON *jo = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        if (!cJSON_IsString(jd)) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: tensor %s: missing dtype", L, name);
            goto cleanup;
        }
        const st_dtype *dt = dtype_find(jd->valuestring);
        if (!dt) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: tensor %s: unknown dtype \"%s\"", L, name,
                         jd->valuestring);
            goto cleanup;
        }
        if (!cJSON_IsArray(js) || cJSON_GetArraySize(js) > AP_ST_MAX_DIMS) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: tensor %s: shape must be an array of <= %d dims",
                         L, name, AP_ST_MAX_DIMS);
            goto cleanup;
        }
        ap_st_tensor *t = &f->t[f->n];
        t->dtype = dt->name;
        t->numel = 1;
        const cJSON *d;
        cJSON_ArrayForEach(d, js) {
            uint64_t v;
            if (!json_uint(d, &v)) {
                st = ap_errf(err, AP_ERR_FORMAT, "%s: tensor %s: shape entries must be integers >= 0",
                             L, name);
                goto cleanup;
            }
            if (v != 0 && t->numel > SIZE_MAX / 16 / v) {
                st = ap_errf(err, AP_ERR_FORMAT, "%s: tensor %s: shape overflows", L, name);
                goto cleanup;
            }
            t->shape[t->ndim++] = (int64_t)v;
            t->numel *= (size_t)v;
        }
        t->nbytes = t->numel * dt->size;
        uint64_t b0, b1;
        if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || !json_uint(jo->child, &b0) ||
            !json_uint(jo->child->next, &b1) || b1 < b0) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: tensor %s: data_offsets must be [begin, end]", L,
                         name);
            goto cleanup;
        }
        if (b1 - b0 != (uint64_t)t->nbytes) {
            st = ap_errf(err, AP_ERR_FORMAT,
                         "%s: tensor %s: %llu bytes for shape x %s (%zu elements) but data_offsets "
                         "span %llu",
                         L, name, (unsigned long long)t->nbytes, dt->name, t->numel,
                         (unsigned long long)(b1 - b0));
            goto cleanup;
        }
        if (b1 > buf_len) {
            st = ap_errf(err, AP_ERR_FORMAT,
                         "%s: tensor %s: data_offsets end %llu past the data buffer (%zu bytes)", L,
                         name, (unsigned long long)b1, buf_len);
            goto cleanup;
        }
        t->name = strdup(name);
        if (!t->name) {
            st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", L);
            goto cleanup;
        }
        t->data = data0 + b0;
        spans[f->n].begin = b0;
        spans[f->n].end = b1;
        spans[f->n].idx = f->n;
        f->n++;
    }
    qsort(spans, (size_t)f->n, sizeof *spans, span_order);
    uint64_t expect = 0;
    for (int i = 0; i < f->n; i++) {
        if (spans[i].begin != expect) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: tensor %s: data starts at %llu, expected %llu (%s)",
                         L, f->t[spans[i].idx].name, (unsigned long long)spans[i].begin,
                         (unsigned long long)expect,
                         spans[i].begin > expect ? "gap" : "overlap");
            goto cleanup;
        }
        expect = spans[i].end;
    }
    if (expect != buf_len) {
        st = ap_errf(err, AP_ERR_FORMAT,
                     "%s: tensors cover %llu bytes but the data buffer has %zu (trailing bytes)", L,
                     (unsigned long long)expect, buf_len);
        goto cleanup;
    }
cleanup:
    free(spans);
    free(names);
    cJSON_Delete(root);
    return st;
}

ap_status ap_st_parse(const void *buf, size_t len, const char *label, ap_st_file **out,
                      ap_err *err) {
    ap_status st = AP_OK;
    *out = NULL;
    ap_st_file *f = calloc(1, sizeof *f);
    if (!f) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    f->label = strdup(label ? label : "<memory>");
    f->buf = malloc(len ? len : 1);
    if (!f->label || !f->buf) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    if (len) memcpy(f->buf, buf, len);
    f->len = len;
    st = parse_header(f, err);
    if (st != AP_OK) goto cleanup;
    *out = f;
    f = NULL;
cleanup:
    ap_st_free(f);
    return st;
}

ap_status ap_st_open(const char *path, ap_st_file **out, ap_err *err) {
    ap_status st = AP_OK;
    *out = NULL;
    char *data = NULL;
    size_t len = 0;
    ap_st_file *f = calloc(1, sizeof *f);
    if (!f) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    st = ap_read_file(path, &data, &len, err);
    if (st != AP_OK) goto cleanup;
    f->buf = (unsigned char *)data; /* take ownership: avoids a second copy */
    f->len = len;
    f->label = strdup(path);
    if (!f->label) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    st = parse_header(f, err);
    if (st != AP_OK) goto cleanup;
    *out = f;
    f = NULL;
cleanup:
    ap_st_free(f);
    return st;
}

int ap_st_count(const ap_st_file *f) { return f->n; }
const ap_st_tensor *ap_st_at(const ap_st_file *f, int i) {
    return i >= 0 && i < f->n ? &f->t[i] : NULL;
}
const char *ap_st_label(const ap_st_file *f) { return f->label; }

const ap_st_tensor *ap_st_find(const ap_st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}

const char *ap_st_meta(const ap_st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->keys[i], key)) return f->vals[i];
    return NULL;
}

static float half_to_float(uint16_t h) {
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0)
        v = ldexp((double)m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp((double)(m | 0x400), e - 25);
    return (float)((h & 0x8000) ? -v : v);
}

ap_status ap_st_read_f32(const ap_st_file *f, const char *name, float *dst, size_t n,
                         ap_err *err) {
    const ap_st_tensor *t = ap_st_find(f, name);
    if (!t) return ap_errf(err, AP_ERR_FORMAT, "%s: tensor %s is missing", f->label, name);
    if (t->numel != n)
        return ap_errf(err, AP_ERR_FORMAT, "%s: tensor %s has %zu elements, expected %zu",
                       f->label, name, t->numel, n);
    const unsigned char *p = t->data;
    if (!strcmp(t->dtype, "F32")) {
        if (n) memcpy(dst, p, n * 4);
    } else if (!strcmp(t->dtype, "F64")) {
        for (size_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, p + 8 * i, 8);
            dst[i] = (float)v;
        }
    } else if (!strcmp(t->dtype, "F16") || !strcmp(t->dtype, "BF16")) {
        int bf = t->dtype[0] == 'B';
        for (size_t i = 0; i < n; i++) {
            uint16_t h = (uint16_t)(p[2 * i] | (p[2 * i + 1] << 8));
            if (bf) {
                uint32_t u = (uint32_t)h << 16;
                memcpy(&dst[i], &u, 4);
            } else {
                dst[i] = half_to_float(h);
            }
        }
    } else {
        return ap_errf(err, AP_ERR_UNSUPPORTED, "%s: tensor %s has dtype %s, expected a float",
                       f->label, name, t->dtype);
    }
    return AP_OK;
}
