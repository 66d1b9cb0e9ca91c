"""LAMB: buffers, the public step function and the spec."""
import math

import numpy as np

from .kernels import lamb as _kernel

from ._core import Buffers
from ._spec import Hyper, OptimizerSpec, StateField
from ._step import run_step
from . import reference as _reference


class LAMBBuffers(Buffers):
    """Parameter, gradient and the LAMB state ``exp_avg`` (m) and ``exp_avg_sq`` (v).
    ``LAMBBuffers.zeros(p, g)`` allocates it."""


def lamb_step(buffers, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0,
              trust_eps=0.0, bias_correction=True, maximize=False, layout=None,
              max_grad_norm=None, grad_scale=None, skip_nonfinite=False, groups=None,
              backend=None):
    r"""One fused, in-place LAMB step over ``buffers`` (a :class:`LAMBBuffers`).

    With ``t = buffers.step + 1`` and ``g`` the gradient (negated when ``maximize``), for
    every element::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * (g * g)
        r = (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps) + weight_decay * p
        p = p - (lr * trust) * r

    and for every tensor ``trust = ||p|| / (||r|| + trust_eps)`` (1 when either norm is 0),
    the norms of the old parameter and of ``r`` over the tensor, accumulated in float64 in a
    fixed order (the same for any thread count and for the NumPy reference). A read-only pass
    computes the norms, the update pass then writes; ``lr * trust`` is computed in float64 and
    rounded once to the buffer dtype.

    The tensors: those of ``layout`` (a :class:`fastopt.FlatParams`, or a list of tensor sizes
    in buffer order), cut further at every range or tensor a group of ``groups`` selects; with
    neither, the whole buffer is one tensor. This is the paper's algorithm (You et al. 2020,
    Algorithm 2, with ``phi`` the identity); ``bias_correction=False`` leaves out the ``1 -
    beta**t`` factors (pytorch-optimizer's ``Lamb`` default) and ``trust_eps`` is the ``eps``
    pytorch-optimizer adds to ``||r||``.

    Args:
        buffers: :class:`LAMBBuffers`.
        lr: step size, finite and >= 0.
        beta1, beta2: decay rates, in [0, 1).
        eps: finite and > 0.
        weight_decay: >= 0, added to the direction (``r``), inside the trust ratio.
        trust_eps: >= 0, added to ``||r||`` in the trust ratio.
        bias_correction: divide m and v by ``1 - beta**t``.
        maximize: ascend instead of descend.
        layout: the tensors of the trust ratios (see above).
        max_grad_norm, grad_scale, skip_nonfinite, groups: the training-loop options
            (README "Training-loop options").
        backend: ``None`` (choose), ``"cpu"`` (Numba), ``"numpy"`` (reference), ``"cuda"``.

    Returns:
        ``buffers``, updated in place, with ``buffers.step`` incremented.

    Example:
        >>> import numpy as np, fastopt
        >>> fp = fastopt.FlatParams({"W": np.ones((2, 2)), "b": np.full(2, 0.01)})
        >>> fp.grad[:] = 0.5
        >>> _ = fastopt.lamb_step(fastopt.LAMBBuffers.zeros(fp.param, fp.grad), lr=0.1,
        ...                       layout=fp)
        >>> fp.param.round(6)      # each tensor moves by lr times its own norm's share
        array([0.9  , 0.9  , 0.9  , 0.9  , 0.009, 0.009])

    Reference: You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes" (ICLR 2020).
    """
    return run_step(SPEC, buffers, backend, dict(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        trust_eps=trust_eps, bias_correction=bias_correction, maximize=maximize),
                    parallel=None, loop=(max_grad_norm, grad_scale, skip_nonfinite),
                    groups=groups, layout=layout)


def _options(hp, t):
    return dict(maximize=hp["maximize"], bias_correction=hp["bias_correction"],
                decay=hp["weight_decay"] != 0.0)


def _scalars(hp, t):
    b1, b2 = hp["beta1"], hp["beta2"]
    # step: lr until the pre-pass replaces it with lr * trust (_segment_scalars)
    return dict(step=hp["lr"], beta1=b1, omb1=1.0 - b1, beta2=b2, omb2=1.0 - b2,
                ibc1=1.0 / (1.0 - b1 ** t), ibc2=1.0 / (1.0 - b2 ** t), eps=hp["eps"],
                wd=hp["weight_decay"])


def _segment_scalars(hp, t, sums):
    """The trust ratio of each tensor from its sums of squares of p and r (float64 arrays, an
    item per tensor, or floats for one tensor: NumPy costs ~10 us a call there):
    ``||p|| / (||r|| + trust_eps)``, 1 where either norm is 0 (or NaN)."""
    if isinstance(sums[0], float):
        w, u = math.sqrt(sums[0]), math.sqrt(sums[1])
        return dict(step=hp["lr"] * (w / (u + hp["trust_eps"]) if w > 0.0 and u > 0.0
                                     else 1.0))
    w, u = np.sqrt(sums[0]), np.sqrt(sums[1])
    with np.errstate(invalid="ignore", over="ignore"):      # inf / inf: NaN, as in Python
        trust = np.divide(w, u + hp["trust_eps"], out=np.ones_like(w),
                          where=(w > 0.0) & (u > 0.0))
        return dict(step=hp["lr"] * trust)


SPEC = OptimizerSpec(
    name="lamb",
    step_name="lamb_step",
    buffers_cls=LAMBBuffers,
    hypers=(
        Hyper("lr", 1e-3, low=0.0),
        Hyper("beta1", 0.9, low=0.0, high=1.0, high_open=True),
        Hyper("beta2", 0.999, low=0.0, high=1.0, high_open=True),
        Hyper("eps", 1e-6, low=0.0, low_open=True),
        Hyper("weight_decay", 0.0, low=0.0),
        Hyper("trust_eps", 0.0, low=0.0),
        Hyper("bias_correction", True, kind="flag"),
        Hyper("maximize", False, kind="flag"),
    ),
    state=(StateField("exp_avg"), StateField("exp_avg_sq")),
    kernel=_kernel.RECORD,
    scalars=_scalars,
    options=_options,
    reference=_reference.lamb,
    step_fn=lamb_step,
    segment_scalars=_segment_scalars,
)
