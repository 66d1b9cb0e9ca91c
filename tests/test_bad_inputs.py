"""Every bad input raises a clear error BEFORE anything is written (registry-driven)."""
import numpy as np
import pytest

import fastopt
from helpers import (SPECS, assert_unchanged, full_kwargs, info, make_buffers, snapshot,
                     step_fn)

def state_of(spec, kwargs):
    return {k: v for k, v in kwargs.items() if k in spec.zeros_options}


OTHER = {s.name: [o for o in SPECS if o is not s][0] for s in SPECS}


def _stepped(spec, dtype=np.float32, **state):
    """Buffers after two steps (non-zero state, step=2), ready for a rejected third step."""
    b = make_buffers(spec, 33, dtype, state)
    kw = full_kwargs(spec, **state)
    rng = np.random.default_rng(0)
    for _ in range(2):
        b.grad[...] = rng.standard_normal(33)
        step_fn(spec)(b, **kw)
    return b


def _expect(spec, buffers, error, match, **kwargs):
    snap = snapshot(buffers)
    with pytest.raises(error, match=match):
        step_fn(spec)(buffers, **kwargs)
    assert_unchanged(buffers, snap)


HYPER_CASES = [(spec, h.name, bad) for spec in SPECS for h in spec.hypers
               for bad in h.invalid_values()]


@pytest.mark.parametrize("spec,name,bad", HYPER_CASES,
                         ids=[f"{s.name}-{n}={b!r}" for s, n, b in HYPER_CASES])
def test_invalid_hyperparameter(spec, name, bad):
    b = _stepped(spec)
    _expect(spec, b, (TypeError, ValueError), name, **{name: bad})


BAD_CASES = [(spec, bad) for spec in SPECS for bad in info(spec).bad_inputs]


@pytest.mark.parametrize("spec,bad", BAD_CASES,
                         ids=[f"{s.name}-{b.kwargs}" for s, b in BAD_CASES])
def test_registry_bad_inputs(spec, bad):
    b = _stepped(spec, **bad.state)
    _expect(spec, b, bad.error, bad.match, **bad.kwargs)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_unknown_backend_and_keyword(spec):
    b = _stepped(spec)
    _expect(spec, b, ValueError, "unknown backend 'gpu'", backend="gpu")
    _expect(spec, b, TypeError, "unexpected keyword argument 'learning_rate'",
            learning_rate=0.1)
    _expect(spec, b, ValueError, "needs CUDA device arrays", backend="cuda")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_wrong_buffers_type(spec):
    other = OTHER[spec.name]
    b = _stepped(other)
    _expect(spec, b, TypeError, f"needs {spec.buffers_cls.__name__}")
    with pytest.raises(TypeError, match="needs"):
        step_fn(spec)({"param": np.zeros(3)})


def _overlap(b, state):
    big = np.zeros(40, b.dtype)
    big[:33] = b.param
    b.param = big[:33]
    setattr(b, state, big[5:38])


def _reassign(a, attr, value):
    setattr(a, attr, value)


def _corrupt_cases(spec):
    """(description, mutate(buffers), error, match): mutate breaks one array in place of
    the attribute, never touching the original arrays' contents. The buffers have just made
    a step with the same arguments, so each case also checks that the validation cached by
    that step notices the change."""
    state = spec.buffers_cls.state_fields[0]
    return [
        ("grad shape", lambda b: setattr(b, "grad", np.zeros(34, b.dtype)), ValueError,
         "shape"),
        ("grad dtype", lambda b: setattr(b, "grad", np.zeros(33, np.float64)), TypeError,
         "dtype float64 but"),
        ("int dtype", lambda b: setattr(b, "grad", np.zeros(33, np.int32)), TypeError,
         "int32"),
        ("int16", lambda b: setattr(b, "grad", np.zeros(33, np.int16)), TypeError,
         "int16"),
        # (a float32 parameter's gradient may be float16 or bfloat16 bits; a float64 one's not)
        ("float16 gradient of float64 parameters",
         lambda b: (setattr(b, "param", b.param.astype(np.float64)),
                    setattr(b, "grad", np.zeros(33, np.float16))), TypeError,
         "low-precision gradient needs float32 parameters"),
        ("complex", lambda b: setattr(b, "grad", np.zeros(33, np.complex64)), TypeError,
         "complex64"),
        ("list", lambda b: setattr(b, "grad", [0.0] * 33), TypeError, "got list"),
        ("non-contiguous", lambda b: setattr(b, "grad", np.zeros(66, b.dtype)[::2]),
         ValueError, "C-contiguous"),
        ("read-only state", lambda b: getattr(b, state).setflags(write=False), ValueError,
         "read-only"),
        ("read-only param", lambda b: b.param.setflags(write=False), ValueError,
         "read-only"),
        ("grad reshaped in place", lambda b: _reassign(b.grad, "shape", (3, 11)), ValueError,
         "shape"),
        ("grad dtype reassigned in place", lambda b: _reassign(b.grad, "dtype", np.int32),
         TypeError, "int32"),
        ("grad aliases param", lambda b: setattr(b, "grad", b.param), ValueError,
         "share memory"),
        ("state overlaps grad", lambda b: setattr(b, state, b.grad), ValueError,
         "share memory"),
        ("state overlaps param partially", lambda b: _overlap(b, state), ValueError,
         "share memory"),
    ]


CORRUPT = [(spec, case) for spec in SPECS for case in _corrupt_cases(spec)]


@pytest.mark.parametrize("spec,case", CORRUPT, ids=[f"{s.name}-{c[0]}" for s, c in CORRUPT])
def test_bad_arrays(spec, case):
    _, mutate, error, match = case
    b = _stepped(spec, **state_of(spec, info(spec).tuned))
    originals = {k: (a, a.copy()) for k, a in b.arrays().items()}
    step = b.step
    mutate(b)
    snap = snapshot(b) if all(isinstance(a, np.ndarray) for a in b.arrays().values()) \
        else None
    with pytest.raises(error, match=match):
        step_fn(spec)(b, **full_kwargs(spec, **info(spec).tuned))
    assert b.step == step
    if snap is not None:
        assert_unchanged(b, snap)
    for k, (a, copy) in originals.items():
        assert a.tobytes() == copy.tobytes(), f"{k} was written"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_zeros_rejects_bad_param_and_grad(spec):
    z = spec.buffers_cls.zeros
    with pytest.raises(TypeError, match="got list"):
        z([1.0, 2.0], np.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        z(np.zeros(2), np.zeros(3))
    with pytest.raises(TypeError, match="int64"):
        z(np.zeros(2, np.int64), np.zeros(2, np.int64))
    p = np.zeros(4)
    with pytest.raises(ValueError, match="share memory"):
        z(p, p)
    with pytest.raises(ValueError, match="share memory"):
        z(p[:3], p[1:])


def test_buffers_constructor_checks():
    p, g = np.zeros(3), np.zeros(3)
    with pytest.raises(TypeError, match="no state field"):
        fastopt.AdamBuffers(p, g, velocity=np.zeros(3))
    with pytest.raises(ValueError, match="step"):
        fastopt.AdamBuffers(p, g, step=-1)
