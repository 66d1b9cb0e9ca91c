"""RAdam: buffers, the public step function and the spec."""
import math

from .kernels import radam as _kernel

from ._core import Buffers
from ._spec import Hyper, OptimizerSpec, StateField
from ._step import run_step
from . import reference as _reference


class RAdamBuffers(Buffers):
    """Parameter, gradient and the RAdam state ``exp_avg`` (m) and ``exp_avg_sq`` (v).
    ``RAdamBuffers.zeros(p, g)`` allocates it."""


def radam_step(buffers, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
               decoupled_weight_decay=False, maximize=False, max_grad_norm=None,
               grad_scale=None, skip_nonfinite=False, groups=None, backend=None):
    r"""One fused, in-place RAdam step over ``buffers`` (an :class:`RAdamBuffers`).

    With ``t = buffers.step + 1``, ``g`` the gradient (negated when ``maximize``),
    ``rho_inf = 2 / (1 - beta2) - 1`` and ``rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)``::

        g = g + weight_decay * p        # L2, or p = p * (1 - lr * weight_decay) if decoupled
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * (g * g)
        if rho_t > 5:   p = p - (lr r_t sqrt(1 - beta2**t) / (1 - beta1**t) * m) / (sqrt(v) + eps)
        else:           p = p - (lr / (1 - beta1**t)) * m

    with ``r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))``.
    This is ``torch.optim.RAdam``; the host picks the branch from ``t`` and passes it to one
    kernel as scalars.

    Args:
        buffers: :class:`RAdamBuffers`.
        lr: step size, finite and >= 0.
        beta1, beta2: decay rates, in [0, 1).
        eps: finite and > 0.
        weight_decay: >= 0; L2, or decoupled with ``decoupled_weight_decay``.
        decoupled_weight_decay: AdamW-style decay.
        maximize: ascend instead of descend.
        max_grad_norm, grad_scale, skip_nonfinite, groups: the training-loop options
            (README "Training-loop options").
        backend: ``None`` (choose), ``"cpu"`` (Numba), ``"numpy"`` (reference), ``"cuda"``.

    Returns:
        ``buffers``, updated in place, with ``buffers.step`` incremented.

    Example:
        >>> import numpy as np, fastopt
        >>> p = np.ones(2); g = np.full(2, 0.5)
        >>> _ = fastopt.radam_step(fastopt.RAdamBuffers.zeros(p, g), lr=0.1)
        >>> p.round(6)                   # step 1 is un-rectified: p - lr * m / (1 - beta1)
        array([0.95, 0.95])

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond" (2020).
    """
    return run_step(SPEC, buffers, backend, dict(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize),
                    parallel=None, loop=(max_grad_norm, grad_scale, skip_nonfinite),
                    groups=groups)


def _options(hp, t):
    wd = hp["weight_decay"] != 0.0
    return dict(maximize=hp["maximize"], l2=wd and not hp["decoupled_weight_decay"],
                decoupled=wd and hp["decoupled_weight_decay"])


def _scalars(hp, t):
    lr, b1, b2, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"]
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho_t = rho_inf - 2.0 * t * (b2 ** t) / bc2
    if rho_t > 5.0:
        rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                         / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        c1, rectified, c3 = lr * rect * math.sqrt(bc2) / bc1, 1.0, hp["eps"]
    else:
        c1, rectified, c3 = lr / bc1, 0.0, 1.0
    return dict(c1=c1, rect=rectified, c3=c3, omb1=1.0 - b1, beta2=b2, omb2=1.0 - b2, wd=wd,
                decay=1.0 - lr * wd)


SPEC = OptimizerSpec(
    name="radam",
    step_name="radam_step",
    buffers_cls=RAdamBuffers,
    hypers=(
        Hyper("lr", 1e-3, low=0.0),
        Hyper("beta1", 0.9, low=0.0, high=1.0, high_open=True),
        Hyper("beta2", 0.999, low=0.0, high=1.0, high_open=True),
        Hyper("eps", 1e-8, low=0.0, low_open=True),
        Hyper("weight_decay", 0.0, low=0.0),
        Hyper("decoupled_weight_decay", False, kind="flag"),
        Hyper("maximize", False, kind="flag"),
    ),
    state=(StateField("exp_avg"), StateField("exp_avg_sq")),
    kernel=_kernel.RECORD,
    scalars=_scalars,
    options=_options,
    reference=_reference.radam,
    step_fn=radam_step,
)
