"""CPU probe: the kernels' float16 rounding (``kernels.precision.f32_to_f16``, nearest, ties to
even, the float16 param copy) against NumPy's ``astype(np.float16)`` for every one of the 2**32
float32 bit patterns, in chunks of 2**24 (400 s on the 2-core Zen 3 VM): bit for bit, except
that a NaN must give a quiet NaN of the same sign (NumPy keeps a signalling NaN's payload as
it is).

    python bench/cpu_probes/f16_rounding_check.py      (from the repository root)
"""
import numpy as np
from bf16_rounding_check import exhaustive
from numba import njit

from fastopt.kernels.precision import f32_to_f16


@njit(error_model="numpy")
def _round(x, out):
    for i in range(x.shape[0]):
        out[i] = f32_to_f16(x[i])


def mismatches(u, x, out):
    nan = np.isnan(x)
    ref = x.astype(np.float16).view(np.uint16)
    got = out[nan]
    return (int(np.count_nonzero((out != ref) & ~nan))
            + int(np.count_nonzero(((got & 0x7E00) != 0x7E00) | ((got >> 15) != (u[nan] >> 31)))))


if __name__ == "__main__":
    raise SystemExit(1 if exhaustive(_round, mismatches) else 0)
