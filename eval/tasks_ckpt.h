/* Per-sample checkpoint of ap_tasks_run (eval/tasks.h), so a long task run
 * (the full suite: hours) resumes after a kill instead of starting over.
 *
 * File: an 8-byte magic, the run's 64-hex signature (inputs and options that
 * decide the results; ap_tasks_run computes it), then one record per
 * finished sample, appended and synced when the sample is done: its id, its
 * prefill time, and every (method, budget) run with its output text, ended
 * by a marker. A record cut short by a kill (no marker) is dropped on
 * resume and the file truncated after the last whole one. Numbers are
 * stored as their bytes, so a resumed run reports exactly what the first
 * run measured.
 *
 * Ownership: the checkpoint owns its FILE; ap_tasks_ckpt_close closes it
 * (NULL is a no-op). Results read back are written into the caller's
 * ap_tasks_result (outputs malloc'd there, freed with it). */
#ifndef AP_TASKS_CKPT_H
#define AP_TASKS_CKPT_H

#include <stdint.h>

#include "common/status.h"
#include "eval/tasks.h"

typedef struct ap_tasks_ckpt ap_tasks_ckpt;

/* Open path for a run whose result r already lists its samples and methods
 * (runs allocated). resume = 0: start a new file (an old one is replaced).
 * resume = 1: an existing file must carry this signature (AP_ERR_FORMAT
 * otherwise, naming the file); each whole record whose sample id is in r
 * fills that sample's runs and prefill time and sets done[i] = 1
 * (*n_done counts them); a missing file starts a new one. */
ap_status ap_tasks_ckpt_open(const char *path, const char *signature, int resume,
                             ap_tasks_result *r, uint8_t *done, int *n_done,
                             ap_tasks_ckpt **out, ap_err *err);
/* Append sample si's record (all its runs filled) and sync it to disk. */
ap_status ap_tasks_ckpt_add(ap_tasks_ckpt *k, const ap_tasks_result *r, int si, ap_err *err);
void ap_tasks_ckpt_close(ap_tasks_ckpt *k);

#endif
