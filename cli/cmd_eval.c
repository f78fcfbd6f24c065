/* attnpred eval: evaluations over traces. `eval replay` replays every decode
 * step of the traces under each token-selection method and budget
 * (eval/replay.h, docs/eval.md). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "common/util.h"
#include "eval/replay.h"

static void eval_usage(FILE *out) {
    fprintf(out,
            "usage: attnpred eval <subcommand> [options]   (attnpred eval <subcommand> --help)\n\n"
            "subcommands:\n"
            "  replay    replay decoding from traces: attention recovery and hit rate of the\n"
            "            predictor against oracle, StreamingLLM, H2O, SnapKV, Quest, last-step\n"
            "            at several KV budgets\n");
}

static void replay_usage(FILE *out) {
    fprintf(out,
        "usage: attnpred eval replay --traces T.h5[,T2.h5] --json OUT.json [options]\n\n"
        "Replay every decode step of every layer and query head of the traces: at each\n"
        "budget B = sink + local + k blocks, each method chooses k candidate blocks and\n"
        "is scored on the true attention row (recovery = attention mass kept, hit rate =\n"
        "overlap with the oracle's k blocks). No model needed. Semantics: docs/eval.md.\n\n"
        "methods (default: all the inputs allow):\n"
        "  oracle            top-k of the true row (upper bound)\n"
        "  streaming         StreamingLLM: the most recent blocks (eviction)\n"
        "  h2o               H2O accumulated attention (eviction; needs prefill_colsum)\n"
        "  snapkv            SnapKV prefill vote, fixed after prefill (eviction)\n"
        "  quest             Quest page key bounds x query (retrieval; needs query/keys)\n"
        "  last_step         newest row of the sparse/calibrated history (retrieval)\n"
        "  last_step_dense   previous dense row (needs dense attention every step)\n"
        "  attnpred          every --predictor on the sparse/calibrated history; LABEL\n"
        "                    names one of them\n"
        "  attnpred_nocal    the same without calibration rows (LABEL_nocal for one)\n\n"
        "options:\n"
        "  --traces LIST        comma-separated trace files (required)\n"
        "  --predictor LIST     exported predictors P.safetensors[=LABEL], comma-separated\n"
        "                       (labels default to attnpred, attnpred2, ...); without it\n"
        "                       the predictor methods are skipped\n"
        "  --budget LIST        budgets in tokens (default 256,512,1024,2048)\n"
        "  --methods LIST       methods to run, comma-separated (default: all available)\n"
        "  --sink N             always-kept leading tokens (default 64; multiple of block)\n"
        "  --local N            always-kept trailing tokens (default 64; multiple of block)\n"
        "  --calib N            dense history row every N decode steps, first at step N\n"
        "                       (default 5; 0 = never)\n"
        "  --kv-mode M          qhead: each query head selects (the method; default);\n"
        "                       sum: scores summed over a KV head's group, one set per\n"
        "                       KV head; union: round-robin union of the group's rankings\n"
        "  --dense-layers LIST  layers kept dense: not replayed, not counted (e.g. 0,1)\n"
        "  --snapkv-window N    SnapKV observation window, prefill rows (default 32)\n"
        "  --snapkv-pool N      SnapKV vote max-pooling over N blocks, odd (default 1)\n"
        "  --max-seqs N         first N sequences of each trace (default all)\n"
        "  --max-steps N        first N decode steps of each sequence (default all)\n"
        "  --threads N          worker threads over (sequence, layer) tasks (default 2)\n"
        "  --naive              recompute the whole CNN every step instead of updating it\n"
        "                       incrementally (same scores to ~1e-6; slower; for checks)\n"
        "  --json PATH          write every aggregate as JSON (required)\n"
        "  --md PATH            write a Markdown table\n"
        "  --png DIR            write plots into DIR (created if missing)\n"
        "  --quiet              no progress or notes on stderr\n"
        "  --help               this text\n");
}

static int parse_ints(const char *s, int *out, int cap, int *n, int min_v) {
    char *copy = strdup(s);
    if (!copy) return 0;
    int ok = 1;
    *n = 0;
    for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end = NULL;
        long v = strtol(t, &end, 10);
        if (*end || end == t || v < min_v || v > 100000000 || *n >= cap) {
            ok = 0;
            break;
        }
        out[(*n)++] = (int)v;
    }
    free(copy);
    return ok && *n > 0;
}

static int parse_int(const char *s, int min_v, int max_v, int *out) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < min_v || v > max_v) return 0;
    *out = (int)v;
    return 1;
}

/* Splits a comma list in place into at most cap items; 0 when empty or too many. */
static int split_list(char *s, const char **items, int cap, int *n) {
    *n = 0;
    for (char *save = NULL, *t = strtok_r(s, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (*n >= cap) return 0;
        items[(*n)++] = t;
    }
    return *n > 0;
}

typedef struct {
    ap_progress bar;
} progress_state;

static void on_progress(void *user, long long done, long long total) {
    progress_state *p = user;
    p->bar.total = (double)total;
    ap_progress_update(&p->bar, (double)done);
}

static void print_table(const ap_replay_result *r) {
    printf("\n%-22s %-9s", "method", "kind");
    for (int b = 0; b < r->n_budgets; b++) printf("  B=%-12d", r->budgets[b]);
    printf("\n%-32s", "");
    for (int b = 0; b < r->n_budgets; b++) printf("  %-14s", "recov% (hit%)");
    printf("\n");
    for (int m = 0; m < r->n_methods; m++) {
        printf("%-22s %-9s", r->methods[m].name, ap_sel_kind_name(r->methods[m].kind));
        for (int b = 0; b < r->n_budgets; b++) {
            const ap_replay_cell *c = ap_replay_cell_at(r, m, b);
            char cell[32];
            if (c->n > 0)
                snprintf(cell, sizeof cell, "%.2f (%.1f)", 100.0 * c->recovery.mean,
                         100.0 * c->hit_rate.mean);
            else
                snprintf(cell, sizeof cell, "-");
            printf("  %-14s", cell);
        }
        printf("\n");
    }
    const ap_replay_cell *c0 = r->n_methods > 0 ? ap_replay_cell_at(r, 0, 0) : NULL;
    printf("\n%d sequences, %lld decode steps, mean context %.0f (max %.0f) tokens, "
           "%lld (step, head) rows per cell",
           r->n_seq, r->n_decode_steps, r->mean_context, r->max_context, c0 ? c0->n : 0LL);
    if (c0 && c0->n_bypass) printf(" (%lld bypassed: < min candidates)", c0->n_bypass);
    printf(", %.1f s\n", r->seconds);
    for (int m = 0; m < r->n_methods; m++)
        if (r->methods[m].is_predictor && !isnan(r->pred_us_per_step_head[m]))
            printf("%s: %.3g MMAC naive, %.3g MMAC run, %.1f us per (step, head)\n",
                   r->methods[m].name, r->pred_naive_macs[m] / 1e6, r->pred_run_macs[m] / 1e6,
                   r->pred_us_per_step_head[m]);
    if (r->n_skipped_nonfinite)
        printf("%lld (step, head) rows skipped for NaN/Inf\n", r->n_skipped_nonfinite);
}

static int check_out_dir(const char *path, const char *opt) {
    ap_err e;
    ap_err_clear(&e);
    if (ap_check_writable_dir(path, &e)) {
        ap_cli_error("eval replay", "%s: %s", opt, e.msg);
        return 0;
    }
    return 1;
}

static int cmd_replay(int argc, char **argv) {
    ap_replay_config c;
    ap_replay_config_default(&c);
    const char *json = NULL, *md = NULL, *png = NULL;
    char *traces_copy = NULL, *pred_copy = NULL, *methods_copy = NULL;
    int quiet = 0, rc = 2;
    ap_replay_result *r = NULL;
    enum { O_TRACES = 256, O_PRED, O_BUDGET, O_METHODS, O_SINK, O_LOCAL, O_CALIB, O_KV, O_DENSE,
           O_SKW, O_SKP, O_MAXSEQ, O_MAXSTEP, O_THREADS, O_NAIVE, O_JSON, O_MD, O_PNG, O_QUIET,
           O_HELP };
    static const struct option lo[] = {
        {"traces", 1, 0, O_TRACES},        {"predictor", 1, 0, O_PRED},
        {"budget", 1, 0, O_BUDGET},        {"budgets", 1, 0, O_BUDGET},
        {"methods", 1, 0, O_METHODS},      {"sink", 1, 0, O_SINK},
        {"local", 1, 0, O_LOCAL},          {"calib", 1, 0, O_CALIB},
        {"kv-mode", 1, 0, O_KV},           {"dense-layers", 1, 0, O_DENSE},
        {"snapkv-window", 1, 0, O_SKW},    {"snapkv-pool", 1, 0, O_SKP},
        {"max-seqs", 1, 0, O_MAXSEQ},      {"max-steps", 1, 0, O_MAXSTEP},
        {"threads", 1, 0, O_THREADS},      {"naive", 0, 0, O_NAIVE},
        {"json", 1, 0, O_JSON},            {"md", 1, 0, O_MD},
        {"png", 1, 0, O_PNG},              {"quiet", 0, 0, O_QUIET},
        {"help", 0, 0, O_HELP},            {0, 0, 0, 0}};
    optind = 1;
    opterr = 0;
    int o, li = -1;
    while ((o = getopt_long(argc, argv, "", lo, &li)) != -1) {
        switch (o) {
        case O_TRACES:
            free(traces_copy);
            traces_copy = strdup(optarg);
            if (!traces_copy || !split_list(traces_copy, c.traces, AP_REPLAY_MAX_TRACES, &c.n_traces))
                goto bad;
            break;
        case O_PRED:
            free(pred_copy);
            pred_copy = strdup(optarg);
            if (!pred_copy ||
                !split_list(pred_copy, c.predictors, AP_REPLAY_MAX_PREDICTORS, &c.n_predictors))
                goto bad;
            for (int p = 0; p < c.n_predictors; p++) {
                char *eq = strchr((char *)c.predictors[p], '=');
                c.predictor_labels[p] = NULL;
                if (eq) {
                    *eq = '\0';
                    c.predictor_labels[p] = eq + 1;
                    if (!eq[1] || eq == c.predictors[p]) goto bad;
                }
            }
            break;
        case O_BUDGET:
            if (!parse_ints(optarg, c.budgets, AP_REPLAY_MAX_BUDGETS, &c.n_budgets, 1)) goto bad;
            break;
        case O_METHODS:
            free(methods_copy);
            methods_copy = strdup(optarg);
            if (!methods_copy || !split_list(methods_copy, c.methods, AP_REPLAY_MAX_METHODS, &c.n_methods))
                goto bad;
            break;
        case O_SINK: if (!parse_int(optarg, 0, 1 << 24, &c.sink_tokens)) goto bad; break;
        case O_LOCAL: if (!parse_int(optarg, 0, 1 << 24, &c.local_tokens)) goto bad; break;
        case O_CALIB: if (!parse_int(optarg, 0, 1 << 24, &c.calib)) goto bad; break;
        case O_KV:
            if (!strcmp(optarg, "qhead")) c.kv_mode = AP_KV_PER_QHEAD;
            else if (!strcmp(optarg, "sum")) c.kv_mode = AP_KV_SUM;
            else if (!strcmp(optarg, "union")) c.kv_mode = AP_KV_UNION;
            else goto bad;
            break;
        case O_DENSE:
            if (!parse_ints(optarg, c.dense_layers, AP_REPLAY_MAX_LAYERS, &c.n_dense_layers, 0))
                goto bad;
            break;
        case O_SKW: if (!parse_int(optarg, 1, 1 << 24, &c.snapkv_window)) goto bad; break;
        case O_SKP:
            if (!parse_int(optarg, 1, 1023, &c.snapkv_pool) || c.snapkv_pool % 2 == 0) goto bad;
            break;
        case O_MAXSEQ: if (!parse_int(optarg, 1, 1 << 30, &c.max_seqs)) goto bad; break;
        case O_MAXSTEP: if (!parse_int(optarg, 1, 1 << 30, &c.max_steps)) goto bad; break;
        case O_THREADS: if (!parse_int(optarg, 1, 256, &c.threads)) goto bad; break;
        case O_NAIVE: c.incremental = 0; break;
        case O_JSON: json = optarg; break;
        case O_MD: md = optarg; break;
        case O_PNG: png = optarg; break;
        case O_QUIET: quiet = 1; break;
        case O_HELP: replay_usage(stdout); rc = 0; goto done;
        default:
            ap_cli_error("eval replay", "unknown or incomplete option '%s' (see --help)",
                         argv[optind - 1]);
            goto done;
        }
        li = -1;
        continue;
    bad:
        ap_cli_error("eval replay", "bad value '%s' for --%s (see --help)", optarg,
                     li >= 0 ? lo[li].name : "an option");
        goto done;
    }
    if (optind < argc) {
        ap_cli_error("eval replay", "unexpected argument '%s' (see --help)", argv[optind]);
        goto done;
    }
    if (c.n_traces < 1 || !json) {
        ap_cli_error("eval replay", "--traces and --json are required (see --help)");
        goto done;
    }
    for (int i = 0; i < c.n_traces; i++)
        if (!ap_file_exists(c.traces[i])) {
            ap_cli_error("eval replay", "--traces: %s: no such file", c.traces[i]);
            rc = 1;
            goto done;
        }
    for (int i = 0; i < c.n_predictors; i++)
        if (!ap_file_exists(c.predictors[i])) {
            ap_cli_error("eval replay", "--predictor: %s: no such file", c.predictors[i]);
            rc = 1;
            goto done;
        }
    /* Check the outputs before a long replay, not after it. */
    rc = 1;
    if (!check_out_dir(json, "--json") || (md && !check_out_dir(md, "--md"))) goto done;
    if (png) {
        struct stat sb;
        if (stat(png, &sb) == 0 ? !S_ISDIR(sb.st_mode) : !check_out_dir(png, "--png")) {
            if (stat(png, &sb) == 0) ap_cli_error("eval replay", "--png: %s is not a directory", png);
            goto done;
        }
    }
    progress_state ps;
    ap_progress_init(&ps.bar, stderr, "replay", "steps", 0.0, !quiet);
    c.progress = on_progress;
    c.progress_user = &ps;
    ap_err err;
    ap_err_clear(&err);
    if (ap_replay_run(&c, &r, &err)) {
        if (!quiet) fputc('\n', stderr);
        ap_cli_error("eval replay", "%s", err.msg);
        goto done;
    }
    ap_progress_finish(&ps.bar);
    if (!quiet)
        for (int i = 0; i < r->n_dropped; i++)
            fprintf(stderr, "eval replay: note: %s not run: %s\n", r->dropped[i],
                    r->dropped_reason[i]);
    if (ap_replay_write_json(r, json, &err) || (md && ap_replay_write_md(r, md, &err)) ||
        (png && ap_replay_write_png(r, png, &err))) {
        ap_cli_error("eval replay", "%s", err.msg);
        goto done;
    }
    print_table(r);
    rc = 0;
done:
    ap_replay_result_free(r);
    free(traces_copy);
    free(pred_copy);
    free(methods_copy);
    return rc;
}

int ap_cmd_eval(int argc, char **argv) {
    if (argc < 2) {
        eval_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        eval_usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "replay")) return cmd_replay(argc - 1, argv + 1);
    ap_cli_error("eval", "unknown subcommand '%s' (see attnpred eval --help)", argv[1]);
    return 2;
}
