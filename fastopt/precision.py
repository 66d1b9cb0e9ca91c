"""Optimizer state precision: bfloat16 state as ``uint16`` bit patterns.

``Buffers.zeros(param, grad, state_dtype="bfloat16")`` allocates the state as bfloat16 bits
(half the bytes of float32 state); every step then reads each state value as float32 (exact),
updates it in float32 and writes it back rounded to the nearest bfloat16, ties to even, in the
same pass (``kernels/precision.py``). The NumPy reference does the same with whole arrays:
decode, run the float32 reference, encode (:func:`numpy_step`), so the CPU kernels stay bitwise
equal to it.

Example:
    >>> import numpy as np
    >>> bits = to_bfloat16(np.array([1.0, 1.00390625, 1.01171875, -np.inf], np.float32))
    >>> bits                       # 1 + 2**-8 is a tie: to even (1.0); 1 + 3 * 2**-8 -> up
    array([16256, 16256, 16258, 65408], dtype=uint16)
    >>> from_bfloat16(bits)
    array([1.      , 1.      , 1.015625,     -inf], dtype=float32)
"""
import numpy as np

STATE_DTYPES = ("float32", "float64", "bfloat16")
BITS = np.dtype(np.uint16)          # how bfloat16 state is stored


def to_bfloat16(x):
    """float32 values (any shape) rounded to the nearest bfloat16, ties to even, as ``uint16``
    bit patterns. NaN stays NaN (made quiet, sign kept); values beyond the largest bfloat16
    round to inf, as IEEE rounding does."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"to_bfloat16 takes float32 values, got {x.dtype} (round float64 to "
                        f"float32 first, deliberately)")
    u = x.view(np.uint32).astype(np.uint64)
    out = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def from_bfloat16(bits):
    """The float32 values of bfloat16 bit patterns (``uint16``, any shape); exact."""
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        raise TypeError(f"from_bfloat16 takes uint16 bit patterns, got {bits.dtype}")
    return (bits.astype(np.uint32) << 16).view(np.float32)


def is_bfloat16(a):
    """Whether a host state array holds bfloat16 bits."""
    return isinstance(a, np.ndarray) and a.dtype == BITS


def numpy_step(reference, arrays, *args):
    """Run a NumPy reference on ``arrays`` whose bfloat16 state arrays are decoded to float32
    first and encoded back after (only those; the others are updated in place as usual)."""
    packed = {k: a for k, a in arrays.items() if is_bfloat16(a)}
    if not packed:
        return reference(arrays, *args)
    work = dict(arrays)
    work.update((k, from_bfloat16(a)) for k, a in packed.items())
    reference(work, *args)
    for k, a in packed.items():
        a[...] = to_bfloat16(work[k])
