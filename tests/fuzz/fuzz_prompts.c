/* libFuzzer target for the prompt-set parser (capture/prompts.c).
 *
 * Every input is parsed as a whole JSON Lines file. Checks beyond "no crash or
 * sanitizer report": a success yields at least one prompt, each with a
 * non-empty id and text of valid lengths, unique ids, and chat 0/1; a failure
 * yields no set and a message that names the input ("fuzz:" prefix).
 *
 *   ./fuzz_prompts tests/fuzz/corpus/prompts */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture/prompts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* A copy of exactly `size` bytes: ASan then catches any read past the end. */
    char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    ap_err e;
    ap_err_clear(&e);
    ap_prompt_set *s = NULL;
    ap_status st = ap_prompts_parse(buf, size, "fuzz", &s, &e);
    if (st == AP_OK) {
        if (!s || s->n < 1) abort();
        for (int i = 0; i < s->n; i++) {
            const ap_prompt *p = &s->items[i];
            if (!p->id || !p->text || !p->id[0] || !p->text[0] || strlen(p->id) > 255) abort();
            if (p->task && strlen(p->task) > 63) abort();
            if (p->chat != 0 && p->chat != 1) abort();
            /* Quadratic, but inputs are small. */
            for (int j = 0; j < i; j++)
                if (!strcmp(s->items[j].id, p->id)) abort();
        }
    } else {
        if (s != NULL || strncmp(e.msg, "fuzz", 4) != 0) abort();
    }
    ap_prompts_free(s);
    free(buf);
    return 0;
}
