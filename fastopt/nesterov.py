"""Nesterov momentum in the textbook's form: buffers, the public step function and the spec."""
from .kernels import nesterov as _kernel

from ._core import Buffers
from ._spec import Hyper, OptimizerSpec, StateField
from ._step import run_step
from . import reference as _reference


class NesterovBuffers(Buffers):
    """Parameter, gradient and the ``velocity``. ``NesterovBuffers.zeros(p, g)``."""


def nesterov_step(buffers, *, lr=0.01, momentum=0.9, max_grad_norm=None, grad_scale=None,
                  skip_nonfinite=False, groups=None, backend=None):
    r"""One fused, in-place Nesterov-momentum step over ``buffers`` (a
    :class:`NesterovBuffers`), in the textbook's form (Bengio et al.'s reformulation, the
    ``Nesterov`` class of "Deep Learning from Scratch")::

        v = v * momentum
        v = v - lr * g
        p = p + (momentum * momentum) * v
        p = p - ((1 + momentum) * lr) * g

    The bracketed scalars are computed once per step in float64, as the textbook's Python
    does, so in float64 this is its class bit for bit (``fastopt.compat.Nesterov``). For
    torch's Nesterov use ``sgd_step(..., nesterov=True)``.

    Args:
        buffers: :class:`NesterovBuffers`.
        lr: step size, finite and >= 0.
        momentum: >= 0.
        max_grad_norm, grad_scale, skip_nonfinite, groups: the training-loop options
            (README "Training-loop options").
        backend: ``None`` (choose), ``"cpu"`` (Numba), ``"numpy"`` (reference), ``"cuda"``.

    Returns:
        ``buffers``, updated in place, with ``buffers.step`` incremented.

    Example:
        >>> import numpy as np, fastopt
        >>> p = np.ones(2); g = np.full(2, 0.5)
        >>> _ = fastopt.nesterov_step(fastopt.NesterovBuffers.zeros(p, g), lr=0.1)
        >>> p.round(6)
        array([0.8645, 0.8645])

    Reference: Bengio, Boulanger-Lewandowski & Pascanu, "Advances in Optimizing Recurrent
    Networks" (2013).
    """
    return run_step(SPEC, buffers, backend, dict(lr=lr, momentum=momentum),
                    parallel=None, loop=(max_grad_norm, grad_scale, skip_nonfinite),
                    groups=groups)


def _options(hp, t):
    return {}


def _scalars(hp, t):
    lr, mom = hp["lr"], hp["momentum"]
    return dict(lr=lr, mom=mom, mom2=mom * mom, c=(1.0 + mom) * lr)


SPEC = OptimizerSpec(
    name="nesterov",
    step_name="nesterov_step",
    buffers_cls=NesterovBuffers,
    hypers=(
        Hyper("lr", 0.01, low=0.0),
        Hyper("momentum", 0.9, low=0.0),
    ),
    state=(StateField("velocity"),),
    kernel=_kernel.RECORD,
    scalars=_scalars,
    options=_options,
    reference=_reference.nesterov,
    step_fn=nesterov_step,
)
