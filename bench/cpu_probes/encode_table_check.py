"""Exhaustive check: the CPU kernels' one-read float32 encoder (``kernels.quant8.encode_bits``,
the kernels' own code, over ``fastopt.quantization.encode_table``) gives the NumPy
reference's codes (``quantize_values``: first-midpoint table and one comparison) for all
2**32 float32 bit patterns, both maps, 2**24 values at a time.

    python bench/cpu_probes/encode_table_check.py      (from the repository root)
"""
import time

import numpy as np

from fastopt import quantization as Q
from fastopt.kernels.quant8 import encode_bits

LOW = np.arange(1 << 16, dtype=np.uint32)


def mismatches(qm, cells_per_batch=256):
    bad = 0
    codes = np.empty(cells_per_batch << 16, np.uint8)
    for top in range(0, 1 << 16, cells_per_batch):
        cells = np.arange(top, top + cells_per_batch, dtype=np.uint32)
        bits = ((cells[:, None] << np.uint32(16)) | LOW[None, :]).ravel()
        encode_bits(bits, qm.table, codes)
        bad += int(np.count_nonzero(codes != Q.quantize_values(bits.view(np.float32), qm)))
    return bad


if __name__ == "__main__":
    for qm in (Q.SIGNED, Q.UNSIGNED):
        t = time.perf_counter()
        bad = mismatches(qm)
        took = time.perf_counter() - t
        print(f"{qm}: {bad} mismatches over 2**32 float32 values ({took:.0f} s)")
