"""Run under ``mpiexec -n 2`` by tests/test_distributed.py: ShardedStep against one process
stepping the mean gradient (bitwise with 2 ranks), clipping (to rounding), skip on every rank,
mismatch detection on every rank, state memory per rank. Prints "OK <rank>" per rank."""
import sys

import numpy as np
from mpi4py import MPI

import fastopt
from fastopt import registry, testinfo
from fastopt.distributed import ShardedStep

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
assert size == 2, "run with mpiexec -n 2"

# every registered optimizer but LAMB (whose per-tensor norms need layout=), with the last
# combination of its test option grid (the most options on)
CASES = []
for _spec in registry.REGISTRY.values():
    if _spec.kernel.norm_names:
        continue
    _kw = dict(_spec.defaults, **testinfo.option_combinations(_spec)[-1])
    CASES.append((_spec.name, _kw, _spec.state_options(_spec.validate(_kw))))


def grads(step, n, dtype):
    return [np.random.default_rng(1000 * step + k).standard_normal(n).astype(dtype)
            for k in range(size)]


def run(name, kw, zeros, dtype, n=10_007, steps=6, start=0, junk=None, **loop):
    spec = registry.get(name)
    fn = registry.step_function(spec)
    p0 = np.random.default_rng(7).standard_normal(n).astype(dtype)
    p = p0.copy()
    g = np.empty(n, dtype)
    sh = ShardedStep(fn, p, g, **zeros)
    ref = spec.buffers_cls.zeros(p0.copy(), np.empty(n, dtype), **zeros)
    sh.buffers.step = ref.step = start
    for step in range(steps):
        parts = grads(step, n, dtype)
        if junk is not None:            # a frozen range's gradient: never read
            for part in parts:
                part[junk[0]:junk[1]] = 1e30
                part[junk[0]] = np.nan
        if loop.get("skip_nonfinite") and step == 2:
            parts[1][-5] = np.inf       # rank 1's gradient, in rank 1's shard after the sum
        g[...] = parts[rank]
        took = sh.step(**kw, **loop)
        total = parts[0] + parts[1]
        ref.grad[...] = total / 2                       # the mean gradient, exactly
        fn(ref, **kw, **loop)
        assert took == (not ref.found_inf) if loop.get("skip_nonfinite") else took
    return sh, ref


for name, kw, zeros in CASES:
    for dtype in (np.float32, np.float64):
        sh, ref = run(name, kw, zeros, dtype)
        assert np.array_equal(sh.param.view(np.uint8), ref.param.view(np.uint8)), (name, dtype)
        for f in ref.state_fields:
            a, b = getattr(sh.buffers, f), getattr(ref, f)
            if b is not None:
                assert np.array_equal(a.view(np.uint8), b[sh.lo:sh.hi].view(np.uint8)), (name, f)

# parameter groups (cut to each shard) and a schedule, bitwise as in one process
groups = fastopt.Groups(10_007, [{"range": (0, 3000), "lr": 1e-2},
                                 {"ranges": [(4000, 6000), (9000, 10_007)], "lr": 5e-4,
                                  "weight_decay": 0.1}])
for dtype in (np.float32, np.float64):
    sh, ref = run("adam", dict(lr=lambda t: 1e-3 / (1 + t), groups=groups), {}, dtype)
    assert np.array_equal(sh.param.view(np.uint8), ref.param.view(np.uint8)), ("groups", dtype)
# groups with their own step counts (steps_behind travels with the cut groups)
lagged = fastopt.Groups(10_007, [{"range": (0, 3000), "steps_behind": 2},
                                 {"range": (4000, 10_007), "steps_behind": 1, "lr": 5e-4}])
sh, ref = run("adam", dict(groups=lagged), {}, np.float32, start=2)
assert np.array_equal(sh.param.view(np.uint8), ref.param.view(np.uint8)), "steps_behind"
# a frozen group across the shard boundary (each rank leaves its part out)
frozen = fastopt.Groups(10_007, [{"range": (4000, 6500), "frozen": True},
                                 {"range": (0, 1000), "lr": 1e-2}])
sh, ref = run("adam", dict(groups=frozen), {}, np.float32)
assert np.array_equal(sh.param.view(np.uint8), ref.param.view(np.uint8)), "frozen"
assert np.array_equal(ref.exp_avg[4000:6500], np.zeros(2500, np.float32)), "frozen state"
# ... whose gradient (NaN, 1e30) clipping's norm and the skip check leave out on every rank
sh, ref = run("adam", dict(groups=frozen), {}, np.float64, junk=(4000, 6500), max_grad_norm=1.0)
np.testing.assert_allclose(sh.param, ref.param, rtol=1e-12, atol=1e-14)
assert np.isfinite(ref.grad_norm) and ref.grad_norm < 1e3, ref.grad_norm
assert abs(sh.buffers.grad_norm - ref.grad_norm) <= 1e-12 * ref.grad_norm
sh, ref = run("adam", dict(groups=frozen), {}, np.float32, junk=(4000, 6500),
              skip_nonfinite=True)
assert sh.buffers.skipped_steps == ref.skipped_steps == 1       # (step 2's inf, stepped)
assert np.array_equal(sh.param.view(np.uint8), ref.param.view(np.uint8)), "frozen skip"

# clipping: equal to rounding (the norm's chunks follow the shard boundaries)
sh, ref = run("adam", dict(lr=1e-2), {}, np.float64, max_grad_norm=1.0)
np.testing.assert_allclose(sh.param, ref.param, rtol=1e-12, atol=1e-14)
assert abs(sh.buffers.grad_norm - ref.grad_norm) <= 1e-12 * ref.grad_norm

# skip: a non-finite gradient on one rank skips the step on both
sh, ref = run("adam", dict(lr=1e-2), {}, np.float64, skip_nonfinite=True)
assert sh.buffers.skipped_steps == ref.skipped_steps == 1
assert np.array_equal(sh.param, ref.param)

# state memory per rank: half of one process's
full = fastopt.AdamBuffers.zeros(np.zeros(10_007, np.float32), np.zeros(10_007, np.float32))
sh, _ = run("adam", dict(lr=1e-3), {}, np.float32)
assert sh.state_bytes == 2 * 4 * sh.counts[rank]
assert sum(comm.allgather(sh.state_bytes)) == sum(
    a.nbytes for k, a in full.arrays().items() if k not in ("param", "grad"))

# a mismatch between ranks is reported on every rank
try:
    n = 100 + rank
    ShardedStep(fastopt.adam_step, np.zeros(n, np.float32), np.zeros(n, np.float32))
except ValueError as e:
    assert "disagree" in str(e), e
else:
    sys.exit("a size mismatch was not detected")
# different hyperparameters on the first step: reported on every rank, nothing written
p = np.ones(100, np.float32)
sh = ShardedStep(fastopt.adam_step, p, np.ones(100, np.float32))
try:
    sh.step(lr=1e-3 * (1 + rank))
except ValueError as e:
    assert "different settings" in str(e), e
    assert np.all(p == 1) and sh.buffers.step == 0
else:
    sys.exit("different learning rates were not detected")
print(f"OK {rank}", flush=True)
