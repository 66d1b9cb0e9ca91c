/* CPU probe, outside fastopt: what does one more read of the gradient cost a float32 Adam
 * step at 1e7 elements on this machine, written in C with OpenMP and AVX-512 intrinsics
 * (no Numba, no Python)? The question behind issue 11's "skip_nonfinite costs <= 1.15x a
 * plain step": is fastopt's ratio (a finiteness pass over the gradient, then the update) a
 * property of the machine or of fastopt's code?
 *
 * Times, interleaved in one process (40 rounds; medians of per-round ratios against the
 * plain step):
 *   plain        the update (p, m, v read and written, g read), compiler-vectorized;
 *   check+plain  an OpenMP finiteness pass over g, then the update (skip_nonfinite's shape);
 *   nt           the update with non-temporal (streaming) stores of p, m, v (AVX-512);
 *   check+nt     the finiteness pass, then the non-temporal update.
 * The arithmetic is Adam's, not bit for bit fastopt's (this probes traffic, not formulas).
 *
 *   gcc -O3 -march=native -fno-math-errno -fopenmp bench/cpu_probes/skip_floor.c \
 *       -o /tmp/skip_floor -lm && OMP_NUM_THREADS=2 /tmp/skip_floor
 * (needs a compiler and a CPU with AVX-512F; from the repository root.)
 */
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <omp.h>

#define N 10000000L
#define ROUNDS 40

static float *p, *g, *m, *v;
static const float b1 = 0.9f, b2 = 0.999f, lr = 1e-3f, eps = 1e-8f, c1 = 0.1f, c2 = 0.001f;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static inline void one(long i) {
    float gi = g[i];
    float mi = b1 * m[i] + (1 - b1) * gi;
    float vi = b2 * v[i] + (1 - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= lr * (mi / c1) / (sqrtf(vi / c2) + eps);
}

static void update_plain(void) {
#pragma omp parallel for schedule(static)
    for (long i = 0; i < N; i++)
        one(i);
}

static void update_nt(void) {
#pragma omp parallel
    {
        long t = omp_get_thread_num(), T = omp_get_num_threads();
        long per = (N / T) / 16 * 16, lo = t * per, hi = t == T - 1 ? N : lo + per, i = lo;
        const __m512 B1 = _mm512_set1_ps(b1), B1c = _mm512_set1_ps(1 - b1);
        const __m512 B2 = _mm512_set1_ps(b2), B2c = _mm512_set1_ps(1 - b2);
        const __m512 LR = _mm512_set1_ps(lr), C1 = _mm512_set1_ps(c1);
        const __m512 C2 = _mm512_set1_ps(c2), E = _mm512_set1_ps(eps);
        for (; i + 16 <= hi; i += 16) {     /* 64-byte aligned: lo is a multiple of 16 */
            __m512 gi = _mm512_load_ps(g + i);
            __m512 mi = _mm512_add_ps(_mm512_mul_ps(B1, _mm512_load_ps(m + i)),
                                      _mm512_mul_ps(B1c, gi));
            __m512 vi = _mm512_add_ps(_mm512_mul_ps(B2, _mm512_load_ps(v + i)),
                                      _mm512_mul_ps(_mm512_mul_ps(B2c, gi), gi));
            _mm512_stream_ps(m + i, mi);
            _mm512_stream_ps(v + i, vi);
            __m512 u = _mm512_div_ps(_mm512_div_ps(mi, C1),
                                     _mm512_add_ps(_mm512_sqrt_ps(_mm512_div_ps(vi, C2)), E));
            _mm512_stream_ps(p + i, _mm512_sub_ps(_mm512_load_ps(p + i), _mm512_mul_ps(LR, u)));
        }
        for (; i < hi; i++)
            one(i);
    }
    _mm_sfence();
}

static int any_nonfinite(void) {
    int bad = 0;
#pragma omp parallel for reduction(| : bad) schedule(static)
    for (long i = 0; i < N; i++)
        bad |= !isfinite(g[i]);
    return bad;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *x) {
    qsort(x, ROUNDS, sizeof *x, cmp);
    return x[ROUNDS / 2];
}

int main(void) {
    p = aligned_alloc(64, N * 4);
    g = aligned_alloc(64, N * 4);
    m = aligned_alloc(64, N * 4);
    v = aligned_alloc(64, N * 4);
    for (long i = 0; i < N; i++) {
        p[i] = 1.0f;
        g[i] = (i % 7) * 1e-3f;
        m[i] = v[i] = 0.0f;
    }
    static double t[4][ROUNDS], r[ROUNDS];
    for (int k = 0; k < ROUNDS; k++) {
        double a = now();
        update_plain();
        t[0][k] = now() - a;
        a = now();
        if (!any_nonfinite())
            update_plain();
        t[1][k] = now() - a;
        a = now();
        update_nt();
        t[2][k] = now() - a;
        a = now();
        if (!any_nonfinite())
            update_nt();
        t[3][k] = now() - a;
    }
    const char *name[4] = {"plain", "check+plain", "nt", "check+nt"};
    printf("n=%ld, %d threads, %d interleaved rounds\n", N, omp_get_max_threads(), ROUNDS);
    for (int c = 1; c < 4; c++) {
        for (int k = 0; k < ROUNDS; k++)
            r[k] = t[c][k] / t[0][k];
        printf("%-12s median per-round ratio to plain %.3f\n", name[c], median(r));
    }
    for (int c = 0; c < 4; c++)
        printf("%-12s median %.3f ms\n", name[c], median(t[c]) * 1e3);
    return 0;
}
