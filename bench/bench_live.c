/* bench-live: live compressed decoding against full KV at growing contexts
 * (issue 14), one line per (context, method):
 *
 *   ctx=8192 method=attnpred budget=512 tps=31.2 full_tps=12.9 speedup=2.42x
 *     agreement=98.1 predictor_ms=1.3 step_ms=32.0
 *
 *   bench-live [--model M.gguf] [--predictor P.safetensors] [--contexts 2048,4096,max]
 *              [--budget 512] [--methods last_step,attnpred,quest] [--gen 64]
 *              [--threads 2] [--pred-stride S] [--pred-per-kv] [--[no-]prefetch]
 *              [--kv-type f32|f16] [--calib N] [--kv-mode qhead|sum|union]
 *              [--texts N] [--json OUT]
 *
 * Each context is one sample of plain text (the prompts of data/tasks/full.jsonl
 * joined, cut so that prompt + --gen tokens is the context; "max" is the
 * model's context_length) decoded through eval/tasks.h exactly as
 * `attnpred eval tasks` does: one shared prefill, full KV's free-running
 * decode, then each method's free run (timed) and its teacher-forced pass on
 * full KV's tokens (agreement). tps and step_ms come from the free run's wall
 * time; predictor_ms is the method's scoring work per token (predictor CNN,
 * ranking): wall time of the thread that ran it, its parts split over the
 * engine's threads included (ap_kv_step.par); with prefetch the worker's,
 * part of it hidden;
 * the speedup is against full KV in the same process, so machine noise hits
 * both alike. A free run that stops early (end of text) is timed on the
 * tokens it made.
 *
 * Limits (unless --no-limits): this machine's read bandwidth and AVX2 FMA
 * peak, measured after the runs (bench/helpers/machine_limits.h), one
 * "machine:" line; each row then adds mb_token, the bytes a decode step
 * reads in this model (the weights of one step, ap_model_decode_weight_bytes,
 * plus the method's mean resident KV, full KV's whole cache) and bw_frac, that
 * traffic at the measured tok/s as a fraction of the read bandwidth: how far
 * the step is from the memory bound. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "capture/gguf.h"
#include "capture/model.h"
#include "capture/tokenizer.h"
#include "common/util.h"
#include "eval/report_util.h"
#include "eval/tasks.h"
#include "machine_limits.h"

#ifndef AP_SOURCE_DIR
#define AP_SOURCE_DIR "."
#endif

#define MAX_CTX 8

static int parse_ints(const char *s, int *out, int cap, int max_ctx) {
    int n = 0;
    char *copy = strdup(s), *save = NULL;
    if (!copy) return -1;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n >= cap) {
            n = -1;
            break;
        }
        if (!strcmp(t, "max")) {
            out[n++] = max_ctx;
            continue;
        }
        char *end = NULL;
        long v = strtol(t, &end, 10);
        if (!end || *end || v < 256 || v > max_ctx) {
            n = -1;
            break;
        }
        out[n++] = (int)v;
    }
    free(copy);
    return n;
}

/* The prompts of a task file joined: plain text to cut contexts from. */
static char *source_text(const char *path, size_t want, size_t *len) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    size_t cap = want + 1, n = 0;
    char *out = malloc(cap), *line = NULL;
    size_t lcap = 0;
    ssize_t got;
    while (out && n < want && (got = getline(&line, &lcap, f)) > 0) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *p = o ? cJSON_GetObjectItemCaseSensitive(o, "prompt") : NULL;
        if (cJSON_IsString(p)) {
            size_t k = strlen(p->valuestring);
            if (n + k + 2 > cap) {
                char *t = realloc(out, n + k + 2);
                if (!t) {
                    free(out);
                    out = NULL;
                } else {
                    out = t;
                    cap = n + k + 2;
                }
            }
            if (out) {
                memcpy(out + n, p->valuestring, k);
                n += k;
                out[n++] = '\n';
            }
        }
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
    if (out) out[n] = 0;
    *len = n;
    return out;
}

int main(int argc, char **argv) {
    const char *model = AP_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    const char *pred = AP_SOURCE_DIR "/data/predictors/smollm2-135m-instruct.safetensors";
    const char *text_file = AP_SOURCE_DIR "/data/tasks/full.jsonl";
    const char *ctx_arg = "2048,4096,max", *methods_arg = "last_step,attnpred,quest";
    const char *json_out = NULL;
    int budget = 512, gen = 64, threads = 2, stride = 1, per_kv = 0, prefetch = -1, limits = 1;
    int calib = 5, n_texts = 1;
    ap_kv_mode kv_mode = AP_KV_PER_QHEAD;
    ap_kv_type kv_type = AP_KV_F32;
    static const struct option lo[] = {
        {"model", 1, 0, 'm'},  {"predictor", 1, 0, 'p'},   {"contexts", 1, 0, 'c'},
        {"budget", 1, 0, 'b'}, {"methods", 1, 0, 'M'},     {"gen", 1, 0, 'g'},
        {"threads", 1, 0, 't'}, {"pred-stride", 1, 0, 's'}, {"pred-per-kv", 0, 0, 'k'},
        {"no-prefetch", 0, 0, 'n'}, {"prefetch", 0, 0, 'P'}, {"json", 1, 0, 'j'},
        {"text", 1, 0, 'x'},
        {"no-limits", 0, 0, 'L'}, {"kv-type", 1, 0, 'K'}, {"calib", 1, 0, 'C'},
        {"kv-mode", 1, 0, 'V'}, {"texts", 1, 0, 'T'},
        {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int o;
    opterr = 0;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'm': model = optarg; break;
        case 'p': pred = optarg; break;
        case 'c': ctx_arg = optarg; break;
        case 'b': budget = atoi(optarg); break;
        case 'M': methods_arg = optarg; break;
        case 'g': gen = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 's': stride = atoi(optarg); break;
        case 'k': per_kv = 1; break;
        case 'n': prefetch = 0; break;
        case 'P': prefetch = 1; break;
        case 'j': json_out = optarg; break;
        case 'x': text_file = optarg; break;
        case 'L': limits = 0; break;
        case 'C': calib = atoi(optarg); break;
        case 'T': n_texts = atoi(optarg); break;
        case 'V':
            if (!strcmp(optarg, "qhead")) kv_mode = AP_KV_PER_QHEAD;
            else if (!strcmp(optarg, "sum")) kv_mode = AP_KV_SUM;
            else if (!strcmp(optarg, "union")) kv_mode = AP_KV_UNION;
            else {
                fprintf(stderr, "bench-live: bad value '%s' for --kv-mode (qhead, sum or union)\n",
                        optarg);
                return 2;
            }
            break;
        case 'K':
            if (ap_kv_type_parse(optarg, &kv_type)) {
                fprintf(stderr, "bench-live: bad value '%s' for --kv-type (f32 or f16)\n", optarg);
                return 2;
            }
            break;
        case 'h':
            printf("usage: bench-live [--model M.gguf] [--predictor P.safetensors]\n"
                   "                  [--contexts 2048,4096,max] [--budget 512]\n"
                   "                  [--methods last_step,attnpred,quest] [--gen 64] [--threads 2]\n"
                   "                  [--pred-stride S] [--pred-per-kv] [--[no-]prefetch]\n"
                   "                  [--text TASKS.jsonl] [--no-limits] [--kv-type f32|f16]\n"
                   "                  [--calib N] [--kv-mode qhead|sum|union] [--texts N]\n"
                   "                  [--json OUT]\n"
                   "Live compressed decoding vs full KV at each context (plain text cut from\n"
                   "the task prompts; max = the model's context_length), one line per\n"
                   "(context, method): tok/s, full KV's tok/s in the same run, the speedup,\n"
                   "teacher-forced agreement with full KV, predictor and step ms per token;\n"
                   "then this machine's read bandwidth and FMA peak (--no-limits: skip) and\n"
                   "each step's bytes read as a fraction of that bandwidth. --kv-type: the\n"
                   "engine's KV cache for every method, full KV included (default f32).\n"
                   "--calib: dense history row every N decode steps for last_step and the\n"
                   "predictor (default 5, the method's; 0: never), as in eval tasks.\n"
                   "--prefetch / --no-prefetch: the predictor on a worker thread or on the\n"
                   "engine's threads (default: the worker where the machine has more CPUs\n"
                   "than --threads), as in eval tasks. --kv-mode: kept sets per query head\n"
                   "(default) or per KV head (sum, union), as in eval tasks. --texts N: N\n"
                   "different texts per context (disjoint windows of the text; default 1),\n"
                   "each line then sums over them (tok/s from the summed tokens and time,\n"
                   "agreement over all their tokens, and its lowest and highest text).\n");
            return 0;
        default:
            fprintf(stderr, "bench-live: unknown or incomplete option '%s' (see --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (budget < 1 || gen < 1 || gen > 4096 || threads < 1 || stride < 1 || calib < 0 ||
        n_texts < 1 || n_texts > 64) {
        fprintf(stderr, "bench-live: --budget, --gen, --threads and --pred-stride must be "
                        "positive (--gen at most 4096), --calib at least 0, --texts 1..64\n");
        return 2;
    }
    int rc = 1;
    ap_err e;
    ap_err_clear(&e);
    ap_gguf *g = NULL;
    ap_tokenizer *tok = NULL;
    ap_tasks_result *r = NULL;
    char *text = NULL, *methods_copy = NULL, *tmp_path = NULL;
    int32_t *ids = NULL;
    cJSON *root = NULL;
    FILE *tf = NULL;
    if (ap_gguf_open(model, &g, &e) || ap_tokenizer_from_gguf(g, &tok, &e)) {
        fprintf(stderr, "bench-live: %s\n", e.msg);
        goto cleanup;
    }
    int64_t ctx_max = 0;
    {
        const char *arch = NULL;
        size_t al = 0;
        char key[96];
        if (ap_gguf_get_str(g, "general.architecture", &arch, &al, &e)) {
            fprintf(stderr, "bench-live: %s\n", e.msg);
            goto cleanup;
        }
        snprintf(key, sizeof key, "%.*s.context_length", (int)al, arch);
        if (ap_gguf_get_int(g, key, &ctx_max, &e)) {
            fprintf(stderr, "bench-live: %s\n", e.msg);
            goto cleanup;
        }
    }
    int ctxs[MAX_CTX];
    int n_ctx = parse_ints(ctx_arg, ctxs, MAX_CTX, (int)ctx_max);
    if (n_ctx <= 0) {
        fprintf(stderr,
                "bench-live: bad value '%s' for --contexts (at most %d of 256..%lld or max)\n",
                ctx_arg, MAX_CTX, (long long)ctx_max);
        rc = 2;
        goto cleanup;
    }
    int longest = 0;
    for (int i = 0; i < n_ctx; i++) longest = ctxs[i] > longest ? ctxs[i] : longest;
    size_t tlen = 0;
    /* ~4 characters per token in English text; 6 leaves room for code. */
    if (!(text = source_text(text_file, (size_t)longest * 6 * (size_t)n_texts, &tlen)) || tlen == 0) {
        fprintf(stderr, "bench-live: %s: cannot read prompts to cut contexts from\n", text_file);
        goto cleanup;
    }
    size_t n_ids = 0;
    if (ap_tokenizer_encode(tok, text, tlen, 0, &ids, &n_ids, &e)) {
        fprintf(stderr, "bench-live: %s\n", e.msg);
        goto cleanup;
    }
    if ((long)n_ids < (long)longest * n_texts) {
        fprintf(stderr, "bench-live: %s: only %zu tokens of text for %d texts of %d tokens\n",
                text_file, n_ids, n_texts, longest);
        goto cleanup;
    }
    /* One sample per context: the first ctx - gen tokens decoded back to text
     * (the runner tokenizes it again; the JSON reports the count it got). */
    char tmpl[] = "/tmp/bench-live-XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd < 0 || !(tf = fdopen(fd, "w"))) {
        fprintf(stderr, "bench-live: cannot create a temporary task file\n");
        goto cleanup;
    }
    tmp_path = strdup(tmpl);
    for (int si = 0; si < n_ctx * n_texts; si++) {
        /* Text t of a context starts t windows of the longest context into
         * the token stream, so the texts are disjoint. */
        const int i = si / n_texts, t = si % n_texts;
        const int n_prompt = ctxs[i] - gen - 8; /* a few tokens of slack for re-tokenization */
        if (n_prompt < 64) {
            fprintf(stderr, "bench-live: context %d too small for --gen %d\n", ctxs[i], gen);
            rc = 2;
            goto cleanup;
        }
        char *piece = NULL;
        size_t plen = 0;
        if (ap_tokenizer_decode(tok, ids + (size_t)t * (size_t)longest, (size_t)n_prompt, &piece,
                                &plen, &e)) {
            fprintf(stderr, "bench-live: %s\n", e.msg);
            goto cleanup;
        }
        cJSON *s = cJSON_CreateObject();
        char id[48], bucket[32];
        snprintf(id, sizeof id, "ctx-%d-text-%d", ctxs[i], t);
        snprintf(bucket, sizeof bucket, "ctx-%d", ctxs[i]);
        cJSON_AddStringToObject(s, "id", id);
        cJSON_AddStringToObject(s, "task", "bench");
        cJSON_AddStringToObject(s, "category", "bench");
        cJSON_AddStringToObject(s, "bucket", bucket);
        cJSON_AddStringToObject(s, "metric", "substring");
        cJSON_AddNumberToObject(s, "max_new_tokens", gen);
        cJSON_AddBoolToObject(s, "chat", 0);
        cJSON_AddStringToObject(s, "prompt", piece);
        cJSON *ans = cJSON_AddArrayToObject(s, "answers");
        cJSON_AddItemToArray(ans, cJSON_CreateString("-"));
        char *line = cJSON_PrintUnformatted(s);
        if (line) fprintf(tf, "%s\n", line);
        free(line);
        cJSON_Delete(s);
        free(piece);
    }
    if (fclose(tf) != 0) {
        tf = NULL;
        fprintf(stderr, "bench-live: cannot write %s\n", tmp_path);
        goto cleanup;
    }
    tf = NULL;

    ap_tasks_config c;
    ap_tasks_config_default(&c);
    c.model = model;
    c.tasks_file = tmp_path;
    c.budgets[0] = budget;
    c.n_budgets = 1;
    c.threads = threads;
    c.prefetch = prefetch;
    c.pred_stride = stride;
    c.pred_per_kv = per_kv;
    c.kv_type = kv_type;
    c.calib = calib;
    c.kv_mode = kv_mode;
    methods_copy = strdup(methods_arg);
    int uses_pred = 0;
    for (char *save = NULL, *t = strtok_r(methods_copy, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        if (c.n_methods >= AP_TASKS_MAX_METHODS) break;
        c.methods[c.n_methods++] = t;
        if (!strncmp(t, "attnpred", 8)) uses_pred = 1;
    }
    if (uses_pred) {
        c.predictors[0] = pred;
        c.n_predictors = 1;
    }
    if (ap_tasks_run(&c, &r, &e)) {
        fprintf(stderr, "bench-live: %s\n", e.msg);
        goto cleanup;
    }
    /* Weight bytes of one decode step, and the machine's limits, after the
     * timed runs so neither disturbs them. */
    double weight_bytes = 0;
    {
        ap_model *mdl = NULL;
        if (ap_model_load(g, &mdl, &e)) {
            fprintf(stderr, "bench-live: %s\n", e.msg);
            goto cleanup;
        }
        weight_bytes = (double)ap_model_decode_weight_bytes(mdl);
        ap_model_free(mdl);
    }
    ap_machine_limits L;
    const int have_limits = limits ? ap_machine_limits_measure(threads, &L) : 0;
    if (have_limits)
        printf("machine: read %.1f GB/s (1 thread %.1f), copy %.1f, triad %.1f; AVX2 FMA %.1f "
               "GFLOP/s (1 thread %.1f), %d threads\n",
               L.read, L.read1, L.copy, L.triad, L.fma, L.fma1, threads);
    root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "model", model);
    cJSON_AddNumberToObject(root, "weight_mb_per_token", weight_bytes / 1e6);
    if (have_limits) {
        cJSON *mj = cJSON_AddObjectToObject(root, "machine");
        cJSON_AddNumberToObject(mj, "read_gbps", L.read);
        cJSON_AddNumberToObject(mj, "read_gbps_1thread", L.read1);
        cJSON_AddNumberToObject(mj, "copy_gbps", L.copy);
        cJSON_AddNumberToObject(mj, "triad_gbps", L.triad);
        cJSON_AddNumberToObject(mj, "fma_gflops", L.fma);
        cJSON_AddNumberToObject(mj, "fma_gflops_1thread", L.fma1);
    }
    cJSON_AddNumberToObject(root, "threads", threads);
    cJSON_AddNumberToObject(root, "budget", budget);
    cJSON_AddNumberToObject(root, "pred_stride", stride);
    cJSON_AddBoolToObject(root, "pred_per_kv", per_kv);
    cJSON_AddBoolToObject(root, "prefetch", r->config.prefetch);
    cJSON_AddStringToObject(root, "kv_type", ap_kv_type_name(kv_type));
    cJSON_AddNumberToObject(root, "calib", calib);
    cJSON_AddStringToObject(root, "kv_mode", ap_kv_mode_name(kv_mode));
    printf("kv cache: %s, prefetch %s, calib %d\n", ap_kv_type_name(kv_type),
           r->config.prefetch ? "on" : "off", calib);
    cJSON *rows = cJSON_AddArrayToObject(root, "rows");
    if (r->n_samples != n_ctx * n_texts) {
        fprintf(stderr, "bench-live: %d samples decoded, %d expected\n", r->n_samples,
                n_ctx * n_texts);
        goto cleanup;
    }
    cJSON_AddNumberToObject(root, "texts", n_texts);
    for (int i = 0; i < n_ctx; i++) {
        /* Full KV over the context's texts: summed tokens and time. */
        double full_gen = 0, full_sec = 0, full_kv = 0, n_prompt = 0;
        for (int t = 0; t < n_texts; t++) {
            const ap_task_run *full = ap_tasks_run_at(r, i * n_texts + t, 0, 0);
            full_gen += full->n_gen;
            full_sec += full->decode_seconds;
            full_kv += full->resident_kv_bytes / n_texts;
            n_prompt += (double)r->samples[i * n_texts + t].n_prompt / n_texts;
        }
        const double full_tps = full_sec > 0 ? full_gen / full_sec : 0;
        for (int m = 1; m < r->n_methods; m++) {
            /* Sums over the texts; agreement and KL weighted by each text's
             * teacher-forced tokens (full KV's). */
            double gen_n = 0, sec = 0, score = 0, wait = 0, agree = 0, kl = 0, w = 0, kv = 0,
                   fkv = 0, a_lo = 1, a_hi = 0;
            cJSON *per = cJSON_CreateArray();
            for (int t = 0; t < n_texts; t++) {
                const int smp = i * n_texts + t;
                const ap_task_run *x = ap_tasks_run_at(r, smp, m, 0);
                const double wt = ap_tasks_run_at(r, smp, 0, 0)->n_gen;
                gen_n += x->n_gen;
                sec += x->decode_seconds;
                score += x->score_seconds;
                wait += x->prefetch_wait_seconds;
                agree += x->agreement * wt;
                kl += x->kl * wt;
                w += wt;
                kv += x->resident_kv_bytes / n_texts;
                fkv += x->full_kv_bytes / n_texts;
                a_lo = x->agreement < a_lo ? x->agreement : a_lo;
                a_hi = x->agreement > a_hi ? x->agreement : a_hi;
                cJSON_AddItemToArray(per, cJSON_CreateNumber(x->agreement));
            }
            const double n = gen_n > 0 ? gen_n : 1;
            const double tps = sec > 0 ? gen_n / sec : 0;
            const double agreement = w > 0 ? agree / w : 0, kl_mean = w > 0 ? kl / w : 0;
            const double pred_ms = 1e3 * score / n, step_ms = 1e3 * sec / n;
            const double mb_tok = (weight_bytes + kv) / 1e6;
            const double bw_frac = have_limits ? mb_tok * 1e6 * tps / 1e9 / L.read : 0.0;
            printf("ctx=%d method=%s budget=%d tps=%.1f full_tps=%.1f speedup=%.2fx "
                   "agreement=%.1f predictor_ms=%.2f step_ms=%.2f",
                   ctxs[i], r->methods[m].name, budget, tps, full_tps,
                   full_tps > 0 ? tps / full_tps : 0.0, 100.0 * agreement, pred_ms, step_ms);
            if (n_texts > 1) printf(" texts=%d agreement_range=%.1f-%.1f", n_texts, 100.0 * a_lo,
                                    100.0 * a_hi);
            if (have_limits) printf(" mb_token=%.1f bw_frac=%.2f", mb_tok, bw_frac);
            printf("\n");
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "ctx", ctxs[i]);
            cJSON_AddNumberToObject(o, "n_prompt", n_prompt);
            cJSON_AddStringToObject(o, "method", r->methods[m].name);
            cJSON_AddStringToObject(o, "label", r->methods[m].label);
            cJSON_AddNumberToObject(o, "texts", n_texts);
            cJSON_AddNumberToObject(o, "n_gen", gen_n);
            cJSON_AddNumberToObject(o, "tps", tps);
            cJSON_AddNumberToObject(o, "full_tps", full_tps);
            cJSON_AddNumberToObject(o, "speedup", full_tps > 0 ? tps / full_tps : 0.0);
            cJSON_AddNumberToObject(o, "agreement", agreement);
            cJSON_AddItemToObject(o, "agreement_per_text", per);
            cJSON_AddNumberToObject(o, "kl", kl_mean);
            cJSON_AddNumberToObject(o, "predictor_ms", pred_ms);
            cJSON_AddNumberToObject(o, "prefetch_wait_ms", 1e3 * wait / n);
            cJSON_AddNumberToObject(o, "step_ms", step_ms);
            cJSON_AddNumberToObject(o, "resident_kv_mb", kv / 1e6);
            cJSON_AddNumberToObject(o, "full_kv_mb", fkv / 1e6);
            cJSON_AddNumberToObject(o, "mb_token", mb_tok);
            if (have_limits) cJSON_AddNumberToObject(o, "bw_frac", bw_frac);
            const double full_mb = (weight_bytes + full_kv) / 1e6;
            cJSON_AddNumberToObject(o, "full_mb_token", full_mb);
            if (have_limits)
                cJSON_AddNumberToObject(o, "full_bw_frac", full_mb * 1e6 * full_tps / 1e9 / L.read);
            cJSON_AddItemToArray(rows, o);
        }
    }
    if (json_out) {
        char *s = cJSON_Print(root);
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp", json_out);
        FILE *f = s ? fopen(tmp, "w") : NULL;
        int ok = f && fputs(s, f) >= 0;
        if (f && fclose(f) != 0) ok = 0;
        free(s);
        if (!ok || rename(tmp, json_out) != 0) {
            fprintf(stderr, "bench-live: cannot write %s\n", json_out);
            remove(tmp);
            goto cleanup;
        }
    }
    rc = 0;
cleanup:
    if (tf) fclose(tf);
    if (tmp_path) remove(tmp_path);
    free(tmp_path);
    cJSON_Delete(root);
    ap_tasks_result_free(r);
    free(methods_copy);
    free(ids);
    free(text);
    ap_tokenizer_free(tok);
    ap_gguf_free(g);
    return rc;
}
