/* Status codes and error messages shared by every module.
 *
 * Library functions never print and never exit: they return an ap_status and,
 * on failure, fill the caller's ap_err with one sentence naming the file/option
 * and the problem. The CLI prints that sentence and exits non-zero. */
#ifndef AP_STATUS_H
#define AP_STATUS_H

#include <stddef.h>

typedef enum {
    AP_OK = 0,
    AP_ERR_ARG,         /* bad option or argument value */
    AP_ERR_IO,          /* open/read/write/rename failed */
    AP_ERR_FORMAT,      /* malformed or corrupt input file */
    AP_ERR_UNSUPPORTED, /* well-formed but not handled (architecture, tensor type) */
    AP_ERR_NOMEM,
    AP_ERR_RANGE,       /* size/offset/count out of bounds, prompt too long */
    AP_ERR_NUMERIC,     /* NaN/Inf where a finite value is required */
    AP_ERR_EXISTS,      /* output exists and --force was not given */
    AP_ERR_INTERNAL
} ap_status;

#define AP_ERR_MSG_MAX 512

typedef struct {
    ap_status status;
    char msg[AP_ERR_MSG_MAX];
} ap_err;

/* Fill err (may be NULL) with a printf-style message and return st. */
ap_status ap_errf(ap_err *err, ap_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix an existing message, e.g. with the file name: "model.gguf: <msg>". */
ap_status ap_err_prefix(ap_err *err, const char *prefix);

void ap_err_clear(ap_err *err);

const char *ap_status_name(ap_status st);

#endif
