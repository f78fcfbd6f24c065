/* attnpred export: the best checkpoint of a run -> a predictor file with the
 * PyTorch state_dict names (train/runtime.h), plus a JSON config beside it. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/util.h"
#include "train/checkpoint.h"
#include "train/runtime.h"

static void export_usage(FILE *out) {
    fprintf(out,
            "usage: attnpred export --run RUN_DIR --out P.safetensors [--force]\n\n"
            "Write the best checkpoint of a training run (RUN_DIR/%s) as a\n"
            "safetensors file whose tensor names and shapes equal the PyTorch module's\n"
            "state_dict (conv1.weight [16,1,3,3], ..., conv3.bias [1]; \"layers.M.\" prefixes\n"
            "for per-layer or grouped models), with the hyperparameters in its metadata,\n"
            "and a JSON config P.json beside it.\n\n"
            "options:\n"
            "  --run DIR     training run directory (required)\n"
            "  --out PATH    output .safetensors file (required)\n"
            "  --force       overwrite an existing output\n"
            "  --help        this text\n",
            AP_CKPT_NAME_BEST);
}

/* P.safetensors -> P.json; any other name gets ".json" appended. */
static char *json_path_for(const char *out) {
    size_t n = strlen(out);
    const char *ext = ".safetensors";
    size_t e = strlen(ext);
    char *s = malloc(n + 6);
    if (!s) return NULL;
    if (n > e && !strcmp(out + n - e, ext)) {
        memcpy(s, out, n - e);
        strcpy(s + n - e, ".json");
    } else {
        sprintf(s, "%s.json", out);
    }
    return s;
}

int ap_cmd_export(int argc, char **argv) {
    static const struct option opts[] = {{"run", required_argument, 0, 'r'},
                                         {"out", required_argument, 0, 'o'},
                                         {"force", no_argument, 0, 'f'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *run = NULL, *out = NULL;
    int force = 0, c, rc = 1;
    char *ckpt = NULL, *json = NULL;
    float *params = NULL;
    ap_err err;
    ap_err_clear(&err);
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'r': run = optarg; break;
        case 'o': out = optarg; break;
        case 'f': force = 1; break;
        case 'h': export_usage(stdout); return 0;
        default: export_usage(stderr); return 2;
        }
    }
    if (optind < argc || !run || !out) {
        if (optind < argc)
            ap_cli_error("export", "unexpected argument '%s'", argv[optind]);
        else
            ap_cli_error("export", "--run and --out are required");
        export_usage(stderr);
        return 2;
    }
    json = json_path_for(out);
    ckpt = malloc(strlen(run) + strlen(AP_CKPT_NAME_BEST) + 2);
    if (!json || !ckpt) {
        ap_cli_error("export", "out of memory");
        goto cleanup;
    }
    sprintf(ckpt, "%s/%s", run, AP_CKPT_NAME_BEST);
    if (!force && (ap_file_exists(out) || ap_file_exists(json))) {
        ap_cli_error("export", "%s exists (use --force to overwrite)",
                     ap_file_exists(out) ? out : json);
        goto cleanup;
    }
    ap_ckpt_info info;
    size_t n = 0;
    if (ap_checkpoint_load(ckpt, &info, &params, NULL, NULL, &n, NULL, &err) != AP_OK ||
        ap_check_writable_dir(out, &err) != AP_OK ||
        ap_pred_export(out, json, &info.cfg, params, &err) != AP_OK) {
        ap_cli_error("export", "%s", err.msg);
        goto cleanup;
    }
    size_t per = ap_pred_param_count(&info.cfg);
    printf("exported %s (epoch %d, %s %.6g): %d model%s x %zu parameters = %zu\n", ckpt,
           info.epoch, info.metric_name[0] ? info.metric_name : "metric", info.best_metric,
           info.cfg.n_models, info.cfg.n_models == 1 ? "" : "s", per, n);
    printf("wrote %s and %s\n", out, json);
    rc = 0;
cleanup:
    free(params);
    free(ckpt);
    free(json);
    return rc;
}
