"""fastopt vs torch.optim over 200 steps (skipped when torch is not installed)."""
import numpy as np
import pytest

from fastopt import testinfo
from helpers import DTYPES, SPECS, combos, full_kwargs, info, make_buffers, step_fn

torch = pytest.importorskip("torch")

TOL = {np.float32: dict(rtol=1e-4, atol=1e-6), np.float64: dict(rtol=1e-11, atol=1e-14)}

def settings(spec, combo):
    """The combination with the values under which the peer has fastopt's formula."""
    return dict(info(spec).peer_settings, **combo)


CASES = [(spec, combo) for spec in SPECS for combo in combos(spec)
         if info(spec).torch is not None
         and all(combo.get(k, v) == v for k, v in info(spec).peer_settings.items())
         and info(spec).torch(spec.validate(full_kwargs(spec, **settings(spec, combo))))
         is not None]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("spec,combo", CASES,
                         ids=[f"{s.name}-" + "-".join(f"{k}={v}" for k, v in c.items())
                              for s, c in CASES])
def test_matches_torch(spec, combo, dtype):
    kwargs = full_kwargs(spec, **settings(spec, combo))
    if "lr" in kwargs:
        kwargs["lr"] = 1e-3 if spec.name != "sgd" else 1e-2
    hp = spec.validate(kwargs)
    cls_name, tkw, attrs = (info(spec).torch(hp) + ({},))[:3]
    if "." in cls_name:
        pytest.importorskip(cls_name.split(".")[0])
    n = 1000
    ours = make_buffers(spec, n, dtype, kwargs, seed=3)
    tp = torch.nn.Parameter(torch.from_numpy(ours.param.copy()))
    topt = testinfo.peer_class(cls_name)([tp], **tkw)
    for name, value in attrs.items():
        setattr(topt, name, value)
    rng = np.random.default_rng(4)
    for _ in range(200):
        g = rng.standard_normal(n).astype(dtype)
        ours.grad[...] = g
        tp.grad = torch.from_numpy(g.copy())
        step_fn(spec)(ours, **kwargs)
        topt.step()
    theirs = tp.detach().numpy()
    np.testing.assert_allclose(ours.param, theirs, **TOL[dtype])
    assert ours.param.dtype == theirs.dtype
    # the state too, under torch's names
    state = topt.state[tp]
    for name in spec.buffers_cls.state_fields:
        if getattr(ours, name) is not None and name in state:
            np.testing.assert_allclose(getattr(ours, name), state[name].numpy(), **TOL[dtype])
