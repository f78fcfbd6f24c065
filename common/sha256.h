/* SHA-256 (FIPS 180-4), one-shot and streaming. Used to fingerprint model
 * files and outputs in run manifests. */
#ifndef AP_SHA256_H
#define AP_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* Plain struct so callers can keep it on the stack; no allocation. */
typedef struct {
    uint32_t h[8];
    uint64_t n_bytes;   /* total bytes absorbed so far */
    uint8_t buf[64];    /* pending partial block */
    size_t buf_len;
} ap_sha256_ctx;

void ap_sha256_init(ap_sha256_ctx *c);
void ap_sha256_update(ap_sha256_ctx *c, const void *data, size_t n);
void ap_sha256_final(ap_sha256_ctx *c, uint8_t out[32]);

void ap_sha256(const void *data, size_t n, uint8_t out[32]);

/* Lowercase hex of a digest into hex[65] (NUL-terminated). */
void ap_sha256_hex(const uint8_t digest[32], char hex[65]);

#endif
