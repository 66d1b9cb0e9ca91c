"""Heavy-ball momentum (the blog's Momentum): per-element math, kernel body and kernel record
(see ``kernels.record``).

The per-element function is plain Python, compiled for the CPU and for CUDA; the NumPy reference
(``fastopt.reference``) is written separately from the formulas so that it can catch a mistake
made here. Order of operations: exactly the README's formula table.
"""
from .record import KernelRecord, elem, loop, unpack  # noqa: F401  (bound per target)


def momentum_elem(p, g, vel, lr, mom):
    """One heavy-ball element (the blog's Momentum). Returns ``(p, velocity)``."""
    vel = mom * vel - lr * g
    p = p + vel
    return p, vel


def momentum_body():
    def momentum(p, g, vel, s):
        sc = unpack(s)
        for i in loop(p.shape[0]):
            pn, vn = elem(p[i], g[i], vel[i], sc)
            p[i] = pn
            vel[i] = vn
    return momentum


RECORD = KernelRecord(name="momentum", elem=momentum_elem, body=momentum_body,
                      arrays=("param", "grad", "velocity"),
                      scalars=("lr", "mom"))
