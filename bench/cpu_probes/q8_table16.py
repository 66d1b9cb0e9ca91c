"""CPU probe: a 16-bit encoding table for the 8-bit state (a design that was measured and not
taken). The product encodes a float32 value with one read of a 32-bit entry per float32 cell
(``fastopt.quantization.encode_table``: code, threshold, flip); 256 KB per map, of which the
cells a step touches take ~18 KB of cache lines per map. Here each cell's entry is 16 bits,
its code and an index into a 256-entry table of the thresholds of the cells that hold a
midpoint (index 0: none); the flip comes from the sign bit and the +inf cell adds one. Half
the lines, but a second, dependent read per value.

    python bench/cpu_probes/q8_table16.py check            every float32 bit pattern, both
                                                          maps: the same code as the product
    python bench/cpu_probes/q8_table16.py bench [names]    the block driver with each table,
                                                          1e7, interleaved in one process
(from the repository root)
"""
import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from fastopt import quantization as Q, registry
from fastopt.benchmarks import interleaved_rounds, round_ratio
from fastopt.kernels import quant8 as q8
from q8_parts import captured_driver   # this folder (the script's own) is on sys.path


def table16(qmap):
    """The 16-bit table of ``qmap``: 65536 cell entries ``code | index << 8``, then the 256
    thresholds (uint16) they index."""
    big = qmap.table.astype(np.int64)
    t = (big >> 8) & 0xFFFF
    cells = np.arange(1 << 16)
    special = (cells & 0x7F80) == 0x7F80          # inf and NaN cells: no threshold (see doc)
    mids = np.flatnonzero((t != 0xFFFF) & ~special)
    assert len(mids) <= 255
    index = np.zeros(1 << 16, np.int64)
    index[mids] = np.arange(1, len(mids) + 1)
    small = np.full(256, 0xFFFF, np.int64)
    small[1:len(mids) + 1] = t[mids]
    return np.concatenate([(big & 0xFF) | (index << 8), small]).astype(np.uint16)


def _code(builder, x, t, ty):
    """Codegen: the codes from the value bits ``x`` and the entries ``t`` (code | threshold
    << 8) rebuilt from the two reads."""
    c = q8._const
    flip = builder.and_(builder.sub(c(ty, 0), builder.lshr(x, c(ty, 31))), c(ty, 0xFFFF))
    key = builder.xor(builder.and_(x, c(ty, 0xFFFF)), flip)
    up = builder.zext(builder.icmp_unsigned(">", key, builder.lshr(t, c(ty, 8))), ty)
    inf = builder.zext(builder.icmp_unsigned("==", x, c(ty, 0x7F800000)), ty)
    return builder.add(builder.add(builder.and_(t, c(ty, 0xFF)), up), inf)


@intrinsic
def table_encode16(typingctx, xb, table, k, codes, lo):
    """``quant8.table_encode`` with the 16-bit table."""
    def codegen(context, builder, sig, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        x_data, t_data, c_data = (context.make_array(sig.args[q])(context, builder, args[q])
                                  .data for q in (0, 1, 3))
        k = context.cast(builder, args[2], sig.args[2], types.int64)
        c_data = builder.gep(c_data, [context.cast(builder, args[4], sig.args[4], types.int64)])
        small = builder.gep(t_data, [ir.Constant(i64, 1 << 16)])

        def entry(x):
            cell = builder.zext(builder.lshr(x, q8._const(i32, 16)), i64)
            e = builder.zext(builder.load(builder.gep(t_data, [cell])), i32)
            at = builder.zext(builder.lshr(e, q8._const(i32, 8)), i64)
            t = builder.zext(builder.load(builder.gep(small, [at])), i32)
            return builder.or_(builder.and_(e, q8._const(i32, 0xFF)),
                               builder.shl(t, q8._const(i32, 8)))

        q8.encode_loop(builder, x_data, c_data, k, entry, _code)
        return context.get_dummy_value()
    return types.none(xb, table, k, codes, lo), codegen


@njit(error_model="numpy", inline="always")
def quantize_block_16(w, k, codes, lo, table, xf, xb):
    """``quant8.quantize_block_t`` with the 16-bit table."""
    scale = q8.abs_max32(w, k)
    inv = q8._inverse(scale, np.float32(1))
    for j in range(k):
        xf[j] = w[j] * inv
    table_encode16(xb, table, k, codes, lo)
    return scale


@njit(error_model="numpy")
def encode16(xb, table, codes):
    table_encode16(xb, table, xb.shape[0], codes, 0)


def check():
    for m in (Q.SIGNED, Q.UNSIGNED):
        t16 = table16(m)
        bad = 0
        for hi in range(0, 1 << 32, 1 << 26):
            xb = np.arange(hi, hi + (1 << 26) + 3, dtype=np.uint64).astype(np.uint32)
            a, b = np.empty(xb.size, np.uint8), np.empty(xb.size, np.uint8)
            q8.encode_bits(xb, m.table, a)
            encode16(xb, t16, b)
            bad += int(np.count_nonzero(a != b))
        print(f"{m}: {bad} codes differ from the product's")


def bench(names=("adam", "rmsprop", "momentum"), n=10_000_000, rounds=40):
    for name in names:
        spec = registry.get(name)
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n).astype(np.float32)
        g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
        make, call_args = captured_driver(spec, spec.buffers_cls.zeros(p, g, state_dtype="int8"))
        body, n_arrays, quantized, parallel, copy, table = make
        src = q8._source(n_arrays, quantized, parallel, copy=copy, table=table)
        scope = dict(np=np, prange=q8.prange, dequantize_block=q8.dequantize_block,
                     quantize_block=q8.quantize_block, body=body, copy_block=q8.copy_block)
        drivers = [q8.compile_generated(src.replace("q8_driver", f"q8_driver{k}"),
                                        f"q8_driver{k}", dict(scope, quantize_block_t=fn),
                                        parallel, (body,))
                   for k, fn in ((32, q8.quantize_block_t), (16, quantize_block_16))]
        swap = {id(Q.SIGNED.table): table16(Q.SIGNED), id(Q.UNSIGNED.table): table16(Q.UNSIGNED)}
        args = [[a.copy() if isinstance(a, np.ndarray) else a for a in call_args],
                [swap.get(id(a), a.copy() if isinstance(a, np.ndarray) else a)
                 for a in call_args]]
        for drv, a in zip(drivers, args):
            drv(*a)
        same = all(np.array_equal(x, y) for x, y in zip(*args)
                   if isinstance(x, np.ndarray) and x.dtype == y.dtype)
        t = interleaved_rounds([lambda d=d, a=a: d(*a) for d, a in zip(drivers, args)], 0,
                               rounds)
        print(f"{name}: same bits {same}; 32-bit table {np.median(t[0]) * 1e3:.2f} ms, 16-bit "
              f"{np.median(t[1]) * 1e3:.2f} ms ({round_ratio(t[0], t[1]):.3f}x as fast)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        check()
    else:
        bench(*([tuple(sys.argv[2:])] if sys.argv[2:] else []))
