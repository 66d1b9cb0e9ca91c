"""The CPU probes' timing: callables run in interleaved rounds (each twice first, to compile
and warm up), so a VM's bandwidth drift hits every case of a round alike."""
import time


def interleaved(steps, rounds):
    """``{name: [seconds per round]}`` for the callables ``steps`` (a dict)."""
    for f in steps.values():
        f()
        f()
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, f in steps.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times
