/* SHA-256: FIPS 180-2 example vectors, streaming vs one-shot across block
 * boundaries, and ap_sha256_file against the one-shot digest and, when the
 * system has it, coreutils sha256sum. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/sha256.h"
#include "common/util.h"

static void hex_of(const void *data, size_t n, char hex[65]) {
    uint8_t d[32];
    ap_sha256(data, n, d);
    ap_sha256_hex(d, hex);
}

Test(sha256, empty_string) {
    char hex[65];
    hex_of("", 0, hex);
    cr_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

Test(sha256, abc) {
    char hex[65];
    hex_of("abc", 3, hex);
    cr_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

Test(sha256, two_block_messages) {
    /* 56 bytes: the length no longer fits in the first padded block. */
    const char *m1 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    char hex[65];
    hex_of(m1, strlen(m1), hex);
    cr_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *m2 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
                     "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    hex_of(m2, strlen(m2), hex);
    cr_assert_str_eq(hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

Test(sha256, million_a_streamed) {
    ap_sha256_ctx c;
    ap_sha256_init(&c);
    char chunk[1000];
    memset(chunk, 'a', sizeof chunk);
    for (int i = 0; i < 1000; i++) ap_sha256_update(&c, chunk, sizeof chunk);
    uint8_t d[32];
    char hex[65];
    ap_sha256_final(&c, d);
    ap_sha256_hex(d, hex);
    cr_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

Test(sha256, streaming_matches_one_shot_at_every_split) {
    uint8_t msg[300];
    for (size_t i = 0; i < sizeof msg; i++) msg[i] = (uint8_t)(i * 131u + 7u);
    /* Lengths around the padding boundaries (55/56/63/64 mod 64), split at
     * every point, in three pieces. */
    for (size_t n = 0; n <= 200; n++) {
        uint8_t want[32];
        ap_sha256(msg, n, want);
        for (size_t a = 0; a <= n; a += 7) {
            size_t b = a + (n - a) / 2;
            ap_sha256_ctx c;
            ap_sha256_init(&c);
            ap_sha256_update(&c, msg, a);
            ap_sha256_update(&c, msg + a, b - a);
            ap_sha256_update(&c, msg + b, n - b);
            uint8_t got[32];
            ap_sha256_final(&c, got);
            cr_assert(memcmp(got, want, 32) == 0, "length %zu split at %zu/%zu differs", n, a, b);
        }
    }
}

Test(sha256, file_matches_buffer_and_sha256sum) {
    char path[] = "/tmp/ap_test_sha256_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    size_t n = 200000 + 13; /* several 64 KiB reads plus a partial block */
    uint8_t *buf = malloc(n);
    cr_assert(buf);
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (uint8_t)(x >> 16);
    }
    cr_assert_eq(write(fd, buf, n), (ssize_t)n);
    close(fd);

    char want[65], got[65];
    hex_of(buf, n, want);
    ap_err err = {0};
    cr_assert_eq(ap_sha256_file(path, got, &err), AP_OK, "%s", err.msg);
    cr_assert_str_eq(got, want);

    char cmd[256];
    snprintf(cmd, sizeof cmd, "sha256sum %s 2>/dev/null", path);
    FILE *p = popen(cmd, "r");
    char line[256] = {0};
    int have = p && fgets(line, sizeof line, p) != NULL;
    if (p) pclose(p);
    if (have && strlen(line) >= 64) {
        line[64] = '\0';
        cr_assert_str_eq(got, line, "differs from coreutils sha256sum");
    }
    unlink(path);
    free(buf);
}

Test(sha256, missing_file_names_path) {
    char hex[65];
    ap_err err = {0};
    const char *path = "/nonexistent/dir/model.gguf";
    cr_assert_eq(ap_sha256_file(path, hex, &err), AP_ERR_IO);
    cr_assert(strstr(err.msg, path) != NULL, "message does not name the file: %s", err.msg);
}
