"""Exhaustive check: the CPU kernels' one-read float32 encoder
(``fastopt.quantization.encode_table`` / ``encode_with_table``) gives the NumPy reference's
codes (``quantize_values``: first-midpoint table and one comparison) for all 2**32 float32 bit
patterns, both maps. NumPy, 256 cells (2**24 values) at a time: ~6 minutes on the 2-core VM.

    python bench/cpu_probes/encode_table_check.py      (from the repository root)
"""
import numpy as np

from fastopt import quantization as Q

LOW = np.arange(1 << 16, dtype=np.uint32)


def mismatches(qm, cells_per_batch=256):
    bad = 0
    for top in range(0, 1 << 16, cells_per_batch):
        cells = np.arange(top, top + cells_per_batch, dtype=np.uint32)
        x = ((cells[:, None] << np.uint32(16)) | LOW[None, :]).ravel().view(np.float32)
        bad += int(np.count_nonzero(Q.encode_with_table(x, qm.table) != Q.quantize_values(x, qm)))
    return bad


if __name__ == "__main__":
    for qm in (Q.SIGNED, Q.UNSIGNED):
        print(f"{qm}: {mismatches(qm)} mismatches over 2**32 float32 values")
