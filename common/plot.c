/* Line charts and heatmaps rendered into an RGB buffer and saved with libpng.
 *
 * Everything is drawn with a handful of primitives (filled rectangles, an
 * anti-aliased thick segment, a 5x7 bitmap font) so plots look the same on
 * every machine and need no font or graphics library. */
#define _POSIX_C_SOURCE 200809L
#include "common/plot.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

/* ---- font ---------------------------------------------------------------
 * 5x7 glyphs for ASCII 32..126, one byte per row, bit 4 = leftmost column.
 * Drawn in a 6x8 cell so adjacent glyphs and lines keep a one-pixel gap.
 * Lower-case letters have no descenders: 7 rows keep line spacing tight. */
#define FONT_W 5
#define FONT_H 7
#define CELL_W 6
#define CELL_H 8

static const uint8_t k_font[95][FONT_H] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* space */
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04}, /* '!' */
    {0x0a, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00}, /* '"' */
    {0x0a, 0x0a, 0x1f, 0x0a, 0x1f, 0x0a, 0x0a}, /* '#' */
    {0x04, 0x0f, 0x14, 0x0e, 0x05, 0x1e, 0x04}, /* '$' */
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}, /* '%' */
    {0x0c, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0d}, /* '&' */
    {0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00}, /* 'quote' */
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}, /* '(' */
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}, /* ')' */
    {0x00, 0x04, 0x15, 0x0e, 0x15, 0x04, 0x00}, /* '*' */
    {0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00}, /* '+' */
    {0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x08}, /* ',' */
    {0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00}, /* '-' */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c}, /* '.' */
    {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00}, /* '/' */
    {0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e}, /* '0' */
    {0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e}, /* '1' */
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f}, /* '2' */
    {0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e}, /* '3' */
    {0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02}, /* '4' */
    {0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e}, /* '5' */
    {0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e}, /* '6' */
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}, /* '7' */
    {0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e}, /* '8' */
    {0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c}, /* '9' */
    {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00}, /* ':' */
    {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x04, 0x08}, /* ';' */
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02}, /* '<' */
    {0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00}, /* '=' */
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08}, /* '>' */
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}, /* '?' */
    {0x0e, 0x11, 0x01, 0x0d, 0x15, 0x15, 0x0e}, /* '@' */
    {0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11}, /* 'A' */
    {0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e}, /* 'B' */
    {0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e}, /* 'C' */
    {0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c}, /* 'D' */
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f}, /* 'E' */
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10}, /* 'F' */
    {0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f}, /* 'G' */
    {0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11}, /* 'H' */
    {0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e}, /* 'I' */
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c}, /* 'J' */
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}, /* 'K' */
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f}, /* 'L' */
    {0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11}, /* 'M' */
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}, /* 'N' */
    {0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e}, /* 'O' */
    {0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10}, /* 'P' */
    {0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d}, /* 'Q' */
    {0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11}, /* 'R' */
    {0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e}, /* 'S' */
    {0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}, /* 'T' */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e}, /* 'U' */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04}, /* 'V' */
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a}, /* 'W' */
    {0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11}, /* 'X' */
    {0x11, 0x11, 0x0a, 0x04, 0x04, 0x04, 0x04}, /* 'Y' */
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f}, /* 'Z' */
    {0x0e, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0e}, /* '[' */
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00}, /* 'backslash' */
    {0x0e, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0e}, /* ']' */
    {0x04, 0x0a, 0x11, 0x00, 0x00, 0x00, 0x00}, /* '^' */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f}, /* '_' */
    {0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00}, /* '`' */
    {0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f}, /* 'a' */
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e}, /* 'b' */
    {0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e}, /* 'c' */
    {0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f}, /* 'd' */
    {0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e}, /* 'e' */
    {0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08}, /* 'f' */
    {0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x0e}, /* 'g' */
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}, /* 'h' */
    {0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e}, /* 'i' */
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0c}, /* 'j' */
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12}, /* 'k' */
    {0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e}, /* 'l' */
    {0x00, 0x00, 0x1a, 0x15, 0x15, 0x11, 0x11}, /* 'm' */
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}, /* 'n' */
    {0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e}, /* 'o' */
    {0x00, 0x00, 0x1e, 0x11, 0x1e, 0x10, 0x10}, /* 'p' */
    {0x00, 0x00, 0x0f, 0x11, 0x0f, 0x01, 0x01}, /* 'q' */
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}, /* 'r' */
    {0x00, 0x00, 0x0f, 0x10, 0x0e, 0x01, 0x1e}, /* 's' */
    {0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06}, /* 't' */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d}, /* 'u' */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04}, /* 'v' */
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a}, /* 'w' */
    {0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11}, /* 'x' */
    {0x00, 0x00, 0x11, 0x11, 0x0f, 0x01, 0x0e}, /* 'y' */
    {0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f}, /* 'z' */
    {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02}, /* '{' */
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}, /* '|' */
    {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08}, /* '}' */
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00}, /* '~' */
};

/* ---- canvas ------------------------------------------------------------- */
typedef struct {
    uint8_t r, g, b;
} rgb8;

typedef struct {
    uint8_t *px; /* w*h*3, row-major, top row first */
    int w, h;
} canvas;

static const rgb8 C_WHITE = {255, 255, 255};
static const rgb8 C_TEXT = {30, 30, 30};
static const rgb8 C_AXIS = {70, 70, 70};
static const rgb8 C_GRID = {228, 228, 228};
static const rgb8 C_LEGEND_EDGE = {170, 170, 170};
static const rgb8 C_NAN = {210, 210, 210};
static const rgb8 C_MARK = {0, 255, 255}; /* a boundary across a heatmap */

static ap_status canvas_new(canvas *c, int w, int h, ap_err *err) {
    c->w = w;
    c->h = h;
    c->px = malloc((size_t)w * (size_t)h * 3);
    if (!c->px) return ap_errf(err, AP_ERR_NOMEM, "out of memory for a %dx%d image", w, h);
    memset(c->px, 255, (size_t)w * (size_t)h * 3);
    return AP_OK;
}

static void put_px(canvas *c, int x, int y, rgb8 col) {
    if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
    uint8_t *p = c->px + ((size_t)y * (size_t)c->w + (size_t)x) * 3;
    p[0] = col.r;
    p[1] = col.g;
    p[2] = col.b;
}

static void blend_px(canvas *c, int x, int y, rgb8 col, int alpha255) {
    if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
    uint8_t *p = c->px + ((size_t)y * (size_t)c->w + (size_t)x) * 3;
    int a = alpha255, ia = 255 - alpha255;
    /* +127 rounds, so full coverage reproduces the colour exactly. */
    p[0] = (uint8_t)((p[0] * ia + col.r * a + 127) / 255);
    p[1] = (uint8_t)((p[1] * ia + col.g * a + 127) / 255);
    p[2] = (uint8_t)((p[2] * ia + col.b * a + 127) / 255);
}

/* Fill [x0,x1) x [y0,y1), clipped to the canvas. */
static void fill_rect(canvas *c, int x0, int y0, int x1, int y1, rgb8 col) {
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > c->w) x1 = c->w;
    if (y1 > c->h) y1 = c->h;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) put_px(c, x, y, col);
}

/* 1-px outline just outside [x0,x1) x [y0,y1). */
static void frame_rect(canvas *c, int x0, int y0, int x1, int y1, rgb8 col) {
    fill_rect(c, x0 - 1, y0 - 1, x1 + 1, y0, col);
    fill_rect(c, x0 - 1, y1, x1 + 1, y1 + 1, col);
    fill_rect(c, x0 - 1, y0, x0, y1, col);
    fill_rect(c, x1, y0, x1 + 1, y1, col);
}

/* ---- text --------------------------------------------------------------- */
static const uint8_t *glyph(char ch) {
    unsigned char u = (unsigned char)ch;
    if (u < 32 || u > 126) u = '?';
    return k_font[u - 32];
}

static int text_w(const char *s, int scale) {
    size_t n = s ? strlen(s) : 0;
    return n ? (int)n * CELL_W * scale - scale : 0;
}

static int text_h(int scale) { return FONT_H * scale; }

/* Horizontal text with its top-left corner at (x, y). */
static void draw_text(canvas *c, int x, int y, const char *s, int scale, rgb8 col) {
    for (; s && *s; s++, x += CELL_W * scale) {
        const uint8_t *g = glyph(*s);
        for (int gy = 0; gy < FONT_H; gy++)
            for (int gx = 0; gx < FONT_W; gx++)
                if (g[gy] & (0x10 >> gx))
                    fill_rect(c, x + gx * scale, y + gy * scale, x + (gx + 1) * scale,
                              y + (gy + 1) * scale, col);
    }
}

/* Text rotated a quarter turn anticlockwise (read bottom to top), as y-axis
 * labels are; (x, y) is the top-left of its bounding box, which is
 * text_h wide and text_w tall. */
static void draw_text_up(canvas *c, int x, int y, const char *s, int scale, rgb8 col) {
    int bottom = y + text_w(s, scale); /* one past the last row */
    int along = 0;
    for (; s && *s; s++, along += CELL_W * scale) {
        const uint8_t *g = glyph(*s);
        for (int gy = 0; gy < FONT_H; gy++)
            for (int gx = 0; gx < FONT_W; gx++)
                if (g[gy] & (0x10 >> gx)) {
                    int px = x + gy * scale;
                    int py = bottom - along - (gx + 1) * scale;
                    fill_rect(c, px, py, px + scale, py + scale, col);
                }
    }
}

/* ---- colours ------------------------------------------------------------ */
void ap_plot_palette_color(int i, unsigned char rgb[3]) {
    /* Tableau 10: designed so neighbours stay distinct, also in greyscale
     * print and for the common colour-vision deficiencies. */
    static const unsigned char pal[10][3] = {
        {78, 121, 167}, {242, 142, 43}, {225, 87, 89},   {118, 183, 178}, {89, 161, 79},
        {237, 201, 72}, {176, 122, 161}, {255, 157, 167}, {156, 117, 95}, {186, 176, 172}};
    int k = i < 0 ? 0 : i % 10;
    memcpy(rgb, pal[k], 3);
}

void ap_plot_colormap(double t, unsigned char rgb[3]) {
    /* Viridis sampled at nine evenly spaced stops: perceptually uniform and
     * monotone in lightness, so a greyscale copy still orders values. */
    static const unsigned char stops[9][3] = {
        {68, 1, 84},    {71, 45, 123},  {59, 82, 139},  {44, 114, 142}, {33, 145, 140},
        {40, 174, 128}, {94, 201, 98},  {173, 220, 48}, {253, 231, 37}};
    if (!(t > 0.0)) t = 0.0; /* also catches NaN */
    if (t > 1.0) t = 1.0;
    double f = t * 8.0;
    int i = (int)f;
    if (i >= 8) {
        memcpy(rgb, stops[8], 3);
        return;
    }
    double u = f - i;
    for (int k = 0; k < 3; k++)
        rgb[k] = (unsigned char)lround(stops[i][k] + u * (stops[i + 1][k] - stops[i][k]));
}

void ap_plot_diverging_colormap(double t, unsigned char rgb[3]) {
    /* Blue - white - red through five stops (a RdBu-like ramp): the two
     * halves mirror each other in lightness, so equal |v| reads as equally
     * strong on either side of zero. */
    static const unsigned char stops[5][3] = {
        {33, 102, 172}, {146, 197, 222}, {247, 247, 247}, {244, 165, 130}, {178, 24, 43}};
    if (isnan(t)) t = 0.5;
    if (t < 0.0) t = 0.0;
    if (t > 1.0) t = 1.0;
    double f = t * 4.0;
    int i = (int)f;
    if (i >= 4) {
        memcpy(rgb, stops[4], 3);
        return;
    }
    double u = f - i;
    for (int k = 0; k < 3; k++)
        rgb[k] = (unsigned char)lround(stops[i][k] + u * (stops[i + 1][k] - stops[i][k]));
}

static rgb8 palette(int i) {
    unsigned char c[3];
    ap_plot_palette_color(i, c);
    return (rgb8){c[0], c[1], c[2]};
}

/* ---- PNG output ----------------------------------------------------------- */
typedef struct {
    char msg[160];
} png_errctx;

static void png_error_cb(png_structp png, png_const_charp msg) {
    png_errctx *ctx = png_get_error_ptr(png);
    snprintf(ctx->msg, sizeof ctx->msg, "%s", msg ? msg : "unknown libpng error");
    png_longjmp(png, 1);
}

/* Library code never prints; libpng's default would write to stderr. */
static void png_warning_cb(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

/* Encode c into f. Kept apart from the file handling so no local that
 * outlives the setjmp is modified after it. Returns 0 on success, else fills
 * msg. */
static int encode_png(FILE *f, const canvas *c, char *msg, size_t msg_n) {
    png_errctx ctx = {{0}};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, png_error_cb,
                                              png_warning_cb);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        snprintf(msg, msg_n, "out of memory starting the PNG encoder");
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        snprintf(msg, msg_n, "%s", ctx.msg);
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)c->w, (png_uint_32)c->h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < c->h; y++) png_write_row(png, c->px + (size_t)y * (size_t)c->w * 3);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

/* Write under the temporary name, then rename; on any failure the temporary
 * file is removed so failed runs leave no litter. */
static ap_status write_png(const char *path, const canvas *c, ap_err *err) {
    ap_status st = AP_OK;
    char tmp[4200], msg[200];
    if (strlen(path) + 32 > sizeof tmp)
        return ap_errf(err, AP_ERR_ARG, "%.200s...: output path is too long", path);
    ap_tmp_name(tmp, sizeof tmp, path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return ap_errf(err, AP_ERR_IO, "%s: cannot create temporary file %s: %s", path, tmp,
                       strerror(errno));
    if (encode_png(f, c, msg, sizeof msg) != 0) {
        st = ap_errf(err, AP_ERR_IO, "%s: writing PNG failed: %s", path, msg);
        fclose(f);
        goto cleanup;
    }
    /* A full disk often shows up only when the buffer is flushed. */
    if (fclose(f) != 0) {
        st = ap_errf(err, AP_ERR_IO, "%s: cannot write %s: %s", path, tmp, strerror(errno));
        goto cleanup;
    }
    st = ap_commit_file(tmp, path, err);
cleanup:
    if (st != AP_OK) remove(tmp);
    return st;
}

/* ---- axis ticks ------------------------------------------------------------ */
#define MAX_TICKS 32

typedef struct {
    double pos[MAX_TICKS]; /* in axis space (log10 x on a log axis) */
    char label[MAX_TICKS][32];
    int n;
} ticks;

/* "1.5e+06" -> "1.5e6", "2.0e-05" -> "2.0e-5": the short form saves width. */
static void compact_exponent(char *s) {
    char *e = strchr(s, 'e');
    if (!e) return;
    char *w = e + 1, *r = e + 1;
    if (*r == '+') r++;
    else if (*r == '-') *w++ = *r++;
    while (*r == '0' && r[1]) r++;
    memmove(w, r, strlen(r) + 1);
}

static void fmt_general(char *buf, size_t n, double v) {
    snprintf(buf, n, "%g", v);
    compact_exponent(buf);
}

/* Label for a tick on a linear axis with spacing `step`: enough decimals to
 * tell neighbours apart and no more; exponent form when the numbers are very
 * large or small. */
static void fmt_linear(char *buf, size_t n, double v, double step, double maxabs) {
    if (maxabs >= 1e6 || (maxabs > 0 && maxabs < 1e-3)) {
        if (v == 0.0) {
            snprintf(buf, n, "0");
            return;
        }
        /* Digits down to the step's decade, then trailing zeros dropped:
         * "2.5e5", "1e6" rather than "2.50e5", "1.00e6". */
        int p = (int)floor(log10(fabs(v))) - (int)floor(log10(step));
        double mant = step / pow(10.0, floor(log10(step)));
        if (fabs(mant - round(mant)) > 1e-6) p++;
        if (p < 0) p = 0;
        if (p > 8) p = 8;
        char m[32];
        snprintf(m, sizeof m, "%.*e", p, v);
        char *e = strchr(m, 'e');
        if (!e) {
            snprintf(buf, n, "%s", m);
            return;
        }
        char *end = e;
        if (memchr(m, '.', (size_t)(e - m))) {
            while (end[-1] == '0') end--;
            if (end[-1] == '.') end--;
        }
        snprintf(buf, n, "%.*s%s", (int)(end - m), m, e);
        compact_exponent(buf);
    } else {
        int d = step >= 1.0 ? 0 : (int)ceil(-log10(step) - 1e-9);
        double scaled = step * pow(10.0, d);
        if (fabs(scaled - round(scaled)) > 1e-6 * scaled) d++;
        if (d > 10) d = 10;
        snprintf(buf, n, "%.*f", d, v);
    }
    /* Rounding can leave "-0.00"; a minus sign on zero is noise. */
    if (buf[0] == '-' && strspn(buf + 1, "0.") == strlen(buf + 1)) memmove(buf, buf + 1, strlen(buf));
}

/* Multiples of a 1/2/2.5/5 x 10^k step inside [lo, hi], choosing the step
 * whose count is nearest `target`; with `integer`, whole-number steps only
 * (epochs, indices: a tick at 1.5 would name nothing). Returns the step. */
static double nice_ticks(double lo, double hi, int target, int integer, double *out, int *n_out,
                         int max) {
    double raw = (hi - lo) / target;
    double mag = pow(10.0, floor(log10(raw)));
    static const double mult[] = {1.0, 2.0, 2.5, 5.0, 10.0};
    double best = integer ? fmax(1.0, round(mag * 10.0)) : mag * 10.0;
    int best_diff = 1 << 30;
    for (size_t i = 0; i < sizeof mult / sizeof mult[0]; i++) {
        double step = mult[i] * mag;
        if (integer && (step < 1.0 - 1e-9 || fabs(step - round(step)) > 1e-9)) continue;
        double cnt = floor(hi / step + 1e-9) - ceil(lo / step - 1e-9) + 1;
        int diff = (int)fabs(cnt - target);
        if (cnt >= 2 && cnt <= max && diff <= best_diff) {
            /* Ties go to the larger step: fewer, wider labels. */
            best_diff = diff;
            best = step;
        }
    }
    double k0 = ceil(lo / best - 1e-9), k1 = floor(hi / best + 1e-9);
    int n = 0;
    for (double k = k0; k <= k1 && n < max; k++) {
        double v = k * best;
        if (fabs(v) < best * 1e-9) v = 0.0;
        out[n++] = v;
    }
    *n_out = n;
    return best;
}

static void linear_ticks(double lo, double hi, int target, int integer, ticks *t) {
    double v[MAX_TICKS];
    int n = 0;
    double step = nice_ticks(lo, hi, target, integer, v, &n, MAX_TICKS);
    double maxabs = 0.0;
    for (int i = 0; i < n; i++) maxabs = fmax(maxabs, fabs(v[i]));
    t->n = n;
    for (int i = 0; i < n; i++) {
        t->pos[i] = v[i];
        fmt_linear(t->label[i], sizeof t->label[i], v[i], step, maxabs);
    }
}

/* Ticks for a log10 axis spanning [lo, hi] in exponent space: powers of ten
 * when at least two fit, else 1/2/5 multiples, else plain linear ticks. */
static void log_ticks(double lo, double hi, int target, ticks *t) {
    t->n = 0;
    double d0 = ceil(lo - 1e-9), d1 = floor(hi + 1e-9);
    if (d1 - d0 >= 1) {
        double stride = ceil((d1 - d0 + 1) / (target + 1));
        for (double e = d0; e <= d1 && t->n < MAX_TICKS; e += stride) {
            t->pos[t->n] = e;
            fmt_general(t->label[t->n], sizeof t->label[0], pow(10.0, e));
            t->n++;
        }
        return;
    }
    static const double mult[] = {1.0, 2.0, 5.0};
    for (double e = floor(lo); e <= ceil(hi) && t->n < MAX_TICKS; e++)
        for (int i = 0; i < 3 && t->n < MAX_TICKS; i++) {
            double p = log10(mult[i]) + e;
            if (p < lo - 1e-9 || p > hi + 1e-9) continue;
            t->pos[t->n] = p;
            fmt_general(t->label[t->n], sizeof t->label[0], mult[i] * pow(10.0, e));
            t->n++;
        }
    if (t->n >= 3) return;
    ticks lin;
    linear_ticks(pow(10.0, lo), pow(10.0, hi), target, 0, &lin);
    t->n = 0;
    for (int i = 0; i < lin.n; i++) {
        if (!(lin.pos[i] > 0)) continue;
        t->pos[t->n] = log10(lin.pos[i]);
        memcpy(t->label[t->n], lin.label[i], sizeof t->label[0]);
        t->n++;
    }
}

/* The caller's tick values inside [lo, hi] (axis space: log10 on a log
 * axis), each labelled with its value. */
static void given_ticks(const double *v, int n, int log_axis, double lo, double hi, ticks *t) {
    t->n = 0;
    for (int i = 0; i < n && t->n < MAX_TICKS; i++) {
        if (!isfinite(v[i]) || (log_axis && !(v[i] > 0))) continue;
        double p = log_axis ? log10(v[i]) : v[i];
        if (p < lo || p > hi) continue;
        t->pos[t->n] = p;
        fmt_general(t->label[t->n], sizeof t->label[0], v[i]);
        t->n++;
    }
}

static int max_label_w(const ticks *t, int scale) {
    int w = 0;
    for (int i = 0; i < t->n; i++) {
        int lw = text_w(t->label[i], scale);
        if (lw > w) w = lw;
    }
    return w;
}

/* Drop every other tick until neighbours are `need` pixels apart at
 * `px_per_unit`. */
static void thin_ticks_to(ticks *t, double px_per_unit, double need) {
    while (t->n > 2) {
        double min_gap = 1e300;
        for (int i = 1; i < t->n; i++) min_gap = fmin(min_gap, (t->pos[i] - t->pos[i - 1]) * px_per_unit);
        if (min_gap >= need) return;
        int k = 0;
        for (int i = 0; i < t->n; i += 2, k++) {
            t->pos[k] = t->pos[i];
            memmove(t->label[k], t->label[i], sizeof t->label[0]);
        }
        t->n = k;
    }
}

/* Drop every other tick until labels no longer touch at `px_per_unit`. */
static void thin_ticks(ticks *t, double px_per_unit, int scale) {
    thin_ticks_to(t, px_per_unit, max_label_w(t, scale) + 10 * scale);
}

/* ---- anti-aliased lines ------------------------------------------------------ */
/* Per-series coverage mask over the plot area. Taking the max coverage and
 * compositing once keeps the joints of a polyline from being painted twice,
 * which would darken them. */
typedef struct {
    uint8_t *cov;
    int w, h;
} mask;

/* Segment (ax,ay)-(bx,by) of half-width r: each pixel's coverage falls off
 * linearly over one pixel with its centre's distance from the segment.
 * Only a band around the segment is visited, so cost is O(length). */
static void mask_segment(mask *m, double ax, double ay, double bx, double by, double r) {
    double dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
    int x_major = fabs(dx) >= fabs(dy);
    double m0 = x_major ? fmin(ax, bx) : fmin(ay, by), m1 = x_major ? fmax(ax, bx) : fmax(ay, by);
    double n_lo = x_major ? fmin(ay, by) : fmin(ax, bx), n_hi = x_major ? fmax(ay, by) : fmax(ax, bx);
    int major_len = x_major ? m->w : m->h, minor_len = x_major ? m->h : m->w;
    double band = r * 1.5 + 1.5;
    int i0 = (int)fmax(0.0, floor(m0 - r - 1)), i1 = (int)fmin(major_len - 1.0, ceil(m1 + r + 1));
    for (int i = i0; i <= i1; i++) {
        double c;
        if (x_major)
            c = dx != 0 ? ay + (i - ax) * dy / dx : ay;
        else
            c = dy != 0 ? ax + (i - ay) * dx / dy : ax;
        c = fmin(fmax(c, n_lo), n_hi);
        int j0 = (int)fmax(0.0, floor(c - band)), j1 = (int)fmin(minor_len - 1.0, ceil(c + band));
        for (int j = j0; j <= j1; j++) {
            double px = x_major ? i : j, py = x_major ? j : i;
            double t = len2 > 0 ? ((px - ax) * dx + (py - ay) * dy) / len2 : 0.0;
            t = fmin(fmax(t, 0.0), 1.0);
            double ex = px - (ax + t * dx), ey = py - (ay + t * dy);
            double cover = r + 0.5 - sqrt(ex * ex + ey * ey);
            if (cover <= 0) continue;
            int v = cover >= 1 ? 255 : (int)lround(cover * 255);
            uint8_t *p = &m->cov[(size_t)py * (size_t)m->w + (size_t)px];
            if (v > *p) *p = (uint8_t)v;
        }
    }
}

/* Ring of radius rad around (cx, cy), stroke half-width r. */
static void mask_ring(mask *m, double cx, double cy, double rad, double r) {
    const double e = rad + r + 1;
    int x0 = (int)fmax(0.0, floor(cx - e)), x1 = (int)fmin(m->w - 1.0, ceil(cx + e));
    int y0 = (int)fmax(0.0, floor(cy - e)), y1 = (int)fmin(m->h - 1.0, ceil(cy + e));
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++) {
            double cover = r + 0.5 - fabs(hypot(x - cx, y - cy) - rad);
            if (cover <= 0) continue;
            int v = cover >= 1 ? 255 : (int)lround(cover * 255);
            uint8_t *p = &m->cov[(size_t)y * (size_t)m->w + (size_t)x];
            if (v > *p) *p = (uint8_t)v;
        }
}

/* Outline of marker k centred on (cx, cy), about 2 * rad across. */
static void mask_marker(mask *m, ap_plot_marker k, double cx, double cy, double rad, double r) {
    /* Unit-radius polygons; the triangles sit a little low so their centre
     * of area is on the point. */
    static const double sq[] = {-0.8, -0.8, 0.8, -0.8, 0.8, 0.8, -0.8, 0.8};
    static const double tri[] = {0.0, -1.1, 1.0, 0.65, -1.0, 0.65};
    static const double tri_dn[] = {0.0, 1.1, 1.0, -0.65, -1.0, -0.65};
    static const double dia[] = {0.0, -1.1, 1.0, 0.0, 0.0, 1.1, -1.0, 0.0};
    static const double cross[] = {-0.8, -0.8, 0.8, 0.8, -0.8, 0.8, 0.8, -0.8};
    const double *v = NULL;
    int n = 0, closed = 1;
    switch (k) {
    case AP_PLOT_MARK_CIRCLE: mask_ring(m, cx, cy, rad * 0.9, r); return;
    case AP_PLOT_MARK_SQUARE: v = sq, n = 4; break;
    case AP_PLOT_MARK_TRIANGLE: v = tri, n = 3; break;
    case AP_PLOT_MARK_DIAMOND: v = dia, n = 4; break;
    case AP_PLOT_MARK_TRIANGLE_DOWN: v = tri_dn, n = 3; break;
    case AP_PLOT_MARK_CROSS: v = cross, n = 4, closed = 0; break;
    default: return;
    }
    /* A closed outline joins its vertices; the cross is two strokes. */
    for (int i = 0; i < n; i += closed ? 1 : 2) {
        int j = closed ? (i + 1) % n : i + 1;
        mask_segment(m, cx + rad * v[2 * i], cy + rad * v[2 * i + 1], cx + rad * v[2 * j],
                     cy + rad * v[2 * j + 1], r);
    }
}

/* A dash pattern walked along a polyline: on/off lengths in pixels (times
 * the font scale; round caps lengthen each dash by the line width), the
 * phase carried from one segment to the next so corners do not restart it. */
typedef struct {
    double pat[4];
    int n, idx;
    double left;
} dasher;

static void dasher_init(dasher *d, ap_plot_dash k, double unit) {
    static const double pats[AP_PLOT_DASH_COUNT][4] = {
        {0, 0, 0, 0}, {6, 6, 0, 0}, {0.5, 4.5, 0, 0}, {6, 5, 0.5, 5}};
    static const int lens[AP_PLOT_DASH_COUNT] = {0, 2, 2, 4};
    memset(d, 0, sizeof *d);
    if (k <= AP_PLOT_SOLID || k >= AP_PLOT_DASH_COUNT) return;
    d->n = lens[k];
    for (int i = 0; i < d->n; i++) d->pat[i] = pats[k][i] * unit;
    d->left = d->pat[0];
}

static void mask_dashed(mask *m, dasher *d, double ax, double ay, double bx, double by, double r) {
    if (d->n == 0) {
        mask_segment(m, ax, ay, bx, by, r);
        return;
    }
    double dx = bx - ax, dy = by - ay, len = hypot(dx, dy), pos = 0.0;
    while (pos < len) {
        double step = fmin(d->left, len - pos);
        if (d->idx % 2 == 0) {
            double t0 = pos / len, t1 = (pos + step) / len;
            mask_segment(m, ax + t0 * dx, ay + t0 * dy, ax + t1 * dx, ay + t1 * dy, r);
        }
        pos += step;
        d->left -= step;
        if (d->left <= 1e-9) {
            d->idx = (d->idx + 1) % d->n;
            d->left = d->pat[d->idx];
        }
    }
}

ap_plot_style ap_plot_style_distinct(int i) {
    if (i < 0) i = 0;
    /* Only the first line is solid: a solid line over a coinciding one would
     * hide it, a dashed one leaves it visible in its gaps. Six markers and
     * three patterns, the patterns shifted every six series, so no two of the
     * first 12 share both; the ten colours add a third cue. */
    return (ap_plot_style){.marker = (ap_plot_marker)(1 + i % 6),
                           .dash = i == 0 ? AP_PLOT_SOLID : (ap_plot_dash)(1 + (i + i / 6) % 3),
                           .color = i + 1};
}

/* ---- line chart -------------------------------------------------------------- */
/* Point k of series s in axis space; 0 when it must be skipped. */
static int series_point(const ap_plot_series *s, int k, int log_x, double *x, double *y) {
    double xv = s->x ? s->x[k] : (double)k, yv = s->y[k];
    if (!isfinite(xv) || !isfinite(yv)) return 0;
    if (log_x) {
        if (!(xv > 0)) return 0;
        xv = log10(xv);
    }
    *x = xv;
    *y = yv;
    return 1;
}

static const char *series_label(const ap_plot_series *s, int i, char *buf, size_t n) {
    if (s->label && *s->label) return s->label;
    snprintf(buf, n, "series %d", i);
    return buf;
}

/* Widen [lo, hi] by frac on each side; a degenerate range gets a width. */
static void pad_range(double *lo, double *hi, double frac) {
    /* A span at the limit of double precision would give ticks that round to
     * the same value, so treat it as constant. */
    if (*hi - *lo <= fabs(*lo) * 1e-12) {
        double mid = 0.5 * (*lo + *hi);
        double d = mid != 0 ? fabs(mid) * 0.05 : 0.5;
        *lo = mid - d;
        *hi = mid + d;
        return;
    }
    double d = (*hi - *lo) * frac;
    *lo -= d;
    *hi += d;
}

typedef struct {
    int x0, y0, x1, y1;
} box;

static int box_contains(box b, double x, double y) {
    return x >= b.x0 && x < b.x1 && y >= b.y0 && y < b.y1;
}

/* Interval of point k of series i in axis space; 0 when it has none. */
static int series_bar(const ap_plot_yerr *bars, int i, int k, double *lo, double *hi) {
    if (!bars || !bars[i].lo || !bars[i].hi) return 0;
    double a = bars[i].lo[k], b = bars[i].hi[k];
    if (!isfinite(a) || !isfinite(b)) return 0;
    *lo = fmin(a, b);
    *hi = fmax(a, b);
    return 1;
}

/* Marker size (half across) and legend sample length, per font scale. */
#define MARKER_RAD 4.5
#define LEGEND_SAMPLE 30

static ap_plot_style series_style(const ap_plot_opts *o, int i) {
    return o->styles ? o->styles[i] : (ap_plot_style){0};
}

static rgb8 series_color(const ap_plot_opts *o, int i) {
    ap_plot_style st = series_style(o, i);
    return palette(st.color > 0 ? st.color - 1 : i);
}

/* A legend entry's sample: a stretch of the series' line, its pattern and
 * its marker in the middle, left end at x, centred on y. */
static void legend_sample(canvas *cv, int x, int y, int len, ap_plot_style st, rgb8 col, int fs,
                          double line_r) {
    enum { MAX_W = LEGEND_SAMPLE * 2 + 2, MAX_H = 24 };
    uint8_t cov[MAX_W * MAX_H] = {0};
    mask m = {cov, len + 2 < MAX_W ? len + 2 : MAX_W, 10 * fs + 2 < MAX_H ? 10 * fs + 2 : MAX_H};
    double cy = 0.5 * (m.h - 1);
    dasher dd;
    dasher_init(&dd, st.dash, st.wide ? 2 * fs : fs);
    mask_dashed(&m, &dd, 1.0, cy, m.w - 2.0, cy, st.wide ? 2.0 * line_r : line_r);
    if (st.marker) mask_marker(&m, st.marker, 0.5 * (m.w - 1), cy, MARKER_RAD * fs, 0.6 * fs);
    int oy = y - (int)lround(cy);
    for (int j = 0; j < m.h; j++)
        for (int i = 0; i < m.w; i++)
            if (cov[j * m.w + i]) blend_px(cv, x - 1 + i, oy + j, col, cov[j * m.w + i]);
}

ap_status ap_plot_lines_png(const char *path, const ap_plot_opts *o, const ap_plot_series *s,
                            int n_series, ap_err *err) {
    return ap_plot_lines_err_png(path, o, s, NULL, n_series, err);
}

ap_status ap_plot_lines_err_png(const char *path, const ap_plot_opts *o, const ap_plot_series *s,
                                const ap_plot_yerr *bars, int n_series, ap_err *err) {
    ap_status st = AP_OK;
    canvas cv = {0};
    mask mk = {0};
    static const ap_plot_opts defaults = {0};
    if (!o) o = &defaults;
    if (!path || !*path) return ap_errf(err, AP_ERR_ARG, "plot: no output path given");
    if (!s || n_series < 1)
        return ap_errf(err, AP_ERR_ARG, "%s: plot needs at least one series", path);
    for (int i = 0; i < n_series; i++) {
        if (s[i].n < 1 || !s[i].y)
            return ap_errf(err, AP_ERR_ARG, "%s: series %d (%s) has no points", path, i,
                           s[i].label ? s[i].label : "unnamed");
        if (bars && !bars[i].lo != !bars[i].hi)
            return ap_errf(err, AP_ERR_ARG, "%s: series %d (%s) has an error bar bound missing",
                           path, i, s[i].label ? s[i].label : "unnamed");
    }
    int W = o->width > 0 ? o->width : 800, H = o->height > 0 ? o->height : 500;
    if (W < 200 || H < 150 || W > 8192 || H > 8192)
        return ap_errf(err, AP_ERR_ARG, "%s: plot size %dx%d is outside 200x150 .. 8192x8192",
                       path, W, H);
    int log_x = o->log_x != 0;

    /* Data ranges in axis space. */
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (int i = 0; i < n_series; i++)
        for (int k = 0; k < s[i].n; k++) {
            double x, y, lo, hi;
            if (!series_point(&s[i], k, log_x, &x, &y)) continue;
            xlo = fmin(xlo, x);
            xhi = fmax(xhi, x);
            ylo = fmin(ylo, y);
            yhi = fmax(yhi, y);
            if (series_bar(bars, i, k, &lo, &hi)) {
                ylo = fmin(ylo, lo);
                yhi = fmax(yhi, hi);
            }
        }
    if (xlo > xhi) { /* no drawable point at all: empty axes */
        xlo = ylo = 0.0;
        xhi = yhi = 1.0;
    }
    if (!isfinite(xhi - xlo) || !isfinite(yhi - ylo))
        return ap_errf(err, AP_ERR_NUMERIC, "%s: data range is too wide to plot", path);
    /* A little x padding keeps end points and dots clear of the frame. */
    pad_range(&xlo, &xhi, 0.02);
    pad_range(&ylo, &yhi, 0.05);

    const char *title = o->title ? o->title : "";
    const char *xlabel = o->xlabel ? o->xlabel : "";
    const char *ylabel = o->ylabel ? o->ylabel : "";
    int fs = (W >= 1400 && H >= 900) ? 2 : 1; /* font scale */
    int ts = 2 * fs;                         /* title scale */
    const int pad = 10 * fs, tick_len = 5 * fs;
    /* A title too long for the width drops to the body size, then is cut
     * short with "..." rather than clipped mid-glyph. */
    char title_buf[256];
    if (*title && text_w(title, ts) > W - 2 * pad) ts = fs;
    if (*title && text_w(title, ts) > W - 2 * pad) {
        int fit = (W - 2 * pad + ts) / (CELL_W * ts) - 3;
        if (fit < 0) fit = 0;
        if (fit > (int)sizeof title_buf - 4) fit = (int)sizeof title_buf - 4;
        snprintf(title_buf, sizeof title_buf, "%.*s...", fit, title);
        title = title_buf;
    }

    ticks yt, xt;
    linear_ticks(ylo, yhi, 5, 0, &yt);
    xt.n = 0;
    if (o->xticks && o->n_xticks > 0) given_ticks(o->xticks, o->n_xticks, log_x, xlo, xhi, &xt);
    if (xt.n == 0 && log_x) log_ticks(xlo, xhi, 5, &xt);
    if (xt.n == 0 && !log_x) linear_ticks(xlo, xhi, 5, o->x_integer, &xt);

    /* Margins around the plot area. */
    int top = pad + (*title ? text_h(ts) + pad + 4 : 4);
    int left = pad + (*ylabel ? text_h(fs) + 8 : 0) + max_label_w(&yt, fs) + 4 + tick_len;
    int bottom = tick_len + 4 + text_h(fs) + (*xlabel ? 8 + text_h(fs) : 0) + pad;
    int right = pad + (max_label_w(&xt, fs) + 1) / 2;
    int pw = W - left - right, ph = H - top - bottom;
    if (pw < 40 || ph < 40)
        return ap_errf(err, AP_ERR_ARG,
                       "%s: plot size %dx%d leaves no room for the data; make it larger", path,
                       W, H);
    int px0 = left, py0 = top; /* plot area: [px0, px0+pw) x [py0, py0+ph) */
    double sx = (pw - 1) / (xhi - xlo), sy = (ph - 1) / (yhi - ylo);
    thin_ticks(&xt, sx, fs);
    const double line_r = fs; /* half-width: 2-px lines, thicker on big canvases */

    st = canvas_new(&cv, W, H, err);
    if (st) goto cleanup;
    mk.w = pw;
    mk.h = ph;
    mk.cov = malloc((size_t)pw * (size_t)ph);
    if (!mk.cov) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }

    /* Grid first so data is drawn over it. */
    for (int i = 0; i < xt.n; i++) {
        int x = px0 + (int)lround((xt.pos[i] - xlo) * sx);
        fill_rect(&cv, x, py0, x + 1, py0 + ph, C_GRID);
    }
    for (int i = 0; i < yt.n; i++) {
        int y = py0 + (ph - 1) - (int)lround((yt.pos[i] - ylo) * sy);
        fill_rect(&cv, px0, y, px0 + pw, y + 1, C_GRID);
    }

    for (int i = 0; i < n_series; i++) {
        memset(mk.cov, 0, (size_t)pw * (size_t)ph);
        const ap_plot_style sty = series_style(o, i);
        const double lr = sty.wide ? 2.0 * line_r : line_r;
        dasher dd;
        dasher_init(&dd, sty.dash, sty.wide ? 2 * fs : fs);
        double prev_x = 0, prev_y = 0;
        int have_prev = 0;
        for (int k = 0; k < s[i].n; k++) {
            double x, y;
            if (!series_point(&s[i], k, log_x, &x, &y)) {
                have_prev = 0;
                continue;
            }
            double mx = (x - xlo) * sx, my = (ph - 1) - (y - ylo) * sy;
            double nx = 0, ny = 0;
            int next_ok = k + 1 < s[i].n && series_point(&s[i], k + 1, log_x, &nx, &ny);
            if (have_prev)
                mask_dashed(&mk, &dd, prev_x, prev_y, mx, my, lr);
            else if (!next_ok) /* isolated point: a dot, or it would vanish */
                mask_segment(&mk, mx, my, mx, my, 2.0 * line_r);
            if (sty.marker) mask_marker(&mk, sty.marker, mx, my, MARKER_RAD * fs, 0.6 * fs);
            prev_x = mx;
            prev_y = my;
            have_prev = 1;
            /* Thinner than the line, with caps, so bars of neighbouring
             * points stay apart and the ends read clearly. */
            double lo, hi;
            if (series_bar(bars, i, k, &lo, &hi)) {
                double ylo_px = (ph - 1) - (lo - ylo) * sy, yhi_px = (ph - 1) - (hi - ylo) * sy;
                double cap = 4.0 * fs;
                mask_segment(&mk, mx, ylo_px, mx, yhi_px, 0.5 * line_r);
                mask_segment(&mk, mx - cap, ylo_px, mx + cap, ylo_px, 0.5 * line_r);
                mask_segment(&mk, mx - cap, yhi_px, mx + cap, yhi_px, 0.5 * line_r);
            }
        }
        rgb8 col = series_color(o, i);
        for (int y = 0; y < ph; y++)
            for (int x = 0; x < pw; x++) {
                uint8_t a = mk.cov[(size_t)y * (size_t)pw + (size_t)x];
                if (a) blend_px(&cv, px0 + x, py0 + y, col, a);
            }
    }

    /* Frame and tick marks. */
    frame_rect(&cv, px0, py0, px0 + pw, py0 + ph, C_AXIS);
    for (int i = 0; i < xt.n; i++) {
        int x = px0 + (int)lround((xt.pos[i] - xlo) * sx);
        fill_rect(&cv, x, py0 + ph + 1, x + 1, py0 + ph + 1 + tick_len, C_AXIS);
        int lw = text_w(xt.label[i], fs);
        int lx = x - lw / 2;
        if (lx + lw > W - 2) lx = W - 2 - lw;
        draw_text(&cv, lx, py0 + ph + 1 + tick_len + 4, xt.label[i], fs, C_TEXT);
    }
    for (int i = 0; i < yt.n; i++) {
        int y = py0 + (ph - 1) - (int)lround((yt.pos[i] - ylo) * sy);
        fill_rect(&cv, px0 - 1 - tick_len, y, px0 - 1, y + 1, C_AXIS);
        int lw = text_w(yt.label[i], fs);
        int ly = y - text_h(fs) / 2;
        if (ly < 2) ly = 2;
        draw_text(&cv, px0 - 1 - tick_len - 4 - lw, ly, yt.label[i], fs, C_TEXT);
    }

    /* Title centred on the image; axis labels centred on the plot area. */
    if (*title) {
        int tw = text_w(title, ts);
        int tx = tw <= W - 2 * pad ? (W - tw) / 2 : pad;
        draw_text(&cv, tx, pad, title, ts, C_TEXT);
    }
    if (*xlabel) {
        int lw = text_w(xlabel, fs);
        draw_text(&cv, px0 + (pw - lw) / 2, H - pad - text_h(fs), xlabel, fs, C_TEXT);
    }
    if (*ylabel) {
        int lh = text_w(ylabel, fs);
        int ly = py0 + (ph - lh) / 2;
        if (ly < 0) ly = 0;
        draw_text_up(&cv, pad, ly, ylabel, fs, C_TEXT);
    }

    /* Legend: in whichever plot-area corner covers the fewest data points. */
    {
        char lab[24];
        int row_h = CELL_H * fs + 4, sample = LEGEND_SAMPLE * fs, lab_w = 0;
        for (int i = 0; i < n_series; i++) {
            int w = text_w(series_label(&s[i], i, lab, sizeof lab), fs);
            if (w > lab_w) lab_w = w;
        }
        int bw = 8 + sample + 6 + lab_w + 8, bh = 6 + n_series * row_h + 2;
        box cand[4] = {
            {px0 + pw - 8 - bw, py0 + 8, px0 + pw - 8, py0 + 8 + bh},           /* top right */
            {px0 + 8, py0 + 8, px0 + 8 + bw, py0 + 8 + bh},                     /* top left */
            {px0 + pw - 8 - bw, py0 + ph - 8 - bh, px0 + pw - 8, py0 + ph - 8}, /* bottom right */
            {px0 + 8, py0 + ph - 8 - bh, px0 + 8 + bw, py0 + ph - 8}};          /* bottom left */
        long hits[4] = {0, 0, 0, 0};
        for (int i = 0; i < n_series; i++)
            for (int k = 0; k < s[i].n; k++) {
                double x, y, x2 = 0, y2 = 0;
                if (!series_point(&s[i], k, log_x, &x, &y)) continue;
                double mx = px0 + (x - xlo) * sx, my = py0 + (ph - 1) - (y - ylo) * sy;
                /* Segment midpoints too, so a long straight run is seen. */
                int mid = k + 1 < s[i].n && series_point(&s[i], k + 1, log_x, &x2, &y2);
                double qx = px0 + (x2 - xlo) * sx, qy = py0 + (ph - 1) - (y2 - ylo) * sy;
                double lo = 0, hi = 0;
                int bar = series_bar(bars, i, k, &lo, &hi);
                double blo = py0 + (ph - 1) - (lo - ylo) * sy;
                double bhi = py0 + (ph - 1) - (hi - ylo) * sy;
                for (int c = 0; c < 4; c++) {
                    hits[c] += box_contains(cand[c], mx, my);
                    if (mid) hits[c] += box_contains(cand[c], 0.5 * (mx + qx), 0.5 * (my + qy));
                    if (bar)
                        hits[c] += box_contains(cand[c], mx, blo) + box_contains(cand[c], mx, bhi);
                }
            }
        int best = 0;
        for (int c = 1; c < 4; c++)
            if (hits[c] < hits[best]) best = c;
        box b = cand[best];
        fill_rect(&cv, b.x0, b.y0, b.x1, b.y1, C_WHITE);
        frame_rect(&cv, b.x0, b.y0, b.x1, b.y1, C_LEGEND_EDGE);
        for (int i = 0; i < n_series; i++) {
            int ry = b.y0 + 6 + i * row_h;
            legend_sample(&cv, b.x0 + 8, ry + text_h(fs) / 2, sample, series_style(o, i),
                          series_color(o, i), fs, line_r);
            draw_text(&cv, b.x0 + 8 + sample + 6, ry, series_label(&s[i], i, lab, sizeof lab), fs,
                      C_TEXT);
        }
    }

    st = write_png(path, &cv, err);
cleanup:
    free(mk.cov);
    free(cv.px);
    return st;
}

/* ---- heatmap ------------------------------------------------------------------ */
/* Pixels along one side of the map for n cells: upscaled by an integer factor
 * to at least 400, or squeezed to 2000 when there are more cells than that. */
static int heat_side(int n) {
    if (n > 2000) return 2000;
    int per = (400 + n - 1) / n;
    return n * (per < 1 ? 1 : per);
}

/* Colour value of a cell: log10 on a log scale, with v <= 0 below every
 * positive value; NaN stays NaN. */
static double heat_value(float v, int log_scale) {
    double d = v;
    if (isnan(d)) return NAN;
    if (log_scale) return d > 0 ? log10(d) : -INFINITY;
    return d;
}

static void fmt_bar_label(char *buf, size_t n, double v, int log_scale, int have) {
    if (!have) {
        snprintf(buf, n, "nan");
        return;
    }
    char num[32];
    snprintf(num, sizeof num, "%.3g", log_scale ? pow(10.0, v) : v);
    compact_exponent(num);
    snprintf(buf, n, "%s", num);
}

/* Colour of value h on [lo, hi] in the chosen map. */
static rgb8 heat_color(double h, double lo, double hi, int diverging) {
    unsigned char rgb[3];
    if (diverging)
        ap_plot_diverging_colormap(hi > lo ? (h - lo) / (hi - lo) : 0.5, rgb);
    else
        ap_plot_colormap(hi > lo ? (h - lo) / (hi - lo) : 0.0, rgb);
    return (rgb8){rgb[0], rgb[1], rgb[2]};
}

/* Ticks of a heatmap axis of n cells: nice values between the first and
 * the last cell's (whole numbers when the cells step by whole numbers),
 * positioned in cells (0 = the first cell's centre). */
static void axis_ticks(const ap_plot_axis *a, int n, ticks *t) {
    const double step = a->step != 0 ? a->step : 1.0;
    const double v0 = a->first, v1 = a->first + (n - 1) * step;
    const int integer = step == round(step) && v0 == round(v0);
    t->n = 0;
    if (n == 1) {
        t->pos[0] = 0.0;
        fmt_general(t->label[0], sizeof t->label[0], v0);
        t->n = 1;
        return;
    }
    linear_ticks(fmin(v0, v1), fmax(v0, v1), 6, integer, t);
    for (int i = 0; i < t->n; i++) t->pos[i] = (t->pos[i] - v0) / step;
}

static int axis_on(const ap_plot_axis *a) { return a->label && *a->label; }

static ap_status heatmap_png(const char *path, const ap_plot_heatmap_opts *o, const float *v,
                             int rows, int cols, ap_err *err) {
    ap_status st = AP_OK;
    canvas cv = {0};
    int *col_start = NULL, *row_start = NULL;
    if (!path || !*path) return ap_errf(err, AP_ERR_ARG, "heatmap: no output path given");
    if (!v || rows < 1 || cols < 1)
        return ap_errf(err, AP_ERR_ARG, "%s: heatmap needs a non-empty matrix (got %dx%d)", path,
                       rows, cols);
    if ((long long)rows * cols > (1LL << 31))
        return ap_errf(err, AP_ERR_RANGE, "%s: heatmap of %dx%d cells is too large", path, rows,
                       cols);
    const char *title = o->title ? o->title : "";
    const int log_scale = o->log_scale != 0, diverging = o->diverging != 0;
    const int x_on = axis_on(&o->x), y_on = axis_on(&o->y);
    const char *bar_label = o->bar_label ? o->bar_label : "";

    /* Colour range: the caller's, or the finite (positive, on a log scale)
     * values'. */
    double lo = INFINITY, hi = -INFINITY;
    size_t ncell = (size_t)rows * (size_t)cols;
    for (size_t i = 0; i < ncell; i++) {
        double h = heat_value(v[i], log_scale);
        if (!isfinite(h)) continue;
        lo = fmin(lo, h);
        hi = fmax(hi, h);
    }
    int have = lo <= hi;
    if (o->lo < o->hi) {
        lo = o->lo;
        hi = o->hi;
        have = 1;
    } else if (have && diverging) { /* symmetric, so white is exactly zero */
        hi = fmax(fabs(lo), fabs(hi));
        lo = hi > 0 ? -hi : 0.0; /* no "-0" label on an all-zero map */
    }

    int mw = heat_side(cols), mh = heat_side(rows);
    const int pad = 16, bar_w = 20, bar_gap = 16, ts = 2, tick_len = 4;
    char lab_max[32], lab_min[32];
    fmt_bar_label(lab_max, sizeof lab_max, hi, log_scale, have);
    fmt_bar_label(lab_min, sizeof lab_min, lo, log_scale, have);
    if (diverging && have && hi > 0) {
        char num[32];
        snprintf(num, sizeof num, "%s", lab_max);
        snprintf(lab_max, sizeof lab_max, "+%.30s", num);
    }
    /* Colour bar ticks through the range: powers of ten on a log scale. */
    ticks bt = {.n = 0};
    if (have && hi > lo) {
        if (log_scale)
            log_ticks(lo, hi, 5, &bt);
        else
            linear_ticks(lo, hi, 5, 0, &bt);
    }
    int lab_w = text_w(lab_max, 1);
    if (text_w(lab_min, 1) > lab_w) lab_w = text_w(lab_min, 1);
    if (max_label_w(&bt, 1) > lab_w) lab_w = max_label_w(&bt, 1);
    const char *mid_note = log_scale && !*bar_label ? "log" : "";
    if (text_w(mid_note, 1) > lab_w) lab_w = text_w(mid_note, 1);

    ticks xt = {.n = 0}, yt = {.n = 0};
    if (x_on) axis_ticks(&o->x, cols, &xt);
    if (y_on) axis_ticks(&o->y, rows, &yt);
    const double cx = (double)mw / cols, cy = (double)mh / rows; /* pixels per cell */
    thin_ticks(&xt, cx, 1);
    thin_ticks_to(&yt, cy, text_h(1) + 6);

    int left = pad + (y_on ? text_h(1) + 8 + max_label_w(&yt, 1) + 4 + tick_len : 0);
    int top = pad + (*title ? text_h(ts) + pad : 0);
    int bottom = pad + (x_on ? tick_len + 4 + text_h(1) + 8 + text_h(1) : 0);
    int W = left + mw + bar_gap + bar_w + tick_len + 4 + lab_w +
            (*bar_label ? 8 + text_h(1) : 0) + pad;
    if (*title && text_w(title, ts) + 2 * pad > W) W = text_w(title, ts) + 2 * pad;
    int H = top + mh + bottom;
    st = canvas_new(&cv, W, H, err);
    if (st) goto cleanup;

    /* Cell span of each pixel column/row: [start[p], start[p+1]). */
    col_start = malloc(sizeof(int) * (size_t)(mw + 1));
    row_start = malloc(sizeof(int) * (size_t)(mh + 1));
    if (!col_start || !row_start) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    for (int p = 0; p <= mw; p++) col_start[p] = (int)((long long)p * cols / mw);
    for (int p = 0; p <= mh; p++) row_start[p] = (int)((long long)p * rows / mh);

    int mx0 = left, my0 = top;
    for (int py = 0; py < mh; py++) {
        int r0 = row_start[py], r1 = row_start[py + 1] > r0 ? row_start[py + 1] : r0 + 1;
        for (int px = 0; px < mw; px++) {
            int c0 = col_start[px], c1 = col_start[px + 1] > c0 ? col_start[px + 1] : c0 + 1;
            /* When cells outnumber pixels, the block max keeps sparse peaks
             * (typical of attention) from being sampled away; signed data
             * keeps the largest |v| so negative peaks survive too. */
            double m = NAN;
            for (int r = r0; r < r1; r++)
                for (int c = c0; c < c1; c++) {
                    double h = heat_value(v[(size_t)r * (size_t)cols + (size_t)c], log_scale);
                    if (isnan(h)) continue;
                    if (isnan(m) || (diverging ? fabs(h) > fabs(m) : h > m)) m = h;
                }
            put_px(&cv, mx0 + px, my0 + py, isnan(m) ? C_NAN : heat_color(m, lo, hi, diverging));
        }
    }
    if (o->mark_row > 0 && o->mark_row < rows) {
        int y = my0 + (int)(((long long)o->mark_row * mh + rows - 1) / rows);
        fill_rect(&cv, mx0, y, mx0 + mw, y + 1, C_MARK);
    }
    frame_rect(&cv, mx0, my0, mx0 + mw, my0 + mh, C_AXIS);

    /* Axes: tick marks outside the frame at cell centres, values, titles. */
    for (int i = 0; i < xt.n; i++) {
        int x = mx0 + (int)lround((xt.pos[i] + 0.5) * cx - 0.5);
        fill_rect(&cv, x, my0 + mh + 1, x + 1, my0 + mh + 1 + tick_len, C_AXIS);
        int lw = text_w(xt.label[i], 1), lx = x - lw / 2;
        draw_text(&cv, lx < 2 ? 2 : lx, my0 + mh + 1 + tick_len + 3, xt.label[i], 1, C_TEXT);
    }
    for (int i = 0; i < yt.n; i++) {
        int y = my0 + (int)lround((yt.pos[i] + 0.5) * cy - 0.5);
        fill_rect(&cv, mx0 - 1 - tick_len, y, mx0 - 1, y + 1, C_AXIS);
        int lw = text_w(yt.label[i], 1);
        draw_text(&cv, mx0 - 1 - tick_len - 4 - lw, y - text_h(1) / 2, yt.label[i], 1, C_TEXT);
    }
    if (x_on) {
        int lw = text_w(o->x.label, 1);
        draw_text(&cv, mx0 + (mw - lw) / 2, H - pad - text_h(1), o->x.label, 1, C_TEXT);
    }
    if (y_on) {
        int lh = text_w(o->y.label, 1);
        draw_text_up(&cv, pad, my0 + (mh - lh) / 2 > 0 ? my0 + (mh - lh) / 2 : 0, o->y.label, 1,
                     C_TEXT);
    }

    /* Colour bar, max at the top, with its ticks, end values and caption. */
    int bx0 = mx0 + mw + bar_gap;
    for (int y = 0; y < mh; y++) {
        double t = mh > 1 ? 1.0 - (double)y / (mh - 1) : 1.0;
        fill_rect(&cv, bx0, my0 + y, bx0 + bar_w, my0 + y + 1, heat_color(t, 0.0, 1.0, diverging));
    }
    frame_rect(&cv, bx0, my0, bx0 + bar_w, my0 + mh, C_AXIS);
    int lx = bx0 + bar_w + tick_len + 4;
    draw_text(&cv, lx, my0, lab_max, 1, C_TEXT);
    draw_text(&cv, lx, my0 + mh - text_h(1), lab_min, 1, C_TEXT);
    for (int i = 0; i < bt.n; i++) {
        int y = my0 + (int)lround((hi - bt.pos[i]) / (hi - lo) * (mh - 1));
        fill_rect(&cv, bx0 + bar_w + 1, y, bx0 + bar_w + 1 + tick_len, y + 1, C_AXIS);
        /* The end values are printed already; interior labels keep clear. */
        int ly = y - text_h(1) / 2;
        if (ly < my0 + text_h(1) + 3 || ly + text_h(1) > my0 + mh - text_h(1) - 3) continue;
        draw_text(&cv, lx, ly, bt.label[i], 1, C_TEXT);
    }
    if (*mid_note) draw_text(&cv, lx, my0 + (mh - text_h(1)) / 2, mid_note, 1, C_TEXT);
    if (*bar_label) {
        int lh = text_w(bar_label, 1);
        draw_text_up(&cv, lx + lab_w + 8, my0 + (mh - lh) / 2 > 0 ? my0 + (mh - lh) / 2 : 0,
                     bar_label, 1, C_TEXT);
    }

    if (*title) draw_text(&cv, (W - text_w(title, ts)) / 2, pad, title, ts, C_TEXT);

    st = write_png(path, &cv, err);
cleanup:
    free(col_start);
    free(row_start);
    free(cv.px);
    return st;
}

ap_status ap_plot_heatmap_png(const char *path, const char *title, const float *v, int rows,
                              int cols, int log_scale, ap_err *err) {
    const ap_plot_heatmap_opts o = {.title = title, .log_scale = log_scale};
    return heatmap_png(path, &o, v, rows, cols, err);
}

ap_status ap_plot_heatmap_diverging_png(const char *path, const char *title, const float *v,
                                        int rows, int cols, ap_err *err) {
    const ap_plot_heatmap_opts o = {.title = title, .diverging = 1};
    return heatmap_png(path, &o, v, rows, cols, err);
}

ap_status ap_plot_heatmap_ex_png(const char *path, const ap_plot_heatmap_opts *o, const float *v,
                                 int rows, int cols, ap_err *err) {
    static const ap_plot_heatmap_opts defaults = {0};
    return heatmap_png(path, o ? o : &defaults, v, rows, cols, err);
}
