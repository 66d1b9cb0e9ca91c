"""Heavy-ball Momentum (the seed's form): buffers, step function and kernel plumbing."""
from .kernels import cpu as _kernels

from ._core import Buffers, run_step
from ._spec import Hyper, OptimizerSpec
from . import reference as _reference


class MomentumBuffers(Buffers):
    """Parameter, gradient and the ``velocity`` of heavy-ball momentum."""

    optimizer = "momentum"
    state_fields = ("velocity",)

    @classmethod
    def zeros(cls, param, grad):
        """Zeroed velocity for ``param``/``grad`` (which are kept, not copied)."""
        return cls._allocate(param, grad, ["velocity"])


def momentum_step(buffers, *, lr=0.01, momentum=0.9, backend=None):
    r"""One fused, in-place heavy-ball momentum step over a :class:`MomentumBuffers`::

        v = momentum * v - lr * g
        p = p + v

    This is the seed document's ``Momentum.update`` (bitwise equal in float64). It differs
    from ``torch.optim.SGD(momentum=...)``, which accumulates ``buf = momentum * buf + g`` and
    applies ``p -= lr * buf`` (the two agree only for a constant learning rate, up to
    rounding); use :func:`fastopt.sgd_step` for torch's form.

    Args:
        buffers: :class:`MomentumBuffers`.
        lr: step size, finite and >= 0.
        momentum: velocity decay, finite and >= 0.
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
    return run_step(SPEC, buffers, backend, dict(lr=lr, momentum=momentum))


SPEC = OptimizerSpec(
    name="momentum",
    step_name="momentum_step",
    buffers_cls=MomentumBuffers,
    hypers=(
        Hyper("lr", 0.01, "step size", low=0.0),
        Hyper("momentum", 0.9, "velocity decay", low=0.0),
    ),
    state_for=lambda hp: ("velocity",),
    zeros_kwargs=lambda hp: {},
    kernel_family=_kernels.momentum_kernel,
    kernel_arrays=("param", "grad", "velocity"),
    scalars=lambda hp, t: (hp["lr"], hp["momentum"]),
    options=lambda hp, t: {},
    reference=_reference.momentum,
    option_grid=dict(momentum=[0.0, 0.9]),
    seed=("Momentum", dict(lr=0.01, momentum=0.9)),
    tuned=dict(lr=0.001, momentum=0.9),
    torch_kwargs=lambda hp: None,
)
