/* CUDA plumbing shared by the kernels' _cuda variants and their callers:
 * error translation, device and pinned host buffers, streams.
 *
 * Every function exists in every build, so C code (tests, benchmarks, the
 * engine) calls them without #ifdefs: without CUDA they return
 * AP_ERR_UNSUPPORTED and the _free functions do nothing. Nothing here prints
 * or exits; a CUDA error becomes an ap_err naming the operation and the
 * runtime's message.
 *
 * Asynchrony: kernels and copies are queued on a stream; a launch reports
 * only launch errors (bad configuration, no device). Faults of the running
 * kernel surface at the next synchronising call, which is ap_cuda_sync. */
#ifndef AP_CUDA_UTIL_H
#define AP_CUDA_UTIL_H

#include <stddef.h>

#include "common/status.h"

/* The runtime's stream handle: cudaStream_t is this same pointer type, so C
 * code holds one without including cuda_runtime.h. NULL is the legacy default
 * stream. */
typedef struct CUstream_st *ap_cuda_stream;

/* AP_OK for code 0 (cudaSuccess), else AP_ERR_INTERNAL with "CUDA <what>
 * failed: <runtime message> (<error name>)". code is a cudaError_t. */
ap_status ap_cuda_status(int code, const char *what, ap_err *err);

/* Device memory. *d is NULL after a failure. bytes 0 allocates a minimal
 * buffer, so a valid pointer always comes back on success. */
ap_status ap_cuda_malloc(void **d, size_t bytes, ap_err *err);
void ap_cuda_free(void *d); /* NULL: no-op */

/* Page-locked host memory, mapped into the device's address space (unified
 * addressing), so a kernel may read it directly over the bus and copies from
 * it run asynchronously. */
ap_status ap_cuda_host_alloc(void **h, size_t bytes, ap_err *err);
void ap_cuda_host_free(void *h); /* NULL: no-op */

/* Copies queued on stream s. With pageable host memory the call returns
 * once the host buffer may be reused (the runtime stages it); with pinned
 * memory the host buffer must stay untouched until ap_cuda_sync(s). */
ap_status ap_cuda_to_device(void *d, const void *h, size_t bytes, ap_cuda_stream s, ap_err *err);
ap_status ap_cuda_to_host(void *h, const void *d, size_t bytes, ap_cuda_stream s, ap_err *err);
ap_status ap_cuda_device_copy(void *dst, const void *src, size_t bytes, ap_cuda_stream s,
                              ap_err *err);
ap_status ap_cuda_zero(void *d, size_t bytes, ap_cuda_stream s, ap_err *err);

/* ap_cuda_malloc + a synchronous copy of h: the usual way tests and
 * benchmarks put an array on the device. Caller frees *d with ap_cuda_free. */
ap_status ap_cuda_dup(void **d, const void *h, size_t bytes, ap_err *err);

/* A non-blocking stream (does not serialise with the legacy default stream).
 * Caller frees it with ap_cuda_stream_free (NULL: no-op). */
ap_status ap_cuda_stream_create(ap_cuda_stream *s, ap_err *err);
void ap_cuda_stream_free(ap_cuda_stream s);

/* Wait for everything queued on s, then report the first error of that work
 * or of any earlier launch. */
ap_status ap_cuda_sync(ap_cuda_stream s, ap_err *err);

/* Events order work across streams (the prefetch stream of the CUDA
 * engine, capture/model_cuda.h). cudaEvent_t is this pointer type. Created
 * without timing (cheaper to record). */
typedef struct CUevent_st *ap_cuda_event;
ap_status ap_cuda_event_create(ap_cuda_event *e, ap_err *err);
void ap_cuda_event_free(ap_cuda_event e); /* NULL: no-op */
/* Mark the point in s that the work queued so far reaches. */
ap_status ap_cuda_event_record(ap_cuda_event e, ap_cuda_stream s, ap_err *err);
/* Work queued on s after this waits until e's point is reached. */
ap_status ap_cuda_stream_wait_event(ap_cuda_stream s, ap_cuda_event e, ap_err *err);

/* Name of the current device ("NVIDIA H200", ...), into buf (size n). */
ap_status ap_cuda_device_name(char *buf, size_t n, ap_err *err);

#ifdef __CUDACC__
/* For the .cu files (which include cuda_runtime.h first): the launch status
 * of the kernel just queued. */
#define AP_CUDA_LAUNCHED(what, err) ap_cuda_status((int)cudaGetLastError(), (what), (err))
/* Kernels that size their dynamic shared memory from head_dim may need more
 * than the default 48 KiB; the opt-in is per kernel function. */
#define AP_CUDA_SMEM_OPTIN(kernel, bytes)                                                          \
    ((bytes) > 48 * 1024                                                                           \
         ? cudaFuncSetAttribute((kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,             \
                                (int)(bytes))                                                      \
         : cudaSuccess)
#endif

#endif
