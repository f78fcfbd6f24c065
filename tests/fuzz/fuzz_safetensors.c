/* libFuzzer target for the safetensors reader (train/safetensors.h) and the
 * two loaders built on it that read user files: exported predictors
 * (ap_runtime_load, train/runtime.h: `eval --predictor`, `inspect
 * --predictor`) and training checkpoints (ap_checkpoint_load,
 * train/checkpoint.h: `train --resume`, `export`).
 *
 * Every input is parsed with ap_st_parse; on success every tensor is
 * walked (name lookup, dtype size x shape = byte span, first and last byte
 * touched, float dtypes converted into a buffer of exactly numel floats and
 * refused into one float less) and the spans must tile the data buffer. An
 * input that parses is then written to /tmp/fuzz_safetensors.<pid> (removed
 * after each input and at exit) and loaded both as a predictor and as a
 * checkpoint. A loaded predictor must have a valid config and finite
 * parameters and runs one small forward pass (and query fusion when it has
 * it); a loaded checkpoint must have n_models x param_count finite
 * parameters, both Adam moments or neither, and a valid config. Failures
 * must leave no output and name the input. Allocations are bounded by
 * libFuzzer's -malloc_limit_mb (= -rss_limit_mb): a loader that sizes
 * memory from header fields before checking the data against them is a
 * finding.
 *
 *   ./fuzz_safetensors -max_total_time=60 tests/fuzz/corpus/safetensors
 * Seeds in tests/fuzz/corpus/safetensors come from
 * tests/fuzz/make_safetensors_seeds.c. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/checkpoint.h"
#include "train/predictor.h"
#include "train/runtime.h"
#include "train/safetensors.h"

#define LABEL "fuzz.safetensors"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];

static void cleanup_file(void) { unlink(path); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    snprintf(path, sizeof path, "/tmp/fuzz_safetensors.%ld", (long)getpid());
    atexit(cleanup_file);
    return 0;
}

static void die(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_safetensors: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    cleanup_file(); /* abort() skips atexit */
    abort();
}

static void check_msg(const ap_err *err, const char *name) {
    size_t n = strlen(name);
    if (err->status == AP_ERR_NOMEM) return;
    if (strncmp(err->msg, name, n) != 0 || err->msg[n] != ':')
        die("message does not name the input", err->msg);
}

static int is_float(const char *dtype) {
    return !strcmp(dtype, "F32") || !strcmp(dtype, "F64") || !strcmp(dtype, "F16") ||
           !strcmp(dtype, "BF16");
}

static void walk(const ap_st_file *f, size_t size) {
    int n = ap_st_count(f);
    if (n < 0) die("negative tensor count", NULL);
    size_t covered = 0;
    volatile unsigned char sink = 0;
    for (int i = 0; i < n; i++) {
        const ap_st_tensor *t = ap_st_at(f, i);
        if (!t || !t->name || !t->dtype) die("tensor without name or dtype", NULL);
        if (ap_st_find(f, t->name) != t) die("tensor names not unique", t->name);
        size_t es = ap_st_dtype_size(t->dtype);
        if (es == 0) die("unknown dtype accepted", t->dtype);
        if (t->ndim < 0 || t->ndim > AP_ST_MAX_DIMS) die("ndim out of range", t->name);
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0) die("negative dimension", t->name);
            numel *= (size_t)t->shape[d];
        }
        if (numel != t->numel || t->nbytes != numel * es) die("size disagrees with shape", t->name);
        if (t->nbytes > size) die("tensor larger than the file", t->name);
        covered += t->nbytes;
        if (t->nbytes) {
            const unsigned char *p = t->data;
            sink ^= p[0];
            sink ^= p[t->nbytes - 1];
        }
        if (is_float(t->dtype) && t->numel > 0 && t->numel <= (1u << 16)) {
            ap_err err = {0};
            float *dst = malloc(t->numel * sizeof(float));
            if (ap_st_read_f32(f, t->name, dst, t->numel, &err) != AP_OK)
                die("a float tensor did not convert", err.msg);
            if (ap_st_read_f32(f, t->name, dst, t->numel - 1, &err) == AP_OK)
                die("a short buffer was accepted", t->name);
            free(dst);
        }
    }
    if (ap_st_at(f, -1) || ap_st_at(f, n)) die("ap_st_at out of range returned a tensor", NULL);
    /* The data buffer is exactly the tensors' spans (8 + header + spans == size). */
    if (covered > size - 8) die("spans exceed the data", NULL);
    const char *keys[] = {"format", "version", "config", "layer_map", "c1", ""};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        const char *v = ap_st_meta(f, keys[k]);
        if (v) sink ^= (unsigned char)v[strlen(v) ? strlen(v) - 1 : 0];
    }
    (void)sink;
}

static void try_runtime(void) {
    ap_runtime *rt = NULL;
    ap_err err = {0};
    if (ap_runtime_load(path, &rt, &err) != AP_OK) {
        if (rt) die("a failed load returned a runtime", NULL);
        check_msg(&err, path);
        return;
    }
    const ap_pred_config *c = ap_runtime_config(rt);
    if (ap_pred_config_validate(c, &err) != AP_OK) die("invalid predictor config loaded", err.msg);
    ap_predictor *p = ap_runtime_predictor(rt);
    size_t n = 0;
    const float *w = ap_predictor_params_const(p, &n);
    if (n != ap_pred_param_count(c) * (size_t)c->n_models) die("parameter count", NULL);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(w[i])) die("non-finite parameter loaded", NULL);
    /* One small forward pass (bounded work) with the model of the last layer. */
    enum { H = 4, W = 6, HD = 2 };
    if ((double)c->c1 * c->c2 <= 4096.0) {
        ap_predictor_set_threads(p, 1);
        float hist[H * W], scores[W], q[HD], kmin[W * HD], kmax[W * HD];
        for (int i = 0; i < H * W; i++) hist[i] = (float)(i % 5) / 5.0f;
        for (int i = 0; i < W * HD; i++) {
            kmin[i] = -1.0f;
            kmax[i] = (float)(i % 3);
        }
        q[0] = 1.0f;
        q[1] = -0.5f;
        int layer = c->n_layers > 0 ? c->n_layers - 1 : 0;
        if (ap_runtime_predict(rt, layer, hist, H, W, scores, &err) != AP_OK)
            die("forward failed", err.msg);
        if (ap_runtime_fuse_query(rt, layer, q, kmin, kmax, HD, W, scores, &err) != AP_OK)
            die("query fusion failed", err.msg);
        if (ap_runtime_predict(rt, c->n_layers > 0 ? c->n_layers : -1, hist, H, W, scores,
                               &err) == AP_OK)
            die("a layer without a model was accepted", NULL);
    }
    ap_runtime_free(rt);
}

static void try_checkpoint(void) {
    ap_ckpt_info info;
    float *w = NULL, *m = NULL, *v = NULL;
    size_t n = 0;
    char *tj = NULL;
    ap_err err = {0};
    if (ap_checkpoint_load(path, &info, &w, &m, &v, &n, &tj, &err) != AP_OK) {
        if (w || m || v || tj) die("a failed load returned data", NULL);
        check_msg(&err, path);
        return;
    }
    if (ap_pred_config_validate(&info.cfg, &err) != AP_OK) die("invalid checkpoint config", err.msg);
    if (n != ap_pred_param_count(&info.cfg) * (size_t)info.cfg.n_models) die("parameter count", NULL);
    if (!w || !tj || (m == NULL) != (v == NULL)) die("checkpoint outputs", NULL);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(w[i])) die("non-finite parameter loaded", NULL);
    if (!memchr(info.metric_name, 0, sizeof info.metric_name)) die("metric name", NULL);
    free(w);
    free(m);
    free(v);
    free(tj);
    /* Without the optional outputs. */
    if (ap_checkpoint_load(path, &info, &w, NULL, NULL, NULL, NULL, &err) != AP_OK)
        die("a checkpoint loads only with every output", err.msg);
    free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ap_st_file *f = NULL;
    ap_err err = {0};
    if (ap_st_parse(data, size, LABEL, &f, &err) != AP_OK) {
        if (f) die("a failed parse returned a file", NULL);
        check_msg(&err, LABEL);
        return 0;
    }
    walk(f, size);
    if (strcmp(ap_st_label(f), LABEL)) die("label", NULL);
    ap_st_free(f);

    FILE *fp = fopen(path, "wb");
    if (!fp) die("cannot write the temporary file", path);
    if (size && fwrite(data, 1, size, fp) != size) die("cannot write the temporary file", path);
    if (fclose(fp) != 0) die("cannot write the temporary file", path);
    /* The file reader must agree with the memory one. */
    if (ap_st_open(path, &f, &err) != AP_OK) die("ap_st_open refused what ap_st_parse read", err.msg);
    ap_st_free(f);
    try_runtime();
    try_checkpoint();
    unlink(path);
    return 0;
}
