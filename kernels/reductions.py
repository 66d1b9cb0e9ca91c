"""Deterministic reductions: the sum of squares over fixed chunks, each chunk accumulated in
order in float64, then the chunk sums in order. Chunks are the unit of parallel work, so the
result does not depend on the thread count, and ``fastopt.scaling.grad_norm_reference`` (the
same order, with ``np.cumsum``) equals it bit for bit."""
import numpy as np
from numba import njit, prange

from .decorators import KERNEL_OPTIONS

_compiled = {}


def _sum_of_squares(x, chunk):
    n = x.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    partial = np.empty(n_chunks, np.float64)
    for c in prange(n_chunks):
        s = 0.0
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            v = np.float64(x[i])
            s += v * v
        partial[c] = s
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

