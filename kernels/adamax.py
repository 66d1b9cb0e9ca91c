"""Adamax: per-element math, kernel body and kernel record (see ``kernels.record``).

Written once, compiled for the CPU and for CUDA; the NumPy reference (``fastopt.reference``)
is written separately from the formulas. Order of operations: the README's formula table.
"""
from .record import KernelRecord, elem, loop, unpack  # noqa: F401  (bound per target)


def adamax_elem(p, g, m, u, clr, beta2, omb1, eps, wd, maximize, l2):
    """One Adamax element. Returns ``(p, exp_avg, exp_inf)``; ``omb1 = 1 - beta1``,
    ``clr = lr / (1 - beta1**t)``."""
    if maximize:
        g = -g
    if l2:
        g = g + wd * p
    m = m + omb1 * (g - m)
    a = abs(g) + eps
    b = beta2 * u
    # NaN-propagating maximum, like torch.amax
    u = a if (a > b or a != a) else b
    p = p - clr * (m / u)
    return p, m, u


def adamax_body(maximize, l2):
    def adamax(p, g, m, u, sc):
        c = unpack(sc)
        for i in loop(p.shape[0]):
            pn, mn, un = elem(p[i], g[i], m[i], u[i], c, maximize, l2)
            p[i] = pn
            m[i] = mn
            u[i] = un
    return adamax


RECORD = KernelRecord(name="adamax", elem=adamax_elem, body=adamax_body,
                      arrays=("param", "grad", "exp_avg", "exp_inf"),
                      nonnegative=("exp_inf",),
                      scalars=("clr", "beta2", "omb1", "eps", "wd"))
