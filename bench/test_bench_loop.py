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


def test_the_peer_rows_name_the_fused_row_they_compute():
    """Each peer row's extra ratio is against the fastopt row that computes the same thing."""
    assert loopbench.FUSED == {loopbench.TORCH_CLIP: loopbench.CLIP,
                               loopbench.OPTAX_CLIP: loopbench.CLIP,
                               loopbench.TORCH_AMP: loopbench.AMP,
                               loopbench.OPTAX_SKIP: loopbench.SKIP}
    assert {loopbench.CLIP, loopbench.SKIP, loopbench.AMP} <= set(NAMES)


def test_the_grad_scaler_rows_step_alike():
    """The loss-scaling rows: fastopt's fused unscale + skip with its ``LossScaler`` and
    torch's ``GradScaler`` driving ``AdamW(fused=True)`` skip the same steps (scripted inf
    and NaN in the scaled gradient), back off to the same scales and give the same
    parameters. The gradients are ~1e-8 before scaling, where Adam's eps makes the update
    depend on the unscaling (checked: stepping the scaled gradient differs)."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import fastopt
    cases = loopbench.cases(5000)
    ours, theirs = cases[loopbench.AMP], cases[loopbench.TORCH_AMP]
    b, tp = ours.buffers, theirs.param
    unscaled = fastopt.AdamBuffers.zeros(b.param.copy(), np.empty_like(b.grad))
    rng = np.random.default_rng(3)
    for i in range(8):
        g = (rng.standard_normal(5000) * 1e-8).astype(np.float32)
        scaled = g * np.float32(ours.scaler.scale)
        if i in (2, 5):
            scaled[i] = np.inf if i == 2 else np.nan
        b.grad[...] = scaled
        tp.grad.copy_(torch.from_numpy(scaled))
        ours()
        theirs()
        assert theirs.scaler.get_scale() == ours.scaler.scale, i
        if i not in (2, 5):
            unscaled.grad[...] = scaled
            fastopt.adam_step(unscaled, decoupled_weight_decay=True)
    assert b.skipped_steps == 2 and b.step == 6 and ours.scaler.scale == 2.0 ** 14
    np.testing.assert_allclose(b.param, tp.detach().numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(unscaled.param, b.param, rtol=1e-4, atol=1e-6)


def test_a_settling_function_gets_an_untimed_pause_after_its_batch():
    """``interleaved_rounds`` waits ``fn.settle_s`` (or, for a bound method, its instance's)
    after each batch of ``fn`` before the next function's batch, outside both timings: the
    optax peers set it (the case timed right after an optax batch ran up to 1.3x slower)."""
    import time
    log = []

    def a():
        log.append(("a", time.perf_counter()))
    a.settle_s = 0.03

    class Runner:
        settle_s = 0.0

        def step(self):
            log.append(("b", time.perf_counter()))
    b = Runner().step
    assert B.settle_time(a) == 0.03 and B.settle_time(b) == 0.0
    assert B.settle_time(lambda: None) == 0.0
    Runner.settle_s = 0.02
    assert B.settle_time(b) == 0.02
    Runner.settle_s = 0.0
    t = B.interleaved_rounds([a, b], min_time=0.0, min_rounds=3)
    assert all(len(x) == 3 for x in t) and max(t[0]) < 0.03
    timed = log[4:]                                     # after the two calls each to size batches
    gaps = [(x[0], y[1] - x[1]) for x, y in zip(timed, timed[1:])]
    assert all(gap >= 0.03 for who, gap in gaps if who == "a"), gaps
    assert all(gap < 0.03 for who, gap in gaps if who == "b"), gaps


def test_the_optax_rows_settle():
    pytest.importorskip("optax")
    for name in (loopbench.OPTAX_CLIP, loopbench.OPTAX_SKIP, "optax adamw (jit)"):
        assert B.settle_time(loopbench.cases(10)[name]) == B.JAX_SETTLE_S > 0
    [(_, step, _, _)] = B._optax_bf16_peer(10, [])
    assert B.settle_time(step) == B.JAX_SETTLE_S
    runner = B.make_runner("optax", B.Workload(B.registry.get("adam"), 10, np.float32))
    assert B.settle_time(runner.step) == B.JAX_SETTLE_S
