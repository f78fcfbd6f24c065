/* This machine's memory bandwidth and AVX2 FMA peak, measured in the
 * benchmark's own process so its numbers can be read as fractions of them
 * (bench-engine, bench-live). Streaming read / copy / triad over three
 * 512 MiB arrays (beyond any cache) and twelve independent FMA chains per
 * thread, each best of three, on 1 thread and on nt threads. Needs x86-64
 * with AVX2 and FMA; elsewhere it measures nothing. ~1.6 GB of memory for
 * a few seconds. */
#ifndef AP_BENCH_MACHINE_LIMITS_H
#define AP_BENCH_MACHINE_LIMITS_H

typedef struct {
    double read1, read, copy, triad; /* GB/s: 1 thread read, then nt threads */
    double fma1, fma;                /* GFLOP/s */
} ap_machine_limits;

/* 1 when measured, 0 when this CPU or build cannot (L zeroed). */
int ap_machine_limits_measure(int nt, ap_machine_limits *L);

#endif
