/* Minimal PNG chart rendering: line charts (training curves, metric vs
 * budget) and matrix heatmaps (attention maps), with an embedded bitmap font
 * so the only dependency is libpng.
 *
 * Output is written to "<path>.tmp.<pid>" and renamed into place, so a reader
 * never sees a half-written image. All state lives on the caller's stack or
 * in per-call allocations; the functions are safe to call from several
 * threads at once. */
#ifndef AP_PLOT_H
#define AP_PLOT_H

#include "common/status.h"

typedef struct {
    const char *label; /* legend text; NULL gives "series <i>" */
    const double *x;   /* NULL means x[i] = i */
    const double *y;
    int n;             /* number of points; must be >= 1 */
} ap_plot_series;

typedef struct {
    const char *title, *xlabel, *ylabel; /* each may be NULL or "" */
    int width, height;                   /* pixels; 0 picks 800 x 500 */
    int log_x;                           /* log10 x axis; x <= 0 is skipped */
} ap_plot_opts;

/* Line chart of n_series series. Non-finite points (and x <= 0 on a log
 * axis) break the line; an isolated finite point is drawn as a dot.
 * Errors: AP_ERR_ARG for no series, an empty series, a NULL y, or a size
 * outside 200x150 .. 8192x8192; AP_ERR_IO naming path when it cannot be
 * written (no temporary file is left behind). */
ap_status ap_plot_lines_png(const char *path, const ap_plot_opts *o, const ap_plot_series *s,
                            int n_series, ap_err *err);

/* rows x cols row-major matrix as a heatmap with a viridis-like colormap and
 * a colour bar labelled with the min and max. Small matrices are upscaled
 * (nearest neighbour) to at least ~400 px a side; matrices over 2000 cells a
 * side are reduced by taking the max of each block so isolated peaks stay
 * visible. NaN cells are drawn light grey. With log_scale the colour follows
 * log10(v); v <= 0 gets the bottom colour. A constant matrix is drawn in the
 * bottom colour. */
ap_status ap_plot_heatmap_png(const char *path, const char *title, const float *v, int rows,
                              int cols, int log_scale, ap_err *err);

/* Heatmap of signed data (a difference, a gain): the colour range is
 * symmetric about zero, +-max |v| over the finite cells, so white is exactly
 * 0, blue below and red above, whatever the data's range; the colour bar is
 * labelled with -m, 0 and +m. Sizes, NaN cells and errors as in
 * ap_plot_heatmap_png. */
ap_status ap_plot_heatmap_diverging_png(const char *path, const char *title, const float *v,
                                        int rows, int cols, ap_err *err);

/* Colour i of the series palette (Tableau 10, cycling). */
void ap_plot_palette_color(int i, unsigned char rgb[3]);

/* Heatmap colormap at t in [0,1] (clamped): t = 0 is dark purple, t = 1 the
 * top yellow. */
void ap_plot_colormap(double t, unsigned char rgb[3]);

/* Diverging colormap at t in [0,1] (clamped; NaN gives the middle): t = 0
 * dark blue, t = 0.5 near white, t = 1 dark red. */
void ap_plot_diverging_colormap(double t, unsigned char rgb[3]);

#endif
