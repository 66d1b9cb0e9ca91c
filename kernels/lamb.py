"""LAMB: per-element math, kernel body and kernel record (see ``kernels.record``).

Written once, compiled for the CPU and for CUDA; the NumPy reference (``fastopt.reference``)
is written separately from the formulas. LAMB needs, per tensor, the norms of the parameter
and of the Adam direction ``r`` before it can update: the record's ``norm_arrays`` and
``norms`` name the array (the parameter) and the value of ``elem`` (``r``) whose squares a
read-only pre-pass sums (``kernels.reductions``); the host turns the sums into the trust ratio and passes
``step = lr * trust`` to the update pass, which runs the same ``elem``.
"""
import math

from .record import KernelRecord, elem, loop, unpack  # noqa: F401  (bound per target)


def lamb_elem(p, g, m, v, step, beta1, omb1, beta2, omb2, ibc1, ibc2, eps, wd, maximize,
              bias_correction, decay):
    """One LAMB element. Returns ``(p - step * r, exp_avg, exp_avg_sq, p, r)``: the new
    values, then the old parameter and the direction ``r`` (the pre-pass's values).
    ``ibc1``, ``ibc2``: the reciprocals of the bias corrections ``1 - beta^t`` (one division
    and one square root per element, where dividing by both corrections took three divisions:
    0.29 vs 0.50 ns per element on one Zen 4 core, and the pre-pass and the update pass each
    compute ``r``)."""
    if maximize:
        g = -g
    m = beta1 * m + omb1 * g
    v = beta2 * v + omb2 * (g * g)
    if bias_correction:
        r = (m * ibc1) / (math.sqrt(v * ibc2) + eps)
    else:
        r = m / (math.sqrt(v) + eps)
    if decay:
        r = r + wd * p
    return p - step * r, m, v, p, r


def lamb_body(maximize, bias_correction, decay):
    def lamb(p, g, m, v, s):
        sc = unpack(s)
        for i in loop(p.shape[0]):
            pn, mn, vn, _, _ = elem(p[i], g[i], m[i], v[i], sc, maximize, bias_correction,
                                    decay)
            p[i] = pn
            m[i] = mn
            v[i] = vn
    return lamb


RECORD = KernelRecord(name="lamb", elem=lamb_elem, body=lamb_body,
                      arrays=("param", "grad", "exp_avg", "exp_avg_sq"),
                      nonnegative=("exp_avg_sq",),
                      scalars=("step", "beta1", "omb1", "beta2", "omb2", "ibc1", "ibc2", "eps",
                               "wd"),
                      norm_arrays=("param",), norms=(4,), norm_names=("param", "update"))
