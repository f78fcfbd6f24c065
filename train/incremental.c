/* Exact incremental predictor (see incremental.h and docs/incremental.md).
 *
 * Notation: t = rows pushed so far; the window is the global rows
 * [t-H, t-1] (negative rows are the zero rows before the first push) and the
 * window columns x in [0, Wc) are the global blocks c0 + x, Wc = c1 - c0.
 * The output is linear in the time mean of the conv2+ReLU features, and the
 * final Conv1d is a fixed dot product over channels, so each row enters the
 * output only through g_r[x] = sum_co w3[co] * a2[co][r][x]:
 *
 *   y[x] = b3 + (1/H) * sum_{r in window} g_r[x].
 *
 * A row 2 or more rows away from both window edges ("interior": window rows
 * 2..H-3) sees no time padding, so its g_r depends on the rows r-2..r+2 and
 * the column range only; it does not change while the window slides. We keep
 * g_r of the interior rows (one float row each) and their float64 column
 * sum; a predict subtracts the rows that left the interior, adds the ones
 * that entered, and recomputes the 4 edge rows (2 at each end). When c1 grows
 * the last 2 old columns of every interior row change (they saw zero padding
 * at the old right edge) and are recomputed together with the new columns. */
#include "train/incremental.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/pred_conv.h"

/* Output positions (rows x columns) per conv2 GEMM tile: enough columns for
 * the GEMM to run near peak, few enough that the per-object scratch (im2col
 * is 9*c1 floats per position) stays small when hundreds of heads each hold
 * an object. */
#ifndef INCR_TILE_POS
#define INCR_TILE_POS 512
#endif

/* Narrow CNNs (c1 <= INCR_DIRECT_C1, c2 a multiple of 8) skip im2col and the
 * GEMM: conv2 runs directly (kernels/pred_conv.h) on tiles of up to
 * INCR_DIRECT_ROWS rows, which also shares conv1's halo rows between the
 * rows a predict recomputes (3 at the newest edge). The paper's 16/32 CNN
 * keeps the GEMM path, so its scores stay what they were. */
#define INCR_DIRECT_C1 8
#define INCR_DIRECT_ROWS 8

struct ap_incr {
    const ap_predictor *p; /* borrowed */
    int H, c1, c2;
    const float *w1, *b1, *w2, *b2, *w3;
    float b3;
    int resync_every;
    int direct; /* conv2 by kernels/pred_conv.h instead of im2col + GEMM */

    /* Rows: ring of H slots (global row r in slot r mod H), cap_w columns
     * each; only the first width[slot] values of a slot are meaningful. */
    float *rows;
    int *width;
    int cap_w;
    long n_push;
    int newest_w;

    /* Interior features, valid when synced: g ring of H slots (same slot
     * rule), cap_g columns, and sum[x] = sum of g over the interior rows of
     * the window at the last predict, for columns [0, c1_s - c0_s). */
    float *g;
    double *sum;
    double *edge; /* scratch: edge rows' g summed, [cap_g] */
    int cap_g;
    int synced;
    long t_s;
    int c0_s, c1_s;
    int since_sync;

    /* conv scratch for one tile of at most INCR_TILE_POS positions */
    float *xt, *a1, *col, *a2;

    double last_macs;
};

/* The window a predict works on. */
typedef struct {
    long t;             /* rows pushed: window = [t-H, t-1] */
    int c0, Wc;         /* window columns = global [c0, c0+Wc) */
    long int_lo, int_hi; /* interior rows (empty when int_lo > int_hi) */
} win;

static void wset_f(float *d, const float *s, int n) {
    if (n > 0) memcpy(d, s, sizeof(float) * (size_t)n);
}

/* Ring capacity for need columns: a quarter of headroom, so a sequence
 * growing one block per 16 tokens reallocates rarely without holding much
 * unused memory. */
static int grow_cap(int cap, int need) {
    int c = cap + cap / 4;
    if (c < need) c = need;
    return c < 64 ? 64 : c;
}

ap_status ap_incr_create(const ap_predictor *p, int model, ap_incr **out, ap_err *err) {
    ap_status st = AP_OK;
    ap_incr *s = NULL;
    if (out) *out = NULL;
    if (!p || !out) return ap_errf(err, AP_ERR_ARG, "incremental predictor: NULL argument");
    const ap_pred_config *c = ap_predictor_config(p);
    if (model < 0 || model >= c->n_models)
        return ap_errf(err, AP_ERR_ARG, "incremental predictor: model %d out of range [0, %d)",
                       model, c->n_models);
    s = calloc(1, sizeof *s);
    if (!s) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory creating the incremental predictor");
        goto cleanup;
    }
    ap_pred_layout L;
    ap_pred_layout_of(c, &L);
    const float *w = ap_predictor_params_const(p, NULL) + (size_t)model * L.total;
    s->p = p;
    s->H = c->history;
    s->c1 = c->c1;
    s->c2 = c->c2;
    s->w1 = w + L.w1;
    s->b1 = w + L.b1;
    s->w2 = w + L.w2;
    s->b2 = w + L.b2;
    s->w3 = w + L.w3;
    s->b3 = w[L.b3];
    s->resync_every = 256;
    /* A tile has R rows x n columns with R*n <= P, hence R + n <= P + 1 and
     * (R+4)(n+4) <= 5(P+4), (R+2)(n+2) <= 3(P+2). */
    const size_t P = INCR_TILE_POS;
    s->direct = s->c1 <= INCR_DIRECT_C1 && s->c2 % 8 == 0;
    /* Direct tiles: R <= INCR_DIRECT_ROWS rows of n <= P columns; the
     * direct path needs no im2col and only one row of g as a2. */
    const size_t RD = INCR_DIRECT_ROWS;
    const size_t n_xt = s->direct ? (RD + 4) * (P + 4) : 5 * (P + 4);
    const size_t n_a1 = (size_t)s->c1 * (s->direct ? (RD + 2) * (P + 2) : 3 * (P + 2));
    s->width = calloc((size_t)s->H, sizeof(int));
    s->xt = malloc(sizeof(float) * n_xt);
    s->a1 = malloc(sizeof(float) * n_a1);
    if (!s->direct) s->col = malloc(sizeof(float) * (size_t)s->c1 * 9 * P);
    s->a2 = malloc(sizeof(float) * (s->direct ? 1 : (size_t)s->c2) * P);
    if (!s->width || !s->xt || !s->a1 || (!s->direct && !s->col) || !s->a2) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory creating the incremental predictor");
        goto cleanup;
    }
    *out = s;
    s = NULL;
cleanup:
    ap_incr_free(s);
    return st;
}

void ap_incr_free(ap_incr *s) {
    if (!s) return;
    free(s->rows);
    free(s->width);
    free(s->g);
    free(s->sum);
    free(s->edge);
    free(s->xt);
    free(s->a1);
    free(s->col);
    free(s->a2);
    free(s);
}

void ap_incr_reset(ap_incr *s) {
    if (!s) return;
    s->n_push = 0;
    s->newest_w = 0;
    s->synced = 0;
    s->since_sync = 0;
    memset(s->width, 0, sizeof(int) * (size_t)s->H);
}

void ap_incr_set_resync(ap_incr *s, int every) {
    if (s) s->resync_every = every < 0 ? 0 : every;
}

double ap_incr_last_macs(const ap_incr *s) { return s ? s->last_macs : 0.0; }

/* Rows before the first push have negative indices (interior g slots). */
static int slot_of(const ap_incr *s, long r) {
    long m = r % s->H;
    return (int)(m < 0 ? m + s->H : m);
}

/* Widen every ring slot to at least need columns, keeping the contents. */
static int grow_rows(ap_incr *s, int need) {
    if (need <= s->cap_w) return 1;
    int cap = grow_cap(s->cap_w, need);
    float *r = malloc(sizeof(float) * (size_t)s->H * (size_t)cap);
    if (!r) return 0;
    for (int i = 0; i < s->H && s->rows; i++)
        wset_f(r + (size_t)i * cap, s->rows + (size_t)i * s->cap_w, s->width[i]);
    free(s->rows);
    s->rows = r;
    s->cap_w = cap;
    return 1;
}

static int grow_feat(ap_incr *s, int need) {
    if (need <= s->cap_g) return 1;
    int cap = grow_cap(s->cap_g, need);
    float *g = malloc(sizeof(float) * (size_t)s->H * (size_t)cap);
    double *sum = calloc((size_t)cap, sizeof(double));
    double *edge = malloc(sizeof(double) * (size_t)cap);
    if (!g || !sum || !edge) {
        free(g);
        free(sum);
        free(edge);
        return 0;
    }
    if (s->g) {
        for (int i = 0; i < s->H; i++)
            wset_f(g + (size_t)i * cap, s->g + (size_t)i * s->cap_g, s->cap_g);
        memcpy(sum, s->sum, sizeof(double) * (size_t)s->cap_g);
    }
    free(s->g);
    free(s->sum);
    free(s->edge);
    s->g = g;
    s->sum = sum;
    s->edge = edge;
    s->cap_g = cap;
    return 1;
}

ap_status ap_incr_push(ap_incr *s, const float *row, int width, ap_err *err) {
    if (!s) return ap_errf(err, AP_ERR_ARG, "incremental predictor: NULL argument");
    if (width < 0 || (width > 0 && !row))
        return ap_errf(err, AP_ERR_ARG, "incremental predictor: bad row (width %d)", width);
    if (width < s->newest_w)
        return ap_errf(err, AP_ERR_ARG,
                       "incremental predictor: row width %d is narrower than the previous %d "
                       "(a sequence only grows; reset between sequences)",
                       width, s->newest_w);
    if (!grow_rows(s, width))
        return ap_errf(err, AP_ERR_NOMEM, "incremental predictor: out of memory for %d columns",
                       width);
    int sl = slot_of(s, s->n_push);
    if (width > 0) wset_f(s->rows + (size_t)sl * s->cap_w, row, width);
    s->width[sl] = width;
    s->newest_w = width;
    s->n_push++;
    return AP_OK;
}

/* g_r for window rows [ra, rb] and window columns [xa, xb) (at most
 * INCR_TILE_POS columns), with the zero padding of the window [t-H, t-1] x
 * [0, Wc) at every layer. Interior rows are stored in their g slot (columns
 * [xa, xb)), the others are added to s->edge. */
static void conv_tile(ap_incr *s, const win *w, long ra, long rb, int xa, int xb) {
    const int n = xb - xa, c1 = s->c1, c2 = s->c2, K2 = 9 * c1;
    const long wlo = w->t - s->H, whi = w->t - 1;
    int R = s->direct ? INCR_DIRECT_ROWS : INCR_TILE_POS / n;
    if (R < 1) R = 1;
    if (R > rb - ra + 1) R = (int)(rb - ra + 1);
    for (long pa = ra; pa <= rb; pa += R) {
        int Rc = (int)(rb - pa + 1 < R ? rb - pa + 1 : R);
        const int xw = n + 4, aw = n + 2, ah = Rc + 2;

        /* input tile: rows pa-2 .. pa+Rc+1, columns xa-2 .. xb+1 */
        for (int i = 0; i < Rc + 4; i++) {
            float *d = s->xt + (size_t)i * xw;
            long r = pa - 2 + i;
            memset(d, 0, sizeof(float) * (size_t)xw);
            if (r < wlo || r > whi || r < 0) continue;
            int sl = slot_of(s, r);
            int x0 = xa - 2 < 0 ? 0 : xa - 2;
            int x1 = xb + 2 < w->Wc ? xb + 2 : w->Wc;
            int lim = s->width[sl] - w->c0; /* data ends here (window columns) */
            if (x1 > lim) x1 = lim;
            if (x1 > x0)
                wset_f(d + (x0 - (xa - 2)), s->rows + (size_t)sl * s->cap_w + w->c0 + x0, x1 - x0);
        }

        /* conv1 + ReLU on rows pa-1 .. pa+Rc, columns xa-1 .. xb; positions
         * outside the window are conv2's zero padding */
        for (int c = 0; c < c1; c++) {
            const float *k = s->w1 + (size_t)c * 9;
            for (int i = 0; i < ah; i++) {
                float *d = s->a1 + ((size_t)c * ah + i) * aw;
                long r = pa - 1 + i;
                if (r < wlo || r > whi) {
                    memset(d, 0, sizeof(float) * (size_t)aw);
                    continue;
                }
                /* The paper's CNN keeps the plain loop (its scores stay
                 * what they were); the narrow ones take the AVX2 kernel. */
                const float *x0 = s->xt + (size_t)i * xw;
                if (s->direct)
                    ap_pred_conv1_row(x0, (size_t)xw, aw, k, s->b1[c], d);
                else
                    ap_pred_conv1_row_ref(x0, (size_t)xw, aw, k, s->b1[c], d);
                if (xa - 1 < 0) d[0] = 0.0f;
                if (xb >= w->Wc) d[aw - 1] = 0.0f;
            }
        }

        const int P = Rc * n;
        s->last_macs += (double)c1 * 9 * ah * aw + (double)c2 * K2 * P + (double)c2 * P;
        if (s->direct) {
            for (int i = 0; i < Rc; i++) {
                long r = pa + i;
                int interior = r >= w->int_lo && r <= w->int_hi;
                float *gr = interior ? s->g + (size_t)slot_of(s, r) * s->cap_g + xa : s->a2;
                ap_pred_conv2_row(s->a1 + (size_t)i * aw, c1, (size_t)ah * aw, (size_t)aw, n,
                                  s->w2, s->b2, s->w3, c2, gr);
                if (!interior)
                    for (int x = 0; x < n; x++) s->edge[xa + x] += gr[x];
            }
            continue;
        }

        /* conv2 as one GEMM over im2col columns (same K order as PyTorch's
         * [out][in][kh][kw] weights) */
        for (int ci = 0; ci < c1; ci++)
            for (int kh = 0; kh < 3; kh++)
                for (int kw = 0; kw < 3; kw++) {
                    float *d = s->col + (size_t)(ci * 9 + kh * 3 + kw) * P;
                    for (int i = 0; i < Rc; i++)
                        wset_f(d + (size_t)i * n,
                               s->a1 + ((size_t)ci * ah + i + kh) * aw + kw, n);
                }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c2, P, K2, 1.0f, s->w2, K2,
                    s->col, P, 0.0f, s->a2, P);

        /* ReLU and the channel dot product with conv3's weights */
        for (int i = 0; i < Rc; i++) {
            long r = pa + i;
            int interior = r >= w->int_lo && r <= w->int_hi;
            float *gr = interior ? s->g + (size_t)slot_of(s, r) * s->cap_g + xa : NULL;
            float acc[256];
            for (int x0 = 0; x0 < n; x0 += 256) {
                int m = n - x0 < 256 ? n - x0 : 256;
                for (int x = 0; x < m; x++) acc[x] = 0.0f;
                for (int co = 0; co < c2; co++) {
                    const float *a = s->a2 + (size_t)co * P + (size_t)i * n + x0;
                    float b = s->b2[co], wc = s->w3[co];
                    for (int x = 0; x < m; x++) {
                        float v = a[x] + b;
                        acc[x] += wc * (v > 0.0f ? v : 0.0f);
                    }
                }
                if (interior)
                    wset_f(gr + x0, acc, m);
                else
                    for (int x = 0; x < m; x++) s->edge[xa + x0 + x] += acc[x];
            }
        }
    }
}

/* conv_tile over column tiles; a tile recomputes 2 halo columns of conv1. */
static void conv_rows(ap_incr *s, const win *w, long ra, long rb, int xa, int xb) {
    for (int ta = xa; ta < xb; ta += INCR_TILE_POS)
        conv_tile(s, w, ra, rb, ta, xb - ta > INCR_TILE_POS ? ta + INCR_TILE_POS : xb);
}

static void add_row(ap_incr *s, long r, int n, double sign) {
    const float *g = s->g + (size_t)slot_of(s, r) * s->cap_g;
    for (int x = 0; x < n; x++) s->sum[x] += sign * (double)g[x];
}

ap_status ap_incr_predict(ap_incr *s, int c0, int c1, float *scores, ap_err *err) {
    if (!s || !scores) return ap_errf(err, AP_ERR_ARG, "incremental predictor: NULL argument");
    if (s->n_push < 1)
        return ap_errf(err, AP_ERR_ARG, "incremental predictor: predict before any row was pushed");
    if (c0 < 0 || c1 <= c0 || c1 > s->newest_w)
        return ap_errf(err, AP_ERR_ARG,
                       "incremental predictor: columns [%d, %d) not inside [0, %d) or empty", c0,
                       c1, s->newest_w);
    const int H = s->H, Wc = c1 - c0;
    if (!grow_feat(s, Wc))
        return ap_errf(err, AP_ERR_NOMEM, "incremental predictor: out of memory for %d columns",
                       Wc);
    win w = {s->n_push, c0, Wc, s->n_push - H + 2, s->n_push - 3};
    const int n_int = H - 4 > 0 ? H - 4 : 0;
    const long k = s->n_push - s->t_s;
    int full = !s->synced || c0 != s->c0_s || c1 < s->c1_s || n_int == 0 || k >= n_int ||
               (s->resync_every > 0 && s->since_sync + 1 >= s->resync_every);
    s->last_macs = 0.0;
    for (int x = 0; x < Wc; x++) s->edge[x] = 0.0;
    if (full) {
        conv_rows(s, &w, w.t - H, w.t - 1, 0, Wc);
        for (int x = 0; x < Wc; x++) s->sum[x] = 0.0;
        for (long r = w.int_lo; r <= w.int_hi; r++) add_row(s, r, Wc, 1.0);
        s->since_sync = 0;
    } else {
        /* old interior [int_lo-k, int_hi-k]; rows [int_lo, int_hi-k] stay */
        const int Wc_s = s->c1_s - s->c0_s;
        for (long r = w.int_lo - k; r < w.int_lo; r++) add_row(s, r, Wc_s, -1.0);
        if (Wc > Wc_s) {
            int xf = Wc_s - 2 > 0 ? Wc_s - 2 : 0;
            conv_rows(s, &w, w.int_lo, w.int_hi - k, xf, Wc);
            for (int x = xf; x < Wc; x++) s->sum[x] = 0.0;
            for (long r = w.int_lo; r <= w.int_hi - k; r++) {
                const float *g = s->g + (size_t)slot_of(s, r) * s->cap_g;
                for (int x = xf; x < Wc; x++) s->sum[x] += (double)g[x];
            }
        }
        /* entering rows and the two newest (edge) rows share conv1 rows */
        conv_rows(s, &w, w.int_hi - k + 1, w.t - 1, 0, Wc);
        for (long r = w.int_hi - k + 1; r <= w.int_hi; r++) add_row(s, r, Wc, 1.0);
        conv_rows(s, &w, w.t - H, w.t - H + 1, 0, Wc);
        s->since_sync++;
    }
    const double inv_h = 1.0 / H;
    for (int x = 0; x < Wc; x++) scores[x] = (float)(s->b3 + (s->sum[x] + s->edge[x]) * inv_h);
    s->last_macs += (double)Wc * 2;
    s->synced = 1;
    s->t_s = s->n_push;
    s->c0_s = c0;
    s->c1_s = c1;
    return AP_OK;
}
