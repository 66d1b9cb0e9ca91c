"""CUDA without a GPU: the simulator suite (in a subprocess), PTX inspection, clear errors."""
import inspect
import itertools
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastopt
from fastopt import registry, testinfo
from fastopt._cuda_backend import CudaUnavailableError, simulator_active
from helpers import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = list(registry.REGISTRY.values())


def _numba_cuda():
    try:
        from numba import cuda
    except ImportError:
        return None
    return cuda if hasattr(cuda, "to_device") else None


needs_numba_cuda = pytest.mark.skipif(_numba_cuda() is None,
                                      reason="numba-cuda is not installed")


@needs_numba_cuda
@pytest.mark.skipif(simulator_active(), reason="already inside the simulator")
def test_simulator_suite():
    """tests/cuda_sim under NUMBA_ENABLE_CUDASIM=1 with 32 threads per block: must pass
    with nothing skipped."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", FASTOPT_CUDA_THREADS_PER_BLOCK="32")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-o", "addopts=", "tests/cuda_sim"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    tail = "\n".join(res.stdout.splitlines()[-25:])
    assert res.returncode == 0, tail + res.stderr[-3000:]
    summary = res.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary
    assert "skipped" not in summary and "failed" not in summary, summary
    print(summary)


def _ptx_signature(spec, combo, dtype):
    from numba import types
    kw = dict(spec.defaults, **combo)
    hp = spec.validate(kw)
    nb = types.float32 if dtype == np.float32 else types.float64
    arr = types.Array(nb, 1, "C")
    n_scalars = len(spec.kernel.scalars)
    return hp, (arr,) * len(spec.kernel.arrays) + (types.UniTuple(nb, n_scalars),)


def _nvvm_available():
    cuda = _numba_cuda()
    if cuda is None or simulator_active():
        return False
    def probe():
        pass
    try:
        cuda.compile_ptx(probe, (), cc=(8, 0))
        return True
    except Exception:
        return False


CCS = [(7, 0), (7, 5), (8, 0), (9, 0)]
# every option combination at one compute capability (rotating through those from sm_75, which
# every NVVM of CUDA 13 targets), and each optimizer's first combination at every one: the
# float64 question does not depend on the target, and compiling every combination for four
# targets cost ~70 s of CI
PTX_CC_CASES = [(s, c, cc) for s in SPECS
                for i, c in enumerate(testinfo.option_combinations(s))
                for cc in (CCS if i == 0 else [CCS[1 + i % (len(CCS) - 1)]])]


@pytest.fixture
def no_driver_device(monkeypatch):
    """numba-cuda compiles device functions for the current device's compute capability,
    which needs a driver; with no GPU, present a stand-in device of the target's cc."""
    import numba.cuda.dispatcher as dispatcher

    def use(cc):
        class Device:
            compute_capability = cc
        monkeypatch.setattr(dispatcher, "get_current_device", lambda: Device())
    return use


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("spec,combo,cc", PTX_CC_CASES, ids=[
    f"{s.name}-" + "-".join(f"{k}={v}" for k, v in c.items()) + f"-sm{cc[0]}{cc[1]}"
    for s, c, cc in PTX_CC_CASES])
def test_float32_ptx_has_no_float64_arithmetic(spec, combo, cc, record_property,
                                               no_driver_device):
    from numba import cuda
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device(cc)
    hp, sig = _ptx_signature(spec, combo, np.float32)
    kernel = ck.python_kernel(spec.kernel, **spec.options(hp, 2))
    try:
        with ck.exact():          # as fastopt launches it: no multiply-add contraction
            ptx, _ = cuda.compile_ptx(kernel, sig, cc=cc)
    except Exception as e:
        if cc == (7, 0) and "not supported" in str(e):
            pytest.skip(f"this NVVM cannot target sm_70 ({e}); sm_75 is tested instead")
        raise
    f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
    assert not f64, f"float64 instructions in a float32 kernel: {f64[:5]}"
    body = [line for line in ptx.splitlines()
            if line.strip() and not line.strip().startswith(("//", ".", "}", "{", "$"))]
    record_property("ptx_instructions", len(body))
    # the kernel really is the optimizer's: every sqrt its per-element math calls is there
    if "math.sqrt" in inspect.getsource(spec.kernel.elem):
        assert any("sqrt" in line for line in ptx.splitlines())
    assert any("st.global.f32" in line for line in ptx.splitlines())   # it writes floats
    # rounded as the CPU kernel rounds: no fused multiply-add (NVVM's default contracts)
    fma = [line.strip() for line in ptx.splitlines() if "fma." in line]
    assert not fma, f"fused multiply-adds, which the CPU kernel does not do: {fma[:3]}"


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_two_elements_per_access_ptx_moves_words(spec, no_driver_device):
    """The kernel on words of two elements (config.CUDA_PAIRS) loads and stores 64-bit words
    of float32 and, with bfloat16 state, 32-bit words of it, nothing narrower; it takes float32
    scalars and rounds as the one-element kernel does (no float64, no multiply-add); its
    per-element math is there twice (each sqrt at least twice)."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((9, 0))
    combo = testinfo.option_combinations(spec)[0]
    hp, sig = _ptx_signature(spec, combo, np.float32)
    assert ck.pairs_supported(spec.kernel)
    state = spec.required_state(hp)
    for bf16 in (False, True) if state else (False,):
        kinds = [ck.BF16 if bf16 and name not in ("param", "grad") else ck.F32
                 for name in spec.kernel.arrays]
        words = tuple(types.Array(types.uint32 if k == ck.BF16 else types.uint64, 1, "C")
                      for k in kinds) + sig[-1:]
        with ck.exact():
            ptx, _ = cuda.compile_ptx(ck.python_pair_kernel(spec.kernel, False, kinds,
                                                            **spec.options(hp, 2)),
                                      words, cc=(9, 0))
        lines = [line.strip() for line in ptx.splitlines()]
        moves = {x.split()[0] for x in lines if x.startswith(("ld.global", "st.global"))}
        want = {"ld.global.u64", "st.global.u64"}
        if bf16:
            want |= {"ld.global.u32", "st.global.u32"}
        assert moves == want, sorted(moves)
        assert not [x for x in lines if ".f64" in x or "fma." in x]
        if "math.sqrt" in inspect.getsource(spec.kernel.elem):
            # once per element of a word; LLVM may unroll the loop (more, never fewer)
            assert sum("sqrt" in x for x in lines) >= 2


QUAD_SPECS = [s for s in SPECS if s.required_state(s.validate(dict(s.defaults)))]


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("spec", QUAD_SPECS[::2], ids=lambda s: s.name)   # (half: CI time)
def test_four_elements_per_access_ptx_moves_64_bit_words(spec, no_driver_device):
    """The kernel on words of four elements (config.CUDA_QUADS, bfloat16 state; the scaled
    body reading the clip factor on the device, and stochastic rounding with a param copy,
    too) loads and stores 64-bit words only (two of
    float32, one of bfloat16 per four elements), takes float32 scalars and rounds as the
    one-element kernel does (no float64, no multiply-add); its per-element math is there four
    times (each sqrt at least four times)."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    from fastopt.kernels.record import DEVICE_FACTOR
    if not fastopt.cuda_available():
        no_driver_device((9, 0))
    combo = testinfo.option_combinations(spec)[0]
    hp, sig = _ptx_signature(spec, combo, np.float32)
    kinds = [ck.F32 if name in ("param", "grad") else ck.BF16 for name in spec.kernel.arrays]
    u64 = types.Array(types.uint64, 1, "C")
    for scaled, stochastic, copy in ((False, False, False), (DEVICE_FACTOR, False, False),
                                     (False, True, True)):
        fac = (types.Array(types.float32, 1, "C"),) if scaled else ()
        more = ((u64,) if copy else ()) + ((types.uint64,) if stochastic else ())
        kernel = ck.python_quad_kernel(spec.kernel, scaled, kinds, spec.options(hp, 2),
                                       stochastic, copy)
        with ck.exact():
            ptx, _ = cuda.compile_ptx(kernel, (u64,) * len(kinds) + more + fac + sig[-1:],
                                      cc=(9, 0))
        lines = [line.strip() for line in ptx.splitlines()]
        moves = {x.split()[0] for x in lines if x.startswith(("ld.global", "st.global"))}
        assert moves == ({"ld.global.u64", "st.global.u64"}
                         | ({"ld.global.f32"} if scaled else set())), sorted(moves)
        assert not [x for x in lines if ".f64" in x or "fma." in x]
        if "math.sqrt" in inspect.getsource(spec.kernel.elem):
            assert sum("sqrt" in x for x in lines) >= 4


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
def test_exact_turns_off_contraction_only_inside_it(no_driver_device):
    """Outside ``kernels.cuda.exact()`` NVVM still contracts (other code's kernels are not
    changed); inside, the same kernel has no fma instruction."""
    from numba import cuda
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    assert not ck.NVVM_CONTRACTION
    spec = registry.get("adam")
    hp, sig = _ptx_signature(spec, {}, np.float32)
    plain, _ = cuda.compile_ptx(ck.python_kernel(spec.kernel, **spec.options(hp, 2)), sig,
                                cc=(8, 0))
    with ck.exact():
        exact, _ = cuda.compile_ptx(ck.python_kernel(spec.kernel, **spec.options(hp, 2)), sig,
                                    cc=(8, 0))
    assert "fma.rn.f32" in plain
    assert "fma." not in exact and "mul.rn.f32" in exact


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_norm_kernel_compiles_to_ptx(dtype, no_driver_device):
    """The device gradient norm (clipping, skip_nonfinite): loads of the buffer dtype,
    float64 accumulation, a shared-memory tree."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    nb = getattr(types, dtype)
    sig = (types.Array(nb, 1, "C"), types.int64, types.Array(types.float64, 1, "C"))
    with ck.exact():
        ptx, _ = cuda.compile_ptx(ck.chunk_sum_of_squares.py_func, sig, cc=(8, 0))
    assert f"ld.global.f{nb.bitwidth}" in ptx
    assert "add.rn.f64" in ptx and "fma." not in ptx
    assert "bar.sync" in ptx and ".shared" in ptx


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_finish_kernel_compiles_to_ptx(dtype, no_driver_device):
    """The clipped step's factor on the device: the chunk sums added in float64 in a
    shared-memory tree, a correctly rounded square root and division (no approximation, no
    contraction), the factor rounded once to the buffers' dtype and stored."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    nb = getattr(types, dtype)
    f64 = types.Array(types.float64, 1, "C")
    sig = (f64, types.float64, types.float64, f64, types.Array(nb, 1, "C"))
    with ck.exact():
        ptx, _ = cuda.compile_ptx(ck.finish_sum_of_squares.py_func, sig, cc=(8, 0))
    assert "sqrt.rn.f64" in ptx and "div.rn.f64" in ptx and "fma." not in ptx
    assert "bar.sync" in ptx and f"st.global.f{nb.bitwidth}" in ptx
    if dtype == "float32":
        assert "cvt.rn.f32.f64" in ptx


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("frozen", [False, True], ids=["plain", "frozen"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_launch_norm_pass_compiles_to_ptx(dtype, frozen, no_driver_device):
    """The norm pass in one launch (``kernels.cuda.sum_of_squares``, and its twin for steps
    with frozen groups, ``sum_of_squares_frozen``): the chunk kernel's loads and tree, a
    device-wide memory fence before each block's ticket (a global atomic add), the chunk sums
    read back with float64 atomic adds, the finishing kernel's correctly rounded square root
    and division, no contraction."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    nb = getattr(types, dtype)
    f64 = types.Array(types.float64, 1, "C")
    sig = (types.Array(nb, 1, "C"), types.int64, f64, types.Array(types.int32, 1, "C"),
           types.float64, types.float64, f64, types.Array(nb, 1, "C"))
    kernel = ck.sum_of_squares
    if frozen:
        sig += (types.Array(types.int8, 1, "C"), types.Array(types.int64, 2, "C"),
                types.Array(types.int64, 1, "C"))
        kernel = ck.sum_of_squares_frozen
    with ck.exact():
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(8, 0))
    assert f"ld.global.f{nb.bitwidth}" in ptx and "add.rn.f64" in ptx and "fma." not in ptx
    assert "membar.gl" in ptx or "fence.sc.gpu" in ptx or "fence.acq_rel.gpu" in ptx
    assert re.search(r"atom\.global\.add\.u32|atom\.global\.add\.s32", ptx)
    assert "atom.global.add.f64" in ptx
    assert "sqrt.rn.f64" in ptx and "div.rn.f64" in ptx and "bar.sync" in ptx


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_device_factor_kernel_compiles_to_ptx(spec, no_driver_device):
    """Every optimizer's kernel that reads a clipped step's gradient factor from the device
    (``kernels.cuda.get_factor``), float32, as fastopt launches it: no float64 instruction,
    no fused multiply-add, the factor loaded from global memory; bfloat16 state and a param
    copy for every other optimizer with state."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    hp, sig = _ptx_signature(spec, {}, np.float32)
    n = len(spec.kernel.arrays)
    bits = None
    if n > 2 and SPECS.index(spec) % 2 == 0:
        bits = (False, False) + (True,) * (n - 2)
        u16 = types.Array(types.uint16, 1, "C")
        sig = (sig[:2] + (u16,) * (n - 2) + (u16, types.uint64, types.int64)
               + sig[-1:])
    sig = sig[:-1] + (types.Array(types.float32, 1, "C"),) + sig[-1:]
    kernel = ck.python_factor_kernel(spec.kernel, spec.options(hp, 2), bits, False,
                                     bits is not None)
    with ck.exact():
        ptx, _ = cuda.compile_ptx(kernel, sig, cc=(8, 0))
    f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
    assert not f64, f"float64 instructions in a float32 kernel: {f64[:5]}"
    assert "fma." not in ptx and "ld.global.f32" in ptx
    assert ("st.global.u16" in ptx or "st.global.b16" in ptx) if bits else (
        "st.global.f32" in ptx)


GROUPED_SPECS = list(SPECS)     # (LAMB too: one launch after its pre-pass, a row per tensor)


def _two_kinds(spec):
    """The option sets of ``spec``'s first and last option combinations (one if equal)."""
    combos = testinfo.option_combinations(spec)
    option_sets = [spec.options(spec.validate(dict(spec.defaults, **c)), 2)
                   for c in (combos[0], combos[-1])]
    return option_sets[:1] if option_sets[0] == option_sets[1] else option_sets


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("spec", GROUPED_SPECS, ids=lambda s: s.name)
def test_grouped_kernel_compiles_to_ptx(spec, no_driver_device):
    """The one-launch grouped kernel (two kinds: the first and last option combinations), as
    fastopt launches it: float32 only, no fused multiply-add, both kinds' math present; every
    other registered optimizer with its rows of scalars in a device array (as past
    ``GROUPED_MAX_ROWS`` rows) instead of a tuple passed with the launch."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    option_sets = _two_kinds(spec)
    _, sig = _ptx_signature(spec, {}, np.float32)
    array_rows = SPECS.index(spec) % 2 == 1
    sig = sig[:-1] + (types.Array(types.int64, 2, "C"),
                      types.Array(types.float32, 1, "C") if array_rows else
                      types.UniTuple(types.float32, 2 * len(spec.kernel.scalars)))
    kernel = ck.python_grouped_kernel(spec.kernel, False, option_sets,
                                      None if array_rows else 2)
    with ck.exact():
        ptx, _ = cuda.compile_ptx(kernel, sig, cc=(8, 0))
    f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
    assert not f64, f"float64 instructions in a float32 grouped kernel: {f64[:5]}"
    assert "fma." not in ptx and "st.global.f32" in ptx


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("array_rows", [False, True], ids=["rows-tuple", "rows-array"])
def test_grouped_kernel_reading_a_device_factor_compiles_to_ptx(array_rows, no_driver_device):
    """The grouped kernel of a clipped step whose factor stays on the device: ``rows`` is
    ``(rows, fac)``, the factor loaded after each row's scalars; float32 only, no contraction."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    spec = registry.get("adam")
    option_sets = _two_kinds(spec)
    _, sig = _ptx_signature(spec, {}, np.float32)
    rows = (types.Array(types.float32, 1, "C") if array_rows else
            types.UniTuple(types.float32, 2 * len(spec.kernel.scalars)))
    sig = sig[:-1] + (types.Array(types.int64, 2, "C"),
                      types.Tuple((rows, types.Array(types.float32, 1, "C"))))
    kernel = ck.python_grouped_kernel(spec.kernel, ck.DEVICE_FACTOR, option_sets,
                                      None if array_rows else 2)
    with ck.exact():
        ptx, _ = cuda.compile_ptx(kernel, sig, cc=(8, 0))
    f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
    assert not f64, f"float64 instructions in a float32 grouped kernel: {f64[:5]}"
    assert "fma." not in ptx and "st.global.f32" in ptx


BF16_SPECS = [s for s in SPECS if len(s.kernel.arrays) > 2 and not s.kernel.norm_names]


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("spec", [s for s in SPECS if len(s.kernel.arrays) > 2],
                         ids=lambda s: s.name)
def test_grouped_bfloat16_kernel_compiles_to_ptx(spec, no_driver_device):
    """The one-launch grouped kernel on bfloat16 state with a bfloat16 param copy (two kinds,
    stochastic rounding for every other optimizer): 16-bit loads and stores of the state and
    the copy, float32 math only, no fused multiply-add."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    option_sets = _two_kinds(spec)
    n = len(spec.kernel.arrays)
    f32, u16 = types.Array(types.float32, 1, "C"), types.Array(types.uint16, 1, "C")
    bits = (False, False) + (True,) * (n - 2)
    sig = ((f32, f32) + (u16,) * (n - 2) + (u16, types.uint64, types.int64,
                                           types.Array(types.int64, 2, "C"),
                                           types.UniTuple(types.float32,
                                                          2 * len(spec.kernel.scalars))))
    kernel = ck.python_grouped_kernel(spec.kernel, False, option_sets, 2, bits,
                                      SPECS.index(spec) % 2 == 1, True)
    with ck.exact():
        ptx, _ = cuda.compile_ptx(kernel, sig, cc=(8, 0))
    f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
    assert not f64, f"float64 instructions in a float32 grouped kernel: {f64[:5]}"
    assert "fma." not in ptx and "ld.global.u16" in ptx and "st.global.u16" in ptx
    assert "st.global.f32" in ptx


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("spec", BF16_SPECS, ids=lambda s: s.name)
def test_bfloat16_state_kernel_compiles_to_ptx(spec, stochastic, no_driver_device):
    """The CUDA kernel on bfloat16 state (the last option combination, every state array as
    bfloat16 bits): 16-bit loads and stores of the state, float32 math only, no fused
    multiply-add."""
    n = len(spec.kernel.arrays)
    _bf16_kernel_ptx(spec, testinfo.option_combinations(spec)[-1],
                     (False, False) + (True,) * (n - 2), stochastic, False, no_driver_device)


def _bf16_kernel_ptx(spec, combo, bits, stochastic, copy, no_driver_device):
    """Compile the bfloat16-views kernel (``bits``: which arrays are bfloat16; ``copy``: with a
    param copy) to PTX and check it: float32 math only, no FMA, float32 and 16-bit stores."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    hp, sig = _ptx_signature(spec, combo, np.float32)
    u16 = types.Array(types.uint16, 1, "C")
    arrays = tuple(u16 if b else sig[j] for j, b in enumerate(bits))
    sig = arrays + ((u16,) if copy else ()) + (types.uint64, types.int64, sig[-1])
    kernel = ck.python_bf16_kernel(spec.kernel, False, spec.options(hp, 2), bits, stochastic,
                                   copy)
    with ck.exact():
        ptx, _ = cuda.compile_ptx(kernel, sig, cc=(8, 0))
    f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
    assert not f64, f"float64 instructions in a float32 kernel: {f64[:5]}"
    assert "fma." not in ptx and "st.global.f32" in ptx and "st.global.u16" in ptx


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("state_bits,copy", [(False, True), (True, True),
                                             (False, "float16")],
                         ids=["float32-state", "bfloat16-state", "float16-copy"])
def test_param_copy_kernel_compiles_to_ptx(state_bits, copy, no_driver_device):
    """Adam writing a bfloat16 (or float16) param copy in its own kernel: 16-bit stores of the
    copy next to the float32 parameter stores, float32 math only, no fused multiply-add."""
    spec = fastopt.registry.get("adam")
    n = len(spec.kernel.arrays)
    _bf16_kernel_ptx(spec, {}, (False, False) + (state_bits,) * (n - 2), False, copy,
                     no_driver_device)


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("spec", BF16_SPECS, ids=lambda s: s.name)
def test_8bit_state_kernel_compiles_to_ptx(spec, no_driver_device):
    """The CUDA kernel on 8-bit state (the last option combination, every state array as
    codes + scales + tables): byte loads and stores of the codes, a shared-memory absmax,
    float32 math only, no fused multiply-add; a thread's loads of all its elements (parameter,
    gradient, codes and their map values) come before its first store (with the body's loads
    after each element's store, as before, every element cost one more memory latency)."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    combo = testinfo.option_combinations(spec)[-1]
    hp, sig = _ptx_signature(spec, combo, np.float32)
    n = len(spec.kernel.arrays)
    f32 = types.Array(types.float32, 1, "C")
    u8 = types.Array(types.uint8, 1, "C")
    sig = sig[:2] + (u8, f32, f32, u8, f32) * (n - 2) + (sig[-1],)
    u16 = types.Array(types.uint16, 1, "C")
    u32 = types.Array(types.uint32, 1, "C")
    u64 = types.Array(types.uint64, 1, "C")
    # with and without a bfloat16 (or float16) param copy written next to the parameter;
    # strided or four neighbours per thread as words, their word views after the arrays and
    # copy: every pair for Adam; for the others (the copy's code is the same for every
    # optimizer, ~4 s a compile) both layouts, one of them with a copy
    variants = (list(itertools.product((False, True, "float16"), (False, True)))
                if spec.name == "adam" else [(False, False), (True, True)])
    for copy, words in variants:
        kernel = ck.python_q8_kernel(spec.kernel, False, spec.options(hp, 2),
                                     (False, False) + (True,) * (n - 2), "float32",
                                     per_thread=4, copy=copy, words=words)
        views = ((u64, u64) + (u32,) * (n - 2) + ((u64,) if copy else ())) if words else ()
        with ck.exact():
            ptx, _ = cuda.compile_ptx(kernel, sig[:-1] + ((u16,) if copy else ()) + views
                                      + sig[-1:], cc=(8, 0))
        assert ("st.global.u16" in ptx) == bool(copy)
        if words:       # the word path: 64-bit words of float32 and of the copy, 32-bit codes
            for op in ("ld.global.u64", "st.global.u64", "ld.global.u32", "st.global.u32"):
                assert op in ptx, op
        f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
        assert not f64, f"float64 instructions in a float32 kernel: {f64[:5]}"
        assert "fma." not in ptx and "st.global.u8" in ptx and "bar.sync" in ptx
        assert ".shared" in ptx and "st.global.f32" in ptx
        # the absmax: one 32-bit shared-memory atomic max per thread and 8-bit array
        assert "atom.shared.max.u32" in ptx and "shfl" not in ptx
        ops = re.findall(r"^\s*(ld|st)\.global", ptx, re.M)
        nq = n - 2
        assert ops.index("st") >= 4 * (2 + 2 * nq), (ops.index("st"), nq)


@needs_numba_cuda
@pytest.mark.skipif(simulator_active(), reason="the simulator takes no launch bounds")
def test_8bit_kernels_are_compiled_with_launch_bounds():
    """An 8-bit kernel for ``threads`` per block and a budget of resident threads per
    multiprocessor carries the CUDA launch bounds (threads, budget // threads), one kernel per
    budget, none for 0; the grouped kernels take the same bound. (That the step passes
    ``config.CUDA_8BIT_THREADS_PER_SM``: tests/cuda_sim.)"""
    from fastopt.kernels import cuda as ck
    spec = fastopt.registry.get("adam")
    options = spec.options(spec.validate(dict(spec.defaults)), 2)
    quantized = (False, False, True, True, False)
    for budget, bounds in ((1024, (64, 16)), (768, (64, 12)), (0, None)):
        k = ck.get_q8(spec.kernel, False, options, quantized, "float32", 4, False, 64, budget)
        assert k.targetoptions["launch_bounds"] == bounds
    grouped = ck.get_q8_grouped(spec.kernel, False, [options], 1, quantized, "float32", 2,
                                False, 128, 1024)
    assert grouped.targetoptions["launch_bounds"] == (128, 8)


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("array_rows", [False, True], ids=["rows-with-launch", "rows-in-array"])
def test_grouped_8bit_state_kernel_compiles_to_ptx(array_rows, no_driver_device):
    """The grouped 8-bit kernel (Adam, two kinds: with and without weight decay; two rows of
    scalars passed with the launch, or any number in a device array): the 8-bit kernel's
    loads, stores and absmax, float32 math only, no FMA."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    spec = fastopt.registry.get("adam")
    option_sets = [spec.options(spec.validate(dict(spec.defaults, weight_decay=wd)), 2)
                   for wd in (0.0, 0.01)]
    assert option_sets[0] != option_sets[1]
    _, sig = _ptx_signature(spec, {}, np.float32)
    f32 = types.Array(types.float32, 1, "C")
    u8 = types.Array(types.uint8, 1, "C")
    rows = (f32 if array_rows else types.UniTuple(types.float32,
                                                  2 * len(spec.kernel.scalars)))
    sig = sig[:2] + (u8, f32, f32, u8, f32) * 2 + (sig[4], types.Array(types.int64, 2, "C"),
                                                   rows)
    kernel = ck.python_q8_kernel(spec.kernel, False, None, (False, False, True, True, False),
                                 "float32", option_sets, 2, per_thread=4,
                                 array_rows=array_rows)
    with ck.exact():
        ptx, _ = cuda.compile_ptx(kernel, sig, cc=(8, 0))
    f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
    assert not f64, f"float64 instructions in a float32 kernel: {f64[:5]}"
    assert "fma." not in ptx and "st.global.u8" in ptx and "atom.shared.max.u32" in ptx


PREPASS_SPECS = [s for s in SPECS if s.kernel.norm_names]


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("n_rows", [2, None], ids=["rows-with-launch", "rows-in-array"])
@pytest.mark.parametrize("spec", PREPASS_SPECS, ids=lambda s: s.name)
def test_pre_pass_kernel_compiles_to_ptx(spec, n_rows, no_driver_device):
    """The pre-pass (LAMB's norms, every segment of an arena in one launch, each chunk with
    its segment's row of scalars) in float32: float32 loads and per-element math (no float64
    division or square root), float64 accumulation, a shared-memory tree; the rows by value
    with the launch or in a device array."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    combo = testinfo.option_combinations(spec)[-1]
    hp = spec.validate(dict(spec.defaults, **combo))
    arr = types.Array(types.float32, 1, "C")
    rows = (types.UniTuple(types.float32, n_rows * len(spec.kernel.scalars)) if n_rows
            else arr)
    sig = (types.UniTuple(arr, len(spec.kernel.arrays)), types.Array(types.int64, 2, "C"),
           rows, types.Array(types.float64, 2, "C"))
    kernel = ck.python_norms_kernel(spec.kernel, False, spec.options(hp, 2),
                                    len(spec.kernel.norm_names), n_rows)
    with ck.exact():
        ptx, _ = cuda.compile_ptx(kernel, sig, cc=(8, 0))
    assert "ld.global.f32" in ptx and "bar.sync" in ptx and ".shared" in ptx
    assert "add.rn.f64" in ptx and "fma." not in ptx
    f64_math = [line.strip() for line in ptx.splitlines()
                if ("div" in line or "sqrt" in line) and ".f64" in line]
    assert not f64_math, f"float64 per-element math in a float32 pre-pass: {f64_math[:5]}"
    if "math.sqrt" in inspect.getsource(spec.kernel.elem):
        assert "sqrt.rn.f32" in ptx


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
@pytest.mark.parametrize("state", ["bfloat16", "int8"])
@pytest.mark.parametrize("spec", PREPASS_SPECS, ids=lambda s: s.name)
def test_pre_pass_on_compressed_state_compiles_to_ptx(spec, state, no_driver_device):
    """The pre-pass reading compressed state (every state array as bfloat16 bits, or as 8-bit
    codes, scales and tables read through dequantizing views): 16-bit or byte loads of the
    state, float32 per-element math, float64 accumulation, no stores but the chunk sums."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    combo = testinfo.option_combinations(spec)[-1]
    hp = spec.validate(dict(spec.defaults, **combo))
    n, k = len(spec.kernel.arrays), len(spec.kernel.norm_names)
    f32 = types.Array(types.float32, 1, "C")
    tail = (types.Array(types.int64, 2, "C"),
            types.UniTuple(types.float32, len(spec.kernel.scalars)),
            types.Array(types.float64, 2, "C"))
    compressed = (False, False) + (True,) * (n - 2)
    if state == "bfloat16":
        sig = ((f32, f32) + (types.Array(types.uint16, 1, "C"),) * (n - 2)
               + (types.uint64, types.int64) + tail)
        kernel = ck.python_bf16_norms_kernel(spec.kernel, False, spec.options(hp, 2), k,
                                             compressed)
        load, store = "ld.global.u16", "st.global.u16"
    else:
        u8 = types.Array(types.uint8, 1, "C")
        sig = (f32, f32) + (u8, f32, f32, u8, f32) * (n - 2) + (types.int64,) + tail
        kernel = ck.python_q8_norms_kernel(spec.kernel, False, spec.options(hp, 2), k,
                                           compressed)
        load, store = "ld.global.u8", "st.global.u8"
    with ck.exact():
        ptx, _ = cuda.compile_ptx(kernel, sig, cc=(8, 0))
    assert load in ptx and "add.rn.f64" in ptx and "fma." not in ptx
    assert store not in ptx and "st.global.f32" not in ptx
    f64_math = [line.strip() for line in ptx.splitlines()
                if ("div" in line or "sqrt" in line) and ".f64" in line]
    assert not f64_math, f"float64 per-element math in a float32 pre-pass: {f64_math[:5]}"


@pytest.mark.skipif(not _nvvm_available(), reason="NVVM not available for compile_ptx")
def test_float64_scalar_would_be_caught(no_driver_device):
    """The PTX check can fail: a float32 kernel given a float64 scalar promotes the math."""
    from numba import cuda, types
    from fastopt.kernels import cuda as ck
    if not fastopt.cuda_available():
        no_driver_device((8, 0))
    record = registry.get("momentum").kernel
    arr = types.Array(types.float32, 1, "C")
    sig = (arr, arr, arr)
    ok, _ = cuda.compile_ptx(ck.python_kernel(record), sig + (types.UniTuple(types.float32, 2),),
                             cc=(8, 0))
    bad, _ = cuda.compile_ptx(ck.python_kernel(record),
                              sig + (types.Tuple((types.float64, types.float32)),), cc=(8, 0))
    assert ".f64" not in ok and ".f64" in bad


@pytest.mark.skipif(simulator_active() or fastopt.cuda_available(),
                    reason="a CUDA device (or the simulator) is available")
def test_clear_error_without_a_gpu():
    b = fastopt.SGDBuffers.zeros(np.ones(3), np.ones(3))
    with pytest.raises((CudaUnavailableError, ValueError)) as e:
        fastopt.to_device(b)
    assert "fastopt[cuda]" in str(e.value) or "no CUDA GPU" in str(e.value)


def test_import_without_numba_cuda():
    """fastopt imports and runs on the CPU when numba.cuda cannot be imported at all."""
    code = ("import sys; sys.modules['numba.cuda'] = None\n"
            "import numpy as np, fastopt\n"
            "b = fastopt.SGDBuffers.zeros(np.ones(3), np.ones(3)); fastopt.sgd_step(b, lr=1)\n"
            "assert not fastopt.cuda_available()\n"
            "try:\n    fastopt.to_device(b)\nexcept RuntimeError as e:\n"
            "    assert 'pip install \"fastopt[cuda]\"' in str(e), e\n    print('clear')\n")
    run_python(code, expect="clear")


@needs_numba_cuda
def test_grid_is_capped_per_multiprocessor(monkeypatch):
    """``config.CUDA_BLOCKS_PER_SM`` x the device's SM count caps the grid (a grid-stride loop
    does the rest), ``CUDA_MAX_BLOCKS`` caps it further, 0 turns each cap off."""
    from fastopt import _cuda_backend as cb, config
    from fastopt.kernels import cuda as ck

    class Device:
        id = "fake"
        MULTIPROCESSOR_COUNT = 2

    class Cuda:
        @staticmethod
        def get_current_device():
            return Device()
    monkeypatch.setattr(cb, "_cuda", lambda: Cuda)
    monkeypatch.setattr(cb, "_SM_COUNT", {})
    monkeypatch.setattr(config, "CUDA_THREADS_PER_BLOCK", 256)
    monkeypatch.setattr(config, "CUDA_BLOCKS_PER_SM", 64)
    monkeypatch.setattr(config, "CUDA_MAX_BLOCKS", 0)
    assert cb._grid(ck, 10**8) == (128, 256)
    assert cb._grid(ck, 1000) == (4, 256)
    monkeypatch.setattr(config, "CUDA_MAX_BLOCKS", 100)
    assert cb._grid(ck, 10**8) == (100, 256)
    monkeypatch.setattr(config, "CUDA_BLOCKS_PER_SM", 0)
    monkeypatch.setattr(config, "CUDA_MAX_BLOCKS", 0)
    assert cb._grid(ck, 10**8) == (390625, 256)


@needs_numba_cuda
@pytest.mark.skipif(simulator_active(), reason="the simulator's arrays are another type")
def test_a_prepared_step_checks_numba_device_arrays_by_identity(monkeypatch):
    """numba's own device arrays cannot change pointer, shape, strides or dtype: a prepared
    step checks them by identity, without reading their ``__cuda_array_interface__`` again each
    step (~3-5 us an array); any other device array (torch, CuPy: resizable in place) is read
    each step, and a changed pointer makes the step validate again."""
    import ctypes
    import types

    from numba.cuda.cudadrv import devicearray as da

    from fastopt import _step

    class Pointer:                      # a device pointer with no memory behind it (no GPU)
        device_ctypes_pointer = handle = ctypes.c_void_p(1 << 20)
    a = da.DeviceNDArray((8,), (4,), np.dtype(np.float32), stream=0, gpu_data=Pointer())

    class Other:
        ptr = 1 << 21

        @property
        def __cuda_array_interface__(self):
            return {"data": (self.ptr, False), "shape": (8,), "strides": None,
                    "typestr": "<f4", "version": 3}
    other = Other()
    reads = []
    interface = da.DeviceNDArray.__cuda_array_interface__
    monkeypatch.setattr(da.DeviceNDArray, "__cuda_array_interface__",
                        property(lambda self: reads.append(1) or interface.fget(self)))
    spec = registry.get("sgd")
    prep = _step.Prepared(spec, "cuda", None, (), {"param": a, "grad": other}, run=None)
    buffers = types.SimpleNamespace(param=a, grad=other, rounding_seed=None, param_copy=None)
    assert _step._fixed(a) and not _step._fixed(other)
    reads.clear()
    assert prep.matches(spec, buffers, "cuda", None, ())
    assert reads == []
    other.ptr += 4096                                   # re-pointed in place
    assert not prep.matches(spec, buffers, "cuda", None, ())
    buffers.param = da.DeviceNDArray((8,), (4,), np.dtype(np.float32), stream=0,
                                     gpu_data=Pointer())
    other.ptr -= 4096
    assert not prep.matches(spec, buffers, "cuda", None, ())     # another array object
