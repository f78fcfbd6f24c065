/* libFuzzer target for the JSON configs the C code reads: the predictor
 * config (ap_pred_config_from_json, train/predictor.h), which a training
 * checkpoint stores in its metadata and `train --resume` / `export` read
 * back through ap_checkpoint_load. (The .json written beside an export is
 * for people and PyTorch, the pipeline configs are read by Python; the
 * trainer's own options JSON in a checkpoint is parsed inside
 * train/trainer.c and is not reachable here.)
 *
 * Every input is taken as JSON text (up to its first NUL) and:
 *   1. parsed with ap_pred_config_from_json. A failure must leave the output
 *      untouched and give a message; a success must pass
 *      ap_pred_config_validate and survive ap_pred_config_to_json ->
 *      ap_pred_config_from_json unchanged (and its layer map
 *      ap_pred_layer_map_to_json -> cJSON the same integers);
 *   2. stored, with the safetensors writer, as both the "config" and the
 *      "train_config" metadata of an otherwise valid checkpoint (params
 *      sized for the config when it parses and is small, else 1 float),
 *      which ap_checkpoint_load must then accept exactly when step 1 did,
 *      with the same config, the same parameters and the train_config text
 *      back byte for byte (the writer's JSON escaping of arbitrary text).
 * The checkpoint goes to /dev/shm (tmpfs: the writer's fsync is free) or
 * /tmp, as fuzz_config.<pid>.safetensors, removed after each input.
 *
 *   ./fuzz_config -max_total_time=60 tests/fuzz/corpus/config */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/checkpoint.h"
#include "train/predictor.h"
#include "train/safetensors.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_PARAMS ((size_t)1 << 16)

static char path[96];

static void cleanup_file(void) { unlink(path); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, sizeof path, "%s/fuzz_config.%ld.safetensors", dir, (long)getpid());
    atexit(cleanup_file);
    return 0;
}

static void die(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_config: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    cleanup_file(); /* abort() skips atexit */
    abort();
}

static int same_config(const ap_pred_config *a, const ap_pred_config *b) {
    if (a->history != b->history || a->block != b->block || a->sink_blocks != b->sink_blocks ||
        a->local_blocks != b->local_blocks || a->c1 != b->c1 || a->c2 != b->c2 ||
        a->n_models != b->n_models || a->query_fusion != b->query_fusion ||
        a->n_layers != b->n_layers)
        return 0;
    for (int l = 0; l < a->n_layers; l++)
        if (a->layer_map[l] != b->layer_map[l]) return 0;
    return 1;
}

static void check_round_trip(const ap_pred_config *c) {
    ap_err err = {0};
    if (ap_pred_config_validate(c, &err) != AP_OK) die("an invalid config was accepted", err.msg);
    char *j = ap_pred_config_to_json(c);
    if (!j) die("to_json failed", NULL);
    ap_pred_config back;
    if (ap_pred_config_from_json(j, &back, &err) != AP_OK) die("own JSON refused", err.msg);
    if (!same_config(c, &back)) die("config changed in a JSON round trip", j);
    free(j);
    char *m = ap_pred_layer_map_to_json(c);
    if (!m) die("layer_map_to_json failed", NULL);
    cJSON *a = cJSON_Parse(m);
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != c->n_layers) die("layer map JSON", m);
    for (int l = 0; l < c->n_layers; l++)
        if (cJSON_GetArrayItem(a, l)->valuedouble != c->layer_map[l]) die("layer map JSON", m);
    cJSON_Delete(a);
    free(m);
}

/* Step 2: the text as checkpoint metadata. ok: step 1 accepted it as c. */
static void check_checkpoint(const char *text, int ok, const ap_pred_config *c) {
    size_t n = ok ? ap_pred_param_count(c) * (size_t)c->n_models : 1;
    if (n > MAX_PARAMS) return;
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = (float)(i % 13) - 6.0f;
    ap_err err = {0};
    ap_st_writer *w = NULL;
    int64_t shape[1] = {(int64_t)n};
    if (ap_st_writer_create(&w, &err) != AP_OK ||
        ap_st_writer_add(w, "params", "F32", 1, shape, p, &err) != AP_OK ||
        ap_st_writer_meta(w, "format", AP_CKPT_FORMAT, &err) != AP_OK ||
        ap_st_writer_meta(w, "version", "1", &err) != AP_OK ||
        ap_st_writer_meta(w, "config", text, &err) != AP_OK ||
        ap_st_writer_meta(w, "epoch", "3", &err) != AP_OK ||
        ap_st_writer_meta(w, "step", "120", &err) != AP_OK ||
        ap_st_writer_meta(w, "rng_state", "18446744073709551615", &err) != AP_OK ||
        ap_st_writer_meta(w, "best_metric", "0.5", &err) != AP_OK ||
        ap_st_writer_meta(w, "metric_name", "val_recovery_mean", &err) != AP_OK ||
        ap_st_writer_meta(w, "train_config", text, &err) != AP_OK ||
        ap_st_writer_write(w, path, &err) != AP_OK)
        die("cannot write the checkpoint", err.msg);
    ap_st_writer_free(w);

    ap_ckpt_info info;
    float *q = NULL, *m = NULL, *v = NULL;
    size_t nq = 0;
    char *tj = NULL;
    ap_status st = ap_checkpoint_load(path, &info, &q, &m, &v, &nq, &tj, &err);
    if ((st == AP_OK) != ok) die(ok ? "the checkpoint refused a valid config" : "the checkpoint accepted an invalid config", err.msg);
    if (st == AP_OK) {
        if (!same_config(&info.cfg, c)) die("the checkpoint's config differs", NULL);
        if (nq != n || memcmp(q, p, n * sizeof(float)) != 0) die("parameters differ", NULL);
        if (m || v) die("Adam moments out of nowhere", NULL);
        if (info.epoch != 3 || info.step != 120 || info.rng_state != UINT64_MAX ||
            info.best_metric != 0.5 || strcmp(info.metric_name, "val_recovery_mean"))
            die("checkpoint metadata", NULL);
        if (!tj || strcmp(tj, text)) die("train_config text changed on the way", NULL);
    } else {
        if (q || m || v || tj) die("a failed load returned data", NULL);
        if (strncmp(err.msg, path, strlen(path)) != 0) die("message does not name the file", err.msg);
    }
    free(q);
    free(m);
    free(v);
    free(tj);
    free(p);
    unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1 << 16)) return 0;
    char *text = malloc(size + 1);
    if (!text) return 0;
    if (size) memcpy(text, data, size);
    text[size] = '\0';

    ap_pred_config c, sentinel;
    memset(&c, 0x5A, sizeof c);
    memcpy(&sentinel, &c, sizeof c);
    ap_err err = {0};
    ap_status st = ap_pred_config_from_json(text, &c, &err);
    if (st != AP_OK) {
        if (memcmp(&c, &sentinel, sizeof c) != 0) die("a failed parse wrote the output", NULL);
        if (!err.msg[0]) die("a failure without a message", NULL);
    } else {
        check_round_trip(&c);
    }
    check_checkpoint(text, st == AP_OK, &c);
    free(text);
    return 0;
}
