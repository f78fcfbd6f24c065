/* safetensors writer/reader (every validation rule), checkpoints, the
 * runtime API and `attnpred export`. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/tolerance.h"
#include "common/util.h"
#include "train/checkpoint.h"
#include "train/predictor.h"
#include "train/runtime.h"
#include "train/safetensors.h"

static char *make_tmpdir(void) {
    char *d = strdup("/tmp/ap_st_XXXXXX");
    cr_assert_not_null(mkdtemp(d));
    return d;
}

static void rm_rf(const char *d) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    cr_assert_eq(system(cmd), 0);
}

static char *slurp(const char *path, size_t *n) {
    char *d = NULL;
    if (ap_read_file(path, &d, n, NULL) != AP_OK) return NULL;
    return d;
}

Test(safetensors, round_trip_alignment_and_metadata) {
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    ap_st_writer *w = NULL;
    cr_assert_eq(ap_st_writer_create(&w, NULL), AP_OK);
    float wt[144], b[16];
    double dd[4] = {1.5, -2.25, 3e100, 0};
    int64_t ii[3] = {-1, 1LL << 40, 7};
    uint8_t u8 = 200;
    for (int i = 0; i < 144; i++) wt[i] = (float)i * 0.25f - 3.0f;
    for (int i = 0; i < 16; i++) b[i] = -(float)i;
    int64_t s_w[4] = {16, 1, 3, 3}, s_b[1] = {16}, s_d[2] = {2, 2}, s_i[1] = {3}, s_e[2] = {0, 5};
    cr_assert_eq(ap_st_writer_add(w, "conv1.weight", "F32", 4, s_w, wt, NULL), AP_OK);
    cr_assert_eq(ap_st_writer_add(w, "conv1.bias", "F32", 1, s_b, b, NULL), AP_OK);
    cr_assert_eq(ap_st_writer_add(w, "z.scalar", "U8", 0, NULL, &u8, NULL), AP_OK);
    cr_assert_eq(ap_st_writer_add(w, "d", "F64", 2, s_d, dd, NULL), AP_OK);
    cr_assert_eq(ap_st_writer_add(w, "i", "I64", 1, s_i, ii, NULL), AP_OK);
    cr_assert_eq(ap_st_writer_add(w, "empty", "F32", 2, s_e, NULL, NULL), AP_OK);
    ap_err err;
    cr_assert_eq(ap_st_writer_add(w, "d", "F32", 1, s_b, b, &err), AP_ERR_ARG, "duplicate name");
    cr_assert_eq(ap_st_writer_add(w, "q", "F17", 1, s_b, b, &err), AP_ERR_ARG, "unknown dtype");
    cr_assert_eq(ap_st_writer_meta(w, "history", "64", NULL), AP_OK);
    cr_assert_eq(ap_st_writer_meta(w, "note", "x", NULL), AP_OK);
    cr_assert_eq(ap_st_writer_meta(w, "note", "quote \" and \\ ok", NULL), AP_OK);
    cr_assert_eq(ap_st_writer_write(w, path, &err), AP_OK, "%s", err.msg);
    ap_st_writer_free(w);
    ap_st_writer_free(NULL);

    size_t n;
    unsigned char *raw = (unsigned char *)slurp(path, &n);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)raw[i] << (8 * i);
    cr_assert_eq(hlen % 8, 0, "header padded to 8");
    cr_assert_eq(raw[8 + hlen - 1] == ' ' || raw[8 + hlen - 1] == '}', 1);
    /* order: 8-byte dtypes first (d, i), then 4-byte by name, then U8 */
    const char *hdr = (const char *)raw + 8;
    const char *pd = strstr(hdr, "\"d\""), *pi = strstr(hdr, "\"i\""),
               *pb = strstr(hdr, "\"conv1.bias\""), *pw = strstr(hdr, "\"conv1.weight\""),
               *pe = strstr(hdr, "\"empty\""), *pz = strstr(hdr, "\"z.scalar\"");
    cr_assert(pd && pi && pb && pw && pe && pz);
    cr_assert(pd < pi && pi < pb && pb < pw && pw < pe && pe < pz, "header order");
    free(raw);

    ap_st_file *f = NULL;
    cr_assert_eq(ap_st_open(path, &f, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_st_count(f), 6);
    const ap_st_tensor *t = ap_st_find(f, "conv1.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->ndim, 4);
    cr_assert_eq(t->shape[0], 16);
    cr_assert_eq(t->shape[3], 3);
    cr_assert_eq(memcmp(t->data, wt, sizeof wt), 0);
    const unsigned char *base = (const unsigned char *)ap_st_find(f, "d")->data;
    for (int i = 0; i < ap_st_count(f); i++) {
        const ap_st_tensor *u = ap_st_at(f, i);
        size_t off = (size_t)((const unsigned char *)u->data - base);
        cr_assert_eq(off % ap_st_dtype_size(u->dtype), 0, "%s aligned", u->name);
    }
    cr_assert_eq(memcmp(ap_st_find(f, "i")->data, ii, sizeof ii), 0);
    cr_assert_eq(*(const uint8_t *)ap_st_find(f, "z.scalar")->data, 200);
    cr_assert_eq(ap_st_find(f, "z.scalar")->ndim, 0);
    cr_assert_eq(ap_st_find(f, "empty")->numel, 0u);
    cr_assert_str_eq(ap_st_meta(f, "history"), "64");
    cr_assert_str_eq(ap_st_meta(f, "note"), "quote \" and \\ ok");
    cr_assert_null(ap_st_meta(f, "absent"));
    float d32[4];
    cr_assert_eq(ap_st_read_f32(f, "d", d32, 4, NULL), AP_OK);
    cr_assert_float_eq(d32[1], -2.25f, 0);
    cr_assert_eq(ap_st_read_f32(f, "i", d32, 3, &err), AP_ERR_UNSUPPORTED);
    cr_assert_eq(ap_st_read_f32(f, "d", d32, 3, &err), AP_ERR_FORMAT);
    ap_st_free(f);
    ap_st_free(NULL);
    rm_rf(dir);
    free(dir);
}

/* A file image: u64 header length, the header text, then `data` bytes. */
static unsigned char *image(const char *header, uint64_t claimed, size_t data, size_t *len) {
    size_t h = strlen(header);
    *len = 8 + h + data;
    unsigned char *b = calloc(1, *len);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(claimed >> (8 * i));
    memcpy(b + 8, header, h);
    return b;
}

static void expect_bad(const char *header, int64_t claimed, size_t data, const char *phrase) {
    size_t len;
    unsigned char *b = image(header, claimed < 0 ? strlen(header) : (uint64_t)claimed, data, &len);
    ap_st_file *f = NULL;
    ap_err err;
    ap_err_clear(&err);
    ap_status st = ap_st_parse(b, len, "bad.safetensors", &f, &err);
    cr_assert_eq(st, AP_ERR_FORMAT, "accepted: %s", header);
    cr_assert_null(f);
    cr_assert(strstr(err.msg, "bad.safetensors"), "names the file: %s", err.msg);
    cr_assert(strstr(err.msg, phrase), "'%s' not in: %s", phrase, err.msg);
    free(b);
}

#define T1 "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

Test(safetensors, every_validation_rule) {
    /* the good baseline parses */
    size_t len;
    unsigned char *b = image("{" T1 "}", strlen("{" T1 "}"), 8, &len);
    ap_st_file *f = NULL;
    cr_assert_eq(ap_st_parse(b, len, "ok", &f, NULL), AP_OK);
    ap_st_free(f);
    free(b);
    /* too short for the length prefix */
    ap_err err;
    cr_assert_eq(ap_st_parse("abc", 3, "bad.safetensors", &f, &err), AP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "too short"), "%s", err.msg);
    expect_bad("{" T1 "}", 200000000, 8, "limit");
    expect_bad("{" T1 "}", 4000, 8, "exceeds the file size");
    expect_bad("{\"a\":{\"dtype\":\"F32\",", -1, 8, "not well-formed JSON");
    expect_bad("[1,2]", -1, 0, "not a JSON object");
    expect_bad("{" T1 "} xx", -1, 8, "trailing bytes after the JSON");
    expect_bad("{" T1 "," T1 "}", -1, 8, "duplicate");
    expect_bad("{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8,
               "unknown dtype");
    expect_bad("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 8, "missing dtype");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", -1, 8,
               "shape entries");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", -1, 8,
               "shape entries");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", -1, 8, "shape must");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", -1, 8,
               "data_offsets span");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", -1, 8,
               "data_offsets must");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", -1, 8,
               "data_offsets must");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}",
               -1, 16, "gap");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               -1, 12, "overlap");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", -1, 12, "gap");
    expect_bad("{" T1 "}", -1, 12, "trailing bytes");
    expect_bad("{" T1 "}", -1, 4, "past the data buffer");
    expect_bad("{\"__metadata__\":{\"k\":3}," T1 "}", -1, 8, "not a string");
    expect_bad("{\"__metadata__\":[1]," T1 "}", -1, 8, "__metadata__ is not an object");
    expect_bad("{\"a\":[1]}", -1, 0, "not an object");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,2,3,4,5,6,7,8,9],\"data_offsets\":[0,8]}}",
               -1, 8, "dims");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
               "\"data_offsets\":[0,8]}}",
               -1, 8, "overflows");
}

Test(safetensors, open_names_the_file) {
    ap_st_file *f = NULL;
    ap_err err;
    cr_assert_eq(ap_st_open("/nonexistent/x.safetensors", &f, &err), AP_ERR_IO);
    cr_assert(strstr(err.msg, "/nonexistent/x.safetensors"), "%s", err.msg);
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/trunc.safetensors", dir);
    FILE *o = fopen(path, "wb");
    fwrite("\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":", 1, 13, o);
    fclose(o);
    cr_assert_eq(ap_st_open(path, &f, &err), AP_ERR_FORMAT);
    cr_assert(strstr(err.msg, path), "%s", err.msg);
    rm_rf(dir);
    free(dir);
}

static void write_small(const char *path, float v, ap_status want) {
    ap_st_writer *w = NULL;
    cr_assert_eq(ap_st_writer_create(&w, NULL), AP_OK);
    int64_t s[1] = {4};
    float d[4] = {v, v, v, v};
    cr_assert_eq(ap_st_writer_add(w, "t", "F32", 1, s, d, NULL), AP_OK);
    ap_err err;
    cr_assert_eq(ap_st_writer_write(w, path, &err), want, "%s", err.msg);
    ap_st_writer_free(w);
}

Test(safetensors, atomic_write_keeps_the_old_file) {
    char *dir = make_tmpdir(), path[512], tmp[600];
    snprintf(path, sizeof path, "%s/good.safetensors", dir);
    write_small(path, 1.0f, AP_OK);
    size_t n0, n1;
    char *before = slurp(path, &n0);
    /* block the temporary name with a directory: the write must fail early */
    ap_tmp_name(tmp, sizeof tmp, path);
    cr_assert_eq(mkdir(tmp, 0755), 0);
    write_small(path, 2.0f, AP_ERR_IO);
    char *after = slurp(path, &n1);
    cr_assert_eq(n0, n1);
    cr_assert_eq(memcmp(before, after, n0), 0, "the good file is untouched");
    rmdir(tmp);
    free(after);
    /* a nonexistent directory */
    write_small("/nonexistent_dir_ap/x.safetensors", 2.0f, AP_ERR_IO);
    /* a successful overwrite leaves no temporary behind */
    write_small(path, 3.0f, AP_OK);
    cr_assert(!ap_file_exists(tmp));
    ap_st_file *f = NULL;
    cr_assert_eq(ap_st_open(path, &f, NULL), AP_OK);
    cr_assert_float_eq(((const float *)ap_st_find(f, "t")->data)[0], 3.0f, 0);
    ap_st_free(f);
    free(before);
    rm_rf(dir);
    free(dir);
}

Test(checkpoint, round_trip_and_corruption) {
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/%s", dir, AP_CKPT_NAME_LAST);
    ap_ckpt_info info;
    memset(&info, 0, sizeof info);
    ap_pred_config_default(&info.cfg);
    ap_pred_config_groups(&info.cfg, 4, 2);
    info.epoch = 7;
    info.step = 12345;
    info.rng_state = 0xFEDCBA9876543210ull;
    info.best_metric = 0.8125;
    snprintf(info.metric_name, sizeof info.metric_name, "recovery");
    ap_predictor *p = NULL;
    cr_assert_eq(ap_predictor_create(&info.cfg, 1, &p, NULL), AP_OK);
    size_t n;
    const float *w = ap_predictor_params(p, &n);
    float *m = malloc(n * sizeof(float)), *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) m[i] = (float)i, v[i] = (float)(n - i);
    ap_err err;
    cr_assert_eq(ap_checkpoint_save(path, &info, w, m, v, n, "{\"lr\":0.001}", &err), AP_OK, "%s",
                 err.msg);
    ap_ckpt_info got;
    float *pw = NULL, *pm = NULL, *pv = NULL;
    char *tj = NULL;
    size_t gn = 0;
    cr_assert_eq(ap_checkpoint_load(path, &got, &pw, &pm, &pv, &gn, &tj, &err), AP_OK, "%s",
                 err.msg);
    cr_assert_eq(gn, n);
    cr_assert_eq(memcmp(pw, w, n * sizeof(float)), 0);
    cr_assert_eq(memcmp(pm, m, n * sizeof(float)), 0);
    cr_assert_eq(memcmp(pv, v, n * sizeof(float)), 0);
    cr_assert_eq(got.epoch, 7);
    cr_assert_eq(got.step, 12345);
    cr_assert_eq(got.rng_state, 0xFEDCBA9876543210ull);
    cr_assert_eq(got.best_metric, 0.8125);
    cr_assert_str_eq(got.metric_name, "recovery");
    cr_assert_str_eq(tj, "{\"lr\":0.001}");
    cr_assert_eq(got.cfg.n_models, 2);
    cr_assert_eq(got.cfg.layer_map[3], 1);
    free(pw), free(pm), free(pv), free(tj);

    /* wrong parameter count, non-finite parameters: refused, file kept */
    cr_assert_eq(ap_checkpoint_save(path, &info, w, m, v, n - 1, NULL, &err), AP_ERR_ARG);
    m[5] = NAN;
    cr_assert_eq(ap_checkpoint_save(path, &info, m, NULL, NULL, n, NULL, &err), AP_ERR_NUMERIC);
    cr_assert_eq(ap_checkpoint_load(path, &got, &pw, NULL, NULL, NULL, NULL, &err), AP_OK);
    free(pw);

    /* truncated file */
    size_t len;
    char *raw = slurp(path, &len);
    FILE *o = fopen(path, "wb");
    fwrite(raw, 1, len - 100, o);
    fclose(o);
    cr_assert_eq(ap_checkpoint_load(path, &got, &pw, NULL, NULL, NULL, NULL, &err), AP_ERR_FORMAT);
    cr_assert(strstr(err.msg, path), "names the file: %s", err.msg);
    cr_assert_null(pw);
    free(raw);

    /* a safetensors file that is not a checkpoint */
    write_small(path, 1.0f, AP_OK);
    cr_assert_eq(ap_checkpoint_load(path, &got, &pw, NULL, NULL, NULL, NULL, &err), AP_ERR_FORMAT);
    cr_assert(strstr(err.msg, "not an attnpred checkpoint"), "%s", err.msg);
    free(m), free(v);
    ap_predictor_free(p);
    rm_rf(dir);
    free(dir);
}

static void fill(float *x, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)(seed >> 8) * (1.0f / 16777216.0f) * 0.1f;
    }
}

Test(runtime, export_load_predict_equals_forward) {
    char *dir = make_tmpdir(), path[512], jpath[512];
    snprintf(path, sizeof path, "%s/p.safetensors", dir);
    snprintf(jpath, sizeof jpath, "%s/p.json", dir);
    for (int grouped = 0; grouped < 2; grouped++) {
        ap_pred_config c;
        ap_pred_config_default(&c);
        if (grouped) {
            c.history = 16;
            c.c1 = 8;
            c.c2 = 12;
            ap_pred_config_groups(&c, 5, 2);
        }
        ap_predictor *p = NULL;
        cr_assert_eq(ap_predictor_create(&c, 40 + grouped, &p, NULL), AP_OK);
        ap_err err;
        cr_assert_eq(ap_pred_export(path, jpath, &c, ap_predictor_params(p, NULL), &err), AP_OK,
                     "%s", err.msg);
        ap_st_file *f = NULL;
        cr_assert_eq(ap_st_open(path, &f, NULL), AP_OK);
        const char *n1 = grouped ? "layers.1.conv2.weight" : "conv2.weight";
        const char *n3 = grouped ? "layers.0.conv3.weight" : "conv3.weight";
        cr_assert_not_null(ap_st_find(f, n1), "%s", n1);
        cr_assert_eq(ap_st_find(f, n1)->shape[0], c.c2);
        cr_assert_eq(ap_st_find(f, n1)->shape[1], c.c1);
        cr_assert_eq(ap_st_find(f, n3)->ndim, 3);
        cr_assert_eq(ap_st_find(f, n3)->shape[1], c.c2);
        cr_assert_eq(ap_st_count(f), 6 * c.n_models);
        cr_assert_str_eq(ap_st_meta(f, "format"), "attnpred-predictor");
        cr_assert_str_eq(ap_st_meta(f, "layer_map"), grouped ? "[0,0,0,1,1]" : "[]");
        ap_st_free(f);
        size_t jl;
        char *js = slurp(jpath, &jl);
        cJSON *j = cJSON_Parse(js);
        cr_assert_not_null(j);
        cr_assert_eq(cJSON_GetObjectItem(j, "history")->valueint, c.history);
        cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "layer_map")), c.n_layers);
        cJSON_Delete(j);
        free(js);

        ap_runtime *rt = NULL;
        cr_assert_eq(ap_runtime_load(path, &rt, &err), AP_OK, "%s", err.msg);
        const ap_pred_config *rc = ap_runtime_config(rt);
        cr_assert_eq(rc->history, c.history);
        cr_assert_eq(rc->n_models, c.n_models);
        cr_assert_eq(memcmp(rc->layer_map, c.layer_map, sizeof c.layer_map), 0);
        enum { N = 3, H = 16, W = 13 };
        float x[N * H * W], ya[N * W], yb[N * W];
        fill(x, N * H * W, 5);
        for (int layer = 0; layer < 5; layer++) {
            int m = ap_predictor_model_of_layer(p, layer);
            cr_assert_eq(ap_runtime_predict_batch(rt, layer, x, N, H, W, ya, &err), AP_OK, "%s",
                         err.msg);
            cr_assert_eq(ap_predictor_forward(p, m, x, N, H, W, yb, NULL), AP_OK);
            cr_assert_eq(memcmp(ya, yb, sizeof ya), 0, "layer %d", layer);
            cr_assert_eq(ap_runtime_predict(rt, layer, x + H * W, H, W, ya, NULL), AP_OK);
            cr_assert_eq(memcmp(ya, yb + W, sizeof(float) * W), 0);
        }
        if (grouped)
            cr_assert_eq(ap_runtime_predict(rt, 5, x, H, W, ya, &err), AP_ERR_ARG);
        ap_runtime_free(rt);
        ap_predictor_free(p);
    }
    ap_runtime_free(NULL);
    rm_rf(dir);
    free(dir);
}

/* Files that are valid safetensors but not a valid predictor. */
Test(runtime, rejects_wrong_tensors) {
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/p.safetensors", dir);
    ap_pred_config c;
    ap_pred_config_default(&c);
    ap_predictor *p = NULL;
    cr_assert_eq(ap_predictor_create(&c, 1, &p, NULL), AP_OK);
    const float *w = ap_predictor_params(p, NULL);
    const char *metas[][2] = {{"format", "attnpred-predictor"}, {"version", "1"}, {"history", "64"},
                              {"block", "16"}, {"c1", "16"}, {"c2", "32"}, {"n_models", "1"},
                              {"layer_map", "[]"}};
    struct {
        const char *drop, *rename_to, *fmt;
        int bad_shape;
        const char *phrase;
    } cases[] = {
        {"conv2.bias", NULL, NULL, 0, "conv2.bias is missing"},
        {NULL, NULL, NULL, 1, "conv1.weight has the wrong dtype or shape"},
        {NULL, "extra", NULL, 0, "unknown tensor"},
        {NULL, NULL, "something-else", 0, "format"},
    };
    ap_pred_layout L;
    ap_pred_layout_of(&c, &L);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ap_st_writer *sw = NULL;
        cr_assert_eq(ap_st_writer_create(&sw, NULL), AP_OK);
        struct {
            const char *name;
            size_t off;
            int nd;
            int64_t s[4];
        } t[] = {{"conv1.weight", L.w1, 4, {16, 1, 3, 3}}, {"conv1.bias", L.b1, 1, {16}},
                 {"conv2.weight", L.w2, 4, {32, 16, 3, 3}}, {"conv2.bias", L.b2, 1, {32}},
                 {"conv3.weight", L.w3, 3, {1, 32, 1}},   {"conv3.bias", L.b3, 1, {1}}};
        if (cases[k].bad_shape) {
            t[0].nd = 2;
            t[0].s[0] = 16;
            t[0].s[1] = 9;
        }
        for (int i = 0; i < 6; i++)
            if (!cases[k].drop || strcmp(cases[k].drop, t[i].name))
                cr_assert_eq(ap_st_writer_add(sw, t[i].name, "F32", t[i].nd, t[i].s, w + t[i].off,
                                              NULL),
                             AP_OK);
        if (cases[k].rename_to) {
            int64_t s1[1] = {1};
            cr_assert_eq(ap_st_writer_add(sw, cases[k].rename_to, "F32", 1, s1, w, NULL), AP_OK);
        }
        for (int i = 0; i < 8; i++)
            ap_st_writer_meta(sw, metas[i][0], i == 0 && cases[k].fmt ? cases[k].fmt : metas[i][1],
                              NULL);
        cr_assert_eq(ap_st_writer_write(sw, path, NULL), AP_OK);
        ap_st_writer_free(sw);
        ap_runtime *rt = NULL;
        ap_err err;
        cr_assert_eq(ap_runtime_load(path, &rt, &err), AP_ERR_FORMAT, "case %zu", k);
        cr_assert_null(rt);
        cr_assert(strstr(err.msg, path) && strstr(err.msg, cases[k].phrase), "case %zu: %s", k,
                  err.msg);
    }
    ap_predictor_free(p);
    rm_rf(dir);
    free(dir);
}

/* Found by tests/fuzz/fuzz_safetensors: the predictor (sized by the metadata
 * alone) was allocated and initialized before the tensors were checked
 * against the metadata, so an 876-byte export claiming c1 = c2 = 4096 made
 * `attnpred inspect --predictor` take 750 MB before refusing it (155 GB with
 * 256 models). Now the tensors are checked first. */
Test(runtime, checks_tensors_before_allocating) {
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/p.safetensors", dir);
    ap_pred_config c;
    ap_pred_config_default(&c);
    ap_predictor *p = NULL;
    cr_assert_eq(ap_predictor_create(&c, 1, &p, NULL), AP_OK);
    cr_assert_eq(ap_pred_export(path, NULL, &c, ap_predictor_params(p, NULL), NULL), AP_OK);
    ap_predictor_free(p);
    ap_st_file *f = NULL;
    cr_assert_eq(ap_st_open(path, &f, NULL), AP_OK);
    /* The same tensors, the metadata now claiming 2048 channels (151 MB). */
    ap_st_writer *w = NULL;
    cr_assert_eq(ap_st_writer_create(&w, NULL), AP_OK);
    for (int i = 0; i < ap_st_count(f); i++) {
        const ap_st_tensor *t = ap_st_at(f, i);
        cr_assert_eq(ap_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, NULL), AP_OK);
    }
    const char *keys[] = {"format", "version", "history", "block", "n_models", "layer_map"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        cr_assert_eq(ap_st_writer_meta(w, keys[k], ap_st_meta(f, keys[k]), NULL), AP_OK);
    cr_assert_eq(ap_st_writer_meta(w, "c1", "2048", NULL), AP_OK);
    cr_assert_eq(ap_st_writer_meta(w, "c2", "2048", NULL), AP_OK);
    cr_assert_eq(ap_st_writer_write(w, path, NULL), AP_OK);
    ap_st_writer_free(w);
    ap_st_free(f);
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    ap_runtime *rt = NULL;
    ap_err err;
    cr_assert_eq(ap_runtime_load(path, &rt, &err), AP_ERR_FORMAT);
    getrusage(RUSAGE_SELF, &after);
    cr_assert_null(rt);
    cr_assert(strstr(err.msg, "conv1.weight has the wrong dtype or shape"), "%s", err.msg);
    cr_assert_lt(after.ru_maxrss - before.ru_maxrss, 64 * 1024, "peak RSS grew by %ld KB",
                 after.ru_maxrss - before.ru_maxrss);
    rm_rf(dir);
    free(dir);
}

/* ---- the CLI ---- */

static int run_cli(const char *args, const char *err_file) {
    const char *cli = getenv("AP_CLI");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' %s >/dev/null 2>'%s'", cli, args, err_file);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

Test(export_cli, export_force_and_corrupt_checkpoint) {
    if (!getenv("AP_CLI")) cr_skip_test("AP_CLI is not set (run through ctest)");
    char *dir = make_tmpdir(), ck[512], out[512], js[512], errf[512], args[1600];
    snprintf(ck, sizeof ck, "%s/%s", dir, AP_CKPT_NAME_BEST);
    snprintf(out, sizeof out, "%s/p.safetensors", dir);
    snprintf(js, sizeof js, "%s/p.json", dir);
    snprintf(errf, sizeof errf, "%s/stderr.txt", dir);
    ap_ckpt_info info;
    memset(&info, 0, sizeof info);
    ap_pred_config_default(&info.cfg);
    ap_pred_config_per_layer(&info.cfg, 3);
    info.epoch = 3;
    ap_predictor *p = NULL;
    cr_assert_eq(ap_predictor_create(&info.cfg, 77, &p, NULL), AP_OK);
    size_t n;
    const float *w = ap_predictor_params(p, &n);
    cr_assert_eq(ap_checkpoint_save(ck, &info, w, NULL, NULL, n, NULL, NULL), AP_OK);

    snprintf(args, sizeof args, "export --run '%s' --out '%s'", dir, out);
    cr_assert_eq(run_cli(args, errf), 0);
    cr_assert(ap_file_exists(js), "JSON config beside the export");
    ap_runtime *rt = NULL;
    ap_err err;
    cr_assert_eq(ap_runtime_load(out, &rt, &err), AP_OK, "%s", err.msg);
    enum { H = 64, W = 10 };
    float x[H * W], ya[W], yb[W];
    fill(x, H * W, 3);
    cr_assert_eq(ap_runtime_predict(rt, 2, x, H, W, ya, NULL), AP_OK);
    cr_assert_eq(ap_predictor_forward(p, 2, x, 1, H, W, yb, NULL), AP_OK);
    cr_assert_eq(memcmp(ya, yb, sizeof ya), 0);
    ap_runtime_free(rt);
    ap_st_file *f = NULL;
    cr_assert_eq(ap_st_open(out, &f, NULL), AP_OK);
    cr_assert_not_null(ap_st_find(f, "layers.2.conv1.weight"));
    ap_st_free(f);

    size_t n0, n1;
    char *before = slurp(out, &n0);
    cr_assert_eq(run_cli(args, errf), 1, "exists without --force");
    /* corrupt the checkpoint: exit 1, the file named, the export untouched */
    size_t len;
    char *raw = slurp(ck, &len);
    raw[8] = '#'; /* the JSON header no longer parses */
    FILE *o = fopen(ck, "wb");
    fwrite(raw, 1, len, o);
    fclose(o);
    free(raw);
    snprintf(args, sizeof args, "export --run '%s' --out '%s' --force", dir, out);
    cr_assert_eq(run_cli(args, errf), 1);
    size_t el;
    char *emsg = slurp(errf, &el);
    cr_assert(strstr(emsg, ck), "stderr names the checkpoint: %s", emsg);
    free(emsg);
    char *after = slurp(out, &n1);
    cr_assert(n0 == n1 && !memcmp(before, after, n0), "good export untouched");
    free(before), free(after);
    /* truncated checkpoint */
    cr_assert_eq(truncate(ck, 40), 0);
    cr_assert_eq(run_cli(args, errf), 1);
    emsg = slurp(errf, &el);
    cr_assert(strstr(emsg, ck), "%s", emsg);
    free(emsg);
    /* usage errors */
    cr_assert_eq(run_cli("export --out x.safetensors", errf), 2);
    snprintf(args, sizeof args, "export --run '%s/none' --out '%s/q.safetensors'", dir, dir);
    cr_assert_eq(run_cli(args, errf), 1);
    ap_predictor_free(p);
    rm_rf(dir);
    free(dir);
}
