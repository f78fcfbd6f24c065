/* A small GGUF v3 writer: builds synthetic model files for tests, fuzz seed
 * corpora and fixtures. Not used on the capture path.
 *
 * Ownership: the builder copies keys, strings and tensor data on add. */
#ifndef AP_GGUF_WRITE_H
#define AP_GGUF_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "capture/gguf.h"
#include "common/status.h"

typedef struct ap_gguf_builder ap_gguf_builder;

ap_status ap_gguf_builder_create(ap_gguf_builder **out, ap_err *err);
void ap_gguf_builder_free(ap_gguf_builder *b); /* NULL ok */

/* Scalars (the value type written is the one named). */
ap_status ap_gguf_builder_set_u32(ap_gguf_builder *b, const char *key, uint32_t v, ap_err *err);
ap_status ap_gguf_builder_set_i32(ap_gguf_builder *b, const char *key, int32_t v, ap_err *err);
ap_status ap_gguf_builder_set_u64(ap_gguf_builder *b, const char *key, uint64_t v, ap_err *err);
ap_status ap_gguf_builder_set_f32(ap_gguf_builder *b, const char *key, float v, ap_err *err);
ap_status ap_gguf_builder_set_bool(ap_gguf_builder *b, const char *key, int v, ap_err *err);
ap_status ap_gguf_builder_set_str(ap_gguf_builder *b, const char *key, const char *v, ap_err *err);
/* Arrays. */
ap_status ap_gguf_builder_set_arr_str(ap_gguf_builder *b, const char *key, const char *const *v,
                                      uint64_t n, ap_err *err);
ap_status ap_gguf_builder_set_arr_i32(ap_gguf_builder *b, const char *key, const int32_t *v,
                                      uint64_t n, ap_err *err);
ap_status ap_gguf_builder_set_arr_f32(ap_gguf_builder *b, const char *key, const float *v,
                                      uint64_t n, ap_err *err);

/* Any scalar type u8..f64 or bool: *value has the C type matching `type`
 * (uint8_t for u8 and bool, int16_t for i16, double for f64, ...). */
ap_status ap_gguf_builder_set_scalar(ap_gguf_builder *b, const char *key, ap_gguf_type type,
                                     const void *value, ap_err *err);
/* Array of any fixed-size element type (not string/array), C elements as for
 * set_scalar. */
ap_status ap_gguf_builder_set_arr(ap_gguf_builder *b, const char *key, ap_gguf_type elem_type,
                                  const void *v, uint64_t n, ap_err *err);
/* A value given as its encoded bytes (everything after the u32 value type),
 * written verbatim and unchecked: nested arrays, and test/fuzz inputs that
 * need encodings the typed setters refuse to produce. */
ap_status ap_gguf_builder_set_raw(ap_gguf_builder *b, const char *key, ap_gguf_type type,
                                  const void *payload, size_t nbytes, ap_err *err);

/* Add a tensor whose raw bytes (already in `type`'s block format) are given.
 * ne[0] fastest; n_dims <= 4. */
ap_status ap_gguf_builder_add_tensor(ap_gguf_builder *b, const char *name, ap_ggml_type type,
                                     uint32_t n_dims, const int64_t *ne, const void *data,
                                     size_t nbytes, ap_err *err);
/* Quantize float32 values into `type` (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0 at least; K-quants optional) and add the tensor. */
ap_status ap_gguf_builder_add_tensor_f32(ap_gguf_builder *b, const char *name, ap_ggml_type type,
                                         uint32_t n_dims, const int64_t *ne, const float *values,
                                         ap_err *err);

/* Serialize (version 3, alignment 32 unless general.alignment is set). */
ap_status ap_gguf_builder_write(const ap_gguf_builder *b, const char *path, ap_err *err);
ap_status ap_gguf_builder_to_memory(const ap_gguf_builder *b, uint8_t **data, size_t *size,
                                    ap_err *err); /* *data malloc'd */

#endif
