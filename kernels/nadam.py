"""NAdam: per-element math, kernel body and kernel record (see ``kernels.record``).

Written once, compiled for the CPU and for CUDA; the NumPy reference (``fastopt.reference``)
is written separately from the formulas. The momentum schedule (``mu_t``, its running product)
is computed on the host and enters as two scalars.
"""
import math

from .record import KernelRecord, elem, loop, unpack  # noqa: F401  (bound per target)


def nadam_elem(p, g, m, v, cg, cm, rbc2, omb1, beta2, omb2, eps, wd, decay, maximize, l2,
               decoupled):
    """One NAdam element. Returns ``(p, m, v)``; ``rbc2 = 1 / (1 - beta2**t)``,
    ``cg = lr (1 - mu_t) / (1 - prod mu)``, ``cm = lr mu_{t+1} / (1 - prod mu * mu_{t+1})``."""
    if maximize:
        g = -g
    if decoupled:
        p = p * decay
    elif l2:
        g = g + wd * p
    m = m + omb1 * (g - m)
    v = beta2 * v + omb2 * (g * g)
    denom = math.sqrt(v * rbc2) + eps
    p = p - cg * (g / denom)
    p = p - cm * (m / denom)
    return p, m, v


def nadam_body(maximize, l2, decoupled):
    def nadam(p, g, m, v, s):
        sc = unpack(s)
        for i in loop(p.shape[0]):
            pn, mn, vn = elem(p[i], g[i], m[i], v[i], sc, maximize, l2, decoupled)
            p[i] = pn
            m[i] = mn
            v[i] = vn
    return nadam


RECORD = KernelRecord(name="nadam", elem=nadam_elem, body=nadam_body,
                      arrays=("param", "grad", "exp_avg", "exp_avg_sq"),
                      nonnegative=("exp_avg_sq",),
                      scalars=("cg", "cm", "rbc2", "omb1", "beta2", "omb2", "eps", "wd",
                               "decay"))
