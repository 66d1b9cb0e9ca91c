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
