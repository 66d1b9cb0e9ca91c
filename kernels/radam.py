"""RAdam: per-element math, kernel body and kernel record (see ``kernels.record``).

Written once, compiled for the CPU and for CUDA; the NumPy reference (``fastopt.reference``)
is written separately from the formulas. The rectified / un-rectified branch depends on the
step only: the host chooses it through the scalars (``rect = 1, c3 = eps`` rectified,
``rect = 0, c3 = 1`` not; a loop-invariant test that LLVM hoists out of the loop), so one
compiled kernel serves both.
"""
import math

from .record import KernelRecord, elem, loop, unpack  # noqa: F401  (bound per target)


def radam_elem(p, g, m, v, c1, rect, c3, omb1, beta2, omb2, wd, decay, maximize, l2,
               decoupled):
    """One RAdam element. Returns ``(p, m, v)``: ``p - (c1 * m) / (sqrt(v) + c3)`` when
    ``rect > 0``, else ``p - (c1 * m) / c3`` (``c3 = 1``: exactly ``p - c1 * m``)."""
    if maximize:
        g = -g
    if decoupled:
        p = p * decay
    elif l2:
        g = g + wd * p
    m = m + omb1 * (g - m)
    v = beta2 * v + omb2 * (g * g)
    if rect > 0:
        p = p - (c1 * m) / (math.sqrt(v) + c3)
    else:
        p = p - (c1 * m) / c3
    return p, m, v


def radam_body(maximize, l2, decoupled):
    def radam(p, g, m, v, s):
        sc = unpack(s)
        for i in loop(p.shape[0]):
            pn, mn, vn = elem(p[i], g[i], m[i], v[i], sc, maximize, l2, decoupled)
            p[i] = pn
            m[i] = mn
            v[i] = vn
    return radam


RECORD = KernelRecord(name="radam", elem=radam_elem, body=radam_body,
                      arrays=("param", "grad", "exp_avg", "exp_avg_sq"),
                      nonnegative=("exp_avg_sq",),
                      scalars=("c1", "rect", "c3", "omb1", "beta2", "omb2", "wd", "decay"))
