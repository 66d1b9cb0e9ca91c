"""bfloat16 optimizer state (issue 13): the rounding helpers against first principles, every
optimizer with state and every option combination stepping bfloat16 state on the CPU bitwise
equal to the NumPy reference (serial and parallel, 1-D and N-D, groups and clipping, LAMB's
pre-pass), what bfloat16 state means for one step, its allocation rules, checkpoints."""
import numpy as np
import pytest

import fastopt
from fastopt import _step, precision
from helpers import SPECS, assert_bitwise, combos, full_kwargs, state_options

STATEFUL = [s for s in SPECS if s.state]


def nearest_bfloat16(x):
    """Round-to-nearest-even to bfloat16 from first principles: the two bfloat16 neighbours of
    each float32 (truncation and the next value up in magnitude), compared in float64."""
    x = np.asarray(x, np.float32)
    u = x.view(np.uint32)
    lo = (u >> 16).astype(np.uint16)
    hi = (lo.astype(np.uint32) + 1).astype(np.uint16)
    with np.errstate(invalid="ignore"):
        vlo = precision.from_bfloat16(lo).astype(np.float64)
        vhi = precision.from_bfloat16(hi).astype(np.float64)
        xv = x.astype(np.float64)
        dlo, dhi = np.abs(xv - vlo), np.abs(vhi - xv)
    # beyond the largest finite bfloat16 (0x7F7F) the next value up is 2**128 (one ulp,
    # 2**120, further), which overflows to inf (0x7F80): IEEE rounding with an unbounded
    # exponent, then overflow
    top = (lo & 0x7FFF) == 0x7F7F
    dhi = np.where(top, 2.0 ** 120 - dlo, dhi)
    out = np.where(dlo < dhi, lo, hi)
    tie = dlo == dhi
    out = np.where(tie, np.where(lo % 2 == 0, lo, hi), out)
    exact = (u & 0xFFFF) == 0
    out = np.where(exact, lo, out)
    special = ~np.isfinite(x)
    out = np.where(np.isinf(x), lo, out)
    out = np.where(np.isnan(x), lo | 0x40, out)
    assert out.dtype == np.uint16 and special.dtype == bool
    return out


def test_to_bfloat16_is_round_to_nearest_even():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(100_000).astype(np.float32),
        (rng.standard_normal(10_000) * 1e-39).astype(np.float32),       # subnormals
        rng.integers(0, 2 ** 32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.39e38, 3.4028235e38, 1.00390625,
                  1.01171875, -1.00390625, 2.0 ** -133], np.float32)])
    x = x[~np.isnan(x) | (np.arange(x.size) >= x.size - 11)]
    assert_bitwise(precision.to_bfloat16(x), nearest_bfloat16(x))
    # decoding is exact: every bfloat16 is a float32
    b = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16)
    f = precision.from_bfloat16(b)
    finite = np.isfinite(f)
    assert_bitwise(precision.to_bfloat16(f[finite]), b[finite])
    assert np.isnan(f[~finite & ((b & 0x7F) != 0)]).all()


def _with_edges(rng):
    """200,000 random float32 bit patterns after the edges of the kernels' 32-bit rounding
    arithmetic: +-inf, the NaNs next to them and at the top (whose rounding would carry into
    the sign), the largest finite (rounds to inf), ties both ways, a carry into the exponent."""
    edges = np.array([0x7F800000, 0xFF800000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF,
                      0x7FC00000, 0xFFBFFFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x7F7F0001,
                      0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF, 0x00008000, 0x80018000,
                      0, 0x80000000], np.uint32)
    x = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([edges, x]).view(np.float32)


def test_the_kernel_rounding_is_the_reference_rounding():
    from numba import njit
    from fastopt.kernels.precision import bf16_to_f32, f32_to_bf16

    @njit
    def both(x, out, back):
        for i in range(x.shape[0]):
            out[i] = f32_to_bf16(x[i])
            back[i] = bf16_to_f32(out[i])
    rng = np.random.default_rng(1)
    x = _with_edges(rng)
    out, back = np.empty(x.size, np.uint16), np.empty(x.size, np.float32)
    both(x, out, back)
    assert_bitwise(out, precision.to_bfloat16(x))
    assert_bitwise(back, precision.from_bfloat16(out))


def test_the_kernel_stochastic_rounding_is_the_reference_rounding():
    from numba import njit
    from fastopt.kernels.precision import f32_to_bf16_stochastic

    @njit
    def rounded(x, key, out):
        for i in range(x.shape[0]):
            out[i] = f32_to_bf16_stochastic(x[i], key, i)
    rng = np.random.default_rng(2)
    x = _with_edges(rng)
    out = np.empty(x.size, np.uint16)
    for key in (0, 2 ** 64 - 5, int(rng.integers(0, 2 ** 63))):
        rounded(x, np.uint64(key), out)
        assert_bitwise(out, precision.to_bfloat16_stochastic(x, key))


def _pair(spec, combo, n, shape=None, seed=0):
    kw = full_kwargs(spec, **combo)
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape or n).astype(np.float32)
    make = [spec.buffers_cls.zeros(p.copy(), np.zeros(shape or n, np.float32),
                                   state_dtype="bfloat16", **state_options(spec, kw))
            for _ in range(2)]
    return kw, make, rng


CASES = [(s, c) for s in STATEFUL for c in combos(s)]


@pytest.mark.parametrize("spec,combo", CASES, ids=[
    f"{s.name}-" + "-".join(f"{k}={v}" for k, v in c.items()) for s, c in CASES])
def test_bfloat16_state_cpu_equals_numpy(spec, combo):
    # every combination with the serial kernel; the parallel twin and N-D arrays with one
    # combination per optimizer (each kernel variant compiles once: CI time)
    cases = [(1000, False, None)]
    if combo == combos(spec)[-1]:
        cases += [(70_001, True, None), (1200, None, (30, 40))]
    for n, parallel, shape in cases:
        kw, (a, b), rng = _pair(spec, combo, n, shape)
        for _ in range(4):
            g = rng.standard_normal(a.grad.shape).astype(np.float32)
            g.reshape(-1)[::7] = 0.0
            a.grad[...] = g
            b.grad[...] = g
            _step.step(spec, a, backend="cpu", parallel=parallel, **kw)
            _step.step(spec, b, backend="numpy", **kw)
        for name, x in a.arrays().items():
            assert_bitwise(x, b.arrays()[name], f"{spec.name} {name} n={n}")
        if len(a.arrays()) > 2:            # (no state: SGD without momentum)
            assert a.state_dtype == "bfloat16"


@pytest.mark.parametrize("spec", STATEFUL, ids=lambda s: s.name)
def test_bfloat16_state_with_groups_clipping_and_unscaling(spec):
    combo = combos(spec)[-1]
    kw, (a, b), rng = _pair(spec, combo, 3000, seed=2)
    reals = [h for h in spec.hypers if h.kind == "real" and h.name == "lr"]
    groups = fastopt.Groups(3000, [{"range": (100, 1200), "lr": kw["lr"] * 0.5}]
                            if reals else [])
    for _ in range(3):
        g = rng.standard_normal(3000).astype(np.float32) * 10
        a.grad[...] = g
        b.grad[...] = g
        for x, backend in ((a, "cpu"), (b, "numpy")):
            _step.step(spec, x, backend=backend, groups=groups, max_grad_norm=1.0,
                       grad_scale=4.0, **kw)
    for name, x in a.arrays().items():
        assert_bitwise(x, b.arrays()[name], f"{spec.name} {name}")


@pytest.mark.parametrize("spec", STATEFUL, ids=lambda s: s.name)
def test_bfloat16_state_with_groups_steps_behind_cpu_equals_numpy(spec):
    """Groups with their own step counts on bfloat16 state (one call per segment), stochastic
    rounding keyed by the buffers' step: the CPU and the reference agree bit for bit."""
    combo = combos(spec)[-1]
    kw, (a, b), rng = _pair(spec, combo, 3000, seed=4)
    groups = fastopt.Groups(3000, [{"range": (100, 1200), "steps_behind": 2},
                                   {"range": (1500, 1700), "steps_behind": 1}])
    for x in (a, b):
        x.step = 2
        x.rounding_seed = 11
    for _ in range(3):
        g = rng.standard_normal(3000).astype(np.float32)
        a.grad[...] = g
        b.grad[...] = g
        for x, backend in ((a, "cpu"), (b, "numpy")):
            _step.step(spec, x, backend=backend, groups=groups, **kw)
    for name, x in a.arrays().items():
        assert_bitwise(x, b.arrays()[name], f"{spec.name} {name}")


@pytest.mark.parametrize("spec", STATEFUL, ids=lambda s: s.name)
def test_one_step_from_zero_state_is_the_float32_step_with_the_state_rounded(spec):
    """bfloat16 state is read as float32, updated in float32 and rounded when stored: from the
    initial state (exact in bfloat16 for these optimizers' defaults) the parameter after one
    step is the float32 one, and the state is its rounding."""
    kw = full_kwargs(spec, **combos(spec)[0])
    rng = np.random.default_rng(3)
    p = rng.standard_normal(500).astype(np.float32)
    g = rng.standard_normal(500).astype(np.float32)
    opts = state_options(spec, kw)
    f = spec.buffers_cls.zeros(p.copy(), g.copy(), **opts)
    h = spec.buffers_cls.zeros(p.copy(), g.copy(), state_dtype="bfloat16", **opts)
    spec.step_fn(f, **kw)
    spec.step_fn(h, **kw)
    assert_bitwise(h.param, f.param)
    for name in spec.buffers_cls.state_fields:
        if getattr(f, name) is not None:
            assert_bitwise(getattr(h, name), precision.to_bfloat16(getattr(f, name)), name)
            assert getattr(h, name).nbytes * 2 == getattr(f, name).nbytes


def test_initial_state_values_are_rounded_once():
    p = np.ones(4, np.float32)
    b = fastopt.AdagradBuffers.zeros(p, p.copy(), state_dtype="bfloat16",
                                     initial_accumulator_value=0.1)
    assert b.sum.dtype == np.uint16
    assert (b.sum == precision.to_bfloat16(np.float32(0.1))).all()


@pytest.mark.parametrize("args,error,match", [
    (dict(dtype=np.float64, state_dtype="bfloat16"), TypeError, "needs float32 parameters"),
    (dict(dtype=np.float32, state_dtype="float16"), ValueError, "state_dtype must be"),
    (dict(dtype=np.float32, state_dtype="float64"), ValueError, "differs from the param"),
])
def test_bad_state_dtypes_are_refused(args, error, match):
    p = np.ones(4, args["dtype"])
    with pytest.raises(error, match=match):
        fastopt.AdamBuffers.zeros(p, p.copy(), state_dtype=args["state_dtype"])


def test_bfloat16_state_with_float64_parameters_is_refused_by_the_step():
    p = np.ones(4)
    with pytest.raises(TypeError, match="needs float32 parameters"):
        fastopt.AdamBuffers(p, p.copy(), exp_avg=np.zeros(4, np.uint16),
                            exp_avg_sq=np.zeros(4, np.uint16))


def test_checkpoint_keeps_bfloat16_state_as_is(tmp_path):
    rng = np.random.default_rng(4)
    p = rng.standard_normal(300).astype(np.float32)
    b = fastopt.AdamBuffers.zeros(p, rng.standard_normal(300).astype(np.float32),
                                  state_dtype="bfloat16", amsgrad=True)
    for _ in range(3):
        fastopt.adam_step(b, amsgrad=True)
    path = tmp_path / "c.ckpt"
    fastopt.save_checkpoint(path, b)
    c = fastopt.load_checkpoint(path)
    assert c.state_dtype == "bfloat16" and c.step == 3
    for name in ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert_bitwise(getattr(c, name), getattr(b, name), name)
    assert b.exp_avg.nbytes == 600       # stored, and saved, as two bytes per value
    # loading into float32 state is refused, nothing written
    t = fastopt.AdamBuffers.zeros(np.zeros(300, np.float32), np.zeros(300, np.float32),
                                  amsgrad=True)
    with pytest.raises(fastopt.CheckpointError, match="never converted"):
        fastopt.load_checkpoint(path, t)
    assert not t.param.any() and t.step == 0
    # and a checkpoint of float32 state stays format version 1
    fastopt.save_checkpoint(tmp_path / "f.ckpt", t)
    assert b'"format_version": 1' in (tmp_path / "f.ckpt").read_bytes()[:1000]
    assert b'"format_version": 2' in path.read_bytes()[:1000]


def test_lamb_pre_pass_reads_bfloat16_state():
    spec = fastopt.registry.get("lamb")
    kw, (a, b), rng = _pair(spec, {}, 50_000, seed=5)
    for _ in range(3):
        a.grad[...] = b.grad[...] = rng.standard_normal(50_000).astype(np.float32)
        fastopt.lamb_step(a, layout=[20_000, 30_000], weight_decay=0.01)
        fastopt.lamb_step(b, layout=[20_000, 30_000], weight_decay=0.01, backend="numpy")
    for name, x in a.arrays().items():
        assert_bitwise(x, b.arrays()[name], name)


# ------------------------------------------------------------------ stochastic rounding
def test_stochastic_rounding_helper_matches_its_definition_and_is_unbiased():
    rng = np.random.default_rng(6)
    x = rng.standard_normal(50_000).astype(np.float32)
    key = 0xDEADBEEF12345678
    got = precision.to_bfloat16_stochastic(x, key, offset=11)
    u = x.view(np.uint32).astype(np.uint64)
    r = np.array([precision.splitmix64(int(key) + 11 + i) >> 48 for i in range(x.size)],
                 np.uint64)
    assert_bitwise(got, ((u + r) >> 16).astype(np.uint16))
    # each value goes to one of its two bfloat16 neighbours
    down = (u >> 16).astype(np.uint16)
    assert np.all((got == down) | (got == down + 1))
    # unbiased: a value a quarter of the way up rounds up a quarter of the time
    q = np.full(400_000, 1.0 + 2.0 ** -9, np.float32)
    mean = precision.from_bfloat16(precision.to_bfloat16_stochastic(q, 99)).astype(np.float64)
    assert abs(mean.mean() - (1.0 + 2.0 ** -9)) < 2e-5
    assert precision.from_bfloat16(precision.to_bfloat16(q[:1]))[0] == 1.0


# stochastic rounding lives in the bfloat16 type's item write, shared by every optimizer: a
# sample (two moments, one with its pre-pass, a state with an initial value) keeps CI time down;
# the all-combinations test above covers every optimizer with nearest rounding
SR_SPECS = [s for s in STATEFUL if s.name in ("adam", "rmsprop", "lamb", "adagrad")]


@pytest.mark.parametrize("spec", SR_SPECS, ids=lambda s: s.name)
def test_stochastic_rounding_cpu_equals_numpy_for_any_thread_count_and_split(spec):
    kw = full_kwargs(spec, **combos(spec)[-1])
    rng = np.random.default_rng(7)
    n = 70_001
    p = rng.standard_normal(n).astype(np.float32)
    groups = fastopt.Groups(n, [{"range": (1000, 40_000), "lr": kw["lr"] * 0.5}])
    runs = [("cpu", True, None), ("cpu", False, None), ("numpy", None, None),
            ("cpu", None, groups), ("numpy", None, groups)]
    out = []
    for backend, parallel, grp in runs:
        b = spec.buffers_cls.zeros(p.copy(), np.zeros(n, np.float32), state_dtype="bfloat16",
                                   stochastic_rounding=True, seed=123,
                                   **state_options(spec, kw))
        r = np.random.default_rng(8)
        for _ in range(3):
            b.grad[...] = r.standard_normal(n).astype(np.float32)
            _step.step(spec, b, backend=backend, parallel=parallel, groups=grp, **kw)
        out.append(b)
    for other in out[1:3]:
        for name, x in out[0].arrays().items():
            assert_bitwise(x, other.arrays()[name], f"{spec.name} {name}")
    for name, x in out[3].arrays().items():
        assert_bitwise(x, out[4].arrays()[name], f"{spec.name} grouped {name}")
    # another seed rounds differently; nearest rounding differs from both
    c = spec.buffers_cls.zeros(p.copy(), np.zeros(n, np.float32), state_dtype="bfloat16",
                               stochastic_rounding=True, seed=124, **state_options(spec, kw))
    r = np.random.default_rng(8)
    for _ in range(3):
        c.grad[...] = r.standard_normal(n).astype(np.float32)
        _step.step(spec, c, **kw)
    field = [f for f in spec.buffers_cls.state_fields if getattr(c, f) is not None][0]
    assert not np.array_equal(getattr(c, field), getattr(out[0], field))


def test_stochastic_rounding_options_are_checked_and_the_seed_is_checkpointed(tmp_path):
    p = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="needs state_dtype='bfloat16'"):
        fastopt.AdamBuffers.zeros(p, p.copy(), stochastic_rounding=True)
    with pytest.raises(ValueError, match="seed must be"):
        fastopt.AdamBuffers.zeros(p, p.copy(), state_dtype="bfloat16",
                                  stochastic_rounding=True, seed=-1)
    b = fastopt.AdamBuffers.zeros(p, np.full(8, 0.3, np.float32), state_dtype="bfloat16",
                                  stochastic_rounding=True, seed=2 ** 63 + 5)
    fastopt.adam_step(b)
    fastopt.save_checkpoint(tmp_path / "c", b)
    c = fastopt.load_checkpoint(tmp_path / "c")
    assert c.rounding_seed == 2 ** 63 + 5
    c.grad[...] = b.grad
    fastopt.adam_step(b)
    fastopt.adam_step(c)
    for name in ("param", "exp_avg", "exp_avg_sq"):
        assert_bitwise(getattr(b, name), getattr(c, name), name)
    # changing the seed takes effect at the next step (the cached step is rebuilt)
    b.rounding_seed = None
    fastopt.adam_step(b)
    b.rounding_seed = "x"
    with pytest.raises(ValueError, match="rounding_seed"):
        fastopt.adam_step(b)


# ------------------------------------------------------------------ param_copy
# the copy is written by the parameter's item write, shared by every optimizer: a sample
# (two moments, momentum-only state, a pre-pass, a sign update)
# float16 copies on two of them (the same item write, another conversion)
COPY_CASES = [(s, kind) for s in SPECS if s.name in ("adam", "sgd", "lamb", "lion")
              for kind in ("bfloat16", "float16") if kind == "bfloat16" or s.name in ("adam",
                                                                                   "lamb")]


@pytest.mark.parametrize("spec,kind", COPY_CASES, ids=[f"{s.name}-{k}" for s, k in COPY_CASES])
def test_param_copy_is_written_in_the_same_step(spec, kind):
    """A bfloat16 or float16 copy of the parameter (a low-precision model's weights) written
    by the step itself: CPU == NumPy bitwise, equal to rounding the new parameter (float16:
    NumPy's own conversion), with groups, N-D arrays and bfloat16 state."""
    kw = full_kwargs(spec, **combos(spec)[-1])
    rng = np.random.default_rng(9)
    for shape, sd, groups in [((70_001,), None, None), ((30, 40), "bfloat16", None),
                              ((3000,), None, fastopt.Groups(3000, [{"range": (10, 900),
                                                                      "lr": kw["lr"] / 2}]))]:
        p = rng.standard_normal(shape).astype(np.float32)
        bs = []
        for _ in range(2):
            b = spec.buffers_cls.zeros(p.copy(), np.zeros(shape, np.float32), state_dtype=sd,
                                       **state_options(spec, kw))
            b.param_copy = np.zeros(shape, np.uint16 if kind == "bfloat16" else np.float16)
            bs.append(b)
        for _ in range(3):
            g = rng.standard_normal(shape).astype(np.float32)
            for b, backend in zip(bs, ("cpu", "numpy")):
                b.grad[...] = g
                _step.step(spec, b, backend=backend, groups=groups, **kw)
        assert_bitwise(bs[0].param_copy, bs[1].param_copy)
        assert_bitwise(bs[0].param_copy, precision.to_bfloat16(bs[0].param)
                       if kind == "bfloat16" else bs[0].param.astype(np.float16))
        for name, x in bs[0].arrays().items():
            assert_bitwise(x, bs[1].arrays()[name], name)


def test_param_copy_is_validated_and_can_be_attached_or_dropped():
    p = np.ones(10, np.float32)
    b = fastopt.AdamBuffers.zeros(p, np.full(10, 0.5, np.float32))
    snap = (p.copy(), b.exp_avg.copy(), b.step)
    for bad, error, match in [(np.zeros(10, np.int16), TypeError, "uint16 array of bfloat16 "
                                                              "bits .* or a float16 array"),
                              (np.zeros(9, np.uint16), ValueError, "shape"),
                              (np.zeros(20, np.uint16)[::2], ValueError, "C-contiguous"),
                              (p.view(np.uint16)[:10], ValueError, "share memory")]:
        b.param_copy = bad
        with pytest.raises(error, match=match):
            fastopt.adam_step(b)
        assert (p == snap[0]).all() and (b.exp_avg == snap[1]).all() and b.step == snap[2]
    b.param_copy = None
    fastopt.adam_step(b)                       # a cached step without a copy...
    b.param_copy = copy = np.zeros(10, np.uint16)
    fastopt.adam_step(b)                       # ...is rebuilt when one is attached
    assert_bitwise(copy, precision.to_bfloat16(p))
    d = fastopt.AdamBuffers.zeros(np.ones(4), np.ones(4))
    for kind in (np.uint16, np.float16):
        d.param_copy = np.zeros(4, kind)
        with pytest.raises(TypeError, match="needs float32 parameters"):
            fastopt.adam_step(d)
        assert (d.param == 1).all() and d.step == 0


def test_float16_rounding_equals_numpy_on_every_exponent_and_rounding_case():
    """The kernels' float32 -> float16 conversion (``kernels.precision.f32_to_f16``) against
    NumPy's ``astype(np.float16)``: every float32 whose low 16 bits are one of the patterns
    where rounding decides (0, the tie, either side of it, all ones, ...) for all 2**16 high
    halves (every sign and exponent: zeros, float32 and float16 subnormals, the overflow
    edge, inf, NaN), plus a million random patterns; bit for bit, NaN as (quiet) NaN.
    ``bench/cpu_probes/f16_rounding_check.py`` runs all 2**32 patterns."""
    from numba import njit

    from fastopt.kernels.precision import f32_to_f16

    @njit(error_model="numpy")
    def convert(x, out):
        for i in range(x.shape[0]):
            out[i] = f32_to_f16(x[i])
    lows = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFF, 0x8000,
                     0xF000, 0xFFFF], np.uint32)
    hi = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    u = (hi[:, None] | lows[None, :]).reshape(-1)
    u = np.concatenate([u, np.random.default_rng(3).integers(0, 1 << 32, 1_000_000,
                                                             dtype=np.uint64).astype(np.uint32)])
    x = u.view(np.float32)
    out = np.empty(x.shape[0], np.uint16)
    convert(x, out)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(out[~nan], ref[~nan])
    got = out[nan]
    assert np.all((got & 0x7C00) == 0x7C00) and np.all(got & 0x0200)      # quiet NaNs
    assert np.array_equal(got >> 15, (u[nan] >> 31).astype(np.uint16))     # sign kept


def test_the_repr_says_the_state_precision():
    """A printed buffers object says when its state is compressed (before, an 8-bit or
    bfloat16 state looked like full precision)."""
    p, g = np.zeros(5000, np.float32), np.ones(5000, np.float32)
    assert "state_dtype" not in repr(fastopt.AdamBuffers.zeros(p.copy(), g))
    assert repr(fastopt.AdamBuffers.zeros(p.copy(), g, state_dtype="bfloat16")).endswith(
        "state=[exp_avg, exp_avg_sq], state_dtype=bfloat16)")
    assert "bfloat16, stochastic rounding)" in repr(fastopt.AdamBuffers.zeros(
        p.copy(), g, state_dtype="bfloat16", stochastic_rounding=True))
    assert "state_dtype=int8, blocks of 128)" in repr(fastopt.RMSpropBuffers.zeros(
        p.copy(), g, state_dtype="int8", block_size=128))
    small = fastopt.AdamBuffers.zeros(p[:100].copy(), g[:100], state_dtype="int8")
    assert "state_dtype" not in repr(small)          # below min_8bit_size: full precision
