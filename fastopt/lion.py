"""Lion: buffers, the public step function and the spec."""
from .kernels import lion as _kernel

from ._core import Buffers
from ._spec import Hyper, OptimizerSpec, StateField
from ._step import run_step
from . import reference as _reference


class LionBuffers(Buffers):
    """Parameter, gradient and the Lion state ``exp_avg`` (m).
    ``LionBuffers.zeros(p, g)`` allocates it."""


def lion_step(buffers, *, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0, maximize=False,
              max_grad_norm=None, grad_scale=None, skip_nonfinite=False, groups=None,
              backend=None):
    r"""One fused, in-place Lion step over ``buffers`` (a :class:`LionBuffers`).

    With ``g`` the gradient (negated when ``maximize``)::

        c = beta1 * m + (1 - beta1) * g
        p = p * (1 - lr * weight_decay)               # if weight_decay (decoupled)
        p = p - lr * sign(c)                           # sign(0) = 0
        m = beta2 * m + (1 - beta2) * g

    The update of the paper's Algorithm 2 ("EvoLved Sign Momentum"); the same as
    ``pytorch-optimizer``'s ``Lion``. Every element moves by exactly ``lr`` (times the decay),
    so Lion wants a smaller ``lr`` (3-10x) and a larger ``weight_decay`` than AdamW.

    Args:
        buffers: :class:`LionBuffers`.
        lr: step size, finite and >= 0.
        beta1: interpolation of the update direction, in [0, 1).
        beta2: decay rate of the momentum, in [0, 1).
        weight_decay: >= 0, decoupled.
        maximize: ascend instead of descend.
        max_grad_norm, grad_scale, skip_nonfinite, groups: the training-loop options
            (README "Training-loop options").
        backend: ``None`` (choose), ``"cpu"`` (Numba), ``"numpy"`` (reference), ``"cuda"``.

    Returns:
        ``buffers``, updated in place, with ``buffers.step`` incremented.

    Example:
        >>> import numpy as np, fastopt
        >>> p = np.ones(3); g = np.array([0.5, -2.0, 0.0])
        >>> _ = fastopt.lion_step(fastopt.LionBuffers.zeros(p, g), lr=0.1)
        >>> p
        array([0.9, 1.1, 1. ])

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms" (2023).
    """
    return run_step(SPEC, buffers, backend, dict(
        lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, maximize=maximize),
                    parallel=None, loop=(max_grad_norm, grad_scale, skip_nonfinite),
                    groups=groups)


def _options(hp, t):
    return dict(maximize=hp["maximize"], decoupled=hp["weight_decay"] != 0.0)


def _scalars(hp, t):
    b1, b2 = hp["beta1"], hp["beta2"]
    return dict(lr=hp["lr"], beta1=b1, omb1=1.0 - b1, beta2=b2, omb2=1.0 - b2,
                decay=1.0 - hp["lr"] * hp["weight_decay"])


SPEC = OptimizerSpec(
    name="lion",
    step_name="lion_step",
    buffers_cls=LionBuffers,
    hypers=(
        Hyper("lr", 1e-4, low=0.0),
        Hyper("beta1", 0.9, low=0.0, high=1.0, high_open=True),
        Hyper("beta2", 0.99, low=0.0, high=1.0, high_open=True),
        Hyper("weight_decay", 0.0, low=0.0),
        Hyper("maximize", False, kind="flag"),
    ),
    state=(StateField("exp_avg"),),
    kernel=_kernel.RECORD,
    scalars=_scalars,
    options=_options,
    reference=_reference.lion,
    step_fn=lion_step,
)
