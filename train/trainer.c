#include "train/trainer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/plot.h"
#include "common/util.h"
#include "train/checkpoint.h"
#include "train/fusion.h"
#include "train/dataset.h"
#include "train/optim.h"
#include "train/predictor.h"
#include "train/predictor_cuda.h"

void ap_train_opts_default(ap_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->epochs = 30;
    o->batch_size = 256;
    o->lr = 1e-3f;
    o->warmup_steps = 100;
    o->loss = AP_LOSS_MSE;
    o->device = AP_DEV_AUTO;
    o->history = 64;
    o->block = 16;
    o->sink_tokens = 64;
    o->local_tokens = 64;
    o->c1 = 16;
    o->c2 = 32;
    o->val_fraction = 0.1;
    o->seed = 1;
    o->n_budgets = 3;
    o->budgets[0] = 256;
    o->budgets[1] = 512;
    o->budgets[2] = 1024;
    o->threads = 2;
    o->rows = AP_ROWS_DENSE;
    o->val_rows = -1;
    o->sparse_budget = 1024;
    o->calib = 5;
    o->input_scale = 1.0f;
    o->target_scale = 1.0f;
    o->pool_chunks = 32;
}

/* 1 if v is a power of two (2^-30 .. 2^30): scaling by it is exact in float. */
static int is_pow2(float v) {
    if (!(v > 0.0f)) return 0;
    int e = 0;
    return frexpf(v, &e) == 0.5f && e > -30 && e < 32;
}

/* Training weights <-> raw-unit weights of every model (see trainer.h):
 * conv1.weight * in, conv3.weight and conv3.bias / out. dir = +1 folds
 * (training -> raw), -1 unfolds. Exact for powers of two. */
static void fold_scales(const ap_pred_config *c, float *params, float in, float out, int dir) {
    ap_pred_layout L;
    ap_pred_layout_of(c, &L);
    float a = dir > 0 ? in : 1.0f / in, b = dir > 0 ? 1.0f / out : out;
    for (int m = 0; m < c->n_models; m++) {
        float *w = params + (size_t)m * L.total;
        for (size_t i = 0; i < (size_t)c->c1 * 9; i++) w[L.w1 + i] *= a;
        for (int i = 0; i < c->c2; i++) w[L.w3 + i] *= b;
        w[L.b3] *= b;
    }
}

static double batch_loss(const ap_train_opts *o, const float *pred, const float *y,
                         const float *ysum, int n, int W, double ys, int *scratch, float *dy);

/* Pairwise ranking loss for top-k selection: for each validation budget
 * (k candidates kept), every pair (i among the k blocks with the most true
 * mass, j outside them) costs softplus(s_j - s_i), weighted by the mass
 * the swap would lose, ysum_i - ysum_j, and normalised by the total weight;
 * the sample's loss is the mean over budgets. So the loss is small exactly
 * when the scores order the blocks the way recovery at those budgets
 * rewards, and near-ties in mass cost little. order: scratch of W ints. */
static double rank_loss_sample(const float *p, const float *t, int W, const ap_train_opts *o,
                               int *order, float *g) {
    ap_metrics_rank(t, W, order);
    double loss = 0.0;
    int used = 0;
    for (int j = 0; j < W; j++) g[j] = 0.0f;
    for (int b = 0; b < o->n_budgets; b++) {
        int k = ap_metrics_k_blocks(o->budgets[b], o->sink_tokens, o->local_tokens, o->block, W);
        if (k < 1 || k >= W) continue;
        double wsum = 0.0, l = 0.0;
        for (int a = 0; a < k; a++)
            for (int c = k; c < W; c++) wsum += (double)t[order[a]] - t[order[c]];
        if (!(wsum > 0.0)) continue;
        for (int a = 0; a < k; a++) {
            int i = order[a];
            for (int c = k; c < W; c++) {
                int j = order[c];
                double w = ((double)t[i] - t[j]) / wsum;
                if (w <= 0.0) continue;
                double d = (double)p[i] - p[j];
                /* softplus(-d) and its derivative sigmoid(-d), overflow-free */
                double e = exp(-fabs(d));
                l += w * (d > 0 ? log1p(e) : -d + log1p(e));
                double sg = d > 0 ? e / (1.0 + e) : 1.0 / (1.0 + e);
                g[i] -= (float)(w * sg);
                g[j] += (float)(w * sg);
            }
        }
        loss += l;
        used++;
    }
    if (used > 1)
        for (int j = 0; j < W; j++) g[j] /= (float)used;
    return used ? loss / used : 0.0;
}

/* Loss over one batch and its gradient w.r.t. the scores (dy). ys = the
 * target scale: MSE compares the scores with ys * y (training units; the
 * caller reports it in raw units, divided by ys^2). */
double ap_train_batch_loss(const ap_train_opts *o, const float *pred, const float *y,
                           const float *ysum, int n, int W, int *scratch, float *dy) {
    return batch_loss(o, pred, y, ysum, n, W, o->target_scale, scratch, dy);
}

static double batch_loss(const ap_train_opts *o, const float *pred, const float *y,
                         const float *ysum, int n, int W, double ys, int *scratch, float *dy) {
    const ap_loss_kind kind = o->loss;
    double loss = 0.0;
    if (kind == AP_LOSS_RANK) {
        for (int s = 0; s < n; s++) {
            float *g = dy + (long)s * W;
            loss += rank_loss_sample(pred + (long)s * W, ysum + (long)s * W, W, o, scratch, g);
            for (int j = 0; j < W; j++) g[j] /= (float)n;
        }
        return loss / n;
    }
    if (kind == AP_LOSS_MSE || kind == AP_LOSS_MSE_MASS) {
        /* The paper's objective: MSE against the raw max-pooled next row; or
         * against the mass each block will receive (what recovery sums). */
        const float *t = kind == AP_LOSS_MSE ? y : ysum;
        const double scale = 2.0 / ((double)n * W);
        for (long i = 0; i < (long)n * W; i++) {
            double d = (double)pred[i] - ys * t[i];
            loss += d * d;
            dy[i] = (float)(scale * d);
        }
        return loss / ((double)n * W);
    }
    /* Cross-entropy between softmax(scores) and the true attention mass over
     * the candidates (block_sum renormalised): it rewards putting the mass
     * where top-k selection will look, not matching magnitudes. */
    for (int s = 0; s < n; s++) {
        const float *p = pred + (long)s * W, *t = ysum + (long)s * W;
        float *g = dy + (long)s * W;
        double mx = -INFINITY, tot = 0.0, z = 0.0;
        for (int j = 0; j < W; j++) {
            if (p[j] > mx) mx = p[j];
            tot += t[j];
        }
        for (int j = 0; j < W; j++) z += exp((double)p[j] - mx);
        double lz = log(z) + mx;
        for (int j = 0; j < W; j++) {
            double q = tot > 0 ? t[j] / tot : 1.0 / W;
            double sm = exp((double)p[j] - lz);
            if (q > 0) loss -= q * ((double)p[j] - lz);
            g[j] = (float)((sm - q) / n);
        }
    }
    return loss / n;
}

typedef struct {
    double loss;
    ap_metrics_acc model, last;
    long long n;
} val_result;

static double mean_over(const ap_meanci *a, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += a[i].mean;
    return n ? s / n : 0.0;
}

static ap_status write_text_atomic(const char *path, const char *text, ap_err *err) {
    char tmp[4200];
    ap_tmp_name(tmp, sizeof tmp, path);
    FILE *f = fopen(tmp, "w");
    if (!f) return ap_errf(err, AP_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
    int ok = fputs(text, f) >= 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        remove(tmp);
        return ap_errf(err, AP_ERR_IO, "%s: write failed (disk full?)", path);
    }
    return ap_commit_file(tmp, path, err);
}

/* One pass over a split. train=1: forward, loss, backward, Adam step. */
typedef struct {
    const ap_train_opts *o;
    ap_dataset *ds;
    ap_predictor *pred;
    ap_pred_cuda *gpu;
    ap_adam *adam;
    float *grad;
    size_t n_params;
    long *step;
    long total_steps;
    void *ws;
    size_t ws_bytes;
    float *yhat, *dy;
    float *cnn;    /* [batch][width] the CNN's own scores (query fusion) */
    ap_batch batch;
    ap_progress *prog;
    long long n_avail_train, n_avail_val;
    int *crop_off; /* [batch] column offset of each sample's crop */
    int *scratch;  /* [max width] ranking scratch of the rank loss */
} pass_ctx;

/* Random column crops of width Wc, in place (the packed layout shrinks, so
 * every write lands at or before what it still has to read). Offsets are a
 * function of (seed, optimizer step, sample): --resume reproduces them. */
static void crop_batch(ap_batch *b, int N, int Wc, uint64_t seed, long step, int *off) {
    const int H = b->H, W = b->W;
    for (int i = 0; i < N; i++) {
        uint64_t z = seed ^ ((uint64_t)step * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)i << 40);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        off[i] = (int)(z % (uint64_t)(W - Wc + 1));
        for (int r = 0; r < H; r++)
            memmove(b->x + ((size_t)i * H + r) * Wc, b->x + ((size_t)i * H + r) * W + off[i],
                    (size_t)Wc * sizeof(float));
        memmove(b->y + (size_t)i * Wc, b->y + (size_t)i * W + off[i], (size_t)Wc * sizeof(float));
        memmove(b->ysum + (size_t)i * Wc, b->ysum + (size_t)i * W + off[i],
                (size_t)Wc * sizeof(float));
        /* zq keeps the z-score of the whole window: the replay's */
        if (b->zq)
            memmove(b->zq + (size_t)i * Wc, b->zq + (size_t)i * W + off[i],
                    (size_t)Wc * sizeof(float));
    }
}

static ap_status run_pass(pass_ctx *pc, ap_split split, int epoch, int train, double *mean_loss,
                          val_result *vr, long long *n_done, ap_err *err) {
    ap_status st = AP_OK;
    ap_dataset_iter *it = NULL;
    const ap_train_opts *o = pc->o;
    long limit = train ? o->max_train_samples : o->max_val_samples;
    double loss_sum = 0.0;
    long long n = 0;
    /* validation: the same windows every epoch (epoch 0's order, fixed subset) */
    st = ap_dataset_iter_create(pc->ds, split, train ? epoch : 0, train, &it, err);
    if (st) goto cleanup;
    ap_rows_kind rows = train || o->val_rows < 0 ? o->rows : (ap_rows_kind)o->val_rows;
    st = ap_dataset_iter_set_rows(it, rows, err);
    if (st) goto cleanup;
    long long avail = train ? pc->n_avail_train : pc->n_avail_val;
    if (limit > 0 && limit < avail) {
        /* A subset spread over every chunk (the first `limit` windows of the
         * pass would come from the first few chunks: a handful of layers of
         * one or two sequences). The subset is the cap: its size is limit
         * +- a few sqrt(limit), and cutting its tail would make the kept
         * windows depend on the order (e.g. on the layer grouping). */
        st = ap_dataset_iter_set_subset(it, (double)limit / (double)avail,
                                        train ? (uint64_t)epoch + 1 : 0, err);
        if (st) goto cleanup;
        limit = 0;
    }
    /* The windows this pass will serve, counted when the subset was drawn:
     * a total of the cap itself would be passed by a subset drawn a little
     * above it (the subset is limit +- a few sqrt(limit)). */
    if (pc->prog) pc->prog->total = (double)ap_dataset_iter_n_planned(it);
    for (;;) {
        st = ap_dataset_iter_next(it, &pc->batch, err);
        if (st) goto cleanup;
        ap_batch *b = &pc->batch;
        if (b->n == 0) break;
        int N = b->n, H = b->H, W = b->W, m = b->group;
        if (limit > 0 && n + N > limit) N = (int)(limit - n);
        if (N <= 0) break;
        if (o->input_scale != 1.0f)
            for (size_t i = 0; i < (size_t)N * H * W; i++) b->x[i] *= o->input_scale;
        int W_full = W;
        if (train && o->crop > 0 && W > o->crop) {
            crop_batch(b, N, o->crop, o->seed, *pc->step, pc->crop_off);
            W = o->crop;
        }
        size_t need = ap_pred_workspace_bytes(ap_predictor_config(pc->pred), N, H, W);
        if (need > pc->ws_bytes) {
            void *nw = realloc(pc->ws, need);
            if (!nw) {
                st = ap_errf(err, AP_ERR_NOMEM, "out of memory for a %zu-byte workspace", need);
                goto cleanup;
            }
            pc->ws = nw;
            pc->ws_bytes = need;
        }
        if (pc->gpu)
            st = ap_pred_cuda_forward(pc->gpu, m, b->x, N, H, W, pc->yhat, err);
        else if (train)
            st = ap_predictor_forward_train(pc->pred, m, b->x, N, H, W, pc->yhat, pc->ws,
                                            pc->ws_bytes, err);
        else
            st = ap_predictor_forward(pc->pred, m, b->x, N, H, W, pc->yhat, err);
        if (st) goto cleanup;
        const ap_pred_config *pcfg = ap_predictor_config(pc->pred);
        ap_pred_layout lay;
        ap_pred_layout_of(pcfg, &lay);
        float qw = 0.0f;
        if (pcfg->query_fusion) {
            /* The loss sees what the replay ranks: z(cnn) + w z(bound). Over
             * a crop the CNN's z-score is the crop's (the bound's is the
             * whole window's). */
            qw = ap_predictor_params(pc->pred, NULL)[(size_t)m * lay.total + lay.q];
            memcpy(pc->cnn, pc->yhat, (size_t)N * W * sizeof(float));
            for (int i = 0; i < N; i++)
                ap_fuse_scores(pc->cnn + (size_t)i * W, b->zq + (size_t)i * W, W, qw,
                               pc->yhat + (size_t)i * W);
        }
        double l = batch_loss(o, pc->yhat, b->y, b->ysum, N, W, o->target_scale, pc->scratch,
                              pc->dy);
        if (o->loss == AP_LOSS_MSE || o->loss == AP_LOSS_MSE_MASS)
            l /= (double)o->target_scale * o->target_scale;
        double dqw = 0.0;
        if (pcfg->query_fusion)
            for (int i = 0; i < N; i++)
                dqw += ap_fuse_scores_backward(pc->cnn + (size_t)i * W, b->zq + (size_t)i * W, W,
                                               qw, pc->dy + (size_t)i * W, pc->dy + (size_t)i * W);
        if (W < W_full) {
            /* a crop's edge columns see zero padding where the real window has
             * neighbours: no gradient from them (real window edges keep it) */
            const int e = W > 4 ? 2 : 0;
            for (int i = 0; i < N; i++) {
                float *g = pc->dy + (size_t)i * W;
                if (pc->crop_off[i] > 0)
                    for (int j = 0; j < e; j++) g[j] = 0.0f;
                if (pc->crop_off[i] < W_full - W)
                    for (int j = W - e; j < W; j++) g[j] = 0.0f;
            }
        }
        if (!isfinite(l)) {
            st = ap_errf(err, AP_ERR_NUMERIC,
                         "training diverged: loss is %g at epoch %d (lower --lr?)", l, epoch + 1);
            goto cleanup;
        }
        loss_sum += l * N;
        if (train) {
            memset(pc->grad, 0, pc->n_params * sizeof(float)); /* backward accumulates */
            if (pc->gpu)
                st = ap_pred_cuda_backward(pc->gpu, pc->dy, pc->grad, err);
            else
                st = ap_predictor_backward(pc->pred, m, b->x, N, H, W, pc->dy, pc->ws,
                                           pc->ws_bytes, pc->grad, err);
            if (st) goto cleanup;
            if (pcfg->query_fusion) pc->grad[(size_t)m * lay.total + lay.q] += (float)dqw;
            size_t np = 0;
            float *params = ap_predictor_params(pc->pred, &np);
            /* A short run must not spend itself in warm-up. */
            long warm = o->warmup_steps < pc->total_steps / 10 ? o->warmup_steps
                                                               : pc->total_steps / 10;
            float lr = ap_lr_at(AP_LR_COSINE, o->lr, *pc->step, warm, pc->total_steps, 0.05f);
            ap_adam_step_range(pc->adam, params, pc->grad, lr, (size_t)m * lay.total, lay.total);
            (*pc->step)++;
            if (pc->gpu) {
                st = ap_pred_cuda_upload_params(pc->gpu, params, np, err);
                if (st) goto cleanup;
            }
        } else {
            /* the last-step predictor scores each block by its newest history row */
            st = ap_metrics_acc_add(&vr->model, pc->yhat, W, b->ysum, b->mass_fixed, N, W, err);
            if (st) goto cleanup;
            st = ap_metrics_acc_add(&vr->last, b->x + (long)(H - 1) * W, (long)H * W, b->ysum,
                                    b->mass_fixed, N, W, err);
            if (st) goto cleanup;
        }
        n += N;
        if (pc->prog) ap_progress_update(pc->prog, (double)(*n_done + n));
        if (limit > 0 && n >= limit) break;
    }
    *mean_loss = n ? loss_sum / n : 0.0;
    *n_done += n;
    if (vr) vr->n = n;
cleanup:
    ap_dataset_iter_free(it);
    return st;
}

static double num_or_nan(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItem(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* train_windows and adam_step make learning curves over runs of different
 * epoch sizes comparable (docs/predictor.md). adam_step is the optimizer's
 * counter, which today advances twice per batch ("Known defect" there). */
static void add_epoch_json(cJSON *epochs, int epoch, double train_loss, double val_loss,
                           const val_result *vr, const ap_train_opts *o, double secs,
                           double sps, long long n_train, long steps) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "epoch", epoch + 1);
    cJSON_AddNumberToObject(e, "train_windows", (double)n_train);
    cJSON_AddNumberToObject(e, "adam_step", (double)steps);
    cJSON_AddNumberToObject(e, "train_loss", train_loss);
    cJSON_AddNumberToObject(e, "val_loss", val_loss);
    cJSON_AddNumberToObject(e, "val_samples", (double)vr->n);
    cJSON_AddNumberToObject(e, "seconds", secs);
    cJSON_AddNumberToObject(e, "train_samples_per_s", sps);
    cJSON *arr = cJSON_AddArrayToObject(e, "budgets");
    for (int i = 0; i < o->n_budgets; i++) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddNumberToObject(b, "budget", o->budgets[i]);
        cJSON_AddNumberToObject(b, "recovery", vr->model.recovery[i].mean);
        cJSON_AddNumberToObject(b, "recovery_ci95", ap_meanci_half95(&vr->model.recovery[i]));
        cJSON_AddNumberToObject(b, "hit_rate", vr->model.hit_rate[i].mean);
        cJSON_AddNumberToObject(b, "oracle_recovery", vr->model.oracle[i].mean);
        cJSON_AddNumberToObject(b, "last_step_recovery", vr->last.recovery[i].mean);
        cJSON_AddNumberToObject(b, "last_step_hit_rate", vr->last.hit_rate[i].mean);
        cJSON_AddItemToArray(arr, b);
    }
    cJSON_AddNumberToObject(e, "recovery_mean", mean_over(vr->model.recovery, o->n_budgets));
    cJSON_AddNumberToObject(e, "last_step_recovery_mean", mean_over(vr->last.recovery, o->n_budgets));
    cJSON_AddNumberToObject(e, "oracle_recovery_mean", mean_over(vr->model.oracle, o->n_budgets));
    cJSON_AddItemToArray(epochs, e);
}

static void plot_curves(const char *run_dir, const cJSON *epochs, FILE *log) {
    int n = cJSON_GetArraySize(epochs);
    if (n < 1) return;
    double *x = calloc((size_t)n, sizeof(double)), *tl = calloc((size_t)n, sizeof(double));
    double *vl = calloc((size_t)n, sizeof(double)), *rec = calloc((size_t)n, sizeof(double));
    double *last = calloc((size_t)n, sizeof(double)), *orc = calloc((size_t)n, sizeof(double));
    if (!x || !tl || !vl || !rec || !last || !orc) goto cleanup;
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(epochs, i);
        /* The log may come from a resumed checkpoint's metadata: a missing
         * or non-numeric field plots as NAN (a gap), never a crash. */
        x[i] = num_or_nan(e, "epoch");
        tl[i] = num_or_nan(e, "train_loss");
        vl[i] = num_or_nan(e, "val_loss");
        rec[i] = num_or_nan(e, "recovery_mean");
        last[i] = num_or_nan(e, "last_step_recovery_mean");
        orc[i] = num_or_nan(e, "oracle_recovery_mean");
    }
    char path[4200];
    ap_err err;
    /* Epochs are whole: a tick at 1.5 would name no epoch. */
    ap_plot_opts po = {.title = "validation attention recovery (mean over budgets)",
                       .xlabel = "epoch", .ylabel = "recovery", .width = 800, .height = 500,
                       .x_integer = 1};
    ap_plot_series s[3] = {{"predictor", x, rec, n}, {"last step", x, last, n}, {"oracle", x, orc, n}};
    snprintf(path, sizeof path, "%s/recovery.png", run_dir);
    if (ap_plot_lines_png(path, &po, s, 3, &err) && log) fprintf(log, "train: plot: %s\n", err.msg);
    ap_plot_opts pl = {.title = "loss", .xlabel = "epoch", .ylabel = "loss", .width = 800,
                       .height = 500, .x_integer = 1};
    ap_plot_series sl[2] = {{"train", x, tl, n}, {"validation", x, vl, n}};
    snprintf(path, sizeof path, "%s/curves.png", run_dir);
    if (ap_plot_lines_png(path, &pl, sl, 2, &err) && log) fprintf(log, "train: plot: %s\n", err.msg);
cleanup:
    free(x);
    free(tl);
    free(vl);
    free(rec);
    free(last);
    free(orc);
}

static char *opts_json(const ap_train_opts *o) {
    cJSON *j = cJSON_CreateObject();
    cJSON *tr = cJSON_AddArrayToObject(j, "traces");
    for (int i = 0; i < o->n_traces; i++) cJSON_AddItemToArray(tr, cJSON_CreateString(o->traces[i]));
    cJSON *vt = cJSON_AddArrayToObject(j, "val_traces");
    for (int i = 0; i < o->n_val_traces; i++)
        cJSON_AddItemToArray(vt, cJSON_CreateString(o->val_traces[i]));
    cJSON *ht = cJSON_AddArrayToObject(j, "holdout");
    for (int i = 0; i < o->n_holdout; i++) cJSON_AddItemToArray(ht, cJSON_CreateString(o->holdout[i]));
    cJSON_AddNumberToObject(j, "epochs", o->epochs);
    cJSON_AddNumberToObject(j, "batch_size", o->batch_size);
    cJSON_AddNumberToObject(j, "lr", o->lr);
    cJSON_AddNumberToObject(j, "weight_decay", o->weight_decay);
    cJSON_AddNumberToObject(j, "warmup_steps", o->warmup_steps);
    cJSON_AddStringToObject(j, "loss", o->loss == AP_LOSS_MSE ? "mse"
                                       : o->loss == AP_LOSS_MSE_MASS ? "mse-mass"
                                       : o->loss == AP_LOSS_CE ? "ce" : "rank");
    cJSON_AddNumberToObject(j, "per_layer", o->per_layer);
    cJSON_AddNumberToObject(j, "query_fusion", o->query_fusion);
    cJSON_AddNumberToObject(j, "layer_groups", o->layer_groups);
    cJSON_AddNumberToObject(j, "history", o->history);
    cJSON_AddNumberToObject(j, "block", o->block);
    cJSON_AddNumberToObject(j, "sink_tokens", o->sink_tokens);
    cJSON_AddNumberToObject(j, "local_tokens", o->local_tokens);
    cJSON_AddNumberToObject(j, "c1", o->c1);
    cJSON_AddNumberToObject(j, "c2", o->c2);
    cJSON_AddNumberToObject(j, "val_fraction", o->val_fraction);
    cJSON_AddNumberToObject(j, "seed", (double)o->seed);
    cJSON_AddNumberToObject(j, "max_train_samples", (double)o->max_train_samples);
    cJSON_AddNumberToObject(j, "max_val_samples", (double)o->max_val_samples);
    cJSON_AddStringToObject(j, "rows", o->rows == AP_ROWS_SPARSE ? "sparse" : "dense");
    int vrows = o->val_rows < 0 ? (int)o->rows : o->val_rows;
    cJSON_AddStringToObject(j, "val_rows", vrows == AP_ROWS_SPARSE ? "sparse" : "dense");
    if (o->n_sparse_budgets > 0) {
        cJSON *sb = cJSON_AddArrayToObject(j, "sparse_budgets");
        for (int i = 0; i < o->n_sparse_budgets; i++)
            cJSON_AddItemToArray(sb, cJSON_CreateNumber(o->sparse_budgets[i]));
    } else {
        cJSON_AddNumberToObject(j, "sparse_budget", o->sparse_budget);
    }
    cJSON_AddNumberToObject(j, "calib", o->calib);
    cJSON_AddNumberToObject(j, "input_scale", o->input_scale);
    cJSON_AddNumberToObject(j, "target_scale", o->target_scale);
    cJSON_AddNumberToObject(j, "pool_chunks", o->pool_chunks);
    cJSON_AddNumberToObject(j, "crop", o->crop);
    cJSON_AddStringToObject(j, "init", o->init_last_step ? "last-step" : "default");
    if (o->init_last_step) cJSON_AddNumberToObject(j, "init_mean_weight", o->init_mean_weight);
    cJSON *b = cJSON_AddArrayToObject(j, "budgets");
    for (int i = 0; i < o->n_budgets; i++) cJSON_AddItemToArray(b, cJSON_CreateNumber(o->budgets[i]));
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    return s;
}

/* --init last-step: start every model as the last-step predictor, exactly
 * representable in the published architecture. conv1 channel 0 copies the
 * row (centre tap), channel 1 the row before it (tap kh 0); the histories
 * are >= 0, so the ReLUs pass both. conv2 channels 0 and 1 take their
 * difference and its negative, so the time mean telescopes:
 * mean_h ReLU(d_h) - ReLU(-d_h) = mean_h (x[h] - x[h-1]) = x[H-1] / H, and
 * conv3 weights +-H (times target/input scale) give the newest row back.
 * Every other channel keeps its random init but starts with conv3 weight 0,
 * so training departs from last-step only where the loss asks for it.
 * mean_w > 0 (--init last-mean:A) adds A times the history mean: conv2
 * channel 2 passes conv1 channel 0 (the row itself, >= 0), whose time mean
 * is the mean of the window, with conv3 weight A; on the replay's sparse
 * windows "newest row + 0.5 x mean" already beats the newest row alone
 * (docs/predictor.md), so training starts from the better point. */
static void init_last_step(const ap_pred_config *c, float *params, float in, float out,
                           float mean_w) {
    ap_pred_layout L;
    ap_pred_layout_of(c, &L);
    const int c1 = c->c1, c2 = c->c2;
    for (int m = 0; m < c->n_models; m++) {
        float *w = params + (size_t)m * L.total;
        for (int k = 0; k < 9; k++) w[L.w1 + 0 * 9 + k] = w[L.w1 + 1 * 9 + k] = 0.0f;
        w[L.w1 + 0 * 9 + 4] = 1.0f; /* kh 1, kw 1 */
        w[L.w1 + 1 * 9 + 1] = 1.0f; /* kh 0, kw 1: reads row h - 1 */
        w[L.b1 + 0] = w[L.b1 + 1] = 0.0f;
        for (int co = 0; co < 2; co++) {
            float *wc = w + L.w2 + (size_t)co * c1 * 9;
            memset(wc, 0, (size_t)c1 * 9 * sizeof(float));
            wc[0 * 9 + 4] = co == 0 ? 1.0f : -1.0f;
            wc[1 * 9 + 4] = co == 0 ? -1.0f : 1.0f;
            w[L.b2 + co] = 0.0f;
        }
        for (int co = 0; co < c2; co++) w[L.w3 + co] = 0.0f;
        w[L.w3 + 0] = (float)c->history * out / in;
        w[L.w3 + 1] = -(float)c->history * out / in;
        w[L.b3] = 0.0f;
        if (mean_w > 0.0f && c2 >= 3) {
            float *wc = w + L.w2 + (size_t)2 * c1 * 9;
            memset(wc, 0, (size_t)c1 * 9 * sizeof(float));
            wc[0 * 9 + 4] = 1.0f;
            w[L.b2 + 2] = 0.0f;
            w[L.w3 + 2] = mean_w * out / in;
        }
    }
}

static void dataset_config_of(const ap_train_opts *o, ap_dataset_config *dc) {
    ap_dataset_config_default(dc);
    dc->history = o->history;
    dc->block_size = o->block;
    dc->sink_blocks = o->sink_tokens / o->block;
    dc->local_blocks = o->local_tokens / o->block;
    dc->val_fraction = o->val_fraction;
    dc->seed = o->seed;
    dc->batch_size = o->batch_size;
    dc->pool_chunks = o->pool_chunks;
    dc->rows = o->rows == AP_ROWS_SPARSE || o->val_rows == AP_ROWS_SPARSE ? AP_ROWS_SPARSE
                                                                        : AP_ROWS_DENSE;
    dc->sparse_budget = o->sparse_budget;
    dc->n_sparse_budgets = o->n_sparse_budgets;
    memcpy(dc->sparse_budgets, o->sparse_budgets, sizeof dc->sparse_budgets);
    dc->calib = o->calib;
    dc->first_val_file = o->n_val_traces > 0 ? o->n_traces : 0;
    dc->query_fusion = o->query_fusion;
}

/* The dataset's files: the training traces, then the validation traces. */
static ap_status dataset_paths(const ap_train_opts *o, const char ***paths, int *n, ap_err *err) {
    *n = o->n_traces + o->n_val_traces;
    *paths = malloc((size_t)*n * sizeof **paths);
    if (!*paths) return ap_errf(err, AP_ERR_NOMEM, "out of memory");
    for (int i = 0; i < o->n_traces; i++) (*paths)[i] = o->traces[i];
    for (int i = 0; i < o->n_val_traces; i++) (*paths)[o->n_traces + i] = o->val_traces[i];
    return AP_OK;
}

/* Held out by source: refuse before anything is written. */
static ap_status check_held_out(const ap_train_opts *o, ap_err *err) {
    ap_status st = AP_OK;
    if (o->n_val_traces > 0)
        st = ap_dataset_check_disjoint_sources(o->traces, o->n_traces, "--traces", o->val_traces,
                                               o->n_val_traces, "--val-traces", err);
    if (!st && o->n_holdout > 0)
        st = ap_dataset_check_disjoint_sources(o->traces, o->n_traces, "--traces", o->holdout,
                                               o->n_holdout, "--holdout", err);
    if (!st && o->n_holdout > 0 && o->n_val_traces > 0)
        st = ap_dataset_check_disjoint_sources(o->val_traces, o->n_val_traces, "--val-traces",
                                               o->holdout, o->n_holdout, "--holdout", err);
    return st;
}

static void result_from(ap_train_result *res, const val_result *vr, const ap_train_opts *o) {
    res->n_budgets = o->n_budgets;
    for (int i = 0; i < o->n_budgets; i++) {
        res->budget_recovery[i] = vr->model.recovery[i].mean;
        res->budget_last_step[i] = vr->last.recovery[i].mean;
        res->budget_oracle[i] = vr->model.oracle[i].mean;
    }
    res->best_recovery = mean_over(vr->model.recovery, o->n_budgets);
    res->last_step_recovery = mean_over(vr->last.recovery, o->n_budgets);
    res->oracle_recovery = mean_over(vr->model.oracle, o->n_budgets);
}

/* --eval-only: one validation pass of RUN_DIR/best.safetensors (raw units,
 * the checkpoint's own model layout) on the windows the options describe;
 * nothing is written. */
static ap_status eval_run(const ap_train_opts *o, ap_train_result *res, ap_err *err) {
    ap_status st = AP_OK;
    ap_dataset *ds = NULL;
    ap_predictor *pred = NULL;
    float *params = NULL;
    const char **paths = NULL;
    int n_paths = 0;
    pass_ctx pc;
    memset(&pc, 0, sizeof pc);
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", o->run_dir, AP_CKPT_NAME_BEST);
    ap_ckpt_info info;
    size_t n = 0, np = 0;
    st = ap_checkpoint_load(path, &info, &params, NULL, NULL, &n, NULL, err);
    if (st) goto cleanup;
    if (info.cfg.history != o->history) {
        st = ap_errf(err, AP_ERR_ARG, "%s: trained with history %d, evaluation asks for %d",
                     path, info.cfg.history, o->history);
        goto cleanup;
    }
    st = ap_predictor_create(&info.cfg, 0, &pred, err);
    if (st) goto cleanup;
    ap_predictor_set_threads(pred, o->threads);
    memcpy(ap_predictor_params(pred, &np), params, n * sizeof(float));
    ap_dataset_config dc;
    dataset_config_of(o, &dc);
    dc.query_fusion = info.cfg.query_fusion; /* the checkpoint says what it scores with */
    st = dataset_paths(o, &paths, &n_paths, err);
    if (!st) st = ap_dataset_open(paths, n_paths, &dc, &ds, err);
    if (st) goto cleanup;
    if (info.cfg.n_layers > 0) {
        st = ap_dataset_set_layer_groups(ds, info.cfg.layer_map, info.cfg.n_layers, err);
        if (st) goto cleanup;
    }
    ap_dataset_stats dst;
    ap_dataset_get_stats(ds, &dst);
    if (dst.n_samples_val == 0) {
        st = ap_errf(err, AP_ERR_ARG, "%s: no validation windows", o->traces[0]);
        goto cleanup;
    }
    st = ap_batch_alloc(ds, &pc.batch, err);
    if (st) goto cleanup;
    size_t cap = (size_t)pc.batch.cap_n * pc.batch.cap_w;
    pc.yhat = malloc(cap * sizeof(float));
    pc.dy = malloc(cap * sizeof(float));
    pc.cnn = malloc(cap * sizeof(float));
    pc.scratch = malloc((size_t)pc.batch.cap_w * sizeof *pc.scratch);
    if (!pc.yhat || !pc.dy || !pc.cnn || !pc.scratch) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    /* validation runs on raw units: no input or target scale */
    ap_train_opts raw = *o;
    raw.input_scale = raw.target_scale = 1.0f;
    pc.o = &raw;
    pc.ds = ds;
    pc.pred = pred;
    pc.n_avail_train = dst.n_samples_train;
    pc.n_avail_val = dst.n_samples_val;
    val_result vr;
    memset(&vr, 0, sizeof vr);
    st = ap_metrics_acc_init(&vr.model, o->budgets, o->n_budgets, o->sink_tokens,
                             o->local_tokens, o->block, err);
    if (!st)
        st = ap_metrics_acc_init(&vr.last, o->budgets, o->n_budgets, o->sink_tokens,
                                 o->local_tokens, o->block, err);
    if (st) goto cleanup;
    double loss = 0.0;
    long long n_val = 0;
    st = run_pass(&pc, AP_SPLIT_VAL, 0, 0, &loss, &vr, &n_val, err);
    if (st) goto cleanup;
    result_from(res, &vr, o);
    res->n_params = (long long)n;
    res->epochs_done = 0;
    res->best_epoch = info.epoch;
    if (o->log)
        fprintf(o->log,
                "train: eval %s on %lld %s validation windows: recovery %.4f (last-step %.4f, "
                "oracle %.4f, %+.4f vs last-step)\n",
                path, n_val,
                (o->val_rows < 0 ? (int)o->rows : o->val_rows) == AP_ROWS_SPARSE ? "sparse"
                                                                               : "dense",
                res->best_recovery, res->last_step_recovery, res->oracle_recovery,
                res->best_recovery - res->last_step_recovery);
cleanup:
    ap_batch_release(&pc.batch);
    free(pc.yhat);
    free(pc.dy);
    free(pc.cnn);
    free(pc.scratch);
    free(pc.ws);
    free(params);
    free(paths);
    ap_predictor_free(pred);
    ap_dataset_free(ds);
    return st;
}

ap_status ap_train_run(const ap_train_opts *o, ap_train_result *res, ap_err *err) {
    ap_status st = AP_OK;
    ap_dataset *ds = NULL;
    ap_predictor *pred = NULL;
    ap_pred_cuda *gpu = NULL;
    ap_adam adam;
    memset(&adam, 0, sizeof adam);
    float *grad = NULL, *folded = NULL, *ck_params = NULL, *ck_m = NULL, *ck_v = NULL;
    char *ck_json = NULL, *cfg_json = NULL, *log_text = NULL;
    cJSON *log_root = NULL;
    const char **paths = NULL;
    int n_paths = 0;
    pass_ctx pc;
    memset(&pc, 0, sizeof pc);
    ap_train_result local;
    if (!res) res = &local;
    memset(res, 0, sizeof *res);
    char path[4200];

    if (o->n_traces < 1) return ap_errf(err, AP_ERR_ARG, "--traces: no trace file given");
    st = check_held_out(o, err);
    if (st) return st;
    if (o->eval_only) return eval_run(o, res, err);
    if (o->epochs < 1 || o->batch_size < 1 || !(o->lr > 0) || o->history < 1 || o->block < 1 ||
        o->sink_tokens % o->block || o->local_tokens % o->block || o->n_budgets < 1)
        return ap_errf(err, AP_ERR_ARG,
                       "bad training options (epochs, batch, lr, history, block >= 1; sink and "
                       "local multiples of the block; at least one budget)");
    if (o->query_fusion && o->loss != AP_LOSS_RANK && o->loss != AP_LOSS_CE)
        return ap_errf(err, AP_ERR_ARG,
                       "--query-fusion (on in the default recipe) ranks z-scores: use --loss rank "
                       "or ce, or --no-query-fusion / --recipe paper (MSE targets are in "
                       "attention units)");
    if (o->init_last_step && (o->c1 < 2 || o->c2 < (o->init_mean_weight > 0 ? 3 : 2)))
        return ap_errf(err, AP_ERR_ARG,
                       "--init last-step needs at least 2 channels per conv (last-mean: 3 in "
                       "conv2)");
    if (!is_pow2(o->input_scale) || !is_pow2(o->target_scale))
        return ap_errf(err, AP_ERR_ARG,
                       "input scale %g and target scale %g must be powers of two (exact to fold "
                       "into the exported weights)",
                       o->input_scale, o->target_scale);
    if ((o->rows != AP_ROWS_DENSE && o->rows != AP_ROWS_SPARSE) || o->val_rows < -1 ||
        o->val_rows > AP_ROWS_SPARSE || o->calib < 0 || o->sparse_budget < 1 ||
        o->pool_chunks < 1 || o->crop < 0 || (o->crop > 0 && o->crop < 8))
        return ap_errf(err, AP_ERR_ARG,
                       "bad data options (rows dense|sparse, calib >= 0, sparse budget >= 1, "
                       "pool chunks >= 1, crop 0 or >= 8)");
    snprintf(path, sizeof path, "%s/%s", o->run_dir, AP_CKPT_NAME_LAST);
    int have_last = ap_file_exists(path);
    if (have_last && !o->resume && !o->force)
        return ap_errf(err, AP_ERR_EXISTS,
                       "%s: run directory already holds a run (use --resume to continue it or "
                       "--force to start over)",
                       o->run_dir);
    if (o->resume && !have_last)
        return ap_errf(err, AP_ERR_ARG, "%s: --resume but no %s to resume from", o->run_dir,
                       AP_CKPT_NAME_LAST);

    ap_dataset_config dc;
    dataset_config_of(o, &dc);
    st = dataset_paths(o, &paths, &n_paths, err);
    if (!st) st = ap_dataset_open(paths, n_paths, &dc, &ds, err);
    if (st) goto cleanup;
    ap_dataset_stats dst;
    ap_dataset_get_stats(ds, &dst);
    if (dst.n_samples_train == 0 || dst.n_samples_val == 0) {
        st = ap_errf(err, AP_ERR_ARG,
                     "%s: too little data: %lld training and %lld validation windows (%d + %d "
                     "sequences); capture more prompts or longer generations",
                     o->traces[0], dst.n_samples_train, dst.n_samples_val, dst.n_seq_train,
                     dst.n_seq_val);
        goto cleanup;
    }
    /* Only now, with readable data, does the run directory appear: a missing
     * or corrupt trace leaves nothing behind. */
    st = ap_mkdir_p(o->run_dir, err);
    if (st) goto cleanup;

    ap_pred_config pcfg;
    ap_pred_config_default(&pcfg);
    if (o->per_layer || o->layer_groups > 1) {
        /* Models only for the layers selection runs in: a Gemma 3 trace's 3
         * full-attention layers of 18, not one model per sliding layer. */
        unsigned char full[AP_PRED_MAX_LAYERS];
        for (int l = 0; l < dst.n_layer && l < AP_PRED_MAX_LAYERS; l++)
            full[l] = (unsigned char)ap_dataset_layer_is_full(ds, l);
        ap_pred_config_groups_of(&pcfg, dst.n_layer, o->per_layer ? dst.n_layer : o->layer_groups,
                                 full);
    }
    pcfg.history = o->history;
    pcfg.block = o->block;
    pcfg.sink_blocks = o->sink_tokens / o->block;
    pcfg.local_blocks = o->local_tokens / o->block;
    pcfg.c1 = o->c1;
    pcfg.c2 = o->c2;
    pcfg.query_fusion = o->query_fusion;
    st = ap_pred_config_validate(&pcfg, err);
    if (st) goto cleanup;
    if (pcfg.n_layers > 0) {
        st = ap_dataset_set_layer_groups(ds, pcfg.layer_map, pcfg.n_layers, err);
        if (st) goto cleanup;
    }
    st = ap_predictor_create(&pcfg, o->seed, &pred, err);
    if (st) goto cleanup;
    ap_predictor_set_threads(pred, o->threads);
    size_t np = 0;
    float *params = ap_predictor_params(pred, &np);
    if (o->init_last_step)
        init_last_step(&pcfg, params, o->input_scale, o->target_scale, o->init_mean_weight);
    res->n_params = (long long)np; /* all models */

    ap_adam_config ac;
    ap_adam_config_default(&ac);
    ac.lr = o->lr;
    ac.weight_decay = o->weight_decay;
    ac.clip_norm = 1.0f;
    st = ap_adam_init(&adam, &ac, np, err);
    if (st) goto cleanup;
    grad = calloc(np, sizeof(float));
    folded = malloc(np * sizeof(float));
    if (!grad || !folded) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }

    ap_ckpt_info info;
    memset(&info, 0, sizeof info);
    info.cfg = pcfg;
    info.best_metric = -1.0;
    snprintf(info.metric_name, sizeof info.metric_name, "val_recovery_mean");
    int start_epoch = 0;
    log_root = cJSON_CreateObject();
    cJSON *epochs_json = cJSON_AddArrayToObject(log_root, "epochs");
    if (o->resume) {
        size_t n = 0;
        ap_ckpt_info ck;
        st = ap_checkpoint_load(path, &ck, &ck_params, &ck_m, &ck_v, &n, &ck_json, err);
        if (st) goto cleanup;
        if (n != np) {
            st = ap_errf(err, AP_ERR_FORMAT,
                         "%s: checkpoint has %zu parameters, this configuration %zu (resume with "
                         "the options of the original run)",
                         path, n, np);
            goto cleanup;
        }
        memcpy(params, ck_params, np * sizeof(float));
        fold_scales(&pcfg, params, o->input_scale, o->target_scale, -1);
        if (!ck_m || !ck_v) {
            /* A weights-only file (best.safetensors, a fixture) has no moments:
             * resuming from it would not continue the same run. */
            st = ap_errf(err, AP_ERR_FORMAT,
                         "%s: no optimizer state (adam_m/adam_v) in the checkpoint, so the run "
                         "cannot continue; start over with --force",
                         path);
            goto cleanup;
        }
        memcpy(adam.m, ck_m, np * sizeof(float));
        memcpy(adam.v, ck_v, np * sizeof(float));
        adam.step = ck.step;
        info = ck;
        start_epoch = ck.epoch;
        if (ck_json) {
            cJSON *prev = cJSON_Parse(ck_json);
            cJSON *pe = prev ? cJSON_GetObjectItem(prev, "epochs") : NULL;
            if (pe && cJSON_IsArray(pe)) {
                cJSON_DeleteItemFromObject(log_root, "epochs");
                cJSON_AddItemToObject(log_root, "epochs", cJSON_Duplicate(pe, 1));
                epochs_json = cJSON_GetObjectItem(log_root, "epochs");
            }
            cJSON_Delete(prev);
        }
        if (o->log)
            fprintf(o->log, "train: resuming %s after epoch %d (step %ld)\n", o->run_dir,
                    start_epoch, adam.step);
    }

    int want_gpu = o->device == AP_DEV_CUDA || (o->device == AP_DEV_AUTO && ap_pred_cuda_available());
    if (want_gpu) {
        if (!ap_pred_cuda_available()) {
            st = ap_errf(err, AP_ERR_UNSUPPORTED,
                         "--device cuda: no usable CUDA device/cuDNN in this build or machine");
            goto cleanup;
        }
        st = ap_pred_cuda_create(&pcfg, &gpu, err);
        if (!st) st = ap_pred_cuda_upload_params(gpu, params, np, err);
        if (st) goto cleanup;
    }

    cfg_json = opts_json(o);
    snprintf(path, sizeof path, "%s/config.json", o->run_dir);
    st = write_text_atomic(path, cfg_json, err);
    if (st) goto cleanup;

    if (o->log)
        fprintf(o->log,
                "train: %lld parameters (%d model%s), %lld train / %lld val windows from %d + %d "
                "sequences, %lld bypassed (< 3 candidates), device %s\n",
                res->n_params, pcfg.n_models, pcfg.n_models > 1 ? "s" : "",
                dst.n_samples_train, dst.n_samples_val, dst.n_seq_train, dst.n_seq_val,
                dst.n_bypass, gpu ? "cuda" : "cpu");

    st = ap_batch_alloc(ds, &pc.batch, err);
    if (st) goto cleanup;
    pc.o = o;
    pc.ds = ds;
    pc.pred = pred;
    pc.gpu = gpu;
    pc.adam = &adam;
    pc.grad = grad;
    pc.n_params = np;
    pc.step = &adam.step;
    pc.n_avail_train = dst.n_samples_train;
    pc.n_avail_val = dst.n_samples_val;
    pc.crop_off = malloc((size_t)pc.batch.cap_n * sizeof *pc.crop_off);
    pc.scratch = malloc((size_t)pc.batch.cap_w * sizeof *pc.scratch);
    long per_epoch = o->max_train_samples > 0 && o->max_train_samples < dst.n_samples_train
                         ? o->max_train_samples
                         : (long)dst.n_samples_train;
    pc.total_steps = (long)o->epochs * ((per_epoch + o->batch_size - 1) / o->batch_size);
    size_t cap = (size_t)pc.batch.cap_n * pc.batch.cap_w;
    pc.yhat = malloc(cap * sizeof(float));
    pc.dy = malloc(cap * sizeof(float));
    pc.cnn = malloc(cap * sizeof(float));
    if (!pc.yhat || !pc.dy || !pc.cnn || !pc.crop_off || !pc.scratch) {
        st = ap_errf(err, AP_ERR_NOMEM, "out of memory");
        goto cleanup;
    }

    int since_best = 0;
    double total_train_s = 0.0;
    long long total_train_n = 0;
    for (int epoch = start_epoch; epoch < o->epochs; epoch++) {
        ap_progress prog;
        char label[64];
        snprintf(label, sizeof label, "train epoch %d/%d", epoch + 1, o->epochs);
        ap_progress_init(&prog, o->log, label, "win", (double)per_epoch, o->progress);
        pc.prog = &prog;
        double t0 = ap_now_seconds(), train_loss = 0.0, val_loss = 0.0;
        long long n_train = 0, n_val = 0;
        st = run_pass(&pc, AP_SPLIT_TRAIN, epoch, 1, &train_loss, NULL, &n_train, err);
        if (st) goto cleanup;
        ap_progress_finish(&prog);
        double t1 = ap_now_seconds();
        total_train_s += t1 - t0;
        total_train_n += n_train;
        val_result vr;
        memset(&vr, 0, sizeof vr);
        st = ap_metrics_acc_init(&vr.model, o->budgets, o->n_budgets, o->sink_tokens,
                                 o->local_tokens, o->block, err);
        if (!st)
            st = ap_metrics_acc_init(&vr.last, o->budgets, o->n_budgets, o->sink_tokens,
                                     o->local_tokens, o->block, err);
        if (st) goto cleanup;
        pc.prog = NULL;
        st = run_pass(&pc, AP_SPLIT_VAL, epoch, 0, &val_loss, &vr, &n_val, err);
        if (st) goto cleanup;
        double rec = mean_over(vr.model.recovery, o->n_budgets);
        double last = mean_over(vr.last.recovery, o->n_budgets);
        double orc = mean_over(vr.model.oracle, o->n_budgets);
        double sps = n_train / (t1 - t0 + 1e-12);
        add_epoch_json(epochs_json, epoch, train_loss, val_loss, &vr, o, ap_now_seconds() - t0, sps,
                       n_train, adam.step);
        if (o->log)
            fprintf(o->log,
                    "train: epoch %d/%d loss %.4g val %.4g | val recovery %.4f (last-step %.4f, "
                    "oracle %.4f, %+.4f vs last-step) | %.0f win/s\n",
                    epoch + 1, o->epochs, train_loss, val_loss, rec, last, orc, rec - last, sps);
        free(log_text);
        log_text = cJSON_Print(log_root);
        info.epoch = epoch + 1;
        info.step = adam.step;
        int improved = rec > info.best_metric;
        memcpy(folded, params, np * sizeof(float));
        fold_scales(&pcfg, folded, o->input_scale, o->target_scale, +1);
        if (improved) {
            info.best_metric = rec;
            res->best_epoch = epoch + 1;
            res->last_step_recovery = last;
            res->oracle_recovery = orc;
            since_best = 0;
            snprintf(path, sizeof path, "%s/%s", o->run_dir, AP_CKPT_NAME_BEST);
            st = ap_checkpoint_save(path, &info, folded, adam.m, adam.v, np, log_text, err);
            if (st) goto cleanup;
            result_from(res, &vr, o);
        } else {
            since_best++;
        }
        snprintf(path, sizeof path, "%s/%s", o->run_dir, AP_CKPT_NAME_LAST);
        st = ap_checkpoint_save(path, &info, folded, adam.m, adam.v, np, log_text, err);
        if (st) goto cleanup;
        snprintf(path, sizeof path, "%s/log.json", o->run_dir);
        st = write_text_atomic(path, log_text, err);
        if (st) goto cleanup;
        plot_curves(o->run_dir, epochs_json, o->log);
        res->epochs_done = epoch + 1;
        if (o->stop_after > 0 && epoch + 1 - start_epoch >= o->stop_after) break;
        if (o->patience > 0 && since_best >= o->patience) {
            if (o->log)
                fprintf(o->log, "train: early stop: no validation gain for %d epochs\n", since_best);
            break;
        }
    }
    res->best_recovery = info.best_metric;
    if (res->best_epoch == 0) res->best_epoch = info.epoch;
    res->samples_per_s = total_train_s > 0 ? total_train_n / total_train_s : 0.0;

cleanup:
    ap_batch_release(&pc.batch);
    free(pc.yhat);
    free(pc.dy);
    free(pc.cnn);
    free(pc.crop_off);
    free(pc.scratch);
    free(pc.ws);
    free(grad);
    free(folded);
    free(ck_params);
    free(ck_m);
    free(ck_v);
    free(ck_json);
    free(cfg_json);
    free(log_text);
    cJSON_Delete(log_root);
    free(paths);
    ap_adam_release(&adam);
    ap_pred_cuda_free(gpu);
    ap_predictor_free(pred);
    ap_dataset_free(ds);
    return st;
}
