/* ggml tensor types: traits and dequantization to float32.
 *
 * Layouts follow the GGUF/ggml block formats (all scales IEEE binary16,
 * little-endian). ap_dequant_row is the fast path; ap_dequant_row_ref is the
 * plain formula transcription the tests check it against. */
#ifndef AP_QUANT_H
#define AP_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef enum {
    AP_GGML_F32 = 0,
    AP_GGML_F16 = 1,
    AP_GGML_Q4_0 = 2,
    AP_GGML_Q4_1 = 3,
    AP_GGML_Q5_0 = 6,
    AP_GGML_Q5_1 = 7,
    AP_GGML_Q8_0 = 8,
    AP_GGML_Q8_1 = 9,
    AP_GGML_Q2_K = 10,
    AP_GGML_Q3_K = 11,
    AP_GGML_Q4_K = 12,
    AP_GGML_Q5_K = 13,
    AP_GGML_Q6_K = 14,
    AP_GGML_Q8_K = 15,
    AP_GGML_I8 = 24,
    AP_GGML_I16 = 25,
    AP_GGML_I32 = 26,
    AP_GGML_I64 = 27,
    AP_GGML_F64 = 28,
    AP_GGML_BF16 = 30,
    AP_GGML_TYPE_COUNT = 40 /* ids >= this are rejected by the reader */
} ap_ggml_type;

typedef struct {
    const char *name;   /* "Q4_1"; NULL for ids ggml does not define */
    int block_size;     /* elements per block (1 for plain types) */
    int type_size;      /* bytes per block */
    int dequant_ok;     /* ap_dequant_row supports it */
} ap_ggml_traits;

/* Traits of a type id; returns NULL for unknown ids (the reader rejects them).
 * Known-but-unsupported types (IQ*, Q2_K...) have dequant_ok = 0. */
const ap_ggml_traits *ap_ggml_type_traits(uint32_t type);

/* Bytes of a row of n elements, or 0 if n is not a multiple of the block size
 * or the type is unknown. */
size_t ap_ggml_row_size(uint32_t type, int64_t n);

/* Dequantize n elements (n a multiple of the block size) from src into dst.
 * AP_ERR_UNSUPPORTED for types without dequant_ok. */
ap_status ap_dequant_row(ap_ggml_type type, const void *src, float *dst, int64_t n, ap_err *err);
ap_status ap_dequant_row_ref(ap_ggml_type type, const void *src, float *dst, int64_t n,
                             ap_err *err);

float ap_fp16_to_fp32(uint16_t h);
uint16_t ap_fp32_to_fp16(float f); /* round to nearest even */
float ap_bf16_to_fp32(uint16_t h);

#endif
