/* The AttentionPredictor CNN (method.md section 2.1): for a history x[N][H][W]
 * of pooled attention rows (H time steps, W candidate blocks) it predicts one
 * score per block y[N][W]:
 *   conv1 Conv2d(1->c1, 3x3, pad 1) + ReLU, conv2 Conv2d(c1->c2, 3x3, pad 1)
 *   + ReLU, mean over the H rows, conv3 Conv1d(c2->1, kernel 1).
 *
 * A predictor holds n_models such CNNs (1 = the published unified model, one
 * per layer, or one per layer group) and a layer -> model map. Parameters of
 * all models live in one contiguous float32 array, model after model, each in
 * PyTorch state_dict order (conv1.weight [c1,1,3,3], conv1.bias [c1],
 * conv2.weight [c2,c1,3,3], conv2.bias [c2], conv3.weight [1,c2,1],
 * conv3.bias [1]), so an optimizer runs over one flat array and the gradient
 * array has exactly the same layout.
 *
 * CPU path: im2col + cblas_sgemm, the batch split over n_threads pthreads
 * (default 2). Each worker calls BLAS itself, so run OpenBLAS with one thread
 * (OPENBLAS_NUM_THREADS=1 or openblas_set_num_threads(1) at startup, as
 * ap_ctx_create does); otherwise the BLAS pool oversubscribes the cores.
 *
 * Thread safety: a predictor may be used by several threads at once for
 * forward/backward as long as nobody writes its parameters meanwhile. */
#ifndef AP_PREDICTOR_H
#define AP_PREDICTOR_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define AP_PRED_MAX_LAYERS 256

typedef struct {
    int history;      /* H the model is trained/used with (default 64) */
    int block;        /* tokens per pooled block (default 16); metadata only */
    int sink_blocks;  /* leading blocks cut off before the CNN (default 4) */
    int local_blocks; /* trailing blocks cut off before the CNN (default 4) */
    int c1, c2;       /* channels of conv1 / conv2 (16, 32) */
    int n_models;     /* 1 = unified */
    /* 1: the query-fusion variant (train/fusion.h): each model carries one
     * more parameter, the weight of the z-scored query bound, stored after
     * conv3.bias ("query_weight"). The CNN itself is unchanged. 0 = the
     * paper's model. */
    int query_fusion;
    int n_layers;     /* 0 = unified: every layer uses model 0 (n_models must be 1) */
    int layer_map[AP_PRED_MAX_LAYERS]; /* layer -> model, for l < n_layers */
} ap_pred_config;

/* Offsets (in floats) of each state_dict tensor inside one model's slice. */
typedef struct {
    size_t w1, b1, w2, b2, w3, b3;
    size_t q;     /* query_weight (query_fusion only; else == total) */
    size_t total; /* parameters per model */
} ap_pred_layout;

/* Published defaults: H 64, block 16, sink 4, local 4, c1 16, c2 32, unified. */
void ap_pred_config_default(ap_pred_config *c);
/* One model per layer (layer_map = identity). */
void ap_pred_config_per_layer(ap_pred_config *c, int n_layers);
/* n_groups models over n_layers contiguous layer groups (layer l -> l*G/L). */
void ap_pred_config_groups(ap_pred_config *c, int n_layers, int n_groups);
/* The same over the layers with full[l] != 0 only (NULL: every layer): the
 * full-attention layers of a model with sliding-window ones, the only ones
 * selection and training use. n_groups is capped at their number (per-layer
 * = one model per full layer); the other layers map to a neighbour's model
 * and are never predicted. */
void ap_pred_config_groups_of(ap_pred_config *c, int n_layers, int n_groups,
                              const unsigned char *full);
ap_status ap_pred_config_validate(const ap_pred_config *c, ap_err *err);

void ap_pred_layout_of(const ap_pred_config *c, ap_pred_layout *lay);
/* Parameters of one model (4,833 for the defaults, 4,834 with query fusion). */
size_t ap_pred_param_count(const ap_pred_config *c);

/* JSON form of the config (keys: history, block, sink_blocks, local_blocks, c1,
 * c2, n_models, n_layers, layer_map, query_fusion (optional on input, 0)). _to_json returns a malloc'd string the
 * caller frees (NULL when out of memory). _from_json validates. */
char *ap_pred_config_to_json(const ap_pred_config *c);
ap_status ap_pred_config_from_json(const char *json, ap_pred_config *c, ap_err *err);
/* "[0,0,1,1]": the layer map alone (metadata field layer_map). Caller frees. */
char *ap_pred_layer_map_to_json(const ap_pred_config *c);

typedef struct ap_predictor ap_predictor;

/* PyTorch default init from splitmix64(seed): every weight and bias
 * ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)). */
ap_status ap_predictor_create(const ap_pred_config *c, uint64_t seed, ap_predictor **out,
                              ap_err *err);
void ap_predictor_free(ap_predictor *p); /* NULL is a no-op */

const ap_pred_config *ap_predictor_config(const ap_predictor *p);
/* All models' parameters, contiguous; *n = n_models * param_count. The array
 * is owned by p and writable (optimizer updates, loading). */
float *ap_predictor_params(ap_predictor *p, size_t *n);
const float *ap_predictor_params_const(const ap_predictor *p, size_t *n);
/* The model a layer uses (-1 if the layer is outside the map). */
int ap_predictor_model_of_layer(const ap_predictor *p, int layer);
/* Worker threads for forward/backward (>= 1; default 2). */
void ap_predictor_set_threads(ap_predictor *p, int n_threads);

/* Inference: x [N][H][W] -> y [N][W] with model m. Any H >= 1, W >= 1. */
ap_status ap_predictor_forward(const ap_predictor *p, int m, const float *x, int N, int H,
                               int W, float *y, ap_err *err);

/* Training. The workspace keeps what backward needs (the conv2 ReLU mask as
 * bytes and the pooled features), caller-owned, of at least
 * ap_pred_workspace_bytes() for the same N, H, W. backward takes the same x
 * and ws, and ADDS dL/dparams of model m into grad, an array with the layout
 * of ap_predictor_params (only model m's slice is touched). */
size_t ap_pred_workspace_bytes(const ap_pred_config *c, int N, int H, int W);
ap_status ap_predictor_forward_train(const ap_predictor *p, int m, const float *x, int N,
                                     int H, int W, float *y, void *ws, size_t ws_bytes,
                                     ap_err *err);
ap_status ap_predictor_backward(const ap_predictor *p, int m, const float *x, int N, int H,
                                int W, const float *dy, const void *ws, size_t ws_bytes,
                                float *grad, ap_err *err);

/* Float64 references (naive direct convolution), one model's parameters in
 * the layout above. backward_ref ADDS into grad (one model's slice). */
void ap_pred_forward_ref(const ap_pred_config *c, const double *params, const double *x, int N,
                         int H, int W, double *y);
void ap_pred_backward_ref(const ap_pred_config *c, const double *params, const double *x, int N,
                          int H, int W, const double *dy, double *grad);

#endif
