/* attnpred trace files (HDF5): writer, reader, merge. Schema and the whole
 * atomicity/resume story: docs/trace-format.md.
 *
 * HDF5 1.10 has no journal: a process killed in the middle of a metadata flush
 * can leave the structure it was updating half-written, and HDF5 may crash
 * reading it. So the writer never relies on /sequences surviving a kill:
 *  - the file format is pinned to the HDF5 1.8 object format (superblock v2); the
 *    1.10 superblock v3 records "open for write" flags that make a killed file
 *    refuse to reopen without h5clear;
 *  - a sequence is built as an anonymous group (a kill leaves only unreachable
 *    bytes), gets complete=1 after its datasets are flushed, is flushed again,
 *    journaled as "<address> <name>" in <path>.partial.idx, linked, flushed, and
 *    the journal gets "+";
 *  - --resume trusts /sequences only if the journal ends with "+"; otherwise it
 *    rebuilds the index from the journaled groups without reading the old one. */
#define _POSIX_C_SOURCE 200809L
#include "capture/trace.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

#define SEQ_ROOT "sequences"
/* Chunks hold up to this many leading rows (steps) and at most CHUNK_MAX_BYTES. */
#define CHUNK_MAX_ROWS 16
#define CHUNK_MAX_BYTES (1u << 20)
#define DEFLATE_LEVEL 4
/* The writer rejects block_sum rows further than this from 1: it catches capture
 * bugs (wrong normalisation, missing blocks) without tripping on float32 rounding. */
#define ROW_SUM_TOL 1e-3
#define ESC_NAME_MAX (3 * 256 + 1)

/* ------------------------------------------------------------------ errors -- */

typedef struct {
    char desc[256];
    int found;
} h5_detail_ctx;

static herr_t h5_detail_cb(unsigned n, const H5E_error2_t *e, void *data) {
    h5_detail_ctx *c = data;
    /* Walking upward, the first entry is the innermost one: the actual cause
     * ("truncated file: eof = ...") rather than "unable to open file". */
    if (!c->found && e->desc && e->desc[0]) {
        snprintf(c->desc, sizeof c->desc, "%s", e->desc);
        c->found = 1;
    }
    return 0;
}

/* "<file>: <what> (<innermost HDF5 message>)"; clears the HDF5 error stack. */
static ap_status h5_fail(ap_err *err, ap_status st, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static ap_status h5_fail(ap_err *err, ap_status st, const char *file, const char *fmt, ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    h5_detail_ctx c = {{0}, 0};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, h5_detail_cb, &c);
    H5Eclear2(H5E_DEFAULT);
    if (c.found)
        return ap_errf(err, st, "%s: %s (HDF5: %s)", file, what, c.desc);
    return ap_errf(err, st, "%s: %s", file, what);
}

static void h5_quiet(void) {
    /* HDF5 prints its whole error stack to stderr by default; library code must
     * not print, so every entry point switches that off and translates instead. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    H5Eclear2(H5E_DEFAULT);
}

static void close_id(hid_t id) {
    if (id < 0) return;
    switch (H5Iget_type(id)) {
    case H5I_FILE: H5Fclose(id); break;
    case H5I_GROUP: H5Gclose(id); break;
    case H5I_DATASET: H5Dclose(id); break;
    case H5I_ATTR: H5Aclose(id); break;
    case H5I_DATATYPE: H5Tclose(id); break;
    case H5I_DATASPACE: H5Sclose(id); break;
    case H5I_GENPROP_LST: H5Pclose(id); break;
    default: break;
    }
}

/* -------------------------------------------------------------- id escaping -- */

/* Sequence ids are free text; HDF5 names cannot hold '/' and '.' is special, so
 * groups are named with every byte outside [A-Za-z0-9_-] written as %XX. The
 * original id is kept in the group's `id` attribute. */
void ap_trace_group_name(const char *id, char *out, size_t n) {
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)id; *p && o + 4 < n; p++) {
        unsigned char c = *p;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '_' || c == '-') {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
}

/* ---------------------------------------------------------------- attributes -- */

static herr_t attr_delete_if(hid_t loc, const char *name) {
    htri_t ex = H5Aexists(loc, name);
    if (ex < 0) return -1;
    return ex ? H5Adelete(loc, name) : 0;
}

/* An existing attribute of the same shape is rewritten in place: the object
 * header keeps its size (the commit's update of the root is one small write). */
static herr_t attr_write_ints(hid_t loc, const char *name, const int *v, hsize_t n, int scalar) {
    herr_t rc = -1;
    hid_t sp = -1, a = -1, ft = -1;
    htri_t ex = H5Aexists(loc, name);
    if (ex < 0) goto cleanup;
    if (ex) {
        a = H5Aopen(loc, name, H5P_DEFAULT);
        if (a < 0) goto cleanup;
        ft = H5Aget_type(a);
        sp = H5Aget_space(a);
        if (ft >= 0 && sp >= 0 && H5Tget_class(ft) == H5T_INTEGER && H5Tget_size(ft) == 4 &&
            H5Sget_simple_extent_type(sp) == (scalar ? H5S_SCALAR : H5S_SIMPLE) &&
            H5Sget_simple_extent_npoints(sp) == (hssize_t)n) {
            rc = H5Awrite(a, H5T_NATIVE_INT, v);
            goto cleanup;
        }
        close_id(a);
        close_id(ft);
        close_id(sp);
        a = ft = sp = -1;
        if (H5Adelete(loc, name) < 0) goto cleanup;
    }
    sp = scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, NULL);
    if (sp < 0) goto cleanup;
    a = H5Acreate2(loc, name, H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0) goto cleanup;
    if (H5Awrite(a, H5T_NATIVE_INT, v) < 0) goto cleanup;
    rc = 0;
cleanup:
    close_id(ft);
    close_id(a);
    close_id(sp);
    return rc;
}

static herr_t attr_write_int(hid_t loc, const char *name, int v) {
    return attr_write_ints(loc, name, &v, 1, 1);
}

/* Variable-length UTF-8 so that h5py returns str, not bytes. */
static herr_t attr_write_str(hid_t loc, const char *name, const char *s) {
    herr_t rc = -1;
    hid_t t = -1, sp = -1, a = -1;
    if (attr_delete_if(loc, name) < 0) goto cleanup;
    t = H5Tcopy(H5T_C_S1);
    if (t < 0 || H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0)
        goto cleanup;
    sp = H5Screate(H5S_SCALAR);
    if (sp < 0) goto cleanup;
    a = H5Acreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0) goto cleanup;
    if (H5Awrite(a, t, &s) < 0) goto cleanup;
    rc = 0;
cleanup:
    close_id(a);
    close_id(sp);
    close_id(t);
    return rc;
}

/* Returns 1 read, 0 absent, -1 HDF5 failure, -2 wrong type/shape, -3 too long. */
static int attr_read_str(hid_t loc, const char *name, char *buf, size_t n) {
    int rc = -1;
    hid_t a = -1, ft = -1, mt = -1, sp = -1;
    char *tmp = NULL;
    htri_t ex = H5Aexists(loc, name);
    if (ex < 0) goto cleanup;
    if (!ex) {
        rc = 0;
        goto cleanup;
    }
    a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) goto cleanup;
    ft = H5Aget_type(a);
    sp = H5Aget_space(a);
    if (ft < 0 || sp < 0) goto cleanup;
    if (H5Tget_class(ft) != H5T_STRING || H5Sget_simple_extent_npoints(sp) != 1) {
        rc = -2;
        goto cleanup;
    }
    htri_t var = H5Tis_variable_str(ft);
    if (var < 0) goto cleanup;
    mt = H5Tcopy(ft);
    if (mt < 0) goto cleanup;
    if (var) {
        char *p = NULL;
        if (H5Aread(a, mt, &p) < 0) goto cleanup;
        size_t len = p ? strlen(p) : 0;
        if (len >= n) {
            rc = -3;
        } else {
            memcpy(buf, p ? p : "", len + 1);
            rc = 1;
        }
        H5free_memory(p);
    } else {
        size_t sz = H5Tget_size(ft);
        tmp = calloc(sz + 1, 1);
        if (!tmp) goto cleanup;
        if (H5Aread(a, mt, tmp) < 0) goto cleanup;
        size_t len = strlen(tmp);
        if (len >= n) {
            rc = -3;
        } else {
            memcpy(buf, tmp, len + 1);
            rc = 1;
        }
    }
cleanup:
    free(tmp);
    close_id(mt);
    close_id(sp);
    close_id(ft);
    close_id(a);
    return rc;
}

/* Reads up to cap ints into v, *count = number stored. Returns as attr_read_str. */
static int attr_read_ints(hid_t loc, const char *name, int *v, int cap, int *count) {
    int rc = -1;
    hid_t a = -1, ft = -1, sp = -1;
    htri_t ex = H5Aexists(loc, name);
    if (ex < 0) goto cleanup;
    if (!ex) {
        rc = 0;
        goto cleanup;
    }
    a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) goto cleanup;
    ft = H5Aget_type(a);
    sp = H5Aget_space(a);
    if (ft < 0 || sp < 0) goto cleanup;
    hssize_t np = H5Sget_simple_extent_npoints(sp);
    if (H5Tget_class(ft) != H5T_INTEGER || np < 0) {
        rc = -2;
        goto cleanup;
    }
    if (np > cap) {
        rc = -3;
        goto cleanup;
    }
    if (np > 0 && H5Aread(a, H5T_NATIVE_INT, v) < 0) goto cleanup;
    *count = (int)np;
    rc = 1;
cleanup:
    close_id(sp);
    close_id(ft);
    close_id(a);
    return rc;
}

static int attr_read_int(hid_t loc, const char *name, int *v) {
    int count = 0;
    int rc = attr_read_ints(loc, name, v, 1, &count);
    if (rc == 1 && count != 1) rc = -2;
    return rc;
}

/* ----------------------------------------------------------------- datasets -- */

/* Object creation settings shared by the root, every group and dataset: no
 * timestamps (a trace's bytes depend on its content, not on when it was
 * written; only the superblock extension HDF5 adds for the B-tree setting keeps
 * its creation time) and attributes kept in the object header (compact) rather
 * than in dense storage: HDF5 1.10.8 crashes in H5Ocopy (merge) on
 * variable-length string attributes in dense storage. */
static herr_t obj_props(hid_t ocpl) {
    if (H5Pset_obj_track_times(ocpl, 0) < 0) return -1;
    return H5Pset_attr_phase_change(ocpl, 64, 48);
}


static hsize_t chunk_rows(int rank, const hsize_t *dims, size_t elem) {
    hsize_t row = elem;
    for (int i = 1; i < rank; i++) row *= dims[i];
    if (rank == 1) {
        /* 1-D int32 token arrays: one chunk for any realistic length. */
        hsize_t r = CHUNK_MAX_BYTES / elem;
        return dims[0] < r ? dims[0] : r;
    }
    hsize_t r = row >= CHUNK_MAX_BYTES ? 1 : CHUNK_MAX_BYTES / row;
    if (r > CHUNK_MAX_ROWS) r = CHUNK_MAX_ROWS;
    return dims[0] < r ? dims[0] : r;
}

/* Chunked, shuffle + deflate + fletcher32 (so corruption is reported, not read). */
static herr_t ds_write(hid_t loc, const char *name, hid_t ftype, hid_t mtype, size_t elem,
                       int rank, const hsize_t *dims, const void *data) {
    herr_t rc = -1;
    hid_t dcpl = -1, sp = -1, ds = -1;
    hsize_t chunk[4];
    for (int i = 0; i < rank; i++) chunk[i] = dims[i];
    chunk[0] = chunk_rows(rank, dims, elem);
    dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (dcpl < 0) goto cleanup;
    if (H5Pset_chunk(dcpl, rank, chunk) < 0 || H5Pset_shuffle(dcpl) < 0 ||
        H5Pset_deflate(dcpl, DEFLATE_LEVEL) < 0 || H5Pset_fletcher32(dcpl) < 0 ||
        obj_props(dcpl) < 0)
        goto cleanup;
    sp = H5Screate_simple(rank, dims, NULL);
    if (sp < 0) goto cleanup;
    ds = H5Dcreate2(loc, name, ftype, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds < 0) goto cleanup;
    if (H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) goto cleanup;
    rc = 0;
cleanup:
    close_id(ds);
    close_id(sp);
    close_id(dcpl);
    return rc;
}

/* /sequences: creation order tracked and indexed, so sequences list in the
 * order they were captured; no timestamps. */
static hid_t seq_root_gcpl(void) {
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    if (gcpl < 0) return -1;
    if (obj_props(gcpl) < 0 ||
        H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED) < 0) {
        H5Pclose(gcpl);
        return -1;
    }
    return gcpl;
}

/* Groups carry no timestamps either. */
static hid_t group_create(hid_t loc, const char *name, int seq_root) {
    hid_t gcpl = seq_root ? seq_root_gcpl() : H5Pcreate(H5P_GROUP_CREATE);
    if (gcpl < 0) return -1;
    hid_t g = -1;
    if (obj_props(gcpl) >= 0)
        g = H5Gcreate2(loc, name, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    H5Pclose(gcpl);
    return g;
}

static hid_t make_fapl(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return -1;
    /* V18..V18: readable by HDF5 >= 1.8 (and h5py 3.7), never superblock v3. */
    if (H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18) < 0 ||
        H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) {
        H5Pclose(fapl);
        return -1;
    }
    return fapl;
}

/* ------------------------------------------------------------------ meta -- */

static ap_status meta_check(const ap_trace_meta *m, const char *file, ap_err *err) {
    if (m->n_layer < 1 || m->n_head < 1 || m->n_head_kv < 1 || m->head_dim < 1 ||
        m->block_size < 1 || m->history < 0)
        return ap_errf(err, AP_ERR_FORMAT,
                       "%s: invalid dimensions (n_layer %d, n_head %d, n_head_kv %d, "
                       "head_dim %d, block_size %d, history %d)",
                       file, m->n_layer, m->n_head, m->n_head_kv, m->head_dim, m->block_size,
                       m->history);
    if (m->n_head % m->n_head_kv != 0)
        return ap_errf(err, AP_ERR_FORMAT, "%s: n_head %d is not a multiple of n_head_kv %d",
                       file, m->n_head, m->n_head_kv);
    if (!memchr(m->model_name, 0, sizeof m->model_name) ||
        !memchr(m->model_sha256, 0, sizeof m->model_sha256) ||
        !memchr(m->attnpred_version, 0, sizeof m->attnpred_version) ||
        !memchr(m->arch, 0, sizeof m->arch))
        return ap_errf(err, AP_ERR_ARG, "%s: unterminated string in trace meta", file);
    if (m->n_layer > AP_TRACE_MAX_LAYERS)
        return ap_errf(err, AP_ERR_FORMAT, "%s: n_layer %d exceeds the %d layers a trace may have",
                       file, m->n_layer, AP_TRACE_MAX_LAYERS);
    for (int l = 0; l < m->n_layer; l++)
        if (m->layer_window[l] < 0)
            return ap_errf(err, AP_ERR_FORMAT, "%s: layer_window[%d] is %d (0 = full attention, "
                           "> 0 = sliding window)", file, l, m->layer_window[l]);
    return AP_OK;
}

int ap_trace_layer_is_full(const ap_trace_meta *m, int layer) {
    if (!m || layer < 0 || layer >= m->n_layer || layer >= AP_TRACE_MAX_LAYERS) return 0;
    return m->layer_window[layer] == 0;
}

int ap_trace_n_full_layers(const ap_trace_meta *m) {
    int n = 0;
    for (int l = 0; m && l < m->n_layer && l < AP_TRACE_MAX_LAYERS; l++) n += m->layer_window[l] == 0;
    return n;
}

int ap_trace_sliding_window(const ap_trace_meta *m) {
    int w = 0;
    for (int l = 0; m && l < m->n_layer && l < AP_TRACE_MAX_LAYERS; l++) {
        int x = m->layer_window[l];
        if (x == 0) continue;
        if (w == 0)
            w = x;
        else if (x != w)
            return -1;
    }
    return w;
}

/* Describes every field that differs ("n_head 9 vs 8, model_sha256 ab.. vs cd..")
 * into buf; returns the number of differences. */
static int meta_diff(const ap_trace_meta *a, const ap_trace_meta *b, char *buf, size_t n) {
    int nd = 0;
    size_t o = 0;
    buf[0] = '\0';
#define DIFF_INT(f)                                                                       \
    if (a->f != b->f && o < n) {                                                          \
        o += (size_t)snprintf(buf + o, n - o, "%s%s %d vs %d", nd ? ", " : "", #f, a->f,  \
                              b->f);                                                      \
        nd++;                                                                             \
    }
#define DIFF_STR(f)                                                                       \
    if (strcmp(a->f, b->f) != 0 && o < n) {                                               \
        o += (size_t)snprintf(buf + o, n - o, "%s%s '%s' vs '%s'", nd ? ", " : "", #f,    \
                              a->f, b->f);                                                \
        nd++;                                                                             \
    }
    DIFF_INT(n_layer)
    DIFF_INT(n_head)
    DIFF_INT(n_head_kv)
    DIFF_INT(head_dim)
    DIFF_INT(block_size)
    DIFF_INT(history)
    DIFF_STR(model_name)
    DIFF_STR(model_sha256)
    DIFF_STR(attnpred_version)
    DIFF_STR(arch)
    for (int l = 0; l < a->n_layer && l < b->n_layer && l < AP_TRACE_MAX_LAYERS; l++)
        if (a->layer_window[l] != b->layer_window[l] && o < n) {
            o += (size_t)snprintf(buf + o, n - o, "%slayer_window[%d] %d vs %d", nd ? ", " : "", l,
                                  a->layer_window[l], b->layer_window[l]);
            nd++;
        }
#undef DIFF_INT
#undef DIFF_STR
    return nd;
}

static herr_t meta_write(hid_t file, const ap_trace_meta *m) {
    if (attr_write_str(file, "format", AP_TRACE_FORMAT) < 0 ||
        attr_write_int(file, "format_version", AP_TRACE_FORMAT_VERSION) < 0 ||
        attr_write_int(file, "n_layer", m->n_layer) < 0 ||
        attr_write_int(file, "n_head", m->n_head) < 0 ||
        attr_write_int(file, "n_head_kv", m->n_head_kv) < 0 ||
        attr_write_int(file, "head_dim", m->head_dim) < 0 ||
        attr_write_int(file, "block_size", m->block_size) < 0 ||
        attr_write_int(file, "history", m->history) < 0 ||
        attr_write_str(file, "model_name", m->model_name) < 0 ||
        attr_write_str(file, "model_sha256", m->model_sha256) < 0 ||
        attr_write_str(file, "attnpred_version", m->attnpred_version) < 0 ||
        attr_write_str(file, "architecture", m->arch) < 0 ||
        attr_write_ints(file, "layer_window", m->layer_window, (hsize_t)m->n_layer, 0) < 0)
        return -1;
    return 0;
}

/* Reads and validates the root: format, version, meta; *complete = root flag,
 * *version = its format_version. */
static ap_status meta_read(hid_t file, const char *path, ap_trace_meta *m, int *complete,
                           int *version, ap_err *err) {
    char fmt[64];
    int rc = attr_read_str(file, "format", fmt, sizeof fmt);
    if (rc == -1)
        return h5_fail(err, AP_ERR_FORMAT, path, "cannot read the root attribute 'format'");
    if (rc != 1 || strcmp(fmt, AP_TRACE_FORMAT) != 0)
        return ap_errf(err, AP_ERR_FORMAT,
                       "%s: not an attnpred trace (root attribute format is %s%s%s, expected "
                       "'%s')",
                       path, rc == 1 ? "'" : "", rc == 1 ? fmt : "missing", rc == 1 ? "'" : "",
                       AP_TRACE_FORMAT);
    int ver = 0;
    if (attr_read_int(file, "format_version", &ver) != 1)
        return ap_errf(err, AP_ERR_FORMAT,
                       "%s: missing or malformed root attribute format_version (expected %d)",
                       path, AP_TRACE_FORMAT_VERSION);
    if (ver < AP_TRACE_FORMAT_VERSION_MIN || ver > AP_TRACE_FORMAT_VERSION)
        return ap_errf(err, AP_ERR_FORMAT,
                       "%s: trace format_version %d is not supported: this attnpred (%s) reads "
                       "format_version %d to %d",
                       path, ver, AP_VERSION_STRING, AP_TRACE_FORMAT_VERSION_MIN,
                       AP_TRACE_FORMAT_VERSION);
    memset(m, 0, sizeof *m);
    struct {
        const char *name;
        int *dst;
    } ints[] = {{"n_layer", &m->n_layer},     {"n_head", &m->n_head},
                {"n_head_kv", &m->n_head_kv}, {"head_dim", &m->head_dim},
                {"block_size", &m->block_size}, {"history", &m->history}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (attr_read_int(file, ints[i].name, ints[i].dst) != 1)
            return ap_errf(err, AP_ERR_FORMAT, "%s: missing or malformed root attribute %s",
                           path, ints[i].name);
    struct {
        const char *name;
        char *dst;
        size_t n;
    } strs[] = {{"model_name", m->model_name, sizeof m->model_name},
                {"model_sha256", m->model_sha256, sizeof m->model_sha256},
                {"attnpred_version", m->attnpred_version, sizeof m->attnpred_version}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        if (attr_read_str(file, strs[i].name, strs[i].dst, strs[i].n) != 1)
            return ap_errf(err, AP_ERR_FORMAT,
                           "%s: missing, malformed or too long root attribute %s", path,
                           strs[i].name);
    if (ver == 1) {
        /* Version 1 predates the attribute; its writer ran llama models only,
         * whose layers all attend every key (layer_window stays 0). */
        snprintf(m->arch, sizeof m->arch, "llama");
    } else {
        if (attr_read_str(file, "architecture", m->arch, sizeof m->arch) != 1)
            return ap_errf(err, AP_ERR_FORMAT,
                           "%s: missing, malformed or too long root attribute architecture "
                           "(format_version %d)",
                           path, ver);
        if (m->n_layer < 1 || m->n_layer > AP_TRACE_MAX_LAYERS)
            return ap_errf(err, AP_ERR_FORMAT, "%s: n_layer %d out of range [1, %d]", path,
                           m->n_layer, AP_TRACE_MAX_LAYERS);
        int count = 0;
        int rc2 = attr_read_ints(file, "layer_window", m->layer_window, m->n_layer, &count);
        if (rc2 != 1 || count != m->n_layer)
            return ap_errf(err, AP_ERR_FORMAT,
                           "%s: root attribute layer_window is %s (expected int32 [n_layer = "
                           "%d], format_version %d)",
                           path, rc2 == 0 ? "missing" : rc2 == 1 ? "of the wrong length"
                                                               : "malformed or too long",
                           m->n_layer, ver);
    }
    ap_status st = meta_check(m, path, err);
    if (st) return st;
    int c = 0;
    rc = attr_read_int(file, "complete", &c);
    if (rc < 0) return ap_errf(err, AP_ERR_FORMAT, "%s: malformed root attribute complete", path);
    *complete = rc == 1 && c == 1;
    *version = ver;
    return AP_OK;
}

static ap_status h5_open_file(const char *path, int rdwr, hid_t *out, ap_err *err) {
    if (!ap_file_exists(path))
        return ap_errf(err, AP_ERR_IO, "%s: cannot open: %s", path, strerror(ENOENT));
    if (access(path, rdwr ? (R_OK | W_OK) : R_OK) != 0)
        return ap_errf(err, AP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    htri_t is = H5Fis_hdf5(path);
    if (is == 0) {
        H5Eclear2(H5E_DEFAULT);
        return ap_errf(err, AP_ERR_FORMAT, "%s: not an HDF5 file (no HDF5 signature)", path);
    }
    hid_t fapl = make_fapl();
    if (fapl < 0) return h5_fail(err, AP_ERR_INTERNAL, path, "cannot set up file access");
    hid_t f = H5Fopen(path, rdwr ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (f < 0)
        return h5_fail(err, AP_ERR_FORMAT, path,
                       "cannot open as HDF5: the file is truncated, corrupt or locked by "
                       "another process");
    *out = f;
    return AP_OK;
}

/* fsync a finished file before renaming it, so the rename never points at data
 * that is still only in the page cache. */
static ap_status sync_file(const char *path, ap_err *err) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ap_errf(err, AP_ERR_IO, "%s: cannot open to sync: %s", path, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0) return ap_errf(err, AP_ERR_IO, "%s: fsync failed: %s", path, strerror(e));
    return AP_OK;
}

/* ---------------------------------------------------------- group scanning -- */

typedef struct {
    char **names;
    int n, cap;
    int oom;
} name_list;

static herr_t collect_cb(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    name_list *l = data;
    if (l->n == l->cap) {
        int nc = l->cap ? 2 * l->cap : 16;
        char **nn = realloc(l->names, (size_t)nc * sizeof *nn);
        if (!nn) {
            l->oom = 1;
            return -1;
        }
        l->names = nn;
        l->cap = nc;
    }
    l->names[l->n] = strdup(name);
    if (!l->names[l->n]) {
        l->oom = 1;
        return -1;
    }
    l->n++;
    return 0;
}

static void name_list_free(name_list *l) {
    for (int i = 0; i < l->n; i++) free(l->names[i]);
    free(l->names);
    memset(l, 0, sizeof *l);
}

/* Lists the links of /sequences in creation order (name order if the group was
 * made by another tool without a creation-order index). */
static int list_groups(hid_t seqs, name_list *l) {
    hsize_t idx = 0;
    if (H5Literate(seqs, H5_INDEX_CRT_ORDER, H5_ITER_INC, &idx, collect_cb, l) >= 0) return 0;
    if (l->oom) return -1;
    name_list_free(l);
    H5Eclear2(H5E_DEFAULT);
    idx = 0;
    return H5Literate(seqs, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_cb, l) < 0 ? -1 : 0;
}

/* 1 if /sequences/<name> is a group with complete == 1. */
static int group_complete(hid_t seqs, const char *name) {
    H5O_info_t oi;
    if (H5Lexists(seqs, name, H5P_DEFAULT) <= 0) return 0;
    if (H5Oget_info_by_name(seqs, name, &oi, H5P_DEFAULT) < 0 || oi.type != H5O_TYPE_GROUP) {
        H5Eclear2(H5E_DEFAULT);
        return 0;
    }
    hid_t g = H5Gopen2(seqs, name, H5P_DEFAULT);
    if (g < 0) {
        H5Eclear2(H5E_DEFAULT);
        return 0;
    }
    int c = 0;
    int rc = attr_read_int(g, "complete", &c);
    H5Gclose(g);
    H5Eclear2(H5E_DEFAULT);
    return rc == 1 && c == 1;
}

/* ------------------------------------------------------------------ writer -- */

/* <path>.partial.idx, beside the partial file, is the writer's journal:
 *   "<object address> <group name>"  a sequence group is whole and flushed
 *                                    (appended just before it is linked);
 *   "+"                              the link flush that followed completed.
 * /sequences is trusted on --resume only if the journal ends with "+" (no kill
 * came during an update of it); otherwise it is rebuilt from the journal's
 * groups, found by address, without reading the old one. Removed at commit. */

typedef struct {
    haddr_t addr;
    char name[ESC_NAME_MAX];
} idx_entry;

typedef struct {
    idx_entry *e;
    int n, cap;
    int clean; /* ends with "+" (or has no entry) */
} idx_list;

static void writer_close_handles(ap_trace_writer *w);

struct ap_trace_writer {
    hid_t file;
    hid_t seqs;
    ap_trace_meta meta;
    char *path;
    char *partial;
    char *idx_path;
    int idx_fd;
    int count;
};

static char *str_cat(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 1);
    if (!s) return NULL;
    memcpy(s, a, na);
    memcpy(s + na, b, nb + 1);
    return s;
}

static int idx_push(idx_list *l, haddr_t addr, const char *name) {
    if (l->n == l->cap) {
        int nc = l->cap ? 2 * l->cap : 16;
        idx_entry *ne = realloc(l->e, (size_t)nc * sizeof *ne);
        if (!ne) return -1;
        l->e = ne;
        l->cap = nc;
    }
    l->e[l->n].addr = addr;
    snprintf(l->e[l->n].name, sizeof l->e[l->n].name, "%s", name);
    l->n++;
    return 0;
}

/* A torn last line (the kill came during the append) is ignored. */
static ap_status idx_read(const char *path, idx_list *l, ap_err *err) {
    char *data = NULL;
    size_t len = 0;
    l->clean = 1;
    ap_status st = ap_read_file(path, &data, &len, err);
    if (st) return st;
    char *p = data, *end = data + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) break;
        *nl = '\0';
        unsigned long long a = 0;
        char name[ESC_NAME_MAX];
        if (!strcmp(p, "+")) {
            l->clean = 1;
        } else if (sscanf(p, "%llu %768s", &a, name) == 2) {
            if (idx_push(l, (haddr_t)a, name) < 0) {
                st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            l->clean = 0;
        }
        p = nl + 1;
    }
    free(data);
    return st;
}

/* Replaces the journal with the groups listed, ending with "+" if clean (tmp +
 * rename, so a kill leaves the old or the new one), and opens it to append. */
static ap_status idx_rewrite(ap_trace_writer *w, const idx_list *l, int clean, ap_err *err) {
    ap_status st = AP_OK;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", w->idx_path);
    if (w->idx_fd >= 0) close(w->idx_fd);
    w->idx_fd = -1;
    FILE *f = fopen(tmp, "w");
    if (!f) return ap_errf(err, AP_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    for (int i = 0; i < l->n; i++)
        fprintf(f, "%llu %s\n", (unsigned long long)l->e[i].addr, l->e[i].name);
    if (clean) fputs("+\n", f);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        st = ap_errf(err, AP_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
        fclose(f);
        unlink(tmp);
        return st;
    }
    fclose(f);
    st = ap_commit_file(tmp, w->idx_path, err);
    if (st) {
        unlink(tmp);
        return st;
    }
    w->idx_fd = open(w->idx_path, O_WRONLY | O_APPEND);
    if (w->idx_fd < 0)
        return ap_errf(err, AP_ERR_IO, "%s: cannot open: %s", w->idx_path, strerror(errno));
    return AP_OK;
}

static ap_status idx_append(ap_trace_writer *w, const char *line, ap_err *err) {
    size_t n = strlen(line);
    if (write(w->idx_fd, line, n) != (ssize_t)n)
        return ap_errf(err, AP_ERR_IO, "%s: cannot append: %s", w->idx_path, strerror(errno));
    return AP_OK;
}

/* Opens the object at addr if it is a finished sequence group whose id escapes
 * to `name`; -1 otherwise. */
static hid_t open_logged_group(hid_t file, const idx_entry *e) {
    hid_t g = H5Oopen_by_addr(file, e->addr);
    if (g < 0) goto fail;
    if (H5Iget_type(g) != H5I_GROUP) goto fail;
    int c = 0;
    char id[256], esc[ESC_NAME_MAX];
    if (attr_read_int(g, "complete", &c) != 1 || c != 1) goto fail;
    if (attr_read_str(g, "id", id, sizeof id) != 1) goto fail;
    ap_trace_group_name(id, esc, sizeof esc);
    if (strcmp(esc, e->name) != 0) goto fail;
    return g;
fail:
    close_id(g);
    H5Eclear2(H5E_DEFAULT);
    return -1;
}

/* A new trace file with the root attributes and an empty /sequences. The root
 * attributes complete and n_sequences exist from the start (0) so that the
 * commit rewrites them in place instead of growing the root object header. */
static ap_status writer_create_file(const char *file, const ap_trace_meta *meta, hid_t *fout,
                                     hid_t *sout, ap_err *err) {
    ap_status st = AP_OK;
    hid_t f = -1, s = -1;
    hid_t fapl = make_fapl();
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    /* Chunk-index B-tree nodes are allocated full size: the default (K=32, 64
     * entries, ~3 KiB each) would cost more than the data of a small dataset,
     * and ours have at most a few dozen chunks. */
    if (fapl < 0 || fcpl < 0 || obj_props(fcpl) < 0 || H5Pset_istore_k(fcpl, 8) < 0 ||
        H5Pset_link_creation_order(fcpl, H5P_CRT_ORDER_TRACKED) < 0) {
        st = h5_fail(err, AP_ERR_INTERNAL, file, "cannot set up file creation");
        goto cleanup;
    }
    f = H5Fcreate(file, H5F_ACC_TRUNC, fcpl, fapl);
    if (f < 0) {
        st = h5_fail(err, AP_ERR_IO, file, "cannot create");
        goto cleanup;
    }
    if (meta_write(f, meta) < 0 || attr_write_int(f, "n_sequences", 0) < 0 ||
        attr_write_int(f, "complete", 0) < 0) {
        st = h5_fail(err, AP_ERR_IO, file, "cannot write root attributes");
        goto cleanup;
    }
    s = group_create(f, SEQ_ROOT, 1);
    if (s < 0) {
        st = h5_fail(err, AP_ERR_IO, file, "cannot create group /%s", SEQ_ROOT);
        goto cleanup;
    }
    if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) {
        st = h5_fail(err, AP_ERR_IO, file, "cannot flush");
        goto cleanup;
    }
    *fout = f;
    *sout = s;
    f = s = -1;
cleanup:
    close_id(s);
    close_id(f);
    close_id(fcpl);
    close_id(fapl);
    return st;
}

/* /sequences can be trusted: keep its finished groups, drop the others. */
static ap_status resume_trusted(ap_trace_writer *w, idx_list *keep, ap_err *err) {
    ap_status st = AP_OK;
    name_list l = {0}, drop = {0};
    w->seqs = H5Gopen2(w->file, SEQ_ROOT, H5P_DEFAULT);
    if (w->seqs < 0) {
        st = h5_fail(err, AP_ERR_FORMAT, w->partial, "cannot open group /%s", SEQ_ROOT);
        goto cleanup;
    }
    if (list_groups(w->seqs, &l) < 0) {
        st = h5_fail(err, AP_ERR_FORMAT, w->partial, "cannot list /%s", SEQ_ROOT);
        goto cleanup;
    }
    for (int i = 0; i < l.n; i++) {
        H5O_info_t oi;
        if (!group_complete(w->seqs, l.names[i])) {
            if (collect_cb(w->seqs, l.names[i], NULL, &drop) < 0) {
                st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", w->partial);
                goto cleanup;
            }
            continue;
        }
        if (H5Oget_info_by_name(w->seqs, l.names[i], &oi, H5P_DEFAULT) < 0 ||
            idx_push(keep, oi.addr, l.names[i]) < 0) {
            st = h5_fail(err, AP_ERR_FORMAT, w->partial, "cannot inspect group %s", l.names[i]);
            goto cleanup;
        }
    }
    if (drop.n == 0) goto cleanup;
    /* Deleting modifies /sequences: journal it as not clean until flushed. */
    st = idx_rewrite(w, keep, 0, err);
    if (st) goto cleanup;
    for (int i = 0; i < drop.n; i++)
        if (H5Ldelete(w->seqs, drop.names[i], H5P_DEFAULT) < 0) {
            st = h5_fail(err, AP_ERR_FORMAT, w->partial,
                         "cannot remove the incomplete sequence group %s", drop.names[i]);
            goto cleanup;
        }
    if (H5Fflush(w->file, H5F_SCOPE_GLOBAL) < 0)
        st = h5_fail(err, AP_ERR_IO, w->partial, "cannot flush");
cleanup:
    name_list_free(&l);
    name_list_free(&drop);
    return st;
}

/* A kill may have come while /sequences was being updated, and HDF5 can crash
 * iterating a half-updated link index, so the old group is never read. A new
 * one is built unreachable (anonymous) from the journal's finished groups and
 * flushed; the old one's reference count is raised so that unlinking it does
 * not make HDF5 walk it to delete it; then one update of the root header swaps
 * the link. A kill at any point leaves the old or the new index reachable. */
static ap_status rebuild_index(ap_trace_writer *w, const idx_list *journal, idx_list *keep,
                               ap_err *err) {
    ap_status st = AP_OK;
    hid_t gcpl = -1, ng = -1, old = -1;
    gcpl = seq_root_gcpl();
    if (gcpl >= 0) ng = H5Gcreate_anon(w->file, gcpl, H5P_DEFAULT);
    if (ng < 0) {
        st = h5_fail(err, AP_ERR_IO, w->partial, "cannot create a new /%s", SEQ_ROOT);
        goto cleanup;
    }
    for (int i = 0; i < journal->n; i++) {
        const idx_entry *e = &journal->e[i];
        if (H5Lexists(ng, e->name, H5P_DEFAULT) > 0) continue;
        hid_t g = open_logged_group(w->file, e);
        if (g < 0) continue; /* unfinished or unreadable: it is captured again */
        herr_t rc = H5Olink(g, ng, e->name, H5P_DEFAULT, H5P_DEFAULT);
        close_id(g);
        if (rc < 0 || idx_push(keep, e->addr, e->name) < 0) {
            st = h5_fail(err, AP_ERR_IO, w->partial, "cannot relink sequence group %s", e->name);
            goto cleanup;
        }
    }
    if (H5Fflush(w->file, H5F_SCOPE_GLOBAL) < 0) {
        st = h5_fail(err, AP_ERR_IO, w->partial, "cannot flush");
        goto cleanup;
    }
    htri_t ex = H5Lexists(w->file, SEQ_ROOT, H5P_DEFAULT);
    if (ex > 0) {
        old = H5Oopen(w->file, SEQ_ROOT, H5P_DEFAULT);
        if (old < 0 || H5Oincr_refcount(old) < 0 || H5Fflush(w->file, H5F_SCOPE_GLOBAL) < 0 ||
            H5Ldelete(w->file, SEQ_ROOT, H5P_DEFAULT) < 0) {
            st = h5_fail(err, AP_ERR_FORMAT, w->partial,
                         "cannot resume: the sequence index is damaged beyond what --resume "
                         "repairs; finished sequences are listed in %s",
                         w->idx_path);
            goto cleanup;
        }
    }
    if (H5Olink(ng, w->file, SEQ_ROOT, H5P_DEFAULT, H5P_DEFAULT) < 0 ||
        H5Fflush(w->file, H5F_SCOPE_GLOBAL) < 0) {
        st = h5_fail(err, AP_ERR_IO, w->partial, "cannot link the new /%s", SEQ_ROOT);
        goto cleanup;
    }
    w->seqs = ng;
    ng = -1;
cleanup:
    close_id(old);
    close_id(ng);
    close_id(gcpl);
    return st;
}

/* HDF5 can record an end-of-allocation past the bytes it has written so far (the
 * unused tail of a metadata block); killed then, the file looks truncated and
 * will not open. The missing tail was never written, so nothing a finished
 * sequence refers to is in it: pad it with zeros up to the address stored in the
 * superblock (version 2, 8-byte offsets, as this writer creates). */
static ap_status pad_to_stored_eof(const char *path, ap_err *err) {
    unsigned char sb[48];
    ap_status st = AP_OK;
    int fd = open(path, O_RDWR);
    if (fd < 0) return ap_errf(err, AP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    ssize_t n = pread(fd, sb, sizeof sb, 0);
    if (n != (ssize_t)sizeof sb || memcmp(sb, "\211HDF\r\n\032\n", 8) != 0 || sb[8] != 2 ||
        sb[9] != 8)
        goto cleanup; /* not ours: let H5Fopen report it */
    uint64_t base = 0, eof = 0;
    for (int i = 7; i >= 0; i--) {
        base = (base << 8) | sb[12 + i];
        eof = (eof << 8) | sb[28 + i];
    }
    off_t size = lseek(fd, 0, SEEK_END);
    if (base != 0 || size < 0 || eof <= (uint64_t)size) goto cleanup;
    if (eof - (uint64_t)size > (64u << 20)) {
        st = ap_errf(err, AP_ERR_FORMAT,
                     "%s: cannot resume: the file is %llu bytes shorter than its superblock "
                     "says (truncated by something other than a kill?)",
                     path, (unsigned long long)(eof - (uint64_t)size));
        goto cleanup;
    }
    if (ftruncate(fd, (off_t)eof) != 0)
        st = ap_errf(err, AP_ERR_IO, "%s: cannot extend: %s", path, strerror(errno));
cleanup:
    close(fd);
    return st;
}

static ap_status writer_resume(ap_trace_writer *w, ap_err *err) {
    ap_status st = AP_OK;
    idx_list journal = {0}, keep = {0};
    ap_trace_meta fm;
    int complete = 0;
    int have_idx = ap_file_exists(w->idx_path);
    if (have_idx) {
        st = idx_read(w->idx_path, &journal, err);
        if (st) goto cleanup;
    }
    st = pad_to_stored_eof(w->partial, err);
    if (st) goto cleanup;
    st = h5_open_file(w->partial, 1, &w->file, err);
    if (st) goto cleanup;
    int version = 0;
    st = meta_read(w->file, w->partial, &fm, &complete, &version, err);
    if (st) goto cleanup;
    /* Appending to an older-version file would leave a file whose root says
     * one version and whose content another. */
    if (version != AP_TRACE_FORMAT_VERSION) {
        st = ap_errf(err, AP_ERR_FORMAT,
                     "%s: cannot resume: the partial trace has format_version %d, this attnpred "
                     "writes %d (start over with --force)",
                     w->partial, version, AP_TRACE_FORMAT_VERSION);
        goto cleanup;
    }
    char diff[AP_ERR_MSG_MAX / 2];
    if (meta_diff(&fm, &w->meta, diff, sizeof diff)) {
        st = ap_errf(err, AP_ERR_FORMAT,
                     "%s: cannot resume: the partial trace was written with different settings "
                     "(file vs now: %s)",
                     w->partial, diff);
        goto cleanup;
    }
    /* Without a journal (deleted by hand) /sequences is all there is. */
    if (!have_idx || journal.clean)
        st = resume_trusted(w, &keep, err);
    else
        st = rebuild_index(w, &journal, &keep, err);
    if (st) goto cleanup;
    w->count = keep.n;
    st = idx_rewrite(w, &keep, 1, err);
cleanup:
    free(journal.e);
    free(keep.e);
    return st;
}

/* A new (or forced) capture. The partial is initialised under another name and
 * renamed, so a <path>.partial always has its root and /sequences on disk; the
 * old journal goes first so that it can never describe the new file. */
static ap_status writer_start(ap_trace_writer *w, ap_err *err) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", w->partial);
    if (unlink(w->idx_path) != 0 && errno != ENOENT)
        return ap_errf(err, AP_ERR_IO, "%s: cannot remove: %s", w->idx_path, strerror(errno));
    ap_status st = writer_create_file(tmp, &w->meta, &w->file, &w->seqs, err);
    if (!st) st = ap_commit_file(tmp, w->partial, err);
    if (st) {
        writer_close_handles(w);
        unlink(tmp);
        return st;
    }
    idx_list none = {0};
    return idx_rewrite(w, &none, 1, err);
}

ap_status ap_trace_writer_open(const char *path, const ap_trace_meta *meta, int flags,
                               ap_trace_writer **out, ap_err *err) {
    ap_status st = AP_OK;
    ap_trace_writer *w = NULL;
    *out = NULL;
    h5_quiet();
    if (!path || !*path) return ap_errf(err, AP_ERR_ARG, "trace writer: empty output path");
    st = meta_check(meta, path, err);
    if (st) return st;
    if (H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0 || H5Zfilter_avail(H5Z_FILTER_SHUFFLE) <= 0 ||
        H5Zfilter_avail(H5Z_FILTER_FLETCHER32) <= 0)
        return ap_errf(err, AP_ERR_UNSUPPORTED,
                       "%s: this HDF5 library lacks the deflate, shuffle or fletcher32 filter",
                       path);
    w = calloc(1, sizeof *w);
    if (!w) return ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
    w->file = w->seqs = -1;
    w->idx_fd = -1;
    w->meta = *meta;
    w->path = strdup(path);
    w->partial = str_cat(path, ".partial");
    w->idx_path = str_cat(path, ".partial.idx");
    if (!w->path || !w->partial || !w->idx_path) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    st = ap_check_writable_dir(path, err);
    if (st) goto cleanup;
    if (ap_file_exists(path) && !(flags & AP_TRACE_FORCE)) {
        st = ap_errf(err, AP_ERR_EXISTS, "%s: exists%s (use --force to overwrite it)", path,
                     (flags & AP_TRACE_RESUME) ? ": that capture is already complete" : "");
        goto cleanup;
    }
    if (ap_file_exists(w->partial)) {
        if (flags & AP_TRACE_RESUME) {
            st = writer_resume(w, err);
            goto cleanup;
        }
        if (!(flags & AP_TRACE_FORCE)) {
            st = ap_errf(err, AP_ERR_EXISTS,
                         "%s: exists: an interrupted capture (use --resume to continue it or "
                         "--force to start over)",
                         w->partial);
            goto cleanup;
        }
    }
    st = writer_start(w, err);
cleanup:
    if (st) {
        ap_trace_writer_free(w);
        return st;
    }
    *out = w;
    return AP_OK;
}

int ap_trace_writer_has(const ap_trace_writer *w, const char *id) {
    if (!w || w->seqs < 0 || !id) return 0;
    char name[ESC_NAME_MAX];
    ap_trace_group_name(id, name, sizeof name);
    return group_complete(w->seqs, name);
}

int ap_trace_writer_count(const ap_trace_writer *w) { return w ? w->count : 0; }

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static ap_status seq_check(const ap_trace_meta *m, const ap_trace_seq *s, const char *file,
                           ap_err *err) {
#define BAD(...) return ap_errf(err, AP_ERR_ARG, __VA_ARGS__)
    const char *id = s->id ? s->id : "";
    if (!s->id || !s->id[0]) BAD("%s: sequence with an empty id", file);
    if (strlen(s->id) >= sizeof(((ap_trace_seq_info *)0)->id))
        BAD("%s: sequence id '%.40s...' is longer than %zu bytes", file, id,
            sizeof(((ap_trace_seq_info *)0)->id) - 1);
    if (s->task && strlen(s->task) >= sizeof(((ap_trace_seq_info *)0)->task))
        BAD("%s: sequence '%s': task is longer than %zu bytes", file, id,
            sizeof(((ap_trace_seq_info *)0)->task) - 1);
    if (s->source && strlen(s->source) >= sizeof(((ap_trace_seq_info *)0)->source))
        BAD("%s: sequence '%s': source is longer than %zu bytes", file, id,
            sizeof(((ap_trace_seq_info *)0)->source) - 1);
    if (s->n_prompt < 1 || s->n_gen < 0 || s->n_steps < 1)
        BAD("%s: sequence '%s': n_prompt %d, n_gen %d, n_steps %d (need >= 1, >= 0, >= 1)",
            file, id, s->n_prompt, s->n_gen, s->n_steps);
    long T = (long)s->n_prompt + s->n_gen;
    long nb = (T + m->block_size - 1) / m->block_size;
    if (s->n_blocks != nb)
        BAD("%s: sequence '%s': n_blocks %d, expected ceil(%ld / %d) = %ld", file, id,
            s->n_blocks, T, m->block_size, nb);
    if (!s->tokens || !s->step_pos || !s->block_max || !s->block_sum)
        BAD("%s: sequence '%s': tokens, step_pos, block_max and block_sum are required", file,
            id);
    int nq = (s->query != NULL) + (s->key_min != NULL) + (s->key_max != NULL);
    if (nq != 0 && nq != 3)
        BAD("%s: sequence '%s': query, key_min and key_max go together (got %d of 3)", file, id,
            nq);
    for (int i = 0; i < s->n_steps; i++) {
        int32_t p = s->step_pos[i];
        if (p < 0 || p >= T)
            BAD("%s: sequence '%s': step_pos[%d] = %d outside [0, %ld)", file, id, i, p, T);
        if (i > 0 && p <= s->step_pos[i - 1])
            BAD("%s: sequence '%s': step_pos not strictly increasing at step %d", file, id, i);
    }
    /* The recorded steps are the last min(history, n_prompt) prompt queries and
     * every decode query: the predictor's input window depends on it. */
    int n_pre = 0;
    for (int i = 0; i < s->n_steps; i++) n_pre += s->step_pos[i] < s->n_prompt;
    int want_pre = s->n_prompt < m->history ? s->n_prompt : m->history;
    if (n_pre != want_pre || s->n_steps - n_pre != s->n_gen)
        BAD("%s: sequence '%s': %d prefill + %d decode steps, expected min(history %d, n_prompt "
            "%d) = %d + n_gen %d",
            file, id, n_pre, s->n_steps - n_pre, m->history, s->n_prompt, want_pre, s->n_gen);
    if (s->n_raw_layers < 0 || s->n_raw_layers > 64 || s->n_raw_layers > m->n_layer)
        BAD("%s: sequence '%s': %d raw layers (at most %d)", file, id, s->n_raw_layers,
            m->n_layer < 64 ? m->n_layer : 64);
    if (s->n_raw_layers > 0 && (!s->raw_layers || !s->raw))
        BAD("%s: sequence '%s': raw layers without raw data", file, id);
    for (int i = 0; i < s->n_raw_layers; i++) {
        if (s->raw_layers[i] < 0 || s->raw_layers[i] >= m->n_layer)
            BAD("%s: sequence '%s': raw layer %d out of range [0, %d)", file, id,
                s->raw_layers[i], m->n_layer);
        for (int j = 0; j < i; j++)
            if (s->raw_layers[j] == s->raw_layers[i])
                BAD("%s: sequence '%s': raw layer %d listed twice", file, id, s->raw_layers[i]);
    }
#undef BAD
    /* Block views: the contract every consumer relies on, checked once here. */
    const int H = m->n_head, NB = s->n_blocks, S = s->n_steps;
    for (int l = 0; l < m->n_layer; l++)
        for (int st = 0; st < S; st++) {
            int nvalid = s->step_pos[st] / m->block_size + 1;
            for (int h = 0; h < H; h++) {
                size_t off = (((size_t)l * S + st) * H + h) * NB;
                const float *mx = s->block_max + off, *sm = s->block_sum + off;
                double sum = 0.0;
                for (int j = 0; j < NB; j++) {
                    if (!isfinite(mx[j]) || !isfinite(sm[j]) || mx[j] < 0 || sm[j] < 0)
                        return ap_errf(err, AP_ERR_NUMERIC,
                                       "%s: sequence '%s': layer %d step %d head %d block %d: "
                                       "non-finite or negative attention",
                                       file, id, l, st, h, j);
                    if (j >= nvalid && (mx[j] != 0 || sm[j] != 0))
                        return ap_errf(err, AP_ERR_ARG,
                                       "%s: sequence '%s': layer %d step %d head %d: block %d "
                                       "is past the causal length (position %d) but not 0",
                                       file, id, l, st, h, j, s->step_pos[st]);
                    if (mx[j] > sm[j] * (1.0f + 1e-6f))
                        return ap_errf(err, AP_ERR_ARG,
                                       "%s: sequence '%s': layer %d step %d head %d block %d: "
                                       "block_max %g > block_sum %g",
                                       file, id, l, st, h, j, mx[j], sm[j]);
                    sum += sm[j];
                }
                if (fabs(sum - 1.0) > ROW_SUM_TOL)
                    return ap_errf(err, AP_ERR_ARG,
                                   "%s: sequence '%s': layer %d step %d head %d: block_sum row "
                                   "sums to %.6f, not 1",
                                   file, id, l, st, h, sum);
            }
        }
    size_t L = (size_t)m->n_layer;
    if (s->query && (!all_finite(s->query, L * S * H * m->head_dim) ||
                     !all_finite(s->key_min, L * m->n_head_kv * NB * m->head_dim) ||
                     !all_finite(s->key_max, L * m->n_head_kv * NB * m->head_dim)))
        return ap_errf(err, AP_ERR_NUMERIC, "%s: sequence '%s': non-finite query or key bound",
                       file, id);
    if (s->prefill_colsum && !all_finite(s->prefill_colsum, L * H * s->n_prompt))
        return ap_errf(err, AP_ERR_NUMERIC, "%s: sequence '%s': non-finite prefill_colsum",
                       file, id);
    if (s->raw && !all_finite(s->raw, (size_t)s->n_raw_layers * S * H * T))
        return ap_errf(err, AP_ERR_NUMERIC, "%s: sequence '%s': non-finite raw attention", file,
                       id);
    return AP_OK;
}

static herr_t write_layer(hid_t layers, int l, const ap_trace_meta *m, const ap_trace_seq *s) {
    herr_t rc = -1;
    hid_t g = -1;
    char name[16];
    snprintf(name, sizeof name, "%d", l);
    g = group_create(layers, name, 0);
    if (g < 0) goto cleanup;
    const hsize_t S = (hsize_t)s->n_steps, H = (hsize_t)m->n_head, NB = (hsize_t)s->n_blocks,
                  HD = (hsize_t)m->head_dim, HKV = (hsize_t)m->n_head_kv,
                  T = (hsize_t)s->n_prompt + (hsize_t)s->n_gen, P = (hsize_t)s->n_prompt;
    hsize_t dv[3] = {S, H, NB};
    size_t per = (size_t)(S * H * NB);
    if (ds_write(g, "block_max", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 4, 3, dv,
                 s->block_max + (size_t)l * per) < 0 ||
        ds_write(g, "block_sum", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 4, 3, dv,
                 s->block_sum + (size_t)l * per) < 0)
        goto cleanup;
    if (s->query) {
        hsize_t dq[3] = {S, H, HD}, dk[3] = {HKV, NB, HD};
        size_t nq = (size_t)(S * H * HD), nk = (size_t)(HKV * NB * HD);
        if (ds_write(g, "query", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 4, 3, dq,
                     s->query + (size_t)l * nq) < 0 ||
            ds_write(g, "key_min", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 4, 3, dk,
                     s->key_min + (size_t)l * nk) < 0 ||
            ds_write(g, "key_max", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 4, 3, dk,
                     s->key_max + (size_t)l * nk) < 0)
            goto cleanup;
    }
    if (s->prefill_colsum) {
        hsize_t dc[2] = {H, P};
        if (ds_write(g, "prefill_colsum", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 4, 2, dc,
                     s->prefill_colsum + (size_t)l * (size_t)(H * P)) < 0)
            goto cleanup;
    }
    for (int r = 0; r < s->n_raw_layers; r++) {
        if (s->raw_layers[r] != l) continue;
        hsize_t dr[3] = {S, H, T};
        if (ds_write(g, "raw", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 4, 3, dr,
                     s->raw + (size_t)r * (size_t)(S * H * T)) < 0)
            goto cleanup;
    }
    rc = 0;
cleanup:
    close_id(g);
    return rc;
}

ap_status ap_trace_writer_add(ap_trace_writer *w, const ap_trace_seq *s, ap_err *err) {
    ap_status st = AP_OK;
    hid_t g = -1, layers = -1, gcpl = -1;
    int linked = 0;
    off_t idx_len = -1;
    char name[ESC_NAME_MAX];
    h5_quiet();
    if (!w || w->file < 0) return ap_errf(err, AP_ERR_ARG, "trace writer is closed");
    st = seq_check(&w->meta, s, w->partial, err);
    if (st) return st;
    ap_trace_group_name(s->id, name, sizeof name);
    htri_t ex = H5Lexists(w->seqs, name, H5P_DEFAULT);
    if (ex < 0) return h5_fail(err, AP_ERR_IO, w->partial, "cannot look up sequence '%s'", s->id);
    if (ex)
        return ap_errf(err, AP_ERR_ARG, "%s: duplicate sequence id '%s'", w->partial, s->id);
    /* Built as an anonymous group: until it is linked nothing reachable from the
     * root changes, so a kill leaves at most unreachable garbage. */
    gcpl = H5Pcreate(H5P_GROUP_CREATE);
    if (gcpl >= 0 && obj_props(gcpl) >= 0)
        g = H5Gcreate_anon(w->seqs, gcpl, H5P_DEFAULT);
    if (g < 0) {
        st = h5_fail(err, AP_ERR_IO, w->partial, "cannot create group for sequence '%s'", s->id);
        goto cleanup;
    }
    const hsize_t T = (hsize_t)s->n_prompt + (hsize_t)s->n_gen, S = (hsize_t)s->n_steps;
    int raw_sorted[64];
    for (int i = 0; i < s->n_raw_layers; i++) raw_sorted[i] = s->raw_layers[i];
    for (int i = 1; i < s->n_raw_layers; i++)
        for (int j = i; j > 0 && raw_sorted[j - 1] > raw_sorted[j]; j--) {
            int t = raw_sorted[j];
            raw_sorted[j] = raw_sorted[j - 1];
            raw_sorted[j - 1] = t;
        }
    if (attr_write_str(g, "id", s->id) < 0 ||
        attr_write_str(g, "task", s->task ? s->task : "") < 0 ||
        attr_write_str(g, "source", s->source ? s->source : "") < 0 ||
        attr_write_int(g, "chat", s->chat ? 1 : 0) < 0 ||
        attr_write_int(g, "n_prompt", s->n_prompt) < 0 ||
        attr_write_int(g, "n_gen", s->n_gen) < 0 ||
        attr_write_int(g, "n_steps", s->n_steps) < 0 ||
        attr_write_int(g, "n_blocks", s->n_blocks) < 0 ||
        attr_write_int(g, "has_query", s->query != NULL) < 0 ||
        attr_write_int(g, "has_colsum", s->prefill_colsum != NULL) < 0 ||
        attr_write_ints(g, "raw_layers", raw_sorted, (hsize_t)s->n_raw_layers, 0) < 0 ||
        ds_write(g, "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, 4, 1, &T, s->tokens) < 0 ||
        ds_write(g, "step_pos", H5T_STD_I32LE, H5T_NATIVE_INT32, 4, 1, &S, s->step_pos) < 0) {
        st = h5_fail(err, AP_ERR_IO, w->partial, "cannot write sequence '%s'", s->id);
        goto cleanup;
    }
    layers = group_create(g, "layers", 0);
    if (layers < 0) {
        st = h5_fail(err, AP_ERR_IO, w->partial, "cannot write sequence '%s'", s->id);
        goto cleanup;
    }
    for (int l = 0; l < w->meta.n_layer; l++)
        if (write_layer(layers, l, &w->meta, s) < 0) {
            st = h5_fail(err, AP_ERR_IO, w->partial, "cannot write sequence '%s' layer %d",
                         s->id, l);
            goto cleanup;
        }
    close_id(layers);
    layers = -1;
    /* Datasets on disk, then the flag that says they are whole, then the journal
     * line, then the link that makes the group part of the trace. */
    H5O_info_t oi;
    if (H5Fflush(w->file, H5F_SCOPE_GLOBAL) < 0 || attr_write_int(g, "complete", 1) < 0 ||
        H5Fflush(w->file, H5F_SCOPE_GLOBAL) < 0 || H5Oget_info(g, &oi) < 0) {
        st = h5_fail(err, AP_ERR_IO, w->partial, "cannot finish sequence '%s'", s->id);
        goto cleanup;
    }
    char line[ESC_NAME_MAX + 32];
    snprintf(line, sizeof line, "%llu %s\n", (unsigned long long)oi.addr, name);
    idx_len = lseek(w->idx_fd, 0, SEEK_END);
    if (idx_len < 0) {
        st = ap_errf(err, AP_ERR_IO, "%s: cannot seek: %s", w->idx_path, strerror(errno));
        goto cleanup;
    }
    st = idx_append(w, line, err);
    if (st) goto cleanup;
    if (H5Olink(g, w->seqs, name, H5P_DEFAULT, H5P_DEFAULT) < 0) {
        st = h5_fail(err, AP_ERR_IO, w->partial, "cannot link sequence '%s'", s->id);
        goto cleanup;
    }
    linked = 1;
    if (H5Fflush(w->file, H5F_SCOPE_GLOBAL) < 0) {
        st = h5_fail(err, AP_ERR_IO, w->partial, "cannot finish sequence '%s'", s->id);
        goto cleanup;
    }
    st = idx_append(w, "+\n", err);
    if (st) goto cleanup;
    idx_len = -1;
    w->count++;
cleanup:
    close_id(gcpl);
    close_id(layers);
    close_id(g);
    if (st && linked) {
        /* Leave no half group behind; if even this fails, --resume drops it. */
        H5Ldelete(w->seqs, name, H5P_DEFAULT);
        H5Eclear2(H5E_DEFAULT);
    }
    /* The unlinked group is freed on close: its journal line must not survive
     * (if truncating fails, resume still checks every journaled group). */
    if (st && idx_len >= 0 && ftruncate(w->idx_fd, idx_len) != 0) H5Eclear2(H5E_DEFAULT);
    return st;
}

static void writer_close_handles(ap_trace_writer *w) {
    close_id(w->seqs);
    w->seqs = -1;
    close_id(w->file);
    w->file = -1;
    if (w->idx_fd >= 0) close(w->idx_fd);
    w->idx_fd = -1;
}

ap_status ap_trace_writer_close(ap_trace_writer *w, int commit, ap_err *err) {
    ap_status st = AP_OK;
    h5_quiet();
    if (!w || w->file < 0) return AP_OK;
    if (!commit) {
        writer_close_handles(w);
        return AP_OK;
    }
    if (attr_write_int(w->file, "n_sequences", w->count) < 0 ||
        attr_write_int(w->file, "complete", 1) < 0) {
        st = h5_fail(err, AP_ERR_IO, w->partial, "cannot mark the trace complete");
        goto cleanup;
    }
    close_id(w->seqs);
    w->seqs = -1;
    herr_t rc = H5Fclose(w->file);
    w->file = -1;
    if (rc < 0) {
        st = h5_fail(err, AP_ERR_IO, w->partial, "cannot close");
        goto cleanup;
    }
    st = sync_file(w->partial, err);
    if (st) goto cleanup;
    st = ap_commit_file(w->partial, w->path, err);
    if (!st) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", w->idx_path);
        unlink(w->idx_path);
        unlink(tmp); /* left by a kill during a journal rewrite */
    }
cleanup:
    writer_close_handles(w);
    return st;
}

void ap_trace_writer_free(ap_trace_writer *w) {
    if (!w) return;
    writer_close_handles(w);
    H5Eclear2(H5E_DEFAULT);
    free(w->path);
    free(w->partial);
    free(w->idx_path);
    free(w);
}

/* ------------------------------------------------------------------ reader -- */

struct ap_trace {
    hid_t file;
    char *path;
    ap_trace_meta meta;
    int complete;
    int version;               /* format_version of the file */
    int n_seq;
    char **gname;              /* escaped group names of the complete sequences */
    ap_trace_seq_info *info;
};

static ap_status seq_info_read(ap_trace *t, const char *gname, ap_trace_seq_info *in,
                               ap_err *err) {
    ap_status st = AP_OK;
    hid_t g = H5Gopen2(t->file, SEQ_ROOT, H5P_DEFAULT), s = -1;
    if (g < 0) return h5_fail(err, AP_ERR_FORMAT, t->path, "cannot open /%s", SEQ_ROOT);
    s = H5Gopen2(g, gname, H5P_DEFAULT);
    if (s < 0) {
        st = h5_fail(err, AP_ERR_FORMAT, t->path, "cannot open sequence group %s", gname);
        goto cleanup;
    }
    memset(in, 0, sizeof *in);
    if (attr_read_str(s, "id", in->id, sizeof in->id) != 1 ||
        attr_read_str(s, "task", in->task, sizeof in->task) < 0 ||
        attr_read_str(s, "source", in->source, sizeof in->source) < 0 ||
        attr_read_int(s, "chat", &in->chat) < 0 ||
        attr_read_int(s, "n_prompt", &in->n_prompt) != 1 ||
        attr_read_int(s, "n_gen", &in->n_gen) != 1 ||
        attr_read_int(s, "n_steps", &in->n_steps) != 1 ||
        attr_read_int(s, "n_blocks", &in->n_blocks) != 1 ||
        attr_read_int(s, "has_query", &in->has_query) < 0 ||
        attr_read_int(s, "has_colsum", &in->has_colsum) < 0 ||
        attr_read_ints(s, "raw_layers", in->raw_layers, 64, &in->n_raw_layers) < 0) {
        H5Eclear2(H5E_DEFAULT);
        st = ap_errf(err, AP_ERR_FORMAT,
                     "%s: sequence group %s: missing or malformed attributes (id, n_prompt, "
                     "n_gen, n_steps, n_blocks)",
                     t->path, gname);
        goto cleanup;
    }
    long T = (long)in->n_prompt + in->n_gen;
    if (in->n_prompt < 1 || in->n_gen < 0 || in->n_steps < 1 ||
        in->n_blocks != (T + t->meta.block_size - 1) / t->meta.block_size) {
        st = ap_errf(err, AP_ERR_FORMAT,
                     "%s: sequence '%s': inconsistent sizes (n_prompt %d, n_gen %d, n_steps %d, "
                     "n_blocks %d)",
                     t->path, in->id, in->n_prompt, in->n_gen, in->n_steps, in->n_blocks);
        goto cleanup;
    }
    for (int i = 0; i < in->n_raw_layers; i++)
        if (in->raw_layers[i] < 0 || in->raw_layers[i] >= t->meta.n_layer) {
            st = ap_errf(err, AP_ERR_FORMAT, "%s: sequence '%s': raw layer %d out of range",
                         t->path, in->id, in->raw_layers[i]);
            goto cleanup;
        }
cleanup:
    close_id(s);
    close_id(g);
    return st;
}

/* A .partial whose journal does not end with "+" was killed while its sequence
 * index was being updated; HDF5 can crash iterating such an index, so it is
 * refused until --resume has rebuilt it. */
static ap_status partial_check(const char *path, ap_err *err) {
    static const char suffix[] = ".partial";
    size_t n = strlen(path), ns = sizeof suffix - 1;
    if (n < ns || strcmp(path + n - ns, suffix) != 0) return AP_OK;
    char *idx = str_cat(path, ".idx");
    if (!idx) return ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
    idx_list j = {0};
    ap_status st = AP_OK;
    if (ap_file_exists(idx) && idx_read(idx, &j, err) == AP_OK && !j.clean)
        st = ap_errf(err, AP_ERR_FORMAT,
                     "%s: the capture writing it stopped while adding a sequence (%s does not "
                     "end with \"+\"): run capture --resume to repair it before reading",
                     path, idx);
    free(j.e);
    free(idx);
    return st;
}

ap_status ap_trace_open(const char *path, ap_trace **out, ap_err *err) {
    ap_status st = AP_OK;
    ap_trace *t = NULL;
    hid_t seqs = -1;
    name_list l = {0};
    *out = NULL;
    h5_quiet();
    t = calloc(1, sizeof *t);
    if (!t) return ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
    t->file = -1;
    t->path = strdup(path);
    if (!t->path) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    st = partial_check(path, err);
    if (st) goto cleanup;
    st = h5_open_file(path, 0, &t->file, err);
    if (st) goto cleanup;
    st = meta_read(t->file, path, &t->meta, &t->complete, &t->version, err);
    if (st) goto cleanup;
    seqs = H5Gopen2(t->file, SEQ_ROOT, H5P_DEFAULT);
    if (seqs < 0) {
        st = h5_fail(err, AP_ERR_FORMAT, path, "missing group /%s", SEQ_ROOT);
        goto cleanup;
    }
    if (list_groups(seqs, &l) < 0) {
        st = h5_fail(err, AP_ERR_FORMAT, path, "cannot list /%s", SEQ_ROOT);
        goto cleanup;
    }
    t->gname = calloc((size_t)l.n + 1, sizeof *t->gname);
    t->info = calloc((size_t)l.n + 1, sizeof *t->info);
    if (!t->gname || !t->info) {
        st = ap_errf(err, AP_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    for (int i = 0; i < l.n; i++) {
        /* An unfinished group (a .partial being written) is not part of the trace. */
        if (!group_complete(seqs, l.names[i])) continue;
        st = seq_info_read(t, l.names[i], &t->info[t->n_seq], err);
        if (st) goto cleanup;
        t->gname[t->n_seq] = l.names[i];
        l.names[i] = NULL;
        t->n_seq++;
    }
cleanup:
    name_list_free(&l);
    close_id(seqs);
    if (st) {
        ap_trace_close(t);
        return st;
    }
    *out = t;
    return AP_OK;
}

void ap_trace_close(ap_trace *t) {
    if (!t) return;
    close_id(t->file);
    H5Eclear2(H5E_DEFAULT);
    if (t->gname)
        for (int i = 0; i < t->n_seq; i++) free(t->gname[i]);
    free(t->gname);
    free(t->info);
    free(t->path);
    free(t);
}

const ap_trace_meta *ap_trace_get_meta(const ap_trace *t) { return &t->meta; }
int ap_trace_n_seq(const ap_trace *t) { return t ? t->n_seq : 0; }
int ap_trace_is_complete(const ap_trace *t) { return t ? t->complete : 0; }
int ap_trace_format_version(const ap_trace *t) { return t ? t->version : 0; }

int ap_trace_find(const ap_trace *t, const char *id) {
    if (!t || !id) return -1;
    for (int i = 0; i < t->n_seq; i++)
        if (strcmp(t->info[i].id, id) == 0) return i;
    return -1;
}

ap_status ap_trace_seq_get_info(const ap_trace *t, int i, ap_trace_seq_info *info, ap_err *err) {
    if (!t || i < 0 || i >= t->n_seq)
        return ap_errf(err, AP_ERR_RANGE, "%s: sequence index %d out of range [0, %d)",
                       t ? t->path : "trace", i, t ? t->n_seq : 0);
    *info = t->info[i];
    return AP_OK;
}

/* Reads a whole dataset whose shape must be exactly `expect`. */
static ap_status ds_read(const ap_trace *t, int i, const char *rel, const char *what,
                         hid_t memtype, H5T_class_t cls, int rank, const hsize_t *expect,
                         void *buf, size_t cap, ap_err *err) {
    ap_status st = AP_OK;
    hid_t ds = -1, sp = -1, ft = -1;
    char p[ESC_NAME_MAX + 64];
    const char *id = t->info[i].id;
    snprintf(p, sizeof p, "%s/%s/%s", SEQ_ROOT, t->gname[i], rel);
    h5_quiet();
    htri_t ex = H5Lexists(t->file, p, H5P_DEFAULT);
    if (ex <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return ap_errf(err, AP_ERR_ARG, "%s: sequence '%s' has no %s", t->path, id, what);
    }
    ds = H5Dopen2(t->file, p, H5P_DEFAULT);
    if (ds < 0) {
        st = h5_fail(err, AP_ERR_FORMAT, t->path, "sequence '%s': cannot open %s", id, what);
        goto cleanup;
    }
    sp = H5Dget_space(ds);
    ft = H5Dget_type(ds);
    if (sp < 0 || ft < 0) {
        st = h5_fail(err, AP_ERR_FORMAT, t->path, "sequence '%s': cannot inspect %s", id, what);
        goto cleanup;
    }
    hsize_t dims[8];
    int r = H5Sget_simple_extent_ndims(sp);
    int same = r == rank && H5Tget_class(ft) == cls;
    if (same && r > 0 && H5Sget_simple_extent_dims(sp, dims, NULL) < 0) same = 0;
    for (int k = 0; same && k < rank; k++) same = dims[k] == expect[k];
    if (!same) {
        H5Eclear2(H5E_DEFAULT);
        st = ap_errf(err, AP_ERR_FORMAT, "%s: sequence '%s': %s has the wrong shape or type",
                     t->path, id, what);
        goto cleanup;
    }
    size_t n = 1;
    for (int k = 0; k < rank; k++) n *= (size_t)expect[k];
    if (cap < n) {
        st = ap_errf(err, AP_ERR_RANGE, "%s: sequence '%s': %s needs %zu elements, buffer holds %zu",
                     t->path, id, what, n, cap);
        goto cleanup;
    }
    if (H5Dread(ds, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        st = h5_fail(err, AP_ERR_FORMAT, t->path, "sequence '%s': cannot read %s (corrupt data?)",
                     id, what);
        goto cleanup;
    }
cleanup:
    close_id(ft);
    close_id(sp);
    close_id(ds);
    return st;
}

ap_status ap_trace_read_i32(const ap_trace *t, int i, const char *name, int32_t *buf, size_t n,
                            ap_err *err) {
    if (!t || i < 0 || i >= t->n_seq)
        return ap_errf(err, AP_ERR_RANGE, "%s: sequence index %d out of range [0, %d)",
                       t ? t->path : "trace", i, t ? t->n_seq : 0);
    const ap_trace_seq_info *in = &t->info[i];
    hsize_t d;
    if (!strcmp(name, "tokens"))
        d = (hsize_t)in->n_prompt + (hsize_t)in->n_gen;
    else if (!strcmp(name, "step_pos"))
        d = (hsize_t)in->n_steps;
    else
        return ap_errf(err, AP_ERR_ARG, "%s: unknown int32 dataset '%s' (tokens, step_pos)",
                       t->path, name);
    return ds_read(t, i, name, name, H5T_NATIVE_INT32, H5T_INTEGER, 1, &d, buf, n, err);
}

ap_status ap_trace_read_layer(const ap_trace *t, int i, int layer, const char *name, float *buf,
                              size_t n, ap_err *err) {
    if (!t || i < 0 || i >= t->n_seq)
        return ap_errf(err, AP_ERR_RANGE, "%s: sequence index %d out of range [0, %d)",
                       t ? t->path : "trace", i, t ? t->n_seq : 0);
    if (layer < 0 || layer >= t->meta.n_layer)
        return ap_errf(err, AP_ERR_RANGE, "%s: layer %d out of range [0, %d)", t->path, layer,
                       t->meta.n_layer);
    const ap_trace_seq_info *in = &t->info[i];
    const ap_trace_meta *m = &t->meta;
    hsize_t S = (hsize_t)in->n_steps, H = (hsize_t)m->n_head, NB = (hsize_t)in->n_blocks,
            HD = (hsize_t)m->head_dim, HKV = (hsize_t)m->n_head_kv,
            T = (hsize_t)in->n_prompt + (hsize_t)in->n_gen;
    hsize_t d[3];
    int rank = 3;
    if (!strcmp(name, "block_max") || !strcmp(name, "block_sum")) {
        d[0] = S, d[1] = H, d[2] = NB;
    } else if (!strcmp(name, "query")) {
        d[0] = S, d[1] = H, d[2] = HD;
    } else if (!strcmp(name, "key_min") || !strcmp(name, "key_max")) {
        d[0] = HKV, d[1] = NB, d[2] = HD;
    } else if (!strcmp(name, "prefill_colsum")) {
        d[0] = H, d[1] = (hsize_t)in->n_prompt;
        rank = 2;
    } else if (!strcmp(name, "raw")) {
        d[0] = S, d[1] = H, d[2] = T;
    } else {
        return ap_errf(err, AP_ERR_ARG,
                       "%s: unknown layer dataset '%s' (block_max, block_sum, query, key_min, "
                       "key_max, prefill_colsum, raw)",
                       t->path, name);
    }
    char rel[64], what[96];
    snprintf(rel, sizeof rel, "layers/%d/%s", layer, name);
    snprintf(what, sizeof what, "%s for layer %d", name, layer);
    return ds_read(t, i, rel, what, H5T_NATIVE_FLOAT, H5T_FLOAT, rank, d, buf, n, err);
}

/* ------------------------------------------------------------------- merge -- */

ap_status ap_trace_merge(const char *const *inputs, int n_inputs, const char *out_path,
                         int force, ap_err *err) {
    ap_status st = AP_OK;
    hid_t out = -1, oseqs = -1, iseqs = -1, ocpypl = -1;
    ap_trace *in = NULL;
    ap_trace_meta meta;
    char tmp[4096];
    int tmp_made = 0, total = 0;
    h5_quiet();
    if (n_inputs < 1) return ap_errf(err, AP_ERR_ARG, "merge: no input traces");
    if (ap_file_exists(out_path) && !force)
        return ap_errf(err, AP_ERR_EXISTS, "%s: exists (use --force to overwrite it)", out_path);
    st = ap_check_writable_dir(out_path, err);
    if (st) return st;
    ap_tmp_name(tmp, sizeof tmp, out_path);
    for (int k = 0; k < n_inputs; k++) {
        st = ap_trace_open(inputs[k], &in, err);
        if (st) goto cleanup;
        if (!in->complete) {
            st = ap_errf(err, AP_ERR_FORMAT,
                         "%s: not a complete trace (an interrupted capture? finish it with "
                         "--resume first)",
                         inputs[k]);
            goto cleanup;
        }
        if (k == 0) {
            meta = in->meta;
            ocpypl = H5Pcreate(H5P_OBJECT_COPY);
            if (ocpypl < 0) {
                st = h5_fail(err, AP_ERR_INTERNAL, tmp, "cannot set up copying");
                goto cleanup;
            }
            st = writer_create_file(tmp, &meta, &out, &oseqs, err);
            if (st) goto cleanup;
            tmp_made = 1;
        } else {
            char diff[AP_ERR_MSG_MAX / 2];
            if (meta_diff(&in->meta, &meta, diff, sizeof diff)) {
                st = ap_errf(err, AP_ERR_FORMAT,
                             "%s: cannot merge: settings differ from %s (%s)", inputs[k],
                             inputs[0], diff);
                goto cleanup;
            }
        }
        iseqs = H5Gopen2(in->file, SEQ_ROOT, H5P_DEFAULT);
        if (iseqs < 0) {
            st = h5_fail(err, AP_ERR_FORMAT, inputs[k], "cannot open /%s", SEQ_ROOT);
            goto cleanup;
        }
        for (int i = 0; i < in->n_seq; i++) {
            htri_t ex = H5Lexists(oseqs, in->gname[i], H5P_DEFAULT);
            if (ex != 0) {
                st = ex < 0 ? h5_fail(err, AP_ERR_IO, tmp, "cannot look up a sequence")
                            : ap_errf(err, AP_ERR_FORMAT,
                                      "%s: cannot merge: sequence id '%s' is already in an "
                                      "earlier input",
                                      inputs[k], in->info[i].id);
                goto cleanup;
            }
            if (H5Ocopy(iseqs, in->gname[i], oseqs, in->gname[i], ocpypl, H5P_DEFAULT) < 0) {
                st = h5_fail(err, AP_ERR_IO, tmp, "cannot copy sequence '%s' from %s",
                             in->info[i].id, inputs[k]);
                goto cleanup;
            }
            total++;
        }
        close_id(iseqs);
        iseqs = -1;
        ap_trace_close(in);
        in = NULL;
    }
    if (attr_write_int(out, "n_sequences", total) < 0 || attr_write_int(out, "complete", 1) < 0) {
        st = h5_fail(err, AP_ERR_IO, tmp, "cannot mark the trace complete");
        goto cleanup;
    }
    close_id(oseqs);
    oseqs = -1;
    herr_t rc = H5Fclose(out);
    out = -1;
    if (rc < 0) {
        st = h5_fail(err, AP_ERR_IO, tmp, "cannot close");
        goto cleanup;
    }
    st = sync_file(tmp, err);
    if (st) goto cleanup;
    st = ap_commit_file(tmp, out_path, err);
    if (!st) tmp_made = 0;
cleanup:
    close_id(iseqs);
    ap_trace_close(in);
    close_id(oseqs);
    close_id(out);
    close_id(ocpypl);
    H5Eclear2(H5E_DEFAULT);
    if (tmp_made) unlink(tmp);
    return st;
}
