#include "helpers/png_probe.h"

#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The axis colour of common/plot.c (frames and tick marks). */
static const unsigned char k_axis[3] = {70, 70, 70};

int ap_png_read(const char *path, ap_png_image *im, char *msg, size_t msg_n) {
    png_image pi;
    memset(&pi, 0, sizeof pi);
    memset(im, 0, sizeof *im);
    pi.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&pi, path)) {
        snprintf(msg, msg_n, "cannot read %s: %s", path, pi.message);
        return -1;
    }
    pi.format = PNG_FORMAT_RGB;
    im->px = malloc(PNG_IMAGE_SIZE(pi));
    if (!im->px || !png_image_finish_read(&pi, NULL, im->px, 0, NULL)) {
        snprintf(msg, msg_n, "decode %s: %s", path, im->px ? pi.message : "out of memory");
        png_image_free(&pi);
        ap_png_free(im);
        return -1;
    }
    im->w = (int)pi.width;
    im->h = (int)pi.height;
    return 0;
}

void ap_png_free(ap_png_image *im) {
    free(im->px);
    im->px = NULL;
}

const unsigned char *ap_png_px(const ap_png_image *im, int x, int y) {
    return im->px + ((size_t)y * (size_t)im->w + (size_t)x) * 3;
}

static int near(const unsigned char *p, const unsigned char rgb[3], int tol) {
    for (int k = 0; k < 3; k++)
        if (abs((int)p[k] - (int)rgb[k]) > tol) return 0;
    return 1;
}

long ap_png_count_near(const ap_png_image *im, const unsigned char rgb[3], int tol, int x0,
                       int y0, int x1, int y1) {
    long n = 0;
    for (int y = y0 < 0 ? 0 : y0; y < y1 && y < im->h; y++)
        for (int x = x0 < 0 ? 0 : x0; x < x1 && x < im->w; x++)
            n += near(ap_png_px(im, x, y), rgb, tol);
    return n;
}

int ap_png_frame_bottom(const ap_png_image *im, int min_run, int *x0, int *x1) {
    for (int y = im->h - 1; y >= 0; y--) {
        int best = 0, best_x = 0, run = 0;
        for (int x = 0; x <= im->w; x++) {
            if (x < im->w && near(ap_png_px(im, x, y), k_axis, 0)) {
                run++;
                continue;
            }
            if (run > best) best = run, best_x = x - run;
            run = 0;
        }
        if (best >= min_run) {
            *x0 = best_x;
            *x1 = best_x + best;
            return y;
        }
    }
    return -1;
}

int ap_png_xticks(const ap_png_image *im, int min_run, int *xs, int max) {
    int x0 = 0, x1 = 0, y = ap_png_frame_bottom(im, min_run, &x0, &x1);
    if (y < 0 || y + 2 >= im->h) return -1;
    int n = 0;
    for (int x = x0; x < x1; x++)
        if (near(ap_png_px(im, x, y + 2), k_axis, 0)) {
            if (xs && n < max) xs[n] = x;
            n++;
        }
    return n;
}
