"""The NumPy reference path (``backend="numpy"``).

Written straight from the formulas in the README and the step functions' docstrings, with
whole-array NumPy expressions and independently of ``kernels.elementwise``, so that comparing
the two catches a wrong formula on either side. It follows the same two conventions as the
kernels, which makes the Numba CPU path bitwise equal to it:

* a scalar derived from hyperparameters (``1 - beta1``, ``lr / (1 - beta1**t)``...) is computed
  in Python floats (float64) and rounded once to the buffer dtype;
* every array expression is evaluated in the buffer dtype (NumPy keeps float32 arrays times
  float32 scalars in float32), in the order the formula is written.

Each function updates ``arrays`` (``{"param": p, "grad": g, <state>: ...}``) in place.
It allocates temporaries; it is the readable path, not the fast one. Like the kernels, it
does not warn about NaN/inf arising from the data (they propagate, as in torch).
"""
import functools
import math

import numpy as np


def _quiet(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        with np.errstate(all="ignore"):
            return fn(*args)
    return wrapper


@_quiet
def adam(arrays, hp, t, st):
    p, g = arrays["param"], arrays["grad"]
    m, v = arrays["exp_avg"], arrays["exp_avg_sq"]
    lr, b1, b2, eps, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"]
    if hp["maximize"]:
        g = -g
    if wd != 0.0:
        if hp["decoupled_weight_decay"]:
            p *= st(1.0 - lr * wd)
        else:
            g = g + st(wd) * p
    if hp["eps_hat"]:
        m += st(1.0 - b1) * (g - m)
        v += st(1.0 - b2) * (g * g - v)
    else:
        m[...] = st(b1) * m + st(1.0 - b1) * g
        v[...] = st(b2) * v + st(1.0 - b2) * (g * g)
    s = v
    if hp["amsgrad"]:
        s = arrays["max_exp_avg_sq"]
        np.maximum(s, v, out=s)
    bias1 = 1.0 - b1 ** t
    bias2_sqrt = math.sqrt(1.0 - b2 ** t)
    if hp["eps_hat"]:
        p -= st(lr * bias2_sqrt / bias1) * m / (np.sqrt(s) + st(eps))
    else:
        p -= st(lr / bias1) * (m / (np.sqrt(s) * st(1.0 / bias2_sqrt) + st(eps)))


@_quiet
def rmsprop(arrays, hp, t, st):
    p, g, sq = arrays["param"], arrays["grad"], arrays["square_avg"]
    lr, alpha, eps, wd, mom = (hp["lr"], hp["alpha"], hp["eps"], hp["weight_decay"],
                               hp["momentum"])
    if hp["maximize"]:
        g = -g
    if wd != 0.0:
        g = g + st(wd) * p
    sq[...] = st(alpha) * sq + st(1.0 - alpha) * (g * g)
    if hp["centered"]:
        ga = arrays["grad_avg"]
        ga += st(1.0 - alpha) * (g - ga)
        avg = np.sqrt(sq - ga * ga) + st(eps)
    else:
        avg = np.sqrt(sq) + st(eps)
    if mom > 0:
        buf = arrays["momentum_buffer"]
        buf[...] = st(mom) * buf + g / avg
        p -= st(lr) * buf
    else:
        p -= st(lr) * g / avg


@_quiet
def momentum(arrays, hp, t, st):
    p, g, vel = arrays["param"], arrays["grad"], arrays["velocity"]
    vel[...] = st(hp["momentum"]) * vel - st(hp["lr"]) * g
    p += vel


@_quiet
def sgd(arrays, hp, t, st):
    p, g = arrays["param"], arrays["grad"]
    lr, mom, damp, wd = hp["lr"], hp["momentum"], hp["dampening"], hp["weight_decay"]
    if hp["maximize"]:
        g = -g
    if wd != 0.0:
        g = g + st(wd) * p
    if mom > 0:
        buf = arrays["momentum_buffer"]
        if t == 1:
            buf[...] = g
        else:
            buf[...] = st(mom) * buf + st(1.0 - damp) * g
        if hp["nesterov"]:
            g = g + st(mom) * buf
        else:
            g = buf
    p -= st(lr) * g


@_quiet
def adagrad(arrays, hp, t, st):
    p, g, s = arrays["param"], arrays["grad"], arrays["sum"]
    if hp["maximize"]:
        g = -g
    if hp["weight_decay"] != 0.0:
        g = g + st(hp["weight_decay"]) * p
    s += g * g
    clr = hp["lr"] / (1.0 + (t - 1) * hp["lr_decay"])
    p -= (st(clr) * g) / (np.sqrt(s) + st(hp["eps"]))


@_quiet
def adadelta(arrays, hp, t, st):
    p, g = arrays["param"], arrays["grad"]
    sq, acc = arrays["square_avg"], arrays["acc_delta"]
    rho, eps = hp["rho"], hp["eps"]
    if hp["maximize"]:
        g = -g
    if hp["weight_decay"] != 0.0:
        g = g + st(hp["weight_decay"]) * p
    sq[...] = st(rho) * sq + st(1.0 - rho) * (g * g)
    delta = np.sqrt(acc + st(eps)) / np.sqrt(sq + st(eps)) * g
    acc[...] = st(rho) * acc + st(1.0 - rho) * (delta * delta)
    p -= st(hp["lr"]) * delta


@_quiet
def adamax(arrays, hp, t, st):
    p, g, m, u = arrays["param"], arrays["grad"], arrays["exp_avg"], arrays["exp_inf"]
    b1 = hp["beta1"]
    if hp["maximize"]:
        g = -g
    if hp["weight_decay"] != 0.0:
        g = g + st(hp["weight_decay"]) * p
    m += st(1.0 - b1) * (g - m)
    np.maximum(np.abs(g) + st(hp["eps"]), st(hp["beta2"]) * u, out=u)
    p -= st(hp["lr"] / (1.0 - b1 ** t)) * (m / u)


@_quiet
def lion(arrays, hp, t, st):
    p, g, m = arrays["param"], arrays["grad"], arrays["exp_avg"]
    lr, b1, b2, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"]
    if hp["maximize"]:
        g = -g
    c = st(b1) * m + st(1.0 - b1) * g
    if wd != 0.0:
        p *= st(1.0 - lr * wd)
    p -= np.sign(c) * st(lr)
    m[...] = st(b2) * m + st(1.0 - b2) * g


def _adam_moments(arrays, hp, st):
    """Shared by RAdam and NAdam: weight decay, then ``m`` (torch's lerp form) and ``v``.
    Returns ``(p, g, m, v)``."""
    p, g, m, v = arrays["param"], arrays["grad"], arrays["exp_avg"], arrays["exp_avg_sq"]
    lr, b1, b2, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"]
    if hp["maximize"]:
        g = -g
    if wd != 0.0:
        if hp["decoupled_weight_decay"]:
            p *= st(1.0 - lr * wd)
        else:
            g = g + st(wd) * p
    m += st(1.0 - b1) * (g - m)
    v[...] = st(b2) * v + st(1.0 - b2) * (g * g)
    return p, g, m, v


@_quiet
def radam(arrays, hp, t, st):
    lr, b1, b2 = hp["lr"], hp["beta1"], hp["beta2"]
    p, g, m, v = _adam_moments(arrays, hp, st)
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho_t = rho_inf - 2.0 * t * (b2 ** t) / bc2
    if rho_t > 5.0:
        rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                         / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        p -= (st(lr * rect * math.sqrt(bc2) / bc1) * m) / (np.sqrt(v) + st(hp["eps"]))
    else:
        p -= st(lr / bc1) * m


_MU_PRODUCTS = {}


def mu_product(hp, t):
    """NAdam's momentum schedule at step ``t``: ``(mu_t, mu_{t+1}, mu_1 * ... * mu_t)`` with
    ``mu_k = beta1 * (1 - 0.5 * 0.96**(k * momentum_decay))``. The product is accumulated in
    step order exactly as torch's running ``mu_product``, a float32 scalar tensor:
    ``P_t = float32(P_{t-1} * float32(mu_t))`` (so float64 runs match torch to 1e-11; the
    float32 rounding of ``P_t`` is torch's). Remembered per ``(beta1, momentum_decay)``, so a
    resumed run recomputes it from its step count."""
    b1, md = hp["beta1"], hp["momentum_decay"]

    def mu(k):
        return b1 * (1.0 - 0.5 * (0.96 ** (k * md)))
    products = _MU_PRODUCTS.setdefault((b1, md), [1.0])
    while len(products) <= t:
        f32 = np.float32
        products.append(float(f32(f32(products[-1]) * f32(mu(len(products))))))
    return mu(t), mu(t + 1), products[t]


@_quiet
def nadam(arrays, hp, t, st):
    lr, b2 = hp["lr"], hp["beta2"]
    p, g, m, v = _adam_moments(arrays, hp, st)
    mu, mu_next, prod = mu_product(hp, t)
    denom = np.sqrt(v * st(1.0 / (1.0 - b2 ** t))) + st(hp["eps"])
    p -= st(lr * (1.0 - mu) / (1.0 - prod)) * (g / denom)
    p -= st(lr * mu_next / (1.0 - prod * mu_next)) * (m / denom)


@_quiet
def nesterov(arrays, hp, t, st):
    p, g, v = arrays["param"], arrays["grad"], arrays["velocity"]
    mom, lr = hp["momentum"], hp["lr"]
    v *= st(mom)
    v -= st(lr) * g
    p += st(mom * mom) * v
    p -= st((1.0 + mom) * lr) * g


@_quiet
def lamb(arrays, hp, t, st):
    """LAMB on one tensor (the step driver calls it once per tensor)."""
    from .scaling import sum_of_squares_reference
    p, g = arrays["param"], arrays["grad"]
    m, v = arrays["exp_avg"], arrays["exp_avg_sq"]
    b1, b2, wd = hp["beta1"], hp["beta2"], hp["weight_decay"]
    if hp["maximize"]:
        g = -g
    m[...] = st(b1) * m + st(1.0 - b1) * g
    v[...] = st(b2) * v + st(1.0 - b2) * (g * g)
    if hp["bias_correction"]:
        r = (m * st(1.0 / (1.0 - b1 ** t))) / (np.sqrt(v * st(1.0 / (1.0 - b2 ** t)))
                                                 + st(hp["eps"]))
    else:
        r = m / (np.sqrt(v) + st(hp["eps"]))
    if wd != 0.0:
        r = r + st(wd) * p
    p_norm = math.sqrt(sum_of_squares_reference(p))
    r_norm = math.sqrt(sum_of_squares_reference(r))
    trust = 1.0
    if p_norm > 0.0 and r_norm > 0.0:
        trust = p_norm / (r_norm + hp["trust_eps"])
    p -= st(hp["lr"] * trust) * r
