"""fastopt.compat.Nesterov and AdaGrad against the textbook's formulas ("Deep Learning from
Scratch", common/optimizer.py), written out here as oracles: bitwise equal in float64 on the
MNIST MLP's shapes, through the fused arena and per array."""
import numpy as np
import pytest

import fastopt
from fastopt import compat
from fastopt.mlp import MLP


class TextbookNesterov:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr, self.momentum, self.v = lr, momentum, None

    def update(self, params, grads):
        if self.v is None:
            self.v = {k: np.zeros_like(v) for k, v in params.items()}
        for key in params.keys():
            self.v[key] *= self.momentum
            self.v[key] -= self.lr * grads[key]
            params[key] += self.momentum * self.momentum * self.v[key]
            params[key] -= (1 + self.momentum) * self.lr * grads[key]


class TextbookAdaGrad:
    def __init__(self, lr=0.01):
        self.lr, self.h = lr, None

    def update(self, params, grads):
        if self.h is None:
            self.h = {k: np.zeros_like(v) for k, v in params.items()}
        for key in params.keys():
            self.h[key] += grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key]) + 1e-7)


@pytest.mark.parametrize("fused", [True, False], ids=["arena", "per-array"])
@pytest.mark.parametrize("ours,theirs,kw", [
    (compat.Nesterov, TextbookNesterov, dict(lr=0.01, momentum=0.9)),
    (compat.Nesterov, TextbookNesterov, dict(lr=0.05, momentum=0.5)),
    (compat.AdaGrad, TextbookAdaGrad, dict(lr=0.01)),
    (compat.AdaGrad, TextbookAdaGrad, dict(lr=0.3)),
], ids=["nesterov", "nesterov-2", "adagrad", "adagrad-2"])
def test_bitwise_equal_to_the_textbook(ours, theirs, kw, fused):
    net = MLP(dtype=np.float64, seed=1)
    mine = net.params if fused else {k: v.copy() for k, v in net.params.items()}
    ref = {k: v.copy() for k, v in net.params.items()}
    a, b = ours(**kw), theirs(**kw)
    rng = np.random.default_rng(2)
    for _ in range(50):
        grads = {k: rng.standard_normal(v.shape) for k, v in ref.items()}
        if fused:
            for k, g in grads.items():
                net.grads[k][...] = g
            a.update(mine, net.grads)
        else:
            a.update(mine, grads)
        b.update(ref, grads)
    for k in ref:
        assert np.array_equal(mine[k], ref[k]), k
    state = a.v if ours is compat.Nesterov else a.h
    other = b.v if ours is compat.Nesterov else b.h
    for k in ref:
        assert np.array_equal(state[k], other[k]), k


def test_nesterov_step_is_registered_and_converges():
    x = np.array([3.0, -2.0])
    g = np.zeros(2)
    b = fastopt.NesterovBuffers.zeros(x, g)
    for _ in range(500):
        g[...] = x
        fastopt.nesterov_step(b, lr=0.05)
    assert np.abs(x).max() < 1e-6


@pytest.mark.parametrize("name", compat.__all__)
def test_a_copy_of_network_and_optimizer_trains_on_as_the_original(name):
    """``copy.deepcopy((net, opt))`` of the blog's classes on the MLP's arena: the copy steps
    its own arena, fused, bitwise as the original (before: the copy's per-array state were
    separate arrays and the network's views did not tile its arena)."""
    import copy
    net = MLP(dtype=np.float64, seed=1)
    opt = getattr(compat, name)()
    rng = np.random.default_rng(3)
    grads = [{k: rng.standard_normal(v.shape) for k, v in net.params.items()}
             for _ in range(4)]

    def step(n, o, g):
        for k, v in g.items():
            n.grads[k][...] = v
        o.update(n.params, n.grads)
    for g in grads[:2]:
        step(net, opt, g)
    net2, opt2 = copy.deepcopy((net, opt))
    for g in grads[2:]:
        step(net, opt, g)
        step(net2, opt2, g)
    assert opt2._flat is not None and opt2._flat.param is net2.flat.param
    assert np.array_equal(net.flat.param, net2.flat.param)
    assert not np.shares_memory(net.flat.param, net2.flat.param)
    for k, b in opt2._per_key.items():          # the per-array views see the copy's state
        for f in b.state_fields:
            if getattr(b, f) is not None:
                assert np.shares_memory(getattr(b, f), getattr(opt2._flat, f)), (k, f)
