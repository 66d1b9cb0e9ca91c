"""Adam / AdamW: per-element math, kernel body and kernel record (see ``kernels.record``).

The per-element function is plain Python, compiled for the CPU and for CUDA; the NumPy reference
(``fastopt.reference``) is written separately from the formulas so that it can catch a mistake
made here. Order of operations: exactly the README's formula table.
"""
import math

from .record import KernelRecord, elem, loop, unpack  # noqa: F401  (bound per target)


def adam_elem(p, g, m, v, vmax, step_size, beta1, omb1, beta2, omb2, rbc2_sqrt, eps,
              wd, decay, maximize, l2, decoupled, amsgrad, eps_hat):
    """One Adam/AdamW element. Returns ``(p, m, v, vmax)``.

    ``omb1 = 1 - beta1``, ``omb2 = 1 - beta2``; ``decay = 1 - lr * wd`` (AdamW);
    ``step_size`` is ``lr / (1 - beta1**t)`` (torch form) or the blog's
    ``lr * sqrt(1 - beta2**t) / (1 - beta1**t)`` when ``eps_hat``.
    """
    if maximize:
        g = -g
    if decoupled:
        p = p * decay
    elif l2:
        g = g + wd * p
    if eps_hat:
        m = m + omb1 * (g - m)
        v = v + omb2 * (g * g - v)
    else:
        m = beta1 * m + omb1 * g
        v = beta2 * v + omb2 * (g * g)
    if amsgrad:
        # NaN-propagating maximum, like np.maximum / torch.maximum
        if v > vmax or v != v:
            vmax = v
        s = vmax
    else:
        s = v
    if eps_hat:
        p = p - step_size * m / (math.sqrt(s) + eps)
    else:
        # multiply by 1/sqrt(1 - beta2**t) rather than divide by its root: one division per
        # element instead of two (the divider is the bottleneck of a cache-resident step)
        p = p - step_size * (m / (math.sqrt(s) * rbc2_sqrt + eps))
    return p, m, v, vmax


def adam_body(maximize, l2, decoupled, amsgrad, eps_hat):
    def adam(p, g, m, v, vmax, s):
        sc = unpack(s)
        for i in loop(p.shape[0]):
            vi = v[i]
            vmi = vmax[i] if amsgrad else vi
            pn, mn, vn, vmn = elem(p[i], g[i], m[i], vi, vmi, sc, maximize, l2, decoupled,
                                   amsgrad, eps_hat)
            p[i] = pn
            m[i] = mn
            v[i] = vn
            if amsgrad:
                vmax[i] = vmn
    return adam


RECORD = KernelRecord(name="adam", elem=adam_elem, body=adam_body,
                      arrays=("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
                      nonnegative=("exp_avg_sq", "max_exp_avg_sq"),
                      scalars=("step_size", "beta1", "omb1", "beta2", "omb2", "rbc2_sqrt",
                               "eps", "wd", "decay"))
