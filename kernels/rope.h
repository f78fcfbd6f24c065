/* Rotary position embedding, GGUF convention: within each head, adjacent
 * pairs (x[2i], x[2i+1]) rotate by angle pos * base^(-2i/head_dim),
 * i = 0..head_dim/2-1 (llama.cpp's "norm" rope; GGUF stores q/k rows permuted
 * so that this equals HF's rotate-half on the original weights).
 *
 * Angles are computed the way the transformers reference does, in float32:
 * inv_freq = 1 / base^(float(2i)/hd) rounded to float, angle = float(pos) *
 * inv_freq rounded to float; cos/sin of that float angle. Doing it in double
 * would be "more exact" but moves us away from the reference: at position 2000
 * the float32 angle of pair 0 is off by up to ~1e-4 rad, and on SmolLM2 with a
 * 2,100-token prompt double angles gave 9.2e-6 max attention error and 5.8e-6
 * logits rel L2 against transformers, float32 angles 1.4e-6 and 2.1e-6. */
#ifndef AP_ROPE_H
#define AP_ROPE_H

#include <stddef.h>

#include "common/status.h"
#include "kernels/cuda_util.h"

/* Which elements of a head form rotation pair i: NORM (x[2i], x[2i+1]; GGUF
 * llama files, whose q/k rows the converter permuted) or NEOX (x[i],
 * x[i + head_dim/2]; qwen2, qwen3 and gemma3 files, stored unpermuted, HF's
 * rotate-half as is). */
typedef enum { AP_ROPE_NORM = 0, AP_ROPE_NEOX = 1 } ap_rope_style;

/* The float32 angle of pair i at position pos. */
float ap_rope_angle(int pos, int i, int head_dim, float base);
/* With scaling: inv_freq / factors[i] (Llama 3's rope_freqs; NULL: none)
 * times freq_scale (linear scaling: 1 / factor; 1: none), rounded to float
 * at each step like the transformers reference. */
float ap_rope_angle_scaled(int pos, int i, int head_dim, float base, float freq_scale,
                           const float *factors);

/* cos/sin table for positions pos0..pos0+n_pos-1: row p (head_dim floats) at
 * cs + p*head_dim holds cos, sin of pair i at [2i], [2i+1]. */
void ap_rope_table(float *cs, int pos0, int n_pos, int head_dim, float base);
/* The same table from ap_rope_angle_scaled. */
void ap_rope_table_scaled(float *cs, int pos0, int n_pos, int head_dim, float base,
                          float freq_scale, const float *factors);

/* YaRN (rope.scaling.type yarn), as transformers' _compute_yarn_parameters
 * defines it and in its float32 steps: pair i's frequency blends the
 * extrapolated 1/base^(2i/hd) and the interpolated one divided by `factor`
 * along a linear ramp between the correction dimensions of beta_fast and
 * beta_slow rotations over orig_ctx tokens (floored/ceiled, clamped to
 * [0, head_dim - 1]): pairs below the ramp keep their frequency, pairs above
 * it are divided by `factor`. cos and sin are then multiplied by attn_factor
 * (transformers' attention_factor; 0.1 ln(factor) + 1 when the file gives
 * none, which the caller resolves). llama.cpp blends angles rather than
 * frequencies, the same up to rounding. */
typedef struct {
    float factor;      /* rope.scaling.factor (> 0) */
    int orig_ctx;      /* rope.scaling.original_context_length (> 0) */
    float beta_fast;   /* 32 unless the file says otherwise */
    float beta_slow;   /* 1 unless the file says otherwise */
    float attn_factor; /* multiplies cos and sin */
} ap_rope_yarn;

/* The YaRN frequency of pair i (float32, as the reference rounds it). */
float ap_rope_yarn_inv_freq(int i, int head_dim, float base, const ap_rope_yarn *y);
/* The table of ap_rope_table with YaRN frequencies and attn_factor. */
void ap_rope_table_yarn(float *cs, int pos0, int n_pos, int head_dim, float base,
                        const ap_rope_yarn *y);

/* Rotate n_heads heads of each of `rows` rows in place (row r at x + r*ldx,
 * head h at +h*head_dim); row r uses table row cs + r*head_dim. */
void ap_rope(float *x, size_t ldx, int rows, int n_heads, int head_dim, const float *cs);
/* Same rotation in double, from the same table. */
void ap_rope_ref(float *x, size_t ldx, int rows, int n_heads, int head_dim, const float *cs);
/* ap_rope / ap_rope_ref with the pairing of `style` (ap_rope is NORM). */
void ap_rope_styled(float *x, size_t ldx, int rows, int n_heads, int head_dim, const float *cs,
                    ap_rope_style style);
void ap_rope_styled_ref(float *x, size_t ldx, int rows, int n_heads, int head_dim,
                        const float *cs, ap_rope_style style);

/* CUDA, device pointers (d_cs: an ap_rope_table copied to the device), on
 * stream s: one thread per pair, the same float32 products and sums as
 * ap_rope with fused multiply-adds ruled out, so results equal the CPU's
 * bit for bit. AP_ERR_UNSUPPORTED without CUDA. */
ap_status ap_rope_cuda(float *d_x, size_t ldx, int rows, int n_heads, int head_dim,
                       const float *d_cs, ap_cuda_stream s, ap_err *err);

#endif
