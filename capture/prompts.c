/* Prompt sets (JSON Lines) with cJSON. Every error names the file and line:
 * "prompts.jsonl:12: missing string field "text"".
 *
 * Limits on id/task/source lengths match what a trace stores per sequence
 * (ap_trace_seq_info), so a prompt that loads also round-trips through a trace. */
#include "capture/prompts.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#define ID_MAX 255
#define TASK_MAX 63
#define SOURCE_MAX 255

/* 1 if s[0..n) is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF):
 * traces store these strings as UTF-8 attributes that h5py decodes. */
static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

/* cJSON decodes "\u0000" into a NUL that silently truncates the C string, so
 * such escapes are found in the raw line and refused. */
static int has_escaped_nul(const char *s, size_t n) {
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\\') continue;
        if (s[i + 1] == 'u' && i + 5 < n && !memcmp(s + i + 2, "0000", 4)) return 1;
        i++; /* skip the escaped character, so "\\u0000" is not a match */
    }
    return 0;
}

/* Open-addressing set of ids -> first line, local to one parse. */
typedef struct {
    const char **key;
    int *line;
    size_t cap;
} id_set;

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int id_set_grow(id_set *set) {
    size_t nc = set->cap ? set->cap * 2 : 64;
    const char **nk = calloc(nc, sizeof *nk);
    int *nl = calloc(nc, sizeof *nl);
    if (!nk || !nl) {
        free(nk);
        free(nl);
        return -1;
    }
    for (size_t i = 0; i < set->cap; i++) {
        if (!set->key[i]) continue;
        size_t j = hash_str(set->key[i]) & (nc - 1);
        while (nk[j]) j = (j + 1) & (nc - 1);
        nk[j] = set->key[i];
        nl[j] = set->line[i];
    }
    free(set->key);
    free(set->line);
    set->key = nk;
    set->line = nl;
    set->cap = nc;
    return 0;
}

/* Returns the first line of an existing id, 0 after inserting, -1 on OOM. The
 * set borrows key; `count` is the number of entries already in the set. */
static int id_set_insert(id_set *set, const char *key, int line, int count) {
    if ((size_t)(count + 1) * 2 > set->cap && id_set_grow(set) < 0) return -1;
    size_t j = hash_str(key) & (set->cap - 1);
    while (set->key[j]) {
        if (!strcmp(set->key[j], key)) return set->line[j];
        j = (j + 1) & (set->cap - 1);
    }
    set->key[j] = key;
    set->line[j] = line;
    return 0;
}

static const char *json_kind(const cJSON *v) {
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    return "a non-object value";
}

/* Copies the optional/required string field into *dst (NULL if absent). */
static ap_status get_str(const cJSON *obj, const char *key, int required, size_t max,
                         const char *name, int line, char **dst, ap_err *err) {
    *dst = NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || (!required && cJSON_IsNull(v))) {
        if (required)
            return ap_errf(err, AP_ERR_FORMAT, "%s:%d: missing string field \"%s\"", name, line,
                           key);
        return AP_OK;
    }
    if (!cJSON_IsString(v) || !v->valuestring)
        return ap_errf(err, AP_ERR_FORMAT, "%s:%d: field \"%s\" must be a string, not %s", name,
                       line, key, json_kind(v));
    size_t n = strlen(v->valuestring);
    if (n == 0 && !required) return AP_OK; /* "task": "" means no task */
    if (n == 0)
        return ap_errf(err, AP_ERR_FORMAT, "%s:%d: field \"%s\" is empty", name, line, key);
    if (max && n > max)
        return ap_errf(err, AP_ERR_FORMAT, "%s:%d: field \"%s\" is %zu bytes long (at most %zu)",
                       name, line, key, n, max);
    if (!utf8_valid((const unsigned char *)v->valuestring, n))
        return ap_errf(err, AP_ERR_FORMAT, "%s:%d: field \"%s\" is not valid UTF-8", name, line,
                       key);
    *dst = strdup(v->valuestring);
    if (!*dst) return ap_errf(err, AP_ERR_NOMEM, "%s:%d: out of memory", name, line);
    return AP_OK;
}

static void prompt_clear(ap_prompt *p) {
    free(p->id);
    free(p->text);
    free(p->task);
    free(p->source);
    memset(p, 0, sizeof *p);
}

static ap_status parse_line(const char *line, size_t len, const char *name, int lineno,
                            ap_prompt *p, ap_err *err) {
    ap_status st = AP_OK;
    cJSON *obj = NULL;
    char *buf = NULL;
    memset(p, 0, sizeof *p);
    if (memchr(line, '\0', len)) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s:%d: line contains a NUL byte", name, lineno);
        goto cleanup;
    }
    if (has_escaped_nul(line, len)) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s:%d: \\u0000 is not allowed in prompt strings", name,
                     lineno);
        goto cleanup;
    }
    /* A NUL-terminated copy: cJSON then never reads past the line. */
    buf = malloc(len + 1);
    if (!buf) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s:%d: out of memory", name, lineno);
        goto cleanup;
    }
    memcpy(buf, line, len);
    buf[len] = '\0';
    const char *end = NULL;
    obj = cJSON_ParseWithOpts(buf, &end, 0);
    if (!obj) {
        /* On failure cJSON points `end` at the offending character. */
        const char *at = end;
        long col = (at && at >= buf && at <= buf + len) ? (long)(at - buf) + 1 : 0;
        if (col > 0)
            st = ap_errf(err, AP_ERR_FORMAT, "%s:%d: invalid JSON near column %ld", name, lineno,
                         col);
        else
            st = ap_errf(err, AP_ERR_FORMAT, "%s:%d: invalid JSON", name, lineno);
        goto cleanup;
    }
    for (const char *q = end; q && *q; q++)
        if (*q != ' ' && *q != '\t' && *q != '\r') {
            st = ap_errf(err, AP_ERR_FORMAT,
                         "%s:%d: text after the JSON object (one object per line)", name, lineno);
            goto cleanup;
        }
    if (!cJSON_IsObject(obj)) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s:%d: expected a JSON object, got %s", name, lineno,
                     json_kind(obj));
        goto cleanup;
    }
    /* cJSON keeps duplicate keys and returns the first; a second "text" is
     * almost certainly an editing mistake, so refuse rather than guess. */
    for (const cJSON *a = obj->child; a; a = a->next)
        for (const cJSON *b = a->next; b; b = b->next)
            if (a->string && b->string && !strcmp(a->string, b->string)) {
                st = ap_errf(err, AP_ERR_FORMAT, "%s:%d: duplicate key \"%s\"", name, lineno,
                             a->string);
                goto cleanup;
            }
    st = get_str(obj, "id", 1, ID_MAX, name, lineno, &p->id, err);
    if (st) goto cleanup;
    st = get_str(obj, "text", 1, 0, name, lineno, &p->text, err);
    if (st) goto cleanup;
    st = get_str(obj, "task", 0, TASK_MAX, name, lineno, &p->task, err);
    if (st) goto cleanup;
    st = get_str(obj, "source", 0, SOURCE_MAX, name, lineno, &p->source, err);
    if (st) goto cleanup;
    const cJSON *chat = cJSON_GetObjectItemCaseSensitive(obj, "chat");
    if (chat && !cJSON_IsNull(chat)) {
        if (!cJSON_IsBool(chat)) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s:%d: field \"chat\" must be true or false, not %s",
                         name, lineno, json_kind(chat));
            goto cleanup;
        }
        p->chat = cJSON_IsTrue(chat) ? 1 : 0;
    }
cleanup:
    if (st) prompt_clear(p);
    cJSON_Delete(obj);
    free(buf);
    return st;
}

static int blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

ap_status ap_prompts_parse(const char *data, size_t len, const char *name, ap_prompt_set **out,
                           ap_err *err) {
    ap_status st = AP_OK;
    ap_prompt_set *set = NULL;
    id_set ids = {0};
    int cap = 0;
    *out = NULL;
    if (!name) name = "prompts";
    set = calloc(1, sizeof *set);
    if (!set) return ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", name);
    size_t pos = 0;
    if (len >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3)) pos = 3; /* editors' UTF-8 BOM */
    for (int lineno = 1; pos < len; lineno++) {
        const char *line = data + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + (nl ? 1 : 0);
        if (blank(line, n)) continue;
        if (set->n == cap) {
            int nc = cap ? 2 * cap : 16;
            ap_prompt *ni = realloc(set->items, (size_t)nc * sizeof *ni);
            if (!ni) {
                st = ap_errf(err, AP_ERR_NOMEM, "%s:%d: out of memory", name, lineno);
                goto cleanup;
            }
            set->items = ni;
            cap = nc;
        }
        ap_prompt *p = &set->items[set->n];
        st = parse_line(line, n, name, lineno, p, err);
        if (st) goto cleanup;
        set->n++;
        int first = id_set_insert(&ids, p->id, lineno, set->n - 1);
        if (first < 0) {
            st = ap_errf(err, AP_ERR_NOMEM, "%s:%d: out of memory", name, lineno);
            goto cleanup;
        }
        if (first > 0) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s:%d: duplicate id \"%s\" (first on line %d)",
                         name, lineno, p->id, first);
            goto cleanup;
        }
    }
    if (set->n == 0) {
        st = ap_errf(err, AP_ERR_FORMAT, "%s: no prompts (empty or blank file)", name);
        goto cleanup;
    }
cleanup:
    free(ids.key);
    free(ids.line);
    if (st) {
        ap_prompts_free(set);
        return st;
    }
    *out = set;
    return AP_OK;
}

ap_status ap_prompts_load(const char *path, ap_prompt_set **out, ap_err *err) {
    char *data = NULL;
    size_t len = 0;
    *out = NULL;
    ap_status st = ap_read_file(path, &data, &len, err);
    if (st) return st;
    st = ap_prompts_parse(data, len, path, out, err);
    free(data);
    return st;
}

void ap_prompts_free(ap_prompt_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) prompt_clear(&s->items[i]);
    free(s->items);
    free(s);
}
