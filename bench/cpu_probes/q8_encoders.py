"""CPU probe: the 8-bit block driver on float32 state with its two encoders, timed interleaved
in one process: the first-midpoint table and one comparison (two dependent reads per value;
what float64 state uses) against the one-read table (``fastopt.quantization.encode_table``,
what float32 state uses), same bits checked, and the float32-state step for scale.

    python bench/cpu_probes/q8_encoders.py [optimizer] [n] [serial|parallel] [rounds]
"""
import sys

import numpy as np

from fastopt import quantization as Q, registry
from fastopt._step import step
from fastopt.benchmarks import interleaved_rounds, round_ratio
from fastopt.kernels import quant8
from q8_parts import captured_driver   # this folder (the script's own) is on sys.path


def main(name="adam", n=10_000_000, mode="parallel", rounds=15):
    spec = registry.get(name)
    par = mode == "parallel"
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    b = spec.buffers_cls.zeros(p.copy(), g, state_dtype="int8")
    f32 = spec.buffers_cls.zeros(p.copy(), g)
    make, call_args = captured_driver(spec, b, parallel=par)
    tables = {id(Q.SIGNED.table): Q.SIGNED.first, id(Q.UNSIGNED.table): Q.UNSIGNED.first}
    new_args = list(call_args)
    old_args = [tables.get(id(a), a) for a in new_args]
    new, old = quant8.driver(*make[:5], True), quant8.driver(*make[:5], False)
    state = [i for i, a in enumerate(new_args)      # the arrays a step writes (not tables)
             if isinstance(a, np.ndarray) and id(a) not in tables]
    copies = []
    for drv, args in ((old, old_args), (new, new_args)):
        mine = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        drv(*mine)
        copies.append([mine[i] for i in state])
    same = all(np.array_equal(x, y) for x, y in zip(*copies))
    t = interleaved_rounds([lambda: old(*old_args), lambda: new(*new_args),
                            lambda: step(spec, f32, lr=1e-3, parallel=par)], 0, rounds)
    ms = [np.median(x) * 1e3 for x in t]
    print(f"{name} {mode} n={n}: same bits {same}; first+midpoint {ms[0]:.3f} ms, one-read "
          f"table {ms[1]:.3f} ms ({round_ratio(t[0], t[1]):.3f}x as fast), float32 state "
          f"{ms[2]:.3f} ms (8-bit as fast as float32: {round_ratio(t[2], t[0]):.3f}x before, "
          f"{round_ratio(t[2], t[1]):.3f}x now)")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(*(a[:1] + [int(x) for x in a[1:2]] + a[2:3] + [int(x) for x in a[3:4]]))
