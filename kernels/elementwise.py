"""Per-element update math, written once and compiled for every target.

Each function takes the scalars of one element (parameter, gradient, state) and the
hyperparameters, and returns the new values as a tuple. They are plain Python on purpose:
``kernels.decorators`` compiles the very same function objects with ``numba.njit`` for the
CPU kernels (``kernels.cpu``) and with ``numba.cuda.jit(device=True)`` for the GPU kernels
(``kernels.cuda``). The NumPy reference (``fastopt.reference``) is written separately, from
the formulas in the docs, so that it can catch a mistake made here.

Rules that keep the results bitwise equal to the reference:

* every scalar argument already has the buffer's dtype (the host casts it; a float64 scalar
  in float32 math would silently promote the arithmetic);
* derived scalars such as ``1 - beta1`` or the bias corrections are computed on the host in
  float64 and rounded once to the buffer dtype, so no integer or float64 literal appears in
  the arithmetic below;
* the order of operations is exactly the one documented in the README's formula table.
"""
import math


def adam_elem(p, g, m, v, vmax, step_size, beta1, omb1, beta2, omb2, rbc2_sqrt, eps,
              wd, decay, maximize, l2, decoupled, amsgrad, eps_hat):
    """One Adam/AdamW element. Returns ``(p, m, v, vmax)``.

    ``omb1 = 1 - beta1``, ``omb2 = 1 - beta2``; ``decay = 1 - lr * wd`` (AdamW);
    ``step_size`` is ``lr / (1 - beta1**t)`` (torch form) or the seed's
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


def rmsprop_elem(p, g, sq, gavg, buf, lr, alpha, oma, eps, wd, mom,
                 maximize, l2, centered, use_momentum):
    """One RMSprop element. Returns ``(p, square_avg, grad_avg, momentum_buffer)``.

    ``oma = 1 - alpha``. Without momentum the step is ``p - (lr * g) / avg`` (the seed's
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


def momentum_elem(p, g, vel, lr, mom):
    """One heavy-ball element (the seed's Momentum). Returns ``(p, velocity)``."""
    vel = mom * vel - lr * g
    p = p + vel
    return p, vel


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
