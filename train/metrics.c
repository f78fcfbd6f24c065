#include "train/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int ap_metrics_k_blocks(int budget_tokens, int sink_tokens, int local_tokens, int block_size,
                        int n_cand) {
    if (block_size < 1 || n_cand <= 0) return 0;
    long free_tokens = (long)budget_tokens - sink_tokens - local_tokens;
    if (free_tokens <= 0) return 0;
    long k = free_tokens / block_size;
    return k < n_cand ? (int)k : n_cand;
}

typedef struct {
    float s;
    int i;
} scored;

/* Descending score, NaN last, ties to the lower index: the order is total, so
 * qsort's instability cannot change the result. */
static int scored_cmp(const void *pa, const void *pb) {
    const scored *a = pa, *b = pb;
    int an = isnan(a->s), bn = isnan(b->s);
    if (an != bn) return an - bn;
    if (!an && a->s != b->s) return a->s > b->s ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

/* Insertion sort below this width: faster than qsort's call overhead. */
#define SMALL_W 24

static void rank_into(const float *scores, int W, int *order, scored *tmp) {
    for (int j = 0; j < W; j++) tmp[j] = (scored){scores[j], j};
    if (W <= SMALL_W) {
        for (int j = 1; j < W; j++) {
            scored v = tmp[j];
            int m = j - 1;
            while (m >= 0 && scored_cmp(&tmp[m], &v) > 0) {
                tmp[m + 1] = tmp[m];
                m--;
            }
            tmp[m + 1] = v;
        }
    } else {
        qsort(tmp, (size_t)W, sizeof *tmp, scored_cmp);
    }
    for (int j = 0; j < W; j++) order[j] = tmp[j].i;
}

void ap_metrics_rank(const float *scores, int W, int *order) {
    if (W <= 0) return;
    scored *tmp = malloc((size_t)W * sizeof *tmp);
    if (!tmp) {
        /* Without scratch fall back to an O(W^2) selection; same order. */
        for (int j = 0; j < W; j++) order[j] = j;
        for (int a = 0; a < W; a++)
            for (int b = a + 1; b < W; b++) {
                scored x = {scores[order[a]], order[a]}, y = {scores[order[b]], order[b]};
                if (scored_cmp(&x, &y) > 0) {
                    int t = order[a];
                    order[a] = order[b];
                    order[b] = t;
                }
            }
        return;
    }
    rank_into(scores, W, order, tmp);
    free(tmp);
}

/* Below this many kept entries per candidate a bounded insertion list beats
 * sorting all W: a selection keeps k of W = 512 blocks at 8K keys and sorts
 * ran 270 times per decode step. */
#define TOPK_MAX 256

void ap_metrics_topk(const float *scores, int W, int k, int *order) {
    if (W <= 0 || k <= 0) return;
    if (k > W) k = W;
    if (k > TOPK_MAX || 4 * k >= W || W <= SMALL_W) {
        ap_metrics_rank(scores, W, order);
        return;
    }
    /* top[0..n) sorted by scored_cmp; a candidate enters when it ranks
     * before the last kept one (scored_cmp is a total order, so the kept
     * list is exactly the first k of the full ranking). */
    scored top[TOPK_MAX];
    int n = 0;
    for (int j = 0; j < W; j++) {
        /* Once the list is full, a run of 8 candidates none of which is
         * above the last kept score (a number) cannot enter: ties rank by
         * index, and every later index ranks after it; NaN ranks after
         * every number. One comparison per candidate instead of the
         * total order's. */
        if (n == k && !isnan(top[k - 1].s)) {
            const float thr = top[k - 1].s;
            while (j + 8 <= W) {
                int any = 0;
                for (int i = 0; i < 8; i++) any |= scores[j + i] > thr;
                if (any) break;
                j += 8;
            }
            if (j == W) break;
        }
        scored v = {scores[j], j};
        if (n == k && scored_cmp(&v, &top[k - 1]) >= 0) continue;
        int m = n < k ? n : k - 1;
        while (m > 0 && scored_cmp(&top[m - 1], &v) > 0) {
            top[m] = top[m - 1];
            m--;
        }
        top[m] = v;
        if (n < k) n++;
    }
    for (int r = 0; r < k; r++) order[r] = top[r].i;
}

/* Sum of ysum over the first k entries of order, plus the fixed mass. */
static double kept_mass(const float *ysum, float mass_fixed, const int *order, int k) {
    double m = mass_fixed;
    for (int j = 0; j < k; j++) m += ysum[order[j]];
    return m;
}

static void sample_from_orders(const float *ysum, float mass_fixed, int W, int k,
                               const int *pred, const int *orac, int *mark,
                               ap_sample_metrics *out) {
    out->k = k;
    out->recovery = kept_mass(ysum, mass_fixed, pred, k);
    out->oracle = kept_mass(ysum, mass_fixed, orac, k);
    if (k == 0) {
        out->hit_rate = 1.0;
        return;
    }
    for (int j = 0; j < W; j++) mark[j] = 0;
    for (int j = 0; j < k; j++) mark[orac[j]] = 1;
    int hit = 0;
    for (int j = 0; j < k; j++) hit += mark[pred[j]];
    out->hit_rate = (double)hit / k;
}

void ap_metrics_sample(const float *scores, const float *ysum, float mass_fixed, int W, int k,
                       int *scratch, ap_sample_metrics *out) {
    if (k > W) k = W;
    if (k < 0) k = 0;
    int *pred = scratch, *orac = scratch + W, *mark = scratch + 2 * W;
    ap_metrics_rank(scores, W, pred);
    ap_metrics_rank(ysum, W, orac);
    sample_from_orders(ysum, mass_fixed, W, k, pred, orac, mark, out);
}

void ap_meanci_init(ap_meanci *a) { memset(a, 0, sizeof *a); }

void ap_meanci_add(ap_meanci *a, double x) {
    a->n++;
    double d = x - a->mean;
    a->mean += d / (double)a->n;
    a->m2 += d * (x - a->mean);
}

double ap_meanci_half95(const ap_meanci *a) {
    if (a->n < 2) return 0.0;
    double var = a->m2 / (double)(a->n - 1);
    return 1.96 * sqrt(var / (double)a->n);
}

void ap_meanci_merge(ap_meanci *a, const ap_meanci *b) {
    if (b->n == 0) return;
    if (a->n == 0) {
        *a = *b;
        return;
    }
    double n = (double)(a->n + b->n), d = b->mean - a->mean;
    a->mean += d * (double)b->n / n;
    a->m2 += b->m2 + d * d * (double)a->n * (double)b->n / n;
    a->n += b->n;
}

ap_status ap_metrics_acc_init(ap_metrics_acc *a, const int *budgets, int n_budgets,
                              int sink_tokens, int local_tokens, int block_size, ap_err *err) {
    memset(a, 0, sizeof *a);
    if (n_budgets < 1 || n_budgets > AP_METRICS_MAX_BUDGETS)
        return ap_errf(err, AP_ERR_ARG, "%d budgets given (1..%d allowed)", n_budgets,
                       AP_METRICS_MAX_BUDGETS);
    if (sink_tokens < 0 || local_tokens < 0 || block_size < 1)
        return ap_errf(err, AP_ERR_ARG, "sink %d, local %d, block %d: need >= 0, >= 0, >= 1",
                       sink_tokens, local_tokens, block_size);
    for (int b = 0; b < n_budgets; b++) {
        if (budgets[b] <= 0)
            return ap_errf(err, AP_ERR_ARG, "budget %d tokens: must be > 0", budgets[b]);
        a->budgets[b] = budgets[b];
    }
    a->n_budgets = n_budgets;
    a->sink_tokens = sink_tokens;
    a->local_tokens = local_tokens;
    a->block_size = block_size;
    return AP_OK;
}

ap_status ap_metrics_acc_add(ap_metrics_acc *a, const float *scores, long score_stride,
                             const float *ysum, const float *mass_fixed, int n, int W,
                             ap_err *err) {
    if (n <= 0) return AP_OK;
    if (W < 1) return ap_errf(err, AP_ERR_ARG, "metrics: width %d < 1", W);
    ap_status st = AP_OK;
    /* One ranking per sample serves every budget: top-k is a prefix. */
    int *ibuf = malloc((size_t)W * 3 * sizeof *ibuf);
    scored *tmp = malloc((size_t)W * sizeof *tmp);
    if (!ibuf || !tmp) {
        st = ap_errf(err, AP_ERR_NOMEM, "metrics: out of memory for width %d", W);
        goto cleanup;
    }
    int *pred = ibuf, *orac = ibuf + W, *mark = ibuf + 2 * W;
    for (int i = 0; i < n; i++) {
        const float *ys = ysum + (size_t)i * W;
        rank_into(scores + (size_t)i * score_stride, W, pred, tmp);
        rank_into(ys, W, orac, tmp);
        for (int b = 0; b < a->n_budgets; b++) {
            int k = ap_metrics_k_blocks(a->budgets[b], a->sink_tokens, a->local_tokens,
                                        a->block_size, W);
            ap_sample_metrics m;
            sample_from_orders(ys, mass_fixed[i], W, k, pred, orac, mark, &m);
            ap_meanci_add(&a->recovery[b], m.recovery);
            ap_meanci_add(&a->oracle[b], m.oracle);
            ap_meanci_add(&a->hit_rate[b], m.hit_rate);
            if (m.oracle > 0) ap_meanci_add(&a->ratio[b], m.recovery / m.oracle);
        }
    }
cleanup:
    free(ibuf);
    free(tmp);
    return st;
}
