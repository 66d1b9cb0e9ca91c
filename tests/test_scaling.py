"""grad_norm (deterministic, bitwise equal to its reference for any thread count) and
LossScaler (the scale sequence of torch's GradScaler, bit for bit)."""
import numba
import numpy as np
import pytest

from fastopt import config
from fastopt.scaling import LossScaler, grad_norm, grad_norm_reference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 4095, 4096, 4097, 16_384, 36_871, 300_001])
def test_grad_norm_is_bitwise_its_reference_for_any_thread_count(n, dtype, monkeypatch):
    g = np.random.default_rng(n).standard_normal(n).astype(dtype)
    want = grad_norm_reference(g)
    got = []
    for threshold in (1 << 62, 0):                 # serial and parallel twins
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", threshold)
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            got.append(grad_norm(g))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert all(x == want for x in got), (got, want)
    assert want == pytest.approx(float(np.linalg.norm(g.astype(np.float64))), rel=1e-12)


def test_grad_norm_shapes_and_errors():
    g = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert grad_norm(g) == grad_norm_reference(g) == pytest.approx(np.linalg.norm(g))
    with pytest.raises(TypeError, match="int64"):
        grad_norm(np.arange(3))
    with pytest.raises(TypeError):
        grad_norm([1.0, 2.0])
    assert np.isnan(grad_norm(np.array([1.0, np.nan])))
    assert np.isinf(grad_norm(np.array([1.0, np.inf], np.float32)))


PATTERN = ([False] * 7 + [True] + [False] * 3 + [True, True] + [False] * 20 + [True]
           + [False] * 9)


@pytest.mark.parametrize("kw", [{}, dict(init_scale=3.0, growth_factor=1.5,
                                          backoff_factor=0.3, growth_interval=4)])
def test_loss_scaler_equals_torch_grad_scaler_update(kw):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    kw = dict(dict(init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                   growth_interval=3), **kw)
    ours = LossScaler(**kw)
    scale = torch.full((), kw["init_scale"], dtype=torch.float32)
    tracker = torch.zeros((), dtype=torch.int32)
    for found in PATTERN:
        # the kernel GradScaler.update calls
        torch._amp_update_scale_(scale, tracker, torch.full((), float(found)),
                                 kw["growth_factor"], kw["backoff_factor"],
                                 kw["growth_interval"])
        got = ours.update(found)
        assert np.float32(got).tobytes() == scale.numpy().tobytes(), (found, got, scale)
        assert ours.growth_tracker == int(tracker)


def test_loss_scaler_state_and_errors():
    s = LossScaler(init_scale=4.0, growth_interval=2)
    s.update(False)
    t = LossScaler()
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict() and t.update(False) == 8.0
    for bad in (dict(init_scale=0.0), dict(growth_factor=1.0), dict(backoff_factor=1.0),
                dict(growth_interval=0), dict(growth_interval=True)):
        with pytest.raises((TypeError, ValueError)):
            LossScaler(**bad)
    with pytest.raises(TypeError):
        s.update(1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite_finds_every_non_finite_element(dtype, monkeypatch):
    """The finiteness pass of skip_nonfinite without clipping: any inf/NaN at any position
    (vector body, tail of a chunk, each of the chunks read side by side, a full chunk after
    them, last chunk), serial and parallel; huge finite values are finite (their squares
    would overflow the norm)."""
    from fastopt import config
    from fastopt.scaling import all_finite
    n = 9 * 4096 + 77
    g = np.random.default_rng(0).standard_normal(n).astype(dtype)
    for threshold in (1 << 30, 16):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", threshold)
        assert all_finite(g) and all_finite(g.reshape(1, -1)) and all_finite(g[:0])
        for pos in (0, 1, 63, 64, 4095, 4096, 2 * 4096 + 9, 4 * 4096 - 1, 7 * 4096 + 100,
                    8 * 4096, n - 78, n - 1):
            for bad in (np.nan, np.inf, -np.inf):
                h = g.copy()
                h[pos] = bad
                assert not all_finite(h), (pos, bad)
        h = g.copy()
        h[:] = np.finfo(dtype).max
        assert all_finite(h)


def test_skip_alone_does_not_skip_a_finite_gradient_whose_norm_overflows():
    import fastopt
    p = np.zeros(4)
    g = np.full(4, 1e300)          # finite; its sum of squares overflows float64
    b = fastopt.SGDBuffers.zeros(p, g)
    fastopt.sgd_step(b, lr=1e-300, skip_nonfinite=True)
    assert b.step == 1 and not b.found_inf and np.all(b.param == -1.0)


def _frozen_ranges(rng, n, k):
    """Up to ``k`` disjoint, merged ranges ``[lo, hi)`` of ``[0, n)``, in order."""
    edges = np.unique(rng.integers(0, n + 1, size=2 * k))
    pairs = edges[:edges.size // 2 * 2].reshape(-1, 2)
    return [(int(a), int(b)) for a, b in pairs if b > a]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_passes_leave_frozen_elements_out_bit_for_bit(dtype, monkeypatch):
    """A step with frozen groups reads none of their gradient: the norm pass equals the
    reference over the gradient with the frozen elements zero, bit for bit, serial and
    parallel, any thread count (chunks all stepped, all frozen and mixed, the streams of a
    task's stepped stretch, a last partial chunk); the finiteness pass sees a NaN or inf in a
    stepped element only; nothing frozen equals the plain passes."""
    from fastopt.scaling import (FrozenPlan, all_finite, sum_of_squares,
                                 sum_of_squares_frozen_reference)
    rng = np.random.default_rng(7)
    sizes = [0, 5, 4096, 4097, 9 * 4096 + 77, 40 * 4096 + 1000]
    for n in sizes + list(rng.integers(1, 200_000, size=6)):
        n = int(n)
        g = rng.standard_normal(n).astype(dtype)
        layouts = [[], [(0, n)], _frozen_ranges(rng, n, 1), _frozen_ranges(rng, n, 3),
                   _frozen_ranges(rng, n, 12)]
        if n > 4 * 4096:
            layouts.append([(100, 4096), (8192, 3 * 4096 + 5)])     # a chunk in between
        layouts = [[(lo, hi) for lo, hi in f if hi > lo] for f in layouts]
        for frozen in layouts:
            plan = FrozenPlan(n, frozen)
            h = g.copy()
            for lo, hi in frozen:               # junk where nothing is read
                h[lo:hi] = np.nan if hi - lo == 1 else 1e30
                h[lo] = np.inf
            want = sum_of_squares_frozen_reference(h, frozen)
            for threshold in (1 << 62, 0):
                monkeypatch.setattr(config, "PARALLEL_THRESHOLD", threshold)
                for threads in (1, numba.config.NUMBA_NUM_THREADS):
                    numba.set_num_threads(threads)
                    assert sum_of_squares(h, plan) == want, (n, frozen, threshold, threads)
                    assert all_finite(h, plan)
                    if not frozen:
                        assert sum_of_squares(h, plan) == sum_of_squares(h)
                    stepped = [i for i in (0, n // 2, n - 1)
                               if n and not any(lo <= i < hi for lo, hi in frozen)]
                    for i in stepped:
                        bad = h.copy()
                        bad[i] = np.nan
                        assert not all_finite(bad, plan)
                        assert np.isnan(sum_of_squares(bad, plan))
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_a_frozen_plan_shares_the_stepped_chunks_out_equally():
    """The parallel pass's tasks hold equal shares of the stepped elements: with the first
    70% frozen, two tasks both get stepped chunks (cut by element index, one would idle)."""
    from fastopt.scaling import FrozenPlan
    n = 1000 * 4096
    plan = FrozenPlan(n, [(0, 700 * 4096 + 17)])
    assert plan.stepped == n - (700 * 4096 + 17)
    assert list(plan.kind[:700]) == [1] * 700 and plan.kind[700] == 2 and plan.kind[701] == 0
    cuts = plan.cuts(2)
    assert cuts[0] == 0 and cuts[-1] == 1000 and 849 <= cuts[1] <= 851
    assert list(FrozenPlan(n, []).cuts(4)) == [0, 250, 500, 750, 1000]
    every = FrozenPlan(n, [(0, n)])
    assert list(every.kind) == [1] * 1000 and every.stepped == 0
    touching = FrozenPlan(n, [(100, 5000), (5000, 9000), (20000, 20001), (20001, 30000)])
    merged = FrozenPlan(n, [(100, 9000), (20000, 30000)])       # (the sharded step's ranges)
    for k in ("runs", "kind", "first"):
        assert np.array_equal(getattr(touching, k), getattr(merged, k)), k


@pytest.mark.parametrize("loop", [dict(max_grad_norm=0.5), dict(skip_nonfinite=True),
                                  dict(max_grad_norm=0.5, grad_scale=4.0,
                                       skip_nonfinite=True)], ids=str)
def test_a_memmap_gradient_takes_the_host_passes(loop, tmp_path):
    """A gradient in a ``np.memmap`` (an ndarray subclass) is a host array: clipping and the
    finiteness check run on the CPU as for an ndarray, with the same bits (they took the
    device path and raised without a GPU, 2026-11-29)."""
    import fastopt
    rng = np.random.default_rng(4)
    values = (rng.standard_normal(5000) * 3).astype(np.float32)
    g = np.memmap(tmp_path / "grad", dtype=np.float32, mode="w+", shape=values.shape)
    g[:] = values
    mapped = fastopt.AdamBuffers.zeros(np.ones(5000, np.float32), g)
    plain = fastopt.AdamBuffers.zeros(np.ones(5000, np.float32), values.copy())
    for b in (mapped, plain):
        fastopt.adam_step(b, **loop)
    assert mapped.param.tobytes() == plain.param.tobytes()
    assert mapped.grad_norm == plain.grad_norm and mapped.found_inf == plain.found_inf
