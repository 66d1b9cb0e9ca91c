"""fastopt equals the blog's optimizer classes bit for bit (float64, 50 steps, MLP shapes).

The oracle is ``fastopt.blog``: the classes of the blog post "[Optimizer] Adam" (Deep Learning
Basic series), transcribed verbatim."""
import numpy as np
import pytest

import fastopt
from fastopt import compat, registry
from fastopt.blog import BLOG_CLASSES
from helpers import assert_bitwise, info, step_fn

SIZES = [784, 100, 100, 100, 100, 10]
SHAPES = {}
for i in range(5):
    SHAPES[f"W{i + 1}"] = (SIZES[i], SIZES[i + 1])
    SHAPES[f"b{i + 1}"] = (SIZES[i + 1],)


def _initial(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s) * 0.1 for k, s in SHAPES.items()}


def _grads(rng):
    return {k: rng.standard_normal(s) for k, s in SHAPES.items()}


def _blog_run(name, steps):
    params = _initial()
    opt = BLOG_CLASSES[name]()
    rng = np.random.default_rng(1)
    for _ in range(steps):
        opt.update(params, _grads(rng))
    return params


@pytest.mark.parametrize("name", list(BLOG_CLASSES))
@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("layout", ["dict", "flat"])
def test_compat_class_equals_blog(name, backend, layout):
    expected = _blog_run(name, 50)
    if layout == "flat":
        arena = fastopt.FlatParams(_initial())
        params, held = arena.params, dict(arena.params)
    else:
        params = _initial()
        held = dict(params)  # the references a blog network's layers keep
    opt = getattr(compat, name)(backend=backend)
    rng = np.random.default_rng(1)
    for _ in range(50):
        g = _grads(rng)
        if layout == "flat":
            for k in g:
                arena.grads[k][...] = g[k]
            g = arena.grads
        opt.update(params, g)
    if layout == "flat":
        assert opt._flat is not None, "FlatParams views must take the fused path"
    for k in SHAPES:
        assert params[k] is held[k], "update must be in place"
        assert_bitwise(params[k], expected[k], f"{name} {k}")


WITH_BLOG = [s for s in registry.REGISTRY.values() if info(s).blog]


def test_every_blog_class_has_a_registered_equivalent():
    assert sorted(info(s).blog[0] for s in WITH_BLOG) == sorted(BLOG_CLASSES)


@pytest.mark.parametrize("spec", WITH_BLOG, ids=lambda s: s.name)
def test_step_function_on_flat_arena_equals_blog(spec):
    name, kwargs = info(spec).blog
    expected = _blog_run(name, 50)
    arena = fastopt.FlatParams(_initial())
    buffers = spec.buffers_cls.zeros(arena.param, arena.grad)
    rng = np.random.default_rng(1)
    for _ in range(50):
        for k, g in _grads(rng).items():
            arena.grads[k][...] = g
        step_fn(spec)(buffers, **kwargs)
    for k in SHAPES:
        assert_bitwise(arena.params[k], expected[k], f"{name} {k}")


def test_compat_exposes_blog_state():
    params = _initial()
    opt = compat.Adam()
    rng = np.random.default_rng(1)
    blog = BLOG_CLASSES["Adam"]()
    sp = _initial()
    for _ in range(3):
        g = _grads(rng)
        opt.update(params, g)
        blog.update(sp, g)
    assert opt.iter == blog.iter == 3
    for k in SHAPES:
        assert_bitwise(opt.m[k], blog.m[k])
        assert_bitwise(opt.v[k], blog.v[k])


def test_compat_rejects_bad_update_without_writing():
    params = _initial()
    before = {k: v.copy() for k, v in params.items()}
    grads = _grads(np.random.default_rng(0))
    grads["W3"] = grads["W3"].astype(np.float32)  # one bad array among ten
    with pytest.raises(TypeError, match="dtype"):
        compat.Adam().update(params, grads)
    for k in params:
        assert params[k].tobytes() == before[k].tobytes()
