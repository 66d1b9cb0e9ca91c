"""CPU probe: the cost of ``skip_nonfinite`` and of ``max_grad_norm`` over a plain Adam step
(float32, 1e7 parameters by default), as the medians of per-round ratios over many interleaved
rounds: the three steps alone, one call each per round, where ``fastopt.loopbench``
(``python -m fastopt bench``) times nine cases for a quarter second each (on a VM whose
bandwidth drifts by ~10% within a minute its ratios moved by several percent from run to run).
To compare two versions, run this in alternating processes on both checkouts.

    python bench/cpu_probes/loop_ratios.py [n] [rounds]      (from the repository root)
"""
import sys

import numpy as np

import fastopt
from fastopt.benchmarks import interleaved_rounds, round_ratio


def main(n=10_000_000, rounds=60):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    bufs = {k: fastopt.AdamBuffers.zeros(p.copy(), g.copy()) for k in ("plain", "skip", "clip")}
    steps = {"plain": lambda: fastopt.adam_step(bufs["plain"], lr=1e-3),
             "skip": lambda: fastopt.adam_step(bufs["skip"], lr=1e-3, skip_nonfinite=True),
             "clip": lambda: fastopt.adam_step(bufs["clip"], lr=1e-3, max_grad_norm=1.0)}
    times = dict(zip(steps, interleaved_rounds(list(steps.values()), 0, rounds)))
    print(f"n={n}, {rounds} rounds: plain step {np.median(times['plain']) * 1e3:.2f} ms; "
          + ", ".join(f"{k} {round_ratio(times[k], times['plain']):.3f}x"
                      for k in ("skip", "clip")))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
