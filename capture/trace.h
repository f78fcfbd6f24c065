/* attnpred trace files (HDF5): writer, reader, merge.
 * The schema is documented field by field in docs/trace-format.md; the names
 * here are the public contract. HDF5's own error printing is switched off and
 * its failures are translated into ap_err messages naming the file.
 *
 * Atomicity: the writer writes "<path>.partial"; each sequence group gets the
 * attribute complete=1 only after all its datasets are written and flushed.
 * ap_trace_writer_close(commit=1) marks the file complete and renames it to
 * <path>. A killed capture leaves only the .partial file (and its journal
 * <path>.partial.idx, see docs/trace-format.md), which --resume reopens
 * (dropping any incomplete group, repairing the sequence index if the kill
 * interrupted an update of it). */
#ifndef AP_TRACE_H
#define AP_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define AP_TRACE_FORMAT "attnpred-trace"
#define AP_TRACE_FORMAT_VERSION 2
/* The oldest format_version the reader still reads (docs/trace-format.md,
 * "Version history"). */
#define AP_TRACE_FORMAT_VERSION_MIN 1
/* Most layers a trace may have (the size of ap_trace_meta.layer_window). */
#define AP_TRACE_MAX_LAYERS 256

typedef struct {
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim;
    int block_size;
    int history;
    char model_name[128];
    char model_sha256[65];
    char attnpred_version[32];
    /* format_version 2 (issue 13). A meta zeroed by memset is a model whose
     * layers are all full attention, as every format_version 1 trace is. */
    char arch[32];      /* general.architecture ("llama", "gemma3"); "llama" for a
                           format_version 1 file (attnpred 0.1.0 ran llama only) */
    /* [n_layer] keys a layer attends: 0 = full attention (every earlier key),
     * w > 0 = sliding window of the last w keys. Entries past n_layer are 0. */
    int layer_window[AP_TRACE_MAX_LAYERS];
} ap_trace_meta;

/* Consumers select KV blocks only in full-attention layers: a sliding-window
 * layer's cache is already bounded by its window. */
int ap_trace_layer_is_full(const ap_trace_meta *m, int layer); /* 0 outside [0, n_layer) */
int ap_trace_n_full_layers(const ap_trace_meta *m);
/* The window the sliding-window layers share; 0 when there are none, -1 when
 * they differ (reports then list layer_window). */
int ap_trace_sliding_window(const ap_trace_meta *m);

/* One captured sequence, as handed to the writer (borrowed pointers).
 * S = n_steps, NB = n_blocks = ceil((n_prompt + n_gen) / block_size),
 * T = n_prompt + n_gen. Arrays are row-major in the order of the brackets. */
typedef struct {
    const char *id;
    const char *task;        /* may be NULL */
    const char *source;      /* where the prompt text came from; may be NULL */
    int chat;                /* prompt was wrapped in the chat format */
    int n_prompt;
    int n_gen;
    const int32_t *tokens;   /* [T] */
    int n_steps;
    const int32_t *step_pos; /* [S] query position of each recorded step */
    int n_blocks;
    const float *block_max;  /* [n_layer][S][n_head][NB] */
    const float *block_sum;  /* [n_layer][S][n_head][NB] */
    const float *query;      /* [n_layer][S][n_head][head_dim] post-RoPE, may be NULL */
    const float *key_min;    /* [n_layer][n_head_kv][NB][head_dim] post-RoPE, may be NULL */
    const float *key_max;    /* same */
    const float *prefill_colsum; /* [n_layer][n_head][n_prompt], may be NULL */
    int n_raw_layers;
    const int *raw_layers;   /* [n_raw_layers] layer ids */
    const float *raw;        /* [n_raw_layers][S][n_head][T] */
} ap_trace_seq;

typedef struct ap_trace_writer ap_trace_writer;

enum { AP_TRACE_FORCE = 1, AP_TRACE_RESUME = 2 };

/* Without FORCE an existing <path> is AP_ERR_EXISTS. With RESUME an existing
 * <path>.partial of the same meta is reopened; a mismatch is AP_ERR_FORMAT. */
ap_status ap_trace_writer_open(const char *path, const ap_trace_meta *meta, int flags,
                               ap_trace_writer **out, ap_err *err);
int ap_trace_writer_has(const ap_trace_writer *w, const char *id); /* complete group exists */
int ap_trace_writer_count(const ap_trace_writer *w);
ap_status ap_trace_writer_add(ap_trace_writer *w, const ap_trace_seq *seq, ap_err *err);
/* commit=1: finalize and rename to <path>. commit=0: keep .partial.
 * Closes the file but does not free w: call ap_trace_writer_free afterwards. */
ap_status ap_trace_writer_close(ap_trace_writer *w, int commit, ap_err *err);
void ap_trace_writer_free(ap_trace_writer *w); /* closes without commit; NULL ok */

/* ---- reader ---- */
typedef struct ap_trace ap_trace;

typedef struct {
    char id[256];
    char task[64];
    int n_prompt;
    int n_gen;
    int n_steps;
    int n_blocks;
    int has_query;           /* query + key_min/key_max present */
    int has_colsum;
    int n_raw_layers;
    int raw_layers[64];
    char source[256];        /* "" if absent */
    int chat;
} ap_trace_seq_info;

/* Reads format_version 1 and 2 (1 as arch "llama", every layer full
 * attention); refuses another format or version, naming the versions it reads. */
ap_status ap_trace_open(const char *path, ap_trace **out, ap_err *err);
void ap_trace_close(ap_trace *t);
const ap_trace_meta *ap_trace_get_meta(const ap_trace *t);
int ap_trace_n_seq(const ap_trace *t);
/* 1 if the root attribute complete=1 is set (a committed or merged trace); a
 * .partial file opens too and lists only its finished sequences. */
int ap_trace_is_complete(const ap_trace *t);
/* The file's format_version (1 or 2; the meta is the same either way). */
int ap_trace_format_version(const ap_trace *t);
/* Index of the sequence with this id, or -1. */
int ap_trace_find(const ap_trace *t, const char *id);
/* The HDF5 group name of sequence `id` (every byte outside [A-Za-z0-9_-] as
 * %XX), truncated to fit n bytes; for tools that write traces themselves. */
void ap_trace_group_name(const char *id, char *out, size_t n);
ap_status ap_trace_seq_get_info(const ap_trace *t, int i, ap_trace_seq_info *info, ap_err *err);
/* name: "tokens" (int32 [T]), "step_pos" (int32 [S]). */
ap_status ap_trace_read_i32(const ap_trace *t, int i, const char *name, int32_t *buf,
                            size_t n, ap_err *err);
/* name: "block_max" | "block_sum" ([S][n_head][NB]), "query" ([S][n_head][hd]),
 * "key_min" | "key_max" ([n_head_kv][NB][hd]), "prefill_colsum" ([n_head][n_prompt]),
 * "raw" ([S][n_head][T], layer must be a raw layer). n = buffer capacity in floats. */
ap_status ap_trace_read_layer(const ap_trace *t, int i, int layer, const char *name, float *buf,
                              size_t n, ap_err *err);

/* Merge complete trace files of identical meta into one (copying groups);
 * duplicate sequence ids are an error. Output written atomically. */
ap_status ap_trace_merge(const char *const *inputs, int n_inputs, const char *out_path,
                         int force, ap_err *err);

#endif
