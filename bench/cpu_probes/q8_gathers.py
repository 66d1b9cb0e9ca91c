"""CPU probe (AVX-512 only): the 8-bit codecs' table reads as hardware gathers. The product's
decoder and encoder (``kernels/quant8.py``: ``table_decode``, ``table_encode``) read their
tables with eight scalar loads per vector; here the same arithmetic reads them with one
``vgatherdps`` / ``vpgatherdd`` of sixteen lanes (``llvm.x86.avx512.mask.gather.*.512``).
Checks that the results are the same bits, then prints ns per value on one thread, over
blocks of 256 values in L1 (16 blocks) and streamed (4096 blocks): decoding random codes
with the signed map, encoding the second moments of an Adam step scaled by their block's
absmax (the unsigned map's one-read table).

    python bench/cpu_probes/q8_gathers.py      (from the repository root)
"""
import time

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastopt import quantization as Q
from fastopt.kernels import quant8 as q8

W = 16


def _gather(builder, base, idx, ety):
    """Codegen: ``base[idx]`` for the sixteen 32-bit lanes of ``idx`` (one gather)."""
    i32, mask = ir.IntType(32), ir.VectorType(ir.IntType(1), W)
    vty = ir.VectorType(ety, W)
    ptr = builder.bitcast(base, ir.IntType(8).as_pointer())
    name = ("llvm.x86.avx512.mask.gather.dps.512" if isinstance(ety, ir.FloatType)
            else "llvm.x86.avx512.mask.gather.dpi.512")
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vty, ptr.type, ir.VectorType(i32, W), mask, i32]),
        name)
    return builder.call(fn, [ir.Constant(vty, ir.Undefined), ptr, idx,
                             ir.Constant(mask, [1] * W), ir.Constant(i32, 4)])


def _each16(builder, k, fn):
    """Codegen: ``fn(j)`` for j = 0, 16, ... below ``k`` (a multiple of 16 here)."""
    i64 = ir.IntType(64)
    with cgutils.for_range(builder, builder.sdiv(k, ir.Constant(i64, W))) as loop:
        fn(builder.mul(loop.index, ir.Constant(i64, W)))


@intrinsic
def gather_decode(typingctx, codes, k, values, scale, out):
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        vec = ir.VectorType(ir.FloatType(), W)
        c, v, o = (context.make_array(sig.args[q])(context, builder, args[q]).data
                   for q in (0, 2, 4))
        sv = ir.Constant(vec, ir.Undefined)
        for e in range(W):
            sv = builder.insert_element(sv, args[3], ir.Constant(i32, e))

        def step(j):
            cv = q8._load(builder, c, j, ir.VectorType(ir.IntType(8), W), 1)
            x = _gather(builder, v, builder.zext(cv, ir.VectorType(i32, W)), ir.FloatType())
            builder.store(builder.fmul(x, sv),
                          builder.bitcast(builder.gep(o, [j]), vec.as_pointer()), align=4)
        _each16(builder, args[1], step)
        return context.get_dummy_value()
    return types.none(codes, k, values, scale, out), codegen


@intrinsic
def gather_encode(typingctx, xb, table, k, codes):
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        vec, vec8 = ir.VectorType(i32, W), ir.VectorType(ir.IntType(8), W)
        x_data, t_data, c_data = (context.make_array(sig.args[q])(context, builder, args[q])
                                  .data for q in (0, 1, 3))

        def step(j):
            x = q8._load(builder, x_data, j, vec, 4)
            t = _gather(builder, t_data, builder.lshr(x, q8._const(vec, 16)), i32)
            builder.store(builder.trunc(q8._table_code(builder, x, t, vec), vec8),
                          builder.bitcast(builder.gep(c_data, [j]), vec8.as_pointer()),
                          align=1)
        _each16(builder, args[2], step)
        return context.get_dummy_value()
    return types.none(xb, table, k, codes), codegen


@njit(error_model="numpy")
def decode_scalar(codes, values, out, reps, nb):
    for _ in range(reps):
        for b in range(nb):
            q8.table_decode(codes, b * 256, 256, values, np.float32(0.5), out[b * 256:])


@njit(error_model="numpy")
def decode_gather(codes, values, out, reps, nb):
    for _ in range(reps):
        for b in range(nb):
            gather_decode(codes[b * 256:], 256, values, np.float32(0.5), out[b * 256:])


@njit(error_model="numpy")
def encode_scalar(xb, table, codes, reps, nb):
    for _ in range(reps):
        for b in range(nb):
            q8.table_encode(xb[b * 256:], table, 256, codes, b * 256)


@njit(error_model="numpy")
def encode_gather(xb, table, codes, reps, nb):
    for _ in range(reps):
        for b in range(nb):
            gather_encode(xb[b * 256:], table, 256, codes[b * 256:])


def main(n=1 << 20):
    ll.initialize_native_target()
    if not ll.get_host_cpu_features().get("avx512f"):
        print("this CPU has no AVX-512: nothing to measure")
        return
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, n).astype(np.uint8)
    values = Q.SIGNED.values.astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    v = (0.001 * g * g).reshape(-1, 256)
    xb = (v / v.max(1, keepdims=True)).astype(np.float32).ravel().view(np.uint32)
    table = Q.UNSIGNED.table
    cases = [("decode, scalar loads", decode_scalar, (codes, values), np.float32),
             ("decode, gather", decode_gather, (codes, values), np.float32),
             ("encode, scalar loads", encode_scalar, (xb, table), np.uint8),
             ("encode, gather", encode_gather, (xb, table), np.uint8)]
    outs = [np.empty(n, dt) for _, _, _, dt in cases]
    for (_, fn, args, _), out in zip(cases, outs):
        fn(*args, out, 1, n // 256)
    print("same bits:", np.array_equal(outs[0], outs[1]), np.array_equal(outs[2], outs[3]))
    for blocks, reps in ((16, 2000), (4096, 8)):
        cells = []
        for (label, fn, args, _), out in zip(cases, outs):
            t = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn(*args, out, reps, blocks)
                t.append(time.perf_counter() - t0)
            cells.append(f"{label} {min(t) / (reps * blocks * 256) * 1e9:.3f}")
        print(f"{blocks} blocks: " + "; ".join(cells) + " ns per value")


if __name__ == "__main__":
    main()
