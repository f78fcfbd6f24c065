/* Fixtures for the shell-level CLI checks (tests/cli_*.sh), which cannot
 * write HDF5 traces, safetensors or GGUF models themselves, and a comparison
 * of two methods in a JSON report. Test code: failures print a message and
 * exit non-zero.
 *
 *   ap_fixture predictor OUT BLOCK HISTORY   random exported predictor (small channels)
 *   ap_fixture trace OUT                     synthetic trace: 2 sequences, 2 layers,
 *                                            3 heads, block 16, history 16, 8 decode steps
 *   ap_fixture model OUT                     the synthetic test model (helpers/synth_model.h)
 *   ap_fixture tasks OUT N MAX_NEW           a task file of N synthetic samples
 *   ap_fixture same-methods JSON A B         every record of method A in any array of the
 *                                            report has a record of method B beside it (same
 *                                            budget, task and bucket) with equal numbers and
 *                                            output; prints the number of pairs compared */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "helpers/synth_ctx.h"
#include "helpers/synth_model.h"
#include "helpers/synth_trace.h"
#include "train/predictor.h"
#include "train/runtime.h"

static int fail(const char *what, const ap_err *e) {
    fprintf(stderr, "ap_fixture: %s: %s\n", what, e ? e->msg : "failed");
    return 1;
}

static int write_predictor(const char *path, int block, int history) {
    ap_err e = {0};
    ap_pred_config c;
    ap_pred_config_default(&c);
    c.block = block;
    c.history = history;
    c.c1 = 4;
    c.c2 = 4;
    ap_predictor *p = NULL;
    if (ap_predictor_create(&c, 17, &p, &e)) return fail(path, &e);
    ap_status st = ap_pred_export(path, NULL, &c, ap_predictor_params(p, NULL), &e);
    ap_predictor_free(p);
    return st ? fail(path, &e) : 0;
}

static int write_trace(const char *path) {
    ap_err e = {0};
    ap_synth_trace_opts o;
    ap_synth_trace_opts_default(&o);
    o.n_seq = 2;
    o.n_gen = 8;
    o.min_prompt = 200;
    o.max_prompt = 300;
    return ap_synth_trace_write(path, &o, &e) ? fail(path, &e) : 0;
}

static int write_model(const char *path) {
    ap_err e = {0};
    ap_synth_opts o;
    ap_synth_opts_default(&o);
    return ap_synth_model_write(path, &o, &e) ? fail(path, &e) : 0;
}

/* What identifies a record besides its method, and what must be equal.
 * Times (seconds, tokens/s, ms per token, prefetch counts) are left out:
 * they are measured, not computed. The task report's intervals are in (one
 * seed for every cell: the same results give the same interval); the
 * replay's paired intervals are not (seeded by method index). */
static const char *const k_ids[] = {"budget", "task", "bucket", "metric"};
static const char *const k_values[] = {
    "recovery", "recovery_ci95", "hit_rate", "hit_rate_ci95", "ratio", "n", "n_bypass",
    "compression", "score", "score_rel_full", "agreement", "kl", "same", "n_gen", "output",
    "resident_kv_bytes", "full_kv_bytes", "cold_kv_bytes", "fetch_kv_bytes", "kv_measured",
    "score_ci95_lo", "score_ci95_hi", "agreement_ci95_lo", "agreement_ci95_hi", "kl_ci95_lo",
    "kl_ci95_hi", "diff", "verdict", "failed_at_full"};

static int is_method(const cJSON *o, const char *name) {
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "method");
    return cJSON_IsObject(o) && cJSON_IsString(m) && !strcmp(m->valuestring, name);
}

static int same_item(const cJSON *a, const cJSON *b) {
    if (!a || !b) return !a && !b;
    /* Exact for numbers: the two methods ran the same computation. */
    if (cJSON_IsNumber(a) && cJSON_IsNumber(b)) return a->valuedouble == b->valuedouble;
    return cJSON_Compare(a, b, 1);
}

static void compare(const cJSON *node, const char *a, const char *b, const char *where,
                    int *pairs, int *bad) {
    if (cJSON_IsArray(node)) {
        const cJSON *x = NULL;
        cJSON_ArrayForEach(x, node) {
            if (!is_method(x, a)) continue;
            const cJSON *y = NULL, *match = NULL;
            cJSON_ArrayForEach(y, node) {
                if (!is_method(y, b)) continue;
                int same_id = 1;
                for (size_t i = 0; i < sizeof k_ids / sizeof *k_ids; i++)
                    same_id &= same_item(cJSON_GetObjectItemCaseSensitive(x, k_ids[i]),
                                         cJSON_GetObjectItemCaseSensitive(y, k_ids[i]));
                if (same_id) match = y;
            }
            if (!match) {
                fprintf(stderr, "ap_fixture: %s: a record of %s has no %s beside it\n", where,
                        a, b);
                (*bad)++;
                continue;
            }
            (*pairs)++;
            for (size_t i = 0; i < sizeof k_values / sizeof *k_values; i++) {
                const cJSON *va = cJSON_GetObjectItemCaseSensitive(x, k_values[i]);
                const cJSON *vb = cJSON_GetObjectItemCaseSensitive(match, k_values[i]);
                if (va && !same_item(va, vb)) {
                    char *sa = cJSON_PrintUnformatted(va), *sb = vb ? cJSON_PrintUnformatted(vb) : NULL;
                    fprintf(stderr, "ap_fixture: %s: %s %s = %s, %s has %s\n", where, a,
                            k_values[i], sa ? sa : "?", b, sb ? sb : "nothing");
                    free(sa);
                    free(sb);
                    (*bad)++;
                }
            }
        }
    }
    const cJSON *c = NULL;
    if (cJSON_IsArray(node) || cJSON_IsObject(node)) {
        cJSON_ArrayForEach(c, node) {
            char sub[512];
            snprintf(sub, sizeof sub, "%s/%s", where, c->string ? c->string : "[]");
            compare(c, a, b, sub, pairs, bad);
        }
    }
}

static int same_methods(const char *path, const char *a, const char *b) {
    ap_err e = {0};
    char *text = NULL;
    size_t len = 0;
    if (ap_read_file(path, &text, &len, &e)) return fail(path, &e);
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) {
        fprintf(stderr, "ap_fixture: %s: not JSON\n", path);
        return 1;
    }
    int pairs = 0, bad = 0;
    compare(j, a, b, "", &pairs, &bad);
    cJSON_Delete(j);
    printf("%d pairs compared, %d differences\n", pairs, bad);
    return pairs > 0 && bad == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "predictor") && argc == 5)
        return write_predictor(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (!strcmp(cmd, "trace") && argc == 3) return write_trace(argv[2]);
    if (!strcmp(cmd, "model") && argc == 3) return write_model(argv[2]);
    if (!strcmp(cmd, "tasks") && argc == 5) {
        ap_synth_task_file(argv[2], atoi(argv[3]), atoi(argv[4]), 1);
        return 0;
    }
    if (!strcmp(cmd, "same-methods") && argc == 5) return same_methods(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: ap_fixture predictor OUT BLOCK HISTORY | trace OUT | model OUT | "
                    "tasks OUT N MAX_NEW | same-methods JSON A B\n");
    return 2;
}
