/* Replay reports: JSON (every aggregate), Markdown (paper-style tables) and
 * PNG plots (issue 4; keys and layout in docs/eval-report.md).
 *
 * All three read only the result; the "summary" choices (best heuristic,
 * oracle, best predictor per budget) are made by one function so the three
 * reports can never disagree about them. Recovery and hit rate are fractions
 * in the JSON and percentages in the Markdown and plots. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/plot.h"
#include "common/util.h"
#include "eval/replay.h"
#include "eval/report_util.h"


/* ---- shared: per-cell values and the per-budget summary ------------------ */

/* Mean of an aggregate, NaN when nothing was counted (a method that was not
 * run, or a budget no sample reached), so reports show "no data" rather than
 * a fake zero. */
static double agg_mean(const ap_meanci *a) { return a->n > 0 ? a->mean : NAN; }
static double agg_ci(const ap_meanci *a) { return a->n > 0 ? ap_meanci_half95(a) : NAN; }

/* The one compression of every report (docs/eval-report.md): context over
 * the tokens kept, both averaged over the decode steps, the task report's
 * full KV / resident KV in tokens. A budget at or above the context gives
 * 1.0x. */
static double compression(const ap_replay_result *r, int b) {
    return r->mean_kept[b] > 0 ? r->mean_context / r->mean_kept[b] : NAN;
}

/* What the budget promises on paper (the former "compression"): mean
 * context / B, below 1 once B exceeds the context. */
static double budget_ratio(const ap_replay_result *r, int b) {
    return r->budgets[b] > 0 ? r->mean_context / r->budgets[b] : NAN;
}

typedef struct {
    int best_heur; /* best non-bound, non-predictor method by mean recovery; -1 if none */
    int oracle;    /* first bound method; -1 if none */
    int best_pred; /* best predictor method by mean recovery; -1 if none */
} budget_summary;

/* Ties go to the lower method index, so the choice is deterministic. */
static void summarize(const ap_replay_result *r, int b, budget_summary *s) {
    double best_h = -INFINITY, best_p = -INFINITY;
    s->best_heur = s->oracle = s->best_pred = -1;
    for (int m = 0; m < r->n_methods; m++) {
        const ap_replay_method *me = &r->methods[m];
        double rec = agg_mean(&ap_replay_cell_at(r, m, b)->recovery);
        if (me->kind == AP_SEL_BOUND) {
            if (s->oracle < 0) s->oracle = m;
            continue;
        }
        if (!isfinite(rec)) continue;
        if (me->is_predictor && rec > best_p) {
            best_p = rec;
            s->best_pred = m;
        } else if (!me->is_predictor && !me->dense_every_step && rec > best_h) {
            best_h = rec;
            s->best_heur = m;
        }
    }
}

static double method_recovery(const ap_replay_result *r, int m, int b) {
    return m < 0 ? NAN : agg_mean(&ap_replay_cell_at(r, m, b)->recovery);
}


static ap_status check_result(const ap_replay_result *r, const char *path, ap_err *err) {
    if (!path || !*path) return ap_errf(err, AP_ERR_ARG, "replay report: no output path given");
    if (!r) return ap_errf(err, AP_ERR_ARG, "%s: no replay result to report", path);
    if (r->n_methods < 0 || r->n_methods > AP_REPLAY_MAX_METHODS || r->n_budgets < 1 ||
        r->n_budgets > AP_REPLAY_MAX_BUDGETS)
        return ap_errf(err, AP_ERR_ARG, "%s: replay result has %d methods and %d budgets", path,
                       r->n_methods, r->n_budgets);
    if (r->n_methods > 0 && !r->cells)
        return ap_errf(err, AP_ERR_ARG, "%s: replay result has no cells", path);
    if (r->n_layer < 0 || r->n_head < 0)
        return ap_errf(err, AP_ERR_ARG, "%s: replay result has %d layers x %d heads", path,
                       r->n_layer, r->n_head);
    return AP_OK;
}


/* ---- JSON ------------------------------------------------------------------ */



static void json_header(ap_jbuild *j, cJSON *root, const ap_replay_result *r) {
    const ap_replay_config *c = &r->config;
    ap_jadd_str(j, root, "format", "attnpred-replay");
    ap_jadd_num(j, root, "version", 1);
    cJSON *tr = ap_jadd(j, root, "traces", cJSON_CreateArray());
    for (int i = 0; i < c->n_traces && i < AP_REPLAY_MAX_TRACES; i++)
        ap_jadd(j, tr, NULL, cJSON_CreateString(c->traces[i] ? c->traces[i] : ""));
    cJSON *pr = ap_jadd(j, root, "predictors", cJSON_CreateArray());
    for (int i = 0; i < c->n_predictors && i < AP_REPLAY_MAX_PREDICTORS; i++) {
        cJSON *p = ap_jadd(j, pr, NULL, cJSON_CreateObject());
        ap_jadd_str(j, p, "path", c->predictors[i]);
        ap_jadd_str(j, p, "name", r->predictor_names[i]);
        /* As given; null for a default name (kept for older readers). */
        if (c->predictor_names[i])
            ap_jadd_str(j, p, "label", c->predictor_names[i]);
        else
            ap_jadd(j, p, "label", cJSON_CreateNull());
    }

    cJSON *cf = ap_jadd(j, root, "config", cJSON_CreateObject());
    cJSON *bu = ap_jadd(j, cf, "budgets", cJSON_CreateArray());
    for (int b = 0; b < r->n_budgets; b++) ap_jadd(j, bu, NULL, cJSON_CreateNumber(r->budgets[b]));
    ap_jadd_num(j, cf, "sink", c->sink_tokens);
    ap_jadd_num(j, cf, "local", c->local_tokens);
    ap_jadd_num(j, cf, "calib", c->calib);
    ap_jadd_str(j, cf, "kv_mode", ap_kv_mode_name(c->kv_mode));
    cJSON *dl = ap_jadd(j, cf, "dense_layers", cJSON_CreateArray());
    for (int i = 0; i < c->n_dense_layers && i < AP_REPLAY_MAX_LAYERS; i++)
        ap_jadd(j, dl, NULL, cJSON_CreateNumber(c->dense_layers[i]));
    ap_jadd_num(j, cf, "min_candidates", c->min_candidates);
    ap_jadd_num(j, cf, "snapkv_window", c->snapkv_window);
    ap_jadd_num(j, cf, "snapkv_pool", c->snapkv_pool);
    ap_jadd_num(j, cf, "incremental", c->incremental);
    ap_jadd_num(j, cf, "pred_stride", c->pred_stride > 1 ? c->pred_stride : 1);
    ap_jadd_bool(j, cf, "pred_per_kv", c->pred_per_kv);
    ap_jadd_num(j, cf, "max_seqs", c->max_seqs);
    ap_jadd_num(j, cf, "max_steps", c->max_steps);

    cJSON *mo = ap_jadd(j, root, "model", cJSON_CreateObject());
    ap_jadd_num(j, mo, "n_layer", r->n_layer);
    ap_jadd_num(j, mo, "n_head", r->n_head);
    ap_jadd_num(j, mo, "n_head_kv", r->n_head_kv);
    ap_jadd_num(j, mo, "head_dim", r->head_dim);
    ap_jadd_num(j, mo, "block", r->block);
    /* Issue 13: which layers the methods selected in (sliding-window layers
     * are bounded already and are not counted). */
    ap_replay_layers ly;
    ap_replay_layers_of(r, &ly);
    cJSON *lw = ap_jadd(j, mo, "layer_window", cJSON_CreateArray());
    for (int l = 0; l < r->n_layer && l < AP_REPLAY_MAX_LAYERS; l++)
        ap_jadd(j, lw, NULL, cJSON_CreateNumber(r->layer_window[l]));
    ap_jadd_num(j, mo, "n_full_layers", ly.n_selected + ly.n_dense);
    ap_jadd_num(j, mo, "sliding_window", ly.window);
    char note[160];
    ap_replay_layers_note(&ly, note, sizeof note);
    cJSON *sl = ap_jadd(j, root, "selection_layers", cJSON_CreateObject());
    ap_jadd_num(j, sl, "n_selected", ly.n_selected);
    ap_jadd_num(j, sl, "n_layer", ly.n_layer);
    ap_jadd_num(j, sl, "n_sliding", ly.n_sliding);
    ap_jadd_num(j, sl, "n_dense", ly.n_dense);
    ap_jadd_str(j, sl, "note", note);

    ap_jadd_num(j, root, "n_seq", r->n_seq);
    ap_jadd_num(j, root, "n_decode_steps", (double)r->n_decode_steps);
    ap_jadd_num(j, root, "mean_context", r->mean_context);
    ap_jadd_num(j, root, "max_context", r->max_context);
    ap_jadd_num(j, root, "seconds", r->seconds);
    ap_jadd_num(j, root, "n_skipped_nonfinite", (double)r->n_skipped_nonfinite);
    ap_jadd(j, root, "incremental", cJSON_CreateBool(r->incremental != 0));
    cJSON *dr = ap_jadd(j, root, "dropped", cJSON_CreateArray());
    for (int i = 0; i < r->n_dropped; i++) {
        cJSON *o = ap_jadd(j, dr, NULL, cJSON_CreateObject());
        ap_jadd_str(j, o, "method", r->dropped[i]);
        ap_jadd_str(j, o, "reason", r->dropped_reason[i]);
    }
}

static void json_methods(ap_jbuild *j, cJSON *root, const ap_replay_result *r) {
    cJSON *arr = ap_jadd(j, root, "methods", cJSON_CreateArray());
    for (int m = 0; m < r->n_methods; m++) {
        const ap_replay_method *me = &r->methods[m];
        cJSON *o = ap_jadd(j, arr, NULL, cJSON_CreateObject());
        ap_jadd_str(j, o, "name", me->name);
        ap_jadd_str(j, o, "label", me->label);
        ap_jadd_str(j, o, "kind", ap_sel_kind_name(me->kind));
        ap_jadd(j, o, "is_predictor", cJSON_CreateBool(me->is_predictor != 0));
        ap_jadd(j, o, "dense_every_step", cJSON_CreateBool(me->dense_every_step != 0));
        ap_jadd_str(j, o, "source", me->source);
        if (me->is_predictor) {
            ap_jadd_num(j, o, "naive_macs_per_step_head", r->pred_naive_macs[m]);
            ap_jadd_num(j, o, "run_macs_per_step_head", r->pred_run_macs[m]);
            ap_jadd_num(j, o, "us_per_step_head", r->pred_us_per_step_head[m]);
        }
    }
}

static void json_results(ap_jbuild *j, cJSON *root, const ap_replay_result *r) {
    cJSON *arr = ap_jadd(j, root, "results", cJSON_CreateArray());
    for (int m = 0; m < r->n_methods; m++)
        for (int b = 0; b < r->n_budgets; b++) {
            const ap_replay_cell *c = ap_replay_cell_at(r, m, b);
            cJSON *o = ap_jadd(j, arr, NULL, cJSON_CreateObject());
            ap_jadd_str(j, o, "method", r->methods[m].name);
            ap_jadd_str(j, o, "kind", ap_sel_kind_name(r->methods[m].kind));
            ap_jadd_num(j, o, "budget", r->budgets[b]);
            ap_jadd_num(j, o, "compression", compression(r, b));
            ap_jadd_num(j, o, "budget_ratio", budget_ratio(r, b));
            ap_jadd_num(j, o, "recovery", agg_mean(&c->recovery));
            ap_jadd_num(j, o, "recovery_ci95", agg_ci(&c->recovery));
            ap_jadd_num(j, o, "hit_rate", agg_mean(&c->hit_rate));
            ap_jadd_num(j, o, "hit_rate_ci95", agg_ci(&c->hit_rate));
            ap_jadd_num(j, o, "ratio", agg_mean(&c->ratio));
            ap_jadd_num(j, o, "ratio_ci95", agg_ci(&c->ratio));
            ap_jadd_num(j, o, "n", (double)c->n);
            ap_jadd_num(j, o, "n_bypass", (double)c->n_bypass);
            if (!c->layer_head_recovery || r->n_layer == 0 || r->n_head == 0) {
                ap_jadd(j, o, "layer_head", cJSON_CreateNull());
                continue;
            }
            cJSON *lh = ap_jadd(j, o, "layer_head", cJSON_CreateArray());
            for (int l = 0; l < r->n_layer; l++) {
                cJSON *row = ap_jadd(j, lh, NULL, cJSON_CreateArray());
                for (int h = 0; h < r->n_head; h++)
                    ap_jadd(j, row, NULL, ap_jnum(c->layer_head_recovery[(long)l * r->n_head + h]));
            }
        }
}

static void json_summary(ap_jbuild *j, cJSON *root, const ap_replay_result *r) {
    cJSON *arr = ap_jadd(j, root, "summary", cJSON_CreateArray());
    for (int b = 0; b < r->n_budgets; b++) {
        budget_summary s;
        summarize(r, b, &s);
        double heur = method_recovery(r, s.best_heur, b), orac = method_recovery(r, s.oracle, b);
        cJSON *o = ap_jadd(j, arr, NULL, cJSON_CreateObject());
        ap_jadd_num(j, o, "budget", r->budgets[b]);
        ap_jadd_num(j, o, "compression", compression(r, b));
        ap_jadd_num(j, o, "budget_ratio", budget_ratio(r, b));
        ap_jadd_num(j, o, "kept_tokens", r->mean_kept[b]);
        if (s.best_heur >= 0) {
            cJSON *h = ap_jadd(j, o, "best_heuristic", cJSON_CreateObject());
            ap_jadd_str(j, h, "method", r->methods[s.best_heur].name);
            ap_jadd_str(j, h, "kind", ap_sel_kind_name(r->methods[s.best_heur].kind));
            ap_jadd_num(j, h, "recovery", heur);
        } else {
            ap_jadd(j, o, "best_heuristic", cJSON_CreateNull());
        }
        if (s.oracle >= 0) {
            cJSON *h = ap_jadd(j, o, "oracle", cJSON_CreateObject());
            ap_jadd_str(j, h, "method", r->methods[s.oracle].name);
            ap_jadd_num(j, h, "recovery", orac);
        } else {
            ap_jadd(j, o, "oracle", cJSON_CreateNull());
        }
        if (s.best_pred >= 0)
            ap_jadd_str(j, o, "best_predictor", r->methods[s.best_pred].name);
        else
            ap_jadd(j, o, "best_predictor", cJSON_CreateNull());
        cJSON *pa = ap_jadd(j, o, "predictors", cJSON_CreateArray());
        for (int m = 0; m < r->n_methods; m++) {
            if (!r->methods[m].is_predictor) continue;
            double rec = method_recovery(r, m, b);
            cJSON *p = ap_jadd(j, pa, NULL, cJSON_CreateObject());
            ap_jadd_str(j, p, "method", r->methods[m].name);
            ap_jadd_num(j, p, "recovery", rec);
            ap_jadd_num(j, p, "ratio", agg_mean(&ap_replay_cell_at(r, m, b)->ratio));
            ap_jadd_num(j, p, "gain_over_best_heuristic", rec - heur);
            ap_jadd_num(j, p, "gap_to_oracle", orac - rec);
        }
    }
}


/* The method paired differences are taken against: last_step (the cheap
 * baseline every predictor must beat, method.md 2.4); -1 when not run. */
static int paired_ref(const ap_replay_result *r) {
    for (int m = 0; m < r->n_methods; m++)
        if (!strcmp(r->methods[m].name, "last_step")) return m;
    return -1;
}

static void json_paired(ap_jbuild *j, cJSON *root, const ap_replay_result *r) {
    int ref = paired_ref(r);
    if (ref < 0) {
        ap_jadd(j, root, "paired_vs_last_step", cJSON_CreateNull());
        return;
    }
    cJSON *arr = ap_jadd(j, root, "paired_vs_last_step", cJSON_CreateArray());
    for (int m = 0; m < r->n_methods; m++) {
        if (m == ref) continue;
        for (int b = 0; b < r->n_budgets; b++) {
            double d, lo, hi;
            int n = ap_replay_paired_diff(r, m, ref, b, &d, &lo, &hi);
            cJSON *o = ap_jadd(j, arr, NULL, cJSON_CreateObject());
            ap_jadd_str(j, o, "method", r->methods[m].name);
            ap_jadd_num(j, o, "budget", r->budgets[b]);
            ap_jadd_num(j, o, "recovery_diff", d);
            ap_jadd_num(j, o, "ci95_lo", lo);
            ap_jadd_num(j, o, "ci95_hi", hi);
            ap_jadd_num(j, o, "n_seq", n);
        }
    }
}

ap_status ap_replay_write_json(const ap_replay_result *r, const char *path, ap_err *err) {
    ap_status st = check_result(r, path, err);
    if (st) return st;
    ap_jbuild j = {0};
    char *text = NULL;
    cJSON *root = cJSON_CreateObject();
    if (!root) j.failed = 1;
    json_header(&j, root, r);
    json_methods(&j, root, r);
    json_results(&j, root, r);
    json_summary(&j, root, r);
    json_paired(&j, root, r);
    if (!j.failed) text = cJSON_Print(root);
    if (!text) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory building the JSON report", path);
        goto cleanup;
    }
    st = ap_report_write_text(path, text, err);
cleanup:
    cJSON_free(text);
    cJSON_Delete(root);
    return st;
}

/* ---- Markdown ------------------------------------------------------------------ */



static void md_budget_header(FILE *f, const ap_replay_result *r) {
    fputs("| method | kind |", f);
    for (int b = 0; b < r->n_budgets; b++) {
        double cr = compression(r, b);
        if (isfinite(cr))
            fprintf(f, " %d (%.1fx) |", r->budgets[b], cr);
        else
            fprintf(f, " %d |", r->budgets[b]);
    }
    fputs("\n|:--|:--|", f);
    for (int b = 0; b < r->n_budgets; b++) fputs("--:|", f);
    fputc('\n', f);
}

typedef enum { MD_RECOVERY, MD_HIT_RATE, MD_RATIO } md_metric;

static const ap_meanci *md_agg(const ap_replay_cell *c, md_metric which) {
    return which == MD_RECOVERY ? &c->recovery : which == MD_HIT_RATE ? &c->hit_rate : &c->ratio;
}

/* One table, cells "mean ± ci" in percent; the best implementable (non-bound)
 * method of each column in bold, as papers mark their winners. */
static void md_table(FILE *f, const ap_replay_result *r, md_metric which) {
    int best[AP_REPLAY_MAX_BUDGETS];
    for (int b = 0; b < r->n_budgets; b++) {
        double bv = -INFINITY;
        best[b] = -1;
        for (int m = 0; m < r->n_methods; m++) {
            if (r->methods[m].kind == AP_SEL_BOUND) continue;
            double v = agg_mean(md_agg(ap_replay_cell_at(r, m, b), which));
            if (isfinite(v) && v > bv) {
                bv = v;
                best[b] = m;
            }
        }
    }
    md_budget_header(f, r);
    for (int m = 0; m < r->n_methods; m++) {
        fputs("| ", f);
        ap_md_method(f, r->methods[m].name, r->methods[m].label);
        fprintf(f, " | %s |", ap_sel_kind_name(r->methods[m].kind));
        for (int b = 0; b < r->n_budgets; b++) {
            const ap_meanci *a = md_agg(ap_replay_cell_at(r, m, b), which);
            double v = agg_mean(a), ci = agg_ci(a);
            if (!isfinite(v)) {
                fputs(" n/a |", f);
                continue;
            }
            const char *em = best[b] == m ? "**" : "";
            if (isfinite(ci))
                fprintf(f, " %s%.2f ± %.2f%s |", em, 100.0 * v, 100.0 * ci, em);
            else
                fprintf(f, " %s%.2f%s |", em, 100.0 * v, em);
        }
        fputc('\n', f);
    }
}

/* Issue 13: the layers the methods selected in; the cells average over them. */
static void md_layers(FILE *f, const ap_replay_result *r) {
    ap_replay_layers ly;
    char note[160];
    ap_replay_layers_of(r, &ly);
    ap_replay_layers_note(&ly, note, sizeof note);
    fprintf(f, "- %s%s\n", note,
            ly.n_sliding ? "; recovery and hit rate average over those layers only" : "");
}

static void md_header(FILE *f, const ap_replay_result *r) {
    const ap_replay_config *c = &r->config;
    fputs("# KV-cache selection replay\n\n", f);
    fputs("Attention recovery (the true attention mass inside the kept set) and hit rate (overlap with "
          "the oracle's blocks at the same budget), per method and KV budget, replayed from traces.\n\n",
          f);
    fputs("- traces:", f);
    for (int i = 0; i < c->n_traces && i < AP_REPLAY_MAX_TRACES; i++) {
        fputs(i ? ", `" : " `", f);
        ap_md_text(f, c->traces[i]);
        fputc('`', f);
    }
    fputc('\n', f);
    for (int i = 0; i < c->n_predictors && i < AP_REPLAY_MAX_PREDICTORS; i++) {
        fputs("- predictor `", f);
        ap_md_text(f, r->predictor_names[i]);
        fputs("`: `", f);
        ap_md_text(f, c->predictors[i]);
        fputs("`\n", f);
    }
    fprintf(f, "- model: %d layers x %d query heads (%d KV heads), head_dim %d, block %d tokens\n",
            r->n_layer, r->n_head, r->n_head_kv, r->head_dim, r->block);
    fprintf(f, "- replayed: %d sequences, %lld decode steps, context %.1f tokens on average (max %.0f)\n",
            r->n_seq, r->n_decode_steps, r->mean_context, r->max_context);
    fprintf(f, "- budget B = sink %d + local %d tokens + selected blocks; compression = mean context / "
               "mean kept tokens per step (the whole context when every block fits: 1.0x at a budget "
               "above it); budget ratio = mean context / B\n",
            c->sink_tokens, c->local_tokens);
    fprintf(f, "- predictor: calibration row every %d decode steps%s; bypassed below %d candidate blocks\n",
            c->calib, c->calib > 0 ? "" : " (never)", c->min_candidates);
    fprintf(f, "- selection: %s", ap_kv_mode_name(c->kv_mode));
    if (c->n_dense_layers > 0) {
        fputs("; dense layers (not counted):", f);
        for (int i = 0; i < c->n_dense_layers && i < AP_REPLAY_MAX_LAYERS; i++)
            fprintf(f, "%s%d", i ? ", " : " ", c->dense_layers[i]);
    }
    fputc('\n', f);
    md_layers(f, r);
    /* n is normally the same in every cell; a range shows when it is not. */
    long long nlo = -1, nhi = -1;
    double blo = INFINITY, bhi = -INFINITY;
    for (int m = 0; m < r->n_methods; m++)
        for (int b = 0; b < r->n_budgets; b++) {
            const ap_replay_cell *cl = ap_replay_cell_at(r, m, b);
            if (cl->n <= 0) continue;
            if (nlo < 0 || cl->n < nlo) nlo = cl->n;
            if (cl->n > nhi) nhi = cl->n;
            double bf = 100.0 * (double)cl->n_bypass / (double)cl->n;
            blo = fmin(blo, bf);
            bhi = fmax(bhi, bf);
        }
    if (nlo >= 0) {
        if (nlo == nhi)
            fprintf(f, "- n = %lld (decode step, head) pairs per cell", nlo);
        else
            fprintf(f, "- n = %lld .. %lld (decode step, head) pairs per cell", nlo, nhi);
        if (fabs(bhi - blo) < 0.005)
            fprintf(f, ", %.2f%% bypassed (too few candidates: every method keeps everything)\n", blo);
        else
            fprintf(f, ", %.2f%% .. %.2f%% bypassed (too few candidates: every method keeps everything)\n",
                    blo, bhi);
    }
    fprintf(f, "- replay time %.1f s; (step, head) rows skipped for NaN/Inf: %lld; predictor %s\n",
            r->seconds, r->n_skipped_nonfinite,
            r->incremental ? "incremental" : "fully recomputed each step");
    for (int i = 0; i < r->n_dropped; i++)
        fprintf(f, "- not run: %s (%s)\n", r->dropped[i], r->dropped_reason[i]);
}

/* Both ratios side by side, so neither is mistaken for the other. */
static void md_budgets(FILE *f, const ap_replay_result *r) {
    fputs("\n## Budgets\n\n", f);
    fputs("| budget | kept tokens per step | compression | budget ratio |\n|--:|--:|--:|--:|\n", f);
    for (int b = 0; b < r->n_budgets; b++) {
        fprintf(f, "| %d", r->budgets[b]);
        ap_md_num(f, r->mean_kept[b], 1);
        ap_md_ratio(f, compression(r, b));
        ap_md_ratio(f, budget_ratio(r, b));
        fputs(" |\n", f);
    }
}

static void md_summary(FILE *f, const ap_replay_result *r) {
    fputs("\n## Summary\n\n", f);
    fputs("Best heuristic = the best method that is neither the oracle, nor a predictor, nor a "
          "reference that computes dense attention every step (last_step_dense). Differences are "
          "in percentage points of recovery.\n\n",
          f);
    for (int b = 0; b < r->n_budgets; b++) {
        budget_summary s;
        summarize(r, b, &s);
        double heur = method_recovery(r, s.best_heur, b), orac = method_recovery(r, s.oracle, b);
        double cr = compression(r, b);
        fprintf(f, "- **B = %d", r->budgets[b]);
        if (isfinite(cr)) fprintf(f, " (%.1fx)", cr);
        fputs("**: best heuristic ", f);
        if (s.best_heur >= 0)
            fprintf(f, "`%s` %.2f%%", r->methods[s.best_heur].name, 100.0 * heur);
        else
            fputs("none", f);
        if (s.oracle >= 0 && isfinite(orac)) fprintf(f, "; oracle %.2f%%", 100.0 * orac);
        for (int m = 0; m < r->n_methods; m++) {
            if (!r->methods[m].is_predictor) continue;
            double rec = method_recovery(r, m, b);
            fprintf(f, "; `%s` ", r->methods[m].name);
            if (!isfinite(rec)) {
                fputs("n/a", f);
                continue;
            }
            fprintf(f, "%.2f%%", 100.0 * rec);
            if (isfinite(heur)) fprintf(f, " (%+.2f vs best heuristic", 100.0 * (rec - heur));
            if (isfinite(orac))
                fprintf(f, "%s%.2f below the oracle", isfinite(heur) ? ", " : " (", 100.0 * (orac - rec));
            if (isfinite(heur) || isfinite(orac)) fputc(')', f);
        }
        fputs("\n", f);
    }
}


static void md_paired(FILE *f, const ap_replay_result *r) {
    int ref = paired_ref(r);
    if (ref < 0) return;
    fputs("\n## Difference from last step (points of recovery, paired by sequence)\n\n", f);
    fprintf(f,
            "Method minus `last_step` on the same (step, head) pairs, with a 95%% interval from "
            "a bootstrap over whole sequences (%d sequences; steps of one sequence are not "
            "independent). Bold: the interval excludes zero.\n\n",
            r->n_seq);
    md_budget_header(f, r);
    for (int m = 0; m < r->n_methods; m++) {
        if (m == ref) continue;
        fputs("| ", f);
        ap_md_method(f, r->methods[m].name, r->methods[m].label);
        fprintf(f, " | %s", ap_sel_kind_name(r->methods[m].kind));
        for (int b = 0; b < r->n_budgets; b++) {
            double d, lo, hi;
            ap_replay_paired_diff(r, m, ref, b, &d, &lo, &hi);
            if (!isfinite(d)) {
                fputs(" | n/a", f);
                continue;
            }
            int sure = r->n_seq > 1 && (lo > 0 || hi < 0);
            fprintf(f, " | %s%+.2f [%+.2f, %+.2f]%s", sure ? "**" : "", 100.0 * d, 100.0 * lo,
                    100.0 * hi, sure ? "**" : "");
        }
        fputs(" |\n", f);
    }
}

static void md_cost(FILE *f, const ap_replay_result *r) {
    int any = 0;
    for (int m = 0; m < r->n_methods; m++) any |= r->methods[m].is_predictor != 0;
    if (!any) return;
    fputs("\n## Predictor cost (per decode step per head)\n\n", f);
    fputs("| predictor | MACs, naive CNN | MACs, as run | run / naive | µs per step-head |\n", f);
    fputs("|:--|--:|--:|--:|--:|\n", f);
    for (int m = 0; m < r->n_methods; m++) {
        if (!r->methods[m].is_predictor) continue;
        double nv = r->pred_naive_macs[m], rn = r->pred_run_macs[m], us = r->pred_us_per_step_head[m];
        fputs("| ", f);
        ap_md_method(f, r->methods[m].name, r->methods[m].label);
        ap_md_num(f, nv, 0);
        ap_md_num(f, rn, 0);
        ap_md_num(f, nv > 0 ? rn / nv : NAN, 3);
        ap_md_num(f, us, 3);
        fputs(" |\n", f);
    }
}

ap_status ap_replay_write_md(const ap_replay_result *r, const char *path, ap_err *err) {
    char tmp[AP_REPORT_PATH_BUF];
    ap_status st = check_result(r, path, err);
    if (st) return st;
    FILE *f = NULL;
    if ((st = ap_report_open(path, tmp, &f, err))) return st;
    md_header(f, r);
    md_budgets(f, r);
    fputs("\n## Attention recovery (%, mean ± 95% CI)\n\n", f);
    fputs("Columns: budget in tokens (compression). Bold: the best method per budget, oracle "
          "excluded.\n\n",
          f);
    md_table(f, r, MD_RECOVERY);
    fputs("\n## Hit rate (%, mean ± 95% CI)\n\n", f);
    fputs("Share of the oracle's selected blocks that the method also selected.\n\n", f);
    md_table(f, r, MD_HIT_RATE);
    fputs("\n## Recovery relative to the oracle (%, mean ± 95% CI)\n\n", f);
    fputs("Recovery / oracle recovery per (step, head): the paper's \"prediction accuracy\".\n\n", f);
    md_table(f, r, MD_RATIO);
    md_summary(f, r);
    md_paired(f, r);
    md_cost(f, r);
    return ap_report_close(f, tmp, path, err);
}

/* ---- PNG ----------------------------------------------------------------------- */


static ap_status png_recovery_lines(const ap_replay_result *r, const char *dir, ap_err *err) {
    char path[AP_REPORT_PATH_BUF];
    ap_status st = ap_report_plot_path(path, dir, "recovery_vs_budget.png", err);
    if (st) return st;
    int nm = r->n_methods, nb = r->n_budgets;
    double *xy = malloc(sizeof(double) * (size_t)(nb + nm * nb));
    char(*labels)[96] = malloc(sizeof *labels * (size_t)(nm > 0 ? nm : 1));
    ap_plot_series *s = malloc(sizeof *s * (size_t)(nm > 0 ? nm : 1));
    ap_plot_style *sty = malloc(sizeof *sty * (size_t)(nm > 0 ? nm : 1));
    if (!xy || !labels || !s || !sty) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    for (int b = 0; b < nb; b++) xy[b] = r->budgets[b];
    for (int m = 0; m < nm; m++) {
        double *y = xy + nb + (size_t)m * nb;
        int have = 0;
        for (int b = 0; b < nb; b++) {
            y[b] = 100.0 * agg_mean(&ap_replay_cell_at(r, m, b)->recovery);
            have |= isfinite(y[b]) != 0;
        }
        /* A method without data keeps its legend entry, so its absence is
         * visible rather than silent. */
        snprintf(labels[m], sizeof labels[m], "%.48s (%s%s)", r->methods[m].name,
                 ap_sel_kind_name(r->methods[m].kind), have ? "" : ", no data");
        s[m] = (ap_plot_series){.label = labels[m], .x = xy, .y = y, .n = nb};
        /* The retrieval methods often lie within a point of each other:
         * colour, marker and dash pattern all differ, so a line hidden
         * under another still shows in its gaps and at its markers. */
        sty[m] = ap_plot_style_distinct(m);
    }
    /* Budgets are usually powers of two: a log axis spaces them evenly, and
     * each budget run is a labelled tick. */
    ap_plot_opts o = {.title = "Attention recovery vs KV budget",
                      .xlabel = "KV budget (tokens, log scale)",
                      .ylabel = "attention recovery (%)",
                      .width = 900,
                      .height = 560,
                      .log_x = 1,
                      .styles = sty,
                      .xticks = xy,
                      .n_xticks = nb};
    if (nm == 0)
        st = ap_errf(err, AP_ERR_ARG, "%s: the replay result has no methods to plot", path);
    else
        st = ap_plot_lines_png(path, &o, s, nm, err);
cleanup:
    free(xy);
    free(labels);
    free(s);
    free(sty);
    return st;
}

/* Gain of the best predictor over the best heuristic at budget b, per layer
 * and head, in percentage points. Both methods are the summary's picks (by
 * mean recovery over all layers and heads), so the map explains the summary
 * line rather than cherry-picking per cell. Layers without data (dense
 * layers) are NaN and drawn grey. */
static ap_status png_gain_heatmap(const ap_replay_result *r, const char *dir, int b, ap_err *err) {
    budget_summary s;
    summarize(r, b, &s);
    if (s.best_pred < 0 || s.best_heur < 0) return AP_OK;
    const double *p = ap_replay_cell_at(r, s.best_pred, b)->layer_head_recovery;
    const double *h = ap_replay_cell_at(r, s.best_heur, b)->layer_head_recovery;
    if (!p || !h || r->n_layer < 1 || r->n_head < 1) return AP_OK;
    char name[64], path[AP_REPORT_PATH_BUF], title[160];
    snprintf(name, sizeof name, "gain_heatmap_B%d.png", r->budgets[b]);
    ap_status st = ap_report_plot_path(path, dir, name, err);
    if (st) return st;
    size_t n = (size_t)r->n_layer * (size_t)r->n_head;
    float *g = malloc(sizeof(float) * n);
    if (!g) return ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < n; i++) {
        double d = 100.0 * (p[i] - h[i]);
        g[i] = isfinite(d) ? (float)d : NAN;
    }
    snprintf(title, sizeof title, "B=%d: %.40s - %.40s", r->budgets[b],
             r->methods[s.best_pred].name, r->methods[s.best_heur].name);
    const ap_plot_heatmap_opts ho = {.title = title,
                                     .x = {.label = "query head", .step = 1},
                                     .y = {.label = "layer", .step = 1},
                                     .bar_label = "recovery gain (percentage points)",
                                     .diverging = 1};
    st = ap_plot_heatmap_ex_png(path, &ho, g, r->n_layer, r->n_head, err);
    free(g);
    return st;
}

ap_status ap_replay_write_png(const ap_replay_result *r, const char *dir, ap_err *err) {
    ap_status st = check_result(r, dir, err);
    if (st) return st;
    st = ap_mkdir_p(dir, err);
    if (st) return st;
    st = png_recovery_lines(r, dir, err);
    for (int b = 0; b < r->n_budgets && st == AP_OK; b++) st = png_gain_heatmap(r, dir, b, err);
    return st;
}
