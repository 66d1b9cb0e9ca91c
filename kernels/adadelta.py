"""Adadelta: per-element math, kernel body and kernel record (see ``kernels.record``).

Written once, compiled for the CPU and for CUDA; the NumPy reference (``fastopt.reference``)
is written separately from the formulas. Order of operations: the README's formula table.
"""
import math

from .record import KernelRecord, elem, loop, unpack  # noqa: F401  (bound per target)


def adadelta_elem(p, g, sq, acc, lr, rho, omr, eps, wd, maximize, l2):
    """One Adadelta element. Returns ``(p, square_avg, acc_delta)``; ``omr = 1 - rho``."""
    if maximize:
        g = -g
    if l2:
        g = g + wd * p
    sq = rho * sq + omr * (g * g)
    delta = math.sqrt(acc + eps) / math.sqrt(sq + eps) * g
    acc = rho * acc + omr * (delta * delta)
    p = p - lr * delta
    return p, sq, acc


def adadelta_body(maximize, l2):
    def adadelta(p, g, sq, acc, sc):
        c = unpack(sc)
        for i in loop(p.shape[0]):
            pn, sn, an = elem(p[i], g[i], sq[i], acc[i], c, maximize, l2)
            p[i] = pn
            sq[i] = sn
            acc[i] = an
    return adadelta


RECORD = KernelRecord(name="adadelta", elem=adadelta_elem, body=adadelta_body,
                      arrays=("param", "grad", "square_avg", "acc_delta"),
                      nonnegative=("square_avg", "acc_delta"),
                      scalars=("lr", "rho", "omr", "eps", "wd"))
