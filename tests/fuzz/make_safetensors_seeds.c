/* Writes the seed corpus for fuzz_safetensors into a directory (default
 * tests/fuzz/corpus/safetensors) with the real exporter and checkpoint
 * writer. Not part of the CMake build; run it when the seeds need
 * regenerating, from the repository root:
 *
 *   gcc -std=c11 -D_GNU_SOURCE -I. tests/fuzz/make_safetensors_seeds.c train/runtime.c \
 *       train/predictor.c train/fusion.c train/safetensors.c train/checkpoint.c \
 *       common/status.c common/util.c -lcjson -lopenblas -lpthread -lm \
 *       -o /tmp/make_safetensors_seeds
 *   /tmp/make_safetensors_seeds tests/fuzz/corpus/safetensors
 *
 * Each seed stays under 2 KB (channels c1 = c2 = 2). The seeds cover: a
 * unified export (what ap_fixture predictor writes, smaller); a per-layer
 * export (layers.M. names, layer_map); a query-fusion export; a checkpoint
 * with and one without Adam moments; and header-mutated copies of the
 * unified export (format missing, a tensor F16, a gap between tensors,
 * trailing bytes, c1 disagreeing with the shapes, a duplicate key), which
 * the loaders must refuse cleanly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/checkpoint.h"
#include "train/predictor.h"
#include "train/runtime.h"

static ap_err err;

static void check(ap_status st, const char *what) {
    if (st != AP_OK) {
        fprintf(stderr, "make_safetensors_seeds: %s: %s\n", what, err.msg);
        exit(1);
    }
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    char *b = malloc((size_t)len + 1);
    if (!b || fread(b, 1, (size_t)len, f) != (size_t)len) {
        perror(path);
        exit(1);
    }
    fclose(f);
    b[len] = '\0';
    *n = (size_t)len;
    return b;
}

static void dump(const char *path, const char *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
    printf("%s: %zu bytes\n", path, n);
}

static void small(ap_pred_config *c) {
    ap_pred_config_default(c);
    c->c1 = 2;
    c->c2 = 2;
    c->history = 8;
}

static void export(const char *dir, const char *name, const ap_pred_config *c) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ap_predictor *p = NULL;
    check(ap_predictor_create(c, 5, &p, &err), name);
    check(ap_pred_export(path, NULL, c, ap_predictor_params(p, NULL), &err), name);
    ap_predictor_free(p);
}

/* A copy of `src` with the first occurrence of `from` in its header replaced
 * by `to` (the header length updated), then `append` after the data. */
static void mutate(const char *dir, const char *src, const char *name, const char *from,
                   const char *to, const char *append) {
    char path[4096];
    size_t n;
    snprintf(path, sizeof path, "%s/%s", dir, src);
    char *b = slurp(path, &n);
    uint64_t hlen = 0;
    for (int k = 0; k < 8; k++) hlen |= (uint64_t)(unsigned char)b[k] << (8 * k);
    char *hit = from ? memmem(b + 8, (size_t)hlen, from, strlen(from)) : NULL;
    if (from && !hit) {
        fprintf(stderr, "make_safetensors_seeds: %s: '%s' not in the header\n", name, from);
        exit(1);
    }
    size_t lf = from ? strlen(from) : 0, lt = to ? strlen(to) : 0, la = append ? strlen(append) : 0;
    char *o = malloc(n + lt + la + 1);
    size_t at = hit ? (size_t)(hit - b) : n;
    memcpy(o, b, at);
    memcpy(o + at, to, lt);
    memcpy(o + at + lt, b + at + lf, n - at - lf);
    size_t m = n - lf + lt;
    memcpy(o + m, append, la);
    m += la;
    hlen = hlen - lf + lt;
    for (int k = 0; k < 8; k++) o[k] = (char)(hlen >> (8 * k));
    snprintf(path, sizeof path, "%s/%s", dir, name);
    dump(path, o, m);
    free(o);
    free(b);
}

static void checkpoint(const char *dir, const char *name, int adam) {
    ap_ckpt_info info;
    memset(&info, 0, sizeof info);
    ap_pred_config_default(&info.cfg);
    ap_pred_config_groups(&info.cfg, 3, 2);
    info.cfg.c1 = 1;
    info.cfg.c2 = 1;
    info.epoch = 2;
    info.step = 40;
    info.rng_state = 0x0123456789ABCDEFull;
    info.best_metric = 0.75;
    snprintf(info.metric_name, sizeof info.metric_name, "val_recovery_mean");
    size_t n = ap_pred_param_count(&info.cfg) * (size_t)info.cfg.n_models;
    float *w = calloc(n, sizeof(float)), *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
    for (size_t i = 0; i < n; i++) {
        w[i] = (float)i / 8.0f - 1.0f;
        m[i] = 0.01f * (float)i;
        v[i] = 0.001f * (float)i;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    check(ap_checkpoint_save(path, &info, w, adam ? m : NULL, adam ? v : NULL, n,
                             "{\"epochs\":[{\"epoch\":1,\"train_loss\":0.5}],\"lr\":0.001}", &err),
          name);
    free(w);
    free(m);
    free(v);
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "tests/fuzz/corpus/safetensors";
    ap_pred_config c;
    small(&c);
    export(dir, "unified.safetensors", &c);
    small(&c);
    ap_pred_config_groups(&c, 3, 2);
    export(dir, "per_layer.safetensors", &c);
    small(&c);
    c.query_fusion = 1;
    export(dir, "fusion.safetensors", &c);
    checkpoint(dir, "checkpoint.safetensors", 1);
    checkpoint(dir, "checkpoint_noadam.safetensors", 0);

    const char *u = "unified.safetensors";
    mutate(dir, u, "bad_no_format.safetensors", "\"format\"", "\"formut\"", NULL);
    mutate(dir, u, "bad_f16.safetensors", "\"dtype\":\"F32\"", "\"dtype\":\"F16\"", NULL);
    mutate(dir, u, "bad_gap.safetensors", "\"data_offsets\":[0,", "\"data_offsets\":[4,", NULL);
    mutate(dir, u, "bad_trailing.safetensors", NULL, NULL, "\x01\x02\x03\x04");
    mutate(dir, u, "bad_c1.safetensors", "\"c1\":\"2\"", "\"c1\":\"3\"", NULL);
    mutate(dir, u, "bad_dup_key.safetensors", "\"conv1.bias\"", "\"conv2.bias\"", NULL);
    return 0;
}
