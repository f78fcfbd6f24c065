/* CPU mock of the CUDA device layer (tests/mock_cuda/): internal helpers.
 *
 * The mock exists so that the host logic around the CUDA code (buffer
 * management, paging, micro-batching, observers, KV policies: mainly
 * capture/model_cuda.c) runs and is tested on machines without a GPU. It
 * does NOT check the kernels' device code: every "kernel" here calls the
 * CPU implementation of the same op with the semantics its header
 * documents for the CUDA version.
 *
 * Model of the device:
 *   - device memory and pinned host memory are malloc'ed blocks, recorded
 *     in a registry (address range and kind). New blocks are filled with
 *     0xff bytes (NaN floats, -1 ints, wild pointers) because the real
 *     allocations are uninitialised: host code that reads memory it never
 *     wrote shows up here instead of passing by luck;
 *   - the device address of mapped pinned memory is the host pointer
 *     (unified addressing, as on the real 64-bit runtime);
 *   - streams and events are live dummy handles (also in the registry);
 *   - every copy and "kernel" runs synchronously on the calling thread, so
 *     missing synchronisation (reading a result before ap_cuda_sync, racing
 *     streams) is NOT detected.
 * What the mock adds on top of the real API: every pointer a kernel or a
 * copy receives must lie, with the whole extent it touches, inside a live
 * allocation of an acceptable kind (a kernel reading pageable host memory,
 * or a copy running past the end of its buffer, fails with
 * AP_ERR_INTERNAL and a message starting "CUDA mock:"); handles must be
 * live. The device-side checks come after the argument checks the real
 * entry points do, so argument errors keep their status. */
#ifndef AP_MOCK_CUDA_H
#define AP_MOCK_CUDA_H

#include <stddef.h>

#include "common/status.h"
#include "kernels/cuda_util.h"

enum {
    AP_MOCK_DEVICE = 1, /* ap_cuda_malloc */
    AP_MOCK_PINNED = 2, /* ap_cuda_host_alloc: host memory, also a device address */
    AP_MOCK_STREAM = 4,
    AP_MOCK_EVENT = 8,
    AP_MOCK_MEM = AP_MOCK_DEVICE | AP_MOCK_PINNED /* what a kernel may read or write */
};

/* [p, p + bytes) must lie inside one live allocation whose kind is in
 * `kinds`; bytes 0 checks only p. op and what name the call and the
 * argument in the error. */
ap_status ap_mock_cuda_need(const void *p, size_t bytes, int kinds, const char *op,
                            const char *what, ap_err *err);

/* Kind of the live allocation holding p (0: none, i.e. pageable host
 * memory or garbage). */
int ap_mock_cuda_kind_of(const void *p);

/* A stream argument: NULL (the legacy default stream) or a live stream. */
ap_status ap_mock_cuda_stream_ok(ap_cuda_stream s, const char *op, ap_err *err);

/* Bytes of `rows` rows of `width` elements `ld` elements apart, of `elem`
 * bytes each: (rows - 1) * ld + width elements (0 for no rows). */
size_t ap_mock_cuda_extent(int rows, size_t ld, size_t width, size_t elem);

#endif
