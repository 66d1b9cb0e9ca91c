"""Block-wise 8-bit optimizer state with the dynamic (tree) quantization map.

``Buffers.zeros(param, grad, state_dtype="int8")`` stores each state array as one ``uint8``
code per element plus one float32 scale per block of ``block_size`` elements (default 256):
the block's absolute maximum. A value is ``qmap[code] * scale``; a block is quantized by
dividing it by its absmax and taking, per element, the nearest entry of the map (Dettmers et
al. 2022, "8-bit Optimizers via Block-wise Quantization").

The maps (:func:`dynamic_map`): a value's magnitude is a decimal exponent and a linear
fraction. Decade ``d`` (``10**-6 .. 10**0``, ``i = d + 6``) holds ``2**i`` values in the signed
map and ``2**(i + 1)`` in the unsigned one: the midpoints of equal bins of ``[0.1, 1] * 10**d``
(more resolution for large values; the smallest nonzero magnitude is 5.5e-7 signed, 3.25e-7
unsigned, times the block's absmax). The signed map (first moments,
momentum) mirrors its 127 positive values and adds 0 and 1; the unsigned map (second moments,
sums of squares: the kernel record's ``nonnegative`` state) has 254 positive values, 0 and 1.
So 0 and 1 are exact in both maps, and so is a block's largest value when it is positive.

One exception to "nearest": in the unsigned map a positive value never rounds to 0 (it takes at
least the smallest entry, 3.25e-7 x absmax). A second moment flushed to zero turns Adam's or
RMSprop's ``g / (sqrt(v) + eps)`` into ``g / eps``, a huge step for a small gradient. Measured on
full MNIST (``compare``, RMSprop, seed 0): test accuracy 0.9152 with flushing, 0.9333 without
(float32 state: 0.9267).

Nearest entry, fast and exact: with the 255 midpoints ``mid`` between consecutive entries
(float32), a value's code is the number of midpoints below it (ties go to the lower entry). A
table ``first`` indexed by the top 16 bits of the value as float32 (sign, exponent, 7 mantissa
bits) gives the number of midpoints below the smallest value of that cell; at most
``CELL_MIDS`` (1 for these maps) midpoints fall inside a cell, so
``code = first[cell] + (mid[first[cell]] < x)``: one table read and one comparison, no search.
This module's NumPy reference computes codes this way (:func:`quantize_values`), and so do the
CUDA kernels and the CPU kernels on float64 state.

The CPU kernels on float32 state fold the two reads into one (:func:`encode_table`): inside a
cell the values share their top 16 bits, so ``mid[first[cell]] < x`` is a comparison of the
low 16 bits of ``x`` against a threshold, reversed in negative cells (larger bits, smaller
value). ``table[cell]`` (uint32) holds the base code (bits 0-7), the threshold ``t`` (bits
8-23) and a flip bit (24), and ``code = base + ((low16(x) ^ (0xFFFF if flip else 0)) > t)``:
one table read per value, the rest integer arithmetic that vectorizes. The kernels' encoder
(``kernels.quant8.encode_bits``) equals :func:`quantize_values` for all 2**32 float32 bit
patterns, both maps (checked exhaustively, ``bench/cpu_probes/encode_table_check.py``; the
tests check every cell's ends and every midpoint's neighbours, where the two step functions
could differ).

Small buffers: a buffer of fewer than ``min_8bit_size`` elements (default 4096, bitsandbytes'
rule per tensor; here per buffer) keeps its state in the parameter's dtype: the scales and the
map cost more than they save there, and tiny tensors (biases, norms) are where quantization
error hurts most. ``buffers.state_dtype`` says what a buffer got.
"""
import numpy as np

DEFAULT_BLOCK = 256
DEFAULT_MIN_SIZE = 4096
CODES = np.dtype(np.uint8)
SCALES = np.dtype(np.float32)


def dynamic_map(signed):
    """The 256 sorted float32 values of the signed or unsigned dynamic map (module doc)."""
    values = [0.0, 1.0]
    for i in range(7):
        count = 2 ** i if signed else 2 ** (i + 1)
        edges = np.linspace(0.1, 1.0, count + 1)
        mids = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)
        values.extend(mids.tolist())
        if signed:
            values.extend((-mids).tolist())
    out = np.array(sorted(values), np.float64).astype(np.float32)
    assert out.shape == (256,) and np.all(np.diff(out) > 0), "the map must be 256 sorted values"
    return out


def _tables(qmap, keep_positive=False):
    """(midpoints padded with +inf, first-midpoint table over float32 cells, midpoints per
    cell at most). ``keep_positive``: the first midpoint is the smallest positive float32, so
    that no positive value rounds to the map's 0."""
    mid = ((qmap[:-1].astype(np.float64) + qmap[1:]) / 2).astype(np.float32)
    if keep_positive:
        assert qmap[0] == 0
        mid[0] = np.nextafter(np.float32(0), np.float32(1))
    cells = np.arange(1 << 16, dtype=np.uint32)
    lo = (cells << 16).view(np.float32)
    hi = ((cells << 16) | 0xFFFF).view(np.float32)
    a = np.minimum(lo, hi)          # the cell's smallest value (negative cells run backwards)
    b = np.maximum(lo, hi)
    with np.errstate(invalid="ignore"):
        first = np.searchsorted(mid, a, side="left")
        inside = np.searchsorted(mid, b, side="right") - first
    nan = np.isnan(a) | np.isnan(b)
    first[nan] = 0
    inside[nan] = 0
    k = int(inside.max())
    padded = np.concatenate([mid, np.full(k + 1, np.inf, np.float32)])
    return padded, first.astype(np.uint8), k


def encode_table(first, mid):
    """The one-read encoding table over float32 cells (module doc): ``first[cell] | t << 8 |
    flip << 24``, where ``code = first[cell] + ((low16(x) ^ (0xFFFF * flip)) > t)`` equals
    ``first[cell] + (mid[first[cell]] < x)`` for every float32 ``x`` of the cell."""
    cells = np.arange(1 << 16, dtype=np.int64)
    m = mid[first.astype(np.int64)].astype(np.float32)
    mb = m.view(np.uint32).astype(np.int64)         # the midpoint's bits
    lb = cells << 16                                # the bits of the cell's low16 = 0 value
    negative = cells >= 0x8000
    special = (cells & 0x7F80) == 0x7F80            # exponent all ones: inf and NaNs
    t = np.full(1 << 16, 0xFFFF, np.int64)          # 0xFFFF: no value of the cell is above m
    flip = negative.copy()
    with np.errstate(invalid="ignore"):
        # positive cell: bits grow with the value; m >= the cell's smallest value, so x > m
        # exactly for low16 > bits(m) - lb (m beyond the cell: never)
        pos = ~negative & ~special & (m > 0) & np.isfinite(m)
        t[pos] = np.minimum(mb[pos] - lb[pos], 0xFFFF)
        # negative cell: bits grow as the value falls; with m in the cell (bits(m) = lb + d),
        # x > m exactly for low16 < d, i.e. low16 ^ 0xFFFF > 0xFFFF - d (m above the cell:
        # never; m >= the cell's smallest value, so never below it)
        neg = negative & ~special & (m < 0) & (mb > lb) & (mb <= lb + 0xFFFF)
        t[neg] = 0xFFFF - (mb[neg] - lb[neg])
        assert not np.any(negative & ~special & (m < 0) & (mb > lb + 0xFFFF))
        assert np.all(mb[pos] >= lb[pos])
        # the +inf cell: low16 0 is +inf (above any finite m), the rest NaN (never above)
        inf = 0x7F80
        flip[inf] = True
        t[inf] = 0xFFFE if np.isfinite(m[inf]) else 0xFFFF
    table = first.astype(np.int64) | (t << 8) | (flip.astype(np.int64) << 24)
    return table.astype(np.uint32)


class QMap:
    """One dynamic map with its lookup tables (see the module doc)."""

    def __init__(self, signed):
        self.signed = bool(signed)
        self.values = dynamic_map(signed)
        # a second moment flushed to zero would divide a small gradient by eps alone (a huge
        # step): in the unsigned map no positive value rounds to 0
        self.mid, self.first, self.cell_mids = _tables(self.values, keep_positive=not signed)
        self.zero_code = int(np.flatnonzero(self.values == 0)[0])
        self.table = encode_table(self.first, self.mid)

    def __repr__(self):
        return f"<QMap {'signed' if self.signed else 'unsigned'}: 256 values>"


SIGNED = QMap(True)
UNSIGNED = QMap(False)
CELL_MIDS = max(SIGNED.cell_mids, UNSIGNED.cell_mids)
# the kernels make one comparison per value: a cell of 7 mantissa bits never holds two midpoints
assert CELL_MIDS == 1, "a map with two midpoints in one cell needs a second comparison"


def qmap_for(record, field):
    """The map of state ``field`` of ``record``: unsigned for its ``nonnegative`` state."""
    return UNSIGNED if field in getattr(record, "nonnegative", ()) else SIGNED


def quantize_values(x, qmap):
    """Codes (uint8) of ``x`` (float32 or float64 values, already scaled to the block):
    ``first[cell] + (mid[first[cell]] < x)``, the nearest map entry (ties to the lower one), as
    the kernels compute it."""
    x = np.asarray(x)
    cell = (x.astype(np.float32).view(np.uint32) >> np.uint32(16)).astype(np.int64)
    base = qmap.first[cell].astype(np.int64)
    with np.errstate(invalid="ignore"):
        return (base + (qmap.mid[base].astype(x.dtype) < x)).astype(np.uint8)


def block_scales(w, block):
    """float32 absmax of each block of ``w`` (1-D), found as the largest magnitude bits (a NaN
    wins, as in ``np.max``), the kernels' way."""
    n = w.shape[0]
    nb = -(-n // block)
    ut = np.uint32 if w.dtype == np.float32 else np.uint64
    bits = np.zeros(nb * block, ut)
    bits[:n] = w.view(ut) & ut(np.iinfo(ut).max >> 1)
    return bits.reshape(nb, block).max(axis=1).view(w.dtype).astype(np.float32)


def quantize(w, block, qmap):
    """(codes, scales) of the 1-D float array ``w`` in blocks of ``block``: each block
    multiplied by ``1 / absmax`` (float32 absmax; a zero block stays zero, and so does a
    block whose ``1 / absmax`` overflows: absmax below ~2.9e-39 in float32, where the
    product would be inf and take the wrong end of the map), then the nearest map entry."""
    w = np.asarray(w)
    scales = block_scales(w, block)
    s = scales.astype(w.dtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = np.where(s == 0, s, w.dtype.type(1) / np.where(s == 0, 1, s))
        inv = np.where(np.isinf(inv), w.dtype.type(0), inv)     # absmax < 1 / FLT_MAX: zeros
        x = w * np.repeat(inv, block)[:w.shape[0]]      # (an inf block: inf * 0 is NaN, code 0)
    return quantize_values(x, qmap), scales


def dequantize(codes, scales, block, qmap, dtype=np.float32):
    """The values of ``codes`` / ``scales`` as ``dtype``: ``qmap[code] * scale``."""
    dtype = np.dtype(dtype)
    s = np.repeat(scales, block)[:codes.shape[0]].astype(dtype)
    return qmap.values.astype(dtype)[codes] * s


def initial(n, value, block, qmap, dtype):
    """(codes, scales) of ``n`` elements equal to ``value``."""
    return quantize(np.full(n, value, dtype), block, qmap)


def numpy_step(reference, arrays, quantized, record, block, *args):
    """Run a NumPy reference on ``arrays`` whose 8-bit state (``quantized``: ``{field: scales}``
    for the ``uint8`` code arrays) is dequantized first and quantized back after, block by
    block; the other arrays are updated in place as usual."""
    with_dequantized(arrays, quantized, record, block, lambda work: reference(work, *args))


def with_dequantized(arrays, quantized, record, block, update, frozen=()):
    """``update(work)`` on ``arrays`` with each 8-bit state array (``quantized``: ``{field:
    scales}``) replaced by its dequantized values, then those values quantized back (codes and
    scales written in place). ``update`` changes ``work``'s arrays in place (slices of them,
    for a grouped step). ``frozen``: element ranges of whole blocks that the step leaves out;
    their codes and scales are not written."""
    dtype = arrays["param"].dtype
    work = dict(arrays)
    for f in quantized:
        work[f] = dequantize(arrays[f].reshape(-1), quantized[f], block,
                             qmap_for(record, f), dtype).reshape(arrays[f].shape)
    update(work)
    keep = np.ones(len(next(iter(quantized.values()))) if quantized else 0, bool)
    for lo, hi in frozen:
        keep[lo // block:-(-hi // block)] = False
    for f, scales in quantized.items():
        codes, new = quantize(work[f].reshape(-1), block, qmap_for(record, f))
        flat = arrays[f].reshape(-1)
        on = np.repeat(keep, block)[:flat.shape[0]]
        flat[on] = codes[on]
        scales[keep] = new[keep]
