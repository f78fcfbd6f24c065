// cuDNN predictor: the CPU path of predictor.c on the GPU through the legacy
// cuDNN convolution API. Layout NCHW with C = channels, H = history rows,
// W = blocks, so the PyTorch weights [out][in][kh][kw] are used unchanged.
#ifdef AP_HAVE_CUDNN

#include <cuda_runtime.h>
#include <cudnn.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "common/status.h"
#include "train/predictor.h"
}
#include "train/predictor_cuda.h"

struct ap_pred_cuda {
    ap_pred_config cfg;
    ap_pred_layout lay;
    cudnnHandle_t h;
    cudnnTensorDescriptor_t tx, ta1, ta2, tp, ty, tb1, tb2, tb3;
    cudnnFilterDescriptor_t fw1, fw2, fw3;
    cudnnConvolutionDescriptor_t conv3, conv1;
    cudnnActivationDescriptor_t relu;
    float *d_params, *d_grad, *h_grad;
    size_t n_params;
    /* Activations of the last forward; capacity in N*H*W and N*W elements. */
    float *d_x, *d_a1, *d_a2, *d_da1, *d_p, *d_y, *d_dy, *d_dp;
    size_t cap_nhw, cap_nw;
    void *d_ws;
    size_t ws_bytes;
    int N, H, W, m, have_fwd;
};

#define TRY(expr)                                                                        \
    do {                                                                                 \
        ap_status st_ = (expr);                                                          \
        if (st_ != AP_OK) return st_;                                                    \
    } while (0)

static ap_status dnn(cudnnStatus_t s, const char *what, ap_err *err) {
    if (s == CUDNN_STATUS_SUCCESS) return AP_OK;
    return ap_errf(err, AP_ERR_INTERNAL, "cuDNN %s failed: %s", what, cudnnGetErrorString(s));
}

static ap_status cu(cudaError_t e, const char *what, ap_err *err) {
    if (e == cudaSuccess) return AP_OK;
    return ap_errf(err, AP_ERR_INTERNAL, "CUDA %s failed: %s", what, cudaGetErrorString(e));
}

// Forward IMPLICIT_PRECOMP_GEMM and backward ALGO_1 are the deterministic
// algorithms (backward ALGO_0 accumulates with atomics).
static const cudnnConvolutionFwdAlgo_t k_fwd = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
static const cudnnConvolutionBwdFilterAlgo_t k_bwf = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
static const cudnnConvolutionBwdDataAlgo_t k_bwd = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;

extern "C" int ap_pred_cuda_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        cudaGetLastError(); /* clear the sticky "no driver" error */
        return 0;
    }
    cudnnHandle_t h;
    if (cudnnCreate(&h) != CUDNN_STATUS_SUCCESS) return 0;
    cudnnDestroy(h);
    return 1;
}

extern "C" void ap_pred_cuda_free(ap_pred_cuda *g) {
    if (!g) return;
    cudaFree(g->d_params);
    cudaFree(g->d_grad);
    cudaFree(g->d_x);
    cudaFree(g->d_a1);
    cudaFree(g->d_a2);
    cudaFree(g->d_da1);
    cudaFree(g->d_p);
    cudaFree(g->d_y);
    cudaFree(g->d_dy);
    cudaFree(g->d_dp);
    cudaFree(g->d_ws);
    free(g->h_grad);
    cudnnTensorDescriptor_t *ts[] = {&g->tx, &g->ta1, &g->ta2, &g->tp,
                                     &g->ty, &g->tb1, &g->tb2, &g->tb3};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        if (*ts[i]) cudnnDestroyTensorDescriptor(*ts[i]);
    if (g->fw1) cudnnDestroyFilterDescriptor(g->fw1);
    if (g->fw2) cudnnDestroyFilterDescriptor(g->fw2);
    if (g->fw3) cudnnDestroyFilterDescriptor(g->fw3);
    if (g->conv3) cudnnDestroyConvolutionDescriptor(g->conv3);
    if (g->conv1) cudnnDestroyConvolutionDescriptor(g->conv1);
    if (g->relu) cudnnDestroyActivationDescriptor(g->relu);
    if (g->h) cudnnDestroy(g->h);
    free(g);
}

static ap_status setup(ap_pred_cuda *g, ap_err *err) {
    const ap_pred_config *c = &g->cfg;
    TRY(dnn(cudnnCreate(&g->h), "create", err));
    cudnnTensorDescriptor_t *ts[] = {&g->tx, &g->ta1, &g->ta2, &g->tp,
                                     &g->ty, &g->tb1, &g->tb2, &g->tb3};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        TRY(dnn(cudnnCreateTensorDescriptor(ts[i]), "tensor descriptor", err));
    TRY(dnn(cudnnCreateFilterDescriptor(&g->fw1), "filter descriptor", err));
    TRY(dnn(cudnnCreateFilterDescriptor(&g->fw2), "filter descriptor", err));
    TRY(dnn(cudnnCreateFilterDescriptor(&g->fw3), "filter descriptor", err));
    TRY(dnn(cudnnSetFilter4dDescriptor(g->fw1, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, c->c1, 1, 3, 3),
            "filter conv1", err));
    TRY(dnn(cudnnSetFilter4dDescriptor(g->fw2, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, c->c2, c->c1, 3,
                                       3),
            "filter conv2", err));
    TRY(dnn(cudnnSetFilter4dDescriptor(g->fw3, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 1, c->c2, 1, 1),
            "filter conv3", err));
    TRY(dnn(cudnnSetTensor4dDescriptor(g->tb1, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, c->c1, 1, 1),
            "bias1", err));
    TRY(dnn(cudnnSetTensor4dDescriptor(g->tb2, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, c->c2, 1, 1),
            "bias2", err));
    TRY(dnn(cudnnSetTensor4dDescriptor(g->tb3, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, 1, 1, 1),
            "bias3", err));
    TRY(dnn(cudnnCreateConvolutionDescriptor(&g->conv3), "conv descriptor", err));
    TRY(dnn(cudnnCreateConvolutionDescriptor(&g->conv1), "conv descriptor", err));
    TRY(dnn(cudnnSetConvolution2dDescriptor(g->conv3, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION,
                                            CUDNN_DATA_FLOAT),
            "conv 3x3", err));
    TRY(dnn(cudnnSetConvolution2dDescriptor(g->conv1, 0, 0, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION,
                                            CUDNN_DATA_FLOAT),
            "conv 1x1", err));
    /* FMA math: no TF32 on sm_90, so the GPU stays within 1e-4 of the CPU. */
    TRY(dnn(cudnnSetConvolutionMathType(g->conv3, CUDNN_FMA_MATH), "math type", err));
    TRY(dnn(cudnnSetConvolutionMathType(g->conv1, CUDNN_FMA_MATH), "math type", err));
    TRY(dnn(cudnnCreateActivationDescriptor(&g->relu), "activation descriptor", err));
    TRY(dnn(cudnnSetActivationDescriptor(g->relu, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0),
            "relu", err));
    g->n_params = g->lay.total * (size_t)c->n_models;
    TRY(cu(cudaMalloc(&g->d_params, sizeof(float) * g->n_params), "malloc params", err));
    TRY(cu(cudaMalloc(&g->d_grad, sizeof(float) * g->lay.total), "malloc grad", err));
    g->h_grad = (float *)malloc(sizeof(float) * g->lay.total);
    if (!g->h_grad) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    return AP_OK;
}

extern "C" ap_status ap_pred_cuda_create(const ap_pred_config *c, ap_pred_cuda **out,
                                         ap_err *err) {
    *out = NULL;
    TRY(ap_pred_config_validate(c, err));
    if (!ap_pred_cuda_available())
        return ap_errf(err, AP_ERR_UNSUPPORTED, "no usable CUDA GPU / cuDNN on this machine");
    ap_pred_cuda *g = (ap_pred_cuda *)calloc(1, sizeof *g);
    if (!g) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    g->cfg = *c;
    ap_pred_layout_of(c, &g->lay);
    ap_status st = setup(g, err);
    if (st != AP_OK) {
        ap_pred_cuda_free(g);
        return st;
    }
    *out = g;
    return AP_OK;
}

extern "C" ap_status ap_pred_cuda_upload_params(ap_pred_cuda *g, const float *params, size_t n,
                                                ap_err *err) {
    if (n != g->n_params)
        return ap_errf(err, AP_ERR_ARG, "cuDNN predictor: %zu parameters, expected %zu", n,
                       g->n_params);
    return cu(cudaMemcpy(g->d_params, params, sizeof(float) * n, cudaMemcpyHostToDevice),
              "upload params", err);
}

static ap_status grow(float **p, size_t n, ap_err *err) {
    cudaFree(*p);
    *p = NULL;
    return cu(cudaMalloc((void **)p, sizeof(float) * (n ? n : 1)), "malloc activations", err);
}

static ap_status ensure_buffers(ap_pred_cuda *g, int N, int H, int W, ap_err *err) {
    const ap_pred_config *c = &g->cfg;
    size_t nhw = (size_t)N * H * W, nw = (size_t)N * W;
    if (nhw > g->cap_nhw) {
        TRY(grow(&g->d_x, nhw, err));
        TRY(grow(&g->d_a1, nhw * c->c1, err));
        TRY(grow(&g->d_a2, nhw * c->c2, err));
        TRY(grow(&g->d_da1, nhw * c->c1, err));
        g->cap_nhw = nhw;
    }
    if (nw > g->cap_nw) {
        TRY(grow(&g->d_p, nw * c->c2, err));
        TRY(grow(&g->d_dp, nw * c->c2, err));
        TRY(grow(&g->d_y, nw, err));
        TRY(grow(&g->d_dy, nw, err));
        g->cap_nw = nw;
    }
    TRY(dnn(cudnnSetTensor4dDescriptor(g->tx, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, 1, H, W), "x",
            err));
    TRY(dnn(cudnnSetTensor4dDescriptor(g->ta1, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, c->c1, H, W),
            "a1", err));
    TRY(dnn(cudnnSetTensor4dDescriptor(g->ta2, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, c->c2, H, W),
            "a2", err));
    TRY(dnn(cudnnSetTensor4dDescriptor(g->tp, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, c->c2, 1, W),
            "pooled", err));
    TRY(dnn(cudnnSetTensor4dDescriptor(g->ty, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, 1, 1, W), "y",
            err));
    size_t need = 0, s = 0;
    TRY(dnn(cudnnGetConvolutionForwardWorkspaceSize(g->h, g->tx, g->fw1, g->conv3, g->ta1, k_fwd, &s),
            "workspace", err));
    need = s > need ? s : need;
    TRY(dnn(cudnnGetConvolutionForwardWorkspaceSize(g->h, g->ta1, g->fw2, g->conv3, g->ta2, k_fwd,
                                                    &s),
            "workspace", err));
    need = s > need ? s : need;
    TRY(dnn(cudnnGetConvolutionForwardWorkspaceSize(g->h, g->tp, g->fw3, g->conv1, g->ty, k_fwd, &s),
            "workspace", err));
    need = s > need ? s : need;
    TRY(dnn(cudnnGetConvolutionBackwardFilterWorkspaceSize(g->h, g->tx, g->ta1, g->conv3, g->fw1,
                                                           k_bwf, &s),
            "workspace", err));
    need = s > need ? s : need;
    TRY(dnn(cudnnGetConvolutionBackwardFilterWorkspaceSize(g->h, g->ta1, g->ta2, g->conv3, g->fw2,
                                                           k_bwf, &s),
            "workspace", err));
    need = s > need ? s : need;
    TRY(dnn(cudnnGetConvolutionBackwardFilterWorkspaceSize(g->h, g->tp, g->ty, g->conv1, g->fw3,
                                                           k_bwf, &s),
            "workspace", err));
    need = s > need ? s : need;
    TRY(dnn(cudnnGetConvolutionBackwardDataWorkspaceSize(g->h, g->fw2, g->ta2, g->conv3, g->ta1,
                                                         k_bwd, &s),
            "workspace", err));
    need = s > need ? s : need;
    TRY(dnn(cudnnGetConvolutionBackwardDataWorkspaceSize(g->h, g->fw3, g->ty, g->conv1, g->tp, k_bwd,
                                                         &s),
            "workspace", err));
    need = s > need ? s : need;
    if (need > g->ws_bytes) {
        cudaFree(g->d_ws);
        g->d_ws = NULL;
        g->ws_bytes = 0;
        TRY(cu(cudaMalloc(&g->d_ws, need), "malloc workspace", err));
        g->ws_bytes = need;
    }
    return AP_OK;
}

/* p[n][c][w] = mean over h of a[n][c][h][w]; fixed summation order. */
__global__ static void mean_time_kernel(const float *a, int NC, int H, int W, float *p) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)NC * W) return;
    long nc = i / W;
    int w = (int)(i % W);
    const float *r = a + nc * (long)H * W + w;
    float s = 0.0f;
    for (int h = 0; h < H; h++) s += r[(long)h * W];
    p[i] = s / (float)H;
}

/* Backward of ReLU + mean: da[n][c][h][w] = a > 0 ? dp[n][c][w] / H : 0
 * (written over the stored activation a, which backward no longer needs
 * afterwards for this layer). */
__global__ static void mean_time_backward_kernel(float *a, const float *dp, int NC, int H, int W) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long n = (long)NC * H * W;
    if (i >= n) return;
    int w = (int)(i % W);
    long nc = i / ((long)H * W);
    a[i] = a[i] > 0.0f ? dp[nc * W + w] / (float)H : 0.0f;
}

/* d[i] = a[i] > 0 ? d[i] : 0 (ReLU backward from the stored output). */
__global__ static void relu_mask_kernel(float *d, const float *a, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && !(a[i] > 0.0f)) d[i] = 0.0f;
}

static unsigned blocks_for(long n) { return (unsigned)((n + 255) / 256); }

extern "C" ap_status ap_pred_cuda_forward(ap_pred_cuda *g, int m, const float *x, int N, int H,
                                          int W, float *y, ap_err *err) {
    const ap_pred_config *c = &g->cfg;
    const ap_pred_layout *L = &g->lay;
    if (m < 0 || m >= c->n_models || N < 1 || H < 1 || W < 1)
        return ap_errf(err, AP_ERR_ARG, "cuDNN predictor: bad call m=%d N=%d H=%d W=%d", m, N, H, W);
    g->have_fwd = 0;
    TRY(ensure_buffers(g, N, H, W, err));
    size_t nhw = (size_t)N * H * W;
    const float one = 1.0f, zero = 0.0f;
    const float *w = g->d_params + (size_t)m * L->total;
    TRY(cu(cudaMemcpy(g->d_x, x, sizeof(float) * nhw, cudaMemcpyHostToDevice), "upload x", err));
    TRY(dnn(cudnnConvolutionForward(g->h, &one, g->tx, g->d_x, g->fw1, w + L->w1, g->conv3, k_fwd,
                                    g->d_ws, g->ws_bytes, &zero, g->ta1, g->d_a1),
            "conv1 forward", err));
    TRY(dnn(cudnnAddTensor(g->h, &one, g->tb1, w + L->b1, &one, g->ta1, g->d_a1), "conv1 bias", err));
    TRY(dnn(cudnnActivationForward(g->h, g->relu, &one, g->ta1, g->d_a1, &zero, g->ta1, g->d_a1),
            "relu1", err));
    TRY(dnn(cudnnConvolutionForward(g->h, &one, g->ta1, g->d_a1, g->fw2, w + L->w2, g->conv3, k_fwd,
                                    g->d_ws, g->ws_bytes, &zero, g->ta2, g->d_a2),
            "conv2 forward", err));
    TRY(dnn(cudnnAddTensor(g->h, &one, g->tb2, w + L->b2, &one, g->ta2, g->d_a2), "conv2 bias", err));
    TRY(dnn(cudnnActivationForward(g->h, g->relu, &one, g->ta2, g->d_a2, &zero, g->ta2, g->d_a2),
            "relu2", err));
    long ncw = (long)N * c->c2 * W;
    mean_time_kernel<<<blocks_for(ncw), 256>>>(g->d_a2, N * c->c2, H, W, g->d_p);
    TRY(cu(cudaGetLastError(), "mean kernel", err));
    TRY(dnn(cudnnConvolutionForward(g->h, &one, g->tp, g->d_p, g->fw3, w + L->w3, g->conv1, k_fwd,
                                    g->d_ws, g->ws_bytes, &zero, g->ty, g->d_y),
            "conv3 forward", err));
    TRY(dnn(cudnnAddTensor(g->h, &one, g->tb3, w + L->b3, &one, g->ty, g->d_y), "conv3 bias", err));
    TRY(cu(cudaMemcpy(y, g->d_y, sizeof(float) * (size_t)N * W, cudaMemcpyDeviceToHost),
           "download y", err));
    g->N = N;
    g->H = H;
    g->W = W;
    g->m = m;
    g->have_fwd = 1;
    return AP_OK;
}

extern "C" ap_status ap_pred_cuda_backward(ap_pred_cuda *g, const float *dy, float *grad,
                                           ap_err *err) {
    const ap_pred_config *c = &g->cfg;
    const ap_pred_layout *L = &g->lay;
    if (!g->have_fwd)
        return ap_errf(err, AP_ERR_ARG, "cuDNN predictor: backward without a forward");
    /* Backward overwrites the stored activations: one backward per forward. */
    g->have_fwd = 0;
    int N = g->N, H = g->H, W = g->W;
    const float one = 1.0f, zero = 0.0f;
    const float *w = g->d_params + (size_t)g->m * L->total;
    float *gw = g->d_grad;
    TRY(cu(cudaMemcpy(g->d_dy, dy, sizeof(float) * (size_t)N * W, cudaMemcpyHostToDevice),
           "upload dy", err));
    TRY(dnn(cudnnConvolutionBackwardBias(g->h, &one, g->ty, g->d_dy, &zero, g->tb3, gw + L->b3),
            "conv3 bias grad", err));
    TRY(dnn(cudnnConvolutionBackwardFilter(g->h, &one, g->tp, g->d_p, g->ty, g->d_dy, g->conv1, k_bwf,
                                           g->d_ws, g->ws_bytes, &zero, g->fw3, gw + L->w3),
            "conv3 filter grad", err));
    TRY(dnn(cudnnConvolutionBackwardData(g->h, &one, g->fw3, w + L->w3, g->ty, g->d_dy, g->conv1,
                                         k_bwd, g->d_ws, g->ws_bytes, &zero, g->tp, g->d_dp),
            "conv3 data grad", err));
    long n2 = (long)N * c->c2 * H * W;
    mean_time_backward_kernel<<<blocks_for(n2), 256>>>(g->d_a2, g->d_dp, N * c->c2, H, W);
    TRY(cu(cudaGetLastError(), "mean backward kernel", err));
    float *da2 = g->d_a2;
    TRY(dnn(cudnnConvolutionBackwardBias(g->h, &one, g->ta2, da2, &zero, g->tb2, gw + L->b2),
            "conv2 bias grad", err));
    TRY(dnn(cudnnConvolutionBackwardFilter(g->h, &one, g->ta1, g->d_a1, g->ta2, da2, g->conv3, k_bwf,
                                           g->d_ws, g->ws_bytes, &zero, g->fw2, gw + L->w2),
            "conv2 filter grad", err));
    /* conv2's data gradient has its own buffer: a1 is still needed for the
     * ReLU mask and the conv1 filter gradient reads it afterwards. */
    float *da1 = g->d_da1;
    long n1 = (long)N * c->c1 * H * W;
    TRY(dnn(cudnnConvolutionBackwardData(g->h, &one, g->fw2, w + L->w2, g->ta2, da2, g->conv3, k_bwd,
                                         g->d_ws, g->ws_bytes, &zero, g->ta1, da1),
            "conv2 data grad", err));
    relu_mask_kernel<<<blocks_for(n1), 256>>>(da1, g->d_a1, n1);
    TRY(cu(cudaGetLastError(), "relu mask kernel", err));
    TRY(dnn(cudnnConvolutionBackwardBias(g->h, &one, g->ta1, da1, &zero, g->tb1, gw + L->b1),
            "conv1 bias grad", err));
    TRY(dnn(cudnnConvolutionBackwardFilter(g->h, &one, g->tx, g->d_x, g->ta1, da1, g->conv3, k_bwf,
                                           g->d_ws, g->ws_bytes, &zero, g->fw1, gw + L->w1),
            "conv1 filter grad", err));
    /* Only the CNN's gradient comes from the device: a query-fusion weight
     * after conv3.bias gets its gradient on the host (train/fusion.h). */
    TRY(cu(cudaMemcpy(g->h_grad, gw, sizeof(float) * L->q, cudaMemcpyDeviceToHost),
           "download grad", err));
    float *dst = grad + (size_t)g->m * L->total;
    for (size_t i = 0; i < L->q; i++) dst[i] += g->h_grad[i];
    return AP_OK;
}

#endif
