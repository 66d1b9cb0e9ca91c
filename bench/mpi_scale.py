"""Per-step communication time and state memory of a sharded Adam step (fastopt.distributed)
at the MLP's size and at 1e7 float32 parameters. Run under MPI with 1 and 2 ranks:

    mpiexec -n 1 python bench/mpi_scale.py
    mpiexec -n 2 python bench/mpi_scale.py

Rank 0 prints one line per size: ranks, size, median step seconds (whole ShardedStep.step),
median communication seconds (reduce-scatter + all-gather), state bytes per rank.
"""
import os
import sys
import time

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastopt  # noqa: E402
from fastopt.distributed import ShardedStep  # noqa: E402


def main(sizes=(109_810, 10_000_000), steps=30):
    comm = MPI.COMM_WORLD
    for n in sizes:
        rng = np.random.default_rng(comm.rank)
        p = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        g = rng.standard_normal(n).astype(np.float32)
        sh = ShardedStep(fastopt.adam_step, p, g)
        for _ in range(3):
            sh.step(lr=1e-3)
        totals, comms = [], []
        for _ in range(steps):
            comm.Barrier()
            before = sh.comm_seconds
            t0 = time.perf_counter()
            sh.step(lr=1e-3)
            totals.append(time.perf_counter() - t0)
            comms.append(sh.comm_seconds - before)
        if comm.rank == 0:
            print(f"ranks {comm.size}  size {n:>10}  step {np.median(totals) * 1e3:8.3f} ms  "
                  f"communication {np.median(comms) * 1e3:8.3f} ms  "
                  f"state per rank {sh.state_bytes / 1e6:7.2f} MB", flush=True)


if __name__ == "__main__":
    main()
