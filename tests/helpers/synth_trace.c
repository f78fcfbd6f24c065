#include "helpers/synth_trace.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/trace.h"
#include "kernels/block_pool.h"

void ap_synth_trace_opts_default(ap_synth_trace_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_seq = 6;
    o->n_layer = 2;
    o->n_head = 3;
    o->history = 16;
    o->block = 16;
    o->n_gen = 40;
    o->min_prompt = 300;
    o->max_prompt = 600;
    o->seed = 1;
}

static double rnd(uint64_t *s) {
    uint64_t x = (*s += 0x9E3779B97F4A7C15ull);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return (double)((x ^ (x >> 31)) >> 11) / 9007199254740992.0;
}

ap_status ap_synth_trace_write(const char *path, const ap_synth_trace_opts *o, ap_err *err) {
    ap_status st = AP_OK;
    ap_trace_writer *w = NULL;
    float *bmax = NULL, *bsum = NULL, *row = NULL, *qv = NULL, *kmin = NULL, *kmax = NULL;
    int32_t *tokens = NULL, *pos = NULL;
    ap_trace_meta meta;
    memset(&meta, 0, sizeof meta);
    meta.n_layer = o->n_layer;
    meta.n_head = o->n_head;
    meta.n_head_kv = o->n_head;
    meta.head_dim = 8;
    meta.block_size = o->block;
    meta.history = o->history;
    snprintf(meta.model_name, sizeof meta.model_name, "synthetic");
    snprintf(meta.model_sha256, sizeof meta.model_sha256, "%064d", 0);
    snprintf(meta.attnpred_version, sizeof meta.attnpred_version, "test");
    snprintf(meta.arch, sizeof meta.arch, "%s", o->arch ? o->arch : "synthetic");
    for (int l = 0; o->layer_window && l < o->n_layer && l < AP_TRACE_MAX_LAYERS; l++)
        meta.layer_window[l] = o->layer_window[l];
    st = ap_trace_writer_open(path, &meta, AP_TRACE_FORCE, &w, err);
    if (st) goto cleanup;
    uint64_t rs = o->seed;
    for (int q = 0; q < o->n_seq; q++) {
        int n_prompt = o->min_prompt +
                       (o->n_seq > 1 ? (o->max_prompt - o->min_prompt) * q / (o->n_seq - 1) : 0);
        int T = n_prompt + o->n_gen, hist = o->history < n_prompt ? o->history : n_prompt;
        int S = hist + o->n_gen, NB = (T + o->block - 1) / o->block;
        size_t nv = (size_t)o->n_layer * S * o->n_head * NB;
        free(bmax);
        free(bsum);
        free(row);
        free(tokens);
        free(pos);
        bmax = calloc(nv, sizeof(float));
        bsum = calloc(nv, sizeof(float));
        const int hd = meta.head_dim;
        free(qv);
        free(kmin);
        free(kmax);
        qv = kmin = kmax = NULL;
        if (o->with_query) {
            qv = calloc((size_t)o->n_layer * S * o->n_head * hd, sizeof(float));
            kmin = calloc((size_t)o->n_layer * o->n_head * NB * hd, sizeof(float));
            kmax = calloc((size_t)o->n_layer * o->n_head * NB * hd, sizeof(float));
            if (!qv || !kmin || !kmax) {
                st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
                goto cleanup;
            }
            /* Block j's keys span [0, v_j] with v_j a fixed random vector;
             * the query of a step is v of the block its hot token is in, so
             * the bound sum_d max(0, q_d v_jd) is largest there. */
            for (size_t i = 0; i < (size_t)o->n_layer * o->n_head * NB * hd; i++) {
                float v = (float)(2.0 * rnd(&rs) - 1.0);
                kmin[i] = v < 0 ? v : 0.0f;
                kmax[i] = v > 0 ? v : 0.0f;
            }
        }
        row = calloc((size_t)T, sizeof(float));
        tokens = calloc((size_t)T, sizeof(int32_t));
        pos = calloc((size_t)S, sizeof(int32_t));
        if (!bmax || !bsum || !row || !tokens || !pos) {
            st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        for (int s = 0; s < S; s++) pos[s] = T - S + s;
        for (int l = 0; l < o->n_layer; l++)
            for (int h = 0; h < o->n_head; h++) {
                int fixed = 6 + (h * 7 + l * 3 + q) % 10;     /* re-accessed block */
                int period = 3 + (h + l) % 4;                 /* steps per block move */
                for (int s = 0; s < S; s++) {
                    int len = pos[s] + 1;
                    double tot = 0.0;
                    for (int k = 0; k < len; k++) row[k] = (float)(0.02 * rnd(&rs));
                    for (int k = 0; k < 4 && k < len; k++) row[k] += 2.0f;
                    for (int k = len - 8; k < len; k++) if (k >= 0) row[k] += 1.0f;
                    int fb = fixed * o->block + (h % o->block);
                    if (fb < len) row[fb] += 1.5f;
                    int mv = (8 + s / period) * o->block + 3;  /* moving hot token */
                    if (mv < len - 64) row[mv] += 2.5f;
                    if (qv) {
                        int bq = mv / o->block < NB ? mv / o->block : NB - 1;
                        size_t at = (((size_t)l * o->n_head + h) * NB + bq) * hd;
                        float *qq = qv + (((size_t)l * S + s) * o->n_head + h) * hd;
                        for (int e = 0; e < hd; e++) qq[e] = kmin[at + e] + kmax[at + e];
                    }
                    for (int k = 0; k < len; k++) tot += row[k];
                    for (int k = 0; k < len; k++) row[k] = (float)(row[k] / tot);
                    size_t off = (((size_t)l * S + s) * o->n_head + h) * NB;
                    ap_block_pool(row, len, o->block, NB, bmax + off, bsum + off);
                }
            }
        char id[32];
        snprintf(id, sizeof id, "syn%02d", q);
        ap_trace_seq seq = {.id = id, .task = "synthetic", .source = o->source, .n_prompt = n_prompt,
                            .n_gen = o->n_gen, .tokens = tokens, .n_steps = S, .step_pos = pos,
                            .n_blocks = NB, .block_max = bmax, .block_sum = bsum,
                            .query = qv, .key_min = kmin, .key_max = kmax};
        st = ap_trace_writer_add(w, &seq, err);
        if (st) goto cleanup;
    }
    st = ap_trace_writer_close(w, 1, err);
cleanup:
    ap_trace_writer_free(w);
    free(bmax);
    free(bsum);
    free(row);
    free(tokens);
    free(pos);
    free(qv);
    free(kmin);
    free(kmax);
    return st;
}
