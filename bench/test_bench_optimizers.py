"""Every optimizer x size x implementation, checked against the reference, then timed.

Groups are ``optimizer|size``; ``extra_info`` records the bytes moved per element, GB/s and
the fraction of the traffic-equal kernel's speed (the machine's attainable roofline for that
traffic, measured in this session). JIT compilation happens in the correctness check, before
the timed rounds.
"""
import importlib.util

import numpy as np
import pytest

from fastopt import benchmarks as B
from fastopt import registry

SPECS = list(registry.REGISTRY.values())


def _sizes():
    out = []
    for n in B.SIZES:
        marks = [pytest.mark.slow] if n >= 10_000_000 else []
        out.append(pytest.param(n, marks=marks, id=str(n)))
    return out


def _roofline(cache, w):
    """The faster of the serial and parallel traffic-equal kernels, timed interleaved."""
    key = (w.arrays_used(), w.n, w.dtype)
    if key not in cache:
        cache[key] = min(B.time_interleaved([B.traffic_runner(w, parallel=False),
                                             B.traffic_runner(w, parallel=True)],
                                            min_time=0.1))
    return cache[key]


@pytest.mark.parametrize("impl", B.IMPLEMENTATIONS)
@pytest.mark.parametrize("n", _sizes())
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_step(benchmark, spec, n, impl, roofline_cache):
    if impl == "optax" and importlib.util.find_spec("optax") is None:
        pytest.skip("optax is not installed")       # before building a 1e7 workload for it
    dtype = np.float32
    w = B.Workload(spec, n, dtype)
    try:
        runner = B.make_runner(impl, w)
    except B.Unavailable as e:
        pytest.skip(str(e))
    B.check_runner(runner)
    benchmark.group = w.name
    benchmark.name = impl
    benchmark(runner.step)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.median:
        t = stats.stats.median
        gbs = w.bytes_per_element() * n / t / 1e9
        benchmark.extra_info.update(
            bytes_per_element=w.bytes_per_element(), gb_per_s=round(gbs, 3),
            roofline_fraction=round(_roofline(roofline_cache, w) / t, 4), dtype="float32")


@pytest.mark.parametrize("impl", ["blog", "numpy", "cpu-serial", "cpu-parallel"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_mlp_step_float64(benchmark, spec, impl):
    """The blog's own setting: float64, the MLP's ten tensors (blog) vs one flat arena."""
    w = B.Workload(spec, B.MLP_SIZE, np.float64)
    try:
        runner = B.make_runner(impl, w)
    except B.Unavailable as e:
        pytest.skip(str(e))
    B.check_runner(runner)
    benchmark.group = f"{spec.name}|mlp|float64"
    benchmark.name = impl
    benchmark(runner.step)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_traffic_kernel(benchmark, spec):
    """The roofline probe itself, at 1e6 elements, for the report."""
    w = B.Workload(spec, 1_000_000, np.float32)
    benchmark.group = f"{spec.name}|1000000"
    benchmark.name = "traffic-equal"
    benchmark(B.traffic_runner(w))


STATEFUL = [s for s in SPECS if s.state]


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("n", [pytest.param(B.MLP_SIZE, id=str(B.MLP_SIZE)),
                               pytest.param(10_000_000, marks=[pytest.mark.slow],
                                            id="10000000")])
@pytest.mark.parametrize("spec", STATEFUL, ids=lambda s: s.name)
def test_state_precision(benchmark, spec, n, state_dtype):
    """float32 vs bfloat16 vs 8-bit optimizer state (issue 13), CPU (parallel twin at 1e7), checked
    against the reference with the same state precision first. 1e7 only for Adam (the
    target's case); every stateful optimizer at the MLP's size."""
    if n == 10_000_000 and spec.name != "adam":
        pytest.skip("1e7 state-precision rows: Adam only (runtime)")
    w = B.Workload(spec, n, np.float32,
                   state_dtype=None if state_dtype == "float32" else state_dtype)
    runner = B.make_runner("cpu-parallel" if n >= 10_000_000 else "cpu", w)
    B.check_runner(runner)
    benchmark.group = f"{spec.name}|{n}|state"
    benchmark.name = state_dtype
    scales = sum(a.nbytes for a in (runner.b.state_absmax or {}).values())
    benchmark.extra_info.update(bytes_per_element=w.bytes_per_element(),
                                state_bytes=int(scales + sum(a.nbytes for k, a in
                                                             runner.b.arrays().items()
                                                             if k not in ("param", "grad"))))
    benchmark(runner.step)


@pytest.mark.parametrize("n", [pytest.param(B.MLP_SIZE, id=str(B.MLP_SIZE)),
                               pytest.param(10_000_000, marks=[pytest.mark.slow],
                                            id="10000000")])
@pytest.mark.parametrize("peer", [label for label, _, _ in B.PEERS_8BIT])
def test_adam8bit_peer(benchmark, peer, n):
    """The 8-bit Adam peers on this CPU, in the same group as fastopt's Adam state rows
    (``test_state_precision``): bitsandbytes' Adam8bit and TorchAO's AdamW8bit (weight decay 0,
    Adam's update), when they import and step here; skipped with the reason otherwise.
    Optional: ``pip install bitsandbytes torchao``."""
    skipped = []
    found = [r for r in B._adam8bit_peers(n, skipped) if r[0] == peer]
    if not found:
        pytest.skip(dict(skipped).get(peer, f"{peer} did not run"))
    _, step, state_bytes, size = found[0]
    benchmark.group = f"adam|{n}|state"
    benchmark.name = peer
    benchmark.extra_info.update(state_bytes=state_bytes, size=size)
    benchmark(step)


@pytest.mark.parametrize("n", [pytest.param(B.MLP_SIZE, id=str(B.MLP_SIZE)),
                               pytest.param(10_000_000, marks=[pytest.mark.slow],
                                            id="10000000")])
def test_optax_bf16_peer(benchmark, n):
    """optax's Adam with a bfloat16 first moment (``optax.adam(mu_dtype=bfloat16)``, jitted,
    parameters and state donated), in the same group as fastopt's Adam state rows; skipped
    with the reason when optax does not import. Optional: ``pip install ".[optax]"``."""
    skipped = []
    found = B._optax_bf16_peer(n, skipped)
    if not found:
        pytest.skip(skipped[0][1])
    label, step, state_bytes, size = found[0]
    benchmark.group = f"adam|{n}|state"
    benchmark.name = label
    benchmark.extra_info.update(state_bytes=state_bytes, size=size)
    benchmark(step)
