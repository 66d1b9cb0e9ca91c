"""Parameter groups (issue 11): for every registered optimizer a grouped step equals, bit for
bit, stepping each group's slice on its own with its values (CPU and NumPy, with and without
clipping / unscaling / skipping, schedules as group values); bad groups are refused before any
write."""
import itertools
import math

import numpy as np
import pytest

import fastopt
from fastopt import schedules
from fastopt.scaling import sum_of_squares_frozen_reference
from helpers import (SPECS, assert_bitwise, assert_unchanged, combos, full_kwargs, new_grad,
                     snapshot, step_fn)

N = 1000
# ranges chosen so that groups, gaps (the call's values) and a group of two ranges all occur
RANGES = [[(0, 300), (700, 760)], [(300, 520)], [(560, 700)]]


def other_value(h):
    """A valid value of real hyperparameter ``h`` different from its default."""
    d = h.default
    if d > 0:
        return d * 0.5
    return 0.01 if h.high is None or h.high > 0.01 else h.high / 2


def group_values(spec, combo):
    """Per group: a different value of one or two real hyperparameters (those the option
    combination accepts; a value that would change the state the buffers need is left out)."""
    reals = [h for h in spec.hypers if h.kind == "real"]
    base = full_kwargs(spec, **combo)
    need = set(spec.required_state(spec.validate(base)))
    out = []
    for i in range(len(RANGES)):
        values = {}
        for h in (reals[i % len(reals)], reals[(i + 2) % len(reals)]):
            trial = dict(base, **values)
            trial[h.name] = other_value(h)
            try:
                hp = spec.validate(trial)
            except (TypeError, ValueError):
                continue
            if set(spec.required_state(hp)) <= need:
                values[h.name] = other_value(h)
        out.append(values)
    return out


def groups_for(values, n=N):
    return fastopt.Groups(n, [dict(ranges=r, **v) for r, v in zip(RANGES, values)])


def segments(values):
    """``[(lo, hi, values)]`` covering [0, N), the gaps with ``{}`` (the call's values)."""
    segs = sorted((lo, hi, v) for r, v in zip(RANGES, values) for lo, hi in r)
    out, pos = [], 0
    for lo, hi, v in segs + [(N, N, None)]:
        if lo > pos:
            out.append((pos, lo, {}))
        if hi > lo:
            out.append((lo, hi, v))
        pos = hi
    return out


def make(spec, combo, dtype, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(N).astype(dtype)
    g = np.zeros(N, dtype)
    return spec.buffers_cls.zeros(p, g, **spec.state_options(spec.validate(
        full_kwargs(spec, **combo))))


def by_slices(spec, b, kw, values, loop, backend):
    """The reference: each segment stepped on its own (views of ``b``), with its values and
    the whole gradient's unscale x clip factor applied by hand."""
    g = b.grad
    factor = None
    max_norm, scale, skip = (loop.get("max_grad_norm"), loop.get("grad_scale"),
                             loop.get("skip_nonfinite", False))
    if max_norm is not None or skip or scale is not None:
        inv = 1.0 if scale is None else 1.0 / scale
        # frozen groups' gradients left out: the norm of the gradient with them zero
        frozen = [(lo, hi) for lo, hi, v in segments(values) if v.get("frozen")]
        norm = math.sqrt(sum_of_squares_frozen_reference(g, frozen)) * inv
        if skip and not np.isfinite(norm):
            return
        clip = 1.0
        if max_norm is not None:
            clip = min(1.0, max_norm / (norm + 1e-6))
        factor = inv * clip
    step = b.step
    for lo, hi, v in segments(values):
        if v.get("frozen"):
            continue
        arrays = {k: a[lo:hi] for k, a in b.arrays().items()}
        part = type(b)(arrays.pop("param"), arrays.pop("grad"), step=step, **arrays)
        if factor is not None and factor != 1.0:
            part.grad = g[lo:hi] * g.dtype.type(factor)
        step_fn(spec)(part, **dict(kw, **v), backend=backend)
    b.step = step + 1


LOOPS = [{}, dict(max_grad_norm=0.5, grad_scale=4.0), dict(skip_nonfinite=True)]
CASES = [(s, c, loop, dt) for s in SPECS
         for (c, loop, dt) in zip(combos(s), itertools.cycle(LOOPS),
                                  itertools.cycle([np.float32, np.float64]))]


@pytest.mark.parametrize("spec,combo,loop,dtype", CASES, ids=[
    f"{s.name}-{'-'.join(f'{k}={v}' for k, v in c.items())}-{lp}-{np.dtype(d).name}"
    for s, c, lp, d in CASES])
def test_grouped_step_equals_stepping_each_slice(spec, combo, loop, dtype):
    kw = full_kwargs(spec, **combo)
    values = group_values(spec, combo)
    _against_slices(spec, combo, dtype, kw, loop, values, seed=1)


def _against_slices(spec, combo, dtype, kw, loop, values, seed, frozen=None):
    """Three steps of the grouped step (CPU, NumPy) against ``by_slices``, bit for bit;
    ``frozen``: an element range whose bits (the gradient's too) no step changes."""
    groups = groups_for(values)
    a, b, c = (make(spec, combo, dtype) for _ in range(3))
    lo, hi = frozen or (0, 0)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        new_grad(a, rng)
        if hi > lo:     # a frozen range's gradient is not read: not even by the norm
            a.grad[lo:hi] = 1e4
            a.grad[lo] = np.nan
        b.grad[...] = a.grad
        c.grad[...] = a.grad
        kept = {k: x[lo:hi].copy() for k, x in a.arrays().items()}
        step_fn(spec)(a, **kw, **loop, groups=groups, backend="cpu")
        step_fn(spec)(b, **kw, **loop, groups=groups, backend="numpy")
        by_slices(spec, c, kw, values, loop, "numpy")
        for x in (a, b):
            assert x.step == c.step
            for k, arr in c.arrays().items():
                assert_bitwise(x.arrays()[k][lo:hi], kept[k], f"{spec.name} frozen {k}")
                if k != "grad":
                    assert_bitwise(x.arrays()[k], arr, f"{spec.name} step {c.step} {k}")


FROZEN_CASES = [(s, c, loop, dt) for s in SPECS
                for c, loop, dt in zip(combos(s)[-1:], [LOOPS[len(s.name) % 3]],
                                       [[np.float32, np.float64][len(s.name) % 2]])]


@pytest.mark.parametrize("spec,combo,loop,dtype", FROZEN_CASES, ids=[
    f"{s.name}-{lp}-{np.dtype(d).name}" for s, _, lp, d in FROZEN_CASES])
def test_a_frozen_group_is_left_out_of_the_step(spec, combo, loop, dtype):
    """``"frozen": True``: the group's elements keep every bit (parameters, state) whatever
    their gradient, and the other groups step as their slices alone would (CPU in one call,
    NumPy); clipping's norm and the finiteness check leave the frozen gradient out (it holds
    a NaN and large values here)."""
    kw = full_kwargs(spec, **combo)
    values = group_values(spec, combo)
    values[1] = {"frozen": True}
    _against_slices(spec, combo, dtype, kw, loop, values, seed=2, frozen=RANGES[1][0])

def test_a_frozen_group_on_bfloat16_state_with_a_param_copy():
    """bfloat16 state with stochastic rounding (each element's rounding from its index) and a
    float16 param copy: a frozen group keeps every bit, its copy included; the rest is the
    reference's, bit for bit."""
    rng = np.random.default_rng(9)
    p0 = rng.standard_normal(N).astype(np.float32)
    out = []
    for backend in ("cpu", "numpy"):
        b = fastopt.AdamBuffers.zeros(p0.copy(), np.zeros(N, np.float32),
                                      state_dtype="bfloat16", stochastic_rounding=True, seed=3)
        b.param_copy = np.zeros(N, np.float16)
        groups = fastopt.Groups(N, [{"range": (100, 400), "frozen": True},
                                    {"range": (600, 700), "lr": 1e-2}])
        g = np.random.default_rng(4)
        for _ in range(3):
            b.grad[...] = g.standard_normal(N).astype(np.float32)
            snap = snapshot(b)
            fastopt.adam_step(b, groups=groups, weight_decay=0.1, backend=backend)
            for k, (a, _, _) in snap[0].items():
                assert_bitwise(b.arrays()[k][100:400], a[100:400], f"{backend} {k}")
        assert np.all(b.param_copy[100:400] == 0) and np.all(b.param_copy[:100] != 0)
        out.append(b)
    for k, a in out[0].arrays().items():
        assert_bitwise(a, out[1].arrays()[k], k)
    assert_bitwise(out[0].param_copy, out[1].param_copy, "param_copy")


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_every_element_frozen_steps_nothing_but_counts_the_step(backend):
    spec = fastopt.registry.get("adam")
    b = make(spec, {}, np.float32)
    new_grad(b, np.random.default_rng(3))
    groups = fastopt.Groups(N, [{"range": (0, 400), "frozen": True},
                                {"range": (400, N), "frozen": True}])
    b.grad[5] = np.inf              # (not read: nothing is stepped)
    snap = snapshot(b)
    fastopt.adam_step(b, groups=groups, max_grad_norm=1.0, skip_nonfinite=True,
                      backend=backend)
    assert b.step == 1 and b.grad_norm == 0.0 and not b.found_inf
    b.step = 0
    assert_unchanged(b, snap)


def test_frozen_false_is_a_group_like_any_other():
    a = fastopt.Groups(10, [{"range": (0, 5), "frozen": False, "lr": 0.5}])
    b = fastopt.Groups(10, [{"range": (0, 5), "lr": 0.5}])
    assert a.groups == b.groups and repr(a) == repr(b)
    frozen = fastopt.Groups(10, [{"range": (0, 5), "frozen": True}])
    assert "frozen=True" in repr(frozen)


BEHIND = [2, 0, 1]          # steps_behind of each group of RANGES (the gaps: 0)


def lagged_groups(values):
    return fastopt.Groups(N, [dict(ranges=r, steps_behind=k, **v)
                              for r, v, k in zip(RANGES, values, BEHIND)])


def lagged_slices(spec, b, kw, values, backend):
    """The reference of a step with ``lagged_groups``: each segment stepped on its own at its
    group's own count (the buffers' step less its steps_behind)."""
    lag = {(lo, hi): k for r, k in zip(RANGES, BEHIND) for lo, hi in r}
    step = b.step
    for lo, hi, v in segments(values):
        arrays = {k: a[lo:hi] for k, a in b.arrays().items()}
        part = type(b)(arrays.pop("param"), arrays.pop("grad"), step=step - lag.get((lo, hi), 0),
                       **arrays)
        step_fn(spec)(part, **dict(kw, **v), backend=backend)
    b.step = step + 1


LAG_CASES = [(s, c, dt) for s in SPECS
             for c, dt in zip(combos(s), itertools.cycle([np.float64, np.float32]))]


@pytest.mark.parametrize("spec,combo,dtype", LAG_CASES, ids=[
    f"{s.name}-{'-'.join(f'{k}={v}' for k, v in c.items())}-{np.dtype(d).name}"
    for s, c, d in LAG_CASES])
def test_groups_steps_behind_step_each_slice_at_its_own_count(spec, combo, dtype):
    """``steps_behind=k``: the group's elements are stepped as their slice alone would be at
    the buffers' step less k (bias corrections, first-step options: a group 2 behind takes its
    own first step at the buffers' third), CPU (one call) and NumPy alike."""
    kw = full_kwargs(spec, **combo)
    values = group_values(spec, combo)
    plain, lagged = groups_for(values), lagged_groups(values)
    a, b, c = (make(spec, combo, dtype) for _ in range(3))
    rng = np.random.default_rng(5)
    for i in range(5):
        new_grad(a, rng)
        b.grad[...] = a.grad
        c.grad[...] = a.grad
        groups = plain if i < 2 else lagged
        step_fn(spec)(a, **kw, groups=groups, backend="cpu")
        step_fn(spec)(b, **kw, groups=groups, backend="numpy")
        if i < 2:
            by_slices(spec, c, kw, values, {}, "numpy")
        else:
            lagged_slices(spec, c, kw, values, "numpy")
        for x in (a, b):
            assert x.step == c.step
            for k, arr in c.arrays().items():
                if k != "grad":
                    assert_bitwise(x.arrays()[k], arr, f"{spec.name} step {c.step} {k}")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_steps_behind_with_schedules_and_clipping(spec):
    """A lagging group under the per-step paths (a scheduled value, clipping): the same bits on
    the CPU and in NumPy; a schedule is evaluated at the buffers' step (torch's schedulers
    set one value for every parameter), only the optimizer's own formulas count behind."""
    kw = full_kwargs(spec)
    lr = kw.get("lr", 1e-3)
    sched = schedules.linear_warmup(lr, 4)
    values = [dict(v, lr=sched) if "lr" in kw else v for v in group_values(spec, {})]
    groups = lagged_groups(values)
    a, b = make(spec, {}, np.float32), make(spec, {}, np.float32)
    a.step = b.step = 2
    rng = np.random.default_rng(6)
    for _ in range(3):
        new_grad(a, rng)
        b.grad[...] = a.grad
        for x, backend in ((a, "cpu"), (b, "numpy")):
            step_fn(spec)(x, **kw, groups=groups, max_grad_norm=0.5, backend=backend)
        for k in a.arrays():
            assert_bitwise(a.arrays()[k], b.arrays()[k], f"{spec.name} {k}")


def test_steps_behind_beyond_the_buffers_count_is_refused_before_any_write():
    spec = fastopt.registry.get("adam")
    b = make(spec, {}, np.float32)
    new_grad(b, np.random.default_rng(7))
    groups = fastopt.Groups(N, [{"range": (0, 10), "steps_behind": 2}])
    fastopt.adam_step(b)
    snap = snapshot(b)
    for _ in range(2):      # the full validation, then the prepared step of the same call
        with pytest.raises(ValueError, match="group 0 has steps_behind=2 but the buffers have "
                                             "taken 1 step"):
            fastopt.adam_step(b, groups=groups)
        assert_unchanged(b, snap)
    fastopt.adam_step(b, groups=fastopt.Groups(N, [{"range": (0, 10), "steps_behind": 1}]))
    assert b.step == 2
    b.step = 1
    with pytest.raises(ValueError, match="steps_behind=2"):     # the cached step, too
        fastopt.adam_step(b, groups=groups)
    b.step = 2
    fastopt.adam_step(b, groups=groups)
    assert b.step == 3


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_parallel_segments_equal_serial(spec, monkeypatch):
    kw = full_kwargs(spec)
    values = group_values(spec, {})
    a, b = make(spec, {}, np.float32), make(spec, {}, np.float32)
    rng = np.random.default_rng(2)
    new_grad(a, rng)
    b.grad[...] = a.grad
    monkeypatch.setattr(fastopt.config, "PARALLEL_THRESHOLD", 100)
    step_fn(spec)(a, **kw, groups=groups_for(values))
    monkeypatch.setattr(fastopt.config, "PARALLEL_THRESHOLD", 1 << 30)
    step_fn(spec)(b, **kw, groups=groups_for(values))
    for k in a.arrays():
        assert_bitwise(a.arrays()[k], b.arrays()[k], k)


def test_group_values_can_follow_schedules():
    spec = fastopt.registry.get("adam")
    warm = schedules.linear_warmup(1e-2, 10)
    groups = fastopt.Groups(N, [{"range": (0, 400), "lr": warm}])
    a, c = make(spec, {}, np.float32), make(spec, {}, np.float32)
    rng = np.random.default_rng(3)
    for _ in range(4):
        new_grad(a, rng)
        c.grad[...] = a.grad
        lr = warm(c.step)
        fastopt.adam_step(a, lr=1e-3, groups=groups)
        s = c.step
        for lo, hi, value in ((0, 400, lr), (400, N, 1e-3)):
            arrays = {k: x[lo:hi] for k, x in c.arrays().items()}
            part = fastopt.AdamBuffers(arrays.pop("param"), arrays.pop("grad"), step=s, **arrays)
            fastopt.adam_step(part, lr=value)
        c.step = s + 1
        for k in a.arrays():
            assert_bitwise(a.arrays()[k], c.arrays()[k], k)


def test_groups_from_flat_params_by_name():
    fp = fastopt.FlatParams({"W1": (20, 10), "b1": (10,), "W2": (10, 3), "b2": (3,)})
    groups = fastopt.Groups(fp, [{"params": ["W1", "W2"], "weight_decay": 0.1},
                                 {"params": ["b1", "b2"], "lr": 0.5}])
    assert groups.segments == ((0, 200, 0), (200, 210, 1), (210, 240, 0), (240, 243, 1))
    assert "weight_decay=0.1" in repr(groups) and "lr=0.5" in repr(groups)
    fp.grad[:] = 1.0
    b = fastopt.SGDBuffers.zeros(fp.param, fp.grad)
    fastopt.sgd_step(b, lr=0.1, groups=groups)
    assert np.all(fp.params["b1"] == np.float32(-0.5))
    assert np.all(fp.params["W1"] == np.float32(-0.1))


BAD_GROUPS = [
    (lambda fp: fastopt.Groups(fp, [{"params": ["W1"]}, {"params": ["W1"]}]), ValueError,
     "overlap"),
    (lambda fp: fastopt.Groups(fp, [{"params": ["W9"]}]), ValueError, "not a tensor"),
    (lambda fp: fastopt.Groups(fp, [{"params": ["W1"], 3: 0.1}]), TypeError,
     "not a hyperparameter name"),
    (lambda fp: fastopt.Groups(fp, [{"params": ["W1"], "amsgrad": True}]), TypeError,
     "boolean option"),
    (lambda fp: fastopt.Groups(fp, [{"params": ["W1"], "lr": "0.1"}]), TypeError,
     "real number"),
    (lambda fp: fastopt.Groups(fp.size, [{"range": (0, 10)}, {"range": (5, 20)}]),
     ValueError, "overlap"),
    (lambda fp: fastopt.Groups(fp.size, [{"range": (0, fp.size + 1)}]), ValueError,
     "not within"),
    (lambda fp: fastopt.Groups(fp.size, [{"params": ["W1"]}]), TypeError, "layout is a size"),
    (lambda fp: fastopt.Groups(fp, [{"lr": 0.1}]), ValueError, "exactly one of"),
    (lambda fp: fastopt.Groups(fp, {"params": ["W1"]}), TypeError, "list of dicts"),
    (lambda fp: fastopt.Groups(fp.size, [{"range": (1.0, 3)}]), TypeError, "must be an int"),
    (lambda fp: fastopt.Groups(fp, [{"params": ["W1"], "steps_behind": -1}]), ValueError,
     "steps_behind must be >= 0"),
    (lambda fp: fastopt.Groups(fp, [{"params": ["W1"], "steps_behind": 1.0}]), TypeError,
     "steps_behind must be an int"),
    (lambda fp: fastopt.Groups(fp, [{"params": ["W1"], "steps_behind": True}]), TypeError,
     "steps_behind must be an int"),
    (lambda fp: fastopt.Groups(fp, [{"params": ["W1"], "steps_behind": lambda t: 1}]),
     TypeError, "steps_behind must be an int"),
    (lambda fp: fastopt.Groups(fp, [{"params": ["W1"], "frozen": 1}]), TypeError,
     "frozen must be True or False"),
    (lambda fp: fastopt.Groups(fp, [{"params": ["W1"], "frozen": True, "lr": 0.1}]),
     ValueError, "frozen .* also sets lr"),
    (lambda fp: fastopt.Groups(fp, [{"params": ["W1"], "frozen": True, "steps_behind": 2}]),
     ValueError, "also sets steps_behind"),
]


@pytest.mark.parametrize("make_groups,error,match", BAD_GROUPS)
def test_bad_groups_are_refused(make_groups, error, match):
    fp = fastopt.FlatParams({"W1": (20, 10), "b1": (10,)})
    with pytest.raises(error, match=match):
        make_groups(fp)


BAD_STEPS = [
    ("adam", [{"range": (0, 10), "alpha": 0.5}], TypeError, "not a hyperparameter of adam"),
    ("adam", [{"range": (0, 10), "lrr": 0.5}], TypeError, "group 0 sets 'lrr'"),
    ("sgd", [{"range": (0, 10), "nesterov": 1}], TypeError, "boolean option 'nesterov'"),
    ("sgd", [{"range": (0, 10), "lr": -1.0}], ValueError, "group 0: lr must be"),
    ("adam", [{"range": (0, 10), "beta1": 1.0}], ValueError, "group 0: beta1"),
    ("adam", [{"range": (0, 10), "eps": 1e-50}], ValueError, "group 0: eps=1e-50 rounds"),
    ("rmsprop", [{"range": (0, 10), "momentum": 0.9}], ValueError, "momentum_buffer"),
    ("sgd", [{"range": (0, 10), "lr": lambda t: float("nan")}], ValueError, "group 0"),
]


@pytest.mark.parametrize("name,groups,error,match", BAD_STEPS)
def test_bad_group_values_are_refused_before_any_write(name, groups, error, match):
    spec = fastopt.registry.get(name)
    b = make(spec, {}, np.float32)
    new_grad(b, np.random.default_rng(4))
    snap = snapshot(b)
    with pytest.raises(error, match=match):
        step_fn(spec)(b, groups=fastopt.Groups(N, groups))
    assert_unchanged(b, snap)
    with pytest.raises(ValueError, match="cover a buffer of 10"):
        step_fn(spec)(b, groups=fastopt.Groups(10, []))
    with pytest.raises(TypeError, match="must be a fastopt.Groups"):
        step_fn(spec)(b, groups=[{"range": (0, 10)}])
    assert_unchanged(b, snap)


def test_a_group_needing_state_is_satisfied_by_allocating_it():
    spec = fastopt.registry.get("rmsprop")
    b = spec.buffers_cls.zeros(np.ones(N, np.float32), np.ones(N, np.float32), momentum=0.9)
    fastopt.rmsprop_step(b, groups=fastopt.Groups(N, [{"range": (0, 10), "momentum": 0.9}]))
    assert b.step == 1


def test_a_call_schedule_that_every_group_overrides_is_not_evaluated_each_step():
    """Groups covering every element and setting lr: the call's lr schedule is validated once,
    with the call, but no row uses it, so it is not evaluated again at later steps."""
    def breaks_later(step):
        if step >= 1:
            raise AssertionError("evaluated at a later step")
        return 0.1
    spec = fastopt.registry.get("sgd")
    groups = fastopt.Groups(N, [{"range": (0, N), "lr": 0.1}])
    b = make(spec, {}, np.float32)
    for _ in range(3):
        fastopt.sgd_step(b, lr=breaks_later, groups=groups)
    assert b.step == 3
    c = make(spec, {}, np.float32)
    fastopt.sgd_step(c, lr=breaks_later)
    with pytest.raises(AssertionError, match="later step"):    # without groups it is the lr
        fastopt.sgd_step(c, lr=breaks_later)


def _random_segments(rng, n):
    """Random segments ``(lo, hi, row, kind)`` covering ``[0, n)`` in order."""
    cuts = sorted(set(rng.integers(1, n, size=rng.integers(0, 12)).tolist()) - {0, n}) \
        if n > 1 else []
    edges = [0] + cuts + [n]
    return [(a, b, int(rng.integers(0, 3)), int(rng.integers(0, 2)))
            for a, b in zip(edges[:-1], edges[1:])]


def test_cpu_items_cover_every_element_once_in_equal_chunks():
    """The grouped CPU driver's work items: in order, each inside one segment with that
    segment's row and kind, together exactly [0, n), cut at aligned chunk boundaries."""
    from fastopt.kernels.groups import ALIGN, cpu_items
    rng = np.random.default_rng(5)
    for n in (1, 15, 16, 17, 1000, 109_810):
        for _ in range(20):
            segments = [(a, b, r) for a, b, r, _ in _random_segments(rng, n)]
            kinds = [int(rng.integers(0, 2)) for _ in segments]
            chunks = int(rng.integers(1, 17))
            items, starts = cpu_items(segments, kinds, n, chunks)
            assert starts[0] == 0 and starts[-1] == len(items)
            assert np.all(np.diff(starts) >= 0)
            pos = 0
            for lo, hi, row, kind in items.tolist():
                assert lo == pos and hi > lo
                s = next(i for i, (a, b, _) in enumerate(segments) if a <= lo < b)
                assert hi <= segments[s][1] and row == segments[s][2] and kind == kinds[s]
                pos = hi
            assert pos == n
            for c in range(len(starts) - 1):       # chunk c's items start on a boundary
                if starts[c + 1] > starts[c]:
                    assert items[starts[c], 0] % ALIGN == 0 or items[starts[c], 0] == 0


def test_cpu_items_and_cuda_tiles_leave_frozen_gaps_and_share_the_rest_equally():
    """Segments with gaps (frozen elements): the CPU driver's items and the CUDA tiles cover
    exactly the segments' elements; the CPU chunks hold equal shares of them (to within the
    alignment: a frozen first layer does not leave a thread idle), the tiles' size follows the
    stepped elements, not the buffer's."""
    from fastopt.kernels.groups import ALIGN, cpu_items, cuda_tiles
    rng = np.random.default_rng(7)
    for n in (17, 1000, 109_810):
        for _ in range(30):
            every = _random_segments(rng, n)
            keep = [s for s in every if rng.random() < 0.6] or every[:1]
            segments = [(a, b, r) for a, b, r, _ in keep]
            want = np.zeros(n, int)
            for a, b, _ in segments:
                want[a:b] = 1
            total = int(want.sum())
            chunks = int(rng.integers(1, 17))
            items, starts = cpu_items(segments, [0] * len(segments), n, chunks)
            got = np.zeros(n, int)
            for lo, hi, _, _ in items.tolist():
                got[lo:hi] += 1
            assert np.array_equal(got, want)
            shares = [int(sum(hi - lo for lo, hi, _, _ in items[starts[c]:starts[c + 1]]))
                      for c in range(len(starts) - 1)]
            per = -(-total // len(shares))
            assert max(shares) <= per + 2 * ALIGN, (shares, per)
            threads, blocks = 32, int(rng.integers(1, 600))
            tiles = cuda_tiles(np.array(keep, np.int64), n, blocks, threads)
            got = np.zeros(n, int)
            for lo, hi, _, _ in tiles.tolist():
                got[lo:hi] += 1
            assert np.array_equal(got, want)
            assert max(tiles[:, 1] - tiles[:, 0]) <= total / blocks + threads


def test_cuda_tiles_cover_every_element_once_about_one_per_block():
    """The grouped CUDA kernel's tiles: in order, each inside one segment with that segment's
    row and kind, together exactly [0, n); within a segment one size, a multiple of the
    threads per block, about n / blocks (so the blocks get about one tile each)."""
    from fastopt.kernels.groups import cuda_tiles
    rng = np.random.default_rng(6)
    for n in (1, 255, 256, 257, 1000, 109_810):
        for _ in range(20):
            segments = _random_segments(rng, n)
            threads = int(rng.choice([32, 256]))
            blocks = int(rng.integers(1, 600))
            tiles = cuda_tiles(np.array(segments, np.int64), n, blocks, threads)
            size = max(tiles[:, 1] - tiles[:, 0])
            assert size % threads == 0 or len(tiles) == len(segments)
            assert size <= n / blocks + threads
            pos = 0
            for lo, hi, row, kind in tiles.tolist():
                assert lo == pos and hi > lo
                s = next(i for i, (a, b, _, _) in enumerate(segments) if a <= lo < b)
                a, b, r, k = segments[s]
                assert hi <= b and (row, kind) == (r, k)
                assert (lo - a) % size == 0 and (hi - lo == size or hi == b)
                pos = hi
            assert pos == n
            assert len(tiles) <= blocks + len(segments)


def test_a_grouped_cpu_step_is_one_compiled_call(monkeypatch):
    """10 groups (one per MLP tensor, two kernels: with and without weight decay) are stepped
    by one call of one compiled driver, serial or parallel, with the same bits."""
    from fastopt import _backends
    from fastopt.loopbench import _mlp_groups
    from fastopt.benchmarks import MLP_SIZE
    calls = []
    entry = _backends.compiled_entry

    def counting(dispatcher, args):
        fn = entry(dispatcher, args)

        def call(*a):
            calls.append(dispatcher)
            return fn(*a)
        return call
    monkeypatch.setattr(_backends, "compiled_entry", counting)
    groups = _mlp_groups(MLP_SIZE)
    p = np.random.default_rng(4).standard_normal(MLP_SIZE).astype(np.float32)
    out = []
    for threshold in (1 << 30, 1000):
        monkeypatch.setattr(fastopt.config, "PARALLEL_THRESHOLD", threshold)
        b = fastopt.AdamBuffers.zeros(p.copy(), np.ones(MLP_SIZE, np.float32))
        calls.clear()
        fastopt.adam_step(b, decoupled_weight_decay=True, groups=groups)
        fastopt.adam_step(b, decoupled_weight_decay=True, groups=groups)
        assert len(calls) == 2 and calls[0] is calls[1], calls
        out.append(b.param.copy())
    assert_bitwise(out[0], out[1], "parallel vs serial grouped driver")


def test_option_combinations_compile_under_distinct_names():
    """Numba names a compiled function's symbol after its qualified name, argument types and a
    per-process counter; kernels of one body loaded from the disk cache were compiled in
    different processes, so only distinct qualified names keep a function that links two
    option combinations (the grouped driver) from calling one for the other."""
    from fastopt.kernels import cpu
    for spec in SPECS:
        fam = cpu.family(spec.kernel)
        names = set()
        combos_seen = list(itertools.product([False, True], repeat=len(fam.option_names)))
        for values in combos_seen[:8]:
            for par in (False, True):
                fn = fam.get(par, **dict(zip(fam.option_names, values)))
                names.add(fn.py_func.__qualname__)
        assert len(names) == 2 * min(8, len(combos_seen)), spec.name


def test_groups_pickle_and_deep_copy():
    """A Groups object travels to another process or into a saved config (its read-only group
    values did not pickle before) and steps exactly as the original."""
    import copy
    import pickle
    fp = fastopt.FlatParams({"W": (4, 5), "b": (5,)})
    groups = fastopt.Groups(fp, [{"params": ["W"], "weight_decay": 0.1},
                                 {"params": ["b"], "lr": fastopt.schedules.cosine(0.1, 10)}])
    for twin in (pickle.loads(pickle.dumps(groups)), copy.deepcopy(groups)):
        assert repr(twin) == repr(groups)
        assert twin.segments == groups.segments and twin.ranges == groups.ranges
        with pytest.raises(TypeError):
            twin.groups[0]["lr"] = 1.0                  # still read-only
        a, b = (fastopt.AdamBuffers.zeros(np.ones(25, np.float32),
                                          np.full(25, 0.5, np.float32)) for _ in range(2))
        for _ in range(3):
            fastopt.adam_step(a, lr=1e-2, groups=groups)
            fastopt.adam_step(b, lr=1e-2, groups=twin)
        assert np.array_equal(a.param, b.param)
