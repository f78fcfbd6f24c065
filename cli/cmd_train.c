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
        "options:\n"
        "  --traces LIST        comma-separated trace files (shards welcome)\n"
        "  --out DIR            run directory\n"
        "  --epochs N           epochs (default 30, the paper's)\n"
        "  --device D           cpu | cuda | auto (default auto: cuda when usable)\n"
        "  --per-layer          one model per layer (default: one unified model)\n"
        "  --groups G           one model per group of G consecutive-layer groups\n"
        "  --loss L             mse (the paper's; default) | ce (softmax of the scores vs\n"
        "                       the true mass over the candidates) | rank (mass-weighted\n"
        "                       pairwise loss: top-k blocks of each --budgets above the rest)\n"
        "  --batch N            windows per batch (default 256)\n"
        "  --lr X               peak learning rate, Adam, warm-up then cosine (default 1e-3)\n"
        "  --weight-decay X     AdamW decoupled weight decay (default 0)\n"
        "  --history N          history rows (default 64)\n"
        "  --block N            block size of the traces (default 16)\n"
        "  --sink N             always-kept leading tokens (default 64)\n"
        "  --local N            always-kept trailing tokens (default 64)\n"
        "  --channels C1,C2     conv channels (default 16,32)\n"
        "  --budgets LIST       validation budgets in tokens (default 256,512,1024)\n"
        "  --val-fraction X     share of sequences held out (default 0.1)\n"
        "  --max-train N        about N windows per epoch, a fresh random subset spread\n"
        "                       over all sequences, layers and heads (default all)\n"
        "  --max-val N          about N validation windows, one fixed random subset\n"
        "                       (default all)\n"
        "  --rows R             window rows: dense (the true rows; default) or\n"
        "                       sparse[:BUDGET] = as the sparse replay appends them: a\n"
        "                       dense row every --calib decode steps, otherwise the true\n"
        "                       row on the blocks a last-step selector keeps at BUDGET\n"
        "                       tokens (default 1024), renormalised; targets stay dense\n"
        "  --val-rows R         validation window rows, dense or sparse (default: --rows)\n"
        "  --calib N            calibration period of sparse rows (default 5; 0 = never)\n"
        "  --input-scale X      train on X * inputs (power of two, default 1)\n"
        "  --target-scale X     train on X * targets (power of two, default 1); both are\n"
        "                       folded into the saved weights, so exports are in raw units\n"
        "  --pool N             (sequence, layer) chunks mixed per shuffle pool (default 32)\n"
        "  --init I             default (PyTorch's init) | last-step: start as the exact\n"
        "                       last-step predictor (2 channels of each conv) and learn\n"
        "                       from there\n"
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

int ap_cmd_train(int argc, char **argv) {
    ap_train_opts o;
    ap_train_opts_default(&o);
    const char *json_path = NULL;
    char *traces_copy = NULL;
    const char *traces[256];
    int quiet = 0, rc = 2;
    enum { O_TRACES = 256, O_OUT, O_EPOCHS, O_DEVICE, O_PERLAYER, O_GROUPS, O_LOSS, O_BATCH, O_LR,
           O_WD, O_HIST, O_BLOCK, O_SINK, O_LOCAL, O_CH, O_BUDGETS, O_VALF, O_MAXT, O_MAXV,
           O_PAT, O_STOP, O_SEED, O_THREADS, O_RESUME, O_FORCE, O_JSON, O_QUIET, O_HELP,
           O_ROWS, O_VROWS, O_CALIB, O_ISCALE, O_TSCALE, O_POOL, O_CROP, O_EVAL, O_INIT };
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
        {"init", 1, 0, O_INIT},
        {0, 0, 0, 0}};
    optind = 1;
    opterr = 0;
    int c, tmp[16], nt;
    char *end;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_TRACES: {
            free(traces_copy);
            traces_copy = strdup(optarg);
            o.n_traces = 0;
            for (char *save = NULL, *t = strtok_r(traces_copy, ",", &save); t && o.n_traces < 256;
                 t = strtok_r(NULL, ",", &save))
                traces[o.n_traces++] = t;
            o.traces = traces;
            break;
        }
        case O_OUT: o.run_dir = optarg; break;
        case O_EPOCHS: if (!parse_list(optarg, tmp, 1, &nt)) goto bad; o.epochs = tmp[0]; break;
        case O_DEVICE:
            if (!strcmp(optarg, "cpu")) o.device = AP_DEV_CPU;
            else if (!strcmp(optarg, "cuda")) o.device = AP_DEV_CUDA;
            else if (!strcmp(optarg, "auto")) o.device = AP_DEV_AUTO;
            else goto bad;
            break;
        case O_PERLAYER: o.per_layer = 1; break;
        case O_GROUPS: if (!parse_list(optarg, tmp, 1, &nt)) goto bad; o.layer_groups = tmp[0]; break;
        case O_LOSS:
            if (!strcmp(optarg, "mse")) o.loss = AP_LOSS_MSE;
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
            else goto bad;
            break;
        case O_FORCE: o.force = 1; break;
        case O_JSON: json_path = optarg; break;
        case O_QUIET: quiet = 1; break;
        case O_ROWS:
            if (!strcmp(optarg, "dense")) {
                o.rows = AP_ROWS_DENSE;
            } else if (!strncmp(optarg, "sparse", 6) && (optarg[6] == 0 || optarg[6] == ':')) {
                o.rows = AP_ROWS_SPARSE;
                if (optarg[6] == ':' && (!parse_list(optarg + 7, tmp, 1, &nt))) goto bad;
                if (optarg[6] == ':') o.sparse_budget = tmp[0];
            } else {
                goto bad;
            }
            break;
        case O_VROWS:
            if (!strcmp(optarg, "dense")) o.val_rows = AP_ROWS_DENSE;
            else if (!strcmp(optarg, "sparse")) o.val_rows = AP_ROWS_SPARSE;
            else goto bad;
            break;
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
    return rc;
}
