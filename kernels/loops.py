"""Kernel bodies, written once for every target.

Each factory takes the optimizer's boolean options, which become compile-time constants of the
returned closure (so each option combination compiles to its own branch-free loop, and a state
array an option does not use is never touched: a zero-length array stands in for it). The
kernel is one fused pass that loads one element of every array, calls the per-element function
and stores the results in place.

The scalars arrive packed in one argument ``s``, in the order of the per-element function's
scalar parameters, and are unpacked into locals before the loop. On the CPU ``s`` is a 1-D array
of the buffer dtype (one array argument is cheaper to dispatch than nine scalars: 1.2 us instead
of 2.9 us per call, measured on a 10-element buffer); on CUDA it is a tuple (passed by value with
the launch, no host-to-device copy). Either way the scalars must already have the buffer dtype.

Two names in the bodies are bound per target by ``kernels.decorators.bind`` (a copy of the
function with its globals extended), not here:

* ``elem``: the optimizer's function from ``kernels.elementwise``, compiled for the target
  (``numba.njit`` inline for the CPU, ``numba.cuda.jit(device=True)`` for CUDA);
* ``loop``: the index loop: ``numba.prange`` on the CPU (parallel, or ``range`` in the serial
  twin), a grid-stride ``range(cuda.grid(1), n, cuda.gridsize(1))`` device function on CUDA.

They are globals rather than closure variables on purpose: Numba keys its on-disk cache on the
closure's values, and a compiled function as a closure value would not give a stable key.
"""


def adam(maximize, l2, decoupled, amsgrad, eps_hat):
    def adam(p, g, m, v, vmax, s):
        step_size, beta1, omb1, beta2, omb2 = s[0], s[1], s[2], s[3], s[4]
        rbc2_sqrt, eps, wd, decay = s[5], s[6], s[7], s[8]
        for i in loop(p.shape[0]):
            vi = v[i]
            vmi = vmax[i] if amsgrad else vi
            pn, mn, vn, vmn = elem(p[i], g[i], m[i], vi, vmi, step_size, beta1, omb1,
                                   beta2, omb2, rbc2_sqrt, eps, wd, decay, maximize, l2,
                                   decoupled, amsgrad, eps_hat)
            p[i] = pn
            m[i] = mn
            v[i] = vn
            if amsgrad:
                vmax[i] = vmn
    return adam


def rmsprop(maximize, l2, centered, use_momentum):
    def rmsprop(p, g, sq, gavg, buf, s):
        lr, alpha, oma, eps, wd, mom = s[0], s[1], s[2], s[3], s[4], s[5]
        for i in loop(p.shape[0]):
            sqi = sq[i]
            gai = gavg[i] if centered else sqi
            bi = buf[i] if use_momentum else sqi
            pn, sqn, gan, bn = elem(p[i], g[i], sqi, gai, bi, lr, alpha, oma, eps,
                                    wd, mom, maximize, l2, centered, use_momentum)
            p[i] = pn
            sq[i] = sqn
            if centered:
                gavg[i] = gan
            if use_momentum:
                buf[i] = bn
    return rmsprop


def momentum():
    def momentum(p, g, vel, s):
        lr, mom = s[0], s[1]
        for i in loop(p.shape[0]):
            pn, vn = elem(p[i], g[i], vel[i], lr, mom)
            p[i] = pn
            vel[i] = vn
    return momentum


def sgd(maximize, l2, use_momentum, first, nesterov):
    def sgd(p, g, buf, s):
        lr, wd, mom, omd = s[0], s[1], s[2], s[3]
        for i in loop(p.shape[0]):
            gi = g[i]
            bi = buf[i] if (use_momentum and not first) else gi
            pn, bn = elem(p[i], gi, bi, lr, wd, mom, omd, maximize, l2, use_momentum,
                          first, nesterov)
            p[i] = pn
            if use_momentum:
                buf[i] = bn
    return sgd


def _unbound(*args):
    raise RuntimeError("kernels.loops bodies run only after kernels.decorators.bind gives "
                       "them a target's elem and loop")


elem = loop = _unbound

BODIES = {"adam": adam, "rmsprop": rmsprop, "momentum": momentum, "sgd": sgd}
