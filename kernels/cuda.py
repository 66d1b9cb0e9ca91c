"""CUDA kernels built from kernel records (``kernels.record``): the same per-element functions
as the CPU kernels compiled with ``numba.cuda.jit(device=True)``, the same kernel bodies with a
grid-stride loop over flat 1-D device buffers, in place. Boolean options are compile-time
constants of each kernel, as on the CPU, so an unused state array is never touched and a
zero-length device array stands in for it. The scalars (one tuple, passed by value with the
launch) must already have the buffer dtype: a float64 scalar would turn a float32 kernel's
arithmetic into float64 (the PTX tests check that no float64 instruction appears in any float32
kernel).

No contraction: NVVM fuses ``a * b + c`` into one fused multiply-add by default (its ``-fma=1``),
which rounds once where the CPU kernel and the NumPy reference round twice, so a GPU step would
differ from them in the last bits. fastopt compiles its kernels with ``-fma=0`` (:func:`exact`):
every float32/float64 ``+ - * /`` and ``sqrt`` is then one IEEE-rounded operation, as on the CPU
(CUDA's default division and square root are correctly rounded). numba-cuda has no option for
this, so :func:`exact` wraps ``numba.cuda.cudadrv.nvvm.compile_ir`` once, and the wrapper adds
``fma=0`` only in a thread that is inside ``exact()`` (fastopt's launches): other code's kernels
compile as before. ``NVVM_CONTRACTION`` says whether that hook could be installed. The kernels
are also built with ``lto=False``: with link-time optimization (numba-cuda's default where
nvJitLink is installed) NVVM emits LTO-IR and nvJitLink generates the code, contracting again
(seen on an H200: every optimizer that multiplies and adds differed from the CPU in the last
bits until LTO was turned off for them).

This module imports ``numba.cuda``; fastopt imports it only when a CUDA path is used.
"""
import contextlib
import inspect
import math
import threading

import numpy as np
from numba import cuda, float64, int32

from .decorators import bind
from .record import DEVICE_FACTOR, copy_kind

_device = {}

_exact_state = threading.local()


def _install_no_contraction():
    try:
        from numba.cuda.cudadrv import nvvm
    except ImportError:            # the simulator, or a numba-cuda without this module
        return False
    original = getattr(nvvm, "compile_ir", None)
    if original is None:
        return False
    if getattr(original, "_fastopt_exact", False):
        return True

    def compile_ir(llvmir, **options):
        if getattr(_exact_state, "depth", 0):
            options.setdefault("fma", False)
        return original(llvmir, **options)
    compile_ir._fastopt_exact = True
    nvvm.compile_ir = compile_ir
    return True


NVVM_CONTRACTION = not _install_no_contraction()   # True: kernels compile with NVVM's FMAs


def _kernel_jit(fn=None, **target):
    """``cuda.jit`` for fastopt's kernels: no link-time optimization (see the module docstring),
    plus ``target`` options (launch bounds); the simulator's ``jit`` takes none of them."""
    from numba import config as numba_config
    options = {} if numba_config.ENABLE_CUDASIM else {"lto": False, **target}
    if fn is None:
        return cuda.jit(**options)
    return cuda.jit(fn, **options)


@contextlib.contextmanager
def exact():
    """Kernels compiled (first launched, or ``cuda.compile_ptx``-ed) inside this block get
    NVVM's ``-fma=0``: no multiply-add contraction, so they round as the CPU kernels do."""
    _exact_state.depth = getattr(_exact_state, "depth", 0) + 1
    try:
        yield
    finally:
        _exact_state.depth -= 1


@cuda.jit(device=True)
def grid_range(n):
    """This thread's indices of a grid-stride loop over ``n`` elements."""
    return range(cuda.grid(1), n, cuda.gridsize(1))


@cuda.jit(device=True)
def block_range(n):
    """This thread's indices of a block-stride loop over ``n`` elements (the grouped kernel's
    bodies: each block steps its own tiles)."""
    return range(cuda.threadIdx.x, n, cuda.blockDim.x)


@cuda.jit(device=True)
def unpack_tuple(s):
    """On CUDA the scalars already arrive as a tuple."""
    return s


@_kernel_jit
def fill(a, value):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, a.shape[0], stride):
        a[i] = value


def _norm_threads():
    """256, fixed: the combine order of a chunk's partial sums depends on it. Under Numba's
    CUDA simulator (tests only), which runs one Python thread per CUDA thread, 32: the same
    order for a narrower block, and an eighth of the threads to simulate."""
    from numba import config as numba_config
    return 32 if numba_config.ENABLE_CUDASIM else 256


NORM_THREADS = _norm_threads()


@cuda.jit(device=True)
def tree_sum(sh, tid, acc):
    """The ``NORM_THREADS`` threads' ``acc`` (float64) added in a fixed tree in the shared
    array ``sh`` (thread ``tid`` with ``tid + half``, halving); every thread gets the total.
    The caller synchronizes before ``sh`` is written again."""
    sh[tid] = acc
    cuda.syncthreads()
    s = NORM_THREADS // 2
    while s > 0:
        if tid < s:
            sh[tid] += sh[tid + s]
        cuda.syncthreads()
        s //= 2
    return sh[0]


@cuda.jit(device=True)
def chunk_acc(x, start, end, tid):
    """Thread ``tid``'s sum of squares (float64) of its elements ``start + tid``, ``start +
    tid + NORM_THREADS``, ... below ``end``, in order, eight loads ahead of the additions."""
    t = NORM_THREADS
    acc = float64(0.0)
    i = start + tid
    while i + 7 * t < end:
        v0 = float64(x[i])
        v1 = float64(x[i + t])
        v2 = float64(x[i + 2 * t])
        v3 = float64(x[i + 3 * t])
        v4 = float64(x[i + 4 * t])
        v5 = float64(x[i + 5 * t])
        v6 = float64(x[i + 6 * t])
        v7 = float64(x[i + 7 * t])
        acc += v0 * v0
        acc += v1 * v1
        acc += v2 * v2
        acc += v3 * v3
        acc += v4 * v4
        acc += v5 * v5
        acc += v6 * v6
        acc += v7 * v7
        i += 8 * t
    while i < end:
        v = float64(x[i])
        acc += v * v
        i += t
    return acc


@cuda.jit(device=True)
def chunk_sums(x, chunk, out, sh, tid):
    """This block's chunks of :func:`chunk_sum_of_squares` (grid-stride), their sums in
    ``out``; every thread returns after the block's last barrier."""
    n = x.shape[0]
    for c in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
        start = c * chunk
        total = tree_sum(sh, tid, chunk_acc(x, start, min(n, start + chunk), tid))
        if tid == 0:
            out[c] = total
        cuda.syncthreads()


@cuda.jit(device=True)
def mixed_acc(x, start, end, tid, runs, r):
    """:func:`chunk_acc` of a chunk with frozen elements, counted as zeros: only the elements
    inside the stepped runs ``runs[r:]`` (``(k, 2)`` int64, ``[lo, hi)`` in order) are read;
    the same additions in the same order as over the gradient with the frozen elements zero
    (``+ 0.0`` leaves a sum of squares as it is), so the same bits."""
    acc = float64(0.0)
    i = start + tid
    while i < end:
        while r < runs.shape[0] and runs[r, 1] <= i:
            r += 1
        v = float64(0.0)
        if r < runs.shape[0] and runs[r, 0] <= i:
            v = float64(x[i])
        acc += v * v
        i += NORM_THREADS
    return acc


@cuda.jit(device=True)
def chunk_sums_frozen(x, chunk, out, sh, tid, kind, runs, first):
    """:func:`chunk_sums` with frozen elements left out (``fastopt.scaling.FrozenPlan`` makes
    the arrays): chunk ``c`` all stepped (``kind[c]`` 0) as there, all frozen (1) read not at
    all (its sum 0.0), mixed (2) by :func:`mixed_acc` from the stepped run ``first[c]``."""
    n = x.shape[0]
    for c in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
        start = c * chunk
        end = min(n, start + chunk)
        k = kind[c]
        acc = float64(0.0)
        if k == 0:
            acc = chunk_acc(x, start, end, tid)
        elif k == 2:
            acc = mixed_acc(x, start, end, tid, runs, first[c])
        total = tree_sum(sh, tid, acc)
        if tid == 0:
            out[c] = total
        cuda.syncthreads()


@_kernel_jit
def chunk_sum_of_squares(x, chunk, out):
    """``out[c]`` = the sum of squares (float64) of chunk ``c`` of ``x`` (``chunk`` elements),
    in a fixed order: thread ``j`` of the block sums elements ``j, j + 256, ...`` of the chunk
    in order, then the 256 partial sums are combined in a fixed tree. Blocks take chunks in a
    grid-stride loop, so the result does not depend on the grid size. A thread loads eight of
    its elements before adding them (in the same order): eight loads in flight, not one (the
    pass ran at ~1.7 TB/s on an H200 with one). With :func:`finish_sum_of_squares`, the
    two-launch form of the pass: steps launch :func:`sum_of_squares` (both in one), which
    tests hold to these two kernels' bits."""
    sh = cuda.shared.array(NORM_THREADS, float64)
    chunk_sums(x, chunk, out, sh, cuda.threadIdx.x)


@cuda.jit(device=True)
def finish(acc, inv, max_norm, total, factor, sh, tid):
    """The end of :func:`finish_sum_of_squares` (one block of ``NORM_THREADS``), from each
    thread's sum ``acc`` of its chunk sums."""
    t = tree_sum(sh, tid, acc)
    if tid == 0:
        total[0] = t
        if factor.shape[0] > 0:
            norm = math.sqrt(t) * inv
            coef = max_norm / (norm + 1e-6)
            clip = coef if coef < 1.0 or coef != coef else 1.0
            factor[0] = inv * clip


@_kernel_jit
def finish_sum_of_squares(partial, inv, max_norm, total, factor):
    """One block of ``NORM_THREADS`` threads: ``total[0]`` = the sum of the chunk sums
    ``partial`` (float64) in a fixed order: thread ``j`` adds ``partial[j], partial[j + 256],
    ...`` in order, then the partial sums are combined in the fixed tree of
    :func:`chunk_sum_of_squares`. ``factor`` (one element, the buffers' dtype; empty: none):
    the factor a clipped step multiplies the gradient by, computed from the total as the host
    computes it (``fastopt._step._loop_factor``, float64, then rounded once to the buffers'
    dtype): ``norm = sqrt(total) * inv``, ``clip = min(1, max_norm / (norm + 1e-6))`` (NaN
    when the norm is), ``inv * clip``. The step then reads it on the device: no round trip."""
    sh = cuda.shared.array(NORM_THREADS, float64)
    tid = cuda.threadIdx.x
    acc = float64(0.0)
    i = tid
    while i < partial.shape[0]:
        acc += partial[i]
        i += NORM_THREADS
    finish(acc, inv, max_norm, total, factor, sh, tid)


@cuda.jit(device=True)
def finish_last(out, done, inv, max_norm, total, factor, sh, last, tid):
    """The end of :func:`sum_of_squares` after a block wrote its chunk sums: the block that
    takes the last ticket adds them all up (:func:`finish`) and resets ``done``."""
    cuda.threadfence()
    if tid == 0:
        ticket = cuda.atomic.add(done, 0, 1)
        last[0] = 1 if ticket == cuda.gridDim.x - 1 else 0
    cuda.syncthreads()
    if last[0]:
        acc = float64(0.0)
        i = tid
        while i < out.shape[0]:
            acc += cuda.atomic.add(out, i, 0.0)   # (a read from L2: the sum as written)
            i += NORM_THREADS
        finish(acc, inv, max_norm, total, factor, sh, tid)
        if tid == 0:
            done[0] = 0


@_kernel_jit
def sum_of_squares(x, chunk, out, done, inv, max_norm, total, factor):
    """:func:`chunk_sum_of_squares` and :func:`finish_sum_of_squares` in one launch, the same
    operations in the same order (so the same bits): each block writes its chunks' sums, makes
    them visible to the whole device (a memory fence) and takes a ticket from ``done[0]`` (an
    ``int32``, 0 before the launch); the block that takes the last ticket (every other block
    has written its sums by then) adds them up as the finishing kernel does, reading each
    with an atomic add of 0.0 (which returns the value in L2, never a stale line of its own
    L1, and leaves it as it is: a sum of squares is never -0.0), and sets ``done[0]`` back to
    0 for the next launch. One launch and its gap fewer per clipped step (the pattern of
    CUDA's threadFenceReduction sample)."""
    sh = cuda.shared.array(NORM_THREADS, float64)
    last = cuda.shared.array(1, int32)
    tid = cuda.threadIdx.x
    chunk_sums(x, chunk, out, sh, tid)
    finish_last(out, done, inv, max_norm, total, factor, sh, last, tid)


@_kernel_jit
def sum_of_squares_frozen(x, chunk, out, done, inv, max_norm, total, factor, kind, runs,
                          first):
    """:func:`sum_of_squares` of a step with frozen groups: their elements are not read and
    count as zeros (:func:`chunk_sums_frozen`), so the result is the one of the gradient with
    them set to zero, bit for bit."""
    sh = cuda.shared.array(NORM_THREADS, float64)
    last = cuda.shared.array(1, int32)
    tid = cuda.threadIdx.x
    chunk_sums_frozen(x, chunk, out, sh, tid, kind, runs, first)
    finish_last(out, done, inv, max_norm, total, factor, sh, last, tid)


NORMS_MAX = 4          # the most values a record's ``norms`` may return


# bound per compiled pre-pass by kernels.decorators.bind (the record's adapter, its unpack)
norms = unpack = None


def _segment_norms_body(k):
    """The CUDA pre-pass of a kernel record with ``norms``, over every segment (tensor) of an
    arena in one launch: ``out[c, j]`` = the sum of squares (float64) of value ``j`` over chunk
    ``c``, elements ``chunks[c, 0] .. chunks[c, 1] - 1`` with the scalars of row ``chunks[c,
    2]`` (``rows`` as the grouped kernels take them), in the order of
    :func:`chunk_sum_of_squares` (thread-strided, then a fixed tree); the host adds each
    segment's chunk sums in order."""
    def segment_norms(arrs, chunks, rows, out):
        sh = cuda.shared.array((NORMS_MAX, NORM_THREADS), float64)
        acc = cuda.local.array(NORMS_MAX, float64)
        tid = cuda.threadIdx.x
        for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
            end = chunks[c, 1]
            sc = unpack((rows, chunks[c, 2]))
            for j in range(k):
                acc[j] = 0.0
            i = chunks[c, 0] + tid
            while i < end:
                vals = norms(arrs, i, sc)
                for j in range(k):
                    v = float64(vals[j])
                    acc[j] += v * v
                i += NORM_THREADS
            for j in range(k):
                sh[j, tid] = acc[j]
            cuda.syncthreads()
            half = NORM_THREADS // 2
            while half > 0:
                if tid < half:
                    for j in range(k):
                        sh[j, tid] += sh[j, tid + half]
                cuda.syncthreads()
                half //= 2
            if tid == 0:
                for j in range(k):
                    out[c, j] = sh[j, 0]
            cuda.syncthreads()
    return segment_norms


_compiled = {}
_lock = threading.Lock()


def python_norms_kernel(record, scaled, options, k, n_rows=1):
    """The uncompiled pre-pass kernel of ``record`` (a record with ``norms``) for these option
    values: ``kernel(arrays_tuple, chunks, rows, out)`` (:func:`_segment_norms_body`; ``n_rows``
    rows of scalars in one flat tuple, ``None``: in a 1-D device array)."""
    if k > NORMS_MAX:
        raise ValueError(f"kernel record {record.name!r}: its norms function returns {k} "
                         f"values; the CUDA pre-pass takes at most {NORMS_MAX}")
    key = ("elem", record)
    elem = _device.get(key)
    if elem is None:
        elem = _device[key] = cuda.jit(device=True)(record.elem)
    adapter = cuda.jit(device=True)(record.norms_adapter(elem, options, scaled))
    return bind(_segment_norms_body(k), norms=adapter,
                unpack=_row_unpack(len(record.scalars) + bool(scaled), n_rows))


def get_norms(record, scaled, options, k, n_rows=1):
    """The ``cuda.jit`` pre-pass kernel of ``record`` (lazy, one per option combination and
    number of rows)."""
    key = ("norms", record, bool(scaled), k, n_rows) + tuple(sorted(options.items()))
    return _lazy(key, lambda: python_norms_kernel(record, scaled, options, k, n_rows))


def _row_unpack(k, n_rows, factor=False):
    """``unpack((rows, r))`` as a device function: row ``r`` of ``n_rows`` rows of ``k``
    scalars (``kernels.groups.row_unpack_source``; ``None``: rows in a device array;
    ``factor``: ``unpack(((rows, fac), r))``, the row's scalars and then ``fac[0]``)."""
    key = ("unpack", k, n_rows, bool(factor))
    fn = _device.get(key)
    if fn is None:
        from .groups import row_unpack_source
        from .record import _define
        fn = _device[key] = cuda.jit(device=True)(_define(
            row_unpack_source(k, n_rows or 0, n_rows is None, bool(factor)), "unpack",
            f"row_unpack_{k}_{n_rows}{'_factor' if factor else ''}"))
    return fn


def _lazy(key, python, jit=None):
    """The ``cuda.jit`` kernel under ``key``, compiled from ``python()`` on first use (by
    ``jit``, default :func:`_kernel_jit`)."""
    kernel = _compiled.get(key)
    if kernel is None:
        with _lock:
            kernel = _compiled.get(key)
            if kernel is None:
                kernel = _compiled[key] = (jit or _kernel_jit)(python())
    return kernel


def get(record, scaled=False, **options):
    """The ``cuda.jit`` kernel of ``record`` for these option values (lazy); ``scaled``: the
    gradient is multiplied by one extra scalar first (``KernelRecord.adapter``)."""
    key = (record, bool(scaled)) + tuple(sorted(options.items()))
    return _lazy(key, lambda: python_kernel(record, scaled, **options))


def python_kernel(record, scaled=False, **options):
    """The uncompiled kernel of ``record``: its body bound to the CUDA target (used by
    :func:`get` and by ``cuda.compile_ptx``)."""
    return bind(record.body(**options), elem=_elem_device(record, scaled), loop=grid_range,
                unpack=unpack_tuple)


def _elem_device(record, scaled):
    """The record's packed per-element adapter as a CUDA device function (made once)."""
    key = (record, bool(scaled))
    elem = _device.get(key)
    if elem is None:
        record.check()
        elem = _device[key] = cuda.jit(device=True)(
            record.adapter(cuda.jit(device=True)(record.elem), scaled))
    return elem


# ---------------------------------------------------------------- two elements per access
F32, BF16 = "f32", "bf16"       # the kinds of word: two float32 (uint64), two bfloat16 (uint32)


def n_outputs(record):
    """How many values ``record.elem`` returns (it is plain Python: called once on 0.5s with
    every option False), or ``None`` when that call fails or returns no tuple."""
    params = list(inspect.signature(record.elem).parameters)
    n = len(record.arrays)
    kw = {name: 0.5 for name in params[n:n + len(record.scalars)]}
    kw.update({name: False for name in record.options})
    try:
        out = record.elem(*([0.5] * n), **kw)
    except Exception:
        return None
    return len(out) if isinstance(out, tuple) else None


def pair_source(record, n_out, kinds):
    """Source of ``elem_pair(<words...>, sc, <options>)``: each argument a word holding two
    neighbouring elements (``lo``: the first, ``hi``: the second, as float32; a word of two
    float32 or of two bfloat16, by its type), the record's packed adapter run on the first
    halves and on the second halves, and each of its ``n_out`` values packed back into a word
    of the kind of the array it is written to (``kinds``, one per array: a body writes the
    per-element function's values to its arrays other than the gradient, in order; values past
    those are written nowhere and packed as float32). The same operations per element as the
    one-element kernels, so the same bits."""
    n = len(record.arrays)
    opts = list(record.options)
    sig = ", ".join([f"x{j}" for j in range(n)] + ["sc"] + opts)
    first = ", ".join([f"lo(x{j})" for j in range(n)] + ["sc"] + opts)
    second = ", ".join([f"hi(x{j})" for j in range(n)] + ["sc"] + opts)
    dest = [k for name, k in zip(record.arrays, kinds) if name != "grad"]
    packers = [("pack16" if k < len(dest) and dest[k] == BF16 else "pack")
               for k in range(n_out)]
    outs = "".join(f"{f}(a[{k}], b[{k}]), " for k, f in enumerate(packers))
    return (f"def elem_pair({sig}):\n"
            f"    a = _elem({first})\n"
            f"    b = _elem({second})\n"
            f"    return ({outs})\n")


_word_helpers = []


def _pair_helpers():
    """``(lo, hi, pack, pack16)``: a word's first and second element as float32 (by the word's
    type: ``uint64`` two float32, ``uint32`` two bfloat16), two float32 packed into a ``uint64``
    word, and rounded to nearest-even bfloat16 into a ``uint32`` word (``kernels.precision``'s
    bit casts and rounding), or their NumPy twins under the simulator."""
    from numba import config as numba_config
    if numba_config.ENABLE_CUDASIM:
        from .precision import SimBF16

        def half(w, k):
            if isinstance(w, np.uint32):
                return SimBF16(np.array([w], np.uint32).view(np.uint16), 0, 0, False)[k]
            return np.array([w], np.uint64).view(np.float32)[k]

        def pack(a, b):
            return np.array([a, b], np.float32).view(np.uint64)[0]

        def pack16(a, b):
            bits = np.zeros(2, np.uint16)
            SimBF16(bits, 0, 0, False)[0] = a
            SimBF16(bits, 0, 0, False)[1] = b
            return bits.view(np.uint32)[0]
        return (lambda w: half(w, 0)), (lambda w: half(w, 1)), pack, pack16
    if not _word_helpers:
        from .precision import f32_to_bf16, _f32_as_u32, word_hi, word_lo

        @cuda.jit(device=True)
        def lo(w):
            return word_lo(w)

        @cuda.jit(device=True)
        def hi(w):
            return word_hi(w)

        @cuda.jit(device=True)
        def pack(a, b):
            return (np.uint64(_f32_as_u32(np.float32(a)))
                    | (np.uint64(_f32_as_u32(np.float32(b))) << np.uint64(32)))

        @cuda.jit(device=True)
        def pack16(a, b):
            return (np.uint32(f32_to_bf16(np.float32(a)))
                    | (np.uint32(f32_to_bf16(np.float32(b))) << np.uint32(16)))
        _word_helpers.extend((lo, hi, pack, pack16))
    return tuple(_word_helpers)


_supported = {}


def pairs_supported(record):
    """Whether ``record``'s kernels can run on words of two elements (its per-element function
    returns a tuple)."""
    ok = _supported.get(record)
    if ok is None:
        ok = _supported[record] = n_outputs(record) is not None
    return ok


def python_pair_kernel(record, scaled=False, kinds=None, **options):
    """The uncompiled kernel of ``record`` on words of two elements: the same body, its arrays
    word views of the arrays (half as long: ``uint64`` for float32 arrays, ``uint32`` for
    bfloat16 state, ``kinds`` one per array, all float32 when ``None``), its ``elem`` the pair
    adapter (:func:`pair_source`)."""
    kinds = tuple(kinds or (F32,) * len(record.arrays))
    key = ("pair", record, bool(scaled), kinds)
    elem = _device.get(key)
    if elem is None:
        from .record import _define
        lo, hi, pack, pack16 = _pair_helpers()
        elem = _device[key] = cuda.jit(device=True)(_define(
            pair_source(record, n_outputs(record), kinds), "elem_pair",
            f"pair_{record.name}", _elem=_elem_device(record, scaled), lo=lo, hi=hi,
            pack=pack, pack16=pack16))
    return bind(record.body(**options), "_pairs", elem=elem, loop=grid_range,
                unpack=unpack_tuple)


def get_pairs(record, scaled=False, kinds=None, **options):
    """The ``cuda.jit`` kernel of ``record`` on words of two elements (lazy, as :func:`get`;
    ``kinds`` as :func:`python_pair_kernel`)."""
    kinds = tuple(kinds or (F32,) * len(record.arrays))
    key = ("pairs", record, bool(scaled), kinds) + tuple(sorted(options.items()))
    return _lazy(key, lambda: python_pair_kernel(record, scaled, kinds, **options))


def _device_body(record, scaled, options, n_rows):
    """The record's kernel body for these option values as a CUDA *device* function (a
    block-stride loop inside: :func:`block_range`) taking its scalars as ``(rows, row)``
    (``n_rows`` rows in one flat tuple; ``None``: any number of rows in a 1-D device array),
    for the grouped driver."""
    key = ("body", record, scaled, n_rows) + tuple(sorted(options.items()))
    fn = _device.get(key)
    if fn is None:
        if scaled == DEVICE_FACTOR:       # each row's scalars, then the device's factor
            unpack = _row_unpack(len(record.scalars), n_rows, True)
        else:
            unpack = _row_unpack(len(record.scalars) + bool(scaled), n_rows)
        body = python_kernel(record, bool(scaled), **options)
        fn = _device[key] = cuda.jit(device=True)(bind(body, unpack=unpack,
                                                       loop=block_range))
    return fn


def python_grouped_kernel(record, scaled, option_sets, n_rows, bits=None, stochastic=False,
                          copy=False):
    """The uncompiled one-launch grouped kernel of ``record`` (``kernels.groups``):
    ``kernel(<arrays...>, tiles, rows)``, one kind per entry of ``option_sets`` (dicts),
    ``n_rows`` rows of scalars (``None``: rows in a 1-D device array). ``bits`` (which arrays
    hold bfloat16 state), ``stochastic``, ``copy`` (a bfloat16 param copy):
    ``kernel(<arrays...>, [pc,] key, offset, tiles, rows)``, the arrays wrapped as in
    :func:`python_bf16_kernel`. ``scaled``: ``True``, each row ends with the gradient factor;
    :data:`DEVICE_FACTOR`, ``rows`` is ``(rows, fac)`` and ``fac[0]`` follows each row."""
    from .groups import python_cuda_driver
    bodies = [_device_body(record, scaled, options, n_rows) for options in option_sets]
    view, pcopy = _bf16_wrappers()
    return python_cuda_driver(bodies, len(record.arrays), bits, stochastic, copy, view=view,
                              pcopy=pcopy)


def _bf16_wrappers():
    """``(view, pcopy)``: what wraps bfloat16 state (``view(bits, key, offset, stochastic)``)
    and a parameter with its bfloat16 copy (``pcopy(param, copy)``) inside a kernel: the
    ``kernels.precision`` intrinsics, or their Python twins under the simulator."""
    from numba import config as numba_config

    from . import precision
    if numba_config.ENABLE_CUDASIM:
        def view(a, key, offset, stochastic):
            return precision.SimBF16(a, key, offset, stochastic)
        return view, precision.SimParamCopy
    return precision.bf16_view, precision.param_with_copy


def get_grouped(record, scaled, option_sets, n_rows, bits=None, stochastic=False, copy=False):
    """The ``cuda.jit`` grouped kernel of ``record`` (lazy, one per tuple of option sets,
    number of rows and state format)."""
    key = ("grouped", record, scaled, n_rows, None if bits is None else tuple(bits),
           bool(stochastic), copy_kind(copy)) + tuple(tuple(sorted(o.items()))
                                                for o in option_sets)
    return _lazy(key, lambda: python_grouped_kernel(record, scaled, option_sets, n_rows, bits,
                                                    stochastic, copy))


def bf16_source(n_arrays, bits, stochastic, copy=False):
    """The source of a kernel for bfloat16 state: ``kernel(a0, .., [pc,] key, offset, s)`` runs
    the record's body (a device function) with each array ``j`` where ``bits[j]`` wrapped as a
    bfloat16 view (``kernels.precision``), which decodes on read and rounds on write;
    ``copy``: the parameter wrapped with its bfloat16 copy ``pc`` (written in the same pass)."""
    params, args = _wrapped_args(n_arrays, bits, stochastic, copy)
    return (f"def bf16_kernel({params}, key, offset, s):\n"
            f"    body({', '.join(args)}, s)\n")


def _wrapped_args(n_arrays, bits, stochastic, copy):
    """``(params, args)`` of a kernel on bfloat16 state and/or with a param copy: its array
    parameters and the body's arguments, arrays ``j`` with ``bits[j]`` as bfloat16 views and
    the parameter wrapped with its copy ``pc`` when ``copy``."""
    params = ", ".join(f"a{j}" for j in range(n_arrays)) + (", pc" if copy else "")
    args = [f"view(a{j}, key, offset, {bool(stochastic)!r})" if bits[j] else f"a{j}"
            for j in range(n_arrays)]
    if copy:
        args[0] = f"pcopy(a0, pc, {copy == 'float16'!r})"
    return params, args


def _body_function(record, scaled, options, pairs=None):
    """The record's plain kernel body as a device function called from a wrapping kernel (the
    Python body under the simulator, whose device functions swap in its fake ``cuda``);
    ``pairs``: its body on words of two elements of these kinds (:func:`python_pair_kernel`)."""
    from numba import config as numba_config

    def make():
        if pairs:
            return python_pair_kernel(record, scaled, pairs, **options)
        return python_kernel(record, scaled, **options)
    if numba_config.ENABLE_CUDASIM:
        return make()
    key = ("plainbody", record, bool(scaled), pairs) + tuple(sorted(options.items()))
    body = _device.get(key)
    if body is None:
        body = _device[key] = cuda.jit(device=True)(make())
    return body


def python_bf16_kernel(record, scaled, options, bits, stochastic, copy=False):
    """The uncompiled kernel of ``record`` on bfloat16 state (``bits[j]``: array ``j`` holds
    bfloat16 bits; ``stochastic``: stochastic rounding; ``copy``: with a param copy)."""
    from .record import _define
    view, pcopy = _bf16_wrappers()
    return _define(bf16_source(len(record.arrays), bits, stochastic, copy), "bf16_kernel",
                   f"bf16_{record.name}", body=_body_function(record, scaled, options),
                   view=view, pcopy=pcopy)


def get_bf16(record, scaled, options, bits, stochastic, copy=False):
    """The ``cuda.jit`` kernel of ``record`` on bfloat16 state and/or with a param copy (lazy,
    one per combination)."""
    key = ("bf16", record, bool(scaled), tuple(bits), bool(stochastic),
           copy_kind(copy)) + tuple(sorted(options.items()))
    return _lazy(key, lambda: python_bf16_kernel(record, scaled, options, bits, stochastic,
                                                 copy))


def factor_source(n_arrays, bits=None, stochastic=False, copy=False):
    """The source of a kernel that reads the gradient factor from the device:
    ``kernel(a0, .., [pc, key, offset,] fac, s)`` runs the record's *scaled* body (a device
    function) with the scalars ``s`` and ``fac[0]`` after them, the factor the clipped step's
    reduction pass left in ``fac`` (:func:`finish_sum_of_squares`), so the host never waits
    for the norm. ``bits`` (not None: the arrays wrapped as in :func:`bf16_source`)."""
    if bits is None:
        args = [f"a{j}" for j in range(n_arrays)]
        params = ", ".join(args)
    else:
        params, args = _wrapped_args(n_arrays, bits, stochastic, copy)
        params += ", key, offset"
    return (f"def factor_kernel({params}, fac, s):\n"
            f"    body({', '.join(args)}, s + (fac[0],))\n")


def python_factor_kernel(record, options, bits=None, stochastic=False, copy=False,
                         pairs=None):
    """The uncompiled kernel of ``record`` with the gradient factor read from the device
    (:func:`factor_source`); ``pairs``: on words of two elements of these kinds (one per
    array, :func:`python_pair_kernel`)."""
    from .record import _define
    view, pcopy = _bf16_wrappers()
    return _define(factor_source(len(record.arrays), bits, stochastic, copy),
                   "factor_kernel", f"factor_{record.name}{'_pairs' if pairs else ''}",
                   body=_body_function(record, True, options, pairs), view=view, pcopy=pcopy)


def get_factor(record, options, bits=None, stochastic=False, copy=False, pairs=None):
    """The ``cuda.jit`` kernel of ``record`` reading the gradient factor from the device
    (lazy, one per combination; ``bits``: bfloat16 state and/or a param copy, as
    :func:`get_bf16`; ``pairs``: on words of two elements of these kinds)."""
    pairs = tuple(pairs) if pairs else None
    key = ("factor", record, None if bits is None else tuple(bits), bool(stochastic),
           copy_kind(copy), pairs) + tuple(sorted(options.items()))
    return _lazy(key, lambda: python_factor_kernel(record, options, bits, stochastic, copy,
                                                   pairs))


def python_bf16_norms_kernel(record, scaled, options, k, bits, n_rows=1):
    """The uncompiled pre-pass kernel of ``record`` on bfloat16 state (``bits[j]``: array
    ``j`` holds bfloat16 bits): ``kernel(a0, .., key, offset, chunks, rows, out)`` runs the
    pre-pass (:func:`python_norms_kernel`, a device function) on the arrays with those wrapped
    as bfloat16 views. The pre-pass only reads, so the views never round."""
    from .record import _define
    # (a device function under the simulator too: it swaps in its fake ``cuda`` module then)
    body = cuda.jit(device=True)(python_norms_kernel(record, scaled, options, k, n_rows))
    view = _bf16_wrappers()[0]
    params = ", ".join(f"a{j}" for j in range(len(bits)))
    arrs = "".join(f"view(a{j}, key, offset, False), " if b else f"a{j}, "
                   for j, b in enumerate(bits))
    return _define(f"def bf16_norms({params}, key, offset, chunks, rows, out):\n"
                   f"    body(({arrs}), chunks, rows, out)\n", "bf16_norms",
                   f"bf16_norms_{record.name}", body=body, view=view)


def get_norms_bf16(record, scaled, options, k, bits, n_rows=1):
    """The ``cuda.jit`` pre-pass kernel of ``record`` on bfloat16 state (lazy)."""
    key = ("norms_bf16", record, bool(scaled), k, tuple(bits), n_rows) + tuple(
        sorted(options.items()))
    return _lazy(key, lambda: python_bf16_norms_kernel(record, scaled, options, k, bits,
                                                       n_rows))


def python_q8_norms_kernel(record, scaled, options, k, quantized, n_rows=1):
    """The uncompiled pre-pass kernel of ``record`` on 8-bit state (``quantized[j]``: array
    ``j`` is 8-bit, passed as codes, scales, map values, first table and midpoints, as to
    :func:`python_q8_kernel`): ``kernel(<arrays>, block, chunks, rows, out)`` runs the pre-pass
    (:func:`python_norms_kernel`) with the 8-bit arrays read through dequantizing views
    (``kernels.quant8.q8_view``)."""
    from numba import config as numba_config

    from . import quant8
    from .record import _define
    body = cuda.jit(device=True)(python_norms_kernel(record, scaled, options, k, n_rows))
    params, arrs = [], []
    for j, q in enumerate(quantized):
        if q:
            params += [f"c{j}", f"s{j}", f"v{j}", f"f{j}", f"d{j}"]
            arrs.append(f"view(c{j}, s{j}, v{j}, block, 0)")
        else:
            params.append(f"a{j}")
            arrs.append(f"a{j}")
    view = quant8.SimQ8 if numba_config.ENABLE_CUDASIM else quant8.q8_view
    return _define(f"def q8_norms({', '.join(params)}, block, chunks, rows, out):\n"
                   f"    body(({', '.join(arrs)},), chunks, rows, out)\n", "q8_norms",
                   f"q8_norms_{record.name}", body=body, view=view)


def get_norms_q8(record, scaled, options, k, quantized, n_rows=1):
    """The ``cuda.jit`` pre-pass kernel of ``record`` on 8-bit state (lazy)."""
    key = ("norms_q8", record, bool(scaled), k, tuple(quantized), n_rows) + tuple(
        sorted(options.items()))
    return _lazy(key, lambda: python_q8_norms_kernel(record, scaled, options, k, quantized,
                                                     n_rows))


def _q8_body(record, scaled, options, unpack):
    """The record's kernel body for one element of an 8-bit kernel (its loop bound to
    ``range``: the kernel hands it one-element slices), a device function off the simulator."""
    from numba import config as numba_config
    elem = _device.get((record, bool(scaled)))
    if elem is None:
        python_kernel(record, scaled, **options)        # compiles and keeps the adapter
        elem = _device[(record, bool(scaled))]
    body = bind(record.body(**options), elem=elem, loop=range, unpack=unpack)
    return body if numba_config.ENABLE_CUDASIM else cuda.jit(device=True, forceinline=True)(body)


def python_q8_kernel(record, scaled, options, quantized, dtype_name, option_sets=None,
                     n_rows=0, per_thread=1, copy=False, array_rows=False, words=False):
    """The uncompiled kernel of ``record`` on 8-bit state (``kernels.quant8.cuda_source``):
    ``kernel(<arrays, each 8-bit one as codes, scales, map values, first table, midpoints>,
    scalars)``, launched with ``block // per_thread`` threads per quantization block of
    ``block`` elements. ``option_sets`` (a list of option dicts, one per kind) and ``n_rows``:
    the grouped kernel, ``kernel(<arrays>, segs, rows)``. ``copy``: a bfloat16 param copy
    after the arrays, written in the same pass. ``words``: four neighbouring elements per
    thread, read and written as words (their views after the arrays and the copy)."""
    import numpy as np
    from numba import config as numba_config
    from numba import float32, float64, int64, uint8, uint32, uint64

    from . import quant8
    from .record import _define
    sim = numba_config.ENABLE_CUDASIM
    bodies = {}
    if option_sets is None:
        bodies["body"] = _q8_body(record, scaled, options, unpack_tuple)
    else:
        from .groups import row_unpack_source
        k = len(record.scalars) + bool(scaled)
        unpack = _define(row_unpack_source(k, n_rows, array_rows), "unpack",
                         f"row_unpack_{k}_{'array' if array_rows else n_rows}")
        if not sim:
            unpack = cuda.jit(device=True)(unpack)
        for q, opts in enumerate(option_sets):
            bodies[f"body{q}"] = _q8_body(record, scaled, opts, unpack)
    mag = (np.uint32(0x7FFFFFFF) if dtype_name == "float32"
           else np.uint64(0x7FFFFFFFFFFFFFFF))
    from .precision import f32_to_bf16, f32_to_f16
    src = quant8.cuda_source(len(record.arrays), quantized, dtype_name,
                             0 if option_sets is None else len(option_sets), per_thread, copy,
                             words)
    return _define(src, "q8_kernel",
                   f"q8_{record.name}", cuda=cuda, math=math, f32_to_bf16=f32_to_bf16,
                   f32_to_f16=f32_to_f16,
                   float32=float32,
                   float64=float64, int64=int64, uint8=uint8, uint32=uint32, uint64=uint64,
                   as_uint=quant8.sim_as_uint if sim else quant8.as_uint,
                   from_uint=quant8.sim_from_uint if sim else quant8.from_uint, MAG=mag,
                   **bodies)


def _q8_jit(kernel, threads, min_threads):
    """``_kernel_jit`` for an 8-bit kernel launched with ``threads`` per block, compiled for at
    least ``min_threads`` resident threads per multiprocessor (CUDA launch bounds, which cap
    its registers; 0: no bound). Written out element by element, a thread's elements live in
    registers (Adam, 4 per thread: 102 registers unbounded, 640 threads per SM)."""
    if not min_threads or not threads:
        return _kernel_jit(kernel)
    return _kernel_jit(kernel, launch_bounds=(int(threads),
                                              max(1, int(min_threads) // int(threads))))


def _lazy_q8(key, threads, min_threads, python):
    return _lazy(key + (int(threads or 0), int(min_threads or 0)), python,
                 lambda kernel: _q8_jit(kernel, threads, min_threads))


def get_q8(record, scaled, options, quantized, dtype_name, per_thread=1, copy=False,
           threads=None, min_threads=0, words=False):
    """The ``cuda.jit`` kernel of ``record`` on 8-bit state (lazy, one per combination;
    ``threads`` per block and ``min_threads`` per multiprocessor: its launch bounds,
    :func:`_q8_jit`)."""
    key = ("q8", record, bool(scaled), tuple(quantized), dtype_name,
           int(per_thread), copy_kind(copy), bool(words)) + tuple(sorted(options.items()))
    return _lazy_q8(key, threads, min_threads, lambda: python_q8_kernel(
        record, scaled, options, quantized, dtype_name, per_thread=per_thread, copy=copy,
        words=words))


def get_q8_grouped(record, scaled, option_sets, n_rows, quantized, dtype_name, per_thread=1,
                   copy=False, threads=None, min_threads=0, words=False):
    """The ``cuda.jit`` grouped kernel of ``record`` on 8-bit state (lazy, one per tuple of
    option sets, number of rows and combination). ``n_rows=None``: the rows of scalars come
    in a 1-D device array (any number of them) instead of a tuple passed with the launch."""
    key = ("q8grouped", record, bool(scaled), n_rows, tuple(quantized), dtype_name,
           int(per_thread), copy_kind(copy), bool(words)) + tuple(tuple(sorted(o.items()))
                                                             for o in option_sets)
    return _lazy_q8(key, threads, min_threads, lambda: python_q8_kernel(
        record, scaled, None, quantized, dtype_name, option_sets, n_rows or 0, per_thread,
        copy, n_rows is None, words))


def launch_config(n, threads_per_block, max_blocks):
    blocks = max(1, math.ceil(n / threads_per_block))
    if max_blocks:
        blocks = min(blocks, max_blocks)
    return blocks, threads_per_block


# ---------------------------------------------------------------- four elements per thread
def quad_source(kinds, factor=False, stochastic=False, copy=False):
    """Source of ``quad_kernel(a0, .., [pc,] [key,] [fac,] sc)`` over words of four
    neighbouring elements: ``kinds`` one per array, :data:`F32` (its ``uint64`` view: elements
    ``4q .. 4q + 3`` in words ``2q`` and ``2q + 1``) or :data:`BF16` (bfloat16 state, its
    ``uint64`` view: four elements in word ``q``); an empty array is a placeholder (the
    record's option leaves it alone). Thread by thread over the quads (grid-stride, unsigned
    indices): every array's four elements loaded into local arrays first (all the loads in
    flight together), the record's body run on each element's one-element local slices (its
    loop bound to ``range``, as the 8-bit kernels do), then the arrays other than the gradient
    (arrays 0 and 1 are the parameter and the gradient, ``kernels.record``) packed and stored
    back, bfloat16 rounded to nearest even, or with ``stochastic`` from ``key`` and each
    element's index ``4q + e`` (the one-element kernels' rounding of the element: the launch
    covers the buffer from its first element): the one-element kernels' operations, so their
    bits. ``copy``: ``pc`` (the ``uint64`` view of the parameter's bfloat16 copy) gets the four
    new parameters rounded to nearest even. ``factor``: the gradient factor read from
    ``fac[0]`` after the scalars (a clipped step's, left on the device; the body is the scaled
    one)."""
    n = len(kinds)
    head = [f"a{j}" for j in range(n)] + (["pc"] if copy else []) + (
        ["key"] if stochastic else []) + (["fac"] if factor else []) + ["sc"]
    lines = [f"def quad_kernel({', '.join(head)}):"]
    lines.append("    nq = uint64(a0.shape[0] // 2)")
    lines += [f"    w{j} = cuda.local.array(4, float32)" for j in range(n)]
    lines += [f"    has{j} = a{j}.shape[0] > 0" for j in range(2, n)]
    if factor:
        lines.append("    s = sc + (fac[0],)")
    lines.append("    for q in range(uint64(cuda.grid(1)), nq, uint64(cuda.gridsize(1))):")
    from .quant8 import word_bf16, word_hi, word_lo, word_pack, word_pack16
    for j, kind in enumerate(kinds):
        if kind == BF16:
            load = [f"x = a{j}[q]"] + [f"w{j}[{e}] = {word_bf16('x', e)}" for e in range(4)]
        else:
            load = [f"x = a{j}[uint64(2) * q]", f"y = a{j}[uint64(2) * q + uint64(1)]",
                    f"w{j}[0] = {word_lo('x')}", f"w{j}[1] = {word_hi('x')}",
                    f"w{j}[2] = {word_lo('y')}", f"w{j}[3] = {word_hi('y')}"]
        pad = "        " if j < 2 else "            "
        lines += ([] if j < 2 else [f"        if has{j}:"]) + [pad + s for s in load]
    args = lambda e: ", ".join(f"w{j}[{e}:{e + 1}]" for j in range(n))  # noqa: E731
    lines += [f"        body({args(e)}, {'s' if factor else 'sc'})" for e in range(4)]

    def bf16(j, e, rounding):
        if rounding:
            return f"f32_to_bf16_stochastic(w{j}[{e}], key, uint64(4) * q + uint64({e}))"
        return f"f32_to_bf16(w{j}[{e}])"
    for j, kind in enumerate(kinds):
        if j == 1:
            continue
        if kind == BF16:
            store = [f"a{j}[q] = " + word_pack16(bf16(j, e, stochastic) for e in range(4))]
        else:
            store = [f"a{j}[uint64(2) * q] = {word_pack(f'w{j}[0]', f'w{j}[1]')}",
                     f"a{j}[uint64(2) * q + uint64(1)] = {word_pack(f'w{j}[2]', f'w{j}[3]')}"]
        pad = "        " if j < 2 else "            "
        lines += ([] if j < 2 else [f"        if has{j}:"]) + [pad + s for s in store]
    if copy == "float16":
        lines.append("        pc[q] = " + word_pack16(f"f32_to_f16(w0[{e}])" for e in range(4)))
    elif copy:
        lines.append("        pc[q] = " + word_pack16(bf16(0, e, False) for e in range(4)))
    return "\n".join(lines) + "\n"


def python_quad_kernel(record, scaled, kinds, options, stochastic=False, copy=False):
    """The uncompiled kernel of ``record`` on words of four elements (:func:`quad_source`;
    ``scaled`` :data:`DEVICE_FACTOR`: the factor read on the device)."""
    from numba import config as numba_config
    from numba import float32, uint32, uint64

    from . import quant8
    from .precision import f32_to_bf16, f32_to_bf16_stochastic, f32_to_f16
    from .record import _define
    sim = numba_config.ENABLE_CUDASIM
    factor = scaled == DEVICE_FACTOR
    body = _q8_body(record, bool(scaled), options, unpack_tuple)
    return _define(quad_source(tuple(kinds), factor, stochastic, copy), "quad_kernel",
                   f"quads_{record.name}", cuda=cuda, body=body, float32=float32,
                   uint32=uint32, uint64=uint64, f32_to_bf16=f32_to_bf16,
                   f32_to_bf16_stochastic=f32_to_bf16_stochastic, f32_to_f16=f32_to_f16,
                   as_uint=quant8.sim_as_uint if sim else quant8.as_uint,
                   from_uint=quant8.sim_from_uint if sim else quant8.from_uint)


def get_quads(record, scaled, kinds, options, stochastic=False, copy=False):
    """The ``cuda.jit`` kernel of ``record`` on words of four elements (lazy, one per
    combination)."""
    key = ("quads", record, scaled if scaled == DEVICE_FACTOR else bool(scaled),
           tuple(kinds), bool(stochastic), copy_kind(copy)) + tuple(sorted(options.items()))
    return _lazy(key, lambda: python_quad_kernel(record, scaled, kinds, options,
                                                 stochastic, copy))
