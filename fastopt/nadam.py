"""NAdam: buffers, the public step function and the spec."""
from .kernels import nadam as _kernel

from ._core import Buffers
from ._spec import Hyper, OptimizerSpec, StateField
from ._step import run_step
from . import reference as _reference


class NAdamBuffers(Buffers):
    """Parameter, gradient and the NAdam state ``exp_avg`` (m) and ``exp_avg_sq`` (v). The
    running product of the momentum schedule is a function of the step count (computed on the
    host, see ``fastopt.reference.mu_product``), so a checkpoint's step carries it.
    ``NAdamBuffers.zeros(p, g)`` allocates it."""


def nadam_step(buffers, *, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
               momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False,
               max_grad_norm=None, grad_scale=None, skip_nonfinite=False, groups=None,
               backend=None):
    r"""One fused, in-place NAdam step over ``buffers`` (an :class:`NAdamBuffers`).

    With ``t = buffers.step + 1``, ``g`` the gradient (negated when ``maximize``),
    ``mu_k = beta1 (1 - 0.5 * 0.96**(k momentum_decay))`` and ``P_t = mu_1 ... mu_t``::

        g = g + weight_decay * p        # L2, or p = p * (1 - lr * weight_decay) if decoupled
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * (g * g)
        d = sqrt(v * (1 / (1 - beta2**t))) + eps
        p = p - (lr (1 - mu_t) / (1 - P_t)) * (g / d)
        p = p - (lr mu_{t+1} / (1 - P_t mu_{t+1})) * (m / d)

    This is ``torch.optim.NAdam`` (torch divides ``v`` by the bias correction and keeps
    ``P_t`` as a float32 tensor: last-bit differences). ``beta1`` and ``momentum_decay`` cannot
    follow a schedule (``P_t`` is computed from the step count, for constant values).

    Args:
        buffers: :class:`NAdamBuffers`.
        lr: step size, finite and >= 0.
        beta1, beta2: decay rates, in [0, 1).
        eps: finite and > 0.
        weight_decay: >= 0; L2, or decoupled with ``decoupled_weight_decay``.
        momentum_decay: >= 0, the momentum schedule's decay (psi).
        decoupled_weight_decay: AdamW-style decay (NAdamW).
        maximize: ascend instead of descend.
        max_grad_norm, grad_scale, skip_nonfinite, groups: the training-loop options
            (README "Training-loop options").
        backend: ``None`` (choose), ``"cpu"`` (Numba), ``"numpy"`` (reference), ``"cuda"``.

    Returns:
        ``buffers``, updated in place, with ``buffers.step`` incremented.

    Example:
        >>> import numpy as np, fastopt
        >>> p = np.ones(2); g = np.full(2, 0.5)
        >>> _ = fastopt.nadam_step(fastopt.NAdamBuffers.zeros(p, g), lr=0.1)
        >>> p.round(4)                   # as torch.optim.NAdam(lr=0.1)
        array([0.8944, 0.8944])

    Reference: Dozat, "Incorporating Nesterov Momentum into Adam" (2016).
    """
    return run_step(SPEC, buffers, backend, dict(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize),
                    parallel=None, loop=(max_grad_norm, grad_scale, skip_nonfinite),
                    groups=groups)


def _options(hp, t):
    wd = hp["weight_decay"] != 0.0
    return dict(maximize=hp["maximize"], l2=wd and not hp["decoupled_weight_decay"],
                decoupled=wd and hp["decoupled_weight_decay"])


def _scalars(hp, t):
    lr, b1, b2, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"]
    mu, mu_next, prod = _reference.mu_product(hp, t)
    return dict(cg=lr * (1.0 - mu) / (1.0 - prod), cm=lr * mu_next / (1.0 - prod * mu_next),
                rbc2=1.0 / (1.0 - b2 ** t), omb1=1.0 - b1, beta2=b2, omb2=1.0 - b2,
                eps=hp["eps"], wd=wd, decay=1.0 - lr * wd)


SPEC = OptimizerSpec(
    name="nadam",
    step_name="nadam_step",
    buffers_cls=NAdamBuffers,
    hypers=(
        Hyper("lr", 2e-3, low=0.0),
        Hyper("beta1", 0.9, low=0.0, high=1.0, high_open=True, schedulable=False),
        Hyper("beta2", 0.999, low=0.0, high=1.0, high_open=True),
        Hyper("eps", 1e-8, low=0.0, low_open=True),
        Hyper("weight_decay", 0.0, low=0.0),
        Hyper("momentum_decay", 4e-3, low=0.0, schedulable=False),
        Hyper("decoupled_weight_decay", False, kind="flag"),
        Hyper("maximize", False, kind="flag"),
    ),
    state=(StateField("exp_avg"), StateField("exp_avg_sq")),
    kernel=_kernel.RECORD,
    scalars=_scalars,
    options=_options,
    reference=_reference.nadam,
    step_fn=nadam_step,
)
