"""Low-precision gradients: a float32 parameter's gradient given as bfloat16 bits (``uint16``)
or float16 is read by every step widened to float32 (exact) in the same pass, so the step is
bit for bit the step on the widened float32 gradient, for every optimizer, state precision,
training-loop option, parameter groups and param copy; the reductions (norm, finiteness) read
it the same way; the NumPy reference widens it first and matches; what cannot take one says
so before any write."""
import numpy as np
import pytest
from numba import njit

import fastopt
from fastopt import _step, scaling
from fastopt.kernels.precision import BF16Bits, F16Bits
from fastopt.precision import from_bfloat16, to_bfloat16
from helpers import SPECS, assert_bitwise, assert_buffers_bitwise, combos, full_kwargs, \
    snapshot, assert_unchanged, state_options

KINDS = ("bfloat16", "float16")


def low(x, kind):
    """float32 values rounded to the gradient kind (bfloat16 bits or float16)."""
    return to_bfloat16(x) if kind == "bfloat16" else x.astype(np.float16)


def widened(g):
    return from_bfloat16(g) if g.dtype == np.uint16 else g.astype(np.float32)


@njit(error_model="numpy")
def _read_all(view, out):
    for i in range(out.shape[0]):
        out[i] = view[i]


@njit(error_model="numpy")
def _read_slice(view, lo, hi, out):
    s = view[lo:hi]
    for i in range(hi - lo):
        out[i] = s[i]


@pytest.mark.parametrize("kind", KINDS)
def test_the_kernels_read_every_16_bit_pattern_as_its_float32_value(kind):
    """Every one of the 65,536 patterns, through the view the CPU kernels get (an element, and
    an element of a slice): the float32 bits NumPy's widening gives (NaN payloads, signed
    zeros, subnormals and infinities included)."""
    bits = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16)
    view = BF16Bits(bits) if kind == "bfloat16" else F16Bits(bits)
    want = from_bfloat16(bits) if kind == "bfloat16" else bits.view(np.float16).astype(
        np.float32)
    out = np.empty(bits.size, np.float32)
    _read_all(view, out)
    assert_bitwise(out, want)
    part = np.empty(1000, np.float32)
    _read_slice(view, 31_000, 32_000, part)
    assert_bitwise(part, want[31_000:32_000])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [0, 1, 7, 9, 4099, 70_001])
def test_norm_and_finiteness_passes_read_the_widened_values(kind, n):
    """The sum of squares (serial, and parallel at 70,001) is the bits of the widened
    gradient's and of the NumPy reference's; with frozen ranges too; a NaN or an infinity at
    the first element, in the vectorized body or in the tail is found, also with frozen
    ranges, and one inside a frozen range is not read."""
    rng = np.random.default_rng(n)
    g = low((rng.standard_normal(n) * 3).astype(np.float32), kind)
    w = widened(g)
    total = scaling.sum_of_squares(g)
    assert total == scaling.sum_of_squares(w) == scaling.sum_of_squares_reference(g)
    assert fastopt.grad_norm(g) == fastopt.grad_norm(w)
    assert scaling.all_finite(g)
    if n < 9:
        return
    frozen = [(1, n // 3)]
    plan = scaling.FrozenPlan(n, frozen)
    assert (scaling.sum_of_squares(g, plan)
            == scaling.sum_of_squares_frozen_reference(g, frozen)
            == scaling.sum_of_squares(w, plan))
    bad = low(np.array([np.inf, np.nan], np.float32), kind)
    for at in (0, n // 2, n - 1):
        for b in bad:
            h = g.copy()
            h[at] = b
            assert not scaling.all_finite(h), (at, b)
            assert not np.isfinite(scaling.sum_of_squares(h))
            if at != 0:
                assert not scaling.all_finite(h, scaling.FrozenPlan(n, [(0, 1)]))
    h = g.copy()
    h[2] = bad[0]
    assert scaling.all_finite(h, plan)          # (inside the frozen range: not read)


def _case(i, spec):
    """The options of optimizer ``i``'s case: the gradient kind, state precision, training-loop
    options, param copy and parallel twin rotate over the registry (a pairwise-style sample:
    every value of each appears, and every kernel variant compiles once: CI time)."""
    kind = KINDS[i % 2]
    state = (None, "bfloat16", "int8")[i % 3] if spec.state else None
    loop = ({}, dict(max_grad_norm=0.5), dict(skip_nonfinite=True, grad_scale=4.0),
            dict(max_grad_norm=1.0, grad_scale=2.0, skip_nonfinite=True))[i % 4]
    copy = (None, np.uint16, np.float16)[(i // 2) % 3]
    return kind, state, loop, copy, bool(i % 2)


CASES = list(enumerate(SPECS))


@pytest.mark.parametrize("i,spec", CASES, ids=[s.name for _, s in CASES])
def test_every_optimizer_reads_a_low_precision_gradient_as_its_widened_values(i, spec):
    """Four steps of each optimizer (one option combination of its grid each, turn by turn)
    on a bfloat16 or float16 gradient: the CPU step, the CPU step given the gradient widened
    to float32 by NumPy, and the NumPy reference on the low-precision gradient leave the same
    bits in the parameters, the state (8-bit: codes and scales) and the param copy, and the
    same gradient norm; the third step with two parameter groups, the fourth with a frozen
    group; with ``skip_nonfinite``, a step on a gradient with an infinity is skipped and
    writes nothing."""
    kind, state, loop, copy, parallel = _case(i, spec)
    combo = combos(spec)[i % len(combos(spec))]
    kw = full_kwargs(spec, **combo)
    n = 3000
    rng = np.random.default_rng(i)
    p = rng.standard_normal(n).astype(np.float32)
    opts = dict(state_options(spec, kw))
    if state is not None:
        opts["state_dtype"] = state
    if state == "int8":
        opts.update(min_8bit_size=0, block_size=128)
    runs = {}
    for mode in ("low", "widened", "numpy"):
        g = np.zeros(n, np.float32 if mode == "widened" else
                     (np.uint16 if kind == "bfloat16" else np.float16))
        b = spec.buffers_cls.zeros(p.copy(), g, **opts)
        if copy is not None:
            b.param_copy = np.zeros(n, copy)
        runs[mode] = b
    for t in range(4):
        x = (rng.standard_normal(n) * 2).astype(np.float32)
        x[::7] = 0.0
        g = low(x, kind)
        groups = None
        if t == 2:
            groups = fastopt.Groups(n, [{"range": (0, 1000), "lr": kw["lr"] * 0.5},
                                        {"range": (1000, 2300)}])
        elif t == 3:
            groups = fastopt.Groups(n, [{"range": (0, 1024), "frozen": True}])
        for mode, b in runs.items():
            b.grad[...] = widened(g) if mode == "widened" else g
            _step.step(spec, b, backend="numpy" if mode == "numpy" else "cpu",
                       parallel=parallel, groups=groups, **kw, **loop)
    what = f"{spec.name} {combo} {kind} state={state} {loop} copy={copy}"
    assert_buffers_bitwise(runs["low"], runs["widened"], what)
    assert_buffers_bitwise(runs["low"], runs["numpy"], what + " (NumPy)")
    if state == "int8":
        for f, s in runs["low"].state_absmax.items():
            assert_bitwise(s, runs["numpy"].state_absmax[f], f"{what} {f} scales")
    if copy is not None:
        assert_bitwise(runs["low"].param_copy, runs["numpy"].param_copy, what + " copy")
        assert_bitwise(runs["low"].param_copy, runs["widened"].param_copy, what + " copy")
    norms = {m: b.grad_norm for m, b in runs.items()}
    assert len(set(norms.values())) == 1, norms
    assert (norms["low"] is not None) == ("max_grad_norm" in loop)
    if loop.get("skip_nonfinite"):
        b = runs["low"]
        b.grad[5] = low(np.array([np.inf], np.float32), kind)[0]
        before = snapshot(b)
        copied = None if copy is None else b.param_copy.copy()
        _step.step(spec, b, backend="cpu", parallel=parallel, **kw, **loop)
        assert b.found_inf and b.skipped_steps == 1
        assert_unchanged(b, before)
        if copy is not None:
            assert_bitwise(b.param_copy, copied)


def test_a_low_precision_gradient_of_any_shape():
    """N-D buffers: the gradient read through its flat view, as a 1-D one."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal((30, 40)).astype(np.float32)
    a = fastopt.AdamBuffers.zeros(p.copy(), np.zeros((30, 40), np.float16))
    b = fastopt.AdamBuffers.zeros(p.copy(), np.zeros((30, 40), np.float32))
    for _ in range(3):
        g = rng.standard_normal((30, 40)).astype(np.float16)
        a.grad[...] = g
        b.grad[...] = g.astype(np.float32)
        fastopt.adam_step(a, lr=1e-2, max_grad_norm=1.0)
        fastopt.adam_step(b, lr=1e-2, max_grad_norm=1.0)
    assert_buffers_bitwise(a, b, "N-D")


def test_what_cannot_take_a_low_precision_gradient_says_so_before_any_write():
    """float64 parameters (the widened values are float32: a float64 master would need its own
    gradient), integer gradients, a CUDA gradient (not built on the device) and the MPI
    sharded step (it sums gradients over the ranks in the parameters' dtype) are refused
    with what to do instead; a refused step leaves every buffer as it was."""
    p64 = np.zeros(10, np.float64)
    for g in (np.zeros(10, np.uint16), np.zeros(10, np.float16)):
        with pytest.raises(TypeError, match="low-precision gradient needs float32 parameters"):
            fastopt.AdamBuffers.zeros(p64, g)
    b = fastopt.AdamBuffers.zeros(np.ones(10, np.float64), np.ones(10, np.float64))
    b.grad = np.ones(10, np.uint16)
    before = snapshot(b)
    with pytest.raises(TypeError, match="float16 gradient|bfloat16 gradient"):
        fastopt.adam_step(b, lr=0.1)
    assert_unchanged(b, before)
    with pytest.raises(TypeError, match=r"uint16: bfloat16 bits, or float16"):
        fastopt.AdamBuffers.zeros(np.zeros(10, np.float32), np.zeros(10, np.int16))

    class Device:
        """A device array as the validation sees one (``__cuda_array_interface__``)."""

        def __init__(self, a):
            self.a = a
            self.__cuda_array_interface__ = dict(a.__array_interface__, version=3)

    for g in (np.zeros(10, np.uint16), np.zeros(10, np.float16)):
        with pytest.raises(NotImplementedError, match="CPU only: on CUDA, widen it"):
            fastopt.AdamBuffers(Device(np.zeros(10, np.float32)), Device(g))
    from fastopt.distributed import ShardedStep
    with pytest.raises(TypeError, match="ShardedStep sums the gradients"):
        ShardedStep(fastopt.adam_step, np.zeros(10, np.float32), np.zeros(10, np.uint16))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_grouped_steps_in_one_call_read_the_gradient_slices_widened(kind, name):
    """With float state and no param copy a grouped step runs in one compiled call that
    slices the gradient's view per piece (``kernels.groups``; LAMB's pre-pass over every
    segment in one call): ten groups of two option kinds (weight decay on and off), serial
    and parallel, equal the same steps on the widened gradient."""
    spec = fastopt.registry.get("adam" if name == "adamw" else "lamb")
    kw = dict(lr=1e-2, decoupled_weight_decay=True) if name == "adamw" else dict(lr=1e-2)
    n = 20_000
    edges = np.linspace(0, n, 11).astype(int)
    groups = fastopt.Groups(n, [{"range": (int(a), int(b)), "weight_decay": 0.01 * (i % 2)}
                                for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))])
    rng = np.random.default_rng(3)
    p = rng.standard_normal(n).astype(np.float32)
    for parallel in (False, True):
        a = spec.buffers_cls.zeros(p.copy(), np.zeros(n, np.uint16 if kind == "bfloat16"
                                                      else np.float16))
        b = spec.buffers_cls.zeros(p.copy(), np.zeros(n, np.float32))
        for _ in range(3):
            g = low(rng.standard_normal(n).astype(np.float32), kind)
            a.grad[...] = g
            b.grad[...] = widened(g)
            _step.step(spec, a, parallel=parallel, groups=groups, max_grad_norm=10.0, **kw)
            _step.step(spec, b, parallel=parallel, groups=groups, max_grad_norm=10.0, **kw)
        assert_buffers_bitwise(a, b, f"{name} {kind} parallel={parallel}")
        assert a.grad_norm == b.grad_norm
