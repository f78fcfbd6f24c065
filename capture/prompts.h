/* Prompt sets: JSON Lines, one object per line:
 *   {"id": "...", "text": "...", "chat": true|false, "task": "...", "source": "..."}
 * id and text are required; ids must be unique. Blank lines are skipped.
 * Errors name the file and the line number. */
#ifndef AP_PROMPTS_H
#define AP_PROMPTS_H

#include <stddef.h>

#include "common/status.h"

typedef struct {
    char *id;
    char *text;
    char *task;   /* NULL if absent */
    char *source; /* NULL if absent */
    int chat;
} ap_prompt;

typedef struct {
    ap_prompt *items;
    int n;
} ap_prompt_set;

ap_status ap_prompts_load(const char *path, ap_prompt_set **out, ap_err *err);
/* Parse a buffer (need not be NUL-terminated); name is used in messages. */
ap_status ap_prompts_parse(const char *data, size_t len, const char *name, ap_prompt_set **out,
                           ap_err *err);
void ap_prompts_free(ap_prompt_set *s); /* NULL ok */

#endif
