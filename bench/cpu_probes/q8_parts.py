"""CPU probe: where the 8-bit Adam step's time goes. The block driver of the step (float32
parameters, 8-bit moments, ``kernels/quant8.py``) is compiled again with parts of its source
left out (the encoding of the two moments, their decoding, the optimizer's body, both codecs)
and timed interleaved in one process with the whole driver and the float32-state step. The
variants without a part compute nothing useful; they only time what is left.

    python bench/cpu_probes/q8_parts.py [n] [rounds]      (from the repository root)
"""
import sys

import numpy as np

from fastopt import registry
from fastopt._step import step
from fastopt.benchmarks import interleaved_rounds
from fastopt.kernels import quant8

PARTS = {"whole driver": [], "without encoding": ["quantize_block_t"],
         "without decoding": ["dequantize_block("], "without the body": ["body(a0"],
         "body alone (no codecs)": ["quantize_block_t", "dequantize_block("]}


def captured_driver(spec, b, steps=3, **kw):
    """Step the 8-bit buffers ``b`` of ``spec`` ``steps`` times (``kw``: the step's
    arguments; ``lr=1e-3`` by default) with ``quant8.driver`` spied on. Returns the driver's
    make arguments ``(body, n_arrays, quantized, parallel, copy, table)`` and the arguments
    of its last call."""
    seen = {}
    real = quant8.driver

    def spy(body, n_arrays, quantized, parallel, copy=False, table=False):
        seen["make"] = (body, n_arrays, quantized, parallel, copy, table)
        drv = real(*seen["make"])

        def call(*args):
            seen["args"] = args
            return drv(*args)
        return call

    quant8.driver = spy
    try:
        for _ in range(steps):
            step(spec, b, **dict(dict(lr=1e-3), **kw))
    finally:
        quant8.driver = real
    return seen["make"], seen["args"]


def main(n=10_000_000, rounds=15):
    spec = registry.get("adam")
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    b8 = spec.buffers_cls.zeros(p.copy(), g, state_dtype="int8")
    f32 = spec.buffers_cls.zeros(p.copy(), g)
    make, call_args = captured_driver(spec, b8)
    body, n_arrays, quantized, parallel, copy, table = make
    src = quant8._source(n_arrays, quantized, parallel, copy=copy, table=table)
    scope = dict(np=np, prange=quant8.prange, dequantize_block=quant8.dequantize_block,
                 quantize_block=quant8.quantize_block,
                 quantize_block_t=quant8.quantize_block_t, body=body)
    args = [a.copy() if isinstance(a, np.ndarray) else a for a in call_args]
    fns = []
    for drop in PARTS.values():
        lines = [ln for ln in src.split("\n") if not any(d in ln for d in drop)]
        fn = quant8.compile_generated("\n".join(lines), "q8_driver", scope, parallel, (body,))
        fns.append(lambda fn=fn: fn(*args))
    fns.append(lambda: step(spec, f32, lr=1e-3))
    times = interleaved_rounds(fns, 0, rounds)
    print(f"Adam, n={n}, {'parallel' if parallel else 'serial'}, medians of {rounds} "
          f"interleaved rounds:")
    for label, t in zip(list(PARTS) + ["float32-state step"], times):
        print(f"  {label:24s} {np.median(t) * 1e3:7.2f} ms")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
