"""Lion against its oracles: the paper's Algorithm 2 written out here (float64, element by
element), and ``pytorch-optimizer``'s ``Lion`` when installed."""
import numpy as np
import pytest

import fastopt


def paper_lion(p, m, g, lr, beta1, beta2, wd):
    """Chen et al. (2023), Algorithm 2, one element at a time."""
    for i in range(p.size):
        c = beta1 * m[i] + (1 - beta1) * g[i]
        sign = 1.0 if c > 0 else (-1.0 if c < 0 else 0.0)
        p[i] = p[i] * (1 - lr * wd) - lr * sign
        m[i] = beta2 * m[i] + (1 - beta2) * g[i]


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lion_is_the_papers_algorithm(wd):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(300)
    b = fastopt.LionBuffers.zeros(p.copy(), np.zeros(300))
    q, m = p.copy(), np.zeros(300)
    for _ in range(50):
        g = rng.standard_normal(300)
        g[::11] = 0.0
        b.grad[...] = g
        fastopt.lion_step(b, lr=1e-3, weight_decay=wd)
        paper_lion(q, m, g, 1e-3, 0.9, 0.99, wd)
    np.testing.assert_allclose(b.param, q, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(b.exp_avg, m, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lion_matches_pytorch_optimizer(wd, dtype):
    torch = pytest.importorskip("torch")
    po = pytest.importorskip("pytorch_optimizer")
    rng = np.random.default_rng(1)
    p = rng.standard_normal(1000).astype(dtype)
    b = fastopt.LionBuffers.zeros(p.copy(), np.zeros(1000, dtype))
    tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
    opt = po.Lion([tp], lr=1e-4, betas=(0.9, 0.99), weight_decay=wd, weight_decouple=True)
    for _ in range(200):
        g = rng.standard_normal(1000).astype(dtype)
        b.grad[...] = g
        tp.grad = torch.from_numpy(g.copy())
        fastopt.lion_step(b, lr=1e-4, weight_decay=wd)
        opt.step()
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(b.param, tp.detach().numpy(), **tol)
