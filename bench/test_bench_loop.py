"""The training-loop options (clipping, skip_nonfinite, parameter groups) fused into the step,
against the plain step and the unfused ways (``fastopt.loopbench``), Adam float32. Each case
is first checked to produce what doing it by hand produces; groups are ``loop|size``."""
import numpy as np
import pytest

from fastopt import benchmarks as B
from fastopt import loopbench

SIZES = [pytest.param(B.MLP_SIZE, id=str(B.MLP_SIZE)),
         pytest.param(10_000_000, marks=[pytest.mark.slow], id="10000000")]
NAMES = list(loopbench.cases(10))


def test_fused_clip_equals_clipping_by_hand():
    import fastopt
    rng = np.random.default_rng(0)
    p = rng.standard_normal(5000).astype(np.float32)
    g = (rng.standard_normal(5000) * 10).astype(np.float32)
    a = fastopt.AdamBuffers.zeros(p.copy(), g.copy())
    b = fastopt.AdamBuffers.zeros(p.copy(), g.copy())
    fastopt.adam_step(a, max_grad_norm=loopbench.MAX_NORM)
    b.grad *= np.float32(loopbench.MAX_NORM / (fastopt.grad_norm(g) + 1e-6))
    fastopt.adam_step(b)
    assert np.array_equal(a.param, b.param)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", SIZES)
def test_loop_option(benchmark, n, name):
    step = loopbench.cases(n)[name]
    step()
    benchmark.group = f"loop|{n}"
    benchmark.name = name
    benchmark(step)


def test_parallel_rows_are_compared_with_the_parallel_step(monkeypatch):
    """At the MLP's size the table also has the parallel plain and grouped steps (the size
    steps serially by default, under the benchmarks' policy too), each parallel row's ratio
    taken against the parallel plain step."""
    monkeypatch.setattr(loopbench, "interleaved_rounds",
                        lambda fns, min_time: [[float(i + 1), 2.0 * (i + 1), 3.0 * (i + 1)]
                                               for i in range(len(fns))])
    rows = loopbench.measure(sizes=(B.MLP_SIZE,))
    by = {r["case"]: r for r in rows}
    parallel = by[loopbench.PARALLEL_PLAIN]
    assert sorted(c for c in by if c.endswith(loopbench.PARALLEL)) == [
        "fastopt step, 10 groups, parallel", loopbench.PARALLEL_PLAIN]
    for r in rows:
        base = parallel if r["case"].endswith(loopbench.PARALLEL) else rows[0]
        assert r["vs_plain_step"] == r["seconds"] / base["seconds"]
    assert parallel["vs_plain_step"] == 1.0 and parallel is not rows[0]
    assert loopbench.PARALLEL_PLAIN not in loopbench.cases(10)


def test_ratios_are_medians_of_per_round_ratios():
    """A ratio compares two cases within each round (the machine's speed drifts between
    rounds): the median of the per-round ratios, not the ratio of the medians."""
    a, b = [1.0, 10.0, 100.0], [1.0, 5.0, 200.0]          # per-round ratios 1, 2, 0.5
    assert B.round_ratio(a, b) == 1.0 and np.median(a) / np.median(b) == 2.0
