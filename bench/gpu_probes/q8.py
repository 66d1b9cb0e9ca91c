"""GPU probe: where the time of the CUDA Adam step on 8-bit state goes (it took ~2100 us at
1e8 where float32 state took ~690 us and the bytes say ~400 us). GPU time alone per step for:
the gradient random vs constant (a constant gradient puts every element of a warp in the same
table cell: no divergent gathers), elements per thread 1/2/4/8, quantization blocks of 256 and
1024, and a hand kernel that moves the same bytes with no table (the floor).

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
        cases = [(per, 256, "random g") for per in (1, 2, 4, 8)]
        cases += [(4, 1024, "random g"), (4, 256, "constant g")]
        for per, block, gl in cases:
            config.CUDA_8BIT_PER_THREAD = per
            gg = g if gl == "random g" else np.full(n, 0.3, np.float32)
            rows[f"8-bit per={per} block={block} {gl}"] = step_time(
                fastopt.AdamBuffers.zeros(p.copy(), gg.copy(), state_dtype="int8",
                                          block_size=block), reps)
        config.CUDA_8BIT_PER_THREAD = 4
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
