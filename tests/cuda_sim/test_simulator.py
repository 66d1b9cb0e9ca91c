"""CUDA kernels under Numba's CUDA simulator, against the CPU kernels.

Runs only with NUMBA_ENABLE_CUDASIM=1 set before numba is imported; tests/test_cuda.py
launches this file in such a subprocess (with 32 threads per block so that 3 * tpb + 1 stays
small). Tolerance: 2 ulp in float32 (``testinfo.simulator_ulp``: the simulator takes float32
square roots in float64), 1 ulp in float64.

On a machine with a real GPU, ``FASTOPT_TEST_GPU=1`` runs the same file on the device (no
simulator; ``bench/gpu_report.py`` does so): the kernels are compiled without FMA contraction
(``kernels.cuda.exact``), so a step with no pre-pass must equal the CPU kernel bit for bit, and
a larger size (100,003 elements, many blocks) is added.
"""
import itertools
import os

import numpy as np
import pytest

REAL_GPU = os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"
if REAL_GPU and os.environ.get("FASTOPT_TEST_GPU") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 (run via tests/test_cuda.py), or "
                "FASTOPT_TEST_GPU=1 on a machine with a GPU", allow_module_level=True)

from numba import cuda  # noqa: E402

if REAL_GPU and not cuda.is_available():
    pytest.skip("FASTOPT_TEST_GPU=1 but numba.cuda finds no GPU", allow_module_level=True)

import fastopt  # noqa: E402
from fastopt import config, registry, testinfo  # noqa: E402
from fastopt.kernels.cuda import NVVM_CONTRACTION  # noqa: E402

SPECS = list(registry.REGISTRY.values())
ULP = {np.float32: 2, np.float64: 1}


def _device_norms_float64(spec, a):
    """True for float64 arrays stepped by a record with a pre-pass on a real GPU: the device's
    norms (a block tree) differ from the CPU's lane order in the last float64 bits, and so does
    the trust ratio: measured on an H200, up to 640 ulp of parameters near zero after 20 steps
    (32 ulp after 2 steps on 8-bit state, H100); compared at relative 1e-12 instead (in the
    simulator's smaller cases the same ulp bound as float32 holds)."""
    return REAL_GPU and bool(spec.kernel.norm_names) and a.dtype == np.float64


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


# every option combination, each in one dtype: float64 where the sum of its options' indices in
# the grid is odd (a half fraction: each value of each option meets both dtypes when there are two
# options or more; an optimizer with one or two combinations takes both dtypes in each); on a
# real GPU: every combination in both dtypes
def _match_cases(spec):
    grid = testinfo.info(spec).option_grid
    combos = testinfo.option_combinations(spec)

    def odd(combo):
        return sum(list(grid[n]).index(v) for n, v in combo.items()) % 2 == 1
    return [(spec, c, dt) for c in combos for dt in (np.float32, np.float64)
            if REAL_GPU or len(combos) <= 2 or odd(c) == (dt == np.float64)]


MATCH_CASES = [case for s in SPECS for case in _match_cases(s)]


@pytest.mark.parametrize("spec,combo,dtype", MATCH_CASES, ids=[
    f"{s.name}-" + "-".join(f"{k}={v}" for k, v in c.items()) + f"-{np.dtype(dt).name}"
    for s, c, dt in MATCH_CASES])
def test_cuda_matches_cpu(spec, combo, dtype):
    tpb = config.CUDA_THREADS_PER_BLOCK
    assert tpb == 32
    fn = registry.step_function(spec)
    for n in (1, 3 * tpb + 1) + ((100_003,) if REAL_GPU else ()):
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
            if _device_norms_float64(spec, a):
                np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15, err_msg=name)
                continue
            worst = int(_ulp_diff(a, b).max())
            bound = testinfo.info(spec).simulator_ulp if dtype == np.float32 else ULP[dtype]
            if REAL_GPU and not spec.kernel.norm_names and not NVVM_CONTRACTION:
                bound = 0              # IEEE-rounded + - * / sqrt on both: bit for bit
            assert worst <= bound, f"{name}: {worst} ulp"


def _same_bits(x, y):
    """Whether ``x`` and ``y`` hold the same bits, element by element (two NaNs count as the
    same: their signs are not promised, README)."""
    same = (x.view(np.uint8) == y.view(np.uint8)).reshape(x.size, -1).all(axis=1)
    both_nan = np.isnan(x) & np.isnan(y) if x.dtype.kind == "f" else False
    return bool(np.all(same | both_nan))


PAIR_CASES = [(s, None) for s in SPECS] + [
    (s, "bfloat16") for s in SPECS if s.required_state(s.validate(dict(s.defaults)))]


@pytest.mark.parametrize("spec,state", PAIR_CASES, ids=[f"{s.name}-{st or 'float32'}"
                                                       for s, st in PAIR_CASES])
def test_two_elements_per_access_give_the_one_element_kernels_bits(spec, state, monkeypatch):
    """config.CUDA_PAIRS: a float32 step runs its body on words of two elements (64-bit words
    of float32, 32-bit words of bfloat16 state; an odd last element in a one-element launch),
    and with config.CUDA_QUADS a step on bfloat16 state on words of four (its last ``n % 4``
    elements in a one-element launch); the same bits as one element per access, with a host
    factor (grad_scale), a device factor (max_grad_norm) and a non-finite gradient, at lengths
    with a partial last word; the words' kernels are the ones that ran."""
    from fastopt.kernels import cuda as ck
    fn = registry.step_function(spec)
    kw = dict(spec.defaults, **testinfo.info(spec).peer_settings)
    kw.pop("layout", None)                  # LAMB: the whole buffer one tensor (no groups)
    zeros = dict(state_dtype=state) if state else {}
    loops = [{}, dict(grad_scale=4.0), dict(max_grad_norm=0.5), {}]
    modes = [(1, 1), (1, 0), (0, 0)] if state else [(1, 1), (0, 0)]
    asked = []                          # the keys of the kernels the steps ask for
    lazy = ck._lazy
    monkeypatch.setattr(ck, "_lazy", lambda key, *a: (asked.append(key), lazy(key, *a))[1])
    for n in (2, 67) if not REAL_GPU else (2, 67, 100_002, 100_003):
        rng = np.random.default_rng(n)
        p0 = rng.standard_normal(n).astype(np.float32)
        gs = [(rng.standard_normal(n) * 3).astype(np.float32) for _ in loops]
        gs[-1][n - 1] = np.nan
        runs = {}
        for pairs, quads in modes:
            monkeypatch.setattr(config, "CUDA_PAIRS", pairs)
            monkeypatch.setattr(config, "CUDA_QUADS", quads)
            asked.clear()
            b = fastopt.to_device(spec.buffers_cls.zeros(p0.copy(), np.zeros(n, np.float32),
                                                         **zeros))
            for g, loop in zip(gs, loops):
                b.grad.copy_to_device(g)
                fn(b, **kw, **loop)
            runs[pairs, quads] = fastopt.to_host(b)
            ran = {k[0] for k in asked if len(k) > 1 and k[1] is spec.kernel}
            ran |= {"pairs" for k in asked if k[0] == "factor" and k[1] is spec.kernel
                    and k[5]}                    # (a factor kernel on pairs: kinds at 5)
            want = ("quads" if state and quads and n >= 4 else "pairs") if pairs else None
            assert want is None or want in ran, (n, pairs, quads, ran)
            if want == "quads":
                assert "pairs" not in ran
        for mode, run in runs.items():
            for name, x in run.arrays().items():
                y = runs[0, 0].arrays()[name]
                assert x.dtype == y.dtype and _same_bits(x, y), (n, mode, name)


# every optimizer with state on a real GPU, every third here (each ~2-3 s simulated)
QUAD_ROUNDING_SPECS = [s for i, s in enumerate(p for p, st in PAIR_CASES if st)
                       if REAL_GPU or i % 3 == 0]


@pytest.mark.parametrize("spec", QUAD_ROUNDING_SPECS, ids=lambda s: s.name)
def test_four_elements_per_access_round_stochastically_and_copy_as_one_element(spec,
                                                                               monkeypatch):
    """config.CUDA_QUADS with stochastic rounding (each element's hash index ``4q + e``, the
    tail's from its start) and a bfloat16 param copy (a 64-bit word of four): the one-element
    kernels' bits, plain, with a host factor and with a device factor, at a length with a
    partial last word; the four-element kernels are the ones that ran."""
    from fastopt.kernels import cuda as ck
    fn = registry.step_function(spec)
    asked = []
    lazy = ck._lazy
    monkeypatch.setattr(ck, "_lazy", lambda key, *a: (asked.append(key), lazy(key, *a))[1])
    n = 67 if not REAL_GPU else 100_003
    rng = np.random.default_rng(21)
    p0 = rng.standard_normal(n).astype(np.float32)
    gs = [(rng.standard_normal(n) * 3).astype(np.float32) for _ in range(3)]
    loops = [{}, dict(grad_scale=4.0), dict(max_grad_norm=0.5)]
    runs = {}
    for quads in (1, 0):
        monkeypatch.setattr(config, "CUDA_QUADS", quads)
        asked.clear()
        host = spec.buffers_cls.zeros(p0.copy(), np.zeros(n, np.float32),
                                      state_dtype="bfloat16", stochastic_rounding=True,
                                      seed=5)
        host.param_copy = fastopt.to_bfloat16(host.param)
        b = fastopt.to_device(host)
        for g, loop in zip(gs, loops):
            b.grad.copy_to_device(g)
            fn(b, **loop)
        runs[quads] = fastopt.to_host(b)
        quad_keys = [k for k in asked if k[0] == "quads" and k[1] is spec.kernel]
        assert bool(quad_keys) == bool(quads)
        assert all(k[4:6] == (True, True) for k in quad_keys)    # stochastic, copy
    for name_, x in runs[1].arrays().items():
        assert _same_bits(x, runs[0].arrays()[name_]), name_
    assert np.array_equal(runs[1].param_copy, runs[0].param_copy)
    assert np.array_equal(runs[1].param_copy, fastopt.to_bfloat16(runs[1].param))


def test_two_elements_per_access_need_arrays_on_word_boundaries():
    """A view that starts off a word's boundary, float64 and fewer than two elements step one
    element per access (``_cuda_backend._pair_words`` says no); bfloat16 state makes 32-bit
    words, and so does an absent array's placeholder then."""
    from fastopt import _cuda_backend as cb
    from fastopt.kernels import cuda as ck
    spec = registry.get("momentum")
    ph = cb._placeholder(cuda, np.float32)

    def words(arrays, dtype=np.float32):
        return cb._pair_words(cuda, ck, spec, arrays, ph, dtype)
    arena = cuda.to_device(np.zeros(3 * 9, np.float32))
    ok = [arena[0:8], arena[8:16], arena[16:24]]
    paired, tail, _ = words(ok)
    assert [a.shape[0] for a in paired] == [4, 4, 4] and tail is None
    assert all(np.dtype(a.dtype) == np.uint64 for a in paired)
    paired, tail, _ = words([arena[0:7], arena[8:15], arena[16:23]])
    assert [a.shape[0] for a in paired] == [3, 3, 3] and [a.shape[0] for a in tail] == [1] * 3
    assert words([arena[1:9], arena[10:18], arena[18:26]]) is None      # 4-byte boundary
    assert words([arena[0:1], arena[8:9], arena[16:17]]) is None        # one element
    d = cuda.to_device(np.zeros(24))
    assert words([d[0:8], d[8:16], d[16:24]], np.float64) is None
    spec = registry.get("adam")                   # param, grad, exp_avg, exp_avg_sq, (max)
    bits = cuda.to_device(np.zeros(40, np.uint16))
    paired, tail, kinds = words([arena[0:8], arena[8:16], bits[0:8], bits[8:16], ph])
    assert kinds == (ck.F32, ck.F32, ck.BF16, ck.BF16, ck.BF16)
    assert [np.dtype(a.dtype) for a in paired] == [np.uint64] * 2 + [np.uint32] * 3
    assert words([arena[0:8], arena[8:16], bits[1:9], bits[9:17], ph]) is None
    paired, _, kinds = words([arena[0:8], arena[8:16], arena[16:24], arena[0:8], ph])
    assert kinds == (ck.F32,) * 5 and np.dtype(paired[4].dtype) == np.uint64


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


@pytest.mark.skipif(REAL_GPU, reason="about the simulator")
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


def test_device_grad_norm_equals_the_cpu_norm_to_rounding(monkeypatch):
    """``grad_norm`` of a device array (the device's chunks and order) equals the CPU's to
    rounding and is deterministic, with one chunk and several (``config.CUDA_NORM_CHUNK``
    made small here: 7 chunks, the last partial)."""
    from fastopt.kernels import cuda as ck
    monkeypatch.setattr(config, "CUDA_NORM_CHUNK", 2 * ck.NORM_THREADS)
    rng = np.random.default_rng(5)
    for n in (0, 1, 300, 6 * config.CUDA_NORM_CHUNK + 7):
        g = rng.standard_normal(n).astype(np.float32)
        host, dev = fastopt.grad_norm(g), fastopt.grad_norm(cuda.to_device(g))
        assert dev == pytest.approx(host, rel=1e-14, abs=0.0)
        assert fastopt.grad_norm(cuda.to_device(g)) == dev        # deterministic


def test_one_launch_norm_pass_gives_the_two_kernels_bits():
    """``kernels.cuda.sum_of_squares`` (the chunk sums and the finish in one launch, the last
    block adding) gives the chunk kernel + finishing kernel's total and clip factor bit for
    bit, with fewer blocks than chunks and as many, launch after launch (its ticket counter
    back at 0 after each), float32 and float64."""
    from fastopt.kernels import cuda as ck
    rng = np.random.default_rng(17)
    chunk = 4 * ck.NORM_THREADS
    for dtype, n in ((np.float32, 21 * chunk + 5), (np.float64, 3 * chunk)):
        chunks = -(-n // chunk)
        x = cuda.to_device((rng.standard_normal(n) * 3).astype(dtype))
        partial = cuda.device_array(chunks, np.float64)
        want_t, want_f = cuda.device_array(1, np.float64), cuda.device_array(1, dtype)
        ck.chunk_sum_of_squares[5, ck.NORM_THREADS](x, np.int64(chunk), partial)
        ck.finish_sum_of_squares[1, ck.NORM_THREADS](partial, 0.5, 2.0, want_t, want_f)
        done = cuda.to_device(np.zeros(1, np.int32))
        for blocks in (3, chunks, 3):
            out = cuda.device_array(chunks, np.float64)
            t, f = cuda.device_array(1, np.float64), cuda.device_array(1, dtype)
            ck.sum_of_squares[blocks, ck.NORM_THREADS](x, np.int64(chunk), out, done, 0.5,
                                                       2.0, t, f)
            assert done.copy_to_host()[0] == 0
            assert t.copy_to_host().view(np.uint64)[0] == want_t.copy_to_host().view(
                np.uint64)[0]
            assert f.copy_to_host().tobytes() == want_f.copy_to_host().tobytes()
            assert np.array_equal(out.copy_to_host(), partial.copy_to_host())
        assert 0 < want_f.copy_to_host()[0] < 0.5           # (the factor clips here)


def test_the_device_norm_leaves_frozen_elements_out_bit_for_bit():
    """The norm pass of a step with frozen groups on the device
    (``kernels.cuda.sum_of_squares_frozen``): frozen elements (junk here: inf, NaN, 1e30)
    are not read and count as zeros, so the sum and the clip factor are the plain pass's over
    the gradient with them zero, bit for bit: chunks all stepped, all frozen and mixed (the
    stepped runs found per thread), several chunks per block, launch after launch."""
    from fastopt._cuda_backend import DeviceNorm
    from fastopt.kernels import cuda as ck
    from fastopt.scaling import FrozenPlan
    rng = np.random.default_rng(19)
    chunk = 2 * ck.NORM_THREADS
    n = 9 * chunk + 11
    g = (rng.standard_normal(n) * 2).astype(np.float32)
    for frozen in ([(3, 5)], [(0, chunk), (2 * chunk + 7, 4 * chunk + 1), (n - 20, n)],
                   [(5, n - 3)], [(0, n)]):
        junk, zero = g.copy(), g.copy()
        for lo, hi in frozen:
            junk[lo:hi] = 1e30
            junk[lo] = np.inf
            junk[hi - 1] = np.nan
            zero[lo:hi] = 0.0
        mine = DeviceNorm(cuda.to_device(junk), chunk, np.float32,
                          frozen=FrozenPlan(n, frozen, chunk))
        plain = DeviceNorm(cuda.to_device(zero), chunk, np.float32)
        for _ in range(2):
            assert mine() == plain(), frozen
            f, h = mine.factor(0.5, 1.0), plain.factor(0.5, 1.0)
            assert f.copy_to_host().tobytes() == h.copy_to_host().tobytes()
        assert np.isfinite(mine())


def test_a_clipped_step_on_the_device_leaves_a_frozen_gradient_out():
    """Clipping and skipping with a frozen group on the device: a NaN and large values in
    the frozen gradient change nothing (the step is not skipped, the factor is the one of
    the stepped gradient): the same bits as with that gradient zero."""
    n = 300
    frozen = fastopt.Groups(n, [{"range": (40, 200), "frozen": True}])
    rng = np.random.default_rng(23)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 4).astype(np.float32)
    junk = g.copy()
    junk[40:200] = 1e6
    junk[77] = np.nan
    zero = g.copy()
    zero[40:200] = 0.0
    out = []
    for grad in (junk, zero):
        dev = fastopt.to_device(fastopt.AdamBuffers.zeros(p.copy(), grad))
        for loop in (dict(max_grad_norm=0.5), dict(max_grad_norm=0.5, skip_nonfinite=True)):
            fastopt.adam_step(dev, groups=frozen, **loop)
            assert not dev.found_inf
        out.append((fastopt.to_host(dev), dev.grad_norm))
    (a, na), (b, nb) = out
    assert na == nb and a.step == b.step == 2
    for k in ("param", "exp_avg", "exp_avg_sq"):
        assert a.arrays()[k].tobytes() == b.arrays()[k].tobytes(), k
    assert not np.array_equal(a.param, p)


@pytest.mark.parametrize("loop", [dict(grad_scale=1024.0), dict(max_grad_norm=0.5),
                                  dict(max_grad_norm=0.5, grad_scale=64.0,
                                       skip_nonfinite=True)], ids=str)
def test_loop_options_on_the_device_match_the_cpu(loop):
    host = fastopt.AdamBuffers.zeros(np.ones(70, np.float32), np.zeros(70, np.float32))
    dev = fastopt.to_device(host)
    rng = np.random.default_rng(6)
    for _ in range(3):
        g = (rng.standard_normal(70) * 64).astype(np.float32)
        host.grad[...] = g
        dev.grad.copy_to_device(g)
        fastopt.adam_step(host, **loop, backend="cpu")
        fastopt.adam_step(dev, **loop)
        if "max_grad_norm" in loop:
            assert dev.grad_norm == pytest.approx(host.grad_norm, rel=1e-14)
            # the step's norm pass (made once, _cuda_backend.DeviceNorm) is grad_norm's
            inv = 1.0 / loop.get("grad_scale", 1.0)
            assert dev.grad_norm == fastopt.grad_norm(dev.grad) * inv
        else:
            assert dev.grad_norm is host.grad_norm is None     # no norm pass was needed
    back = fastopt.to_host(dev)
    assert back.step == host.step == 3
    for name, a in host.arrays().items():
        assert int(_ulp_diff(a, back.arrays()[name]).max()) <= ULP[np.float32], name
    if "max_grad_norm" in loop:
        made = dev._prepared.norm
        assert made is not None
        fastopt.adam_step(dev, **loop)
        assert dev._prepared.norm is made                     # kept with the validated call


def test_skip_nonfinite_on_the_device_writes_nothing():
    host = fastopt.SGDBuffers.zeros(np.ones(40, np.float32), np.ones(40, np.float32))
    dev = fastopt.to_device(host)
    g = np.ones(40, np.float32)
    g[3] = np.inf
    dev.grad.copy_to_device(g)
    fastopt.sgd_step(dev, lr=0.1, skip_nonfinite=True)
    back = fastopt.to_host(dev)
    assert back.step == 0 and dev.found_inf and dev.skipped_steps == 1
    assert np.all(back.param == 1.0)


# on a real GPU every optimizer in three formats (LAMB, whose pre-pass takes the host's factor,
# too); in the simulator (whose 256-thread norm blocks cost seconds a case, and whose arrays
# round to any dtype alike) a plain and a bfloat16 one
DEVICE_CLIP_CASES = [(s, dt, state) for s in SPECS for dt, state in
                     [(np.float32, None), (np.float64, None), (np.float32, "bfloat16")]
                     if (state is None or s.required_state(s.validate(dict(s.defaults))))
                     and (REAL_GPU or (s.name, np.dtype(dt).name, state) in {
                         ("adam", "float32", None), ("rmsprop", "float32", "bfloat16")})]


@pytest.mark.parametrize("spec,dtype,state", DEVICE_CLIP_CASES, ids=[
    f"{s.name}-{np.dtype(dt).name}-{st or 'plain'}" for s, dt, st in DEVICE_CLIP_CASES])
def test_a_clip_factor_left_on_the_device_gives_the_host_paths_bits(spec, dtype, state,
                                                                    monkeypatch):
    """A clipped step leaves its gradient factor on the device and the kernel reads it there
    (config.CUDA_DEVICE_CLIP): the same bits, grad_norm and found_inf as the factor passed from
    the host; the norm is read from the device only when grad_norm is (LAMB, whose pre-pass
    takes the factor from the host, and skip_nonfinite always take the host's path)."""
    from fastopt.kernels import cuda as ck
    rng = np.random.default_rng(11)
    if not REAL_GPU:           # (several chunks of the device's norm pass at a simulated size)
        monkeypatch.setattr(config, "CUDA_NORM_CHUNK", 2 * ck.NORM_THREADS)
    n = 3 * config.CUDA_NORM_CHUNK + 5 if REAL_GPU else 75 + 2 * config.CUDA_NORM_CHUNK
    kw = dict(spec.defaults, **testinfo.info(spec).peer_settings)
    p0 = rng.standard_normal(n).astype(dtype)
    zeros = dict(state_dtype=state) if state else {}

    def buffers():
        b = fastopt.to_device(spec.buffers_cls.zeros(p0.copy(), np.zeros(n, dtype), **zeros))
        if state:
            b.param_copy = cuda.to_device(np.zeros(n, np.uint16))
        return b
    on, off = buffers(), buffers()
    pattern = [dict(max_grad_norm=0.5), dict(max_grad_norm=0.5, grad_scale=4.0),  # clipped,
               dict(max_grad_norm=1e9), dict(max_grad_norm=0.5)]   # 1, 0 (inf * 0: NaN)
    last = len(pattern) - 1
    for i, loop in enumerate(pattern):
        g = (rng.standard_normal(n) * 3).astype(dtype)
        if i == last:
            g[n // 2] = np.inf
        for b, device_clip in ((on, 1), (off, 0)):
            b.grad.copy_to_device(g)
            monkeypatch.setattr(config, "CUDA_DEVICE_CLIP", device_clip)
            spec.step_fn(b, **kw, **loop)
        left = "_pending_norm" in on.__dict__
        assert left == (not spec.kernel.norm_names)      # on the device until asked for
        assert "_pending_norm" not in off.__dict__
        if i == 1:                                       # pickling reads it too
            saved = on.__getstate__()
            assert "_pending_norm" not in saved and saved["grad_norm"] == off.grad_norm
        assert on.grad_norm == off.grad_norm or (on.grad_norm != on.grad_norm
                                                 and off.grad_norm != off.grad_norm)
        assert isinstance(on.grad_norm, float)
        assert on.found_inf == off.found_inf == (i == last)
        assert "_pending_norm" not in on.__dict__        # read once, then kept
    assert on.step == off.step == len(pattern)
    a, b = fastopt.to_host(on), fastopt.to_host(off)
    for name, x in a.arrays().items():
        assert _same_bits(x, b.arrays()[name]), name
    if state:
        assert np.array_equal(on.param_copy.copy_to_host(), off.param_copy.copy_to_host())


@pytest.mark.parametrize("k", [2, 17], ids=["rows-with-the-launch", "rows-in-an-array"])
def test_a_grouped_step_reads_a_clip_factor_left_on_the_device(k, monkeypatch):
    """The one-launch grouped kernel takes the factor from the device after each group's row
    of scalars (rows with the launch, and past GROUPED_MAX_ROWS in a device array): the same
    bits as the factor passed in every row from the host."""
    from fastopt._cuda_backend import GROUPED_MAX_ROWS
    assert (k > GROUPED_MAX_ROWS) == (k == 17)
    n = 75
    rng = np.random.default_rng(12)
    edges = np.linspace(0, n, k + 1).astype(int)
    groups = fastopt.Groups(n, [{"range": (int(a), int(b)), "lr": 1e-3 * (1 + i)}
                                for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))])
    p0 = rng.standard_normal(n).astype(np.float32)
    on, off = (fastopt.to_device(fastopt.AdamBuffers.zeros(p0.copy(), np.zeros(n, np.float32)))
               for _ in range(2))
    for loop in (dict(max_grad_norm=0.5), dict(max_grad_norm=0.5, grad_scale=4.0)):
        g = (rng.standard_normal(n) * 3).astype(np.float32)
        for b, device_clip in ((on, 1), (off, 0)):
            b.grad.copy_to_device(g)
            monkeypatch.setattr(config, "CUDA_DEVICE_CLIP", device_clip)
            fastopt.adam_step(b, groups=groups, **loop)
        assert "_pending_norm" in on.__dict__
        assert on.grad_norm == off.grad_norm and not on.found_inf
    a, b = fastopt.to_host(on), fastopt.to_host(off)
    for name, x in a.arrays().items():
        assert np.array_equal(x.view(np.uint32), b.arrays()[name].view(np.uint32)), name
    assert not np.array_equal(a.param, p0)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_groups_steps_behind_on_the_device_match_the_cpu(spec):
    """Groups with their own step counts (``steps_behind``) in one launch: each row's scalars
    and kernel at its group's count (a group 2 behind takes its first step at the buffers'
    third), as the CPU's one call gives them (float32, within the simulator's bound)."""
    kw = dict(spec.defaults, **testinfo.option_combinations(spec)[-1])
    n = 45 if not REAL_GPU else 100_003
    groups = fastopt.Groups(n, [{"range": (5, 20), "steps_behind": 2},
                                {"ranges": [(25, 31), (36, n)], "steps_behind": 1}])
    if spec.kernel.norm_names:
        kw["layout"] = [12, n - 12]
    rng = np.random.default_rng(14)
    host = spec.buffers_cls.zeros(rng.standard_normal(n).astype(np.float32),
                                  np.zeros(n, np.float32),
                                  **spec.state_options(spec.validate(
                                      {k: v for k, v in kw.items() if k != "layout"})))
    host.step = 2
    dev = fastopt.to_device(host)
    back = _step_both(registry.step_function(spec), dict(kw, groups=groups), host, dev, rng, 2)
    bound = testinfo.info(spec).simulator_ulp
    if REAL_GPU and not spec.kernel.norm_names and not NVVM_CONTRACTION:
        bound = 0
    for name, a in host.arrays().items():
        worst = int(_ulp_diff(a, back.arrays()[name]).max())
        assert worst <= bound, f"{name}: {worst} ulp"


@pytest.mark.parametrize("name,state", [("adam", None), ("lamb", None), ("sgd", None),
                                        ("adam", "bfloat16"), ("adam", "int8"),
                                        ("rmsprop", "int8")])
def test_a_frozen_group_on_the_device_keeps_every_bit(name, state):
    """``"frozen": True`` on CUDA (no tiles for the group's elements; bfloat16 state: no call
    for its segment; 8-bit state: its blocks skipped by their whole thread block, codes and
    scales untouched): its parameters and state keep every bit, the rest is the CPU's (within
    the simulator's bound; compressed state: bit for bit)."""
    spec = registry.get(name)
    kw = dict(spec.defaults, **testinfo.option_combinations(spec)[-1])
    block = 32 if not REAL_GPU else 256
    n = 3 * block + 13
    frozen = [(block, 2 * block), (3 * block, n)]
    groups = fastopt.Groups(n, [{"ranges": frozen, "frozen": True}, {"range": (5, 20),
                                                                      "lr": 1e-2}])
    if spec.kernel.norm_names:
        kw["layout"] = [12, n - 12]
    hp = spec.validate({k: v for k, v in kw.items() if k != "layout"})
    extra = {None: {}, "bfloat16": dict(state_dtype=state, stochastic_rounding=True),
             "int8": dict(state_dtype=state, block_size=block, min_8bit_size=0)}[state]
    rng = np.random.default_rng(15)
    host = spec.buffers_cls.zeros(rng.standard_normal(n).astype(np.float32),
                                  np.zeros(n, np.float32), **spec.state_options(hp), **extra)
    start = {k: a.copy() for k, a in host.arrays().items()}
    scales = {k: a.copy() for k, a in (host.state_absmax or {}).items()}
    dev = fastopt.to_device(host)
    back = _step_both(registry.step_function(spec), dict(kw, groups=groups), host, dev, rng, 2)
    bound = testinfo.info(spec).simulator_ulp if state is None else 0
    for k, a in host.arrays().items():
        if k == "grad":
            continue
        for lo, hi in frozen:
            assert np.array_equal(back.arrays()[k][lo:hi], start[k][lo:hi]), k
        if state is None:
            assert int(_ulp_diff(a, back.arrays()[k]).max()) <= bound, k
        else:
            assert np.array_equal(a, back.arrays()[k]), k
    for k, a in scales.items():
        assert np.array_equal(back.state_absmax[k][1:2], a[1:2]), k
        assert np.array_equal(back.state_absmax[k][3:], a[3:]), k
        assert np.array_equal(back.state_absmax[k], host.state_absmax[k]), k
    assert not np.array_equal(back.param[:block], start["param"][:block])


@pytest.mark.parametrize("state", ["int8", "bfloat16"])
def test_groups_steps_behind_on_compressed_device_state_match_the_cpu(state):
    """The same on 8-bit state (one launch, a block per quantization block) and bfloat16
    state with stochastic rounding (keyed by the buffers' step): the CPU's bits."""
    n = 45
    zeros = (dict(state_dtype="int8", block_size=32, min_8bit_size=0) if state == "int8"
             else dict(state_dtype="bfloat16"))
    groups = fastopt.Groups(n, [{"range": (5, 20), "lr": 2e-3, "steps_behind": 2},
                                {"range": (25, n), "steps_behind": 1}])
    rng = np.random.default_rng(15)
    host = fastopt.AdamBuffers.zeros(rng.standard_normal(n).astype(np.float32),
                                     np.zeros(n, np.float32), **zeros)
    host.step = 2
    if state == "bfloat16":
        host.rounding_seed = 3
    dev = fastopt.to_device(host)
    back = _step_both(fastopt.adam_step, dict(groups=groups), host, dev, rng, 2)
    for name, a in host.arrays().items():
        assert _same_bits(a, back.arrays()[name]), name
    for name, a in (host.state_absmax or {}).items():
        assert np.array_equal(a, back.state_absmax[name]), f"scales of {name}"


@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "groups"])
def test_8bit_steps_clip_with_the_hosts_factor_either_way(grouped, monkeypatch):
    """8-bit CUDA steps take a clipped step's factor from the host whatever
    config.CUDA_DEVICE_CLIP says: both settings step, and give the same bits."""
    n = 45
    groups = (fastopt.Groups(n, [{"range": (5, 20), "lr": 2e-3}, {"range": (25, n)}])
              if grouped else None)
    rng = np.random.default_rng(13)
    p0 = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 3).astype(np.float32)
    out = []
    for device_clip in (1, 0):
        b = fastopt.to_device(fastopt.AdamBuffers.zeros(
            p0.copy(), np.zeros(n, np.float32), state_dtype="int8", block_size=32,
            min_8bit_size=0))
        b.grad.copy_to_device(g)
        monkeypatch.setattr(config, "CUDA_DEVICE_CLIP", device_clip)
        fastopt.adam_step(b, max_grad_norm=0.5, groups=groups)
        assert "_pending_norm" not in b.__dict__ and b.grad_norm > 0.5
        out.append(fastopt.to_host(b))
    for name, a in out[0].arrays().items():
        assert np.array_equal(a, out[1].arrays()[name]), name


def _with_state(spec):
    """The first and last option combinations of ``spec`` that allocate state."""
    combos = [c for c in testinfo.option_combinations(spec)
              if spec.required_state(spec.validate(dict(spec.defaults, **c)))]
    return list(dict.fromkeys(tuple(c.items()) for c in combos[:1] + combos[-1:]))


def _step_both(fn, kw, host, dev, rng, steps):
    """``steps`` steps of ``fn`` on the host buffers (CPU) and their device copy with the same
    random gradients; returns the device buffers copied to the host."""
    dtype = host.grad.dtype
    for _ in range(steps):
        g = rng.standard_normal(host.grad.shape).astype(dtype)
        host.grad[...] = g
        dev.grad.copy_to_device(g)
        fn(host, backend="cpu", **kw)
        fn(dev, **kw)
    return fastopt.to_host(dev)


# both roundings for each combination; LAMB (whose simulated pre-pass costs ~4 s a case) one
# rounding per combination, alternating (both on a real GPU)
BF16_CASES = [(s, c, stochastic) for s in SPECS for i, c in enumerate(_with_state(s))
              for stochastic in (False, True)
              if REAL_GPU or not s.kernel.norm_names or stochastic == bool(i % 2)]


@pytest.mark.parametrize("spec,combo,stochastic", BF16_CASES, ids=[
    f"{s.name}-{'-'.join(f'{k}={v}' for k, v in c)}-{'stochastic' if st else 'nearest'}"
    for s, c, st in BF16_CASES])
def test_bfloat16_state_on_the_device_matches_the_cpu(spec, combo, stochastic):
    """bfloat16 state on CUDA (the record's body with the state as bfloat16 views): the same
    bits as the CPU kernels, rounding to nearest or stochastically. A record with a pre-pass
    (LAMB) reads the views there too; its norms are summed in the device's order, so its
    parameters are within the simulator bound (not bit for bit on a GPU) and its state, which
    does not depend on the norms, bit for bit."""
    combo = dict(combo)
    kw = dict(spec.defaults, **combo)
    hp = spec.validate(kw)
    n = 3 * config.CUDA_THREADS_PER_BLOCK + 1
    rng = np.random.default_rng(5)
    host = spec.buffers_cls.zeros(rng.standard_normal(n).astype(np.float32),
                                  np.zeros(n, np.float32), state_dtype="bfloat16",
                                  stochastic_rounding=stochastic, seed=11,
                                  **spec.state_options(hp))
    dev = fastopt.to_device(host)
    assert dev.state_dtype == "bfloat16" and dev.rounding_seed == host.rounding_seed
    fn = registry.step_function(spec)
    back = _step_both(fn, kw, host, dev, rng, 3)
    for name, a in host.arrays().items():
        b = back.arrays()[name]
        assert b.dtype == a.dtype
        if a.dtype == np.uint16:
            worst = int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())
            assert worst == 0, f"{name}: {worst} bfloat16 steps"
        else:
            worst = int(_ulp_diff(a, b).max())
            bound = testinfo.info(spec).simulator_ulp
            if REAL_GPU and not NVVM_CONTRACTION and not spec.kernel.norm_names:
                bound = 0
            assert worst <= bound, f"{name}: {worst} ulp"


Q8_CASES = [(s, dict(c), dt) for (s, c), dt in zip(
    [(s, _with_state(s)[-1]) for s in SPECS if _with_state(s)],
    itertools.cycle([np.float32, np.float64]))]


@pytest.mark.parametrize("spec,combo,dtype", Q8_CASES, ids=[
    f"{s.name}-{np.dtype(d).name}" for s, _, d in Q8_CASES])
def test_8bit_state_on_the_device_matches_the_cpu(spec, combo, dtype):
    """Block-wise 8-bit state on CUDA (one thread block per quantization block; blocks of 32
    here: one full block and a partial one): the CPU's codes, scales and parameters bit for
    bit, for every optimizer with state (its last option combination), float32 and float64.
    A record with a pre-pass (LAMB) reads the state there through dequantizing views; its
    norms are summed in the device's order, so its parameters are within the simulator bound
    and its state, which does not depend on the norms, bit for bit."""
    kw = dict(spec.defaults, **combo)
    hp = spec.validate(kw)
    n = 40 if not REAL_GPU else 100_003
    block = 32 if not REAL_GPU else 256
    rng = np.random.default_rng(6)
    make = dict(state_dtype="int8", block_size=block, min_8bit_size=0,
                **spec.state_options(hp))
    host = spec.buffers_cls.zeros(rng.standard_normal(n).astype(dtype), np.zeros(n, dtype),
                                  **make)
    dev = fastopt.to_device(host)
    assert dev.state_dtype == "int8" and dev.block_size == block
    back = _step_both(registry.step_function(spec), kw, host, dev, rng, 2)
    _same_8bit_state(spec, host, back)


def _same_8bit_state(spec, host, back):
    """``back``'s codes and scales equal ``host``'s; its parameters too, or, for a record with
    a pre-pass (device norms), within the simulator bound."""
    for name, a in host.arrays().items():
        if name == "param" and _device_norms_float64(spec, a):
            np.testing.assert_allclose(back.param, a, rtol=1e-12, atol=1e-15, err_msg=name)
        elif name == "param" and spec.kernel.norm_names:
            worst = int(_ulp_diff(a, back.param).max())
            assert worst <= testinfo.info(spec).simulator_ulp, f"param: {worst} ulp"
        else:
            assert np.array_equal(a, back.arrays()[name]), name
    for name, a in host.state_absmax.items():
        assert np.array_equal(a, back.state_absmax[name]), f"scales of {name}"


NORM_SPECS = [s for s in SPECS if s.kernel.norm_names]


@pytest.mark.parametrize("rows_in_array", [False, True], ids=["rows-with-launch",
                                                         "rows-in-array"])
@pytest.mark.parametrize("spec", NORM_SPECS, ids=lambda s: s.name)
def test_8bit_state_per_tensor_on_the_device_matches_the_cpu(spec, rows_in_array,
                                                             monkeypatch):
    """A record with a per-tensor pre-pass (LAMB) on 8-bit state over three tensors that cut
    the quantization blocks (a pre-pass and a row of scalars per tensor, one launch), with a
    weight decay in one group: the CPU's codes and scales, parameters within the simulator
    bound; also with the rows in a device array (as past ``GROUPED_MAX_ROWS`` tensors, here
    set to 2 so that three tensors take that path in the simulator's time)."""
    if rows_in_array:
        monkeypatch.setattr("fastopt._cuda_backend.GROUPED_MAX_ROWS", 2)
    n = 45 if not REAL_GPU else 100_003
    layout = [10, 25, n - 35]
    groups = fastopt.Groups(n, [{"range": (10, 35), "weight_decay": 0.1}])
    rng = np.random.default_rng(16)
    host = spec.buffers_cls.zeros(rng.standard_normal(n).astype(np.float32),
                                  np.zeros(n, np.float32), state_dtype="int8",
                                  block_size=32, min_8bit_size=0)
    dev = fastopt.to_device(host)
    fn = registry.step_function(spec)
    back = _step_both(fn, dict(layout=layout, groups=groups), host, dev, rng, 2)
    _same_8bit_state(spec, host, back)


# the grouped 8-bit kernel is one mechanism for every record (the CPU side is tested for every
# optimizer in tests/test_state_int8.py): every third registered optimizer with state here,
# every one on a real GPU
Q8_GROUP_CASES = [c for i, c in enumerate(c for c in Q8_CASES if not c[0].kernel.norm_names)
                  if REAL_GPU or i % 3 == 0]                 # (LAMB: a test of its own below)


@pytest.mark.parametrize("spec,combo,dtype", Q8_GROUP_CASES, ids=[
    f"{s.name}-{np.dtype(d).name}" for s, _, d in Q8_GROUP_CASES])
def test_8bit_state_with_groups_on_the_device_matches_the_cpu(spec, combo, dtype):
    """Groups on 8-bit state, one launch: each thread steps its element with its segment's
    kernel and row (groups cut the quantization blocks; a weight decay in one group only
    where the optimizer has one: two kernels): the CPU's codes, scales and parameters."""
    kw = dict(spec.defaults, **combo)
    hp = spec.validate(kw)
    n = 45 if not REAL_GPU else 100_003
    block = 32 if not REAL_GPU else 256
    first = next(h for h in spec.hypers if h.kind == "real" and h.schedulable)
    g0 = {first.name: hp[first.name] * 0.5 if hp[first.name] else 0.01}
    if "weight_decay" in spec.defaults:
        g0["weight_decay"] = 0.0 if hp["weight_decay"] else 0.01
    groups = fastopt.Groups(n, [dict(range=(5, 20), **g0), {"ranges": [(25, 31), (36, n)]}])
    rng = np.random.default_rng(9)
    host = spec.buffers_cls.zeros(rng.standard_normal(n).astype(dtype), np.zeros(n, dtype),
                                  state_dtype="int8", block_size=block, min_8bit_size=0,
                                  **spec.state_options(hp))
    dev = fastopt.to_device(host)
    back = _step_both(registry.step_function(spec), dict(kw, groups=groups), host, dev, rng,
                      2)
    for name, a in host.arrays().items():
        assert np.array_equal(a, back.arrays()[name]), name
    for name, a in host.state_absmax.items():
        assert np.array_equal(a, back.state_absmax[name]), f"scales of {name}"


@pytest.mark.parametrize("per_thread", [1, 3, 12], ids=lambda k: f"{k}-per-thread")
def test_8bit_kernel_elements_per_thread_change_no_bit(per_thread, monkeypatch):
    """The 8-bit kernels with 1 element per thread, with 3 (blocks of 24 elements: 8 threads)
    and with 12 (2 threads; more than ``kernels.quant8.UNROLL_MAX``: the elements in a loop,
    not written out) equal the CPU, as the default 4 does above."""
    from fastopt.kernels import quant8
    assert (per_thread > quant8.UNROLL_MAX) == (per_thread == 12)
    monkeypatch.setattr(config, "CUDA_8BIT_PER_THREAD", per_thread)
    spec = registry.get("adam")
    n = 53
    rng = np.random.default_rng(12)
    host = fastopt.AdamBuffers.zeros(rng.standard_normal(n).astype(np.float32),
                                     np.zeros(n, np.float32), state_dtype="int8",
                                     block_size=24, min_8bit_size=0)
    dev = fastopt.to_device(host)
    kw = dict(spec.defaults, weight_decay=0.01)
    back = _step_both(registry.step_function(spec), kw, host, dev, rng, 2)
    for name, a in host.arrays().items():
        assert np.array_equal(a, back.arrays()[name]), name
    for name, a in host.state_absmax.items():
        assert np.array_equal(a, back.state_absmax[name]), f"scales of {name}"


@pytest.mark.parametrize("words", [True, False], ids=["words", "strided"])
def test_8bit_word_and_strided_layouts_equal_the_cpu(words, monkeypatch):
    """The 8-bit kernels with a thread's four neighbouring elements as words
    (``config.CUDA_8BIT_WORDS``) and with four strided elements, on a buffer whose last word
    and last block are partial (53 elements, blocks of 24), AMSGrad (a third 8-bit array) and a
    bfloat16 param copy, plain and grouped: the CPU's
    codes, scales, parameters and copy; the word layout is the one the step asks for."""
    from fastopt.kernels import cuda as ck
    seen = []
    real = ck.get_q8
    monkeypatch.setattr(ck, "get_q8", lambda *a, **k: (seen.append(a[-1]), real(*a, **k))[1])
    monkeypatch.setattr(config, "CUDA_8BIT_WORDS", int(words))
    monkeypatch.setattr(config, "CUDA_8BIT_PER_THREAD", 4)
    spec = registry.get("adam")
    n = 53
    rng = np.random.default_rng(14)
    host = fastopt.AdamBuffers.zeros(rng.standard_normal(n).astype(np.float32),
                                     np.zeros(n, np.float32), state_dtype="int8",
                                     block_size=24, min_8bit_size=0, amsgrad=True)
    host.param_copy = fastopt.to_bfloat16(host.param)
    dev = fastopt.to_device(host)
    kw = dict(spec.defaults, weight_decay=0.01, amsgrad=True)
    back = _step_both(registry.step_function(spec), kw, host, dev, rng, 2)
    groups = fastopt.Groups(n, [{"range": (3, 30), "lr": 1e-2}])
    back = _step_both(registry.step_function(spec), dict(kw, groups=groups), host,
                      fastopt.to_device(back), rng, 1)
    assert seen and all(w == words for w in seen)
    for name, a in host.arrays().items():
        assert np.array_equal(a, back.arrays()[name]), name
    assert np.array_equal(host.param_copy, back.param_copy)
    for name, a in host.state_absmax.items():
        assert np.array_equal(a, back.state_absmax[name]), f"scales of {name}"


def test_8bit_word_views_need_word_boundaries():
    """The word layout's views (``_q8_words``): ``uint64`` words of the float32 arrays'
    whole words, ``uint32`` words of the codes, an empty word array for a placeholder; none
    (the strided layout) for an array that does not start on a word boundary, float64, fewer
    than four elements, or another number of elements per thread."""
    from fastopt import _cuda_backend as cb
    from numba import cuda
    n = 10
    p, g = cuda.to_device(np.zeros(n, np.float32)), cuda.to_device(np.zeros(n, np.float32))
    codes, other = cuda.to_device(np.zeros(n, np.uint8)), cuda.device_array(1, np.float32)
    ph = cuda.device_array(0, np.float32)
    args = [p, g, codes, other, other, other, other, ph]
    q = (False, False, True, False)
    words = cb._q8_words(args, q, np.float32, 4, False)
    assert [w.dtype for w in words] == [np.uint64, np.uint64, np.uint32, np.uint64]
    assert [w.shape[0] for w in words] == [4, 4, 2, 0]
    big = cuda.to_device(np.zeros(n + 1, np.float32))
    assert cb._q8_words([big[1:]] + args[1:], q, np.float32, 4, False) is None
    assert cb._q8_words(args, q, np.float32, 2, False) is None
    assert cb._q8_words(args, q, np.float64, 4, False) is None
    assert cb._q8_words([p[:3], g[:3]] + args[2:], q, np.float32, 4, False) is None


def test_8bit_steps_pass_the_configured_threads_per_sm(monkeypatch):
    """The 8-bit step asks for its kernel with its threads per block and
    ``config.CUDA_8BIT_THREADS_PER_SM`` (the launch bounds; the simulator compiles none), the
    grouped step too."""
    from fastopt.kernels import cuda as ck
    seen = []
    for name in ("get_q8", "get_q8_grouped"):
        real = getattr(ck, name)
        monkeypatch.setattr(ck, name, lambda *a, _r=real, _n=name, **k: (
            seen.append((_n, a[-3:])), _r(*a, **k))[1])
    monkeypatch.setattr(config, "CUDA_8BIT_THREADS_PER_SM", 768)
    n = 64
    host = fastopt.AdamBuffers.zeros(np.ones(n, np.float32), np.full(n, 0.5, np.float32),
                                     state_dtype="int8", block_size=32, min_8bit_size=0)
    dev = fastopt.to_device(host)
    fastopt.adam_step(dev)
    groups = fastopt.Groups(n, [{"range": (0, 40), "lr": 1e-2}])
    fastopt.adam_step(dev, groups=groups)
    per = config.CUDA_8BIT_PER_THREAD
    words = per == 4                # (and the word layout: float32, 4 per thread)
    assert seen == [("get_q8", (32 // per, 768, words)),
                    ("get_q8_grouped", (32 // per, 768, words))]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # (the simulator's
def test_8bit_block_whose_inverse_absmax_overflows_is_zeros_on_the_device():  # NumPy division)
    """Momentum on 8-bit state, one block of gradients ~1e-40 (1 / absmax overflows in
    float32): stored as zeros, the CPU's codes and scales."""
    n = 64
    g = np.linspace(-1, 1, n).astype(np.float32)
    g[:32] *= np.float32(1e-40)
    host = fastopt.MomentumBuffers.zeros(np.ones(n, np.float32), g.copy(), state_dtype="int8",
                                         block_size=32, min_8bit_size=0)
    dev = fastopt.to_device(host)
    fastopt.momentum_step(host, momentum=0.9, backend="cpu")
    fastopt.momentum_step(dev, momentum=0.9)
    back = fastopt.to_host(dev)
    for name, a in host.arrays().items():
        assert np.array_equal(a, back.arrays()[name]), name
    for name, a in host.state_absmax.items():
        assert np.array_equal(a, back.state_absmax[name]), f"scales of {name}"
    field = next(iter(host.state_absmax))
    assert 0 < host.state_absmax[field][0] < 1e-38
    codes = host.arrays()[field][:32]
    assert np.all(codes == codes[0])            # all the map's zero


def test_8bit_groups_with_more_rows_than_a_launch_takes_match_the_cpu():
    """More distinct rows of scalars than travel with the launch (``GROUPED_MAX_ROWS``): the
    rows go in a device array, still one launch; the CPU's codes, scales and parameters."""
    from fastopt._cuda_backend import GROUPED_MAX_ROWS
    n = 64
    groups = fastopt.Groups(n, [{"range": (2 * k, 2 * k + 2), "lr": 1e-3 * (k + 2)}
                                for k in range(GROUPED_MAX_ROWS + 1)])
    rng = np.random.default_rng(17)
    host = fastopt.AdamBuffers.zeros(rng.standard_normal(n).astype(np.float32),
                                     np.zeros(n, np.float32), state_dtype="int8",
                                     block_size=32, min_8bit_size=0)
    dev = fastopt.to_device(host)
    back = _step_both(fastopt.adam_step, dict(groups=groups), host, dev, rng, 2)
    _same_8bit_state(registry.get("adam"), host, back)


def _copy_of(param, kind):
    """The param copy of ``kind`` ("bfloat16": bits, "float16") of ``param``."""
    return fastopt.to_bfloat16(param) if kind == "bfloat16" else param.astype(np.float16)


COPY_CASES = [(None, "bfloat16"), ("bfloat16", "bfloat16"), (None, "float16"),
              ("bfloat16", "float16")]


@pytest.mark.parametrize("state,kind", COPY_CASES,
                         ids=[f"{s or 'float32'}-state-{k}-copy" for s, k in COPY_CASES])
def test_param_copy_on_the_device_matches_the_cpu(state, kind):
    """A bfloat16 or float16 param copy on the device, written by the step's own kernel (the
    parameter wrapped with its copy; with bfloat16 state four elements per thread, the
    copy's four values one 64-bit word), with and without groups (one launch): the CPU's
    parameters, state and copy; ``to_device`` / ``to_host`` carry the copy."""
    n = 3 * config.CUDA_THREADS_PER_BLOCK + 5
    rng = np.random.default_rng(15)
    for groups in (None, fastopt.Groups(n, [{"range": (0, 40), "lr": 0.05,
                                             "weight_decay": 0.1}])):
        host = fastopt.AdamBuffers.zeros(rng.standard_normal(n).astype(np.float32),
                                         np.zeros(n, np.float32), state_dtype=state)
        host.param_copy = _copy_of(host.param, kind)
        dev = fastopt.to_device(host)
        assert dev.param_copy is not None
        back = _step_both(registry.step_function(registry.get("adam")),
                          dict(lr=1e-3, groups=groups), host, dev, rng, 2)
        assert back.param_copy.dtype == host.param_copy.dtype
        assert np.array_equal(back.param_copy, host.param_copy)
        assert np.array_equal(back.param_copy, _copy_of(back.param, kind))
        for name, a in host.arrays().items():
            worst = int(_ulp_diff(a, back.arrays()[name]).max()) if a.dtype != np.uint16 else \
                int(np.abs(a.astype(np.int64) - back.arrays()[name].astype(np.int64)).max())
            bound = 0 if (REAL_GPU and not NVVM_CONTRACTION) or a.dtype == np.uint16 else 2
            assert worst <= bound, name


def test_param_copy_refusals_on_the_device_write_nothing():
    n = 64
    host = fastopt.AdamBuffers.zeros(np.ones(n, np.float32), np.ones(n, np.float32))
    dev = fastopt.to_device(host)
    dev.param_copy = np.zeros(n, np.uint16)                 # a host copy of device weights
    with pytest.raises(TypeError, match="host arrays or both CUDA arrays"):
        fastopt.adam_step(dev)
    dev2 = fastopt.to_device(host)
    dev2.param_copy = cuda.to_device(np.zeros(2 * n, np.uint16))          # the wrong shape
    with pytest.raises(ValueError, match="shape"):
        fastopt.adam_step(dev2)
    for b in (dev, dev2):
        back = fastopt.to_host(b)
        assert back.step == 0 and np.all(back.param == 1) and not np.any(back.param_copy)


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
def test_8bit_state_with_a_param_copy_on_the_device_matches_the_cpu(kind):
    """8-bit state with a bfloat16 or float16 param copy on the device, with and without
    groups: each thread writes its new parameters' copy after the body; the CPU's codes,
    scales, parameters and copy."""
    n = 45 if not REAL_GPU else 100_003
    block = 32 if not REAL_GPU else 256
    rng = np.random.default_rng(16)
    for groups in (None, fastopt.Groups(n, [{"range": (5, 20), "lr": 0.05,
                                             "weight_decay": 0.1}])):
        host = fastopt.AdamBuffers.zeros(rng.standard_normal(n).astype(np.float32),
                                         np.zeros(n, np.float32), state_dtype="int8",
                                         block_size=block, min_8bit_size=0)
        host.param_copy = _copy_of(host.param, kind)
        dev = fastopt.to_device(host)
        back = _step_both(registry.step_function(registry.get("adam")),
                          dict(lr=1e-3, groups=groups), host, dev, rng, 2)
        assert np.array_equal(back.param_copy, host.param_copy)
        assert np.array_equal(back.param_copy, _copy_of(back.param, kind))
        for name, a in host.arrays().items():
            assert np.array_equal(a, back.arrays()[name]), name
        for name, a in host.state_absmax.items():
            assert np.array_equal(a, back.state_absmax[name]), f"scales of {name}"


def test_bfloat16_state_with_groups_on_the_device_matches_the_cpu(monkeypatch):
    """Groups on bfloat16 state on the device, one launch (it was one per segment; stochastic
    rounding from each element's index in the arena): the CPU's bits."""
    from fastopt.kernels import cuda as kc
    grouped = _CountLaunches(kc.get_grouped)
    single = _CountLaunches(kc.get_bf16)
    monkeypatch.setattr(kc, "get_grouped", grouped)
    monkeypatch.setattr(kc, "get_bf16", single)
    n = 3 * config.CUDA_THREADS_PER_BLOCK + 5
    groups = fastopt.Groups(n, [{"range": (0, 40), "lr": 0.05, "weight_decay": 0.1}])
    rng = np.random.default_rng(8)
    host = fastopt.AdamBuffers.zeros(rng.standard_normal(n).astype(np.float32),
                                     np.zeros(n, np.float32), state_dtype="bfloat16",
                                     stochastic_rounding=True, seed=3)
    dev = fastopt.to_device(host)
    for _ in range(3):
        g = rng.standard_normal(n).astype(np.float32)
        host.grad[...] = g
        dev.grad.copy_to_device(g)
        fastopt.adam_step(host, lr=1e-3, groups=groups, backend="cpu")
        fastopt.adam_step(dev, lr=1e-3, groups=groups)
    assert grouped.launches == 3 and single.launches == 0
    back = fastopt.to_host(dev)
    for name, a in host.arrays().items():
        assert np.array_equal(a, back.arrays()[name]), name


class _CountLaunches:
    """Wraps a CUDA kernel getter: counts the launches of the kernels it returns."""

    def __init__(self, get):
        self.get, self.launches = get, 0

    def __call__(self, *args, **kw):
        kernel, outer = self.get(*args, **kw), self

        class Counted:
            def __getitem__(self, config):
                outer.launches += 1
                return kernel[config]
        return Counted()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_a_grouped_step_is_one_launch_and_matches_the_cpu(spec, monkeypatch):
    """Every optimizer: groups that select two kernels (a weight decay in one group only, where
    the optimizer has one) and another value of the first real hyperparameter, stepped in one
    launch (a record with a pre-pass: one per segment), equal to the CPU's grouped step."""
    from fastopt.kernels import cuda as kc
    n = 3 * config.CUDA_THREADS_PER_BLOCK + 5
    reals = [h for h in spec.hypers if h.kind == "real" and h.schedulable]
    first = reals[0]
    g0 = {first.name: first.default * 0.5 if first.default else 0.01}
    if "weight_decay" in spec.defaults:
        g0["weight_decay"] = 0.01
    groups = fastopt.Groups(n, [dict(range=(0, 40), **g0), {"ranges": [(50, 60), (70, n)]}])
    kw, host, dev, rng = _pair(spec, {}, np.float32, n, seed=3)
    grouped = _CountLaunches(kc.get_grouped)
    single = _CountLaunches(kc.get)
    norms = _CountLaunches(kc.get_norms)
    monkeypatch.setattr(kc, "get_grouped", grouped)
    monkeypatch.setattr(kc, "get", single)
    monkeypatch.setattr(kc, "get_norms", norms)
    fn = registry.step_function(spec)
    for _ in range(3):
        g = rng.standard_normal(n).astype(np.float32)
        host.grad[...] = g
        dev.grad.copy_to_device(g)
        fn(host, backend="cpu", groups=groups, **kw)
        fn(dev, groups=groups, **kw)
    assert grouped.launches == 3 and single.launches == 0
    if spec.kernel.norm_names:
        # 5 segments (0, 40) (40, 50) (50, 60) (60, 70) (70, n), a row each; one pre-pass
        # launch per kind (with and without weight decay) for all of them
        assert norms.launches == 3 * (1 + ("weight_decay" in spec.defaults))
    back = fastopt.to_host(dev)
    for name, a in host.arrays().items():
        bound = testinfo.info(spec).simulator_ulp
        if REAL_GPU and not spec.kernel.norm_names and not NVVM_CONTRACTION:
            bound = 0
        assert int(_ulp_diff(a, back.arrays()[name]).max()) <= bound, name


def test_more_groups_than_rows_travel_with_a_launch_are_still_one_launch(monkeypatch):
    """More distinct rows of scalars than ``GROUPED_MAX_ROWS`` (17 learning rates): the rows
    go in a device array, one launch per step (it was one per segment), equal to the CPU's
    grouped step."""
    from fastopt._cuda_backend import GROUPED_MAX_ROWS
    from fastopt.kernels import cuda as kc
    spec = registry.get("adam")
    n = 3 * config.CUDA_THREADS_PER_BLOCK + 5
    groups = fastopt.Groups(n, [{"range": (3 * k, 3 * k + 3), "lr": 1e-3 * (k + 2)}
                                for k in range(GROUPED_MAX_ROWS + 1)])
    kw, host, dev, rng = _pair(spec, {}, np.float32, n, seed=18)
    grouped = _CountLaunches(kc.get_grouped)
    single = _CountLaunches(kc.get)
    monkeypatch.setattr(kc, "get_grouped", grouped)
    monkeypatch.setattr(kc, "get", single)
    for _ in range(2):
        g = rng.standard_normal(n).astype(np.float32)
        host.grad[...] = g
        dev.grad.copy_to_device(g)
        fastopt.adam_step(host, backend="cpu", groups=groups, **kw)
        fastopt.adam_step(dev, groups=groups, **kw)
    assert grouped.launches == 2 and single.launches == 0
    back = fastopt.to_host(dev)
    for name, a in host.arrays().items():
        bound = 0 if REAL_GPU and not NVVM_CONTRACTION else testinfo.info(spec).simulator_ulp
        assert int(_ulp_diff(a, back.arrays()[name]).max()) <= bound, name


@pytest.mark.parametrize("rows_in_array,state", [(False, None), (True, None),
                                                 (False, "bfloat16")],
                         ids=["rows-with-launch", "rows-in-array", "bfloat16-state"])
@pytest.mark.parametrize("spec", NORM_SPECS, ids=lambda s: s.name)
def test_per_tensor_pre_pass_is_one_launch_for_every_tensor(spec, rows_in_array, state,
                                                            monkeypatch):
    """A record with a per-tensor pre-pass (LAMB) over several tensors: one pre-pass launch and
    one update launch per step, whatever the number of tensors (it was two launches and a host
    synchronization per tensor: 3.3 ms a step for 10 tensors at 1e7 on an H100, 35 ms for
    100), and every tensor bit for bit what stepping it alone on the device gives (chunks start
    at each tensor's start; chunks of 8 elements here, so tensors span several); also with the
    rows in a device array (as past ``GROUPED_MAX_ROWS`` tensors; set to 2 here), and on
    bfloat16 state (rounded to nearest)."""
    from fastopt.kernels import cuda as kc
    if rows_in_array:
        monkeypatch.setattr("fastopt._cuda_backend.GROUPED_MAX_ROWS", 2)
    monkeypatch.setattr(config, "NORM_CHUNK", 8)
    layout = [9, 12, 1]
    n = sum(layout)
    rng = np.random.default_rng(21)
    kw = dict(spec.defaults, weight_decay=0.01)
    param = rng.standard_normal(n).astype(np.float32)
    dev = fastopt.to_device(spec.buffers_cls.zeros(param, np.zeros(n, np.float32),
                                                   state_dtype=state))
    alone = []
    for lo, hi in zip(np.cumsum([0] + layout[:-1]), np.cumsum(layout)):
        alone.append(fastopt.to_device(spec.buffers_cls.zeros(
            param[lo:hi].copy(), np.zeros(hi - lo, np.float32), state_dtype=state)))
    fn = registry.step_function(spec)
    getter = "get_norms" if state is None else "get_norms_bf16"
    grouped = _CountLaunches(kc.get_grouped)
    norms = _CountLaunches(getattr(kc, getter))
    monkeypatch.setattr(kc, "get_grouped", grouped)
    monkeypatch.setattr(kc, getter, norms)
    starts = np.cumsum([0] + layout[:-1])
    for _ in range(2):
        g = rng.standard_normal(n).astype(np.float32)
        dev.grad.copy_to_device(g)
        before = (grouped.launches, norms.launches)
        fn(dev, layout=layout, **kw)
        assert (grouped.launches, norms.launches) == (before[0] + 1, before[1] + 1)
        for b, lo in zip(alone, starts):
            b.grad.copy_to_device(g[lo:lo + b.param.shape[0]])
            fn(b, **kw)
    back = fastopt.to_host(dev)
    at = 0
    for b in alone:
        b = fastopt.to_host(b)
        for name, a in b.arrays().items():
            assert np.array_equal(a, back.arrays()[name][at:at + a.shape[0]]), name
        at += b.param.shape[0]


@pytest.mark.parametrize("max_blocks", [0, 2], ids=["default-grid", "two-blocks"])
def test_groups_on_the_device_match_the_cpu(max_blocks, monkeypatch):
    """Groups on the device equal the CPU's grouped step; with the default grid (tiles of
    one block's width, more tiles than blocks: some blocks take two) and with two blocks
    (tiles of two elements per thread, each block taking several)."""
    monkeypatch.setattr(config, "CUDA_MAX_BLOCKS", max_blocks)
    n = 3 * config.CUDA_THREADS_PER_BLOCK + 5
    groups = fastopt.Groups(n, [{"range": (0, 40), "lr": 0.05, "weight_decay": 0.1},
                                {"ranges": [(50, 60), (70, n)], "beta1": 0.5}])
    rng = np.random.default_rng(7)
    host = fastopt.AdamBuffers.zeros(rng.standard_normal(n).astype(np.float32),
                                     np.zeros(n, np.float32))
    dev = fastopt.to_device(host)
    for _ in range(3):
        g = rng.standard_normal(n).astype(np.float32)
        host.grad[...] = g
        dev.grad.copy_to_device(g)
        fastopt.adam_step(host, lr=1e-3, groups=groups, max_grad_norm=1.0, backend="cpu")
        fastopt.adam_step(dev, lr=1e-3, groups=groups, max_grad_norm=1.0)
    back = fastopt.to_host(dev)
    for name, a in host.arrays().items():
        assert int(_ulp_diff(a, back.arrays()[name]).max()) <= ULP[np.float32], name
