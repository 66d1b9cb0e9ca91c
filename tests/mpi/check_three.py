"""Run by tests/test_distributed.py under ``mpiexec -n 3``: with more than 2 ranks MPI's
reduction order is its own, so the sharded step equals one process stepping the mean gradient
to rounding (not bitwise); uneven shards (10,007 = 3,336 + 3,336 + 3,335). Prints "OK <rank>"."""
import numpy as np
from mpi4py import MPI

import fastopt
from fastopt.distributed import ShardedStep

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
n = 10_007
for dtype, rtol in ((np.float32, 1e-5), (np.float64, 1e-12)):
    p0 = np.random.default_rng(7).standard_normal(n).astype(dtype)
    p = p0.copy()
    g = np.empty(n, dtype)
    sh = ShardedStep(fastopt.adam_step, p, g)
    ref = fastopt.AdamBuffers.zeros(p0.copy(), np.empty(n, dtype))
    for step in range(6):
        parts = [np.random.default_rng(1000 * step + k).standard_normal(n).astype(dtype)
                 for k in range(size)]
        g[...] = parts[rank]
        sh.step(lr=1e-2)
        ref.grad[...] = sum(parts[1:], parts[0].copy()) / size
        fastopt.adam_step(ref, lr=1e-2)
    np.testing.assert_allclose(sh.param, ref.param, rtol=rtol, atol=rtol)
    assert sh.counts == [3336, 3336, 3335] and sh.buffers.size == sh.counts[rank]
    same = comm.allgather(sh.param.tobytes())
    assert all(s == same[0] for s in same)          # every rank holds the same parameters
print(f"OK {rank}", flush=True)
