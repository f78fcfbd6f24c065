/* libFuzzer target for the task-suite reader (eval/tasks.c, ap_tasks_parse:
 * what `attnpred eval tasks --tasks FILE` reads; format in docs/tasks.md).
 *
 * Every input is parsed as a whole JSON Lines task file twice, with a small
 * ChatML tokenizer (256 byte tokens, <|im_start|> and <|im_end|>): with the
 * default config and with a filter (tasks or ids "passkey" or "s1", at most 2
 * samples, max_new_tokens 3). Checks beyond "no crash or sanitizer report":
 * a success yields >= 1 samples with a known metric, max_new_tokens in
 * [1, 4096] and a non-empty tokenized input; a failure yields no samples and
 * a message that names the input ("fuzz.jsonl:" prefix); and the filtered
 * read agrees with the default one: when the default read succeeds, the
 * filtered one holds exactly the first (at most 2) of its samples that pass
 * the filter, or fails because none does.
 *
 *   ./fuzz_tasks -max_total_time=60 tests/fuzz/corpus/tasks */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/tokenizer.h"
#include "eval/tasks.h"
#include "eval/textmetrics.h"

#define LABEL "fuzz.jsonl"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ap_tokenizer *tok;

static void die(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_tasks: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

static size_t put_cp(uint32_t c, char *out) {
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    out[0] = (char)(0xC0 | (c >> 6));
    out[1] = (char)(0x80 | (c & 0x3F));
    return 2;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char *tokens[258];
    int32_t types[258];
    for (int b = 0; b < 256; b++) {
        tokens[b] = calloc(3, 1);
        put_cp(ap_tokenizer_byte_to_unicode((uint8_t)b), tokens[b]);
        types[b] = 1;
    }
    tokens[256] = strdup("<|im_start|>");
    tokens[257] = strdup("<|im_end|>");
    types[256] = types[257] = 3;
    ap_tokenizer_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.tokens = (const char *const *)tokens;
    spec.token_types = types;
    spec.n_vocab = 258;
    spec.pre = AP_PRE_SMOLLM;
    spec.bos_id = -1;
    spec.eos_id = 257;
    spec.chat_format = 1;
    ap_err err = {0};
    if (ap_tokenizer_create(&spec, &tok, &err) != AP_OK) die("tokenizer", err.msg);
    for (int i = 0; i < 258; i++) free(tokens[i]);
    return 0;
}

static const char *const filter[] = {"passkey", "s1"};

static int passes(const ap_task_sample *s) {
    for (int i = 0; i < 2; i++)
        if (!strcmp(s->task, filter[i]) || !strcmp(s->id, filter[i])) return 1;
    return 0;
}

static int parse(const ap_tasks_config *c, const char *buf, size_t size, ap_task_sample **out,
                 int *n) {
    ap_err err = {0};
    *out = (ap_task_sample *)1; /* must be reset */
    *n = -1;
    ap_status st = ap_tasks_parse(c, tok, buf, size, LABEL, out, n, &err);
    if (st != AP_OK) {
        if (*out || *n) die("a failed parse returned samples", NULL);
        if (strncmp(err.msg, LABEL ":", sizeof LABEL) != 0) die("message does not name the input", err.msg);
        return 0;
    }
    if (!*out || *n < 1) die("success without samples", NULL);
    for (int i = 0; i < *n; i++) {
        const ap_task_sample *s = &(*out)[i];
        ap_tm_metric m;
        if (!memchr(s->id, 0, sizeof s->id) || !memchr(s->task, 0, sizeof s->task) ||
            !memchr(s->metric, 0, sizeof s->metric))
            die("unterminated field", NULL);
        if (ap_tm_metric_parse(s->metric, &m, &err) != AP_OK) die("unknown metric accepted", s->metric);
        if (s->max_new_tokens < 1 || s->max_new_tokens > 4096) die("max_new_tokens out of range", NULL);
        if (c->max_new_tokens > 0 && s->max_new_tokens != c->max_new_tokens)
            die("max_new_tokens override ignored", NULL);
        if (s->n_prompt < 1) die("empty model input accepted", s->id);
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1 << 16)) return 0;
    /* A copy of exactly `size` bytes, not NUL-terminated: ASan catches any
     * read past the end. */
    char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);

    ap_tasks_config c;
    ap_tasks_config_default(&c);
    ap_task_sample *all = NULL, *some = NULL;
    int n_all = 0, n_some = 0;
    int ok_all = parse(&c, buf, size, &all, &n_all);

    c.only_tasks[0] = filter[0];
    c.only_tasks[1] = filter[1];
    c.n_only_tasks = 2;
    c.max_samples = 2;
    c.max_new_tokens = 3;
    int ok_some = parse(&c, buf, size, &some, &n_some);

    if (ok_all) {
        int k = 0;
        for (int i = 0; i < n_all && k < 2; i++) {
            if (!passes(&all[i])) continue;
            if (!ok_some || k >= n_some) die("the filter lost a sample", all[i].id);
            if (strcmp(some[k].id, all[i].id) || some[k].n_prompt != all[i].n_prompt)
                die("the filtered read differs", all[i].id);
            k++;
        }
        if (ok_some && k != n_some) die("the filter kept a sample it should not", NULL);
    }
    if (ok_some)
        for (int i = 0; i < n_some; i++)
            if (!passes(&some[i])) die("a sample outside the filter was kept", some[i].id);
    free(all);
    free(some);
    free(buf);
    return 0;
}
