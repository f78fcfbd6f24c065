#include "helpers/keep_all.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

ap_keep_all *ap_keep_all_create(int n_head_kv, int head_dim) {
    ap_keep_all *k = calloc(1, sizeof *k);
    cr_assert(k);
    k->kbuf = calloc((size_t)n_head_kv * 512 * head_dim, 4);
    k->vbuf = calloc((size_t)n_head_kv * 512 * head_dim, 4);
    cr_assert(k->kbuf && k->vbuf);
    k->scale = 1.0f;
    return k;
}

void ap_keep_all_free(ap_keep_all *k) {
    if (!k) return;
    free(k->kbuf);
    free(k->vbuf);
    free(k);
}

static unsigned ka_want(void *user, int layer, int pos) {
    (void)layer;
    (void)pos;
    return ((ap_keep_all *)user)->want;
}

static ap_status ka_select(void *user, const ap_kv_step *s, const int **blocks,
                           const int **set_off, ap_err *err) {
    ap_keep_all *k = user;
    (void)err;
    cr_assert(s->n_head < 64 && s->n_head * s->n_blocks <= 4096, "keep_all: step too large");
    int n = 0;
    for (int u = 0; u < s->n_head; u++) {
        k->set_off[u] = n;
        for (int j = 0; j < s->n_blocks; j++) k->blocks[n++] = j;
    }
    k->set_off[s->n_head] = n;
    *blocks = k->blocks;
    *set_off = k->set_off;
    return AP_OK;
}

static ap_status ka_pages(void *user, const ap_kv_step *s, const void *const **kp,
                          const void *const **vp, ap_err *err) {
    ap_keep_all *k = user;
    (void)err;
    const size_t es = ap_kv_type_size(s->kv_type), hd = (size_t)s->head_dim;
    const int n = s->pos + 1;
    cr_assert(n <= 512 && s->n_head_kv * s->n_blocks <= 2048, "keep_all: step too large");
    cr_assert(k->scale == 1.0f || s->kv_type == AP_KV_F32, "keep_all: scale needs an f32 cache");
    for (int g = 0; g < s->n_head_kv; g++) {
        unsigned char *kb = k->kbuf + (size_t)g * 512 * hd * es;
        unsigned char *vb = k->vbuf + (size_t)g * 512 * hd * es;
        for (int j = 0; j < n; j++) {
            const size_t src = ((size_t)j * s->kv_stride + (size_t)g * hd) * es;
            memcpy(kb + (size_t)j * hd * es, (const unsigned char *)s->k + src, hd * es);
            memcpy(vb + (size_t)j * hd * es, (const unsigned char *)s->v + src, hd * es);
            if (k->scale != 1.0f) {
                float *v = (float *)(void *)(vb + (size_t)j * hd * es);
                for (size_t d = 0; d < hd; d++) v[d] *= k->scale;
            }
        }
        for (int b = 0; b < s->n_blocks; b++) {
            k->kp[g * s->n_blocks + b] = kb + (size_t)b * 16 * hd * es;
            k->vp[g * s->n_blocks + b] = vb + (size_t)b * 16 * hd * es;
        }
    }
    *kp = k->kp;
    *vp = k->vp;
    k->pages_calls++;
    return AP_OK;
}

static ap_status ka_attended(void *user, const ap_kv_step *s, const ap_kv_attended *r,
                             ap_err *err) {
    (void)s;
    (void)err;
    if (r->kept_mass) ((ap_keep_all *)user)->measured++;
    return AP_OK;
}

ap_kv_policy ap_keep_all_policy(ap_keep_all *k, int with_pages) {
    return (ap_kv_policy){.user = k, .block = 16, .per_q_head = 1, .want = ka_want,
                          .select = ka_select, .attended = ka_attended,
                          .pages = with_pages ? ka_pages : NULL};
}
