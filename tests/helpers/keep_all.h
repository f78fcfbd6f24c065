/* A KV policy for engine tests that keeps every block of every query head
 * and, with pages, hands attention its own copy of the cache's rows (in
 * the cache's type, stride head_dim, as ap_kv_policy.pages says). `scale`
 * multiplies the copied values of an f32 cache, so a wrong output proves
 * the pages are what attention reads. Up to 512 keys and 2048 pages per
 * layer. Criterion asserts on misuse (test code only). */
#ifndef AP_KEEP_ALL_H
#define AP_KEEP_ALL_H

#include "capture/model.h"

typedef struct {
    int blocks[4096], set_off[64];
    unsigned char *kbuf, *vbuf; /* [n_head_kv][512][head_dim] elements */
    const void *kp[2048], *vp[2048];
    float scale;                /* f32 caches only; 1 = exact copy */
    unsigned want;              /* AP_KV_* flags every step asks for */
    int pages_calls, measured;  /* pages calls; attended calls with kept mass */
} ap_keep_all;

/* Buffers for n_head_kv x 512 keys of head_dim 4-byte elements (enough for
 * either type). Free with ap_keep_all_free. */
ap_keep_all *ap_keep_all_create(int n_head_kv, int head_dim);
void ap_keep_all_free(ap_keep_all *k);
/* The policy over k (block 16, per query head); with_pages: attention
 * reads k's copies. */
ap_kv_policy ap_keep_all_policy(ap_keep_all *k, int with_pages);

#endif
