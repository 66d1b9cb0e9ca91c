"""GPU probe: the device norm pass of a clipped step (``kernels.cuda.chunk_sum_of_squares``)
with one load in flight per thread (as it was: ~24 us at 1e7 on an H200, ~1.7 TB/s) against
eight (as it is now: the same additions in the same order, so the same bits), and torch's
``linalg.vector_norm`` for scale; then the pass with its finishing kernel (two launches)
against both in one launch (``kernels.cuda.sum_of_squares``). GPU time alone.

    python bench/gpu_probes/norm_pass.py      (from the repository root; a CUDA GPU, torch)
"""
import os
import sys

import numpy as np
import torch
from numba import cuda, float64

from fastopt import config
from fastopt.kernels import cuda as ck

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gpu_report import gpu_time  # noqa: E402


@cuda.jit
def one_in_flight(x, chunk, out):
    """The pass as it was: a thread's loop loads one element per iteration."""
    sh = cuda.shared.array(256, float64)
    tid = cuda.threadIdx.x
    n = x.shape[0]
    for c in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
        start = c * chunk
        end = min(n, start + chunk)
        acc = float64(0.0)
        i = start + tid
        while i < end:
            v = float64(x[i])
            acc += v * v
            i += 256
        total = ck.tree_sum(sh, tid, acc)
        if tid == 0:
            out[c] = total
        cuda.syncthreads()


def main():
    print(torch.cuda.get_device_name(), flush=True)
    chunk = np.int64(config.NORM_CHUNK)
    for n in (1_000_000, 10_000_000, 100_000_000):
        reps = 200 if n <= 10**7 else 50
        x = torch.randn(n, device="cuda")
        dx = cuda.as_cuda_array(x)
        chunks = -(-n // int(chunk))
        grid = min(chunks, 8192)
        old = cuda.device_array(chunks, np.float64)
        new = cuda.device_array(chunks, np.float64)
        with ck.exact():
            t_old = gpu_time(lambda: one_in_flight[grid, 256](dx, chunk, old), reps)
            t_new = gpu_time(lambda: ck.chunk_sum_of_squares[grid, 256](dx, chunk, new), reps)
        t_torch = gpu_time(lambda: torch.linalg.vector_norm(x), reps)
        same = np.array_equal(old.copy_to_host(), new.copy_to_host())
        gbs = n * 4 / t_new / 1e9
        print(f"n={n:>11}: one in flight {t_old * 1e6:8.1f} us, eight {t_new * 1e6:8.1f} us "
              f"({t_old / t_new:.2f}x, {gbs:.0f} GB/s), torch vector_norm "
              f"{t_torch * 1e6:8.1f} us; chunk sums bitwise equal: {same}", flush=True)
        # the whole pass of a clipped step: the chunk kernel + the finishing kernel (two
        # launches) against both in one launch (kernels.cuda.sum_of_squares)
        tot2, fac2 = cuda.device_array(1, np.float64), cuda.device_array(1, np.float32)
        tot1, fac1 = cuda.device_array(1, np.float64), cuda.device_array(1, np.float32)
        done = cuda.to_device(np.zeros(1, np.int32))

        def two():
            ck.chunk_sum_of_squares[grid, 256](dx, chunk, new)
            ck.finish_sum_of_squares[1, 256](new, 1.0, 1.0, tot2, fac2)

        def one():
            ck.sum_of_squares[grid, 256](dx, chunk, old, done, 1.0, 1.0, tot1, fac1)
        with ck.exact():
            t_two, t_one = gpu_time(two, reps), gpu_time(one, reps)
        same = (tot1.copy_to_host().tobytes() == tot2.copy_to_host().tobytes()
                and fac1.copy_to_host().tobytes() == fac2.copy_to_host().tobytes())
        print(f"n={n:>11}: norm pass + factor, two launches {t_two * 1e6:8.1f} us, one launch "
              f"{t_one * 1e6:8.1f} us; same total and factor: {same}", flush=True)


if __name__ == "__main__":
    main()
