/* Stand-ins for builds without CUDA, so callers link and fail cleanly
 * (kernels/cuda_util.cu is the real implementation). */
#include "kernels/cuda_util.h"

#ifndef AP_HAVE_CUDA

static ap_status no_cuda(ap_err *err) {
    return ap_errf(err, AP_ERR_UNSUPPORTED, "this build of attnpred has no CUDA support");
}

ap_status ap_cuda_status(int code, const char *what, ap_err *err) {
    if (code == 0) return AP_OK;
    return ap_errf(err, AP_ERR_INTERNAL, "CUDA %s failed: error %d (no CUDA in this build)",
                   what ? what : "call", code);
}

ap_status ap_cuda_malloc(void **d, size_t bytes, ap_err *err) {
    *d = NULL;
    return no_cuda(err);
}

void ap_cuda_free(void *d) { (void)d; }

ap_status ap_cuda_host_alloc(void **h, size_t bytes, ap_err *err) {
    *h = NULL;
    return no_cuda(err);
}

void ap_cuda_host_free(void *h) { (void)h; }

ap_status ap_cuda_to_device(void *d, const void *h, size_t bytes, ap_cuda_stream s, ap_err *err) {
    return no_cuda(err);
}

ap_status ap_cuda_to_host(void *h, const void *d, size_t bytes, ap_cuda_stream s, ap_err *err) {
    return no_cuda(err);
}

ap_status ap_cuda_device_copy(void *dst, const void *src, size_t bytes, ap_cuda_stream s,
                              ap_err *err) {
    return no_cuda(err);
}

ap_status ap_cuda_zero(void *d, size_t bytes, ap_cuda_stream s, ap_err *err) {
    return no_cuda(err);
}

ap_status ap_cuda_dup(void **d, const void *h, size_t bytes, ap_err *err) {
    *d = NULL;
    return no_cuda(err);
}

ap_status ap_cuda_stream_create(ap_cuda_stream *s, ap_err *err) {
    *s = NULL;
    return no_cuda(err);
}

void ap_cuda_stream_free(ap_cuda_stream s) { (void)s; }

ap_status ap_cuda_sync(ap_cuda_stream s, ap_err *err) { return no_cuda(err); }

ap_status ap_cuda_event_create(ap_cuda_event *e, ap_err *err) {
    *e = NULL;
    return no_cuda(err);
}

void ap_cuda_event_free(ap_cuda_event e) { (void)e; }

ap_status ap_cuda_event_record(ap_cuda_event e, ap_cuda_stream s, ap_err *err) {
    return no_cuda(err);
}

ap_status ap_cuda_stream_wait_event(ap_cuda_stream s, ap_cuda_event e, ap_err *err) {
    return no_cuda(err);
}

ap_status ap_cuda_device_name(char *buf, size_t n, ap_err *err) {
    if (buf && n) buf[0] = '\0';
    return no_cuda(err);
}

#else
/* ISO C forbids an empty translation unit. */
typedef int ap_cuda_util_unused;
#endif
