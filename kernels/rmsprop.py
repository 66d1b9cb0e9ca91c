"""RMSprop: per-element math, kernel body and kernel record (see ``kernels.record``).

The per-element function is plain Python, compiled for the CPU and for CUDA; the NumPy reference
(``fastopt.reference``) is written separately from the formulas so that it can catch a mistake
made here. Order of operations: exactly the README's formula table.
"""
import math

from .record import KernelRecord, elem, loop, unpack  # noqa: F401  (bound per target)


def rmsprop_elem(p, g, sq, gavg, buf, lr, alpha, oma, eps, wd, mom,
                 maximize, l2, centered, use_momentum):
    """One RMSprop element. Returns ``(p, square_avg, grad_avg, momentum_buffer)``.

    ``oma = 1 - alpha``. Without momentum the step is ``p - (lr * g) / avg`` (the blog's
    order of operations); with momentum ``buf = mom * buf + g / avg; p = p - lr * buf``.
    """
    if maximize:
        g = -g
    if l2:
        g = g + wd * p
    sq = alpha * sq + oma * (g * g)
    if centered:
        gavg = gavg + oma * (g - gavg)
        avg = math.sqrt(sq - gavg * gavg) + eps
    else:
        avg = math.sqrt(sq) + eps
    if use_momentum:
        buf = mom * buf + g / avg
        p = p - lr * buf
    else:
        p = p - lr * g / avg
    return p, sq, gavg, buf


def rmsprop_body(maximize, l2, centered, use_momentum):
    def rmsprop(p, g, sq, gavg, buf, s):
        sc = unpack(s)
        for i in loop(p.shape[0]):
            sqi = sq[i]
            gai = gavg[i] if centered else sqi
            bi = buf[i] if use_momentum else sqi
            pn, sqn, gan, bn = elem(p[i], g[i], sqi, gai, bi, sc, maximize, l2, centered,
                                    use_momentum)
            p[i] = pn
            sq[i] = sqn
            if centered:
                gavg[i] = gan
            if use_momentum:
                buf[i] = bn
    return rmsprop


RECORD = KernelRecord(name="rmsprop", elem=rmsprop_elem, body=rmsprop_body,
                      arrays=("param", "grad", "square_avg", "grad_avg", "momentum_buffer"),
                      nonnegative=("square_avg",),
                      scalars=("lr", "alpha", "oma", "eps", "wd", "mom"))
