"""Shared test helpers (registry-driven)."""
import os
import subprocess
import sys

import numpy as np

import fastopt
from fastopt import registry, testinfo

SPECS = list(registry.REGISTRY.values())
DTYPES = [np.float32, np.float64]


def full_kwargs(spec, **options):
    kw = dict(spec.defaults)
    kw.update(options)
    return kw


def make_buffers(spec, n, dtype, kwargs, seed=0, shape=None):
    """Random param, zero state allocated for ``kwargs``; grad filled by ``new_grad``."""
    rng = np.random.default_rng(seed)
    shape = (n,) if shape is None else shape
    p = rng.standard_normal(shape).astype(dtype)
    g = np.zeros(shape, dtype)
    return spec.buffers_cls.zeros(p, g, **state_options(spec, kwargs))


def state_options(spec, kwargs):
    """The ``Buffers.zeros`` keywords for a step with ``kwargs`` (on top of the defaults)."""
    return spec.state_options(spec.validate(full_kwargs(spec, **kwargs)))


def combos(spec):
    """The option combinations the registry-driven tests step (``fastopt.testinfo``)."""
    return testinfo.option_combinations(spec)


def info(spec):
    return testinfo.info(spec)


def new_grad(buffers, rng):
    g = buffers.grad
    g[...] = rng.standard_normal(g.shape).astype(g.dtype)
    if g.size > 3:
        g.reshape(-1)[::7] = 0  # exact zeros exercise the sqrt(0) + eps paths


def clone(buffers):
    arrays = {n: a.copy() for n, a in buffers.arrays().items()}
    p, g = arrays.pop("param"), arrays.pop("grad")
    return type(buffers)(p, g, step=buffers.step, **arrays)


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bitwise(a, b, what=""):
    if not np.array_equal(bits(a), bits(b)):
        diff = np.flatnonzero(bits(a).ravel() != bits(b).ravel())
        i = diff[0]
        raise AssertionError(f"{what}: {diff.size} elements differ, first at {i}: "
                             f"{a.ravel()[i]!r} != {b.ravel()[i]!r}")


def assert_buffers_bitwise(x, y, what=""):
    assert x.step == y.step, what
    ax, ay = x.arrays(), y.arrays()
    assert ax.keys() == ay.keys()
    for k in ax:
        if k != "grad":
            assert_bitwise(ax[k], ay[k], f"{what} {k}")


def snapshot(buffers):
    return {k: (a.copy(), a.dtype, a.shape) for k, a in buffers.arrays().items()}, buffers.step


def assert_unchanged(buffers, snap):
    arrays, step = snap
    assert buffers.step == step
    now = buffers.arrays()
    assert now.keys() == arrays.keys()
    for k, (a, dt, shape) in arrays.items():
        assert now[k].dtype == dt and now[k].shape == shape
        assert a.tobytes() == now[k].tobytes(), f"{k} changed"


def step_fn(spec):
    return registry.step_function(spec)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, expect):
    """Run ``code`` in a fresh interpreter from the repository root; it must exit 0 and print
    ``expect`` (proof that it reached the end)."""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert expect in res.stdout
    return res


__all__ = ["fastopt"]
