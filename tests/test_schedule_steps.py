"""Any real hyperparameter of a step function may be a schedule, evaluated at ``b.step``:
bitwise the same as passing ``schedule(b.step)`` by hand (registry-driven), validated at every
step before anything is written."""
import numpy as np
import pytest

from fastopt import schedules
from helpers import (SPECS, assert_buffers_bitwise, assert_unchanged, clone, full_kwargs,
                     make_buffers, snapshot, step_fn)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_a_scheduled_lr_equals_its_values_passed_by_hand(spec, backend):
    sched = schedules.cosine(0.01, total=10, floor=1e-4, warmup=3)
    kw = full_kwargs(spec)
    a = make_buffers(spec, 64, np.float32, {})
    b = clone(a)
    rng = np.random.default_rng(0)
    for _ in range(12):
        g = rng.standard_normal(64).astype(np.float32)
        a.grad[...] = g
        b.grad[...] = g
        step_fn(spec)(a, **dict(kw, lr=sched, backend=backend))
        step_fn(spec)(b, **dict(kw, lr=sched(b.step), backend=backend))
        assert_buffers_bitwise(a, b, f"step {a.step}")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_a_schedule_is_validated_at_every_step(spec):
    kw = full_kwargs(spec)
    b = make_buffers(spec, 16, np.float32, {})
    b.grad[...] = 0.5

    def lr(step):
        return 0.01 if step < 3 else -1.0
    for _ in range(3):
        step_fn(spec)(b, **dict(kw, lr=lr))
    snap = snapshot(b)
    with pytest.raises(ValueError, match="lr"):
        step_fn(spec)(b, **dict(kw, lr=lr))
    assert_unchanged(b, snap)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_flags_cannot_follow_a_schedule(spec):
    flags = [h.name for h in spec.hypers if h.kind == "flag"]
    if not flags:
        pytest.skip("no flag")
    b = make_buffers(spec, 4, np.float32, {})
    with pytest.raises(TypeError, match="cannot follow a schedule"):
        step_fn(spec)(b, **dict(full_kwargs(spec), **{flags[0]: lambda t: True}))
    assert b.step == 0


def test_a_schedule_crossing_zero_switches_the_compiled_option():
    from fastopt import registry
    spec = registry.get("adam")
    wd = schedules.Schedule("wd", lambda t: 0.0 if t < 2 else 0.1)   # the L2 term from step 3
    a = make_buffers(spec, 32, np.float64, {})
    b = clone(a)
    a.grad[...] = b.grad[...] = 0.25
    for _ in range(4):
        step_fn(spec)(a, weight_decay=wd)
        step_fn(spec)(b, weight_decay=wd(b.step))
        assert_buffers_bitwise(a, b, f"step {a.step}")


def test_a_hyperparameter_marked_unschedulable_refuses_a_schedule():
    """NAdam's momentum-schedule product is computed from the step count for constant beta1
    and momentum_decay, so those two cannot follow a schedule (lr can)."""
    import fastopt
    b = fastopt.NAdamBuffers.zeros(np.ones(4), np.ones(4))
    for name in ("beta1", "momentum_decay"):
        with pytest.raises(TypeError, match=f"{name} cannot follow a schedule in nadam"):
            fastopt.nadam_step(b, **{name: lambda t: 0.9 if name == "beta1" else 4e-3})
    assert b.step == 0
    fastopt.nadam_step(b, lr=lambda t: 1e-3)
    assert b.step == 1


SCHEDULES = [schedules.constant(0.1), schedules.linear_warmup(0.1, 7, 0.25),
             schedules.step_decay(0.1, 5, 0.5), schedules.multi_step(0.1, [9, 3], 0.3),
             schedules.exponential(0.1, 0.9), schedules.polynomial(0.1, 20, 2.0),
             schedules.cosine(0.1, 20, floor=1e-3, warmup=4, warmup_start_factor=0.5),
             schedules.one_cycle(0.1, 30, pct_start=0.2),
             schedules.warmup_stable_decay(0.1, 3, 5, 7, floor=0.01, warmup_start_factor=0.2)]


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: s.name)
def test_schedules_pickle_and_say_all_their_arguments(sched):
    """Pickled (multiprocessing, a saved config), a schedule is made again from its arguments
    and gives the same values; its repr names every argument, the warmup's start factor of
    ``cosine`` and ``warmup_stable_decay`` included (before: their closures did not pickle,
    and the repr left the start factor out)."""
    import pickle
    twin = pickle.loads(pickle.dumps(sched))
    assert [twin(t) for t in range(40)] == [sched(t) for t in range(40)]
    assert repr(twin) == repr(sched)
    assert eval(repr(sched), vars(schedules))(17) == sched(17)


def test_a_schedule_of_the_callers_own_function_deep_copies():
    import copy
    own = schedules.Schedule("halving", lambda t: 0.5 ** t)
    assert copy.deepcopy(own)(3) == 0.125
