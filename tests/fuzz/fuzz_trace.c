/* libFuzzer target for the trace reader (capture/trace.h).
 *
 * Structure-aware: the input is not an HDF5 file but a program that this
 * target turns into one with the HDF5 API, so the library only ever parses
 * files it wrote itself, and what is fuzzed is our validation layer: every
 * root and sequence attribute (present or not, value, integer / string /
 * float / opaque type, scalar / array / null dataspace, variable or fixed
 * length strings with each padding, too long), every dataset (missing, a
 * dimension off by one, wrong rank, wrong class, a convertible type, a group
 * in its place, a corrupted fletcher32 chunk), the sequence index (groups
 * without a creation-order index, dangling soft links, datasets and
 * duplicate hard links among the sequences, unfinished groups) and, for a
 * .partial file, the writer's journal <path>.idx (free text).
 *
 * Why not raw bytes: fed raw mutations of valid traces, HDF5 1.10.8 (Debian
 * 12) leaked object-header chunks on a corrupt header (H5O cache
 * deserialize, via H5Aexists) within 20 executions and hung for over 90 s in
 * H5HG_read (reading a variable-length string attribute from a corrupt
 * global heap) within 50: bugs of the library, not of attnpred, that would
 * hide anything in our code. The program format:
 *
 *   meta   2 bytes of dimensions (n_layer 1..3, n_head 1..4, n_head_kv a
 *          divisor, head_dim 1..4, block 1..8), history (0..5), sequence
 *          count ((b + 1) % 4; bit 7: cut the file short at the end), file
 *          flags (partial, index variants, extra links), then one op byte per
 *          root attribute;
 *   per sequence: flags (query, colsum, raw layer, fuzzed id, fuzzed group
 *          name, unfinished, no layers group, chunked + filters), n_prompt
 *          (1..40), n_gen (0..5), then op bytes for its attributes and
 *          datasets, in file order.
 * An op byte below 128 writes the valid value the way the writer does;
 * above, bits 0..3 pick a mutation. A missing byte reads as 0, so a short
 * input is a valid trace and the seeds stay small.
 *
 * Checks beyond "no crash or sanitizer report": a failed open leaves no
 * handle and a message that names the file; an open trace passes the
 * documented validation (positive dimensions, n_head a multiple of
 * n_head_kv, n_blocks = ceil(T / block), raw layers in range, terminated
 * strings); each dataset reads into a buffer of exactly the size the info
 * implies (ASan catches a read past it) and one element less is refused;
 * out-of-range indices and layers are refused; an input without any
 * mutation opens and reads back everything it wrote; and no HDF5 object,
 * dataspace, datatype, attribute or property list stays open afterwards (an
 * id leaked on some error path).
 *
 *   ./fuzz_trace -max_total_time=60 tests/fuzz/corpus/trace
 * Seeds in tests/fuzz/corpus/trace are such programs, written by
 * tests/fuzz/make_trace_seeds.py; FUZZ_TRACE_VERBOSE=1 makes the target say
 * what each input wrote and how the reader took it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "capture/trace.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads larger than this many elements are skipped (a crafted info can claim
 * any size; the datasets then fail the shape check anyway). */
#define MAX_ELEMS ((size_t)1 << 20)
#define MAX_SEQ 3
#define MAX_CORRUPT 8

static char path_h5[64], path_partial[80], path_idx[96];
static int verbose; /* $FUZZ_TRACE_VERBOSE: say what each input did (for writing seeds) */
static ssize_t base_ids[5] = {-1, -1, -1, -1, -1};
static const H5I_type_t id_types[5] = {H5I_DATASPACE, H5I_DATATYPE, H5I_GENPROP_LST, H5I_ATTR,
                                       H5I_GROUP};

static void cleanup_files(void) {
    unlink(path_h5);
    unlink(path_partial);
    unlink(path_idx);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    snprintf(path_h5, sizeof path_h5, "/tmp/fuzz_trace.%ld.h5", (long)getpid());
    snprintf(path_partial, sizeof path_partial, "%s.partial", path_h5);
    snprintf(path_idx, sizeof path_idx, "%s.idx", path_partial);
    atexit(cleanup_files);
    verbose = getenv("FUZZ_TRACE_VERBOSE") != NULL;
    H5open();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return 0;
}

static void die(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_trace: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    cleanup_files(); /* abort() skips atexit */
    abort();
}

/* ------------------------------------------------------------ input bytes */

typedef struct {
    const uint8_t *p;
    size_t n;
    int mutated; /* some op wrote something the writer would not */
} src_t;

static unsigned u8(src_t *s) {
    if (!s->n) return 0;
    s->n--;
    return *s->p++;
}

static int32_t i32(src_t *s) {
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) v |= (uint32_t)u8(s) << (8 * k);
    return (int32_t)v;
}

/* A length byte (times `scale`) then that many bytes, NUL-terminated in out. */
static size_t take(src_t *s, char *out, size_t cap, unsigned scale) {
    size_t len = (size_t)u8(s) * scale;
    if (len > s->n) len = s->n;
    if (len > cap - 1) len = cap - 1;
    memcpy(out, s->p, len);
    out[len] = '\0';
    s->p += len;
    s->n -= len;
    return len;
}

/* ------------------------------------------------------------- attributes */

static void attr_raw(hid_t loc, const char *name, hid_t type, hid_t space, const void *buf) {
    hid_t a = H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        if (buf) H5Awrite(a, type, buf);
        H5Aclose(a);
    }
    H5Eclear2(H5E_DEFAULT);
}

static void attr_scalar(hid_t loc, const char *name, hid_t type, const void *buf) {
    hid_t sp = H5Screate(H5S_SCALAR);
    attr_raw(loc, name, type, sp, buf);
    H5Sclose(sp);
}

static void attr_vlen(hid_t loc, const char *name, const char *v, int n) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    const char *vals[2] = {v, v};
    if (n == 1) {
        attr_scalar(loc, name, t, vals);
    } else {
        hsize_t d = (hsize_t)n;
        hid_t sp = H5Screate_simple(1, &d, NULL);
        attr_raw(loc, name, t, sp, vals);
        H5Sclose(sp);
    }
    H5Tclose(t);
}

static void attr_fixed(hid_t loc, const char *name, const char *v, size_t size, H5T_str_t pad) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, size);
    H5Tset_strpad(t, pad);
    char *buf = calloc(size + 1, 1);
    memcpy(buf, v, strlen(v) < size ? strlen(v) : size);
    attr_scalar(loc, name, t, buf);
    free(buf);
    H5Tclose(t);
}

static void attr_ints(hid_t loc, const char *name, const int *v, hsize_t n, int scalar) {
    hid_t sp = scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, NULL);
    hid_t a = H5Acreate2(loc, name, H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        if (n) H5Awrite(a, H5T_NATIVE_INT, v);
        H5Aclose(a);
    }
    H5Sclose(sp);
    H5Eclear2(H5E_DEFAULT);
}

/* The mutations shared by every attribute (op & 15 for op >= 128); returns 0
 * when op is one of the kind-specific ones left to the caller. */
static int attr_mutate(hid_t loc, const char *name, unsigned op, src_t *s) {
    char buf[320];
    switch (op & 15) {
    case 0: return 1; /* absent */
    case 1: {
        int v = i32(s);
        attr_ints(loc, name, &v, 1, 1);
        return 1;
    }
    case 3:
        take(s, buf, sizeof buf, 2);
        attr_vlen(loc, name, buf, 1);
        return 1;
    case 4: {
        size_t len = take(s, buf, sizeof buf, 1);
        unsigned pad = u8(s);
        attr_fixed(loc, name, buf, len + (pad >> 2) % 3, (H5T_str_t)(pad % 3));
        return 1;
    }
    case 5: {
        int32_t base = i32(s);
        long long v = (long long)((uint64_t)(int64_t)base << (u8(s) % 40));
        attr_scalar(loc, name, H5T_STD_I64LE, &v);
        return 1;
    }
    case 6: {
        uint8_t v = (uint8_t)u8(s);
        attr_scalar(loc, name, H5T_STD_U8LE, &v);
        return 1;
    }
    case 7: {
        double v = (double)i32(s) / 3.0;
        attr_scalar(loc, name, H5T_IEEE_F64LE, &v);
        return 1;
    }
    case 8: {
        hid_t sp = H5Screate(H5S_NULL);
        attr_raw(loc, name, H5T_STD_I32LE, sp, NULL);
        H5Sclose(sp);
        return 1;
    }
    case 9: {
        int v[80];
        hsize_t n = u8(s) % 4;
        if (n == 3) n = 65 + u8(s) % 10; /* more than raw_layers holds */
        for (hsize_t k = 0; k < n; k++) v[k] = (int)(int8_t)u8(s);
        attr_ints(loc, name, v, n, 0);
        return 1;
    }
    case 10: {
        hsize_t d[2] = {1, 1};
        int v = (int)(int8_t)u8(s);
        hid_t sp = H5Screate_simple(2, d, NULL);
        attr_raw(loc, name, H5T_STD_I32LE, sp, &v);
        H5Sclose(sp);
        return 1;
    }
    case 11:
        take(s, buf, sizeof buf, 1);
        attr_vlen(loc, name, buf, 2);
        return 1;
    case 12: {
        uint8_t v = (uint8_t)u8(s);
        attr_scalar(loc, name, H5T_NATIVE_B8, &v);
        return 1;
    }
    case 13: {
        hid_t t = H5Tcreate(H5T_OPAQUE, 4);
        H5Tset_tag(t, "fuzz");
        int32_t v = i32(s);
        attr_scalar(loc, name, t, &v);
        H5Tclose(t);
        return 1;
    }
    case 14: {
        float v = (float)i32(s);
        attr_scalar(loc, name, H5T_IEEE_F32LE, &v);
        return 1;
    }
    default: return 0; /* 2, 15: kind-specific */
    }
}

static void a_int(hid_t loc, const char *name, int valid, src_t *s) {
    unsigned op = u8(s);
    if (op < 128) {
        attr_ints(loc, name, &valid, 1, 1);
        return;
    }
    s->mutated = 1;
    if (attr_mutate(loc, name, op, s)) return;
    /* 2: near the valid value (consistency checks), 15: a 1-element array */
    int v = (op & 15) == 2 ? valid + (int)(int8_t)u8(s) : valid;
    attr_ints(loc, name, &v, 1, (op & 15) == 2);
}

static void a_str(hid_t loc, const char *name, const char *valid, src_t *s) {
    unsigned op = u8(s);
    if (op < 128) {
        attr_vlen(loc, name, valid, 1);
        return;
    }
    s->mutated = 1;
    if (attr_mutate(loc, name, op, s)) return;
    if ((op & 15) == 2) /* fixed length holding exactly the valid text, no NUL */
        attr_fixed(loc, name, valid, strlen(valid) ? strlen(valid) : 1, H5T_STR_NULLPAD);
    else /* the valid text with bytes appended */
    {
        char buf[640];
        size_t n = strlen(valid) < 300 ? strlen(valid) : 300;
        memcpy(buf, valid, n);
        take(s, buf + n, sizeof buf - n, 2);
        attr_vlen(loc, name, buf, 1);
    }
}

static void a_ints(hid_t loc, const char *name, const int *v, int n, src_t *s) {
    unsigned op = u8(s);
    if (op < 128) {
        attr_ints(loc, name, v, (hsize_t)n, 0);
        return;
    }
    s->mutated = 1;
    if (attr_mutate(loc, name, op, s)) return;
    int w[64];
    for (int k = 0; k < n && k < 64; k++) w[k] = v[k];
    if (n > 0) w[u8(s) % n] += (int)(int8_t)u8(s);
    attr_ints(loc, name, w, (hsize_t)n, (op & 15) == 2 && n == 1);
}

/* --------------------------------------------------------------- datasets */

typedef struct {
    haddr_t addr;
    hsize_t size;
    unsigned byte;
} corrupt_t;

static corrupt_t corrupt[MAX_CORRUPT];
static int n_corrupt;

/* One dataset; is_int: int32 (tokens, step_pos) else float32. filters: the
 * writer's chunked + shuffle + deflate + fletcher32 layout. */
static void d_write(hid_t loc, const char *name, int is_int, int rank, const hsize_t *dims_in,
                    int filters, src_t *s) {
    hsize_t dims[4];
    for (int k = 0; k < rank; k++) dims[k] = dims_in[k];
    hid_t ftype = is_int ? H5T_STD_I32LE : H5T_IEEE_F32LE;
    int scalar = 0, null = 0, group = 0, vlen = 0, bad_chunk = 0;
    unsigned op = u8(s);
    if (op >= 128 && (op & 15) < 13) {
        s->mutated = 1;
        switch (op & 15) {
        case 0: return;
        case 1: {
            int k = (int)(u8(s) % rank);
            dims[k] += 1 + u8(s) % 3;
            break;
        }
        case 2: {
            int k = (int)(u8(s) % rank);
            if (dims[k]) dims[k]--;
            break;
        }
        case 3: dims[rank++] = 1 + u8(s) % 2; break;
        case 4:
            if (rank > 1) rank--;
            else dims[rank++] = 1;
            break;
        case 5: ftype = is_int ? H5T_IEEE_F32LE : H5T_STD_I32LE; break;
        case 6: ftype = H5T_IEEE_F64LE; break;
        case 7: ftype = is_int ? H5T_STD_I16BE : H5T_IEEE_F32BE; break;
        case 8: group = 1; break;
        case 9: vlen = 1; break;
        case 10: scalar = 1; break;
        case 11: null = 1; break;
        default: bad_chunk = 1; break; /* 12 */
        }
    }
    if (group) {
        hid_t g = H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (g >= 0) H5Gclose(g);
        H5Eclear2(H5E_DEFAULT);
        return;
    }
    size_t n = 1;
    for (int k = 0; k < rank; k++) n *= (size_t)dims[k];
    if (scalar || null) n = 1;
    hid_t sp = null ? H5Screate(H5S_NULL) : scalar ? H5Screate(H5S_SCALAR)
                                                   : H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_obj_track_times(dcpl, 0);
    if ((filters || bad_chunk) && !scalar && !null && n > 0) {
        hsize_t chunk[4];
        for (int k = 0; k < rank; k++) chunk[k] = dims[k];
        H5Pset_chunk(dcpl, rank, chunk);
        H5Pset_shuffle(dcpl);
        H5Pset_deflate(dcpl, 1);
        H5Pset_fletcher32(dcpl);
    }
    hid_t t = ftype;
    if (vlen) {
        t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, H5T_VARIABLE);
    }
    hid_t ds = H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds >= 0 && !null && !vlen && n > 0) {
        double *v = malloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) v[i] = (double)(i % 7) / 7.0;
        H5Dwrite(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
        free(v);
        if (bad_chunk && n_corrupt < MAX_CORRUPT) {
            hsize_t off[4] = {0, 0, 0, 0};
            unsigned mask = 0;
            haddr_t addr = 0;
            hsize_t size = 0;
            H5Fflush(ds, H5F_SCOPE_LOCAL);
            if (H5Dget_chunk_info_by_coord(ds, off, &mask, &addr, &size) >= 0 && size > 0)
                corrupt[n_corrupt++] = (corrupt_t){addr, size, u8(s)};
        }
    }
    if (ds >= 0) H5Dclose(ds);
    if (vlen) H5Tclose(t);
    H5Pclose(dcpl);
    H5Sclose(sp);
    H5Eclear2(H5E_DEFAULT);
}

/* ------------------------------------------------------------ the program */

typedef struct {
    char id[320];
    char gname[400];
    int written;  /* its group exists */
    int complete; /* complete == 1 written */
    int n_prompt, n_gen, n_steps, n_blocks;
    int has_query, has_colsum, n_raw, raw_layer;
    char task[64], source[64];
    int chat;
} seq_plan;

typedef struct {
    ap_trace_meta m;
    int n_seq;
    int partial;
    seq_plan seq[MAX_SEQ];
} plan_t;

static hid_t group_crt_order(hid_t loc, const char *name) {
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    H5Pset_obj_track_times(gcpl, 0);
    H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    hid_t g = H5Gcreate2(loc, name, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    H5Pclose(gcpl);
    return g;
}

static void write_seq(hid_t seqs, const ap_trace_meta *m, seq_plan *q, int k, src_t *s) {
    unsigned fl = u8(s);
    q->has_query = fl & 1;
    q->has_colsum = (fl >> 1) & 1;
    q->n_raw = (fl >> 2) & 1;
    int chunked = (fl >> 7) & 1;
    q->n_prompt = 1 + (int)(u8(s) % 40);
    q->n_gen = (int)(u8(s) % 6);
    int T = q->n_prompt + q->n_gen;
    q->n_steps = (q->n_prompt < m->history ? q->n_prompt : m->history) + q->n_gen;
    if (q->n_steps < 1) q->n_steps = 1; /* history 0 and no decode: one step anyway */
    q->n_blocks = (T + m->block_size - 1) / m->block_size;
    q->raw_layer = m->n_layer - 1;
    snprintf(q->id, sizeof q->id, "s%d %s", k, k == 1 ? "a/b.c" : "x");
    if (fl & 8) {
        take(s, q->id, sizeof q->id, 2);
        s->mutated = 1;
    }
    ap_trace_group_name(q->id, q->gname, sizeof q->gname);
    if (fl & 16) {
        take(s, q->gname, sizeof q->gname, 1);
        s->mutated = 1;
    }
    snprintf(q->task, sizeof q->task, "task%d", k);
    snprintf(q->source, sizeof q->source, "seed:%d", k);
    q->chat = k & 1;
    hid_t g = group_crt_order(seqs, q->gname[0] ? q->gname : "_");
    H5Eclear2(H5E_DEFAULT);
    if (g < 0) {
        s->mutated = 1;
        return;
    }
    q->written = 1;
    a_str(g, "id", q->id, s);
    a_str(g, "task", q->task, s);
    a_str(g, "source", q->source, s);
    a_int(g, "chat", q->chat, s);
    a_int(g, "n_prompt", q->n_prompt, s);
    a_int(g, "n_gen", q->n_gen, s);
    a_int(g, "n_steps", q->n_steps, s);
    a_int(g, "n_blocks", q->n_blocks, s);
    a_int(g, "has_query", q->has_query, s);
    a_int(g, "has_colsum", q->has_colsum, s);
    a_ints(g, "raw_layers", &q->raw_layer, q->n_raw, s);
    hsize_t dt = (hsize_t)T, ds = (hsize_t)q->n_steps;
    d_write(g, "tokens", 1, 1, &dt, chunked, s);
    d_write(g, "step_pos", 1, 1, &ds, chunked, s);
    if (fl & 64) {
        s->mutated = 1;
    } else {
        hid_t ls = H5Gcreate2(g, "layers", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        const hsize_t S = ds, H = (hsize_t)m->n_head, NB = (hsize_t)q->n_blocks,
                      HD = (hsize_t)m->head_dim, HKV = (hsize_t)m->n_head_kv,
                      NP = (hsize_t)q->n_prompt;
        for (int l = 0; l < m->n_layer && ls >= 0; l++) {
            char name[16];
            snprintf(name, sizeof name, "%d", l);
            hid_t lg = H5Gcreate2(ls, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
            if (lg < 0) continue;
            hsize_t dv[3] = {S, H, NB}, dq[3] = {S, H, HD}, dk[3] = {HKV, NB, HD}, dc[2] = {H, NP},
                    dr[3] = {S, H, dt};
            d_write(lg, "block_max", 0, 3, dv, chunked, s);
            d_write(lg, "block_sum", 0, 3, dv, chunked, s);
            if (q->has_query) {
                d_write(lg, "query", 0, 3, dq, chunked, s);
                d_write(lg, "key_min", 0, 3, dk, chunked, s);
                d_write(lg, "key_max", 0, 3, dk, chunked, s);
            }
            if (q->has_colsum) d_write(lg, "prefill_colsum", 0, 2, dc, chunked, s);
            if (q->n_raw && l == q->raw_layer) d_write(lg, "raw", 0, 3, dr, chunked, s);
            H5Gclose(lg);
        }
        if (ls >= 0) H5Gclose(ls);
    }
    q->complete = !(fl & 32);
    if (!q->complete) {
        /* An unfinished group: no complete attribute or complete = 0. */
        int zero = 0;
        if (u8(s) & 1) attr_ints(g, "complete", &zero, 1, 1);
    } else {
        a_int(g, "complete", 1, s);
    }
    H5Gclose(g);
    H5Eclear2(H5E_DEFAULT);
}

/* Writes the file the program describes; returns 0 if HDF5 could not create it. */
static int write_file(const char *path, plan_t *pl, src_t *s) {
    ap_trace_meta *m = &pl->m;
    memset(pl, 0, sizeof *pl);
    unsigned g1 = u8(s), g2 = u8(s);
    m->n_layer = 1 + (int)((g1 & 3) % 3);
    m->n_head = 1 + (int)((g1 >> 2) & 3);
    static const int divs[5][3] = {{1, 1, 1}, {1, 1, 1}, {1, 2, 1}, {1, 3, 1}, {1, 2, 4}};
    m->n_head_kv = divs[m->n_head][((g1 >> 4) & 3) % 3];
    m->head_dim = 1 + (int)(g2 & 3);
    m->block_size = 1 + (int)((g2 >> 2) & 7);
    m->history = (int)(u8(s) % 6);
    unsigned ns = u8(s);
    pl->n_seq = (int)((ns + 1) % 4);
    int truncate_file = ns & 128;
    unsigned ff = u8(s);
    pl->partial = ff & 1;
    snprintf(m->model_name, sizeof m->model_name, "tiny model");
    snprintf(m->model_sha256, sizeof m->model_sha256, "%064d", 7);
    snprintf(m->attnpred_version, sizeof m->attnpred_version, "fuzz");
    /* format_version 2: an architecture and each layer's window (0 = full). */
    snprintf(m->arch, sizeof m->arch, "tiny");
    unsigned wb = u8(s);
    for (int l = 0; l < m->n_layer; l++) m->layer_window[l] = (wb >> l) & 1 ? 1 + (int)(wb >> 4) : 0;

    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_obj_track_times(fcpl, 0);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
    H5Pclose(fcpl);
    if (f < 0) return 0;
    a_str(f, "format", AP_TRACE_FORMAT, s);
    a_int(f, "format_version", AP_TRACE_FORMAT_VERSION, s);
    a_int(f, "n_layer", m->n_layer, s);
    a_int(f, "n_head", m->n_head, s);
    a_int(f, "n_head_kv", m->n_head_kv, s);
    a_int(f, "head_dim", m->head_dim, s);
    a_int(f, "block_size", m->block_size, s);
    a_int(f, "history", m->history, s);
    a_str(f, "model_name", m->model_name, s);
    a_str(f, "model_sha256", m->model_sha256, s);
    a_str(f, "attnpred_version", m->attnpred_version, s);
    a_str(f, "architecture", m->arch, s);
    a_ints(f, "layer_window", m->layer_window, m->n_layer, s);
    a_int(f, "complete", pl->partial ? 0 : 1, s);
    if (ff & 4) {
        s->mutated = 1; /* no /sequences */
    } else if (ff & 8) {
        s->mutated = 1; /* a dataset named sequences */
        hsize_t d = 1;
        d_write(f, "sequences", 1, 1, &d, 0, s);
    } else {
        /* ff & 2: as another tool makes it, without a creation-order index */
        hid_t seqs = ff & 2 ? H5Gcreate2(f, "sequences", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)
                            : group_crt_order(f, "sequences");
        if (seqs >= 0) {
            for (int k = 0; k < pl->n_seq; k++) write_seq(seqs, m, &pl->seq[k], k, s);
            if (ff & 16) { /* a dangling soft link */
                H5Lcreate_soft("/nowhere", seqs, "zz_soft", H5P_DEFAULT, H5P_DEFAULT);
                s->mutated = 1;
            }
            if (ff & 32) { /* a dataset among the sequences */
                hsize_t d = 2;
                d_write(seqs, "zz_data", 1, 1, &d, 0, s);
                s->mutated = 1;
            }
            if ((ff & 64) && pl->n_seq > 0 && pl->seq[0].written) { /* same group twice */
                H5Lcreate_hard(seqs, pl->seq[0].gname, seqs, "zz_hard", H5P_DEFAULT, H5P_DEFAULT);
                s->mutated = 1;
            }
            if (ff & 128) { /* an external link to a missing file */
                H5Lcreate_external("/nonexistent/fuzz.h5", "/", seqs, "zz_ext", H5P_DEFAULT,
                                   H5P_DEFAULT);
                s->mutated = 1;
            }
            H5Gclose(seqs);
        }
    }
    H5Eclear2(H5E_DEFAULT);
    H5Fclose(f);
    /* Corrupt the chunks asked for: fletcher32 must turn them into read errors. */
    if (n_corrupt) {
        FILE *fp = fopen(path, "r+b");
        for (int i = 0; fp && i < n_corrupt; i++) {
            long at = (long)(corrupt[i].addr + corrupt[i].byte % corrupt[i].size);
            int c;
            if (fseek(fp, at, SEEK_SET) == 0 && (c = fgetc(fp)) != EOF &&
                fseek(fp, at, SEEK_SET) == 0)
                fputc(c ^ 0x5A, fp);
        }
        if (fp) fclose(fp);
    }
    if (truncate_file) {
        /* A copy cut short (a killed transfer): HDF5 must refuse it at open. */
        FILE *fp = fopen(path, "r+b");
        if (fp && fseek(fp, 0, SEEK_END) == 0) {
            long n = ftell(fp);
            off_t keep = n > 0 ? (off_t)((unsigned long)n * u8(s) / 256) : 0;
            if (verbose) fprintf(stderr, "fuzz_trace: cut %ld bytes to %ld\n", n, (long)keep);
            if (ftruncate(fileno(fp), keep) != 0) die("cannot truncate", path);
        }
        if (fp) fclose(fp);
        s->mutated = 1;
    }
    if (pl->partial) {
        /* The journal: free text from the input (a clean one ends with "+"). */
        char j[1100];
        size_t n = take(s, j, sizeof j, 4);
        FILE *fp = fopen(path_idx, "wb");
        if (fp) {
            fwrite(j, 1, n, fp);
            fclose(fp);
        }
        s->mutated = 1;
    }
    return 1;
}

/* ---------------------------------------------------------------- reading */

static const char *cur_path;

static void check_msg(const ap_err *err) {
    size_t n = strlen(cur_path);
    if (strncmp(err->msg, cur_path, n) != 0 || err->msg[n] != ':')
        die("message does not name the file", err->msg);
}

/* No HDF5 id may outlive the trace handle (the fuzzer closes all of its own).
 * The counts of the ids the library registers itself (predefined types,
 * default property lists) are taken after the first input. */
static void check_ids(void) {
    if (H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) != 0) die("HDF5 objects left open", NULL);
    for (int k = 0; k < 5; k++) {
        hsize_t n = 0;
        if (H5Inmembers(id_types[k], &n) < 0) continue;
        if (base_ids[k] < 0)
            base_ids[k] = (ssize_t)n;
        else if ((ssize_t)n > base_ids[k])
            die("HDF5 ids leaked", NULL);
    }
}

static int is_terminated(const char *s, size_t n) { return memchr(s, 0, n) != NULL; }

static int read_failed; /* some read of a listed dataset failed */

/* Reads name into a buffer of exactly n elements; after a success, into one
 * of n - 1 (must fail with AP_ERR_RANGE). A dataset the info promises may
 * still be missing or malformed: that is an error, not a crash. */
static void read_layer(const ap_trace *t, int i, int layer, const char *name, size_t n) {
    if (n == 0 || n > MAX_ELEMS) return;
    float *buf = malloc(n * sizeof(float));
    if (!buf) return;
    ap_err err = {0};
    ap_status st = ap_trace_read_layer(t, i, layer, name, buf, n, &err);
    if (st != AP_OK) {
        check_msg(&err);
        read_failed = 1;
        if (verbose) fprintf(stderr, "fuzz_trace: %s\n", err.msg);
    }
    if (st == AP_OK && n > 1) {
        float *small = malloc((n - 1) * sizeof(float));
        if (small && ap_trace_read_layer(t, i, layer, name, small, n - 1, &err) != AP_ERR_RANGE)
            die("a short buffer was accepted", err.msg);
        free(small);
    }
    free(buf);
}

static void read_i32(const ap_trace *t, int i, const char *name, size_t n) {
    if (n == 0 || n > MAX_ELEMS) return;
    int32_t *buf = malloc(n * sizeof(int32_t));
    if (!buf) return;
    ap_err err = {0};
    ap_status st = ap_trace_read_i32(t, i, name, buf, n, &err);
    if (st != AP_OK) {
        check_msg(&err);
        read_failed = 1;
        if (verbose) fprintf(stderr, "fuzz_trace: %s\n", err.msg);
    }
    if (st == AP_OK && n > 1) {
        int32_t *small = malloc((n - 1) * sizeof(int32_t));
        if (small && ap_trace_read_i32(t, i, name, small, n - 1, &err) != AP_ERR_RANGE)
            die("a short buffer was accepted", err.msg);
        free(small);
    }
    free(buf);
}

/* a * b, or MAX_ELEMS + 1 when it exceeds MAX_ELEMS. */
static size_t mul(size_t a, size_t b) {
    return a <= MAX_ELEMS && b <= MAX_ELEMS && a * b <= MAX_ELEMS ? a * b : MAX_ELEMS + 1;
}

static void walk_seq(const ap_trace *t, const ap_trace_meta *m, int i, ap_trace_seq_info *in) {
    ap_err err = {0};
    if (ap_trace_seq_get_info(t, i, in, &err) != AP_OK) die("seq_get_info", err.msg);
    if (!is_terminated(in->id, sizeof in->id) || !is_terminated(in->task, sizeof in->task) ||
        !is_terminated(in->source, sizeof in->source))
        die("unterminated string in a sequence info", NULL);
    long T = (long)in->n_prompt + in->n_gen;
    if (in->n_prompt < 1 || in->n_gen < 0 || in->n_steps < 1 ||
        in->n_blocks != (T + m->block_size - 1) / m->block_size)
        die("inconsistent sequence sizes accepted", NULL);
    if (in->n_raw_layers < 0 || in->n_raw_layers > 64) die("raw layer count out of range", NULL);
    for (int k = 0; k < in->n_raw_layers; k++)
        if (in->raw_layers[k] < 0 || in->raw_layers[k] >= m->n_layer)
            die("raw layer out of range accepted", NULL);
    int f = ap_trace_find(t, in->id);
    if (f < 0 || f > i) die("ap_trace_find does not find an id", in->id);

    const size_t S = (size_t)in->n_steps, H = (size_t)m->n_head, NB = (size_t)in->n_blocks,
                 HD = (size_t)m->head_dim, HKV = (size_t)m->n_head_kv, NP = (size_t)in->n_prompt;
    read_i32(t, i, "tokens", (size_t)T);
    read_i32(t, i, "step_pos", S);
    int32_t one;
    if (ap_trace_read_i32(t, i, "nope", &one, 1, &err) == AP_OK) die("unknown i32 name", NULL);
    for (int l = 0; l < m->n_layer && l < 4; l++) {
        size_t sh = mul(S, H);
        read_layer(t, i, l, "block_max", mul(sh, NB));
        read_layer(t, i, l, "block_sum", mul(sh, NB));
        if (in->has_query) {
            read_layer(t, i, l, "query", mul(sh, HD));
            read_layer(t, i, l, "key_min", mul(mul(HKV, NB), HD));
            read_layer(t, i, l, "key_max", mul(mul(HKV, NB), HD));
        }
        if (in->has_colsum) read_layer(t, i, l, "prefill_colsum", mul(H, NP));
        for (int r = 0; r < in->n_raw_layers; r++)
            if (in->raw_layers[r] == l) read_layer(t, i, l, "raw", mul(sh, (size_t)T));
    }
    float x;
    if (ap_trace_read_layer(t, i, m->n_layer, "block_max", &x, 1, &err) != AP_ERR_RANGE)
        die("layer n_layer accepted", err.msg);
    if (ap_trace_read_layer(t, i, 0, "nope", &x, 1, &err) == AP_OK) die("unknown layer name", NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    src_t s = {data, size, 0};
    plan_t pl;
    n_corrupt = 0;
    read_failed = 0;
    /* The file flags byte (the 5th) decides the name before the file is written. */
    cur_path = size > 4 && (data[4] & 1) ? path_partial : path_h5;
    if (!write_file(cur_path, &pl, &s)) die("cannot create the temporary file", cur_path);
    if (n_corrupt) s.mutated = 1;
    for (int k = 0; verbose && k < pl.n_seq; k++)
        fprintf(stderr, "fuzz_trace: wrote sequence '%s' as %s%s: n_prompt %d, n_gen %d, n_steps %d\n",
                pl.seq[k].id, pl.seq[k].gname, pl.seq[k].complete ? "" : " (unfinished)",
                pl.seq[k].n_prompt, pl.seq[k].n_gen, pl.seq[k].n_steps);

    ap_trace *t = NULL;
    ap_err err = {0};
    ap_status st = ap_trace_open(cur_path, &t, &err);
    if (verbose)
        fprintf(stderr, "fuzz_trace: %s%s input: %s (%d sequences)\n",
                s.mutated ? "mutated" : "valid", pl.partial ? " partial" : "",
                st ? err.msg : "opened", st ? 0 : ap_trace_n_seq(t));
    if (st != AP_OK) {
        if (t) die("a failed open returned a handle", NULL);
        check_msg(&err);
        if (!s.mutated) die("a valid trace was refused", err.msg);
    } else {
        const ap_trace_meta *m = ap_trace_get_meta(t);
        if (m->n_layer < 1 || m->n_head < 1 || m->n_head_kv < 1 || m->head_dim < 1 ||
            m->block_size < 1 || m->history < 0 || m->n_head % m->n_head_kv != 0)
            die("invalid meta accepted", NULL);
        if (!is_terminated(m->model_name, sizeof m->model_name) ||
            !is_terminated(m->model_sha256, sizeof m->model_sha256) ||
            !is_terminated(m->attnpred_version, sizeof m->attnpred_version) ||
            !is_terminated(m->arch, sizeof m->arch))
            die("unterminated meta string", NULL);
        for (int l = 0; l < m->n_layer; l++)
            if (m->layer_window[l] < 0) die("negative layer window accepted", NULL);
        int n = ap_trace_n_seq(t);
        if (n < 0 || n > MAX_SEQ + 4) die("sequence count out of range", NULL);
        int complete = ap_trace_is_complete(t);
        ap_trace_seq_info in[MAX_SEQ + 4];
        for (int i = 0; i < n; i++) walk_seq(t, m, i, &in[i]);
        ap_trace_seq_info x;
        if (ap_trace_seq_get_info(t, n, &x, &err) != AP_ERR_RANGE) die("index n accepted", NULL);
        if (ap_trace_seq_get_info(t, -1, &x, &err) != AP_ERR_RANGE) die("index -1 accepted", NULL);
        if (!s.mutated) {
            /* Everything written must come back as written. */
            if (memcmp(m, &pl.m, sizeof *m) != 0) die("meta differs from what was written", NULL);
            if (complete != !pl.partial) die("complete flag differs", NULL);
            /* Unfinished groups are not part of the trace. */
            const seq_plan *done[MAX_SEQ];
            int n_done = 0;
            for (int k = 0; k < pl.n_seq; k++)
                if (pl.seq[k].complete) done[n_done++] = &pl.seq[k];
            if (n != n_done || read_failed) die("a valid sequence was dropped or unreadable", NULL);
            for (int i = 0; i < n; i++) {
                const seq_plan *q = done[i];
                if (strcmp(in[i].id, q->id) || strcmp(in[i].task, q->task) ||
                    strcmp(in[i].source, q->source) || in[i].chat != q->chat ||
                    in[i].n_prompt != q->n_prompt || in[i].n_gen != q->n_gen ||
                    in[i].n_steps != q->n_steps || in[i].n_blocks != q->n_blocks ||
                    in[i].has_query != q->has_query || in[i].has_colsum != q->has_colsum ||
                    in[i].n_raw_layers != q->n_raw)
                    die("sequence info differs from what was written", in[i].id);
            }
        }
        ap_trace_close(t);
    }
    if (verbose && st == AP_OK)
        fprintf(stderr, "fuzz_trace: dataset reads %s\n", read_failed ? "failed" : "ok");
    check_ids();
    unlink(cur_path);
    unlink(path_idx);
    return 0;
}
