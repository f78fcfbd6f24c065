// CUDA plumbing: thin wrappers over the runtime that turn every failure into
// an ap_err naming the operation.
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

extern "C" {
#include "kernels/cuda_util.h"
}

extern "C" ap_status ap_cuda_status(int code, const char *what, ap_err *err) {
    if (code == (int)cudaSuccess) return AP_OK;
    cudaError_t e = (cudaError_t)code;
    // The runtime also remembers a non-sticky error as "last error"; reset it
    // so a later, unrelated check does not report this one again.
    (void)cudaGetLastError();
    return ap_errf(err, AP_ERR_INTERNAL, "CUDA %s failed: %s (%s)", what ? what : "call",
                   cudaGetErrorString(e), cudaGetErrorName(e));
}

extern "C" ap_status ap_cuda_malloc(void **d, size_t bytes, ap_err *err) {
    *d = NULL;
    cudaError_t e = cudaMalloc(d, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        *d = NULL;
        char what[64];
        snprintf(what, sizeof what, "allocation of %zu device bytes", bytes);
        return ap_cuda_status((int)e, what, err);
    }
    return AP_OK;
}

extern "C" void ap_cuda_free(void *d) {
    if (d) cudaFree(d);
}

extern "C" ap_status ap_cuda_host_alloc(void **h, size_t bytes, ap_err *err) {
    *h = NULL;
    cudaError_t e =
        cudaHostAlloc(h, bytes ? bytes : 16, cudaHostAllocPortable | cudaHostAllocMapped);
    if (e != cudaSuccess) {
        *h = NULL;
        char what[64];
        snprintf(what, sizeof what, "allocation of %zu pinned host bytes", bytes);
        return ap_cuda_status((int)e, what, err);
    }
    return AP_OK;
}

extern "C" void ap_cuda_host_free(void *h) {
    if (h) cudaFreeHost(h);
}

extern "C" ap_status ap_cuda_to_device(void *d, const void *h, size_t bytes, ap_cuda_stream s,
                                       ap_err *err) {
    if (!bytes) return AP_OK;
    return ap_cuda_status((int)cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, s),
                          "copy to device", err);
}

extern "C" ap_status ap_cuda_to_host(void *h, const void *d, size_t bytes, ap_cuda_stream s,
                                     ap_err *err) {
    if (!bytes) return AP_OK;
    return ap_cuda_status((int)cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, s),
                          "copy to host", err);
}

extern "C" ap_status ap_cuda_device_copy(void *dst, const void *src, size_t bytes, ap_cuda_stream s,
                                         ap_err *err) {
    if (!bytes) return AP_OK;
    return ap_cuda_status((int)cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s),
                          "device copy", err);
}

extern "C" ap_status ap_cuda_zero(void *d, size_t bytes, ap_cuda_stream s, ap_err *err) {
    if (!bytes) return AP_OK;
    return ap_cuda_status((int)cudaMemsetAsync(d, 0, bytes, s), "memset", err);
}

extern "C" ap_status ap_cuda_dup(void **d, const void *h, size_t bytes, ap_err *err) {
    ap_status st = ap_cuda_malloc(d, bytes, err);
    if (st != AP_OK) return st;
    st = ap_cuda_to_device(*d, h, bytes, NULL, err);
    if (st == AP_OK) st = ap_cuda_sync(NULL, err);
    if (st != AP_OK) {
        cudaFree(*d);
        *d = NULL;
    }
    return st;
}

extern "C" ap_status ap_cuda_stream_create(ap_cuda_stream *s, ap_err *err) {
    cudaStream_t t = NULL;
    cudaError_t e = cudaStreamCreateWithFlags(&t, cudaStreamNonBlocking);
    *s = e == cudaSuccess ? t : NULL;
    return ap_cuda_status((int)e, "stream creation", err);
}

extern "C" void ap_cuda_stream_free(ap_cuda_stream s) {
    if (s) cudaStreamDestroy(s);
}

extern "C" ap_status ap_cuda_sync(ap_cuda_stream s, ap_err *err) {
    cudaError_t e = cudaStreamSynchronize(s);
    // A launch error already consumed by the caller leaves nothing here; one
    // nobody checked is still pending and belongs to this work.
    cudaError_t l = cudaGetLastError();
    if (e == cudaSuccess) e = l;
    return ap_cuda_status((int)e, "stream work", err);
}

extern "C" ap_status ap_cuda_event_create(ap_cuda_event *ev, ap_err *err) {
    cudaEvent_t t = NULL;
    cudaError_t e = cudaEventCreateWithFlags(&t, cudaEventDisableTiming);
    *ev = e == cudaSuccess ? t : NULL;
    return ap_cuda_status((int)e, "event creation", err);
}

extern "C" void ap_cuda_event_free(ap_cuda_event ev) {
    if (ev) cudaEventDestroy(ev);
}

extern "C" ap_status ap_cuda_event_record(ap_cuda_event ev, ap_cuda_stream s, ap_err *err) {
    return ap_cuda_status((int)cudaEventRecord(ev, s), "event record", err);
}

extern "C" ap_status ap_cuda_stream_wait_event(ap_cuda_stream s, ap_cuda_event ev, ap_err *err) {
    return ap_cuda_status((int)cudaStreamWaitEvent(s, ev, 0), "stream wait on an event", err);
}

extern "C" ap_status ap_cuda_device_name(char *buf, size_t n, ap_err *err) {
    if (buf && n) buf[0] = '\0';
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    cudaDeviceProp prop;
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&prop, dev);
    if (e != cudaSuccess) return ap_cuda_status((int)e, "device query", err);
    if (buf && n) snprintf(buf, n, "%s", prop.name);
    return AP_OK;
}
