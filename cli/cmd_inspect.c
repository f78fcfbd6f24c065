/* attnpred inspect: summary of a trace (text or --json) and attention heatmaps
 * (--png). Everything is read through capture/trace.h, so inspect sees a trace
 * exactly as the predictor and the baselines will. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "capture/trace.h"
#include "cli/cli.h"
#include "common/plot.h"
#include "common/util.h"
#include "train/checkpoint.h"
#include "train/predictor.h"
#include "train/probe.h"
#include "train/runtime.h"

#define CMD "inspect"

static void inspect_usage(FILE *out) {
    fprintf(out,
            "usage: attnpred inspect T.h5 [--json] [--png OUT.png [heatmap options]]\n"
            "       attnpred inspect --predictor P.safetensors [--json]\n\n"
            "Summarise an attnpred trace (also a .partial one: its finished sequences):\n"
            "format version, model, dimensions, and per sequence its lengths, recorded\n"
            "steps, blocks and raw layers; file size and bytes per token.\n\n"
            "options:\n"
            "  --json              the summary as JSON on stdout (stable keys)\n"
            "  --png OUT.png       draw one layer/head as a heatmap: query positions top to\n"
            "                      bottom, key blocks left to right, with a title (trace,\n"
            "                      sequence, layer, head, view), axes and a colour bar of\n"
            "                      the scale shown; a cyan line marks the first decode step;\n"
            "                      grey cells lie past the causal length\n"
            "  --seq ID|INDEX      sequence by id, or by 0-based index (default 0)\n"
            "  --layer L           layer (default 0)\n"
            "  --head H            query head (default 0)\n"
            "  --view max|sum      block view (default max, what the predictor reads)\n"
            "  --log               log colour scale over --decades decades below the row max\n"
            "  --decades D         decades shown with --log (default 4)\n"
            "  --global            scale by the map's maximum instead of each row's own\n"
            "                      maximum (the default makes faint decode rows visible)\n"
            "  --predictor P       instead of a trace: the spike probe of a predictor (an\n"
            "                      export, or a run's best/last.safetensors checkpoint):\n"
            "                      zero history (H = the model's, W 24) plus 0.5 at block 12\n"
            "                      in one row r; the output at block 12 for r = 0, 1, H/2,\n"
            "                      H-3, H-2, H-1, and the newest/interior ratio (the\n"
            "                      authors' released weights: ~75x and ~500x, mostly\n"
            "                      copying the last step)\n"
            "  --help              this text\n\n"
            "The PNG is written under a temporary name and renamed; an existing OUT.png is\n"
            "replaced.\n");
}

static int parse_int(const char *s, int *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!s[0] || *end || errno || v < 0 || v > 1000000000L) return 0;
    *out = (int)v;
    return 1;
}

/* ------------------------------------------------------------ summary -- */

static long long file_bytes(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

static int summary_json(const char *path, const ap_trace *t, ap_err *err) {
    int rc = 1;
    const ap_trace_meta *m = ap_trace_get_meta(t);
    cJSON *root = cJSON_CreateObject();
    cJSON *seqs = NULL;
    char *text = NULL;
    if (!root) goto cleanup;
    long long ptoks = 0, gtoks = 0;
    int n = ap_trace_n_seq(t);
    seqs = cJSON_CreateArray();
    if (!seqs) goto cleanup;
    for (int i = 0; i < n; i++) {
        ap_trace_seq_info in;
        if (ap_trace_seq_get_info(t, i, &in, err)) goto cleanup;
        ptoks += in.n_prompt;
        gtoks += in.n_gen;
        cJSON *s = cJSON_CreateObject();
        cJSON *raw = cJSON_CreateIntArray(in.raw_layers, in.n_raw_layers);
        if (!s || !raw) {
            cJSON_Delete(s);
            cJSON_Delete(raw);
            goto cleanup;
        }
        cJSON_AddItemToArray(seqs, s);
        cJSON_AddNumberToObject(s, "index", i);
        cJSON_AddStringToObject(s, "id", in.id);
        cJSON_AddStringToObject(s, "task", in.task);
        cJSON_AddStringToObject(s, "source", in.source);
        cJSON_AddBoolToObject(s, "chat", in.chat);
        cJSON_AddNumberToObject(s, "n_prompt", in.n_prompt);
        cJSON_AddNumberToObject(s, "n_gen", in.n_gen);
        cJSON_AddNumberToObject(s, "n_steps", in.n_steps);
        cJSON_AddNumberToObject(s, "n_blocks", in.n_blocks);
        cJSON_AddBoolToObject(s, "has_query", in.has_query);
        cJSON_AddBoolToObject(s, "has_colsum", in.has_colsum);
        cJSON_AddItemToObject(s, "raw_layers", raw);
    }
    long long bytes = file_bytes(path);
    cJSON_AddStringToObject(root, "path", path);
    cJSON_AddStringToObject(root, "format", AP_TRACE_FORMAT);
    cJSON_AddNumberToObject(root, "format_version", ap_trace_format_version(t));
    cJSON_AddBoolToObject(root, "complete", ap_trace_is_complete(t));
    cJSON_AddStringToObject(root, "model_name", m->model_name);
    cJSON_AddStringToObject(root, "model_sha256", m->model_sha256);
    cJSON_AddStringToObject(root, "attnpred_version", m->attnpred_version);
    cJSON_AddNumberToObject(root, "n_layer", m->n_layer);
    cJSON_AddNumberToObject(root, "n_head", m->n_head);
    cJSON_AddNumberToObject(root, "n_head_kv", m->n_head_kv);
    cJSON_AddNumberToObject(root, "head_dim", m->head_dim);
    cJSON_AddNumberToObject(root, "block_size", m->block_size);
    cJSON_AddNumberToObject(root, "history", m->history);
    cJSON_AddStringToObject(root, "architecture", m->arch);
    cJSON *lw = cJSON_CreateIntArray(m->layer_window, m->n_layer);
    if (!lw) goto cleanup;
    cJSON_AddItemToObject(root, "layer_window", lw);
    cJSON_AddNumberToObject(root, "n_full_layers", ap_trace_n_full_layers(m));
    cJSON_AddNumberToObject(root, "n_sequences", n);
    cJSON_AddNumberToObject(root, "prompt_tokens", (double)ptoks);
    cJSON_AddNumberToObject(root, "gen_tokens", (double)gtoks);
    cJSON_AddNumberToObject(root, "total_tokens", (double)(ptoks + gtoks));
    cJSON_AddNumberToObject(root, "file_bytes", (double)bytes);
    cJSON_AddNumberToObject(root, "bytes_per_token",
                            ptoks + gtoks > 0 ? (double)bytes / (double)(ptoks + gtoks) : 0.0);
    cJSON_AddItemToObject(root, "sequences", seqs);
    seqs = NULL;
    text = cJSON_Print(root);
    if (!text) goto cleanup;
    fputs(text, stdout);
    fputc('\n', stdout);
    rc = 0;
cleanup:
    if (rc && err && err->status == AP_OK) ap_errf(err, AP_ERR_NOMEM, "out of memory");
    free(text);
    cJSON_Delete(seqs);
    cJSON_Delete(root);
    return rc;
}

static void human_bytes(char *buf, size_t n, double b) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int k = 0;
    while (b >= 1024.0 && k < 4) b /= 1024.0, k++;
    snprintf(buf, n, k ? "%.1f %s" : "%.0f %s", b, u[k]);
}

static int summary_text(const char *path, const ap_trace *t, ap_err *err) {
    const ap_trace_meta *m = ap_trace_get_meta(t);
    int n = ap_trace_n_seq(t);
    long long ptoks = 0, gtoks = 0;
    for (int i = 0; i < n; i++) {
        ap_trace_seq_info in;
        if (ap_trace_seq_get_info(t, i, &in, err)) return 1;
        ptoks += in.n_prompt;
        gtoks += in.n_gen;
    }
    long long bytes = file_bytes(path);
    char hb[32];
    human_bytes(hb, sizeof hb, (double)bytes);
    printf("%s: %s format_version %d (%s)\n", path, AP_TRACE_FORMAT, ap_trace_format_version(t),
           ap_trace_is_complete(t) ? "complete" : "partial: finished sequences only");
    printf("model:       %s\n", m->model_name);
    printf("sha256:      %s\n", m->model_sha256);
    printf("written by:  attnpred %s\n", m->attnpred_version);
    printf("dimensions:  %d layers, %d query heads, %d KV heads, head_dim %d\n", m->n_layer,
           m->n_head, m->n_head_kv, m->head_dim);
    printf("blocks:      %d keys per block; history %d prefill rows\n", m->block_size,
           m->history);
    int n_full = ap_trace_n_full_layers(m), win = ap_trace_sliding_window(m);
    printf("attention:   %s; ", m->arch[0] ? m->arch : "(architecture not recorded)");
    if (n_full == m->n_layer) {
        printf("full in all %d layers\n", m->n_layer);
    } else {
        printf("full in %d of %d layers (", n_full, m->n_layer);
        for (int l = 0, k = 0; l < m->n_layer; l++)
            if (ap_trace_layer_is_full(m, l)) printf("%s%d", k++ ? "," : "", l);
        if (win > 0)
            printf("), the others sliding window %d\n", win);
        else
            printf("), the others sliding windows (layer_window in --json)\n");
    }
    printf("sequences:   %d (%lld prompt + %lld generated = %lld tokens)\n", n, ptoks, gtoks,
           ptoks + gtoks);
    printf("file:        %s (%lld bytes)", hb, bytes);
    if (ptoks + gtoks > 0) printf(", %.1f bytes per token", (double)bytes / (double)(ptoks + gtoks));
    printf("\n");
    if (n == 0) return 0;
    /* Columns as wide as the longest id/task (ids up to 40 shown whole). */
    int wid = 2, wtask = 4;
    for (int i = 0; i < n; i++) {
        ap_trace_seq_info in;
        if (ap_trace_seq_get_info(t, i, &in, err)) return 1;
        int li = (int)strlen(in.id), lt = (int)strlen(in.task);
        wid = li > wid ? (li > 40 ? 40 : li) : wid;
        wtask = lt > wtask ? lt : wtask;
    }
    printf("\n%5s  %-*s %-*s %8s %6s %6s %6s %5s %6s  %s\n", "index", wid, "id", wtask, "task",
           "n_prompt", "n_gen", "steps", "blocks", "quest", "colsum", "raw layers");
    for (int i = 0; i < n; i++) {
        ap_trace_seq_info in;
        if (ap_trace_seq_get_info(t, i, &in, err)) return 1;
        char raw[256] = "-";
        size_t o = 0;
        for (int k = 0; k < in.n_raw_layers && o + 12 < sizeof raw; k++)
            o += (size_t)snprintf(raw + o, sizeof raw - o, "%s%d", k ? "," : "", in.raw_layers[k]);
        printf("%5d  %-*s %-*s %8d %6d %6d %6d %5s %6s  %s\n", i, wid, in.id, wtask,
               in.task[0] ? in.task : "-", in.n_prompt, in.n_gen, in.n_steps, in.n_blocks,
               in.has_query ? "yes" : "no", in.has_colsum ? "yes" : "no", raw);
    }
    return 0;
}

/* ------------------------------------------------------------ heatmap -- */

typedef struct {
    int seq_index;
    const char *seq_arg;
    int layer, head;
    int view_sum;
    int log_scale;
    double decades;
    int global;
} heat_opts;

static int resolve_seq(const ap_trace *t, const char *arg, int *out) {
    if (!arg) {
        *out = 0;
        return ap_trace_n_seq(t) > 0;
    }
    int i = ap_trace_find(t, arg);
    if (i >= 0) {
        *out = i;
        return 1;
    }
    int v;
    if (parse_int(arg, &v) && v < ap_trace_n_seq(t)) {
        *out = v;
        return 1;
    }
    return 0;
}

/* One layer/head of a sequence as a heatmap (common/plot.h): rows are the
 * recorded query steps, columns key blocks, cells past the causal length NaN
 * (grey). By default each row is scaled by its own maximum, so faint decode
 * rows stay visible; the colour bar says which scale is shown. */
static ap_status heatmap(const ap_trace *t, const char *trace_path, const heat_opts *o,
                         const char *png_path, ap_err *err) {
    ap_status st = AP_OK;
    float *view = NULL, *cells = NULL;
    int32_t *pos = NULL;
    const ap_trace_meta *m = ap_trace_get_meta(t);
    ap_trace_seq_info in;
    st = ap_trace_seq_get_info(t, o->seq_index, &in, err);
    if (st) return st;
    if (o->layer >= m->n_layer || o->head >= m->n_head)
        return ap_errf(err, AP_ERR_RANGE, "layer %d / head %d out of range (%d layers, %d heads)",
                       o->layer, o->head, m->n_layer, m->n_head);
    const int S = in.n_steps, H = m->n_head, NB = in.n_blocks;
    size_t n = (size_t)S * H * NB;
    view = malloc(n * sizeof *view);
    cells = malloc((size_t)S * NB * sizeof *cells);
    pos = malloc((size_t)S * sizeof *pos);
    if (!view || !cells || !pos) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    st = ap_trace_read_layer(t, o->seq_index, o->layer, o->view_sum ? "block_sum" : "block_max",
                             view, n, err);
    if (!st) st = ap_trace_read_i32(t, o->seq_index, "step_pos", pos, (size_t)S, err);
    if (st) goto cleanup;
    double gmax = 0.0;
    int boundary = -1, contiguous = 1; /* first decode step: its query is past the prompt */
    for (int s = 0; s < S; s++) {
        const float *row = view + ((size_t)s * H + o->head) * NB;
        double mx = 0.0;
        for (int j = 0; j < NB; j++) mx = fmax(mx, row[j]);
        gmax = fmax(gmax, mx);
        if (boundary < 0 && pos[s] >= in.n_prompt) boundary = s;
        contiguous &= pos[s] == pos[0] + s;
        int nvalid = pos[s] / m->block_size + 1;
        for (int j = 0; j < NB; j++)
            cells[(size_t)s * NB + j] =
                j >= nvalid ? NAN : o->global ? row[j] : mx > 0 ? (float)(row[j] / mx) : 0.0f;
    }
    /* Per-row scale: 1 is the row's maximum; global: the values themselves,
     * up to the map's maximum. */
    double top = o->global ? gmax : 1.0;
    const char *trace_name = strrchr(trace_path, '/') ? strrchr(trace_path, '/') + 1 : trace_path;
    char title[256], bar[96];
    snprintf(title, sizeof title, "%.60s: seq '%.60s' (#%d), layer %d, head %d, block_%s",
             trace_name, in.id, o->seq_index, o->layer, o->head, o->view_sum ? "sum" : "max");
    snprintf(bar, sizeof bar, "attention %s%s", o->global ? "(block value)" : "/ row max",
             o->log_scale ? ", log scale" : "");
    ap_plot_heatmap_opts ho = {
        .title = title,
        .x = {.label = "key block", .first = 0, .step = 1},
        /* Recorded steps are consecutive queries (the last prefill ones,
         * then every decode step); otherwise they are numbered. */
        .y = {.label = contiguous ? "query position" : "recorded step",
              .first = contiguous ? pos[0] : 0, .step = 1},
        .bar_label = bar,
        .log_scale = o->log_scale,
        .lo = o->log_scale ? (top > 0 ? log10(top) - o->decades : -o->decades) : 0.0,
        .hi = o->log_scale ? (top > 0 ? log10(top) : 0.0) : (top > 0 ? top : 1.0),
        .mark_row = boundary};
    st = ap_plot_heatmap_ex_png(png_path, &ho, cells, S, NB, err);
cleanup:
    free(cells);
    free(pos);
    free(view);
    return st;
}

/* ---------------------------------------------------------- predictor -- */

/* An export (runtime format) or, failing that, a training checkpoint. */
static ap_status load_any_predictor(const char *path, ap_runtime **rt, ap_predictor **own,
                                    ap_predictor **p, ap_err *err) {
    ap_err e1, e2;
    ap_err_clear(&e1);
    ap_err_clear(&e2);
    *rt = NULL;
    *own = NULL;
    if (ap_runtime_load(path, rt, &e1) == AP_OK) {
        *p = ap_runtime_predictor(*rt);
        return AP_OK;
    }
    ap_ckpt_info info;
    float *params = NULL;
    size_t n = 0;
    if (ap_checkpoint_load(path, &info, &params, NULL, NULL, &n, NULL, &e2) != AP_OK) {
        if (!strcmp(e1.msg, e2.msg))
            return ap_errf(err, e1.status ? e1.status : AP_ERR_FORMAT,
                           "%s (read as a predictor export and as a training checkpoint)",
                           e1.msg);
        return ap_errf(err, e1.status ? e1.status : AP_ERR_FORMAT,
                       "%s (and as a training checkpoint: %s)", e1.msg, e2.msg);
    }
    ap_status st = ap_predictor_create(&info.cfg, 0, own, err);
    if (!st) {
        size_t np = 0;
        float *dst = ap_predictor_params(*own, &np);
        if (np != n)
            st = ap_errf(err, AP_ERR_FORMAT, "%s: %zu parameters, the config needs %zu", path, n,
                         np);
        else
            memcpy(dst, params, n * sizeof *dst);
    }
    free(params);
    if (st) {
        ap_predictor_free(*own);
        *own = NULL;
        return st;
    }
    *p = *own;
    return AP_OK;
}

static int inspect_predictor(const char *path, int json) {
    ap_err err;
    ap_err_clear(&err);
    ap_runtime *rt = NULL;
    ap_predictor *own = NULL, *p = NULL;
    cJSON *root = NULL;
    char *text = NULL;
    int rc = 1;
    if (load_any_predictor(path, &rt, &own, &p, &err)) {
        ap_cli_error(CMD, "%s", err.msg);
        return 1;
    }
    const ap_pred_config *c = ap_predictor_config(p);
    ap_probe_config pc;
    ap_probe_config_default(&pc, c->history);
    if (json) {
        root = cJSON_CreateObject();
        if (!root) goto oom;
        cJSON_AddStringToObject(root, "path", path);
        cJSON_AddNumberToObject(root, "history", c->history);
        cJSON_AddNumberToObject(root, "c1", c->c1);
        cJSON_AddNumberToObject(root, "c2", c->c2);
        cJSON_AddNumberToObject(root, "n_models", c->n_models);
        cJSON_AddNumberToObject(root, "params_per_model", (double)ap_pred_param_count(c));
        cJSON *pr = cJSON_AddObjectToObject(root, "probe");
        if (!pr) goto oom;
        cJSON_AddNumberToObject(pr, "W", pc.W);
        cJSON_AddNumberToObject(pr, "column", pc.col);
        cJSON_AddNumberToObject(pr, "spike", pc.spike);
        cJSON_AddItemToObject(pr, "rows", cJSON_CreateIntArray(pc.rows, pc.n_rows));
    } else {
        printf("%s: %d model%s, history %d, channels %d,%d, %zu parameters per model\n", path,
               c->n_models, c->n_models > 1 ? "s" : "", c->history, c->c1, c->c2,
               ap_pred_param_count(c));
        printf("spike probe (docs/predictor.md, \"Newest-row weighting\"): zero history %dx%d,\n"
               "%.2g at block %d in row r; output at block %d\n\n",
               c->history, pc.W, pc.spike, pc.col, pc.col);
        printf("%5s %12s", "model", "background");
        for (int i = 0; i < pc.n_rows; i++) printf("  r=%-8d", pc.rows[i]);
        printf(" %14s %10s\n", "newest/interior", "(raw)");
    }
    cJSON *models = json ? cJSON_AddArrayToObject(root, "models") : NULL;
    if (json && !models) goto oom;
    for (int m = 0; m < c->n_models; m++) {
        ap_probe_result r;
        if (ap_probe_spike(p, m, &pc, &r, &err)) {
            ap_cli_error(CMD, "%s: %s", path, err.msg);
            goto cleanup;
        }
        if (json) {
            cJSON *o = cJSON_CreateObject();
            if (!o) goto oom;
            cJSON_AddItemToArray(models, o);
            cJSON_AddNumberToObject(o, "model", m);
            cJSON_AddNumberToObject(o, "background", r.background);
            cJSON *outs = cJSON_AddArrayToObject(o, "out");
            if (!outs) goto oom;
            for (int i = 0; i < pc.n_rows; i++) cJSON_AddItemToArray(outs, cJSON_CreateNumber(r.out[i]));
            /* JSON has no inf/NaN: a zero interior response gives null */
            if (isfinite(r.ratio))
                cJSON_AddNumberToObject(o, "newest_over_interior", r.ratio);
            else
                cJSON_AddNullToObject(o, "newest_over_interior");
            if (isfinite(r.raw_ratio))
                cJSON_AddNumberToObject(o, "raw_ratio", r.raw_ratio);
            else
                cJSON_AddNullToObject(o, "raw_ratio");
        } else {
            printf("%5d %12.5g", m, r.background);
            for (int i = 0; i < pc.n_rows; i++) printf("  %-10.5g", r.out[i]);
            printf(" %14.4g %10.4g\n", r.ratio, r.raw_ratio);
        }
    }
    if (json) {
        text = cJSON_Print(root);
        if (!text) goto oom;
        puts(text);
    } else {
        printf("\nnewest/interior = (out(H-1) - background) / (out(H/2) - background); raw =\n"
               "out(H-1) / out(H/2). The authors' released weights: 0.160 vs 0.0021 (~75x,\n"
               "Llama-3.1) and 0.201 vs 0.0004 (~500x, LongChat).\n");
    }
    rc = 0;
    goto cleanup;
oom:
    ap_cli_error(CMD, "out of memory");
cleanup:
    free(text);
    cJSON_Delete(root);
    ap_runtime_free(rt);
    ap_predictor_free(own);
    return rc;
}

int ap_cmd_inspect(int argc, char **argv) {
    int json = 0;
    const char *png_path = NULL, *pred_path = NULL;
    heat_opts ho = {0, NULL, 0, 0, 0, 0, 4.0, 0};
    enum { O_JSON = 256, O_PNG, O_SEQ, O_LAYER, O_HEAD, O_VIEW, O_LOG, O_DEC, O_GLOBAL, O_HELP,
           O_PRED };
    static const struct option longopts[] = {
        {"json", no_argument, 0, O_JSON},         {"png", required_argument, 0, O_PNG},
        {"seq", required_argument, 0, O_SEQ},     {"layer", required_argument, 0, O_LAYER},
        {"head", required_argument, 0, O_HEAD},   {"view", required_argument, 0, O_VIEW},
        {"log", no_argument, 0, O_LOG},           {"decades", required_argument, 0, O_DEC},
        {"global", no_argument, 0, O_GLOBAL},     {"help", no_argument, 0, O_HELP},
        {"predictor", required_argument, 0, O_PRED}, {0, 0, 0, 0}};
    optind = 1;
    opterr = 0;
    int c, heat_flags = 0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_JSON: json = 1; break;
        case O_PNG: png_path = optarg; break;
        case O_SEQ: ho.seq_arg = optarg, heat_flags = 1; break;
        case O_LAYER:
            if (!parse_int(optarg, &ho.layer)) goto bad_value;
            heat_flags = 1;
            break;
        case O_HEAD:
            if (!parse_int(optarg, &ho.head)) goto bad_value;
            heat_flags = 1;
            break;
        case O_VIEW:
            if (!strcmp(optarg, "max"))
                ho.view_sum = 0;
            else if (!strcmp(optarg, "sum"))
                ho.view_sum = 1;
            else
                goto bad_value;
            heat_flags = 1;
            break;
        case O_LOG: ho.log_scale = 1, heat_flags = 1; break;
        case O_DEC: {
            char *end = NULL;
            ho.decades = strtod(optarg, &end);
            if (!optarg[0] || *end || !(ho.decades > 0 && ho.decades <= 30)) goto bad_value;
            heat_flags = 1;
            break;
        }
        case O_GLOBAL: ho.global = 1, heat_flags = 1; break;
        case O_PRED: pred_path = optarg; break;
        case O_HELP: inspect_usage(stdout); return 0;
        default:
            ap_cli_error(CMD, "unknown option or missing value '%s' (see --help)",
                         argv[optind - 1]);
            return 2;
        }
        continue;
    bad_value:
        ap_cli_error(CMD, "bad value '%s' for --%s (see --help)", optarg,
                     longopts[c - O_JSON].name);
        return 2;
    }
    if (pred_path) {
        if (optind < argc || png_path || heat_flags) {
            ap_cli_error(CMD, "--predictor takes no trace and no heatmap options (see --help)");
            return 2;
        }
        return inspect_predictor(pred_path, json);
    }
    if (optind >= argc) {
        ap_cli_error(CMD, "no trace given (usage: attnpred inspect T.h5 [--json] [--png OUT.png])");
        return 2;
    }
    if (argc - optind > 1) {
        ap_cli_error(CMD, "unexpected argument '%s' (one trace at a time)", argv[optind + 1]);
        return 2;
    }
    if (heat_flags && !png_path) {
        ap_cli_error(CMD, "--seq/--layer/--head/--view/--log/--decades/--global need --png");
        return 2;
    }
    const char *path = argv[optind];
    ap_err err;
    ap_err_clear(&err);
    ap_trace *t = NULL;
    int rc = 1;
    if (ap_trace_open(path, &t, &err)) {
        ap_cli_error(CMD, "%s", err.msg);
        return 1;
    }
    if (png_path) {
        if (!resolve_seq(t, ho.seq_arg, &ho.seq_index)) {
            if (ho.seq_arg)
                ap_cli_error(CMD, "%s: no sequence with id or index '%s' (%d sequences)", path,
                             ho.seq_arg, ap_trace_n_seq(t));
            else
                ap_cli_error(CMD, "%s: the trace holds no sequence to draw", path);
            goto cleanup;
        }
        if (heatmap(t, path, &ho, png_path, &err)) {
            ap_cli_error(CMD, "%s", err.msg);
            goto cleanup;
        }
        ap_trace_seq_info in;
        ap_trace_seq_get_info(t, ho.seq_index, &in, NULL);
        fprintf(stderr, "inspect: wrote %s: sequence '%s' layer %d head %d, block_%s%s\n",
                png_path, in.id, ho.layer, ho.head, ho.view_sum ? "sum" : "max",
                ho.log_scale ? ", log scale" : "");
        if (!json) {
            rc = 0;
            goto cleanup;
        }
    }
    if ((json ? summary_json(path, t, &err) : summary_text(path, t, &err)) != 0) {
        ap_cli_error(CMD, "%s", err.msg[0] ? err.msg : "failed");
        goto cleanup;
    }
    rc = 0;
cleanup:
    ap_trace_close(t);
    return rc;
}
