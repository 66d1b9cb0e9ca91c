"""fastopt's tunables, in one place, read at call time.

Change them by assignment (``fastopt.config.PARALLEL_THRESHOLD = 1 << 20``), restore the
defaults with :func:`reset`, or set the environment variables below before importing fastopt
(``reset()`` reads them again).

=============================  ======================================  =======================
attribute                      environment variable                    default
=============================  ======================================  =======================
``PARALLEL_THRESHOLD``         ``FASTOPT_PARALLEL_THRESHOLD``          ``32768`` elements
                                                                       (``131072`` unless the
                                                                       environment or ``"keep"``
                                                                       makes threads spin long)
``CUDA_THREADS_PER_BLOCK``     ``FASTOPT_CUDA_THREADS_PER_BLOCK``      ``256``
``CUDA_MAX_BLOCKS``            ``FASTOPT_CUDA_MAX_BLOCKS``             ``0`` (0: no fixed cap)
``CUDA_BLOCKS_PER_SM``         ``FASTOPT_CUDA_BLOCKS_PER_SM``          ``64`` (0: no cap)
``CUDA_8BIT_PER_THREAD``       ``FASTOPT_CUDA_8BIT_PER_THREAD``        ``4``
``CUDA_8BIT_THREADS_PER_SM``   ``FASTOPT_CUDA_8BIT_THREADS_PER_SM``    ``1024`` (0: no bound)
``CUDA_8BIT_WORDS``            ``FASTOPT_CUDA_8BIT_WORDS``             ``1`` (0: strided, element
                                                                       by element)
``CUDA_FAST_LAUNCH``           ``FASTOPT_CUDA_FAST_LAUNCH``            ``1`` (0: numba-cuda's
                                                                       launch)
``CUDA_DEVICE_CLIP``           ``FASTOPT_CUDA_DEVICE_CLIP``            ``1`` (0: the host waits for
                                                                       the norm)
``CUDA_PAIRS``                 ``FASTOPT_CUDA_PAIRS``                  ``1`` (0: one element per
                                                                       access)
``CUDA_QUADS``                 ``FASTOPT_CUDA_QUADS``                  ``1`` (0: bfloat16 state
                                                                       in pairs)
``OMP_SPINCOUNT``              ``FASTOPT_OMP_SPINCOUNT``               ``1000`` (or ``"keep"``)
=============================  ======================================  =======================

``PARALLEL_THRESHOLD``: buffers with at least this many elements use the ``parallel=True``
kernel; smaller ones use its serial twin, because launching Numba's thread pool costs
microseconds that a small buffer cannot amortize. With passive waiting every launch also wakes
sleeping threads (~13 us), so the default is higher then. Measured on 2 cores, float32, serial /
parallel step time with ``OMP_WAIT_POLICY=PASSIVE``: Adam 35/38 us at 65,536 elements and
62/53 us at 131,072; SGD 21/30 us at 131,072 and 60/51 us at 524,288. Inside MNIST training
(matmuls between steps) the serial step won at the MLP's 109,810 parameters: optimizer time
0.64 s serial vs 0.84-1.08 s parallel over 2,000 iterations of 4 optimizers.

CUDA grid: enough blocks of ``CUDA_THREADS_PER_BLOCK`` threads to cover the buffer once, but at
most ``CUDA_BLOCKS_PER_SM`` x the GPU's multiprocessor count (and at most ``CUDA_MAX_BLOCKS``
when that is set); a grid-stride loop covers the rest. Measured on an H200 (132 SMs), Adam at
1e8 float32: one element per thread 1066 us (2627 GB/s), 64 blocks per SM 867 us (3228 GB/s);
4 per SM 1043 us, 16 per SM 921 us; 512 threads per block the same as 256, 1024 slower.

``CUDA_8BIT_PER_THREAD``: elements of a quantization block each thread of the CUDA 8-bit
kernels takes (the most up to this that divides the block; a block of 256 runs on 64
threads): more loads in flight per thread, fewer threads per barrier.

``CUDA_8BIT_THREADS_PER_SM``: the 8-bit kernels are compiled for at least this many resident
threads per multiprocessor (CUDA launch bounds: the compiler caps their registers to fit;
0: no bound). Measured on an H200, Adam 1e8 float32 parameters with 8-bit state, GPU time per
step (2026-11-27, ``bench/gpu_probes/q8.py``, one call): 4 per thread 1790 us unbounded (102
registers), 1499 us for >= 768 threads, 1187 us for >= 1024 (64 registers, 60 bytes
spilled); 2 per thread 1403 / 1268 / 1260 us; 1 per thread 1788-1817 us; at 1e7 too 4 per
thread for >= 1024 was the fastest (126 us; the others 134-192 us).

``CUDA_8BIT_WORDS``: with float32 parameters and 4 elements per thread, a thread of an 8-bit
kernel takes four *neighbouring* elements and reads and writes them as words (its float32
values as two 64-bit words per array, its codes of each 8-bit state as one 32-bit word, the
param copy as one 64-bit word) instead of four elements strided by the thread count, one
access each; the same bits (``kernels.quant8.cuda_source``). Read when a step's launcher is
made (the first step on a set of device buffers); buffers whose arrays do not start on a word
boundary keep the strided layout. Measured on an H200 (``bench/gpu_report.py OUT layouts``,
2026-11-27, GPU time per step, float32 parameters): Adam 1e8 719.9 us with words against
1181.8 us strided (float32 state 694.2 us), 1e7 76.7 against 123.0 us (72.0 us); the other
optimizers at 1e7 0.92-0.99x float32 state's speed with words, 0.55-0.90x strided (LAMB,
whose timed steps include host round trips, aside).

``CUDA_FAST_LAUNCH``: launch fastopt's CUDA kernels without numba-cuda's per-call argument
handling once a kernel's argument list has been checked against numba-cuda's own
(``fastopt._launch``); ``0`` launches every call through numba-cuda.

``CUDA_DEVICE_CLIP``: a clipped CUDA step (``max_grad_norm``, without ``skip_nonfinite``)
computes its gradient factor on the device and its update kernel reads it there, so the host
never waits for the norm (the buffers' ``grad_norm`` is read from the device when asked for);
``0`` copies the norm to the host and passes the factor with the launch, as a step with
``skip_nonfinite`` must (it decides on the host whether the step happens). Both give the same
bits. Steps with a per-tensor pre-pass (LAMB) and 8-bit CUDA steps take the factor from the
host either way.

``CUDA_PAIRS``: a float32 CUDA step (float32 or bfloat16 state rounded to nearest; not 8-bit
state, stochastic rounding, a param copy or groups) whose arrays all start on a word boundary
loads and stores two neighbouring elements per access: 64-bit words of float32, 32-bit words of
bfloat16. The record's body runs on the words, its per-element function on each half (the same
operations, so the same bits), and an odd last element steps in a second, one-element launch.
A thread then has twice the bytes in flight for the same number of memory instructions: on an
H200 the float32 step was bound by loads in flight, not bytes (README, "GPU"). Measured there
(GPU time per step, every optimizer, 1e7 and 1e8): 1.07-1.41x faster with float32 state,
1.16-1.67x with bfloat16 state (LAMB 1e7 bfloat16 not timed meaningfully), the same bits.

``CUDA_QUADS``: with ``CUDA_PAIRS``, a float32 step on bfloat16 state (rounded to nearest or
stochastically, with or without a param copy; not groups) whose arrays start on a 64-bit
boundary runs on words of *four* neighbouring elements instead: a thread loads its four
parameters and gradients as two 64-bit words each and its four values of each bfloat16 state
as one 64-bit word, runs the record's body on each element (local copies) and stores the
words back (``kernels.cuda.quad_source``); the last ``n % 4`` elements step in a second,
one-element launch. The same bits. Measured on an H200 (``bench/gpu_report.py OUT layouts``, 2026-11-27,
GPU time per step, float32 parameters, bfloat16 state): Adam 1e8 488.1 us against 557.4 us in
pairs (float32 state 694.2 us: 1.42x against 1.25x), 1e7 53.4 against 60.8 us (72.0 us:
1.35x against 1.18x); the other optimizers at 1e7 1.19-1.40x float32 state's speed (pairs
1.15-1.23x; LAMB, whose timed steps include host round trips, aside). Stochastic rounding (each element's hash index ``4q + e``) and the param copy
(one 64-bit word of four) joined this layout after that device session: the same bits as one
element per access in the simulator, not yet timed or run on a GPU.

``OMP_SPINCOUNT`` (``FASTOPT_OMP_SPINCOUNT``, default ``1000``): how long Numba's OpenMP threads
spin before they sleep. Unless the environment sets ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``,
fastopt starts Numba's pool with ``GOMP_SPINCOUNT`` set to this just before its first parallel
kernel and restores the environment at once (``fastopt._threads``; README, "Threads"). ``0``
is passive waiting; ``"keep"`` leaves the pool to libgomp's defaults (a long spin, which fights
BLAS for the cores). ``fastopt.config.thread_report()`` says what was applied.

``THREAD_WAIT``: the wait policy of ``python -m fastopt bench`` / ``profile`` and the benchmark
suites, applied by :func:`set_thread_wait` unless the environment already chooses: back-to-back
optimizer steps pay ~13 us of thread wake-up per parallel call with passive waiting, so the
benchmarks let threads spin briefly (``GOMP_SPINCOUNT=1000``, ~10 us) for fastopt and torch
alike; that is a short spin (``SHORT_SPIN``), so the threshold stays 131072 under it. They
also report rows under the default policy (README, "Benchmarks").
"""

# not a tunable: the chunk of every deterministic reduction (the gradient norm, LAMB's
# per-tensor pre-pass). The norms' bits depend on it, and not on the thread count.
NORM_CHUNK = 4096
# not a tunable either: the chunk of a device gradient's norm (a clipped CUDA step's, and
# grad_norm of a device array): one thread block reduces a chunk, in a fixed order. Measured
# on an H200 (bench/gpu_probes/norm_chunk.py, 2026-11-27, clipped Adam's GPU time over a plain
# step's): 4096 1.27x at 1e7 / 1.20x at 1e8, 8192 1.22 / 1.17, 16384 1.21 / 1.17, 32768
# 1.26 / 1.16, 65536 1.38 / 1.17
CUDA_NORM_CHUNK = 16384
import math
import os


_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def check_spincount(value, where):
    """``value`` as a spin count (int >= 0) or ``"keep"``; raises ValueError naming ``where``."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "keep":
            return "keep"
        try:
            value = int(text)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where} must be an integer >= 0 or 'keep', got {value!r}")
    return value


def _spincount_from_env():
    raw = os.environ.get("FASTOPT_OMP_SPINCOUNT", "").strip()
    if raw == "":
        return 1000
    return check_spincount(raw, f"environment variable FASTOPT_OMP_SPINCOUNT={raw!r}")


# a spin count below this is short: between back-to-back steps of a model the MLP's size the
# threads are already asleep (libgomp's count of polls before it sleeps; fastopt's own and the
# benchmarks' 1000 is one). Measured on a 2-core Zen 3 VM, Adam float32, serial vs parallel step
# interleaved (2026-11-27): GOMP_SPINCOUNT=1000: the parallel step 1.40-2.50x the serial one's
# time at 32,768 elements, 0.94-4.6x at 65,536, 0.96-1.05x at 109,810, 0.92-0.93x at 131,072;
# 2000-3000: 0.88-1.25x at 32,768 (a wash); 10000: 1.01x and 0.81x at 32,768 and 109,810;
# 300000 (libgomp's default): 0.89x and 0.87x. (libgomp estimates 100,000 polls per ms: 1000
# is ~10 us, about the host work of one step)
SHORT_SPIN = 10000


def gomp_spin_count(text):
    """``GOMP_SPINCOUNT`` as libgomp reads it: an integer with an optional ``k``/``M``/``G``/
    ``T`` suffix (thousands), or ``infinite``/``infinity`` (``math.inf``); ``None`` when
    libgomp would not accept it (it then keeps its default)."""
    text = str(text).strip().lower()
    if text.startswith(("infinite", "infinity")) and not text[8:].strip():
        return math.inf
    scale = {"k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "t": 10 ** 12}.get(text[-1:], 1)
    digits = text[:-1].strip() if scale > 1 else text
    return int(digits) * scale if digits.isascii() and digits.isdigit() else None


def spin_length():
    """How many polls Numba's OpenMP threads make before sleeping, as libgomp will read the
    environment (``GOMP_SPINCOUNT``, else ``OMP_WAIT_POLICY``: ACTIVE spins without end,
    PASSIVE not at all, else libgomp's 300000), or fastopt's own ``OMP_SPINCOUNT`` when the
    environment chooses nothing (``"keep"``: libgomp's 300000)."""
    policy = os.environ.get("OMP_WAIT_POLICY", "").strip().upper()
    spin = os.environ.get("GOMP_SPINCOUNT", "").strip()
    count = gomp_spin_count(spin) if spin else None
    if count is not None:
        return count
    if policy == "ACTIVE":
        return math.inf
    if policy == "PASSIVE":
        return 0
    if policy or spin:
        return 300000
    own = globals().get("OMP_SPINCOUNT", 1000)
    return 300000 if own == "keep" else own


def _default_parallel_threshold():
    """32768 when Numba's threads spin long enough to be awake for the next back-to-back step
    (:func:`spin_length` at least ``SHORT_SPIN``: ``OMP_WAIT_POLICY=ACTIVE``, libgomp's
    default spin, ``"keep"``); 131072 under a short spin or passive waiting: fastopt's own
    policy (a training loop: a parallel call pays for waking threads that slept through the
    matmuls; measured in the MLP loop on 2 cores, the serial step wins at 109,810 parameters)
    and the benchmarks' (their back-to-back steps outlast a spin of 1000: ``SHORT_SPIN``)."""
    return 32768 if spin_length() >= SHORT_SPIN else 131072


_DEFAULTS = {
    "PARALLEL_THRESHOLD": ("FASTOPT_PARALLEL_THRESHOLD", _default_parallel_threshold),
    "CUDA_THREADS_PER_BLOCK": ("FASTOPT_CUDA_THREADS_PER_BLOCK", 256),
    "CUDA_MAX_BLOCKS": ("FASTOPT_CUDA_MAX_BLOCKS", 0),
    "CUDA_BLOCKS_PER_SM": ("FASTOPT_CUDA_BLOCKS_PER_SM", 64),
    "CUDA_8BIT_PER_THREAD": ("FASTOPT_CUDA_8BIT_PER_THREAD", 4),
    "CUDA_8BIT_THREADS_PER_SM": ("FASTOPT_CUDA_8BIT_THREADS_PER_SM", 1024),
    "CUDA_8BIT_WORDS": ("FASTOPT_CUDA_8BIT_WORDS", 1),
    "CUDA_FAST_LAUNCH": ("FASTOPT_CUDA_FAST_LAUNCH", 1),
    "CUDA_DEVICE_CLIP": ("FASTOPT_CUDA_DEVICE_CLIP", 1),
    "CUDA_PAIRS": ("FASTOPT_CUDA_PAIRS", 1),
    "CUDA_QUADS": ("FASTOPT_CUDA_QUADS", 1),
    "OMP_SPINCOUNT": ("FASTOPT_OMP_SPINCOUNT", None),
}

PARALLEL_THRESHOLD = 32768
CUDA_THREADS_PER_BLOCK = 256
CUDA_MAX_BLOCKS = 0
CUDA_BLOCKS_PER_SM = 64
CUDA_8BIT_PER_THREAD = 4
CUDA_8BIT_THREADS_PER_SM = 1024
CUDA_8BIT_WORDS = 1
CUDA_FAST_LAUNCH = 1
CUDA_DEVICE_CLIP = 1
CUDA_PAIRS = 1
CUDA_QUADS = 1
OMP_SPINCOUNT = 1000


THREAD_WAIT = {
    "bench": {"GOMP_SPINCOUNT": "1000"},
}


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


_THREAD_REPORT = {"pool": "not started", "layer": None, "omp_wait_policy": None,
                  "gomp_spincount": None, "set_by": None}


def thread_report():
    """What fastopt did to Numba's thread pool: ``pool`` (not started / started by fastopt /
    started before fastopt's first parallel step), ``layer`` (Numba's threading layer),
    ``omp_wait_policy`` / ``gomp_spincount`` (what Numba's OpenMP pool was started with, where
    known; ``None``: libgomp's defaults) and ``set_by`` (written by ``fastopt._threads``)."""
    return dict(_THREAD_REPORT)


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
    g["OMP_SPINCOUNT"] = _spincount_from_env()
    for name, (var, default) in _DEFAULTS.items():
        if name != "OMP_SPINCOUNT":
            g[name] = _from_env(var, default() if callable(default) else default)


def as_dict():
    """The current value of every tunable."""
    return {name: globals()[name] for name in _DEFAULTS}


reset()
