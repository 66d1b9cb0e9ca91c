"""CPU probe: Adam with bfloat16 state against float32 state (float32 parameters, 1e7 by
default), serial and parallel kernels, as medians of per-round ratios over many interleaved
rounds, the two states alone (``fastopt.benchmarks.state_precision_rows`` times six kernels
and the peers for a quarter second each).

    python bench/cpu_probes/state_ratio.py [n] [rounds]      (from the repository root)
"""
import sys

import numpy as np

import fastopt
from fastopt.benchmarks import interleaved_rounds
from fastopt._step import step
from fastopt.adam import SPEC


def main(n=10_000_000, rounds=40):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    bufs = {"float32": fastopt.AdamBuffers.zeros(p.copy(), g),
            "bfloat16": fastopt.AdamBuffers.zeros(p.copy(), g, state_dtype="bfloat16")}
    for parallel in (True, False):
        steps = {k: (lambda b=b: step(SPEC, b, lr=1e-3, parallel=parallel))
                 for k, b in bufs.items()}
        times = dict(zip(steps, interleaved_rounds(list(steps.values()), 0, rounds)))
        ratio = np.array(times["float32"]) / np.array(times["bfloat16"])
        print(f"{'parallel' if parallel else 'serial'}: float32 state "
              f"{np.median(times['float32']) * 1e3:.2f} ms, bfloat16 state "
              f"{np.median(times['bfloat16']) * 1e3:.2f} ms; bfloat16 is "
              f"{np.median(ratio):.3f}x as fast (quartiles {np.percentile(ratio, 25):.3f}-"
              f"{np.percentile(ratio, 75):.3f})")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
