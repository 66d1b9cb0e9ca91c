"""GPU probe: the chunk of the device norm pass (``config.CUDA_NORM_CHUNK``, one thread block
per chunk, a fixed-order tree per chunk). With 4096 elements a block of 256 threads reads 16
each before a float64 tree of eight barriers, and a clipped Adam step at 1e7 took 1.27-1.28x a
plain one on an H200 (the issue asks 1.25x). For chunks of 4096 .. 65536: the pass with its
clip factor in one launch (``kernels.cuda.sum_of_squares``), then Adam's plain and clipped
steps with the chunk set (GPU time alone; the norm's bits change with the chunk, each is
deterministic).

    python bench/gpu_probes/norm_chunk.py      (from the repository root; a CUDA GPU, torch)
"""
import os
import sys

import numpy as np
import torch
from numba import cuda

import fastopt
from fastopt import config
from fastopt.kernels import cuda as ck

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gpu_report import gpu_time  # noqa: E402

CHUNKS = (4096, 8192, 16384, 32768, 65536)


def main(sizes=(10_000_000, 100_000_000)):
    print(torch.cuda.get_device_name(), flush=True)
    for n in sizes:
        reps = 50 if n <= 10**7 else 10
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n).astype(np.float32)
        g = rng.standard_normal(n).astype(np.float32)
        dx = cuda.to_device(g)
        tot, fac = cuda.device_array(1, np.float64), cuda.device_array(1, np.float32)
        done = cuda.to_device(np.zeros(1, np.int32))
        plain = fastopt.to_device(fastopt.AdamBuffers.zeros(p.copy(), g.copy()))
        t_plain = gpu_time(lambda: fastopt.adam_step(plain), reps)
        rows = []
        for chunk in CHUNKS:
            chunks = -(-n // chunk)
            out = cuda.device_array(chunks, np.float64)
            grid = min(chunks, 8192)
            with ck.exact():
                t_pass = gpu_time(lambda: ck.sum_of_squares[grid, ck.NORM_THREADS](
                    dx, np.int64(chunk), out, done, 1.0, 1.0, tot, fac), reps)
            config.CUDA_NORM_CHUNK = chunk
            b = fastopt.to_device(fastopt.AdamBuffers.zeros(p.copy(), g.copy()))
            t_clip = gpu_time(lambda: fastopt.adam_step(b, max_grad_norm=1.0), reps)
            rows.append((chunk, t_pass, t_clip))
            b = None
        config.CUDA_NORM_CHUNK = config.NORM_CHUNK
        t_plain2 = gpu_time(lambda: fastopt.adam_step(plain), reps)
        print(f"n={n}: plain Adam {t_plain * 1e6:.1f} / {t_plain2 * 1e6:.1f} us (before / "
              f"after the rows)", flush=True)
        base = (t_plain + t_plain2) / 2
        for chunk, t_pass, t_clip in rows:
            print(f"  chunk {chunk:>6}: norm pass + factor {t_pass * 1e6:7.1f} us "
                  f"({n * 4 / t_pass / 1e9:5.0f} GB/s), clipped Adam {t_clip * 1e6:7.1f} us "
                  f"({t_clip / base:.3f}x plain)", flush=True)


if __name__ == "__main__":
    main()
