"""The MNIST workload: one full training iteration (forward + backward + step) per optimizer,
with fastopt's fused step on the flat arena vs the blog's class on the same network's dict."""
import numpy as np
import pytest

from fastopt import blog, compat
from fastopt.experiment import OPTIMIZERS
from fastopt.mlp import MLP

BLOG_OF = {"SGD": blog.mini_SGD, "Momentum": blog.Momentum, "RMSprop": blog.RMSprop,
           "Adam": blog.Adam}


@pytest.mark.parametrize("impl", ["blog", "fastopt-numpy", "fastopt-cpu"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_iteration(benchmark, name, impl):
    if impl == "blog" and name not in BLOG_OF:
        pytest.skip(f"the blog has no {name} class")
    rng = np.random.default_rng(0)
    x = rng.random((128, 784), dtype=np.float32)
    t = rng.integers(0, 10, 128)
    net = MLP(dtype=np.float32)
    if impl == "blog":
        opt = BLOG_OF[name](lr=0.01)
    else:
        opt = OPTIMIZERS[name](backend=impl.split("-")[1])      # its compare default lr

    def iteration():
        net.gradient(x, t)
        opt.update(net.params, net.grads)

    iteration()
    before = net.loss(x, t)
    for _ in range(5):
        iteration()
    assert net.loss(x, t) < before  # it trains
    benchmark.group = f"mnist-iteration|{name}"
    benchmark.name = impl
    benchmark(iteration)


def test_blog_and_fastopt_iterations_agree():
    """The benchmarked fastopt iteration computes what the blog's does (float64: bitwise)."""
    rng = np.random.default_rng(0)
    x = rng.random((32, 784))
    t = rng.integers(0, 10, 32)
    a, b = MLP(dtype=np.float64), MLP(dtype=np.float64)
    oa, ob = blog.Adam(), compat.Adam()
    for _ in range(5):
        a.gradient(x, t)
        oa.update(a.params, a.grads)
        b.gradient(x, t)
        ob.update(b.params, b.grads)
    np.testing.assert_array_equal(a.flat.param, b.flat.param)
