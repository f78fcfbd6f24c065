#include "helpers/tiny_trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t row_off(const ap_tiny_seq *s, int layer, int step, int head) {
    return (((size_t)layer * s->S + step) * s->shape.n_head + head) * s->NB;
}

int ap_tiny_pos(const ap_tiny_seq *s, int step) { return s->n_prompt - s->n_pre + step; }
int ap_tiny_step_of(const ap_tiny_seq *s, int t) { return s->n_pre + t; }

ap_status ap_tiny_seq_init(ap_tiny_seq *s, const ap_tiny_shape *shape, const char *id,
                           int n_prompt, int n_gen, int with_query, int with_colsum,
                           ap_err *err) {
    memset(s, 0, sizeof *s);
    s->shape = *shape;
    snprintf(s->id, sizeof s->id, "%s", id);
    s->n_prompt = n_prompt;
    s->n_gen = n_gen;
    s->n_pre = n_prompt < shape->history ? n_prompt : shape->history;
    s->S = s->n_pre + n_gen;
    const int T = n_prompt + n_gen;
    s->NB = (T + shape->block - 1) / shape->block;
    const size_t rows = (size_t)shape->n_layer * s->S * shape->n_head * s->NB;
    s->weight = calloc(rows, sizeof(double));
    s->block_max = calloc(rows, sizeof(float));
    s->block_sum = calloc(rows, sizeof(float));
    s->tokens = calloc((size_t)T, sizeof(int32_t));
    s->step_pos = calloc((size_t)s->S, sizeof(int32_t));
    int ok = s->weight && s->block_max && s->block_sum && s->tokens && s->step_pos;
    if (ok && with_query) {
        const int hd = shape->head_dim;
        s->query = calloc((size_t)shape->n_layer * s->S * shape->n_head * hd, sizeof(float));
        s->key_min = calloc((size_t)shape->n_layer * shape->n_head_kv * s->NB * hd, sizeof(float));
        s->key_max = calloc((size_t)shape->n_layer * shape->n_head_kv * s->NB * hd, sizeof(float));
        ok = s->query && s->key_min && s->key_max;
    }
    if (ok && with_colsum) {
        size_t n = (size_t)shape->n_layer * shape->n_head * n_prompt;
        s->colsum = malloc(n * sizeof(float));
        ok = s->colsum != NULL;
        for (size_t i = 0; ok && i < n; i++) s->colsum[i] = 1.0f;
    }
    if (!ok) {
        ap_tiny_seq_free(s);
        return ap_errf(err, AP_ERR_NOMEM, "tiny trace: out of memory");
    }
    for (int i = 0; i < T; i++) s->tokens[i] = i % 100;
    for (int st = 0; st < s->S; st++) s->step_pos[st] = ap_tiny_pos(s, st);
    for (int l = 0; l < shape->n_layer; l++)
        for (int st = 0; st < s->S; st++)
            for (int h = 0; h < shape->n_head; h++) {
                int nvalid = s->step_pos[st] / shape->block + 1;
                double *w = s->weight + row_off(s, l, st, h);
                for (int j = 0; j < nvalid && j < s->NB; j++) w[j] = 1.0;
            }
    return AP_OK;
}

void ap_tiny_seq_free(ap_tiny_seq *s) {
    free(s->weight);
    free(s->block_max);
    free(s->block_sum);
    free(s->query);
    free(s->key_min);
    free(s->key_max);
    free(s->colsum);
    free(s->tokens);
    free(s->step_pos);
    memset(s, 0, sizeof *s);
}

double *ap_tiny_w(ap_tiny_seq *s, int layer, int step, int head, int j) {
    return s->weight + row_off(s, layer, step, head) + j;
}

void ap_tiny_add(ap_tiny_seq *s, int layer, int step, int head, int j, double w) {
    if (j > s->step_pos[step] / s->shape.block) return;
    *ap_tiny_w(s, layer, step, head, j) += w;
}

void ap_tiny_finish(ap_tiny_seq *s) {
    for (int l = 0; l < s->shape.n_layer; l++)
        for (int st = 0; st < s->S; st++)
            for (int h = 0; h < s->shape.n_head; h++) {
                size_t off = row_off(s, l, st, h);
                double tot = 0.0;
                for (int j = 0; j < s->NB; j++) tot += s->weight[off + j];
                for (int j = 0; j < s->NB; j++) {
                    float v = tot > 0 ? (float)(s->weight[off + j] / tot) : 0.0f;
                    s->block_sum[off + j] = v;
                    s->block_max[off + j] = v;
                }
            }
}

const float *ap_tiny_sum_row(const ap_tiny_seq *s, int layer, int step, int head) {
    return s->block_sum + row_off(s, layer, step, head);
}

ap_status ap_tiny_write(const char *path, const ap_tiny_seq *seqs, int n, ap_err *err) {
    return ap_tiny_write_windows(path, seqs, n, "tiny", NULL, err);
}

ap_status ap_tiny_write_windows(const char *path, const ap_tiny_seq *seqs, int n, const char *arch,
                                const int *layer_window, ap_err *err) {
    ap_trace_writer *w = NULL;
    ap_trace_meta meta;
    memset(&meta, 0, sizeof meta);
    const ap_tiny_shape *sh = &seqs[0].shape;
    meta.n_layer = sh->n_layer;
    meta.n_head = sh->n_head;
    meta.n_head_kv = sh->n_head_kv;
    meta.head_dim = sh->head_dim;
    meta.block_size = sh->block;
    meta.history = sh->history;
    snprintf(meta.model_name, sizeof meta.model_name, "tiny");
    snprintf(meta.model_sha256, sizeof meta.model_sha256, "%064d", 0);
    snprintf(meta.attnpred_version, sizeof meta.attnpred_version, "test");
    snprintf(meta.arch, sizeof meta.arch, "%s", arch ? arch : "");
    for (int l = 0; layer_window && l < sh->n_layer && l < AP_TRACE_MAX_LAYERS; l++)
        meta.layer_window[l] = layer_window[l];
    ap_status st = ap_trace_writer_open(path, &meta, AP_TRACE_FORCE, &w, err);
    for (int i = 0; st == AP_OK && i < n; i++) {
        const ap_tiny_seq *s = &seqs[i];
        ap_trace_seq seq = {.id = s->id, .task = "tiny", .n_prompt = s->n_prompt,
                            .n_gen = s->n_gen, .tokens = s->tokens, .n_steps = s->S,
                            .step_pos = s->step_pos, .n_blocks = s->NB,
                            .block_max = s->block_max, .block_sum = s->block_sum,
                            .query = s->query, .key_min = s->key_min, .key_max = s->key_max,
                            .prefill_colsum = s->colsum};
        st = ap_trace_writer_add(w, &seq, err);
    }
    if (st == AP_OK) st = ap_trace_writer_close(w, 1, err);
    ap_trace_writer_free(w);
    return st;
}
