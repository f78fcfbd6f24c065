/* The predictor dataset on synthetic traces written with the trace writer:
 * sample counts, window/target contents against the arrays the traces were
 * written from, candidate columns, the split, shuffling, the cache bound,
 * bad rows and refused inputs. */
#include <criterion/criterion.h>
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capture/trace.h"
#include "common/tolerance.h"
#include "helpers/synth_model.h"
#include "train/dataset.h"
#include "train/metrics.h"

enum { NL = 2, NH = 3, BS = 16, HIST = 8, SINK_B = 4, LOCAL_B = 4, MINC = 3 };

typedef struct {
    const char *id;
    int n_prompt, n_gen;
} spec;

/* Lengths 150..300 tokens; s4's 8 + 30 steps never reach 3 candidates. */
static const spec SPECS[] = {
    {"s0", 100, 80}, {"s1", 180, 60}, {"s2", 250, 50}, {"s3", 150, 40}, {"s4", 120, 30},
};
enum { NSPEC = sizeof SPECS / sizeof SPECS[0] };

typedef struct {
    int n_prompt, n_gen, n_pre, S, NB;
    int32_t *pos;
    float *bmax, *bsum; /* [NL][S][NH][NB] */
} gen_seq;

static double u01(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return (double)(x >> 11) / 9007199254740992.0;
}

/* Rows normalised, block_max <= block_sum, zeros past the causal length. */
static void gen_fill(gen_seq *g, const spec *sp, int history, uint64_t salt) {
    g->n_prompt = sp->n_prompt;
    g->n_gen = sp->n_gen;
    g->n_pre = history < sp->n_prompt ? history : sp->n_prompt;
    g->S = g->n_pre + sp->n_gen;
    int T = sp->n_prompt + sp->n_gen;
    g->NB = (T + BS - 1) / BS;
    g->pos = malloc((size_t)g->S * sizeof *g->pos);
    for (int s = 0; s < g->S; s++) g->pos[s] = sp->n_prompt - g->n_pre + s;
    size_t n = (size_t)NL * g->S * NH * g->NB;
    g->bmax = calloc(n, sizeof(float));
    g->bsum = calloc(n, sizeof(float));
    for (int l = 0; l < NL; l++)
        for (int s = 0; s < g->S; s++)
            for (int h = 0; h < NH; h++) {
                size_t off = (((size_t)l * g->S + s) * NH + h) * g->NB;
                int nv = g->pos[s] / BS + 1;
                double tot = 0;
                for (int j = 0; j < nv; j++) {
                    uint64_t key = salt * 1000003u + (((uint64_t)l * 4096 + s) * 8 + h) * 64 + j;
                    double w = 0.05 + u01(key);
                    if (u01(key ^ 0xABCDEFull) < 0.15) w *= 20; /* a few hot blocks */
                    g->bsum[off + j] = (float)w;
                    tot += w;
                }
                for (int j = 0; j < nv; j++) {
                    g->bsum[off + j] = (float)(g->bsum[off + j] / tot);
                    uint64_t key = salt * 7u + (((uint64_t)l * 4096 + s) * 8 + h) * 64 + j;
                    g->bmax[off + j] = g->bsum[off + j] * (float)(0.2 + 0.7 * u01(key));
                }
            }
}

static void gen_free(gen_seq *g) {
    free(g->pos);
    free(g->bmax);
    free(g->bsum);
}

/* Writes specs [first, first + n) into path; data kept in g[]. windows:
 * [NL] each layer's attention window (NULL: every layer full attention). */
static void write_trace_w(const char *path, int first, int n, int history, int block,
                          gen_seq *g, const int *windows) {
    ap_trace_meta m;
    memset(&m, 0, sizeof m);
    for (int l = 0; windows && l < NL; l++) m.layer_window[l] = windows[l];
    m.n_layer = NL;
    m.n_head = NH;
    m.n_head_kv = NH;
    m.head_dim = 4;
    m.block_size = block;
    m.history = history;
    snprintf(m.model_name, sizeof m.model_name, "synthetic");
    snprintf(m.attnpred_version, sizeof m.attnpred_version, "test");
    ap_trace_writer *w = NULL;
    ap_err err;
    cr_assert_eq(ap_trace_writer_open(path, &m, AP_TRACE_FORCE, &w, &err), AP_OK, "%s",
                 err.msg);
    for (int i = 0; i < n; i++) {
        const spec *sp = &SPECS[first + i];
        gen_fill(&g[i], sp, history, (uint64_t)(first + i + 1));
        int T = sp->n_prompt + sp->n_gen;
        int32_t *tok = calloc((size_t)T, sizeof *tok);
        ap_trace_seq s;
        memset(&s, 0, sizeof s);
        s.id = sp->id;
        s.n_prompt = sp->n_prompt;
        s.n_gen = sp->n_gen;
        s.tokens = tok;
        s.n_steps = g[i].S;
        s.step_pos = g[i].pos;
        s.n_blocks = g[i].NB;
        s.block_max = g[i].bmax;
        s.block_sum = g[i].bsum;
        cr_assert_eq(ap_trace_writer_add(w, &s, &err), AP_OK, "%s", err.msg);
        free(tok);
    }
    cr_assert_eq(ap_trace_writer_close(w, 1, &err), AP_OK, "%s", err.msg);
    ap_trace_writer_free(w);
}

static void write_trace(const char *path, int first, int n, int history, int block,
                        gen_seq *g) {
    write_trace_w(path, first, n, history, block, g, NULL);
}

static void base_config(ap_dataset_config *c) {
    ap_dataset_config_default(c);
    c->batch_size = 32;
    c->val_fraction = 0.4;
    c->seed = 7;
}

/* Independent of the library's closed form: count step by step. */
static long long expected_samples(const spec *sp) {
    long long n = 0;
    for (int t = 0; t < sp->n_gen; t++) {
        int q = sp->n_prompt + t;
        int w = (q + BS - 1) / BS - SINK_B - LOCAL_B;
        if (w >= MINC) n++;
    }
    return n * NL * NH;
}

static uint64_t ref_key(const ap_sample_ref *r) {
    return ((((uint64_t)r->file * 64 + (uint64_t)r->seq) * 8 + (uint64_t)r->layer) * 8 +
            (uint64_t)r->head) * 4096 + (uint64_t)r->t;
}

Test(dataset, sample_counts) {
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "ds_counts", ".h5");
    gen_seq g[NSPEC];
    write_trace(path, 0, NSPEC, HIST, BS, g);
    ap_dataset_config c;
    base_config(&c);
    ap_dataset *ds = NULL;
    ap_err err;
    const char *paths[] = {path};
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_stats st;
    ap_dataset_get_stats(ds, &st);
    long long tot = 0, bypass = 0;
    for (int i = 0; i < NSPEC; i++) {
        tot += expected_samples(&SPECS[i]);
        bypass += (long long)SPECS[i].n_gen * NL * NH - expected_samples(&SPECS[i]);
    }
    cr_assert_eq(st.n_samples_train + st.n_samples_val, tot);
    cr_assert_eq(st.n_bypass, bypass);
    cr_assert_eq(expected_samples(&SPECS[4]), 0, "s4 is meant to be all bypass");
    cr_assert_eq(st.n_seq_train + st.n_seq_val, NSPEC);
    cr_assert_eq(st.n_seq_val, 2); /* round(0.4 * 5) */
    cr_assert_eq(st.n_short_history, 0);
    cr_assert_eq(st.history, HIST);
    cr_assert_eq(st.n_full_layers, NL);
    /* largest W: s2 at its last step q = 299 -> ceil(299/16) - 8 = 11 */
    cr_assert_eq(st.max_width, 11);

    /* The iterators produce exactly these counts, each sample once. */
    long long seen[2] = {0, 0};
    for (int sp = 0; sp < 2; sp++) {
        ap_dataset_iter *it = NULL;
        cr_assert_eq(ap_dataset_iter_create(ds, (ap_split)sp, 0, 1, &it, &err), AP_OK);
        ap_batch b;
        cr_assert_eq(ap_batch_alloc(ds, &b, &err), AP_OK);
        for (;;) {
            cr_assert_eq(ap_dataset_iter_next(it, &b, &err), AP_OK, "%s", err.msg);
            if (b.n == 0) break;
            cr_assert_leq(b.n, c.batch_size);
            seen[sp] += b.n;
        }
        ap_batch_release(&b);
        ap_dataset_iter_free(it);
    }
    cr_assert_eq(seen[0], st.n_samples_train);
    cr_assert_eq(seen[1], st.n_samples_val);

    /* Layer filter: layer 0 dropped halves the counts. */
    int map[AP_DS_MAX_LAYERS] = {-1, 0};
    cr_assert_eq(ap_dataset_set_layer_groups(ds, map, NL, &err), AP_OK);
    ap_dataset_get_stats(ds, &st);
    cr_assert_eq((st.n_samples_train + st.n_samples_val) * 2, tot);
    ap_dataset_free(ds);
    for (int i = 0; i < NSPEC; i++) gen_free(&g[i]);
    unlink(path);
}

/* Every sample of every batch against the arrays the trace was written from. */
static void check_windows(int history, int local_b) {
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "ds_win", ".h5");
    gen_seq g[NSPEC];
    write_trace(path, 0, NSPEC, HIST, BS, g);
    ap_dataset_config c;
    base_config(&c);
    c.history = history;
    c.local_blocks = local_b;
    c.batch_size = 7;
    const int H = history ? history : HIST;
    ap_dataset *ds = NULL;
    ap_err err;
    const char *paths[] = {path};
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_iter *it = NULL;
    cr_assert_eq(ap_dataset_iter_create(ds, AP_SPLIT_ALL, 0, 1, &it, &err), AP_OK);
    ap_batch b;
    cr_assert_eq(ap_batch_alloc(ds, &b, &err), AP_OK);
    long n_zero_new_col = 0, n_nonzero = 0, n_pad_rows = 0, n_widths = 0, n_total = 0;
    int last_w = -1;
    for (;;) {
        cr_assert_eq(ap_dataset_iter_next(it, &b, &err), AP_OK, "%s", err.msg);
        if (b.n == 0) break;
        cr_assert_eq(b.H, H);
        if (b.W != last_w) n_widths++;
        last_w = b.W;
        for (int i = 0; i < b.n; i++) {
            const ap_sample_ref *r = &b.ref[i];
            const gen_seq *gs = &g[r->seq];
            cr_assert_eq(r->file, 0);
            cr_assert_eq(r->q, gs->n_prompt + r->t);
            int W = (r->q + BS - 1) / BS - SINK_B - local_b; /* history width - sink - local */
            cr_assert_eq(b.W, W, "seq %d t %d: W %d, expected %d", r->seq, r->t, b.W, W);
            cr_assert_geq(W, MINC);
            int step = gs->n_pre + r->t;
            cr_assert_eq(gs->pos[step], r->q);
            const float *x = b.x + (size_t)i * H * W;
            for (int row = 0; row < H; row++) {
                int src = step - H + row;
                for (int j = 0; j < W; j++) {
                    float v = x[row * W + j];
                    if (src < 0) {
                        cr_assert_eq(v, 0.0f);
                        if (j == 0) n_pad_rows++;
                        continue;
                    }
                    int blk = SINK_B + j;
                    size_t off = (((size_t)r->layer * gs->S + src) * NH + r->head) * gs->NB;
                    cr_assert_float_eq(v, gs->bmax[off + blk], AP_TOL_TRACE_ABS,
                                       "seq %d l %d h %d t %d row %d col %d", r->seq, r->layer,
                                       r->head, r->t, row, j);
                    if (blk > gs->pos[src] / BS) {
                        cr_assert_eq(v, 0.0f);
                        n_zero_new_col++;
                    } else {
                        n_nonzero += v > 0;
                    }
                }
            }
            size_t toff = (((size_t)r->layer * gs->S + step) * NH + r->head) * gs->NB;
            /* first block touching the local window (none without one) */
            int lb0 = local_b ? (r->q + 1 - local_b * BS) / BS : r->q / BS + 1;
            double fixed = 0, all = 0;
            for (int j = 0; j <= r->q / BS; j++) {
                if (j < SINK_B || j >= lb0) fixed += gs->bsum[toff + j];
                all += gs->bsum[toff + j];
            }
            double ysum_tot = 0;
            for (int j = 0; j < W; j++) {
                cr_assert_float_eq(b.y[i * W + j], gs->bmax[toff + SINK_B + j], AP_TOL_TRACE_ABS);
                float want = SINK_B + j >= lb0 ? 0.0f : gs->bsum[toff + SINK_B + j];
                cr_assert_float_eq(b.ysum[i * W + j], want, AP_TOL_TRACE_ABS);
                ysum_tot += b.ysum[i * W + j];
            }
            cr_assert_float_eq(b.mass_fixed[i], fixed, AP_TOL_KERNEL_REL);
            /* sink, candidates and local blocks partition the row (without a
             * local window the newest block can be outside all three) */
            if (local_b) cr_assert_float_eq(b.mass_fixed[i] + ysum_tot, all, 1e-5);
            n_total++;
        }
    }
    /* With H <= local tokens the newest block of a window is always inside
     * the excluded local blocks, so candidate columns are never past an old
     * row's causal length; with no local window they are. */
    if (local_b == 0)
        cr_assert_gt(n_zero_new_col, 0, "no window crossed a block boundary");
    else if (H <= local_b * BS)
        cr_assert_eq(n_zero_new_col, 0);
    cr_assert_gt(n_nonzero, 0);
    cr_assert_gt(n_widths, 3);
    ap_dataset_stats st;
    ap_dataset_get_stats(ds, &st);
    cr_assert_eq(n_total, st.n_samples_train + st.n_samples_val);
    if (H > HIST) {
        cr_assert_gt(n_pad_rows, 0);
        cr_assert_gt(st.n_short_history, 0);
    } else {
        cr_assert_eq(n_pad_rows, 0);
    }
    ap_batch_release(&b);
    ap_dataset_iter_free(it);
    ap_dataset_free(ds);
    for (int i = 0; i < NSPEC; i++) gen_free(&g[i]);
    unlink(path);
}

Test(dataset, window_contents) { check_windows(0, LOCAL_B); }
Test(dataset, window_longer_than_recorded_prefill) { check_windows(12, LOCAL_B); }
Test(dataset, window_zero_columns_without_local) { check_windows(0, 0); }

/* Hand-extracted single sample: s1 (n_prompt 180), layer 1, head 2, t = 0.
 * q = 180, history width ceil(180/16) = 12, candidates blocks 4..7 (W = 4);
 * x rows = recorded steps 0..7 (positions 172..179), all 12 blocks wide. */
Test(dataset, first_decode_step_by_hand) {
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "ds_hand", ".h5");
    gen_seq g[NSPEC];
    write_trace(path, 0, NSPEC, HIST, BS, g);
    ap_dataset_config c;
    base_config(&c);
    c.batch_size = 1000;
    int map[AP_DS_MAX_LAYERS] = {-1, 0};
    memcpy(c.layer_group, map, sizeof map);
    ap_dataset *ds = NULL;
    ap_err err;
    const char *paths[] = {path};
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_iter *it = NULL;
    cr_assert_eq(ap_dataset_iter_create(ds, AP_SPLIT_ALL, 0, 0, &it, &err), AP_OK);
    ap_batch b;
    cr_assert_eq(ap_batch_alloc(ds, &b, &err), AP_OK);
    int found = 0;
    while (!found) {
        cr_assert_eq(ap_dataset_iter_next(it, &b, &err), AP_OK);
        cr_assert_gt(b.n, 0, "sample not produced");
        for (int i = 0; i < b.n; i++) {
            const ap_sample_ref *r = &b.ref[i];
            cr_assert_eq(r->layer, 1);
            if (r->seq != 1 || r->head != 2 || r->t != 0) continue;
            found = 1;
            cr_assert_eq(b.W, 4);
            const gen_seq *gs = &g[1];
            for (int row = 0; row < HIST; row++)
                for (int j = 0; j < 4; j++) {
                    /* layer 1, step row, head 2, block 4 + j */
                    size_t idx = (((size_t)1 * gs->S + row) * NH + 2) * gs->NB + 4 + j;
                    cr_assert_eq(b.x[(size_t)i * HIST * 4 + row * 4 + j], gs->bmax[idx]);
                }
            /* target = step 8 (position 180); local window keys 117..180 ->
             * blocks 7..11, so candidate block 7 (j = 3) adds nothing */
            size_t t8 = (((size_t)1 * gs->S + 8) * NH + 2) * gs->NB;
            cr_assert_eq(b.ysum[i * 4 + 3], 0.0f);
            cr_assert_eq(b.ysum[i * 4 + 2], gs->bsum[t8 + 6]);
            double fixed = 0;
            for (int j = 0; j < 4; j++) fixed += gs->bsum[t8 + j];
            for (int j = 7; j <= 11; j++) fixed += gs->bsum[t8 + j];
            cr_assert_float_eq(b.mass_fixed[i], fixed, AP_TOL_KERNEL_REL);
        }
    }
    ap_batch_release(&b);
    ap_dataset_iter_free(it);
    ap_dataset_free(ds);
    for (int i = 0; i < NSPEC; i++) gen_free(&g[i]);
    unlink(path);
}

static void splits_of(const char *const *paths, int n_paths, uint64_t seed, int *out, int n) {
    ap_dataset_config c;
    base_config(&c);
    c.seed = seed;
    ap_dataset *ds = NULL;
    ap_err err;
    cr_assert_eq(ap_dataset_open(paths, n_paths, &c, &ds, &err), AP_OK, "%s", err.msg);
    int k = 0;
    for (int f = 0; f < n_paths; f++)
        for (int s = 0; ap_dataset_seq_split(ds, f, s) >= 0 && k < n; s++) out[k++] = ap_dataset_seq_split(ds, f, s);
    cr_assert_eq(k, n);
    /* no sequence in both: iterating a split yields only its sequences */
    for (int sp = 0; sp < 2; sp++) {
        ap_dataset_iter *it = NULL;
        cr_assert_eq(ap_dataset_iter_create(ds, (ap_split)sp, 3, 1, &it, &err), AP_OK);
        ap_batch b;
        cr_assert_eq(ap_batch_alloc(ds, &b, &err), AP_OK);
        for (;;) {
            cr_assert_eq(ap_dataset_iter_next(it, &b, &err), AP_OK);
            if (b.n == 0) break;
            for (int i = 0; i < b.n; i++)
                cr_assert_eq(ap_dataset_seq_split(ds, b.ref[i].file, b.ref[i].seq), sp);
        }
        ap_batch_release(&b);
        ap_dataset_iter_free(it);
    }
    ap_dataset_free(ds);
}

Test(dataset, split_by_sequence_over_files) {
    char p0[512], p1[512];
    ap_synth_tmp_path(p0, sizeof p0, "ds_split0", ".h5");
    ap_synth_tmp_path(p1, sizeof p1, "ds_split1", ".h5");
    gen_seq g[NSPEC];
    write_trace(p0, 0, 3, HIST, BS, g);
    write_trace(p1, 3, 2, HIST, BS, g + 3);
    const char *paths[] = {p0, p1};
    int a[NSPEC], b[NSPEC], c[NSPEC];
    splits_of(paths, 2, 7, a, NSPEC);
    splits_of(paths, 2, 7, b, NSPEC);
    int n_val = 0;
    for (int i = 0; i < NSPEC; i++) {
        cr_assert_eq(a[i], b[i], "split not deterministic for one seed");
        n_val += a[i] == AP_SPLIT_VAL;
    }
    cr_assert_eq(n_val, 2);
    int differs = 0;
    for (uint64_t seed = 8; seed < 16 && !differs; seed++) {
        splits_of(paths, 2, seed, c, NSPEC);
        for (int i = 0; i < NSPEC; i++) differs |= c[i] != a[i];
    }
    cr_assert(differs, "no other seed changed the split");
    for (int i = 0; i < NSPEC; i++) gen_free(&g[i]);
    unlink(p0);
    unlink(p1);
}

/* Checksum of the batch stream, and the set of samples seen. */
static void run_epoch(ap_dataset *ds, int epoch, int shuffle, uint64_t *order_hash,
                      uint64_t *set_hash, double *xsum, long long *n) {
    ap_err err;
    ap_dataset_iter *it = NULL;
    cr_assert_eq(ap_dataset_iter_create(ds, AP_SPLIT_TRAIN, epoch, shuffle, &it, &err), AP_OK);
    ap_batch b;
    cr_assert_eq(ap_batch_alloc(ds, &b, &err), AP_OK);
    *order_hash = 1469598103934665603ull;
    *set_hash = 0;
    *xsum = 0;
    *n = 0;
    for (;;) {
        cr_assert_eq(ap_dataset_iter_next(it, &b, &err), AP_OK, "%s", err.msg);
        if (b.n == 0) break;
        for (int i = 0; i < b.n; i++) {
            uint64_t k = ref_key(&b.ref[i]);
            *order_hash = (*order_hash ^ k) * 1099511628211ull;
            uint64_t z = k * 0x9E3779B97F4A7C15ull;
            *set_hash += z ^ (z >> 29);
            for (int j = 0; j < b.H * b.W; j++) *xsum += b.x[(size_t)i * b.H * b.W + j] * (1 + j % 7);
        }
        *n += b.n;
    }
    ap_batch_release(&b);
    ap_dataset_iter_free(it);
}

Test(dataset, shuffle_reproducible_and_cache_bounded) {
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "ds_shuf", ".h5");
    gen_seq g[NSPEC];
    write_trace(path, 0, NSPEC, HIST, BS, g);
    const char *paths[] = {path};
    ap_dataset_config c;
    base_config(&c);
    c.val_fraction = 0.2;
    ap_dataset *ds = NULL;
    ap_err err;
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    uint64_t o1, s1, o2, s2, o3, s3, o4, s4;
    double x1, x2, x3, x4;
    long long n1, n2, n3, n4;
    run_epoch(ds, 0, 1, &o1, &s1, &x1, &n1);
    run_epoch(ds, 0, 1, &o2, &s2, &x2, &n2);
    run_epoch(ds, 1, 1, &o3, &s3, &x3, &n3);
    run_epoch(ds, 0, 0, &o4, &s4, &x4, &n4);
    cr_assert_eq(o1, o2, "same epoch, different order");
    cr_assert_neq(o1, o3, "another epoch gave the same order");
    cr_assert_neq(o1, o4, "shuffled order equals the plain order");
    cr_assert_eq(s1, s3);
    cr_assert_eq(s1, s4);
    cr_assert_eq(n1, n3);
    cr_assert_float_eq(x1, x4, 1e-9 * fabs(x4));
    ap_dataset_stats st;
    ap_dataset_get_stats(ds, &st);
    ap_dataset_free(ds);

    /* A cap of about two chunks: evictions happen, the cap holds, the data
     * is the same. */
    size_t chunk = st.max_chunk_bytes;
    c.cache_mb = 2.2 * (double)chunk / (1024.0 * 1024.0);
    c.pool_chunks = 4;
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    uint64_t o5, s5;
    double x5;
    long long n5;
    long long train_chunks = 0;
    for (int i = 0; i < NSPEC; i++)
        if (ap_dataset_seq_split(ds, 0, i) == AP_SPLIT_TRAIN && expected_samples(&SPECS[i]) > 0)
            train_chunks += NL;
    cr_assert_geq(train_chunks, 4, "the cap must force evictions");
    run_epoch(ds, 0, 1, &o5, &s5, &x5, &n5);
    ap_dataset_get_stats(ds, &st);
    /* every chunk read exactly once in an epoch despite the small cache */
    cr_assert_eq(st.cache_misses, train_chunks);
    run_epoch(ds, 1, 1, &o5, &s5, &x5, &n5);
    ap_dataset_get_stats(ds, &st);
    cr_assert_gt(st.cache_misses, train_chunks + 1);
    cr_assert_leq(st.cache_peak_bytes, st.cache_cap_bytes);
    cr_assert_leq(st.cache_bytes, st.cache_cap_bytes);
    cr_assert_gt(st.cache_peak_bytes, 0);
    cr_assert_eq(s5, s1, "small cache changed the sample set");
    cr_assert_float_eq(x5, x3, 1e-9 * fabs(x3));
    ap_dataset_free(ds);

    /* below one chunk: refused */
    c.cache_mb = 0.5 * (double)chunk / (1024.0 * 1024.0);
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_ERR_RANGE);
    cr_assert_not_null(strstr(err.msg, "cache"), "%s", err.msg);
    cr_assert_null(ds);
    for (int i = 0; i < NSPEC; i++) gen_free(&g[i]);
    unlink(path);
}

/* Overwrite one float of a trace dataset in place (the writer refuses bad
 * rows, so corrupt files are made this way). */
static void poke(const char *path, const char *seq, int layer, const char *name, int step,
                 int head, int block, float v) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    char p[256];
    snprintf(p, sizeof p, "/sequences/%s/layers/%d/%s", seq, layer, name);
    hid_t d = H5Dopen2(f, p, H5P_DEFAULT);
    cr_assert_geq(d, 0, "%s", p);
    hid_t fs = H5Dget_space(d);
    hsize_t start[3] = {(hsize_t)step, (hsize_t)head, (hsize_t)block}, cnt[3] = {1, 1, 1};
    cr_assert_geq(H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL), 0);
    hid_t ms = H5Screate_simple(3, cnt, NULL);
    cr_assert_geq(H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, &v), 0);
    H5Sclose(ms);
    H5Sclose(fs);
    H5Dclose(d);
    H5Fclose(f);
}

Test(dataset, bad_rows_counted_and_skipped) {
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "ds_nan", ".h5");
    gen_seq g[NSPEC];
    write_trace(path, 0, NSPEC, HIST, BS, g);
    /* s1 (t0 = 0, 60 steps), layer 1, head 2, recorded step 18 = decode t 10:
     * target of t = 10 and in the window of t = 11..18 -> 9 samples. */
    poke(path, "s1", 1, "block_max", 18, 2, 0, NAN);
    /* s2 (t0 = 0), layer 0, head 0, step 28 (t = 20): non-zero past the causal
     * length -> malformed, t = 20..28 -> 9 samples. */
    poke(path, "s2", 0, "block_sum", 28, 0, g[2].NB - 1, 0.5f);
    const char *paths[] = {path};
    ap_dataset_config c;
    base_config(&c);
    ap_dataset *ds = NULL;
    ap_err err;
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_iter *it = NULL;
    cr_assert_eq(ap_dataset_iter_create(ds, AP_SPLIT_ALL, 0, 1, &it, &err), AP_OK);
    ap_batch b;
    cr_assert_eq(ap_batch_alloc(ds, &b, &err), AP_OK);
    long long n = 0;
    for (;;) {
        cr_assert_eq(ap_dataset_iter_next(it, &b, &err), AP_OK, "%s", err.msg);
        if (b.n == 0) break;
        for (int i = 0; i < b.n * b.H * b.W; i++) cr_assert(isfinite(b.x[i]));
        for (int i = 0; i < b.n; i++) {
            const ap_sample_ref *r = &b.ref[i];
            cr_assert(!(r->seq == 1 && r->layer == 1 && r->head == 2 && r->t >= 10 && r->t <= 18));
            cr_assert(!(r->seq == 2 && r->layer == 0 && r->head == 0 && r->t >= 20 && r->t <= 28));
        }
        n += b.n;
    }
    ap_iter_stats is;
    ap_dataset_iter_get_stats(it, &is);
    cr_assert_eq(is.n_skipped_nonfinite, 9);
    cr_assert_eq(is.n_skipped_malformed, 9);
    ap_dataset_stats st;
    ap_dataset_get_stats(ds, &st);
    cr_assert_eq(n, st.n_samples_train + st.n_samples_val - 18);
    cr_assert_eq(is.n_samples, n);
    ap_batch_release(&b);
    ap_dataset_iter_free(it);
    ap_dataset_free(ds);
    for (int i = 0; i < NSPEC; i++) gen_free(&g[i]);
    unlink(path);
}

Test(dataset, refuses_wrong_version_and_block_size) {
    char p0[512], p1[512], p2[512];
    ap_synth_tmp_path(p0, sizeof p0, "ds_v99", ".h5");
    ap_synth_tmp_path(p1, sizeof p1, "ds_ok", ".h5");
    ap_synth_tmp_path(p2, sizeof p2, "ds_h12", ".h5");
    gen_seq g[3];
    write_trace(p0, 0, 1, HIST, BS, g);
    write_trace(p1, 1, 1, HIST, BS, g + 1);
    write_trace(p2, 2, 1, 12, BS, g + 2);
    /* format_version 99 in the root attribute */
    hid_t f = H5Fopen(p0, H5F_ACC_RDWR, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    cr_assert_geq(a, 0);
    int v = 99;
    cr_assert_geq(H5Awrite(a, H5T_NATIVE_INT, &v), 0);
    H5Aclose(a);
    H5Fclose(f);
    ap_dataset_config c;
    base_config(&c);
    ap_dataset *ds = NULL;
    ap_err err;
    const char *both[] = {p1, p0};
    cr_assert_eq(ap_dataset_open(both, 2, &c, &ds, &err), AP_ERR_FORMAT);
    cr_assert_null(ds);
    cr_assert_not_null(strstr(err.msg, "format_version 99"), "%s", err.msg);
    cr_assert_not_null(strstr(err.msg, "format_version 1"), "%s", err.msg);

    const char *one[] = {p1};
    c.block_size = 32;
    cr_assert_eq(ap_dataset_open(one, 1, &c, &ds, &err), AP_ERR_ARG);
    cr_assert_not_null(strstr(err.msg, "block_size is 16"), "%s", err.msg);
    cr_assert_not_null(strstr(err.msg, "block_size 32"), "%s", err.msg);
    c.block_size = 16;
    cr_assert_eq(ap_dataset_open(one, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_free(ds);
    ds = NULL;

    /* traces of different history cannot be mixed */
    const char *mixed[] = {p1, p2};
    cr_assert_eq(ap_dataset_open(mixed, 2, &c, &ds, &err), AP_ERR_ARG);
    cr_assert_not_null(strstr(err.msg, "history"), "%s", err.msg);
    cr_assert_null(ds);

    /* bad options */
    base_config(&c);
    c.val_fraction = 1.0;
    cr_assert_eq(ap_dataset_open(one, 1, &c, &ds, &err), AP_ERR_ARG);
    for (int i = 0; i < 3; i++) gen_free(&g[i]);
    unlink(p0);
    unlink(p1);
    unlink(p2);
}

/* A sequence whose recorded steps are not the contiguous layout is left out
 * and counted, not fatal. */
Test(dataset, inconsistent_layout_left_out) {
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "ds_layout", ".h5");
    gen_seq g[2];
    write_trace(path, 1, 2, HIST, BS, g); /* s1, s2 */
    /* rewrite s1's step_pos with a gap between prefill and decode */
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "/sequences/s1/step_pos", H5P_DEFAULT);
    cr_assert_geq(d, 0);
    int32_t *pos = malloc((size_t)g[0].S * sizeof *pos);
    memcpy(pos, g[0].pos, (size_t)g[0].S * sizeof *pos);
    pos[0] -= 5; /* first prefill row from earlier in the prompt */
    cr_assert_geq(H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, pos), 0);
    free(pos);
    H5Dclose(d);
    H5Fclose(f);
    const char *paths[] = {path};
    ap_dataset_config c;
    base_config(&c);
    ap_dataset *ds = NULL;
    ap_err err;
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_stats st;
    ap_dataset_get_stats(ds, &st);
    cr_assert_eq(st.n_seq_bad, 1);
    cr_assert_eq(st.n_seq_train + st.n_seq_val, 1);
    cr_assert_eq(ap_dataset_seq_split(ds, 0, 0), -1);
    cr_assert_eq(st.n_samples_train + st.n_samples_val, expected_samples(&SPECS[2]));
    ap_dataset_free(ds);
    for (int i = 0; i < 2; i++) gen_free(&g[i]);
    unlink(path);
}

/* The real smoke trace, when present: every window finite, fixed + candidate
 * mass = 1, and the batch-filling rate. */
Test(dataset, smoke_trace_if_present) {
    const char *path = getenv("AP_SMOKE_TRACE");
    if (!path) path = "/tmp/smoke.h5";
    if (access(path, R_OK) != 0) cr_skip_test("no %s", path);
    const char *paths[] = {path};
    ap_dataset_config c;
    ap_dataset_config_default(&c);
    c.block_size = 16;
    ap_dataset *ds = NULL;
    ap_err err;
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_iter *it = NULL;
    cr_assert_eq(ap_dataset_iter_create(ds, AP_SPLIT_ALL, 0, 1, &it, &err), AP_OK);
    ap_batch b;
    cr_assert_eq(ap_batch_alloc(ds, &b, &err), AP_OK);
    for (;;) {
        cr_assert_eq(ap_dataset_iter_next(it, &b, &err), AP_OK, "%s", err.msg);
        if (b.n == 0) break;
        for (int i = 0; i < b.n; i++) {
            double m = b.mass_fixed[i];
            for (int j = 0; j < b.W; j++) m += b.ysum[i * b.W + j];
            cr_assert_float_eq(m, 1.0, 1e-3);
        }
    }
    ap_batch_release(&b);
    ap_dataset_iter_free(it);
    ap_dataset_free(ds);
}

/* ------------------------------------------------------------ sparse rows -- */

/* One sequence, one layer, one head, block 4, history 2, n_prompt 20, 8
 * generated: recorded steps 0..9 at positions 18..27. Every block holds its
 * mass in one key, so block_max = block_sum and a sparse row is simply the
 * kept entries divided by their sum. */
enum { HB = 4, HNB = 7, HS = 10 };
static const float HAND[HS][HNB] = {
    {0.3f, 0.1f, 0.2f, 0.1f, 0.3f, 0, 0},          /* p18, prefill */
    {0.3f, 0.25f, 0.05f, 0.2f, 0.2f, 0, 0},        /* p19, prefill */
    {0.2f, 0.1f, 0.3f, 0.1f, 0.2f, 0.1f, 0},       /* p20, t0 */
    {0.25f, 0.05f, 0.4f, 0.1f, 0.1f, 0.1f, 0},     /* p21, t1 */
    {0.2f, 0.1f, 0.1f, 0.3f, 0.2f, 0.1f, 0},       /* p22, t2 */
    {0.1f, 0.2f, 0.2f, 0.2f, 0.2f, 0.1f, 0},       /* p23, t3 */
    {0.1f, 0.1f, 0.1f, 0.1f, 0.2f, 0.2f, 0.2f},    /* p24, t4 */
    {0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.25f, 0.25f},  /* p25, t5 */
    {0.2f, 0.1f, 0.1f, 0.1f, 0.1f, 0.2f, 0.2f},    /* p26, t6 */
    {0.2f, 0.1f, 0.1f, 0.1f, 0.1f, 0.2f, 0.2f},    /* p27, t7 */
};

static void write_hand_trace(const char *path) {
    ap_trace_meta m;
    memset(&m, 0, sizeof m);
    m.n_layer = 1;
    m.n_head = 1;
    m.n_head_kv = 1;
    m.head_dim = 4;
    m.block_size = HB;
    m.history = 2;
    snprintf(m.model_name, sizeof m.model_name, "hand");
    snprintf(m.attnpred_version, sizeof m.attnpred_version, "test");
    ap_trace_writer *w = NULL;
    ap_err err;
    cr_assert_eq(ap_trace_writer_open(path, &m, AP_TRACE_FORCE, &w, &err), AP_OK, "%s", err.msg);
    int32_t tok[28] = {0}, pos[HS];
    for (int s = 0; s < HS; s++) pos[s] = 18 + s;
    ap_trace_seq s;
    memset(&s, 0, sizeof s);
    s.id = "hand";
    s.n_prompt = 20;
    s.n_gen = 8;
    s.tokens = tok;
    s.n_steps = HS;
    s.step_pos = pos;
    s.n_blocks = HNB;
    s.block_max = &HAND[0][0];
    s.block_sum = &HAND[0][0];
    cr_assert_eq(ap_trace_writer_add(w, &s, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_trace_writer_close(w, 1, &err), AP_OK, "%s", err.msg);
    ap_trace_writer_free(w);
}

static void hand_config(ap_dataset_config *c, ap_rows_kind rows, int calib) {
    ap_dataset_config_default(c);
    c->sink_blocks = 1;
    c->local_blocks = 1;      /* local window = 4 tokens */
    c->val_fraction = 0.0;
    c->batch_size = 64;
    c->rows = rows;
    c->sparse_budget = 16;    /* sink 4 + local 4 + 2 blocks of 4 */
    c->calib = calib;
}

/* x of the sample at decode step t (H = 2 rows of W columns), from an
 * unshuffled pass; returns W. */
static int hand_window(ap_dataset *ds, ap_rows_kind rows, int t, float *x, float *y) {
    ap_err err;
    ap_dataset_iter *it = NULL;
    cr_assert_eq(ap_dataset_iter_create(ds, AP_SPLIT_ALL, 0, 0, &it, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_dataset_iter_set_rows(it, rows, &err), AP_OK, "%s", err.msg);
    ap_batch b;
    cr_assert_eq(ap_batch_alloc(ds, &b, &err), AP_OK);
    int W = -1;
    for (;;) {
        cr_assert_eq(ap_dataset_iter_next(it, &b, &err), AP_OK, "%s", err.msg);
        if (b.n == 0) break;
        for (int i = 0; i < b.n; i++)
            if (b.ref[i].t == t) {
                W = b.W;
                memcpy(x, b.x + (size_t)i * 2 * W, (size_t)2 * W * sizeof(float));
                memcpy(y, b.y + (size_t)i * W, (size_t)W * sizeof(float));
            }
    }
    ap_batch_release(&b);
    ap_dataset_iter_free(it);
    cr_assert_gt(W, 0, "no sample at t %d", t);
    return W;
}

static void expect_row(const float *got, const double *want, int W, const char *what) {
    for (int j = 0; j < W; j++)
        cr_assert_float_eq(got[j], want[j], AP_TOL_KERNEL_REL, "%s column %d: %g, expected %g",
                           what, j, got[j], want[j]);
}

/* Worked by hand, calib 3, k = 2, candidates [1, ceil(q/4) - 1):
 * t0 (q 20): newest row p19 (dense) over blocks 1..3 = .25 .05 .2 -> keep 1, 3;
 *   kept {0,1,3} + local {4,5}: mass .7 -> 2/7 1/7 0 1/7 2/7 1/7.
 * t1 (q 21): candidates 1..4 of that sparse row = 1/7 0 1/7 2/7 -> 4, then 1
 *   (tie with 3 to the lower index); kept {0,1,4,5} (dense history would have
 *   picked 2 and 4), mass .5 -> .5 .1 0 0 .2 .2.
 * t2: (2 + 1) % 3 = 0, the dense row.
 * t3 (q 23): from the dense p22 row: blocks 3, 4; local {5}; mass .6.
 * t4 (q 24): from t3's sparse row 0 0 1/3 1/3: blocks 3, 4; local {5,6}; mass .8.
 * t5: dense again. */
Test(dataset, sparse_rows_by_hand) {
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "ds_sparse_hand", ".h5");
    write_hand_trace(path);
    const char *paths[] = {path};
    ap_dataset_config c;
    hand_config(&c, AP_ROWS_SPARSE, 3);
    ap_dataset *ds = NULL;
    ap_err err;
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    float x[2 * HNB], y[HNB], xd[2 * HNB], yd[HNB];

    /* t2 (q 22, W 4): rows t0, t1, both sparse; target = dense t2 row */
    int W = hand_window(ds, AP_ROWS_SPARSE, 2, x, y);
    cr_assert_eq(W, 4);
    expect_row(x, (double[]){1.0 / 7, 0, 1.0 / 7, 2.0 / 7}, 4, "t2 row t0");
    expect_row(x + 4, (double[]){0.1, 0, 0, 0.2}, 4, "t2 row t1");
    expect_row(y, (double[]){0.1, 0.1, 0.3, 0.2}, 4, "t2 target");
    /* the same sample with dense rows: the true rows, the same target */
    cr_assert_eq(hand_window(ds, AP_ROWS_DENSE, 2, xd, yd), 4);
    expect_row(xd, (double[]){0.1, 0.3, 0.1, 0.2}, 4, "t2 dense row t0");
    expect_row(xd + 4, (double[]){0.05, 0.4, 0.1, 0.1}, 4, "t2 dense row t1");
    cr_assert_eq(memcmp(y, yd, 4 * sizeof(float)), 0, "targets must stay dense");

    /* t4 (q 24, W 4): calibration row t2 (dense), then t3 sparse */
    W = hand_window(ds, AP_ROWS_SPARSE, 4, x, y);
    cr_assert_eq(W, 4);
    expect_row(x, (double[]){0.1, 0.1, 0.3, 0.2}, 4, "t4 row t2");
    expect_row(x + 4, (double[]){0, 0, 1.0 / 3, 1.0 / 3}, 4, "t4 row t3");

    /* t5 (q 25, W 5): rows t3 and t4, sparse */
    W = hand_window(ds, AP_ROWS_SPARSE, 5, x, y);
    cr_assert_eq(W, 5);
    expect_row(x, (double[]){0, 0, 1.0 / 3, 1.0 / 3, 1.0 / 6}, 5, "t5 row t3");
    expect_row(x + 5, (double[]){0, 0, 0.125, 0.25, 0.25}, 5, "t5 row t4");
    ap_dataset_free(ds);

    /* calib 1 = every row dense: the sparse windows are the dense ones */
    hand_config(&c, AP_ROWS_SPARSE, 1);
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    for (int t = 0; t < 8; t++) {
        int w1 = hand_window(ds, AP_ROWS_SPARSE, t, x, y);
        int w2 = hand_window(ds, AP_ROWS_DENSE, t, xd, yd);
        cr_assert_eq(w1, w2);
        cr_assert_eq(memcmp(x, xd, (size_t)2 * w1 * sizeof(float)), 0, "t %d", t);
    }
    ap_dataset_free(ds);

    /* sparse rows are only served by a dataset that built them */
    hand_config(&c, AP_ROWS_DENSE, 5);
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_iter *it = NULL;
    cr_assert_eq(ap_dataset_iter_create(ds, AP_SPLIT_ALL, 0, 0, &it, &err), AP_OK);
    cr_assert_eq(ap_dataset_iter_set_rows(it, AP_ROWS_SPARSE, &err), AP_ERR_ARG);
    cr_assert_not_null(strstr(err.msg, "sparse"), "%s", err.msg);
    ap_dataset_iter_free(it);
    ap_dataset_free(ds);
    hand_config(&c, AP_ROWS_SPARSE, -1);
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_ERR_ARG);
    cr_assert_null(ds);
    unlink(path);
}

/* On the random traces: the dense iterator of a sparse dataset equals a
 * dense dataset; every sparse window row is the true row on some blocks
 * times one factor >= 1 (renormalised), zero elsewhere; and it differs from
 * the dense windows somewhere. */
Test(dataset, sparse_rows_are_renormalised_restrictions) {
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "ds_sparse_rand", ".h5");
    gen_seq g[NSPEC];
    write_trace(path, 0, NSPEC, HIST, BS, g);
    const char *paths[] = {path};
    ap_dataset_config cd, cs;
    base_config(&cd);
    cd.batch_size = 1000;
    cs = cd;
    cs.rows = AP_ROWS_SPARSE;
    cs.sparse_budget = 128 + 2 * BS; /* k = 2 */
    ap_dataset *dd = NULL, *dsp = NULL;
    ap_err err;
    cr_assert_eq(ap_dataset_open(paths, 1, &cd, &dd, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_dataset_open(paths, 1, &cs, &dsp, &err), AP_OK, "%s", err.msg);
    ap_dataset_iter *a = NULL, *b = NULL, *s = NULL;
    cr_assert_eq(ap_dataset_iter_create(dd, AP_SPLIT_ALL, 0, 0, &a, &err), AP_OK);
    cr_assert_eq(ap_dataset_iter_create(dsp, AP_SPLIT_ALL, 0, 0, &b, &err), AP_OK);
    cr_assert_eq(ap_dataset_iter_set_rows(b, AP_ROWS_DENSE, &err), AP_OK);
    cr_assert_eq(ap_dataset_iter_create(dsp, AP_SPLIT_ALL, 0, 0, &s, &err), AP_OK);
    ap_batch ba, bb, bs;
    cr_assert_eq(ap_batch_alloc(dd, &ba, &err), AP_OK);
    cr_assert_eq(ap_batch_alloc(dsp, &bb, &err), AP_OK);
    cr_assert_eq(ap_batch_alloc(dsp, &bs, &err), AP_OK);
    long n_rows_sparse = 0, n_rows_equal = 0;
    for (;;) {
        cr_assert_eq(ap_dataset_iter_next(a, &ba, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ap_dataset_iter_next(b, &bb, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ap_dataset_iter_next(s, &bs, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ba.n, bb.n);
        cr_assert_eq(ba.n, bs.n);
        if (ba.n == 0) break;
        size_t nx = (size_t)ba.n * ba.H * ba.W;
        cr_assert_eq(memcmp(ba.x, bb.x, nx * sizeof(float)), 0);
        cr_assert_eq(memcmp(ba.y, bs.y, (size_t)ba.n * ba.W * sizeof(float)), 0);
        cr_assert_eq(memcmp(ba.ysum, bs.ysum, (size_t)ba.n * ba.W * sizeof(float)), 0);
        for (int i = 0; i < ba.n; i++)
            for (int r = 0; r < ba.H; r++) {
                const float *xd = ba.x + ((size_t)i * ba.H + r) * ba.W;
                const float *xs = bs.x + ((size_t)i * ba.H + r) * ba.W;
                double f = 0.0;
                int nz = 0, same = 1;
                for (int j = 0; j < ba.W; j++) {
                    same &= xd[j] == xs[j];
                    if (xs[j] == 0.0f) continue;
                    nz++;
                    double fj = (double)xs[j] / xd[j];
                    if (f == 0.0) f = fj;
                    cr_assert_float_eq(fj, f, AP_TOL_KERNEL_REL * f);
                }
                if (nz) cr_assert_geq(f, 1.0 - AP_TOL_KERNEL_REL);
                n_rows_equal += same;
                n_rows_sparse += !same;
            }
    }
    cr_assert_gt(n_rows_sparse, 0);
    cr_assert_gt(n_rows_equal, 0, "prefill and calibration rows stay dense");
    ap_batch_release(&ba);
    ap_batch_release(&bb);
    ap_batch_release(&bs);
    ap_dataset_iter_free(a);
    ap_dataset_iter_free(b);
    ap_dataset_iter_free(s);
    ap_dataset_free(dd);
    ap_dataset_free(dsp);
    for (int i = 0; i < NSPEC; i++) gen_free(&g[i]);
    unlink(path);
}

/* Several sparse budgets: every (sequence, layer) chunk builds its rows at
 * one of them (drawn by a hash of the seed and the chunk), so each chunk's
 * windows equal those of a dataset with that budget alone, and across chunks
 * both budgets occur. */
Test(dataset, sparse_budget_drawn_per_chunk) {
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "ds_sparse_mix", ".h5");
    gen_seq g[NSPEC];
    write_trace(path, 0, NSPEC, HIST, BS, g);
    const char *paths[] = {path};
    ap_dataset_config c1, c2, cm;
    base_config(&c1);
    c1.batch_size = 1000;
    c1.rows = AP_ROWS_SPARSE;
    c2 = cm = c1;
    c1.sparse_budget = 128 + 1 * BS; /* k = 1 */
    c2.sparse_budget = 128 + 3 * BS; /* k = 3 */
    cm.n_sparse_budgets = 2;
    cm.sparse_budgets[0] = c1.sparse_budget;
    cm.sparse_budgets[1] = c2.sparse_budget;
    ap_dataset *d1 = NULL, *d2 = NULL, *dm = NULL;
    ap_err err;
    cr_assert_eq(ap_dataset_open(paths, 1, &c1, &d1, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_dataset_open(paths, 1, &c2, &d2, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_dataset_open(paths, 1, &cm, &dm, &err), AP_OK, "%s", err.msg);
    ap_dataset_iter *i1 = NULL, *i2 = NULL, *im = NULL;
    cr_assert_eq(ap_dataset_iter_create(d1, AP_SPLIT_ALL, 0, 0, &i1, &err), AP_OK);
    cr_assert_eq(ap_dataset_iter_create(d2, AP_SPLIT_ALL, 0, 0, &i2, &err), AP_OK);
    cr_assert_eq(ap_dataset_iter_create(dm, AP_SPLIT_ALL, 0, 0, &im, &err), AP_OK);
    ap_batch b1, b2, bm;
    cr_assert_eq(ap_batch_alloc(d1, &b1, &err), AP_OK);
    cr_assert_eq(ap_batch_alloc(d2, &b2, &err), AP_OK);
    cr_assert_eq(ap_batch_alloc(dm, &bm, &err), AP_OK);
    /* which budget each (sequence, layer) chunk used: 0 unknown, 1, 2 */
    int which[NSPEC][NL];
    memset(which, 0, sizeof which);
    int n_differ = 0;
    for (;;) {
        cr_assert_eq(ap_dataset_iter_next(i1, &b1, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ap_dataset_iter_next(i2, &b2, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ap_dataset_iter_next(im, &bm, &err), AP_OK, "%s", err.msg);
        cr_assert_eq(bm.n, b1.n);
        cr_assert_eq(bm.n, b2.n);
        if (bm.n == 0) break;
        size_t one = (size_t)bm.H * bm.W;
        for (int i = 0; i < bm.n; i++) {
            const float *xm = bm.x + i * one;
            int is1 = !memcmp(xm, b1.x + i * one, one * sizeof(float));
            int is2 = !memcmp(xm, b2.x + i * one, one * sizeof(float));
            cr_assert(is1 || is2, "a window matches neither budget's");
            n_differ += is1 != is2;
            int *w = &which[bm.ref[i].seq][bm.ref[i].layer];
            if (is1 != is2) {
                int k = is1 ? 1 : 2;
                cr_assert(*w == 0 || *w == k, "one chunk mixes two budgets");
                *w = k;
            }
        }
    }
    int seen[3] = {0, 0, 0};
    for (int s = 0; s < NSPEC; s++)
        for (int l = 0; l < NL; l++) seen[which[s][l]]++;
    cr_assert_gt(n_differ, 0);
    cr_assert(seen[1] > 0 && seen[2] > 0, "both budgets occur (%d, %d chunks)", seen[1], seen[2]);
    ap_batch_release(&b1);
    ap_batch_release(&b2);
    ap_batch_release(&bm);
    ap_dataset_iter_free(i1);
    ap_dataset_iter_free(i2);
    ap_dataset_iter_free(im);
    ap_dataset_free(d1);
    ap_dataset_free(d2);
    ap_dataset_free(dm);
    for (int i = 0; i < NSPEC; i++) gen_free(&g[i]);
    unlink(path);
}

/* A NaN in decode row t' = 10 also spoils the sparse rows whose selection
 * read it, up to the next calibration row (t' 14 with calib 5): rows 10..13
 * -> samples t = 10 (target) .. 13 + H, 12 of them, against 9 with dense
 * rows. */
Test(dataset, sparse_bad_row_taints_until_calibration) {
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "ds_sparse_nan", ".h5");
    gen_seq g[NSPEC];
    write_trace(path, 0, NSPEC, HIST, BS, g);
    poke(path, "s1", 1, "block_max", 18, 2, 0, NAN); /* n_pre 8: t' = 10 */
    const char *paths[] = {path};
    ap_dataset_config c;
    base_config(&c);
    c.rows = AP_ROWS_SPARSE;
    c.calib = 5;
    ap_dataset *ds = NULL;
    ap_err err;
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    long long skipped[2];
    for (int kind = 0; kind < 2; kind++) {
        ap_dataset_iter *it = NULL;
        cr_assert_eq(ap_dataset_iter_create(ds, AP_SPLIT_ALL, 0, 1, &it, &err), AP_OK);
        cr_assert_eq(ap_dataset_iter_set_rows(it, (ap_rows_kind)kind, &err), AP_OK);
        ap_batch b;
        cr_assert_eq(ap_batch_alloc(ds, &b, &err), AP_OK);
        for (;;) {
            cr_assert_eq(ap_dataset_iter_next(it, &b, &err), AP_OK, "%s", err.msg);
            if (b.n == 0) break;
            for (int i = 0; i < b.n * b.H * b.W; i++) cr_assert(isfinite(b.x[i]));
        }
        ap_iter_stats is;
        ap_dataset_iter_get_stats(it, &is);
        skipped[kind] = is.n_skipped_nonfinite;
        ap_batch_release(&b);
        ap_dataset_iter_free(it);
    }
    cr_assert_eq(skipped[AP_ROWS_DENSE], 9);
    cr_assert_eq(skipped[AP_ROWS_SPARSE], 12);
    ap_dataset_free(ds);
    for (int i = 0; i < NSPEC; i++) gen_free(&g[i]);
    unlink(path);
}

/* A subset is a fixed function of (seed, salt): the same salt gives the same
 * samples in any order, another salt others; its size is near fraction * n
 * and it reaches every (sequence, layer) chunk. */
static void subset_pass(ap_dataset *ds, double f, uint64_t salt, int shuffle, int epoch,
                        uint64_t *set_hash, long long *n, int *chunk_hit) {
    ap_err err;
    ap_dataset_iter *it = NULL;
    cr_assert_eq(ap_dataset_iter_create(ds, AP_SPLIT_ALL, epoch, shuffle, &it, &err), AP_OK);
    cr_assert_eq(ap_dataset_iter_set_subset(it, f, salt, &err), AP_OK, "%s", err.msg);
    const long long planned = ap_dataset_iter_n_planned(it);
    ap_batch b;
    cr_assert_eq(ap_batch_alloc(ds, &b, &err), AP_OK);
    *set_hash = 0;
    *n = 0;
    for (;;) {
        cr_assert_eq(ap_dataset_iter_next(it, &b, &err), AP_OK, "%s", err.msg);
        if (b.n == 0) break;
        for (int i = 0; i < b.n; i++) {
            uint64_t z = ref_key(&b.ref[i]) * 0x9E3779B97F4A7C15ull;
            *set_hash += z ^ (z >> 29);
            chunk_hit[b.ref[i].seq * NL + b.ref[i].layer] = 1;
        }
        *n += b.n;
        /* A progress total of `planned` is never passed mid-pass. */
        cr_assert_leq(*n, planned, "served %lld of a planned %lld", *n, planned);
    }
    /* The count made when the subset was drawn is exactly what the pass
     * served (this data has no bad rows to skip). */
    ap_iter_stats ist;
    ap_dataset_iter_get_stats(it, &ist);
    cr_assert_eq(ist.n_skipped_nonfinite + ist.n_skipped_malformed, 0);
    cr_assert_eq(*n, planned, "served %lld, planned %lld", *n, planned);
    ap_batch_release(&b);
    ap_dataset_iter_free(it);
}

Test(dataset, subset_fixed_by_salt_and_spread) {
    char path[512];
    ap_synth_tmp_path(path, sizeof path, "ds_subset", ".h5");
    gen_seq g[NSPEC];
    write_trace(path, 0, NSPEC, HIST, BS, g);
    const char *paths[] = {path};
    ap_dataset_config c;
    base_config(&c);
    c.batch_size = 16;
    ap_dataset *ds = NULL;
    ap_err err;
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_stats st;
    ap_dataset_get_stats(ds, &st);
    long long total = st.n_samples_train + st.n_samples_val;
    const double f = 0.25;
    uint64_t h1, h2, h3, h4;
    long long n1, n2, n3, n4;
    int hit[NSPEC * NL] = {0}, dummy[NSPEC * NL];
    subset_pass(ds, f, 11, 1, 0, &h1, &n1, hit);
    subset_pass(ds, f, 11, 0, 5, &h2, &n2, dummy); /* other order and epoch */
    subset_pass(ds, f, 12, 1, 0, &h3, &n3, dummy);
    subset_pass(ds, 1.0, 11, 1, 0, &h4, &n4, dummy);
    cr_assert_eq(n1, n2);
    cr_assert_eq(h1, h2, "same salt, different subset");
    cr_assert_neq(h1, h3, "another salt gave the same subset");
    cr_assert_eq(n4, total, "fraction 1 keeps everything");
    double sd = sqrt(total * f * (1 - f));
    cr_assert(fabs(n1 - f * total) < 5 * sd, "%lld of %lld kept", n1, total);
    for (int s = 0; s < NSPEC; s++)
        for (int l = 0; l < NL; l++)
            if (expected_samples(&SPECS[s]) > 0)
                cr_assert(hit[s * NL + l], "chunk (%d, %d) never sampled", s, l);
    ap_dataset_iter *it = NULL;
    cr_assert_eq(ap_dataset_iter_create(ds, AP_SPLIT_ALL, 0, 1, &it, &err), AP_OK);
    cr_assert_eq(ap_dataset_iter_n_planned(it), total, "no subset: every window");
    cr_assert_eq(ap_dataset_iter_set_subset(it, 0.0, 1, &err), AP_ERR_ARG);
    cr_assert_eq(ap_dataset_iter_set_subset(it, 1.5, 1, &err), AP_ERR_ARG);
    ap_dataset_iter_free(it);
    ap_dataset_free(ds);
    for (int i = 0; i < NSPEC; i++) gen_free(&g[i]);
    unlink(path);
}

/* Issue 13: windows come from full-attention layers only. Layer 0 of this
 * trace is a sliding-window layer (its KV is bounded already): no sample of
 * it is served, whatever layer map the trainer sets, and the counts are
 * those of layer 1 alone. */
static long long count_pass(ap_dataset *ds, ap_split split, int *layers_seen, int *groups_seen) {
    ap_err err;
    ap_dataset_iter *it = NULL;
    cr_assert_eq(ap_dataset_iter_create(ds, split, 0, 1, &it, &err), AP_OK, "%s", err.msg);
    ap_batch b;
    cr_assert_eq(ap_batch_alloc(ds, &b, &err), AP_OK, "%s", err.msg);
    long long n = 0;
    for (;;) {
        cr_assert_eq(ap_dataset_iter_next(it, &b, &err), AP_OK, "%s", err.msg);
        if (b.n == 0) break;
        for (int i = 0; i < b.n; i++) {
            layers_seen[b.ref[i].layer] = 1;
            groups_seen[b.ref[i].group] = 1;
        }
        n += b.n;
    }
    ap_batch_release(&b);
    ap_dataset_iter_free(it);
    return n;
}

Test(dataset, sliding_window_layers_give_no_windows) {
    char pf[512], ps[512];
    ap_synth_tmp_path(pf, sizeof pf, "ds_full", ".h5");
    ap_synth_tmp_path(ps, sizeof ps, "ds_swa", ".h5");
    gen_seq g[NSPEC], g2[NSPEC];
    const int windows[NL] = {32, 0};
    write_trace(pf, 0, NSPEC, HIST, BS, g);
    write_trace_w(ps, 0, NSPEC, HIST, BS, g2, windows);
    long long tot = 0;
    for (int i = 0; i < NSPEC; i++) tot += expected_samples(&SPECS[i]);

    ap_dataset_config c;
    base_config(&c);
    ap_dataset *ds = NULL;
    ap_err err;
    const char *paths[] = {ps};
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_stats st;
    ap_dataset_get_stats(ds, &st);
    cr_assert_eq(st.n_layer, NL);
    cr_assert_eq(st.n_full_layers, 1);
    cr_assert_eq((st.n_samples_train + st.n_samples_val) * NL, tot, "layer 1's samples only");
    int layers[NL] = {0}, groups[NL] = {0};
    long long n = count_pass(ds, AP_SPLIT_ALL, layers, groups);
    cr_assert_eq(n, st.n_samples_train + st.n_samples_val);
    cr_assert(!layers[0] && layers[1], "a window from sliding-window layer 0 was served");

    /* A per-layer map (the trainer's --per-layer) keeps layer 0 out. */
    int per_layer[AP_DS_MAX_LAYERS] = {0, 1};
    cr_assert_eq(ap_dataset_set_layer_groups(ds, per_layer, NL, &err), AP_OK, "%s", err.msg);
    ap_dataset_get_stats(ds, &st);
    cr_assert_eq((st.n_samples_train + st.n_samples_val) * NL, tot);
    memset(layers, 0, sizeof layers);
    memset(groups, 0, sizeof groups);
    count_pass(ds, AP_SPLIT_ALL, layers, groups);
    cr_assert(!layers[0] && layers[1] && !groups[0] && groups[1]);
    ap_dataset_free(ds);
    ds = NULL;

    /* The config's own map cannot bring it back either. */
    c.layer_group[0] = 0;
    c.layer_group[1] = 0;
    cr_assert_eq(ap_dataset_open(paths, 1, &c, &ds, &err), AP_OK, "%s", err.msg);
    ap_dataset_get_stats(ds, &st);
    cr_assert_eq((st.n_samples_train + st.n_samples_val) * NL, tot);
    ap_dataset_free(ds);
    ds = NULL;

    /* Full and sliding-window traces of one shape are different models. */
    const char *mixed[] = {pf, ps};
    cr_assert_eq(ap_dataset_open(mixed, 2, &c, &ds, &err), AP_ERR_ARG);
    cr_assert_null(ds);
    cr_assert_not_null(strstr(err.msg, "layer 0 is sliding-window attention"), "%s", err.msg);
    cr_assert_not_null(strstr(err.msg, ps), "%s", err.msg);
    for (int i = 0; i < NSPEC; i++) {
        gen_free(&g[i]);
        gen_free(&g2[i]);
    }
    unlink(pf);
    unlink(ps);
}
