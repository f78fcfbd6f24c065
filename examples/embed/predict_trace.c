/* predict_trace: an outside program embedding attnpred through its installed
 * API only (pkg-config attnpred; docs/embedding.md). It opens a trace written
 * by `attnpred capture` and a predictor written by `attnpred export`, builds
 * the history window the predictor sees before one decode step of one
 * (sequence, layer, head), and prints the predicted score of every candidate
 * block and the top-k blocks a sparse-attention engine would keep.
 *
 * The window follows docs/predictor-data.md ("One sample"), i.e. what the
 * trainer validated the predictor on: dense block_max rows, sink and local
 * blocks cut off. A serving engine would feed the rows it observed instead.
 *
 * Exit status: 0 done, 1 bad input file or value out of the trace's range,
 * 2 usage error. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/trace.h"
#include "train/runtime.h"

/* The replay and the trainer skip the predictor below this many candidates
 * (every block is kept anyway); their constant is not part of the API. */
#define MIN_CANDIDATES 3

static void usage(FILE *out) {
    fprintf(out,
            "usage: predict_trace [options] TRACE.h5 PREDICTOR.safetensors\n"
            "\n"
            "Predicted block scores for one decode step of one (sequence, layer, head)\n"
            "of an attnpred trace, from an exported predictor.\n"
            "\n"
            "  --seq S     sequence id, or its index in the file (default 0)\n"
            "  --layer L   layer (default 0)\n"
            "  --head H    query head (default 0)\n"
            "  --step T    decode step, 0 = first generated token (default 0)\n"
            "  --top K     how many blocks to list as kept (default 8)\n"
            "  --help      this text\n"
            "\n"
            "Prints one line per candidate block (index, score, the block_max the trace\n"
            "recorded at that step) and the top-K blocks by score. Exit status 1 on a bad\n"
            "file or out-of-range value, 2 on a usage error.\n");
}

/* Whole-string decimal parse: "3x" or "" must not become 3 or 0. */
static int parse_int(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < INT_MIN || v > INT_MAX) return -1;
    *out = (int)v;
    return 0;
}

/* Descending score; ties go to the lower block so the listing is stable. */
static const float *g_sort_scores;
static int by_score_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    float si = g_sort_scores[i], sj = g_sort_scores[j];
    if (si != sj) return si > sj ? -1 : 1;
    return (i > j) - (i < j);
}

int main(int argc, char **argv) {
    const char *trace_path = NULL, *pred_path = NULL, *seq_arg = "0";
    int layer = 0, head = 0, step = 0, top = 8;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        int *ival = !strcmp(a, "--layer")  ? &layer
                    : !strcmp(a, "--head") ? &head
                    : !strcmp(a, "--step") ? &step
                    : !strcmp(a, "--top")  ? &top
                                           : NULL;
        if (ival || !strcmp(a, "--seq")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "predict_trace: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (!ival) {
                seq_arg = v;
            } else if (parse_int(v, ival) || *ival < 0 || (ival == &top && *ival < 1)) {
                fprintf(stderr, "predict_trace: bad value '%s' for %s\n", v, a);
                return 2;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "predict_trace: unknown option '%s' (see --help)\n", a);
            return 2;
        } else if (!trace_path) {
            trace_path = a;
        } else if (!pred_path) {
            pred_path = a;
        } else {
            fprintf(stderr, "predict_trace: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    if (!pred_path) {
        usage(stderr);
        return 2;
    }

    ap_status st = AP_OK;
    ap_err err = {0};
    ap_trace *tr = NULL;
    ap_runtime *rt = NULL;
    int32_t *step_pos = NULL;
    float *bmax = NULL, *hist = NULL, *scores = NULL, *query = NULL, *kmin = NULL, *kmax = NULL;
    int *order = NULL;
    const ap_trace_meta *meta;
    const ap_pred_config *cfg;
    const float *actual;
    ap_trace_seq_info info;
    int seq, S, NB, NH, qpos, s_t, H, c0, c1, W;

    st = ap_trace_open(trace_path, &tr, &err);
    if (st) goto cleanup;
    st = ap_runtime_load(pred_path, &rt, &err);
    if (st) goto cleanup;
    meta = ap_trace_get_meta(tr);
    cfg = ap_runtime_config(rt);
    /* One head per call: a second worker thread would only wait. */
    ap_predictor_set_threads(ap_runtime_predictor(rt), 1);

    /* Block scores only mean something over the pooling the predictor was
     * trained on. */
    if (cfg->block != meta->block_size) {
        st = ap_errf(&err, AP_ERR_ARG, "%s: predictor pools %d-token blocks, trace %s has %d",
                     pred_path, cfg->block, trace_path, meta->block_size);
        goto cleanup;
    }
    if (layer >= meta->n_layer || head >= meta->n_head) {
        st = ap_errf(&err, AP_ERR_RANGE,
                     "%s: --layer %d / --head %d outside %d layers x %d heads", trace_path,
                     layer, head, meta->n_layer, meta->n_head);
        goto cleanup;
    }

    seq = ap_trace_find(tr, seq_arg);
    if (seq < 0 && (parse_int(seq_arg, &seq) || seq < 0 || seq >= ap_trace_n_seq(tr))) {
        st = ap_errf(&err, AP_ERR_RANGE, "%s: no sequence '%s' (ids or indices 0..%d)",
                     trace_path, seq_arg, ap_trace_n_seq(tr) - 1);
        goto cleanup;
    }
    st = ap_trace_seq_get_info(tr, seq, &info, &err);
    if (st) goto cleanup;
    if (step >= info.n_gen) {
        st = ap_errf(&err, AP_ERR_RANGE, "%s: sequence '%s' has %d decode steps, --step %d",
                     trace_path, info.id, info.n_gen, step);
        goto cleanup;
    }

    /* Recorded rows start with some prefill queries; step_pos says which row
     * is the query of decode step `step`, without assuming how many. */
    S = info.n_steps;
    NB = info.n_blocks;
    NH = meta->n_head;
    qpos = info.n_prompt + step;
    step_pos = malloc((size_t)S * sizeof *step_pos);
    if (!step_pos) {
        st = ap_errf(&err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    st = ap_trace_read_i32(tr, seq, "step_pos", step_pos, (size_t)S, &err);
    if (st) goto cleanup;
    s_t = -1;
    for (int s = 0; s < S; s++)
        if (step_pos[s] == qpos) s_t = s;
    if (s_t < 0) {
        st = ap_errf(&err, AP_ERR_FORMAT, "%s: sequence '%s' records no row at position %d",
                     trace_path, info.id, qpos);
        goto cleanup;
    }

    /* Candidates are cut from the width of the newest history row (position
     * qpos - 1), as the method's decode loop cuts them. */
    H = cfg->history;
    c0 = cfg->sink_blocks;
    c1 = (qpos + meta->block_size - 1) / meta->block_size - cfg->local_blocks;
    W = c1 - c0;
    printf("trace %s: sequence '%s' (#%d), prompt %d tokens, layer %d, head %d\n", trace_path,
           info.id, seq, info.n_prompt, layer, head);
    printf("step %d (query position %d): %d candidate blocks [%d, %d), history %d rows\n", step,
           qpos, W > 0 ? W : 0, c0, c1 > c0 ? c1 : c0, H);
    if (W < MIN_CANDIDATES) {
        printf("fewer than %d candidates: the predictor is not run, every block is kept\n",
               MIN_CANDIDATES);
        goto cleanup;
    }

    bmax = malloc((size_t)S * NH * NB * sizeof *bmax);
    hist = calloc((size_t)H * W, sizeof *hist);
    scores = malloc((size_t)W * sizeof *scores);
    order = malloc((size_t)W * sizeof *order);
    if (!bmax || !hist || !scores || !order) {
        st = ap_errf(&err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    st = ap_trace_read_layer(tr, seq, layer, "block_max", bmax, (size_t)S * NH * NB, &err);
    if (st) goto cleanup;
    /* Rows before the first recorded one stay zero, as in training. */
    for (int r = 0; r < H; r++) {
        int s = s_t - H + r;
        if (s >= 0)
            memcpy(hist + (size_t)r * W, bmax + ((size_t)s * NH + head) * NB + c0,
                   (size_t)W * sizeof *hist);
    }
    st = ap_runtime_predict(rt, layer, hist, H, W, scores, &err);
    if (st) goto cleanup;

    if (cfg->query_fusion) {
        /* The fused variant also needs the step's query and the candidates'
         * key bounds, which only traces captured with queries hold. */
        if (!info.has_query) {
            st = ap_errf(&err, AP_ERR_ARG,
                         "%s: query-fusion predictor, but trace %s has no queries", pred_path,
                         trace_path);
            goto cleanup;
        }
        const int hd = meta->head_dim, kvh = head / (NH / meta->n_head_kv);
        const size_t nk = (size_t)meta->n_head_kv * NB * hd;
        query = malloc((size_t)S * NH * hd * sizeof *query);
        kmin = malloc(nk * sizeof *kmin);
        kmax = malloc(nk * sizeof *kmax);
        if (!query || !kmin || !kmax) {
            st = ap_errf(&err, AP_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        if ((st = ap_trace_read_layer(tr, seq, layer, "query", query, (size_t)S * NH * hd,
                                      &err)) ||
            (st = ap_trace_read_layer(tr, seq, layer, "key_min", kmin, nk, &err)) ||
            (st = ap_trace_read_layer(tr, seq, layer, "key_max", kmax, nk, &err)))
            goto cleanup;
        const size_t at = ((size_t)kvh * NB + c0) * hd;
        st = ap_runtime_fuse_query(rt, layer, query + ((size_t)s_t * NH + head) * hd,
                                   kmin + at, kmax + at, hd, W, scores, &err);
        if (st) goto cleanup;
    }

    printf("block         score       actual\n");
    actual = bmax + ((size_t)s_t * NH + head) * NB + c0;
    for (int j = 0; j < W; j++) {
        printf("%5d  %+.5e  %.5e\n", c0 + j, scores[j], actual[j]);
        order[j] = j;
    }
    g_sort_scores = scores;
    qsort(order, (size_t)W, sizeof *order, by_score_desc);
    printf("top %d:", top < W ? top : W);
    for (int j = 0; j < top && j < W; j++) printf(" %d", c0 + order[j]);
    printf("\n");

cleanup:
    if (st) fprintf(stderr, "predict_trace: %s\n", err.msg);
    free(order);
    free(kmax);
    free(kmin);
    free(query);
    free(scores);
    free(hist);
    free(bmax);
    free(step_pos);
    ap_runtime_free(rt);
    ap_trace_close(tr);
    return st ? 1 : 0;
}
