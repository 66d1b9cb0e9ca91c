"""GPU probe (written for a device session, not yet run on a GPU): does the 8-bit Adam step
gain from the encoder's ``first`` table in shared memory too? ``bench/gpu_probes/q8_words.py``
moved the map's value and midpoint tables (1 KB each) to shared memory and gained 4% at 1e8
(638 vs 667 us on an H200); the ``first`` table (65,536 bytes per map, indexed by a value's top
16 bits) stayed in global memory, where the 32 lanes of a warp read 32 scattered bytes per
lookup, twice per element (two states).

A value the encoder sees is ``x / absmax`` of its block, so ``|x| <= 1`` (one rounding above
at most) or NaN: of the 65,536 cells only those of magnitudes in ``[2**-22, 1]`` (exponent and
7 mantissa bits ``E_LO .. E_HI``) tell codes apart. The compressed table keeps, per sign, one
entry for all cells below ``E_LO`` (the entry of cell 0: the comparison with the first
midpoint then gives the same code as the full table), the cells ``E_LO .. E_HI``, and one
entry for every cell above (their NaNs take code 0, as in the full table): 2 x 2818 bytes per
map. :func:`check_compressed` compares both tables' codes for every float32 of magnitude
<= ``1 + 2**-7`` and for NaNs (CPU, Numba, seconds); the kernel is then checked against the
product's bits as in ``q8_words.py`` and timed against it, float32 state and the probe's two
earlier kernels.

    python bench/gpu_probes/q8_first_shared.py     (from the repository root; a CUDA GPU, torch)
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_probes/q8_first_shared.py   (bits only, 2 blocks)
    python bench/gpu_probes/q8_first_shared.py --check     (the table check alone, no GPU)

Without a GPU (2026-11-27): the check passes for both maps (and reports a corrupted entry);
in the simulator the kernel gives the product kernel's bits (512 elements); the encoder
compiled to PTX (sm_90) with no float64 instruction while its index formula was written in it;
that formula, now one function (:func:`index`) shared with the CPU check, compiles so too. Its
speed is unknown until a device session.
"""
import os
import sys

import numpy as np
from numba import cuda, float32, njit, prange, uint8, uint32

from fastopt import quantization
from fastopt.kernels.precision import _u32_as_f32

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import q8_words as W  # noqa: E402

E_HI = 0x3F80                      # the cell of 1.0 (magnitudes in [1, 1 + 2**-7))
E_LO = (127 - 22) << 7             # the cell of 2**-22 (below the maps' first midpoints)
SPAN = E_HI - E_LO + 2             # entries per sign: below E_LO, E_LO .. E_HI, above E_HI
SMALL = 2 * SPAN                   # entries of a compressed table (both signs)
TABLE = W.TABLE                    # midpoints (a global constant: a shared array's size)


def compressed_first(qmap):
    """The compressed ``first`` table of ``qmap`` (uint8, ``SMALL`` entries)."""
    out = np.empty(SMALL, np.uint8)
    for sign in (0, 1):
        base = sign << 15
        row = out[sign * SPAN:(sign + 1) * SPAN]
        row[0] = qmap.first[base]                               # cell 0 stands for all below
        row[1:SPAN - 1] = qmap.first[base + E_LO + 1:base + E_HI + 1]
        row[SPAN - 1] = qmap.first[base | 0x7FC0]               # a NaN cell: code 0
    return out


def index(cell):
    """The compressed table's entry for a value's cell (its float32 bits' top 16), the one
    formula of the CPU check (:func:`_index`) and the kernel's encoder."""
    sign = cell >> np.uint32(15)
    em = cell & np.uint32(0x7FFF)
    if em > np.uint32(E_HI):
        t = np.uint32(SPAN - 1)
    elif em <= np.uint32(E_LO):
        t = np.uint32(0)
    else:
        t = em - np.uint32(E_LO)
    return sign * np.uint32(SPAN) + t


_index = njit(inline="always", error_model="numpy")(index)
_index_device = W._device(index)


@njit(parallel=True, error_model="numpy")
def _mismatches(first, small, mid):
    """Bit patterns (magnitude <= 1 + 2**-7, both signs, and every NaN) whose code differs
    between the full and the compressed table (-1 in a slot: none in that run)."""
    limit = np.uint32(0x3F810000)                  # magnitudes below 1 + 2**-7
    runs = 64
    per = (limit + runs - 1) // runs
    bad = np.full(2 * runs + 2, -1, np.int64)
    for r in prange(2 * runs + 2):
        if r < 2 * runs:
            sign = np.uint32(r // runs) << np.uint32(31)
            lo = np.uint32(r % runs) * np.uint32(per)
            hi = min(limit, lo + np.uint32(per))
        else:                                      # the NaNs of this sign
            sign = np.uint32(r - 2 * runs) << np.uint32(31)
            lo = np.uint32(0x7F800001)
            hi = np.uint32(0x80000000)
        for u in range(lo, hi):
            bits = sign | np.uint32(u)
            x = _u32_as_f32(bits)
            cell = bits >> np.uint32(16)
            a = np.int64(first[cell])
            a += mid[a] < x
            b = np.int64(small[_index(cell)])
            b += mid[b] < x
            if a != b:
                bad[r] = bits
                break
    return bad


def check_compressed():
    """Whether the compressed tables give the full tables' codes (both maps); prints."""
    ok = True
    for name, qmap in (("signed", quantization.SIGNED), ("unsigned", quantization.UNSIGNED)):
        bad = _mismatches(qmap.first, compressed_first(qmap), qmap.mid.astype(np.float32))
        found = bad[bad >= 0]
        print(f"{name} map: compressed first table ({SMALL} bytes) gives the full table's "
              f"codes: {found.size == 0}" + (f" (first mismatch: 0x{found[0]:08x})"
                                             if found.size else ""), flush=True)
        ok &= found.size == 0
    return ok


@W._device
def _encode_compressed(x, inv, small, mid):
    y = x * inv
    code = uint32(small[_index_device(W.AS_UINT(float32(y)) >> uint32(16))])
    if mid[code] < y:
        code += uint32(1)
    return code


_blocks = W.make_blocks(_encode_compressed)


@W._jit
def words_first_shared(pw, gw, cm, sm, vm, fm, dm, cv, sv, vv, fv, dv, sc):
    """Neighbouring elements; value, midpoint and compressed first tables in shared memory."""
    tvm = cuda.shared.array(256, float32)
    tvv = cuda.shared.array(256, float32)
    tdm = cuda.shared.array(TABLE, float32)
    tdv = cuda.shared.array(TABLE, float32)
    tfm = cuda.shared.array(SMALL, uint8)
    tfv = cuda.shared.array(SMALL, uint8)
    W.fill(tvm, vm)
    W.fill(tvv, vv)
    W.fill(tdm, dm)
    W.fill(tdv, dv)
    W.fill(tfm, fm)
    W.fill(tfv, fv)
    _blocks(pw, gw, cm, sm, tvm, tfm, tdm, cv, sv, tvv, tfv, tdv, sc)   # (its barrier first)


def _compressed_tables(name):
    values, _, mid = W._tables(name)
    qm = quantization.qmap_for(W.SPEC.kernel, name)
    return values, cuda.to_device(compressed_first(qm)), mid


if __name__ == "__main__":
    if not check_compressed():
        sys.exit(1)
    if "--check" not in sys.argv:
        W.main([512] if W.SIM else [256 * 39_062, 256 * 390_625],
               ((W.words_global, W._tables), (W.words_shared, W._tables),
                (words_first_shared, _compressed_tables)))
