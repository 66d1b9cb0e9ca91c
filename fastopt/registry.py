"""The registry of optimizers: one :class:`~fastopt._spec.OptimizerSpec` per optimizer.

Tests, benchmarks, the CLI and ``fastopt``'s own namespace iterate :data:`REGISTRY`; adding an
optimizer means writing its kernel record, reference and module and listing it here (one line),
plus its entry in ``fastopt.testinfo``.
"""
from . import (adadelta, adagrad, adam, adamax, lamb, lion, momentum, nadam, nesterov, radam,
               rmsprop, sgd)

REGISTRY = {spec.name: spec for spec in (
    adam.SPEC,
    rmsprop.SPEC,
    momentum.SPEC,
    sgd.SPEC,
    adagrad.SPEC,
    adadelta.SPEC,
    adamax.SPEC,
    lion.SPEC,
    nadam.SPEC,
    radam.SPEC,
    nesterov.SPEC,
    lamb.SPEC,
)}


def get(name):
    """The spec registered under ``name``; KeyError naming the registered ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown optimizer {name!r}; registered: {sorted(REGISTRY)}") from None


def step_function(spec):
    """The public step function of ``spec`` (e.g. :func:`fastopt.adam_step`)."""
    return spec.step_fn


def register(spec, info=None):
    """Add ``spec`` (and its :class:`fastopt.testinfo.OptimizerInfo`) at run time, e.g. a
    test's toy optimizer. Every registry-driven test and benchmark picks it up."""
    if spec.name in REGISTRY and REGISTRY[spec.name] is not spec:
        raise ValueError(f"an optimizer named {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    if info is not None:
        from . import testinfo
        testinfo.INFO[spec.name] = info
    return spec
