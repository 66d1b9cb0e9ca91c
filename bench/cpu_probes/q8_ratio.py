"""CPU probe: the 8-bit step of Adam, RMSprop and Momentum against the same optimizer's
float32-state step (float32 parameters), interleaved in one process, as the median of
per-round ratios (float32 time / 8-bit time: below 1, the 8-bit step is slower). Run it on two
commits in alternating processes for a before/after.

    python bench/cpu_probes/q8_ratio.py [n] [serial|parallel] [rounds]   (from the repo root)
"""
import sys

import numpy as np

from fastopt import registry
from fastopt._step import step
from fastopt.benchmarks import interleaved_rounds, round_ratio


def main(n=10_000_000, mode="parallel", rounds=12):
    par = mode == "parallel"
    out = []
    for name in ("adam", "rmsprop", "momentum"):
        spec = registry.get(name)
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n).astype(np.float32)
        g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
        b8 = spec.buffers_cls.zeros(p.copy(), g, state_dtype="int8", min_8bit_size=0)
        b32 = spec.buffers_cls.zeros(p.copy(), g)
        steps = [lambda b=b: step(spec, b, lr=1e-3, parallel=par) for b in (b8, b32)]
        for s in steps:
            s()
        t = interleaved_rounds(steps, 0, rounds)
        out.append(f"{name} 8-bit {np.median(t[0]) * 1e3:.3f} ms, float32 state "
                   f"{np.median(t[1]) * 1e3:.3f} ms: {round_ratio(t[1], t[0]):.3f}x")
    print(f"n={n} {mode}: " + " | ".join(out))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(*([int(x) for x in a[:1]] + a[1:2] + [int(x) for x in a[2:3]]))
