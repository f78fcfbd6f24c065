/* SwiGLU gate of the llama FFN: out = silu(gate) * up, silu(x) = x/(1+e^-x). */
#ifndef AP_SWIGLU_H
#define AP_SWIGLU_H

#include <stddef.h>

/* rows x n; row r of gate at gate + r*ldg, of up at up + r*ldu, of out at
 * out + r*ldo. out may alias gate or up. */
void ap_swiglu(float *out, size_t ldo, const float *gate, size_t ldg, const float *up, size_t ldu,
               int rows, int n);
void ap_swiglu_ref(float *out, size_t ldo, const float *gate, size_t ldg, const float *up,
                   size_t ldu, int rows, int n);

#endif
