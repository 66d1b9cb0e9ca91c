"""The one dispatch site: ``numpy`` (the reference), ``cpu`` (Numba) and ``cuda``.

:func:`choose` turns the caller's ``backend`` into one of them (``None`` chooses from where
the arrays live; an explicit choice wins or raises) and :func:`runner` builds, for validated
arrays and hyperparameters, a function ``run(t)`` that performs step ``t`` in place. The
runner keeps the arrays it was built for, never flat views of them: the CPU runner takes fresh
views on every call (so a caller who reallocates an array in place, ``a.resize(...)``, can
never make a kernel write freed memory; the step driver re-validates when shape, strides,
dtype or writability change).
"""
import numpy as np

from . import _threads, config
from ._rows import own_step, settled_step
from ._spec import distinct
from .kernels.record import param_copy_kind

BACKENDS = ("numpy", "cpu", "cuda")
# host arrays the CPU kernels read through a view (kernel_view): bfloat16 bits (state or a
# gradient) and a float16 gradient
SIXTEEN = (np.dtype(np.uint16), np.dtype(np.float16))


def choose(backend, on_device):
    """``None`` chooses from where the arrays live; an explicit backend wins or raises."""
    if backend is None:
        return "cuda" if on_device else "cpu"
    if not isinstance(backend, str) or backend not in BACKENDS:
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


def check_parallel(parallel):
    if parallel is not None and not isinstance(parallel, (bool, np.bool_)):
        raise TypeError(f"parallel must be None (choose by size), True or False, got "
                        f"{parallel!r}")
    return None if parallel is None else bool(parallel)


def runner(spec, backend, arrays, dtype, hp, parallel=None, seed=None, q8=None):
    """``run(t)`` for one validated step of ``spec`` (``seed``: the buffers' stochastic
    rounding seed for bfloat16 state, or None; ``q8``: ``(block_size, {field: scales})`` for
    8-bit state)."""
    if q8 is not None:
        if backend == "cuda":
            from ._cuda_backend import cuda_q8_runner
            return cuda_q8_runner(spec, arrays, dtype, hp, *q8)
        make = _q8_numpy_runner if backend == "numpy" else _q8_cpu_runner
        return make(spec, arrays, dtype, hp, parallel, *q8)
    if backend == "numpy":
        return _numpy_runner(spec, arrays, dtype, hp, seed)
    if backend == "cpu":
        return _cpu_runner(spec, arrays, dtype, hp, parallel, seed)
    from ._cuda_backend import cuda_runner
    return cuda_runner(spec, arrays, dtype, hp, seed)


def _numpy_runner(spec, arrays, dtype, hp, seed=None, offset=0):
    st = np.dtype(dtype).type
    copy = arrays.get("param_copy")
    arrays = {k: a for k, a in arrays.items() if k != "param_copy"}
    bits = any(a.dtype == np.uint16 for k, a in arrays.items() if k != "grad")  # bfloat16 state

    def run(t, hp_now=None, factor=None):
        hp_now = hp if hp_now is None else hp_now
        # unscale x clip: one multiplication in the buffer dtype, as the kernel
        given = _given(arrays, factor, st)
        if bits:
            from .precision import numpy_step, rounding_key
            # (a grouped row's own step count for the formulas; the rounding stream is keyed
            # by the buffers' step)
            numpy_step(spec.reference, given, hp_now, own_step(hp_now, t), st, offset=offset,
                       key=None if seed is None else rounding_key(seed, t))
        else:
            spec.reference(given, hp_now, own_step(hp_now, t), st)
        if copy is not None:
            _write_copy(dict(arrays, param_copy=copy))
    return run


def _given(arrays, factor, st):
    """The reference's arrays for one step: a low-precision gradient widened to float32
    (exact, as the kernels read it: ``fastopt.scaling.widen_low``), then multiplied by the
    gradient factor (unscale x clip) in the buffer dtype, as the kernels do, when there is
    one."""
    from .scaling import widen_low
    g = arrays["grad"]
    w = widen_low(g)
    if factor is None:
        return arrays if w is g else dict(arrays, grad=w)
    return dict(arrays, grad=w * st(factor))


def compiled_entry(dispatcher, args):
    """The compiled entry point of ``dispatcher`` for the types of ``args`` (compiled or
    loaded from the disk cache now). Used where an argument is bfloat16 state: Numba resolves
    the type of such an argument in Python, ~10 us per argument per call, which the entry
    point skips (the runner passes arguments of the very same types every call)."""
    from numba import typeof
    sig = tuple(typeof(a) for a in args)
    if sig not in dispatcher.overloads:
        dispatcher.compile(sig)
    return dispatcher.overloads[sig].entry_point


def kernel_view(a, seed=None, offset=0, key=0):
    """What a CPU kernel receives for host array ``a`` (1-D): the array itself, or for
    bfloat16 state (``uint16`` bits) a ``kernels.precision.BF16Bits`` over it (stochastic
    rounding when ``seed`` is not None: element indices from ``offset``, ``key`` per step).
    A low-precision gradient reads the same way: bfloat16 bits through a ``BF16Bits`` (give
    no ``seed``: it is never written), a float16 array through a ``kernels.precision.F16Bits``
    over its bits."""
    if a.dtype == np.float16:
        from .kernels.precision import F16Bits
        return F16Bits(a.view(np.uint16))
    if a.dtype != np.uint16:
        return a
    from .kernels.precision import BF16Bits
    return BF16Bits(a, None if seed is None else key, offset)


def kernel_args(sources, copy, ph, seed=None, offset=0, lo=None, hi=None, flatten=False):
    """The CPU kernel's array arguments for ``sources`` (the record's arrays, param and grad
    first, ``None`` for unused state: ``ph``), optionally flattened and cut to ``[lo, hi)``:
    bfloat16 state and a low-precision gradient as :func:`kernel_view`, and the parameter
    wrapped with its ``param_copy`` (bfloat16 bits written in the same pass,
    ``kernels.precision.ParamWithCopy``) when there is one."""
    def cut(a):
        if flatten:
            a = a.reshape(-1)
        return a if lo is None else a[lo:hi]
    out = []
    for j, a in enumerate(sources):
        if a is None:
            out.append(ph)
            continue
        v = kernel_view(cut(a), seed if j != 1 else None, offset + (lo or 0))
        if j == 0 and copy is not None:
            from .kernels.precision import ParamWithCopy
            half = param_copy_kind(copy) == "float16"
            v = ParamWithCopy(v, cut(copy).view(np.uint16), half)
        out.append(v)
    return out


def _set_keys(views, seed, t):
    """Give the stochastic bfloat16 views of a step their key for step ``t``."""
    if seed is not None:
        from .precision import rounding_key
        key = rounding_key(seed, t)
        for v in views:
            if getattr(v, "stochastic", False):
                v.key = key


_PLACEHOLDERS = {}


def placeholder(dtype):
    """A zero-length array standing in for state an option set does not use (writable, so
    that every option combination compiles against the same array type)."""
    dtype = np.dtype(dtype)
    a = _PLACEHOLDERS.get(dtype)
    if a is None:
        a = _PLACEHOLDERS[dtype] = np.empty(0, dtype=dtype)
    return a


def _pack(spec, hp, t, scalars, scaled_scalars, factor):
    """The kernel's packed scalars for step ``t`` (refilled in place), with the gradient
    factor last when there is one."""
    if factor is None:
        return spec.fill_scalars(hp, t, scalars)
    spec.fill_scalars(hp, t, scaled_scalars[:-1])
    scaled_scalars[-1] = factor
    return scaled_scalars


def _cpu_runner(spec, arrays, dtype, hp, parallel, seed=None, offset=0):
    from .kernels import cpu
    families = {False: cpu.family(spec.kernel)}
    st = np.dtype(dtype).type
    ph = placeholder(dtype)
    sources = [arrays.get(name) for name in spec.kernel.arrays]
    # a 1-D C-contiguous array goes to the kernel as it is; an N-D one as a view made at each
    # call (a view kept across calls would point at freed memory after an in-place resize)
    flat = all(a is None or a.ndim == 1 for a in sources)
    copy = arrays.get("param_copy")
    static = kernel_args(sources, copy, ph, seed, offset)
    # custom argument types (bfloat16 state, a low-precision gradient, a param copy): call
    # the compiled entry point
    bits = copy is not None or any(a is not None and a.dtype in SIXTEEN for a in sources)
    n = int(arrays["param"].size)
    kernels = {}
    # the packed scalars, refilled at each call (a step runs under its buffers' lock); the
    # scaled kernels take one more: the gradient factor
    scalars = spec.kernel_scalars(dict(hp), 1, st)     # (the array; dict: not a row behind)
    scaled_scalars = np.empty(scalars.shape[0] + 1, st)
    prepass = _cpu_prepass(spec) if spec.kernel.norm_names else None
    behind = 1 - own_step(hp, 1)            # a grouped row's steps_behind (else 0)

    def run(t, hp_now=None, factor=None):
        """Step ``t``; ``hp_now``: this step's hyperparameters when schedules set them;
        ``factor``: the gradient is multiplied by it first (unscale x clip)."""
        if n == 0:
            return
        par = n >= config.PARALLEL_THRESHOLD if parallel is None else parallel
        scaled = factor is not None
        if hp_now is None and not scaled:
            hp_now = hp
            key = (par, t - behind == 1)            # the common call: the shortest key
        else:       # a schedule may move a value across an option (e.g. weight_decay 0 -> x)
            hp_now = hp if hp_now is None else hp_now
            key = (par, own_step(hp_now, t) == 1, scaled) + tuple(
                spec.step_options(hp_now, t).items())
        kernel = kernels.get(key)
        if kernel is None:
            fam = families.get(scaled)
            if fam is None:
                fam = families[scaled] = cpu.family(spec.kernel, scaled)
            options = spec.step_options(hp_now, t)
            kernel = fam.get(par, **options)
            typed = kernel_args(sources, copy, ph, seed, flatten=True)
            if bits:
                kernel = compiled_entry(kernel, typed + [scalars])
            kernels[key] = kernel
            if prepass is not None:
                prepass.compile(key, scaled, par, options, typed if bits else None, scalars)
        if par and not _threads.READY:
            _threads.ensure_pool()
        packed = _pack(spec, hp_now, t, scalars, scaled_scalars, factor)
        args = static if flat else kernel_args(sources, copy, ph, seed, offset, flatten=True)
        if seed is not None:
            _set_keys(args, seed, t)
        if prepass is not None:
            prepass.run(key, args, packed, hp_now, t)
        kernel(*args, packed)
    return run


class _cpu_prepass:
    """The read-only pre-pass of a spec whose kernel record has ``norms``: the segment's sums
    of squares (``kernels.reductions.segment_norms``), turned by ``spec.segment_scalars`` into
    the scalars the update pass then reads (written into the packed scalars, rounded to the
    buffer dtype)."""

    def __init__(self, spec):
        self.spec = spec
        self.fns = {}

    def compile(self, key, scaled, par, options, typed, scalars):
        from .kernels import reductions
        fn = reductions.segment_norms(self.spec.kernel, scaled, par, options)
        if typed is not None:           # bfloat16 state: see compiled_entry
            fn = compiled_entry(fn, (tuple(typed), scalars, config.NORM_CHUNK))
        self.fns[key] = fn

    def run(self, key, args, packed, hp, t):
        sums = self.fns[key](tuple(args), packed, config.NORM_CHUNK)
        self.spec.fill_segment_rows((hp,), t, sums, packed[None, :])


# ---------------------------------------------------------------- parameter groups
def grouped_runner(spec, backend, arrays, dtype, rows, segments, parallel=None, seed=None,
                   q8=None, frozen=()):
    """``run(t, rows_now=None, factor=None)`` for one validated grouped step: ``rows`` are the
    groups' validated hyperparameters, ``segments`` ``((lo, hi, row), ...)`` the element
    ranges (flat indices, in order, non-empty, not overlapping; elements in none, ``frozen``,
    are not stepped: nothing of them is written). Each segment is stepped
    exactly as its slice alone would be: NumPy runs the reference per segment, the CPU one
    compiled call for all of them and CUDA one launch (``kernels/groups.py``; a pre-pass per
    segment, bfloat16 state or a param copy: one call per segment). ``q8``: ``(block_size,
    {field: scales})`` for 8-bit state."""
    if not segments:                # every element frozen: nothing to step
        return _nothing
    if q8 is not None:
        if backend == "numpy":
            return _q8_numpy_grouped(spec, arrays, dtype, rows, segments, *q8, frozen)
        if backend == "cpu":
            return _q8_cpu_grouped(spec, arrays, dtype, rows, segments, parallel, *q8)
        from ._cuda_backend import cuda_q8_grouped_runner
        return cuda_q8_grouped_runner(spec, arrays, dtype, rows, segments, *q8)
    if backend == "numpy":
        return _numpy_grouped(spec, arrays, dtype, rows, segments, seed)
    if backend == "cpu":
        return _cpu_grouped(spec, arrays, dtype, rows, segments, parallel, seed)
    from ._cuda_backend import cuda_grouped_runner
    return cuda_grouped_runner(spec, arrays, dtype, rows, segments, seed)


def _nothing(t, rows_now=None, factor=None):
    pass


def _numpy_grouped(spec, arrays, dtype, rows, segments, seed=None):
    return _per_segment(lambda a, hp, lo: _numpy_runner(spec, a, dtype, hp, seed, lo), arrays,
                        rows, segments)


def _per_segment(make, arrays, rows, segments):
    """A grouped step as one runner per segment (``make(segment_arrays, hp, offset)``),
    called in order, each with its row's hyperparameters."""
    flat = {k: a.reshape(-1) for k, a in arrays.items()}
    runs = [(make({k: a[lo:hi] for k, a in flat.items()}, rows[r], lo), r)
            for lo, hi, r in segments]

    def run(t, rows_now=None, factor=None):
        rows_now = rows if rows_now is None else rows_now
        for segment_run, r in runs:
            segment_run(t, rows_now[r], factor)
    return run


GROUP_CHUNKS_PER_THREAD = 4   # equal shares of a parallel grouped step's elements per thread
# A record with a pre-pass (LAMB) over segments of this many elements or more on average steps
# segment by segment (its pre-pass, then its update, while the segment is still in the L3
# cache); below, every segment's pre-pass in one call, then one call for every update (2
# threads, Zen 4, 32 MiB L3, interleaved with the per-segment way: 1e7 in 10 tensors 9.0-9.8 vs
# 7.9-8.0 ms; in 100 tensors 9.8-10.6 vs 12.2-12.4 ms; 1e6 in 10 0.48-0.50 vs 0.93-0.95 ms)
ONE_CALL_PREPASS_MAX_MEAN = 1 << 18


def _cpu_grouped(spec, arrays, dtype, rows, segments, parallel, seed=None):
    sources = [arrays.get(name) for name in spec.kernel.arrays]
    copy = arrays.get("param_copy")
    # (a low-precision gradient's view is sliced inside the driver: it is only read; a slice
    # of bfloat16 state would lose its stochastic rounding's key and offset, one of the
    # parameter with its copy the copy)
    bits = copy is not None or any(a is not None and a.dtype in SIXTEEN
                                   for j, a in enumerate(sources) if j != 1)
    n = int(arrays["param"].size)
    if bits or (spec.kernel.norm_names and n >= ONE_CALL_PREPASS_MAX_MEAN * len(segments)):
        # bfloat16 state / a param copy (custom Numba types, not sliced inside a compiled
        # driver), or a record with a pre-pass over large segments: each segment is its own
        # step
        return _per_segment(
            lambda a, hp, lo: _cpu_runner(spec, a, dtype, hp, parallel, seed, lo), arrays,
            rows, segments)
    import numba

    from .kernels import groups as grouped
    ph = placeholder(dtype)
    flat = all(a is None or a.ndim == 1 for a in sources)
    static = kernel_args(sources, None, ph)

    def build(kernels, kinds, scaled, par, table):
        threads = numba.get_num_threads() if par else 1
        items, starts = grouped.cpu_items(segments, kinds, n, threads * GROUP_CHUNKS_PER_THREAD)
        driver = grouped.cpu_driver(tuple(kernels), len(sources), par)
        if flat:    # the same argument types at every call: skip Numba's type resolution
            driver = compiled_entry(driver, static + [table, items, starts])
        return driver, items, starts

    def call(work, table, par, rows_now, t, scaled):
        driver, items, starts = work
        args = static if flat else kernel_args(sources, None, ph, flatten=True)
        driver(*args, table, items, starts)
    if not spec.kernel.norm_names:
        return _one_call(spec, dtype, rows, segments, n, parallel, build, call)
    # a pre-pass per segment (LAMB's trust ratio): a row per segment, the pre-pass of every
    # segment in one call (per option combination), then the one-call grouped step
    of_row = [r for _, _, r in segments]
    segments = [(lo, hi, i) for i, (lo, hi, _) in enumerate(segments)]
    prepass = _cpu_grouped_prepass(spec, segments, lambda: static if flat else kernel_args(
        sources, None, ph, flatten=True))
    run = _one_call(spec, dtype, [rows[r] for r in of_row], segments, n, parallel, build, call,
                    prepass)

    def run_by_segment(t, rows_now=None, factor=None):
        run(t, None if rows_now is None else [rows_now[r] for r in of_row], factor)
    return run_by_segment


def _cpu_grouped_prepass(spec, segments, args):
    """``prepass(table, hps, t, scaled, par)`` for a grouped step of a record with norms, a
    row of ``table`` per segment (``hps[i]`` segment ``i``'s hyperparameters): every segment's
    sums in one call per option combination (``kernels.reductions.segment_norms(many=True)``:
    each segment's sums are the bits it gets stepped alone), then ``spec.segment_scalars``
    written into each segment's row (rounded to the table's dtype). ``args()``: the arrays."""
    from .kernels import reductions
    segs = np.array(segments, np.int64).reshape(-1, 3)
    fns, picked = {}, {}

    def prepass(table, hps, t, scaled, par):
        kinds = spec.option_kinds(hps, t)
        sums = np.empty((len(hps), len(spec.kernel.norm_names)))
        arrays = tuple(args())
        for options, members in kinds.items():
            key = (scaled, par, options)
            fn = fns.get(key)
            if fn is None:
                fn = fns[key] = reductions.segment_norms(spec.kernel, scaled, par,
                                                         dict(options), many=True)
            members = tuple(members)
            these = picked.get(members)
            if these is None:
                these = picked[members] = (segs if len(members) == len(hps)
                                           else np.ascontiguousarray(segs[list(members)]))
            sums[list(members)] = fn(arrays, table, these, config.NORM_CHUNK)
        spec.fill_segment_rows(hps, t, sums, table)
    return prepass


def _one_call(spec, dtype, rows, segments, n, parallel, build, call, prepass=None):
    """``run(t, rows_now=None, factor=None)`` of a grouped step in one compiled call: the
    record's serial kernel per *kind* (distinct option combination of the rows), the work
    ``build(kernels, kinds, scaled, parallel, table)`` makes for them (kept while the kinds stay
    the same: scheduled rows step after step), and ``call(work, table, parallel, rows, t,
    scaled)`` with this step's rows of packed scalars in ``table`` (each distinct row computed
    once). ``prepass(table, rows, t, scaled, parallel)``: sets what a record's pre-pass sets
    in the rows first (:func:`_cpu_grouped_prepass`)."""
    from .kernels import cpu
    st = np.dtype(dtype).type
    n_scalars = len(spec.kernel.scalars)
    # one row of packed scalars per group; the scaled kernels take the gradient factor last
    tables = {False: np.zeros((len(rows), n_scalars), st),
              True: np.zeros((len(rows), n_scalars + 1), st)}
    plans, built = {}, {}
    rows_distinct = distinct(rows)     # the rows of a step without schedules, every step
    settled = settled_step(rows)
    stepped = sum(hi - lo for lo, hi, _ in segments)     # (frozen groups: fewer than n)

    def plan(rows_now, t, scaled, par):
        fam = cpu.family(spec.kernel, scaled)
        kernels, kinds = [], []
        for lo, hi, r in segments:
            kernel = fam.get(False, **spec.step_options(rows_now[r], t))
            if kernel not in kernels:
                kernels.append(kernel)
            kinds.append(kernels.index(kernel))
        key = (scaled, par, tuple(kernels), tuple(kinds))
        work = built.get(key)
        if work is None:
            work = built[key] = build(kernels, kinds, scaled, par, tables[scaled])
        return work

    def run(t, rows_now=None, factor=None):
        if n == 0:
            return
        scaled = factor is not None
        par = stepped >= config.PARALLEL_THRESHOLD if parallel is None else parallel
        if rows_now is None:       # no schedules: the options depend on t only via t == 1
            rows_now = rows        # (each row's own t: :func:`settled_step`)
            # (the work is cut for the thread count of the first call: elements are
            # independent, so another count changes no bit, only the balance)
            key = (min(t, settled), scaled, par)
            work = plans.get(key)
            if work is None:
                work = plans[key] = plan(rows, t, scaled, par)
        else:
            work = plan(rows_now, t, scaled, par)
        table = tables[scaled]
        spec.fill_scalar_rows(rows_now, t, table[:, :n_scalars],
                              rows_distinct if rows_now is rows else None, settled > 2)
        if scaled:
            table[:, n_scalars] = factor
        if par and not _threads.READY:
            _threads.ensure_pool()
        if prepass is not None:
            prepass(table, rows_now, t, scaled, par)
        call(work, table, par, rows_now, t, scaled)
    return run


def _q8_numpy_runner(spec, arrays, dtype, hp, parallel, block, scales):
    """The NumPy reference on 8-bit state: dequantize, the reference, quantize per block
    (``fastopt.quantization.numpy_step``)."""
    from . import quantization
    st = np.dtype(dtype).type

    plain = {k: a for k, a in arrays.items() if k != "param_copy"}

    def run(t, hp_now=None, factor=None):
        hp_now = hp if hp_now is None else hp_now
        given = _given(plain, factor, st)
        quantization.numpy_step(spec.reference, given, scales, spec.kernel, block, hp_now, t,
                                st)
        _write_copy(arrays)
    return run


def _write_copy(arrays, segments=None):
    """The NumPy reference's param copy: the new parameters rounded to bfloat16, or to
    float16 by NumPy's own conversion (only the elements of ``segments`` ``((lo, hi, _),
    ...)`` when given: a grouped step's, frozen groups left out)."""
    copy = arrays.get("param_copy")
    kind = param_copy_kind(copy)
    if not kind:
        return
    p, c = arrays["param"].reshape(-1), copy.reshape(-1)
    for lo, hi in ([(0, p.shape[0])] if segments is None else
                   [(lo, hi) for lo, hi, _ in segments]):
        if kind == "float16":
            with np.errstate(over="ignore"):
                c[lo:hi] = p[lo:hi].astype(np.float16)
        else:
            from .precision import to_bfloat16
            c[lo:hi] = to_bfloat16(p[lo:hi])


def _q8_numpy_grouped(spec, arrays, dtype, rows, segments, block, scales, frozen=()):
    """The NumPy reference of a grouped step on 8-bit state: the whole state dequantized,
    each segment's reference step on its slices (its row's hyperparameters), the state
    quantized back in the buffer's blocks (a block may hold pieces of two groups) but for the
    blocks of ``frozen`` ranges, left as they are."""
    from . import quantization

    plain = {k: a for k, a in arrays.items() if k != "param_copy"}

    def run(t, rows_now=None, factor=None):
        def update(work):
            _per_segment(lambda a, hp, lo: _numpy_runner(spec, a, dtype, hp), work, rows,
                         segments)(t, rows_now, factor)
        quantization.with_dequantized(plain, scales, spec.kernel, block, update, frozen)
        _write_copy(arrays, segments)
    return run


def _q8_cpu_grouped(spec, arrays, dtype, rows, segments, parallel, block, scales):
    """A grouped step on 8-bit state in one compiled call: the block driver
    (``kernels.quant8.grouped_driver``) dequantizes each block, runs each of its pieces (the
    segments cut at block boundaries) with the serial kernel of the piece's kind and its
    group's row of scalars, and quantizes the block back."""
    import numba

    from .kernels import quant8
    n = int(arrays["param"].size)
    quantized, args = _q8_args(spec, arrays, dtype, scales)
    copy = param_copy_kind(arrays.get("param_copy"))
    prepass = _q8_prepass(spec, quantized, args[:-1] if copy else args, block)
    of_row = None
    if prepass is not None:     # a value per segment (LAMB's trust ratio): a row per segment
        of_row = [r for _, _, r in segments]
        rows = [rows[r] for r in of_row]
        segments = [(lo, hi, i) for i, (lo, hi, _) in enumerate(segments)]

    def build(kernels, kinds, scaled, par, table):
        items, bstarts = quant8.block_items(segments, kinds, n, block)
        return (quant8.grouped_driver(kernels, len(spec.kernel.arrays), quantized, par, copy,
                                      _q8_table(dtype)), items, bstarts, {})

    def call(work, table, par, rows_now, t, scaled):
        if prepass is not None:
            for i, (lo, hi, _) in enumerate(segments):
                prepass(table[i], rows_now[i], t, spec.step_options(rows_now[i], t), scaled, par,
                        lo, hi)
        driver, items, bstarts, cuts = work
        chunks = numba.get_num_threads() * Q8_CHUNKS_PER_THREAD if par else 1
        cut = cuts.get(chunks)
        if cut is None:
            cut = cuts[chunks] = quant8.block_cuts(bstarts, chunks)
        driver(*args, table, items, bstarts, block, cut)
    run = _one_call(spec, dtype, rows, segments, n, parallel, build, call)
    if of_row is None:
        return run

    def run_by_segment(t, rows_now=None, factor=None):
        run(t, None if rows_now is None else [rows_now[r] for r in of_row], factor)
    return run_by_segment


Q8_CHUNKS_PER_THREAD = 8     # runs of blocks per thread in a parallel 8-bit step


def _q8_table(dtype):
    """Whether the block drivers of ``dtype`` encode with the one-read table
    (``fastopt.quantization.encode_table``: float32 only, as the table compares float32
    bits)."""
    return np.dtype(dtype) == np.float32


def _q8_args(spec, arrays, dtype, scales):
    """``(quantized, args)`` for a block driver (``kernels.quant8``): per array of the record,
    whether it is 8-bit state, and the driver's arguments (each 8-bit array as codes, scales,
    map values, first table (float32: the one-read encoding table, :func:`_q8_table`; the
    LAMB pre-pass does not read it), midpoints; a missing array as a placeholder; then the
    param copy when there is one)."""
    from . import quantization
    st = np.dtype(dtype).type
    ph = placeholder(dtype)
    names = spec.kernel.arrays
    quantized = tuple(name in scales for name in names)
    args = []
    for name in names:
        a = arrays.get(name)
        if name in scales:
            qm = quantization.qmap_for(spec.kernel, name)
            args += [a.reshape(-1), scales[name], qm.values.astype(st),
                     qm.table if _q8_table(dtype) else qm.first, qm.mid.astype(st)]
        elif name == "grad":        # (a low-precision gradient: read through its view)
            args.append(kernel_view(a.reshape(-1)))
        else:
            args.append(ph if a is None else a.reshape(-1))
    if arrays.get("param_copy") is not None:
        args.append(arrays["param_copy"].reshape(-1).view(np.uint16))   # (float16: its bits)
    return quantized, args


def _q8_cpu_runner(spec, arrays, dtype, hp, parallel, block, scales):
    """A CPU step on 8-bit state: the record's serial kernel body inside a block driver
    (``kernels.quant8``): per block, dequantize into an L1 row, update, quantize back."""
    import numba

    from .kernels import cpu, quant8
    st = np.dtype(dtype).type
    n = int(arrays["param"].size)
    names = spec.kernel.arrays
    quantized, args = _q8_args(spec, arrays, dtype, scales)
    copy = param_copy_kind(arrays.get("param_copy"))
    prepass = _q8_prepass(spec, quantized, args[:-1] if copy else args, block)
    drivers = {}
    scalars = spec.kernel_scalars(dict(hp), 1, st)     # (the array; dict: not a row behind)
    scaled_scalars = np.empty(scalars.shape[0] + 1, st)

    def run(t, hp_now=None, factor=None):
        if n == 0:
            return
        hp_now = hp if hp_now is None else hp_now
        par = n >= config.PARALLEL_THRESHOLD if parallel is None else parallel
        scaled = factor is not None
        options = spec.step_options(hp_now, t)
        key = (par, scaled) + tuple(options.items())
        drv = drivers.get(key)
        if drv is None:
            body = cpu.family(spec.kernel, scaled).get(False, **options)
            drv = drivers[key] = quant8.driver(body, len(names), quantized, par, copy,
                                               _q8_table(dtype))
        if par and not _threads.READY:
            _threads.ensure_pool()
        packed = _pack(spec, hp_now, t, scalars, scaled_scalars, factor)
        if prepass is not None:
            prepass(packed, hp_now, t, options, scaled, par, 0, n)
        chunks = numba.get_num_threads() * Q8_CHUNKS_PER_THREAD if par else 1
        drv(*args, packed, block, chunks)
    return run


def _q8_prepass(spec, quantized, args, block):
    """For a record with norms (LAMB) on 8-bit state: ``prepass(packed, hp, t, options,
    scaled, parallel, lo, hi)`` sums elements ``lo .. hi - 1`` (``kernels.quant8.prepass``:
    chunk by chunk on the dequantized state, the float pre-pass's order) and writes the
    scalars ``spec.segment_scalars`` derives from the sums into ``packed`` (rounded to its
    dtype). None for a record without norms."""
    if not spec.kernel.norm_names:
        return None
    from .kernels import quant8, reductions
    k = len(spec.kernel.norm_names)
    fns = {}

    def prepass(packed, hp, t, options, scaled, par, lo, hi):
        key = (scaled, par) + tuple(options.items())
        fn = fns.get(key)
        if fn is None:
            norms = reductions.segment_norms(spec.kernel, scaled, False, options)
            fn = fns[key] = quant8.prepass(norms, len(spec.kernel.arrays), quantized, par)
        sums = fn(*args, packed, config.NORM_CHUNK, block, lo, hi, k)
        spec.fill_segment_rows((hp,), t, sums, packed[None, :])
    return prepass
