"""Lion: per-element math, kernel body and kernel record (see ``kernels.record``).

Written once, compiled for the CPU and for CUDA; the NumPy reference (``fastopt.reference``)
is written separately from the formulas. Order of operations: the README's formula table.
"""
from .record import KernelRecord, elem, loop, unpack  # noqa: F401  (bound per target)


def lion_elem(p, g, m, lr, beta1, omb1, beta2, omb2, decay, maximize, decoupled):
    """One Lion element. Returns ``(p, exp_avg)``; ``decay = 1 - lr * weight_decay``."""
    if maximize:
        g = -g
    c = beta1 * m + omb1 * g
    if decoupled:
        p = p * decay
    # lr * sign(c): sign(+-0) = +0 and NaN propagates, as np.sign (c - c is +0 or NaN; no
    # float64 literal enters a float32 kernel)
    if c > 0:
        u = lr
    elif c < 0:
        u = -lr
    else:
        u = (c - c) * lr
    p = p - u
    m = beta2 * m + omb2 * g
    return p, m


def lion_body(maximize, decoupled):
    def lion(p, g, m, sc):
        c = unpack(sc)
        for i in loop(p.shape[0]):
            pn, mn = elem(p[i], g[i], m[i], c, maximize, decoupled)
            p[i] = pn
            m[i] = mn
    return lion


RECORD = KernelRecord(name="lion", elem=lion_elem, body=lion_body,
                      arrays=("param", "grad", "exp_avg"),
                      scalars=("lr", "beta1", "omb1", "beta2", "omb2", "decay"))
