"""CPU probe: where the bfloat16 Adam step's time goes at 1e7 (2 threads, parallel kernels).

Times, interleaved (medians of per-round ratios against fastopt's float32-state step), the
product's float32- and bfloat16-state Adam steps and hand kernels of the same loop shape (a
``prange`` over the elements, float32 parameters, bfloat16 moments) with parts taken away:

* ``full``: the product's math and rounding (nearest even, ``kernels.precision.f32_to_bf16``);
* ``truncate``: the same, the moments truncated to bfloat16 instead of rounded;
* ``no-division``: the rounding kept, ``m / (sqrt(v) * c + eps)`` replaced by ``m * v``;
* ``traffic``: the same bytes read and written, trivial arithmetic (the roofline of 20 bytes);
* ``blocks`` / ``blocks+prefetch``: ``full`` over blocks of 1024 elements, the second with
  software prefetches (``llvm.prefetch``) of every array ``PREFETCH`` elements ahead.

    python bench/cpu_probes/bf16_parts.py [n] [rounds]      (from the repository root)

The hand kernels' results are not checked: they are timing probes, not products.
"""
import sys

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

import fastopt
from fastopt import _threads
from fastopt._step import step
from fastopt.adam import SPEC
from fastopt.benchmarks import interleaved_rounds
from fastopt.kernels.precision import _f32_as_u32, bf16_to_f32, f32_to_bf16

PREFETCH = 8192
BLOCK = 1024


def _prefetch(write):
    @intrinsic
    def prefetch(typingctx, arr, idx):
        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
            builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), i8p),
                              ir.Constant(i32, int(write)), ir.Constant(i32, 3),
                              ir.Constant(i32, 1)])
            return context.get_dummy_value()
        return types.none(arr, idx), codegen
    return prefetch


prefetch_r, prefetch_w = _prefetch(False), _prefetch(True)


def elementwise(mode):
    @njit(parallel=True, error_model="numpy")
    def kernel(p, g, m, v, c):
        c0, c1, c2, c3, c4, c5, c6 = c[0], c[1], c[2], c[3], c[4], c[5], c[6]
        for i in prange(p.shape[0]):
            gi = g[i]
            if mode == "traffic":
                p[i] = p[i] + gi * c6
                m[i] = m[i] ^ np.uint16(1)
                v[i] = v[i] ^ np.uint16(1)
                continue
            mn = c0 * bf16_to_f32(m[i]) + c1 * gi
            vn = c2 * bf16_to_f32(v[i]) + c3 * (gi * gi)
            if mode == "no-division":
                p[i] = p[i] - c6 * (mn * vn)
            else:
                p[i] = p[i] - c6 * (mn / (np.sqrt(vn) * c4 + c5))
            if mode == "truncate":
                m[i] = np.uint16(_f32_as_u32(mn) >> np.uint32(16))
                v[i] = np.uint16(_f32_as_u32(vn) >> np.uint32(16))
            else:
                m[i] = f32_to_bf16(mn)
                v[i] = f32_to_bf16(vn)
    return kernel


@njit(error_model="numpy", inline="always")
def _block(p, g, m, v, c0, c1, c2, c3, c4, c5, c6):
    for i in range(p.shape[0]):
        gi = g[i]
        mn = c0 * bf16_to_f32(m[i]) + c1 * gi
        vn = c2 * bf16_to_f32(v[i]) + c3 * (gi * gi)
        p[i] = p[i] - c6 * (mn / (np.sqrt(vn) * c4 + c5))
        m[i] = f32_to_bf16(mn)
        v[i] = f32_to_bf16(vn)


def blocked(prefetch):
    @njit(parallel=True, error_model="numpy")
    def kernel(p, g, m, v, c):
        c0, c1, c2, c3, c4, c5, c6 = c[0], c[1], c[2], c[3], c[4], c[5], c[6]
        n = p.shape[0]
        for b in prange((n + BLOCK - 1) // BLOCK):
            lo = b * BLOCK
            hi = min(lo + BLOCK, n)
            if prefetch:
                j = lo + PREFETCH
                while j < min(hi + PREFETCH, n):      # one per 64-byte line of every array
                    prefetch_w(p, j)
                    prefetch_r(g, j)
                    if j % 32 == 0:
                        prefetch_w(m, j)
                        prefetch_w(v, j)
                    j += 16
            _block(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], c0, c1, c2, c3, c4, c5, c6)
    return kernel


def main(n=10_000_000, rounds=30):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    b32 = fastopt.AdamBuffers.zeros(p.copy(), g)
    b16 = fastopt.AdamBuffers.zeros(p.copy(), g, state_dtype="bfloat16")
    _threads.ensure_pool()
    c = np.array([0.9, 0.1, 0.999, 0.001, 1.0, 1e-8, 1e-3], np.float32)
    fns = {"fastopt, float32 state": lambda: step(SPEC, b32, lr=1e-3, parallel=True),
           "fastopt, bfloat16 state": lambda: step(SPEC, b16, lr=1e-3, parallel=True)}
    kernels = {m: elementwise(m) for m in ("full", "truncate", "no-division", "traffic")}
    kernels.update({"blocks": blocked(False), "blocks+prefetch": blocked(True)})
    for name, k in kernels.items():
        arrays = [p.copy(), g.copy(), np.zeros(n, np.uint16), np.zeros(n, np.uint16)]
        fns[name] = (lambda k=k, a=arrays: k(*a, c))
    for f in fns.values():
        f()
    times = {k: np.array(t) for k, t in zip(fns, interleaved_rounds(list(fns.values()), 0,
                                                                     rounds))}
    base = times["fastopt, float32 state"]
    for name, t in times.items():
        r = base / t
        print(f"{name:24s} {np.median(t) * 1e3:6.2f} ms   {np.median(r):.3f}x the float32 "
              f"step's speed (quartiles {np.percentile(r, 25):.3f}-{np.percentile(r, 75):.3f})")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
