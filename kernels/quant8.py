"""Block-wise 8-bit optimizer state inside the CPU kernels (``fastopt.quantization``).

Any kernel record steps 8-bit state without an edit of its own: a *block driver* generated
here walks the buffer in blocks of ``block`` elements (threads take contiguous runs of blocks),
one block at a time, or ``GROUP_ELEMENTS`` at a time (whole blocks, at least one) where a
record has two or more 8-bit arrays, and per block or group dequantizes each 8-bit state
array's blocks into a small float scratch row (in L1 / L2), runs the record's own serial
kernel body on them (the parameter and gradient slices and the scratch rows), then
quantizes each array's blocks back, one array after another: a block's absmax becomes its
scale, each value multiplied by its inverse takes the nearest entry of the map (float64 state:
``first`` table + one comparison, as the reference; float32 state: one read of the one-read
table, ``fastopt.quantization.encode_table``, proven equal for every float32). The grouped
driver (parameter groups, tensors) still goes block by block. One pass over memory:
codes, scales, parameter and gradient are each read once and written at most once; the float
state never leaves the cache.

The arithmetic is the NumPy reference's (``fastopt.quantization``), operation for operation,
so the results are bitwise equal for any thread count (blocks are independent).

The table reads do not vectorize (no fast gathers on the CPUs LLVM targets here), but the work
around them does: the decoder, the absmax and the encoder are LLVM intrinsics over eight
lanes (``<8 x i32>`` / ``<8 x float>``) that gather eight scalar table reads into a vector
(:func:`table_decode`, :func:`abs_max32`, :func:`table_encode`); written as Numba loops the
same arithmetic runs one value at a time or in 64-bit lanes (Numba widens integer arithmetic
to 64 bits).
"""
import math
import operator
import threading

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import (intrinsic, make_attribute_wrapper, models, overload,
                             register_model)

from .decorators import compile_generated
from .precision import _f32_as_u32, f32_to_bf16, f32_to_f16
from .record import copy_kind
from .reductions import TASKS

INLINE = dict(error_model="numpy", inline="always", fastmath=False)


@njit(**INLINE)
def dequantize_block(codes, lo, k, scale, values, cast, out):
    """``out[:k]`` = ``values[codes[lo + j]] * scale`` (in the buffer dtype; eight values per
    vector multiply, :func:`table_decode`)."""
    cast[0] = scale
    table_decode(codes, lo, k, values, cast[0], out)


@njit(**INLINE)
def _cell(x):
    return _f32_as_u32(np.float32(x)) >> 16


def abs_max_bits(w, k, cast):
    """The largest ``|w[j]|``, j < k, found as the largest of the magnitude bits (IEEE floats
    of one sign order as their bits; a NaN's bits exceed inf's, so NaN wins, as in
    ``np.max``): an integer max that vectorizes, where a NaN-aware float max does not."""


def _abs_max_impl(uint, mask):
    def impl(w, k, cast):
        u = w.view(uint)
        m = uint(0)
        for j in range(k):
            m = max(m, u[j] & mask)
        cast.view(uint)[0] = m
        return cast[0]
    return impl


_ABS_MAX = {types.float32: _abs_max_impl(np.uint32, np.uint32(0x7FFFFFFF)),
            types.float64: _abs_max_impl(np.uint64, np.uint64(0x7FFFFFFFFFFFFFFF))}


@overload(abs_max_bits)
def _abs_max_bits(w, k, cast):
    return _ABS_MAX.get(w.dtype)


@njit(**INLINE)
def _inverse(s, one):
    """``1 / s`` for a block's scale ``s`` (``one``: 1 in its dtype): 0 for a zero block, and
    0 where ``1 / s`` overflows (an absmax below 1 / FLT_MAX in float32: the block is stored
    as 0), as the reference."""
    inv = one / s if s != 0 else s
    if math.isinf(inv):
        inv = s - s
    return inv


@njit(**INLINE)
def quantize_block(w, k, codes, lo, first, mid, cast):
    """Write the codes of ``w[:k]`` to ``codes[lo:lo + k]``; return the block's float32 scale
    (its absmax). Each value is multiplied by ``1 / scale`` (a zero block stays zero) and takes
    ``first[cell] + (mid[first[cell]] < x)``: the nearest map entry (one midpoint per cell at
    most, ``fastopt.quantization.CELL_MIDS``)."""
    scale = np.float32(abs_max_bits(w, k, cast))
    cast[0] = 1
    one = cast[0]                       # 1 in the buffer dtype (a literal 1 would be int64)
    cast[0] = scale
    inv = _inverse(cast[0], one)
    c = codes[lo:lo + k]
    for j in range(k):
        x = w[j] * inv                       # a zero block: 0 * 0 = +0 (the reference's 0)
        base = np.int64(first[_cell(x)])
        c[j] = base + (mid[base] < x)
    return scale


# ----------------------------------------------------- eight lanes: decode, absmax, encode
_V = 8          # lanes of the vectors below (<8 x i32>, <8 x float>: one AVX2 register)


def _vec_loop(builder, k, vector, scalar):
    """Codegen: ``vector(j)`` for j = 0, 8, .. while 8 more elements remain of ``k``, then
    ``scalar(j)`` for each element left."""
    eight = ir.Constant(k.type, _V)
    groups = builder.sdiv(k, eight)
    with cgutils.for_range(builder, groups) as loop:
        vector(builder.mul(loop.index, eight))
    with cgutils.for_range_slice(builder, builder.mul(groups, eight), k,
                                 ir.Constant(k.type, 1)) as (j, _):
        scalar(j)


def _const(ty, value):
    """``value`` as an LLVM constant of the integer type or integer vector type ``ty``."""
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [value] * ty.count)
    return ir.Constant(ty, value)


def _load(builder, data, j, ty, align):
    return builder.load(builder.bitcast(builder.gep(data, [j]), ty.as_pointer()), align=align)


@intrinsic
def abs_max32(typingctx, w, k):
    """``abs_max_bits`` of a C-contiguous float32 array's first ``k`` values, in eight
    ``uint32`` lanes (``llvm.umax``; Numba's own integer max widens to 64-bit lanes: 8x
    slower here)."""
    if not (isinstance(w, types.Array) and w.dtype == types.float32 and w.layout == "C"
            and w.ndim == 1 and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        vec = ir.VectorType(i32, _V)
        data = builder.bitcast(context.make_array(sig.args[0])(context, builder, args[0]).data,
                               i32.as_pointer())
        k = context.cast(builder, args[1], sig.args[1], types.int64)
        mod = builder.module
        vmax = cgutils.get_or_insert_function(mod, ir.FunctionType(vec, [vec, vec]),
                                              "llvm.umax.v8i32")
        smax = cgutils.get_or_insert_function(mod, ir.FunctionType(i32, [i32, i32]),
                                              "llvm.umax.i32")
        reduce = cgutils.get_or_insert_function(mod, ir.FunctionType(i32, [vec]),
                                                "llvm.vector.reduce.umax.v8i32")
        acc = cgutils.alloca_once_value(builder, _const(vec, 0))
        out = cgutils.alloca_once_value(builder, _const(i32, 0))

        def vector(j):
            x = builder.and_(_load(builder, data, j, vec, 4), _const(vec, 0x7FFFFFFF))
            builder.store(builder.call(vmax, [builder.load(acc), x]), acc)

        def scalar(j):
            x = builder.and_(builder.load(builder.gep(data, [j])), _const(i32, 0x7FFFFFFF))
            builder.store(builder.call(smax, [builder.load(out), x]), out)
        _vec_loop(builder, k, vector, scalar)
        lanes = builder.call(reduce, [builder.load(acc)])
        return builder.bitcast(builder.call(smax, [lanes, builder.load(out)]), ir.FloatType())
    return types.float32(w, k), codegen


def _table_code(builder, x, t, ty):
    """Codegen: the codes (``ty``: i32 or a vector of them) of values with bits ``x`` and
    table entries ``t`` (``fastopt.quantization.encode_table``)."""
    flip = builder.and_(builder.sub(_const(ty, 0), builder.and_(builder.lshr(
        t, _const(ty, 24)), _const(ty, 1))), _const(ty, 0xFFFF))
    key = builder.xor(builder.and_(x, _const(ty, 0xFFFF)), flip)
    threshold = builder.and_(builder.lshr(t, _const(ty, 8)), _const(ty, 0xFFFF))
    up = builder.zext(builder.icmp_unsigned(">", key, threshold), ty)
    return builder.add(builder.and_(t, _const(ty, 0xFF)), up)


@intrinsic
def table_decode(typingctx, codes, lo, k, values, scale, out):
    """``out[j] = values[codes[lo + j]] * scale`` for j < k (float32 or float64): eight
    scalar table reads gathered into a vector, one vector multiply and store."""
    if not (isinstance(codes, types.Array) and codes.dtype == types.uint8
            and codes.layout == "C" and codes.ndim == 1
            and isinstance(values, types.Array) and values.layout == "C"
            and values.dtype in (types.float32, types.float64) and values.ndim == 1
            and isinstance(out, types.Array) and out.dtype == values.dtype
            and out.layout == "C" and out.ndim == 1 and scale == values.dtype
            and isinstance(k, types.Integer) and isinstance(lo, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        ft = context.get_value_type(sig.args[3].dtype)
        vec = ir.VectorType(ft, _V)
        c_data, v_data, o_data = (
            context.make_array(sig.args[q])(context, builder, args[q]).data for q in (0, 3, 5))
        lo = context.cast(builder, args[1], sig.args[1], types.int64)
        k = context.cast(builder, args[2], sig.args[2], types.int64)
        c_data = builder.gep(c_data, [lo])
        s = args[4]
        sv = ir.Constant(vec, ir.Undefined)
        for e in range(_V):
            sv = builder.insert_element(sv, s, ir.Constant(i32, e))

        def value(j):
            code = builder.zext(builder.load(builder.gep(c_data, [j])), i64)
            return builder.load(builder.gep(v_data, [code]))

        def vector(j):
            v = ir.Constant(vec, ir.Undefined)
            for e in range(_V):
                v = builder.insert_element(v, value(builder.add(j, ir.Constant(i64, e))),
                                           ir.Constant(i32, e))
            builder.store(builder.fmul(v, sv), builder.bitcast(builder.gep(o_data, [j]),
                                                               vec.as_pointer()),
                          align=sig.args[3].dtype.bitwidth // 8)

        def scalar(j):
            builder.store(builder.fmul(value(j), s), builder.gep(o_data, [j]))
        _vec_loop(builder, k, vector, scalar)
        return context.get_dummy_value()
    return types.none(codes, lo, k, values, scale, out), codegen


@intrinsic
def table_encode(typingctx, xb, table, k, codes, lo):
    """``codes[lo + j]`` for j < k from the value bits ``xb[j]``: eight table reads
    (``table[xb[j] >> 16]``, scalar loads) gathered into a vector, then the codes in eight
    lanes."""
    u32 = lambda a: (isinstance(a, types.Array) and a.dtype == types.uint32  # noqa: E731
                     and a.layout == "C" and a.ndim == 1)
    if not (u32(xb) and u32(table) and isinstance(codes, types.Array)
            and codes.dtype == types.uint8 and codes.layout == "C" and codes.ndim == 1
            and isinstance(k, types.Integer) and isinstance(lo, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        x_data, t_data, c_data = (
            context.make_array(sig.args[q])(context, builder, args[q]).data for q in (0, 1, 3))
        k = context.cast(builder, args[2], sig.args[2], types.int64)
        lo = context.cast(builder, args[4], sig.args[4], types.int64)
        c_data = builder.gep(c_data, [lo])

        def entry(x):
            cell = builder.zext(builder.lshr(x, _const(i32, 16)), i64)
            return builder.load(builder.gep(t_data, [cell]))
        encode_loop(builder, x_data, c_data, k, entry, _table_code)
        return context.get_dummy_value()
    return types.none(xb, table, k, codes, lo), codegen


def encode_loop(builder, x_data, c_data, k, entry, code_of):
    """Codegen: ``c_data[j]`` for j < k from the value bits ``x_data[j]`` (i32 pointers): per
    eight values, eight scalar table reads ``entry(x)`` (an i32 each) gathered into a vector,
    then ``code_of(builder, x, t, ty)`` in eight lanes (one value at a time for the rest)."""
    i32, i8, i64 = ir.IntType(32), ir.IntType(8), ir.IntType(64)
    vec, vec8 = ir.VectorType(i32, _V), ir.VectorType(i8, _V)

    def vector(j):
        t = ir.Constant(vec, ir.Undefined)
        for e in range(_V):
            x = builder.load(builder.gep(x_data, [builder.add(j, ir.Constant(i64, e))]))
            t = builder.insert_element(t, entry(x), ir.Constant(i32, e))
        code = code_of(builder, _load(builder, x_data, j, vec, 4), t, vec)
        builder.store(builder.trunc(code, vec8),
                      builder.bitcast(builder.gep(c_data, [j]), vec8.as_pointer()), align=1)

    def scalar(j):
        x = builder.load(builder.gep(x_data, [j]))
        builder.store(builder.trunc(code_of(builder, x, entry(x), i32), i8),
                      builder.gep(c_data, [j]))
    _vec_loop(builder, k, vector, scalar)


@njit(error_model="numpy", cache=True)
def encode_bits(xb, table, codes):
    """``codes[j]``: the code of the float32 value with bits ``xb[j]`` through the one-read
    table, by the kernels' own encoder (:func:`table_encode`); for the tests and
    ``bench/cpu_probes/encode_table_check.py``, which compare it with the reference's codes."""
    table_encode(xb, table, xb.shape[0], codes, 0)


@njit(**INLINE)
def quantize_block_t(w, k, codes, lo, table, xf, xb):
    """:func:`quantize_block` for float32 with the one-read table
    (``fastopt.quantization.encode_table``): the same scale and codes (the table's codes equal
    the first-and-midpoint codes for every float32). Two loops over the block in L1: the
    scaled values (``xf``, viewed as bits ``xb``: eight lanes), then per eight values eight
    table reads and the codes in eight lanes (:func:`table_encode`). Against
    :func:`quantize_block` (two dependent reads per value, one value at a time) on the 2-core
    Zen 3 VM: 0.45 vs 1.4-2.0 ns per value in L1; the 8-bit steps of Adam, RMSprop and
    Momentum 1.39-1.68x as fast with this encoder alone (``bench/cpu_probes/q8_encoders.py``,
    1e5 serial and 1e7 parallel)."""
    scale = abs_max32(w, k)
    inv = _inverse(scale, np.float32(1))
    for j in range(k):
        xf[j] = w[j] * inv
    table_encode(xb, table, k, codes, lo)
    return scale


@njit(**INLINE)
def copy_block(p, pc, lo, hi):
    """``pc[lo:hi]`` = ``p[lo:hi]`` rounded to bfloat16 bits (the param copy). On slices: a
    loop over ``p[j]`` with ``j`` from ``lo`` checks each index for wraparound and does not
    vectorize (7x slower)."""
    x = p[lo:hi]
    y = pc[lo:hi]
    for j in range(hi - lo):
        y[j] = f32_to_bf16(x[j])


@njit(**INLINE)
def copy_block_half(p, pc, lo, hi):
    """:func:`copy_block` to float16 bits (nearest, ties to even)."""
    x = p[lo:hi]
    y = pc[lo:hi]
    for j in range(hi - lo):
        y[j] = f32_to_f16(x[j])


_drivers = {}
_lock = threading.Lock()


def _kind_calls(n_kinds, body_args, row, indent):
    """Source lines: ``body<kind>(<body_args>, <row>)``, chosen by the variable ``kind`` when
    there are several kinds."""
    lines = []
    for q in range(n_kinds):
        call = f"body{q}({', '.join(body_args)}, {row})"
        if n_kinds == 1:
            return [indent + call]
        lines += [f"{indent}{'if' if q == 0 else 'elif'} kind == {q}:", f"{indent}    {call}"]
    return lines


# with two or more 8-bit arrays (Adam, AdamW, Adadelta, ...) the ungrouped block driver
# dequantizes, steps and quantizes this many elements (whole blocks) at a time: the body runs
# once per group and each 8-bit array's blocks are encoded one after another. 1e7 parameters,
# 8-bit state in blocks of 256, 2 threads of the Zen 4 VM, the driver compiled with groups of
# 1 block, 1024, 2048 and 4096 elements and timed interleaved in one process (40 rounds, two
# runs, 2026-11-29): Adam 11.0-11.1 ms block by block, 10.1-10.3 ms with 4096 (1.06-1.09x),
# Adadelta 1.07x (one run); but the one-state RMSprop and Momentum 0.90-1.03x (groups of 1024 or
# 2048 slower, of 4096 about even), so a driver with one 8-bit array goes block by block.
GROUP_ELEMENTS = 4096


def _source(n_arrays, quantized, parallel, n_kinds=0, copy=False, table=False):
    """The block driver's source for a record with ``n_arrays`` arrays, ``quantized[j]`` True
    where array ``j`` is 8-bit state. ``n_kinds`` > 0: the grouped driver, which runs, per
    block, the block's *pieces* (``items[bstarts[b]:bstarts[b + 1]]``, rows ``(lo, hi, row,
    kind)`` in buffer order, :func:`block_items`) between the dequantization and the
    quantization, each with the serial kernel of its kind and its row of the scalar table.
    ``copy``: the driver takes ``pc`` after the arrays, the parameter's bfloat16 copy (or with
    ``copy="float16"`` its float16 copy's bits), and writes the block's new parameters to it
    (rounded to nearest even) while they are in L1.
    ``table``: float32 buffers, each 8-bit array's ``f<j>`` is the one-read encoding table
    (:func:`quantize_block_t`, one scratch row per thread) instead of the first-midpoint
    table."""
    params, body_args, setup, deq, quant = [], [], [], [], []
    if table and any(quantized):
        setup += ["        xf = np.empty(block, np.float32)",
                  "        xb = xf.view(np.uint32)"]
    # the ungrouped driver steps GROUP_ELEMENTS at a time (whole blocks, at least one): block
    # by block q of the group, at offset o = q * block in the scratch rows, kk elements
    each = ["            for bb in range(b, be):",
            "                o = (bb - b) * block",
            "                kk = min(block, k - o)"]
    for j in range(n_arrays):
        if quantized[j]:
            params += [f"c{j}", f"s{j}", f"v{j}", f"f{j}", f"d{j}"]
            if n_kinds:
                setup.append(f"        w{j} = np.empty(block, a0.dtype)")
                deq.append(f"            dequantize_block(c{j}, lo, k, s{j}[b], v{j}, cast, "
                           f"w{j})")
                quant.append(f"            s{j}[b] = quantize_block_t(w{j}, k, c{j}, lo, f{j}, "
                             f"xf, xb)" if table else
                             f"            s{j}[b] = quantize_block(w{j}, k, c{j}, lo, f{j}, "
                             f"d{j}, cast)")
            else:
                setup.append(f"        w{j} = np.empty(group * block, a0.dtype)")
                deq.append(f"                dequantize_block(c{j}, lo + o, kk, s{j}[bb], v{j}, "
                           f"cast, w{j}[o:])")
                quant += each + [
                    f"                s{j}[bb] = quantize_block_t(w{j}[o:], kk, c{j}, lo + o, "
                    f"f{j}, xf, xb)" if table else
                    f"                s{j}[bb] = quantize_block(w{j}[o:], kk, c{j}, lo + o, "
                    f"f{j}, d{j}, cast)"]
            body_args.append(f"w{j}[:k]" if not n_kinds else f"w{j}[u:e]")
        else:
            params.append(f"a{j}")
            body_args.append(f"a{j}[lo:hi]" if not n_kinds else f"a{j}[lo + u:lo + e]")
    if copy:
        params.append("pc")
        writer = "copy_block_half" if copy == "float16" else "copy_block"
        quant.append(f"            {writer}(a0, pc, lo, hi)")
    if n_kinds:
        head = f"def q8_grouped({', '.join(params)}, table, items, bstarts, block, cuts):"
        calls = ["            for it in range(bstarts[b], bstarts[b + 1]):",
                 "                u = items[it, 0] - lo",
                 "                e = items[it, 1] - lo",
                 "                kind = items[it, 3]"]
        calls += _kind_calls(n_kinds, body_args, "table[items[it, 2]]", " " * 16)
    else:
        head = f"def q8_driver({', '.join(params)}, sc, block, chunks):"
        calls = [f"            body({', '.join(body_args)}, sc)"]
    loop = "prange" if parallel else "range"
    group = f"max(1, {GROUP_ELEMENTS} // block)" if sum(map(bool, quantized)) >= 2 else "1"
    if n_kinds:
        walk = ["        for b in range(b0, b1):",
                "            if bstarts[b] == bstarts[b + 1]:",
                "                continue           # a block of frozen elements: not touched",
                "            lo = b * block",
                "            hi = min(n, lo + block)",
                "            k = hi - lo",
                *deq]
    else:
        walk = ["        for b in range(b0, b1, group):",
                "            be = min(b1, b + group)",
                "            lo = b * block",
                "            hi = min(n, be * block)",
                "            k = hi - lo",
                *each, *deq]
    # the grouped driver's chunk ch: blocks cuts[ch] .. cuts[ch + 1] - 1 (block_cuts: equal
    # shares of the blocks that have items); the ungrouped one's: equal runs of blocks
    chunking = (["    for ch in {loop}(cuts.shape[0] - 1):".format(loop=loop),
                 "        b0 = cuts[ch]",
                 "        b1 = cuts[ch + 1]"] if n_kinds else
                ["    per = (nb + chunks - 1) // chunks",
                 f"    for ch in {loop}(chunks):",
                 "        b0 = ch * per",
                 "        b1 = min(nb, b0 + per)"])
    lines = [head,
             "    n = a0.shape[0]",
             "    nb = (n + block - 1) // block",
             f"    group = {group}",
             *chunking,
             "        cast = np.empty(1, a0.dtype)",
             *setup,
             *walk,
             *calls,
             *quant]
    return "\n".join(lines) + "\n"


def _compile(key, src, name, parallel, bodies):
    fn = _drivers.get(key)
    if fn is None:
        with _lock:
            fn = _drivers.get(key)
            if fn is None:
                scope = dict(np=np, prange=prange, dequantize_block=dequantize_block,
                             quantize_block=quantize_block, quantize_block_t=quantize_block_t,
                             copy_block=copy_block, copy_block_half=copy_block_half,
                             **bodies)
                fn = _drivers[key] = compile_generated(src, name, scope, parallel,
                                                       tuple(bodies.values()))
    return fn


def driver(body, n_arrays, quantized, parallel, copy=False, table=False):
    """The compiled block driver around ``body`` (a record's serial kernel for one option
    combination): ``driver(<arrays, each 8-bit one as codes, scales, map values, first table
    (``table``: the one-read encoding table), midpoints>, [param copy,] scalars, block,
    chunks)``. Compiled on first use and cached on disk (it calls a kernel chosen at run
    time: ``kernels.decorators.compile_generated``)."""
    return _compile((body, tuple(quantized), bool(parallel), copy_kind(copy), bool(table)),
                    _source(n_arrays, quantized, parallel, copy=copy, table=table), "q8_driver",
                    parallel, dict(body=body))


def grouped_driver(bodies, n_arrays, quantized, parallel, copy=False, table=False):
    """The compiled grouped block driver around ``bodies`` (the record's serial kernels, one
    per kind): ``driver(<arrays as for driver>, [param copy,] table, items, bstarts, block,
    chunks)``; row ``r`` of ``table`` is the packed scalars of row ``r`` of the groups."""
    bodies = tuple(bodies)
    return _compile(("grouped", bodies, tuple(quantized), bool(parallel), copy_kind(copy),
                     bool(table)),
                    _source(n_arrays, quantized, parallel, len(bodies), copy, table),
                    "q8_grouped", parallel, {f"body{q}": b for q, b in enumerate(bodies)})


@njit(**INLINE)
def dequantize_range(codes, scales, values, block, cs, ce, cast, out):
    """``out[:ce - cs]`` = the values of elements ``cs .. ce - 1`` (blocks of ``block``)."""
    j = cs
    while j < ce:
        b = j // block
        e = min(ce, (b + 1) * block)
        dequantize_block(codes, j, e - j, scales[b], values, cast, out[j - cs:])
        j = e


def _prepass_source(n_arrays, quantized, parallel):
    """The source of the 8-bit pre-pass (a record with norms, LAMB): ``q8_norms(<arrays as
    for driver>, sc, chunk, block, lo, hi, k)`` -> the ``k`` sums over elements ``lo .. hi -
    1``: per chunk of ``chunk`` elements from ``lo`` (the unit of the float pre-pass), the
    8-bit arrays are dequantized into scratch rows and the record's serial pre-pass
    (``norms``, ``kernels.reductions.segment_norms``) sums that one chunk; the chunk sums are
    added in order, as the float pre-pass adds them: the same bits as the float pre-pass on
    the dequantized state. Chunks are handed out in runs (``kernels.reductions.TASKS`` of
    them), each with its scratch rows allocated once."""
    params, arrs, setup, deq = [], [], [], []
    for j in range(n_arrays):
        if quantized[j]:
            params += [f"c{j}", f"s{j}", f"v{j}", f"f{j}", f"d{j}"]
            setup.append(f"        w{j} = np.empty(chunk, a0.dtype)")
            deq.append(f"            dequantize_range(c{j}, s{j}, v{j}, block, cs, ce, cast, "
                       f"w{j})")
            arrs.append(f"w{j}[:ce - cs]")
        else:
            params.append(f"a{j}")
            arrs.append(f"a{j}[cs:ce]")
    lines = [f"def q8_norms({', '.join(params)}, sc, chunk, block, lo, hi, k):",
             "    n_chunks = (hi - lo + chunk - 1) // chunk",
             "    partial = np.empty((n_chunks, k), np.float64)",
             f"    per_task = max(1, (n_chunks + {TASKS} - 1) // {TASKS})",
             "    n_tasks = (n_chunks + per_task - 1) // per_task",
             f"    for task in {'prange' if parallel else 'range'}(n_tasks):",
             "        cast = np.empty(1, a0.dtype)",
             *setup,
             "        for c in range(task * per_task, min(n_chunks, (task + 1) * per_task)):",
             "            cs = lo + c * chunk",
             "            ce = min(hi, cs + chunk)",
             *deq,
             f"            t = norms(({', '.join(arrs)},), sc, chunk)",
             "            for q in range(k):",
             "                partial[c, q] = t[q]",
             "    totals = np.zeros(k, np.float64)",
             "    for c in range(n_chunks):",
             "        for q in range(k):",
             "            totals[q] += partial[c, q]",
             "    return totals"]
    return "\n".join(lines) + "\n"


def prepass(norms, n_arrays, quantized, parallel):
    """The compiled 8-bit pre-pass around ``norms`` (the record's serial pre-pass for one
    option combination, :func:`kernels.reductions.segment_norms`); see
    :func:`_prepass_source`."""
    return _compile(("norms", norms, tuple(quantized), bool(parallel)),
                    _prepass_source(n_arrays, quantized, parallel), "q8_norms", parallel,
                    dict(norms=norms, dequantize_range=dequantize_range))


def block_cuts(bstarts, chunks):
    """The grouped block driver's chunks (``cuts``, ``chunks + 1`` block indices): equal shares
    of the blocks that have items (``bstarts``, :func:`block_items`), so that frozen blocks
    (none) leave no thread idle; every block in one chunk. Where every block has items: the
    equal runs ``min(nb, c * ceil(nb / chunks))``."""
    nb = len(bstarts) - 1
    busy = np.flatnonzero(np.diff(bstarts) > 0)
    chunks = max(1, int(chunks))
    per = max(1, -(-len(busy) // chunks))
    cuts = np.full(chunks + 1, nb, np.int64)
    for c in range(1, chunks):
        if c * per < len(busy):
            cuts[c] = busy[c * per]
    cuts[0] = 0
    return cuts


def block_items(segments, kinds, n, block):
    """``(items, bstarts)`` for :func:`grouped_driver`: ``segments`` ``((lo, hi, row), ...)``
    in order covering ``[0, n)`` but for frozen ranges of whole blocks, ``kinds[s]`` segment
    ``s``'s kind, cut at every block boundary into items ``(lo, hi, row, kind)``; block
    ``b``'s items are ``bstarts[b] .. bstarts[b + 1] - 1`` (none: the driver skips it)."""
    parts = []
    for (lo, hi, row), kind in zip(segments, kinds):
        if hi <= lo:
            continue
        edges = np.arange((lo // block + 1) * block, hi, block, dtype=np.int64)
        starts = np.concatenate([[lo], edges])
        ends = np.concatenate([edges, [hi]])
        parts.append(np.stack([starts, ends, np.full_like(starts, row),
                               np.full_like(starts, kind)], axis=1))
    items = np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)
    nb = -(-n // block)
    bstarts = np.searchsorted(items[:, 0], np.arange(nb + 1, dtype=np.int64) * block)
    return np.ascontiguousarray(items, np.int64), bstarts.astype(np.int64)


# ---------------------------------------------------------------- on CUDA
UNROLL_MAX = 8      # elements per thread written out one by one (more: a loop)


def _each(E, body, stride="unt"):
    """Source lines: ``body`` (lines at 16 spaces, ``@E`` standing for the element's position
    in the thread's elements) for each of a thread's ``E`` elements that is inside the buffer,
    ``i`` its index (``base_i`` + the position times ``stride``: the thread count when a
    thread's elements are strided, ``"1"`` when they are neighbours). Written out element by
    element (constant positions: the local arrays stay in registers) up to ``UNROLL_MAX``,
    else a loop."""
    step = "" if stride == "1" else f" * {stride}"
    if E > UNROLL_MAX:
        return [f"        for e in range({E}):", f"            i = base_i + uint64(e){step}",
                "            if i < un:", *(line.replace("@E", "e") for line in body)]
    out = []
    for e in range(E):
        out += [f"        i = base_i + uint64({e}){step}",
                "        if i < un:",
                *(line[4:].replace("@E", str(e)) for line in body)]
    return out


WORD = 4            # elements per word of the neighbouring layout (a uint32 of codes)


# source snippets of the word layouts (here and ``kernels.cuda.quad_source``): a 64-bit word's
# first and second float32, two float32 packed into one, a word's bfloat16 number ``k`` as
# float32, four bfloat16 bit patterns (source expressions) packed into one word
def word_lo(x):
    return f"from_uint(uint32({x} & uint64(0xFFFFFFFF)), float32(0))"


def word_hi(x):
    return f"from_uint(uint32({x} >> uint64(32)), float32(0))"


def word_pack(a, b):
    return f"(uint64(as_uint({a})) | (uint64(as_uint({b})) << uint64(32)))"


def word_bf16(x, k):
    return (f"from_uint(uint32(({x} >> uint64({16 * k})) & uint64(0xFFFF)) << uint32(16), "
            f"float32(0))")


def word_pack16(parts):
    return " | ".join(f"(uint64({v}) << uint64({16 * k}))" for k, v in enumerate(parts))


def _segment_of(index, indent):
    """Source lines: ``s0`` = the last row of ``segs`` (rows ``(lo, hi, row, kind)`` in buffer
    order) whose ``lo`` is at most element ``index`` (a binary search; 0 when none is)."""
    return [indent + line for line in ("s0 = 0",
                                       "s1 = segs.shape[0] - 1",
                                       "while s0 < s1:",
                                       "    mid = (s0 + s1 + 1) // 2",
                                       f"    if segs[mid, 0] <= {index}:",
                                       "        s0 = mid",
                                       "    else:",
                                       "        s1 = mid - 1")]


def cuda_source(n_arrays, quantized, dtype_name, n_kinds=0, per_thread=1, copy=False,
                words=False):
    """The CUDA kernel's source for 8-bit state: one thread block per block of the buffer
    (``blockDim.x * per_thread`` = the quantization block, ``blockDim.x`` at most
    ``CUDA_MAX_BLOCK``), blocks in a grid-stride loop. Thread ``t`` takes elements ``t, t + nt,
    .., t + (per_thread - 1) * nt`` of the block (``nt`` threads: each of those loads is
    coalesced across the threads), or, with ``words`` (float32, 4 elements per thread), the
    four neighbours ``4t .. 4t + 3``, read and written as words: its parameters and every other
    float32 array as two 64-bit words, its codes of each 8-bit state as one 32-bit word (a
    third of the memory instructions; on an H200, Adam at 1e8: 719.9 us against 1181.8 us
    strided, ``bench/figures/gpu_layouts_h200.txt``). The word views come after the arrays and the
    param copy (``aw<j>``: ``uint64`` of a float32 array's first ``4 * (n // 4)`` elements;
    ``cw<j>``: ``uint32`` of an 8-bit array's codes; ``pcw``: ``uint64`` of the copy); a
    thread whose four elements are not all inside the buffer takes them one by one.

    Three phases: a thread first loads all its elements of every array (8-bit state
    dequantized) into local arrays, so that its loads are in flight together (the body's
    stores to the parameter would otherwise order each element's loads after the previous
    element's stores: one memory latency per element); then runs the record's body on each
    element's one-element local slices (its loop bound to ``range``) and stores the arrays
    other than the gradient back (arrays 0 and 1 are the parameter and the gradient,
    ``kernels.record``); then the block takes the absmax of each new state as the largest
    magnitude bits (a maximum: any order gives the same answer), each thread adding its own
    maximum with a shared-memory atomic max, one barrier for all the 8-bit arrays, and each
    thread writes its codes; the arithmetic is the CPU driver's, operation for operation, so
    both layouts give the same bits. The atomics go to one of three rows of shared memory in
    turn (successive blocks of the loop): thread 0 clears the next row before the barrier,
    which no thread reads any more (the barrier before proves it) and none writes before this
    one. Element indices are unsigned (no negative-index wraparound on each access). An array
    of the record that the step does not have (a zero-length placeholder) is neither loaded
    nor stored. ``n_kinds`` > 0: a grouped step, ``kernel(<arrays>, segs, rows)``: each
    element's segment is found by a binary search over ``segs`` (rows ``(lo, hi, row,
    kind)`` in buffer order) and the body of the segment's kind runs with its row of scalars
    (``(rows, row)``, ``kernels.groups.row_unpack_source``); a block in no segment (frozen
    elements, whole blocks) is skipped by every thread of its thread block.
    ``copy``: the kernel takes ``pc`` after the arrays, the parameter's bfloat16 copy, and
    writes each new parameter to it, rounded to nearest even."""
    E = int(per_thread)
    if words and (E != WORD or dtype_name != "float32"):
        raise ValueError(f"the word layout takes {WORD} float32 elements per thread, not "
                         f"{E} {dtype_name}")
    stride = "1" if words else "unt"
    q = [j for j in range(n_arrays) if quantized[j]]
    nq = max(1, len(q))
    params, wparams, body_args, local, sds, loads, stores = [], [], [], [], [], [], []
    wloads, wstores = [], []
    utype = "uint32" if dtype_name == "float32" else "uint64"
    for j in range(n_arrays):
        local.append(f"    w{j} = cuda.local.array({E}, {dtype_name})")
        body_args.append(f"w{j}[@E:@E + 1]")
        if quantized[j]:
            params += [f"c{j}", f"s{j}", f"v{j}", f"f{j}", f"d{j}"]
            wparams.append(f"cw{j}")
            sds.append(f"        sd{j} = {dtype_name}(s{j}[b])")
        else:
            params.append(f"a{j}")
            wparams.append(f"aw{j}")
            if j >= 2:      # (param and grad are always there)
                local.append(f"    has{j} = a{j}.shape[0] == n")
    for j in range(n_arrays):
        if quantized[j]:
            loads.append(f"                w{j}[@E] = v{j}[c{j}[i]] * sd{j}")
            wloads.append(f"            cq = cw{j}[qw]")
            wloads += [f"            w{j}[{e}] = v{j}[(cq >> uint32({8 * e})) & uint32(255)]"
                       f" * sd{j}" for e in range(WORD)]
            continue
        words_in = [f"x = aw{j}[uint64(2) * qw]", f"y = aw{j}[uint64(2) * qw + uint64(1)]",
                    f"w{j}[0] = {word_lo('x')}", f"w{j}[1] = {word_hi('x')}",
                    f"w{j}[2] = {word_lo('y')}", f"w{j}[3] = {word_hi('y')}"]
        if j < 2:
            loads.append(f"                w{j}[@E] = a{j}[i]")
            wloads += ["            " + line for line in words_in]
        else:
            loads += [f"                if has{j}:", f"                    w{j}[@E] = a{j}[i]"]
            wloads += [f"            if has{j}:", *("                " + line
                                                     for line in words_in)]
    loads = _each(E, loads, stride)
    for j in range(n_arrays):
        if not quantized[j] and j != 1:
            stores += ([f"                a{j}[i] = w{j}[@E]"] if j < 2 else
                       [f"                if has{j}:", f"                    a{j}[i] = w{j}[@E]"])
            words_out = [f"aw{j}[uint64(2) * qw] = {word_pack(f'w{j}[0]', f'w{j}[1]')}",
                         f"aw{j}[uint64(2) * qw + uint64(1)] = "
                         f"{word_pack(f'w{j}[2]', f'w{j}[3]')}"]
            wstores += (["            " + line for line in words_out] if j < 2 else
                        [f"            if has{j}:", *("                " + line
                                                      for line in words_out)])
    if copy:
        params.append("pc")
        wparams.append("pcw")
        to = "f32_to_f16" if copy == "float16" else "f32_to_bf16"
        stores.append(f"                pc[i] = {to}(w0[@E])")
        wstores.append("            pcw[qw] = " + word_pack16(
            f"{to}(w0[{e}])" for e in range(WORD)))
    red = []
    for k, j in enumerate(q):
        red += [f"        m = {utype}(0)",
                *_each(E, [f"                m = max(m, as_uint(w{j}[@E]) & MAG)"], stride),
                f"        cuda.atomic.max(sh, row + {k}, m)"]
    red += ["        if tid == 0:",
            f"            for k in range({nq}):",
            f"                sh[nxt + k] = {utype}(0)",
            "        cuda.syncthreads()"]
    for k, j in enumerate(q):
        red += [f"        scale{j} = float32(from_uint(sh[row + {k}], {dtype_name}(0)))",
                "        if tid == 0:",
                f"            s{j}[b] = scale{j}",
                f"        sq = {dtype_name}(scale{j})",
                f"        inv = {dtype_name}(1) / sq if sq != 0 else sq",
                "        if math.isinf(inv):",
                "            inv = sq - sq"]
        encode = [f"                x = w{j}[@E] * inv",
                  "                cell = as_uint(float32(x)) >> uint32(16)",
                  f"                code = uint32(f{j}[cell])",
                  f"                if d{j}[code] < x:",
                  "                    code += uint32(1)"]
        if not words:
            red += _each(E, encode + [f"                c{j}[i] = uint8(code)"], stride)
            continue
        red += [f"        k{e} = uint32(0)" for e in range(WORD)]
        red += _each(E, encode + ["                k@E = code"], stride)
        red += ["        if full:",
                f"            cw{j}[qw] = " + " | ".join(
                    f"(k{e} << uint32({8 * e}))" for e in range(WORD)),
                "        else:",
                *("    " + line for line in _each(E, [f"                c{j}[i] = uint8(k@E)"],
                                                   stride))]
    skip = []
    if n_kinds:
        # a block whose first element is in no segment is frozen whole (frozen ranges are
        # whole blocks: fastopt._step checks): not read, not written; the same for every
        # thread of the block, so the barriers stay matched (the shared rows are untouched)
        skip = ["        bi = int64(b) * int64(nt * " + str(E) + ")",
                *_segment_of("bi", " " * 8),
                "        if segs[s0, 0] > bi or segs[s0, 1] <= bi:",
                "            continue"]
        call = ["                ii = int64(i)",
                *_segment_of("ii", " " * 16),
                "                kind = segs[s0, 3]",
                "                sc = (rows, segs[s0, 2])"]
        call += _kind_calls(n_kinds, body_args, "sc", " " * 16)
        tail = "segs, rows"
    else:
        call = [f"                body({', '.join(body_args)}, sc)"]
        tail = "sc"
    head = f"def q8_kernel({', '.join(params + (wparams if words else []))}, {tail}):"
    if words:
        first = ["        base_i = uint64(b) * uint64(bs) + uint64(tid) * uint64(4)",
                 "        qw = base_i >> uint64(2)",
                 "        full = base_i + uint64(4) <= un",
                 *sds,
                 "        if full:", *wloads,
                 "        else:", *("    " + line for line in loads),
                 *_each(E, call, stride),
                 "        if full:", *wstores,
                 "        else:", *("    " + line for line in _each(E, stores, stride))]
    else:
        first = ["        base_i = uint64(b) * uint64(bs) + uint64(tid)",
                 *sds,
                 *loads,
                 *_each(E, call + stores)]
    lines = [head,
             "    n = a0.shape[0]",
             "    un = uint64(n)",
             "    nt = cuda.blockDim.x",
             "    unt = uint64(nt)",
             "    tid = cuda.threadIdx.x",
             f"    sh = cuda.shared.array({3 * nq}, {utype})",
             *local,
             "    if tid == 0:",
             f"        for k in range({3 * nq}):",
             f"            sh[k] = {utype}(0)",
             "    cuda.syncthreads()",
             "    row = 0",
             f"    bs = nt * {E}",
             "    nb = (n + bs - 1) // bs",
             "    for b in range(cuda.blockIdx.x, nb, cuda.gridDim.x):",
             *skip,
             f"        nxt = row + {nq} if row < {2 * nq} else 0",
             *first,
             *red,
             "        row = nxt"]
    return "\n".join(lines) + "\n"


CUDA_MAX_BLOCK = 1024       # the most threads of a CUDA block: the largest 8-bit block there


@intrinsic
def as_uint(typingctx, x):
    """The bits of a float32 (uint32) or float64 (uint64), on any target."""
    if x not in (types.float32, types.float64):
        return None
    ret = types.uint32 if x == types.float32 else types.uint64

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(ret.bitwidth))
    return ret(x), codegen


@intrinsic
def from_uint(typingctx, u, like):
    """The float of ``like``'s type (float32 or float64) whose bits are ``u``."""
    if like not in (types.float32, types.float64) or not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        width = like.bitwidth
        v = args[0]
        if u.bitwidth > width:
            v = builder.trunc(v, ir.IntType(width))
        elif u.bitwidth < width:
            v = builder.zext(v, ir.IntType(width))
        return builder.bitcast(v, context.get_value_type(like))
    return like(u, like), codegen


def sim_as_uint(x):
    """:func:`as_uint` for the CUDA simulator (NumPy)."""
    x = np.asarray(x)
    return x.view(np.uint32 if x.dtype == np.float32 else np.uint64)[()]


def sim_from_uint(u, like):
    """:func:`from_uint` for the CUDA simulator (NumPy)."""
    like = np.asarray(like)
    ut = np.uint32 if like.dtype == np.float32 else np.uint64
    return np.asarray(u, ut).view(like.dtype)[()]


# ---------------------------------------------------------------- read in place (CUDA pre-pass)
class Q8ViewType(types.Type):
    """The Numba type of an 8-bit state array read element by element inside a CUDA kernel:
    item ``i`` is ``values[codes[lo + i]] * scales[(lo + i) // block]`` in the dtype of
    ``values`` (the float32 scale widened first for float64), the dequantization of the
    block driver (:func:`dequantize_block`) for one element. Read-only: LAMB's device
    pre-pass (``kernels.cuda.get_norms_q8``) sees 8-bit state through it."""

    def __init__(self, codes, scales, values):
        self.codes, self.scales, self.values = codes, scales, values
        super().__init__(name=f"Q8View({codes}, {scales}, {values})")


@register_model(Q8ViewType)
class _Q8ViewModel(models.StructModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, [("codes", fe_type.codes), ("scales", fe_type.scales),
                                        ("values", fe_type.values), ("block", types.int64),
                                        ("lo", types.int64)])


for _field in ("codes", "scales", "values", "block", "lo"):
    make_attribute_wrapper(Q8ViewType, _field, _field)


@intrinsic
def q8_view(typingctx, codes, scales, values, block, lo):
    """A :class:`Q8ViewType` over device arrays inside a CUDA kernel (no reference counting:
    CUDA kernels run without NRT)."""
    if not (isinstance(codes, types.Array) and codes.dtype == types.uint8
            and isinstance(scales, types.Array) and scales.dtype == types.float32
            and isinstance(values, types.Array)
            and values.dtype in (types.float32, types.float64)
            and isinstance(block, types.Integer) and isinstance(lo, types.Integer)):
        return None
    ret = Q8ViewType(codes, scales, values)

    def codegen(context, builder, sig, args):
        s = cgutils.create_struct_proxy(ret)(context, builder)
        s.codes, s.scales, s.values = args[0], args[1], args[2]
        s.block = context.cast(builder, args[3], sig.args[3], types.int64)
        s.lo = context.cast(builder, args[4], sig.args[4], types.int64)
        return s._getvalue()
    return ret(codes, scales, values, block, lo), codegen


@overload(operator.getitem)
def _q8_getitem(a, i):
    if isinstance(a, Q8ViewType) and isinstance(i, types.Integer):
        if a.values.dtype == types.float32:
            def impl32(a, i):
                j = a.lo + i
                return a.values[a.codes[j]] * a.scales[j // a.block]
            return impl32

        def impl64(a, i):
            j = a.lo + i
            return a.values[a.codes[j]] * np.float64(a.scales[j // a.block])
        return impl64


class SimQ8:
    """What :func:`q8_view` gives a kernel under Numba's CUDA simulator (which runs kernels as
    Python): the same dequantization, in NumPy scalars."""

    def __init__(self, codes, scales, values, block, lo):
        self.codes, self.scales, self.values = codes, scales, values
        self.block, self.lo = int(block), int(lo)

    def __getitem__(self, i):
        j = self.lo + int(i)
        return self.values[self.codes[j]] * self.values.dtype.type(self.scales[j // self.block])
