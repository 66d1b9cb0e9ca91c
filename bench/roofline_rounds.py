"""Speed ratios as the median of per-round ratios, for a noisy machine.

    python bench/roofline_rounds.py adadelta,lion,adagrad [--size 10000000] [--rounds 12]
                                    [--peer torch-fused]

For each optimizer (float32, ``fastopt.benchmarks``' workload and runners): fastopt's CPU step
(parallel at 1e6 elements and above, else serial) and its traffic-equal kernel (``--peer``:
also that implementation, e.g. ``torch-fused``) are timed interleaved in each round
(``time_interleaved``); each round gives the ratio traffic-equal time / fastopt time (the
roofline fraction) and peer time / fastopt time; the script prints the median and the
interquartile range of those per-round ratios. On a VM whose bandwidth drifts, one round's
ratio scatters by +-15 %; the median over rounds does not move much (README, "Benchmarks").
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastopt import config  # noqa: E402

config.set_thread_wait("bench")

from fastopt import benchmarks as B  # noqa: E402
from fastopt import registry  # noqa: E402


def rounds(name, n, count, peer=None, min_time=0.2):
    """``{label: [ratio per round]}`` for optimizer ``name`` at ``n`` float32 elements."""
    w = B.Workload(registry.get(name), n, np.float32)
    own = B.make_runner("cpu-parallel" if n >= 1_000_000 else "cpu-serial", w)
    fns = [own.step, B.traffic_runner(w, n >= 1_000_000)]
    if peer:
        try:
            fns.append(B.make_runner(peer, w).step)
        except B.Unavailable as e:         # (the peer has no such variant of this optimizer)
            print(f"{name}: no {peer} ({e})", flush=True)
            peer = None
    for fn in fns:
        fn()
    out = {"roofline": [], peer: []} if peer else {"roofline": []}
    for _ in range(count):
        t = B.time_interleaved(fns, min_time=min_time)
        out["roofline"].append(t[1] / t[0])
        if peer:
            out[peer].append(t[2] / t[0])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("optimizers", help="comma-separated registry names")
    ap.add_argument("--size", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--peer", default=None, help="an implementation of fastopt.benchmarks "
                    "(torch-fused, torch-foreach, ...) timed in the same rounds")
    args = ap.parse_args(argv)
    if args.peer:
        import numba
        import torch
        torch.set_num_threads(numba.get_num_threads())
    for name in args.optimizers.split(","):
        for label, r in rounds(name, args.size, args.rounds, args.peer).items():
            q1, med, q3 = np.percentile(r, [25, 50, 75])
            what = "traffic-equal / fastopt" if label == "roofline" else f"{label} / fastopt"
            print(f"{name:>9} {args.size:>10,} {what:<26} median {med:.3f}  "
                  f"IQR {q1:.3f}-{q3:.3f}  ({len(r)} rounds)", flush=True)


if __name__ == "__main__":
    main()
