"""Validation and the buffer records, shared by every optimizer.

* :func:`check_array` / :func:`check_group`: the arrays of one step (dtype, shape, layout,
  writability, no overlap), host or device;
* :func:`check_real` / :func:`check_flag` / :func:`check_step`: hyperparameters and the step
  counter;
* :class:`Buffers`: the base of the per-optimizer buffer records. Which state arrays an
  optimizer has is declared once, in its spec (``fastopt._spec.StateField``), and attached to
  its buffers class by the spec.

The step driver (``fastopt._step``) runs every check before anything is written.
"""
import math
import numbers
import threading

import numpy as np

from .kernels.record import LOW_GRAD_DTYPES, low_grad_name

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------- arrays

def is_cuda_array(a):
    """A CUDA device array: ``__cuda_array_interface__`` (numba, CuPy, torch), or a
    device array of Numba's CUDA simulator (``__cuda_ndarray__``)."""
    return (not isinstance(a, np.ndarray)
            and (hasattr(a, "__cuda_array_interface__") or hasattr(a, "__cuda_ndarray__")))


def _device_interface(a):
    from ._cuda_backend import interface
    return interface(a)


def check_step(step, owner):
    """The step counter: a non-negative Python int (``numpy`` integers are converted; floats,
    bools and anything else are refused). Returns it as an int."""
    if type(step) is int and step >= 0:
        return step
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
        raise TypeError(f"{owner}.step must be a non-negative int, got "
                        f"{type(step).__name__} {step!r}")
    if step < 0:
        raise ValueError(f"{owner}.step must be a non-negative int, got {step!r}")
    return int(step)


def _describe(a):
    if isinstance(a, np.ndarray):
        return f"numpy.ndarray of dtype {a.dtype}"
    return type(a).__name__


def check_array(a, where, *, writable=True, bits=False, low=False):
    """Validate one host array; returns it. Raises TypeError/ValueError naming ``where``.
    ``bits``: bfloat16 state (``uint16`` bit patterns) is accepted too; ``low``: a
    low-precision gradient (``uint16`` bfloat16 bits or ``float16``, :data:`LOW_GRAD_DTYPES`)
    is."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{where} must be a numpy.ndarray (or a CUDA device array), "
                        f"got {_describe(a)}; fastopt never copies a buffer, so convert "
                        f"it yourself (np.ascontiguousarray(x, dtype=np.float32))")
    if a.dtype not in FLOAT_DTYPES and not (bits and a.dtype in (np.uint16, np.uint8)) \
            and not (low and a.dtype in LOW_GRAD_DTYPES):
        raise TypeError(f"{where} has dtype {a.dtype}; fastopt supports float32 and float64"
                        + (" (and uint16: bfloat16 state bits; uint8: 8-bit state codes)"
                           if bits else "")
                        + (" (and, for float32 parameters, uint16: bfloat16 bits, or float16)"
                           if low else ""))
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
        state = name not in ("param", "grad")
        check_array(a, f"{owner}.{name}", writable=(name != "grad"), bits=state,
                    low=(name == "grad"))
        if name == "grad" and a.dtype in LOW_GRAD_DTYPES:     # read widened by the step
            if first.dtype != np.float32:
                raise TypeError(f"{owner}.{name} is a {low_grad_name(a.dtype)} gradient but "
                                f"{owner}.{first_name} has dtype {first.dtype}; a "
                                f"low-precision gradient needs float32 parameters (master "
                                f"weights)")
        elif a.dtype == np.uint16:          # bfloat16 state (fastopt.precision)
            if first.dtype != np.float32:
                raise TypeError(f"{owner}.{name} holds bfloat16 state (uint16 bits) but "
                                f"{owner}.{first_name} has dtype {first.dtype}; bfloat16 "
                                f"state needs float32 parameters")
        elif a.dtype == np.uint8:           # 8-bit state codes (fastopt.quantization)
            pass
        elif a.dtype != first.dtype:
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


def check_param_copy(copy, named, owner):
    """Validate ``buffers.param_copy`` against the validated arrays ``named``: a ``uint16``
    array (bfloat16 bits) or a ``float16`` array of the parameter's shape, on
    the parameter's side (host or the same CUDA device), C-contiguous, writable, sharing
    memory with none of them; the parameter float32."""
    param = named["param"]
    if is_cuda_array(copy) or is_cuda_array(param):
        if not (is_cuda_array(copy) and is_cuda_array(param)):
            raise TypeError(f"{owner}.param_copy and {owner}.param must both be host arrays "
                            f"or both CUDA arrays, got {_describe(copy)} and "
                            f"{_describe(param)}")
        from ._cuda_backend import _interface, check_device_group
        cdt = np.dtype(_interface(copy, f"{owner}.param_copy")["typestr"])
        pdt = np.dtype(_interface(param, f"{owner}.param")["typestr"])
        if cdt not in (np.uint16, np.float16):
            raise TypeError(f"{owner}.param_copy must be a uint16 array of bfloat16 bits or a "
                            f"float16 array, got dtype {cdt}")
        if pdt != np.float32:
            kind = "float16" if cdt == np.float16 else "bfloat16"
            raise TypeError(f"{owner}.param_copy ({kind}) needs float32 parameters, got "
                            f"{pdt}")
        check_device_group(dict(named, param_copy=copy), owner)   # shape, layout, overlap
        return copy
    if not isinstance(copy, np.ndarray) or copy.dtype not in (np.uint16, np.float16):
        raise TypeError(f"{owner}.param_copy must be a numpy uint16 array of bfloat16 bits "
                        f"(fastopt.to_bfloat16 makes one) or a float16 array, got "
                        f"{_describe(copy)}")
    if param.dtype != np.float32:
        kind = "float16" if copy.dtype == np.float16 else "bfloat16"
        raise TypeError(f"{owner}.param_copy ({kind}) needs float32 parameters, got "
                        f"{param.dtype}")
    if copy.shape != param.shape:
        raise ValueError(f"{owner}.param_copy has shape {copy.shape} but {owner}.param has "
                         f"shape {param.shape}")
    if not copy.flags.c_contiguous:
        raise ValueError(f"{owner}.param_copy is not C-contiguous")
    if not copy.flags.writeable:
        raise ValueError(f"{owner}.param_copy is read-only; every step writes it")
    for name, a in named.items():
        if copy.size and a.size and np.may_share_memory(copy, a):
            raise ValueError(f"{owner}.param_copy and {owner}.{name} share memory")
    return copy


def check_8bit_scales(buffers, arrays, owner):
    """``(block_size, {field: scales})`` for the 8-bit state arrays (``uint8`` codes) among the
    validated ``arrays``, or None when there are none: ``buffers.block_size`` an int >= 1,
    ``buffers.state_absmax[field]`` a writable C-contiguous 1-D float32 array of one scale per
    block, sharing memory with no other array."""
    fields = [f for f, a in arrays.items() if getattr(a, "dtype", None) == np.uint8]
    if not fields:
        return None
    block = buffers.block_size
    if isinstance(block, (bool, np.bool_)) or not isinstance(block, numbers.Integral) \
            or block < 1:
        raise ValueError(f"{owner}.block_size must be an int >= 1 for 8-bit state, got "
                         f"{block!r}")
    own = buffers.state_absmax
    if not isinstance(own, dict):
        raise TypeError(f"{owner}.state_absmax must be a dict {{field: float32 scales}} for "
                        f"8-bit state, got {type(own).__name__}")
    n = int(np.prod(arrays["param"].shape))
    blocks = -(-n // int(block))
    scales = {}
    for f in fields:
        a = own.get(f)
        where = f"{owner}.state_absmax[{f!r}]"
        if is_cuda_array(arrays["param"]):      # device buffers: device scales
            from ._cuda_backend import interface
            cai = interface(a) if not isinstance(a, np.ndarray) else None
            if cai is None or np.dtype(cai["typestr"]) != np.float32 \
                    or tuple(cai["shape"]) != (blocks,):
                raise TypeError(f"{where} must be a 1-D float32 CUDA device array of "
                                f"{blocks} scales (one per block), got {_describe(a)}")
            scales[f] = a
            continue
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 1:
            raise TypeError(f"{where} must be a 1-D float32 numpy array (one scale per "
                            f"block), got {getattr(a, 'dtype', type(a).__name__)}")
        if a.shape[0] != blocks:
            raise ValueError(f"{where} has {a.shape[0]} scales but {n} elements in blocks of "
                             f"{block} need {blocks}")
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{where} must be C-contiguous and writable")
        for name, other in list(arrays.items()) + list(scales.items()):
            if a.size and other.size and np.may_share_memory(a, other):
                raise ValueError(f"{where} shares memory with {name}")
        scales[f] = a
    return int(block), scales


# ----------------------------------------------------------------------------- buffers

class _LastStep:
    """``grad_norm`` / ``found_inf`` of :class:`Buffers`: the value the last step with
    ``max_grad_norm`` / ``skip_nonfinite`` set. A clipped CUDA step leaves its norm on the
    device (``Buffers._norm_pending``); reading either attribute then copies it to the host
    (waiting for the step's reduction pass) once."""

    def __init__(self, name, default):
        self.name, self.default = name, default

    def __get__(self, obj, owner=None):
        if obj is None:
            return self.default
        d = obj.__dict__
        if "_pending_norm" in d:
            obj._resolve_norm()
        return d.get(self.name, self.default)

    def __set__(self, obj, value):
        if "_pending_norm" in obj.__dict__:
            obj._resolve_norm()
        obj.__dict__[self.name] = value


class Buffers:
    """Base class of the per-optimizer buffer records.

    Attributes: ``param`` and ``grad`` (the caller's arrays, updated/read in place),
    ``step`` (number of completed steps) and the optimizer's state arrays (``None`` when the
    options in use do not need them). ``spec``, ``optimizer`` and ``state_fields`` are set on
    each subclass by its :class:`~fastopt._spec.OptimizerSpec`.
    """

    spec = None             # the optimizer's spec
    optimizer = ""          # registry name
    state_fields = ()       # every state array this optimizer may have
    grad_norm = _LastStep("grad_norm", None)   # the last step's gradient norm (with
    # max_grad_norm / skip_nonfinite), and whether that step found a non-finite gradient
    found_inf = _LastStep("found_inf", False)
    skipped_steps = 0       # steps skipped by skip_nonfinite
    rounding_seed = None    # bfloat16 state: None rounds to nearest, an int stochastically
    param_copy = None       # bfloat16 bits (uint16) or float16 copy of the parameter, written
                            # by every step
    state_absmax = None     # 8-bit state: {field: float32 scale per block}
    block_size = None       # 8-bit state: elements per block

    def __init__(self, param, grad, *, step=0, **state):
        owner = type(self).__name__
        unknown = set(state) - set(self.state_fields)
        if unknown:
            raise TypeError(f"{owner} has no state field(s) {sorted(unknown)}; its fields "
                            f"are {list(self.state_fields)}")
        step = check_step(step, owner)
        arrays = {"param": param, "grad": grad}
        arrays.update((n, state[n]) for n in self.state_fields if state.get(n) is not None)
        check_group(arrays, owner)
        self.param = param
        self.grad = grad
        self.step = step
        for name in self.state_fields:
            setattr(self, name, state.get(name))
        # steps, saves and loads of one buffers object take turns (kernels release the GIL,
        # so two threads stepping the same buffers would otherwise race on the elements and
        # lose increments of .step)
        self._lock = threading.Lock()

    def _norm_pending(self, norm, inv):
        """The last step's gradient norm is ``sqrt(norm.total()) * inv``, still on the
        device (``_cuda_backend.DeviceNorm``): read when ``grad_norm`` or ``found_inf`` is."""
        d = self.__dict__
        d.pop("grad_norm", None)
        d.pop("found_inf", None)
        d["_pending_norm"] = (norm, inv)

    def _resolve_norm(self):
        norm, inv = self.__dict__.pop("_pending_norm")
        value = math.sqrt(norm.total()) * inv
        self.__dict__["grad_norm"] = value
        self.__dict__["found_inf"] = not math.isfinite(value)

    def __getstate__(self):
        if "_pending_norm" in self.__dict__:
            self._resolve_norm()
        state = dict(self.__dict__)
        state.pop("_lock", None)
        state.pop("_prepared", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @classmethod
    def zeros(cls, param, grad, state_dtype=None, stochastic_rounding=False, seed=0,
              block_size=256, min_8bit_size=4096, **options):
        """Buffers for ``param``/``grad`` (kept, not copied) with the state that ``options``
        need, at its initial value (zero unless the optimizer says otherwise). ``options``
        are the hyperparameters that decide the state (e.g. ``amsgrad=True`` for Adam), checked
        like a step checks them; ``cls.spec.zeros_options`` lists them. ``state_dtype``:
        ``None`` (the parameter's dtype) or ``"bfloat16"`` (float32 parameters, host or CUDA
        arrays; the state is stored as ``uint16`` bit patterns, see :mod:`fastopt.precision`).
        ``stochastic_rounding=True`` (bfloat16 state only) rounds the stored state
        stochastically from a hash of (``seed``, step, element index): reproducible, and the
        same for any thread count (``buffers.rounding_seed`` holds the seed).
        ``state_dtype="int8"``: block-wise 8-bit state (float32 or float64 parameters, host
        arrays): ``uint8`` codes of the dynamic map plus a float32 absmax per ``block_size``
        elements (``buffers.state_absmax``, see :mod:`fastopt.quantization`); a buffer of fewer
        than ``min_8bit_size`` elements keeps its state in the parameter's dtype. The gradient
        of float32 parameters (host arrays) may be bfloat16 bits (``uint16``) or ``float16``:
        every step reads it widened to float32 (exact) in the same pass."""
        fields = cls.spec.allocation(options)
        check_group({"param": param, "grad": grad}, cls.__name__)
        if state_dtype is not None and not (isinstance(state_dtype, str)
                                            and state_dtype in ("float32", "float64",
                                                                "bfloat16", "int8")):
            raise ValueError(f"{cls.__name__}.zeros(): state_dtype must be None, 'float32', "
                             f"'float64', 'bfloat16' or 'int8', got {state_dtype!r}")
        for name, value in (("block_size", block_size), ("min_8bit_size", min_8bit_size)):
            if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
                    or value < (1 if name == "block_size" else 0)):
                raise ValueError(f"{cls.__name__}.zeros(): {name} must be an int >= "
                                 f"{1 if name == 'block_size' else 0}, got {value!r}")
        if state_dtype == "int8":
            if is_cuda_array(param) and int(block_size) > 1024:
                raise NotImplementedError(f"{cls.__name__}.zeros(): 8-bit state on CUDA "
                                          f"takes blocks of at most 1024 elements (one thread "
                                          f"per element), got block_size={block_size}")
            if stochastic_rounding:
                raise ValueError(f"{cls.__name__}.zeros(): stochastic_rounding needs "
                                 f"state_dtype='bfloat16'")
            if int(np.prod(param.shape)) >= min_8bit_size:
                return cls._zeros_8bit(param, grad, fields, int(block_size))
            state_dtype = None          # a small buffer: full-precision state (documented)
        own = np.dtype(param.dtype).name if not is_cuda_array(param) else None
        if state_dtype in ("float32", "float64") and own is not None and state_dtype != own:
            raise ValueError(f"{cls.__name__}.zeros(): state_dtype={state_dtype!r} differs "
                             f"from the parameter's {own}; state is the parameter's dtype or "
                             f"'bfloat16'")
        if state_dtype == "bfloat16":
            if np.dtype(param.dtype) != np.float32:
                raise TypeError(f"{cls.__name__}.zeros(): bfloat16 state needs float32 "
                                f"parameters, got {np.dtype(param.dtype)}")
            from .precision import to_bfloat16

            def full_like(a, value):
                bits = np.full(a.shape, to_bfloat16(np.float32(value)), np.uint16)
                if is_cuda_array(a):
                    from ._cuda_backend import _gpu
                    return _gpu().to_device(bits)
                return bits
        elif is_cuda_array(param):
            from ._cuda_backend import full_like
        else:
            def full_like(a, value):
                return np.full_like(a, value)
        if not isinstance(stochastic_rounding, (bool, np.bool_)):
            raise TypeError(f"{cls.__name__}.zeros(): stochastic_rounding must be True or "
                            f"False, got {stochastic_rounding!r}")
        if stochastic_rounding:
            if state_dtype != "bfloat16":
                raise ValueError(f"{cls.__name__}.zeros(): stochastic_rounding needs "
                                 f"state_dtype='bfloat16'")
            if (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)
                    or not 0 <= seed < 2 ** 64):
                raise ValueError(f"{cls.__name__}.zeros(): seed must be an int in "
                                 f"[0, 2**64), got {seed!r}")
        b = cls(param, grad, **{name: full_like(param, value) for name, value in fields})
        if stochastic_rounding:
            b.rounding_seed = int(seed)
        return b

    @classmethod
    def _zeros_8bit(cls, param, grad, fields, block):
        from . import quantization as q
        n = int(np.prod(param.shape))
        state, scales = {}, {}
        for name, value in fields:
            codes, s = q.initial(n, value, block, q.qmap_for(cls.spec.kernel, name),
                                 param.dtype)
            state[name] = codes.reshape(param.shape)
            scales[name] = s
        if is_cuda_array(param):                 # made on the host, copied to the device
            from ._cuda_backend import _gpu
            cuda = _gpu()
            state = {k: cuda.to_device(v) for k, v in state.items()}
            scales = {k: cuda.to_device(v) for k, v in scales.items()}
        b = cls(param, grad, **state)
        b.state_absmax = scales
        b.block_size = block
        return b

    @property
    def state_dtype(self):
        """``"bfloat16"`` when the state arrays hold bfloat16 bits, ``"int8"`` when they hold
        8-bit codes, else the parameter's dtype name (also with no state)."""
        for f in self.state_fields:
            dtype = getattr(getattr(self, f), "dtype", None)
            if dtype == np.uint16:
                return "bfloat16"
            if dtype == np.uint8:
                return "int8"
        return self.dtype.name

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
        kind, extra = self.state_dtype, ""  # compressed state says so, with its options
        if kind == "bfloat16":
            rounding = ", stochastic rounding" if self.rounding_seed is not None else ""
            extra = f", state_dtype=bfloat16{rounding}"
        elif kind == "int8":
            extra = f", state_dtype=int8, blocks of {self.block_size}"
        return (f"{type(self).__name__}(shape={tuple(self.param.shape)}, dtype={self.dtype}, "
                f"step={self.step}, state=[{state}]{extra})")


# ----------------------------------------------------------------------------- scalars

def check_real(name, value, *, low=None, high=None, low_open=False, high_open=False):
    """Validate a real hyperparameter against an interval; returns it as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} "
                        f"{value!r}")
    try:
        x = float(value) + 0.0  # -0.0 -> 0.0, so that values that compare equal act equal
    except OverflowError:       # 10**400, a huge Fraction
        raise ValueError(f"{name} must be finite, got {value!r}") from None
    if math.isnan(x) or math.isinf(x):
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
