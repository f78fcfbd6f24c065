/* LongBench-style answer metrics (eval/textmetrics.h) against hand-computed
 * cases and against every case of the Python reference fixture
 * (tests/fixtures/textmetrics/cases.jsonl, scripts/ref/textmetrics_ref.py,
 * itself cross-checked with the rouge and fuzzywuzzy packages). */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/tolerance.h"
#include "common/util.h"
#include "eval/textmetrics.h"

#define TOL AP_TOL_TEXTMETRIC_ABS
#define FIXTURE AP_SOURCE_DIR "/tests/fixtures/textmetrics/cases.jsonl"

static double sc(ap_tm_metric m, const char *pred, const char *gt) {
    const char *answers[1] = {gt};
    double s = -1;
    ap_err e;
    ap_err_clear(&e);
    cr_assert_eq(ap_tm_score(m, pred, answers, 1, NULL, 0, 0, &s, &e), AP_OK, "%s", e.msg);
    return s;
}

static char *norm(const char *s) {
    char *o = NULL;
    ap_err e;
    cr_assert_eq(ap_tm_normalize(s, &o, &e), AP_OK, "%s", e.msg);
    return o;
}

Test(textmetrics, names_round_trip) {
    for (int m = 0; m < AP_TM_N_METRICS; m++) {
        ap_tm_metric back;
        cr_assert_eq(ap_tm_metric_parse(ap_tm_metric_name((ap_tm_metric)m), &back, NULL), AP_OK);
        cr_assert_eq((int)back, m);
    }
    ap_tm_metric x;
    ap_err e;
    cr_assert_eq(ap_tm_metric_parse("bleu", &x, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "bleu") != NULL);
    cr_assert_null(ap_tm_metric_name(AP_TM_N_METRICS));
}

Test(textmetrics, normalize_by_hand) {
    char *a = norm("The Eiffel Tower, in Paris!");
    cr_assert_str_eq(a, "eiffel tower in paris");
    char *b = norm("  A   theatre: an apple\tthe\n");
    cr_assert_str_eq(b, "theatre apple");
    /* punctuation goes before articles: "a-b" becomes the word "ab" */
    char *c = norm("a-b the.");
    cr_assert_str_eq(c, "ab");
    /* unicode lower-casing, U+0130 -> i + U+0307, NBSP / ideographic space split */
    char *d = norm("CAF\xC3\x89\xC2\xA0\xC4\xB0X\xE3\x80\x80" "A");
    cr_assert_str_eq(d, "caf\xC3\xA9 i\xCC\x87x");
    free(a), free(b), free(c), free(d);
}

Test(textmetrics, qa_f1_by_hand) {
    /* pred tokens {paris, france}, gt {paris}: P = 1/2, R = 1, F = 2/3 */
    cr_assert_float_eq(sc(AP_TM_QA_F1, "Paris, France", "the Paris"), 2.0 / 3.0, TOL);
    /* multiset: pred paris x3 vs gt paris x1 -> same 1, P = 1/3, R = 1, F = 1/2 */
    cr_assert_float_eq(sc(AP_TM_QA_F1, "paris paris paris", "Paris"), 0.5, TOL);
    cr_assert_float_eq(sc(AP_TM_QA_F1, "the a an", "The"), 0.0, TOL);
    cr_assert_float_eq(sc(AP_TM_QA_F1, "", ""), 0.0, TOL);
    cr_assert_float_eq(sc(AP_TM_QA_F1, "Eiffel Tower.", "eiffel tower"), 1.0, TOL);
}

Test(textmetrics, rouge_l_by_hand) {
    /* One sentence each; unique words ref {the, cat, sat, on, mat} (m = 5),
     * hyp {the, cat, sat} (n = 3); LCS words {the, cat, sat}: R = 3/5, P = 1. */
    double f = 2.0 * ((1.0 * 0.6) / (1.0 + 0.6 + 1e-8));
    cr_assert_float_eq(sc(AP_TM_ROUGE_L, "the cat sat", "the cat sat on the mat"), f, TOL);
    /* sets: repeated words count once, so identical word sets in the same
     * order give F = 2 / (2 + 1e-8) */
    cr_assert_float_eq(sc(AP_TM_ROUGE_L, "a a b", "a b b"), 2.0 / (2.0 + 1e-8), TOL);
    /* case sensitive, no sentence, dots only */
    cr_assert_float_eq(sc(AP_TM_ROUGE_L, "Cat", "cat"), 0.0, TOL);
    cr_assert_float_eq(sc(AP_TM_ROUGE_L, "", "cat"), 0.0, TOL);
    cr_assert_float_eq(sc(AP_TM_ROUGE_L, "...", "cat"), 0.0, TOL);
    /* "b a" vs "a b": LCS length 1; rouge's walk (x = ref) keeps "b" only,
     * so union = 1 word: R = P = 1/2 */
    cr_assert_float_eq(sc(AP_TM_ROUGE_L, "b a", "a b"), 2.0 * (0.25 / (1.0 + 1e-8)), TOL);
}

Test(textmetrics, classification_by_hand) {
    const char *cls[] = {"LOC", "LOCATION", "HUM", "HUMAN"};
    const char *gt[] = {"LOCATION"};
    double s;
    /* "LOC" is inside the ground truth and differs from it: removed */
    cr_assert_eq(ap_tm_score(AP_TM_CLASSIFICATION, "LOCATION", gt, 1, cls, 4, 0, &s, NULL), AP_OK);
    cr_assert_float_eq(s, 1.0, TOL);
    cr_assert_eq(ap_tm_score(AP_TM_CLASSIFICATION, "LOCATION or HUMAN", gt, 1, cls, 4, 0, &s, NULL), AP_OK);
    cr_assert_float_eq(s, 1.0 / 3.0, TOL); /* {LOCATION, HUM, HUMAN} */
    /* the removal loop skips the element after a removed one: classes
     * {D, De, Desc}, gt Desc, pred has all three -> D removed, De skipped
     * (slid into D's slot), Desc kept: 1/2 */
    const char *cls2[] = {"D", "De", "Desc"};
    const char *gt2[] = {"Desc"};
    cr_assert_eq(ap_tm_score(AP_TM_CLASSIFICATION, "D De Desc", gt2, 1, cls2, 3, 0, &s, NULL), AP_OK);
    cr_assert_float_eq(s, 0.5, TOL);
    /* first line only */
    const char *gt3[] = {"HUM"};
    cr_assert_eq(ap_tm_score(AP_TM_CLASSIFICATION, "\n\nHUM\nLOC", gt3, 1, cls, 4, 1, &s, NULL), AP_OK);
    cr_assert_float_eq(s, 1.0, TOL);
    cr_assert_eq(ap_tm_score(AP_TM_CLASSIFICATION, "x", gt3, 1, NULL, 0, 0, &s, NULL), AP_ERR_ARG);
}

Test(textmetrics, retrieval_count_by_hand) {
    cr_assert_float_eq(sc(AP_TM_RETRIEVAL, "Paragraph 3 or Paragraph 12", "Paragraph 12"), 0.5, TOL);
    cr_assert_float_eq(sc(AP_TM_RETRIEVAL, "12, 12, 7", "Paragraph 12"), 2.0 / 3.0, TOL);
    cr_assert_float_eq(sc(AP_TM_RETRIEVAL, "none", "Paragraph 12"), 0.0, TOL);
    cr_assert_float_eq(sc(AP_TM_COUNT, "7 unique, not 8", "7"), 0.5, TOL);
    /* Arabic-Indic digits form a \d run of their own */
    cr_assert_float_eq(sc(AP_TM_COUNT, "\xD9\xA7 7", "7"), 0.5, TOL);
    const char *bad[] = {"12"};
    double s = 0;
    ap_err e;
    cr_assert_eq(ap_tm_score(AP_TM_RETRIEVAL, "12", bad, 1, NULL, 0, 0, &s, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "Paragraph") != NULL);
}

Test(textmetrics, fuzz_and_code_sim_by_hand) {
    int r;
    /* abcd vs bcde: one block "bcd", 2*3/8 = 0.75 */
    cr_assert_eq(ap_tm_fuzz_ratio("abcd", "bcde", &r, NULL), AP_OK);
    cr_assert_eq(r, 75);
    cr_assert_eq(ap_tm_fuzz_ratio("", "", &r, NULL), AP_OK);
    cr_assert_eq(r, 100);
    cr_assert_eq(ap_tm_fuzz_ratio("a", "", &r, NULL), AP_OK);
    cr_assert_eq(r, 0);
    /* kitten/sitting: blocks "itt" + "n" = 4 of 13: 61.5 -> 62 */
    cr_assert_eq(ap_tm_fuzz_ratio("kitten", "sitting", &r, NULL), AP_OK);
    cr_assert_eq(r, 62);
    /* half to even: "a" against 14 x + "a" is 2*1/16 = 0.125 exactly, 12.5 -> 12 */
    cr_assert_eq(ap_tm_fuzz_ratio("a", "xxxxxxxxxxxxxxa", &r, NULL), AP_OK);
    cr_assert_eq(r, 12);
    /* code points, not bytes: e-acute vs e is one of two code points each */
    cr_assert_eq(ap_tm_fuzz_ratio("caf\xC3\xA9", "cafe", &r, NULL), AP_OK);
    cr_assert_eq(r, 75);
    cr_assert_float_eq(sc(AP_TM_CODE_SIM, "# comment\nreturn x", "return x"), 1.0, TOL);
    cr_assert_float_eq(sc(AP_TM_CODE_SIM, "`x`\n// y\n# z", "x = 1"), 0.0, TOL);
}

Test(textmetrics, autojunk_by_hand) {
    /* b = 250 x 'a' + 'x' (251 >= 200): 'a' occurs more than 251/100 + 1 = 3
     * times, so it never starts a match; the only block found starts at 'x'
     * and extends backwards over equal (popular) elements: all 251. */
    char a[260], b[260];
    memset(b, 'a', 250);
    b[250] = 'x';
    b[251] = '\0';
    strcpy(a, b);
    a[0] = 'b'; /* a = 'b' + 249 'a' + 'x' */
    long m = 0, la = 0, lb = 0;
    cr_assert_eq(ap_tm_seq_matches(a, b, &m, &la, &lb, NULL), AP_OK);
    cr_assert_eq(la, 251);
    cr_assert_eq(lb, 251);
    cr_assert_eq(m, 250);
    /* without 'x' nothing can start a match at all */
    a[250] = 'y';
    cr_assert_eq(ap_tm_seq_matches(a, b, &m, NULL, NULL, NULL), AP_OK);
    cr_assert_eq(m, 0);
}

Test(textmetrics, passkey_and_substring_by_hand) {
    cr_assert_float_eq(sc(AP_TM_FIRST_INT, "The pass key is 12345.", "12345"), 1.0, TOL);
    cr_assert_float_eq(sc(AP_TM_FIRST_INT, "123456", "12345"), 0.0, TOL);
    cr_assert_float_eq(sc(AP_TM_FIRST_INT, "1 then 12345", "12345"), 0.0, TOL);
    cr_assert_float_eq(sc(AP_TM_SUBSTRING, "CAF\xC3\x89 7654321", "caf\xC3\xA9"), 1.0, TOL);
    cr_assert_float_eq(sc(AP_TM_SUBSTRING, "765432", "7654321"), 0.0, TOL);
    /* max over answers; none -> 0 */
    const char *ans[] = {"1", "12345", "x"};
    double s = -1;
    cr_assert_eq(ap_tm_score(AP_TM_FIRST_INT, "12345", ans, 3, NULL, 0, 0, &s, NULL), AP_OK);
    cr_assert_float_eq(s, 1.0, TOL);
    cr_assert_eq(ap_tm_score(AP_TM_FIRST_INT, "12345", ans, 0, NULL, 0, 0, &s, NULL), AP_OK);
    cr_assert_float_eq(s, 0.0, TOL);
}

Test(textmetrics, invalid_utf8_is_kept) {
    char *o = NULL;
    cr_assert_eq(ap_tm_lower("A\xFF" "B\xC3", &o, NULL), AP_OK);
    cr_assert_str_eq(o, "a\xFF" "b\xC3");
    free(o);
    double s = 0;
    const char *gt[] = {"x\xFFy"};
    cr_assert_eq(ap_tm_score(AP_TM_QA_F1, "X\xFFY", gt, 1, NULL, 0, 0, &s, NULL), AP_OK);
    cr_assert_float_eq(s, 1.0, TOL);
}

Test(textmetrics, arbitrary_bytes_stay_in_range) {
    /* Invalid UTF-8, control bytes and long inputs through every metric: the
     * score is always in [0, 1] (a sanitizer build also checks the memory). */
    uint64_t x = 0x9E3779B97F4A7C15ull;
    static const char alphabet[] = "aAbB .,#/`\n\t0123456789Paragraph\xC3\xA9\xE6\x9D\xB1\xFF\x80\xF0";
    const char *cls[] = {"a", "ab", "B", ""};
    for (int iter = 0; iter < 300; iter++) {
        char p[400], g[120];
        size_t np = (size_t)(iter * 7 % 399), ng = (size_t)(iter * 13 % 119);
        for (size_t i = 0; i < np; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            p[i] = alphabet[(x >> 33) % (sizeof alphabet - 1)];
        }
        for (size_t i = 0; i < ng; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            g[i] = alphabet[(x >> 33) % (sizeof alphabet - 1)];
        }
        p[np] = g[ng] = '\0';
        const char *ans[] = {g, "Paragraph 3"};
        for (int m = 0; m < AP_TM_N_METRICS; m++) {
            double s = -1;
            ap_err e;
            ap_status st = ap_tm_score((ap_tm_metric)m, p, ans, 2, cls, 4, iter & 1, &s, &e);
            if (m == AP_TM_RETRIEVAL && st == AP_ERR_ARG) continue; /* g without "Paragraph N" */
            cr_assert_eq(st, AP_OK, "%s: %s", ap_tm_metric_name((ap_tm_metric)m), e.msg);
            cr_assert(s >= 0.0 && s <= 1.0, "%s: score %g", ap_tm_metric_name((ap_tm_metric)m), s);
        }
    }
}

/* ---- the reference fixture ---- */

static const char **str_array(const cJSON *a, size_t *n) {
    *n = 0;
    if (!cJSON_IsArray(a)) return NULL;
    int k = cJSON_GetArraySize(a);
    const char **v = calloc((size_t)k + 1, sizeof *v);
    cr_assert_not_null(v);
    for (int i = 0; i < k; i++) v[i] = cJSON_GetArrayItem(a, i)->valuestring;
    *n = (size_t)k;
    return v;
}

Test(textmetrics, python_reference_fixture) {
    char *data = NULL;
    size_t len = 0;
    ap_err e;
    if (ap_read_file(FIXTURE, &data, &len, &e) != AP_OK)
        cr_skip_test("no fixture (%s); run python3 scripts/ref/textmetrics_ref.py", e.msg);
    int n_lines = 0, per_fn[3] = {0}, per_metric[AP_TM_N_METRICS] = {0}, autojunk = 0;
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *c = cJSON_Parse(line);
        cr_assert_not_null(c, "%s: line %d is not JSON", FIXTURE, n_lines + 1);
        n_lines++;
        const cJSON *meta = cJSON_GetObjectItem(c, "meta");
        if (meta) {
            const char *uv = cJSON_GetObjectItem(meta, "unicode")->valuestring;
            cr_assert_str_eq(uv, ap_tm_unicode_version(),
                             "fixture made with Unicode %s, tables are %s: regenerate both", uv,
                             ap_tm_unicode_version());
            cJSON_Delete(c);
            continue;
        }
        const char *fn = cJSON_GetObjectItem(c, "fn")->valuestring;
        if (strcmp(fn, "normalize") == 0) {
            char *o = norm(cJSON_GetObjectItem(c, "s")->valuestring);
            cr_expect_str_eq(o, cJSON_GetObjectItem(c, "want")->valuestring, "line %d", n_lines);
            free(o);
            per_fn[0]++;
        } else if (strcmp(fn, "seq") == 0) {
            const char *a = cJSON_GetObjectItem(c, "a")->valuestring;
            const char *b = cJSON_GetObjectItem(c, "b")->valuestring;
            long m = -1;
            int r = -1;
            cr_assert_eq(ap_tm_seq_matches(a, b, &m, NULL, NULL, &e), AP_OK, "%s", e.msg);
            cr_assert_eq(ap_tm_fuzz_ratio(a, b, &r, &e), AP_OK, "%s", e.msg);
            cr_expect_eq(m, (long)cJSON_GetObjectItem(c, "matches")->valuedouble, "line %d: matches %ld",
                         n_lines, m);
            cr_expect_eq(r, cJSON_GetObjectItem(c, "fuzz")->valueint, "line %d: fuzz %d", n_lines, r);
            autojunk += cJSON_IsTrue(cJSON_GetObjectItem(c, "autojunk_matters"));
            per_fn[1]++;
        } else {
            cr_assert_str_eq(fn, "score");
            ap_tm_metric m;
            cr_assert_eq(ap_tm_metric_parse(cJSON_GetObjectItem(c, "metric")->valuestring, &m, &e), AP_OK,
                         "%s", e.msg);
            size_t na = 0, nc = 0;
            const char **ans = str_array(cJSON_GetObjectItem(c, "answers"), &na);
            const char **cls = str_array(cJSON_GetObjectItem(c, "all_classes"), &nc);
            double s = -1, want = cJSON_GetObjectItem(c, "want")->valuedouble;
            int fl = cJSON_IsTrue(cJSON_GetObjectItem(c, "first_line"));
            cr_assert_eq(ap_tm_score(m, cJSON_GetObjectItem(c, "pred")->valuestring, ans, na, cls, nc, fl, &s,
                                     &e),
                         AP_OK, "line %d: %s", n_lines, e.msg);
            cr_expect(fabs(s - want) <= TOL, "line %d (%s, %s): got %.17g, want %.17g", n_lines,
                      ap_tm_metric_name(m), cJSON_GetObjectItem(c, "what")->valuestring, s, want);
            per_metric[m]++;
            per_fn[2]++;
            free(ans);
            free(cls);
        }
        cJSON_Delete(c);
    }
    free(data);
    /* the fixture must exercise every metric and the autojunk heuristic */
    cr_assert_gt(per_fn[0], 20);
    cr_assert_gt(per_fn[1], 20);
    cr_assert_gt(autojunk, 5);
    for (int m = 0; m < AP_TM_N_METRICS; m++)
        cr_assert_geq(per_metric[m], 10, "fixture has %d %s cases", per_metric[m],
                      ap_tm_metric_name((ap_tm_metric)m));
}
