#include "common/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

ap_status ap_errf(ap_err *err, ap_status st, const char *fmt, ...) {
    if (!err) return st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->status = st;
    return st;
}

ap_status ap_err_prefix(ap_err *err, const char *prefix) {
    if (!err || !prefix) return err ? err->status : AP_OK;
    /* Truncation is the intent (messages are bounded), so copy by length. */
    char tmp[2 * AP_ERR_MSG_MAX + 4];
    int n = snprintf(tmp, sizeof tmp, "%s: %s", prefix, err->msg);
    size_t len = n < 0 ? 0 : (size_t)n;
    if (len >= sizeof err->msg) len = sizeof err->msg - 1;
    memcpy(err->msg, tmp, len);
    err->msg[len] = '\0';
    return err->status;
}

void ap_err_clear(ap_err *err) {
    if (!err) return;
    err->status = AP_OK;
    err->msg[0] = '\0';
}

const char *ap_status_name(ap_status st) {
    switch (st) {
    case AP_OK: return "ok";
    case AP_ERR_ARG: return "bad argument";
    case AP_ERR_IO: return "I/O error";
    case AP_ERR_FORMAT: return "format error";
    case AP_ERR_UNSUPPORTED: return "unsupported";
    case AP_ERR_NOMEM: return "out of memory";
    case AP_ERR_RANGE: return "out of range";
    case AP_ERR_NUMERIC: return "non-finite value";
    case AP_ERR_EXISTS: return "output exists";
    case AP_ERR_INTERNAL: return "internal error";
    }
    return "unknown";
}
