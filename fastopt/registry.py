"""The registry of optimizers: one :class:`~fastopt._spec.OptimizerSpec` per optimizer.

Tests and benchmarks iterate :data:`REGISTRY`; adding an optimizer means adding a module with
its spec and listing it here, not writing new tests.
"""
from . import adam, momentum, rmsprop, sgd

REGISTRY = {spec.name: spec for spec in (adam.SPEC, rmsprop.SPEC, momentum.SPEC, sgd.SPEC)}


def get(name):
    """The spec registered under ``name`` (``"adam"``, ``"rmsprop"``, ``"momentum"``, ``"sgd"``)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown optimizer {name!r}; registered: {sorted(REGISTRY)}") from None


def step_function(spec):
    """The public step function of ``spec`` (e.g. :func:`fastopt.adam_step`)."""
    import fastopt
    return getattr(fastopt, spec.step_name)
