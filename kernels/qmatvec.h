/* Matrix-vector products for single-token decode: quantized weights times a
 * float32 activation vector, and the float32 K/V-cache products of decode
 * attention.
 *
 * Weights stay in their GGUF block format (ap_qmat is a view of the rows);
 * the kernels decode each block in registers and never build a float32 copy.
 * Two activation modes:
 *   AP_QACT_F32 (default, exact): every product uses the weight exactly as
 *     ap_dequant_row gives it and the float32 activation; only the order of
 *     the float32 summation differs from dequantize + SGEMV (block sums are
 *     factored, e.g. Q4_1: d·Σq·x + m·Σx). Within AP_TOL_QDOT_REL of the
 *     float64 reference.
 *   AP_QACT_Q8 (opt-in, inexact): activations are rounded to int8 per block
 *     of 32 (scale max|x|/127, like ggml's Q8_0/Q8_1), and blocks are
 *     multiplied in integers. Faster; its error against the exact mode is
 *     measured in docs/engine.md. Types without an integer kernel
 *     (ap_qmatvec_q8_supported() == 0) run the exact kernel in this mode.
 *
 * Rows are independent: row r's result depends only on row r and x, never
 * on how a caller splits rows over threads (callers pass [row0, row1)).
 *
 * ISA: AVX2+FMA+F16C kernels, chosen at run time (__builtin_cpu_supports),
 * and portable scalar ones. Both follow the same algebra; their summation
 * orders differ, so they agree within AP_TOL_QDOT_REL, not bitwise. */
#ifndef AP_QMATVEC_H
#define AP_QMATVEC_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "kernels/quant.h"

typedef enum {
    AP_QISA_AUTO = 0, /* the best this CPU supports */
    AP_QISA_SCALAR = 1,
    AP_QISA_AVX2 = 2, /* AVX2 + FMA + F16C */
} ap_qisa;

/* The ISA AUTO resolves to on this CPU. */
ap_qisa ap_qisa_best(void);
/* isa itself if this CPU runs it, AUTO resolved, else AP_QISA_SCALAR. */
ap_qisa ap_qisa_resolve(ap_qisa isa);

typedef enum {
    AP_QACT_F32 = 0,
    AP_QACT_Q8 = 1,
} ap_qact_mode;

/* A weight matrix: n_out rows of n_in elements, row r at
 * (const uint8_t *)data + r * row_bytes. Borrowed, never freed here. */
typedef struct {
    ap_ggml_type type;
    const void *data;
    size_t row_bytes;
    int n_in, n_out;
} ap_qmat;

/* ap_qmatvec handles this type (every type ap_dequant_row handles: the
 * specialised kernels cover F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
 * Q6_K; the others (BF16, Q5_K) are decoded 256 elements at a time with
 * ap_dequant_row). */
int ap_qmatvec_supported(ap_ggml_type type);
/* AP_QACT_Q8 has an integer kernel for this type (Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0, Q4_K, Q6_K). */
int ap_qmatvec_q8_supported(ap_ggml_type type);

/* Validates type, shape and row size; the message names `name`. */
ap_status ap_qmat_check(const ap_qmat *w, const char *name, ap_err *err);

/* An activation vector prepared once and then shared, read-only, by every
 * thread and row: block sums for the factored formulas, and the int8 copy
 * in AP_QACT_Q8 mode. Owns its buffers; borrows x between ap_qvec_set calls. */
typedef struct ap_qvec ap_qvec;

/* n_max: the longest vector it will hold. */
ap_status ap_qvec_create(int n_max, ap_qact_mode mode, ap_qisa isa, ap_qvec **out, ap_err *err);
void ap_qvec_free(ap_qvec *v);
/* Prepare x[0..n-1] (n <= n_max); x must stay valid and unchanged while
 * products use this vector. */
void ap_qvec_set(ap_qvec *v, const float *x, int n);
ap_qact_mode ap_qvec_mode(const ap_qvec *v);
ap_qisa ap_qvec_isa(const ap_qvec *v);
/* The activation value the kernels multiply element i by: x[i] in F32 mode,
 * its int8 rounding times the block scale in Q8 mode (for tests and error
 * measurement). */
float ap_qvec_value(const ap_qvec *v, int i);

/* y[r] (+)= sum_i w[r][i] * x[i] for r in [row0, row1). x->n == w->n_in;
 * w passed ap_qmat_check. accumulate: add to y instead of overwriting. */
void ap_qmatvec(const ap_qmat *w, const ap_qvec *x, float *y, int row0, int row1, int accumulate);
/* Reference: weights from ap_dequant_row_ref, activations ap_qvec_value
 * (so it follows the mode, including the exact fallback of types without a
 * Q8 kernel), float64 accumulation. */
void ap_qmatvec_ref(const ap_qmat *w, const ap_qvec *x, float *y, int row0, int row1,
                    int accumulate);

/* Rows [row0, row1) of w as float32, row r at dst + (r - row0) * n_in:
 * bit-identical to ap_dequant_row (same operations in the same order, no
 * fused multiply-add), with AVX2 for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0. For sgemm on
 * strips of a quantized matrix. */
void ap_qmat_dequant_rows(const ap_qmat *w, int row0, int row1, float *dst, ap_qisa isa);

/* Element type of a K/V cache. F16 (IEEE binary16, llama.cpp's default)
 * halves the bytes attention reads; every kernel converts to float32
 * exactly on load and computes in float32, so the only error is the
 * rounding of each cached element (relative 2^-11), measured end to end in
 * docs/engine.md. */
typedef enum { AP_KV_F32 = 0, AP_KV_F16 = 1 } ap_kv_type;

size_t ap_kv_type_size(ap_kv_type t); /* bytes per element */
const char *ap_kv_type_name(ap_kv_type t); /* "f32", "f16" */
/* 0 and *t set for "f32" / "f16"; -1 otherwise. */
int ap_kv_type_parse(const char *s, ap_kv_type *t);
/* n elements: store float32 into the cache type (round to nearest even;
 * the AVX2 path is F16C's conversion, equal to ap_fp32_to_fp16 except in a
 * NaN's payload), and load them back (exact). */
void ap_kv_store_row(void *dst, ap_kv_type t, const float *src, size_t n, ap_qisa isa);
void ap_kv_load_row(float *dst, const void *src, ap_kv_type t, size_t n, ap_qisa isa);

/* Decode attention over a K/V cache of type kt (k, v point at elements of
 * that type; ldk, ldv count elements): n_heads query heads sharing one K/V
 * head (a GQA group), head_dim hd, n_keys cached positions.
 * s[h*lds + j] = scale * (q[h*hd ..] · k[j*ldk ..]). */
void ap_kv_scores(const float *q, int n_heads, int hd, const void *k, ap_kv_type kt, size_t ldk,
                  int n_keys, float scale, float *s, size_t lds, ap_qisa isa);
/* o[h*hd + d] (+)= sum_j p[h*ldp + j] * v[j*ldv + d]. */
void ap_kv_mix(const float *p, size_t ldp, int n_heads, const void *v, ap_kv_type kt, size_t ldv,
               int n_keys, int hd, float *o, int accumulate, ap_qisa isa);
/* Plain loops in double (elements converted exactly). */
void ap_kv_scores_ref(const float *q, int n_heads, int hd, const void *k, ap_kv_type kt,
                      size_t ldk, int n_keys, float scale, float *s, size_t lds);
void ap_kv_mix_ref(const float *p, size_t ldp, int n_heads, const void *v, ap_kv_type kt,
                   size_t ldv, int n_keys, int hd, float *o, int accumulate);

#endif
