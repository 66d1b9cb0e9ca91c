"""Run by tests/test_distributed.py: sharded checkpoints. ``save DIR`` (2 ranks): 4 steps, save,
3 more steps, the final parameters to DIR/expected.npy; then a save that fails on rank 1 must
raise on both ranks and keep the step-4 checkpoint. ``load DIR`` (1 or 2 ranks): load, the same
3 steps, parameters bitwise equal to the expected ones (with 2 ranks the mean of the two ranks'
gradients is exact, so any rank count gives the same bits). Prints "OK <rank>"."""
import sys

import numpy as np
from mpi4py import MPI

import fastopt
from fastopt import checkpoint
from fastopt.distributed import ShardedStep

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
mode, directory = sys.argv[1], sys.argv[2]
N = 10_007
KW = dict(lr=1e-2, amsgrad=True)


def gradient(step):
    """This rank's gradient at ``step``: its part of a 2-part batch (one rank: the mean)."""
    parts = [np.random.default_rng(100 * step + k).standard_normal(N).astype(np.float32)
             for k in range(2)]
    return parts[rank] if size == 2 else (parts[0] + parts[1]) / 2


def make():
    p = np.random.default_rng(0).standard_normal(N).astype(np.float32)
    g = np.empty(N, np.float32)
    return ShardedStep(fastopt.adam_step, p, g, amsgrad=True)


def run(sh, steps):
    for step in steps:
        sh.grad[...] = gradient(step)
        sh.step(**KW)


sh = make()
if mode == "save":
    run(sh, range(4))
    sh.save(directory)
    run(sh, range(4, 7))
    if rank == 0:
        np.save(f"{directory}/expected.npy", sh.param)
    real = checkpoint.save_checkpoint

    def failing(path, buffers):
        if rank == 1:
            raise OSError("disk full (simulated)")
        return real(path, buffers)
    import fastopt.checkpoint as ck
    ck.save_checkpoint = failing
    try:
        sh.save(directory)
    except RuntimeError as e:
        assert "rank 1" in str(e) and "previous checkpoint is kept" in str(e), e
    else:
        sys.exit("a failed save did not raise")
    ck.save_checkpoint = real
else:
    sh.load(directory)
    assert sh.buffers.step == 4
    run(sh, range(4, 7))
    expected = np.load(f"{directory}/expected.npy")
    assert np.array_equal(sh.param.view(np.uint32), expected.view(np.uint32)), \
        np.abs(sh.param - expected).max()
print(f"OK {rank}", flush=True)
