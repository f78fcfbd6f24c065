/* Prompt sets (JSON Lines): a valid file with every field, blank lines, CRLF and
 * a BOM, unicode text, and each malformed case with the file name and line
 * number in the message. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capture/prompts.h"

static ap_prompt_set *parse_ok(const char *text) {
    ap_err e;
    ap_err_clear(&e);
    ap_prompt_set *s = NULL;
    ap_status st = ap_prompts_parse(text, strlen(text), "p.jsonl", &s, &e);
    cr_assert_eq(st, AP_OK, "unexpected failure: %s", e.msg);
    cr_assert_not_null(s);
    return s;
}

/* Parses text, expects AP_ERR_FORMAT and a message that starts with prefix
 * ("p.jsonl:3: ...") and contains needle. */
static void parse_bad(const char *text, const char *prefix, const char *needle) {
    ap_err e;
    ap_err_clear(&e);
    ap_prompt_set *s = (ap_prompt_set *)1;
    ap_status st = ap_prompts_parse(text, strlen(text), "p.jsonl", &s, &e);
    cr_assert_eq(st, AP_ERR_FORMAT, "expected a format error for %s", text);
    cr_assert_null(s, "no set on failure");
    cr_assert_eq(strncmp(e.msg, prefix, strlen(prefix)), 0, "message '%s' should start '%s'",
                 e.msg, prefix);
    cr_assert(strstr(e.msg, needle) != NULL, "message '%s' should mention '%s'", e.msg, needle);
}

Test(prompts, valid_file_with_all_fields) {
    const char *text =
        "{\"id\": \"a\", \"text\": \"Hello\", \"chat\": true, \"task\": \"qa\", \"source\": \"wiki\"}\n"
        "\n"
        "   \t\n"
        "{\"text\": \"second\", \"id\": \"b/1.2\", \"extra\": [1, 2]}\n"
        "{\"id\": \"c\", \"text\": \"line\\nbreak \\\"quoted\\\"\", \"chat\": false, "
        "\"task\": null, \"source\": \"\"}";
    ap_prompt_set *s = parse_ok(text);
    cr_assert_eq(s->n, 3);
    cr_assert_str_eq(s->items[0].id, "a");
    cr_assert_str_eq(s->items[0].text, "Hello");
    cr_assert_eq(s->items[0].chat, 1);
    cr_assert_str_eq(s->items[0].task, "qa");
    cr_assert_str_eq(s->items[0].source, "wiki");
    cr_assert_str_eq(s->items[1].id, "b/1.2");
    cr_assert_eq(s->items[1].chat, 0, "chat defaults to false");
    cr_assert_null(s->items[1].task);
    cr_assert_null(s->items[1].source);
    cr_assert_str_eq(s->items[2].text, "line\nbreak \"quoted\"");
    cr_assert_eq(s->items[2].chat, 0);
    cr_assert_null(s->items[2].task, "null means absent");
    cr_assert_null(s->items[2].source, "an empty optional string means absent");
    ap_prompts_free(s);
    ap_prompts_free(NULL);
}

Test(prompts, crlf_bom_and_unicode) {
    const char *text = "\xEF\xBB\xBF{\"id\": \"\xc3\xa9t\xc3\xa9\", \"text\": \"caf\\u00e9 "
                       "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 \\ud83d\\ude00\"}\r\n"
                       "{\"id\": \"2\", \"text\": \"x\"}\r\n";
    ap_prompt_set *s = parse_ok(text);
    cr_assert_eq(s->n, 2);
    cr_assert_str_eq(s->items[0].id, "\xc3\xa9t\xc3\xa9");
    /* \u00e9 decodes to the same bytes as the literal; the surrogate pair to U+1F600. */
    cr_assert_str_eq(s->items[0].text,
                     "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 \xf0\x9f\x98\x80");
    cr_assert_str_eq(s->items[1].text, "x");
    ap_prompts_free(s);
}

Test(prompts, buffer_need_not_be_nul_terminated) {
    char buf[64];
    const char *line = "{\"id\": \"a\", \"text\": \"b\"}";
    size_t n = strlen(line);
    memcpy(buf, line, n);
    memset(buf + n, '}', sizeof buf - n); /* garbage after the given length */
    ap_err e;
    ap_prompt_set *s = NULL;
    cr_assert_eq(ap_prompts_parse(buf, n, "p.jsonl", &s, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(s->n, 1);
    ap_prompts_free(s);
}

Test(prompts, missing_and_wrong_fields) {
    parse_bad("{\"id\": \"a\", \"text\": \"ok\"}\n{\"id\": \"b\"}\n", "p.jsonl:2: ",
              "missing string field \"text\"");
    parse_bad("\n\n{\"text\": \"t\"}\n", "p.jsonl:3: ", "missing string field \"id\"");
    parse_bad("{\"id\": 7, \"text\": \"t\"}", "p.jsonl:1: ", "\"id\" must be a string, not a number");
    parse_bad("{\"id\": \"a\", \"text\": \"\"}", "p.jsonl:1: ", "\"text\" is empty");
    parse_bad("{\"id\": \"\", \"text\": \"t\"}", "p.jsonl:1: ", "\"id\" is empty");
    parse_bad("{\"id\": \"a\", \"text\": null}", "p.jsonl:1: ", "\"text\" must be a string");
    parse_bad("{\"id\": \"a\", \"text\": \"t\", \"chat\": 1}", "p.jsonl:1: ",
              "\"chat\" must be true or false");
    parse_bad("{\"id\": \"a\", \"text\": \"t\", \"task\": [\"x\"]}", "p.jsonl:1: ",
              "\"task\" must be a string, not an array");
    parse_bad("{\"id\": \"a\", \"text\": \"t\", \"text\": \"u\"}", "p.jsonl:1: ",
              "duplicate key \"text\"");
}

Test(prompts, not_an_object_or_not_json) {
    parse_bad("[1, 2]\n", "p.jsonl:1: ", "expected a JSON object, got an array");
    parse_bad("{\"id\": \"a\", \"text\": \"t\"}\n\"just a string\"\n", "p.jsonl:2: ",
              "got a string");
    parse_bad("{\"id\": \"a\", \"text\": \"t\"}\n{\"id\": \"b\", \"text\": \"t\"\n", "p.jsonl:2: ",
              "invalid JSON");
    parse_bad("{\"id\": \"a\" \"text\": \"t\"}", "p.jsonl:1: ", "invalid JSON near column 12");
    parse_bad("{\"id\": \"a\", \"text\": \"t\"} {\"id\": \"b\", \"text\": \"t\"}", "p.jsonl:1: ",
              "one object per line");
    parse_bad("{\"id\": \"a\", \"text\": \"t\"}\n\n\n\n{\"id\": \"b\", \"text\": \"t\", }\n",
              "p.jsonl:5: ", "invalid JSON");
}

Test(prompts, duplicate_ids_name_both_lines) {
    parse_bad("{\"id\": \"x\", \"text\": \"1\"}\n{\"id\": \"y\", \"text\": \"2\"}\n\n"
              "{\"id\": \"x\", \"text\": \"3\"}\n",
              "p.jsonl:4: ", "duplicate id \"x\" (first on line 1)");
}

Test(prompts, many_ids_stay_unique) {
    /* Enough lines to grow the id set several times; one duplicate at the end. */
    const int n = 3000;
    size_t cap = (size_t)n * 48 + 64, len = 0;
    char *buf = malloc(cap);
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, cap - len, "{\"id\": \"p%d\", \"text\": \"t\"}\n", i);
    ap_err e;
    ap_prompt_set *s = NULL;
    cr_assert_eq(ap_prompts_parse(buf, len, "p.jsonl", &s, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(s->n, n);
    cr_assert_str_eq(s->items[n - 1].id, "p2999");
    ap_prompts_free(s);
    len += (size_t)snprintf(buf + len, cap - len, "{\"id\": \"p1234\", \"text\": \"t\"}\n");
    cr_assert_eq(ap_prompts_parse(buf, len, "p.jsonl", &s, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "p.jsonl:3001: duplicate id \"p1234\" (first on line 1235)") != NULL,
              "%s", e.msg);
    free(buf);
}

Test(prompts, strings_a_trace_cannot_hold) {
    parse_bad("{\"id\": \"a\", \"text\": \"t\\u0000u\"}", "p.jsonl:1: ", "\\u0000");
    /* An escaped backslash followed by u0000 is ordinary text. */
    ap_prompt_set *s = parse_ok("{\"id\": \"a\", \"text\": \"t\\\\u0000\"}");
    cr_assert_str_eq(s->items[0].text, "t\\u0000");
    ap_prompts_free(s);
    parse_bad("{\"id\": \"a\", \"text\": \"bad \xff byte\"}", "p.jsonl:1: ", "not valid UTF-8");
    parse_bad("{\"id\": \"a\", \"text\": \"overlong \xc0\xaf\"}", "p.jsonl:1: ", "not valid UTF-8");
    parse_bad("{\"id\": \"a\", \"text\": \"surrogate \xed\xa0\x80\"}", "p.jsonl:1: ",
              "not valid UTF-8");
    char line[600];
    char id[300];
    memset(id, 'x', 256);
    id[256] = '\0';
    snprintf(line, sizeof line, "{\"id\": \"%s\", \"text\": \"t\"}", id);
    parse_bad(line, "p.jsonl:1: ", "\"id\" is 256 bytes long (at most 255)");
    id[255] = '\0';
    snprintf(line, sizeof line, "{\"id\": \"%s\", \"text\": \"t\"}", id);
    s = parse_ok(line);
    ap_prompts_free(s);
    snprintf(line, sizeof line,
             "{\"id\": \"a\", \"text\": \"t\", \"task\": \"%064d\"}", 0);
    parse_bad(line, "p.jsonl:1: ", "\"task\" is 64 bytes long (at most 63)");
    const char nul[] = "{\"id\": \"a\", \"text\": \"t\"}\n{\"id\": \"b\",\0 \"text\": \"t\"}";
    ap_err e;
    cr_assert_eq(ap_prompts_parse(nul, sizeof nul - 1, "p.jsonl", &s, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "p.jsonl:2: line contains a NUL byte") != NULL, "%s", e.msg);
}

Test(prompts, empty_input) {
    parse_bad("", "p.jsonl: ", "no prompts");
    parse_bad("\n \n\r\n", "p.jsonl: ", "no prompts");
}

Test(prompts, load_from_file) {
    char path[] = "/tmp/ap_prompts_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char *text = "{\"id\": \"q1\", \"text\": \"What is 2+2?\", \"task\": \"math\"}\n"
                       "{\"id\": \"q2\", \"text\": 5}\n";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    ap_err e;
    ap_prompt_set *s = NULL;
    cr_assert_eq(ap_prompts_load(path, &s, &e), AP_ERR_FORMAT);
    char want[128];
    snprintf(want, sizeof want, "%s:2: field \"text\" must be a string", path);
    cr_assert(strstr(e.msg, want) == e.msg, "%s", e.msg);
    unlink(path);
    cr_assert_eq(ap_prompts_load(path, &s, &e), AP_ERR_IO);
    cr_assert(strstr(e.msg, path) != NULL, "%s", e.msg);
}

Test(prompts, shipped_prompt_sets_load) {
    const char *names[] = {"smoke", "quick", "default"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/data/prompts/%s.jsonl", AP_SOURCE_DIR, names[i]);
        if (access(path, R_OK) != 0) continue;
        ap_err e;
        ap_prompt_set *s = NULL;
        cr_assert_eq(ap_prompts_load(path, &s, &e), AP_OK, "%s", e.msg);
        cr_assert_gt(s->n, 0);
        ap_prompts_free(s);
    }
}
