/* Decoded PNGs for the plot checks: read an image back as RGB and find the
 * parts of a chart drawn by common/plot.c (its frame and tick marks, drawn
 * in its axis colour) and pixels near a given colour. */
#ifndef AP_PNG_PROBE_H
#define AP_PNG_PROBE_H

#include <stddef.h>

typedef struct {
    unsigned char *px; /* RGB, row-major, top row first; malloc'd */
    int w, h;
} ap_png_image;

/* 0 on success; else -1 with libpng's reason in msg. */
int ap_png_read(const char *path, ap_png_image *im, char *msg, size_t msg_n);
void ap_png_free(ap_png_image *im);
const unsigned char *ap_png_px(const ap_png_image *im, int x, int y);

/* Pixels in [x0,x1) x [y0,y1) within tol of rgb on every channel. */
long ap_png_count_near(const ap_png_image *im, const unsigned char rgb[3], int tol, int x0,
                       int y0, int x1, int y1);

/* The bottom edge of the lowest frame: the lowest row holding a run of at
 * least min_run axis-coloured pixels, its longest such run in [*x0, *x1).
 * -1 when there is none. */
int ap_png_frame_bottom(const ap_png_image *im, int min_run, int *x0, int *x1);

/* Tick marks hanging below that edge (axis-coloured pixels two rows down,
 * within the edge's run): their count, their x positions in xs (up to max;
 * xs may be NULL). -1 without a frame. */
int ap_png_xticks(const ap_png_image *im, int min_run, int *xs, int max);

#endif
