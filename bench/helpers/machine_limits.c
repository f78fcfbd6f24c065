#include "machine_limits.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BENCH_X86 1
#define AVX2_FN __attribute__((target("avx2,fma")))
#else
#define BENCH_X86 0
#endif

#define BW_FLOATS ((size_t)128 << 20) /* 512 MiB per array */


typedef enum { K_READ, K_COPY, K_TRIAD, K_FMA } kern;

typedef struct {
    kern k;
    float *a, *b, *c;
    size_t n;
    long iters;
    double sink;
    pthread_barrier_t *bar;
} limit_arg;

#if BENCH_X86
AVX2_FN static double k_read(const float *a, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 32 <= n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(a + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(a + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(a + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    return (double)t[0] + t[7];
}

AVX2_FN static void k_triad(float *a, const float *b, const float *c, size_t n) {
    const __m256 s = _mm256_set1_ps(1.5f);
    for (size_t i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(a + i, _mm256_fmadd_ps(s, _mm256_loadu_ps(c + i), _mm256_loadu_ps(b + i)));
}

/* Twelve independent FMA chains: enough to cover two ports x four cycles
 * of latency. */
AVX2_FN static double k_fma(long iters) {
    const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps(1.0f + 0.01f * (float)i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
    __m256 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
    float t[8];
    _mm256_storeu_ps(t, s);
    return t[0];
}
#endif

static void *limit_thread(void *varg) {
    limit_arg *a = varg;
    pthread_barrier_wait(a->bar);
#if BENCH_X86
    switch (a->k) {
    case K_READ: a->sink = k_read(a->a, a->n); break;
    case K_COPY: memcpy(a->a, a->b, a->n * sizeof(float)); break;
    case K_TRIAD: k_triad(a->a, a->b, a->c, a->n); break;
    case K_FMA: a->sink = k_fma(a->iters); break;
    }
#endif
    pthread_barrier_wait(a->bar);
    return NULL;
}

/* Seconds for one run of kernel k split over nt threads (best of reps). */
static double time_kernel(kern k, int nt, float *a, float *b, float *c, size_t n, long iters,
                          int reps) {
    double best = 1e30;
    limit_arg args[64];
    pthread_t th[64];
    pthread_barrier_t bar;
    for (int r = 0; r < reps; r++) {
        pthread_barrier_init(&bar, NULL, (unsigned)nt + 1);
        size_t per = n / (size_t)nt / 64 * 64;
        for (int t = 0; t < nt; t++) {
            size_t off = per * (size_t)t;
            args[t] = (limit_arg){k, a + off, b + off, c + off, per, iters, 0.0, &bar};
            pthread_create(&th[t], NULL, limit_thread, &args[t]);
        }
        pthread_barrier_wait(&bar);
        double t0 = ap_now_seconds();
        pthread_barrier_wait(&bar);
        double dt = ap_now_seconds() - t0;
        for (int t = 0; t < nt; t++) pthread_join(th[t], NULL);
        pthread_barrier_destroy(&bar);
        if (dt < best) best = dt;
    }
    return best;
}

int ap_machine_limits_measure(int nt, ap_machine_limits *L) {
    memset(L, 0, sizeof *L);
#if !BENCH_X86
    (void)nt;
    return 0;
#else
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
    const size_t n = BW_FLOATS;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *c = malloc(n * sizeof *c);
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return 0;
    }
    for (size_t i = 0; i < n; i++) a[i] = b[i] = c[i] = (float)(i & 1023); /* fault pages in */
    const double gb = (double)n * sizeof(float) / 1e9;
    L->read1 = gb / time_kernel(K_READ, 1, a, b, c, n, 0, 3);
    L->read = gb / time_kernel(K_READ, nt, a, b, c, n, 0, 3);
    L->copy = 2 * gb / time_kernel(K_COPY, nt, a, b, c, n, 0, 3);
    L->triad = 3 * gb / time_kernel(K_TRIAD, nt, a, b, c, n, 0, 3);
    const long iters = 20000000; /* 12 x 8 x 2 x 2e7 = 3.8 GFLOP per thread */
    const double fl = 12.0 * 8 * 2 * (double)iters / 1e9;
    L->fma1 = fl / time_kernel(K_FMA, 1, a, b, c, n, iters, 3);
    L->fma = nt * fl / time_kernel(K_FMA, nt, a, b, c, (size_t)nt * 64, iters, 3);
    free(a);
    free(b);
    free(c);
    return 1;
#endif
}

