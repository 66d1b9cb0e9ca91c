"""LAMB against its oracles and its per-tensor semantics: the paper's algorithm written out
here (float64, tensor by tensor), pytorch-optimizer's ``Lamb`` over several tensors, the
trust ratio's edge cases, the tensors given by ``layout`` and ``groups``, and the pre-pass's
independence of the thread count."""
import math

import numpy as np
import pytest

import fastopt
from helpers import assert_bitwise, assert_unchanged, snapshot

SIZES = [300, 7, 0, 5000, 1]


def paper_lamb(tensors, state, grads, t, lr, b1, b2, eps, wd):
    """You et al. (2020), Algorithm 2 (LAMB) with phi = identity, one tensor at a time."""
    for x, (m, v), g in zip(tensors, state, grads):
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * g * g
        mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
        r = mh / (np.sqrt(vh) + eps) + wd * x
        wn, rn = np.linalg.norm(x), np.linalg.norm(r)
        trust = wn / rn if wn > 0 and rn > 0 else 1.0
        x -= lr * trust * r


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_lamb_is_the_papers_algorithm(wd):
    rng = np.random.default_rng(0)
    fp = fastopt.FlatParams({f"t{i}": rng.standard_normal(n) for i, n in enumerate(SIZES)},
                            dtype=np.float64)
    b = fastopt.LAMBBuffers.zeros(fp.param, fp.grad)
    mine = [fp.params[k].copy() for k in fp]
    state = [(np.zeros_like(x), np.zeros_like(x)) for x in mine]
    for t in range(1, 51):
        fp.grad[...] = rng.standard_normal(fp.size)
        fastopt.lamb_step(b, lr=1e-2, weight_decay=wd, layout=fp)
        paper_lamb(mine, state, [fp.grads[k] for k in fp], t, 1e-2, 0.9, 0.999, 1e-6, wd)
    for k, x in zip(fp, mine):
        np.testing.assert_allclose(fp.params[k], x, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_lamb_matches_pytorch_optimizer_per_tensor(dtype):
    """Several tensors, each its own trust ratio, as torch parameters of one Lamb."""
    torch = pytest.importorskip("torch")
    po = pytest.importorskip("pytorch_optimizer")
    rng = np.random.default_rng(1)
    sizes = [400, 30, 1000]
    fp = fastopt.FlatParams({f"t{i}": rng.standard_normal(n) * (i + 1)
                             for i, n in enumerate(sizes)}, dtype=dtype)
    b = fastopt.LAMBBuffers.zeros(fp.param, fp.grad)
    ps = [torch.nn.Parameter(torch.from_numpy(fp.params[k].copy())) for k in fp]
    opt = po.Lamb(ps, lr=1e-3, eps=1e-6, weight_decay=0.01, weight_decouple=False,
                  adam_debias=True)
    opt.clamp = float("inf")
    for _ in range(200):
        fp.grad[...] = rng.standard_normal(fp.size).astype(dtype)
        for p, k in zip(ps, fp):
            p.grad = torch.from_numpy(fp.grads[k].copy())
        fastopt.lamb_step(b, lr=1e-3, weight_decay=0.01, bias_correction=False,
                          trust_eps=1e-6, layout=sizes)
        opt.step()
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-14)
    for p, k in zip(ps, fp):
        np.testing.assert_allclose(fp.params[k], p.detach().numpy(), **tol)


def test_trust_ratio_is_one_when_a_norm_is_zero():
    # tensor 0: zero weights (||p|| = 0); tensor 1: zero gradient from zero state (||r|| = 0
    # without decay); tensor 2: both norms positive
    p = np.concatenate([np.zeros(4), np.full(4, 3.0), np.full(4, 2.0)])
    g = np.concatenate([np.ones(4), np.zeros(4), np.ones(4)])
    b = fastopt.LAMBBuffers.zeros(p, g)
    fastopt.lamb_step(b, lr=0.1, layout=[4, 4, 4])
    r0 = 1.0 / (1.0 + 1e-6)              # m_hat / (sqrt(v_hat) + eps) at step 1, g = 1
    np.testing.assert_allclose(p[:4], -0.1 * r0, rtol=1e-15)    # trust 1
    np.testing.assert_array_equal(p[4:8], 3.0)                   # r = 0: no move
    np.testing.assert_allclose(p[8:], 2.0 - 0.1 * 4.0 / (2 * r0) * r0, rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_segment_rows_equal_the_trust_ratio_of_each_tensor_alone(dtype):
    """The rows of many tensors are filled by one call per distinct hyperparameter set, on
    arrays of sums (``OptimizerSpec.fill_segment_rows``), one tensor's with floats; each row
    must hold what the trust ratio of its own tensor gives in Python floats (the paper's
    formula, written here), rounded once, edge cases included, both ways."""
    from fastopt._spec import distinct
    spec = fastopt.registry.REGISTRY["lamb"]
    a = dict(spec.defaults, lr=0.1, trust_eps=0.0)
    b = dict(spec.defaults, lr=1e-3, trust_eps=1e-6)
    c = dict(spec.defaults, lr=3e-2, trust_eps=0.5)
    hps = [a, b, a, c, b, a, c, c, a, b]
    inf, nan = math.inf, math.nan
    sums = np.array([[4.0, 9.0], [0.0, 1.0], [1.0, 0.0], [2.0, 3.0], [nan, 1.0], [1.0, nan],
                     [inf, 1.0], [1.0, inf], [inf, inf], [1e-300, 1e300]])
    unique, which = distinct(hps)
    assert [id(h) for h in unique] == [id(a), id(b), id(c)] and which == [0, 1, 0, 2, 1, 0,
                                                                           2, 2, 0, 1]
    k = spec.kernel.scalars.index("step")
    table = np.full((len(hps), len(spec.kernel.scalars) + 1), 7.0, dtype)
    spec.fill_segment_rows(hps, 5, sums, table)
    for i, hp in enumerate(hps):
        w, u = math.sqrt(sums[i, 0]), math.sqrt(sums[i, 1])
        trust = w / (u + hp["trust_eps"]) if w > 0.0 and u > 0.0 else 1.0
        assert_bitwise(table[i, k], dtype(hp["lr"] * trust))
        assert np.all(np.delete(table[i], k) == 7.0)      # nothing else written
        alone = np.full_like(table[:1], 7.0)              # one tensor: the float path
        spec.fill_segment_rows([hp], 5, sums[i], alone)
        assert_bitwise(alone[0], table[i])
    rows = np.empty((len(hps), len(spec.kernel.scalars)), dtype)
    spec.fill_scalar_rows(hps, 5, rows)
    for i, hp in enumerate(hps):
        assert_bitwise(rows[i], spec.kernel_scalars(hp, 5, dtype))


@pytest.mark.parametrize("counts", [[1], [3, 1], [25] * 100, [2442] + [1] * 50,
                                    [129, 128, 1, 5, 7, 2, 9, 4, 4, 1, 1, 6]])
def test_device_chunk_sums_are_added_in_each_tensors_own_order(counts):
    """On CUDA the pre-pass returns every chunk's sums; the host adds each tensor's in order
    (``np.cumsum``, what the tensor gets stepped alone), many tensors at once, padded."""
    from fastopt._cuda_backend import sums_in_order
    rng = np.random.default_rng(len(counts))
    parts = rng.random((sum(counts), 2)) * 10.0 ** rng.uniform(-8, 8, (sum(counts), 1))
    parts[rng.random(len(parts)) < 0.1] = 0.0
    ends = np.cumsum(counts)
    expected = [np.cumsum(parts[e - c:e], axis=0)[-1] for e, c in zip(ends, counts)]
    assert_bitwise(sums_in_order(parts, counts), np.array(expected))


def test_layout_sizes_flatparams_and_groups_give_the_same_tensors():
    rng = np.random.default_rng(2)
    fp = fastopt.FlatParams({"W": (20, 10), "b": (10,), "V": (10, 5)}, dtype=np.float64)
    fp.param[...] = rng.standard_normal(fp.size)
    runs = [dict(layout=fp), dict(layout=[200, 10, 50]),
            dict(groups=fastopt.Groups(fp, [{"params": ["W", "b", "V"]}])),
            dict(groups=fastopt.Groups(fp.size, [{"ranges": [(0, 200), (200, 210),
                                                             (210, 260)]}]))]
    results = []
    for kw in runs:
        b = fastopt.LAMBBuffers.zeros(fp.param.copy(), np.empty(fp.size))
        for s in range(3):
            b.grad[...] = np.random.default_rng(s).standard_normal(fp.size)
            fastopt.lamb_step(b, lr=1e-2, **kw)
        results.append(b.param)
    for r in results[1:]:
        assert_bitwise(results[0], r)
    # and each tensor is stepped as if alone
    alone = []
    for lo, hi in [(0, 200), (200, 210), (210, 260)]:
        b = fastopt.LAMBBuffers.zeros(fp.param[lo:hi].copy(), np.empty(hi - lo))
        for s in range(3):
            b.grad[...] = np.random.default_rng(s).standard_normal(fp.size)[lo:hi]
            fastopt.lamb_step(b, lr=1e-2)
        alone.append(b.param)
    assert_bitwise(results[0], np.concatenate(alone))
    # one tensor (no layout) is not the same step
    b = fastopt.LAMBBuffers.zeros(fp.param.copy(), np.empty(fp.size))
    b.grad[...] = np.random.default_rng(0).standard_normal(fp.size)
    fastopt.lamb_step(b, lr=1e-2)
    c = fastopt.LAMBBuffers.zeros(fp.param.copy(), b.grad.copy())
    fastopt.lamb_step(c, lr=1e-2, layout=fp)
    assert not np.array_equal(b.param, c.param)


def test_group_values_and_layout_cut_each_other():
    """A group over part of a tensor: the tensor is cut there (each piece its own trust)."""
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(100)
    g = rng.standard_normal(100)
    b = fastopt.LAMBBuffers.zeros(p0.copy(), g.copy())
    groups = fastopt.Groups(100, [{"range": (30, 60), "lr": 0.5}])
    fastopt.lamb_step(b, lr=0.1, layout=[50, 50], groups=groups)
    want = []
    for lo, hi, lr in [(0, 30, 0.1), (30, 50, 0.5), (50, 60, 0.5), (60, 100, 0.1)]:
        c = fastopt.LAMBBuffers.zeros(p0[lo:hi].copy(), g[lo:hi].copy())
        fastopt.lamb_step(c, lr=lr)
        want.append(c.param)
    assert_bitwise(b.param, np.concatenate(want))


@pytest.mark.parametrize("layout,error,match", [
    ([50, 40], ValueError, "covers 90 elements but the parameter has 100"),
    ([50, -1, 51], TypeError, r"layout\[1\]"),
    ([50.0, 50], TypeError, r"layout\[0\]"),
    ("50,50", TypeError, "FlatParams or a list"),
    (fastopt.FlatParams({"a": 3}), ValueError, "covers 3 elements"),
])
def test_bad_layouts_are_refused_before_any_write(layout, error, match):
    b = fastopt.LAMBBuffers.zeros(np.ones(100), np.ones(100))
    snap = snapshot(b)
    with pytest.raises(error, match=match):
        fastopt.lamb_step(b, layout=layout)
    assert_unchanged(b, snap)


def test_layout_is_refused_by_optimizers_without_a_pre_pass():
    from fastopt import _step, registry
    b = fastopt.AdamBuffers.zeros(np.ones(4), np.ones(4))
    with pytest.raises(TypeError, match="adam does not have"):
        _step.step(registry.get("adam"), b, layout=[2, 2])


@pytest.mark.parametrize("one_call", [True, False], ids=["one-call", "per-tensor"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_pre_pass_is_the_same_for_any_thread_count_and_for_numpy(dtype, one_call,
                                                                  monkeypatch):
    """2e5 elements (49 norm chunks) in three tensors: serial, parallel and the reference give
    the same bits, with clipping (the factor enters the pre-pass too); with every tensor's
    pre-pass in one call and then one grouped call (small tensors), and tensor by tensor (what
    large tensors take: ``ONE_CALL_PREPASS_MAX_MEAN``, set to 0 here)."""
    from fastopt import _backends, _step, registry
    if not one_call:
        monkeypatch.setattr(_backends, "ONE_CALL_PREPASS_MAX_MEAN", 0)
    spec = registry.get("lamb")
    rng = np.random.default_rng(4)
    n = 200_003
    p = rng.standard_normal(n).astype(dtype)
    out = []
    for backend, parallel in [("cpu", False), ("cpu", True), ("numpy", None)]:
        b = fastopt.LAMBBuffers.zeros(p.copy(), np.empty(n, dtype))
        for s in range(2):
            b.grad[...] = np.random.default_rng(s).standard_normal(n).astype(dtype)
            _step.step(spec, b, backend=backend, parallel=parallel, max_grad_norm=10.0,
                       weight_decay=0.01, layout=[100_000, 3, 100_000])
        out.append(b)
    for other in out[1:]:
        for name in ("param", "exp_avg", "exp_avg_sq"):
            assert_bitwise(getattr(out[0], name), getattr(other, name), name)


def test_non_finite_gradient_propagates_and_skip_leaves_buffers_alone():
    p = np.ones(10)
    g = np.ones(10)
    g[3] = np.nan
    b = fastopt.LAMBBuffers.zeros(p, g)
    snap = snapshot(b)
    fastopt.lamb_step(b, skip_nonfinite=True)
    assert_unchanged(b, snap)
    fastopt.lamb_step(b)
    assert math.isnan(p[3])


def test_a_layout_list_changed_in_place_is_a_new_layout():
    p = np.random.default_rng(5).standard_normal(100).astype(np.float32)
    sizes = [50, 50]
    a = fastopt.LAMBBuffers.zeros(p.copy(), np.ones(100, np.float32))
    fastopt.lamb_step(a, layout=sizes)
    sizes[:] = [30, 70]                 # the cached step was built for [50, 50]
    fastopt.lamb_step(a, layout=sizes)
    b = fastopt.LAMBBuffers.zeros(p.copy(), np.ones(100, np.float32))
    fastopt.lamb_step(b, layout=[50, 50])
    fastopt.lamb_step(b, layout=[30, 70])
    assert_bitwise(a.param, b.param)
