"""Optimizer specification records: the data that drives the API, the tests and the benchmarks.

An :class:`OptimizerSpec` says everything fastopt knows about one optimizer: its buffers class,
its hyperparameters (defaults and valid ranges), which state each option needs, how to turn
hyperparameters into kernel scalars and flags, the CPU kernel family, the NumPy reference and
the bad inputs it must reject. ``fastopt.registry.REGISTRY`` holds one per optimizer.
"""
import dataclasses
import itertools

import numpy as np

from . import config
from ._core import check_flag, check_real


@dataclasses.dataclass(frozen=True)
class Hyper:
    """One hyperparameter: ``kind`` is ``"real"`` (with an interval) or ``"flag"``."""
    name: str
    default: object
    doc: str
    kind: str = "real"
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False

    def check(self, value):
        if self.kind == "flag":
            return check_flag(self.name, value)
        return check_real(self.name, value, low=self.low, high=self.high,
                          low_open=self.low_open, high_open=self.high_open)

    def invalid_values(self):
        """Values this hyperparameter must reject (used by the registry-driven tests)."""
        if self.kind == "flag":
            return [1, "yes", None]
        bad = [float("nan"), float("inf"), "0.1", None, True]
        if self.low is not None:
            bad.append(self.low if self.low_open else self.low - 0.5)
        if self.high is not None:
            bad.append(self.high if self.high_open else self.high + 0.5)
        return bad


@dataclasses.dataclass(frozen=True)
class BadInput:
    """A hyperparameter combination that must raise ``error`` matching ``match``.

    ``state`` names the options used to allocate the buffers (``Buffers.zeros`` keywords).
    """
    kwargs: dict
    error: type
    match: str
    state: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    name: str                  # registry key, e.g. "adam"
    step_name: str             # public function name, e.g. "adam_step"
    buffers_cls: type
    hypers: tuple              # Hyper records, in signature order
    state_for: object          # hp -> tuple of state fields the step needs
    zeros_kwargs: object       # hp -> kwargs for buffers_cls.zeros(param, grad, **kw)
    kernel_family: object      # kernels.cpu KernelFamily
    kernel_arrays: tuple       # array names in kernel order (param, grad, state...)
    scalars: object            # (hp, t) -> kernel scalars as Python floats (float64)
    options: object            # (hp, t) -> dict of compile-time flags; may depend on t
                               # only through t == 1

    reference: object          # (arrays, hp, t, scalar_type) -> None, NumPy in place
    cross_check: object = None # hp -> None, raises on an inconsistent combination
    option_grid: dict = dataclasses.field(default_factory=dict)  # name -> values to test
    bad_inputs: tuple = ()
    torch_kwargs: object = None  # hp -> (torch class name, kwargs) or None if no peer
    tuned: dict = dataclasses.field(default_factory=dict)  # settings that solve Rosenbrock
    seed: tuple = None         # (class name in fastopt.seed, equivalent step kwargs)

    # -------------------------------------------------------------- validation
    @property
    def defaults(self):
        return {h.name: h.default for h in self.hypers}

    def validate(self, hyper):
        hp = {h.name: h.check(hyper[h.name]) for h in self.hypers}
        if self.cross_check is not None:
            self.cross_check(hp)
        return hp

    def kernel_scalars(self, hp, t, scalar_type):
        """The kernel's scalars packed in one 1-D array of the buffer dtype (see
        ``kernels.loops``), each computed in float64 and rounded once."""
        return np.array(self.scalars(hp, t), dtype=scalar_type)

    def kernel_for(self, kernels, hp, t, parallel):
        """The compiled CPU kernel for these options, memoized per validated ``hp``."""
        key = (parallel, t == 1)
        kernel = kernels.get(key)
        if kernel is None:
            kernel = kernels[key] = self.kernel_family.get(parallel, **self.options(hp, t))
        return kernel

    def validate_cached(self, hyper):
        """``(validated hp, required state fields, kernel memo)``, memoized on the exact
        argument values and types (validation costs microseconds; a training loop repeats the
        same call)."""
        values = tuple(hyper.values())
        # the types are part of the key: 1 == 1.0 == True, but only some of them are valid
        key = (self.name, values, tuple(map(type, values)))
        try:
            hit = _VALIDATED.get(key)
        except TypeError:  # an unhashable argument: validate() will reject it
            key, hit = None, None
        if hit is None:
            hp = self.validate(hyper)
            hit = (hp, self.required_state(hp), {})
            if key is not None:
                if len(_VALIDATED) > 1024:
                    _VALIDATED.clear()
                _VALIDATED[key] = hit
        return hit

    def required_state(self, hp):
        return tuple(self.state_for(hp))

    def missing_state_message(self, field, hp):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.zeros_kwargs(hp).items())
        return (f"{self.step_name}() with these options needs the state array "
                f"{self.buffers_cls.__name__}.{field}, which these buffers do not have; "
                f"allocate it with fastopt.{self.buffers_cls.__name__}.zeros(param, grad"
                + (f", {opts})" if opts else ")"))

    # -------------------------------------------------------------- execution
    def implementation(self, backend):
        """A callable ``(plan, hp, t, memo)`` running one step on the validated arrays."""
        if backend == "numpy":
            return self._numpy
        if backend == "cpu":
            return self._cpu
        from ._cuda_backend import cuda_implementation
        return cuda_implementation(self)

    def flat_kernel_arrays(self, plan):
        """The kernel's array arguments as flat views; placeholders for unused state."""
        args = plan.flat.get(self.name)
        if args is None:
            placeholder = _placeholder(plan.scalar_type)
            args = plan.flat[self.name] = tuple(
                plan.arrays[n].reshape(-1) if n in plan.arrays else placeholder
                for n in self.kernel_arrays)
        return args

    def _numpy(self, plan, hp, t, memo):
        self.reference(plan.arrays, hp, t, plan.scalar_type)

    def _cpu(self, plan, hp, t, memo):
        args = self.flat_kernel_arrays(plan)
        n = args[0].shape[0]
        if n == 0:
            return
        kernel = self.kernel_for(memo, hp, t, n >= config.PARALLEL_THRESHOLD)
        kernel(*args, self.kernel_scalars(hp, t, plan.scalar_type))

    # -------------------------------------------------------------- test helpers
    def option_combinations(self):
        """Every combination of ``option_grid`` values that passes validation."""
        names = list(self.option_grid)
        out = []
        for values in itertools.product(*(self.option_grid[n] for n in names)):
            kw = dict(self.defaults)
            kw.update(zip(names, values))
            try:
                self.validate(kw)
            except (TypeError, ValueError):
                continue
            out.append({n: kw[n] for n in names})
        return out


_PLACEHOLDERS = {}
_VALIDATED = {}


def _placeholder(scalar_type):
    a = _PLACEHOLDERS.get(scalar_type)
    if a is None:
        # size 0, so nothing can ever be written to it; kept writable so that every option
        # combination compiles against the same array type
        a = _PLACEHOLDERS[scalar_type] = np.empty(0, dtype=scalar_type)
    return a
