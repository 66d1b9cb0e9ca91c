"""backend="cpu" (Numba) must equal backend="numpy" (reference) bit for bit."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastopt import config
from helpers import (DTYPES, SPECS, assert_buffers_bitwise, clone, combos, full_kwargs,
                     make_buffers, new_grad, step_fn)

CASES = [(spec, combo) for spec in SPECS for combo in combos(spec)]


def sizes():
    return [0, 1, 7, config.PARALLEL_THRESHOLD + 1, 1_000_003]


def _run_pair(spec, combo, dtype, n, steps=10, seed=0, hp=None):
    kwargs = dict(combo, **(hp or {}))
    a = make_buffers(spec, n, dtype, kwargs, seed=seed)
    b = clone(a)
    rng_a, rng_b = np.random.default_rng(seed + 1), np.random.default_rng(seed + 1)
    fn = step_fn(spec)
    for _ in range(steps):
        new_grad(a, rng_a)
        new_grad(b, rng_b)
        fn(a, backend="cpu", **kwargs)
        fn(b, backend="numpy", **kwargs)
    return a, b


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("spec,combo", CASES,
                         ids=[f"{s.name}-" + "-".join(f"{k}={v}" for k, v in c.items())
                              for s, c in CASES])
def test_cpu_equals_numpy_bitwise(spec, combo, dtype):
    # every size for every combination and dtype, but the ~1M one (the NumPy reference's
    # cost) for each combination in one dtype, alternating: each combination meets the large
    # size once and each dtype meets it in half the combinations
    # (the NumPy reference and the gradients do not depend on the thread count: made once per
    # size, the CPU kernels then stepped with them on 1 thread and on all)
    large = (combos(spec).index(combo) + DTYPES.index(dtype)) % 2 == 0
    all_threads = numba.get_num_threads()
    fn = step_fn(spec)
    try:
        for n in sizes() if large else sizes()[:-1]:
            ref = make_buffers(spec, n, dtype, dict(combo), seed=0)
            start = clone(ref)
            rng = np.random.default_rng(1)
            grads = []
            for _ in range(10):
                new_grad(ref, rng)
                grads.append(ref.grad.copy())
                fn(ref, backend="numpy", **combo)
            for threads in sorted({1, all_threads}):
                numba.set_num_threads(threads)
                a = clone(start)
                for g in grads:
                    a.grad[...] = g
                    fn(a, backend="cpu", **combo)
                assert_buffers_bitwise(a, ref, f"{spec.name} {combo} n={n} threads={threads}")
    finally:
        numba.set_num_threads(all_threads)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_multidimensional_param(spec):
    kw = full_kwargs(spec)
    a = make_buffers(spec, 0, np.float32, {}, shape=(3, 5, 7))
    b = clone(a)
    rng = np.random.default_rng(0)
    for _ in range(3):
        new_grad(a, rng)
        b.grad[...] = a.grad
        step_fn(spec)(a, backend="cpu", **kw)
        step_fn(spec)(b, backend="numpy", **kw)
    assert a.param.shape == (3, 5, 7)
    assert_buffers_bitwise(a, b)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_serial_and_parallel_kernels_agree(spec, monkeypatch):
    """The same buffer through the serial twin and the parallel kernel."""
    results = []
    for threshold in (0, 10**12):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", threshold)
        a, b = _run_pair(spec, {}, np.float32, 5000, steps=3)
        results.append(a)
    assert_buffers_bitwise(results[0], results[1])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_nan_and_inf_gradients_propagate_identically(spec):
    kw = full_kwargs(spec)
    a = make_buffers(spec, 64, np.float64, {})
    b = clone(a)
    for buf in (a, b):
        buf.grad[:] = 1.0
        buf.grad[3] = np.nan
        buf.grad[5] = np.inf
        buf.grad[6] = -np.inf
    step_fn(spec)(a, backend="cpu", **kw)
    step_fn(spec)(b, backend="numpy", **kw)
    for k in a.arrays():
        np.testing.assert_array_equal(a.arrays()[k], b.arrays()[k])
    assert np.isnan(a.param[3])
    assert np.isfinite(a.param[0])


def _hyper_strategy(spec):
    """Valid random hyperparameters from the registry's ranges."""
    parts = {}
    for h in spec.hypers:
        if h.kind == "flag":
            parts[h.name] = st.booleans()
        else:
            lo = 0.0 if h.low is None else h.low
            hi = 0.999 if h.high is not None else 10.0
            parts[h.name] = st.floats(lo, hi, exclude_min=h.low_open, exclude_max=h.high_open,
                                      allow_nan=False, allow_infinity=False)
    return st.fixed_dictionaries(parts)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_property_cpu_equals_numpy(spec):
    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(hp=_hyper_strategy(spec), n=st.integers(0, 300),
           dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16), steps=st.integers(1, 4))
    def check(hp, n, dtype, seed, steps):
        try:
            spec.check_rounded(spec.validate(hp), dtype)
        except ValueError:
            return  # e.g. nesterov with dampening != 0, eps=5e-324 in float32
        a, b = _run_pair(spec, {}, dtype, n, steps=steps, seed=seed, hp=hp)
        assert_buffers_bitwise(a, b, str(hp))
    check()
