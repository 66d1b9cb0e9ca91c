"""CUDA kernel launches without numba-cuda's per-call argument handling.

``kernel[grid, block](*args)`` costs numba-cuda tens to hundreds of microseconds of Python per
launch: it types every argument, then converts each one (``_Kernel._prepare_args``: for a
device array a strided memory view and its fields, for every scalar of a tuple a chain of type
comparisons and a ``ctypes`` value). A step of the MLP's size is a few microseconds of GPU
work, so that host time was the step's time (measured: ~90-170 us per plain step at the MLP's
size on an H200, ~450 us on an H100 for Adam with 10 groups of distinct learning rates, whose
90 scalars travel with the launch).

A :class:`Launcher` belongs to one launch site (a step runner), whose arguments keep their
types from call to call. A kernel's first launch there goes through numba-cuda as usual (it
compiles the kernel); the launcher then takes the compiled kernel, builds the argument list
itself (each device array's part taken from numba-cuda's own conversion once and kept; the
scalars converted to the same ``ctypes`` values), **checks it against numba-cuda's own list for
those arguments** and, only where the two are equal element for element, launches later calls
directly (the same ``cuda.core`` ``launch`` with the same configuration numba-cuda would
build). Anything it does not know (another numba-cuda version's internals, a type it does not
convert, an argument that changed type or length, the simulator) takes numba-cuda's path.
``config.CUDA_FAST_LAUNCH = 0`` (``FASTOPT_CUDA_FAST_LAUNCH=0``) turns it off.
"""
import ctypes

from . import config

_CTYPES = {"float32": ctypes.c_float, "float64": ctypes.c_double,
           "int8": ctypes.c_int8, "int16": ctypes.c_int16, "int32": ctypes.c_int32,
           "int64": ctypes.c_int64, "uint8": ctypes.c_uint8, "uint16": ctypes.c_uint16,
           "uint32": ctypes.c_uint32, "uint64": ctypes.c_uint64}
MAX_ARRAYS = 64          # device arrays whose converted parts a launcher keeps (then: cleared)
STATS = {"direct": 0, "numba": 0, "declined": 0}   # launches by path; kernels not taken direct


class _Mismatch(Exception):
    """An argument not of the kind the launcher learned: take numba-cuda's path."""


def _converter(ty, learn_array):
    """``convert(value, out)`` appending the kernel arguments of a value of numba type ``ty``
    to ``out`` as numba-cuda's ``_prepare_args`` does, or ``None`` for a type it does not
    handle. ``learn_array(ty, value)``: a device array's part (a list)."""
    try:
        from numba.cuda import types
    except ImportError:                 # (numba-cuda versions whose types are numba's)
        from numba.core import types
    name = str(ty)
    if isinstance(ty, types.Array):
        def array(value, out):
            out.extend(learn_array(ty, value))
        return array
    if isinstance(ty, (types.Float, types.Integer)) and name in _CTYPES:
        c = _CTYPES[name]

        def scalar(value, out):
            out.append(c(value))
        return scalar
    if isinstance(ty, types.UniTuple) and str(ty.dtype) in _CTYPES and isinstance(
            ty.dtype, (types.Float, types.Integer)):
        c, count = _CTYPES[str(ty.dtype)], ty.count

        def scalars(value, out):
            if len(value) != count:
                raise _Mismatch
            out.extend(map(c, value))
        return scalars
    if isinstance(ty, types.BaseTuple):
        parts = [_converter(t, learn_array) for t in ty.types]
        if any(p is None for p in parts):
            return None

        def items(value, out):
            if len(value) != len(parts):
                raise _Mismatch
            for part, v in zip(parts, value):
                part(v, out)
        return items
    return None


def same_arguments(ours, theirs):
    """Whether two kernel argument lists are equal element for element: the same Python type,
    and the same value (``ctypes`` values: the same bytes)."""
    if len(ours) != len(theirs):
        return False
    for a, b in zip(ours, theirs):
        if type(a) is not type(b):
            return False
        if isinstance(a, ctypes._SimpleCData):
            if bytes(a) != bytes(b):
                return False
        elif a != b:
            return False
    return True


class _Entry:
    """A compiled kernel's direct launch: its argument converters and launch objects."""

    def __init__(self, kernel, converters, stream, api):
        self.kernel, self.converters = kernel, converters
        self.stream, self.api = stream, api
        self.configs = {}

    def build(self, args):
        out = []
        if len(args) != len(self.converters):
            raise _Mismatch
        for convert, value in zip(self.converters, args):
            convert(value, out)
        return out

    def config(self, griddim, blockdim):
        key = (griddim, blockdim)
        lc = self.configs.get(key)
        if lc is None:
            launch_config, ge_1_0 = self.api[1], self.api[2]
            grid, block = self.api[3](griddim, blockdim)
            if ge_1_0:
                lc = launch_config(grid=grid, block=block, shmem_size=0, is_cooperative=False)
            else:
                lc = launch_config(grid=grid, block=block, shmem_size=0,
                                   cooperative_launch=False)
            self.configs[key] = lc
        return lc

    def launch(self, griddim, blockdim, args):
        kernelargs = self.build(args)
        cufunc = self.kernel._codelibrary.get_cufunc()
        self.api[0](self.stream, self.config(griddim, blockdim), cufunc.kernel, *kernelargs)


def _api():
    """numba-cuda's launch internals this module relies on, or ``None`` when they are not
    there (another version): ``(launch, LaunchConfig, CUDA_CORE_GE_1_0,
    normalize_kernel_dimensions, the default stream as numba-cuda passes it)``."""
    try:
        from numba.cuda import dispatcher as d
        from numba.cuda.cudadrv import driver
        return (d.launch, d.LaunchConfig, bool(d.CUDA_CORE_GE_1_0),
                d.normalize_kernel_dimensions, driver._to_core_stream(0))
    except (ImportError, AttributeError):
        return None


class Launcher:
    """``launcher(dispatcher, griddim, blockdim, *args)``: launch a numba-cuda kernel (see the
    module docstring). One per launch site: it keeps the device arrays it has seen (at most
    ``MAX_ARRAYS``), which the site holds anyway; ``keep_arrays=False`` (a site called with
    new arrays each time, which it should not keep alive): each array converted per call."""

    def __init__(self, keep_arrays=True):
        self.entries = {}       # id(dispatcher) -> (dispatcher, _Entry or None)
        self.arrays = {}        # id(array) -> (array, its kernel arguments)
        self.keep_arrays = keep_arrays

    def __call__(self, dispatcher, griddim, blockdim, *args):
        held = self.entries.get(id(dispatcher))
        if held is not None and held[1] is not None and config.CUDA_FAST_LAUNCH:
            try:
                held[1].launch(griddim, blockdim, args)
                STATS["direct"] += 1
                return
            except _Mismatch:
                pass
        from .kernels.cuda import exact
        with exact():                     # compiled without FMA contraction (first launch)
            dispatcher[griddim, blockdim](*args)
        STATS["numba"] += 1
        if held is None:
            entry = self._learn(dispatcher, args)
            STATS["declined"] += entry is None
            self.entries[id(dispatcher)] = (dispatcher, entry)

    def _array_part(self, kernel, stream):
        def part(ty, value):
            held = self.arrays.get(id(value))
            if held is not None and held[0] is value:
                return held[1]
            from numba.cuda.typing.typeof import Purpose, typeof
            if typeof(value, Purpose.argument) != ty:
                raise _Mismatch
            out, retr = [], []
            kernel._prepare_args(ty, value, stream, retr, out)
            if not self.keep_arrays:
                return out
            if len(self.arrays) >= MAX_ARRAYS:
                self.arrays.clear()
            self.arrays[id(value)] = (value, out)
            return out
        return part

    def _learn(self, dispatcher, args):
        """The :class:`_Entry` of the kernel just launched with ``args``, or ``None`` (numba-cuda's
        path from now on) unless its argument list is numba-cuda's, element for element."""
        from numba import config as numba_config
        api = _api()
        if api is None or numba_config.ENABLE_CUDASIM or not config.CUDA_FAST_LAUNCH:
            return None
        try:
            if getattr(dispatcher, "_launch_config_sensitive", True):
                return None
            argtypes = tuple(dispatcher.typeof_pyval(a) for a in args)
            kernel = dispatcher.overloads.get(argtypes)
            if (kernel is None or kernel.debug or kernel.cooperative or kernel.extensions
                    or tuple(kernel.argument_types) != argtypes):
                return None
            stream = api[4]
            part = self._array_part(kernel, stream)
            converters = [_converter(t, part) for t in argtypes]
            if any(c is None for c in converters):
                return None
            entry = _Entry(kernel, converters, stream, api)
            ours = entry.build(args)
            theirs, retr = [], []
            for t, v in zip(argtypes, args):
                kernel._prepare_args(t, v, stream, retr, theirs)
            return entry if same_arguments(ours, theirs) else None
        except Exception:       # noqa: BLE001 (any surprise in numba-cuda's internals: its path)
            return None
