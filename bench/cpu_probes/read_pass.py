"""CPU probe: can the extra read of a ``skip_nonfinite`` / clipped step (the gradient's
finiteness or norm pass before the update) be made cheaper than one more read of the gradient?

Prints, for a 1e7 float32 gradient (40 MB) on this machine's threads:

1. the read bandwidth of a plain vectorized read (an integer sum of the bits) on 1 and 2
   threads, next to fastopt's finiteness and norm passes (``kernels.reductions``, parallel,
   one run of chunks per thread) as they run (chunks of 4096: the norm reads its run as four
   long streams side by side, the finiteness pass as one stream) and one chunk at a time
   (the same compiled passes called with a chunk of 4095, not a multiple of 8, which takes the
   one-chunk path);
2. the same read with a software prefetch (``llvm.prefetch``, one per 64-byte line) at a few
   distances ahead;
3. whether the tail of the gradient is still in the last-level cache right after a full pass
   over it (the reason to run the update back to front after the check): the tail read cold
   (after a 120 MB pass over another array) and right after the full pass.

    python bench/cpu_probes/read_pass.py      (from the repository root)
"""
import time

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastopt import _threads
from fastopt.benchmarks import interleaved_rounds
from fastopt.kernels.reductions import all_finite, chunked_sum_of_squares, n_tasks

N = 10_000_000
ROUNDS = 15


@intrinsic
def prefetch(typingctx, a, i):
    """``llvm.prefetch`` (read, high locality, data) of ``a[i]``'s line (never faults)."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(a, i), codegen


@njit(parallel=True, error_model="numpy")
def read(u, tasks):
    """Sum of ``u``'s bits (wrapping), ``tasks`` contiguous runs in parallel (on slices from
    0: no negative-index wraparound check, so the loop vectorizes)."""
    n = u.shape[0]
    per = (n + tasks - 1) // tasks
    out = np.zeros(tasks, np.uint32)
    for t in prange(tasks):
        x = u[t * per:min(n, (t + 1) * per)]
        s = np.uint32(0)
        for j in range(x.shape[0]):
            s += x[j]
        out[t] = s
    return out.sum()


@njit(parallel=True, error_model="numpy")
def read_prefetch(u, tasks, ahead):
    """:func:`read` with a prefetch of the line ``ahead`` elements on, once per line."""
    n = u.shape[0]
    per = (n + tasks - 1) // tasks
    out = np.zeros(tasks, np.uint32)
    for t in prange(tasks):
        x = u[t * per:min(n, (t + 1) * per)]
        k = x.shape[0]
        s = np.uint32(0)
        for b in range(k // 16):
            prefetch(x, b * 16 + ahead)
            y = x[b * 16:b * 16 + 16]
            for j in range(16):
                s += y[j]
        for j in range(k // 16 * 16, k):
            s += x[j]
        out[t] = s
    return out.sum()


def main():
    g = np.random.default_rng(0).standard_normal(N).astype(np.float32)
    u = g.view(np.uint32)
    mb = g.nbytes / 1e6
    _threads.ensure_pool()
    finite, norm = all_finite(True), chunked_sum_of_squares(True)
    tasks = n_tasks(True)
    cases = {"read, 1 thread": lambda: read(u, 1), "read, 2 threads": lambda: read(u, 2),
             "finiteness pass, as it runs": lambda: finite(g, 4096, tasks),
             "finiteness pass, 1 chunk at once": lambda: finite(g, 4095, tasks),
             "norm pass, as it runs": lambda: norm(g, 4096, tasks),
             "norm pass, 1 chunk at once": lambda: norm(g, 4095, tasks)}
    for ahead in (256, 1024, 4096):
        cases[f"read + prefetch {ahead} ahead"] = lambda a=ahead: read_prefetch(u, 2, a)
    # interleaved, one call each per round: the VM's bandwidth drifts
    times = dict(zip(cases, interleaved_rounds(list(cases.values()), 0, ROUNDS)))
    print(f"1. / 2. passes over {mb:.0f} MB (medians of {ROUNDS} interleaved rounds):")
    for k, v in times.items():
        t = float(np.median(v))
        print(f"  {k:36s} {t * 1e3:7.3f} ms  {mb / t / 1e3:5.1f} GB/s")

    other = np.ones(3 * N, np.float32).view(np.uint32)      # 120 MB: evicts the caches
    read(other, 2)
    print("3. the gradient's tail: cold vs right after a full pass over the gradient:")
    for frac in (0.2, 0.4, 0.6, 0.8):
        tail = u[int(N * (1 - frac)):]
        cold, warm = [], []
        for _ in range(9):
            read(other, 2)
            t0 = time.perf_counter()
            read(tail, 2)
            cold.append(time.perf_counter() - t0)
            read(other, 2)
            read(u, 2)
            t0 = time.perf_counter()
            read(tail, 2)
            warm.append(time.perf_counter() - t0)
        c, w = float(np.median(cold)), float(np.median(warm))
        tmb = tail.nbytes / 1e6
        print(f"  tail {tmb:3.0f} MB: cold {c * 1e3:.3f} ms ({tmb / c / 1e3:.0f} GB/s), "
              f"after the pass {w * 1e3:.3f} ms ({tmb / w / 1e3:.0f} GB/s)")


if __name__ == "__main__":
    main()
