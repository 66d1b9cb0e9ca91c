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
from ._rows import own_step


def distinct(items):
    """``(unique, which)``: the distinct objects of ``items`` by identity, in first-seen order,
    and ``which``, a list with the position in ``unique`` of each item (the rows of a grouped
    step: a row per tensor repeats its group's hyperparameter dict)."""
    first, unique = {}, []
    which = [first.setdefault(id(x), len(first)) for x in items]
    if len(first) == len(items):
        return list(items), which
    for x in items:
        if len(unique) == first[id(x)]:
            unique.append(x)
    return unique, which


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
    # values}, the update's scalars that depend on a segment's sums of squares; ``sums`` has
    # a float64 array per name of the record's ``norm_names`` (in order), an item per segment
    # stepped with ``hp``, and each value is an array of an item per segment (or one value
    # for all); Python floats in and out when the step has one segment (a NumPy call costs
    # ~1 us); they replace those of ``scalars`` (``fill_segment_rows``)
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
        object.__setattr__(self, "_scalar_index", {n: i for i, n in enumerate(names)})

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
        out[:] = self._pick_scalars(self.scalars(hp, own_step(hp, t)))
        return out

    def fill_scalar_rows(self, hps, t, out, unique_which=None, lagging=True):
        """:meth:`fill_scalars` for several hyperparameter sets at once: row ``r`` of ``out``
        (2-D, the buffer dtype) gets the scalars of ``hps[r]`` (a grouped step's rows), each
        distinct set (:func:`distinct`: a row per tensor repeats its group's) computed once.
        ``unique_which``: ``distinct(hps)``, when the caller keeps it (the same rows at every
        step). ``lagging=False``: the caller knows that no row counts its own steps
        (``steps_behind``; its count is then not looked up, ~0.05 us a row)."""
        pick, scalars = self._pick_scalars, self.scalars
        unique, which = distinct(hps) if unique_which is None else unique_which
        rows = hps if len(unique) == len(hps) else unique
        values = ([pick(scalars(hp, own_step(hp, t))) for hp in rows] if lagging
                  else [pick(scalars(hp, t)) for hp in rows])
        if rows is hps:
            out[:] = values
        else:
            out[:] = np.array(values, out.dtype)[which]
        return out

    def step_options(self, hp, t):
        """The kernel's options for ``hp`` at the buffers' step ``t`` (a grouped row's at its
        own step, :func:`own_step`)."""
        return self.options(hp, own_step(hp, t))

    def option_kinds(self, hps, t):
        """``{options: [i, ...]}``: the rows ``hps[i]`` of each distinct option combination at
        step ``t`` (the options of each distinct set computed once), the rows in order."""
        unique, which = distinct(hps)
        options = [tuple(self.step_options(hp, t).items()) for hp in unique]
        kinds = {}
        for i, j in enumerate(which):
            kinds.setdefault(options[j], []).append(i)
        return kinds

    def fill_segment_rows(self, hps, t, sums, out):
        """Write what ``segment_scalars`` derives from each segment's sums of squares into the
        segment's row of packed scalars: row ``i`` of ``out`` (2-D, the buffer dtype, each
        value rounded once) from ``sums[i]`` (float64, in the order of the record's
        ``norm_names``) and ``hps[i]``. ``segment_scalars`` is called once per distinct
        hyperparameter set, with a float64 array per sum (its segments' values, in order), or
        with floats when there is one segment in all."""
        sums = np.asarray(sums, np.float64).reshape(len(hps), -1)
        if len(hps) == 1:           # one tensor: floats
            for name, value in self.segment_scalars(hps[0], own_step(hps[0], t),
                                                    tuple(sums[0].tolist())).items():
                out[0, self._scalar_index[name]] = value
            return out
        unique, which = distinct(hps)
        if len(unique) == 1:
            parts = [(unique[0], slice(None))]
        else:
            which = np.array(which)
            order = np.argsort(which, kind="stable")
            cuts = np.searchsorted(which[order], np.arange(len(unique) + 1))
            parts = [(hp, order[cuts[j]:cuts[j + 1]]) for j, hp in enumerate(unique)]
        index = self._scalar_index
        for hp, members in parts:
            values = self.segment_scalars(hp, own_step(hp, t), tuple(sums[members].T))
            for name, value in values.items():
                out[members, index[name]] = value
        return out

    def kernel_scalars(self, hp, t, scalar_type):
        """The kernel's scalars packed in one 1-D array of the buffer dtype, in the kernel
        record's order, each computed in float64 and rounded once."""
        named = self.scalars(hp, own_step(hp, t))
        try:
            return np.array(self._pick_scalars(named), dtype=scalar_type)
        except KeyError:
            pass
        raise TypeError(f"{self.name}: the scalars {sorted(named)} do not match the kernel "
                        f"record's {sorted(self.kernel.scalars)}")
