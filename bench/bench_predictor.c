/* bench-predictor: per-step predictor time for one head, naive (the CNN on
 * the whole H x W window, ap_predictor_forward, 1 thread) vs incremental
 * (ap_incr_push + ap_incr_predict), at several contexts in one process; then
 * the predictor time for every (layer, head) of the default model per token
 * as a fraction of one decode step of that model at the same context (the
 * predictor is timed again right after each decode step, so both sides of
 * the ratio see the same machine load).
 *
 *   bench-predictor [--contexts 1024,4096,8192] [--reps 3] [--model M.gguf]
 *                   [--decode-steps 6] [--threads 2] [--json OUT.json]
 *
 * Rows are replay-like: 64 prefill rows, then one row per decode step,
 * widths ceil(pos/16) (a new block every 16 rows), a dense calibration row
 * every 5th step and sparse rows (the selected ~10% of blocks) between. The
 * incremental time is the mean over 256 decode steps, so it includes the
 * width increases and one periodic resync.
 *
 * Layer lines (issue 14 item 1): the --heads heads of one layer (9, SmolLM2's),
 * each with its own rows, push + predict per decode step, best of --reps;
 * their multiply-adds per second as a fraction of this machine's AVX2 FMA
 * peak on one thread, measured in the same run
 * (bench/helpers/machine_limits.h; --no-limits skips it). --channels C1,C2
 * sets the CNN widths (16,32 published; 4,8 the shipped cheap one).
 * (Batching the heads' conv2 into shared GEMMs was tried and measured: at
 * best 1.03x, at worst 0.67x, the larger im2col matrix leaving the cache;
 * docs/eval-tasks.md, "Speed of the predictor variants".) */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/gguf.h"
#include "capture/model.h"
#include "common/tolerance.h"
#include "common/util.h"
#include "train/incremental.h"
#include "train/predictor.h"
#include "machine_limits.h"

#ifndef AP_SOURCE_DIR
#define AP_SOURCE_DIR "."
#endif

#define MAX_CTX 16
#define INC_STEPS 256

typedef struct {
    int ctx, Wc;
    double naive_ms, inc_ms;
    double naive_macs, inc_macs; /* per step */
    double max_rel_err;          /* incremental vs naive, last step */
    double decode_ms;            /* 0: not measured */
    /* predictor times re-measured between the decode steps, so the
     * fraction compares times taken under the same machine load */
    double pair_naive_ms, pair_inc_ms;
    /* one layer of --heads heads: ms and multiply-adds per step */
    double layer_ms, layer_macs;
} bench_row;

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

static void make_row(float *row, int width, long step, uint64_t *rng) {
    int dense = step % 5 == 0;
    for (int x = 0; x < width; x++) {
        double u = rng_unit(rng);
        if (dense)
            row[x] = (float)(u < 0.05 ? 0.3 + 0.7 * rng_unit(rng) : 0.05 * u);
        else
            row[x] = (float)(u < 0.1 ? rng_unit(rng) : 0.0);
    }
}

static int fail(const ap_err *e) {
    fprintf(stderr, "bench-predictor: %s\n", e->msg);
    return 1;
}

/* One context: rows for positions ctx-H .. ctx+INC_STEPS-1 (width =
 * ceil((pos+1)/16)), naive timed on the window at ctx, incremental over the
 * INC_STEPS decode steps after it. Best of reps for each. */
static ap_status bench_context(const ap_predictor *p, int ctx, int reps, bench_row *out,
                               ap_err *err) {
    ap_status st = AP_OK;
    const ap_pred_config *c = ap_predictor_config(p);
    const int H = c->history, sink = c->sink_blocks, local = c->local_blocks;
    const int n_rows = H + INC_STEPS;
    const int wmax = (ctx + INC_STEPS + 15) / 16;
    float *rows = calloc((size_t)n_rows * wmax, sizeof(float));
    int *width = malloc(sizeof(int) * (size_t)n_rows);
    float *win = malloc(sizeof(float) * (size_t)H * wmax);
    float *y = malloc(sizeof(float) * (size_t)wmax), *y_ref = malloc(sizeof(float) * (size_t)wmax);
    ap_incr *s = NULL;
    memset(out, 0, sizeof *out);
    out->ctx = ctx;
    if (!rows || !width || !win || !y || !y_ref) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for context %d", ctx);
        goto cleanup;
    }
    uint64_t rng = 42 + (uint64_t)ctx;
    for (int i = 0; i < n_rows; i++) {
        long pos = (long)ctx - H + i;
        width[i] = (int)((pos + 16) / 16);
        make_row(rows + (size_t)i * wmax, width[i], i, &rng);
    }
    /* naive: the window of the first H rows, columns [sink, W - local) */
    int Wc = width[H - 1] - local - sink;
    if (Wc < 1) {
        st = ap_errf(err, AP_ERR_ARG, "context %d leaves no candidate blocks", ctx);
        goto cleanup;
    }
    for (int h = 0; h < H; h++)
        memcpy(win + (size_t)h * Wc, rows + (size_t)h * wmax + sink, sizeof(float) * (size_t)Wc);
    int n_naive = ctx <= 2048 ? 32 : 12;
    st = ap_incr_create(p, 0, &s, err);
    if (st != AP_OK) goto cleanup;
    out->ctx = ctx;
    out->Wc = Wc;
    out->naive_macs = (9.0 * c->c1 + 9.0 * c->c1 * c->c2 + c->c2) * H * Wc;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = ap_now_seconds();
        for (int k = 0; k < n_naive; k++) {
            st = ap_predictor_forward(p, 0, win, 1, H, Wc, y_ref, err);
            if (st != AP_OK) goto cleanup;
        }
        double ms = (ap_now_seconds() - t0) * 1e3 / n_naive;
        if (rep == 0 || ms < out->naive_ms) out->naive_ms = ms;

        /* incremental: the prefill rows and a first (full) predict untimed */
        ap_incr_reset(s);
        for (int i = 0; i < H; i++) {
            st = ap_incr_push(s, rows + (size_t)i * wmax, width[i], err);
            if (st != AP_OK) goto cleanup;
        }
        st = ap_incr_predict(s, sink, width[H - 1] - local, y, err);
        if (st != AP_OK) goto cleanup;
        out->max_rel_err = ap_rel_err_f32(y, y_ref, Wc);
        double macs = 0.0;
        t0 = ap_now_seconds();
        for (int i = H; i < n_rows; i++) {
            st = ap_incr_push(s, rows + (size_t)i * wmax, width[i], err);
            if (st == AP_OK) st = ap_incr_predict(s, sink, width[i] - local, y, err);
            if (st != AP_OK) goto cleanup;
            macs += ap_incr_last_macs(s);
        }
        ms = (ap_now_seconds() - t0) * 1e3 / INC_STEPS;
        if (rep == 0 || ms < out->inc_ms) out->inc_ms = ms;
        out->inc_macs = macs / INC_STEPS;
    }
cleanup:
    ap_incr_free(s);
    free(rows);
    free(width);
    free(win);
    free(y);
    free(y_ref);
    return st;
}

/* The heads of one layer at context ctx: nh histories of their own rows,
 * INC_STEPS decode steps of push + predict for every head after an untimed
 * first predict, best of reps. */
static ap_status bench_layer(const ap_predictor *p, int ctx, int nh, int reps, bench_row *out,
                             ap_err *err) {
    ap_status st = AP_OK;
    const ap_pred_config *c = ap_predictor_config(p);
    const int H = c->history, sink = c->sink_blocks, local = c->local_blocks;
    const int n_rows = H + INC_STEPS, wmax = (ctx + INC_STEPS + 15) / 16;
    float *rows = malloc(sizeof(float) * (size_t)nh * n_rows * wmax);
    int *width = malloc(sizeof(int) * (size_t)n_rows);
    float *y = malloc(sizeof(float) * (size_t)wmax);
    ap_incr **obj = calloc((size_t)nh, sizeof *obj);
    if (!rows || !width || !y || !obj) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the layer benchmark");
        goto cleanup;
    }
    uint64_t rng = 99 + (uint64_t)ctx;
    for (int i = 0; i < n_rows; i++) width[i] = (int)(((long)ctx - H + i + 16) / 16);
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < n_rows; i++)
            make_row(rows + ((size_t)h * n_rows + i) * wmax, width[i], i + h, &rng);
    for (int h = 0; h < nh; h++)
        if ((st = ap_incr_create(p, 0, &obj[h], err))) goto cleanup;
    for (int rep = 0; rep < reps; rep++) {
        for (int h = 0; h < nh; h++) {
            ap_incr_reset(obj[h]);
            for (int i = 0; i < H; i++)
                if ((st = ap_incr_push(obj[h], rows + ((size_t)h * n_rows + i) * wmax, width[i],
                                       err)))
                    goto cleanup;
            if ((st = ap_incr_predict(obj[h], sink, width[H - 1] - local, y, err))) goto cleanup;
        }
        double macs = 0.0, t0 = ap_now_seconds();
        for (int i = H; i < n_rows; i++)
            for (int h = 0; h < nh; h++) {
                st = ap_incr_push(obj[h], rows + ((size_t)h * n_rows + i) * wmax, width[i], err);
                if (st == AP_OK) st = ap_incr_predict(obj[h], sink, width[i] - local, y, err);
                if (st) goto cleanup;
                macs += ap_incr_last_macs(obj[h]);
            }
        const double ms = (ap_now_seconds() - t0) * 1e3 / INC_STEPS;
        if (out->layer_ms == 0.0 || ms < out->layer_ms) out->layer_ms = ms;
        out->layer_macs = macs / INC_STEPS;
    }
cleanup:
    if (obj)
        for (int h = 0; h < nh; h++) ap_incr_free(obj[h]);
    free(obj);
    free(rows);
    free(width);
    free(y);
    return st;
}

/* Decode step time at each context: one sequence prefilled up to
 * ctx - steps, then `steps` decode steps (best one kept), each followed by
 * one predictor measurement at that context, then on to the next context.
 * Token ids do not change the cost. */
static ap_status bench_decode(const char *path, const ap_predictor *p, bench_row *rows,
                              int n_ctx, int steps, int threads, int *n_layer, int *n_head,
                              ap_err *err) {
    ap_status st = AP_OK;
    ap_gguf *g = NULL;
    ap_model *m = NULL;
    ap_ctx *cx = NULL;
    int32_t *tok = NULL;
    float *logits = NULL;
    st = ap_gguf_open(path, &g, err);
    if (st == AP_OK) st = ap_model_load(g, &m, err);
    if (st != AP_OK) goto cleanup;
    const ap_hparams *hp = ap_model_hparams(m);
    int max_ctx = 0;
    for (int r = 0; r < n_ctx; r++)
        if (rows[r].ctx > max_ctx) max_ctx = rows[r].ctx;
    if (max_ctx > hp->n_ctx_train) {
        st = ap_errf(err, AP_ERR_RANGE, "%s: context %d exceeds the model's %d", path, max_ctx,
                     hp->n_ctx_train);
        goto cleanup;
    }
    *n_layer = hp->n_layer;
    *n_head = hp->n_head;
    st = ap_ctx_create(m, max_ctx, threads, &cx, err);
    if (st != AP_OK) goto cleanup;
    tok = malloc(sizeof(int32_t) * (size_t)max_ctx);
    logits = malloc(sizeof(float) * (size_t)hp->n_vocab);
    if (!tok || !logits) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory for the decode benchmark");
        goto cleanup;
    }
    uint64_t rng = 7;
    for (int i = 0; i < max_ctx; i++) tok[i] = (int32_t)(3 + rng_next(&rng) % (hp->n_vocab - 3));
    /* contexts in increasing order, each continuing the same sequence */
    for (;;) {
        int best = -1;
        for (int r = 0; r < n_ctx; r++)
            if (rows[r].decode_ms == 0.0 && (best < 0 || rows[r].ctx < rows[best].ctx)) best = r;
        if (best < 0) break;
        int target = rows[best].ctx - steps, past = ap_ctx_n_past(cx);
        if (target > past) {
            st = ap_ctx_eval(cx, tok + past, target - past, NULL, 0, NULL, err);
            if (st != AP_OK) goto cleanup;
        }
        double bms = 0.0;
        for (int k = 0; k < steps && ap_ctx_n_past(cx) < max_ctx; k++) {
            int at = ap_ctx_n_past(cx);
            double t0 = ap_now_seconds();
            st = ap_ctx_eval(cx, tok + at, 1, logits, 0, NULL, err);
            if (st != AP_OK) goto cleanup;
            double ms = (ap_now_seconds() - t0) * 1e3;
            if (bms == 0.0 || ms < bms) bms = ms;
            bench_row pr;
            st = bench_context(p, rows[best].ctx, 1, &pr, err);
            if (st != AP_OK) goto cleanup;
            bench_row *b = &rows[best];
            if (b->pair_naive_ms == 0.0 || pr.naive_ms < b->pair_naive_ms)
                b->pair_naive_ms = pr.naive_ms;
            if (b->pair_inc_ms == 0.0 || pr.inc_ms < b->pair_inc_ms) b->pair_inc_ms = pr.inc_ms;
        }
        rows[best].decode_ms = bms > 0.0 ? bms : -1.0;
        /* a context below what is already cached reuses the current length */
    }
cleanup:
    free(tok);
    free(logits);
    ap_ctx_free(cx);
    ap_model_free(m);
    ap_gguf_free(g);
    return st;
}

static ap_status write_json(const char *path, const bench_row *rows, int n_ctx, int heads,
                            ap_err *err) {
    char tmp[4096];
    ap_tmp_name(tmp, sizeof tmp, path);
    FILE *f = fopen(tmp, "w");
    if (!f) return ap_errf(err, AP_ERR_IO, "%s: cannot create %s", path, tmp);
    fprintf(f, "{\"bench\": \"predictor\", \"heads_per_token\": %d, \"rows\": [", heads);
    for (int r = 0; r < n_ctx; r++) {
        const bench_row *b = &rows[r];
        fprintf(f,
                "%s\n {\"ctx\": %d, \"candidate_blocks\": %d, \"naive_ms\": %.6f, "
                "\"incremental_ms\": %.6f, \"speedup\": %.3f, \"naive_macs\": %.0f, "
                "\"incremental_macs\": %.0f, \"max_rel_err\": %.3g",
                r ? "," : "", b->ctx, b->Wc, b->naive_ms, b->inc_ms, b->naive_ms / b->inc_ms,
                b->naive_macs, b->inc_macs, b->max_rel_err);
        if (b->layer_ms > 0.0)
            fprintf(f, ", \"layer_ms\": %.6f, \"layer_macs\": %.0f", b->layer_ms,
                    b->layer_macs);
        if (b->decode_ms > 0.0 && heads > 0)
            fprintf(f,
                    ", \"decode_ms\": %.3f, \"paired_naive_ms\": %.6f, "
                    "\"paired_incremental_ms\": %.6f, \"naive_fraction_of_decode\": %.4f, "
                    "\"incremental_fraction_of_decode\": %.4f",
                    b->decode_ms, b->pair_naive_ms, b->pair_inc_ms,
                    heads * b->pair_naive_ms / b->decode_ms, heads * b->pair_inc_ms / b->decode_ms);
        fprintf(f, "}");
    }
    fprintf(f, "\n]}\n");
    if (fclose(f) != 0) {
        remove(tmp);
        return ap_errf(err, AP_ERR_IO, "%s: write failed", tmp);
    }
    ap_status st = ap_commit_file(tmp, path, err);
    if (st != AP_OK) remove(tmp);
    return st;
}

int main(int argc, char **argv) {
    const char *model_path = AP_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    const char *json_path = NULL;
    char contexts_arg[256] = "1024,4096,8192";
    int reps = 3, dec_steps = 6, threads = 2, nh = 9, limits = 1, ch1 = 16, ch2 = 32;
    static const struct option lo[] = {
        {"contexts", 1, 0, 'c'}, {"reps", 1, 0, 'r'},    {"model", 1, 0, 'm'},
        {"decode-steps", 1, 0, 'd'}, {"threads", 1, 0, 't'}, {"json", 1, 0, 'j'},
        {"heads", 1, 0, 'H'},    {"no-limits", 0, 0, 'L'}, {"channels", 1, 0, 'C'},
        {"help", 0, 0, 'h'},     {0, 0, 0, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (opt) {
        case 'c': snprintf(contexts_arg, sizeof contexts_arg, "%s", optarg); break;
        case 'r': reps = atoi(optarg); break;
        case 'm': model_path = optarg; break;
        case 'd': dec_steps = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'j': json_path = optarg; break;
        case 'H': nh = atoi(optarg); break;
        case 'L': limits = 0; break;
        case 'C':
            if (sscanf(optarg, "%d,%d", &ch1, &ch2) != 2) ch1 = 0;
            break;
        case 'h':
            printf("usage: bench-predictor [--contexts 1024,4096,8192] [--reps 3]\n"
                   "                       [--model M.gguf] [--decode-steps 6] [--threads 2]\n"
                   "                       [--heads 9] [--channels C1,C2] [--no-limits]\n"
                   "                       [--json OUT]\n"
                   "Per-step predictor time of one head (default config, 1 thread), naive\n"
                   "(the CNN on the whole window) vs incremental (train/incremental.h), best of\n"
                   "--reps, one line per context; one layer of --heads heads per decode step,\n"
                   "with its share of this machine's FMA peak on one thread (--no-limits: not\n"
                   "measured); then, if the model exists, one decode step of\n"
                   "the model (--threads threads, best of --decode-steps) at each context and\n"
                   "the predictor time for all layers x heads per token as a fraction of it\n"
                   "(predictor re-timed between the decode steps). The decode part prefills one\n"
                   "sequence up to the largest context: most of the run time (~1.5 min at 8K on\n"
                   "2 cores).\n");
            return 0;
        default: fprintf(stderr, "bench-predictor: bad option (see --help)\n"); return 2;
        }
    }
    if (reps < 1 || dec_steps < 1 || threads < 1 || nh < 1 || nh > 256 || ch1 < 1 || ch2 < 1) {
        fprintf(stderr, "bench-predictor: --reps, --decode-steps, --threads, --heads (<= 256) and "
                        "--channels C1,C2 must be >= 1\n");
        return 2;
    }
    bench_row rows[MAX_CTX];
    memset(rows, 0, sizeof rows);
    int n_ctx = 0;
    for (char *save = NULL, *t = strtok_r(contexts_arg, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        int v = atoi(t);
        if (n_ctx == MAX_CTX || v < 256 || v > 1 << 20) {
            fprintf(stderr, "bench-predictor: bad context '%s' (256..1048576, at most %d)\n", t,
                    MAX_CTX);
            return 2;
        }
        rows[n_ctx++].ctx = v;
    }
    if (n_ctx == 0) {
        fprintf(stderr, "bench-predictor: no contexts\n");
        return 2;
    }
    /* one BLAS thread: the naive path runs one head per thread, as in replay */
    openblas_set_num_threads(1);

    ap_err err;
    ap_err_clear(&err);
    ap_pred_config pc;
    ap_pred_config_default(&pc);
    pc.c1 = ch1;
    pc.c2 = ch2;
    ap_predictor *p = NULL;
    if (ap_predictor_create(&pc, 1, &p, &err)) return fail(&err);
    ap_predictor_set_threads(p, 1);
    printf("# bench-predictor: H=%d c1=%d c2=%d, one head, 1 thread; incremental = mean of %d "
           "decode steps\n",
           pc.history, pc.c1, pc.c2, INC_STEPS);
    for (int r = 0; r < n_ctx; r++) {
        int ctx = rows[r].ctx;
        if (bench_context(p, ctx, reps, &rows[r], &err)) {
            ap_predictor_free(p);
            return fail(&err);
        }
        printf("ctx=%d naive_ms=%.3f incremental_ms=%.3f speedup=%.1fx\n", ctx, rows[r].naive_ms,
               rows[r].inc_ms, rows[r].naive_ms / rows[r].inc_ms);
        printf("#   blocks=%d macs_naive=%.3g macs_incremental=%.3g mac_ratio=%.1f "
               "rel_err=%.2g (tolerance %.0e)\n",
               rows[r].Wc, rows[r].naive_macs, rows[r].inc_macs,
               rows[r].naive_macs / rows[r].inc_macs, rows[r].max_rel_err, AP_TOL_INCR_REL);
        fflush(stdout);
    }
    ap_machine_limits L;
    const int have_limits = limits ? ap_machine_limits_measure(1, &L) : 0;
    if (have_limits)
        printf("# machine: AVX2 FMA %.1f GFLOP/s on 1 thread, read %.1f GB/s\n", L.fma1, L.read1);
    for (int r = 0; r < n_ctx; r++) {
        bench_row *b = &rows[r];
        if (bench_layer(p, b->ctx, nh, reps, b, &err)) {
            ap_predictor_free(p);
            return fail(&err);
        }
        const double gf = 2e-6 * b->layer_macs / b->layer_ms;
        printf("layer ctx=%d heads=%d ms=%.3f macs=%.3g gflops=%.1f", b->ctx, nh, b->layer_ms,
               b->layer_macs, gf);
        if (have_limits) printf(" fma_frac=%.3f", gf / L.fma1);
        printf("\n");
        fflush(stdout);
    }

    int n_layer = 0, n_head = 0;
    if (!ap_file_exists(model_path)) {
        printf("# model %s absent: decode-step fraction skipped\n", model_path);
    } else {
        printf("# decode: %s, %d threads, prefill then best of %d decode steps per context, each\n"
               "# followed by one predictor run (1 thread) at that context; fraction = layers x\n"
               "# heads x per-head predictor time / decode step time\n",
               model_path, threads, dec_steps);
        fflush(stdout);
        if (bench_decode(model_path, p, rows, n_ctx, dec_steps, threads, &n_layer, &n_head,
                         &err)) {
            ap_predictor_free(p);
            return fail(&err);
        }
        int heads = n_layer * n_head;
        for (int r = 0; r < n_ctx; r++) {
            const bench_row *b = &rows[r];
            if (b->decode_ms <= 0.0) continue;
            printf("decode ctx=%d decode_ms=%.2f heads=%d naive_per_token_ms=%.1f "
                   "naive_fraction=%.2f incremental_per_token_ms=%.1f incremental_fraction=%.3f\n",
                   b->ctx, b->decode_ms, heads, heads * b->pair_naive_ms,
                   heads * b->pair_naive_ms / b->decode_ms, heads * b->pair_inc_ms,
                   heads * b->pair_inc_ms / b->decode_ms);
        }
    }
    ap_predictor_free(p);
    if (json_path && write_json(json_path, rows, n_ctx, n_layer * n_head, &err))
        return fail(&err);
    return 0;
}
