/* Plot rendering: each image is written to a fresh temporary directory, read
 * back with libpng's simplified API and checked for size, series colours,
 * title text, heatmap colours, and for the error paths (bad arguments, an
 * unwritable destination that must not leave a temporary file behind). */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/plot.h"

typedef struct {
    unsigned char *px; /* RGB */
    int w, h;
} image;

static char g_dir[1024];

static void make_dir(void) {
    const char *t = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/ap_plot_XXXXXX", t && *t ? t : "/tmp");
    cr_assert_not_null(mkdtemp(g_dir), "mkdtemp failed");
}

/* Remove the directory, its files and one level of subdirectories. */
static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[2048];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            remove_tree(p);
        else
            remove(p);
    }
    closedir(d);
    rmdir(dir);
}

static void clean_dir(void) { remove_tree(g_dir); }

TestSuite(plot, .init = make_dir, .fini = clean_dir);

static void out_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", g_dir, name);
}

static image read_png(const char *path) {
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    cr_assert(png_image_begin_read_from_file(&pi, path), "cannot read %s: %s", path, pi.message);
    pi.format = PNG_FORMAT_RGB;
    image im = {malloc(PNG_IMAGE_SIZE(pi)), (int)pi.width, (int)pi.height};
    cr_assert_not_null(im.px);
    cr_assert(png_image_finish_read(&pi, NULL, im.px, 0, NULL), "decode %s: %s", path,
              pi.message);
    return im;
}

static const unsigned char *pixel(const image *im, int x, int y) {
    return im->px + ((size_t)y * (size_t)im->w + (size_t)x) * 3;
}

/* Pixels exactly equal to rgb inside [x0,x1) x [y0,y1). */
static long count_color(const image *im, const unsigned char rgb[3], int x0, int y0, int x1,
                        int y1) {
    long n = 0;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) n += memcmp(pixel(im, x, y), rgb, 3) == 0;
    return n;
}

static long count_dark(const image *im, int x0, int y0, int x1, int y1) {
    long n = 0;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            const unsigned char *p = pixel(im, x, y);
            n += p[0] < 90 && p[1] < 90 && p[2] < 90;
        }
    return n;
}

/* Entries in dir other than "." and "..". */
static int dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static int has_tmp_file(const char *dir) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) found |= strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return found;
}

enum { N = 120 };

Test(plot, lines_size_colours_and_title) {
    static double x[N], y0[N], y1[N], y2[N];
    for (int i = 0; i < N; i++) {
        x[i] = i;
        y0[i] = exp(-i / 30.0);
        y1[i] = 0.5 + 0.3 * sin(i / 10.0);
        y2[i] = i / (double)N;
    }
    ap_plot_series s[3] = {{"train", x, y0, N}, {"val", x, y1, N}, {"ramp", x, y2, N}};
    ap_plot_opts o = {.title = "Loss Curves", .xlabel = "step", .ylabel = "loss",
                      .width = 640, .height = 400};
    char path[1200];
    out_path(path, sizeof path, "lines.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_lines_png(path, &o, s, 3, &err), AP_OK, "%s", err.msg);
    cr_assert_not(has_tmp_file(g_dir));
    image im = read_png(path);
    cr_assert_eq(im.w, 640);
    cr_assert_eq(im.h, 400);
    for (int i = 0; i < 3; i++) {
        unsigned char c[3];
        ap_plot_palette_color(i, c);
        /* Far more than the legend sample alone (20x2 px): the line itself. */
        long n = count_color(&im, c, 0, 0, im.w, im.h);
        cr_assert_gt(n, 200, "series %d colour: %ld pixels", i, n);
    }
    /* Corners are background. */
    unsigned char white[3] = {255, 255, 255};
    cr_assert_eq(memcmp(pixel(&im, 0, 0), white, 3), 0);
    cr_assert_eq(memcmp(pixel(&im, im.w - 1, im.h - 1), white, 3), 0);
    /* The title band holds dark glyph pixels, centred. */
    cr_assert_gt(count_dark(&im, im.w / 4, 0, 3 * im.w / 4, 30), 50);
    free(im.px);
}

Test(plot, no_title_leaves_top_band_blank) {
    double x[3] = {1, 2, 3}, y[3] = {1, 3, 2};
    ap_plot_series s = {"a", x, y, 3};
    ap_plot_opts o = {.width = 400, .height = 300};
    char path[1200];
    out_path(path, sizeof path, "notitle.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_lines_png(path, &o, &s, 1, &err), AP_OK, "%s", err.msg);
    image im = read_png(path);
    cr_assert_eq(count_dark(&im, 0, 0, im.w, 8), 0);
    free(im.px);
}

Test(plot, default_size_and_null_opts) {
    double y[4] = {3, 1, 4, 1};
    ap_plot_series s = {NULL, NULL, y, 4}; /* x = index, label defaulted */
    char path[1200];
    out_path(path, sizeof path, "default.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_lines_png(path, NULL, &s, 1, &err), AP_OK, "%s", err.msg);
    image im = read_png(path);
    cr_assert_eq(im.w, 800);
    cr_assert_eq(im.h, 500);
    free(im.px);
}

Test(plot, nan_points_break_the_line) {
    static double x[N], y[N], all_nan[5], inf_y[5];
    for (int i = 0; i < N; i++) {
        x[i] = i;
        y[i] = (i % 17 == 3 || (i > 40 && i < 60)) ? NAN : sin(i / 8.0);
    }
    y[N - 1] = NAN;
    for (int i = 0; i < 5; i++) {
        all_nan[i] = NAN;
        inf_y[i] = i == 2 ? 1.0 : INFINITY; /* one isolated finite point */
    }
    ap_plot_series s[3] = {{"gaps", x, y, N}, {"all nan", x, all_nan, 5}, {"dot", x, inf_y, 5}};
    ap_plot_opts o = {.title = "nan", .width = 500, .height = 300};
    char path[1200];
    out_path(path, sizeof path, "nan.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_lines_png(path, &o, s, 3, &err), AP_OK, "%s", err.msg);
    image im = read_png(path);
    unsigned char c[3];
    ap_plot_palette_color(0, c);
    cr_assert_gt(count_color(&im, c, 0, 0, im.w, im.h), 100);
    /* The isolated point is drawn as a dot (beyond the 20x2 legend sample). */
    ap_plot_palette_color(2, c);
    cr_assert_gt(count_color(&im, c, 0, 0, im.w, im.h), 40);
    free(im.px);

    /* Nothing finite anywhere: empty axes, not an error. */
    out_path(path, sizeof path, "allnan.png");
    cr_assert_eq(ap_plot_lines_png(path, &o, &s[1], 1, &err), AP_OK, "%s", err.msg);
}

Test(plot, constant_series) {
    double x[6] = {0, 1, 2, 3, 4, 5}, y[6] = {2, 2, 2, 2, 2, 2}, z[6] = {0, 0, 0, 0, 0, 0};
    ap_plot_series s = {"flat", x, y, 6};
    ap_plot_opts o = {.title = "flat", .width = 400, .height = 300};
    char path[1200];
    out_path(path, sizeof path, "const.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_lines_png(path, &o, &s, 1, &err), AP_OK, "%s", err.msg);
    image im = read_png(path);
    unsigned char c[3];
    ap_plot_palette_color(0, c);
    cr_assert_gt(count_color(&im, c, 0, 0, im.w, im.h), 200);
    free(im.px);
    /* All zero, and a single point: still a finite range. */
    s.y = z;
    cr_assert_eq(ap_plot_lines_png(path, &o, &s, 1, &err), AP_OK, "%s", err.msg);
    s.n = 1;
    cr_assert_eq(ap_plot_lines_png(path, &o, &s, 1, &err), AP_OK, "%s", err.msg);
}

Test(plot, log_x_skips_non_positive) {
    double x[7] = {0, -1, 1, 10, 100, 1000, 10000}, y[7] = {9, 9, 0.1, 0.4, 0.7, 0.9, 0.95};
    ap_plot_series s = {"recovery", x, y, 7};
    ap_plot_opts o = {.title = "recovery vs budget", .xlabel = "budget", .ylabel = "recovery",
                      .width = 600, .height = 400, .log_x = 1};
    char path[1200];
    out_path(path, sizeof path, "logx.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_lines_png(path, &o, &s, 1, &err), AP_OK, "%s", err.msg);
    image im = read_png(path);
    unsigned char c[3];
    ap_plot_palette_color(0, c);
    cr_assert_gt(count_color(&im, c, 0, 0, im.w, im.h), 200);
    free(im.px);
    /* Less than a decade of range. */
    double x2[3] = {3, 4, 6};
    s.x = x2;
    s.n = 3;
    cr_assert_eq(ap_plot_lines_png(path, &o, &s, 1, &err), AP_OK, "%s", err.msg);
}

Test(plot, bad_arguments) {
    double y[2] = {1, 2};
    ap_plot_series ok = {"a", NULL, y, 2}, empty = {"empty", NULL, y, 0};
    ap_plot_series pair[2] = {ok, empty};
    char path[1200];
    out_path(path, sizeof path, "bad.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_lines_png(path, NULL, pair, 2, &err), AP_ERR_ARG);
    cr_assert(strstr(err.msg, "empty"), "message: %s", err.msg);
    cr_assert_eq(ap_plot_lines_png(path, NULL, &ok, 0, &err), AP_ERR_ARG);
    cr_assert_eq(ap_plot_lines_png(path, NULL, NULL, 1, &err), AP_ERR_ARG);
    ap_plot_series no_y = {"y", NULL, NULL, 2};
    cr_assert_eq(ap_plot_lines_png(path, NULL, &no_y, 1, &err), AP_ERR_ARG);
    ap_plot_opts tiny = {.width = 50, .height = 50};
    cr_assert_eq(ap_plot_lines_png(path, &tiny, &ok, 1, &err), AP_ERR_ARG);
    cr_assert_eq(dir_entries(g_dir), 0, "nothing is written on argument errors");
}

Test(plot, unwritable_path_is_io_error_without_litter) {
    double y[3] = {1, 2, 3};
    ap_plot_series s = {"a", NULL, y, 3};
    char path[1200];
    ap_err err = {0};
    /* Destination directory missing: the temporary file cannot be created. */
    out_path(path, sizeof path, "missing/sub/plot.png");
    cr_assert_eq(ap_plot_lines_png(path, NULL, &s, 1, &err), AP_ERR_IO);
    cr_assert(strstr(err.msg, path), "message should name %s: %s", path, err.msg);
    cr_assert_eq(dir_entries(g_dir), 0);

    /* Destination is a directory: the PNG is written, the rename fails, and
     * the temporary file must be removed. */
    out_path(path, sizeof path, "isdir.png");
    cr_assert_eq(mkdir(path, 0755), 0);
    cr_assert_eq(ap_plot_lines_png(path, NULL, &s, 1, &err), AP_ERR_IO);
    cr_assert(strstr(err.msg, path), "message should name %s: %s", path, err.msg);
    cr_assert_not(has_tmp_file(g_dir), "temporary file left behind");
    cr_assert_eq(dir_entries(g_dir), 1);

    float v[4] = {0, 1, 2, 3};
    cr_assert_eq(ap_plot_heatmap_png(path, "t", v, 2, 2, 0, &err), AP_ERR_IO);
    cr_assert(strstr(err.msg, path), "message should name %s: %s", path, err.msg);
    cr_assert_not(has_tmp_file(g_dir), "temporary file left behind");
}

Test(plot, colormap_endpoints) {
    unsigned char lo[3], hi[3], mid[3], below[3], above[3];
    ap_plot_colormap(0.0, lo);
    ap_plot_colormap(1.0, hi);
    ap_plot_colormap(0.5, mid);
    ap_plot_colormap(-3.0, below);
    ap_plot_colormap(7.0, above);
    cr_assert_eq(memcmp(below, lo, 3), 0);
    cr_assert_eq(memcmp(above, hi, 3), 0);
    /* Lightness rises from dark purple through teal to bright yellow. */
    int l_lo = lo[0] + lo[1] + lo[2], l_mid = mid[0] + mid[1] + mid[2], l_hi = hi[0] + hi[1] + hi[2];
    cr_assert_lt(l_lo, l_mid);
    cr_assert_lt(l_mid, l_hi);
    cr_assert_gt(hi[0], 200);
    cr_assert_gt(hi[1], 200);
    cr_assert_lt(hi[2], 80);
}

Test(plot, heatmap_small_matrix_is_upscaled) {
    enum { R = 3, C = 5 };
    float v[R * C];
    for (int i = 0; i < R * C; i++) v[i] = (float)i * 0.1f;
    v[7] = NAN;
    char path[1200];
    out_path(path, sizeof path, "heat.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_heatmap_png(path, "attention", v, R, C, 0, &err), AP_OK, "%s", err.msg);
    cr_assert_not(has_tmp_file(g_dir));
    image im = read_png(path);
    /* At least 400 px of map each way plus margins, but not huge. */
    cr_assert_geq(im.w, 400);
    cr_assert_geq(im.h, 400);
    cr_assert_leq(im.w, 2300);
    cr_assert_leq(im.h, 2300);
    unsigned char top[3], bottom[3];
    ap_plot_colormap(1.0, top);
    ap_plot_colormap(0.0, bottom);
    /* The max cell (last) is a block of the top colour: 400/5 x ceil(400/3). */
    cr_assert_geq(count_color(&im, top, 0, 0, im.w, im.h), 80L * 134);
    cr_assert_geq(count_color(&im, bottom, 0, 0, im.w, im.h), 80L * 134);
    /* Title drawn in dark pixels above the map. */
    cr_assert_gt(count_dark(&im, 0, 0, im.w, 30), 50);
    free(im.px);
}

Test(plot, heatmap_large_matrix_keeps_peak) {
    enum { R = 3, C = 2500 };
    float *v = calloc(R * C, sizeof *v);
    cr_assert_not_null(v);
    v[1 * C + 1234] = 1.0f; /* single peak; block max must keep it */
    char path[1200];
    out_path(path, sizeof path, "wide.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_heatmap_png(path, NULL, v, R, C, 0, &err), AP_OK, "%s", err.msg);
    free(v);
    image im = read_png(path);
    cr_assert_geq(im.w, 2000);
    cr_assert_leq(im.w, 2300);
    unsigned char top[3];
    ap_plot_colormap(1.0, top);
    /* One pixel column 134 px tall, beyond the colour bar's top row. */
    cr_assert_geq(count_color(&im, top, 0, 0, im.w, im.h), 134);
    free(im.px);
}

Test(plot, heatmap_log_scale_and_degenerate) {
    float v[6] = {0.0f, 1e-4f, 1e-2f, 1.0f, -1.0f, NAN};
    char path[1200];
    out_path(path, sizeof path, "heatlog.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_heatmap_png(path, "log", v, 2, 3, 1, &err), AP_OK, "%s", err.msg);
    image im = read_png(path);
    unsigned char top[3];
    ap_plot_colormap(1.0, top);
    cr_assert_geq(count_color(&im, top, 0, 0, im.w, im.h), 134L * 200);
    free(im.px);
    float zeros[4] = {0, 0, 0, 0};
    cr_assert_eq(ap_plot_heatmap_png(path, "zeros", zeros, 2, 2, 1, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_plot_heatmap_png(path, "zeros", zeros, 2, 2, 0, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_plot_heatmap_png(path, "x", zeros, 0, 2, 0, &err), AP_ERR_ARG);
    cr_assert_eq(ap_plot_heatmap_png(path, "x", NULL, 2, 2, 0, &err), AP_ERR_ARG);
}
