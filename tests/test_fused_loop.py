"""Training-loop options inside the step (issue 11, first part): ``grad_scale`` (unscale),
``max_grad_norm`` (global-norm clipping) and ``skip_nonfinite``, for every registered
optimizer: CPU == NumPy bitwise, equal to doing it by hand, thread-count independent, torch
parity for clip-then-step, and bad values refused before any write."""
import math

import numpy as np
import pytest

from fastopt import grad_norm, registry
from helpers import (DTYPES, SPECS, assert_buffers_bitwise, assert_unchanged, clone, combos,
                     full_kwargs, make_buffers, new_grad, snapshot, step_fn)

LOOPS = [dict(max_grad_norm=0.5), dict(grad_scale=1024.0), dict(max_grad_norm=0.5,
         grad_scale=64.0, skip_nonfinite=True), dict(skip_nonfinite=True),
         dict(max_grad_norm=1e9)]
CASES = [(s, c, loop) for s in SPECS for c in combos(s)[::3] for loop in LOOPS]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("spec,combo,loop", CASES, ids=[
    f"{s.name}-{'-'.join(f'{k}={v}' for k, v in c.items())}-{l}" for s, c, l in CASES])
def test_cpu_equals_numpy_bitwise_with_loop_options(spec, combo, loop, dtype):
    kw = full_kwargs(spec, **combo)
    a = make_buffers(spec, 301, dtype, combo)
    b = clone(a)
    rng = np.random.default_rng(1)
    for _ in range(4):
        new_grad(a, rng)
        b.grad[...] = a.grad
        step_fn(spec)(a, **kw, **loop, backend="cpu")
        step_fn(spec)(b, **kw, **loop, backend="numpy")
        assert_buffers_bitwise(a, b, f"step {a.step}")
        assert a.grad_norm == b.grad_norm


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_clip_and_unscale_equal_doing_it_by_hand(spec):
    kw = full_kwargs(spec)
    a = make_buffers(spec, 5000, np.float32, {})
    b = clone(a)
    rng = np.random.default_rng(2)
    for _ in range(3):
        new_grad(a, rng)
        a.grad *= 100.0
        b.grad[...] = a.grad
        step_fn(spec)(a, **kw, max_grad_norm=2.0, grad_scale=8.0)
        norm = grad_norm(b.grad) / 8.0
        factor = (1.0 / 8.0) * min(1.0, 2.0 / (norm + 1e-6))
        b.grad[...] = b.grad * np.float32(factor)
        step_fn(spec)(b, **kw)
        assert_buffers_bitwise(a, b, f"step {a.step}")
        assert a.grad_norm == norm and not a.found_inf


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_skip_nonfinite_writes_nothing_and_counts(spec):
    kw = full_kwargs(spec)
    b = make_buffers(spec, 40, np.float32, {})
    rng = np.random.default_rng(3)
    new_grad(b, rng)
    step_fn(spec)(b, **kw, skip_nonfinite=True)
    for bad in (np.nan, np.inf, -np.inf):
        new_grad(b, rng)
        b.grad[7] = bad
        snap = snapshot(b)
        step_fn(spec)(b, **kw, skip_nonfinite=True)
        assert_unchanged(b, snap)
        assert b.found_inf and b.grad_norm is None   # skip alone: finiteness, no norm
    assert b.skipped_steps == 3 and b.step == 1
    new_grad(b, rng)
    step_fn(spec)(b, **kw, skip_nonfinite=True)
    assert b.step == 2 and not b.found_inf
    b.grad[3] = np.inf                # with clipping too: the norm is computed, inf
    snap = snapshot(b)
    step_fn(spec)(b, **kw, skip_nonfinite=True, max_grad_norm=1.0)
    assert_unchanged(b, snap)
    assert b.found_inf and not math.isfinite(b.grad_norm) and b.skipped_steps == 4
    b.grad[0] = np.nan                        # without skip: propagates, as in torch
    step_fn(spec)(b, **kw, max_grad_norm=1.0)
    assert np.isnan(b.param).any() and b.step == 3


@pytest.mark.parametrize("bad, match", [(dict(max_grad_norm=0.0), "max_grad_norm"),
                                        (dict(max_grad_norm=-1.0), "max_grad_norm"),
                                        (dict(max_grad_norm=float("nan")), "max_grad_norm"),
                                        (dict(max_grad_norm="1"), "max_grad_norm"),
                                        (dict(grad_scale=0.0), "grad_scale"),
                                        (dict(grad_scale=float("inf")), "grad_scale"),
                                        (dict(skip_nonfinite=1), "skip_nonfinite")])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_bad_loop_options_are_refused_before_any_write(spec, bad, match):
    b = make_buffers(spec, 10, np.float32, {})
    new_grad(b, np.random.default_rng(0))
    snap = snapshot(b)
    with pytest.raises((TypeError, ValueError), match=match):
        step_fn(spec)(b, **full_kwargs(spec), **bad)
    assert_unchanged(b, snap)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_clip_then_adam_matches_torch(dtype):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    spec = registry.get("adam")
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal(300).astype(dtype)
    b = spec.buffers_cls.zeros(p0.copy(), np.zeros(300, dtype))
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.Adam([tp], lr=1e-2)
    for _ in range(100):
        g = (rng.standard_normal(300) * 10).astype(dtype)
        b.grad[...] = g * 256
        step_fn(spec)(b, lr=1e-2, max_grad_norm=1.0, grad_scale=256.0)
        tp.grad = torch.from_numpy(g * 256) / 256
        torch.nn.utils.clip_grad_norm_([tp], 1.0)
        opt.step()
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(b.param, tp.detach().numpy(), **tol)


def test_skip_and_loss_scaler_match_torch_grad_scaler():
    """GradScaler-style mixed precision: scaled gradients, some with inf; torch's
    GradScaler.step skips those steps and update() backs off, fastopt's skip_nonfinite and
    LossScaler do the same: same skipped steps, same scale sequence, same parameters."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from fastopt import LossScaler
    rng = np.random.default_rng(6)
    p0 = rng.standard_normal(200).astype(np.float32)
    b = registry.get("adam").buffers_cls.zeros(p0.copy(), np.zeros(200, np.float32))
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.Adam([tp], lr=1e-2)
    kw = dict(init_scale=2.0 ** 10, growth_interval=3)
    ts, fs = torch.amp.GradScaler("cpu", **kw), LossScaler(**kw)
    for i in range(20):
        g = rng.standard_normal(200).astype(np.float32)
        scaled = g * np.float32(fs.scale)
        if i in (4, 5, 11):
            scaled[i] = np.inf if i != 5 else np.nan
        b.grad[...] = scaled
        fastopt_scale = fs.scale
        step_fn(registry.get("adam"))(b, lr=1e-2, grad_scale=fastopt_scale,
                                      skip_nonfinite=True)
        fs.update(b.found_inf)
        tp.grad = torch.from_numpy(scaled.copy())
        ts.scale(torch.ones(()))                     # torch's scaler starts on first use
        ts.step(opt)
        ts.update()
        assert ts.get_scale() == fs.scale, i
    assert b.skipped_steps == 3 and b.step == 17
    np.testing.assert_allclose(b.param, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_clipping_does_not_depend_on_the_thread_count(spec, monkeypatch):
    import numba
    from fastopt import config
    kw = full_kwargs(spec)
    results = []
    for threshold, threads in ((1 << 62, 1), (0, 1), (0, numba.config.NUMBA_NUM_THREADS)):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", threshold)
        numba.set_num_threads(threads)
        b = make_buffers(spec, 20_011, np.float32, {})
        rng = np.random.default_rng(5)
        for _ in range(3):
            new_grad(b, rng)
            step_fn(spec)(b, **kw, max_grad_norm=0.3)
        results.append(b)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for other in results[1:]:
        assert_buffers_bitwise(results[0], other, "serial vs parallel, 1 vs all threads")
