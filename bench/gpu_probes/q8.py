"""GPU probe: the CUDA Adam step on 8-bit state (it took ~2100 us at 1e8 where float32 state
took ~690 us and the bytes say ~400 us). GPU time alone per step: float32 and bfloat16 state,
8-bit state at 1, 2 and 4 elements per thread, each compiled for at least 0 (no bound), 768 and
1024 resident threads per multiprocessor (``config.CUDA_8BIT_THREADS_PER_SM``; when the
output in bench/figures/gpu_q8_h200.txt was measured, ``kernels.cuda.Q8_THREADS_PER_SM``, the
same launch bounds), and a hand kernel that moves the 8-bit step's bytes with no table (the
floor). (Its first version compared
a random against a constant gradient and blocks of 1024: bench/figures/gpu_q8_h200.txt.)

    python bench/gpu_probes/q8.py      (from the repository root; a CUDA GPU, torch)
"""
import os
import sys

import numpy as np
import torch
from numba import cuda

import fastopt
from fastopt import config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gpu_report import gpu_time  # noqa: E402


@cuda.jit
def floor_kernel(p, g, m, v, s):
    i = cuda.grid(1)
    n = p.shape[0]
    stride = cuda.gridsize(1)
    while i < n:
        x = g[i] + np.float32(m[i]) * np.float32(0.5) + np.float32(v[i])
        p[i] = p[i] - np.float32(0.001) * x
        m[i] = np.uint8(i & 255)
        v[i] = np.uint8((i >> 3) & 255)
        if i % 256 == 0:
            s[i // 256] = x
        i += stride


def step_time(host_buffers, reps):
    b = fastopt.to_device(host_buffers)
    return gpu_time(lambda: fastopt.adam_step(b), reps)


def main():
    print(torch.cuda.get_device_name(), flush=True)
    for n in (10_000_000, 100_000_000):
        reps = 20 if n > 10**7 else 100
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n).astype(np.float32)
        g = rng.standard_normal(n).astype(np.float32)
        rows = {}
        rows["float32 state"] = step_time(fastopt.AdamBuffers.zeros(p.copy(), g.copy()), reps)
        rows["bfloat16 state"] = step_time(
            fastopt.AdamBuffers.zeros(p.copy(), g.copy(), state_dtype="bfloat16"), reps)
        for per in (1, 2, 4):
            for budget in (0, 768, 1024):
                config.CUDA_8BIT_PER_THREAD = per
                config.CUDA_8BIT_THREADS_PER_SM = budget
                rows[f"8-bit per={per} threads/SM>={budget}"] = step_time(
                    fastopt.AdamBuffers.zeros(p.copy(), g.copy(), state_dtype="int8"), reps)
        config.reset()
        dp, dg = cuda.to_device(p), cuda.to_device(g)
        dm = cuda.to_device(np.zeros(n, np.uint8))
        dv = cuda.to_device(np.zeros(n, np.uint8))
        ds = cuda.to_device(np.zeros(n // 256 + 1, np.float32))
        nsm = cuda.get_current_device().MULTIPROCESSOR_COUNT
        for tpb, bps in ((256, 8), (256, 64)):
            blocks = min(nsm * bps, -(-n // tpb))
            rows[f"floor kernel {tpb}x{bps}/SM"] = gpu_time(
                lambda: floor_kernel[blocks, tpb](dp, dg, dm, dv, ds), reps)
        base = rows["float32 state"]
        for k, t in rows.items():
            print(f"n={n:>11} {k:40s} {t * 1e6:9.1f} us  ({base / t:.2f}x float32 state)",
                  flush=True)


if __name__ == "__main__":
    main()
