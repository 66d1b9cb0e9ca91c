"""Deterministic reductions: the sum of squares over fixed chunks in float64. Within a chunk,
element ``8k + j`` goes to lane ``j``; each lane is accumulated in order, the eight lanes are
combined in a fixed tree, then the chunk sums in order. Chunks are the unit of parallel work, so
the result does not depend on the thread count, and ``fastopt.scaling.grad_norm_reference``
(the same order, with ``np.cumsum`` down the lanes) equals it bit for bit."""
import numpy as np
from numba import njit, prange

from .decorators import KERNEL_OPTIONS

_compiled = {}


def _sum_of_squares(x, chunk):
    n = x.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    partial = np.empty(n_chunks, np.float64)
    for c in prange(n_chunks):
        start = c * chunk
        end = min(n, start + chunk)
        # eight accumulators: element start + 8k + j goes to lane j, each lane in order, the
        # lanes combined in a fixed tree (independent chains: ~8x the throughput of one)
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
        i = start
        while i + 8 <= end:
            v0 = np.float64(x[i])
            v1 = np.float64(x[i + 1])
            v2 = np.float64(x[i + 2])
            v3 = np.float64(x[i + 3])
            v4 = np.float64(x[i + 4])
            v5 = np.float64(x[i + 5])
            v6 = np.float64(x[i + 6])
            v7 = np.float64(x[i + 7])
            a0 += v0 * v0
            a1 += v1 * v1
            a2 += v2 * v2
            a3 += v3 * v3
            a4 += v4 * v4
            a5 += v5 * v5
            a6 += v6 * v6
            a7 += v7 * v7
            i += 8
        lanes = (a0, a1, a2, a3, a4, a5, a6, a7)
        rest = [lanes[j] for j in range(8)]
        for j in range(end - i):
            v = np.float64(x[i + j])
            rest[j] += v * v
        partial[c] = (((rest[0] + rest[1]) + (rest[2] + rest[3]))
                      + ((rest[4] + rest[5]) + (rest[6] + rest[7])))
    total = 0.0
    for c in range(n_chunks):
        total += partial[c]
    return total


def chunked_sum_of_squares(parallel):
    """The compiled reduction (serial or ``parallel=True`` twin; both give the same bits)."""
    fn = _compiled.get(parallel)
    if fn is None:
        from .decorators import bind
        twin = bind(_sum_of_squares, "_parallel" if parallel else "_serial")
        fn = _compiled[parallel] = njit(parallel=parallel, **KERNEL_OPTIONS)(twin)
    return fn

