"""Adadelta: buffers, the public step function and the spec."""
from .kernels import adadelta as _kernel

from ._core import Buffers
from ._spec import Hyper, OptimizerSpec, StateField
from ._step import run_step
from . import reference as _reference


class AdadeltaBuffers(Buffers):
    """Parameter, gradient and the Adadelta state ``square_avg`` and ``acc_delta``.
    ``AdadeltaBuffers.zeros(p, g)`` allocates it."""


def adadelta_step(buffers, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False,
                  max_grad_norm=None, grad_scale=None, skip_nonfinite=False, groups=None,
                  backend=None):
    r"""One fused, in-place Adadelta step over ``buffers`` (an :class:`AdadeltaBuffers`).

    With ``g`` the gradient (negated when ``maximize``)::

        g     = g + weight_decay * p                          # if weight_decay
        sq    = rho * sq + (1 - rho) * (g * g)
        delta = sqrt(acc + eps) / sqrt(sq + eps) * g
        acc   = rho * acc + (1 - rho) * (delta * delta)
        p     = p - lr * delta

    This is ``torch.optim.Adadelta`` (torch evaluates ``rho * sq`` as ``sq * rho`` and
    ``(1 - rho) * g * g`` left to right: last-bit differences).

    Args:
        buffers: :class:`AdadeltaBuffers`.
        lr: scales the update, finite and >= 0 (1.0 is the paper's method).
        rho: decay rate of the running averages, in [0, 1).
        eps: finite and > 0.
        weight_decay: >= 0, L2 penalty added to the gradient.
        maximize: ascend instead of descend.
        max_grad_norm, grad_scale, skip_nonfinite, groups: the training-loop options
            (README "Training-loop options").
        backend: ``None`` (choose), ``"cpu"`` (Numba), ``"numpy"`` (reference), ``"cuda"``.

    Returns:
        ``buffers``, updated in place, with ``buffers.step`` incremented.

    Example:
        >>> import numpy as np, fastopt
        >>> p = np.ones(2); g = np.full(2, 0.5)
        >>> _ = fastopt.adadelta_step(fastopt.AdadeltaBuffers.zeros(p, g))
        >>> p.round(6)
        array([0.996838, 0.996838])

    Reference: Zeiler, "ADADELTA: An Adaptive Learning Rate Method" (2012).
    """
    return run_step(SPEC, buffers, backend, dict(
        lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize),
                    parallel=None, loop=(max_grad_norm, grad_scale, skip_nonfinite),
                    groups=groups)


def _options(hp, t):
    return dict(maximize=hp["maximize"], l2=hp["weight_decay"] != 0.0)


def _scalars(hp, t):
    return dict(lr=hp["lr"], rho=hp["rho"], omr=1.0 - hp["rho"], eps=hp["eps"],
                wd=hp["weight_decay"])


SPEC = OptimizerSpec(
    name="adadelta",
    step_name="adadelta_step",
    buffers_cls=AdadeltaBuffers,
    hypers=(
        Hyper("lr", 1.0, low=0.0),
        Hyper("rho", 0.9, low=0.0, high=1.0, high_open=True),
        Hyper("eps", 1e-6, low=0.0, low_open=True),
        Hyper("weight_decay", 0.0, low=0.0),
        Hyper("maximize", False, kind="flag"),
    ),
    state=(StateField("square_avg"), StateField("acc_delta")),
    kernel=_kernel.RECORD,
    scalars=_scalars,
    options=_options,
    reference=_reference.adadelta,
    step_fn=adadelta_step,
)
