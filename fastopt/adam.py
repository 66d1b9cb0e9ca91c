"""Adam and AdamW: buffers, the public step function and the spec."""
import math

from .kernels import adam as _kernel

from ._core import Buffers
from ._spec import Hyper, OptimizerSpec, StateField
from ._step import run_step
from . import reference as _reference


class AdamBuffers(Buffers):
    """Parameter, gradient and Adam state: ``exp_avg`` (m), ``exp_avg_sq`` (v) and, for
    AMSGrad, ``max_exp_avg_sq``. ``AdamBuffers.zeros(p, g, amsgrad=False)`` allocates it."""


def adam_step(buffers, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              decoupled_weight_decay=False, amsgrad=False, maximize=False, eps_hat=False,
              max_grad_norm=None,
              grad_scale=None, skip_nonfinite=False, groups=None, backend=None):
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
    the formula of the blog's (and the textbook's) ``Adam`` class is used instead
    ("epsilon-hat": the bias correction is folded into the step size and ``eps`` is added to
    ``sqrt(v)``, not to the corrected one)::

        m  = m + (1 - beta1) * (g - m)
        v  = v + (1 - beta2) * (g * g - v)
        p  = p - lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(s) + eps)

    which, with ``eps=1e-7`` and float64 buffers, equals the blog's ``Adam.update`` bit for
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
        eps_hat: the blog's formula (see above).
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
        eps_hat=eps_hat),
                    parallel=None, loop=(max_grad_norm, grad_scale, skip_nonfinite),
                    groups=groups)


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
    return dict(step_size=step_size, beta1=b1, omb1=1.0 - b1, beta2=b2, omb2=1.0 - b2,
                rbc2_sqrt=1.0 / bc2_sqrt, eps=hp["eps"], wd=wd, decay=1.0 - lr * wd)


SPEC = OptimizerSpec(
    name="adam",
    step_name="adam_step",
    buffers_cls=AdamBuffers,
    hypers=(
        Hyper("lr", 1e-3, low=0.0),
        Hyper("beta1", 0.9, low=0.0, high=1.0, high_open=True),
        Hyper("beta2", 0.999, low=0.0, high=1.0, high_open=True),
        Hyper("eps", 1e-8, low=0.0, low_open=True),
        Hyper("weight_decay", 0.0, low=0.0),
        Hyper("decoupled_weight_decay", False, kind="flag"),
        Hyper("amsgrad", False, kind="flag"),
        Hyper("maximize", False, kind="flag"),
        Hyper("eps_hat", False, kind="flag"),
    ),
    state=(StateField("exp_avg"), StateField("exp_avg_sq"),
           StateField("max_exp_avg_sq", when=lambda hp: hp["amsgrad"], options=("amsgrad",))),
    kernel=_kernel.RECORD,
    scalars=_scalars,
    options=_options,
    reference=_reference.adam,
    step_fn=adam_step,
)
