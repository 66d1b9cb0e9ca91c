"""Optimizer specifications: what fastopt needs at run time to validate and run one optimizer.

An :class:`OptimizerSpec` holds the optimizer's buffers class, its hyperparameters (defaults
and valid ranges), its state (declared once, as :class:`StateField` records, and used by
``Buffers.zeros``, the step, checkpoints and error messages), its kernel record
(``fastopt.kernels.<name>.RECORD``), how to turn hyperparameters into the kernel's named
scalars and boolean options, and its NumPy reference. ``fastopt.registry.REGISTRY`` holds one
per optimizer. What only tests and benchmarks need (option grids, bad inputs, torch and blog
peers, tuned settings) lives in ``fastopt.testinfo``.
"""
import dataclasses
import operator

import numpy as np

from ._core import check_flag, check_real


@dataclasses.dataclass(frozen=True)
class Hyper:
    """One hyperparameter: ``kind`` is ``"real"`` (with an interval) or ``"flag"``."""
    name: str
    default: object
    kind: str = "real"
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False
    schedulable: bool = True   # False: the optimizer's host state assumes a constant value

    def check(self, value):
        if self.kind == "flag":
            return check_flag(self.name, value)
        return check_real(self.name, value, low=self.low, high=self.high,
                          low_open=self.low_open, high_open=self.high_open)

    def invalid_values(self):
        """Values this hyperparameter must reject (used by the registry-driven tests)."""
        if self.kind == "flag":
            return [1, "yes", None]
        bad = [float("nan"), float("inf"), "0.1", None, True, 10 ** 400]
        if self.low is not None:
            bad.append(self.low if self.low_open else self.low - 0.5)
        if self.high is not None:
            bad.append(self.high if self.high_open else self.high + 0.5)
        return bad


@dataclasses.dataclass(frozen=True)
class StateField:
    """One state array of an optimizer.

    ``when(hp)`` says whether a step with hyperparameters ``hp`` needs it (``None``: always);
    ``init`` is its initial value (a number, or ``init(hp)``); ``options`` names the
    hyperparameters that ``when`` and ``init`` read: they are the keywords of
    ``Buffers.zeros``."""
    name: str
    when: object = None
    init: object = 0.0
    options: tuple = ()

    def needed(self, hp):
        return self.when is None or bool(self.when(hp))

    def initial(self, hp):
        return self.init(hp) if callable(self.init) else self.init


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    name: str                  # registry key, e.g. "adam"
    step_name: str             # public function name, e.g. "adam_step"
    buffers_cls: type
    hypers: tuple              # Hyper records, in signature order
    state: tuple               # StateField records
    kernel: object             # kernels.record.KernelRecord
    scalars: object            # (hp, t) -> {scalar name: Python float (float64)}
    options: object            # (hp, t) -> {option name: bool}; may depend on t only
                               # through t == 1
    reference: object          # (arrays, hp, t, scalar_type) -> None, NumPy in place
    step_fn: object            # the public step function
    cross_check: object = None  # hp -> None, raises on an inconsistent combination
    # a kernel record with ``norms`` (a per-segment pre-pass): (hp, t, sums) -> {scalar name:
    # value}, the update's scalars that depend on the segment's sums of squares (float64,
    # one per value of ``norms``, in order); they replace those of ``scalars``
    segment_scalars: object = None

    def __post_init__(self):
        cls = self.buffers_cls
        cls.spec = self
        cls.optimizer = self.name
        cls.state_fields = tuple(f.name for f in self.state)
        unknown = set(self.zeros_options) - {h.name for h in self.hypers}
        if unknown:
            raise TypeError(f"{self.name}: state options {sorted(unknown)} are not "
                            f"hyperparameters")
        if (self.segment_scalars is None) == bool(self.kernel.norm_names):
            raise TypeError(f"{self.name}: a kernel record with norms needs segment_scalars "
                            f"in its spec, and only such a record")
        names = tuple(self.kernel.scalars)
        pick = (operator.itemgetter(*names) if len(names) > 1
                else lambda d: tuple(d[n] for n in names))
        object.__setattr__(self, "_pick_scalars", pick)

    # -------------------------------------------------------------- hyperparameters
    @property
    def defaults(self):
        return {h.name: h.default for h in self.hypers}

    def validate(self, hyper):
        unknown = set(hyper) - {h.name for h in self.hypers}
        if unknown:
            raise TypeError(f"{self.step_name}() got unknown hyperparameter(s) "
                            f"{sorted(unknown)}")
        hp = {h.name: h.check(hyper[h.name]) for h in self.hypers}
        if self.cross_check is not None:
            self.cross_check(hp)
        return hp

    def check_rounded(self, hp, dtype):
        """The hyperparameters as the kernel will see them, rounded to ``dtype``: a value that
        is valid in float64 may not be in float32 (``eps=1e-50`` rounds to 0, ``lr=1e39``
        to inf). Raises ValueError naming the hyperparameter."""
        st = np.dtype(dtype).type
        for h in self.hypers:
            if h.kind != "real":
                continue
            x = hp[h.name]
            r = float(st(x))
            if not np.isfinite(r):
                raise ValueError(f"{h.name}={x!r} overflows {np.dtype(dtype).name} (the "
                                 f"buffers' dtype)")
            if h.low_open and r <= h.low or h.high_open and r >= h.high:
                raise ValueError(f"{h.name}={x!r} rounds to {r!r} in {np.dtype(dtype).name} "
                                 f"(the buffers' dtype), outside its valid range")

    # -------------------------------------------------------------- state
    @property
    def zeros_options(self):
        """The ``Buffers.zeros`` keywords: the hyperparameters the state depends on."""
        return tuple(dict.fromkeys(o for f in self.state for o in f.options))

    def state_options(self, hp):
        """The ``Buffers.zeros`` keywords that give the state a step with ``hp`` needs."""
        return {k: hp[k] for k in self.zeros_options}

    def required_state(self, hp):
        return tuple(f.name for f in self.state if f.needed(hp))

    def allocation(self, options):
        """``[(field, initial value)]`` for ``Buffers.zeros(param, grad, **options)``, after
        checking ``options`` like a step checks them."""
        allowed = self.zeros_options
        unknown = set(options) - set(allowed)
        if unknown:
            raise TypeError(f"{self.buffers_cls.__name__}.zeros() got unknown option(s) "
                            f"{sorted(unknown)}; its options are {list(allowed)}")
        hypers = {h.name: h for h in self.hypers}
        hp = dict(self.defaults)
        hp.update({k: hypers[k].check(v) for k, v in options.items()})
        return [(f.name, f.initial(hp)) for f in self.state if f.needed(hp)]

    def missing_state_message(self, field, hp):
        kw = {k: hp[k] for k in self.zeros_options if hp[k] != self.defaults[k]}
        opts = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        return (f"{self.step_name}() with these options needs the state array "
                f"{self.buffers_cls.__name__}.{field}, which these buffers do not have; "
                f"allocate it with fastopt.{self.buffers_cls.__name__}.zeros(param, grad"
                + (f", {opts})" if opts else ")"))

    # -------------------------------------------------------------- kernel scalars
    def fill_scalars(self, hp, t, out):
        """Write the kernel's scalars for step ``t`` into ``out`` (an array of the buffer
        dtype, as :meth:`kernel_scalars` packs them; the names were checked when the step was
        prepared)."""
        out[:] = self._pick_scalars(self.scalars(hp, t))
        return out

    def fill_scalar_rows(self, hps, t, out):
        """:meth:`fill_scalars` for several hyperparameter sets at once: row ``r`` of ``out``
        (2-D, the buffer dtype) gets the scalars of ``hps[r]`` (a grouped step's rows)."""
        pick, scalars = self._pick_scalars, self.scalars
        out[:] = [pick(scalars(hp, t)) for hp in hps]
        return out

    def kernel_scalars(self, hp, t, scalar_type):
        """The kernel's scalars packed in one 1-D array of the buffer dtype, in the kernel
        record's order, each computed in float64 and rounded once."""
        named = self.scalars(hp, t)
        try:
            return np.array(self._pick_scalars(named), dtype=scalar_type)
        except KeyError:
            pass
        raise TypeError(f"{self.name}: the scalars {sorted(named)} do not match the kernel "
                        f"record's {sorted(self.kernel.scalars)}")
