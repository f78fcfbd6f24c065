/* A parallel-for lent by code that owns threads to code it calls back
 * between its own parallel phases: the CPU engine lends its decode pool to
 * a KV policy's select (capture/model.h, ap_kv_step.par), which would
 * otherwise run on one thread while the pool's other threads wait for the
 * next matrix product.
 *
 * Work split this way must give the same result whatever the number of
 * threads: units write disjoint outputs and never depend on each other's
 * order. Nothing is owned. */
#ifndef AP_PAR_H
#define AP_PAR_H

typedef void (*ap_par_fn)(void *arg, int i);

typedef struct {
    /* Runs fn(arg, i) for every i in [0, n) on the lender's threads, the
     * calling thread included, and returns when all are done. fn must not
     * call back into the lender. */
    void (*run)(void *ctx, ap_par_fn fn, void *arg, int n);
    void *ctx;
} ap_par;

/* fn over [0, n) on p's threads; serially, in order, when p is NULL. */
static inline void ap_par_for(const ap_par *p, ap_par_fn fn, void *arg, int n) {
    if (p && p->run && n > 1) {
        p->run(p->ctx, fn, arg, n);
        return;
    }
    for (int i = 0; i < n; i++) fn(arg, i);
}

#endif
