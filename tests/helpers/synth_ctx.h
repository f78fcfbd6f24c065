/* A synthetic model (synth_model.h defaults) loaded into a 512-token
 * context, and the small decode helpers the live-decoding tests share.
 * Criterion asserts on failure (test code only). */
#ifndef AP_SYNTH_CTX_H
#define AP_SYNTH_CTX_H

#include <stdint.h>

#include "capture/gguf.h"
#include "capture/model.h"
#include "train/predictor.h"
#include "train/runtime.h"

typedef struct {
    char path[256];
    ap_gguf *g;
    ap_model *m;
    ap_ctx *c;
} ap_synth_ctx;

/* Writes the model to a temporary file (tag in its name) and opens it. */
void ap_synth_ctx_open(ap_synth_ctx *f, const char *tag, int n_threads);
void ap_synth_ctx_close(ap_synth_ctx *f); /* frees and unlinks */

/* n pseudo-random byte tokens from seed. */
void ap_synth_prompt(int32_t *ids, int n, unsigned seed);
/* n pseudo-random token ids in [0, n_vocab) from seed (an LCG). */
void ap_synth_tokens(int32_t *t, int n, int n_vocab, uint64_t seed);
/* A JSON Lines task file (docs/tasks.md) of n_samples samples of the
 * "synthetic" task: the last 700 - 100 s characters of 700 characters of
 * repeated text, answer "cat" (substring metric), max_new tokens
 * each; odd samples use the chat template when chat_odd. */
void ap_synth_task_file(const char *path, int n_samples, int max_new, int chat_odd);
/* A predictor of config c with weights drawn from seed, exported to a
 * temporary file (tag in its name, written to path[256]) and loaded as a
 * runtime running on one thread: what the live tests decode with. The
 * caller frees *rt and *p and unlinks path. */
void ap_synth_runtime(const ap_pred_config *c, uint64_t seed, const char *tag, char *path,
                      ap_predictor **p, ap_runtime **rt);
/* Greedy choice: the first index of the largest value. */
int32_t ap_synth_argmax(const float *x, int n);

#endif
