"""API behaviour: FlatParams, config, checkpoints, convergence, dtype, compilation."""
import math
import numpy as np
import pytest

import fastopt
from fastopt import config, registry
from helpers import (DTYPES, SPECS, assert_buffers_bitwise, assert_unchanged, clone, combos,
                     full_kwargs, info, make_buffers, new_grad, run_python, snapshot,
                     state_options, step_fn)


# ------------------------------------------------------------------ convergence
def _rosenbrock_grad(x, g):
    g[0] = -2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2)
    g[1] = 200 * (x[1] - x[0] ** 2)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_converges_on_rosenbrock(spec):
    if not info(spec).tuned:
        pytest.skip("no tuned settings in fastopt.testinfo")
    if info(spec).no_rosenbrock:
        pytest.skip(info(spec).no_rosenbrock)
    x, g = np.array([-1.2, 1.0]), np.zeros(2)
    kw = full_kwargs(spec, **info(spec).tuned)
    b = spec.buffers_cls.zeros(x, g, **state_options(spec, kw))
    for _ in range(20000):
        _rosenbrock_grad(x, g)
        step_fn(spec)(b, **kw)
    np.testing.assert_allclose(x, [1.0, 1.0], atol=5e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_converges_on_quadratic_and_keeps_dtype(spec, dtype):
    if not info(spec).tuned:
        pytest.skip("no tuned settings in fastopt.testinfo")
    a = np.linspace(0.5, 2.0, 50).astype(dtype)
    x = np.ones(50, dtype)
    g = np.zeros(50, dtype)
    kw = full_kwargs(spec, **info(spec).tuned)
    b = spec.buffers_cls.zeros(x, g, **state_options(spec, kw))
    f0 = 0.5 * float(np.sum(a * x * x))
    for _ in range(3000):
        np.multiply(a, x, out=g)
        step_fn(spec)(b, **kw)
    assert 0.5 * float(np.sum(a * x * x)) < 1e-3 * f0
    for arr in b.arrays().values():
        assert arr.dtype == dtype
    assert b.step == 3000


# ------------------------------------------------------------------ API details
def test_backend_none_chooses_cpu_and_equals_explicit():
    spec = registry.get("adam")
    a = make_buffers(spec, 100, np.float32, {})
    b = clone(a)
    rng = np.random.default_rng(0)
    new_grad(a, rng)
    b.grad[...] = a.grad
    fastopt.adam_step(a)
    fastopt.adam_step(b, backend="cpu")
    assert_buffers_bitwise(a, b)


def test_step_returns_buffers_and_counts():
    p, g = np.zeros(5), np.ones(5)
    b = fastopt.SGDBuffers.zeros(p, g)
    assert fastopt.sgd_step(b, lr=0.5) is b
    assert b.step == 1
    np.testing.assert_array_equal(p, -0.5)


def test_only_needed_state_is_allocated():
    p, g = np.zeros(3), np.zeros(3)
    assert fastopt.AdamBuffers.zeros(p, g).max_exp_avg_sq is None
    assert fastopt.AdamBuffers.zeros(p, g, amsgrad=True).max_exp_avg_sq.shape == (3,)
    r = fastopt.RMSpropBuffers.zeros(p, g)
    assert r.grad_avg is None and r.momentum_buffer is None
    r = fastopt.RMSpropBuffers.zeros(p, g, centered=True, momentum=0.9)
    assert r.grad_avg is not None and r.momentum_buffer is not None
    assert fastopt.SGDBuffers.zeros(p, g).momentum_buffer is None
    assert fastopt.SGDBuffers.zeros(p, g, momentum=0.9).momentum_buffer is not None
    assert fastopt.MomentumBuffers.zeros(p, g).velocity is not None


def test_buffers_keep_callers_arrays():
    p, g = np.ones(4, np.float32), np.ones(4, np.float32)
    b = fastopt.MomentumBuffers.zeros(p, g)
    assert b.param is p and b.grad is g
    fastopt.momentum_step(b)
    assert p[0] != 1.0


def test_read_only_grad_is_accepted():
    p, g = np.ones(4), np.ones(4)
    g.setflags(write=False)
    fastopt.sgd_step(fastopt.SGDBuffers.zeros(p, g), lr=1.0)
    np.testing.assert_array_equal(p, 0.0)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_hyperparameters_are_cast_before_the_kernel(spec):
    """Every compiled signature of a float32 kernel has only float32 scalars (a float64
    scalar would promote the arithmetic and add a float64 signature)."""
    import numba
    kw = full_kwargs(spec, **info(spec).tuned)
    hp = spec.validate(kw)
    for dtype in DTYPES:
        b = make_buffers(spec, 10, dtype, info(spec).tuned)
        step_fn(spec)(b, **kw)
        step_fn(spec)(b, **kw)
        scalars = spec.kernel_scalars(hp, 2, np.dtype(dtype).type)
        assert scalars.dtype == dtype and scalars.shape == (len(spec.scalars(hp, 2)),)
    from fastopt.kernels import cpu
    kernel = cpu.family(spec.kernel).get(False, **spec.options(hp, 2))
    assert kernel.signatures
    from fastopt.kernels.precision import BF16ArrayType, F16ArrayType, ParamCopyType
    views = (BF16ArrayType, F16ArrayType, ParamCopyType)
    for sig in kernel.signatures:
        # every argument, the packed scalars included, is an array of one dtype (bfloat16
        # state, a bfloat16 or float16 gradient and a param copy are their own types, over
        # uint16 bits)
        floats = [a for a in sig if not isinstance(a, views)]
        assert all(isinstance(a, numba.types.Array) for a in floats), sig
        assert len({str(a.dtype) for a in floats}) == 1, sig


# ------------------------------------------------------------------ FlatParams
def test_flat_params_views_are_zero_copy():
    fp = fastopt.FlatParams({"W": (3, 4), "b": 4, "c": ()}, dtype=np.float64)
    assert fp.size == 17 and fp.param.shape == (17,)
    fp.params["W"][1, 2] = 7.0
    assert fp.param[6] == 7.0
    fp.grads["b"][:] = 2.0
    np.testing.assert_array_equal(fp.grad[12:16], 2.0)
    assert np.shares_memory(fp.params["c"], fp.param)


def test_flat_params_from_arrays_and_fused_step():
    rng = np.random.default_rng(0)
    arrays = {"W1": rng.standard_normal((5, 3)).astype(np.float32),
              "b1": rng.standard_normal(3).astype(np.float32)}
    fp = fastopt.FlatParams(arrays)
    assert fp.dtype == np.float32
    np.testing.assert_array_equal(fp.params["W1"], arrays["W1"])
    b = fastopt.AdamBuffers.zeros(fp.param, fp.grad)
    fp.grads["W1"][...] = 1.0
    fastopt.adam_step(b, lr=0.1)
    assert np.all(fp.params["W1"] < arrays["W1"])
    np.testing.assert_array_equal(fp.params["b1"], arrays["b1"])  # zero grad, no change


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_flat_params_copies_keep_their_views(how):
    """A copied FlatParams' tensors are views of the copy's arenas (numpy copies a view as a
    separate array: before, the copy's ``params`` no longer tiled its ``param``)."""
    import copy
    import pickle
    fp = fastopt.FlatParams({"W": (3, 4), "b": 4}, dtype=np.float64)
    fp.param[:] = np.arange(16)
    fp.grad[:] = 1.0
    twin = copy.deepcopy(fp) if how == "deepcopy" else pickle.loads(pickle.dumps(fp))
    assert not np.shares_memory(twin.param, fp.param)
    for name in fp:
        assert np.shares_memory(twin.params[name], twin.param)
        assert np.shares_memory(twin.grads[name], twin.grad)
        assert np.array_equal(twin.params[name], fp.params[name])
    twin.params["b"][:] = -1.0
    assert np.array_equal(twin.param[12:], [-1.0] * 4) and fp.param[12] == 12.0


@pytest.mark.parametrize("bad,err", [({}, TypeError), ({"a": (2, -1)}, ValueError),
                                     ({1: (2,)}, TypeError)])
def test_flat_params_rejects(bad, err):
    with pytest.raises(err):
        fastopt.FlatParams(bad)
    with pytest.raises(TypeError, match="float32 or float64"):
        fastopt.FlatParams({"a": 3}, dtype=np.int32)


# ------------------------------------------------------------------ config
def test_config_reset_and_environment(monkeypatch):
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 5)
    monkeypatch.setenv("FASTOPT_PARALLEL_THRESHOLD", "1234")
    config.reset()
    assert config.PARALLEL_THRESHOLD == 1234
    monkeypatch.setenv("FASTOPT_PARALLEL_THRESHOLD", "many")
    with pytest.raises(ValueError, match="FASTOPT_PARALLEL_THRESHOLD"):
        config.reset()
    monkeypatch.delenv("FASTOPT_PARALLEL_THRESHOLD")
    monkeypatch.setenv("OMP_WAIT_POLICY", "")
    monkeypatch.setenv("GOMP_SPINCOUNT", "")
    config.reset()
    assert config.PARALLEL_THRESHOLD == 131072          # fastopt's short spin: a loop's default
    monkeypatch.setenv("FASTOPT_OMP_SPINCOUNT", "keep")
    config.reset()
    assert config.PARALLEL_THRESHOLD == 32768           # libgomp's long spin
    monkeypatch.delenv("FASTOPT_OMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    config.reset()
    assert config.PARALLEL_THRESHOLD == 131072
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    config.reset()
    assert config.PARALLEL_THRESHOLD == 32768
    monkeypatch.setenv("OMP_WAIT_POLICY", "")
    config.reset()
    assert set(config.as_dict()) >= {"PARALLEL_THRESHOLD", "CUDA_THREADS_PER_BLOCK",
                                     "OMP_SPINCOUNT"}


@pytest.mark.parametrize("spin, count, threshold", [
    ("1000", 1000, 131072), (" 5000 ", 5000, 131072), ("0", 0, 131072),
    ("10000", 10000, 32768), ("10k", 10000, 32768), ("2M", 2000000, 32768),
    ("infinite", math.inf, 32768), ("Infinity", math.inf, 32768),
    ("lots", None, 32768), ("5x", None, 32768), ("\u0661\u0660\u0660", None, 32768)])
def test_threshold_follows_the_spin_length(spin, count, threshold, no_wait_policy,
                                           monkeypatch):
    """The lower threshold only where threads spin long enough to be awake for the next
    back-to-back step; a count libgomp rejects leaves libgomp's long default."""
    assert config.gomp_spin_count(spin) == count
    monkeypatch.setenv("GOMP_SPINCOUNT", spin)
    config.reset()
    assert config.PARALLEL_THRESHOLD == threshold
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")      # GOMP_SPINCOUNT counts first
    config.reset()
    assert config.PARALLEL_THRESHOLD == (32768 if count is None else threshold)
    monkeypatch.setenv("GOMP_SPINCOUNT", "")
    monkeypatch.setenv("FASTOPT_OMP_SPINCOUNT", "20000")   # fastopt's own count, long
    monkeypatch.setenv("OMP_WAIT_POLICY", "")
    config.reset()
    assert config.PARALLEL_THRESHOLD == 32768
    monkeypatch.delenv("FASTOPT_OMP_SPINCOUNT")
    config.reset()


def test_bench_wait_policy_applies_unless_the_user_chose(no_wait_policy, monkeypatch):
    def blank():
        no_wait_policy()
        config.reset()
    blank()
    assert config.PARALLEL_THRESHOLD == 131072
    assert config.set_thread_wait("bench") == {"OMP_WAIT_POLICY": None,
                                               "GOMP_SPINCOUNT": "1000"}
    assert config.PARALLEL_THRESHOLD == 131072     # a short spin: asleep by the next step
    blank()
    config.PARALLEL_THRESHOLD = 5000               # an explicit choice is kept
    config.set_thread_wait("bench")
    assert config.PARALLEL_THRESHOLD == 5000
    blank()
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")      # the user's choice wins
    assert config.set_thread_wait("bench") == {"OMP_WAIT_POLICY": "ACTIVE",
                                               "GOMP_SPINCOUNT": None}


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_checkpoint_resume_is_bitwise(spec, tmp_path):
    combo = combos(spec)[-1]
    kw = full_kwargs(spec, **combo)
    straight = make_buffers(spec, 257, np.float32, combo)
    resumed = clone(straight)
    rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
    for _ in range(5):
        new_grad(straight, rng1)
        new_grad(resumed, rng2)
        step_fn(spec)(straight, **kw)
        step_fn(spec)(resumed, **kw)
    path = tmp_path / "opt.ckpt"
    fastopt.save_checkpoint(path, resumed)
    fresh = fastopt.load_checkpoint(path)            # new arrays
    target = make_buffers(spec, 257, np.float32, combo, seed=77)
    fastopt.load_checkpoint(path, target)             # in place
    for other in (fresh, target):
        assert other.step == 5
        assert_buffers_bitwise(other, resumed)
    for _ in range(5):
        new_grad(straight, rng1)
        g = rng2.standard_normal(257).astype(np.float32)
        g[::7] = 0
        target.grad[...] = g
        step_fn(spec)(straight, **kw)
        step_fn(spec)(target, **kw)
    assert_buffers_bitwise(straight, target)


def _saved(tmp_path, **state):
    spec = registry.get("adam")
    b = make_buffers(spec, 64, np.float64, state)
    fastopt.adam_step(b)
    path = tmp_path / "a.ckpt"
    fastopt.save_checkpoint(path, b)
    return path, b


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "empty"])
def test_checkpoint_rejects_damaged_files(tmp_path, damage):
    path, b = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0x10
    elif damage == "magic":
        data[0:4] = b"NOPE"
    else:
        data = b""
    path.write_bytes(bytes(data))
    target = make_buffers(registry.get("adam"), 64, np.float64, {}, seed=5)
    snap = snapshot(target)
    with pytest.raises(fastopt.CheckpointError, match=str(path.name)):
        fastopt.load_checkpoint(path, target)
    assert_unchanged(target, snap)


@pytest.mark.parametrize("mismatch", ["dtype", "shape", "optimizer", "state"])
def test_checkpoint_rejects_mismatched_target(tmp_path, mismatch):
    path, _ = _saved(tmp_path)
    if mismatch == "dtype":
        target = make_buffers(registry.get("adam"), 64, np.float32, {})
    elif mismatch == "shape":
        target = make_buffers(registry.get("adam"), 65, np.float64, {})
    elif mismatch == "optimizer":
        target = make_buffers(registry.get("rmsprop"), 64, np.float64, {})
    else:
        target = make_buffers(registry.get("adam"), 64, np.float64, {"amsgrad": True})
    snap = snapshot(target)
    with pytest.raises(fastopt.CheckpointError):
        fastopt.load_checkpoint(path, target)
    assert_unchanged(target, snap)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path, b = _saved(tmp_path)
    good = path.read_bytes()
    import fastopt.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ck.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        fastopt.save_checkpoint(path, b)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_missing_checkpoint():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastopt.load_checkpoint("/nonexistent/x.ckpt")


# ------------------------------------------------------------------ compilation
def test_import_compiles_nothing():
    run_python("import fastopt\n"
               "from fastopt import registry\n"
               "from fastopt.kernels import cpu\n"
               "assert not cpu._families, 'kernel families built at import'\n"
               "assert not cpu.traffic_kernel._cache, 'compiled at import'\n"
               "print('ok')", expect="ok")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_repeated_call_picks_up_replaced_arrays_and_new_values(spec):
    """A call identical to the previous one reuses its validation; a new gradient array or a
    new hyperparameter value must still take effect (compared with the NumPy reference)."""
    kw = full_kwargs(spec, **info(spec).tuned)
    fast = make_buffers(spec, 50, np.float32, info(spec).tuned)
    ref = make_buffers(spec, 50, np.float32, info(spec).tuned)
    rng = np.random.default_rng(1)
    for i in range(4):
        g = rng.standard_normal(50).astype(np.float32)
        fast.grad = g.copy() if i % 2 else fast.grad    # a new array on odd steps
        fast.grad[...] = g
        ref.grad[...] = g
        lr = kw["lr"] * (1.0 if i < 2 else 0.5)         # a schedule from step 3
        step_fn(spec)(fast, **dict(kw, lr=lr))
        step_fn(spec)(ref, **dict(kw, lr=lr, backend="numpy"))
        assert_buffers_bitwise(fast, ref, f"step {i + 1}")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_no_recompilation_on_later_calls(spec):
    b = make_buffers(spec, 10, np.float64, {})
    kw = full_kwargs(spec)
    step_fn(spec)(b, **kw)
    step_fn(spec)(b, **kw)
    hp = spec.validate(kw)
    from fastopt.kernels import cpu
    kernel = cpu.family(spec.kernel).get(False, **spec.options(hp, 3))
    n_before = len(kernel.signatures)
    for lr in (0.1, 0.2, 0.3):
        step_fn(spec)(b, **dict(kw, lr=lr))
    assert n_before >= 1 and len(kernel.signatures) == n_before


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_kernels_use_numpy_error_model_no_fastmath_and_disk_cache(spec, parallel):
    """Read off the compiled dispatchers themselves, not the options we meant to give."""
    from numba.core.caching import FunctionCache
    from fastopt.kernels import cpu
    kw = full_kwargs(spec)
    b = make_buffers(spec, 10, np.float32, {})
    fastopt.registry.step_function(spec)(b, **kw)
    kernel = cpu.family(spec.kernel).get(parallel, **spec.options(spec.validate(kw), 2))
    assert kernel.targetoptions["error_model"] == "numpy"
    assert not kernel.targetoptions.get("fastmath")
    assert kernel.targetoptions.get("parallel", False) == parallel
    assert isinstance(kernel._cache, FunctionCache)
