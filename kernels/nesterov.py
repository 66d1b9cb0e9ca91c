"""Nesterov momentum in the textbook's form (Bengio et al. 2013): per-element math, kernel body
and kernel record (see ``kernels.record``).

Written once, compiled for the CPU and for CUDA; the NumPy reference (``fastopt.reference``)
is written separately from the formulas. Order of operations: the textbook's ``Nesterov``.
"""
from .record import KernelRecord, elem, loop, unpack  # noqa: F401  (bound per target)


def nesterov_elem(p, g, v, lr, mom, mom2, c):
    """One element. Returns ``(p, velocity)``; ``mom2 = momentum**2``,
    ``c = (1 + momentum) * lr``."""
    v = v * mom
    v = v - lr * g
    p = p + mom2 * v
    p = p - c * g
    return p, v


def nesterov_body():
    def nesterov(p, g, v, s):
        sc = unpack(s)
        for i in loop(p.shape[0]):
            pn, vn = elem(p[i], g[i], v[i], sc)
            p[i] = pn
            v[i] = vn
    return nesterov


RECORD = KernelRecord(name="nesterov", elem=nesterov_elem, body=nesterov_body,
                      arrays=("param", "grad", "velocity"), scalars=("lr", "mom", "mom2", "c"))
