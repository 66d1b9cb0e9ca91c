"""The host's Python time of one CUDA Adam step, measured without a GPU: numba device arrays
made over fake device pointers (no memory), the launch replaced by a no-op, everything else
(validation, the prepared step's checks, kernel choice, scalars, two-element words) as on a GPU.

    python bench/gpu_probes/host_step.py

A/B in one process, interleaved rounds: numba's device arrays checked by identity (as fastopt
does) against reading each array's ``__cuda_array_interface__`` every step (as before).
"""
import contextlib
import ctypes
import time

import numpy as np
from numba import cuda
from numba.cuda.cudadrv import devicearray as da
from numba.cuda.cudadrv import devices

import fastopt
from fastopt import _cuda_backend as cb
from fastopt import _launch, _step, config

N = 109_810                      # the MLP's parameters


class FakePointer:
    def __init__(self, address):
        self.address = address
        self.device_ctypes_pointer = self.handle = ctypes.c_void_p(address)

    def view(self, start, stop=None):
        return FakePointer(self.address + start)


_next = [1 << 24]


def fake(n, dtype=np.float32):
    """A numba DeviceNDArray of ``n`` elements at a fresh fake address."""
    dtype = np.dtype(dtype)
    _next[0] += (n * dtype.itemsize + 4096) // 4096 * 4096
    return da.DeviceNDArray((n,), (dtype.itemsize,), dtype, stream=0,
                            gpu_data=FakePointer(_next[0]))


def main():
    _launch.Launcher.__call__ = lambda self, kernel, grid, block, *args: None
    devices._runtime.ensure_context = contextlib.nullcontext
    cb._gpu = lambda: cuda
    placeholders = {}
    cb._placeholder = lambda c, dt: placeholders.setdefault(np.dtype(dt), fake(1, dt))
    config.CUDA_BLOCKS_PER_SM = 0                # (no device to ask for its SM count)
    identity = _step._fixed
    modes = {"identity": identity, "interface every step": lambda a: False}
    buffers, times = {}, {m: [] for m in modes}
    for mode, fixed in modes.items():
        _step._fixed = fixed
        buffers[mode] = fastopt.AdamBuffers(fake(N), fake(N), exp_avg=fake(N),
                                            exp_avg_sq=fake(N))
        fastopt.adam_step(buffers[mode], lr=1e-3)
    _step._fixed = identity
    for _ in range(20):
        for mode, b in buffers.items():
            t0 = time.perf_counter()
            for _ in range(300):
                fastopt.adam_step(b, lr=1e-3)
            times[mode].append((time.perf_counter() - t0) / 300 * 1e6)
    for mode, v in times.items():
        print(f"{mode:>22}: min {min(v):5.1f} us, median {np.median(v):5.1f} us per step "
              f"(host Python, no launch)")


if __name__ == "__main__":
    main()
