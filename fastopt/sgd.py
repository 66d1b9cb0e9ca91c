"""SGD with torch.optim.SGD semantics: buffers, step function and spec."""
from .kernels import sgd as _kernel

from ._core import Buffers
from ._spec import Hyper, OptimizerSpec, StateField
from ._step import run_step
from . import reference as _reference


class SGDBuffers(Buffers):
    """Parameter, gradient and, when momentum > 0, the ``momentum_buffer``
    (``SGDBuffers.zeros(p, g, momentum=0.0)``; the first step overwrites the buffer with the
    gradient, as in torch)."""


def sgd_step(buffers, *, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, maximize=False, max_grad_norm=None,
             grad_scale=None, skip_nonfinite=False, groups=None, backend=None):
    r"""One fused, in-place SGD step over an :class:`SGDBuffers` (``torch.optim.SGD``)::

        g   = -g if maximize
        g   = g + weight_decay * p                           # if weight_decay
        buf = g                          on the first step    # if momentum > 0
        buf = momentum * buf + (1 - dampening) * g   later
        g   = g + momentum * buf   if nesterov   else   buf
        p   = p - lr * g

    "First step" means ``buffers.step == 0``. Plain SGD (``momentum=0``) is the blog's
    ``mini_SGD.update`` (``p -= lr * g``), bitwise equal in float64.

    Args:
        buffers: :class:`SGDBuffers`; ``momentum > 0`` needs ``momentum_buffer``.
        lr: step size, finite and >= 0.
        momentum: >= 0.
        dampening: in [0, 1].
        weight_decay: L2 penalty, >= 0.
        nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
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
        >>> p = np.ones(2); g = np.array([1.0, -2.0])
        >>> _ = fastopt.sgd_step(fastopt.SGDBuffers.zeros(p, g), lr=0.5)
        >>> p
        array([0.5, 2. ])

    Reference: Sutskever et al., "On the importance of initialization and momentum in deep
    learning" (2013), for the momentum and Nesterov forms used by torch.
    """
    return run_step(SPEC, buffers, backend, dict(
        lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
        nesterov=nesterov, maximize=maximize),
                    parallel=None, loop=(max_grad_norm, grad_scale, skip_nonfinite),
                    groups=groups)


def _cross_check(hp):
    if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
        raise ValueError("nesterov=True requires momentum > 0 and dampening == 0 "
                         f"(got momentum={hp['momentum']!r}, dampening={hp['dampening']!r})")


def _options(hp, t):
    use_momentum = hp["momentum"] > 0
    return dict(maximize=hp["maximize"], l2=hp["weight_decay"] != 0.0,
                use_momentum=use_momentum, first=use_momentum and t == 1,
                nesterov=hp["nesterov"])


def _scalars(hp, t):
    return dict(lr=hp["lr"], wd=hp["weight_decay"], mom=hp["momentum"],
                omd=1.0 - hp["dampening"])


SPEC = OptimizerSpec(
    name="sgd",
    step_name="sgd_step",
    buffers_cls=SGDBuffers,
    hypers=(
        Hyper("lr", 1e-3, low=0.0),
        Hyper("momentum", 0.0, low=0.0),
        Hyper("dampening", 0.0, low=0.0, high=1.0),
        Hyper("weight_decay", 0.0, low=0.0),
        Hyper("nesterov", False, kind="flag"),
        Hyper("maximize", False, kind="flag"),
    ),
    state=(StateField("momentum_buffer", when=lambda hp: hp["momentum"] > 0,
                      options=("momentum",)),),
    kernel=_kernel.RECORD,
    scalars=_scalars,
    options=_options,
    reference=_reference.sgd,
    cross_check=_cross_check,
    step_fn=sgd_step,
)
