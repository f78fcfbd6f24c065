/* CPU mock of kernels/cuda_util.h (the real one is kernels/cuda_util.cu):
 * device and pinned memory are malloc'ed blocks kept in a registry, streams
 * and events dummy handles, every copy synchronous. See mock_cuda.h for
 * what this checks (host logic) and what it does not (device code, missing
 * synchronisation). */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/block_pool.h"
#include "kernels/cuda_util.h"
#include "tests/mock_cuda/mock_cuda.h"

/* ------------------------------------------------------------ registry */

typedef struct {
    uintptr_t lo;
    size_t bytes;
    int kind;
} mock_block;

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static mock_block *reg;
static size_t reg_n, reg_cap;

/* The runtime keeps the last error of a call per thread and the next
 * ap_cuda_sync reports it (cuda_util.cu reads cudaGetLastError there). The
 * mock sets it only for failures of calls that return nothing (a free of a
 * pointer that is not an allocation of that kind). */
static _Thread_local char pending[256];

static void set_pending(const char *fmt, const void *p) {
    snprintf(pending, sizeof pending, fmt, p);
    fprintf(stderr, "%s\n", pending);
}

static int reg_add(void *p, size_t bytes, int kind) {
    int ok = 1;
    pthread_mutex_lock(&reg_lock);
    if (reg_n == reg_cap) {
        size_t cap = reg_cap ? 2 * reg_cap : 64;
        mock_block *r = realloc(reg, cap * sizeof *r);
        if (r) {
            reg = r;
            reg_cap = cap;
        } else {
            ok = 0;
        }
    }
    if (ok) reg[reg_n++] = (mock_block){(uintptr_t)p, bytes, kind};
    pthread_mutex_unlock(&reg_lock);
    return ok;
}

/* Remove the block that starts at p if its kind is in kinds; 1 if found. */
static int reg_remove(const void *p, int kinds) {
    int found = 0;
    pthread_mutex_lock(&reg_lock);
    for (size_t i = 0; i < reg_n; i++)
        if (reg[i].lo == (uintptr_t)p && (reg[i].kind & kinds)) {
            reg[i] = reg[--reg_n];
            found = 1;
            break;
        }
    pthread_mutex_unlock(&reg_lock);
    return found;
}

/* Copy of the block holding p; 0 if none. */
static int reg_find(const void *p, mock_block *out) {
    int found = 0;
    const uintptr_t a = (uintptr_t)p;
    pthread_mutex_lock(&reg_lock);
    for (size_t i = 0; i < reg_n; i++)
        if (a >= reg[i].lo && a - reg[i].lo < reg[i].bytes) {
            *out = reg[i];
            found = 1;
            break;
        }
    pthread_mutex_unlock(&reg_lock);
    return found;
}

static const char *kind_name(int kind) {
    switch (kind) {
    case AP_MOCK_DEVICE: return "device memory";
    case AP_MOCK_PINNED: return "pinned host memory";
    case AP_MOCK_STREAM: return "a stream";
    case AP_MOCK_EVENT: return "an event";
    default: return "pageable host memory (or no allocation)";
    }
}

int ap_mock_cuda_kind_of(const void *p) {
    mock_block b;
    return p && reg_find(p, &b) ? b.kind : 0;
}

ap_status ap_mock_cuda_need(const void *p, size_t bytes, int kinds, const char *op,
                            const char *what, ap_err *err) {
    mock_block b;
    if (!p)
        return ap_errf(err, AP_ERR_INTERNAL, "CUDA mock: %s: %s is NULL", op, what);
    if (!reg_find(p, &b) || !(b.kind & kinds))
        return ap_errf(err, AP_ERR_INTERNAL,
                       "CUDA mock: %s: %s (%p) is %s, not %s%s", op, what, p,
                       kind_name(reg_find(p, &b) ? b.kind : 0),
                       (kinds & AP_MOCK_DEVICE) ? "device memory" : "pinned host memory",
                       (kinds & AP_MOCK_DEVICE) && (kinds & AP_MOCK_PINNED)
                           ? " or mapped pinned host memory"
                           : "");
    size_t off = (size_t)((uintptr_t)p - b.lo);
    if (bytes > b.bytes - off)
        return ap_errf(err, AP_ERR_INTERNAL,
                       "CUDA mock: %s: %s touches %zu bytes from offset %zu of a %zu-byte %s "
                       "allocation (%zu past its end)",
                       op, what, bytes, off, b.bytes, kind_name(b.kind), bytes - (b.bytes - off));
    return AP_OK;
}

ap_status ap_mock_cuda_stream_ok(ap_cuda_stream s, const char *op, ap_err *err) {
    if (!s) return AP_OK;
    mock_block b;
    if (!reg_find(s, &b) || b.kind != AP_MOCK_STREAM || b.lo != (uintptr_t)s)
        return ap_errf(err, AP_ERR_INTERNAL, "CUDA mock: %s: stream %p is not a live stream", op,
                       (void *)s);
    return AP_OK;
}

size_t ap_mock_cuda_extent(int rows, size_t ld, size_t width, size_t elem) {
    if (rows < 1 || width == 0) return 0;
    return ((size_t)(rows - 1) * ld + width) * elem;
}

/* -------------------------------------------------------- cuda_util.h */

ap_status ap_cuda_status(int code, const char *what, ap_err *err) {
    if (code == 0) return AP_OK;
    return ap_errf(err, AP_ERR_INTERNAL, "CUDA %s failed: error %d (CUDA mock)",
                   what ? what : "call", code);
}

static ap_status mock_alloc(void **p, size_t bytes, int kind, ap_err *err) {
    *p = NULL;
    size_t n = bytes ? bytes : 16;
    void *q = malloc(n);
    if (!q || !reg_add(q, n, kind)) {
        free(q);
        return ap_errf(err, AP_ERR_INTERNAL,
                       "CUDA allocation of %zu %s bytes failed: out of memory (CUDA mock)", bytes,
                       kind == AP_MOCK_DEVICE ? "device" : "pinned host");
    }
    memset(q, 0xff, n); /* uninitialised, as cudaMalloc/cudaHostAlloc leave it */
    *p = q;
    return AP_OK;
}

ap_status ap_cuda_malloc(void **d, size_t bytes, ap_err *err) {
    return mock_alloc(d, bytes, AP_MOCK_DEVICE, err);
}

void ap_cuda_free(void *d) {
    if (!d) return;
    if (reg_remove(d, AP_MOCK_DEVICE)) free(d);
    else set_pending("CUDA mock: ap_cuda_free(%p): not the start of a live device allocation", d);
}

ap_status ap_cuda_host_alloc(void **h, size_t bytes, ap_err *err) {
    return mock_alloc(h, bytes, AP_MOCK_PINNED, err);
}

void ap_cuda_host_free(void *h) {
    if (!h) return;
    if (reg_remove(h, AP_MOCK_PINNED)) free(h);
    else
        set_pending("CUDA mock: ap_cuda_host_free(%p): not the start of a live pinned allocation",
                    h);
}

/* A host-side buffer of a copy: anything but device memory. */
static ap_status host_side(const void *h, size_t bytes, const char *op, ap_err *err) {
    if (!h) return ap_errf(err, AP_ERR_INTERNAL, "CUDA mock: %s: host pointer is NULL", op);
    if (ap_mock_cuda_kind_of(h) == AP_MOCK_DEVICE)
        return ap_errf(err, AP_ERR_INTERNAL,
                       "CUDA mock: %s: the host-side pointer %p is device memory", op, h);
    int k = ap_mock_cuda_kind_of(h);
    return k == AP_MOCK_PINNED ? ap_mock_cuda_need(h, bytes, AP_MOCK_PINNED, op, "host buffer", err)
                               : AP_OK;
}

ap_status ap_cuda_to_device(void *d, const void *h, size_t bytes, ap_cuda_stream s, ap_err *err) {
    if (!bytes) return AP_OK;
    ap_status st;
    const char *op = "copy to device";
    if ((st = ap_mock_cuda_stream_ok(s, op, err)) ||
        (st = ap_mock_cuda_need(d, bytes, AP_MOCK_MEM, op, "destination", err)) ||
        (st = host_side(h, bytes, op, err)))
        return st;
    memmove(d, h, bytes);
    return AP_OK;
}

ap_status ap_cuda_to_host(void *h, const void *d, size_t bytes, ap_cuda_stream s, ap_err *err) {
    if (!bytes) return AP_OK;
    ap_status st;
    const char *op = "copy to host";
    if ((st = ap_mock_cuda_stream_ok(s, op, err)) ||
        (st = ap_mock_cuda_need(d, bytes, AP_MOCK_MEM, op, "source", err)) ||
        (st = host_side(h, bytes, op, err)))
        return st;
    memmove(h, d, bytes);
    return AP_OK;
}

ap_status ap_cuda_device_copy(void *dst, const void *src, size_t bytes, ap_cuda_stream s,
                              ap_err *err) {
    if (!bytes) return AP_OK;
    ap_status st;
    const char *op = "device copy";
    if ((st = ap_mock_cuda_stream_ok(s, op, err)) ||
        (st = ap_mock_cuda_need(dst, bytes, AP_MOCK_MEM, op, "destination", err)) ||
        (st = ap_mock_cuda_need(src, bytes, AP_MOCK_MEM, op, "source", err)))
        return st;
    memmove(dst, src, bytes);
    return AP_OK;
}

ap_status ap_cuda_zero(void *d, size_t bytes, ap_cuda_stream s, ap_err *err) {
    if (!bytes) return AP_OK;
    ap_status st;
    if ((st = ap_mock_cuda_stream_ok(s, "memset", err)) ||
        (st = ap_mock_cuda_need(d, bytes, AP_MOCK_MEM, "memset", "destination", err)))
        return st;
    memset(d, 0, bytes);
    return AP_OK;
}

ap_status ap_cuda_dup(void **d, const void *h, size_t bytes, ap_err *err) {
    ap_status st = ap_cuda_malloc(d, bytes, err);
    if (st != AP_OK) return st;
    st = ap_cuda_to_device(*d, h, bytes, NULL, err);
    if (st == AP_OK) st = ap_cuda_sync(NULL, err);
    if (st != AP_OK) {
        ap_cuda_free(*d);
        *d = NULL;
    }
    return st;
}

/* Streams and events: one live byte each, so every handle is distinct,
 * can be checked and (under LeakSanitizer) must be freed. */
static ap_status mock_handle(void **h, int kind, const char *what, ap_err *err) {
    *h = NULL;
    void *p = malloc(1);
    if (!p || !reg_add(p, 1, kind)) {
        free(p);
        return ap_errf(err, AP_ERR_INTERNAL, "CUDA %s failed: out of memory (CUDA mock)", what);
    }
    *h = p;
    return AP_OK;
}

static void mock_handle_free(void *h, int kind, const char *fmt) {
    if (!h) return;
    if (reg_remove(h, kind)) free(h);
    else set_pending(fmt, h);
}

ap_status ap_cuda_stream_create(ap_cuda_stream *s, ap_err *err) {
    void *h = NULL;
    ap_status st = mock_handle(&h, AP_MOCK_STREAM, "stream creation", err);
    *s = (ap_cuda_stream)h;
    return st;
}

void ap_cuda_stream_free(ap_cuda_stream s) {
    mock_handle_free(s, AP_MOCK_STREAM, "CUDA mock: ap_cuda_stream_free(%p): not a live stream");
}

ap_status ap_cuda_sync(ap_cuda_stream s, ap_err *err) {
    ap_status st = ap_mock_cuda_stream_ok(s, "stream work", err);
    if (st != AP_OK) return st;
    if (pending[0]) {
        st = ap_errf(err, AP_ERR_INTERNAL, "%s", pending);
        pending[0] = '\0';
    }
    return st;
}

static ap_status event_ok(ap_cuda_event e, const char *op, ap_err *err) {
    mock_block b;
    if (!e || !reg_find(e, &b) || b.kind != AP_MOCK_EVENT || b.lo != (uintptr_t)e)
        return ap_errf(err, AP_ERR_INTERNAL, "CUDA mock: %s: event %p is not a live event", op,
                       (void *)e);
    return AP_OK;
}

ap_status ap_cuda_event_create(ap_cuda_event *e, ap_err *err) {
    void *h = NULL;
    ap_status st = mock_handle(&h, AP_MOCK_EVENT, "event creation", err);
    *e = (ap_cuda_event)h;
    return st;
}

void ap_cuda_event_free(ap_cuda_event e) {
    mock_handle_free(e, AP_MOCK_EVENT, "CUDA mock: ap_cuda_event_free(%p): not a live event");
}

/* Work runs at once, so an event is reached when recorded and a wait has
 * nothing to wait for; both only check their handles. */
ap_status ap_cuda_event_record(ap_cuda_event e, ap_cuda_stream s, ap_err *err) {
    ap_status st = event_ok(e, "event record", err);
    return st ? st : ap_mock_cuda_stream_ok(s, "event record", err);
}

ap_status ap_cuda_stream_wait_event(ap_cuda_stream s, ap_cuda_event e, ap_err *err) {
    ap_status st = event_ok(e, "stream wait on an event", err);
    return st ? st : ap_mock_cuda_stream_ok(s, "stream wait on an event", err);
}

ap_status ap_cuda_device_name(char *buf, size_t n, ap_err *err) {
    if (buf && n) snprintf(buf, n, "%s", "CPU mock of the CUDA layer");
    return AP_OK;
}

/* kernels/block_pool.h (the real one is in block_pool.cu): the mock is one
 * always-present device. */
int ap_cuda_device_count(void) { return 1; }
