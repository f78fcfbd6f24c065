/* attnpred eval: evaluations of KV selection. `eval replay` replays every
 * decode step of traces under each token-selection method and budget
 * (eval/replay.h, docs/eval.md); `eval tasks` decodes the task suite live
 * with the compressed cache and scores the answers (eval/tasks.h,
 * docs/eval-tasks.md). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "common/util.h"
#include "eval/replay.h"
#include "eval/selectors.h"
#include "eval/task_report.h"
#include "eval/tasks.h"

#ifndef AP_DATA_DIR
#define AP_DATA_DIR "data"
#endif

static void eval_usage(FILE *out) {
    fprintf(out,
            "usage: attnpred eval <subcommand> [options]   (attnpred eval <subcommand> --help)\n\n"
            "subcommands:\n"
            "  replay    replay decoding from traces: attention recovery and hit rate of the\n"
            "            predictor against oracle, StreamingLLM, H2O, SnapKV, Quest, last-step\n"
            "            at several KV budgets\n"
            "  tasks     decode the LongBench-style task suite with each method's compressed\n"
            "            KV cache: task score, agreement and KL against full KV, KV memory\n");
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
        "  attnpred          every --predictor on the sparse/calibrated history, each\n"
        "                    as its own method NAME; NAME selects one of them\n"
        "  attnpred_nocal    the same without calibration rows (NAME_nocal for one)\n\n"
        "options:\n"
        "  --traces LIST        comma-separated trace files (required)\n"
        "  --predictor LIST     exported predictors to compare, comma-separated NAME=PATH\n"
        "                       or bare PATH (named attnpred, attnpred2, ... by position);\n"
        "                       NAME: letters, digits, _ . + -, no built-in method's name,\n"
        "                       not ending in _nocal; at most %d; each predictor's block must\n"
        "                       be the traces' and its history at most theirs. Without it\n"
        "                       the predictor methods are skipped\n"
        "  --budget LIST        budgets in tokens, each above sink + local\n"
        "                       (default 256,512,1024,2048)\n"
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
        "  --max-steps N        first N decode steps of each sequence (default 0: all)\n"
        "  --threads N          worker threads over (sequence, layer) tasks (default 2)\n"
        "  --naive              recompute the whole CNN every step instead of updating it\n"
        "                       incrementally (same scores to ~1e-6; slower; for checks)\n"        "  --pred-stride S      run the predictor's CNN every S decode steps and reuse its\n"
        "                       scores between (query fusion still every step; default 1)\n"
        "  --pred-per-kv        one CNN per KV head, on the mean history of its query heads\n"
        "                       (default: one per query head, the method as published)\n"

        "  --json PATH          write every aggregate as JSON (required)\n"
        "  --md PATH            write a Markdown table\n"
        "  --png DIR            write plots into DIR (created if missing)\n"
        "  --quiet              no progress or notes on stderr\n"
        "  --help               this text\n",
        AP_REPLAY_MAX_PREDICTORS);
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

/* --predictor LIST: comma-separated NAME=PATH or bare PATH entries, split in
 * place (the first '=' ends the name, so a path holding '=' needs a NAME=;
 * a bare path's name is NULL: the library's default). Names are checked
 * with check_predictor_names once every option is read. 0 after printing
 * the message (a usage error). */
static int parse_predictors(const char *cmd, const char *arg, char *s, const char **paths,
                            const char **names, int *n) {
    int count = 1;
    for (const char *p = s; *p; p++) count += *p == ',';
    *n = 0;
    if (count > AP_REPLAY_MAX_PREDICTORS) {
        ap_cli_error(cmd, "--predictor: %d predictors given, at most %d", count,
                     AP_REPLAY_MAX_PREDICTORS);
        return 0;
    }
    /* Not strtok: an empty entry ("a,,b") is an empty path, not skipped. */
    for (char *t = s, *next; t; t = next) {
        next = strchr(t, ',');
        if (next) *next++ = '\0';
        char *eq = strchr(t, '=');
        names[*n] = NULL;
        paths[*n] = t;
        if (eq) {
            *eq = '\0';
            names[*n] = t;
            paths[*n] = eq + 1;
            if (!*t) {
                ap_cli_error(cmd, "--predictor: empty name in '%s'", arg);
                return 0;
            }
        }
        if (!*paths[*n]) {
            ap_cli_error(cmd, "--predictor: empty path in '%s'", arg);
            return 0;
        }
        (*n)++;
    }
    return 1;
}

/* The predictors' method names, checked before any file is read. */
static int check_predictor_names(const char *cmd, const char *const *paths,
                                 const char *const *names, int n,
                                 char (*out)[AP_REPLAY_PRED_NAME_MAX + 1]) {
    ap_err e;
    ap_err_clear(&e);
    if (ap_sel_predictor_names(paths, names, n, out, &e)) {
        ap_cli_error(cmd, "--predictor: %s", e.msg);
        return 0;
    }
    return 1;
}

/* Every predictor file exists (an input error, exit 1). */
static int check_predictor_files(const char *cmd, const char *const *paths, int n) {
    for (int i = 0; i < n; i++)
        if (!ap_file_exists(paths[i])) {
            ap_cli_error(cmd, "--predictor: %s: no such file", paths[i]);
            return 0;
        }
    return 1;
}

typedef struct {
    ap_progress bar;
} progress_state;

static void on_progress(void *user, long long done, long long total, double work_done,
                        double work_total) {
    progress_state *p = user;
    ap_progress_update_work(&p->bar, (double)done, (double)total, work_done, work_total);
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

/* The budgets against the always-kept sink + local tokens, before any input
 * is read. A replay needs every budget above them: at or below, no block is
 * left to choose, every method keeps the same tokens and the table is all
 * ties. A live decode at exactly sink + local still runs (sink and local
 * only), so `eval tasks` refuses only budgets below. */
static int check_budgets(const char *cmd, const int *budgets, int n, int sink_local,
                         int need_above) {
    for (int b = 0; b < n; b++) {
        if (need_above && budgets[b] <= sink_local) {
            ap_cli_error(cmd,
                         "--budget %d is not above sink + local = %d tokens (budgets must "
                         "exceed %d)",
                         budgets[b], sink_local, sink_local);
            return 0;
        }
        if (budgets[b] < sink_local) {
            ap_cli_error(cmd, "--budget %d is below sink + local = %d tokens", budgets[b],
                         sink_local);
            return 0;
        }
    }
    return 1;
}

static int check_out_dir(const char *cmd, const char *path, const char *opt) {
    ap_err e;
    ap_err_clear(&e);
    if (ap_check_writable_dir(path, &e)) {
        ap_cli_error(cmd, "%s: %s", opt, e.msg);
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
           O_HELP, O_PSTRIDE, O_PKV };
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
        {"help", 0, 0, O_HELP},            {"pred-stride", 1, 0, O_PSTRIDE},
        {"pred-per-kv", 0, 0, O_PKV},      {0, 0, 0, 0}};
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
            if (!pred_copy) goto bad;
            if (!parse_predictors("eval replay", optarg, pred_copy, c.predictors,
                                  c.predictor_names, &c.n_predictors))
                goto done;
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
        case O_MAXSTEP: if (!parse_int(optarg, 0, 1 << 30, &c.max_steps)) goto bad; break;
        case O_THREADS: if (!parse_int(optarg, 1, 256, &c.threads)) goto bad; break;
        case O_NAIVE: c.incremental = 0; break;
        case O_PSTRIDE: if (!parse_int(optarg, 1, 4096, &c.pred_stride)) goto bad; break;
        case O_PKV: c.pred_per_kv = 1; break;
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
    if (!check_budgets("eval replay", c.budgets, c.n_budgets, c.sink_tokens + c.local_tokens, 1))
        goto done;
    char pred_names[AP_REPLAY_MAX_PREDICTORS][AP_REPLAY_PRED_NAME_MAX + 1];
    if (!check_predictor_names("eval replay", c.predictors, c.predictor_names, c.n_predictors,
                               pred_names))
        goto done;
    for (int i = 0; i < c.n_traces; i++)
        if (!ap_file_exists(c.traces[i])) {
            ap_cli_error("eval replay", "--traces: %s: no such file", c.traces[i]);
            rc = 1;
            goto done;
        }
    if (!check_predictor_files("eval replay", c.predictors, c.n_predictors)) {
        rc = 1;
        goto done;
    }
    /* Check the outputs before a long replay, not after it. */
    rc = 1;
    if (!check_out_dir("eval replay", json, "--json") ||
        (md && !check_out_dir("eval replay", md, "--md")))
        goto done;
    if (png) {
        struct stat sb;
        if (stat(png, &sb) == 0 ? !S_ISDIR(sb.st_mode) : !check_out_dir("eval replay", png, "--png")) {
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

/* ---- eval tasks ---------------------------------------------------------- */

/* What --methods accepts besides the predictors' names. */
static const char *const k_task_methods[] = {"full",      "oracle",          "streaming",
                                             "h2o",       "snapkv",          "quest",
                                             "last_step", "last_step_dense", "attnpred",
                                             "attnpred_nocal"};

static void tasks_usage(FILE *out) {
    fprintf(out,
        "usage: attnpred eval tasks --model M.gguf --json OUT.json [options]\n\n"
        "Decode the LongBench-style task suite (docs/tasks.md) live with a compressed KV\n"
        "cache: each sample is prefilled once with full attention, then full KV and every\n"
        "(method, budget) decode greedily from that prefill with the method's kept set\n"
        "applied inside attention; each output is scored with the task's LongBench metric\n"
        "and compared with the full-KV output. Semantics: docs/eval-tasks.md.\n\n"
        "methods (full KV always runs as the reference; default: all, the predictors\n"
        "only with --predictor):\n"
        "  oracle            top-k of the true attention row (upper bound)\n"
        "  streaming         StreamingLLM: sink + the most recent blocks (eviction)\n"
        "  h2o               H2O accumulated attention (eviction)\n"
        "  snapkv            SnapKV prefill vote, fixed after prefill (eviction)\n"
        "  quest             Quest page key bounds x query (retrieval)\n"
        "  last_step         newest row of the sparse/calibrated history (retrieval)\n"
        "  last_step_dense   previous dense row (a reference: dense attention every step)\n"
        "  attnpred          every --predictor CNN on the sparse/calibrated history\n"
        "                    (retrieval), each as its own method NAME; NAME selects one\n"
        "  attnpred_nocal    the same without calibration rows (NAME_nocal for one; not\n"
        "                    in the default set)\n\n"
        "metrics (per sample and run; means in the summaries):\n"
        "  score             the task's LongBench metric, 0..1 (x100 in the tables)\n"
        "  score_rel_full    mean score / mean full-KV score over the same samples\n"
        "  agreement         share of the full-KV output tokens a teacher-forced compressed\n"
        "                    decode predicts as its greedy choice\n"
        "  kl                mean KL(full || method) of the next-token distributions along\n"
        "                    that trajectory, nats per token\n"
        "  same              the free-running output equals the full-KV output\n"
        "  resident KV       measured on the hot pool attention reads (page slots of the\n"
        "                    kept blocks; --no-hot-pool: accounted from the kept sets);\n"
        "                    compression = full KV / resident KV\n\n"
        "options:\n"
        "  --model PATH         GGUF model (required)\n"
        "  --predictor LIST     exported predictors to compare, comma-separated NAME=PATH\n"
        "                       or bare PATH (named attnpred, attnpred2, ... by position);\n"
        "                       NAME: letters, digits, _ . + -, no built-in method's name,\n"
        "                       not ending in _nocal; at most %d; each predictor's block\n"
        "                       must be 16, the eval's. Each is loaded once and decodes\n"
        "                       as its own method with its own prefetch worker\n"
        "  --quick              the quick preset, tasks/quick.jsonl in the data folder\n"
        "                       (default): $ATTNPRED_DATA, else ./data when it has the\n"
        "                       file, else %s\n"
        "  --full               the full preset, tasks/full.jsonl in the same folder\n"
        "  --tasks-file PATH    another task file (JSON Lines, docs/tasks.md)\n"
        "  --tasks LIST         only these task names or sample ids, comma-separated\n"
        "  --budget LIST        KV budgets in tokens, each >= sink + local = 128\n"
        "                       (default 256,512,1024,2048)\n"
        "  --methods LIST       methods to run, comma-separated (default: all available)\n"
        "  --max-samples N      the first N samples after --tasks (default all)\n"
        "  --max-new N          decode at most N tokens per sample (default: each task's)\n"
        "  --calib N            dense history row every N decode steps for last_step and\n"
        "                       attnpred (default 5; 0 = never)\n"
        "  --kv-mode M          qhead: each query head selects (the method; default);\n"
        "                       sum: scores summed over a KV head's group, one set per\n"
        "                       KV head; union: round-robin union of the group's rankings\n"
        "  --pred-stride S      run the predictor's CNN every S decode steps and reuse its\n"
        "                       scores between (query fusion still every step; default 1)\n"
        "  --pred-per-kv        one CNN per KV head, on the mean history of its query heads\n"
        "                       (default: one per query head, the method as published)\n"
        "  --prefetch           score attnpred's next step on a prefetch worker thread\n"
        "                       while the model computes (cross-token prefetch)\n"
        "  --no-prefetch        score it on the decoding thread, split over the engine's\n"
        "                       threads (default: prefetch on a GPU run or where the\n"
        "                       machine has more CPUs than --threads; same choices)\n"
        "  --prefetch-threads N worker threads of the prefetch (default 1; on a GPU run the\n"
        "                       CPU is free for them)\n"
        "  --no-hot-pool        attend from the engine's contiguous cache and account KV\n"
        "                       memory from the kept sets instead of measuring a hot pool\n"
        "  --kv-type T          the engine's KV cache: f32 (default, exact) or f16 (half\n"
        "                       the bytes; CPU engine only; error in docs/engine.md)\n"
        "  --no-teacher-forced  skip the teacher-forced pass: agreement and KL then cover\n"
        "                       only the prefix shared with the full-KV output (faster)\n"
        "  --threads N          engine threads (default 2)\n"
        "  --resume             continue a run that was stopped: the samples its checkpoint\n"
        "                       (OUT.json.ckpt, written after every sample, removed once the\n"
        "                       reports are written) holds are not run again; refused when\n"
        "                       the checkpoint came from other inputs or options\n"
        "  --device D           cpu (default) or cuda: decode on the CUDA engine (the\n"
        "                       CPU hot pool does not apply there)\n"
        "  --kv-offload         with --device cuda: keep the KV cache in pinned host memory;\n"
        "                       each method attends from a device pool of its kept blocks,\n"
        "                       prefetched a step ahead (resident and fetched KV measured)\n"
        "  --json PATH          write every run and the summaries as JSON (required)\n"
        "  --md PATH            write Markdown tables\n"
        "  --png DIR            write score_vs_compression.png and agreement_vs_budget.png\n"
        "                       into DIR (created if missing)\n"
        "  --quiet              no progress, notes or summary table\n"
        "  --help               this text\n",
        AP_REPLAY_MAX_PREDICTORS, AP_DATA_DIR);
}

typedef struct {
    ap_progress bar;
    char label[80];
    int started;
} tasks_progress;

/* The label names the run in progress; it is padded to a fixed width so the
 * line, rewritten in place, leaves no tail of a longer predecessor. The
 * first report comes before this process decodes anything: what it counts
 * as done came from a checkpoint (--resume) and is kept out of the rate. */
static void on_tasks_progress(void *user, double done, double total, double work_done,
                              double work_total, const char *what) {
    tasks_progress *p = user;
    if (!p->started) {
        p->started = 1;
        ap_progress_set_base(&p->bar, done, work_done);
    }
    snprintf(p->label, sizeof p->label, "tasks %-40.40s", what ? what : "");
    p->bar.label = p->label;
    ap_progress_update_work(&p->bar, done, total, work_done, work_total);
}

static void print_cell_pct(double v) {
    if (isfinite(v))
        printf("  %7.1f", 100.0 * v);
    else
        printf("  %7s", "n/a");
}

static void print_tasks_table(const ap_tasks_result *r) {
    printf("\n%-16s %-9s %6s  %7s  %7s  %7s  %7s\n", "method", "kind", "budget", "score", "rel%",
           "agree%", "KL");
    for (int m = 0; m < r->n_methods; m++)
        for (int b = 0; b < (m == 0 ? 1 : r->n_budgets); b++) {
            ap_tasks_cell c;
            ap_tasks_cell_of(r, NULL, NULL, m, b, &c);
            char bud[16];
            if (m == 0)
                snprintf(bud, sizeof bud, "-");
            else
                snprintf(bud, sizeof bud, "%d", r->budgets[b]);
            printf("%-16s %-9s %6s", r->methods[m].name, ap_tasks_kind_name(&r->methods[m]), bud);
            print_cell_pct(c.score);
            print_cell_pct(c.score_rel_full);
            print_cell_pct(c.agreement);
            if (isfinite(c.kl))
                printf("  %7.3f\n", c.kl);
            else
                printf("  %7s\n", "n/a");
        }
    printf("\n%d samples, %.1f s; score x100; %s KV cache; KV memory %s (docs/eval-tasks.md)\n",
           r->n_samples, r->seconds, ap_kv_type_name(r->config.kv_type),
           r->config.device == 1
               ? (r->config.kv_offload ? "measured on the GPU's device pool"
                                       : "accounted from the kept sets (GPU, KV on the device)")
               : r->config.hot_pool ? "measured on the hot pool" : "accounted from the kept sets");
}

static int known_task_method(const char *name, char (*pred_names)[AP_REPLAY_PRED_NAME_MAX + 1],
                             int n_pred) {
    for (size_t i = 0; i < sizeof k_task_methods / sizeof *k_task_methods; i++)
        if (!strcmp(name, k_task_methods[i])) return 1;
    for (int p = 0; p < n_pred; p++)
        for (int nocal = 0; nocal < 2; nocal++)
            if (ap_sel_predictor_selected(name, pred_names[p], nocal)) return 1;
    return 0;
}

/* --png: an existing directory, or one that can be created next to a
 * writable parent. */
static int check_png_dir(const char *cmd, const char *png) {
    struct stat sb;
    if (stat(png, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) return 1;
        ap_cli_error(cmd, "--png: %s is not a directory", png);
        return 0;
    }
    return check_out_dir(cmd, png, "--png");
}

static int cmd_tasks(int argc, char **argv) {
    static const char *cmd = "eval tasks";
    ap_tasks_config c;
    ap_tasks_config_default(&c);
    const char *json = NULL, *md = NULL, *png = NULL, *preset = NULL, *file = NULL;
    char *methods_copy = NULL, *tasks_copy = NULL, *pred_copy = NULL;
    char preset_path[4096], ckpt_path[4096];
    int quiet = 0, rc = 2;
    ap_tasks_result *r = NULL;
    enum { O_MODEL = 256, O_PRED, O_QUICK, O_FULL, O_TFILE, O_TASKS, O_BUDGET, O_METHODS, O_MAXS,
           O_MAXNEW, O_CALIB, O_KV, O_NOTF, O_NOPF, O_PF, O_NOHP, O_THREADS, O_JSON, O_MD, O_PNG, O_QUIET, O_HELP,
           O_DEVICE, O_OFFLOAD, O_PFTH, O_PSTRIDE, O_PKV, O_RESUME, O_KVT };
    static const struct option lo[] = {
        {"resume", 0, 0, O_RESUME},
        {"model", 1, 0, O_MODEL},          {"predictor", 1, 0, O_PRED},
        {"quick", 0, 0, O_QUICK},          {"full", 0, 0, O_FULL},
        {"tasks-file", 1, 0, O_TFILE},     {"tasks", 1, 0, O_TASKS},
        {"budget", 1, 0, O_BUDGET},        {"budgets", 1, 0, O_BUDGET},
        {"methods", 1, 0, O_METHODS},      {"max-samples", 1, 0, O_MAXS},
        {"max-new", 1, 0, O_MAXNEW},       {"calib", 1, 0, O_CALIB},
        {"kv-mode", 1, 0, O_KV},           {"no-teacher-forced", 0, 0, O_NOTF},
        {"no-prefetch", 0, 0, O_NOPF},     {"prefetch", 0, 0, O_PF},
        {"no-hot-pool", 0, 0, O_NOHP},
        {"threads", 1, 0, O_THREADS},      {"json", 1, 0, O_JSON},
        {"md", 1, 0, O_MD},                {"png", 1, 0, O_PNG},
        {"quiet", 0, 0, O_QUIET},          {"help", 0, 0, O_HELP},
        {"device", 1, 0, O_DEVICE},        {"kv-offload", 0, 0, O_OFFLOAD},
        {"prefetch-threads", 1, 0, O_PFTH}, {"pred-stride", 1, 0, O_PSTRIDE},
        {"pred-per-kv", 0, 0, O_PKV},      {"kv-type", 1, 0, O_KVT},
        {0, 0, 0, 0}};
    optind = 1;
    opterr = 0;
    int o, li = -1;
    while ((o = getopt_long(argc, argv, "", lo, &li)) != -1) {
        switch (o) {
        case O_MODEL: c.model = optarg; break;
        case O_PRED:
            free(pred_copy);
            pred_copy = strdup(optarg);
            if (!pred_copy) goto bad;
            if (!parse_predictors(cmd, optarg, pred_copy, c.predictors, c.predictor_names,
                                  &c.n_predictors))
                goto done;
            break;
        case O_QUICK:
        case O_FULL: {
            const char *p = o == O_QUICK ? "quick" : "full";
            if (preset && strcmp(preset, p)) {
                ap_cli_error(cmd, "--quick and --full exclude each other");
                goto done;
            }
            preset = p;
            break;
        }
        case O_TFILE: file = optarg; break;
        case O_TASKS:
            free(tasks_copy);
            tasks_copy = strdup(optarg);
            if (!tasks_copy ||
                !split_list(tasks_copy, c.only_tasks, AP_TASKS_MAX_FILTER, &c.n_only_tasks))
                goto bad;
            break;
        case O_BUDGET:
            if (!parse_ints(optarg, c.budgets, AP_REPLAY_MAX_BUDGETS, &c.n_budgets, 1)) goto bad;
            break;
        case O_METHODS:
            free(methods_copy);
            methods_copy = strdup(optarg);
            if (!methods_copy ||
                !split_list(methods_copy, c.methods, AP_TASKS_MAX_METHODS, &c.n_methods))
                goto bad;
            break;
        case O_MAXS: if (!parse_int(optarg, 1, 1 << 30, &c.max_samples)) goto bad; break;
        case O_MAXNEW: if (!parse_int(optarg, 1, 4096, &c.max_new_tokens)) goto bad; break;
        case O_CALIB: if (!parse_int(optarg, 0, 1 << 24, &c.calib)) goto bad; break;
        case O_KV:
            if (!strcmp(optarg, "qhead")) c.kv_mode = AP_KV_PER_QHEAD;
            else if (!strcmp(optarg, "sum")) c.kv_mode = AP_KV_SUM;
            else if (!strcmp(optarg, "union")) c.kv_mode = AP_KV_UNION;
            else goto bad;
            break;
        case O_NOTF: c.teacher_forced = 0; break;
        case O_NOPF: c.prefetch = 0; break;
        case O_PF: c.prefetch = 1; break;
        case O_NOHP: c.hot_pool = 0; break;
        case O_PSTRIDE: if (!parse_int(optarg, 1, 4096, &c.pred_stride)) goto bad; break;
        case O_PKV: c.pred_per_kv = 1; break;
        case O_RESUME: c.resume = 1; break;
        case O_THREADS: if (!parse_int(optarg, 1, 256, &c.threads)) goto bad; break;
        case O_JSON: json = optarg; break;
        case O_MD: md = optarg; break;
        case O_PNG: png = optarg; break;
        case O_QUIET: quiet = 1; break;
        case O_HELP: tasks_usage(stdout); rc = 0; goto done;
        case O_DEVICE:
            if (!strcmp(optarg, "cpu")) c.device = 0;
            else if (!strcmp(optarg, "cuda")) c.device = 1;
            else goto bad;
            break;
        case O_OFFLOAD: c.kv_offload = 1; break;
        case O_PFTH: if (!parse_int(optarg, 1, 256, &c.prefetch_threads)) goto bad; break;
        case O_KVT: if (ap_kv_type_parse(optarg, &c.kv_type)) goto bad; break;
        default:
            ap_cli_error(cmd, "unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
            goto done;
        }
        li = -1;
        continue;
    bad:
        ap_cli_error(cmd, "bad value '%s' for --%s (see --help)", optarg,
                     li >= 0 ? lo[li].name : "an option");
        goto done;
    }
    if (optind < argc) {
        ap_cli_error(cmd, "unexpected argument '%s' (see --help)", argv[optind]);
        goto done;
    }
    if (!c.model || !json) {
        ap_cli_error(cmd, "--model and --json are required (see --help)");
        goto done;
    }
    char pred_names[AP_REPLAY_MAX_PREDICTORS][AP_REPLAY_PRED_NAME_MAX + 1];
    if (!check_predictor_names(cmd, c.predictors, c.predictor_names, c.n_predictors, pred_names))
        goto done;
    /* eval/tasks.c checks again when it plans the run; this early check
     * only spares a model load for a typo. */
    for (int i = 0; i < c.n_methods; i++)
        if (!known_task_method(c.methods[i], pred_names, c.n_predictors)) {
            ap_cli_error(cmd, "--methods: unknown method '%s' (see --help)", c.methods[i]);
            goto done;
        }
    if (c.kv_offload && c.device != 1) {
        ap_cli_error(cmd, "--kv-offload needs --device cuda");
        goto done;
    }
    if (c.kv_type != AP_KV_F32 && c.device == 1) {
        ap_cli_error(cmd, "--kv-type %s needs --device cpu (the CUDA engine's cache is f32)",
                     ap_kv_type_name(c.kv_type));
        goto done;
    }
    if (file && preset) {
        ap_cli_error(cmd, "--tasks-file and --%s both choose the task file; give one", preset);
        goto done;
    }
    if (!check_budgets(cmd, c.budgets, c.n_budgets, c.sink_tokens + c.local_tokens, 0))
        goto done;
    if (!file) {
        /* $ATTNPRED_DATA, else ./data when run from a checkout (the report
         * then records a relative path), else the source tree's data. */
        const char *dd = getenv("ATTNPRED_DATA"), *name = preset ? preset : "quick";
        if (!dd || !*dd) {
            snprintf(preset_path, sizeof preset_path, "data/tasks/%s.jsonl", name);
            dd = ap_file_exists(preset_path) ? "data" : AP_DATA_DIR;
        }
        snprintf(preset_path, sizeof preset_path, "%s/tasks/%s.jsonl", dd, name);
        file = preset_path;
    }
    c.tasks_file = file;
    /* Inputs and outputs are checked before the model is loaded, not after
     * a long run. */
    rc = 1;
    if (!ap_file_exists(c.model)) {
        ap_cli_error(cmd, "--model: %s: no such file", c.model);
        goto done;
    }
    if (!check_predictor_files(cmd, c.predictors, c.n_predictors)) goto done;
    if (!ap_file_exists(c.tasks_file)) {
        ap_cli_error(cmd, "task file: %s: no such file", c.tasks_file);
        goto done;
    }
    if (!check_out_dir(cmd, json, "--json") || (md && !check_out_dir(cmd, md, "--md")) ||
        (png && !check_png_dir(cmd, png)))
        goto done;
    tasks_progress ps;
    ap_progress_init(&ps.bar, stderr, "tasks", "runs", 0.0, !quiet);
    ps.label[0] = '\0';
    /* Every run keeps a per-sample checkpoint beside its JSON report, so
     * --resume can continue it after a kill; it goes once the reports are
     * written. */
    snprintf(ckpt_path, sizeof ckpt_path, "%s.ckpt", json);
    c.checkpoint = ckpt_path;
    c.progress = on_tasks_progress;
    c.progress_user = &ps;
    ap_err err;
    ap_err_clear(&err);
    if (ap_tasks_run(&c, &r, &err)) {
        if (!quiet) fputc('\n', stderr);
        ap_cli_error(cmd, "%s", err.msg);
        goto done;
    }
    ap_progress_finish(&ps.bar);
    if (!quiet)
        for (int i = 0; i < r->n_dropped; i++)
            fprintf(stderr, "eval tasks: note: %s not run: %s\n", r->dropped[i],
                    r->dropped_reason[i]);
    if (ap_tasks_write_json(r, json, &err) || (md && ap_tasks_write_md(r, md, &err)) ||
        (png && ap_tasks_write_png(r, png, &err))) {
        ap_cli_error(cmd, "%s", err.msg);
        goto done;
    }
    if (!quiet) print_tasks_table(r);
    remove(ckpt_path);
    rc = 0;
done:
    ap_tasks_result_free(r);
    free(methods_copy);
    free(tasks_copy);
    free(pred_copy);
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
    if (!strcmp(argv[1], "tasks")) return cmd_tasks(argc - 1, argv + 1);
    ap_cli_error("eval", "unknown subcommand '%s' (see attnpred eval --help)", argv[1]);
    return 2;
}
