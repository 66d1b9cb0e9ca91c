"""CPU probe: the kernels' bfloat16 rounding (``kernels.precision.f32_to_bf16``, nearest, ties
to even) against the NumPy reference's (``fastopt.precision.to_bfloat16``) for every one of
the 2**32 float32 bit patterns, in chunks of 2**24 (81 s on the 2-core Zen 3 VM).
``exhaustive`` is the loop, shared with ``f16_rounding_check.py``.

    python bench/cpu_probes/bf16_rounding_check.py      (from the repository root)
"""
import time

import numpy as np
from numba import njit

from fastopt import precision
from fastopt.kernels.precision import f32_to_bf16


@njit(error_model="numpy")
def _round(x, out):
    for i in range(x.shape[0]):
        out[i] = f32_to_bf16(x[i])


def exhaustive(convert, mismatches, chunk_bits=24):
    """``convert(x, out)`` (a compiled loop writing ``uint16`` bits) for every float32 bit
    pattern, chunk by chunk; ``mismatches(u, x, out)`` counts the wrong results of a chunk
    (``u`` its bits, ``x`` its values). Prints and returns the total."""
    t0 = time.time()
    chunk = 1 << chunk_bits
    out = np.empty(chunk, np.uint16)
    bad = 0
    with np.errstate(all="ignore"):
        for c in range(1 << (32 - chunk_bits)):
            u = np.arange(c * chunk, (c + 1) * chunk, dtype=np.uint64).astype(np.uint32)
            x = u.view(np.float32)
            convert(x, out)
            bad += mismatches(u, x, out)
    print(f"all 2**32 float32: {bad} mismatches ({time.time() - t0:.0f} s)")
    return bad


def main():
    return exhaustive(_round, lambda u, x, out: int(np.count_nonzero(
        out != precision.to_bfloat16(x))))


if __name__ == "__main__":
    raise SystemExit(1 if main() else 0)
