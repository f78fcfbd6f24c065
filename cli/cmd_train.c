#include <cblas.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/util.h"
#include "train/trainer.h"

static void train_usage(FILE *out) {
    fprintf(out,
        "usage: attnpred train --traces T.h5[,T2.h5...] --out RUN_DIR [options]\n\n"
        "Fit the AttentionPredictor CNN (Conv2d 1->16 3x3, ReLU, Conv2d 16->32 3x3, ReLU,\n"
        "mean over time, Conv1d 32->1) on (layer, head, decode step) windows of the\n"
        "traces' block_max view, validating every epoch against the last-step predictor.\n"
        "Windows are split into train/validation by sequence. Writes RUN_DIR/\n"
        "{config.json, last.safetensors, best.safetensors, log.json, curves.png, recovery.png}.\n\n"
        "recipes (--recipe; later options override any of its settings):\n"
        "  fused   the default and the shipped predictor's (docs/predictor.md): the\n"
        "          paper's CNN plus --query-fusion, --loss rank, --init last-mean:0.5,\n"
        "          --rows sparse:256,512, --input-scale 256 --target-scale 64,\n"
        "          --epochs 2 --max-train 250000 --max-val 20000 --lr 5e-4 --budgets 256,512\n"
        "  cnn     the same without --query-fusion: the paper's architecture alone,\n"
        "          for traces without query vectors\n"
        "  paper   the paper's own: --loss mse, PyTorch's init, dense rows, raw units,\n"
        "          30 epochs over every window, --lr 1e-3\n\n"
        "options:\n"
        "  --recipe R           fused (default) | cnn | paper, as above\n"
        "  --traces LIST        comma-separated trace files (shards welcome)\n"
        "  --val-traces LIST    validation traces held out by source: every sequence\n"
        "                       of them validates, every sequence of --traces trains\n"
        "                       (--val-fraction unused); refused when a source (the\n"
        "                       Debian package a prompt was cut from) is in both\n"
        "  --holdout LIST       test traces: never read for training or selection,\n"
        "                       only checked to share no source with --traces and\n"
        "                       --val-traces (refused otherwise, naming the sources)\n"
        "  --out DIR            run directory\n"
        "  --epochs N           epochs (recipe: 2; paper 30)\n"
        "  --device D           cpu | cuda | auto (default auto: cuda when usable)\n"
        "  --per-layer          one model per full-attention layer (default: one\n"
        "                       unified model; sliding-window layers are never predicted)\n"
        "  --query-fusion       the query-fusion variant (docs/predictor.md; on in the\n"
        "                       fused recipe, off with --no-query-fusion): score =\n"
        "                       z(CNN) + w x z(Quest's query bound), w learned; one more\n"
        "                       parameter; needs traces with query vectors; rank or ce loss\n"
        "  --groups G           G models, each over a run of consecutive full-attention\n"
        "                       layers (at most one per such layer)\n"
        "  --loss L             mse (the paper's) | rank (the recipes') | ce (softmax of the scores vs\n"
        "                       the true mass over the candidates); rank = mass-weighted\n"
        "                       pairwise loss: top-k blocks of each --budgets above the rest\n"
        "                       | mse-mass (squared error against the attention mass each\n"
        "                       block receives next, block_sum: ranks by expected mass)\n"
        "  --batch N            windows per batch (default 256)\n"
        "  --lr X               peak learning rate, Adam, warm-up then cosine (recipe: 5e-4)\n"
        "  --weight-decay X     AdamW decoupled weight decay (default 0)\n"
        "  --history N          history rows (default 64)\n"
        "  --block N            block size of the traces (default 16)\n"
        "  --sink N             always-kept leading tokens (default 64)\n"
        "  --local N            always-kept trailing tokens (default 64)\n"
        "  --channels C1,C2     conv channels (default 16,32)\n"
        "  --budgets LIST       validation budgets in tokens (recipes 256,512; paper 256,512,1024)\n"
        "  --val-fraction X     share of sequences held out (default 0.1)\n"
        "  --max-train N        about N windows per epoch, a fresh random subset spread\n"
        "                       over all sequences, layers and heads (recipe: 250000; 0 = all)\n"
        "  --max-val N          about N validation windows, one fixed random subset\n"
        "                       (recipe: 20000; 0 = all)\n"
        "  --rows R             window rows: dense (the true rows; the paper's) or\n"
        "                       sparse[:B1,B2,...] = as the sparse replay appends them: a\n"
        "                       dense row every --calib decode steps, otherwise the true\n"
        "                       row on the blocks a last-step selector keeps at budget B\n"
        "                       tokens (one B: 1024; with several, each (sequence,\n"
        "                       layer) draws one), renormalised; targets stay dense;\n"
        "                       recipe: sparse:256,512\n"
        "  --val-rows R         validation window rows, dense or sparse[:B1,...] (default:\n"
        "                       --rows; one list of sparse budgets serves both)\n"
        "  --calib N            calibration period of sparse rows (default 5; 0 = never)\n"
        "  --input-scale X      train on X * inputs (power of two; recipe 256, paper 1)\n"
        "  --target-scale X     train on X * targets (power of two; recipe 64, paper 1); both are\n"
        "                       folded into the saved weights, so exports are in raw units\n"
        "  --pool N             (sequence, layer) chunks mixed per shuffle pool (default 32)\n"
        "  --init I             default (PyTorch's init; the paper's) | last-step: start as the exact\n"
        "                       last-step predictor (2 channels of each conv) and learn\n"
        "                       from there | last-mean:A: newest row + A x the history\n"
        "                       mean (3 channels); recipe: last-mean:0.5\n"
        "  --crop N             train on random N-column crops of wider windows (cheaper\n"
        "                       steps; crop edges give no gradient; default 0 = whole)\n"
        "  --patience N         stop after N epochs without validation gain (default off)\n"
        "  --stop-after N       end this invocation after N epochs; continue later with\n"
        "                       --resume (the schedule still spans --epochs)\n"
        "  --seed N             init, split and shuffle seed (default 1)\n"
        "  --threads N          CPU threads (default 2)\n"
        "  --resume             continue RUN_DIR from last.safetensors\n"
        "  --eval-only          validate RUN_DIR/best.safetensors once on the windows the\n"
        "                       options describe (e.g. --val-rows sparse) and write nothing\n"
        "  --force              start over in a RUN_DIR that holds a run\n"
        "  --json PATH          write the result summary as JSON\n"
        "  --quiet              no progress output\n"
        "  --help               this text\n");
}

/* The named recipes of the usage text, applied before the other options so
 * that each of those overrides one setting. 0 for an unknown name. */
static int apply_recipe(ap_train_opts *o, const char *name) {
    if (!strcmp(name, "paper")) {
        o->epochs = 30;
        o->lr = 1e-3f;
        o->loss = AP_LOSS_MSE;
        o->init_last_step = 0;
        o->init_mean_weight = 0.0f;
        o->rows = AP_ROWS_DENSE;
        o->n_sparse_budgets = 0;
        o->sparse_budget = 1024;
        o->input_scale = o->target_scale = 1.0f;
        o->max_train_samples = o->max_val_samples = 0;
        o->query_fusion = 0;
        o->budgets[0] = 256;
        o->budgets[1] = 512;
        o->budgets[2] = 1024;
        o->n_budgets = 3;
        return 1;
    }
    if (strcmp(name, "fused") && strcmp(name, "cnn")) return 0;
    /* Searched on the validation split (docs/predictor.md, recipe table). */
    o->epochs = 2;
    o->lr = 5e-4f;
    o->loss = AP_LOSS_RANK;
    o->init_last_step = 1;
    o->init_mean_weight = 0.5f;
    o->rows = AP_ROWS_SPARSE;
    o->sparse_budgets[0] = o->sparse_budget = 256;
    o->sparse_budgets[1] = 512;
    o->n_sparse_budgets = 2;
    o->input_scale = 256.0f;
    o->target_scale = 64.0f;
    o->max_train_samples = 250000;
    o->max_val_samples = 20000;
    /* Validate at the budgets the rows were drawn at: at a larger budget the
     * last step's sparse newest row cannot fill it (docs/predictor.md). */
    o->budgets[0] = 256;
    o->budgets[1] = 512;
    o->n_budgets = 2;
    o->query_fusion = !strcmp(name, "fused");
    return 1;
}

static int parse_list(const char *s, int *out, int cap, int *n) {
    char *copy = strdup(s);
    if (!copy) return 0;
    int ok = 1;
    *n = 0;
    for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end = NULL;
        long v = strtol(t, &end, 10);
        if (*end || v < 1 || v > 100000000 || *n >= cap) {
            ok = 0;
            break;
        }
        out[(*n)++] = (int)v;
    }
    free(copy);
    return ok && *n > 0;
}

/* Comma-separated paths into out[256] (pointers into a fresh copy kept in
 * *copy); the count, 0 for an empty list or more than 256 paths. */
static int split_paths(const char *arg, char **copy, const char **out) {
    free(*copy);
    *copy = strdup(arg);
    int n = 0;
    if (!*copy) return 0;
    for (char *save = NULL, *t = strtok_r(*copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n == 256) return 0;
        out[n++] = t;
    }
    return n;
}

int ap_cmd_train(int argc, char **argv) {
    ap_train_opts o;
    ap_train_opts_default(&o);
    const char *json_path = NULL;
    char *traces_copy = NULL, *val_copy = NULL, *hold_copy = NULL;
    const char *traces[256], *val_traces[256], *holdout[256];
    int quiet = 0, rc = 2;
    enum { O_TRACES = 256, O_OUT, O_EPOCHS, O_DEVICE, O_PERLAYER, O_GROUPS, O_LOSS, O_BATCH, O_LR,
           O_WD, O_HIST, O_BLOCK, O_SINK, O_LOCAL, O_CH, O_BUDGETS, O_VALF, O_MAXT, O_MAXV,
           O_PAT, O_STOP, O_SEED, O_THREADS, O_RESUME, O_FORCE, O_JSON, O_QUIET, O_HELP,
           O_ROWS, O_VROWS, O_CALIB, O_ISCALE, O_TSCALE, O_POOL, O_CROP, O_EVAL, O_INIT,
           O_VALT, O_HOLD, O_QFUSE, O_NOQFUSE, O_RECIPE };
    static const struct option lo[] = {
        {"traces", 1, 0, O_TRACES},  {"out", 1, 0, O_OUT},          {"epochs", 1, 0, O_EPOCHS},
        {"device", 1, 0, O_DEVICE},  {"per-layer", 0, 0, O_PERLAYER}, {"groups", 1, 0, O_GROUPS},
        {"loss", 1, 0, O_LOSS},      {"batch", 1, 0, O_BATCH},      {"lr", 1, 0, O_LR},
        {"weight-decay", 1, 0, O_WD}, {"history", 1, 0, O_HIST},    {"block", 1, 0, O_BLOCK},
        {"sink", 1, 0, O_SINK},      {"local", 1, 0, O_LOCAL},      {"channels", 1, 0, O_CH},
        {"budgets", 1, 0, O_BUDGETS}, {"val-fraction", 1, 0, O_VALF}, {"max-train", 1, 0, O_MAXT},
        {"max-val", 1, 0, O_MAXV},   {"patience", 1, 0, O_PAT},     {"stop-after", 1, 0, O_STOP},     {"seed", 1, 0, O_SEED},
        {"threads", 1, 0, O_THREADS}, {"resume", 0, 0, O_RESUME},   {"force", 0, 0, O_FORCE},
        {"json", 1, 0, O_JSON},      {"quiet", 0, 0, O_QUIET},      {"help", 0, 0, O_HELP},
        {"rows", 1, 0, O_ROWS},      {"val-rows", 1, 0, O_VROWS},   {"calib", 1, 0, O_CALIB},
        {"input-scale", 1, 0, O_ISCALE}, {"target-scale", 1, 0, O_TSCALE},
        {"pool", 1, 0, O_POOL},      {"crop", 1, 0, O_CROP},        {"eval-only", 0, 0, O_EVAL},
        {"init", 1, 0, O_INIT},      {"val-traces", 1, 0, O_VALT},  {"holdout", 1, 0, O_HOLD},
        {"query-fusion", 0, 0, O_QFUSE}, {"no-query-fusion", 0, 0, O_NOQFUSE},
        {"recipe", 1, 0, O_RECIPE},
        {0, 0, 0, 0}};
    const char *recipe = "fused";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--recipe") && i + 1 < argc) recipe = argv[i + 1];
        else if (!strncmp(argv[i], "--recipe=", 9)) recipe = argv[i] + 9;
    }
    if (!apply_recipe(&o, recipe)) {
        ap_cli_error("train", "bad value '%s' for --recipe: fused, cnn or paper (see --help)", recipe);
        goto done;
    }
    optind = 1;
    opterr = 0;
    int c, tmp[16], nt;
    char *end;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_TRACES:
            if (!(o.n_traces = split_paths(optarg, &traces_copy, traces))) goto bad;
            o.traces = traces;
            break;
        case O_VALT:
            if (!(o.n_val_traces = split_paths(optarg, &val_copy, val_traces))) goto bad;
            o.val_traces = val_traces;
            break;
        case O_HOLD:
            if (!(o.n_holdout = split_paths(optarg, &hold_copy, holdout))) goto bad;
            o.holdout = holdout;
            break;
        case O_OUT: o.run_dir = optarg; break;
        case O_EPOCHS: if (!parse_list(optarg, tmp, 1, &nt)) goto bad; o.epochs = tmp[0]; break;
        case O_DEVICE:
            if (!strcmp(optarg, "cpu")) o.device = AP_DEV_CPU;
            else if (!strcmp(optarg, "cuda")) o.device = AP_DEV_CUDA;
            else if (!strcmp(optarg, "auto")) o.device = AP_DEV_AUTO;
            else goto bad;
            break;
        case O_PERLAYER: o.per_layer = 1; break;
        case O_QFUSE: o.query_fusion = 1; break;
        case O_NOQFUSE: o.query_fusion = 0; break;
        case O_RECIPE: break; /* applied above */
        case O_GROUPS: if (!parse_list(optarg, tmp, 1, &nt)) goto bad; o.layer_groups = tmp[0]; break;
        case O_LOSS:
            if (!strcmp(optarg, "mse")) o.loss = AP_LOSS_MSE;
            else if (!strcmp(optarg, "mse-mass")) o.loss = AP_LOSS_MSE_MASS;
            else if (!strcmp(optarg, "ce")) o.loss = AP_LOSS_CE;
            else if (!strcmp(optarg, "rank")) o.loss = AP_LOSS_RANK;
            else goto bad;
            break;
        case O_BATCH: if (!parse_list(optarg, tmp, 1, &nt)) goto bad; o.batch_size = tmp[0]; break;
        case O_LR: o.lr = strtof(optarg, &end); if (*end || !(o.lr > 0)) goto bad; break;
        case O_WD: o.weight_decay = strtof(optarg, &end); if (*end || o.weight_decay < 0) goto bad; break;
        case O_HIST: if (!parse_list(optarg, tmp, 1, &nt)) goto bad; o.history = tmp[0]; break;
        case O_BLOCK: if (!parse_list(optarg, tmp, 1, &nt)) goto bad; o.block = tmp[0]; break;
        case O_SINK: o.sink_tokens = (int)strtol(optarg, &end, 10); if (*end || o.sink_tokens < 0) goto bad; break;
        case O_LOCAL: o.local_tokens = (int)strtol(optarg, &end, 10); if (*end || o.local_tokens < 0) goto bad; break;
        case O_CH: if (!parse_list(optarg, tmp, 2, &nt) || nt != 2) goto bad; o.c1 = tmp[0]; o.c2 = tmp[1]; break;
        case O_BUDGETS: if (!parse_list(optarg, o.budgets, AP_METRICS_MAX_BUDGETS, &o.n_budgets)) goto bad; break;
        case O_VALF: o.val_fraction = strtod(optarg, &end); if (*end || !(o.val_fraction > 0 && o.val_fraction < 1)) goto bad; break;
        case O_MAXT: o.max_train_samples = strtol(optarg, &end, 10); if (*end || o.max_train_samples < 0) goto bad; break;
        case O_MAXV: o.max_val_samples = strtol(optarg, &end, 10); if (*end || o.max_val_samples < 0) goto bad; break;
        case O_PAT: o.patience = (int)strtol(optarg, &end, 10); if (*end || o.patience < 0) goto bad; break;
        case O_STOP: o.stop_after = (int)strtol(optarg, &end, 10); if (*end || o.stop_after < 0) goto bad; break;
        case O_SEED: o.seed = strtoull(optarg, &end, 10); if (*end) goto bad; break;
        case O_THREADS: if (!parse_list(optarg, tmp, 1, &nt) || tmp[0] > 256) goto bad; o.threads = tmp[0]; break;
        case O_RESUME: o.resume = 1; break;
        case O_EVAL: o.eval_only = 1; break;
        case O_INIT:
            if (!strcmp(optarg, "default")) o.init_last_step = 0;
            else if (!strcmp(optarg, "last-step")) o.init_last_step = 1;
            else if (!strncmp(optarg, "last-mean:", 10)) {
                o.init_last_step = 1;
                o.init_mean_weight = strtof(optarg + 10, &end);
                if (*end || !(o.init_mean_weight > 0 && o.init_mean_weight < 1e6)) goto bad;
            }
            else goto bad;
            break;
        case O_FORCE: o.force = 1; break;
        case O_JSON: json_path = optarg; break;
        case O_QUIET: quiet = 1; break;
        case O_ROWS:
        case O_VROWS: {
            int kind;
            if (!strcmp(optarg, "dense")) {
                kind = AP_ROWS_DENSE;
            } else if (!strncmp(optarg, "sparse", 6) && (optarg[6] == 0 || optarg[6] == ':')) {
                kind = AP_ROWS_SPARSE;
                if (optarg[6] == ':') {
                    if (!parse_list(optarg + 7, o.sparse_budgets, 8, &nt)) goto bad;
                    o.sparse_budget = o.sparse_budgets[0];
                    o.n_sparse_budgets = nt > 1 ? nt : 0;
                }
            } else {
                goto bad;
            }
            if (c == O_ROWS) o.rows = (ap_rows_kind)kind;
            else o.val_rows = kind;
            break;
        }
        case O_CALIB: o.calib = (int)strtol(optarg, &end, 10); if (*end || !optarg[0] || o.calib < 0) goto bad; break;
        case O_ISCALE: o.input_scale = strtof(optarg, &end); if (*end || !(o.input_scale > 0)) goto bad; break;
        case O_TSCALE: o.target_scale = strtof(optarg, &end); if (*end || !(o.target_scale > 0)) goto bad; break;
        case O_POOL: if (!parse_list(optarg, tmp, 1, &nt)) goto bad; o.pool_chunks = tmp[0]; break;
        case O_CROP: o.crop = (int)strtol(optarg, &end, 10); if (*end || !optarg[0] || o.crop < 0) goto bad; break;
        case O_HELP: train_usage(stdout); rc = 0; goto done;
        default:
            ap_cli_error("train", "unknown or incomplete option '%s' (see --help)", argv[optind - 1]);
            goto done;
        }
        continue;
    bad:
        ap_cli_error("train", "bad value '%s' for %s (see --help)", optarg, argv[optind - 1]);
        goto done;
    }
    if (optind < argc) {
        ap_cli_error("train", "unexpected argument '%s' (see --help)", argv[optind]);
        goto done;
    }
    if (o.n_traces < 1 || !o.run_dir) {
        ap_cli_error("train", "--traces and --out are required (see --help)");
        goto done;
    }
    if (o.eval_only && (o.resume || o.force)) {
        ap_cli_error("train", "--eval-only excludes --resume and --force");
        goto done;
    }
    if (o.resume && o.force) {
        ap_cli_error("train", "--resume and --force exclude each other");
        goto done;
    }
    if (o.per_layer && o.layer_groups > 1) {
        ap_cli_error("train", "--per-layer and --groups exclude each other");
        goto done;
    }
    /* The predictor splits each batch over its own threads and every worker
     * calls BLAS: a threaded OpenBLAS below them would oversubscribe the
     * cores (predictor.h). */
    openblas_set_num_threads(1);
    o.log = quiet ? NULL : stderr;
    o.progress = !quiet;
    ap_err err;
    ap_err_clear(&err);
    ap_train_result r;
    if (ap_train_run(&o, &r, &err)) {
        ap_cli_error("train", "%s", err.msg);
        rc = 1;
        goto done;
    }
    if (!quiet && !o.eval_only)
        fprintf(stderr,
                "train: done: %d epochs, best epoch %d, val recovery %.4f (last-step %.4f, oracle "
                "%.4f), %.0f windows/s; export with: attnpred export --run %s --out P.safetensors\n",
                r.epochs_done, r.best_epoch, r.best_recovery, r.last_step_recovery,
                r.oracle_recovery, r.samples_per_s, o.run_dir);
    if (json_path) {
        char tmpn[4200];
        ap_tmp_name(tmpn, sizeof tmpn, json_path);
        FILE *f = fopen(tmpn, "w");
        int ok = f != NULL;
        if (ok)
            ok = fprintf(f,
                         "{\"run\": \"%s\", \"epochs_done\": %d, \"best_epoch\": %d, "
                         "\"best_val_recovery\": %.6f, \"last_step_val_recovery\": %.6f, "
                         "\"oracle_val_recovery\": %.6f, \"train_windows_per_s\": %.2f, "
                         "\"params\": %lld, \"budgets\": [",
                         o.run_dir, r.epochs_done, r.best_epoch, r.best_recovery,
                         r.last_step_recovery, r.oracle_recovery, r.samples_per_s,
                         r.n_params) >= 0;
        for (int i = 0; ok && i < r.n_budgets; i++)
            ok = fprintf(f,
                         "%s{\"budget\": %d, \"recovery\": %.6f, \"last_step_recovery\": %.6f, "
                         "\"oracle_recovery\": %.6f}",
                         i ? ", " : "", o.budgets[i], r.budget_recovery[i], r.budget_last_step[i],
                         r.budget_oracle[i]) >= 0;
        if (ok) ok = fputs("]}\n", f) >= 0;
        if (f && fclose(f) != 0) ok = 0;
        if (!ok || rename(tmpn, json_path) != 0) {
            if (f) remove(tmpn);
            ap_cli_error("train", "%s: cannot write", json_path);
            rc = 1;
            goto done;
        }
    }
    rc = 0;
done:
    free(traces_copy);
    free(val_copy);
    free(hold_copy);
    return rc;
}
