"""The step driver and its one cache.

Every public ``*_step`` function calls :func:`run_step`, which

1. validates everything (the buffers' type and step counter, every hyperparameter, also as
   rounded to the buffer dtype, the state the options need, every array: dtype, shape,
   layout, writability, no overlap, one device), chooses the backend
   (``fastopt._backends``) and builds a runner: a :class:`Prepared` step;
2. runs it and increments ``buffers.step``.

Nothing is written before step 2, so a call that raises leaves every array and ``.step``
byte-identical.

The cache: a :class:`Prepared` step is remembered on its buffers object (one per buffers,
host or device) and reused only when :meth:`Prepared.matches` says that the next call is the
same call: same optimizer, backend, ``parallel``, hyperparameter values and types, and the
buffers still holding the very arrays that were validated, with the same shape, strides, dtype
and writeable flag (device arrays: the same pointer, shape, strides, type and read-only flag).
Anything else takes the full path. A training loop repeats the same call, so it pays for the
validation once.
"""
import threading

import numpy as np

from . import _backends
from ._core import check_group, check_step, is_cuda_array


def _device_key(a):
    from ._cuda_backend import interface
    cai = interface(a)
    return (cai["data"], tuple(cai["shape"]), cai.get("strides"), cai["typestr"])


class Prepared:
    """One validated call of a step function on one buffers object."""
    __slots__ = ("spec", "backend", "parallel", "values", "types", "host", "device", "run",
                 "schedules", "template", "dtype")

    def __init__(self, spec, backend, parallel, values, arrays, run, schedules=None,
                 template=None, dtype=None):
        self.spec, self.backend, self.parallel, self.run = spec, backend, parallel, run
        self.schedules, self.template, self.dtype = schedules, template, dtype
        self.values = values
        self.types = tuple(map(type, values))
        self.host, self.device = [], []
        for name, a in arrays.items():
            if isinstance(a, np.ndarray):
                # the gradient may be read-only: only the arrays a step writes keep their flag
                self.host.append((name, a, a.shape, a.strides, a.dtype, name != "grad"))
            else:
                self.device.append((name, a, _device_key(a)))

    def matches(self, spec, buffers, backend, parallel, values):
        """Whether a call with these arguments on ``buffers`` is this very call."""
        if (self.spec is not spec or self.values != values or self.backend != backend
                or self.parallel != parallel or self.types != tuple(map(type, values))):
            return False
        for name, a, shape, strides, dtype, writable in self.host:
            if (getattr(buffers, name) is not a or a.shape != shape or a.strides != strides
                    or (a.dtype is not dtype and a.dtype != dtype)
                    or (writable and not a.flags.writeable)):
                return False
        for name, a, key in self.device:
            if getattr(buffers, name) is not a or _device_key(a) != key:
                return False
        return True


    def scheduled_hp(self, step):
        """The hyperparameters of this call at ``step``, its schedules evaluated, validated
        like any call (raises before anything is written)."""
        return _checked_hp(self.spec, _evaluate(self.template, self.schedules, step),
                           self.dtype, step + 1)


def _schedules(spec, hyper):
    """The hyperparameters given as schedules (callables); flags cannot be."""
    found = {k: v for k, v in hyper.items() if callable(v)}
    if found:
        kinds = {h.name: h.kind for h in spec.hypers}
        flags = sorted(k for k in found if kinds.get(k) != "real")
        if flags:
            raise TypeError(f"{spec.step_name}(): {', '.join(flags)} cannot follow a schedule "
                            f"(only real hyperparameters can; flags are compile-time options)")
    return found


def _evaluate(hyper, schedules, step):
    return {k: (schedules[k](step) if k in schedules else v) for k, v in hyper.items()}


def _checked_hp(spec, hyper, dtype, t):
    hp = spec.validate(hyper)
    spec.check_rounded(hp, dtype)
    scalars = spec.kernel_scalars(hp, t, np.dtype(dtype).type)
    if not np.isfinite(scalars).all():
        named = dict(zip(spec.kernel.scalars, scalars.tolist()))
        raise ValueError(f"{spec.step_name}(): these hyperparameters give a non-finite kernel "
                         f"scalar in {np.dtype(dtype).name} ({named})")
    return hp


def prepare(spec, buffers, backend, hyper, parallel=None):
    """The :class:`Prepared` step for this call: the one cached on ``buffers`` when it
    matches, else a newly validated one (which replaces it). Raises before any write."""
    values = tuple(hyper.values())
    prep = getattr(buffers, "_prepared", None)
    if type(prep) is Prepared and prep.matches(spec, buffers, backend, parallel, values):
        return prep
    prep = _validate(spec, buffers, backend, hyper, parallel, values)
    buffers.__dict__["_prepared"] = prep
    return prep


def _validate(spec, buffers, backend, hyper, parallel, values):
    if not isinstance(buffers, spec.buffers_cls):
        raise TypeError(f"{spec.step_name}() needs {spec.buffers_cls.__name__}, got "
                        f"{type(buffers).__name__}; create them with "
                        f"fastopt.{spec.buffers_cls.__name__}.zeros(param, grad)")
    owner = type(buffers).__name__
    step = check_step(buffers.step, owner)
    schedules = _schedules(spec, hyper)
    template = dict(hyper)
    if schedules:
        hyper = _evaluate(hyper, schedules, step)
    hp = spec.validate(hyper)
    parallel = _backends.check_parallel(parallel)
    fields = spec.required_state(hp)
    for f in fields:
        if getattr(buffers, f) is None:
            raise ValueError(spec.missing_state_message(f, hp))
    arrays = buffers.arrays(fields)
    dtype = check_group(arrays, owner)
    hp = _checked_hp(spec, hyper, dtype, step + 1)
    name = _backends.choose(backend, is_cuda_array(arrays["param"]))
    run = _backends.runner(spec, name, arrays, dtype, hp, parallel)
    return Prepared(spec, backend, parallel, values, arrays, run, schedules or None, template,
                    dtype)


def run_step(spec, buffers, backend, hyper, parallel=None):
    """Validate (or reuse the validation of the same call), then run one fused step of
    ``spec`` on ``buffers``; returns ``buffers``."""
    lock = getattr(buffers, "_lock", None)
    if lock is None:                      # not buffers: the validation says what is wrong
        _validate(spec, buffers, backend, hyper, parallel, tuple(hyper.values()))
        lock = buffers.__dict__.setdefault("_lock", threading.Lock())   # made without __init__
    lock.acquire()         # (cheaper than a with-statement on the hot path)
    try:
        prep = getattr(buffers, "_prepared", None)
        values = tuple(hyper.values())
        if (type(prep) is not Prepared
                or not prep.matches(spec, buffers, backend, parallel, values)):
            prep = prepare(spec, buffers, backend, hyper, parallel)
        step = buffers.step
        t = (step if type(step) is int and step >= 0
             else check_step(step, type(buffers).__name__)) + 1
        if prep.schedules is None:
            prep.run(t)
        else:
            prep.run(t, prep.scheduled_hp(t - 1))
        buffers.step = t
    finally:
        lock.release()
    return buffers


def prepare_step(spec, buffers, backend, hyper, parallel=None):
    """Validate everything for one step; return a no-argument callable that performs it
    (nothing is written until it runs). Used to validate several buffers before stepping
    any of them."""
    prep = prepare(spec, buffers, backend, hyper, parallel)
    t = check_step(buffers.step, type(buffers).__name__) + 1
    hp = None if prep.schedules is None else prep.scheduled_hp(t - 1)

    def run():
        with buffers._lock:
            if buffers.step != t - 1:
                raise RuntimeError(f"{type(buffers).__name__} were stepped between this "
                                   f"step's validation and its run")
            if hp is None:
                prep.run(t)
            else:
                prep.run(t, hp)
            buffers.step = t
        return buffers
    return run


def step(spec, buffers, *, backend=None, parallel=None, **hyper):
    """One step of ``spec`` with ``hyper`` on top of its defaults; ``parallel`` forces the
    CPU kernel's parallel (True) or serial (False) twin, for benchmarks."""
    kw = dict(spec.defaults)
    kw.update(hyper)
    return run_step(spec, buffers, backend, kw, parallel)
