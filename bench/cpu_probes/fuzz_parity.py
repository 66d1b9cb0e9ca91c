"""CPU probe: random CPU-vs-NumPy parity cases (fuzzing) over every registered optimizer, its
option combinations, float32/float64, state precision (float, bfloat16 nearest or stochastic,
8-bit with random block sizes), a bfloat16 or float16 ``param_copy`` of float32 parameters,
a bfloat16 or float16 gradient of float32 parameters (read widened),
clipping / unscaling / skipping, random parameter groups (some with ``steps_behind``, some
frozen: their elements, copy and 8-bit blocks must keep every bit, and their gradient, zero
on the NumPy side only, must change nothing: the norm and the finiteness check leave it out;
ranges often on the 8-bit blocks' boundaries, else refused alike),
sizes around block and vector boundaries, serial / parallel / default threads, and gradients
with NaN, inf, huge and subnormal values; 4 steps per case. Every array, scale, step count,
``found_inf``, ``skipped_steps`` and ``grad_norm`` must be bitwise equal (NaN's sign and
payload excepted, README "Guarantees"); a step that raises must raise the same error type on
both backends and write nothing. Prints each failure and a running count.

    python bench/cpu_probes/fuzz_parity.py [seconds] [seed]     (from the repository root)
"""
import os
import sys
import time
import traceback
import warnings

import numpy as np

import fastopt
from fastopt import registry, testinfo
from fastopt._step import step

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tests"))
from helpers import full_kwargs, state_options, bits  # noqa: E402


def assert_bitwise(a, b, what=""):
    a, b = np.ascontiguousarray(a).ravel(), np.ascontiguousarray(b).ravel()
    same = bits(a) == bits(b)
    if a.dtype.kind == "f":
        same |= np.isnan(a) & np.isnan(b)
    elif a.dtype == np.uint16:       # bfloat16 bits: any NaN equals any NaN
        def nan(x):
            return ((x & 0x7F80) == 0x7F80) & ((x & 0x7F) != 0)
        same |= nan(a) & nan(b)
    if not same.all():
        i = np.flatnonzero(~same)[0]
        raise AssertionError(f"{what}: {(~same).sum()} differ, first at {i}: "
                             f"{a[i]!r} != {b[i]!r}")


SPECS = list(registry.REGISTRY.values())
SIZES = [1, 7, 63, 64, 65, 255, 256, 257, 1000, 4097, 70001, 140_000]


def rand_grad(rng, n, dtype, special):
    g = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 3)
    g[::7] = 0.0
    if special == "nan":
        g[rng.integers(0, n)] = np.nan
    elif special == "inf":
        g[rng.integers(0, n)] = -np.inf if rng.random() < .5 else np.inf
    elif special == "huge":
        g[rng.integers(0, n)] = 3e38 if dtype == np.float32 else 1e300
    elif special == "tiny":
        g[: max(1, n // 3)] *= 1e-40
    with np.errstate(over="ignore"):
        return g.astype(dtype)


def groups_for(rng, spec, n, block=None):
    reals = [h for h in spec.hypers if h.kind == "real"]
    k = int(rng.integers(1, 4))
    cuts = sorted(set(int(c) for c in rng.integers(0, n + 1, size=2 * k)))
    gs = []
    for a, b in zip(cuts[0::2], cuts[1::2]):
        if b <= a:
            continue
        if rng.random() < .25:                      # a frozen group
            if block and rng.random() < .7:         # (inward to 8-bit blocks' boundaries)
                a, b = -(-a // block) * block, (b if b == n else b // block * block)
            if b > a:
                gs.append({"range": (a, b), "frozen": True})
            continue
        d = {"range": (a, b)}
        for h in rng.choice(reals, size=min(2, len(reals)), replace=False):
            v = h.default
            if h.name == "weight_decay":
                v = float(rng.choice([0.0, 0.01, 0.1]))
            elif h.high is not None and h.high <= 1.0:
                v = float(rng.choice([0.5, 0.8, 0.95])) if h.name != "dampening" else 0.1
            elif v and v > 0:
                v = v * float(rng.choice([0.5, 2.0]))
            else:
                continue
            d[h.name] = v
        if rng.random() < .4:
            d["steps_behind"] = int(rng.integers(1, 4))     # its own count (may exceed .step)
        gs.append(d)
    return fastopt.Groups(n, gs) if gs else None


def with_copy(b):
    """``b.arrays()`` and the param copy when there is one."""
    arrays = b.arrays()
    if b.param_copy is not None:
        arrays["param_copy"] = b.param_copy
    return arrays


def snapshot(b):
    return ({k: a.copy() for k, a in with_copy(b).items()},
            {k: a.copy() for k, a in (b.state_absmax or {}).items()}, b.step)


def one(case, rng):
    spec = SPECS[rng.integers(len(SPECS))]
    combos = testinfo.option_combinations(spec)
    combo = combos[rng.integers(len(combos))]
    dtype = [np.float32, np.float64][rng.integers(2)]
    n = int(SIZES[rng.integers(len(SIZES))])
    prec = ["none", "bfloat16", "bfloat16-sr", "int8"][rng.integers(4)]
    kw = full_kwargs(spec, **combo)
    zk = dict(state_options(spec, combo))
    if prec.startswith("bfloat16"):
        dtype = np.float32                      # (bfloat16 state needs float32 parameters)
        zk.update(state_dtype="bfloat16", stochastic_rounding=prec.endswith("sr"),
                  seed=int(rng.integers(0, 1000)))
    elif prec == "int8":
        zk.update(state_dtype="int8", block_size=int(rng.choice([32, 64, 100, 256])),
                  min_8bit_size=int(rng.choice([0, 0, 500])))
    loop = {}
    if rng.random() < .5:
        loop["max_grad_norm"] = float(rng.choice([1e-3, 1.0, 1e3]))
    if rng.random() < .3:
        loop["grad_scale"] = float(rng.choice([2.0 ** 16, 0.5, 3.0]))
    if rng.random() < .4:
        loop["skip_nonfinite"] = True
    groups = (groups_for(rng, spec, n, zk.get("block_size"))
              if (rng.random() < .35 and spec.name != "lamb") else None)
    parallel = [None, True, False][rng.integers(3)]
    p0 = rng.standard_normal(n).astype(dtype)
    desc = (f"#{case} {spec.name} {combo} {np.dtype(dtype).name} n={n} {prec} {zk} loop={loop} "
            f"groups={None if groups is None else groups!r} parallel={parallel}")
    try:
        a = spec.buffers_cls.zeros(p0.copy(), np.zeros_like(p0), **zk)
        b = spec.buffers_cls.zeros(p0.copy(), np.zeros_like(p0), **zk)
    except Exception as e:
        return f"SETUP {type(e).__name__}: {str(e)[:60]}", None
    if groups is not None and rng.random() < .7:
        a.step = b.step = int(rng.integers(1, 4))       # (steps_behind needs steps taken)
        desc += f" step={a.step}"
    if dtype == np.float32 and rng.random() < .3:
        kind = [np.uint16, np.float16][rng.integers(2)]
        a.param_copy, b.param_copy = np.zeros(n, kind), np.zeros(n, kind)
        desc += f" param_copy={np.dtype(kind).name}"
    low = None
    if dtype == np.float32 and rng.random() < .3:
        low = [np.uint16, np.float16][rng.integers(2)]
        a.grad, b.grad = np.zeros(n, low), np.zeros(n, low)
        desc += f" grad={np.dtype(low).name}"
    for s in range(4):
        special = rng.choice(["none", "none", "nan", "inf", "huge", "tiny"])
        g = rand_grad(rng, n, dtype, special)
        if low is not None:
            with np.errstate(over="ignore"):
                g = fastopt.to_bfloat16(g) if low == np.uint16 else g.astype(np.float16)
        a.grad[...] = g
        b.grad[...] = g
        for gr, rs in (zip(groups.groups, groups.ranges) if groups is not None else ()):
            if gr.get("frozen"):        # not read: the NumPy side's frozen gradient is zero
                for lo, hi in rs:
                    b.grad[lo:hi] = 0
        ea = eb = None
        sa = snapshot(a)
        try:
            step(spec, a, backend="cpu", parallel=parallel, groups=groups, **loop, **kw)
        except Exception as e:
            ea = e
        try:
            step(spec, b, backend="numpy", groups=groups, **loop, **kw)
        except Exception as e:
            eb = e
        if (ea is None) != (eb is None) or (ea is not None and type(ea) != type(eb)):
            return "EXC-MISMATCH", f"{desc} step{s} {special}: cpu={ea!r} numpy={eb!r}"
        if ea is not None:
            now = snapshot(a)
            if now[2] != sa[2]:
                return "WRITE-ON-RAISE", f"{desc} step{s} the step count"
            for k in sa[1]:
                if sa[1][k].tobytes() != now[1][k].tobytes():
                    return "WRITE-ON-RAISE", f"{desc} step{s} scales of {k}"
            for k in sa[0]:
                if sa[0][k].tobytes() != now[0][k].tobytes():
                    return "WRITE-ON-RAISE", f"{desc} step{s} {k}"
            return f"raised {type(ea).__name__}", None
        try:
            for g, rs in (zip(groups.groups, groups.ranges) if groups is not None else ()):
                if g.get("frozen"):
                    lo, hi = rs[0]
                    for k, x in with_copy(a).items():
                        if k != "grad":
                            assert_bitwise(x[lo:hi], sa[0][k][lo:hi], f"frozen {k}")
                    for k, x in (a.state_absmax or {}).items():
                        bs = a.block_size
                        assert_bitwise(x[lo // bs:-(-hi // bs)], sa[1][k][lo // bs:-(-hi // bs)],
                                       f"frozen scales of {k}")
            assert a.step == b.step, f"step {a.step} != {b.step}"
            for k, x in with_copy(a).items():
                if k != "grad":
                    assert_bitwise(x, with_copy(b)[k], k)
            for k, x in (a.state_absmax or {}).items():
                assert_bitwise(x, b.state_absmax[k], "absmax " + k)
            assert bool(a.found_inf) == bool(b.found_inf), "found_inf"
            assert a.skipped_steps == b.skipped_steps, "skipped"
            ga, gb = a.grad_norm, b.grad_norm
            assert (ga is None and gb is None) or np.array_equal(
                np.float64(ga), np.float64(gb), equal_nan=True), f"norm {ga} {gb}"
        except AssertionError as e:
            return "MISMATCH", f"{desc} step{s} {special}: {e}"
    return "ok", None


def main(seconds, seed):
    warnings.simplefilter("ignore", RuntimeWarning)    # the reference's NaN/inf arithmetic
    rng = np.random.default_rng(seed)
    t0, case, counts = time.time(), 0, {}
    while time.time() - t0 < seconds:
        case += 1
        try:
            kind, detail = one(case, rng)
        except Exception:
            kind, detail = "CRASH", traceback.format_exc()[-1500:]
        key = kind.split(":")[0][:60]
        counts[key] = counts.get(key, 0) + 1
        if detail or kind.startswith("SETUP"):
            print(kind, detail, flush=True)
        if case % 25 == 0:
            print(f"[{time.time()-t0:.0f}s] {case} cases {counts}", flush=True)
    print("DONE", case, counts, flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(float(a[0]) if a else 600.0, int(a[1]) if len(a) > 1 else 0)
