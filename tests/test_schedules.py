"""fastopt.schedules against torch.optim.lr_scheduler over 1000 steps (1e-12 relative)."""
import math

import numpy as np
import pytest

from fastopt import schedules as S

torch = pytest.importorskip("torch", reason="torch is not installed: no lr_scheduler to "
                                            "compare with")
L = torch.optim.lr_scheduler
N = 1000
LR = 0.1


def _torch_values(make, lr=LR, n=N):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


CASES = {
    "constant": (S.constant(LR), lambda o: L.ConstantLR(o, factor=1.0, total_iters=0)),
    "linear_warmup": (S.linear_warmup(LR, 100, 0.25),
                      lambda o: L.LinearLR(o, start_factor=0.25, total_iters=100)),
    "step_decay": (S.step_decay(LR, 30, 0.5), lambda o: L.StepLR(o, 30, gamma=0.5)),
    "multi_step": (S.multi_step(LR, [100, 250, 700], 0.3),
                   lambda o: L.MultiStepLR(o, [100, 250, 700], gamma=0.3)),
    "exponential": (S.exponential(LR, 0.995), lambda o: L.ExponentialLR(o, 0.995)),
    # torch's cosine is periodic after T_max (it rises again); fastopt's stays at the floor,
    # so they are compared up to T_max
    "cosine": (S.cosine(LR, N, floor=1e-3),
               lambda o: L.CosineAnnealingLR(o, T_max=N, eta_min=1e-3)),
    "cosine_warmup": (S.cosine(LR, 900, floor=1e-3, warmup=100, warmup_start_factor=0.1),
                      lambda o: L.SequentialLR(o, [
                          L.LinearLR(o, start_factor=0.1, total_iters=100),
                          L.CosineAnnealingLR(o, T_max=900, eta_min=1e-3)], milestones=[100])),
    "polynomial": (S.polynomial(LR, 700, power=2.0),
                   lambda o: L.PolynomialLR(o, total_iters=700, power=2.0)),
    "one_cycle": (S.one_cycle(LR, N + 1),
                  lambda o: L.OneCycleLR(o, max_lr=LR, total_steps=N + 1)),
    "warmup_stable_decay": (S.warmup_stable_decay(LR, 100, 400, 300, floor=0.01,
                                                  warmup_start_factor=0.1),
                            lambda o: L.SequentialLR(o, [
                                L.LinearLR(o, start_factor=0.1, total_iters=100),
                                L.ConstantLR(o, factor=1.0, total_iters=400),
                                L.LinearLR(o, start_factor=1.0, end_factor=0.1,
                                           total_iters=300)], milestones=[100, 500])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_equals_torch(name):
    ours, make = CASES[name]
    want = _torch_values(make)
    got = np.array([ours(t) for t in range(N)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15 * LR, err_msg=name)


@pytest.mark.parametrize("bad", [lambda: S.cosine(0.1, 0), lambda: S.step_decay(0.1, 0),
                                 lambda: S.exponential(float("nan"), 0.9),
                                 lambda: S.linear_warmup(0.1, 10, 0.0),
                                 lambda: S.polynomial(0.1, 10, power=-1),
                                 lambda: S.one_cycle(0.1, 1),
                                 lambda: S.multi_step(0.1, [10, True])])
def test_bad_arguments_are_refused_when_built(bad):
    with pytest.raises(ValueError):
        bad()


def test_steps_are_non_negative_ints():
    s = S.cosine(0.1, 10)
    assert s(0) == pytest.approx(0.1) and math.isclose(s(10), 0.0, abs_tol=1e-18)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError):
            s(bad)
    assert "cosine(value=0.1" in repr(s)
