#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/capture.h"
#include "cli/cli.h"
#include "common/util.h"

#ifndef AP_DATA_DIR
#define AP_DATA_DIR "data"
#endif

static void capture_usage(FILE *out) {
    fprintf(out,
        "usage: attnpred capture --model M.gguf [options]\n\n"
        "Run a Llama-family GGUF model on a prompt set: prefill each prompt, decode\n"
        "greedily, and record the attention of every layer and query head for the\n"
        "last --history prefill queries and every decode query, as an HDF5 trace\n"
        "(schema: docs/trace-format.md).\n\n"
        "options:\n"
        "  --model PATH        GGUF model (required)\n"
        "  --prompts PATH      JSON Lines prompt set (default: %s/prompts/default.jsonl,\n"
        "                      or $ATTNPRED_DATA/prompts/default.jsonl)\n"
        "  --out PATH          trace to write (default: trace.h5)\n"
        "  --gen N             tokens to decode per prompt (default 64)\n"
        "  --history N         prefill query rows recorded (default 64)\n"
        "  --block N           block size of the pooled views (default 16)\n"
        "  --raw-layers LIST   also store full attention rows for these layers:\n"
        "                      comma list (0,14,29) or 'all'\n"
        "  --shard I/N         capture only prompts with index %% N == I (0 <= I < N)\n"
        "  --resume            continue an interrupted capture from OUT.partial\n"
        "  --force             overwrite an existing OUT\n"
        "  --threads N         CPU threads (default 2)\n"
        "  --device D          cpu (default) or cuda: the CUDA engine pools the views on\n"
        "                      the GPU (float32 weights; --block a multiple of 16);\n"
        "                      traces agree with the CPU's within the CPU/GPU tolerance\n"
        "  --no-stop-eos       keep decoding after the end-of-sequence token\n"
        "  --no-quest          do not store query vectors / key bounds (Quest replay)\n"
        "  --no-colsum         do not store prefill column sums (H2O replay)\n"
        "  --json PATH         write run statistics as JSON\n"
        "  --quiet             no progress output\n"
        "  --help              this text\n",
        AP_DATA_DIR);
}

static int parse_int(const char *s, int *out) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!s[0] || *end || v < -1000000000L || v > 1000000000L) return 0;
    *out = (int)v;
    return 1;
}

static int parse_raw_layers(const char *s, ap_capture_opts *o) {
    if (!strcmp(s, "all")) {
        o->n_raw_layers = -1;
        return 1;
    }
    char *copy = strdup(s);
    if (!copy) return 0;
    int ok = 1;
    o->n_raw_layers = 0;
    for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int v;
        if (!parse_int(t, &v) || v < 0 || o->n_raw_layers >= AP_CAPTURE_MAX_RAW) {
            ok = 0;
            break;
        }
        o->raw_layers[o->n_raw_layers++] = v;
    }
    free(copy);
    return ok && o->n_raw_layers > 0;
}

static int write_stats_json(const char *path, const ap_capture_opts *o, const ap_capture_stats *s) {
    char tmp[4096];
    ap_tmp_name(tmp, sizeof tmp, path);
    FILE *f = fopen(tmp, "w");
    if (!f) return 0;
    fprintf(f,
            "{\n  \"out\": \"%s\",\n  \"sequences_written\": %d,\n  \"sequences_skipped\": %d,\n"
            "  \"prompt_tokens\": %ld,\n  \"gen_tokens\": %ld,\n  \"prefill_seconds\": %.3f,\n"
            "  \"decode_seconds\": %.3f,\n  \"write_seconds\": %.3f,\n  \"total_seconds\": %.3f,\n"
            "  \"prefill_tokens_per_s\": %.2f,\n  \"decode_tokens_per_s\": %.2f,\n"
            "  \"out_bytes\": %lld,\n  \"threads\": %d,\n  \"device\": \"%s\",\n"
            "  \"peak_rss_bytes\": %zu\n}\n",
            o->out_path, s->n_sequences, s->n_skipped, s->prompt_tokens, s->gen_tokens,
            s->prefill_seconds, s->decode_seconds, s->write_seconds, s->total_seconds,
            s->prefill_seconds > 0 ? s->prompt_tokens / s->prefill_seconds : 0.0,
            s->decode_seconds > 0 ? s->gen_tokens / s->decode_seconds : 0.0, s->out_bytes,
            o->threads, o->device == AP_CAPTURE_CUDA ? "cuda" : "cpu", ap_peak_rss_bytes());
    int ok = fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return 0;
    }
    return 1;
}

int ap_cmd_capture(int argc, char **argv) {
    ap_capture_opts o;
    ap_capture_opts_default(&o);
    o.out_path = "trace.h5";
    const char *json_path = NULL;
    int quiet = 0;
    char default_prompts[4096];
    const char *data_dir = getenv("ATTNPRED_DATA");
    snprintf(default_prompts, sizeof default_prompts, "%s/prompts/default.jsonl",
             data_dir && data_dir[0] ? data_dir : AP_DATA_DIR);
    o.prompts_path = default_prompts;

    enum { O_MODEL = 256, O_PROMPTS, O_OUT, O_GEN, O_HIST, O_BLOCK, O_RAW, O_SHARD, O_RESUME,
           O_FORCE, O_THREADS, O_NOEOS, O_NOQUEST, O_NOCOLSUM, O_JSON, O_QUIET, O_HELP,
           O_DEVICE };
    static const struct option longopts[] = {
        {"model", required_argument, 0, O_MODEL},     {"prompts", required_argument, 0, O_PROMPTS},
        {"out", required_argument, 0, O_OUT},         {"gen", required_argument, 0, O_GEN},
        {"history", required_argument, 0, O_HIST},    {"block", required_argument, 0, O_BLOCK},
        {"raw-layers", required_argument, 0, O_RAW},  {"shard", required_argument, 0, O_SHARD},
        {"resume", no_argument, 0, O_RESUME},         {"force", no_argument, 0, O_FORCE},
        {"threads", required_argument, 0, O_THREADS}, {"no-stop-eos", no_argument, 0, O_NOEOS},
        {"no-quest", no_argument, 0, O_NOQUEST},      {"no-colsum", no_argument, 0, O_NOCOLSUM},
        {"json", required_argument, 0, O_JSON},       {"quiet", no_argument, 0, O_QUIET},
        {"help", no_argument, 0, O_HELP},             {"device", required_argument, 0, O_DEVICE},
        {0, 0, 0, 0}};
    optind = 1;
    opterr = 0;
    int c, li = -1;
    while ((c = getopt_long(argc, argv, "", longopts, &li)) != -1) {
        switch (c) {
        case O_MODEL: o.model_path = optarg; break;
        case O_PROMPTS: o.prompts_path = optarg; break;
        case O_OUT: o.out_path = optarg; break;
        case O_GEN:
            if (!parse_int(optarg, &o.n_gen) || o.n_gen < 1) goto bad_value;
            break;
        case O_HIST:
            if (!parse_int(optarg, &o.history) || o.history < 1) goto bad_value;
            break;
        case O_BLOCK:
            if (!parse_int(optarg, &o.block_size) || o.block_size < 1) goto bad_value;
            break;
        case O_RAW:
            if (!parse_raw_layers(optarg, &o)) goto bad_value;
            break;
        case O_SHARD: {
            int i, n;
            char tail;
            if (sscanf(optarg, "%d/%d%c", &i, &n, &tail) != 2 || n < 1 || i < 0 || i >= n)
                goto bad_value;
            o.shard_index = i;
            o.shard_count = n;
            break;
        }
        case O_RESUME: o.resume = 1; break;
        case O_FORCE: o.force = 1; break;
        case O_THREADS:
            if (!parse_int(optarg, &o.threads) || o.threads < 1 || o.threads > 256) goto bad_value;
            break;
        case O_NOEOS: o.stop_at_eos = 0; break;
        case O_NOQUEST: o.with_quest = 0; break;
        case O_NOCOLSUM: o.with_colsum = 0; break;
        case O_JSON: json_path = optarg; break;
        case O_QUIET: quiet = 1; break;
        case O_HELP: capture_usage(stdout); return 0;
        case O_DEVICE:
            if (!strcmp(optarg, "cpu"))
                o.device = AP_CAPTURE_CPU;
            else if (!strcmp(optarg, "cuda"))
                o.device = AP_CAPTURE_CUDA;
            else
                goto bad_value;
            break;
        default:
            ap_cli_error("capture", "unknown or incomplete option '%s' (see --help)",
                         argv[optind - 1]);
            return 2;
        }
        continue;
    bad_value:
        ap_cli_error("capture", "bad value '%s' for --%s (see --help)", optarg,
                     li >= 0 ? longopts[li].name : "an option");
        return 2;
    }
    if (optind < argc) {
        ap_cli_error("capture", "unexpected argument '%s' (see --help)", argv[optind]);
        return 2;
    }
    if (!o.model_path) {
        ap_cli_error("capture", "--model is required (see --help)");
        return 2;
    }
    if (o.resume && o.force) {
        ap_cli_error("capture", "--resume and --force exclude each other");
        return 2;
    }
    o.log = quiet ? NULL : stderr;
    o.progress = !quiet;

    ap_err err;
    ap_err_clear(&err);
    ap_capture_stats stats;
    ap_status st = ap_capture_run(&o, &stats, &err);
    if (st) {
        ap_cli_error("capture", "%s", err.msg);
        return 1;
    }
    if (!quiet)
        fprintf(stderr,
                "capture: wrote %s: %d sequences (%d already complete), %ld prompt + %ld "
                "generated tokens, prefill %.1f tok/s, decode %.1f tok/s, %.1f MB\n",
                o.out_path, stats.n_sequences, stats.n_skipped, stats.prompt_tokens,
                stats.gen_tokens,
                stats.prefill_seconds > 0 ? stats.prompt_tokens / stats.prefill_seconds : 0.0,
                stats.decode_seconds > 0 ? stats.gen_tokens / stats.decode_seconds : 0.0,
                stats.out_bytes / 1e6);
    if (json_path && !write_stats_json(json_path, &o, &stats)) {
        ap_cli_error("capture", "%s: cannot write statistics", json_path);
        return 1;
    }
    return 0;
}
