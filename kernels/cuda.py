"""CUDA kernels: grid-stride loops over flat 1-D device buffers, in place.

They call the same per-element functions as the CPU kernels (``kernels.elementwise``),
compiled here with ``numba.cuda.jit(device=True)``. Boolean options are compile-time
constants of each kernel (closures, as on the CPU), so an unused state array is never touched
and a zero-length device array stands in for it. Scalars must already have the buffer dtype:
a float64 scalar would turn a float32 kernel's arithmetic into float64 (the PTX tests check
that no float64 instruction appears in any float32 kernel).

This module imports ``numba.cuda``; fastopt imports it only when a CUDA path is used.
"""
import math
import threading

from numba import cuda

from . import elementwise as ew

_adam = cuda.jit(device=True)(ew.adam_elem)
_rmsprop = cuda.jit(device=True)(ew.rmsprop_elem)
_momentum = cuda.jit(device=True)(ew.momentum_elem)
_sgd = cuda.jit(device=True)(ew.sgd_elem)


def adam_kernel(maximize, l2, decoupled, amsgrad, eps_hat):
    def adam(p, g, m, v, vmax, step_size, beta1, omb1, beta2, omb2, bc2_sqrt, eps, wd, decay):
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, p.shape[0], stride):
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


def rmsprop_kernel(maximize, l2, centered, use_momentum):
    def rmsprop(p, g, sq, gavg, buf, lr, alpha, oma, eps, wd, mom):
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, p.shape[0], stride):
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


def momentum_kernel():
    def momentum(p, g, vel, lr, mom):
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, p.shape[0], stride):
            pn, vn = _momentum(p[i], g[i], vel[i], lr, mom)
            p[i] = pn
            vel[i] = vn
    return momentum


def sgd_kernel(maximize, l2, use_momentum, first, nesterov):
    def sgd(p, g, buf, lr, wd, mom, omd):
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, p.shape[0], stride):
            gi = g[i]
            bi = buf[i] if (use_momentum and not first) else gi
            pn, bn = _sgd(p[i], gi, bi, lr, wd, mom, omd, maximize, l2, use_momentum,
                          first, nesterov)
            p[i] = pn
            if use_momentum:
                buf[i] = bn
    return sgd


@cuda.jit
def fill_zero(a):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, a.shape[0], stride):
        a[i] = 0


FACTORIES = {"adam": adam_kernel, "rmsprop": rmsprop_kernel, "momentum": momentum_kernel,
             "sgd": sgd_kernel}
_compiled = {}
_lock = threading.Lock()


def get(name, **options):
    """The ``cuda.jit`` kernel of optimizer ``name`` for these option values (lazy)."""
    key = (name,) + tuple(sorted(options.items()))
    kernel = _compiled.get(key)
    if kernel is None:
        with _lock:
            kernel = _compiled.get(key)
            if kernel is None:
                kernel = _compiled[key] = cuda.jit(FACTORIES[name](**options))
    return kernel


def python_kernel(name, **options):
    """The uncompiled kernel function (for ``cuda.compile_ptx``)."""
    return FACTORIES[name](**options)


def launch_config(n, threads_per_block, max_blocks):
    blocks = max(1, math.ceil(n / threads_per_block))
    if max_blocks:
        blocks = min(blocks, max_blocks)
    return blocks, threads_per_block
