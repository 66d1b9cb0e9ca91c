"""GPU probe (written for a device session): would Adam with bfloat16 state (nearest
rounding) reach the issue's 1.3x over float32 state on the GPU (two elements per access gave
1.24x at 1e8 on an H200) with four neighbouring elements per thread: its parameters and
gradients in two 64-bit words each, its first and second moments in one 64-bit word each (four
bfloat16)? A hand kernel with the record's own per-element function and fastopt's rounding, so
it must give the product kernel's bits (checked after one step from the same start); then GPU
time per step against the product kernel (two elements per access) and float32 state.

    python bench/gpu_probes/bf16_quads.py          (from the repository root; a CUDA GPU, torch)
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_probes/bf16_quads.py     (bits only)

The sizes are multiples of 4 (the kernel has no partial word).

Run on an H200 on 2026-11-27: bit-equal; 1e7 53.2 us (quads) / 60.4 (pairs) / 71.3 (float32
state), 1e8 489.5 / 557.8 / 694.2 us. The product now has this layout (``config.CUDA_QUADS``).
"""
import os
import sys

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, uint32, uint64

import fastopt
from fastopt import registry
from fastopt.kernels import cuda as ck
from fastopt.kernels import quant8

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q8_words import against_products, gpu_timer, host_bits, same_bits  # noqa: E402

SIM = numba_config.ENABLE_CUDASIM
SPEC = registry.get("adam")
HP = SPEC.validate(dict(SPEC.defaults))
assert not any(SPEC.options(HP, 2).values())        # the kernel passes False for each
LO, HI, PACK, PACK16 = ck._pair_helpers()
FROM_UINT = quant8.sim_from_uint if SIM else quant8.from_uint
ELEM = ck._elem_device(SPEC.kernel, False)


def _device(fn):
    return fn if SIM else cuda.jit(device=True)(fn)


@_device
def _bf16(word, k):
    """Element ``k`` of a word of four bfloat16, as float32 (exact)."""
    bits = uint32((word >> uint64(16 * k)) & uint64(0xFFFF)) << uint32(16)
    return float32(FROM_UINT(bits, float32(0)))


@_device
def _four(a, b, c, d):
    """Four float32 rounded to nearest-even bfloat16, packed into a 64-bit word."""
    return uint64(PACK16(a, b)) | (uint64(PACK16(c, d)) << uint64(32))


def _jit(fn):
    return cuda.jit(fn) if SIM else cuda.jit(fn, lto=False)


@_jit
def quads(pw, gw, mw, vw, sc):
    """Grid-stride over words of four: thread takes elements ``4q .. 4q + 3``."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for q in range(start, mw.shape[0], stride):
        w0 = uint64(2) * uint64(q)
        w1 = w0 + uint64(1)
        pa, pb, ga, gb, wm, wv = pw[w0], pw[w1], gw[w0], gw[w1], mw[q], vw[q]
        p0, m0, v0, _ = ELEM(LO(pa), LO(ga), _bf16(wm, 0), _bf16(wv, 0), float32(0), sc,
                             False, False, False, False, False)
        p1, m1, v1, _ = ELEM(HI(pa), HI(ga), _bf16(wm, 1), _bf16(wv, 1), float32(0), sc,
                             False, False, False, False, False)
        p2, m2, v2, _ = ELEM(LO(pb), LO(gb), _bf16(wm, 2), _bf16(wv, 2), float32(0), sc,
                             False, False, False, False, False)
        p3, m3, v3, _ = ELEM(HI(pb), HI(gb), _bf16(wm, 3), _bf16(wv, 3), float32(0), sc,
                             False, False, False, False, False)
        pw[w0] = PACK(p0, p1)
        pw[w1] = PACK(p2, p3)
        mw[q] = _four(m0, m1, m2, m3)
        vw[q] = _four(v0, v1, v2, v3)


def _args(b):
    a = b.arrays()
    return (a["param"].view(np.uint64), a["grad"].view(np.uint64),
            a["exp_avg"].view(np.uint64), a["exp_avg_sq"].view(np.uint64),
            tuple(SPEC.kernel_scalars(HP, 1, np.float32)))


def main(sizes):
    gpu_time = gpu_timer()
    for n in sizes:
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n).astype(np.float32)
        g = rng.standard_normal(n).astype(np.float32)
        host = fastopt.AdamBuffers.zeros(p, g, state_dtype="bfloat16")
        fastopt.adam_step(host)             # nonzero state for the step under test
        host.step = 0
        ref = fastopt.to_device(host)
        fastopt.adam_step(ref)
        want = host_bits(ref)
        b = fastopt.to_device(host)
        args = _args(b)
        threads = 256
        blocks = min(-(-(n // 4) // threads),
                     8 if SIM else 64 * cuda.get_current_device().MULTIPROCESSOR_COUNT)
        with ck.exact():            # (compiled as fastopt's kernels are: no contraction)
            quads[blocks, threads](*args)
        print(f"n={n}: quads: the product kernel's bits: {same_bits(want, host_bits(b))}",
              flush=True)
        if gpu_time:
            rows = {"quads": gpu_time(lambda: quads[blocks, threads](*args), 20)}
            against_products(gpu_time, rows, "product (pairs)", host, p, g)


if __name__ == "__main__":
    main([1000] if SIM else [10_000_000, 100_000_000])
