"""Block-wise 8-bit optimizer state (issue 13): the dynamic maps and the nearest-entry lookup
against first principles; every optimizer with state stepping 8-bit state on the CPU (serial,
parallel, N-D, float32 and float64, clipping / unscaling / skipping) bitwise equal to the NumPy
reference, codes and scales included; the small-buffer rule, memory, errors before any write,
checkpoints."""
import numpy as np
import pytest

import fastopt
from fastopt import _step, quantization as Q
from helpers import SPECS, assert_bitwise, combos, full_kwargs, state_options

EIGHT_BIT = [s for s in SPECS if s.state]


def test_the_maps():
    for qm in (Q.SIGNED, Q.UNSIGNED):
        v = qm.values
        assert v.dtype == np.float32 and v.shape == (256,) and np.all(np.diff(v) > 0)
        assert v[-1] == 1.0 and 0.0 in v and qm.values[qm.zero_code] == 0
        # decade d = 10**-6 .. 10**0 holds 2**i (signed) / 2**(i+1) (unsigned) magnitudes
        for i in range(7):
            lo, hi = 0.1 * 10.0 ** (i - 6), 10.0 ** (i - 6)
            count = np.count_nonzero((v > lo) & (v < hi))
            assert count == (2 ** i if qm.signed else 2 ** (i + 1)), (qm, i, count)
    assert np.array_equal(Q.SIGNED.values[:127], -Q.SIGNED.values[128:255][::-1])
    assert Q.UNSIGNED.values.min() == 0.0
    assert Q.CELL_MIDS == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_codes_are_the_nearest_map_entry(dtype):
    rng = np.random.default_rng(0)
    for qm in (Q.SIGNED, Q.UNSIGNED):
        x = np.concatenate([rng.uniform(-1, 1, 20000), rng.standard_normal(2000) * 1e-3,
                            rng.uniform(-2e-6, 2e-6, 2000), qm.values,
                            [0.0, -0.0, 1.0, -1.0]]).astype(dtype)
        if not qm.signed:
            x = np.abs(x)
        code = Q.quantize_values(x, qm)
        dist = np.abs(qm.values.astype(np.float64)[None, :] - x.astype(np.float64)[:, None])
        best = dist.min(axis=1)
        # the nearest entry (a value within float32 rounding of a midpoint may go either way)
        got = dist[np.arange(x.size), code]
        # (the unsigned map never rounds a positive value to 0: its smallest entry instead)
        floor = ~qm.signed & (x > 0) & (code == 1)
        assert np.all((got <= best + 1e-7 * np.maximum(np.abs(x), 1e-6)) | floor), qm
        if not qm.signed:
            assert np.all(code[x > 0] >= 1) and np.all(code[x == 0] == 0)
        assert np.all(qm.values[Q.quantize_values(qm.values.astype(dtype), qm)] == qm.values)


def test_the_one_read_table_gives_the_reference_codes():
    """The CPU kernels' float32 encoder (one table read per value, integer arithmetic:
    ``quantization.encode_table``, run by the kernels' own code) against the reference's first
    table and comparison. In a cell both are step functions of the low 16 bits with at most
    one step, the reference's at a midpoint: they are equal on the whole cell when they agree
    at its ends and next to every midpoint, which is what is checked (all 2**32 values:
    bench/cpu_probes/encode_table_check.py)."""
    from fastopt.kernels.quant8 import encode_bits

    def codes(bits, table):
        out = np.empty(bits.size, np.uint8)
        encode_bits(bits, table, out)
        return out

    cells = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    ends = np.concatenate([cells | np.uint32(low) for low in (0, 1, 0xFFFE, 0xFFFF)])
    for qm in (Q.SIGNED, Q.UNSIGNED):
        m = qm.mid[np.isfinite(qm.mid)].view(np.uint32).astype(np.int64)
        near = (m[:, None] + np.arange(-2, 3)[None, :]).ravel()
        near = np.concatenate([near, near ^ (1 << 31)]).astype(np.uint32)
        bits = np.concatenate([ends, near])
        assert np.array_equal(codes(bits, qm.table), Q.quantize_values(bits.view(np.float32),
                                                                         qm)), qm
    # a wrong threshold is caught: one cell's step moved by one
    spoiled = Q.SIGNED.table.copy()
    c = int(Q.SIGNED.mid[100].view(np.uint32)) >> 16
    spoiled[c] += np.uint32(1 << 8)
    bits = np.concatenate([ends, near])
    assert not np.array_equal(codes(bits, spoiled),
                              Q.quantize_values(bits.view(np.float32), Q.SIGNED))


@pytest.mark.parametrize("signed", [True, False])
def test_the_cpu_float32_encoder_on_special_values(signed):
    """The block encoder of the CPU kernels (absmax, scale, codes; the one-read table) on
    blocks of 61 values (a partial group of eight) with zeros of both signs, subnormals,
    inf and NaN: the reference's codes and scales."""
    from fastopt.kernels.quant8 import quantize_block_t
    qm = Q.SIGNED if signed else Q.UNSIGNED
    rng = np.random.default_rng(3)
    k = 61
    blocks = [rng.standard_normal(k) * 10.0 ** rng.integers(-30, 30, k) for _ in range(3)]
    blocks[0][:6] = [0.0, -0.0, 1e-45, -1e-45, 1e-39, 3e38]
    blocks[1][7] = np.inf
    blocks[2][9] = np.nan
    w = np.concatenate(blocks).astype(np.float32)
    if not signed:
        w = np.abs(w)
    codes = np.zeros(w.size, np.uint8)
    xf = np.empty(k, np.float32)
    scales = [quantize_block_t(w[b * k:(b + 1) * k], k, codes, b * k, qm.table, xf,
                               xf.view(np.uint32)) for b in range(3)]
    ref_codes, ref_scales = Q.quantize(w, k, qm)
    assert np.array_equal(codes, ref_codes)
    assert_bitwise(np.array(scales, np.float32), ref_scales, "scales")


def test_a_block_whose_inverse_absmax_overflows_is_stored_as_zeros():
    # float32 state of absmax ~1e-40 (second moments of a long-dead parameter decay there):
    # 1 / absmax is inf, and inf / NaN products would take the wrong end of the map (+absmax
    # read back as -0.99 x absmax); the block is stored as zeros instead, CPU == NumPy
    w = np.zeros(512, np.float32)
    w[:256] = np.linspace(-1e-40, 1e-40, 256, dtype=np.float32)
    w[256:] = np.linspace(-1, 1, 256, dtype=np.float32)
    for qm in (Q.SIGNED, Q.UNSIGNED):
        x = w if qm.signed else np.abs(w)
        codes, scales = Q.quantize(x, 256, qm)
        back = Q.dequantize(codes, scales, 256, qm)
        assert np.all(back[:256] == 0) and scales[0] > 0
        assert np.max(np.abs(back[256:] - x[256:])) < 0.02
    spec = next(s for s in EIGHT_BIT if s.name == "momentum")
    kw, (a, b), rng = _pair(spec, {"momentum": 0.9}, 512, np.float32, seed=13)
    for x in (a, b):
        x.grad[...] = w
    _step.step(spec, a, backend="cpu", **kw)
    _step.step(spec, b, backend="numpy", **kw)
    _assert_same(a, b, "tiny block")


def test_quantize_dequantize_round_trip_error_is_bounded():
    """Each value comes back within half the gap between its neighbouring map entries, times
    the block's absmax; a block's largest positive value exactly."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(4096) * np.repeat(10.0 ** rng.integers(-6, 3, 16), 256)).astype(
        np.float32)
    codes, scales = Q.quantize(w, 256, Q.SIGNED)
    back = Q.dequantize(codes, scales, 256, Q.SIGNED)
    s = np.repeat(scales, 256)
    gaps = np.diff(Q.SIGNED.values).max()
    assert np.all(np.abs(back - w) <= gaps / 2 * s * 1.001)
    for b in range(16):
        blk = w[b * 256:(b + 1) * 256]
        j = np.argmax(np.abs(blk))
        if blk[j] > 0:
            assert back[b * 256 + j] == blk[j]


def _pair(spec, combo, n, dtype, shape=None, block=64, seed=0):
    kw = full_kwargs(spec, **combo)
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n).astype(dtype)
    if shape is not None:
        p0 = p0.reshape(shape)

    def make():
        return spec.buffers_cls.zeros(p0.copy(), np.zeros_like(p0), state_dtype="int8",
                                      block_size=block, min_8bit_size=0,
                                      **state_options(spec, combo))
    return kw, (make(), make()), rng


def _assert_same(a, b, what):
    for name, x in a.arrays().items():
        assert_bitwise(x, b.arrays()[name], f"{what} {name}")
    assert set(a.state_absmax or {}) == set(b.state_absmax or {})
    for f, s in (a.state_absmax or {}).items():
        assert_bitwise(s, b.state_absmax[f], f"{what} scales of {f}")


CASES = [(s, c) for s in EIGHT_BIT for c in (combos(s)[:1] + combos(s)[-1:])]


@pytest.mark.parametrize("spec,combo", CASES, ids=[
    f"{s.name}-" + "-".join(f"{k}={v}" for k, v in c.items()) for s, c in CASES])
def test_8bit_state_cpu_equals_numpy(spec, combo):
    # the first and last option combinations, serial, float32 (each compiles one block driver:
    # CI time); the last also parallel over an odd size, N-D, and float64
    cases = [(1000 + 37, False, None, np.float32)]
    if combo == combos(spec)[-1]:
        cases += [(70_001, True, None, np.float32), (1200, None, (30, 40), np.float32),
                  (999, False, None, np.float64)]
    for n, parallel, shape, dtype in cases:
        kw, (a, b), rng = _pair(spec, combo, n, dtype, shape)
        for _ in range(4):
            g = rng.standard_normal(a.grad.shape).astype(dtype)
            g.reshape(-1)[::7] = 0.0
            g.reshape(-1)[64:128] = 0.0            # one whole block of zero gradient
            a.grad[...] = g
            b.grad[...] = g
            _step.step(spec, a, backend="cpu", parallel=parallel, **kw)
            _step.step(spec, b, backend="numpy", **kw)
        _assert_same(a, b, f"{spec.name} n={n} {np.dtype(dtype).name}")
        if len(a.arrays()) > 2:
            assert a.state_dtype == "int8"
            assert all(x.dtype == np.uint8 for f, x in a.arrays().items()
                       if f not in ("param", "grad"))


@pytest.mark.parametrize("name", ["adam", "momentum", "rmsprop"])
def test_8bit_state_with_clipping_unscaling_and_skipping(name):
    spec = next(s for s in EIGHT_BIT if s.name == name)
    combo = combos(spec)[-1]
    kw, (a, b), rng = _pair(spec, combo, 3000, np.float32, seed=2)
    for step in range(4):
        g = rng.standard_normal(3000).astype(np.float32) * 10
        if step == 2:
            g[5] = np.inf
        a.grad[...] = g
        b.grad[...] = g
        for x, backend in ((a, "cpu"), (b, "numpy")):
            _step.step(spec, x, backend=backend, max_grad_norm=1.0, grad_scale=4.0,
                       skip_nonfinite=True, **kw)
    assert a.skipped_steps == b.skipped_steps == 1
    _assert_same(a, b, spec.name)


def test_8bit_state_follows_the_float32_trajectory_closely():
    """Adam on a quadratic, 8-bit vs float32 state: the parameters stay close (the map's
    resolution), and both converge."""
    rng = np.random.default_rng(3)
    target = rng.standard_normal(20_000).astype(np.float32)
    runs = {}
    for sd in (None, "int8"):
        p = np.zeros_like(target)
        b = fastopt.AdamBuffers.zeros(p, np.zeros_like(p), state_dtype=sd)
        for _ in range(300):
            b.grad[...] = b.param - target
            fastopt.adam_step(b, lr=0.02)
        runs[sd] = b.param.copy()
    assert np.abs(runs["int8"] - target).mean() < 0.05
    assert np.abs(runs["int8"] - runs[None]).mean() < 0.05
    assert not np.array_equal(runs["int8"], runs[None])        # the state really is 8-bit


def test_small_buffers_keep_full_precision_and_memory_is_a_quarter():
    small = fastopt.AdamBuffers.zeros(np.zeros(4095, np.float32), np.zeros(4095, np.float32),
                                      state_dtype="int8")
    assert small.state_dtype == "float32" and small.state_absmax is None
    n = 1 << 20
    big = fastopt.AdamBuffers.zeros(np.zeros(n, np.float32), np.zeros(n, np.float32),
                                    state_dtype="int8")
    assert big.state_dtype == "int8" and big.block_size == 256
    state = sum(big.arrays()[f].nbytes + big.state_absmax[f].nbytes
                for f in ("exp_avg", "exp_avg_sq"))
    assert state / (2 * 4 * n) == pytest.approx(1 / 4 + 1 / 256, rel=1e-9)   # 74.6% smaller
    forced = fastopt.AdamBuffers.zeros(np.zeros(10, np.float32), np.zeros(10, np.float32),
                                       state_dtype="int8", min_8bit_size=0, block_size=4)
    assert forced.state_dtype == "int8" and forced.state_absmax["exp_avg"].shape == (3,)


def test_initial_state_values_are_quantized():
    b = fastopt.AdagradBuffers.zeros(np.zeros(5000), np.zeros(5000), state_dtype="int8",
                                     initial_accumulator_value=0.3)
    back = Q.dequantize(b.sum, b.state_absmax["sum"], 256, Q.UNSIGNED, np.float64)
    assert np.all(back == np.float64(np.float32(0.3)))       # scale float32, code of 1.0


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(state_dtype="int8", block_size=0), ValueError, "block_size must be an int >= 1"),
    (dict(state_dtype="int8", min_8bit_size=-1), ValueError, "min_8bit_size"),
    (dict(state_dtype="int8", stochastic_rounding=True), ValueError, "needs state_dtype='bf"),
    (dict(state_dtype="int4"), ValueError, "state_dtype must be"),
])
def test_bad_8bit_options_are_refused(kwargs, error, match):
    p = np.ones(5000, np.float32)
    with pytest.raises(error, match=match):
        fastopt.AdamBuffers.zeros(p, p.copy(), **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lamb_on_8bit_state_with_tensors_and_groups_equals_numpy(dtype):
    # LAMB's pre-pass reads the dequantized state chunk by chunk (the float pre-pass's chunks
    # and order) and gives each tensor its trust ratio; tensors and groups cut the 8-bit
    # blocks; with clipping on one step; serial, parallel and NumPy agree bit for bit
    # (tensors alone take the same grouped path: one row per tensor; parallel in float32)
    spec = next(s for s in EIGHT_BIT if s.name == "lamb")
    n = 5003
    layout = [1000, 37, 2966, 1000]
    groups = fastopt.Groups(n, [{"range": (500, 1500), "lr": 1e-2, "weight_decay": 0.1}])
    kw, (a, b), rng = _pair(spec, {"weight_decay": 0.01}, n, dtype, seed=14)
    for step in range(3):
        g = rng.standard_normal(n).astype(dtype)
        for x, backend in ((a, "cpu"), (b, "numpy")):
            x.grad[...] = g
            _step.step(spec, x, backend=backend, parallel=dtype == np.float32, layout=layout,
                       groups=groups, max_grad_norm=1.0 if step == 1 else None, **kw)
    _assert_same(a, b, np.dtype(dtype).name)
    assert a.state_dtype == "int8"


def _snapshot(b):
    return ({n: a.copy() for n, a in b.arrays().items()},
            {f: s.copy() for f, s in b.state_absmax.items()}, b.step)


def _unchanged(b, snap):
    arrays, scales, step = snap
    for n, a in arrays.items():
        assert_bitwise(a, b.arrays()[n], n)
    for f, s in scales.items():
        assert_bitwise(s, b.state_absmax[f], f)
    assert b.step == step


@pytest.mark.parametrize("spoil,error,match", [
    (lambda b: b.state_absmax.__setitem__("exp_avg", np.zeros(3, np.float32)), ValueError,
     "scales but"),
    (lambda b: b.state_absmax.__setitem__("exp_avg", b.state_absmax["exp_avg"].astype(
        np.float64)), TypeError, "float32"),
    (lambda b: setattr(b, "block_size", 0), ValueError, "block_size"),
    (lambda b: setattr(b, "state_absmax", None), TypeError, "state_absmax"),
    (lambda b: setattr(b, "param_copy", np.zeros(5000, np.int16)), TypeError,
     "param_copy"),
])
def test_a_bad_8bit_step_writes_nothing(spoil, error, match):
    rng = np.random.default_rng(4)
    b = fastopt.AdamBuffers.zeros(rng.standard_normal(5000).astype(np.float32),
                                  rng.standard_normal(5000).astype(np.float32),
                                  state_dtype="int8")
    fastopt.adam_step(b)
    spoil(b)
    snap = _snapshot(b) if isinstance(b.state_absmax, dict) else None
    with pytest.raises(error, match=match):
        fastopt.adam_step(b)
    if snap is not None:
        _unchanged(b, snap)


def _group_values(spec):
    """Two groups' own values: a larger lr, and weight decay where the optimizer has it (a
    second option combination: a second kernel in the one call)."""
    names = {h.name for h in spec.hypers}
    lr = spec.defaults["lr"]
    second = {"weight_decay": 0.05} if "weight_decay" in names else {"lr": lr * 0.5}
    return {"lr": lr * 3}, second


@pytest.mark.parametrize("spec", EIGHT_BIT, ids=lambda s: s.name)
def test_groups_with_8bit_state_cpu_equals_numpy(spec):
    # groups cut the buffer across 8-bit blocks (block 64): each block is dequantized, each of
    # its pieces stepped with its group's values, and the block quantized back, in one call;
    # the NumPy reference dequantizes the whole state, steps each group's slice, quantizes
    combo = combos(spec)[-1]          # every option on: the most state
    n = 3001
    first, second = _group_values(spec)
    groups = fastopt.Groups(n, [dict(range=(0, 700), **first), dict(range=(1000, 1333), **second),
                                dict(range=(2000, 2016), **first)])
    # (serial here; the parallel grouped driver: the LAMB and calls'-values tests below)
    kw, (a, b), rng = _pair(spec, combo, n, np.float32, seed=6)
    for step in range(3):
        g = rng.standard_normal(n).astype(np.float32)
        for x, backend in ((a, "cpu"), (b, "numpy")):
            x.grad[...] = g
            _step.step(spec, x, backend=backend, parallel=False, groups=groups,
                       max_grad_norm=1.0 if step == 1 else None, **kw)
    _assert_same(a, b, f"{spec.name} grouped")
    assert a.state_dtype == "int8"


@pytest.mark.parametrize("spec", EIGHT_BIT, ids=lambda s: s.name)
def test_8bit_groups_steps_behind_cpu_equals_numpy(spec):
    """Groups counting their own steps (``steps_behind``) on 8-bit state: the block driver gives
    each piece its group's scalars at its own count, as the reference does (one group takes its
    own first step at the buffers' third; a quantization block holds pieces of two counts)."""
    combo = combos(spec)[-1]
    n = 1500
    first, second = _group_values(spec)
    groups = fastopt.Groups(n, [dict(range=(0, 700), steps_behind=2, **first),
                                dict(range=(730, 1333), steps_behind=1, **second)])
    layout = dict(layout=[600, 900]) if spec.kernel.norm_names else {}
    kw, (a, b), rng = _pair(spec, combo, n, np.float32, seed=8)
    a.step = b.step = 2
    for step in range(3):
        g = rng.standard_normal(n).astype(np.float32)
        for x, backend in ((a, "cpu"), (b, "numpy")):
            x.grad[...] = g
            _step.step(spec, x, backend=backend, parallel=step == 2, groups=groups,
                       max_grad_norm=1.0 if step == 1 else None, **layout, **kw)
    _assert_same(a, b, f"{spec.name} grouped, steps behind")


def test_8bit_groups_with_the_calls_values_step_as_no_groups():
    # the block cutting itself changes nothing: groups that repeat the call's values give the
    # ungrouped step's codes, scales and parameters bit for bit (parallel: threads take runs of
    # blocks, so the pieces of a block never straddle two threads)
    spec = next(s for s in EIGHT_BIT if s.name == "adam")
    n = 5000
    same = np.float64(spec.defaults["lr"])      # equal value, another type: rows of their own
    groups = fastopt.Groups(n, [{"range": (10, 99), "lr": same}, {"range": (130, 4321),
                                                                   "lr": same}])
    assert len(_step._Rows(spec, groups, dict(spec.defaults), n).segments) == 5
    for parallel in (True,):
        kw, (a, b), rng = _pair(spec, {}, n, np.float32, seed=7)
        for _ in range(3):
            g = rng.standard_normal(n).astype(np.float32)
            a.grad[...] = g
            b.grad[...] = g
            _step.step(spec, a, backend="cpu", parallel=parallel, groups=groups, **kw)
            _step.step(spec, b, backend="cpu", parallel=parallel, **kw)
        _assert_same(a, b, f"parallel={parallel}")


@pytest.mark.parametrize("grouped,kind", [(False, "bfloat16"), (True, "bfloat16"),
                                          (False, "float16"), (True, "float16")],
                         ids=["plain", "groups", "plain-float16", "groups-float16"])
def test_8bit_state_writes_the_param_copy_in_the_same_pass(grouped, kind):
    # the block driver writes the block's new parameters, rounded to bfloat16 (or float16), to
    # param_copy while they are in L1; the NumPy reference rounds the whole parameter after
    # its step
    spec = next(s for s in EIGHT_BIT if s.name == "adam")
    n = 3001
    groups = (fastopt.Groups(n, [{"range": (100, 1234), "lr": 1e-2, "weight_decay": 0.1}])
              if grouped else None)
    kw, (a, b), rng = _pair(spec, {}, n, np.float32, seed=10)
    for x in (a, b):
        x.param_copy = np.zeros(n, np.uint16 if kind == "bfloat16" else np.float16)
    for _ in range(3):
        g = rng.standard_normal(n).astype(np.float32)
        for x, backend in ((a, "cpu"), (b, "numpy")):
            x.grad[...] = g
            _step.step(spec, x, backend=backend, parallel=True, groups=groups, **kw)
        assert_bitwise(a.param_copy, fastopt.to_bfloat16(a.param) if kind == "bfloat16"
                       else a.param.astype(np.float16), "param_copy")
    _assert_same(a, b, "param_copy")
    assert_bitwise(a.param_copy, b.param_copy, "param_copy")


@pytest.mark.parametrize("spec", EIGHT_BIT, ids=lambda s: s.name)
def test_frozen_8bit_blocks_keep_every_bit_and_the_rest_equals_numpy(spec):
    """Frozen groups of whole blocks (one inside, one at the buffer's odd end) on 8-bit state:
    their codes, scales, parameters and param copy keep every bit, in the block driver (serial
    and parallel) as in the NumPy reference, and everything else is bitwise the reference's;
    a frozen range that cuts a block is refused before any write."""
    combo = combos(spec)[-1]
    n = 1000 + 37
    first, second = _group_values(spec)
    frozen = [(128, 448), (960, n)]
    groups = fastopt.Groups(n, [dict(range=(0, 100), **first), dict(range=(448, 700), **second),
                                {"ranges": frozen, "frozen": True}])
    layout = dict(layout=[500, n - 500]) if spec.kernel.norm_names else {}
    kw, (a, b), rng = _pair(spec, combo, n, np.float32, seed=11)
    if spec.name == "adam":     # (a driver with a copy to compile: one optimizer, CI time)
        for x in (a, b):
            x.param_copy = np.zeros(n, np.uint16)
    for step in range(3):
        g = rng.standard_normal(n).astype(np.float32)
        snap = _snapshot(a)
        copy = None if a.param_copy is None else a.param_copy.copy()
        for x, backend in ((a, "cpu"), (b, "numpy")):
            x.grad[...] = g
            _step.step(spec, x, backend=backend, parallel=step == 1, groups=groups,
                       max_grad_norm=1.0 if step == 2 else None, **layout, **kw)
        _assert_same(a, b, f"{spec.name} frozen step {step}")
        for lo, hi in frozen:
            for name, v in snap[0].items():
                if name != "grad":
                    assert_bitwise(a.arrays()[name][lo:hi], v[lo:hi], f"{name} frozen")
            for f, sc in snap[1].items():
                bs = a.block_size
                assert_bitwise(a.state_absmax[f][lo // bs:-(-hi // bs)],
                               sc[lo // bs:-(-hi // bs)], f"scales of {f}")
            if copy is not None:
                assert_bitwise(a.param_copy[lo:hi], copy[lo:hi], "param_copy")
    assert not np.array_equal(a.param[100:128], snap[0]["param"][100:128])   # (stepped)
    snap = _snapshot(a)
    cut = fastopt.Groups(n, [{"range": (128, 450), "frozen": True}])
    with pytest.raises(ValueError, match=r"frozen group's elements \[128, 450\) .* block"):
        _step.step(spec, a, backend="cpu", groups=cut, **layout, **kw)
    _unchanged(a, snap)


def test_block_cuts_share_the_blocks_with_items_equally():
    """The grouped block driver's chunks: every block in one chunk, in order; where every
    block has items, the equal runs of blocks as before; with frozen blocks (no items) equal
    shares of the others (a frozen first 70 % does not leave the first threads idle)."""
    from fastopt.kernels.quant8 import block_cuts
    rng = np.random.default_rng(9)
    for _ in range(200):
        nb = int(rng.integers(1, 400))
        chunks = int(rng.integers(1, 40))
        full = np.arange(nb + 1) * int(rng.integers(1, 4))
        per = -(-nb // chunks)
        assert np.array_equal(block_cuts(full, chunks),
                              [min(nb, c * per) for c in range(chunks + 1)])
        has = rng.random(nb) < rng.random()
        has[int(rng.integers(0, nb))] = True
        if rng.random() < 0.5:
            has[:int(0.7 * nb)] = False
            has[-1] = True
        bstarts = np.concatenate([[0], np.cumsum(has)])
        cuts = block_cuts(bstarts, chunks)
        assert cuts[0] == 0 and cuts[-1] == nb and np.all(np.diff(cuts) >= 0)
        shares = [int(has[a:b].sum()) for a, b in zip(cuts[:-1], cuts[1:])]
        assert max(shares) == -(-int(has.sum()) // chunks)


def test_block_items_cover_the_buffer_once():
    from fastopt.kernels.quant8 import block_items
    rng = np.random.default_rng(8)
    for _ in range(20):
        n = int(rng.integers(1, 3000))
        block = int(rng.choice([1, 7, 64, 256]))
        cuts = np.unique(np.concatenate([[0, n], rng.integers(0, n, 5)]))
        segments = [(int(lo), int(hi), k % 3) for k, (lo, hi) in enumerate(zip(cuts[:-1],
                                                                                cuts[1:]))]
        items, bstarts = block_items(segments, [r for _, _, r in segments], n, block)
        assert bstarts[0] == 0 and bstarts[-1] == len(items)
        assert np.all(np.diff(bstarts) >= 0)
        covered = np.zeros(n, int)
        for b in range(len(bstarts) - 1):
            for lo, hi, row, kind in items[bstarts[b]:bstarts[b + 1]]:
                assert b * block <= lo < hi <= min(n, (b + 1) * block)
                seg = next(s for s in segments if s[0] <= lo and hi <= s[1])
                assert row == kind == seg[2]
                covered[lo:hi] += 1
        assert np.all(covered == 1)


def test_checkpoint_keeps_8bit_state_as_is(tmp_path):
    rng = np.random.default_rng(6)
    b = fastopt.RMSpropBuffers.zeros(rng.standard_normal(9000).astype(np.float32),
                                     rng.standard_normal(9000).astype(np.float32),
                                     state_dtype="int8", block_size=128, momentum=0.9,
                                     centered=True)
    for _ in range(3):
        fastopt.rmsprop_step(b, momentum=0.9, centered=True)
    path = tmp_path / "q.ckpt"
    fastopt.save_checkpoint(path, b)
    fresh = fastopt.load_checkpoint(path)
    assert fresh.state_dtype == "int8" and fresh.block_size == 128 and fresh.step == 3
    for n, a in b.arrays().items():
        if n != "grad":
            assert_bitwise(a, fresh.arrays()[n], n)
            assert fresh.arrays()[n].dtype == a.dtype        # codes stay codes
    for f, s in b.state_absmax.items():
        assert_bitwise(s, fresh.state_absmax[f], f)
    # into existing 8-bit buffers: in place, then both continue the same trajectory
    other = fastopt.RMSpropBuffers.zeros(np.zeros(9000, np.float32), np.zeros(9000, np.float32),
                                         state_dtype="int8", block_size=128, momentum=0.9,
                                         centered=True)
    fastopt.load_checkpoint(path, other)
    for x in (b, other):
        x.grad[...] = np.float32(0.5)
        fastopt.rmsprop_step(x, momentum=0.9, centered=True)
    _assert_same(b, other, "continued")
    # precision and block size are never converted on load
    full = fastopt.RMSpropBuffers.zeros(np.zeros(9000, np.float32), np.zeros(9000, np.float32),
                                        momentum=0.9, centered=True)
    with pytest.raises(fastopt.CheckpointError, match="never converted"):
        fastopt.load_checkpoint(path, full)
    wrong = fastopt.RMSpropBuffers.zeros(np.zeros(9000, np.float32),
                                         np.zeros(9000, np.float32), state_dtype="int8",
                                         block_size=256, momentum=0.9, centered=True)
    snap = _snapshot(wrong)
    with pytest.raises(fastopt.CheckpointError, match="blocks of 128"):
        fastopt.load_checkpoint(path, wrong)
    _unchanged(wrong, snap)
