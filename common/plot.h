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

/* Point markers, drawn as outlines so markers of several series at one
 * point stay visible through one another. */
typedef enum {
    AP_PLOT_MARK_NONE = 0,
    AP_PLOT_MARK_CIRCLE,
    AP_PLOT_MARK_SQUARE,
    AP_PLOT_MARK_TRIANGLE,
    AP_PLOT_MARK_DIAMOND,
    AP_PLOT_MARK_TRIANGLE_DOWN,
    AP_PLOT_MARK_CROSS,
    AP_PLOT_MARK_COUNT
} ap_plot_marker;

/* Line patterns: a dashed line over a solid one leaves the solid one
 * visible in its gaps. */
typedef enum {
    AP_PLOT_SOLID = 0,
    AP_PLOT_DASHED,
    AP_PLOT_DOTTED,
    AP_PLOT_DASHDOT,
    AP_PLOT_DASH_COUNT
} ap_plot_dash;

/* How one series is drawn; all zero: a solid line in palette colour i
 * (the series' index), no markers. The legend shows the same. */
typedef struct {
    ap_plot_marker marker;
    ap_plot_dash dash;
    int color;         /* palette index + 1; 0 = the series' index */
    int wide;          /* twice the line width: a reference drawn behind shows
                          along both edges of a line that covers it */
} ap_plot_style;

typedef struct {
    const char *title, *xlabel, *ylabel; /* each may be NULL or "" */
    int width, height;                   /* pixels; 0 picks 800 x 500 */
    int log_x;                           /* log10 x axis; x <= 0 is skipped */
    /* Added after the first version; zero keeps the defaults. */
    const ap_plot_style *styles;         /* [n_series]; NULL: every style zero */
    const double *xticks;                /* n_xticks x-axis ticks, each labelled with its */
    int n_xticks;                        /* value (those outside the data's range are
                                            skipped); NULL: ticks chosen from the range */
    int x_integer;                       /* chosen x ticks at integers only (epochs) */
} ap_plot_opts;

/* Style i of a set that tells up to 12 series apart even where their lines
 * coincide: colour, marker and pattern all vary, and every line after the
 * first is dashed, so an earlier line shows in its gaps. */
ap_plot_style ap_plot_style_distinct(int i);

/* Line chart of n_series series. Non-finite points (and x <= 0 on a log
 * axis) break the line; an isolated finite point is drawn as a dot.
 * Errors: AP_ERR_ARG for no series, an empty series, a NULL y, or a size
 * outside 200x150 .. 8192x8192; AP_ERR_IO naming path when it cannot be
 * written (no temporary file is left behind). */
ap_status ap_plot_lines_png(const char *path, const ap_plot_opts *o, const ap_plot_series *s,
                            int n_series, ap_err *err);

/* An interval around each point of one series, drawn as a vertical error
 * bar with caps in the series' colour: lo[k]..hi[k] for point k (arrays of
 * the series' length). A point that is not drawn, or whose lo or hi is not
 * finite, gets no bar. lo = hi = NULL: no bars for the series. */
typedef struct {
    const double *lo, *hi;
} ap_plot_yerr;

/* ap_plot_lines_png with error bars: bars[i] belongs to s[i] (bars NULL:
 * none, the same image as ap_plot_lines_png). The y axis covers the bars.
 * Errors as ap_plot_lines_png's, and AP_ERR_ARG for a series with only one
 * of lo and hi. */
ap_status ap_plot_lines_err_png(const char *path, const ap_plot_opts *o, const ap_plot_series *s,
                                const ap_plot_yerr *bars, int n_series, ap_err *err);

/* rows x cols row-major matrix as a heatmap with a viridis-like colormap and
 * a colour bar labelled with the min and max. Small matrices are upscaled
 * (nearest neighbour) to at least ~400 px a side; matrices over 2000 cells a
 * side are reduced by taking the max of each block so isolated peaks stay
 * visible. NaN cells are drawn light grey. With log_scale the colour follows
 * log10(v); v <= 0 gets the bottom colour. A constant matrix is drawn in the
 * bottom colour. */
ap_status ap_plot_heatmap_png(const char *path, const char *title, const float *v, int rows,
                              int cols, int log_scale, ap_err *err);

/* One axis of a heatmap: column (or row) i stands for first + i * step. */
typedef struct {
    const char *label; /* axis title; NULL or "": neither title nor ticks */
    double first;
    double step;       /* 0 means 1 */
} ap_plot_axis;

typedef struct {
    const char *title;     /* NULL or "" */
    ap_plot_axis x, y;     /* columns left to right, rows top to bottom; labelled
                              axes get ticks with values */
    const char *bar_label; /* what the colours measure, beside the colour bar */
    int log_scale;         /* colour follows log10(v); v <= 0 the bottom colour */
    int diverging;         /* signed data: range +-max |v|, white at 0 */
    double lo, hi;         /* colour range (in log10 units on a log scale); values
                              outside it are clamped; lo >= hi: the data's range */
    int mark_row;          /* > 0: a cyan line across the map above this row */
} ap_plot_heatmap_opts;

/* The heatmap above with axis titles, tick values, a colour bar with ticks
 * through its range (powers of ten on a log scale) and its caption. The
 * same sizes, NaN handling and errors. */
ap_status ap_plot_heatmap_ex_png(const char *path, const ap_plot_heatmap_opts *o, const float *v,
                                 int rows, int cols, ap_err *err);

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
