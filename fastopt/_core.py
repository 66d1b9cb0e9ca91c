"""Shared machinery: buffer records, validation and the step driver.

Every public ``*_step`` function is a thin wrapper around :func:`run_step`, which

1. checks the buffers' type, every hyperparameter and the arrays (dtype, shape, layout,
   aliasing, that the state an option needs exists),
2. chooses the backend (``None`` chooses, an explicit name always wins or raises),
3. casts the hyperparameters to the buffer dtype and calls one fused kernel,
4. increments ``buffers.step``.

Nothing is written before step 3, so a call that raises leaves every array and ``.step``
byte-identical.
"""
import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
BACKENDS = ("numpy", "cpu", "cuda")


# ----------------------------------------------------------------------------- arrays

def is_cuda_array(a):
    """A CUDA device array: ``__cuda_array_interface__`` (numba, CuPy, torch), or a
    device array of Numba's CUDA simulator (``__cuda_ndarray__``)."""
    return (not isinstance(a, np.ndarray)
            and (hasattr(a, "__cuda_array_interface__") or hasattr(a, "__cuda_ndarray__")))


def _device_interface(a):
    from ._cuda_backend import interface
    return interface(a)


def _describe(a):
    if isinstance(a, np.ndarray):
        return f"numpy.ndarray of dtype {a.dtype}"
    return type(a).__name__


def check_array(a, where, *, writable=True):
    """Validate one host array; returns it. Raises TypeError/ValueError naming ``where``."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{where} must be a numpy.ndarray (or a CUDA device array), "
                        f"got {_describe(a)}; fastopt never copies a buffer, so convert "
                        f"it yourself (np.ascontiguousarray(x, dtype=np.float32))")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{where} has dtype {a.dtype}; fastopt supports float32 and float64")
    if not a.flags.c_contiguous:
        raise ValueError(f"{where} is not C-contiguous; fastopt updates buffers in place "
                         f"and never copies them (use np.ascontiguousarray before building "
                         f"the buffers)")
    if writable and not a.flags.writeable:
        raise ValueError(f"{where} is read-only; fastopt updates it in place")
    return a


def check_group(named, owner):
    """Validate a dict ``{field: array}`` whose first entry is the parameter.

    All arrays must be valid, share the parameter's dtype and shape, and not overlap.
    ``grad`` may be read-only (it is never written). Returns the common dtype.
    """
    items = list(named.items())
    cuda = [is_cuda_array(a) for _, a in items]
    if any(cuda):
        from ._cuda_backend import check_device_group
        return check_device_group(named, owner)
    first_name, first = items[0]
    check_array(first, f"{owner}.{first_name}")
    for name, a in items[1:]:
        check_array(a, f"{owner}.{name}", writable=(name != "grad"))
        if a.dtype != first.dtype:
            raise TypeError(f"{owner}.{name} has dtype {a.dtype} but {owner}.{first_name} "
                            f"has dtype {first.dtype}; all buffers must share one dtype")
        if a.shape != first.shape:
            raise ValueError(f"{owner}.{name} has shape {a.shape} but {owner}.{first_name} "
                             f"has shape {first.shape}")
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            (ni, ai), (nj, aj) = items[i], items[j]
            if ai.size and aj.size and np.may_share_memory(ai, aj):
                raise ValueError(f"{owner}.{ni} and {owner}.{nj} share memory; every buffer "
                                 f"must be a separate array (an in-place update of one "
                                 f"would corrupt the other)")
    return first.dtype


# ----------------------------------------------------------------------------- buffers

class Buffers:
    """Base class of the per-optimizer buffer records.

    Attributes: ``param`` and ``grad`` (the caller's arrays, updated/read in place),
    ``step`` (number of completed steps) and the optimizer's state arrays (``None`` when the
    options in use do not need them).
    """

    optimizer = ""          # registry name, set by subclasses
    state_fields = ()       # every state array this optimizer may have

    def __init__(self, param, grad, *, step=0, **state):
        unknown = set(state) - set(self.state_fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no state field(s) "
                            f"{sorted(unknown)}; its fields are {list(self.state_fields)}")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"{type(self).__name__}.step must be a non-negative int, "
                             f"got {step!r}")
        self.param = param
        self.grad = grad
        self.step = int(step)
        for name in self.state_fields:
            setattr(self, name, state.get(name))
        check_group(self.arrays(), type(self).__name__)

    @classmethod
    def _allocate(cls, param, grad, fields):
        check_group({"param": param, "grad": grad}, cls.__name__)
        if is_cuda_array(param):
            from ._cuda_backend import zeros_like
        else:
            zeros_like = np.zeros_like
        return cls(param, grad, **{f: zeros_like(param) for f in fields})

    def arrays(self, fields=None):
        """``{name: array}`` for param, grad and the allocated state (or ``fields``)."""
        names = ("param", "grad") + tuple(
            f for f in self.state_fields if getattr(self, f) is not None)
        if fields is not None:
            names = ("param", "grad") + tuple(fields)
        return {n: getattr(self, n) for n in names}

    @property
    def dtype(self):
        return np.dtype(self.param.dtype) if not is_cuda_array(self.param) else \
            np.dtype(_device_interface(self.param)["typestr"])

    @property
    def size(self):
        return int(np.prod(self.param.shape))

    def __repr__(self):
        state = ", ".join(f for f in self.state_fields if getattr(self, f) is not None)
        return (f"{type(self).__name__}(shape={tuple(self.param.shape)}, dtype={self.dtype}, "
                f"step={self.step}, state=[{state}])")


# ----------------------------------------------------------------------------- scalars

def check_real(name, value, *, low=None, high=None, low_open=False, high_open=False,
               allow_inf=False):
    """Validate a real hyperparameter against an interval; returns it as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} "
                        f"{value!r}")
    x = float(value) + 0.0      # -0.0 -> 0.0, so that values that compare equal act equal
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {x!r}")
    bad = ((low is not None and (x < low or (low_open and x == low)))
           or (high is not None and (x > high or (high_open and x == high))))
    if bad:
        lo = "-inf" if low is None else repr(low)
        hi = "inf" if high is None else repr(high)
        interval = ("(" if low_open else "[") + f"{lo}, {hi}" + (")" if high_open else "]")
        raise ValueError(f"{name} must be in {interval}, got {x!r}")
    return x


def check_flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


# ----------------------------------------------------------------------------- driver

def choose_backend(backend, arrays):
    """``None`` chooses from where the arrays live; an explicit backend wins or raises."""
    on_device = is_cuda_array(arrays["param"])
    if backend is None:
        return "cuda" if on_device else "cpu"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS} "
                         f"or None (automatic)")
    if on_device and backend != "cuda":
        raise ValueError(f"backend={backend!r} needs host (NumPy) arrays but the buffers "
                         f"are CUDA device arrays; use backend='cuda' or None, or copy "
                         f"them to the host with fastopt.to_host(buffers)")
    if backend == "cuda" and not on_device:
        raise ValueError("backend='cuda' needs CUDA device arrays but the buffers are NumPy "
                         "arrays; move them with fastopt.to_device(buffers) first")
    return backend


class _Plan:
    """A validated array group, cached on the buffers while its arrays stay the same."""
    __slots__ = ("fields", "layout", "arrays", "dtype", "scalar_type", "flat")

    def __init__(self, fields, arrays, dtype):
        self.fields = fields
        self.arrays = arrays
        # what validation depended on, per array; strides are implied: a validated array is
        # C-contiguous, and its shape is recorded
        self.layout = tuple((name, a, a.shape, a.dtype, a.flags.writeable)
                            for name, a in arrays.items())
        self.dtype = dtype
        self.scalar_type = np.dtype(dtype).type
        self.flat = {}                # per spec: flat kernel views, built on first use

    def holds_for(self, buffers):
        """Whether ``buffers`` still hold the very arrays this plan validated, unchanged
        (an array's shape, dtype and writeable flag can be reassigned in place)."""
        for name, a, shape, dtype, writeable in self.layout:
            if (getattr(buffers, name) is not a or a.shape != shape or a.dtype != dtype
                    or a.flags.writeable != writeable):
                return False
        return True


def plan_for(buffers, fields):
    """Validate the arrays of ``buffers`` a step with state ``fields`` uses (or reuse the
    validation cached on ``buffers``, for host arrays)."""
    plan = buffers.__dict__.get("_plan")
    if plan is not None and plan.fields == fields and plan.holds_for(buffers):
        return plan
    arrays = buffers.arrays(fields)
    dtype = check_group(arrays, type(buffers).__name__)
    plan = _Plan(fields, arrays, dtype)
    if all(type(a) is np.ndarray for a in arrays.values()):
        buffers.__dict__["_plan"] = plan
    return plan


class _Call:
    """A validated call, cached on host buffers: a training loop repeats the same call, and
    the next one can skip everything but the checks that its arguments are still these."""
    __slots__ = ("spec", "backend", "values", "types", "plan", "hp", "memo", "impl")

    def __init__(self, spec, backend, values, plan, hp, memo, impl):
        self.spec, self.backend, self.values, self.plan = spec, backend, values, plan
        self.types = tuple(map(type, values))
        self.hp, self.memo, self.impl = hp, memo, impl


def prepare_step(spec, buffers, backend, hyper):
    """Validate everything for one step of ``spec``; return a no-argument callable that
    performs it. Nothing is written until the callable runs."""
    plan, hp, memo, impl = _validate(spec, buffers, backend, hyper)
    t = buffers.step + 1

    def run():
        impl(plan, hp, t, memo)
        buffers.step = t
        return buffers
    return run


def _validate(spec, buffers, backend, hyper):
    if not isinstance(buffers, spec.buffers_cls):
        raise TypeError(f"{spec.step_name}() needs {spec.buffers_cls.__name__}, got "
                        f"{type(buffers).__name__}; create them with "
                        f"fastopt.{spec.buffers_cls.__name__}.zeros(param, grad)")
    hp, fields, memo = spec.validate_cached(hyper)
    for f in fields:
        if getattr(buffers, f) is None:
            raise ValueError(spec.missing_state_message(f, hp))
    plan = plan_for(buffers, fields)
    impl = spec.implementation(choose_backend(backend, plan.arrays))
    if buffers.__dict__.get("_plan") is plan:      # host arrays: remember the whole call
        buffers.__dict__["_call"] = _Call(spec, backend, tuple(hyper.values()), plan, hp,
                                          memo, impl)
    return plan, hp, memo, impl


def run_step(spec, buffers, backend, hyper):
    """Validate everything, then run one fused step of ``spec`` on ``buffers``.

    A call identical to the previous one on the same buffers (same optimizer, backend,
    hyperparameter values and types, and the buffers still holding the very arrays that were
    validated, unchanged) reuses that validation."""
    call = getattr(buffers, "_call", None)
    if type(call) is _Call and call.spec is spec and call.backend == backend:
        values = tuple(hyper.values())
        if (call.values == values and call.types == tuple(map(type, values))
                and call.plan.holds_for(buffers)):
            t = buffers.step + 1
            call.impl(call.plan, call.hp, t, call.memo)
            buffers.step = t
            return buffers
    return prepare_step(spec, buffers, backend, hyper)()
