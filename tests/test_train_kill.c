/* Training under random SIGKILLs, the way tests/test_trace.c treats the trace
 * writer: a child runs ap_train_run on a tiny synthetic trace and is killed
 * after a seeded random delay (before the run directory exists, mid-epoch,
 * while a checkpoint, log or plot is being written); then
 *  - every file of the run directory under its final name is complete:
 *    last.safetensors and best.safetensors load and hold exactly what an
 *    uninterrupted run held after that epoch, config.json and log.json parse,
 *    the plots decode; only *.tmp.PID files may be cut;
 *  - resuming (--resume from last.safetensors, or a fresh --force start when
 *    there is none, as scripts/main.sh does), possibly killed again, ends with
 *    last.safetensors and best.safetensors equal bit for bit (parameters, Adam
 *    moments, step, RNG state, best metric) to an uninterrupted run's.
 * Kills at random times seldom land right beside a commit (each file goes in
 * by one rename of a complete temporary file), so further iterations kill the
 * child just before or just after its k-th rename (k seeded), through a
 * rename() defined here, which the static library's calls resolve to. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "helpers/png_probe.h"
#include "helpers/synth_model.h"
#include "helpers/synth_trace.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

enum { EPOCHS = 3, N_RANDOM = 50, N_AT_RENAME = 16 };

/* ------------------------------------------------- kill at the k-th rename -- */

static int g_kill_rename;  /* child only: raise SIGKILL at this rename (1-based); 0 = off */
static int g_kill_after;   /* 1: just after it, 0: just before it */
static int g_renames;

int rename(const char *from, const char *to) {
    int k = g_kill_rename ? ++g_renames : 0;
    if (k && k == g_kill_rename && !g_kill_after) raise(SIGKILL);
    int rc = renameat(AT_FDCWD, from, AT_FDCWD, to);
    if (k && k == g_kill_rename && g_kill_after) raise(SIGKILL);
    return rc;
}

/* ----------------------------------------------------------------- setup -- */

static char g_trace[512], g_base[512];
static const char *g_traces[1];

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[1200];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static void setup(void) {
    ap_synth_tmp_path(g_trace, sizeof g_trace, "trainkill", ".h5");
    ap_synth_tmp_path(g_base, sizeof g_base, "trainkill", ".d");
    cr_assert_eq(mkdir(g_base, 0755), 0);
    ap_synth_trace_opts so;
    ap_synth_trace_opts_default(&so);
    ap_err err;
    cr_assert_eq(ap_synth_trace_write(g_trace, &so, &err), AP_OK, "%s", err.msg);
}

static void teardown(void) {
    unlink(g_trace);
    rm_tree(g_base);
}

/* tests/test_train.c's small configuration, a little smaller. threads 2: the
 * trainer's resume is bit-exact with threads too. */
static ap_train_opts small_opts(const char *run) {
    ap_train_opts o;
    ap_train_opts_default(&o);
    g_traces[0] = g_trace;
    o.traces = g_traces;
    o.n_traces = 1;
    o.run_dir = run;
    o.epochs = EPOCHS;
    o.batch_size = 64;
    o.lr = 3e-3f;
    o.warmup_steps = 5;
    o.history = 16;
    o.val_fraction = 0.34;
    o.max_train_samples = 256;
    o.max_val_samples = 256;
    o.budgets[0] = 192;
    o.budgets[1] = 256;
    o.n_budgets = 2;
    o.threads = 2;
    o.device = AP_DEV_CPU;
    o.seed = 3;
    o.log = NULL;
    o.progress = 0;
    return o;
}

/* ----------------------------------------------------------- checkpoints -- */

typedef struct {
    ap_ckpt_info info;
    float *p, *m, *v;
    size_t n;
} ckpt;

static int ckpt_load(const char *path, ckpt *c, ap_err *err) {
    memset(c, 0, sizeof *c);
    return ap_checkpoint_load(path, &c->info, &c->p, &c->m, &c->v, &c->n, NULL, err);
}

static void ckpt_free(ckpt *c) {
    free(c->p);
    free(c->m);
    free(c->v);
    memset(c, 0, sizeof *c);
}

/* Everything training continues from, bit for bit (not the log text inside,
 * which holds timings). NULL when equal, else what differs. */
static const char *ckpt_diff(const ckpt *a, const ckpt *b) {
    if (a->info.epoch != b->info.epoch) return "epoch";
    if (a->info.step != b->info.step) return "Adam step";
    if (a->info.rng_state != b->info.rng_state) return "RNG state";
    if (memcmp(&a->info.best_metric, &b->info.best_metric, sizeof(double))) return "best metric";
    if (a->n != b->n) return "parameter count";
    if (memcmp(a->p, b->p, a->n * sizeof(float))) return "parameters";
    if (!a->m || !b->m || memcmp(a->m, b->m, a->n * sizeof(float))) return "Adam m";
    if (!a->v || !b->v || memcmp(a->v, b->v, a->n * sizeof(float))) return "Adam v";
    return NULL;
}

/* ------------------------------------------------------------ child runs -- */

/* Run ap_train_run in a child, killed after delay_us (< 0: never) or at its
 * kill_rename-th rename. Returns 1 when it was killed, 0 when it finished;
 * asserts it did not fail on its own. */
static int child_run(const ap_train_opts *o, long delay_us, int kill_rename, int kill_after,
                     double *wall) {
    fflush(NULL);
    double t0 = ap_now_seconds();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        g_kill_rename = kill_rename;
        g_kill_after = kill_after;
        g_renames = 0;
        ap_err e;
        _exit(ap_train_run(o, NULL, &e) == AP_OK ? 0 : 3);
    }
    if (delay_us >= 0) {
        usleep((useconds_t)delay_us);
        kill(pid, SIGKILL);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    if (wall) *wall = ap_now_seconds() - t0;
    if (WIFSIGNALED(status)) {
        cr_assert_eq(WTERMSIG(status), SIGKILL, "child died of signal %d", WTERMSIG(status));
        return 1;
    }
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the run failed on its own (exit %d)",
              WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
}

/* Continue a run as scripts/main.sh does: --resume when last.safetensors is
 * there, else start over with --force. */
static ap_train_opts continue_opts(const char *run) {
    ap_train_opts o = small_opts(run);
    char p[1300];
    snprintf(p, sizeof p, "%s/%s", run, AP_CKPT_NAME_LAST);
    o.resume = ap_file_exists(p);
    o.force = !o.resume;
    return o;
}

/* ------------------------------------------------------ what a kill left -- */

typedef struct {
    const char *name;
    int n;
} tally;

static void count(tally *t, int max, const char *name) {
    for (int i = 0; i < max; i++) {
        if (!t[i].name) {
            t[i].name = name;
            t[i].n = 1;
            return;
        }
        if (!strcmp(t[i].name, name)) {
            t[i].n++;
            return;
        }
    }
}

static cJSON *parse_json_file(const char *path) {
    char *text = NULL;
    size_t n = 0;
    ap_err err;
    if (ap_read_file(path, &text, &n, &err) != AP_OK) return NULL;
    cJSON *j = cJSON_ParseWithLength(text, n);
    free(text);
    return j;
}

/* Check every file of the run directory (ref[e]: the uninterrupted run's
 * last.safetensors after epoch e) and say where the kill landed. */
static const char *check_run_dir(const char *run, ckpt ref[EPOCHS + 1], const char *what) {
    DIR *d = opendir(run);
    if (!d) return "before the run directory";
    int last_epoch = -1, best_epoch = -1, log_epochs = -1, n_tmp = 0;
    const char *tmp_kind = NULL;
    struct dirent *e;
    char p[1200];
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (!strcmp(name, ".") || !strcmp(name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", run, name);
        if (strstr(name, ".tmp.")) { /* a cut write: never read by anyone */
            n_tmp++;
            tmp_kind = strstr(name, ".safetensors") ? "while writing a checkpoint"
                       : strstr(name, ".png")       ? "while writing a plot"
                                                    : "while writing config/log JSON";
            continue;
        }
        if (!strcmp(name, AP_CKPT_NAME_LAST) || !strcmp(name, AP_CKPT_NAME_BEST)) {
            ckpt c;
            ap_err err;
            cr_assert_eq(ckpt_load(p, &c, &err), AP_OK, "%s: %s: a complete-looking checkpoint "
                         "does not load: %s", what, name, err.msg);
            int ep = c.info.epoch;
            cr_assert(ep >= 1 && ep <= EPOCHS, "%s: %s: epoch %d", what, name, ep);
            /* best after epoch ep was saved from the same state as last. */
            const char *diff = ckpt_diff(&c, &ref[ep]);
            cr_assert_null(diff, "%s: %s (epoch %d) differs from the uninterrupted run's in its %s",
                           what, name, ep, diff);
            ckpt_free(&c);
            if (!strcmp(name, AP_CKPT_NAME_LAST))
                last_epoch = ep;
            else
                best_epoch = ep;
        } else if (!strcmp(name, "config.json") || !strcmp(name, "log.json")) {
            cJSON *j = parse_json_file(p);
            cr_assert_not_null(j, "%s: %s does not parse", what, name);
            if (!strcmp(name, "log.json")) {
                cJSON *a = cJSON_GetObjectItem(j, "epochs");
                cr_assert(cJSON_IsArray(a), "%s: log.json without epochs", what);
                log_epochs = cJSON_GetArraySize(a);
            }
            cJSON_Delete(j);
        } else if (!strcmp(name, "curves.png") || !strcmp(name, "recovery.png")) {
            ap_png_image im;
            char msg[300];
            cr_assert_eq(ap_png_read(p, &im, msg, sizeof msg), 0, "%s: %s: %s", what, name, msg);
            ap_png_free(&im);
        } else {
            cr_assert_fail("%s: unexpected file %s in the run directory", what, name);
        }
    }
    closedir(d);
    /* The order of the commits of an epoch: best (when better), last, log,
     * plots. */
    if (best_epoch > 0 && last_epoch > 0)
        cr_assert(best_epoch <= last_epoch + 1, "%s: best at epoch %d, last at %d", what,
                  best_epoch, last_epoch);
    if (log_epochs >= 0 && last_epoch > 0)
        cr_assert(log_epochs == last_epoch || log_epochs == last_epoch - 1,
                  "%s: log.json has %d epochs, last.safetensors %d", what, log_epochs, last_epoch);
    if (n_tmp) return tmp_kind;
    if (last_epoch < 0) return best_epoch > 0 ? "between best and last (epoch 1)" : "in epoch 1";
    if (best_epoch == last_epoch + 1) return "between best and last";
    if (log_epochs == last_epoch - 1) return "between last and log.json";
    if (last_epoch == EPOCHS) return "after the last checkpoint";
    return "in epochs 2..N";
}

/* ------------------------------------------------------------------ test -- */

TestSuite(train_kill, .init = setup, .fini = teardown, .timeout = 600);

Test(train_kill, resume_after_random_kills_equals_uninterrupted) {
    char run[1200];
    ckpt ref[EPOCHS + 1], best_ref, c;
    ap_err err;
    memset(ref, 0, sizeof ref);

    /* The uninterrupted run: its time sets the range of the kill delays. */
    snprintf(run, sizeof run, "%s/ref", g_base);
    ap_train_opts o = small_opts(run);
    double wall = 0.0;
    cr_assert_eq(child_run(&o, -1, 0, 0, &wall), 0);
    snprintf(run, sizeof run, "%s/ref/%s", g_base, AP_CKPT_NAME_LAST);
    cr_assert_eq(ckpt_load(run, &ref[EPOCHS], &err), AP_OK, "%s", err.msg);
    snprintf(run, sizeof run, "%s/ref/%s", g_base, AP_CKPT_NAME_BEST);
    cr_assert_eq(ckpt_load(run, &best_ref, &err), AP_OK, "%s", err.msg);
    /* Its state after every epoch: the same run stopped after each one. */
    snprintf(run, sizeof run, "%s/steps", g_base);
    for (int ep = 1; ep < EPOCHS; ep++) {
        o = small_opts(run);
        o.resume = ep > 1;
        o.stop_after = 1;
        cr_assert_eq(ap_train_run(&o, NULL, &err), AP_OK, "%s", err.msg);
        char p[1300];
        snprintf(p, sizeof p, "%s/%s", run, AP_CKPT_NAME_LAST);
        cr_assert_eq(ckpt_load(p, &ref[ep], &err), AP_OK, "%s", err.msg);
        cr_assert_eq(ref[ep].info.epoch, ep);
    }
    rm_tree(run);
    long range_us = (long)(wall * 1e6);

    tally where[32];
    memset(where, 0, sizeof where);
    uint64_t rng = 20240615;
    int kills = 0, tmp_left = 0;
    double t_start = ap_now_seconds();
    for (int it = 0; it < N_RANDOM + N_AT_RENAME; it++) {
        char what[64];
        snprintf(run, sizeof run, "%s/it%d", g_base, it);
        /* One or two killed runs (the second one resumes what the first
         * left), then one run to the end. */
        int n_kill = 1 + (int)(rng_next(&rng) % 2);
        for (int k = 0; k < n_kill; k++) {
            snprintf(what, sizeof what, "iteration %d, kill %d", it, k + 1);
            o = continue_opts(run);
            int killed;
            if (it < N_RANDOM) {
                /* one kill in 8 early: before the run directory appears */
                long range = rng_next(&rng) % 8 ? range_us : range_us / 20;
                killed = child_run(&o, (long)(rng_next(&rng) % (uint64_t)(range + 1)), 0, 0, NULL);
            } else {
                /* ~15 commits a run: config, then per epoch best?, last, log,
                 * two plots */
                int at = 1 + (int)(rng_next(&rng) % 16);
                killed = child_run(&o, -1, at, (int)(rng_next(&rng) % 2), NULL);
            }
            if (!killed) {
                count(where, 32, "finished before the kill");
                continue;
            }
            kills++;
            count(where, 32, check_run_dir(run, ref, what));
        }
        snprintf(what, sizeof what, "iteration %d, end", it);
        o = continue_opts(run);
        cr_assert_eq(child_run(&o, -1, 0, 0, NULL), 0);
        char p[1300];
        snprintf(p, sizeof p, "%s/%s", run, AP_CKPT_NAME_LAST);
        cr_assert_eq(ckpt_load(p, &c, &err), AP_OK, "%s: %s", what, err.msg);
        const char *diff = ckpt_diff(&c, &ref[EPOCHS]);
        cr_assert_null(diff, "%s: last.safetensors differs from the uninterrupted run's in its %s",
                       what, diff);
        ckpt_free(&c);
        snprintf(p, sizeof p, "%s/%s", run, AP_CKPT_NAME_BEST);
        cr_assert_eq(ckpt_load(p, &c, &err), AP_OK, "%s: %s", what, err.msg);
        diff = ckpt_diff(&c, &best_ref);
        cr_assert_null(diff, "%s: best.safetensors differs from the uninterrupted run's in its %s",
                       what, diff);
        ckpt_free(&c);
        /* Every file of the finished run is whole, and only cut temporaries
         * of killed writes remain beside them. */
        check_run_dir(run, ref, what);
        DIR *d = opendir(run);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) tmp_left += strstr(e->d_name, ".tmp.") != NULL;
        if (d) closedir(d);
        rm_tree(run);
    }
    cr_assert_geq(kills, 50, "only %d kills landed", kills);
    fprintf(stderr, "train_kill: %d kills in %.1f s (a run: %.2f s); %d cut temporaries left "
            "behind; where the kills landed:\n", kills, ap_now_seconds() - t_start, wall, tmp_left);
    for (int i = 0; i < 32 && where[i].name; i++)
        fprintf(stderr, "  %-34s %d\n", where[i].name, where[i].n);
    for (int ep = 0; ep <= EPOCHS; ep++) ckpt_free(&ref[ep]);
    ckpt_free(&best_ref);
}
