"""fastopt's tunables, in one place, read at call time.

Change them by assignment (``fastopt.config.PARALLEL_THRESHOLD = 1 << 20``), restore the
defaults with :func:`reset`, or set the environment variables below before importing fastopt
(``reset()`` reads them again).

=============================  ==================================  ===========================
attribute                      environment variable                default
=============================  ==================================  ===========================
``PARALLEL_THRESHOLD``         ``FASTOPT_PARALLEL_THRESHOLD``      ``32768`` elements
``CUDA_THREADS_PER_BLOCK``     ``FASTOPT_CUDA_THREADS_PER_BLOCK``  ``256``
``CUDA_MAX_BLOCKS``            ``FASTOPT_CUDA_MAX_BLOCKS``         ``0`` (0: enough blocks to
                                                                   cover the buffer once)
=============================  ==================================  ===========================

``PARALLEL_THRESHOLD``: buffers with at least this many elements use the ``parallel=True``
kernel; smaller ones use its serial twin, because launching Numba's thread pool costs
microseconds that a small buffer cannot amortize.
"""
import os

_DEFAULTS = {
    "PARALLEL_THRESHOLD": ("FASTOPT_PARALLEL_THRESHOLD", 32768),
    "CUDA_THREADS_PER_BLOCK": ("FASTOPT_CUDA_THREADS_PER_BLOCK", 256),
    "CUDA_MAX_BLOCKS": ("FASTOPT_CUDA_MAX_BLOCKS", 0),
}

PARALLEL_THRESHOLD = 32768
CUDA_THREADS_PER_BLOCK = 256
CUDA_MAX_BLOCKS = 0


def _from_env(var, default):
    raw = os.environ.get(var)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {var}={raw!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"environment variable {var}={raw!r} must be >= 0")
    return value


def reset():
    """Restore every tunable to its default (environment overrides applied)."""
    g = globals()
    for name, (var, default) in _DEFAULTS.items():
        g[name] = _from_env(var, default)


def as_dict():
    """The current value of every tunable."""
    return {name: globals()[name] for name in _DEFAULTS}


reset()
