"""GPU probe (written for a device session): would the 8-bit Adam step gain from a
thread taking 4 *neighbouring* elements (its 4 codes of each state in one 32-bit word, its
parameters and gradients in two 64-bit words each) instead of 4 elements strided by the thread
count (byte-wide code accesses, as ``kernels.quant8.cuda_source`` does), and from the map's
value and midpoint tables in shared memory? Hand kernels, Adam with default options on float32
parameters, blocks of 256 (64 threads), the record's own per-element function and the
product's quantization arithmetic, so each must give the product kernel's bits (checked after
one step from the same start); then GPU time per step against the product kernel and float32
state.

    python bench/gpu_probes/q8_words.py         (from the repository root; a CUDA GPU, torch)
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_probes/q8_words.py    (bits only, 2 blocks)

The sizes are multiples of 256 (the hand kernels have no partial block).

Run on an H200 on 2026-11-27: bit-equal; 1e7 72.9 us (global tables) / 74.7 (shared) / 123.8
(the strided product) / 71.1 (float32 state), 1e8 667.4 / 637.7 / 1168.6 / 694.0 us. The
product now has the word layout with tables in global memory (``config.CUDA_8BIT_WORDS``).
"""
import math
import os
import sys

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, uint32, uint64

import fastopt
from fastopt import quantization, registry
from fastopt.kernels import cuda as ck
from fastopt.kernels import quant8

SIM = numba_config.ENABLE_CUDASIM
SPEC = registry.get("adam")
HP = SPEC.validate(dict(SPEC.defaults))
OPTIONS = SPEC.options(HP, 2)
assert not any(OPTIONS.values()), OPTIONS           # the kernels below pass False for each
LO, HI, PACK, _ = ck._pair_helpers()
AS_UINT = quant8.sim_as_uint if SIM else quant8.as_uint
FROM_UINT = quant8.sim_from_uint if SIM else quant8.from_uint
ELEM = ck._elem_device(SPEC.kernel, False)
MAG = np.uint32(0x7FFFFFFF)
THREADS = 64                    # a block of 256 elements, 4 per thread
TABLE = quantization.SIGNED.mid.shape[0]
assert TABLE == quantization.UNSIGNED.mid.shape[0]


def _device(fn):
    return cuda.jit(device=True)(fn)


@_device
def _decode(word, k, values, scale):
    return values[(word >> uint32(8 * k)) & uint32(255)] * scale


@_device
def _encode(x, inv, first, mid):
    y = x * inv
    code = uint32(first[AS_UINT(float32(y)) >> uint32(16)])
    if mid[code] < y:
        code += uint32(1)
    return code


@_device
def _scale_inv(scale):
    sq = float32(scale)
    inv = float32(1) / sq if sq != 0 else sq
    if math.isinf(inv):
        inv = sq - sq
    return inv


def make_blocks(encode):
    """The grid-stride loop over quantization blocks with ``encode(x, inv, first, mid)`` as
    the per-value encoder (``first``: whatever table that encoder reads)."""
    @_device
    def block(b, tid, pw, gw, cm, sm, vm, fm, dm, cv, sv, vv, fv, dv, sc, sh, row, nxt):
        """Quantization block ``b``: thread ``tid`` steps elements ``256 b + 4 tid .. + 3``."""
        w0 = uint64(128) * uint64(b) + uint64(2 * tid)        # (unsigned: no wraparound checks)
        c = uint64(64) * uint64(b) + uint64(tid)
        w1 = w0 + uint64(1)
        pa, pb, ga, gb = pw[w0], pw[w1], gw[w0], gw[w1]
        wm, wv = cm[c], cv[c]
        s_m, s_v = sm[b], sv[b]
        p0, m0, v0, _ = ELEM(LO(pa), LO(ga), _decode(wm, 0, vm, s_m), _decode(wv, 0, vv, s_v),
                             float32(0), sc, False, False, False, False, False)
        p1, m1, v1, _ = ELEM(HI(pa), HI(ga), _decode(wm, 1, vm, s_m), _decode(wv, 1, vv, s_v),
                             float32(0), sc, False, False, False, False, False)
        p2, m2, v2, _ = ELEM(LO(pb), LO(gb), _decode(wm, 2, vm, s_m), _decode(wv, 2, vv, s_v),
                             float32(0), sc, False, False, False, False, False)
        p3, m3, v3, _ = ELEM(HI(pb), HI(gb), _decode(wm, 3, vm, s_m), _decode(wv, 3, vv, s_v),
                             float32(0), sc, False, False, False, False, False)
        pw[w0] = PACK(p0, p1)
        pw[w1] = PACK(p2, p3)
        am = max(max(AS_UINT(m0) & MAG, AS_UINT(m1) & MAG), max(AS_UINT(m2) & MAG,
                                                                AS_UINT(m3) & MAG))
        av = max(max(AS_UINT(v0) & MAG, AS_UINT(v1) & MAG), max(AS_UINT(v2) & MAG,
                                                                AS_UINT(v3) & MAG))
        cuda.atomic.max(sh, row, am)
        cuda.atomic.max(sh, row + 1, av)
        if tid == 0:
            sh[nxt] = uint32(0)
            sh[nxt + 1] = uint32(0)
        cuda.syncthreads()
        scale_m = float32(FROM_UINT(sh[row], float32(0)))
        scale_v = float32(FROM_UINT(sh[row + 1], float32(0)))
        if tid == 0:
            sm[b] = scale_m
            sv[b] = scale_v
        inv = _scale_inv(scale_m)
        cm[c] = (encode(m0, inv, fm, dm) | (encode(m1, inv, fm, dm) << uint32(8))
                 | (encode(m2, inv, fm, dm) << uint32(16))
                 | (encode(m3, inv, fm, dm) << uint32(24)))
        inv = _scale_inv(scale_v)
        cv[c] = (encode(v0, inv, fv, dv) | (encode(v1, inv, fv, dv) << uint32(8))
                 | (encode(v2, inv, fv, dv) << uint32(16))
                 | (encode(v3, inv, fv, dv) << uint32(24)))

    @_device
    def blocks(pw, gw, cm, sm, vm, fm, dm, cv, sv, vv, fv, dv, sc):
        """The block's quantization blocks (grid-stride), the absmax rows cleared first."""
        tid = cuda.threadIdx.x
        sh = cuda.shared.array(6, uint32)
        if tid == 0:
            for k in range(6):
                sh[k] = uint32(0)
        cuda.syncthreads()
        row = 0
        for b in range(cuda.blockIdx.x, sm.shape[0], cuda.gridDim.x):
            nxt = row + 2 if row < 4 else 0
            block(b, tid, pw, gw, cm, sm, vm, fm, dm, cv, sv, vv, fv, dv, sc, sh, row, nxt)
            row = nxt
    return blocks


_blocks = make_blocks(_encode)


def _jit(fn):
    return cuda.jit(fn) if SIM else cuda.jit(fn, lto=False, launch_bounds=(THREADS, 16))


@_jit
def words_global(pw, gw, cm, sm, vm, fm, dm, cv, sv, vv, fv, dv, sc):
    """Neighbouring elements, the map tables read from global memory."""
    _blocks(pw, gw, cm, sm, vm, fm, dm, cv, sv, vv, fv, dv, sc)


@_device
def fill(dst, src):
    """Copy ``src`` to ``dst``, the block's threads side by side (the caller's barrier
    follows)."""
    for k in range(cuda.threadIdx.x, src.shape[0], cuda.blockDim.x):
        dst[k] = src[k]


@_jit
def words_shared(pw, gw, cm, sm, vm, fm, dm, cv, sv, vv, fv, dv, sc):
    """Neighbouring elements, the value and midpoint tables copied to shared memory."""
    tvm = cuda.shared.array(256, float32)
    tvv = cuda.shared.array(256, float32)
    tdm = cuda.shared.array(TABLE, float32)
    tdv = cuda.shared.array(TABLE, float32)
    fill(tvm, vm)
    fill(tvv, vv)
    fill(tdm, dm)
    fill(tdv, dv)
    _blocks(pw, gw, cm, sm, tvm, fm, tdm, cv, sv, tvv, fv, tdv, sc)   # (its barrier first)


def _tables(name):
    qm = quantization.qmap_for(SPEC.kernel, name)
    return (cuda.to_device(qm.values.astype(np.float32)), cuda.to_device(qm.first),
            cuda.to_device(qm.mid.astype(np.float32)))


def _args(b, tables=_tables):
    """The hand kernels' arguments over device buffers ``b`` (their arrays as words), each
    state's map tables from ``tables(state name)``."""
    a = b.arrays()
    return (a["param"].view(np.uint64), a["grad"].view(np.uint64),
            a["exp_avg"].view(np.uint32), b.state_absmax["exp_avg"], *tables("exp_avg"),
            a["exp_avg_sq"].view(np.uint32), b.state_absmax["exp_avg_sq"],
            *tables("exp_avg_sq"), tuple(SPEC.kernel_scalars(HP, 1, np.float32)))


def host_bits(b):
    """Device buffers ``b``'s arrays (and 8-bit scales) on the host."""
    out = {k: np.asarray(v.copy_to_host()) for k, v in b.arrays().items() if v.size}
    out.update({"scale " + k: np.asarray(v.copy_to_host())
                for k, v in (getattr(b, "state_absmax", None) or {}).items()})
    return out


def same_bits(want, got):
    return all(np.array_equal(want[k].view(np.uint8), got[k].view(np.uint8)) for k in want)


def gpu_timer():
    """``bench/gpu_report.py``'s GPU time per call (torch's events; the device's name printed),
    or None under the simulator."""
    if SIM:
        return None
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import torch
    from gpu_report import gpu_time
    print(torch.cuda.get_device_name(), flush=True)
    return gpu_time


def against_products(gpu_time, rows, label, host, p, g):
    """Add the product step on ``host``'s buffers (``label``) and on float32 state to
    ``rows`` (GPU time per step) and print them all relative to float32 state."""
    n = p.shape[0]
    prod = fastopt.to_device(host)
    rows[label] = gpu_time(lambda: fastopt.adam_step(prod), 20)
    f32 = fastopt.to_device(fastopt.AdamBuffers.zeros(p, g))
    rows["float32 state"] = gpu_time(lambda: fastopt.adam_step(f32), 20)
    base = rows["float32 state"]
    for k, t in rows.items():
        print(f"n={n:>11} {k:16s} {t * 1e6:9.1f} us ({base / t:.2f}x float32 state)",
              flush=True)


def main(sizes, kernels=None):
    """Bits and GPU time of ``kernels`` (``(kernel, tables)`` pairs, ``tables`` as in
    :func:`_args`; by default this probe's two) against the product kernel."""
    kernels = kernels or ((words_global, _tables), (words_shared, _tables))
    grid_cap = 8 if SIM else 64 * cuda.get_current_device().MULTIPROCESSOR_COUNT
    gpu_time = gpu_timer()
    for n in sizes:
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n).astype(np.float32)
        g = rng.standard_normal(n).astype(np.float32)
        host = fastopt.AdamBuffers.zeros(p, g, state_dtype="int8", min_8bit_size=0)
        # one nonzero step first, so that the step under test decodes nonzero codes
        fastopt.adam_step(host)
        host.step = 0
        ref = fastopt.to_device(host)
        fastopt.adam_step(ref)
        want = host_bits(ref)
        grid = min(grid_cap, n // 256)
        rows = {}
        for kernel, tables in kernels:
            b = fastopt.to_device(host)
            args = _args(b, tables)
            with ck.exact():        # (compiled as fastopt's kernels are: no contraction)
                kernel[grid, THREADS](*args)
            print(f"n={n}: {kernel.__name__}: the product kernel's bits: "
                  f"{same_bits(want, host_bits(b))}", flush=True)
            if gpu_time:
                rows[kernel.__name__] = gpu_time(lambda: kernel[grid, THREADS](*args), 20)
        if gpu_time:
            against_products(gpu_time, rows, "product kernel", host, p, g)


if __name__ == "__main__":
    main([512] if SIM else [256 * 39_062, 256 * 390_625])
