#include "helpers/synth_ctx.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <unistd.h>

#include "helpers/synth_model.h"

void ap_synth_ctx_open(ap_synth_ctx *f, const char *tag, int n_threads) {
    ap_err err = {0};
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    ap_synth_tmp_path(f->path, sizeof f->path, tag, ".gguf");
    cr_assert_eq(ap_synth_model_write(f->path, &o, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_gguf_open(f->path, &f->g, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_model_load(f->g, &f->m, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_ctx_create(f->m, 512, n_threads, &f->c, &err), AP_OK, "%s", err.msg);
}

void ap_synth_runtime(const ap_pred_config *c, uint64_t seed, const char *tag, char *path,
                      ap_predictor **p, ap_runtime **rt) {
    ap_err e = {0};
    cr_assert_eq(ap_predictor_create(c, seed, p, &e), AP_OK, "%s", e.msg);
    ap_synth_tmp_path(path, 256, tag, ".safetensors");
    cr_assert_eq(ap_pred_export(path, NULL, c, ap_predictor_params(*p, NULL), &e), AP_OK, "%s",
                 e.msg);
    cr_assert_eq(ap_runtime_load(path, rt, &e), AP_OK, "%s", e.msg);
    ap_predictor_set_threads(ap_runtime_predictor(*rt), 1);
}

void ap_synth_ctx_close(ap_synth_ctx *f) {
    ap_ctx_free(f->c);
    ap_model_free(f->m);
    ap_gguf_free(f->g);
    unlink(f->path);
}

void ap_synth_prompt(int32_t *ids, int n, unsigned seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        ids[i] = 3 + (int32_t)((seed >> 16) % 250);
    }
}

int32_t ap_synth_argmax(const float *x, int n) {
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

void ap_synth_tokens(int32_t *t, int n, int n_vocab, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (int32_t)((seed >> 33) % (uint64_t)n_vocab);
    }
}

void ap_synth_task_file(const char *path, int n_samples, int max_new, int chat_odd) {
    FILE *fp = fopen(path, "w");
    cr_assert(fp, "cannot write %s", path);
    char body[701];
    for (int i = 0; i < 700; i++) body[i] = "the cat sat on a mat. "[i % 22];
    body[700] = 0;
    for (int s = 0; s < n_samples; s++) {
        const int at = (s * 100) % 700;
        fprintf(fp,
                "{\"id\": \"t-%d\", \"task\": \"synthetic\", \"category\": \"test\", \"bucket\": "
                "\"0-2k\", \"metric\": \"substring\", \"max_new_tokens\": %d, \"chat\": %s, "
                "\"first_line\": false, \"prompt\": \"%s\", \"answer_prefix\": \" The answer "
                "is\", \"answers\": [\"cat\"], \"all_classes\": null}\n",
                s, max_new, chat_odd && s % 2 ? "true" : "false", body + at);
    }
    cr_assert_eq(fclose(fp), 0, "cannot write %s", path);
}
