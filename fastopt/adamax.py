"""Adamax: buffers, the public step function and the spec."""
from .kernels import adamax as _kernel

from ._core import Buffers
from ._spec import Hyper, OptimizerSpec, StateField
from ._step import run_step
from . import reference as _reference


class AdamaxBuffers(Buffers):
    """Parameter, gradient and the Adamax state ``exp_avg`` (m) and ``exp_inf`` (u, the
    exponentially weighted infinity norm). ``AdamaxBuffers.zeros(p, g)`` allocates it."""


def adamax_step(buffers, *, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                maximize=False, max_grad_norm=None, grad_scale=None, skip_nonfinite=False,
                groups=None, backend=None):
    r"""One fused, in-place Adamax step over ``buffers`` (an :class:`AdamaxBuffers`).

    With ``t = buffers.step + 1`` and ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p                     # if weight_decay
        m = m + (1 - beta1) * (g - m)
        u = max(|g| + eps, beta2 * u)                # NaN propagates
        p = p - (lr / (1 - beta1**t)) * (m / u)

    This is ``torch.optim.Adamax`` (torch's ``lerp`` gives the same ``m`` update for
    ``1 - beta1 < 0.5``).

    Args:
        buffers: :class:`AdamaxBuffers`.
        lr: step size, finite and >= 0.
        beta1, beta2: decay rates, in [0, 1).
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
        >>> _ = fastopt.adamax_step(fastopt.AdamaxBuffers.zeros(p, g), lr=0.1)
        >>> p.round(6)
        array([0.9, 0.9])

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2015), section 7.
    """
    return run_step(SPEC, buffers, backend, dict(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        maximize=maximize),
                    parallel=None, loop=(max_grad_norm, grad_scale, skip_nonfinite),
                    groups=groups)


def _options(hp, t):
    return dict(maximize=hp["maximize"], l2=hp["weight_decay"] != 0.0)


def _scalars(hp, t):
    return dict(clr=hp["lr"] / (1.0 - hp["beta1"] ** t), beta2=hp["beta2"],
                omb1=1.0 - hp["beta1"], eps=hp["eps"], wd=hp["weight_decay"])


SPEC = OptimizerSpec(
    name="adamax",
    step_name="adamax_step",
    buffers_cls=AdamaxBuffers,
    hypers=(
        Hyper("lr", 2e-3, low=0.0),
        Hyper("beta1", 0.9, low=0.0, high=1.0, high_open=True),
        Hyper("beta2", 0.999, low=0.0, high=1.0, high_open=True),
        Hyper("eps", 1e-8, low=0.0, low_open=True),
        Hyper("weight_decay", 0.0, low=0.0),
        Hyper("maximize", False, kind="flag"),
    ),
    state=(StateField("exp_avg"), StateField("exp_inf")),
    kernel=_kernel.RECORD,
    scalars=_scalars,
    options=_options,
    reference=_reference.adamax,
    step_fn=adamax_step,
)
