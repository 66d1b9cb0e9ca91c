"""A toy optimizer registered at test time: the proof that adding an optimizer touches only
its kernel record, its NumPy reference, its module (buffers, step function, spec), its test
information and one registry line, and that every registry-driven test and benchmark then
covers it.

Use as a pytest plugin (``-p toy_optimizer`` with ``tests/`` on ``PYTHONPATH``; set it in
``PYTEST_ADDOPTS`` so that nested pytest runs, e.g. the CUDA simulator suite, load it too).

The toy: a scaled-gradient step with a running gradient sum whose initial value is a
hyperparameter (state that does not start at zero)::

    g = -g if maximize;  acc = acc + g;  p = p - lr * (scale * g)
"""

from fastopt import registry, testinfo
from fastopt._core import Buffers
from fastopt._spec import Hyper, OptimizerSpec, StateField
from fastopt._step import run_step
from fastopt.kernels.record import KernelRecord, elem, loop, unpack  # noqa: F401


# ---------------------------------------------------------------- kernel record
def toy_elem(p, g, acc, scale, lr, maximize):
    if maximize:
        g = -g
    acc = acc + g
    p = p - lr * (scale * g)
    return p, acc


def toy_body(maximize):
    def toy(p, g, acc, s):
        sc = unpack(s)
        for i in loop(p.shape[0]):
            pn, an = elem(p[i], g[i], acc[i], sc, maximize)
            p[i] = pn
            acc[i] = an
    return toy


RECORD = KernelRecord(name="toy", elem=toy_elem, body=toy_body,
                      arrays=("param", "grad", "accumulator"), scalars=("lr", "scale"))


# ---------------------------------------------------------------- NumPy reference
def toy_reference(arrays, hp, t, st):
    p, g, acc = arrays["param"], arrays["grad"], arrays["accumulator"]
    if hp["maximize"]:
        g = -g
    acc += g
    p -= st(hp["lr"]) * (st(hp["scale"]) * g)


# ---------------------------------------------------------------- module
class ToyBuffers(Buffers):
    """Parameter, gradient and the running gradient sum ``accumulator``."""


def toy_step(buffers, *, lr=0.1, scale=1.0, initial=0.0, maximize=False, max_grad_norm=None,
             grad_scale=None, skip_nonfinite=False, groups=None, backend=None):
    """One toy step::

        acc = acc + g;  p = p - lr * (scale * g)

    Example:
        >>> import numpy as np
        >>> p = np.ones(2); b = ToyBuffers.zeros(p, np.ones(2), initial=0.5)
        >>> _ = toy_step(b, lr=0.5, scale=2.0); p, b.accumulator
        (array([0., 0.]), array([1.5, 1.5]))
    """
    return run_step(SPEC, buffers, backend, dict(lr=lr, scale=scale, initial=initial,
                                                 maximize=maximize),
                    loop=(max_grad_norm, grad_scale, skip_nonfinite), groups=groups)


SPEC = OptimizerSpec(
    name="toy", step_name="toy_step", buffers_cls=ToyBuffers,
    hypers=(Hyper("lr", 0.1, low=0.0), Hyper("scale", 1.0, low=0.0, low_open=True),
            Hyper("initial", 0.0, low=0.0), Hyper("maximize", False, kind="flag")),
    state=(StateField("accumulator", init=lambda hp: hp["initial"], options=("initial",)),),
    kernel=RECORD,
    scalars=lambda hp, t: dict(lr=hp["lr"], scale=hp["scale"]),
    options=lambda hp, t: dict(maximize=hp["maximize"]),
    reference=toy_reference,
    step_fn=toy_step,
)

INFO = testinfo.OptimizerInfo(option_grid=dict(maximize=[False, True], scale=[0.5, 2.0]))


def pytest_configure(config):
    registry.register(SPEC, INFO)
