/* GGUF v2/v3 reader over mmap (or a caller's memory buffer, for fuzzing).
 *
 * Every offset, size and count read from the file is bounds- and
 * overflow-checked before use; the checks follow ggml's reader (sequential,
 * aligned tensor offsets; ne[0] a multiple of the block size; known type ids).
 *
 * Ownership: ap_gguf owns the mapping; every pointer it hands out (strings,
 * array data, tensor data) points into that mapping and lives until
 * ap_gguf_free(). Strings are NOT NUL-terminated: use the returned length. */
#ifndef AP_GGUF_H
#define AP_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "kernels/quant.h"

typedef enum {
    AP_GGUF_U8 = 0,
    AP_GGUF_I8 = 1,
    AP_GGUF_U16 = 2,
    AP_GGUF_I16 = 3,
    AP_GGUF_U32 = 4,
    AP_GGUF_I32 = 5,
    AP_GGUF_F32 = 6,
    AP_GGUF_BOOL = 7,
    AP_GGUF_STRING = 8,
    AP_GGUF_ARRAY = 9,
    AP_GGUF_U64 = 10,
    AP_GGUF_I64 = 11,
    AP_GGUF_F64 = 12,
    AP_GGUF_TYPE_COUNT
} ap_gguf_type;

typedef struct ap_gguf ap_gguf;

typedef struct {
    const char *name;     /* not NUL-terminated */
    size_t name_len;
    uint32_t n_dims;
    int64_t ne[4];        /* ne[0] fastest; unused dims are 1 */
    ap_ggml_type type;
    uint64_t offset;      /* relative to the data section */
    size_t nbytes;
    const void *data;     /* into the mapping */
} ap_gguf_tensor;

/* Open and validate a file. `path` is used in every error message. */
ap_status ap_gguf_open(const char *path, ap_gguf **out, ap_err *err);
/* Parse a buffer the caller keeps alive until ap_gguf_free (no copy). */
ap_status ap_gguf_open_memory(const void *data, size_t size, const char *name, ap_gguf **out,
                              ap_err *err);
void ap_gguf_free(ap_gguf *g); /* NULL is a no-op */

uint32_t ap_gguf_version(const ap_gguf *g);
size_t ap_gguf_alignment(const ap_gguf *g);
const char *ap_gguf_path(const ap_gguf *g); /* NUL-terminated copy of the name given */

/* ---- metadata ---- */
int64_t ap_gguf_n_kv(const ap_gguf *g);
int64_t ap_gguf_find_key(const ap_gguf *g, const char *key); /* -1 if absent */
const char *ap_gguf_key(const ap_gguf *g, int64_t i, size_t *len);
ap_gguf_type ap_gguf_kv_type(const ap_gguf *g, int64_t i);

/* Typed getters by key. Integer getters accept any integer type (converters
 * write u32 where the spec says u64) and fail with AP_ERR_RANGE if the value
 * does not fit; float getters accept f32/f64. A missing key gives
 * AP_ERR_FORMAT naming the key. */
ap_status ap_gguf_get_int(const ap_gguf *g, const char *key, int64_t *out, ap_err *err);
ap_status ap_gguf_get_float(const ap_gguf *g, const char *key, double *out, ap_err *err);
ap_status ap_gguf_get_bool(const ap_gguf *g, const char *key, int *out, ap_err *err);
ap_status ap_gguf_get_str(const ap_gguf *g, const char *key, const char **s, size_t *len,
                          ap_err *err);
/* Arrays: element type and count. */
ap_status ap_gguf_get_arr(const ap_gguf *g, const char *key, ap_gguf_type *elem_type,
                          uint64_t *n, ap_err *err);
/* i-th string of a string array (bounds-checked). */
ap_status ap_gguf_arr_str(const ap_gguf *g, const char *key, uint64_t i, const char **s,
                          size_t *len, ap_err *err);
/* Integer array element converted to int64 (any integer element type). */
ap_status ap_gguf_arr_int(const ap_gguf *g, const char *key, uint64_t i, int64_t *out,
                          ap_err *err);
/* Float array element (f32 or f64 elements) as double. */
ap_status ap_gguf_arr_float(const ap_gguf *g, const char *key, uint64_t i, double *out,
                            ap_err *err);
/* Same, by kv index: for iterating all metadata (inspect). */
ap_status ap_gguf_kv_int(const ap_gguf *g, int64_t i, int64_t *out);
ap_status ap_gguf_kv_float(const ap_gguf *g, int64_t i, double *out);
ap_status ap_gguf_kv_str(const ap_gguf *g, int64_t i, const char **s, size_t *len);
ap_status ap_gguf_kv_arr(const ap_gguf *g, int64_t i, ap_gguf_type *elem_type, uint64_t *n);

/* ---- tensors ---- */
int64_t ap_gguf_n_tensors(const ap_gguf *g);
const ap_gguf_tensor *ap_gguf_tensor_at(const ap_gguf *g, int64_t i);
const ap_gguf_tensor *ap_gguf_find_tensor(const ap_gguf *g, const char *name); /* NULL if absent */

#endif
