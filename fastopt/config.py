"""fastopt's tunables, in one place, read at call time.

Change them by assignment (``fastopt.config.PARALLEL_THRESHOLD = 1 << 20``), restore the
defaults with :func:`reset`, or set the environment variables below before importing fastopt
(``reset()`` reads them again).

=============================  ==================================  ===========================
attribute                      environment variable                default
=============================  ==================================  ===========================
``PARALLEL_THRESHOLD``         ``FASTOPT_PARALLEL_THRESHOLD``      ``32768`` elements
                                                                   (``131072`` when
                                                                   ``OMP_WAIT_POLICY=PASSIVE``)
``CUDA_THREADS_PER_BLOCK``     ``FASTOPT_CUDA_THREADS_PER_BLOCK``  ``256``
``CUDA_MAX_BLOCKS``            ``FASTOPT_CUDA_MAX_BLOCKS``         ``0`` (0: enough blocks to
                                                                   cover the buffer once)
=============================  ==================================  ===========================

``PARALLEL_THRESHOLD``: buffers with at least this many elements use the ``parallel=True``
kernel; smaller ones use its serial twin, because launching Numba's thread pool costs
microseconds that a small buffer cannot amortize. With passive waiting every launch also wakes
sleeping threads (~13 us), so the default is higher then. Measured on 2 cores, float32, serial /
parallel step time with ``OMP_WAIT_POLICY=PASSIVE``: Adam 35/38 us at 65,536 elements and
62/53 us at 131,072; SGD 21/30 us at 131,072 and 60/51 us at 524,288. Inside MNIST training
(matmuls between steps) the serial step won at the MLP's 109,810 parameters: optimizer time
0.64 s serial vs 0.84-1.08 s parallel over 2,000 iterations of 4 optimizers.

``THREAD_WAIT``: how the OpenMP thread pools (Numba's ``omp`` threading layer, torch) wait for
work, per kind of run; applied by :func:`set_thread_wait` (``python -m fastopt`` does) unless
the environment already chooses (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set). Measured on a
2-core machine: training alternates BLAS matmuls and parallel steps, and is fastest with
passive waiting (spinning threads steal the cores from BLAS); back-to-back optimizer steps pay
~13 us of thread wake-up per parallel call with passive waiting, so the benchmarks let threads
spin briefly (``GOMP_SPINCOUNT=1000``, tens of microseconds) instead. See the README, "Threads".
"""
import os


def _default_parallel_threshold():
    passive = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"
    return 131072 if passive else 32768


_DEFAULTS = {
    "PARALLEL_THRESHOLD": ("FASTOPT_PARALLEL_THRESHOLD", _default_parallel_threshold),
    "CUDA_THREADS_PER_BLOCK": ("FASTOPT_CUDA_THREADS_PER_BLOCK", 256),
    "CUDA_MAX_BLOCKS": ("FASTOPT_CUDA_MAX_BLOCKS", 0),
}

PARALLEL_THRESHOLD = 32768
CUDA_THREADS_PER_BLOCK = 256
CUDA_MAX_BLOCKS = 0


THREAD_WAIT = {
    "train": {"OMP_WAIT_POLICY": "PASSIVE"},
    "bench": {"GOMP_SPINCOUNT": "1000"},
}
_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def set_thread_wait(kind):
    """Set the environment for the thread wait policy ``THREAD_WAIT[kind]`` unless one of
    ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` is already set; returns the policy in effect.
    Effective only before the first parallel kernel (or torch) starts an OpenMP pool."""
    global PARALLEL_THRESHOLD
    if not any(os.environ.get(v) for v in _WAIT_VARS):
        before = _default_parallel_threshold()
        os.environ.update(THREAD_WAIT[kind])
        if PARALLEL_THRESHOLD == before:          # still the default: follow the policy
            PARALLEL_THRESHOLD = _from_env("FASTOPT_PARALLEL_THRESHOLD",
                                           _default_parallel_threshold())
    return thread_wait()


def thread_wait():
    """The wait-policy variables of the environment (``None`` where unset or empty)."""
    return {v: os.environ.get(v) or None for v in _WAIT_VARS}


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
        g[name] = _from_env(var, default() if callable(default) else default)


def as_dict():
    """The current value of every tunable."""
    return {name: globals()[name] for name in _DEFAULTS}


reset()
