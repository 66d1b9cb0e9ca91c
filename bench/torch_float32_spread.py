"""How far apart float32 trainings land after 200 steps, fastopt.torch vs torch.optim and torch
vs itself (issue 14's float32 parity point).

    python bench/torch_float32_spread.py

The torch MLP of ``tests/test_torch_frontend.py`` (784-100-100-100-100-10, embedded MNIST sample,
batch 128, two parameter groups, StepLR), 200 steps in float32, for every torch optimizer
fastopt.torch mirrors (the parity suite's settings). Columns: the largest parameter difference
between torch's for-loop run (2 threads) and fastopt.torch; torch's fused kernel (where it has
one); torch's for-loop with 1 thread (its matmuls block differently); and each float32 run's
distance from torch's float64 run of the same recipe. ``*``: within rtol 1e-4 / atol 1e-6 of
torch's for-loop float32 run.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_torch_frontend import PEERS, train  # noqa: E402

import fastopt.torch as ft  # noqa: E402


def maxdiff(a, b):
    return max(float((p.detach().double() - q.detach().double()).abs().max())
               for p, q in zip(a.parameters(), b.parameters()))


def within(a, b):
    return all(torch.allclose(p.detach(), q.detach().to(p.dtype), rtol=1e-4, atol=1e-6)
               for p, q in zip(a.parameters(), b.parameters()))


def cell(a, b):
    return f"{maxdiff(a, b):.1e}" + ("*" if within(a, b) else " ")


def main(steps=200):
    torch.set_num_threads(2)
    print(f"{'case':<58} {'fastopt':>9} {'fused':>9} {'1 thread':>9} {'torch32-64':>10} "
          f"{'fastopt32-64':>12}")
    for name, kw in PEERS:
        ref, _ = train(getattr(torch.optim, name), kw, steps, torch.float32)
        fo, _ = train(getattr(ft, name), kw, steps, torch.float32)
        ref64, _ = train(getattr(torch.optim, name), kw, steps, torch.float64)
        try:
            fused = cell(ref, train(getattr(torch.optim, name), dict(kw, fused=True), steps,
                                    torch.float32)[0])
        except (TypeError, RuntimeError):
            fused = "-"
        torch.set_num_threads(1)
        one = cell(ref, train(getattr(torch.optim, name), kw, steps, torch.float32)[0])
        torch.set_num_threads(2)
        label = name + " " + ", ".join(f"{k}={v}" for k, v in kw.items())
        print(f"{label:<58} {cell(ref, fo):>9} {fused:>9} {one:>9} {maxdiff(ref, ref64):>10.1e} "
              f"{maxdiff(fo, ref64):>12.1e}", flush=True)
    print("* = within rtol 1e-4 / atol 1e-6 of torch's for-loop float32 run")


if __name__ == "__main__":
    main()
