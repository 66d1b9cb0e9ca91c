"""CUDA kernels: the shared bodies of ``kernels.loops`` bound to the CUDA target: the same
per-element functions as the CPU kernels (``kernels.elementwise``) compiled with
``numba.cuda.jit(device=True)``, and a grid-stride loop over flat 1-D device buffers, in place.
Boolean options are compile-time constants of each kernel, as on the CPU, so an unused state
array is never touched and a zero-length device array stands in for it. The scalars (one
tuple, see ``kernels.loops``) must already have the buffer dtype: a float64 scalar would turn a
float32 kernel's arithmetic into float64 (the PTX tests check that no float64 instruction
appears in any float32 kernel).

This module imports ``numba.cuda``; fastopt imports it only when a CUDA path is used.
"""
import math
import threading

from numba import cuda

from . import elementwise as ew
from . import loops
from .decorators import bind

ELEMENTS = {"adam": ew.adam_elem, "rmsprop": ew.rmsprop_elem, "momentum": ew.momentum_elem,
            "sgd": ew.sgd_elem}
_device = {}


@cuda.jit(device=True)
def grid_range(n):
    """This thread's indices of a grid-stride loop over ``n`` elements."""
    return range(cuda.grid(1), n, cuda.gridsize(1))


@cuda.jit
def fill_zero(a):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, a.shape[0], stride):
        a[i] = 0


_compiled = {}
_lock = threading.Lock()


def get(name, **options):
    """The ``cuda.jit`` kernel of optimizer ``name`` for these option values (lazy)."""
    key = (name,) + tuple(sorted(options.items()))
    kernel = _compiled.get(key)
    if kernel is None:
        with _lock:
            kernel = _compiled.get(key)
            if kernel is None:
                kernel = _compiled[key] = cuda.jit(python_kernel(name, **options))
    return kernel


def python_kernel(name, **options):
    """The uncompiled kernel of optimizer ``name``: its ``kernels.loops`` body bound to the
    CUDA target (used by :func:`get` and by ``cuda.compile_ptx``)."""
    if name not in _device:
        _device[name] = cuda.jit(device=True)(ELEMENTS[name])
    return bind(loops.BODIES[name](**options), elem=_device[name], loop=grid_range)


def launch_config(n, threads_per_block, max_blocks):
    blocks = max(1, math.ceil(n / threads_per_block))
    if max_blocks:
        blocks = min(blocks, max_blocks)
    return blocks, threads_per_block
