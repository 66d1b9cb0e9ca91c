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


_M64 = (1 << 64) - 1


def splitmix64(x):
    """SplitMix64's output function on uint64 values (NumPy arrays or a Python int), with
    wrapping arithmetic: the counter-based hash of stochastic rounding."""
    if isinstance(x, int):
        z = (x + 0x9E3779B97F4A7C15) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return z ^ (z >> 31)
    with np.errstate(over="ignore"):
        z = np.asarray(x, np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def rounding_key(seed, step):
    """The stochastic-rounding key of step ``step`` (1, 2, ...) for buffers with
    ``rounding_seed`` ``seed``: element ``i`` of a state array uses ``splitmix64(key + i)``,
    so the rounding does not depend on the thread count or on how the work is split."""
    return splitmix64((splitmix64(seed & _M64) + step) & _M64)


def to_bfloat16_stochastic(x, key, offset=0):
    """float32 values rounded to bfloat16 stochastically (up with probability equal to the
    fraction of the way to the next bfloat16): element ``i`` (flat index, plus ``offset``)
    adds the top 16 bits of ``splitmix64(key + offset + i)`` to its bits, then truncates.
    NaN stays NaN (quiet)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"to_bfloat16_stochastic takes float32 values, got {x.dtype}")
    u = x.view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        index = np.uint64(key) + np.uint64(offset) + np.arange(x.size, dtype=np.uint64)
    r = (splitmix64(index) >> np.uint64(48)).reshape(x.shape)
    out = ((u + r) >> np.uint64(16)).astype(np.uint16)
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


def numpy_step(reference, arrays, *args, key=None, offset=0):
    """Run a NumPy reference on ``arrays`` whose bfloat16 state arrays are decoded to float32
    first and encoded back after (only those; the others are updated in place as usual):
    to nearest, or stochastically with ``key`` (element indices from ``offset``)."""
    packed = {k: a for k, a in arrays.items() if is_bfloat16(a)}
    if not packed:
        return reference(arrays, *args)
    work = dict(arrays)
    work.update((k, from_bfloat16(a)) for k, a in packed.items())
    reference(work, *args)
    for k, a in packed.items():
        a[...] = (to_bfloat16(work[k]) if key is None
                  else to_bfloat16_stochastic(work[k], key, offset))
