"""Run by tests/test_distributed.py: ``RANK raise`` or ``RANK die`` makes that rank raise or
exit at step 2; every rank must be gone within seconds (no hang)."""
import os
import sys

import numpy as np
from mpi4py import MPI

import fastopt
from fastopt.distributed import ShardedStep

comm = MPI.COMM_WORLD
who, how = int(sys.argv[1]), sys.argv[2]
p = np.zeros(1000, np.float32)
g = np.ones(1000, np.float32)
sh = ShardedStep(fastopt.adam_step, p, g)
for step in range(5):
    if step == 2 and comm.rank == who:
        if how == "raise":
            raise RuntimeError("simulated failure on this rank")
        os._exit(3)
    sh.step(lr=1e-3)
print("finished", comm.rank)
