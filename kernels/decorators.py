"""All compile machinery for the kernels lives here (numbagg's pattern).

* ``cpu_device``: compiles a per-element function (and its scalar adapter, see
  ``kernels.record``) for use inside CPU kernels (always inlined, NumPy error model, no fastmath).
* ``KernelFamily``: a kernel body (a record's ``body``) is a *factory* whose arguments are the
  optimizer's boolean options (``maximize``, ``amsgrad``, ...). The factory returns a closure;
  Numba freezes closure variables as compile-time constants, so each option combination
  compiles to its own branch-free loop that LLVM can vectorize (runtime flags inside the loop
  made the serial Adam kernel 10x slower). Each combination is compiled lazily, twice: a serial
  function and a ``parallel=True`` one (``prange`` runs as ``range`` in the serial twin).
  The twins are copies of the closure (:func:`bind`) under different ``__qualname__`` so that
  Numba's on-disk cache keeps them apart: its index is keyed by qualified name, bytecode,
  closure values and signature, but not by the ``parallel`` flag. The qualified name also
  carries the option values: Numba's symbol names are made from it, the argument types and a
  per-process counter, so without them two option combinations of one body loaded from the
  cache could share a symbol, and code linking both would call the wrong one.
* The qualified name also ends in :func:`source_tag`, a hash of every module of this package
  and of the files that define the record's functions. Numba checks a cached function
  against its own source file only, not against the functions it calls, and fastopt's kernels
  call functions bound in from other files (a record's per-element function inside
  ``kernels.reductions``' pre-pass, the adapters ``kernels.record`` generates): without the
  tag, a changed per-element function (a new fastopt version installed over the old one's
  ``__pycache__``, or a user's own record edited) could run the old code from the cache, with
  no error.

Every kernel uses ``error_model='numpy'`` (the Python error model's division checks block
vectorization) and never ``fastmath`` (it reorders arithmetic and drops NaN handling, which
would break bitwise equality with the NumPy reference). Nothing is compiled at import time:
dispatchers compile on first call and are cached on disk (``cache=True``).
"""
import functools
import hashlib
import inspect
import os
import threading
import types

from numba import njit

KERNEL_OPTIONS = dict(error_model="numpy", cache=True, nogil=True, fastmath=False)
DEVICE_OPTIONS = dict(error_model="numpy", inline="always", fastmath=False)


def cpu_device(fn):
    """Compile a per-element function for use inside CPU kernels."""
    return njit(**DEVICE_OPTIONS)(fn)


def source_files(*fns):
    """The source files of ``fns`` (Python functions or Numba dispatchers) that exist on disk
    (a generated function's "file" is a tag such as ``<fastopt.kernels ...>``)."""
    files = []
    for fn in fns:
        code = getattr(getattr(fn, "py_func", fn), "__code__", None)
        if code is not None and os.path.isfile(code.co_filename):
            files.append(os.path.abspath(code.co_filename))
    return tuple(sorted(set(files)))


@functools.lru_cache(maxsize=None)
def source_tag(files=()):
    """12 hex digits of the SHA-256 of this package's modules and of ``files`` (paths), in
    sorted order: part of every cached kernel's qualified name (see the module docstring)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        own = {os.path.join(here, f) for f in os.listdir(here) if f.endswith(".py")}
    except OSError:         # no source directory (a frozen or zipped install): the files given
        own = set()
    h = hashlib.sha256()
    for path in sorted(own | set(files)):
        try:
            with open(path, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
        except OSError:
            h.update(path.encode())
    return h.hexdigest()[:12]


def bind(fn, suffix="", sources=(), **names):
    """A copy of ``fn`` (code, closure) whose globals also hold ``names`` (a target's ``elem``
    and ``loop``, see ``kernels.loops``) and whose qualified name ends in ``suffix`` and the
    :func:`source_tag` of this package and ``sources`` (paths: the files of the functions
    bound in from outside it, :func:`source_files`)."""
    scope = dict(fn.__globals__)
    scope.update(names)
    twin = types.FunctionType(fn.__code__, scope, fn.__name__ + suffix, fn.__defaults__,
                              fn.__closure__)
    twin.__qualname__ = f"{fn.__qualname__}{suffix}_src{source_tag(tuple(sources))}"
    twin.__module__ = fn.__module__
    twin.__doc__ = fn.__doc__
    return twin


class KernelFamily:
    """Lazily compiled CPU kernels of one body, one per (option combination, parallel).

    ``factory(**options)`` returns the kernel body (a closure over the options); ``names``
    are bound into its globals (see :func:`bind`). The option names are the factory's
    parameters.
    """

    def __init__(self, factory, suffix="", sources=(), **names):
        self.name = factory.__name__
        self.factory = factory
        self.suffix = suffix       # keeps variants of one body apart in Numba's disk cache
        self.sources = sources     # files of functions bound in (see bind)
        self.names = names
        self.option_names = tuple(inspect.signature(factory).parameters)
        self._cache = {}
        self._fast = {}   # exact call arguments -> dispatcher, skips normalization
        self._lock = threading.Lock()

    def _key(self, options):
        if set(options) != set(self.option_names):
            raise TypeError(f"{self.name}: options must be exactly {self.option_names}")
        return {k: bool(options[k]) for k in self.option_names}

    def get(self, parallel, **options):
        fn = self._fast.get((parallel,) + tuple(options.items()))
        if fn is not None:
            return fn
        key = tuple(self._key(options).items()) + (("parallel", bool(parallel)),)
        fn = self._cache.get(key)
        if fn is None:
            with self._lock:
                fn = self._cache.get(key)
                if fn is None:
                    body = self.factory(**dict(key[:-1]))
                    # the option values in the name too: Numba mangles a function's symbol from
                    # its qualified name, its argument types and a per-process counter, so two
                    # option combinations of one body, loaded from the disk cache (compiled in
                    # different processes), could share a symbol, and a function linking both
                    # (kernels.groups' driver) would call one for the other
                    tag = "".join("1" if v else "0" for _, v in key[:-1])
                    suffix = (self.suffix + ("_parallel" if parallel else "_serial")
                              + (f"_o{tag}" if tag else ""))
                    fn = njit(parallel=bool(parallel), **KERNEL_OPTIONS)(
                        bind(body, suffix, self.sources, **self.names))
                    self._cache[key] = fn
        self._fast[(parallel,) + tuple(options.items())] = fn
        return fn

    def __repr__(self):
        return f"<KernelFamily {self.name} options={self.option_names}>"


def kernel_family(factory):
    """Decorator: a :class:`KernelFamily` of a self-contained body factory."""
    return KernelFamily(factory)
