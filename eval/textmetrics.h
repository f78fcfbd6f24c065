/* LongBench-style answer metrics for `attnpred eval tasks` (issue 5).
 *
 * Each function is a port of the Python that LongBench (metrics.py, eval.py),
 * InfiniteBench (passkey) and RULER (string_match_part) run, reproduced to the
 * last rounding step so that scores are comparable with published numbers.
 * The independent reference is scripts/ref/textmetrics_ref.py; it also checks
 * itself against the `rouge` 1.0.1 and `fuzzywuzzy` 0.18.0 packages. Scores
 * are in [0, 1] (LongBench reports 100 x the mean).
 *
 *   qa_f1          token F1 of normalized strings (multiset intersection)
 *   rouge_l        pltrdy `rouge` ROUGE-L F, summary level: text split on '.',
 *                  words on whitespace, *sets* of words (exclusive mode),
 *                  F = 2PR / (P + R + 1e-8); no sentence -> 0
 *   classification class names that occur in the prediction, LongBench's
 *                  removal loop (it skips the element after each removal),
 *                  1/len(matches) when the ground truth is among them
 *   retrieval      id from "Paragraph (\d+)" in the ground truth; share of
 *                  the prediction's \d+ runs equal to it
 *   count          the same with the ground truth itself
 *   code_sim       first line (after leading '\n') containing none of ` # //,
 *                  fuzzywuzzy's ratio / 100: difflib SequenceMatcher ratio
 *                  2M/T over code points (autojunk heuristic included: in b,
 *                  when |b| >= 200, elements occurring more than |b|/100 + 1
 *                  times never start a match), rounded half to even; 100 for
 *                  equal strings, 0 if one is empty
 *   first_int      InfiniteBench passkey: the first run of ASCII digits in the
 *                  prediction equals the answer
 *   substring      RULER string_match_part: answer.lower() in pred.lower()
 *
 * normalize = Python lower(), drop ASCII punctuation (string.punctuation),
 * whole words a|an|the (re's \b, Unicode \w) -> ' ', split on str.isspace()
 * and join with ' '. Unicode properties come from tables generated from
 * Python's own str methods (ap_tm_unicode_version()).
 *
 * Where this differs from Python, knowingly:
 *  - lower() of U+03A3 is always U+03C3; Python picks final sigma U+03C2 at
 *    the end of a word.
 *  - rouge's LCS reconstruction is recursive in Python: a sentence pair
 *    whose word counts sum past the recursion limit (~1000) raises, and
 *    LongBench scores that sample 0. Here it is computed.
 *  - Bytes that are not valid UTF-8 are kept as they are and count as
 *    non-word, non-space characters (Python strings cannot hold them).
 *
 * All functions are pure: no state, inputs are NUL-terminated UTF-8 and are
 * borrowed; outputs that allocate say so (caller frees). On failure they
 * return an ap_status (AP_ERR_NOMEM, AP_ERR_ARG) and leave *score alone. */
#ifndef AP_TEXTMETRICS_H
#define AP_TEXTMETRICS_H

#include <stddef.h>

#include "common/status.h"

typedef enum {
    AP_TM_QA_F1 = 0,
    AP_TM_ROUGE_L,
    AP_TM_CLASSIFICATION,
    AP_TM_RETRIEVAL,
    AP_TM_COUNT,
    AP_TM_CODE_SIM,
    AP_TM_FIRST_INT,
    AP_TM_SUBSTRING,
    AP_TM_N_METRICS
} ap_tm_metric;

/* "qa_f1", "rouge_l", "classification", "retrieval", "count", "code_sim",
 * "first_int", "substring" (the names configs/tasks.json and the task
 * files use); NULL for an unknown value. */
const char *ap_tm_metric_name(ap_tm_metric m);
ap_status ap_tm_metric_parse(const char *name, ap_tm_metric *m, ap_err *err);

/* Unicode version of the property tables ("14.0.0": Python 3.11). */
const char *ap_tm_unicode_version(void);

/* Python str.lower() (see the sigma note above). *out malloc'd. */
ap_status ap_tm_lower(const char *s, char **out, ap_err *err);
/* LongBench normalize_answer. *out malloc'd. */
ap_status ap_tm_normalize(const char *s, char **out, ap_err *err);
/* s.lstrip("\n").split("\n")[0], the part of a prediction LongBench scores
 * for its few-shot tasks. *out malloc'd. */
ap_status ap_tm_first_line(const char *s, char **out, ap_err *err);

/* difflib.SequenceMatcher(None, a, b): total size of the matching blocks and
 * the lengths in code points; ratio = 2 M / (la + lb) (1 when both empty). */
ap_status ap_tm_seq_matches(const char *a, const char *b, long *matches, long *len_a,
                            long *len_b, ap_err *err);
/* fuzzywuzzy fuzz.ratio(a, b) in 0..100. */
ap_status ap_tm_fuzz_ratio(const char *a, const char *b, int *ratio, ap_err *err);

ap_status ap_tm_qa_f1(const char *pred, const char *gt, double *score, ap_err *err);
ap_status ap_tm_rouge_l(const char *pred, const char *gt, double *score, ap_err *err);
ap_status ap_tm_classification(const char *pred, const char *gt, const char *const *classes,
                               size_t n_classes, double *score, ap_err *err);
/* AP_ERR_ARG when gt holds no "Paragraph <digits>" (LongBench would raise). */
ap_status ap_tm_retrieval(const char *pred, const char *gt, double *score, ap_err *err);
ap_status ap_tm_count(const char *pred, const char *gt, double *score, ap_err *err);
ap_status ap_tm_code_sim(const char *pred, const char *gt, double *score, ap_err *err);
ap_status ap_tm_first_int(const char *pred, const char *gt, double *score, ap_err *err);
ap_status ap_tm_substring(const char *pred, const char *gt, double *score, ap_err *err);

/* One sample as LongBench's scorer does it: the first line only when
 * first_line_only, then the max over answers (0 when there are none).
 * classes: the label set, required by classification only. */
ap_status ap_tm_score(ap_tm_metric m, const char *pred, const char *const *answers,
                      size_t n_answers, const char *const *classes, size_t n_classes,
                      int first_line_only, double *score, ap_err *err);

#endif
