"""Heavy-ball Momentum (the blog's form): buffers, step function and spec."""
from .kernels import momentum as _kernel

from ._core import Buffers
from ._spec import Hyper, OptimizerSpec, StateField
from ._step import run_step
from . import reference as _reference


class MomentumBuffers(Buffers):
    """Parameter, gradient and the ``velocity`` of heavy-ball momentum
    (``MomentumBuffers.zeros(p, g)``)."""


def momentum_step(buffers, *, lr=0.01, momentum=0.9, max_grad_norm=None,
                  grad_scale=None, skip_nonfinite=False, groups=None, backend=None):
    r"""One fused, in-place heavy-ball momentum step over a :class:`MomentumBuffers`::

        v = momentum * v - lr * g
        p = p + v

    This is the blog's ``Momentum.update`` (bitwise equal in float64). It differs
    from ``torch.optim.SGD(momentum=...)``, which accumulates ``buf = momentum * buf + g`` and
    applies ``p -= lr * buf`` (the two agree only for a constant learning rate, up to
    rounding); use :func:`fastopt.sgd_step` for torch's form.

    Args:
        buffers: :class:`MomentumBuffers`.
        lr: step size, finite and >= 0.
        momentum: velocity decay, finite and >= 0.
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
        >>> p = np.zeros(2); g = np.ones(2)
        >>> b = fastopt.MomentumBuffers.zeros(p, g)
        >>> _ = fastopt.momentum_step(b, lr=0.1); _ = fastopt.momentum_step(b, lr=0.1)
        >>> p
        array([-0.29, -0.29])

    Reference: Polyak, "Some methods of speeding up the convergence of iteration methods"
    (1964).
    """
    return run_step(SPEC, buffers, backend, dict(lr=lr, momentum=momentum),
                    parallel=None, loop=(max_grad_norm, grad_scale, skip_nonfinite),
                    groups=groups)


SPEC = OptimizerSpec(
    name="momentum",
    step_name="momentum_step",
    buffers_cls=MomentumBuffers,
    hypers=(
        Hyper("lr", 0.01, low=0.0),
        Hyper("momentum", 0.9, low=0.0),
    ),
    state=(StateField("velocity"),),
    kernel=_kernel.RECORD,
    scalars=lambda hp, t: dict(lr=hp["lr"], mom=hp["momentum"]),
    options=lambda hp, t: {},
    reference=_reference.momentum,
    step_fn=momentum_step,
)
