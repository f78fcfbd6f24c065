/* The narrow predictor CNN's convolution kernels (kernels/pred_conv.h)
 * against their plain references, at widths with and without a tail past
 * the last multiple of 8 (the AVX2 path recomputes the tail as an
 * overlapping vector) and for several channel counts. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/tolerance.h"
#include "kernels/pred_conv.h"

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *rand_buf(size_t n, uint64_t *s) {
    float *b = malloc(n * sizeof(float));
    cr_assert(b);
    for (size_t i = 0; i < n; i++) b[i] = frand(s);
    return b;
}

Test(pred_conv, conv2_row_matches_reference) {
    static const int cfg[][2] = {{4, 8}, {8, 16}, {3, 24}, {16, 32}, {2, 5}};
    static const int widths[] = {1, 7, 8, 9, 15, 16, 63, 504, 513};
    uint64_t s = 3;
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++)
        for (size_t t = 0; t < sizeof widths / sizeof widths[0]; t++) {
            const int c1 = cfg[c][0], c2 = cfg[c][1], n = widths[t], rows = 3;
            const size_t rs = (size_t)n + 2, cs = rs * rows;
            float *a1 = rand_buf((size_t)c1 * cs, &s), *w2 = rand_buf((size_t)c2 * c1 * 9, &s);
            float *b2 = rand_buf((size_t)c2, &s), *w3 = rand_buf((size_t)c2, &s);
            float *g = calloc((size_t)n, sizeof(float)), *ref = calloc((size_t)n, sizeof(float));
            cr_assert(g && ref);
            ap_pred_conv2_row(a1, c1, cs, rs, n, w2, b2, w3, c2, g);
            ap_pred_conv2_row_ref(a1, c1, cs, rs, n, w2, b2, w3, c2, ref);
            /* absolute against the sum of magnitudes: ReLU can cancel */
            double scale = 0.0;
            for (int co = 0; co < c2; co++) scale += fabs(w3[co]) * (c1 * 9 + 1);
            for (int x = 0; x < n; x++)
                cr_assert(fabs((double)g[x] - ref[x]) <= AP_TOL_KERNEL_REL * scale,
                          "c1 %d c2 %d n %d x %d: %.9g vs reference %.9g", c1, c2, n, x, g[x],
                          ref[x]);
            free(a1);
            free(w2);
            free(b2);
            free(w3);
            free(g);
            free(ref);
        }
}

Test(pred_conv, conv1_row_matches_reference) {
    static const int widths[] = {1, 7, 8, 9, 17, 514};
    uint64_t s = 5;
    for (size_t t = 0; t < sizeof widths / sizeof widths[0]; t++) {
        const int n = widths[t];
        const size_t xs = (size_t)n + 2;
        float *x = rand_buf(3 * xs, &s), k[9];
        for (int i = 0; i < 9; i++) k[i] = frand(&s);
        float *d = calloc((size_t)n, sizeof(float)), *ref = calloc((size_t)n, sizeof(float));
        cr_assert(d && ref);
        ap_pred_conv1_row(x, xs, n, k, 0.1f, d);
        ap_pred_conv1_row_ref(x, xs, n, k, 0.1f, ref);
        for (int j = 0; j < n; j++)
            cr_assert(fabs((double)d[j] - ref[j]) <= AP_TOL_KERNEL_REL * 10.0,
                      "n %d j %d: %.9g vs %.9g", n, j, d[j], ref[j]);
        free(x);
        free(d);
        free(ref);
    }
}
