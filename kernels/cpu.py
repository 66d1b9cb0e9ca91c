"""Fused CPU kernels: one pass over flat 1-D buffers, in place.

Each kernel loads one element of every array, calls the shared per-element math of
``kernels.elementwise`` and stores the results. Boolean options are compile-time constants
(see ``kernels.decorators.KernelFamily``), so a state array an option does not use is never
touched and an empty array of the dtype stands in for it. Scalars must already have the
buffer dtype.
"""
from numba import prange

from . import elementwise as ew
from .decorators import cpu_device, kernel_family

_adam = cpu_device(ew.adam_elem)
_rmsprop = cpu_device(ew.rmsprop_elem)
_momentum = cpu_device(ew.momentum_elem)
_sgd = cpu_device(ew.sgd_elem)


@kernel_family("maximize", "l2", "decoupled", "amsgrad", "eps_hat")
def adam_kernel(maximize, l2, decoupled, amsgrad, eps_hat):
    def adam(p, g, m, v, vmax, step_size, beta1, omb1, beta2, omb2, bc2_sqrt, eps, wd, decay):
        for i in prange(p.shape[0]):
            vi = v[i]
            vmi = vmax[i] if amsgrad else vi
            pn, mn, vn, vmn = _adam(p[i], g[i], m[i], vi, vmi, step_size, beta1, omb1,
                                    beta2, omb2, bc2_sqrt, eps, wd, decay, maximize, l2,
                                    decoupled, amsgrad, eps_hat)
            p[i] = pn
            m[i] = mn
            v[i] = vn
            if amsgrad:
                vmax[i] = vmn
    return adam


@kernel_family("maximize", "l2", "centered", "use_momentum")
def rmsprop_kernel(maximize, l2, centered, use_momentum):
    def rmsprop(p, g, sq, gavg, buf, lr, alpha, oma, eps, wd, mom):
        for i in prange(p.shape[0]):
            sqi = sq[i]
            gai = gavg[i] if centered else sqi
            bi = buf[i] if use_momentum else sqi
            pn, sqn, gan, bn = _rmsprop(p[i], g[i], sqi, gai, bi, lr, alpha, oma, eps,
                                        wd, mom, maximize, l2, centered, use_momentum)
            p[i] = pn
            sq[i] = sqn
            if centered:
                gavg[i] = gan
            if use_momentum:
                buf[i] = bn
    return rmsprop


@kernel_family()
def momentum_kernel():
    def momentum(p, g, vel, lr, mom):
        for i in prange(p.shape[0]):
            pn, vn = _momentum(p[i], g[i], vel[i], lr, mom)
            p[i] = pn
            vel[i] = vn
    return momentum


@kernel_family("maximize", "l2", "use_momentum", "first", "nesterov")
def sgd_kernel(maximize, l2, use_momentum, first, nesterov):
    def sgd(p, g, buf, lr, wd, mom, omd):
        for i in prange(p.shape[0]):
            gi = g[i]
            bi = buf[i] if (use_momentum and not first) else gi
            pn, bn = _sgd(p[i], gi, bi, lr, wd, mom, omd, maximize, l2, use_momentum,
                          first, nesterov)
            p[i] = pn
            if use_momentum:
                buf[i] = bn
    return sgd


@kernel_family("with_c", "with_d", "with_e")
def traffic_kernel(with_c, with_d, with_e):
    def traffic(a, b, c, d, e, s):
        """Roofline probe: reads ``a``, ``b`` and the enabled ``c, d, e``, writes ``a`` and the
        enabled ``c, d, e`` (an optimizer's traffic: the gradient is only read), with trivial
        arithmetic. The benchmarks use it as the machine's attainable speed."""
        for i in prange(a.shape[0]):
            x = b[i]
            a[i] = a[i] + x * s
            if with_c:
                c[i] = c[i] + x
            if with_d:
                d[i] = d[i] + x
            if with_e:
                e[i] = e[i] + x
    return traffic
