"""Adagrad: buffers, the public step function and the spec."""
from .kernels import adagrad as _kernel

from ._core import Buffers
from ._spec import Hyper, OptimizerSpec, StateField
from ._step import run_step
from . import reference as _reference


class AdagradBuffers(Buffers):
    """Parameter, gradient and the Adagrad state ``sum`` (the running sum of squared
    gradients, starting at ``initial_accumulator_value``).
    ``AdagradBuffers.zeros(p, g, initial_accumulator_value=0.0)`` allocates it."""


def adagrad_step(buffers, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, maximize=False,
                 max_grad_norm=None, grad_scale=None, skip_nonfinite=False, groups=None,
                 backend=None):
    r"""One fused, in-place Adagrad step over ``buffers`` (an :class:`AdagradBuffers`).

    With ``t = buffers.step + 1`` and ``g`` the gradient (negated when ``maximize``)::

        g   = g + weight_decay * p                  # if weight_decay
        s   = s + g * g
        p   = p - ((lr / (1 + (t - 1) * lr_decay)) * g) / (sqrt(s) + eps)

    This is ``torch.optim.Adagrad`` (torch multiplies ``g / (sqrt(s) + eps)`` by the step
    size: last-bit differences) and, with ``eps=1e-7``, the textbook's ``AdaGrad`` bit for bit
    (``fastopt.compat.AdaGrad``). ``initial_accumulator_value`` is where ``s`` starts: it is
    used when the buffers are allocated (``AdagradBuffers.zeros(p, g,
    initial_accumulator_value=0.1)``), not by the step.

    Args:
        buffers: :class:`AdagradBuffers`.
        lr: step size, finite and >= 0.
        lr_decay: >= 0; the step size decays as ``lr / (1 + (t - 1) * lr_decay)``.
        weight_decay: >= 0, L2 penalty added to the gradient.
        initial_accumulator_value: >= 0 (see above).
        eps: added to ``sqrt(s)``, finite and > 0.
        maximize: ascend instead of descend.
        max_grad_norm, grad_scale, skip_nonfinite, groups: the training-loop options
            (README "Training-loop options").
        backend: ``None`` (choose), ``"cpu"`` (Numba), ``"numpy"`` (reference), ``"cuda"``.

    Returns:
        ``buffers``, updated in place, with ``buffers.step`` incremented.

    Example:
        >>> import numpy as np, fastopt
        >>> p = np.ones(3); g = np.full(3, 0.5)
        >>> _ = fastopt.adagrad_step(fastopt.AdagradBuffers.zeros(p, g), lr=0.1)
        >>> p.round(6)
        array([0.9, 0.9, 0.9])

    Reference: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and
    Stochastic Optimization" (2011).
    """
    return run_step(SPEC, buffers, backend, dict(
        lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
        initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize),
                    parallel=None, loop=(max_grad_norm, grad_scale, skip_nonfinite),
                    groups=groups)


def _options(hp, t):
    return dict(maximize=hp["maximize"], l2=hp["weight_decay"] != 0.0)


def _scalars(hp, t):
    return dict(clr=hp["lr"] / (1.0 + (t - 1) * hp["lr_decay"]), wd=hp["weight_decay"],
                eps=hp["eps"])


SPEC = OptimizerSpec(
    name="adagrad",
    step_name="adagrad_step",
    buffers_cls=AdagradBuffers,
    hypers=(
        Hyper("lr", 1e-2, low=0.0),
        Hyper("lr_decay", 0.0, low=0.0),
        Hyper("weight_decay", 0.0, low=0.0),
        Hyper("initial_accumulator_value", 0.0, low=0.0),
        Hyper("eps", 1e-10, low=0.0, low_open=True),
        Hyper("maximize", False, kind="flag"),
    ),
    state=(StateField("sum", init=lambda hp: hp["initial_accumulator_value"],
                      options=("initial_accumulator_value",)),),
    kernel=_kernel.RECORD,
    scalars=_scalars,
    options=_options,
    reference=_reference.adagrad,
    step_fn=adagrad_step,
)
