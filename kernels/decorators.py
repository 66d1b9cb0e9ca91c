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
import sys
import tempfile
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


# ---------------------------------------------------------------- generated drivers, cached
def generated_dir():
    """Where generated drivers' sources are written so that Numba can cache them on disk:
    ``fastopt-generated`` under ``NUMBA_CACHE_DIR`` when that is set, else under
    ``$XDG_CACHE_HOME`` (default ``~/.cache``) in ``fastopt/generated``."""
    import numba
    root = numba.config.CACHE_DIR
    if root:
        return os.path.join(root, "fastopt-generated")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastopt", "generated")


def _identity(fn):
    """What tells a called dispatcher apart across processes: its module and qualified name
    (a kernel's carries its options, parallel flag and source tag: :func:`bind`)."""
    py = getattr(fn, "py_func", fn)
    return f"{getattr(py, '__module__', '?')}.{getattr(py, '__qualname__', repr(py))}"


def _write_once(path, text):
    """Write ``text`` to ``path`` unless a file is there already (published whole: a temporary
    file hard-linked into place, so another process never reads half a file and a file that
    is there is never rewritten: a new modification time would void Numba's cache of it).
    Returns whether ``path`` now holds ``text``."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read() == text
    except OSError:
        pass
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:                 # no hard links here: rename (rarely races, harmless)
            if not os.path.exists(path):
                os.replace(tmp, path)
        if os.path.exists(tmp):
            os.unlink(tmp)
        with open(path, encoding="utf-8") as fh:
            return fh.read() == text
    except OSError:
        return False


def compile_generated(src, name, scope, parallel, callees=()):
    """``njit`` (``parallel`` as given) of the function ``name`` that the generated source
    ``src`` defines, with the globals ``scope``; cached on disk like the kernels.

    Numba caches a function only when it has a source file, and keys the cache by the file,
    the qualified name, the bytecode, the closure and the signature, not by the globals: the
    functions a driver calls are chosen at run time (``callees``, e.g. a record's serial
    kernel for one option combination). So the source is written to a file of
    :func:`generated_dir` named by a hash of the source, of the callees' identities
    (:func:`_identity`), of this package's :func:`source_tag` and of Numba's version, and
    the function is renamed after that hash (Numba's symbol names come from qualified names:
    two drivers must not share one). Where no file can be written the function is compiled
    from memory, uncached, as before."""
    import numba
    h = hashlib.sha256()
    for part in (src, source_tag(), numba.__version__, *map(_identity, callees)):
        h.update(part.encode())
        h.update(b"\0")
    unique = f"{name}_{h.hexdigest()[:20]}"
    assert f"def {name}(" in src, name
    text = ("# generated by fastopt.kernels (compile_generated); safe to delete\n"
            + "".join(f"# calls {_identity(c)}\n" for c in callees)
            + src.replace(f"def {name}(", f"def {unique}(", 1))
    path = os.path.join(generated_dir(), unique + ".py")
    options = dict(KERNEL_OPTIONS, parallel=bool(parallel))
    if _write_once(path, text):
        code = compile(text, path, "exec")
        # a registered module: a cached function's environment is rebuilt on loading by
        # importing its module by name (an unregistered one is Numba's "<dynamic>", which
        # cannot be imported)
        modname = f"fastopt_generated_{unique}"
        module = sys.modules.get(modname)
        if module is None:
            module = types.ModuleType(modname)
            module.__file__ = path
            module.__dict__.update(scope)
            exec(code, module.__dict__)
            sys.modules[modname] = module
        return njit(**options)(module.__dict__[unique])
    code = compile(text, f"<fastopt generated {name}>", "exec")
    module = dict(scope)
    exec(code, module)
    return njit(**dict(options, cache=False))(module[unique])
