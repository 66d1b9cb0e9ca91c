"""Adam and AdamW: buffers, the public step function and the kernel plumbing."""
import math

from .kernels import cpu as _kernels

from ._core import Buffers, run_step
from ._spec import BadInput, Hyper, OptimizerSpec
from . import reference as _reference


class AdamBuffers(Buffers):
    """Parameter, gradient and Adam state: ``exp_avg`` (m), ``exp_avg_sq`` (v) and, for
    AMSGrad, ``max_exp_avg_sq``."""

    optimizer = "adam"
    state_fields = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    @classmethod
    def zeros(cls, param, grad, amsgrad=False):
        """Zeroed state for ``param``/``grad`` (which are kept, not copied)."""
        fields = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
        return cls._allocate(param, grad, fields)


def adam_step(buffers, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              decoupled_weight_decay=False, amsgrad=False, maximize=False, eps_hat=False,
              backend=None):
    r"""One fused, in-place Adam / AdamW step over ``buffers`` (an :class:`AdamBuffers`).

    With ``t = buffers.step + 1`` and ``g`` the gradient (negated when ``maximize``)::

        g  = g + weight_decay * p                    # L2 (Adam), if weight_decay and not decoupled
        p  = p * (1 - lr * weight_decay)             # AdamW, if decoupled_weight_decay
        m  = beta1 * m + (1 - beta1) * g
        v  = beta2 * v + (1 - beta2) * (g * g)
        vmax = max(vmax, v); s = vmax if amsgrad else v
        p  = p - (lr / (1 - beta1**t)) * (m / (sqrt(s) * (1 / sqrt(1 - beta2**t)) + eps))

    The bracketed scalars are computed once per step, so each element costs one square root
    and one division (torch divides ``sqrt(s)`` by ``sqrt(1 - beta2**t)``: the results differ
    in the last bit at most per step, well inside the torch-parity tolerances).
    This is ``torch.optim.Adam`` / ``AdamW`` (AdamW is ``decoupled_weight_decay=True``; note
    torch's AdamW defaults to ``weight_decay=0.01``, fastopt's to 0). With ``eps_hat=True``
    the seed document's formula is used instead ("epsilon-hat": the bias correction is folded
    into the step size and ``eps`` is added to ``sqrt(v)``, not to the corrected one)::

        m  = m + (1 - beta1) * (g - m)
        v  = v + (1 - beta2) * (g * g - v)
        p  = p - lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(s) + eps)

    which, with ``eps=1e-7`` and float64 buffers, equals the seed's ``Adam.update`` bit for
    bit. Scalars such as ``1 - beta1`` and the step size are computed in float64 and rounded
    once to the buffer dtype. NaN or inf in the gradient propagates into ``p`` and the state,
    as in torch.

    Args:
        buffers: :class:`AdamBuffers`; ``amsgrad=True`` needs ``max_exp_avg_sq``.
        lr: step size, finite and >= 0.
        beta1, beta2: decay rates of the moment estimates, in [0, 1).
        eps: added to the denominator, finite and > 0.
        weight_decay: >= 0; L2 penalty, or decoupled decay with ``decoupled_weight_decay``.
        decoupled_weight_decay: AdamW.
        amsgrad: use the running maximum of ``v`` (Reddi et al., 2018).
        maximize: ascend instead of descend.
        eps_hat: the seed's formula (see above).
        backend: ``None`` (choose), ``"cpu"`` (Numba), ``"numpy"`` (reference), ``"cuda"``.

    Returns:
        ``buffers``, updated in place, with ``buffers.step`` incremented.

    Example:
        >>> import numpy as np, fastopt
        >>> p = np.ones(4, np.float32); g = np.full(4, 0.5, np.float32)
        >>> b = fastopt.AdamBuffers.zeros(p, g)
        >>> _ = fastopt.adam_step(b, lr=0.1)
        >>> p
        array([0.9, 0.9, 0.9, 0.9], dtype=float32)

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2015);
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019).
    """
    return run_step(SPEC, buffers, backend, dict(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad, maximize=maximize,
        eps_hat=eps_hat))


def _state_for(hp):
    return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if hp["amsgrad"] else ())


def _options(hp, t):
    wd = hp["weight_decay"] != 0.0
    return dict(maximize=hp["maximize"], l2=wd and not hp["decoupled_weight_decay"],
                decoupled=wd and hp["decoupled_weight_decay"], amsgrad=hp["amsgrad"],
                eps_hat=hp["eps_hat"])


def _scalars(hp, t):
    lr, b1, b2, wd = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"]
    bc1 = 1.0 - b1 ** t
    bc2_sqrt = math.sqrt(1.0 - b2 ** t)
    step_size = lr * bc2_sqrt / bc1 if hp["eps_hat"] else lr / bc1
    return (step_size, b1, 1.0 - b1, b2, 1.0 - b2, 1.0 / bc2_sqrt, hp["eps"], wd,
            1.0 - lr * wd)


def _torch(hp):
    if hp["eps_hat"]:
        return None
    return ("AdamW" if hp["decoupled_weight_decay"] else "Adam",
            dict(lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                 weight_decay=hp["weight_decay"], amsgrad=hp["amsgrad"],
                 maximize=hp["maximize"]))


SPEC = OptimizerSpec(
    name="adam",
    step_name="adam_step",
    buffers_cls=AdamBuffers,
    hypers=(
        Hyper("lr", 1e-3, "step size", low=0.0),
        Hyper("beta1", 0.9, "first-moment decay", low=0.0, high=1.0, high_open=True),
        Hyper("beta2", 0.999, "second-moment decay", low=0.0, high=1.0, high_open=True),
        Hyper("eps", 1e-8, "denominator term", low=0.0, low_open=True),
        Hyper("weight_decay", 0.0, "L2 or decoupled decay", low=0.0),
        Hyper("decoupled_weight_decay", False, "AdamW", kind="flag"),
        Hyper("amsgrad", False, "AMSGrad maximum", kind="flag"),
        Hyper("maximize", False, "ascend", kind="flag"),
        Hyper("eps_hat", False, "seed formula", kind="flag"),
    ),
    state_for=_state_for,
    zeros_kwargs=lambda hp: {"amsgrad": True} if hp["amsgrad"] else {},
    kernel_family=_kernels.adam_kernel,
    kernel_arrays=("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    scalars=_scalars,
    options=_options,
    reference=_reference.adam,
    option_grid=dict(weight_decay=[0.0, 0.01], decoupled_weight_decay=[False, True],
                     amsgrad=[False, True], maximize=[False, True], eps_hat=[False, True]),
    bad_inputs=(
        BadInput(dict(amsgrad=True), ValueError, "max_exp_avg_sq"),
    ),
    seed=("Adam", dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-7, eps_hat=True)),
    tuned=dict(lr=0.01),
    torch_kwargs=_torch,
)
