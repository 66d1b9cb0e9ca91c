"""RMSprop: buffers, the public step function and the spec."""
from .kernels import rmsprop as _kernel

from ._core import Buffers
from ._spec import Hyper, OptimizerSpec, StateField
from ._step import run_step
from . import reference as _reference


class RMSpropBuffers(Buffers):
    """Parameter, gradient and RMSprop state: ``square_avg``; ``grad_avg`` when centered;
    ``momentum_buffer`` when momentum > 0.
    ``RMSpropBuffers.zeros(p, g, centered=False, momentum=0.0)`` allocates it."""


def rmsprop_step(buffers, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, maximize=False, max_grad_norm=None,
                 grad_scale=None, skip_nonfinite=False, groups=None, backend=None):
    r"""One fused, in-place RMSprop step over ``buffers`` (an :class:`RMSpropBuffers`).

    With ``g`` the gradient (negated when ``maximize``)::

        g   = g + weight_decay * p                   # if weight_decay
        sq  = alpha * sq + (1 - alpha) * (g * g)
        ga  = ga + (1 - alpha) * (g - ga)            # if centered
        avg = sqrt(sq - ga * ga) + eps   if centered  else  sqrt(sq) + eps
        buf = momentum * buf + g / avg;  p = p - lr * buf     # if momentum > 0
        p   = p - lr * g / avg                                # otherwise

    This is ``torch.optim.RMSprop`` (which also adds ``eps`` outside the square root). The
    momentum-free step is evaluated as ``(lr * g) / avg``, the blog's order, so that
    non-centered RMSprop without momentum equals the blog's ``RMSprop.update`` (its
    ``decay_rate`` is ``alpha``, its ``epsilon`` is ``eps``) bit for bit in float64; torch
    evaluates ``lr * (g / avg)``, which can differ in the last bit. NaN or inf in the
    gradient propagates, as in torch.

    Args:
        buffers: :class:`RMSpropBuffers`; ``centered`` needs ``grad_avg`` and
            ``momentum > 0`` needs ``momentum_buffer``.
        lr: step size, finite and >= 0.
        alpha: smoothing constant, in [0, 1).
        eps: added to the denominator, finite and > 0.
        weight_decay: L2 penalty, >= 0.
        momentum: >= 0.
        centered: normalize by the estimated variance instead of the second moment.
        maximize: ascend instead of descend.
        max_grad_norm: clip the gradient to this global L2 norm first (``None``: no clipping;
            README "Training-loop options").
        grad_scale: divide the gradient by this loss scale first (``None``: 1).
        skip_nonfinite: skip the whole step if the gradient has a NaN or inf.
        groups: a :class:`fastopt.Groups`: element ranges with their own values of the real
            hyperparameters (README "Parameter groups"; ``None``: one set of values).
        backend: ``None`` (choose), ``"cpu"`` (Numba), ``"numpy"`` (reference), ``"cuda"``.

    Returns:
        ``buffers``, updated in place, with ``buffers.step`` incremented.

    Example:
        >>> import numpy as np, fastopt
        >>> p = np.ones(3); g = np.full(3, 0.1)
        >>> _ = fastopt.rmsprop_step(fastopt.RMSpropBuffers.zeros(p, g), lr=0.01)
        >>> p.round(6)
        array([0.9, 0.9, 0.9])

    Reference: Hinton, Lecture 6e of "Neural Networks for Machine Learning" (2012).
    """
    return run_step(SPEC, buffers, backend, dict(
        lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
        centered=centered, maximize=maximize),
                    parallel=None, loop=(max_grad_norm, grad_scale, skip_nonfinite),
                    groups=groups)


def _options(hp, t):
    return dict(maximize=hp["maximize"], l2=hp["weight_decay"] != 0.0,
                centered=hp["centered"], use_momentum=hp["momentum"] > 0)


def _scalars(hp, t):
    return dict(lr=hp["lr"], alpha=hp["alpha"], oma=1.0 - hp["alpha"], eps=hp["eps"],
                wd=hp["weight_decay"], mom=hp["momentum"])


SPEC = OptimizerSpec(
    name="rmsprop",
    step_name="rmsprop_step",
    buffers_cls=RMSpropBuffers,
    hypers=(
        Hyper("lr", 1e-2, low=0.0),
        Hyper("alpha", 0.99, low=0.0, high=1.0, high_open=True),
        Hyper("eps", 1e-8, low=0.0, low_open=True),
        Hyper("weight_decay", 0.0, low=0.0),
        Hyper("momentum", 0.0, low=0.0),
        Hyper("centered", False, kind="flag"),
        Hyper("maximize", False, kind="flag"),
    ),
    state=(StateField("square_avg"),
           StateField("grad_avg", when=lambda hp: hp["centered"], options=("centered",)),
           StateField("momentum_buffer", when=lambda hp: hp["momentum"] > 0,
                      options=("momentum",))),
    kernel=_kernel.RECORD,
    scalars=_scalars,
    options=_options,
    reference=_reference.rmsprop,
    step_fn=rmsprop_step,
)
