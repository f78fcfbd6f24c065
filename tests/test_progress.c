/* The progress line's ETA (common/util.h) on a fake clock: the arithmetic
 * is exact and the tests never wait. The ETA divides the work left by the
 * rate of work done, so units that grow in cost (later sequences are
 * longer) no longer make it run low; ap_work_run's cost model is checked
 * against hand sums. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static double fake_now(void *user) { return *(const double *)user; }

/* A progress bar on the fake clock `now`, started at now = 100 s, printing
 * into a memory stream (NULL: disabled). */
static void start(ap_progress *p, double *now, FILE *out, double total) {
    ap_progress_init(p, out, "job", "seq", total, out != NULL);
    *now = 100.0;
    ap_progress_set_clock(p, fake_now, now);
}

Test(progress, eta_from_counts_without_work) {
    ap_progress p;
    double now;
    start(&p, &now, NULL, 8);
    cr_assert_eq(ap_progress_eta(&p, now), 0.0, "no unit done yet: no estimate");
    now = 130.0;
    ap_progress_update(&p, 2);
    /* 2 units in 30 s, 6 left at the same pace. */
    cr_assert_eq(ap_progress_eta(&p, now), 90.0);
    now = 220.0;
    ap_progress_update(&p, 8);
    cr_assert_eq(ap_progress_eta(&p, now), 0.0, "nothing left");
}

/* Four sequences costing 1, 1, 2 and 4 s (their work in the same ratio):
 * after the first two, counting units says 2 s are left (2 units at 1 s),
 * the work says 6 s, which is what the rest takes. */
Test(progress, eta_weighs_units_by_their_work) {
    const double cost[4] = {1, 1, 2, 4};
    ap_progress p;
    double now;
    start(&p, &now, NULL, 4);
    double work_total = 0, work = 0, left = 0;
    for (int i = 0; i < 4; i++) work_total += 10 * cost[i];
    for (int i = 0; i < 4; i++) {
        now += cost[i];
        work += 10 * cost[i];
        ap_progress_update_work(&p, i + 1, 0.0, work, work_total);
        left = 0;
        for (int j = i + 1; j < 4; j++) left += cost[j];
        cr_assert(fabs(ap_progress_eta(&p, now) - left) < 1e-9, "after %d: ETA %g, %g left", i + 1,
                  ap_progress_eta(&p, now), left);
    }
    cr_assert_eq(p.total, 4, "total 0 keeps the unit count");
    ap_progress q;
    start(&q, &now, NULL, 4);
    now += 2;
    ap_progress_update(&q, 2);
    cr_assert_eq(ap_progress_eta(&q, now), 2.0, "the unweighted estimate, 3x low here");
}

/* A run resumed with 6 of 8 units done by an earlier process: this one's
 * rate and ETA count only the units it did. */
Test(progress, resumed_work_is_not_in_the_rate) {
    ap_progress p;
    double now;
    start(&p, &now, NULL, 8);
    ap_progress_set_base(&p, 6, 60.0);
    ap_progress_update_work(&p, 6, 0.0, 60.0, 80.0);
    cr_assert_eq(ap_progress_eta(&p, now), 0.0, "nothing done by this process yet");
    now = 110.0;
    ap_progress_update_work(&p, 7, 0.0, 70.0, 80.0);
    /* 10 units of work in 10 s, 10 left: 10 s, not 10 x 10 / 70. */
    cr_assert(fabs(ap_progress_eta(&p, now) - 10.0) < 1e-9, "ETA %g", ap_progress_eta(&p, now));
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    ap_progress q;
    start(&q, &now, mem, 8);
    ap_progress_set_base(&q, 6, 0.0);
    now += 2.0;
    ap_progress_update(&q, 7);
    fclose(mem);
    cr_assert(strstr(buf, "7/8 seq") && strstr(buf, " 0.5 seq/s"), "line: %s", buf);
    free(buf);
}

/* The printed line: counts as given, ETA from the work, at most one line
 * per interval, a final line ending the record. */
Test(progress, printed_line) {
    char *buf = NULL;
    size_t n = 0;
    FILE *out = open_memstream(&buf, &n);
    cr_assert_not_null(out);
    ap_progress p;
    double now;
    start(&p, &now, out, 0);
    now += 30;
    ap_progress_update_work(&p, 3, 12, 100, 400); /* a quarter of the work in 30 s */
    now += 0.5;
    ap_progress_update_work(&p, 4, 12, 110, 400); /* within the interval: not printed */
    now += 29.5;
    ap_progress_update_work(&p, 6, 12, 200, 400);
    ap_progress_finish(&p);
    fclose(out);
    cr_assert_str_eq(buf,
                     "\rjob: 3/12 seq (25.0%) 0.1 seq/s elapsed 0m30s ETA 1m30s   "
                     "\rjob: 6/12 seq (50.0%) 0.1 seq/s elapsed 1m00s ETA 1m00s   "
                     "\rjob: 6/12 seq (50.0%) 0.1 seq/s elapsed 1m00s ETA 1m00s\n");
    free(buf);
}

/* Sum of fixed + i over the positions, decode tokens weighted by
 * AP_WORK_DECODE_FACTOR. */
Test(progress, work_model_sums) {
    double prefill = 0, decode = 0;
    for (int i = 0; i < 100; i++) prefill += 50.0 + i;
    for (int i = 100; i < 110; i++) decode += 50.0 + i;
    double want = prefill + AP_WORK_DECODE_FACTOR * decode;
    cr_assert(fabs(ap_work_run(100, 10, 1, 50) - want) < 1e-6);
    cr_assert(fabs(ap_work_run(100, 10, 0, 50) - AP_WORK_DECODE_FACTOR * decode) < 1e-6);
    cr_assert_eq(ap_work_run(0, 0, 1, 50), 0.0);
    /* SmolLM2-135M's shape: about 3,900 keys' worth of weights per token. */
    double f = ap_work_fixed(30, 576, 9, 3, 64, 1536, 49152);
    cr_assert(f > 3800 && f < 4000, "fixed %g", f);
    /* A longer sequence costs more per token. */
    cr_assert_gt(ap_work_run(4096, 64, 1, f) / 4160, ap_work_run(1024, 64, 1, f) / 1088);
}
