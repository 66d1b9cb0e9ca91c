"""CUDA kernels under Numba's CUDA simulator, against the CPU kernels.

Runs only with NUMBA_ENABLE_CUDASIM=1 set before numba is imported; tests/test_cuda.py
launches this file in such a subprocess (with 32 threads per block so that 3 * tpb + 1 stays
small). Tolerance: 2 ulp in float32, 1 ulp in float64.
"""
import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 (run via tests/test_cuda.py)",
                allow_module_level=True)

from numba import cuda  # noqa: E402

import fastopt  # noqa: E402
from fastopt import config, registry, testinfo  # noqa: E402

SPECS = list(registry.REGISTRY.values())
CASES = [(s, c) for s in SPECS for c in testinfo.option_combinations(s)]
ULP = {np.float32: 2, np.float64: 1}


def _ulp_diff(a, b):
    it = np.int32 if a.dtype == np.float32 else np.int64
    ai, bi = a.view(it).astype(np.int64), b.view(it).astype(np.int64)
    # map the sign-magnitude float order onto a monotonic integer line
    ai = np.where(ai < 0, np.iinfo(it).min - ai, ai)
    bi = np.where(bi < 0, np.iinfo(it).min - bi, bi)
    return np.abs(ai - bi)


def _pair(spec, combo, dtype, n, seed=0):
    kw = dict(spec.defaults, **combo)
    hp = spec.validate(kw)
    rng = np.random.default_rng(seed)
    host = spec.buffers_cls.zeros(rng.standard_normal(n).astype(dtype),
                                  np.zeros(n, dtype),
                                  **spec.state_options(hp))
    dev = fastopt.to_device(host)
    return kw, host, dev, rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("spec,combo", CASES, ids=[
    f"{s.name}-" + "-".join(f"{k}={v}" for k, v in c.items()) for s, c in CASES])
def test_cuda_matches_cpu(spec, combo, dtype):
    tpb = config.CUDA_THREADS_PER_BLOCK
    assert tpb == 32
    fn = registry.step_function(spec)
    for n in (1, 3 * tpb + 1):
        kw, host, dev, rng = _pair(spec, combo, dtype, n)
        for _ in range(3):
            g = rng.standard_normal(n).astype(dtype)
            host.grad[...] = g
            dev.grad.copy_to_device(g)
            fn(host, backend="cpu", **kw)
            fn(dev, **kw)                      # backend=None chooses CUDA
        back = fastopt.to_host(dev)
        assert back.step == host.step == 3
        for name, a in host.arrays().items():
            b = back.arrays()[name]
            assert b.dtype == a.dtype
            worst = int(_ulp_diff(a, b).max())
            assert worst <= ULP[dtype], f"{name}: {worst} ulp"


def test_zeros_allocates_state_on_the_device():
    p = cuda.to_device(np.ones(10, np.float32))
    g = cuda.to_device(np.ones(10, np.float32))
    b = fastopt.AdamBuffers.zeros(p, g, amsgrad=True)
    for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        arr = getattr(b, name)
        assert not isinstance(arr, np.ndarray)
        assert (arr.copy_to_host() == 0).all()
    fastopt.adam_step(b, amsgrad=True, lr=0.1)
    assert (p.copy_to_host() < 1).all()


def test_mixing_host_and_device_raises_before_writing():
    p = cuda.to_device(np.ones(10, np.float32))
    g = np.ones(10, np.float32)
    with pytest.raises(TypeError, match="same device"):
        fastopt.SGDBuffers.zeros(p, g)
    b = fastopt.SGDBuffers.zeros(p, cuda.to_device(g))
    b.grad = g  # swapped for a host array after creation
    with pytest.raises(TypeError, match="same device"):
        fastopt.sgd_step(b, lr=1.0)
    assert (p.copy_to_host() == 1).all() and b.step == 0


def test_explicit_backends_with_device_arrays():
    p = cuda.to_device(np.ones(4, np.float64))
    b = fastopt.MomentumBuffers.zeros(p, cuda.to_device(np.ones(4)))
    with pytest.raises(ValueError, match="needs host"):
        fastopt.momentum_step(b, backend="cpu")
    with pytest.raises(ValueError, match="needs host"):
        fastopt.momentum_step(b, backend="numpy")
    fastopt.momentum_step(b, backend="cuda", lr=0.5, momentum=0.0)
    np.testing.assert_array_equal(p.copy_to_host(), 0.5)


def test_device_dtype_and_shape_checks():
    p = cuda.to_device(np.ones(4, np.float32))
    with pytest.raises(TypeError, match="dtype"):
        fastopt.SGDBuffers.zeros(p, cuda.to_device(np.ones(4, np.float64)))
    with pytest.raises(ValueError, match="shape"):
        fastopt.SGDBuffers.zeros(p, cuda.to_device(np.ones(5, np.float32)))
    with pytest.raises(TypeError, match="int32"):
        fastopt.SGDBuffers.zeros(cuda.to_device(np.ones(4, np.int32)),
                                 cuda.to_device(np.ones(4, np.int32)))
    with pytest.raises(ValueError, match="share memory"):
        fastopt.SGDBuffers.zeros(p, p)


def test_checkpoint_of_device_buffers(tmp_path):
    p = cuda.to_device(np.arange(6, dtype=np.float32))
    b = fastopt.AdamBuffers.zeros(p, cuda.to_device(np.ones(6, np.float32)))
    fastopt.adam_step(b)
    fastopt.save_checkpoint(tmp_path / "d.ckpt", b)
    host = fastopt.load_checkpoint(tmp_path / "d.ckpt")
    np.testing.assert_array_equal(host.param, p.copy_to_host())
    assert host.step == 1


def test_profile_refuses_to_time_under_the_simulator(tmp_path, capsys):
    from fastopt.__main__ import main
    rc = main(["profile", "--sizes", "1000", "--out", str(tmp_path)])
    assert rc == 2
    assert "simulator" in capsys.readouterr().err


def test_device_steps_validate_once_and_again_when_an_array_changes(monkeypatch):
    from fastopt import _cuda_backend
    calls = []
    original = _cuda_backend.check_device_group

    def counting(*a, **k):
        calls.append(1)
        return original(*a, **k)
    monkeypatch.setattr(_cuda_backend, "check_device_group", counting)
    p = cuda.to_device(np.ones(40, np.float32))
    b = fastopt.AdamBuffers.zeros(p, cuda.to_device(np.full(40, 0.5, np.float32)))
    calls.clear()
    for _ in range(5):
        fastopt.adam_step(b, lr=1e-3)
    assert len(calls) == 1                      # validated once, then the prepared step
    b.grad = cuda.to_device(np.full(40, 0.25, np.float32))
    fastopt.adam_step(b, lr=1e-3)
    assert len(calls) == 2 and b.step == 6
    b.grad = cuda.to_device(np.full(41, 0.25, np.float32))   # wrong shape: refused
    with pytest.raises(ValueError, match="shape"):
        fastopt.adam_step(b, lr=1e-3)
    assert b.step == 6


def test_a_scheduled_lr_on_the_device_matches_the_cpu():
    from fastopt import schedules
    sched = schedules.exponential(0.05, 0.5)
    host = fastopt.AdamBuffers.zeros(np.ones(40, np.float32), np.full(40, 0.5, np.float32))
    dev = fastopt.to_device(host)
    for _ in range(4):
        fastopt.adam_step(host, lr=sched, backend="cpu")
        fastopt.adam_step(dev, lr=sched)
    back = fastopt.to_host(dev)
    assert back.step == host.step == 4
    assert int(_ulp_diff(host.param, back.param).max()) <= ULP[np.float32]


def test_grad_scale_on_the_device_matches_the_cpu_and_clipping_says_not_yet():
    host = fastopt.AdamBuffers.zeros(np.ones(40, np.float32), np.full(40, 512.0, np.float32))
    dev = fastopt.to_device(host)
    for _ in range(3):
        fastopt.adam_step(host, grad_scale=1024.0, backend="cpu")
        fastopt.adam_step(dev, grad_scale=1024.0)
    back = fastopt.to_host(dev)
    assert int(_ulp_diff(host.param, back.param).max()) <= ULP[np.float32]
    with pytest.raises(ValueError, match="not implemented for CUDA"):
        fastopt.adam_step(dev, max_grad_norm=1.0)
    assert fastopt.to_host(dev).step == 3
