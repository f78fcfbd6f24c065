/* Plot rendering: each image is written to a fresh temporary directory, read
 * back with libpng's simplified API and checked for size, series colours,
 * title text, heatmap colours, and for the error paths (bad arguments, an
 * unwritable destination that must not leave a temporary file behind). */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/plot.h"
#include "helpers/png_probe.h"

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
    ap_png_image pi;
    char msg[300];
    cr_assert_eq(ap_png_read(path, &pi, msg, sizeof msg), 0, "%s", msg);
    return (image){pi.px, pi.w, pi.h};
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

/* Columns in which more than min_px pixels lean to blue (the first palette
 * colour, blended with white or not), grouped into runs of adjacent
 * columns: one run per vertical error bar. */
static int bluish_column_runs(const image *im, int min_px) {
    int runs = 0, prev = 0;
    for (int x = 0; x < im->w; x++) {
        int n = 0;
        for (int y = 0; y < im->h; y++) {
            const unsigned char *p = pixel(im, x, y);
            n += p[2] > p[0] + 20;
        }
        int on = n > min_px;
        runs += on && !prev;
        prev = on;
    }
    return runs;
}

Test(plot, error_bars_span_the_interval) {
    double x[5] = {0, 1, 2, 3, 4}, y[5] = {0.5, 0.5, 0.5, 0.5, 0.5};
    double lo[5] = {0.2, 0.2, NAN, 0.2, 0.2}, hi[5] = {0.8, 0.8, 0.8, 0.8, 0.8};
    ap_plot_series s = {"flat", x, y, 5};
    ap_plot_yerr bars = {lo, hi}, none = {NULL, NULL};
    ap_plot_opts o = {.title = "bars", .width = 500, .height = 400};
    char with[1200], without[1200], plain[1200], empty[1200];
    out_path(with, sizeof with, "bars.png");
    out_path(without, sizeof without, "nobars.png");
    out_path(plain, sizeof plain, "plain.png");
    out_path(empty, sizeof empty, "emptybars.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_lines_err_png(with, &o, &s, &bars, 1, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_plot_lines_err_png(without, &o, &s, NULL, 1, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_plot_lines_err_png(empty, &o, &s, &none, 1, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_plot_lines_png(plain, &o, &s, 1, &err), AP_OK, "%s", err.msg);
    image a = read_png(with), b = read_png(without), c = read_png(plain), d = read_png(empty);
    /* No bars: exactly the plain line chart. */
    cr_assert_eq(memcmp(b.px, c.px, (size_t)c.w * c.h * 3), 0);
    cr_assert_eq(memcmp(d.px, c.px, (size_t)c.w * c.h * 3), 0);
    /* One tall bar per point with a finite interval (not at x = 2), each
     * spanning most of the plot height: the y axis was widened to hold them. */
    cr_assert_eq(bluish_column_runs(&a, a.h / 2), 4);
    cr_assert_eq(bluish_column_runs(&c, 10), 0, "a flat line has no tall columns");
    free(a.px);
    free(b.px);
    free(c.px);
    free(d.px);
    /* A bar needs both bounds. */
    ap_plot_yerr half = {lo, NULL};
    out_path(with, sizeof with, "half.png");
    cr_assert_eq(ap_plot_lines_err_png(with, &o, &s, &half, 1, &err), AP_ERR_ARG);
    cr_assert(strstr(err.msg, "flat"), "message: %s", err.msg);
    cr_assert_eq(access(with, F_OK), -1, "nothing is written on argument errors");
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

/* Tick marks below the plot frame (the frame is far wider than 100 px). */
static int xticks_of(const char *path, int *xs, int max) {
    ap_png_image im;
    char msg[300];
    cr_assert_eq(ap_png_read(path, &im, msg, sizeof msg), 0, "%s", msg);
    int n = ap_png_xticks(&im, 100, xs, max);
    ap_png_free(&im);
    return n;
}

/* Epochs 1..3: ticks at whole numbers only (1, 2, 3), not 1.5 and 2.5. */
Test(plot, integer_x_ticks_at_whole_numbers) {
    double x[3] = {1, 2, 3}, y[3] = {0.3, 0.2, 0.15};
    ap_plot_series s = {"loss", x, y, 3};
    ap_plot_opts o = {.xlabel = "epoch", .width = 800, .height = 500};
    char plain[1200], whole[1200];
    out_path(plain, sizeof plain, "epochs_any.png");
    out_path(whole, sizeof whole, "epochs_whole.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_lines_png(plain, &o, &s, 1, &err), AP_OK, "%s", err.msg);
    o.x_integer = 1;
    cr_assert_eq(ap_plot_lines_png(whole, &o, &s, 1, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(xticks_of(plain, NULL, 0), 5, "the default ticks every half epoch");
    int xs[8];
    cr_assert_eq(xticks_of(whole, xs, 8), 3);
    /* Evenly spaced: one per epoch. */
    cr_assert_leq(abs((xs[1] - xs[0]) - (xs[2] - xs[1])), 1);
}

/* Given ticks: every budget gets one, also 256 where the automatic log
 * ticks (500, 1000, 2000) have none; values outside the range are skipped. */
Test(plot, given_x_ticks_label_every_budget) {
    double x[4] = {256, 512, 1024, 2048}, y[4] = {80, 90, 97, 99.5};
    double t[5] = {256, 512, 1024, 2048, 1e6};
    ap_plot_series s = {"oracle", x, y, 4};
    ap_plot_opts o = {.width = 900, .height = 560, .log_x = 1};
    char autop[1200], given[1200];
    out_path(autop, sizeof autop, "budgets_auto.png");
    out_path(given, sizeof given, "budgets_given.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_lines_png(autop, &o, &s, 1, &err), AP_OK, "%s", err.msg);
    o.xticks = t;
    o.n_xticks = 5;
    cr_assert_eq(ap_plot_lines_png(given, &o, &s, 1, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(xticks_of(autop, NULL, 0), 3);
    int xs[8];
    cr_assert_eq(xticks_of(given, xs, 8), 4);
    /* Equal steps on the log axis: the budgets double. */
    cr_assert_leq(abs((xs[1] - xs[0]) - (xs[3] - xs[2])), 1);
}

/* Pixels near palette colour i (light blends with another line included). */
static long series_pixels(const image *im, int i) {
    unsigned char c[3];
    ap_plot_palette_color(i, c);
    ap_png_image pi = {im->px, im->w, im->h};
    return ap_png_count_near(&pi, c, 40, 0, 0, im->w, im->h);
}

/* Two series with the same six points (as methods at six budgets): plain,
 * the second covers the first, leaving only its legend sample (30 x 2 px);
 * with distinct styles (and a wide dashed reference drawn first, behind)
 * both stay visible along the line. */
Test(plot, coinciding_lines_stay_distinguishable) {
    double x[6], y[6];
    for (int i = 0; i < 6; i++) {
        x[i] = i;
        y[i] = 0.25 + 0.1 * i;
    }
    ap_plot_series s[2] = {{"first", x, y, 6}, {"second", x, y, 6}};
    ap_plot_opts o = {.width = 800, .height = 500};
    char path[1200];
    out_path(path, sizeof path, "same.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_lines_png(path, &o, s, 2, &err), AP_OK, "%s", err.msg);
    image plain = read_png(path);
    cr_assert_leq(series_pixels(&plain, 0), 100, "the first line shows: %ld px",
                  series_pixels(&plain, 0));
    free(plain.px);

    ap_plot_style sty[2] = {ap_plot_style_distinct(0), ap_plot_style_distinct(1)};
    o.styles = sty;
    cr_assert_eq(ap_plot_lines_png(path, &o, s, 2, &err), AP_OK, "%s", err.msg);
    image styled = read_png(path);
    cr_assert_gt(series_pixels(&styled, 0), 300, "first: %ld px", series_pixels(&styled, 0));
    cr_assert_gt(series_pixels(&styled, 1), 300, "second: %ld px", series_pixels(&styled, 1));
    free(styled.px);

    sty[0] = (ap_plot_style){.dash = AP_PLOT_DASHED, .color = 1, .wide = 1};
    sty[1] = (ap_plot_style){.marker = AP_PLOT_MARK_CIRCLE, .color = 2};
    cr_assert_eq(ap_plot_lines_png(path, &o, s, 2, &err), AP_OK, "%s", err.msg);
    image ref = read_png(path);
    cr_assert_gt(series_pixels(&ref, 0), 300, "reference: %ld px", series_pixels(&ref, 0));
    cr_assert_gt(series_pixels(&ref, 1), 300, "on top: %ld px", series_pixels(&ref, 1));
    free(ref.px);
}

/* Distinct styles: no two of the first 12 share marker and pattern. */
Test(plot, distinct_styles) {
    for (int i = 0; i < 12; i++)
        for (int j = i + 1; j < 12; j++) {
            ap_plot_style a = ap_plot_style_distinct(i), b = ap_plot_style_distinct(j);
            cr_assert(a.marker != b.marker || a.dash != b.dash, "%d and %d", i, j);
            cr_assert_neq(a.marker, AP_PLOT_MARK_NONE);
        }
}

/* Heatmap with axes: tick marks under the map, values and a title left of
 * and above it, a colour bar from the top colour to the bottom one with
 * ticks, and the boundary line across the map. Without the options none of
 * the axis parts is drawn. */
Test(plot, heatmap_axes_colour_bar_and_mark) {
    enum { R = 40, C = 60 };
    static float v[R * C];
    for (int i = 0; i < R * C; i++) v[i] = (float)(i % C) / C;
    v[0] = NAN;
    const ap_plot_heatmap_opts o = {.title = "trace.h5: seq 's' (#0), layer 1, head 2",
                                    .x = {.label = "key block", .step = 1},
                                    .y = {.label = "query position", .first = 1000, .step = 1},
                                    .bar_label = "attention / row max",
                                    .lo = 0.0,
                                    .hi = 1.0,
                                    .mark_row = 25};
    char with[1200], plain[1200];
    out_path(with, sizeof with, "heat_axes.png");
    out_path(plain, sizeof plain, "heat_plain.png");
    ap_err err = {0};
    cr_assert_eq(ap_plot_heatmap_ex_png(with, &o, v, R, C, &err), AP_OK, "%s", err.msg);
    cr_assert_eq(ap_plot_heatmap_png(plain, NULL, v, R, C, 0, &err), AP_OK, "%s", err.msg);
    image a = read_png(with), b = read_png(plain);
    ap_png_image pa = {a.px, a.w, a.h}, pb = {b.px, b.w, b.h};
    int ax0 = 0, ax1 = 0, bx0 = 0, bx1 = 0;
    int ay = ap_png_frame_bottom(&pa, 300, &ax0, &ax1);
    int by = ap_png_frame_bottom(&pb, 300, &bx0, &bx1);
    cr_assert_geq(ay, 0);
    cr_assert_geq(by, 0);
    /* The x axis: a tick every so many key blocks, values under them. */
    int nt = ap_png_xticks(&pa, 300, NULL, 0);
    cr_assert(nt >= 3 && nt <= 12, "%d x ticks", nt);
    cr_assert_eq(ap_png_xticks(&pb, 300, NULL, 0), 0);
    cr_assert_gt(count_dark(&a, ax0, ay + 4, ax1, a.h), 100, "x tick values and title");
    /* The y axis: values and title left of the map. */
    cr_assert_gt(count_dark(&a, 0, 0, ax0 - 2, ay), 100);
    cr_assert_eq(count_dark(&b, 0, 0, bx0 - 2, by), 0);
    /* The title above the map. */
    cr_assert_gt(count_dark(&a, 0, 0, a.w, 30), 50);
    /* The colour bar right of the map: top and bottom colours, tick marks. */
    unsigned char top[3], bottom[3], mark[3] = {0, 255, 255}, axis[3] = {70, 70, 70};
    ap_plot_colormap(1.0, top);
    ap_plot_colormap(0.0, bottom);
    cr_assert_geq(count_color(&a, top, ax1 + 4, 0, a.w, a.h), 15);
    cr_assert_geq(count_color(&a, bottom, ax1 + 4, 0, a.w, a.h), 15);
    cr_assert_geq(ap_png_count_near(&pa, axis, 0, ax1 + 30, 0, a.w, ay - 2), 3 * 4,
                  "colour bar ticks");
    /* The first decode step's line across the whole map. */
    cr_assert_geq(count_color(&a, mark, ax0, 0, ax1, ay), ax1 - ax0 - 4);
    cr_assert_eq(count_color(&b, mark, 0, 0, b.w, b.h), 0);
    free(a.px);
    free(b.px);
}
