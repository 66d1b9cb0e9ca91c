"""Deterministic reductions: the sum of squares over fixed chunks in float64. Within a chunk,
element ``8k + j`` goes to lane ``j``; each lane is accumulated in order, the eight lanes are
combined in a fixed tree, then the chunk sums in order. Chunks are the unit of parallel work, so
the result does not depend on the thread count, and ``fastopt.scaling.grad_norm_reference``
(the same order, with ``np.cumsum`` down the lanes) equals it bit for bit.

The eight lanes are one LLVM vector ``<8 x double>`` (:func:`_lanes8`, an intrinsic): lane
``j`` of the vector is exactly lane ``j`` above, each updated in order by IEEE ``fmul`` and
``fadd`` (no fast-math flag, so LLVM may not reassociate), which the backend lowers to SIMD
instructions. Written as eight scalar accumulators the same arithmetic does not vectorize
(LLVM's SLP vectorizer does not start from loop-carried values): 2.5 ms instead of 0.73 ms
for 1e7 float32 values on 2 threads. Each thread takes one run of consecutive chunks and sums
``STREAMS`` of them side by side, one from each quarter of the run (:func:`_streams_sum`: the
same lanes in the same order per chunk, so the same bits), which keeps more reads from memory
in flight than one chunk at a time and overlaps the chunks' chains of additions.
"""
import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .decorators import KERNEL_OPTIONS

_compiled = {}
LANES = 8
TASKS = 64          # the pre-pass's units of parallel work (runs of chunks)
PIECE = 512         # the pre-pass's scratch table width (a multiple of 8)


# The element types the passes read: float32 and float64, and a float32 parameter's
# low-precision gradient as its 16-bit patterns: ``uint16`` holds bfloat16 bits and, by this
# module's convention (``fastopt.scaling`` passes a float16 array's ``view(np.int16)``: Numba
# has no CPU float16 arrays), ``int16`` float16 bits. Each value is widened to float32
# exactly (:func:`_widen_ir`, :func:`widen`) before it is squared or checked, so a 16-bit
# gradient's sums are the bits of its float32 values' sums.
READS = (types.float32, types.float64, types.uint16, types.int16)


def _widen_ir(builder, values, dtype):
    """Codegen: ``values`` (a scalar or vector of ``dtype``) as floats: float32 and float64
    as they are, bfloat16 bits (``uint16``) and float16 bits (``int16``) widened to float32."""
    if dtype in (types.float32, types.float64):
        return values
    if dtype == types.int16:
        from .precision import f16_widen_ir
        return f16_widen_ir(builder, values)
    vec = isinstance(values.type, ir.VectorType)
    i32 = ir.VectorType(ir.IntType(32), values.type.count) if vec else ir.IntType(32)
    f32 = ir.VectorType(ir.FloatType(), values.type.count) if vec else ir.FloatType()
    sixteen = ir.Constant(i32, [16] * values.type.count if vec else 16)
    return builder.bitcast(builder.shl(builder.zext(values, i32), sixteen), f32)


def _float_ir(context, dtype):
    """The LLVM float type the values of ``dtype`` are widened to (:func:`_widen_ir`)."""
    return ir.DoubleType() if dtype == types.float64 else ir.FloatType()


def widen(x):
    """An element as a float (inside the passes): itself, or a 16-bit pattern's float32 value
    (``uint16``: bfloat16, ``int16``: float16; see :data:`READS`)."""
    raise NotImplementedError("widen runs inside compiled passes only")


@overload(widen, inline="always")
def _widen(x):
    if isinstance(x, types.Float):
        return lambda x: x
    if x == types.uint16:
        from .precision import bf16_to_f32
        return lambda x: bf16_to_f32(x)
    if x == types.int16:
        from .precision import f16_to_f32
        return lambda x: f16_to_f32(x)


def _add_squares(context, builder, aryty, data, offset, acc):
    """Codegen: ``acc += x * x`` for the eight values of ``data`` at ``offset`` (one vector
    load, widened to float64; IEEE ``fmul`` and ``fadd``, no fast-math flag)."""
    vin = ir.VectorType(context.get_value_type(aryty.dtype), LANES)
    ptr = builder.bitcast(builder.gep(data, [offset]), vin.as_pointer())
    values = _widen_ir(builder, builder.load(ptr, align=aryty.dtype.bitwidth // 8),
                       aryty.dtype)
    if aryty.dtype != types.float64:
        values = builder.fpext(values, ir.VectorType(ir.DoubleType(), LANES))
    builder.store(builder.fadd(builder.load(acc), builder.fmul(values, values)), acc)


def _lane_items(builder, acc):
    lanes = builder.load(acc)
    return [builder.extract_element(lanes, ir.Constant(ir.IntType(32), j))
            for j in range(LANES)]


def _sum_rows(context, builder, aryty, data, rows, init, offset_of):
    """Codegen: ``len(init) // 8`` accumulators of eight float64 lanes, set from ``init``'s
    items; at each of ``rows`` steps (``col`` = 8 x the step) accumulator ``q`` adds the
    squares of the eight values at element offset ``offset_of(q, col)``. Returns the lanes'
    items, accumulator by accumulator."""
    vec = ir.VectorType(ir.DoubleType(), LANES)
    accs = []
    for q in range(len(init) // LANES):
        v0 = ir.Constant(vec, ir.Undefined)
        for j in range(LANES):
            v0 = builder.insert_element(v0, init[LANES * q + j], ir.Constant(ir.IntType(32), j))
        accs.append(cgutils.alloca_once_value(builder, v0))
    with cgutils.for_range(builder, rows) as loop:
        col = builder.mul(loop.index, ir.Constant(rows.type, LANES))
        for q, acc in enumerate(accs):
            _add_squares(context, builder, aryty, data, offset_of(q, col), acc)
    items = []
    for acc in accs:
        items += _lane_items(builder, acc)
    return items


@intrinsic
def _lanes8(typingctx, x, start, end):
    """The eight lane sums of squares (float64) of ``x[start:end]``: lane ``j`` is
    ``x[start + j]**2 + x[start + 8 + j]**2 + ...``, summed in that order, the last, partial
    row of eight (if any) included. ``x``: a 1-D C-contiguous float32 or float64 array (the
    caller checks the bounds; or a 16-bit gradient's bits, :data:`READS`)."""
    if not (isinstance(x, types.Array) and x.ndim == 1 and x.layout == "C"
            and x.dtype in READS):
        return None
    ret = types.UniTuple(types.float64, LANES)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        start, end = args[1], args[2]
        eight = ir.Constant(start.type, LANES)
        rows = builder.sdiv(builder.sub(end, start), eight)
        vec = ir.VectorType(ir.DoubleType(), LANES)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * LANES))
        with cgutils.for_range(builder, rows) as loop:
            offset = builder.add(start, builder.mul(loop.index, eight))
            _add_squares(context, builder, aryty, ary.data, offset, acc)
        last = builder.add(start, builder.mul(rows, eight))
        for j in range(LANES - 1):          # the partial row: lane j, if element j is there
            at = builder.add(last, ir.Constant(start.type, j))
            with builder.if_then(builder.icmp_signed("<", at, end)):
                v = _widen_ir(builder, builder.load(builder.gep(ary.data, [at])),
                              aryty.dtype)
                if aryty.dtype != types.float64:
                    v = builder.fpext(v, ir.DoubleType())
                lanes = builder.load(acc)
                j_ = ir.Constant(ir.IntType(32), j)
                total = builder.fadd(builder.extract_element(lanes, j_), builder.fmul(v, v))
                builder.store(builder.insert_element(lanes, total, j_), acc)
        return context.make_tuple(builder, ret, _lane_items(builder, acc))

    return ret(x, start, end), codegen


@intrinsic
def _lanes8_rows(typingctx, table, k, rows, init):
    """:func:`_lanes8` of each of the first ``k`` rows of ``table`` (a 2-D C-contiguous float
    array; ``k`` a compile-time constant) over its first ``8 * rows`` columns, continuing from
    the lane sums ``init`` (``8 * k`` float64, row ``q``'s lanes at ``8q .. 8q + 7``) and
    returning them in the same layout. Each lane is summed in element order, as by
    :func:`_lanes8`, so a chunk may be fed in pieces (of whole rows of eight); the rows'
    independent accumulators let the processor overlap their additions."""
    if not (isinstance(table, types.Array) and table.ndim == 2 and table.layout == "C"
            and table.dtype in (types.float32, types.float64)
            and isinstance(k, types.IntegerLiteral)):
        return None
    n_rows = k.literal_value
    ret = types.UniTuple(types.float64, LANES * n_rows)
    if not (isinstance(init, types.UniTuple) and init.count == LANES * n_rows):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ncols = cgutils.unpack_tuple(builder, ary.shape)[1]
        items = _sum_rows(context, builder, aryty, ary.data, args[2],
                          cgutils.unpack_tuple(builder, args[3]),
                          lambda q, col: builder.add(builder.mul(ir.Constant(ncols.type, q),
                                                                 ncols), col))
        return context.make_tuple(builder, ret, items)

    return ret(table, k, rows, init), codegen


@njit(error_model="numpy", inline="always")
def _tree8(a, o):
    """The eight lane sums ``a[o:o + 8]`` combined in the fixed tree."""
    return (((a[o] + a[o + 1]) + (a[o + 2] + a[o + 3]))
            + ((a[o + 4] + a[o + 5]) + (a[o + 6] + a[o + 7])))


@njit(error_model="numpy", inline="always")
def _chunk_sum(x, start, end):
    """The sum of squares (float64) of ``x[start:end]``: eight lanes (element ``start + 8k
    + j`` in lane ``j``, each lane in order), combined in a fixed tree. (The partial last row
    is added inside :func:`_lanes8`: a list of the lanes, allocated per chunk, made the norm
    ~15% slower.)"""
    return _tree8(_lanes8(x, start, end), 0)


STREAMS = 4        # chunks a task reads side by side (four streams from memory at once)
_ZEROS = (0.0,) * (LANES * STREAMS)
assert STREAMS == 4, "_streams_sum spells out its four streams' starts"


@intrinsic
def _lanes8_at(typingctx, x, starts, rows, init):
    """:func:`_lanes8` of ``k`` runs of ``x`` side by side: run ``q`` is ``x[starts[q]:
    starts[q] + 8 * rows]`` (``starts``: a tuple of ``k`` integers), its eight lane sums
    continue from ``init[8q .. 8q + 7]`` and are returned in the same layout (``8 * k``
    float64). Each lane of each run is summed in element order, so every run's sums are the
    bits :func:`_lanes8` gives it alone; the runs' independent accumulators let the processor
    overlap their additions, and each run is a stream of its own from memory. ``x``: a 1-D
    C-contiguous float32 or float64 array, or a 16-bit gradient's bits (:data:`READS`; the
    caller checks the bounds)."""
    if not (isinstance(x, types.Array) and x.ndim == 1 and x.layout == "C"
            and x.dtype in READS
            and isinstance(starts, types.UniTuple) and isinstance(starts.dtype, types.Integer)
            and isinstance(init, types.UniTuple) and init.count == LANES * starts.count):
        return None
    k = starts.count
    ret = types.UniTuple(types.float64, LANES * k)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        at = [context.cast(builder, a, signature.args[1].dtype, types.intp)
              for a in cgutils.unpack_tuple(builder, args[1])]
        rows = context.cast(builder, args[2], signature.args[2], types.intp)
        items = _sum_rows(context, builder, aryty, ary.data, rows,
                          cgutils.unpack_tuple(builder, args[3]),
                          lambda q, col: builder.add(at[q], col))
        return context.make_tuple(builder, ret, items)

    return ret(x, starts, rows, init), codegen


@njit(error_model="numpy", inline="always")
def _streams_sum(x, c0, rows, chunk, partial):
    """``partial[c]`` = :func:`_chunk_sum` of each of the ``STREAMS * rows`` full chunks from
    ``c0`` (``chunk`` a multiple of 8): the run split into ``STREAMS`` runs of ``rows``
    chunks, read side by side (:func:`_lanes8_at`: stream ``q`` takes chunk ``c0 + q * rows
    + i`` at step ``i``, each chunk's lanes from zero and in element order, so every chunk's
    sum is the same bits as alone). Four long streams from memory instead of one keep more
    reads in flight, and four independent chains of additions hide their latency."""
    for i in range(rows):
        s = _lanes8_at(x, ((c0 + i) * chunk, (c0 + rows + i) * chunk,
                           (c0 + 2 * rows + i) * chunk, (c0 + 3 * rows + i) * chunk),
                       chunk // LANES, _ZEROS)
        for q in range(STREAMS):
            partial[c0 + q * rows + i] = _tree8(s, q * LANES)


@njit(error_model="numpy", inline="always")
def _stretch(x, c0, c1, chunk, partial, chunk_op, streams_op):
    """``partial[c]`` for the chunks ``c0 .. c1 - 1`` of ``x``: the full ones in
    ``STREAMS`` runs read side by side (``streams_op``), the rest one by one (``chunk_op``)."""
    n = x.shape[0]
    n_full = n // chunk if chunk % LANES == 0 else 0
    rows = max(0, min(c1, n_full) - c0) // STREAMS
    if rows > 0:
        streams_op(x, c0, rows, chunk, partial)
    for c in range(c0 + STREAMS * rows, c1):
        start = c * chunk
        partial[c] = chunk_op(x, start, min(n, start + chunk))


def _per_chunk_sum(x, chunk, tasks):
    """``_chunk_op`` (bound per use: :func:`_twin`) of each chunk, the results added in
    chunk order. The chunks are handed out as ``tasks`` runs of consecutive chunks (the
    callers pass the thread count: :func:`n_tasks`; the parallel loop then gives each thread
    one); a run's full chunks go to ``_streams_op`` (the same sums, ``STREAMS`` long streams
    read side by side) when ``chunk`` is a multiple of 8, the rest one by one. Which run or
    thread computes a chunk changes none of its bits."""
    n = x.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    partial = np.empty(n_chunks, np.float64)
    per = max(1, (n_chunks + tasks - 1) // max(1, tasks))
    for t in prange((n_chunks + per - 1) // per):
        c0 = t * per
        _stretch(x, c0, min(n_chunks, c0 + per), chunk, partial, _chunk_op, _streams_op)
    total = 0.0
    for c in range(n_chunks):
        total += partial[c]
    return total


_chunk_op = _streams_op = None


def _twin(name, parallel, driver=None, **ops):
    """``driver`` (:func:`_per_chunk_sum` unless given) with the chunk operations ``ops``
    bound in (``_chunk_op``, ``_streams_op``; ``_mixed_op`` for
    :func:`_per_chunk_sum_frozen`), compiled (serial or ``parallel=True``), once per name."""
    key = (name, bool(parallel))
    fn = _compiled.get(key)
    if fn is None:
        from .decorators import bind
        twin = bind(driver or _per_chunk_sum, f"_{name}{'_parallel' if parallel else '_serial'}",
                    **ops)
        fn = _compiled[key] = njit(parallel=bool(parallel), **KERNEL_OPTIONS)(twin)
    return fn


# ------------------------------------------------- the passes with frozen elements left out
# A step with frozen groups (``fastopt.Groups``, ``"frozen": True``) reads none of their
# gradient: a chunk of the pass is all stepped (kind 0: the chunk operations above), all frozen
# (kind 1: nothing read, its sum 0.0) or mixed (kind 2: ``_mixed_op`` over its stepped
# elements alone, in the lanes and order of the whole chunk). A frozen element then counts as
# a zero would: in a lane, + 0.0 leaves a sum of squares as it is (never -0.0), so the result
# is the pass over the gradient with the frozen elements set to zero, bit for bit.
_mixed_op = None


@njit(error_model="numpy", inline="always")
def _mixed_squares(x, start, end, runs, r):
    """The sum of squares of chunk ``x[start:end]`` over the stepped runs ``runs[r:]`` (an
    ``(k, 2)`` int64 array of ``[lo, hi)``, in order) that reach into it, each element in
    its lane of the whole chunk (``(i - start) % 8``), in order: :func:`_chunk_sum` of the
    chunk with its frozen elements zero."""
    lanes = np.zeros(LANES, np.float64)
    while r < runs.shape[0] and runs[r, 0] < end:
        for i in range(max(start, runs[r, 0]), min(end, runs[r, 1])):
            v = np.float64(widen(x[i]))
            lanes[(i - start) % LANES] += v * v
        r += 1
    return _tree8(lanes, 0)


@njit(error_model="numpy", inline="always")
def _mixed_zero_products(x, start, end, runs, r):
    """:func:`_chunk_zero_products` of the stepped elements of ``x[start:end]``."""
    acc = 0.0
    while r < runs.shape[0] and runs[r, 0] < end:
        for i in range(max(start, runs[r, 0]), min(end, runs[r, 1])):
            acc += np.float64(widen(x[i]) * 0)
        r += 1
    return acc


def _per_chunk_sum_frozen(x, chunk, cuts, kind, runs, first):
    """:func:`_per_chunk_sum` with the frozen elements left out: ``kind[c]`` says what chunk
    ``c`` is (above), ``first[c]`` the first stepped run that ends after its start; the tasks
    are the runs of chunks ``cuts[t] .. cuts[t + 1]`` (equal shares of the stepped elements,
    made by the caller); a stretch of all-stepped chunks in a task goes to ``_streams_op``
    (its full chunks) as in :func:`_per_chunk_sum`. Which task computes a chunk changes none
    of its bits; the chunk sums are added in chunk order."""
    n = x.shape[0]
    n_chunks = kind.shape[0]
    partial = np.zeros(n_chunks, np.float64)
    for t in prange(cuts.shape[0] - 1):
        c = cuts[t]
        c1 = cuts[t + 1]
        while c < c1:
            k = kind[c]
            if k == 0:
                e = c + 1
                while e < c1 and kind[e] == 0:
                    e += 1
                _stretch(x, c, e, chunk, partial, _chunk_op, _streams_op)
                c = e
            else:
                if k == 2:
                    start = c * chunk
                    partial[c] = _mixed_op(x, start, min(n, start + chunk), runs, first[c])
                c += 1
    total = 0.0
    for c in range(n_chunks):
        total += partial[c]
    return total


def frozen_pass(name, parallel):
    """The compiled pass ``name`` (``"squares"``: :func:`chunked_sum_of_squares`,
    ``"finite"``: :func:`all_finite`) with frozen elements left out: ``fn(x, chunk, cuts,
    kind, runs, first)`` (:func:`_per_chunk_sum_frozen`; ``fastopt.scaling.FrozenPlan``
    makes the arrays)."""
    if name == "squares":
        ops = dict(_chunk_op=_chunk_sum, _streams_op=_streams_sum, _mixed_op=_mixed_squares)
    else:
        ops = dict(_chunk_op=_chunk_zero_products, _streams_op=_streams_zero_products,
                   _mixed_op=_mixed_zero_products)
    return _twin(name + "_frozen", parallel, _per_chunk_sum_frozen, **ops)


def n_tasks(parallel):
    """The runs of chunks to hand out in a pass: one per thread (Numba's current thread
    count) for a parallel twin, one for a serial one. (Read inside the compiled pass, the
    thread count is a pointer into the threading layer, which Numba cannot cache.)"""
    return get_num_threads() if parallel else 1


def chunked_sum_of_squares(parallel):
    """The compiled reduction (serial or ``parallel=True`` twin; both give the same bits):
    ``fn(x, chunk, tasks)``, ``tasks`` from :func:`n_tasks` (any count gives the same
    bits)."""
    return _twin("squares", parallel, _chunk_op=_chunk_sum, _streams_op=_streams_sum)


# ---------------------------------------------------------------- per-segment pre-pass
# bound per compiled pre-pass by kernels.decorators.bind (the record's adapter, its unpack, the
# per-chunk helper)
norms = unpack = chunk_norms = None


def _chunk_norms_body(rows):
    """``chunk_norms(arrs, start, size, sc, tmp, partial, c)``: the pre-pass's sums of one chunk
    (elements ``start .. start + size - 1``, scalars ``sc``) into ``partial[c]``: ``PIECE``
    elements at a time, the chunked adapter (``norms``, the options fixed in it) writes the
    ``rows`` values whose squares are summed (the record's ``norm_arrays``' elements, then its
    computed ``norms`` values) into the scratch table ``tmp`` of the buffer dtype (a loop LLVM
    vectorizes), and the table's squares are added to their lanes in one loop
    (:func:`_lanes8_rows`; each row's lane chain is independent of the others', so their
    additions overlap where one row after another would wait on each addition's latency).
    Then each sum's eight lanes are combined in a fixed tree: the chunks, lanes and order of
    ``_sum_of_squares``, so the NumPy reference (``fastopt.scaling``) matches it bit for bit."""
    ZEROS = (0.0,) * (8 * rows)

    def chunk_norms_(arrs, start, size, sc, tmp, partial, c):
        lanes = ZEROS
        done = piece = full = 0
        while done < size:
            piece = min(PIECE, size - done)
            norms(arrs, start + done, piece, sc, tmp)
            full = piece // 8
            lanes = _lanes8_rows(tmp, rows, full, lanes)
            done += piece
        if piece == 8 * full:       # no partial row (all but a tensor's last chunk): no list
            for q in range(rows):
                partial[c, q] = _tree8(lanes, 8 * q)
            return
        rest = [lanes[j] for j in range(8 * rows)]
        for q in range(rows):       # the last, partial row of eight: lane j, in order
            for j in range(piece - 8 * full):
                v = np.float64(tmp[q, 8 * full + j])
                rest[8 * q + j] += v * v
        for q in range(rows):
            partial[c, q] = _tree8(rest, 8 * q)
    return chunk_norms_


def _segment_norms_body(rows):
    """The pre-pass of a kernel record with norms (see ``kernels.record``) over one tensor:
    each chunk's sums (:func:`_chunk_norms_body`), the chunk sums added in order, for any
    thread count. The sums come in the order of the record's ``norm_names``."""
    def segment_norms(arrs, s, chunk):
        sc = unpack(s)
        n = arrs[0].shape[0]
        n_chunks = (n + chunk - 1) // chunk
        partial = np.empty((n_chunks, rows), np.float64)
        # chunks are handed out in TASKS runs of consecutive chunks, each run with one
        # scratch table (one allocation per run, not per chunk); a chunk's sums do not depend
        # on which run or thread computes them
        per_task = max(1, (n_chunks + TASKS - 1) // TASKS)
        n_tasks = (n_chunks + per_task - 1) // per_task
        for task in prange(n_tasks):
            tmp = np.empty((rows, PIECE), arrs[0].dtype)
            for c in range(task * per_task, min(n_chunks, (task + 1) * per_task)):
                start = c * chunk
                chunk_norms(arrs, start, min(n, start + chunk) - start, sc, tmp, partial, c)
        totals = np.zeros(rows, np.float64)
        for c in range(n_chunks):
            for j in range(rows):
                totals[j] += partial[c, j]
        return totals
    return segment_norms


def _segments_norms_body(rows):
    """The pre-pass over many tensors in one call: ``segs[s] = (lo, hi, row)``, tensor ``s``
    with the scalars ``table[row]``; returns ``totals[s]``, the sums tensor ``s`` gets alone
    (:func:`_segment_norms_body`: chunks from its start, added in order), the chunks of all
    tensors handed out together in ``TASKS`` runs (one call and one parallel region for the
    whole model, where a call per tensor cost ~8 us, and a parallel region ~20-40 us)."""
    def segments_norms(arrs, table, segs, chunk):
        n_segs = segs.shape[0]
        first = np.empty(n_segs + 1, np.int64)
        first[0] = 0
        for s in range(n_segs):
            first[s + 1] = first[s] + (segs[s, 1] - segs[s, 0] + chunk - 1) // chunk
        n_chunks = first[n_segs]
        partial = np.empty((n_chunks, rows), np.float64)
        per_task = max(1, (n_chunks + TASKS - 1) // TASKS)
        n_tasks = (n_chunks + per_task - 1) // per_task
        for task in prange(n_tasks):
            tmp = np.empty((rows, PIECE), arrs[0].dtype)
            c0 = task * per_task
            s = np.searchsorted(first, c0, side="right") - 1
            for c in range(c0, min(n_chunks, c0 + per_task)):
                while first[s + 1] <= c:
                    s += 1
                start = segs[s, 0] + (c - first[s]) * chunk
                chunk_norms(arrs, start, min(segs[s, 1], start + chunk) - start,
                            unpack(table[segs[s, 2]]), tmp, partial, c)
        totals = np.zeros((n_segs, rows), np.float64)
        for s in range(n_segs):
            for c in range(first[s], first[s + 1]):
                for j in range(rows):
                    totals[s, j] += partial[c, j]
        return totals
    return segments_norms


def segment_norms(record, scaled, parallel, options, many=False):
    """The compiled pre-pass of ``record`` for these option values (a dict, the record's
    order): ``fn(arrays_tuple, packed_scalars, chunk)`` -> the sums of squares, in the
    order of ``record.norm_names``. ``many``: over many tensors in one call,
    ``fn(arrays_tuple, table, segs, chunk)`` -> a row of sums per tensor
    (:func:`_segments_norms_body`)."""
    opts = tuple(bool(options[name]) for name in record.options)
    key = (record, bool(scaled), bool(parallel), opts, bool(many))
    fn = _compiled.get(key)
    if fn is None:
        from .decorators import bind, cpu_device, source_files
        adapter = cpu_device(record.norms_adapter(cpu_device(record.elem), options, scaled,
                                                  chunked=True))
        # the record's name and the options in the qualified name keep Numba's disk cache
        # entries apart (the options live in the adapter, a global the cache does not key on)
        suffix = (f"_{record.name}_{''.join(str(int(o)) for o in opts)}"
                  f"{'_scaled' if scaled else ''}{'_parallel' if parallel else '_serial'}")
        sources = source_files(record.elem)
        rows = len(record.norm_names)
        helper = cpu_device(bind(_chunk_norms_body(rows), suffix, sources, norms=adapter))
        body = (_segments_norms_body if many else _segment_norms_body)(rows)
        fn = _compiled[key] = njit(parallel=bool(parallel), **KERNEL_OPTIONS)(
            bind(body, suffix, sources, chunk_norms=helper,
                 unpack=cpu_device(record.unpack(scaled))))
    return fn


# ---------------------------------------------------------------- finiteness only
FINITE_ACCS = 4         # independent vector accumulators of the finiteness pass


def _zero_accs(context, builder, aryty, k):
    """Codegen: ``(vec, width, accs)``: the vector type of 64 bytes of ``aryty``'s elements,
    its width, and ``k`` accumulators set to zero, of floats of that width (the elements
    widened, :func:`_widen_ir`)."""
    width = 64 // (aryty.dtype.bitwidth // 8)
    vec = ir.VectorType(context.get_value_type(aryty.dtype), width)
    fvec = ir.VectorType(_float_ir(context, aryty.dtype), width)
    zero = ir.Constant(fvec, [0.0] * width)
    return vec, width, [cgutils.alloca_once_value(builder, zero) for _ in range(k)]


def _add_zero_products(builder, aryty, ptr, vec, acc):
    """Codegen: ``acc += v * 0`` for the vector ``v`` of ``vec`` at element pointer ``ptr``
    (widened to floats first)."""
    values = _widen_ir(builder, builder.load(builder.bitcast(ptr, vec.as_pointer()),
                                             align=aryty.dtype.bitwidth // 8), aryty.dtype)
    zero = ir.Constant(values.type, [0.0] * vec.count)
    builder.store(builder.fadd(builder.load(acc), builder.fmul(values, zero)), acc)


def _accs_total(builder, accs):
    """Codegen: the sum of the accumulators' lanes (a scalar; any order gives the same answer
    for sums of zeros and NaNs)."""
    total = builder.load(accs[0])
    for acc in accs[1:]:
        total = builder.fadd(total, builder.load(acc))
    out = builder.extract_element(total, ir.Constant(ir.IntType(32), 0))
    for j in range(1, total.type.count):
        out = builder.fadd(out, builder.extract_element(total, ir.Constant(ir.IntType(32), j)))
    return out


@intrinsic
def _zero_products(typingctx, x, start, rows):
    """The sum of ``x[i] * 0`` over ``x[start:start + rows * w]`` (``w``: 4 vectors of 64
    bytes), in the buffer dtype: NaN if any of those elements is inf or NaN, else a zero. Any
    order of summation gives that same answer (a sum of zeros is a zero; NaN absorbs), so four
    independent vector accumulators run at the speed of memory where one chain of float64
    additions (the norm) waits on each addition's latency."""
    if not (isinstance(x, types.Array) and x.ndim == 1 and x.layout == "C"
            and x.dtype in READS):
        return None
    out = x.dtype if isinstance(x.dtype, types.Float) else types.float32

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        start, rows = args[1], args[2]
        vec, width, accs = _zero_accs(context, builder, aryty, FINITE_ACCS)
        step = ir.Constant(start.type, width * FINITE_ACCS)
        with cgutils.for_range(builder, rows) as loop:
            base = builder.add(start, builder.mul(loop.index, step))
            for q, acc in enumerate(accs):
                ptr = builder.gep(ary.data, [builder.add(base, ir.Constant(start.type,
                                                                           q * width))])
                _add_zero_products(builder, aryty, ptr, vec, acc)
        return _accs_total(builder, accs)

    return out(x, start, rows), codegen


@njit(error_model="numpy", inline="always")
def _streams_zero_products(x, c0, rows, chunk, partial):
    """:func:`_chunk_zero_products` of the ``STREAMS * rows`` full chunks from ``c0`` read as
    one run (one stream from memory, four vector accumulators), the answer in ``partial[c0]``
    and zeros in the other chunks' places (a NaN anywhere makes the total NaN, whatever the
    order). Read as four neighbouring chunks side by side (the layout before 2026-11-29) the
    pass over 1e7 float32 took 0.97-1.09 ms on 2 threads of the Zen 4 VM, as runs of chunks
    read one stream each 0.69-0.84 ms (a probe with 64 and 256 runs, in one process)."""
    partial[c0] = _chunk_zero_products(x, c0 * chunk, (c0 + STREAMS * rows) * chunk)
    for c in range(c0 + 1, c0 + STREAMS * rows):
        partial[c] = 0.0


@njit(error_model="numpy", inline="always")
def _chunk_zero_products(x, start, end):
    """The sum of ``x[i] * 0`` over the chunk, as float64: NaN if any element is inf or NaN,
    else a zero (so the chunks' sum is too, whatever the order)."""
    w = 4 * (64 // x.itemsize)
    rows = (end - start) // w
    acc = _zero_products(x, start, rows)
    for i in range(start + rows * w, end):
        acc += widen(x[i]) * 0
    return np.float64(acc)


def all_finite(parallel):
    """The compiled finiteness pass (serial or ``parallel=True`` twin): ``fn(x, chunk,
    tasks)`` is a zero when no element of ``x`` (1-D, C-contiguous, float) is inf or NaN,
    else NaN."""
    return _twin("finite", parallel, _chunk_op=_chunk_zero_products,
                 _streams_op=_streams_zero_products)
