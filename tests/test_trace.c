/* Trace files: exact round trip of every dataset, the writer's checks, resume
 * after a free without commit and after a real SIGKILL, the journal-driven
 * index rebuild, FORCE/EXISTS, meta mismatch, version/format refusal, truncated
 * and non-HDF5 files, merge (and its refusals), ids that are not HDF5 names, an
 * independent h5py check of the schema (tests/check_trace.py), and the
 * `attnpred inspect` / `attnpred merge` commands ($AP_CLI).
 *
 * Synthetic sequences are generated the way a capture produces them: one
 * softmax row per (layer, step, head) over the causal keys, pooled into the
 * block views, so the checker can also verify that raw and block views agree. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "capture/trace.h"
#include "common/plot.h"
#include "common/util.h"
#include "helpers/png_probe.h"

/* ------------------------------------------------------------ fixtures -- */

static const ap_trace_meta META = {
    .n_layer = 3, .n_head = 4, .n_head_kv = 2, .head_dim = 8, .block_size = 16,
    .history = 8, .model_name = "synthetic-llama", .model_sha256 =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    .attnpred_version = AP_VERSION_STRING};

typedef struct {
    char id[64];
    ap_trace_seq s;
    int32_t *tokens, *step_pos;
    float *bmax, *bsum, *query, *kmin, *kmax, *colsum, *raw;
    int raw_layers[4];
} synth;

static uint64_t rng_next(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static double rng_unit(uint64_t *x) { return (double)(rng_next(x) >> 11) / 9007199254740992.0; }

/* One attention row over keys [0, pos]: positive, sums to 1 (in double, then
 * rounded to float32 as a capture stores it). */
static void softmax_row(uint64_t *r, float *p, int pos, int T) {
    double tot = 0.0, tmp[512];
    for (int k = 0; k <= pos; k++) tot += tmp[k] = exp(4.0 * rng_unit(r));
    for (int k = 0; k < T; k++) p[k] = k <= pos ? (float)(tmp[k] / tot) : 0.0f;
}

static void synth_make(synth *y, const ap_trace_meta *m, const char *id, int n_prompt,
                       int n_gen, int quest, int colsum, int n_raw, const int *raw_layers,
                       uint64_t seed) {
    memset(y, 0, sizeof *y);
    snprintf(y->id, sizeof y->id, "%s", id);
    uint64_t r = seed * 0x9E3779B97F4A7C15ull + 1;
    const int L = m->n_layer, H = m->n_head, HKV = m->n_head_kv, HD = m->head_dim,
              B = m->block_size, T = n_prompt + n_gen, NB = (T + B - 1) / B;
    const int hist = n_prompt < m->history ? n_prompt : m->history;
    const int S = hist + n_gen;
    cr_assert(T <= 512);
    y->tokens = malloc(sizeof(int32_t) * T);
    y->step_pos = malloc(sizeof(int32_t) * S);
    for (int i = 0; i < T; i++) y->tokens[i] = (int32_t)(rng_next(&r) % 49152);
    for (int s = 0; s < S; s++) y->step_pos[s] = n_prompt - hist + s;
    size_t nv = (size_t)L * S * H * NB;
    y->bmax = calloc(nv, sizeof(float));
    y->bsum = calloc(nv, sizeof(float));
    for (int i = 0; i < n_raw; i++) y->raw_layers[i] = raw_layers[i];
    if (n_raw) y->raw = calloc((size_t)n_raw * S * H * T, sizeof(float));
    float *p = malloc(sizeof(float) * T);
    for (int l = 0; l < L; l++)
        for (int s = 0; s < S; s++)
            for (int h = 0; h < H; h++) {
                softmax_row(&r, p, y->step_pos[s], T);
                size_t o = (((size_t)l * S + s) * H + h) * NB;
                for (int j = 0; j < NB; j++) {
                    double sum = 0.0;
                    float mx = 0.0f;
                    for (int k = j * B; k < (j + 1) * B && k < T; k++) {
                        sum += p[k];
                        mx = p[k] > mx ? p[k] : mx;
                    }
                    y->bsum[o + j] = (float)sum;
                    y->bmax[o + j] = mx;
                }
                for (int i = 0; i < n_raw; i++)
                    if (raw_layers[i] == l)
                        memcpy(y->raw + (((size_t)i * S + s) * H + h) * T, p, sizeof(float) * T);
            }
    if (quest) {
        size_t nq = (size_t)L * S * H * HD, nk = (size_t)L * HKV * NB * HD;
        y->query = malloc(nq * sizeof(float));
        y->kmin = malloc(nk * sizeof(float));
        y->kmax = malloc(nk * sizeof(float));
        for (size_t i = 0; i < nq; i++) y->query[i] = (float)(rng_unit(&r) * 6.0 - 3.0);
        for (size_t i = 0; i < nk; i++) {
            float a = (float)(rng_unit(&r) * 4.0 - 2.0), b = (float)(rng_unit(&r) * 4.0 - 2.0);
            y->kmin[i] = a < b ? a : b;
            y->kmax[i] = a < b ? b : a;
        }
    }
    if (colsum) {
        /* Column sums of the full causal prefill: every prompt query's row. */
        y->colsum = calloc((size_t)L * H * n_prompt, sizeof(float));
        double *acc = malloc(sizeof(double) * n_prompt);
        for (int l = 0; l < L; l++)
            for (int h = 0; h < H; h++) {
                for (int k = 0; k < n_prompt; k++) acc[k] = 0.0;
                for (int q = 0; q < n_prompt; q++) {
                    softmax_row(&r, p, q, n_prompt);
                    for (int k = 0; k <= q; k++) acc[k] += p[k];
                }
                for (int k = 0; k < n_prompt; k++)
                    y->colsum[((size_t)l * H + h) * n_prompt + k] = (float)acc[k];
            }
        free(acc);
    }
    free(p);
    y->s = (ap_trace_seq){.id = y->id, .task = "qa", .source = "synthetic", .chat = (int)(seed & 1),
                          .n_prompt = n_prompt, .n_gen = n_gen, .tokens = y->tokens,
                          .n_steps = S, .step_pos = y->step_pos, .n_blocks = NB,
                          .block_max = y->bmax, .block_sum = y->bsum, .query = y->query,
                          .key_min = y->kmin, .key_max = y->kmax, .prefill_colsum = y->colsum,
                          .n_raw_layers = n_raw, .raw_layers = y->raw_layers, .raw = y->raw};
}

static void synth_free(synth *y) {
    free(y->tokens), free(y->step_pos), free(y->bmax), free(y->bsum), free(y->query);
    free(y->kmin), free(y->kmax), free(y->colsum), free(y->raw);
}

/* A fresh directory per test: Criterion runs tests in parallel processes. */
static char dir[1024];

static void mkdir_test(void) {
    char base[600];
    snprintf(base, sizeof base, "%s/test_trace_tmp", AP_BINARY_DIR);
    mkdir(base, 0755);
    snprintf(dir, sizeof dir, "%s/XXXXXX", base);
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static void rm_test(void) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) cr_log_warn("could not remove %s", dir);
}

TestSuite(trace, .init = mkdir_test, .fini = rm_test, .timeout = 120);

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", dir, name); }

static void write_trace_meta(const char *path, const ap_trace_meta *meta, synth *ys, int n,
                             int flags) {
    ap_err e;
    ap_trace_writer *w = NULL;
    cr_assert_eq(ap_trace_writer_open(path, meta, flags, &w, &e), AP_OK, "%s", e.msg);
    for (int i = 0; i < n; i++)
        cr_assert_eq(ap_trace_writer_add(w, &ys[i].s, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_close(w, 1, &e), AP_OK, "%s", e.msg);
    ap_trace_writer_free(w);
}

static void write_trace(const char *path, synth *ys, int n, int flags) {
    ap_err e;
    ap_trace_writer *w = NULL;
    cr_assert_eq(ap_trace_writer_open(path, &META, flags, &w, &e), AP_OK, "%s", e.msg);
    for (int i = 0; i < n; i++)
        cr_assert_eq(ap_trace_writer_add(w, &ys[i].s, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_close(w, 1, &e), AP_OK, "%s", e.msg);
    ap_trace_writer_free(w);
}

/* The standard set: prompt longer and shorter than history, one without
 * generation, quest/colsum on and off, raw layers, and ids that are not HDF5
 * names. */
#define N_STD 5
static void std_set(synth *ys) {
    static const int raw02[] = {2, 0}; /* unsorted on purpose */
    static const int raw1[] = {1};
    synth_make(&ys[0], &META, "alpha", 37, 11, 1, 1, 2, raw02, 1);
    synth_make(&ys[1], &META, "gsm8k/test.17", 5, 20, 1, 0, 0, NULL, 2);
    synth_make(&ys[2], &META, "../x", 50, 0, 0, 1, 1, raw1, 3);
    synth_make(&ys[3], &META, "\xc3\xbcn\xc3\xaf c\xc3\xb6\x64\xc3\xa9 %2F", 16, 16, 0, 0, 0,
               NULL, 4);
    synth_make(&ys[4], &META, ".", 17, 3, 1, 1, 0, NULL, 5);
}

static void std_free(synth *ys, int n) {
    for (int i = 0; i < n; i++) synth_free(&ys[i]);
}

static void expect_floats(const ap_trace *t, int i, int layer, const char *name,
                          const float *want, size_t n) {
    ap_err e;
    float *got = malloc(sizeof(float) * (n + 1));
    cr_assert_eq(ap_trace_read_layer(t, i, layer, name, got, n, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(memcmp(got, want, sizeof(float) * n), 0, "%s layer %d of seq %d differs", name,
                 layer, i);
    free(got);
}

/* Every dataset of every sequence equals what was written, bit for bit. */
static void expect_same(const ap_trace *t, const synth *ys, int n) {
    ap_err e;
    const ap_trace_meta *m = ap_trace_get_meta(t);
    cr_assert_eq(ap_trace_n_seq(t), n);
    for (int i = 0; i < n; i++) {
        const ap_trace_seq *s = &ys[i].s;
        ap_trace_seq_info in;
        cr_assert_eq(ap_trace_seq_get_info(t, i, &in, &e), AP_OK, "%s", e.msg);
        cr_assert_str_eq(in.id, s->id);
        cr_assert_str_eq(in.task, "qa");
        cr_assert_str_eq(in.source, "synthetic");
        cr_assert_eq(in.chat, s->chat);
        cr_assert_eq(in.n_prompt, s->n_prompt);
        cr_assert_eq(in.n_gen, s->n_gen);
        cr_assert_eq(in.n_steps, s->n_steps);
        cr_assert_eq(in.n_blocks, s->n_blocks);
        cr_assert_eq(in.has_query, s->query != NULL);
        cr_assert_eq(in.has_colsum, s->prefill_colsum != NULL);
        cr_assert_eq(in.n_raw_layers, s->n_raw_layers);
        cr_assert_eq(ap_trace_find(t, s->id), i);
        const int T = s->n_prompt + s->n_gen, S = s->n_steps, H = m->n_head, NB = s->n_blocks;
        int32_t *ib = malloc(sizeof(int32_t) * T);
        cr_assert_eq(ap_trace_read_i32(t, i, "tokens", ib, T, &e), AP_OK, "%s", e.msg);
        cr_assert_eq(memcmp(ib, s->tokens, sizeof(int32_t) * T), 0);
        cr_assert_eq(ap_trace_read_i32(t, i, "step_pos", ib, S, &e), AP_OK, "%s", e.msg);
        cr_assert_eq(memcmp(ib, s->step_pos, sizeof(int32_t) * S), 0);
        free(ib);
        size_t nv = (size_t)S * H * NB, nq = (size_t)S * H * m->head_dim,
               nk = (size_t)m->n_head_kv * NB * m->head_dim, nc = (size_t)H * s->n_prompt;
        for (int l = 0; l < m->n_layer; l++) {
            expect_floats(t, i, l, "block_max", s->block_max + l * nv, nv);
            expect_floats(t, i, l, "block_sum", s->block_sum + l * nv, nv);
            if (s->query) {
                expect_floats(t, i, l, "query", s->query + l * nq, nq);
                expect_floats(t, i, l, "key_min", s->key_min + l * nk, nk);
                expect_floats(t, i, l, "key_max", s->key_max + l * nk, nk);
            }
            if (s->prefill_colsum)
                expect_floats(t, i, l, "prefill_colsum", s->prefill_colsum + l * nc, nc);
        }
        for (int r = 0; r < s->n_raw_layers; r++)
            expect_floats(t, i, s->raw_layers[r], "raw", s->raw + (size_t)r * S * H * T,
                          (size_t)S * H * T);
    }
}

/* ---------------------------------------------------------- round trip -- */

Test(trace, round_trip_is_exact) {
    synth ys[N_STD];
    std_set(ys);
    char path[1200], buf[1300];
    path_in(path, sizeof path, "rt.h5");
    write_trace(path, ys, N_STD, 0);
    cr_assert(ap_file_exists(path));
    snprintf(buf, sizeof buf, "%s.partial", path);
    cr_assert(!ap_file_exists(buf), "the .partial must be renamed away at commit");
    snprintf(buf, sizeof buf, "%s.partial.idx", path);
    cr_assert(!ap_file_exists(buf), "the journal must be removed at commit");

    ap_err e;
    ap_trace *t = NULL;
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_OK, "%s", e.msg);
    const ap_trace_meta *m = ap_trace_get_meta(t);
    cr_assert_eq(memcmp(m, &META, sizeof META), 0, "meta differs after the round trip");
    cr_assert(ap_trace_is_complete(t));
    expect_same(t, ys, N_STD);

    ap_trace_seq_info in;
    cr_assert_eq(ap_trace_seq_get_info(t, 0, &in, &e), AP_OK);
    cr_assert_eq(in.raw_layers[0], 0, "raw_layers are stored sorted");
    cr_assert_eq(in.raw_layers[1], 2);
    /* Reads that must fail, each with its own status. */
    float small[4];
    cr_assert_eq(ap_trace_read_layer(t, 0, 0, "block_max", small, 4, &e), AP_ERR_RANGE);
    cr_assert(strstr(e.msg, "buffer") != NULL, "%s", e.msg);
    float *big = malloc(sizeof(float) * 100000);
    cr_assert_eq(ap_trace_read_layer(t, 0, 1, "raw", big, 100000, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "no raw") != NULL, "%s", e.msg);
    cr_assert_eq(ap_trace_read_layer(t, 3, 0, "query", big, 100000, &e), AP_ERR_ARG);
    cr_assert_eq(ap_trace_read_layer(t, 0, 0, "nonsense", big, 100000, &e), AP_ERR_ARG);
    cr_assert_eq(ap_trace_read_layer(t, 0, 3, "block_max", big, 100000, &e), AP_ERR_RANGE);
    cr_assert_eq(ap_trace_read_layer(t, 5, 0, "block_max", big, 100000, &e), AP_ERR_RANGE);
    cr_assert_eq(ap_trace_find(t, "missing"), -1);
    free(big);
    ap_trace_close(t);
    ap_trace_close(NULL);

    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    long tokens = 0;
    for (int i = 0; i < N_STD; i++) tokens += ys[i].s.n_prompt + ys[i].s.n_gen;
    cr_log_info("synthetic trace: %lld bytes, %ld tokens, %.1f bytes/token", (long long)sb.st_size,
                tokens, (double)sb.st_size / tokens);
    std_free(ys, N_STD);
}

/* ------------------------------------------------------ writer checks -- */

Test(trace, writer_rejects_bad_sequences) {
    synth y;
    synth_make(&y, &META, "bad", 37, 11, 1, 1, 0, NULL, 9);
    char path[1200];
    path_in(path, sizeof path, "bad.h5");
    ap_err e;
    ap_trace_writer *w = NULL;
    cr_assert_eq(ap_trace_writer_open(path, &META, 0, &w, &e), AP_OK, "%s", e.msg);
    const int NB = y.s.n_blocks;

    y.bsum[0] *= 1.5f; /* row no longer sums to 1 */
    cr_assert_eq(ap_trace_writer_add(w, &y.s, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "sums to") != NULL, "%s", e.msg);
    y.bsum[0] /= 1.5f;

    /* Step 0 sits at position 29: blocks 0 and 1 valid, block 2 must be 0. */
    cr_assert_eq(y.step_pos[0], 29);
    y.bmax[2] = 1e-3f;
    cr_assert_eq(ap_trace_writer_add(w, &y.s, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "causal") != NULL, "%s", e.msg);
    y.bmax[2] = 0.0f;

    float keep = y.bmax[1];
    y.bmax[1] = y.bsum[1] * 2.0f;
    cr_assert_eq(ap_trace_writer_add(w, &y.s, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "block_max") != NULL, "%s", e.msg);
    y.bmax[1] = keep;

    y.query[5] = NAN;
    cr_assert_eq(ap_trace_writer_add(w, &y.s, &e), AP_ERR_NUMERIC);
    y.query[5] = 0.5f;

    y.s.n_blocks = NB + 1;
    cr_assert_eq(ap_trace_writer_add(w, &y.s, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "n_blocks") != NULL, "%s", e.msg);
    y.s.n_blocks = NB;

    y.step_pos[3] = y.step_pos[2];
    cr_assert_eq(ap_trace_writer_add(w, &y.s, &e), AP_ERR_ARG);
    cr_assert(strstr(e.msg, "increasing") != NULL, "%s", e.msg);
    y.step_pos[3] = y.step_pos[2] + 1;

    const float *km = y.s.key_min;
    y.s.key_min = NULL;
    cr_assert_eq(ap_trace_writer_add(w, &y.s, &e), AP_ERR_ARG);
    y.s.key_min = km;

    y.s.id = "";
    cr_assert_eq(ap_trace_writer_add(w, &y.s, &e), AP_ERR_ARG);
    y.s.id = y.id;

    cr_assert_eq(ap_trace_writer_add(w, &y.s, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_add(w, &y.s, &e), AP_ERR_ARG, "a second 'bad' must be refused");
    cr_assert(strstr(e.msg, "duplicate") != NULL, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_count(w), 1, "failed adds must not count");
    cr_assert_eq(ap_trace_writer_close(w, 1, &e), AP_OK, "%s", e.msg);
    ap_trace_writer_free(w);

    ap_trace *t = NULL;
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_OK, "%s", e.msg);
    expect_same(t, &y, 1);
    ap_trace_close(t);
    synth_free(&y);
}

Test(trace, force_and_exists) {
    synth ys[2];
    synth_make(&ys[0], &META, "one", 20, 4, 0, 0, 0, NULL, 1);
    synth_make(&ys[1], &META, "two", 20, 4, 0, 0, 0, NULL, 2);
    char path[1200], partial[1300];
    path_in(path, sizeof path, "f.h5");
    snprintf(partial, sizeof partial, "%s.partial", path);
    write_trace(path, ys, 2, 0);

    ap_err e;
    ap_trace_writer *w = NULL;
    cr_assert_eq(ap_trace_writer_open(path, &META, 0, &w, &e), AP_ERR_EXISTS);
    cr_assert_null(w);
    cr_assert(strstr(e.msg, "--force") != NULL, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_open(path, &META, AP_TRACE_RESUME, &w, &e), AP_ERR_EXISTS);
    cr_assert(strstr(e.msg, "complete") != NULL, "%s", e.msg);

    /* FORCE: the old trace stays in place until the new one is committed. */
    cr_assert_eq(ap_trace_writer_open(path, &META, AP_TRACE_FORCE, &w, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_add(w, &ys[1].s, &e), AP_OK, "%s", e.msg);
    ap_trace *t = NULL;
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_n_seq(t), 2, "the old trace must be intact before the commit");
    ap_trace_close(t);
    ap_trace_writer_free(w); /* no commit: leaves the partial */
    cr_assert(ap_file_exists(partial));

    /* A partial is an interrupted capture: neither silently resumed nor lost. */
    cr_assert_eq(ap_trace_writer_open(path, &META, AP_TRACE_FORCE, &w, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_count(w), 0, "FORCE without RESUME starts over");
    ap_trace_writer_free(w);
    unlink(path);
    cr_assert_eq(ap_trace_writer_open(path, &META, 0, &w, &e), AP_ERR_EXISTS);
    cr_assert(strstr(e.msg, "--resume") != NULL, "%s", e.msg);

    cr_assert_eq(ap_trace_writer_open(path, &META, AP_TRACE_FORCE, &w, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_add(w, &ys[1].s, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_close(w, 1, &e), AP_OK, "%s", e.msg);
    ap_trace_writer_free(w);
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_OK, "%s", e.msg);
    expect_same(t, &ys[1], 1);
    ap_trace_close(t);
    ap_trace_writer_free(NULL);
    synth_free(&ys[0]), synth_free(&ys[1]);
}

/* -------------------------------------------------------------- resume -- */

/* Writes two sequences and frees the writer without a commit. */
static void write_partial(const char *path, synth *ys) {
    ap_err e;
    ap_trace_writer *w = NULL;
    cr_assert_eq(ap_trace_writer_open(path, &META, 0, &w, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_add(w, &ys[0].s, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_add(w, &ys[1].s, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_count(w), 2);
    ap_trace_writer_free(w);
}

static void resume_and_finish(const char *path, synth *ys, int n_done, int n_total) {
    ap_err e;
    ap_trace_writer *w = NULL;
    cr_assert_eq(ap_trace_writer_open(path, &META, AP_TRACE_RESUME, &w, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_count(w), n_done);
    for (int i = 0; i < n_total; i++) {
        cr_assert_eq(ap_trace_writer_has(w, ys[i].s.id), i < n_done, "has(%s)", ys[i].s.id);
        if (i >= n_done) cr_assert_eq(ap_trace_writer_add(w, &ys[i].s, &e), AP_OK, "%s", e.msg);
    }
    cr_assert_eq(ap_trace_writer_close(w, 1, &e), AP_OK, "%s", e.msg);
    ap_trace_writer_free(w);
    ap_trace *t = NULL;
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_OK, "%s", e.msg);
    expect_same(t, ys, n_total);
    ap_trace_close(t);
}

Test(trace, resume_after_free_without_commit) {
    synth ys[N_STD];
    std_set(ys);
    char path[1200], partial[1300];
    path_in(path, sizeof path, "r.h5");
    snprintf(partial, sizeof partial, "%s.partial", path);
    write_partial(path, ys);
    cr_assert(ap_file_exists(partial));
    cr_assert(!ap_file_exists(path), "nothing at the final name before the commit");

    /* The reader sees a partial's finished sequences and says it is partial. */
    ap_err e;
    ap_trace *t = NULL;
    cr_assert_eq(ap_trace_open(partial, &t, &e), AP_OK, "%s", e.msg);
    cr_assert(!ap_trace_is_complete(t));
    cr_assert_eq(ap_trace_n_seq(t), 2);
    ap_trace_close(t);

    resume_and_finish(path, ys, 2, N_STD);
    std_free(ys, N_STD);
}

/* Adds a group the writer never finished (no complete attribute), the way a
 * writer of an older layout could have left it, directly with HDF5. */
static void add_unfinished_group(const char *partial) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(partial, H5F_ACC_RDWR, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    hid_t g = H5Gcreate2(f, "/sequences/ghost", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    cr_assert_geq(g, 0);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(g, "n_prompt", H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    int v = 3;
    cr_assert_geq(H5Awrite(a, H5T_NATIVE_INT, &v), 0);
    H5Aclose(a), H5Sclose(sp), H5Gclose(g), H5Fclose(f);
}

static int link_exists(const char *file, const char *name) {
    hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    int ex = H5Lexists(f, name, H5P_DEFAULT) > 0;
    H5Fclose(f);
    return ex;
}

Test(trace, resume_drops_incomplete_groups) {
    synth ys[N_STD];
    std_set(ys);
    char path[1200], partial[1300];
    path_in(path, sizeof path, "g.h5");
    snprintf(partial, sizeof partial, "%s.partial", path);
    write_partial(path, ys);
    add_unfinished_group(partial);
    cr_assert(link_exists(partial, "/sequences/ghost"));

    ap_err e;
    ap_trace *t = NULL;
    cr_assert_eq(ap_trace_open(partial, &t, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_n_seq(t), 2, "the reader must skip an unfinished group");
    ap_trace_close(t);

    ap_trace_writer *w = NULL;
    cr_assert_eq(ap_trace_writer_open(path, &META, AP_TRACE_RESUME, &w, &e), AP_OK, "%s", e.msg);
    cr_assert(!ap_trace_writer_has(w, "ghost"));
    cr_assert_eq(ap_trace_writer_count(w), 2);
    ap_trace_writer_free(w);
    cr_assert(!link_exists(partial, "/sequences/ghost"), "resume must delete the group");
    resume_and_finish(path, ys, 2, N_STD);
    std_free(ys, N_STD);
}

/* A journal that does not end with "+" means the kill came while /sequences
 * was being updated: resume rebuilds it from the journaled groups. */
Test(trace, resume_rebuilds_index_after_interrupted_link) {
    synth ys[N_STD];
    std_set(ys);
    char path[1200], partial[1300], idx[1300];
    path_in(path, sizeof path, "j.h5");
    snprintf(partial, sizeof partial, "%s.partial", path);
    snprintf(idx, sizeof idx, "%s.partial.idx", path);
    write_partial(path, ys);
    add_unfinished_group(partial);
    char *data = NULL;
    size_t len = 0;
    ap_err e;
    cr_assert_eq(ap_read_file(idx, &data, &len, &e), AP_OK, "%s", e.msg);
    cr_assert(len > 2 && !strcmp(data + len - 2, "+\n"), "journal: %s", data);
    cr_assert_eq(truncate(idx, (off_t)len - 2), 0);
    free(data);

    /* Until resume repairs it, the reader refuses such a partial. */
    ap_trace *t = NULL;
    cr_assert_eq(ap_trace_open(partial, &t, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "--resume") != NULL, "%s", e.msg);

    ap_trace_writer *w = NULL;
    cr_assert_eq(ap_trace_writer_open(path, &META, AP_TRACE_RESUME, &w, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_count(w), 2);
    cr_assert(ap_trace_writer_has(w, ys[0].s.id));
    cr_assert(ap_trace_writer_has(w, ys[1].s.id));
    cr_assert(!ap_trace_writer_has(w, "ghost"), "not journaled, so not kept");
    ap_trace_writer_free(w);
    resume_and_finish(path, ys, 2, N_STD);
    std_free(ys, N_STD);
}

Test(trace, resume_after_sigkill) {
    synth ys[N_STD];
    std_set(ys);
    char path[1200], partial[1300];
    path_in(path, sizeof path, "k.h5");
    snprintf(partial, sizeof partial, "%s.partial", path);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        ap_err e;
        ap_trace_writer *w = NULL;
        if (ap_trace_writer_open(path, &META, 0, &w, &e) || ap_trace_writer_add(w, &ys[0].s, &e) ||
            ap_trace_writer_add(w, &ys[1].s, &e))
            _exit(3);
        raise(SIGKILL); /* no close, no flush of anything still buffered */
        _exit(4);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);
    cr_assert(ap_file_exists(partial));
    cr_assert(!ap_file_exists(path));
    resume_and_finish(path, ys, 2, N_STD);
    std_free(ys, N_STD);
}

/* A short version of the stress loop behind the resume design: a child resumes
 * and adds sequences until it is SIGKILLed at a random moment (possibly inside
 * a flush, or inside its own resume); every resume must succeed and never
 * report fewer finished sequences than the one before. */
Test(trace, resume_survives_random_kills) {
    enum { N_SEQ = 40, ROUNDS = 30 };
    synth ys[N_SEQ];
    for (int i = 0; i < N_SEQ; i++) {
        char id[16];
        snprintf(id, sizeof id, "s%d", i);
        synth_make(&ys[i], &META, id, 40 + 7 * i, 9, i % 2, i % 3 == 0, 0, NULL, 100 + i);
    }
    char path[1200];
    path_in(path, sizeof path, "kill.h5");
    uint64_t r = 12345;
    int done = 0;
    for (int round = 0; round < ROUNDS && done < N_SEQ; round++) {
        fflush(NULL);
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            ap_err e;
            ap_trace_writer *w = NULL;
            if (ap_trace_writer_open(path, &META, AP_TRACE_RESUME, &w, &e)) _exit(3);
            for (int i = 0; i < N_SEQ; i++)
                if (!ap_trace_writer_has(w, ys[i].s.id) && ap_trace_writer_add(w, &ys[i].s, &e))
                    _exit(4);
            pause(); /* all written: wait for the kill, never commit */
            _exit(5);
        }
        usleep((useconds_t)(rng_next(&r) % 8000));
        kill(pid, SIGKILL);
        int status = 0;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFSIGNALED(status), "child failed on its own (exit %d)", WEXITSTATUS(status));
        ap_err e;
        ap_trace_writer *w = NULL;
        char partial[1300];
        snprintf(partial, sizeof partial, "%s.partial", path);
        if (!ap_file_exists(partial)) continue; /* killed before creating it */
        cr_assert_eq(ap_trace_writer_open(path, &META, AP_TRACE_RESUME, &w, &e), AP_OK,
                     "round %d: %s", round, e.msg);
        int n = ap_trace_writer_count(w);
        cr_assert_geq(n, done, "round %d: %d finished sequences, %d before", round, n, done);
        for (int i = 0; i < N_SEQ; i++)
            if (ap_trace_writer_has(w, ys[i].s.id)) cr_assert_lt(i, n, "finished out of order");
        done = n;
        ap_trace_writer_free(w);
    }
    resume_and_finish(path, ys, done, N_SEQ);
    for (int i = 0; i < N_SEQ; i++) synth_free(&ys[i]);
}

Test(trace, resume_refuses_other_settings) {
    synth ys[N_STD];
    std_set(ys);
    char path[1200];
    path_in(path, sizeof path, "m.h5");
    write_partial(path, ys);
    ap_trace_meta other = META;
    other.n_head = 8;
    snprintf(other.model_sha256, sizeof other.model_sha256, "%s", "ffff");
    ap_err e;
    ap_trace_writer *w = NULL;
    cr_assert_eq(ap_trace_writer_open(path, &other, AP_TRACE_RESUME, &w, &e), AP_ERR_FORMAT);
    cr_assert_null(w);
    cr_assert(strstr(e.msg, "n_head 4 vs 8") != NULL, "%s", e.msg);
    cr_assert(strstr(e.msg, "model_sha256") != NULL, "%s", e.msg);
    /* The partial is untouched and still resumable with the right settings. */
    resume_and_finish(path, ys, 2, N_STD);
    std_free(ys, N_STD);
}

/* ------------------------------------------------------ bad input files -- */

static void set_root_attr(const char *path, const char *name, int ival, const char *sval) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    H5Adelete(f, name);
    hid_t sp = H5Screate(H5S_SCALAR), a;
    if (sval) {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, strlen(sval) + 1);
        a = H5Acreate2(f, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
        cr_assert_geq(H5Awrite(a, t, sval), 0);
        H5Tclose(t);
    } else {
        a = H5Acreate2(f, name, H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
        cr_assert_geq(H5Awrite(a, H5T_NATIVE_INT, &ival), 0);
    }
    H5Aclose(a), H5Sclose(sp), H5Fclose(f);
}

Test(trace, refuses_other_versions_and_formats) {
    synth y;
    synth_make(&y, &META, "v", 20, 4, 0, 0, 0, NULL, 1);
    char path[1200];
    path_in(path, sizeof path, "v.h5");
    write_trace(path, &y, 1, 0);
    ap_err e;
    ap_trace *t = NULL;

    set_root_attr(path, "format_version", 3, NULL);
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_ERR_FORMAT);
    cr_assert_null(t);
    cr_assert(strstr(e.msg, path) != NULL, "%s", e.msg);
    cr_assert(strstr(e.msg, "format_version 3") != NULL, "%s", e.msg);
    cr_assert(strstr(e.msg, "format_version 1 to 2") != NULL,
              "must name the versions it reads: %s", e.msg);
    set_root_attr(path, "format_version", 0, NULL);
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "format_version 0") != NULL, "%s", e.msg);

    set_root_attr(path, "format_version", 2, NULL);
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_OK, "fixed-length strings read too: %s", e.msg);
    ap_trace_close(t);

    set_root_attr(path, "format", 0, "something-else");
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "not an attnpred trace") != NULL, "%s", e.msg);
    synth_free(&y);
}

Test(trace, truncated_and_foreign_files) {
    synth ys[N_STD];
    std_set(ys);
    char path[1200], cut[1200], txt[1200];
    path_in(path, sizeof path, "t.h5");
    path_in(cut, sizeof cut, "cut.h5");
    path_in(txt, sizeof txt, "notes.h5");
    write_trace(path, ys, N_STD, 0);
    char *data = NULL;
    size_t len = 0;
    ap_err e;
    cr_assert_eq(ap_read_file(path, &data, &len, &e), AP_OK);
    FILE *f = fopen(cut, "wb");
    cr_assert_eq(fwrite(data, 1, len / 2, f), len / 2);
    fclose(f);
    free(data);

    ap_trace *t = NULL;
    cr_assert_eq(ap_trace_open(cut, &t, &e), AP_ERR_FORMAT);
    cr_assert_null(t);
    cr_assert(strstr(e.msg, cut) != NULL, "%s", e.msg);
    cr_assert(strstr(e.msg, "truncated") != NULL, "%s", e.msg);

    f = fopen(txt, "w");
    fputs("this is not HDF5\n", f);
    fclose(f);
    cr_assert_eq(ap_trace_open(txt, &t, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "not an HDF5 file") != NULL, "%s", e.msg);

    char missing[1200];
    path_in(missing, sizeof missing, "missing.h5");
    cr_assert_eq(ap_trace_open(missing, &t, &e), AP_ERR_IO);
    cr_assert(strstr(e.msg, missing) != NULL, "%s", e.msg);

    /* Merge of a truncated input fails cleanly and leaves no output. */
    char out[1200];
    path_in(out, sizeof out, "merged.h5");
    const char *in[] = {path, cut};
    cr_assert_eq(ap_trace_merge(in, 2, out, 0, &e), AP_ERR_FORMAT);
    cr_assert(!ap_file_exists(out));
    std_free(ys, N_STD);
}

/* --------------------------------------------------------------- merge -- */

Test(trace, merge_shards) {
    synth ys[N_STD];
    std_set(ys);
    char a[1200], b[1200], out[1200];
    path_in(a, sizeof a, "shard0.h5");
    path_in(b, sizeof b, "shard1.h5");
    path_in(out, sizeof out, "all.h5");
    write_trace(a, ys, 3, 0);
    write_trace(b, ys + 3, 2, 0);
    const char *in[] = {a, b};
    ap_err e;
    cr_assert_eq(ap_trace_merge(in, 2, out, 0, &e), AP_OK, "%s", e.msg);
    ap_trace *t = NULL;
    cr_assert_eq(ap_trace_open(out, &t, &e), AP_OK, "%s", e.msg);
    cr_assert(ap_trace_is_complete(t));
    cr_assert_eq(memcmp(ap_trace_get_meta(t), &META, sizeof META), 0);
    expect_same(t, ys, N_STD);
    ap_trace_close(t);

    cr_assert_eq(ap_trace_merge(in, 2, out, 0, &e), AP_ERR_EXISTS);
    cr_assert_eq(ap_trace_merge(in, 2, out, 1, &e), AP_OK, "%s", e.msg);

    /* The same shard twice: every id is a duplicate. */
    const char *dup[] = {a, b, a};
    char out2[1200], tmp[1300];
    path_in(out2, sizeof out2, "dup.h5");
    cr_assert_eq(ap_trace_merge(dup, 3, out2, 0, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "alpha") != NULL && strstr(e.msg, "already") != NULL, "%s", e.msg);
    cr_assert(!ap_file_exists(out2));
    ap_tmp_name(tmp, sizeof tmp, out2);
    cr_assert(!ap_file_exists(tmp), "the temporary output must be removed");
    std_free(ys, N_STD);
}

Test(trace, merge_refuses_mismatch_and_partial) {
    synth y0, y1;
    synth_make(&y0, &META, "x0", 20, 4, 0, 0, 0, NULL, 1);
    ap_trace_meta other = META;
    other.history = 4;
    synth_make(&y1, &other, "x1", 20, 4, 0, 0, 0, NULL, 2);
    char a[1200], b[1200], c[1200], out[1200];
    path_in(a, sizeof a, "a.h5");
    path_in(b, sizeof b, "b.h5");
    path_in(c, sizeof c, "c.h5");
    path_in(out, sizeof out, "o.h5");
    write_trace(a, &y0, 1, 0);
    ap_err e;
    ap_trace_writer *w = NULL;
    cr_assert_eq(ap_trace_writer_open(b, &other, 0, &w, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_add(w, &y1.s, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_close(w, 1, &e), AP_OK, "%s", e.msg);
    ap_trace_writer_free(w);
    const char *in[] = {a, b};
    cr_assert_eq(ap_trace_merge(in, 2, out, 0, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "history 4 vs 8") != NULL, "%s", e.msg);
    cr_assert(!ap_file_exists(out));

    cr_assert_eq(ap_trace_writer_open(c, &META, 0, &w, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_writer_add(w, &y1.s, &e), AP_ERR_ARG, "history 4 data under history 8 meta?");
    synth y2;
    synth_make(&y2, &META, "x2", 20, 4, 0, 0, 0, NULL, 3);
    cr_assert_eq(ap_trace_writer_add(w, &y2.s, &e), AP_OK, "%s", e.msg);
    ap_trace_writer_free(w);
    char partial[1300];
    snprintf(partial, sizeof partial, "%s.partial", c);
    const char *in2[] = {a, partial};
    cr_assert_eq(ap_trace_merge(in2, 2, out, 0, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "not a complete trace") != NULL, "%s", e.msg);
    synth_free(&y0), synth_free(&y1), synth_free(&y2);
}

/* ------------------------------------------------------ h5py and the CLI -- */

/* The interpreter that has h5py: Debian's for /usr/bin/python3, while a pyenv
 * python3 first on PATH may lack it. NULL if none. */
static const char *python_with_h5py(void) {
    static const char *cands[] = {"/usr/bin/python3", "python3"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "%s -c 'import h5py, numpy' >/dev/null 2>&1", cands[i]);
        if (system(cmd) == 0) return cands[i];
    }
    return NULL;
}

static int run_cmd(const char *cmd, char *out, size_t n) {
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p, "popen %s", cmd);
    size_t got = fread(out, 1, n - 1, p);
    out[got] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(trace, h5py_checks_the_schema) {
    const char *py = python_with_h5py();
    if (!py) cr_skip_test("no python3 with h5py and numpy (Debian: apt-get install python3-h5py)");
    synth ys[N_STD];
    std_set(ys);
    char path[1200], cmd[4096], out[8192];
    path_in(path, sizeof path, "py.h5");
    write_trace(path, ys, N_STD, 0);
    /* Rows are normalised in double before the float32 cast: 1e-6 is strict. */
    snprintf(cmd, sizeof cmd, "%s '%s/tests/check_trace.py' --tol 1e-6 '%s' 2>&1", py,
             AP_SOURCE_DIR, path);
    int rc = run_cmd(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "check_trace.py failed: %s", out);
    cr_assert(strstr(out, "ok (5 sequences") != NULL, "%s", out);

    /* The checker must be able to fail: break one row sum inside the file. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    hid_t d = H5Dopen2(f, "/sequences/alpha/layers/1/block_sum", H5P_DEFAULT);
    cr_assert_geq(d, 0);
    size_t n = (size_t)ys[0].s.n_steps * META.n_head * ys[0].s.n_blocks;
    float *v = malloc(n * sizeof(float));
    cr_assert_geq(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v), 0);
    v[0] += 0.01f;
    cr_assert_geq(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v), 0);
    free(v);
    H5Dclose(d), H5Fclose(f);
    rc = run_cmd(cmd, out, sizeof out);
    cr_assert_eq(rc, 1, "a broken row must fail the check: %s", out);
    cr_assert(strstr(out, "block_sum") != NULL, "%s", out);
    std_free(ys, N_STD);
}

static const char *cli(void) {
    const char *c = getenv("AP_CLI");
    if (!c || !*c || access(c, X_OK) != 0) cr_skip_test("AP_CLI is not set (run through ctest)");
    return c;
}

Test(trace, cli_inspect_json_and_text) {
    const char *ap = cli();
    synth ys[N_STD];
    std_set(ys);
    char path[1200], cmd[4096];
    path_in(path, sizeof path, "cli.h5");
    write_trace(path, ys, N_STD, 0);
    static char out[1 << 16];
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s' --json", ap, path);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "%s", out);
    cJSON *j = cJSON_Parse(out);
    cr_assert_not_null(j, "inspect --json is not JSON: %s", out);
    cr_assert_str_eq(cJSON_GetObjectItem(j, "format")->valuestring, "attnpred-trace");
    cr_assert_eq(cJSON_GetObjectItem(j, "format_version")->valueint, AP_TRACE_FORMAT_VERSION);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "layer_window")), META.n_layer);
    cr_assert_eq(cJSON_GetObjectItem(j, "n_full_layers")->valueint, META.n_layer);
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(j, "complete")));
    cr_assert_eq(cJSON_GetObjectItem(j, "n_sequences")->valueint, N_STD);
    cr_assert_eq(cJSON_GetObjectItem(j, "n_layer")->valueint, META.n_layer);
    cr_assert_str_eq(cJSON_GetObjectItem(j, "model_sha256")->valuestring, META.model_sha256);
    long tokens = 0;
    for (int i = 0; i < N_STD; i++) tokens += ys[i].s.n_prompt + ys[i].s.n_gen;
    cr_assert_eq((long)cJSON_GetObjectItem(j, "total_tokens")->valuedouble, tokens);
    struct stat sb;
    stat(path, &sb);
    cr_assert_eq((long long)cJSON_GetObjectItem(j, "file_bytes")->valuedouble,
                 (long long)sb.st_size);
    cJSON *seqs = cJSON_GetObjectItem(j, "sequences");
    cr_assert_eq(cJSON_GetArraySize(seqs), N_STD);
    for (int i = 0; i < N_STD; i++) {
        cJSON *s = cJSON_GetArrayItem(seqs, i);
        cr_assert_str_eq(cJSON_GetObjectItem(s, "id")->valuestring, ys[i].s.id);
        cr_assert_eq(cJSON_GetObjectItem(s, "n_steps")->valueint, ys[i].s.n_steps);
        cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(s, "raw_layers")),
                     ys[i].s.n_raw_layers);
    }
    cJSON_Delete(j);

    snprintf(cmd, sizeof cmd, "'%s' inspect '%s'", ap, path);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "synthetic-llama") != NULL, "%s", out);
    cr_assert(strstr(out, "gsm8k/test.17") != NULL, "%s", out);
    cr_assert(strstr(out, "bytes per token") != NULL, "%s", out);

    snprintf(cmd, sizeof cmd, "'%s' inspect --help", ap);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0);
    cr_assert(strstr(out, "--png") != NULL);
    std_free(ys, N_STD);
}

/* Dark (text) pixels in [x0,x1) x [y0,y1). */
static long dark_pixels(const ap_png_image *im, int x0, int y0, int x1, int y1) {
    static const unsigned char text[3] = {30, 30, 30};
    return ap_png_count_near(im, text, 60, x0, y0, x1, y1);
}

/* The heatmap: a map framed in the middle, its title above (trace, sequence,
 * layer, head, view), axis values and titles below and left of it, and a
 * colour bar with its scale to the right. */
Test(trace, cli_inspect_png) {
    const char *ap = cli();
    synth ys[N_STD];
    std_set(ys);
    char path[1200], png[1200], cmd[4096];
    static char out[8192];
    path_in(path, sizeof path, "png.h5");
    path_in(png, sizeof png, "map.png");
    write_trace(path, ys, N_STD, 0);
    snprintf(cmd, sizeof cmd,
             "'%s' inspect '%s' --png '%s' --seq gsm8k/test.17 --layer 2 --head 3 --view sum "
             "--log 2>&1",
             ap, path, png);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "%s", out);
    ap_png_image im;
    char msg[300];
    cr_assert_eq(ap_png_read(png, &im, msg, sizeof msg), 0, "%s", msg);
    int x0 = 0, x1 = 0, y = ap_png_frame_bottom(&im, 200, &x0, &x1);
    cr_assert_geq(y, 0, "no framed map");
    /* 25 steps x 2 blocks are upscaled to a readable map. */
    cr_assert_geq(x1 - x0, 400);
    cr_assert_geq(y, 400);
    cr_assert_geq(ap_png_xticks(&im, 200, NULL, 0), 2, "no key block ticks");
    cr_assert_gt(dark_pixels(&im, x0, y + 3, x1, im.h), 80, "no x axis values and title");
    cr_assert_gt(dark_pixels(&im, 0, 0, x0 - 2, y), 80, "no y axis values and title");
    cr_assert_gt(dark_pixels(&im, 0, 0, im.w, 32), 200, "no title");
    unsigned char top[3], bottom[3];
    ap_plot_colormap(1.0, top);
    ap_plot_colormap(0.0, bottom);
    cr_assert_geq(ap_png_count_near(&im, top, 0, x1 + 4, 0, im.w, y), 15, "no colour bar");
    cr_assert_geq(ap_png_count_near(&im, bottom, 0, x1 + 4, 0, im.w, y), 15, "no colour bar");
    cr_assert_gt(dark_pixels(&im, x1 + 30, 0, im.w, y), 100, "no colour bar scale");
    ap_png_free(&im);

    /* By index, default layer/head. */
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s' --png '%s' --seq 4 2>&1", ap, path, png);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "sequence '.'") != NULL, "%s", out);

    snprintf(cmd, sizeof cmd, "'%s' inspect '%s' --png '%s' --seq nope 2>&1", ap, path, png);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "nope") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s' --png '%s' --layer 3 2>&1", ap, path, png);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 1, "%s", out);
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s' --png '%s' --view mean 2>&1", ap, path, png);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 2, "%s", out);
    std_free(ys, N_STD);
}

Test(trace, cli_errors_and_merge) {
    const char *ap = cli();
    char cmd[4096], txt[1200], missing[1200];
    static char out[8192];
    path_in(txt, sizeof txt, "plain.txt");
    path_in(missing, sizeof missing, "missing.h5");
    FILE *f = fopen(txt, "w");
    fputs("hello\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s' 2>&1", ap, missing);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "attnpred inspect: ") == out, "%s", out);
    cr_assert(strstr(out, missing) != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s' 2>&1", ap, txt);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "not an HDF5 file") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "'%s' inspect 2>&1", ap);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 2, "%s", out);
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s' --layer 1 2>&1", ap, txt);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 2, "heatmap options need --png: %s", out);

    synth ys[N_STD];
    std_set(ys);
    char a[1200], b[1200], o[1200];
    path_in(a, sizeof a, "s0.h5");
    path_in(b, sizeof b, "s1.h5");
    path_in(o, sizeof o, "merged.h5");
    write_trace(a, ys, 2, 0);
    write_trace(b, ys + 2, 3, 0);
    snprintf(cmd, sizeof cmd, "'%s' merge --out '%s' '%s' '%s' 2>&1", ap, o, a, b);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "5 sequences from 2 inputs") != NULL, "%s", out);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 1, "exists without --force: %s", out);
    cr_assert(strstr(out, "--force") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "'%s' merge --force --out '%s' '%s' '%s' 2>&1", ap, o, a, a);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 1, "duplicate ids: %s", out);
    cr_assert(strstr(out, "already") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "'%s' merge '%s' 2>&1", ap, a);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 2, "no --out: %s", out);
    ap_err e;
    ap_trace *t = NULL;
    cr_assert_eq(ap_trace_open(o, &t, &e), AP_OK, "%s", e.msg);
    expect_same(t, ys, N_STD);
    ap_trace_close(t);
    std_free(ys, N_STD);
}

/* ------------------------------------------- mixed attention (issue 13) -- */

/* Gemma 3-like: layers 0 and 2 attend a sliding window, layer 1 everything.
 * The window (64) is wider than any synthetic sequence, so the dense
 * synthetic rows are valid sliding-window rows too. */
static ap_trace_meta swa_meta(void) {
    ap_trace_meta m = META;
    snprintf(m.arch, sizeof m.arch, "gemma3");
    m.layer_window[0] = 64;
    m.layer_window[2] = 64;
    return m;
}

static void set_root_ints(const char *path, const char *name, const int *v, hsize_t n) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    H5Adelete(f, name);
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t a = H5Acreate2(f, name, H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    cr_assert_geq(H5Awrite(a, H5T_NATIVE_INT, v), 0);
    H5Aclose(a), H5Sclose(sp), H5Fclose(f);
}

static void delete_root_attr(const char *path, const char *name) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    cr_assert_geq(H5Adelete(f, name), 0, "no root attribute %s to delete", name);
    H5Fclose(f);
}

/* What attnpred 0.1.0 wrote: the same file without the version 2 attributes. */
static void make_version_1(const char *path) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    delete_root_attr(path, "architecture");
    delete_root_attr(path, "layer_window");
    set_root_attr(path, "format_version", 1, NULL);
}

Test(trace, layer_windows_round_trip) {
    synth ys[N_STD];
    std_set(ys);
    const ap_trace_meta sm = swa_meta();
    char path[1200];
    path_in(path, sizeof path, "swa.h5");
    write_trace_meta(path, &sm, ys, N_STD, 0);
    ap_err e;
    ap_trace *t = NULL;
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_format_version(t), 2);
    const ap_trace_meta *m = ap_trace_get_meta(t);
    cr_assert_eq(memcmp(m, &sm, sizeof sm), 0, "meta differs after the round trip");
    cr_assert_str_eq(m->arch, "gemma3");
    cr_assert_eq(ap_trace_n_full_layers(m), 1);
    cr_assert(!ap_trace_layer_is_full(m, 0) && ap_trace_layer_is_full(m, 1) &&
              !ap_trace_layer_is_full(m, 2));
    cr_assert(!ap_trace_layer_is_full(m, 3) && !ap_trace_layer_is_full(m, -1), "out of range");
    cr_assert_eq(ap_trace_sliding_window(m), 64);
    expect_same(t, ys, N_STD);
    ap_trace_close(t);

    /* The documented attribute names and types, read with HDF5 directly. */
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    hid_t a = H5Aopen(f, "layer_window", H5P_DEFAULT);
    cr_assert_geq(a, 0);
    hid_t ty = H5Aget_type(a), sp = H5Aget_space(a);
    cr_assert(H5Tequal(ty, H5T_STD_I32LE) > 0, "layer_window must be int32 little-endian");
    cr_assert_eq(H5Sget_simple_extent_npoints(sp), 3);
    int v[3];
    cr_assert_geq(H5Aread(a, H5T_NATIVE_INT, v), 0);
    cr_assert(v[0] == 64 && v[1] == 0 && v[2] == 64);
    H5Tclose(ty), H5Sclose(sp), H5Aclose(a);
    a = H5Aopen(f, "architecture", H5P_DEFAULT);
    cr_assert_geq(a, 0);
    ty = H5Aget_type(a);
    cr_assert(H5Tget_class(ty) == H5T_STRING && H5Tis_variable_str(ty) > 0);
    char *sv = NULL;
    cr_assert_geq(H5Aread(a, ty, &sv), 0);
    cr_assert_str_eq(sv, "gemma3");
    H5free_memory(sv);
    H5Tclose(ty), H5Aclose(a), H5Fclose(f);

    /* The helpers on an all-full meta and on windows that differ. */
    cr_assert_eq(ap_trace_n_full_layers(&META), 3);
    cr_assert_eq(ap_trace_sliding_window(&META), 0);
    ap_trace_meta mixed = sm;
    mixed.layer_window[2] = 32;
    cr_assert_eq(ap_trace_sliding_window(&mixed), -1);

    /* A negative window is not a window: refused before anything is written. */
    ap_trace_meta bad = sm;
    bad.layer_window[1] = -1;
    char p2[1200];
    path_in(p2, sizeof p2, "bad.h5");
    ap_trace_writer *w = NULL;
    cr_assert_neq(ap_trace_writer_open(p2, &bad, 0, &w, &e), AP_OK);
    cr_assert_null(w);
    cr_assert(strstr(e.msg, "layer_window[1]") != NULL, "%s", e.msg);
    std_free(ys, N_STD);
}

Test(trace, reads_version_1_files) {
    synth ys[N_STD];
    std_set(ys);
    char path[1200];
    path_in(path, sizeof path, "v1.h5");
    write_trace(path, ys, N_STD, 0);
    make_version_1(path);
    ap_err e;
    ap_trace *t = NULL;
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_OK, "a version 1 trace must open: %s", e.msg);
    cr_assert_eq(ap_trace_format_version(t), 1);
    const ap_trace_meta *m = ap_trace_get_meta(t);
    cr_assert_str_eq(m->arch, "llama");
    cr_assert_eq(ap_trace_n_full_layers(m), META.n_layer, "version 1: every layer full");
    for (int l = 0; l < AP_TRACE_MAX_LAYERS; l++) cr_assert_eq(m->layer_window[l], 0);
    expect_same(t, ys, N_STD);
    ap_trace_close(t);

    /* Merge writes the current version, the version 1 meta carried over. */
    char out[1200];
    path_in(out, sizeof out, "v1-merged.h5");
    const char *in[] = {path};
    cr_assert_eq(ap_trace_merge(in, 1, out, 0, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_open(out, &t, &e), AP_OK, "%s", e.msg);
    cr_assert_eq(ap_trace_format_version(t), AP_TRACE_FORMAT_VERSION);
    cr_assert_str_eq(ap_trace_get_meta(t)->arch, "llama");
    cr_assert_eq(ap_trace_n_full_layers(ap_trace_get_meta(t)), META.n_layer);
    expect_same(t, ys, N_STD);
    ap_trace_close(t);

    /* Version 2 without its attributes is refused, naming the one missing. */
    set_root_attr(path, "format_version", 2, NULL);
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "architecture") != NULL, "%s", e.msg);
    set_root_attr(path, "architecture", 0, "llama");
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "layer_window") != NULL && strstr(e.msg, "missing") != NULL, "%s",
              e.msg);
    const int two[2] = {0, 0}, four[4] = {0, 0, 0, 0}, neg[3] = {0, -5, 0};
    set_root_ints(path, "layer_window", two, 2);
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "layer_window") != NULL, "%s", e.msg);
    set_root_ints(path, "layer_window", four, 4);
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "layer_window") != NULL, "%s", e.msg);
    set_root_ints(path, "layer_window", neg, 3);
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "layer_window[1] is -5") != NULL, "%s", e.msg);
    set_root_ints(path, "layer_window", four, 3);
    cr_assert_eq(ap_trace_open(path, &t, &e), AP_OK, "%s", e.msg);
    ap_trace_close(t);
    std_free(ys, N_STD);
}

Test(trace, resume_refuses_a_version_1_partial) {
    synth ys[N_STD];
    std_set(ys);
    char path[1200], partial[1300];
    path_in(path, sizeof path, "r1.h5");
    snprintf(partial, sizeof partial, "%s.partial", path);
    write_partial(path, ys);
    make_version_1(partial);
    ap_err e;
    ap_trace_writer *w = NULL;
    cr_assert_eq(ap_trace_writer_open(path, &META, AP_TRACE_RESUME, &w, &e), AP_ERR_FORMAT);
    cr_assert_null(w);
    cr_assert(strstr(e.msg, "format_version 1") != NULL && strstr(e.msg, "--force") != NULL, "%s",
              e.msg);
    /* --force starts over. */
    cr_assert_eq(ap_trace_writer_open(path, &META, AP_TRACE_FORCE, &w, &e), AP_OK, "%s", e.msg);
    ap_trace_writer_free(w);
    std_free(ys, N_STD);
}

Test(trace, merge_and_resume_refuse_other_windows) {
    synth y0, y1;
    synth_make(&y0, &META, "x0", 20, 4, 0, 0, 0, NULL, 1);
    synth_make(&y1, &META, "x1", 20, 4, 0, 0, 0, NULL, 2);
    const ap_trace_meta sm = swa_meta();
    char a[1200], b[1200], out[1200];
    path_in(a, sizeof a, "swa.h5");
    path_in(b, sizeof b, "full.h5");
    path_in(out, sizeof out, "o.h5");
    write_trace_meta(a, &sm, &y0, 1, 0);
    write_trace_meta(b, &META, &y1, 1, 0);
    ap_err e;
    const char *in[] = {a, b};
    cr_assert_eq(ap_trace_merge(in, 2, out, 0, &e), AP_ERR_FORMAT);
    cr_assert(strstr(e.msg, "layer_window[0] 0 vs 64") != NULL, "%s", e.msg);
    cr_assert(strstr(e.msg, "arch '' vs 'gemma3'") != NULL, "%s", e.msg);
    cr_assert(!ap_file_exists(out));
    /* Same shape, same windows: merges. */
    ap_trace_meta sm2 = sm;
    write_trace_meta(b, &sm2, &y1, 1, AP_TRACE_FORCE);
    cr_assert_eq(ap_trace_merge(in, 2, out, 0, &e), AP_OK, "%s", e.msg);

    synth ys[N_STD];
    std_set(ys);
    char p[1200];
    path_in(p, sizeof p, "rw.h5");
    write_partial(p, ys);
    ap_trace_writer *w = NULL;
    cr_assert_eq(ap_trace_writer_open(p, &sm, AP_TRACE_RESUME, &w, &e), AP_ERR_FORMAT);
    cr_assert_null(w);
    cr_assert(strstr(e.msg, "layer_window[0] 0 vs 64") != NULL, "%s", e.msg);
    resume_and_finish(p, ys, 2, N_STD);
    std_free(ys, N_STD);
    synth_free(&y0), synth_free(&y1);
}

Test(trace, h5py_checks_windows_and_version_1) {
    const char *py = python_with_h5py();
    if (!py) cr_skip_test("no python3 with h5py and numpy (Debian: apt-get install python3-h5py)");
    synth ys[N_STD];
    std_set(ys);
    const ap_trace_meta sm = swa_meta();
    char path[1200], cmd[4096], out[8192];
    path_in(path, sizeof path, "pyswa.h5");
    write_trace_meta(path, &sm, ys, N_STD, 0);
    snprintf(cmd, sizeof cmd, "%s '%s/tests/check_trace.py' --tol 1e-6 '%s' 2>&1", py,
             AP_SOURCE_DIR, path);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "check_trace.py failed: %s", out);

    /* A window narrower than the rows: the checker finds attention before it. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const int narrow[3] = {16, 0, 16};
    set_root_ints(path, "layer_window", narrow, 3);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 1, "rows wider than the window must fail: %s", out);
    cr_assert(strstr(out, "before the layer's window of 16") != NULL, "%s", out);

    /* Wrong length, then a negative entry. */
    const int two[2] = {0, 0}, neg[3] = {0, -1, 0};
    set_root_ints(path, "layer_window", two, 2);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "layer_window") != NULL, "%s", out);
    set_root_ints(path, "layer_window", neg, 3);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "negative") != NULL, "%s", out);

    /* Version 1 (no architecture, no layer_window) still conforms. */
    make_version_1(path);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "a version 1 trace must pass: %s", out);
    set_root_attr(path, "format_version", 3, NULL);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "format_version 3") != NULL, "%s", out);
    std_free(ys, N_STD);
}

Test(trace, cli_inspect_shows_windows) {
    const char *ap = cli();
    synth ys[N_STD];
    std_set(ys);
    const ap_trace_meta sm = swa_meta();
    char path[1200], cmd[4096];
    path_in(path, sizeof path, "cliswa.h5");
    write_trace_meta(path, &sm, ys, N_STD, 0);
    static char out[1 << 16];
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s' --json", ap, path);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "%s", out);
    cJSON *j = cJSON_Parse(out);
    cr_assert_not_null(j, "%s", out);
    cr_assert_str_eq(cJSON_GetObjectItem(j, "architecture")->valuestring, "gemma3");
    cJSON *lw = cJSON_GetObjectItem(j, "layer_window");
    cr_assert_eq(cJSON_GetArraySize(lw), 3);
    cr_assert_eq(cJSON_GetArrayItem(lw, 0)->valueint, 64);
    cr_assert_eq(cJSON_GetArrayItem(lw, 1)->valueint, 0);
    cr_assert_eq(cJSON_GetObjectItem(j, "n_full_layers")->valueint, 1);
    cJSON_Delete(j);
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s'", ap, path);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "gemma3; full in 1 of 3 layers (1), the others sliding window 64") !=
                  NULL,
              "%s", out);
    make_version_1(path);
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s' --json", ap, path);
    cr_assert_eq(run_cmd(cmd, out, sizeof out), 0, "%s", out);
    j = cJSON_Parse(out);
    cr_assert_not_null(j, "%s", out);
    cr_assert_eq(cJSON_GetObjectItem(j, "format_version")->valueint, 1);
    cr_assert_eq(cJSON_GetObjectItem(j, "n_full_layers")->valueint, 3);
    cJSON_Delete(j);
    std_free(ys, N_STD);
}
