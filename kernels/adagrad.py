"""Adagrad: per-element math, kernel body and kernel record (see ``kernels.record``).

Written once, compiled for the CPU and for CUDA; the NumPy reference (``fastopt.reference``)
is written separately from the formulas. Order of operations: the README's formula table.
"""
import math

from .record import KernelRecord, elem, loop, unpack  # noqa: F401  (bound per target)


def adagrad_elem(p, g, s, clr, wd, eps, maximize, l2):
    """One Adagrad element. Returns ``(p, s)``; ``clr = lr / (1 + (t - 1) * lr_decay)``.
    ``(clr * g) / (...)`` is the textbook's order (its ``AdaGrad`` class, bit for bit);
    torch evaluates ``clr * (g / ...)``."""
    if maximize:
        g = -g
    if l2:
        g = g + wd * p
    s = s + g * g
    p = p - (clr * g) / (math.sqrt(s) + eps)
    return p, s


def adagrad_body(maximize, l2):
    def adagrad(p, g, s, sc):
        c = unpack(sc)
        for i in loop(p.shape[0]):
            pn, sn = elem(p[i], g[i], s[i], c, maximize, l2)
            p[i] = pn
            s[i] = sn
    return adagrad


RECORD = KernelRecord(name="adagrad", elem=adagrad_elem, body=adagrad_body,
                      arrays=("param", "grad", "sum"), scalars=("clr", "wd", "eps"),
                      nonnegative=("sum",))
