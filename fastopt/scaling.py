"""Loss scaling and the gradient norm, building blocks of the fused training-loop features.

* :class:`LossScaler` updates a dynamic loss scale from "were there non-finite gradients?",
  exactly as ``torch.amp.GradScaler.update`` does (its scale is a float32 tensor multiplied by
  the factor in double and rounded to float32; so here, and the sequence of scales is bitwise
  torch's).
* :func:`grad_norm` is the L2 norm of a gradient, accumulated in float64 over fixed chunks of
  ``NORM_CHUNK`` elements (within a chunk eight lanes, element ``8k + j`` in lane ``j``, each
  lane in order, the lanes combined in a fixed tree; then the chunk sums in order), so it is
  the same bit for bit for any thread count and for the NumPy reference
  (:func:`grad_norm_reference`), which sums in the same order.
"""
import math

import numpy as np

from . import _threads, config
from ._core import check_array, check_real, is_cuda_array

NORM_CHUNK = config.NORM_CHUNK


class LossScaler:
    """A dynamic loss scale.

    ``update(found_inf)``: after a step with non-finite gradients the scale is multiplied by
    ``backoff_factor`` and the growth counter restarts; after ``growth_interval`` finite steps
    in a row it is multiplied by ``growth_factor``. Returns the new scale.

    Example:
        >>> s = LossScaler(init_scale=8.0, growth_interval=2)
        >>> [s.update(f) for f in (False, False, True, False)]
        [8.0, 16.0, 8.0, 8.0]
    """

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000):
        check_real("init_scale", init_scale, low=0.0, low_open=True)
        check_real("growth_factor", growth_factor, low=1.0, low_open=True)
        check_real("backoff_factor", backoff_factor, low=0.0, high=1.0, low_open=True,
                   high_open=True)
        if (isinstance(growth_interval, bool) or not isinstance(growth_interval, int)
                or growth_interval < 1):
            raise ValueError(f"growth_interval must be an int >= 1, got {growth_interval!r}")
        self._scale = np.float32(init_scale)
        # as torch: the float32 scale times the factor in double, rounded to float32
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self.growth_tracker = 0

    @property
    def scale(self):
        """The current scale, a Python float (a float32 value)."""
        return float(self._scale)

    def update(self, found_inf):
        if not isinstance(found_inf, (bool, np.bool_)):
            raise TypeError(f"found_inf must be True or False, got {found_inf!r}")
        if found_inf:
            self._scale = np.float32(float(self._scale) * self.backoff_factor)
            self.growth_tracker = 0
        else:
            self.growth_tracker += 1
            if self.growth_tracker == self.growth_interval:
                self._scale = np.float32(float(self._scale) * self.growth_factor)
                self.growth_tracker = 0
        return self.scale

    def state_dict(self):
        return {"scale": self.scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "growth_tracker": self.growth_tracker}

    def load_state_dict(self, state):
        other = LossScaler(state["scale"], state["growth_factor"], state["backoff_factor"],
                           state["growth_interval"])
        tracker = state["growth_tracker"]
        if isinstance(tracker, bool) or not isinstance(tracker, int) or tracker < 0:
            raise ValueError(f"growth_tracker must be an int >= 0, got {tracker!r}")
        self.__dict__.update(other.__dict__, growth_tracker=tracker)


def _flat_float(g):
    a = check_array(g, "the gradient", writable=False, low=True)
    return a.reshape(-1)


def _passed(x):
    """What the compiled passes read for the host array ``x``: itself, or a float16 array's
    bits as ``int16`` (``kernels.reductions.READS``: Numba has no CPU float16 arrays; a
    ``uint16`` array already is bfloat16 bits)."""
    return x.view(np.int16) if x.dtype == np.float16 else x


def widen_low(x):
    """A host array's values as floats: a low-precision gradient (``uint16`` bfloat16 bits or
    ``float16``) widened to float32 (exact), any other array as it is."""
    if x.dtype == np.uint16:
        from .precision import from_bfloat16
        return from_bfloat16(x)
    if x.dtype == np.float16:
        return x.astype(np.float32)
    return x


def grad_norm_reference(g):
    """The NumPy reference of :func:`grad_norm` (same chunks, lanes and order)."""
    return math.sqrt(sum_of_squares_reference(_flat_float(g)))


def sum_of_squares_reference(x):
    """The sum of squares (float64) of a 1-D float array in the order of the Numba reduction
    (``kernels.reductions``): chunks of ``NORM_CHUNK``, eight lanes each in order (with
    ``np.cumsum``), the lanes combined in a fixed tree, the chunk sums in order."""
    x = widen_low(np.asarray(x).reshape(-1)).astype(np.float64)
    if x.size == 0:
        return 0.0
    sq = x * x
    partial = []
    for i in range(0, sq.size, NORM_CHUNK):
        c = sq[i:i + NORM_CHUNK]
        c = np.concatenate([c, np.zeros(-c.size % 8)])      # + 0.0 changes no lane sum
        a = np.cumsum(c.reshape(-1, 8), axis=0)[-1]         # each lane in order
        partial.append(((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])))
    return float(np.cumsum(np.array(partial))[-1])


def grad_norm(g):
    """The L2 norm of ``g`` (float32 or float64, any shape; or a low-precision gradient:
    ``uint16`` bfloat16 bits or ``float16``, its float32 values), deterministic (see the module
    docstring), computed by a Numba kernel (parallel over chunks above
    ``fastopt.config.PARALLEL_THRESHOLD`` elements). A CUDA device array is reduced on the
    device, also deterministically but in another fixed order (equal to the CPU's norm to
    rounding; ``fastopt._cuda_backend.device_sum_of_squares``).

    Example:
        >>> import numpy as np
        >>> grad_norm(np.array([3.0, 4.0], np.float32))
        5.0
    """
    if is_cuda_array(g):
        from ._cuda_backend import device_sum_of_squares
        return math.sqrt(device_sum_of_squares(g, config.CUDA_NORM_CHUNK))
    return math.sqrt(sum_of_squares(_flat_float(g)))


_KERNELS = {}


def _run_pass(name, x, parallel):
    """The compiled pass ``kernels.reductions.<name>`` (its serial or parallel twin, made on
    first use: nothing compiles at import) over ``x`` in chunks of ``NORM_CHUNK``, one run of
    chunks per thread (the thread count read at each call)."""
    run = _KERNELS.get((name, parallel))
    if run is None:
        from .kernels import reductions
        compiled, n_tasks = getattr(reductions, name)(parallel), reductions.n_tasks

        def run(flat):
            return compiled(flat, NORM_CHUNK, n_tasks(parallel))
        _KERNELS[name, parallel] = run
    if parallel and not _threads.READY:
        _threads.ensure_pool()
    return run(_passed(x if x.ndim == 1 else x.reshape(-1)))


def sum_of_squares(x, frozen=None):
    """The sum of squares of a validated C-contiguous host array (no checks: the step
    driver's norm pass calls it on the gradient it has validated). ``frozen``: a
    :class:`FrozenPlan` of ``x``'s size, whose frozen elements are left out (the sum is the
    one of ``x`` with them set to zero, bit for bit, and they are not read)."""
    if frozen is not None:
        return frozen.run("squares", x, config.PARALLEL_THRESHOLD)
    n = x.size
    if n == 0:
        return 0.0
    return _run_pass("chunked_sum_of_squares", x, n >= config.PARALLEL_THRESHOLD)


def all_finite(x, frozen=None):
    """Whether every element of a validated C-contiguous host float array is finite (no
    inf, no NaN): the step's check for ``skip_nonfinite`` without clipping, one read of the
    gradient at the speed of memory (``kernels.reductions.all_finite``; the answer does not
    depend on the order of the reads, so it is the same for any thread count). ``frozen``: a
    :class:`FrozenPlan`: only the elements it does not freeze are checked (and read)."""
    if frozen is not None:
        total = frozen.run("finite", x, FINITE_PARALLEL_FACTOR * config.PARALLEL_THRESHOLD)
        return total == total
    n = x.size
    if n == 0:
        return True
    total = _run_pass("all_finite", x,
                      n >= FINITE_PARALLEL_FACTOR * config.PARALLEL_THRESHOLD)
    return total == total


class FrozenPlan:
    """The reduction passes of a step with frozen groups (``fastopt.Groups``, ``"frozen":
    True``) over its gradient of ``n`` elements: ``frozen`` the frozen ranges ``[lo, hi)``,
    disjoint and in order (touching ones need not be merged). The chunks are those of the whole gradient (``chunk`` elements from 0),
    each all stepped, all frozen or mixed (``kernels.reductions``, "frozen elements left
    out"), so the sums are those of the gradient with its frozen elements zero, and nothing of
    them is read. Made once per validated step (kept in ``_step.Prepared``). The parallel
    pass's tasks are equal shares of the stepped elements (made per thread count)."""

    def __init__(self, n, frozen, chunk=NORM_CHUNK):
        frozen = np.asarray(frozen, np.int64).reshape(-1, 2)
        edges = np.concatenate(([0], frozen.reshape(-1), [n]))
        runs = edges.reshape(-1, 2)
        self.runs = np.ascontiguousarray(runs[runs[:, 1] > runs[:, 0]])
        self.n, self.chunk = n, chunk
        self.stepped = int((self.runs[:, 1] - self.runs[:, 0]).sum())
        bounds = np.minimum(np.arange(-(-n // chunk) + 1, dtype=np.int64) * chunk, n)
        before = self._stepped_before(bounds)           # stepped elements before each bound
        count = np.diff(before)                         # ... in each chunk
        self.kind = np.where(count == np.diff(bounds), 0,
                             np.where(count == 0, 1, 2)).astype(np.int8)
        self.first = np.searchsorted(self.runs[:, 1], bounds[:-1], side="right")
        self.before = before
        self._cuts = {}

    def _stepped_before(self, at):
        """The number of stepped elements before each position of ``at``."""
        lo, hi = self.runs[:, 0], self.runs[:, 1]
        full = np.concatenate(([0], np.cumsum(hi - lo)))
        r = np.searchsorted(hi, at, side="right")       # runs ending at or before ``at``
        part = np.clip(at - lo[np.minimum(r, len(lo) - 1)], 0, None) if len(lo) else 0
        return full[r] + np.where(r < len(lo), part, 0)

    def cuts(self, tasks):
        """The chunk boundaries of ``tasks`` runs of chunks holding equal shares of the
        stepped elements (a run may be empty)."""
        out = self._cuts.get(tasks)
        if out is None:
            want = self.stepped * np.arange(1, tasks, dtype=np.int64) // tasks
            inner = np.searchsorted(self.before, want, side="right") - 1
            out = np.concatenate(([0], np.clip(inner, 0, self.kind.size),
                                  [self.kind.size])).astype(np.int64)
            self._cuts[tasks] = out = np.maximum.accumulate(out)
        return out

    def run(self, name, x, threshold):
        """The pass ``name`` (``"squares"``, ``"finite"``) over ``x`` (``n`` elements);
        parallel when the stepped elements reach ``threshold``."""
        if self.stepped == 0:
            return 0.0
        from .kernels import reductions
        parallel = self.stepped >= threshold
        fn = _KERNELS.get((name, "frozen", parallel))
        if fn is None:
            fn = _KERNELS[name, "frozen", parallel] = reductions.frozen_pass(name, parallel)
        if parallel and not _threads.READY:
            _threads.ensure_pool()
        x = _passed(x if x.ndim == 1 else x.reshape(-1))
        return fn(x, self.chunk, self.cuts(reductions.n_tasks(parallel)), self.kind,
                  self.runs, self.first)


def sum_of_squares_frozen_reference(x, frozen):
    """The NumPy reference of :func:`sum_of_squares` with ``frozen`` ranges ``[lo, hi)`` left
    out: the reference sum of ``x`` with those elements set to zero."""
    x = np.array(widen_low(np.asarray(x).reshape(-1)), dtype=np.float64)
    for lo, hi in frozen:
        x[lo:hi] = 0.0
    return sum_of_squares_reference(x)


# the finiteness pass goes parallel at this multiple of PARALLEL_THRESHOLD. Alone it is cheap
# per element (at the MLP's 109,810 float32: 4.7 us serial, 6.5 us on 2 threads), but in a
# step it sits between parallel regions: run serially there (factor 4) the pool's threads fell
# asleep and the parallel update woke them, which on a 2-core Zen 3 VM made skip_nonfinite
# steps 137-154 us against 46-57 us plain at the MLP's size; at the step's own threshold
# (factor 1) 44-61 us against 36-49 us (three runs each, 2026-11-27)
FINITE_PARALLEL_FACTOR = 1
