"""SGD (torch.optim.SGD semantics): per-element math, kernel body and kernel record (see
``kernels.record``).

The per-element function is plain Python, compiled for the CPU and for CUDA; the NumPy reference
(``fastopt.reference``) is written separately from the formulas so that it can catch a mistake
made here. Order of operations: exactly the README's formula table.
"""
from .record import KernelRecord, elem, loop, unpack  # noqa: F401  (bound per target)


def sgd_elem(p, g, buf, lr, wd, mom, omd, maximize, l2, use_momentum, first, nesterov):
    """One SGD element (torch.optim.SGD semantics). Returns ``(p, momentum_buffer)``.

    ``omd = 1 - dampening``. On the first step the momentum buffer is a copy of the
    (decayed) gradient, as in torch.
    """
    if maximize:
        g = -g
    if l2:
        g = g + wd * p
    if use_momentum:
        if first:
            buf = g
        else:
            buf = mom * buf + omd * g
        if nesterov:
            g = g + mom * buf
        else:
            g = buf
    p = p - lr * g
    return p, buf


def sgd_body(maximize, l2, use_momentum, first, nesterov):
    def sgd(p, g, buf, s):
        sc = unpack(s)
        for i in loop(p.shape[0]):
            gi = g[i]
            bi = buf[i] if (use_momentum and not first) else gi
            pn, bn = elem(p[i], gi, bi, sc, maximize, l2, use_momentum, first, nesterov)
            p[i] = pn
            if use_momentum:
                buf[i] = bn
    return sgd


RECORD = KernelRecord(name="sgd", elem=sgd_elem, body=sgd_body,
                      arrays=("param", "grad", "momentum_buffer"),
                      scalars=("lr", "wd", "mom", "omd"))
