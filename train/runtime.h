/* The embeddable predictor runtime: load an exported predictor
 * (`attnpred export` or scripts/import_pth.py) and predict next-step block
 * scores from a history of pooled attention rows. The trainer, the evaluator
 * and outside programs use this same code path (ap_predictor_forward).
 *
 * Export format: safetensors with the PyTorch state_dict names and shapes
 * (conv1.weight [c1,1,3,3], conv1.bias [c1], conv2.weight [c2,c1,3,3],
 * conv2.bias [c2], conv3.weight [1,c2,1], conv3.bias [1]); with more than one
 * model each name is prefixed "layers.M." (M = model index; with one model
 * per layer M is the layer). Metadata: format "attnpred-predictor", version,
 * history, block, sink_blocks, local_blocks, c1, c2, n_models, n_layers,
 * layer_map (a JSON array string), param_count. The query-fusion variant
 * (train/fusion.h) adds a tensor "query_weight" [1] per model and the
 * metadata query_fusion = 1; its scores need ap_runtime_fuse_query. */
#ifndef AP_RUNTIME_H
#define AP_RUNTIME_H

#include "common/status.h"
#include "train/predictor.h"

#define AP_EXPORT_FORMAT "attnpred-predictor"
#define AP_EXPORT_VERSION 1

typedef struct ap_runtime ap_runtime;

/* Reads and validates every tensor name, dtype (F32) and shape against the
 * metadata; unknown or missing tensors are errors naming the file. */
ap_status ap_runtime_load(const char *path, ap_runtime **out, ap_err *err);
void ap_runtime_free(ap_runtime *rt); /* NULL is a no-op */

const ap_pred_config *ap_runtime_config(const ap_runtime *rt);
/* The predictor inside (owned by rt), e.g. to set threads. */
ap_predictor *ap_runtime_predictor(ap_runtime *rt);

/* One head: hist [H][W] (oldest row first) -> scores [W] with the model of
 * `layer` (any layer >= 0 for a unified predictor). */
ap_status ap_runtime_predict(const ap_runtime *rt, int layer, const float *hist, int H, int W,
                             float *scores, ap_err *err);
/* Many heads of one layer: hist [N][H][W] -> scores [N][W]. */
ap_status ap_runtime_predict_batch(const ap_runtime *rt, int layer, const float *hist, int N,
                                   int H, int W, float *scores, ap_err *err);

/* The query-fusion weight of layer's model; 0 for the paper's predictor. */
float ap_runtime_query_weight(const ap_runtime *rt, int layer);
/* For a query-fusion predictor: turns the CNN's scores [W] of one head into
 * the fused ones, z(scores) + w * z(bound), in place, with the step's query
 * q [hd] and the candidates' key bounds kmin/kmax [W][hd] (Quest's page
 * bounds of the query head's KV head). A no-op for the paper's predictor. */
ap_status ap_runtime_fuse_query(const ap_runtime *rt, int layer, const float *q, const float *kmin,
                                const float *kmax, int hd, int W, float *scores, ap_err *err);
/* The same with the bound already computed (ap_query_bound_heads, one pass
 * for a KV head's query heads): bound [W] is read, scores [W] fused in
 * place. */
ap_status ap_runtime_fuse_bound(const ap_runtime *rt, int layer, const float *bound, int W,
                                float *scores, ap_err *err);

/* Write the export: st_path (safetensors, atomic) and, when json_path is not
 * NULL, a JSON config beside it (same fields as the metadata, atomic). params
 * covers all models (layout of ap_predictor_params). */
ap_status ap_pred_export(const char *st_path, const char *json_path, const ap_pred_config *c,
                         const float *params, ap_err *err);

#endif
