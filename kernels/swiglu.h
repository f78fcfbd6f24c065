/* SwiGLU gate of the llama FFN: out = silu(gate) * up, silu(x) = x/(1+e^-x). */
#ifndef AP_SWIGLU_H
#define AP_SWIGLU_H

#include <stddef.h>

#include "common/status.h"
#include "kernels/cuda_util.h"

/* rows x n; row r of gate at gate + r*ldg, of up at up + r*ldu, of out at
 * out + r*ldo. out may alias gate or up. */
void ap_swiglu(float *out, size_t ldo, const float *gate, size_t ldg, const float *up, size_t ldu,
               int rows, int n);
void ap_swiglu_ref(float *out, size_t ldo, const float *gate, size_t ldg, const float *up,
                   size_t ldu, int rows, int n);
/* GeGLU of Gemma's FFN, same shapes and aliasing: out = gelu(gate) * up with
 * the tanh approximation gelu(x) = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715
 * x^3))) (transformers' gelu_pytorch_tanh). */
void ap_geglu_tanh(float *out, size_t ldo, const float *gate, size_t ldg, const float *up,
                   size_t ldu, int rows, int n);
void ap_geglu_tanh_ref(float *out, size_t ldo, const float *gate, size_t ldg, const float *up,
                       size_t ldu, int rows, int n);

/* CUDA, device pointers, on stream s; aliasing as above. The same
 * overflow-free form as ap_swiglu, with the device's expf (a couple of ulps)
 * in place of the CPU polynomial. AP_ERR_UNSUPPORTED without CUDA. */
ap_status ap_swiglu_cuda(float *d_out, size_t ldo, const float *d_gate, size_t ldg,
                         const float *d_up, size_t ldu, int rows, int n, ap_cuda_stream s,
                         ap_err *err);

#endif
