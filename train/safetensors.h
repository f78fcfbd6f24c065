/* safetensors files (stack-notes section 8): a little-endian u64 header
 * length, a JSON header naming each tensor's dtype, shape and byte range, and
 * the byte buffer.
 *
 * Writer: the header is built with cJSON, padded with spaces to a multiple of
 * 8 and lists tensors by decreasing dtype alignment then name, with data laid
 * out in that order, so every tensor is naturally aligned for mmap, as the
 * official writer does. The file is written to "<path>.tmp.<pid>", fsync'd and
 * renamed over path: a failed write leaves an existing file untouched.
 *
 * Reader: the whole file is read and every rule of the format is checked
 * (header length bounds, well-formed JSON object, no duplicate names, known
 * dtype, shape x dtype size == byte span, spans contiguous from 0 without gaps
 * or overlap, last end == buffer size, __metadata__ a string -> string map).
 * Errors name the file. */
#ifndef AP_SAFETENSORS_H
#define AP_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define AP_ST_MAX_DIMS 8
#define AP_ST_MAX_HEADER (100u * 1000u * 1000u) /* the reference reader's limit */

typedef struct {
    const char *name;  /* owned by the file/writer */
    const char *dtype; /* "F32", "F64", "I64", ... */
    int ndim;
    int64_t shape[AP_ST_MAX_DIMS];
    size_t numel;
    size_t nbytes;
    const void *data;  /* into the file's buffer; little-endian, row-major, may be unaligned */
} ap_st_tensor;

/* Bytes per element of a dtype name, 0 if unknown. Sub-byte types (F4, F6_*)
 * are rejected as unsupported by this reader. */
size_t ap_st_dtype_size(const char *dtype);

/* ---- writer ---- */
typedef struct ap_st_writer ap_st_writer;

ap_status ap_st_writer_create(ap_st_writer **out, ap_err *err);
void ap_st_writer_free(ap_st_writer *w); /* NULL is a no-op */
/* Copies name and data (numel(shape) * dtype size bytes). */
ap_status ap_st_writer_add(ap_st_writer *w, const char *name, const char *dtype, int ndim,
                           const int64_t *shape, const void *data, ap_err *err);
/* Copies key and value; a repeated key replaces the value. */
ap_status ap_st_writer_meta(ap_st_writer *w, const char *key, const char *value, ap_err *err);
/* Atomic write (tmp + fsync + rename). */
ap_status ap_st_writer_write(const ap_st_writer *w, const char *path, ap_err *err);

/* ---- reader ---- */
typedef struct ap_st_file ap_st_file;

ap_status ap_st_open(const char *path, ap_st_file **out, ap_err *err);
/* Parse an in-memory image (copied); `label` names it in error messages. */
ap_status ap_st_parse(const void *buf, size_t len, const char *label, ap_st_file **out,
                      ap_err *err);
void ap_st_free(ap_st_file *f); /* NULL is a no-op */

int ap_st_count(const ap_st_file *f);
const ap_st_tensor *ap_st_at(const ap_st_file *f, int i); /* header order */
const ap_st_tensor *ap_st_find(const ap_st_file *f, const char *name); /* NULL if absent */
const char *ap_st_meta(const ap_st_file *f, const char *key);       /* NULL if absent */
const char *ap_st_label(const ap_st_file *f);                       /* path or label */

/* Copy a tensor into float32 (F32 exactly; F64/F16/BF16 converted). Checks
 * the dtype is one of those and numel == n. */
ap_status ap_st_read_f32(const ap_st_file *f, const char *name, float *dst, size_t n,
                         ap_err *err);

#endif
