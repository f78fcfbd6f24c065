/* The capture job: run a GGUF model over a prompt set and write its attention
 * to an attnpred trace (capture/trace.h). Used by `attnpred capture`.
 *
 * All prompts of the shard are tokenized and checked against the context
 * before the first forward pass, so a bad prompt fails the job before any
 * output exists. Finished sequences survive a kill (see trace.h, --resume). */
#ifndef AP_CAPTURE_H
#define AP_CAPTURE_H

#include <stdio.h>

#include "capture/model.h"
#include "capture/model_cuda.h"
#include "capture/trace.h"
#include "common/status.h"

#define AP_CAPTURE_MAX_RAW 64

/* Engines: the CPU one (capture/model.h) or the CUDA one
 * (capture/model_cuda.h), which pools the block views on the device and
 * computes whole rows only for the raw layers. Same trace, same schema;
 * values agree within AP_TOL_CPU_GPU_* (common/tolerance.h). */
enum { AP_CAPTURE_CPU = 0, AP_CAPTURE_CUDA = 1 };

typedef struct {
    const char *model_path;
    const char *prompts_path;
    const char *out_path;
    int n_gen;            /* tokens to decode per prompt (default 64) */
    int history;          /* prefill rows recorded (default 64) */
    int block_size;       /* default 16 */
    int n_raw_layers;     /* -1 = all layers */
    int raw_layers[AP_CAPTURE_MAX_RAW];
    int shard_index;      /* 0-based */
    int shard_count;      /* 1 = no sharding */
    int resume;
    int force;
    int threads;
    int stop_at_eos;      /* stop decoding at the end-of-sequence token */
    int with_quest;       /* record query vectors and key min/max */
    int with_colsum;      /* record prefill column sums (H2O) */
    int device;           /* AP_CAPTURE_CPU (default) or AP_CAPTURE_CUDA */
    FILE *log;            /* progress and per-sequence lines; NULL = silent */
    int progress;         /* draw a progress line with ETA on log */
} ap_capture_opts;

typedef struct {
    int n_sequences;      /* written by this run */
    int n_skipped;        /* already complete (resume) */
    long prompt_tokens;
    long gen_tokens;
    double prefill_seconds;
    double decode_seconds;
    double write_seconds;
    double total_seconds;
    long long out_bytes;
} ap_capture_stats;

/* Per-sequence timings of ap_capture_sequence. */
typedef struct {
    int n_prompt;
    int n_gen;
    double prefill_seconds;
    double decode_seconds;
    double write_seconds;
} ap_capture_seq_stats;

void ap_capture_opts_default(ap_capture_opts *o);

/* Capture one tokenized prompt into an open writer: prefill, greedy decode of
 * o->n_gen tokens (stopping at eos_id when o->stop_at_eos and eos_id >= 0),
 * pooling, write. raw_layers are validated layer ids. The building block of
 * ap_capture_run, public for benchmarks and embedding. */
ap_status ap_capture_sequence(ap_ctx *ctx, const ap_hparams *hp, const ap_capture_opts *o,
                              const int *raw_layers,
                              int n_raw, const char *id, const char *task, const char *source,
                              int chat, const int32_t *prompt, int n_prompt, int32_t eos_id,
                              ap_trace_writer *w, ap_capture_seq_stats *stats, ap_err *err);
/* The same on the CUDA engine (its KV cache must hold n_prompt + n_gen). */
ap_status ap_capture_sequence_cuda(ap_cuda_model *cm, const ap_hparams *hp,
                                   const ap_capture_opts *o, const int *raw_layers, int n_raw,
                                   const char *id, const char *task, const char *source, int chat,
                                   const int32_t *prompt, int n_prompt, int32_t eos_id,
                                   ap_trace_writer *w, ap_capture_seq_stats *stats, ap_err *err);
ap_status ap_capture_run(const ap_capture_opts *o, ap_capture_stats *stats, ap_err *err);

/* The trace meta of a model's captures: shape, block size, history,
 * architecture and each layer's attention window (hp->swa_window on the
 * sliding-window layers, 0 on the full ones). model_name, model_sha256 and
 * attnpred_version are left to the caller (zeroed). AP_ERR_UNSUPPORTED when
 * the model has more layers than a trace may hold (AP_TRACE_MAX_LAYERS). */
ap_status ap_capture_trace_meta(const ap_hparams *hp, int block_size, int history,
                                ap_trace_meta *meta, ap_err *err);

#endif
