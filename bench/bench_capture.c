/* bench-capture: prefill and decode speed of the CPU engine with and without
 * attention capture, peak memory and trace bytes per token, at several
 * contexts, in one process so the ratios are immune to machine noise.
 *
 *   bench-capture [--model M.gguf] [--prompts P.jsonl] [--contexts 1024,4096,8192]
 *                 [--gen 32] [--threads 2] [--json OUT.json]
 *
 * The baseline is the same forward without an observer; "capture" is
 * ap_capture_sequence (pooling, Quest/H2O extras, HDF5 write) on the same tokens. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capture/capture.h"
#include "capture/gguf.h"
#include "capture/model.h"
#include "capture/prompts.h"
#include "capture/tokenizer.h"
#include "capture/trace.h"
#include "common/util.h"

#ifndef AP_DATA_DIR
#define AP_DATA_DIR "data"
#endif
#ifndef AP_SOURCE_DIR
#define AP_SOURCE_DIR "."
#endif

typedef struct {
    int ctx;
    int prefill_len;
    double base_prefill_tps, base_decode_tps;
    double cap_prefill_tps, cap_decode_tps;
    double write_s;
    double trace_bytes_per_token;
    double peak_rss_mb;
} bench_row;

static int fail(const ap_err *e) {
    fprintf(stderr, "bench-capture: %s\n", e->msg);
    return 1;
}

int main(int argc, char **argv) {
    const char *model_path = AP_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    const char *prompts_path = AP_DATA_DIR "/prompts/default.jsonl";
    const char *json_path = NULL;
    char contexts_arg[256] = "1024,4096,8192";
    int n_gen = 32, threads = 2, reps = 2;
    static const struct option lo[] = {{"model", 1, 0, 'm'},    {"prompts", 1, 0, 'p'},
                                       {"contexts", 1, 0, 'c'}, {"gen", 1, 0, 'g'},
                                       {"threads", 1, 0, 't'},  {"json", 1, 0, 'j'},
                                       {"reps", 1, 0, 'r'},
                                       {"help", 0, 0, 'h'},     {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'p': prompts_path = optarg; break;
        case 'c': snprintf(contexts_arg, sizeof contexts_arg, "%s", optarg); break;
        case 'g': n_gen = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'j': json_path = optarg; break;
        case 'r': reps = atoi(optarg); break;
        case 'h':
            printf("usage: bench-capture [--model M] [--prompts P] [--contexts 1024,4096,8192] "
                   "[--gen N] [--threads N] [--reps N] [--json OUT]\n"
                   "Each measurement is repeated --reps times (default 2), baseline and capture\n"
                   "interleaved; the best of each is reported, so load spikes hit both alike.\n");
            return 0;
        default: fprintf(stderr, "bench-capture: bad option (see --help)\n"); return 2;
        }
    }
    if (n_gen < 1 || threads < 1 || reps < 1) {
        fprintf(stderr, "bench-capture: --gen, --threads and --reps must be >= 1\n");
        return 2;
    }
    int ctxs[16], n_ctx = 0, max_ctx = 0;
    for (char *save = NULL, *t = strtok_r(contexts_arg, ",", &save); t && n_ctx < 16;
         t = strtok_r(NULL, ",", &save)) {
        ctxs[n_ctx] = atoi(t);
        if (ctxs[n_ctx] < 16) {
            fprintf(stderr, "bench-capture: bad context '%s'\n", t);
            return 2;
        }
        if (ctxs[n_ctx] > max_ctx) max_ctx = ctxs[n_ctx];
        n_ctx++;
    }

    ap_err err;
    ap_err_clear(&err);
    ap_gguf *g = NULL;
    ap_model *m = NULL;
    ap_tokenizer *tok = NULL;
    ap_prompt_set *ps = NULL;
    if (ap_gguf_open(model_path, &g, &err) || ap_tokenizer_from_gguf(g, &tok, &err) ||
        ap_model_load(g, &m, &err) || ap_prompts_load(prompts_path, &ps, &err))
        return fail(&err);
    const ap_hparams *hp = ap_model_hparams(m);

    /* A context of N means N tokens in the cache at the end of decoding:
     * prefill N - gen, then gen decode steps. */
    if (max_ctx > hp->n_ctx_train) {
        fprintf(stderr, "bench-capture: context %d exceeds the model's %d\n", max_ctx,
                hp->n_ctx_train);
        return 2;
    }
    for (int r = 0; r < n_ctx; r++)
        if (ctxs[r] <= n_gen) {
            fprintf(stderr, "bench-capture: context %d must exceed --gen %d\n", ctxs[r], n_gen);
            return 2;
        }
    /* One long token stream from the prompt texts (repeated if short). */
    int need = max_ctx;
    int32_t *stream = malloc(sizeof(int32_t) * (size_t)need);
    int have = 0;
    for (int rep = 0; have < need && rep < 64; rep++)
        for (int i = 0; i < ps->n && have < need; i++) {
            int32_t *ids = NULL;
            size_t n = 0;
            if (ap_tokenizer_encode(tok, ps->items[i].text, strlen(ps->items[i].text), 0, &ids, &n,
                                    &err))
                return fail(&err);
            for (size_t k = 0; k < n && have < need; k++) stream[have++] = ids[k];
            free(ids);
        }
    if (have < need) {
        fprintf(stderr, "bench-capture: prompts give only %d tokens\n", have);
        return 1;
    }

    ap_ctx *ctx = NULL;
    if (ap_ctx_create(m, need, threads, &ctx, &err)) return fail(&err);
    float *logits = malloc(sizeof(float) * (size_t)hp->n_vocab);
    bench_row rows[16];
    char tmpdir[] = "/tmp/bench-capture-XXXXXX";
    if (!mkdtemp(tmpdir)) {
        perror("bench-capture: mkdtemp");
        return 1;
    }
    printf("# bench-capture: model %s, threads %d, gen %d\n", hp->name, threads, n_gen);
    for (int r = 0; r < n_ctx; r++) {
        int N = ctxs[r] - n_gen; /* prefill length */
        bench_row *row = &rows[r];
        memset(row, 0, sizeof *row);
        row->ctx = ctxs[r];
        for (int rep = 0; rep < reps; rep++) {
        /* baseline: no observer */
        ap_ctx_reset(ctx);
        double t0 = ap_now_seconds();
        if (ap_ctx_eval(ctx, stream, N, logits, 0, NULL, &err)) return fail(&err);
        double t1 = ap_now_seconds();
        for (int k = 0; k < n_gen; k++) {
            int32_t next = ap_sample(logits, hp->n_vocab, 0.0f, 0, NULL);
            if (ap_ctx_eval(ctx, &next, 1, logits, 0, NULL, &err)) return fail(&err);
        }
        double t2 = ap_now_seconds();
        if (N / (t1 - t0) > row->base_prefill_tps) row->base_prefill_tps = N / (t1 - t0);
        if (n_gen / (t2 - t1) > row->base_decode_tps) row->base_decode_tps = n_gen / (t2 - t1);

        /* capture: the real per-sequence capture into a fresh trace */
        char path[512];
        snprintf(path, sizeof path, "%s/ctx%d.h5", tmpdir, N);
        ap_trace_meta meta;
        if (ap_capture_trace_meta(hp, 16, 64, &meta, &err)) return fail(&err);
        snprintf(meta.model_name, sizeof meta.model_name, "%s", hp->name);
        snprintf(meta.model_sha256, sizeof meta.model_sha256, "%s", "bench");
        snprintf(meta.attnpred_version, sizeof meta.attnpred_version, "%s", AP_VERSION_STRING);
        ap_trace_writer *w = NULL;
        if (ap_trace_writer_open(path, &meta, AP_TRACE_FORCE, &w, &err)) return fail(&err);
        ap_capture_opts o;
        ap_capture_opts_default(&o);
        o.n_gen = n_gen;
        o.stop_at_eos = 0;
        ap_capture_seq_stats ss;
        if (ap_capture_sequence(ctx, hp, &o, NULL, 0, "bench", "bench", NULL, 0, stream, N, -1, w,
                                &ss, &err))
            return fail(&err);
        if (ap_trace_writer_close(w, 1, &err)) return fail(&err);
        ap_trace_writer_free(w);
        struct stat sb;
        long long bytes = stat(path, &sb) == 0 ? (long long)sb.st_size : 0;
        if (N / ss.prefill_seconds > row->cap_prefill_tps) row->cap_prefill_tps = N / ss.prefill_seconds;
        if (ss.n_gen / ss.decode_seconds > row->cap_decode_tps)
            row->cap_decode_tps = ss.n_gen / ss.decode_seconds;
        if (rep == 0 || ss.write_seconds < row->write_s) row->write_s = ss.write_seconds;
        row->trace_bytes_per_token = (double)bytes / (N + ss.n_gen);
        row->prefill_len = N;
        row->peak_rss_mb = ap_peak_rss_bytes() / 1048576.0;
        remove(path);
        }
        printf("ctx=%d prefill_len=%d prefill_tok_s=%.1f capture_prefill_tok_s=%.1f prefill_ratio=%.3f "
               "decode_tok_s=%.2f capture_decode_tok_s=%.2f decode_ratio=%.3f write_s=%.2f "
               "trace_bytes_per_token=%.0f peak_rss_mb=%.0f\n",
               row->ctx, N, row->base_prefill_tps, row->cap_prefill_tps,
               row->cap_prefill_tps / row->base_prefill_tps, row->base_decode_tps,
               row->cap_decode_tps, row->cap_decode_tps / row->base_decode_tps, row->write_s,
               row->trace_bytes_per_token, row->peak_rss_mb);
        fflush(stdout);
    }
    rmdir(tmpdir);
    if (json_path) {
        FILE *f = fopen(json_path, "w");
        if (!f) {
            fprintf(stderr, "bench-capture: %s: cannot write\n", json_path);
            return 1;
        }
        fprintf(f, "{\"bench\": \"capture\", \"threads\": %d, \"gen\": %d, \"rows\": [", threads,
                n_gen);
        for (int r = 0; r < n_ctx; r++)
            fprintf(f,
                    "%s\n {\"ctx\": %d, \"prefill_tok_s\": %.3f, \"capture_prefill_tok_s\": %.3f, "
                    "\"decode_tok_s\": %.3f, \"capture_decode_tok_s\": %.3f, \"write_s\": %.3f, "
                    "\"trace_bytes_per_token\": %.1f, \"peak_rss_mb\": %.1f}",
                    r ? "," : "", rows[r].ctx, rows[r].base_prefill_tps, rows[r].cap_prefill_tps,
                    rows[r].base_decode_tps, rows[r].cap_decode_tps, rows[r].write_s,
                    rows[r].trace_bytes_per_token, rows[r].peak_rss_mb);
        fprintf(f, "\n]}\n");
        fclose(f);
    }
    free(logits);
    free(stream);
    ap_ctx_free(ctx);
    ap_prompts_free(ps);
    ap_tokenizer_free(tok);
    ap_model_free(m);
    ap_gguf_free(g);
    return 0;
}
