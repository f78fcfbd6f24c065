/* Exports vs a plain PyTorch definition of the module
 * (scripts/check_export_torch.py) and the .pth importer
 * (scripts/import_pth.py). The fixtures in tests/fixtures/predictor are
 * regenerated with AP_REGEN_PREDICTOR_FIXTURE=1 ./test_export_torch
 * (see tests/fixtures/predictor/README.md). Python checks skip visibly when
 * no python with torch is found (ATTNPRED_REF_PYTHON or .venv/bin/python). */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/tolerance.h"
#include "common/util.h"
#include "train/predictor.h"
#include "train/runtime.h"
#include "train/safetensors.h"

#define FIX_DIR AP_SOURCE_DIR "/tests/fixtures/predictor"

typedef struct {
    int layer, N, H, W;
} io_case;

static const io_case k_unified[] = {{0, 4, 64, 24}, {0, 2, 64, 40}, {0, 3, 5, 7}, {0, 1, 64, 1}};
static const io_case k_grouped[] = {{0, 2, 64, 12}, {2, 2, 64, 12}, {1, 1, 3, 2}};

static uint64_t mix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Sparse attention-like rows: most blocks 0, some up to 1. */
static void fill(float *x, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) {
        double u = (double)(mix(&seed) >> 11) * 0x1.0p-53;
        x[i] = u < 0.25 ? (float)((double)(mix(&seed) >> 11) * 0x1.0p-53) : 0.0f;
    }
}

/* Inputs and attnpred's outputs for each case: x.K, y.K, layer.K, n_cases. */
static void write_io(const char *path, const ap_runtime *rt, const io_case *cs, int n,
                     uint64_t seed) {
    ap_st_writer *w = NULL;
    cr_assert_eq(ap_st_writer_create(&w, NULL), AP_OK);
    char key[32], val[32];
    for (int k = 0; k < n; k++) {
        size_t nx = (size_t)cs[k].N * cs[k].H * cs[k].W, ny = (size_t)cs[k].N * cs[k].W;
        float *x = malloc(sizeof(float) * nx), *y = malloc(sizeof(float) * ny);
        fill(x, nx, seed + (uint64_t)k);
        ap_err err;
        cr_assert_eq(ap_runtime_predict_batch(rt, cs[k].layer, x, cs[k].N, cs[k].H, cs[k].W, y, &err),
                     AP_OK, "%s", err.msg);
        int64_t sx[3] = {cs[k].N, cs[k].H, cs[k].W}, sy[2] = {cs[k].N, cs[k].W};
        snprintf(key, sizeof key, "x.%d", k);
        cr_assert_eq(ap_st_writer_add(w, key, "F32", 3, sx, x, NULL), AP_OK);
        snprintf(key, sizeof key, "y.%d", k);
        cr_assert_eq(ap_st_writer_add(w, key, "F32", 2, sy, y, NULL), AP_OK);
        snprintf(key, sizeof key, "layer.%d", k);
        snprintf(val, sizeof val, "%d", cs[k].layer);
        cr_assert_eq(ap_st_writer_meta(w, key, val, NULL), AP_OK);
        free(x);
        free(y);
    }
    snprintf(val, sizeof val, "%d", n);
    cr_assert_eq(ap_st_writer_meta(w, "n_cases", val, NULL), AP_OK);
    ap_err err;
    cr_assert_eq(ap_st_writer_write(w, path, &err), AP_OK, "%s", err.msg);
    ap_st_writer_free(w);
}

/* Export a seeded random predictor into dir/name.safetensors (+ .json) and
 * its io file dir/name_io.safetensors. */
static void make_export(const char *dir, const char *name, int grouped) {
    ap_pred_config c;
    ap_pred_config_default(&c);
    if (grouped) ap_pred_config_groups(&c, 3, 2);
    ap_predictor *p = NULL;
    cr_assert_eq(ap_predictor_create(&c, grouped ? 202 : 101, &p, NULL), AP_OK);
    char st[512], js[512], io[512];
    snprintf(st, sizeof st, "%s/%s.safetensors", dir, name);
    snprintf(js, sizeof js, "%s/%s.json", dir, name);
    snprintf(io, sizeof io, "%s/%s_io.safetensors", dir, name);
    ap_err err;
    cr_assert_eq(ap_pred_export(st, js, &c, ap_predictor_params(p, NULL), &err), AP_OK, "%s",
                 err.msg);
    ap_runtime *rt = NULL;
    cr_assert_eq(ap_runtime_load(st, &rt, &err), AP_OK, "%s", err.msg);
    if (grouped)
        write_io(io, rt, k_grouped, (int)(sizeof k_grouped / sizeof k_grouped[0]), 700);
    else
        write_io(io, rt, k_unified, (int)(sizeof k_unified / sizeof k_unified[0]), 500);
    ap_runtime_free(rt);
    ap_predictor_free(p);
}

/* Runtime predictions on io's inputs vs its stored outputs (max abs). */
static double compare_io(const char *export_path, const char *io_path) {
    ap_runtime *rt = NULL;
    ap_st_file *f = NULL;
    ap_err err;
    cr_assert_eq(ap_runtime_load(export_path, &rt, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_st_open(io_path, &f, &err), AP_OK, "%s", err.msg);
    int n = atoi(ap_st_meta(f, "n_cases"));
    cr_assert(n > 0);
    double worst = 0;
    for (int k = 0; k < n; k++) {
        char key[32];
        snprintf(key, sizeof key, "x.%d", k);
        const ap_st_tensor *x = ap_st_find(f, key);
        snprintf(key, sizeof key, "y.%d", k);
        const ap_st_tensor *y = ap_st_find(f, key);
        snprintf(key, sizeof key, "layer.%d", k);
        const char *ls = ap_st_meta(f, key);
        cr_assert(x && y && ls && x->ndim == 3 && y->numel == (size_t)(x->shape[0] * x->shape[2]));
        int N = (int)x->shape[0], H = (int)x->shape[1], W = (int)x->shape[2];
        float *xin = malloc(sizeof(float) * x->numel), *want = malloc(sizeof(float) * y->numel),
              *got = malloc(sizeof(float) * y->numel);
        memcpy(xin, x->data, sizeof(float) * x->numel);
        memcpy(want, y->data, sizeof(float) * y->numel);
        cr_assert_eq(ap_runtime_predict_batch(rt, atoi(ls), xin, N, H, W, got, &err), AP_OK, "%s",
                     err.msg);
        double e = ap_max_abs_err_f32(got, want, (long)y->numel);
        if (!(e <= worst)) worst = e;
        free(xin), free(want), free(got);
    }
    ap_st_free(f);
    ap_runtime_free(rt);
    return worst;
}

Test(export_torch, fixture_outputs_are_current) {
    if (getenv("AP_REGEN_PREDICTOR_FIXTURE")) {
        make_export(FIX_DIR, "unified", 0);
        make_export(FIX_DIR, "grouped", 1);
    }
    double e1 = compare_io(FIX_DIR "/unified.safetensors", FIX_DIR "/unified_io.safetensors");
    double e2 = compare_io(FIX_DIR "/grouped.safetensors", FIX_DIR "/grouped_io.safetensors");
    cr_assert(e1 <= AP_TOL_EXPORT_TORCH_ABS && e2 <= AP_TOL_EXPORT_TORCH_ABS,
              "attnpred's outputs on the committed fixture moved: %g %g", e1, e2);
}

static char g_python[1024];

/* A python that imports torch, or NULL. */
static const char *find_python(void) {
    const char *env = getenv("ATTNPRED_REF_PYTHON");
    if (env && *env)
        snprintf(g_python, sizeof g_python, "%s", env);
    else
        snprintf(g_python, sizeof g_python, "%s/.venv/bin/python", AP_SOURCE_DIR);
    if (!env && access(g_python, X_OK) != 0) return NULL;
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "'%s' -c 'import torch, numpy' >/dev/null 2>&1", g_python);
    return system(cmd) == 0 ? g_python : NULL;
}

static int run_py(const char *py, const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' '%s/scripts/check_export_torch.py' %s", py, AP_SOURCE_DIR, args);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

Test(export_torch, pytorch_module_matches_committed_fixtures) {
    const char *py = find_python();
    if (!py) cr_skip_test("no python with torch (set ATTNPRED_REF_PYTHON): export not checked");
    char args[2048];
    snprintf(args, sizeof args, "check --export '%s/unified.safetensors' --io '%s/unified_io.safetensors' --tol %g",
             FIX_DIR, FIX_DIR, AP_TOL_EXPORT_TORCH_ABS);
    cr_assert_eq(run_py(py, args), 0);
    snprintf(args, sizeof args, "check --export '%s/grouped.safetensors' --io '%s/grouped_io.safetensors' --tol %g",
             FIX_DIR, FIX_DIR, AP_TOL_EXPORT_TORCH_ABS);
    cr_assert_eq(run_py(py, args), 0);
}

Test(export_torch, pytorch_module_matches_a_fresh_export) {
    const char *py = find_python();
    if (!py) cr_skip_test("no python with torch (set ATTNPRED_REF_PYTHON): export not checked");
    char dir[] = "/tmp/ap_exp_XXXXXX", args[2048];
    cr_assert_not_null(mkdtemp(dir));
    make_export(dir, "grouped", 1);
    snprintf(args, sizeof args, "check --export '%s/grouped.safetensors' --io '%s/grouped_io.safetensors' --tol %g >/dev/null 2>&1",
             dir, dir, AP_TOL_EXPORT_TORCH_ABS);
    cr_assert_eq(run_py(py, args), 0);
    /* the checker itself can fail: a perturbed output must be caught */
    char io[600];
    snprintf(io, sizeof io, "%s/grouped_io.safetensors", dir);
    ap_st_file *f = NULL;
    cr_assert_eq(ap_st_open(io, &f, NULL), AP_OK);
    ap_st_writer *w = NULL;
    cr_assert_eq(ap_st_writer_create(&w, NULL), AP_OK);
    for (int i = 0; i < ap_st_count(f); i++) {
        const ap_st_tensor *t = ap_st_at(f, i);
        float *d = malloc(t->nbytes + 4);
        memcpy(d, t->data, t->nbytes);
        if (!strcmp(t->name, "y.1")) d[3] += 1e-3f;
        cr_assert_eq(ap_st_writer_add(w, t->name, "F32", t->ndim, t->shape, d, NULL), AP_OK);
        free(d);
    }
    static const char *keys[] = {"n_cases", "layer.0", "layer.1", "layer.2"};
    for (int i = 0; i < 4; i++) ap_st_writer_meta(w, keys[i], ap_st_meta(f, keys[i]), NULL);
    ap_st_free(f);
    cr_assert_eq(ap_st_writer_write(w, io, NULL), AP_OK);
    ap_st_writer_free(w);
    cr_assert_eq(run_py(py, args), 1, "a 1e-3 difference is reported");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

Test(export_torch, import_pth_then_runtime_equals_torch) {
    const char *py = find_python();
    if (!py) cr_skip_test("no python with torch (set ATTNPRED_REF_PYTHON): import not checked");
    char dir[] = "/tmp/ap_imp_XXXXXX", args[2048];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(args, sizeof args, "import-selftest --workdir '%s' >/dev/null", dir);
    cr_assert_eq(run_py(py, args), 0, "import self-test (see its stderr)");
    char conv[600], io[600];
    snprintf(conv, sizeof conv, "%s/converted.safetensors", dir);
    snprintf(io, sizeof io, "%s/torch_io.safetensors", dir);
    double e = compare_io(conv, io);
    cr_assert(e <= AP_TOL_EXPORT_TORCH_ABS, "runtime vs torch on the imported .pth: %g", e);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}
